//! [`RegionConfig`]: a region's limits and timings.

use super::*;

/// The newest engine protocol this build speaks.
///
/// - **1**: the frames of `tests/fixtures/frames/v1` (hello, batch,
///   acknowledgement, anti-entropy), no version announced.
/// - **2**: protocol 1, and each side announces the range of versions it
///   speaks before its hello on every connection; a peer whose range does
///   not meet ours is refused ([`HandshakeRefusal::Protocol`]).
/// - **3**: protocol 2, and rights requests: a region short of a bounded
///   counter's rights asks a peer for some ([`Region::bounded_table`]). A
///   region sends them only on connections of protocol 3 or later.
/// - **4**: protocol 3, and homed operations: a write (or a read at the
///   home) of a homed table's key made away from its home is forwarded to
///   the home and answered ([`Region::homed_table`]). A region forwards
///   only on connections of protocol 4 or later.
/// - **5**: protocol 4, and
///   - the user values inside resolver tables' states delimited (a length
///     in front), so a struct that gained a trailing `#[serde(default)]`
///     field decodes at either build and keeps the bytes it does not know
///     ([`VersionSet`](crate::resolve::VersionSet), *Schema evolution*); a
///     region re-encodes the states it sends on a connection of protocol 4
///     or older in the older layout;
///   - homes that move by epochs: a home answers a forwarded operation
///     with the key's epoch, and refuses one for a key whose home moved
///     away naming the new home and epoch
///     ([`HomedTable::move_home`](crate::region::HomedTable::move_home)).
///     A region moves homes only when no peer it speaks with is older.
/// - **6**: protocol 5, and
///   - the user values inside [`LwwRegister`](crate::crdt::LwwRegister),
///     [`LwwMap`](crate::crdt::LwwMap) and
///     [`MvRegister`](crate::crdt::MvRegister) states delimited too (see
///     *Schema evolution* on each); a region re-encodes the states it
///     sends on a connection of protocol 5 or older in that protocol's
///     layout. Homed tables' states carry their value delimited as well,
///     and a homed reply's value carries the bytes of a newer build's
///     fields (see *Schema evolution* on
///     [`HomedValue`](crate::region::HomedValue)); a requester of protocol
///     5 or older gets the value alone;
///   - anti-entropy by ranges: an exchange reconciles each table by
///     fingerprints of key ranges, so its bytes grow with the difference,
///     not the table. With a peer of protocol 5 or older a region compares
///     bucket digests as before.
/// - **7**: protocol 6, and
///   - transaction groups in anti-entropy transfers: a transfer names the
///     keys of each multi-key transaction the sender knows, and the
///     receiver sets aside every state of a group one of whose values it
///     sets aside (stamped past its clock's bound), so a transfer never
///     shows part of such a transaction. A peer of protocol 6 or older
///     gets transfers as before.
///   - batches name their origin once: each delta's ids of the batch's
///     origin and of the replicas its dependencies name travel as one- or
///     two-byte references, and each table is named once per run of its
///     entries (a `GCounter` increment of a random 64-bit replica: about
///     8.5 bytes a write instead of 17.5). A region sends peers of
///     protocol 6 or older the older layout.
///   - relay: a region whose link to a peer is down asks another peer to
///     pass on that peer's batches, and passes on batches itself to peers
///     that ask (never to a peer of protocol 6 or older; see
///     `RegionStats::relayed_batches_sent`).
pub const PROTOCOL_VERSION: u16 = 7;

/// The oldest engine protocol this build still speaks: a peer announcing
/// nothing speaks 1.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// Most times a region announces its protocol versions again on one
/// connection to a peer that greeted it without announcing its own (the
/// announcement was lost, or the peer speaks protocol 1), one per
/// `ack_timeout`. A peer answers a repeated announcement with its own, so a
/// lost announcement costs one `ack_timeout`, not the connection's features
/// (rights requests, homed operations); a peer of protocol 1 rejects each of
/// these frames (counted in its `rejected_frames`).
pub const PROTOCOL_ANNOUNCEMENTS_MAX: u32 = 8;

/// The most entries the applied vector of a peer's hello may hold: a hello
/// naming more replicas is refused and counted
/// ([`RejectReason::OverLimit`]), and nothing of it is kept (the peer stays
/// unbound until a hello within the limit).
///
/// Four times the replicas a session token may name
/// ([`TOKEN_REPLICAS_MAX`](crate::session::TOKEN_REPLICAS_MAX)): an honest
/// region's vector names every replica id whose writes it applied (a
/// region without storage takes a new id at every build, retired ids stay),
/// so it gets here only long after its session tokens stopped parsing. A
/// hello at the limit is at most 4096 × 18 bytes (72 KiB) of vector.
pub const HELLO_VECTOR_ENTRIES_MAX: usize = 4 * crate::session::TOKEN_REPLICAS_MAX;

