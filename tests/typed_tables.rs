//! Typed tables (issue 12): one key type per table, scans over a
//! consistent snapshot, borrowed reads and observed-remove deletes, on the
//! default `RegionConfig`.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use archipelago::crdt::{GCounter, OrSet};
use archipelago::region::{Region, RegionConfig, RegionError};
use archipelago::resolve::LastWriteWins;
use archipelago::transport::ChannelNetwork;

fn region(net: &ChannelNetwork, name: &str) -> Region {
    common::region(net, name, 0, RegionConfig::default())
}

/// Polls `done` on the paused clock; panics after a simulated minute.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..6_000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn inc(table: &archipelago::region::Table<u64, GCounter>, key: u64, n: u64) {
    table
        .update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), n)))
        .await
        .unwrap();
}

#[test]
fn a_second_declaration_with_another_key_type_is_refused() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(1);
        let a = region(&net, "a");
        a.table::<u8, GCounter>("hits").unwrap();
        let err = a.table::<u64, GCounter>("hits").unwrap_err();
        match err {
            RegionError::KeyType {
                table,
                registered,
                requested,
            } => {
                assert_eq!(table, "hits");
                assert_eq!(registered, "u8");
                assert_eq!(requested, "u64");
            }
            other => panic!("expected KeyType, got {other:?}"),
        }
        // The same key type gets the table back.
        a.table::<u8, GCounter>("hits").unwrap();

        a.table_with::<String, String>("profiles", LastWriteWins)
            .unwrap();
        let err = a
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegionError::KeyType {
                    registered: "alloc::string::String",
                    requested: "u64",
                    ..
                }
            ),
            "{err:?}"
        );
        a.shutdown().await;
    });
}

/// `1u8`, `1u64` and `true` encode to the same bytes: through untyped
/// handles they hit one key. Now a table has one key type, and the handle
/// that would have collided is refused.
#[test]
fn u8_and_u64_keys_no_longer_collide() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(2);
        let a = region(&net, "a");
        let small = a.table::<u8, GCounter>("counts").unwrap();
        small
            .update(&1u8, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 5)))
            .await
            .unwrap();
        let err = a.table::<u64, GCounter>("counts").unwrap_err();
        assert!(err.to_string().contains("keys of u8, not u64"), "{err}");
        let err = a.table::<bool, GCounter>("counts").unwrap_err();
        assert!(matches!(err, RegionError::KeyType { .. }), "{err:?}");
        // A u64 table of its own keeps its own 1.
        let wide = a.table::<u64, GCounter>("wide-counts").unwrap();
        inc(&wide, 1, 7).await;
        assert_eq!(small.read(&1).await.unwrap().map(|c| c.value()), Some(5));
        assert_eq!(wide.read(&1).await.unwrap().map(|c| c.value()), Some(7));
        a.shutdown().await;
    });
}

