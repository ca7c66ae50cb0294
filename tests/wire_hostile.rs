//! Hostile frames: random bytes and corrupted valid frames decode to a
//! typed error or a valid value, never a panic, never a huge allocation;
//! values that break their type's join are refused with the rule they
//! break.
//!
//! The suite counts allocations (`CountingAllocator`, in `suite.rs`): every decode's
//! peak heap is checked against `decode_peak_cap_bytes` of its frame.

use archipelago::clock::{CausalContext, Dot, ReplicaId, Stamp, Timestamp, VersionVector};
use archipelago::crdt::{
    BoundedCounter, Crdt, GCounter, LwwMap, LwwRegister, MvRegister, OrMap, OrSet, PnCounter,
};
use archipelago::resolve::{DELETED_TAG, VERSIONS_MAX, VersionSet, Versioned};
use archipelago::testing::fuzz::{self, decode_peak_cap_bytes, measure};
use archipelago::wire::{self, InvalidRule, WIRE_VERSION, WireError};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn decode_all(frame: &[u8]) {
    let _ = wire::decode::<VersionVector>(frame);
    let _ = wire::decode::<CausalContext>(frame);
    let _ = wire::decode::<GCounter>(frame);
    let _ = wire::decode::<PnCounter>(frame);
    let _ = wire::decode::<OrSet<u64>>(frame);
    let _ = wire::decode::<OrSet<String>>(frame);
    let _ = wire::decode::<LwwRegister<String>>(frame);
    let _ = wire::decode::<LwwMap<String, Vec<u8>>>(frame);
    let _ = wire::decode::<MvRegister<String>>(frame);
    let _ = wire::decode::<BoundedCounter>(frame);
    let _ = wire::decode::<OrMap<u64, OrMap<String, PnCounter>>>(frame);
}

fn sample_set() -> OrSet<u64> {
    let mut set = OrSet::new();
    for i in 0..20 {
        set.insert(ReplicaId::new(1 + i % 3), i);
    }
    set.remove(&7);
    set
}

fn sample_map() -> LwwMap<String, Vec<u8>> {
    let mut map = LwwMap::new();
    for i in 0..10u64 {
        let stamp = Stamp::new(Timestamp::new(1_000 + i, 0), ReplicaId::new(2));
        map.insert(stamp, format!("k{i}"), vec![i as u8; 3]);
    }
    map
}

proptest! {
    #[test]
    fn random_frames_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = vec![WIRE_VERSION];
        frame.extend_from_slice(&body);
        decode_all(&frame);
        decode_all(&body);
    }

    #[test]
    fn corrupted_frames_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for valid in [wire::encode(&sample_set()).unwrap(), wire::encode(&sample_map()).unwrap()] {
            let mut frame = valid.clone();
            for (at, byte) in &flips {
                let i = at.index(frame.len());
                frame[i] = *byte;
            }
            decode_all(&frame);
            decode_all(&valid[..cut.index(valid.len())]);
        }
    }
}

#[test]
fn valid_frames_still_decode() {
    let set = sample_set();
    assert_eq!(
        wire::decode::<OrSet<u64>>(&wire::encode(&set).unwrap()).unwrap(),
        set
    );
    let map = sample_map();
    assert_eq!(
        wire::decode::<LwwMap<String, Vec<u8>>>(&wire::encode(&map).unwrap()).unwrap(),
        map
    );
}

#[test]
fn a_set_whose_dots_escape_its_context_is_refused() {
    // version, empty vector, empty cloud, one group: replica 1, one
    // element 5 at dot 1.1, which the (empty) context does not cover.
    let frame = [WIRE_VERSION, 0, 0, 1, 1, 1, 1, 5];
    let err = wire::decode::<OrSet<u64>>(&frame).unwrap_err();
    assert_eq!(err, invalid("OrSet", InvalidRule::OutsideContext));
    // The same bytes with the context covering the dot decode.
    let frame = [WIRE_VERSION, 1, 1, 1, 0, 1, 1, 1, 1, 5];
    let set = wire::decode::<OrSet<u64>>(&frame).unwrap();
    assert!(set.contains(&5));
}

