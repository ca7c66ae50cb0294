//! Regression tests of the replication core, driven without I/O: each
//! replays a scenario a review found broken and checks the fixed behaviour.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::clock::{ManualClock, Stamp};
use crate::crdt::{Crdt, GCounter, LwwMap};
use crate::region::PROTOCOL_VERSION;
use crate::replication::message::Blob;
use crate::replication::store::{CrdtStore, Key, Merger};

impl Core {
    fn named<S: 'static>(&self, table: &str) -> Option<&S> {
        self.store(self.slot_of(table)?)
    }

    fn named_mut<S: 'static>(&mut self, table: &str) -> Option<&mut S> {
        self.store_mut(self.slot_of(table)?)
    }
}

/// Packs `(key, value)` entries of one table, as a batch or chunk carries them.
fn pack_entries(table: &str, entries: Vec<(Key, Vec<u8>)>) -> (Vec<String>, Blob) {
    let mut packed = Vec::new();
    for (key, value) in &entries {
        message::push_entry(&mut packed, 0, key, value);
    }
    (vec![table.to_owned()], Blob(packed))
}

/// Every core's wall clock, in ms, unless a test skews it.
const WALL_MS: u64 = 1_000_000;

fn rid(n: u32) -> ReplicaId {
    ReplicaId::from(n)
}

fn core(name: &str, replica: u32, config: RegionConfig, tables: &[&str]) -> Core {
    core_at(name, replica, config, tables, WALL_MS)
}

/// A core whose wall clock reads `wall_ms`, with GCounter `tables`.
fn core_at(name: &str, replica: u32, config: RegionConfig, tables: &[&str], wall_ms: u64) -> Core {
    IDS.with(|ids| ids.borrow_mut().insert(name.to_owned(), replica));
    let hlc = Arc::new(Hlc::with_clock(rid(replica), ManualClock::new(wall_ms)));
    let mut core = Core::new(name.into(), rid(replica), config, hlc);
    for table in tables {
        declare::<GCounter>(&mut core, table);
    }
    core
}

fn declare<V>(core: &mut Core, table: &str)
where
    V: Crdt + Serialize + DeserializeOwned + Send + 'static,
{
    let merger: Merger<V> = Arc::new(|mine: &mut V, theirs: &V, _: &[u8], _| mine.merge(theirs));
    core.declare(TableSlot {
        name: table.into(),
        store: Box::new(CrdtStore::<V>::new(merger)),
        type_name: std::any::type_name::<V>(),
        key_type: (std::any::TypeId::of::<u64>(), "u64"),
        undecodable_keys: Default::default(),
        conflicts: None,
    });
}

fn k(key: u64) -> Key {
    bare(&key).into_boxed_slice()
}

/// The bare `wire` body of `value`, as keys and values travel in entries.
fn bare<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_bare_into(value, &mut out).unwrap();
    out
}

/// A local increment of the GCounter under `key`, as a table handle makes it.
fn write(core: &mut Core, table: &str, key: u64) -> SessionToken {
    let replica = core.replica;
    let slot = core.slot_of(table).unwrap();
    let store = core.store_mut::<CrdtStore<GCounter>>(slot).unwrap();
    let delta = store.entry(&k(key)).inc(replica, 1);
    core.record_write(slot, &k(key), &bare(&delta))
}

fn read(core: &Core, table: &str, key: u64) -> Option<GCounter> {
    core.named::<CrdtStore<GCounter>>(table)?
        .get(&k(key))
        .cloned()
}

/// How many writes of `replica` `core` holds, first-hand or by a peer's word.
fn held(core: &Core, replica: u32) -> u64 {
    core.applied
        .get(rid(replica))
        .max(core.believed.get(rid(replica)))
}

/// What `replica` counted under `key`, 0 when the key is absent.
fn count(core: &Core, table: &str, key: u64, replica: u32) -> u64 {
    read(core, table, key).map_or(0, |g| g.get(rid(replica)))
}

/// An encoded GCounter where `replica` counted `n`.
fn gc(replica: u32, n: u64) -> Vec<u8> {
    let mut g = GCounter::new();
    g.inc(rid(replica), n);
    bare(&g)
}

fn vv(entries: &[(u32, u64)]) -> VersionVector {
    entries.iter().map(|&(r, n)| (rid(r), n)).collect()
}

/// `origin`'s writes `first..` (one per entry) to `table`, sent at `sent_at`.
fn batch_at(
    sent_at: Timestamp,
    origin: u32,
    first: u64,
    deps: &[(u32, u64)],
    table: &str,
    entries: &[(u64, Vec<u8>)],
) -> Message {
    let (tables, entries) = pack_entries(
        table,
        entries
            .iter()
            .map(|(key, v)| (k(*key), v.clone()))
            .collect(),
    );
    Message::Batch {
        origin: rid(origin),
        first,
        last: first + (entries_len(&entries) - 1),
        deps: vv(deps),
        sent_at,
        tables,
        entries,
    }
}

fn entries_len(entries: &Blob) -> u64 {
    message::count_entries(&entries.0, 1).unwrap()
}

fn batch(
    origin: u32,
    first: u64,
    deps: &[(u32, u64)],
    table: &str,
    entries: &[(u64, Vec<u8>)],
) -> Message {
    batch_at(
        Timestamp::new(WALL_MS, 0),
        origin,
        first,
        deps,
        table,
        entries,
    )
}

thread_local! {
    /// The replica id of each core this test built, by name.
    static IDS: std::cell::RefCell<HashMap<String, u32>> = std::cell::RefCell::default();
}

/// The replica id a peer named `name` has in these tests: the core's of
/// that name, or `a` 1, `b` 2, `c` 3 ... for peers no core stands for.
fn id_of(name: &str) -> Option<u32> {
    IDS.with(|ids| ids.borrow().get(name).copied()).or_else(|| {
        let [c] = name.as_bytes() else { return None };
        (b'a'..=b'e').contains(c).then(|| u32::from(c - b'a' + 1))
    })
}

/// Binds `peer` to its replica id (see [`id_of`]), as its hello would.
fn bind(core: &mut Core, peer: &str) {
    let id = rid(id_of(peer).expect("a known name"));
    core.peer(peer, now()).replica = Some(id);
}

/// `peer_up` without the hello (see [`to`]). The peer is bound to its
/// replica id (see [`id_of`]) as its hello would bind it, so what it
/// claims of itself is first-hand.
fn up(core: &mut Core, peer: &str, at: Instant) -> Outgoing {
    let out = core
        .peer_up(peer, at)
        .into_iter()
        .filter(|(_, m)| !matches!(m, Message::Hello { .. } | Message::Protocol { .. }))
        .collect();
    if let Some(id) = id_of(peer).map(rid)
        && id != core.replica
        && !core
            .peers
            .values()
            .any(|p| p.replica == Some(id) || p.former.contains(&id))
    {
        core.peers.get_mut(peer).expect("up").replica = Some(id);
    }
    out
}

/// The messages of `out` addressed to `peer`. Hellos are left out: these
/// cores never greet, so they keep the rules for peers that do not (the
/// handshake has its own tests).
fn to(out: &Outgoing, peer: &str) -> Vec<Message> {
    out.iter()
        .filter(|(p, m)| {
            p == peer && !matches!(m, Message::Hello { .. } | Message::Protocol { .. })
        })
        .map(|(_, m)| m.clone())
        .collect()
}

/// Feeds `messages` from `from` to `core`; returns everything it answered.
fn feed(core: &mut Core, from: &str, messages: Vec<Message>, at: Instant) -> Outgoing {
    let mut out = Vec::new();
    for message in messages {
        out.extend(core.on_message(from, message, at));
        out.extend(merge_queued_transfers(core, at));
    }
    out
}

/// Merges every transfer queued to be merged in slices and applies every
/// ready buffered batch left to later holds, as the engine does between
/// frames; returns what they answered.
fn merge_queued_transfers(core: &mut Core, at: Instant) -> Outgoing {
    let mut out = Vec::new();
    while core.transfer_work_pending() || core.drain_work_pending() {
        out.extend(core.drain_buffer_slice());
        out.extend(core.merge_transfer_slice(at));
    }
    out
}

fn now() -> Instant {
    Instant::now()
}

/// Guards against a push that claimed an old vector with newer states (a reply shown without its post).
#[test]
fn push_carries_every_bucket_changed_since_the_digests() {
    let cfg = RegionConfig::default();
    let mut a = core("a", 1, cfg.clone(), &["posts", "replies"]);
    let mut b = core("b", 2, cfg, &["posts", "replies"]);
    write(&mut b, "replies", 7); // that bucket will differ
    up(&mut b, "a", now());
    let request = up(&mut a, "b", now()); // a < b: a starts; its digests are taken now
    assert!(matches!(request[0].1, Message::SyncRequest { .. }));
    // Meanwhile a applies D's post, then C's reply to it: the post's bucket
    // was equal when a sent its digests.
    feed(
        &mut a,
        "d",
        vec![batch(4, 1, &[], "posts", &[(5, gc(4, 1))])],
        now(),
    );
    feed(
        &mut a,
        "c",
        vec![batch(3, 1, &[(4, 1)], "replies", &[(7, gc(3, 1))])],
        now(),
    );
    assert_eq!(count(&a, "replies", 7, 3), 1);

    let reply = b.on_message("a", request[0].1.clone(), now());
    let push = feed(&mut a, "b", to(&reply, "a"), now());
    feed(&mut b, "a", to(&push, "b"), now());

    assert_eq!(count(&b, "replies", 7, 3), 1, "C's reply reached b");
    assert_eq!(count(&b, "posts", 5, 4), 1, "with the post it replies to");
    assert!(held(&b, 3) >= 1 && held(&b, 4) >= 1);
}

/// Guards against the last chunk raising `applied` and acking the origin while a middle chunk is missing.
#[test]
fn a_lost_middle_chunk_raises_nothing() {
    let small = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let mut b = core("b", 2, small, &["hits"]);
    up(&mut b, "a", now());
    let tokens: Vec<_> = (1..=3).map(|key| write(&mut b, "hits", key)).collect();
    let request = up(&mut a, "b", now());
    let reply = to(&b.on_message("a", request[0].1.clone(), now()), "a");
    assert_eq!(reply.len(), 3, "three chunks");

    let out = feed(&mut a, "b", vec![reply[0].clone(), reply[2].clone()], now());

    assert!(out.is_empty(), "no ack, no push: {out:?}");
    assert!((1..=3).all(|key| read(&a, "hits", key).is_none()));
    assert_eq!(a.applied.get(rid(2)), 0);
    assert!(tokens.iter().all(|t| !t.covered_by(&a.applied)));
    assert_eq!(a.counters.syncs_completed, 0);
    assert_eq!(b.outbox.len(), 3, "the origin keeps its writes");
}

/// Guards against merging chunks as they come: a transfer is merged only once all its chunks are here.
#[test]
fn reordered_chunks_are_merged_once_all_have_arrived() {
    let small = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let mut b = core("b", 2, small, &["hits"]);
    up(&mut b, "a", now());
    let tokens: Vec<_> = (1..=3).map(|key| write(&mut b, "hits", key)).collect();
    let request = up(&mut a, "b", now());
    let reply = to(&b.on_message("a", request[0].1.clone(), now()), "a");
    assert_eq!(reply.len(), 3);

    let early = feed(&mut a, "b", vec![reply[2].clone(), reply[0].clone()], now());
    assert!(early.is_empty());
    assert_eq!(a.applied.get(rid(2)), 0);
    let out = feed(&mut a, "b", vec![reply[1].clone()], now());

    assert!((1..=3).all(|key| count(&a, "hits", key, 2) == 1));
    assert!(tokens.iter().all(|t| t.covered_by(&a.applied)));
    feed(&mut b, "a", to(&out, "b"), now());
    assert_eq!(b.peers["a"].acked, 3, "acked once the data is there");
}

