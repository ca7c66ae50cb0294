//! Homed tables inside the engine: forwarding an operation to its key's
//! home and answering forwarded operations. Internal: the public face is
//! [`HomedTable`](crate::region::HomedTable).
//!
//! - **Forwarding.** A write (or a read at the home) made away from the
//!   key's home registers a *forward*: a [`Message::HomedRequest`] with an
//!   id unique to this process. On each engine tick every forward whose
//!   home is connected, greeted and of protocol 4 or later leaves (again
//!   every `ack_timeout` while unanswered, same id); one whose home speaks
//!   an older protocol fails at once. A forward is held, not sent, while
//!   its home is disconnected. The caller waits for the answer up to
//!   `homed_forward_timeout`, then abandons it.
//! - **Serving.** A home applies a forwarded operation as a local write
//!   (one dot, replicated like any other) and answers with its outcome.
//!   It remembers the outcome of every request it applied, refused or
//!   rejected, per requesting replica and incarnation (the connection's,
//!   not a claim), at most [`HOMED_REPLIES_REMEMBERED_MAX`] replies and
//!   [`HOMED_REPLY_BYTES_REMEMBERED_MAX`] bytes: a duplicated or resent
//!   request is answered from memory, never applied twice. A forgotten
//!   reply raises its requester's *floor*: an unknown request id at or
//!   below it is refused ([`HomedRefusal::Expired`]), never applied,
//!   since it may be a late copy of one applied and forgotten.
//!
//! [`HomedRefusal::Expired`]: crate::region::HomedRefusal::Expired

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::core::{Core, Outgoing};
use super::message::{Blob, HomedOutcome, Message};
use crate::clock::ReplicaId;
use crate::region::{
    HOMED_FORWARDS_PENDING_MAX, HOMED_REPLIES_REMEMBERED_MAX, HOMED_REPLY_BYTES_REMEMBERED_MAX,
    HomedRefusal, RegionError, RejectReason,
};

/// The first engine protocol with homed operations.
pub(crate) const HOMED_PROTOCOL: u16 = 4;

/// The first engine protocol whose homes move by epochs: replies carry
/// the key's epoch, refusals name the home a key moved to, and handoffs
/// travel.
pub(crate) const HOMED_EPOCHS_PROTOCOL: u16 = 5;

/// The first engine protocol whose homed replies are read tolerantly: a
/// reply's value carries the bytes of a newer build's fields after its
/// own (see *Schema evolution* on
/// [`HomedValue`](crate::region::HomedValue)); older requesters get the
/// value alone. The same protocol delimits the value in homed states
/// (see [`DELIMITED_CRDT_PROTOCOL`](crate::wire::DELIMITED_CRDT_PROTOCOL)).
pub(crate) const HOMED_TOLERANT_PROTOCOL: u16 = crate::wire::DELIMITED_CRDT_PROTOCOL;

/// What the engine needs of one homed table, whatever its key and value
/// types: built for `K`, `V` when the table is declared.
pub(crate) trait HomedOps: Send + Sync {
    /// Applies (or reads) the encoded operation `op` on `key` of the table
    /// in `slot`, if this region is the key's home by its view (the
    /// placement, or the epoch its state is at): the outcome, and whether
    /// it was a read (reads are not remembered). `protocol`: the
    /// requester's (from 5: an epoch in the answer, `Moved` refusals; from
    /// [`HOMED_TOLERANT_PROTOCOL`]: a value with the unknown bytes it
    /// carries).
    fn serve(
        &self,
        core: &mut Core,
        slot: usize,
        key: &[u8],
        op: &[u8],
        protocol: u16,
    ) -> (HomedOutcome, bool);
    /// Itself, for a later handle to find its placement.
    fn as_any(&self) -> &dyn Any;
}

/// What the caller of a forward gets back from the engine.
pub(crate) enum Answer {
    /// The home answered.
    Outcome(HomedOutcome),
    /// The home's connection speaks this protocol, older than
    /// [`HOMED_PROTOCOL`]: nothing was sent.
    OldProtocol(u16),
}

/// One operation forwarded to its home, until answered or abandoned.
struct Forward {
    home: String,
    table: String,
    key: Blob,
    op: Blob,
    /// The oldest protocol the home's connection may speak for it.
    protocol_min: u16,
    /// When it last left (`None`: never).
    sent_at: Option<Instant>,
    reply: oneshot::Sender<Answer>,
}

/// A requester, as the home knows it: its replica id and incarnation, as
/// its hello on the connection presented them.
type Origin = (ReplicaId, u64);

