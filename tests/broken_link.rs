//! One broken link does not stall causal delivery: with a–c cut and a–b,
//! b–c working, b's writes that depend on a's reach c at once (an exchange
//! with b, started when b's batch has waited the ack timeout for writes of
//! a region c cannot hear from), not at the periodic anti-entropy 30 s
//! later. Default `RegionConfig`.

use crate::common;

use std::time::Duration;

use archipelago::region::RegionConfig;
use archipelago::transport::ChannelNetwork;

/// Guards against c buffering b's batches behind a's writes until the
/// periodic exchange, though b holds those writes and the b–c link works.
#[test]
fn writes_depending_on_a_cut_off_region_arrive_through_a_working_link() {
    common::paused_runtime().block_on(async {
        let config = RegionConfig::default();
        let interval = config.anti_entropy_interval;
        let net = ChannelNetwork::new(11);
        let a = common::region_on(&net, "a", None, config.clone());
        let b = common::region_on(&net, "b", None, config.clone());
        let c = common::region_on(&net, "c", None, config);
        common::add(&a, "t", 0, 1).await;
        // Connected, greeted, the first exchanges done.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.stats().applied.get(a.replica()), 1);

        net.partition("a", "c");
        let cut = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = c.stats();
        common::add(&a, "t", 1, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(b.stats().applied.get(a.replica()), 2, "b has a's write");
        // b's write depends on a's second write, which c cannot get from a.
        common::add(&b, "t", 2, 1).await;

        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = c.stats();
        assert_eq!(
            common::counter(&c, "t", 2).await,
            Some(1),
            "b's write is held back at c (buffered {})",
            after.buffered_batches
        );
        assert_eq!(
            common::counter(&c, "t", 1).await,
            Some(1),
            "with a's write it depends on"
        );
        assert_eq!(after.buffered_batches, 0);
        assert!(cut.elapsed() < interval, "before the periodic exchange");
        assert!(
            after.syncs_completed - before.syncs_completed <= 2,
            "one exchange with b: {} -> {}",
            before.syncs_completed,
            after.syncs_completed
        );
        assert_eq!(after.rejected_frames, 0);

        // a's write is c's by b's word, not first-hand: a confirms it once
        // the link is back.
        assert_eq!(after.applied.get(a.replica()), 1);
        net.heal_all();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.stats().applied.get(a.replica()), 2);
    });
}
