//! Transaction groups in anti-entropy transfers (protocol 7 on): a transfer
//! never shows part of a multi-key transaction the sender knows.
//!
//! A transfer merges its states under one lock, but sets aside the values
//! stamped past this region's clock bound (a writer's clock runs ahead) and
//! merges the rest (refusing it whole would let one region's clock block
//! every honest repair: review finding 6). If a transaction wrote an
//! ahead-stamped value to key `x` and an unstamped one (a counter) to key
//! `y`, merging `y` alone shows part of the transaction.
//!
//! **The rule.** The last chunk of a transfer to a peer of protocol 7 or
//! later is a [`SyncStatesGrouped`](crate::replication::message::Message::SyncStatesGrouped):
//! the chunk, and the groups of the transfer's keys that one transaction
//! wrote (each group cut down to the keys the transfer carries; groups of
//! fewer than two such keys left out). The groups ride in a chunk, so
//! they are lost, reordered or duplicated with it: a transfer never merges
//! without them. The receiver joins overlapping groups (a key whose state
//! holds several transactions links them: a union-find over the
//! transfer's entries), and sets aside the whole component of every value
//! it sets aside; the rest merges. An ahead value outside every group
//! (review finding 6) still blocks nothing else. The transfer's vector is
//! then not believed, as for any value set aside, so a later exchange
//! brings the component once the clock allows.
//!
//! **What the sender knows** ([`TxGroups`], bounded by
//! [`TX_LOG_GROUPS_MAX`], [`TX_LOG_KEYS_MAX`] and [`TX_LOG_KEY_BYTES_MAX`],
//! oldest forgotten first): its own transactions of two keys or more, and
//! the groups named by the transfers it merged (so a relay passes them on).
//! With storage the log is durable: a group is stored in the commit that
//! stores its transaction's writes (both are made under one lock take, and
//! a commit holds everything changed since the last), so a crash keeps
//! both or neither, and a restarted region names the groups of
//! transactions written before it restarted. A store of format 5 or older
//! opens with no groups. Not kept past the bound, and not for a
//! transaction this region received by batch (a batch does not mark where
//! its transactions start): a region that relays another region's
//! transaction by anti-entropy, having it by batch only, ships it without
//! its group. Batches themselves never show part of a transaction (a
//! transaction is never cut between batches, and a batch with an ahead
//! value is refused whole); truncating the outbox is unrelated (the groups
//! are kept apart from it): a transaction every peer acknowledged is
//! whole at every peer, but a region bootstrapped from empty later still
//! needs its group, which is kept while within the bound.
//!
//! **A peer's protocol not settled yet.** A transfer to a peer whose
//! protocol announcement has not arrived on the connection (lost on a
//! lossy link, or not there yet) is held, not sent plain: that peer may
//! speak protocol 7 and would merge it without its groups. A lost
//! announcement is asked for again (one per `ack_timeout`, see
//! [`Core::due_announcements`]); once it arrives the held transfer leaves
//! with its groups, as late chunks of its exchange. A peer that never
//! announces (protocol 1) gets it plain once the last of the
//! [`PROTOCOL_ANNOUNCEMENTS_MAX`] announcements went unanswered for an
//! `ack_timeout` (about 4 s with the default config: within
//! `sync_timeout`, so its exchange does not expire meanwhile; with longer
//! timeouts its first exchange expires and the next, on the settled
//! connection, goes at once). A held transfer is replaced by the next one
//! to that peer (per direction), and dropped `sync_timeout` after it was
//! held (counted in `transfers_held`). Left open: a first contact (a peer
//! never greeted before, whose frames are taken before its hello) whose
//! announcement and hello are both lost while its request arrives is
//! answered plain, as a peer that never greets is.
//!
//! **Hostile input.** Groups over [`TRANSFER_GROUPS_MAX`] groups or
//! [`TRANSFER_GROUP_MEMBERS_MAX`] members, naming a table position outside
//! their list, or (once the transfer is complete) a key the transfer does
//! not carry are refused and counted (`rejected_frames`, and
//! `tx_groups_refused`); the transfer they came with merges nothing and the
//! exchange is aborted (the peer stays due for repair). A peer of protocol
//! 6 or older gets plain chunks and its transfers merge as before; a peer
//! that sends grouped chunks speaks 7 whatever our view of it, so they are
//! taken from any peer.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::anti_entropy::TransferChunk;
use super::*;
use crate::hash::FastMap;
use crate::replication::message::GroupedChunk;
use crate::replication::store::{Key, stable_hash};

