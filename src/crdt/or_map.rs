//! [`OrMap`]: a map of CRDTs (its page is the type's, since this module
//! is private).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::{SmallVec, smallvec};

use super::Crdt;
use super::small_map::SmallMap;
use crate::clock::{CausalContext, Dot, ReplicaId};
use crate::wire::{InvalidRule, invalid};

/// The dots that keep a key in the map, each with the value written under
/// it. Sorted by dot, never empty; almost always exactly one.
type Payloads<V> = SmallVec<[(Dot, V); 1]>;

/// A map of CRDTs with observed-remove, add-wins keys.
///
/// A cart of quantities: each line a counter, lines added and removed
/// concurrently at two regions.
///
/// ```
/// use archipelago::clock::ReplicaId;
/// use archipelago::crdt::{Crdt, OrMap, PnCounter};
///
/// let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut cart_tokyo: OrMap<&str, PnCounter> = OrMap::new();
/// let tea = cart_tokyo.update(tokyo, "tea", |q| q.inc(tokyo, 1));
/// let rice = cart_tokyo.update(tokyo, "rice", |q| q.inc(tokyo, 1));
/// let mut cart_frankfurt = OrMap::new();
/// cart_frankfurt.merge(&tea);
/// cart_frankfurt.merge(&rice);
///
/// // Concurrently: Tokyo adds two more tea, Frankfurt drops the rice.
/// let more_tea = cart_tokyo.update(tokyo, "tea", |q| q.inc(tokyo, 2));
/// let no_rice = cart_frankfurt.remove(&"rice");
/// cart_tokyo.merge(&no_rice);
/// cart_frankfurt.merge(&more_tea);
///
/// assert_eq!(cart_tokyo, cart_frankfurt);
/// assert_eq!(cart_tokyo.get(&"tea").map(|q| q.value()), Some(3));
/// assert!(cart_tokyo.get(&"rice").is_none());
/// ```
///
/// # Semantics
/// - **Keys are add-wins.** Each update of a key is a write with its own
///   [`Dot`]; a remove drops the dots it has observed (keeping them in the
///   map's [`CausalContext`], no tombstone per key). An update concurrent
///   with a remove made a dot the remove did not see, so the key stays.
/// - **Values merge by their own join.** Each dot of a key carries the value
///   as the replica writing it saw it; the key reads as the join of the
///   values of its surviving dots. An update folds the dots it observed into
///   its one new dot, so a key carries at most one dot per replica that
///   updated it concurrently, almost always exactly one.
/// - **A remove resets what it observed.** After a remove, the value
///   restarts from `V::default()`: updating the key again does not bring the
///   old value back, and neither does merging an older state. An update
///   concurrent with the remove survives with the value *its* replica had
///   seen (as in Riak's maps): the remove resets exactly what no concurrent
///   update carried forward.
/// - **Values can be maps**: `OrMap<K1, OrMap<K2, V>>` nests; each inner
///   map keeps its own context.
///
/// # Deltas
/// An update's delta holds its new dot, the dots it replaced, and the key's
/// whole new value (for a fresh key, just the delta the closure returned).
/// That value is small for counters and registers; for a nested map it is
/// the whole inner map of that key. A remove's delta is the dots removed.
///
/// A dot's value is fixed when the dot is made, so states holding the same
/// dot hold the same value and a merge keeps its own copy. Decoding checks
/// dots (never 0, each once, sorted per key, all in the context, every key
/// with one) and leaves each value to its own decoder.
pub struct OrMap<K, V> {
    entries: SmallMap<K, Payloads<V>>,
    ctx: CausalContext,
}

impl<K: Hash + Eq + Clone, V: Crdt> OrMap<K, V> {
    /// The empty map.
    pub fn new() -> Self {
        OrMap {
            entries: SmallMap::default(),
            ctx: CausalContext::new(),
        }
    }

