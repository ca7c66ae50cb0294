//! Anti-entropy: digests, exchanges, chunked transfers, and what a
//! transfer's vector is believed.

use super::*;
use crate::replication::store::Key;

impl Core {
    pub(super) fn digests(&mut self) -> Vec<(String, Vec<u64>)> {
        let mut digests: Vec<(String, Vec<u64>)> = self
            .tables
            .iter_mut()
            .map(|slot| (slot.name.to_string(), slot.store.digests()))
            .collect();
        digests.sort_by(|a, b| a.0.cmp(&b.0));
        digests
    }

    /// Starts an anti-entropy exchange with `peer`: by ranges when both
    /// speak protocol 6 (see [`ranges`](super::ranges)), else sends our
    /// digests.
    pub(crate) fn start_sync(&mut self, peer: &str, now: Instant) -> Outgoing {
        if self.folding {
            // Its digests would fold the rest at once: started by the
            // tick once folded (see `shadow_merge::HeldForFold`).
            self.wants_exchange.insert(peer.to_owned());
            return Vec::new();
        }
        self.sync_session += 1;
        let session = self.sync_session;
        if self.syncs_by_ranges(peer)
            && let Some(out) = self.start_range_sync(peer, session, now)
        {
            return out;
        }
        let digests = self.digests();
        self.syncs.insert(
            peer.to_owned(),
            SyncState {
                session,
                digests: digests.clone(),
                ranges: None,
            },
        );
        self.peer(peer, now).last_sync = Some(now);
        tracing::debug!(region = %self.name, peer, session, "anti-entropy: digests sent");
        vec![(
            peer.to_owned(),
            Message::SyncRequest {
                session,
                applied: self.applied.clone(),
                digests: digests.into_iter().map(|(t, d)| (t, pack(&d))).collect(),
            },
        )]
    }

    pub(super) fn initiates_sync(&self, peer: &str) -> bool {
        self.name.as_str() < peer || self.peers.get(peer).is_some_and(|p| p.needs_sync)
    }

