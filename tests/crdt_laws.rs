//! Every built-in CRDT passes the exported law checker, and the checker
//! itself fails on types that break the laws.

use archipelago::clock::Stamp;
use archipelago::crdt::{Crdt, GCounter, LwwMap, LwwRegister, MvRegister, OrSet, PnCounter};
use archipelago::testing::{CrdtSpec, check_crdt_laws};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

struct GCounterSpec;
impl CrdtSpec for GCounterSpec {
    type State = GCounter;
    type Op = u64;
    type Read = u64;
    fn op() -> BoxedStrategy<u64> {
        (0..5u64).boxed()
    }
    fn apply(state: &mut GCounter, stamp: Stamp, n: &u64) -> GCounter {
        state.inc(stamp.replica, *n)
    }
    fn read(state: &GCounter) -> u64 {
        state.value()
    }
}

struct PnCounterSpec;
impl CrdtSpec for PnCounterSpec {
    type State = PnCounter;
    type Op = (bool, u64);
    type Read = i64;
    fn op() -> BoxedStrategy<(bool, u64)> {
        (any::<bool>(), 0..5u64).boxed()
    }
    fn apply(state: &mut PnCounter, stamp: Stamp, &(up, n): &(bool, u64)) -> PnCounter {
        if up {
            state.inc(stamp.replica, n)
        } else {
            state.dec(stamp.replica, n)
        }
    }
    fn read(state: &PnCounter) -> i64 {
        state.value()
    }
}

#[derive(Clone, Debug)]
pub enum SetOp {
    Insert(u8),
    Remove(u8),
    Clear,
}

pub fn set_op() -> BoxedStrategy<SetOp> {
    prop_oneof![
        5 => (0..6u8).prop_map(SetOp::Insert),
        4 => (0..6u8).prop_map(SetOp::Remove),
        1 => Just(SetOp::Clear),
    ]
    .boxed()
}

struct OrSetSpec;
impl CrdtSpec for OrSetSpec {
    type State = OrSet<u8>;
    type Op = SetOp;
    type Read = Vec<u8>;
    fn op() -> BoxedStrategy<SetOp> {
        set_op()
    }
    fn apply(state: &mut OrSet<u8>, stamp: Stamp, op: &SetOp) -> OrSet<u8> {
        match op {
            SetOp::Insert(e) => state.insert(stamp.replica, *e),
            SetOp::Remove(e) => state.remove(e),
            SetOp::Clear => state.clear(),
        }
    }
    fn read(state: &OrSet<u8>) -> Vec<u8> {
        let mut elements: Vec<u8> = state.iter().copied().collect();
        elements.sort_unstable();
        elements
    }
}

/// Elements from a wider range, so sets grow past the inline form of their
/// element map and merges cross between the two forms.
struct WideOrSetSpec;
impl CrdtSpec for WideOrSetSpec {
    type State = OrSet<u8>;
    type Op = SetOp;
    type Read = Vec<u8>;
    fn op() -> BoxedStrategy<SetOp> {
        prop_oneof![
            8 => (0..40u8).prop_map(SetOp::Insert),
            2 => (0..40u8).prop_map(SetOp::Remove),
            1 => Just(SetOp::Clear),
        ]
        .boxed()
    }
    fn apply(state: &mut OrSet<u8>, stamp: Stamp, op: &SetOp) -> OrSet<u8> {
        OrSetSpec::apply(state, stamp, op)
    }
    fn read(state: &OrSet<u8>) -> Vec<u8> {
        OrSetSpec::read(state)
    }
}

struct LwwRegisterSpec;
impl CrdtSpec for LwwRegisterSpec {
    type State = LwwRegister<u8>;
    type Op = u8;
    type Read = Option<u8>;
    fn op() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }
    fn apply(state: &mut LwwRegister<u8>, stamp: Stamp, v: &u8) -> LwwRegister<u8> {
        state.set(stamp, *v)
    }
    fn read(state: &LwwRegister<u8>) -> Option<u8> {
        state.get().copied()
    }
}

