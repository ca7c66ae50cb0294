//! An in-process mesh of regions over tokio, with fault injection.
//!
//! [`ChannelNetwork`] connects any number of regions inside one process.
//! Each region gets a [`ChannelEndpoint`] (a [`Transport`]) from
//! [`ChannelNetwork::endpoint`]; every frame it sends crosses the directed
//! link *(from, to)*, which applies that link's [`LinkFaults`]: latency,
//! jitter, loss, duplication and reordering. The network handle also cuts
//! and heals links ([`partition`](ChannelNetwork::partition),
//! [`partition_one_way`](ChannelNetwork::partition_one_way),
//! [`isolate`](ChannelNetwork::isolate), [`heal`](ChannelNetwork::heal),
//! [`heal_all`](ChannelNetwork::heal_all)) and counts every frame and byte
//! ([`NetworkStats`]).
//!
//! ```
//! use std::time::Duration;
//!
//! use archipelago::transport::{ChannelNetwork, LinkFaults, Transport, TransportEvent};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread()
//!     .enable_time()
//!     .start_paused(true)
//!     .build()
//!     .unwrap();
//! runtime.block_on(async {
//!     let network = ChannelNetwork::new(7);
//!     let mut tokyo = network.endpoint("ap-northeast");
//!     let mut frankfurt = network.endpoint("eu-central");
//!     let latency = Duration::from_millis(120);
//!     network.set_faults("ap-northeast", "eu-central", LinkFaults::new().latency(latency));
//!
//!     // Registration tells each region whom it can talk to.
//!     assert_eq!(tokyo.recv().await, Some(TransportEvent::Up("eu-central".into())));
//!     assert_eq!(frankfurt.recv().await, Some(TransportEvent::Up("ap-northeast".into())));
//!
//!     let sent_at = tokio::time::Instant::now();
//!     tokyo.send("eu-central", b"delta".to_vec());
//!     let arrived = frankfurt.recv().await;
//!     assert_eq!(
//!         arrived,
//!         Some(TransportEvent::Frame { from: "ap-northeast".into(), frame: b"delta".to_vec() })
//!     );
//!     assert!(sent_at.elapsed() >= latency);
//!     assert_eq!(network.stats().bytes_delivered, 5);
//! });
//! ```
//!
//! [`ChannelNetwork`] documents the delivery order and timing, the
//! partition semantics, the limits and what closing does.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Transport, TransportEvent};

mod faults;

pub use faults::LinkFaults;
use faults::SplitMix64;

/// Frame and byte counters, for the whole network ([`ChannelNetwork::stats`])
/// or one directed link ([`ChannelNetwork::link_stats`]).
///
/// Every frame accepted by `send` is accounted for exactly once:
/// `frames_sent + frames_duplicated == frames_delivered + frames_dropped() +
/// frames_in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Frames handed to `send` (each once, whatever became of it).
    pub frames_sent: u64,
    /// Frames handed out by the receiver's `recv`, duplicates included.
    pub frames_delivered: u64,
    /// Extra copies made by the link's `duplicate` fault.
    pub frames_duplicated: u64,
    /// Frames dropped by the link's `loss` fault.
    pub frames_dropped_loss: u64,
    /// Frames sent across a partitioned link.
    pub frames_dropped_partition: u64,
    /// Frames dropped because the receiver already held
    /// [`ChannelNetwork::FRAMES_IN_FLIGHT_MAX`] frames.
    pub frames_dropped_overflow: u64,
    /// Frames sent to a name that is not a registered peer (network totals
    /// only: no link is kept for unknown names).
    pub frames_dropped_unknown: u64,
    /// Frames sent to, or waiting for, an endpoint that was dropped, or
    /// caught by [`ChannelNetwork::shutdown`].
    pub frames_dropped_closed: u64,
    /// Frames queued for a receiver and not yet received (a gauge).
    pub frames_in_flight: u64,
    /// Bytes handed to `send` (each frame once).
    pub bytes_sent: u64,
    /// Bytes handed out by `recv`, duplicates included.
    pub bytes_delivered: u64,
}

