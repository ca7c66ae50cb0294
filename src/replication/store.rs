//! Tables as the engine holds them: typed maps behind a type-erased trait,
//! partitioned into digest buckets for anti-entropy.

use std::any::Any;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::Timestamp;
use crate::crdt::Crdt;
use crate::hash::FastMap;
use crate::replication::reconcile::{IndexFull, RangeIndex, item_fingerprint};
use crate::stream::{Feed, Subscription};
use crate::wire::{self, WireError};

/// Buckets a table's keys are spread over for anti-entropy digests: with
/// 100k keys, a bucket holds ~100, so a handful of differing keys costs a
/// handful of buckets, not the table.
pub(crate) const DIGEST_BUCKETS: usize = 1024;

/// Slots of the map of what changed since a table's range index was last
/// brought up to date: a write sets the bit of its key's slot (by the key's
/// stable hash; 8 KiB of bits, whatever the table's size), and a catch-up
/// re-fingerprints the keys of the dirty slots only (a table of 1M keys
/// holds about 15 per slot). A set of the keys written instead cost a
/// write 0.4 µs more (`cargo bench --bench reconcile -- store-write`).
/// A multiple of [`DIGEST_BUCKETS`], so each slot's keys lie in one bucket.
pub(crate) const INDEX_DIRTY_SLOTS: usize = 64 * 1024;

const _: () = assert!(INDEX_DIRTY_SLOTS.is_multiple_of(DIGEST_BUCKETS));

/// A key, encoded by `wire`: tables take any serde key type.
pub(crate) type Key = Box<[u8]>;

/// 64-bit FNV-1a: a hash every replica computes alike, whatever its
/// process, platform or build, for buckets and digests.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The hash of one item, `key` (its encoding) holding `state` (its
/// canonical encoding): what bucket digests sum, and what range-based
/// reconciliation fingerprints (mixed, see `reconcile::item_fingerprint`).
pub(crate) fn item_hash(key: &[u8], state: &[u8]) -> u64 {
    stable_hash(key) ^ stable_hash(state).rotate_left(17)
}

pub(crate) fn bucket_of(key: &[u8]) -> usize {
    (stable_hash(key) % DIGEST_BUCKETS as u64) as usize
}

/// How a table merges a remote value into a local one. Resolver tables
/// audit the merge; CRDT tables just join.
pub(crate) type Merger<V> = Arc<dyn Fn(&mut V, &V, &[u8], Timestamp) + Send + Sync>;

/// Why a received value was not staged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    /// It does not decode as the table's type.
    #[error(transparent)]
    Undecodable(WireError),
    /// It carries a stamp past the bound: its writer's clock runs ahead.
    #[error("a value stamped {stamp}, past this clock's bound")]
    Ahead { stamp: Timestamp },
}

