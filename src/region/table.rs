//! Typed table handles: [`Table`] (CRDT values) and [`ResolverTable`]
//! (plain values settled by a resolver), each of one key type `K` (see
//! "Keys" on the `region` module page).

use std::borrow::Borrow;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;

use super::*;
use crate::crdt::Reset;
use crate::replication::store::{Key, TableStore};

/// What a declaration found or made: the table's name, slot and counter of
/// undecodable keys.
pub(super) struct Declared {
    pub(super) name: Arc<str>,
    pub(super) slot: usize,
    pub(super) undecodable_keys: Arc<AtomicU64>,
}

/// The result of a scan: a snapshot of a table, decoded, owned by the
/// caller (no lock is held while it is iterated).
#[derive(Debug)]
pub struct Scan<T> {
    items: std::vec::IntoIter<T>,
    skipped: u64,
}

impl<T> Scan<T> {
    /// Keys of the snapshot skipped because they do not decode as the
    /// table's key type.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl<K: Ord, X> Scan<(K, X)> {
    /// The snapshot's keys in `range`, in key order (what `range` scans
    /// return); `skipped` is kept.
    fn within(self, range: &impl RangeBounds<K>) -> Self {
        let mut kept: Vec<(K, X)> = self.items.filter(|(k, _)| range.contains(k)).collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        Scan {
            items: kept.into_iter(),
            skipped: self.skipped,
        }
    }
}

impl<T> Iterator for Scan<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.items.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

impl<T> ExactSizeIterator for Scan<T> {}

impl<T> DoubleEndedIterator for Scan<T> {
    fn next_back(&mut self) -> Option<T> {
        self.items.next_back()
    }
}

impl Region {
    /// Every key of the table in `slot` whose value is `live`, with a copy
    /// of its value (`None` for `keys` scans), copied under the state's
    /// lock in one pass.
    pub(super) fn snapshot<V>(
        &self,
        slot: usize,
        values: bool,
        live: fn(&V) -> bool,
    ) -> Result<Vec<(Key, Option<V>)>, RegionError>
    where
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
    {
        let core = self.core()?;
        let Some(store) = core.store::<CrdtStore<V>>(slot) else {
            return Ok(Vec::new());
        };
        let max = self.inner.config.scan_keys_max;
        if store.len() > max {
            return Err(RegionError::ScanTooLarge {
                table: core.tables[slot].name.to_string(),
                keys: store.len(),
                max,
            });
        }
        let mut out = Vec::with_capacity(store.len());
        out.extend(
            store
                .iter()
                .filter(|(_, value)| live(value))
                .map(|(key, value)| (key.clone(), values.then(|| value.clone()))),
        );
        Ok(out)
    }

    /// Decodes the keys of a snapshot (outside the lock), skipping and
    /// counting those that do not decode as `K`.
    pub(super) fn decode_keys<K: DeserializeOwned, X>(
        &self,
        table: &str,
        undecodable: &AtomicU64,
        entries: Vec<(Key, X)>,
    ) -> (Vec<(K, X)>, u64) {
        let mut skipped = 0u64;
        let mut first_error = None;
        let decoded = entries
            .into_iter()
            .filter_map(|(key, x)| match wire::decode_bare::<K>(&key) {
                Ok(key) => Some((key, x)),
                Err(error) => {
                    skipped += 1;
                    first_error.get_or_insert(error);
                    None
                }
            })
            .collect();
        if let Some(error) = first_error {
            undecodable.fetch_add(skipped, Ordering::Relaxed);
            tracing::warn!(
                region = %self.inner.name,
                table,
                key_type = type_name::<K>(),
                skipped,
                %error,
                "a scan skipped keys that do not decode as the table's key type (declared with another key type elsewhere?)"
            );
        }
        (decoded, skipped)
    }

