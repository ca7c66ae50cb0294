//! Bounded counters sold at three regions (issue 11): the engine moves
//! rights to where demand is. Never below 0 anywhere, never more sold than
//! restocked, a region without rights refuses at once, a partitioned region
//! sells only what it holds, and after the partitions heal nearly every
//! unit still unsold can be sold from any single region.
//!
//! Seeded: `RIGHTS_SEED=<n>` replays one schedule (the seed is printed).

use crate::common;

use std::time::Duration;

use archipelago::crdt::RightsError;
use archipelago::region::{BoundedTable, Region, RegionConfig, RegionError};
use archipelago::transport::{ChannelNetwork, LinkFaults};
use common::{TestRng, paused_runtime, region_on, seed_from_env};
use tokio::time::Instant;

const NAMES: [&str; 3] = ["ap-northeast", "eu-central", "us-east"];
const SKU: &str = "matcha";
const UNITS: u64 = 100;
/// How long a draining region keeps trying (virtual time).
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// Steps of partitions, heals and sales before the final heal.
const STEPS: u32 = 80;
/// Seeds run when `RIGHTS_SEED` is not set.
const SEEDS: std::ops::Range<u64> = 11..19;
/// Seeds of the lossy-link run when `RIGHTS_LOSSY_SEED` is not set.
const LOSSY_SEEDS: std::ops::Range<u64> = 31..35;

fn stock(region: &Region) -> BoundedTable<String> {
    region.bounded_table::<String, 0>("stock").unwrap()
}

fn value(region: &Region) -> i64 {
    stock(region).value(SKU).unwrap().unwrap_or(0)
}

fn rights(region: &Region) -> u64 {
    stock(region).rights(SKU).unwrap()
}

/// Three regions on the default config, 100 units restocked at the first,
/// replicated to all.
async fn three_regions(net: &ChannelNetwork) -> Vec<Region> {
    let regions: Vec<Region> = NAMES
        .iter()
        .map(|n| region_on(net, n, None, RegionConfig::default()))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stock(&regions[0]).inc(SKU, UNITS).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for r in &regions {
        assert_eq!(value(r), UNITS as i64, "restock replicated");
    }
    regions
}

