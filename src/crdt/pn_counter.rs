//! A counter that goes up and down.
//!
//! ```
//! use archipelago::clock::ReplicaId;
//! use archipelago::crdt::{Crdt, PnCounter};
//!
//! let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
//! let mut stock_tokyo = PnCounter::new();
//! stock_tokyo.inc(tokyo, 10);
//! let mut stock_frankfurt = stock_tokyo.clone();
//!
//! let sold_in_tokyo = stock_tokyo.dec(tokyo, 3);
//! let sold_in_frankfurt = stock_frankfurt.dec(frankfurt, 2);
//! stock_tokyo.merge(&sold_in_frankfurt);
//! stock_frankfurt.merge(&sold_in_tokyo);
//! assert_eq!(stock_tokyo, stock_frankfurt);
//! assert_eq!(stock_tokyo.value(), 5);
//! ```

use serde::{Deserialize, Serialize};

use super::{Crdt, GCounter};
use crate::clock::ReplicaId;

/// A counter with increments and decrements: two [`GCounter`]s, read as
/// their difference.
///
/// It converges, but does not keep the value above zero: two regions can
/// both sell the last item. Stock that must not oversell needs a bounded
/// counter (escrow of rights): [`BoundedCounter`](super::BoundedCounter).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PnCounter {
    p: GCounter,
    n: GCounter,
}

impl PnCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` on behalf of `replica`; returns the delta.
    pub fn inc(&mut self, replica: ReplicaId, n: u64) -> Self {
        PnCounter {
            p: self.p.inc(replica, n),
            n: GCounter::new(),
        }
    }

    /// Subtracts `n` on behalf of `replica`; returns the delta.
    pub fn dec(&mut self, replica: ReplicaId, n: u64) -> Self {
        PnCounter {
            p: GCounter::new(),
            n: self.n.inc(replica, n),
        }
    }

    /// Increments minus decrements, saturating at the bounds of `i64`.
    pub fn value(&self) -> i64 {
        let exact = i128::from(self.p.value()) - i128::from(self.n.value());
        exact.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// All increments.
    pub fn increments(&self) -> &GCounter {
        &self.p
    }

    /// All decrements.
    pub fn decrements(&self) -> &GCounter {
        &self.n
    }
}

impl Crdt for PnCounter {
    fn merge(&mut self, other: &Self) {
        self.p.merge(&other.p);
        self.n.merge(&other.n);
    }
}

impl std::fmt::Debug for PnCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PnCounter{{+{:?} -{:?}}}", self.p, self.n)
    }
}
