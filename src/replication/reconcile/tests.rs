//! Reconciliation against a model: two random tables reconcile to exactly
//! their symmetric difference; the index agrees with a sorted map; hostile
//! messages are refused.
//!
//! The property tests are seeded: `RECONCILE_SEED=<n>` replays a run (the
//! seed is printed), `RECONCILE_CASES=<n>` sets the cases per property.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use super::protocol::Limits;
use super::*;
use crate::replication::store::item_hash;
use crate::wire;

/// A table as the model holds it: key encoding to state encoding.
type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// Items as the model holds them: (key, item fingerprint).
type ItemSet = BTreeSet<(Vec<u8>, u64)>;

fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A runner seeded from `RECONCILE_SEED` (printed), with
/// `RECONCILE_CASES` cases (`cases` by default).
fn runner(cases: u32) -> TestRunner {
    let seed = env_u64("RECONCILE_SEED", 10);
    // The seed is 10 unless RECONCILE_SEED says otherwise: a failure names
    // it through the event (the library prints nothing).
    tracing::info!(
        seed,
        "reconcile proptests: RECONCILE_SEED={seed} replays them"
    );
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: env_u64("RECONCILE_CASES", u64::from(cases)) as u32,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

fn index_of(table: &Table) -> RangeIndex {
    let mut index = RangeIndex::new();
    for (key, state) in table {
        index.insert(key, item_fingerprint(key, state)).unwrap();
    }
    index
}

fn items_of(table: &Table) -> ItemSet {
    table
        .iter()
        .map(|(k, s)| (k.clone(), item_fingerprint(k, s)))
        .collect()
}

/// What one exchange between `a` (initiator) and `b` cost and taught.
struct Run {
    a: Learned,
    b: Learned,
    messages: u32,
    bytes: usize,
    first_frame: Vec<u8>,
}

fn run(a: &Table, b: &Table, limits: Limits) -> Result<Run, ReconcileError> {
    let (ia, ib) = (index_of(a), index_of(b));
    let (initiator, first) = Exchange::initiate(&ia)?;
    let mut sides = [
        initiator.with_limits(limits),
        Exchange::respond().with_limits(limits),
    ];
    let indexes = [&ia, &ib];
    let (mut messages, mut bytes) = (1, first.len());
    let mut frame = Some(first.clone());
    let mut to = 1;
    while let Some(f) = frame {
        frame = sides[to].on_frame(indexes[to], &f)?;
        if let Some(reply) = &frame {
            messages += 1;
            bytes += reply.len();
        }
        to = 1 - to;
    }
    assert!(
        sides.iter().all(Exchange::is_finished),
        "both sides know it ended"
    );
    let [a, b] = sides;
    Ok(Run {
        a: a.learned().clone(),
        b: b.learned().clone(),
        messages,
        bytes,
        first_frame: first,
    })
}

/// Checks that each side learned to send exactly its items the other
/// lacks, each once, and needs only what the other holds beyond it.
fn check_exact(a: &Table, b: &Table, run: &Run) -> Result<(), TestCaseError> {
    let (items_a, items_b) = (items_of(a), items_of(b));
    for (mine, theirs, learned, side) in [
        (&items_a, &items_b, &run.a, "initiator"),
        (&items_b, &items_a, &run.b, "responder"),
    ] {
        let table = if side == "initiator" { a } else { b };
        let sent: ItemSet = learned
            .send
            .iter()
            .map(|k| (k.to_vec(), item_fingerprint(k, &table[&k[..]])))
            .collect();
        prop_assert_eq!(sent.len(), learned.send.len(), "{} sends a key twice", side);
        let expected: ItemSet = mine.difference(theirs).cloned().collect();
        prop_assert_eq!(
            &sent,
            &expected,
            "{} sends exactly what the peer lacks",
            side
        );
        let lacking: BTreeSet<u64> = theirs.difference(mine).map(|(_, fp)| *fp).collect();
        for fp in &learned.need {
            prop_assert!(
                lacking.contains(&u64::from(*fp)),
                "{} needs only what it lacks",
                side
            );
        }
    }
    prop_assert!(run.messages <= 2 * EXCHANGE_MESSAGES_MAX);
    Ok(())
}

/// Keys over a tiny alphabet, 0 to 5 bytes: many adjacent keys and keys
/// that are prefixes of others (the empty key too).
fn dense_key() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0x7f, 0xff]), 0..6)
}

