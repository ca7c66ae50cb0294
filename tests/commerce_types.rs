//! The commerce types: `BoundedCounter` (stock that never oversells) and
//! `OrMap` (carts of quantities) pass the exported law checker, keep their
//! own invariants in every reachable state, and behave as a shop expects.

use archipelago::clock::{ReplicaId, Stamp};
use archipelago::crdt::{BoundedCounter, Crdt, GCounter, OrMap, PnCounter, RightsError};
use archipelago::testing::{
    CrdtSpec, REPLICAS, Simulation, check_crdt_laws, codec_round_trip, history, replica_id,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// BoundedCounter
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum StockOp {
    Restock(u64),
    Sell(u64),
    /// Hand rights to simulated replica `.0`.
    Transfer(usize, u64),
}

fn stock_op() -> BoxedStrategy<StockOp> {
    prop_oneof![
        2 => (0..6u64).prop_map(StockOp::Restock),
        4 => (0..4u64).prop_map(StockOp::Sell),
        2 => (0..REPLICAS, 0..4u64).prop_map(|(to, n)| StockOp::Transfer(to, n)),
    ]
    .boxed()
}

/// Applies `op` at the replica of `stamp`; a refused sale or transfer
/// changes nothing and ships nothing.
fn apply_stock(state: &mut BoundedCounter, stamp: Stamp, op: &StockOp) -> BoundedCounter {
    let here = stamp.replica;
    let outcome = match op {
        StockOp::Restock(n) => Ok(state.inc(here, *n)),
        StockOp::Sell(n) => state.try_dec(here, *n),
        StockOp::Transfer(to, n) => state.transfer(here, replica_id(*to), *n),
    };
    outcome.unwrap_or_default()
}

struct StockSpec;
impl CrdtSpec for StockSpec {
    type State = BoundedCounter;
    type Op = StockOp;
    type Read = (i64, Vec<u64>);
    fn op() -> BoxedStrategy<StockOp> {
        stock_op()
    }
    fn apply(state: &mut BoundedCounter, stamp: Stamp, op: &StockOp) -> BoundedCounter {
        apply_stock(state, stamp, op)
    }
    fn read(state: &BoundedCounter) -> (i64, Vec<u64>) {
        let rights = (0..REPLICAS).map(|i| state.rights(replica_id(i))).collect();
        (state.value(), rights)
    }
}

#[test]
fn bounded_counter_obeys_the_crdt_laws() {
    check_crdt_laws::<StockSpec>();
}

/// The invariant of a bounded counter, in one state: the value is at its
/// bound or above, decrements never exceed increments, and no replica's
/// rights are negative (the per-replica rights add up to the total, so
/// none was clamped at zero).
fn check_stock(state: &BoundedCounter, at: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        state.value() >= state.bound(),
        "{at}: value below bound: {state:?}"
    );
    prop_assert!(
        state.decrements() <= state.increments(),
        "{at}: decrements exceed increments: {state:?}"
    );
    let per_replica: u64 = (0..REPLICAS).map(|i| state.rights(replica_id(i))).sum();
    prop_assert_eq!(
        per_replica,
        state.total_rights(),
        "{}: a replica overdrew: {:?}",
        at,
        state
    );
    Ok(())
}

/// Stock spread over the three replicas first, so that sales happen at
/// several replicas at once, each with its own rights.
fn spread_stock(sim: &mut Simulation<BoundedCounter, StockOp>, units: u64) {
    let origin = replica_id(0);
    let mut shared = BoundedCounter::new();
    shared.inc(origin, units);
    for i in 1..REPLICAS {
        shared.transfer(origin, replica_id(i), units / 3).unwrap();
    }
    for state in &mut sim.states {
        state.merge(&shared);
    }
}

