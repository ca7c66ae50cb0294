//! Golden fixtures: today's encodings, committed under `tests/fixtures/`,
//! must decode forever.
//!
//! Each fixture is checked two ways:
//! - **it decodes** into the value it was made from: this check stays for
//!   every fixture ever committed, so an old region's bytes keep working;
//! - **today's code encodes that value to the same bytes**: when this
//!   fails, the format changed. Either undo the change, or bump the format
//!   version (`wire::WIRE_VERSION`, the storage format), keep a decoder for
//!   the old one, and commit a new fixture set beside the old (never
//!   rewrite an old fixture).
//!
//! `ARCHIPELAGO_BLESS_FIXTURES=1 cargo test --test suite golden_fixtures::` writes
//! fixtures that are missing (never overwrites one).
//!
//! The engine's frames (hello, batch, acknowledgement, anti-entropy) are
//! checked the same way inside the crate (`replication::message`), from
//! `tests/fixtures/frames/`.

use crate::common;

use std::path::{Path, PathBuf};

use archipelago::clock::{ReplicaId, Stamp, Timestamp, VersionVector};
use archipelago::crdt::{
    BoundedCounter, GCounter, LwwMap, LwwRegister, MvRegister, OrMap, OrSet, PnCounter,
};
use archipelago::resolve::VersionSet;
use archipelago::session::SessionToken;
use archipelago::wire;
use serde::Serialize;
use serde::de::DeserializeOwned;

const TOKYO: ReplicaId = ReplicaId::new(0x7000_0001);
const FRANKFURT: ReplicaId = ReplicaId::new(0x7000_0002);
/// Ids as regions draw them since ids are 64 bits.
const WIDE_TOKYO: ReplicaId = ReplicaId::new(0x9e37_79b9_7f4a_7c15);
const WIDE_FRANKFURT: ReplicaId = ReplicaId::new(0xf39c_c060_5ced_c834);

fn stamp(ms: u64, replica: ReplicaId) -> Stamp {
    Stamp::new(Timestamp::new(1_764_000_000_000 + ms, 0), replica)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn blessing() -> bool {
    std::env::var_os("ARCHIPELAGO_BLESS_FIXTURES").is_some()
}

/// The committed bytes of fixture `path`, written from `made` first when
/// blessing and missing.
fn golden(path: &str, made: &[u8]) -> Vec<u8> {
    let file = fixtures().join(path);
    if !file.exists() {
        assert!(
            blessing(),
            "fixture {path} is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
        );
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, made).unwrap();
    }
    std::fs::read(&file).unwrap()
}

/// `value`'s fixture decodes into `value`, and `value` encodes to it.
fn check<T>(path: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let made = wire::encode(value).unwrap();
    let committed = golden(path, &made);
    let decoded: T = wire::decode(&committed)
        .unwrap_or_else(|e| panic!("fixture {path} no longer decodes: {e}"));
    assert_eq!(&decoded, value, "fixture {path} decodes to another value");
    assert!(
        made == committed,
        "the encoding of {path} changed: bump the format version and add a new \
         fixture set (see this file's page); never rewrite a committed fixture"
    );
}

