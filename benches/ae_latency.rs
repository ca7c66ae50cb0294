//! Local write latency while a large anti-entropy transfer runs (issue 10,
//! item 2: "local write p99 latency idle vs while a 1M-key anti-entropy
//! transfer runs: target ≤ 2× idle"). Results are in `BENCHMARKS.md`.
//!
//! One run, on the default [`RegionConfig`] (longer session waits only):
//! 1. region `a` writes one `GCounter` increment on each of `K` keys
//!    (default 1M) while it has no peer, so its log keeps none of them;
//! 2. region `b` joins the same [`ChannelNetwork`] behind a partition: both
//!    run idle, and one writer per region makes `WRITES_PER_TICK` writes
//!    every `TICK` for `IDLE` (the idle baseline);
//! 3. the partition heals: `b` has none of `a`'s writes and `a`'s log
//!    holds none, so anti-entropy ships `a`'s `K` states to `b` (and `b`'s
//!    few back); the same writers keep writing until `b` holds every one of
//!    `a`'s writes and `a` every one of `b`'s (the transfer's duration).
//!
//! Each write's latency is the time its `update` call took (the writer
//! wakes on a timer, so the latency is the write's own: a write blocked
//! behind the engine's lock shows in full). Latencies are sorted and
//! p50/p99/p99.9/max taken per region and phase; the summary prints the
//! ratio p99 during / p99 idle. The "late" figure is the worst delay of a
//! tick past its schedule: the writer's task could not run at all (both
//! worker threads busy), which the per-write latency does not show.
//!
//! `cargo bench --bench ae_latency` (about 20 s with 1M keys). Environment:
//! `AE_LATENCY_KEYS` (default 1M), `AE_LATENCY_RUNS` (default 1).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig, RegionStats, Table};
use archipelago::transport::ChannelNetwork;

/// Keys `a` holds when `b` joins.
const KEYS: u64 = 1_000_000;
/// The writers' period and writes per period: 4k writes/s per region.
const TICK: Duration = Duration::from_millis(1);
const WRITES_PER_TICK: u64 = 4;
/// Length of the idle baseline.
const IDLE: Duration = Duration::from_secs(3);
/// Keys the steady writers touch (a hot set inside `a`'s keys).
const WRITER_KEYS: u64 = 1000;
/// The loader yields to the scheduler after this many writes.
const YIELD_EVERY: u64 = 128;
/// Longest the transfer may take before the run gives up.
const TRANSFER_MAX: Duration = Duration::from_secs(300);
const TABLE: &str = "hits";

fn config() -> RegionConfig {
    RegionConfig {
        session_wait_max: Duration::from_secs(300),
        shutdown_wait_max: Duration::from_secs(30),
        ..RegionConfig::default()
    }
}

fn region(net: &ChannelNetwork, name: &str) -> Region {
    Region::builder(name)
        .transport(net.endpoint(name))
        .config(config())
        .build()
        .expect("inside a runtime")
}

/// One write's start (since the run's origin) and latency.
type Sample = (Duration, Duration);

/// A writer at steady rate until `stop`: every sample, and each tick's
/// lateness past its schedule.
async fn steady_writer(
    table: Table<u64, GCounter>,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut samples = Vec::new();
    let mut late = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let scheduled = tick.tick().await.into_std();
        let woke = Instant::now();
        late.push((woke - origin, woke.saturating_duration_since(scheduled)));
        for _ in 0..WRITES_PER_TICK {
            let started = Instant::now();
            table
                .update(&(i % WRITER_KEYS), |c, ctx| {
                    c.apply(|c| c.inc(ctx.replica(), 1))
                })
                .await
                .expect("write");
            samples.push((started - origin, started.elapsed()));
            i += 1;
        }
    }
    (samples, late)
}

/// p50, p99, p99.9 and max of the latencies of `samples` started in
/// `[from, to)`, and their count.
/// How many samples, and their p50, p99, p99.9 and max.
type Percentiles = (usize, [Duration; 4]);

/// One region's figures: its name, idle and during percentiles, and the
/// worst tick lateness idle and during.
type Row = (String, Percentiles, Percentiles, Duration, Duration);

fn percentiles(samples: &[Sample], from: Duration, to: Duration) -> Percentiles {
    let mut v: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, d)| *d)
        .collect();
    v.sort_unstable();
    if v.is_empty() {
        return (0, [Duration::ZERO; 4]);
    }
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (v.len(), [at(0.50), at(0.99), at(0.999), v[v.len() - 1]])
}

fn check(stats: &RegionStats) {
    assert_eq!(stats.rejected_frames, 0, "{}: rejected frames", stats.name);
}