/// What a home remembers of one requester's requests.
#[derive(Default)]
struct Requester {
    /// Request ids at or below this whose replies were forgotten, or never
    /// seen: refused, never applied.
    floor: u64,
    replies: HashMap<u64, HomedOutcome>,
}

/// The replies a home remembers, oldest first, within their bounds.
#[derive(Default)]
struct Replies {
    requesters: HashMap<Origin, Requester>,
    order: VecDeque<(Origin, u64)>,
    bytes: usize,
}

impl Replies {
    fn recall(&self, origin: Origin, id: u64) -> Option<&HomedOutcome> {
        self.requesters.get(&origin)?.replies.get(&id)
    }

    fn expired(&self, origin: Origin, id: u64) -> bool {
        self.requesters.get(&origin).is_some_and(|r| id <= r.floor)
    }

    fn remember(&mut self, origin: Origin, id: u64, outcome: HomedOutcome) {
        if !self.requesters.contains_key(&origin) {
            // A new incarnation of a replica replaces its former ones:
            // their frames are stale (ignored by the handshake's rules).
            let former: Vec<Origin> = self
                .requesters
                .keys()
                .filter(|(r, _)| *r == origin.0)
                .copied()
                .collect();
            for gone in former {
                self.forget_requester(gone);
            }
        }
        self.bytes += outcome.size();
        let requester = self.requesters.entry(origin).or_default();
        let before = requester.replies.insert(id, outcome);
        debug_assert!(
            before.is_none(),
            "a remembered request is never served again"
        );
        self.order.push_back((origin, id));
        while self.order.len() > HOMED_REPLIES_REMEMBERED_MAX
            || self.bytes > HOMED_REPLY_BYTES_REMEMBERED_MAX
        {
            let Some((origin, id)) = self.order.pop_front() else {
                break;
            };
            if let Some(requester) = self.requesters.get_mut(&origin) {
                if let Some(outcome) = requester.replies.remove(&id) {
                    self.bytes -= outcome.size();
                }
                requester.floor = requester.floor.max(id);
            }
        }
    }

    fn forget_requester(&mut self, origin: Origin) {
        if let Some(requester) = self.requesters.remove(&origin) {
            self.bytes -= requester
                .replies
                .values()
                .map(HomedOutcome::size)
                .sum::<usize>();
            self.order.retain(|(o, _)| *o != origin);
        }
    }
}

/// The homed-table bookkeeping of one region.
#[derive(Default)]
pub(crate) struct Homed {
    /// Homed tables by slot.
    tables: HashMap<usize, Arc<dyn HomedOps>>,
    /// The id of the last forward registered (ids start at 1).
    last_id: u64,
    /// Forwards waiting for their homes, by id (sent in id order).
    pending: BTreeMap<u64, Forward>,
    replies: Replies,
}

impl Core {
    /// Registers the table in `slot` as homed, with `ops`; the first
    /// registration stays (a later one returns it).
    pub(crate) fn declare_homed(
        &mut self,
        slot: usize,
        ops: Arc<dyn HomedOps>,
    ) -> Arc<dyn HomedOps> {
        Arc::clone(self.homed.tables.entry(slot).or_insert(ops))
    }

    /// Registers a forward of `op` on `key` of `table` to `home`, sent
    /// only on a connection of `protocol_min` or later; the answer comes
    /// on `reply`. Returns its id.
    pub(crate) fn forward(
        &mut self,
        (home, table): (&str, &str),
        key: Vec<u8>,
        op: Vec<u8>,
        protocol_min: u16,
        reply: oneshot::Sender<Answer>,
    ) -> Result<u64, RegionError> {
        if self.homed.pending.len() >= HOMED_FORWARDS_PENDING_MAX {
            // Callers that stopped waiting without abandoning (a dropped
            // future) leave closed senders behind: the tick forgets them,
            // and so does a full table before it refuses (not every
            // forward: that walked up to the whole table each time).
            self.homed.pending.retain(|_, f| !f.reply.is_closed());
        }
        if self.homed.pending.len() >= HOMED_FORWARDS_PENDING_MAX {
            return Err(RegionError::TooManyForwards {
                max: HOMED_FORWARDS_PENDING_MAX,
            });
        }
        if let Some(peer) = self.peers.get(home)
            && peer.connected
            && peer.greeted
            && peer.speaks_below(protocol_min, self.config.protocol_version_max)
        {
            return Err(RegionError::HomeProtocol {
                table: table.to_owned(),
                home: home.to_owned(),
                protocol: peer.protocol,
            });
        }
        self.homed.last_id += 1;
        let id = self.homed.last_id;
        self.homed.pending.insert(
            id,
            Forward {
                home: home.to_owned(),
                table: table.to_owned(),
                key: Blob(key),
                op: Blob(op),
                protocol_min,
                sent_at: None,
                reply,
            },
        );
        Ok(id)
    }