/// Two tables: a shared part, keys only on one side, keys whose state
/// differs.
fn two_tables(
    key: impl Strategy<Value = Vec<u8>> + Clone,
    shared_max: usize,
    diff_max: usize,
) -> impl Strategy<Value = (Table, Table)> {
    let state = prop::collection::vec(any::<u8>(), 0..3);
    (
        prop::collection::btree_map(key.clone(), state.clone(), 0..shared_max),
        prop::collection::btree_map(key.clone(), state.clone(), 0..diff_max),
        prop::collection::btree_map(key, state, 0..diff_max),
        prop::collection::vec(any::<prop::sample::Index>(), 0..diff_max),
    )
        .prop_map(|(shared, only_a, only_b, changed)| {
            let mut a = shared.clone();
            let mut b = shared;
            a.extend(only_a);
            b.extend(only_b);
            let keys: Vec<Vec<u8>> = b.keys().cloned().collect();
            if !keys.is_empty() {
                for i in changed {
                    let state = b.get_mut(&keys[i.index(keys.len())]).unwrap();
                    state.push(0xaa);
                }
            }
            (a, b)
        })
}

fn check_reconciles(strategy: impl Strategy<Value = (Table, Table)>, limits: Limits, cases: u32) {
    runner(cases)
        .run(&strategy, |(a, b)| {
            let forward = run(&a, &b, limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_exact(&a, &b, &forward)?;
            if a == b {
                // Equal tables: one fingerprint (or one list), one empty
                // reply.
                prop_assert_eq!(forward.messages, 2);
                prop_assert!(forward.first_frame.len() <= 12 || a.len() <= ITEM_LIST_LEN_MAX);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn random_tables_reconcile_to_their_symmetric_difference() {
    check_reconciles(two_tables(dense_key(), 3000, 60), Limits::MESSAGE, 128);
}

/// Both sides mostly different, one side or both empty at times.
#[test]
fn mostly_different_and_empty_tables_reconcile() {
    check_reconciles(two_tables(dense_key(), 4, 1500), Limits::MESSAGE, 64);
}

/// Larger tables of 4-byte keys: several levels of splits.
#[test]
fn deep_tables_reconcile() {
    let key = any::<u32>().prop_map(|k| k.to_be_bytes().to_vec()).boxed();
    check_reconciles(two_tables(key, 40_000, 300), Limits::MESSAGE, 8);
}

/// Tiny message limits: most rounds defer the rest of their ranges, and
/// the exchange still ends exact.
#[test]
fn deferred_ranges_still_reconcile_exactly() {
    let limits = Limits {
        ranges: BRANCHING + 8,
        items: ITEM_LIST_LEN_MAX + 8,
        bound_bytes: 64,
    };
    check_reconciles(two_tables(dense_key(), 3000, 200), limits, 64);
}

/// Keys of 16 KiB sharing all but their last bytes: bounds are long
/// prefixes, past the bound budget of tight limits.
#[test]
fn huge_keys_reconcile() {
    let prefix = vec![0x42u8; 16 * 1024];
    let key = (any::<u8>(), any::<u8>()).prop_map(move |(x, y)| {
        let mut key = prefix.clone();
        key.extend([x, y]);
        key
    });
    let limits = Limits {
        bound_bytes: 20 * 1024,
        ..Limits::MESSAGE
    };
    check_reconciles(two_tables(key, 400, 20), limits, 16);
}

#[test]
fn equal_tables_take_one_fingerprint_and_one_empty_reply() {
    let table: Table = (0u32..5000)
        .map(|k| (k.to_be_bytes().to_vec(), vec![1]))
        .collect();
    let run = run(&table, &table, Limits::MESSAGE).unwrap();
    assert_eq!(run.messages, 2);
    let first = RangeMessage::decode(&run.first_frame).unwrap();
    assert_eq!(first.ranges().len(), 1);
    assert!(matches!(first.ranges()[0].body, Body::Compare(_)));
    // Version byte, range count, bound tag, body tag, 8 bytes; then the
    // reply: version byte, no range.
    assert_eq!(run.bytes, 12 + 2);
}

/// FNV-1a of one-byte keys is linear enough that {0, 29} and {1, 28} sum
/// alike (same state): unmixed, these two tables would look equal.
#[test]
fn structured_keys_do_not_cancel() {
    let state = [0u8];
    let raw = |k: u8| item_hash(&[k], &state);
    assert_eq!(
        raw(0).wrapping_add(raw(29)),
        raw(1).wrapping_add(raw(28)),
        "the collision this test guards against"
    );
    let a: Table = [(vec![0], vec![0]), (vec![29], vec![0])].into();
    let b: Table = [(vec![1], vec![0]), (vec![28], vec![0])].into();
    // Over the list threshold, so that the whole range is compared by
    // fingerprint first.
    let shared = |t: &mut Table| t.extend((100u8..200).map(|k| (vec![k], vec![0])));
    let (mut a, mut b) = (a, b);
    shared(&mut a);
    shared(&mut b);
    let (ia, ib) = (index_of(&a), index_of(&b));
    assert_ne!(
        ia.below(&Bound::End).fingerprint(),
        ib.below(&Bound::End).fingerprint()
    );
    let run = run(&a, &b, Limits::MESSAGE).unwrap();
    check_exact(&a, &b, &run).unwrap();
}

/// A model of the index: random inserts, updates and removals; every
/// rank, range summary and range walk agrees with a sorted map.
#[test]
fn index_agrees_with_a_sorted_map() {
    #[derive(Clone, Debug)]
    enum Op {
        Insert(Vec<u8>, u64),
        Remove(Vec<u8>),
    }
    let op = prop_oneof![
        3 => (dense_key(), any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        1 => dense_key().prop_map(Op::Remove),
    ];
    let ops = prop::collection::vec(op, 0..600);
    let probes = prop::collection::vec((dense_key(), prop::option::of(dense_key())), 1..40);
    runner(128)
        .run(&(ops, probes), |(ops, probes)| {
            let mut index = RangeIndex::new();
            let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        index.insert(&k, v).unwrap();
                        model.insert(k, v);
                    }
                    Op::Remove(k) => prop_assert_eq!(index.remove(&k), model.remove(&k).is_some()),
                }
            }
            prop_assert_eq!(index.len(), model.len());
            let mut total = Summary::default();
            for (rank, (k, v)) in model.iter().enumerate() {
                prop_assert_eq!(index.key_at(rank), Some(&k[..]));
                prop_assert_eq!(index.get(k), Some(*v));
                prop_assert_eq!(index.first(rank), total);
                total = total.plus(Summary::of(*v));
            }
            prop_assert_eq!(index.key_at(model.len()), None);
            prop_assert_eq!(index.below(&Bound::End), total);
            for (lower, upper) in probes {
                let upper = upper.map_or(Bound::End, |u| Bound::Key(u.into()));
                let expected: Vec<(&[u8], u64)> = model
                    .iter()
                    .filter(|(k, _)| **k >= lower && upper.is_above(k))
                    .map(|(k, v)| (&k[..], *v))
                    .collect();
                let walked: Vec<(&[u8], u64)> = index.items(&lower, &upper).collect();
                prop_assert_eq!(&walked, &expected);
                if expected.is_empty() && !upper.is_above(&lower) {
                    continue; // an empty or upside-down range: no summary
                }
                let sum = expected
                    .iter()
                    .fold(Summary::default(), |s, (_, v)| s.plus(Summary::of(*v)));
                prop_assert_eq!(index.summary(&lower, &upper), sum);
            }
            Ok(())
        })
        .unwrap();
}

/// A range's fingerprint follows updates made in place, not a rebuild.
#[test]
fn updates_move_range_fingerprints_incrementally() {
    let mut index = RangeIndex::new();
    let mut rebuilt = RangeIndex::new();
    for k in 0u32..2000 {
        index.insert(&k.to_be_bytes(), u64::from(k)).unwrap();
    }
    for k in 0u32..2000 {
        let item = if k % 7 == 0 {
            u64::from(k) * 31
        } else {
            u64::from(k)
        };
        index.insert(&k.to_be_bytes(), item).unwrap();
        rebuilt.insert(&k.to_be_bytes(), item).unwrap();
    }
    for (lo, hi) in [(0u32, 2000u32), (5, 6), (100, 1500), (1999, 2000)] {
        let upper = Bound::Key(hi.to_be_bytes().into());
        assert_eq!(
            index.summary(&lo.to_be_bytes(), &upper),
            rebuilt.summary(&lo.to_be_bytes(), &upper)
        );
    }
}

fn frame_of(ranges: &[Range]) -> Vec<u8> {
    wire::encode(ranges).unwrap()
}

fn key(bytes: &[u8]) -> Bound {
    Bound::Key(bytes.into())
}

#[test]
fn hostile_messages_are_refused_with_a_typed_error() {
    let skip = |upper| Range {
        upper,
        body: Body::Skip,
    };
    let cases: Vec<(Vec<Range>, ReconcileError)> = vec![
        (
            vec![skip(key(b"b")), skip(key(b"a"))],
            ReconcileError::BoundsOutOfOrder { index: 1 },
        ),
        (
            vec![skip(key(b"a")), skip(key(b"a"))],
            ReconcileError::BoundsOutOfOrder { index: 1 },
        ),
        (
            vec![skip(Bound::End), skip(key(b"z"))],
            ReconcileError::BoundsOutOfOrder { index: 1 },
        ),
        (
            vec![skip(key(b""))],
            ReconcileError::BoundsOutOfOrder { index: 0 },
        ),
        (
            (0..=RANGES_PER_MESSAGE_MAX as u32)
                .map(|i| skip(key(&i.to_be_bytes())))
                .collect(),
            ReconcileError::TooManyRanges {
                ranges: RANGES_PER_MESSAGE_MAX + 1,
            },
        ),
        (
            vec![Range {
                upper: Bound::End,
                body: Body::Need(vec![Fingerprint([7; 8]); ITEMS_PER_MESSAGE_MAX + 1]),
            }],
            ReconcileError::TooManyItems {
                items: ITEMS_PER_MESSAGE_MAX + 1,
            },
        ),
    ];
    for (ranges, error) in cases {
        assert_eq!(RangeMessage::decode(&frame_of(&ranges)), Err(error));
    }
    let good = frame_of(&[skip(key(b"a")), skip(Bound::End)]);
    assert!(RangeMessage::decode(&good).is_ok());
    for cut in 0..good.len() {
        assert!(matches!(
            RangeMessage::decode(&good[..cut]),
            Err(ReconcileError::Undecodable(_))
        ));
    }
    // A list claiming 2^62 fingerprints in a few bytes: the decode budget
    // refuses it before allocating.
    let mut claim = vec![wire::WIRE_VERSION, 1, 1, 2];
    claim.extend([253, 0, 0, 0, 0, 0, 0, 0, 0x40]);
    assert!(matches!(
        RangeMessage::decode(&claim),
        Err(ReconcileError::Undecodable(_))
    ));
}

#[test]
fn random_bytes_never_panic() {
    runner(512)
        .run(&prop::collection::vec(any::<u8>(), 0..200), |bytes| {
            let mut framed = vec![wire::WIRE_VERSION];
            framed.extend(&bytes);
            for frame in [&bytes, &framed] {
                if let Ok(message) = RangeMessage::decode(frame) {
                    // What decodes is answered within the limits.
                    let index = index_of(&(0u8..100).map(|k| (vec![k], vec![k])).collect());
                    let reply = reconcile(&index, &message, &mut Learned::default());
                    prop_assert!(RangeMessage::decode(&reply.encode().unwrap()).is_ok());
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A peer that needs "everything" cannot make us walk the table, and one
/// that keeps talking is cut off.
#[test]
fn a_peer_cannot_make_an_exchange_unbounded() {
    let index = index_of(
        &(0u32..5000)
            .map(|k| (k.to_be_bytes().to_vec(), vec![0]))
            .collect(),
    );
    let everything = RangeMessage::decode(&frame_of(&[Range {
        upper: Bound::End,
        body: Body::Need(
            (0u32..5000)
                .map(|k| Fingerprint::from(item_fingerprint(&k.to_be_bytes(), &[0])))
                .collect(),
        ),
    }]))
    .unwrap();
    let mut learned = Learned::default();
    let reply = reconcile(&index, &everything, &mut learned);
    assert!(reply.is_empty());
    assert!(learned.send.len() <= 4 * ITEM_LIST_LEN_MAX);

    // A list for the whole key space, sent again and again: our keys are
    // learned once, and the exchange ends after its message limit.
    let empty_list = frame_of(&[Range {
        upper: Bound::End,
        body: Body::Items(vec![Fingerprint([1; 8])]),
    }]);
    let mut side = Exchange::respond();
    for _ in 0..EXCHANGE_MESSAGES_MAX {
        side.on_frame(&index, &empty_list).unwrap();
        // Its reply asks for the one item; the side expects more.
        assert!(!side.is_finished());
    }
    assert_eq!(side.learned().send.len(), 5000);
    assert_eq!(
        side.on_frame(&index, &empty_list),
        Err(ReconcileError::TooManyMessages)
    );
    assert_eq!(
        side.on_frame(&index, &empty_list),
        Err(ReconcileError::Finished)
    );
}

/// Two 1M-key tables that differ in every state: the exchange ends within
/// its message limit, every item shipped once. Slow (`--ignored`).
#[test]
#[ignore]
fn a_million_differences_end_within_the_message_limit() {
    let a: Table = (0u32..1_000_000)
        .map(|k| (k.to_be_bytes().to_vec(), vec![0]))
        .collect();
    let b: Table = a.keys().map(|k| (k.clone(), vec![1])).collect();
    let run = run(&a, &b, Limits::MESSAGE).unwrap();
    tracing::info!(
        messages = run.messages,
        bytes = run.bytes,
        "a million differences reconciled"
    );
    assert_eq!(run.a.send.len() + run.b.send.len(), 2_000_000);
}
