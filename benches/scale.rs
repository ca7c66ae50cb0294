//! How the engine scales with regions and keys (issue 10): a full mesh of
//! `R` = 2, 4, 8, 16 regions on one in-process [`ChannelNetwork`] (perfect
//! links), every region writing `GCounter` increments over `K` = 1k, 100k
//! (and, opt-in, 1M) keys, until every region has applied every write.
//! Results and the explanation of the curve are in `BENCHMARKS.md`.
//!
//! Per point (`R`, `K`): `U = max(K, UPDATES_MIN)` updates in all, each
//! region writing `U / R` of them (region `w`'s write `i` increments key
//! `(w * U / R + i) % K`, so the writers cover every key and, when
//! `U > K`, several regions write the same key). Measured from the first
//! write until every region's applied vector holds every write:
//!
//! - wall time and CPU time (user + system of the process, from
//!   `/proc/self/stat`) per update, and per update *applied*, that is
//!   divided by `U * R` (every region applies every update, its own
//!   included);
//! - bytes the network carried per update (batches and acknowledgements);
//! - resident memory per region: the process's RSS (`/proc/self/statm`)
//!   after convergence minus before the regions were built, divided by `R`.
//!
//! Every point runs in a fresh child process (the bench binary runs itself
//! with `SCALE_BENCH_POINT=R,K`), so one point's freed memory, kept by the
//! allocator, does not hide the next one's growth.
//!
//! `cargo bench --bench scale` runs criterion's group (`scale/R-<r>`: the
//! `K` = 1k workload with `UPDATES_MIN` updates, for the rate's spread)
//! and then the curve, printed as a table. Environment:
//! - `SCALE_BENCH_1M=1` adds the `K` = 1M points (each takes from seconds
//!   at `R` = 2 to about a minute at `R` = 16 on the 2-core VM);
//! - `SCALE_BENCH_CURVE_ONLY=1` skips criterion's group;
//! - `SCALE_BENCH_REGIONS=2,4` and `SCALE_BENCH_KEYS=1000` pick points;
//! - `SCALE_BENCH_AE_DEFAULT=1` keeps the default anti-entropy interval
//!   (30 s) instead of an hour.

mod common;

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig, RegionStats};
use archipelago::transport::{ChannelNetwork, NetworkStats};
use criterion::{Criterion, SamplingMode, Throughput};

/// Fewest updates per point: small key sets still get a measurable run.
const UPDATES_MIN: u64 = 200_000;
/// Region counts of the curve.
const REGIONS: [usize; 4] = [2, 4, 8, 16];
/// Key counts of the curve (1M is opt-in: `SCALE_BENCH_1M=1`).
const KEYS: [u64; 2] = [1_000, 100_000];
const KEYS_LARGE: u64 = 1_000_000;
/// A writer yields to the scheduler after this many writes (as in
/// `benches/engine.rs`).
const YIELD_EVERY: u64 = 128;
/// Name of the table written.
const TABLE: &str = "hits";
/// Kernel clock ticks per second for `/proc/self/stat` (`getconf CLK_TCK`
/// is 100 on Linux x86-64).
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// Bytes per page for `/proc/self/statm`.
const PAGE_BYTES: u64 = 4096;
/// The anti-entropy interval of the bench's regions: longer than any run.
const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(3600);
/// Convergence is polled this often.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// What one point measured.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    regions: usize,
    keys: u64,
    updates: u64,
    wall: Duration,
    cpu: Duration,
    network: NetworkStats,
    rss_bytes: u64,
    /// Anti-entropy exchanges beyond the first one per pair: repairs the
    /// workload caused (zero when batches carried everything).
    extra_syncs: u64,
}

