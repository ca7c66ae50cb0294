//! What a region tells operators: [`RegionStats`] and the
//! [`ShutdownReport`].

use super::*;

/// A region's state, for operators.
#[derive(Clone, Debug)]
pub struct RegionStats {
    /// The region's name.
    pub name: String,
    /// Its replica id.
    pub replica: ReplicaId,
    /// Every write applied here.
    pub applied: VersionVector,
    /// Local writes made.
    pub writes: u64,
    /// Local writes kept for peers that have not acknowledged them.
    pub outbox_len: usize,
    /// Batches waiting for their dependencies.
    pub buffered_batches: usize,
    /// Batches sent, retransmissions included.
    pub batches_sent: u64,
    /// Batches applied.
    pub batches_applied: u64,
    /// Batches dropped from a full causal buffer.
    pub batches_dropped: u64,
    /// Holds of the state's lock that applied part of a long run of
    /// buffered batches ready at once, past the first: such a run (after a
    /// partition, or a transfer they waited for) is applied a bounded slice
    /// of whole batches per hold, so local reads and writes never wait for
    /// all of it.
    pub drain_slices: u64,
    /// Frames refused as malformed or out of bounds.
    pub rejected_frames: u64,
    /// `rejected_frames` by reason: every [`RejectReason`], in the order
    /// of [`RejectReason::ALL`] (see [`RegionStats::rejected`]).
    pub rejected_by_reason: Vec<(RejectReason, u64)>,
    /// Values from peers dropped because they do not decode as their
    /// table's value type (a table declared with different types in two
    /// regions, or corruption); the rest of their batch was applied.
    pub undecodable_values: u64,
    /// Values from peers for tables this region has not declared, dropped
    /// because [`RegionConfig::undeclared_bytes_max`] was reached: each
    /// such table is repaired by anti-entropy once it is declared.
    pub undeclared_values_dropped: u64,
    /// Times the outbox outgrew its bound and was dropped.
    pub outbox_overflows: u64,
    /// Anti-entropy exchanges completed.
    pub syncs_completed: u64,
    /// Key states received through anti-entropy.
    pub sync_states_received: u64,
    /// Batches of other regions' writes this region passed on to peers
    /// whose link to their origin is down (protocol 7 on; retransmissions
    /// included). Zero while every link works.
    pub relayed_batches_sent: u64,
    /// Such batches received from peers (each applied at most once: what is
    /// already held is only acknowledged).
    pub relayed_batches_received: u64,
    /// Peers that stopped being relayed to because their backlog outgrew
    /// the outbox bounds (anti-entropy repairs them).
    pub relay_overflows: u64,
    /// Bytes of other regions' batches kept for relaying.
    pub relay_log_bytes: usize,
    /// Peer handshakes refused (see [`HandshakeRefusal`]).
    pub refused_handshakes: u64,
    /// Frames ignored, not refused: late frames of a peer's earlier
    /// incarnation, acknowledgements and batches that arrived before a
    /// restarted peer's hello (the peer sends them again), and frames of a
    /// refused peer.
    pub stale_frames: u64,
    /// Claims of a peer about a third region's writes beyond what that
    /// region told us itself (in an anti-entropy transfer's applied vector,
    /// or taken back at that region's hello): never counted as held, and
    /// each starts an exchange with the region when it is connected. Honest peers cause
    /// these too when a region's latest writes reached them first; a steady
    /// climb with one peer points at a buggy one.
    pub untrusted_claims: u64,
    /// Values stamped later than this region's clock plus its max offset
    /// (a region's clock runs ahead): refused with their batch (counted in
    /// `rejected_frames` too, and resent by their origin), or set aside
    /// from an anti-entropy transfer (whose vector is then not believed;
    /// a later exchange brings them).
    pub values_ahead: u64,
    /// Values of an anti-entropy transfer set aside because a value of the
    /// same transaction was (it was ahead, see `values_ahead`): a transfer
    /// never shows part of a transaction its sender knows (protocol 7 on);
    /// a later exchange brings them together.
    pub transaction_values_set_aside: u64,
    /// Anti-entropy transfers held, not sent, until the peer's protocol
    /// was settled (its announcement had not arrived on the connection): a
    /// peer of protocol 7 or later gets a transfer only with its
    /// transaction groups; one that never announces (protocol 1) gets its
    /// plain transfer once [`PROTOCOL_ANNOUNCEMENTS_MAX`](crate::region::PROTOCOL_ANNOUNCEMENTS_MAX)
    /// announcements went unanswered.
    pub transfers_held: u64,
    /// Rights requests this region sent to peers (see
    /// [`Region::bounded_table`]): each refused sale or low holding asks at
    /// most once per `rights_request_timeout` per key.
    pub rights_requested: u64,
    /// Rights (units) this region granted to peers that asked.
    pub rights_granted: u64,
    /// Rights requests this region answered with nothing (it held none, the
    /// table is not bounded here, or it answered that peer and key within
    /// `rights_request_timeout`).
    pub rights_refused: u64,
    /// Homed operations this region forwarded to their keys' homes (each
    /// request counted once, however often it was sent again; see
    /// [`Region::homed_table`]).
    pub homed_forwarded: u64,
    /// Forwarded operations this region served as their keys' home:
    /// applied, read, or rejected by the value.
    pub homed_served: u64,
    /// Forwarded requests this region received again (a duplicated or
    /// resent frame) and answered from its memory of replies, without
    /// applying them again.
    pub homed_duplicates: u64,
    /// Forwarded requests this region refused (not the key's home here,
    /// not a homed table here, types that do not fit, expired): nothing
    /// applied.
    pub homed_refused: u64,
    /// Homes of keys moved by this region: handoffs written here as the
    /// key's old home ([`HomedTable::move_home`]) and failovers written
    /// here by an operator ([`HomedTable::fail_over_home`],
    /// [`HomedTable::fail_over_key`]), one per key.
    ///
    /// [`HomedTable::move_home`]: crate::region::HomedTable::move_home
    /// [`HomedTable::fail_over_home`]: crate::region::HomedTable::fail_over_home
    /// [`HomedTable::fail_over_key`]: crate::region::HomedTable::fail_over_key
    pub homed_moves: u64,
    /// Homed operations this region refused, local or forwarded, because
    /// the key's home moved away from here (its view of the key is at an
    /// epoch above 0 and names another home): fenced, nothing applied.
    pub homed_fenced: u64,
    /// Homed operations this region sent on to the home named by a
    /// refusal ([`HomedRefusal::Moved`](crate::region::HomedRefusal::Moved)):
    /// each hop counted.
    pub homed_redirects: u64,
    /// Remote timestamps (of batches and transfers) past this region's
    /// clock plus its max offset, which the clock did not follow beyond
    /// that bound ([`Hlc::remote_rejects`](crate::clock::Hlc::remote_rejects)).
    pub hlc_remote_rejects: u64,
    /// Starts of this replica with storage; without, its start time (ms).
    pub incarnation: u64,
    /// Local writes committed to storage (`None` without storage).
    pub committed: Option<u64>,
    /// Commits to storage.
    pub commits: u64,
    /// Local writes those commits covered: `committed_writes / commits` is
    /// the writes per commit (fsync) of group commit.
    pub committed_writes: u64,
    /// Commits that failed (and were retried).
    pub commit_failures: u64,
    /// Why the engine failed, once it has: reads and writes then return
    /// [`RegionError::Engine`].
    pub engine_failure: Option<EngineFailure>,
    /// True once [`Region::shutdown`] began: writes are refused.
    pub closed: bool,
    /// Each peer.
    pub peers: Vec<PeerStats>,
    /// Each table.
    pub tables: Vec<TableStats>,
}

