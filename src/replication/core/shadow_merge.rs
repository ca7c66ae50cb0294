//! Large anti-entropy transfers merged in slices, shown at once.
//!
//! A transfer of more than [`TRANSFER_MERGE_SLICE_KEYS_MAX`] entries is not
//! merged in the hold of the state's lock that files its last chunk (a 1M-key
//! transfer held it for 0.5-0.8 s, and every local read and write waits on
//! that lock). It is queued; the engine merges it a slice at a time, one hold
//! per slice, into *pending* values kept beside the current ones (see
//! `store::Shadow`): readers keep reading the current values, so they never
//! see part of a transfer (part of a transaction). Local writes and applied
//! batches that touch a key with a pending value join their delta into both
//! (a join: idempotent). After the last slice one flag per table publishes
//! the whole transfer at once (O(tables), not O(keys)), and only then is the
//! transfer's vector taken in ([`finish_transfer`](Core::finish_transfer)):
//! batches that depend on it wait in the causal buffer until then. The
//! pending values are then folded into the current ones,
//! [`TRANSFER_FOLD_SLICE_KEYS_MAX`] per hold (reads find them meanwhile).
//!
//! Exchange work that reads whole tables (digests, the range index: both
//! fold what is left first) waits while the values are folded instead of
//! folding them all in one hold: an exchange we would start is started by
//! the tick once folded (`wants_exchange`), a peer's exchange message and
//! our push back are held ([`HeldForFold`], at most [`HELD_FOR_FOLD_MAX`])
//! and handled after the last fold slice, and a transfer completed
//! meanwhile is queued behind the fold.
//!
//! Nothing pending is stored: a commit stores current values and the vector,
//! which does not name the pending transfer, so a crash loses the transfer
//! whole and the next exchange repairs it. A commit after the publish folds
//! what is left first, so what it stores covers the vector it stores.

use super::receive::MergeInto;
use super::tx_groups::{EntryGroups, ReceivedGroups};
use super::*;
use crate::replication::message::push_entry;

/// Entries of a transfer merged per hold of the state's lock: decoding and
/// merging 64 `GCounter` states takes ~30 µs in a debug build; a transfer of
/// at most this many is merged at once, as a batch is.
pub(crate) const TRANSFER_MERGE_SLICE_KEYS_MAX: usize = 64;

/// Published pending values folded into the current ones per hold of the
/// state's lock (a fold moves a value and joins it: cheaper than a merge).
pub(crate) const TRANSFER_FOLD_SLICE_KEYS_MAX: usize = 256;

/// Transfers of one peer queued at once: a reply to our exchange and a
/// push answering our reply (more only from a peer that starts exchanges
/// faster than we merge them: each queued one holds up to
/// `sync_transfer_bytes_max`).
pub(crate) const TRANSFERS_QUEUED_PER_PEER_MAX: usize = 2;

/// Exchange work held while a published transfer is folded, at most: a
/// peer has one exchange with us and we one with it, a round at a time;
/// past it the oldest is dropped (its exchange times out and is retried).
pub(crate) const HELD_FOR_FOLD_MAX: usize = 16;

/// Exchange work that reads whole tables, held while a published transfer
/// is folded (see the module page); a peer's is forgotten when its
/// connection changes.
pub(crate) enum HeldForFold {
    /// A peer's exchange message (a request, or a round by ranges).
    Message { from: String, message: Message },
    /// Our exchange's push back, its reply merged and published.
    PushBack {
        from: String,
        session: u64,
        sync: SyncState,
        buckets: Vec<(String, Vec<u32>)>,
        received: HashSet<u64>,
    },
}

impl HeldForFold {
    fn peer(&self) -> &str {
        match self {
            HeldForFold::Message { from, .. } | HeldForFold::PushBack { from, .. } => from,
        }
    }
}