#[derive(Clone, Debug)]
pub enum MapOp {
    Insert(u8, u8),
    Remove(u8),
}

struct LwwMapSpec;
impl CrdtSpec for LwwMapSpec {
    type State = LwwMap<u8, u8>;
    type Op = MapOp;
    type Read = Vec<(u8, u8)>;
    fn op() -> BoxedStrategy<MapOp> {
        prop_oneof![
            3 => (0..5u8, any::<u8>()).prop_map(|(k, v)| MapOp::Insert(k, v)),
            1 => (0..5u8).prop_map(MapOp::Remove),
        ]
        .boxed()
    }
    fn apply(state: &mut LwwMap<u8, u8>, stamp: Stamp, op: &MapOp) -> LwwMap<u8, u8> {
        match op {
            MapOp::Insert(k, v) => state.insert(stamp, *k, *v),
            MapOp::Remove(k) => state.remove(stamp, *k),
        }
    }
    fn read(state: &LwwMap<u8, u8>) -> Vec<(u8, u8)> {
        let mut pairs: Vec<(u8, u8)> = state.iter().map(|(k, v)| (*k, *v)).collect();
        pairs.sort_unstable();
        pairs
    }
}

struct MvRegisterSpec;
impl CrdtSpec for MvRegisterSpec {
    type State = MvRegister<u8>;
    type Op = u8;
    type Read = Vec<u8>;
    fn op() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }
    fn apply(state: &mut MvRegister<u8>, stamp: Stamp, v: &u8) -> MvRegister<u8> {
        state.write(stamp.replica, *v)
    }
    fn read(state: &MvRegister<u8>) -> Vec<u8> {
        state.values().copied().collect()
    }
}

#[test]
fn g_counter_obeys_the_crdt_laws() {
    check_crdt_laws::<GCounterSpec>();
}

#[test]
fn pn_counter_obeys_the_crdt_laws() {
    check_crdt_laws::<PnCounterSpec>();
}

#[test]
fn or_set_obeys_the_crdt_laws() {
    check_crdt_laws::<OrSetSpec>();
}

#[test]
fn or_set_with_many_elements_obeys_the_crdt_laws() {
    check_crdt_laws::<WideOrSetSpec>();
}

#[test]
fn lww_register_obeys_the_crdt_laws() {
    check_crdt_laws::<LwwRegisterSpec>();
}

#[test]
fn lww_map_obeys_the_crdt_laws() {
    check_crdt_laws::<LwwMapSpec>();
}

#[test]
fn mv_register_obeys_the_crdt_laws() {
    check_crdt_laws::<MvRegisterSpec>();
}

// The checker must be able to fail: a counter whose merge adds instead of
// taking the maximum is commutative and associative but not idempotent, and
// double-counts duplicated deliveries.

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
struct AddingCounter(u64);

impl Crdt for AddingCounter {
    fn merge(&mut self, other: &Self) {
        self.0 += other.0;
    }
}

struct AddingCounterSpec;
impl CrdtSpec for AddingCounterSpec {
    type State = AddingCounter;
    type Op = u64;
    type Read = u64;
    fn op() -> BoxedStrategy<u64> {
        (1..5u64).boxed()
    }
    fn apply(state: &mut AddingCounter, _: Stamp, n: &u64) -> AddingCounter {
        state.0 += n;
        AddingCounter(*n)
    }
    fn read(state: &AddingCounter) -> u64 {
        state.0
    }
}

#[test]
#[should_panic(expected = "CRDT law check failed")]
fn the_checker_rejects_a_merge_that_is_not_idempotent() {
    check_crdt_laws::<AddingCounterSpec>();
}

// A register where the incoming value always wins: idempotent, but not
// commutative, so replicas that exchange in different orders diverge.

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
struct RemoteWins(Option<u8>);

impl Crdt for RemoteWins {
    fn merge(&mut self, other: &Self) {
        if other.0.is_some() {
            self.0 = other.0;
        }
    }
}

