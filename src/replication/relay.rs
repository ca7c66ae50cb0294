//! Relay: other regions' batches passed on along working links, so causal
//! delivery does not stall on one broken link (issue 10, item 5).
//!
//! When the link a–c is down but a–b and b–c work, c asks b (one peer per
//! origin: the first connected peer of protocol [`RELAY_PROTOCOL`] by name
//! that has not asked c for a's writes itself) to pass on a's writes after what c holds of them
//! ([`Message::RelayWant`], renewed every `ack_timeout` while c's link to
//! a stays down, withdrawn once it is back). b then sends c, from its
//! [`RelayLog`] of a's batches, every batch c has not acknowledged
//! ([`Message::Relay`]), exactly as a batched it (its transaction groups
//! whole, its dependencies named), go-back-N within a window like its own
//! outbox.
//!
//! The rules of Enes et al.'s delta-based synchronization, on a mesh:
//! - **No back-propagation (BP)**: a batch is never passed on to the peer
//!   it came from, nor to its origin (nor asked of it).
//! - **No redundant shipping (RR)**: only on request, only to a peer whose
//!   own link to the origin is down (it asks; we do not guess), only what it
//!   has not acknowledged for that origin, from one relay per origin. With
//!   every link up nothing is relayed. We chose "the target asks when its
//!   link to the origin is down" over "the relay pushes when the target
//!   lags past a bound": only the target knows its link is down, and a
//!   sender-side lag rule would need the target's per-origin progress on
//!   every link (more acknowledgements everywhere) and ship duplicates
//!   whenever the direct link is merely slow.
//!
//! Trust (see DESIGN.md): a relayed batch is data received from an
//! authenticated peer, like an anti-entropy transfer. It is merged, and it
//! raises what we hold of the origin *by the relay's word* (`believed`),
//! never `applied` (first-hand): the origin's own batches confirm it once
//! its link is back. A relayed batch is accepted only for an origin we
//! asked that peer for, of a replica a peer of ours speaks for; a relay's
//! acknowledgements only move what we send it next.
//!
//! Bounded memory: a relay keeps of each origin's batches (moved in after
//! they are applied, not copied) the last [`RELAY_TAIL_BATCHES_MAX`] /
//! [`RELAY_TAIL_BYTES_MAX`] for a peer that may ask, and beyond that only
//! what a peer that asked has not acknowledged, at most the outbox's
//! bounds (`outbox_len_max` writes, `outbox_bytes_max` bytes) per peer:
//! past them the slowest such peer loses its relay (counted in
//! `relay_overflows`) and anti-entropy repairs it.

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;

use super::core::{Buffered, Core, Outgoing, PeerState};
use super::message::{Blob, Message};
use crate::clock::{ReplicaId, Timestamp, VersionVector};
use crate::region::RejectReason;

/// The engine protocol from which on regions relay: a peer of protocol 6
/// or older is never sent a relayed batch nor asked for one.
pub(crate) const RELAY_PROTOCOL: u16 = 7;

/// Batches of each origin a region keeps after applying them, for a peer
/// that may ask for them (its link to the origin just went down), when no
/// peer asked.
pub(crate) const RELAY_TAIL_BATCHES_MAX: usize = 64;

/// Bytes (entries and table names) of each origin's batches kept likewise.
pub(crate) const RELAY_TAIL_BYTES_MAX: usize = 4 << 20;

/// A relay forgets a peer's wish not renewed for this many `ack_timeout`s
/// (the peer renews it every `ack_timeout`).
pub(crate) const RELAY_WANT_EXPIRY_ACK_TIMEOUTS: u32 = 4;

/// Batches a relay may have in flight to one peer for one origin,
/// unacknowledged (as for its own outbox).
const RELAY_INFLIGHT_BATCHES_MAX: u64 = 16;

/// One batch of an origin, applied here and kept for relaying.
pub(crate) struct Logged {
    /// The peer it came from: never sent back there.
    from: String,
    first: u64,
    last: u64,
    deps: VersionVector,
    sent_at: Timestamp,
    tables: Vec<String>,
    entries: Blob,
}

impl Logged {
    fn size(&self) -> usize {
        self.entries.0.len() + self.tables.iter().map(String::len).sum::<usize>()
    }

