//! Tables a region has not declared (yet), as during a rolling upgrade that
//! adds one: what a peer writes to them is held up to
//! `undeclared_bytes_max`, and past it dropped, never a reason to refuse a
//! frame; declaring the table then catches it up by anti-entropy at once,
//! not at the periodic round. Default config but for that bound.

use crate::common;

use std::time::Duration;

use archipelago::region::{Region, RegionConfig};
use archipelago::transport::ChannelNetwork;
use common::{add, counter, paused_runtime, region_on};
use tokio::time::Instant;

/// The bound the tests hold undeclared values to: a few dozen counters.
const UNDECLARED_BYTES_MAX: usize = 2 << 10;

fn config() -> RegionConfig {
    RegionConfig {
        undeclared_bytes_max: UNDECLARED_BYTES_MAX,
        ..RegionConfig::default()
    }
}

/// `ap` (the newer build) and `eu` (which has not declared `orders`), both
/// with `likes` declared, connected and past their first exchange.
async fn pair(net: &ChannelNetwork) -> (Region, Region) {
    let ap = region_on(net, "ap", None, config());
    let eu = region_on(net, "eu", None, config());
    for region in [&ap, &eu] {
        region
            .table::<u64, archipelago::crdt::GCounter>("likes")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    (ap, eu)
}

/// True when `eu` reads every `orders` key `1..=keys` as `ap` does.
async fn orders_converged(ap: &Region, eu: &Region, keys: u64) -> bool {
    for key in 1..=keys {
        if counter(eu, "orders", key).await != counter(ap, "orders", key).await {
            return false;
        }
    }
    true
}

#[test]
fn a_table_over_the_bound_drops_values_stalls_nothing_and_catches_up_at_declare() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(13);
        let (ap, eu) = pair(&net).await;
        let keys = 1000;
        for key in 1..=keys {
            add(&ap, "orders", key, key).await;
        }
        add(&ap, "likes", 1, 7).await;
        // Batches, not a repair: within a few batch delays.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let stats = eu.stats();
        assert!(
            stats.undeclared_values_dropped > 0,
            "{keys} counters do not fit in {UNDECLARED_BYTES_MAX} bytes"
        );
        assert_eq!(stats.rejected_frames, 0, "dropped, never refused");
        assert_eq!(
            counter(&eu, "likes", 1).await,
            Some(7),
            "the other table keeps replicating"
        );
        assert_eq!(
            ap.stats().peers[0].unacknowledged,
            0,
            "eu acknowledged every batch"
        );

        let syncs = eu.stats().syncs_completed;
        let declared = Instant::now();
        let bound = config().anti_entropy_interval;
        assert!(
            !orders_converged(&ap, &eu, keys).await,
            "values were dropped"
        );
        while !orders_converged(&ap, &eu, keys).await {
            assert!(
                declared.elapsed() < 2 * bound,
                "eu never caught up on orders"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = declared.elapsed();
        assert!(
            took < bound / 10,
            "caught up {took:?} after the declare: at a periodic round ({bound:?}), not at once"
        );
        let stats = eu.stats();
        assert!(stats.syncs_completed > syncs, "by an anti-entropy exchange");
        assert_eq!(stats.rejected_frames, 0);
        assert_eq!(ap.stats().rejected_frames, 0);
    });
}

#[test]
fn a_table_under_the_bound_is_held_whole_and_needs_no_exchange_at_declare() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(14);
        let (ap, eu) = pair(&net).await;
        let keys = 10;
        for key in 1..=keys {
            add(&ap, "orders", key, key).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(eu.stats().undeclared_values_dropped, 0);

        let syncs = (ap.stats().syncs_completed, eu.stats().syncs_completed);
        assert!(
            orders_converged(&ap, &eu, keys).await,
            "merged at the declare (the read declares the table)"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            (ap.stats().syncs_completed, eu.stats().syncs_completed),
            syncs,
            "no exchange was needed"
        );
        assert_eq!(eu.stats().rejected_frames, 0);
    });
}