/// One sale of `n` at `region`: whether it went through. A refusal must be
/// the typed rights error, and must come at once.
async fn sell(region: &Region, n: u64) -> bool {
    let before = Instant::now();
    let outcome = stock(region).try_dec(SKU, n).await;
    assert_eq!(Instant::now(), before, "a sale never waits on the network");
    match outcome {
        Ok(_) => true,
        Err(RegionError::Rights(RightsError::Insufficient { requested, .. })) => {
            assert_eq!(requested, n);
            false
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn assert_never_below_zero(regions: &[Region], sold: u64, seed: u64, when: &str) {
    for r in regions {
        let v = value(r);
        assert!(v >= 0, "seed {seed}: {when}: {} shows {v}", r.name());
    }
    assert!(sold <= UNITS, "seed {seed}: {when}: sold {sold} of {UNITS}");
}

/// Waits (virtual time) until every region shows `expected`.
async fn converge(regions: &[Region], expected: i64, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while regions.iter().any(|r| value(r) != expected) {
        let seen: Vec<i64> = regions.iter().map(value).collect();
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no convergence on {expected}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sells one unit at a time at `region` until `goal` are sold or
/// [`DRAIN_MAX`] passes; waits a little after each refusal (the engine is
/// asking for rights meanwhile). What it sold, and how long it took.
async fn drain(region: &Region, goal: u64) -> (u64, Duration) {
    let started = Instant::now();
    let mut sold = 0;
    while sold < goal && started.elapsed() < DRAIN_MAX {
        if sell(region, 1).await {
            sold += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (sold, started.elapsed())
}

async fn partitions_and_sales(seed: u64) {
    partitions_and_sales_on(seed, None).await;
}

/// Frames lost, duplicated and reordered on every link, from the restock
/// on: requests and grants travel as any frame does.
fn lossy() -> LinkFaults {
    LinkFaults::new()
        .loss(0.2)
        .duplicate(0.2)
        .reorder(0.2)
        .latency(Duration::from_millis(10))
        .jitter(Duration::from_millis(30))
}

async fn partitions_and_sales_on(seed: u64, faults: Option<LinkFaults>) {
    let net = ChannelNetwork::new(seed);
    let regions = three_regions(&net).await;
    if let Some(faults) = faults.clone() {
        net.set_faults_all(faults);
    }
    let mut rng = TestRng::new(seed);
    let mut sold = [0u64; 3];
    for step in 0..STEPS {
        match rng.below(8) {
            0 => net.partition(NAMES[rng.below(3) as usize], NAMES[rng.below(3) as usize]),
            1 => net.isolate(NAMES[rng.below(3) as usize]),
            2 => net.heal(NAMES[rng.below(3) as usize], NAMES[rng.below(3) as usize]),
            3 => net.heal_all(),
            _ => {}
        }
        // Sales at every region at the same instant (some of none, so
        // that units are left for after the heal).
        let wants: Vec<u64> = (0..3)
            .map(|_| {
                if rng.below(8) == 0 {
                    1 + rng.below(2)
                } else {
                    0
                }
            })
            .collect();
        let (a, b, c) = tokio::join!(
            sell(&regions[0], wants[0]),
            sell(&regions[1], wants[1]),
            sell(&regions[2], wants[2]),
        );
        for (i, ok) in [a, b, c].into_iter().enumerate() {
            if ok {
                sold[i] += wants[i];
            }
        }
        let total: u64 = sold.iter().sum();
        assert_never_below_zero(&regions, total, seed, &format!("step {step}"));
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
    }
    net.heal_all();
    let total: u64 = sold.iter().sum();
    let unsold = UNITS - total;
    converge(&regions, unsold as i64, seed).await;
    let held: u64 = regions.iter().map(rights).sum();
    assert_eq!(
        held, unsold,
        "seed {seed}: rights are exactly the units unsold"
    );

    // The region holding the fewest rights sells what is left, alone.
    let poorest = (0..3).min_by_key(|&i| rights(&regions[i])).unwrap();
    let drainer = &regions[poorest];
    let requested_before = drainer.stats().rights_requested;
    let (drained, took) = drain(drainer, unsold).await;
    let requests = drainer.stats().rights_requested - requested_before;
    let granted: u64 = regions.iter().map(|r| r.stats().rights_granted).sum();
    let lossy = if faults.is_some() {
        " (lossy links)"
    } else {
        ""
    };
    println!(
        "seed {seed}{lossy}: sold {sold:?} through partitions; {} then sold {drained} of {unsold} \
         in {took:?} with {requests} rights requests ({granted} units granted in all)",
        drainer.name()
    );
    assert!(
        drained * 100 >= unsold * 99,
        "seed {seed}: {} sold {drained} of the {unsold} left",
        drainer.name()
    );
    // Hidden repair: nothing refused on the wire, and rights moved in a
    // bounded number of round trips (halving: about log2 per grant).
    for r in &regions {
        assert_eq!(r.stats().rejected_frames, 0, "seed {seed}: {}", r.name());
    }
    let halvings = u64::from(u64::BITS - unsold.leading_zeros());
    assert!(
        requests <= 4 * halvings + 8,
        "seed {seed}: {requests} requests to drain {unsold}"
    );
    // Lost requests and grants are asked again after their timeout.
    let took_max = Duration::from_secs(if faults.is_some() { 30 } else { 10 });
    assert!(took <= took_max, "seed {seed}: draining took {took:?}");
    converge(&regions, (unsold - drained) as i64, seed).await;
    for r in &regions {
        r.shutdown().await;
    }
}

#[test]
fn rights_flow_to_demand_through_partitions_and_heals() {
    if std::env::var("RIGHTS_SEED").is_ok() {
        let seed = seed_from_env("RIGHTS_SEED", 0);
        return paused_runtime().block_on(partitions_and_sales(seed));
    }
    for seed in SEEDS {
        println!("RIGHTS_SEED={seed}");
        paused_runtime().block_on(partitions_and_sales(seed));
    }
}

/// The rights path under loss, duplication and reordering (issue 11): a
/// duplicated request or grant never makes up a unit (rights are exactly
/// the units unsold), a lost one is asked again, and demand is still met
/// from any single region. Seeded as above with `RIGHTS_LOSSY_SEED`.
#[test]
fn rights_flow_to_demand_over_lossy_duplicating_links() {
    if std::env::var("RIGHTS_LOSSY_SEED").is_ok() {
        let seed = seed_from_env("RIGHTS_LOSSY_SEED", 0);
        return paused_runtime().block_on(partitions_and_sales_on(seed, Some(lossy())));
    }
    for seed in LOSSY_SEEDS {
        println!("RIGHTS_LOSSY_SEED={seed}");
        paused_runtime().block_on(partitions_and_sales_on(seed, Some(lossy())));
    }
}

#[test]
fn a_region_without_rights_fails_fast_and_a_partitioned_region_sells_only_what_it_holds() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(7);
        let regions = three_regions(&net).await;
        let (tokyo, frankfurt) = (&regions[0], &regions[1]);

        // No rights at Frankfurt: refused at once, with what is known.
        let before = Instant::now();
        let refused = stock(frankfurt).try_dec(SKU, 1).await.unwrap_err();
        assert_eq!(Instant::now(), before);
        assert!(
            matches!(
                refused,
                RegionError::Rights(RightsError::Insufficient {
                    available_here: 0,
                    available_total: UNITS,
                    ..
                })
            ),
            "{refused:?}"
        );
        // Meanwhile the engine asked Tokyo, which granted half.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = rights(frankfurt);
        assert_eq!(held, UNITS / 2, "half of what Tokyo held");
        assert_eq!(frankfurt.stats().rights_requested, 1);
        assert_eq!(tokyo.stats().rights_granted, held);
        assert_eq!(rights(tokyo) + rights(frankfurt), UNITS);

        // Cut off, Frankfurt sells exactly what it holds, and asks no one.
        net.isolate(NAMES[1]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let requested = frankfurt.stats().rights_requested;
        let mut sold = 0;
        while sell(frankfurt, 1).await {
            sold += 1;
            assert!(value(frankfurt) >= 0);
        }
        assert_eq!(sold, held);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!sell(frankfurt, 1).await, "still cut off");
        assert_eq!(
            frankfurt.stats().rights_requested,
            requested,
            "no request into a partition"
        );
        // Tokyo, meanwhile, sells its own.
        assert!(sell(tokyo, 10).await);

        // Healed: the want recorded during the partition is asked for.
        net.heal_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while rights(frankfurt) == 0 {
            assert!(Instant::now() < deadline, "no rights after the heal");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sell(frankfurt, 1).await);
        let left = UNITS - held - 10 - 1;
        converge(&regions, left as i64, 7).await;
        for r in &regions {
            assert_eq!(r.stats().rejected_frames, 0, "{}", r.name());
            r.shutdown().await;
        }
    });
}
