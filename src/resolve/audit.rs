use crate::stream::{Feed, Subscription};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Strategy, Versioned};
use crate::clock::{PhysicalClock, ReplicaId, SystemClock, Timestamp};

/// Seconds the recent conflict rate looks back over.
pub const RATE_WINDOW_SECS: u64 = 60;
/// Most records a subscription holds before further ones are dropped for it.
pub const SUBSCRIPTION_CAPACITY_MAX: usize = 1 << 16;

/// One conflict and how it was settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictRecord<T> {
    /// The table the value lives in.
    pub table: Arc<str>,
    /// The key, as its `Debug` form.
    pub key: String,
    /// How it was settled.
    pub strategy: Strategy,
    /// What reads now return; `None` when the strategy keeps siblings.
    pub winner: Option<Versioned<T>>,
    /// The versions that did not win as they were, with their versions and
    /// stamps: every sibling under [`Siblings`](super::Siblings) and
    /// [`Merge`](super::Merge), the others under LWW and FWW.
    pub losers: Vec<Versioned<T>>,
    /// When it was settled, by the settling replica's clock.
    pub at: Timestamp,
    /// The replica that settled it (each replica settles, and records, the
    /// conflicts it sees).
    pub replica: ReplicaId,
}

/// Counters of one table's conflicts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConflictStats {
    /// Conflicts recorded since the feed was made.
    pub total: u64,
    /// Conflicts in the last [`RATE_WINDOW_SECS`] seconds, per second.
    pub recent_per_sec: f64,
    /// Records not delivered to a subscriber whose queue was full, summed
    /// over subscribers.
    pub dropped: u64,
}

/// The conflict audit feed of one table at one replica.
///
/// Every resolution is recorded here, last-writer-wins included (DynamoDB
/// and Cosmos DB drop LWW losers silently). Recording never blocks the
/// write that caused it: each subscriber has a bounded queue, and a record
/// that finds it full is dropped for that subscriber and counted in
/// [`ConflictStats::dropped`]. Each record also emits a `tracing` event at
/// `info` level (target `archipelago::conflict`).
///
/// Clones share the feed.
///
/// ```
/// use archipelago::clock::{Hlc, ReplicaId};
/// use archipelago::resolve::{ConflictFeed, LastWriteWins, VersionSet};
///
/// let (tokyo, frankfurt) = (Hlc::new(ReplicaId::new(1)), Hlc::new(ReplicaId::new(2)));
/// let feed = ConflictFeed::new("profiles", tokyo.replica());
/// let audit = feed.subscribe(100);
///
/// let mut here = VersionSet::new();
/// here.write(tokyo.stamp(), "Aiko");
/// let mut there = VersionSet::new();
/// let theirs = there.write(frankfurt.stamp(), "Aiko T.");
/// here.merge_audited(&theirs, &LastWriteWins, &feed, &"user:42", tokyo.now());
///
/// let record = audit.try_recv().unwrap();
/// assert_eq!(record.key, "\"user:42\"");
/// assert_eq!(record.losers.len(), 1);
/// assert_eq!(feed.stats().total, 1);
/// ```
pub struct ConflictFeed<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    table: Arc<str>,
    replica: ReplicaId,
    clock: Box<dyn PhysicalClock>,
    subscribers: Mutex<Vec<SyncSender<Arc<ConflictRecord<T>>>>>,
    streams: Feed<Arc<ConflictRecord<T>>>,
    total: AtomicU64,
    dropped: AtomicU64,
    window: Mutex<RateWindow>,
}