impl NetworkStats {
    /// All dropped frames, whatever the cause.
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped_loss
            + self.frames_dropped_partition
            + self.frames_dropped_overflow
            + self.frames_dropped_unknown
            + self.frames_dropped_closed
    }
}

/// An in-process mesh of regions over tokio, with per-link fault injection.
///
/// A cheap handle: clones share one network.
///
/// # Guarantees
///
/// - **Determinism.** All randomness comes from SplitMix64 generators seeded
///   from the network's seed, one per directed link (so traffic on one link
///   does not change the faults drawn on another), drawn in send order under
///   the network's lock. Delivery times are read from tokio's clock. The same
///   seed and the same sequence of sends under a paused clock
///   (`start_paused`) give the same deliveries, at the same instants, in the
///   same order.
/// - **Order.** Each receiver has one queue ordered by (delivery instant,
///   send sequence number): frames due at the same instant arrive in the
///   order they were sent, so a link with no jitter and no reordering is
///   FIFO. `Up`/`Down` events go through the same queue, due the instant they
///   happen: a frame already due before a partition is received before the
///   `Down`.
/// - **Partitions are checked at send time.** A frame sent across a
///   partitioned link is dropped; a frame already in flight when the
///   partition starts still arrives, as a packet already on the wire would.
///   Healing does not resurrect dropped frames.
/// - **Bounded memory.** A receiver holds at most
///   [`ChannelNetwork::FRAMES_IN_FLIGHT_MAX`] frames (in flight or due but not
///   yet received); past that, frames are dropped and counted as overflow.
///   Delays are capped at [`ChannelNetwork::FRAME_DELAY_MAX`].
/// - **No background tasks.** Frames wait in the receiver's queue and
///   [`recv`](Transport::recv) sleeps until the earliest is due, so nothing
///   needs spawning and a network can be built outside a runtime. `recv` is
///   cancel-safe: dropping its future loses no event.
/// - **Closing.** `recv` returns `None` once [`ChannelNetwork::shutdown`] has
///   been called, or once its queue is empty and every other handle (network
///   handles and endpoints) is dropped, so nothing could ever arrive. Dropping
///   an endpoint discards its queue and the frames it sent still in flight
///   (both counted as `frames_dropped_closed`: its connections closed with
///   it), and its peers see `Down` for it; registering the name again is a
///   restart and they see `Up`, after which no frame of the dropped
///   endpoint arrives (as over TCP).
///
/// # Example
///
/// ```
/// use archipelago::transport::{ChannelNetwork, Transport, TransportEvent};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)
/// #     .build().unwrap().block_on(async {
/// let network = ChannelNetwork::new(1);
/// let mut a = network.endpoint("a");
/// let mut b = network.endpoint("b");
/// assert_eq!(a.recv().await, Some(TransportEvent::Up("b".into())));
/// assert_eq!(b.recv().await, Some(TransportEvent::Up("a".into())));
///
/// network.partition_one_way("a", "b");
/// assert_eq!(b.recv().await, Some(TransportEvent::Down("a".into())));
/// a.send("b", vec![1]); // dropped
/// b.send("a", vec![2]); // the other direction still works
/// assert_eq!(a.recv().await, Some(TransportEvent::Frame { from: "b".into(), frame: vec![2] }));
/// assert_eq!(network.stats().frames_dropped_partition, 1);
///
/// network.heal("a", "b");
/// assert_eq!(b.recv().await, Some(TransportEvent::Up("a".into())));
/// # });
/// ```
pub struct ChannelNetwork {
    shared: Arc<Shared>,
}

/// One region's connection to a [`ChannelNetwork`]; see [`Transport`].
///
/// Dropping it unregisters the region: its queued frames are discarded and
/// its peers see [`TransportEvent::Down`] for it.
pub struct ChannelEndpoint {
    name: String,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    shutdown: bool,
    /// Live `ChannelNetwork` handles plus live endpoints.
    handles: usize,
    /// Orders events due at the same instant by when they were queued.
    next_seq: u64,
    /// Every name ever registered, alive or dropped.
    slots: BTreeMap<String, Slot>,
    links: Links,
    totals: NetworkStats,
}

/// Directed links, created on first use.
struct Links {
    seed: u64,
    /// Faults of links not configured one by one.
    default_faults: LinkFaults,
    /// `by_from[from][to]`.
    by_from: BTreeMap<String, BTreeMap<String, Link>>,
}