    /// Updates the value under `key` on behalf of `replica`; returns the
    /// map's delta.
    ///
    /// `f` receives the current value (`V::default()` for a key not in the
    /// map, or removed), changes it with the value's own mutators and
    /// returns the value's delta, as those mutators do.
    pub fn update(&mut self, replica: ReplicaId, key: K, f: impl FnOnce(&mut V) -> V) -> Self {
        let dot = self.ctx.next_dot(replica);
        let mut delta_ctx = CausalContext::new();
        delta_ctx.insert(dot);
        let payloads = self.entries.get_or_insert_with(key.clone(), Payloads::new);
        let delta_value = match payloads.split_first_mut() {
            None => {
                // A fresh key: ⊥ ⊔ δ = δ, so the value's delta is the value.
                let mut value = V::default();
                let delta = f(&mut value);
                payloads.push((dot, value));
                delta
            }
            Some(((first_dot, first), rest)) => {
                delta_ctx.insert(*first_dot);
                for (old_dot, value) in rest.iter() {
                    delta_ctx.insert(*old_dot);
                    first.merge(value);
                }
                *first_dot = dot;
                drop(f(first));
                let value = first.clone();
                payloads.truncate(1);
                value
            }
        };
        debug_assert!(payloads.len() == 1 && payloads[0].0 == dot);
        let mut entries = SmallMap::default();
        entries.insert(key, smallvec![(dot, delta_value)]);
        OrMap {
            entries,
            ctx: delta_ctx,
        }
    }

    /// Removes `key` as this replica has observed it; returns the delta.
    ///
    /// Removing a key that is not in the map changes nothing and returns an
    /// empty delta (its [`context`](OrMap::context) is empty). An update
    /// made concurrently elsewhere is not observed here, so it survives.
    pub fn remove<Q>(&mut self, key: &Q) -> Self
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut delta = OrMap::new();
        if let Some(payloads) = self.entries.remove(key) {
            for (dot, _) in payloads {
                delta.ctx.insert(dot);
            }
        }
        delta
    }

    /// The value under `key`: borrowed when one dot keeps the key (the
    /// usual case), the join of the concurrent values otherwise.
    pub fn get<Q>(&self, key: &Q) -> Option<Cow<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|p| read(p))
    }

    /// True when `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// The keys and their values, in no particular order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, Cow<'_, V>)> + '_ {
        self.entries.iter().map(|(k, p)| (k, read(p)))
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map has no key (a remove delta is empty too: its
    /// information is in its [`context`](OrMap::context)).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every dot this map has seen.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    /// The dots that keep `key` in the map, sorted (empty when absent).
    pub fn dots<Q>(&self, key: &Q) -> impl Iterator<Item = Dot> + '_
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .into_iter()
            .flat_map(|p| p.iter().map(|(d, _)| *d))
    }
}

/// The value of a key: the join of its dots' values.
fn read<V: Crdt>(payloads: &Payloads<V>) -> Cow<'_, V> {
    debug_assert!(!payloads.is_empty());
    match payloads.as_slice() {
        [(_, only)] => Cow::Borrowed(only),
        [(_, first), rest @ ..] => {
            let mut value = first.clone();
            for (_, v) in rest {
                value.merge(v);
            }
            Cow::Owned(value)
        }
        [] => Cow::Owned(V::default()),
    }
}

impl<K: Hash + Eq + Clone, V: Crdt> Crdt for OrMap<K, V> {
    /// The ORSWOT join over each key's dots: a dot survives when both sides
    /// hold it, or when one side holds it and the other has never seen it;
    /// a key survives while one of its dots does.
    fn merge(&mut self, other: &Self) {
        // 1. Our dots that `other` has seen and dropped are removed (skipped
        //    when the contexts share no dot: `other` cannot have seen ours).
        if self.ctx.intersects(&other.ctx) {
            let their_ctx = &other.ctx;
            self.entries.retain(|key, mine| {
                if !mine.iter().any(|(d, _)| their_ctx.contains(*d)) {
                    return true;
                }
                let theirs = other.entries.get(key).map_or(&[][..], |p| p.as_slice());
                mine.retain(|(d, _)| !their_ctx.contains(*d) || theirs.iter().any(|(t, _)| t == d));
                !mine.is_empty()
            });
        }
        // 2. Their dots we have never seen are added, with their values
        //    (our context is the pre-merge one: it is joined last).
        if self.ctx.covers(&other.ctx) {
            return;
        }
        self.entries.reserve(other.entries.len());
        let our_ctx = &self.ctx;
        for (key, theirs) in &other.entries {
            if theirs.iter().all(|(d, _)| our_ctx.contains(*d)) {
                continue;
            }
            let fresh = theirs.iter().filter(|(d, _)| !our_ctx.contains(*d));
            match self.entries.get_mut(key) {
                Some(mine) => {
                    for (d, v) in fresh {
                        if let Err(at) = mine.binary_search_by_key(d, |(m, _)| *m) {
                            mine.insert(at, (*d, v.clone()));
                        }
                    }
                }
                None => {
                    self.entries.insert(key.clone(), fresh.cloned().collect());
                }
            }
        }
        self.ctx.merge(&other.ctx);
    }
}