/// Defaults with room for a whole run in the outbox and no retransmission
/// on a perfect link (a loaded VM can delay an ack past 500 ms), as in
/// `benches/engine.rs`, and no periodic anti-entropy exchange during the
/// run: the bench measures the batch path, not repairs. (With the default
/// 30 s interval, a run longer than 30 s starts an exchange per pair while
/// writes are in flight: every bucket differs and whole tables cross, see
/// `BENCHMARKS.md`; `SCALE_BENCH_AE_DEFAULT=1` keeps the default.)
fn config() -> RegionConfig {
    let defaults = RegionConfig::default();
    let periodic = std::env::var("SCALE_BENCH_AE_DEFAULT").is_ok_and(|v| v == "1");
    RegionConfig {
        ack_timeout: Duration::from_secs(60),
        outbox_len_max: 1 << 24,
        outbox_bytes_max: 1 << 32,
        session_wait_max: Duration::from_secs(300),
        shutdown_wait_max: Duration::from_secs(60),
        anti_entropy_interval: if periodic {
            defaults.anti_entropy_interval
        } else {
            ANTI_ENTROPY_INTERVAL
        },
        ..defaults
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * PAGE_BYTES
}

/// User + system CPU time of the process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (in parentheses): state is field 3,
    // utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks: u64 = fields.iter().sum();
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS_PER_S)
}

fn check(stats: &RegionStats) {
    assert_eq!(stats.rejected_frames, 0, "{}: rejected frames", stats.name);
    assert_eq!(stats.outbox_overflows, 0, "{}: outbox overflow", stats.name);
    assert_eq!(stats.batches_dropped, 0, "{}: dropped batches", stats.name);
}

