//! What can go wrong: [`RegionError`], [`EngineFailure`], [`HandshakeRefusal`].

use super::*;

/// What went wrong with a region operation.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Regions run their engine on tokio: build them inside a runtime.
    #[error("a region must be built inside a tokio runtime")]
    NoRuntime,
    /// The table exists with another value type.
    #[error("table {table:?} holds {registered}, not {requested}")]
    TableType {
        /// The table.
        table: String,
        /// Its value type.
        registered: &'static str,
        /// The type asked for.
        requested: &'static str,
    },
    /// The table exists with another key type: a handle of `u8` keys and
    /// one of `u64` keys would encode `1` alike and hit the same key.
    #[error("table {table:?} has keys of {registered}, not {requested}")]
    KeyType {
        /// The table.
        table: String,
        /// Its key type.
        registered: &'static str,
        /// The key type asked for.
        requested: &'static str,
    },
    /// A scan of a table holding more keys than
    /// [`RegionConfig::scan_keys_max`]: refused before anything is copied
    /// (a scan copies every key under the state's lock).
    #[error("table {table:?} holds {keys} keys, more than a scan copies ({max})")]
    ScanTooLarge {
        /// The table.
        table: String,
        /// Keys it holds.
        keys: usize,
        /// [`RegionConfig::scan_keys_max`].
        max: usize,
    },
    /// A transaction past [`RegionConfig::batch_len_max`] writes or
    /// [`RegionConfig::batch_bytes_max`] bytes of keys and deltas: nothing
    /// was applied.
    #[error(
        "transaction of {writes} writes and {bytes} bytes, more than {writes_max} writes or {bytes_max} bytes"
    )]
    TransactionTooLarge {
        /// Writes it staged.
        writes: usize,
        /// Bytes of keys and deltas.
        bytes: usize,
        /// [`RegionConfig::batch_len_max`].
        writes_max: usize,
        /// [`RegionConfig::batch_bytes_max`].
        bytes_max: usize,
    },
    /// A key or value could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] WireError),
    /// The region's storage could not be opened or read at `build`, or a
    /// `Local` write's commit failed: the write is applied here (and will
    /// be committed and replicated when the disk recovers) but is not
    /// durable.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// [`RegionBuilder::replica_id`] pinned an id the store does not hold.
    #[error("the store holds replica id {stored}, the builder pinned {pinned}")]
    PinnedReplicaId {
        /// The id in the store.
        stored: ReplicaId,
        /// The id pinned.
        pinned: ReplicaId,
    },
    /// [`Region::retire_peer`] was asked to retire this region itself.
    #[error("a region cannot retire itself")]
    RetireSelf,
    /// A write after [`Region::shutdown`] began: refused, nothing changed
    /// (a shut-down region would never replicate or commit it). Reads
    /// still work.
    #[error("the region was shut down: writes are refused")]
    Closed,
    /// The region's engine failed (see [`EngineFailure`]): from then on
    /// every read and write is refused, since nothing would replicate and
    /// the state may be half-changed. Also in [`RegionStats::engine_failure`].
    #[error("the region's engine failed: {0}")]
    Engine(EngineFailure),
    /// A sale through a [`BoundedTable`] refused: this region holds too
    /// few rights (what it holds, and what all regions hold as far as it
    /// knows, are in the [`RightsError`](crate::crdt::RightsError)).
    /// Refused at once, never after waiting on the network: nothing
    /// changed, and the region has asked a peer for rights, so the sale
    /// may succeed later.
    #[error(transparent)]
    Rights(#[from] crate::crdt::RightsError),
    /// A key of a homed table ([`Region::homed_table`]) whose placement
    /// names no home (no pinned entry, no function): nothing was applied.
    #[error("table {table:?}: the placement names no home for this key")]
    NoHome {
        /// The table.
        table: String,
    },
    /// A homed write (or read at the home) made away from the key's home
    /// got no answer from the home within `homed_forward_timeout`: the
    /// home is down, partitioned away, or too slow. Never applied in this
    /// region. When `maybe_applied` is false the request never left this
    /// region (the home was not connected the whole time): it was not
    /// applied anywhere. When true the home may have applied it and its
    /// answer been lost: read it at the home to know.
    #[error(
        "table {table:?}: home {home} did not answer within {waited:?} (request sent: {maybe_applied})"
    )]
    HomeUnreachable {
        /// The table.
        table: String,
        /// The key's home region.
        home: String,
        /// How long the call waited.
        waited: Duration,
        /// The request left this region at least once.
        maybe_applied: bool,
    },
    /// The key's home speaks an engine protocol older than homed
    /// operations (4, see [`PROTOCOL_VERSION`](crate::region::PROTOCOL_VERSION))
    /// on its connection with this region: nothing is sent to it, nothing
    /// was applied. Raise `protocol_version_max` at both once every region
    /// runs a build of protocol 4.
    #[error(
        "table {table:?}: home {home} speaks protocol {protocol} with us; homed operations need 4"
    )]
    HomeProtocol {
        /// The table.
        table: String,
        /// The key's home region.
        home: String,
        /// The protocol of the connection.
        protocol: u16,
    },
    /// A home move named a region that is neither this one nor one of
    /// its peers ([`HomedTable::move_home`](crate::region::HomedTable::move_home),
    /// the failovers): nothing moved.
    #[error("table {table:?}: {home} is not a region this one knows")]
    UnknownHome {
        /// The table.
        table: String,
        /// The region named as the new home.
        home: String,
    },
    /// A home move while this region speaks with a peer of a protocol
    /// older than moving homes (5, see
    /// [`PROTOCOL_VERSION`](crate::region::PROTOCOL_VERSION)): that peer
    /// would go on placing the key at its former home, so nothing moved.
    /// Move homes once every region runs a build of protocol 5.
    #[error("table {table:?}: peer {region} speaks protocol {protocol}; moving homes needs 5")]
    MoveProtocol {
        /// The table.
        table: String,
        /// The older peer.
        region: String,
        /// The protocol of its connection.
        protocol: u16,
    },
    /// The region asked as the key's home refused the request (see
    /// [`HomedRefusal`](crate::region::HomedRefusal)): nothing was applied.
    #[error("table {table:?}: home {home} refused the request: {refusal}")]
    HomedRefused {
        /// The table.
        table: String,
        /// The region asked.
        home: String,
        /// Why it refused.
        refusal: crate::region::HomedRefusal,
    },
    /// More homed requests waiting for their homes' answers than
    /// [`HOMED_FORWARDS_PENDING_MAX`](crate::region::HOMED_FORWARDS_PENDING_MAX):
    /// refused at once, nothing sent or applied.
    #[error("{max} homed requests already wait for their homes")]
    TooManyForwards {
        /// The bound.
        max: usize,
    },
    /// The table exists with another resolver (or as a CRDT table, or a
    /// CRDT table was asked for a resolver table): a second handle would
    /// merge with one resolver and read with another.
    #[error("table {table:?} is settled by {registered}, not {requested}")]
    ResolverMismatch {
        /// The table.
        table: String,
        /// Its resolver's type (or that it has none).
        registered: &'static str,
        /// The resolver asked for (or that none was).
        requested: &'static str,
    },
    /// A write asked for [`AckLevel::Local`] on a region without storage.
    #[error("AckLevel::Local needs a region with storage")]
    NoStorage,
    /// A [`AckLevel::Replicated`] write was not applied by enough peers
    /// within `replication_wait_max`. It is applied here (and committed,
    /// with storage) and will still replicate: this says only that the
    /// wait ended.
    #[error(
        "write applied here and by {replicated} of {wanted} peers after {waited:?}; it is still local and will replicate"
    )]
    ReplicationTimeout {
        /// Peers that had applied it.
        replicated: usize,
        /// Peers asked for.
        wanted: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// A `Local` write's commit did not finish within `commit_wait_max`
    /// (the engine stopped, or the disk is that slow). The write is applied
    /// here and may still be committed.
    #[error("the commit of a Local write did not finish within {waited:?}")]
    CommitTimeout {
        /// How long it waited.
        waited: Duration,
    },
    /// This region had not applied what the session needs within the wait
    /// bound: the read or write was refused rather than served stale.
    #[error("region {region} has not applied the session's writes after {waited:?}: {}", missing.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
    SessionTimeout {
        /// This region.
        region: String,
        /// How long it waited.
        waited: Duration,
        /// What it still lacks, per replica.
        missing: Vec<Missing>,
    },
}

