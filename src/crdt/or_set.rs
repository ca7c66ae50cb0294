//! An add-wins observed-remove set without tombstones (ORSWOT).
//!
//! ```
//! use archipelago::clock::ReplicaId;
//! use archipelago::crdt::{Crdt, OrSet};
//!
//! let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
//! let mut cart_tokyo = OrSet::new();
//! let add = cart_tokyo.insert(tokyo, "tea");
//! let mut cart_frankfurt = OrSet::new();
//! cart_frankfurt.merge(&add);
//!
//! // Concurrently: Frankfurt removes the tea, Tokyo adds it again.
//! let remove = cart_frankfurt.remove(&"tea");
//! let again = cart_tokyo.insert(tokyo, "tea");
//! cart_tokyo.merge(&remove);
//! cart_frankfurt.merge(&again);
//!
//! assert_eq!(cart_tokyo, cart_frankfurt);
//! assert!(cart_tokyo.contains(&"tea")); // the add wins
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::{SmallVec, smallvec};

use super::Crdt;
use super::small_map::SmallMap;
use crate::clock::{CausalContext, Dot, ReplicaId};
use crate::wire::{InvalidRule, invalid};

/// The dots that keep an element in the set: one per replica that added it
/// concurrently, almost always exactly one. Sorted.
type Dots = SmallVec<[Dot; 1]>;

/// An add-wins, observed-remove set.
///
/// Each element carries the dots of the inserts that put it there; the set
/// carries one [`CausalContext`] of every dot it has seen. A remove drops
/// the element's dots but keeps them in the context, so a merge can tell
/// "removed here" (dot seen, element gone) from "not yet seen here". No
/// tombstone per element is kept. When an insert and a remove of the same
/// element are concurrent, the insert's dot is unseen by the remove, and the
/// element stays: the add wins.
///
/// Elements live in a hash map keyed with a per-process seed
/// ([`crate::hash`](crate::hash)): inserts cost one hash and one probe, and
/// a full-state merge walks both maps in the same order.
pub struct OrSet<T> {
    entries: SmallMap<T, Dots>,
    ctx: CausalContext,
}

impl<T: Hash + Eq + Clone> OrSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        OrSet {
            entries: SmallMap::default(),
            ctx: CausalContext::new(),
        }
    }

    /// Adds `element` on behalf of `replica`; returns the delta.
    ///
    /// Re-adding an element present already replaces its dots with the new
    /// one, so the delta also tells other replicas those old dots are gone.
    pub fn insert(&mut self, replica: ReplicaId, element: T) -> Self {
        let dot = self.ctx.next_dot(replica);
        let mut delta_ctx = CausalContext::new();
        delta_ctx.insert(dot);
        let mut delta_entries = SmallMap::default();
        delta_entries.insert(element.clone(), smallvec![dot]);
        if let Some(old) = self.entries.insert(element, smallvec![dot]) {
            for d in old {
                delta_ctx.insert(d);
            }
        }
        OrSet {
            entries: delta_entries,
            ctx: delta_ctx,
        }
    }

    /// Removes `element` as this replica has observed it; returns the delta.
    ///
    /// Removing an element that is not in the set changes nothing and
    /// returns an empty delta (check with [`is_empty`](OrSet::is_empty) and
    /// [`context`](OrSet::context)`.is_empty()`). An insert made concurrently
    /// elsewhere is not observed here, so it survives: the add wins.
    pub fn remove<Q>(&mut self, element: &Q) -> Self
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut delta = OrSet::new();
        if let Some(dots) = self.entries.remove(element) {
            for d in dots {
                delta.ctx.insert(d);
            }
        }
        delta
    }

    /// Removes every element this replica has observed; returns the delta.
    pub fn clear(&mut self) -> Self {
        let mut delta = OrSet::new();
        let ctx = &mut delta.ctx;
        self.entries.drain_each(|_, dots| {
            for d in dots {
                ctx.insert(d);
            }
        });
        delta
    }

    /// True when `element` is in the set.
    pub fn contains<Q>(&self, element: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(element)
    }

    /// The elements, in no particular order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the set has no element (a remove delta is empty too: its
    /// information is in its [`context`](OrSet::context)).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every dot this set has seen.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    /// The dots that keep `element` in the set, sorted (empty when absent).
    pub fn dots<Q>(&self, element: &Q) -> &[Dot]
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(element).map_or(&[], |d| d.as_slice())
    }
}

