//! Durable state: a region's identity and data that survive restarts.
//!
//! A region built with a [`Storage`] ([`RegionBuilder::storage`] or
//! [`RegionBuilder::data_dir`]) keeps, atomically per commit:
//! - its **identity**: the region name, a replica id drawn once when the
//!   store is created, and an **incarnation** counter bumped (and committed)
//!   at every start, before the region says hello to any peer;
//! - its **progress**: the last sequence number it issued, the high-water
//!   mark of its hybrid logical clock and its applied version vector, so a
//!   restart never reuses a dot nor stamps below a stamp it gave out;
//! - each table's **states**, key by key (only keys that changed since the
//!   last commit are written);
//! - the **outbox** of local writes not yet acknowledged by every peer, one
//!   value per segment (a batch's worth of writes), deleted once
//!   acknowledged;
//! - per-peer **cursors**: how much of our writes each peer acknowledged;
//! - the **transaction groups** this region names in its anti-entropy
//!   transfers (which keys one multi-key transaction wrote, see
//!   `replication::core::tx_groups`), one row per group, bounded as the
//!   in-memory log is (oldest deleted first); a transaction's group is
//!   stored in the commit that stores its writes.
//!
//! The engine commits on its tick (every `batch_delay`): one commit covers
//! every write made since the last one (group commit), and a region with
//! storage sends peers only what is committed, so nothing a peer holds can
//! be lost by a crash here. [`AckLevel`](crate::region::AckLevel) says when
//! a write returns.
//!
//! [`RegionBuilder::storage`]: crate::region::RegionBuilder::storage
//! [`RegionBuilder::data_dir`]: crate::region::RegionBuilder::data_dir
//!
//! ```
//! use archipelago::crdt::GCounter;
//! use archipelago::region::{AckLevel, Region};
//! use archipelago::storage::MemoryStorage;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), archipelago::region::RegionError> {
//! // MemoryStorage outlives the region that uses it: a restart in a test.
//! let disk = MemoryStorage::new();
//! let first = Region::builder("ap-northeast").storage(disk.clone()).build()?;
//! let stock = first.table::<String, GCounter>("stock")?.with_ack(AckLevel::Local);
//! stock.update("sku-1", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 3))).await?;
//! first.shutdown().await;
//! let id = first.replica();
//! drop(first);
//!
//! let again = Region::builder("ap-northeast").storage(disk).build()?;
//! assert_eq!(again.replica(), id, "the same replica, incarnation 2");
//! assert_eq!(again.incarnation(), 2);
//! let stock = again.table::<String, GCounter>("stock")?;
//! assert_eq!(stock.read("sku-1").await?.map(|c| c.value()), Some(3));
//! # Ok(()) }
//! ```
//!
//! ## What grows on disk
//! Acknowledged outbox segments are deleted, and the unacknowledged outbox
//! is bounded by `outbox_len_max` and `outbox_bytes_max`
//! ([`RegionConfig`](crate::region::RegionConfig)). Besides it:
//! - **table states**: one row per key ever written. Rows are never
//!   deleted: a removed key keeps its tombstone (delete context), so the
//!   store grows with the key space: **unbounded**. Values of tables this
//!   region has not declared are stored as such rows too, at most
//!   `undeclared_bytes_max` of them;
//! - **per-replica entries**: the applied vector, and inside each state its
//!   per-replica counters and causal context, gain one entry per replica id
//!   that ever wrote (every new region, and every build of a region without
//!   storage) and never lose it, retired ids included: **unbounded**;
//! - **retired peers**: one entry per region retired for good, with its
//!   replica ids (at most 17): grows by one per retirement;
//! - **cursors**: one row per peer name, deleted when the peer is retired;
//! - [`RedbStorage`]'s **journal**: bounded, folded into the tables past
//!   `JOURNAL_BYTES_MAX` bytes (4 MiB) or `JOURNAL_LEN_MAX` commits (4096);
//! - the **redb file** itself: freed pages are reused, but the file does not
//!   shrink (nothing compacts it), so it stays at its high-water size.
//!
//! ## Implementations
//! - [`MemoryStorage`]: in memory, shared by its clones (tests; a region
//!   that must outlive nothing but its process). It can be told to fail
//!   commits, as a full disk would.
//! - [`RedbStorage`] (feature `redb`, on by default): a [redb] file; one
//!   commit is one redb write transaction with immediate durability (one
//!   fsync) that appends the commit to a journal, folded into the tables
//!   every few megabytes.
//!
//! ## Bad storage
//! Opening a store of another region ([`StorageError::OtherRegion`]), one
//! written by a newer format ([`StorageError::NewerFormat`]), or a
//! truncated or corrupted file ([`StorageError::Corrupt`]) fails the
//! region's `build` with a typed error; nothing stored is overwritten. A
//! commit that fails (a full disk: [`StorageError::Io`]) leaves the store
//! as it was before it; the region keeps serving from memory, retries on
//! its next tick, and writes waiting for `Local` acknowledgement get the
//! error.
//!
//! [redb]: https://docs.rs/redb

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::clock::{ReplicaId, Timestamp, VersionVector};
use crate::wire;