/// Guards against a lost chunk pinning a transfer forever, or a late chunk completing an abandoned one.
#[test]
fn an_incomplete_transfer_expires_and_its_late_chunk_is_ignored() {
    let small = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let mut b = core("b", 2, small, &["hits"]);
    let t0 = now();
    up(&mut b, "a", t0);
    for key in 1..=3 {
        write(&mut b, "hits", key);
    }
    let request = up(&mut a, "b", t0);
    let reply = to(&b.on_message("a", request[0].1.clone(), t0), "a");
    feed(&mut a, "b", vec![reply[0].clone(), reply[2].clone()], t0);
    assert_eq!(a.sync_inbox.len(), 1);

    let later = t0 + a.config.sync_timeout;
    a.expire_syncs(later);
    assert!(a.syncs.is_empty() && a.sync_inbox.is_empty());
    let out = feed(&mut a, "b", vec![reply[1].clone()], later);
    assert!(out.is_empty());
    assert!((1..=3).all(|key| read(&a, "hits", key).is_none()));
    assert_eq!(a.applied.get(rid(2)), 0);

    // The next exchange repairs it.
    let request = a.start_sync("b", later);
    let reply = b.on_message("a", request[0].1.clone(), later);
    feed(&mut a, "b", to(&reply, "a"), later);
    assert!((1..=3).all(|key| count(&a, "hits", key, 2) == 1));
    assert_eq!(a.applied.get(rid(2)), 3);
}

/// Guards against an over-limit transfer being half merged, then fully claimed by its last chunk.
#[test]
fn an_oversized_transfer_is_aborted_whole() {
    let small = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let tight = RegionConfig {
        sync_transfer_bytes_max: 12,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, tight, &["hits"]);
    let mut b = core("b", 2, small, &["hits"]);
    up(&mut b, "a", now());
    for key in 1..=6 {
        write(&mut b, "hits", key);
    }
    let request = up(&mut a, "b", now());
    let reply = to(&b.on_message("a", request[0].1.clone(), now()), "a");
    assert_eq!(reply.len(), 6);

    let out = feed(&mut a, "b", reply, now());

    assert!(out.is_empty(), "no ack, no push: {out:?}");
    assert_eq!(a.counters.rejected_frames, 1);
    let over = crate::region::RejectReason::OverLimit.index();
    assert_eq!(
        a.counters.rejected_by_reason[over], 1,
        "counted as over_limit"
    );
    assert!((1..=6).all(|key| read(&a, "hits", key).is_none()));
    assert_eq!(a.applied.get(rid(2)), 0);
    assert!(a.sync_inbox.is_empty() && a.syncs.is_empty());
    assert!(a.peers["b"].needs_sync, "the peer stays due for repair");
}

/// Guards against a peer's push chunks and reply chunks sharing one inbox slot (a push chunk wiped the reply).
#[test]
fn concurrent_exchanges_do_not_share_an_inbox() {
    let small = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, small.clone(), &["hits"]);
    let mut b = core("b", 2, small, &["hits"]);
    for key in 1..=3 {
        write(&mut a, "hits", key);
    }
    for key in 11..=13 {
        write(&mut b, "hits", key);
    }
    up(&mut a, "b", now());
    up(&mut b, "a", now());
    // Both sides start an exchange (both need repair, say).
    let request_a = a.start_sync("b", now());
    let request_b = b.start_sync("a", now());
    let reply_a = to(&a.on_message("b", request_b[0].1.clone(), now()), "b");
    let reply_b = to(&b.on_message("a", request_a[0].1.clone(), now()), "a");
    // b takes a's whole reply and pushes.
    let push_b: Vec<Message> = to(&feed(&mut b, "a", reply_a, now()), "a")
        .into_iter()
        .filter(|m| matches!(m, Message::SyncStates { .. }))
        .collect();
    assert!(reply_b.len() >= 2 && !push_b.is_empty());

    // At a: b's reply chunks with a push chunk of b's in between.
    let mut replies = reply_b.into_iter();
    let mut pushes = push_b.into_iter();
    let mut out = feed(&mut a, "b", vec![replies.next().unwrap()], now());
    out.extend(feed(&mut a, "b", vec![pushes.next().unwrap()], now()));
    out.extend(feed(&mut a, "b", replies.chain(pushes).collect(), now()));

    assert_eq!(a.counters.rejected_frames, 0);
    assert!((11..=13).all(|key| count(&a, "hits", key, 2) == 1));
    assert_eq!(a.applied.get(rid(2)), 3);
    feed(&mut b, "a", to(&out, "b"), now());
    assert!((1..=3).all(|key| count(&b, "hits", key, 1) == 1));
    assert_eq!(b.applied.get(rid(1)), 3);
}

/// Guards against a responder's vector naming undeclared-table writes it did not ship (acked unseen).
#[test]
fn undeclared_table_values_are_shipped_in_transfers() {
    let cfg = RegionConfig::default();
    let mut a = core("a", 1, cfg.clone(), &["t"]);
    let mut b = core("b", 2, cfg.clone(), &[]); // has not declared "t" yet
    let mut c = core("c", 3, cfg, &["t"]);
    up(&mut c, "a", now());
    up(&mut c, "b", now());
    let token = write(&mut c, "t", 1);
    let batches = c.take_batches(now());
    // The copy to a is lost; b holds its copy undeclared and acks it.
    let acks = feed(&mut b, "c", to(&batches, "b"), now());
    feed(&mut c, "b", to(&acks, "c"), now());
    assert_eq!(b.applied.get(rid(3)), 1);
    up(&mut b, "a", now());
    up(&mut a, "c", now()); // a knows c but never got its batch
    let request = up(&mut a, "b", now());

    let reply = b.on_message("a", to(&request, "b")[0].clone(), now());
    let out = feed(&mut a, "b", to(&reply, "a"), now());

    assert_eq!(count(&a, "t", 1, 3), 1, "c's write reached a through b");
    assert!(token.covered_by(&a.believed), "b says it shipped it");
    // Held by b's word only: a does not ack it for c (a forged transfer
    // would make c truncate what a lacks), c sends it again, and a acks
    // it once c's own batch is applied.
    feed(&mut c, "a", to(&out, "c"), now());
    assert_eq!(c.peers["a"].acked, 0);
    let later = now() + c.config.ack_timeout;
    c.check_retransmit(later);
    let acks = feed(&mut a, "c", to(&c.take_batches(later), "a"), later);
    assert!(token.covered_by(&a.applied));
    feed(&mut c, "a", to(&acks, "c"), later);
    assert_eq!(c.peers["a"].acked, 1);
}

/// Guards against a region storing one more full copy of an undeclared table on every anti-entropy round.
#[test]
fn undeclared_values_do_not_pile_up_across_rounds() {
    let cfg = RegionConfig::default();
    let mut x = core("x", 1, cfg.clone(), &[]);
    let mut y = core("y", 2, cfg, &["t"]);
    for key in 0..100 {
        write(&mut y, "t", key);
    }
    up(&mut x, "y", now());
    up(&mut y, "x", now());
    let mut sizes = Vec::new();
    for _ in 0..5 {
        let request = x.start_sync("y", now());
        let reply = y.on_message("x", request[0].1.clone(), now());
        feed(&mut x, "y", to(&reply, "x"), now());
        sizes.push(x.undeclared["t"].bytes);
    }
    assert!(sizes[0] > 0);
    assert!(
        sizes.iter().all(|&s| s == sizes[0]),
        "held bytes per round: {sizes:?}"
    );
    assert_eq!(x.undeclared["t"].values.len(), 100);
    assert!(x.undeclared["t"].values.values().all(|v| v.len() == 1));
}

/// Guards against an empty batch claiming writes up to u64::MAX, making the real ones stale.
#[test]
fn a_batch_whose_range_does_not_match_its_entries_is_rejected() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    let forged = Message::Batch {
        origin: rid(3),
        first: 1,
        last: u64::MAX,
        deps: VersionVector::new(),
        sent_at: Timestamp::new(WALL_MS, 0),
        tables: vec![],
        entries: Blob::default(),
    };
    let out = a.on_message("b", forged, now());
    assert!(out.is_empty(), "not acked: {out:?}");
    assert_eq!(a.counters.rejected_frames, 1);
    let malformed = crate::region::RejectReason::Malformed.index();
    assert_eq!(
        a.counters.rejected_by_reason[malformed], 1,
        "counted as malformed"
    );
    assert_eq!(a.applied.get(rid(3)), 0);

    // c's genuine batch is applied and acked for what it holds.
    let out = a.on_message("c", batch(3, 1, &[], "t", &[(1, gc(3, 1))]), now());
    assert_eq!(count(&a, "t", 1, 3), 1);
    assert_eq!(
        to(&out, "c"),
        vec![Message::Ack {
            origin: rid(3),
            applied: 1
        }]
    );
}

/// Guards against a peer's batch for another origin being believed.
#[test]
fn a_forged_origin_is_rejected() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    feed(
        &mut a,
        "b",
        vec![batch(2, 1, &[], "t", &[(1, gc(2, 1))])],
        now(),
    );
    assert_eq!(a.applied.get(rid(2)), 1);

    // b, known as replica 2, sends writes of replica 3.
    let out = a.on_message("b", batch(3, 1, &[], "t", &[(1, gc(3, 9))]), now());
    assert!(out.is_empty(), "not acked: {out:?}");
    assert_eq!(a.counters.rejected_frames, 1);
    assert_eq!(a.applied.get(rid(3)), 0);
    assert_eq!(count(&a, "t", 1, 3), 0);

    // c's genuine write 1 is not stale.
    feed(
        &mut a,
        "c",
        vec![batch(3, 1, &[], "t", &[(1, gc(3, 1))])],
        now(),
    );
    assert_eq!(count(&a, "t", 1, 3), 1);
    assert_eq!(a.applied.get(rid(3)), 1);

    // Nor may c, now known as 3, speak for b.
    let out = a.on_message("c", batch(2, 2, &[], "t", &[(1, gc(2, 9))]), now());
    assert!(out.is_empty());
    assert_eq!(a.counters.rejected_frames, 2);
    assert_eq!(a.applied.get(rid(2)), 1);
    assert_eq!(count(&a, "t", 1, 2), 1);
}

/// Guards against a push nobody asked for being merged and its made-up vector believed.
#[test]
fn an_unsolicited_push_is_ignored() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    let push = |session, applied| {
        let (tables, entries) = pack_entries("t", vec![(k(1), gc(4, 7))]);
        Message::SyncStates {
            session,
            push: true,
            chunk: 0,
            chunks: 1,
            sent_at: Timestamp::new(WALL_MS, 0),
            buckets: vec![],
            tables,
            entries,
            applied: Some(applied),
        }
    };
    let out = a.on_message("evil", push(99, vv(&[(4, 1_000_000), (1, 500)])), now());
    assert!(out.is_empty());
    assert!(a.applied.is_empty(), "{:?}", a.applied);
    assert!(read(&a, "t", 1).is_none());

    // A push from a peer whose exchange we answered, but for another session.
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    write(&mut b, "t", 2);
    bind(&mut a, "b");
    let request = b.start_sync("a", now());
    let reply = a.on_message("b", request[0].1.clone(), now());
    let out = a.on_message("b", push(7, vv(&[(4, 1)])), now());
    assert!(out.is_empty());
    assert_eq!(a.applied.get(rid(4)), 0);
    assert!(read(&a, "t", 1).is_none());

    // The push of the exchange we answered is merged.
    let push_b = feed(&mut b, "a", to(&reply, "b"), now());
    feed(&mut a, "b", to(&push_b, "a"), now());
    assert_eq!(count(&a, "t", 2, 2), 1);
    assert_eq!(a.applied.get(rid(2)), 1);
}

