//! Hostile frames: random bytes and corrupted valid frames decode to a
//! typed error or a valid value, never a panic, never a huge allocation.

use archipelago::clock::{CausalContext, ReplicaId, Stamp, Timestamp, VersionVector};
use archipelago::crdt::{GCounter, LwwMap, LwwRegister, MvRegister, OrSet, PnCounter};
use archipelago::wire::{self, WIRE_VERSION, WireError};
use proptest::prelude::*;

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
}

fn sample_set() -> OrSet<u64> {
    let mut set = OrSet::new();
    for i in 0..20 {
        set.insert(ReplicaId::new(1 + (i % 3) as u32), i);
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
    assert!(
        matches!(&err, WireError::Malformed(m) if m.contains("missing from its context")),
        "{err:?}"
    );
    // The same bytes with the context covering the dot decode.
    let frame = [WIRE_VERSION, 1, 1, 1, 0, 1, 1, 1, 1, 5];
    let set = wire::decode::<OrSet<u64>>(&frame).unwrap();
    assert!(set.contains(&5));
}
