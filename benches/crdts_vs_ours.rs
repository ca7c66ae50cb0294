//! `archipelago` against `crdts` 7.3.2 on identical inputs.
//!
//! Each criterion group holds one workload, benched once per library
//! (`<group>/crdts` and `<group>/archipelago`), so the report shows them side
//! by side. Results and targets are recorded in `BENCHMARKS.md`.
//!
//! Run with `cargo bench --bench crdts_vs_ours`. Setup (building and cloning
//! the inputs) and dropping the outputs stay outside the timed region.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use archipelago::clock::{ReplicaId, Stamp, Timestamp};
use archipelago::crdt::{Crdt, GCounter, LwwMap, OrMap, OrSet};
use archipelago::wire;
use crdts::{CmRDT, CvRDT, LWWReg, Orswot};
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};

/// Elements inserted per replica in the OR-Set workloads.
const N: u64 = 100_000;
/// First element (key) of replica B: B's first half overlaps A's second half.
const B_START: u64 = 50_000;
/// Elements (keys) after merging A's and B's.
const MERGED: u64 = B_START + N;
/// Replicas of the G-Counter workload.
const COUNTER_REPLICAS: u32 = 64;
/// Inputs cloned per timed batch in the G-Counter workload: few enough that
/// they stay in L2 (criterion's `SmallInput` would clone `iters / 10` of them,
/// hundreds of thousands, and time cache misses rather than the merge).
const COUNTER_BATCH: BatchSize = BatchSize::NumIterations(32);

type TheirSet = Orswot<u64, u32>;
type TheirCounter = crdts::GCounter<u32>;
type TheirLwwMap = BTreeMap<String, LWWReg<u64, u64>>;
type TheirCounterMap = crdts::Map<u64, TheirCounter, u32>;
type OurCounterMap = OrMap<u64, GCounter>;

/// Distinct keys of the map-of-counters update workload: 100k updates, so
/// each key is updated twice (a fresh key, then one that holds a value).
const MAP_KEYS: u64 = N / 2;

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g
}

fn ours_set(replica: u32, elements: impl Iterator<Item = u64>) -> OrSet<u64> {
    let replica = ReplicaId::from(replica);
    let mut set = OrSet::new();
    for x in elements {
        drop(set.insert(replica, x));
    }
    set
}

fn their_set(actor: u32, elements: impl Iterator<Item = u64>) -> TheirSet {
    let mut set = Orswot::new();
    for x in elements {
        let op = set.add(x, set.read_ctx().derive_add_ctx(actor));
        set.apply(op);
    }
    set
}