/// What the engine needs of any table, whatever its value type.
///
/// Received values are merged in two steps, so that a message with one
/// malformed value changes nothing: [`stage`](TableStore::stage) decodes
/// every value first (into a typed buffer, no allocation per value once
/// warm), then [`commit`](TableStore::commit) merges them in the same
/// order, or [`unstage`](TableStore::unstage) forgets them.
pub(crate) trait TableStore: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Decodes `value` (a delta or a full state) and holds it for
    /// [`commit`](TableStore::commit).
    ///
    /// A value stamped later than `stamps_max` (the local clock plus its
    /// max offset, for values from peers) is refused.
    fn stage(&mut self, value: &[u8], stamps_max: Timestamp) -> Result<(), StageError>;
    /// Merges the next staged value under `key`.
    fn commit(&mut self, key: &[u8], at: Timestamp);
    /// Forgets every staged value not yet committed.
    fn unstage(&mut self);
    /// Merges the next staged value under `key` into the key's *pending*
    /// value (see [`Shadow`]): readers keep reading the current value
    /// until [`publish_pending`](TableStore::publish_pending).
    fn commit_pending(&mut self, key: &[u8], at: Timestamp);
    /// Shows every pending value at once, in O(1): from now on reads see
    /// them; [`fold_pending`](TableStore::fold_pending) moves them into
    /// the current values.
    fn publish_pending(&mut self);
    /// Forgets every pending value not published (a transfer given up;
    /// the current values hold every write made meanwhile).
    fn discard_pending(&mut self);
    /// Folds at most `max` published pending values into the current ones,
    /// pushing their keys to `folded`; true while some remain.
    fn fold_pending(&mut self, max: usize, folded: &mut Vec<Key>) -> bool;
    /// The digest of each bucket (0 for an empty bucket), recomputing the
    /// ones changed since the last call.
    fn digests(&mut self) -> Vec<u64>;
    /// Every key and encoded state of `bucket`.
    fn bucket_states(&self, bucket: usize) -> Vec<(Key, Vec<u8>)>;
    /// Number of keys.
    fn len(&self) -> usize;
    /// From now on, remember which keys change (a region with storage).
    fn track_changes(&mut self);
    /// Brings the range index up to date with the table (building it at
    /// the first call; writes before it cost nothing) and returns the keys
    /// whose items changed in it since the previous call (none at the
    /// first).
    ///
    /// # Errors
    /// [`IndexFull`]: the table holds more keys than an index can.
    fn catch_up_index(&mut self) -> Result<Vec<Key>, IndexFull>;
    /// The range index as of the last
    /// [`catch_up_index`](TableStore::catch_up_index) (empty before).
    fn range_index(&self) -> &RangeIndex;
    /// The encoded state of `key`, if the table holds it.
    fn key_state(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// The keys changed since the last call, each with its state packed
    /// as a stored list of one (see [`pack_states`]).
    fn take_changes(&mut self) -> Vec<(Key, Vec<u8>)>;
    /// Counts `key` as changed again (its commit failed).
    fn mark_changed(&mut self, key: &[u8]);
    /// `value` (a delta or a state of this table) in the layout peers of
    /// `protocol` read (see [`wire::encode_bare_legacy_into`]), when that
    /// differs.
    fn legacy_layout(&self, value: &[u8], protocol: u16) -> Option<Vec<u8>>;
}

/// Stored states of one key: length-prefixed encoded states, merged in
/// order when loaded (a declared table stores one; a table held undeclared
/// stores every value received).
pub(crate) fn pack_states<'a>(states: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for state in states {
        wire::put_bytes(&mut out, state);
    }
    out
}

/// The states of a stored list, or an error at the first malformed one.
pub(crate) fn unpack_states(mut packed: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let mut out = Vec::new();
    while !packed.is_empty() {
        out.push(wire::take_bytes(&mut packed)?);
    }
    Ok(out)
}

/// Where a change to a key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeSource {
    /// A write made in this region.
    Local,
    /// A peer's write, from its batch or an anti-entropy transfer.
    Replicated,
}

/// One change to a key as the store publishes it: the key's encoding and
/// its state after the change (cloned per subscriber: `V` need not be
/// `Sync`).
#[derive(Clone)]
pub(crate) struct RawChange<V> {
    pub(crate) key: Key,
    pub(crate) state: V,
    pub(crate) source: ChangeSource,
}

/// The changes a table publishes; a subscriber's filter is the one key it
/// watches, or none for every key.
pub(crate) type ChangeFeed<V> = Feed<RawChange<V>, Option<Key>>;

/// Whether a subscriber with filter `watched` wants changes of `key`.
fn watches(watched: &Option<Key>, key: &[u8]) -> bool {
    watched.as_deref().is_none_or(|k| k == key)
}

/// A table of CRDT values (resolver tables hold `VersionSet`s).
pub(crate) struct CrdtStore<V> {
    buckets: Vec<FastMap<Key, V>>,
    digests: Vec<u64>,
    dirty: Vec<bool>,
    len: usize,
    merger: Merger<V>,
    /// Values decoded by `stage`, and how many were committed.
    staged: Vec<V>,
    committed: usize,
    /// Keys changed since the last commit to storage (regions with
    /// storage only).
    changed: Option<FastMap<Key, ()>>,
    /// Subscribers to its changes (`Table::subscribe`, `Table::watch`).
    changes: ChangeFeed<V>,
    /// The range index and the keys written since it was brought up to
    /// date; `None` until an exchange by ranges needs it.
    ranges: Option<Box<RangeTracking>>,
    /// The pending values of a transfer being merged in slices; `None`
    /// otherwise (reads then cost one branch more).
    shadow: Option<Box<Shadow<V>>>,
}

