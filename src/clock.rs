//! Clocks: who wrote what, in which causal order, and when.
//!
//! - [`ReplicaId`] names a replica; [`Dot`] names one of its writes.
//! - [`VersionVector`] summarises the writes a replica has seen, and orders
//!   two summaries causally ([`PartialOrd`]; concurrent ones are unordered).
//! - [`CausalContext`] is a version vector plus the dots seen out of order:
//!   what delta CRDTs carry to tell a removal from a write not yet seen.
//! - [`Hlc`] is a hybrid logical clock: timestamps close to wall-clock time
//!   that still respect causality, for last-writer-wins decisions.
//!
//! None of these types read a global clock or random source: the physical
//! clock is injected ([`PhysicalClock`]), so tests control time.

mod context;
mod hlc;
mod replica;
mod version_vector;

pub use context::CausalContext;
pub use hlc::{
    Hlc, HlcError, LOGICAL_BITS, MAX_OFFSET_DEFAULT, ManualClock, PHYSICAL_MS_MAX, PhysicalClock,
    Stamp, SystemClock, Timestamp,
};
pub use replica::{Dot, ReplicaId};
pub use version_vector::VersionVector;
