//! A long run of ready buffered batches applied a bounded slice per hold
//! of the lock (see `receive::DRAIN_SLICE_ENTRIES_MAX`): never a batch in
//! part, never one before what it depends on, the vector and the
//! acknowledgements covering exactly what is applied, and local writes made
//! between the slices kept.

use super::*;
use crate::replication::core::receive::DRAIN_SLICE_ENTRIES_MAX;

/// Writes per batch of `a` these tests send: four batches fill a slice.
const BATCH_LEN: u64 = DRAIN_SLICE_ENTRIES_MAX as u64 / 4;
/// Batches of `a`: three slices' worth.
const BATCHES: u64 = 12;
/// The key `c`'s batch writes (none of `a`'s).
const C_KEY: u64 = 1_000_000;

/// `a`'s batch `i` (from 0): its writes `i * BATCH_LEN + 1 ..`, one per key
/// `i * BATCH_LEN ..` (all of it one transaction: a batch is shown whole).
fn a_batch(i: u64) -> Message {
    let entries: Vec<(u64, Vec<u8>)> = (i * BATCH_LEN..(i + 1) * BATCH_LEN)
        .map(|key| (key, gc(1, 1)))
        .collect();
    batch(1, i * BATCH_LEN + 1, &[], "t", &entries)
}

/// How many of `a`'s batch `i` keys `core` shows.
fn shown_of(core: &Core, i: u64) -> u64 {
    (i * BATCH_LEN..(i + 1) * BATCH_LEN)
        .filter(|&key| count(core, "t", key, 1) == 1)
        .count() as u64
}

/// What `b` holds of every batch, checked against its vector: each batch
/// shown whole or not at all, the vector naming exactly the batches shown,
/// and `c`'s write never without the last of `a`'s, which it depends on.
fn check_holds(b: &Core, slices: u64) -> u64 {
    let mut whole = 0;
    for i in 0..BATCHES {
        let shown = shown_of(b, i);
        assert!(
            shown == 0 || shown == BATCH_LEN,
            "after {slices} slices: batch {i} shown in part ({shown} of {BATCH_LEN} keys)"
        );
        let covered = b.applied.get(rid(1)) >= (i + 1) * BATCH_LEN;
        assert_eq!(
            shown == BATCH_LEN,
            covered,
            "after {slices} slices: batch {i} shown {shown}, vector {}",
            b.applied.get(rid(1))
        );
        whole += u64::from(shown == BATCH_LEN);
    }
    if count(b, "t", C_KEY, 3) == 1 {
        assert_eq!(
            shown_of(b, BATCHES - 1),
            BATCH_LEN,
            "after {slices} slices: c's write shown before a's it depends on"
        );
    }
    whole
}

