//! Session tokens on the engine's hot path.
//!
//! - `covered_by/<R>/{covered,behind}`: the check run on every session read,
//!   for tokens and applied vectors over `R` replicas; `behind` misses only
//!   the last replica's newest write, so the walk runs to the end;
//!   `covered-via-dominates` asks the same through `VersionVector::dominates`
//!   (the causal `partial_cmp`), for reference.
//! - `text/{display,parse}`: the text form of an 8-replica token, written for
//!   every response and parsed on every request.
//!
//! Run with `cargo bench --bench session`; about half a minute.

use std::hint::black_box;
use std::time::Duration;

use archipelago::clock::{ReplicaId, VersionVector};
use archipelago::session::SessionToken;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};

/// Replica counts the `covered_by` benches run at.
const REPLICA_COUNTS: [u32; 4] = [1, 4, 8, 64];
/// Replicas of the token whose text form is benched.
const TEXT_REPLICAS: u32 = 8;

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// A vector over `replicas` replicas with ids spread like `from_name`'s,
/// each at a counter in the millions.
fn vector(replicas: u32) -> VersionVector {
    (0..replicas)
        .map(|r| {
            (
                ReplicaId::new(u64::from(r).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                1_000_000 + u64::from(r),
            )
        })
        .collect()
}

fn covered_by(c: &mut Criterion) {
    let mut g = group(c, "covered_by");
    for replicas in REPLICA_COUNTS {
        let applied = vector(replicas);
        let covered = SessionToken::from_vector(applied.clone());
        let mut ahead = applied.clone();
        let (last, _) = ahead.iter().last().expect("at least one replica");
        ahead.increment(last);
        let behind = SessionToken::from_vector(ahead);
        assert!(covered.covered_by(&applied));
        assert!(!behind.covered_by(&applied));

        g.bench_function(format!("{replicas}/covered"), |b| {
            b.iter(|| black_box(&covered).covered_by(black_box(&applied)))
        });
        g.bench_function(format!("{replicas}/behind"), |b| {
            b.iter(|| black_box(&behind).covered_by(black_box(&applied)))
        });
        // Reference: the same question through the causal order.
        g.bench_function(format!("{replicas}/covered-via-dominates"), |b| {
            b.iter(|| black_box(&applied).dominates(black_box(&covered).as_vector()))
        });
    }
    g.finish();
}

fn text(c: &mut Criterion) {
    let mut g = group(c, "text");
    let token = SessionToken::from_vector(vector(TEXT_REPLICAS));
    let text = token.to_string();
    assert_eq!(text.parse::<SessionToken>().as_ref(), Ok(&token));

    g.bench_function(format!("display/{TEXT_REPLICAS}"), |b| {
        b.iter(|| black_box(&token).to_string())
    });
    g.bench_function(format!("parse/{TEXT_REPLICAS}"), |b| {
        b.iter(|| black_box(text.as_str()).parse::<SessionToken>())
    });
    g.finish();
}

criterion_group!(benches, covered_by, text);
criterion_main!(benches);
