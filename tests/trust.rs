//! An authenticated peer that lies: what it claims about other regions'
//! writes, its acknowledgements and its batches' dependencies move nothing
//! of the honest regions' state beyond data they received. Default
//! `RegionConfig` timings: nothing here waits for the periodic anti-entropy
//! (30 s).

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use archipelago::region::{HELLO_VECTOR_ENTRIES_MAX, Region, RegionConfig, RejectReason};
use archipelago::testing::{Forger, Forgery};
use archipelago::transport::ChannelNetwork;

/// Guards against believing a peer's applied vector about third regions
/// (one claim of `u64::MAX` writes of `a` made every later batch of `a`
/// look stale at `b`, for good), truncating an outbox on a forged
/// acknowledgement, and buffering forever a batch that depends on writes of
/// ours that were never made.
#[test]
fn a_lying_peer_moves_nothing_and_the_honest_regions_keep_replicating() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(5);
        let a = common::region_on(&net, "a", None, RegionConfig::default());
        let b = common::region_on(&net, "b", None, RegionConfig::default());
        let liar = Forger::new(
            net.endpoint("f"),
            vec![
                Forgery::ClaimWrites {
                    of: a.replica(),
                    count: u64::MAX,
                },
                Forgery::AckWrites { count: u64::MAX },
                Forgery::DependOn {
                    of: b.replica(),
                    count: u64::MAX,
                },
            ],
        );
        let forged = liar.forged_counter();
        let f = Region::builder("f")
            .transport(liar)
            .clock(common::TokioClock::new(0))
            .build()
            .unwrap();
        for key in 0..3 {
            common::add(&a, "t", key, 1).await;
            common::add(&b, "t", key, 1).await;
            common::add(&f, "t", key, 1).await;
        }
        // The first contacts' exchanges (the liar's transfers among them)
        // and the liar's acknowledgements and batches.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(forged.load(Ordering::Relaxed) > 0, "the liar lied");
        let (syncs_a, syncs_b) = (a.stats().syncs_completed, b.stats().syncs_completed);

        // Honest writes still flow by batches, at once.
        common::add(&a, "t", 10, 1).await;
        common::add(&b, "t", 11, 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            common::counter(&b, "t", 10).await,
            Some(1),
            "b has a's write"
        );
        assert_eq!(
            common::counter(&a, "t", 11).await,
            Some(1),
            "a has b's write"
        );
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(
            sb.applied.get(a.replica()),
            sa.writes,
            "b's vector names a's writes, no more"
        );
        assert_eq!(
            sa.applied.get(b.replica()),
            sb.writes,
            "a's vector names b's writes, no more"
        );
        assert_eq!(
            (sa.syncs_completed, sb.syncs_completed),
            (syncs_a, syncs_b),
            "no anti-entropy did the work"
        );
        // The lies were seen for what they are.
        eprintln!("{sa:#?}\n{sb:#?}\n{:#?}", f.stats());
        assert!(
            sa.rejected_frames > 0,
            "a refused the forged acknowledgements"
        );
        assert!(
            sb.rejected_frames > 0,
            "b refused batches depending on writes it never made"
        );
        assert!(
            sa.untrusted_claims + sb.untrusted_claims > 0,
            "the claims about the other honest region were not believed"
        );
        // a kept its writes for b and f: the forged acknowledgements did
        // not truncate its log past what f could hold.
        for key in [0, 1, 2, 10, 11] {
            assert_eq!(
                common::counter(&a, "t", key).await,
                common::counter(&b, "t", key).await,
                "key {key}"
            );
        }
    });
}

/// A hello whose applied vector names more replicas than
/// `HELLO_VECTOR_ENTRIES_MAX` is refused and counted as `over_limit`, and
/// nothing of it is kept: the peer stays unbound, no made-up replica
/// reaches a vector. The honest regions keep replicating with each other
/// at once. Default `RegionConfig`; the padded hello is the only lie.
#[test]
fn a_hello_naming_too_many_replicas_is_refused_counted_and_kept_nowhere() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(9);
        let a = common::region_on(&net, "a", None, RegionConfig::default());
        let b = common::region_on(&net, "b", None, RegionConfig::default());
        let liar = Forger::new(
            net.endpoint("f"),
            vec![Forgery::PadHello {
                count: HELLO_VECTOR_ENTRIES_MAX + 1,
            }],
        );
        let forged = liar.forged_counter();
        let f = Region::builder("f")
            .transport(liar)
            .clock(common::TokioClock::new(0))
            .build()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        common::add(&a, "t", 1, 1).await;
        common::add(&b, "t", 2, 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(forged.load(Ordering::Relaxed) > 0, "f sent padded hellos");

        assert_eq!(
            common::counter(&b, "t", 1).await,
            Some(1),
            "b has a's write"
        );
        assert_eq!(
            common::counter(&a, "t", 2).await,
            Some(1),
            "a has b's write"
        );
        for (region, other) in [(&a, &b), (&b, &a)] {
            let stats = region.stats();
            let name = region.name();
            let refused = stats.rejected(RejectReason::OverLimit);
            assert!(refused > 0, "{name} refused f's hellos: {stats:#?}");
            assert_eq!(
                stats.rejected_frames, refused,
                "{name} refused nothing else"
            );
            assert_eq!(stats.untrusted_claims, 0, "{name} read no claim of them");
            let of_f = stats.peers.iter().find(|p| p.name == "f").expect("f");
            assert_eq!(
                (of_f.replica, of_f.incarnation, of_f.refused.clone()),
                (None, None, None),
                "{name} bound nothing of f's hello"
            );
            let honest = stats.peers.iter().find(|p| p.name == other.name()).unwrap();
            assert_eq!(
                honest.replica,
                Some(other.replica()),
                "{name} greeted by the other"
            );
            assert_eq!(
                stats.applied.len(),
                2,
                "{name}'s vector names a and b, no made-up replica: {:?}",
                stats.applied
            );
        }
        assert_eq!(f.stats().rejected_frames, 0, "f itself is honest");
    });
}
