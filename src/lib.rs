//! # archipelago
//!
//! Active-active multi-region replication. Every region is an island that
//! keeps serving reads and writes on its own; the archipelago converges.
//!
//! (The model page is written in full with the region engine; this release
//! holds the foundation.)

#![warn(missing_docs)]

pub mod clock;
pub mod crdt;
pub mod hash;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;