/// A receiver: its queue of pending events.
struct Slot {
    alive: bool,
    queue: BinaryHeap<Queued>,
    /// Frames (not `Up`/`Down` events) in `queue`.
    frames_queued: usize,
    notify: Arc<Notify>,
}

struct Link {
    faults: LinkFaults,
    partitioned: bool,
    rng: SplitMix64,
    stats: NetworkStats,
}

/// An event waiting in a receiver's queue until `due`.
struct Queued {
    due: Instant,
    seq: u64,
    event: TransportEvent,
}

impl ChannelNetwork {
    /// Frames one receiver may hold, in flight or due but not yet received.
    /// Frames beyond it are dropped and counted in
    /// [`NetworkStats::frames_dropped_overflow`].
    pub const FRAMES_IN_FLIGHT_MAX: usize = 65_536;

    /// The longest delay a link gives a frame, whatever its faults say.
    pub const FRAME_DELAY_MAX: Duration = Duration::from_secs(24 * 60 * 60);

    /// An empty network whose faults are drawn from `seed`.
    pub fn new(seed: u64) -> ChannelNetwork {
        let state = State {
            shutdown: false,
            handles: 1,
            next_seq: 0,
            slots: BTreeMap::new(),
            links: Links {
                seed,
                default_faults: LinkFaults::default(),
                by_from: BTreeMap::new(),
            },
            totals: NetworkStats::default(),
        };
        ChannelNetwork {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
            }),
        }
    }

    /// Registers the region `name` and returns its endpoint.
    ///
    /// Its peers are every other registered name, including ones registered
    /// later. Every live endpoint that can hear the new one receives
    /// `Up(name)`, and the new one receives `Up(peer)` for every live peer it
    /// can hear (partitions set up beforehand are respected). Registering a
    /// name whose endpoint was dropped is a restart: a fresh, empty endpoint.
    ///
    /// # Panics
    /// If `name` already has a live endpoint.
    pub fn endpoint(&self, name: &str) -> ChannelEndpoint {
        let mut state = self.shared.lock();
        let notify = state.transition(|state| {
            let slot = state.slots.entry(name.to_owned()).or_insert_with(|| Slot {
                alive: false,
                queue: BinaryHeap::new(),
                frames_queued: 0,
                notify: Arc::new(Notify::new()),
            });
            assert!(!slot.alive, "region {name:?} already has a live endpoint");
            slot.alive = true;
            Arc::clone(&slot.notify)
        });
        state.handles += 1;
        tracing::info!(region = name, "endpoint registered");
        ChannelEndpoint {
            name: name.to_owned(),
            shared: Arc::clone(&self.shared),
            notify,
        }
    }

    /// Sets the faults of the one direction `from` → `to`.
    pub fn set_faults(&self, from: &str, to: &str, faults: LinkFaults) {
        let mut state = self.shared.lock();
        state.links.get_mut(from, to).faults = faults;
    }

    /// Sets the faults of every link, existing or future.
    pub fn set_faults_all(&self, faults: LinkFaults) {
        let mut state = self.shared.lock();
        for link in state.links.all_mut() {
            link.faults = faults.clone();
        }
        state.links.default_faults = faults;
    }

    /// Cuts the link between `a` and `b` in both directions: each sees
    /// `Down` of the other, and frames sent either way are dropped.
    pub fn partition(&self, a: &str, b: &str) {
        tracing::info!(a, b, "partition");
        self.set_partitioned(&[(a, b), (b, a)], true);
    }

    /// Cuts the link `from` → `to` only: `to` sees `Down(from)` and frames
    /// from `from` to `to` are dropped; `to` can still reach `from`.
    pub fn partition_one_way(&self, from: &str, to: &str) {
        tracing::info!(from, to, "one-way partition");
        self.set_partitioned(&[(from, to)], true);
    }

    /// Partitions `name` from every other region registered so far (regions
    /// registered later are not cut off).
    pub fn isolate(&self, name: &str) {
        tracing::info!(region = name, "isolate");
        let mut state = self.shared.lock();
        state.transition(|state| {
            let others: Vec<String> = state
                .slots
                .keys()
                .filter(|other| *other != name)
                .cloned()
                .collect();
            for other in others {
                state.links.get_mut(name, &other).partitioned = true;
                state.links.get_mut(&other, name).partitioned = true;
            }
        });
    }

    /// Restores the link between `a` and `b` in both directions; whoever
    /// could not hear the other sees `Up`. Faults are kept.
    pub fn heal(&self, a: &str, b: &str) {
        tracing::info!(a, b, "heal");
        self.set_partitioned(&[(a, b), (b, a)], false);
    }

    /// Restores every partitioned link. Faults are kept.
    pub fn heal_all(&self) {
        tracing::info!("heal all");
        let mut state = self.shared.lock();
        state.transition(|state| {
            for link in state.links.all_mut() {
                link.partitioned = false;
            }
        });
    }

    /// Closes the network for good: queued frames are discarded (counted as
    /// closed), later sends are dropped, and every `recv` returns `None`.
    pub fn shutdown(&self) {
        tracing::info!("network shutdown");
        let mut state = self.shared.lock();
        state.shutdown = true;
        let names: Vec<String> = state.slots.keys().cloned().collect();
        for name in &names {
            state.discard_queue(name);
        }
        state.notify_all();
    }

    /// Counters for the whole network.
    pub fn stats(&self) -> NetworkStats {
        self.shared.lock().totals
    }

    /// Counters for the one direction `from` → `to` (all zero if nothing was
    /// ever sent that way).
    pub fn link_stats(&self, from: &str, to: &str) -> NetworkStats {
        let state = self.shared.lock();
        state
            .links
            .get(from, to)
            .map_or_else(NetworkStats::default, |link| link.stats)
    }

    fn set_partitioned(&self, links: &[(&str, &str)], partitioned: bool) {
        let mut state = self.shared.lock();
        state.transition(|state| {
            for (from, to) in links {
                state.links.get_mut(from, to).partitioned = partitioned;
            }
        });
    }
}

