//! Replication, inside the engine: the outbox of local writes and its
//! batches, acknowledgements and retransmission, the causal buffer, and
//! anti-entropy. Internal: the public face is [`region`](crate::region).
//!
//! One task per region runs [`run`]: it takes frames and peer events from
//! the [`Transport`], flushes batches when enough writes are waiting or the
//! batch delay has passed, retransmits what was not acknowledged, and
//! starts anti-entropy with peers that (re)connect or are due.

pub(crate) mod core;
pub(crate) mod homed;
pub(crate) mod lag;
pub(crate) mod message;
pub(crate) mod outbox;
pub(crate) mod relay;
// Anti-entropy of protocol 6 (`core::ranges`); the `testing` feature
// exposes all of it to benches, without it parts go unused.
#[cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]
pub(crate) mod reconcile;
pub(crate) mod rights;
pub(crate) mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use self::core::{Core, Outgoing, SentBytes};
use self::message::Message;
use crate::region::EngineFailure;
use crate::storage::{Storage, StorageError};
use crate::transport::{Transport, TransportEvent};
use crate::wire;

/// How far a region's disk has caught up with its writes.
#[derive(Clone, Debug, Default)]
pub(crate) struct DurableMark {
    /// Local writes committed.
    pub(crate) seq: u64,
    /// The last commit failed: it would have covered writes up to this
    /// sequence number.
    pub(crate) failed: Option<(u64, StorageError)>,
}

/// What the region handles share with the engine task.
pub(crate) struct Shared {
    pub(crate) core: Mutex<Core>,
    /// Poked by writes when a full batch is waiting.
    pub(crate) wake: Notify,
    /// The applied vector's generation, for session reads to wait on.
    pub(crate) applied: watch::Sender<u64>,
    /// What is on disk, for `Local` writes to wait on.
    pub(crate) durable: watch::Sender<DurableMark>,
    /// `Local` writes that asked for a commit, ever: group commit paces
    /// itself on them (see [`Gather`]).
    pub(crate) commit_requests: AtomicU64,
    /// Bumped when a peer acknowledges more of our writes, for
    /// `Replicated` writes to wait on.
    pub(crate) acks: watch::Sender<u64>,
    /// Set once the engine failed: read on every operation, so a plain
    /// flag in front of `failure`.
    pub(crate) failed: AtomicBool,
    /// Why the engine failed (set once, but for `Poisoned` made precise by
    /// the panic that caused it).
    pub(crate) failure: Mutex<Option<EngineFailure>>,
}

