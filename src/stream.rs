//! Bounded streams of events: change feeds of tables and the conflict feed.
//!
//! A [`Subscription`] is the receiving end of a feed the region publishes
//! into while it applies writes: table changes
//! ([`Table::subscribe`](crate::region::Table::subscribe),
//! [`Table::watch`](crate::region::Table::watch)) and resolved conflicts
//! ([`ConflictFeed::stream`](crate::resolve::ConflictFeed::stream)). It is a
//! [`Stream`](futures_core::Stream) (use it with `tokio_stream::StreamExt`
//! or `futures::StreamExt`) and has its own [`next`](Subscription::next)
//! and [`try_next`](Subscription::try_next), so no extra crate is needed.
//!
//! ## Guarantees
//! - **Publishing never waits.** The region offers each event to every
//!   subscriber's queue of `capacity` events without blocking; replication
//!   never slows down for a subscriber.
//! - **A subscriber that falls behind is told.** When its queue is full,
//!   new events are dropped for it and counted; it then receives
//!   `Err(`[`Lagged`]`)` naming how many it missed, in the place they were
//!   missed, and then the events published after. (A subscriber that
//!   needs every state can re-read the keys on `Lagged`: the table holds
//!   the latest state.)
//! - **Bounded memory**: at most `capacity` events, plus one `Lagged`
//!   marker per gap, per subscriber; capacity is clamped to
//!   `1..=`[`SUBSCRIPTION_CAPACITY_MAX`].
//! - **End of stream**: `None` once the feed is gone (its region shut down
//!   and dropped) and the queue is drained. Dropping a subscription
//!   unsubscribes it.
//!
//! ```
//! use archipelago::stream::{Feed, Lagged};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let feed = Feed::new();
//! let mut events = feed.subscribe(2);
//! for n in 1..=4 {
//!     feed.publish(|| n); // never waits: 3 and 4 do not fit
//! }
//! assert_eq!(events.next().await, Some(Ok(1)));
//! assert_eq!(events.next().await, Some(Ok(2)));
//! assert_eq!(events.next().await, Some(Err(Lagged { missed: 2 })));
//! feed.publish(|| 5);
//! assert_eq!(events.next().await, Some(Ok(5)));
//! drop(feed);
//! assert_eq!(events.next().await, None);
//! # }
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

/// The most events a subscription may queue.
pub const SUBSCRIPTION_CAPACITY_MAX: usize = 65_536;

/// Events a subscriber missed because its queue was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber fell behind: {missed} events were dropped for it")]
pub struct Lagged {
    /// How many events were dropped, in this gap.
    pub missed: u64,
}

enum Slot<T> {
    Event(T),
    Missed(u64),
}

struct Queue<T> {
    slots: VecDeque<Slot<T>>,
    /// Events (not markers) in `slots`.
    events: usize,
    capacity: usize,
    waker: Option<Waker>,
    /// The feed was dropped.
    closed: bool,
}

type Shared<T> = Arc<Mutex<Queue<T>>>;

/// A subscriber as its feed holds it: its queue (gone once it is dropped)
/// and its filter.
type Entry<T, F> = (Weak<Mutex<Queue<T>>>, F);

fn lock<T>(queue: &Mutex<Queue<T>>) -> MutexGuard<'_, Queue<T>> {
    // Nothing panics while a queue is locked: its state is always whole.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The publishing end: offers each event to every subscriber, never
/// waiting. Cheap when nobody subscribes (one lock, one length check).
///
/// Each subscriber may carry a filter `F` (a key, for a table's `watch`)
/// that [`publish_where`](Feed::publish_where) consults.
pub struct Feed<T, F = ()> {
    subscribers: Mutex<Vec<Entry<T, F>>>,
    /// Entries in `subscribers` (dropped ones until the next publish
    /// prunes them): a publish with none takes no lock.
    entries: AtomicUsize,
}

