//! End-to-end replication throughput of the region engine, against a raw
//! tokio channel. Results and the profile are in `BENCHMARKS.md`.
//!
//! Two regions, `a` and `b`, on one in-process [`ChannelNetwork`] with
//! perfect links (`ChannelNetwork::new(seed)`, default `LinkFaults`), on a
//! multi-thread tokio runtime with 2 worker threads:
//!
//! - `engine/keys-1000`: `N` increments of a `GCounter` table at `a`, write
//!   `i` on key `i % 1000`, timed from the first write until `b` has applied
//!   the last one (a session read at `b` that waits, on the engine's applied
//!   watch, for `a`'s last write token). Fresh regions for every iteration,
//!   built and connected (first anti-entropy exchange over) outside the
//!   timing; afterwards `b`'s values are checked to sum to `N`.
//! - `engine/hot-key`: the same with every write on key 0.
//! - `local-write/keys-1000`: the write path alone: the same writes at a
//!   region with no transport (no engine task, nothing sent).
//! - `channel/u64` and `channel/vec-<len>`: the baseline. One task sends `N`
//!   messages through a bounded `tokio::sync::mpsc` channel (capacity 1024,
//!   a batch's worth) to another task on the same runtime: a `u64`, or a
//!   `Vec<u8>` as long as one update's key + delta (one allocation each).
//!
//! The writer yields to the scheduler every [`YIELD_EVERY`] writes, as the
//! channel's sender does once tokio's cooperative budget (128 operations)
//! runs out: a writer that never yields would keep `a`'s engine task, woken
//! into its worker's LIFO slot, off the CPU until it finished.
//!
//! After criterion's groups, `summary` prints the median rates over every
//! iteration run (warm-up included), the engine / channel ratio, and the
//! bytes the network carried per update against the mean size of one
//! update's encoded key + delta.
//!
//! Run with `cargo bench --bench engine` (about a minute);
//! `ENGINE_BENCH_PROTOCOL=6` pins the regions to engine protocol 6 (batches
//! in the older layout), for a before/after of protocol 7's with one binary;
//! `ENGINE_BENCH_THREAD=1` runs each region's engine on a thread of its own
//! (`RegionConfig::engine_thread`).
//!
//! Profiling: `ENGINE_BENCH_PROFILE=keys` (or `hot`, `local`, `channel`)
//! skips criterion and runs that workload `ENGINE_BENCH_RUNS` times
//! (default 5) with `ENGINE_BENCH_N` updates (default `N`), the writer
//! yielding every `ENGINE_BENCH_YIELD` writes, printing phase timings and
//! engine counters: run the bench binary (`cargo bench --bench engine
//! --no-run` prints its path) under `perf record -e cpu-clock --call-graph
//! dwarf` or `valgrind --tool=callgrind`.

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use archipelago::clock::ReplicaId;
use archipelago::crdt::GCounter;
use archipelago::region::{PROTOCOL_VERSION, Region, RegionConfig, RegionStats};
use archipelago::session::{Session, SessionToken};
use archipelago::transport::{ChannelNetwork, NetworkStats};
use archipelago::wire;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use tokio::sync::mpsc;

/// Updates per iteration.
const N: u64 = 500_000;
/// Keys of the `keys-1000` workload.
const KEYS: u64 = 1000;
/// The writer yields to the scheduler after this many writes (profile mode:
/// `ENGINE_BENCH_YIELD`).
const YIELD_EVERY: u64 = 128;
/// Capacity of the baseline channel.
const CHANNEL_CAPACITY: usize = 1024;
/// Name of the table written.
const TABLE: &str = "hits";

/// Which keys the writer increments.
#[derive(Clone, Copy, Debug)]
enum Keys {
    /// `i % KEYS` for write `i`.
    Spread,
    /// Always key 0.
    Hot,
}

impl Keys {
    fn name(self) -> &'static str {
        match self {
            Keys::Spread => "keys-1000",
            Keys::Hot => "hot-key",
        }
    }

    fn key(self, i: u64) -> u64 {
        match self {
            Keys::Spread => i % KEYS,
            Keys::Hot => 0,
        }
    }

    fn count(self) -> u64 {
        match self {
            Keys::Spread => KEYS,
            Keys::Hot => 1,
        }
    }
}

/// What one engine iteration measured.
#[derive(Clone, Copy, Debug)]
struct EngineRun {
    /// First write to the last write returning at `a`.
    writes_done: Duration,
    /// First write until `b` has applied the last one.
    elapsed: Duration,
    /// Traffic `a` → `b` (batches) during the timed part.
    a_to_b: NetworkStats,
    /// Traffic `b` → `a` (acknowledgements), until `a` had every ack.
    b_to_a: NetworkStats,
    /// `a`'s replica id (its length on the wire varies).
    a_replica: ReplicaId,
    /// `a`'s (batches sent, batches applied).
    a_stats: (u64, u64),
    /// `b`'s (batches sent, batches applied).
    b_stats: (u64, u64),
}