/// The values a transfer merged in slices brings, beside the current ones.
///
/// While the transfer is merged, each received value is joined into its
/// key's pending value (a copy of the current value at the key's first
/// slice); every local write and applied batch that touches a key with a
/// pending value joins its delta into both, so a pending value is never
/// behind the current one. Readers read the current values until the
/// whole transfer is merged; [`publish`](TableStore::publish_pending) then
/// flips one flag and reads find the pending values first, until each is
/// folded into the current values (by the engine, in bounded slices, or
/// at the key's next write). Nothing of this is stored: a crash loses a
/// pending transfer, which the next exchange repairs.
struct Shadow<V> {
    /// Pending values, by digest bucket (folded bucket by bucket).
    buckets: Vec<FastMap<Key, V>>,
    /// Pending values held (all buckets).
    len: usize,
    /// The whole transfer is merged: reads see the pending values.
    published: bool,
    /// Buckets before this one are folded.
    fold_from: usize,
}

impl<V> Shadow<V> {
    fn new() -> Self {
        Shadow {
            buckets: (0..DIGEST_BUCKETS).map(|_| FastMap::default()).collect(),
            len: 0,
            published: false,
            fold_from: 0,
        }
    }
}

/// A table's range index, kept off the write path: a write only sets a
/// bit (see [`INDEX_DIRTY_SLOTS`]); the index is brought up to date when an
/// exchange reads it.
struct RangeTracking {
    index: RangeIndex,
    /// One bit per slot: a key hashing to it was written since the last
    /// catch-up.
    dirty: Vec<u64>,
}

impl RangeTracking {
    /// Notes a write to a key of stable hash `hash`.
    #[inline]
    fn note(&mut self, hash: u64) {
        let slot = (hash % INDEX_DIRTY_SLOTS as u64) as usize;
        self.dirty[slot / 64] |= 1 << (slot % 64);
    }

    fn is_dirty(&self, slot: usize) -> bool {
        self.dirty[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// Whether a slot of `bucket` is dirty.
    fn bucket_dirty(&self, bucket: usize) -> bool {
        (bucket..INDEX_DIRTY_SLOTS)
            .step_by(DIGEST_BUCKETS)
            .any(|slot| self.is_dirty(slot))
    }
}

/// The index an undeclared table or a table without one reads as: empty.
pub(crate) static EMPTY_INDEX: std::sync::LazyLock<RangeIndex> =
    std::sync::LazyLock::new(RangeIndex::new);

/// The item fingerprint of `key` holding `value`.
fn fingerprint_of<V: Serialize>(key: &[u8], value: &V) -> u64 {
    wire::with_bare(value, |state| item_fingerprint(key, state))
        .unwrap_or_else(|_| item_fingerprint(key, &[]))
}

impl<V> CrdtStore<V>
where
    V: Crdt + Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(merger: Merger<V>) -> Self {
        CrdtStore {
            buckets: (0..DIGEST_BUCKETS).map(|_| FastMap::default()).collect(),
            digests: vec![0; DIGEST_BUCKETS],
            dirty: vec![false; DIGEST_BUCKETS],
            len: 0,
            merger,
            staged: Vec::new(),
            committed: 0,
            changed: None,
            changes: Feed::new(),
            ranges: None,
            shadow: None,
        }
    }

    /// A subscriber to changes of `key` (every key when `None`).
    pub(crate) fn subscribe(
        &self,
        key: Option<Key>,
        capacity: usize,
    ) -> Subscription<RawChange<V>> {
        self.changes.subscribe_where(capacity, key)
    }

    /// The encoding of the value under `key` when a subscriber watches it
    /// (to tell after a merge whether it changed), else `None`.
    fn watched_state(&self, key: &[u8]) -> Option<Vec<u8>> {
        if !self.changes.wants(|watched| watches(watched, key)) {
            return None;
        }
        let state = self.get(key).map(|v| wire::with_bare(v, <[u8]>::to_vec));
        Some(state.and_then(Result::ok).unwrap_or_default())
    }

    /// Offers the state of `key` to its subscribers when it differs from
    /// `before` (a merge that changed nothing is no change).
    fn publish(&self, key: &[u8], before: Option<Vec<u8>>, source: ChangeSource) {
        let Some(before) = before else {
            return;
        };
        let Some(value) = self.get(key) else {
            return;
        };
        if wire::with_bare(value, |after| after == before.as_slice()).unwrap_or(false) {
            return;
        }
        let dropped = self.changes.publish_where(
            |watched| watches(watched, key),
            || RawChange {
                key: key.into(),
                state: value.clone(),
                source,
            },
        );
        if dropped > 0 {
            tracing::debug!(dropped, "change subscriber behind: change dropped for it");
        }
    }

    /// Joins a local write's `delta` into the value under `key` (and into
    /// its pending value, if it has one).
    pub(crate) fn merge_local(&mut self, key: &[u8], delta: &V) {
        let before = self.watched_state(key);
        self.entry(key).merge(delta);
        if let Some(pending) = self.unpublished_mut(key) {
            pending.merge(delta);
        }
        self.publish(key, before, ChangeSource::Local);
    }

    /// The value under `key` readers see: a published pending value first.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        let bucket = bucket_of(key);
        if let Some(shadow) = &self.shadow
            && shadow.published
            && let Some(pending) = shadow.buckets[bucket].get(key)
        {
            return Some(pending);
        }
        self.buckets[bucket].get(key)
    }

