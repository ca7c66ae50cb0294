//! Every handle on one table is the same table: a second `table_with` with
//! a resolver of the same type shares the first one's conflict feed and
//! resolver; one with another resolver, or a CRDT handle on a resolver
//! table (or the reverse), is refused with a typed error.

use archipelago::region::{Region, RegionError};
use archipelago::resolve::{FirstWriteWins, LastWriteWins, VersionSet};
use archipelago::transport::ChannelNetwork;

#[tokio::test(start_paused = true)]
async fn a_second_handle_shares_the_feed_and_the_resolver_of_the_first() {
    let net = ChannelNetwork::new(11);
    let a = Region::builder("a")
        .transport(net.endpoint("a"))
        .build()
        .unwrap();
    let b = Region::builder("b")
        .transport(net.endpoint("b"))
        .build()
        .unwrap();
    let first = b
        .table_with::<u64, String>("profiles", LastWriteWins)
        .unwrap();
    let second = b
        .table_with::<u64, String>("profiles", LastWriteWins)
        .unwrap();
    let at_a = a
        .table_with::<u64, String>("profiles", LastWriteWins)
        .unwrap();

    // Concurrent writes (neither region has seen the other's): merging
    // them is a conflict, resolved at each region by its table's resolver.
    at_a.put(&1u64, "from a".to_string()).await.unwrap();
    second.put(&1u64, "from b".to_string()).await.unwrap();
    while b.stats().tables[0].conflicts == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let stats = b.stats();
    assert_eq!(stats.tables.len(), 1, "one table, not two: {stats:?}");
    assert_eq!(stats.rejected_frames, 0);
    assert!(stats.batches_applied + stats.sync_states_received >= 1);
    // The second handle's feed is the one the merge filled.
    assert_eq!(second.conflicts().stats().total, stats.tables[0].conflicts);
    assert_eq!(first.conflicts().stats().total, stats.tables[0].conflicts);
    // And both handles read the same winner.
    let read_first = first.read(&1u64).await.unwrap().unwrap();
    let read_second = second.read(&1u64).await.unwrap().unwrap();
    assert_eq!(read_first.value(), read_second.value());
}

#[tokio::test(start_paused = true)]
async fn a_handle_with_another_resolver_is_refused() {
    let region = Region::builder("solo").build().unwrap();
    region
        .table_with::<u64, String>("profiles", LastWriteWins)
        .unwrap();
    let err = region
        .table_with::<u64, String>("profiles", FirstWriteWins)
        .unwrap_err();
    match err {
        RegionError::ResolverMismatch {
            table,
            registered,
            requested,
        } => {
            assert_eq!(table, "profiles");
            assert!(registered.ends_with("LastWriteWins"), "{registered}");
            assert!(requested.ends_with("FirstWriteWins"), "{requested}");
        }
        other => panic!("expected ResolverMismatch, got {other:?}"),
    }
    // Nor is a resolver table's state handed out as a CRDT table...
    let err = region
        .table::<u64, VersionSet<String>>("profiles")
        .unwrap_err();
    assert!(
        matches!(err, RegionError::ResolverMismatch { .. }),
        "{err:?}"
    );
    // ... nor a CRDT table given a resolver.
    region.table::<u64, VersionSet<String>>("plain").unwrap();
    let err = region
        .table_with::<u64, String>("plain", LastWriteWins)
        .unwrap_err();
    assert!(
        matches!(err, RegionError::ResolverMismatch { .. }),
        "{err:?}"
    );
    // Another value type is still a type error.
    let err = region
        .table_with::<u64, u64>("profiles", LastWriteWins)
        .unwrap_err();
    assert!(matches!(err, RegionError::TableType { .. }), "{err:?}");
    assert_eq!(region.stats().tables.len(), 2);
}