/// Guards against believing a vector with writes of ours past our counter (our next dots dropped as stale).
#[test]
fn a_vector_claiming_our_own_writes_beyond_our_counter_is_rejected() {
    let cfg = RegionConfig::default();
    let mut a = core("a", 1, cfg.clone(), &["hits"]);
    let mut b = core("b", 2, cfg.clone(), &["hits"]);
    up(&mut a, "b", now());
    up(&mut b, "a", now());
    for _ in 0..5 {
        write(&mut a, "hits", 1);
    }
    let acks = feed(&mut b, "a", to(&a.take_batches(now()), "b"), now());
    feed(&mut a, "b", to(&acks, "a"), now());
    assert_eq!(b.applied.get(rid(1)), 5);

    // a restarts, in memory, with the same (pinned) id: its counter is 0.
    let mut a = core("a", 1, cfg, &["hits"]);
    up(&mut b, "a", now());
    let request = up(&mut a, "b", now());
    let reply = b.on_message("a", request[0].1.clone(), now());
    let out = feed(&mut a, "b", to(&reply, "a"), now());

    assert!(out.is_empty(), "{out:?}");
    assert_eq!(a.counters.rejected_frames, 1);
    assert_eq!(a.applied.get(rid(1)), 0, "our own entry stays our counter");
    assert_eq!(a.seq, 0);
    assert!(read(&a, "hits", 1).is_none());
    assert!(a.peers["b"].needs_sync);

    // The same claim in a push to an exchange a answered.
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    let request = c.start_sync("a", now());
    let reply = a.on_message("c", request[0].1.clone(), now());
    feed(&mut c, "a", to(&reply, "c"), now());
    let Message::SyncRequest { session, .. } = request[0].1 else {
        unreachable!()
    };
    let forged = Message::SyncStates {
        session,
        push: true,
        chunk: 0,
        chunks: 1,
        sent_at: Timestamp::new(WALL_MS, 0),
        buckets: vec![],
        tables: vec![],
        entries: Blob::default(),
        applied: Some(vv(&[(1, 3)])),
    };
    a.on_message("c", forged, now());
    assert_eq!(a.counters.rejected_frames, 2);
    assert_eq!(a.applied.get(rid(1)), 0);
}

/// Guards against `bound_buffer` computing `first - applied` for an overlapping batch (u64 underflow panic).
#[test]
fn buffer_bound_does_not_underflow() {
    let cfg = RegionConfig {
        causal_buffer_len_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, cfg, &["t"]);
    // X: a retransmission of 1..=3 whose last write depends on C:1 (not here).
    let x = [(1, gc(2, 1)), (2, gc(2, 1)), (3, gc(2, 1))];
    feed(&mut a, "b", vec![batch(2, 1, &[(3, 1)], "t", &x)], now());
    // Y: the original 1..=2, delayed, without dependencies.
    let y = [(1, gc(2, 1)), (2, gc(2, 1))];
    feed(&mut a, "b", vec![batch(2, 1, &[], "t", &y)], now());
    assert_eq!(a.applied.get(rid(2)), 2);
    // Z: 4..=4, also waiting for C:1: the buffer goes over its bound.
    feed(
        &mut a,
        "b",
        vec![batch(2, 4, &[(3, 1)], "t", &[(4, gc(2, 1))])],
        now(),
    );

    assert_eq!(a.buffer.len(), 1, "the batch furthest ahead is dropped");
    assert_eq!(a.counters.batches_dropped, 1);
    assert_eq!(a.applied.get(rid(2)), 2);
    // C:1 arrives: X applies.
    feed(
        &mut a,
        "c",
        vec![batch(3, 1, &[], "t", &[(9, gc(3, 1))])],
        now(),
    );
    assert_eq!(a.applied.get(rid(2)), 3);
    assert!(a.buffer.is_empty());
}

/// Guards against anti-entropy not moving the clock (a later write stamped below what it caught up on).
#[test]
fn a_transfer_moves_the_clock_past_its_sender() {
    let cfg = RegionConfig::default();
    let mut a = core("a", 1, cfg.clone(), &["hits"]);
    let mut b = core_at("b", 2, cfg, &["hits"], WALL_MS + 300); // within the bound
    up(&mut b, "a", now());
    write(&mut b, "hits", 1);
    let request = up(&mut a, "b", now());
    let reply = to(&b.on_message("a", request[0].1.clone(), now()), "a");
    let Message::SyncStates { sent_at, .. } = reply[0] else {
        unreachable!()
    };
    assert!(sent_at >= b.hlc.last() && sent_at.physical_ms() == WALL_MS + 300);

    feed(&mut a, "b", reply, now());

    assert_eq!(count(&a, "hits", 1, 2), 1);
    assert!(a.hlc.now() > sent_at, "a's next stamp is above b's clock");
}

/// Guards against refusing a batch from a clock past the offset bound: never acked, it was resent forever.
#[test]
fn a_batch_from_a_clock_past_the_bound_is_applied_and_acked() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    let far = Timestamp::new(WALL_MS + 10_000, 0);
    let out = a.on_message("b", batch_at(far, 2, 1, &[], "t", &[(1, gc(2, 1))]), now());

    assert_eq!(a.counters.rejected_frames, 0);
    assert_eq!(count(&a, "t", 1, 2), 1);
    assert_eq!(
        out,
        vec![(
            "b".to_owned(),
            Message::Ack {
                origin: rid(2),
                applied: 1
            }
        )]
    );
    let bound = WALL_MS + a.hlc.max_offset().as_millis() as u64;
    // At most one tick past the bound (the carry of its last logical count).
    assert!(
        a.hlc.last().physical_ms() <= bound + 1,
        "{:?}",
        a.hlc.last()
    );
    assert!(a.hlc.last().physical_ms() >= bound);
}

/// Guards against a retransmitted batch being buffered once per copy.
#[test]
fn a_duplicate_batch_is_buffered_once() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    let waiting = batch(2, 2, &[], "t", &[(1, gc(2, 2))]); // write 1 not here
    feed(&mut a, "b", vec![waiting.clone()], now());
    let bytes = a.buffer_bytes;
    feed(&mut a, "b", vec![waiting], now());
    assert_eq!(a.buffer.len(), 1);
    assert_eq!(a.buffer_bytes, bytes);
    feed(
        &mut a,
        "b",
        vec![batch(2, 1, &[], "t", &[(1, gc(2, 1))])],
        now(),
    );
    assert_eq!(a.applied.get(rid(2)), 2);
    assert!(a.buffer.is_empty() && a.buffer_bytes == 0);
}

/// Guards against a peer first seen after log truncation never getting (or being repaired for) those writes.
#[test]
fn a_peer_first_seen_after_the_log_was_truncated_is_marked_for_repair() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    up(&mut a, "b", now());
    for key in 1..=3 {
        write(&mut a, "t", key);
    }
    assert_eq!(to(&a.take_batches(now()), "b").len(), 1);
    let ack = Message::Ack {
        origin: rid(1),
        applied: 3,
    };
    a.on_message("b", ack, now());
    assert!((a.outbox.len() == 0));

    up(&mut a, "c", now());
    let out = a.take_batches(now());

    assert!(to(&out, "c").is_empty());
    assert!(a.peers["c"].needs_sync);
    assert_eq!(a.peers["c"].acked, 3);
    assert!(!a.flushed(), "c's repair is pending");
}

/// Guards against an unbounded number of batches in flight to a peer that does not acknowledge.
#[test]
fn batches_in_flight_are_bounded_by_the_window() {
    let cfg = RegionConfig {
        batch_len_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, cfg, &["t"]);
    up(&mut a, "b", now());
    for key in 0..40 {
        write(&mut a, "t", key);
    }
    let window = INFLIGHT_BATCHES_MAX as usize;
    assert_eq!(a.take_batches(now()).len(), window);
    assert!(a.take_batches(now()).is_empty());
    let ack = Message::Ack {
        origin: rid(1),
        applied: 5,
    };
    a.on_message("b", ack, now());
    assert_eq!(a.take_batches(now()).len(), 5);
}

/// Guards against shutdown counting a peer as flushed while the repair of its dropped outbox is pending.
#[test]
fn flushed_waits_for_pending_repairs() {
    let cfg = RegionConfig {
        outbox_len_max: 0,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, cfg, &["t"]);
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    let t0 = now();
    up(&mut b, "a", t0);
    up(&mut a, "b", t0); // its exchange goes unanswered
    write(&mut a, "t", 1); // over the outbox bound: dropped, b needs repair
    assert!((a.outbox.len() == 0) && a.peers["b"].needs_sync);
    assert_eq!(a.peers["b"].acked, a.seq, "every write counts as acked");
    assert!(!a.flushed(), "b's repair is pending");
    let later = t0 + a.config.sync_timeout;
    a.expire_syncs(later);
    assert!(!a.flushed(), "and still pending once the exchange expired");

    let request = a.due_syncs(later);
    let reply = b.on_message("a", to(&request, "b")[0].clone(), later);
    let push = feed(&mut a, "b", to(&reply, "a"), later);
    assert!(!a.flushed(), "the push is not known to have arrived");
    let done = feed(&mut b, "a", to(&push, "b"), later);
    assert_eq!(count(&b, "t", 1, 1), 1);
    feed(&mut a, "b", to(&done, "a"), later);
    assert!(a.flushed());
}

/// Guards against a repair counted done when its push left: a lost push left the peer without the dropped writes until the next periodic exchange (30 s), with every later batch stuck in its causal buffer.
#[test]
fn a_lost_repair_push_is_retried_within_the_exchange_timeout() {
    let cfg = RegionConfig {
        outbox_len_max: 2,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, cfg, &["t"]);
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    let t0 = now();
    up(&mut b, "a", t0);
    up(&mut a, "b", t0); // its first exchange goes unanswered
    for key in 1..=3 {
        write(&mut a, "t", key); // the third overflows: dropped
    }
    assert!(a.peers["b"].needs_sync);
    let t1 = t0 + a.config.sync_timeout;
    a.expire_syncs(t1);
    let request = a.due_syncs(t1);
    let reply = b.on_message("a", to(&request, "b")[0].clone(), t1);
    let _lost_push = feed(&mut a, "b", to(&reply, "a"), t1);
    // Later writes wait for the repair rather than pile up in b's buffer.
    write(&mut a, "t", 4);
    assert!(to(&a.take_batches(t1), "b").is_empty());
    assert!(a.due_syncs(t1).is_empty(), "the push may still arrive");

    // Well before the periodic exchange, a tries again.
    let t2 = t1 + a.config.sync_timeout;
    assert!(t2 - t0 < a.config.anti_entropy_interval);
    a.expire_syncs(t2);
    let request = a.due_syncs(t2);
    assert_eq!(to(&request, "b").len(), 1, "retried");
    let reply = b.on_message("a", to(&request, "b")[0].clone(), t2);
    let push = feed(&mut a, "b", to(&reply, "a"), t2);
    let done = feed(&mut b, "a", to(&push, "b"), t2);
    feed(&mut a, "b", to(&done, "a"), t2);
    for key in 1..=4 {
        assert_eq!(count(&b, "t", key, 1), 1, "key {key}");
    }
    assert!(!a.peers["b"].needs_sync);
    write(&mut a, "t", 5);
    let out = feed(&mut b, "a", to(&a.take_batches(t2), "b"), t2);
    assert_eq!(count(&b, "t", 5, 1), 1, "batches flow again");
    feed(&mut a, "b", to(&out, "a"), t2);
    assert!(a.flushed());
}

/// Guards against equal LWW-Maps encoding differently, so their buckets were reshipped every round.
#[test]
fn equal_lww_maps_built_in_different_orders_are_not_reshipped() {
    type Map = LwwMap<u64, u64>;
    let stamp = |i: u64| Stamp::new(Timestamp::new(1_000 + i, 0), rid(1));
    for n in [2u64, 9, 17, 33, 64, 100, 199] {
        let cfg = RegionConfig::default();
        let mut a = core("a", 1, cfg.clone(), &[]);
        let mut b = core("b", 2, cfg, &[]);
        declare::<Map>(&mut a, "m");
        declare::<Map>(&mut b, "m");
        let store_a = a.named_mut::<CrdtStore<Map>>("m").unwrap();
        for i in 0..n {
            store_a.entry(&k(0)).insert(stamp(i), i, i);
        }
        let store_b = b.named_mut::<CrdtStore<Map>>("m").unwrap();
        for i in (0..n).rev() {
            let delta = Map::new().insert(stamp(i), i, i);
            let delta: Map = wire::decode(&wire::encode(&delta).unwrap()).unwrap();
            store_b.entry(&k(0)).merge(&delta);
        }
        assert_eq!(
            a.named::<CrdtStore<Map>>("m").unwrap().get(&k(0)),
            b.named::<CrdtStore<Map>>("m").unwrap().get(&k(0))
        );

        let request = up(&mut a, "b", now());
        let reply = b.on_message("a", request[0].1.clone(), now());

        assert_eq!(reply.len(), 1);
        let Message::SyncStates {
            buckets, tables, ..
        } = &reply[0].1
        else {
            unreachable!()
        };
        assert!(
            buckets.is_empty() && tables.is_empty(),
            "{n} entries reshipped"
        );
    }
}

