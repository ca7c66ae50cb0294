//! Restarts are a normal event: a region shut down and built again under
//! its name is greeted by its peers' handshake, not refused, and its new
//! writes flow by batches at once. Every test here runs on the
//! **default** `RegionConfig` (anti-entropy every 30 s), so a restart that
//! is only repaired by the periodic exchange misses the 2 s bound, and each
//! asserts the counters that reveal hidden repair.

use crate::common;

use std::time::Duration;

use archipelago::clock::ReplicaId;
use archipelago::crdt::GCounter;
use archipelago::region::{AckLevel, HandshakeRefusal, Region, RegionConfig, RegionError};
use archipelago::storage::{MemoryStorage, StorageError};
use archipelago::transport::ChannelNetwork;

fn durable(net: &ChannelNetwork, name: &str, disk: &MemoryStorage) -> Region {
    common::region_on(net, name, Some(disk), RegionConfig::default())
}

fn region(net: &ChannelNetwork, name: &str) -> Region {
    common::region_on(net, name, None, RegionConfig::default())
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
    let start = tokio::time::Instant::now();
    while start.elapsed() <= within {
        if common::counter(region, table, key).await == Some(want) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn add(region: &Region, table: &str, key: u64, n: u64) {
    common::add(region, table, key, n).await;
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
        assert_eq!(peer.incarnation, Some(a.incarnation()));
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
            b.table::<u64, GCounter>("t")
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
            hub.table::<u64, GCounter>("t")
                .unwrap()
                .read(&2u64)
                .await
                .unwrap(),
            None,
            "the impostor's write was not merged"
        );
    });
}

/// Guards against a restart with storage minting a new id (vectors and
/// tokens growing per restart), losing acknowledged writes that had not
/// replicated, or making the peer re-ship whole tables.
#[test]
fn a_region_restarted_with_storage_keeps_its_id_and_sends_what_it_had_not() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(8);
        let disk = MemoryStorage::new();
        let b = region(&net, "b");
        let a = durable(&net, "a", &disk);
        let id = a.replica();
        for key in 0..1000u64 {
            add(&a, "t", key, 1).await;
        }
        assert!(
            visible(&b, "t", 999, 1, Duration::from_secs(2))
                .await
                .is_some()
        );
        net.partition("a", "b");
        tokio::time::sleep(Duration::from_millis(100)).await;
        {
            let t = a
                .table::<u64, GCounter>("t")
                .unwrap()
                .with_ack(AckLevel::Local);
            for i in 0..20u64 {
                t.update(&(5000 + i), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                    .await
                    .unwrap();
            }
        }
        // A crash: no shutdown, nothing flushed.
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (states_before, syncs_before) = {
            let stats = b.stats();
            (stats.sync_states_received, stats.syncs_completed)
        };

        let a = durable(&net, "a", &disk);
        assert_eq!(a.replica(), id, "the same replica");
        assert_eq!(a.incarnation(), 2);
        let t = a.table::<u64, GCounter>("t").unwrap();
        assert_eq!(t.len(), 1020, "its tables are back");
        net.heal("a", "b");
        for i in 0..20u64 {
            let took = visible(&b, "t", 5000 + i, 1, Duration::from_secs(2)).await;
            assert!(
                took.is_some(),
                "acknowledged write {i} reached b after the restart"
            );
        }
        add(&a, "t", 9000, 1).await;
        assert!(
            visible(&b, "t", 9000, 1, Duration::from_secs(2))
                .await
                .is_some()
        );
        let stats = b.stats();
        assert_eq!(stats.rejected_frames, 0);
        assert_eq!(stats.refused_handshakes, 0);
        add(&b, "t", 9001, 1).await;
        let replicas: Vec<ReplicaId> = b.applied().iter().map(|(r, _)| r).collect();
        let mut want = vec![id, b.replica()];
        want.sort();
        assert_eq!(replicas, want, "no new entry per restart");
        let peer = stats.peers.iter().find(|p| p.name == "a").unwrap();
        assert_eq!((peer.replica, peer.incarnation), (Some(id), Some(2)));
        // Caught up from the outboxes: no anti-entropy, no table re-shipped.
        assert_eq!(
            stats.syncs_completed, syncs_before,
            "no anti-entropy exchange"
        );
        assert_eq!(
            stats.sync_states_received, states_before,
            "no key state shipped"
        );
    });
}

