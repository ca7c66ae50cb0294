//! What one writer per key costs: homed operations at the home and
//! forwarded to it, and the rights path of a bounded counter (issue 11).
//! Results are in `BENCHMARKS.md`.
//!
//! Two regions, `tokyo` and `frankfurt`, on one in-process
//! [`ChannelNetwork`] with perfect links, default `RegionConfig`, on a
//! multi-thread tokio runtime with 2 worker threads:
//!
//! - `homed/at-home`: `apply` of a deposit at the key's home (one local
//!   write, replicated as any other).
//! - `homed/forwarded`: the same deposit made at the other region: the
//!   request travels to the home, is applied there, and the answer (with
//!   the home's token) comes back. One operation at a time: this is the
//!   round trip, not throughput.
//! - `homed/read-at-home-forwarded`: a linearizable read asked of the home.
//! - `bounded/try-dec-with-rights`: a sale from rights held here (no
//!   network).
//! - `bounded/grant-round-trip`: a region holding no rights is refused a
//!   sale (at once), and the time until the engine's request has brought a
//!   grant back and the sale goes through.
//!
//! Run with `cargo bench --bench homed` (under a minute).

mod common;

use std::time::{Duration, Instant};

use archipelago::region::{HomedTable, HomedValue, Region, RegionConfig};
use archipelago::transport::ChannelNetwork;
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Deposit(u64);

#[derive(Debug, Serialize, Deserialize)]
struct Never;

impl HomedValue for Account {
    type Op = Deposit;
    type Rejection = Never;
    fn apply(&mut self, Deposit(n): Deposit) -> Result<(), Never> {
        self.balance += n;
        Ok(())
    }
}

const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";
/// The key homed at Tokyo.
const KEY: &str = "ap-northeast/acct";

fn accounts(region: &Region) -> HomedTable<String, Account> {
    region
        .homed_table::<String, Account>("accounts", |key: &String| {
            key.split('/').next().unwrap_or_default().to_owned()
        })
        .unwrap()
}

/// Tokyo and Frankfurt, connected, with the accounts table declared.
async fn two_regions() -> (Region, Region) {
    let net = ChannelNetwork::new(1);
    let build = |name: &str| {
        Region::builder(name)
            .transport(net.endpoint(name))
            .config(RegionConfig::default())
            .build()
            .unwrap()
    };
    let (tokyo, frankfurt) = (build(TOKYO), build(FRANKFURT));
    accounts(&tokyo);
    accounts(&frankfurt);
    // Connected once a forward goes through.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accounts(&frankfurt).apply(KEY, Deposit(0)).await.is_err() {
        assert!(Instant::now() < deadline, "the regions never met");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (tokyo, frankfurt)
}

/// `iters` runs of `op`, one after the other, on `rt`: their total time.
fn timed<F, Fut>(rt: &Runtime, iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            op().await;
        }
        started.elapsed()
    })
}

fn homed(c: &mut Criterion) {
    let rt = common::runtime();
    let (tokyo, frankfurt) = rt.block_on(two_regions());
    let (at_home, away) = (accounts(&tokyo), accounts(&frankfurt));
    let mut group = c.benchmark_group("homed");
    group.bench_function("at-home", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                at_home.apply(KEY, Deposit(1)).await.unwrap();
            })
        });
    });
    group.bench_function("forwarded", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                away.apply(KEY, Deposit(1)).await.unwrap();
            })
        });
    });
    group.bench_function("read-at-home-forwarded", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                away.read_at_home(KEY).await.unwrap();
            })
        });
    });
    group.finish();
    rt.block_on(async {
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

fn bounded(c: &mut Criterion) {
    let rt = common::runtime();
    let (tokyo, frankfurt) = rt.block_on(two_regions());
    let stock = |r: &Region| r.bounded_table::<String, 0>("stock").unwrap();
    let mut group = c.benchmark_group("bounded");
    rt.block_on(async {
        stock(&tokyo).inc("sku", u64::MAX / 4).await.unwrap();
    });
    group.bench_function("try-dec-with-rights", |b| {
        let here = stock(&tokyo);
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                here.try_dec("sku", 1).await.unwrap();
            })
        });
    });
    // Each iteration: a fresh key restocked at Tokyo only, replicated to
    // Frankfurt, which holds no rights for it; timed from Frankfurt's
    // refused sale to its first sale that goes through.
    group.sample_size(20);
    group.bench_function("grant-round-trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let key = format!("sku-{}", ulid::Ulid::new());
                    stock(&tokyo).inc(&key, 1000).await.unwrap();
                    while stock(&frankfurt).value(&key).unwrap().unwrap_or(0) < 1000 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    let started = Instant::now();
                    let there = stock(&frankfurt);
                    assert!(there.try_dec(&key, 1).await.is_err(), "no rights yet");
                    while there.try_dec(&key, 1).await.is_err() {
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    });
    group.finish();
    rt.block_on(async {
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
    });
}

criterion_group!(benches, homed, bounded);
criterion_main!(benches);