    /// Runs `f` on the value under `key` of the table in `slot`, under the
    /// state's lock; a panic in `f` reaches the caller after the lock is
    /// released (it changed nothing).
    pub(super) fn read_with<V, Q, R>(
        &self,
        slot: usize,
        key: &Q,
        f: impl FnOnce(&V) -> R,
    ) -> Result<Option<R>, RegionError>
    where
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
        Q: Serialize + ?Sized,
    {
        wire::with_bare(key, |key| {
            let core = self.core()?;
            let Some(value) = core.store::<CrdtStore<V>>(slot).and_then(|s| s.get(key)) else {
                return Ok(None);
            };
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(value))) {
                Ok(r) => Ok(Some(r)),
                Err(panic) => {
                    drop(core);
                    std::panic::resume_unwind(panic);
                }
            }
        })?
    }
}

/// A handle on a CRDT table of keys `K` and values `V`. Clones share it.
pub struct Table<K, V> {
    pub(super) region: Region,
    pub(super) name: Arc<str>,
    /// Its slot in the region: no lookup by name per operation.
    pub(super) slot: usize,
    pub(super) ack: AckLevel,
    pub(super) undecodable_keys: Arc<AtomicU64>,
    pub(super) _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("region", &self.region.inner.name)
            .field("name", &self.name)
            .field("key", &type_name::<K>())
            .field("value", &type_name::<V>())
            .field("ack", &self.ack)
            .finish()
    }
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table {
            region: self.region.clone(),
            name: Arc::clone(&self.name),
            slot: self.slot,
            ack: self.ack,
            undecodable_keys: Arc::clone(&self.undecodable_keys),
            _types: PhantomData,
        }
    }
}