/// Issue 10 item 2, the receiver's remaining holds: `b` buffers eleven of
/// `a`'s batches ahead of the first and a batch of `c` depending on the
/// last of them; the first arrives and makes all twelve ready. The hold
/// that takes it applies one slice, the engine's later holds the rest, a
/// slice each, with local writes in between; at the end everything is
/// held, acknowledged, and counted, nothing refused, dropped or repaired.
#[test]
fn a_long_run_of_buffered_batches_is_applied_over_several_holds() {
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    up(&mut b, "a", now());
    up(&mut b, "c", now());
    for i in 1..BATCHES {
        let out = b.on_message("a", a_batch(i), now());
        assert!(
            matches!(to(&out, "a")[..], [Message::Ack { applied: 0, .. }]),
            "buffered: a gap before it"
        );
    }
    let c_batch = batch(3, 1, &[(1, BATCHES * BATCH_LEN)], "t", &[(C_KEY, gc(3, 1))]);
    b.on_message("c", c_batch, now());
    assert_eq!(b.buffer.len() as u64, BATCHES);
    assert_eq!(check_holds(&b, 0), 0, "nothing applied yet");

    let out = b.on_message("a", a_batch(0), now());
    let slice = DRAIN_SLICE_ENTRIES_MAX as u64 / BATCH_LEN;
    assert_eq!(
        check_holds(&b, 0),
        slice,
        "the arrival's hold applies one slice"
    );
    assert!(
        matches!(to(&out, "a")[..], [Message::Ack { applied, .. }] if applied == slice * BATCH_LEN),
        "its acknowledgement covers what it applied: {out:?}"
    );
    assert!(b.drain_work_pending(), "the rest is left to the engine");

    let mut slices = 0;
    let mut acked = slice * BATCH_LEN;
    while b.drain_work_pending() {
        // A local write between two holds, on a key a later slice brings.
        write(&mut b, "t", (BATCHES - 1) * BATCH_LEN);
        let out = b.drain_buffer_slice();
        slices += 1;
        check_holds(&b, slices);
        for message in to(&out, "a") {
            let Message::Ack { origin, applied } = message else {
                panic!("only acknowledgements: {message:?}");
            };
            assert_eq!(origin, rid(1));
            assert!(applied > acked, "each slice acknowledges what it applied");
            assert_eq!(applied, b.applied.get(rid(1)), "and no more");
            acked = applied;
        }
        assert!(slices <= BATCHES, "the drain ends");
    }
    assert!(b.drain_buffer_slice().is_empty(), "nothing left to do");
    assert_eq!(check_holds(&b, slices), BATCHES, "every batch applied");
    assert_eq!(acked, BATCHES * BATCH_LEN, "a heard of all of it");
    assert_eq!(count(&b, "t", C_KEY, 3), 1, "c's batch applied after");
    assert_eq!(
        count(&b, "t", (BATCHES - 1) * BATCH_LEN, 2),
        slices,
        "the writes between the holds kept"
    );
    assert!(b.buffer.is_empty());
    assert!(b.counters.drain_slices > 1, "applied over several holds");
    assert_eq!(b.counters.drain_slices, slices);
    assert_eq!(b.counters.batches_applied, BATCHES + 1);
    assert_eq!(b.counters.batches_dropped, 0);
    assert_eq!(b.counters.rejected_frames, 0);
    assert_eq!(b.counters.syncs_completed, 0, "no repair hid a gap");
}

/// A batch that arrives while a run is being drained waits its turn: the
/// buffer is not empty, so it is not applied ahead of what it follows.
#[test]
fn a_batch_arriving_mid_drain_keeps_causal_order() {
    let mut b = core("b", 2, RegionConfig::default(), &["t"]);
    up(&mut b, "a", now());
    up(&mut b, "c", now());
    for i in 1..BATCHES {
        b.on_message("a", a_batch(i), now());
    }
    b.on_message("a", a_batch(0), now());
    assert!(b.drain_work_pending());
    // c's batch depends on a's last: not ready until the drain reaches it.
    let c_batch = batch(3, 1, &[(1, BATCHES * BATCH_LEN)], "t", &[(C_KEY, gc(3, 1))]);
    let out = b.on_message("c", c_batch, now());
    check_holds(&b, 0);
    assert!(
        matches!(to(&out, "c")[..], [Message::Ack { applied: 0, .. }]),
        "not applied ahead of a's batches: {out:?}"
    );
    let mut slices = 0;
    while b.drain_work_pending() {
        let out = b.drain_buffer_slice();
        slices += 1;
        check_holds(&b, slices);
        if count(&b, "t", C_KEY, 3) == 1 {
            assert!(
                out.iter().any(|(to, m)| to == "c"
                    && matches!(m, Message::Ack { origin, applied: 1 } if *origin == rid(3))),
                "c hears its batch applied: {out:?}"
            );
        }
    }
    assert_eq!(count(&b, "t", C_KEY, 3), 1);
    assert_eq!(check_holds(&b, slices), BATCHES);
    assert!(b.counters.drain_slices > 1);
    assert_eq!(b.counters.rejected_frames, 0);
}