#[test]
fn every_crdt_state_of_format_1_decodes() {
    let mut g = GCounter::new();
    g.inc(TOKYO, 3);
    g.inc(FRANKFURT, 4);
    check("states/v1/g_counter.bin", &g);

    let mut pn = PnCounter::new();
    pn.inc(TOKYO, 10);
    pn.dec(FRANKFURT, 3);
    check("states/v1/pn_counter.bin", &pn);

    let mut set = OrSet::new();
    set.insert(TOKYO, "matcha".to_string());
    set.insert(FRANKFURT, "pretzel".to_string());
    set.remove("pretzel");
    check("states/v1/or_set.bin", &set);

    let mut reg = LwwRegister::new();
    reg.set(stamp(5, TOKYO), "Aiko".to_string());
    // Registers and last-writer-wins maps are written delimited since
    // protocol 6 (`every_crdt_value_of_format_3_decodes`): these still
    // decode.
    check_decodes("states/v1/lww_register.bin", &reg);

    let mut map = LwwMap::new();
    map.insert(stamp(1, TOKYO), "colour".to_string(), "blue".to_string());
    map.insert(stamp(2, FRANKFURT), "size".to_string(), "M".to_string());
    map.remove(stamp(3, TOKYO), "size".to_string());
    check_decodes("states/v1/lww_map.bin", &map);

    let mut mv = MvRegister::new();
    mv.write(TOKYO, 1u64);
    let mut other = MvRegister::new();
    other.write(FRANKFURT, 2u64);
    archipelago::crdt::Crdt::merge(&mut mv, &other);
    check_decodes("states/v1/mv_register.bin", &mv);

    let mut stock: BoundedCounter = BoundedCounter::new();
    stock.inc(TOKYO, 100);
    stock.transfer(TOKYO, FRANKFURT, 30).unwrap();
    stock.try_dec(FRANKFURT, 5).unwrap();
    check("states/v1/bounded_counter.bin", &stock);

    let mut cart: OrMap<String, GCounter> = OrMap::new();
    cart.update(TOKYO, "sku-1".into(), |q| q.inc(TOKYO, 2));
    cart.update(FRANKFURT, "sku-2".into(), |q| q.inc(FRANKFURT, 1));
    cart.remove("sku-2");
    check("states/v1/or_map.bin", &cart);

    let mut versions = VersionSet::new();
    versions.write(stamp(7, TOKYO), "Aiko".to_string());
    let mut theirs = VersionSet::new();
    theirs.write(stamp(8, FRANKFURT), "Aiko T.".to_string());
    archipelago::crdt::Crdt::merge(&mut versions, &theirs);
    // Version sets are written in the delimited layout since protocol 5
    // (`every_version_set_of_format_2_decodes`): these still decode.
    check_decodes("states/v1/version_set.bin", &versions);
    // Deletes came later: a set never deleted encoded as before them.
    let mut deleted = versions.clone();
    deleted.remove();
    check_decodes("states/v1/version_set_deleted.bin", &deleted);

    let mut vector = VersionVector::new();
    vector.raise(TOKYO, 12);
    vector.raise(FRANKFURT, 7);
    check("states/v1/version_vector.bin", &vector);
}

/// Version sets in the delimited layout (protocol 5 on): each value a byte
/// string of its own, so a struct can gain trailing fields.
#[test]
fn every_version_set_of_format_2_decodes() {
    let mut versions = VersionSet::new();
    versions.write(stamp(7, TOKYO), "Aiko".to_string());
    let mut theirs = VersionSet::new();
    theirs.write(stamp(8, FRANKFURT), "Aiko T.".to_string());
    archipelago::crdt::Crdt::merge(&mut versions, &theirs);
    check("states/v2/version_set.bin", &versions);
    let mut deleted = versions.clone();
    deleted.remove();
    check("states/v2/version_set_deleted.bin", &deleted);
    let mut wide = VersionSet::new();
    wide.write(stamp(9, WIDE_TOKYO), 42u64);
    check("states/v2/version_set_64_bit_ids.bin", &wide);
}

