//! What regions say to each other. Every message crosses the transport
//! encoded by `wire`, so the bytes counted are the bytes carried.
//!
//! Batches and anti-entropy chunks carry their `(table, key, value)`
//! entries packed into one byte string ([`Blob`]): each entry is the
//! table's position in the message's table list, then the key and the
//! value as length-prefixed byte strings (bare `wire` bodies: the frame's
//! version byte covers them). A region appends each write to its outbox in
//! this form once; a batch is then a slice of it, copied whole.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod compact;

pub(crate) use compact::{ORIGIN_CONTEXT_PROTOCOL, compact_batches, decode_frame};

use crate::clock::{Dot, ReplicaId, Timestamp, VersionVector};
use crate::region::HomedRefusal;
use crate::wire::{self, WireError};

/// Bytes carried as one byte string: one copy each way, not a sequence of
/// `u8`s (bincode writes both alike: a length, then the raw bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Blob(pub(crate) Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(Blob(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// Appends one entry to a packed entry string.
#[inline]
pub(crate) fn push_entry(out: &mut Vec<u8>, table: usize, key: &[u8], value: &[u8]) {
    wire::put_len(out, table);
    wire::put_bytes(out, key);
    wire::put_bytes(out, value);
}

/// The entries of a packed string, in order: `(table position, key,
/// value)`. Yields an error (and then stops) at the first malformed entry
/// or a table position outside the message's list.
pub(crate) struct Entries<'a> {
    rest: &'a [u8],
    tables: usize,
}

impl<'a> Entries<'a> {
    pub(crate) fn new(packed: &'a [u8], tables: usize) -> Self {
        Entries {
            rest: packed,
            tables,
        }
    }

    #[inline(always)]
    fn entry(&mut self) -> Result<(usize, &'a [u8], &'a [u8]), WireError> {
        let table = wire::take_len(&mut self.rest)?;
        if table >= self.tables {
            return Err(table_out_of_range(table, self.tables));
        }
        let key = wire::take_bytes(&mut self.rest)?;
        let value = wire::take_bytes(&mut self.rest)?;
        Ok((table, key, value))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(usize, &'a [u8], &'a [u8]), WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = self.entry();
        if entry.is_err() {
            self.rest = &[];
        }
        Some(entry)
    }
}

/// The error of an entry naming table `table` of a message listing `tables`.
#[cold]
fn table_out_of_range(table: usize, tables: usize) -> WireError {
    WireError::Malformed(format!("entry names table {table} of {tables}"))
}