/// Guards against re-shipped undeclared values counting twice against the held-bytes bound (exchanges refused for good).
#[test]
fn values_already_held_undeclared_do_not_count_twice_against_the_bound() {
    use crate::crdt::LwwRegister;
    type Reg = LwwRegister<String>;
    let cfg = RegionConfig::default();
    let mut x = core("x", 1, cfg.clone(), &[]); // has not declared "big"
    let mut y = core("y", 2, cfg, &[]);
    declare::<Reg>(&mut y, "big");
    // 34 values of 1 MiB: over half of the 64 MiB bound, well under it.
    let stamp = Stamp::new(Timestamp::new(WALL_MS, 0), rid(2));
    let store = y.named_mut::<CrdtStore<Reg>>("big").unwrap();
    for key in 0..34 {
        store.entry(&k(key)).set(stamp, "x".repeat(1 << 20));
    }
    up(&mut x, "y", now());
    up(&mut y, "x", now());
    for round in 1..=2 {
        let request = x.start_sync("y", now());
        let reply = y.on_message("x", request[0].1.clone(), now());
        feed(&mut x, "y", to(&reply, "x"), now());
        assert_eq!(x.counters.rejected_frames, 0, "round {round}");
        assert_eq!(x.counters.syncs_completed, round);
        assert!(!x.peers["y"].needs_sync);
    }
    assert_eq!(x.undeclared["big"].values.len(), 34);
}

/// Guards against values of an undeclared table over its bound refusing their batch (replication from the origin stalled for good).
#[test]
fn undeclared_values_past_the_bound_are_dropped_and_declaring_the_table_starts_an_exchange() {
    let cfg = RegionConfig {
        undeclared_bytes_max: 64,
        ..RegionConfig::default()
    };
    let mut x = core("x", 1, cfg.clone(), &[]); // has not declared "t"
    let mut y = core("y", 2, cfg, &["t"]);
    // The exchange at connect, over before the writes.
    let request = up(&mut x, "y", now());
    up(&mut y, "x", now());
    let reply = y.on_message("x", to(&request, "y")[0].clone(), now());
    let push = feed(&mut x, "y", to(&reply, "x"), now());
    feed(&mut y, "x", to(&push, "y"), now());
    assert!(x.syncs.is_empty());
    for key in 0..40 {
        write(&mut y, "t", key);
    }
    let acks = feed(&mut x, "y", to(&y.take_batches(now()), "x"), now());

    assert_eq!(x.counters.rejected_frames, 0);
    assert_eq!(x.applied.get(rid(2)), 40, "the batch was applied");
    assert!(!to(&acks, "y").is_empty(), "and acknowledged");
    let held = &x.undeclared["t"];
    assert!(held.bytes <= 64 && held.values.len() < 40);
    assert_eq!(held.dropped, 40 - held.values.len() as u64);
    assert_eq!(x.counters.undeclared_values_dropped, held.dropped);
    assert!(x.due_syncs(now()).is_empty(), "no round due yet");

    declare::<GCounter>(&mut x, "t");
    assert!(x.wants_exchange.contains("y"));
    let request = x.due_syncs(now());
    assert_eq!(request.len(), 1, "an exchange at once: {request:?}");
    assert!(x.wants_exchange.is_empty());
    let reply = y.on_message("x", request[0].1.clone(), now());
    feed(&mut x, "y", to(&reply, "x"), now());
    assert!((0..40).all(|key| count(&x, "t", key, 2) == 1));
    assert_eq!(x.counters.rejected_frames, 0);
}

/// Guards against keeping the chunks of superseded pushes, so held transfer bytes are bounded per transfer only.
#[test]
fn chunks_of_a_superseded_push_are_not_held() {
    let tight = RegionConfig {
        sync_transfer_bytes_max: 64,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, tight.clone(), &["t"]);
    let b = core("b", 2, RegionConfig::default(), &["t"]);
    let mut held = Vec::new();
    for session in 1..=5u64 {
        // b asks, a answers: a now accepts b's push for this session only.
        let digests = b
            .tables
            .iter()
            .map(|t| (t.name.to_string(), vec![0u8; DIGEST_BUCKETS * 8]));
        let request = Message::SyncRequest {
            session,
            applied: VersionVector::new(),
            digests: digests.collect(),
        };
        a.on_message("b", request, now());
        // The first of two chunks of its push, 40 bytes: under the bound.
        let (tables, entries) = pack_entries("t", vec![(k(session), vec![0; 38])]);
        let chunk = Message::SyncStates {
            session,
            push: true,
            chunk: 0,
            chunks: 2,
            sent_at: Timestamp::new(WALL_MS, 0),
            buckets: vec![],
            tables,
            entries,
            applied: None,
        };
        a.on_message("b", chunk, now());
        held.push(a.sync_inbox.len());
    }
    assert_eq!(a.counters.rejected_frames, 0);
    assert!(held.iter().all(|&n| n <= 1), "transfers held: {held:?}");
}

/// Guards against one value of the wrong type stalling replication from its origin for good: the batch was refused, and every resend failed alike.
#[test]
fn a_value_of_the_wrong_type_is_dropped_and_the_rest_applied() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    // b declared "t" with another type: its value is not a GCounter.
    let wrong = bare(&"not a counter".to_string());
    let first = batch(2, 1, &[], "t", &[(1, gc(2, 1)), (2, wrong), (3, gc(2, 3))]);
    let out = feed(&mut a, "b", vec![first], now());
    assert_eq!(
        to(&out, "b"),
        vec![Message::Ack {
            origin: rid(2),
            applied: 3
        }]
    );
    assert_eq!(count(&a, "t", 1, 2), 1);
    assert!(read(&a, "t", 2).is_none(), "nothing made of the bad value");
    assert_eq!(count(&a, "t", 3, 2), 3, "the value after it is not shifted");
    assert_eq!(a.counters.undecodable_values, 1);
    assert_eq!(a.counters.rejected_frames, 0);
    // Replication from b goes on.
    feed(
        &mut a,
        "b",
        vec![batch(2, 4, &[], "t", &[(4, gc(2, 4))])],
        now(),
    );
    assert_eq!(count(&a, "t", 4, 2), 4);
    // A frame whose entries are not even framed is still refused whole.
    let Message::Batch {
        origin,
        deps,
        sent_at,
        tables,
        mut entries,
        ..
    } = batch(2, 5, &[], "t", &[(5, gc(2, 5)), (6, gc(2, 6))])
    else {
        unreachable!()
    };
    entries.0.pop();
    let torn = Message::Batch {
        origin,
        first: 5,
        last: 6,
        deps,
        sent_at,
        tables,
        entries,
    };
    assert!(feed(&mut a, "b", vec![torn], now()).is_empty());
    assert!(read(&a, "t", 5).is_none());
    assert_eq!(a.counters.rejected_frames, 1);
}

/// Guards against answering a duplicated sync request twice: chunks of an older snapshot merged with the last chunk of a newer one, whose vector claims writes those chunks lack (acked, then dropped at the origin).
#[test]
fn a_duplicated_sync_request_is_answered_once() {
    let cfg = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let mut a = core("a", 1, cfg.clone(), &["t"]);
    let mut b = core("b", 2, cfg, &["t"]);
    for key in 1..=4 {
        write(&mut b, "t", key);
    }
    bind(&mut a, "b");
    let request = to(&a.start_sync("b", now()), "b").remove(0);
    let first = to(&b.on_message("a", request.clone(), now()), "a");
    assert_eq!(first.len(), 4, "one chunk per key");
    let Message::SyncStates {
        tables, entries, ..
    } = &first[0]
    else {
        unreachable!()
    };
    let (_, key0, _) = Entries::new(&entries.0, tables.len())
        .next()
        .unwrap()
        .unwrap();
    let key0: u64 = wire::decode_bare(key0).unwrap();
    write(&mut b, "t", key0); // b's write 5, after the first answer
    let second = to(&b.on_message("a", request, now()), "a"); // the duplicate
    assert!(second.is_empty(), "answered twice: {second:?}");

    feed(&mut a, "b", first, now());
    assert_eq!(a.applied.get(rid(2)), 4);
    assert_eq!(count(&a, "t", key0, 2), 1);
}

/// Guards against a duplicated chunk frame counting its bytes twice against the transfer bound (a transfer aborted for nothing).
#[test]
fn a_duplicated_chunk_counts_once() {
    let small = RegionConfig {
        sync_chunk_bytes_max: 1,
        ..RegionConfig::default()
    };
    let mut b = core("b", 2, small, &["t"]);
    for key in 1..=2 {
        write(&mut b, "t", key);
    }
    // Room for the two chunks' bytes, not for three.
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    bind(&mut a, "b");
    let request = to(&a.start_sync("b", now()), "b").remove(0);
    let reply = to(&b.on_message("a", request, now()), "a");
    assert_eq!(reply.len(), 2);
    let chunk_bytes = |m: &Message| match m {
        Message::SyncStates {
            tables,
            entries,
            buckets,
            ..
        } => {
            entries.0.len()
                + tables.iter().map(String::len).sum::<usize>()
                + buckets
                    .iter()
                    .map(|(t, l)| t.len() + 4 * l.len())
                    .sum::<usize>()
        }
        _ => unreachable!(),
    };
    a.config.sync_transfer_bytes_max = chunk_bytes(&reply[0]) + chunk_bytes(&reply[1]);
    let twice = vec![reply[0].clone(), reply[0].clone(), reply[1].clone()];
    feed(&mut a, "b", twice, now());
    assert_eq!(a.counters.rejected_frames, 0);
    assert_eq!(a.applied.get(rid(2)), 2);
}

/// A randomized simulation of three cores on a faulty network.
#[path = "sim_tests.rs"]
mod sim;

/// Guards against an acknowledgement truncating our log past what the peer
/// was ever sent (its writes lost for it, and for whoever catches up from
/// it).
#[test]
fn an_acknowledgement_beyond_what_the_peer_was_sent_is_rejected() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    up(&mut a, "b", now());
    for key in 0..5 {
        write(&mut a, "hits", key);
    }
    // Nothing was sent to b yet: it cannot hold any of the five.
    let forged = Message::Ack {
        origin: rid(1),
        applied: 5,
    };
    a.on_message("b", forged.clone(), now());
    assert_eq!(a.counters.rejected_frames, 1);
    assert_eq!(a.peers["b"].acked, 0);
    assert_eq!(a.outbox.len(), 5, "the log keeps the writes b lacks");
    // Once sent, the same acknowledgement is true.
    assert!(!to(&a.take_batches(now()), "b").is_empty());
    a.on_message("b", forged, now());
    assert_eq!(a.counters.rejected_frames, 1);
    assert_eq!(a.peers["b"].acked, 5);
}

/// Guards against a hello widening the bound on acknowledgements: our
/// hello names our writes, the peer holds none of them, and an ack of all
/// of them would truncate our log of what it lacks (what a third region
/// passes on is only believed there, never acknowledged).
#[test]
fn an_acknowledgement_of_writes_only_announced_is_rejected() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    for key in 0..5 {
        write(&mut a, "hits", key);
    }
    let out = a.peer_up("b", now());
    assert!(
        out.iter()
            .any(|(_, m)| matches!(m, Message::Hello { seq: 5, .. })),
        "the hello names the five writes"
    );
    bind(&mut a, "b");
    let forged = Message::Ack {
        origin: rid(1),
        applied: 5,
    };
    a.on_message("b", forged, now());
    assert_eq!(a.counters.rejected_frames, 1);
    assert_eq!(a.peers["b"].acked, 0);
    assert_eq!(a.outbox.len(), 5, "the log keeps the writes b lacks");
}