    /// The pending value of `key` while its transfer is not published.
    fn unpublished_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let shadow = self.shadow.as_mut().filter(|s| !s.published)?;
        shadow.buckets[bucket_of(key)].get_mut(key)
    }

    /// Every key and value of `bucket` readers see (no order).
    fn bucket_iter(&self, bucket: usize) -> impl Iterator<Item = (&Key, &V)> {
        let shadow = self
            .shadow
            .as_ref()
            .filter(|s| s.published)
            .map(|s| &s.buckets[bucket]);
        let current = self.buckets[bucket]
            .iter()
            .filter(move |(key, _)| shadow.is_none_or(|s| !s.contains_key(*key)));
        current.chain(shadow.into_iter().flat_map(|s| s.iter()))
    }

    /// Every key and value readers see, bucket by bucket (no order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        (0..DIGEST_BUCKETS).flat_map(|bucket| self.bucket_iter(bucket))
    }

    /// The value under `key`, created empty if absent; marks its bucket.
    /// A published pending value of `key` is folded in first.
    pub(crate) fn entry(&mut self, key: &[u8]) -> &mut V {
        if self.shadow.as_ref().is_some_and(|s| s.published) {
            self.fold_key(key);
        }
        self.current_entry(key)
    }

    /// Folds the published pending value of `key`, if any, into its
    /// current value (offered to subscribers as a replicated change).
    fn fold_key(&mut self, key: &[u8]) -> bool {
        let bucket = bucket_of(key);
        let Some(shadow) = self.shadow.as_mut().filter(|s| s.published) else {
            return false;
        };
        let Some((key, pending)) = shadow.buckets[bucket].remove_entry(key) else {
            return false;
        };
        shadow.len -= 1;
        self.install(&key, pending);
        true
    }

    /// Joins a folded pending value into the current value of `key`.
    fn install(&mut self, key: &[u8], pending: V) {
        let before = self.watched_state(key);
        let current = self.current_entry(key);
        // The pending value holds every delta the current one got since
        // its copy: the join is the pending value (kept a join, so a
        // mutation made past `merge_local` is not lost).
        current.merge(&pending);
        self.publish(key, before, ChangeSource::Replicated);
    }

    /// The next staged value, taken out of the buffer.
    fn take_staged(&mut self) -> Option<V> {
        let value = std::mem::take(self.staged.get_mut(self.committed)?);
        self.committed += 1;
        if self.committed == self.staged.len() {
            self.staged.clear();
            self.committed = 0;
        }
        Some(value)
    }

    /// Folds every published pending value at once (before a scan of the
    /// whole table: digests, the range index, a commit to storage).
    fn settle(&mut self) {
        let mut folded = Vec::new();
        while self.fold_pending(usize::MAX, &mut folded) {}
    }

    /// The current value under `key`, created empty if absent; marks its
    /// bucket.
    fn current_entry(&mut self, key: &[u8]) -> &mut V {
        let hash = stable_hash(key);
        let bucket = (hash % DIGEST_BUCKETS as u64) as usize;
        debug_assert_eq!(bucket, bucket_of(key));
        self.dirty[bucket] = true;
        if let Some(ranges) = &mut self.ranges {
            ranges.note(hash);
        }
        if let Some(changed) = &mut self.changed
            && !changed.contains_key(key)
        {
            changed.insert(key.into(), ());
        }
        let map = &mut self.buckets[bucket];
        if !map.contains_key(key) {
            self.len += 1;
            map.insert(key.into(), V::default());
        }
        map.get_mut(key).expect("inserted above")
    }

    /// Merges a received `value` into the value under `key` (and joins it
    /// into its pending value, if it has one).
    pub(crate) fn merge_value(&mut self, key: &[u8], value: &V, at: Timestamp) {
        let before = self.watched_state(key);
        let merger = Arc::clone(&self.merger);
        merger(self.entry(key), value, key, at);
        if let Some(pending) = self.unpublished_mut(key) {
            pending.merge(value);
        }
        self.publish(key, before, ChangeSource::Replicated);
    }

    /// Merges a received `value` into the pending value of `key`, created
    /// from its current value.
    fn merge_pending(&mut self, key: &[u8], value: &V, at: Timestamp) {
        let bucket = bucket_of(key);
        let shadow = self.shadow.get_or_insert_with(|| Box::new(Shadow::new()));
        debug_assert!(
            !shadow.published,
            "a published transfer takes no more values"
        );
        let pending = match shadow.buckets[bucket].get_mut(key) {
            Some(pending) => pending,
            None => {
                let copy = self.buckets[bucket].get(key).cloned().unwrap_or_default();
                shadow.len += 1;
                shadow.buckets[bucket].entry(key.into()).or_insert(copy)
            }
        };
        (self.merger)(pending, value, key, at);
    }
}

