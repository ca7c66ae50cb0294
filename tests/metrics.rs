//! Operator metrics (feature `metrics`): the replication lag series exist
//! with peer labels, rise while a peer is partitioned and fall to zero
//! after the heal; refused frames are scraped under their reason, conflicts
//! under their resolver's strategy, and the per-peer bytes and clock series
//! carry what the region's stats say.
//!
//! The first test installs the global recorder; the others each set a
//! recorder of their own for their thread (`set_default_local_recorder`):
//! on a current-thread runtime every task of their regions runs there.

mod common;

use std::time::Duration;

use archipelago::clock::ReplicaId;
use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig, RejectReason};
use archipelago::resolve::LastWriteWins;
use archipelago::testing::{Forger, Forgery};
use archipelago::transport::{ChannelNetwork, Transport};
use metrics_exporter_prometheus::PrometheusBuilder;

/// The value of the series `name` whose labels include every one of
/// `labels` in `scrape`.
fn labelled(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of the series `name` with label `peer="{peer}"` in `scrape`.
fn series(scrape: &str, name: &str, region: &str, peer: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            l.contains(&format!("peer=\"{peer}\"")) && l.contains(&format!("region=\"{region}\""))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn lag_rises_while_a_peer_is_partitioned_and_falls_to_zero_after_the_heal() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let net = ChannelNetwork::new(12);
    let config = RegionConfig::default();
    let tokyo = common::region(&net, "ap-northeast", 0, config.clone());
    let frankfurt = common::region(&net, "eu-central", 0, config);
    let counters = tokyo.table::<String, GCounter>("clicks").unwrap();
    counters
        .update("home", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let scrape = handle.render();
    let lag = series(
        &scrape,
        "archipelago_replication_lag_seconds",
        "ap-northeast",
        "eu-central",
    );
    assert_eq!(lag, Some(0.0), "in sync: no lag\n{scrape}");

    net.partition("ap-northeast", "eu-central");
    counters
        .update("home", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let early = series(
        &handle.render(),
        "archipelago_replication_lag_seconds",
        "ap-northeast",
        "eu-central",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scrape = handle.render();
    let late = series(
        &scrape,
        "archipelago_replication_lag_seconds",
        "ap-northeast",
        "eu-central",
    )
    .unwrap();
    assert!(
        early >= 2.0 && late >= early + 4.0,
        "lag rises: {early} then {late}\n{scrape}"
    );
    let updates = series(
        &scrape,
        "archipelago_replication_lag_updates",
        "ap-northeast",
        "eu-central",
    );
    assert_eq!(updates, Some(1.0));
    let peer = tokyo
        .stats()
        .peers
        .into_iter()
        .find(|p| p.name == "eu-central")
        .unwrap();
    assert!(peer.lag >= Duration::from_secs(7), "{peer:?}");

    net.heal("ap-northeast", "eu-central");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scrape = handle.render();
    let healed = series(
        &scrape,
        "archipelago_replication_lag_seconds",
        "ap-northeast",
        "eu-central",
    );
    assert_eq!(healed, Some(0.0), "caught up after the heal\n{scrape}");
    let status = series(
        &scrape,
        "archipelago_peer_status",
        "ap-northeast",
        "eu-central",
    );
    assert_eq!(status, Some(0.0), "in sync after the heal\n{scrape}");
    assert_eq!(tokyo.stats().peers[0].lag, Duration::ZERO);
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
}

/// Guards the `reason` label: a frame that does not decode and a batch
/// forged to depend on writes the victim never made are each scraped
/// under their own reason, and the other reasons stay at zero.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hostile_frames_are_scraped_under_their_reason() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = ChannelNetwork::new(21);
    let victim = common::region(&net, "victim", 0, RegionConfig::default());
    let liar = Region::builder("liar")
        .replica_id(ReplicaId::from_name("liar"))
        .transport(Forger::new(
            net.endpoint("liar"),
            vec![Forgery::DependOn {
                of: victim.replica(),
                count: 1_000_000,
            }],
        ))
        .clock(common::TokioClock::new(0))
        .build()
        .unwrap();
    let garbage = net.endpoint("garbage");
    garbage.send("victim", b"not a frame at all".to_vec());
    common::add(&liar, "t", 1, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let scrape = handle.render();
    let rejected = |reason: RejectReason| {
        labelled(
            &scrape,
            "archipelago_rejected_frames_total",
            &[("region", "victim"), ("reason", reason.as_str())],
        )
    };
    assert_eq!(rejected(RejectReason::Undecodable), Some(1.0), "{scrape}");
    let forged = rejected(RejectReason::ForgedClaim).unwrap_or(0.0);
    assert!(forged >= 1.0, "the forged batch: {forged}\n{scrape}");
    for reason in [RejectReason::Malformed, RejectReason::NotSenderOrigin] {
        assert_eq!(rejected(reason), Some(0.0), "{reason}\n{scrape}");
    }
    let stats = victim.stats();
    assert!(stats.rejected(RejectReason::ForgedClaim) as f64 >= forged);
    assert_eq!(stats.rejected(RejectReason::Undecodable), 1);
    drop(garbage);
    liar.shutdown().await;
    victim.shutdown().await;
}

/// Guards the `strategy` label of the conflicts series and the per-peer
/// bytes and clock series: each equals what the region's stats say.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn conflicts_bytes_and_clock_series_carry_what_the_stats_say() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = ChannelNetwork::new(22);
    let config = RegionConfig::default();
    let here = common::region(&net, "here", 0, config.clone());
    let there = common::region(&net, "there", 0, config.clone());
    let ahead = common::region(&net, "far-ahead", 10_000, config.clone());
    // Two writes concurrent with each other: a conflict in each region.
    net.partition("here", "there");
    for (region, value) in [(&here, "mine"), (&there, "theirs")] {
        let table = region
            .table_with::<u8, String>("profiles", LastWriteWins)
            .unwrap();
        table.put(&1u8, value.to_owned()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.heal("here", "there");
    // Timestamps 10 s ahead of ours, past the default 500 ms bound.
    common::add(&ahead, "t", 1, 1).await;
    tokio::time::sleep(Duration::from_secs(15)).await;

    let scrape = handle.render();
    let stats = here.stats();
    let conflicts = labelled(
        &scrape,
        "archipelago_conflicts_total",
        &[
            ("region", "here"),
            ("table", "profiles"),
            ("strategy", "last-write-wins"),
        ],
    );
    let table = stats.tables.iter().find(|t| t.name == "profiles").unwrap();
    assert!(table.conflicts > 0, "{table:?}");
    assert_eq!(table.strategy, Some("last-write-wins"));
    assert_eq!(conflicts, Some(table.conflicts as f64), "{scrape}");

    let peer = stats.peers.iter().find(|p| p.name == "far-ahead").unwrap();
    let labels = [("region", "here"), ("peer", "far-ahead")];
    let series = |name| labelled(&scrape, name, &labels);
    assert!(peer.bytes_sent > 0 && peer.bytes_received > 0, "{peer:?}");
    // Quiet for seconds: the last publish saw what the stats see.
    assert_eq!(
        series("archipelago_peer_bytes_sent_total"),
        Some(peer.bytes_sent as f64),
        "{scrape}"
    );
    assert_eq!(
        series("archipelago_peer_bytes_received_total"),
        Some(peer.bytes_received as f64)
    );
    assert_eq!(
        series("archipelago_anti_entropy_bytes_received_total"),
        Some(peer.sync_bytes_received as f64)
    );
    let offset = series("archipelago_clock_offset_seconds").expect("observed");
    assert!((9.9..=10.0).contains(&offset), "{offset}\n{scrape}");
    let rejects = labelled(
        &scrape,
        "archipelago_hlc_remote_rejects_total",
        &[("region", "here")],
    );
    assert!(stats.hlc_remote_rejects > 0, "{stats:?}");
    assert_eq!(rejects, Some(stats.hlc_remote_rejects as f64), "{scrape}");
    for region in [here, there, ahead] {
        region.shutdown().await;
    }
}