impl Shared {
    pub(crate) fn new(core: Core, durable_seq: u64) -> Self {
        Shared {
            core: Mutex::new(core),
            wake: Notify::new(),
            applied: watch::channel(0).0,
            durable: watch::channel(DurableMark {
                seq: durable_seq,
                failed: None,
            })
            .0,
            commit_requests: AtomicU64::new(0),
            acks: watch::channel(0).0,
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// The state, locked, whatever happened to it: for the engine (which
    /// stops at the top of its loop once the lock is poisoned) and for
    /// what only reads it. Region operations go through
    /// `Region::core`, which refuses once the engine failed.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the engine failed, if it did.
    pub(crate) fn failure(&self) -> Option<EngineFailure> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the engine failed (the first cause is kept, but a
    /// panic explains a poisoned lock better) and wakes every waiting read
    /// and write, which then return the failure.
    pub(crate) fn fail(&self, failure: EngineFailure) {
        {
            let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            match (&*slot, &failure) {
                (None, _) | (Some(EngineFailure::Poisoned), EngineFailure::Panicked { .. }) => {
                    *slot = Some(failure);
                }
                _ => return,
            }
            self.failed.store(true, Ordering::Release);
        }
        self.applied.send_modify(|g| *g = g.wrapping_add(1));
        self.acks.send_modify(|a| *a = a.wrapping_add(1));
        self.durable.send_modify(|_| {});
    }

    fn publish(&self, core: &Core) {
        if *self.applied.borrow() != core.generation {
            self.applied.send_replace(core.generation);
        }
        // Acknowledged writes, and repairs pending: a confirmed repair
        // counts for `Replicated` waits although it moves no cursor.
        let acked = core.peers.values().fold(0u64, |sum, p| {
            sum.wrapping_mul(31)
                .wrapping_add(p.acked)
                .wrapping_add(u64::from(p.needs_sync) << 48)
        });
        if *self.acks.borrow() != acked {
            self.acks.send_replace(acked);
        }
    }
}

/// The transport of a region with storage and no peers: its engine runs
/// only to commit.
pub(crate) struct Detached(pub(crate) String);

impl Transport for Detached {
    fn local(&self) -> &str {
        &self.0
    }
    fn peers(&self) -> Vec<String> {
        Vec::new()
    }
    fn send(&self, _: &str, _: Vec<u8>) {}
    async fn recv(&mut self) -> Option<TransportEvent> {
        std::future::pending().await
    }
}

pub(crate) enum Command {
    /// Flush everything queued, wait (bounded) for acknowledgements, stop.
    Shutdown(oneshot::Sender<()>),
    /// Panic in the engine task, outside the state's lock (tests of
    /// supervision).
    #[cfg(any(test, feature = "testing"))]
    Panic,
}

/// How the engine task ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// `shutdown` asked it to.
    Shutdown,
    /// Every region handle was dropped.
    Dropped,
    /// The transport returned no more events.
    TransportClosed,
    /// A panic left the state's lock poisoned.
    Poisoned,
}

/// Starts the engine of `shared` on `transport` and a supervisor that
/// records, in `shared`, why it ended if it was not asked to: a panic, a
/// poisoned lock, a closed transport, a cancelled task. Reads and writes
/// then return the failure ([`crate::region::RegionError::Engine`]).
///
/// With [`engine_thread`](crate::region::RegionConfig::engine_thread) the
/// engine runs on a thread of its own (see [`spawn_on_thread`]); the
/// supervisor stays on the caller's runtime either way.
pub(crate) fn spawn<T: Transport>(
    shared: Arc<Shared>,
    transport: T,
    commands: mpsc::Receiver<Command>,
    storage: Option<Box<dyn Storage>>,
) {
    let on_thread = shared.lock().config.engine_thread;
    let engine = run(Arc::clone(&shared), transport, commands, storage);
    if on_thread {
        let ended = spawn_on_thread(&shared, engine);
        supervise(shared, async move { ended.await.ok() });
    } else {
        let engine = tokio::spawn(engine);
        supervise(shared, async move { Some(engine.await) });
    }
}

/// How an engine ended: `None` when it is gone without a word (its thread
/// could not start).
type Ended = Option<Result<Exit, tokio::task::JoinError>>;

/// Runs `engine` on a thread of its own, on a current-thread runtime: the
/// writers' wake-ups and the transport's then reach it across threads and
/// never queue it behind a writer on the writer's worker (tokio's LIFO
/// slot). Falls back to a task on the caller's runtime when the runtime or
/// the thread cannot be made. The returned receiver gets how it ended.
fn spawn_on_thread(
    shared: &Arc<Shared>,
    engine: impl Future<Output = Exit> + Send + 'static,
) -> oneshot::Receiver<Result<Exit, tokio::task::JoinError>> {
    let (tx, rx) = oneshot::channel();
    let name = shared.lock().name.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(region = %name, %error, "no runtime for the engine thread: the engine runs as a task");
            let engine = tokio::spawn(engine);
            tokio::spawn(async move {
                let _ = tx.send(engine.await);
            });
            return rx;
        }
    };
    let started = std::thread::Builder::new()
        .name(format!("engine-{name}"))
        .spawn(move || {
            // Spawned, not blocked on: a panic comes back as the task's
            // `JoinError`, as it does on the caller's runtime.
            let engine = runtime.spawn(engine);
            let _ = tx.send(runtime.block_on(engine));
        });
    if let Err(error) = started {
        // The closure, and the engine in it, are gone: the region fails as
        // if its engine was cancelled.
        tracing::error!(region = %name, %error, "cannot start the engine thread");
    }
    rx
}