    fn message(&self, origin: ReplicaId) -> Message {
        Message::Relay {
            origin,
            first: self.first,
            last: self.last,
            deps: self.deps.clone(),
            sent_at: self.sent_at,
            tables: self.tables.clone(),
            entries: self.entries.clone(),
        }
    }
}

/// The batches of one origin kept for relaying, in sequence order (ranges
/// may overlap: a retransmission applied over a part already held).
#[derive(Default)]
pub(crate) struct RelayLog {
    batches: VecDeque<Logged>,
    bytes: usize,
}

impl RelayLog {
    /// Writes it spans.
    fn writes(&self) -> u64 {
        match (self.batches.front(), self.batches.back()) {
            (Some(f), Some(b)) => b.last + 1 - f.first,
            _ => 0,
        }
    }

    fn pop_front(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            self.bytes -= b.size();
        }
    }
}

/// Where relaying one origin's writes to one peer stands.
pub(crate) struct RelayCursor {
    /// The origin's writes the peer holds, as it says (its wish, its
    /// acknowledgements).
    acked: u64,
    /// Sent to it (acknowledged or not).
    sent: u64,
    /// When `acked` last moved, or a send started from a fully acked state.
    progress_at: Instant,
    /// When its wish was last renewed.
    wanted_at: Instant,
}

/// What a region keeps for relaying: logs, the peers that asked, and what
/// it asked of its peers.
#[derive(Default)]
pub(crate) struct Relay {
    logs: BTreeMap<ReplicaId, RelayLog>,
    /// Per peer that asked, per origin.
    targets: BTreeMap<String, BTreeMap<ReplicaId, RelayCursor>>,
    /// Origins whose writes we asked a peer to pass on: the peer, and when
    /// we last asked.
    asked: BTreeMap<ReplicaId, (String, Instant)>,
}

impl Relay {
    /// Bytes held in logs (for stats and tests).
    pub(crate) fn bytes(&self) -> usize {
        self.logs.values().map(|l| l.bytes).sum()
    }

    /// Whether we asked `peer` to pass on `origin`'s writes.
    pub(crate) fn asked_of(&self, origin: ReplicaId, peer: &str) -> bool {
        self.asked.get(&origin).is_some_and(|(p, _)| p == peer)
    }

    /// The lowest write of `origin` a peer that asked still lacks, if any
    /// asked.
    fn needed_from(&self, origin: ReplicaId) -> Option<u64> {
        self.targets
            .values()
            .filter_map(|t| t.get(&origin))
            .map(|c| c.acked + 1)
            .min()
    }

    /// Drops what no peer that asked lacks, down to the tail.
    fn trim(&mut self, origin: ReplicaId) {
        let needed = self.needed_from(origin);
        let Some(log) = self.logs.get_mut(&origin) else {
            return;
        };
        while let Some(front) = log.batches.front() {
            let over_tail =
                log.batches.len() > RELAY_TAIL_BATCHES_MAX || log.bytes > RELAY_TAIL_BYTES_MAX;
            if !over_tail || needed.is_some_and(|n| front.last >= n) {
                break;
            }
            log.pop_front();
        }
    }
}

/// A peer we may ask for (or send) relayed batches: connected, greeted, of
/// protocol [`RELAY_PROTOCOL`] or later.
fn relays(peer: &PeerState) -> bool {
    peer.connected && peer.greeted && peer.protocol >= RELAY_PROTOCOL
}

impl Core {
    /// What we hold of `origin`'s writes, first-hand or by a peer's word:
    /// what a relayed batch continues and is deduplicated by.
    pub(crate) fn relay_held(&self, origin: ReplicaId) -> u64 {
        self.applied.get(origin).max(self.believed.get(origin))
    }

    /// A [`Message::Relay`] or [`Message::RelayWant`] of a greeted peer.
    pub(crate) fn on_relay_message(
        &mut self,
        from: &str,
        message: Message,
        now: Instant,
    ) -> Outgoing {
        match message {
            Message::Relay {
                origin,
                first,
                last,
                deps,
                sent_at,
                tables,
                entries,
            } => {
                let batch = Buffered {
                    from: from.to_owned(),
                    origin,
                    first,
                    last,
                    deps,
                    tables,
                    entries,
                    arrived: now,
                    sent_at,
                    relayed: true,
                };
                self.on_relay(from, batch, sent_at)
            }
            Message::RelayWant { origin, held, want } => {
                self.on_relay_want(from, origin, held, want, now);
                Vec::new()
            }
            _ => unreachable!("only relay messages are passed here"),
        }
    }

