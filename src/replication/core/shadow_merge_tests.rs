//! A transfer merged in slices (see `shadow_merge`): never shown in part,
//! no write made meanwhile lost, nothing stored that its vector does not
//! cover.

use super::*;
use crate::replication::core::TRANSFER_MERGE_SLICE_KEYS_MAX;
use crate::storage::{MemoryStorage, Storage};

/// Keys of the transfers these tests make: many slices.
const KEYS: u64 = 20 * TRANSFER_MERGE_SLICE_KEYS_MAX as u64;

/// `a` (replica 1) holds `KEYS` keys of table `t` that `b` lacks; `b`
/// takes `a`'s push, too large to merge at once: queued.
fn pending_push(b: &mut Core) -> Core {
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    for key in 0..KEYS {
        write(&mut a, "t", key);
    }
    up(b, "a", now());
    let request = up(&mut a, "b", now()); // a < b: a starts
    assert!(matches!(request[0].1, Message::SyncRequest { .. }));
    let reply = b.on_message("a", request[0].1.clone(), now());
    let push = feed(&mut a, "b", to(&reply, "a"), now());
    assert!(!to(&push, "b").is_empty(), "a pushes its keys");
    // Each chunk as the engine hands it over (`feed` would merge it all).
    for message in to(&push, "b") {
        let out = b.on_message("a", message, now());
        assert!(
            to(&out, "a").is_empty(),
            "not confirmed before it is merged"
        );
    }
    assert!(b.transfer_work_pending(), "queued, not merged at once");
    a
}

/// Keys of `t` at `core` that show `a`'s write.
fn shown(core: &Core) -> u64 {
    (0..KEYS)
        .filter(|&key| count(core, "t", key, 1) == 1)
        .count() as u64
}

/// A local write as a table handle makes it: its delta joined by
/// `merge_local`.
fn write_local(core: &mut Core, table: &str, key: u64) {
    let replica = core.replica;
    let slot = core.slot_of(table).unwrap();
    let store = core.store_mut::<CrdtStore<GCounter>>(slot).unwrap();
    let mut copy = store.get(&k(key)).cloned().unwrap_or_default();
    let delta = copy.inc(replica, 1);
    store.merge_local(&k(key), &delta);
    core.record_write(slot, &k(key), &bare(&delta));
}

/// `b` restored from `store`, its table declared after (as a region with
/// storage does: its changes are then tracked for commits).
fn durable_core(store: &mut MemoryStorage) -> Core {
    let mut b = core("b", 2, RegionConfig::default(), &[]);
    b.restore(store.load().unwrap(), now()).unwrap();
    declare::<GCounter>(&mut b, "t");
    b
}

/// Merges slices until the transfer is published (the queue empties).
fn merge_until_published(core: &mut Core) -> (usize, Outgoing) {
    let mut slices = 0;
    let mut out = Vec::new();
    while !core.transfers.is_empty() {
        out.extend(core.merge_transfer_slice(now()));
        slices += 1;
    }
    (slices, out)
}

/// Issue 13's atomicity across issue 10's slices: while a transfer is
/// merged slice by slice, a reader sees none of it, and the vector is not
/// taken in; after the last slice, all of it at once.
#[test]
fn a_transfer_merged_in_slices_is_never_shown_in_part() {
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    pending_push(&mut b);
    let mut slices = 0;
    while !b.transfers.is_empty() {
        assert_eq!(
            shown(&b),
            0,
            "after {slices} slices: part of the transfer shown"
        );
        assert_eq!(
            b.applied.get(rid(1)),
            0,
            "the vector is taken in at the publish"
        );
        let out = b.merge_transfer_slice(now());
        slices += 1;
        if !b.transfers.is_empty() {
            assert!(out.is_empty(), "nothing confirmed before the publish");
        } else {
            assert!(
                to(&out, "a")
                    .iter()
                    .any(|m| matches!(m, Message::SyncDone { .. })),
                "the push is confirmed at its publish"
            );
        }
    }
    assert!(
        slices as u64 >= KEYS / TRANSFER_MERGE_SLICE_KEYS_MAX as u64,
        "{slices} slices"
    );
    assert_eq!(shown(&b), KEYS, "published whole");
    assert_eq!(b.applied.get(rid(1)), KEYS, "with its vector");
    assert!(b.folding, "folded after the publish");
    let mut folds = 0;
    while b.transfer_work_pending() {
        b.merge_transfer_slice(now());
        folds += 1;
        assert_eq!(shown(&b), KEYS, "fold {folds}: a folded value went missing");
    }
    assert!(folds > 1, "folded in slices");
    assert_eq!(b.counters.sync_states_received, KEYS);
    assert_eq!(b.counters.rejected_frames, 0);
}