/// Records in `shared` why its engine ended, once `ended` says, if it was
/// not asked to (an engine gone without a word counts as cancelled).
fn supervise(shared: Arc<Shared>, ended: impl Future<Output = Ended> + Send + 'static) {
    tokio::spawn(async move {
        let failure = match ended.await {
            None => EngineFailure::Cancelled,
            Some(Ok(Exit::Shutdown | Exit::Dropped)) => return,
            Some(Ok(Exit::TransportClosed)) => EngineFailure::TransportClosed,
            Some(Ok(Exit::Poisoned)) => EngineFailure::Poisoned,
            Some(Err(error)) if error.is_panic() => EngineFailure::Panicked {
                message: panic_message(error.into_panic()),
            },
            Some(Err(_)) => EngineFailure::Cancelled,
        };
        let region = shared.lock().name.clone();
        tracing::error!(%region, %failure, "region engine failed: reads and writes are refused from now on");
        shared.fail(failure);
    });
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

/// Longest a commit waits, after the one before it, for the `Local`
/// writers that one released to write again (see [`Gather`]); also at
/// most a quarter of the last commit's duration. 64 writers come back in
/// ~30 µs on 2 busy cores; with hundreds, the disk would idle while they
/// do, and the writes still waiting fill the next commit anyway.
const COMMIT_GATHER_WAIT_MAX: Duration = Duration::from_micros(100);

/// Group commit's pacing. A commit releases the `Local` writers it covered;
/// writers that wait for one write at a time write again at once, and a
/// commit that starts before they are back leaves them a whole commit to
/// wait for the next (the ack latency doubles, and each commit covers
/// fewer writes). So the next commit waits until as many commit requests
/// have come as the last commit released, and no longer than
/// [`COMMIT_GATHER_WAIT_MAX`] or a quarter of the last commit's duration
/// (writers that do not come back cost that much once).
#[derive(Debug, Default)]
struct Gather {
    /// `Shared::commit_requests` when the last commit was prepared.
    prepared_at: u64,
    /// `Shared::commit_requests` once every writer the last commit
    /// released has asked again.
    target: u64,
    /// Not past this (real time: a test's paused clock must not make it
    /// wait for ever); none after a failed commit.
    until: Option<std::time::Instant>,
}

impl Gather {
    /// Records a commit prepared when `requested` requests had come, which
    /// took `took`, and the `requests` that had come when it finished
    /// (before its writers were released).
    fn committed(&mut self, requested: u64, requests: u64, took: Duration, ok: bool) {
        debug_assert!(requested >= self.prepared_at && requests >= requested);
        // Requests before the prepare were covered; some just after it
        // may have been too (they count as still waiting: the target errs
        // low, never high).
        let released = requested.saturating_sub(self.prepared_at);
        self.prepared_at = requested;
        self.target = requests.saturating_add(released);
        self.until = ok.then(|| std::time::Instant::now() + (took / 4).min(COMMIT_GATHER_WAIT_MAX));
    }

    /// Whether the next commit should wait longer for writers.
    fn waiting(&self, requests: u64) -> bool {
        requests < self.target && self.until.is_some_and(|t| std::time::Instant::now() < t)
    }
}

/// Commits what changed since the last commit, on tokio's blocking pool,
/// and tells waiting writers (one watch update wakes all of them), only
/// once the store says it is on disk. The engine waits for it: frames
/// received meanwhile queue in the transport. True when everything is now
/// on disk.
async fn commit(
    shared: &Shared,
    storage: &mut Option<Box<dyn Storage>>,
    gather: &mut Gather,
) -> bool {
    // Read before the prepare: every request counted here is covered.
    let requested = shared.commit_requests.load(Ordering::Acquire);
    let Some(commit) = shared.lock().prepare_commit() else {
        gather.prepared_at = requested;
        return true;
    };
    let Some(mut store) = storage.take() else {
        return false;
    };
    let covers = commit.progress.as_ref().map(|p| p.seq);
    let started = std::time::Instant::now();
    let joined = tokio::task::spawn_blocking(move || {
        let result = store.commit(&commit);
        (store, commit, result)
    })
    .await;
    let Ok((store, commit, result)) = joined else {
        tracing::error!("storage: a commit panicked; the region stops committing");
        return false;
    };
    let ok = result.is_ok();
    *storage = Some(store);
    let took = started.elapsed();
    let mut core = shared.lock();
    #[cfg(feature = "metrics")]
    crate::region::metrics::commit_latency(&core.name, took);
    core.commit_done(&commit, &result);
    let seq = core.durable.as_ref().map_or(0, |d| d.seq);
    drop(core);
    // Before the release: no writer it covers can have asked again yet.
    gather.committed(
        requested,
        shared.commit_requests.load(Ordering::Acquire),
        took,
        ok,
    );
    shared.durable.send_modify(|mark| {
        mark.seq = seq;
        mark.failed = match result {
            Ok(()) => None,
            Err(error) => Some((covers.unwrap_or(seq), error)),
        };
    });
    ok
}

/// A transport event, its frame decoded.
enum Received {
    Frame(String, Result<Message, wire::WireError>),
    Up(String),
    Down(String),
}

impl Received {
    /// What the event is, for the engine's lock-hold event.
    fn kind(&self) -> &'static str {
        match self {
            Received::Frame(_, Ok(message)) => match message {
                Message::Batch { .. } => "batch",
                Message::Ack { .. } => "ack",
                Message::SyncRequest { .. } => "sync request",
                Message::SyncStates { .. } | Message::SyncStatesGrouped(_) => "sync states",
                Message::SyncDone { .. } => "sync done",
                _ => "frame",
            },
            Received::Frame(_, Err(_)) => "undecodable frame",
            Received::Up(_) => "peer up",
            Received::Down(_) => "peer down",
        }
    }
}

