//! Replication, inside the engine: the outbox of local writes and its
//! batches, acknowledgements and retransmission, the causal buffer, and
//! anti-entropy. Internal: the public face is [`region`](crate::region).
//!
//! One task per region runs [`run`]: it takes frames and peer events from
//! the [`Transport`], flushes batches when enough writes are waiting or the
//! batch delay has passed, retransmits what was not acknowledged, and
//! starts anti-entropy with peers that (re)connect or are due.

pub(crate) mod core;
pub(crate) mod message;
pub(crate) mod outbox;
pub(crate) mod store;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use self::core::{Core, Outgoing};
use self::message::Message;
use crate::transport::{Transport, TransportEvent};
use crate::wire;

/// What the region handles share with the engine task.
pub(crate) struct Shared {
    pub(crate) core: Mutex<Core>,
    /// Poked by writes when a full batch is waiting.
    pub(crate) wake: Notify,
    /// The applied vector's generation, for session reads to wait on.
    pub(crate) applied: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic in a user closure while writing leaves a state that is
        // still a valid CRDT state: carry on.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, core: &Core) {
        if *self.applied.borrow() != core.generation {
            self.applied.send_replace(core.generation);
        }
    }
}

pub(crate) enum Command {
    /// Flush everything queued, wait (bounded) for acknowledgements, stop.
    Shutdown(oneshot::Sender<()>),
}

fn send_all<T: Transport>(transport: &T, out: Outgoing) {
    for (peer, message) in out {
        match wire::encode(&message) {
            Ok(frame) => transport.send(&peer, frame),
            Err(error) => tracing::error!(%peer, %error, "cannot encode a message"),
        }
    }
}

/// The engine task of one region.
pub(crate) async fn run<T: Transport>(
    shared: Arc<Shared>,
    mut transport: T,
    mut commands: mpsc::Receiver<Command>,
) {
    let config = shared.lock().config.clone();
    let mut tick = tokio::time::interval(config.batch_delay);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown: Option<(oneshot::Sender<()>, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            command = commands.recv(), if shutdown.is_none() => match command {
                Some(Command::Shutdown(done)) => {
                    let now = Instant::now();
                    let out = shared.lock().take_batches(now);
                    send_all(&transport, out);
                    shutdown = Some((done, now + config.shutdown_wait_max));
                }
                None => return,
            },
            event = transport.recv() => {
                let Some(event) = event else { return };
                let now = Instant::now();
                let mut core = shared.lock();
                let out = match event {
                    TransportEvent::Up(peer) => core.peer_up(&peer, now),
                    TransportEvent::Down(peer) => {
                        core.peer_down(&peer, now);
                        Vec::new()
                    }
                    TransportEvent::Frame { from, frame } => match wire::decode::<Message>(&frame) {
                        Ok(message) => core.on_message(&from, message, now),
                        Err(error) => {
                            core.on_undecodable(&from, &error);
                            Vec::new()
                        }
                    },
                };
                shared.publish(&core);
                drop(core);
                send_all(&transport, out);
            }
            () = shared.wake.notified() => {
                let out = shared.lock().take_batches(Instant::now());
                send_all(&transport, out);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let mut core = shared.lock();
                core.check_retransmit(now);
                core.expire_syncs(now);
                let mut out = core.due_hellos(now);
                out.extend(core.take_batches(now));
                // Anti-entropy keeps running while shutting down: peers whose
                // outbox was dropped are repaired before we go.
                out.extend(core.due_syncs(now));
                drop(core);
                send_all(&transport, out);
            }
        }
        if let Some((_, deadline)) = &shutdown {
            let core = shared.lock();
            let flushed = core.flushed();
            let late = Instant::now() >= *deadline;
            if flushed || late {
                if !flushed {
                    tracing::warn!(region = %core.name, "shutdown: peers still had unacknowledged writes at the deadline");
                }
                drop(core);
                if let Some((done, _)) = shutdown.take() {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}