/// Guards against buffering for good a batch that waits for writes of ours
/// that were never made.
#[test]
fn a_batch_depending_on_writes_of_ours_never_made_is_rejected() {
    let mut b = core("b", 2, RegionConfig::default(), &["hits"]);
    up(&mut b, "a", now());
    write(&mut b, "hits", 1);
    let forged = batch(1, 1, &[(2, 7)], "hits", &[(1, gc(1, 1))]);
    let out = b.on_message("a", forged, now());
    assert!(to(&out, "a").is_empty(), "not acknowledged: {out:?}");
    assert_eq!(b.counters.rejected_frames, 1);
    assert!(b.buffer.is_empty(), "not buffered");
    assert_eq!(b.applied.get(rid(1)), 0);
    // Depending on the write of ours that exists is fine.
    let honest = batch(1, 1, &[(2, 1)], "hits", &[(1, gc(1, 1))]);
    b.on_message("a", honest, now());
    assert_eq!(b.applied.get(rid(1)), 1);
}

/// Guards against believing a peer's applied vector about a third region
/// (one transfer claiming `u64::MAX` writes of `a` made every later batch
/// of `a` look stale, and spread to every region syncing with us): a claim
/// is believed up to what the region told us itself, and the rest starts
/// an exchange with it.
#[test]
fn a_claim_about_a_third_region_is_believed_only_up_to_what_it_said() {
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    up(&mut c, "a", now());
    up(&mut c, "b", now());
    // a told c of its first two writes itself.
    c.on_message(
        "a",
        batch(1, 1, &[], "hits", &[(1, gc(1, 1)), (1, gc(1, 2))]),
        now(),
    );
    assert_eq!(c.applied.get(rid(1)), 2);
    // b answers c's exchange, claiming every write of a, and five of its own.
    let out = answer(
        &mut c,
        "b",
        "hits",
        vec![(k(2), gc(2, 5))],
        &[(1, u64::MAX), (2, 5)],
    );
    assert_eq!(c.counters.rejected_frames, 0, "the data is merged");
    assert_eq!(c.applied.get(rid(2)), 5, "b speaks for itself");
    assert_eq!(c.applied.get(rid(1)), 2, "not for a");
    assert_eq!(c.counters.untrusted_claims, 1);
    assert!(
        to(&out, "a")
            .iter()
            .any(|m| matches!(m, Message::SyncRequest { .. })),
        "the claim is a hint: an exchange with a starts"
    );
    // a's next write is not stale.
    c.on_message("a", batch(1, 3, &[], "hits", &[(1, gc(1, 3))]), now());
    assert_eq!(c.applied.get(rid(1)), 3);
    assert_eq!(count(&c, "hits", 1, 1), 3);
}

// ----- known gaps of the trust rules (issue 9), from a review --------------

/// A hello of `replica` as its region sends it.
fn hello(replica: u32, seq: u64, applied: &[(u32, u64)]) -> Message {
    Message::Hello {
        replica: rid(replica),
        incarnation: 1,
        seq,
        applied: vv(applied),
        reply: true,
    }
}

/// `from`'s answer to `core`'s exchange: `states` of table `table`, claiming `applied`.
fn answer(
    core: &mut Core,
    from: &str,
    table: &str,
    states: Vec<(Key, Vec<u8>)>,
    applied: &[(u32, u64)],
) -> Outgoing {
    let request = core.start_sync(from, now());
    let Message::SyncRequest { session, .. } = request[0].1 else {
        unreachable!()
    };
    let (tables, entries) = pack_entries(table, states);
    core.on_message(
        from,
        Message::SyncStates {
            session,
            push: false,
            chunk: 0,
            chunks: 1,
            sent_at: Timestamp::new(WALL_MS, 0),
            buckets: vec![],
            tables,
            entries,
            applied: Some(vv(applied)),
        },
        now(),
    )
}

/// Review finding 1: a claim about a replica we have not met yet is
/// believed whole, so a forger's `{a: u64::MAX}` reaching `c` before `a`
/// does cuts `a` off from `c` exactly as before the fix (every batch of `a`
/// looks stale for good, and the lie spreads to regions that have not met
/// `a` either).
#[test]
fn review_a_claim_about_a_region_not_met_yet_cuts_it_off() {
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    up(&mut c, "f", now());
    c.on_message("f", hello(6, 0, &[]), now());
    answer(&mut c, "f", "hits", vec![], &[(1, u64::MAX), (6, 0)]);
    // a connects afterwards, honest: one write.
    up(&mut c, "a", now());
    c.on_message("a", hello(1, 1, &[]), now());
    c.on_message("a", batch(1, 1, &[], "hits", &[(1, gc(1, 1))]), now());
    assert_eq!(count(&c, "hits", 1, 1), 1, "a's batch is applied");
    assert_eq!(c.applied.get(rid(1)), 1, "applied[a] is what a made");
    assert_eq!(c.believed.get(rid(1)), 1, "a's hello took the lie back");
    assert_eq!(c.held().get(rid(1)), 1);
}

/// Review finding 2: `restore` sets `issued` from the applied vector, which
/// held claims believed about replicas not met yet (finding 1) or former
/// ids: after a restart, a hearsay count became "what it told us itself",
/// and the region's honest hello was refused as `WritesRegressed` for good.
/// (Now hearsay never enters the applied vector, so none is committed.)
#[test]
fn review_hearsay_restored_as_issued_refuses_an_honest_region() {
    use crate::storage::{MemoryStorage, Storage};
    let mut store = MemoryStorage::default();
    let mut before = core("c", 3, RegionConfig::default(), &["hits"]);
    before.restore(store.load().unwrap(), now()).unwrap();
    // Before the restart, f claimed 5 writes of a (never met); c commits.
    up(&mut before, "f", now());
    before.on_message("f", hello(6, 0, &[]), now());
    answer(&mut before, "f", "hits", vec![], &[(1, 5), (6, 0)]);
    let commit = before.prepare_commit().expect("something changed");
    store.commit(&commit).unwrap();
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    c.restore(store.load().unwrap(), now()).unwrap();
    up(&mut c, "a", now());
    c.on_message("a", hello(1, 2, &[]), now());
    assert_eq!(c.peers["a"].refused, None, "a never told c of 5 writes");
}

/// Review finding 3: a peer's claim about *itself* in a transfer is believed
/// uncapped; our applied vector then carries it into the deps of every batch
/// of ours, and a third region that caps claims about that peer (it met it)
/// buffered our batches for good: one lying peer stopped batch replication
/// between two honest regions. Only a peer speaks for itself, so its claim
/// is still believed, but a batch held back by writes their origin never
/// told of starts an exchange with its sender after the ack timeout, which
/// lets it through.
#[test]
fn review_a_peer_inflating_its_own_count_stalls_our_batches_elsewhere() {
    let cfg = RegionConfig::default();
    let mut a = core("a", 1, cfg.clone(), &["hits"]);
    let mut q = core("q", 3, cfg, &["hits"]);
    up(&mut a, "p", now());
    a.on_message("p", hello(6, 0, &[]), now());
    answer(&mut a, "p", "hits", vec![], &[(6, 1_000_000)]);
    assert_eq!(a.applied.get(rid(6)), 1_000_000);
    // q met p too (p told q the truth: no writes).
    up(&mut q, "p", now());
    q.on_message("p", hello(6, 0, &[]), now());
    up(&mut a, "q", now());
    up(&mut q, "a", now());
    write(&mut a, "hits", 1);
    let batches = to(&a.take_batches(now()), "q");
    assert!(!batches.is_empty());
    feed(&mut q, "a", batches, now());
    assert_eq!(count(&q, "hits", 1, 1), 0, "held back by p's claim");
    assert!(to(&q.due_syncs(now()), "a").is_empty(), "not at once");
    let later = now() + q.config.ack_timeout;
    let request = to(&q.due_syncs(later), "a");
    assert!(
        matches!(request[..], [Message::SyncRequest { .. }]),
        "{request:?}"
    );
    let reply = a.on_message("q", request[0].clone(), later);
    feed(&mut q, "a", to(&reply, "q"), later);
    assert_eq!(
        count(&q, "hits", 1, 1),
        1,
        "a's batch no longer waits for writes of p that p says it never made"
    );
    // a's next batch, with the same deps, is not held back again.
    write(&mut a, "hits", 1);
    feed(&mut q, "a", to(&a.take_batches(later), "q"), later);
    assert_eq!(count(&q, "hits", 1, 1), 2);
}

/// Review finding 4: with the link a–c down (a is c's peer), b's transfer
/// to c carries a's writes, but c caps applied[a] at what a told it itself:
/// every later batch of b (depending on those writes of a) is buffered
/// until a reconnects to c, even though c holds the data. Before the trust
/// rules the exchange with b released them.
#[test]
fn review_batches_stall_after_repair_while_a_depended_on_region_is_unreachable() {
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    up(&mut c, "a", now());
    c.on_message("a", hello(1, 0, &[]), now());
    c.peer_down("a", now()); // the link a–c is cut
    up(&mut c, "b", now());
    c.on_message("b", hello(2, 0, &[]), now());
    // a wrote once; b applied it and wrote once after: b repairs c.
    answer(
        &mut c,
        "b",
        "hits",
        vec![(k(1), gc(1, 1)), (k(2), gc(2, 1))],
        &[(1, 1), (2, 1)],
    );
    assert_eq!(count(&c, "hits", 1, 1), 1, "c holds a's write");
    // b's next write, by batch.
    c.on_message("b", batch(2, 2, &[(1, 1)], "hits", &[(2, gc(2, 2))]), now());
    assert_eq!(count(&c, "hits", 2, 2), 2, "b's batch is applied");
}

/// Review finding 5: the cap is "what the region said it made", not "what
/// the sender holds". x told q of 3 writes (hello) and q applied one; a
/// forger's transfer with no data claiming x:3 is within the cap and
/// believed: x's batches 2..3 then look stale, are dropped, and q's ack
/// (accepted by x: its hello announced 3) truncates x's log. q claims writes
/// it does not hold (a session read is served without them).
#[test]
fn review_a_claim_within_the_cap_still_moves_applied_without_data() {
    let mut q = core("q", 3, RegionConfig::default(), &["hits"]);
    up(&mut q, "x", now());
    q.on_message("x", hello(1, 3, &[]), now());
    q.on_message("x", batch(1, 1, &[], "hits", &[(1, gc(1, 1))]), now());
    up(&mut q, "f", now());
    q.on_message("f", hello(6, 0, &[]), now());
    answer(&mut q, "f", "hits", vec![], &[(1, 3), (6, 0)]);
    assert_eq!(q.applied.get(rid(1)), 1, "q holds one write of x");
    q.on_message(
        "x",
        batch(1, 2, &[], "hits", &[(1, gc(1, 2)), (1, gc(1, 3))]),
        now(),
    );
    assert_eq!(count(&q, "hits", 1, 1), 3, "x's batch is applied");
}

/// Review finding 6 (fixed: such values are set aside, the rest merged):
/// one value stamped past our bound refused a whole anti-entropy
/// transfer, so while a region s whose clock runs ahead keeps
/// writing a hot key, an honest b (which accepted s's value: its clock is
/// within the offset of s's) can never repair c, not even with its own
/// writes.
#[test]
fn review_a_value_from_a_third_clock_ahead_blocks_an_honest_repair() {
    use crate::crdt::LwwRegister;
    type Reg = LwwRegister<String>;
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    declare::<Reg>(&mut c, "p");
    up(&mut c, "b", now());
    c.on_message("b", hello(2, 1, &[]), now());
    let offset = c.hlc.max_offset().as_millis() as u64;
    let mut reg = Reg::new();
    reg.set(
        Stamp::new(Timestamp::new(WALL_MS + offset + 200, 0), rid(7)),
        "hot".into(),
    );
    let request = c.start_sync("b", now());
    let Message::SyncRequest { session, .. } = request[0].1 else {
        unreachable!()
    };
    let mut packed = Vec::new();
    message::push_entry(&mut packed, 0, &k(1), &gc(2, 1));
    message::push_entry(&mut packed, 1, &k(9), &bare(&reg));
    c.on_message(
        "b",
        Message::SyncStates {
            session,
            push: false,
            chunk: 0,
            chunks: 1,
            sent_at: Timestamp::new(WALL_MS, 0),
            buckets: vec![],
            tables: vec!["hits".into(), "p".into()],
            entries: Blob(packed),
            applied: Some(vv(&[(2, 1), (7, 1)])),
        },
        now(),
    );
    assert_eq!(count(&c, "hits", 1, 2), 1, "b's own write lands");
    assert!(read_reg(&c, 9).is_none(), "the value ahead is set aside");
    assert_eq!(c.counters.values_ahead, 1);
    assert_eq!(c.counters.rejected_frames, 0);
    assert_eq!(c.applied.get(rid(2)), 0, "the vector is not believed");
}