/// A complete transfer waiting to be merged, slice by slice.
pub(crate) struct PendingTransfer {
    from: String,
    session: u64,
    push: bool,
    their_applied: VersionVector,
    /// The buckets the transfer covers (a reply's push back needs them).
    buckets: Vec<(String, Vec<u32>)>,
    chunks: Vec<(Vec<String>, Blob)>,
    /// The next slice starts at byte `offset` of chunk `chunk`.
    chunk: usize,
    offset: usize,
    /// For a reply: hashes of the entries merged (the push back skips them).
    received: HashSet<u64>,
    /// Values set aside so far (stamped past our clock's bound).
    set_aside: usize,
    /// The transaction groups the sender named (protocol 7 on), by table:
    /// their entries are deferred out of the slices and merged together
    /// after the last one ([`merge_deferred`](Core::merge_deferred)), so a
    /// value set aside takes its transaction's other values with it.
    groups: Option<ReceivedGroups>,
    members: HashMap<String, HashSet<Vec<u8>>>,
    /// The deferred entries, packed as a chunk's, over `deferred_tables`.
    deferred_tables: Vec<String>,
    deferred: Vec<u8>,
}

/// What a merged transfer leaves to [`Core::finish_transfer`].
pub(crate) struct MergedTransfer {
    pub(crate) session: u64,
    pub(crate) push: bool,
    pub(crate) their_applied: VersionVector,
    pub(crate) set_aside: usize,
    pub(crate) received: HashSet<u64>,
    pub(crate) buckets: Vec<(String, Vec<u32>)>,
}

/// The byte length of the first `n` entries of `packed` (all of it when it
/// holds fewer), whose framing was checked when its chunk was filed.
fn slice_len(packed: &[u8], n: usize) -> usize {
    let mut rest = packed;
    for _ in 0..n {
        if rest.is_empty() {
            break;
        }
        let framed = wire::take_len(&mut rest)
            .and_then(|_| wire::take_bytes(&mut rest))
            .and_then(|_| wire::take_bytes(&mut rest));
        if framed.is_err() {
            return packed.len();
        }
    }
    packed.len() - rest.len()
}

impl Core {
    /// Queues a complete transfer from `from` to be merged in slices.
    pub(super) fn queue_transfer(
        &mut self,
        from: &str,
        session: u64,
        push: bool,
        their_applied: VersionVector,
        inbox: SyncInbox,
    ) {
        let queued = self.transfers.iter().filter(|t| t.from == from).count();
        if queued >= TRANSFERS_QUEUED_PER_PEER_MAX {
            tracing::warn!(region = %self.name, peer = from, session, queued, "anti-entropy: a transfer dropped, the peer's earlier ones are still being merged; a later exchange repairs what it held");
            self.abort_sync(from, push);
            return;
        }
        tracing::debug!(region = %self.name, peer = from, session, push, entries = inbox.entries, queued = self.transfers.len(), "anti-entropy: transfer merged in slices");
        let groups = self.take_received_groups(from, session, push);
        let mut members: HashMap<String, HashSet<Vec<u8>>> = HashMap::new();
        for (table, key) in groups.iter().flat_map(ReceivedGroups::members) {
            members.entry(table).or_default().insert(key);
        }
        self.transfers.push_back(PendingTransfer {
            from: from.to_owned(),
            session,
            push,
            their_applied,
            buckets: inbox.buckets,
            chunks: inbox.chunks.into_iter().flatten().collect(),
            chunk: 0,
            offset: 0,
            received: HashSet::new(),
            set_aside: 0,
            groups,
            members,
            deferred_tables: Vec::new(),
            deferred: Vec::new(),
        });
    }

    /// Whether a transfer waits to be merged or folded: the engine then
    /// calls [`merge_transfer_slice`](Core::merge_transfer_slice) between
    /// other work.
    pub(crate) fn transfer_work_pending(&self) -> bool {
        self.folding || !self.transfers.is_empty() || !self.held_for_fold.is_empty()
    }

