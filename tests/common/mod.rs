//! Shared set-up for the engine tests: regions on a paused tokio clock.
#![allow(dead_code)]

pub mod accounts;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use archipelago::clock::PhysicalClock;
use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig};
use archipelago::session::SessionToken;
use archipelago::storage::MemoryStorage;
use archipelago::transport::ChannelNetwork;

/// Wall-clock milliseconds that follow tokio's (paused) clock, so stamps
/// are reproducible, shifted by a per-region skew.
pub struct TokioClock {
    start: tokio::time::Instant,
    base_ms: u64,
    skew_ms: i64,
}

impl TokioClock {
    pub fn new(skew_ms: i64) -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
            base_ms: 1_764_000_000_000,
            skew_ms,
        }
    }
}

impl PhysicalClock for TokioClock {
    fn now_ms(&self) -> u64 {
        let elapsed = self.start.elapsed().as_millis() as u64;
        (self.base_ms + elapsed).saturating_add_signed(self.skew_ms)
    }
}

/// Fast timers for simulations.
pub fn test_config() -> RegionConfig {
    RegionConfig {
        batch_delay: Duration::from_millis(5),
        ack_timeout: Duration::from_millis(200),
        anti_entropy_interval: Duration::from_secs(2),
        sync_timeout: Duration::from_secs(1),
        session_wait_max: Duration::from_secs(2),
        shutdown_wait_max: Duration::from_secs(1),
        ..RegionConfig::default()
    }
}

pub fn region(net: &ChannelNetwork, name: &str, skew_ms: i64, config: RegionConfig) -> Region {
    Region::builder(name)
        .replica_id(archipelago::clock::ReplicaId::from_name(name))
        .transport(net.endpoint(name))
        .clock(TokioClock::new(skew_ms))
        .config(config)
        .build()
        .expect("inside a runtime")
}

/// A current-thread runtime on a paused clock: deterministic scheduling
/// and timers that jump ahead when everything waits.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// A region as a user builds it: a fresh replica id, `config`, the paused
/// clock, and `disk` as its storage when given.
pub fn region_on(
    net: &ChannelNetwork,
    name: &str,
    disk: Option<&MemoryStorage>,
    config: RegionConfig,
) -> Region {
    let mut builder = Region::builder(name)
        .transport(net.endpoint(name))
        .clock(TokioClock::new(0))
        .config(config);
    if let Some(disk) = disk {
        builder = builder.storage(disk.clone());
    }
    builder.build().expect("inside a runtime")
}

/// The value of the `GCounter` under `key` in `table`, if any.
pub async fn counter(region: &Region, table: &str, key: u64) -> Option<u64> {
    region
        .table::<u64, GCounter>(table)
        .unwrap()
        .read(&key)
        .await
        .unwrap()
        .map(|c| c.value())
}

/// Adds `n` to the `GCounter` under `key` in `table`, at `Memory`
/// acknowledgement: the write's token.
pub async fn add(region: &Region, table: &str, key: u64, n: u64) -> SessionToken {
    region
        .table::<u64, GCounter>(table)
        .unwrap()
        .update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), n)))
        .await
        .unwrap()
}

/// How long a real-time test waits for a condition.
pub const WAIT_MAX: Duration = Duration::from_secs(10);
/// How often it checks.
pub const POLL_EVERY: Duration = Duration::from_millis(5);

/// Any free port on the loopback interface.
pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Polls `check` until it holds; panics after `WAIT_MAX`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT_MAX:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The seed of a seeded test: `$var` when set (to replay a run), else
/// `default`; printed, so a failing run can be replayed.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("{var}={seed}");
    seed
}

/// A small deterministic generator (xorshift64) for fault schedules.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed.wrapping_mul(6364136223846793005) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
