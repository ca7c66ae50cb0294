//! What atomic multi-key writes cost end to end (issue 13): transactions
//! of 2, 8 and 64 writes against the same writes made one by one. Results
//! are in `BENCHMARKS.md`.
//!
//! Two regions, `a` and `b`, on one in-process [`ChannelNetwork`] with
//! perfect links, on a multi-thread tokio runtime with 2 worker threads.
//! Each iteration builds fresh regions, connects them (first anti-entropy
//! exchange over) outside the timing, then makes [`WRITES`] increments of
//! a `GCounter` table at `a`, write `i` on key `i % 1000`:
//!
//! - `writes/single`: one `update` per write;
//! - `writes/tx-<s>`: `WRITES / s` calls of [`Region::transaction`], each
//!   staging `s` updates (one dot each, one group in the outbox, applied
//!   by peers as one unit).
//!
//! - `local-writes/...`: the same writes at a region without a transport:
//!   the write path alone (no outbox, no engine).
//!
//! Timed from the first write until `b` has applied the last one (a
//! session read at `b` that waits for `a`'s last token); afterwards `b`'s
//! values are checked to sum to `WRITES`. Criterion's throughput is in
//! writes (elements) per second; transactions per second is that divided
//! by `s`.
//!
//! Run with `cargo bench --bench transactions` (under a minute).

mod common;

use std::time::{Duration, Instant};

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionError};
use archipelago::session::{Session, SessionToken};
use archipelago::transport::ChannelNetwork;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Writes per iteration.
const WRITES: u64 = 64 * 1024;
/// Distinct keys written.
const KEYS: u64 = 1000;
/// The writer yields to the scheduler after this many writes, as the
/// engine bench's does (a writer that never yields starves the engine).
const YIELD_EVERY_WRITES: u64 = 128;
/// Name of the table written.
const TABLE: &str = "hits";

fn region(net: &ChannelNetwork, name: &str) -> Region {
    Region::builder(name)
        .transport(net.endpoint(name))
        .config(common::roomy_config())
        .build()
        .expect("inside a runtime")
}

/// `WRITES` writes at `a` in transactions of `size` (1: single
/// `update`s); the last write's token.
async fn write_all(a: &Region, size: u64) -> SessionToken {
    let table_a = a.table::<u64, GCounter>(TABLE).expect("table");
    let mut last = SessionToken::new();
    let mut i = 0;
    while i < WRITES {
        if size == 1 {
            last = table_a
                .update(&(i % KEYS), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .expect("write");
        } else {
            let (_, token) = a
                .transaction(|tx| {
                    for j in i..i + size {
                        tx.update(&table_a, &(j % KEYS), |c, ctx| {
                            c.apply(|c| c.inc(ctx.replica(), 1))
                        })?;
                    }
                    Ok::<_, RegionError>(())
                })
                .expect("transaction");
            last = token;
        }
        let next = i + size;
        if next / YIELD_EVERY_WRITES != i / YIELD_EVERY_WRITES {
            tokio::task::yield_now().await;
        }
        i = next;
    }
    last
}

/// One iteration: `WRITES` writes at `a` in transactions of `size` (1:
/// single `update`s), until `b` has them all.
async fn run(size: u64) -> Duration {
    let net = ChannelNetwork::new(1);
    let a = region(&net, "a");
    let b = region(&net, "b");
    a.table::<u64, GCounter>(TABLE).expect("table");
    let table_b = b.table::<u64, GCounter>(TABLE).expect("table");
    common::connected(&[&a, &b]).await;

    let started = Instant::now();
    let last = write_all(&a, size).await;
    let mut session = Session::new();
    session.record_write(&last);
    table_b
        .read_session(&((WRITES - 1) % KEYS), &mut session)
        .await
        .expect("b catches up");
    let elapsed = started.elapsed();

    let mut total = 0;
    for key in 0..KEYS {
        total += table_b
            .read(&key)
            .await
            .expect("read")
            .map_or(0, |c| c.value());
    }
    assert_eq!(total, WRITES, "b holds every increment");
    for r in [&a, &b] {
        let stats = r.stats();
        assert_eq!(stats.rejected_frames, 0, "{}: rejected frames", stats.name);
        assert_eq!(stats.outbox_overflows, 0, "{}: outbox overflow", stats.name);
    }
    a.shutdown().await;
    b.shutdown().await;
    elapsed
}

/// The write path alone: the same writes at a region without a transport
/// (nothing logged for peers, no engine).
async fn local_run(size: u64) -> Duration {
    let a = Region::builder("a")
        .config(common::roomy_config())
        .build()
        .expect("region");
    a.table::<u64, GCounter>(TABLE).expect("table");
    let started = Instant::now();
    write_all(&a, size).await;
    let elapsed = started.elapsed();
    a.shutdown().await;
    elapsed
}

fn id(size: u64) -> BenchmarkId {
    if size == 1 {
        BenchmarkId::from_parameter("single")
    } else {
        BenchmarkId::from_parameter(format!("tx-{size}"))
    }
}

fn local(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("local-writes");
    group.sample_size(10);
    group.throughput(Throughput::Elements(WRITES));
    for size in [1u64, 2, 8, 64] {
        group.bench_function(id(size), |bench| {
            bench.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(local_run(size)))
                    .sum::<Duration>()
            })
        });
    }
    group.finish();
}

fn writes(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("writes");
    group.sample_size(10);
    group.throughput(Throughput::Elements(WRITES));
    for size in [1u64, 2, 8, 64] {
        group.bench_function(id(size), |bench| {
            bench.iter_custom(|iters| (0..iters).map(|_| rt.block_on(run(size))).sum::<Duration>())
        });
    }
    group.finish();
}

criterion_group!(benches, writes, local);
criterion_main!(benches);
