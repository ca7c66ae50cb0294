//! Every built-in resolver keeps the resolver contract; the naive merges a
//! first implementation tends to write do not, and the checker shows it.

use std::collections::BTreeMap;

use archipelago::clock::{ReplicaId, Stamp};
use archipelago::crdt::Crdt;
use archipelago::resolve::{
    DeepMerge, FirstWriteWins, LastWriteWins, Merge, Resolution, Resolver, Siblings,
    Strategy as ResolveStrategy, VersionSet, Versioned,
};
use archipelago::testing::{
    CrdtSpec, check_crdt_laws, check_resolver_laws, concurrent_versions, resolver_laws,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn small_u8() -> BoxedStrategy<u8> {
    (0..4u8).boxed()
}

/// Profiles: objects over a few keys, with nested objects, so that
/// concurrent versions share some leaves and not others.
fn profile() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![(0..3i64).prop_map(Value::from), Just(Value::Null)];
    let nested =
        prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), leaf.clone(), 0..3)
            .prop_map(|m| json!(m));
    prop::collection::btree_map(
        prop::sample::select(vec!["name", "city", "prefs"]),
        prop_oneof![leaf, nested],
        0..4,
    )
    .prop_map(|m| json!(m))
    .boxed()
}

fn settings() -> BoxedStrategy<BTreeMap<u8, BTreeMap<u8, u8>>> {
    prop::collection::btree_map(
        0..3u8,
        prop::collection::btree_map(0..3u8, 0..3u8, 0..3),
        0..3,
    )
    .boxed()
}

#[test]
fn last_write_wins_keeps_the_contract() {
    check_resolver_laws(|_| LastWriteWins, small_u8());
}

#[test]
fn first_write_wins_keeps_the_contract() {
    check_resolver_laws(|_| FirstWriteWins, small_u8());
}

#[test]
fn siblings_keeps_the_contract() {
    check_resolver_laws(|_| Siblings, small_u8());
}

#[test]
fn deep_merge_of_json_keeps_the_contract() {
    check_resolver_laws(|_| Merge::<fn(&Value, &Value) -> Value>::deep(), profile());
}

#[test]
fn deep_merge_of_nested_maps_keeps_the_contract() {
    check_resolver_laws(|_| Merge::deep(), settings());
}

#[test]
fn a_user_merge_function_keeps_the_contract() {
    // The larger value wins: a user function, commutative by itself.
    check_resolver_laws(|_| Merge::new(|n: &u8, o: &u8| *n.max(o)), small_u8());
}

// The seed's naive deep merge: at a conflicting leaf the *remote* side wins,
// and the result is stamped by the local replica. Which side is remote
// depends on where the merge runs, so replicas disagree.

struct NaiveRemoteWins {
    local: ReplicaId,
}

impl Resolver<Value> for NaiveRemoteWins {
    fn strategy(&self) -> ResolveStrategy {
        ResolveStrategy::Custom("naive-remote-wins")
    }

    fn resolve(&self, local: &Versioned<Value>, remote: &Versioned<Value>) -> Versioned<Value> {
        let mut version = local.version.clone();
        version.merge(&remote.version);
        let time = local.stamp.time.max(remote.stamp.time);
        Versioned::new(
            Value::deep_merge(&remote.value, &local.value),
            version,
            Stamp::new(time, self.local),
        )
    }
}

#[test]
#[should_panic(expected = "resolver law check failed")]
fn the_naive_remote_wins_merge_diverges_under_the_checker() {
    check_resolver_laws(|replica| NaiveRemoteWins { local: replica }, profile());
}

/// Only the remote-wins rule, stamped correctly: still diverges, because
/// the result depends on which version is "remote".
struct RemoteLeafWins;

impl Resolver<Value> for RemoteLeafWins {
    fn strategy(&self) -> ResolveStrategy {
        ResolveStrategy::Custom("remote-leaf-wins")
    }

    fn resolve(&self, local: &Versioned<Value>, remote: &Versioned<Value>) -> Versioned<Value> {
        let mut version = local.version.clone();
        version.merge(&remote.version);
        let stamp = local.stamp.max(remote.stamp);
        Versioned::new(
            Value::deep_merge(&remote.value, &local.value),
            version,
            stamp,
        )
    }
}

proptest! {
    /// Direct evidence: on concurrent versions with a conflicting leaf, the
    /// naive resolvers give different answers at two replicas, and ours
    /// give the same.
    #[test]
    fn naive_resolvers_break_commutativity_ours_do_not(
        versions in concurrent_versions(profile()),
    ) {
        // Give the first two a conflicting leaf.
        let mut versions = versions;
        versions[0].value["name"] = json!("Aiko");
        versions[1].value["name"] = json!("Aiko T.");
        let naive = resolver_laws(&|replica| NaiveRemoteWins { local: replica }, &versions);
        prop_assert!(naive.unwrap_err().to_string().contains("commutativity"));
        let remote = resolver_laws(&|_| RemoteLeafWins, &versions);
        prop_assert!(remote.unwrap_err().to_string().contains("commutativity"));
        prop_assert!(resolver_laws(&|_| Merge::<fn(&Value, &Value) -> Value>::deep(), &versions).is_ok());
    }
}

// The version set itself is a CRDT: it passes the CRDT laws, read through
// last-writer-wins.

struct VersionSetSpec;
impl CrdtSpec for VersionSetSpec {
    type State = VersionSet<u8>;
    type Op = u8;
    type Read = Option<Resolution<u8>>;
    fn op() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }
    fn apply(state: &mut VersionSet<u8>, stamp: Stamp, v: &u8) -> VersionSet<u8> {
        state.write(stamp, *v)
    }
    fn read(state: &VersionSet<u8>) -> Option<Resolution<u8>> {
        state.resolve(&LastWriteWins)
    }
}

#[test]
fn version_set_obeys_the_crdt_laws() {
    check_crdt_laws::<VersionSetSpec>();
}

#[test]
fn causality_first_a_write_that_saw_another_replaces_it_without_a_resolver() {
    struct Panics;
    impl Resolver<u8> for Panics {
        fn strategy(&self) -> ResolveStrategy {
            ResolveStrategy::Custom("panics")
        }
        fn resolve(&self, _: &Versioned<u8>, _: &Versioned<u8>) -> Versioned<u8> {
            panic!("called for versions that are not concurrent")
        }
    }
    let (r1, r2) = (ReplicaId::new(1), ReplicaId::new(2));
    let t = |ms| Stamp::new(archipelago::clock::Timestamp::new(ms, 0), r1);
    let mut a = VersionSet::new();
    let first = a.write(t(1), 1u8);
    let mut b = VersionSet::new();
    b.merge(&first);
    let second = b.write(Stamp::new(archipelago::clock::Timestamp::new(2, 0), r2), 2);
    a.merge(&second);
    assert!(!a.is_conflicted());
    assert_eq!(a.resolve(&Panics).unwrap().value(), Some(&2));
}
