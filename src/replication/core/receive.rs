//! Frames from peers: batches into the causal buffer, acknowledgements,
//! merging entries into tables.

use super::anti_entropy::TransferChunk;
use super::*;

/// Entries of buffered batches applied per hold of the state's lock: a run
/// of ready batches past it (a partition healed, a transfer they waited
/// for) is applied a slice per hold by the engine, so local reads and
/// writes wait for one slice, not the run. Whole batches only (at least
/// one per hold): the default `batch_len_max` (1,024) is one batch.
pub(crate) const DRAIN_SLICE_ENTRIES_MAX: usize = 1024;

impl Core {
    /// A message from the peer `from`: a retired peer's and a refused or
    /// not yet greeted peer's are ignored; the protocol announcement and the
    /// hello open the conversation; everything else is
    /// [`on_greeted_message`](Core::on_greeted_message)'s.
    pub(crate) fn on_message(&mut self, from: &str, message: Message, now: Instant) -> Outgoing {
        if self.retired.contains_key(from) {
            self.ignore_retired(from, &message);
            return Vec::new();
        }
        let peer = self.peer(from, now);
        peer.last_contact = Some(now);
        if let Message::Protocol { min, max } = message {
            return self.on_protocol(from, min, max, now);
        }
        let peer = self.peer(from, now);
        if let Message::Hello {
            replica,
            incarnation,
            seq,
            applied,
            reply,
        } = message
        {
            if applied.len() > crate::region::HELLO_VECTOR_ENTRIES_MAX {
                let why = format!(
                    "hello naming {} replicas, over HELLO_VECTOR_ENTRIES_MAX ({})",
                    applied.len(),
                    crate::region::HELLO_VECTOR_ENTRIES_MAX
                );
                self.reject(from, RejectReason::OverLimit, &why);
                return Vec::new();
            }
            return self.on_hello(from, replica, incarnation, seq, &applied, reply, now);
        }
        // A refused peer, or one that knew us and has not greeted on this
        // connection yet (what it sends may come from an incarnation its
        // hello will reset): ignored.
        if peer.refused.is_some() || peer.protocol_refused.is_some() || peer.unconfirmed() {
            self.counters.stale_frames += 1;
            return Vec::new();
        }
        if self.folding
            && matches!(
                message,
                Message::SyncRequest { .. } | Message::SyncRanges { .. }
            )
        {
            // It reads whole tables: handled once the transfer is folded.
            self.hold_for_fold(HeldForFold::Message {
                from: from.to_owned(),
                message,
            });
            return Vec::new();
        }
        self.on_greeted_message(from, message, now)
    }

    /// A [`CompactBatch`](Message::CompactBatch) handed over decoded (the
    /// engine expands them as it decodes frames: `message::decode_frame`):
    /// expanded, then handled as the batch it was made from.
    fn on_compact_batch(&mut self, from: &str, message: Message, now: Instant) -> Outgoing {
        match message.expand() {
            Ok(batch) => self.on_greeted_message(from, batch, now),
            Err(error) => {
                self.on_undecodable(from, &error);
                Vec::new()
            }
        }
    }

    /// A frame of a retired peer: stale; its hello is refused (counted and
    /// logged once per retirement).
    fn ignore_retired(&mut self, from: &str, message: &Message) {
        if let Message::Hello { .. } = message
            && self.retired_refused.insert(from.to_owned())
        {
            self.counters.refused_handshakes += 1;
            tracing::warn!(region = %self.name, peer = from, "rejected input: hello of a retired peer");
        }
        self.counters.stale_frames += 1;
    }