#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "redb")]
pub use redb_store::{JOURNAL_BYTES_MAX, JOURNAL_LEN_MAX, RedbStorage};

/// The layout version of stored state this build writes and reads. A store
/// written by a later version is refused ([`StorageError::NewerFormat`]).
///
/// Version 2 added [`RedbStorage`]'s journal of commits not yet folded
/// into its tables: a build that reads only version 1 would miss them, so
/// it refuses the store. Version 3 widened replica ids to 64 bits: stored
/// values carry them as varints, so a version 1 or 2 store (32-bit ids)
/// reads unchanged, but its identity, vectors and states may now hold ids
/// a build of version 2 cannot decode, so such a build refuses the store
/// with [`StorageError::NewerFormat`] instead of calling it corrupt. Older
/// stores are read as they are, and written as the current version from
/// their first commit on. Version 4 delimits the user values inside
/// resolver tables' states (see [`VersionSet`](crate::resolve::VersionSet),
/// *Schema evolution*): a build of version 3 would read a delimited state
/// as undecodable, so it refuses the store. The migration is in the
/// decoder: states of version 3 and older read as they are (their layout
/// is told apart by its first bytes), and each is written delimited when
/// its key next changes. Version 5 does the same for the values inside
/// [`LwwRegister`](crate::crdt::LwwRegister), [`LwwMap`](crate::crdt::LwwMap)
/// and [`MvRegister`](crate::crdt::MvRegister) states (see *Schema
/// evolution* on each), with the same lazy migration: states of version 4
/// and older read as they are, and each is written delimited when its key
/// next changes. Homed tables' states joined version 5 later (see
/// [`HomedValue`](crate::region::HomedValue)): their older layout, as
/// stored by earlier builds of version 5 and older, is told apart by its
/// first byte and migrates the same way, so the version stayed 5.
/// Version 6 adds the transaction groups ([`Snapshot::tx_groups`]): a
/// build of version 5 would not keep them (nor read [`RedbStorage`]'s
/// journal rows that carry them), so it refuses the store. A store of
/// version 5 or older opens with no groups: its transfers name the groups
/// of transactions written from then on.
pub const STORAGE_FORMAT_VERSION: u32 = 6;

/// What went wrong with a region's storage.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The store holds another region's identity.
    #[error("the store belongs to region {stored:?}, not {opening:?}")]
    OtherRegion {
        /// The region the store was created for.
        stored: String,
        /// The region being built on it.
        opening: String,
    },
    /// The store was written by a newer build.
    #[error("the store has format version {found}; this build reads up to {supported}")]
    NewerFormat {
        /// Its format version.
        found: u32,
        /// [`STORAGE_FORMAT_VERSION`].
        supported: u32,
    },
    /// The store's contents do not decode (a torn or corrupted file).
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    /// The store is open elsewhere (another region, or another process).
    #[error("the store is already open")]
    InUse,
    /// Reading or writing failed (a full disk, an I/O error).
    #[error("storage I/O: {0}")]
    Io(String),
}

/// Who a store belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The region name it was created for.
    pub region: String,
    /// The replica id drawn when it was created.
    pub replica: ReplicaId,
    /// Starts so far, this one included.
    pub incarnation: u64,
}

/// Where a region's writes and clock stand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last sequence number issued (and committed).
    pub seq: u64,
    /// The clock's high-water mark: no stamp given out is above it.
    pub hlc: Timestamp,
    /// Every write applied, the region's own included.
    pub applied: VersionVector,
}

