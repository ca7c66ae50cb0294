use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ReplicaId;

/// Bits of a [`Timestamp`] that hold the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// Largest physical time a [`Timestamp`] holds, in ms since the Unix epoch
/// (48 bits: the year 10889).
pub const PHYSICAL_MS_MAX: u64 = (1 << (64 - LOGICAL_BITS)) - 1;
/// Default bound on how far ahead of our wall clock a remote timestamp may be.
pub const MAX_OFFSET_DEFAULT: Duration = Duration::from_millis(500);

/// A hybrid logical clock reading: 48 bits of physical milliseconds since
/// the Unix epoch, then 16 bits of logical counter, in one `u64`.
///
/// Ordering the `u64` orders the readings: physical time first, then the
/// counter. When the counter of one millisecond is exhausted the reading
/// carries into the next millisecond, so the clock stays monotonic.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The reading at `physical_ms` with logical counter `logical`.
    /// Physical time past 48 bits is clamped to [`PHYSICAL_MS_MAX`].
    pub const fn new(physical_ms: u64, logical: u16) -> Self {
        let physical = if physical_ms > PHYSICAL_MS_MAX {
            PHYSICAL_MS_MAX
        } else {
            physical_ms
        };
        Timestamp((physical << LOGICAL_BITS) | logical as u64)
    }

    /// A timestamp from its packed form.
    pub const fn from_u64(packed: u64) -> Self {
        Timestamp(packed)
    }

    /// The packed form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub const fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter within the millisecond.
    pub const fn logical(self) -> u16 {
        (self.0 & ((1 << LOGICAL_BITS) - 1)) as u16
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A [`Timestamp`] with the replica that took it: the total order last-writer-
/// wins types use. Two replicas never share a stamp, since each replica's
/// clock is strictly monotonic and the replica breaks ties.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When, first.
    pub time: Timestamp,
    /// Who, to break ties.
    pub replica: ReplicaId,
}

impl Stamp {
    /// The stamp of `replica` at `time`.
    pub const fn new(time: Timestamp, replica: ReplicaId) -> Self {
        Stamp { time, replica }
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{:?}", self.time, self.replica)
    }
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Injected into [`Hlc`] so tests drive time; any
/// `Fn() -> u64 + Send + Sync` closure is one.
pub trait PhysicalClock: Send + Sync {
    /// Milliseconds since the Unix epoch, as this machine believes.
    fn now_ms(&self) -> u64;
}

impl<F: Fn() -> u64 + Send + Sync> PhysicalClock for F {
    fn now_ms(&self) -> u64 {
        self()
    }
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        // Before 1970 reads as 0: the HLC then runs on its logical part.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock tests set by hand; clones share one reading.
///
/// ```
/// use archipelago::clock::{ManualClock, PhysicalClock};
///
/// let clock = ManualClock::new(1_000);
/// let shared = clock.clone();
/// clock.advance(5);
/// assert_eq!(shared.now_ms(), 1_005);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    /// Sets the reading, backwards included.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the reading forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a remote timestamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// The remote clock is further ahead of ours than `max_offset` allows:
    /// accepting it would drag every later local timestamp into the future.
    #[error(
        "remote timestamp {remote} is {ahead_ms} ms ahead of the local clock ({local_ms} ms), past the {max_offset_ms} ms bound"
    )]
    TooFarAhead {
        /// The timestamp refused.
        remote: Timestamp,
        /// Our physical clock when it arrived.
        local_ms: u64,
        /// How far ahead it was.
        ahead_ms: u64,
        /// The bound in force.
        max_offset_ms: u64,
    },
}

