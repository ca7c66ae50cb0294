//! [`Storage`] on a redb file.
//!
//! A commit is one small row appended to a **journal** table and one fsync:
//! the changed keys' states, outbox segments and cursors it carries are
//! written into their own tables only when the journal is folded, every
//! [`JOURNAL_BYTES_MAX`] bytes or [`JOURNAL_LEN_MAX`] commits, in the
//! transaction of the commit that fills it. Rewriting the tables' pages at
//! every commit cost several fsyncs' worth of time; a key written by many
//! commits between two folds is now written once.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
    TableError,
};

use super::{
    Commit, Snapshot, Storage, StorageError, check_format, decode_meta, encode_format, encode_meta,
};
use crate::wire;

/// Format version, identity and progress.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `put_bytes(table) ++ key` → the key's states.
const STATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("states");
/// First sequence number → one outbox segment.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Peer name → our writes it acknowledged.
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// Commit number → one commit not yet folded into the tables above (see
/// [`Folded`] for its layout). Format version 2 on.
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Group id → one transaction group. Format version 6 on.
const TX_GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("tx_groups");

/// Journaled bytes past which a commit folds the journal into the tables
/// (unless set otherwise with [`RedbStorage::journal_bytes_max`]). Bounds
/// the memory the storage keeps of unfolded commits and the journal read
/// at a restart.
pub const JOURNAL_BYTES_MAX: usize = 4 << 20;
/// Journaled commits past which a commit folds the journal.
pub const JOURNAL_LEN_MAX: u64 = 4096;

/// Commits folded into one: what the journal holds beyond the tables, or
/// one journal row. Later commits override earlier ones key by key, as
/// applying them in order would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Folded {
    /// Meta values, encoded as the `meta` table holds them.
    identity: Option<Vec<u8>>,
    progress: Option<Vec<u8>>,
    retired: Option<Vec<u8>>,
    /// State key (see [`state_key`]) → states.
    states: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Outbox rows below this are deleted (0: none).
    outbox_keep_from: u64,
    /// Outbox rows written, all at or above `outbox_keep_from`.
    outbox_put: BTreeMap<u64, Vec<u8>>,
    /// Cursors written (`Some`) or removed (`None`, a retired peer).
    cursors: BTreeMap<String, Option<u64>>,
    /// Transaction group rows below this are deleted (0: none).
    tx_groups_keep_from: u64,
    /// Transaction group rows written, all at or above
    /// `tx_groups_keep_from`.
    tx_groups_put: BTreeMap<u64, Vec<u8>>,
}

impl Folded {
    fn of(commit: &Commit) -> Result<Folded, StorageError> {
        let mut cursors = BTreeMap::new();
        if let Some(retired) = &commit.retired {
            for (peer, _) in retired {
                cursors.insert(peer.clone(), None);
            }
        }
        for (peer, acked) in &commit.cursors {
            cursors.insert(peer.clone(), Some(*acked));
        }
        Ok(Folded {
            identity: commit.identity.as_ref().map(encode_meta).transpose()?,
            progress: commit.progress.as_ref().map(encode_meta).transpose()?,
            retired: commit.retired.as_ref().map(encode_meta).transpose()?,
            states: commit
                .states
                .iter()
                .map(|(t, key, value)| (state_key(t, key), value.clone()))
                .collect(),
            outbox_keep_from: commit.outbox_keep_from,
            outbox_put: commit
                .outbox_put
                .iter()
                .filter(|(first, _)| *first >= commit.outbox_keep_from)
                .map(|(first, segment)| (*first, segment.clone()))
                .collect(),
            cursors,
            tx_groups_keep_from: commit.tx_groups_keep_from,
            tx_groups_put: commit
                .tx_groups_put
                .iter()
                .filter(|(id, _)| *id >= commit.tx_groups_keep_from)
                .map(|(id, group)| (*id, group.clone()))
                .collect(),
        })
    }

