//! Transactions: writes to several keys and tables of one region that
//! commit as one unit and become visible in every other region at once.
//!
//! ```
//! use archipelago::crdt::GCounter;
//! use archipelago::region::{Region, RegionError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), RegionError> {
//! let region = Region::builder("ap-northeast").build()?;
//! let stock = region.table::<String, GCounter>("sold")?;
//! let orders = region.table::<String, GCounter>("orders")?;
//! let (_, _token) = region.transaction(|tx| {
//!     tx.update(&stock, "matcha", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))?;
//!     tx.update(&orders, "user-1", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))?;
//!     Ok::<_, RegionError>(())
//! })?;
//! assert_eq!(stock.read_with("matcha", |c| c.value())?, Some(1));
//! # Ok(()) }
//! ```
//!
//! The closure runs while the region's state is locked, on copies: it sees
//! one snapshot (and its own staged writes), and an error or a panic in it
//! applies nothing. Its writes are then applied under that same lock, one
//! sequence number (one dot) each, appended to the outbox as one group
//! that no batch, commit or resend boundary cuts: a peer applies them in
//! one batch, after their dependencies. A transaction holds at most
//! [`RegionConfig::batch_len_max`] writes and
//! [`RegionConfig::batch_bytes_max`] bytes of keys and deltas
//! ([`RegionError::TransactionTooLarge`]).

use std::any::Any;
use std::borrow::Borrow;

use super::*;
use crate::replication::store::stable_hash;

/// One staged write: its table, key, and the [`Mutation`] its closures
/// ran on (type-erased), with how to finish it.
struct Staged {
    slot: usize,
    key: Vec<u8>,
    mutation: Box<dyn Any>,
    /// Encodes the delta into the buffer (`false`: no mutator ran).
    encode: fn(&dyn Any, &mut Vec<u8>) -> Result<bool, WireError>,
    /// Joins the delta into the store.
    merge: fn(&mut Core, usize, &[u8], &dyn Any),
}

fn encode_of<V: Crdt + Serialize + 'static>(
    m: &dyn Any,
    out: &mut Vec<u8>,
) -> Result<bool, WireError> {
    let m = m.downcast_ref::<Mutation<V>>().expect("typed at staging");
    match &m.delta {
        None => Ok(false),
        Some(delta) => wire::encode_bare_into(delta, out).map(|_| true),
    }
}

fn merge_of<V: Crdt + Serialize + DeserializeOwned + Send + 'static>(
    core: &mut Core,
    slot: usize,
    key: &[u8],
    m: &dyn Any,
) {
    let m = m.downcast_ref::<Mutation<V>>().expect("typed at staging");
    if let Some(delta) = &m.delta {
        core.store_mut::<CrdtStore<V>>(slot)
            .expect("declared by the handle")
            .merge_local(key, delta);
    }
}

/// Staged writes a transaction finds by a scan; past this many it keeps
/// an index by (table, key hash), so a large transaction's writes cost
/// O(1) each to find instead of O(writes).
const STAGED_SCAN_LEN_MAX: usize = 16;

/// The handle a [`Region::transaction`] closure stages its writes and
/// reads its snapshot through.
pub struct Transaction<'a> {
    core: &'a Core,
    hlc: &'a Hlc,
    staged: Vec<Staged>,
    /// Once more than [`STAGED_SCAN_LEN_MAX`] writes are staged: the first
    /// staged write of each (slot, key hash).
    index: crate::hash::FastMap<(usize, u64), usize>,
}

impl Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("staged", &self.staged.len())
            .finish()
    }
}

