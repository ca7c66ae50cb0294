//! The outbox: local writes kept, already packed as batch entries, until
//! every peer has acknowledged them.
//!
//! Writes are appended to the last *segment*, a byte string in the batch
//! entry format (see [`message`](super::message)), until it holds a
//! batch's worth. A batch is a slice of one segment, so sending copies
//! bytes and clones nothing per write, and an acknowledgement drops whole
//! segments.
//!
//! Every write of a segment has the same dependencies: the writes of other
//! regions this region had applied when the segment opened. A segment is
//! closed when that changes, so a batch cut anywhere in it carries exact
//! dependencies (a larger vector could name a write that itself waits on a
//! later write of this batch's origin: a deadlock until anti-entropy).
//!
//! A transaction's writes are appended as a *group* (between
//! [`Outbox::begin_group`] and [`Outbox::end_group`], under one lock take):
//! all in one segment, a fresh one when the open segment could not hold
//! them all, never cut by `len_max`/`bytes_max` inside. Every other
//! boundary (a batch's `last_max`, the part of a segment a commit stores)
//! is taken from state under the same lock, so it falls between groups.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::message::{self, Blob, Message};
use crate::clock::{ReplicaId, Timestamp, VersionVector};
use crate::wire::{self, WireError};

/// A segment as storage holds it.
#[derive(Serialize, Deserialize)]
struct StoredSegment {
    first: u64,
    len: u64,
    deps: VersionVector,
    tables: Vec<String>,
    packed: Blob,
}

/// A run of consecutive local writes with the same dependencies.
struct Segment {
    /// Sequence number of its first write.
    first: u64,
    /// Writes in it.
    len: u64,
    /// Other regions' writes applied when it opened.
    deps: VersionVector,
    /// The `remote_generation` those `deps` reflect.
    generation: u64,
    /// Tables its entries name, by position: (table slot, name).
    tables: Vec<(usize, Arc<str>)>,
    /// The packed entries.
    packed: Vec<u8>,
    /// Bytes it counts against the outbox bound: keys and deltas, plus
    /// [`SEGMENT_OVERHEAD`].
    bytes: usize,
}

/// Bookkeeping bytes of a segment beyond its keys and deltas, counted
/// against the outbox bound: writes that trickle in while other regions'
/// writes keep arriving get a segment each.
const SEGMENT_OVERHEAD: usize = std::mem::size_of::<Segment>() + 64;

impl Segment {
    fn last(&self) -> u64 {
        self.first + self.len - 1
    }
}

/// The local writes not yet acknowledged by every peer.
#[derive(Default)]
pub(crate) struct Outbox {
    segments: VecDeque<Segment>,
    len: usize,
    bytes: usize,
    /// A group (a transaction) is being appended: no cut inside it.
    group: bool,
    /// The next append opens a fresh segment (a group did not fit).
    fresh: bool,
    /// Sequence number the open group starts at (checked at its end).
    group_first: u64,
}

/// Where a write goes and what it carries.
pub(crate) struct Append<'a> {
    pub(crate) seq: u64,
    pub(crate) slot: usize,
    pub(crate) table: &'a Arc<str>,
    pub(crate) key: &'a [u8],
    pub(crate) delta: &'a [u8],
}

impl Outbox {
    /// Writes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held: keys and deltas, and the segments' bookkeeping.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sequence number of the oldest write held.
    pub(crate) fn start(&self) -> Option<u64> {
        self.segments.front().map(|s| s.first)
    }

    /// Appends a local write. `applied` is what this region has applied,
    /// `generation` counts the times other regions' writes were added to
    /// it; a segment is cut at `len_max` writes or `bytes_max` bytes.
    pub(crate) fn append(
        &mut self,
        write: Append<'_>,
        applied: &VersionVector,
        generation: u64,
        len_max: usize,
        bytes_max: usize,
    ) {
        let size = write.key.len() + write.delta.len();
        let grouped = self.group;
        let open = !std::mem::take(&mut self.fresh)
            && self.segments.back().is_some_and(|s| {
                s.generation == generation
                    && (grouped || (s.len < len_max as u64 && s.packed.len() + size <= bytes_max))
                    && s.last() + 1 == write.seq
            });
        if !open {
            self.bytes += SEGMENT_OVERHEAD;
            self.segments.push_back(Segment {
                first: write.seq,
                len: 0,
                deps: applied.clone(),
                generation,
                tables: Vec::new(),
                packed: Vec::with_capacity(bytes_max.min(64)),
                bytes: SEGMENT_OVERHEAD,
            });
        }
        let segment = self.segments.back_mut().expect("pushed above");
        let position = match segment.tables.iter().position(|(s, _)| *s == write.slot) {
            Some(p) => p,
            None => {
                segment.tables.push((write.slot, Arc::clone(write.table)));
                segment.tables.len() - 1
            }
        };
        message::push_entry(&mut segment.packed, position, write.key, write.delta);
        segment.len += 1;
        segment.bytes += size;
        self.len += 1;
        self.bytes += size;
    }