/// The first engine protocol whose transfers carry transaction groups.
pub(crate) const TRANSFER_GROUPS_PROTOCOL: u16 = 7;

/// Most transactions a region keeps the groups of.
pub(crate) const TX_LOG_GROUPS_MAX: usize = 4096;

/// Most keys, over all groups kept, a region keeps.
pub(crate) const TX_LOG_KEYS_MAX: usize = 65_536;

/// Most bytes of keys (and their tables' names), over all groups kept.
pub(crate) const TX_LOG_KEY_BYTES_MAX: usize = 8 << 20;

/// Most groups one groups frame may name: what a sender keeps.
pub(crate) const TRANSFER_GROUPS_MAX: usize = TX_LOG_GROUPS_MAX;

/// Most keys, over all its groups, one groups frame may name: what a
/// sender keeps.
pub(crate) const TRANSFER_GROUP_MEMBERS_MAX: usize = TX_LOG_KEYS_MAX;

/// A group as storage holds it: (table, key's bare encoding), sorted.
#[derive(Serialize, Deserialize)]
struct StoredGroup {
    keys: Vec<(String, Blob)>,
}

/// One transaction's keys: (table, key's bare encoding).
struct Group {
    keys: Vec<(Arc<str>, Key)>,
    bytes: usize,
}

/// A groups frame received for a transfer still being received.
pub(crate) struct ReceivedGroups {
    session: u64,
    tables: Vec<String>,
    groups: Vec<Vec<(u32, Blob)>>,
}

impl ReceivedGroups {
    /// Every (table, key) the groups name: a transfer merged in slices
    /// defers these entries and merges them together after its last slice.
    pub(crate) fn members(&self) -> HashSet<(String, Vec<u8>)> {
        self.groups
            .iter()
            .flatten()
            .map(|(t, key)| (self.tables[*t as usize].clone(), key.0.clone()))
            .collect()
    }
}

/// The multi-key transactions a region knows (see the module page), and
/// the groups frames received for transfers not yet merged.
#[derive(Default)]
pub(crate) struct TxGroups {
    /// Oldest first; the front's id is `first_id`.
    groups: VecDeque<Group>,
    first_id: u64,
    /// Keys and bytes over all groups.
    keys: usize,
    bytes: usize,
    /// Group ids by the hash of (table, key) (see [`member_hash`]): a
    /// collision only adds a candidate, checked key by key.
    by_key: FastMap<u64, Vec<u64>>,
    /// Per (peer, push): the groups frame of its latest transfer.
    received: HashMap<(String, bool), ReceivedGroups>,
    /// Per (peer, push): our latest transfer to a peer whose protocol is
    /// not settled yet (see [`Core::transfer_out`]).
    held: HashMap<(String, bool), HeldTransfer>,
}

/// A transfer held until its peer's protocol is settled: its chunks, and
/// the first tick that saw it held (it is dropped `sync_timeout` later,
/// when the exchange it belongs to has expired anyway).
struct HeldTransfer {
    chunks: Outgoing,
    seen_at: Option<Instant>,
}

fn member_hash(table: &str, key: &[u8]) -> u64 {
    stable_hash(table.as_bytes()).rotate_left(17) ^ stable_hash(key)
}