impl Transaction<'_> {
    /// Where the write of `key` to the table in `slot` is staged, if it is.
    fn position(&self, slot: usize, key: &[u8]) -> Option<usize> {
        let scan = || {
            self.staged
                .iter()
                .position(|s| s.slot == slot && s.key == key)
        };
        if self.staged.len() <= STAGED_SCAN_LEN_MAX {
            return scan();
        }
        match self.index.get(&(slot, stable_hash(key))) {
            None => None,
            Some(&i) if self.staged[i].key == key && self.staged[i].slot == slot => Some(i),
            // Another key of the same hash came first.
            Some(_) => scan(),
        }
    }

    /// Records the write just staged in the index (all of them once the
    /// scan bound is passed).
    fn indexed(&mut self) {
        let len = self.staged.len();
        if len <= STAGED_SCAN_LEN_MAX {
            return;
        }
        let from = if len == STAGED_SCAN_LEN_MAX + 1 {
            0
        } else {
            len - 1
        };
        for (i, s) in self.staged.iter().enumerate().skip(from) {
            self.index.entry((s.slot, stable_hash(&s.key))).or_insert(i);
        }
        debug_assert!(
            self.index.len() <= len,
            "one entry per staged write at most"
        );
    }

    fn mutation<V>(&mut self, slot: usize, key: Vec<u8>) -> &mut Mutation<V>
    where
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
    {
        let found = self.position(slot, &key);
        let i = match found {
            Some(i) => i,
            None => {
                let stored = self
                    .core
                    .store::<CrdtStore<V>>(slot)
                    .expect("declared by the handle")
                    .get(&key);
                self.staged.push(Staged {
                    slot,
                    key,
                    mutation: Box::new(Mutation {
                        held: stored.is_some(),
                        working: stored.cloned().unwrap_or_default(),
                        delta: None::<V>,
                    }),
                    encode: encode_of::<V>,
                    merge: merge_of::<V>,
                });
                self.indexed();
                self.staged.len() - 1
            }
        };
        self.staged[i]
            .mutation
            .downcast_mut::<Mutation<V>>()
            .expect("one value type per table")
    }

    /// Stages a change of the value under `key` of `table`, as
    /// [`Table::update`] does (several updates of one key join).
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn update<K, V, Q>(
        &mut self,
        table: &Table<K, V>,
        key_of: &Q,
        mutate: impl FnOnce(&mut Mutation<V>, &WriteCtx<'_>),
    ) -> Result<(), RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
    {
        let mut key = Vec::new();
        wire::encode_bare_into(key_of, &mut key)?;
        let ctx = WriteCtx {
            hlc: self.hlc,
            stamp: std::cell::Cell::new(None),
        };
        let mutation = self.mutation::<V>(table.slot, key);
        mutate(mutation, &ctx);
        Ok(())
    }

    /// Stages `value` under `key` of the resolver table, as
    /// [`ResolverTable::put`] does.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn put<K, T, Q>(
        &mut self,
        table: &ResolverTable<K, T>,
        key_of: &Q,
        value: T,
    ) -> Result<(), RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut key = Vec::new();
        wire::encode_bare_into(key_of, &mut key)?;
        let stamp = self.hlc.stamp();
        self.mutation::<VersionSet<T>>(table.slot, key)
            .apply(|s| s.write(stamp, value));
        Ok(())
    }

    /// The value under `key` of the CRDT table in this transaction (a
    /// copy): the snapshot it started on, with its own staged writes.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn read_crdt<K, V, Q>(
        &mut self,
        table: &Table<K, V>,
        key_of: &Q,
    ) -> Result<Option<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
    {
        let mut key = Vec::new();
        wire::encode_bare_into(key_of, &mut key)?;
        let staged = self
            .position(table.slot, &key)
            .and_then(|i| self.staged[i].mutation.downcast_ref::<Mutation<V>>())
            .map(|m| m.working.clone());
        Ok(staged.or_else(|| {
            self.core
                .store::<CrdtStore<V>>(table.slot)
                .and_then(|s| s.get(&key))
                .cloned()
        }))
    }

    /// What `key` of the resolver table reads as in this transaction: the
    /// snapshot it started on, with its own staged writes.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn read<K, T, Q>(
        &mut self,
        table: &ResolverTable<K, T>,
        key_of: &Q,
    ) -> Result<Option<Resolution<T>>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut key = Vec::new();
        wire::encode_bare_into(key_of, &mut key)?;
        let staged = self
            .position(table.slot, &key)
            .and_then(|i| {
                self.staged[i]
                    .mutation
                    .downcast_ref::<Mutation<VersionSet<T>>>()
            })
            .map(|m| m.working.clone());
        let set = staged.or_else(|| {
            self.core
                .store::<CrdtStore<VersionSet<T>>>(table.slot)
                .and_then(|s| s.get(&key))
                .cloned()
        });
        Ok(set.and_then(|s| s.resolve(&*table.resolver)))
    }
}

impl Region {
    /// Runs `f` as a transaction (see the module page of
    /// [`crate::region::transaction`]): its writes are applied
    /// here all together, or not at all when `f` returns an error or
    /// panics, and reach every other region together. Returns what `f`
    /// returned and one session token covering all its writes (empty when
    /// it wrote nothing). Writes are acknowledged at [`AckLevel::Memory`]
    /// ([`transaction_with_ack`](Region::transaction_with_ack) waits for
    /// another level).
    ///
    /// `f` runs while the region's state is locked: keep it short and do
    /// not call back into the region from it (that would deadlock).
    ///
    /// # Errors
    /// What `f` returned; [`RegionError::TransactionTooLarge`] past the
    /// bounds; [`RegionError::Encode`]; [`RegionError::Closed`] after
    /// shutdown; [`RegionError::Engine`] once the engine failed. Nothing is
    /// applied in any of them.
    pub fn transaction<R, E>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<(R, SessionToken), E>
    where
        E: From<RegionError>,
    {
        self.run_transaction(f)
            .map(|(value, token, _)| (value, token))
    }

