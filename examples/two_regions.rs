//! Tokyo and Frankfurt sell the same stock, edit the same carts and the
//! same profiles. The link between them is cut for a while; both keep
//! serving; when it heals they converge, and every conflict is audited.
//!
//! Run: `cargo run --release --example two_regions`

use std::time::{Duration, Instant};

use archipelago::crdt::{OrSet, PnCounter};
use archipelago::region::{Region, RegionConfig, RegionError, ResolverTable, Table};
use archipelago::resolve::LastWriteWins;
use archipelago::session::Session;
use archipelago::transport::{ChannelNetwork, LinkFaults};

const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";

fn region(net: &ChannelNetwork, name: &str) -> Result<Region, RegionError> {
    let config = RegionConfig {
        anti_entropy_interval: Duration::from_secs(1),
        ..RegionConfig::default()
    };
    Region::builder(name)
        .transport(net.endpoint(name))
        .config(config)
        .build()
}

type Pair<T> = (T, T);

/// One line per region: stock, cart and profile as it reads them now.
async fn show(
    stock: &Pair<Table<String, PnCounter>>,
    carts: &Pair<Table<String, OrSet<String>>>,
    profiles: &Pair<ResolverTable<String, String>>,
) -> Result<(), RegionError> {
    for (name, s, c, p) in [
        (TOKYO, &stock.0, &carts.0, &profiles.0),
        (FRANKFURT, &stock.1, &carts.1, &profiles.1),
    ] {
        let value = s.read("matcha").await?.map_or(0, |s| s.value());
        let mut cart: Vec<String> = c
            .read("cart:aiko")
            .await?
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        cart.sort();
        let profile = p
            .read("user:42")
            .await?
            .and_then(|r| r.value().cloned())
            .unwrap_or_default();
        println!("{name:<12} stock {value:>2} | cart {cart:?} | profile {profile:?}");
    }
    Ok(())
}

async fn settle(a: &Region, b: &Region) -> Duration {
    let started = Instant::now();
    while a.applied() != b.applied() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ~120 ms one way with jitter, a little loss: a WAN between two regions.
    let net = ChannelNetwork::new(42);
    net.set_faults_all(
        LinkFaults::new()
            .latency(Duration::from_millis(120))
            .jitter(Duration::from_millis(20))
            .loss(0.02),
    );
    let tokyo = region(&net, TOKYO)?;
    let frankfurt = region(&net, FRANKFURT)?;

    let stock = (
        tokyo.table::<String, PnCounter>("stock")?,
        frankfurt.table::<String, PnCounter>("stock")?,
    );
    let carts = (
        tokyo.table::<String, OrSet<String>>("carts")?,
        frankfurt.table::<String, OrSet<String>>("carts")?,
    );
    let profiles = (
        tokyo.table_with::<String, String>("profiles", LastWriteWins)?,
        frankfurt.table_with::<String, String>("profiles", LastWriteWins)?,
    );
    let audit = profiles.1.conflicts().subscribe(16);

    // Tokyo stocks 20 tins of matcha; a cart holds tea.
    stock
        .0
        .update("matcha", |s, ctx| s.apply(|s| s.inc(ctx.replica(), 20)))
        .await?;
    carts
        .0
        .update("cart:aiko", |c, ctx| {
            c.apply(|c| c.insert(ctx.replica(), "tea".into()))
        })
        .await?;
    profiles.0.put("user:42", "Aiko".to_string()).await?;
    let took = settle(&tokyo, &frankfurt).await;
    println!("replicated to Frankfurt in {took:.0?}: stock 20, cart [tea], profile Aiko");

    // The link is cut. Both regions keep taking writes.
    net.partition(TOKYO, FRANKFURT);
    println!("\n-- partition: both regions keep serving --");
    stock
        .0
        .update("matcha", |s, ctx| s.apply(|s| s.dec(ctx.replica(), 3)))
        .await?;
    stock
        .1
        .update("matcha", |s, ctx| s.apply(|s| s.dec(ctx.replica(), 2)))
        .await?;
    carts
        .0
        .update("cart:aiko", |c, _| c.apply(|c| c.remove("tea")))
        .await?;
    carts
        .1
        .update("cart:aiko", |c, ctx| {
            c.apply(|c| c.insert(ctx.replica(), "tea".into()))
        })
        .await?;
    carts
        .1
        .update("cart:aiko", |c, ctx| {
            c.apply(|c| c.insert(ctx.replica(), "yuzu".into()))
        })
        .await?;
    profiles.0.put("user:42", "Aiko Tanaka".to_string()).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    profiles.1.put("user:42", "A. Tanaka".to_string()).await?;
    show(&stock, &carts, &profiles).await?;

    // Heal: retransmission and anti-entropy bring both to one state.
    net.heal_all();
    let took = settle(&tokyo, &frankfurt).await;
    println!("\n-- healed: converged in {took:.0?} --");
    show(&stock, &carts, &profiles).await?;
    println!(
        "(sales add up: 20 - 3 - 2; the concurrent re-add of tea beats its removal; the later profile write wins)"
    );

    // Read your writes across regions: write in Tokyo, read in Frankfurt.
    let mut session = Session::new();
    carts
        .0
        .update_session("cart:ben", &mut session, |c, ctx| {
            c.apply(|c| c.insert(ctx.replica(), "sencha".into()))
        })
        .await?;
    let started = Instant::now();
    let cart = carts
        .1
        .read_session("cart:ben", &mut session)
        .await?
        .unwrap_or_default();
    println!(
        "\nsession read in Frankfurt right after a write in Tokyo: waited {:.0?}, sees {:?}",
        started.elapsed(),
        cart.iter().collect::<Vec<_>>()
    );
    println!("session token for the next request: {}", session.token());

    println!("\nconflict feed of 'profiles' at {FRANKFURT}:");
    for record in audit.drain() {
        let winner = record
            .winner
            .as_ref()
            .map(|w| w.value.as_str())
            .unwrap_or("-");
        let losers: Vec<&str> = record.losers.iter().map(|l| l.value.as_str()).collect();
        println!(
            "  {} {}: winner {winner:?}, lost {losers:?}",
            record.strategy, record.key
        );
    }
    for region in [&tokyo, &frankfurt] {
        let stats = region.stats();
        println!(
            "{:<12} {} writes, {} batches sent, {} applied, {} anti-entropy rounds",
            stats.name,
            stats.writes,
            stats.batches_sent,
            stats.batches_applied,
            stats.syncs_completed
        );
    }
    println!(
        "network: {} frames dropped on the way",
        net.stats().frames_dropped()
    );

    tokyo.shutdown().await;
    frankfurt.shutdown().await;
    let (a, b) = (
        stock.0.read("matcha").await?.map(|s| s.value()),
        stock.1.read("matcha").await?.map(|s| s.value()),
    );
    if a != b || a != Some(15) {
        return Err("regions diverged".into());
    }
    Ok(())
}
