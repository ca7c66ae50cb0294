//! Ids never collide: Snowflake ids across regions and threads and under
//! backwards clock jumps, UUIDv7s and ULIDs across threads. `parse` gives
//! back what went in; bad layouts and out-of-range numbers are typed errors.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use archipelago::clock::ManualClock;
use archipelago::id::{
    self, LayoutError, SnowflakeError, SnowflakeGenerator, SnowflakeId, SnowflakeLayout, Ulid,
    UlidGenerator, Uuid, UuidV7Generator,
};
use proptest::prelude::*;

const REGIONS: u32 = 4;
const THREADS_PER_REGION: u32 = 2;
const IDS_PER_THREAD: usize = 100_000;

/// 4 regions × 2 threads, each thread its own generator (region, machine) on
/// the system clock: 800k ids, no duplicates, each thread's strictly rising
/// and carrying its region and machine.
#[test]
fn concurrent_regions_never_collide() {
    let handles: Vec<_> = (0..REGIONS)
        .flat_map(|region| (0..THREADS_PER_REGION).map(move |machine| (region, machine)))
        .map(|(region, machine)| {
            std::thread::spawn(move || {
                let ids = SnowflakeGenerator::new(region, machine).unwrap();
                let issued: Vec<SnowflakeId> = (0..IDS_PER_THREAD)
                    .map(|_| ids.next_id().unwrap())
                    .collect();
                (region, machine, issued)
            })
        })
        .collect();

    let mut all = HashSet::with_capacity(IDS_PER_THREAD * (REGIONS * THREADS_PER_REGION) as usize);
    for handle in handles {
        let (region, machine, issued) = handle.join().unwrap();
        assert!(
            issued.windows(2).all(|w| w[0] < w[1]),
            "({region}, {machine}) ids not strictly increasing"
        );
        for (i, id) in issued.iter().enumerate() {
            let parts = SnowflakeLayout::DEFAULT.parse(*id);
            assert_eq!((parts.region, parts.machine), (region, machine));
            assert!(
                all.insert(*id),
                "duplicate id {id} at {i} of ({region}, {machine})"
            );
        }
    }
    assert_eq!(
        all.len(),
        IDS_PER_THREAD * (REGIONS * THREADS_PER_REGION) as usize
    );
}

