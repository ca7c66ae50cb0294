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
pub(crate) mod rights;
pub(crate) mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
pub(crate) fn spawn<T: Transport>(
    shared: Arc<Shared>,
    transport: T,
    commands: mpsc::Receiver<Command>,
    storage: Option<Box<dyn Storage>>,
) {
    let engine = tokio::spawn(run(Arc::clone(&shared), transport, commands, storage));
    tokio::spawn(async move {
        let failure = match engine.await {
            Ok(Exit::Shutdown | Exit::Dropped) => return,
            Ok(Exit::TransportClosed) => EngineFailure::TransportClosed,
            Ok(Exit::Poisoned) => EngineFailure::Poisoned,
            Err(error) if error.is_panic() => EngineFailure::Panicked {
                message: panic_message(error.into_panic()),
            },
            Err(_) => EngineFailure::Cancelled,
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

/// Commits what changed since the last commit, on tokio's blocking pool,
/// and tells waiting writers. The engine waits for it: frames received
/// meanwhile queue in the transport. True when everything is now on disk.
async fn commit(shared: &Shared, storage: &mut Option<Box<dyn Storage>>) -> bool {
    let Some(commit) = shared.lock().prepare_commit() else {
        return true;
    };
    let Some(mut store) = storage.take() else {
        return false;
    };
    let covers = commit.progress.as_ref().map(|p| p.seq);
    #[cfg(feature = "metrics")]
    let started = Instant::now();
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
    let mut core = shared.lock();
    #[cfg(feature = "metrics")]
    crate::region::metrics::commit_latency(&core.name, started.elapsed());
    core.commit_done(&commit, &result);
    let seq = core.durable.as_ref().map_or(0, |d| d.seq);
    drop(core);
    shared.durable.send_modify(|mark| {
        mark.seq = seq;
        mark.failed = match result {
            Ok(()) => None,
            Err(error) => Some((covers.unwrap_or(seq), error)),
        };
    });
    ok
}

/// Whether a message may leave before the next commit: with storage,
/// acknowledgements and state transfers wait until what they vouch for is
/// on disk (a crash must not take back what a peer was told we hold).
/// A transport event, its frame decoded.
enum Received {
    Frame(String, Result<Message, wire::WireError>),
    Up(String),
    Down(String),
}

pub(crate) fn leaves_now(message: &Message) -> bool {
    matches!(
        message,
        Message::Hello { .. }
            | Message::SyncRequest { .. }
            | Message::Batch { .. }
            | Message::RightsRequest { .. }
            | Message::HomedRequest { .. }
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

/// The engine task of one region.
pub(crate) async fn run<T: Transport>(
    shared: Arc<Shared>,
    mut transport: T,
    mut commands: mpsc::Receiver<Command>,
    mut storage: Option<Box<dyn Storage>>,
) -> Exit {
    let config = shared.lock().config.clone();
    // With storage: messages that wait for the next commit.
    let mut held: Outgoing = Vec::new();
    // Frame bytes sent since the engine last held the state's lock.
    let mut sent = SentBytes::default();
    let durable = storage.is_some();
    let mut tick = tokio::time::interval(config.batch_delay);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown: Option<(oneshot::Sender<()>, Instant)> = None;
    #[cfg(feature = "metrics")]
    let mut published_at: Option<Instant> = None;
    loop {
        // A panic under the lock (here, or in a region call) may have left
        // the state half-changed: stop rather than ship it.
        if shared.core.is_poisoned() {
            return Exit::Poisoned;
        }
        tokio::select! {
            biased;
            command = commands.recv(), if shutdown.is_none() => match command {
                Some(Command::Shutdown(done)) => {
                    let mut out = if commit(&shared, &mut storage).await {
                        std::mem::take(&mut held)
                    } else {
                        Vec::new()
                    };
                    let now = Instant::now();
                    out.extend(shared.lock().take_batches(now));
                    send_all(&transport, out, &mut sent);
                    shutdown = Some((done, now + config.shutdown_wait_max));
                }
                #[cfg(any(test, feature = "testing"))]
                Some(Command::Panic) => panic!("engine panic injected by a test"),
                None => return Exit::Dropped,
            },
            event = transport.recv() => {
                let Some(event) = event else { return Exit::TransportClosed };
                let now = Instant::now();
                // A frame is decoded before the lock that every local read
                // and write takes (its values are decoded when merged).
                let mut frame_len = 0;
                let event = match event {
                    TransportEvent::Frame { from, frame } => {
                        frame_len = frame.len();
                        Received::Frame(from, wire::decode::<Message>(&frame))
                    }
                    TransportEvent::Up(peer) => Received::Up(peer),
                    TransportEvent::Down(peer) => Received::Down(peer),
                };
                let mut core = shared.lock();
                core.count_sent(&mut sent);
                let out = match event {
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
                };
                shared.publish(&core);
                drop(core);
                let out = if durable {
                    let (now, later): (Outgoing, Outgoing) =
                        out.into_iter().partition(|(_, m)| leaves_now(m));
                    held.extend(later);
                    if held.len() > HELD_LEN_MAX {
                        compact_held(&mut held);
                    }
                    now
                } else {
                    out
                };
                send_all(&transport, out, &mut sent);
            }
            () = shared.wake.notified() => {
                // `Local` writers waiting: commit now rather than on the
                // tick, and again at once while more arrived meanwhile
                // (group commit: each commit takes every write waiting).
                while durable && std::mem::take(&mut shared.lock().commit_requested) {
                    // Writers woken by the last commit write again first:
                    // one commit then takes them all.
                    tokio::task::yield_now().await;
                    if !commit(&shared, &mut storage).await {
                        break;
                    }
                    send_all(&transport, std::mem::take(&mut held), &mut sent);
                }
                let out = {
                    let mut core = shared.lock();
                    core.count_sent(&mut sent);
                    core.take_batches(Instant::now())
                };
                send_all(&transport, out, &mut sent);
            }
            _ = tick.tick() => {
                if durable {
                    // Group commit: one commit for every write since the
                    // last tick; then what it covers may leave.
                    // Acknowledgements vouch for the commit: held while it
                    // fails (peers resend, and the commit is retried).
                    if commit(&shared, &mut storage).await {
                        send_all(&transport, std::mem::take(&mut held), &mut sent);
                    }
                }
                let now = Instant::now();
                let mut core = shared.lock();
                core.count_sent(&mut sent);
                core.check_retransmit(now);
                core.expire_syncs(now);
                let mut out = core.due_hellos(now);
                out.extend(core.take_batches(now));
                // Anti-entropy keeps running while shutting down: peers whose
                // outbox was dropped are repaired before we go.
                out.extend(core.due_syncs(now));
                out.extend(core.due_rights_requests(now));
                out.extend(core.due_homed(now));
                #[cfg(feature = "metrics")]
                if published_at.is_none_or(|at| now.duration_since(at) >= crate::region::metrics::METRICS_PUBLISH_INTERVAL) {
                    published_at = Some(now);
                    crate::region::metrics::publish(&core);
                }
                drop(core);
                send_all(&transport, out, &mut sent);
            }
        }
        if let Some((_, deadline)) = &shutdown {
            if durable && commit(&shared, &mut storage).await {
                send_all(&transport, std::mem::take(&mut held), &mut sent);
            }
            let core = shared.lock();
            let flushed = core.flushed();
            let late = Instant::now() >= *deadline;
            if flushed || late {
                if !flushed {
                    tracing::warn!(region = %core.name, "shutdown: peers still had unacknowledged writes at the deadline");
                }
                drop(core);
                // The store is closed before shutdown returns: the same
                // directory can be opened again at once.
                drop(storage.take());
                if let Some((done, _)) = shutdown.take() {
                    let _ = done.send(());
                }
                return Exit::Shutdown;
            }
        }
    }
}
