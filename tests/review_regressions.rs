//! Regression tests of the region engine for findings of a review: each
//! replays the scenario that was broken and checks the fixed behaviour.

use crate::common;

use std::time::Duration;

use archipelago::clock::PhysicalClock;
use archipelago::crdt::{GCounter, LwwRegister};
use archipelago::region::{Region, RegionConfig};
use archipelago::session::Session;
use archipelago::transport::ChannelNetwork;

/// Guards against a write made right after an anti-entropy catch-up stamping below, and losing to, what it caught up on.
#[test]
fn a_write_after_catch_up_stamps_above_what_it_caught_up_on() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(9);
        // An outbox of 0: every write of a overflows, only anti-entropy carries it.
        let cfg = RegionConfig {
            outbox_len_max: 0,
            ..common::test_config()
        };
        let a = common::region(&net, "a", 300, cfg); // 300 ms ahead: within the bound
        let b = common::region(&net, "b", 0, common::test_config());
        let ra = a.table::<u64, LwwRegister<String>>("profile").unwrap();
        let rb = b.table::<u64, LwwRegister<String>>("profile").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        ra.update(&1u64, |r, ctx| {
            r.apply(|r| r.set(ctx.stamp(), "old (from a)".into()))
        })
        .await
        .unwrap();
        let mut caught_up = None;
        for _ in 0..2_000 {
            caught_up = rb.read(&1u64).await.unwrap().and_then(|r| r.get().cloned());
            if caught_up.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(caught_up.as_deref(), Some("old (from a)"), "b caught up");
        assert_eq!(a.stats().outbox_overflows, 1, "through anti-entropy only");

        // A user writes at b, later in real time, then reads at b.
        let token = rb
            .update(&1u64, |r, ctx| {
                r.apply(|r| r.set(ctx.stamp(), "new (user at b)".into()))
            })
            .await
            .unwrap();
        let mut session = Session::new();
        session.record_write(&token);
        let seen = rb
            .read_session(&1u64, &mut session)
            .await
            .unwrap()
            .and_then(|r| r.get().cloned());
        assert_eq!(seen.as_deref(), Some("new (user at b)"));

        // And a converges on the later write.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at_a = ra.read(&1u64).await.unwrap().and_then(|r| r.get().cloned());
        assert_eq!(at_a.as_deref(), Some("new (user at b)"));
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Guards against skew relayed through hybrid clocks (a +400 ms, b 0, c -300 ms) making c refuse b's batches.
#[test]
fn skew_relayed_through_a_hybrid_clock_does_not_block_an_in_bound_link() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(5);
        let cfg = common::test_config();
        // Wall clocks as the regions read them, before any skew.
        let wall = common::TokioClock::new(0);
        // Every pair of wall clocks but (a, c) is within the 500 ms bound.
        let a = common::region(&net, "a", 400, cfg.clone());
        let b = common::region(&net, "b", 0, cfg.clone());
        let c = common::region(&net, "c", -300, cfg);
        net.partition("a", "c"); // a and c do not talk at all
        let ta = a.table::<u64, GCounter>("hits").unwrap();
        let tb = b.table::<u64, GCounter>("hits").unwrap();
        let tc = c.table::<u64, GCounter>("hits").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..100u64 {
            ta.update(&0u64, |g, ctx| g.apply(|g| g.inc(ctx.replica(), 1)))
                .await
                .unwrap();
            tb.update(&i, |g, ctx| g.apply(|g| g.inc(ctx.replica(), 1)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // b follows a (400 ms ahead, within bound): b's batches carry a clock
        // 700 ms ahead of c's wall clock.
        assert!(b.hlc().last().physical_ms() >= wall.now_ms() + 300);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // c takes every batch of b: none refused for its clock. They wait in
        // c's causal buffer for a's writes they depend on (a and c do not
        // talk: only anti-entropy with b brings those).
        let stats = c.stats();
        assert_eq!(stats.rejected_frames, 0);
        assert!(stats.buffered_batches > 0, "c holds b's batches: {stats:?}");
        assert!(stats.applied.get(b.replica()) >= 1);

        // The next anti-entropy round with b completes them.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.stats().rejected_frames, 0);
        assert_eq!(c.stats().buffered_batches, 0);
        assert_eq!(c.applied().get(b.replica()), 100);
        for i in 0..100u64 {
            let g = tc.read(&i).await.unwrap().unwrap_or_default();
            assert_eq!(g.get(b.replica()), 1, "key {i}");
        }
        // c followed b only up to its own bound (one tick past it at most).
        let bound = (wall.now_ms() - 300) + c.hlc().max_offset().as_millis() as u64;
        assert!(c.hlc().last().physical_ms() <= bound + 1);
        for region in [a, b, c] {
            region.shutdown().await;
        }
    });
}

/// Guards against a restarted region without durable state reusing its replica id, and so its dots.
#[test]
fn two_builds_of_one_region_name_get_different_replica_ids() {
    common::paused_runtime().block_on(async {
        let first = Region::builder("eu-central").build().unwrap();
        let second = Region::builder("eu-central").build().unwrap();
        assert_ne!(first.replica(), second.replica());
    });
}
