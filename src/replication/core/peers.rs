//! Peers coming and going: the handshake (hellos, and what a new
//! incarnation resets), retiring a peer for good.

use super::*;

impl Core {
    /// Removes the peer `name` for good (see [`Region::retire_peer`]):
    /// forgets its cursor (the log no longer waits for it), its exchanges
    /// and its binding, and remembers its replica ids. Returns them.
    ///
    /// [`Region::retire_peer`]: crate::region::Region::retire_peer
    pub(crate) fn retire_peer(&mut self, name: &str) -> Vec<ReplicaId> {
        let mut ids = self.retired.remove(name).unwrap_or_default();
        if let Some(peer) = self.peers.remove(name) {
            ids.extend(peer.former);
            ids.extend(peer.replica);
        }
        ids.sort_unstable();
        ids.dedup();
        self.syncs.remove(name);
        self.answered.remove(name);
        self.answered_last.remove(name);
        self.answering.remove(name);
        self.sync_inbox.retain(|(peer, _, _), _| peer != name);
        self.retired.insert(name.to_owned(), ids.clone());
        if let Some(durable) = &mut self.durable {
            durable.retired = true;
            durable.cursors = true;
        }
        tracing::warn!(region = %self.name, peer = name, replicas = ?ids, "peer retired for good");
        self.truncate_log();
        ids
    }

