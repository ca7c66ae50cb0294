//! Identifiers that never collide across regions, issued without asking
//! any other region.
//!
//! Three kinds, for three jobs:
//!
//! | kind | size, text | sorts by | coordination | use it for |
//! | --- | --- | --- | --- | --- |
//! | Snowflake ([`SnowflakeGenerator`]) | 64 bits, a positive `i64` | ms, then region, machine, sequence | a (region, machine) number per generator, assigned once | compact primary keys (`BIGINT`) that index well, and ids whose region you need back: [`parse`](SnowflakeLayout::parse) tells which region issued it, and when |
//! | UUIDv7 ([`uuid_v7`]) | 128 bits, 36 hex chars | ms | none | the standard: any database or language reads it; keys made anywhere, by anyone, sorted by creation time |
//! | ULID ([`ulid`](fn@ulid)) | 128 bits, 26 Crockford base32 chars | ms | none | the same guarantees as UUIDv7 with shorter, case-insensitive text for URLs and logs |
//!
//! A Snowflake id is unique because no two generators share a (region,
//! machine) pair and each generator never repeats a (millisecond, sequence)
//! slot; the 128-bit kinds are unique because 74 (UUIDv7) or 80 (ULID)
//! random bits make a collision too unlikely to plan for.
//!
//! ```
//! use archipelago::clock::ManualClock;
//! use archipelago::id::{self, SnowflakeGenerator, SnowflakeLayout};
//!
//! // Region 2 ("eu-central", say), machine 5, on the default 41/5/5/12 layout.
//! // The clock is injected: tests set it, production uses `SystemClock`.
//! let wall = ManualClock::new(1_750_000_000_000);
//! let ids = SnowflakeGenerator::builder(2, 5).clock(wall.clone()).build()?;
//! let a = ids.next_id()?;
//! let b = ids.next_id()?;
//! assert!(b > a && a.as_i64() > 0);
//!
//! let parts = SnowflakeLayout::DEFAULT.parse(b);
//! assert_eq!((parts.region, parts.machine, parts.sequence), (2, 5, 1));
//! assert_eq!(parts.unix_ms, 1_750_000_000_000);
//!
//! // The 128-bit kinds need no configuration.
//! let (u1, u2) = (id::uuid_v7(), id::uuid_v7());
//! assert!(u2 > u1 && u1.get_version_num() == 7);
//! let (l1, l2) = (id::ulid(), id::ulid());
//! assert!(l2 > l1 && l1.to_string().len() == 26);
//! # Ok::<(), archipelago::id::SnowflakeError>(())
//! ```
//!
//! ## Snowflake guarantees
//!
//! - **Layout.** 63 bits below a 0 sign bit: milliseconds since a custom
//!   epoch, region, machine, sequence; by default 41/5/5/12 from 2024-01-01
//!   (32 regions × 32 machines, 4,096 ids per ms each, until 2093). Widths
//!   that do not sum to 63, an empty timestamp or sequence, and region or
//!   machine numbers that do not fit are refused with a typed error
//!   ([`LayoutError`], [`SnowflakeError`]).
//! - **Order.** Each generator's ids strictly increase, from any number of
//!   threads: [`next_id`](SnowflakeGenerator::next_id) takes `&self` and is
//!   one compare-and-swap on an `AtomicU64` holding the next free
//!   (millisecond, sequence) slot. The slot only grows, so no id is issued
//!   twice.
//! - **Same millisecond** → the next sequence. **Sequence spent** → wait for
//!   the clock's next millisecond: yield the thread, then sleep in 100 µs
//!   steps ([`CLOCK_SPIN_MAX`], [`CLOCK_POLL_INTERVAL`]), at most
//!   `clock_wait_max` (default 1 s, [`CLOCK_WAIT_MAX_DEFAULT`]); a clock that
//!   does not get there in time, or is further behind than that, gives
//!   [`SnowflakeError::ClockBehind`] instead of blocking: a frozen test clock
//!   cannot hang a caller.
//! - **Clock moved backwards** → ids keep the last millisecond used: time is
//!   `max(clock, last)`. The rest of that millisecond's sequence is issued
//!   as usual; once spent, the generator waits for the clock to catch up as
//!   above. It never reuses a slot and never stamps an id further ahead of
//!   the clock than it already was, unless you allow it to *borrow*:
//!   with `borrow_ahead_max` above 0 ([`BORROW_AHEAD_MAX_DEFAULT`] is 0) a
//!   spent millisecond moves on to the next without waiting while that is at
//!   most `borrow_ahead_max` ahead of the clock, trading timestamps slightly
//!   in the future for no waiting in bursts.
//! - **Running out of time.** A clock past the layout's last millisecond, or
//!   before its epoch, is a typed error, never a wrapped timestamp.
//!
//! ## UUIDv7 and ULID
//!
//! [`uuid_v7`] and [`ulid`](fn@ulid) read the system clock and are monotonic within
//! the process: the `uuid` crate's shared v7 context keeps a per-millisecond
//! counter, and [`ulid`](fn@ulid) goes through the `ulid` crate's monotonic
//! generator, which increments the random bits within a millisecond.
//! [`UuidV7Generator`] and [`UlidGenerator`] are the same on an injected
//! clock, and monotonic per generator. Their timestamps come back with
//! [`Uuid::get_timestamp`] and [`Ulid::timestamp_ms`].

mod layout;
mod snowflake;
mod standard;

pub use ::ulid::Ulid;
pub use ::uuid::Uuid;
pub use layout::{
    EPOCH_MS_DEFAULT, FIELD_BITS_MAX, LayoutError, MACHINE_BITS_DEFAULT, REGION_BITS_DEFAULT,
    SEQUENCE_BITS_DEFAULT, SNOWFLAKE_BITS, SnowflakeId, SnowflakeLayout, SnowflakeLayoutBuilder,
    SnowflakeParts, TIMESTAMP_BITS_DEFAULT, TIMESTAMP_BITS_MAX,
};
pub use snowflake::{
    BORROW_AHEAD_MAX_DEFAULT, CLOCK_POLL_INTERVAL, CLOCK_SPIN_MAX, CLOCK_WAIT_MAX_DEFAULT,
    SnowflakeError, SnowflakeGenerator, SnowflakeGeneratorBuilder,
};
pub use standard::{UlidGenerator, UuidV7Generator, ulid, uuid_v7};