/// Every iteration's figures, by benchmark, for the summary.
static ENGINE_RUNS: Mutex<BTreeMap<String, Vec<EngineRun>>> = Mutex::new(BTreeMap::new());
static LOCAL_RUNS: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());
static CHANNEL_RUNS: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());

/// The engine protocol the regions speak: `ENGINE_BENCH_PROTOCOL`, else
/// this build's newest ([`PROTOCOL_VERSION`]). `6` measures batches in
/// the layout before protocol 7's (origin and tables named per entry) with
/// the same binary.
fn protocol() -> u16 {
    std::env::var("ENGINE_BENCH_PROTOCOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PROTOCOL_VERSION)
}

/// `ENGINE_BENCH_THREAD=1`: each region's engine on a thread of its own
/// ([`RegionConfig::engine_thread`]) instead of a task on the bench's
/// runtime.
fn engine_thread() -> bool {
    std::env::var("ENGINE_BENCH_THREAD").is_ok_and(|v| v == "1")
}

fn region(net: &ChannelNetwork, name: &str) -> Region {
    Region::builder(name)
        .transport(net.endpoint(name))
        .config(RegionConfig {
            protocol_version_max: protocol(),
            engine_thread: engine_thread(),
            ..common::roomy_config()
        })
        .build()
        .expect("inside a runtime")
}

/// (batches sent, batches applied) of a region, plus checks that nothing
/// went through the slow paths.
fn counters(stats: &RegionStats) -> (u64, u64) {
    assert_eq!(stats.rejected_frames, 0, "{}: rejected frames", stats.name);
    assert_eq!(stats.outbox_overflows, 0, "{}: outbox overflow", stats.name);
    assert_eq!(stats.batches_dropped, 0, "{}: dropped batches", stats.name);
    (stats.batches_sent, stats.batches_applied)
}

/// One iteration: fresh regions, `n` writes at `a`, until `b` has them all.
async fn engine_run(n: u64, keys: Keys, yield_every: u64) -> EngineRun {
    let net = ChannelNetwork::new(1);
    let a = region(&net, "a");
    let b = region(&net, "b");
    let table_a = a.table::<u64, GCounter>(TABLE).expect("table");
    let table_b = b.table::<u64, GCounter>(TABLE).expect("table");
    common::connected(&[&a, &b]).await;
    let a_to_b_before = net.link_stats("a", "b");
    let b_to_a_before = net.link_stats("b", "a");

    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let mut last = SessionToken::new();
        for i in 0..n {
            last = table_a
                .update(&keys.key(i), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .expect("write");
            if i % yield_every == yield_every - 1 {
                tokio::task::yield_now().await;
            }
        }
        let writes_done = started.elapsed();
        let mut session = Session::new();
        session.record_write(&last);
        table_b
            .read_session(&keys.key(n - 1), &mut session)
            .await
            .expect("b catches up");
        (writes_done, started.elapsed(), table_b)
    });
    let (writes_done, elapsed, table_b) = writer.await.expect("writer");
    let a_to_b = diff(net.link_stats("a", "b"), a_to_b_before);

    // Outside the timing: every increment arrived, and `a` has every ack.
    let mut total = 0;
    for key in 0..keys.count() {
        total += table_b
            .read(&key)
            .await
            .expect("read")
            .map_or(0, |c| c.value());
    }
    assert_eq!(total, n, "b holds every increment");
    a.shutdown().await;
    let b_to_a = diff(net.link_stats("b", "a"), b_to_a_before);
    let a_stats = counters(&a.stats());
    let b_stats = counters(&b.stats());
    assert_eq!(a_stats.0, b_stats.1, "every batch sent once and applied");
    b.shutdown().await;
    EngineRun {
        writes_done,
        elapsed,
        a_to_b,
        b_to_a,
        a_replica: a.replica(),
        a_stats,
        b_stats,
    }
}

/// The writer alone: `n` writes at a region without a transport (no
/// engine task, no peer). Such a region logs nothing for peers, so this is
/// the table update and the delta's encoding, without the outbox append.
async fn local_run(n: u64, keys: Keys, yield_every: u64) -> Duration {
    let config = common::roomy_config();
    let a = Region::builder("a")
        .config(config)
        .build()
        .expect("inside a runtime");
    let table = a.table::<u64, GCounter>(TABLE).expect("table");
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0..n {
            table
                .update(&keys.key(i), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .expect("write");
            if i % yield_every == yield_every - 1 {
                tokio::task::yield_now().await;
            }
        }
        started.elapsed()
    });
    writer.await.expect("writer")
}

