//! What the benches share: the runtime they run on, the configuration
//! that keeps repairs out of a throughput figure, and the wait for two
//! regions to be connected. Each bench is its own crate and uses a part.
#![allow(dead_code)]

use std::time::Duration;

use archipelago::region::{Region, RegionConfig};
use tokio::runtime::Runtime;

/// A multi-thread tokio runtime with 2 worker threads (this machine's
/// cores).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Defaults, with room for a whole run in the outbox (no overflow into
/// anti-entropy), no retransmission on a perfect link (a loaded machine,
/// or valgrind, can delay an ack past the default 500 ms: the resent
/// batches would be counted as traffic and work) and waits long enough for
/// any run.
pub fn roomy_config() -> RegionConfig {
    RegionConfig {
        ack_timeout: Duration::from_secs(60),
        outbox_len_max: 1 << 24,
        outbox_bytes_max: 1 << 32,
        session_wait_max: Duration::from_secs(120),
        shutdown_wait_max: Duration::from_secs(30),
        ..RegionConfig::default()
    }
}

/// Waits until every region sees its peers connected and has finished the
/// first anti-entropy exchange (started on connect).
pub async fn connected(regions: &[&Region]) {
    loop {
        let ready = regions.iter().all(|r| {
            let s = r.stats();
            s.syncs_completed >= 1 && !s.peers.is_empty() && s.peers.iter().all(|p| p.connected)
        });
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