// ---------------------------------------------------------------------------
// Bounded allocation
// ---------------------------------------------------------------------------

/// Decodes `frame` as `T`, asserting the decode's peak heap stays under the
/// cap for its length; returns the result and the peak.
fn decode_capped<T: DeserializeOwned>(frame: &[u8]) -> (Result<T, WireError>, usize) {
    let (result, peak) = measure(|| wire::decode::<T>(frame));
    let cap = decode_peak_cap_bytes(frame.len());
    assert!(
        peak.peak_bytes <= cap,
        "a {}-byte frame as {} peaked at {} bytes (cap {cap}, largest request {}): {frame:02x?}",
        frame.len(),
        std::any::type_name::<T>(),
        peak.peak_bytes,
        peak.largest_request_bytes,
    );
    (result, peak.peak_bytes)
}

#[test]
fn the_allocator_counts() {
    assert!(fuzz::counting_allocator_installed());
}

#[test]
fn a_vector_claiming_16_gib_is_refused_without_asking_for_more_than_its_size() {
    // 0xfc: a u32 length follows, 0x4000_0000 entries of 16 bytes.
    let frame = [WIRE_VERSION, 0xfc, 0x00, 0x00, 0x00, 0x40];
    let (result, peak) = measure(|| wire::decode::<VersionVector>(&frame));
    assert!(matches!(result, Err(WireError::Malformed(_))), "{result:?}");
    // The vector reserves nothing past its inline entries; what is left is
    // the error's message.
    assert!(
        peak.largest_request_bytes <= 256 && peak.peak_bytes <= 512,
        "{peak:?}"
    );
    // The same claim inside every type that holds a vector or a context.
    let (result, _) = decode_capped::<GCounter>(&frame);
    assert!(result.is_err());
    let (result, _) = decode_capped::<CausalContext>(&frame);
    assert!(result.is_err());
    let (result, _) = decode_capped::<OrSet<u64>>(&frame);
    assert!(result.is_err());
}

#[test]
fn a_string_claiming_60_mib_is_not_allocated_before_it_is_read() {
    // LwwRegister<String>: Some, stamp, then a string of 60 MiB claimed.
    let mut frame = vec![WIRE_VERSION, 1, 5, 1, 252];
    frame.extend_from_slice(&(60u32 << 20).to_le_bytes());
    frame.extend_from_slice(b"only a few bytes");
    let (result, _) = decode_capped::<LwwRegister<String>>(&frame);
    assert!(result.is_err());
}

/// Hostile varints (bincode's encoding) for a length prefix.
fn hostile_lengths() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for value in [
        251u64,
        1 << 16,
        1 << 20,
        1 << 30,
        1 << 32,
        1 << 40,
        u64::MAX,
    ] {
        let mut v = Vec::new();
        if let Ok(n) = u16::try_from(value) {
            v.push(251);
            v.extend_from_slice(&n.to_le_bytes());
        } else if let Ok(n) = u32::try_from(value) {
            v.push(252);
            v.extend_from_slice(&n.to_le_bytes());
        } else {
            v.push(253);
            v.extend_from_slice(&value.to_le_bytes());
        }
        out.push(v);
    }
    out.push(vec![250]);
    out
}

fn overwrite_every_position<T: DeserializeOwned>(valid: &[u8]) -> usize {
    let mut decodes = 0;
    for at in 1..valid.len() {
        for varint in hostile_lengths() {
            for replaced in [1, 0] {
                let mut frame = valid[..at].to_vec();
                frame.extend_from_slice(&varint);
                frame.extend_from_slice(valid.get(at + replaced..).unwrap_or(&[]));
                let _ = decode_capped::<T>(&frame);
                decodes += 1;
            }
        }
    }
    decodes
}

