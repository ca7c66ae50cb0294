//! Anti-entropy ships only what differs: with 100k keys of which 10
//! differ, the bytes exchanged stay under 5% of a full-state transfer; and a
//! peer whose outbox overflowed while it was away is repaired by it.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig};
use archipelago::transport::ChannelNetwork;
use archipelago::wire;

const KEYS: u64 = 100_000;

fn config() -> RegionConfig {
    RegionConfig {
        // Small outbox: the writes made during the partition overflow it,
        // so only anti-entropy can bring them over.
        outbox_len_max: 5,
        ..common::test_config()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..60_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn ten_differing_keys_of_100k_cost_under_5_percent_of_a_full_transfer() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(3);
        let big = RegionConfig {
            outbox_len_max: 1 << 20,
            ..common::test_config()
        };
        let tokyo: Region = common::region(&net, "tokyo", 0, big);
        let frankfurt: Region = common::region(&net, "frankfurt", 0, config());
        let hits_t = tokyo.table::<u64, GCounter>("hits").unwrap();
        let hits_f = frankfurt.table::<u64, GCounter>("hits").unwrap();

        // 100k keys, replicated by batches.
        let mut full_bytes = 0usize;
        for k in 0..KEYS {
            hits_t.update(&k, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1))).await.unwrap();
        }
        for k in 0..KEYS {
            let state = hits_t.read(&k).await.unwrap().unwrap();
            full_bytes += wire::encode(&k).unwrap().len() + wire::encode(&state).unwrap().len();
        }
        wait_until("the first replication", || hits_f.len() == KEYS as usize).await;
        // Let the outbox drain and the first anti-entropy rounds pass.
        tokio::time::sleep(Duration::from_secs(5)).await;

        // Partition, write 10 keys in Frankfurt (overflowing its small
        // outbox), heal, and count every byte until Tokyo has them.
        net.partition("tokyo", "frankfurt");
        for k in 0..10u64 {
            hits_f.update(&(k * 9_973), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1))).await.unwrap();
        }
        assert!(frankfurt.stats().outbox_overflows >= 1);
        let before = net.stats().bytes_delivered;
        net.heal_all();
        let mut caught_up = false;
        for _ in 0..20_000 {
            let mut all = true;
            for k in 0..10u64 {
                let f = hits_t.read(&(k * 9_973)).await.unwrap().map(|c| c.value());
                all &= f == Some(2);
            }
            if all {
                caught_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(caught_up, "tokyo never caught up");
        let exchanged = (net.stats().bytes_delivered - before) as usize;
        let ratio = exchanged as f64 / full_bytes as f64;
        eprintln!("anti-entropy: {exchanged} bytes for 10 of {KEYS} keys, {:.2}% of a {full_bytes}-byte full transfer", ratio * 100.0);
        assert!(
            ratio < 0.05,
            "anti-entropy moved {exchanged} bytes, {:.2}% of a {full_bytes}-byte full transfer",
            ratio * 100.0
        );
        assert!(tokyo.stats().sync_states_received < KEYS / 20);
        wait_until("equal applied vectors", || tokyo.applied() == frankfurt.applied()).await;
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

#[test]
fn an_outbox_overflow_is_healed_by_anti_entropy() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(4);
        let tokyo = common::region(&net, "tokyo", 0, config());
        let frankfurt = common::region(&net, "frankfurt", 0, config());
        let hits_t = tokyo.table::<u64, GCounter>("hits").unwrap();
        let hits_f = frankfurt.table::<u64, GCounter>("hits").unwrap();
        net.isolate("frankfurt");
        for k in 0..50u64 {
            hits_t
                .update(&k, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 3)))
                .await
                .unwrap();
        }
        let stats = tokyo.stats();
        assert!(stats.outbox_overflows >= 1, "{stats:?}");
        assert!(stats.outbox_len <= 5);
        net.heal_all();
        wait_until("anti-entropy", || tokyo.applied() == frankfurt.applied()).await;
        for k in 0..50u64 {
            assert_eq!(hits_f.read(&k).await.unwrap().map(|c| c.value()), Some(3));
        }
        assert!(frankfurt.stats().syncs_completed >= 1);
        // Writes after the repair flow by batches again.
        hits_t
            .update(&7u64, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap();
        wait_until("the next batch", || tokyo.applied() == frankfurt.applied()).await;
        assert_eq!(hits_f.read(&7u64).await.unwrap().unwrap().value(), 4);
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}
