//! Transactions are seen whole in every region: a checker over random
//! workloads under loss, partitions and heals.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig, RegionError};
use archipelago::transport::{ChannelNetwork, LinkFaults};

const NAMES: [&str; 3] = ["ap", "eu", "us"];

/// How many of transaction `t`'s `k` keys (over two tables) `region` shows,
/// read in one snapshot (a read-only transaction).
fn visible(region: &Region, t: u64, k: u32) -> u32 {
    let a = region.table::<(u64, u32), GCounter>("a").unwrap();
    let b = region.table::<(u64, u32), GCounter>("b").unwrap();
    let (n, _) = region
        .transaction(|tx| {
            let mut n = 0;
            for i in 0..k {
                let table = if i % 2 == 0 { &a } else { &b };
                if tx.read_crdt(table, &(t, i))?.is_some() {
                    n += 1;
                }
            }
            Ok::<_, RegionError>(n)
        })
        .unwrap();
    n
}

#[test]
fn no_region_ever_shows_part_of_a_transaction() {
    check(RegionConfig::default());
}

/// Batches of a transaction's size at most: segment cuts come often.
#[test]
fn no_region_ever_shows_part_of_a_transaction_in_small_batches() {
    check(RegionConfig {
        batch_len_max: 64,
        ..RegionConfig::default()
    });
}

fn check(config: RegionConfig) {
    let seed: u64 = std::env::var("TXN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    println!("TXN_SEED={seed}");
    common::paused_runtime().block_on(async move {
        let net = ChannelNetwork::new(seed);
        let regions: Vec<Region> = NAMES
            .iter()
            .map(|n| common::region(&net, n, 0, config.clone()))
            .collect();
        let mut rng = seed.wrapping_mul(6364136223846793005) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut txns: Vec<(u64, u32)> = Vec::new();
        for step in 0..300u64 {
            match next() % 10 {
                0 => net.partition(NAMES[(next() % 3) as usize], NAMES[(next() % 3) as usize]),
                1 => net.heal_all(),
                2 => net.set_faults_all(LinkFaults::new().loss(0.4)),
                3 => net.set_faults_all(LinkFaults::new()),
                _ => {
                    let r = &regions[(next() % 3) as usize];
                    let k = 2 + (next() % 63) as u32;
                    let a = r.table::<(u64, u32), GCounter>("a").unwrap();
                    let b = r.table::<(u64, u32), GCounter>("b").unwrap();
                    r.transaction(|tx| {
                        for i in 0..k {
                            let table = if i % 2 == 0 { &a } else { &b };
                            tx.update(table, &(step, i), |c, ctx| {
                                c.apply(|c| c.inc(ctx.replica(), 1))
                            })?;
                        }
                        Ok::<_, RegionError>(())
                    })
                    .unwrap();
                    txns.push((step, k));
                }
            }
            tokio::time::sleep(Duration::from_millis(next() % 20)).await;
            for region in &regions {
                for &(t, k) in &txns {
                    let n = visible(region, t, k);
                    assert!(
                        n == 0 || n == k,
                        "seed {seed}: {} shows {n} of {k} writes of transaction {t}",
                        region.name()
                    );
                }
            }
        }
        net.heal_all();
        net.set_faults_all(LinkFaults::new());
        tokio::time::sleep(Duration::from_secs(30)).await;
        for region in &regions {
            for &(t, k) in &txns {
                assert_eq!(visible(region, t, k), k, "seed {seed}: converged");
            }
        }
    });
}