#[test]
fn hostile_length_prefixes_anywhere_stay_under_the_cap() {
    let mut decodes = 0;
    let vv: VersionVector = (1..=40u32)
        .map(|r| (ReplicaId::from(r), r as u64))
        .collect();
    decodes += overwrite_every_position::<VersionVector>(&wire::encode(&vv).unwrap());
    decodes += overwrite_every_position::<OrSet<u64>>(&wire::encode(&sample_set()).unwrap());
    decodes +=
        overwrite_every_position::<LwwMap<String, Vec<u8>>>(&wire::encode(&sample_map()).unwrap());
    let mut mv = MvRegister::new();
    mv.write(ReplicaId::new(1), "draft".to_string());
    decodes += overwrite_every_position::<MvRegister<String>>(&wire::encode(&mv).unwrap());
    decodes += overwrite_every_position::<VersionSet<String>>(
        &wire::encode(&sample_version_set()).unwrap(),
    );
    decodes += overwrite_every_position::<Vec<String>>(
        &wire::encode(&vec!["carts".to_string(), String::new(), "likes".into()]).unwrap(),
    );
    assert!(decodes > 1000);
}

#[test]
fn every_corpus_frame_decodes_under_the_cap_and_round_trips() {
    let corpus = fuzz::corpus(1);
    for name in fuzz::target_names() {
        assert!(
            corpus.iter().any(|(n, _)| *n == name),
            "no sample of {name}"
        );
    }
    for (name, frame) in corpus {
        assert_eq!(
            fuzz::check(name, &frame, true),
            Ok(fuzz::Outcome::Decoded),
            "{name}"
        );
    }
    assert_eq!(
        fuzz::message_frames(1).len(),
        15,
        "one frame per message variant (HomedRequest and HomedReply, protocol 4, are the 9th and 10th; SyncRanges, protocol 6, the 11th; SyncStatesGrouped, CompactBatch, Relay and RelayWant, protocol 7, the 12th to 15th)"
    );
}

#[test]
fn large_valid_values_decode_under_the_cap() {
    let vv: VersionVector = (1..=5_000u32)
        .map(|r| (ReplicaId::from(r), r as u64))
        .collect();
    let (back, _) = decode_capped::<VersionVector>(&wire::encode(&vv).unwrap());
    assert_eq!(back.unwrap(), vv);

    let mut set = OrSet::new();
    for i in 0..20_000u64 {
        set.insert(ReplicaId::new(1 + i % 7), i);
    }
    let (back, _) = decode_capped::<OrSet<u64>>(&wire::encode(&set).unwrap());
    assert_eq!(back.unwrap(), set);

    let mut strings = OrSet::new();
    for i in 0..20_000u64 {
        strings.insert(ReplicaId::new(1), format!("{i}"));
    }
    let (back, _) = decode_capped::<OrSet<String>>(&wire::encode(&strings).unwrap());
    assert_eq!(back.unwrap(), strings);

    let mut map = LwwMap::new();
    for i in 0..20_000u64 {
        let stamp = Stamp::new(Timestamp::new(i, 0), ReplicaId::new(2));
        map.insert(stamp, format!("{i}"), Vec::<u8>::new());
    }
    let (back, _) = decode_capped::<LwwMap<String, Vec<u8>>>(&wire::encode(&map).unwrap());
    assert_eq!(back.unwrap(), map);
}

