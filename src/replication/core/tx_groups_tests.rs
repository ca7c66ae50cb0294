//! Transaction groups in transfers (see `core::tx_groups`), driven
//! without I/O on the default config.

use super::*;
use crate::crdt::LwwRegister;
use crate::replication::core::tx_groups::{TRANSFER_GROUP_MEMBERS_MAX, TRANSFER_GROUPS_PROTOCOL};
use crate::replication::message::GroupedChunk;

type Reg = LwwRegister<String>;

/// Groups as (table position in `[hits, p]`, key) lists.
type Groups = Vec<Vec<(u32, u64)>>;

/// `c` (replica 3, tables `hits` (counters) and `p` (registers)), greeted
/// by `b` (replica 2), with an exchange open: its session.
fn receiver() -> (Core, u64) {
    let mut c = core("c", 3, RegionConfig::default(), &["hits"]);
    declare::<Reg>(&mut c, "p");
    up(&mut c, "b", now());
    c.on_message("b", hello(2, 1, &[]), now());
    let request = c.start_sync("b", now());
    let Message::SyncRequest { session, .. } = request[0].1 else {
        unreachable!()
    };
    (c, session)
}

/// A register value stamped `ahead_ms` past `c`'s wall clock by replica 7.
fn register(c: &Core, ahead_ms: u64) -> Vec<u8> {
    let offset = c.hlc.max_offset().as_millis() as u64;
    let mut reg = Reg::new();
    reg.set(
        Stamp::new(Timestamp::new(WALL_MS + offset + ahead_ms, 0), rid(7)),
        "ordered".into(),
    );
    bare(&reg)
}

/// One grouped chunk from `b`: counters `counters` of table `hits` (key,
/// value), the register `reg` under key 9 of `p`, and `groups` naming
/// (table position in `[hits, p]`, key).
fn grouped(session: u64, counters: &[(u64, Vec<u8>)], reg: &[u8], groups: Groups) -> Message {
    let mut packed = Vec::new();
    for (key, value) in counters {
        message::push_entry(&mut packed, 0, &k(*key), value);
    }
    message::push_entry(&mut packed, 1, &k(9), reg);
    let tables: Vec<String> = vec!["hits".into(), "p".into()];
    Message::SyncStatesGrouped(Box::new(GroupedChunk {
        session,
        push: false,
        chunk: 0,
        chunks: 1,
        sent_at: Timestamp::new(WALL_MS, 0),
        buckets: vec![],
        tables: tables.clone(),
        entries: Blob(packed),
        applied: Some(vv(&[(2, 1), (7, 1)])),
        group_tables: tables,
        groups: groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|(t, key)| (t, Blob(k(key).to_vec())))
                    .collect()
            })
            .collect(),
    }))
}

/// The gap of issue 13: a transaction wrote the register at 9 (stamped
/// ahead of `c`'s bound) and the counter at 1; a second one wrote 1 and
/// 3 (overlapping at 1). `c` sets aside 9, and with it 1 and 3; the
/// unrelated 4 merges.
#[test]
fn a_transfer_sets_aside_every_value_of_a_transaction_with_one_ahead() {
    let (mut c, session) = receiver();
    let reg = register(&c, 200);
    let counters = [(1, gc(2, 1)), (3, gc(2, 1)), (4, gc(2, 1))];
    let groups = vec![vec![(0, 1), (1, 9)], vec![(0, 3), (0, 1)]];
    c.on_message("b", grouped(session, &counters, &reg, groups), now());
    assert!(read_reg(&c, 9).is_none(), "the value ahead is set aside");
    assert_eq!(count(&c, "hits", 1, 2), 0, "its transaction's counter too");
    assert_eq!(
        count(&c, "hits", 3, 2),
        0,
        "and one of a transaction overlapping it"
    );
    assert_eq!(count(&c, "hits", 4, 2), 1, "the rest merges");
    assert_eq!(c.counters.values_ahead, 1);
    assert_eq!(c.counters.transaction_values_set_aside, 2);
    assert_eq!(c.counters.rejected_frames, 0);
    assert_eq!(c.applied.get(rid(2)), 0, "the vector is not believed");
    assert_eq!(c.tx_groups.len(), 2, "kept, to be named in c's transfers");

    // Once the clock allows, a later exchange brings all of them at once.
    let session = {
        let request = c.start_sync("b", now());
        let Message::SyncRequest { session, .. } = request[0].1 else {
            unreachable!()
        };
        session
    };
    let within = {
        let mut r = Reg::new();
        r.set(
            Stamp::new(Timestamp::new(WALL_MS + 10, 0), rid(7)),
            "ordered".into(),
        );
        bare(&r)
    };
    let groups = vec![vec![(0, 1), (1, 9)], vec![(0, 3), (0, 1)]];
    c.on_message("b", grouped(session, &counters, &within, groups), now());
    assert!(read_reg(&c, 9).is_some());
    assert_eq!(count(&c, "hits", 1, 2), 1);
    assert_eq!(count(&c, "hits", 3, 2), 1);
    assert_eq!(
        c.counters.transaction_values_set_aside, 2,
        "nothing more set aside"
    );
    assert_eq!(c.applied.get(rid(2)), 1, "now believed");
}