impl TxGroups {
    /// Keeps the group of a transaction that wrote `keys` (in any order,
    /// repeats allowed); fewer than two distinct keys are no group. The
    /// oldest groups are forgotten past the bounds.
    pub(crate) fn record(&mut self, keys: impl IntoIterator<Item = (Arc<str>, Key)>) {
        let mut keys: Vec<(Arc<str>, Key)> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let bytes: usize = keys.iter().map(|(t, k)| t.len() + k.len()).sum();
        if keys.len() < 2 || keys.len() > TX_LOG_KEYS_MAX || bytes > TX_LOG_KEY_BYTES_MAX {
            return;
        }
        while !self.groups.is_empty()
            && (self.groups.len() >= TX_LOG_GROUPS_MAX
                || self.keys + keys.len() > TX_LOG_KEYS_MAX
                || self.bytes + bytes > TX_LOG_KEY_BYTES_MAX)
        {
            self.forget_oldest();
        }
        let id = self.first_id + self.groups.len() as u64;
        for (table, key) in &keys {
            let ids = self.by_key.entry(member_hash(table, key)).or_default();
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
        self.keys += keys.len();
        self.bytes += bytes;
        self.groups.push_back(Group { keys, bytes });
        debug_assert!(self.groups.len() <= TX_LOG_GROUPS_MAX);
        debug_assert!(self.keys <= TX_LOG_KEYS_MAX && self.bytes <= TX_LOG_KEY_BYTES_MAX);
    }

    fn forget_oldest(&mut self) {
        let Some(group) = self.groups.pop_front() else {
            return;
        };
        let id = self.first_id;
        self.first_id += 1;
        self.keys -= group.keys.len();
        self.bytes -= group.bytes;
        for (table, key) in &group.keys {
            let hash = member_hash(table, key);
            if let Some(ids) = self.by_key.get_mut(&hash) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.by_key.remove(&hash);
                }
            }
        }
    }

    /// Groups kept.
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// The id the next group recorded gets (ids count every group ever
    /// recorded, across restarts with storage).
    pub(crate) fn next_id(&self) -> u64 {
        self.first_id + self.groups.len() as u64
    }

    /// Into `commit`: the groups from id `stored` on (those not committed
    /// yet), as storage holds them, and the id below which the stored ones
    /// are forgotten.
    pub(crate) fn add_to_commit(&self, stored: u64, commit: &mut Commit) {
        let from = stored.max(self.first_id);
        commit.tx_groups_keep_from = self.first_id;
        commit.tx_groups_put = (from..self.next_id())
            .map(|id| {
                let group = &self.groups[(id - self.first_id) as usize];
                let stored = StoredGroup {
                    keys: group
                        .keys
                        .iter()
                        .map(|(t, k)| (t.to_string(), Blob(k.to_vec())))
                        .collect(),
                };
                (id, wire::encode(&stored).expect("a group encodes"))
            })
            .collect();
    }

    /// The groups a store holds (see [`add_to_commit`](TxGroups::add_to_commit)),
    /// into an empty log: their ids go on from there.
    pub(crate) fn restore(&mut self, stored: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        debug_assert!(self.groups.is_empty(), "restored into an empty log");
        for (id, bytes) in stored {
            let group: StoredGroup = wire::decode(bytes).map_err(|e| {
                StorageError::Corrupt(format!("stored transaction group {id}: {e}"))
            })?;
            if self.groups.is_empty() {
                self.first_id = *id;
            }
            self.record(
                group
                    .keys
                    .into_iter()
                    .map(|(t, k)| (Arc::from(t.as_str()), Key::from(k.0.as_slice()))),
            );
            if self.next_id() != id + 1 {
                return Err(StorageError::Corrupt(format!(
                    "stored transaction group {id} out of sequence or not a group"
                )));
            }
        }
        Ok(())
    }

    /// The groups frame of a transfer to a peer whose entries are
    /// `shipped`: every kept group cut down to the shipped keys, those of
    /// two keys or more.
    fn frame_groups(
        &self,
        shipped: &HashSet<(&str, &[u8])>,
    ) -> (Vec<String>, Vec<Vec<(u32, Blob)>>) {
        let mut ids: Vec<u64> = shipped
            .iter()
            .filter_map(|(t, k)| self.by_key.get(&member_hash(t, k)))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut tables: Vec<String> = Vec::new();
        let mut groups = Vec::new();
        for id in ids {
            let group = &self.groups[(id - self.first_id) as usize];
            let members: Vec<&(Arc<str>, Key)> = group
                .keys
                .iter()
                .filter(|(t, k)| shipped.contains(&(&**t, &**k)))
                .collect();
            if members.len() < 2 {
                continue;
            }
            let members = members
                .into_iter()
                .map(|(table, key)| {
                    let position = match tables.iter().position(|t| **t == **table) {
                        Some(p) => p,
                        None => {
                            tables.push(table.to_string());
                            tables.len() - 1
                        }
                    };
                    (position as u32, Blob(key.to_vec()))
                })
                .collect();
            groups.push(members);
        }
        (tables, groups)
    }
}

