//! Homed tables (issue 11): every key has one home region, the only one
//! that writes it. Writes made at the home apply there; writes made
//! elsewhere are forwarded, applied once at the home and answered with its
//! token; a home that cannot be reached fails them within
//! `homed_forward_timeout`, naming it, and nothing applies anywhere.
//!
//! Three regions on the default config, on the paused clock. Seeded:
//! `HOMED_SEED=<n>` replays the lossy-link schedule (the seed is printed).

use crate::common;

use std::time::Duration;

use archipelago::region::{HomedError, HomedTable, Region, RegionConfig, RegionError};
use archipelago::session::Session;
use archipelago::transport::{ChannelNetwork, LinkFaults};
use common::accounts::{
    Account, Entry, InsufficientFunds, NAMES, assert_nothing_rejected, shutdown,
};
use common::{paused_runtime, region_on, seed_from_env};
use tokio::time::Instant;

/// The account homed at `region`: `"<region>/acct"`.
fn account(region: &str) -> String {
    format!("{region}/acct")
}

/// Accounts live in the region their name starts with.
fn home_of(account: &str) -> String {
    account.split('/').next().unwrap_or_default().to_owned()
}

fn accounts(region: &Region) -> HomedTable<String, Account> {
    region
        .homed_table::<String, Account>("accounts", |key: &String| home_of(key))
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

/// Every region deposits into every region's account: at the home it
/// applies at once, elsewhere it is forwarded; each write's token makes a
/// session read in the writing region see it, within a bounded wait; only
/// homes write; everything converges.
#[test]
fn writes_at_home_and_forwarded_from_both_others_are_visible_everywhere() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(31);
        let regions = three_regions(&net).await;
        let mut expected = [0u64; 3];
        for (w, writer) in regions.iter().enumerate() {
            let mut session = Session::new();
            for (h, home) in NAMES.iter().enumerate() {
                let n = 10u64.pow(w as u32);
                let started = Instant::now();
                let write = accounts(writer)
                    .apply_session(&account(home), Entry::Deposit(n), &mut session)
                    .await
                    .unwrap();
                let took = started.elapsed();
                expected[h] += n;
                assert_eq!(
                    write.value.balance, expected[h],
                    "the value after the write"
                );
                if w == h {
                    assert_eq!(
                        took,
                        Duration::ZERO,
                        "a write at its home never waits on the network"
                    );
                } else {
                    // One round trip: the request leaves on the next tick.
                    assert!(took <= Duration::from_millis(20), "forwarded in {took:?}");
                }
                let started = Instant::now();
                let read = accounts(writer)
                    .read_session(&account(home), &mut session)
                    .await
                    .unwrap();
                assert_eq!(
                    read,
                    Some(write.value.clone()),
                    "{} reads its write",
                    writer.name()
                );
                assert!(
                    started.elapsed() <= Duration::from_millis(50),
                    "the session read waited {:?}",
                    started.elapsed()
                );
                let at_home = accounts(writer).read_at_home(&account(home)).await.unwrap();
                assert_eq!(at_home.value, Some(write.value));
                assert_eq!(
                    at_home.token, write.token,
                    "the last write of the key is this one"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in &regions {
            for (h, home) in NAMES.iter().enumerate() {
                assert_eq!(
                    balance(r, &account(home)),
                    Some(expected[h]),
                    "{}",
                    r.name()
                );
                let meta = accounts(r).meta(&account(home)).unwrap().unwrap();
                assert_eq!(
                    (meta.epoch, meta.home.as_str(), meta.version),
                    (0, *home, 3)
                );
            }
        }
        for r in &regions {
            let stats = r.stats();
            // Only the home wrote: three deposits into its own account.
            assert_eq!(stats.writes, 3, "{}", r.name());
            assert_eq!(
                stats.homed_forwarded,
                2 + 2,
                "{}: two writes and two reads",
                r.name()
            );
            assert_eq!(stats.homed_served, 4, "{}", r.name());
            assert_eq!(
                stats.homed_duplicates + stats.homed_refused,
                0,
                "{}",
                r.name()
            );
        }
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// A home partitioned away: forwarded writes (and reads at the home) fail
/// after `homed_forward_timeout`, naming it, sent never, applied nowhere;
/// the home still writes its own keys; once healed, forwarding works.
#[test]
fn a_home_cut_off_fails_forwarded_writes_within_the_timeout_naming_it() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(32);
        let regions = three_regions(&net).await;
        let timeout = RegionConfig::default().homed_forward_timeout;
        net.isolate("us-east");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let key = account("us-east");
        for writer in &regions[..2] {
            let started = Instant::now();
            let failed = accounts(writer).apply(&key, Entry::Deposit(5)).await;
            let took = started.elapsed();
            match failed {
                Err(HomedError::Region(RegionError::HomeUnreachable {
                    home,
                    table,
                    maybe_applied,
                    waited,
                })) => {
                    assert_eq!((home.as_str(), table.as_str()), ("us-east", "accounts"));
                    assert!(!maybe_applied, "the request never left");
                    assert_eq!(waited, took);
                }
                other => panic!("{}: {other:?}", writer.name()),
            }
            assert!(took >= timeout && took <= timeout + Duration::from_millis(10), "{took:?}");
            let read = accounts(writer).read_at_home(&key).await;
            assert!(
                matches!(&read, Err(RegionError::HomeUnreachable { home, .. }) if home == "us-east"),
                "{read:?}"
            );
        }
        // The home still writes its own keys.
        accounts(&regions[2]).apply(&key, Entry::Deposit(1)).await.unwrap();
        net.heal_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for r in &regions {
            assert_eq!(balance(r, &key), Some(1), "{}: only the home's write", r.name());
        }
        let write = accounts(&regions[0]).apply(&key, Entry::Deposit(2)).await.unwrap();
        assert_eq!(write.value.balance, 3);
        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        assert_eq!(stats[2].writes, 2, "the home wrote its deposit and the healed one");
        assert_eq!(stats[0].writes + stats[1].writes, 0, "nothing applied away from home");
        assert_eq!(stats[2].homed_served, 1);
        assert_eq!(stats[0].homed_forwarded, 1, "only the request after the heal left");
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// Every frame on every link delivered twice: each forwarded request
/// reaches the home twice and is applied once, answered twice (the second
/// answer ignored); the balance is exact, and a refused debit is refused
/// the same way both times.
#[test]
fn a_duplicating_link_never_applies_a_forwarded_op_twice() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(33);
        let regions = three_regions(&net).await;
        net.set_faults_all(LinkFaults::new().duplicate(1.0));
        let key = account("eu-central");
        let (tokyo, virginia) = (accounts(&regions[0]), accounts(&regions[2]));
        for _ in 0..50 {
            tokyo.apply(&key, Entry::Deposit(1)).await.unwrap();
            virginia.apply(&key, Entry::Deposit(1)).await.unwrap();
        }
        let refused = tokyo.apply(&key, Entry::Withdraw(101)).await;
        assert!(
            matches!(
                &refused,
                Err(HomedError::Rejected { home, rejection: InsufficientFunds { balance: 100, wanted: 101 } })
                    if home == "eu-central"
            ),
            "{refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in &regions {
            assert_eq!(balance(r, &key), Some(100), "{}", r.name());
        }
        let home = regions[1].stats();
        assert_eq!(home.writes, 100, "one write per deposit");
        assert_eq!(home.homed_served, 101);
        assert_eq!(home.homed_duplicates, 101, "every request arrived twice");
        assert!(net.stats().frames_duplicated > 0);
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// A debit larger than the balance, forwarded or at the home, returns the
/// typed rejection with what the home holds; nothing changes anywhere.
#[test]
fn a_refused_debit_returns_the_typed_rejection() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(34);
        let regions = three_regions(&net).await;
        let key = account("ap-northeast");
        accounts(&regions[0])
            .apply(&key, Entry::Deposit(30))
            .await
            .unwrap();
        for r in &regions {
            let refused = accounts(r)
                .apply(&key, Entry::Withdraw(31))
                .await
                .unwrap_err();
            match refused {
                HomedError::Rejected { home, rejection } => {
                    assert_eq!(home, "ap-northeast");
                    assert_eq!(
                        rejection,
                        InsufficientFunds {
                            balance: 30,
                            wanted: 31
                        }
                    );
                }
                other => panic!("{}: {other}", r.name()),
            }
        }
        let ok = accounts(&regions[1])
            .apply(&key, Entry::Withdraw(30))
            .await
            .unwrap();
        assert_eq!(ok.value.balance, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        for r in &regions {
            assert_eq!(balance(r, &key), Some(0), "{}", r.name());
        }
        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        assert_eq!(stats[0].writes, 2, "the deposit and the debit that fit");
        assert_eq!(stats[0].homed_served, 3, "two rejections and one debit");
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// Links that lose frames (seeded): requests and answers are resent, and
/// whatever is lost, each forwarded deposit applies at most once. A call
/// that succeeded applied exactly once; one that timed out applied at most
/// once, only if its request left.
#[test]
fn lossy_links_apply_each_forwarded_op_at_most_once() {
    let seed = seed_from_env("HOMED_SEED", 35);
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(seed);
        let regions = three_regions(&net).await;
        net.set_faults_all(
            LinkFaults::new()
                .loss(0.2)
                .duplicate(0.2)
                .latency(Duration::from_millis(20))
                .jitter(Duration::from_millis(20)),
        );
        let key = account("us-east");
        let (mut succeeded, mut maybe) = (0u64, 0u64);
        for i in 0..40 {
            let writer = accounts(&regions[i % 2]);
            match writer.apply(&key, Entry::Deposit(1)).await {
                Ok(_) => succeeded += 1,
                Err(HomedError::Region(RegionError::HomeUnreachable { maybe_applied, .. })) => {
                    maybe += u64::from(maybe_applied);
                }
                Err(other) => panic!("seed {seed}: {other}"),
            }
        }
        net.set_faults_all(LinkFaults::new());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let home = regions[2].stats();
        let applied = balance(&regions[2], &key).unwrap_or(0);
        assert!(
            succeeded <= applied && applied <= succeeded + maybe,
            "seed {seed}: {succeeded} succeeded, {maybe} may have, {applied} applied"
        );
        assert_eq!(
            home.writes, applied,
            "seed {seed}: one write per deposit applied"
        );
        assert!(
            home.homed_duplicates > 0,
            "seed {seed}: some request arrived again"
        );
        for r in &regions {
            assert_eq!(balance(r, &key), Some(applied), "seed {seed}: {}", r.name());
        }
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// A home with storage answers a forwarded write once the write is
/// committed there: the caller's success means `Local` at the home.
#[test]
fn a_durable_home_answers_once_the_write_is_committed() {
    use archipelago::storage::MemoryStorage;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(36);
        let disk = MemoryStorage::new();
        let regions = vec![
            region_on(&net, NAMES[0], None, RegionConfig::default()),
            region_on(&net, NAMES[1], Some(&disk), RegionConfig::default()),
        ];
        for r in &regions {
            accounts(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let key = account("eu-central");
        for n in 1..=5u64 {
            let write = accounts(&regions[0])
                .apply(&key, Entry::Deposit(1))
                .await
                .unwrap();
            assert_eq!(write.value.balance, n);
            let home = regions[1].stats();
            assert!(
                home.committed >= Some(home.writes),
                "answered before its commit: {:?} of {}",
                home.committed,
                home.writes
            );
        }
        // And at the home itself.
        accounts(&regions[1])
            .apply(&key, Entry::Deposit(1))
            .await
            .unwrap();
        let home = regions[1].stats();
        assert_eq!((home.writes, home.committed), (6, Some(6)));
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}

/// Regions whose placements disagree: the region asked as the home does
/// not place the key at itself and refuses, naming the home it sees;
/// nothing is applied.
#[test]
fn a_home_whose_placement_disagrees_refuses_naming_its_home() {
    use archipelago::region::HomedRefusal;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(37);
        let regions = three_regions(&net).await;
        // Tokyo alone places "moved/acct" at Frankfurt (by its pinned
        // entry); Frankfurt places it by its prefix: at no region named
        // "moved". The pin of a second declaration is dropped, so a fresh
        // table name.
        let placement = archipelago::region::Placement::by(|key: &String| home_of(key))
            .pin("moved/acct", "eu-central");
        let tokyo = regions[0]
            .homed_table::<String, Account>("moved", placement)
            .unwrap();
        regions[1]
            .homed_table::<String, Account>("moved", |key: &String| home_of(key))
            .unwrap();
        let refused = tokyo
            .apply("moved/acct", Entry::Deposit(1))
            .await
            .unwrap_err();
        match refused {
            HomedError::Region(RegionError::HomedRefused { home, refusal, .. }) => {
                assert_eq!(home, "eu-central");
                assert_eq!(
                    refusal,
                    HomedRefusal::NotHome {
                        home: Some("moved".into())
                    }
                );
            }
            other => panic!("{other}"),
        }
        let stats: Vec<_> = regions.iter().map(Region::stats).collect();
        assert_eq!(stats[1].homed_refused, 1);
        assert_eq!(stats.iter().map(|s| s.writes).sum::<u64>(), 0);
        assert_nothing_rejected(&regions);
        shutdown(&regions).await;
    });
}