fn diff(after: NetworkStats, before: NetworkStats) -> NetworkStats {
    NetworkStats {
        frames_sent: after.frames_sent - before.frames_sent,
        frames_delivered: after.frames_delivered - before.frames_delivered,
        bytes_sent: after.bytes_sent - before.bytes_sent,
        bytes_delivered: after.bytes_delivered - before.bytes_delivered,
        ..NetworkStats::default()
    }
}

/// One baseline iteration: `n` messages from one task to another.
async fn channel_run<T, F>(n: u64, make: F) -> Duration
where
    T: Send + 'static,
    F: Fn(u64) -> T + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<T>(CHANNEL_CAPACITY);
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while let Some(message) = rx.recv().await {
            black_box(message);
            received += 1;
        }
        received
    });
    let sender = tokio::spawn(async move {
        for i in 0..n {
            tx.send(make(i)).await.expect("receiver alive");
        }
    });
    sender.await.expect("sender");
    let received = receiver.await.expect("receiver");
    let elapsed = started.elapsed();
    assert_eq!(received, n);
    elapsed
}

/// Mean bytes of one update's encoded key and encoded delta over the
/// workload's `N` writes by `replica`, as a batch carries them (bare
/// bodies, no version byte): write `i` increments `keys.key(i)` to
/// `i / keys.count() + 1`.
fn update_bytes(keys: Keys, replica: ReplicaId) -> (f64, f64) {
    let (mut key_bytes, mut delta_bytes) = (0, 0);
    for i in 0..N {
        let mut counter = GCounter::new();
        let delta = counter.inc(replica, i / keys.count() + 1);
        // Inside a batch, keys and deltas are bare bodies: no version byte.
        key_bytes += wire::encode(&keys.key(i)).expect("key").len() - 1;
        delta_bytes += wire::encode(&delta).expect("delta").len() - 1;
    }
    (key_bytes as f64 / N as f64, delta_bytes as f64 / N as f64)
}

/// Ten samples of whole iterations (`Flat`: an engine iteration takes about
/// a second, so most samples are one iteration).
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    measurement: Duration,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measurement)
        .throughput(Throughput::Elements(N));
    g
}

fn record<T>(runs: &Mutex<BTreeMap<String, Vec<T>>>, name: &str, run: T) {
    runs.lock()
        .expect("lock")
        .entry(name.to_owned())
        .or_default()
        .push(run);
}

fn engine(c: &mut Criterion) {
    let rt = common::runtime();
    let mut g = group(c, "engine", Duration::from_secs(12));
    for keys in [Keys::Spread, Keys::Hot] {
        g.bench_function(keys.name(), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let run = rt.block_on(engine_run(N, keys, YIELD_EVERY));
                    total += run.elapsed;
                    record(&ENGINE_RUNS, keys.name(), run);
                }
                total
            });
        });
    }
    g.finish();
}

fn local(c: &mut Criterion) {
    let rt = common::runtime();
    let mut g = group(c, "local-write", Duration::from_secs(4));
    let keys = Keys::Spread;
    g.bench_function(keys.name(), |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let elapsed = rt.block_on(local_run(N, keys, YIELD_EVERY));
                total += elapsed;
                record(&LOCAL_RUNS, keys.name(), elapsed);
            }
            total
        });
    });
    g.finish();
}

fn channel(c: &mut Criterion) {
    let rt = common::runtime();
    let mut g = group(c, "channel", Duration::from_secs(3));
    let (key, delta) = update_bytes(Keys::Spread, ReplicaId::from_name("a"));
    let len = (key + delta).round() as usize;
    for name in ["u64".to_owned(), format!("vec-{len}")] {
        let vec = name != "u64";
        g.bench_function(name.as_str(), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let elapsed = if vec {
                        rt.block_on(channel_run(N, move |i| vec![i as u8; len]))
                    } else {
                        rt.block_on(channel_run(N, |i| i))
                    };
                    total += elapsed;
                    record(&CHANNEL_RUNS, &name, elapsed);
                }
                total
            });
        });
    }
    g.finish();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => values[len / 2],
        len => (values[len / 2 - 1] + values[len / 2]) / 2.0,
    }
}

/// Updates (or messages) per second.
fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Median, min and max rate of `durations`, in M/s.
fn rates(durations: impl Iterator<Item = Duration>) -> (f64, f64, f64) {
    let r: Vec<f64> = durations.map(|d| rate(N, d) / 1e6).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(0.0, f64::max);
    (median(r), lo, hi)
}