/// The number of entries in a packed string, checking every one is well
/// framed.
pub(crate) fn count_entries(packed: &[u8], tables: usize) -> Result<u64, WireError> {
    let mut n = 0;
    for entry in Entries::new(packed, tables) {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// The byte offset of entry `n` in a packed string (its length when it has
/// `n` entries).
pub(crate) fn entry_offset(packed: &[u8], n: u64) -> Result<usize, WireError> {
    let mut rest = packed;
    for _ in 0..n {
        wire::take_len(&mut rest)?;
        wire::take_bytes(&mut rest)?;
        wire::take_bytes(&mut rest)?;
    }
    Ok(packed.len() - rest.len())
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
        /// The tables the entries name, by position.
        tables: Vec<String>,
        /// One entry per write, in sequence order: key and delta.
        entries: Blob,
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
        /// The tables the entries name, by position.
        tables: Vec<String>,
        /// Key and full state of each key shipped.
        entries: Blob,
        /// The sender's applied vector, which the transfer's states cover
        /// (last chunk only).
        applied: Option<VersionVector>,
    },
    /// Anti-entropy, step 4: "I merged your push of `session`". Until it
    /// arrives, the exchange's starter counts a repair as pending.
    SyncDone { session: u64 },
    /// The engine's handshake, sent by both sides when a connection comes
    /// up (and again until answered): who this region is and what it holds.
    /// The receiver binds the sending peer's name to `replica` for the
    /// connection's life; a new `incarnation` (or a new `replica`) resets
    /// what it keeps about the peer instead of refusing its batches.
    Hello {
        /// The sender's replica id.
        replica: ReplicaId,
        /// How many times the sender's replica has started (1 for a region
        /// without storage).
        incarnation: u64,
        /// Local writes the sender has made: a peer that applied more of
        /// them than this knows the sender lost writes it had shipped.
        seq: u64,
        /// What the sender has applied: the receiver reads only its own
        /// entry (how much of its writes the sender holds).
        applied: VersionVector,
        /// True for the answer to a hello: no answer is due.
        reply: bool,
    },
    /// The engine protocol versions the sender speaks, `min..=max`, sent
    /// before its hello on every connection (protocol 2 on; a peer that
    /// sends none speaks 1). Last of the variants, so that builds of
    /// protocol 1 decode every other frame as before.
    Protocol { min: u16, max: u16 },
    /// "Grant me some of your rights to `key` of the bounded table
    /// `table`, up to `wanted`" (protocol 3 on: sent only on connections of
    /// protocol 3 or later). The granter answers with a transfer, a local
    /// write that replicates like any other, or not at all; the requester
    /// asks again after `rights_request_timeout`. Last of the variants
    /// (bincode tags are positional).
    RightsRequest {
        table: String,
        /// The key's bare `wire` encoding.
        key: Blob,
        wanted: u64,
    },
    /// "Apply `op` to `key` of the homed table `table`, whose home you
    /// are" (protocol 4 on: sent only on connections of protocol 4 or
    /// later). `id` names the request among the sender's: a duplicated or
    /// resent request is answered from the home's memory of its replies,
    /// never applied twice. The home answers with a
    /// [`HomedReply`](Message::HomedReply) of the same `id`.
    HomedRequest {
        id: u64,
        table: String,
        /// The key's bare `wire` encoding.
        key: Blob,
        /// The operation's bare `wire` encoding (`HomedOp`: a read, a put
        /// or an operation of the value's type).
        op: Blob,
    },
    /// The home's answer to the [`HomedRequest`](Message::HomedRequest)
    /// `id` (protocol 4 on): what became of it. Last of the variants
    /// (bincode tags are positional).
    HomedReply { id: u64, outcome: HomedOutcome },
    /// Anti-entropy by ranges (protocol 6 on: sent only on connections of
    /// protocol 6 or later), in place of step 1: message `round` (from 0,
    /// the two sides alternating) of the exchange `session`, one
    /// reconciliation frame per table still being reconciled (see
    /// `replication::reconcile`). `reply` is true for the frames of the
    /// side that answers the exchange. The starter's first message names
    /// every table it holds; once nothing is left to reconcile, the
    /// answering side ships the states of the keys it learned the starter
    /// lacks ([`SyncStates`](Message::SyncStates), no buckets named) and the
    /// exchange goes on as by buckets. Last of the variants (bincode tags
    /// are positional).
    SyncRanges {
        session: u64,
        reply: bool,
        round: u32,
        frames: Vec<(String, Blob)>,
    },
    /// The last chunk of a state transfer on a connection of protocol 7 or
    /// later: a [`SyncStates`](Message::SyncStates) chunk (same fields),
    /// and the multi-key transactions among the transfer's keys as far as
    /// the sender knows them. Each group lists keys, as (position in
    /// `group_tables`, key's bare `wire` encoding), that one transaction
    /// wrote: the receiver merges a group's states together or sets them
    /// all aside (see `replication::core::tx_groups`).
    SyncStatesGrouped(Box<GroupedChunk>),
    /// A [`Batch`](Message::Batch) in the layout of protocol 7 (sent only
    /// on connections of protocol 7 or later, see
    /// [`ORIGIN_CONTEXT_PROTOCOL`]): the same fields, its `entries` grouped
    /// into runs of one table and the ids of `origin` and of the replicas
    /// `deps` names written as one- and two-byte references (see
    /// `message::compact`). A region expands it into the batch it was made
    /// from as it decodes the frame ([`decode_frame`]).
    CompactBatch {
        origin: ReplicaId,
        first: u64,
        last: u64,
        deps: VersionVector,
        sent_at: Timestamp,
        tables: Vec<String>,
        /// The entries, in runs, with references (see `message::compact`).
        entries: Blob,
    },
    /// A batch of another region's writes passed on (protocol 7 on: sent
    /// only on connections of protocol 7 or later, to a peer that asked
    /// with [`RelayWant`](Message::RelayWant)): `origin`'s writes
    /// `first..=last` exactly as the origin batched them (its transaction
    /// groups whole), applicable once the receiver holds `deps`. The
    /// receiver takes it as data from the sender, as an anti-entropy
    /// transfer: by the sender's word, never as the origin's own (see
    /// `replication::relay`).
    Relay {
        origin: ReplicaId,
        first: u64,
        last: u64,
        deps: VersionVector,
        /// The origin's clock when it sent the batch.
        sent_at: Timestamp,
        /// The tables the entries name, by position.
        tables: Vec<String>,
        /// One entry per write, in sequence order: key and delta.
        entries: Blob,
    },
    /// "Pass on to me `origin`'s writes after `held`" (`want`), or "stop"
    /// (protocol 7 on): sent by a region whose link to `origin` is down to
    /// one peer that still hears it, again every `ack_timeout` while it
    /// wants them (the relay forgets a wish not renewed). Last of the
    /// variants (bincode tags are positional).
    RelayWant {
        origin: ReplicaId,
        held: u64,
        want: bool,
    },
}

/// What a [`Message::SyncStatesGrouped`] carries: the fields of a
/// [`Message::SyncStates`] chunk, then the transfer's groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupedChunk {
    pub(crate) session: u64,
    pub(crate) push: bool,
    pub(crate) chunk: u32,
    pub(crate) chunks: u32,
    pub(crate) sent_at: Timestamp,
    pub(crate) buckets: Vec<(String, Vec<u32>)>,
    pub(crate) tables: Vec<String>,
    pub(crate) entries: Blob,
    pub(crate) applied: Option<VersionVector>,
    /// The tables the groups name, by position.
    pub(crate) group_tables: Vec<String>,
    /// Each: (position in `group_tables`, key's bare encoding) of the keys
    /// one transaction wrote.
    pub(crate) groups: Vec<Vec<(u32, Blob)>>,
}

