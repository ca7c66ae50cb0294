//! Id generation: Snowflake throughput against its layout's limit, and the
//! cost of one UUIDv7 and one ULID.
//!
//! Run with `cargo bench --bench ids`. The Snowflake generators run on the
//! real system clock:
//!
//! - `snowflake/layout_limit`: one generator on the default layout (12
//!   sequence bits, 4,096 ids per ms per generator, so at most 4,096,000
//!   ids/s). Spent milliseconds wait for the clock, so this measures how
//!   close to the limit the generator gets; the target is ≥ 95 %. The
//!   percentage is printed after the group.
//! - `snowflake/unthrottled`: 41/0/0/22 (4M ids per ms), so the
//!   sequence never runs out: the cost of one uncontended compare-and-swap
//!   plus one clock reading.
//! - `snowflake/shared_2_threads`: two threads on one unthrottled generator:
//!   the cost under contention on its one atomic.
//! - `uuid_v7`, `ulid`: the process-wide monotonic functions.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use archipelago::id::{self, SnowflakeGenerator, SnowflakeLayout};
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};

/// The default layout's limit for one generator, in ids per second.
const LAYOUT_LIMIT_PER_S: f64 = 4_096_000.0;
/// How long [`diagnose_limit`] runs.
const DIAGNOSIS_TIME: Duration = Duration::from_secs(1);
/// Threads sharing one generator in the contended case.
const SHARED_THREADS: u64 = 2;

/// Ids issued and time spent by `snowflake/layout_limit`, over all samples.
static LIMIT_TOTALS: Mutex<(u64, Duration)> = Mutex::new((0, Duration::ZERO));

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    g
}

fn unthrottled_layout() -> SnowflakeLayout {
    SnowflakeLayout::builder()
        .timestamp_bits(41)
        .region_bits(0)
        .machine_bits(0)
        .sequence_bits(22)
        .build()
        .expect("valid layout")
}

fn snowflake(c: &mut Criterion) {
    let mut g = group(c, "snowflake");

    let ids = SnowflakeGenerator::new(1, 1).expect("valid region and machine");
    g.bench_function("layout_limit", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(ids.next_id().expect("id"));
            }
            let elapsed = start.elapsed();
            let mut totals = LIMIT_TOTALS.lock().expect("totals");
            totals.0 += iters;
            totals.1 += elapsed;
            elapsed
        })
    });

    let unthrottled = SnowflakeGenerator::builder(0, 0)
        .layout(unthrottled_layout())
        .build()
        .expect("valid region and machine");
    g.bench_function("unthrottled", |b| {
        b.iter(|| black_box(unthrottled.next_id().expect("id")))
    });

    g.throughput(Throughput::Elements(SHARED_THREADS));
    g.bench_function("shared_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..SHARED_THREADS {
                    s.spawn(|| {
                        for _ in 0..iters {
                            black_box(unthrottled.next_id().expect("id"));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();

    let (issued, spent) = *LIMIT_TOTALS.lock().expect("totals");
    let per_s = issued as f64 / spent.as_secs_f64();
    println!(
        "snowflake/layout_limit: {issued} ids in {spent:.2?} = {:.3}M ids/s, {:.1}% of the \
         layout limit {:.3}M ids/s (target >= 95%)",
        per_s / 1e6,
        100.0 * per_s / LAYOUT_LIMIT_PER_S,
        LAYOUT_LIMIT_PER_S / 1e6,
    );
    diagnose_limit();
}

/// Where the shortfall from the limit goes: one generator issues for
/// [`DIAGNOSIS_TIME`]; count the milliseconds it issued in, and those in
/// which it issued the full 4,096. Milliseconds with no ids at all are time
/// the thread was not running (the machine is shared), not generator cost.
fn diagnose_limit() {
    let ids = SnowflakeGenerator::new(1, 2).expect("valid region and machine");
    let per_ms = ids.layout().ids_per_ms();
    let mut counts: Vec<u64> = Vec::new();
    let first_ms = ids.parse(ids.next_id().expect("id")).since_epoch_ms;
    let start = Instant::now();
    while start.elapsed() < DIAGNOSIS_TIME {
        for _ in 0..per_ms {
            let ms = ids.parse(ids.next_id().expect("id")).since_epoch_ms;
            let slot = usize::try_from(ms - first_ms).expect("small");
            if counts.len() <= slot {
                counts.resize(slot + 1, 0);
            }
            counts[slot] += 1;
        }
    }
    let elapsed_ms = counts.len().saturating_sub(2); // drop the partial first and last
    let inner = &counts[1..counts.len() - 1];
    let issued: u64 = inner.iter().sum();
    let used = inner.iter().filter(|&&n| n > 0).count();
    let full = inner.iter().filter(|&&n| n == per_ms).count();
    println!(
        "snowflake/diagnosis: over {elapsed_ms} ms: {issued} ids ({:.1}% of the limit); ids in \
         {used} ms ({:.1}%), the full {per_ms} in {full} ms ({:.1}% of those with ids)",
        100.0 * issued as f64 / (elapsed_ms as u64 * per_ms) as f64,
        100.0 * used as f64 / elapsed_ms as f64,
        100.0 * full as f64 / used.max(1) as f64,
    );
}

fn standard(c: &mut Criterion) {
    let mut g = group(c, "standard");
    g.bench_function("uuid_v7", |b| b.iter(|| black_box(id::uuid_v7())));
    g.bench_function("ulid", |b| b.iter(|| black_box(id::ulid())));
    g.finish();
}

criterion_group!(benches, snowflake, standard);
criterion_main!(benches);