/// What [`Region::shutdown`] flushed and what it could not.
#[derive(Clone, Debug)]
pub struct ShutdownReport {
    /// The region's name.
    pub name: String,
    /// Local writes made in this process's life (with storage, since the
    /// store was created).
    pub writes: u64,
    /// With storage, local writes committed (`None` without): a write
    /// above it is lost with this process.
    pub committed: Option<u64>,
    /// Each peer: what it acknowledged and what it did not (a peer that
    /// was not connected is not waited for).
    pub peers: Vec<PeerFlush>,
    /// Why the engine had failed, if it had: nothing was flushed.
    pub engine_failure: Option<EngineFailure>,
    /// How long the shutdown took.
    pub waited: Duration,
}

impl ShutdownReport {
    /// True when every write is acknowledged by every peer (none needs a
    /// repair) and, with storage, committed, and the engine had not failed.
    pub fn is_complete(&self) -> bool {
        self.engine_failure.is_none()
            && self.committed.is_none_or(|c| c >= self.writes)
            && self
                .peers
                .iter()
                .all(|p| p.unacknowledged == 0 && !p.repair_pending)
    }

    /// Our writes not acknowledged, summed over the peers.
    pub fn unacknowledged(&self) -> u64 {
        self.peers.iter().map(|p| p.unacknowledged).sum()
    }
}

/// One peer in a [`ShutdownReport`].
#[derive(Clone, Debug)]
pub struct PeerFlush {
    /// The peer's name.
    pub name: String,
    /// Whether it was reachable at the end.
    pub connected: bool,
    /// Our writes it acknowledged.
    pub acknowledged: u64,
    /// Our writes it did not acknowledge (it may still have received
    /// some). With storage they stay in the stored outbox and are sent
    /// again after a restart; without, those it lacks are lost.
    pub unacknowledged: u64,
    /// It was waiting for a repair by anti-entropy (its outbox claim was
    /// dropped), which did not finish.
    pub repair_pending: bool,
}

