//! Transactions are seen whole in every region: a checker over random
//! workloads under loss, partitions and heals, and crashes and restarts of
//! regions with storage; and a region bootstrapped from empty by
//! anti-entropy never shows half a transaction.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{AckLevel, Region, RegionConfig, RegionError, RejectReason};
use archipelago::resolve::LastWriteWins;
use archipelago::storage::MemoryStorage;
use archipelago::transport::{ChannelNetwork, LinkFaults};

const NAMES: [&str; 3] = ["ap", "eu", "us"];

/// Transactions numbered from here end with a put in a resolver table,
/// stamped by the writer's clock (see [`stage`]).
const STAMPED_TXNS_FROM: u64 = 1 << 32;

/// How many of transaction `t`'s `k` writes `region` shows, read in one
/// snapshot (a read-only transaction): see [`stage`].
fn visible(region: &Region, t: u64, k: u32) -> u32 {
    let a = region.table::<(u64, u32), GCounter>("a").unwrap();
    let b = region.table::<(u64, u32), GCounter>("b").unwrap();
    let c = region.table_with::<u64, u32>("c", LastWriteWins).unwrap();
    let counters = if t >= STAMPED_TXNS_FROM { k - 1 } else { k };
    let (n, _) = region
        .transaction(|tx| {
            let mut n = 0;
            if counters < k && tx.read(&c, &t)?.is_some() {
                n += 1;
            }
            for i in 0..counters {
                let table = if i % 2 == 0 { &a } else { &b };
                if tx.read_crdt(table, &(t, i))?.is_some() {
                    n += 1;
                }
            }
            Ok::<_, RegionError>(n)
        })
        .unwrap();
    n
}

/// Stages transaction `t` of `k` writes at `region`: increments over two
/// counter tables, the last a put in a resolver table instead from
/// [`STAMPED_TXNS_FROM`] on.
fn stage(
    region: &Region,
    t: u64,
    k: u32,
) -> impl FnOnce(&mut archipelago::region::Transaction<'_>) -> Result<(), RegionError> {
    let a = region.table::<(u64, u32), GCounter>("a").unwrap();
    let b = region.table::<(u64, u32), GCounter>("b").unwrap();
    let c = region.table_with::<u64, u32>("c", LastWriteWins).unwrap();
    let counters = if t >= STAMPED_TXNS_FROM { k - 1 } else { k };
    move |tx| {
        for i in 0..counters {
            let table = if i % 2 == 0 { &a } else { &b };
            tx.update(table, &(t, i), |c, ctx| {
                c.apply(|c| c.inc(ctx.replica(), 1))
            })?;
        }
        if counters < k {
            tx.put(&c, &t, k)?;
        }
        Ok(())
    }
}

/// Writes transaction `t` of `k` increments (over both tables) at `region`.
fn write_transaction(region: &Region, t: u64, k: u32) {
    region.transaction(stage(region, t, k)).unwrap();
}

/// `Local`: a transaction returns once the commit holding all its writes
/// is on disk (a failing disk is the caller's error, and a crash right
/// after the return keeps it whole); without storage it is refused and
/// applies nothing.
#[test]
fn a_local_transaction_returns_once_its_commit_is_on_disk() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(7);
        let bare = common::region_on(&net, "ap", None, RegionConfig::default());
        let refused = bare
            .transaction_with_ack(AckLevel::Local, stage(&bare, 1, 8))
            .await;
        assert!(
            matches!(refused, Err(RegionError::NoStorage)),
            "{refused:?}"
        );
        assert_eq!(visible(&bare, 1, 8), 0, "nothing applied");
        bare.shutdown().await;

        let disk = MemoryStorage::new();
        let region = common::region_on(&net, "eu", Some(&disk), RegionConfig::default());
        disk.fail_commits(true);
        let failed = region
            .transaction_with_ack(AckLevel::Local, stage(&region, 2, 8))
            .await;
        assert!(matches!(failed, Err(RegionError::Storage(_))), "{failed:?}");
        disk.fail_commits(false);
        region
            .transaction_with_ack(AckLevel::Local, stage(&region, 3, 40))
            .await
            .unwrap();
        // Killed right after the acknowledgement: no shutdown, no commit.
        drop(region);
        let disk = disk.crash();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let region = common::region_on(&net, "eu", Some(&disk), RegionConfig::default());
        assert_eq!(
            visible(&region, 3, 40),
            40,
            "the acknowledged transaction survived whole"
        );
        region.shutdown().await;
    });
}