fn read_reg(core: &Core, key: u64) -> Option<crate::crdt::LwwRegister<String>> {
    core.named::<CrdtStore<crate::crdt::LwwRegister<String>>>("p")?
        .get(&k(key))
        .cloned()
}

/// Review probe: hostile u64::MAX sequence numbers in a hello, a batch, acks
/// and a transfer do not panic.
#[test]
fn review_hostile_max_numbers_do_not_panic() {
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    up(&mut c, "x", now());
    c.on_message("x", hello(1, u64::MAX, &[(3, u64::MAX)]), now());
    c.on_message(
        "x",
        batch(1, u64::MAX, &[(1, u64::MAX)], "hits", &[(1, gc(1, 1))]),
        now(),
    );
    c.on_message(
        "x",
        batch(
            1,
            u64::MAX - 1,
            &[],
            "hits",
            &[(1, gc(1, 1)), (1, gc(1, 2))],
        ),
        now(),
    );
    c.on_message(
        "x",
        Message::Ack {
            origin: rid(3),
            applied: u64::MAX,
        },
        now(),
    );
    c.on_message("x", Message::SyncDone { session: u64::MAX }, now());
    answer(&mut c, "x", "hits", vec![], &[(1, u64::MAX), (9, u64::MAX)]);
    write(&mut c, "hits", 1);
    c.take_batches(now());
    c.check_retransmit(now());
    c.due_syncs(now());
    c.on_message("x", hello(1, 0, &[]), now());
    c.on_message(
        "x",
        batch(1, 1, &[(9, u64::MAX)], "hits", &[(1, gc(1, 1))]),
        now(),
    );
    for _ in 0..3 {
        write(&mut c, "hits", 2);
    }
    c.take_batches(now());
}

/// Guards against a batch waiting until the periodic exchange for writes
/// whose origin told us of them (its hello) but can no longer send them:
/// with the origin's link down, an exchange with the batch's sender starts
/// after the ack timeout; with it up, the origin's resend is awaited.
#[test]
fn a_batch_waiting_on_a_cut_off_origin_starts_an_exchange_with_its_sender() {
    for cut in [true, false] {
        let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
        up(&mut c, "a", now());
        c.on_message("a", hello(1, 2, &[]), now());
        if cut {
            c.peer_down("a", now());
        }
        up(&mut c, "b", now());
        c.on_message("b", hello(2, 0, &[]), now());
        c.on_message("b", batch(2, 1, &[(1, 2)], "hits", &[(2, gc(2, 1))]), now());
        assert_eq!(count(&c, "hits", 2, 2), 0, "waits for a's writes");
        let later = now() + c.config.ack_timeout;
        let asked = to(&c.due_syncs(later), "b")
            .iter()
            .any(|m| matches!(m, Message::SyncRequest { .. }));
        assert_eq!(asked, cut, "link to a cut: {cut}");
    }
}

/// Guards against a forger growing every vector and session token without
/// bound by claiming writes of ever more replicas nobody met.
#[test]
fn claims_about_unmet_replicas_are_bounded() {
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    up(&mut c, "f", now());
    c.on_message("f", hello(6, 0, &[]), now());
    let claims: Vec<(u32, u64)> = (1000..1000 + 2 * BELIEVED_REPLICAS_MAX as u32)
        .map(|r| (r, 1))
        .collect();
    answer(&mut c, "f", "hits", vec![], &claims);
    assert_eq!(c.believed.len(), BELIEVED_REPLICAS_MAX);
    assert!(c.held().len() <= BELIEVED_REPLICAS_MAX + 1);
    assert_eq!(
        c.counters.untrusted_claims, BELIEVED_REPLICAS_MAX as u64,
        "each ignored claim counts"
    );
}

/// A peer announcing protocol versions that do not meet ours is refused
/// with both ranges named, and nothing it sends is read until it
/// reconnects; a range that meets ours agrees on the newest both speak.
#[test]
fn a_peer_outside_our_protocol_range_is_refused_until_it_reconnects() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let out = a.peer_up("b", now());
    assert!(
        matches!(
            out.first(),
            Some((
                _,
                Message::Protocol {
                    min: 1,
                    max: PROTOCOL_VERSION
                }
            ))
        ),
        "the announcement leaves before the hello: {out:?}"
    );
    let (min, max) = (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3);
    a.on_message("b", Message::Protocol { min, max }, now());
    assert_eq!(
        a.peers["b"].protocol_refused,
        Some(HandshakeRefusal::Protocol {
            ours: (1, PROTOCOL_VERSION),
            theirs: (min, max)
        })
    );
    assert_eq!(a.counters.refused_handshakes, 1);
    let hello = Message::Hello {
        replica: rid(2),
        incarnation: 1,
        seq: 1,
        applied: VersionVector::new(),
        reply: false,
    };
    assert!(
        a.on_message("b", hello.clone(), now()).is_empty(),
        "its hello is not answered"
    );
    a.on_message("b", batch(2, 1, &[], "hits", &[(1, gc(2, 1))]), now());
    assert_eq!(a.applied.get(rid(2)), 0, "nothing it sends is merged");
    assert_eq!(a.peers["b"].replica, None, "nor bound");
    // Back with a build that speaks ours.
    a.peer_down("b", now());
    a.peer_up("b", now());
    a.on_message(
        "b",
        Message::Protocol {
            min: 1,
            max: PROTOCOL_VERSION,
        },
        now(),
    );
    assert_eq!(a.peers["b"].protocol_refused, None);
    assert_eq!(
        a.peers["b"].protocol, PROTOCOL_VERSION,
        "the newest both speak"
    );
    a.on_message("b", hello, now());
    assert_eq!(a.peers["b"].replica, Some(rid(2)));
    assert_eq!(a.counters.refused_handshakes, 1);
}

/// A region pinned to protocol 1 speaks as builds of protocol 1 did: no
/// announcement, and a peer's announcement is a frame it cannot read.
#[test]
fn a_region_pinned_to_protocol_1_announces_nothing() {
    let config = RegionConfig {
        protocol_version_max: 1,
        ..RegionConfig::default()
    };
    let mut old = core("a", 1, config, &["hits"]);
    let out = old.peer_up("b", now());
    assert!(
        out.iter()
            .all(|(_, m)| !matches!(m, Message::Protocol { .. }))
    );
    old.on_message("b", Message::Protocol { min: 1, max: 2 }, now());
    assert_eq!(old.counters.rejected_frames, 1);
    assert_eq!(old.peers["b"].protocol, 1);
}

/// A bounded counter table `table` of `units` restocked at `core`.
fn stock(core: &mut Core, table: &str, key: u64, units: u64) {
    use crate::crdt::BoundedCounter;
    declare::<BoundedCounter>(core, table);
    let slot = core.slot_of(table).unwrap();
    core.declare_bounded::<0>(slot);
    let replica = core.replica;
    let store = core.named_mut::<CrdtStore<BoundedCounter>>(table).unwrap();
    let mut c = BoundedCounter::new();
    let delta = c.inc(replica, units);
    store.merge_local(&k(key), &delta);
}

fn rights_of(core: &Core, table: &str, key: u64, replica: u32) -> u64 {
    use crate::crdt::BoundedCounter;
    core.named::<CrdtStore<BoundedCounter>>(table)
        .unwrap()
        .get(&k(key))
        .map_or(0, |c| c.rights(rid(replica)))
}

fn rights_request(table: &str, key: u64, wanted: u64) -> Message {
    Message::RightsRequest {
        table: table.into(),
        key: Blob(k(key).into_vec()),
        wanted,
    }
}

/// A request for absurd amounts gets at most half (rounded up) of what the
/// granter holds, as one replicated write to the requesting peer's bound
/// replica; a duplicate within the request timeout moves nothing; the
/// last unit moves; a connection below protocol 3 is refused.
#[test]
fn a_grant_is_bounded_by_half_of_what_the_granter_holds() {
    let mut a = core("a", 1, RegionConfig::default(), &[]);
    stock(&mut a, "stock", 7, 9);
    up(&mut a, "b", now());
    a.peers.get_mut("b").unwrap().protocol = PROTOCOL_VERSION;
    let writes = a.seq;
    feed(
        &mut a,
        "b",
        vec![rights_request("stock", 7, u64::MAX)],
        now(),
    );
    assert_eq!(
        (rights_of(&a, "stock", 7, 1), rights_of(&a, "stock", 7, 2)),
        (4, 5)
    );
    assert_eq!(a.seq, writes + 1, "one write, replicated as any other");
    assert_eq!(a.counters.rights_granted, 5);
    // The same request again (a duplicated frame): nothing moves.
    feed(
        &mut a,
        "b",
        vec![rights_request("stock", 7, u64::MAX)],
        now(),
    );
    assert_eq!(rights_of(&a, "stock", 7, 1), 4);
    assert_eq!(a.counters.rights_refused, 1);
    // Later requests: halves, never more than asked, the last unit moves.
    let mut at = now();
    for (wanted, left) in [(1, 3), (9, 1), (9, 0), (9, 0)] {
        at += a.config.rights_request_timeout;
        feed(&mut a, "b", vec![rights_request("stock", 7, wanted)], at);
        assert_eq!(rights_of(&a, "stock", 7, 1), left);
    }
    assert_eq!(
        rights_of(&a, "stock", 7, 2),
        9,
        "every unit is b's, none made up"
    );
    assert_eq!(a.counters.rights_refused, 2, "the last asked of nothing");
    // Unknown tables and keys get nothing; nothing is rejected.
    feed(
        &mut a,
        "b",
        vec![rights_request("hits", 7, 1), rights_request("stock", 8, 1)],
        at,
    );
    assert_eq!(a.counters.rejected_frames, 0);
    // A connection of protocol 2 (as announced) carries no rights requests.
    let b = a.peers.get_mut("b").unwrap();
    (b.protocol, b.protocol_heard) = (2, true);
    feed(&mut a, "b", vec![rights_request("stock", 7, 1)], at);
    assert_eq!(
        a.counters.rejected_by_reason[RejectReason::Protocol.index()],
        1
    );
}

/// A region short of rights asks the richest connected peer of protocol 3
/// once per timeout, never one of protocol 2, and stops once it holds
/// what it wanted.
#[test]
fn a_want_asks_the_richest_peer_of_protocol_3_once_per_timeout() {
    use crate::crdt::BoundedCounter;
    let mut a = core("a", 1, RegionConfig::default(), &[]);
    stock(&mut a, "stock", 7, 0);
    // What a knows: b holds 3, c holds 6.
    let store = a.named_mut::<CrdtStore<BoundedCounter>>("stock").unwrap();
    let mut c = BoundedCounter::new();
    let mut delta = c.inc(rid(2), 3);
    delta.merge(&c.inc(rid(3), 6));
    store.merge_local(&k(7), &delta);
    for peer in ["b", "c"] {
        up(&mut a, peer, now());
        let p = a.peers.get_mut(peer).unwrap();
        p.greeted = true;
        p.protocol = PROTOCOL_VERSION;
    }
    a.peers.get_mut("c").unwrap().protocol = 2;
    let slot = a.slot_of("stock").unwrap();
    a.want_rights(slot, &k(7), 1, true, now());
    let out = a.due_rights_requests(now());
    assert!(
        matches!(&out[..], [(peer, Message::RightsRequest { wanted: 2, .. })] if peer == "b"),
        "the richest of protocol 3: {out:?}"
    );
    assert!(a.due_rights_requests(now()).is_empty(), "one outstanding");
    let later = now() + a.config.rights_request_timeout;
    assert_eq!(a.due_rights_requests(later).len(), 1, "asked again");
    assert_eq!(a.counters.rights_requested, 2);
    // The grant arrives: the want is met and ends.
    let store = a.named_mut::<CrdtStore<BoundedCounter>>("stock").unwrap();
    let mut held = store.get(&k(7)).unwrap().clone();
    let grant = held.transfer(rid(2), rid(1), 2).unwrap();
    store.merge_local(&k(7), &grant);
    assert!(
        a.due_rights_requests(later + a.config.rights_request_timeout)
            .is_empty()
    );
    assert!(a.rights.is_idle());
}