/// One peer, as a region sees it.
#[derive(Clone, Debug)]
pub struct PeerStats {
    /// The peer's name.
    pub name: String,
    /// Whether the transport reports it reachable.
    pub connected: bool,
    /// The replica id its handshake (or, before one, its first batch)
    /// presented.
    pub replica: Option<ReplicaId>,
    /// The incarnation its last accepted handshake presented.
    pub incarnation: Option<u64>,
    /// Why its handshake on the current connection was refused.
    pub refused: Option<HandshakeRefusal>,
    /// The engine protocol of the current connection: the newest both
    /// sides speak ([`PROTOCOL_VERSION`](crate::region::PROTOCOL_VERSION)),
    /// 1 with a peer that announces none.
    pub protocol: u16,
    /// Our writes it has not acknowledged.
    pub unacknowledged: u64,
    /// Its writes we know of and have not applied.
    pub behind: u64,
    /// Time since we last heard from it.
    pub since_contact: Option<Duration>,
    /// Our writes queued for it in the outbox.
    pub outbox_len: u64,
    /// Replication lag: how long ago (by this region's clock) the oldest of
    /// our writes it has not acknowledged was made; zero when it has
    /// acknowledged every one.
    pub lag: Duration,
    /// Its clock minus ours, in ms, as last observed (`None` before any
    /// timestamp of it arrived): the time stamped on its latest batch or
    /// transfer minus our wall clock on arrival, so transit time makes it
    /// read lower. Positive: its clock runs ahead.
    pub clock_offset_ms: Option<i64>,
    /// Encoded frame bytes sent to it (every message, anti-entropy
    /// included), as handed to the transport. Frames the engine sent since
    /// it last held its lock are added the next time it does: within one
    /// batch delay.
    pub bytes_sent: u64,
    /// Encoded frame bytes received from it, undecodable frames included.
    pub bytes_received: u64,
    /// The part of `bytes_sent` that was anti-entropy (requests,
    /// transfers, confirmations).
    pub sync_bytes_sent: u64,
    /// The part of `bytes_received` that was anti-entropy.
    pub sync_bytes_received: u64,
}

/// One table, as a region holds it.
#[derive(Clone, Debug)]
pub struct TableStats {
    /// The table's name.
    pub name: String,
    /// Keys held.
    pub keys: usize,
    /// Keys scans of this region skipped because they do not decode as
    /// the table's key type (a peer declared it with another key type).
    pub undecodable_keys: u64,
    /// Conflicts resolved here (resolver tables).
    pub conflicts: u64,
    /// The strategy of its resolver, by
    /// [`Strategy::as_str`](crate::resolve::Strategy::as_str) (resolver
    /// tables; `None` for CRDT tables): the `strategy` label of
    /// `archipelago_conflicts_total`.
    pub strategy: Option<&'static str>,
}

/// Why a frame from a peer was refused: the `reason` label of
/// `archipelago_rejected_frames_total` and of the `rejected input` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The frame, or entries or digests inside it, do not decode.
    Undecodable,
    /// Well-framed but inconsistent: a bad origin, sequence range, entry
    /// count, chunk index or bucket, or a transfer without its vector.
    Malformed,
    /// A batch for an origin that is not the sending peer.
    NotSenderOrigin,
    /// A claim about writes of ours we never made or never sent it.
    ForgedClaim,
    /// Over a bound: a transfer over `sync_transfer_bytes_max`, a hello
    /// whose vector names more than
    /// [`HELLO_VECTOR_ENTRIES_MAX`](crate::region::HELLO_VECTOR_ENTRIES_MAX)
    /// replicas. (Values
    /// of undeclared tables over `undeclared_bytes_max` refuse no frame:
    /// they are dropped, see [`RegionStats::undeclared_values_dropped`].)
    OverLimit,
    /// A value stamped past this clock plus its max offset.
    ClockAhead,
    /// A message the negotiated protocol does not have.
    Protocol,
}

impl RejectReason {
    /// Every reason, in the order of [`RegionStats::rejected_by_reason`].
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Undecodable,
        RejectReason::Malformed,
        RejectReason::NotSenderOrigin,
        RejectReason::ForgedClaim,
        RejectReason::OverLimit,
        RejectReason::ClockAhead,
        RejectReason::Protocol,
    ];

    /// Its label value, e.g. `"not_sender_origin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Undecodable => "undecodable",
            RejectReason::Malformed => "malformed",
            RejectReason::NotSenderOrigin => "not_sender_origin",
            RejectReason::ForgedClaim => "forged_claim",
            RejectReason::OverLimit => "over_limit",
            RejectReason::ClockAhead => "clock_ahead",
            RejectReason::Protocol => "protocol",
        }
    }

    /// Its index in [`RejectReason::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RegionStats {
    /// Frames refused for `reason` (they sum to `rejected_frames`).
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected_by_reason[reason.index()].1
    }
}
