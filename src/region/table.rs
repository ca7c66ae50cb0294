//! Typed table handles: [`Table`] (CRDT values) and [`ResolverTable`]
//! (plain values settled by a resolver), each of one key type `K` (see
//! "Keys" on the `region` module page).

use std::borrow::Borrow;
use std::sync::atomic::AtomicU64;

use super::*;

/// What a declaration found or made: the table's name, slot and counter of
/// undecodable keys.
pub(super) struct Declared {
    pub(super) name: Arc<str>,
    pub(super) slot: usize,
    pub(super) undecodable_keys: Arc<AtomicU64>,
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

    /// The table's conflict feed: subscribe to it, read its counters.
    pub fn conflicts(&self) -> &ConflictFeed<T> {
        &self.feed
    }
}