/// A hybrid logical clock (Kulkarni, Demirbas et al., 2014).
///
/// Its readings follow the wall clock when it moves forward, never go
/// backwards when it does not, and always move past every timestamp received
/// with [`update`](Hlc::update), so a write that causally follows another gets
/// a larger timestamp even across replicas whose clocks disagree. Readings
/// are taken with a lock-free compare-and-swap: share one `Hlc` by reference.
///
/// ```
/// use archipelago::clock::{Hlc, ManualClock, ReplicaId};
///
/// let wall = ManualClock::new(10_000);
/// let hlc = Hlc::with_clock(ReplicaId::new(1), wall.clone());
/// let a = hlc.now();
/// wall.set(9_000); // the wall clock jumps back a second
/// let b = hlc.now();
/// assert!(b > a);
/// ```
pub struct Hlc {
    replica: ReplicaId,
    clock: Arc<dyn PhysicalClock>,
    last: AtomicU64,
    max_offset_ms: u64,
    /// Remote timestamps past the offset bound: refused by `update`,
    /// clamped by `observe`.
    remote_rejects: AtomicU64,
}

impl Hlc {
    /// A clock for `replica` on the system wall clock.
    pub fn new(replica: ReplicaId) -> Self {
        Self::with_clock(replica, SystemClock)
    }

    /// A clock for `replica` on an injected physical clock.
    pub fn with_clock(replica: ReplicaId, clock: impl PhysicalClock + 'static) -> Self {
        Hlc {
            replica,
            clock: Arc::new(clock),
            last: AtomicU64::new(0),
            max_offset_ms: MAX_OFFSET_DEFAULT.as_millis() as u64,
            remote_rejects: AtomicU64::new(0),
        }
    }

    /// Sets how far ahead of the local wall clock a remote timestamp may be
    /// before [`update`](Hlc::update) refuses it (default 500 ms).
    pub fn with_max_offset(mut self, max_offset: Duration) -> Self {
        self.max_offset_ms = u64::try_from(max_offset.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The replica whose clock this is.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The bound on remote clock offset.
    pub fn max_offset(&self) -> Duration {
        Duration::from_millis(self.max_offset_ms)
    }

    /// Remote timestamps this clock did not follow because they were past
    /// its offset bound (the local wall clock plus the max offset): those
    /// [`update`](Hlc::update) refused and those [`observe`](Hlc::observe)
    /// clamped.
    pub fn remote_rejects(&self) -> u64 {
        self.remote_rejects.load(Ordering::Relaxed)
    }

    /// The latest reading given out, without taking a new one.
    pub fn last(&self) -> Timestamp {
        Timestamp(self.last.load(Ordering::Acquire))
    }

    /// The physical clock's reading in ms, without moving this clock: what
    /// a region measures replication lag against.
    pub fn wall_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new reading, larger than every earlier one of this clock.
    pub fn now(&self) -> Timestamp {
        let wall = Timestamp::new(self.clock.now_ms(), 0).0;
        self.advance(|last| wall.max(last + 1))
    }

    /// A new reading stamped with this clock's replica, for LWW writes.
    pub fn stamp(&self) -> Stamp {
        Stamp::new(self.now(), self.replica)
    }

    /// Moves the clock past a timestamp received from another replica and
    /// returns the new reading, which is larger than both `remote` and every
    /// earlier local reading.
    ///
    /// # Errors
    /// [`HlcError::TooFarAhead`] when `remote` is more than the max offset
    /// ahead of the local wall clock; the clock is then left untouched.
    pub fn update(&self, remote: Timestamp) -> Result<Timestamp, HlcError> {
        let local_ms = self.clock.now_ms().min(PHYSICAL_MS_MAX);
        let ahead_ms = remote.physical_ms().saturating_sub(local_ms);
        if ahead_ms > self.max_offset_ms {
            self.remote_rejects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                replica = %self.replica,
                %remote,
                local_ms,
                ahead_ms,
                max_offset_ms = self.max_offset_ms,
                "rejected remote timestamp: clock offset past the bound"
            );
            return Err(HlcError::TooFarAhead {
                remote,
                local_ms,
                ahead_ms,
                max_offset_ms: self.max_offset_ms,
            });
        }
        let wall = Timestamp::new(local_ms, 0).0;
        Ok(self.advance(|last| wall.max(last.max(remote.0) + 1)))
    }

    /// The latest timestamp a remote may carry: the local wall clock plus
    /// the max offset. Values stamped later come from a clock running too
    /// far ahead.
    pub fn offset_bound(&self) -> Timestamp {
        let local_ms = self.clock.now_ms().min(PHYSICAL_MS_MAX);
        Timestamp::new(local_ms.saturating_add(self.max_offset_ms), u16::MAX)
    }

    /// Moves the clock past `remote` as far as the max offset allows and
    /// returns the new reading. Unlike [`update`](Hlc::update) it never
    /// refuses: a timestamp too far ahead is clamped to the local wall clock
    /// plus the max offset (and logged), so data carrying it can still be
    /// applied while this clock stays within its bound. Writes made here
    /// just after may then stamp below that remote write: the price of a
    /// peer whose clock runs too far ahead.
    pub fn observe(&self, remote: Timestamp) -> Timestamp {
        let local_ms = self.clock.now_ms().min(PHYSICAL_MS_MAX);
        let bound = self.offset_bound();
        if remote > bound {
            self.remote_rejects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                replica = %self.replica,
                %remote,
                local_ms,
                max_offset_ms = self.max_offset_ms,
                "remote clock past the offset bound: not followed beyond it"
            );
        }
        let remote = remote.min(bound).0;
        let wall = Timestamp::new(local_ms, 0).0;
        self.advance(|last| wall.max(last.max(remote).saturating_add(1)))
    }

