//! A reply is never visible without the post it answers, whichever path
//! the messages take: the post travels a slow link, the reply a fast one.

use crate::common;

use std::time::Duration;

use archipelago::crdt::OrSet;
use archipelago::transport::{ChannelNetwork, LinkFaults};
use proptest::prelude::*;

async fn run(
    seed: u64,
    slow_ms: u64,
    fast_ms: u64,
    jitter_ms: u64,
    reorder: f64,
) -> Result<(), TestCaseError> {
    let net = ChannelNetwork::new(seed);
    let config = common::test_config();
    let a = common::region(&net, "a", 0, config.clone());
    let b = common::region(&net, "b", 0, config.clone());
    let c = common::region(&net, "c", 0, config);
    let slow = LinkFaults::new()
        .latency(Duration::from_millis(slow_ms))
        .jitter(Duration::from_millis(jitter_ms))
        .reorder(reorder);
    let fast = LinkFaults::new().latency(Duration::from_millis(fast_ms));
    net.set_faults("a", "c", slow);
    net.set_faults("a", "b", fast.clone());
    net.set_faults("b", "c", fast);

    let posts_a = a.table::<String, OrSet<String>>("posts")?;
    let posts_b = b.table::<String, OrSet<String>>("posts")?;
    let posts_c = c.table::<String, OrSet<String>>("posts")?;
    let replies_b = b.table::<String, OrSet<String>>("replies")?;
    let replies_c = c.table::<String, OrSet<String>>("replies")?;

    posts_a
        .update("thread-1", |t, ctx| {
            t.apply(|t| t.insert(ctx.replica(), "post".into()))
        })
        .await?;
    // B replies as soon as it sees the post.
    loop {
        let seen = posts_b
            .read("thread-1")
            .await?
            .is_some_and(|t| t.contains("post"));
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    replies_b
        .update("thread-1", |t, ctx| {
            t.apply(|t| t.insert(ctx.replica(), "reply".into()))
        })
        .await?;

    // C, polled every millisecond, never shows the reply without the post.
    let mut reply_seen = false;
    for _ in 0..(slow_ms + jitter_ms) * 3 + 2_000 {
        let reply = replies_c
            .read("thread-1")
            .await?
            .is_some_and(|t| t.contains("reply"));
        let post = posts_c
            .read("thread-1")
            .await?
            .is_some_and(|t| t.contains("post"));
        prop_assert!(
            !reply || post,
            "seed {}: the reply is visible at c without its post",
            seed
        );
        if reply {
            reply_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    prop_assert!(reply_seen, "seed {}: the reply never reached c", seed);
    for r in [&a, &b, &c] {
        r.shutdown().await;
    }
    Ok(())
}

proptest! {
    #[test]
    fn a_reply_is_never_visible_without_its_post(
        seed in any::<u64>(),
        slow_ms in 20..1_500u64,
        fast_ms in 0..20u64,
        jitter_ms in 0..200u64,
        reorder in 0.0..0.5f64,
    ) {
        common::paused_runtime()
            .block_on(run(seed, slow_ms, fast_ms, jitter_ms, reorder))?;
    }
}