/// Limits and timings of a region, each with its unit in its name. The
/// defaults are safe for a handful of regions on a WAN.
#[derive(Clone, Debug)]
pub struct RegionConfig {
    /// Most writes in one batch.
    pub batch_len_max: usize,
    /// Most delta bytes in one batch.
    pub batch_bytes_max: usize,
    /// Longest a write waits for its batch to fill before it is sent.
    pub batch_delay: Duration,
    /// How long a peer may leave sent writes unacknowledged before they are
    /// sent again.
    pub ack_timeout: Duration,
    /// Most writes kept for peers that have not acknowledged them. Past it
    /// the peers furthest behind (a dead one first) lose their claim on the
    /// outbox, until it fits: anti-entropy repairs them when they are back,
    /// and the other peers keep receiving batches.
    pub outbox_len_max: usize,
    /// Most bytes kept in the outbox (same rule): keys and deltas, and
    /// about 200 bytes of bookkeeping per run of writes.
    pub outbox_bytes_max: usize,
    /// Most batches held waiting for their dependencies.
    pub causal_buffer_len_max: usize,
    /// Most bytes held waiting for their dependencies.
    pub causal_buffer_bytes_max: usize,
    /// How often each peer is compared by anti-entropy besides reconnects.
    pub anti_entropy_interval: Duration,
    /// How long an anti-entropy exchange may go unanswered.
    pub sync_timeout: Duration,
    /// Most state bytes in one anti-entropy frame.
    pub sync_chunk_bytes_max: usize,
    /// Most bytes of one anti-entropy transfer held until its last chunk
    /// arrives (a transfer is merged all at once, so that no reader sees
    /// part of it). A larger transfer is refused and logged, and the peer
    /// stays behind: raise this for regions whose catch-up can be larger
    /// (a new region joining a large data set).
    pub sync_transfer_bytes_max: usize,
    /// Longest a session read or write waits for this region to catch up.
    pub session_wait_max: Duration,
    /// Longest [`Region::shutdown`] waits for acknowledgements.
    pub shutdown_wait_max: Duration,
    /// Longest a [`AckLevel::Local`] write waits for its commit.
    pub commit_wait_max: Duration,
    /// Longest a [`AckLevel::Replicated`] write waits for its peers.
    pub replication_wait_max: Duration,
    /// The newest engine protocol this region speaks, from
    /// [`PROTOCOL_VERSION_MIN`] to [`PROTOCOL_VERSION`] (the default).
    /// During a rolling upgrade that introduces a protocol, keep the new
    /// build at the old version until every region runs it, then raise it
    /// (as Kafka's `inter.broker.protocol.version`). At 1 a region speaks
    /// as builds of protocol 1 did: it announces no version and counts a
    /// peer's announcement as a frame it cannot read.
    pub protocol_version_max: u16,
    /// Most keys one scan of a table copies ([`Table::keys`],
    /// [`Table::iter`], [`Table::range`] and their resolver-table
    /// forms): a scan copies every key (and value) of the table while it
    /// holds the region's state lock, so this bounds how long it holds it
    /// and what it allocates. A larger table's scan is refused with
    /// [`RegionError::ScanTooLarge`].
    pub scan_keys_max: usize,
    /// Most bytes (keys and encoded values) held for tables this region
    /// has not declared (yet), all such tables together: during a rolling
    /// upgrade a peer on a newer build may write to a table this build
    /// does not know. Values past it are dropped, not held (a `warn` event
    /// once per table, counted in [`RegionStats::undeclared_values_dropped`]):
    /// replication of every other table goes on, and when the table is
    /// declared here the region starts an anti-entropy exchange with its
    /// peers at once, which brings what was dropped. Values restored from
    /// storage do not count against it.
    pub undeclared_bytes_max: usize,
    /// A region holding fewer rights than this to a key of a bounded table
    /// ([`Region::bounded_table`]) after a sale asks a peer holding many
    /// more (at least twice as many, plus two) for some, before a sale is
    /// refused. A refused sale asks whatever this is. 0 asks only on a
    /// refused sale.
    pub rights_request_below_units: u64,
    /// How long a rights request may go unanswered (no rights arrived)
    /// before it is sent again, to the peer then believed to hold the
    /// most. A granter also answers one request per peer and key within
    /// this time: a duplicated request moves rights once.
    pub rights_request_timeout: Duration,
    /// Longest a write to a homed table ([`Region::homed_table`]) made
    /// away from its key's home (and a [`HomedTable::read_at_home`]) waits
    /// for the home's answer, from the call: past it the call fails with
    /// [`RegionError::HomeUnreachable`] naming the home. The request is
    /// sent again (same id, applied at most once) every `ack_timeout`
    /// meanwhile, and held while the home is disconnected.
    pub homed_forward_timeout: Duration,
    /// Runs the engine on a thread of its own (a current-thread tokio
    /// runtime) instead of as a task on the runtime that built the region.
    /// A writer wakes a task engine onto its own worker (tokio's LIFO
    /// slot), where the two share one core while another may idle; on its
    /// own thread the engine runs beside the writers. Costs a thread per
    /// region and a cross-thread wake-up per batch and per frame received.
    /// Off by default (tests on a paused tokio clock need the engine on
    /// their runtime).
    pub engine_thread: bool,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            batch_len_max: 1024,
            batch_bytes_max: 1 << 20,
            batch_delay: Duration::from_millis(2),
            ack_timeout: Duration::from_millis(500),
            outbox_len_max: 1 << 20,
            outbox_bytes_max: 256 << 20,
            causal_buffer_len_max: 4096,
            causal_buffer_bytes_max: 256 << 20,
            anti_entropy_interval: Duration::from_secs(30),
            sync_timeout: Duration::from_secs(10),
            sync_chunk_bytes_max: 4 << 20,
            sync_transfer_bytes_max: 1 << 30,
            session_wait_max: Duration::from_secs(5),
            shutdown_wait_max: Duration::from_secs(5),
            commit_wait_max: Duration::from_secs(5),
            replication_wait_max: Duration::from_secs(5),
            protocol_version_max: PROTOCOL_VERSION,
            scan_keys_max: 1 << 20,
            undeclared_bytes_max: 64 << 20,
            rights_request_below_units: 2,
            rights_request_timeout: Duration::from_secs(1),
            homed_forward_timeout: Duration::from_secs(2),
            engine_thread: false,
        }
    }
}