    /// One bounded step of the transfers waiting: folds a slice of the
    /// published one, or merges the next slice of the first queued one
    /// (publishing it after its last slice). Returns what finishing a
    /// transfer answers.
    pub(crate) fn merge_transfer_slice(&mut self, now: Instant) -> Outgoing {
        if self.folding {
            self.fold_slice(TRANSFER_FOLD_SLICE_KEYS_MAX);
            return Vec::new();
        }
        if !self.held_for_fold.is_empty() {
            // Folded (by the last slice, or a commit): what waited for it.
            return self.replay_held_for_fold(now);
        }
        let Some(mut transfer) = self.transfers.pop_front() else {
            return Vec::new();
        };
        if !self.merge_slice(&mut transfer) {
            for table in &mut self.tables {
                table.store.discard_pending();
            }
            self.abort_sync(&transfer.from, transfer.push);
            return Vec::new();
        }
        if let Some(peer) = self.peers.get_mut(&transfer.from) {
            // Merging keeps the exchange alive (see `expire_syncs`).
            peer.last_sync = Some(now);
        }
        if transfer.chunk < transfer.chunks.len() {
            self.transfers.push_front(transfer);
            return Vec::new();
        }
        if !self.merge_deferred(&mut transfer) {
            for table in &mut self.tables {
                table.store.discard_pending();
            }
            self.abort_sync(&transfer.from, transfer.push);
            return Vec::new();
        }
        self.publish_transfer(transfer, now)
    }

    /// Merges the next slice of `transfer` into pending values; false when
    /// it was refused (nothing published: the pending values are dropped).
    fn merge_slice(&mut self, transfer: &mut PendingTransfer) -> bool {
        let Some((tables, packed)) = transfer.chunks.get(transfer.chunk) else {
            return true;
        };
        let rest = &packed.0[transfer.offset..];
        let part = &rest[..slice_len(rest, TRANSFER_MERGE_SLICE_KEYS_MAX)];
        let mut n = 0u64;
        let mut deferred = Vec::new();
        for (i, (t, k, v)) in Entries::new(part, tables.len()).flatten().enumerate() {
            n += 1;
            if !transfer.push {
                transfer.received.insert(entry_hash(&tables[t], k, v));
            }
            if transfer
                .members
                .get(&tables[t])
                .is_some_and(|keys| keys.contains(k))
            {
                deferred.push(i);
                let position = match transfer
                    .deferred_tables
                    .iter()
                    .position(|d| *d == tables[t])
                {
                    Some(p) => p,
                    None => {
                        transfer.deferred_tables.push(tables[t].clone());
                        transfer.deferred_tables.len() - 1
                    }
                };
                push_entry(&mut transfer.deferred, position, k, v);
            }
        }
        debug_assert!(
            n as usize <= TRANSFER_MERGE_SLICE_KEYS_MAX,
            "a slice is bounded"
        );
        self.counters.sync_states_received += n;
        let parts = [(tables.as_slice(), part)];
        let from = transfer.from.clone();
        let merged = self.merge_entries_into(
            &from,
            &parts,
            AheadValues::SetAside,
            &mut EntryGroups::default(),
            &deferred,
            MergeInto::Pending,
        );
        let Some(aside) = merged else {
            return false;
        };
        transfer.set_aside += aside;
        transfer.offset += part.len();
        if transfer.offset == packed.0.len() {
            transfer.chunk += 1;
            transfer.offset = 0;
        }
        true
    }