impl<T: Hash + Eq + Clone> Crdt for OrSet<T> {
    /// The ORSWOT join: a dot survives when both sides hold it, or when one
    /// side holds it and the other has never seen it.
    fn merge(&mut self, other: &Self) {
        // 1. Our dots that `other` has seen and dropped are removed. Skipped
        //    when the contexts share no dot (a delta of fresh inserts): then
        //    `other` cannot have seen any dot we hold.
        if self.ctx.intersects(&other.ctx) {
            let their_ctx = &other.ctx;
            self.entries.retain(|element, dots| {
                if !dots.iter().any(|d| their_ctx.contains(*d)) {
                    return true;
                }
                let theirs = other.entries.get(element).map_or(&[][..], |d| d.as_slice());
                if theirs == dots.as_slice() {
                    return true; // the same dots on both sides: nothing to drop
                }
                dots.retain(|d| !their_ctx.contains(*d) || theirs.contains(d));
                !dots.is_empty()
            });
        }
        // 2. Their dots we have never seen are added (our context is the
        //    pre-merge one: it is joined last). Nothing to add when we have
        //    seen every dot they have.
        if self.ctx.covers(&other.ctx) {
            return;
        }
        // Room for every element of theirs up front: growing the table in
        // the middle of the loop costs more than the slack.
        self.entries.reserve(other.entries.len());
        let our_ctx = &self.ctx;
        for (element, theirs) in &other.entries {
            if theirs.iter().all(|d| our_ctx.contains(*d)) {
                continue;
            }
            match self.entries.get_mut(element) {
                Some(mine) => {
                    for d in theirs.iter().filter(|d| !our_ctx.contains(**d)) {
                        if let Err(at) = mine.binary_search(d) {
                            mine.insert(at, *d);
                        }
                    }
                }
                None => {
                    let fresh: Dots = theirs
                        .iter()
                        .filter(|d| !our_ctx.contains(**d))
                        .copied()
                        .collect();
                    self.entries.insert(element.clone(), fresh);
                }
            }
        }
        self.ctx.merge(&other.ctx);
    }
}

impl<T: Hash + Eq + Clone> Default for OrSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Clone for OrSet<T> {
    fn clone(&self) -> Self {
        OrSet {
            entries: self.entries.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<T: Hash + Eq> PartialEq for OrSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ctx == other.ctx && self.entries == other.entries
    }
}

impl<T: Hash + Eq> Eq for OrSet<T> {}

impl<T: fmt::Debug> fmt::Debug for OrSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrSet")
            .field("entries", &self.entries)
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl<T: Hash + Eq + Clone> FromIterator<(ReplicaId, T)> for OrSet<T> {
    /// Inserts each element on behalf of its replica.
    fn from_iter<I: IntoIterator<Item = (ReplicaId, T)>>(iter: I) -> Self {
        let mut set = OrSet::new();
        for (replica, element) in iter {
            set.insert(replica, element);
        }
        set
    }
}

// Serialized form: the context, then the elements grouped by the replica of
// their dots, each group sorted by counter with counters stored as gaps from
// the previous one. A run of inserts from one replica costs one byte of dot
// per element; an element with dots from two replicas appears in both groups.

#[derive(Serialize)]
struct ReprOut<'a, T> {
    context: &'a CausalContext,
    groups: Vec<GroupOut<'a, T>>,
}

#[derive(Serialize)]
struct GroupOut<'a, T> {
    replica: ReplicaId,
    elements: Vec<(u64, &'a T)>,
}

#[derive(Deserialize)]
struct ReprIn<T> {
    context: CausalContext,
    groups: Vec<GroupIn<T>>,
}

#[derive(Deserialize)]
struct GroupIn<T> {
    replica: ReplicaId,
    elements: Vec<(u64, T)>,
}