/// A local write and an applied batch that touch keys while a transfer is
/// pending survive its publish, before and after the fold.
#[test]
fn writes_made_while_a_transfer_is_pending_survive_its_publish() {
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    pending_push(&mut b);
    // Half the transfer merged: half the keys have a pending value.
    for _ in 0..10 {
        b.merge_transfer_slice(now());
    }
    for key in 0..KEYS {
        write_local(&mut b, "t", key);
    }
    let entries: Vec<(u64, Vec<u8>)> = (0..KEYS).map(|key| (key, gc(3, 5))).collect();
    // Not `feed`: it would merge the rest of the transfer too.
    b.on_message("c", batch(3, 1, &[], "t", &entries), now());
    let batch_lost = |b: &Core| (0..KEYS).filter(|&key| count(b, "t", key, 3) != 5).count();
    assert_eq!(batch_lost(&b), 0, "c's batch applied");
    assert!(!b.transfers.is_empty(), "still pending");
    assert_eq!(shown(&b), 0);
    merge_until_published(&mut b);
    let lost = |b: &Core| (0..KEYS).filter(|&key| count(b, "t", key, 2) != 1).count();
    assert_eq!(lost(&b), 0, "published: local writes made meanwhile lost");
    assert_eq!(batch_lost(&b), 0, "published: c's batch lost");
    assert_eq!(shown(&b), KEYS);
    while b.transfer_work_pending() {
        b.merge_transfer_slice(now());
    }
    assert_eq!(lost(&b), 0, "folded: local writes lost");
    assert_eq!(batch_lost(&b), 0, "folded: c's batch lost");
    assert_eq!(shown(&b), KEYS);
}

/// A crash while a transfer is merged in slices: a commit stores what
/// was written locally (acknowledged), not the pending values nor the
/// transfer's vector; after the publish, a commit stores both.
#[test]
fn a_crash_mid_transfer_loses_the_transfer_whole_and_nothing_acknowledged() {
    let mut store = MemoryStorage::default();
    let mut b = durable_core(&mut store);
    pending_push(&mut b);
    for _ in 0..10 {
        b.merge_transfer_slice(now());
    }
    write_local(&mut b, "t", 0);
    write_local(&mut b, "t", KEYS - 1);
    let commit = b.prepare_commit().expect("a write to commit");
    store.commit(&commit).unwrap();
    let progress = commit.progress.as_ref().expect("progress");
    assert_eq!(progress.applied.get(rid(1)), 0, "unpublished: not claimed");
    assert_eq!(commit.states.len(), 2, "only the local writes are stored");
    // Crash: the pending transfer is gone; the next exchange repairs it.
    let restarted = durable_core(&mut store);
    assert_eq!(
        count(&restarted, "t", 0, 2),
        1,
        "an acknowledged write lost"
    );
    assert_eq!(count(&restarted, "t", KEYS - 1, 2), 1);
    assert_eq!(shown(&restarted), 0, "nothing of the transfer stored");
    assert_eq!(restarted.applied.get(rid(1)), 0, "its vector not stored");
    // Without the crash: published, then committed, it is all stored.
    merge_until_published(&mut b);
    assert!(b.folding, "not folded yet");
    let commit = b.prepare_commit().expect("the transfer to commit");
    store.commit(&commit).unwrap();
    let restarted = durable_core(&mut store);
    assert_eq!(
        shown(&restarted),
        KEYS,
        "what the stored vector claims is stored"
    );
    assert_eq!(restarted.applied.get(rid(1)), KEYS);
    assert_eq!(count(&restarted, "t", 0, 2), 1);
    assert!(!b.folding, "the commit folded what was left first");
}