    /// Applies `later` on top, as if committed after.
    fn fold(&mut self, later: Folded) {
        let Folded {
            identity,
            progress,
            retired,
            states,
            outbox_keep_from,
            outbox_put,
            cursors,
            tx_groups_keep_from,
            tx_groups_put,
        } = later;
        if identity.is_some() {
            self.identity = identity;
        }
        if progress.is_some() {
            self.progress = progress;
        }
        if retired.is_some() {
            self.retired = retired;
        }
        self.states.extend(states);
        self.outbox_put
            .retain(|first, _| *first >= outbox_keep_from);
        self.outbox_keep_from = self.outbox_keep_from.max(outbox_keep_from);
        self.outbox_put.extend(outbox_put);
        self.cursors.extend(cursors);
        self.tx_groups_put
            .retain(|id, _| *id >= tx_groups_keep_from);
        self.tx_groups_keep_from = self.tx_groups_keep_from.max(tx_groups_keep_from);
        self.tx_groups_put.extend(tx_groups_put);
    }

    /// A journal row: each part in turn, through `wire`'s framing. The
    /// transaction groups (format 6) come last, and only when the row has
    /// some: a row without them is laid out as format 5 wrote it.
    fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .states
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + self
                .outbox_put
                .values()
                .map(|s| s.len() + 12)
                .sum::<usize>()
            + 64;
        let mut out = Vec::with_capacity(size);
        for meta in [&self.identity, &self.progress, &self.retired] {
            match meta {
                Some(bytes) => {
                    out.push(1);
                    wire::put_bytes(&mut out, bytes);
                }
                None => out.push(0),
            }
        }
        wire::put_len(&mut out, self.states.len());
        for (key, value) in &self.states {
            wire::put_bytes(&mut out, key);
            wire::put_bytes(&mut out, value);
        }
        put_u64(&mut out, self.outbox_keep_from);
        wire::put_len(&mut out, self.outbox_put.len());
        for (first, segment) in &self.outbox_put {
            put_u64(&mut out, *first);
            wire::put_bytes(&mut out, segment);
        }
        wire::put_len(&mut out, self.cursors.len());
        for (peer, acked) in &self.cursors {
            wire::put_bytes(&mut out, peer.as_bytes());
            match acked {
                Some(acked) => {
                    out.push(1);
                    put_u64(&mut out, *acked);
                }
                None => out.push(0),
            }
        }
        if self.tx_groups_keep_from > 0 || !self.tx_groups_put.is_empty() {
            put_u64(&mut out, self.tx_groups_keep_from);
            wire::put_len(&mut out, self.tx_groups_put.len());
            for (id, group) in &self.tx_groups_put {
                put_u64(&mut out, *id);
                wire::put_bytes(&mut out, group);
            }
        }
        out
    }

    fn decode(mut input: &[u8]) -> Result<Folded, StorageError> {
        let corrupt = |e: wire::WireError| StorageError::Corrupt(format!("journal: {e}"));
        let input = &mut input;
        let mut folded = Folded::default();
        for meta in [
            &mut folded.identity,
            &mut folded.progress,
            &mut folded.retired,
        ] {
            if take_flag(input)? {
                *meta = Some(wire::take_bytes(input).map_err(corrupt)?.to_vec());
            }
        }
        for _ in 0..wire::take_len(input).map_err(corrupt)? {
            let key = wire::take_bytes(input).map_err(corrupt)?.to_vec();
            let value = wire::take_bytes(input).map_err(corrupt)?.to_vec();
            folded.states.insert(key, value);
        }
        folded.outbox_keep_from = take_u64(input)?;
        for _ in 0..wire::take_len(input).map_err(corrupt)? {
            let first = take_u64(input)?;
            let segment = wire::take_bytes(input).map_err(corrupt)?.to_vec();
            folded.outbox_put.insert(first, segment);
        }
        for _ in 0..wire::take_len(input).map_err(corrupt)? {
            let peer = std::str::from_utf8(wire::take_bytes(input).map_err(corrupt)?)
                .map_err(|_| StorageError::Corrupt("journal: peer name is not UTF-8".into()))?
                .to_owned();
            let acked = if take_flag(input)? {
                Some(take_u64(input)?)
            } else {
                None
            };
            folded.cursors.insert(peer, acked);
        }
        // Format 6: the transaction groups, when the row has some.
        if !input.is_empty() {
            folded.tx_groups_keep_from = take_u64(input)?;
            for _ in 0..wire::take_len(input).map_err(corrupt)? {
                let id = take_u64(input)?;
                let group = wire::take_bytes(input).map_err(corrupt)?.to_vec();
                folded.tx_groups_put.insert(id, group);
            }
        }
        if !input.is_empty() {
            return Err(StorageError::Corrupt(format!(
                "journal: {} bytes after the row",
                input.len()
            )));
        }
        Ok(folded)
    }

    /// Writes what it holds into the tables (the journal aside).
    fn write(&self, txn: &redb::WriteTransaction) -> Result<(), StorageError> {
        let mut meta = txn.open_table(META).map_err(table)?;
        for (name, value) in [
            ("identity", &self.identity),
            ("progress", &self.progress),
            ("retired", &self.retired),
        ] {
            if let Some(value) = value {
                meta.insert(name, value.as_slice()).map_err(storage)?;
            }
        }
        let mut states = txn.open_table(STATES).map_err(table)?;
        for (key, value) in &self.states {
            states
                .insert(key.as_slice(), value.as_slice())
                .map_err(storage)?;
        }
        let mut outbox = txn.open_table(OUTBOX).map_err(table)?;
        outbox
            .retain_in(..self.outbox_keep_from, |_, _| false)
            .map_err(storage)?;
        for (first, segment) in &self.outbox_put {
            outbox.insert(*first, segment.as_slice()).map_err(storage)?;
        }
        let mut cursors = txn.open_table(CURSORS).map_err(table)?;
        for (peer, acked) in &self.cursors {
            match acked {
                Some(acked) => cursors.insert(peer.as_str(), *acked).map(drop),
                None => cursors.remove(peer.as_str()).map(drop),
            }
            .map_err(storage)?;
        }
        if self.tx_groups_keep_from > 0 || !self.tx_groups_put.is_empty() {
            let mut groups = txn.open_table(TX_GROUPS).map_err(table)?;
            groups
                .retain_in(..self.tx_groups_keep_from, |_, _| false)
                .map_err(storage)?;
            for (id, group) in &self.tx_groups_put {
                groups.insert(*id, group.as_slice()).map_err(storage)?;
            }
        }
        Ok(())
    }
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    wire::put_len(out, n as usize);
}