/// Registers and last-writer-wins maps in the delimited layout (protocol
/// 6 on): each user value a byte string of its own, so a struct can gain
/// trailing fields. The same states as their format-1 fixtures.
#[test]
fn every_crdt_value_of_format_3_decodes() {
    let mut reg = LwwRegister::new();
    reg.set(stamp(5, TOKYO), "Aiko".to_string());
    check("states/v3/lww_register.bin", &reg);
    check(
        "states/v3/lww_register_unset.bin",
        &LwwRegister::<String>::new(),
    );

    let mut map = LwwMap::new();
    map.insert(stamp(1, TOKYO), "colour".to_string(), "blue".to_string());
    map.insert(stamp(2, FRANKFURT), "size".to_string(), "M".to_string());
    map.remove(stamp(3, TOKYO), "size".to_string());
    check("states/v3/lww_map.bin", &map);

    let mut wide = LwwMap::new();
    wide.insert(stamp(1, WIDE_TOKYO), "colour".to_string(), 7u64);
    check("states/v3/lww_map_64_bit_ids.bin", &wide);

    let mut mv = MvRegister::new();
    mv.write(TOKYO, 1u64);
    let mut other = MvRegister::new();
    other.write(FRANKFURT, 2u64);
    archipelago::crdt::Crdt::merge(&mut mv, &other);
    check("states/v3/mv_register.bin", &mv);
}

/// `path`'s committed fixture decodes into `value` (an encoding of a
/// format since replaced: today's code writes another).
fn check_decodes<T>(path: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let committed = std::fs::read(fixtures().join(path))
        .unwrap_or_else(|e| panic!("fixture {path} is missing: {e}"));
    let decoded: T = wire::decode(&committed)
        .unwrap_or_else(|e| panic!("fixture {path} no longer decodes: {e}"));
    assert_eq!(&decoded, value, "fixture {path} decodes to another value");
}

#[test]
fn session_tokens_of_format_1_parse() {
    let mut vector = VersionVector::new();
    vector.raise(TOKYO, 12);
    vector.raise(FRANKFURT, 7);
    let token = SessionToken::from_vector(vector);
    let text = token.to_string();
    let committed = golden("tokens/v1/token.txt", text.as_bytes());
    let committed = String::from_utf8(committed).unwrap();
    let parsed: SessionToken = committed
        .trim()
        .parse()
        .expect("a token of format 1 parses");
    assert_eq!(parsed, token);
    assert_eq!(text, committed.trim(), "the token text format changed");
}

/// Session tokens naming a 64-bit replica id: the text form `v2.` (layout
/// version 2, 8-byte ids), committed beside the `v1.` form it does not
/// replace.
#[test]
fn session_tokens_of_format_2_parse() {
    let mut vector = VersionVector::new();
    vector.raise(TOKYO, 12);
    vector.raise(WIDE_TOKYO, 3);
    vector.raise(WIDE_FRANKFURT, 7);
    let token = SessionToken::from_vector(vector);
    let text = token.to_string();
    let committed = golden("tokens/v2/token.txt", text.as_bytes());
    let committed = String::from_utf8(committed).unwrap();
    assert!(committed.starts_with("v2."), "{committed}");
    let parsed: SessionToken = committed
        .trim()
        .parse()
        .expect("a token of format 2 parses");
    assert_eq!(parsed, token);
    assert_eq!(text, committed.trim(), "the token text format changed");
}

/// States naming 64-bit replica ids, as regions drawing random ids write
/// them: the codec's varints carry them in 9 bytes, in the same format
/// (and wire version) as 32-bit ones.
#[test]
fn states_with_64_bit_replica_ids_decode() {
    let mut vector = VersionVector::new();
    vector.raise(TOKYO, 12);
    vector.raise(WIDE_TOKYO, 3);
    vector.raise(WIDE_FRANKFURT, 7);
    check("states/v1/version_vector_64_bit_ids.bin", &vector);

    let mut g = GCounter::new();
    g.inc(WIDE_TOKYO, 3);
    g.inc(WIDE_FRANKFURT, 4);
    check("states/v1/g_counter_64_bit_ids.bin", &g);

    let mut set = OrSet::new();
    set.insert(WIDE_TOKYO, "matcha".to_string());
    set.insert(WIDE_FRANKFURT, "pretzel".to_string());
    set.remove("pretzel");
    check("states/v1/or_set_64_bit_ids.bin", &set);

    let mut map = LwwMap::new();
    map.insert(
        stamp(1, WIDE_TOKYO),
        "colour".to_string(),
        "blue".to_string(),
    );
    map.insert(
        stamp(2, WIDE_FRANKFURT),
        "size".to_string(),
        "M".to_string(),
    );
    check_decodes("states/v1/lww_map_64_bit_ids.bin", &map);
}

