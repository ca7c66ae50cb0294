//! [`Archipelago`]: regions of your service on one in-process network,
//! under tokio's paused clock, for seeded tests you can replay.

use std::time::Duration;

use crate::clock::{PhysicalClock, ReplicaId};
use crate::region::{Region, RegionConfig, RegionError};
use crate::transport::ChannelNetwork;

/// Wall-clock milliseconds that follow tokio's clock from the instant the
/// clock is made: under a paused runtime (`start_paused`) every stamp is
/// the same on every run.
///
/// ```
/// use archipelago::clock::PhysicalClock;
/// use archipelago::testing::PausedClock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)
/// #     .build().unwrap().block_on(async {
/// let clock = PausedClock::new();
/// tokio::time::sleep(std::time::Duration::from_millis(250)).await;
/// assert_eq!(clock.now_ms(), PausedClock::START_MS + 250);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct PausedClock {
    start: tokio::time::Instant,
}

impl PausedClock {
    /// What the clock reads when made, in ms since the Unix epoch
    /// (2025-11-24): a plausible wall time, fixed so runs agree.
    pub const START_MS: u64 = 1_764_000_000_000;

    /// A clock reading [`START_MS`](Self::START_MS) now.
    ///
    /// # Panics
    /// Outside a tokio runtime with time enabled (as `tokio::time::Instant::now`).
    pub fn new() -> Self {
        PausedClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for PausedClock {
    fn default() -> Self {
        PausedClock::new()
    }
}

impl PhysicalClock for PausedClock {
    fn now_ms(&self) -> u64 {
        let elapsed_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Self::START_MS.saturating_add(elapsed_ms)
    }
}

/// The regions did not all apply the same writes within the wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("regions did not converge within {waited:?}")]
pub struct NotConverged {
    /// How long [`Archipelago::converge`] waited.
    pub waited: Duration,
}

/// Regions on one [`ChannelNetwork`] seeded from one seed, each with a
/// replica id named after it ([`ReplicaId::from_name`]) and a
/// [`PausedClock`]: build it inside a current-thread runtime with
/// `start_paused(true)` and a run is replayed exactly by its seed.
///
/// Inject faults through [`network`](Self::network) (latency, loss,
/// partitions: see [`ChannelNetwork`]), and settle with
/// [`converge`](Self::converge). The module page of
/// [`testing`](crate::testing) shows a whole test of a service.
///
/// ```
/// use std::time::Duration;
///
/// use archipelago::crdt::GCounter;
/// use archipelago::testing::Archipelago;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)
/// #     .build().unwrap().block_on(async {
/// let islands = Archipelago::new(7, &["ap-northeast", "eu-central"]).unwrap();
/// islands.network().partition("ap-northeast", "eu-central");
/// let tokyo = islands.region("ap-northeast").unwrap();
/// tokyo.table::<String, GCounter>("hits").unwrap()
///     .update("home", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
///     .await
///     .unwrap();
/// assert!(!islands.is_converged());
/// islands.converge(Duration::from_secs(10)).await.unwrap(); // heals first
/// # });
/// ```
pub struct Archipelago {
    seed: u64,
    network: ChannelNetwork,
    regions: Vec<Region>,
}

impl Archipelago {
    /// How often [`converge`](Self::converge) compares applied vectors.
    pub const CONVERGE_POLL: Duration = Duration::from_millis(10);

    /// The regions `names` with the default [`RegionConfig`], on a network
    /// seeded with `seed`.
    ///
    /// # Errors
    /// As [`RegionBuilder::build`](crate::region::RegionBuilder::build)
    /// ([`RegionError::NoRuntime`] outside a tokio runtime).
    ///
    /// # Panics
    /// If `names` holds a name twice (as [`ChannelNetwork::endpoint`]).
    pub fn new(seed: u64, names: &[&str]) -> Result<Self, RegionError> {
        Self::with_config(seed, names, RegionConfig::default())
    }

    /// As [`new`](Self::new), every region with `config`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_config(
        seed: u64,
        names: &[&str],
        config: RegionConfig,
    ) -> Result<Self, RegionError> {
        tokio::runtime::Handle::try_current().map_err(|_| RegionError::NoRuntime)?;
        let network = ChannelNetwork::new(seed);
        let regions = names
            .iter()
            .map(|&name| {
                Region::builder(name)
                    .replica_id(ReplicaId::from_name(name))
                    .transport(network.endpoint(name))
                    .clock(PausedClock::new())
                    .config(config.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Archipelago {
            seed,
            network,
            regions,
        })
    }

    /// The seed the network draws its faults from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The network: faults, partitions, counters.
    pub fn network(&self) -> &ChannelNetwork {
        &self.network
    }

    /// Every region, in the order named.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region `name`, if it is one of these.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name() == name)
    }

    /// Whether every region has applied the same writes now.
    pub fn is_converged(&self) -> bool {
        let mut applied = self.regions.iter().map(Region::applied);
        match applied.next() {
            Some(first) => applied.all(|other| other == first),
            None => true,
        }
    }

    /// Heals every partition (faults such as loss stay) and waits until
    /// every region has applied the same writes: how long that took.
    ///
    /// # Errors
    /// [`NotConverged`] after `wait_max`.
    pub async fn converge(&self, wait_max: Duration) -> Result<Duration, NotConverged> {
        self.network.heal_all();
        let start = tokio::time::Instant::now();
        while !self.is_converged() {
            if start.elapsed() >= wait_max {
                tracing::warn!(seed = self.seed, ?wait_max, "regions did not converge");
                return Err(NotConverged { waited: wait_max });
            }
            tokio::time::sleep(Self::CONVERGE_POLL).await;
        }
        Ok(start.elapsed())
    }
}

/// The seed to run: the value of the environment variable `var` when set
/// (to replay a failure), else a fresh random one. Print it, so a failing
/// run names the seed that replays it.
///
/// # Errors
/// When `var` is set but is not a `u64`.
pub fn seed_from_env(var: &str) -> Result<u64, std::num::ParseIntError> {
    match std::env::var(var) {
        Ok(text) => text.trim().parse(),
        Err(_) => Ok(ulid::Ulid::new().random() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::GCounter;

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// One seed, the same run: the writes of a partitioned region reach
    /// the others only after the heal, and the time it takes is the same
    /// both times.
    async fn partitioned_run(seed: u64) -> (Duration, u64) {
        let islands = Archipelago::new(seed, &["a", "b", "c"]).unwrap();
        islands.network().set_faults_all(
            crate::transport::LinkFaults::new()
                .latency(Duration::from_millis(30))
                .loss(0.2),
        );
        islands.network().isolate("c");
        let c = islands.region("c").unwrap();
        for _ in 0..20 {
            c.table::<String, GCounter>("hits")
                .unwrap()
                .update("k", |v, ctx| v.apply(|v| v.inc(ctx.replica(), 1)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let a = islands.region("a").unwrap();
        assert_eq!(
            a.applied().get(c.replica()),
            0,
            "a partition let writes through"
        );
        assert!(!islands.is_converged());
        let took = islands.converge(Duration::from_secs(30)).await.unwrap();
        let hits = a
            .table::<String, GCounter>("hits")
            .unwrap()
            .read("k")
            .await
            .unwrap();
        (took, hits.map_or(0, |h| h.value()))
    }

    #[test]
    fn converges_after_the_heal_and_replays_from_its_seed() {
        let first = paused().block_on(partitioned_run(5));
        let second = paused().block_on(partitioned_run(5));
        assert_eq!(first.1, 20, "the partitioned writes arrived");
        assert_eq!(first, second, "one seed, one run");
    }

    #[test]
    fn reports_no_convergence_while_every_frame_is_lost() {
        paused().block_on(async {
            let islands = Archipelago::new(1, &["a", "b"]).unwrap();
            islands
                .network()
                .set_faults_all(crate::transport::LinkFaults::new().loss(1.0));
            islands.regions()[0]
                .table::<String, GCounter>("hits")
                .unwrap()
                .update("k", |v, ctx| v.apply(|v| v.inc(ctx.replica(), 1)))
                .await
                .unwrap();
            let wait = Duration::from_secs(2);
            assert_eq!(
                islands.converge(wait).await,
                Err(NotConverged { waited: wait })
            );
        });
    }

    #[test]
    fn outside_a_runtime_is_an_error() {
        assert!(matches!(
            Archipelago::new(1, &["a"]),
            Err(RegionError::NoRuntime)
        ));
    }

    #[test]
    fn without_the_variable_seed_from_env_draws_one() {
        // A name no other test sets.
        let var = "ARCHIPELAGO_TESTING_SEED_FROM_ENV_UNSET";
        assert!(seed_from_env(var).is_ok());
    }
}
