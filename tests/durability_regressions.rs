//! Regression tests for what a review of the handshake, storage and
//! retirement found (each failed before its fix): a value held for an
//! undeclared table and declared before its commit, a `Replicated` wait
//! ended by a repair, a pinned id restarted without storage, a retired
//! peer's hellos counted once per connection.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{AckLevel, Region, RegionConfig};
use archipelago::storage::MemoryStorage;
use archipelago::transport::ChannelNetwork;

fn durable(net: &ChannelNetwork, name: &str, disk: &MemoryStorage) -> Region {
    common::region_on(net, name, Some(disk), RegionConfig::default())
}

fn region_with(net: &ChannelNetwork, name: &str, config: RegionConfig) -> Region {
    common::region_on(net, name, None, config)
}

async fn value(region: &Region, table: &str, key: u64) -> Option<u64> {
    common::counter(region, table, key).await
}

/// A value received for a table this region has not declared yet, then the
/// table declared before the next commit succeeds: the commit stores the
/// applied vector (and releases the acknowledgement) but not the value.
/// After a restart the region claims the write and lacks it; the origin
/// dropped it from its outbox.
#[test]
fn a_value_held_undeclared_then_declared_before_its_commit_survives_a_restart() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(31);
        let disk = MemoryStorage::new();
        let a = region_with(&net, "a", RegionConfig::default());
        let b = durable(&net, "b", &disk);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A commit that fails keeps the window open deterministically (the
        // same window exists for up to a tick without any failure).
        disk.fail_commits(true);
        a.table::<u64, GCounter>("u")
            .unwrap()
            .update(&1u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 7)))
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        while b.applied().get(a.replica()) < 1 {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "b never applied it"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // b's application declares the table now.
        assert_eq!(value(&b, "u", 1).await, Some(7), "merged at declare");
        disk.fail_commits(false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let peer = a.stats().peers.into_iter().find(|p| p.name == "b").unwrap();
        assert_eq!(peer.unacknowledged, 0, "b acknowledged it after its commit");

        // b crashes and comes back, cut off from a.
        net.partition("a", "b");
        let again = disk.crash();
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = durable(&net, "b", &again);
        assert_eq!(
            b.applied().get(a.replica()),
            1,
            "b's stored vector claims a's write"
        );
        assert_eq!(
            value(&b, "u", 1).await,
            Some(7),
            "the write b committed and acknowledged is lost after its restart"
        );
    });
}

/// An outbox overflow moves a lagging peer's cursor to the last write and
/// marks it for repair. When the repair is confirmed (SyncDone) the cursor
/// does not move, so the acks watch is not bumped: a `Replicated(1)` write
/// covered by the repair waits out `replication_wait_max` and fails,
/// although the peer holds it.
#[test]
fn a_replicated_write_covered_by_a_repair_returns_when_the_repair_is_confirmed() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(32);
        let config = RegionConfig {
            outbox_len_max: 8,
            ..RegionConfig::default()
        };
        let a = region_with(&net, "a", config.clone());
        let b = region_with(&net, "b", config);
        tokio::time::sleep(Duration::from_millis(50)).await;
        net.partition("a", "b");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = a.table::<u64, GCounter>("t").unwrap();
        for key in 0..8u64 {
            t.update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .unwrap();
        }
        // The ninth write overflows the outbox; it waits for b.
        let replicated = t.clone().with_ack(AckLevel::Replicated(1));
        let started = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            replicated
                .update(&8u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.stats().outbox_overflows, 1);
        net.heal("a", "b");
        let result = writer.await.unwrap();
        let waited = started.elapsed();
        // b does hold it, repaired by anti-entropy well before the deadline.
        assert_eq!(value(&b, "t", 8).await, Some(1));
        let peer = a.stats().peers.into_iter().find(|p| p.name == "b").unwrap();
        assert_eq!(peer.unacknowledged, 0);
        assert!(
            result.is_ok(),
            "Replicated(1) failed after {waited:?} though b holds the write: {result:?}"
        );
        assert!(waited < Duration::from_secs(2), "returned after {waited:?}");
    });
}

/// A region without storage always presents incarnation 1. With a pinned
/// replica id (the tests' own helper pins one per name) a restart presents
/// the same (id, incarnation) with fewer writes: the handshake takes it for
/// the same process reconnecting, neither refuses it nor resets it, and the
/// new process's writes reuse dots its peers already hold: they are
/// silently ignored (divergence).
#[test]
fn a_pinned_region_restarted_without_storage_is_refused_or_replicates() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(33);
        let a = common::region(&net, "a", 0, RegionConfig::default());
        let b = common::region(&net, "b", 0, RegionConfig::default());
        for key in 0..5u64 {
            b.table::<u64, GCounter>("t")
                .unwrap()
                .update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(value(&a, "t", 4).await, Some(1));
        b.shutdown().await;
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = common::region(&net, "b", 0, RegionConfig::default());
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.table::<u64, GCounter>("t")
            .unwrap()
            .update(&100u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let refused = a.stats().refused_handshakes;
        let seen = value(&a, "t", 100).await;
        assert!(
            refused > 0 || seen == Some(1),
            "b's new write neither reached a ({seen:?}) nor was b refused ({refused})"
        );
    });
}

/// A retired region that is still running keeps greeting (it is never
/// greeted back): every hello, each `ack_timeout`, is counted as a refused
/// handshake and logged at warn, though the counter's doc says each
/// distinct refusal of a connection counts once.
#[test]
fn a_retired_peer_still_running_is_counted_refused_once_per_connection() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(34);
        let a = region_with(&net, "a", RegionConfig::default());
        let _b = region_with(&net, "b", RegionConfig::default());
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.retire_peer("b").unwrap();
        // One reconnect: b greets a again and is never greeted back.
        net.partition("a", "b");
        tokio::time::sleep(Duration::from_millis(100)).await;
        net.heal("a", "b");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let refused = a.stats().refused_handshakes;
        assert!(refused <= 1, "one connection, refused {refused} times");
    });
}