impl<T, F> Default for Feed<T, F> {
    fn default() -> Self {
        Feed {
            subscribers: Mutex::new(Vec::new()),
            entries: AtomicUsize::new(0),
        }
    }
}

impl<T, F> std::fmt::Debug for Feed<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("subscribers", &self.subscribers().len())
            .finish()
    }
}

impl<T> Feed<T> {
    /// A new subscriber, receiving every event published from now on into
    /// a queue of `capacity` events (clamped to
    /// `1..=`[`SUBSCRIPTION_CAPACITY_MAX`]).
    pub fn subscribe(&self, capacity: usize) -> Subscription<T> {
        self.subscribe_where(capacity, ())
    }

    /// Offers the event `make` builds (only if someone subscribes) to
    /// every subscriber. Returns how many dropped it (their queue was full).
    pub fn publish(&self, make: impl FnOnce() -> T) -> u64
    where
        T: Clone,
    {
        self.publish_where(|()| true, make)
    }
}

impl<T, F> Feed<T, F> {
    /// A feed with no subscriber.
    pub fn new() -> Self {
        Self::default()
    }

    fn subscribers(&self) -> MutexGuard<'_, Vec<Entry<T, F>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new subscriber with `filter`, receiving the events published from
    /// now on whose [`publish_where`](Feed::publish_where) test accepts
    /// its filter, into a queue of `capacity` events (clamped to
    /// `1..=`[`SUBSCRIPTION_CAPACITY_MAX`]).
    pub fn subscribe_where(&self, capacity: usize, filter: F) -> Subscription<T> {
        let capacity = capacity.clamp(1, SUBSCRIPTION_CAPACITY_MAX);
        let queue = Arc::new(Mutex::new(Queue {
            slots: VecDeque::new(),
            events: 0,
            capacity,
            waker: None,
            closed: false,
        }));
        let mut subscribers = self.subscribers();
        subscribers.push((Arc::downgrade(&queue), filter));
        self.entries.store(subscribers.len(), Ordering::Release);
        Subscription { queue }
    }

    /// True when someone subscribes (an event built now has a reader).
    pub fn is_subscribed(&self) -> bool {
        !self.subscribers().is_empty()
    }

    /// True when a live subscriber's filter passes `wants` (no lock when
    /// nobody subscribes).
    pub fn wants(&self, wants: impl Fn(&F) -> bool) -> bool {
        if self.entries.load(Ordering::Acquire) == 0 {
            return false;
        }
        (self.subscribers().iter()).any(|(queue, filter)| queue.strong_count() > 0 && wants(filter))
    }

    /// Offers the event `make` builds (only if a subscriber wants it) to
    /// every subscriber whose filter `wants` accepts. Returns how many
    /// dropped it (their queue was full).
    pub fn publish_where(&self, wants: impl Fn(&F) -> bool, make: impl FnOnce() -> T) -> u64
    where
        T: Clone,
    {
        if self.entries.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut subscribers = self.subscribers();
        subscribers.retain(|(queue, _)| queue.strong_count() > 0);
        self.entries.store(subscribers.len(), Ordering::Release);
        let readers: Vec<_> = (subscribers.iter())
            .filter(|(_, filter)| wants(filter))
            .filter_map(|(queue, _)| queue.upgrade())
            .collect();
        drop(subscribers);
        if readers.is_empty() {
            return 0;
        }
        let event = make();
        let mut dropped = 0;
        for queue in readers {
            let mut queue = lock(&queue);
            if queue.events < queue.capacity {
                queue.slots.push_back(Slot::Event(event.clone()));
                queue.events += 1;
            } else {
                dropped += 1;
                match queue.slots.back_mut() {
                    Some(Slot::Missed(missed)) => *missed += 1,
                    _ => queue.slots.push_back(Slot::Missed(1)),
                }
            }
            // Markers never sit side by side: at most one before each event and
            // one after the last.
            debug_assert!(queue.slots.len() <= 2 * queue.capacity + 1);
            if let Some(waker) = queue.waker.take() {
                waker.wake();
            }
        }
        dropped
    }
}