/// What became of a forwarded homed operation, as its home answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HomedOutcome {
    /// Applied (or read) at the home: the dot of the write (of the key's
    /// last write, for a read; `None` for a key never written) and the
    /// value after it (bare `wire` encoding; `None` for an absent key).
    Done {
        written: Option<Dot>,
        value: Option<Blob>,
    },
    /// The value refused the operation (its `Rejection`, bare encoding):
    /// nothing was applied.
    Rejected { rejection: Blob },
    /// The home would not take the request: nothing was applied.
    Refused(HomedRefusal),
    /// As [`Done`](HomedOutcome::Done), with the epoch of the key at the
    /// home when it applied (or read) it (protocol 5 on: sent only to
    /// requesters on connections of protocol 5 or later). Last of the
    /// variants (bincode tags are positional).
    DoneAt {
        written: Option<Dot>,
        value: Option<Blob>,
        epoch: u64,
    },
}

impl HomedOutcome {
    /// Bytes it holds, for the home's bounded memory of its replies.
    pub(crate) fn size(&self) -> usize {
        match self {
            HomedOutcome::Done { value, .. } => value.as_ref().map_or(0, |v| v.0.len()) + 24,
            HomedOutcome::Rejected { rejection } => rejection.0.len() + 8,
            HomedOutcome::Refused(refusal) => refusal.size(),
            HomedOutcome::DoneAt { value, .. } => value.as_ref().map_or(0, |v| v.0.len()) + 32,
        }
    }
}