/// The engine logs (a `debug` event) every time it held the state's lock
/// at least this long: every local read and write waits behind it, so
/// these events are where a write's latency spike comes from (see
/// `benches/ae_latency.rs`).
const LOCK_HELD_LOG_MIN: Duration = Duration::from_millis(10);

/// Logs a hold of the state's lock of region `region` since `since`
/// handling `what`, when it lasted [`LOCK_HELD_LOG_MIN`] or more.
fn log_long_hold(region: &str, what: &str, since: Instant) {
    let held = since.elapsed();
    if held >= LOCK_HELD_LOG_MIN {
        tracing::debug!(
            region,
            what,
            held_ms = held.as_millis() as u64,
            "engine held the state's lock long: local reads and writes waited"
        );
    }
}

/// Whether a message may leave before the next commit: with storage,
/// acknowledgements and state transfers wait until what they vouch for is
/// on disk (a crash must not take back what a peer was told we hold).
pub(crate) fn leaves_now(message: &Message) -> bool {
    matches!(
        message,
        Message::Hello { .. }
            | Message::SyncRequest { .. }
            | Message::Batch { .. }
            | Message::RightsRequest { .. }
            | Message::HomedRequest { .. }
            | Message::Relay { .. }
            | Message::RelayWant { .. }
    )
}

/// Most messages held for the next commit before acknowledgements are
/// compacted (while commits fail, batches keep arriving and being acked).
const HELD_LEN_MAX: usize = 4096;

/// Keeps, of the held acknowledgements, only the latest per peer and
/// origin (they are cumulative); everything else stays, in order.
fn compact_held(held: &mut Outgoing) {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Outgoing = Vec::with_capacity(held.len());
    for (peer, message) in held.drain(..).rev() {
        if let Message::Ack { origin, .. } = &message
            && !seen.insert((peer.clone(), *origin))
        {
            continue;
        }
        kept.push((peer, message));
    }
    kept.reverse();
    if kept.len() > HELD_LEN_MAX {
        // Still over while commits keep failing: state transfers and their
        // confirmations go (those exchanges time out and are retried);
        // the acknowledgements, one per peer and origin, stay.
        let before = kept.len();
        kept.retain(|(_, m)| matches!(m, Message::Ack { .. }));
        tracing::warn!(
            dropped = before - kept.len(),
            "storage: commits keep failing; held anti-entropy transfers dropped"
        );
    }
    *held = kept;
}

