//! Wire bytes per update: a batch of protocol 7 names its origin once and
//! each table once per run of its entries, so what a peer receives is at
//! most 1.05× the keys and deltas it carries, counted as the types encode
//! them alone (bare, as the outbox stores them and a batch of protocol 6
//! carried them). A peer of protocol 6 gets the older layout and
//! replicates both ways.
//!
//! Regions on the default `RegionConfig`, fresh random 64-bit replica ids
//! (9 bytes each on the wire), a paused clock. Each test asserts that no
//! frame was rejected and no anti-entropy exchange ran past the first one
//! at connect: the bytes are the batches', and nothing repaired them.

use crate::common;

use std::time::Duration;

use archipelago::crdt::{GCounter, LwwMap, LwwRegister, OrSet};
use archipelago::region::{Region, RegionConfig};
use archipelago::transport::ChannelNetwork;
use archipelago::wire;
use common::{paused_runtime, region_on};
use serde::Serialize;

/// Writes per table and phase.
const WRITES: u64 = 300;
/// The writer yields every this many writes: the engine then ships
/// batches of about this many.
const YIELD_EVERY: u64 = 50;
/// The bound: bytes received per byte of keys and deltas.
const BYTES_PER_PAYLOAD_BYTE_MAX: f64 = 1.05;

/// A value's bare encoding's length: what a batch carries of it.
fn bare_len<T: Serialize + ?Sized>(value: &T) -> usize {
    wire::encode(value).unwrap().len() - 1
}

/// Frame bytes `from` sent `to` that were not anti-entropy.
fn batch_bytes(from: &Region, to: &str) -> u64 {
    let stats = from.stats();
    let peer = stats.peers.iter().find(|p| p.name == to).unwrap();
    peer.bytes_sent - peer.sync_bytes_sent
}