    /// Starts a group of `writes` appends carrying `bytes` of keys and
    /// deltas, the first at `seq`: they all go into one segment (a fresh
    /// one unless the open segment holds them within `len_max` and
    /// `bytes_max`), so no batch, resend or stored part starts or ends
    /// inside them.
    pub(crate) fn begin_group(
        &mut self,
        seq: u64,
        writes: usize,
        bytes: usize,
        len_max: usize,
        bytes_max: usize,
    ) {
        debug_assert!(!self.group, "groups do not nest");
        let fits = self.segments.back().is_some_and(|s| {
            s.len + writes as u64 <= len_max as u64 && s.packed.len() + bytes <= bytes_max
        });
        self.fresh = !fits;
        self.group = true;
        self.group_first = seq;
    }

    /// Ends the group begun by [`begin_group`](Outbox::begin_group).
    pub(crate) fn end_group(&mut self) {
        debug_assert!(self.group, "a group was begun");
        self.group = false;
        self.fresh = false;
        // (The outbox may have been shed meanwhile: then nothing is left to
        // check; otherwise the group is in the back segment.)
        debug_assert!(
            self.segments
                .front()
                .is_none_or(|f| f.first > self.group_first)
                || self
                    .segments
                    .back()
                    .is_some_and(|s| s.first <= self.group_first),
            "a group's writes share one segment"
        );
    }

    /// The batch of writes from `first` to the end of the segment holding
    /// it, and the batch's last sequence number. A batch starting inside a
    /// segment (the segment grew since the last batch) finds its offset by
    /// skipping the entries before it: at most a segment's length.
    ///
    /// The batch stops at `last_max`: a region with storage sends only
    /// committed writes.
    pub(crate) fn batch(
        &self,
        origin: ReplicaId,
        first: u64,
        last_max: u64,
        sent_at: Timestamp,
    ) -> Option<(u64, Message)> {
        let i = self.segments.partition_point(|s| s.last() < first);
        let segment = self.segments.get(i)?;
        if first < segment.first || first > last_max {
            return None;
        }
        let last = segment.last().min(last_max);
        // Our own bytes: only a bug could make them unreadable.
        let offset = message::entry_offset(&segment.packed, first - segment.first).ok()?;
        let end = if last == segment.last() {
            segment.packed.len()
        } else {
            offset + message::entry_offset(&segment.packed[offset..], last - first + 1).ok()?
        };
        Some((
            last,
            Message::Batch {
                origin,
                first,
                last,
                deps: segment.deps.clone(),
                sent_at,
                tables: segment.tables.iter().map(|(_, t)| t.to_string()).collect(),
                entries: Blob(segment.packed[offset..end].to_vec()),
            },
        ))
    }

    /// The writes from `from` on, encoded for storage by the sequence
    /// number of their first write: the part of the segment holding `from`
    /// that starts there, then every later segment whole. A commit thus
    /// appends what was written since the last one instead of writing the
    /// open segment again; stored parts of one segment are restored as
    /// segments of their own (same dependencies, smaller batches).
    pub(crate) fn encode_from(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        let i = self.segments.partition_point(|s| s.last() < from);
        self.segments
            .range(i..)
            .filter_map(|s| {
                let first = from.max(s.first);
                // Our own bytes: only a bug could make them unreadable.
                let offset = message::entry_offset(&s.packed, first - s.first).ok()?;
                let stored = StoredSegment {
                    first,
                    len: s.last() + 1 - first,
                    deps: s.deps.clone(),
                    tables: s.tables.iter().map(|(_, t)| t.to_string()).collect(),
                    packed: Blob(s.packed[offset..].to_vec()),
                };
                debug_assert!(stored.len >= 1, "a part holds a write");
                wire::encode(&stored).ok().map(|bytes| (first, bytes))
            })
            .collect()
    }

    /// Appends a segment loaded from storage. Segments must come in order
    /// and follow each other; none is appended to afterwards.
    pub(crate) fn restore(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let stored: StoredSegment = wire::decode(bytes)?;
        let entries = message::count_entries(&stored.packed.0, stored.tables.len())?;
        if stored.len == 0 || entries != stored.len {
            return Err(WireError::Malformed(format!(
                "stored segment of {} writes holds {entries}",
                stored.len
            )));
        }
        if let Some(back) = self.segments.back()
            && back.last() + 1 != stored.first
        {
            return Err(WireError::Malformed(format!(
                "stored segment at {} does not follow {}",
                stored.first,
                back.last()
            )));
        }
        let bytes = stored.packed.0.len() + SEGMENT_OVERHEAD;
        self.segments.push_back(Segment {
            first: stored.first,
            len: stored.len,
            deps: stored.deps,
            // Never equal to a live generation: nothing is appended to it.
            generation: u64::MAX,
            tables: stored
                .tables
                .into_iter()
                .map(|t| (usize::MAX, Arc::from(t)))
                .collect(),
            packed: stored.packed.0,
            bytes,
        });
        self.len += stored.len as usize;
        self.bytes += bytes;
        Ok(())
    }

