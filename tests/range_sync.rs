//! Anti-entropy by ranges (protocol 6) between two regions of 100k keys:
//! what it costs grows with the keys that differ (d = 0, 1, 100), far
//! below the bucket digests a pair with a protocol-5 side still exchanges
//! (measured in the same test), one exchange per repair, nothing refused.
//! `RANGE_SYNC_KEYS` sets the table size.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{PROTOCOL_VERSION, Region, RegionConfig};
use archipelago::transport::ChannelNetwork;
use archipelago::wire;

/// Keys both regions hold.
fn keys() -> u64 {
    std::env::var("RANGE_SYNC_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Writes per differing key: past the writer's outbox of 5, so only
/// anti-entropy can bring them (for d = 1 too).
const WRITES_PER_KEY: u64 = 6;

/// What one repair cost, seen from tokyo.
#[derive(Debug, Clone, Copy)]
struct Repair {
    d: u64,
    /// Anti-entropy bytes both ways.
    bytes: u64,
    /// Exchanges completed, per side.
    exchanges: (u64, u64),
}

async fn wait_until(what: &str, done: impl AsyncFnMut() -> bool) {
    assert!(try_until(done).await, "timed out waiting for {what}");
}

/// Whether `done` holds within 120 s (of paused time).
async fn try_until(mut done: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..120_000 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

fn sync_bytes(region: &Region, peer: &str) -> u64 {
    let stats = region.stats();
    let peer = stats.peers.iter().find(|p| p.name == peer).expect("a peer");
    peer.sync_bytes_sent + peer.sync_bytes_received
}

fn protocol(region: &Region, peer: &str) -> u16 {
    let stats = region.stats();
    stats
        .peers
        .iter()
        .find(|p| p.name == peer)
        .expect("a peer")
        .protocol
}

/// Tokyo writes `keys()` keys, Frankfurt (speaking up to
/// `frankfurt_protocol`) receives them by batches; then, for each d, the
/// link is cut, Frankfurt writes d keys (overflowing its outbox), the link
/// heals, and the repair is measured until Tokyo holds them. d = 0 is the
/// periodic exchange of equal tables.
fn repairs(frankfurt_protocol: u16, seed: u64) -> Vec<Repair> {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(seed);
        let tokyo = common::region(&net, "tokyo", 0, RegionConfig::default());
        let small_outbox = RegionConfig {
            outbox_len_max: 5,
            protocol_version_max: frankfurt_protocol,
            ..RegionConfig::default()
        };
        let frankfurt = common::region(&net, "frankfurt", 0, small_outbox);
        let hits_t = tokyo.table::<u64, GCounter>("hits").unwrap();
        let hits_f = frankfurt.table::<u64, GCounter>("hits").unwrap();
        let n = keys();
        for k in 0..n {
            hits_t
                .update(&k, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .unwrap();
        }
        wait_until("the first replication", async || {
            hits_f.len() == n as usize && tokyo.applied() == frankfurt.applied()
        })
        .await;
        assert_eq!(
            protocol(&tokyo, "frankfurt"),
            frankfurt_protocol.min(PROTOCOL_VERSION)
        );
        let interval = RegionConfig::default().anti_entropy_interval;
        let mut out = Vec::new();
        for d in [0u64, 1, 100] {
            if d == 0 {
                // Right after a periodic exchange, so the window below
                // holds exactly the next one.
                let done = frankfurt.stats().syncs_completed;
                wait_until("a periodic exchange", async || {
                    frankfurt.stats().syncs_completed > done
                })
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let bytes_before = sync_bytes(&tokyo, "frankfurt");
            let before = (
                tokyo.stats().syncs_completed,
                frankfurt.stats().syncs_completed,
            );
            let keys: Vec<u64> = (0..d).map(|i| i * 7_919 % n).collect();
            if d == 0 {
                tokio::time::sleep(interval + Duration::from_millis(500)).await;
            } else {
                let mut expected = Vec::new();
                for k in &keys {
                    let value = hits_t.read(k).await.unwrap().map_or(0, |c| c.value());
                    expected.push(value + WRITES_PER_KEY);
                }
                net.partition("tokyo", "frankfurt");
                for k in &keys {
                    for _ in 0..WRITES_PER_KEY {
                        hits_f
                            .update(k, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                            .await
                            .unwrap();
                    }
                }
                assert!(frankfurt.stats().outbox_overflows >= 1);
                net.heal_all();
                let repaired = try_until(async || {
                    for (k, expected) in keys.iter().zip(&expected) {
                        let value = hits_t.read(k).await.unwrap().map(|c| c.value());
                        if value != Some(*expected) {
                            return false;
                        }
                    }
                    tokyo.applied() == frankfurt.applied()
                })
                .await;
                assert!(
                    repaired,
                    "d = {d}: no repair: {:?}\n{:?}\n{:?} {:?}",
                    tokyo.stats(),
                    frankfurt.stats(),
                    tokyo.applied(),
                    frankfurt.applied()
                );
                // The push's confirmation and the byte counters settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            out.push(Repair {
                d,
                bytes: sync_bytes(&tokyo, "frankfurt") - bytes_before,
                exchanges: (
                    tokyo.stats().syncs_completed - before.0,
                    frankfurt.stats().syncs_completed - before.1,
                ),
            });
        }
        for region in [&tokyo, &frankfurt] {
            assert_eq!(region.stats().rejected_frames, 0, "{:?}", region.stats());
        }
        tokyo.shutdown().await;
        frankfurt.shutdown().await;
        out
    })
}

/// One key and its state as a transfer carries it: key and a GCounter
/// of two replicas.
fn entry_bytes() -> u64 {
    let mut state = GCounter::new();
    state.inc(archipelago::clock::ReplicaId::from_name("tokyo"), 1);
    state.inc(
        archipelago::clock::ReplicaId::from_name("frankfurt"),
        WRITES_PER_KEY,
    );
    (wire::encode(&(keys() - 1)).unwrap().len() + wire::encode(&state).unwrap().len()) as u64
}

#[test]
fn anti_entropy_by_ranges_costs_what_differs_not_the_table() {
    let seed = common::seed_from_env("RANGE_SYNC_SEED", 10);
    let ranges = repairs(PROTOCOL_VERSION, seed);
    let buckets = repairs(5, seed);
    let entry = entry_bytes();
    // The figure of BENCHMARKS.md ("Anti-entropy in the engine"), with
    // `--nocapture`.
    eprintln!(
        "anti-entropy of {} keys ({entry}-byte entries), seed {seed}:",
        keys()
    );
    for (r, b) in ranges.iter().zip(&buckets) {
        eprintln!(
            "  d = {:>3}: ranges {:>6} bytes, buckets {:>7} bytes ({:.0}x), exchanges {:?} / {:?}",
            r.d,
            r.bytes,
            b.bytes,
            b.bytes as f64 / r.bytes as f64,
            r.exchanges,
            b.exchanges
        );
    }
    for (r, b) in ranges.iter().zip(&buckets) {
        assert_eq!(r.exchanges, (1, 1), "one exchange per repair: {r:?}");
        assert_eq!(b.exchanges, (1, 1), "one exchange per repair: {b:?}");
        // About 1 KB of fingerprints per difference at this size (see
        // BENCHMARKS.md), each differing key crossing both ways, and a
        // fixed cost: the empty exchange, the vectors, the confirmation.
        let bound = 1_200 * r.d + 2 * r.d * entry + 600;
        assert!(r.bytes <= bound, "{r:?} over {bound} bytes");
        // Buckets ship every key of a differing bucket (~100 here).
        assert!(r.bytes * 2 < b.bytes, "ranges {r:?} vs buckets {b:?}");
    }
    assert!(
        ranges[0].bytes < 600,
        "equal tables: a fingerprint each way: {:?}",
        ranges[0]
    );
    assert!(
        ranges[0].bytes * 50 < buckets[0].bytes,
        "{ranges:?} vs {buckets:?}"
    );
    // The protocol-5 pair compared the 1024 digests of 8 bytes.
    assert!(buckets.iter().all(|b| b.bytes > 8 * 1024), "{buckets:?}");
    assert!(ranges[0].bytes < ranges[1].bytes && ranges[1].bytes < ranges[2].bytes);
}
