//! Restarts are a normal event: a region shut down and built again under
//! its name is greeted by its peers' handshake, not refused, and its new
//! writes flow by batches at once. Every test here runs on the
//! **default** `RegionConfig` (anti-entropy every 30 s), so a restart that
//! is only repaired by the periodic exchange misses the 2 s bound, and each
//! asserts the counters that reveal hidden repair.

mod common;

use std::time::Duration;

use archipelago::clock::ReplicaId;
use archipelago::crdt::GCounter;
use archipelago::region::{HandshakeRefusal, Region, RegionConfig};
use archipelago::transport::ChannelNetwork;

fn region(net: &ChannelNetwork, name: &str) -> Region {
    Region::builder(name)
        .transport(net.endpoint(name))
        .clock(common::TokioClock::new(0))
        .config(RegionConfig::default())
        .build()
        .expect("inside a runtime")
}

/// Polls until `table` at `region` holds `want` under `key`, at most
/// `within`; returns how long it took.
async fn visible(
    region: &Region,
    table: &str,
    key: u64,
    want: u64,
    within: Duration,
) -> Option<Duration> {
    let t = region.table::<GCounter>(table).unwrap();
    let start = tokio::time::Instant::now();
    while start.elapsed() <= within {
        if t.read(&key).await.unwrap().map(|c| c.value()) == Some(want) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn add(region: &Region, table: &str, key: u64, n: u64) {
    region
        .table::<GCounter>(table)
        .unwrap()
        .update(&key, |c, ctx| c.inc(ctx.replica(), n))
        .await
        .unwrap();
}

/// Guards against a region restarted without storage having its batches
/// refused ("batch for an origin that is not the sending peer") and its
/// writes waiting 30 s for the periodic anti-entropy.
#[test]
fn a_region_restarted_without_storage_replicates_at_once() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(3);
        let b = region(&net, "b");
        let a = region(&net, "a");
        add(&a, "t", 1, 5).await;
        assert!(
            visible(&b, "t", 1, 5, Duration::from_secs(2))
                .await
                .is_some()
        );
        let old_id = a.replica();
        a.shutdown().await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let a = region(&net, "a");
        assert_ne!(a.replica(), old_id, "without storage, a new replica id");
        // Let the reconnect's anti-entropy finish, so that what follows can
        // only travel by batches.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let syncs = b.stats().syncs_completed;
        let batches = b.stats().batches_applied;
        for i in 0..50 {
            add(&a, "t", 2, 1).await;
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        let took = visible(&b, "t", 2, 50, Duration::from_secs(2)).await;
        assert!(
            took.is_some(),
            "the restarted region's writes reach b within 2 s"
        );
        let stats = b.stats();
        assert_eq!(stats.rejected_frames, 0, "no frame of the restart refused");
        assert_eq!(stats.refused_handshakes, 0);
        assert_eq!(
            stats.syncs_completed, syncs,
            "carried by batches, not anti-entropy"
        );
        assert!(stats.batches_applied > batches);
        let peer = stats.peers.iter().find(|p| p.name == "a").unwrap();
        assert_eq!(peer.replica, Some(a.replica()), "rebound to the new id");
        // b also sees the old incarnation's write, and a caught up on it.
        assert!(
            visible(&a, "t", 1, 5, Duration::from_secs(2))
                .await
                .is_some()
        );
        assert_eq!(a.stats().rejected_frames, 0);
    });
}

/// Guards against a reconnect of the same process (a network blip) being
/// taken for a restart: cursors are kept and nothing is refused.
#[test]
fn a_partition_heal_keeps_the_peer_binding() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(4);
        let a = region(&net, "a");
        let b = region(&net, "b");
        add(&a, "t", 1, 1).await;
        assert!(
            visible(&b, "t", 1, 1, Duration::from_secs(2))
                .await
                .is_some()
        );
        net.partition("a", "b");
        add(&a, "t", 1, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        net.heal("a", "b");
        assert!(
            visible(&b, "t", 1, 2, Duration::from_secs(2))
                .await
                .is_some()
        );
        let stats = b.stats();
        assert_eq!(stats.rejected_frames, 0);
        assert_eq!(stats.refused_handshakes, 0);
        let peer = stats.peers.iter().find(|p| p.name == "a").unwrap();
        assert_eq!(peer.replica, Some(a.replica()));
        assert_eq!(peer.incarnation, Some(1));
    });
}

/// Guards against two regions given one replica id merging each other's
/// writes: their handshake is refused, typed, and nothing crosses.
#[test]
fn two_regions_with_one_replica_id_are_refused_at_the_handshake() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(5);
        let same = ReplicaId::new(7);
        let build = |name: &str| {
            Region::builder(name)
                .replica_id(same)
                .transport(net.endpoint(name))
                .build()
                .unwrap()
        };
        let a = build("a");
        let b = build("b");
        add(&a, "t", 1, 3).await;
        add(&b, "t", 1, 4).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (me, other) in [(&a, "b"), (&b, "a")] {
            let stats = me.stats();
            assert!(
                stats.refused_handshakes >= 1,
                "{} refused {other}",
                me.name()
            );
            let peer = stats.peers.iter().find(|p| p.name == other).unwrap();
            assert_eq!(
                peer.refused,
                Some(HandshakeRefusal::OurReplicaId { replica: same })
            );
            assert_eq!(stats.batches_applied, 0, "nothing merged");
        }
        assert_eq!(
            b.table::<GCounter>("t")
                .unwrap()
                .read(&1u64)
                .await
                .unwrap()
                .map(|c| c.value()),
            Some(4),
            "b kept only its own write"
        );
    });
}

/// Guards against a third region presenting an id a peer already holds.
#[test]
fn a_peer_presenting_another_peers_id_is_refused() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(6);
        let hub = region(&net, "hub");
        let first = Region::builder("x")
            .replica_id(ReplicaId::new(42))
            .transport(net.endpoint("x"))
            .build()
            .unwrap();
        add(&first, "t", 1, 1).await;
        assert!(
            visible(&hub, "t", 1, 1, Duration::from_secs(2))
                .await
                .is_some()
        );
        let impostor = Region::builder("y")
            .replica_id(ReplicaId::new(42))
            .transport(net.endpoint("y"))
            .build()
            .unwrap();
        add(&impostor, "t", 2, 9).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stats = hub.stats();
        let peer = stats.peers.iter().find(|p| p.name == "y").unwrap();
        assert_eq!(
            peer.refused,
            Some(HandshakeRefusal::IdOfAnotherPeer {
                replica: ReplicaId::new(42),
                holder: "x".into()
            })
        );
        assert_eq!(
            hub.table::<GCounter>("t")
                .unwrap()
                .read(&2u64)
                .await
                .unwrap(),
            None,
            "the impostor's write was not merged"
        );
    });
}