#[test]
fn scans_see_local_and_replicated_keys() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(3);
        let a = region(&net, "a");
        let b = region(&net, "b");
        let hits_a = a.table::<u64, GCounter>("hits").unwrap();
        let hits_b = b.table::<u64, GCounter>("hits").unwrap();
        for k in [1, 2, 3] {
            inc(&hits_a, k, k).await;
        }
        inc(&hits_b, 10, 10).await;
        wait_until("replication", async || {
            hits_a.len() == 4 && hits_b.len() == 4
        })
        .await;

        for table in [&hits_a, &hits_b] {
            let keys: BTreeSet<u64> = table.keys().unwrap().collect();
            assert_eq!(keys, BTreeSet::from([1, 2, 3, 10]));
            let mut pairs: Vec<(u64, u64)> =
                table.iter().unwrap().map(|(k, c)| (k, c.value())).collect();
            pairs.sort();
            assert_eq!(pairs, [(1, 1), (2, 2), (3, 3), (10, 10)]);
            let ranged: Vec<u64> = table.range(2..=10).unwrap().map(|(k, _)| k).collect();
            assert_eq!(ranged, [2, 3, 10], "range is in key order");
            assert_eq!(table.range(4..10).unwrap().len(), 0);
        }

        // Resolver tables yield the resolver's verdict.
        let names_a = a
            .table_with::<String, String>("names", LastWriteWins)
            .unwrap();
        let names_b = b
            .table_with::<String, String>("names", LastWriteWins)
            .unwrap();
        names_a.put("aiko", "Aiko".into()).await.unwrap();
        names_b.put("ben", "Ben".into()).await.unwrap();
        wait_until("names", async || names_a.keys().unwrap().len() == 2).await;
        let read: Vec<(String, String)> = names_a
            .range("a".to_string().."z".to_string())
            .unwrap()
            .map(|(k, r)| (k, r.value().unwrap().clone()))
            .collect();
        assert_eq!(
            read,
            [("aiko".into(), "Aiko".into()), ("ben".into(), "Ben".into())]
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// A peer that declared the table with another key type: its keys do not
/// decode here. A scan skips and counts them, and never panics.
#[test]
fn keys_of_another_key_type_are_skipped_and_counted() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(4);
        let a = region(&net, "a");
        let b = region(&net, "b");
        let texts = a.table::<String, GCounter>("hits").unwrap();
        let numbers = b.table::<u64, GCounter>("hits").unwrap();
        texts
            .update("home", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        // A varint u64 of 5 is a string length with no bytes after it.
        inc(&numbers, 5, 1).await;
        wait_until("replication", async || texts.len() == 2).await;
        let scan = texts.keys().unwrap();
        assert_eq!(scan.skipped(), 1);
        assert_eq!(scan.collect::<Vec<_>>(), ["home".to_string()]);
        let scan = texts.iter().unwrap();
        assert_eq!(scan.skipped(), 1);
        assert_eq!(scan.len(), 1);
        let stats = a.stats();
        let table = stats.tables.iter().find(|t| t.name == "hits").unwrap();
        assert_eq!(table.undecodable_keys, 2, "one per scan");
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Writes run on other threads while scans run: no deadlock, and every
/// scan is a snapshot. The writer writes key i only after key i - 1, so a
/// consistent snapshot holds a prefix of the keys, each counted once.
#[test]
fn a_scan_while_writes_run_is_a_consistent_snapshot() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let a = Region::builder("a").build().unwrap();
        let hits = a.table::<u64, GCounter>("hits").unwrap();
        const KEYS: u64 = 2_000;
        let writer = {
            let hits = hits.clone();
            tokio::spawn(async move {
                for k in 0..KEYS {
                    inc(&hits, k, 1).await;
                }
            })
        };
        let scans = async {
            let mut scans = 0u32;
            let mut last = 0usize;
            loop {
                let done = writer.is_finished();
                let mut keys: Vec<u64> = hits.keys().unwrap().collect();
                keys.sort_unstable();
                let n = keys.len() as u64;
                assert!(
                    keys.iter().copied().eq(0..n),
                    "a scan saw a gap or a key twice"
                );
                assert!(keys.len() >= last, "a later scan saw fewer keys");
                last = keys.len();
                let mut pairs: Vec<(u64, u64)> =
                    hits.iter().unwrap().map(|(k, c)| (k, c.value())).collect();
                pairs.sort_unstable();
                let n = pairs.len() as u64;
                assert!(
                    pairs.iter().map(|p| p.0).eq(0..n),
                    "an iter saw a gap or a key twice"
                );
                assert!(pairs.iter().all(|p| p.1 == 1));
                scans += 1;
                if done {
                    break;
                }
                tokio::task::yield_now().await;
            }
            scans
        };
        let scans = tokio::time::timeout(Duration::from_secs(30), scans)
            .await
            .expect("scans deadlocked with the writer");
        assert!(scans >= 1);
        assert_eq!(hits.keys().unwrap().len() as u64, KEYS);
        a.shutdown().await;
    });
}

