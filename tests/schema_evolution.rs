//! Value schema evolution during a rolling upgrade: a struct value gains a
//! trailing `#[serde(default)]` field at one region while another still
//! runs the old struct. Replication works both ways (nothing undecodable,
//! nothing rejected), the old region reads the fields it knows, the new
//! one the default for the field the old one never wrote, and a field
//! written at a new region survives passing through an old one.

use crate::common;

use std::time::Duration;

use archipelago::region::{Region, RegionConfig, ResolverTable};
use archipelago::resolve::{LastWriteWins, VersionSet};
use archipelago::transport::ChannelNetwork;
use archipelago::wire;
use common::{paused_runtime, region_on};
use serde::{Deserialize, Serialize};

/// The profile as the old build declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileV1 {
    pub visits: u32,
}

/// The profile as the new build declares it: one trailing field more.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileV2 {
    pub visits: u32,
    #[serde(default)]
    pub nickname: Option<String>,
}

fn v1(region: &Region) -> ResolverTable<u64, ProfileV1> {
    region.table_with("profiles", LastWriteWins).unwrap()
}

fn v2(region: &Region) -> ResolverTable<u64, ProfileV2> {
    region.table_with("profiles", LastWriteWins).unwrap()
}

#[test]
fn an_old_struct_and_a_new_one_replicate_both_ways() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(21);
        let old = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let new = region_on(&net, "eu-central", None, RegionConfig::default());
        let (old_t, new_t) = (v1(&old), v2(&new));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let syncs = (old.stats().syncs_completed, new.stats().syncs_completed);

        old_t.put(&1, ProfileV1 { visits: 3 }).await.unwrap();
        let nickname = Some("Aiko".to_string());
        let written = ProfileV2 {
            visits: 7,
            nickname: nickname.clone(),
        };
        new_t.put(&2, written.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let at_new = new_t.read(&1).await.unwrap().expect("old -> new");
        assert_eq!(
            at_new.value(),
            Some(&ProfileV2 {
                visits: 3,
                nickname: None
            }),
            "the missing trailing field takes its default"
        );
        let at_old = old_t.read(&2).await.unwrap().expect("new -> old");
        assert_eq!(at_old.value(), Some(&ProfileV1 { visits: 7 }));
        assert_eq!(
            (old.stats().syncs_completed, new.stats().syncs_completed),
            syncs,
            "batches, not a repair"
        );
        for region in [&old, &new] {
            let stats = region.stats();
            assert_eq!(stats.undecodable_values, 0, "{}", region.name());
            assert_eq!(stats.rejected_frames, 0, "{}", region.name());
        }
        old.shutdown().await;
        new.shutdown().await;
    });
}

/// New → old → new with the direct link cut: the old region keeps the
/// new field's bytes it cannot read and ships them on in its state, and
/// the third region reads them.
#[test]
fn a_new_field_survives_passing_through_an_old_region() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(22);
        let tokyo = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let frankfurt = region_on(&net, "eu-central", None, RegionConfig::default());
        let virginia = region_on(&net, "us-east", None, RegionConfig::default());
        net.partition("ap-northeast", "us-east");
        let (tokyo_t, frankfurt_t, virginia_t) = (v2(&tokyo), v1(&frankfurt), v2(&virginia));
        tokio::time::sleep(Duration::from_millis(100)).await;

        let written = ProfileV2 {
            visits: 5,
            nickname: Some("Aiko".to_string()),
        };
        tokyo_t.put(&1, written.clone()).await.unwrap();
        common::eventually("the old region holds it", || async {
            frankfurt_t.read(&1).await.unwrap().is_some()
        })
        .await;
        assert_eq!(
            frankfurt_t.read(&1).await.unwrap().unwrap().value(),
            Some(&ProfileV1 { visits: 5 })
        );
        // Virginia hears of it from Frankfurt alone: its anti-entropy
        // round (default interval) ships Frankfurt's state, unknown bytes
        // included.
        tokio::time::sleep(RegionConfig::default().anti_entropy_interval * 2).await;
        assert!(virginia.stats().syncs_completed >= 1, "a repair carried it");
        let at_virginia = virginia_t.read(&1).await.unwrap().unwrap();
        assert_eq!(
            at_virginia.value(),
            Some(&written),
            "the field written at Tokyo came through Frankfurt"
        );
        for region in [&tokyo, &frankfurt, &virginia] {
            let stats = region.stats();
            assert_eq!(stats.undecodable_values, 0, "{}", region.name());
            assert_eq!(stats.rejected_frames, 0, "{}", region.name());
        }
        for region in [tokyo, frankfurt, virginia] {
            region.shutdown().await;
        }
    });
}

