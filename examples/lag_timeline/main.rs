//! A picture of convergence: per-peer replication lag of three regions
//! over a minute of virtual time, one of them cut off from 0:20 to 0:40.
//!
//! Run: `cargo run --release --example lag_timeline [-- OUT.svg]`
//! (default `docs/lag_timeline.svg`). The picture is deterministic from
//! the network's seed and tokio's paused clock: the same bytes every run,
//! which `tests/lag_timeline.rs` checks against the committed file.

mod timeline;

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "docs/lag_timeline.svg".to_owned());
    let started = Instant::now();
    let measured = timeline::simulate()?;
    let svg = timeline::render(&measured)?;
    std::fs::write(&out, svg)?;
    println!(
        "{} seconds of virtual time simulated in {:?} (seed {})",
        timeline::RUN.as_secs(),
        started.elapsed(),
        timeline::SEED
    );
    println!("largest lag: {:.1} s", measured.lag_max());
    match measured.converged_at {
        Some(at) => println!(
            "partition {:?}..{:?}; converged at {at:.1} s ({:.1} s after the heal)",
            timeline::PARTITION_START,
            timeline::PARTITION_END,
            at - timeline::PARTITION_END.as_secs_f64()
        ),
        None => println!("did not converge within the run"),
    }
    println!("wrote {out}");
    Ok(())
}