/// Encodes and sends `out`, counting each frame's bytes in `sent`.
fn send_all<T: Transport>(transport: &T, out: Outgoing, sent: &mut SentBytes) {
    for (peer, message) in out {
        match wire::encode(&message) {
            Ok(frame) => {
                sent.add(&peer, frame.len(), message.is_anti_entropy());
                transport.send(&peer, frame);
            }
            Err(error) => tracing::error!(%peer, %error, "cannot encode a message"),
        }
    }
}

/// The engine task of one region: takes commands, transport events, wake-ups
/// and ticks in that order of priority, until it is told to stop, every
/// region handle is gone, the transport closes or the state's lock is
/// poisoned.
pub(crate) async fn run<T: Transport>(
    shared: Arc<Shared>,
    transport: T,
    commands: mpsc::Receiver<Command>,
    storage: Option<Box<dyn Storage>>,
) -> Exit {
    let mut engine = Engine::new(shared, transport, commands, storage);
    loop {
        // A panic under the lock (here, or in a region call) may have left
        // the state half-changed: stop rather than ship it.
        if engine.shared.core.is_poisoned() {
            return Exit::Poisoned;
        }
        tokio::select! {
            biased;
            command = engine.commands.recv(), if engine.shutdown.is_none() => match command {
                Some(Command::Shutdown(done)) => engine.begin_shutdown(done).await,
                #[cfg(any(test, feature = "testing"))]
                Some(Command::Panic) => panic!("engine panic injected by a test"),
                None => return Exit::Dropped,
            },
            event = engine.transport.recv() => {
                let Some(event) = event else { return Exit::TransportClosed };
                engine.on_transport_event(event);
            }
            () = engine.shared.wake.notified() => engine.on_wake().await,
            _ = engine.tick.tick() => engine.on_tick().await,
            () = std::future::ready(()), if engine.merging || engine.draining => {}
        }
        if engine.draining {
            let drain = |core: &mut Core, _| core.drain_buffer_slice();
            engine.background_slice("drain slice", drain).await;
        }
        if engine.merging {
            engine
                .background_slice("transfer slice", Core::merge_transfer_slice)
                .await;
        }
        if engine.try_finish_shutdown().await {
            return Exit::Shutdown;
        }
    }
}

/// What the engine task keeps beside the shared state: the messages held
/// for the next commit, the bytes sent since it last took the lock, its
/// tick and its shutdown. The fields drop in this order (the store closes
/// before the transport).
struct Engine<T> {
    #[cfg(feature = "metrics")]
    published_at: Option<Instant>,
    /// Set by a shutdown command: whom to tell it is done, and the deadline
    /// for peers to acknowledge what it flushed.
    shutdown: Option<(oneshot::Sender<()>, Instant)>,
    tick: tokio::time::Interval,
    /// Frame bytes sent since the engine last held the state's lock.
    sent: SentBytes,
    /// A large transfer waits to be merged or folded, a slice per lock
    /// hold (see `Core::merge_transfer_slice`, `Engine::background_slice`).
    merging: bool,
    /// Ready buffered batches wait to be applied, a slice per lock hold
    /// (see `Core::drain_buffer_slice`).
    draining: bool,
    /// With storage: messages that wait for the next commit.
    held: Outgoing,
    /// Group commit's pacing.
    gather: Gather,
    durable: bool,
    shutdown_wait_max: Duration,
    storage: Option<Box<dyn Storage>>,
    commands: mpsc::Receiver<Command>,
    transport: T,
    shared: Arc<Shared>,
}

impl<T: Transport> Engine<T> {
    fn new(
        shared: Arc<Shared>,
        transport: T,
        commands: mpsc::Receiver<Command>,
        storage: Option<Box<dyn Storage>>,
    ) -> Self {
        let config = shared.lock().config.clone();
        let durable = storage.is_some();
        let mut tick = tokio::time::interval(config.batch_delay);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Engine {
            #[cfg(feature = "metrics")]
            published_at: None,
            shutdown: None,
            tick,
            sent: SentBytes::default(),
            merging: false,
            draining: false,
            held: Vec::new(),
            gather: Gather::default(),
            durable,
            shutdown_wait_max: config.shutdown_wait_max,
            storage,
            commands,
            transport,
            shared,
        }
    }

