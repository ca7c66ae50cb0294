//! The state of one region and every rule of replication, without I/O:
//! local writes, the outbox, batches, acknowledgements, the causal buffer
//! and anti-entropy. The engine task feeds it events and sends what it
//! returns; the table handles call it for local reads and writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::message::{self, Blob, Entries, Message};
use super::outbox::{Append, Outbox};
use super::store::{
    DIGEST_BUCKETS, StageError, TableStore, UndeclaredStore, pack_states, stable_hash,
    unpack_states,
};
use crate::clock::{Dot, Hlc, ReplicaId, Timestamp, VersionVector};
use crate::hash::FastMap;
use crate::region::{HandshakeRefusal, RegionConfig};
use crate::session::SessionToken;
use crate::storage::{Commit, Progress, Snapshot, StorageError};
use crate::wire;

/// Bucket digests on the wire: fixed 8 bytes each (varints would take 9).
fn pack(digests: &[u64]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.to_le_bytes()).collect()
}

fn unpack(bytes: &[u8]) -> Option<Vec<u64>> {
    if bytes.len() != DIGEST_BUCKETS * 8 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect(),
    )
}

/// A frame to send: the peer's name and the message.
pub(crate) type Outgoing = Vec<(String, Message)>;

/// What this region knows of one peer.
pub(crate) struct PeerState {
    pub(crate) connected: bool,
    /// Our writes the peer has acknowledged applying, cumulatively.
    pub(crate) acked: u64,
    /// Our writes sent to it (acknowledged or not).
    pub(crate) sent: u64,
    /// The most of our writes it can hold first-hand from this process:
    /// writes batched or transferred to it. (What a third region passes
    /// on is only believed there, never acknowledged, see
    /// `Core::believed`.) An acknowledgement above this (or above what an
    /// earlier process of ours could have sent) is forged.
    pub(crate) shipped: u64,
    /// When `acked` last moved, or a send started from a fully acked state.
    pub(crate) progress_at: Instant,
    pub(crate) last_contact: Option<Instant>,
    /// Its replica id, once a batch from it told us.
    pub(crate) replica: Option<ReplicaId>,
    /// The highest sequence number of its writes we have heard of.
    pub(crate) its_seq_seen: u64,
    /// The outbox overflowed past what it acknowledged: anti-entropy must
    /// repair it before batches can continue.
    pub(crate) needs_sync: bool,
    pub(crate) last_sync: Option<Instant>,
    /// Our push of an exchange we started, until the peer confirms it:
    /// (session, our writes it covers, when it left). A repair is over only
    /// once the push is known to have arrived.
    pub(crate) push_pending: Option<(u64, u64, Instant)>,
    /// The incarnation of `replica` its last hello presented.
    pub(crate) incarnation: Option<u64>,
    /// Its hello arrived on the current connection.
    pub(crate) greeted: bool,
    /// A hello of it arrived once (or it was restored from storage): on a
    /// reconnect, the hellos decide whether anti-entropy is needed.
    pub(crate) known: bool,
    /// When we last sent it our hello on the current connection.
    pub(crate) hello_at: Option<Instant>,
    /// Why its hello on the current connection was refused: its frames are
    /// ignored until it connects again.
    pub(crate) refused: Option<HandshakeRefusal>,
    /// Replica ids its earlier incarnations had (newest last, at most
    /// [`FORMER_IDS_MAX`]): their late frames are ignored, not refused, and
    /// no other peer may present them.
    pub(crate) former: Vec<ReplicaId>,
}

impl PeerState {
    /// Marks the peer for repair by anti-entropy. A push already on its way
    /// covers less than the repair needs (writes were dropped since it
    /// left): its confirmation must not end the repair.
    fn flag_repair(&mut self) {
        self.needs_sync = true;
        self.push_pending = None;
    }

    /// Our writes from which on the log must be kept for it: a peer
    /// waiting for repair by anti-entropy holds none until its repair's
    /// push leaves (that covers everything), then what came after the push.
    fn log_claim(&self, seq: u64) -> u64 {
        match (self.needs_sync, self.push_pending) {
            (false, _) => self.acked,
            (true, None) => seq,
            (true, Some((_, covered, _))) => covered.max(self.acked),
        }
    }

    fn new(now: Instant) -> Self {
        PeerState {
            connected: false,
            acked: 0,
            sent: 0,
            shipped: 0,
            progress_at: now,
            last_contact: None,
            replica: None,
            its_seq_seen: 0,
            needs_sync: false,
            last_sync: None,
            push_pending: None,
            incarnation: None,
            greeted: false,
            known: false,
            hello_at: None,
            refused: None,
            former: Vec::new(),
        }
    }

    /// The peer speaks the handshake but has not greeted us on this
    /// connection yet: what it sends may still come from an incarnation we
    /// are about to replace.
    fn unconfirmed(&self) -> bool {
        self.known && !self.greeted
    }
}

/// How far above its last committed clock reading a region resumes after
/// a restart: stamps given out after that commit (and not covered by a
/// later one) are below it. A region commits its clock again once it moved
/// half this far, so the margin holds; it is kept below the default
/// `max_offset` (500 ms) so peers follow a restarted region's clock.
pub(crate) const HLC_RESUME_MARGIN_MS: u64 = 250;

/// Former replica ids kept per peer.
const FORMER_IDS_MAX: usize = 16;

/// What [`Core::merge_entries`] does with a value stamped past our clock's
/// offset bound.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AheadValues {
    /// Refuse the whole message (a batch: its origin resends it).
    RefuseFrame,
    /// Merge the rest (a transfer: state, not a step in a sequence).
    SetAside,
}

/// A batch received before the writes it depends on.
pub(crate) struct Buffered {
    from: String,
    origin: ReplicaId,
    first: u64,
    last: u64,
    deps: VersionVector,
    tables: Vec<String>,
    entries: Blob,
    /// When it arrived: one that waits too long on claims starts an
    /// exchange with its sender.
    arrived: Instant,
}

impl Buffered {
    /// Bytes it holds: entries and table names.
    fn size(&self) -> usize {
        self.entries.0.len() + self.tables.iter().map(String::len).sum::<usize>()
    }
}

/// An anti-entropy exchange this region started.
pub(crate) struct SyncState {
    session: u64,
    /// Our digests when we sent them: the push covers the buckets that
    /// changed since.
    digests: Vec<(String, Vec<u64>)>,
}

/// The chunks of one transfer, merged only once all have arrived.
pub(crate) struct SyncInbox {
    chunks: Vec<Option<(Vec<String>, Blob)>>,
    buckets: Vec<(String, Vec<u32>)>,
    applied: Option<VersionVector>,
    bytes: usize,
    /// Last chunk received: a transfer that goes quiet expires.
    at: Instant,
}

/// Most replicas `Core::believed` names: claims about further replicas
/// that neither we nor a peer of ours has met are ignored (a forger could
/// otherwise grow every vector and session token without bound).
pub(crate) const BELIEVED_REPLICAS_MAX: usize = 256;

/// Batches a peer may have in flight unacknowledged.
const INFLIGHT_BATCHES_MAX: u64 = 16;

