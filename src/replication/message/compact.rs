//! The batch layout of protocol 7 ([`ORIGIN_CONTEXT_PROTOCOL`]): the
//! origin named once per batch, the table once per run of entries.
//!
//! A [`Batch`](super::Message::Batch) repeats two things its header already
//! says. Every delta of most types names the replica that wrote it (a
//! `GCounter` delta is its origin's id and count: 9 of its 12 bytes are the
//! id the header's `origin` names), and every entry names its table. A
//! [`CompactBatch`](super::Message::CompactBatch) carries the same entries
//! without the repeats, in two steps the receiver undoes in reverse:
//!
//! 1. **Tables once per run**: an entry names its table only when it
//!    differs from the entry before's (a flag in its key's length, see
//!    [`name_tables_once`]): a run of entries of one table names it once.
//! 2. **Replica references**: the entries' bytes are rewritten with the
//!    batch's replicas as a dictionary: the origin, then the replicas its
//!    `deps` vector names, in order. Wherever the bytes hold the canonical
//!    varint of one of those ids (`0xFB`-`0xFD` and 2, 4 or 8 little-endian
//!    bytes: ids of 251 and up), the origin's becomes the single byte
//!    [`ORIGIN_REF`] and the `k`-th dependency's the two bytes
//!    [`ESCAPE`]` k`; a literal `0xFE` or `0xFF` becomes `ESCAPE 0xFE` or
//!    `ESCAPE 0xFF`. Every other byte stays. Any other id stays whole.
//!
//! The rewrite works on bytes, not on types, so it needs no table's type:
//! a region expands a batch right after decoding the frame, outside the
//! engine's lock, into exactly the entries the sender's outbox held, and
//! the rest of the engine (causal buffer, merging, values held for
//! undeclared tables, relaying) sees a plain batch. Nothing stored or
//! hashed changes: states, digests and range fingerprints are computed
//! from the types' canonical encodings, which this layout never touches.
//! Which bytes were ids does not matter for correctness: the rewrite is a
//! bijection on byte strings (a byte that happens to look like an id is
//! restored as it was).
//!
//! Decoding is hostile-safe: a reference past the batch's dictionary is
//! [`InvalidRule::ReplicaReference`], an entry that names no table, a
//! table past the batch's list or more bytes than remain is malformed, and
//! the expanded entries may take at most [`EXPANDED_BYTES_MAX`] bytes (each
//! input byte expands to at most 9, then 1.5×: allocations are bounded by
//! the input's size too).

use super::{Blob, Entries, Message, push_entry};
use crate::clock::{ReplicaId, VersionVector};
use crate::wire::{self, InvalidRule, WireError};

/// The engine protocol from which batches travel as
/// [`CompactBatch`](Message::CompactBatch)es (see the module page). Peers
/// of older protocols get [`Batch`](Message::Batch)es as before.
pub(crate) const ORIGIN_CONTEXT_PROTOCOL: u16 = 7;

/// The byte that stands for the batch's origin id.
pub(crate) const ORIGIN_REF: u8 = 0xFE;

/// The byte that opens a two-byte code: a dependency's id (`0..`
/// [`DEPS_REFS_MAX`]) or a literal [`ORIGIN_REF`] or [`ESCAPE`].
pub(crate) const ESCAPE: u8 = 0xFF;

/// Most replicas of a batch's `deps` that references can name: the codes
/// `0x00..=0xFD` (the first ones, in the vector's order).
pub(crate) const DEPS_REFS_MAX: usize = 0xFE;

/// Most bytes the expanded entries of one batch may take, in bytes: what
/// one frame of the older layout could carry.
pub(crate) const EXPANDED_BYTES_MAX: usize = wire::FRAME_BYTES_MAX;

/// The name decode errors give the layout.
const TYPE_NAME: &str = "CompactBatch";

/// A batch's replicas: what references name.
struct Dictionary {
    origin: u64,
    /// The first [`DEPS_REFS_MAX`] replicas of `deps`, sorted.
    deps: Vec<u64>,
}

impl Dictionary {
    fn new(origin: ReplicaId, deps: &VersionVector) -> Self {
        let deps: Vec<u64> = deps
            .iter()
            .take(DEPS_REFS_MAX)
            .map(|(r, _)| r.get())
            .collect();
        debug_assert!(deps.is_sorted(), "a vector iterates in replica order");
        Dictionary {
            origin: origin.get(),
            deps,
        }
    }
}

