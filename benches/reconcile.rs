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
//! - `reconcile/riblt-d-<d>`: the same difference reconciled by a rateless
//!   IBLT (`archipelago::testing::reconcile::riblt`) over the same item
//!   fingerprints: `a` encodes its 1M items into coded symbols, `b`
//!   subtracts its own and peels, asking for twice what it has until done
//!   (both sides' work; no index is kept, so each run encodes and
//!   subtracts every item).
//! - `reconcile/riblt-kept-d-<d>`: the same, both sides keeping their first
//!   64k coded symbols current as they write (`SymbolPrefix`): the
//!   exchange costs per symbol and per difference, not per item.
//! - `index/riblt-kept-replace-1M`: one write's cost to a kept prefix of
//!   1M items (one item out, its new one in).
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
//! of both exchanges, the bytes of the states they ship, and what the bucket
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

use archipelago::testing::reconcile::riblt::{
    Decoder, Encoder, SYMBOL_BYTES, SymbolPrefix, decode_symbols, encode_symbols,
};
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

/// The two tables' item sets as [`indexes`] makes them, for the rateless
/// IBLT: `a`'s, then `b`'s.
fn item_sets(keys: &[[u8; KEY_BYTES]], d: usize) -> (Vec<u64>, Vec<u64>) {
    let a: Vec<u64> = keys
        .iter()
        .map(|key| item_fingerprint(key, &state(key, 0)))
        .collect();
    let mut b = a.clone();
    for (i, key) in keys[..d].iter().enumerate() {
        b[i] = item_fingerprint(key, &state(key, 1));
    }
    let b = b
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i >= d || i % 2 == 1)
        .map(|(_, item)| item)
        .collect();
    (a, b)
}

/// Bytes of one "send me this many more" reply of the rateless exchange.
const RIBLT_WANT_BYTES: usize = 4;

/// One rateless-IBLT reconciliation: `a` streams coded symbols, `b` asks
/// for twice what it has until it has decoded the difference, then names
/// the items it lacks (8 bytes each) so `a` ships their states; `b` ships
/// its own differing states unasked.
fn riblt_exchange(a: &[u64], b: &[u64]) -> Cost {
    let mut encoder = Encoder::new(a.iter().copied());
    let mut decoder = Decoder::new(b.iter().copied());
    let (mut messages, mut bytes, mut wanted) = (0, 0, 1);
    while wanted > 0 {
        let frame = encode_symbols(&encoder.next_symbols(wanted));
        bytes += frame.len();
        decoder
            .add_symbols(&decode_symbols(&frame).unwrap())
            .unwrap();
        wanted = decoder.wanted();
        messages += 2;
        bytes += RIBLT_WANT_BYTES;
    }
    let (remote, local) = (decoder.remote(), decoder.local());
    bytes += remote.len() * 8;
    Cost {
        messages,
        bytes,
        states: remote.len() + local.len(),
    }
}

/// Coded symbols each table keeps current for [`riblt_kept_exchange`]:
/// enough for the 10k-key difference with the stream's doubling.
const KEPT_SYMBOLS: usize = 64 * 1024;

fn kept(items: &[u64]) -> SymbolPrefix {
    let mut prefix = SymbolPrefix::new(KEPT_SYMBOLS);
    items.iter().for_each(|item| prefix.insert(*item));
    prefix
}

/// [`riblt_exchange`] with both sides' first symbols kept current by their
/// writes ([`SymbolPrefix`]): no work per item of the table, only per
/// symbol sent and per difference peeled. Returns the bytes.
fn riblt_kept_exchange(a: &SymbolPrefix, b: &SymbolPrefix) -> usize {
    let mut decoder = Decoder::against(b);
    let (mut first, mut wanted, mut bytes) = (0, 1, 0);
    while wanted > 0 {
        let frame = encode_symbols(a.symbols(first, wanted));
        bytes += frame.len() + RIBLT_WANT_BYTES;
        decoder
            .add_symbols(&decode_symbols(&frame).unwrap())
            .unwrap();
        first += wanted;
        wanted = decoder.wanted();
    }
    assert!(decoder.is_done(), "the kept prefix is long enough");
    bytes + decoder.remote().len() * 8
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
        let (a_items, b_items) = item_sets(&keys, d);
        let riblt = riblt_exchange(&a_items, &b_items);
        assert_eq!(riblt.states, d + d / 2, "every differing item, once");
        let riblt_bytes = riblt.bytes;
        rows.push((d, cost, riblt, buckets_bytes(&keys, d)));
        group.bench_function(format!("d-{d}"), |bench| {
            bench.iter(|| black_box(exchange(&a, &b).bytes))
        });
        group.bench_function(format!("riblt-d-{d}"), |bench| {
            bench.iter(|| black_box(riblt_exchange(&a_items, &b_items).bytes))
        });
        let (a_kept, b_kept) = (kept(&a_items), kept(&b_items));
        assert_eq!(riblt_kept_exchange(&a_kept, &b_kept), riblt_bytes);
        group.bench_function(format!("riblt-kept-d-{d}"), |bench| {
            bench.iter(|| black_box(riblt_kept_exchange(&a_kept, &b_kept)))
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
    let mut prefix = kept(&item_sets(&keys, 0).0);
    let mut j = 0;
    group.bench_function("riblt-kept-replace-1M", |bench| {
        bench.iter(|| {
            j = (j + 7919) % N;
            let key = &keys[j];
            let version = (j % 3) as u8;
            prefix.remove(item_fingerprint(key, &state(key, version)));
            prefix.insert(item_fingerprint(key, &state(key, version + 1)));
        })
    });
    group.finish();
    summary(&rows);
}

fn summary(rows: &[(usize, Cost, Cost, usize)]) {
    println!(
        "\nanti-entropy of {N} keys ({KEY_BYTES}-byte keys, {STATE_BYTES}-byte states, {ENTRY_BYTES} bytes an entry; riblt symbols {SYMBOL_BYTES} B)"
    );
    println!(
        "{:>7} {:>9} {:>12} {:>12} {:>9} {:>12} {:>12} {:>13} {:>14} {:>13} {:>9}",
        "d",
        "messages",
        "rbsr bytes",
        "rbsr total",
        "riblt msg",
        "riblt bytes",
        "riblt total",
        "state bytes",
        "target 2d(k+v)",
        "bucket bytes",
        "buckets/rbsr"
    );
    for (d, cost, riblt, buckets) in rows {
        let total = cost.bytes + cost.states * ENTRY_BYTES;
        let riblt_total = riblt.bytes + riblt.states * ENTRY_BYTES;
        println!(
            "{:>7} {:>9} {:>12} {:>12} {:>9} {:>12} {:>12} {:>13} {:>14} {:>13} {:>9.1}",
            d,
            cost.messages,
            cost.bytes,
            total,
            riblt.messages,
            riblt.bytes,
            riblt_total,
            cost.states * ENTRY_BYTES,
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