/// `Replicated(1)`: a transaction returns once the peer has applied all
/// of it; cut off, it times out with the typed error, stays applied here
/// and reaches the peer whole after the heal.
#[test]
fn a_replicated_transaction_returns_once_a_peer_applied_all_of_it() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(8);
        let config = RegionConfig::default();
        let a = common::region_on(&net, "ap", None, config.clone());
        let b = common::region_on(&net, "eu", None, config.clone());
        a.transaction_with_ack(AckLevel::Replicated(1), stage(&a, 1, 64))
            .await
            .unwrap();
        assert_eq!(visible(&b, 1, 64), 64, "applied at the peer on return");

        net.partition("ap", "eu");
        let started = tokio::time::Instant::now();
        let cut = a
            .transaction_with_ack(AckLevel::Replicated(1), stage(&a, 2, 10))
            .await;
        assert!(
            matches!(
                cut,
                Err(RegionError::ReplicationTimeout {
                    replicated: 0,
                    wanted: 1,
                    ..
                })
            ),
            "{cut:?}"
        );
        assert!(started.elapsed() >= config.replication_wait_max);
        assert_eq!((visible(&a, 2, 10), visible(&b, 2, 10)), (10, 0));
        net.heal_all();
        common::eventually("the cut-off transaction reaches eu", || async {
            visible(&b, 2, 10) == 10
        })
        .await;
        for r in [&a, &b] {
            assert_eq!(r.stats().rejected_frames, 0, "{}", r.name());
            r.shutdown().await;
        }
    });
}

#[test]
fn no_region_ever_shows_part_of_a_transaction() {
    check(RegionConfig::default(), false, 0);
}

/// One region's clock runs 2 s ahead, and each transaction ends with a
/// stamped put: such puts are refused in batches and set aside from
/// transfers elsewhere until the clocks allow, and the rest of their
/// transactions with them (protocol 7). Under loss a peer's protocol
/// announcement is lost now and then: a transfer to it waits until its
/// protocol is settled (`transfers_held`), never leaving without its
/// groups (seed 13 showed 60 of 61 writes of a transaction when it did).
/// `TXN_SEEDS=n` runs seeds 1 to n instead (the deep run).
#[test]
fn no_region_shows_part_of_a_transaction_whose_clock_runs_ahead() {
    for_seeds(|seed| check_seed(seed, RegionConfig::default(), false, 2_000));
}

/// Batches of a transaction's size at most: segment cuts come often.
#[test]
fn no_region_ever_shows_part_of_a_transaction_in_small_batches() {
    check(
        RegionConfig {
            batch_len_max: 64,
            ..RegionConfig::default()
        },
        false,
        0,
    );
}

/// Every region has storage, and regions crash (no shutdown: what was not
/// committed is gone) and restart on their storage, or shut down and
/// restart: still no region shows part of a transaction, the survivors
/// converge, and a transaction lost in a crash is lost everywhere.
#[test]
fn no_region_shows_part_of_a_transaction_across_crashes_and_restarts() {
    check(RegionConfig::default(), true, 0);
}

/// The seed (`TXN_SEED`, default 13) and a xorshift generator over it.
fn rng() -> (u64, impl FnMut() -> u64) {
    let seed = common::seed_from_env("TXN_SEED", 13);
    eprintln!("TXN_SEED={seed}");
    (seed, rng_of(seed))
}

/// Runs `check` on the seed `TXN_SEED` (default 13), or on every seed from
/// 1 to `TXN_SEEDS` when set (a deep run).
fn for_seeds(check: impl Fn(u64)) {
    match std::env::var("TXN_SEEDS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n) => (1..=n).for_each(|seed| {
            eprintln!("TXN_SEED={seed}");
            check(seed);
        }),
        None => check(rng().0),
    }
}

