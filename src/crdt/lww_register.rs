//! A last-writer-wins register.
//!
//! ```
//! use archipelago::clock::{Hlc, ManualClock, ReplicaId};
//! use archipelago::crdt::{Crdt, LwwRegister};
//!
//! let wall = ManualClock::new(1_000);
//! let tokyo = Hlc::with_clock(ReplicaId::new(1), wall.clone());
//! let frankfurt = Hlc::with_clock(ReplicaId::new(2), wall.clone());
//!
//! let mut a = LwwRegister::new();
//! let mut b = LwwRegister::new();
//! let da = a.set(tokyo.stamp(), "blue");
//! wall.advance(1);
//! let db = b.set(frankfurt.stamp(), "green");
//! a.merge(&db);
//! b.merge(&da);
//! assert_eq!(a, b);
//! assert_eq!(a.get(), Some(&"green")); // the later write
//! ```

use serde::{Deserialize, Serialize};

use super::Crdt;
use crate::clock::Stamp;

/// A single value; the write with the highest [`Stamp`] wins.
///
/// Stamps order by hybrid-logical-clock time, then by replica, so every
/// replica picks the same winner. Writes that happened concurrently are
/// silently lost to the winner: use [`MvRegister`](super::MvRegister) or a
/// resolver when that matters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    entry: Option<(Stamp, T)>,
}

impl<T: Clone> LwwRegister<T> {
    /// A register never written.
    pub fn new() -> Self {
        LwwRegister { entry: None }
    }

    /// Writes `value` at `stamp`; returns the delta.
    ///
    /// A stamp no higher than the current one loses to it: the register
    /// keeps its value, and the delta changes nothing where merged.
    pub fn set(&mut self, stamp: Stamp, value: T) -> Self {
        let delta = LwwRegister {
            entry: Some((stamp, value)),
        };
        self.merge(&delta);
        delta
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.entry.as_ref().map(|(_, v)| v)
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Option<Stamp> {
        self.entry.as_ref().map(|(s, _)| *s)
    }
}

impl<T: Clone> Default for LwwRegister<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Crdt for LwwRegister<T> {
    fn latest_stamp(&self) -> Option<crate::clock::Timestamp> {
        self.entry.as_ref().map(|(stamp, _)| stamp.time)
    }

    fn merge(&mut self, other: &Self) {
        if let Some((theirs, value)) = &other.entry
            && self.stamp().is_none_or(|mine| *theirs > mine)
        {
            self.entry = Some((*theirs, value.clone()));
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for LwwRegister<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.entry {
            Some((s, v)) => write!(f, "LwwRegister({v:?} at {s:?})"),
            None => write!(f, "LwwRegister(unset)"),
        }
    }
}