    // ----- the target side ------------------------------------------------

    /// A relayed batch from `from`: checked, then applied in causal order
    /// (or buffered) like a batch, as data by `from`'s word, and
    /// acknowledged to `from` with what we now hold of its origin.
    pub(crate) fn on_relay(&mut self, from: &str, batch: Buffered, sent_at: Timestamp) -> Outgoing {
        if !self.admit_relayed(from, &batch) {
            return Vec::new();
        }
        let origin = batch.origin;
        self.counters.relayed_batches_received += 1;
        // Stamps of what we merge are below our clock from now on; the
        // offset recorded for `from` is its own clock's, not the origin's.
        self.hlc.observe(sent_at);
        if batch.last > self.relay_held(origin) {
            self.apply_or_buffer(batch);
        }
        vec![(
            from.to_owned(),
            Message::Ack {
                origin,
                applied: self.relay_held(origin),
            },
        )]
    }

    /// Whether a relayed batch from `from` may be taken in: well formed
    /// (as a batch), of an origin that is neither us nor the sender, that a peer of ours speaks
    /// for, and that we asked `from` to pass on. An unsolicited one (a late
    /// frame after we withdrew the wish) is ignored, not refused.
    fn admit_relayed(&mut self, from: &str, batch: &Buffered) -> bool {
        if !self.check_batch_frame(from, batch) {
            return false;
        }
        let origin = batch.origin;
        let Some(peer) = self.peers.get(from) else {
            return false;
        };
        // (Its protocol is not checked: a peer that sends one speaks it,
        // though its announcement may not have reached us yet.)
        if peer.replica == Some(origin) {
            self.reject(
                from,
                RejectReason::Malformed,
                "relayed batch of the sender's own writes",
            );
            return false;
        }
        let spoken_for = self
            .peers
            .iter()
            .any(|(name, p)| name != from && p.replica == Some(origin));
        if !spoken_for || !self.relay.asked_of(origin, from) {
            tracing::debug!(region = %self.name, peer = from, %origin, "ignored a relayed batch not asked for");
            self.counters.stale_frames += 1;
            return false;
        }
        true
    }

    /// Our wishes for relayed batches: for every origin whose peer is
    /// known and disconnected, ask one peer that relays (renewed every
    /// `ack_timeout`); withdraw the wish once the origin is connected again
    /// or the relay went away.
    pub(crate) fn due_relay_wants(&mut self, now: Instant) -> Outgoing {
        let renew = self.config.ack_timeout;
        let cut: Vec<ReplicaId> = self
            .peers
            .iter()
            .filter(|(name, p)| {
                p.known && !p.connected && !self.retired.contains_key(name.as_str())
            })
            .filter_map(|(_, p)| p.replica)
            .collect();
        let mut out = Vec::new();
        // Withdrawn: the origin is back (or no longer cut), or the relay
        // cannot relay any more (asked again below, maybe of another).
        let asked: Vec<(ReplicaId, String)> = self
            .relay
            .asked
            .iter()
            .map(|(r, (p, _))| (*r, p.clone()))
            .collect();
        for (origin, peer) in asked {
            let relay_ok =
                self.peers.get(&peer).is_some_and(relays) && !self.cut_from(&peer, origin);
            if cut.contains(&origin) && relay_ok {
                continue;
            }
            self.relay.asked.remove(&origin);
            tracing::info!(region = %self.name, relay = %peer, %origin, "relay stop: no longer asking the peer for the origin's writes");
            if relay_ok {
                out.push((peer, self.relay_want(origin, false)));
            }
        }
        for origin in cut {
            match self.relay.asked.get(&origin) {
                Some((peer, at)) if now.duration_since(*at) >= renew => {
                    let peer = peer.clone();
                    self.relay.asked.insert(origin, (peer.clone(), now));
                    out.push((peer, self.relay_want(origin, true)));
                }
                Some(_) => {}
                None => {
                    let Some(peer) = self.choose_relay(origin) else {
                        continue;
                    };
                    tracing::info!(region = %self.name, relay = %peer, %origin, held = self.relay_held(origin), "relay start: the link to the origin is down; asking the peer for its writes");
                    self.relay.asked.insert(origin, (peer.clone(), now));
                    out.push((peer, self.relay_want(origin, true)));
                }
            }
        }
        out
    }