    /// Encodes and sends `out` (see [`send_all`]): in the layouts of the
    /// peers' protocols, batches compacted outside the lock.
    fn send(&mut self, mut out: Outgoing) {
        let carries_states = out
            .iter()
            .any(|(_, m)| matches!(m, Message::Batch { .. } | Message::SyncStates { .. }));
        let mut compact = Vec::new();
        if carries_states && !self.shared.core.is_poisoned() {
            let core = self.shared.lock();
            core.downgrade_for_old_peers(&mut out);
            compact = core.compact_batch_peers(&out);
        }
        message::compact_batches(&mut out, &compact);
        send_all(&self.transport, out, &mut self.sent);
    }

    /// Commits (see [`commit`]); once everything is on disk, sends what
    /// was held for it. True when the commit succeeded.
    async fn commit_and_send_held(&mut self) -> bool {
        if !commit(&self.shared, &mut self.storage, &mut self.gather).await {
            return false;
        }
        let held = std::mem::take(&mut self.held);
        self.send(held);
        true
    }

    /// A shutdown command: commits, flushes what is held and every batch
    /// queued, and starts the wait for acknowledgements.
    async fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        let mut out = if commit(&self.shared, &mut self.storage, &mut self.gather).await {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        };
        let now = Instant::now();
        out.extend(self.shared.lock().take_batches(now));
        self.send(out);
        self.shutdown = Some((done, now + self.shutdown_wait_max));
    }

    /// A frame or a peer coming or going: decoded outside the lock, handled
    /// under it, and what it answers sent (or held for the next commit).
    fn on_transport_event(&mut self, event: TransportEvent) {
        let now = Instant::now();
        let (event, frame_len) = decode_event(event);
        let kind = event.kind();
        let mut core = self.shared.lock();
        let locked = Instant::now();
        core.count_sent(&mut self.sent);
        let out = handle_received(&mut core, &mut self.held, event, frame_len, now);
        self.merging = core.transfer_work_pending();
        self.draining = core.drain_work_pending();
        self.shared.publish(&core);
        log_long_hold(&core.name, kind, locked);
        drop(core);
        let out = self.hold_until_commit(out);
        self.send(out);
    }

    /// One slice of background work (`work`: a large transfer merged,
    /// published or folded, or a long run of ready buffered batches
    /// applied) in a hold of its own, after letting the tasks on this
    /// worker run (local writers among them): the lock is never held for a
    /// whole transfer or a whole run. What it answers is sent (or held for
    /// the next commit).
    async fn background_slice(
        &mut self,
        kind: &'static str,
        work: fn(&mut Core, Instant) -> Outgoing,
    ) {
        tokio::task::yield_now().await;
        let mut core = self.shared.lock();
        let locked = Instant::now();
        core.count_sent(&mut self.sent);
        let out = work(&mut core, locked);
        self.merging = core.transfer_work_pending();
        self.draining = core.drain_work_pending();
        self.shared.publish(&core);
        log_long_hold(&core.name, kind, locked);
        drop(core);
        let out = self.hold_until_commit(out);
        self.send(out);
    }

    /// With storage, keeps back what may leave only after the next commit
    /// (see [`leaves_now`]); returns what may leave now.
    fn hold_until_commit(&mut self, out: Outgoing) -> Outgoing {
        if !self.durable {
            return out;
        }
        let (now, later): (Outgoing, Outgoing) = out.into_iter().partition(|(_, m)| leaves_now(m));
        self.held.extend(later);
        if self.held.len() > HELD_LEN_MAX {
            compact_held(&mut self.held);
        }
        now
    }

    /// Woken by writes: `Local` writers waiting are committed now, and a
    /// full batch leaves.
    async fn on_wake(&mut self) {
        // `Local` writers waiting: commit now rather than on the
        // tick, and again at once while more arrived meanwhile
        // (group commit: each commit takes every write waiting).
        while self.durable && std::mem::take(&mut self.shared.lock().commit_requested) {
            // Writers woken by the last commit write again first:
            // one commit then takes them all (bounded: see `Gather`).
            tokio::task::yield_now().await;
            while self
                .gather
                .waiting(self.shared.commit_requests.load(Ordering::Acquire))
            {
                tokio::task::yield_now().await;
            }
            if !self.commit_and_send_held().await {
                break;
            }
        }
        let out = {
            let mut core = self.shared.lock();
            core.count_sent(&mut self.sent);
            core.take_batches(Instant::now())
        };
        self.send(out);
    }

    /// The engine's tick: group commit, retransmission, expired exchanges,
    /// and whatever is due (hellos, batches, exchanges, rights requests).
    async fn on_tick(&mut self) {
        if self.durable {
            // Group commit: one commit for every write since the
            // last tick; then what it covers may leave.
            // Acknowledgements vouch for the commit: held while it
            // fails (peers resend, and the commit is retried).
            self.commit_and_send_held().await;
        }
        let mut core = self.shared.lock();
        let now = Instant::now();
        core.count_sent(&mut self.sent);
        core.check_retransmit(now);
        core.expire_syncs(now);
        let mut out = core.due_hellos(now);
        out.extend(core.due_announcements(now));
        out.extend(core.take_batches(now));
        // Anti-entropy keeps running while shutting down: peers whose
        // outbox was dropped are repaired before we go.
        out.extend(core.due_syncs(now));
        out.extend(core.due_rights_requests(now));
        out.extend(core.due_homed(now));
        #[cfg(feature = "metrics")]
        if self.published_at.is_none_or(|at| {
            now.duration_since(at) >= crate::region::metrics::METRICS_PUBLISH_INTERVAL
        }) {
            self.published_at = Some(now);
            crate::region::metrics::publish(&core);
        }
        log_long_hold(&core.name, "tick", now);
        drop(core);
        self.send(out);
    }

    /// While shutting down: commits, and ends the shutdown (true) once
    /// every peer acknowledged what it was sent or the deadline passed.
    async fn try_finish_shutdown(&mut self) -> bool {
        let Some((_, deadline)) = &self.shutdown else {
            return false;
        };
        let deadline = *deadline;
        if self.durable {
            self.commit_and_send_held().await;
        }
        let core = self.shared.lock();
        let flushed = core.flushed();
        let late = Instant::now() >= deadline;
        if !flushed && !late {
            return false;
        }
        if !flushed {
            tracing::warn!(region = %core.name, "shutdown: peers still had unacknowledged writes at the deadline");
        }
        drop(core);
        // The store is closed before shutdown returns: the same
        // directory can be opened again at once.
        drop(self.storage.take());
        if let Some((done, _)) = self.shutdown.take() {
            let _ = done.send(());
        }
        true
    }
}