impl<K, V> Table<K, V>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Crdt + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This handle with writes acknowledged at `ack` (see [`AckLevel`]).
    #[must_use]
    pub fn with_ack(mut self, ack: AckLevel) -> Self {
        self.ack = ack;
        self
    }

    /// The acknowledgement level of this handle's writes.
    pub fn ack(&self) -> AckLevel {
        self.ack
    }

    /// Changes the value under `key` (empty if absent) here and now through
    /// `mutate`, which runs mutators on it with [`Mutation::apply`]
    /// (`|cart, ctx| cart.apply(|c| c.insert(ctx.replica(), sku))`); the
    /// join of their deltas is the write's delta, replicated. Returns the
    /// write's session token, once the write is as durable as the handle's
    /// [`AckLevel`] asks (an empty token, at once, when `mutate` applied no
    /// mutator: that is no write).
    ///
    /// The write is all or nothing: `mutate` works on a copy of the value,
    /// and the stored value is joined with the write's delta only once that
    /// delta is encoded. An encoding error (or a panic in `mutate`) leaves
    /// the table as it was and ships nothing, so this region never holds a
    /// change its peers cannot receive. The copy costs a clone of the value
    /// per update: keep values that are written often small (a cart per
    /// key, not a catalogue).
    ///
    /// `mutate` runs while the region's state is locked: keep it short, and
    /// do not call back into the region from it (that would deadlock).
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key or delta cannot be encoded
    /// (nothing changed); [`RegionError::Closed`] after
    /// [`Region::shutdown`]; [`RegionError::Engine`] once the engine
    /// failed; for [`AckLevel::Local`], [`RegionError::NoStorage`],
    /// [`RegionError::Storage`] when its commit failed and
    /// [`RegionError::CommitTimeout`] (the write is applied here in both).
    pub async fn update<Q>(
        &self,
        key: &Q,
        mutate: impl FnOnce(&mut Mutation<V>, &WriteCtx<'_>),
    ) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region
            .write_acked::<V, Q>(self.slot, key, self.ack, mutate)
            .await
    }

    /// As [`update`](Table::update), within a session: first waits (bounded)
    /// until this region has applied what the session's earlier writes and
    /// reads require (monotonic writes, writes follow reads), then records
    /// the write in the session.
    ///
    /// # Errors
    /// As [`update`](Table::update), and [`RegionError::SessionTimeout`].
    pub async fn update_session<Q>(
        &self,
        key: &Q,
        session: &mut Session,
        mutate: impl FnOnce(&mut Mutation<V>, &WriteCtx<'_>),
    ) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.wait_for(session.write_requirement()).await?;
        let token = self.update(key, mutate).await?;
        session.record_write(&token);
        Ok(token)
    }

    /// The value under `key` here, now (eventual consistency): a copy.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub async fn read<Q>(&self, key: &Q) -> Result<Option<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.read::<V, Q>(self.slot, key, None)
    }

    /// Runs `f` on the value under `key` here, now, borrowed instead of
    /// copied, and returns what it returns (`None` when the key is absent).
    ///
    /// `f` runs while the region's state is locked: keep it short, and do
    /// not call back into the region from it (that would deadlock). A
    /// panic in `f` reaches the caller and changes nothing.
    ///
    /// ```
    /// use archipelago::crdt::OrSet;
    /// use archipelago::region::Region;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), archipelago::region::RegionError> {
    /// let region = Region::builder("ap-northeast").build()?;
    /// let carts = region.table::<String, OrSet<String>>("carts")?;
    /// carts.update("user-1", |cart, ctx| cart.apply(|c| c.insert(ctx.replica(), "matcha".into()))).await?;
    /// let has_matcha = carts.read_with("user-1", |cart| cart.contains("matcha"))?;
    /// assert_eq!(has_matcha, Some(true));
    /// assert_eq!(carts.read_with("user-2", |cart| cart.len())?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded;
    /// [`RegionError::Engine`] once the engine failed.
    pub fn read_with<Q, R>(
        &self,
        key: &Q,
        f: impl FnOnce(&V) -> R,
    ) -> Result<Option<R>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.read_with::<V, Q, R>(self.slot, key, f)
    }

    /// The value under `key` once this region has applied what the session
    /// requires (read your writes, monotonic reads), waiting up to
    /// `session_wait_max`; records the read in the session.
    ///
    /// # Errors
    /// [`RegionError::SessionTimeout`] naming what is missing when the
    /// region does not catch up in time: never a stale read.
    pub async fn read_session<Q>(
        &self,
        key: &Q,
        session: &mut Session,
    ) -> Result<Option<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.wait_for(session.read_requirement()).await?;
        self.region.read::<V, Q>(self.slot, key, Some(session))
    }

    /// Every key of the table here, now, in no particular order: a
    /// snapshot (see the [region page](crate::region#scans) for what it costs and how long
    /// it holds the lock; `keys` copies no value).
    ///
    /// # Errors
    /// [`RegionError::ScanTooLarge`] past [`RegionConfig::scan_keys_max`]
    /// keys; [`RegionError::Engine`] once the engine failed.
    pub fn keys(&self) -> Result<Scan<K>, RegionError> {
        let entries = self.region.snapshot::<V>(self.slot, false, |_| true)?;
        let (decoded, skipped) =
            self.region
                .decode_keys::<K, _>(&self.name, &self.undecodable_keys, entries);
        Ok(Scan {
            items: decoded
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .into_iter(),
            skipped,
        })
    }

    /// Every key and value of the table here, now, in no particular order:
    /// a snapshot (see the [region page](crate::region#scans)).
    ///
    /// ```
    /// use archipelago::crdt::GCounter;
    /// use archipelago::region::Region;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), archipelago::region::RegionError> {
    /// let region = Region::builder("ap-northeast").build()?;
    /// let hits = region.table::<String, GCounter>("hits")?;
    /// hits.update("/", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 2))).await?;
    /// hits.update("/about", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1))).await?;
    /// let total: u64 = hits.iter()?.map(|(_, counter)| counter.value()).sum();
    /// assert_eq!(total, 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`keys`](Table::keys).
    pub fn iter(&self) -> Result<Scan<(K, V)>, RegionError> {
        let entries = self.region.snapshot::<V>(self.slot, true, |_| true)?;
        let (decoded, skipped) =
            self.region
                .decode_keys::<K, _>(&self.name, &self.undecodable_keys, entries);
        Ok(Scan {
            items: decoded
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect::<Vec<_>>()
                .into_iter(),
            skipped,
        })
    }

    /// The keys in `range` and their values here, now, in key order: a
    /// snapshot of the whole table (see the [region page](crate::region#scans)), filtered
    /// and sorted outside the lock (keys are stored by hash, not in order).
    ///
    /// ```
    /// use archipelago::crdt::GCounter;
    /// use archipelago::region::Region;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), archipelago::region::RegionError> {
    /// let region = Region::builder("ap-northeast").build()?;
    /// let days = region.table::<u32, GCounter>("visits-by-day")?;
    /// for day in [20261201, 20261202, 20261203] {
    ///     days.update(&day, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1))).await?;
    /// }
    /// let keys: Vec<u32> = days.range(20261202..)?.map(|(day, _)| day).collect();
    /// assert_eq!(keys, [20261202, 20261203]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`keys`](Table::keys).
    pub fn range(&self, range: impl RangeBounds<K>) -> Result<Scan<(K, V)>, RegionError>
    where
        K: Ord,
    {
        Ok(self.iter()?.within(&range))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        let core = self.region.core_any();
        core.tables.get(self.slot).map_or(0, |s| s.store.len())
    }

    /// True when the table has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K, V> Table<K, V>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Reset + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Deletes the value under `key` as this region has observed it (see
    /// [`Reset`] and "Deletes" on the [region page](crate::region#deletes)),
    /// replicated like a write. Returns the write's session token, once as
    /// durable as the handle's [`AckLevel`] asks; an empty token, at once,
    /// when the key is not held here (nothing to delete).
    ///
    /// The key keeps its tombstone, the empty value with the context of
    /// what was deleted: `read` returns that empty value (an empty set),
    /// and scans list the key. A write made concurrently elsewhere, that
    /// this region had not observed, survives the delete.
    ///
    /// ```
    /// use archipelago::crdt::OrSet;
    /// use archipelago::region::Region;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), archipelago::region::RegionError> {
    /// let region = Region::builder("ap-northeast").build()?;
    /// let carts = region.table::<String, OrSet<String>>("carts")?;
    /// carts.update("user-1", |cart, ctx| cart.apply(|c| c.insert(ctx.replica(), "matcha".into()))).await?;
    /// carts.delete("user-1").await?;
    /// assert!(carts.read("user-1").await?.is_some_and(|cart| cart.is_empty()));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`update`](Table::update).
    pub async fn delete<Q>(&self, key: &Q) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region
            .write_acked::<V, Q>(self.slot, key, self.ack, |value, _| {
                if value.held {
                    value.apply(V::reset);
                }
            })
            .await
    }
}