/// Threads sharing one generator still get distinct ids, each thread's in
/// strictly increasing order.
#[test]
fn shared_generator_never_repeats() {
    const THREADS: usize = 4;
    const IDS: usize = 50_000;
    let ids = Arc::new(SnowflakeGenerator::new(1, 1).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let ids = Arc::clone(&ids);
            std::thread::spawn(move || (0..IDS).map(|_| ids.next_id().unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut all = HashSet::with_capacity(THREADS * IDS);
    for handle in handles {
        let issued = handle.join().unwrap();
        assert!(issued.windows(2).all(|w| w[0] < w[1]));
        all.extend(issued);
    }
    assert_eq!(all.len(), THREADS * IDS);
}

/// The 128-bit kinds, from several threads at once: no duplicates, and
/// each thread's strictly increasing (they are monotonic process-wide).
#[test]
fn uuid_v7_and_ulid_never_repeat_across_threads() {
    const THREADS: usize = 4;
    const IDS: usize = 20_000;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(|| {
                let uuids: Vec<Uuid> = (0..IDS).map(|_| id::uuid_v7()).collect();
                let ulids: Vec<Ulid> = (0..IDS).map(|_| id::ulid()).collect();
                (uuids, ulids)
            })
        })
        .collect();
    let (mut uuids, mut ulids) = (HashSet::new(), HashSet::new());
    for handle in handles {
        let (u, l) = handle.join().unwrap();
        assert!(u.windows(2).all(|w| w[0] < w[1]));
        assert!(l.windows(2).all(|w| w[0] < w[1]));
        assert!(u.iter().all(|u| u.get_version_num() == 7));
        uuids.extend(u);
        ulids.extend(l);
    }
    assert_eq!((uuids.len(), ulids.len()), (THREADS * IDS, THREADS * IDS));
}

/// On an injected clock that jumps back, the 128-bit generators still rise.
#[test]
fn uuid_v7_and_ulid_generators_rise_when_the_clock_jumps_back() {
    let wall = ManualClock::new(1_700_000_000_000);
    let (uuids, ulids) = (
        UuidV7Generator::with_clock(wall.clone()),
        UlidGenerator::with_clock(wall.clone()),
    );
    let (mut last_uuid, mut last_ulid) = (uuids.next_id(), ulids.next_id());
    for jump in [0, -5_000, 1, -1, 10_000, -60_000, 0] {
        wall.set(wall_now(&wall).saturating_add_signed(jump));
        for _ in 0..100 {
            let (u, l) = (uuids.next_id(), ulids.next_id());
            assert!(u > last_uuid && l > last_ulid);
            (last_uuid, last_ulid) = (u, l);
        }
    }
}

/// A valid layout: the region, machine and sequence widths, with the
/// timestamp taking the rest of the 63 bits; and an epoch.
fn layout() -> impl Strategy<Value = SnowflakeLayout> {
    (0..=12u32, 0..=12u32, 1..=22u32, 0..=2_000_000_000_000u64).prop_map(
        |(region_bits, machine_bits, sequence_bits, epoch_ms)| {
            SnowflakeLayout::builder()
                .timestamp_bits(63 - region_bits - machine_bits - sequence_bits)
                .region_bits(region_bits)
                .machine_bits(machine_bits)
                .sequence_bits(sequence_bits)
                .epoch_ms(epoch_ms)
                .build()
                .unwrap()
        },
    )
}

/// A layout with a (region, machine) that fits it.
fn layout_and_node() -> impl Strategy<Value = (SnowflakeLayout, u32, u32)> {
    layout().prop_flat_map(|layout| {
        (
            Just(layout),
            0..=layout.region_max(),
            0..=layout.machine_max(),
        )
    })
}

#[derive(Clone, Debug)]
enum Step {
    /// The clock moves by this many ms, backwards when negative.
    Jump(i64),
    /// Take this many ids.
    Take(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (-3_000..3_000i64).prop_map(Step::Jump),
        (1..200u16).prop_map(Step::Take),
    ]
}

/// Valid layouts with few sequence bits, so ids run out within a millisecond.
fn small_sequence_layout() -> impl Strategy<Value = SnowflakeLayout> {
    (1..=6u32).prop_map(|sequence_bits| {
        SnowflakeLayout::builder()
            .timestamp_bits(53 - sequence_bits)
            .sequence_bits(sequence_bits)
            .build()
            .unwrap()
    })
}

proptest! {
    /// `parse` gives back the region, machine and clock reading an id was
    /// made with, and its sequence counts ids within the millisecond.
    #[test]
    fn parse_inverts_generation(
        (layout, region, machine) in layout_and_node(),
        start in 0..1_000_000_000u64,
        advances in prop::collection::vec(0..3u64, 1..50),
    ) {
        let start = start.min(layout.timestamp_max_ms() - 3 * advances.len() as u64);
        let wall = ManualClock::new(layout.epoch_ms() + start);
        let ids = SnowflakeGenerator::builder(region, machine)
            .layout(layout)
            .clock(wall.clone())
            .build()
            .unwrap();
        let mut sequence = 0;
        for advance in advances {
            // Never spend a millisecond's sequence: that would wait.
            let advance = if sequence > layout.sequence_max() { advance.max(1) } else { advance };
            if advance > 0 {
                wall.advance(advance);
                sequence = 0;
            }
            let id = ids.next_id().unwrap();
            prop_assert!(id.as_i64() >= 0);
            let parts = layout.parse(id);
            let now = wall_now(&wall);
            prop_assert_eq!(parts.unix_ms, now);
            prop_assert_eq!(parts.since_epoch_ms, now - layout.epoch_ms());
            prop_assert_eq!((parts.region, parts.machine), (region, machine));
            prop_assert_eq!(parts.sequence, sequence);
            sequence += 1;
        }
    }

    /// Whatever the clock does, ids strictly increase (so never repeat), and
    /// are never stamped further ahead than `borrow_ahead_max` past the
    /// latest clock reading. Where the clock is behind the next free
    /// millisecond, the error is `ClockBehind`.
    #[test]
    fn backwards_clock_jumps_never_duplicate_or_decrease(
        layout in small_sequence_layout(),
        borrow_ms in prop_oneof![Just(0u64), 0..20u64],
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let start = layout.epoch_ms() + 1_000_000;
        let wall = ManualClock::new(start);
        let ids = SnowflakeGenerator::builder(1, 1)
            .layout(layout)
            .clock(wall.clone())
            .clock_wait_max(Duration::ZERO)
            .borrow_ahead_max(Duration::from_millis(borrow_ms))
            .build()
            .unwrap();
        let mut last: Option<SnowflakeId> = None;
        let mut highest_wall = start;
        for step in steps {
            match step {
                Step::Jump(ms) => {
                    wall.set(wall_now(&wall).saturating_add_signed(ms).max(layout.epoch_ms()));
                    highest_wall = highest_wall.max(wall_now(&wall));
                }
                Step::Take(n) => {
                    for _ in 0..n {
                        match ids.next_id() {
                            Ok(id) => {
                                prop_assert!(last.is_none_or(|l| id > l), "{:?} after {:?}", id, last);
                                prop_assert!(layout.parse(id).unix_ms <= highest_wall + borrow_ms);
                                last = Some(id);
                            }
                            Err(SnowflakeError::ClockBehind { wall_ms, next_unix_ms, .. }) => {
                                prop_assert!(next_unix_ms > wall_ms + borrow_ms);
                            }
                            Err(e) => prop_assert!(false, "unexpected error {}", e),
                        }
                    }
                }
            }
        }
    }

    /// A layout is accepted exactly when its fields fit and sum to 63 with
    /// a non-empty timestamp and sequence.
    #[test]
    fn invalid_layouts_are_errors(
        timestamp_bits in 0..=64u32,
        region_bits in 0..=40u32,
        machine_bits in 0..=40u32,
        sequence_bits in 0..=40u32,
    ) {
        let built = SnowflakeLayout::builder()
            .timestamp_bits(timestamp_bits)
            .region_bits(region_bits)
            .machine_bits(machine_bits)
            .sequence_bits(sequence_bits)
            .build();
        let valid = timestamp_bits + region_bits + machine_bits + sequence_bits == 63
            && (1..=62).contains(&timestamp_bits)
            && (1..=32).contains(&sequence_bits)
            && region_bits <= 32
            && machine_bits <= 32;
        prop_assert_eq!(built.is_ok(), valid, "{:?}", built);
        if let Err(e) = built {
            let sum_only = (1..=62).contains(&timestamp_bits)
                && (1..=32).contains(&sequence_bits)
                && region_bits <= 32
                && machine_bits <= 32;
            prop_assert_eq!(sum_only, matches!(e, LayoutError::BitsSum { .. }), "{}", e);
        }
    }

    /// Region and machine numbers past the layout's fields are refused.
    #[test]
    fn out_of_range_region_or_machine_is_an_error(
        layout in layout(),
        region_over in 1..1_000u32,
        machine_over in 1..1_000u32,
    ) {
        let region = layout.region_max().saturating_add(region_over);
        let machine = layout.machine_max().saturating_add(machine_over);
        let refused = SnowflakeGenerator::builder(region, 0).layout(layout).build();
        prop_assert_eq!(
            refused.err(),
            Some(SnowflakeError::RegionOutOfRange { region, region_max: layout.region_max() })
        );
        let refused = SnowflakeGenerator::builder(0, machine).layout(layout).build();
        prop_assert_eq!(
            refused.err(),
            Some(SnowflakeError::MachineOutOfRange { machine, machine_max: layout.machine_max() })
        );
        let fits = SnowflakeGenerator::builder(layout.region_max(), layout.machine_max())
            .layout(layout)
            .build();
        prop_assert!(fits.is_ok());
    }
}

/// Past the layout's last millisecond, ids stop with a typed error.
#[test]
fn timestamp_overflow_is_an_error() {
    let layout = SnowflakeLayout::builder()
        .timestamp_bits(20) // about 17 minutes
        .region_bits(15)
        .machine_bits(16)
        .build()
        .unwrap();
    let wall = ManualClock::new(layout.last_unix_ms());
    let ids = SnowflakeGenerator::builder(0, 0)
        .layout(layout)
        .clock(wall.clone())
        .build()
        .unwrap();
    assert_eq!(
        ids.parse(ids.next_id().unwrap()).since_epoch_ms,
        (1 << 20) - 1
    );
    wall.advance(1);
    assert_eq!(
        ids.next_id(),
        Err(SnowflakeError::TimestampOverflow {
            unix_ms: layout.last_unix_ms() + 1,
            last_unix_ms: layout.last_unix_ms(),
        })
    );
}

fn wall_now(wall: &ManualClock) -> u64 {
    use archipelago::clock::PhysicalClock;
    wall.now_ms()
}