/// Decodes a frame before the lock that every local read and write takes
/// (its values are decoded when merged); with the frame's length.
fn decode_event(event: TransportEvent) -> (Received, usize) {
    match event {
        TransportEvent::Frame { from, frame } => {
            let frame_len = frame.len();
            (
                Received::Frame(from, message::decode_frame(&frame)),
                frame_len,
            )
        }
        TransportEvent::Up(peer) => (Received::Up(peer), 0),
        TransportEvent::Down(peer) => (Received::Down(peer), 0),
    }
}

/// Handles a transport event under the lock; returns what it answers.
fn handle_received(
    core: &mut Core,
    held: &mut Outgoing,
    event: Received,
    frame_len: usize,
    now: Instant,
) -> Outgoing {
    match event {
        Received::Frame(from, Ok(message)) => {
            core.count_received(&from, frame_len, message.is_anti_entropy());
            core.on_message(&from, message, now)
        }
        Received::Frame(from, Err(error)) => {
            core.count_received(&from, frame_len, false);
            core.on_undecodable(&from, &error);
            Vec::new()
        }
        // What was held for a peer belongs to the connection that
        // ended: its successor (maybe a new incarnation) must not
        // get a reply to an exchange it never started.
        Received::Up(peer) => {
            held.retain(|(to, _)| *to != peer);
            core.peer_up(&peer, now)
        }
        Received::Down(peer) => {
            held.retain(|(to, _)| *to != peer);
            core.peer_down(&peer, now);
            Vec::new()
        }
    }
}
