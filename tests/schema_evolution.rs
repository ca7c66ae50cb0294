//! Value schema evolution during a rolling upgrade: a struct value gains a
//! trailing `#[serde(default)]` field at one region while another still
//! runs the old struct. Replication works both ways (nothing undecodable,
//! nothing rejected), the old region reads the fields it knows, the new
//! one the default for the field the old one never wrote, and a field
//! written at a new region survives passing through an old one (for homed
//! tables: through an old home's writes).

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
    // Protocol 6: the last whose batches name origin and table per entry
    // (protocol 7's compaction is measured in `batch_bytes`).
    let delimited = batch_bytes_per_update(6);
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

// ---------------------------------------------------------------------------
// CRDT values (protocol 6): LwwRegister, LwwMap and MvRegister.

use archipelago::crdt::{LwwMap, LwwRegister, MvRegister};
use serde::de::DeserializeOwned;

/// What a profile struct needs to be the value of the three CRDT tables.
pub trait Profile:
    Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl Profile for ProfileV1 {}
impl Profile for ProfileV2 {}

/// The CRDTs whose user values are delimited since protocol 6, each a
/// table of profiles.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `LwwRegister<P>`.
    Register,
    /// `LwwMap<String, P>`, the profile under `"home"`.
    Map,
    /// `MvRegister<P>`, a single sibling.
    Siblings,
}

/// Every kind, for tests that run each.
pub const KINDS: [Kind; 3] = [Kind::Register, Kind::Map, Kind::Siblings];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Register => "profile_register",
            Kind::Map => "profile_map",
            Kind::Siblings => "profile_siblings",
        }
    }

    /// Declares this kind's table of `P` at `region`.
    pub fn declare<P: Profile>(self, region: &Region) {
        match self {
            Kind::Register => drop(region.table::<u64, LwwRegister<P>>(self.name()).unwrap()),
            Kind::Map => drop(region.table::<u64, LwwMap<String, P>>(self.name()).unwrap()),
            Kind::Siblings => drop(region.table::<u64, MvRegister<P>>(self.name()).unwrap()),
        }
    }

    /// Writes `p` under `key`.
    pub async fn write<P: Profile>(self, region: &Region, key: u64, p: P) {
        match self {
            Kind::Register => region
                .table::<u64, LwwRegister<P>>(self.name())
                .unwrap()
                .update(&key, |r, ctx| r.apply(|r| r.set(ctx.stamp(), p)))
                .await
                .unwrap(),
            Kind::Map => region
                .table::<u64, LwwMap<String, P>>(self.name())
                .unwrap()
                .update(&key, |m, ctx| {
                    m.apply(|m| m.insert(ctx.stamp(), "home".into(), p))
                })
                .await
                .unwrap(),
            Kind::Siblings => region
                .table::<u64, MvRegister<P>>(self.name())
                .unwrap()
                .update(&key, |m, ctx| m.apply(|m| m.write(ctx.replica(), p)))
                .await
                .unwrap(),
        };
    }

    /// The profile under `key` and how many bytes it kept unread.
    pub fn read<P: Profile>(self, region: &Region, key: u64) -> Option<(P, usize)> {
        match self {
            Kind::Register => region
                .table::<u64, LwwRegister<P>>(self.name())
                .unwrap()
                .read_with(&key, |r| {
                    r.get().cloned().map(|p| (p, r.unknown_bytes().len()))
                })
                .unwrap()
                .flatten(),
            Kind::Map => region
                .table::<u64, LwwMap<String, P>>(self.name())
                .unwrap()
                .read_with(&key, |m| {
                    let unknown = m.unknown_bytes("home").len();
                    m.get("home").cloned().map(|p| (p, unknown))
                })
                .unwrap()
                .flatten(),
            Kind::Siblings => region
                .table::<u64, MvRegister<P>>(self.name())
                .unwrap()
                .read_with(&key, |m| {
                    assert!(m.values().len() <= 1, "{m:?}");
                    let unknown = m.unknown_bytes().map(|(_, b)| b.len()).sum();
                    m.values().next().cloned().map(|p| (p, unknown))
                })
                .unwrap()
                .flatten(),
        }
    }
}