    fn relay_want(&self, origin: ReplicaId, want: bool) -> Message {
        Message::RelayWant {
            origin,
            held: self.relay_held(origin),
            want,
        }
    }

    /// The peer to ask for `origin`'s writes: the first by name that
    /// relays, is not the origin, and has not asked us for them itself (its
    /// own link to the origin is down: two regions cut from it would
    /// otherwise ask each other).
    fn choose_relay(&self, origin: ReplicaId) -> Option<String> {
        self.peers
            .iter()
            .find(|(name, p)| {
                relays(p) && p.replica.is_some_and(|r| r != origin) && !self.cut_from(name, origin)
            })
            .map(|(name, _)| name.clone())
    }

    /// Whether `peer` asked us to relay `origin`'s writes (its link to the
    /// origin is down).
    fn cut_from(&self, peer: &str, origin: ReplicaId) -> bool {
        self.relay
            .targets
            .get(peer)
            .is_some_and(|t| t.contains_key(&origin))
    }

    // ----- the relay side -------------------------------------------------

    /// Keeps `batch` (just applied, of a sender of protocol
    /// [`RELAY_PROTOCOL`] or later) for relaying, when two or more peers
    /// relay (with one there is nobody to pass it on to).
    pub(crate) fn log_for_relay(&mut self, batch: Buffered) {
        let relaying_peers = self.peers.values().filter(|p| relays(p)).count();
        let sender_relays = self
            .peers
            .get(&batch.from)
            .is_some_and(|p| p.protocol >= RELAY_PROTOCOL);
        if relaying_peers < 2 || !sender_relays {
            return;
        }
        let origin = batch.origin;
        let log = self.relay.logs.entry(origin).or_default();
        if log.batches.back().is_some_and(|b| b.last >= batch.last) {
            return;
        }
        let logged = Logged {
            from: batch.from,
            first: batch.first,
            last: batch.last,
            deps: batch.deps,
            sent_at: batch.sent_at,
            tables: batch.tables,
            entries: batch.entries,
        };
        log.bytes += logged.size();
        log.batches.push_back(logged);
        self.relay.trim(origin);
        self.bound_relay_log(origin);
    }

    /// A relay log over the outbox's bounds: the peer furthest behind on
    /// it loses its relay (anti-entropy repairs it), until it fits.
    fn bound_relay_log(&mut self, origin: ReplicaId) {
        loop {
            let Some(log) = self.relay.logs.get(&origin) else {
                return;
            };
            if log.writes() <= self.config.outbox_len_max as u64
                && log.bytes <= self.config.outbox_bytes_max
            {
                return;
            }
            let slowest = self
                .relay
                .targets
                .iter()
                .filter_map(|(name, t)| t.get(&origin).map(|c| (name.clone(), c.acked)))
                .min_by_key(|(_, acked)| *acked)
                .map(|(name, _)| name);
            let Some(name) = slowest else {
                // Nobody asked: the tail alone is over (one huge batch).
                self.relay.logs.get_mut(&origin).expect("above").pop_front();
                continue;
            };
            if let Some(t) = self.relay.targets.get_mut(&name) {
                t.remove(&origin);
            }
            self.counters.relay_overflows += 1;
            tracing::warn!(region = %self.name, peer = %name, %origin, "relay stop: the peer's relay backlog is over the outbox bounds; anti-entropy repairs it");
            self.relay.trim(origin);
        }
    }

