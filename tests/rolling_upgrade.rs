//! Regions on different builds during a rolling upgrade: one speaks the
//! current engine protocol, one is pinned to the previous one (as a build
//! of protocol 1 speaks); both replicate both ways, and once both speak
//! the current one they agree on it.

use crate::common;

use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{PROTOCOL_VERSION, Region, RegionConfig};
use archipelago::transport::ChannelNetwork;
use common::{paused_runtime, region_on};

async fn value(region: &Region, key: u64) -> u64 {
    let table = region.table::<u64, GCounter>("likes").unwrap();
    table.read(&key).await.unwrap().map_or(0, |c| c.value())
}

fn protocol_with(region: &Region, peer: &str) -> u16 {
    region
        .stats()
        .peers
        .iter()
        .find(|p| p.name == peer)
        .unwrap()
        .protocol
}

#[test]
fn a_new_build_and_an_old_one_replicate_both_ways_then_agree_on_the_new_protocol() {
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(11);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let old_config = RegionConfig {
            protocol_version_max: 1,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, old_config);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let syncs = (new.stats().syncs_completed, old.stats().syncs_completed);
        for round in 1..=5 {
            common::add(&new, "likes", 1, 1).await;
            common::add(&old, "likes", 2, 10).await;
            // Batches, not a repair: within a few batch delays.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(value(&old, 1).await, round, "new -> old");
            assert_eq!(value(&new, 2).await, 10 * round, "old -> new");
        }
        assert_eq!(
            (new.stats().syncs_completed, old.stats().syncs_completed),
            syncs,
            "no anti-entropy was needed"
        );
        assert_eq!(
            protocol_with(&new, "eu-central"),
            1,
            "the newest both speak"
        );
        assert_eq!(new.stats().rejected_frames, 0);
        assert_eq!(new.stats().refused_handshakes, 0);
        // The old build cannot read the new one's announcement (counted,
        // as a build of protocol 1 counts any frame it cannot decode).
        assert!(old.stats().rejected_frames >= 1);
        assert_eq!(old.stats().refused_handshakes, 0);

        // The old region is upgraded: a new build, default config.
        old.shutdown().await;
        drop(old);
        net.heal_all();
        let upgraded = region_on(&net, "eu-central", None, RegionConfig::default());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(protocol_with(&new, "eu-central"), PROTOCOL_VERSION);
        assert_eq!(protocol_with(&upgraded, "ap-northeast"), PROTOCOL_VERSION);
        common::add(&upgraded, "likes", 3, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(value(&new, 3).await, 1);
        assert_eq!(upgraded.stats().rejected_frames, 0);
        assert_eq!(new.stats().rejected_frames, 0);
        new.shutdown().await;
        upgraded.shutdown().await;
    });
}

/// A peer pinned to protocol 2 (before rights requests) is never sent one,
/// either way: a sale refused at either region asks no one across that
/// connection, and nothing is rejected; the counter still replicates.
#[test]
fn a_peer_pinned_to_protocol_2_is_never_asked_for_rights() {
    use archipelago::region::RegionError;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(12);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let old_config = RegionConfig {
            protocol_version_max: 2,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, old_config);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(protocol_with(&new, "eu-central"), 2);
        let stock_new = new.bounded_table::<String, 0>("stock").unwrap();
        let stock_old = old.bounded_table::<String, 0>("stock").unwrap();
        stock_new.inc("matcha", 10).await.unwrap();
        stock_old.inc("hojicha", 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stock_old.value("matcha").unwrap(), Some(10));
        // Each region short of the other's rights, for seconds.
        for _ in 0..20 {
            let refused = stock_old.try_dec("matcha", 1).await;
            assert!(matches!(refused, Err(RegionError::Rights(_))));
            let refused = stock_new.try_dec("hojicha", 1).await;
            assert!(matches!(refused, Err(RegionError::Rights(_))));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for region in [&new, &old] {
            let stats = region.stats();
            assert_eq!(stats.rights_requested, 0, "{}", region.name());
            assert_eq!(stats.rights_granted + stats.rights_refused, 0);
            assert_eq!(stats.rejected_frames, 0, "{}", region.name());
        }
        assert_eq!(stock_old.rights("matcha").unwrap(), 0);
        new.shutdown().await;
        old.shutdown().await;
    });
}

/// A counter only its home adds to (homed tables, protocol 4).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tally(u64);

