//! Homed keys that move (issue 11): a planned handoff at the next epoch,
//! fenced so that no two regions accept a key's writes in one epoch; an
//! operator failover when a home is lost, which fences the lost home once
//! it returns; a home's view of epochs kept across a restart (redb).
//!
//! Three regions on the default config, on the paused clock. Seeded:
//! `EPOCH_SEED=<n>` replays the fault schedule of the handoff test under
//! loss, duplication, reordering and a partition (the seed is printed).

use crate::common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use archipelago::region::{
    HOMED_FAILOVER_EPOCH_STRIDE, HomedError, HomedRefusal, HomedTable, HomedValue, Placement,
    Region, RegionConfig, RegionError,
};
use archipelago::transport::{ChannelNetwork, LinkFaults};
use common::accounts::{NAMES, assert_nothing_rejected, shutdown};
use common::{TestRng, paused_runtime, region_on, seed_from_env};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// An account's balance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Deposit(u64);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Never;

impl HomedValue for Account {
    type Op = Deposit;
    type Rejection = Never;
    fn apply(&mut self, Deposit(n): Deposit) -> Result<(), Never> {
        self.balance += n;
        Ok(())
    }
}

/// Accounts live in the region their name starts with; `pinned/acct` is
/// pinned at us-east.
fn placement() -> Placement<String> {
    Placement::by(|key: &String| key.split('/').next().unwrap_or_default().to_owned())
        .pin("pinned/acct", "us-east")
}

fn accounts(region: &Region) -> HomedTable<String, Account> {
    region
        .homed_table::<String, Account>("accounts", placement())
        .unwrap()
}

fn balance(region: &Region, key: &str) -> Option<u64> {
    accounts(region).read(key).unwrap().map(|a| a.balance)
}

