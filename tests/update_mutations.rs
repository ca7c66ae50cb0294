//! An update ships every mutation it makes: what a write changes at one
//! region is exactly what every other region receives, even when its
//! closure calls several mutators, and a write that cannot be shipped (its
//! delta does not encode, its closure panics) changes nothing.

use std::collections::BTreeSet;

use archipelago::crdt::{Crdt, OrSet};
use archipelago::region::{Region, RegionError};
use archipelago::session::Session;
use archipelago::transport::ChannelNetwork;
use serde::{Deserialize, Serialize, Serializer};

/// Two regions on one network, the default config.
fn pair(net: &ChannelNetwork) -> (Region, Region) {
    let a = Region::builder("a")
        .transport(net.endpoint("a"))
        .build()
        .unwrap();
    let b = Region::builder("b")
        .transport(net.endpoint("b"))
        .build()
        .unwrap();
    (a, b)
}

/// Waits until `a` and `b` are connected and their first anti-entropy
/// exchange is over: from then on a write travels in a batch.
async fn connected(a: &Region, b: &Region) {
    while a.stats().syncs_completed == 0 || b.stats().syncs_completed == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_mutations_in_one_update_both_reach_a_session_read_elsewhere() {
    let net = ChannelNetwork::new(1);
    let (a, b) = pair(&net);
    let carts_a = a.table::<String, OrSet<String>>("carts").unwrap();
    let carts_b = b.table::<String, OrSet<String>>("carts").unwrap();
    connected(&a, &b).await;
    let repaired = b.stats().sync_states_received;

    let mut session = Session::new();
    carts_a
        .update_session("user-1", &mut session, |cart, ctx| {
            cart.apply(|c| c.insert(ctx.replica(), "matcha".into()));
            cart.apply(|c| c.insert(ctx.replica(), "yuzu".into()));
        })
        .await
        .unwrap();
    // Here: both, in one write.
    let here = carts_a.read("user-1").await.unwrap().unwrap();
    assert!(here.contains("matcha") && here.contains("yuzu"));
    assert_eq!(a.stats().writes, 1, "two mutators, one write");

    // There: the session read waits for the write, then must show both
    // (read your writes), from the batch, not from a repair.
    let there = carts_b
        .read_session("user-1", &mut session)
        .await
        .unwrap()
        .expect("the write arrived");
    assert!(
        there.contains("matcha"),
        "the first mutation was not shipped: {there:?}"
    );
    assert!(there.contains("yuzu"), "{there:?}");
    let stats = b.stats();
    assert!(stats.batches_applied >= 1, "{stats:?}");
    assert_eq!(stats.rejected_frames, 0, "{stats:?}");
    assert_eq!(stats.sync_states_received, repaired, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_mutation_and_its_undo_in_one_update_ship_as_one() {
    let net = ChannelNetwork::new(2);
    let (a, b) = pair(&net);
    let carts_a = a.table::<String, OrSet<String>>("carts").unwrap();
    let carts_b = b.table::<String, OrSet<String>>("carts").unwrap();
    connected(&a, &b).await;
    let mut session = Session::new();
    carts_a
        .update_session("user-1", &mut session, |cart, ctx| {
            cart.apply(|c| c.insert(ctx.replica(), "tea".into()));
            cart.apply(|c| c.insert(ctx.replica(), "sencha".into()));
        })
        .await
        .unwrap();
    // Reads inside the closure see the mutators applied so far.
    carts_a
        .update_session("user-1", &mut session, |cart, _| {
            assert!(cart.contains("tea"));
            cart.apply(|c| c.remove("tea"));
            assert!(!cart.contains("tea"));
        })
        .await
        .unwrap();
    let there = carts_b
        .read_session("user-1", &mut session)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !there.contains("tea") && there.contains("sencha"),
        "{there:?}"
    );
    assert_eq!(a.stats().writes, 2);
    assert_eq!(b.stats().rejected_frames, 0);
}

#[tokio::test(start_paused = true)]
async fn an_update_that_applies_nothing_is_no_write() {
    let region = Region::builder("solo").build().unwrap();
    let carts = region.table::<String, OrSet<String>>("carts").unwrap();
    let token = carts.update("user-1", |_, _| {}).await.unwrap();
    assert!(token.is_empty());
    assert_eq!(region.stats().writes, 0);
    assert!(carts.read("user-1").await.unwrap().is_none());
}

/// A grow-only set of numbers whose encoding fails when it holds
/// [`UNENCODABLE`]: a stand-in for a delta over the frame limit, or a
/// user type whose `Serialize` fails for some values.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct Numbers(BTreeSet<u32>);

const UNENCODABLE: u32 = 13;

impl Serialize for Numbers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.contains(&UNENCODABLE) {
            return Err(serde::ser::Error::custom("13 does not encode"));
        }
        self.0.serialize(s)
    }
}

impl Crdt for Numbers {
    fn merge(&mut self, other: &Self) {
        self.0.extend(other.0.iter().copied());
    }
}

impl Numbers {
    fn add(&mut self, n: u32) -> Self {
        self.0.insert(n);
        Numbers([n].into())
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_whose_delta_does_not_encode_changes_nothing() {
    let net = ChannelNetwork::new(3);
    let (a, b) = pair(&net);
    let t = a.table::<u8, Numbers>("numbers").unwrap();
    let tb = b.table::<u8, Numbers>("numbers").unwrap();
    connected(&a, &b).await;
    let mut session = Session::new();
    t.update_session(&1u8, &mut session, |n, _| n.apply(|n| n.add(1)))
        .await
        .unwrap();
    let err = t
        .update(&1u8, |n, _| {
            n.apply(|n| n.add(2));
            n.apply(|n| n.add(UNENCODABLE));
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RegionError::Encode(_)), "{err:?}");
    // Neither mutation of the failed write is held here: nothing that
    // could not be shipped.
    assert_eq!(t.read(&1u8).await.unwrap(), Some(Numbers([1].into())));
    assert_eq!(a.stats().writes, 1);
    // The region goes on: the next write replicates.
    t.update_session(&1u8, &mut session, |n, _| n.apply(|n| n.add(3)))
        .await
        .unwrap();
    let there = tb.read_session(&1u8, &mut session).await.unwrap();
    assert_eq!(there, Some(Numbers([1, 3].into())));
    let here = t.read(&1u8).await.unwrap();
    assert_eq!(here, there, "the regions hold what was shipped");
    assert_eq!(b.stats().rejected_frames, 0);
    assert_eq!(a.stats().engine_failure, None);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_an_update_changes_nothing_and_the_region_goes_on() {
    let net = ChannelNetwork::new(4);
    let (a, _b) = pair(&net);
    let t = a.table::<String, OrSet<String>>("carts").unwrap();
    let panicking = t.clone();
    let joined = tokio::spawn(async move {
        panicking
            .update("user-1", |cart, ctx| {
                cart.apply(|c| c.insert(ctx.replica(), "tea".into()));
                panic!("the application's closure panics");
            })
            .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    assert!(t.read("user-1").await.unwrap().is_none());
    // Not a failure of the engine: the lock was not poisoned.
    t.update("user-1", |cart, ctx| {
        cart.apply(|c| c.insert(ctx.replica(), "yuzu".into()))
    })
    .await
    .unwrap();
    let stats = a.stats();
    assert_eq!(stats.engine_failure, None);
    assert_eq!(stats.writes, 1);
}