/// Most bytes held for tables this region has not declared.
const UNDECLARED_BYTES_MAX: usize = 64 << 20;

/// Most chunks one anti-entropy transfer may announce.
const SYNC_CHUNKS_MAX: usize = 1 << 16;

/// Hash of a (table, key, encoded state) the peer sent: our push skips the
/// keys whose merged state is exactly what the peer already holds.
fn entry_hash(table: &str, key: &[u8], state: &[u8]) -> u64 {
    stable_hash(table.as_bytes())
        ^ stable_hash(key).rotate_left(21)
        ^ stable_hash(state).rotate_left(42)
}

/// A declared table.
pub(crate) struct TableSlot {
    pub(crate) name: Arc<str>,
    pub(crate) store: Box<dyn TableStore>,
    pub(crate) type_name: &'static str,
    /// Conflict counter of resolver tables (their feed's total).
    pub(crate) conflicts: Option<Box<dyn Fn() -> u64 + Send>>,
}

pub(crate) struct Core {
    pub(crate) name: String,
    pub(crate) replica: ReplicaId,
    /// How many times this replica has started (its hello says so).
    pub(crate) incarnation: u64,
    pub(crate) config: RegionConfig,
    pub(crate) hlc: Arc<Hlc>,
    /// Local writes made.
    pub(crate) seq: u64,
    /// Every write applied here, ours included.
    pub(crate) applied: VersionVector,
    /// Declared tables; a table's slot (its index here) never changes.
    pub(crate) tables: Vec<TableSlot>,
    pub(crate) table_slots: FastMap<Arc<str>, usize>,
    pub(crate) undeclared: HashMap<String, UndeclaredStore>,
    pub(crate) outbox: Outbox,
    /// Bumped whenever another region's writes are added to `applied`:
    /// the outbox cuts a segment there.
    pub(crate) remote_generation: u64,
    /// `seq` when batches were last taken: the write path wakes the engine
    /// when far more than a batch has piled up since.
    pub(crate) taken_seq: u64,
    /// Scratch for encoding a delta under the lock.
    pub(crate) delta_scratch: Vec<u8>,
    /// False for a region without a transport: its writes are not logged.
    pub(crate) replicating: bool,
    pub(crate) peers: BTreeMap<String, PeerState>,
    pub(crate) buffer: Vec<Buffered>,
    pub(crate) buffer_bytes: usize,
    pub(crate) syncs: HashMap<String, SyncState>,
    pub(crate) sync_session: u64,
    /// Anti-entropy chunks received and not yet merged, per peer: merged
    /// all at once with the last chunk, so a reader never sees part of a
    /// transfer (a reply without its post).
    pub(crate) sync_inbox: HashMap<(String, u64, bool), SyncInbox>,
    /// The exchange of each peer we answered: only its push is accepted.
    pub(crate) answered: HashMap<String, u64>,
    /// The latest exchange of each peer we answered, kept after its push
    /// (until the peer reconnects): a duplicated or late request is not
    /// answered twice, since the two replies' chunks would mix.
    pub(crate) answered_last: HashMap<String, u64>,
    /// Bumped whenever `applied` grows: session reads wait on it.
    pub(crate) generation: u64,
    pub(crate) counters: Counters,
    /// What is on disk, for a region with storage.
    pub(crate) durable: Option<Durable>,
    /// A `Local` writer waits for a commit: the engine commits when woken
    /// instead of on its tick.
    pub(crate) commit_requested: bool,
    /// The most writes each replica has presented to us itself (its
    /// hellos, its batches, the applied vector of its own transfers):
    /// what another peer claims about a replica is believed only up to
    /// this. Restored from the applied vector at a restart.
    pub(crate) issued: HashMap<ReplicaId, u64>,
    /// What peers' transfers claim of third regions (uncapped): data we
    /// may hold by their word only. It never moves `applied` (what we hold
    /// first-hand: staleness, acks, hellos and session reads go by that);
    /// it only lets buffered batches wait for no more than we may hold
    /// (`ready`), and, capped at `issued`, names what our writes depend on
    /// (`vouched`).
    pub(crate) believed: VersionVector,
    /// What our writes depend on, as vouched for (see [`Core::vouched`]),
    /// and the `remote_generation` it was computed at.
    vouched: (VersionVector, u64),
    /// Our writes made by earlier processes of this replica (restored from
    /// storage): a peer may hold any of them.
    start_seq: u64,
    /// Peers an operator removed for good, with the replica ids they had:
    /// their frames are ignored, their hellos refused, their ids never
    /// accepted from anyone, and session waits stop waiting for them.
    pub(crate) retired: BTreeMap<String, Vec<ReplicaId>>,
    /// Retired peers whose hello was refused on their current connection:
    /// counted and logged once per connection.
    retired_refused: HashSet<String>,
}

/// Where a region with storage stands with its disk.
#[derive(Default)]
pub(crate) struct Durable {
    /// Local writes committed: only these leave for peers.
    pub(crate) seq: u64,
    /// The applied vector committed: what our hello claims.
    pub(crate) applied: VersionVector,
    /// The clock reading committed.
    hlc: Timestamp,
    /// The lowest sequence number appended to the outbox since the last
    /// commit.
    outbox_from: Option<u64>,
    /// The outbox start the last commit stored.
    outbox_start: u64,
    /// Cursors changed since the last commit.
    cursors: bool,
    /// Retired peers changed since the last commit.
    retired: bool,
    /// Keys of undeclared tables that received values since the last
    /// commit.
    undeclared: Vec<(String, Box<[u8]>)>,
}

/// Plain counters for stats and tests.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches_sent: u64,
    pub(crate) batches_applied: u64,
    pub(crate) batches_buffered: u64,
    pub(crate) batches_dropped: u64,
    pub(crate) rejected_frames: u64,
    /// Values dropped because they did not decode as their table's type.
    pub(crate) undecodable_values: u64,
    pub(crate) outbox_overflows: u64,
    pub(crate) syncs_completed: u64,
    pub(crate) sync_states_received: u64,
    /// Commits to storage, and the local writes they covered.
    pub(crate) commits: u64,
    pub(crate) committed_writes: u64,
    pub(crate) commit_failures: u64,
    /// Hellos refused (each distinct refusal of a connection once).
    pub(crate) refused_handshakes: u64,
    /// Frames ignored as coming from a peer's earlier incarnation, or
    /// before its hello, or from a refused peer.
    pub(crate) stale_frames: u64,
    /// Claims of a peer about a third region beyond what that region told
    /// us itself: not believed (capped), or found out at its hello; each
    /// starts an exchange with it.
    pub(crate) untrusted_claims: u64,
    /// Values refused or set aside: stamped past our clock's offset bound.
    pub(crate) values_ahead: u64,
}