#[test]
fn the_densest_values_decode_and_denser_ones_are_refused_over_budget() {
    // Empty strings: 24 bytes of `String` per encoded byte, under K = 32.
    let empties = vec![String::new(); 100_000];
    let (back, peak) = decode_capped::<Vec<String>>(&wire::encode(&empties).unwrap());
    assert_eq!(back.unwrap(), empties);
    assert!(peak >= 24 * empties.len());
    // An enum whose unit variant is 1 byte encoded and 1 KiB in memory.
    #[derive(Clone, PartialEq, Debug, Serialize, serde::Deserialize)]
    #[allow(clippy::large_enum_variant)] // the point of the test
    enum Dense {
        Small,
        Large([[u64; 32]; 4]),
    }
    let _ = Dense::Large([[0; 32]; 4]);
    let dense = vec![Dense::Small; 10_000];
    let frame = wire::encode(&dense).unwrap();
    let (result, _) = decode_capped::<Vec<Dense>>(&frame);
    assert!(
        matches!(result, Err(WireError::OverBudget { body_bytes, .. }) if body_bytes == frame.len() - 1),
        "{result:?}"
    );
    // Zero-sized elements claiming 2⁶⁴ of them stop at the budget too.
    let frame = [WIRE_VERSION, 253, 255, 255, 255, 255, 255, 255, 255, 255];
    let (result, _) = decode_capped::<Vec<()>>(&frame);
    assert!(
        matches!(result, Err(WireError::OverBudget { .. })),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------
// Validation: every rule a join relies on, frame → typed error
// ---------------------------------------------------------------------------

fn invalid(ty: &'static str, rule: InvalidRule) -> WireError {
    WireError::Invalid { ty, rule }
}

/// A frame of `body` (encoded as a tuple mirrors a struct).
fn frame_of<T: Serialize>(body: &T) -> Vec<u8> {
    wire::encode(body).unwrap()
}

fn dot(r: u32, c: u64) -> (u32, u64) {
    (r, c)
}

type ContextBody = (Vec<(u32, u64)>, Vec<(u32, u64)>);

fn ctx(vv: &[(u32, u64)], cloud: &[(u32, u64)]) -> ContextBody {
    (vv.to_vec(), cloud.to_vec())
}

#[test]
fn the_zero_dot_mv_register_frame_is_refused() {
    let frame = [
        WIRE_VERSION,
        0x01,
        0x01,
        0x00,
        0x01,
        0x78,
        0x01,
        0x01,
        0x01,
        0x00,
    ];
    assert_eq!(
        wire::decode::<MvRegister<String>>(&frame),
        Err(invalid("MvRegister", InvalidRule::ZeroCounter))
    );
    // What it would break: the empty register merging it drops the sibling.
    let mut ok = frame;
    ok[3] = 1; // dot 1.1, inside the context
    let v = wire::decode::<MvRegister<String>>(&ok).unwrap();
    let mut from_bottom = MvRegister::new();
    from_bottom.merge(&v);
    assert_eq!(from_bottom, v);
}

#[test]
fn mv_register_rules() {
    let mv = |siblings: Vec<((u32, u64), &str)>, ctx: ContextBody| {
        wire::decode::<MvRegister<String>>(&frame_of(&(siblings, ctx)))
    };
    let ty = "MvRegister";
    assert_eq!(
        mv(vec![(dot(1, 2), "x")], ctx(&[(1, 1)], &[])),
        Err(invalid(ty, InvalidRule::OutsideContext))
    );
    assert_eq!(
        mv(
            vec![(dot(1, 1), "x"), (dot(1, 1), "y")],
            ctx(&[(1, 1)], &[])
        ),
        Err(invalid(ty, InvalidRule::DuplicateDot))
    );
    assert_eq!(
        mv(
            vec![(dot(2, 1), "x"), (dot(1, 1), "y")],
            ctx(&[(1, 1), (2, 1)], &[])
        ),
        Err(invalid(ty, InvalidRule::Unsorted))
    );
    assert!(
        mv(
            vec![(dot(1, 1), "x"), (dot(2, 1), "y")],
            ctx(&[(1, 1), (2, 1)], &[])
        )
        .is_ok()
    );
}

#[test]
fn version_vector_and_context_rules() {
    let vv = |entries: &[(u32, u64)]| wire::decode::<VersionVector>(&frame_of(&entries.to_vec()));
    assert_eq!(
        vv(&[(2, 1), (1, 1)]),
        Err(invalid("VersionVector", InvalidRule::Unsorted))
    );
    assert_eq!(
        vv(&[(1, 1), (1, 2)]),
        Err(invalid("VersionVector", InvalidRule::Unsorted))
    );
    assert_eq!(
        vv(&[(1, 0)]),
        Err(invalid("VersionVector", InvalidRule::ZeroCounter))
    );
    assert!(vv(&[(1, 1), (2, 5)]).is_ok());

    let cc = |body: ContextBody| wire::decode::<CausalContext>(&frame_of(&body));
    let ty = "CausalContext";
    assert_eq!(
        cc(ctx(&[], &[(1, 0)])),
        Err(invalid(ty, InvalidRule::ZeroCounter))
    );
    assert_eq!(
        cc(ctx(&[], &[(1, 3), (1, 3)])),
        Err(invalid(ty, InvalidRule::DuplicateDot))
    );
    assert_eq!(
        cc(ctx(&[], &[(1, 5), (1, 3)])),
        Err(invalid(ty, InvalidRule::Unsorted))
    );
    assert_eq!(
        cc(ctx(&[(1, 4)], &[(1, 3)])),
        Err(invalid(ty, InvalidRule::NotCompact))
    );
    assert_eq!(
        cc(ctx(&[(1, 4)], &[(1, 5)])),
        Err(invalid(ty, InvalidRule::NotCompact))
    );
    assert_eq!(
        cc(ctx(&[], &[(1, 1)])),
        Err(invalid(ty, InvalidRule::NotCompact))
    );
    assert!(cc(ctx(&[(1, 4)], &[(1, 6), (2, 2)])).is_ok());
}

#[test]
fn or_set_rules() {
    type Groups = Vec<(u32, Vec<(u64, u64)>)>;
    let set =
        |ctx: ContextBody, groups: Groups| wire::decode::<OrSet<u64>>(&frame_of(&(ctx, groups)));
    let ty = "OrSet";
    let seen = || ctx(&[(1, 5), (2, 5)], &[]);
    assert_eq!(
        set(seen(), vec![(1, vec![(0, 7)])]),
        Err(invalid(ty, InvalidRule::ZeroCounter))
    );
    assert_eq!(
        set(seen(), vec![(1, vec![(1, 7), (0, 8)])]),
        Err(invalid(ty, InvalidRule::DuplicateDot))
    );
    assert_eq!(
        set(seen(), vec![(1, vec![(6, 7)])]),
        Err(invalid(ty, InvalidRule::OutsideContext))
    );
    assert_eq!(
        set(seen(), vec![(2, vec![(1, 7)]), (1, vec![(1, 8)])]),
        Err(invalid(ty, InvalidRule::Unsorted))
    );
    assert_eq!(
        set(seen(), vec![(1, vec![(1, 7), (u64::MAX, 8)])]),
        Err(invalid(ty, InvalidRule::CounterOverflow))
    );
    let ok = set(seen(), vec![(1, vec![(1, 7), (2, 8)]), (2, vec![(1, 7)])]).unwrap();
    assert_eq!(
        ok.dots(&7),
        [
            Dot::new(ReplicaId::new(1), 1),
            Dot::new(ReplicaId::new(2), 1)
        ]
    );
}

fn versioned(value: &str, vv: &[(u32, u64)], ms: u64, writer: u32) -> Versioned<String> {
    Versioned::new(
        value.to_string(),
        vv.iter().map(|&(r, c)| (ReplicaId::from(r), c)).collect(),
        Stamp::new(Timestamp::new(ms, 0), ReplicaId::from(writer)),
    )
}

fn sample_version_set() -> VersionSet<String> {
    let mut set = VersionSet::from_version(versioned("a", &[(1, 2), (2, 1)], 10, 1));
    set.merge(&VersionSet::from_version(versioned(
        "b",
        &[(1, 1), (2, 2)],
        11,
        2,
    )));
    set.merge(&VersionSet::from_version(versioned(
        "c",
        &[(1, 1), (3, 1)],
        12,
        3,
    )));
    assert_eq!(set.versions().len(), 3);
    set
}

#[test]
fn version_set_rules() {
    // Without a delete context: the list of versions, as before deletes.
    let decode =
        |versions: Vec<Versioned<String>>| wire::decode::<VersionSet<String>>(&frame_of(&versions));
    let ty = "VersionSet";
    let set = sample_version_set();
    assert_eq!(decode(set.versions().to_vec()).unwrap(), set);
    // Out of stamp order.
    let mut swapped = set.versions().to_vec();
    swapped.swap(0, 1);
    assert_eq!(decode(swapped), Err(invalid(ty, InvalidRule::Unsorted)));
    // Two versions of one writer: more versions than replicas.
    assert_eq!(
        decode(vec![
            versioned("a", &[(1, 2), (2, 1)], 10, 1),
            versioned("b", &[(1, 3)], 11, 1),
        ]),
        Err(invalid(ty, InvalidRule::ReplicaRepeated))
    );
    // One version has seen the other's write (2.2): not an antichain.
    assert_eq!(
        decode(vec![
            versioned("a", &[(1, 2), (2, 2)], 10, 1),
            versioned("b", &[(1, 1), (2, 2)], 11, 2),
        ]),
        Err(invalid(ty, InvalidRule::VersionSeen))
    );
    // A version lacking its own write.
    assert_eq!(
        decode(vec![
            versioned("a", &[(2, 1)], 10, 1),
            versioned("b", &[(2, 2)], 11, 2),
        ]),
        Err(invalid(ty, InvalidRule::OwnWriteMissing))
    );
    // A version its own delete context covers: deleted, yet kept.
    let removed: VersionVector = [(ReplicaId::new(1), 2), (ReplicaId::new(2), 1)]
        .into_iter()
        .collect();
    assert_eq!(
        wire::decode::<VersionSet<String>>(&frame_of(&(
            DELETED_TAG,
            vec![versioned("a", &[(1, 2), (2, 1)], 10, 1)],
            removed.clone()
        ))),
        Err(invalid(ty, InvalidRule::VersionRemoved))
    );
    // A tombstone alone decodes, and reads as nothing.
    let tombstone = wire::decode::<VersionSet<String>>(&frame_of(&(
        DELETED_TAG,
        Vec::<Versioned<String>>::new(),
        removed,
    )))
    .unwrap();
    assert!(tombstone.is_empty() && !tombstone.removed().is_empty());
    // A count past the bound is refused before anything is read.
    assert_eq!(
        wire::decode::<VersionSet<String>>(&frame_of(&(VERSIONS_MAX as u64 + 1,))),
        Err(invalid(ty, InvalidRule::TooManyVersions))
    );
}

#[test]
fn lww_map_repeated_key_is_refused() {
    let stamp = (5u64, 1u32);
    let rows = vec![("k", stamp, Some(vec![1u8])), ("k", (6, 1), None)];
    assert_eq!(
        wire::decode::<LwwMap<String, Vec<u8>>>(&frame_of(&rows)),
        Err(invalid("LwwMap", InvalidRule::KeyRepeated))
    );
}

#[test]
fn decoded_values_give_themselves_back_from_bottom() {
    let set = sample_set();
    let back: OrSet<u64> = wire::decode(&wire::encode(&set).unwrap()).unwrap();
    let mut from_bottom = OrSet::new();
    from_bottom.merge(&back);
    assert_eq!(from_bottom, set);
    let versions = sample_version_set();
    let mut from_bottom = VersionSet::new();
    from_bottom.merge(&versions);
    assert_eq!(from_bottom, versions);
}