/// A version set of the old struct, encoded today, decodes as the new one
/// (the default filled in); one of the new struct decodes as the old one
/// and encodes back to the same bytes (the unknown field kept).
#[test]
fn values_decode_across_struct_versions_and_keep_unknown_bytes() {
    use archipelago::clock::{Hlc, ManualClock, ReplicaId};
    let wall = ManualClock::new(1_000);
    let hlc = Hlc::with_clock(ReplicaId::new(1), wall);

    let mut old = VersionSet::new();
    old.write(hlc.stamp(), ProfileV1 { visits: 3 });
    let bytes = wire::encode(&old).unwrap();
    let as_new: VersionSet<ProfileV2> = wire::decode(&bytes).unwrap();
    assert_eq!(
        as_new.versions()[0].value,
        ProfileV2 {
            visits: 3,
            nickname: None
        }
    );

    let mut new = VersionSet::new();
    let written = ProfileV2 {
        visits: 4,
        nickname: Some("Aiko".into()),
    };
    new.write(hlc.stamp(), written.clone());
    let bytes = wire::encode(&new).unwrap();
    let as_old: VersionSet<ProfileV1> = wire::decode(&bytes).unwrap();
    assert_eq!(as_old.versions()[0].value, ProfileV1 { visits: 4 });
    assert_eq!(wire::encode(&as_old).unwrap(), bytes, "re-emitted whole");
    let back: VersionSet<ProfileV2> = wire::decode(&wire::encode(&as_old).unwrap()).unwrap();
    assert_eq!(back.versions()[0].value, written);
}

/// A value's length prefix claiming more than the frame holds is refused
/// with a typed error, before anything is allocated for it.
#[test]
fn a_hostile_value_length_is_refused() {
    use archipelago::clock::{Hlc, ManualClock, ReplicaId};
    let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
    let mut set = VersionSet::new();
    set.write(
        hlc.stamp(),
        ProfileV2 {
            visits: 4,
            nickname: Some("Aiko".into()),
        },
    );
    let bytes = wire::encode(&set).unwrap();
    // Find the value's length prefix: the byte after the header (3 bytes
    // of tag, 1 of count) and the version byte.
    let at = 1 + 3 + 1;
    let value_len = usize::from(bytes[at]);
    assert!(value_len < 251 && value_len > 0, "a one-byte length");
    for claim in [
        vec![251, 0xff, 0xff],
        vec![253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ] {
        let mut hostile = bytes[..at].to_vec();
        hostile.extend_from_slice(&claim);
        hostile.extend_from_slice(&bytes[at + 1..]);
        let refused = wire::decode::<VersionSet<ProfileV2>>(&hostile);
        assert!(
            matches!(refused, Err(wire::WireError::Malformed(_))),
            "{claim:?}: {refused:?}"
        );
    }
}

/// Batch bytes per resolver update from a region to a peer of protocol
/// `protocol` (the layout it is sent), over `UPDATES` puts of distinct keys.
fn batch_bytes_per_update(protocol: u16) -> f64 {
    const UPDATES: u64 = 200;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(23);
        let a = region_on(&net, "a", None, RegionConfig::default());
        let pinned = RegionConfig {
            protocol_version_max: protocol,
            ..RegionConfig::default()
        };
        let b = region_on(&net, "b", None, pinned);
        let (at_a, at_b) = (v2(&a), v2(&b));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = net.link_stats("a", "b");
        let syncs = a.stats().syncs_completed + b.stats().syncs_completed;
        for key in 0..UPDATES {
            let value = ProfileV2 {
                visits: key as u32,
                nickname: Some("Aiko".into()),
            };
            at_a.put(&key, value).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(at_b.read(&(UPDATES - 1)).await.unwrap().is_some());
        let sent_after = net.link_stats("a", "b");
        assert_eq!(
            a.stats().syncs_completed + b.stats().syncs_completed,
            syncs,
            "no anti-entropy in the measured window"
        );
        for r in [&a, &b] {
            assert_eq!(r.stats().rejected_frames, 0, "{}", r.name());
            assert_eq!(r.stats().undecodable_values, 0, "{}", r.name());
        }
        a.shutdown().await;
        b.shutdown().await;
        (sent_after.bytes_delivered - sent.bytes_delivered) as f64 / UPDATES as f64
    })
}

/// The delimited layout costs 3 bytes per update: the set's header is a
/// 3-byte varint where the older layout's count was 1 byte, and the
/// value's length is 1 byte (a value under 251 bytes).
#[test]
fn a_delimited_value_costs_3_bytes_per_update() {
    let older = batch_bytes_per_update(4);
    let delimited = batch_bytes_per_update(archipelago::region::PROTOCOL_VERSION);
    println!(
        "batch bytes per resolver update (200 puts of a 2-field struct): \
         older layout (protocol 4) {older:.2} B, delimited (protocol 5) {delimited:.2} B \
         (+{:.2} B)",
        delimited - older
    );
    assert!(
        (delimited - older - 3.0).abs() < 0.01,
        "{older} -> {delimited}"
    );
}