fn declare_all<P: Profile>(region: &Region) {
    for kind in KINDS {
        kind.declare::<P>(region);
    }
}

fn assert_clean(regions: &[&Region]) {
    for region in regions {
        let stats = region.stats();
        assert_eq!(stats.undecodable_values, 0, "{}", region.name());
        assert_eq!(stats.rejected_frames, 0, "{}", region.name());
    }
}

fn aiko(visits: u32) -> ProfileV2 {
    ProfileV2 {
        visits,
        nickname: Some("Aiko".to_string()),
    }
}

/// For each CRDT: a region of the old struct and one of the new replicate
/// both ways by batches; the old reads the fields it knows (and keeps the
/// bytes of the new field), the new reads the default where the old wrote.
#[test]
fn crdt_values_of_an_old_struct_and_a_new_one_replicate_both_ways() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(24);
        let old = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let new = region_on(&net, "eu-central", None, RegionConfig::default());
        declare_all::<ProfileV1>(&old);
        declare_all::<ProfileV2>(&new);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let syncs = (old.stats().syncs_completed, new.stats().syncs_completed);
        for kind in KINDS {
            kind.write(&old, 1, ProfileV1 { visits: 3 }).await;
            kind.write(&new, 2, aiko(7)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for kind in KINDS {
            let defaulted = ProfileV2 {
                visits: 3,
                nickname: None,
            };
            assert_eq!(
                kind.read(&new, 1),
                Some((defaulted, 0)),
                "{kind:?}: old -> new"
            );
            let (at_old, unknown) = kind.read::<ProfileV1>(&old, 2).expect("new -> old");
            assert_eq!(at_old, ProfileV1 { visits: 7 }, "{kind:?}");
            assert_eq!(unknown, 6, "{kind:?}: Some(\"Aiko\") kept unread");
        }
        assert_eq!(
            (old.stats().syncs_completed, new.stats().syncs_completed),
            syncs,
            "batches, not a repair"
        );
        assert_clean(&[&old, &new]);
        old.shutdown().await;
        new.shutdown().await;
    });
}