/// Prints rates, ratios and bytes per update from every recorded iteration.
fn summary() {
    let engine_runs = ENGINE_RUNS.lock().expect("lock").clone();
    let local_runs = LOCAL_RUNS.lock().expect("lock").clone();
    let channel_runs = CHANNEL_RUNS.lock().expect("lock").clone();
    println!(
        "\n== engine bench summary: {N} updates per iteration, engine protocol {}, engine {}; M/s as median [min–max] over every iteration, warm-up included ==",
        protocol(),
        if engine_thread() {
            "on its own thread"
        } else {
            "as a task"
        },
    );
    let (mut channel_u64, mut channel_vec) = (f64::NAN, f64::NAN);
    for (name, runs) in &channel_runs {
        let (m, lo, hi) = rates(runs.iter().copied());
        if name == "u64" {
            channel_u64 = m;
        } else {
            channel_vec = m;
        }
        println!(
            "channel/{name:<11} {m:7.3} M msgs/s    [{lo:.3}–{hi:.3}], {} iterations",
            runs.len()
        );
    }
    for (name, runs) in &local_runs {
        let (m, lo, hi) = rates(runs.iter().copied());
        println!(
            "local-write/{name:<7} {m:7.3} M writes/s  [{lo:.3}–{hi:.3}], {} iterations (no transport, no engine task)",
            runs.len()
        );
    }
    for (name, runs) in &engine_runs {
        let keys = if name == Keys::Hot.name() {
            Keys::Hot
        } else {
            Keys::Spread
        };
        let (m, lo, hi) = rates(runs.iter().map(|r| r.elapsed));
        let (returned, _, _) = rates(runs.iter().map(|r| r.writes_done));
        println!(
            "engine/{name:<12} {m:7.3} M updates/s [{lo:.3}–{hi:.3}], {} iterations; writes returned at a at {returned:.3} M/s; engine / channel: {:.3} (u64), {:.3} (vec)",
            runs.len(),
            m / channel_u64,
            m / channel_vec,
        );
        let last = runs.last().expect("at least one run");
        let (key_len, delta_len) = update_bytes(keys, last.a_replica);
        let sum = |f: fn(&EngineRun) -> u64| runs.iter().map(f).sum::<u64>() as f64;
        let updates = N as f64 * runs.len() as f64;
        let a_to_b = sum(|r| r.a_to_b.bytes_delivered) / updates;
        let b_to_a = sum(|r| r.b_to_a.bytes_delivered) / updates;
        let frames = sum(|r| r.a_to_b.frames_delivered);
        println!(
            "  bytes/update on the network: a→b {a_to_b:.2} B + b→a (acks) {b_to_a:.3} B = {:.2} B; {:.0} updates per batch frame; one update's encoded key + delta = {key_len:.2} + {delta_len:.2} = {:.2} B (mean over the workload)",
            a_to_b + b_to_a,
            updates / frames,
            key_len + delta_len,
        );
    }
}

/// `ENGINE_BENCH_PROFILE=keys|hot|local|channel`: one workload alone, for
/// a profiler. `ENGINE_BENCH_RUNS` (default 5), `ENGINE_BENCH_N` (default
/// `N`) and `ENGINE_BENCH_YIELD` (default `YIELD_EVERY`) override.
fn profile(workload: &str) {
    let var = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = var("ENGINE_BENCH_RUNS", 5);
    let n = var("ENGINE_BENCH_N", N);
    let yield_every = var("ENGINE_BENCH_YIELD", YIELD_EVERY).max(1);
    let keys = if workload == "hot" {
        Keys::Hot
    } else {
        Keys::Spread
    };
    let rt = common::runtime();
    for _ in 0..runs {
        match workload {
            "channel" => {
                let d = rt.block_on(channel_run(n, |i| i));
                println!("channel/u64: {:.3} M msgs/s", rate(n, d) / 1e6);
            }
            "local" => {
                let d = rt.block_on(local_run(n, keys, yield_every));
                println!(
                    "local-write/{}: {:.3} M writes/s ({d:?})",
                    keys.name(),
                    rate(n, d) / 1e6
                );
            }
            _ => {
                let r = rt.block_on(engine_run(n, keys, yield_every));
                println!(
                    "engine/{}: writes returned {:.3} M/s ({:?}), visible at b {:.3} M/s ({:?}); a→b {} frames {} B; b→a {} frames {} B; a batches sent {}, b applied {}",
                    keys.name(),
                    rate(n, r.writes_done) / 1e6,
                    r.writes_done,
                    rate(n, r.elapsed) / 1e6,
                    r.elapsed,
                    r.a_to_b.frames_delivered,
                    r.a_to_b.bytes_delivered,
                    r.b_to_a.frames_delivered,
                    r.b_to_a.bytes_delivered,
                    r.a_stats.0,
                    r.b_stats.1,
                );
            }
        }
    }
}

fn main() {
    if let Ok(workload) = std::env::var("ENGINE_BENCH_PROFILE") {
        profile(&workload);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    channel(&mut c);
    local(&mut c);
    engine(&mut c);
    c.final_summary();
    summary();
}
