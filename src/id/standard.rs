//! The standard 128-bit formats, through the `uuid` and `ulid` crates.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::ulid::{Generator, MonotonicError, Ulid};
use ::uuid::{ContextV7, Uuid};

use crate::clock::{PhysicalClock, SystemClock};

/// A new UUIDv7 from the system clock.
///
/// Monotonic within the process: each call returns a larger UUID than every
/// earlier call from any thread (the `uuid` crate's shared v7 context keeps
/// a 42-bit counter, reseeded at random each millisecond, and moves the
/// timestamp forward when the counter runs out or the clock moves back).
pub fn uuid_v7() -> Uuid {
    Uuid::now_v7()
}

/// The process-wide ULID state behind [`ulid`](fn@ulid).
static ULIDS: Mutex<UlidState> = Mutex::new(UlidState::new());

/// A new ULID from the system clock.
///
/// Monotonic within the process: each call returns a larger ULID than every
/// earlier call from any thread. Within one millisecond the `ulid` crate's
/// [`Generator`] increments the 80 random bits by one instead of drawing new
/// ones; in the (2^-80-unlikely) case they run out, the next ULID moves to
/// the next millisecond.
pub fn ulid() -> Ulid {
    ULIDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .next(SystemTime::now())
}

/// Issues UUIDv7s from an injected clock, each larger than the last.
///
/// [`uuid_v7`] is the same on the system clock; this type exists so tests
/// control time. Share it by reference: it holds the `uuid` crate's
/// [`ContextV7`] behind a mutex.
///
/// ```
/// use archipelago::clock::ManualClock;
/// use archipelago::id::UuidV7Generator;
///
/// let wall = ManualClock::new(1_700_000_000_000);
/// let uuids = UuidV7Generator::with_clock(wall.clone());
/// let a = uuids.next_id();
/// wall.set(1_600_000_000_000); // backwards
/// let b = uuids.next_id();
/// assert!(b > a);
/// assert_eq!(a.get_version_num(), 7);
/// ```
pub struct UuidV7Generator {
    clock: Arc<dyn PhysicalClock>,
    context: Mutex<ContextV7>,
}

impl UuidV7Generator {
    /// A generator on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A generator on an injected clock.
    pub fn with_clock(clock: impl PhysicalClock + 'static) -> Self {
        UuidV7Generator {
            clock: Arc::new(clock),
            context: Mutex::new(ContextV7::new()),
        }
    }

    /// A new UUIDv7, larger than every earlier one of this generator.
    pub fn next_id(&self) -> Uuid {
        let ms = self.clock.now_ms();
        let nanos = u32::try_from((ms % 1_000) * 1_000_000).unwrap_or(0);
        Uuid::new_v7(uuid::Timestamp::from_unix(&self.context, ms / 1_000, nanos))
    }
}

impl Default for UuidV7Generator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UuidV7Generator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UuidV7Generator").finish_non_exhaustive()
    }
}

/// Issues ULIDs from an injected clock, each larger than the last.
///
/// [`ulid`](fn@ulid) is the same on the system clock; this type exists so tests
/// control time. Share it by reference: it holds the `ulid` crate's
/// [`Generator`] behind a mutex.
///
/// ```
/// use archipelago::clock::ManualClock;
/// use archipelago::id::UlidGenerator;
///
/// let wall = ManualClock::new(1_700_000_000_000);
/// let ulids = UlidGenerator::with_clock(wall.clone());
/// let a = ulids.next_id();
/// let b = ulids.next_id(); // same millisecond: a + 1
/// assert!(b > a);
/// assert_eq!(b.timestamp_ms(), 1_700_000_000_000);
/// assert_eq!(b.to_string().len(), 26);
/// ```
pub struct UlidGenerator {
    clock: Arc<dyn PhysicalClock>,
    state: Mutex<UlidState>,
}

impl UlidGenerator {
    /// A generator on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A generator on an injected clock.
    pub fn with_clock(clock: impl PhysicalClock + 'static) -> Self {
        UlidGenerator {
            clock: Arc::new(clock),
            state: Mutex::new(UlidState::new()),
        }
    }

    /// A new ULID, larger than every earlier one of this generator.
    pub fn next_id(&self) -> Ulid {
        let now = UNIX_EPOCH + Duration::from_millis(self.clock.now_ms());
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next(now)
    }
}

impl Default for UlidGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UlidGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UlidGenerator").finish_non_exhaustive()
    }
}

/// The `ulid` crate's monotonic generator and the last ULID it gave.
struct UlidState {
    generator: Generator,
    last: Ulid,
}

impl UlidState {
    const fn new() -> Self {
        UlidState {
            generator: Generator::new(),
            last: Ulid::nil(),
        }
    }

    fn next(&mut self, now: SystemTime) -> Ulid {
        let next = match self.generator.generate_from_datetime(now) {
            Ok(ulid) => ulid,
            Err(MonotonicError::Overflow) => {
                // The random bits of the last millisecond are spent: a
                // later millisecond starts afresh.
                let later = self.last.datetime() + Duration::from_millis(1);
                tracing::debug!(last = %self.last, "ULID random bits spent; moving to the next ms");
                // A later millisecond never increments, so never overflows.
                self.generator
                    .generate_from_datetime(later)
                    .unwrap_or_else(|_| Ulid::from_datetime(later))
            }
        };
        debug_assert!(next > self.last);
        self.last = next;
        next
    }
}
