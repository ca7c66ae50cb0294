//! Replication lag: when each local write not yet acknowledged by every
//! peer was made, by the region's injected wall clock, so that a peer's lag
//! in seconds is the age of the oldest write it has not acknowledged.
//!
//! One mark per millisecond in which writes were made (not one per write):
//! a busy region keeps at most a mark per ms of unacknowledged history, and
//! at most [`WRITE_MARKS_LEN_MAX`] marks in all. Past that bound every
//! other mark is dropped (the oldest is kept): the writes of a dropped mark
//! count from the mark before it, so the lag reads high, never low.

use std::collections::VecDeque;

/// Most marks kept (16 bytes each).
pub(crate) const WRITE_MARKS_LEN_MAX: usize = 4096;

/// `(first sequence number, wall-clock ms)` of each run of local writes
/// made in one millisecond, oldest first.
#[derive(Default)]
pub(crate) struct WriteMarks {
    marks: VecDeque<(u64, u64)>,
}

impl WriteMarks {
    /// Records that the local write `seq` was made at `wall_ms`.
    pub(crate) fn record(&mut self, seq: u64, wall_ms: u64) {
        match self.marks.back() {
            // A clock that steps back counts from the later reading.
            Some(&(_, last_ms)) if wall_ms <= last_ms => return,
            _ => {}
        }
        if self.marks.len() >= WRITE_MARKS_LEN_MAX {
            let mut index = 0;
            self.marks.retain(|_| {
                index += 1;
                index % 2 == 1
            });
        }
        self.marks.push_back((seq, wall_ms));
    }

    /// Forgets the marks of writes up to `acked` (every peer has them).
    pub(crate) fn truncate(&mut self, acked: u64) {
        // A mark is needed while the next one starts after `acked + 1`.
        while self.marks.len() > 1 && self.marks[1].0 <= acked + 1 {
            self.marks.pop_front();
        }
    }

    /// When the write `seq` was made (ms); `None` without marks.
    pub(crate) fn written_at(&self, seq: u64) -> Option<u64> {
        let after = self.marks.partition_point(|&(first, _)| first <= seq);
        self.marks.get(after.saturating_sub(1)).map(|&(_, ms)| ms)
    }

    /// Marks held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unacknowledged_write_dates_from_its_millisecond() {
        let mut marks = WriteMarks::default();
        marks.record(1, 1_000);
        marks.record(2, 1_000);
        marks.record(3, 1_500);
        marks.record(4, 2_000);
        assert_eq!(marks.len(), 3);
        assert_eq!(marks.written_at(2), Some(1_000));
        assert_eq!(marks.written_at(3), Some(1_500));
        marks.truncate(2);
        assert_eq!(marks.written_at(3), Some(1_500));
        assert_eq!(marks.len(), 2);
        marks.truncate(4);
        assert_eq!(marks.len(), 1);
    }

    #[test]
    fn past_the_bound_marks_thin_out_and_the_lag_reads_high() {
        let mut marks = WriteMarks::default();
        for seq in 1..=(WRITE_MARKS_LEN_MAX as u64 * 3) {
            marks.record(seq, seq * 10);
        }
        assert!(marks.len() <= WRITE_MARKS_LEN_MAX);
        assert_eq!(marks.written_at(1), Some(10));
        for seq in [2, 777, 5_000, 12_000] {
            assert!(marks.written_at(seq).unwrap() <= seq * 10);
        }
    }
}