struct RemoteWinsSpec;
impl CrdtSpec for RemoteWinsSpec {
    type State = RemoteWins;
    type Op = u8;
    type Read = Option<u8>;
    fn op() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }
    fn apply(state: &mut RemoteWins, _: Stamp, v: &u8) -> RemoteWins {
        state.0 = Some(*v);
        state.clone()
    }
    fn read(state: &RemoteWins) -> Option<u8> {
        state.0
    }
}

#[test]
#[should_panic(expected = "CRDT law check failed")]
fn the_checker_rejects_a_merge_that_is_not_commutative() {
    check_crdt_laws::<RemoteWinsSpec>();
}

#[test]
fn merge_laws_name_the_broken_law() {
    let (a, b) = (RemoteWins(Some(0)), RemoteWins(Some(1)));
    let err = archipelago::testing::merge_laws(&a, &b, &b).unwrap_err();
    assert!(err.to_string().contains("commutativity broken"), "{err}");
}

// Properties particular to one type, over the same simulated histories.

use archipelago::testing::{REPLICAS, Simulation, history};

proptest! {
    /// Concurrent insert and remove of the same element: the insert wins
    /// on both replicas, whatever happened before.
    #[test]
    fn or_set_concurrent_add_and_remove_keeps_the_element(
        (skews, events) in history(set_op()),
        element in 0..6u8,
    ) {
        let mut sim = Simulation::run(&skews, &events, OrSetSpec::apply);
        sim.repair(); // replicas 0 and 1 start from the same state
        let remover = sim.states[0].remove(&element);
        let stamp = sim.stamp(1);
        let adder = sim.states[1].insert(stamp.replica, element);
        sim.states[0].merge(&adder);
        sim.states[1].merge(&remover);
        prop_assert_eq!(&sim.states[0], &sim.states[1]);
        prop_assert!(sim.states[0].contains(&element));
    }

    /// An element removed after being observed does not come back when
    /// older states of the same replica are merged again.
    #[test]
    fn or_set_removed_element_is_not_resurrected_by_older_states(
        (skews, events) in history(set_op()),
        element in 0..6u8,
        replica in 0..REPLICAS,
    ) {
        let mut sim = Simulation::new(&skews, OrSetSpec::apply);
        let mut snapshots = Vec::new();
        for event in &events {
            sim.step(event);
            snapshots.push(sim.states[replica].clone());
        }
        let set = &mut sim.states[replica];
        let observed = set.contains(&element);
        set.remove(&element);
        for old in &snapshots {
            set.merge(old);
        }
        prop_assert!(!set.contains(&element), "observed before removal: {}", observed);
    }

    /// With wall clocks skewed by up to ±250 ms, every replica ends with the
    /// same winner per key, and that winner is the write with the highest
    /// stamp ever made for the key.
    #[test]
    fn lww_map_same_winner_everywhere_under_clock_skew(
        (skews, events) in history(LwwMapSpec::op()),
    ) {
        let mut sim = Simulation::run(&skews, &events, LwwMapSpec::apply);
        sim.flush();
        sim.repair();
        for key in 0..5u8 {
            let highest = sim
                .deltas
                .iter()
                .filter_map(|d| d.stamp(&key).map(|s| (s, d.get(&key).copied())))
                .max_by_key(|(s, _)| *s);
            for state in &sim.states {
                let seen = state.stamp(&key).map(|s| (s, state.get(&key).copied()));
                prop_assert_eq!(seen, highest);
            }
        }
    }

    /// Reads of MV-Register siblings are the same everywhere once converged,
    /// and a write that observed every sibling leaves exactly one value.
    #[test]
    fn mv_register_write_after_seeing_siblings_resolves_them(
        (skews, events) in history(MvRegisterSpec::op()),
        value in any::<u8>(),
    ) {
        let mut sim = Simulation::run(&skews, &events, MvRegisterSpec::apply);
        sim.repair();
        let stamp = sim.stamp(2);
        let delta = sim.states[2].write(stamp.replica, value);
        sim.states[0].merge(&delta);
        prop_assert_eq!(sim.states[0].values().copied().collect::<Vec<_>>(), vec![value]);
    }
}