/// 1. 100k inserts of `0..100_000` into one empty replica.
fn or_set_insert(c: &mut Criterion) {
    let mut g = group(c, "or_set_insert_100k");
    g.throughput(Throughput::Elements(N));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            TheirSet::new,
            |mut set| {
                for x in 0..N {
                    let op = set.add(x, set.read_ctx().derive_add_ctx(1));
                    set.apply(op);
                }
                set
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        let replica = ReplicaId::new(1);
        b.iter_batched(
            OrSet::<u64>::new,
            |mut set| {
                for x in 0..N {
                    drop(set.insert(replica, x));
                }
                set
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// 2. A (`0..100k`, replica 1) merges B (`50k..150k`, replica 2).
fn or_set_merge(c: &mut Criterion) {
    let (theirs_a, theirs_b) = (their_set(1, 0..N), their_set(2, B_START..MERGED));
    let (ours_a, ours_b) = (ours_set(1, 0..N), ours_set(2, B_START..MERGED));
    check_merged_len(&theirs_a, &theirs_b, &ours_a, &ours_b, MERGED);

    let mut g = group(c, "or_set_merge_100k_100k_50pct_overlap");
    g.throughput(Throughput::Elements(MERGED));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            || (theirs_a.clone(), theirs_b.clone()),
            |(mut a, b)| {
                a.merge(b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || ours_a.clone(),
            |mut a| {
                a.merge(&ours_b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// 3. Re-merge of two identical 150k-element sets (the merged result of 2,
///    dots from two replicas), one a clone of the other.
fn or_set_remerge(c: &mut Criterion) {
    let mut theirs = their_set(1, 0..N);
    theirs.merge(their_set(2, B_START..MERGED));
    let mut ours = ours_set(1, 0..N);
    ours.merge(&ours_set(2, B_START..MERGED));
    check_merged_len(&theirs, &theirs.clone(), &ours, &ours.clone(), MERGED);
    let ours_b = ours.clone();

    let mut g = group(c, "or_set_remerge_identical_150k");
    g.throughput(Throughput::Elements(MERGED));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            || (theirs.clone(), theirs.clone()),
            |(mut a, b)| {
                a.merge(b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || ours.clone(),
            |mut a| {
                a.merge(&ours_b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// Asserts once, outside timing, that both libraries merge to `expected`
/// elements.
fn check_merged_len(ta: &TheirSet, tb: &TheirSet, oa: &OrSet<u64>, ob: &OrSet<u64>, expected: u64) {
    let mut t = ta.clone();
    t.merge(tb.clone());
    let mut o = oa.clone();
    o.merge(ob);
    assert_eq!(t.read().val.len() as u64, expected);
    assert_eq!(o.len() as u64, expected);
}

/// 4. Encode and decode a 100k-element set built by one replica. Both go
///    through `archipelago::wire` (bincode 2, `config::standard()`, plus a
///    one-byte version prefix), so only the data layout differs.
fn or_set_codec(c: &mut Criterion) {
    let theirs = their_set(1, 0..N);
    let ours = ours_set(1, 0..N);
    let their_bytes = wire::encode(&theirs).expect("encode crdts");
    let our_bytes = wire::encode(&ours).expect("encode ours");
    assert_eq!(
        wire::decode::<TheirSet>(&their_bytes).expect("decode crdts"),
        theirs
    );
    assert_eq!(
        wire::decode::<OrSet<u64>>(&our_bytes).expect("decode ours"),
        ours
    );
    println!(
        "or_set_codec_100k bytes/element: crdts {:.2} ({} B), archipelago {:.2} ({} B)",
        their_bytes.len() as f64 / N as f64,
        their_bytes.len(),
        our_bytes.len() as f64 / N as f64,
        our_bytes.len(),
    );

    let mut g = group(c, "or_set_codec_100k");
    g.throughput(Throughput::Elements(N));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            || (),
            |()| {
                let bytes = wire::encode(black_box(&theirs)).expect("encode");
                wire::decode::<TheirSet>(&bytes).expect("decode")
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || (),
            |()| {
                let bytes = wire::encode(black_box(&ours)).expect("encode");
                wire::decode::<OrSet<u64>>(&bytes).expect("decode")
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// The count replica `r` holds in counter `which` (0 or 1): a few
/// increments, different between the two counters.
fn increments(r: u32, which: u32) -> u64 {
    u64::from((r * (3 + which * 4) + which) % 5 + 1)
}

/// 5. One merge of two 64-replica G-Counters.
fn g_counter_merge(c: &mut Criterion) {
    let mut theirs = [TheirCounter::new(), TheirCounter::new()];
    let mut ours = [GCounter::new(), GCounter::new()];
    for which in 0..2 {
        for r in 1..=COUNTER_REPLICAS {
            for _ in 0..increments(r, which) {
                let t = &mut theirs[which as usize];
                t.apply(t.inc(r));
                drop(ours[which as usize].inc(ReplicaId::from(r), 1));
            }
        }
    }
    let [theirs_a, theirs_b] = theirs;
    let [ours_a, ours_b] = ours;
    let mut t = theirs_a.clone();
    t.merge(theirs_b.clone());
    let mut o = ours_a.clone();
    o.merge(&ours_b);
    assert_eq!(t.read().to_string(), o.value().to_string());
    assert_ne!(ours_a, ours_b);

    let mut g = group(c, "g_counter_merge_64_replicas");
    g.bench_function("crdts_merge_only", |b| {
        b.iter_batched(
            || (theirs_a.clone(), theirs_b.clone()),
            |(mut a, b)| {
                a.merge(b);
                a
            },
            COUNTER_BATCH,
        );
    });
    g.bench_function("crdts_clone_and_merge", |b| {
        b.iter_batched(
            || theirs_a.clone(),
            |mut a| {
                a.merge(theirs_b.clone());
                a
            },
            COUNTER_BATCH,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || ours_a.clone(),
            |mut a| {
                a.merge(&ours_b);
                a
            },
            COUNTER_BATCH,
        );
    });
    g.finish();
}

fn key(i: u64) -> String {
    format!("key-{i}")
}

/// Write `i` is stamped at millisecond `base + i`: every write has its own
/// stamp, and B's (higher base) are later than A's.
const A_BASE_MS: u64 = 1_700_000_000_000;
const B_BASE_MS: u64 = A_BASE_MS + 1_000_000;

fn ours_lww(replica: u32, base: u64, keys: std::ops::Range<u64>) -> LwwMap<String, u64> {
    let mut map = LwwMap::new();
    for i in keys {
        let stamp = Stamp::new(Timestamp::new(base + i, 0), ReplicaId::from(replica));
        drop(map.insert(stamp, key(i), i));
    }
    map
}

fn their_lww(base: u64, keys: std::ops::Range<u64>) -> TheirLwwMap {
    keys.map(|i| {
        let marker = Timestamp::new(base + i, 0).as_u64();
        (key(i), LWWReg { val: i, marker })
    })
    .collect()
}

/// The key-by-key merge of a `BTreeMap` of `crdts::LWWReg`s.
fn their_lww_merge(a: &mut TheirLwwMap, b: &TheirLwwMap) {
    for (k, reg) in b {
        match a.get_mut(k) {
            Some(mine) => mine.merge(reg.clone()),
            None => {
                a.insert(k.clone(), reg.clone());
            }
        }
    }
}

/// 6. A (keys `0..100k`) merges B (keys `50k..150k`, later stamps).
fn lww_map_merge(c: &mut Criterion) {
    let (theirs_a, theirs_b) = (
        their_lww(A_BASE_MS, 0..N),
        their_lww(B_BASE_MS, B_START..MERGED),
    );
    let (ours_a, ours_b) = (
        ours_lww(1, A_BASE_MS, 0..N),
        ours_lww(2, B_BASE_MS, B_START..MERGED),
    );
    let mut t = theirs_a.clone();
    their_lww_merge(&mut t, &theirs_b);
    let mut o = ours_a.clone();
    o.merge(&ours_b);
    assert_eq!((t.len() as u64, o.len() as u64), (MERGED, MERGED));
    assert_eq!(t[&key(B_START)].val, B_START);
    assert_eq!(o.stamp(&key(B_START)), ours_b.stamp(&key(B_START)));

    let mut g = group(c, "lww_map_merge_100k_100k_50pct_overlap");
    g.throughput(Throughput::Elements(MERGED));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            || theirs_a.clone(),
            |mut a| {
                their_lww_merge(&mut a, &theirs_b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || ours_a.clone(),
            |mut a| {
                a.merge(&ours_b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// A map of counters built by `replica`: one increment per key of `keys`.
fn ours_counter_map(replica: u32, keys: impl Iterator<Item = u64>) -> OurCounterMap {
    let replica = ReplicaId::from(replica);
    let mut map = OrMap::new();
    for k in keys {
        drop(map.update(replica, k, |c: &mut GCounter| c.inc(replica, 1)));
    }
    map
}

fn their_counter_map(actor: u32, keys: impl Iterator<Item = u64>) -> TheirCounterMap {
    let mut map = TheirCounterMap::new();
    for k in keys {
        let ctx = map.read_ctx().derive_add_ctx(actor);
        let op = map.update(k, ctx, |c, _| c.inc(actor));
        map.apply(op);
    }
    map
}

/// The sum of every counter in each map, and the key count.
fn counter_map_totals(theirs: &TheirCounterMap, ours: &OurCounterMap) -> [(u64, u64); 2] {
    let their_sum: u64 = theirs
        .iter()
        .map(|e| e.val.1.read().to_string().parse::<u64>().unwrap())
        .sum();
    let our_sum: u64 = ours.iter().map(|(_, c)| c.value()).sum();
    [
        (theirs.len().val as u64, their_sum),
        (ours.len() as u64, our_sum),
    ]
}

/// 7. 100k updates (increment a counter) of `0..50k`, each key twice, into
///    one empty map of G-Counters: `crdts::Map<u64, GCounter>` against
///    `OrMap<u64, GCounter>`.
fn or_map_update(c: &mut Criterion) {
    let keys = || (0..N).map(|i| i % MAP_KEYS);
    let [theirs, ours] =
        counter_map_totals(&their_counter_map(1, keys()), &ours_counter_map(1, keys()));
    assert_eq!(theirs, ours);
    assert_eq!(ours, (MAP_KEYS, N));

    let mut g = group(c, "or_map_update_100k");
    g.throughput(Throughput::Elements(N));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            || (),
            |()| their_counter_map(1, keys()),
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || (),
            |()| ours_counter_map(1, keys()),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// 8. A (keys `0..100k`, replica 1) merges B (keys `50k..150k`, replica 2):
///    the shared keys end with two concurrent counters each. Then the
///    encoded size of A, both through `archipelago::wire`.
fn or_map_merge(c: &mut Criterion) {
    let (theirs_a, theirs_b) = (
        their_counter_map(1, 0..N),
        their_counter_map(2, B_START..MERGED),
    );
    let (ours_a, ours_b) = (
        ours_counter_map(1, 0..N),
        ours_counter_map(2, B_START..MERGED),
    );
    let mut t = theirs_a.clone();
    t.merge(theirs_b.clone());
    let mut o = ours_a.clone();
    o.merge(&ours_b);
    let [theirs, ours] = counter_map_totals(&t, &o);
    assert_eq!(theirs, ours);
    assert_eq!(ours, (MERGED, 2 * N));

    let their_bytes = wire::encode(&theirs_a).expect("encode crdts");
    let our_bytes = wire::encode(&ours_a).expect("encode ours");
    assert_eq!(
        wire::decode::<TheirCounterMap>(&their_bytes).expect("decode crdts"),
        theirs_a
    );
    assert_eq!(
        wire::decode::<OurCounterMap>(&our_bytes).expect("decode ours"),
        ours_a
    );
    println!(
        "or_map_codec_100k bytes/key: crdts {:.2} ({} B), archipelago {:.2} ({} B)",
        their_bytes.len() as f64 / N as f64,
        their_bytes.len(),
        our_bytes.len() as f64 / N as f64,
        our_bytes.len(),
    );

    let mut g = group(c, "or_map_merge_100k_100k_50pct_overlap");
    g.throughput(Throughput::Elements(MERGED));
    g.bench_function("crdts", |b| {
        b.iter_batched(
            || (theirs_a.clone(), theirs_b.clone()),
            |(mut a, b)| {
                a.merge(b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("archipelago", |b| {
        b.iter_batched(
            || ours_a.clone(),
            |mut a| {
                a.merge(&ours_b);
                a
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(
    benches,
    or_set_insert,
    or_set_merge,
    or_set_remerge,
    or_set_codec,
    g_counter_merge,
    lww_map_merge,
    or_map_update,
    or_map_merge
);
criterion_main!(benches);