#[test]
fn read_with_borrows_the_value() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(5);
        let a = region(&net, "a");
        let carts = a.table::<String, OrSet<String>>("carts").unwrap();
        carts
            .update("aiko", |c, ctx| {
                c.apply(|c| c.insert(ctx.replica(), "matcha".into()));
                c.apply(|c| c.insert(ctx.replica(), "sencha".into()));
            })
            .await
            .unwrap();
        assert_eq!(carts.read_with("aiko", |cart| cart.len()).unwrap(), Some(2));
        let first: Option<Option<String>> = carts
            .read_with("aiko", |cart| cart.iter().min().cloned())
            .unwrap();
        assert_eq!(first, Some(Some("matcha".into())));
        assert_eq!(carts.read_with("ben", |cart| cart.len()).unwrap(), None);

        // A panic in the closure reaches the caller; the region lives on.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            carts.read_with("aiko", |_| panic!("reader bug")).unwrap();
        }));
        assert!(panicked.is_err());
        assert!(a.stats().engine_failure.is_none());
        assert_eq!(carts.read_with("aiko", |cart| cart.len()).unwrap(), Some(2));

        let profiles = a
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        profiles.put(&1, "Aiko".into()).await.unwrap();
        let versions = profiles
            .versions_with(&1, |set| set.versions().len())
            .unwrap();
        assert_eq!(versions, Some(1));
        a.shutdown().await;
    });
}