/// Guards against an acknowledged `Local` write being lost by a crash of a
/// region alone, and a restart reusing its sequence numbers or stamps.
#[test]
fn a_local_write_survives_a_crash_and_the_clock_resumes_above_it() {
    common::paused_runtime().block_on(async {
        let disk = MemoryStorage::new();
        let build = || {
            Region::builder("solo")
                .storage(disk.clone())
                .ack_level(AckLevel::Local)
                .build()
                .unwrap()
        };
        let a = build();
        let t = a.table::<u64, GCounter>("t").unwrap();
        t.update(&1u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 7)))
            .await
            .unwrap();
        let stamp = a.hlc().now();
        let writes = a.stats().writes;
        drop(t);
        drop(a);
        let a = build();
        let t = a.table::<u64, GCounter>("t").unwrap();
        assert_eq!(t.read(&1u64).await.unwrap().map(|c| c.value()), Some(7));
        assert_eq!(
            a.stats().writes,
            writes,
            "the sequence resumes where it was"
        );
        assert!(a.hlc().now() > stamp, "no stamp at or below one given out");
        assert!(disk.commits() >= 2);
    });
}

/// Guards against a failed commit (a full disk) being acknowledged, or
/// losing the write for good once the disk recovers.
#[test]
fn a_failed_commit_is_a_typed_error_and_is_retried() {
    common::paused_runtime().block_on(async {
        let disk = MemoryStorage::new();
        let a = Region::builder("solo")
            .storage(disk.clone())
            .build()
            .unwrap();
        let t = a
            .table::<u64, GCounter>("t")
            .unwrap()
            .with_ack(AckLevel::Local);
        t.update(&1u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        disk.fail_commits(true);
        let err = t
            .update(&2u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await;
        assert!(
            matches!(err, Err(RegionError::Storage(StorageError::Io(_)))),
            "{err:?}"
        );
        assert_eq!(
            t.read(&2u64).await.unwrap().map(|c| c.value()),
            Some(1),
            "applied here"
        );
        assert!(a.stats().commit_failures >= 1);
        disk.fail_commits(false);
        t.update(&3u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        drop(t);
        drop(a);
        let a = Region::builder("solo")
            .storage(disk.clone())
            .build()
            .unwrap();
        let t = a.table::<u64, GCounter>("t").unwrap();
        for key in 1..=3u64 {
            assert_eq!(
                t.read(&key).await.unwrap().map(|c| c.value()),
                Some(1),
                "key {key}"
            );
        }
        // After shutdown nothing commits: refused at once, not after the
        // commit wait.
        a.shutdown().await;
        let t = a
            .table::<u64, GCounter>("t")
            .unwrap()
            .with_ack(AckLevel::Local);
        let started = tokio::time::Instant::now();
        assert!(matches!(
            t.update(&4u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await,
            Err(RegionError::Closed)
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(t);
        // Without storage, Local is refused rather than silently weakened.
        let plain = Region::builder("plain").build().unwrap();
        let t = plain
            .table::<u64, GCounter>("t")
            .unwrap()
            .with_ack(AckLevel::Local);
        assert!(matches!(
            t.update(&1u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await,
            Err(RegionError::NoStorage)
        ));
    });
}

/// Guards against a store of another region, a newer format, a corrupt
/// file or a mismatched pinned id being used (or overwritten).
#[cfg(feature = "redb")]
#[test]
fn bad_stores_are_typed_errors_at_build_and_are_left_untouched() {
    common::paused_runtime().block_on(async {
        let dir = std::env::temp_dir().join(format!("archipelago-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let a = Region::builder("a").data_dir(&dir).build().unwrap();
            a.table::<u64, GCounter>("t")
                .unwrap()
                .with_ack(AckLevel::Local)
                .update(&1u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .unwrap();
            a.shutdown().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let file = dir.join("region.redb");
        let bytes = std::fs::read(&file).unwrap();
        let other = Region::builder("b").data_dir(&dir).build();
        assert!(
            matches!(
                other,
                Err(RegionError::Storage(StorageError::OtherRegion { ref stored, .. })) if stored == "a"
            ),
            "{other:?}"
        );
        let pinned = Region::builder("a")
            .replica_id(ReplicaId::new(1))
            .data_dir(&dir)
            .build();
        assert!(matches!(pinned, Err(RegionError::PinnedReplicaId { .. })), "{pinned:?}");
        {
            // What was stored is intact (redb may rewrite its own
            // bookkeeping pages on close; the data is what counts).
            let a = Region::builder("a").data_dir(&dir).build().unwrap();
            assert_eq!(a.incarnation(), 2, "refused builds committed nothing");
            let t = a.table::<u64, GCounter>("t").unwrap();
            assert_eq!(t.read(&1u64).await.unwrap().map(|c| c.value()), Some(1));
            a.shutdown().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;

        // A newer format version.
        let newer = dir.join("newer.redb");
        std::fs::copy(&file, &newer).unwrap();
        {
            let db = redb::Database::create(&newer).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn
                    .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                    .unwrap();
                meta.insert("format", &99u32.to_le_bytes()[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let opened = archipelago::storage::RedbStorage::open(&newer).unwrap();
        let newer_build = Region::builder("a").storage(opened).build();
        assert!(
            matches!(
                newer_build,
                Err(RegionError::Storage(StorageError::NewerFormat { found: 99, .. }))
            ),
            "{newer_build:?}"
        );

        // A truncated file, and one that is not a store at all.
        for (name, content) in [
            ("truncated.redb", bytes[..bytes.len() / 3].to_vec()),
            ("garbage.redb", vec![0xA5; 8192]),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, &content).unwrap();
            let built = archipelago::storage::RedbStorage::open(&path)
                .map_err(RegionError::from)
                .and_then(|s| Region::builder("a").storage(s).build());
            assert!(
                matches!(built, Err(RegionError::Storage(StorageError::Corrupt(_) | StorageError::Io(_)))),
                "{name}: {built:?}"
            );
            assert!(std::fs::read(&path).unwrap() == content, "{name} left as it was");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

/// Guards against a peer with storage acknowledging a batch it has not
/// committed (a crash there would take back a write the origin dropped),
/// and `Replicated(n)` returning before `n` peers hold the write.
#[test]
fn peers_acknowledge_only_what_they_committed_and_replicated_waits_for_it() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(9);
        let disk = MemoryStorage::new();
        let a = region(&net, "a");
        let b = durable(&net, "b", &disk);
        let t = a
            .table::<u64, GCounter>("t")
            .unwrap()
            .with_ack(AckLevel::Replicated(1));
        t.update(&1u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        disk.fail_commits(true);
        let started = tokio::time::Instant::now();
        let err = t
            .update(&2u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await;
        assert!(
            matches!(
                err,
                Err(RegionError::ReplicationTimeout {
                    replicated: 0,
                    wanted: 1,
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(started.elapsed() >= RegionConfig::default().replication_wait_max);
        assert!(
            visible(&b, "t", 2, 1, Duration::from_millis(10))
                .await
                .is_some(),
            "b applied it in memory, but did not acknowledge it"
        );
        let peer = a.stats().peers.into_iter().find(|p| p.name == "b").unwrap();
        assert!(peer.unacknowledged >= 1);
        disk.fail_commits(false);
        t.update(&3u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        let peer = a.stats().peers.into_iter().find(|p| p.name == "b").unwrap();
        assert_eq!(peer.unacknowledged, 0, "acknowledged once committed");
        // Two peers asked of a region with one: the wait ends, typed.
        let t2 = t.clone().with_ack(AckLevel::Replicated(2));
        assert!(matches!(
            t2.update(&4u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await,
            Err(RegionError::ReplicationTimeout {
                replicated: 1,
                wanted: 2,
                ..
            })
        ));
    });
}