proptest! {
    /// In every state a replica reaches, and in every delta in flight,
    /// whatever the order of delivery (reordered, duplicated, lost), the
    /// invariant holds; after every write has been merged everywhere, the
    /// units sold at all replicas together are at most the units stocked.
    #[test]
    fn bounded_counter_never_oversells_in_any_reachable_state(
        (skews, events) in history(stock_op()),
        spread in any::<bool>(),
    ) {
        let mut sim = Simulation::new(&skews, apply_stock);
        if spread {
            spread_stock(&mut sim, 9);
        }
        for (step, event) in events.iter().enumerate() {
            sim.step(event);
            for (i, state) in sim.states.iter().enumerate() {
                check_stock(state, &format!("replica {i} after step {step}"))?;
            }
            for (i, inbox) in sim.inboxes.iter().enumerate() {
                for delta in inbox {
                    check_stock(delta, &format!("a delta for replica {i}"))?;
                }
            }
        }
        sim.flush();
        sim.repair();
        for state in &sim.states {
            check_stock(state, "after repair")?;
        }
    }

    /// Every replica sells concurrently, as much as it is asked, with no
    /// message delivered until the end: each sells exactly what it holds
    /// and the stock ends at zero, never below.
    #[test]
    fn partitioned_replicas_sell_only_what_they_hold(
        asks in prop::collection::vec((0..REPLICAS, 1..5u64), 0..40),
    ) {
        let mut sim = Simulation::new(&[0, 0, 0], apply_stock);
        spread_stock(&mut sim, 30);
        let mut sold = [0u64; REPLICAS];
        for (i, n) in asks {
            let here = replica_id(i);
            let held = sim.states[i].rights(here);
            match sim.states[i].try_dec(here, n) {
                Ok(_) => sold[i] += n,
                Err(RightsError::Insufficient { available_here, .. }) => {
                    prop_assert_eq!(available_here, held);
                    prop_assert!(held < n);
                }
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }
        sim.repair();
        let total: u64 = sold.iter().sum();
        prop_assert!(total <= 30);
        prop_assert_eq!(sim.states[0].value(), 30 - total as i64);
        check_stock(&sim.states[0], "after the partition heals")?;
    }
}

#[test]
fn a_replica_without_rights_is_told_what_it_could_get() {
    let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
    let mut stock = BoundedCounter::new();
    stock.inc(tokyo, 5);
    let err = stock.try_dec(frankfurt, 1).unwrap_err();
    assert_eq!(
        err,
        RightsError::Insufficient {
            replica: frankfurt,
            requested: 1,
            available_here: 0,
            available_total: 5
        }
    );
    assert!(
        err.to_string().contains("5 held across all replicas"),
        "{err}"
    );
    stock.transfer(tokyo, frankfurt, 2).unwrap();
    stock.try_dec(frankfurt, 2).unwrap();
    assert_eq!(stock.value(), 3);
    assert_eq!(stock.rights(tokyo), 3);
}

// ---------------------------------------------------------------------------
// OrMap
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum MapOp {
    Update(u8, u64),
    Remove(u8),
}

fn map_op() -> BoxedStrategy<MapOp> {
    prop_oneof![
        4 => (0..5u8, 0..4u64).prop_map(|(k, n)| MapOp::Update(k, n)),
        2 => (0..5u8).prop_map(MapOp::Remove),
    ]
    .boxed()
}

struct GCounterMapSpec;
impl CrdtSpec for GCounterMapSpec {
    type State = OrMap<u8, GCounter>;
    type Op = MapOp;
    type Read = Vec<(u8, u64)>;
    fn op() -> BoxedStrategy<MapOp> {
        map_op()
    }
    fn apply(state: &mut Self::State, stamp: Stamp, op: &MapOp) -> Self::State {
        let here = stamp.replica;
        match op {
            MapOp::Update(k, n) => state.update(here, *k, |c| c.inc(here, *n)),
            MapOp::Remove(k) => state.remove(k),
        }
    }
    fn read(state: &Self::State) -> Vec<(u8, u64)> {
        sorted(state.iter().map(|(k, c)| (*k, c.value())))
    }
}

struct PnCounterMapSpec;
impl CrdtSpec for PnCounterMapSpec {
    type State = OrMap<u8, PnCounter>;
    type Op = (MapOp, bool);
    type Read = Vec<(u8, i64)>;
    fn op() -> BoxedStrategy<(MapOp, bool)> {
        (map_op(), any::<bool>()).boxed()
    }
    fn apply(state: &mut Self::State, stamp: Stamp, (op, up): &(MapOp, bool)) -> Self::State {
        let here = stamp.replica;
        match op {
            MapOp::Update(k, n) if *up => state.update(here, *k, |c| c.inc(here, *n)),
            MapOp::Update(k, n) => state.update(here, *k, |c| c.dec(here, *n)),
            MapOp::Remove(k) => state.remove(k),
        }
    }
    fn read(state: &Self::State) -> Vec<(u8, i64)> {
        sorted(state.iter().map(|(k, c)| (*k, c.value())))
    }
}

type Carts = OrMap<u8, OrMap<u8, GCounter>>;

#[derive(Clone, Debug)]
enum NestedOp {
    /// Adds `.2` to line `.1` of cart `.0`.
    Add(u8, u8, u64),
    /// Removes line `.1` of cart `.0`.
    RemoveLine(u8, u8),
    /// Removes cart `.0`.
    RemoveCart(u8),
}

struct NestedMapSpec;
impl CrdtSpec for NestedMapSpec {
    type State = Carts;
    type Op = NestedOp;
    type Read = Vec<(u8, Vec<(u8, u64)>)>;
    fn op() -> BoxedStrategy<NestedOp> {
        prop_oneof![
            4 => (0..3u8, 0..3u8, 0..4u64).prop_map(|(c, l, n)| NestedOp::Add(c, l, n)),
            2 => (0..3u8, 0..3u8).prop_map(|(c, l)| NestedOp::RemoveLine(c, l)),
            1 => (0..3u8).prop_map(NestedOp::RemoveCart),
        ]
        .boxed()
    }
    fn apply(state: &mut Carts, stamp: Stamp, op: &NestedOp) -> Carts {
        let here = stamp.replica;
        match op {
            NestedOp::Add(cart, line, n) => state.update(here, *cart, |lines| {
                lines.update(here, *line, |q| q.inc(here, *n))
            }),
            NestedOp::RemoveLine(cart, line) => {
                state.update(here, *cart, |lines| lines.remove(line))
            }
            NestedOp::RemoveCart(cart) => state.remove(cart),
        }
    }
    fn read(state: &Carts) -> Vec<(u8, Vec<(u8, u64)>)> {
        sorted(
            state
                .iter()
                .map(|(cart, lines)| (*cart, sorted(lines.iter().map(|(l, q)| (*l, q.value()))))),
        )
    }
}

fn sorted<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.sort_unstable();
    items
}