impl<K: Hash + Eq + Clone, V: Crdt> Default for OrMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone, V: Clone> Clone for OrMap<K, V> {
    fn clone(&self) -> Self {
        OrMap {
            entries: self.entries.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for OrMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.ctx == other.ctx && self.entries == other.entries
    }
}

impl<K: Hash + Eq, V: Eq> Eq for OrMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for OrMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrMap")
            .field("entries", &self.entries)
            .field("ctx", &self.ctx)
            .finish()
    }
}

// Serialized form: the context, then a sequence of (key, [(dot, value)])
// pairs sorted by their first dot (a sequence, not a map, so any key type
// goes through JSON).

#[derive(Serialize)]
struct ReprOut<'a, K, V> {
    context: &'a CausalContext,
    entries: Vec<(&'a K, &'a [(Dot, V)])>,
}

#[derive(Deserialize)]
struct ReprIn<K, V> {
    context: CausalContext,
    entries: Vec<(K, Vec<(Dot, V)>)>,
}

impl<K: Serialize, V: Serialize> Serialize for OrMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(&K, &[(Dot, V)])> = self
            .entries
            .iter()
            .map(|(k, p)| (k, p.as_slice()))
            .collect();
        // Dots are unique across keys: sorting by each key's first dot gives
        // one encoding per state, whatever the hash table's order
        // (anti-entropy digests compare encodings).
        entries.sort_unstable_by_key(|(_, p)| p[0].0);
        ReprOut {
            context: &self.ctx,
            entries,
        }
        .serialize(serializer)
    }
}

