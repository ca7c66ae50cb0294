//! What regions say to each other. Every message crosses the transport
//! encoded by `wire`, so the bytes counted are the bytes carried.

use serde::{Deserialize, Serialize};

use crate::clock::{ReplicaId, Timestamp, VersionVector};

/// The deltas of one table in a batch, or the states of one table in a
/// catch-up chunk: `(key, encoded value)` pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableEntries {
    pub(crate) table: String,
    pub(crate) entries: Vec<(Box<[u8]>, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Message {
    /// The origin's writes `first..=last`, applicable once the receiver has
    /// applied `deps` (and the origin's writes before `first`).
    Batch {
        origin: ReplicaId,
        first: u64,
        last: u64,
        deps: VersionVector,
        /// The origin's clock when it sent the batch: receivers move their
        /// hybrid logical clocks past it.
        sent_at: Timestamp,
        tables: Vec<TableEntries>,
    },
    /// "I have applied `origin`'s writes up to `applied`" (cumulative).
    Ack { origin: ReplicaId, applied: u64 },
    /// Anti-entropy, step 1: my applied vector and my bucket digests
    /// (per table, 1024 little-endian u64s packed as bytes: 8 KiB).
    SyncRequest {
        session: u64,
        applied: VersionVector,
        digests: Vec<(String, Vec<u8>)>,
    },
    /// Anti-entropy, steps 2 and 3: the states of every key in the buckets
    /// whose digests differed (and of tables the requester did not list).
    /// Chunked; the last chunk carries `applied`, the sender's applied
    /// vector when it computed what differs: once every chunk is merged,
    /// the receiver has applied everything that vector names.
    SyncStates {
        session: u64,
        /// True for the requester's answer to a reply (step 3): no further
        /// answer is due.
        push: bool,
        /// This chunk's index, and how many chunks the transfer has: the
        /// receiver merges nothing until it holds them all.
        chunk: u32,
        chunks: u32,
        /// The sender's clock: receivers move their clocks past it, so a
        /// write made after a catch-up stamps above what it caught up on.
        sent_at: Timestamp,
        /// The buckets that differed, per table, so the requester can send
        /// its own states for them back (first chunk only).
        buckets: Vec<(String, Vec<u32>)>,
        tables: Vec<TableEntries>,
        /// The sender's applied vector, which the transfer's states cover
        /// (last chunk only).
        applied: Option<VersionVector>,
    },
}