    /// After the last slice of `transfer`: merges its deferred entries (the
    /// members of the transaction groups its sender named) together into
    /// pending values, setting aside every group one of whose values is set
    /// aside (see `tx_groups`). At most `TRANSFER_GROUP_MEMBERS_MAX` entries
    /// (what a sender may name), in one hold. False when refused (a group
    /// naming a key the transfer does not carry): nothing is published.
    fn merge_deferred(&mut self, transfer: &mut PendingTransfer) -> bool {
        let Some(received) = transfer.groups.take() else {
            return true;
        };
        let tables = std::mem::take(&mut transfer.deferred_tables);
        let packed = std::mem::take(&mut transfer.deferred);
        let parts = [(tables.as_slice(), packed.as_slice())];
        let mut groups = match self.entry_groups(&received, &parts) {
            Ok(groups) => groups,
            Err(why) => {
                self.reject(&transfer.from, RejectReason::Malformed, &why);
                return false;
            }
        };
        let from = transfer.from.clone();
        let merged = self.merge_entries_into(
            &from,
            &parts,
            AheadValues::SetAside,
            &mut groups,
            &[],
            MergeInto::Pending,
        );
        let Some(aside) = merged else {
            return false;
        };
        transfer.set_aside += aside;
        self.learn_groups(groups);
        true
    }

    /// Shows every pending value of `transfer` at once (one flag per
    /// table), then takes in its vector ([`finish_transfer`](Core::finish_transfer)).
    fn publish_transfer(&mut self, transfer: PendingTransfer, now: Instant) -> Outgoing {
        for table in &mut self.tables {
            table.store.publish_pending();
        }
        self.folding = true;
        let PendingTransfer {
            from,
            session,
            push,
            their_applied,
            buckets,
            received,
            set_aside,
            ..
        } = transfer;
        tracing::debug!(region = %self.name, peer = %from, session, push, "anti-entropy: transfer merged in slices published");
        let merged = MergedTransfer {
            session,
            push,
            their_applied,
            set_aside,
            received,
            buckets,
        };
        self.finish_transfer(&from, merged, now)
    }

    /// Folds at most `max` published pending values (of all tables) into
    /// the current ones; clears `folding` once none is left.
    fn fold_slice(&mut self, max: usize) {
        let mut folded = Vec::new();
        let mut left = false;
        let mut budget = max;
        for slot in 0..self.tables.len() {
            folded.clear();
            left |= self.tables[slot].store.fold_pending(budget, &mut folded);
            budget -= folded.len();
            for key in &folded {
                self.rights.key_changed(slot, key);
            }
        }
        self.folding = left;
    }

    /// Holds `held` until the published transfer is folded (the oldest
    /// dropped past [`HELD_FOR_FOLD_MAX`]).
    pub(super) fn hold_for_fold(&mut self, held: HeldForFold) {
        debug_assert!(self.folding, "held only while folding");
        if self.held_for_fold.len() >= HELD_FOR_FOLD_MAX
            && let Some(dropped) = self.held_for_fold.pop_front()
        {
            tracing::debug!(region = %self.name, peer = dropped.peer(), "anti-entropy: exchange work held for the fold dropped (over HELD_FOR_FOLD_MAX); the exchange times out and is retried");
        }
        tracing::debug!(region = %self.name, peer = held.peer(), "anti-entropy: exchange work waits until the transfer is folded");
        self.held_for_fold.push_back(held);
    }

    /// Forgets what `peer` sent that waits for the fold (its connection
    /// changed: an answer would reach a conversation that ended).
    pub(super) fn forget_held_for_fold(&mut self, peer: &str) {
        self.held_for_fold.retain(|held| held.peer() != peer);
    }

    /// Handles, in order, the exchange work that waited for the fold.
    fn replay_held_for_fold(&mut self, now: Instant) -> Outgoing {
        debug_assert!(!self.folding, "replayed once folded");
        let mut out = Vec::new();
        while let Some(held) = self.held_for_fold.pop_front() {
            match held {
                HeldForFold::Message { from, message } => {
                    out.extend(self.on_message(&from, message, now));
                }
                HeldForFold::PushBack {
                    from,
                    session,
                    sync,
                    buckets,
                    received,
                } => out.extend(self.push_back(&from, session, &sync, buckets, &received, now)),
            }
        }
        out
    }

    /// Folds every published pending value (before a commit stores the
    /// vector that claims them).
    pub(crate) fn settle_transfer(&mut self) {
        while self.folding {
            self.fold_slice(usize::MAX);
        }
    }
}
