//! Anti-entropy bytes and round trips: range-based reconciliation
//! (`archipelago::testing::reconcile`) against today's 1024 digest
//! buckets, computed in the same run on the same tables. Results are in
//! `BENCHMARKS.md` ("Anti-entropy: range-based reconciliation vs
//! buckets").
//!
//! Two tables `a` and `b` of [`N`] keys (8 random bytes each) holding
//! 32-byte states. Of the `d` differing keys, half are keys `b` lacks (a
//! write it missed) and half hold another state at `b` (written on both
//! sides): the items that differ are `1.5 d`, and `1.5 d` states must
//! cross.
//!
//! - `reconcile/d-<d>`: one whole exchange between the two indexes,
//!   `a` initiating (both sides' work, frames encoded and decoded).
//! - `index/update-1M`: setting one item's fingerprint in the 1M-key index
//!   (what a write would cost, were the index updated by writes).
//! - `store-write/untracked-1M` and `store-write/tracked-1M`: one write to
//!   a 1M-key table's store, without a range index and with one noting
//!   the key written (what the engine does; the index catches up when an
//!   exchange reads it).
//! - `index-catch-up/1M-after-<w>`: bringing that index up to date after
//!   `w` writes (the first exchange's read of it; the writes untimed).
//!
//! After criterion, `summary` prints for each `d` the messages and bytes
//! of the exchange, the bytes of the states it ships, and what the bucket
//! scheme sends: the 1024 digests (8 bytes each), then the responder's
//! every entry of each differing bucket and the initiator's entries there
//! that differ. An entry costs the same in both, framed as a transfer
//! frames it: 1 byte of table position, the key and the state each
//! length-prefixed ([`ENTRY_BYTES`]).
//!
//! Run with `cargo bench --bench reconcile -- --warm-up-time 1
//! --measurement-time 3` (building the 1M-key indexes takes a few seconds).

use std::hint::black_box;
use std::time::Duration;