/// Review finding 6 stays fixed with groups: an ahead value in no group
/// (a third region's hot key) blocks nothing else of the transfer, not
/// even the grouped values.
#[test]
fn an_ahead_value_in_no_group_blocks_nothing_else() {
    let (mut c, session) = receiver();
    let reg = register(&c, 200);
    let counters = [(1, gc(2, 1)), (3, gc(2, 1))];
    let groups = vec![vec![(0, 1), (0, 3)]];
    c.on_message("b", grouped(session, &counters, &reg, groups), now());
    assert!(read_reg(&c, 9).is_none(), "the value ahead is set aside");
    assert_eq!(count(&c, "hits", 1, 2), 1);
    assert_eq!(count(&c, "hits", 3, 2), 1);
    assert_eq!(c.counters.values_ahead, 1);
    assert_eq!(c.counters.transaction_values_set_aside, 0);
    assert_eq!(c.counters.rejected_frames, 0);
}

/// Hostile groups: naming a key the transfer does not carry, a table
/// outside their list, or over their bounds. Each is refused and counted,
/// and nothing of the transfer is merged.
#[test]
fn hostile_groups_are_refused_and_nothing_is_merged() {
    let limit = vec![(0u32, 1u64); TRANSFER_GROUP_MEMBERS_MAX + 1];
    let cases: Vec<(Groups, RejectReason)> = vec![
        (vec![vec![(0, 1), (0, 77)]], RejectReason::Malformed),
        (vec![vec![(0, 1), (5, 1)]], RejectReason::Malformed),
        (vec![limit], RejectReason::OverLimit),
    ];
    for (i, (groups, reason)) in cases.into_iter().enumerate() {
        let (mut c, session) = receiver();
        let reg = register(&c, 0);
        let counters = [(1, gc(2, 1)), (3, gc(2, 1))];
        c.on_message("b", grouped(session, &counters, &reg, groups), now());
        assert_eq!(c.counters.rejected_frames, 1, "case {i}");
        assert_eq!(c.counters.rejected_by_reason[reason.index()], 1, "case {i}");
        assert_eq!(c.counters.tx_groups_refused, 1, "case {i}");
        assert_eq!(count(&c, "hits", 1, 2), 0, "case {i}: nothing merged");
        assert_eq!(count(&c, "hits", 3, 2), 0, "case {i}: nothing merged");
        assert!(read_reg(&c, 9).is_none(), "case {i}: nothing merged");
        assert!(c.syncs.is_empty(), "case {i}: the exchange is aborted");
        assert!(
            c.peers["b"].needs_sync,
            "case {i}: the peer stays due for repair"
        );
        assert_eq!(c.tx_groups.len(), 0, "case {i}: nothing learned");
    }
}

/// A protocol-7 transfer ends with its groups: those of the sender's
/// transactions cut down to the keys it ships; the receiver keeps them
/// (and names them in its own transfers: a relay). To a protocol-6 peer
/// the transfer is plain chunks.
#[test]
fn a_transfer_names_the_senders_transactions_and_the_receiver_keeps_them() {
    let config = RegionConfig::default();
    let (mut a, mut b, t0) = greeted_pair(config.clone(), config);
    assert_eq!(a.peers["b"].protocol, TRANSFER_GROUPS_PROTOCOL);
    for key in [1, 2, 3] {
        write(&mut a, "hits", key);
    }
    let hits: Arc<str> = Arc::from("hits");
    a.tx_groups
        .record([(hits.clone(), k(1)), (hits.clone(), k(2))]);
    a.tx_groups
        .record([(hits.clone(), k(3)), (hits.clone(), k(404))]);
    let out = b.start_sync("a", t0);
    let reply = feed(&mut a, "b", to(&out, "a"), t0);
    let chunks = to(&reply, "b");
    let Some(Message::SyncStatesGrouped(last)) = chunks.last() else {
        panic!("the transfer ends with its groups: {chunks:?}")
    };
    assert_eq!(
        last.groups.len(),
        1,
        "404 is not shipped: {:?}",
        last.groups
    );
    assert_eq!(last.groups[0].len(), 2);
    feed(&mut b, "a", chunks, t0);
    assert_eq!(count(&b, "hits", 2, 1), 1);
    assert_eq!(b.tx_groups.len(), 1, "kept for its own transfers");
    assert_eq!(b.counters.rejected_frames, 0);

    a.peers.get_mut("b").expect("a peer").protocol = TRANSFER_GROUPS_PROTOCOL - 1;
    let out = b.start_sync("a", t0);
    let reply = feed(&mut a, "b", to(&out, "a"), t0);
    assert!(
        to(&reply, "b")
            .iter()
            .all(|m| matches!(m, Message::SyncStates { .. })),
        "a protocol-6 peer gets today's transfer"
    );
}