/// The entries of one transfer, joined by the groups its sender named:
/// entries (by index, in transfer order) in one component are merged
/// together or set aside together.
#[derive(Default)]
pub(crate) struct EntryGroups {
    /// Union-find parents, one per entry; empty without groups.
    parent: Vec<usize>,
    /// The groups, as (table, key), kept once the transfer merged.
    named: Vec<Vec<(Arc<str>, Key)>>,
}

impl EntryGroups {
    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }

    /// The entries (by index, in order) sharing a component with one of
    /// the `set_aside` entries (sorted), those themselves left out.
    pub(crate) fn closure(&mut self, set_aside: &[usize]) -> Vec<usize> {
        if self.parent.is_empty() || set_aside.is_empty() {
            return Vec::new();
        }
        let roots: HashSet<usize> = set_aside.iter().map(|&i| self.root(i)).collect();
        (0..self.parent.len())
            .filter(|&i| set_aside.binary_search(&i).is_err() && roots.contains(&self.root(i)))
            .collect()
    }
}

impl Core {
    /// Keeps the group of a local transaction that wrote `writes` (table
    /// slot, key), for this region's transfers to name.
    pub(crate) fn record_transaction<'a>(
        &mut self,
        writes: impl Iterator<Item = (usize, &'a [u8])>,
    ) {
        let keys: Vec<(Arc<str>, Key)> = writes
            .map(|(slot, key)| (self.tables[slot].name.clone(), Key::from(key)))
            .collect();
        if keys.len() > 1 {
            self.tx_groups.record(keys);
        }
    }

    /// True while `peer` may speak [`TRANSFER_GROUPS_PROTOCOL`] or later
    /// without our knowing it: we speak it, it greeted us on this
    /// connection (its announcement goes before its hello), and its
    /// announcement has not arrived, nor did the last of our
    /// [`PROTOCOL_ANNOUNCEMENTS_MAX`] announcements stay unanswered for an
    /// `ack_timeout` (only then is it taken to speak protocol 1; `now` is
    /// `None` when the time is not known: not settled that way yet). A
    /// peer not greeted yet is answered as before (see the module page).
    fn transfer_protocol_pending(&self, peer: &PeerState, now: Option<Instant>) -> bool {
        let exhausted = peer.protocol_reannounced >= PROTOCOL_ANNOUNCEMENTS_MAX
            && now.is_some_and(|now| {
                peer.protocol_announced
                    .is_none_or(|t| now.duration_since(t) >= self.config.ack_timeout)
            });
        self.config.protocol_version_max >= TRANSFER_GROUPS_PROTOCOL
            && peer.greeted
            && !peer.protocol_heard
            && !exhausted
    }