/// A handle on a resolver table of keys `K` and plain values `T`. Clones
/// share it.
pub struct ResolverTable<K, T: Clone> {
    pub(super) region: Region,
    pub(super) name: Arc<str>,
    pub(super) slot: usize,
    pub(super) ack: AckLevel,
    pub(super) resolver: Arc<dyn Resolver<T>>,
    pub(super) feed: ConflictFeed<T>,
    pub(super) undecodable_keys: Arc<AtomicU64>,
    pub(super) _keys: PhantomData<fn() -> K>,
}

impl<K, T: Clone> Debug for ResolverTable<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverTable")
            .field("region", &self.region.inner.name)
            .field("name", &self.name)
            .field("key", &type_name::<K>())
            .field("value", &type_name::<T>())
            .field("strategy", &self.resolver.strategy())
            .field("ack", &self.ack)
            .finish()
    }
}

impl<K, T: Clone> Clone for ResolverTable<K, T> {
    fn clone(&self) -> Self {
        ResolverTable {
            region: self.region.clone(),
            name: Arc::clone(&self.name),
            slot: self.slot,
            ack: self.ack,
            resolver: Arc::clone(&self.resolver),
            feed: self.feed.clone(),
            undecodable_keys: Arc::clone(&self.undecodable_keys),
            _keys: PhantomData,
        }
    }
}