impl<V> TableStore for CrdtStore<V>
where
    V: Crdt + Serialize + DeserializeOwned + Send + 'static,
{
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn legacy_layout(&self, value: &[u8], protocol: u16) -> Option<Vec<u8>> {
        let decoded: V = wire::decode_bare(value).ok()?;
        let mut legacy = Vec::with_capacity(value.len());
        wire::encode_bare_legacy_into(&decoded, &mut legacy, protocol).ok()?;
        (legacy != value).then_some(legacy)
    }

    fn stage(&mut self, value: &[u8], stamps_max: Timestamp) -> Result<(), StageError> {
        let value: V = wire::decode_bare(value).map_err(StageError::Undecodable)?;
        if let Some(stamp) = value.latest_stamp()
            && stamp > stamps_max
        {
            return Err(StageError::Ahead { stamp });
        }
        self.staged.push(value);
        Ok(())
    }

    fn commit(&mut self, key: &[u8], at: Timestamp) {
        let Some(value) = self.take_staged() else {
            return;
        };
        self.merge_value(key, &value, at);
    }

    fn unstage(&mut self) {
        self.staged.clear();
        self.committed = 0;
    }

    fn commit_pending(&mut self, key: &[u8], at: Timestamp) {
        let Some(value) = self.take_staged() else {
            return;
        };
        self.merge_pending(key, &value, at);
    }

    fn publish_pending(&mut self) {
        if let Some(shadow) = &mut self.shadow {
            shadow.published = true;
        }
    }

    fn discard_pending(&mut self) {
        if self.shadow.as_ref().is_some_and(|s| !s.published) {
            self.shadow = None;
        }
    }

    fn fold_pending(&mut self, max: usize, folded: &mut Vec<Key>) -> bool {
        let Some(shadow) = self.shadow.as_mut().filter(|s| s.published) else {
            return false;
        };
        let mut taken = Vec::new();
        while taken.len() < max && shadow.fold_from < DIGEST_BUCKETS {
            let bucket = &mut shadow.buckets[shadow.fold_from];
            let room = max - taken.len();
            taken.extend(bucket.extract_if(|_, _| true).take(room));
            if bucket.is_empty() {
                shadow.fold_from += 1;
            }
        }
        shadow.len -= taken.len();
        let done = shadow.fold_from == DIGEST_BUCKETS;
        debug_assert!(!done || shadow.len == 0, "every pending value folded");
        if done {
            self.shadow = None;
        }
        for (key, pending) in taken {
            self.install(&key, pending);
            folded.push(key);
        }
        !done
    }

    fn digests(&mut self) -> Vec<u64> {
        self.settle();
        for bucket in 0..DIGEST_BUCKETS {
            if !self.dirty[bucket] {
                continue;
            }
            self.dirty[bucket] = false;
            // Order-independent: the wrapping sum of each key's hash.
            let mut digest = 0u64;
            for (key, value) in &self.buckets[bucket] {
                let item = wire::with_bare(value, |state| item_hash(key, state))
                    .unwrap_or(stable_hash(key));
                digest = digest.wrapping_add(item);
            }
            self.digests[bucket] = digest;
        }
        self.digests.clone()
    }

    fn bucket_states(&self, bucket: usize) -> Vec<(Key, Vec<u8>)> {
        self.bucket_iter(bucket)
            .filter_map(|(key, value)| {
                wire::with_bare(value, <[u8]>::to_vec)
                    .ok()
                    .map(|state| (key.clone(), state))
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn catch_up_index(&mut self) -> Result<Vec<Key>, IndexFull> {
        self.settle();
        let Some(ranges) = &mut self.ranges else {
            let mut index = RangeIndex::new();
            for (key, value) in self.buckets.iter().flat_map(|bucket| bucket.iter()) {
                index.insert(key, fingerprint_of(key, value))?;
            }
            debug_assert_eq!(index.len(), self.len);
            self.ranges = Some(Box::new(RangeTracking {
                index,
                dirty: vec![0; INDEX_DIRTY_SLOTS / 64],
            }));
            return Ok(Vec::new());
        };
        let mut changed = Vec::new();
        for (b, bucket) in self.buckets.iter().enumerate() {
            if !ranges.bucket_dirty(b) {
                continue;
            }
            for (key, value) in bucket {
                let slot = (stable_hash(key) % INDEX_DIRTY_SLOTS as u64) as usize;
                if !ranges.is_dirty(slot) {
                    continue;
                }
                let item = fingerprint_of(key, value);
                if ranges.index.get(key) != Some(item) {
                    // The dirty bits stay set: the next catch-up retries.
                    ranges.index.insert(key, item)?;
                    changed.push(key.clone());
                }
            }
        }
        ranges.dirty.fill(0);
        debug_assert_eq!(ranges.index.len(), self.len, "every key indexed");
        Ok(changed)
    }

    fn range_index(&self) -> &RangeIndex {
        self.ranges.as_ref().map_or(&EMPTY_INDEX, |r| &r.index)
    }

    fn key_state(&self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.get(key)?;
        wire::with_bare(value, <[u8]>::to_vec).ok()
    }

    fn track_changes(&mut self) {
        self.changed.get_or_insert_with(FastMap::default);
    }

    fn take_changes(&mut self) -> Vec<(Key, Vec<u8>)> {
        // What is published is stored with the vector that claims it.
        self.settle();
        let Some(changed) = &mut self.changed else {
            return Vec::new();
        };
        if changed.is_empty() {
            return Vec::new();
        }
        let keys = std::mem::take(changed);
        keys.into_keys()
            .filter_map(|key| {
                let value = self.buckets[bucket_of(&key)].get(&key)?;
                let state = wire::with_bare(value, |state| pack_states([state])).ok()?;
                Some((key, state))
            })
            .collect()
    }

    fn mark_changed(&mut self, key: &[u8]) {
        if let Some(changed) = &mut self.changed {
            changed.insert(key.into(), ());
        }
    }
}

/// Values for a table this region has not declared (yet): kept encoded,
/// merged in when the table is declared. Past the region's
/// `undeclared_bytes_max` values are dropped instead, and counted here:
/// declaring the table then starts an anti-entropy exchange that brings
/// them.
#[derive(Default)]
pub(crate) struct UndeclaredStore {
    pub(crate) values: FastMap<Key, Vec<Vec<u8>>>,
    /// Bytes of keys and values received and held (restored ones are not
    /// counted).
    pub(crate) bytes: usize,
    /// Values received and dropped: the bound was reached.
    pub(crate) dropped: u64,
}
