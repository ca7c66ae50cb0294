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
use crate::wire::{InvalidRule, Unknown, ValueBytes, ValueOf, invalid};

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
///
/// # Schema evolution
/// Since protocol 6 (storage format 5) each value is **delimited**: a byte
/// string of its own inside its row, read tolerantly, as the values of a
/// [`VersionSet`](crate::resolve::VersionSet) are (see its *Schema
/// evolution* section for the full table). Adding a trailing field marked
/// `#[serde(default)]` to `V` is safe while older builds still run: an
/// older value reads with the default, and a newer value read by an old
/// build keeps the bytes it does not know
/// ([`unknown_bytes`](LwwMap::unknown_bytes)) and ships them on. Removing,
/// reordering or retyping fields of `V`, a trailing field without a
/// default, an enum variant added anywhere but at the end, and *any*
/// change to the key type `K` (keys are not delimited: they are compared
/// by their bytes) are not safe.
///
/// The binary encoding is the list of rows `(key, stamp, tag, ...)` in
/// the order described on `Serialize`; the tag byte says the layout of
/// the row's value: `0` a tombstone, `1` the older layout (the value
/// positional: what protocol-5 peers are sent and format-4 stores hold,
/// still decoded), `2` delimited (the value's bytes, then any it kept
/// unread). An older encoding can never hold a `2` there: it was the tag
/// of an `Option`, which bincode writes as `0` or `1`. A map of tombstones
/// only is the same in both layouts. The human-readable form (JSON) is
/// unchanged and carries no unknown bytes.
///
/// ```
/// use archipelago::clock::{Hlc, ManualClock, ReplicaId};
/// use archipelago::crdt::LwwMap;
/// use archipelago::wire;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V1 { visits: u32 }
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V2 { visits: u32, #[serde(default)] nickname: Option<String> }
///
/// let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
/// let mut new = LwwMap::new();
/// new.insert(hlc.stamp(), 7u64, V2 { visits: 4, nickname: Some("Aiko".into()) });
/// let bytes = wire::encode(&new)?;
/// let at_old: LwwMap<u64, V1> = wire::decode(&bytes)?;
/// assert_eq!(at_old.get(&7), Some(&V1 { visits: 4 }));
/// assert_eq!(wire::encode(&at_old)?, bytes, "the unknown field travels on");
/// # Ok::<(), wire::WireError>(())
/// ```
pub struct LwwMap<K, V> {
    entries: FastMap<K, Entry<V>>,
    /// Entries holding a value (not tombstones).
    live: usize,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Entry<V> {
    stamp: Stamp,
    value: Option<V>,
    /// The bytes of the value this build's `V` left unread.
    unknown: Unknown,
}

/// A row's tag in the binary form: a tombstone.
const TOMBSTONE: u8 = 0;
/// A row's tag in the binary form: the value positional (older layout).
const POSITIONAL: u8 = 1;
/// A row's tag in the binary form: the value delimited.
const DELIMITED: u8 = 2;

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
                unknown: Unknown::default(),
            },
        )
    }

    /// Deletes `key` at `stamp`; returns the delta. The tombstone is written
    /// even when the key is absent here: it also beats older writes this
    /// replica has not received yet.
    pub fn remove(&mut self, stamp: Stamp, key: K) -> Self {
        self.write(
            key,
            Entry {
                stamp,
                value: None,
                unknown: Unknown::default(),
            },
        )
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

    /// The bytes of `key`'s value this build's `V` did not read (empty
    /// unless a newer build's `V`, with more trailing fields, wrote it):
    /// kept and re-sent after the value's own bytes (see *Schema
    /// evolution*).
    pub fn unknown_bytes<Q>(&self, key: &Q) -> &[u8]
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map_or(&[], |e| e.unknown.bytes())
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

/// Serialized as a sequence of rows, each `(key, stamp, value or none)`
/// (binary: `(key, stamp, tag, value bytes)`, see *Schema evolution* on
/// [`LwwMap`]): any key type works, JSON included. Rows are in stamp order
/// (keys written by one stamp in the order of their encoding), so equal
/// maps encode to equal bytes whatever their hash tables look like:
/// anti-entropy digests rely on it.
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
        if serializer.is_human_readable() {
            return serializer.collect_seq(rows.into_iter().map(|(k, e)| (k, e.stamp, &e.value)));
        }
        let positional = crate::wire::positional_crdt_values();
        serializer.collect_seq(rows.into_iter().map(|(key, entry)| RowRef {
            key,
            entry,
            positional,
        }))
    }
}

/// A row in the binary form: `(key, stamp, tag, value)`.
struct RowRef<'a, K, V> {
    key: &'a K,
    entry: &'a Entry<V>,
    /// The older layout's value, for protocol-5 peers.
    positional: bool,
}

impl<K: Serialize, V: Serialize> Serialize for RowRef<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(4)?;
        tuple.serialize_element(self.key)?;
        tuple.serialize_element(&self.entry.stamp)?;
        match &self.entry.value {
            None => tuple.serialize_element(&TOMBSTONE)?,
            Some(value) if self.positional => {
                tuple.serialize_element(&POSITIONAL)?;
                tuple.serialize_element(value)?;
            }
            Some(value) => {
                tuple.serialize_element(&DELIMITED)?;
                tuple.serialize_element(&ValueBytes(value, self.entry.unknown.bytes()))?;
            }
        }
        tuple.end()
    }
}

/// A decoded row: its key and entry.
struct Row<K, V>(K, Entry<V>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Row<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let (key, stamp, value) = <(K, Stamp, Option<V>)>::deserialize(deserializer)?;
            let unknown = Unknown::default();
            return Ok(Row(
                key,
                Entry {
                    stamp,
                    value,
                    unknown,
                },
            ));
        }
        deserializer.deserialize_tuple(4, RowVisitor(std::marker::PhantomData))
    }
}

struct RowVisitor<K, V>(std::marker::PhantomData<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for RowVisitor<K, V> {
    type Value = Row<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row of a last-writer-wins map")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("a row ends early");
        let key = seq.next_element()?.ok_or_else(missing)?;
        let stamp = seq.next_element()?.ok_or_else(missing)?;
        let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
        let (value, unknown) = match tag {
            TOMBSTONE => (None, Unknown::default()),
            POSITIONAL => (
                Some(seq.next_element()?.ok_or_else(missing)?),
                Unknown::default(),
            ),
            DELIMITED => {
                let ValueOf(value, unknown) = seq.next_element()?.ok_or_else(missing)?;
                (Some(value), unknown)
            }
            _ => return Err(invalid("LwwMap", InvalidRule::UnknownLayout)),
        };
        Ok(Row(
            key,
            Entry {
                stamp,
                value,
                unknown,
            },
        ))
    }
}

impl<'de, K, V> Deserialize<'de> for LwwMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq + Clone,
    V: Deserialize<'de> + Clone,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rows = Vec::<Row<K, V>>::deserialize(deserializer)?;
        let mut map = LwwMap {
            entries: FastMap::with_capacity_and_hasher(rows.len(), ProcessHasher),
            live: 0,
        };
        for Row(key, entry) in rows {
            map.live += usize::from(entry.value.is_some());
            if map.entries.insert(key, entry).is_some() {
                return Err(invalid("LwwMap", InvalidRule::KeyRepeated));
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