    /// Moves the clock to at least `high_water`, unclamped: a region
    /// restarting from storage resumes above every stamp it gave out
    /// before, even if its wall clock went back meanwhile.
    pub fn resume_after(&self, high_water: Timestamp) {
        self.last.fetch_max(high_water.0, Ordering::AcqRel);
    }

    fn advance(&self, next: impl Fn(u64) -> u64) -> Timestamp {
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let proposed = next(last);
            debug_assert!(proposed > last);
            match self.last.compare_exchange_weak(
                last,
                proposed,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Timestamp(proposed),
                Err(actual) => last = actual,
            }
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc")
            .field("replica", &self.replica)
            .field("last", &self.last())
            .field("max_offset_ms", &self.max_offset_ms)
            .field("remote_rejects", &self.remote_rejects())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_counter_carries_into_the_next_millisecond() {
        let wall = ManualClock::new(5);
        let hlc = Hlc::with_clock(ReplicaId::new(1), wall);
        let mut prev = hlc.now();
        for _ in 0..70_000 {
            let t = hlc.now();
            assert!(t > prev);
            prev = t;
        }
        assert_eq!(prev.physical_ms(), 6);
    }

    #[test]
    fn update_moves_past_remote() {
        let wall = ManualClock::new(1_000);
        let hlc = Hlc::with_clock(ReplicaId::new(1), wall);
        let remote = Timestamp::new(1_300, 7);
        let t = hlc.update(remote).unwrap();
        assert_eq!(t, Timestamp::new(1_300, 8));
        assert!(hlc.now() > t);
    }

    #[test]
    fn remote_rejects_count_refused_and_clamped_timestamps_only() {
        let wall = ManualClock::new(1_000);
        let hlc = Hlc::with_clock(ReplicaId::new(1), wall);
        hlc.update(Timestamp::new(1_500, 0)).unwrap();
        hlc.observe(Timestamp::new(1_400, 0));
        assert_eq!(hlc.remote_rejects(), 0, "within the 500 ms bound");
        assert!(hlc.update(Timestamp::new(1_501, 0)).is_err());
        let clamped = hlc.observe(Timestamp::new(9_000, 0));
        assert!(clamped.physical_ms() <= 1_501, "{clamped}");
        assert_eq!(hlc.remote_rejects(), 2);
    }
}
