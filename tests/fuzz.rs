//! The decoders under seeded fuzzing (`archipelago::testing::fuzz`): valid
//! frames of every public type and engine message, mutated byte by byte and
//! field by field. No panic, no decode over its allocation cap, every
//! decoded value stable through encode → decode, every decoded CRDT
//! `⊥ ⊔ v == v`.
//!
//! `FUZZ_EXECS` sets the executions (100 000 by default), `FUZZ_SEED` the
//! seed (a failure prints both, and the execution to replay):
//!
//! ```text
//! FUZZ_EXECS=10000000 FUZZ_SEED=7 cargo test --release --test suite fuzz:: -- --nocapture
//! ```

use std::time::Instant;

use archipelago::testing::fuzz::{self, FuzzConfig};

/// Executions when `FUZZ_EXECS` is unset: what CI runs.
const EXECS_DEFAULT: u64 = 100_000;

/// The seed when `FUZZ_SEED` is unset.
const SEED_DEFAULT: u64 = 0x5eed_0009;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[test]
fn decoders_survive_seeded_mutations() {
    assert!(fuzz::counting_allocator_installed());
    let config = FuzzConfig {
        seed: env_u64("FUZZ_SEED", SEED_DEFAULT),
        execs: env_u64("FUZZ_EXECS", EXECS_DEFAULT),
        check_alloc: true,
    };
    let started = Instant::now();
    let report = fuzz::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    eprintln!(
        "fuzz: seed {} — {} executions in {:.1} s: {} decoded, {} rejected, largest frame {} bytes",
        config.seed,
        report.execs,
        started.elapsed().as_secs_f64(),
        report.decoded,
        report.rejected,
        report.largest_frame_bytes,
    );
    assert_eq!(report.execs, config.execs);
    // The mutations keep a fair share of frames decodable, so the checks
    // after decoding run too.
    assert!(report.decoded * 20 > report.execs, "{report:?}");
}

#[test]
fn an_execution_replays_from_its_seed() {
    for exec in 0..200 {
        let first = fuzz::replay(3, exec, true);
        assert_eq!(first, fuzz::replay(3, exec, true));
        assert!(first.is_ok(), "{}", first.unwrap_err());
    }
}
