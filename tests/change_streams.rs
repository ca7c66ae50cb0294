//! Change streams: `Table::subscribe`/`watch` and the async conflict feed
//! report local and replicated changes, never block replication, and tell
//! a subscriber that fell behind. Default `RegionConfig` throughout.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{ChangeSource, Region, RegionConfig};
use archipelago::resolve::LastWriteWins;
use archipelago::stream::{Empty, Lagged};
use archipelago::transport::ChannelNetwork;
use common::{paused_runtime, region_on};

/// The next item of `stream`, failing the test if none comes within a
/// minute of (virtual) time.
async fn next<K, V>(
    stream: &mut archipelago::region::ChangeStream<K, V>,
) -> Result<archipelago::region::Change<K, V>, Lagged>
where
    K: serde::de::DeserializeOwned + Send + 'static,
    V: Send + 'static,
{
    tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("a change within a minute")
        .expect("the stream is open")
}

fn pair(net: &ChannelNetwork) -> (Region, Region) {
    (
        region_on(net, "ap-northeast", None, RegionConfig::default()),
        region_on(net, "eu-central", None, RegionConfig::default()),
    )
}

#[test]
fn subscribers_see_local_and_replicated_changes_and_watchers_only_their_key() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(1);
        let (tokyo, frankfurt) = pair(&net);
        let here = tokyo.table::<u64, GCounter>("likes").unwrap();
        let mut all = here.subscribe(64).unwrap();
        let mut one = here.watch(&2u64, 64).unwrap();

        common::add(&tokyo, "likes", 1, 1).await;
        common::add(&frankfurt, "likes", 2, 5).await;

        let local = next(&mut all).await.unwrap();
        assert_eq!(
            (local.key, local.value.value(), local.source),
            (1, 1, ChangeSource::Local)
        );
        let remote = next(&mut all).await.unwrap();
        assert_eq!(
            (remote.key, remote.value.value(), remote.source),
            (2, 5, ChangeSource::Replicated)
        );
        let watched = next(&mut one).await.unwrap();
        assert_eq!((watched.key, watched.value.value()), (2, 5));
        assert_eq!(
            one.try_next().map(|_| ()),
            Err(Empty::Pending),
            "key 1 is not watched"
        );
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

#[test]
fn a_slow_subscriber_is_told_what_it_missed_and_never_holds_back_replication() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(2);
        let (tokyo, frankfurt) = pair(&net);
        let mut slow = frankfurt
            .table::<u64, GCounter>("likes")
            .unwrap()
            .subscribe(2)
            .unwrap();
        for key in 0..10 {
            common::add(&tokyo, "likes", key, 1).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Every write reached Frankfurt though nobody read the stream.
        let there = frankfurt.table::<u64, GCounter>("likes").unwrap();
        assert_eq!(there.len(), 10);
        assert_eq!(frankfurt.stats().rejected_frames, 0);
        let mut seen = Vec::new();
        while let Some(item) = tokio::time::timeout(Duration::from_millis(10), slow.next())
            .await
            .ok()
            .flatten()
        {
            seen.push(item.map(|change| change.key));
        }
        assert_eq!(seen, vec![Ok(0), Ok(1), Err(Lagged { missed: 8 })]);
        // After the gap, new changes flow again.
        common::add(&tokyo, "likes", 42, 1).await;
        let after = next(&mut slow).await.unwrap();
        assert_eq!(after.key, 42);
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

#[test]
fn anti_entropy_repairs_are_reported_as_replicated_changes() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(3);
        let (tokyo, frankfurt) = pair(&net);
        net.partition("ap-northeast", "eu-central");
        common::add(&tokyo, "likes", 7, 3).await;
        let mut watch = frankfurt
            .table::<u64, GCounter>("likes")
            .unwrap()
            .watch(&7u64, 8)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        net.heal("ap-northeast", "eu-central");
        let change = next(&mut watch).await.unwrap();
        assert_eq!((change.key, change.value.value()), (7, 3));
        assert_eq!(change.source, ChangeSource::Replicated);
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

#[test]
fn streams_end_when_their_region_is_gone() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(4);
        let (tokyo, frankfurt) = pair(&net);
        let mut changes = tokyo
            .table::<u64, GCounter>("likes")
            .unwrap()
            .subscribe(8)
            .unwrap();
        common::add(&tokyo, "likes", 1, 1).await;
        tokyo.shutdown().await;
        drop(tokyo);
        assert!(
            changes.next().await.unwrap().is_ok(),
            "queued changes are kept"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ends: {end:?}");
        frankfurt.shutdown().await;
    });
}

#[test]
fn resolver_tables_stream_verdicts_and_conflicts() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(5);
        let (tokyo, frankfurt) = pair(&net);
        let here = tokyo
            .table_with::<String, String>("profiles", LastWriteWins)
            .unwrap();
        let there = frankfurt
            .table_with::<String, String>("profiles", LastWriteWins)
            .unwrap();
        let mut conflicts = here.conflicts().stream(8);
        let mut changes = here.watch("user-1", 8).unwrap();
        net.partition("ap-northeast", "eu-central");
        here.put("user-1", "Aiko".to_string()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        there.put("user-1", "Aiko T.".to_string()).await.unwrap();
        net.heal("ap-northeast", "eu-central");
        let record = tokio::time::timeout(Duration::from_secs(60), conflicts.next())
            .await
            .expect("the concurrent writes meet")
            .unwrap()
            .unwrap();
        assert_eq!(record.losers.len(), 1);
        let first = next(&mut changes).await.unwrap();
        assert_eq!(first.source, ChangeSource::Local);
        let second = next(&mut changes).await.unwrap();
        assert_eq!(second.source, ChangeSource::Replicated);
        assert_eq!(
            second.value.unwrap().value().map(String::as_str),
            Some("Aiko T."),
            "the later write wins"
        );
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}