    /// Drops the writes up to `acked`, whole segments at a time.
    pub(crate) fn truncate(&mut self, acked: u64) {
        while let Some(front) = self.segments.front() {
            if front.last() > acked {
                break;
            }
            let front = self.segments.pop_front().expect("present");
            self.len -= front.len as usize;
            self.bytes -= front.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::message::Entries;

    fn append(outbox: &mut Outbox, seq: u64, applied: &VersionVector, generation: u64) {
        let table: Arc<str> = "t".into();
        outbox.append(
            Append {
                seq,
                slot: 0,
                table: &table,
                key: &seq.to_le_bytes(),
                delta: b"d",
            },
            applied,
            generation,
            4,
            1 << 20,
        );
    }

    fn keys(message: &Message) -> Vec<u64> {
        let Message::Batch {
            tables, entries, ..
        } = message
        else {
            panic!("not a batch")
        };
        Entries::new(&entries.0, tables.len())
            .map(|e| u64::from_le_bytes(e.unwrap().1.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn batches_cut_anywhere_carry_their_segment_and_its_deps() {
        let origin = ReplicaId::new(1);
        let mut outbox = Outbox::default();
        let mut applied = VersionVector::new();
        for seq in 1..=6 {
            append(&mut outbox, seq, &applied, 0); // 1..=4, then 5..=6 (len 4)
        }
        applied.raise(ReplicaId::new(2), 9); // another region's writes applied
        append(&mut outbox, 7, &applied, 1); // a new segment: new deps
        let at = Timestamp::new(1, 0);
        let (last, batch) = outbox.batch(origin, 3, u64::MAX, at).unwrap();
        assert_eq!((last, keys(&batch)), (4, vec![3, 4]));
        let (last, batch) = outbox.batch(origin, 5, u64::MAX, at).unwrap();
        assert_eq!((last, keys(&batch)), (6, vec![5, 6]));
        let (last, batch) = outbox.batch(origin, 7, u64::MAX, at).unwrap();
        assert_eq!((last, keys(&batch)), (7, vec![7]));
        let Message::Batch { deps, .. } = batch else {
            unreachable!()
        };
        assert_eq!(deps.get(ReplicaId::new(2)), 9);
        assert!(outbox.batch(origin, 8, u64::MAX, at).is_none());

        // Only committed writes leave a region with storage.
        let (last, batch) = outbox.batch(origin, 1, 2, at).unwrap();
        assert_eq!((last, keys(&batch)), (2, vec![1, 2]));
        assert!(outbox.batch(origin, 3, 2, at).is_none());

        // Stored and restored, segments batch alike.
        let mut again = Outbox::default();
        for (_, bytes) in outbox.encode_from(1) {
            again.restore(&bytes).unwrap();
        }
        assert_eq!((again.len(), again.start()), (7, Some(1)));
        let (last, batch) = again.batch(origin, 5, u64::MAX, at).unwrap();
        assert_eq!((last, keys(&batch)), (6, vec![5, 6]));
        assert!(
            again.restore(&outbox.encode_from(7)[0].1).is_err(),
            "out of order"
        );

        // Stored in parts, as commits append them: restored alike.
        let mut live = Outbox::default();
        let mut stored = Vec::new();
        let none = VersionVector::new();
        for (from, to) in [(1, 2), (3, 3), (4, 6)] {
            for seq in from..=to {
                append(&mut live, seq, &none, 0); // 1..=4, 5..=6
            }
            stored.extend(live.encode_from(from));
        }
        let firsts: Vec<u64> = stored.iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, [1, 3, 4, 5], "parts start where their commit did");
        let mut parts = Outbox::default();
        for (_, bytes) in &stored {
            parts.restore(bytes).unwrap();
        }
        assert_eq!((parts.len(), parts.start()), (6, Some(1)));
        let (last, batch) = parts.batch(origin, 2, u64::MAX, at).unwrap();
        assert_eq!(
            (last, keys(&batch)),
            (2, vec![2]),
            "a batch ends with its part"
        );
        let (last, batch) = parts.batch(origin, 3, u64::MAX, at).unwrap();
        assert_eq!((last, keys(&batch)), (3, vec![3]));
        let (last, batch) = parts.batch(origin, 5, u64::MAX, at).unwrap();
        assert_eq!((last, keys(&batch)), (6, vec![5, 6]));
        let Message::Batch { deps, .. } = again.batch(origin, 7, u64::MAX, at).unwrap().1 else {
            unreachable!()
        };
        assert_eq!(deps.get(ReplicaId::new(2)), 9, "parts keep their deps");

        // Acks drop whole segments only.
        outbox.truncate(5);
        assert_eq!(outbox.start(), Some(5));
        assert_eq!(outbox.len(), 3);
        outbox.truncate(7);
        assert_eq!((outbox.len(), outbox.bytes()), (0, 0));
    }

    #[test]
    fn trickling_writes_between_remote_batches_count_their_bookkeeping() {
        let mut outbox = Outbox::default();
        let applied = VersionVector::new();
        for seq in 1..=100 {
            append(&mut outbox, seq, &applied, seq); // a remote batch between each
        }
        assert_eq!(outbox.len(), 100);
        assert!(
            outbox.bytes() >= 100 * SEGMENT_OVERHEAD,
            "{}",
            outbox.bytes()
        );
    }
}