/// A xorshift generator over `seed`.
fn rng_of(seed: u64) -> impl FnMut() -> u64 {
    let mut rng = seed.wrapping_mul(6364136223846793005) | 1;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// The checker on the seed `TXN_SEED` (see [`check_seed`]).
fn check(config: RegionConfig, restarts: bool, ahead_ms: i64) {
    check_seed(rng().0, config, restarts, ahead_ms);
}

/// The checker: `ahead_ms` is how far the last region's clock runs ahead
/// (regions without storage only).
fn check_seed(seed: u64, config: RegionConfig, restarts: bool, ahead_ms: i64) {
    let mut next = rng_of(seed);
    common::paused_runtime().block_on(async move {
        let net = ChannelNetwork::new(seed);
        let mut disks: Vec<MemoryStorage> = NAMES.iter().map(|_| MemoryStorage::new()).collect();
        let build = |i: usize, disks: &[MemoryStorage]| {
            if restarts {
                common::region_on(&net, NAMES[i], Some(&disks[i]), config.clone())
            } else {
                let skew = if i == NAMES.len() - 1 { ahead_ms } else { 0 };
                common::region(&net, NAMES[i], skew, config.clone())
            }
        };
        let mut regions: Vec<Region> = (0..NAMES.len()).map(|i| build(i, &disks)).collect();
        // Transactions a crash may have lost: those of the crashed region
        // made before it crashed.
        let mut maybe_lost = std::collections::BTreeSet::new();
        let (mut crashes, mut restarted) = (0, 0);
        // (step, writes, region) of every transaction made.
        let mut txns: Vec<(u64, u32, usize)> = Vec::new();
        for step in 0..300u64 {
            match next() % 12 {
                0 => net.partition(NAMES[(next() % 3) as usize], NAMES[(next() % 3) as usize]),
                1 => net.heal_all(),
                2 => net.set_faults_all(LinkFaults::new().loss(0.4)),
                3 => net.set_faults_all(LinkFaults::new()),
                10 | 11 if restarts => {
                    let r = (next() % 3) as usize;
                    let old = regions.remove(r);
                    if next().is_multiple_of(2) {
                        // A crash: the dead process commits nothing more.
                        drop(old);
                        disks[r] = disks[r].crash();
                        maybe_lost.extend(txns.iter().filter(|t| t.2 == r).map(|t| t.0));
                        crashes += 1;
                    } else {
                        old.shutdown().await;
                        restarted += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    regions.insert(r, build(r, &disks));
                }
                _ => {
                    let r = (next() % 3) as usize;
                    let k = 2 + (next() % 63) as u32;
                    // Stamped, when a clock runs ahead: values to set aside.
                    let t = if ahead_ms > 0 { STAMPED_TXNS_FROM + step } else { step };
                    write_transaction(&regions[r], t, k);
                    txns.push((t, k, r));
                }
            }
            tokio::time::sleep(Duration::from_millis(next() % 20)).await;
            assert_whole(seed, &regions, &txns);
        }
        net.heal_all();
        net.set_faults_all(LinkFaults::new());
        // A value set aside (ahead) lands with the first exchange after the
        // clocks allow, which may be a whole periodic round later.
        let settle = if ahead_ms > 0 { 2 * config.anti_entropy_interval } else { Duration::from_secs(30) };
        tokio::time::sleep(settle).await;
        let mut lost = 0;
        for &(t, k, _) in &txns {
            let seen: Vec<u32> = regions.iter().map(|r| visible(r, t, k)).collect();
            if maybe_lost.contains(&t) && seen.iter().all(|&n| n == 0) {
                lost += 1;
                continue;
            }
            assert!(
                seen.iter().all(|&n| n == k),
                "seed {seed}: transaction {t} of {k} (of {}): {seen:?}; {}",
                NAMES[txns.iter().find(|x| x.0 == t).map_or(0, |x| x.2)],
                summary(&regions)
            );
        }
        let (mut ahead_refused, mut set_aside, mut held) = (0, 0, 0);
        for r in &regions {
            let stats = r.stats();
            let refused = clock_ahead_refusals(&stats);
            assert_eq!(stats.rejected_frames, refused, "seed {seed}: {}", r.name());
            ahead_refused += refused;
            set_aside += stats.transaction_values_set_aside;
            held += stats.transfers_held;
        }
        if ahead_ms > 0 {
            assert!(ahead_refused > 0, "seed {seed}: no value was ever ahead");
        }
        eprintln!(
            "seed {seed}: {} transactions, {crashes} crashes, {restarted} restarts, {lost} lost in crashes, {ahead_refused} batches ahead refused, {set_aside} values set aside with their transactions, {held} transfers held for a peer's protocol",
            txns.len()
        );
        if restarts {
            assert!(crashes > 0 && restarted > 0, "seed {seed}: no crash or no restart");
        }
    });
}

/// What each region's stats say of its repair: for a failed check.
fn summary(regions: &[Region]) -> String {
    let mut out = String::new();
    for r in regions {
        let s = r.stats();
        out += &format!(
            "{}: values ahead {}, set aside with transactions {}, syncs {}, transfers held {}, rejected {:?}, peers {:?}; ",
            r.name(),
            s.values_ahead,
            s.transaction_values_set_aside,
            s.syncs_completed,
            s.transfers_held,
            s.rejected_by_reason
                .iter()
                .filter(|(_, n)| *n > 0)
                .collect::<Vec<_>>(),
            s.peers
                .iter()
                .map(|p| (
                    p.name.clone(),
                    p.protocol,
                    p.connected,
                    p.unacknowledged,
                    p.behind
                ))
                .collect::<Vec<_>>(),
        );
    }
    out
}

/// Frames `stats` counts refused for a value stamped past the clock bound.
fn clock_ahead_refusals(stats: &archipelago::region::RegionStats) -> u64 {
    stats
        .rejected_by_reason
        .iter()
        .find(|(r, _)| *r == RejectReason::ClockAhead)
        .map_or(0, |(_, n)| *n)
}

/// No region shows part of any transaction in `txns`.
fn assert_whole(seed: u64, regions: &[Region], txns: &[(u64, u32, usize)]) {
    for region in regions {
        for &(t, k, _) in txns {
            let n = visible(region, t, k);
            assert!(
                n == 0 || n == k,
                "seed {seed}: {} shows {n} of {k} writes of transaction {t} of {} (values ahead {}, set aside with their transactions {})",
                region.name(),
                NAMES[txns.iter().find(|x| x.0 == t).map_or(0, |x| x.2)],
                region.stats().values_ahead,
                region.stats().transaction_values_set_aside,
            );
        }
    }
}

/// A region that joins empty is brought up to date by anti-entropy alone
/// (its peers' outboxes never held writes for it), in transfers cut into
/// many chunks; it shows each transaction whole or not at all at every
/// moment of the catch-up.
#[test]
fn a_region_bootstrapped_by_anti_entropy_never_shows_half_a_transaction() {
    let (seed, mut next) = rng();
    common::paused_runtime().block_on(async move {
        let config = RegionConfig {
            // Transfers of several chunks, so a partial transfer exists.
            sync_chunk_bytes_max: 4 * 1024,
            ..RegionConfig::default()
        };
        let net = ChannelNetwork::new(seed);
        let mut regions: Vec<Region> = NAMES[..2]
            .iter()
            .map(|n| common::region_on(&net, n, None, config.clone()))
            .collect();
        let mut txns = Vec::new();
        for t in 0..200u64 {
            let r = (next() % 2) as usize;
            let k = 2 + (next() % 63) as u32;
            write_transaction(&regions[r], t, k);
            txns.push((t, k, r));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        regions.push(common::region_on(&net, NAMES[2], None, config.clone()));
        let joined = &regions[2];
        let mut partial_views = 0;
        for _ in 0..20_000 {
            assert_whole(seed, std::slice::from_ref(joined), &txns);
            let shown = txns.iter().filter(|&&(t, k, _)| visible(joined, t, k) == k).count();
            if shown == txns.len() {
                break;
            }
            partial_views += usize::from(shown > 0);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let stats = joined.stats();
        let sync_bytes: u64 = stats.peers.iter().map(|p| p.sync_bytes_received).sum();
        assert!(
            txns.iter().all(|&(t, k, _)| visible(joined, t, k) == k),
            "seed {seed}: the new region caught up"
        );
        assert_eq!(stats.batches_applied, 0, "seed {seed}: caught up by batches, not anti-entropy");
        assert!(stats.syncs_completed >= 1, "seed {seed}: no exchange");
        assert!(
            sync_bytes > 2 * config.sync_chunk_bytes_max as u64,
            "seed {seed}: {sync_bytes} bytes: the transfer was not cut into chunks"
        );
        for r in &regions {
            assert_eq!(r.stats().rejected_frames, 0, "seed {seed}: {}", r.name());
        }
        eprintln!(
            "seed {seed}: {} states in {} bytes received, {partial_views} views with some transactions shown",
            stats.sync_states_received, sync_bytes
        );
    });
}

/// A transaction past the staged-write scan bound (an index finds its
/// writes) still joins every write of one key into one staged value, and
/// reads inside see them; with and without the index the results agree.
#[test]
fn a_large_transaction_joins_repeated_writes_of_a_key() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(9);
        let region = common::region_on(&net, "ap", None, RegionConfig::default());
        let table = region.table::<(u64, u32), GCounter>("a").unwrap();
        for writes in [8u32, 40] {
            let (seen, _) = region
                .transaction(|tx| {
                    for i in 0..writes {
                        tx.update(&table, &(u64::from(writes), i), |c, ctx| {
                            c.apply(|c| c.inc(ctx.replica(), 1))
                        })?;
                    }
                    // Every key again, in reverse: each joins its staged write.
                    for i in (0..writes).rev() {
                        tx.update(&table, &(u64::from(writes), i), |c, ctx| {
                            c.apply(|c| c.inc(ctx.replica(), 2))
                        })?;
                    }
                    let mut seen = Vec::new();
                    for i in 0..writes {
                        let c = tx.read_crdt(&table, &(u64::from(writes), i))?;
                        seen.push(c.map_or(0, |c| c.value()));
                    }
                    Ok::<_, RegionError>(seen)
                })
                .unwrap();
            assert!(seen.iter().all(|&n| n == 3), "{writes} writes: {seen:?}");
            for i in 0..writes {
                let c = table.read(&(u64::from(writes), i)).await.unwrap();
                assert_eq!(c.map(|c| c.value()), Some(3), "{writes} writes, key {i}");
            }
        }
        assert_eq!(
            region.stats().writes,
            48,
            "one write per key, not per update"
        );
        region.shutdown().await;
    });
}

/// Transaction `t` at `region`: an order put in the resolver table
/// `orders` (stamped by the region's clock) and a sale counted in the
/// `GCounter` table `sold` (not stamped).
fn order(region: &Region, t: u64) {
    let orders = region
        .table_with::<u64, String>("orders", LastWriteWins)
        .unwrap();
    let sold = region.table::<u64, GCounter>("sold").unwrap();
    region
        .transaction(|tx| {
            tx.put(&orders, &t, format!("order {t}"))?;
            tx.update(&sold, &t, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
        })
        .unwrap();
}

/// Which of transaction `t`'s two writes `region` shows, in one snapshot:
/// (the order, the sale).
fn order_shown(region: &Region, t: u64) -> (bool, bool) {
    let orders = region
        .table_with::<u64, String>("orders", LastWriteWins)
        .unwrap();
    let sold = region.table::<u64, GCounter>("sold").unwrap();
    region
        .transaction(|tx| {
            let order = tx.read(&orders, &t)?.is_some();
            let sale = tx.read_crdt(&sold, &t)?.is_some();
            Ok::<_, RegionError>((order, sale))
        })
        .unwrap()
        .0
}

/// Issue 13's last gap: a region whose clock runs 3 s ahead writes
/// transactions of a stamped order and an unstamped sale; a region that
/// joins later is repaired by anti-entropy, which sets aside the orders
/// (stamped past its clock's bound) for as long as the clock runs ahead.
/// Checked every millisecond of virtual time (then every 10): the sale
/// never shows without its order (without transaction groups in the
/// transfer it did, until the next exchange), and both land with the next
/// exchange once the clock allows. Default `RegionConfig`.
#[test]
fn anti_entropy_never_shows_part_of_a_transaction_whose_clock_runs_ahead() {
    let (shown_apart, stats) = order_repair(RegionConfig::default(), None);
    assert_eq!(shown_apart, 0, "a sale was shown without its order");
    assert!(
        stats.values_ahead > 0,
        "no order was ever ahead: the test tests nothing"
    );
    assert!(
        stats.transaction_values_set_aside > 0,
        "no sale was set aside with its order"
    );
}

/// A region of protocol 6 gets plain transfers from one of protocol 7 and
/// still converges. It shows sales without their orders meanwhile, as
/// every build did before protocol 7: the scenario above is the gap.
#[test]
fn a_protocol_6_region_is_repaired_by_a_protocol_7_one() {
    let (shown_apart, stats) = order_repair(
        RegionConfig {
            protocol_version_max: 6,
            ..RegionConfig::default()
        },
        None,
    );
    assert!(shown_apart > 0, "the scenario does not open the gap");
    assert!(stats.values_ahead > 0);
    assert_eq!(
        stats.transaction_values_set_aside, 0,
        "no groups below protocol 7"
    );
}

/// The scenario above with the writer restarted from its storage (shut
/// down, or crashed once its transactions were on disk) before the other
/// region joins: its groups were stored with the transactions' commit, so
/// its transfers still name them. In memory and in redb. Default
/// `RegionConfig`.
#[test]
fn a_region_restarted_from_storage_still_ships_its_transactions_whole() {
    let dir = std::env::temp_dir().join(format!("archipelago-txdurable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disks = [
        Disk::Memory(MemoryStorage::new(), false),
        Disk::Memory(MemoryStorage::new(), true),
        Disk::Redb(dir.join("ahead.redb")),
    ];
    for disk in disks {
        let what = format!("{disk:?}");
        let (shown_apart, stats) = order_repair(RegionConfig::default(), Some(disk));
        assert_eq!(shown_apart, 0, "{what}: a sale was shown without its order");
        assert!(stats.values_ahead > 0, "{what}: no order was ever ahead");
        assert!(
            stats.transaction_values_set_aside > 0,
            "{what}: no sale was set aside with its order: the restarted writer named no group"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Where the writer of [`order_repair`] keeps its state across a restart.
#[derive(Debug)]
enum Disk {
    /// In memory; `true`: the restart is a crash (after a `Local` commit).
    Memory(MemoryStorage, bool),
    Redb(std::path::PathBuf),
}

/// The writer of [`order_repair`], its clock 3 s ahead, on `disk`.
fn ahead_region(net: &ChannelNetwork, disk: Option<&Disk>) -> Region {
    let builder = Region::builder("ahead")
        .transport(net.endpoint("ahead"))
        .clock(common::TokioClock::new(3_000))
        .config(RegionConfig::default());
    match disk {
        None => builder.replica_id(archipelago::clock::ReplicaId::from_name("ahead")),
        Some(Disk::Memory(memory, _)) => builder.storage(memory.clone()),
        Some(Disk::Redb(path)) => {
            builder.storage(archipelago::storage::RedbStorage::open(path).unwrap())
        }
    }
    .build()
    .unwrap()
}

/// Writes 20 orders at a region 3 s ahead (restarted from `disk` when
/// given), then starts a region of `config` and watches it catch up
/// (asserting it does, by anti-entropy, with no frame refused): how many
/// times it showed a sale without its order or the reverse, and its stats.
fn order_repair(
    config: RegionConfig,
    disk: Option<Disk>,
) -> (usize, archipelago::region::RegionStats) {
    const TXNS: u64 = 20;
    common::paused_runtime().block_on(async move {
        let net = ChannelNetwork::new(7);
        let mut ahead = ahead_region(&net, disk.as_ref());
        for t in 0..TXNS {
            order(&ahead, t);
        }
        match &disk {
            None => {}
            Some(Disk::Memory(memory, true)) => {
                // Past a tick: the group commit holds every transaction.
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(
                    memory.keys(),
                    2 * TXNS as usize,
                    "committed before the crash"
                );
                drop(ahead);
                let restarted = Disk::Memory(memory.crash(), true);
                tokio::time::sleep(Duration::from_millis(1)).await;
                ahead = ahead_region(&net, Some(&restarted));
            }
            Some(disk) => {
                ahead.shutdown().await;
                drop(ahead);
                tokio::time::sleep(Duration::from_millis(1)).await;
                ahead = ahead_region(&net, Some(disk));
            }
        }
        if disk.is_some() {
            assert_eq!(ahead.incarnation(), 2, "restarted from its storage");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let joined = common::region(&net, "joined", 0, config);
        let mut shown_apart = 0;
        let mut whole = 0;
        // Every ms while the orders are ahead, every 10 ms until the next
        // periodic exchange (30 s) has brought them.
        for step in 0..8_000 {
            let shown: Vec<(bool, bool)> = (0..TXNS).map(|t| order_shown(&joined, t)).collect();
            shown_apart += shown.iter().filter(|(o, s)| o != s).count();
            whole = shown.iter().filter(|(o, s)| *o && *s).count();
            if whole == TXNS as usize {
                break;
            }
            let every = if step < 4_000 { 1 } else { 10 };
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
        assert_eq!(whole, TXNS as usize, "the joined region caught up");
        let stats = joined.stats();
        assert_eq!(
            stats.batches_applied, 0,
            "caught up by batches, not anti-entropy"
        );
        assert!(stats.syncs_completed >= 1, "no exchange");
        // Only batches carrying orders ahead are refused (resent by their
        // origin, as a batch is refused whole).
        for region in [&ahead, &joined] {
            let s = region.stats();
            let ahead_refused = clock_ahead_refusals(&s);
            assert_eq!(
                s.rejected_frames,
                ahead_refused,
                "{}: {:?}",
                region.name(),
                s.rejected_by_reason
            );
        }
        (shown_apart, stats)
    })
}
