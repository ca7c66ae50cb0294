//! A map whose keys each follow last-writer-wins, deletes included.
//!
//! ```
//! use archipelago::clock::{Hlc, ManualClock, ReplicaId};
//! use archipelago::crdt::{Crdt, LwwMap};
//!
//! let wall = ManualClock::new(1_000);
//! let tokyo = Hlc::with_clock(ReplicaId::new(1), wall.clone());
//! let frankfurt = Hlc::with_clock(ReplicaId::new(2), wall.clone());
//!
//! let mut a = LwwMap::new();
//! let mut b = LwwMap::new();
//! let d1 = a.insert(tokyo.stamp(), "name", "Aiko");
//! let d2 = b.insert(frankfurt.stamp(), "city", "Berlin");
//! wall.advance(1);
//! let d3 = b.remove(frankfurt.stamp(), "name"); // a later delete wins over the insert
//! for d in [&d2, &d3] { a.merge(d); }
//! b.merge(&d1);
//! assert_eq!(a, b);
//! assert_eq!(a.get(&"name"), None);
//! assert_eq!(a.get(&"city"), Some(&"Berlin"));
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Crdt;
use crate::clock::Stamp;
use crate::hash::{FastMap, ProcessHasher};

/// A map from keys to plain values; per key, the write or delete with the
/// highest [`Stamp`] wins.
///
/// A delete leaves a tombstone (the key, the stamp, no value) so that an
/// older write arriving later cannot bring the key back. Tombstones are kept
/// for good: nothing collects them yet (not the engine either), so a table
/// of many short-lived keys grows by one small entry per deleted key
/// ([`tombstones`](LwwMap::tombstones) counts them). Collecting one is safe
/// only once every region has applied every write stamped before it
/// (causal stability); dropping it earlier lets an older write, still in
/// flight or held by a partitioned region, resurrect the key (Cassandra's
/// `gc_grace` failure). The engine does not know every region's applied
/// vector yet, so it does not collect them.
pub struct LwwMap<K, V> {
    entries: FastMap<K, Entry<V>>,
    /// Entries holding a value (not tombstones).
    live: usize,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Entry<V> {
    stamp: Stamp,
    value: Option<V>,
}

impl<K: Hash + Eq + Clone, V: Clone> LwwMap<K, V> {
    /// The empty map.
    pub fn new() -> Self {
        LwwMap {
            entries: FastMap::with_hasher(ProcessHasher),
            live: 0,
        }
    }

    /// Writes `value` under `key` at `stamp`; returns the delta. A stamp no
    /// higher than the key's current one loses (the delta still carries it).
    pub fn insert(&mut self, stamp: Stamp, key: K, value: V) -> Self {
        self.write(
            key,
            Entry {
                stamp,
                value: Some(value),
            },
        )
    }

    /// Deletes `key` at `stamp`; returns the delta. The tombstone is written
    /// even when the key is absent here: it also beats older writes this
    /// replica has not received yet.
    pub fn remove(&mut self, stamp: Stamp, key: K) -> Self {
        self.write(key, Entry { stamp, value: None })
    }

    fn write(&mut self, key: K, entry: Entry<V>) -> Self {
        let mut delta = LwwMap {
            entries: FastMap::with_capacity_and_hasher(1, ProcessHasher),
            live: usize::from(entry.value.is_some()),
        };
        self.merge_entry(&key, &entry);
        delta.entries.insert(key, entry);
        delta
    }

    /// The value under `key`, unless absent or deleted.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    /// True when `key` holds a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The stamp of the last write or delete of `key`.
    pub fn stamp<Q>(&self, key: &Q) -> Option<Stamp>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| e.stamp)
    }

    /// The keys holding values, with their values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v)))
    }

    /// Number of keys holding a value.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no key holds a value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of deleted keys whose tombstones are kept.
    pub fn tombstones(&self) -> usize {
        self.entries.len() - self.live
    }

    #[inline]
    fn merge_entry(&mut self, key: &K, theirs: &Entry<V>) {
        match self.entries.get_mut(key) {
            Some(mine) => {
                if theirs.stamp > mine.stamp {
                    self.live = self.live + usize::from(theirs.value.is_some())
                        - usize::from(mine.value.is_some());
                    mine.clone_from(theirs);
                }
            }
            None => {
                self.live += usize::from(theirs.value.is_some());
                self.entries.insert(key.clone(), theirs.clone());
            }
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Crdt for LwwMap<K, V> {
    fn merge(&mut self, other: &Self) {
        self.entries
            .reserve(other.entries.len().saturating_sub(self.entries.len()));
        for (key, theirs) in &other.entries {
            self.merge_entry(key, theirs);
        }
    }

    fn latest_stamp(&self) -> Option<crate::clock::Timestamp> {
        self.entries.values().map(|entry| entry.stamp.time).max()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for LwwMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone, V: Clone> Clone for LwwMap<K, V> {
    fn clone(&self) -> Self {
        LwwMap {
            entries: self.entries.clone(),
            live: self.live,
        }
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for LwwMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<K: Hash + Eq, V: Eq> Eq for LwwMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for LwwMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, e)| (k, (&e.value, e.stamp))))
            .finish()
    }
}

/// Serialized as a sequence of `(key, stamp, value or none)`: any key type
/// works, JSON included. Rows are in stamp order (keys written by one stamp
/// in the order of their encoding), so equal maps encode to equal bytes
/// whatever their hash tables look like: anti-entropy digests rely on it.
impl<K: Serialize, V: Serialize> Serialize for LwwMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut rows: Vec<(&K, &Entry<V>)> = self.entries.iter().collect();
        rows.sort_by_key(|(_, e)| e.stamp);
        let tied = rows.windows(2).any(|w| w[0].1.stamp == w[1].1.stamp);
        if tied {
            let mut keyed: Vec<(Stamp, Vec<u8>, &K, &Entry<V>)> = rows
                .iter()
                .map(|(k, e)| (e.stamp, crate::wire::encode(k).unwrap_or_default(), *k, *e))
                .collect();
            keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            rows = keyed.into_iter().map(|(_, _, k, e)| (k, e)).collect();
        }
        serializer.collect_seq(rows.into_iter().map(|(k, e)| (k, e.stamp, &e.value)))
    }
}

impl<'de, K, V> Deserialize<'de> for LwwMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq + Clone,
    V: Deserialize<'de> + Clone,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rows = Vec::<(K, Stamp, Option<V>)>::deserialize(deserializer)?;
        let mut map = LwwMap {
            entries: FastMap::with_capacity_and_hasher(rows.len(), ProcessHasher),
            live: 0,
        };
        for (key, stamp, value) in rows {
            map.live += usize::from(value.is_some());
            if map.entries.insert(key, Entry { stamp, value }).is_some() {
                return Err(crate::wire::invalid(
                    "LwwMap",
                    crate::wire::InvalidRule::KeyRepeated,
                ));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ReplicaId, Timestamp};

    #[test]
    fn equal_maps_encode_to_equal_bytes_whatever_their_insertion_order() {
        let stamp = |ms| Stamp::new(Timestamp::new(ms, 0), ReplicaId::new(1));
        let mut a = LwwMap::new();
        let mut b = LwwMap::new();
        for i in 0..200u64 {
            a.insert(stamp(i % 7), i, i);
        }
        for i in (0..200u64).rev() {
            b.insert(stamp(i % 7), i, i);
        }
        assert_eq!(a, b);
        assert_eq!(
            crate::wire::encode(&a).unwrap(),
            crate::wire::encode(&b).unwrap()
        );
    }
}
