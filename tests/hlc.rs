//! The hybrid logical clock stays monotonic whatever the wall clock does,
//! and refuses remote timestamps too far ahead.

use std::time::Duration;

use archipelago::clock::{Hlc, HlcError, ManualClock, ReplicaId, Timestamp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// The wall clock moves by this many ms, backwards when negative.
    Jump(i64),
    Now,
    /// A remote timestamp this many ms ahead (or behind) of our wall clock.
    Receive(i64, u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (-5_000..5_000i64).prop_map(Step::Jump),
        Just(Step::Now),
        (-2_000..2_000i64, any::<u16>()).prop_map(|(ms, l)| Step::Receive(ms, l)),
    ]
}

fn shifted(ms: u64, by: i64) -> u64 {
    ms.saturating_add_signed(by)
}

proptest! {
    /// Every reading, local or after a receive, is larger than the last,
    /// and a receive moves past the remote timestamp.
    #[test]
    fn hlc_is_monotonic_under_backward_jumps(steps in prop::collection::vec(step(), 1..200)) {
        let wall = ManualClock::new(1_700_000_000_000);
        let hlc = Hlc::with_clock(ReplicaId::new(1), wall.clone());
        let mut last = Timestamp::default();
        for step in steps {
            match step {
                Step::Jump(ms) => wall.set(shifted(wall_ms(&wall), ms)),
                Step::Now => {
                    let t = hlc.now();
                    prop_assert!(t > last, "{:?} after {:?}", t, last);
                    last = t;
                }
                Step::Receive(ahead, logical) => {
                    let remote = Timestamp::new(shifted(wall_ms(&wall), ahead), logical);
                    match hlc.update(remote) {
                        Ok(t) => {
                            prop_assert!(ahead <= 500, "accepted a remote {} ms ahead", ahead);
                            prop_assert!(t > last && t > remote);
                            last = t;
                        }
                        Err(HlcError::TooFarAhead { .. }) => {
                            prop_assert!(ahead > 500);
                            prop_assert_eq!(hlc.last(), last);
                        }
                    }
                }
            }
        }
    }

    /// A remote timestamp more than `max_offset` ahead is refused with a
    /// typed error and leaves the clock where it was; one within the bound
    /// is accepted.
    #[test]
    fn hlc_rejects_remote_timestamps_past_max_offset(
        max_offset_ms in 1..10_000u64,
        excess in prop_oneof![1..10u64, 1..1_000_000u64],
        within in 0..10_000u64,
        logical in any::<u16>(),
    ) {
        let wall = ManualClock::new(1_700_000_000_000);
        let hlc = Hlc::with_clock(ReplicaId::new(1), wall.clone())
            .with_max_offset(Duration::from_millis(max_offset_ms));
        let before = hlc.now();
        let now_ms = wall_ms(&wall);

        let too_far = Timestamp::new(now_ms + max_offset_ms + excess, logical);
        let err = hlc.update(too_far).unwrap_err();
        prop_assert!(
            matches!(err, HlcError::TooFarAhead { remote, .. } if remote == too_far),
            "unexpected error {:?}", err
        );
        prop_assert_eq!(hlc.last(), before);

        let near = Timestamp::new(now_ms + within.min(max_offset_ms), logical);
        let t = hlc.update(near).unwrap();
        prop_assert!(t > near && t > before);
    }
}

fn wall_ms(wall: &ManualClock) -> u64 {
    use archipelago::clock::PhysicalClock;
    wall.now_ms()
}

#[test]
fn default_max_offset_is_500_ms() {
    let wall = ManualClock::new(10_000);
    let hlc = Hlc::with_clock(ReplicaId::new(1), wall);
    assert_eq!(hlc.max_offset(), Duration::from_millis(500));
    assert!(hlc.update(Timestamp::new(10_500, 0)).is_ok());
    assert!(hlc.update(Timestamp::new(10_501, 0)).is_err());
}
