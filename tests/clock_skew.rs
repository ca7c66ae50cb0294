//! A region whose clock runs ahead cannot win every last-writer-wins
//! conflict: a value stamped past a receiver's clock plus its max offset is
//! refused until the receiver's clock is within the offset, and a write
//! made after the value was seen wins over it. Default `RegionConfig`.

use crate::common;

use std::time::Duration;

use archipelago::region::RegionConfig;
use archipelago::region::ResolverTable;
use archipelago::resolve::LastWriteWins;
use archipelago::transport::ChannelNetwork;

async fn value(table: &ResolverTable<u8, String>) -> Option<String> {
    let read = table.read(&1u8).await.unwrap()?;
    read.value().cloned()
}

/// Guards against a region 10 s ahead winning every conflict for 10 s:
/// its value showed at once elsewhere, stamped so late that writes made
/// after seeing it lost to it.
#[test]
fn a_value_from_a_clock_running_ahead_lands_late_and_loses_to_later_writes() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(3);
        let ahead = common::region(&net, "ahead", 10_000, RegionConfig::default());
        let honest = common::region(&net, "honest", 0, RegionConfig::default());
        let at_ahead = ahead.table_with::<u8, String>("p", LastWriteWins).unwrap();
        let at_honest = honest.table_with::<u8, String>("p", LastWriteWins).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;

        at_ahead
            .put(&1u8, "from the future".to_owned())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(value(&at_honest).await, None, "refused for now");
        assert!(honest.stats().rejected_frames > 0);

        // Once the honest clock is within the max offset (500 ms) of the
        // stamp, it lands (resent by the writer).
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(value(&at_honest).await.as_deref(), Some("from the future"));
        // A write made after seeing it wins, everywhere.
        at_honest.put(&1u8, "later".to_owned()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for table in [&at_ahead, &at_honest] {
            assert_eq!(value(table).await.as_deref(), Some("later"));
        }
    });
}