    /// The caller of forward `id` stopped waiting: forgets it. Whether it
    /// ever left, or `None` when it was answered meanwhile.
    pub(crate) fn abandon_forward(&mut self, id: u64) -> Option<bool> {
        let forward = self.homed.pending.remove(&id)?;
        Some(forward.sent_at.is_some())
    }

    /// The forwarded requests due now: those never sent, or unanswered for
    /// `ack_timeout`, to homes connected at protocol 4 or later.
    pub(crate) fn due_homed(&mut self, now: Instant) -> Outgoing {
        if self.homed.pending.is_empty() {
            return Vec::new();
        }
        // Nobody waits for these any more (dropped futures): never sent.
        self.homed.pending.retain(|_, f| !f.reply.is_closed());
        let resend_after = self.config.ack_timeout;
        let ours_max = self.config.protocol_version_max;
        let mut out = Vec::new();
        let mut failed: Vec<(u64, u16)> = Vec::new();
        for (&id, forward) in &mut self.homed.pending {
            let Some(peer) = self.peers.get(&forward.home) else {
                continue;
            };
            if !peer.connected
                || !peer.greeted
                || peer.refused.is_some()
                || peer.protocol_refused.is_some()
            {
                continue;
            }
            if peer.protocol < forward.protocol_min {
                // Else its announcement may still come: it waits.
                if peer.speaks_below(forward.protocol_min, ours_max) {
                    failed.push((id, peer.protocol));
                }
                continue;
            }
            if forward
                .sent_at
                .is_some_and(|at| now.duration_since(at) < resend_after)
            {
                continue;
            }
            if forward.sent_at.is_none() {
                self.counters.homed_forwarded += 1;
            } else {
                tracing::debug!(region = %self.name, home = %forward.home, id, "homed: request sent again");
            }
            forward.sent_at = Some(now);
            out.push((
                forward.home.clone(),
                Message::HomedRequest {
                    id,
                    table: forward.table.clone(),
                    key: forward.key.clone(),
                    op: forward.op.clone(),
                },
            ));
        }
        for (id, protocol) in failed {
            if let Some(forward) = self.homed.pending.remove(&id) {
                let _ = forward.reply.send(Answer::OldProtocol(protocol));
            }
        }
        out
    }

    /// Checks that a homed message may arrive from `from`: this build and
    /// the connection speak protocol 4. Rejects the frame otherwise.
    fn homed_allowed(&mut self, from: &str, what: &str) -> bool {
        if self.config.protocol_version_max < HOMED_PROTOCOL {
            // As a build of protocol 3: a frame it cannot read.
            let why = format!("unknown message (protocol 3 has no {what})");
            self.reject(from, RejectReason::Protocol, &why);
            return false;
        }
        let Some(peer) = self.peers.get(from) else {
            return false;
        };
        // A peer whose announcement we missed shows by this frame that it
        // speaks protocol 4 (we do): read it.
        if peer.speaks_below(HOMED_PROTOCOL, self.config.protocol_version_max) {
            let why = format!("a {what} on a connection of protocol {}", peer.protocol);
            self.reject(from, RejectReason::Protocol, &why);
            return false;
        }
        true
    }

    /// A peer forwards an operation to this region as its key's home:
    /// answers it, applying it at most once per request id.
    pub(crate) fn on_homed_request(
        &mut self,
        from: &str,
        id: u64,
        table: &str,
        key: &[u8],
        op: &[u8],
    ) -> Outgoing {
        if !self.homed_allowed(from, "homed request") {
            return Vec::new();
        }
        let peer = &self.peers[from];
        let (Some(replica), Some(incarnation)) = (peer.replica, peer.incarnation) else {
            // Not greeted yet: it sends the request again.
            self.counters.stale_frames += 1;
            return Vec::new();
        };
        let origin = (replica, incarnation);
        let reply = |outcome| vec![(from.to_owned(), Message::HomedReply { id, outcome })];
        if let Some(outcome) = self.homed.replies.recall(origin, id) {
            let outcome = outcome.clone();
            self.counters.homed_duplicates += 1;
            tracing::debug!(region = %self.name, peer = from, id, "homed: duplicate request answered from memory");
            return reply(outcome);
        }
        if self.homed.replies.expired(origin, id) {
            self.counters.homed_refused += 1;
            tracing::warn!(region = %self.name, peer = from, id, "homed: request older than the replies remembered: refused, not applied");
            return reply(HomedOutcome::Refused(HomedRefusal::Expired));
        }
        let protocol = peer.protocol;
        let (outcome, read) = self.serve_homed(table, key, op, protocol);
        match &outcome {
            HomedOutcome::Refused(refusal) => {
                self.counters.homed_refused += 1;
                tracing::info!(region = %self.name, peer = from, table, %refusal, "homed: request refused");
            }
            HomedOutcome::Done { .. }
            | HomedOutcome::DoneAt { .. }
            | HomedOutcome::Rejected { .. } => {
                self.counters.homed_served += 1;
            }
        }
        if !read {
            self.homed.replies.remember(origin, id, outcome.clone());
        }
        reply(outcome)
    }