#[test]
fn a_resolver_delete_replicates() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(6);
        let a = region(&net, "a");
        let b = region(&net, "b");
        let pa = a
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        let pb = b
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        pa.put(&1, "Aiko".into()).await.unwrap();
        pa.put(&2, "Ben".into()).await.unwrap();
        wait_until("the puts", async || pb.read(&1).await.unwrap().is_some()).await;
        let token = pa.delete(&1).await.unwrap();
        assert!(!token.is_empty(), "a delete is a write");
        assert!(pa.read(&1).await.unwrap().is_none());
        wait_until("the delete", async || pb.read(&1).await.unwrap().is_none()).await;
        assert_eq!(pb.keys().unwrap().collect::<Vec<_>>(), [2]);
        assert_eq!(pb.iter().unwrap().len(), 1);
        // A write after the delete has seen it: it is kept everywhere.
        pb.put(&1, "Aiko Tanaka".into()).await.unwrap();
        wait_until("the put after", async || {
            pa.read(&1).await.unwrap().is_some()
        })
        .await;
        assert_eq!(
            pa.read(&1).await.unwrap().unwrap().value().unwrap(),
            "Aiko Tanaka"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_concurrent_put_survives_a_delete() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(7);
        let a = region(&net, "a");
        let b = region(&net, "b");
        let pa = a
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        let pb = b
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        pa.put(&1, "Aiko".into()).await.unwrap();
        wait_until("the put", async || pb.read(&1).await.unwrap().is_some()).await;
        net.partition("a", "b");
        pa.delete(&1).await.unwrap();
        pb.put(&1, "Aiko Tanaka".into()).await.unwrap();
        net.heal_all();
        wait_until("convergence", async || a.applied() == b.applied()).await;
        for table in [&pa, &pb] {
            let read = table
                .read(&1)
                .await
                .unwrap()
                .expect("add-wins: the concurrent put survives");
            assert_eq!(read.value().unwrap(), "Aiko Tanaka");
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_concurrent_update_survives_a_crdt_delete() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(8);
        let a = region(&net, "a");
        let b = region(&net, "b");
        let ca = a.table::<String, OrSet<String>>("carts").unwrap();
        let cb = b.table::<String, OrSet<String>>("carts").unwrap();
        ca.update("aiko", |c, ctx| {
            c.apply(|c| c.insert(ctx.replica(), "matcha".into()))
        })
        .await
        .unwrap();
        wait_until("the insert", async || {
            cb.read("aiko").await.unwrap().is_some()
        })
        .await;
        net.partition("a", "b");
        assert!(!ca.delete("aiko").await.unwrap().is_empty());
        assert!(ca.read("aiko").await.unwrap().unwrap().is_empty());
        cb.update("aiko", |c, ctx| {
            c.apply(|c| c.insert(ctx.replica(), "sencha".into()))
        })
        .await
        .unwrap();
        net.heal_all();
        wait_until("convergence", async || a.applied() == b.applied()).await;
        for table in [&ca, &cb] {
            let cart = table.read("aiko").await.unwrap().unwrap();
            let items: Vec<&String> = cart.iter().collect();
            assert_eq!(items, ["sencha"], "the delete removed what it saw, no more");
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// After a partition, anti-entropy compares the regions' states: the
/// region that missed the delete ships its copy of the deleted value, and
/// the tombstone keeps it deleted on both sides.
///
/// Not the default config in one limit: the outbox is small, so that the
/// writes made during the partition overflow it and only anti-entropy
/// (not a retransmitted batch) can bring the delete over; the stale copy
/// then meets the tombstone.
#[test]
fn a_deleted_key_stays_deleted_after_a_partition_and_anti_entropy() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(9);
        let config = RegionConfig {
            outbox_len_max: 4,
            ..RegionConfig::default()
        };
        let a = common::region(&net, "a", 0, config.clone());
        let b = common::region(&net, "b", 0, config);
        let pa = a
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        let pb = b
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        let ca = a.table::<u64, OrSet<u64>>("carts").unwrap();
        let cb = b.table::<u64, OrSet<u64>>("carts").unwrap();
        let hits = a.table::<u64, GCounter>("hits").unwrap();
        pa.put(&1, "Aiko".into()).await.unwrap();
        ca.update(&1, |c, ctx| c.apply(|c| c.insert(ctx.replica(), 7)))
            .await
            .unwrap();
        wait_until("the writes", async || {
            pb.read(&1).await.unwrap().is_some() && cb.read(&1).await.unwrap().is_some()
        })
        .await;
        net.partition("a", "b");
        pa.delete(&1).await.unwrap();
        ca.delete(&1).await.unwrap();
        for k in 0..10 {
            inc(&hits, k, 1).await;
        }
        assert!(
            a.stats().outbox_overflows >= 1,
            "the delete must travel by anti-entropy"
        );
        let syncs = a.stats().syncs_completed;
        net.heal_all();
        wait_until("anti-entropy", async || {
            a.stats().syncs_completed > syncs && a.applied() == b.applied()
        })
        .await;
        assert!(
            a.stats().sync_states_received >= 1,
            "b shipped its states to a"
        );
        tokio::time::sleep(RegionConfig::default().anti_entropy_interval * 2).await;
        for (p, c) in [(&pa, &ca), (&pb, &cb)] {
            assert!(
                p.read(&1).await.unwrap().is_none(),
                "resurrected by anti-entropy"
            );
            assert!(p.keys().unwrap().next().is_none());
            assert!(c.read(&1).await.unwrap().unwrap().is_empty());
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn deleting_an_absent_key_is_harmless() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(10);
        let a = region(&net, "a");
        let profiles = a
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        let carts = a.table::<u64, OrSet<u64>>("carts").unwrap();
        let writes = a.stats().writes;
        assert!(profiles.delete(&404).await.unwrap().is_empty());
        assert!(carts.delete(&404).await.unwrap().is_empty());
        assert_eq!(a.stats().writes, writes, "no write");
        assert_eq!(
            (profiles.len(), carts.len()),
            (0, 0),
            "no tombstone for a key never held"
        );
        assert!(profiles.read(&404).await.unwrap().is_none());
        // Twice is once.
        profiles.put(&1, "Aiko".into()).await.unwrap();
        assert!(!profiles.delete(&1).await.unwrap().is_empty());
        assert!(profiles.delete(&1).await.unwrap().is_empty());
        a.shutdown().await;
    });
}
