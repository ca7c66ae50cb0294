//! A multi-value register: concurrent writes are all kept.
//!
//! ```
//! use archipelago::clock::ReplicaId;
//! use archipelago::crdt::{Crdt, MvRegister};
//!
//! let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
//! let mut a = MvRegister::new();
//! let mut b = MvRegister::new();
//! let da = a.write(tokyo, "draft by Aiko");
//! let db = b.write(frankfurt, "draft by Ben");
//! a.merge(&db);
//! b.merge(&da);
//! assert_eq!(a, b);
//! assert_eq!(a.values().count(), 2); // siblings, for the app to reconcile
//!
//! let merged = a.write(tokyo, "merged draft"); // replaces both siblings it saw
//! b.merge(&merged);
//! assert_eq!(b.values().collect::<Vec<_>>(), [&"merged draft"]);
//! ```

use serde::{Deserialize, Serialize};

use super::Crdt;
use crate::clock::{CausalContext, Dot, ReplicaId};
use crate::wire::{InvalidRule, invalid};

/// A register that keeps every concurrent write as a sibling.
///
/// Each value carries the dot of its write; a write replaces exactly the
/// siblings its replica had observed, so values written concurrently
/// elsewhere survive it until someone writes having seen them.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MvRegister<T> {
    /// Sorted by dot; every dot in `ctx`.
    siblings: Vec<(Dot, T)>,
    ctx: CausalContext,
}

#[derive(Deserialize)]
struct Repr<T> {
    siblings: Vec<(Dot, T)>,
    ctx: CausalContext,
}

/// Accepts only what writes make, in one pass: siblings sorted by dot
/// without repeats, no dot with counter 0 (the context "contains" every
/// such dot, so a merge would drop the sibling: `⊥ ⊔ v ≠ v`), and every
/// dot in the context. (Two siblings of one replica are allowed: a state
/// fed deltas out of causal order can hold them until the delta that
/// replaced the older one arrives.)
impl<T> TryFrom<Repr<T>> for MvRegister<T> {
    type Error = InvalidRule;

    fn try_from(repr: Repr<T>) -> Result<Self, Self::Error> {
        let mut previous: Option<Dot> = None;
        for (dot, _) in &repr.siblings {
            if dot.counter == 0 {
                return Err(InvalidRule::ZeroCounter);
            }
            if let Some(p) = previous {
                if p == *dot {
                    return Err(InvalidRule::DuplicateDot);
                }
                if p > *dot {
                    return Err(InvalidRule::Unsorted);
                }
            }
            if !repr.ctx.contains(*dot) {
                return Err(InvalidRule::OutsideContext);
            }
            previous = Some(*dot);
        }
        Ok(MvRegister {
            siblings: repr.siblings,
            ctx: repr.ctx,
        })
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MvRegister<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = Repr::<T>::deserialize(deserializer)?;
        MvRegister::try_from(repr).map_err(|rule| invalid("MvRegister", rule))
    }
}

impl<T: Clone> MvRegister<T> {
    /// A register never written.
    pub fn new() -> Self {
        MvRegister {
            siblings: Vec::new(),
            ctx: CausalContext::new(),
        }
    }

    /// Writes `value` on behalf of `replica`, replacing every sibling this
    /// replica has observed; returns the delta.
    pub fn write(&mut self, replica: ReplicaId, value: T) -> Self {
        let dot = self.ctx.next_dot(replica);
        let mut delta_ctx = CausalContext::new();
        delta_ctx.insert(dot);
        for (d, _) in &self.siblings {
            delta_ctx.insert(*d);
        }
        self.siblings.clear();
        self.siblings.push((dot, value.clone()));
        MvRegister {
            siblings: vec![(dot, value)],
            ctx: delta_ctx,
        }
    }

    /// The current values: one, or several written concurrently, ordered by
    /// the dot of their write.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.siblings.iter().map(|(_, v)| v)
    }

    /// The values with the dots of their writes.
    pub fn siblings(&self) -> &[(Dot, T)] {
        &self.siblings
    }

    /// True when concurrent writes are waiting to be reconciled.
    pub fn is_conflicted(&self) -> bool {
        self.siblings.len() > 1
    }

    /// Every dot this register has seen.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}

impl<T: Clone> crate::crdt::Reset for MvRegister<T> {
    /// Removes every sibling this replica has observed; returns the delta
    /// (their dots, no value).
    fn reset(&mut self) -> Self {
        let mut ctx = CausalContext::new();
        for (d, _) in self.siblings.drain(..) {
            ctx.insert(d);
        }
        MvRegister {
            siblings: Vec::new(),
            ctx,
        }
    }
}

impl<T: Clone> Default for MvRegister<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Crdt for MvRegister<T> {
    fn merge(&mut self, other: &Self) {
        let their_ctx = &other.ctx;
        self.siblings.retain(|(dot, _)| {
            !their_ctx.contains(*dot) || other.siblings.iter().any(|(d, _)| d == dot)
        });
        let fresh: Vec<(Dot, T)> = other
            .siblings
            .iter()
            .filter(|(dot, _)| !self.ctx.contains(*dot))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            self.siblings.extend(fresh);
            self.siblings.sort_unstable_by_key(|(dot, _)| *dot);
        }
        self.ctx.merge(&other.ctx);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MvRegister<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvRegister")
            .field("siblings", &self.siblings)
            .field("ctx", &self.ctx)
            .finish()
    }
}
