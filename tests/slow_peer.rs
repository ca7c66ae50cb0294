//! One dead peer costs only itself: past the outbox bound it loses its
//! claim on the log and is repaired by anti-entropy when it returns, while
//! healthy peers keep receiving batches. Default `RegionConfig` but for a
//! small outbox bound (the bound is what is tested).

use crate::common;

use std::time::Duration;

use archipelago::region::RegionConfig;
use archipelago::transport::ChannelNetwork;

const OUTBOX_LEN_MAX: usize = 500;

fn config() -> RegionConfig {
    RegionConfig {
        outbox_len_max: OUTBOX_LEN_MAX,
        ..RegionConfig::default()
    }
}

/// Guards against the outbox overflow flagging every peer with
/// unacknowledged writes (a healthy peer always has a few) for repair: one
/// dead peer sent every healthy one onto anti-entropy, its writes stalled
/// until the next exchange.
#[test]
fn a_dead_peer_past_the_outbox_bound_does_not_push_healthy_peers_onto_anti_entropy() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(9);
        let a = common::region_on(&net, "a", None, config());
        let b = common::region_on(&net, "b", None, config());
        let c = common::region_on(&net, "c", None, config());
        common::add(&a, "t", 0, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let syncs_b = b.stats().syncs_completed;
        net.isolate("c");
        // Three times the bound, written while b keeps up.
        for i in 0..3 * OUTBOX_LEN_MAX as u64 {
            common::add(&a, "t", i % 16, 1).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(
            sa.outbox_overflows, 1,
            "the dead peer lost its claim once, for good"
        );
        assert!(
            sa.outbox_len <= OUTBOX_LEN_MAX,
            "bounded: {}",
            sa.outbox_len
        );
        assert_eq!(sb.applied.get(a.replica()), sa.writes, "b has every write");
        assert_eq!(sb.syncs_completed, syncs_b, "by batches, not anti-entropy");
        let lagging: Vec<&str> = sa
            .peers
            .iter()
            .filter(|p| p.behind > 0 || p.unacknowledged > 0)
            .map(|p| p.name.as_str())
            .collect();
        assert!(!lagging.contains(&"b"), "{lagging:?}");

        // c comes back: anti-entropy repairs it.
        net.heal_all();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(c.stats().applied.get(a.replica()), a.stats().writes);
        assert_eq!(
            common::counter(&c, "t", 1).await,
            common::counter(&a, "t", 1).await
        );
    });
}
