//! Random session workloads across three regions over a slow, lossy
//! network, checked against the four session guarantees with zero
//! violations; and a session read that cannot be served in time errors
//! instead of returning stale data.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use archipelago::crdt::OrSet;
use archipelago::region::{Region, RegionError, Table};
use archipelago::session::Session;
use archipelago::transport::{ChannelNetwork, LinkFaults};
use proptest::prelude::*;

const NAMES: [&str; 3] = ["a", "b", "c"];
const SESSIONS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// Session `.0` at region `.1` adds a fresh element to its own key.
    Write(usize, usize),
    /// Session `.0` at region `.1` reads key `.2`.
    Read(usize, usize, usize),
    Sleep(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SESSIONS, 0..3usize).prop_map(|(s, r)| Op::Write(s, r)),
        3 => (0..SESSIONS, 0..3usize, 0..SESSIONS).prop_map(|(s, r, k)| Op::Read(s, r, k)),
        2 => (0..200u16).prop_map(Op::Sleep),
    ]
}

fn elements(set: Option<OrSet<u64>>) -> BTreeSet<u64> {
    set.map(|s| s.iter().copied().collect()).unwrap_or_default()
}

/// Checks, at every region, that each visible element's prerequisites are
/// visible too: the session's earlier writes (monotonic writes) and what its
/// earlier reads saw (writes follow reads).
async fn check_visibility(
    tables: &[Table<usize, OrSet<u64>>],
    requires: &BTreeMap<u64, BTreeSet<u64>>,
    seed: u64,
) -> Result<(), TestCaseError> {
    for (r, table) in tables.iter().enumerate() {
        let mut visible = BTreeSet::new();
        for k in 0..SESSIONS {
            visible.extend(elements(table.read(&k).await?));
        }
        for e in &visible {
            if let Some(needed) = requires.get(e) {
                let absent: Vec<_> = needed.difference(&visible).collect();
                prop_assert!(
                    absent.is_empty(),
                    "seed {}: region {} shows write {} without its prerequisites {:?}",
                    seed,
                    NAMES[r],
                    e,
                    absent
                );
            }
        }
    }
    Ok(())
}

async fn run(seed: u64, latency_ms: u64, loss: f64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let net = ChannelNetwork::new(seed);
    net.set_faults_all(
        LinkFaults::new()
            .latency(Duration::from_millis(latency_ms))
            .jitter(Duration::from_millis(latency_ms / 2 + 1))
            .loss(loss)
            .reorder(0.2),
    );
    let regions: Vec<Region> = NAMES
        .iter()
        .map(|n| common::region(&net, n, 0, common::test_config()))
        .collect();
    let tables: Vec<Table<usize, OrSet<u64>>> =
        regions.iter().map(|r| r.table("feed").unwrap()).collect();
    let mut sessions: Vec<Session> = (0..SESSIONS).map(|_| Session::new()).collect();
    let mut written: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); SESSIONS];
    let mut read_so_far: Vec<BTreeMap<usize, BTreeSet<u64>>> = vec![BTreeMap::new(); SESSIONS];
    let mut requires: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut next = 0u64;
    let mut refused = 0;
    for op in ops {
        match op {
            Op::Write(s, r) => {
                next += 1;
                let e = next;
                let result = tables[r]
                    .update_session(&s, &mut sessions[s], |set, ctx| {
                        set.apply(|set| set.insert(ctx.replica(), e))
                    })
                    .await;
                match result {
                    Ok(_) => {
                        let mut needed = written[s].clone();
                        for seen in read_so_far[s].values() {
                            needed.extend(seen);
                        }
                        requires.insert(e, needed);
                        written[s].insert(e);
                    }
                    Err(RegionError::SessionTimeout { .. }) => refused += 1,
                    Err(other) => return Err(TestCaseError::fail(other.to_string())),
                }
            }
            Op::Read(s, r, k) => match tables[r].read_session(&k, &mut sessions[s]).await {
                Ok(value) => {
                    let seen = elements(value);
                    if k == s {
                        let missing: Vec<_> = written[s].difference(&seen).collect();
                        prop_assert!(
                            missing.is_empty(),
                            "seed {}: read your writes broken: {:?} missing at {}",
                            seed,
                            missing,
                            NAMES[r]
                        );
                    }
                    let before = read_so_far[s].entry(k).or_default();
                    let lost: Vec<_> = before.difference(&seen).collect();
                    prop_assert!(
                        lost.is_empty(),
                        "seed {}: monotonic reads broken: {:?} no longer visible at {}",
                        seed,
                        lost,
                        NAMES[r]
                    );
                    *before = seen;
                }
                Err(RegionError::SessionTimeout { .. }) => refused += 1,
                Err(other) => return Err(TestCaseError::fail(other.to_string())),
            },
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms.into())).await,
        }
        check_visibility(&tables, &requires, seed).await?;
    }
    let _ = refused;
    for r in &regions {
        r.shutdown().await;
    }
    Ok(())
}

proptest! {
    #[test]
    fn session_histories_keep_all_four_guarantees(
        seed in any::<u64>(),
        latency_ms in 0..300u64,
        loss in 0.0..0.3f64,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        common::paused_runtime().block_on(run(seed, latency_ms, loss, ops))?;
    }
}

#[test]
fn a_session_read_that_cannot_be_served_in_time_errors() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(1);
        let tokyo = common::region(&net, "tokyo", 0, common::test_config());
        let frankfurt = common::region(&net, "frankfurt", 0, common::test_config());
        net.partition("tokyo", "frankfurt");
        let carts_t = tokyo.table::<String, OrSet<u64>>("carts").unwrap();
        let carts_f = frankfurt.table::<String, OrSet<u64>>("carts").unwrap();
        let mut session = Session::new();
        carts_t
            .update_session("u", &mut session, |c, ctx| {
                c.apply(|c| c.insert(ctx.replica(), 7))
            })
            .await
            .unwrap();

        let started = tokio::time::Instant::now();
        let err = carts_f.read_session("u", &mut session).await.unwrap_err();
        match err {
            RegionError::SessionTimeout {
                missing, waited, ..
            } => {
                assert_eq!(missing.len(), 1);
                assert_eq!(missing[0].replica, tokyo.replica());
                assert!(waited >= Duration::from_secs(2));
            }
            other => panic!("expected a session timeout, got {other}"),
        }
        assert!(started.elapsed() >= Duration::from_secs(2));
        // A plain read is served at once, eventual: the write is not there.
        assert!(carts_f.read("u").await.unwrap().is_none());

        net.heal_all();
        let cart = carts_f
            .read_session("u", &mut session)
            .await
            .unwrap()
            .unwrap();
        assert!(cart.contains(&7));
    });
}