    /// Replica ids of retired peers.
    pub(crate) fn retired_ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.retired.values().flatten().copied()
    }

    pub(super) fn peer(&mut self, name: &str, now: Instant) -> &mut PeerState {
        if !self.peers.contains_key(name) {
            self.peers.insert(name.to_owned(), PeerState::new(now));
        }
        self.peers.get_mut(name).expect("inserted above")
    }

    pub(crate) fn peer_up(&mut self, name: &str, now: Instant) -> Outgoing {
        if self.retired.contains_key(name) {
            self.retired_refused.remove(name);
            return Vec::new();
        }
        // What it sent on its last connection is void.
        self.forget_held_for_fold(name);
        let peer = self.peer(name, now);
        let was = peer.connected;
        peer.connected = true;
        peer.sent = peer.acked; // resend what was not acknowledged
        peer.push_pending = None; // a push in flight may be lost
        peer.progress_at = now;
        peer.last_contact = Some(now);
        // A new connection: the peer greets us again (it may be a new
        // incarnation), and a refusal is reconsidered at its hello.
        peer.greeted = false;
        peer.refused = None;
        peer.protocol_refused = None;
        peer.protocol = PROTOCOL_VERSION_MIN;
        peer.protocol_heard = false;
        peer.protocol_announced = None;
        peer.protocol_reannounced = 0;
        if !was {
            tracing::info!(region = %self.name, peer = name, "peer connected");
        }
        let known = self.peers.get(name).is_some_and(|p| p.known);
        if !known {
            // A peer that does not greet: it may have restarted, numbering
            // its exchanges anew. A greeting peer's restart shows in its
            // hello, which forgets its exchanges then; a request repeated
            // across a reconnect of the same process stays answered once.
            self.answered_last.remove(name);
        }
        // The hello leaves first: a peer that knew us ignores what we send
        // before it (it may come from an incarnation it is about to reset).
        let mut out = self.greeting(name, now);
        // A first contact is repaired by anti-entropy (one side starts the
        // exchange, which repairs both: the one with the smaller name, or
        // the one that knows the other needs repair). A peer known before
        // is caught up by batches from the outboxes; the hellos say when
        // more is needed.
        if !known && self.initiates_sync(name) {
            out.extend(self.start_sync(name, now));
        }
        out
    }

    /// What opens a conversation with `peer`: the protocol versions we
    /// speak (from protocol 2 on), then our hello.
    pub(super) fn greeting(&mut self, peer: &str, now: Instant) -> Outgoing {
        let mut out = Vec::with_capacity(2);
        let max = self.config.protocol_version_max;
        if max >= 2 {
            let min = PROTOCOL_VERSION_MIN;
            self.peer(peer, now).protocol_announced = Some(now);
            out.push((peer.to_owned(), Message::Protocol { min, max }));
        }
        out.push(self.hello(peer, false, now));
        out
    }

    /// Our protocol versions again to peers that greeted us on this
    /// connection without announcing theirs: their announcement was lost
    /// (or overtaken by their hello and not arrived yet), or they speak
    /// protocol 1. A peer answers a repeated announcement with its own
    /// ([`on_protocol`](Core::on_protocol)), so a lost one does not leave
    /// the connection at protocol 1 (no rights requests, no homed
    /// operations) until it reconnects. One per `ack_timeout`, at most
    /// [`PROTOCOL_ANNOUNCEMENTS_MAX`] per connection: a peer of protocol 1
    /// rejects each.
    pub(crate) fn due_announcements(&mut self, now: Instant) -> Outgoing {
        let max = self.config.protocol_version_max;
        if max < 2 {
            return Vec::new();
        }
        let timeout = self.config.ack_timeout;
        let mut out = Vec::new();
        for (name, p) in &mut self.peers {
            if p.connected
                && p.greeted
                && !p.protocol_heard
                && p.protocol_reannounced < PROTOCOL_ANNOUNCEMENTS_MAX
                && p.protocol_announced
                    .is_none_or(|t| now.duration_since(t) >= timeout)
            {
                p.protocol_reannounced += 1;
                p.protocol_announced = Some(now);
                tracing::debug!(region = %self.name, peer = %name, attempt = p.protocol_reannounced, "protocol announced again: the peer greeted without announcing");
                let min = PROTOCOL_VERSION_MIN;
                out.push((name.clone(), Message::Protocol { min, max }));
            }
        }
        out
    }

    /// A peer's announcement of the protocol versions it speaks: refused
    /// when the range does not meet ours (nothing it sends is read until it
    /// reconnects), else the newest both speak is the connection's.
    /// A repeated announcement on the same connection means the peer did
    /// not hear ours: it is answered with ours, at most once per
    /// `ack_timeout` (so duplicated announcements do not echo forever).
    pub(super) fn on_protocol(&mut self, from: &str, min: u16, max: u16, now: Instant) -> Outgoing {
        let ours_max = self.config.protocol_version_max;
        if ours_max < 2 {
            // As a build of protocol 1: a frame it cannot read.
            self.reject(
                from,
                RejectReason::Protocol,
                "unknown message (protocol 1 announces no version)",
            );
            return Vec::new();
        }
        let timeout = self.config.ack_timeout;
        let name = self.name.clone();
        let peer = self.peer(from, now);
        if min > max || max < PROTOCOL_VERSION_MIN || min > ours_max {
            let refusal = HandshakeRefusal::Protocol {
                ours: (PROTOCOL_VERSION_MIN, ours_max),
                theirs: (min, max),
            };
            if peer.protocol_refused.as_ref() != Some(&refusal) {
                tracing::warn!(region = %name, peer = from, %refusal, "rejected input: handshake refused");
                peer.protocol_refused = Some(refusal);
                peer.greeted = false;
                self.counters.refused_handshakes += 1;
            }
            return Vec::new();
        }
        peer.protocol = max.min(ours_max);
        let repeated = std::mem::replace(&mut peer.protocol_heard, true);
        tracing::debug!(region = %name, peer = from, protocol = peer.protocol, "protocol agreed");
        let answer = repeated
            && peer
                .protocol_announced
                .is_none_or(|t| now.duration_since(t) >= timeout);
        if answer {
            peer.protocol_announced = Some(now);
        }
        // A peer that can now be asked for rights.
        self.rights.peers_changed();
        if answer {
            tracing::debug!(region = %name, peer = from, "protocol announced again: the peer did not hear ours");
            let min = PROTOCOL_VERSION_MIN;
            return vec![(from.to_owned(), Message::Protocol { min, max: ours_max })];
        }
        Vec::new()
    }

    /// Our hello to `peer`.
    pub(super) fn hello(&mut self, peer: &str, reply: bool, now: Instant) -> (String, Message) {
        // With storage, only what a crash cannot take back.
        let seq = self.sendable();
        let state = self.peer(peer, now);
        if !reply {
            state.hello_at = Some(now);
        }
        (
            peer.to_owned(),
            Message::Hello {
                replica: self.replica,
                incarnation: self.incarnation,
                seq,
                applied: self
                    .durable
                    .as_ref()
                    .map_or_else(|| self.applied.clone(), |d| d.applied.clone()),
                reply,
            },
        )
    }

    /// Our hello again to connected peers that have not greeted us within
    /// `ack_timeout` of the last one (it or their answer was lost).
    pub(crate) fn due_hellos(&mut self, now: Instant) -> Outgoing {
        let timeout = self.config.ack_timeout;
        let due: Vec<String> = self
            .peers
            .iter()
            // A refused peer is asked again too: its answer is checked anew
            // (a refusal for regressed writes may come from a hello that
            // was overtaken by the peer's later writes).
            .filter(|(_, p)| {
                p.connected
                    && !p.greeted
                    && p.hello_at.is_none_or(|t| now.duration_since(t) >= timeout)
            })
            .map(|(name, _)| name.clone())
            .collect();
        due.into_iter()
            .flat_map(|name| self.greeting(&name, now))
            .collect()
    }

    /// Why a hello presenting `replica`, `incarnation` and `seq` from
    /// `from` must be refused, if it must.
    pub(super) fn check_hello(
        &self,
        from: &str,
        replica: ReplicaId,
        incarnation: u64,
        seq: u64,
    ) -> Option<HandshakeRefusal> {
        if replica == self.replica {
            return Some(HandshakeRefusal::OurReplicaId { replica });
        }
        if let Some((holder, _)) = self.peers.iter().find(|(name, p)| {
            name.as_str() != from && (p.replica == Some(replica) || p.former.contains(&replica))
        }) {
            return Some(HandshakeRefusal::IdOfAnotherPeer {
                replica,
                holder: holder.clone(),
            });
        }
        if let Some((holder, _)) = self.retired.iter().find(|(_, ids)| ids.contains(&replica)) {
            return Some(HandshakeRefusal::IdOfAnotherPeer {
                replica,
                holder: holder.clone(),
            });
        }
        if let Some(peer) = self.peers.get(from) {
            if peer.former.contains(&replica) {
                // An earlier incarnation of this peer, still running.
                return Some(HandshakeRefusal::StaleIncarnation {
                    replica,
                    known: peer.incarnation.unwrap_or(0),
                    presented: incarnation,
                });
            }
            if let (Some(bound), Some(known)) = (peer.replica, peer.incarnation)
                && bound == replica
                && incarnation < known
            {
                return Some(HandshakeRefusal::StaleIncarnation {
                    replica,
                    known,
                    presented: incarnation,
                });
            }
        }
        // The same incarnation already greeted on this connection: a lower
        // `seq` is a late copy of an earlier hello. Otherwise (a new
        // incarnation, or the first hello of a connection) fewer writes
        // than we applied mean it lost writes it had shipped; a false alarm
        // (a late hello opening a connection) heals at its next hello.
        let greeted_same = self.peers.get(from).is_some_and(|p| {
            p.greeted && p.replica == Some(replica) && p.incarnation == Some(incarnation)
        });
        // Only what it told us itself counts: what others claimed of it is
        // reported below instead.
        let applied = self
            .issued
            .get(&replica)
            .copied()
            .unwrap_or(0)
            .min(self.applied.get(replica));
        if !greeted_same && applied > seq {
            return Some(HandshakeRefusal::WritesRegressed {
                replica,
                applied,
                presented: seq,
            });
        }
        None
    }

    /// A peer's hello: binds its name to its replica id and incarnation for
    /// this connection. A new incarnation (a restart) or a new replica id
    /// (a restart without storage) resets what we keep about the peer: its
    /// binding, our cursor (to what it says it holds of ours, so what it
    /// lacks is sent again at once) and batches buffered from its former
    /// replica.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_hello(
        &mut self,
        from: &str,
        replica: ReplicaId,
        incarnation: u64,
        seq: u64,
        applied: &VersionVector,
        reply: bool,
        now: Instant,
    ) -> Outgoing {
        if self
            .peers
            .get(from)
            .is_some_and(|p| p.protocol_refused.is_some())
        {
            self.counters.stale_frames += 1;
            return Vec::new();
        }
        if let Some(refusal) = self.check_hello(from, replica, incarnation, seq) {
            self.refuse_hello(from, refusal, now);
            return Vec::new();
        }
        // What it says it holds of ours, up to what it can hold.
        let ours = applied.get(self.replica).min(
            self.peers
                .get(from)
                .map_or(self.start_seq, |p| self.ack_bound(p)),
        );
        let (new_replica, restarted) = self.bind_hello(from, replica, incarnation, seq, ours, now);
        // A peer that can now be asked for rights.
        self.rights.peers_changed();
        self.heard_from(replica, seq);
        let overclaimed = self.take_back_hearsay(from, replica, seq);
        if restarted {
            self.forget_exchanges_of(from);
        }
        if new_replica {
            self.drop_batches_of_former_replica(from, replica);
        }
        self.truncate_log();
        let mut out = if reply {
            Vec::new()
        } else {
            vec![self.hello(from, true, now)]
        };
        out.extend(self.repair_after_hello(from, replica, applied, overclaimed, now));
        out
    }

    /// A hello refused for `refusal`: the peer is not greeted; a new
    /// refusal is counted and logged.
    fn refuse_hello(&mut self, from: &str, refusal: HandshakeRefusal, now: Instant) {
        let peer = self.peer(from, now);
        peer.greeted = false;
        if peer.refused.as_ref() != Some(&refusal) {
            peer.refused = Some(refusal.clone());
            self.counters.refused_handshakes += 1;
            tracing::warn!(region = %self.name, peer = from, %refusal, "rejected input: handshake refused");
        }
    }

    /// Binds `from` to `replica` and `incarnation` (an accepted hello that
    /// says it made `seq` writes and holds `ours` of ours); the peer is
    /// greeted. Returns whether the replica id is new, and whether the peer
    /// restarted (a new incarnation of a peer identified before).
    fn bind_hello(
        &mut self,
        from: &str,
        replica: ReplicaId,
        incarnation: u64,
        seq: u64,
        ours: u64,
        now: Instant,
    ) -> (bool, bool) {
        let name = self.name.clone();
        let peer = self.peer(from, now);
        if peer.refused.take().is_some() {
            tracing::info!(region = %name, peer = from, "handshake accepted after an earlier refusal");
        }
        let new_replica = peer.replica != Some(replica);
        let new_incarnation = new_replica || peer.incarnation != Some(incarnation);
        let mut restarted = false;
        if new_incarnation {
            let first = peer.reset_for_new_incarnation(replica, incarnation, ours, now);
            if first {
                tracing::debug!(region = %name, peer = from, %replica, incarnation, "peer identified");
            } else {
                restarted = true;
                tracing::info!(region = %name, peer = from, %replica, incarnation, holds_of_ours = ours, "peer restarted: its binding and cursor are reset");
            }
        } else {
            // The same incarnation reconnecting: resend what it lacks.
            peer.acked = peer.acked.max(ours);
            peer.sent = peer.acked;
        }
        peer.its_seq_seen = peer.its_seq_seen.max(seq);
        peer.greeted = true;
        peer.known = true;
        (new_replica, restarted)
    }

    /// A restarted peer's former process's exchanges are over: what it
    /// asked and what it was sending are void.
    fn forget_exchanges_of(&mut self, from: &str) {
        self.forget_held_for_fold(from);
        self.answered_last.remove(from);
        self.answered.remove(from);
        self.answering.remove(from);
        self.sync_inbox.retain(|(peer, _, _), _| peer != from);
    }

    /// Batches `from` sent for a replica id other than its new `replica`
    /// wait for writes nobody will send: dropped.
    fn drop_batches_of_former_replica(&mut self, from: &str, replica: ReplicaId) {
        let before = self.buffer.len();
        self.buffer
            .retain(|b| b.from != from || b.origin == replica);
        if self.buffer.len() != before {
            self.buffer_bytes = self.buffer.iter().map(Buffered::size).sum();
        }
    }

    /// Writes of other origins a greeting peer lacks (a peer back from a
    /// partition or restarted without storage, whose writes of a former
    /// replica id count as another origin) come only from anti-entropy:
    /// its hello (`applied`) claims nothing we act on beyond starting one,
    /// as does hearsay about it taken back (`overclaimed`).
    fn repair_after_hello(
        &mut self,
        from: &str,
        replica: ReplicaId,
        applied: &VersionVector,
        overclaimed: bool,
        now: Instant,
    ) -> Outgoing {
        let lacks = self
            .transfer_claims()
            .iter()
            .any(|(r, n)| r != self.replica && r != replica && applied.get(r) < n);
        if (lacks || overclaimed) && self.peers[from].connected && !self.syncs.contains_key(from) {
            tracing::debug!(region = %self.name, peer = from, "the peer lacks writes of other regions: anti-entropy");
            return self.start_sync(from, now);
        }
        Vec::new()
    }

    /// Writes of `replica` (greeting as `from`, having made `seq`) that
    /// others claimed and it never made: hearsay, reported, and taken back
    /// (so no batch is let through for them); we never counted them as
    /// held, and our writes never depended on them (see `vouched`). True
    /// when there were any.
    fn take_back_hearsay(&mut self, from: &str, replica: ReplicaId, seq: u64) -> bool {
        let claimed = self.applied.get(replica).max(self.believed.get(replica));
        if claimed <= seq {
            return false;
        }
        tracing::warn!(
            region = %self.name,
            peer = from,
            %replica,
            claimed,
            made = seq,
            "rejected input: peers claimed writes of this region it never made"
        );
        self.counters.untrusted_claims += 1;
        if self.believed.get(replica) > seq {
            self.believed = self
                .believed
                .iter()
                .map(|(r, n)| (r, if r == replica { seq } else { n }))
                .collect();
        }
        true
    }

    pub(crate) fn peer_down(&mut self, name: &str, now: Instant) {
        if self.retired.contains_key(name) {
            return;
        }
        self.forget_held_for_fold(name);
        let peer = self.peer(name, now);
        let was = peer.connected;
        peer.connected = false;
        peer.greeted = false;
        if was {
            tracing::info!(region = %self.name, peer = name, "peer disconnected");
        }
    }
}

impl PeerState {
    /// A hello of a new incarnation (or a new replica id): rebinds the
    /// peer, remembering a replica id it had before (at most
    /// [`FORMER_IDS_MAX`]), and restarts our cursor from `ours`, what it
    /// holds of our writes. True when this is the peer's first
    /// identification.
    fn reset_for_new_incarnation(
        &mut self,
        replica: ReplicaId,
        incarnation: u64,
        ours: u64,
        now: Instant,
    ) -> bool {
        if self.replica != Some(replica) {
            if let Some(old) = self.replica {
                if self.former.len() == FORMER_IDS_MAX {
                    self.former.remove(0);
                }
                self.former.push(old);
            }
            self.its_seq_seen = 0;
        }
        let first = self.incarnation.is_none() && self.replica.is_none();
        self.replica = Some(replica);
        self.incarnation = Some(incarnation);
        // Its cursor restarts from what it holds of ours.
        self.acked = ours;
        self.sent = ours;
        self.push_pending = None;
        self.progress_at = now;
        first
    }
}