/// Everything a store holds, as loaded when a region starts.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `None` for a new, empty store.
    pub identity: Option<Identity>,
    /// The last committed progress.
    pub progress: Progress,
    /// `(table, key, states)` with the key and states as the engine
    /// encoded them.
    pub states: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Outbox segments by the sequence number of their first write.
    pub outbox: Vec<(u64, Vec<u8>)>,
    /// Per-peer cursors: our writes each peer acknowledged.
    pub cursors: Vec<(String, u64)>,
    /// Peers retired for good, with their replica ids.
    pub retired: Vec<(String, Vec<ReplicaId>)>,
    /// Transaction groups by their id, ascending and consecutive, as the
    /// engine encoded them (none in a store of format 5 or older).
    pub tx_groups: Vec<(u64, Vec<u8>)>,
}

/// One atomic change to a store.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// A new identity (the first start) or incarnation.
    pub identity: Option<Identity>,
    /// The progress this commit brings the store to.
    pub progress: Option<Progress>,
    /// `(table, key, states)` to write, replacing what the key held.
    pub states: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Outbox segments to write (a segment that grew is written again).
    pub outbox_put: Vec<(u64, Vec<u8>)>,
    /// Outbox segments whose first sequence number is below this are
    /// deleted (acknowledged by every peer, or dropped for anti-entropy).
    pub outbox_keep_from: u64,
    /// Cursors to write.
    pub cursors: Vec<(String, u64)>,
    /// The whole list of retired peers, when it changed.
    pub retired: Option<Vec<(String, Vec<ReplicaId>)>>,
    /// Transaction groups to write, by id.
    pub tx_groups_put: Vec<(u64, Vec<u8>)>,
    /// Transaction groups whose id is below this are deleted (forgotten
    /// past the bounds of the log).
    pub tx_groups_keep_from: u64,
}

impl Commit {
    /// True when the commit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.identity.is_none()
            && self.progress.is_none()
            && self.states.is_empty()
            && self.outbox_put.is_empty()
            && self.cursors.is_empty()
            && self.retired.is_none()
            && self.tx_groups_put.is_empty()
    }
}

/// The seam between a region and its disk: two calls, both blocking (the
/// engine runs them on tokio's blocking pool).
///
/// An implementation must make each [`commit`](Storage::commit) atomic and
/// durable before it returns `Ok`: after a crash, a later
/// [`load`](Storage::load) sees every committed change or none of it.
pub trait Storage: Send + 'static {
    /// Everything stored (an empty [`Snapshot`] for a new store).
    ///
    /// # Errors
    /// [`StorageError`] when the store cannot be read or does not decode.
    fn load(&mut self) -> Result<Snapshot, StorageError>;

    /// Applies `commit` atomically and durably.
    ///
    /// # Errors
    /// [`StorageError::Io`] when it could not be made durable; the store is
    /// then as it was before.
    fn commit(&mut self, commit: &Commit) -> Result<(), StorageError>;
}

impl Storage for Box<dyn Storage> {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        (**self).load()
    }
    fn commit(&mut self, commit: &Commit) -> Result<(), StorageError> {
        (**self).commit(commit)
    }
}

/// Stored meta values: the format version, then identity and progress
/// through `wire` (whose version byte covers their encoding).
pub(crate) fn encode_format() -> [u8; 4] {
    STORAGE_FORMAT_VERSION.to_le_bytes()
}

pub(crate) fn check_format(bytes: &[u8]) -> Result<(), StorageError> {
    let found = u32::from_le_bytes(
        bytes
            .try_into()
            .map_err(|_| StorageError::Corrupt("format version is not 4 bytes".into()))?,
    );
    if found > STORAGE_FORMAT_VERSION {
        return Err(StorageError::NewerFormat {
            found,
            supported: STORAGE_FORMAT_VERSION,
        });
    }
    if found == 0 {
        return Err(StorageError::Corrupt("format version 0".into()));
    }
    Ok(())
}

pub(crate) fn encode_meta<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    wire::encode(value).map_err(|e| StorageError::Io(format!("cannot encode: {e}")))
}

pub(crate) fn decode_meta<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    wire::decode(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

/// A store in memory, shared by its clones: build a region on a clone,
/// drop the region, build another on another clone, and it restarts with
/// what was committed. Nothing survives the process.
///
/// [`fail_commits`](MemoryStorage::fail_commits) makes commits fail as a
/// full disk would, for tests.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<MemoryInner>>,
    /// Commits succeed only while this is the store's generation (see
    /// [`crash`](MemoryStorage::crash)).
    generation: u64,
}