/// A want no connected peer can be asked for waits for a peer, not for a
/// tick: looked at once, then not again until a peer's protocol settles
/// (issue 10: such wants were looked at on every tick).
#[test]
fn a_want_with_no_peer_to_ask_waits_for_one() {
    use crate::crdt::BoundedCounter;
    let mut a = core("a", 1, RegionConfig::default(), &[]);
    stock(&mut a, "stock", 7, 0);
    // What a knows: b holds 6; b is not connected.
    let store = a.named_mut::<CrdtStore<BoundedCounter>>("stock").unwrap();
    store.merge_local(&k(7), &BoundedCounter::new().inc(rid(2), 6));
    let slot = a.slot_of("stock").unwrap();
    a.want_rights(slot, &k(7), 1, true, now());
    assert!(a.due_rights_requests(now()).is_empty(), "no peer to ask");
    assert_eq!(a.rights.examined(), 1);
    for tick in 1..100 {
        let at = now() + std::time::Duration::from_millis(tick);
        assert!(a.due_rights_requests(at).is_empty());
    }
    assert_eq!(
        a.rights.examined(),
        1,
        "not looked at while no peer changed"
    );
    up(&mut a, "b", now());
    a.peers.get_mut("b").unwrap().greeted = true;
    let max = PROTOCOL_VERSION;
    feed(&mut a, "b", vec![Message::Protocol { min: 1, max }], now());
    let out = a.due_rights_requests(now());
    assert!(
        matches!(&out[..], [(peer, Message::RightsRequest { .. })] if peer == "b"),
        "asked once b can be: {out:?}"
    );
    assert_eq!(a.rights.examined(), 2);
    assert_eq!(a.counters.rejected_frames, 0);
}

/// A tick looks only at the wants due (issue 10's review: it cloned and
/// sorted every want each tick): with `RIGHTS_WANTS_MAX` requests
/// outstanding and none timed out it looks at none; once they all time
/// out, at no more than it asks again; rights arriving for one key (in a
/// batch) make that want due at once, as the full scan did.
#[test]
fn a_rights_tick_looks_only_at_the_wants_due() {
    use crate::crdt::BoundedCounter;
    use crate::replication::rights::{RIGHTS_REQUESTS_PER_TICK_MAX, RIGHTS_WANTS_MAX};
    let mut a = core("a", 1, RegionConfig::default(), &[]);
    stock(&mut a, "stock", 0, 0);
    let slot = a.slot_of("stock").unwrap();
    // What a knows: b holds 8 rights to every key.
    let store = a.named_mut::<CrdtStore<BoundedCounter>>("stock").unwrap();
    for key in 0..RIGHTS_WANTS_MAX as u64 {
        store.merge_local(&k(key), &BoundedCounter::new().inc(rid(2), 8));
    }
    up(&mut a, "b", now());
    let b = a.peers.get_mut("b").unwrap();
    b.greeted = true;
    b.protocol = PROTOCOL_VERSION;
    let t0 = now();
    for key in 0..RIGHTS_WANTS_MAX as u64 {
        a.want_rights(slot, &k(key), 1, true, t0);
    }
    for _ in 0..RIGHTS_WANTS_MAX / RIGHTS_REQUESTS_PER_TICK_MAX {
        assert_eq!(
            a.due_rights_requests(t0).len(),
            RIGHTS_REQUESTS_PER_TICK_MAX
        );
    }
    let wants = RIGHTS_WANTS_MAX as u64;
    assert_eq!(a.counters.rights_requested, wants, "every want asked once");
    assert_eq!(
        a.rights.examined(),
        wants,
        "each looked at once, when asked"
    );
    // Every request outstanding, none timed out: nothing to look at.
    let timeout = a.config.rights_request_timeout;
    assert!(a.due_rights_requests(t0 + timeout / 2).is_empty());
    assert_eq!(a.rights.examined(), wants, "no want due, none looked at");
    // b's grant for key 7 arrives: that want alone is looked at, and met.
    let store = a.named_mut::<CrdtStore<BoundedCounter>>("stock").unwrap();
    let grant = store
        .get(&k(7))
        .unwrap()
        .clone()
        .transfer(rid(2), rid(1), 1)
        .unwrap();
    let acks = feed(
        &mut a,
        "b",
        vec![batch(2, 1, &[], "stock", &[(7, bare(&grant))])],
        t0,
    );
    assert_eq!((acks.len(), a.counters.rejected_frames), (1, 0), "{acks:?}");
    assert!(a.due_rights_requests(t0 + timeout / 2).is_empty());
    assert_eq!(
        a.rights.examined(),
        wants + 1,
        "the changed key's want only"
    );
    // All time out at once: a tick looks at what it asks again, no more.
    let again = a.due_rights_requests(t0 + timeout);
    assert_eq!(again.len(), RIGHTS_REQUESTS_PER_TICK_MAX);
    assert_eq!(
        a.rights.examined(),
        wants + 1 + RIGHTS_REQUESTS_PER_TICK_MAX as u64
    );
    assert_eq!(a.counters.rights_requested, wants + again.len() as u64);
}

/// Delivers `out` (from `from`) to `core`, leaving out what `keep` refuses;
/// returns what `core` answered.
fn deliver(
    core: &mut Core,
    from: &str,
    out: Outgoing,
    at: Instant,
    keep: impl Fn(&Message) -> bool,
) -> Outgoing {
    let to_core = core.name.to_string();
    let mut answers = Vec::new();
    for (peer, message) in out {
        if peer == to_core && keep(&message) {
            answers.extend(core.on_message(from, message, at));
            answers.extend(merge_queued_transfers(core, at));
        }
    }
    answers
}

/// A lost protocol announcement does not leave a connection at protocol
/// 1 (no rights requests, no homed operations) until it reconnects: the
/// peer that was greeted without one announces its own again, and a
/// repeated announcement is answered with ours, once per `ack_timeout`.
/// Found by the homed history checker (`tests/homed_history.rs`), where a
/// lossy link after a heal made forwards fail with `HomeProtocol`.
#[test]
fn a_lost_protocol_announcement_is_asked_for_again() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let mut b = core("b", 2, RegionConfig::default(), &["hits"]);
    let t0 = now();
    let from_a = a.peer_up("b", t0);
    let from_b = b.peer_up("a", t0);
    let is_protocol = |m: &Message| matches!(m, Message::Protocol { .. });
    // a's announcement is lost on its way to b; its hello arrives.
    let replies_b = deliver(&mut b, "a", from_a, t0, |m| !is_protocol(m));
    let replies_a = deliver(&mut a, "b", from_b, t0, |_| true);
    deliver(&mut a, "b", replies_b, t0, |_| true);
    deliver(&mut b, "a", replies_a, t0, |_| true);
    assert!(a.peers["b"].greeted && b.peers["a"].greeted);
    assert_eq!(a.peers["b"].protocol, PROTOCOL_VERSION);
    assert_eq!(b.peers["a"].protocol, 1, "b never heard a's announcement");
    assert!(b.due_announcements(t0).is_empty(), "not before ack_timeout");

    let later = t0 + b.config.ack_timeout;
    let again = b.due_announcements(later);
    assert_eq!(again.len(), 1, "{again:?}");
    // Duplicated on its way: a answers once.
    let answer = deliver(&mut a, "b", again.clone(), later, |_| true);
    assert!(deliver(&mut a, "b", again, later, |_| true).is_empty());
    assert!(matches!(answer.as_slice(), [(_, Message::Protocol { .. })]));
    deliver(&mut b, "a", answer, later, |_| true);
    assert_eq!(b.peers["a"].protocol, PROTOCOL_VERSION);
    assert!(
        b.due_announcements(later + b.config.ack_timeout * 4)
            .is_empty(),
        "heard: no more announcements"
    );
    assert_eq!(a.counters.rejected_frames + b.counters.rejected_frames, 0);
}

/// A peer of protocol 1 announces nothing: it is asked at most
/// `PROTOCOL_ANNOUNCEMENTS_MAX` times per connection, one per
/// `ack_timeout`, and the connection stays at protocol 1.
#[test]
fn a_protocol_1_peer_is_asked_a_bounded_number_of_times() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let old_config = RegionConfig {
        protocol_version_max: 1,
        ..RegionConfig::default()
    };
    let mut old = core("b", 2, old_config, &["hits"]);
    let t0 = now();
    let from_a = a.peer_up("b", t0);
    let from_old = old.peer_up("a", t0);
    let replies_old = deliver(&mut old, "a", from_a, t0, |_| true);
    let replies_a = deliver(&mut a, "b", from_old, t0, |_| true);
    deliver(&mut a, "b", replies_old, t0, |_| true);
    deliver(&mut old, "a", replies_a, t0, |_| true);
    assert!(a.peers["b"].greeted);
    let step = a.config.ack_timeout;
    let mut sent = 0;
    for i in 1..=3 * crate::region::PROTOCOL_ANNOUNCEMENTS_MAX {
        let out = a.due_announcements(t0 + step * i);
        sent += out.len() as u32;
        deliver(&mut old, "a", out, t0 + step * i, |_| true);
    }
    assert_eq!(sent, crate::region::PROTOCOL_ANNOUNCEMENTS_MAX);
    assert_eq!(a.peers["b"].protocol, 1);
    // Rejected by the old build, one frame each (and the first with the hello).
    assert_eq!(old.counters.rejected_frames, 1 + u64::from(sent));
    // A new connection asks again.
    a.peer_down("b", t0 + step * 100);
    a.peer_up("b", t0 + step * 100);
    assert_eq!(a.peers["b"].protocol_reannounced, 0);
}

/// A batch to a peer agreed on protocol 4 carries version sets in the older
/// layout (a list of versions, values not delimited); the same batch to a
/// peer of protocol 5 leaves as it was written.
#[test]
fn batches_to_a_protocol_4_peer_carry_the_older_layout() {
    use crate::resolve::{VersionSet, Versioned};
    let mut a = core("a", 1, RegionConfig::default(), &[]);
    declare::<VersionSet<String>>(&mut a, "names");
    let mut set = VersionSet::new();
    let delta = set.write(a.hlc.stamp(), "Aiko".to_string());
    let delimited = bare(&delta);
    let (tables, entries) = pack_entries("names", vec![(k(1), delimited.clone())]);
    up(&mut a, "old", now());
    up(&mut a, "new", now());
    a.peers.get_mut("old").unwrap().protocol = 4;
    a.peers.get_mut("new").unwrap().protocol = PROTOCOL_VERSION;
    let batch = Message::Batch {
        origin: a.replica,
        first: 1,
        last: 1,
        deps: VersionVector::new(),
        sent_at: a.hlc.now(),
        tables,
        entries,
    };
    let mut out = vec![
        ("old".to_string(), batch.clone()),
        ("new".to_string(), batch),
    ];
    a.downgrade_for_old_peers(&mut out);
    let value_of = |m: &Message| {
        let Message::Batch { entries, .. } = m else {
            panic!("a batch")
        };
        let (_, _, value) = Entries::new(&entries.0, 1).next().unwrap().unwrap();
        value.to_vec()
    };
    let old: Vec<Versioned<String>> = wire::decode_bare(&value_of(&out[0].1)).unwrap();
    assert_eq!(old, delta.versions());
    assert_eq!(value_of(&out[1].1), delimited);
}