/// A region's store of storage format 2 (redb): made once by a region that
/// wrote two tables and shut down; today's code must open it as that
/// region, restarted, with its data.
#[cfg(feature = "redb")]
#[test]
fn a_redb_store_of_format_2_opens_with_its_identity_and_tables() {
    use archipelago::region::{AckLevel, Region};
    use archipelago::resolve::LastWriteWins;

    let runtime = common::paused_runtime();
    let committed = fixtures().join("storage/v2/ap-northeast");
    if !committed.exists() {
        assert!(
            blessing(),
            "fixture storage/v2 is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
        );
        runtime.block_on(async {
            let region = Region::builder("ap-northeast")
                .data_dir(&committed)
                .clock(common::TokioClock::new(0))
                .build()
                .unwrap();
            let likes = region
                .table::<String, GCounter>("likes")
                .unwrap()
                .with_ack(AckLevel::Local);
            likes
                .update("post-1", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 3)))
                .await
                .unwrap();
            let profiles = region
                .table_with::<u64, String>("profiles", LastWriteWins)
                .unwrap()
                .with_ack(AckLevel::Local);
            profiles.put(&42u64, "Aiko".to_string()).await.unwrap();
            std::fs::write(committed.join("replica.txt"), region.replica().to_string()).unwrap();
            region.shutdown().await;
        });
    }
    // Open a copy: the committed fixture is never written.
    let dir = std::env::temp_dir().join(format!("archipelago-golden-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&committed).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    runtime.block_on(async {
        let region = Region::builder("ap-northeast")
            .data_dir(&dir)
            .clock(common::TokioClock::new(0))
            .build()
            .expect("a store of format 2 opens");
        let replica = std::fs::read_to_string(dir.join("replica.txt")).unwrap();
        assert_eq!(
            region.replica().to_string(),
            replica.trim(),
            "the same replica"
        );
        assert_eq!(region.incarnation(), 2, "its second start");
        let likes = region.table::<String, GCounter>("likes").unwrap();
        assert_eq!(
            likes.read("post-1").await.unwrap().map(|c| c.value()),
            Some(3)
        );
        let profiles = region
            .table_with::<u64, String>("profiles", LastWriteWins)
            .unwrap();
        let profile = profiles.read(&42u64).await.unwrap().expect("the profile");
        assert_eq!(profile.value().map(String::as_str), Some("Aiko"));
        region.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The human-readable form: a set never deleted is the list of its
/// versions, as before deletes; a deleted one names its delete context.
#[test]
fn version_sets_round_trip_through_json_in_both_forms() {
    let mut set = VersionSet::new();
    set.write(stamp(7, TOKYO), "Aiko".to_string());
    let json = serde_json::to_string(&set).unwrap();
    assert!(json.starts_with('['), "a list of versions: {json}");
    assert_eq!(
        serde_json::from_str::<VersionSet<String>>(&json).unwrap(),
        set
    );
    set.remove();
    let json = serde_json::to_string(&set).unwrap();
    assert!(json.contains("\"removed\""), "{json}");
    let back: VersionSet<String> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set);
    assert!(back.is_empty() && !back.removed().is_empty());
}

/// A region's store of storage format 3 (redb), made once by a build whose
/// resolver table held a struct of one field: today's build opens it with
/// that struct and rewrites the value (delimited); then a build whose
/// struct has gained a trailing `#[serde(default)]` field reads it with the
/// default, and writes the new field beside it.
#[cfg(feature = "redb")]
#[test]
fn a_redb_store_of_format_3_opens_with_a_struct_that_gained_a_field() {
    use crate::schema_evolution::{ProfileV1, ProfileV2};
    use archipelago::region::{AckLevel, Region};
    use archipelago::resolve::LastWriteWins;

    let runtime = common::paused_runtime();
    let committed = fixtures().join("storage/v3/ap-northeast");
    if !committed.exists() {
        assert!(
            blessing(),
            "fixture storage/v3 is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
        );
        runtime.block_on(async {
            let region = Region::builder("ap-northeast")
                .data_dir(&committed)
                .clock(common::TokioClock::new(0))
                .build()
                .unwrap();
            let profiles = region
                .table_with::<u64, ProfileV1>("profiles", LastWriteWins)
                .unwrap()
                .with_ack(AckLevel::Local);
            profiles.put(&42u64, ProfileV1 { visits: 3 }).await.unwrap();
            region.shutdown().await;
        });
    }
    let dir = std::env::temp_dir().join(format!("archipelago-golden-v3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&committed).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    // Start 2: the library upgraded, the struct not yet (states of format 3
    // hold values not delimited, which only the same struct reads): the
    // value reads, and a write stores it delimited.
    runtime.block_on(async {
        let region = Region::builder("ap-northeast")
            .data_dir(&dir)
            .clock(common::TokioClock::new(0))
            .build()
            .expect("a store of format 3 opens");
        assert_eq!(region.incarnation(), 2);
        let profiles = region
            .table_with::<u64, ProfileV1>("profiles", LastWriteWins)
            .unwrap()
            .with_ack(AckLevel::Local);
        let stored = profiles.read(&42u64).await.unwrap().expect("the profile");
        assert_eq!(stored.value(), Some(&ProfileV1 { visits: 3 }));
        profiles.put(&42u64, ProfileV1 { visits: 4 }).await.unwrap();
        assert_eq!(region.stats().undecodable_values, 0);
        region.shutdown().await;
    });
    // Starts 3 and 4: the struct gained a field. The stored value reads
    // with its default; the new field, once written, reads back.
    let nickname = Some("Aiko".to_string());
    for start in 3..=4 {
        runtime.block_on(async {
            let region = Region::builder("ap-northeast")
                .data_dir(&dir)
                .clock(common::TokioClock::new(0))
                .build()
                .unwrap();
            assert_eq!(region.incarnation(), start);
            let profiles = region
                .table_with::<u64, ProfileV2>("profiles", LastWriteWins)
                .unwrap()
                .with_ack(AckLevel::Local);
            let stored = profiles.read(&42u64).await.unwrap().expect("the profile");
            let expected = ProfileV2 {
                visits: 4,
                nickname: if start == 3 { None } else { nickname.clone() },
            };
            assert_eq!(stored.value(), Some(&expected), "start {start}");
            if start == 3 {
                let written = ProfileV2 {
                    visits: 4,
                    nickname: nickname.clone(),
                };
                profiles.put(&42u64, written).await.unwrap();
            }
            assert_eq!(region.stats().undecodable_values, 0);
            region.shutdown().await;
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The three CRDT tables of the format-4 store fixture, as a build whose
/// struct is `P` declares them.
#[cfg(feature = "redb")]
#[allow(clippy::type_complexity)]
fn crdt_profile_tables<P>(
    region: &archipelago::region::Region,
) -> (
    archipelago::region::Table<u64, LwwRegister<P>>,
    archipelago::region::Table<u64, LwwMap<String, P>>,
    archipelago::region::Table<u64, MvRegister<P>>,
)
where
    P: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    use archipelago::region::AckLevel;
    (
        region
            .table("profile_register")
            .unwrap()
            .with_ack(AckLevel::Local),
        region
            .table("profile_map")
            .unwrap()
            .with_ack(AckLevel::Local),
        region
            .table("profile_siblings")
            .unwrap()
            .with_ack(AckLevel::Local),
    )
}

/// Writes `p` under key 42 of each of the three tables.
#[cfg(feature = "redb")]
async fn write_crdt_profiles<P>(region: &archipelago::region::Region, p: P)
where
    P: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let (register, map, siblings) = crdt_profile_tables::<P>(region);
    let q = p.clone();
    register
        .update(&42u64, |r, ctx| r.apply(|r| r.set(ctx.stamp(), q)))
        .await
        .unwrap();
    let q = p.clone();
    map.update(&42u64, |m, ctx| {
        m.apply(|m| m.insert(ctx.stamp(), "home".to_string(), q))
    })
    .await
    .unwrap();
    siblings
        .update(&42u64, |m, ctx| m.apply(|m| m.write(ctx.replica(), p)))
        .await
        .unwrap();
}

/// The value under key 42 of each of the three tables.
#[cfg(feature = "redb")]
async fn read_crdt_profiles<P>(region: &archipelago::region::Region) -> [Option<P>; 3]
where
    P: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let (register, map, siblings) = crdt_profile_tables::<P>(region);
    let register = register.read(&42u64).await.unwrap();
    let map = map.read(&42u64).await.unwrap();
    let siblings = siblings.read(&42u64).await.unwrap();
    [
        register.and_then(|r| r.get().cloned()),
        map.and_then(|m| m.get("home").cloned()),
        siblings.and_then(|m| m.values().next().cloned()),
    ]
}

/// A region's store of storage format 4 (redb), made once by a build whose
/// `LwwRegister`, `LwwMap` and `MvRegister` tables held a struct of one
/// field, in the positional layout: today's build opens it with that
/// struct and rewrites the values (delimited); then a build whose struct
/// has gained a trailing `#[serde(default)]` field reads them with the
/// default, and writes the new field beside it.
#[cfg(feature = "redb")]
#[test]
fn a_redb_store_of_format_4_opens_with_crdt_values_that_gained_a_field() {
    use crate::schema_evolution::{ProfileV1, ProfileV2};
    use archipelago::region::Region;

    let runtime = common::paused_runtime();
    let committed = fixtures().join("storage/v4/ap-northeast");
    if !committed.exists() {
        assert!(
            blessing(),
            "fixture storage/v4 is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
        );
        runtime.block_on(async {
            let region = Region::builder("ap-northeast")
                .data_dir(&committed)
                .clock(common::TokioClock::new(0))
                .build()
                .unwrap();
            write_crdt_profiles(&region, ProfileV1 { visits: 3 }).await;
            region.shutdown().await;
        });
    }
    let dir = std::env::temp_dir().join(format!("archipelago-golden-v4-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&committed).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let open = || {
        Region::builder("ap-northeast")
            .data_dir(&dir)
            .clock(common::TokioClock::new(0))
            .build()
            .expect("a store of format 4 opens")
    };
    // Start 2: the library upgraded, the struct not yet: the values read,
    // and writes store them delimited.
    runtime.block_on(async {
        let region = open();
        assert_eq!(region.incarnation(), 2);
        let old = Some(ProfileV1 { visits: 3 });
        assert_eq!(
            read_crdt_profiles(&region).await,
            [old.clone(), old.clone(), old]
        );
        write_crdt_profiles(&region, ProfileV1 { visits: 4 }).await;
        assert_eq!(region.stats().undecodable_values, 0);
        region.shutdown().await;
    });
    // Starts 3 and 4: the struct gained a field. The stored values read
    // with its default; the new field, once written, reads back.
    for start in 3..=4 {
        runtime.block_on(async {
            let region = open();
            assert_eq!(region.incarnation(), start);
            let nickname = (start == 4).then(|| "Aiko".to_string());
            let expected = Some(ProfileV2 {
                visits: 4,
                nickname,
            });
            assert_eq!(
                read_crdt_profiles(&region).await,
                [expected.clone(), expected.clone(), expected],
                "start {start}"
            );
            if start == 3 {
                let written = ProfileV2 {
                    visits: 4,
                    nickname: Some("Aiko".to_string()),
                };
                write_crdt_profiles(&region, written).await;
            }
            assert_eq!(region.stats().undecodable_values, 0);
            region.shutdown().await;
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A region's store (redb) made once by the build before homed states
/// were delimited (storage format 5, the value positional), holding a
/// homed account of one field: today's build opens it with that struct
/// and rewrites the state delimited at its next write; a build whose
/// struct gained a trailing `#[serde(default)]` field reads it with the
/// default and puts the field; an old build's write, after a restart,
/// keeps the field's bytes; the new build reads the field back.
#[cfg(feature = "redb")]
#[test]
fn a_redb_store_with_positional_homed_states_opens_and_keeps_a_new_field() {
    use crate::schema_evolution::{AccountV1, AccountV2, DepositV1};
    use archipelago::region::{HomedTable, HomedValue, Placement, Region};

    fn accounts<V: HomedValue>(region: &Region) -> HomedTable<String, V> {
        region
            .homed_table("accounts", Placement::<String>::fixed("ap-northeast"))
            .unwrap()
    }
    let runtime = common::paused_runtime();
    let committed = fixtures().join("storage/v5-positional-homed/ap-northeast");
    if !committed.exists() {
        assert!(
            blessing(),
            "fixture storage/v5-positional-homed is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
        );
        runtime.block_on(async {
            let region = Region::builder("ap-northeast")
                .data_dir(&committed)
                .clock(common::TokioClock::new(0))
                .build()
                .unwrap();
            let deposit = DepositV1 { amount: 3 };
            accounts::<AccountV1>(&region)
                .apply("jp-aiko", deposit)
                .await
                .unwrap();
            region.shutdown().await;
        });
    }
    let dir = std::env::temp_dir().join(format!("archipelago-golden-homed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&committed).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let open = |start| {
        let region = Region::builder("ap-northeast")
            .data_dir(&dir)
            .clock(common::TokioClock::new(0))
            .build()
            .expect("the store opens");
        assert_eq!(region.incarnation(), start);
        region
    };
    let named = |balance, nickname: Option<&str>| AccountV2 {
        balance,
        nickname: nickname.map(str::to_owned),
    };
    runtime.block_on(async {
        // Start 2: the library upgraded, the struct not yet.
        let region = open(2);
        let old = accounts::<AccountV1>(&region);
        assert_eq!(old.read("jp-aiko").unwrap(), Some(AccountV1 { balance: 3 }));
        let deposit = DepositV1 { amount: 1 };
        assert_eq!(
            old.apply("jp-aiko", deposit).await.unwrap().value.balance,
            4
        );
        assert_eq!(region.stats().undecodable_values, 0);
        region.shutdown().await;
        // Start 3: the struct gained a field; the stored value defaults it.
        let region = open(3);
        let new = accounts::<AccountV2>(&region);
        assert_eq!(new.read("jp-aiko").unwrap(), Some(named(4, None)));
        new.put("jp-aiko", named(4, Some("Aiko"))).await.unwrap();
        assert_eq!(region.stats().undecodable_values, 0);
        region.shutdown().await;
        // Start 4: rolled back to the old struct, which writes.
        let region = open(4);
        let old = accounts::<AccountV1>(&region);
        let deposit = DepositV1 { amount: 1 };
        assert_eq!(
            old.apply("jp-aiko", deposit).await.unwrap().value.balance,
            5
        );
        assert_eq!(region.stats().undecodable_values, 0);
        region.shutdown().await;
        // Start 5: the new struct again: the field survived the old write.
        let region = open(5);
        let new = accounts::<AccountV2>(&region);
        assert_eq!(new.read("jp-aiko").unwrap(), Some(named(5, Some("Aiko"))));
        assert_eq!(region.stats().undecodable_values, 0);
        region.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
