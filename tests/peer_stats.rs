//! What a region tells of each peer matches what crossed the wire: frame
//! bytes sent and received equal the network's own count of the link
//! (anti-entropy's part counted apart), a peer's clock offset is observed
//! from its timestamps, and timestamps past the offset bound are counted
//! as HLC remote rejects. Default `RegionConfig` throughout.

use crate::common;

use std::time::Duration;

use archipelago::region::{PeerStats, Region, RegionConfig};
use archipelago::transport::ChannelNetwork;

/// `region`'s view of `peer`.
fn peer(region: &Region, peer: &str) -> PeerStats {
    region
        .stats()
        .peers
        .into_iter()
        .find(|p| p.name == peer)
        .expect("a peer of the region")
}

#[test]
fn bytes_per_peer_equal_the_links_count_and_anti_entropy_is_a_part_of_them() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(5);
        let config = RegionConfig::default();
        let tokyo = common::region(&net, "ap-northeast", 0, config.clone());
        let frankfurt = common::region(&net, "eu-central", 0, config.clone());
        for key in 0..50 {
            common::add(&tokyo, "t", key, 1).await;
            common::add(&frankfurt, "t", key % 7, 2).await;
        }
        // Past a periodic anti-entropy round, then quiet: every frame sent
        // has arrived and been counted.
        tokio::time::sleep(config.anti_entropy_interval + Duration::from_secs(5)).await;
        assert!(tokyo.stats().syncs_completed > 0, "an exchange ran");
        for (here, there, name, other) in [
            (&tokyo, &frankfurt, "ap-northeast", "eu-central"),
            (&frankfurt, &tokyo, "eu-central", "ap-northeast"),
        ] {
            let ours = peer(here, other);
            let link = net.link_stats(name, other);
            assert!(ours.bytes_sent > 0, "{ours:?}");
            assert_eq!(
                ours.bytes_sent, link.bytes_sent,
                "{name} → {other}: {ours:?}"
            );
            let theirs = peer(there, name);
            assert_eq!(
                theirs.bytes_received, link.bytes_delivered,
                "{name} → {other} as received: {theirs:?}"
            );
            assert!(
                ours.sync_bytes_sent > 0 && ours.sync_bytes_sent < ours.bytes_sent,
                "anti-entropy is a part of what was sent: {ours:?}"
            );
            assert_eq!(ours.sync_bytes_sent, theirs.sync_bytes_received);
        }
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

#[test]
fn a_peers_clock_offset_is_observed_and_timestamps_past_the_bound_are_counted() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(6);
        let config = RegionConfig::default();
        // 300 ms ahead: within the default 500 ms bound. 10 s ahead: past it.
        let honest = common::region(&net, "honest", 0, config.clone());
        let early = common::region(&net, "early", 300, config.clone());
        let ahead = common::region(&net, "ahead", 10_000, config.clone());
        // Cut off until the first check: anything it sends (hellos,
        // anti-entropy) carries its clock and would be counted there.
        net.isolate("ahead");
        common::add(&early, "t", 1, 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let offset = peer(&honest, "early").clock_offset_ms.expect("observed");
        assert!(
            (250..=300).contains(&offset),
            "about 300 ms ahead: {offset}"
        );
        assert_eq!(honest.stats().hlc_remote_rejects, 0, "within the bound");
        net.heal_all();

        common::add(&ahead, "t", 2, 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let offset = peer(&honest, "ahead").clock_offset_ms.expect("observed");
        assert!(
            (9_950..=10_000).contains(&offset),
            "about 10 s ahead: {offset}"
        );
        let stats = honest.stats();
        assert!(stats.hlc_remote_rejects > 0, "{stats:?}");
        // The peer 300 ms behind the one that runs ahead sees it too.
        assert!(early.stats().hlc_remote_rejects > 0);
        assert_eq!(
            ahead.stats().hlc_remote_rejects,
            0,
            "timestamps from behind are always followed"
        );
        common::add(&honest, "t", 3, 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Its stamps follow the clock ahead only up to its own bound.
        let behind = peer(&ahead, "honest").clock_offset_ms.expect("observed");
        assert!(behind <= -9_000, "the honest clock is behind: {behind}");
        for region in [honest, early, ahead] {
            region.shutdown().await;
        }
    });
}