impl archipelago::region::HomedValue for Tally {
    type Op = u64;
    type Rejection = ();
    fn apply(&mut self, n: u64) -> Result<(), ()> {
        self.0 += n;
        Ok(())
    }
}

/// A peer pinned to protocol 3 (before homed operations) is never sent
/// one, either way: a write of a key homed across that connection fails at
/// once with the typed protocol error naming the home, nothing is
/// rejected; each home's own writes still replicate to the other.
#[test]
fn a_peer_pinned_to_protocol_3_gets_no_homed_messages() {
    use archipelago::region::{HomedError, HomedTable, RegionError};
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(13);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let old_config = RegionConfig {
            protocol_version_max: 3,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, old_config);
        let tallies = |region: &Region| -> HomedTable<String, Tally> {
            region
                .homed_table::<String, Tally>("tallies", |key: &String| key.clone())
                .unwrap()
        };
        let (tallies_new, tallies_old) = (tallies(&new), tallies(&old));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(protocol_with(&new, "eu-central"), 3);
        for (tallies, home) in [(&tallies_new, "eu-central"), (&tallies_old, "ap-northeast")] {
            let started = tokio::time::Instant::now();
            let refused = tallies.apply(home, 1).await;
            assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
            assert!(
                matches!(
                    &refused,
                    Err(HomedError::Region(RegionError::HomeProtocol { home: h, protocol: 3, .. }))
                        if h == home
                ),
                "{refused:?}"
            );
            let read = tallies.read_at_home(home).await;
            assert!(
                matches!(read, Err(RegionError::HomeProtocol { .. })),
                "{read:?}"
            );
        }
        // Each home writes its own key, and it replicates.
        tallies_new.apply("ap-northeast", 2).await.unwrap();
        tallies_old.apply("eu-central", 3).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            tallies_old.read("ap-northeast").unwrap().map(|t| t.0),
            Some(2)
        );
        assert_eq!(
            tallies_new.read("eu-central").unwrap().map(|t| t.0),
            Some(3)
        );
        for region in [&new, &old] {
            let stats = region.stats();
            assert_eq!(stats.homed_forwarded, 0, "{}", region.name());
            assert_eq!(
                stats.homed_served + stats.homed_refused,
                0,
                "{}",
                region.name()
            );
            assert_eq!(stats.rejected_frames, 0, "{}", region.name());
        }
        new.shutdown().await;
        old.shutdown().await;
    });
}

/// A peer pinned to protocol 4 (before delimited values) is sent resolver
/// states in the layout it reads, and its own replicate here: strings both
/// ways by batches, nothing undecodable, nothing rejected.
#[test]
fn a_peer_pinned_to_protocol_4_gets_values_it_reads() {
    use archipelago::resolve::LastWriteWins;
    paused_runtime().block_on(async {
        let net = ChannelNetwork::new(14);
        let new = region_on(&net, "ap-northeast", None, RegionConfig::default());
        let old_config = RegionConfig {
            protocol_version_max: 4,
            ..RegionConfig::default()
        };
        let old = region_on(&net, "eu-central", None, old_config);
        let names = |region: &Region| {
            region
                .table_with::<u64, String>("names", LastWriteWins)
                .unwrap()
        };
        let (names_new, names_old) = (names(&new), names(&old));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(protocol_with(&new, "eu-central"), 4);
        let syncs = (new.stats().syncs_completed, old.stats().syncs_completed);
        names_new.put(&1, "Aiko".to_string()).await.unwrap();
        names_old.put(&2, "Ben".to_string()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let read = |t: &archipelago::region::ResolverTable<u64, String>, k: u64| {
            let t = t.clone();
            async move { t.read(&k).await.unwrap().and_then(|r| r.value().cloned()) }
        };
        assert_eq!(read(&names_old, 1).await.as_deref(), Some("Aiko"));
        assert_eq!(read(&names_new, 2).await.as_deref(), Some("Ben"));
        for region in [&new, &old] {
            let stats = region.stats();
            assert_eq!(stats.undecodable_values, 0, "{}", region.name());
            assert_eq!(stats.rejected_frames, 0, "{}", region.name());
        }
        assert_eq!(
            (new.stats().syncs_completed, old.stats().syncs_completed),
            syncs,
            "batches, not a repair"
        );
        new.shutdown().await;
        old.shutdown().await;
    });
}
