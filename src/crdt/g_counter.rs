//! A grow-only counter.
//!
//! ```
//! use archipelago::clock::ReplicaId;
//! use archipelago::crdt::{Crdt, GCounter};
//!
//! let (tokyo, frankfurt) = (ReplicaId::from_name("ap-northeast"), ReplicaId::from_name("eu-central"));
//! let mut a = GCounter::new();
//! let mut b = GCounter::new();
//! let delta_a = a.inc(tokyo, 2);
//! let delta_b = b.inc(frankfurt, 3);
//! a.merge(&delta_b);
//! b.merge(&delta_a);
//! assert_eq!(a, b);
//! assert_eq!(a.value(), 5);
//! ```

use serde::{Deserialize, Serialize};

use super::Crdt;
use crate::clock::{ReplicaId, VersionVector};

/// A counter that only grows: one count per replica, read as their sum.
///
/// Each replica raises only its own count, so the join (entry-wise max)
/// never loses an increment. Counts saturate at `u64::MAX`.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GCounter {
    counts: VersionVector,
}

impl GCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` on behalf of `replica`; returns the delta (that replica's
    /// new count).
    pub fn inc(&mut self, replica: ReplicaId, n: u64) -> Self {
        let count = self.counts.get(replica).saturating_add(n);
        self.counts.raise(replica, count);
        let mut delta = GCounter::new();
        delta.counts.raise(replica, count);
        delta
    }

    /// The total: the sum of every replica's count, saturating.
    pub fn value(&self) -> u64 {
        self.counts.dot_count()
    }

    /// The count contributed by `replica`.
    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.counts.get(replica)
    }

    /// Per-replica counts, sorted by replica.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.counts.iter()
    }
}

impl Crdt for GCounter {
    #[inline]
    fn merge(&mut self, other: &Self) {
        self.counts.merge(&other.counts);
    }
}

impl std::fmt::Debug for GCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GCounter{:?}", self.counts)
    }
}