    /// Peers due for anti-entropy: repairs pending, or the interval passed.
    pub(crate) fn due_syncs(&mut self, now: Instant) -> Outgoing {
        let interval = self.config.anti_entropy_interval;
        let due: Vec<String> = self
            .peers
            .iter()
            .filter(|(name, p)| {
                p.connected
                    && !self.syncs.contains_key(*name)
                    // A repair whose push is on its way waits for it to be
                    // confirmed, or for the exchange timeout.
                    && (p.needs_sync
                        && p.push_pending
                            .is_none_or(|(_, _, at)| now.duration_since(at) >= self.config.sync_timeout)
                        // An exchange that just failed (a transfer refused)
                        // is not retried in a loop.
                        && p.last_sync
                            .is_none_or(|t| now.duration_since(t) >= self.config.ack_timeout)
                        || (self.name.as_str() < name.as_str()
                            && p.last_sync
                                .is_none_or(|t| now.duration_since(t) >= interval))
                        // A table that dropped values was declared.
                        || self.wants_exchange.contains(*name)
                        || (self.waits_on_unsent(name, now)
                            && p.last_sync
                                .is_none_or(|t| now.duration_since(t) >= self.config.ack_timeout)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        // Transfers held for a peer's protocol leave once it is settled.
        let mut out = self.due_held_transfers(now);
        for name in due {
            self.wants_exchange.remove(&name);
            out.extend(self.start_sync(&name, now));
        }
        out
    }

    pub(super) fn on_sync_request(
        &mut self,
        from: &str,
        session: u64,
        _their_applied: VersionVector,
        theirs: Vec<(String, Vec<u8>)>,
    ) -> Outgoing {
        if self
            .answered_last
            .get(from)
            .is_some_and(|&last| session <= last)
        {
            tracing::debug!(region = %self.name, peer = from, session, "anti-entropy: ignored a repeated request");
            return Vec::new();
        }
        let Some(theirs) = theirs
            .into_iter()
            .map(|(t, d)| unpack(&d).map(|d| (t, d)))
            .collect::<Option<Vec<_>>>()
        else {
            self.reject(
                from,
                RejectReason::Undecodable,
                "sync request with malformed digests",
            );
            return Vec::new();
        };
        let mine = self.digests();
        let mut buckets: Vec<(String, Vec<u32>)> = Vec::new();
        for (table, their_digests) in &theirs {
            let differing: Vec<u32> = match mine.iter().find(|(t, _)| t == table) {
                Some((_, my_digests)) => (0..DIGEST_BUCKETS)
                    .filter(|&b| my_digests[b] != their_digests[b])
                    .map(|b| b as u32)
                    .collect(),
                None => (0..DIGEST_BUCKETS)
                    .filter(|&b| their_digests[b] != 0)
                    .map(|b| b as u32)
                    .collect(),
            };
            if !differing.is_empty() {
                buckets.push((table.clone(), differing));
            }
        }
        // Tables they did not list: every non-empty bucket.
        for (table, my_digests) in &mine {
            if !theirs.iter().any(|(t, _)| t == table) {
                let all: Vec<u32> = (0..DIGEST_BUCKETS)
                    .filter(|&b| my_digests[b] != 0)
                    .map(|b| b as u32)
                    .collect();
                if !all.is_empty() {
                    buckets.push((table.clone(), all));
                }
            }
        }
        // Our digests and states are read under one lock with our applied
        // vector: the reply is a consistent snapshot of this region.
        // A new exchange supersedes the one we answered before: drop what
        // we held of its push.
        if let Some(old) = self.answered.insert(from.to_owned(), session)
            && old != session
        {
            self.sync_inbox.remove(&(from.to_owned(), old, true));
        }
        self.answered_last.insert(from.to_owned(), session);
        let applied = self.transfer_claims();
        self.shipped_transfer(from, &applied);
        let selection = Selection::Buckets(buckets);
        self.states_chunks(from, session, false, selection, applied, &HashSet::new())
    }

    /// What a transfer of our whole state claims we hold: what we hold
    /// (see [`held`](Core::held)), and what we vouch for of the rest (see
    /// [`vouched`](Core::vouched)); a false claim of a peer about a peer's
    /// replica does not travel on with it.
    pub(super) fn transfer_claims(&mut self) -> VersionVector {
        let mut claims = self.held().into_owned();
        claims.merge(self.vouched());
        claims
    }

    /// A transfer to `to` claiming `applied` carries every write of ours
    /// it names.
    pub(super) fn shipped_transfer(&mut self, to: &str, applied: &VersionVector) {
        let ours = applied.get(self.replica);
        if let Some(peer) = self.peers.get_mut(to) {
            peer.shipped = peer.shipped.max(ours);
        }
    }

    /// Our states for `selection` (and every value held for undeclared
    /// tables), in chunks below the sync chunk limit; the first chunk names
    /// the buckets (if selected by buckets), the last carries `applied`.
    pub(super) fn states_chunks(
        &mut self,
        to: &str,
        session: u64,
        push: bool,
        selection: Selection,
        applied: VersionVector,
        skip: &HashSet<u64>,
    ) -> Outgoing {
        // Each chunk: its table names and packed entries.
        let mut chunks: Vec<(Vec<String>, Blob)> = vec![Default::default()];
        let chunk_max = self.config.sync_chunk_bytes_max;
        let mut add = |table: &str, key: &[u8], state: &[u8]| {
            let last = chunks.last().expect("never empty");
            if !last.1.0.is_empty() && last.1.0.len() + key.len() + state.len() > chunk_max {
                chunks.push(Default::default());
            }
            let (tables, packed) = chunks.last_mut().expect("never empty");
            let position = match tables.iter().position(|t| t == table) {
                Some(p) => p,
                None => {
                    tables.push(table.to_owned());
                    tables.len() - 1
                }
            };
            message::push_entry(&mut packed.0, position, key, state);
        };
        self.for_each_selected(&selection, &mut |table, key, state| {
            if skip.is_empty() || !skip.contains(&entry_hash(table, key, state)) {
                add(table, key, state);
            }
        });
        // Values of tables we hold but have not declared count in our
        // applied vector too: ship them, or the peer would claim writes it
        // does not have.
        for (table, store) in &self.undeclared {
            for (key, values) in &store.values {
                for value in values {
                    add(table, key, value);
                }
            }
        }
        let count = chunks.len() as u32;
        let sent_at = self.hlc.now();
        let mut buckets = match selection {
            Selection::Buckets(buckets) => Some(buckets),
            Selection::Keys(_) => None,
        };
        let out: Outgoing = chunks
            .into_iter()
            .enumerate()
            .map(|(i, (tables, entries))| {
                let i = i as u32;
                (
                    to.to_owned(),
                    Message::SyncStates {
                        session,
                        push,
                        chunk: i,
                        chunks: count,
                        sent_at,
                        buckets: if i == 0 {
                            buckets.take().unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                        tables,
                        entries,
                        applied: (i + 1 == count).then(|| applied.clone()),
                    },
                )
            })
            .collect();
        self.transfer_out(to, out)
    }

    /// Calls `add` with the table, key and state of every key `selection`
    /// names that a declared table of ours holds.
    fn for_each_selected(&self, selection: &Selection, add: &mut impl FnMut(&str, &[u8], &[u8])) {
        let store_of = |table: &str| self.slot_of(table).map(|slot| &self.tables[slot].store);
        match selection {
            Selection::Buckets(buckets) => {
                for (table, list) in buckets {
                    let Some(store) = store_of(table) else {
                        continue;
                    };
                    for &bucket in list {
                        for (key, state) in store.bucket_states(bucket as usize) {
                            add(table, &key, &state);
                        }
                    }
                }
            }
            Selection::Keys(tables) => {
                for (table, keys) in tables {
                    let Some(store) = store_of(table) else {
                        continue;
                    };
                    match keys {
                        TableKeys::All => {
                            for bucket in 0..DIGEST_BUCKETS {
                                for (key, state) in store.bucket_states(bucket) {
                                    add(table, &key, &state);
                                }
                            }
                        }
                        TableKeys::Some(keys) => {
                            for key in keys {
                                if let Some(state) = store.key_state(key) {
                                    add(table, key, &state);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks one chunk of a transfer and files it; returns the whole
    /// transfer once its last chunk is here.
    fn take_complete_transfer(
        &mut self,
        from: &str,
        mut chunk: TransferChunk,
        now: Instant,
    ) -> Option<SyncInbox> {
        if !self.check_chunk_bounds(from, &mut chunk) {
            return None;
        }
        let (session, push) = (chunk.session, chunk.push);
        // Only transfers we asked for: a reply to our exchange, or a push
        // answering the reply we sent.
        let expected = if push {
            self.answered.get(from) == Some(&session)
        } else {
            self.syncs.get(from).is_some_and(|s| s.session == session)
        };
        if !expected {
            tracing::debug!(region = %self.name, peer = from, session, push, "anti-entropy: ignored a transfer nobody asked for");
            return None;
        }
        self.peer(from, now).last_sync = Some(now);
        self.follow_clock(from, chunk.sent_at, now);
        let entries = match message::count_entries(&chunk.part.1.0, chunk.part.0.len()) {
            Ok(entries) => entries,
            Err(error) => {
                self.reject(
                    from,
                    RejectReason::Undecodable,
                    &format!("sync states with malformed entries: {error}"),
                );
                return None;
            }
        };
        self.file_chunk(from, chunk, entries, now)
    }

    /// Refuses a chunk whose index, chunk count or buckets are out of
    /// range (false); sorts and dedups the buckets it names.
    fn check_chunk_bounds(&mut self, from: &str, chunk: &mut TransferChunk) -> bool {
        let (index, chunks) = (chunk.chunk, chunk.chunks);
        if chunks == 0 || index >= chunks || chunks as usize > SYNC_CHUNKS_MAX {
            self.reject(
                from,
                RejectReason::Malformed,
                "sync states with a bad chunk index",
            );
            return false;
        }
        if chunk
            .buckets
            .iter()
            .any(|(_, list)| list.iter().any(|&b| b as usize >= DIGEST_BUCKETS))
        {
            self.reject(
                from,
                RejectReason::Malformed,
                "sync states naming a bucket out of range",
            );
            return false;
        }
        for (_, list) in &mut chunk.buckets {
            list.sort_unstable();
            list.dedup();
        }
        true
    }

    /// Files a checked chunk of an expected transfer in its inbox, within
    /// `sync_transfer_bytes_max`; returns the inbox once every chunk is
    /// here. A duplicated chunk is ignored.
    fn file_chunk(
        &mut self,
        from: &str,
        chunk: TransferChunk,
        entries: u64,
        now: Instant,
    ) -> Option<SyncInbox> {
        let TransferChunk {
            session,
            push,
            chunk: index,
            chunks,
            buckets,
            part,
            applied,
            ..
        } = chunk;
        // Every byte the chunk holds counts, table names included.
        let size = part.1.0.len()
            + part.0.iter().map(String::len).sum::<usize>()
            + buckets
                .iter()
                .map(|(t, list)| t.len() + 4 * list.len())
                .sum::<usize>();
        let slot = (from.to_owned(), session, push);
        let inbox = self
            .sync_inbox
            .entry(slot.clone())
            .or_insert_with(|| SyncInbox {
                chunks: vec![None; chunks as usize],
                buckets: Vec::new(),
                applied: None,
                bytes: 0,
                entries: 0,
                at: now,
            });
        if inbox.chunks.len() != chunks as usize {
            self.sync_inbox.remove(&slot);
            self.reject(
                from,
                RejectReason::Malformed,
                "sync states with an inconsistent chunk count",
            );
            return None;
        }
        inbox.at = now;
        if inbox.chunks[index as usize].is_some() {
            return None; // a duplicated frame
        }
        inbox.bytes += size;
        inbox.entries += entries;
        inbox.buckets.extend(buckets);
        if applied.is_some() {
            inbox.applied = applied;
        }
        inbox.chunks[index as usize] = Some(part);
        if inbox.bytes > self.config.sync_transfer_bytes_max {
            self.sync_inbox.remove(&slot);
            self.abort_sync(from, push);
            let why = format!(
                "anti-entropy transfer over sync_transfer_bytes_max ({} bytes): the peer stays behind until it is raised",
                self.config.sync_transfer_bytes_max
            );
            self.reject(from, RejectReason::OverLimit, &why);
            return None;
        }
        if inbox.chunks.iter().any(Option::is_none) {
            return None; // more to come
        }
        self.sync_inbox.remove(&slot)
    }

    /// One chunk of a transfer: once all are here, merges them (at once,
    /// or in slices past [`TRANSFER_MERGE_SLICE_KEYS_MAX`] entries: see
    /// `shadow_merge`), takes in the transfer's vector (see
    /// [`believe`](Core::believe)) and, for a reply to our exchange, pushes
    /// back what the peer lacks.
    pub(super) fn on_sync_states(
        &mut self,
        from: &str,
        chunk: TransferChunk,
        now: Instant,
    ) -> Outgoing {
        let (session, push) = (chunk.session, chunk.push);
        let Some(mut inbox) = self.take_complete_transfer(from, chunk, now) else {
            return Vec::new();
        };
        let applied = inbox.applied.take();
        let Some(their_applied) = self.check_transfer_vector(from, push, applied) else {
            return Vec::new();
        };
        // Behind a queued transfer, even a small one waits its turn: its
        // vector may name what the queued one brings.
        // While a published one is folded, it waits too: finishing it
        // would read the folded tables (a reply's push back).
        if inbox.entries > TRANSFER_MERGE_SLICE_KEYS_MAX as u64
            || !self.transfers.is_empty()
            || self.folding
        {
            self.queue_transfer(from, session, push, their_applied, inbox);
            return Vec::new();
        }
        let Some((set_aside, received)) = self.merge_transfer(from, session, push, inbox.chunks)
        else {
            return Vec::new();
        };
        let merged = MergedTransfer {
            session,
            push,
            their_applied,
            set_aside,
            received,
            buckets: inbox.buckets,
        };
        self.finish_transfer(from, merged, now)
    }

    /// A transfer from `from` is merged (and, merged in slices, published):
    /// takes in its vector, drains the causal buffer, acknowledges what it
    /// caught up on and confirms the push, or pushes back for a reply.
    pub(super) fn finish_transfer(
        &mut self,
        from: &str,
        merged: MergedTransfer,
        now: Instant,
    ) -> Outgoing {
        let MergedTransfer {
            session,
            push,
            their_applied,
            set_aside,
            received,
            buckets,
        } = merged;
        // We now hold everything their vector names: of the sender's own
        // writes, all of it; of a peer's, what that peer has told us it
        // made; of any other replica (a former id, a retired region, one we
        // never met), all of it. A claim beyond is a hint.
        let before = self.applied.clone();
        // With values set aside we hold less than the vector names: it is
        // not believed at all (what we merged shows in reads; the next
        // exchange brings the rest and the vector).
        let hints = if set_aside == 0 {
            self.believe(from, &their_applied)
        } else {
            Vec::new()
        };
        self.generation += 1;
        self.remote_generation += 1;
        self.drain_buffer();
        let mut out: Outgoing = Vec::new();
        for name in hints {
            out.extend(self.start_sync(&name, now));
        }
        out.extend(self.acks_for_caught_up(&before));
        if push {
            if self.answered.get(from) == Some(&session) {
                self.answered.remove(from);
            }
            tracing::info!(region = %self.name, peer = from, session, "anti-entropy: caught up from the peer's push");
            self.counters.syncs_completed += 1;
            // The exchange's starter keeps its peer marked for repair until
            // it hears this.
            out.push((from.to_owned(), Message::SyncDone { session }));
            return out;
        }
        // A transfer merged in slices: the exchange may have ended (or a
        // new one started) meanwhile.
        if self.syncs.get(from).is_none_or(|s| s.session != session) {
            return out;
        }
        let Some(sync) = self.syncs.remove(from) else {
            return out;
        };
        if self.folding {
            // Its digests would fold the rest at once: pushed once folded.
            self.hold_for_fold(HeldForFold::PushBack {
                from: from.to_owned(),
                session,
                sync,
                buckets,
                received,
            });
            return out;
        }
        out.extend(self.push_back(from, session, &sync, buckets, &received, now));
        out
    }

    /// The vector a complete transfer from `from` ends with: refused when
    /// missing, or when it claims writes of ours we never made.
    fn check_transfer_vector(
        &mut self,
        from: &str,
        push: bool,
        applied: Option<VersionVector>,
    ) -> Option<VersionVector> {
        let Some(their_applied) = applied else {
            self.abort_sync(from, push);
            self.reject(
                from,
                RejectReason::Malformed,
                "sync transfer without its applied vector",
            );
            return None;
        };
        if their_applied.get(self.replica) > self.seq {
            // Writes of ours we never made: a forgery, or a previous process
            // with our replica id. Believing it would make us skip our own
            // next writes everywhere.
            self.abort_sync(from, push);
            self.reject(
                from,
                RejectReason::ForgedClaim,
                "sync transfer claims writes of ours we never made",
            );
            return None;
        }
        Some(their_applied)
    }

    /// Merges every chunk of a transfer at once. Returns how many values
    /// were set aside and, for a reply (not a push), the hashes of the
    /// entries received (our push back skips them); `None` when the
    /// transfer was refused.
    fn merge_transfer(
        &mut self,
        from: &str,
        session: u64,
        push: bool,
        chunks: Vec<Option<(Vec<String>, Blob)>>,
    ) -> Option<(usize, HashSet<u64>)> {
        let all: Vec<(Vec<String>, Blob)> = chunks.into_iter().flatten().collect();
        let parts: Vec<(&[String], &[u8])> = all
            .iter()
            .map(|(tables, packed)| (tables.as_slice(), packed.0.as_slice()))
            .collect();
        let entries = || {
            parts.iter().flat_map(|(tables, packed)| {
                Entries::new(packed, tables.len())
                    .flatten()
                    .map(move |(t, k, v)| (&tables[t], k, v))
            })
        };
        let received: HashSet<u64> = if push {
            HashSet::new()
        } else {
            entries().map(|(t, k, v)| entry_hash(t, k, v)).collect()
        };
        self.counters.sync_states_received += entries().count() as u64;
        // Every chunk is here: merge them all at once, so no reader sees
        // part of the transfer (a reply without its post).
        let mut groups = match self.transfer_entry_groups(from, session, push, &parts) {
            Ok(groups) => groups,
            Err(why) => {
                self.abort_sync(from, push);
                self.reject(from, RejectReason::Malformed, &why);
                return None;
            }
        };
        let Some(set_aside) = self.merge_entries(from, &parts, AheadValues::SetAside, &mut groups)
        else {
            self.abort_sync(from, push);
            return None;
        };
        self.learn_groups(groups);
        Some((set_aside, received))
    }

    /// Acknowledgements to the origins whose writes we caught up on since
    /// `before` (to the origin's peer, or to every connected peer when no
    /// peer is bound to it), so they stop resending.
    fn acks_for_caught_up(&self, before: &VersionVector) -> Outgoing {
        let mut out = Vec::new();
        for (origin, n) in self.applied.iter() {
            if n > before.get(origin) && origin != self.replica {
                let known = self.peers.iter().any(|(_, p)| p.replica == Some(origin));
                for (name, p) in &self.peers {
                    if p.connected && (p.replica == Some(origin) || !known) {
                        out.push((name.clone(), Message::Ack { origin, applied: n }));
                    }
                }
            }
        }
        out
    }

    /// Our exchange `sync` with `from` got its reply: pushes back the
    /// buckets that differed (`differed`), and every bucket of ours that
    /// changed since we sent our digests (writes and batches applied
    /// meanwhile), with our current applied vector: the peer then holds
    /// our whole current state, which is causally closed. Entries it sent
    /// us (`received`) are not sent back.
    pub(super) fn push_back(
        &mut self,
        from: &str,
        session: u64,
        sync: &SyncState,
        differed: Vec<(String, Vec<u32>)>,
        received: &HashSet<u64>,
        now: Instant,
    ) -> Outgoing {
        let seq = self.seq;
        self.peer(from, now).push_pending = Some((session, seq, now));
        self.counters.syncs_completed += 1;
        if let Some(range) = &sync.ranges {
            let selection = self.push_selection(range);
            tracing::info!(region = %self.name, peer = from, session, "anti-entropy by ranges: caught up; pushing back");
            let applied = self.transfer_claims();
            self.shipped_transfer(from, &applied);
            return self.states_chunks(from, session, true, selection, applied, received);
        }
        let mut push_buckets = differed;
        for (table, changed) in self.changed_since(sync) {
            match push_buckets.iter_mut().find(|(t, _)| *t == table) {
                Some((_, list)) => {
                    list.extend(changed);
                    list.sort_unstable();
                    list.dedup();
                }
                None => push_buckets.push((table, changed)),
            }
        }
        tracing::info!(
            region = %self.name,
            peer = from,
            session,
            buckets = push_buckets.iter().map(|(_, b)| b.len()).sum::<usize>(),
            "anti-entropy: caught up; pushing back"
        );
        let applied = self.transfer_claims();
        self.shipped_transfer(from, &applied);
        let selection = Selection::Buckets(push_buckets);
        self.states_chunks(from, session, true, selection, applied, received)
    }

    /// The buckets of each table whose digest changed since `sync`'s
    /// digests were taken (every non-empty bucket of a table it did not
    /// list); tables with none are left out.
    fn changed_since(&mut self, sync: &SyncState) -> Vec<(String, Vec<u32>)> {
        let now_digests = self.digests();
        let mut changed_tables = Vec::new();
        for (table, digests) in now_digests {
            let before = sync
                .digests
                .iter()
                .find(|(t, _)| *t == table)
                .map(|(_, d)| d);
            let changed: Vec<u32> = (0..DIGEST_BUCKETS)
                .filter(|&b| before.is_none_or(|d| d[b] != digests[b]))
                .filter(|&b| before.is_some() || digests[b] != 0)
                .map(|b| b as u32)
                .collect();
            if !changed.is_empty() {
                changed_tables.push((table, changed));
            }
        }
        changed_tables
    }

    /// Takes in a transfer's vector from `from`, whose states we merged:
    /// its claim about its own writes raises `applied` (its data, which it
    /// vouches for; were it false, only its own writes would suffer), every
    /// other claim only `believed` (see there). Returns the connected
    /// peers to start an exchange with: regions it claims more of than
    /// they told us (they may have written since; an exchange with them
    /// settles it).
    pub(super) fn believe(&mut self, from: &str, claims: &VersionVector) -> Vec<String> {
        let sender = self.peers.get(from).and_then(|p| p.replica);
        let mut hinted = Vec::new();
        for (r, n) in claims.iter() {
            if r == self.replica {
                continue; // checked against our own count
            }
            if Some(r) == sender {
                self.applied.raise(r, n);
                continue;
            }
            // Only a region that still speaks for itself (the current
            // replica of a peer of ours) can be asked: a former id, a
            // retired one or one we never met has no one to ask.
            let known = self.peer_of(r).and_then(|_| self.issued.get(&r).copied());
            if known.is_some_and(|k| k < n) && self.applied.get(r) < n {
                hinted.push(r);
            }
            // Replicas heard of only by claims are bounded: each grows
            // every vector and session token we hand out.
            if self.believed.get(r) == 0
                && self.applied.get(r) == 0
                && known.is_none()
                && self.believed.len() >= BELIEVED_REPLICAS_MAX
            {
                self.counters.untrusted_claims += 1;
                tracing::warn!(region = %self.name, peer = from, replica = %r, "rejected input: a claim about one replica too many heard of only by claims");
                continue;
            }
            self.believed.raise(r, n);
        }
        if hinted.is_empty() {
            return Vec::new();
        }
        self.counters.untrusted_claims += hinted.len() as u64;
        tracing::debug!(region = %self.name, peer = from, regions = ?hinted, "anti-entropy: claims about regions beyond what they told us; asking them");
        self.peers
            .iter()
            .filter(|(name, p)| {
                p.connected
                    && !p.unconfirmed()
                    && p.refused.is_none()
                    && p.replica.is_some_and(|r| hinted.contains(&r))
                    && !self.syncs.contains_key(*name)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// An exchange that cannot complete: forget it; the peer stays due for
    /// repair.
    pub(super) fn abort_sync(&mut self, from: &str, push: bool) {
        if push {
            self.answered.remove(from);
        } else if self.syncs.remove(from).is_some()
            && let Some(peer) = self.peers.get_mut(from)
        {
            peer.flag_repair();
        }
    }

    /// Forgets exchanges and transfers that went quiet, so the next one can
    /// start (the clock restarts with every chunk received).
    pub(crate) fn expire_syncs(&mut self, now: Instant) {
        let timeout = self.config.sync_timeout;
        let peers = &self.peers;
        self.syncs.retain(|name, _| {
            peers
                .get(name)
                .and_then(|p| p.last_sync)
                .is_some_and(|t| now.duration_since(t) < timeout)
        });
        self.sync_inbox
            .retain(|_, inbox| now.duration_since(inbox.at) < timeout);
        self.expire_range_syncs(now);
    }
}

/// What a transfer ships of our tables.
pub(crate) enum Selection {
    /// Every key of these buckets, per table (an exchange by buckets).
    Buckets(Vec<(String, Vec<u32>)>),
    /// These keys, per table (an exchange by ranges).
    Keys(Vec<(String, TableKeys)>),
}

/// The keys of one table a transfer by ranges ships.
pub(crate) enum TableKeys {
    /// Every key (the peer did not list the table).
    All,
    /// These (those the table does not hold are skipped).
    Some(Vec<Key>),
}

/// One chunk of a state transfer, as a [`Message::SyncStates`] carries it.
pub(super) struct TransferChunk {
    /// The exchange it belongs to.
    pub(super) session: u64,
    /// A push (answering the reply we sent) rather than a reply to our
    /// exchange.
    pub(super) push: bool,
    /// Its index, below `chunks`.
    pub(super) chunk: u32,
    /// How many chunks the transfer has.
    pub(super) chunks: u32,
    pub(super) sent_at: Timestamp,
    /// The buckets the transfer covers (named by the first chunk).
    pub(super) buckets: Vec<(String, Vec<u32>)>,
    /// Its table names and packed entries.
    pub(super) part: (Vec<String>, Blob),
    /// The sender's vector, carried by the last chunk.
    pub(super) applied: Option<VersionVector>,
}