    /// The chunks `out` of a transfer to `to`, as they leave: the last
    /// names the transfer's groups when `to` speaks
    /// [`TRANSFER_GROUPS_PROTOCOL`] or later. While `to`'s protocol is not
    /// settled (its announcement lost, or not arrived yet) the transfer
    /// is held, not sent plain: a peer of protocol 7 would merge it without
    /// its groups. It leaves from [`due_held_transfers`](Core::due_held_transfers)
    /// once the protocol is settled, as late chunks of its exchange.
    pub(super) fn transfer_out(&mut self, to: &str, mut out: Outgoing) -> Outgoing {
        let pending = self
            .peers
            .get(to)
            .is_some_and(|p| self.transfer_protocol_pending(p, None));
        if !pending {
            self.add_transfer_groups(to, &mut out);
            return out;
        }
        let push = match out.first() {
            Some((_, Message::SyncStates { push, .. })) => *push,
            _ => return out,
        };
        tracing::debug!(region = %self.name, peer = to, push, "anti-entropy: transfer held until the peer's protocol is settled");
        self.counters.transfers_held += 1;
        let held = HeldTransfer {
            chunks: out,
            seen_at: None,
        };
        self.tx_groups.held.insert((to.to_owned(), push), held);
        Vec::new()
    }

    /// The held transfers (see [`transfer_out`](Core::transfer_out)) whose
    /// peer's protocol is now settled, with their groups when it speaks
    /// [`TRANSFER_GROUPS_PROTOCOL`] or later. One held past `sync_timeout`
    /// (its peer gone, its exchange expired) is dropped.
    pub(crate) fn due_held_transfers(&mut self, now: Instant) -> Outgoing {
        if self.tx_groups.held.is_empty() {
            return Vec::new();
        }
        let timeout = self.config.sync_timeout;
        let mut due = Vec::new();
        let mut held = std::mem::take(&mut self.tx_groups.held);
        held.retain(|(to, push), transfer| {
            let seen_at = *transfer.seen_at.get_or_insert(now);
            match self.peers.get(to) {
                Some(p) if self.transfer_protocol_pending(p, Some(now)) => {
                    if now.duration_since(seen_at) < timeout {
                        return true;
                    }
                    tracing::debug!(region = %self.name, peer = %to, push, "anti-entropy: held transfer dropped: the peer's protocol never settled");
                }
                Some(_) => due.push((to.clone(), std::mem::take(&mut transfer.chunks))),
                None => {}
            }
            false
        });
        self.tx_groups.held = held;
        let mut out = Vec::new();
        for (to, mut chunks) in due {
            self.add_transfer_groups(&to, &mut chunks);
            out.extend(chunks);
        }
        out
    }

    /// Turns the last chunk of a transfer to `to` in `out` (the transfer's
    /// chunks) into a [`Message::SyncStatesGrouped`] naming the transfer's
    /// known groups, when `to` speaks [`TRANSFER_GROUPS_PROTOCOL`] or later
    /// (settled: see [`transfer_out`](Core::transfer_out)).
    fn add_transfer_groups(&self, to: &str, out: &mut Outgoing) {
        if self
            .peers
            .get(to)
            .is_none_or(|p| p.protocol < TRANSFER_GROUPS_PROTOCOL)
        {
            return;
        }
        let mut shipped: HashSet<(&str, &[u8])> = HashSet::new();
        if self.tx_groups.len() > 0 {
            for (_, message) in out.iter() {
                if let Message::SyncStates {
                    tables, entries, ..
                } = message
                {
                    for (t, k, _) in Entries::new(&entries.0, tables.len()).flatten() {
                        shipped.insert((tables[t].as_str(), k));
                    }
                }
            }
        }
        let (group_tables, groups) = self.tx_groups.frame_groups(&shipped);
        debug_assert!(groups.len() <= TRANSFER_GROUPS_MAX);
        let Some((_, last)) = out.last_mut() else {
            return;
        };
        let Message::SyncStates {
            session,
            push,
            chunk,
            chunks,
            sent_at,
            buckets,
            tables,
            entries,
            applied,
        } = std::mem::replace(last, Message::SyncDone { session: 0 })
        else {
            unreachable!("a transfer is its chunks")
        };
        debug_assert!(applied.is_some(), "the last chunk carries the vector");
        *last = Message::SyncStatesGrouped(Box::new(GroupedChunk {
            session,
            push,
            chunk,
            chunks,
            sent_at,
            buckets,
            tables,
            entries,
            applied,
            group_tables,
            groups,
        }));
    }