impl Clone for ChannelNetwork {
    fn clone(&self) -> Self {
        self.shared.lock().handles += 1;
        ChannelNetwork {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for ChannelNetwork {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        // An endpoint left alone must notice that nothing can reach it.
        state.notify_all();
    }
}

impl fmt::Debug for ChannelNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("ChannelNetwork")
            .field("regions", &state.slots.keys().collect::<Vec<_>>())
            .field("stats", &state.totals)
            .finish_non_exhaustive()
    }
}

impl Transport for ChannelEndpoint {
    fn local(&self) -> &str {
        &self.name
    }

    fn peers(&self) -> Vec<String> {
        let state = self.shared.lock();
        state
            .slots
            .keys()
            .filter(|name| **name != self.name)
            .cloned()
            .collect()
    }

    fn send(&self, peer: &str, frame: Vec<u8>) {
        self.shared.lock().send(&self.name, peer, frame);
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        loop {
            // Decide under the lock; sleep without it. A notification sent
            // between the two is kept as a permit by `notify_one`.
            let due = match self.shared.lock().poll_event(&self.name) {
                Next::Ready(event) => return event,
                Next::Wait(due) => due,
            };
            match due {
                Some(due) => {
                    // Timing out is the normal way to wake for a frame.
                    let _ = tokio::time::timeout_at(due, self.notify.notified()).await;
                }
                None => self.notify.notified().await,
            }
        }
    }
}

impl Drop for ChannelEndpoint {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        state.transition(|state| {
            state.discard_queue(&self.name);
            state.discard_sent_by(&self.name);
            if let Some(slot) = state.slots.get_mut(&self.name) {
                slot.alive = false;
            }
        });
        state.notify_all();
        tracing::info!(region = self.name, "endpoint dropped");
    }
}