    /// A batch in the plain layout, buffered as it arrived from `from`.
    fn on_plain_batch(&mut self, from: &str, message: Message, now: Instant) -> Outgoing {
        let Message::Batch {
            origin,
            first,
            last,
            deps,
            sent_at,
            tables,
            entries,
        } = message
        else {
            debug_assert!(false, "on_plain_batch is given batches only");
            return Vec::new();
        };
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
            relayed: false,
        };
        self.on_batch(from, batch, sent_at, now)
    }

    /// A message of a peer that greeted us on this connection (protocol
    /// announcements and hellos are [`on_message`](Core::on_message)'s).
    fn on_greeted_message(&mut self, from: &str, message: Message, now: Instant) -> Outgoing {
        match message {
            message @ Message::Batch { .. } => self.on_plain_batch(from, message, now),
            message @ (Message::Relay { .. } | Message::RelayWant { .. }) => {
                self.on_relay_message(from, message, now)
            }
            Message::Hello { .. } | Message::Protocol { .. } => unreachable!("handled above"),
            Message::Ack { origin, applied } => {
                self.on_ack(from, origin, applied, now);
                Vec::new()
            }
            Message::SyncRequest {
                session,
                applied,
                digests,
            } => self.on_sync_request(from, session, applied, digests),
            Message::RightsRequest { table, key, wanted } => {
                self.on_rights_request(from, &table, &key.0, wanted, now);
                Vec::new()
            }
            Message::HomedRequest { id, table, key, op } => {
                self.on_homed_request(from, id, &table, &key.0, &op.0)
            }
            Message::HomedReply { id, outcome } => {
                self.on_homed_reply(from, id, outcome);
                Vec::new()
            }
            message @ Message::SyncRanges { .. } => self.on_sync_ranges(from, message, now),
            Message::SyncStatesGrouped(chunk) => self.on_sync_states_grouped(from, *chunk, now),
            message @ Message::CompactBatch { .. } => self.on_compact_batch(from, message, now),
            Message::SyncDone { session } => {
                self.on_sync_done(from, session, now);
                Vec::new()
            }
            Message::SyncStates {
                session,
                push,
                chunk,
                chunks,
                sent_at,
                buckets,
                tables,
                entries,
                applied,
            } => {
                let chunk = TransferChunk {
                    session,
                    push,
                    chunk,
                    chunks,
                    sent_at,
                    buckets,
                    part: (tables, entries),
                    applied,
                };
                self.on_sync_states(from, chunk, now)
            }
        }
    }

    /// The peer `from` has applied our writes up to `applied` (of `origin`,
    /// ours when it is us): its cursor moves and the log may be truncated.
    /// A claim beyond what it was sent is refused.
    fn on_ack(&mut self, from: &str, origin: ReplicaId, applied: u64, now: Instant) {
        if origin == self.replica {
            let bound = self.ack_bound(&self.peers[from]);
            if applied > bound {
                // It cannot hold these: truncating our log on its
                // word would lose them for it (and for whoever
                // catches up from it).
                self.reject(
                    from,
                    RejectReason::ForgedClaim,
                    "acknowledgement of writes of ours it was never sent",
                );
                return;
            }
            let peer = self.peers.get_mut(from).expect("touched above");
            if applied > peer.acked {
                peer.acked = applied;
                peer.sent = peer.sent.max(applied);
                peer.progress_at = now;
            }
            self.truncate_log();
        } else {
            // Another origin's writes, of a batch we relayed to it.
            self.on_relay_ack(from, origin, applied, now);
        }
    }

    /// The peer `from` merged our push of exchange `session`: its repair
    /// is done, and it holds every write of ours the push covered.
    fn on_sync_done(&mut self, from: &str, session: u64, now: Instant) {
        let peer = self.peers.get_mut(from).expect("touched above");
        if let Some((pushed, covered, _)) = peer.push_pending
            && pushed == session
        {
            // It holds every write of ours up to the push.
            peer.push_pending = None;
            peer.needs_sync = false;
            if covered > peer.acked {
                peer.acked = covered;
                peer.sent = peer.sent.max(covered);
                peer.progress_at = now;
            }
            tracing::debug!(region = %self.name, peer = from, session, "anti-entropy: push confirmed");
            self.truncate_log();
        }
    }

    /// A batch of `origin`'s writes: checked (see
    /// [`admit_batch`](Core::admit_batch)), applied at once when in causal
    /// order or buffered until it is, and acknowledged with what we now
    /// hold of its origin.
    pub(super) fn on_batch(
        &mut self,
        from: &str,
        batch: Buffered,
        sent_at: Timestamp,
        now: Instant,
    ) -> Outgoing {
        if !self.admit_batch(from, &batch) {
            return Vec::new();
        }
        let (origin, last) = (batch.origin, batch.last);
        // Follow the sender's clock, within the offset bound: the data is
        // applied even when the sender's clock runs too far ahead.
        self.follow_clock(from, sent_at, now);
        self.heard_from(origin, last);
        let peer = self.peer(from, now);
        peer.its_seq_seen = peer.its_seq_seen.max(last);
        peer.replica = Some(origin);
        if last > self.applied.get(origin) {
            self.apply_or_buffer(batch);
        }
        vec![(
            from.to_owned(),
            Message::Ack {
                origin,
                applied: self.applied.get(origin),
            },
        )]
    }

    /// Whether a batch from `from` may be taken in: a malformed one, one
    /// of an origin other than the sender, or one depending on writes of
    /// ours we never made is refused; one of the peer's earlier replica id
    /// is ignored. False when it is not taken in (counted either way).
    fn admit_batch(&mut self, from: &str, batch: &Buffered) -> bool {
        if !self.check_batch_frame(from, batch) {
            return false;
        }
        let origin = batch.origin;
        // A peer speaks for one origin only: itself. A batch of a replica
        // id it had before (a late frame of its previous process) is
        // ignored, not refused. (Frames before its hello on a connection
        // never get here: `on_message` ignores them.)
        if self
            .peers
            .get(from)
            .is_some_and(|peer| peer.former.contains(&origin))
        {
            tracing::debug!(region = %self.name, peer = from, ?origin, "ignored a batch of the peer's earlier incarnation");
            self.counters.stale_frames += 1;
            return false;
        }
        if self
            .peers
            .get(from)
            .and_then(|p| p.replica)
            .is_some_and(|r| r != origin)
            || self
                .peers
                .iter()
                .any(|(name, p)| name != from && p.replica == Some(origin))
        {
            self.reject(
                from,
                RejectReason::NotSenderOrigin,
                "batch for an origin that is not the sending peer",
            );
            return false;
        }
        true
    }

    /// Whether a batch (ours or relayed) from `from` is well formed: an
    /// origin other than us, a sequence range its entries fill, no
    /// dependency on writes of ours we never made. Refused (counted) when
    /// not.
    pub(crate) fn check_batch_frame(&mut self, from: &str, batch: &Buffered) -> bool {
        let (origin, first, last) = (batch.origin, batch.first, batch.last);
        let entries = message::count_entries(&batch.entries.0, batch.tables.len());
        if origin == self.replica
            || first == 0
            || last < first
            || entries.as_ref().ok() != Some(&(last - first + 1))
        {
            let (reason, why) = match entries {
                Err(error) => (
                    RejectReason::Undecodable,
                    format!("batch with malformed entries: {error}"),
                ),
                Ok(_) => (
                    RejectReason::Malformed,
                    "batch with a bad origin, sequence range or entry count".to_owned(),
                ),
            };
            self.reject(from, reason, &why);
            return false;
        }
        if batch.deps.get(self.replica) > self.sendable() {
            // It would wait for writes of ours that do not exist.
            self.reject(
                from,
                RejectReason::ForgedClaim,
                "batch depending on writes of ours we never made",
            );
            return false;
        }
        true
    }

    /// A batch with writes we lack: applied now when in order with nothing
    /// waiting, else buffered (unless one held covers it) and the buffer
    /// drained and bounded.
    pub(crate) fn apply_or_buffer(&mut self, batch: Buffered) {
        let (origin, first, last) = (batch.origin, batch.first, batch.last);
        if self.buffer.is_empty() && self.ready(&batch) {
            // The common case: in order, nothing waiting.
            self.apply_batch(batch);
        } else if !self.buffer.iter().any(|b| {
            // Already held: the same writes or more, needing no more.
            b.origin == origin
                && b.relayed == batch.relayed
                && b.first <= first
                && b.last >= last
                && b.deps
                    .iter()
                    .all(|(r, n)| r == origin || batch.deps.get(r) >= n)
        }) {
            self.buffer_bytes += batch.size();
            self.buffer.push(batch);
            // The arrival's acknowledgement says what this applied.
            self.drain_buffer();
            self.bound_buffer();
        }
    }

    /// True when `batch` follows its origin's writes we hold first-hand and
    /// every other write it depends on is here, first-hand or by a peer's
    /// word (`believed`): a claim never makes a batch wait longer, at
    /// worst (a false claim) it lets one through early; it never makes a
    /// write look applied (that is `applied`'s alone).
    pub(super) fn ready(&self, batch: &Buffered) -> bool {
        batch.first <= self.continues(batch) + 1
            && batch.deps.iter().all(|(r, n)| {
                r == batch.origin || self.applied.get(r) >= n || self.believed.get(r) >= n
            })
    }

    /// True when a batch from `peer` has waited at least the ack timeout
    /// for writes nobody will send us by batch: writes their origin never
    /// told us of (the batch's deps are the sender's claim; it may have
    /// believed a peer inflating its own count, see
    /// [`vouched`](Core::vouched)), or writes of an origin we are not
    /// connected to (the link to it is cut while the sender's works). An
    /// exchange with the sender brings what it holds, the writes the batch
    /// depends on included, and lets the batch through: causal delivery
    /// does not stall on one broken link until the periodic exchange.
    pub(super) fn waits_on_unsent(&self, peer: &str, now: Instant) -> bool {
        self.buffer.iter().any(|b| {
            b.from == peer
                && now.duration_since(b.arrived) >= self.config.ack_timeout
                && b.deps.iter().any(|(r, n)| {
                    r != b.origin
                        && self.applied.get(r) < n
                        && self.believed.get(r) < n
                        && (self.issued.get(&r).copied().unwrap_or(0) < n
                            || !self.peer_of(r).is_some_and(|p| p.connected))
                })
        })
    }

    /// Applies buffered batches whose dependencies are now applied, whole
    /// batches of at most [`DRAIN_SLICE_ENTRIES_MAX`] entries together (at
    /// least one batch): when more are ready, `draining` is set and the
    /// engine applies them in holds of their own
    /// ([`drain_buffer_slice`](Core::drain_buffer_slice)). Returns the
    /// sender, origin and relayedness of each batch applied.
    ///
    /// A batch is never split: its transactions become visible at once
    /// (an outbox never cuts a transaction across batches), and causal
    /// order holds across slices since a batch is applied only once
    /// `ready`.
    pub(super) fn drain_buffer(&mut self) -> Vec<(String, ReplicaId, bool)> {
        let mut applied = Vec::new();
        let mut entries = 0u64;
        self.draining = false;
        loop {
            let stale = self.buffer.iter().position(|b| b.last <= self.continues(b));
            if let Some(i) = stale {
                let b = self.buffer.swap_remove(i);
                self.buffer_bytes -= b.size();
                continue;
            }
            let Some(i) = self.buffer.iter().position(|b| self.ready(b)) else {
                break;
            };
            if entries >= DRAIN_SLICE_ENTRIES_MAX as u64 {
                // More is ready: the engine goes on after letting local
                // reads and writes in.
                self.draining = true;
                break;
            }
            let batch = self.buffer.swap_remove(i);
            self.buffer_bytes -= batch.size();
            entries += batch.last - batch.first + 1;
            let sent_by = (batch.from.clone(), batch.origin, batch.relayed);
            if !applied.contains(&sent_by) {
                applied.push(sent_by);
            }
            self.apply_batch(batch);
        }
        debug_assert!(
            !self.draining || entries >= DRAIN_SLICE_ENTRIES_MAX as u64,
            "a drain stops early only past its bound"
        );
        if !self.buffer.is_empty() {
            self.counters.batches_buffered = self.buffer.len() as u64;
        }
        applied
    }

    /// Whether ready buffered batches wait past what one hold applies: the
    /// engine then calls [`drain_buffer_slice`](Core::drain_buffer_slice)
    /// between other work.
    pub(crate) fn drain_work_pending(&self) -> bool {
        self.draining
    }

    /// Applies the next slice of ready buffered batches (see
    /// [`drain_buffer`](Core::drain_buffer)) in a hold of its own; returns
    /// an acknowledgement to the sender of each origin's batches applied,
    /// as their arrival would have (see [`on_batch`](Core::on_batch) and
    /// `on_relay`).
    pub(crate) fn drain_buffer_slice(&mut self) -> Outgoing {
        if !self.draining {
            return Vec::new();
        }
        self.counters.drain_slices += 1;
        let applied = self.drain_buffer();
        applied
            .into_iter()
            .map(|(from, origin, relayed)| {
                let applied = if relayed {
                    self.relay_held(origin)
                } else {
                    self.applied.get(origin)
                };
                (from, Message::Ack { origin, applied })
            })
            .collect()
    }

    pub(super) fn bound_buffer(&mut self) {
        while self.buffer.len() > self.config.causal_buffer_len_max
            || self.buffer_bytes > self.config.causal_buffer_bytes_max
        {
            // Drop the batch furthest ahead: the origin retransmits it, or
            // anti-entropy covers it.
            let Some((i, _)) = self
                .buffer
                .iter()
                .enumerate()
                .max_by_key(|(_, b)| b.first.saturating_sub(self.applied.get(b.origin)))
            else {
                break;
            };
            let b = self.buffer.swap_remove(i);
            self.buffer_bytes -= b.size();
            self.counters.batches_dropped += 1;
            tracing::debug!(region = %self.name, from = %b.from, first = b.first, "causal buffer full: dropped a batch");
        }
    }

    /// Merges packed entries, each part naming its `tables`: checks every
    /// entry and decodes every value first, then merges them all. Values of
    /// undeclared tables are held encoded.
    ///
    /// A malformed entry rejects the whole message (false): nothing stored
    /// is touched. A well-framed value that does not decode as its table's
    /// type (two regions declaring a table with different types, or a
    /// corrupt value) is dropped, counted and logged, and the rest is
    /// merged: refusing the message would stall replication from its
    /// origin for good, since every resend fails alike.
    ///
    /// A value stamped past our clock's offset bound refuses a batch (its
    /// origin sends it again, in order), and is set aside from a transfer
    /// (the rest of which is merged, but for the values `groups` joins to
    /// one set aside: see [`tx_groups`](super::tx_groups)). Returns how
    /// many were set aside, or `None` when the message was refused.
    pub(super) fn merge_entries(
        &mut self,
        from: &str,
        parts: &[(&[String], &[u8])],
        ahead: AheadValues,
        groups: &mut tx_groups::EntryGroups,
    ) -> Option<usize> {
        self.merge_entries_into(from, parts, ahead, groups, &[], MergeInto::Current)
    }

    /// [`merge_entries`](Core::merge_entries), into the current values or
    /// into the pending values of a transfer merged in slices, leaving out
    /// the entries `deferred` (by index, sorted: the members of a sliced
    /// transfer's transaction groups, merged together after its last slice).
    pub(super) fn merge_entries_into(
        &mut self,
        from: &str,
        parts: &[(&[String], &[u8])],
        ahead: AheadValues,
        groups: &mut tx_groups::EntryGroups,
        deferred: &[usize],
        into: MergeInto,
    ) -> Option<usize> {
        debug_assert!(deferred.is_sorted(), "deferred entries come in order");
        let at = self.hlc.last();
        let stamps_max = self.hlc.offset_bound();
        let slots: Vec<Vec<Option<usize>>> = parts
            .iter()
            .map(|(tables, _)| tables.iter().map(|t| self.slot_of(t)).collect())
            .collect();
        let mut staging = self.stage_entries(parts, &slots, ahead, stamps_max, deferred);
        let grouped = groups.closure(&staging.set_aside);
        if staging.failed.is_none() && !grouped.is_empty() {
            // Staged values commit in order: stage again without the
            // values of the set-aside values' transactions.
            for &slot in &staging.staged {
                self.tables[slot].store.unstage();
            }
            let mut held: Vec<usize> = deferred.iter().chain(&grouped).copied().collect();
            held.sort_unstable();
            held.dedup();
            staging = self.stage_entries(parts, &slots, ahead, stamps_max, &held);
            self.report_grouped(from, grouped.len());
        }
        if let Some((reason, why)) = staging.failed {
            for slot in staging.staged {
                self.tables[slot].store.unstage();
            }
            self.reject(from, reason, &why);
            return None;
        }
        self.report_skipped(from, &staging, stamps_max);
        let aside = staging.set_aside.len() + grouped.len();
        let mut skipped: Vec<usize> = staging.undecodable;
        skipped.extend(staging.set_aside);
        skipped.extend(grouped);
        skipped.extend_from_slice(deferred);
        skipped.sort_unstable();
        skipped.dedup();
        self.commit_entries(parts, &slots, skipped, at, into);
        Some(aside)
    }

    /// Checks every entry of `parts` (whose tables are in `slots`) and
    /// stages every value of a declared table: the first step of
    /// [`merge_entries`](Core::merge_entries), which changes nothing stored.
    /// The entries `held` (by index, sorted) are checked but not staged.
    fn stage_entries(
        &mut self,
        parts: &[(&[String], &[u8])],
        slots: &[Vec<Option<usize>>],
        ahead: AheadValues,
        stamps_max: Timestamp,
        held: &[usize],
    ) -> Staging {
        let mut staging = Staging::default();
        let entries = parts
            .iter()
            .zip(slots)
            .flat_map(|((tables, packed), slots)| {
                Entries::new(packed, tables.len()).map(move |e| (*tables, slots, e))
            });
        for (index, (tables, slots, entry)) in entries.enumerate() {
            let (table, _key, value) = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    staging.failed = Some((
                        RejectReason::Undecodable,
                        format!("malformed entry: {error}"),
                    ));
                    break;
                }
            };
            // Values of an undeclared table are held encoded (or dropped
            // past the bound) when merged.
            let Some(slot) = slots[table] else {
                continue;
            };
            if !held.is_empty() && held.binary_search(&index).is_ok() {
                continue;
            }
            match self.tables[slot].store.stage(value, stamps_max) {
                Ok(()) => {}
                Err(StageError::Undecodable(error)) => {
                    staging.undecodable.push(index);
                    staging
                        .first_error
                        .get_or_insert_with(|| (tables[table].clone(), error));
                    continue;
                }
                Err(StageError::Ahead { .. }) if ahead == AheadValues::SetAside => {
                    staging.set_aside.push(index);
                    continue;
                }
                Err(StageError::Ahead { stamp }) => {
                    self.counters.values_ahead += 1;
                    staging.failed = Some((
                        RejectReason::ClockAhead,
                        format!(
                            "a value of table {} stamped {stamp}, past this clock's bound {stamps_max}: the writer's clock runs ahead (sent again, it lands once the clocks are within the max offset)",
                            tables[table]
                        ),
                    ));
                    break;
                }
            }
            if !staging.staged.contains(&slot) {
                staging.staged.push(slot);
            }
        }
        staging
    }

    /// Counts and logs the values staging left out of a merge: set aside
    /// (stamped past `stamps_max`) or undecodable.
    fn report_skipped(&mut self, from: &str, staging: &Staging, stamps_max: Timestamp) {
        let set_aside = &staging.set_aside;
        if !set_aside.is_empty() {
            self.counters.values_ahead += set_aside.len() as u64;
            tracing::warn!(
                region = %self.name,
                peer = from,
                values = set_aside.len(),
                bound = %stamps_max,
                "rejected input: values stamped past this clock's bound were set aside from a transfer (a region's clock runs ahead); a later exchange brings them"
            );
        }
        if let Some((table, error)) = &staging.first_error {
            let undecodable = &staging.undecodable;
            self.counters.undecodable_values += undecodable.len() as u64;
            tracing::warn!(
                region = %self.name,
                peer = from,
                %table,
                values = undecodable.len(),
                %error,
                "rejected input: values that do not decode as their table's type were dropped (is the table declared with the same type everywhere?)"
            );
        }
    }

    /// Counts and logs the `values` set aside with a value of their
    /// transaction that was set aside.
    fn report_grouped(&mut self, from: &str, values: usize) {
        self.counters.transaction_values_set_aside += values as u64;
        tracing::warn!(
            region = %self.name,
            peer = from,
            values,
            "values of transactions one of whose values was set aside were set aside with it (a region's clock runs ahead); a later exchange brings them"
        );
    }

    /// The second step of [`merge_entries`](Core::merge_entries): commits
    /// every staged value at `at` but the `skipped` entries (by index, in
    /// order), and holds the values of undeclared tables.
    fn commit_entries(
        &mut self,
        parts: &[(&[String], &[u8])],
        slots: &[Vec<Option<usize>>],
        skipped: Vec<usize>,
        at: Timestamp,
        into: MergeInto,
    ) {
        debug_assert!(skipped.is_sorted(), "skipped entries come in order");
        let mut skipped = skipped.into_iter().peekable();
        let mut index = 0;
        for ((tables, packed), slots) in parts.iter().zip(slots) {
            for (table, key, value) in Entries::new(packed, tables.len()).flatten() {
                let skip = skipped.next_if_eq(&index).is_some();
                index += 1;
                match slots[table] {
                    Some(_) if skip => {}
                    Some(slot) if into == MergeInto::Pending => {
                        // Woken at the fold, once readers see it.
                        self.tables[slot].store.commit_pending(key, at);
                    }
                    Some(slot) => {
                        self.tables[slot].store.commit(key, at);
                        self.rights.key_changed(slot, key);
                    }
                    None => {
                        self.hold_undeclared(&tables[table], key, value);
                    }
                }
            }
        }
    }

    /// What of `batch`'s origin it continues: what we hold first-hand for
    /// the origin's own batch, what we hold by any word for a relayed one.
    fn continues(&self, batch: &Buffered) -> u64 {
        if batch.relayed {
            self.relay_held(batch.origin)
        } else {
            self.applied.get(batch.origin)
        }
    }

    pub(super) fn apply_batch(&mut self, batch: Buffered) {
        let parts = [(batch.tables.as_slice(), batch.entries.0.as_slice())];
        let mut groups = tx_groups::EntryGroups::default();
        if self
            .merge_entries(&batch.from, &parts, AheadValues::RefuseFrame, &mut groups)
            .is_some()
        {
            if batch.relayed {
                // Held by the relay's word, as a transfer's states are
                // (admitted only for an origin a peer of ours spoke for
                // then: no replica heard of only by claims grows
                // `believed`).
                self.believed.raise(batch.origin, batch.last);
            } else {
                self.applied.raise(batch.origin, batch.last);
            }
            self.generation += 1;
            self.remote_generation += 1;
            self.counters.batches_applied += 1;
            self.log_for_relay(batch);
        }
    }

    /// Holds a value of a table not declared here. Identical values are
    /// kept once. Past `undeclared_bytes_max` (all undeclared tables
    /// together) the value is dropped, counted and, the first time for its
    /// table, logged: false. Declaring the table then starts anti-entropy
    /// (see [`declare`](Core::declare)).
    pub(super) fn hold_undeclared(&mut self, table: &str, key: &[u8], value: &[u8]) -> bool {
        let total: usize = self.undeclared.values().map(|u| u.bytes).sum();
        let bound = self.config.undeclared_bytes_max;
        let store = self.undeclared.entry(table.to_owned()).or_default();
        if store
            .values
            .get(key)
            .is_some_and(|held| held.iter().any(|v| v == value))
        {
            return true;
        }
        if total + key.len() + value.len() > bound {
            store.dropped += 1;
            self.counters.undeclared_values_dropped += 1;
            if store.dropped == 1 {
                tracing::warn!(
                    region = %self.name,
                    %table,
                    held_bytes = total,
                    undeclared_bytes_max = bound,
                    "values of a table this region has not declared are over undeclared_bytes_max: dropped; declaring the table repairs it by anti-entropy"
                );
            }
            return false;
        }
        let values = store.values.entry(key.into()).or_default();
        store.bytes += key.len() + value.len();
        values.push(value.to_vec());
        if let Some(durable) = &mut self.durable {
            durable.undeclared.push((table.to_owned(), key.into()));
        }
        true
    }

    /// Counts a refused frame under its `reason` and logs `why`.
    pub(crate) fn reject(&mut self, from: &str, reason: RejectReason, why: &str) {
        self.counters.rejected_frames += 1;
        self.counters.rejected_by_reason[reason.index()] += 1;
        debug_assert_eq!(
            self.counters.rejected_by_reason.iter().sum::<u64>(),
            self.counters.rejected_frames,
            "the reasons sum to the total"
        );
        tracing::warn!(region = %self.name, peer = from, reason = reason.as_str(), why, "rejected input");
    }

    pub(crate) fn on_undecodable(&mut self, from: &str, error: &wire::WireError) {
        self.reject(from, RejectReason::Undecodable, &error.to_string());
    }
}

/// Where [`Core::merge_entries_into`] merges the values it commits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum MergeInto {
    /// The values readers read (a batch, a transfer merged at once).
    Current,
    /// The pending values of a transfer merged in slices, shown at its
    /// publish (see `shadow_merge`).
    Pending,
}

/// What staging a message's entries found (see
/// [`Core::merge_entries`]).
#[derive(Default)]
struct Staging {
    /// Slots of the tables with a value staged, each once.
    staged: Vec<usize>,
    /// Why the whole message is refused, if it is.
    failed: Option<(RejectReason, String)>,
    /// Entries (by index) whose value did not decode.
    undecodable: Vec<usize>,
    /// The table of the first value that did not decode, and its error.
    first_error: Option<(String, wire::WireError)>,
    /// Entries (by index) set aside: stamped past our clock's bound.
    set_aside: Vec<usize>,
}