#[derive(Default)]
struct MemoryInner {
    format: Option<[u8; 4]>,
    identity: Option<Vec<u8>>,
    progress: Option<Vec<u8>>,
    retired: Option<Vec<u8>>,
    states: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    outbox: BTreeMap<u64, Vec<u8>>,
    cursors: BTreeMap<String, u64>,
    tx_groups: BTreeMap<u64, Vec<u8>>,
    fail: bool,
    commits: u64,
    generation: u64,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryStorage")
            .field("states", &inner.states.len())
            .field("outbox_segments", &inner.outbox.len())
            .field("commits", &inner.commits)
            .finish()
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// While `fail` is true, every commit fails with [`StorageError::Io`]
    /// and changes nothing.
    pub fn fail_commits(&self, fail: bool) {
        self.lock().fail = fail;
    }

    /// A crash of the process using this store: every existing handle
    /// (and its clones) can no longer commit, as a dead process writes
    /// nothing more, even a commit it was in the middle of. Returns the
    /// handle a restarted region opens.
    pub fn crash(&self) -> MemoryStorage {
        let mut inner = self.lock();
        inner.generation += 1;
        MemoryStorage {
            inner: Arc::clone(&self.inner),
            generation: inner.generation,
        }
    }

    /// Commits applied so far.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    /// Outbox segments stored.
    pub fn outbox_segments(&self) -> usize {
        self.lock().outbox.len()
    }

    /// Keys stored, over every table.
    pub fn keys(&self) -> usize {
        self.lock().states.len()
    }
}

impl Storage for MemoryStorage {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        let inner = self.lock();
        if let Some(format) = &inner.format {
            check_format(format)?;
        }
        Ok(Snapshot {
            identity: inner
                .identity
                .as_deref()
                .map(|b| decode_meta("identity", b))
                .transpose()?,
            progress: inner
                .progress
                .as_deref()
                .map(|b| decode_meta("progress", b))
                .transpose()?
                .unwrap_or_default(),
            retired: inner
                .retired
                .as_deref()
                .map(|b| decode_meta("retired peers", b))
                .transpose()?
                .unwrap_or_default(),
            states: inner
                .states
                .iter()
                .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
                .collect(),
            outbox: inner.outbox.iter().map(|(k, v)| (*k, v.clone())).collect(),
            cursors: inner.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            tx_groups: inner
                .tx_groups
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        })
    }

    fn commit(&mut self, commit: &Commit) -> Result<(), StorageError> {
        let identity = commit.identity.as_ref().map(encode_meta).transpose()?;
        let progress = commit.progress.as_ref().map(encode_meta).transpose()?;
        let retired = commit.retired.as_ref().map(encode_meta).transpose()?;
        let mut inner = self.lock();
        if inner.fail {
            return Err(StorageError::Io(
                "no space left on device (injected)".into(),
            ));
        }
        if inner.generation != self.generation {
            return Err(StorageError::Io(
                "the process crashed (MemoryStorage::crash)".into(),
            ));
        }
        inner.format = Some(encode_format());
        if let Some(identity) = identity {
            inner.identity = Some(identity);
        }
        if let Some(progress) = progress {
            inner.progress = Some(progress);
        }
        if let Some(retired) = retired {
            inner.retired = Some(retired);
        }
        for (table, key, states) in &commit.states {
            inner
                .states
                .insert((table.clone(), key.clone()), states.clone());
        }
        let keep = inner.outbox.split_off(&commit.outbox_keep_from);
        inner.outbox = keep;
        for (first, segment) in &commit.outbox_put {
            if *first >= commit.outbox_keep_from {
                inner.outbox.insert(*first, segment.clone());
            }
        }
        if let Some(retired) = &commit.retired {
            for (peer, _) in retired {
                inner.cursors.remove(peer);
            }
        }
        for (peer, acked) in &commit.cursors {
            inner.cursors.insert(peer.clone(), *acked);
        }
        let keep = inner.tx_groups.split_off(&commit.tx_groups_keep_from);
        inner.tx_groups = keep;
        for (id, group) in &commit.tx_groups_put {
            if *id >= commit.tx_groups_keep_from {
                inner.tx_groups.insert(*id, group.clone());
            }
        }
        inner.commits += 1;
        Ok(())
    }
}
