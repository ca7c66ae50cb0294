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

/// A register that keeps every concurrent write as a sibling.
///
/// Each value carries the dot of its write; a write replaces exactly the
/// siblings its replica had observed, so values written concurrently
/// elsewhere survive it until someone writes having seen them.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Repr<T>", bound(deserialize = "T: Deserialize<'de>"))]
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

impl<T> TryFrom<Repr<T>> for MvRegister<T> {
    type Error = &'static str;

    fn try_from(repr: Repr<T>) -> Result<Self, Self::Error> {
        if !repr.siblings.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("MV-Register siblings must be sorted by dot without repeats");
        }
        if repr.siblings.iter().any(|(d, _)| !repr.ctx.contains(*d)) {
            return Err("MV-Register sibling dot missing from its context");
        }
        Ok(MvRegister {
            siblings: repr.siblings,
            ctx: repr.ctx,
        })
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
