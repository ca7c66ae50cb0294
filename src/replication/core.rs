//! The state of one region and every rule of replication, without I/O:
//! local writes, the outbox, batches, acknowledgements, the causal buffer
//! and anti-entropy. The engine task feeds it events and sends what it
//! returns; the table handles call it for local reads and writes. Its
//! rooms: [`peers`] (handshake, retiring), [`receive`] (batches, the causal
//! buffer, merging), [`anti_entropy`] (exchanges and what a transfer is
//! believed); this file keeps the state, local writes, sending and commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::lag::WriteMarks;
use super::message::{self, Blob, Entries, Message};
use super::outbox::{Append, Outbox};
use super::store::{
    DIGEST_BUCKETS, StageError, TableStore, UndeclaredStore, pack_states, stable_hash,
    unpack_states,
};
use crate::clock::{Dot, Hlc, ReplicaId, Timestamp, VersionVector};
use crate::hash::FastMap;
use crate::region::{
    HandshakeRefusal, PROTOCOL_ANNOUNCEMENTS_MAX, PROTOCOL_VERSION_MIN, RegionConfig, RejectReason,
};
use crate::session::SessionToken;
use crate::storage::{Commit, Progress, Snapshot, StorageError};
use crate::wire;

mod anti_entropy;
mod legacy;
mod peers;
mod ranges;
mod receive;
mod shadow_merge;
pub(crate) mod tx_groups;

pub(crate) use shadow_merge::{
    HeldForFold, MergedTransfer, PendingTransfer, TRANSFER_MERGE_SLICE_KEYS_MAX,
};

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

/// Frame bytes the engine handed to the transport per peer, counted where
/// it encodes them (outside the state's lock) and added to the peers'
/// counters by [`Core::count_sent`] the next time it holds the lock:
/// (all bytes, anti-entropy bytes).
#[derive(Default)]
pub(crate) struct SentBytes(pub(crate) BTreeMap<String, (u64, u64)>);

impl SentBytes {
    /// Counts a frame of `bytes` sent to `peer`.
    pub(crate) fn add(&mut self, peer: &str, bytes: usize, sync: bool) {
        let bytes = bytes as u64;
        let of_sync = if sync { bytes } else { 0 };
        // The peer's name is copied only the first time: `Core::count_sent`
        // zeroes the counts and keeps the keys.
        match self.0.get_mut(peer) {
            Some((all, sync_bytes)) => {
                *all += bytes;
                *sync_bytes += of_sync;
            }
            None => {
                self.0.insert(peer.to_owned(), (bytes, of_sync));
            }
        }
    }
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
    /// Why its protocol announcement on the current connection was
    /// refused (its versions do not meet ours): its frames are ignored
    /// until it connects again.
    pub(crate) protocol_refused: Option<HandshakeRefusal>,
    /// The engine protocol of the current connection: the newest both
    /// speak (1 until its announcement arrives; a peer of protocol 1 sends
    /// none).
    pub(crate) protocol: u16,
    /// Its protocol announcement arrived on the current connection.
    pub(crate) protocol_heard: bool,
    /// When we last announced our protocol versions to it on the current
    /// connection (with the hello, or again: see
    /// [`Core::due_announcements`]).
    pub(crate) protocol_announced: Option<Instant>,
    /// Announcements sent again on the current connection because it
    /// greeted us without announcing (at most
    /// [`PROTOCOL_ANNOUNCEMENTS_MAX`](crate::region::PROTOCOL_ANNOUNCEMENTS_MAX)).
    pub(crate) protocol_reannounced: u32,
    /// Replica ids its earlier incarnations had (newest last, at most
    /// [`FORMER_IDS_MAX`]): their late frames are ignored, not refused, and
    /// no other peer may present them.
    pub(crate) former: Vec<ReplicaId>,
    /// Its clock minus ours in ms, as last observed: the physical time of a
    /// timestamp it sent (a batch's, a transfer's) minus our wall clock
    /// when it arrived (so transit time is counted as the peer being
    /// behind).
    pub(crate) clock_offset_ms: Option<i64>,
    /// Encoded frame bytes sent to it and received from it (every frame,
    /// anti-entropy included).
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    /// The part of `bytes_sent` / `bytes_received` that was anti-entropy
    /// (requests, transfers, their confirmations).
    pub(crate) sync_bytes_sent: u64,
    pub(crate) sync_bytes_received: u64,
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
            protocol_refused: None,
            protocol: PROTOCOL_VERSION_MIN,
            protocol_heard: false,
            protocol_announced: None,
            protocol_reannounced: 0,
            former: Vec::new(),
            clock_offset_ms: None,
            bytes_sent: 0,
            bytes_received: 0,
            sync_bytes_sent: 0,
            sync_bytes_received: 0,
        }
    }

    /// The peer speaks the handshake but has not greeted us on this
    /// connection yet: what it sends may still come from an incarnation we
    /// are about to replace.
    fn unconfirmed(&self) -> bool {
        self.known && !self.greeted
    }

    /// The connection's protocol is known to be below `version` (we speak
    /// up to `ours_max`): false while the peer's announcement may still
    /// come (see [`Core::due_announcements`]), since a peer that greeted us
    /// without one may have lost it rather than speak protocol 1.
    pub(crate) fn speaks_below(&self, version: u16, ours_max: u16) -> bool {
        self.protocol < version
            && (ours_max < version
                || self.protocol_heard
                || self.protocol_reannounced >= PROTOCOL_ANNOUNCEMENTS_MAX)
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
    pub(crate) from: String,
    pub(crate) origin: ReplicaId,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) deps: VersionVector,
    pub(crate) tables: Vec<String>,
    pub(crate) entries: Blob,
    /// When it arrived: one that waits too long on claims starts an
    /// exchange with its sender.
    pub(crate) arrived: Instant,
    /// The origin's clock when it sent the batch (kept for relaying).
    pub(crate) sent_at: Timestamp,
    /// Passed on by `from`, not its origin (see [`relay`](super::relay)):
    /// what we hold of the origin by `from`'s word, never first-hand.
    pub(crate) relayed: bool,
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
    /// changed since (none for an exchange by ranges).
    digests: Vec<(String, Vec<u64>)>,
    /// Our side of an exchange by ranges (protocol 6 on).
    ranges: Option<ranges::RangeSession>,
}

