//! Retiring a region for good: sessions stop waiting for its lost writes,
//! outboxes stop keeping writes for it, and it is refused if it comes
//! back, across restarts too. Default `RegionConfig` timings.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig, RegionError};
use archipelago::session::Session;
use archipelago::storage::MemoryStorage;
use archipelago::transport::ChannelNetwork;

fn region(net: &ChannelNetwork, name: &str, disk: Option<&MemoryStorage>) -> Region {
    common::region_on(net, name, disk, RegionConfig::default())
}

async fn add(region: &Region, key: u64) -> archipelago::session::SessionToken {
    common::add(region, "t", key, 1).await
}

/// Guards against a session that saw a write of a region lost for good
/// waiting on it forever (every read timing out), the outbox keeping writes
/// for the lost region, and the lost name coming back unnoticed.
#[test]
fn a_retired_region_is_not_waited_for_and_is_refused_when_it_returns() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(11);
        let disk = MemoryStorage::new();
        let a = region(&net, "a", Some(&disk));
        let b = region(&net, "b", None);
        let c = region(&net, "c", None);
        add(&c, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // c's next write is seen by a client, then c is cut off and lost.
        net.isolate("c");
        let mut session = Session::new();
        session.record_write(&add(&c, 2).await);
        let c_id = c.replica();
        drop(c);
        add(&a, 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let table = a.table::<u64, GCounter>("t").unwrap();
        let waited = table.read_session(&1u64, &mut session.clone()).await;
        assert!(
            matches!(waited, Err(RegionError::SessionTimeout { .. })),
            "{waited:?}"
        );
        assert!(a.stats().outbox_len > 0, "a keeps its write for c");

        assert!(matches!(a.retire_peer("a"), Err(RegionError::RetireSelf)));
        assert_eq!(a.retire_peer("c").unwrap(), vec![c_id]);
        b.retire_peer("c").unwrap();
        let started = tokio::time::Instant::now();
        let read = table.read_session(&1u64, &mut session).await.unwrap();
        assert_eq!(read.map(|c| c.value()), Some(1));
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "not waiting for c"
        );
        add(&a, 4).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.stats().outbox_len, 0, "nothing kept for c");
        assert!(a.stats().peers.iter().all(|p| p.name != "c"));

        // A process comes back under the retired name: refused, not merged.
        net.heal_all();
        let again = region(&net, "c", None);
        add(&again, 9).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(a.stats().refused_handshakes >= 1);
        assert_eq!(table.read(&9u64).await.unwrap(), None);

        // The retirement survives a restart of a.
        a.shutdown().await;
        drop((a, table));
        let a = region(&net, "a", Some(&disk));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            a.table::<u64, GCounter>("t")
                .unwrap()
                .read(&9u64)
                .await
                .unwrap(),
            None
        );
        assert!(a.stats().peers.iter().all(|p| p.name != "c"));
        assert!(a.stats().refused_handshakes >= 1);
    });
}