impl<T> Clone for ConflictFeed<T> {
    fn clone(&self) -> Self {
        ConflictFeed {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for ConflictFeed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConflictFeed")
            .field("table", &self.inner.table)
            .field("replica", &self.inner.replica)
            .field("total", &self.inner.total.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> ConflictFeed<T> {
    /// The feed of `table` at `replica`, timing its rate on the system clock.
    pub fn new(table: &str, replica: ReplicaId) -> Self {
        Self::with_clock(table, replica, SystemClock)
    }

    /// As [`new`](ConflictFeed::new), on an injected clock.
    pub fn with_clock(
        table: &str,
        replica: ReplicaId,
        clock: impl PhysicalClock + 'static,
    ) -> Self {
        ConflictFeed {
            inner: Arc::new(Inner {
                table: table.into(),
                replica,
                clock: Box::new(clock),
                subscribers: Mutex::new(Vec::new()),
                streams: Feed::new(),
                total: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                window: Mutex::new(RateWindow::default()),
            }),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    pub(crate) fn table_name(&self) -> Arc<str> {
        Arc::clone(&self.inner.table)
    }

    /// The replica whose feed this is.
    pub fn replica(&self) -> ReplicaId {
        self.inner.replica
    }

    /// A new subscriber, receiving every record from now on into a queue of
    /// `capacity` records (at least 1, at most [`SUBSCRIPTION_CAPACITY_MAX`]).
    /// Dropping the subscription unsubscribes.
    pub fn subscribe(&self, capacity: usize) -> ConflictSubscription<T> {
        let (tx, rx) = sync_channel(capacity.clamp(1, SUBSCRIPTION_CAPACITY_MAX));
        lock(&self.inner.subscribers).push(tx);
        ConflictSubscription { rx }
    }

    /// A new async subscriber: a [`Subscription`] (a `Stream`) of every
    /// record from now on, queuing up to `capacity` records (clamped to
    /// `1..=`[`SUBSCRIPTION_CAPACITY_MAX`](crate::stream::SUBSCRIPTION_CAPACITY_MAX)).
    /// Recording never waits for it: a subscriber that falls behind
    /// receives [`Lagged`](crate::stream::Lagged) naming how many records
    /// it missed (counted in [`ConflictStats::dropped`] too). The stream
    /// ends once every handle on the feed (its region's included) is gone.
    ///
    /// ```
    /// # use archipelago::clock::{Hlc, ReplicaId};
    /// # use archipelago::resolve::{ConflictFeed, LastWriteWins, VersionSet};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let (tokyo, frankfurt) = (Hlc::new(ReplicaId::new(1)), Hlc::new(ReplicaId::new(2)));
    /// let feed = ConflictFeed::new("profiles", tokyo.replica());
    /// let mut conflicts = feed.stream(64);
    /// # let mut here = VersionSet::new();
    /// # here.write(tokyo.stamp(), "Aiko");
    /// # let theirs = VersionSet::new().write(frankfurt.stamp(), "Aiko T.");
    /// here.merge_audited(&theirs, &LastWriteWins, &feed, &"user:42", tokyo.now());
    /// let record = conflicts.next().await.unwrap().unwrap();
    /// assert_eq!(record.losers.len(), 1);
    /// # }
    /// ```
    pub fn stream(&self, capacity: usize) -> Subscription<Arc<ConflictRecord<T>>> {
        self.inner.streams.subscribe(capacity)
    }

    /// Records a conflict: counts it, logs it, offers it to every
    /// subscriber without waiting. Returns the shared record.
    pub fn record(&self, record: ConflictRecord<T>) -> Arc<ConflictRecord<T>> {
        let inner = &self.inner;
        inner.total.fetch_add(1, Ordering::Relaxed);
        lock(&inner.window).add(inner.clock.now_ms() / 1000);
        tracing::info!(
            target: "archipelago::conflict",
            table = %record.table,
            key = %record.key,
            strategy = %record.strategy,
            winner = ?record.winner.as_ref().map(|w| w.stamp),
            losers = record.losers.len(),
            replica = %record.replica,
            "conflict resolved"
        );
        let record = Arc::new(record);
        let mut dropped = 0;
        lock(&inner.subscribers).retain(|tx| match tx.try_send(Arc::clone(&record)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        dropped += inner.streams.publish(|| Arc::clone(&record));
        if dropped > 0 {
            inner.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                target: "archipelago::conflict",
                table = %record.table,
                dropped,
                "conflict subscriber queue full: record dropped for it"
            );
        }
        record
    }

    /// Total conflicts, the recent rate, and records dropped.
    pub fn stats(&self) -> ConflictStats {
        let inner = &self.inner;
        let recent = lock(&inner.window).count_since(inner.clock.now_ms() / 1000);
        ConflictStats {
            total: inner.total.load(Ordering::Relaxed),
            recent_per_sec: recent as f64 / RATE_WINDOW_SECS as f64,
            dropped: inner.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Receives a feed's records. Never blocks the writer: when its queue is
/// full, new records are dropped for it (and counted).
#[derive(Debug)]
pub struct ConflictSubscription<T> {
    rx: Receiver<Arc<ConflictRecord<T>>>,
}

impl<T> ConflictSubscription<T> {
    /// The next record, if one is queued.
    pub fn try_recv(&self) -> Option<Arc<ConflictRecord<T>>> {
        self.rx.try_recv().ok()
    }

    /// Every record queued now.
    pub fn drain(&self) -> Vec<Arc<ConflictRecord<T>>> {
        self.rx.try_iter().collect()
    }

    /// Waits for the next record; `None` once the feed is gone. Blocks the
    /// calling thread: run it on a thread of its own, not an async task.
    pub fn recv(&self) -> Option<Arc<ConflictRecord<T>>> {
        self.rx.recv().ok()
    }
}

/// Conflicts per second over the last [`RATE_WINDOW_SECS`] seconds: one
/// bucket a second, in a ring.
struct RateWindow {
    /// (second, count) per slot; a slot whose second is stale counts 0.
    slots: [(u64, u64); RATE_WINDOW_SECS as usize],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            slots: [(0, 0); RATE_WINDOW_SECS as usize],
        }
    }
}

impl RateWindow {
    fn add(&mut self, second: u64) {
        let slot = &mut self.slots[(second % RATE_WINDOW_SECS) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
    }

    fn count_since(&self, now: u64) -> u64 {
        let oldest = now.saturating_sub(RATE_WINDOW_SECS - 1);
        self.slots
            .iter()
            .filter(|(second, _)| *second >= oldest && *second <= now)
            .map(|(_, count)| count)
            .sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves counters that are
    // still meaningful: keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