    /// The last chunk of a transfer with its groups (see the module page):
    /// the groups are checked and filed for the transfer, and the chunk
    /// goes on as any other. Groups over their bounds or naming a table
    /// outside their list refuse the chunk (the transfer then never
    /// completes: it expires).
    pub(super) fn on_sync_states_grouped(
        &mut self,
        from: &str,
        grouped: GroupedChunk,
        now: Instant,
    ) -> Outgoing {
        let GroupedChunk {
            session,
            push,
            chunk,
            chunks,
            sent_at,
            buckets,
            tables,
            entries,
            applied,
            group_tables,
            groups,
        } = grouped;
        if !self.check_groups(from, &group_tables, &groups) {
            self.abort_sync(from, push);
            return Vec::new();
        }
        self.tx_groups.received.insert(
            (from.to_owned(), push),
            ReceivedGroups {
                session,
                tables: group_tables,
                groups,
            },
        );
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

    /// False (refused and counted) for groups over
    /// [`TRANSFER_GROUPS_MAX`] or [`TRANSFER_GROUP_MEMBERS_MAX`], or naming
    /// a table position outside `tables`.
    fn check_groups(&mut self, from: &str, tables: &[String], groups: &[Vec<(u32, Blob)>]) -> bool {
        let members: usize = groups.iter().map(Vec::len).sum();
        if groups.len() > TRANSFER_GROUPS_MAX || members > TRANSFER_GROUP_MEMBERS_MAX {
            self.counters.tx_groups_refused += 1;
            let why = format!(
                "transaction groups over TRANSFER_GROUPS_MAX ({TRANSFER_GROUPS_MAX}) groups or TRANSFER_GROUP_MEMBERS_MAX ({TRANSFER_GROUP_MEMBERS_MAX}) keys: {} groups, {members} keys",
                groups.len()
            );
            self.reject(from, RejectReason::OverLimit, &why);
            return false;
        }
        if groups
            .iter()
            .flatten()
            .any(|(t, _)| *t as usize >= tables.len())
        {
            self.counters.tx_groups_refused += 1;
            self.reject(
                from,
                RejectReason::Malformed,
                "transaction groups naming a table outside their list",
            );
            return false;
        }
        true
    }

    /// The groups of the complete transfer (`session`, `push`) from `from`
    /// over its entries `parts` (none from a peer of protocol 6 or older),
    /// or why they are refused: a key the transfer does not carry.
    pub(super) fn transfer_entry_groups(
        &mut self,
        from: &str,
        session: u64,
        push: bool,
        parts: &[(&[String], &[u8])],
    ) -> Result<EntryGroups, String> {
        let Some(received) = self.take_received_groups(from, session, push) else {
            return Ok(EntryGroups::default());
        };
        self.entry_groups(&received, parts)
    }

    /// The groups frame received for the transfer (`session`, `push`) from
    /// `from`, if any.
    pub(super) fn take_received_groups(
        &mut self,
        from: &str,
        session: u64,
        push: bool,
    ) -> Option<ReceivedGroups> {
        self.tx_groups
            .received
            .remove(&(from.to_owned(), push))
            .filter(|r| r.session == session)
    }

    /// The groups `received` over the entries `parts`, or why they are
    /// refused: a key `parts` does not carry.
    pub(super) fn entry_groups(
        &mut self,
        received: &ReceivedGroups,
        parts: &[(&[String], &[u8])],
    ) -> Result<EntryGroups, String> {
        if received.groups.is_empty() {
            return Ok(EntryGroups::default());
        }
        let mut index: HashMap<(&str, &[u8]), Vec<usize>> = HashMap::new();
        let entries = parts.iter().flat_map(|(tables, packed)| {
            Entries::new(packed, tables.len())
                .flatten()
                .map(move |(t, k, _)| (tables[t].as_str(), k))
        });
        let mut count = 0;
        for (i, member) in entries.enumerate() {
            index.entry(member).or_default().push(i);
            count = i + 1;
        }
        let mut groups = EntryGroups {
            parent: (0..count).collect(),
            named: Vec::with_capacity(received.groups.len()),
        };
        for group in &received.groups {
            let mut first = None;
            let mut named = Vec::with_capacity(group.len());
            for (t, key) in group {
                let table = received.tables[*t as usize].as_str();
                let Some(at) = index.get(&(table, key.0.as_slice())) else {
                    self.counters.tx_groups_refused += 1;
                    return Err(format!(
                        "transaction groups naming a key of table {table} the transfer does not carry"
                    ));
                };
                for &i in at {
                    let root = *first.get_or_insert(i);
                    groups.join(root, i);
                }
                named.push((Arc::from(table), Key::from(key.0.as_slice())));
            }
            groups.named.push(named);
        }
        Ok(groups)
    }

    /// Keeps the groups of a transfer that merged, so this region names
    /// them in its own transfers.
    pub(super) fn learn_groups(&mut self, groups: EntryGroups) {
        for named in groups.named {
            self.tx_groups.record(named);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, u8)]) -> Vec<(Arc<str>, Key)> {
        list.iter()
            .map(|(t, k)| (Arc::from(*t), Key::from(&[*k][..])))
            .collect()
    }

