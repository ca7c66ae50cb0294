use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::{PhysicalClock, SystemClock};

use super::{SnowflakeId, SnowflakeLayout, SnowflakeParts};

/// Default bound on how long [`SnowflakeGenerator::next_id`] waits for the
/// clock to reach the millisecond it needs.
pub const CLOCK_WAIT_MAX_DEFAULT: Duration = Duration::from_secs(1);
/// Default bound on how far ahead of the clock an id's timestamp may be
/// stamped when a millisecond's sequence runs out: 0, wait instead.
pub const BORROW_AHEAD_MAX_DEFAULT: Duration = Duration::ZERO;
/// While waiting for the clock, yield the thread for this long before
/// falling back to sleeping: the usual wait, for the next millisecond, is
/// shorter, and a sleep would often oversleep the tick. On an idle core a
/// yield returns at once (a spin); on a busy one it lends the core out.
pub const CLOCK_SPIN_MAX: Duration = Duration::from_millis(2);
/// Sleep between clock readings once past [`CLOCK_SPIN_MAX`].
pub const CLOCK_POLL_INTERVAL: Duration = Duration::from_micros(100);

/// Why a Snowflake generator could not be built, or an id not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnowflakeError {
    /// The region number does not fit the layout's region field.
    #[error("region {region} is past the layout's maximum {region_max}")]
    RegionOutOfRange {
        /// The region asked for.
        region: u32,
        /// The largest region the layout holds.
        region_max: u32,
    },
    /// The machine number does not fit the layout's machine field.
    #[error("machine {machine} is past the layout's maximum {machine_max}")]
    MachineOutOfRange {
        /// The machine asked for.
        machine: u32,
        /// The largest machine the layout holds.
        machine_max: u32,
    },
    /// The clock reads earlier than the layout's epoch.
    #[error("the clock reads {wall_ms} ms, before the layout's epoch at {epoch_ms} ms")]
    ClockBeforeEpoch {
        /// The clock reading, in ms since the Unix epoch.
        wall_ms: u64,
        /// The layout's epoch, in ms since the Unix epoch.
        epoch_ms: u64,
    },
    /// The time to stamp is past the last millisecond the layout's
    /// timestamp field holds: the layout has run out of ids.
    #[error("time {unix_ms} ms is past the layout's last timestamp {last_unix_ms} ms")]
    TimestampOverflow {
        /// The millisecond the id needed, since the Unix epoch.
        unix_ms: u64,
        /// The last millisecond the layout holds, since the Unix epoch.
        last_unix_ms: u64,
    },
    /// The next id needs a millisecond the clock has not reached, and it did
    /// not reach it within `clock_wait_max` (or was too far behind to try):
    /// the sequence ran out, possibly after the clock moved backwards.
    #[error(
        "the clock reads {wall_ms} ms; the next id needs {next_unix_ms} ms (gave up after {waited:?})"
    )]
    ClockBehind {
        /// The last clock reading, in ms since the Unix epoch.
        wall_ms: u64,
        /// The millisecond the next id needs, since the Unix epoch.
        next_unix_ms: u64,
        /// How long this call waited before giving up.
        waited: Duration,
    },
    /// A negative number is not a Snowflake id.
    #[error("{id} is negative: not a Snowflake id")]
    NegativeId {
        /// The number refused.
        id: i64,
    },
}

