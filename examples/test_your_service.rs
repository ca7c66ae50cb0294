//! Testing *your* service against three regions, faults drawn from a seed.
//!
//! `add_to_cart` stands for your code: it adds an item to a user's cart in
//! the region the request landed in, and reads the cart back in the user's
//! session. The test runs it on `testing::Archipelago` (three regions on
//! one `ChannelNetwork`, tokio's paused clock), with message loss and
//! partitions drawn from the seed, and asserts two invariants:
//!
//! 1. read your writes: wherever the user's request lands, the cart read
//!    back holds every item ever added for them, or the region says it
//!    cannot serve them yet (`SessionTimeout`): never a stale cart;
//! 2. no acknowledged add is lost: once healed, every region reads every
//!    user's cart with every item ever acknowledged.
//!
//! Run: `cargo run --release --example test_your_service --features testing`
//! (it runs `SEEDS` seeds from a random base and prints it). A failure
//! prints the seed that replays it: `SERVICE_SEED=<seed> cargo run ...`
//! runs that seed alone, the same faults at the same virtual instants.

use std::collections::BTreeSet;
use std::time::Duration;

use archipelago::crdt::OrSet;
use archipelago::region::{Region, RegionError};
use archipelago::session::Session;
use archipelago::testing::fuzz::FuzzRng;
use archipelago::testing::{Archipelago, seed_from_env};
use archipelago::transport::LinkFaults;

/// Your service: adds `sku` to `user`'s cart at `region`, returns the cart
/// as the user's session reads it back.
async fn add_to_cart(
    region: &Region,
    session: &mut Session,
    user: &str,
    sku: &str,
) -> Result<Option<OrSet<String>>, RegionError> {
    let carts = region.table::<String, OrSet<String>>("carts")?;
    carts
        .update_session(user, session, |cart, ctx| {
            cart.apply(|c| c.insert(ctx.replica(), sku.to_owned()))
        })
        .await?;
    carts.read_session(user, session).await
}

const REGIONS: [&str; 3] = ["ap-northeast", "eu-central", "us-east"];
const USERS: [&str; 3] = ["aiko", "ben", "chloe"];
/// Requests per seed.
const REQUESTS: usize = 200;
/// Seeds per run when `SERVICE_SEED` is not set.
const SEEDS: u64 = 8;
/// Longest the regions may take to converge after the last heal.
const CONVERGE_WAIT_MAX: Duration = Duration::from_secs(60);

/// What one seed did: requests served and refused, frames the network lost.
#[derive(Debug, Default)]
struct Outcome {
    served: usize,
    refused: usize,
    frames_dropped: u64,
}

/// One seeded run: `Err` names the invariant broken.
async fn run(seed: u64) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let islands = Archipelago::new(seed, &REGIONS).map_err(|e| e.to_string())?;
    let mut rng = FuzzRng::new(seed);
    let net = islands.network();
    net.set_faults_all(
        LinkFaults::new()
            .latency(Duration::from_millis(20 + rng.below(100) as u64))
            .jitter(Duration::from_millis(10))
            .loss(rng.below(20) as f64 / 100.0),
    );
    let mut sessions: Vec<Session> = USERS.iter().map(|_| Session::new()).collect();
    let mut acknowledged: Vec<BTreeSet<String>> = vec![BTreeSet::new(); USERS.len()];
    for request in 0..REQUESTS {
        // Faults: now and then cut a pair of regions, or heal everything.
        match rng.below(20) {
            0 => {
                let a = rng.below(3);
                net.partition(REGIONS[a], REGIONS[(a + 1 + rng.below(2)) % 3]);
            }
            1 => net.heal_all(),
            _ => {}
        }
        let (user, region) = (rng.below(USERS.len()), &islands.regions()[rng.below(3)]);
        let sku = format!("sku-{request}");
        match add_to_cart(region, &mut sessions[user], USERS[user], &sku).await {
            Ok(cart) => {
                outcome.served += 1;
                acknowledged[user].insert(sku.clone());
                let cart = cart.ok_or(format!("{}: empty cart after a write", USERS[user]))?;
                if let Some(lost) = acknowledged[user].iter().find(|&s| !cart.contains(s)) {
                    return Err(format!(
                        "{} at {}: stale cart, no {lost}",
                        USERS[user],
                        region.name()
                    ));
                }
            }
            // A region cut off from where the session wrote may not serve
            // it in time: refusing is allowed, a stale cart is not.
            Err(RegionError::SessionTimeout { .. }) => outcome.refused += 1,
            Err(other) => return Err(format!("request {request}: {other}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.below(50) as u64)).await;
    }
    islands
        .converge(CONVERGE_WAIT_MAX)
        .await
        .map_err(|e| e.to_string())?;
    for region in islands.regions() {
        let carts = region
            .table::<String, OrSet<String>>("carts")
            .map_err(|e| e.to_string())?;
        for (user, skus) in USERS.iter().zip(&acknowledged) {
            let cart = carts.read(*user).await.map_err(|e| e.to_string())?;
            let held: BTreeSet<String> = cart.iter().flat_map(|c| c.iter().cloned()).collect();
            if let Some(lost) = skus.difference(&held).next() {
                return Err(format!(
                    "{user} at {}: acknowledged {lost} lost",
                    region.name()
                ));
            }
        }
    }
    outcome.frames_dropped = net.stats().frames_dropped();
    Ok(outcome)
}

fn run_on_paused_clock(seed: u64) -> Result<Outcome, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run(seed))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let replay = std::env::var_os("SERVICE_SEED").is_some();
    let base = seed_from_env("SERVICE_SEED")?;
    let seeds = if replay { 1 } else { SEEDS };
    println!(
        "seeds {base}..{} (SERVICE_SEED=<seed> replays one)",
        base.wrapping_add(seeds)
    );
    for seed in (0..seeds).map(|i| base.wrapping_add(i)) {
        match run_on_paused_clock(seed) {
            Ok(outcome) => println!("seed {seed}: ok, {outcome:?}"),
            Err(broken) => {
                eprintln!("seed {seed} failed: {broken}");
                eprintln!(
                    "replay: SERVICE_SEED={seed} cargo run --example test_your_service --features testing"
                );
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
