//! Operator metrics (feature `metrics`): the replication lag series exist
//! with peer labels, rise while a peer is partitioned and fall to zero
//! after the heal.

mod common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::RegionConfig;
use archipelago::transport::ChannelNetwork;
use metrics_exporter_prometheus::PrometheusBuilder;

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
