//! What durability costs: writes per second end to end at each
//! acknowledgement level, group commit under concurrent writers, the raw
//! fsync rate of the disk the store is on, and restart time. Results are
//! in `BENCHMARKS.md`.
//!
//! Two regions, `a` (with a `RedbStorage` in a temporary directory) and
//! `b` (in memory), on a perfect in-process `ChannelNetwork`, on a
//! 2-worker multi-thread runtime. Each iteration makes fresh regions and a
//! fresh store, connects them outside the timing, then times `n` writes of
//! a `GCounter` table at `a` (spread over 1000 keys, shared by `W` writer
//! tasks) from the first until `b` has applied the last:
//!
//! - `memory/w1`, `memory/w64`: `AckLevel::Memory`, one and 64 writers
//!   (the baselines: the engine still commits every tick, and ships only
//!   committed writes);
//! - `local/w1`: `AckLevel::Local`, one writer: every write waits for its
//!   own commit (one fsync per write);
//! - `local/w64`: `AckLevel::Local`, 64 writers: writes waiting at the same
//!   time share a commit;
//! - `local/w1024`: `AckLevel::Local`, 1024 writers (64 writers with 16
//!   writes in flight each): 64 writers that each wait for their own write
//!   cannot put more than 64 writes in a commit, so their rate is bounded
//!   by 64 x the commit rate; this one shows what group commit does when
//!   more writes are in flight.
//!
//! `fsync` measures the disk itself: 4 KiB written over the same block
//! of a file and `fdatasync`ed, in a loop. `restart/1M` builds a store of 1M keys once, then times opening
//! it, declaring the table and having every key back.
//!
//! Each `local` iteration first times 32 fsyncs in its own directory: the
//! disk is shared with other work, so acknowledgement latencies are
//! compared with the fsync latency of the same moment.
//!
//! After criterion's groups, a summary prints the median rates, their
//! ratio to `memory/w64`, the p99 acknowledgement latency of `Local` writes
//! against the median fsync latency measured with them, the writes per
//! commit, and each `local` rate against its bound: `W` writers that each
//! wait for their own write cannot exceed `W` writes per fsync.
//!
//! Run with `cargo bench --bench durability` (about two minutes).

mod common;

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archipelago::crdt::GCounter;
use archipelago::region::{AckLevel, Region, RegionConfig};
use archipelago::session::{Session, SessionToken};
use archipelago::transport::ChannelNetwork;
use criterion::{Criterion, SamplingMode, Throughput};

const KEYS: u64 = 1000;
const TABLE: &str = "hits";
const RESTART_KEYS: u64 = 1_000_000;

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    ack: AckLevel,
    writers: u64,
    n: u64,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "memory/w1",
        ack: AckLevel::Memory,
        writers: 1,
        n: 100_000,
    },
    Workload {
        name: "memory/w64",
        ack: AckLevel::Memory,
        writers: 64,
        n: 100_000,
    },
    Workload {
        name: "local/w1",
        ack: AckLevel::Local,
        writers: 1,
        n: 300,
    },
    Workload {
        name: "local/w64",
        ack: AckLevel::Local,
        writers: 64,
        n: 20_000,
    },
    Workload {
        name: "local/w1024",
        ack: AckLevel::Local,
        writers: 1024,
        n: 50_000,
    },
];

/// Fsyncs timed before each `local` iteration.
const FSYNCS_PER_RUN: usize = 32;

struct Run {
    elapsed: Duration,
    /// Acknowledgement latency of each write (Local only).
    latencies: Vec<Duration>,
    commits: u64,
    committed_writes: u64,
    /// Fsync latencies measured just before (Local only).
    fsyncs: Vec<Duration>,
}

static RUNS: Mutex<BTreeMap<&'static str, Vec<Run>>> = Mutex::new(BTreeMap::new());
static FSYNCS: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
static RESTARTS: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

