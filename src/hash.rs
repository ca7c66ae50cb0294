//! The hasher behind every element map in the crate.
//!
//! `foldhash` is several times faster than the standard SipHash for the small
//! keys CRDTs hold. Its seed is drawn at random once per process, so an
//! attacker who controls element values cannot precompute collisions, while
//! every map in the process shares one layout: two replicas' maps iterate in
//! the same order, which turns the lookups of a full-state merge into a
//! cache-friendly sequential walk.

use std::hash::BuildHasher;

use foldhash::SharedSeed;
use foldhash::fast::FoldHasher;

/// Zero-sized [`BuildHasher`] seeded once per process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessHasher;

impl BuildHasher for ProcessHasher {
    type Hasher = FoldHasher<'static>;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        FoldHasher::with_seed(0x243f_6a88_85a3_08d3, SharedSeed::global_random())
    }
}

/// A `HashMap` using [`ProcessHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, ProcessHasher>;
