//! Replicated data types that converge without coordination.
//!
//! Every type here is a *delta-state* CRDT (Almeida, Shoker, Baquero 2018):
//!
//! - its states form a join semilattice, and [`Crdt::merge`] is the join:
//!   commutative, associative and idempotent, so replicas that have received
//!   the same writes, in any order, any number of times, hold equal states;
//! - each mutator (`inc`, `insert`, `set`, ...) changes the local state and
//!   returns a **delta**, a small value of the same type that carries just
//!   that change. Merging the delta into another replica has the same effect
//!   as merging the whole new state, so replicas ship deltas, and batch or
//!   merge deltas together like any other states.
//!
//! | type | for | reads |
//! | --- | --- | --- |
//! | [`GCounter`] | hits, likes: only grows | sum of per-replica counts |
//! | [`PnCounter`] | balances of votes, anything that may go negative | increments minus decrements |
//! | [`BoundedCounter`] | stock that must not oversell | never below its bound: decrements spend rights held locally |
//! | [`OrSet`] | carts, tags, memberships | add-wins set |
//! | [`LwwRegister`] | one value, latest write wins | the value with the highest [`Stamp`](crate::clock::Stamp) |
//! | [`LwwMap`] | profiles, settings | per key, latest write (or delete) wins |
//! | [`MvRegister`] | documents the app reconciles | every concurrent value |
//! | [`OrMap`] | carts of quantities, nested documents | add-wins keys, each value a CRDT merged by its own join |
//!
//! All of them serialize with serde, through [`wire`](crate::wire) and
//! through JSON alike (maps are sequences of pairs, so any key type works).
//!
//! Writing your own: implement [`Crdt`] and run
//! `testing::check_crdt_laws` (feature `testing`) on it.

mod bounded_counter;
mod g_counter;
mod lww_map;
mod lww_register;
mod mv_register;
mod or_map;
mod or_set;
mod pn_counter;
mod small_map;

pub use bounded_counter::{BoundedCounter, RightsError};
pub use g_counter::GCounter;
pub use lww_map::LwwMap;
pub use lww_register::LwwRegister;
pub use mv_register::MvRegister;
pub use or_map::OrMap;
pub use or_set::OrSet;
pub use pn_counter::PnCounter;

/// A [`Crdt`] whose observed state one delta can remove: what
/// `Table::delete` writes (see [`region`](crate::region)).
///
/// The delta removes exactly what this replica has observed (the dots of
/// its elements, keys or values) and keeps them in the value's causal
/// context: a concurrent write elsewhere, which this replica had not
/// observed, survives the merge (add-wins), and a late copy of a removed
/// write (a retransmitted batch, an anti-entropy transfer from a region
/// that had not seen the reset) is in the context and stays removed. The
/// value left behind is empty but for that context: its tombstone.
///
/// Implemented for the dot-based types, where removal is observed:
/// [`OrSet`], [`OrMap`], [`MvRegister`]. Counters cannot be reset soundly
/// (a reset is not a join of increments), and last-writer-wins types
/// delete by a stamped write of their own (`LwwMap::remove`).
///
/// ```
/// use archipelago::clock::ReplicaId;
/// use archipelago::crdt::{Crdt, OrSet, Reset};
///
/// let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut a = OrSet::new();
/// let seen = a.insert(tokyo, "matcha");
/// let mut b = a.clone();
/// let concurrent = b.insert(frankfurt, "sencha");
/// let reset = a.reset();
/// a.merge(&concurrent);
/// b.merge(&reset);
/// b.merge(&seen); // a late copy stays removed
/// assert_eq!(a, b);
/// assert!(!a.contains("matcha") && a.contains("sencha"));
/// ```
pub trait Reset: Crdt {
    /// Removes everything this replica has observed; returns the delta.
    fn reset(&mut self) -> Self;
}

impl<T: std::hash::Hash + Eq + Clone> Reset for OrSet<T> {
    fn reset(&mut self) -> Self {
        self.clear()
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Crdt> Reset for OrMap<K, V> {
    fn reset(&mut self) -> Self {
        let keys: Vec<K> = self.keys().cloned().collect();
        let mut delta = OrMap::new();
        for key in keys {
            delta.merge(&self.remove(&key));
        }
        delta
    }
}

/// A state-based replicated type whose merge is a join.
///
/// Laws every implementation keeps (and `testing::check_crdt_laws` checks):
/// for all states `a`, `b`, `c`,
/// - `a ⊔ b == b ⊔ a` (commutative),
/// - `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)` (associative),
/// - `a ⊔ a == a` (idempotent),
/// - and `Default::default()` is the bottom: `a ⊔ ⊥ == a`.
///
/// Mutators are inherent methods of each type, and each returns its delta
/// as a `Self`.
pub trait Crdt: Clone + Default {
    /// Joins `other` into `self`. Takes a reference: merging never forces
    /// the caller to clone.
    fn merge(&mut self, other: &Self);

    /// The latest hybrid-logical-clock time stamped anywhere in this state,
    /// for types that carry stamps (last-writer-wins types, resolver
    /// version sets); `None` for the others, the default.
    ///
    /// A region refuses a value from a peer whose latest stamp is further
    /// ahead of its own clock than the clock's max offset (the bound the
    /// HLC keeps), so a region whose clock runs ahead cannot win every
    /// last-writer-wins conflict: its writes land once the other clocks
    /// have caught up to within the offset. A type with stamps that keeps
    /// the default is not protected.
    fn latest_stamp(&self) -> Option<crate::clock::Timestamp> {
        None
    }
}