/// Merges `c`'s queued transfers slice by slice, as the engine does
/// between events; checks after every slice that neither value of the
/// transaction (9, 1) is shown without the other.
fn merge_in_slices(c: &mut Core) -> Outgoing {
    let mut out = Vec::new();
    let mut slices = 0;
    while c.transfer_work_pending() {
        out.extend(c.merge_transfer_slice(now()));
        slices += 1;
        assert_eq!(
            read_reg(c, 9).is_some(),
            count(c, "hits", 1, 2) == 1,
            "after {slices} slices: part of the transaction shown"
        );
    }
    assert!(slices > 2, "merged in slices: {slices}");
    out
}

/// The same gap in a transfer large enough to be merged in slices
/// (`shadow_merge`): the groups' members are deferred out of the slices
/// and merged together after the last one, so the closure of the value
/// set aside reaches members of any slice.
#[test]
fn a_transfer_merged_in_slices_sets_aside_every_value_of_a_transaction_with_one_ahead() {
    let (mut c, session) = receiver();
    let reg = register(&c, 200);
    let mut counters = vec![(1, gc(2, 1)), (3, gc(2, 1)), (4, gc(2, 1))];
    counters
        .extend((100..100 + 3 * TRANSFER_MERGE_SLICE_KEYS_MAX as u64).map(|key| (key, gc(2, 1))));
    let groups = vec![vec![(0, 1), (1, 9)], vec![(0, 3), (0, 1)]];
    c.on_message("b", grouped(session, &counters, &reg, groups), now());
    assert!(c.transfer_work_pending(), "queued to be merged in slices");
    merge_in_slices(&mut c);
    assert!(read_reg(&c, 9).is_none(), "the value ahead is set aside");
    assert_eq!(count(&c, "hits", 1, 2), 0, "its transaction's counter too");
    assert_eq!(count(&c, "hits", 3, 2), 0, "and one of an overlapping one");
    assert_eq!(count(&c, "hits", 4, 2), 1, "the rest merges");
    assert_eq!(count(&c, "hits", 150, 2), 1, "the rest merges");
    assert_eq!(c.counters.values_ahead, 1);
    assert_eq!(c.counters.transaction_values_set_aside, 2);
    assert_eq!(c.counters.rejected_frames, 0);
    assert_eq!(c.applied.get(rid(2)), 0, "the vector is not believed");
    assert_eq!(c.tx_groups.len(), 2, "kept, to be named in c's transfers");

    // Within the clock's bound, the members merge with the rest.
    let (mut c, session) = receiver();
    let reg = register(&c, 0);
    let groups = vec![vec![(0, 1), (1, 9)]];
    c.on_message("b", grouped(session, &counters, &reg, groups), now());
    merge_in_slices(&mut c);
    assert!(read_reg(&c, 9).is_some());
    assert_eq!(count(&c, "hits", 1, 2), 1);
    assert_eq!(c.counters.transaction_values_set_aside, 0);
    assert_eq!(c.applied.get(rid(2)), 1, "believed");
}

/// Groups naming a key a sliced transfer does not carry are refused at
/// its end: nothing of it is published.
#[test]
fn hostile_groups_refuse_a_transfer_merged_in_slices_whole() {
    let (mut c, session) = receiver();
    let reg = register(&c, 0);
    let counters: Vec<(u64, Vec<u8>)> = (100..100 + 3 * TRANSFER_MERGE_SLICE_KEYS_MAX as u64)
        .map(|key| (key, gc(2, 1)))
        .collect();
    let groups = vec![vec![(0, 100), (0, 77)]];
    c.on_message("b", grouped(session, &counters, &reg, groups), now());
    while c.transfer_work_pending() {
        c.merge_transfer_slice(now());
    }
    assert_eq!(c.counters.rejected_frames, 1);
    assert_eq!(c.counters.tx_groups_refused, 1);
    assert_eq!(count(&c, "hits", 150, 2), 0, "nothing published");
    assert!(read_reg(&c, 9).is_none(), "nothing published");
    assert!(c.peers["b"].needs_sync, "the peer stays due for repair");
}

/// Whether `out` holds a chunk of a transfer to `peer`.
fn carries_transfer(out: &Outgoing, peer: &str) -> bool {
    to(out, peer).iter().any(|m| {
        matches!(
            m,
            Message::SyncStates { .. } | Message::SyncStatesGrouped(_)
        )
    })
}

