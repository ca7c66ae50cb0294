//! A region never accepts a write it cannot replicate: after `shutdown` a
//! write is `Closed`, and once the engine fails (a panic in it, or in a
//! user resolver it runs while merging a peer's data) every read and write
//! returns the failure, which `stats()` names too. `shutdown` reports what
//! it flushed and what it could not.

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{EngineFailure, Region, RegionError};
use archipelago::resolve::{Resolver, Strategy, Versioned};
use archipelago::transport::ChannelNetwork;

fn region(net: &ChannelNetwork, name: &str) -> Region {
    Region::builder(name)
        .transport(net.endpoint(name))
        .build()
        .unwrap()
}

async fn connected(a: &Region, b: &Region) {
    while a.stats().syncs_completed == 0 || b.stats().syncs_completed == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls (on the paused clock) until `a` reports an engine failure;
/// panics after 10 s.
async fn failed(a: &Region) -> EngineFailure {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(failure) = a.stats().engine_failure {
            return failure;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine failure never showed in stats: {:?}",
            a.stats()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn inc(t: &archipelago::region::Table<u64, GCounter>, key: u64) -> Result<(), RegionError> {
    t.update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
        .await
        .map(|_| ())
}

#[tokio::test(start_paused = true)]
async fn a_write_after_shutdown_is_closed_and_the_report_says_what_was_flushed() {
    let net = ChannelNetwork::new(21);
    let a = region(&net, "a");
    let b = region(&net, "b");
    connected(&a, &b).await;
    let t = a.table::<u64, GCounter>("hits").unwrap();
    for key in 0..10 {
        inc(&t, key).await.unwrap();
    }
    let report = a.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.writes, 10);
    assert_eq!(report.peers.len(), 1);
    assert_eq!(report.peers[0].acknowledged, 10, "{report:?}");
    assert_eq!(report.peers[0].unacknowledged, 0);
    assert_eq!(report.engine_failure, None);

    let err = inc(&t, 99).await.unwrap_err();
    assert!(matches!(err, RegionError::Closed), "{err:?}");
    // Refused: nothing changed, nothing logged.
    let stats = a.stats();
    assert!(stats.closed);
    assert_eq!(stats.writes, 10);
    assert_eq!(stats.engine_failure, None);
    assert!(t.read(&99u64).await.unwrap().is_none(), "reads still work");
    assert_eq!(t.read(&0u64).await.unwrap().map(|c| c.value()), Some(1));
    // A resolver table too.
    let profiles = a
        .table_with::<u64, String>("profiles", archipelago::resolve::LastWriteWins)
        .unwrap();
    let err = profiles.put(&1u64, "x".into()).await.unwrap_err();
    assert!(matches!(err, RegionError::Closed), "{err:?}");
    assert_eq!(b.stats().batches_applied.min(1), 1);
    assert_eq!(b.stats().rejected_frames, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_the_writes_a_cut_off_peer_did_not_acknowledge() {
    let net = ChannelNetwork::new(22);
    let a = region(&net, "a");
    let b = region(&net, "b");
    connected(&a, &b).await;
    // The link drops every frame but stays up: a cannot flush to b.
    net.set_faults_all(archipelago::transport::LinkFaults::new().loss(1.0));
    let t = a.table::<u64, GCounter>("hits").unwrap();
    for key in 0..5 {
        inc(&t, key).await.unwrap();
    }
    let report = a.shutdown().await;
    assert!(!report.is_complete(), "{report:?}");
    assert_eq!(report.unacknowledged(), 5, "{report:?}");
    assert_eq!(report.peers[0].name, "b");
    assert!(report.waited >= a_default_shutdown_wait(), "{report:?}");
    assert_eq!(b.stats().batches_applied, 0);
}

fn a_default_shutdown_wait() -> Duration {
    archipelago::region::RegionConfig::default().shutdown_wait_max
}

#[tokio::test(start_paused = true)]
async fn an_engine_panic_surfaces_on_the_next_write_and_read_and_in_stats() {
    let net = ChannelNetwork::new(23);
    let a = region(&net, "a");
    let b = region(&net, "b");
    connected(&a, &b).await;
    let t = a.table::<u64, GCounter>("hits").unwrap();
    inc(&t, 1).await.unwrap();
    a.inject_engine_panic().await;
    failed(&a).await;
    let stats = a.stats();
    assert!(
        matches!(&stats.engine_failure, Some(EngineFailure::Panicked { message }) if message.contains("injected")),
        "{stats:?}"
    );
    let err = inc(&t, 2).await.unwrap_err();
    assert!(
        matches!(err, RegionError::Engine(EngineFailure::Panicked { .. })),
        "{err:?}"
    );
    let err = t.read(&1u64).await.unwrap_err();
    assert!(matches!(err, RegionError::Engine(_)), "{err:?}");
    assert_eq!(a.stats().writes, 1, "the refused write changed nothing");
    // Shutdown of a failed engine says so rather than hang.
    let report = a.shutdown().await;
    assert!(report.engine_failure.is_some() && !report.is_complete());
    // The peer is untouched.
    assert_eq!(b.stats().engine_failure, None);
    assert_eq!(b.stats().rejected_frames, 0);
}

/// A user resolver that panics: it runs inside the engine, while the
/// region's state is locked, when a peer's version conflicts with ours.
struct Panics;

impl Resolver<String> for Panics {
    fn strategy(&self) -> Strategy {
        Strategy::Custom("panics")
    }

    fn resolve(&self, _: &Versioned<String>, _: &Versioned<String>) -> Versioned<String> {
        panic!("the user's resolver panics");
    }
}

#[tokio::test(start_paused = true)]
async fn a_resolver_panic_while_merging_a_peers_write_fails_the_region_not_silently() {
    let net = ChannelNetwork::new(24);
    let a = region(&net, "a");
    let b = region(&net, "b");
    connected(&a, &b).await;
    let at_a = a.table_with::<u64, String>("profiles", Panics).unwrap();
    let at_b = b.table_with::<u64, String>("profiles", Panics).unwrap();
    let counter_b = b.table::<u64, GCounter>("hits").unwrap();
    // Concurrent versions of one key: merging them runs the resolver.
    at_a.put(&1u64, "from a".into()).await.unwrap();
    at_b.put(&1u64, "from b".into()).await.unwrap();
    let failure = failed(&b).await;
    assert!(
        matches!(&failure, EngineFailure::Panicked { message } if message.contains("resolver")),
        "{failure:?}"
    );
    let writes = b.stats().writes;
    let err = inc(&counter_b, 1).await.unwrap_err();
    assert!(matches!(err, RegionError::Engine(_)), "{err:?}");
    let err = at_b.put(&2u64, "later".into()).await.unwrap_err();
    assert!(matches!(err, RegionError::Engine(_)), "{err:?}");
    let err = at_b.read(&1u64).await.unwrap_err();
    assert!(matches!(err, RegionError::Engine(_)), "{err:?}");
    assert_eq!(b.stats().writes, writes);
}

/// Regions whose engines run on threads of their own
/// ([`RegionConfig::engine_thread`]), the rest of the default config.
fn threaded(net: &ChannelNetwork, name: &str) -> Region {
    Region::builder(name)
        .transport(net.endpoint(name))
        .config(archipelago::region::RegionConfig {
            engine_thread: true,
            ..Default::default()
        })
        .build()
        .unwrap()
}

/// Polls `done` every millisecond with the test's runtime thread blocked
/// (nothing on this current-thread runtime runs meanwhile); panics with
/// `what` after 10 s.
fn blocked_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not with this runtime's thread blocked, so an engine ran on it"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// On real time: engines on their own threads cannot follow the test's
/// paused clock. The test's runtime has one thread, which it blocks: only
/// engines running elsewhere can connect the regions and ship the write.
#[tokio::test]
async fn engines_on_their_own_threads_replicate_while_the_callers_runtime_is_blocked() {
    let net = ChannelNetwork::new(25);
    let a = threaded(&net, "a");
    let b = threaded(&net, "b");
    blocked_until("the regions connect", || {
        a.stats().syncs_completed > 0 && b.stats().syncs_completed > 0
    });
    let t = a.table::<u64, GCounter>("hits").unwrap();
    for key in 0..10 {
        inc(&t, key).await.unwrap();
    }
    blocked_until("b applies a's writes", || b.stats().batches_applied > 0);
    let tb = b.table::<u64, GCounter>("hits").unwrap();
    let mut session = archipelago::session::Session::new();
    session.record_write(
        &t.update(&10, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
            .await
            .unwrap(),
    );
    assert_eq!(
        tb.read_session(&10, &mut session)
            .await
            .unwrap()
            .map(|c| c.value()),
        Some(1)
    );
    for key in 0..10 {
        assert_eq!(
            tb.read(&key).await.unwrap().map(|c| c.value()),
            Some(1),
            "key {key}"
        );
    }
    let report = a.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.rejected_frames, sb.rejected_frames), (0, 0));
    assert_eq!(sb.syncs_completed, 1, "no repair by anti-entropy: {sb:?}");
    assert_eq!(sa.engine_failure, None);
}

#[tokio::test]
async fn a_panic_of_an_engine_on_its_own_thread_surfaces_as_a_task_engines_does() {
    let net = ChannelNetwork::new(27);
    let a = threaded(&net, "a");
    let _b = threaded(&net, "b");
    let t = a.table::<u64, GCounter>("hits").unwrap();
    inc(&t, 1).await.unwrap();
    a.inject_engine_panic().await;
    let failure = failed(&a).await;
    assert!(
        matches!(&failure, EngineFailure::Panicked { message } if message.contains("injected")),
        "{failure:?}"
    );
    let err = inc(&t, 2).await.unwrap_err();
    assert!(
        matches!(err, RegionError::Engine(EngineFailure::Panicked { .. })),
        "{err:?}"
    );
}