use archipelago::testing::reconcile::{
    DIGEST_BUCKETS_TODAY, Exchange, RangeIndex, StoreWrites, digest_bucket, item_fingerprint,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// Keys per table.
const N: usize = 1_000_000;
/// Differing keys of each run.
const DIFFS: [usize; 4] = [0, 1, 100, 10_000];
/// Bytes of a key and of a state.
const KEY_BYTES: usize = 8;
const STATE_BYTES: usize = 32;
/// One entry of a state transfer: table position (1 byte), key and state
/// each with a 1-byte length.
const ENTRY_BYTES: usize = 1 + 1 + KEY_BYTES + 1 + STATE_BYTES;

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `N` distinct random keys, in random order.
fn keys() -> Vec<[u8; KEY_BYTES]> {
    let mut rng = 0x9e37_79b9_7f4a_7c15;
    let mut seen = std::collections::HashSet::with_capacity(N);
    let mut keys = Vec::with_capacity(N);
    while keys.len() < N {
        let key = xorshift(&mut rng).to_be_bytes();
        if seen.insert(key) {
            keys.push(key);
        }
    }
    keys
}

/// The state of `key`, in version `version`.
fn state(key: &[u8; KEY_BYTES], version: u8) -> [u8; STATE_BYTES] {
    let mut state = [0u8; STATE_BYTES];
    for (i, chunk) in state.chunks_mut(KEY_BYTES).enumerate() {
        chunk.copy_from_slice(key);
        chunk[0] ^= i as u8;
    }
    state[STATE_BYTES - 1] ^= version;
    state
}

/// The two tables' indexes for `d` differing keys (the first `d` keys).
fn indexes(keys: &[[u8; KEY_BYTES]], a: &RangeIndex, d: usize) -> RangeIndex {
    let mut b = a.clone();
    for (i, key) in keys[..d].iter().enumerate() {
        if i % 2 == 0 {
            b.remove(key);
        } else {
            b.insert(key, item_fingerprint(key, &state(key, 1)))
                .unwrap();
        }
    }
    b
}

/// What one exchange cost: messages, frame bytes, states to ship.
struct Cost {
    messages: usize,
    bytes: usize,
    states: usize,
}

fn exchange(a: &RangeIndex, b: &RangeIndex) -> Cost {
    let (initiator, first) = Exchange::initiate(a).unwrap();
    let mut sides = [initiator, Exchange::respond()];
    let indexes = [a, b];
    let (mut messages, mut bytes) = (1, first.len());
    let mut frame = Some(first);
    let mut to = 1;
    while let Some(f) = frame {
        frame = sides[to].on_frame(indexes[to], &f).unwrap();
        if let Some(reply) = &frame {
            messages += 1;
            bytes += reply.len();
        }
        to = 1 - to;
    }
    let states = sides.iter().map(|s| s.learned().send.len()).sum();
    Cost {
        messages,
        bytes,
        states,
    }
}

/// Bytes today's bucket scheme sends for the same difference.
fn buckets_bytes(keys: &[[u8; KEY_BYTES]], d: usize) -> usize {
    let mut per_bucket = vec![0usize; DIGEST_BUCKETS_TODAY];
    for key in keys {
        per_bucket[digest_bucket(key)] += 1;
    }
    let mut differs = vec![false; DIGEST_BUCKETS_TODAY];
    let mut initiator_entries = 0;
    for (i, key) in keys[..d].iter().enumerate() {
        let bucket = digest_bucket(key);
        differs[bucket] = true;
        initiator_entries += 1;
        if i % 2 == 0 {
            per_bucket[bucket] -= 1; // the responder lacks it
        }
    }
    let responder_entries: usize = (0..DIGEST_BUCKETS_TODAY)
        .filter(|&b| differs[b])
        .map(|b| per_bucket[b])
        .sum();
    DIGEST_BUCKETS_TODAY * 8 + (responder_entries + initiator_entries) * ENTRY_BYTES
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut a = RangeIndex::new();
    for key in &keys {
        a.insert(key, item_fingerprint(key, &state(key, 0)))
            .unwrap();
    }
    let mut rows = Vec::new();
    let mut group = c.benchmark_group("reconcile");
    group.sample_size(10);
    for d in DIFFS {
        let b = indexes(&keys, &a, d);
        let cost = exchange(&a, &b);
        assert_eq!(cost.states, d + d / 2, "every differing item, once");
        rows.push((d, cost, buckets_bytes(&keys, d)));
        group.bench_function(format!("d-{d}"), |bench| {
            bench.iter(|| black_box(exchange(&a, &b).bytes))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("index");
    let mut i = 0;
    group.bench_function("update-1M", |bench| {
        bench.iter(|| {
            i = (i + 7919) % N;
            let key = &keys[i];
            a.insert(key, item_fingerprint(key, &state(key, (i % 3) as u8)))
                .unwrap();
        })
    });
    group.finish();
    summary(&rows);
}

fn summary(rows: &[(usize, Cost, usize)]) {
    println!(
        "\nanti-entropy of {N} keys ({KEY_BYTES}-byte keys, {STATE_BYTES}-byte states, {ENTRY_BYTES} bytes an entry)"
    );
    println!(
        "{:>7} {:>9} {:>12} {:>13} {:>12} {:>14} {:>13} {:>9}",
        "d",
        "messages",
        "rbsr bytes",
        "state bytes",
        "rbsr total",
        "target 2d(k+v)",
        "bucket bytes",
        "buckets/rbsr"
    );
    for (d, cost, buckets) in rows {
        let total = cost.bytes + cost.states * ENTRY_BYTES;
        println!(
            "{:>7} {:>9} {:>12} {:>13} {:>12} {:>14} {:>13} {:>9.1}",
            d,
            cost.messages,
            cost.bytes,
            cost.states * ENTRY_BYTES,
            total,
            2 * d * (KEY_BYTES + STATE_BYTES),
            buckets,
            *buckets as f64 / total as f64
        );
    }
}

/// `store-write/<tracked|untracked>-1M`: one local write to a 1M-key
/// table's store, its range index kept (noting the key) or never built.
fn store_writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("store-write");
    for tracked in [false, true] {
        let mut table = StoreWrites::new(N as u64, tracked);
        let name = if tracked {
            "tracked-1M"
        } else {
            "untracked-1M"
        };
        group.bench_function(name, |bench| bench.iter_custom(|iters| table.write(iters)));
    }
    group.finish();
    let mut group = c.benchmark_group("index-catch-up");
    group.sample_size(10);
    let mut table = StoreWrites::new(N as u64, true);
    for writes in [1u64, 100, 10_000] {
        group.bench_function(format!("1M-after-{writes}"), |bench| {
            bench.iter_custom(|iters| (0..iters).map(|_| table.catch_up_after(writes).0).sum())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench, store_writes
}
criterion_main!(benches);