/// Why a region's engine stopped without [`Region::shutdown`]. Once it
/// has, every read and write of the region returns
/// [`RegionError::Engine`], [`RegionStats::engine_failure`] names it and it
/// is logged at `error`: a region never accepts writes it cannot replicate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineFailure {
    /// The engine task panicked: a bug, or a user resolver or merger that
    /// panicked while merging data from a peer (they run inside the engine).
    #[error("the engine panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// A panic while the region's state was locked (in the engine, or in a
    /// user type's `merge` or `clone`): the state may be half-changed.
    #[error("a panic while the region's state was locked")]
    Poisoned,
    /// The transport ended (it returns no more events): nothing reaches
    /// the peers any more.
    #[error("the transport closed")]
    TransportClosed,
    /// The engine task was cancelled (its tokio runtime shut down).
    #[error("the engine task was cancelled")]
    Cancelled,
}

/// Why a region refused a peer's handshake: the peer's frames are ignored
/// until it connects again with an identity that fits. Each refusal is
/// counted in [`RegionStats::refused_handshakes`], kept in
/// [`PeerStats::refused`] and logged at `warn`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRefusal {
    /// The peer speaks no engine protocol version we speak (see
    /// [`PROTOCOL_VERSION`](crate::region::PROTOCOL_VERSION)): nothing it
    /// sends is read until it reconnects with a range that meets ours.
    #[error("peer speaks protocol versions {theirs:?}; this region speaks {ours:?}")]
    Protocol {
        /// The versions we speak: (oldest, newest).
        ours: (u16, u16),
        /// The versions it announced: (oldest, newest).
        theirs: (u16, u16),
    },
    /// The peer presented this region's own replica id: two replicas with
    /// one id would mint the same dots for different writes.
    #[error("peer presents our own replica id {replica}")]
    OurReplicaId {
        /// The id both claim.
        replica: ReplicaId,
    },
    /// Another peer already holds this replica id.
    #[error("replica id {replica} already belongs to peer {holder:?}")]
    IdOfAnotherPeer {
        /// The id both claim.
        replica: ReplicaId,
        /// The peer that presented it first.
        holder: String,
    },
    /// The peer presented an incarnation older than one it presented
    /// before: an old process (or a copy of its storage) still running next
    /// to its successor.
    #[error("replica {replica} presents incarnation {presented}, older than {known}")]
    StaleIncarnation {
        /// Its replica id.
        replica: ReplicaId,
        /// The incarnation we saw before.
        known: u64,
        /// The incarnation it presents now.
        presented: u64,
    },
    /// We applied more of the peer's writes than it says it has made: it
    /// restarted without the state behind its replica id (a pinned id
    /// without storage, or storage restored from an old copy), so its next
    /// writes would reuse dots we hold for other writes.
    #[error("replica {replica} says it made {presented} writes; we applied {applied} of them")]
    WritesRegressed {
        /// Its replica id.
        replica: ReplicaId,
        /// Its writes we applied.
        applied: u64,
        /// Its writes it says it made.
        presented: u64,
    },
}