async fn three_regions(net: &ChannelNetwork) -> Vec<Region> {
    let regions: Vec<Region> = NAMES
        .iter()
        .map(|n| region_on(net, n, None, RegionConfig::default()))
        .collect();
    for r in &regions {
        accounts(r);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    regions
}

/// Every acknowledged write as its caller saw it: key, epoch, the home
/// that applied it.
#[derive(Default)]
struct History(RefCell<Vec<(String, u64, String)>>);

impl History {
    fn record(&self, key: &str, epoch: u64, home: &str) {
        self.0
            .borrow_mut()
            .push((key.to_owned(), epoch, home.to_owned()));
    }

    /// Fencing: no two regions accepted a write of one key in one epoch.
    fn assert_one_home_per_epoch(&self, seed: u64) {
        let mut homes: HashMap<(String, u64), String> = HashMap::new();
        for (key, epoch, home) in self.0.borrow().iter() {
            let first = homes
                .entry((key.clone(), *epoch))
                .or_insert_with(|| home.clone());
            assert_eq!(
                first, home,
                "seed {seed}: {key} accepted in epoch {epoch} by {first} and by {home}"
            );
        }
    }
}

/// A planned handoff without faults: the new home starts at epoch 1 from
/// the old home's last state; the old home refuses the key from then on,
/// naming the new home, and its caller's write is sent on there; every
/// region's view moves; a move back opens epoch 2. A pinned key moves too
/// (the move overrides the pin).
#[test]
fn a_planned_handoff_moves_the_home_with_its_last_state() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(41);
        let regions = three_regions(&net).await;
        let key = "ap-northeast/acct";
        for (i, r) in regions.iter().enumerate() {
            let write = accounts(r)
                .apply(key, Deposit(10u64.pow(i as u32)))
                .await
                .unwrap();
            assert_eq!((write.home.as_str(), write.epoch), ("ap-northeast", 0));
        }
        // Virginia hears nobody (Frankfurt would relay Tokyo's writes to
        // it): its view stays at epoch 0.
        net.isolate("us-east");
        // Asked in Frankfurt, carried out at Tokyo, the key's home.
        let moved = accounts(&regions[1])
            .move_home(key, "eu-central")
            .await
            .unwrap();
        assert_eq!((moved.home.as_str(), moved.epoch), ("eu-central", 1));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stale = accounts(&regions[2]).meta(key).unwrap().unwrap();
        assert_eq!((stale.epoch, stale.home.as_str()), (0, "ap-northeast"));
        // Frankfurt writes at once; Tokyo's own write goes to Frankfurt.
        let started = Instant::now();
        let write = accounts(&regions[1])
            .apply(key, Deposit(1000))
            .await
            .unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the new home writes locally"
        );
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("eu-central", 1, 1111)
        );
        let write = accounts(&regions[0]).apply(key, Deposit(1)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("eu-central", 1, 1112)
        );
        // Virginia, stale, asks Tokyo: fenced, it names Frankfurt, and the
        // write is sent on there.
        net.heal_all();
        let write = accounts(&regions[2]).apply(key, Deposit(1)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("eu-central", 1, 1113)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in &regions {
            let meta = accounts(r).meta(key).unwrap().unwrap();
            assert_eq!(
                (meta.epoch, meta.home.as_str(), meta.version),
                (1, "eu-central", 3),
                "{}: three writes since the handoff",
                r.name()
            );
            assert_eq!(accounts(r).home_of(key).unwrap(), "eu-central");
            assert_eq!(balance(r, key), Some(1113), "{}", r.name());
        }
        let read = accounts(&regions[0]).read_at_home(key).await.unwrap();
        assert_eq!((read.value.map(|a| a.balance), read.epoch), (Some(1113), 1));
        // A second move to the same home is a no-op; a move back opens 2.
        let again = accounts(&regions[0])
            .move_home(key, "eu-central")
            .await
            .unwrap();
        assert_eq!((again.home.as_str(), again.epoch), ("eu-central", 1));
        let back = accounts(&regions[0])
            .move_home(key, "ap-northeast")
            .await
            .unwrap();
        assert_eq!((back.home.as_str(), back.epoch), ("ap-northeast", 2));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let write = accounts(&regions[0]).apply(key, Deposit(1)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("ap-northeast", 2, 1114)
        );

        // A pinned key: the pin says us-east; the move overrides it.
        let pinned = "pinned/acct";
        accounts(&regions[0])
            .apply(pinned, Deposit(5))
            .await
            .unwrap();
        let moved = accounts(&regions[0])
            .move_home(pinned, "ap-northeast")
            .await
            .unwrap();
        assert_eq!((moved.home.as_str(), moved.epoch), ("ap-northeast", 1));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let write = accounts(&regions[2])
            .apply(pinned, Deposit(5))
            .await
            .unwrap();
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("ap-northeast", 1, 10)
        );

        // Unknown regions are refused before anything moves.
        let unknown = accounts(&regions[0])
            .move_home(key, "mars")
            .await
            .unwrap_err();
        assert!(
            matches!(unknown, RegionError::UnknownHome { .. }),
            "{unknown}"
        );

        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        // Tokyo: 3 deposits, the handoff; then 1 deposit at epoch 2, the
        // pinned key's first write it forwarded (to us-east) and 1 at epoch 1.
        assert_eq!(stats[0].writes, 3 + 1 + 1 + 1, "Tokyo's writes");
        // Frankfurt: 3 deposits at epoch 1 and the handoff back.
        assert_eq!(stats[1].writes, 3 + 1, "Frankfurt's writes");
        assert_eq!(
            stats[2].writes,
            1 + 1,
            "Virginia: the pinned deposit and its handoff"
        );
        assert_eq!(
            stats.iter().map(|s| s.homed_moves).collect::<Vec<_>>(),
            [1, 1, 1],
            "one handoff written by each old home"
        );
        assert_eq!(stats[0].homed_fenced, 1, "Virginia's stale deposit");
        assert_eq!(stats[0].homed_refused, 1, "refused naming Frankfurt");
        assert_eq!(stats[2].homed_redirects, 1, "sent on to Frankfurt");
        assert_eq!(stats.iter().map(|s| s.homed_fenced).sum::<u64>(), 1);
        assert_eq!(stats.iter().map(|s| s.homed_redirects).sum::<u64>(), 1);
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// What one seeded run of the faulty handoff test came to.
#[derive(Default)]
struct Tally {
    succeeded: u64,
    maybe: u64,
    moves: u64,
    refused: u64,
}