/// Waits until every region sees every other and the first exchanges
/// (started on connect) are over.
async fn connected(regions: &[Region]) {
    let want = regions.len() - 1;
    loop {
        let ready = regions.iter().all(|r| {
            let s = r.stats();
            s.peers.len() == want && s.peers.iter().all(|p| p.connected) && s.syncs_completed >= 1
        });
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until every region has applied `per_writer` writes of every
/// region.
async fn converged(regions: &[Region], per_writer: u64) {
    let replicas: Vec<_> = regions.iter().map(Region::replica).collect();
    loop {
        let done = regions.iter().all(|r| {
            let applied = r.applied();
            replicas.iter().all(|&w| applied.get(w) >= per_writer)
        });
        if done {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One point: `r` fresh regions in a full mesh, `updates` increments over
/// `keys` keys, until everyone has everything.
async fn run_point(r: usize, keys: u64, updates: u64) -> Point {
    let rss_before = rss_bytes();
    let net = ChannelNetwork::new(1);
    let regions: Vec<Region> = (0..r)
        .map(|i| {
            Region::builder(&format!("r{i:02}"))
                .transport(net.endpoint(&format!("r{i:02}")))
                .config(config())
                .build()
                .expect("inside a runtime")
        })
        .collect();
    connected(&regions).await;
    let syncs_before: u64 = regions.iter().map(|g| g.stats().syncs_completed).sum();
    let net_before = net.stats();
    let per_writer = updates / r as u64;
    let cpu_before = cpu_time();
    let started = Instant::now();
    let writers: Vec<_> = regions
        .iter()
        .enumerate()
        .map(|(w, region)| {
            let table = region.table::<u64, GCounter>(TABLE).expect("table");
            tokio::spawn(async move {
                let base = w as u64 * per_writer;
                for i in 0..per_writer {
                    table
                        .update(&((base + i) % keys), |c, ctx| {
                            c.apply(|c| c.inc(ctx.replica(), 1))
                        })
                        .await
                        .expect("write");
                    if i % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    converged(&regions, per_writer).await;
    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let network = diff(net.stats(), net_before);
    let rss_after = rss_bytes();
    // Outside the timing: every region holds every increment.
    let table = regions[r - 1].table::<u64, GCounter>(TABLE).expect("table");
    let mut total = 0;
    for key in 0..keys.min(per_writer * r as u64) {
        total += table
            .read(&key)
            .await
            .expect("read")
            .map_or(0, |c| c.value());
    }
    assert_eq!(total, per_writer * r as u64, "every increment arrived");
    let syncs_after: u64 = regions.iter().map(|g| g.stats().syncs_completed).sum();
    for region in &regions {
        check(&region.stats());
    }
    for region in &regions {
        region.shutdown().await;
    }
    Point {
        regions: r,
        keys,
        updates: per_writer * r as u64,
        wall,
        cpu,
        network,
        rss_bytes: rss_after.saturating_sub(rss_before),
        extra_syncs: syncs_after - syncs_before,
    }
}

fn diff(after: NetworkStats, before: NetworkStats) -> NetworkStats {
    NetworkStats {
        frames_delivered: after.frames_delivered - before.frames_delivered,
        bytes_delivered: after.bytes_delivered - before.bytes_delivered,
        ..NetworkStats::default()
    }
}

fn updates_for(keys: u64) -> u64 {
    keys.max(UPDATES_MIN)
}

/// Child mode: measures one point and prints it as one line of numbers.
fn child(point: &str) {
    let mut parts = point.split(',');
    let r: usize = parts.next().and_then(|v| v.parse().ok()).expect("R");
    let keys: u64 = parts.next().and_then(|v| v.parse().ok()).expect("K");
    let p = common::runtime().block_on(run_point(r, keys, updates_for(keys)));
    println!(
        "POINT {} {} {} {} {} {} {} {} {}",
        p.regions,
        p.keys,
        p.updates,
        p.wall.as_nanos(),
        p.cpu.as_nanos(),
        p.network.bytes_delivered,
        p.network.frames_delivered,
        p.rss_bytes,
        p.extra_syncs,
    );
}

fn parse(line: &str) -> Option<Point> {
    let v: Vec<u128> = line
        .strip_prefix("POINT ")?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 9).then(|| Point {
        regions: v[0] as usize,
        keys: v[1] as u64,
        updates: v[2] as u64,
        wall: Duration::from_nanos(v[3] as u64),
        cpu: Duration::from_nanos(v[4] as u64),
        network: NetworkStats {
            bytes_delivered: v[5] as u64,
            frames_delivered: v[6] as u64,
            ..NetworkStats::default()
        },
        rss_bytes: v[7] as u64,
        extra_syncs: v[8] as u64,
    })
}

fn list<T: std::str::FromStr + Copy>(var: &str, default: &[T]) -> Vec<T> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<T>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Runs every point in a child process and prints the curve.
fn curve() {
    let mut keys = list("SCALE_BENCH_KEYS", &KEYS);
    if std::env::var("SCALE_BENCH_1M").is_ok_and(|v| v == "1") && !keys.contains(&KEYS_LARGE) {
        keys.push(KEYS_LARGE);
    }
    let regions = list("SCALE_BENCH_REGIONS", &REGIONS);
    let exe = std::env::current_exe().expect("bench binary");
    println!(
        "\n== scale: full mesh, GCounter increments; U = max(K, {UPDATES_MIN}) updates; ns per update (all regions) and per apply (U x R) =="
    );
    println!(
        "{:>3} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>6}",
        "R",
        "K",
        "U",
        "wall s",
        "wall/upd",
        "cpu/upd",
        "cpu/apply",
        "B/upd",
        "frames",
        "RSS/region",
        "syncs"
    );
    for &k in &keys {
        for &r in &regions {
            let output = Command::new(&exe)
                .env("SCALE_BENCH_POINT", format!("{r},{k}"))
                .output()
                .expect("child");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let Some(p) = stdout.lines().find_map(parse) else {
                println!(
                    "{r:>3} {k:>8}: failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                continue;
            };
            let u = p.updates as f64;
            println!(
                "{:>3} {:>8} {:>8} {:>9.3} {:>8.0}ns {:>8.0}ns {:>8.0}ns {:>10.2} {:>10} {:>9.1} MB {:>6}",
                p.regions,
                p.keys,
                p.updates,
                p.wall.as_secs_f64(),
                p.wall.as_nanos() as f64 / u,
                p.cpu.as_nanos() as f64 / u,
                p.cpu.as_nanos() as f64 / (u * p.regions as f64),
                p.network.bytes_delivered as f64 / u,
                p.network.frames_delivered,
                p.rss_bytes as f64 / p.regions as f64 / 1e6,
                p.extra_syncs,
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let keys = KEYS[0];
    let updates = updates_for(keys);
    let mut g = c.benchmark_group("scale");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(updates));
    for r in list("SCALE_BENCH_REGIONS", &REGIONS) {
        g.bench_function(format!("R-{r}"), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += black_box(rt.block_on(run_point(r, keys, updates))).wall;
                }
                total
            });
        });
    }
    g.finish();
}

fn main() {
    if let Ok(point) = std::env::var("SCALE_BENCH_POINT") {
        child(&point);
        return;
    }
    if !std::env::var("SCALE_BENCH_CURVE_ONLY").is_ok_and(|v| v == "1") {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
    curve();
}
