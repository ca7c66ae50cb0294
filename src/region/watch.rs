//! Change streams of tables: [`Table::subscribe`], [`Table::watch`] and
//! their resolver-table forms.
//!
//! A change stream yields a [`Change`] each time a key's value changes
//! here, by a local write or a peer's (batch or anti-entropy transfer):
//! the key, its value after the change and where it came from. It is
//! built on [`stream`](crate::stream), so:
//! - the region publishes without waiting (a subscriber never slows
//!   replication or writes); a subscriber whose queue is full misses
//!   changes and is told by an `Err(`[`Lagged`]`)` in their place, after
//!   which re-reading the keys it cares about gives their latest values;
//! - a change is reported when the key's value changed: a merge that left
//!   its encoding as it was (a retransmitted delta, a repair of what was
//!   already here) is no change;
//! - the stream ends (`None`) once the region is dropped.
//!
//! While a subscriber wants a key, each merge into it encodes the value
//! before and after (to tell a change) and clones it once per subscriber,
//! under the region's lock; with no subscriber it costs one atomic load.
//! Keys are decoded and resolver verdicts computed in the subscriber's
//! task.
//!
//! ```
//! use archipelago::crdt::GCounter;
//! use archipelago::region::{ChangeSource, Region};
//! use archipelago::transport::ChannelNetwork;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), archipelago::region::RegionError> {
//! let net = ChannelNetwork::new(7);
//! let tokyo = Region::builder("ap-northeast").transport(net.endpoint("ap-northeast")).build()?;
//! let frankfurt = Region::builder("eu-central").transport(net.endpoint("eu-central")).build()?;
//! let likes = tokyo.table::<String, GCounter>("likes")?;
//! let mut changes = frankfurt.table::<String, GCounter>("likes")?.watch("post-1", 64)?;
//!
//! likes.update("post-1", |n, ctx| n.apply(|n| n.inc(ctx.replica(), 1))).await?;
//! let change = changes.next().await.unwrap().unwrap();
//! assert_eq!((change.key.as_str(), change.value.value()), ("post-1", 1));
//! assert_eq!(change.source, ChangeSource::Replicated);
//! # tokyo.shutdown().await;
//! # frankfurt.shutdown().await;
//! # Ok(()) }
//! ```

use std::borrow::Borrow;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;
use crate::replication::store::RawChange;
use crate::stream::{Empty, Lagged, Subscription};

pub use crate::replication::store::ChangeSource;

/// One change of a key, as a change stream reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change<K, V> {
    /// The key.
    pub key: K,
    /// Its value here after the change (for a resolver table, the
    /// resolver's verdict; `None` once the key is deleted).
    pub value: V,
    /// Whether the change was a local write or a peer's.
    pub source: ChangeSource,
}

type Poller<K, V> =
    Box<dyn FnMut(&mut Context<'_>) -> Poll<Option<Result<Change<K, V>, Lagged>>> + Send>;

/// A [`Stream`](futures_core::Stream) of a table's changes (see the
/// [module page](self)); also [`next`](ChangeStream::next) without any
/// stream crate.
pub struct ChangeStream<K, V> {
    poll: Poller<K, V>,
}

impl<K, V> Debug for ChangeStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("key", &type_name::<K>())
            .field("value", &type_name::<V>())
            .finish()
    }
}

impl<K, V> ChangeStream<K, V>
where
    K: DeserializeOwned + Send + 'static,
    V: Send + 'static,
{
    /// Changes from `subscription`, each state made a value by `value`.
    pub(crate) fn new<S: Send + 'static>(
        table: Arc<str>,
        mut subscription: Subscription<RawChange<S>>,
        value: impl Fn(S) -> V + Send + 'static,
    ) -> Self {
        let poll = move |cx: &mut Context<'_>| loop {
            let raw = match Pin::new(&mut subscription).poll_next(cx) {
                Poll::Ready(Some(Ok(raw))) => raw,
                Poll::Ready(Some(Err(lagged))) => {
                    tracing::warn!(table = %table, missed = lagged.missed, "change subscriber fell behind");
                    return Poll::Ready(Some(Err(lagged)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match wire::decode_bare::<K>(&raw.key) {
                Ok(key) => {
                    return Poll::Ready(Some(Ok(Change {
                        key,
                        value: value(raw.state),
                        source: raw.source,
                    })));
                }
                // A key some peer wrote with another key type: not one of
                // this table's keys, so not one of its changes.
                Err(error) => tracing::warn!(
                    table = %table,
                    %error,
                    "a changed key does not decode as the table's key type: skipped"
                ),
            }
        };
        ChangeStream {
            poll: Box::new(poll),
        }
    }

    /// The next change (or gap) if one is queued, without waiting.
    ///
    /// # Errors
    /// [`Empty`] when none is queued, saying whether more may come.
    pub fn try_next(&mut self) -> Result<Result<Change<K, V>, Lagged>, Empty> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match (self.poll)(&mut cx) {
            Poll::Ready(Some(item)) => Ok(item),
            Poll::Ready(None) => Err(Empty::Closed),
            Poll::Pending => Err(Empty::Pending),
        }
    }

    /// The next change (or gap), waiting for one; `None` once the region
    /// is gone.
    pub async fn next(&mut self) -> Option<Result<Change<K, V>, Lagged>> {
        std::future::poll_fn(|cx| (self.poll)(cx)).await
    }
}

impl<K, V> futures_core::Stream for ChangeStream<K, V> {
    type Item = Result<Change<K, V>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        (self.poll)(cx)
    }
}