    /// Runs `f` as [`transaction`](Region::transaction) does, then waits
    /// until its writes are as durable as `ack` asks: [`AckLevel::Local`]
    /// once the commit that holds all of them is on disk,
    /// [`AckLevel::Replicated`]`(n)` once `n` peers have applied all of
    /// them (a transaction's writes are consecutive dots of this region
    /// and reach a peer in one batch, so the last one's acknowledgement
    /// covers them all). A transaction that wrote nothing returns at once.
    ///
    /// The closure runs before the first wait, under the state lock, as
    /// for [`transaction`](Region::transaction).
    ///
    /// # Errors
    /// As [`transaction`](Region::transaction), and: for `Local`,
    /// [`RegionError::NoStorage`] (nothing applied) and, once applied,
    /// [`RegionError::Storage`] or [`RegionError::CommitTimeout`] when the
    /// commit failed or took too long; for `Replicated`,
    /// [`RegionError::ReplicationTimeout`]: the transaction is applied here
    /// and will still replicate, whole.
    pub async fn transaction_with_ack<R, E>(
        &self,
        ack: AckLevel,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<(R, SessionToken), E>
    where
        E: From<RegionError>,
    {
        if ack == AckLevel::Local && !self.inner.durable {
            return Err(RegionError::NoStorage.into());
        }
        let (value, token, last) = self.run_transaction(f)?;
        if let Some(seq) = last {
            match ack {
                AckLevel::Memory => {}
                AckLevel::Local => self.wait_committed(seq).await?,
                AckLevel::Replicated(n) => self.wait_replicated(seq, n).await?,
            }
        }
        Ok((value, token))
    }

    /// A transaction's work: what `f` returned, the token of its writes,
    /// and the sequence number of its last write (none when it wrote
    /// nothing).
    fn run_transaction<R, E>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
    ) -> Result<(R, SessionToken, Option<u64>), E>
    where
        E: From<RegionError>,
    {
        let mut core = self.core()?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(RegionError::Closed.into());
        }
        let mut tx = Transaction {
            core: &core,
            hlc: &self.inner.hlc,
            staged: Vec::new(),
            index: Default::default(),
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut tx)));
        let staged = std::mem::take(&mut tx.staged);
        let result = match outcome {
            Ok(result) => result,
            Err(panic) => {
                drop(core);
                std::panic::resume_unwind(panic);
            }
        };
        let value = result?;
        // Encode every delta before anything changes, into one buffer.
        let mut deltas = Vec::new();
        let mut encoded = Vec::with_capacity(staged.len());
        let mut bytes = 0usize;
        for s in &staged {
            let start = deltas.len();
            if (s.encode)(&*s.mutation, &mut deltas).map_err(RegionError::Encode)? {
                bytes += s.key.len() + deltas.len() - start;
                encoded.push((s, start..deltas.len()));
            } else {
                debug_assert_eq!(
                    deltas.len(),
                    start,
                    "an update without a delta encodes nothing"
                );
            }
        }
        let writes_max = core.config.batch_len_max;
        let bytes_max = core.config.batch_bytes_max;
        if encoded.len() > writes_max || bytes > bytes_max {
            return Err(RegionError::TransactionTooLarge {
                writes: encoded.len(),
                bytes,
                writes_max,
                bytes_max,
            }
            .into());
        }
        if encoded.is_empty() {
            return Ok((value, SessionToken::new(), None));
        }
        let grouped = core.replicating;
        if grouped {
            let first = core.seq + 1;
            core.outbox
                .begin_group(first, encoded.len(), bytes, writes_max, bytes_max);
        }
        // Dots are consecutive: the last write's token covers them all.
        let mut token = SessionToken::new();
        for (s, delta) in &encoded {
            (s.merge)(&mut core, s.slot, &s.key, &*s.mutation);
            token = core.record_write(s.slot, &s.key, &deltas[delta.clone()]);
        }
        if grouped {
            core.outbox.end_group();
            core.record_transaction(encoded.iter().map(|(s, _)| (s.slot, s.key.as_slice())));
        }
        let last = core.seq;
        drop(core);
        Ok((value, token, Some(last)))
    }
}