/// Issues Snowflake ids for one (region, machine) pair.
///
/// Share one generator by reference between threads: [`next_id`] takes
/// `&self` and is lock-free. Two generators never issue the same id as long
/// as no two of them, on the same layout, share a (region, machine) pair.
///
/// ```
/// use std::time::Duration;
/// use archipelago::clock::ManualClock;
/// use archipelago::id::{SnowflakeError, SnowflakeGenerator, SnowflakeLayout};
///
/// let layout = SnowflakeLayout::builder()
///     .timestamp_bits(51).region_bits(5).machine_bits(5).sequence_bits(2) // 4 ids per ms
///     .build()?;
/// let wall = ManualClock::new(layout.epoch_ms() + 1_000);
/// let ids = SnowflakeGenerator::builder(1, 2)
///     .layout(layout)
///     .clock(wall.clone())
///     .clock_wait_max(Duration::from_millis(1))
///     .build()?;
///
/// let first: Vec<_> = (0..4).map(|_| ids.next_id()).collect::<Result<_, _>>()?;
/// assert!(first.windows(2).all(|w| w[0] < w[1]));
/// // The millisecond's 4 ids are spent and the clock is frozen.
/// assert!(matches!(ids.next_id(), Err(SnowflakeError::ClockBehind { .. })));
///
/// wall.set(layout.epoch_ms() + 500); // the wall clock jumps back half a second
/// assert!(ids.next_id().is_err()); // never reuses 1,000 ms, waits for it to pass
/// wall.set(layout.epoch_ms() + 1_001);
/// let next = ids.next_id()?;
/// assert!(next > first[3]);
/// assert_eq!(ids.parse(next).since_epoch_ms, 1_001);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`next_id`]: SnowflakeGenerator::next_id
pub struct SnowflakeGenerator {
    layout: SnowflakeLayout,
    region: u32,
    machine: u32,
    /// Region and machine, shifted into place.
    node: u64,
    clock: Arc<dyn PhysicalClock>,
    /// The next free slot: `(ms since epoch << sequence_bits) | sequence`.
    /// Only grows; a sequence carrying past its field moves to the next ms.
    next: AtomicU64,
    clock_wait_max: Duration,
    borrow_ahead_max_ms: u64,
}

impl SnowflakeGenerator {
    /// A generator for `region` and `machine` on the default layout and the
    /// system clock.
    ///
    /// # Errors
    /// [`SnowflakeError::RegionOutOfRange`] or
    /// [`SnowflakeError::MachineOutOfRange`] when a number does not fit.
    pub fn new(region: u32, machine: u32) -> Result<Self, SnowflakeError> {
        Self::builder(region, machine).build()
    }

    /// A builder for a generator for `region` and `machine`.
    pub fn builder(region: u32, machine: u32) -> SnowflakeGeneratorBuilder {
        SnowflakeGeneratorBuilder {
            region,
            machine,
            layout: SnowflakeLayout::DEFAULT,
            clock: Arc::new(SystemClock),
            clock_wait_max: CLOCK_WAIT_MAX_DEFAULT,
            borrow_ahead_max: BORROW_AHEAD_MAX_DEFAULT,
        }
    }