fn take_u64(input: &mut &[u8]) -> Result<u64, StorageError> {
    wire::take_len(input)
        .map(|n| n as u64)
        .map_err(|e| StorageError::Corrupt(format!("journal: {e}")))
}

fn take_flag(input: &mut &[u8]) -> Result<bool, StorageError> {
    let (&flag, rest) = input
        .split_first()
        .ok_or_else(|| StorageError::Corrupt("journal: truncated row".into()))?;
    *input = rest;
    match flag {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(StorageError::Corrupt(format!("journal: flag {other}"))),
    }
}

/// The journal as this process knows it.
#[derive(Debug, Default)]
struct Journal {
    /// Every journaled commit, folded.
    folded: Folded,
    /// Key of the next row.
    next: u64,
    /// Rows and bytes held.
    len: u64,
    bytes: usize,
}

/// A region's [`Storage`] in one redb file. Each [`commit`](Storage::commit)
/// is one write transaction committed with immediate durability: one fsync
/// (redb's copy-on-write pages and double-buffered commit slot make it
/// atomic on power loss). The transaction appends the commit to a journal;
/// every [`JOURNAL_BYTES_MAX`] bytes (or [`JOURNAL_LEN_MAX`] commits) it
/// folds the journal into the tables instead: a key written by many
/// commits between two folds is written once. [`load`](Storage::load) reads the tables, then the
/// journal on top.
///
/// ```
/// use archipelago::region::Region;
/// use archipelago::storage::RedbStorage;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("archipelago-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let region = Region::builder("ap-northeast")
///     .storage(RedbStorage::open(dir.join("region.redb"))?)
///     .build()?;
/// assert_eq!(region.incarnation(), 1);
/// # drop(region);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
pub struct RedbStorage {
    db: Database,
    /// Read from the file at the first load or commit.
    journal: Option<Journal>,
    journal_bytes_max: usize,
    /// This process wrote the format version (at its first commit).
    format_written: bool,
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage").finish_non_exhaustive()
    }
}

fn io<E: std::fmt::Display>(error: E) -> StorageError {
    StorageError::Io(error.to_string())
}

fn storage(error: redb::StorageError) -> StorageError {
    match error {
        redb::StorageError::Corrupted(why) => StorageError::Corrupt(why),
        redb::StorageError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            StorageError::Corrupt(e.to_string())
        }
        other => io(other),
    }
}

