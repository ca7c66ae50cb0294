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
//! **What the sender knows** ([`TxGroups`], in memory, bounded by
//! [`TX_LOG_GROUPS_MAX`], [`TX_LOG_KEYS_MAX`] and [`TX_LOG_KEY_BYTES_MAX`],
//! oldest forgotten first): its own transactions of two keys or more, and
//! the groups named by the transfers it merged (so a relay passes them on).
//! Not kept past the bound, not after a restart (the log is not durable),
//! and not for a transaction this region received by batch (a batch does
//! not mark where its transactions start). Batches themselves never show
//! part of a transaction (a transaction is never cut between batches, and
//! a batch with an ahead value is refused whole); truncating the outbox is
//! unrelated (the groups are kept apart from it): a transaction every peer
//! acknowledged is whole at every peer, but a region bootstrapped from
//! empty later still needs its group, which is kept while within the
//! bound.
//!
//! **Open windows** (found by the checker of `tests/transactions.rs` once
//! its transactions end with a stamped put): a transfer sent while the
//! peer's protocol announcement is lost (our view of it: protocol 1) is
//! plain; and after restarts (crashed or not, no clock skew) values come
//! ahead too (seed 13: 9 at one region, none set aside with their
//! transactions: a restarted sender's groups are gone, and a reconnected
//! peer's protocol is unsettled; which one it was is not told apart yet),
//! so a receiver shows part of a transaction until the next exchange.
//! Closing them needs the groups kept on disk, and grouped transfers to
//! peers whose protocol is not settled yet.
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

    /// Turns the last chunk of a transfer to `to` in `out` (the transfer's
    /// chunks) into a [`Message::SyncStatesGrouped`] naming the transfer's
    /// known groups, when `to` speaks [`TRANSFER_GROUPS_PROTOCOL`] or later
    /// (by what we know of it now: while its announcement is lost the
    /// transfer is plain, see the module page).
    pub(super) fn add_transfer_groups(&self, to: &str, out: &mut Outgoing) {
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