    /// A new id, larger than every earlier id of this generator.
    ///
    /// Stamped with the clock's millisecond, or the last millisecond used if
    /// the clock reads earlier. When the millisecond's sequence is spent it
    /// waits (spinning, then sleeping) for the clock to reach the next one,
    /// unless that is within `borrow_ahead_max` of the clock.
    ///
    /// # Errors
    /// - [`SnowflakeError::ClockBehind`] when the next millisecond is more
    ///   than `clock_wait_max` ahead of the clock, or the clock did not get
    ///   there within `clock_wait_max`.
    /// - [`SnowflakeError::ClockBeforeEpoch`] when the clock reads before the
    ///   layout's epoch.
    /// - [`SnowflakeError::TimestampOverflow`] when the layout's timestamp
    ///   field is exhausted.
    pub fn next_id(&self) -> Result<SnowflakeId, SnowflakeError> {
        let sequence_bits = self.layout.sequence_bits();
        let mut wait_started: Option<Instant> = None;
        let mut wall_ms = self.clock.now_ms();
        let mut wall = self.since_epoch(wall_ms)?;
        let mut next = self.next.load(Ordering::Acquire);
        loop {
            let slot = next.max(wall << sequence_bits);
            let slot_ms = slot >> sequence_bits;
            if slot_ms > self.layout.timestamp_max_ms() {
                return Err(self.overflow(slot_ms));
            }
            // The first id of a millisecond the clock has not reached: the
            // previous one's sequence is spent.
            let starts_ms = slot & u64::from(self.layout.sequence_max()) == 0;
            let ahead_ms = slot_ms.saturating_sub(wall);
            if starts_ms && ahead_ms > self.borrow_ahead_max_ms {
                let waited = wait_started.map_or(Duration::ZERO, |started| started.elapsed());
                let need = Duration::from_millis(ahead_ms - self.borrow_ahead_max_ms);
                if need > self.clock_wait_max || waited >= self.clock_wait_max {
                    return Err(self.behind(wall_ms, slot_ms, waited));
                }
                wait_started.get_or_insert_with(Instant::now);
                pause(waited);
                wall_ms = self.clock.now_ms();
                wall = self.since_epoch(wall_ms)?;
                next = self.next.load(Ordering::Acquire);
                continue;
            }
            match self.next.compare_exchange_weak(
                next,
                slot + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if ahead_ms > 0 && starts_ms {
                        tracing::trace!(slot_ms, wall, "borrowed a millisecond ahead of the clock");
                    }
                    return Ok(self.layout.compose(slot, self.node));
                }
                Err(actual) => next = actual,
            }
        }
    }

    /// Splits an id into its fields with this generator's layout.
    pub fn parse(&self, id: SnowflakeId) -> SnowflakeParts {
        self.layout.parse(id)
    }

    /// The layout of the ids this generator issues.
    pub fn layout(&self) -> &SnowflakeLayout {
        &self.layout
    }

    /// The region number in every id.
    pub fn region(&self) -> u32 {
        self.region
    }

    /// The machine number in every id.
    pub fn machine(&self) -> u32 {
        self.machine
    }

    /// The bound on waiting for the clock.
    pub fn clock_wait_max(&self) -> Duration {
        self.clock_wait_max
    }

    /// The bound on stamping ids ahead of the clock.
    pub fn borrow_ahead_max(&self) -> Duration {
        Duration::from_millis(self.borrow_ahead_max_ms)
    }

    fn since_epoch(&self, wall_ms: u64) -> Result<u64, SnowflakeError> {
        let epoch_ms = self.layout.epoch_ms();
        let Some(since) = wall_ms.checked_sub(epoch_ms) else {
            tracing::warn!(wall_ms, epoch_ms, "snowflake clock reads before the epoch");
            return Err(SnowflakeError::ClockBeforeEpoch { wall_ms, epoch_ms });
        };
        if since > self.layout.timestamp_max_ms() {
            return Err(self.overflow(since));
        }
        Ok(since)
    }

    fn overflow(&self, since_epoch_ms: u64) -> SnowflakeError {
        let unix_ms = self.layout.epoch_ms().saturating_add(since_epoch_ms);
        let last_unix_ms = self.layout.last_unix_ms();
        tracing::error!(unix_ms, last_unix_ms, "snowflake layout out of timestamps");
        SnowflakeError::TimestampOverflow {
            unix_ms,
            last_unix_ms,
        }
    }

    fn behind(&self, wall_ms: u64, slot_ms: u64, waited: Duration) -> SnowflakeError {
        let next_unix_ms = self.layout.epoch_ms() + slot_ms;
        tracing::warn!(
            region = self.region,
            machine = self.machine,
            wall_ms,
            next_unix_ms,
            ?waited,
            "snowflake clock behind the next id's millisecond"
        );
        SnowflakeError::ClockBehind {
            wall_ms,
            next_unix_ms,
            waited,
        }
    }
}

/// One pause between clock readings: yield while the wait is short, sleep
/// once it is not.
fn pause(waited: Duration) {
    if waited < CLOCK_SPIN_MAX {
        std::hint::spin_loop();
        std::thread::yield_now();
    } else {
        std::thread::sleep(CLOCK_POLL_INTERVAL);
    }
}

impl fmt::Debug for SnowflakeGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnowflakeGenerator")
            .field("layout", &self.layout)
            .field("region", &self.region)
            .field("machine", &self.machine)
            .field("next", &self.next.load(Ordering::Relaxed))
            .field("clock_wait_max", &self.clock_wait_max)
            .field("borrow_ahead_max_ms", &self.borrow_ahead_max_ms)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SnowflakeGenerator`]; see [`SnowflakeGenerator::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct SnowflakeGeneratorBuilder {
    region: u32,
    machine: u32,
    layout: SnowflakeLayout,
    clock: Arc<dyn PhysicalClock>,
    clock_wait_max: Duration,
    borrow_ahead_max: Duration,
}