fn database(error: DatabaseError) -> StorageError {
    match error {
        DatabaseError::DatabaseAlreadyOpen => StorageError::InUse,
        DatabaseError::UpgradeRequired(v) => {
            StorageError::Corrupt(format!("a redb file format ({v}) this build does not read"))
        }
        DatabaseError::Storage(e) => storage(e),
        other => io(other),
    }
}

fn table(error: TableError) -> StorageError {
    match error {
        TableError::Storage(e) => storage(e),
        other => StorageError::Corrupt(other.to_string()),
    }
}

fn state_key(table: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(table.len() + key.len() + 2);
    wire::put_bytes(&mut out, table.as_bytes());
    out.extend_from_slice(key);
    out
}

fn split_state_key(bytes: &[u8]) -> Result<(String, Vec<u8>), StorageError> {
    let mut rest = bytes;
    let table = wire::take_bytes(&mut rest)
        .map_err(|e| StorageError::Corrupt(format!("state key: {e}")))?;
    let table = std::str::from_utf8(table)
        .map_err(|_| StorageError::Corrupt("table name is not UTF-8".into()))?;
    Ok((table.to_owned(), rest.to_vec()))
}

/// Calls `f` with every row of `table`, in key order; a table not created
/// yet has none.
fn each<K, V>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    mut f: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), StorageError>,
) -> Result<(), StorageError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let rows = match txn.open_table(table) {
        Ok(rows) => rows,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(self::table(e)),
    };
    for row in rows.iter().map_err(storage)? {
        let (key, value) = row.map_err(storage)?;
        f(key.value(), value.value())?;
    }
    Ok(())
}

/// The rows of a numbered log table (outbox segments, transaction groups)
/// from `keep_from` on, with the journal's rows not yet folded in over
/// them, in order.
fn kept_rows(
    txn: &redb::ReadTransaction,
    table: TableDefinition<u64, &[u8]>,
    keep_from: u64,
    put: &BTreeMap<u64, Vec<u8>>,
) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let mut rows = BTreeMap::new();
    each(txn, table, |id, row| {
        if id >= keep_from {
            rows.insert(id, row.to_vec());
        }
        Ok(())
    })?;
    rows.extend(put.iter().map(|(k, v)| (*k, v.clone())));
    Ok(rows.into_iter().collect())
}

impl RedbStorage {
    /// Opens the store at `path`, creating the file if it does not exist.
    ///
    /// # Errors
    /// [`StorageError::InUse`] when another region or process has it open;
    /// [`StorageError::Corrupt`] for a file that is not a redb database or
    /// fails its checks; [`StorageError::Io`] otherwise.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStorage, StorageError> {
        let db = Database::create(path.as_ref()).map_err(database)?;
        Ok(RedbStorage::on(db))
    }

    fn on(db: Database) -> RedbStorage {
        RedbStorage {
            db,
            journal: None,
            journal_bytes_max: JOURNAL_BYTES_MAX,
            format_written: false,
        }
    }

    /// Folds the journal into the tables once it holds `bytes` (default
    /// [`JOURNAL_BYTES_MAX`]); 0 folds at every commit (no journal).
    #[must_use]
    pub fn journal_bytes_max(mut self, bytes: usize) -> RedbStorage {
        self.journal_bytes_max = bytes;
        self
    }

    /// The journal, read from the file (and checked) the first time.
    fn journal(&mut self) -> Result<&mut Journal, StorageError> {
        if self.journal.is_none() {
            let txn = self.db.begin_read().map_err(io)?;
            let mut journal = Journal::default();
            each(&txn, JOURNAL, |n, row| {
                journal.folded.fold(Folded::decode(row)?);
                journal.next = n + 1;
                journal.len += 1;
                journal.bytes += row.len();
                Ok(())
            })?;
            self.journal = Some(journal);
        }
        Ok(self.journal.as_mut().expect("read above"))
    }

    /// Opens a store on a redb [`StorageBackend`]: an in-memory one, or one
    /// that injects faults (loses unsynced writes, fails `sync_data`) for
    /// crash tests.
    ///
    /// # Errors
    /// As [`open`](RedbStorage::open).
    pub fn with_backend(backend: impl StorageBackend) -> Result<RedbStorage, StorageError> {
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(database)?;
        Ok(RedbStorage::on(db))
    }
}