/// The chunks of one transfer, merged only once all have arrived.
pub(crate) struct SyncInbox {
    chunks: Vec<Option<(Vec<String>, Blob)>>,
    buckets: Vec<(String, Vec<u32>)>,
    applied: Option<VersionVector>,
    bytes: usize,
    /// Entries of the chunks filed.
    entries: u64,
    /// Last chunk received: a transfer that goes quiet expires.
    at: Instant,
}

/// Most replicas `Core::believed` names: claims about further replicas
/// that neither we nor a peer of ours has met are ignored (a forger could
/// otherwise grow every vector and session token without bound).
pub(crate) const BELIEVED_REPLICAS_MAX: usize = 256;

/// Batches a peer may have in flight unacknowledged.
const INFLIGHT_BATCHES_MAX: u64 = 16;

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
    /// Its key type, checked at every declaration: `TypeId` and name.
    pub(crate) key_type: (std::any::TypeId, &'static str),
    /// Keys a scan found that do not decode as the key type (a peer
    /// declared the table with another key type), counted by the scans.
    pub(crate) undecodable_keys: Arc<std::sync::atomic::AtomicU64>,
    /// Conflict counter of resolver tables (their feed's total).
    pub(crate) conflicts: Option<ConflictCount>,
}

/// What a resolver table tells of its conflicts: its resolver's
/// [`Strategy::as_str`](crate::resolve::Strategy::as_str) and its feed's
/// total.
pub(crate) struct ConflictCount {
    pub(crate) strategy: &'static str,
    pub(crate) total: Box<dyn Fn() -> u64 + Send>,
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
    /// Peers to start an anti-entropy exchange with as soon as they are
    /// connected and free (not at the periodic round): a table that
    /// dropped values while undeclared was declared.
    pub(crate) wants_exchange: BTreeSet<String>,
    pub(crate) outbox: Outbox,
    /// When the writes not acknowledged by every peer were made: the
    /// peers' replication lag.
    pub(crate) write_marks: WriteMarks,
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
    /// Complete transfers too large to merge in one hold of the lock,
    /// merged in slices one after another (see `shadow_merge`).
    pub(crate) transfers: std::collections::VecDeque<PendingTransfer>,
    /// A published transfer's pending values are being folded.
    pub(crate) folding: bool,
    /// Buffered batches are ready past what one hold of the lock applies
    /// (see `receive::DRAIN_SLICE_ENTRIES_MAX`): the engine applies the
    /// rest, a slice per hold.
    pub(crate) draining: bool,
    /// Exchange work that reads whole tables (digests, the range index),
    /// waiting while a published transfer is folded (see
    /// `shadow_merge::HeldForFold`).
    pub(crate) held_for_fold: std::collections::VecDeque<HeldForFold>,
    /// The exchange of each peer we answered: only its push is accepted.
    pub(crate) answered: HashMap<String, u64>,
    /// The latest exchange of each peer we answered, kept after its push
    /// (until the peer reconnects): a duplicated or late request is not
    /// answered twice, since the two replies' chunks would mix.
    pub(crate) answered_last: HashMap<String, u64>,
    /// The exchanges by ranges we are answering, per peer, until we ship
    /// our transfer.
    pub(crate) answering: HashMap<String, ranges::RangeSession>,
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
    /// Bounded tables, and the rights this region wants or granted.
    pub(crate) rights: super::rights::Rights,
    /// Homed tables, forwards waiting for their homes, replies remembered.
    pub(crate) homed: super::homed::Homed,
    /// The multi-key transactions this region knows, named in its
    /// transfers (see [`tx_groups`]).
    pub(crate) tx_groups: tx_groups::TxGroups,
    /// Other origins' batches kept for relaying, the peers that asked for
    /// them, and what we asked of our peers.
    pub(crate) relay: super::relay::Relay,
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
    /// Transaction groups committed: ids below this are stored (see
    /// [`tx_groups`]).
    tx_groups_stored: u64,
}