/// For each CRDT, new → old → new with the old region restarted from its
/// redb store in between: the old region keeps the new field's bytes it
/// cannot read, stores them, and after its restart ships them on to a new
/// region that never heard from the writer.
#[cfg(feature = "redb")]
#[test]
fn a_new_field_in_crdt_values_survives_an_old_relay_and_its_restart() {
    use archipelago::region::AckLevel;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(25);
        let dir = std::env::temp_dir().join(format!("archipelago-relay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let frankfurt_on_disk = || {
            let region = Region::builder("eu-central")
                .transport(net.endpoint("eu-central"))
                .clock(common::TokioClock::new(0))
                .data_dir(&dir)
                .build()
                .unwrap();
            declare_all::<ProfileV1>(&region);
            region
        };
        let tokyo = region_on(&net, "ap-northeast", None, RegionConfig::default());
        declare_all::<ProfileV2>(&tokyo);
        let frankfurt = frankfurt_on_disk();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for kind in KINDS {
            kind.write(&tokyo, 1, aiko(5)).await;
        }
        common::eventually("the old region holds them", || async {
            KINDS
                .iter()
                .all(|k| k.read::<ProfileV1>(&frankfurt, 1).is_some())
        })
        .await;
        // Every key durable at Frankfurt: a local write acknowledged at
        // `Local` waits for the group commit carrying what came before.
        frankfurt
            .table::<u64, LwwRegister<ProfileV1>>("marker")
            .unwrap()
            .with_ack(AckLevel::Local)
            .update(&0, |r, ctx| {
                r.apply(|r| r.set(ctx.stamp(), ProfileV1 { visits: 0 }))
            })
            .await
            .unwrap();
        assert_clean(&[&tokyo, &frankfurt]);
        tokyo.shutdown().await;
        frankfurt.shutdown().await;

        let frankfurt = frankfurt_on_disk();
        assert_eq!(frankfurt.incarnation(), 2);
        for kind in KINDS {
            let (at_old, unknown) = kind.read::<ProfileV1>(&frankfurt, 1).expect("stored");
            assert_eq!((at_old, unknown), (ProfileV1 { visits: 5 }, 6), "{kind:?}");
        }
        let virginia = region_on(&net, "us-east", None, RegionConfig::default());
        declare_all::<ProfileV2>(&virginia);
        common::eventually("a repair carries them to Virginia", || async {
            KINDS
                .iter()
                .all(|k| k.read::<ProfileV2>(&virginia, 1).is_some())
        })
        .await;
        assert!(
            virginia.stats().syncs_completed >= 1,
            "a repair carried them"
        );
        for kind in KINDS {
            assert_eq!(
                kind.read(&virginia, 1),
                Some((aiko(5), 0)),
                "{kind:?}: the field written at Tokyo came through Frankfurt's restart"
            );
        }
        assert_clean(&[&frankfurt, &virginia]);
        frankfurt.shutdown().await;
        virginia.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// For each CRDT, a peer pinned to protocol 5 (values positional) and one
/// of protocol 6 replicate both ways by batches; the protocol-5 peer is
/// sent the older layout (one byte less per value).
#[test]
fn a_protocol_5_peer_and_a_protocol_6_peer_replicate_crdt_values_both_ways() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(26);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let pinned = RegionConfig {
            protocol_version_max: 5,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, pinned);
        declare_all::<ProfileV2>(&new);
        declare_all::<ProfileV2>(&old);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let protocol = new
            .stats()
            .peers
            .iter()
            .find(|p| p.name == "eu-central")
            .unwrap()
            .protocol;
        assert_eq!(protocol, 5);
        let syncs = (new.stats().syncs_completed, old.stats().syncs_completed);
        for kind in KINDS {
            kind.write(&new, 1, aiko(1)).await;
            kind.write(&old, 2, aiko(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for kind in KINDS {
            assert_eq!(kind.read(&old, 1), Some((aiko(1), 0)), "{kind:?}: 6 -> 5");
            assert_eq!(kind.read(&new, 2), Some((aiko(2), 0)), "{kind:?}: 5 -> 6");
        }
        assert_eq!(
            (new.stats().syncs_completed, old.stats().syncs_completed),
            syncs,
            "batches, not a repair"
        );
        assert_clean(&[&new, &old]);
        new.shutdown().await;
        old.shutdown().await;
    });
}

/// Batch bytes per update of `kind` from a region to a peer of protocol
/// `protocol` (the layout it is sent), over `UPDATES` writes of distinct
/// keys.
fn crdt_batch_bytes_per_update(kind: Kind, protocol: u16) -> f64 {
    const UPDATES: u64 = 200;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(27);
        let a = region_on(&net, "a", None, RegionConfig::default());
        let pinned = RegionConfig {
            protocol_version_max: protocol,
            ..RegionConfig::default()
        };
        let b = region_on(&net, "b", None, pinned);
        kind.declare::<ProfileV2>(&a);
        kind.declare::<ProfileV2>(&b);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = net.link_stats("a", "b");
        let syncs = a.stats().syncs_completed + b.stats().syncs_completed;
        for key in 0..UPDATES {
            kind.write(&a, key, aiko(key as u32)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(kind.read::<ProfileV2>(&b, UPDATES - 1).is_some());
        let sent_after = net.link_stats("a", "b");
        assert_eq!(
            a.stats().syncs_completed + b.stats().syncs_completed,
            syncs,
            "no anti-entropy in the measured window"
        );
        assert_clean(&[&a, &b]);
        a.shutdown().await;
        b.shutdown().await;
        (sent_after.bytes_delivered - sent.bytes_delivered) as f64 / UPDATES as f64
    })
}

/// Delimiting costs 1 byte per update for a register and a map (the
/// value's length, under 251 bytes; the layout rides in the tag byte they
/// already had) and 2 for a multi-value register (its tag byte, and the
/// value's length).
#[test]
fn a_delimited_crdt_value_costs_1_or_2_bytes_per_update() {
    for (kind, extra) in [
        (Kind::Register, 1.0),
        (Kind::Map, 1.0),
        (Kind::Siblings, 2.0),
    ] {
        let positional = crdt_batch_bytes_per_update(kind, 5);
        // Protocol 6: the last of batches in the per-entry layout.
        let delimited = crdt_batch_bytes_per_update(kind, 6);
        println!(
            "{kind:?}: batch bytes per update (200 writes of a 2-field struct): \
             positional (protocol 5) {positional:.2} B, delimited (protocol 6) \
             {delimited:.2} B (+{:.2} B)",
            delimited - positional
        );
        assert!(
            (delimited - positional - extra).abs() < 0.01,
            "{kind:?}: {positional} -> {delimited}"
        );
    }
}

/// A layout tag no build writes (a register's first byte, a map row's tag,
/// a multi-value register's first byte) is refused with a typed error.
#[test]
fn a_crdt_layout_tag_no_build_writes_is_refused() {
    use archipelago::clock::{Hlc, ManualClock, ReplicaId};
    use archipelago::wire::{InvalidRule, WireError};
    let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
    let mut reg = LwwRegister::new();
    reg.set(hlc.stamp(), aiko(1));
    let mut bytes = wire::encode(&reg).unwrap();
    assert_eq!(bytes[1], 2, "the delimited tag after the wire version");
    bytes[1] = 3;
    assert_eq!(
        wire::decode::<LwwRegister<ProfileV2>>(&bytes),
        Err(WireError::Invalid {
            ty: "LwwRegister",
            rule: InvalidRule::UnknownLayout
        })
    );

    let mut map = LwwMap::new();
    map.insert(hlc.stamp(), 1u8, aiko(1));
    let mut bytes = wire::encode(&map).unwrap();
    // Wire version, row count, key, then the stamp (6 bytes here).
    let at = 1 + 1 + 1 + 6;
    assert_eq!(bytes[at], 2, "the row's delimited tag");
    bytes[at] = 7;
    assert_eq!(
        wire::decode::<LwwMap<u8, ProfileV2>>(&bytes),
        Err(WireError::Invalid {
            ty: "LwwMap",
            rule: InvalidRule::UnknownLayout
        })
    );

    let mut mv = MvRegister::new();
    mv.write(ReplicaId::new(1), aiko(1));
    let mut bytes = wire::encode(&mv).unwrap();
    assert_eq!(bytes[1], 255, "the delimited tag");
    bytes[1] = 254;
    let refused = wire::decode::<MvRegister<ProfileV2>>(&bytes);
    assert!(
        matches!(refused, Err(WireError::Malformed(_))),
        "{refused:?}"
    );
}

/// Concurrent siblings of the new struct, merged at an old build in
/// either order, keep each sibling's unknown bytes: equal states, equal
/// bytes, and the new build reads both fields back.
#[test]
fn concurrent_new_siblings_merged_at_an_old_build_keep_their_fields() {
    use archipelago::clock::ReplicaId;
    use archipelago::crdt::Crdt;
    let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
    let mut a = MvRegister::new();
    a.write(tokyo, aiko(1));
    let mut b = MvRegister::new();
    b.write(frankfurt, aiko(2));
    let old = |m: &MvRegister<ProfileV2>| -> MvRegister<ProfileV1> {
        wire::decode(&wire::encode(m).unwrap()).unwrap()
    };
    let (mut ab, mut ba) = (old(&a), old(&b));
    ab.merge(&old(&b));
    ba.merge(&old(&a));
    assert_eq!(ab, ba);
    assert_eq!(ab.unknown_bytes().count(), 2);
    let bytes = wire::encode(&ab).unwrap();
    assert_eq!(bytes, wire::encode(&ba).unwrap(), "canonical");
    let back: MvRegister<ProfileV2> = wire::decode(&bytes).unwrap();
    let mut both = a.clone();
    both.merge(&b);
    assert_eq!(back, both);
    assert_eq!(
        bytes,
        wire::encode(&both).unwrap(),
        "the same bytes as at the new build"
    );
}

// ---------------------------------------------------------------------------
// Homed tables (protocol 6): the stored value, forwarded operations,
// replies and rejections.

use archipelago::region::{HomedError, HomedTable, HomedValue};
use archipelago::storage::MemoryStorage;

/// The account as the old build declares it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountV1 {
    pub balance: u64,
}

/// The account as the new build declares it: one trailing field more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountV2 {
    pub balance: u64,
    #[serde(default)]
    pub nickname: Option<String>,
}