    /// A peer's wish for (or against) relayed batches of `origin`.
    pub(crate) fn on_relay_want(
        &mut self,
        from: &str,
        origin: ReplicaId,
        held: u64,
        want: bool,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get(from) else {
            return;
        };
        // (Its protocol is not checked, as for a relayed batch: we relay
        // only once we know it speaks protocol 7, see `take_relays`.)
        if origin == self.replica || peer.replica == Some(origin) {
            // Our own writes go by our outbox; a peer's by its own.
            self.reject(
                from,
                RejectReason::Malformed,
                "relay wish for our own writes, or for the sender's",
            );
            return;
        }
        if want && self.peer_of(origin).is_none() {
            // Only origins a peer of ours speaks for are relayed (what a
            // peer may make us keep is bounded by our peers).
            tracing::debug!(region = %self.name, peer = from, %origin, "ignored a relay wish for a replica no peer of ours speaks for");
            self.counters.stale_frames += 1;
            return;
        }
        let targets = self.relay.targets.entry(from.to_owned()).or_default();
        if !want {
            if targets.remove(&origin).is_some() {
                tracing::info!(region = %self.name, peer = from, %origin, "relay stop: the peer hears the origin again");
            }
            return;
        }
        match targets.get_mut(&origin) {
            Some(cursor) => {
                cursor.wanted_at = now;
                if held > cursor.acked {
                    cursor.acked = held;
                    cursor.sent = cursor.sent.max(held);
                    cursor.progress_at = now;
                }
            }
            None => {
                tracing::info!(region = %self.name, peer = from, %origin, held, "relay start: passing on the origin's writes to the peer");
                targets.insert(
                    origin,
                    RelayCursor {
                        acked: held,
                        sent: held,
                        progress_at: now,
                        wanted_at: now,
                    },
                );
            }
        }
        self.relay.trim(origin);
    }

    /// A peer acknowledged `origin`'s writes up to `applied` (not ours):
    /// moves what we relay it next, if it asked.
    pub(crate) fn on_relay_ack(
        &mut self,
        from: &str,
        origin: ReplicaId,
        applied: u64,
        now: Instant,
    ) {
        let Some(cursor) = self
            .relay
            .targets
            .get_mut(from)
            .and_then(|t| t.get_mut(&origin))
        else {
            return;
        };
        if applied > cursor.acked {
            cursor.acked = applied;
            cursor.sent = cursor.sent.max(applied);
            cursor.progress_at = now;
            self.relay.trim(origin);
        }
    }

    /// Relayed batches due: to every peer that asked (and still relays,
    /// its wish renewed), what it has not acknowledged, within the window;
    /// sent again after `ack_timeout` without progress.
    pub(crate) fn take_relays(&mut self, now: Instant) -> Outgoing {
        if self.relay.targets.is_empty() {
            return Vec::new();
        }
        let expiry = self.config.ack_timeout * RELAY_WANT_EXPIRY_ACK_TIMEOUTS;
        let window = (self.config.batch_len_max as u64).saturating_mul(RELAY_INFLIGHT_BATCHES_MAX);
        let (ack_timeout, name) = (self.config.ack_timeout, self.name.clone());
        let mut out = Vec::new();
        let peers = &self.peers;
        self.relay.targets.retain(|target, cursors| {
            let Some(peer) = peers.get(target).filter(|p| relays(p)) else {
                return false;
            };
            cursors.retain(|origin, c| {
                let fresh = now.duration_since(c.wanted_at) < expiry;
                if !fresh {
                    tracing::info!(region = %name, peer = %target, %origin, "relay stop: the peer's wish expired");
                }
                fresh
            });
            for (origin, cursor) in cursors.iter_mut() {
                // BP: never to the origin.
                if peer.replica == Some(*origin) {
                    continue;
                }
                if cursor.acked < cursor.sent
                    && now.duration_since(cursor.progress_at) >= ack_timeout
                {
                    cursor.sent = cursor.acked;
                    cursor.progress_at = now;
                }
                let Some(log) = self.relay.logs.get(origin) else {
                    continue;
                };
                ship_from_log(log, *origin, target, cursor, window, now, &mut out);
            }
            !cursors.is_empty()
        });
        self.counters.relayed_batches_sent += out.len() as u64;
        out
    }
}