impl<T: Serialize> Serialize for OrSet<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut by_replica: Vec<(ReplicaId, Vec<(u64, &T)>)> = Vec::new();
        for (element, dots) in &self.entries {
            for dot in dots {
                let group = match by_replica.iter().position(|(r, _)| *r == dot.replica) {
                    Some(i) => i,
                    None => {
                        by_replica.push((dot.replica, Vec::new()));
                        by_replica.len() - 1
                    }
                };
                by_replica[group].1.push((dot.counter, element));
            }
        }
        by_replica.sort_unstable_by_key(|(r, _)| *r);
        let groups = by_replica
            .into_iter()
            .map(|(replica, mut elements)| {
                elements.sort_unstable_by_key(|(counter, _)| *counter);
                let mut previous = 0;
                for (counter, _) in &mut elements {
                    let gap = *counter - previous;
                    previous = *counter;
                    *counter = gap;
                }
                GroupOut { replica, elements }
            })
            .collect();
        ReprOut {
            context: &self.ctx,
            groups,
        }
        .serialize(serializer)
    }
}

/// Rejects a set whose dots are not all in its context, repeat, or count
/// from zero: none of those come from a real replica. One pass: groups are
/// sorted by replica and counters grow within a group, so each element's
/// dots arrive in order and no dot can appear twice.
impl<'de, T: Deserialize<'de> + Hash + Eq + Clone> Deserialize<'de> for OrSet<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const TYPE_NAME: &str = "OrSet";
        let repr = ReprIn::<T>::deserialize(deserializer)?;
        let element_count: usize = repr.groups.iter().map(|g| g.elements.len()).sum();
        let mut set = OrSet {
            entries: SmallMap::with_capacity(element_count),
            ctx: repr.context,
        };
        let mut previous_replica = None;
        for group in repr.groups {
            if previous_replica.is_some_and(|p| p >= group.replica) {
                return Err(invalid(TYPE_NAME, InvalidRule::Unsorted));
            }
            previous_replica = Some(group.replica);
            let mut counter = 0u64;
            for (gap, element) in group.elements {
                if gap == 0 {
                    let rule = if counter == 0 {
                        InvalidRule::ZeroCounter
                    } else {
                        InvalidRule::DuplicateDot
                    };
                    return Err(invalid(TYPE_NAME, rule));
                }
                counter = counter
                    .checked_add(gap)
                    .ok_or_else(|| invalid(TYPE_NAME, InvalidRule::CounterOverflow))?;
                let dot = Dot::new(group.replica, counter);
                if !set.ctx.contains(dot) {
                    return Err(invalid(TYPE_NAME, InvalidRule::OutsideContext));
                }
                let dots = set.entries.get_or_insert_with(element, Dots::new);
                debug_assert!(dots.last().is_none_or(|last| *last < dot));
                dots.push(dot);
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u32) -> ReplicaId {
        ReplicaId::from(n)
    }

    #[test]
    fn remove_after_observe_is_not_resurrected_by_older_state() {
        let mut a = OrSet::new();
        a.insert(r(1), 7u64);
        let old = a.clone();
        a.remove(&7);
        a.merge(&old);
        assert!(!a.contains(&7));
    }

    #[test]
    fn remove_delta_applies_remotely() {
        let mut a = OrSet::new();
        let mut b = OrSet::new();
        b.merge(&a.insert(r(1), "x"));
        b.merge(&a.insert(r(1), "y"));
        b.merge(&a.remove(&"x"));
        assert_eq!(a, b);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn wire_and_json_round_trip() {
        let mut a: OrSet<(u8, String)> = OrSet::new();
        a.insert(r(1), (1, "a".into()));
        a.insert(r(2), (2, "b".into()));
        a.insert(r(2), (1, "a".into()));
        let mut b = a.clone();
        b.remove(&(2, "b".to_string()));
        let back: OrSet<(u8, String)> =
            crate::wire::decode(&crate::wire::encode(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        let json = serde_json::to_string(&b).unwrap();
        let back: OrSet<(u8, String)> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn dots_outside_context_are_rejected() {
        let json =
            r#"{"context":{"vv":[],"cloud":[]},"groups":[{"replica":1,"elements":[[1,5]]}]}"#;
        assert!(serde_json::from_str::<OrSet<u64>>(json).is_err());
    }
}