/// A deposit as the old build sends it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DepositV1 {
    pub amount: u64,
}

/// A deposit as the new build sends it: a nickname to set with it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DepositV2 {
    pub amount: u64,
    #[serde(default)]
    pub nickname: Option<String>,
}

/// Deposits above this are refused.
const DEPOSIT_LIMIT: u64 = 1_000;

/// A refusal as the old build sends it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct TooLargeV1 {
    pub balance: u64,
}

/// A refusal as the new build sends it: the limit too.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct TooLargeV2 {
    pub balance: u64,
    #[serde(default)]
    pub limit: u64,
}

impl HomedValue for AccountV1 {
    type Op = DepositV1;
    type Rejection = TooLargeV1;
    fn apply(&mut self, op: DepositV1) -> Result<(), TooLargeV1> {
        if op.amount > DEPOSIT_LIMIT {
            return Err(TooLargeV1 {
                balance: self.balance,
            });
        }
        self.balance += op.amount;
        Ok(())
    }
}

impl HomedValue for AccountV2 {
    type Op = DepositV2;
    type Rejection = TooLargeV2;
    fn apply(&mut self, op: DepositV2) -> Result<(), TooLargeV2> {
        if op.amount > DEPOSIT_LIMIT {
            return Err(TooLargeV2 {
                balance: self.balance,
                limit: DEPOSIT_LIMIT,
            });
        }
        self.balance += op.amount;
        if op.nickname.is_some() {
            self.nickname = op.nickname;
        }
        Ok(())
    }
}