impl SnowflakeGeneratorBuilder {
    /// The layout (default [`SnowflakeLayout::DEFAULT`]).
    pub fn layout(mut self, layout: SnowflakeLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The physical clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl PhysicalClock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long [`next_id`](SnowflakeGenerator::next_id) may wait for the
    /// clock to reach the millisecond it needs before it gives up (default
    /// 1 s). A wait known to be longer is refused at once.
    pub fn clock_wait_max(mut self, clock_wait_max: Duration) -> Self {
        self.clock_wait_max = clock_wait_max;
        self
    }

    /// How far ahead of the clock an id may be stamped instead of waiting
    /// when a millisecond's sequence runs out (default 0: always wait).
    /// Above 0, a generator may issue more than its layout's ids per ms in
    /// bursts, at the cost of timestamps up to this far in the future.
    pub fn borrow_ahead_max(mut self, borrow_ahead_max: Duration) -> Self {
        self.borrow_ahead_max = borrow_ahead_max;
        self
    }

    /// The generator.
    ///
    /// # Errors
    /// [`SnowflakeError::RegionOutOfRange`] or
    /// [`SnowflakeError::MachineOutOfRange`] when a number does not fit the
    /// layout.
    pub fn build(self) -> Result<SnowflakeGenerator, SnowflakeError> {
        let layout = self.layout;
        if self.region > layout.region_max() {
            return Err(SnowflakeError::RegionOutOfRange {
                region: self.region,
                region_max: layout.region_max(),
            });
        }
        if self.machine > layout.machine_max() {
            return Err(SnowflakeError::MachineOutOfRange {
                machine: self.machine,
                machine_max: layout.machine_max(),
            });
        }
        Ok(SnowflakeGenerator {
            layout,
            region: self.region,
            machine: self.machine,
            node: layout.node(self.region, self.machine),
            clock: self.clock,
            next: AtomicU64::new(0),
            clock_wait_max: self.clock_wait_max,
            borrow_ahead_max_ms: u64::try_from(self.borrow_ahead_max.as_millis())
                .unwrap_or(u64::MAX),
        })
    }
}

impl fmt::Debug for SnowflakeGeneratorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnowflakeGeneratorBuilder")
            .field("region", &self.region)
            .field("machine", &self.machine)
            .field("layout", &self.layout)
            .field("clock_wait_max", &self.clock_wait_max)
            .field("borrow_ahead_max", &self.borrow_ahead_max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const START_MS: u64 = crate::id::EPOCH_MS_DEFAULT + 1_000_000;

    fn generator(wall: &ManualClock) -> SnowflakeGenerator {
        SnowflakeGenerator::builder(3, 7)
            .clock(wall.clone())
            .clock_wait_max(Duration::from_millis(5))
            .build()
            .unwrap()
    }

    #[test]
    fn same_millisecond_takes_the_next_sequence() {
        let wall = ManualClock::new(START_MS);
        let ids = generator(&wall);
        for sequence in 0..10 {
            let parts = ids.parse(ids.next_id().unwrap());
            assert_eq!(parts.sequence, sequence);
            assert_eq!(parts.unix_ms, START_MS);
            assert_eq!((parts.region, parts.machine), (3, 7));
        }
        wall.advance(1);
        let parts = ids.parse(ids.next_id().unwrap());
        assert_eq!((parts.unix_ms, parts.sequence), (START_MS + 1, 0));
    }

    #[test]
    fn spent_sequence_waits_for_the_next_millisecond() {
        let wall = ManualClock::new(START_MS);
        let ids = SnowflakeGenerator::builder(0, 0)
            .clock(wall.clone())
            .clock_wait_max(Duration::from_secs(5))
            .build()
            .unwrap();
        for _ in 0..ids.layout().ids_per_ms() {
            ids.next_id().unwrap();
        }
        let ticker = wall.clone();
        let tick = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ticker.advance(1);
        });
        let parts = ids.parse(ids.next_id().unwrap());
        tick.join().unwrap();
        assert_eq!((parts.unix_ms, parts.sequence), (START_MS + 1, 0));
    }

    #[test]
    fn frozen_clock_gives_up_after_clock_wait_max() {
        let wall = ManualClock::new(START_MS);
        let ids = generator(&wall);
        for _ in 0..ids.layout().ids_per_ms() {
            ids.next_id().unwrap();
        }
        let Err(SnowflakeError::ClockBehind {
            wall_ms,
            next_unix_ms,
            waited,
        }) = ids.next_id()
        else {
            panic!("expected ClockBehind");
        };
        assert_eq!((wall_ms, next_unix_ms), (START_MS, START_MS + 1));
        assert!(waited >= Duration::from_millis(5));
    }

    #[test]
    fn backwards_clock_continues_from_the_last_millisecond() {
        let wall = ManualClock::new(START_MS);
        let ids = generator(&wall);
        let before = ids.next_id().unwrap();
        wall.set(START_MS - 10_000);
        let after = ids.next_id().unwrap();
        assert!(after > before);
        let parts = ids.parse(after);
        assert_eq!((parts.unix_ms, parts.sequence), (START_MS, 1));
    }

    #[test]
    fn far_behind_clock_fails_fast() {
        let wall = ManualClock::new(START_MS);
        let ids = SnowflakeGenerator::builder(0, 0)
            .clock(wall.clone())
            .build()
            .unwrap();
        for _ in 0..ids.layout().ids_per_ms() {
            ids.next_id().unwrap();
        }
        wall.set(START_MS - 10_000);
        let started = Instant::now();
        assert!(matches!(
            ids.next_id(),
            Err(SnowflakeError::ClockBehind {
                waited: Duration::ZERO,
                ..
            })
        ));
        assert!(started.elapsed() < CLOCK_WAIT_MAX_DEFAULT);
    }

    #[test]
    fn borrowing_runs_ahead_of_a_frozen_clock_up_to_the_bound() {
        let wall = ManualClock::new(START_MS);
        let ids = SnowflakeGenerator::builder(0, 0)
            .clock(wall.clone())
            .clock_wait_max(Duration::from_millis(1))
            .borrow_ahead_max(Duration::from_millis(2))
            .build()
            .unwrap();
        let per_ms = ids.layout().ids_per_ms();
        let mut last = None;
        for _ in 0..3 * per_ms {
            last = Some(ids.next_id().unwrap());
        }
        assert_eq!(ids.parse(last.unwrap()).unix_ms, START_MS + 2);
        assert!(ids.next_id().is_err());
    }

    #[test]
    fn clock_before_epoch_and_past_the_layout_are_errors() {
        let wall = ManualClock::new(crate::id::EPOCH_MS_DEFAULT - 1);
        let ids = generator(&wall);
        assert!(matches!(
            ids.next_id(),
            Err(SnowflakeError::ClockBeforeEpoch { .. })
        ));
        wall.set(SnowflakeLayout::DEFAULT.last_unix_ms());
        assert!(ids.next_id().is_ok());
        wall.advance(1);
        assert!(matches!(
            ids.next_id(),
            Err(SnowflakeError::TimestampOverflow { .. })
        ));
    }

    #[test]
    fn sequence_carry_past_the_last_timestamp_is_an_overflow() {
        let wall = ManualClock::new(SnowflakeLayout::DEFAULT.last_unix_ms());
        let ids = SnowflakeGenerator::builder(0, 0)
            .clock(wall)
            .borrow_ahead_max(Duration::from_secs(1))
            .build()
            .unwrap();
        for _ in 0..ids.layout().ids_per_ms() {
            ids.next_id().unwrap();
        }
        assert!(matches!(
            ids.next_id(),
            Err(SnowflakeError::TimestampOverflow { .. })
        ));
    }

    #[test]
    fn ids_serialise_as_i64_and_refuse_negatives() {
        let wall = ManualClock::new(START_MS);
        let id = generator(&wall).next_id().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, id.as_i64().to_string());
        assert_eq!(serde_json::from_str::<SnowflakeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SnowflakeId>("-5").is_err());
        assert_eq!(
            SnowflakeId::try_from(-5),
            Err(SnowflakeError::NegativeId { id: -5 })
        );
    }
}