    /// Serves one forwarded operation: the outcome, and whether it was a
    /// read.
    fn serve_homed(
        &mut self,
        table: &str,
        key: &[u8],
        op: &[u8],
        protocol: u16,
    ) -> (HomedOutcome, bool) {
        let refused = |refusal| (HomedOutcome::Refused(refusal), false);
        let Some(slot) = self.slot_of(table) else {
            return refused(HomedRefusal::NotHomed);
        };
        let Some(ops) = self.homed.tables.get(&slot).cloned() else {
            return refused(HomedRefusal::NotHomed);
        };
        ops.serve(self, slot, key, op, protocol)
    }

    /// A peer this region speaks with at a protocol older than homes that
    /// move (5), if any: its name and protocol. Such a peer would go on
    /// placing a moved key at its former home.
    pub(crate) fn peer_without_epochs(&self) -> Option<(String, u16)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.connected && p.greeted && p.protocol < HOMED_EPOCHS_PROTOCOL)
            .map(|(name, p)| (name.clone(), p.protocol))
            .min()
    }

    /// True when `region` is this region or one of its peers.
    pub(crate) fn knows_region(&self, region: &str) -> bool {
        region == self.name || self.peers.contains_key(region)
    }

    /// The home answers forward `id`: hands the outcome to its caller.
    pub(crate) fn on_homed_reply(&mut self, from: &str, id: u64, outcome: HomedOutcome) {
        if !self.homed_allowed(from, "homed reply") {
            return;
        }
        match self.homed.pending.get(&id) {
            None => {
                // Answered already (a duplicate), or abandoned.
                tracing::debug!(region = %self.name, peer = from, id, "homed: late or duplicate reply ignored");
            }
            Some(forward) if forward.home != from => {
                self.reject(
                    from,
                    RejectReason::ForgedClaim,
                    "a homed reply to a request sent to another region",
                );
            }
            Some(_) => {
                let forward = self.homed.pending.remove(&id).expect("found above");
                let _ = forward.reply.send(Answer::Outcome(outcome));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(n: u8) -> HomedOutcome {
        HomedOutcome::Done {
            written: None,
            value: Some(Blob(vec![n])),
        }
    }

    #[test]
    fn replies_are_recalled_until_forgotten_then_their_ids_are_expired() {
        let mut replies = Replies::default();
        let a = (ReplicaId::new(1), 1);
        for id in 1..=(HOMED_REPLIES_REMEMBERED_MAX as u64 + 2) {
            replies.remember(a, id, done(1));
        }
        assert_eq!(replies.order.len(), HOMED_REPLIES_REMEMBERED_MAX);
        assert!(replies.recall(a, 1).is_none() && replies.expired(a, 1));
        assert!(replies.recall(a, 2).is_none() && replies.expired(a, 2));
        assert!(replies.recall(a, 3).is_some());
        let next = HOMED_REPLIES_REMEMBERED_MAX as u64 + 3;
        assert!(!replies.expired(a, next), "a new id is served");
        assert_eq!(replies.bytes, HOMED_REPLIES_REMEMBERED_MAX * done(1).size());
    }

    #[test]
    fn a_new_incarnation_replaces_the_former_ones() {
        let mut replies = Replies::default();
        let (old, new) = ((ReplicaId::new(1), 1), (ReplicaId::new(1), 2));
        replies.remember(old, 7, done(1));
        replies.remember(new, 1, done(2));
        assert!(replies.recall(old, 7).is_none());
        assert_eq!(replies.recall(new, 1), Some(&done(2)));
        assert_eq!(replies.order.len(), 1);
        assert_eq!(replies.bytes, done(2).size());
    }
}
