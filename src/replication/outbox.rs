//! The outbox: local writes kept, already packed as batch entries, until
//! every peer has acknowledged them.
//!
//! Writes are appended to the open *segment*, a byte string in the batch
//! entry format (see [`message`](super::message)). A batch is a slice of
//! one segment, so sending copies bytes and clones nothing per write, and
//! an acknowledgement drops whole segments.
//!
//! Every write of a segment has the same dependencies: the writes of other
//! regions this region had applied when the segment opened. A segment is
//! closed when that changes, so a batch cut anywhere in it carries exact
//! dependencies (a larger vector could name a write that itself waits on a
//! later write of this batch's origin: a deadlock until anti-entropy).

use std::collections::VecDeque;
use std::sync::Arc;

use super::message::{self, Blob, Message};
use crate::clock::{ReplicaId, Timestamp, VersionVector};

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
    /// Bytes of keys and deltas in it (its size less the framing).
    payload: usize,
    /// No more writes go into it (it was sent, or it is full).
    sealed: bool,
}

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

    /// Bytes of keys and deltas held.
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
        let open = self.segments.back().is_some_and(|s| {
            !s.sealed
                && s.generation == generation
                && s.len < len_max as u64
                && s.packed.len() + size <= bytes_max
                && s.last() + 1 == write.seq
        });
        if !open {
            if let Some(s) = self.segments.back_mut() {
                s.sealed = true;
            }
            self.segments.push_back(Segment {
                first: write.seq,
                len: 0,
                deps: applied.clone(),
                generation,
                tables: Vec::new(),
                packed: Vec::with_capacity(bytes_max.min(256)),
                payload: 0,
                sealed: false,
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
        segment.payload += size;
        self.len += 1;
        self.bytes += size;
    }

    /// The batch of writes from `first` to the end of the segment holding
    /// it, and the batch's last sequence number; seals that segment (later
    /// writes start a new one, so the next batch starts on a boundary).
    pub(crate) fn batch(
        &mut self,
        origin: ReplicaId,
        first: u64,
        sent_at: Timestamp,
    ) -> Option<(u64, Message)> {
        let i = self.segments.partition_point(|s| s.last() < first);
        let segment = self.segments.get_mut(i)?;
        if first < segment.first {
            return None;
        }
        segment.sealed = true;
        // Our own bytes: only a bug could make them unreadable.
        let offset = message::entry_offset(&segment.packed, first - segment.first).ok()?;
        Some((
            segment.last(),
            Message::Batch {
                origin,
                first,
                last: segment.last(),
                deps: segment.deps.clone(),
                sent_at,
                tables: segment.tables.iter().map(|(_, t)| t.to_string()).collect(),
                entries: Blob(segment.packed[offset..].to_vec()),
            },
        ))
    }

    /// Drops the writes up to `acked`, whole segments at a time.
    pub(crate) fn truncate(&mut self, acked: u64) {
        while let Some(front) = self.segments.front() {
            if front.last() > acked {
                break;
            }
            let front = self.segments.pop_front().expect("present");
            self.len -= front.len as usize;
            self.bytes -= front.payload;
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.segments.clear();
        self.len = 0;
        self.bytes = 0;
    }
}