impl Core {
    pub(crate) fn new(
        name: String,
        replica: ReplicaId,
        config: RegionConfig,
        hlc: Arc<Hlc>,
    ) -> Self {
        Core {
            name,
            replica,
            incarnation: 1,
            config,
            hlc,
            seq: 0,
            applied: VersionVector::new(),
            tables: Vec::new(),
            table_slots: FastMap::default(),
            undeclared: HashMap::new(),
            outbox: Outbox::default(),
            remote_generation: 0,
            taken_seq: 0,
            delta_scratch: Vec::new(),
            replicating: true,
            peers: BTreeMap::new(),
            buffer: Vec::new(),
            buffer_bytes: 0,
            syncs: HashMap::new(),
            sync_session: 0,
            sync_inbox: HashMap::new(),
            answered: HashMap::new(),
            answered_last: HashMap::new(),
            generation: 0,
            counters: Counters::default(),
            durable: None,
            commit_requested: false,
            retired: BTreeMap::new(),
            retired_refused: HashSet::new(),
            issued: HashMap::new(),
            believed: VersionVector::new(),
            vouched: (VersionVector::new(), u64::MAX),
            start_seq: 0,
        }
    }

    /// Takes up what `snapshot` holds: progress, table states (merged into
    /// each table when it is declared), outbox and cursors. From now on
    /// every change is tracked for [`prepare_commit`](Core::prepare_commit).
    pub(crate) fn restore(&mut self, snapshot: Snapshot, now: Instant) -> Result<(), StorageError> {
        let corrupt =
            |what: &str, e: wire::WireError| StorageError::Corrupt(format!("{what}: {e}"));
        let Progress { seq, hlc, applied } = snapshot.progress;
        if applied.get(self.replica) != seq {
            return Err(StorageError::Corrupt(format!(
                "applied vector names {} of our writes, progress {seq}",
                applied.get(self.replica)
            )));
        }
        self.seq = seq;
        self.taken_seq = seq;
        self.start_seq = seq;
        self.applied = applied.clone();
        // What we applied before the restart counts as known: a replica
        // back from an old copy of its store is still refused.
        self.issued = applied.iter().filter(|&(r, _)| r != self.replica).collect();
        self.hlc.resume_after(Timestamp::new(
            hlc.physical_ms().saturating_add(HLC_RESUME_MARGIN_MS),
            0,
        ));
        for (table, key, packed) in snapshot.states {
            let values = unpack_states(&packed).map_err(|e| corrupt("stored states", e))?;
            let store = self.undeclared.entry(table).or_default();
            // Restored values do not count against the bound on values
            // held for undeclared tables: they are ours already.
            store
                .values
                .insert(key.into(), values.into_iter().map(<[u8]>::to_vec).collect());
        }
        // A region without a transport keeps no outbox.
        if self.replicating {
            for (first, bytes) in &snapshot.outbox {
                self.outbox
                    .restore(bytes)
                    .map_err(|e| corrupt(&format!("outbox segment {first}"), e))?;
            }
        }
        if let Some(start) = self.outbox.start()
            && start + self.outbox.len() as u64 != seq + 1
        {
            return Err(StorageError::Corrupt(
                "stored outbox does not end at the last write".into(),
            ));
        }
        self.retired = snapshot.retired.into_iter().collect();
        for (peer, acked) in snapshot.cursors {
            if self.retired.contains_key(&peer) {
                continue;
            }
            let state = self.peer(&peer, now);
            state.acked = acked.min(seq);
            state.sent = state.acked;
            state.known = true;
            // The periodic exchange keeps its rhythm across a restart.
            state.last_sync = Some(now);
        }
        self.durable = Some(Durable {
            seq,
            applied,
            hlc,
            outbox_from: None,
            outbox_start: self.outbox.start().unwrap_or(seq + 1),
            cursors: false,
            retired: false,
            undeclared: Vec::new(),
        });
        Ok(())
    }

    /// `replica` told us itself it made `writes` (see `issued`).
    fn heard_from(&mut self, replica: ReplicaId, writes: u64) {
        let issued = self.issued.entry(replica).or_default();
        if writes > *issued {
            *issued = writes;
            // What our writes may depend on changed.
            self.remote_generation += 1;
        }
    }

