//! A region restarts from its directory and keeps its identity.
//!
//! Tokyo writes stock counts with `AckLevel::Local` (each write returns once
//! its commit is on disk) while Frankfurt is unreachable, and is dropped in
//! the middle of the stream without a shutdown, as a crash would. It
//! reopens from the same directory: the same replica id, the next
//! incarnation, every acknowledged write. The link heals and Tokyo sends
//! Frankfurt what it had not acknowledged, from its stored outbox.
//!
//! ```sh
//! cargo run --release --example restart
//! ```

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{AckLevel, Region};
use archipelago::transport::ChannelNetwork;

const SKUS: u64 = 50;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("archipelago-restart-{}", std::process::id()));
    let net = ChannelNetwork::new(2026);
    let frankfurt = Region::builder("eu-central")
        .transport(net.endpoint("eu-central"))
        .build()?;

    let tokyo = Region::builder("ap-northeast")
        .transport(net.endpoint("ap-northeast"))
        .data_dir(&dir)
        .ack_level(AckLevel::Local)
        .build()?;
    let id = tokyo.replica();
    println!(
        "tokyo: replica {id}, incarnation {}, store {}",
        tokyo.incarnation(),
        dir.display()
    );
    let stock = tokyo.table::<u64, GCounter>("stock")?;
    for sku in 0..SKUS {
        stock
            .update(&sku, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 10)))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "frankfurt sees {} skus before the partition",
        frankfurt.table::<u64, GCounter>("stock")?.len()
    );

    net.partition("ap-northeast", "eu-central");
    for sku in 0..SKUS {
        // Each returns once on disk; none can reach Frankfurt now.
        stock
            .update(&sku, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await?;
    }
    let stats = tokyo.stats();
    println!(
        "tokyo wrote {} times in {} commits; dropped mid-stream, without shutdown",
        stats.writes, stats.commits
    );
    drop(stock);
    drop(tokyo);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let tokyo = Region::builder("ap-northeast")
        .transport(net.endpoint("ap-northeast"))
        .data_dir(&dir)
        .build()?;
    assert_eq!(tokyo.replica(), id, "the same replica");
    let stock = tokyo.table::<u64, GCounter>("stock")?;
    println!(
        "tokyo reopened: replica {}, incarnation {}, {} skus, sku 0 = {:?}",
        tokyo.replica(),
        tokyo.incarnation(),
        stock.len(),
        stock.read(&0u64).await?.map(|c| c.value())
    );

    net.heal("ap-northeast", "eu-central");
    let stock_fra = frankfurt.table::<u64, GCounter>("stock")?;
    let started = tokio::time::Instant::now();
    loop {
        let mut done = true;
        for sku in 0..SKUS {
            if stock_fra.read(&sku).await?.map(|c| c.value()) != Some(11) {
                done = false;
                break;
            }
        }
        if done {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("frankfurt did not converge".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = frankfurt.stats();
    println!(
        "frankfurt converged in {:?}: every sku at 11, {} replica ids in its vector, {} anti-entropy exchanges, {} frames rejected",
        started.elapsed(),
        frankfurt.applied().len(),
        stats.syncs_completed,
        stats.rejected_frames
    );
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
    drop(tokyo);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