/// `jp-` accounts live in Tokyo, the others in Frankfurt.
fn account_home(key: &str) -> String {
    if key.starts_with("jp-") {
        "ap-northeast".into()
    } else {
        "eu-central".into()
    }
}

fn accounts<V: HomedValue>(region: &Region) -> HomedTable<String, V> {
    region
        .homed_table("accounts", |key: &String| account_home(key))
        .unwrap()
}

fn named(balance: u64) -> AccountV2 {
    AccountV2 {
        balance,
        nickname: Some("Aiko".to_string()),
    }
}

fn deposit(amount: u64) -> DepositV2 {
    DepositV2 {
        amount,
        nickname: None,
    }
}

/// A V1 home (Tokyo, restarted from its storage once) and a V2 region
/// (Frankfurt) forward writes to each other's keys: both work, values,
/// operations and rejections read across the struct versions, and the
/// V2 field put through the V1 home survives the home's writes and its
/// restart (the home keeps its bytes and writes them back), in the
/// replies and in what replicates back to Frankfurt.
#[test]
fn homed_writes_forwarded_between_an_old_and_a_new_build_keep_the_new_field() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(28);
        let disk = MemoryStorage::new();
        let mut old = region_on(&net, "ap-northeast", Some(&disk), RegionConfig::default());
        let new = region_on(&net, "eu-central", None, RegionConfig::default());
        let (mut old_t, new_t) = (accounts::<AccountV1>(&old), accounts::<AccountV2>(&new));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let syncs = new.stats().syncs_completed;

        // New -> old home: a put with the new field, then a deposit.
        new_t.put("jp-aiko", named(10)).await.unwrap();
        let write = new_t.apply("jp-aiko", deposit(1)).await.unwrap();
        assert_eq!(write.home, "ap-northeast");
        assert_eq!(write.value, named(11), "the V1 home's reply carries the field");
        assert_eq!(old_t.read("jp-aiko").unwrap(), Some(AccountV1 { balance: 11 }));

        // The old home restarts from its storage and writes again.
        old.shutdown().await;
        old = region_on(&net, "ap-northeast", Some(&disk), RegionConfig::default());
        old_t = accounts::<AccountV1>(&old);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let local = old_t.apply("jp-aiko", DepositV1 { amount: 2 }).await.unwrap();
        assert_eq!(local.value, AccountV1 { balance: 13 });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            new_t.read("jp-aiko").unwrap(),
            Some(named(13)),
            "the field survives the V1 home's writes and restart"
        );
        // A V2 operation's own new field cannot reach a V1 home's apply.
        let renamed = DepositV2 {
            amount: 1,
            nickname: Some("Ai".into()),
        };
        let write = new_t.apply("jp-aiko", renamed).await.unwrap();
        assert_eq!(write.value, named(14), "dropped at the V1 home");

        // Old -> new home: a V1 deposit defaults the field it lacks.
        let write = old_t.apply("de-bob", DepositV1 { amount: 3 }).await.unwrap();
        assert_eq!((write.home.as_str(), write.value), ("eu-central", AccountV1 { balance: 3 }));
        let at_home = new_t.read("de-bob").unwrap().unwrap();
        assert_eq!(at_home, AccountV2 { balance: 3, nickname: None });

        // Rejections both ways: the V2 one's extra field dropped at V1,
        // the V1 one's missing field defaulted at V2.
        let refused = old_t.apply("de-bob", DepositV1 { amount: 5_000 }).await;
        assert!(
            matches!(&refused, Err(HomedError::Rejected { rejection: TooLargeV1 { balance: 3 }, .. })),
            "{refused:?}"
        );
        let refused = new_t.apply("jp-aiko", deposit(5_000)).await;
        let expected = TooLargeV2 {
            balance: 14,
            limit: 0,
        };
        assert!(
            matches!(&refused, Err(HomedError::Rejected { rejection, .. }) if *rejection == expected),
            "{refused:?}"
        );

        // A local read at the V1 home goes on; a read at home from V2
        // carries the field.
        let read = new_t.read_at_home("jp-aiko").await.unwrap();
        assert_eq!(read.value, Some(named(14)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(old_t.read("de-bob").unwrap(), Some(AccountV1 { balance: 3 }));
        assert_eq!(new_t.read("jp-aiko").unwrap(), Some(named(14)));
        assert_eq!(new.stats().syncs_completed, syncs, "batches, not a repair");
        assert!(old.stats().homed_served >= 3 && new.stats().homed_served >= 2);
        assert_clean(&[&old, &new]);
        old.shutdown().await;
        new.shutdown().await;
    });
}