fn config() -> RegionConfig {
    RegionConfig {
        commit_wait_max: Duration::from_secs(120),
        ..common::roomy_config()
    }
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The target directory sits on the project's disk, as a store would.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durability-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn run(w: Workload) -> Run {
    let dir = temp_dir("run");
    let mut fsyncs = Vec::new();
    if w.ack == AckLevel::Local {
        let block = vec![0x5a; 4096];
        let mut file = fsync_file(&dir.join("fsync"), &block);
        fsyncs = (0..FSYNCS_PER_RUN)
            .map(|_| fsync_once(&mut file, &block))
            .collect();
    }
    let net = ChannelNetwork::new(1);
    let a = Region::builder("a")
        .transport(net.endpoint("a"))
        .data_dir(&dir)
        .config(config())
        .build()
        .expect("a");
    let b = Region::builder("b")
        .transport(net.endpoint("b"))
        .config(config())
        .build()
        .expect("b");
    let table_a = a
        .table::<u64, GCounter>(TABLE)
        .expect("table")
        .with_ack(w.ack);
    let table_b = b.table::<u64, GCounter>(TABLE).expect("table");
    common::connected(&[&a, &b]).await;
    let before = a.stats();
    let started = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(w.n as usize)));
    let mut writers = Vec::new();
    for writer in 0..w.writers {
        let table = table_a.clone();
        let latencies = Arc::clone(&latencies);
        writers.push(tokio::spawn(async move {
            let mut last = SessionToken::new();
            let mut mine = Vec::new();
            let mut i = writer;
            while i < w.n {
                let t = Instant::now();
                last = table
                    .update(&(i % KEYS), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                    .await
                    .expect("write");
                if w.ack == AckLevel::Local {
                    mine.push(t.elapsed());
                }
                if i % 128 == 127 {
                    tokio::task::yield_now().await;
                }
                i += w.writers;
            }
            latencies.lock().unwrap().extend(mine);
            last
        }));
    }
    let mut session = Session::new();
    for writer in writers {
        session.record_write(&writer.await.expect("writer"));
    }
    table_b
        .read_session(&0u64, &mut session)
        .await
        .expect("b catches up");
    let elapsed = started.elapsed();
    let after = a.stats();
    let mut total = 0;
    for key in 0..KEYS {
        total += table_b
            .read(&key)
            .await
            .expect("read")
            .map_or(0, |c| c.value());
    }
    assert_eq!(total, w.n, "b holds every write");
    a.shutdown().await;
    b.shutdown().await;
    drop((a, b, table_a, table_b));
    let _ = std::fs::remove_dir_all(&dir);
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Run {
        elapsed,
        latencies,
        commits: after.commits - before.commits,
        committed_writes: after.committed_writes - before.committed_writes,
        fsyncs,
    }
}

/// One 4 KiB write over an allocated block and `fdatasync`, as a commit
/// does at least (redb writes over pages its file already has: appending
/// instead would also sync the file's growing size, a slower journaled
/// metadata update that redb's commits rarely pay).
fn fsync_once(file: &mut std::fs::File, block: &[u8]) -> Duration {
    let t = Instant::now();
    file.seek(std::io::SeekFrom::Start(0)).expect("seek");
    file.write_all(block).expect("write");
    file.sync_data().expect("fdatasync");
    t.elapsed()
}

/// A file of one block, on disk, for [`fsync_once`].
fn fsync_file(path: &std::path::Path, block: &[u8]) -> std::fs::File {
    let mut file = std::fs::File::create(path).expect("file");
    file.write_all(block).expect("write");
    file.sync_all().expect("fsync");
    file
}

async fn build_restart_store(dir: &std::path::Path) {
    let a = Region::builder("a")
        .data_dir(dir)
        .config(config())
        .build()
        .expect("a");
    let t = a.table::<u64, GCounter>(TABLE).expect("table");
    for key in 0..RESTART_KEYS {
        t.update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .expect("write");
        if key % 4096 == 4095 {
            tokio::task::yield_now().await;
        }
    }
    a.shutdown().await;
}

async fn restart_once(dir: &std::path::Path) -> Duration {
    let t = Instant::now();
    let a = Region::builder("a")
        .data_dir(dir)
        .config(config())
        .build()
        .expect("a");
    let table = a.table::<u64, GCounter>(TABLE).expect("table");
    let elapsed = t.elapsed();
    assert_eq!(table.len() as u64, RESTART_KEYS, "every key back");
    a.shutdown().await;
    drop((a, table));
    elapsed
}