    /// What this region holds, as session reads and operators see it: what
    /// it holds first-hand, and what peers passed on of replicas no peer
    /// speaks for (a former id of a restarted region, a retired one, one we
    /// never met): nobody will ever confirm those, so a peer's word is all
    /// there is (and the vectors of regions that converged are equal). Of
    /// a peer's current replica only its own batches and transfers count.
    pub(crate) fn held(&self) -> std::borrow::Cow<'_, VersionVector> {
        let unconfirmable = |r: ReplicaId, n: u64| {
            n > self.applied.get(r) && !self.peers.values().any(|p| p.replica == Some(r))
        };
        if !self.believed.iter().any(|(r, n)| unconfirmable(r, n)) {
            return std::borrow::Cow::Borrowed(&self.applied);
        }
        let mut held = self.applied.clone();
        for (r, n) in self.believed.iter() {
            if unconfirmable(r, n) {
                held.raise(r, n);
            }
        }
        std::borrow::Cow::Owned(held)
    }

    /// What our next write depends on: everything we hold first-hand
    /// (`applied`), and of what we hold by a peer's word (`believed`) no
    /// more than each replica told us itself it made (`issued`). A claim
    /// about a third region can thus never make our batches wait, at a
    /// region that knows better, for writes that do not exist. (A peer
    /// inflating its own count in a transfer is believed, as only it can
    /// speak for itself: a region that knows better holds our batches back
    /// until an exchange with us, see [`due_syncs`](Core::due_syncs).)
    /// Recomputed only when `remote_generation` moved.
    fn vouched(&mut self) -> &VersionVector {
        if self.vouched.1 != self.remote_generation {
            let mut deps: VersionVector = self
                .believed
                .iter()
                .filter(|&(r, _)| r != self.replica)
                .map(|(r, n)| (r, n.min(self.issued.get(&r).copied().unwrap_or(0))))
                .collect();
            deps.merge(&self.applied);
            debug_assert!(
                deps.iter()
                    .all(|(r, n)| n <= self.applied.get(r).max(self.believed.get(r))),
                "deps name only what we may hold"
            );
            self.vouched = (deps, self.remote_generation);
        }
        &self.vouched.0
    }

    /// The most of our writes `peer` can hold: what this process shipped or
    /// announced to it, or what an earlier process of ours could have.
    fn ack_bound(&self, peer: &PeerState) -> u64 {
        peer.shipped.max(self.start_seq).min(self.sendable())
    }

    /// Local writes that may leave for peers: committed ones when the
    /// region has storage.
    fn sendable(&self) -> u64 {
        self.durable.as_ref().map_or(self.seq, |d| d.seq)
    }

    /// Everything changed since the last commit, or `None` when nothing
    /// did. Handed back to [`commit_done`](Core::commit_done).
    pub(crate) fn prepare_commit(&mut self) -> Option<Commit> {
        let durable = self.durable.as_mut()?;
        let mut commit = Commit::default();
        for slot in &mut self.tables {
            for (key, state) in slot.store.take_changes() {
                commit
                    .states
                    .push((slot.name.to_string(), key.into_vec(), state));
            }
        }
        for (table, key) in durable.undeclared.drain(..) {
            if let Some(values) = self.undeclared.get(&table).and_then(|u| u.values.get(&key)) {
                let states = pack_states(values.iter().map(Vec::as_slice));
                commit.states.push((table, key.into_vec(), states));
            }
        }
        if let Some(from) = durable.outbox_from.take() {
            commit.outbox_put = self.outbox.encode_from(from);
        }
        commit.outbox_keep_from = self.outbox.start().unwrap_or(self.seq + 1);
        if std::mem::take(&mut durable.retired) {
            commit.retired = Some(
                self.retired
                    .iter()
                    .map(|(name, ids)| (name.clone(), ids.clone()))
                    .collect(),
            );
        }
        if std::mem::take(&mut durable.cursors) {
            commit.cursors = self
                .peers
                .iter()
                .map(|(name, p)| (name.clone(), p.acked))
                .collect();
        }
        let clock_moved =
            self.hlc.last().physical_ms() >= durable.hlc.physical_ms() + HLC_RESUME_MARGIN_MS / 2;
        if self.seq != durable.seq
            || self.applied != durable.applied
            || !commit.states.is_empty()
            || commit.outbox_keep_from != durable.outbox_start
            || clock_moved
        {
            commit.progress = Some(Progress {
                seq: self.seq,
                // A fresh reading: above every stamp given out so far,
                // even one never attached to a write.
                hlc: self.hlc.now(),
                applied: self.applied.clone(),
            });
        }
        (!commit.is_empty()).then_some(commit)
    }

    /// The outcome of committing `commit`: on success what it holds is
    /// durable (and may leave for peers); on failure it is tracked again
    /// for the next commit.
    pub(crate) fn commit_done(&mut self, commit: &Commit, result: &Result<(), StorageError>) {
        let Some(durable) = self.durable.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(progress) = &commit.progress {
                    debug_assert!(progress.seq >= durable.seq, "commits only move forward");
                    self.counters.committed_writes += progress.seq - durable.seq;
                    durable.seq = progress.seq;
                    durable.applied = progress.applied.clone();
                    durable.hlc = progress.hlc;
                }
                durable.outbox_start = commit.outbox_keep_from;
                self.counters.commits += 1;
            }
            Err(error) => {
                self.counters.commit_failures += 1;
                tracing::error!(region = %self.name, %error, "storage: commit failed; writes stay in memory and are retried");
                for (table, key, _) in &commit.states {
                    match self.table_slots.get(table.as_str()) {
                        Some(&slot) => self.tables[slot].store.mark_changed(key),
                        None => durable
                            .undeclared
                            .push((table.clone(), key.clone().into_boxed_slice())),
                    }
                }
                if let Some(&(first, _)) = commit.outbox_put.first() {
                    durable.outbox_from = Some(durable.outbox_from.map_or(first, |f| f.min(first)));
                }
                if !commit.cursors.is_empty() {
                    durable.cursors = true;
                }
                if commit.retired.is_some() {
                    durable.retired = true;
                }
            }
        }
    }

    /// The store of the table in `slot`, as its type.
    pub(crate) fn store<S: 'static>(&self, slot: usize) -> Option<&S> {
        self.tables.get(slot)?.store.as_any().downcast_ref::<S>()
    }

    pub(crate) fn store_mut<S: 'static>(&mut self, slot: usize) -> Option<&mut S> {
        self.tables
            .get_mut(slot)?
            .store
            .as_any_mut()
            .downcast_mut::<S>()
    }

    /// The slot of the table named `name`.
    pub(crate) fn slot_of(&self, name: &str) -> Option<usize> {
        self.table_slots.get(name).copied()
    }

    /// Declares a table; values received before it was declared are merged
    /// in. Returns its slot.
    pub(crate) fn declare(&mut self, slot: TableSlot) -> usize {
        let mut slot = slot;
        let name = Arc::clone(&slot.name);
        if let Some(pending) = self.undeclared.remove(&*name) {
            let at = self.hlc.last();
            for (key, values) in pending.values {
                for value in values {
                    // Held or restored before the table was declared: its
                    // stamps are not checked again.
                    match slot.store.stage(&value, Timestamp::from_u64(u64::MAX)) {
                        Ok(()) => slot.store.commit(&key, at),
                        Err(error) => {
                            tracing::warn!(region = %self.name, table = %name, %error, "rejected a value held for an undeclared table");
                        }
                    }
                }
            }
        }
        if let Some(durable) = &mut self.durable {
            // What was merged above is stored already (restored, or held
            // undeclared and committed as such), except what arrived since
            // the last commit: it is committed now under the table.
            slot.store.track_changes();
            durable.undeclared.retain(|(table, key)| {
                if **table == *name {
                    slot.store.mark_changed(key);
                    false
                } else {
                    true
                }
            });
        }
        let index = self.tables.len();
        self.tables.push(slot);
        self.table_slots.insert(name, index);
        index
    }

    // ----- local writes ---------------------------------------------------

    /// Records a local write to the table in `slot` whose encoded delta is
    /// `delta` (already applied to the table): appends it to the outbox for
    /// every peer and returns its token.
    pub(crate) fn record_write(&mut self, slot: usize, key: &[u8], delta: &[u8]) -> SessionToken {
        self.seq += 1;
        self.applied.raise(self.replica, self.seq);
        self.generation += 1;
        if self.replicating {
            self.vouched();
            self.outbox.append(
                Append {
                    seq: self.seq,
                    slot,
                    table: &self.tables[slot].name,
                    key,
                    delta,
                },
                &self.vouched.0,
                self.remote_generation,
                self.config.batch_len_max,
                self.config.batch_bytes_max,
            );
            if let Some(durable) = &mut self.durable {
                durable.outbox_from.get_or_insert(self.seq);
            }
            if self.outbox.len() > self.config.outbox_len_max
                || self.outbox.bytes() > self.config.outbox_bytes_max
            {
                self.shed_outbox();
            }
        }
        SessionToken::from_dot(Dot::new(self.replica, self.seq))
    }

    /// The outbox is over its bounds: the peers furthest behind lose their
    /// claim on it, slowest first, until it fits (but for the last segment,
    /// at most a batch, while peers that keep up hold it). Each is repaired
    /// by anti-entropy (now, or once it is back); the others keep receiving
    /// batches.
    fn shed_outbox(&mut self) {
        let before = self.outbox.len();
        let mut shed: Vec<String> = Vec::new();
        while self.outbox.len() > self.config.outbox_len_max
            || self.outbox.bytes() > self.config.outbox_bytes_max
        {
            // Only a peer behind by more than half the log is shed: the
            // slowest holds its start, so one always is, unless the log
            // could not shrink (it is cut in segments of up to a batch) and
            // what is left is held by peers that keep up.
            let seq = self.seq;
            let keeps_up = self.outbox.len() as u64 / 2;
            let slowest = self
                .peers
                .iter()
                .filter(|(_, p)| seq.saturating_sub(p.log_claim(seq)) > keeps_up)
                .min_by_key(|(_, p)| p.log_claim(seq))
                .map(|(name, _)| name.clone());
            let Some(name) = slowest else {
                // What is left is held for no peer we know of (none has
                // connected yet) or is the last segment.
                self.truncate_log();
                break;
            };
            let peer = self.peers.get_mut(&name).expect("listed");
            peer.flag_repair();
            peer.acked = self.seq;
            peer.sent = self.seq;
            shed.push(name);
            self.truncate_log();
        }
        if shed.is_empty() && self.outbox.len() == before {
            return;
        }
        self.counters.outbox_overflows += 1;
        tracing::warn!(
            region = %self.name,
            kept = self.outbox.len(),
            bytes = self.outbox.bytes(),
            peers = ?shed,
            "outbox over its limit: the peers furthest behind lost their claim on it; anti-entropy will repair them"
        );
    }

    fn truncate_log(&mut self) {
        if let Some(durable) = &mut self.durable {
            durable.cursors = true;
        }
        let seq = self.seq;
        let min_claim = self
            .peers
            .values()
            .map(|p| p.log_claim(seq))
            .min()
            .unwrap_or(seq);
        self.outbox.truncate(min_claim);
    }

    // ----- peers ------------------------------------------------------------

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

    fn peer(&mut self, name: &str, now: Instant) -> &mut PeerState {
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
        let mut out = vec![self.hello(name, false, now)];
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

    /// Our hello to `peer`.
    fn hello(&mut self, peer: &str, reply: bool, now: Instant) -> (String, Message) {
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
            .map(|name| self.hello(&name, false, now))
            .collect()
    }

    /// Why a hello presenting `replica`, `incarnation` and `seq` from
    /// `from` must be refused, if it must.
    fn check_hello(
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
    fn on_hello(
        &mut self,
        from: &str,
        replica: ReplicaId,
        incarnation: u64,
        seq: u64,
        applied: &VersionVector,
        reply: bool,
        now: Instant,
    ) -> Outgoing {
        if let Some(refusal) = self.check_hello(from, replica, incarnation, seq) {
            let peer = self.peer(from, now);
            peer.greeted = false;
            if peer.refused.as_ref() != Some(&refusal) {
                peer.refused = Some(refusal.clone());
                self.counters.refused_handshakes += 1;
                tracing::warn!(region = %self.name, peer = from, %refusal, "rejected input: handshake refused");
            }
            return Vec::new();
        }
        // What it says it holds of ours, up to what it can hold.
        let ours = applied.get(self.replica).min(
            self.peers
                .get(from)
                .map_or(self.start_seq, |p| self.ack_bound(p)),
        );
        let name = self.name.clone();
        let peer = self.peer(from, now);
        if peer.refused.take().is_some() {
            tracing::info!(region = %name, peer = from, "handshake accepted after an earlier refusal");
        }
        let new_replica = peer.replica != Some(replica);
        let new_incarnation = new_replica || peer.incarnation != Some(incarnation);
        let mut restarted = false;
        if new_incarnation {
            if new_replica {
                if let Some(old) = peer.replica {
                    if peer.former.len() == FORMER_IDS_MAX {
                        peer.former.remove(0);
                    }
                    peer.former.push(old);
                }
                peer.its_seq_seen = 0;
            }
            let first = peer.incarnation.is_none() && peer.replica.is_none();
            peer.replica = Some(replica);
            peer.incarnation = Some(incarnation);
            // Its cursor restarts from what it holds of ours.
            peer.acked = ours;
            peer.sent = ours;
            peer.push_pending = None;
            peer.progress_at = now;
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
        self.heard_from(replica, seq);
        // Writes of it that others claimed and it never made: hearsay,
        // reported, and taken back (so no batch is let through for them);
        // we never counted them as held, and our writes never depended on
        // them (see `vouched`).
        let claimed = self.applied.get(replica).max(self.believed.get(replica));
        let overclaimed = claimed > seq;
        if overclaimed {
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
        }
        if restarted {
            // Its former process's exchanges are over: what it asked and
            // what it was sending are void.
            self.answered_last.remove(from);
            self.answered.remove(from);
            self.sync_inbox.retain(|(peer, _, _), _| peer != from);
        }
        if new_replica {
            // Batches of its former replica wait for writes nobody will send.
            let before = self.buffer.len();
            self.buffer
                .retain(|b| b.from != from || b.origin == replica);
            if self.buffer.len() != before {
                self.buffer_bytes = self.buffer.iter().map(Buffered::size).sum();
            }
        }
        self.truncate_log();
        let mut out = if reply {
            Vec::new()
        } else {
            vec![self.hello(from, true, now)]
        };
        // Writes of other origins it lacks (a peer back from a partition or
        // restarted without storage, whose writes of a former replica id
        // count as another origin) come only from anti-entropy: its hello
        // claims nothing we act on beyond starting one.
        let lacks = self
            .transfer_claims()
            .iter()
            .any(|(r, n)| r != self.replica && r != replica && applied.get(r) < n);
        if (lacks || overclaimed) && self.peers[from].connected && !self.syncs.contains_key(from) {
            tracing::debug!(region = %self.name, peer = from, "the peer lacks writes of other regions: anti-entropy");
            out.extend(self.start_sync(from, now));
        }
        out
    }

    pub(crate) fn peer_down(&mut self, name: &str, now: Instant) {
        if self.retired.contains_key(name) {
            return;
        }
        let peer = self.peer(name, now);
        let was = peer.connected;
        peer.connected = false;
        peer.greeted = false;
        if was {
            tracing::info!(region = %self.name, peer = name, "peer disconnected");
        }
    }

    // ----- sending ------------------------------------------------------------

    /// Batches of every unsent write, to every connected peer.
    pub(crate) fn take_batches(&mut self, now: Instant) -> Outgoing {
        self.taken_seq = self.seq;
        let mut out = Vec::new();
        let log_start = self.outbox.start().unwrap_or(self.seq + 1);
        let names: Vec<String> = self.peers.keys().cloned().collect();
        let window = (self.config.batch_len_max as u64).saturating_mul(INFLIGHT_BATCHES_MAX);
        let sendable = self.sendable();
        for name in names {
            let peer = self.peers.get_mut(&name).expect("listed");
            if peer.acked + 1 < log_start && !peer.needs_sync {
                // Writes it never acknowledged left the log (it was not yet
                // known, or the outbox was dropped): anti-entropy repairs it.
                peer.flag_repair();
                peer.acked = log_start - 1;
                peer.sent = peer.sent.max(peer.acked);
            }
            loop {
                let peer = &self.peers[&name];
                if !peer.connected || peer.needs_sync || peer.sent >= sendable {
                    break;
                }
                // Go-back-N within a window: at most this many writes in
                // flight unacknowledged.
                if peer.sent.saturating_sub(peer.acked) >= window {
                    break;
                }
                let from = peer.sent.max(log_start - 1);
                if from >= sendable {
                    break;
                }
                let batch = self
                    .outbox
                    .batch(self.replica, from + 1, sendable, self.hlc.now());
                let Some((last, message)) = batch else { break };
                let peer = self.peers.get_mut(&name).expect("listed");
                if peer.acked >= peer.sent {
                    peer.progress_at = now;
                }
                peer.sent = last;
                peer.shipped = peer.shipped.max(last);
                self.counters.batches_sent += 1;
                out.push((name.clone(), message));
            }
        }
        out
    }

    /// Restarts sending to peers whose acknowledgements stalled.
    pub(crate) fn check_retransmit(&mut self, now: Instant) {
        let timeout = self.config.ack_timeout;
        for (name, peer) in &mut self.peers {
            if peer.connected
                && peer.acked < peer.sent
                && now.duration_since(peer.progress_at) >= timeout
            {
                tracing::debug!(region = %self.name, peer = %name, from = peer.acked + 1, "retransmitting unacknowledged writes");
                peer.sent = peer.acked;
                peer.progress_at = now;
            }
        }
    }

    // ----- receiving ------------------------------------------------------------

    pub(crate) fn on_message(&mut self, from: &str, message: Message, now: Instant) -> Outgoing {
        if self.retired.contains_key(from) {
            if let Message::Hello { .. } = message
                && self.retired_refused.insert(from.to_owned())
            {
                self.counters.refused_handshakes += 1;
                tracing::warn!(region = %self.name, peer = from, "rejected input: hello of a retired peer");
            }
            self.counters.stale_frames += 1;
            return Vec::new();
        }
        let peer = self.peer(from, now);
        peer.last_contact = Some(now);
        if let Message::Hello {
            replica,
            incarnation,
            seq,
            applied,
            reply,
        } = message
        {
            return self.on_hello(from, replica, incarnation, seq, &applied, reply, now);
        }
        // A refused peer, or one that knew us and has not greeted on this
        // connection yet (what it sends may come from an incarnation its
        // hello will reset): ignored.
        if peer.refused.is_some() || peer.unconfirmed() {
            self.counters.stale_frames += 1;
            return Vec::new();
        }
        match message {
            Message::Batch {
                origin,
                first,
                last,
                deps,
                sent_at,
                tables,
                entries,
            } => self.on_batch(
                from,
                Buffered {
                    from: from.to_owned(),
                    origin,
                    first,
                    last,
                    deps,
                    tables,
                    entries,
                    arrived: now,
                },
                sent_at,
                now,
            ),
            Message::Hello { .. } => unreachable!("handled above"),
            Message::Ack { origin, applied } => {
                if origin == self.replica {
                    let bound = self.ack_bound(&self.peers[from]);
                    if applied > bound {
                        // It cannot hold these: truncating our log on its
                        // word would lose them for it (and for whoever
                        // catches up from it).
                        self.reject(from, "acknowledgement of writes of ours it was never sent");
                        return Vec::new();
                    }
                    let peer = self.peers.get_mut(from).expect("touched above");
                    if applied > peer.acked {
                        peer.acked = applied;
                        peer.sent = peer.sent.max(applied);
                        peer.progress_at = now;
                    }
                    self.truncate_log();
                }
                Vec::new()
            }
            Message::SyncRequest {
                session,
                applied,
                digests,
            } => self.on_sync_request(from, session, applied, digests),
            Message::SyncDone { session } => {
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
            } => self.on_sync_states(
                from,
                session,
                push,
                chunk,
                chunks,
                sent_at,
                buckets,
                (tables, entries),
                applied,
                now,
            ),
        }
    }

    fn on_batch(
        &mut self,
        from: &str,
        batch: Buffered,
        sent_at: Timestamp,
        now: Instant,
    ) -> Outgoing {
        let (origin, first, last) = (batch.origin, batch.first, batch.last);
        let entries = message::count_entries(&batch.entries.0, batch.tables.len());
        if origin == self.replica
            || first == 0
            || last < first
            || entries.as_ref().ok() != Some(&(last - first + 1))
        {
            let why = match entries {
                Err(error) => format!("batch with malformed entries: {error}"),
                Ok(_) => "batch with a bad origin, sequence range or entry count".to_owned(),
            };
            self.reject(from, &why);
            return Vec::new();
        }
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
            return Vec::new();
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
            self.reject(from, "batch for an origin that is not the sending peer");
            return Vec::new();
        }
        if batch.deps.get(self.replica) > self.sendable() {
            // It would wait for writes of ours that do not exist.
            self.reject(from, "batch depending on writes of ours we never made");
            return Vec::new();
        }
        // Follow the sender's clock, within the offset bound: the data is
        // applied even when the sender's clock runs too far ahead.
        self.hlc.observe(sent_at);
        self.heard_from(origin, last);
        let peer = self.peer(from, now);
        peer.its_seq_seen = peer.its_seq_seen.max(last);
        peer.replica = Some(origin);
        if last > self.applied.get(origin) {
            if self.buffer.is_empty() && self.ready(&batch) {
                // The common case: in order, nothing waiting.
                self.apply_batch(batch);
            } else if !self.buffer.iter().any(|b| {
                // Already held: the same writes or more, needing no more.
                b.origin == origin
                    && b.first <= first
                    && b.last >= last
                    && b.deps
                        .iter()
                        .all(|(r, n)| r == origin || batch.deps.get(r) >= n)
            }) {
                self.buffer_bytes += batch.size();
                self.buffer.push(batch);
                self.drain_buffer();
                self.bound_buffer();
            }
        }
        vec![(
            from.to_owned(),
            Message::Ack {
                origin,
                applied: self.applied.get(origin),
            },
        )]
    }

    /// True when `batch` follows its origin's writes we hold first-hand and
    /// every other write it depends on is here, first-hand or by a peer's
    /// word (`believed`): a claim never makes a batch wait longer, at
    /// worst (a false claim) it lets one through early; it never makes a
    /// write look applied (that is `applied`'s alone).
    fn ready(&self, batch: &Buffered) -> bool {
        batch.first <= self.applied.get(batch.origin) + 1
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
    fn waits_on_unsent(&self, peer: &str, now: Instant) -> bool {
        self.buffer.iter().any(|b| {
            b.from == peer
                && now.duration_since(b.arrived) >= self.config.ack_timeout
                && b.deps.iter().any(|(r, n)| {
                    r != b.origin
                        && self.applied.get(r) < n
                        && self.believed.get(r) < n
                        && (self.issued.get(&r).copied().unwrap_or(0) < n
                            || !self
                                .peers
                                .values()
                                .any(|p| p.connected && p.replica == Some(r)))
                })
        })
    }

    /// Applies every buffered batch whose dependencies are now applied.
    fn drain_buffer(&mut self) {
        loop {
            let stale = self
                .buffer
                .iter()
                .position(|b| b.last <= self.applied.get(b.origin));
            if let Some(i) = stale {
                let b = self.buffer.swap_remove(i);
                self.buffer_bytes -= b.size();
                continue;
            }
            let Some(i) = self.buffer.iter().position(|b| self.ready(b)) else {
                break;
            };
            let batch = self.buffer.swap_remove(i);
            self.buffer_bytes -= batch.size();
            self.apply_batch(batch);
        }
        if !self.buffer.is_empty() {
            self.counters.batches_buffered = self.buffer.len() as u64;
        }
    }

    fn bound_buffer(&mut self) {
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
    /// (the rest of which is merged). Returns how many were set aside, or
    /// `None` when the message was refused.
    fn merge_entries(
        &mut self,
        from: &str,
        parts: &[(&[String], &[u8])],
        ahead: AheadValues,
    ) -> Option<usize> {
        let at = self.hlc.last();
        let stamps_max = self.hlc.offset_bound();
        let slots: Vec<Vec<Option<usize>>> = parts
            .iter()
            .map(|(tables, _)| tables.iter().map(|t| self.slot_of(t)).collect())
            .collect();
        let mut staged: Vec<usize> = Vec::new();
        let mut incoming = 0;
        let mut failed = None;
        // Entries (by index) whose value did not decode, and the first error.
        let mut undecodable: Vec<usize> = Vec::new();
        let mut first_error = None;
        // Entries set aside: stamped past our clock's bound.
        let mut set_aside: Vec<usize> = Vec::new();
        let entries = parts
            .iter()
            .zip(&slots)
            .flat_map(|((tables, packed), slots)| {
                Entries::new(packed, tables.len()).map(move |e| (*tables, slots, e))
            });
        for (index, (tables, slots, entry)) in entries.enumerate() {
            let (table, key, value) = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    failed = Some(format!("malformed entry: {error}"));
                    break;
                }
            };
            match slots[table] {
                Some(slot) => {
                    match self.tables[slot].store.stage(value, stamps_max) {
                        Ok(()) => {}
                        Err(StageError::Undecodable(error)) => {
                            undecodable.push(index);
                            first_error.get_or_insert_with(|| (tables[table].clone(), error));
                            continue;
                        }
                        Err(StageError::Ahead { .. }) if ahead == AheadValues::SetAside => {
                            set_aside.push(index);
                            continue;
                        }
                        Err(StageError::Ahead { stamp }) => {
                            self.counters.values_ahead += 1;
                            failed = Some(format!(
                                "a value of table {} stamped {stamp}, past this clock's bound {stamps_max}: the writer's clock runs ahead (sent again, it lands once the clocks are within the max offset)",
                                tables[table]
                            ));
                            break;
                        }
                    }
                    if !staged.contains(&slot) {
                        staged.push(slot);
                    }
                }
                // Only values not already held count: transfers re-ship them.
                None => {
                    let held = self
                        .undeclared
                        .get(&tables[table])
                        .and_then(|u| u.values.get(key))
                        .is_some_and(|held| held.iter().any(|v| v == value));
                    if !held {
                        incoming += key.len() + value.len();
                    }
                }
            }
        }
        let total: usize = self.undeclared.values().map(|u| u.bytes).sum();
        if failed.is_none() && total + incoming > UNDECLARED_BYTES_MAX {
            failed = Some("values for undeclared tables over the limit".to_owned());
        }
        if let Some(why) = failed {
            for slot in staged {
                self.tables[slot].store.unstage();
            }
            self.reject(from, &why);
            return None;
        }
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
        if let Some((table, error)) = first_error {
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
        let aside = set_aside.len();
        let mut skipped: Vec<usize> = undecodable;
        skipped.extend(set_aside);
        skipped.sort_unstable();
        let mut skipped = skipped.into_iter().peekable();
        let mut index = 0;
        for ((tables, packed), slots) in parts.iter().zip(&slots) {
            for (table, key, value) in Entries::new(packed, tables.len()).flatten() {
                let skip = skipped.next_if_eq(&index).is_some();
                index += 1;
                match slots[table] {
                    Some(_) if skip => {}
                    Some(slot) => self.tables[slot].store.commit(key, at),
                    None => {
                        self.hold_undeclared(&tables[table], key, value);
                    }
                }
            }
        }
        Some(aside)
    }

    fn apply_batch(&mut self, batch: Buffered) {
        let parts = [(batch.tables.as_slice(), batch.entries.0.as_slice())];
        if self
            .merge_entries(&batch.from, &parts, AheadValues::RefuseFrame)
            .is_some()
        {
            self.applied.raise(batch.origin, batch.last);
            self.generation += 1;
            self.remote_generation += 1;
            self.counters.batches_applied += 1;
        }
    }

    /// Holds a value of a table not declared here. Identical values are
    /// kept once; false when the bound on held bytes is reached.
    fn hold_undeclared(&mut self, table: &str, key: &[u8], value: &[u8]) -> bool {
        let total: usize = self.undeclared.values().map(|u| u.bytes).sum();
        let store = self.undeclared.entry(table.to_owned()).or_default();
        let values = store.values.entry(key.into()).or_default();
        if values.iter().any(|v| v == value) {
            return true;
        }
        if total + key.len() + value.len() > UNDECLARED_BYTES_MAX {
            return false;
        }
        store.bytes += key.len() + value.len();
        values.push(value.to_vec());
        if let Some(durable) = &mut self.durable {
            durable.undeclared.push((table.to_owned(), key.into()));
        }
        true
    }

    fn reject(&mut self, from: &str, why: &str) {
        self.counters.rejected_frames += 1;
        tracing::warn!(region = %self.name, peer = from, reason = why, "rejected input");
    }

    pub(crate) fn on_undecodable(&mut self, from: &str, error: &wire::WireError) {
        self.reject(from, &error.to_string());
    }

    // ----- anti-entropy ---------------------------------------------------------

    fn digests(&mut self) -> Vec<(String, Vec<u64>)> {
        let mut digests: Vec<(String, Vec<u64>)> = self
            .tables
            .iter_mut()
            .map(|slot| (slot.name.to_string(), slot.store.digests()))
            .collect();
        digests.sort_by(|a, b| a.0.cmp(&b.0));
        digests
    }

    /// Starts an anti-entropy exchange with `peer`: sends our digests.
    pub(crate) fn start_sync(&mut self, peer: &str, now: Instant) -> Outgoing {
        self.sync_session += 1;
        let session = self.sync_session;
        let digests = self.digests();
        self.syncs.insert(
            peer.to_owned(),
            SyncState {
                session,
                digests: digests.clone(),
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

    fn initiates_sync(&self, peer: &str) -> bool {
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
                        || (self.waits_on_unsent(name, now)
                            && p.last_sync
                                .is_none_or(|t| now.duration_since(t) >= self.config.ack_timeout)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut out = Vec::new();
        for name in due {
            out.extend(self.start_sync(&name, now));
        }
        out
    }

    fn on_sync_request(
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
            self.reject(from, "sync request with malformed digests");
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
        self.states_chunks(from, session, false, buckets, applied, &HashSet::new())
    }

    /// What a transfer of our whole state claims we hold: what we hold
    /// (see [`held`](Core::held)), and what we vouch for of the rest (see
    /// [`vouched`](Core::vouched)); a false claim of a peer about a peer's
    /// replica does not travel on with it.
    fn transfer_claims(&mut self) -> VersionVector {
        let mut claims = self.held().into_owned();
        claims.merge(self.vouched());
        claims
    }

    /// A transfer to `to` claiming `applied` carries every write of ours
    /// it names.
    fn shipped_transfer(&mut self, to: &str, applied: &VersionVector) {
        let ours = applied.get(self.replica);
        if let Some(peer) = self.peers.get_mut(to) {
            peer.shipped = peer.shipped.max(ours);
        }
    }

    /// Our states for `buckets` (and every value held for undeclared
    /// tables), in chunks below the sync chunk limit; the first chunk names
    /// the buckets, the last carries `applied`.
    fn states_chunks(
        &self,
        to: &str,
        session: u64,
        push: bool,
        buckets: Vec<(String, Vec<u32>)>,
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
        for (table, list) in &buckets {
            let Some(slot) = self.slot_of(table) else {
                continue;
            };
            let store = &self.tables[slot].store;
            for &bucket in list {
                for (key, state) in store.bucket_states(bucket as usize) {
                    if !skip.is_empty() && skip.contains(&entry_hash(table, &key, &state)) {
                        continue;
                    }
                    add(table, &key, &state);
                }
            }
        }
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
        let mut buckets = Some(buckets);
        chunks
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
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn on_sync_states(
        &mut self,
        from: &str,
        session: u64,
        push: bool,
        chunk: u32,
        chunks: u32,
        sent_at: Timestamp,
        mut buckets: Vec<(String, Vec<u32>)>,
        part: (Vec<String>, Blob),
        applied: Option<VersionVector>,
        now: Instant,
    ) -> Outgoing {
        if chunks == 0 || chunk >= chunks || chunks as usize > SYNC_CHUNKS_MAX {
            self.reject(from, "sync states with a bad chunk index");
            return Vec::new();
        }
        if buckets
            .iter()
            .any(|(_, list)| list.iter().any(|&b| b as usize >= DIGEST_BUCKETS))
        {
            self.reject(from, "sync states naming a bucket out of range");
            return Vec::new();
        }
        for (_, list) in &mut buckets {
            list.sort_unstable();
            list.dedup();
        }
        // Only transfers we asked for: a reply to our exchange, or a push
        // answering the reply we sent.
        let expected = if push {
            self.answered.get(from) == Some(&session)
        } else {
            self.syncs.get(from).is_some_and(|s| s.session == session)
        };
        if !expected {
            tracing::debug!(region = %self.name, peer = from, session, push, "anti-entropy: ignored a transfer nobody asked for");
            return Vec::new();
        }
        self.peer(from, now).last_sync = Some(now);
        self.hlc.observe(sent_at);
        if let Err(error) = message::count_entries(&part.1.0, part.0.len()) {
            self.reject(
                from,
                &format!("sync states with malformed entries: {error}"),
            );
            return Vec::new();
        }
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
                at: now,
            });
        if inbox.chunks.len() != chunks as usize {
            self.sync_inbox.remove(&slot);
            self.reject(from, "sync states with an inconsistent chunk count");
            return Vec::new();
        }
        inbox.at = now;
        if inbox.chunks[chunk as usize].is_some() {
            return Vec::new(); // a duplicated frame
        }
        inbox.bytes += size;
        inbox.buckets.extend(buckets);
        if applied.is_some() {
            inbox.applied = applied;
        }
        inbox.chunks[chunk as usize] = Some(part);
        if inbox.bytes > self.config.sync_transfer_bytes_max {
            self.sync_inbox.remove(&slot);
            self.abort_sync(from, push);
            let why = format!(
                "anti-entropy transfer over sync_transfer_bytes_max ({} bytes): the peer stays behind until it is raised",
                self.config.sync_transfer_bytes_max
            );
            self.reject(from, &why);
            return Vec::new();
        }
        if inbox.chunks.iter().any(Option::is_none) {
            return Vec::new(); // more to come
        }
        let inbox = self.sync_inbox.remove(&slot).expect("present");
        let Some(their_applied) = inbox.applied else {
            self.abort_sync(from, push);
            self.reject(from, "sync transfer without its applied vector");
            return Vec::new();
        };
        if their_applied.get(self.replica) > self.seq {
            // Writes of ours we never made: a forgery, or a previous process
            // with our replica id. Believing it would make us skip our own
            // next writes everywhere.
            self.abort_sync(from, push);
            self.reject(from, "sync transfer claims writes of ours we never made");
            return Vec::new();
        }
        let all: Vec<(Vec<String>, Blob)> = inbox.chunks.into_iter().flatten().collect();
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
        let Some(set_aside) = self.merge_entries(from, &parts, AheadValues::SetAside) else {
            self.abort_sync(from, push);
            return Vec::new();
        };
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
        // Tell origins whose writes we caught up on, so they stop resending.
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
        if push {
            self.answered.remove(from);
            tracing::info!(region = %self.name, peer = from, session, "anti-entropy: caught up from the peer's push");
            self.counters.syncs_completed += 1;
            // The exchange's starter keeps its peer marked for repair until
            // it hears this.
            out.push((from.to_owned(), Message::SyncDone { session }));
            return out;
        }
        let Some(sync) = self.syncs.remove(from) else {
            return out;
        };
        let seq = self.seq;
        self.peer(from, now).push_pending = Some((session, seq, now));
        self.counters.syncs_completed += 1;
        // Push back: the buckets that differed, and every bucket of ours
        // that changed since we sent our digests (writes and batches applied
        // meanwhile), with our current applied vector: the peer then holds
        // our whole current state, which is causally closed.
        let now_digests = self.digests();
        let mut push_buckets = inbox.buckets;
        for (table, digests) in &now_digests {
            let before = sync
                .digests
                .iter()
                .find(|(t, _)| t == table)
                .map(|(_, d)| d);
            let changed: Vec<u32> = (0..DIGEST_BUCKETS)
                .filter(|&b| before.is_none_or(|d| d[b] != digests[b]))
                .filter(|&b| before.is_some() || digests[b] != 0)
                .map(|b| b as u32)
                .collect();
            if changed.is_empty() {
                continue;
            }
            match push_buckets.iter_mut().find(|(t, _)| t == table) {
                Some((_, list)) => {
                    list.extend(changed);
                    list.sort_unstable();
                    list.dedup();
                }
                None => push_buckets.push((table.clone(), changed)),
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
        out.extend(self.states_chunks(from, session, true, push_buckets, applied, &received));
        out
    }

    /// Takes in a transfer's vector from `from`, whose states we merged:
    /// its claim about its own writes raises `applied` (its data, which it
    /// vouches for; were it false, only its own writes would suffer), every
    /// other claim only `believed` (see there). Returns the connected
    /// peers to start an exchange with: regions it claims more of than
    /// they told us (they may have written since; an exchange with them
    /// settles it).
    fn believe(&mut self, from: &str, claims: &VersionVector) -> Vec<String> {
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
            let known = self
                .peers
                .values()
                .any(|p| p.replica == Some(r))
                .then(|| self.issued.get(&r).copied())
                .flatten();
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
    fn abort_sync(&mut self, from: &str, push: bool) {
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
    }

    /// True when nothing is left to deliver to connected peers: every write
    /// acknowledged, no repair pending or under way.
    pub(crate) fn flushed(&self) -> bool {
        self.syncs.is_empty()
            && self
                .peers
                .values()
                .filter(|p| p.connected)
                .all(|p| p.acked >= self.seq && !p.needs_sync)
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