use futures_core::Stream as _;

impl Region {
    /// A subscription to the changes of the table in `slot`, of `key`
    /// (encoded) or of every key.
    pub(super) fn subscribe_raw<S>(
        &self,
        slot: usize,
        key: Option<Box<[u8]>>,
        capacity: usize,
    ) -> Result<Subscription<RawChange<S>>, RegionError>
    where
        S: Crdt + Serialize + DeserializeOwned + Send + 'static,
    {
        let core = self.core()?;
        let store = core
            .store::<CrdtStore<S>>(slot)
            .expect("declared by the handle");
        Ok(store.subscribe(key, capacity))
    }
}

impl<K, V> Table<K, V>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Crdt + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A stream of every change to this table here (see the
    /// [module page](crate::region::watch)), queuing up to `capacity`
    /// changes (clamped to `1..=`[`SUBSCRIPTION_CAPACITY_MAX`](crate::stream::SUBSCRIPTION_CAPACITY_MAX)).
    ///
    /// # Errors
    /// [`RegionError::Engine`] once the engine failed.
    pub fn subscribe(&self, capacity: usize) -> Result<ChangeStream<K, V>, RegionError> {
        let subscription = self.region.subscribe_raw::<V>(self.slot, None, capacity)?;
        Ok(ChangeStream::new(
            Arc::clone(&self.name),
            subscription,
            std::convert::identity,
        ))
    }

    /// A stream of the changes to `key` here, as [`subscribe`](Table::subscribe).
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded;
    /// [`RegionError::Engine`] once the engine failed.
    pub fn watch<Q>(&self, key: &Q, capacity: usize) -> Result<ChangeStream<K, V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let key = wire::with_bare(key, |key| Box::<[u8]>::from(key))?;
        let subscription = self
            .region
            .subscribe_raw::<V>(self.slot, Some(key), capacity)?;
        Ok(ChangeStream::new(
            Arc::clone(&self.name),
            subscription,
            std::convert::identity,
        ))
    }
}

impl<K, T> ResolverTable<K, T>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A stream of every change to this table here, each with the
    /// resolver's verdict after it (`None` once the key is deleted; see
    /// [`Table::subscribe`]).
    ///
    /// # Errors
    /// [`RegionError::Engine`] once the engine failed.
    pub fn subscribe(
        &self,
        capacity: usize,
    ) -> Result<ChangeStream<K, Option<Resolution<T>>>, RegionError> {
        let subscription = self
            .region
            .subscribe_raw::<VersionSet<T>>(self.slot, None, capacity)?;
        Ok(self.verdicts(subscription))
    }

    /// A stream of the changes to `key` here, as
    /// [`subscribe`](ResolverTable::subscribe).
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded;
    /// [`RegionError::Engine`] once the engine failed.
    pub fn watch<Q>(
        &self,
        key: &Q,
        capacity: usize,
    ) -> Result<ChangeStream<K, Option<Resolution<T>>>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let key = wire::with_bare(key, |key| Box::<[u8]>::from(key))?;
        let subscription =
            self.region
                .subscribe_raw::<VersionSet<T>>(self.slot, Some(key), capacity)?;
        Ok(self.verdicts(subscription))
    }

    fn verdicts(
        &self,
        subscription: Subscription<RawChange<VersionSet<T>>>,
    ) -> ChangeStream<K, Option<Resolution<T>>> {
        let resolver = Arc::clone(&self.resolver);
        ChangeStream::new(
            Arc::clone(&self.name),
            subscription,
            move |set: VersionSet<T>| set.resolve(&*resolver),
        )
    }
}