/// Pushes to `out` the batches of `log` after `cursor.sent` for `target`,
/// within `window` writes unacknowledged; skips (and counts as sent) the
/// batches that came from `target` (no back-propagation); stops at a gap
/// (writes the log no longer holds: anti-entropy's).
fn ship_from_log(
    log: &RelayLog,
    origin: ReplicaId,
    target: &str,
    cursor: &mut RelayCursor,
    window: u64,
    now: Instant,
    out: &mut Outgoing,
) {
    for batch in &log.batches {
        if batch.last <= cursor.sent {
            continue;
        }
        if batch.first > cursor.sent + 1 || cursor.sent.saturating_sub(cursor.acked) >= window {
            break;
        }
        if batch.from == target {
            cursor.sent = batch.last;
            continue;
        }
        if cursor.acked >= cursor.sent {
            cursor.progress_at = now;
        }
        debug_assert!(batch.first <= cursor.sent + 1 && batch.last > cursor.sent);
        cursor.sent = batch.last;
        out.push((target.to_owned(), batch.message(origin)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(from: &str, first: u64, last: u64) -> Logged {
        Logged {
            from: from.to_owned(),
            first,
            last,
            deps: VersionVector::new(),
            sent_at: Timestamp::new(1, 0),
            tables: vec!["t".to_owned()],
            entries: Blob(vec![0; 8]),
        }
    }

    fn log_of(batches: impl IntoIterator<Item = Logged>) -> RelayLog {
        let mut log = RelayLog::default();
        for b in batches {
            log.bytes += b.size();
            log.batches.push_back(b);
        }
        log
    }

    fn cursor(acked: u64, now: Instant) -> RelayCursor {
        RelayCursor {
            acked,
            sent: acked,
            progress_at: now,
            wanted_at: now,
        }
    }

    /// Guards against back-propagation: a batch that came from the peer
    /// asking is counted as sent to it, never sent back.
    #[test]
    fn a_batch_is_never_sent_back_to_the_peer_it_came_from() {
        let now = Instant::now();
        let log = log_of([logged("a", 1, 2), logged("c", 3, 4), logged("a", 5, 5)]);
        let mut c = cursor(0, now);
        let mut out = Vec::new();
        ship_from_log(&log, ReplicaId::new(1), "c", &mut c, 64, now, &mut out);
        let sent: Vec<(u64, u64)> = out
            .iter()
            .map(|(to, m)| match m {
                Message::Relay { first, last, .. } if to == "c" => (*first, *last),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sent, vec![(1, 2), (5, 5)]);
        assert_eq!(c.sent, 5);
        // What the peer acknowledged is not sent again; a gap stops it.
        let mut c = cursor(2, now);
        let mut out = Vec::new();
        let gap = log_of([logged("a", 1, 2), logged("a", 6, 7)]);
        ship_from_log(&gap, ReplicaId::new(1), "c", &mut c, 64, now, &mut out);
        assert!(out.is_empty(), "writes 3 to 5 are not in the log");
    }

    /// Within the window of unacknowledged writes only.
    #[test]
    fn relaying_stops_at_the_window() {
        let now = Instant::now();
        let log = log_of((1..=10).map(|i| logged("a", i, i)));
        let mut c = cursor(0, now);
        let mut out = Vec::new();
        ship_from_log(&log, ReplicaId::new(1), "c", &mut c, 3, now, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(c.sent, 3);
    }

    /// Guards against an unbounded relay log: with nobody asking, only the
    /// tail is kept; what a peer that asked lacks is kept beyond it.
    #[test]
    fn the_log_keeps_the_tail_and_what_peers_that_asked_lack() {
        let now = Instant::now();
        let origin = ReplicaId::new(1);
        let mut relay = Relay::default();
        let n = RELAY_TAIL_BATCHES_MAX as u64 * 2;
        relay
            .logs
            .insert(origin, log_of((1..=n).map(|i| logged("a", i, i))));
        relay
            .targets
            .entry("c".to_owned())
            .or_default()
            .insert(origin, cursor(10, now));
        relay.trim(origin);
        assert_eq!(
            relay.logs[&origin].batches.front().map(|b| b.first),
            Some(11)
        );
        relay.targets.clear();
        relay.trim(origin);
        assert_eq!(relay.logs[&origin].batches.len(), RELAY_TAIL_BATCHES_MAX);
        assert_eq!(relay.logs[&origin].batches.back().map(|b| b.last), Some(n));
        assert_eq!(
            relay.bytes(),
            RELAY_TAIL_BATCHES_MAX * logged("a", 1, 1).size()
        );
    }
}