impl<T, F> Drop for Feed<T, F> {
    fn drop(&mut self) {
        for (queue, _) in self.subscribers().drain(..) {
            if let Some(queue) = queue.upgrade() {
                let mut queue = lock(&queue);
                queue.closed = true;
                if let Some(waker) = queue.waker.take() {
                    waker.wake();
                }
            }
        }
    }
}

/// The receiving end of a [`Feed`]: a bounded queue of events, a
/// [`Stream`](futures_core::Stream) of `Result<T, Lagged>`.
pub struct Subscription<T> {
    queue: Shared<T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = lock(&self.queue);
        f.debug_struct("Subscription")
            .field("queued", &queue.events)
            .field("capacity", &queue.capacity)
            .field("closed", &queue.closed)
            .finish()
    }
}

/// What [`Subscription::try_next`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Empty {
    /// Nothing queued now; more may come.
    Pending,
    /// The feed is gone and everything was received.
    Closed,
}

impl<T> Subscription<T> {
    /// The next event (or gap) if one is queued, without waiting.
    ///
    /// # Errors
    /// [`Empty`] when nothing is queued, saying whether more may come.
    pub fn try_next(&mut self) -> Result<Result<T, Lagged>, Empty> {
        let mut queue = lock(&self.queue);
        Self::pop(&mut queue)
    }

    /// The next event (or gap), waiting for one; `None` once the feed is
    /// gone and everything was received.
    pub async fn next(&mut self) -> Option<Result<T, Lagged>> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    fn pop(queue: &mut Queue<T>) -> Result<Result<T, Lagged>, Empty> {
        match queue.slots.pop_front() {
            Some(Slot::Event(event)) => {
                queue.events -= 1;
                Ok(Ok(event))
            }
            Some(Slot::Missed(missed)) => Ok(Err(Lagged { missed })),
            None if queue.closed => Err(Empty::Closed),
            None => Err(Empty::Pending),
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Lagged>>> {
        let mut queue = lock(&self.queue);
        match Self::pop(&mut queue) {
            Ok(item) => Poll::Ready(Some(item)),
            Err(Empty::Closed) => Poll::Ready(None),
            Err(Empty::Pending) => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> futures_core::Stream for Subscription<T> {
    type Item = Result<T, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_reports_each_gap_in_place() {
        let feed = Feed::new();
        let mut sub = feed.subscribe(1);
        assert_eq!(feed.publish(|| 1), 0);
        assert_eq!(feed.publish(|| 2), 1);
        assert_eq!(feed.publish(|| 3), 1);
        assert_eq!(sub.try_next(), Ok(Ok(1)));
        feed.publish(|| 4);
        feed.publish(|| 5);
        assert_eq!(sub.try_next(), Ok(Err(Lagged { missed: 2 })));
        assert_eq!(sub.try_next(), Ok(Ok(4)));
        assert_eq!(sub.try_next(), Ok(Err(Lagged { missed: 1 })));
        assert_eq!(sub.try_next(), Err(Empty::Pending));
        drop(feed);
        assert_eq!(sub.try_next(), Err(Empty::Closed));
    }

    #[test]
    fn nothing_is_built_without_a_subscriber_and_dropped_ones_leave() {
        let feed: Feed<u32> = Feed::new();
        feed.publish(|| unreachable!("nobody reads it"));
        let sub = feed.subscribe(4);
        assert!(feed.is_subscribed());
        drop(sub);
        feed.publish(|| unreachable!("the only reader left"));
        assert!(!feed.is_subscribed());
    }

    #[test]
    fn capacity_is_clamped() {
        let feed = Feed::new();
        let mut sub = feed.subscribe(0);
        feed.publish(|| 1);
        feed.publish(|| 2);
        assert_eq!(sub.try_next(), Ok(Ok(1)));
        assert_eq!(sub.try_next(), Ok(Err(Lagged { missed: 1 })));
    }
}