/// Prints a phase's figures (shown with `--nocapture`: the figures of
/// `BENCHMARKS.md`).
fn report(layout: &str, phases: &[(&'static str, usize, u64)]) {
    for (table, payload, bytes) in phases {
        let (payload, bytes) = (
            *payload as f64 / WRITES as f64,
            *bytes as f64 / WRITES as f64,
        );
        eprintln!(
            "batch_bytes {layout}: {table}: {bytes:.2} B per update on the wire, key + delta {payload:.2} B: {:.3}x",
            bytes / payload
        );
    }
}

fn protocol_with(region: &Region, peer: &str) -> u16 {
    let stats = region.stats();
    stats
        .peers
        .iter()
        .find(|p| p.name == peer)
        .unwrap()
        .protocol
}

/// Writes `WRITES` updates to each of a `GCounter`, an `LwwRegister` and
/// an `LwwMap` table at `at`, one table after the other; returns, per
/// table, the bytes of keys and deltas written and the batch bytes `at`
/// sent `to` meanwhile (after the batches were applied there).
async fn write_phases(at: &Region, to: &Region) -> Vec<(&'static str, usize, u64)> {
    let mut phases = Vec::new();
    for table in ["likes", "names", "prefs"] {
        let before = batch_bytes(at, to.name());
        let mut payload = 0;
        for i in 0..WRITES {
            let key = i % 100;
            payload += bare_len(&key);
            let mut delta = 0;
            match table {
                "likes" => {
                    let t = at.table::<u64, GCounter>(table).unwrap();
                    t.update(&key, |c, ctx| {
                        c.apply(|c| {
                            let d = c.inc(ctx.replica(), 1);
                            delta = bare_len(&d);
                            d
                        })
                    })
                    .await
                    .unwrap();
                }
                "names" => {
                    let t = at.table::<u64, LwwRegister<String>>(table).unwrap();
                    t.update(&key, |r, ctx| {
                        r.apply(|r| {
                            let d = r.set(ctx.stamp(), format!("name-{i}"));
                            delta = bare_len(&d);
                            d
                        })
                    })
                    .await
                    .unwrap();
                }
                _ => {
                    let t = at.table::<u64, LwwMap<String, u64>>(table).unwrap();
                    t.update(&key, |m, ctx| {
                        m.apply(|m| {
                            let d = m.insert(ctx.stamp(), "theme".to_string(), i);
                            delta = bare_len(&d);
                            d
                        })
                    })
                    .await
                    .unwrap();
                }
            }
            payload += delta;
            if (i + 1) % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        phases.push((table, payload, batch_bytes(at, to.name()) - before));
    }
    phases
}

/// The last writes of [`write_phases`] arrived at `region`.
async fn assert_phases_landed(region: &Region) {
    let likes = region.table::<u64, GCounter>("likes").unwrap();
    let total: u64 = likes.iter().unwrap().map(|(_, c)| c.value()).sum();
    assert_eq!(total, WRITES, "every increment");
    let names = region.table::<u64, LwwRegister<String>>("names").unwrap();
    let last = names.read(&((WRITES - 1) % 100)).await.unwrap().unwrap();
    assert_eq!(last.get().unwrap(), &format!("name-{}", WRITES - 1));
    let prefs = region.table::<u64, LwwMap<String, u64>>("prefs").unwrap();
    let last = prefs.read(&((WRITES - 1) % 100)).await.unwrap().unwrap();
    assert_eq!(last.get("theme"), Some(&(WRITES - 1)));
}

fn declare(region: &Region) {
    region.table::<u64, GCounter>("likes").unwrap();
    region.table::<u64, LwwRegister<String>>("names").unwrap();
    region.table::<u64, LwwMap<String, u64>>("prefs").unwrap();
    region.table::<u64, OrSet<String>>("tags").unwrap();
}

fn assert_clean(regions: &[&Region], syncs: &[u64]) {
    for (region, syncs) in regions.iter().zip(syncs) {
        let stats = region.stats();
        assert_eq!(stats.rejected_frames, 0, "{}", stats.name);
        assert_eq!(stats.undecodable_values, 0, "{}", stats.name);
        assert_eq!(stats.syncs_completed, *syncs, "{}: no repair", stats.name);
    }
}

#[test]
fn batches_of_counters_registers_and_maps_cost_at_most_1_05x_their_keys_and_deltas() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(71);
        let a = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let b = region_on(&net, "eu-central", None, RegionConfig::default());
        declare(&a);
        declare(&b);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(protocol_with(&a, "eu-central"), 7);
        let syncs = [a.stats().syncs_completed, b.stats().syncs_completed];

        let phases = write_phases(&a, &b).await;
        assert_phases_landed(&b).await;
        report("protocol 7", &phases);
        for (table, payload, bytes) in phases {
            let ratio = bytes as f64 / payload as f64;
            assert!(
                ratio <= BYTES_PER_PAYLOAD_BYTE_MAX,
                "{table}: {bytes} bytes on the wire for {payload} bytes of keys and deltas ({ratio:.3}x)"
            );
        }
        assert_clean(&[&a, &b], &syncs);
        // The next periodic exchange finds every table equal: what `b`
        // stored from the compact batches fingerprints (by the states'
        // canonical encodings) as what `a` stores, so nothing is shipped.
        let received = [a.stats().sync_states_received, b.stats().sync_states_received];
        tokio::time::sleep(RegionConfig::default().anti_entropy_interval * 2).await;
        assert!(a.stats().syncs_completed + b.stats().syncs_completed > syncs[0] + syncs[1]);
        assert_eq!(
            [a.stats().sync_states_received, b.stats().sync_states_received],
            received,
            "an exchange after the batches ships nothing"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Removes at `b` of what `a` added carry `a`'s dots: ids of a replica the
/// batch's dependencies name, sent as two-byte references. They land.
#[test]
fn deltas_naming_other_replicas_replicate_through_references() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(72);
        let a = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let b = region_on(&net, "eu-central", None, RegionConfig::default());
        declare(&a);
        declare(&b);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let syncs = [a.stats().syncs_completed, b.stats().syncs_completed];
        let (tags_a, tags_b) = (
            a.table::<u64, OrSet<String>>("tags").unwrap(),
            b.table::<u64, OrSet<String>>("tags").unwrap(),
        );
        for key in 0..20u64 {
            tags_a
                .update(&key, |s, ctx| {
                    s.apply(|s| s.insert(ctx.replica(), "red".into()))
                })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for key in 0..20u64 {
            assert!(tags_b.read(&key).await.unwrap().unwrap().contains("red"));
            tags_b
                .update(&key, |s, ctx| {
                    s.apply(|s| s.remove("red"));
                    s.apply(|s| s.insert(ctx.replica(), "blue".into()));
                })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for key in 0..20u64 {
            let set = tags_a.read(&key).await.unwrap().unwrap();
            assert!(!set.contains("red") && set.contains("blue"), "key {key}");
        }
        assert_clean(&[&a, &b], &syncs);
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_protocol_6_peer_and_a_protocol_7_peer_replicate_both_ways() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(73);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let old_config = RegionConfig {
            protocol_version_max: 6,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, old_config);
        declare(&new);
        declare(&old);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(protocol_with(&new, "eu-central"), 6);
        assert_eq!(protocol_with(&old, "ap-northeast"), 6);
        let syncs = [new.stats().syncs_completed, old.stats().syncs_completed];

        // New to old: the older layout, its repeats included.
        let phases = write_phases(&new, &old).await;
        assert_phases_landed(&old).await;
        report("protocol 6", &phases);
        let (_, payload, bytes) = phases[0];
        assert!(
            bytes as f64 / payload as f64 > 1.15,
            "counters to a protocol-6 peer in the older layout: {bytes} bytes for {payload}"
        );
        // Old to new.
        let phases = write_phases(&old, &new).await;
        let total: u64 = new
            .table::<u64, GCounter>("likes")
            .unwrap()
            .iter()
            .unwrap()
            .map(|(_, c)| c.value())
            .sum();
        assert_eq!(total, 2 * WRITES, "both regions' increments");
        assert_eq!(phases.len(), 3);
        assert_clean(&[&new, &old], &syncs);
        new.shutdown().await;
        old.shutdown().await;
    });
}