impl Message {
    /// True for the messages of anti-entropy: requests, transfers and
    /// their confirmations (counted apart in the peers' byte counters).
    pub(crate) fn is_anti_entropy(&self) -> bool {
        matches!(
            self,
            Message::SyncRequest { .. }
                | Message::SyncStates { .. }
                | Message::SyncDone { .. }
                | Message::SyncRanges { .. }
                | Message::SyncStatesGrouped(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_encodes_as_a_byte_sequence_would() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(
            wire::encode(&Blob(bytes.clone())).unwrap(),
            wire::encode(&bytes).unwrap()
        );
        let back: Blob = wire::decode(&wire::encode(&bytes).unwrap()).unwrap();
        assert_eq!(back.0, bytes);
    }

    #[test]
    fn entries_round_trip_and_reject_bad_framing() {
        let mut packed = Vec::new();
        push_entry(&mut packed, 0, b"k1", b"v1");
        push_entry(&mut packed, 1, &[7; 300], b"");
        let all: Vec<_> = Entries::new(&packed, 2).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            all,
            vec![(0, &b"k1"[..], &b"v1"[..]), (1, &[7; 300][..], &b""[..])]
        );
        assert_eq!(count_entries(&packed, 2).unwrap(), 2);
        assert_eq!(entry_offset(&packed, 1).unwrap(), 7);
        assert_eq!(entry_offset(&packed, 2).unwrap(), packed.len());
        // A table outside the list, a truncated entry, an endless length.
        assert!(count_entries(&packed, 1).is_err());
        assert!(count_entries(&packed[..packed.len() - 1], 2).is_err());
        assert!(count_entries(&[0x80; 20], 2).is_err());
        assert!(entry_offset(&packed, 3).is_err());
    }

    /// One message of each kind, as a region of wire version 1 sends it
    /// (the kinds of later protocols too: their frames are of wire version
    /// 1, added as each kind came).
    fn golden_messages() -> Vec<(&'static str, Message)> {
        use crate::crdt::GCounter;
        let (tokyo, frankfurt) = (ReplicaId::new(0x7000_0001), ReplicaId::new(0x7000_0002));
        let mut deps = VersionVector::new();
        deps.raise(frankfurt, 7);
        let mut applied = deps.clone();
        applied.raise(tokyo, 12);
        let sent_at = Timestamp::new(1_764_000_000_000, 3);
        let mut delta = GCounter::new();
        let delta = delta.inc(tokyo, 2);
        let value = wire::with_bare(&delta, <[u8]>::to_vec).unwrap();
        let key = wire::with_bare(&"post-1", <[u8]>::to_vec).unwrap();
        let mut entries = Vec::new();
        push_entry(&mut entries, 0, &key, &value);
        push_entry(&mut entries, 1, &key, &value);
        let tables = vec!["likes".to_string(), "views".to_string()];
        let (grouped_entries, grouped_applied) = (entries.clone(), applied.clone());
        let mut relay_entries = Vec::new();
        push_entry(&mut relay_entries, 0, &key, &value);
        vec![
            (
                "batch",
                Message::Batch {
                    origin: tokyo,
                    first: 11,
                    last: 12,
                    deps: deps.clone(),
                    sent_at,
                    tables: tables.clone(),
                    entries: Blob(entries.clone()),
                },
            ),
            (
                "ack",
                Message::Ack {
                    origin: tokyo,
                    applied: 12,
                },
            ),
            (
                "sync_request",
                Message::SyncRequest {
                    session: 9,
                    applied: applied.clone(),
                    digests: vec![("likes".to_string(), vec![0xAB; 16])],
                },
            ),
            (
                "sync_states",
                Message::SyncStates {
                    session: 9,
                    push: false,
                    chunk: 0,
                    chunks: 1,
                    sent_at,
                    buckets: vec![("likes".to_string(), vec![3, 700])],
                    tables,
                    entries: Blob(entries),
                    applied: Some(applied.clone()),
                },
            ),
            ("sync_done", Message::SyncDone { session: 9 }),
            ("protocol", Message::Protocol { min: 1, max: 2 }),
            (
                "hello",
                Message::Hello {
                    replica: tokyo,
                    incarnation: 4,
                    seq: 12,
                    applied,
                    reply: true,
                },
            ),
            // Protocol 3 on.
            (
                "rights_request",
                Message::RightsRequest {
                    table: "stock".to_string(),
                    key: Blob(key.clone()),
                    wanted: 5,
                },
            ),
            // Protocol 4 on.
            (
                "homed_request",
                Message::HomedRequest {
                    id: 41,
                    table: "balances".to_string(),
                    key: Blob(key.clone()),
                    op: Blob(vec![2, 0, 25]),
                },
            ),
            (
                "homed_reply",
                Message::HomedReply {
                    id: 41,
                    outcome: HomedOutcome::Done {
                        written: Some(Dot::new(tokyo, 13)),
                        value: Some(Blob(vec![75])),
                    },
                },
            ),
            // Protocol 5 on.
            (
                "homed_reply_at",
                Message::HomedReply {
                    id: 42,
                    outcome: HomedOutcome::DoneAt {
                        written: Some(Dot::new(tokyo, 14)),
                        value: None,
                        epoch: 3,
                    },
                },
            ),
            (
                "homed_reply_moved",
                Message::HomedReply {
                    id: 43,
                    outcome: HomedOutcome::Refused(HomedRefusal::Moved {
                        home: "eu-central".to_string(),
                        epoch: 4,
                    }),
                },
            ),
            // Protocol 6 on.
            (
                "sync_ranges",
                Message::SyncRanges {
                    session: 9,
                    reply: true,
                    round: 1,
                    frames: vec![("likes".to_string(), Blob(vec![1, 2, 3]))],
                },
            ),
            // Protocol 7 on.
            (
                "sync_states_grouped",
                Message::SyncStatesGrouped(Box::new(GroupedChunk {
                    session: 9,
                    push: true,
                    chunk: 0,
                    chunks: 1,
                    sent_at,
                    buckets: Vec::new(),
                    tables: vec!["likes".to_string(), "views".to_string()],
                    entries: Blob(grouped_entries),
                    applied: Some(grouped_applied),
                    group_tables: vec!["likes".to_string(), "views".to_string()],
                    groups: vec![vec![(0, Blob(key.clone())), (1, Blob(key.clone()))]],
                })),
            ),
            // Protocol 7 on: the batch above, compacted.
            ("compact_batch", compact_golden_batch()),
            (
                "relay",
                Message::Relay {
                    origin: frankfurt,
                    first: 7,
                    last: 7,
                    deps: VersionVector::new(),
                    sent_at,
                    tables: vec!["likes".to_string()],
                    entries: Blob(relay_entries),
                },
            ),
            (
                "relay_want",
                Message::RelayWant {
                    origin: frankfurt,
                    held: 6,
                    want: true,
                },
            ),
        ]
    }

    /// A batch like the golden one, its entries naming its origin's and a
    /// dependency's ids, compacted (`message::compact`).
    fn compact_golden_batch() -> Message {
        use crate::crdt::GCounter;
        let (tokyo, frankfurt) = (ReplicaId::new(0x7000_0001), ReplicaId::new(0x7000_0002));
        let mut deps = VersionVector::new();
        deps.raise(frankfurt, 7);
        let key = wire::with_bare(&"post-1", <[u8]>::to_vec).unwrap();
        let mut entries = Vec::new();
        for (table, replica) in [(0, tokyo), (0, tokyo), (1, frankfurt)] {
            let delta = GCounter::new().inc(replica, 3);
            let value = wire::with_bare(&delta, <[u8]>::to_vec).unwrap();
            push_entry(&mut entries, table, &key, &value);
        }
        Message::Batch {
            origin: tokyo,
            first: 13,
            last: 15,
            deps,
            sent_at: Timestamp::new(1_764_000_000_100, 0),
            tables: vec!["likes".to_string(), "views".to_string()],
            entries: Blob(entries),
        }
        .compact()
    }

    /// The compacted golden batch is shorter than the batch it expands
    /// into by what its ids and its tables' repeats took.
    #[test]
    fn the_compact_golden_batch_expands_into_its_batch() {
        let compact = compact_golden_batch();
        let batch = compact.clone().expand().unwrap();
        let (Message::CompactBatch { entries: small, .. }, Message::Batch { entries, .. }) =
            (&compact, &batch)
        else {
            panic!("a compact batch and a batch")
        };
        // Ids of 5 bytes (0x7000_0001): 4 saved for the origin's, 3 for
        // the dependency's, 1 for the second entry's table.
        assert_eq!(small.0.len() + 4 + 4 + 3 + 1, entries.0.len());
        assert_eq!(batch.compact(), compact);
    }

    /// The frames of wire version 1, committed under
    /// `tests/fixtures/frames/v1/`, decode into the messages they were made
    /// from, and today's code encodes those messages to the same bytes (see
    /// `tests/golden_fixtures.rs` for the rules: a format change bumps the
    /// version and adds a fixture set, never rewrites one).
    #[test]
    fn frames_of_wire_version_1_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frames/v1");
        for (name, message) in golden_messages() {
            let made = wire::encode(&message).unwrap();
            let file = dir.join(format!("{name}.bin"));
            if !file.exists() {
                assert!(
                    std::env::var_os("ARCHIPELAGO_BLESS_FIXTURES").is_some(),
                    "fixture frames/v1/{name}.bin is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
                );
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&file, &made).unwrap();
            }
            let committed = std::fs::read(&file).unwrap();
            let decoded: Message = wire::decode(&committed)
                .unwrap_or_else(|e| panic!("frame {name} of version 1 no longer decodes: {e}"));
            assert_eq!(decoded, message, "frame {name} decodes to another message");
            assert!(
                made == committed,
                "the encoding of frame {name} changed: bump WIRE_VERSION"
            );
        }
    }
}
