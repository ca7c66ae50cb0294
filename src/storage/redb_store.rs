//! [`Storage`] on a redb file.

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

/// A region's [`Storage`] in one redb file. Each [`commit`](Storage::commit)
/// is one write transaction committed with immediate durability: one fsync
/// (redb's copy-on-write pages and double-buffered commit slot make it
/// atomic on power loss).
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

impl RedbStorage {
    /// Opens the store at `path`, creating the file if it does not exist.
    ///
    /// # Errors
    /// [`StorageError::InUse`] when another region or process has it open;
    /// [`StorageError::Corrupt`] for a file that is not a redb database or
    /// fails its checks; [`StorageError::Io`] otherwise.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStorage, StorageError> {
        let db = Database::create(path.as_ref()).map_err(database)?;
        Ok(RedbStorage { db })
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
        Ok(RedbStorage { db })
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
        match get("format")? {
            Some(format) => check_format(&format)?,
            None => return Err(StorageError::Corrupt("no format version".into())),
        }
        snapshot.identity = get("identity")?
            .map(|b| decode_meta("identity", &b))
            .transpose()?;
        snapshot.retired = get("retired")?
            .map(|b| decode_meta("retired peers", &b))
            .transpose()?
            .unwrap_or_default();
        snapshot.progress = get("progress")?
            .map(|b| decode_meta("progress", &b))
            .transpose()?
            .unwrap_or_default();
        each(&txn, STATES, |key, value| {
            let (table, key) = split_state_key(key)?;
            snapshot.states.push((table, key, value.to_vec()));
            Ok(())
        })?;
        each(&txn, OUTBOX, |first, segment| {
            snapshot.outbox.push((first, segment.to_vec()));
            Ok(())
        })?;
        each(&txn, CURSORS, |peer, acked| {
            snapshot.cursors.push((peer.to_owned(), acked));
            Ok(())
        })?;
        Ok(snapshot)
    }

    fn commit(&mut self, commit: &Commit) -> Result<(), StorageError> {
        let identity = commit.identity.as_ref().map(encode_meta).transpose()?;
        let progress = commit.progress.as_ref().map(encode_meta).transpose()?;
        let retired = commit.retired.as_ref().map(encode_meta).transpose()?;
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(table)?;
            meta.insert("format", &encode_format()[..])
                .map_err(storage)?;
            if let Some(identity) = &identity {
                meta.insert("identity", identity.as_slice())
                    .map_err(storage)?;
            }
            if let Some(progress) = &progress {
                meta.insert("progress", progress.as_slice())
                    .map_err(storage)?;
            }
            if let Some(retired) = &retired {
                meta.insert("retired", retired.as_slice())
                    .map_err(storage)?;
            }
            let mut states = txn.open_table(STATES).map_err(table)?;
            for (t, key, value) in &commit.states {
                states
                    .insert(state_key(t, key).as_slice(), value.as_slice())
                    .map_err(storage)?;
            }
            let mut outbox = txn.open_table(OUTBOX).map_err(table)?;
            outbox
                .retain_in(..commit.outbox_keep_from, |_, _| false)
                .map_err(storage)?;
            for (first, segment) in &commit.outbox_put {
                if *first >= commit.outbox_keep_from {
                    outbox.insert(*first, segment.as_slice()).map_err(storage)?;
                }
            }
            let mut cursors = txn.open_table(CURSORS).map_err(table)?;
            if let Some(retired) = &commit.retired {
                for (peer, _) in retired {
                    cursors.remove(peer.as_str()).map_err(storage)?;
                }
            }
            for (peer, acked) in &commit.cursors {
                cursors.insert(peer.as_str(), *acked).map_err(storage)?;
            }
        }
        txn.commit().map_err(io)?;
        Ok(())
    }
}