impl fmt::Debug for ChannelEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelEndpoint")
            .field("local", &self.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in a caller (every
        // mutation completes under the lock), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Next {
    /// Return this from `recv`.
    Ready(Option<TransportEvent>),
    /// Wait for a notification, or until the instant the next event is due.
    Wait(Option<Instant>),
}

impl Links {
    fn get(&self, from: &str, to: &str) -> Option<&Link> {
        self.by_from.get(from).and_then(|links| links.get(to))
    }

    /// The link `from` → `to`, created with the default faults if new.
    fn get_mut(&mut self, from: &str, to: &str) -> &mut Link {
        let (seed, default_faults) = (self.seed, &self.default_faults);
        self.by_from
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_insert_with(|| Link {
                faults: default_faults.clone(),
                partitioned: false,
                rng: SplitMix64::for_link(seed, from, to),
                stats: NetworkStats::default(),
            })
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Link> {
        self.by_from.values_mut().flat_map(BTreeMap::values_mut)
    }
}

impl State {
    fn is_partitioned(&self, from: &str, to: &str) -> bool {
        self.links
            .get(from, to)
            .is_some_and(|link| link.partitioned)
    }

    /// Pairs (receiver, peer) where the receiver can hear the peer.
    fn reachable(&self) -> BTreeSet<(String, String)> {
        let mut pairs = BTreeSet::new();
        if self.shutdown {
            return pairs;
        }
        let alive = || self.slots.iter().filter(|(_, slot)| slot.alive);
        for (receiver, _) in alive() {
            for (peer, _) in alive() {
                if peer != receiver && !self.is_partitioned(peer, receiver) {
                    pairs.insert((receiver.clone(), peer.clone()));
                }
            }
        }
        pairs
    }

    /// Runs `change`, then queues `Down`/`Up` for every (receiver, peer)
    /// pair whose reachability it changed.
    fn transition<R>(&mut self, change: impl FnOnce(&mut State) -> R) -> R {
        let before = self.reachable();
        let result = change(self);
        let after = self.reachable();
        for (receiver, peer) in before.difference(&after) {
            self.push_control(receiver, TransportEvent::Down(peer.clone()));
        }
        for (receiver, peer) in after.difference(&before) {
            self.push_control(receiver, TransportEvent::Up(peer.clone()));
        }
        result
    }

    fn push_control(&mut self, receiver: &str, event: TransportEvent) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self
            .slots
            .get_mut(receiver)
            .expect("receiver is registered");
        if !slot.alive {
            return; // it just went away itself
        }
        slot.queue.push(Queued {
            due: Instant::now(),
            seq,
            event,
        });
        slot.notify.notify_one();
    }

    fn send(&mut self, from: &str, to: &str, frame: Vec<u8>) {
        let bytes = frame.len() as u64;
        self.totals.frames_sent += 1;
        self.totals.bytes_sent += bytes;
        if to == from || !self.slots.contains_key(to) {
            self.totals.frames_dropped_unknown += 1;
            tracing::debug!(from, to, bytes, "frame dropped: unknown peer");
            return;
        }
        let closed = self.shutdown || !self.slots[to].alive;
        let link = self.links.get_mut(from, to);
        link.stats.frames_sent += 1;
        link.stats.bytes_sent += bytes;
        let drop_cause = if closed {
            Some(DropCause::Closed)
        } else if link.partitioned {
            Some(DropCause::Partition)
        } else if link.rng.chance(link.faults.loss) {
            Some(DropCause::Loss)
        } else {
            None
        };
        if let Some(cause) = drop_cause {
            cause.count(&mut link.stats);
            cause.count(&mut self.totals);
            tracing::debug!(from, to, bytes, cause = cause.name(), "frame dropped");
            return;
        }
        let copies = if link.rng.chance(link.faults.duplicate) {
            link.stats.frames_duplicated += 1;
            self.totals.frames_duplicated += 1;
            2
        } else {
            1
        };
        let now = Instant::now();
        let due = now + link.rng.delay(&link.faults);
        if copies == 2 {
            let copy_due = now + link.rng.delay(&link.faults);
            self.enqueue_frame(from, to, copy_due, frame.clone());
        }
        self.enqueue_frame(from, to, due, frame);
    }

    fn enqueue_frame(&mut self, from: &str, to: &str, due: Instant, frame: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self.slots.get_mut(to).expect("receiver is registered");
        let overflow = slot.frames_queued >= ChannelNetwork::FRAMES_IN_FLIGHT_MAX;
        if !overflow {
            slot.frames_queued += 1;
            slot.queue.push(Queued {
                due,
                seq,
                event: TransportEvent::Frame {
                    from: from.to_owned(),
                    frame,
                },
            });
            slot.notify.notify_one();
        }
        let cause = DropCause::Overflow;
        let link = self.links.get_mut(from, to);
        if overflow {
            cause.count(&mut link.stats);
            cause.count(&mut self.totals);
            tracing::debug!(from, to, cause = cause.name(), "frame dropped");
        } else {
            link.stats.frames_in_flight += 1;
            self.totals.frames_in_flight += 1;
        }
    }

    /// What `recv` on `receiver` should do now.
    fn poll_event(&mut self, receiver: &str) -> Next {
        if self.shutdown {
            return Next::Ready(None);
        }
        let slot = self
            .slots
            .get_mut(receiver)
            .expect("endpoint is registered");
        match slot.queue.peek() {
            Some(next) if next.due <= Instant::now() => {}
            Some(next) => return Next::Wait(Some(next.due)),
            // Only this endpoint is left: nothing can ever arrive.
            None if self.handles <= 1 => return Next::Ready(None),
            None => return Next::Wait(None),
        }
        let event = slot.queue.pop().expect("peeked").event;
        if let TransportEvent::Frame { from, frame } = &event {
            slot.frames_queued -= 1;
            let bytes = frame.len() as u64;
            let link = self.links.get_mut(from, receiver);
            for stats in [&mut link.stats, &mut self.totals] {
                debug_assert!(stats.frames_in_flight > 0);
                stats.frames_in_flight -= 1;
                stats.frames_delivered += 1;
                stats.bytes_delivered += bytes;
            }
        }
        Next::Ready(Some(event))
    }

    /// Empties `receiver`'s queue, counting its frames as closed drops.
    fn discard_queue(&mut self, receiver: &str) {
        let Some(slot) = self.slots.get_mut(receiver) else {
            return;
        };
        slot.frames_queued = 0;
        let queue = std::mem::take(&mut slot.queue);
        for queued in queue {
            if let TransportEvent::Frame { from, .. } = queued.event {
                let link = self.links.get_mut(&from, receiver);
                for stats in [&mut link.stats, &mut self.totals] {
                    stats.frames_in_flight -= 1;
                    stats.frames_dropped_closed += 1;
                }
            }
        }
    }

    /// Drops the frames `sender` sent that are still in flight: its
    /// connections closed with it, so no frame of it reaches a peer after
    /// the peer sees `Up` for its successor (as over TCP).
    fn discard_sent_by(&mut self, sender: &str) {
        for (receiver, slot) in &mut self.slots {
            if receiver == sender {
                continue;
            }
            let before = slot.queue.len();
            let queue = std::mem::take(&mut slot.queue);
            slot.queue = queue
                .into_iter()
                .filter(
                    |q| !matches!(&q.event, TransportEvent::Frame { from, .. } if from == sender),
                )
                .collect();
            let dropped = before - slot.queue.len();
            if dropped == 0 {
                continue;
            }
            slot.frames_queued -= dropped;
            let link = self.links.get_mut(sender, receiver);
            for stats in [&mut link.stats, &mut self.totals] {
                stats.frames_in_flight -= dropped as u64;
                stats.frames_dropped_closed += dropped as u64;
            }
        }
    }

    fn notify_all(&self) {
        for slot in self.slots.values() {
            slot.notify.notify_one();
        }
    }
}

/// Why a frame was dropped.
#[derive(Clone, Copy)]
enum DropCause {
    Closed,
    Partition,
    Loss,
    Overflow,
}

impl DropCause {
    fn count(self, stats: &mut NetworkStats) {
        let counter = match self {
            DropCause::Closed => &mut stats.frames_dropped_closed,
            DropCause::Partition => &mut stats.frames_dropped_partition,
            DropCause::Loss => &mut stats.frames_dropped_loss,
            DropCause::Overflow => &mut stats.frames_dropped_overflow,
        };
        *counter += 1;
    }

    fn name(self) -> &'static str {
        match self {
            DropCause::Closed => "closed",
            DropCause::Partition => "partition",
            DropCause::Loss => "loss",
            DropCause::Overflow => "overflow",
        }
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest due,
    /// first queued event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}