impl Storage for RedbStorage {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        let txn = self.db.begin_read().map_err(io)?;
        let mut snapshot = Snapshot::default();
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(TableError::TableDoesNotExist(_)) => return Ok(snapshot),
            Err(e) => return Err(table(e)),
        };
        let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(meta.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
        };
        // The format first: a newer build's journal may not decode here.
        match get("format")? {
            Some(format) => check_format(&format)?,
            None => return Err(StorageError::Corrupt("no format version".into())),
        }
        let (identity, retired, progress) = (get("identity")?, get("retired")?, get("progress")?);
        drop(meta);
        let journal = &self.journal()?.folded;
        let identity = journal.identity.clone().or(identity);
        let retired = journal.retired.clone().or(retired);
        let progress = journal.progress.clone().or(progress);
        snapshot.identity = identity.map(|b| decode_meta("identity", &b)).transpose()?;
        snapshot.retired = retired
            .map(|b| decode_meta("retired peers", &b))
            .transpose()?
            .unwrap_or_default();
        snapshot.progress = progress
            .map(|b| decode_meta("progress", &b))
            .transpose()?
            .unwrap_or_default();
        each(&txn, STATES, |key, value| {
            if !journal.states.contains_key(key) {
                let (table, key) = split_state_key(key)?;
                snapshot.states.push((table, key, value.to_vec()));
            }
            Ok(())
        })?;
        for (key, value) in &journal.states {
            let (table, key) = split_state_key(key)?;
            snapshot.states.push((table, key, value.clone()));
        }
        snapshot.outbox = kept_rows(&txn, OUTBOX, journal.outbox_keep_from, &journal.outbox_put)?;
        let mut cursors = BTreeMap::new();
        each(&txn, CURSORS, |peer, acked| {
            cursors.insert(peer.to_owned(), acked);
            Ok(())
        })?;
        for (peer, acked) in &journal.cursors {
            match acked {
                Some(acked) => cursors.insert(peer.clone(), *acked),
                None => cursors.remove(peer),
            };
        }
        snapshot.cursors = cursors.into_iter().collect();
        snapshot.tx_groups = kept_rows(
            &txn,
            TX_GROUPS,
            journal.tx_groups_keep_from,
            &journal.tx_groups_put,
        )?;
        Ok(snapshot)
    }

    fn commit(&mut self, commit: &Commit) -> Result<(), StorageError> {
        let row = Folded::of(commit)?;
        let bytes_max = self.journal_bytes_max;
        let write_format = !self.format_written;
        let journal = self.journal()?;
        let encoded = row.encode();
        let fold = journal.bytes + encoded.len() > bytes_max || journal.len + 1 > JOURNAL_LEN_MAX;
        let txn = self.db.begin_write().map_err(io)?;
        if write_format {
            let mut meta = txn.open_table(META).map_err(table)?;
            meta.insert("format", &encode_format()[..])
                .map_err(storage)?;
        }
        let journal = self.journal.as_mut().expect("read above");
        if fold {
            // The journal and this commit go into the tables, in this one
            // transaction: a crash leaves either all of it or the journal.
            let mut all = journal.folded.clone();
            all.fold(row);
            all.write(&txn)?;
            txn.open_table(JOURNAL)
                .map_err(table)?
                .retain(|_, _| false)
                .map_err(storage)?;
            txn.commit().map_err(io)?;
            journal.folded = Folded::default();
            journal.len = 0;
            journal.bytes = 0;
            tracing::debug!(
                commits = journal.next,
                "storage: journal folded into the tables"
            );
        } else {
            txn.open_table(JOURNAL)
                .map_err(table)?
                .insert(journal.next, encoded.as_slice())
                .map_err(storage)?;
            txn.commit().map_err(io)?;
            journal.folded.fold(row);
            journal.len += 1;
            journal.bytes += encoded.len();
            journal.next += 1;
        }
        self.format_written = true;
        debug_assert!(
            journal.bytes <= bytes_max.max(1) && journal.len <= JOURNAL_LEN_MAX,
            "the journal stays within its bounds"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ReplicaId;
    use crate::storage::{Identity, Progress, STORAGE_FORMAT_VERSION};

    fn commit(seq: u64, key: u8, value: u8) -> Commit {
        Commit {
            identity: (seq == 1).then(|| Identity {
                region: "a".into(),
                replica: ReplicaId::new(7),
                incarnation: 1,
            }),
            progress: Some(Progress {
                seq,
                ..Progress::default()
            }),
            states: vec![("t".into(), vec![key], vec![value; 100])],
            outbox_put: vec![(seq, vec![value; 10])],
            outbox_keep_from: seq.saturating_sub(2),
            cursors: vec![("b".into(), seq / 2)],
            retired: None,
            tx_groups_put: vec![(seq, vec![key; 3])],
            tx_groups_keep_from: seq.saturating_sub(3),
        }
    }

    fn rows(store: &RedbStorage) -> u64 {
        let txn = store.db.begin_read().unwrap();
        txn.open_table(JOURNAL)
            .map_or(0, |t| redb::ReadableTableMetadata::len(&t).unwrap())
    }

    #[test]
    fn the_journal_is_folded_at_its_bound_and_loads_alike_either_side_of_a_fold() {
        let backend = redb::backends::InMemoryBackend::new();
        let mut store = RedbStorage::with_backend(backend)
            .unwrap()
            .journal_bytes_max(1000);
        assert!(store.load().unwrap().identity.is_none());
        let mut most_rows = 0;
        let mut folds = 0;
        for seq in 1..=40u64 {
            let before = rows(&store);
            store
                .commit(&commit(seq, (seq % 5) as u8, seq as u8))
                .unwrap();
            let after = rows(&store);
            most_rows = most_rows.max(after);
            if after < before {
                folds += 1;
            }
            let snapshot = store.load().unwrap();
            assert_eq!(snapshot.progress.seq, seq);
            assert_eq!(
                snapshot.identity.as_ref().unwrap().replica,
                ReplicaId::new(7)
            );
            assert_eq!(snapshot.states.len(), (seq.min(5)) as usize);
            let latest = snapshot
                .states
                .iter()
                .find(|(_, key, _)| key[0] == (seq % 5) as u8)
                .unwrap();
            assert_eq!(latest.2, vec![seq as u8; 100], "the latest state wins");
            let firsts: Vec<u64> = snapshot.outbox.iter().map(|(f, _)| *f).collect();
            let want: Vec<u64> = (seq.saturating_sub(2).max(1)..=seq).collect();
            assert_eq!(firsts, want, "segments below the start are gone");
            assert_eq!(snapshot.cursors, vec![("b".into(), seq / 2)]);
            let ids: Vec<u64> = snapshot.tx_groups.iter().map(|(id, _)| *id).collect();
            let want: Vec<u64> = (seq.saturating_sub(3).max(1)..=seq).collect();
            assert_eq!(ids, want, "groups below the start are gone");
        }
        assert!(folds >= 3, "{folds} folds");
        assert!(
            most_rows <= 8,
            "the journal stays near its bound: {most_rows} rows"
        );
    }

    #[test]
    fn a_version_1_store_loads_and_is_written_as_the_current_version() {
        let backend = redb::backends::InMemoryBackend::new();
        // A store as version 1 wrote it: the tables only (no journal).
        let mut store = RedbStorage::with_backend(backend)
            .unwrap()
            .journal_bytes_max(0);
        store.load().unwrap();
        store.commit(&commit(1, 1, 1)).unwrap();
        store.commit(&commit(2, 2, 2)).unwrap();
        assert_eq!(rows(&store), 0);
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format", &1u32.to_le_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
        // Opened again, as a new build opens a version 1 file.
        let RedbStorage { db, .. } = store;
        let mut v1 = RedbStorage::on(db);
        let snapshot = v1.load().unwrap();
        assert_eq!(snapshot.progress.seq, 2);
        assert_eq!(snapshot.states.len(), 2);
        v1.commit(&commit(3, 3, 3)).unwrap();
        assert_eq!(rows(&v1), 1, "journaled from now on");
        let txn = v1.db.begin_read().unwrap();
        let format = txn
            .open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert_eq!(format, STORAGE_FORMAT_VERSION.to_le_bytes());
        drop(txn);
        assert_eq!(v1.load().unwrap().states.len(), 3);
    }
}