/// Plain counters for stats and tests.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches_sent: u64,
    pub(crate) batches_applied: u64,
    pub(crate) batches_buffered: u64,
    pub(crate) batches_dropped: u64,
    /// Holds of the lock a run of ready buffered batches was applied in,
    /// past the first (see `receive::DRAIN_SLICE_ENTRIES_MAX`).
    pub(crate) drain_slices: u64,
    pub(crate) rejected_frames: u64,
    /// `rejected_frames` by [`RejectReason::index`].
    pub(crate) rejected_by_reason: [u64; RejectReason::ALL.len()],
    /// Values dropped because they did not decode as their table's type.
    pub(crate) undecodable_values: u64,
    /// Values of undeclared tables dropped: `undeclared_bytes_max` reached.
    pub(crate) undeclared_values_dropped: u64,
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
    /// Values of a transfer set aside with a value of the same transaction
    /// that was set aside (see [`tx_groups`]).
    pub(crate) transaction_values_set_aside: u64,
    /// Transaction groups frames refused (over their bounds, or naming a
    /// key their transfer does not carry).
    pub(crate) tx_groups_refused: u64,
    /// Anti-entropy transfers held until their peer's protocol was settled
    /// (see [`tx_groups`]).
    pub(crate) transfers_held: u64,
    /// Rights requests sent, rights granted to peers (units), and requests
    /// answered with none.
    pub(crate) rights_requested: u64,
    pub(crate) rights_granted: u64,
    pub(crate) rights_refused: u64,
    /// Homed requests sent to homes (first sends), forwarded operations
    /// served here as the home (applied, read or rejected), duplicates
    /// answered from memory, and requests refused.
    pub(crate) homed_forwarded: u64,
    pub(crate) homed_served: u64,
    pub(crate) homed_duplicates: u64,
    pub(crate) homed_refused: u64,
    pub(crate) homed_moves: u64,
    pub(crate) homed_fenced: u64,
    pub(crate) homed_redirects: u64,
    /// Batches of other origins passed on to peers whose link to the
    /// origin is down, and such batches received (see
    /// [`relay`](super::relay)).
    pub(crate) relayed_batches_sent: u64,
    pub(crate) relayed_batches_received: u64,
    /// Peers that lost their relay: their backlog went over the outbox
    /// bounds.
    pub(crate) relay_overflows: u64,
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
            wants_exchange: BTreeSet::new(),
            outbox: Outbox::default(),
            write_marks: WriteMarks::default(),
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
            transfers: std::collections::VecDeque::new(),
            folding: false,
            draining: false,
            held_for_fold: std::collections::VecDeque::new(),
            answered: HashMap::new(),
            answered_last: HashMap::new(),
            answering: HashMap::new(),
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
            rights: Default::default(),
            homed: Default::default(),
            tx_groups: Default::default(),
            relay: Default::default(),
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
        self.tx_groups.restore(&snapshot.tx_groups)?;
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
            tx_groups_stored: self.tx_groups.next_id(),
        });
        Ok(())
    }

    /// Follows `from`'s clock to `sent_at` (within the offset bound, see
    /// [`Hlc::observe`]) and records the offset observed.
    pub(super) fn follow_clock(&mut self, from: &str, sent_at: Timestamp, now: Instant) {
        // Physical times are below 2^48 ms: the difference fits.
        let theirs = i64::try_from(sent_at.physical_ms()).unwrap_or(i64::MAX);
        let ours = i64::try_from(self.hlc.wall_ms()).unwrap_or(i64::MAX);
        self.peer(from, now).clock_offset_ms = Some(theirs.saturating_sub(ours));
        self.hlc.observe(sent_at);
    }

    /// Counts a frame of `bytes` received from `from` (`sync`: an
    /// anti-entropy message). A peer we do not know is not added for it.
    pub(crate) fn count_received(&mut self, from: &str, bytes: usize, sync: bool) {
        if let Some(peer) = self.peers.get_mut(from) {
            let bytes = bytes as u64;
            peer.bytes_received += bytes;
            if sync {
                peer.sync_bytes_received += bytes;
            }
            debug_assert!(peer.sync_bytes_received <= peer.bytes_received);
        }
    }

    /// Adds the frame bytes the engine sent since it last held the lock
    /// (drained from `sent`) to the peers' counters.
    pub(crate) fn count_sent(&mut self, sent: &mut SentBytes) {
        for (name, (bytes, sync)) in sent.0.iter_mut() {
            if let Some(peer) = self.peers.get_mut(name) {
                peer.bytes_sent += *bytes;
                peer.sync_bytes_sent += *sync;
                debug_assert!(peer.sync_bytes_sent <= peer.bytes_sent);
            }
            (*bytes, *sync) = (0, 0);
        }
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

    /// The peer whose current replica `r` is: the one that speaks for it.
    pub(crate) fn peer_of(&self, r: ReplicaId) -> Option<&PeerState> {
        self.peers.values().find(|p| p.replica == Some(r))
    }

    /// What this region holds, as session reads and operators see it: what
    /// it holds first-hand, and what peers passed on of replicas no peer
    /// speaks for (a former id of a restarted region, a retired one, one we
    /// never met): nobody will ever confirm those, so a peer's word is all
    /// there is (and the vectors of regions that converged are equal). Of
    /// a peer's current replica only its own batches and transfers count.
    pub(crate) fn held(&self) -> std::borrow::Cow<'_, VersionVector> {
        let unconfirmable =
            |r: ReplicaId, n: u64| n > self.applied.get(r) && self.peer_of(r).is_none();
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
        self.durable.as_ref()?;
        // What a published transfer brought is stored with its vector.
        self.settle_transfer();
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
        // A transaction's group goes with the commit that stores its
        // writes (both were made under one lock take).
        self.tx_groups
            .add_to_commit(durable.tx_groups_stored, &mut commit);
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
                if let Some((id, _)) = commit.tx_groups_put.last() {
                    durable.tx_groups_stored = durable.tx_groups_stored.max(id + 1);
                }
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
            if pending.dropped > 0 {
                // What was dropped is at the peers that sent it: ask them
                // all now, not at the next periodic round.
                self.wants_exchange.extend(self.peers.keys().cloned());
                tracing::info!(
                    region = %self.name,
                    table = %name,
                    dropped = pending.dropped,
                    "table declared after values of it were dropped: anti-entropy with every peer brings them"
                );
            }
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
        // Rights may have moved (see `Rights`).
        self.rights.key_changed(slot, key);
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
            self.write_marks.record(self.seq, self.hlc.wall_ms());
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
        let min_acked = self.peers.values().map(|p| p.acked).min().unwrap_or(seq);
        self.write_marks.truncate(min_acked);
    }

    /// A peer's replication lag: how long ago the oldest of our writes it
    /// has not acknowledged was made, by our wall clock; zero when it has
    /// them all.
    pub(crate) fn lag_of(&self, peer: &PeerState) -> std::time::Duration {
        if peer.acked >= self.seq {
            return std::time::Duration::ZERO;
        }
        let made = self.write_marks.written_at(peer.acked + 1);
        let age_ms = made.map_or(0, |ms| self.hlc.wall_ms().saturating_sub(ms));
        std::time::Duration::from_millis(age_ms)
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
        // Other origins' writes, for peers whose link to them is down.
        out.extend(self.due_relay_wants(now));
        out.extend(self.take_relays(now));
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