/// Handoffs under loss, duplication, reordering (jitter) and a partition
/// in the middle (seeded, `EPOCH_SEED`): three regions write to three keys
/// concurrently while keys move between them. From the recorded history
/// of acknowledged writes: no two regions ever accepted a write of one key
/// in one epoch. After the heal every region agrees, and no acknowledged
/// deposit was lost by a handoff: each key's balance is its acknowledged
/// deposits, plus at most those whose answer was lost.
#[test]
fn handoffs_under_faults_never_give_one_epoch_two_homes() {
    let seed = seed_from_env("EPOCH_SEED", 42);
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(seed);
        let regions = three_regions(&net).await;
        let keys: Vec<String> = NAMES.iter().map(|n| format!("{n}/acct")).collect();
        let faults = || {
            LinkFaults::new()
                .loss(0.1)
                .duplicate(0.1)
                .latency(Duration::from_millis(10))
                .jitter(Duration::from_millis(30))
        };
        net.set_faults_all(faults());
        let history = History::default();
        let tallies: Vec<RefCell<Tally>> = keys.iter().map(|_| RefCell::default()).collect();
        let worker = |w: usize| {
            let (history, tallies, keys) = (&history, &tallies, &keys);
            let table = accounts(&regions[w]);
            async move {
                let mut rng = TestRng::new(seed.wrapping_mul(31).wrapping_add(w as u64));
                for _ in 0..30 {
                    let k = rng.below(keys.len() as u64) as usize;
                    let key = &keys[k];
                    if rng.below(6) == 0 {
                        let to = NAMES[rng.below(3) as usize];
                        match table.move_home(key, to).await {
                            Ok(_) => tallies[k].borrow_mut().moves += 1,
                            Err(RegionError::HomeUnreachable { .. } | RegionError::HomedRefused { .. }) => {
                                tallies[k].borrow_mut().refused += 1;
                            }
                            Err(other) => panic!("seed {seed}: move: {other}"),
                        }
                    } else {
                        match table.apply(key, Deposit(1)).await {
                            Ok(write) => {
                                history.record(key, write.epoch, &write.home);
                                tallies[k].borrow_mut().succeeded += 1;
                            }
                            Err(HomedError::Region(RegionError::HomeUnreachable { maybe_applied, .. })) => {
                                tallies[k].borrow_mut().maybe += u64::from(maybe_applied);
                            }
                            Err(HomedError::Region(RegionError::HomedRefused {
                                refusal: HomedRefusal::NotHome { .. } | HomedRefusal::Moved { .. },
                                ..
                            })) => tallies[k].borrow_mut().refused += 1,
                            Err(other) => panic!("seed {seed}: write: {other}"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
                }
            }
        };
        let partition = async {
            let mut rng = TestRng::new(seed ^ 0x5eed);
            tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
            let a = rng.below(3) as usize;
            let b = (a + 1 + rng.below(2) as usize) % 3;
            net.partition(NAMES[a], NAMES[b]);
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
            // The reconnection under the same faults: a lost protocol
            // announcement is asked for again.
            net.heal(NAMES[a], NAMES[b]);
        };
        tokio::join!(worker(0), worker(1), worker(2), partition);
        net.set_faults_all(LinkFaults::new());
        net.heal_all();
        tokio::time::sleep(Duration::from_secs(10)).await;

        history.assert_one_home_per_epoch(seed);
        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        let moves: u64 = tallies.iter().map(|t| t.borrow().moves).sum();
        let moved: u64 = stats.iter().map(|s| s.homed_moves).sum();
        assert!(moved <= moves + tallies.iter().map(|t| t.borrow().refused).sum::<u64>(), "seed {seed}: {moved} handoffs written");
        for (k, key) in keys.iter().enumerate() {
            let tally = tallies[k].borrow();
            let applied = balance(&regions[0], key).unwrap_or(0);
            assert!(
                tally.succeeded <= applied && applied <= tally.succeeded + tally.maybe,
                "seed {seed}: {key}: {} acknowledged, {} may be, {applied} applied",
                tally.succeeded,
                tally.maybe
            );
            let meta = accounts(&regions[0]).meta(key).unwrap();
            for r in &regions {
                assert_eq!(balance(r, key), Some(applied).filter(|_| meta.is_some()), "seed {seed}: {key} at {}", r.name());
                assert_eq!(accounts(r).meta(key).unwrap(), meta, "seed {seed}: {key} at {}", r.name());
            }
        }
        println!(
            "seed {seed}: {} writes acknowledged, {moves} moves, {moved} handoffs, fenced {:?}, redirects {:?}",
            history.0.borrow().len(),
            stats.iter().map(|s| s.homed_fenced).collect::<Vec<_>>(),
            stats.iter().map(|s| s.homed_redirects).collect::<Vec<_>>(),
        );
        assert!(moved > 0, "seed {seed}: some key moved");
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// Tokyo, a key's home, is lost (isolated) and keeps accepting writes at
/// epoch 0; the operator fails it over to Frankfurt from Virginia, which
/// opens the next failover generation's epoch. Frankfurt accepts there;
/// when Tokyo returns it is fenced: its partitioned writes are lost (the
/// failover's state outranks them), its later writes are sent on to
/// Frankfurt, and no two regions accepted the key in one epoch.
#[test]
fn a_failover_fences_the_lost_home_when_it_returns() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(43);
        let regions = three_regions(&net).await;
        let history = History::default();
        let key = "ap-northeast/acct";
        let write = accounts(&regions[1]).apply(key, Deposit(10)).await.unwrap();
        history.record(key, write.epoch, &write.home);
        tokio::time::sleep(Duration::from_millis(200)).await;

        net.isolate("ap-northeast");
        // Acknowledged at the lost home: lost by the failover.
        let lost = accounts(&regions[0]).apply(key, Deposit(5)).await.unwrap();
        history.record(key, lost.epoch, &lost.home);
        assert_eq!((lost.epoch, lost.value.balance), (0, 15));
        // A key written only at Tokyo, never replicated.
        let unseen = "ap-northeast/unseen";
        accounts(&regions[0])
            .apply(unseen, Deposit(7))
            .await
            .unwrap();

        let failover = accounts(&regions[2])
            .fail_over_home("ap-northeast", "eu-central")
            .await
            .unwrap();
        assert_eq!(
            (failover.keys, failover.epoch),
            (1, HOMED_FAILOVER_EPOCH_STRIDE)
        );
        let unseen_over = accounts(&regions[2])
            .fail_over_key(unseen, "eu-central")
            .await
            .unwrap();
        assert_eq!(
            (unseen_over.keys, unseen_over.epoch),
            (1, HOMED_FAILOVER_EPOCH_STRIDE)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let write = accounts(&regions[2]).apply(key, Deposit(1)).await.unwrap();
        history.record(key, write.epoch, &write.home);
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("eu-central", HOMED_FAILOVER_EPOCH_STRIDE, 11),
            "the new home starts from what Virginia held"
        );
        // Still cut off, Tokyo accepts at epoch 0 again: lost too.
        let lost = accounts(&regions[0]).apply(key, Deposit(5)).await.unwrap();
        history.record(key, lost.epoch, &lost.home);
        assert_eq!((lost.home.as_str(), lost.epoch), ("ap-northeast", 0));

        net.heal_all();
        tokio::time::sleep(Duration::from_secs(3)).await;
        for r in &regions {
            assert_eq!(
                balance(r, key),
                Some(11),
                "{}: Tokyo's partitioned writes lost",
                r.name()
            );
            let meta = accounts(r).meta(key).unwrap().unwrap();
            assert_eq!(
                (meta.epoch, meta.home.as_str()),
                (HOMED_FAILOVER_EPOCH_STRIDE, "eu-central")
            );
            assert_eq!(
                balance(r, unseen),
                Some(0),
                "{}: failed over from nothing",
                r.name()
            );
        }
        // Tokyo is fenced: its write goes to Frankfurt.
        let write = accounts(&regions[0])
            .apply(key, Deposit(100))
            .await
            .unwrap();
        history.record(key, write.epoch, &write.home);
        assert_eq!(
            (write.home.as_str(), write.value.balance),
            ("eu-central", 111)
        );
        history.assert_one_home_per_epoch(43);

        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        assert_eq!(
            stats[2].homed_moves, 2,
            "the two failovers, written in Virginia"
        );
        // Tokyo's view moved when it heard of the failover: it forwarded
        // straight to Frankfurt, nothing was fenced or sent on.
        assert_eq!(
            stats[0].writes, 4,
            "Frankfurt's first deposit, and three cut off"
        );
        assert_eq!(
            stats[1].writes, 2,
            "Frankfurt's two deposits at the failover epoch"
        );
        assert_eq!(stats.iter().map(|s| s.homed_refused).sum::<u64>(), 0);
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// A home with redb storage hands a key off, shuts down and restarts cut
/// off from every peer: its view of the key (epoch 1, Frankfurt) came back
/// from disk, so it does not accept the key at epoch 0 again; it forwards
/// to Frankfurt, which it cannot reach, naming it.
#[cfg(feature = "redb")]
#[test]
fn a_restarted_home_keeps_its_view_of_epochs() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(44);
        let dir = std::env::temp_dir().join(format!("archipelago-epochs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tokyo_on = |net: &ChannelNetwork| {
            Region::builder("ap-northeast")
                .transport(net.endpoint("ap-northeast"))
                .clock(common::TokioClock::new(0))
                .data_dir(&dir)
                .build()
                .unwrap()
        };
        let tokyo = tokyo_on(&net);
        let others: Vec<Region> = NAMES[1..]
            .iter()
            .map(|n| region_on(&net, n, None, RegionConfig::default()))
            .collect();
        for r in others.iter().chain([&tokyo]) {
            accounts(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let key = "ap-northeast/acct";
        accounts(&tokyo).apply(key, Deposit(3)).await.unwrap();
        let moved = accounts(&tokyo).move_home(key, "eu-central").await.unwrap();
        assert_eq!(moved.epoch, 1);
        assert_eq!(tokyo.stats().committed, Some(2), "the handoff is on disk");
        tokyo.shutdown().await;
        drop(tokyo);

        net.isolate("ap-northeast");
        let tokyo = tokyo_on(&net);
        let table = accounts(&tokyo);
        let meta = table.meta(key).unwrap().unwrap();
        assert_eq!(
            (meta.epoch, meta.home.as_str(), meta.version),
            (1, "eu-central", 0)
        );
        assert_eq!(table.home_of(key).unwrap(), "eu-central");
        let writes = tokyo.stats().writes;
        let refused = table.apply(key, Deposit(1)).await.unwrap_err();
        match refused {
            HomedError::Region(RegionError::HomeUnreachable {
                home,
                maybe_applied,
                ..
            }) => {
                assert_eq!((home.as_str(), maybe_applied), ("eu-central", false));
            }
            other => panic!("{other}"),
        }
        let stats = tokyo.stats();
        // Its view sent the write straight to Frankfurt: nothing written.
        assert_eq!(
            (stats.writes, stats.homed_fenced, stats.homed_redirects),
            (writes, 0, 0)
        );
        net.heal_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let write = table.apply(key, Deposit(1)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("eu-central", 1, 4)
        );
        let regions: Vec<Region> = others.into_iter().chain([tokyo]).collect();
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

/// A peer of protocol 4 (a rolling upgrade): forwarded writes work as
/// before (epoch 0 in the answer), but no home moves while it is there.
#[test]
fn a_protocol_4_peer_keeps_homed_writes_and_blocks_moves() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(45);
        let old = RegionConfig {
            protocol_version_max: 4,
            ..RegionConfig::default()
        };
        let regions = vec![
            region_on(&net, NAMES[0], None, old),
            region_on(&net, NAMES[1], None, RegionConfig::default()),
        ];
        for r in &regions {
            accounts(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let key = "ap-northeast/acct";
        let write = accounts(&regions[1]).apply(key, Deposit(2)).await.unwrap();
        assert_eq!(
            (write.home.as_str(), write.epoch, write.value.balance),
            ("ap-northeast", 0, 2)
        );
        let refused = accounts(&regions[1])
            .move_home(key, "eu-central")
            .await
            .unwrap_err();
        match refused {
            RegionError::MoveProtocol {
                region, protocol, ..
            } => {
                assert_eq!((region.as_str(), protocol), ("ap-northeast", 4));
            }
            other => panic!("{other}"),
        }
        let failover = accounts(&regions[1])
            .fail_over_home("ap-northeast", "eu-central")
            .await;
        assert!(
            matches!(failover, Err(RegionError::MoveProtocol { .. })),
            "{failover:?}"
        );
        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        assert_eq!(stats.iter().map(|s| s.homed_moves).sum::<u64>(), 0);
        assert_eq!(stats[0].homed_served, 1);
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}