#[test]
fn or_map_of_g_counters_obeys_the_crdt_laws() {
    check_crdt_laws::<GCounterMapSpec>();
}

#[test]
fn or_map_of_pn_counters_obeys_the_crdt_laws() {
    check_crdt_laws::<PnCounterMapSpec>();
}

#[test]
fn nested_or_map_obeys_the_crdt_laws() {
    check_crdt_laws::<NestedMapSpec>();
}

proptest! {
    /// A remove concurrent with an update of the same key: the key stays
    /// on both replicas, with the updater's value. A remove after which no
    /// update came leaves the key out for good, even when older states are
    /// merged again.
    #[test]
    fn or_map_concurrent_update_survives_a_remove(
        (skews, events) in history(map_op()),
        key in 0..5u8,
        n in 1..4u64,
    ) {
        let mut sim = Simulation::run(&skews, &events, GCounterMapSpec::apply);
        sim.repair();
        let before = sim.states[0].clone();
        let remover = sim.states[0].remove(&key);
        let here = sim.stamp(1).replica;
        let updater = sim.states[1].update(here, key, |c| c.inc(here, n));
        let updated = sim.states[1].get(&key).map(|c| c.value());
        sim.states[0].merge(&updater);
        sim.states[1].merge(&remover);
        prop_assert_eq!(&sim.states[0], &sim.states[1]);
        prop_assert_eq!(sim.states[0].get(&key).map(|c| c.value()), updated);

        let mut removed = before.clone();
        removed.remove(&key);
        removed.merge(&before);
        prop_assert!(!removed.contains_key(&key));
    }

    /// Every state of every law-checker history survives JSON and the wire.
    #[test]
    fn nested_or_map_round_trips((skews, events) in history(NestedMapSpec::op())) {
        let sim = Simulation::run(&skews, &events, NestedMapSpec::apply);
        for state in &sim.states {
            codec_round_trip(state)?;
        }
    }
}

/// Two regions share a cart with two lines. Partitioned, one adds
/// quantities to the first line while the other adds more to it and
/// removes the second line. Healed, both hold the same cart: every
/// increment of the first line, and no second line.
#[test]
fn cart_concurrent_increments_and_a_line_removal_converge() {
    let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
    let mut cart_tokyo: OrMap<&str, PnCounter> = OrMap::new();
    let tea = cart_tokyo.update(tokyo, "tea", |q| q.inc(tokyo, 1));
    let rice = cart_tokyo.update(tokyo, "rice", |q| q.inc(tokyo, 2));
    let mut cart_frankfurt = OrMap::new();
    cart_frankfurt.merge(&tea);
    cart_frankfurt.merge(&rice);

    let mut from_tokyo = Vec::new();
    let mut from_frankfurt = Vec::new();
    for _ in 0..3 {
        from_tokyo.push(cart_tokyo.update(tokyo, "tea", |q| q.inc(tokyo, 1)));
    }
    from_frankfurt.push(cart_frankfurt.update(frankfurt, "tea", |q| q.inc(frankfurt, 4)));
    from_frankfurt.push(cart_frankfurt.remove(&"rice"));
    assert!(!cart_frankfurt.contains_key(&"rice"));

    // Deltas arrive in reverse order, one of them twice.
    for delta in from_frankfurt.iter().rev().chain(from_frankfurt.first()) {
        cart_tokyo.merge(delta);
    }
    for delta in from_tokyo.iter().rev() {
        cart_frankfurt.merge(delta);
    }
    assert_eq!(cart_tokyo, cart_frankfurt);
    assert_eq!(cart_tokyo.len(), 1);
    assert_eq!(cart_tokyo.get(&"tea").map(|q| q.value()), Some(1 + 3 + 4));
    assert!(cart_tokyo.get(&"rice").is_none());

    // Rice added again starts from zero: the removed quantity stays removed.
    let again = cart_frankfurt.update(frankfurt, "rice", |q| q.inc(frankfurt, 1));
    cart_tokyo.merge(&again);
    assert_eq!(cart_tokyo.get(&"rice").map(|q| q.value()), Some(1));
    let json = serde_json::to_string(&cart_tokyo).unwrap();
    let back: OrMap<String, PnCounter> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.get("tea").map(|q| q.value()), Some(8));
}