/// What one run measured.
struct Run {
    load: Duration,
    transfer: Duration,
    /// Per region: name, idle and during percentiles, worst tick lateness
    /// idle and during.
    rows: Vec<Row>,
    sync_states_received: u64,
    sync_bytes: u64,
}

async fn run(keys: u64) -> Run {
    let net = ChannelNetwork::new(1);
    net.partition("a", "b");
    let a = region(&net, "a");
    let table_a = a.table::<u64, GCounter>(TABLE).expect("table");
    let load_started = Instant::now();
    for k in 0..keys {
        table_a
            .update(&k, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .expect("load");
        if k % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
    }
    let load = load_started.elapsed();
    let b = region(&net, "b");
    let table_b = b.table::<u64, GCounter>(TABLE).expect("table");
    // Let both engines settle (their first ticks) before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer_a = tokio::spawn(steady_writer(table_a, origin, Arc::clone(&stop)));
    let writer_b = tokio::spawn(steady_writer(table_b, origin, Arc::clone(&stop)));
    tokio::time::sleep(IDLE).await;

    let healed = origin.elapsed();
    let b_before = b.stats();
    let (ra, rb) = (a.replica(), b.replica());
    // `b`'s idle-phase writes, which `a` must receive.
    let b_seq = b.applied().get(rb);
    net.heal("a", "b");
    let deadline = Instant::now() + TRANSFER_MAX;
    // Done once `b` holds `a`'s writes (its log may bring them by batches
    // first) and merged the whole transfer, and `a` holds `b`'s.
    let merged =
        |b: &Region| b.stats().sync_states_received - b_before.sync_states_received >= keys;
    while b.applied().get(ra) < keys || a.applied().get(rb) < b_seq || !merged(&b) {
        assert!(
            Instant::now() < deadline,
            "transfer took over {TRANSFER_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = origin.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (samples_a, late_a) = writer_a.await.expect("writer a");
    let (samples_b, late_b) = writer_b.await.expect("writer b");
    let b_after = b.stats();
    check(&a.stats());
    check(&b_after);
    let worst = |late: &[Sample], from: Duration, to: Duration| {
        late.iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    let rows = [("a", &samples_a, &late_a), ("b", &samples_b, &late_b)]
        .into_iter()
        .map(|(name, samples, late)| {
            (
                name.to_owned(),
                percentiles(samples, Duration::ZERO, healed),
                percentiles(samples, healed, done),
                worst(late, Duration::ZERO, healed),
                worst(late, healed, done),
            )
        })
        .collect();
    let sync_bytes = b_after
        .peers
        .iter()
        .map(|p| p.sync_bytes_received)
        .sum::<u64>()
        - b_before
            .peers
            .iter()
            .map(|p| p.sync_bytes_received)
            .sum::<u64>();
    let run = Run {
        load,
        transfer: done - healed,
        rows,
        sync_states_received: b_after.sync_states_received - b_before.sync_states_received,
        sync_bytes,
    };
    a.shutdown().await;
    b.shutdown().await;
    run
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let var = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let keys = var("AE_LATENCY_KEYS", KEYS);
    let runs = var("AE_LATENCY_RUNS", 1);
    let rt = common::runtime();
    println!(
        "\n== ae_latency: {keys} keys at a, b joins; {WRITES_PER_TICK} writes every {TICK:?} per region; latency of each update call, µs =="
    );
    for n in 0..runs {
        let r = rt.block_on(run(keys));
        println!(
            "run {n}: load {:.2} s; transfer {:.3} s ({} states, {:.1} MB received by b)",
            r.load.as_secs_f64(),
            r.transfer.as_secs_f64(),
            r.sync_states_received,
            r.sync_bytes as f64 / 1e6,
        );
        for (name, idle, during, late_idle, late_during) in &r.rows {
            let fmt = |(n, p): &Percentiles| {
                format!(
                    "n={n:<6} p50 {:>8.1} p99 {:>9.1} p99.9 {:>9.1} max {:>9.1}",
                    us(p[0]),
                    us(p[1]),
                    us(p[2]),
                    us(p[3])
                )
            };
            println!(
                "  {name} idle   {}  worst tick late {:>9.1}",
                fmt(idle),
                us(*late_idle)
            );
            println!(
                "  {name} during {}  worst tick late {:>9.1}",
                fmt(during),
                us(*late_during)
            );
            println!(
                "  {name} p99 during / idle = {:.2}x (target <= 2x)",
                us(during.1[1]) / us(idle.1[1]).max(f64::MIN_POSITIVE)
            );
        }
    }
}