/// A transfer to a peer whose protocol announcement was lost is held, not
/// sent plain (a peer of protocol 7 would merge it without its groups,
/// issue 13's checker at seed 13): it leaves with its groups once the
/// announcement asked for again arrives.
#[test]
fn a_transfer_waits_for_a_lost_protocol_announcement() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let mut b = core("b", 2, RegionConfig::default(), &["hits"]);
    let hits: Arc<str> = Arc::from("hits");
    for key in [1, 2] {
        write(&mut b, "hits", key);
    }
    b.tx_groups.record([(hits.clone(), k(1)), (hits, k(2))]);
    let t0 = now();
    let is_protocol = |m: &Message| matches!(m, Message::Protocol { .. });
    // a starts the exchange (first contact); its announcement is lost on
    // its way to b, its hello and request arrive.
    let from_a = a.peer_up("b", t0);
    let from_b = b.peer_up("a", t0);
    let replies_b = deliver(&mut b, "a", from_a, t0, |m| !is_protocol(m));
    assert!(!carries_transfer(&replies_b, "a"), "held: {replies_b:?}");
    assert_eq!(b.counters.transfers_held, 1);
    assert!(b.due_syncs(t0).is_empty(), "still held");
    let replies_a = deliver(&mut a, "b", from_b, t0, |_| true);
    deliver(&mut a, "b", replies_b, t0, |_| true);
    deliver(&mut b, "a", replies_a, t0, |_| true);
    // b asks again; a answers; the transfer leaves with its groups.
    let later = t0 + b.config.ack_timeout;
    let again = b.due_announcements(later);
    let answer = deliver(&mut a, "b", again, later, |_| true);
    deliver(&mut b, "a", answer, later, |_| true);
    assert_eq!(b.peers["a"].protocol, TRANSFER_GROUPS_PROTOCOL);
    let released = b.due_syncs(later);
    let chunks = to(&released, "a");
    let Some(Message::SyncStatesGrouped(last)) = chunks.last() else {
        panic!("the held transfer leaves with its groups: {chunks:?}")
    };
    assert_eq!(last.groups.len(), 1);
    feed(&mut a, "b", chunks, later);
    assert_eq!(count(&a, "hits", 2, 2), 1, "merged");
    assert_eq!(a.tx_groups.len(), 1, "a kept the group");
    assert_eq!(a.counters.rejected_frames + b.counters.rejected_frames, 0);
    assert!(b.due_syncs(later).is_empty(), "sent once");
}

/// A peer of protocol 1 never announces: a transfer to it is held until
/// the last announcement went unanswered for an `ack_timeout`, then
/// leaves plain (which it decodes), and the connection's next transfers
/// go at once.
#[test]
fn a_transfer_to_a_protocol_1_peer_leaves_plain_once_its_protocol_is_settled() {
    let mut a = core("a", 1, RegionConfig::default(), &["hits"]);
    let old_config = RegionConfig {
        protocol_version_max: 1,
        ..RegionConfig::default()
    };
    let mut old = core("b", 2, old_config, &["hits"]);
    write(&mut old, "hits", 5);
    let t0 = now();
    let from_a = a.peer_up("b", t0);
    let from_old = old.peer_up("a", t0);
    let replies_old = deliver(&mut old, "a", from_a, t0, |_| true);
    let replies_a = deliver(&mut a, "b", from_old, t0, |_| true);
    // The old build's transfer arrives: a merges it and holds its push.
    let pushed = deliver(&mut a, "b", replies_old, t0, |_| true);
    deliver(&mut old, "a", replies_a, t0, |_| true);
    assert_eq!(count(&a, "hits", 5, 2), 1, "merged");
    assert!(!carries_transfer(&pushed, "b"), "held: {pushed:?}");
    assert_eq!(a.counters.transfers_held, 1);
    let step = a.config.ack_timeout;
    let max = crate::region::PROTOCOL_ANNOUNCEMENTS_MAX;
    let mut released = Vec::new();
    for i in 1..=max + 1 {
        let at = t0 + step * i;
        deliver(&mut old, "a", a.due_announcements(at), at, |_| true);
        released = a.due_syncs(at);
        if i <= max {
            assert!(!carries_transfer(&released, "b"), "still held at {i}");
        }
    }
    let chunks = to(&released, "b");
    assert!(
        !chunks.is_empty()
            && chunks
                .iter()
                .all(|m| matches!(m, Message::SyncStates { .. })),
        "plain once settled: {chunks:?}"
    );
    let before = old.counters.rejected_frames;
    feed(&mut old, "a", chunks, t0 + step * (max + 1));
    assert_eq!(old.counters.rejected_frames, before, "decoded");
    assert!(a.peers["b"].speaks_below(TRANSFER_GROUPS_PROTOCOL, PROTOCOL_VERSION));
}
