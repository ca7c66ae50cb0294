//! Session tokens are a join semilattice whose order is the version vector
//! order; sessions' requirements only grow and shrink with the guarantees
//! chosen; the binary and text forms are bounded, round-trip, and refuse
//! hostile input with a typed error, never a panic.

use archipelago::clock::{ReplicaId, VersionVector};
use archipelago::session::{
    Guarantee, Guarantees, Session, SessionToken, TOKEN_REPLICAS_MAX, TOKEN_TEXT_BYTES_MAX,
    TOKEN_TEXT_PREFIX_BYTES, TOKEN_TEXT_PREFIX_V1, TOKEN_TEXT_PREFIX_V2, TokenParseError,
};
use archipelago::wire::{self, FixedVectorError, WireError};
use proptest::prelude::*;

/// Few replicas and small counters, so tokens overlap, tie and differ.
fn vector() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0..6u32, 0..5u64), 0..8).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(r, c)| (ReplicaId::from(r), c))
            .collect()
    })
}

fn token() -> impl Strategy<Value = SessionToken> {
    vector().prop_map(SessionToken::from_vector)
}

/// Any replica ids and counters, for the codecs: ids of 32 bits (the
/// narrow layout, `v1.`) as often as any 64-bit ids (`v2.`, mostly wide).
fn wide_token() -> impl Strategy<Value = SessionToken> {
    let ids = prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>()];
    prop::collection::vec((ids, any::<u64>()), 0..40).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(r, c)| (ReplicaId::new(r), c))
            .collect::<VersionVector>()
            .into()
    })
}

fn guarantees() -> impl Strategy<Value = Guarantees> {
    prop::collection::vec(prop::sample::select(Guarantee::ALL.to_vec()), 0..5)
        .prop_map(|gs| gs.into_iter().collect())
}

#[derive(Clone, Debug)]
enum Event {
    Read(SessionToken),
    Write(SessionToken),
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            token().prop_map(Event::Read),
            token().prop_map(Event::Write)
        ],
        0..12,
    )
}

fn record(session: &mut Session, event: &Event) {
    match event {
        Event::Read(t) => session.record_read(t),
        Event::Write(t) => session.record_write(t),
    }
}

/// `a` requires no more than `b`.
fn weaker(a: &SessionToken, b: &SessionToken) -> bool {
    a.covered_by(b.as_vector())
}

fn joined(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut out = a.clone();
    out.merge(b);
    out
}

fn vv(entries: &[(u64, u64)]) -> VersionVector {
    entries
        .iter()
        .map(|&(r, c)| (ReplicaId::new(r), c))
        .collect()
}