/// `a` and `b` connected and greeted (protocol announcements and hellos
/// delivered both ways): they speak the newest protocol both configs
/// allow.
fn greeted_pair(a_config: RegionConfig, b_config: RegionConfig) -> (Core, Core, Instant) {
    let mut a = core("a", 1, a_config, &["hits"]);
    let mut b = core("b", 2, b_config, &["hits"]);
    let t0 = now();
    let mut to_b = a.peer_up("b", t0);
    let mut to_a = b.peer_up("a", t0);
    while !to_a.is_empty() || !to_b.is_empty() {
        let from_b = deliver(&mut b, "a", std::mem::take(&mut to_b), t0, |_| true);
        let from_a = deliver(&mut a, "b", std::mem::take(&mut to_a), t0, |_| true);
        to_a = from_b;
        to_b = from_a;
    }
    assert!(a.peers["b"].greeted && b.peers["a"].greeted);
    (a, b, t0)
}

/// Carries every anti-entropy message between `a` and `b`, starting with
/// `first` (from `a`), until neither answers; batches and acks are left
/// out. Returns the anti-entropy messages carried and their bytes.
fn shuttle(a: &mut Core, b: &mut Core, first: Outgoing, at: Instant) -> (usize, usize) {
    let (mut messages, mut bytes) = (0, 0);
    let mut count = |out: &Outgoing| {
        for (_, m) in out.iter().filter(|(_, m)| m.is_anti_entropy()) {
            messages += 1;
            bytes += wire::encode(m).unwrap().len();
        }
    };
    let mut to_b = first;
    let mut to_a = Vec::new();
    while !to_a.is_empty() || !to_b.is_empty() {
        count(&to_b);
        count(&to_a);
        let ae = |m: &Message| m.is_anti_entropy();
        let from_b = deliver(b, "a", std::mem::take(&mut to_b), at, ae);
        let from_a = deliver(a, "b", std::mem::take(&mut to_a), at, ae);
        to_a = from_b;
        to_b = from_a;
    }
    (messages, bytes)
}

/// An exchange by ranges (protocol 6 on both sides) ships each side the
/// keys that differ and no others: the first fills an empty peer, the
/// second carries the 3 keys written at `a` and the 2 written at `b`, in
/// one exchange, and both end equal.
#[test]
fn an_exchange_by_ranges_ships_only_what_differs() {
    let (mut a, mut b, t0) = greeted_pair(RegionConfig::default(), RegionConfig::default());
    assert!(a.peers["b"].protocol >= ranges::RANGES_PROTOCOL);
    for key in 0..2_000 {
        write(&mut a, "hits", key);
    }
    let out = a.start_sync("b", t0);
    assert!(matches!(
        to(&out, "b").as_slice(),
        [Message::SyncRanges { round: 0, .. }]
    ));
    shuttle(&mut a, &mut b, out, t0);
    assert_eq!(b.counters.sync_states_received, 2_000);
    assert_eq!(count(&b, "hits", 1_999, 1), 1);

    for key in [5, 700, 1_999] {
        write(&mut a, "hits", key);
    }
    write(&mut b, "hits", 5);
    write(&mut b, "hits", 3_000);
    let (a_before, b_before) = (a.counters, b.counters);
    let out = a.start_sync("b", t0);
    let (messages, bytes) = shuttle(&mut a, &mut b, out, t0);
    // A key both hold in different states crosses both ways (neither side
    // knows whose is newer; the join settles it): b's 5, 700, 1999 and
    // 3000; a's 5, 700 and 1999.
    assert_eq!(
        a.counters.sync_states_received - a_before.sync_states_received,
        4
    );
    assert_eq!(
        b.counters.sync_states_received - b_before.sync_states_received,
        3
    );
    assert_eq!(a.counters.syncs_completed - a_before.syncs_completed, 1);
    assert_eq!(b.counters.syncs_completed - b_before.syncs_completed, 1);
    assert!(
        messages <= 10 && bytes < 4_096,
        "{messages} messages, {bytes} bytes"
    );
    for key in [5, 700, 1_999, 3_000] {
        assert_eq!(read(&a, "hits", key), read(&b, "hits", key), "key {key}");
    }
    assert_eq!(a.applied, b.applied);
    assert!(a.syncs.is_empty() && b.answering.is_empty() && b.answered.is_empty());
    assert_eq!(a.counters.rejected_frames + b.counters.rejected_frames, 0);

    // Equal tables: one fingerprint each way, then the empty transfers.
    let out = a.start_sync("b", t0);
    let (messages, bytes) = shuttle(&mut a, &mut b, out, t0);
    assert!(
        messages <= 4 && bytes < 256,
        "{messages} messages, {bytes} bytes"
    );
}

/// Keys written at the answering side between its frames are shipped too:
/// its transfer's vector names them.
#[test]
fn keys_written_during_an_exchange_by_ranges_are_shipped() {
    let (mut a, mut b, t0) = greeted_pair(RegionConfig::default(), RegionConfig::default());
    for key in 0..500 {
        write(&mut a, "hits", key);
        write(&mut b, "hits", key);
    }
    let out = a.start_sync("b", t0);
    shuttle(&mut a, &mut b, out, t0);
    assert_eq!(a.applied, b.applied);
    // b writes after it answered a's first frame: a range already found
    // equal holds the key.
    write(&mut a, "hits", 1_000);
    let out = a.start_sync("b", t0);
    let reply = deliver(&mut b, "a", out, t0, |_| true);
    write(&mut b, "hits", 7);
    let (a_before, b_before) = (a.counters, b.counters);
    let mut to_b = deliver(&mut a, "b", reply, t0, |_| true);
    while !to_b.is_empty() {
        let to_a = deliver(&mut b, "a", to_b, t0, |_| true);
        to_b = deliver(&mut a, "b", to_a, t0, |_| true);
    }
    assert!(a.counters.sync_states_received > a_before.sync_states_received);
    assert!(b.counters.sync_states_received > b_before.sync_states_received);
    assert_eq!(read(&a, "hits", 7), read(&b, "hits", 7));
    assert_eq!(count(&a, "hits", 7, 2), 2);
    assert_eq!(a.applied, b.applied);
    assert_eq!(a.counters.rejected_frames + b.counters.rejected_frames, 0);
}

/// A peer of protocol 5 is asked by bucket digests.
#[test]
fn a_protocol_5_peer_exchanges_by_buckets() {
    let old = RegionConfig {
        protocol_version_max: 5,
        ..RegionConfig::default()
    };
    let (mut a, mut b, t0) = greeted_pair(RegionConfig::default(), old);
    assert_eq!(a.peers["b"].protocol, 5);
    write(&mut a, "hits", 1);
    let out = a.start_sync("b", t0);
    assert!(matches!(
        to(&out, "b").as_slice(),
        [Message::SyncRequest { .. }]
    ));
    shuttle(&mut a, &mut b, out, t0);
    assert_eq!(count(&b, "hits", 1, 1), 1);
    assert_eq!(a.counters.rejected_frames + b.counters.rejected_frames, 0);
}

/// Hostile reconciliation frames are refused, counted under their reason,
/// end the exchange and touch nothing stored; the next exchange works.
#[test]
fn hostile_reconciliation_frames_are_refused_and_counted() {
    use crate::replication::reconcile::{Body, Bound, Range};
    let (mut a, mut b, t0) = greeted_pair(RegionConfig::default(), RegionConfig::default());
    for key in 0..100 {
        write(&mut a, "hits", key);
    }
    let with_frames = |out: &Outgoing, frames: Vec<(String, Blob)>| -> Outgoing {
        let sent = to(out, "b");
        let [Message::SyncRanges { session, .. }] = sent.as_slice() else {
            panic!("an exchange by ranges: {out:?}");
        };
        let message = Message::SyncRanges {
            session: *session,
            reply: false,
            round: 0,
            frames,
        };
        vec![("b".to_owned(), message)]
    };
    let unordered = wire::encode(&vec![
        Range {
            upper: Bound::Key(Box::from(&b"m"[..])),
            body: Body::Skip,
        },
        Range {
            upper: Bound::Key(Box::from(&b"a"[..])),
            body: Body::Skip,
        },
    ])
    .unwrap();
    let too_many = (0..=ranges::RANGE_TABLES_MAX)
        .map(|t| (format!("t{t}"), Blob(Vec::new())))
        .collect();
    let twice = vec![
        ("hits".to_owned(), Blob(vec![0])),
        ("hits".to_owned(), Blob(vec![0])),
    ];
    let cases = [
        (
            vec![("hits".to_owned(), Blob(vec![0xff; 9]))],
            RejectReason::Undecodable,
        ),
        (
            vec![("hits".to_owned(), Blob(unordered))],
            RejectReason::Malformed,
        ),
        (too_many, RejectReason::OverLimit),
        (twice, RejectReason::Malformed),
    ];
    for (i, (frames, reason)) in cases.into_iter().enumerate() {
        let out = a.start_sync("b", t0);
        let before = b.counters.rejected_by_reason[reason.index()];
        let answer = deliver(&mut b, "a", with_frames(&out, frames), t0, |_| true);
        assert!(answer.is_empty(), "case {i}: {answer:?}");
        assert_eq!(
            b.counters.rejected_by_reason[reason.index()],
            before + 1,
            "case {i}"
        );
        assert!(b.answering.is_empty() && b.answered.is_empty(), "case {i}");
        assert_eq!(read(&b, "hits", 1), None, "case {i}: nothing stored");
        a.syncs.clear();
    }
    assert_eq!(b.counters.rejected_frames, 4);
    // A reply the starter refuses ends its exchange; the peer stays due.
    let out = a.start_sync("b", t0);
    let mut reply = deliver(&mut b, "a", out, t0, |_| true);
    let Some((_, Message::SyncRanges { frames, .. })) = reply.first_mut() else {
        panic!("b answers by ranges: {reply:?}");
    };
    frames[0].1 = Blob(vec![0xff; 3]);
    assert!(deliver(&mut a, "b", reply, t0, |_| true).is_empty());
    assert_eq!(a.counters.rejected_frames, 1);
    assert!(a.syncs.is_empty() && a.peers["b"].needs_sync);
    // An honest exchange after them all.
    b.answering.clear();
    let out = a.start_sync("b", t0);
    shuttle(&mut a, &mut b, out, t0);
    assert_eq!(count(&b, "hits", 99, 1), 1);
    assert_eq!(a.applied, b.applied);
    // A region that speaks protocol 5 refuses the frame as unknown.
    let old = RegionConfig {
        protocol_version_max: 5,
        ..RegionConfig::default()
    };
    let (mut a, mut c, t0) = greeted_pair(RegionConfig::default(), RegionConfig::default());
    c.config = old;
    let out = a.start_sync("b", t0);
    deliver(&mut c, "a", out, t0, |_| true);
    assert_eq!(
        c.counters.rejected_by_reason[RejectReason::Protocol.index()],
        1
    );
}

/// A compact batch handed to the core decoded (not through
/// `message::decode_frame`) is applied as the batch it was made from; one
/// whose references point past its replicas is an undecodable frame.
#[test]
fn a_compact_batch_is_applied_as_its_batch() {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    let compact = batch(2, 1, &[], "t", &[(1, gc(2, 1))]).compact();
    assert!(matches!(compact, Message::CompactBatch { .. }));
    feed(&mut a, "b", vec![compact], now());
    assert_eq!(a.applied.get(rid(2)), 1);
    let Message::CompactBatch {
        origin,
        first,
        last,
        deps,
        sent_at,
        tables,
        ..
    } = batch(2, 2, &[], "t", &[(2, gc(2, 2))]).compact()
    else {
        unreachable!("a batch compacts")
    };
    let lying = Message::CompactBatch {
        origin,
        first,
        last,
        deps,
        sent_at,
        tables,
        // A first entry of table 0, then a reference to dependency 9.
        entries: Blob(vec![3, 0, 0xFF, 9]),
    };
    feed(&mut a, "b", vec![lying], now());
    assert_eq!(a.applied.get(rid(2)), 1, "nothing of it applied");
    assert_eq!(a.counters.rejected_frames, 1);
}

#[path = "core/drain_tests.rs"]
mod drain_tests;
#[path = "core/shadow_merge_tests.rs"]
mod shadow_merge_tests;
#[path = "core/tx_groups_tests.rs"]
mod tx_groups_tests;
