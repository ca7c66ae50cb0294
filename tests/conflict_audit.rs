//! Every resolution is recorded; subscribers never block writers; counters
//! count.

use archipelago::clock::{Hlc, ManualClock, ReplicaId};
use archipelago::resolve::{
    ConflictFeed, FirstWriteWins, LastWriteWins, RegistryError, Resolver, ResolverRegistry,
    Siblings, Strategy, VersionSet,
};

struct Pair {
    wall: ManualClock,
    tokyo: Hlc,
    frankfurt: Hlc,
}

fn pair() -> Pair {
    let wall = ManualClock::new(1_000_000);
    Pair {
        tokyo: Hlc::with_clock(ReplicaId::new(1), wall.clone()),
        frankfurt: Hlc::with_clock(ReplicaId::new(2), wall.clone()),
        wall,
    }
}

/// Tokyo and Frankfurt write `key` concurrently; Tokyo merges Frankfurt's
/// write and Frankfurt Tokyo's, each through its own feed.
fn concurrent_write(
    p: &Pair,
    resolver: &dyn Resolver<String>,
    feeds: (&ConflictFeed<String>, &ConflictFeed<String>),
) -> (VersionSet<String>, VersionSet<String>) {
    let mut here = VersionSet::new();
    let mine = here.write(p.tokyo.stamp(), "tokyo".to_string());
    p.wall.advance(2);
    let mut there = VersionSet::new();
    let theirs = there.write(p.frankfurt.stamp(), "frankfurt".to_string());
    here.merge_audited(&theirs, resolver, feeds.0, &"user:1", p.tokyo.now());
    there.merge_audited(&mine, resolver, feeds.1, &"user:1", p.frankfurt.now());
    (here, there)
}

#[test]
fn last_write_wins_conflicts_are_recorded_with_winner_and_loser_on_both_replicas() {
    let p = pair();
    let (feed_t, feed_f) = (
        ConflictFeed::new("profiles", ReplicaId::new(1)),
        ConflictFeed::new("profiles", ReplicaId::new(2)),
    );
    let (sub_t, sub_f) = (feed_t.subscribe(8), feed_f.subscribe(8));
    let (here, there) = concurrent_write(&p, &LastWriteWins, (&feed_t, &feed_f));
    assert_eq!(here, there);

    let (rt, rf) = (sub_t.try_recv().unwrap(), sub_f.try_recv().unwrap());
    for record in [&rt, &rf] {
        assert_eq!(&*record.table, "profiles");
        assert_eq!(record.strategy, Strategy::LastWriteWins);
        assert_eq!(record.winner.as_ref().unwrap().value, "frankfurt");
        assert_eq!(record.losers.len(), 1);
        assert_eq!(record.losers[0].value, "tokyo");
        assert_eq!(record.losers[0].origin(), ReplicaId::new(1));
    }
    assert_eq!(
        (rt.replica, rf.replica),
        (ReplicaId::new(1), ReplicaId::new(2))
    );
    assert_eq!(rt.winner, rf.winner);
    assert!(sub_t.try_recv().is_none(), "one conflict, one record");
    assert_eq!(feed_t.stats().total, 1);
}

#[test]
fn first_write_wins_and_siblings_are_recorded_too() {
    let p = pair();
    let feed = ConflictFeed::new("usernames", ReplicaId::new(1));
    let other = ConflictFeed::new("usernames", ReplicaId::new(2));
    let sub = feed.subscribe(8);
    concurrent_write(&p, &FirstWriteWins, (&feed, &other));
    let record = sub.try_recv().unwrap();
    assert_eq!(record.strategy, Strategy::FirstWriteWins);
    assert_eq!(record.winner.as_ref().unwrap().value, "tokyo");

    let (here, _) = concurrent_write(&p, &Siblings, (&feed, &other));
    let record = sub.try_recv().unwrap();
    assert_eq!(record.strategy, Strategy::Siblings);
    assert!(record.winner.is_none());
    assert_eq!(record.losers.len(), 2);
    assert_eq!(here.resolve(&Siblings).unwrap().values().len(), 2);
}

#[test]
fn merges_without_a_new_conflict_record_nothing() {
    let p = pair();
    let feed = ConflictFeed::new("profiles", ReplicaId::new(1));
    let other = ConflictFeed::new("profiles", ReplicaId::new(2));
    let (mut here, there) = concurrent_write(&p, &LastWriteWins, (&feed, &other));
    // The same state again, and a write that saw everything.
    assert!(
        here.merge_audited(&there, &LastWriteWins, &feed, &1, p.tokyo.now())
            .is_none()
    );
    let mut later = there.clone();
    let resolved = later.write(p.frankfurt.stamp(), "settled".to_string());
    assert!(
        here.merge_audited(&resolved, &LastWriteWins, &feed, &1, p.tokyo.now())
            .is_none()
    );
    assert!(!here.is_conflicted());
    assert_eq!(feed.stats().total, 1);
}

#[test]
fn a_full_subscriber_never_blocks_and_its_drops_are_counted() {
    let p = pair();
    let feed = ConflictFeed::with_clock("profiles", ReplicaId::new(1), p.wall.clone());
    let other = ConflictFeed::new("profiles", ReplicaId::new(2));
    let slow = feed.subscribe(2);
    for _ in 0..10 {
        concurrent_write(&p, &LastWriteWins, (&feed, &other));
    }
    assert_eq!(slow.drain().len(), 2);
    let stats = feed.stats();
    assert_eq!(stats.total, 10);
    assert_eq!(stats.dropped, 8);
}

#[test]
fn a_dropped_subscription_is_forgotten() {
    let p = pair();
    let feed = ConflictFeed::new("profiles", ReplicaId::new(1));
    let other = ConflictFeed::new("profiles", ReplicaId::new(2));
    drop(feed.subscribe(1));
    concurrent_write(&p, &LastWriteWins, (&feed, &other));
    concurrent_write(&p, &LastWriteWins, (&feed, &other));
    assert_eq!(feed.stats().dropped, 0);
}

#[test]
fn the_recent_rate_covers_the_last_minute() {
    let p = pair();
    let feed = ConflictFeed::with_clock("profiles", ReplicaId::new(1), p.wall.clone());
    let other = ConflictFeed::new("profiles", ReplicaId::new(2));
    for _ in 0..30 {
        concurrent_write(&p, &LastWriteWins, (&feed, &other));
    }
    let stats = feed.stats();
    assert_eq!(stats.total, 30);
    assert!((stats.recent_per_sec - 0.5).abs() < 1e-9, "{stats:?}");
    p.wall.advance(61_000);
    let stats = feed.stats();
    assert_eq!(stats.recent_per_sec, 0.0);
    assert_eq!(stats.total, 30);
}

#[test]
fn a_table_registered_for_another_type_is_a_typed_error() {
    let mut registry = ResolverRegistry::new();
    registry.for_table::<String>("usernames", FirstWriteWins);
    let err = registry.resolver::<u64>("usernames").err().unwrap();
    assert!(matches!(err, RegistryError::TypeMismatch { .. }));
    assert_eq!(
        registry.resolver::<String>("usernames").unwrap().strategy(),
        Strategy::FirstWriteWins
    );
}