/// A region pinned to protocol 5 (states in the older layout, replies
/// read strictly) and one of protocol 6, the same struct at both: homed
/// writes forwarded both ways work and replicate by batches.
#[test]
fn a_protocol_5_peer_and_a_protocol_6_peer_forward_homed_writes_both_ways() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(29);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let pinned = RegionConfig {
            protocol_version_max: 5,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, pinned);
        let (new_t, old_t) = (accounts::<AccountV2>(&new), accounts::<AccountV2>(&old));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let protocol = new
            .stats()
            .peers
            .iter()
            .find(|p| p.name == "eu-central")
            .unwrap()
            .protocol;
        assert_eq!(protocol, 5);
        let syncs = (new.stats().syncs_completed, old.stats().syncs_completed);

        old_t.put("jp-aiko", named(10)).await.unwrap();
        let write = old_t.apply("jp-aiko", deposit(1)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.value),
            ("ap-northeast", named(11))
        );
        new_t.put("de-bob", named(20)).await.unwrap();
        let write = new_t.apply("de-bob", deposit(2)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.value),
            ("eu-central", named(22))
        );
        let refused = new_t.apply("de-bob", deposit(5_000)).await;
        assert!(
            matches!(refused, Err(HomedError::Rejected { .. })),
            "{refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;

        assert_eq!(old_t.read("jp-aiko").unwrap(), Some(named(11)), "6 -> 5");
        assert_eq!(new_t.read("de-bob").unwrap(), Some(named(22)), "5 -> 6");
        assert_eq!(
            (new.stats().syncs_completed, old.stats().syncs_completed),
            syncs,
            "batches, not a repair"
        );
        assert_clean(&[&new, &old]);
        new.shutdown().await;
        old.shutdown().await;
    });
}