/// The canonical varint of `id` (the codec's: a byte below 251, or a
/// prefix `0xFB`/`0xFC`/`0xFD` and 2/4/8 little-endian bytes), into `out`.
fn put_id(out: &mut Vec<u8>, id: u64) {
    if id < 251 {
        out.push(id as u8);
    } else if id <= u64::from(u16::MAX) {
        out.push(0xFB);
        out.extend_from_slice(&(id as u16).to_le_bytes());
    } else if id <= u64::from(u32::MAX) {
        out.push(0xFC);
        out.extend_from_slice(&(id as u32).to_le_bytes());
    } else {
        out.push(0xFD);
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// The id whose canonical varint opens `bytes` (with the varint's length),
/// for varints of 3 bytes or more; `None` for anything else.
fn wide_id_at(bytes: &[u8]) -> Option<(u64, usize)> {
    let (width, min) = match *bytes.first()? {
        0xFB => (2, 251),
        0xFC => (4, u64::from(u16::MAX) + 1),
        0xFD => (8, u64::from(u32::MAX) + 1),
        _ => return None,
    };
    let body = bytes.get(1..=width)?;
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(body);
    let id = u64::from_le_bytes(le);
    (id >= min).then_some((id, 1 + width))
}

/// Bytes [`first_at_least`] tests at a time.
const SCAN_CHUNK_BYTES: usize = 16;

/// The position of the first byte of `bytes` at or above `min` (the
/// length of `bytes` when there is none), a chunk at a time: the bytes
/// between ids are skipped without a branch each.
#[inline]
fn first_at_least(bytes: &[u8], min: u8) -> usize {
    let mut at = 0;
    for chunk in bytes.chunks_exact(SCAN_CHUNK_BYTES) {
        if chunk.iter().fold(0, |high, &b| high.max(b)) >= min {
            break;
        }
        at += SCAN_CHUNK_BYTES;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b >= min)
        .unwrap_or(bytes.len() - at)
}

/// Rewrites `input` with references to `dict`'s replicas, into `out`.
fn substitute(input: &[u8], dict: &Dictionary, out: &mut Vec<u8>) {
    let mut i = 0;
    let mut literal_from = 0;
    loop {
        i += first_at_least(&input[i..], 0xFB);
        let Some(&b) = input.get(i) else { break };
        out.extend_from_slice(&input[literal_from..i]);
        if b >= ORIGIN_REF {
            out.extend_from_slice(&[ESCAPE, b]);
            i += 1;
        } else {
            // The origin first: every entry of a counter names it.
            let wide = wide_id_at(&input[i..]);
            let deps_ref = |id: u64| {
                (id != dict.origin)
                    .then(|| dict.deps.binary_search(&id).ok())
                    .flatten()
            };
            match wide.map(|(id, len)| (id, len, deps_ref(id))) {
                Some((id, len, _)) if id == dict.origin => {
                    out.push(ORIGIN_REF);
                    i += len;
                }
                Some((_, len, Some(k))) => {
                    debug_assert!(k < DEPS_REFS_MAX);
                    out.extend_from_slice(&[ESCAPE, k as u8]);
                    i += len;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        literal_from = i;
    }
    out.extend_from_slice(&input[literal_from..]);
}

/// Undoes [`substitute`].
fn expand(input: &[u8], dict: &Dictionary) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(input.len().saturating_mul(2).min(EXPANDED_BYTES_MAX));
    let mut rest = input;
    loop {
        let at = first_at_least(rest, ORIGIN_REF);
        if at == rest.len() {
            break;
        }
        out.extend_from_slice(&rest[..at]);
        if rest[at] == ORIGIN_REF {
            put_id(&mut out, dict.origin);
            rest = &rest[at + 1..];
        } else {
            let code = *rest
                .get(at + 1)
                .ok_or_else(|| WireError::Malformed("entries end inside a reference".into()))?;
            if code >= ORIGIN_REF {
                out.push(code);
            } else {
                let id = dict.deps.get(usize::from(code)).ok_or(WireError::Invalid {
                    ty: TYPE_NAME,
                    rule: InvalidRule::ReplicaReference,
                })?;
                put_id(&mut out, *id);
            }
            rest = &rest[at + 2..];
        }
        if out.len() > EXPANDED_BYTES_MAX {
            return Err(over_limit());
        }
    }
    out.extend_from_slice(rest);
    if out.len() > EXPANDED_BYTES_MAX {
        return Err(over_limit());
    }
    Ok(out)
}

fn over_limit() -> WireError {
    WireError::Malformed(format!(
        "expanded entries over EXPANDED_BYTES_MAX ({EXPANDED_BYTES_MAX} bytes)"
    ))
}

/// `packed` (entries in the batch layout) with each table named once per
/// run of its entries: each entry opens with `key length × 2 + 1` and the
/// table's position when its table differs from the entry before's (the
/// first entry's always does), else with `key length × 2`; then the key,
/// the value's length and the value. A batch of one table saves a byte
/// per entry; one whose tables alternate costs what it did.
fn name_tables_once(packed: &[u8], tables: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(packed.len());
    let mut current = None;
    for entry in Entries::new(packed, tables) {
        let (table, key, value) = entry?;
        let new_table = current != Some(table);
        wire::put_len(&mut out, (key.len() << 1) | usize::from(new_table));
        if new_table {
            wire::put_len(&mut out, table);
            current = Some(table);
        }
        out.extend_from_slice(key);
        wire::put_bytes(&mut out, value);
    }
    Ok(out)
}

/// Undoes [`name_tables_once`]: the entries in the batch layout, checking
/// every table position against `tables`. The output is at most 1.5× the
/// input (an entry takes 2 bytes at least and gains 1).
fn name_tables_per_entry(runs: &[u8], tables: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(runs.len() + runs.len() / 4);
    let mut rest = runs;
    let mut current = None;
    while !rest.is_empty() {
        let head = wire::take_len(&mut rest)?;
        if head & 1 == 1 {
            let table = wire::take_len(&mut rest)?;
            if table >= tables {
                return Err(WireError::Malformed(format!(
                    "entry names table {table} of {tables}"
                )));
            }
            current = Some(table);
        }
        let table =
            current.ok_or_else(|| WireError::Malformed("the first entry names no table".into()))?;
        let key_len = head >> 1;
        if key_len > rest.len() {
            return Err(WireError::Malformed(format!(
                "key of {key_len} bytes, {} left",
                rest.len()
            )));
        }
        let (key, after) = rest.split_at(key_len);
        rest = after;
        let value = wire::take_bytes(&mut rest)?;
        push_entry(&mut out, table, key, value);
    }
    Ok(out)
}

/// The entries of a batch from `origin` with `deps`, in the layout of
/// protocol 7 (see the module page).
///
/// # Errors
/// [`WireError::Malformed`] when `packed` is not well framed (only a bug
/// can make our own outbox so).
pub(crate) fn compact_entries(
    origin: ReplicaId,
    deps: &VersionVector,
    tables: usize,
    packed: &[u8],
) -> Result<Vec<u8>, WireError> {
    let runs = name_tables_once(packed, tables)?;
    let mut out = Vec::with_capacity(runs.len());
    substitute(&runs, &Dictionary::new(origin, deps), &mut out);
    Ok(out)
}

/// Undoes [`compact_entries`]: the batch's entries as the origin's outbox
/// held them.
///
/// # Errors
/// [`WireError::Invalid`] ([`InvalidRule::ReplicaReference`]) for a
/// reference past the batch's replicas, [`WireError::Malformed`] for bytes
/// no sender writes or entries over [`EXPANDED_BYTES_MAX`].
pub(crate) fn expand_entries(
    origin: ReplicaId,
    deps: &VersionVector,
    tables: usize,
    compact: &[u8],
) -> Result<Vec<u8>, WireError> {
    let runs = expand(compact, &Dictionary::new(origin, deps))?;
    name_tables_per_entry(&runs, tables)
}

impl Message {
    /// A [`Batch`](Message::Batch) as a
    /// [`CompactBatch`](Message::CompactBatch); any other message as it is.
    pub(crate) fn compact(self) -> Message {
        let Message::Batch {
            origin,
            first,
            last,
            deps,
            sent_at,
            tables,
            entries,
        } = self
        else {
            return self;
        };
        match compact_entries(origin, &deps, tables.len(), &entries.0) {
            Ok(compact) => Message::CompactBatch {
                origin,
                first,
                last,
                deps,
                sent_at,
                tables,
                entries: Blob(compact),
            },
            Err(error) => {
                debug_assert!(false, "our own batch is malformed: {error}");
                Message::Batch {
                    origin,
                    first,
                    last,
                    deps,
                    sent_at,
                    tables,
                    entries,
                }
            }
        }
    }

    /// A [`CompactBatch`](Message::CompactBatch) as the
    /// [`Batch`](Message::Batch) it was made from; any other message as it
    /// is.
    ///
    /// # Errors
    /// See [`expand_entries`].
    pub(crate) fn expand(self) -> Result<Message, WireError> {
        let Message::CompactBatch {
            origin,
            first,
            last,
            deps,
            sent_at,
            tables,
            entries,
        } = self
        else {
            return Ok(self);
        };
        let entries = expand_entries(origin, &deps, tables.len(), &entries.0)?;
        Ok(Message::Batch {
            origin,
            first,
            last,
            deps,
            sent_at,
            tables,
            entries: Blob(entries),
        })
    }
}

/// Compacts the batches of `out` flagged in `compact` (one flag per
/// message, in order; a message past the flags is left as it is).
pub(crate) fn compact_batches(out: &mut [(String, Message)], compact: &[bool]) {
    for ((_, message), _) in out.iter_mut().zip(compact).filter(|(_, c)| **c) {
        let batch = std::mem::replace(message, Message::SyncDone { session: 0 });
        *message = batch.compact();
    }
}

/// Decodes a frame from a peer into a message, a
/// [`CompactBatch`](Message::CompactBatch) expanded into its
/// [`Batch`](Message::Batch): what the engine handles.
///
/// # Errors
/// Those of [`wire::decode`] and [`Message::expand`].
pub(crate) fn decode_frame(frame: &[u8]) -> Result<Message, WireError> {
    wire::decode::<Message>(frame)?.expand()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{GCounter, LwwRegister};

    fn wide(n: u64) -> ReplicaId {
        ReplicaId::new(0x9e37_79b9_0000_0000 | n)
    }

    fn deps() -> VersionVector {
        [
            (wide(2), 7),
            (ReplicaId::new(300), 1),
            (ReplicaId::new(5), 2),
        ]
        .into_iter()
        .collect()
    }

    fn bare<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_bare_into(value, &mut out).unwrap();
        out
    }

    #[test]
    fn ids_of_every_width_round_trip_through_references() {
        let origin = wide(1);
        let dict = Dictionary::new(origin, &deps());
        for id in [
            0,
            250,
            251,
            300,
            65_535,
            65_536,
            u64::from(u32::MAX),
            1 << 40,
            u64::MAX,
            origin.get(),
            wide(2).get(),
        ] {
            let mut canonical = Vec::new();
            put_id(&mut canonical, id);
            assert_eq!(canonical, bare(&ReplicaId::new(id)), "the codec's varint");
            let mut out = Vec::new();
            substitute(&canonical, &dict, &mut out);
            assert_eq!(expand(&out, &dict).unwrap(), canonical, "id {id}");
        }
        let mut out = Vec::new();
        substitute(&bare(&origin), &dict, &mut out);
        assert_eq!(out, [ORIGIN_REF], "the origin is one byte");
        out.clear();
        substitute(&bare(&wide(2)), &dict, &mut out);
        assert_eq!(out, [ESCAPE, 2], "the third replica of deps: two bytes");
        out.clear();
        substitute(&bare(&ReplicaId::new(300)), &dict, &mut out);
        assert_eq!(out, [ESCAPE, 1], "ids from 251 on are referenced");
    }

    #[test]
    fn every_byte_string_round_trips() {
        let dict = Dictionary::new(wide(1), &deps());
        let mut rng = crate::testing::fuzz::FuzzRng::new(7);
        // Whole ids (the origin, each dependency, a stranger, ids cut
        // short) and the bytes the rewrite treats apart, strung at random.
        let mut pieces: Vec<Vec<u8>> = [wide(1), wide(2), wide(3), ReplicaId::new(300)]
            .iter()
            .map(bare)
            .collect();
        pieces.push(bare(&wide(1))[..5].to_vec());
        pieces.extend([0xFB, 0xFC, 0xFD, 0xFE, 0xFF, 0x00, 0x41].map(|b| vec![b]));
        let mut references = 0;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..rng.below(12))
                .flat_map(|_| pieces[rng.below(pieces.len())].clone())
                .collect();
            let mut out = Vec::new();
            substitute(&bytes, &dict, &mut out);
            references += usize::from(out.len() < bytes.len());
            assert_eq!(expand(&out, &dict).unwrap(), bytes, "{bytes:x?}");
        }
        assert!(references > 1000, "ids were referenced: {references}");
    }

    #[test]
    fn bad_references_and_runs_are_typed_errors() {
        let origin = wide(1);
        let d = deps();
        let reference = |code| expand_entries(origin, &d, 1, &[ESCAPE, code]);
        assert_eq!(
            reference(3),
            Err(WireError::Invalid {
                ty: TYPE_NAME,
                rule: InvalidRule::ReplicaReference
            }),
            "deps names 3 replicas"
        );
        assert!(reference(0xFD).is_err());
        assert!(
            expand_entries(origin, &d, 1, &[ESCAPE]).is_err(),
            "cut short"
        );
        // A table past the list, a first entry naming none, a key longer
        // than the bytes left, a value cut short, an endless length.
        assert!(expand_entries(origin, &d, 1, &[1, 1, 0]).is_err());
        assert!(expand_entries(origin, &d, 1, &[0, 0]).is_err());
        assert!(expand_entries(origin, &d, 1, &[0x7F, 0, b'k', 0]).is_err());
        assert!(expand_entries(origin, &d, 1, &[3, 0, b'k', 2, 1]).is_err());
        assert!(expand_entries(origin, &d, 1, &[0x80; 12]).is_err());
        assert_eq!(
            expand_entries(origin, &d, 1, &[]).unwrap(),
            Vec::<u8>::new()
        );
        let mut one = Vec::new();
        push_entry(&mut one, 0, b"k", b"v");
        assert_eq!(
            expand_entries(origin, &d, 1, &[3, 0, b'k', 1, b'v']).unwrap(),
            one
        );
    }

    /// The counter's delta loses its origin id, the register's stamp its
    /// writer's, and the entries their table: what the layout is for.
    #[test]
    fn batches_of_counters_and_registers_shrink_and_round_trip() {
        let origin = wide(1);
        let hlc = crate::clock::Hlc::with_clock(
            origin,
            crate::clock::ManualClock::new(1_764_000_000_000),
        );
        let mut packed = Vec::new();
        let mut canonical_bytes = 0;
        for i in 0..100u64 {
            let key = bare(&(i % 10));
            let delta = if i % 2 == 0 {
                bare(&GCounter::new().inc(origin, i + 1))
            } else {
                let mut reg = LwwRegister::new();
                bare(&reg.set(hlc.stamp(), format!("v{i}")))
            };
            canonical_bytes += key.len() + delta.len();
            push_entry(&mut packed, usize::from(i >= 50), &key, &delta);
        }
        let compact = compact_entries(origin, &deps(), 2, &packed).unwrap();
        assert_eq!(
            expand_entries(origin, &deps(), 2, &compact).unwrap(),
            packed
        );
        // Each entry: its key and delta, less the origin's 9-byte id but
        // its 1-byte reference, and two lengths; each of the two runs
        // names its table once.
        assert_eq!(compact.len(), canonical_bytes - 100 * 8 + 100 * 2 + 2);
        // Tables that alternate cost what they did: a byte per entry.
        let mut alternating = Vec::new();
        for i in 0..10usize {
            push_entry(&mut alternating, i % 2, b"k", b"v");
        }
        let compact = compact_entries(origin, &deps(), 2, &alternating).unwrap();
        assert_eq!(compact.len(), alternating.len());
        assert_eq!(
            expand_entries(origin, &deps(), 2, &compact).unwrap(),
            alternating
        );
        // With another origin, nothing is referenced but the layout holds.
        let other = compact_entries(wide(9), &VersionVector::new(), 2, &packed).unwrap();
        assert!(other.len() > packed.len() - 100 && other.len() <= packed.len());
        assert_eq!(
            expand_entries(wide(9), &VersionVector::new(), 2, &other).unwrap(),
            packed
        );
    }
}
