//! [`Forger`]: a peer that lies (its page is the type's, since this
//! module is private).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::ReplicaId;
use crate::replication::message::Message;
use crate::transport::{Transport, TransportEvent};
use crate::wire;

/// One lie a [`Forger`] tells in every frame it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// Every applied vector the region sends (its hellos, its anti-entropy
    /// requests and transfers) names `count` writes of `of`.
    ClaimWrites {
        /// The region lied about.
        of: ReplicaId,
        /// The writes claimed applied.
        count: u64,
    },
    /// Every acknowledgement the region sends claims `count` writes of the
    /// origin applied.
    AckWrites {
        /// The writes claimed applied.
        count: u64,
    },
    /// Every batch the region sends depends on `count` writes of `of`.
    DependOn {
        /// The region the batches claim to depend on.
        of: ReplicaId,
        /// The writes of it they depend on.
        count: u64,
    },
    /// Every hello the region sends names `count` more replicas in its
    /// applied vector: made-up ids from 2⁶³ up, one write each.
    PadHello {
        /// The replicas added.
        count: usize,
    },
}

/// The first made-up replica id of [`Forgery::PadHello`].
const PADDED_REPLICAS_FROM: u64 = 1 << 63;

/// A peer that lies: a [`Transport`] adaptor that rewrites what the region
/// behind it claims, for testing that honest regions do not believe it.
///
/// The region behind a [`Forger`] runs the real engine; the forger rewrites
/// its outgoing frames on the way out, so the lie is as well-formed as any
/// frame the engine sends (the peers see an authenticated region with a
/// bug, not line noise). What can be forged is listed in [`Forgery`].
///
/// ```
/// use archipelago::clock::ReplicaId;
/// use archipelago::testing::{Forger, Forgery};
/// use archipelago::transport::ChannelNetwork;
///
/// let net = ChannelNetwork::new(7);
/// let liar = Forger::new(
///     net.endpoint("liar"),
///     vec![Forgery::ClaimWrites { of: ReplicaId::new(1), count: u64::MAX }],
/// );
/// assert_eq!(liar.frames_forged(), 0); // nothing sent yet
/// ```
pub struct Forger<T> {
    inner: T,
    forgeries: Vec<Forgery>,
    forged: Arc<AtomicU64>,
}

impl<T: Transport> Forger<T> {
    /// Wraps `inner`: every frame sent through it tells every lie of
    /// `forgeries` that applies to it.
    pub fn new(inner: T, forgeries: Vec<Forgery>) -> Self {
        Forger {
            inner,
            forgeries,
            forged: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Frames rewritten so far.
    pub fn frames_forged(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }

    /// A counter of frames rewritten that stays readable after the forger
    /// moved into a region.
    pub fn forged_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.forged)
    }

    /// `frame` with every lie told, or `None` when none applies.
    fn forge(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let mut message: Message = crate::replication::message::decode_frame(frame).ok()?;
        let mut changed = false;
        for forgery in &self.forgeries {
            match (forgery, &mut message) {
                (
                    Forgery::ClaimWrites { of, count },
                    Message::Hello { applied, .. } | Message::SyncRequest { applied, .. },
                ) => {
                    applied.raise(*of, *count);
                    changed = true;
                }
                (
                    Forgery::ClaimWrites { of, count },
                    Message::SyncStates {
                        applied: Some(applied),
                        ..
                    },
                ) => {
                    applied.raise(*of, *count);
                    changed = true;
                }
                (Forgery::ClaimWrites { of, count }, Message::SyncStatesGrouped(chunk)) => {
                    if let Some(applied) = &mut chunk.applied {
                        applied.raise(*of, *count);
                        changed = true;
                    }
                }
                (Forgery::AckWrites { count }, Message::Ack { applied, .. }) => {
                    *applied = *count;
                    changed = true;
                }
                (Forgery::DependOn { of, count }, Message::Batch { deps, .. }) => {
                    deps.raise(*of, *count);
                    changed = true;
                }
                (Forgery::PadHello { count }, Message::Hello { applied, .. }) => {
                    for i in 0..*count as u64 {
                        applied.raise(ReplicaId::new(PADDED_REPLICAS_FROM + i), 1);
                    }
                    changed = true;
                }
                _ => {}
            }
        }
        changed.then(|| wire::encode(&message).ok()).flatten()
    }
}

impl<T: Transport> Transport for Forger<T> {
    fn local(&self) -> &str {
        self.inner.local()
    }

    fn peers(&self) -> Vec<String> {
        self.inner.peers()
    }

    fn send(&self, peer: &str, frame: Vec<u8>) {
        match self.forge(&frame) {
            Some(forged) => {
                self.forged.fetch_add(1, Ordering::Relaxed);
                self.inner.send(peer, forged);
            }
            None => self.inner.send(peer, frame),
        }
    }

    fn recv(&mut self) -> impl std::future::Future<Output = Option<TransportEvent>> + Send {
        self.inner.recv()
    }
}