    #[test]
    fn a_transfer_names_only_the_groups_it_carries_cut_to_its_keys() {
        let mut log = TxGroups::default();
        log.record(keys(&[("a", 1), ("b", 2), ("b", 3)]));
        log.record(keys(&[("a", 9), ("a", 9)])); // one key: no group
        assert_eq!(log.len(), 1);
        let shipped: HashSet<(&str, &[u8])> = [("a", &[1u8][..]), ("b", &[3u8][..])].into();
        let (tables, groups) = log.frame_groups(&shipped);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].len(), 2, "cut down to the shipped keys");
        assert_eq!(tables.len(), 2);
        let one: HashSet<(&str, &[u8])> = [("a", &[1u8][..])].into();
        assert!(
            log.frame_groups(&one).1.is_empty(),
            "a single key is no group"
        );
    }

    #[test]
    fn the_log_forgets_its_oldest_groups_past_its_bound() {
        let mut log = TxGroups::default();
        for i in 0..TX_LOG_GROUPS_MAX + 10 {
            let k = (i as u32).to_le_bytes();
            log.record([
                (Arc::from("a"), Key::from(&k[..])),
                (Arc::from("b"), Key::from(&k[..])),
            ]);
        }
        assert_eq!(log.len(), TX_LOG_GROUPS_MAX);
        assert_eq!(log.keys, 2 * TX_LOG_GROUPS_MAX);
        let old = 0u32.to_le_bytes();
        assert!(
            !log.by_key.contains_key(&member_hash("a", &old)),
            "forgotten"
        );
        assert_eq!(log.by_key.len(), 2 * TX_LOG_GROUPS_MAX);
    }

    #[test]
    fn overlapping_groups_are_set_aside_together() {
        // Entries 0..5; groups {0, 1} and {1, 2} overlap at 1; {3, 4}.
        let mut groups = EntryGroups {
            parent: (0..5).collect(),
            named: Vec::new(),
        };
        groups.join(0, 1);
        groups.join(2, 1);
        groups.join(4, 3);
        assert_eq!(groups.closure(&[2]), vec![0, 1]);
        assert_eq!(groups.closure(&[0, 4]), vec![1, 2, 3]);
        assert!(EntryGroups::default().closure(&[0]).is_empty());
    }
}