fn benches(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("durability");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for w in WORKLOADS {
        group.throughput(Throughput::Elements(w.n));
        group.bench_function(w.name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = rt.block_on(run(w));
                    total += r.elapsed;
                    RUNS.lock().unwrap().entry(w.name).or_default().push(r);
                }
                total
            });
        });
    }
    let dir = temp_dir("fsync");
    let block = vec![0x5a; 4096];
    let mut file = fsync_file(&dir.join("fsync"), &block);
    group.throughput(Throughput::Elements(1));
    group.bench_function("fsync", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = fsync_once(&mut file, &block);
                FSYNCS.lock().unwrap().push(d);
                total += d;
            }
            total
        });
    });
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);

    if std::env::var_os("DURABILITY_SKIP_RESTART").is_some() {
        group.finish();
        return;
    }
    let dir = temp_dir("restart");
    rt.block_on(build_restart_store(&dir));
    group.throughput(Throughput::Elements(RESTART_KEYS));
    group.sample_size(10);
    group.bench_function("restart/1M", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = rt.block_on(restart_once(&dir));
                RESTARTS.lock().unwrap().push(d);
                total += d;
            }
            total
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn summary() {
    let runs = RUNS.lock().unwrap();
    let fsyncs = FSYNCS.lock().unwrap().clone();
    let fsync_median = percentile(fsyncs.clone(), 0.5);
    println!("\n== durability summary (median over every iteration, warm-up included)");
    println!(
        "fsync (4 KiB + fdatasync): median {:?}, p99 {:?}, {:.0}/s",
        fsync_median,
        percentile(fsyncs, 0.99),
        1.0 / fsync_median.as_secs_f64().max(1e-9)
    );
    let memory = runs
        .get("memory/w64")
        .map(|r| {
            median(
                r.iter()
                    .map(|r| 100_000.0 / r.elapsed.as_secs_f64())
                    .collect(),
            )
        })
        .unwrap_or(0.0);
    for w in WORKLOADS {
        let Some(r) = runs.get(w.name) else { continue };
        let rate = median(
            r.iter()
                .map(|r| w.n as f64 / r.elapsed.as_secs_f64())
                .collect(),
        );
        let commits: u64 = r.iter().map(|r| r.commits).sum();
        let writes: u64 = r.iter().map(|r| r.committed_writes).sum();
        let lat: Vec<Duration> = r.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        let p99 = percentile(lat.clone(), 0.99);
        let p50 = percentile(lat, 0.5);
        // The fsync latency of the same moments, if measured.
        let near: Vec<Duration> = r.iter().flat_map(|r| r.fsyncs.iter().copied()).collect();
        let fsync = if near.is_empty() {
            fsync_median
        } else {
            percentile(near, 0.5)
        };
        println!(
            "{:<11} {:>10.0} updates/s end to end  ({:.3}x memory/w64)  writes/commit {:>7.1}  ack p50 {:?} ({:.1} fsyncs) p99 {:?} ({:.1} fsyncs of {:?})",
            w.name,
            rate,
            rate / memory.max(1.0),
            writes as f64 / commits.max(1) as f64,
            p50,
            p50.as_secs_f64() / fsync.as_secs_f64().max(1e-9),
            p99,
            p99.as_secs_f64() / fsync.as_secs_f64().max(1e-9),
            fsync,
        );
        if w.ack == AckLevel::Local {
            // Writers that each wait for their own write put at most
            // `writers` writes in a commit: at most that many per fsync.
            let bound = w.writers as f64 / fsync.as_secs_f64().max(1e-9);
            println!(
                "{:<11} bound {:.0} updates/s ({} writes per fsync of {:?}): {:.2}x the bound",
                "",
                bound,
                w.writers,
                fsync,
                rate / bound,
            );
        }
    }
    let restarts = RESTARTS.lock().unwrap().clone();
    println!(
        "restart of 1M keys: median {:?} (open, load, declare the table)",
        percentile(restarts, 0.5)
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