impl<K, T> ResolverTable<K, T>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This handle with writes acknowledged at `ack` (see [`AckLevel`]).
    #[must_use]
    pub fn with_ack(mut self, ack: AckLevel) -> Self {
        self.ack = ack;
        self
    }

    /// Writes `value` under `key`, replacing every version this region has
    /// seen. Returns the write's session token, once the write is as
    /// durable as the handle's [`AckLevel`] asks.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key or value cannot be encoded; as
    /// [`Table::update`] for [`AckLevel::Local`].
    pub async fn put<Q>(&self, key: &Q, value: T) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region
            .write_acked::<VersionSet<T>, Q>(self.slot, key, self.ack, |set, ctx| {
                set.apply(|s| s.write(ctx.stamp(), value));
            })
            .await
    }

    /// Deletes `key`: an observed-remove of every version this region has
    /// seen (see "Deletes" on the [region page](crate::region#deletes)),
    /// replicated like a write. The key then reads as `None` here, and
    /// everywhere once the delete arrives, unless a version the delete had
    /// not seen was written concurrently elsewhere: that version survives
    /// (add-wins) and the key reads as it. Returns the write's session
    /// token, once as durable as the handle's [`AckLevel`] asks; an empty
    /// token, at once, when the key reads as nothing here already.
    ///
    /// ```
    /// use archipelago::region::Region;
    /// use archipelago::resolve::LastWriteWins;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), archipelago::region::RegionError> {
    /// let region = Region::builder("ap-northeast").build()?;
    /// let profiles = region.table_with::<u64, String>("profiles", LastWriteWins)?;
    /// profiles.put(&42, "Aiko".into()).await?;
    /// profiles.delete(&42).await?;
    /// assert!(profiles.read(&42).await?.is_none());
    /// profiles.delete(&7).await?; // absent: harmless
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`put`](ResolverTable::put).
    pub async fn delete<Q>(&self, key: &Q) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region
            .write_acked::<VersionSet<T>, Q>(self.slot, key, self.ack, |set, _| {
                if !set.is_empty() {
                    set.apply(VersionSet::remove);
                }
            })
            .await
    }

    /// As [`put`](ResolverTable::put), within a session (see
    /// [`Table::update_session`]).
    ///
    /// # Errors
    /// As [`put`](ResolverTable::put), and [`RegionError::SessionTimeout`].
    pub async fn put_session<Q>(
        &self,
        key: &Q,
        session: &mut Session,
        value: T,
    ) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.wait_for(session.write_requirement()).await?;
        let token = self.put(key, value).await?;
        session.record_write(&token);
        Ok(token)
    }

    /// What reads of `key` return here, now: the resolver's verdict.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub async fn read<Q>(&self, key: &Q) -> Result<Option<Resolution<T>>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let set = self.region.read::<VersionSet<T>, Q>(self.slot, key, None)?;
        Ok(set.and_then(|s| s.resolve(&*self.resolver)))
    }

    /// As [`read`](ResolverTable::read), within a session (see
    /// [`Table::read_session`]).
    ///
    /// # Errors
    /// [`RegionError::SessionTimeout`] when the region does not catch up.
    pub async fn read_session<Q>(
        &self,
        key: &Q,
        session: &mut Session,
    ) -> Result<Option<Resolution<T>>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.wait_for(session.read_requirement()).await?;
        let set = self
            .region
            .read::<VersionSet<T>, Q>(self.slot, key, Some(session))?;
        Ok(set.and_then(|s| s.resolve(&*self.resolver)))
    }

    /// Every concurrent version of `key`, unresolved.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub async fn versions<Q>(&self, key: &Q) -> Result<Option<VersionSet<T>>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region.read::<VersionSet<T>, Q>(self.slot, key, None)
    }

    /// Runs `f` on the versions of `key` here, now, borrowed instead of
    /// copied (`None` when the key is absent): the resolver-table form of
    /// [`Table::read_with`], with the same rule (keep `f` short, do not call
    /// back into the region from it).
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded;
    /// [`RegionError::Engine`] once the engine failed.
    pub fn versions_with<Q, R>(
        &self,
        key: &Q,
        f: impl FnOnce(&VersionSet<T>) -> R,
    ) -> Result<Option<R>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.region
            .read_with::<VersionSet<T>, Q, R>(self.slot, key, f)
    }

    /// Every key that reads as a value here, now, in no particular order:
    /// a snapshot, as [`Table::keys`].
    ///
    /// # Errors
    /// As [`Table::keys`].
    pub fn keys(&self) -> Result<Scan<K>, RegionError> {
        let entries = self
            .region
            .snapshot::<VersionSet<T>>(self.slot, false, |set| !set.is_empty())?;
        let (decoded, skipped) =
            self.region
                .decode_keys::<K, _>(&self.name, &self.undecodable_keys, entries);
        Ok(Scan {
            items: decoded
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .into_iter(),
            skipped,
        })
    }

    /// Every key and what it reads as here, now (the resolver's verdict,
    /// as [`read`](ResolverTable::read)), in no particular order: a
    /// snapshot, as [`Table::iter`]. The versions are copied under the lock
    /// and resolved outside it.
    ///
    /// ```
    /// use archipelago::region::Region;
    /// use archipelago::resolve::LastWriteWins;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), archipelago::region::RegionError> {
    /// let region = Region::builder("ap-northeast").build()?;
    /// let profiles = region.table_with::<u64, String>("profiles", LastWriteWins)?;
    /// profiles.put(&1, "Aiko".into()).await?;
    /// profiles.put(&2, "Ben".into()).await?;
    /// let mut names: Vec<String> = profiles
    ///     .iter()?
    ///     .filter_map(|(_, read)| read.value().cloned())
    ///     .collect();
    /// names.sort();
    /// assert_eq!(names, ["Aiko", "Ben"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Table::keys`].
    pub fn iter(&self) -> Result<Scan<(K, Resolution<T>)>, RegionError> {
        let entries = self
            .region
            .snapshot::<VersionSet<T>>(self.slot, true, |set| !set.is_empty())?;
        let (decoded, skipped) =
            self.region
                .decode_keys::<K, _>(&self.name, &self.undecodable_keys, entries);
        Ok(Scan {
            items: decoded
                .into_iter()
                .filter_map(|(k, set)| Some((k, set?.resolve(&*self.resolver)?)))
                .collect::<Vec<_>>()
                .into_iter(),
            skipped,
        })
    }

    /// The keys in `range` and what they read as here, now, in key order:
    /// a snapshot, as [`Table::range`].
    ///
    /// # Errors
    /// As [`Table::keys`].
    pub fn range(&self, range: impl RangeBounds<K>) -> Result<Scan<(K, Resolution<T>)>, RegionError>
    where
        K: Ord,
    {
        Ok(self.iter()?.within(&range))
    }

    /// Number of keys held, deleted ones included (their tombstones, see
    /// [`delete`](ResolverTable::delete)); [`keys`](ResolverTable::keys)
    /// counts only those that read as a value.
    pub fn len(&self) -> usize {
        let core = self.region.core_any();
        core.tables.get(self.slot).map_or(0, |s| s.store.len())
    }

    /// True when the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table's conflict feed: subscribe to it, read its counters.
    pub fn conflicts(&self) -> &ConflictFeed<T> {
        &self.feed
    }
}