/// Rejects a key repeated or without a dot, dots unsorted within a key or
/// keys not sorted by their first dot (the one encoding of a state), a dot
/// of counter 0, the same dot twice (within a key or across keys) and a dot
/// outside the context. Each value is checked by its own decoder. One pass
/// over the entries, then one sort of every dot.
impl<'de, K, V> Deserialize<'de> for OrMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq + Clone,
    V: Deserialize<'de> + Crdt,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const TYPE_NAME: &str = "OrMap";
        let repr = ReprIn::<K, V>::deserialize(deserializer)?;
        let mut map = OrMap {
            entries: SmallMap::with_capacity(repr.entries.len()),
            ctx: repr.context,
        };
        let mut every_dot = Vec::with_capacity(repr.entries.len());
        let mut previous_first: Option<Dot> = None;
        for (key, payloads) in repr.entries {
            let Some(&(first, _)) = payloads.first() else {
                return Err(invalid(TYPE_NAME, InvalidRule::KeyWithoutDot));
            };
            match previous_first {
                Some(p) if p == first => return Err(invalid(TYPE_NAME, InvalidRule::DuplicateDot)),
                Some(p) if p > first => return Err(invalid(TYPE_NAME, InvalidRule::Unsorted)),
                _ => {}
            }
            previous_first = Some(first);
            let mut previous: Option<Dot> = None;
            for (dot, _) in &payloads {
                if dot.counter == 0 {
                    return Err(invalid(TYPE_NAME, InvalidRule::ZeroCounter));
                }
                match previous {
                    Some(p) if p == *dot => {
                        return Err(invalid(TYPE_NAME, InvalidRule::DuplicateDot));
                    }
                    Some(p) if p > *dot => return Err(invalid(TYPE_NAME, InvalidRule::Unsorted)),
                    _ => {}
                }
                if !map.ctx.contains(*dot) {
                    return Err(invalid(TYPE_NAME, InvalidRule::OutsideContext));
                }
                previous = Some(*dot);
                every_dot.push(*dot);
            }
            if map.entries.insert(key, payloads.into()).is_some() {
                return Err(invalid(TYPE_NAME, InvalidRule::KeyRepeated));
            }
        }
        every_dot.sort_unstable();
        if every_dot.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(TYPE_NAME, InvalidRule::DuplicateDot));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{GCounter, PnCounter};

    fn r(n: u32) -> ReplicaId {
        ReplicaId::from(n)
    }

    #[test]
    fn a_removed_value_restarts_from_zero() {
        let mut a: OrMap<u8, GCounter> = OrMap::new();
        a.update(r(1), 1, |c| c.inc(r(1), 5));
        let old = a.clone();
        a.remove(&1);
        a.merge(&old);
        assert!(a.get(&1).is_none(), "an older state does not bring it back");
        a.update(r(1), 1, |c| c.inc(r(1), 1));
        assert_eq!(a.get(&1).unwrap().value(), 1);
    }

    #[test]
    fn concurrent_updates_keep_one_dot_each_then_fold() {
        let mut a: OrMap<u8, GCounter> = OrMap::new();
        let mut b: OrMap<u8, GCounter> = OrMap::new();
        let da = a.update(r(1), 7, |c| c.inc(r(1), 2));
        let db = b.update(r(2), 7, |c| c.inc(r(2), 3));
        a.merge(&db);
        b.merge(&da);
        assert_eq!(a, b);
        assert_eq!(a.dots(&7).count(), 2);
        assert_eq!(a.get(&7).unwrap().value(), 5);
        let folded = a.update(r(1), 7, |c| c.inc(r(1), 1));
        b.merge(&folded);
        assert_eq!(b.dots(&7).count(), 1);
        assert_eq!(b.get(&7).unwrap().value(), 6);
    }

    #[test]
    fn wire_and_json_round_trip_with_nested_maps() {
        let mut carts: OrMap<(u8, String), OrMap<u64, PnCounter>> = OrMap::new();
        carts.update(r(1), (1, "ann".into()), |cart| {
            cart.update(r(1), 42, |q| q.inc(r(1), 2))
        });
        carts.update(r(2), (2, "bo".into()), |cart| {
            cart.update(r(2), 7, |q| q.dec(r(2), 1))
        });
        carts.remove(&(2, "bo".to_string()));
        let back: OrMap<(u8, String), OrMap<u64, PnCounter>> =
            crate::wire::decode(&crate::wire::encode(&carts).unwrap()).unwrap();
        assert_eq!(back, carts);
        let json = serde_json::to_string(&carts).unwrap();
        let back: OrMap<(u8, String), OrMap<u64, PnCounter>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, carts);
    }

    #[test]
    fn equal_maps_encode_to_equal_bytes_whatever_their_order_of_arrival() {
        let mut a: OrMap<u8, GCounter> = OrMap::new();
        let deltas: Vec<_> = (0..6u8)
            .map(|k| a.update(r(u32::from(k % 3) + 1), k, |c| c.inc(r(1), 1)))
            .collect();
        let mut b = OrMap::new();
        for delta in deltas.iter().rev() {
            b.merge(delta);
        }
        assert_eq!(a, b);
        assert_eq!(
            crate::wire::encode(&a).unwrap(),
            crate::wire::encode(&b).unwrap()
        );
    }

    #[test]
    fn malformed_dots_are_rejected() {
        let ctx = r#"{"vv":[[1,2]],"cloud":[]}"#;
        let decode = |entries: &str| {
            let json = format!(r#"{{"context":{ctx},"entries":{entries}}}"#);
            serde_json::from_str::<OrMap<u8, GCounter>>(&json).map_err(|e| e.to_string())
        };
        let dot = |c: u64| format!(r#"{{"replica":1,"counter":{c}}}"#);
        assert!(decode(&format!("[[1,[[{},[]]]]]", dot(1))).is_ok());
        let cases = [
            (format!("[[1,[[{},[]]]]]", dot(3)), "outside"),
            (format!("[[1,[[{},[]]]]]", dot(0)), "counter 0"),
            (format!("[[1,[[{},[]],[{},[]]]]]", dot(2), dot(1)), "order"),
            (
                format!("[[1,[[{},[]]]],[2,[[{},[]]]]]", dot(1), dot(1)),
                "same dot",
            ),
            (
                format!("[[1,[[{},[]]]],[2,[[{},[]]]]]", dot(2), dot(1)),
                "order",
            ),
            (
                format!(
                    "[[1,[[{},[]],[{},[]]]],[2,[[{},[]]]]]",
                    dot(1),
                    dot(2),
                    dot(2)
                ),
                "same dot",
            ),
            (
                format!("[[1,[[{},[]]]],[1,[[{},[]]]]]", dot(1), dot(2)),
                "key repeated",
            ),
            ("[[1,[]]]".to_string(), "without a dot"),
        ];
        for (entries, expected) in cases {
            let err = decode(&entries).unwrap_err();
            assert!(err.contains(expected), "{entries}: {err}");
        }
    }
}