/// A peer cannot queue transfers without bound: past
/// `TRANSFERS_QUEUED_PER_PEER_MAX` of its own waiting, a complete one is
/// dropped (the exchange it answered ends; a later one repairs it).
#[test]
fn transfers_queued_per_peer_are_bounded() {
    use super::super::shadow_merge::TRANSFERS_QUEUED_PER_PEER_MAX;
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    let mut a = core("a", 1, RegionConfig::default(), &["t"]);
    for key in 0..KEYS {
        write(&mut a, "t", key);
    }
    up(&mut b, "a", now());
    up(&mut a, "b", now());
    for round in 0..TRANSFERS_QUEUED_PER_PEER_MAX + 1 {
        a.syncs.clear();
        let request = a.start_sync("b", now());
        let reply = b.on_message("a", request[0].1.clone(), now());
        let push = feed(&mut a, "b", to(&reply, "a"), now());
        for message in to(&push, "b") {
            b.on_message("a", message, now());
        }
        let expected = (round + 1).min(TRANSFERS_QUEUED_PER_PEER_MAX);
        assert_eq!(b.transfers.len(), expected, "round {round}");
    }
    merge_until_published(&mut b);
    assert_eq!(shown(&b), KEYS, "the queued ones still merge");
}

/// A transfer small enough to merge at once still waits behind a queued
/// one: merged (and its vector taken in) first, it could claim writes the
/// queued transfer holds pending.
#[test]
fn a_small_transfer_behind_a_queued_one_waits_its_turn() {
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    pending_push(&mut b);
    let mut c = core("c", 3, RegionConfig::default(), &["t"]);
    write(&mut c, "t", KEYS + 1);
    up(&mut c, "b", now());
    let request = up(&mut b, "c", now()); // b < c: b starts
    let reply = c.on_message("b", to(&request, "c")[0].clone(), now());
    for message in to(&reply, "b") {
        b.on_message("c", message, now());
    }
    assert_eq!(b.transfers.len(), 2, "queued behind a's");
    assert_eq!(count(&b, "t", KEYS + 1, 3), 0, "shown before its turn");
    merge_until_published(&mut b);
    assert_eq!(count(&b, "t", KEYS + 1, 3), 1);
    assert_eq!(b.applied.get(rid(3)), 1);
    assert_eq!(shown(&b), KEYS);
}

/// Issue 10 item 2: an exchange that starts while a published transfer is
/// folded does not fold the rest in one hold (its digests would): a peer's
/// request waits until the last fold slice and is answered then, and an
/// exchange we would start is started by the tick once folded.
#[test]
fn an_exchange_waits_while_a_published_transfer_is_folded() {
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    let mut a = pending_push(&mut b);
    merge_until_published(&mut b);
    assert!(b.folding, "published, not folded yet");
    // b < c: b would start at once.
    let mut c = core("c", 3, RegionConfig::default(), &["t"]);
    write(&mut c, "t", KEYS + 1);
    up(&mut c, "b", now());
    let started = up(&mut b, "c", now());
    assert!(to(&started, "c").is_empty(), "not started while folding");
    assert!(b.wants_exchange.contains("c"), "started once folded");
    // a starts a new exchange meanwhile.
    a.syncs.clear();
    let request = a.start_sync("b", now());
    let out = b.on_message("a", request[0].1.clone(), now());
    assert!(to(&out, "a").is_empty(), "answered once folded");
    assert!(b.folding, "the request folded the rest in one hold");
    let mut folds = 0;
    let mut answer = Vec::new();
    while b.transfer_work_pending() {
        answer.extend(b.merge_transfer_slice(now()));
        folds += 1;
        assert_eq!(shown(&b), KEYS, "fold {folds}: a folded value went missing");
    }
    assert!(folds > 1, "folded in slices after the request");
    assert!(
        to(&answer, "a")
            .iter()
            .any(|m| matches!(m, Message::SyncStates { .. })),
        "a's request answered after the fold: {answer:?}"
    );
    let started = b.due_syncs(now());
    assert!(
        to(&started, "c")
            .iter()
            .any(|m| matches!(m, Message::SyncRequest { .. })),
        "the exchange with c started once folded"
    );
    assert_eq!(b.counters.rejected_frames, 0);
}