proptest! {
    #[test]
    fn token_join_is_commutative_associative_idempotent(a in token(), b in token(), c in token()) {
        prop_assert_eq!(a.join(&b), b.join(&a));
        prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
        prop_assert_eq!(a.join(&a), a.clone());
        let mut merged = a.clone();
        merged.merge(&b);
        prop_assert_eq!(&merged, &a.join(&b));
        prop_assert!(weaker(&a, &merged) && weaker(&b, &merged));
    }

    /// `t.covered_by(v)` exactly when joining `t` into `v` changes nothing,
    /// which is `v >= t` in the causal order; `missing` is empty exactly
    /// then, and names each shortfall otherwise.
    #[test]
    fn covered_by_agrees_with_the_vector_order(t in token(), v in vector()) {
        let covered = t.covered_by(&v);
        prop_assert_eq!(covered, joined(&v, t.as_vector()) == v);
        prop_assert_eq!(covered, v.dominates(t.as_vector()));
        let missing: Vec<_> = t.missing(&v).collect();
        prop_assert_eq!(covered, missing.is_empty());
        for m in &missing {
            prop_assert_eq!(m.needed, t.as_vector().get(m.replica));
            prop_assert_eq!(m.applied, v.get(m.replica));
            prop_assert!(m.applied < m.needed);
        }
        let behind = t.as_vector().iter().filter(|&(r, c)| v.get(r) < c).count();
        prop_assert_eq!(missing.len(), behind);
        // Raising `v` by what is missing makes it cover the token.
        let mut caught_up = v.clone();
        for m in &missing {
            caught_up.raise(m.replica, m.needed);
        }
        prop_assert!(t.covered_by(&caught_up));
    }

    /// Each requirement joins exactly the sets its guarantees select, is
    /// covered by the client token, and only grows as events are recorded.
    #[test]
    fn session_requirements_are_monotonic(g in guarantees(), events in events()) {
        let mut session = Session::new().with_guarantees(g);
        for event in &events {
            let (read_before, write_before) =
                (session.read_requirement().clone(), session.write_requirement().clone());
            record(&mut session, event);
            prop_assert!(weaker(&read_before, session.read_requirement()));
            prop_assert!(weaker(&write_before, session.write_requirement()));

            let (reads, writes) = (session.read_set(), session.write_set());
            let pick = |on: Guarantee, set: &SessionToken| {
                if g.contains(on) { set.clone() } else { SessionToken::new() }
            };
            let read = pick(Guarantee::ReadYourWrites, writes)
                .join(&pick(Guarantee::MonotonicReads, reads));
            let write = pick(Guarantee::MonotonicWrites, writes)
                .join(&pick(Guarantee::WritesFollowReads, reads));
            prop_assert_eq!(session.read_requirement(), &read);
            prop_assert_eq!(session.write_requirement(), &write);
            let token = session.token();
            prop_assert!(weaker(session.read_requirement(), &token));
            prop_assert!(weaker(session.write_requirement(), &token));
        }
        // Choosing the guarantees after the events gives the same session.
        let mut late = Session::new();
        events.iter().for_each(|e| record(&mut late, e));
        prop_assert_eq!(late.with_guarantees(g), session);
    }

    /// Selecting fewer guarantees never requires more.
    #[test]
    fn fewer_guarantees_never_require_more(
        more in guarantees(),
        drop in guarantees(),
        events in events(),
    ) {
        let fewer = drop.iter().fold(more, Guarantees::without);
        prop_assert!(fewer.is_subset(more));
        let mut strict = Session::new().with_guarantees(more);
        let mut relaxed = Session::new().with_guarantees(fewer);
        for event in &events {
            record(&mut strict, event);
            record(&mut relaxed, event);
            prop_assert!(weaker(relaxed.read_requirement(), strict.read_requirement()));
            prop_assert!(weaker(relaxed.write_requirement(), strict.write_requirement()));
        }
        let none = Session::from_token(&strict.token()).with_guarantees(Guarantees::NONE);
        prop_assert!(none.read_requirement().is_empty() && none.write_requirement().is_empty());
    }

    /// Two devices: joining sessions joins their sets, in either order, and
    /// a session resumed from a token never requires less than the original.
    #[test]
    fn sessions_join_and_resume_from_tokens(a in events(), b in events(), g in guarantees()) {
        let mut phone = Session::new().with_guarantees(g);
        let mut laptop = phone.clone();
        a.iter().for_each(|e| record(&mut phone, e));
        b.iter().for_each(|e| record(&mut laptop, e));
        let mut ab = phone.clone();
        ab.join(&laptop);
        let mut ba = laptop.clone();
        ba.join(&phone);
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(ab.token(), phone.token().join(&laptop.token()));
        prop_assert!(weaker(phone.read_requirement(), ab.read_requirement()));
        prop_assert!(weaker(laptop.write_requirement(), ab.write_requirement()));

        let resumed = Session::from_token(&phone.token()).with_guarantees(g);
        prop_assert_eq!(resumed.token(), phone.token());
        prop_assert!(weaker(phone.read_requirement(), resumed.read_requirement()));
        prop_assert!(weaker(phone.write_requirement(), resumed.write_requirement()));
    }

    #[test]
    fn tokens_round_trip_through_every_form(t in wide_token()) {
        let text = t.to_string();
        let narrow = t.as_vector().iter().all(|(r, _)| r.get() <= u64::from(u32::MAX));
        let prefix = if narrow { TOKEN_TEXT_PREFIX_V1 } else { TOKEN_TEXT_PREFIX_V2 };
        prop_assert!(text.starts_with(prefix), "{}", text);
        prop_assert!(text.len() <= TOKEN_TEXT_BYTES_MAX);
        prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        prop_assert_eq!(text.parse::<SessionToken>(), Ok(t.clone()));

        let bytes = t.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), t.encoded_len());
        prop_assert_eq!(SessionToken::from_bytes(&bytes), Ok(t.clone()));
        prop_assert_eq!(wire::decode_vector_fixed(&bytes), Ok(t.as_vector().clone()));

        let json = serde_json::to_string(&t).unwrap();
        prop_assert_eq!(serde_json::from_str::<SessionToken>(&json).unwrap(), t.clone());
        let frame = wire::encode(&t).unwrap();
        prop_assert_eq!(wire::decode::<SessionToken>(&frame), Ok(t.clone()));
    }

    /// Random text never panics; text that parses is the canonical form of
    /// what it parses to (one token, one text).
    #[test]
    fn random_text_never_panics(
        junk in "\\PC{0,200}",
        body in "[A-Za-z0-9_=+/-]{0,200}",
    ) {
        let texts = [
            junk.clone(),
            format!("{TOKEN_TEXT_PREFIX_V1}{junk}"),
            format!("{TOKEN_TEXT_PREFIX_V1}{body}"),
            format!("{TOKEN_TEXT_PREFIX_V2}{junk}"),
            format!("{TOKEN_TEXT_PREFIX_V2}{body}"),
        ];
        for text in texts {
            if let Ok(t) = text.parse::<SessionToken>() {
                prop_assert_eq!(t.to_string(), text);
            }
        }
    }

    #[test]
    fn corrupted_text_never_panics(
        t in wide_token(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let valid = t.to_string();
        let mut chars: Vec<char> = valid.chars().collect();
        for (at, c) in &edits {
            let i = at.index(chars.len());
            chars[i] = *c;
        }
        let corrupted: String = chars.into_iter().collect();
        if let Ok(parsed) = corrupted.parse::<SessionToken>() {
            prop_assert_eq!(parsed.to_string(), corrupted);
        }
        let truncated = &valid[..cut.index(valid.len())];
        prop_assert!(truncated.parse::<SessionToken>().is_err());
    }

    /// Random and corrupted bytes decode to a typed error or a token whose
    /// encoding is those very bytes.
    #[test]
    fn hostile_bytes_never_panic(
        random in prop::collection::vec(any::<u8>(), 0..300),
        t in wide_token(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut with_header = vec![1, 0, (random.len() / 12) as u8, 0];
        with_header.extend_from_slice(&random);
        let mut with_wide_header = vec![2, 0, (random.len() / 16) as u8, 0];
        with_wide_header.extend_from_slice(&random);
        let valid = t.to_bytes().unwrap();
        let mut flipped = valid.clone();
        for (at, byte) in &flips {
            let i = at.index(flipped.len());
            flipped[i] = *byte;
        }
        let truncated = &valid[..cut.index(valid.len())];
        for bytes in [&random[..], &with_header[..], &with_wide_header[..], &flipped[..], truncated] {
            if let Ok(parsed) = SessionToken::from_bytes(bytes) {
                prop_assert_eq!(parsed.to_bytes().unwrap(), bytes.to_vec());
            }
            let _ = wire::decode::<SessionToken>(bytes);
        }
        prop_assert!(SessionToken::from_bytes(truncated).is_err());
    }
}

/// Exactly `4 + 16·R` bytes for `R` replicas with 64-bit ids (`4 + 12·R`
/// when every id fits in 32 bits), however large the counters, that is
/// however many writes stand behind them.
#[test]
fn size_is_bounded_by_replicas_not_writes() {
    for replicas in 0..=64u32 {
        for counter in [1, 1_000, u64::MAX] {
            let named: SessionToken = (0..replicas)
                .map(|r| (ReplicaId::from_name(&format!("region-{r}")), counter))
                .collect::<VersionVector>()
                .into();
            let assigned: SessionToken = (0..replicas)
                .map(|r| (ReplicaId::from(r), counter))
                .collect::<VersionVector>()
                .into();
            let r = replicas as usize;
            // No id of 64 names fits in 32 bits, so R > 0 is wide.
            let wide = if r == 0 { 12 } else { 16 };
            for (t, entry_bytes) in [(named, wide), (assigned, 12)] {
                let bytes = t.to_bytes().unwrap();
                assert_eq!(bytes.len(), 4 + entry_bytes * r, "R = {r}");
                assert_eq!(t.encoded_len(), bytes.len());
                let text = t.to_string();
                assert_eq!(
                    text.len(),
                    TOKEN_TEXT_PREFIX_BYTES + (4 * bytes.len()).div_ceil(3)
                );
            }
        }
    }
}

#[test]
fn the_layout_is_as_documented() {
    let t = SessionToken::from_vector(vv(&[(0x0102_0304, 5), (0xffff_ffff, u64::MAX)]));
    let bytes = t.to_bytes().unwrap();
    #[rustfmt::skip]
    let expected = [
        1, 0, 2, 0,
        4, 3, 2, 1, 5, 0, 0, 0, 0, 0, 0, 0,
        255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    ];
    assert_eq!(bytes, expected);
    assert_eq!(SessionToken::new().to_bytes().unwrap(), [1, 0, 0, 0]);
    assert_eq!(SessionToken::new().to_string(), "v1.AQAAAA");

    // One id past 32 bits: layout 2, every id in 8 bytes.
    let t = SessionToken::from_vector(vv(&[(5, 1), (0x0102_0304_0506_0708, 2)]));
    let bytes = t.to_bytes().unwrap();
    #[rustfmt::skip]
    let expected = [
        2, 0, 2, 0,
        5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        8, 7, 6, 5, 4, 3, 2, 1, 2, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(bytes, expected);
    assert_eq!(t.encoded_len(), 36);
    assert!(t.to_string().starts_with("v2."));
}

/// A token of 32-bit ids keeps its v1 form (old builds parse it), and its
/// ids read back the same through either layout's decoder.
#[test]
fn v1_tokens_widen_losslessly() {
    let t = SessionToken::from_vector(vv(&[(0x7000_0001, 12), (0xffff_ffff, 7)]));
    let text = t.to_string();
    assert!(text.starts_with("v1."), "{text}");
    let parsed: SessionToken = text.parse().unwrap();
    assert_eq!(parsed.as_vector().get(ReplicaId::new(0xffff_ffff)), 7);
    assert_eq!(parsed, t);
}

#[test]
fn the_binary_decoder_names_what_is_wrong() {
    let err = |bytes: &[u8]| match SessionToken::from_bytes(bytes) {
        Err(WireError::Vector(e)) => e,
        other => panic!("{bytes:?} gave {other:?}"),
    };
    let one = [1, 0, 1, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    assert!(SessionToken::from_bytes(&one).is_ok());

    assert_eq!(
        err(&[]),
        FixedVectorError::Truncated {
            len: 0,
            expected: 4
        }
    );
    assert_eq!(
        err(&[1, 0, 0]),
        FixedVectorError::Truncated {
            len: 3,
            expected: 4
        }
    );
    assert_eq!(
        err(&[3, 0, 0, 0]),
        FixedVectorError::UnsupportedVersion { found: 3 }
    );
    // Layout 2 for ids that fit layout 1 (none at all, or only narrow
    // ones): not the vector's one encoding.
    assert_eq!(err(&[2, 0, 0, 0]), FixedVectorError::WiderThanNeeded);
    let narrow_in_wide = [2, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(err(&narrow_in_wide), FixedVectorError::WiderThanNeeded);
    let mut wide = narrow_in_wide;
    wide[8] = 1; // id 2³² + 7
    assert!(SessionToken::from_bytes(&wide).is_ok());
    assert_eq!(
        err(&wide[..19]),
        FixedVectorError::Truncated {
            len: 19,
            expected: 20
        }
    );
    let mut wide_descending = [&[2, 0, 2, 0][..], &wide[4..], &wide[4..]].concat();
    wide_descending[4] = 9;
    assert_eq!(
        err(&wide_descending),
        FixedVectorError::Unsorted { index: 1 }
    );
    assert_eq!(
        err(&[1, 0x80, 0, 0]),
        FixedVectorError::ReservedFlags { found: 0x80 }
    );
    assert_eq!(
        err(&one[..15]),
        FixedVectorError::Truncated {
            len: 15,
            expected: 16
        }
    );
    assert_eq!(
        err(&[&one[..], &[0]].concat()),
        FixedVectorError::TrailingBytes { extra: 1 }
    );
    // The count says two entries, one follows.
    let mut short_count = one;
    short_count[2] = 2;
    assert_eq!(
        err(&short_count),
        FixedVectorError::Truncated {
            len: 16,
            expected: 28
        }
    );
    // 1025 entries claimed: refused before the length is even looked at.
    assert_eq!(
        err(&[1, 0, 0x01, 0x04]),
        FixedVectorError::TooManyEntries { count: 1025 }
    );
    assert_eq!(
        err(&[1, 0, 0xff, 0xff]),
        FixedVectorError::TooManyEntries { count: 65535 }
    );
    let mut zero = one;
    zero[8] = 0;
    assert_eq!(err(&zero), FixedVectorError::ZeroCounter { index: 0 });
    let twice = [&[1, 0, 2, 0][..], &one[4..], &one[4..]].concat();
    assert_eq!(err(&twice), FixedVectorError::Unsorted { index: 1 });
    let mut descending = twice.clone();
    descending[4] = 9;
    assert_eq!(err(&descending), FixedVectorError::Unsorted { index: 1 });
}

#[test]
fn the_text_parser_names_what_is_wrong() {
    let parse = |s: &str| s.parse::<SessionToken>();
    assert_eq!(parse(""), Err(TokenParseError::MissingPrefix));
    assert_eq!(parse("AQAAAA"), Err(TokenParseError::MissingPrefix));
    assert_eq!(parse("v3.AQAAAA"), Err(TokenParseError::MissingPrefix));
    // A prefix that names the other layout than its bytes.
    assert_eq!(
        parse("v2.AQAAAA"),
        Err(TokenParseError::PrefixMismatch {
            prefix: "v2.",
            layout: 1
        })
    );
    let wide = SessionToken::from_vector(vv(&[(1 << 40, 3)])).to_string();
    let as_v1 = wide.replacen("v2.", "v1.", 1);
    assert_eq!(
        parse(&as_v1),
        Err(TokenParseError::PrefixMismatch {
            prefix: "v1.",
            layout: 2
        })
    );
    assert!(parse(&wide).is_ok());
    assert!(matches!(
        parse("v1.AQAA=="),
        Err(TokenParseError::Base64(_))
    ));
    assert!(matches!(
        parse("v1.AQ+/AA"),
        Err(TokenParseError::Base64(_))
    ));
    assert!(matches!(
        parse("v1.AQAAAB"),
        Err(TokenParseError::Base64(_))
    )); // stray bits
    assert!(matches!(parse("v1.é"), Err(TokenParseError::Base64(_))));
    assert_eq!(
        parse("v1."),
        Err(TokenParseError::Bytes(WireError::Vector(
            FixedVectorError::Truncated {
                len: 0,
                expected: 4
            }
        )))
    );
    let long = format!("v1.{}", "A".repeat(TOKEN_TEXT_BYTES_MAX));
    assert_eq!(
        parse(&long),
        Err(TokenParseError::TooLong {
            len: TOKEN_TEXT_BYTES_MAX + 3
        })
    );
    assert_eq!(parse("v1.AQAAAA"), Ok(SessionToken::new()));
}

#[test]
fn serde_refuses_tokens_past_the_replica_limit() {
    let entries: Vec<(u64, u64)> = (0..=TOKEN_REPLICAS_MAX as u64).map(|r| (r, 1)).collect();
    let json = serde_json::to_string(&entries).unwrap();
    let err = serde_json::from_str::<SessionToken>(&json).unwrap_err();
    assert!(
        err.to_string().contains("more than the 1024 limit"),
        "{err}"
    );
    assert!(serde_json::from_str::<SessionToken>("[[2,1],[1,1]]").is_err());
    assert!(serde_json::from_str::<SessionToken>("[[1,0]]").is_err());
    let ok: SessionToken = serde_json::from_str("[[1,2],[3,4]]").unwrap();
    assert_eq!(ok.as_vector(), &vv(&[(1, 2), (3, 4)]));
}

/// The four guarantees, one event each, on a tiny history.
#[test]
fn each_guarantee_requires_its_set() {
    let (wrote, read) = (
        SessionToken::from_vector(vv(&[(1, 3)])),
        SessionToken::from_vector(vv(&[(2, 8)])),
    );
    let session_with = |g: Guarantee| {
        let mut s = Session::new().with_guarantees(Guarantees::NONE.with(g));
        s.record_write(&wrote);
        s.record_read(&read);
        s
    };
    let s = session_with(Guarantee::ReadYourWrites);
    assert_eq!(
        (s.read_requirement(), s.write_requirement()),
        (&wrote, &SessionToken::new())
    );
    let s = session_with(Guarantee::MonotonicReads);
    assert_eq!(
        (s.read_requirement(), s.write_requirement()),
        (&read, &SessionToken::new())
    );
    let s = session_with(Guarantee::MonotonicWrites);
    assert_eq!(
        (s.read_requirement(), s.write_requirement()),
        (&SessionToken::new(), &wrote)
    );
    let s = session_with(Guarantee::WritesFollowReads);
    assert_eq!(
        (s.read_requirement(), s.write_requirement()),
        (&SessionToken::new(), &read)
    );

    let mut all = Session::new();
    all.record_write(&wrote);
    all.record_read(&read);
    assert_eq!(all.read_requirement(), &wrote.join(&read));
    assert_eq!(all.write_requirement(), &wrote.join(&read));
    assert_eq!(all.token(), wrote.join(&read));
}
