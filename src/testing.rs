//! Law checks for replicated types (feature `testing`).
//!
//! The checks our own CRDTs pass, for yours. Describe your type with a
//! [`CrdtSpec`] (which operations exist, how to apply one, what a read
//! returns) and call [`check_crdt_laws`]. It runs proptest over random
//! histories of three replicas and panics with the smallest failing history
//! it finds. The number of cases honours `PROPTEST_CASES`.
//!
//! States are never generated directly: they are the results of random
//! operations at three replicas with random exchanges between them, so
//! every state checked is one a real deployment can reach (unique stamps,
//! dots covered by their contexts, ...).
//!
//! What is checked, for every reachable `a`, `b`, `c`:
//! - merge is **commutative** (`a ⊔ b == b ⊔ a`), **associative**,
//!   **idempotent** (`a ⊔ a == a`), and has `Default` as its **bottom**;
//! - **delta equivalence**: merging the delta a mutator returns has the
//!   effect of merging the whole state after the mutation, into the mutating
//!   replica and into any replica that had seen the state before it;
//! - **convergence under arbitrary delivery**: three replicas write while
//!   their deltas are delivered in random order, duplicated or dropped; once
//!   every delta that was not dropped has arrived the replicas are equal if
//!   none was dropped, and after one round of full-state merges they are
//!   equal in any case, read the same, and contain every delta ever made;
//! - the state survives [`wire`](crate::wire) and JSON unchanged.
//!
//! [`Forger`] wraps a transport so that the region behind it lies about
//! what it holds: for testing that honest regions do not believe it.
//!
//! The [`linearizability`] submodule checks histories of concurrent
//! operations against a sequential model (Wing & Gong's search with Lowe's
//! memoization): what [`HomedTable::read_at_home`](crate::region::HomedTable::read_at_home)
//! promises, checkable for your own homed values.
//!
//! The [`fuzz`] submodule holds a seeded, stable-Rust fuzz harness for the
//! decoders, with its corpus, mutators and a counting allocator for reuse.
//!
//! ## Testing your own service
//!
//! [`Archipelago`] puts regions on one
//! [`ChannelNetwork`](crate::transport::ChannelNetwork), each with a replica
//! id named after it and a [`PausedClock`]. Inside a current-thread tokio
//! runtime with `start_paused(true)`, everything then follows from one
//! seed: the network's jitter and losses, the faults you draw from it
//! ([`fuzz::FuzzRng`]), the order tasks run in, every timestamp. A failing
//! run is replayed by its seed alone. The recipe:
//!
//! 1. take the seed from the environment ([`seed_from_env`]) and print it;
//! 2. build an [`Archipelago`], set link faults (loss, latency) and draw
//!    partitions and heals from the seed;
//! 3. call *your* code against the regions, asserting what it promises
//!    after every call (a session read never stale, say);
//! 4. [`converge`](Archipelago::converge) (heal, wait until every region
//!    applied the same writes) and assert what must hold everywhere (no
//!    acknowledged write lost);
//! 5. on failure, name the seed: `MY_SEED=<seed> cargo test` replays it.
//!
//! `examples/test_your_service.rs` runs this for a cart service over many
//! seeds. In short:
//!
//! ```
//! use std::time::Duration;
//!
//! use archipelago::crdt::OrSet;
//! use archipelago::region::{Region, RegionError};
//! use archipelago::session::Session;
//! use archipelago::testing::{Archipelago, fuzz::FuzzRng, seed_from_env};
//! use archipelago::transport::LinkFaults;
//!
//! // Your service: add to a cart, read it back in the user's session.
//! async fn add_to_cart(region: &Region, session: &mut Session, sku: &str)
//!     -> Result<Option<OrSet<String>>, RegionError> {
//!     let carts = region.table::<String, OrSet<String>>("carts")?;
//!     carts.update_session("aiko", session, |cart, ctx| {
//!         cart.apply(|c| c.insert(ctx.replica(), sku.to_owned()))
//!     }).await?;
//!     carts.read_session("aiko", session).await
//! }
//!
//! let seed = seed_from_env("MY_SEED").expect("MY_SEED is a u64");
//! let runtime = tokio::runtime::Builder::new_current_thread()
//!     .enable_time().start_paused(true).build().unwrap();
//! runtime.block_on(async {
//!     let names = ["ap-northeast", "eu-central", "us-east"];
//!     let islands = Archipelago::new(seed, &names).unwrap();
//!     islands.network().set_faults_all(LinkFaults::new().loss(0.1));
//!     let mut rng = FuzzRng::new(seed);
//!     let mut session = Session::new();
//!     for i in 0..20 {
//!         if rng.one_in(5) {
//!             islands.network().partition(names[rng.below(3)], names[rng.below(3)]);
//!         }
//!         let region = &islands.regions()[rng.below(3)];
//!         let sku = format!("sku-{i}");
//!         match add_to_cart(region, &mut session, &sku).await {
//!             Ok(cart) => assert!(cart.unwrap().contains(&sku), "seed {seed}: stale read"),
//!             // Cut off from the session's writes, a region may refuse in time.
//!             Err(RegionError::SessionTimeout { .. }) => {}
//!             Err(e) => panic!("seed {seed}: {e}"),
//!         }
//!     }
//!     islands.converge(Duration::from_secs(60)).await.expect("converged");
//! });
//! ```
//!
//! ```
//! use archipelago::clock::Stamp;
//! use archipelago::crdt::GCounter;
//! use archipelago::testing::{CrdtSpec, check_crdt_laws};
//! use proptest::prelude::*;
//!
//! struct Hits;
//! impl CrdtSpec for Hits {
//!     type State = GCounter;
//!     type Op = u64;
//!     type Read = u64;
//!     fn op() -> BoxedStrategy<u64> { (0..10u64).boxed() }
//!     fn apply(state: &mut GCounter, stamp: Stamp, n: &u64) -> GCounter {
//!         state.inc(stamp.replica, *n)
//!     }
//!     fn read(state: &GCounter) -> u64 { state.value() }
//! }
//!
//! check_crdt_laws::<Hits>();
//! ```

mod archipelago;
mod forge;
pub mod fuzz;
pub mod linearizability;

/// Range-based set reconciliation, the anti-entropy of protocol 6: the
/// index of a table's item fingerprints, the
/// messages, and one side of an exchange. Exposed for benches and for
/// checking it against your own data.
///
/// ```
/// use archipelago::testing::reconcile::{Exchange, RangeIndex, item_fingerprint};
///
/// let mut index = RangeIndex::new();
/// index.insert(b"key", item_fingerprint(b"key", b"state"))?;
/// let (_side, first) = Exchange::initiate(&index)?;
/// // The peer holds the same: its reply ends the exchange.
/// let reply = Exchange::respond().on_frame(&index.clone(), &first)?.unwrap();
/// assert_eq!(reply.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod reconcile {
    pub use crate::replication::reconcile::*;

    /// A table of `GCounter`s for timing local writes to it: the store
    /// alone (no outbox, no engine), its range index built and noting the
    /// keys written (`tracked`, as in a region that has exchanged by
    /// ranges) or never built. What keeping the index costs the write path.
    pub struct StoreWrites {
        store: crate::replication::store::CrdtStore<crate::crdt::GCounter>,
        keys: u64,
        next: u64,
    }

    impl StoreWrites {
        /// A table of `keys` keys (`keys` > 0).
        pub fn new(keys: u64, tracked: bool) -> StoreWrites {
            use crate::crdt::Crdt;
            use crate::replication::store::{CrdtStore, Merger, TableStore};
            let merger: Merger<crate::crdt::GCounter> =
                std::sync::Arc::new(|mine, theirs, _, _| mine.merge(theirs));
            let mut store = CrdtStore::new(merger);
            for k in 0..keys.max(1) {
                store.entry(&key(k)).inc(crate::clock::ReplicaId::new(1), 1);
            }
            if tracked {
                store.catch_up_index().expect("a small index");
            }
            StoreWrites {
                store,
                keys: keys.max(1),
                next: 0,
            }
        }

        /// The time `writes` increments take, to keys spread over the
        /// table (a tracked table notes each in its dirty map, as a
        /// region's does between exchanges).
        pub fn write(&mut self, writes: u64) -> std::time::Duration {
            let replica = crate::clock::ReplicaId::new(1);
            let written: Vec<Vec<u8>> = (0..writes)
                .map(|i| key((self.next + i).wrapping_mul(7_919) % self.keys))
                .collect();
            self.next += writes;
            let start = std::time::Instant::now();
            for k in &written {
                std::hint::black_box(self.store.entry(k).inc(replica, 1));
            }
            start.elapsed()
        }

        /// The time bringing the range index up to date takes (building it
        /// at the first call, for a table made untracked), after `writes`
        /// writes to keys spread over the table; and the keys it found
        /// changed.
        pub fn catch_up_after(&mut self, writes: u64) -> (std::time::Duration, usize) {
            use crate::replication::store::TableStore;
            self.write(writes);
            let start = std::time::Instant::now();
            let changed = self.store.catch_up_index().expect("a small index");
            (start.elapsed(), changed.len())
        }
    }

    /// The bare encoding of a `u64` key.
    fn key(k: u64) -> Vec<u8> {
        let mut out = Vec::new();
        crate::wire::encode_bare_into(&k, &mut out).expect("a u64");
        out
    }
}

pub use archipelago::{Archipelago, NotConverged, PausedClock, seed_from_env};
pub use forge::{Forger, Forgery};

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{Hlc, ManualClock, ReplicaId, Stamp};
use crate::crdt::Crdt;
use crate::resolve::{Resolver, VersionSet, Versioned};

/// Replicas in every simulated history.
pub const REPLICAS: usize = 3;
/// Longest simulated history, in events.
pub const EVENTS_MAX: usize = 48;
/// Largest clock skew between simulated replicas, in ms (either way).
pub const SKEW_MS_MAX: u64 = 250;

/// What [`check_crdt_laws`] needs to know about a replicated type.
pub trait CrdtSpec {
    /// The replicated type.
    type State: Crdt + Debug + PartialEq + Serialize + DeserializeOwned;
    /// One mutation, as data.
    type Op: Debug + Clone;
    /// What the application reads from a state.
    type Read: Debug + PartialEq;
    /// Random mutations.
    fn op() -> BoxedStrategy<Self::Op>;
    /// Applies `op` at the replica `stamp.replica` (whose clock read
    /// `stamp.time`); returns the delta.
    fn apply(state: &mut Self::State, stamp: Stamp, op: &Self::Op) -> Self::State;
    /// The application's read.
    fn read(state: &Self::State) -> Self::Read;
}

/// One step of a simulated history.
#[derive(Clone, Debug)]
pub enum Event<Op> {
    /// Replica `.0` applies a mutation; its delta goes to every other inbox.
    Write(usize, Op),
    /// Replica `.0` merges the message at position `.1` (modulo length) of
    /// its inbox, which removes it.
    Deliver(usize, usize),
    /// As `Deliver`, but the message stays to be delivered again.
    Duplicate(usize, usize),
    /// The message is lost.
    Drop(usize, usize),
    /// Replica `.1` merges the full state of replica `.0`.
    Sync(usize, usize),
    /// The wall clocks advance by `.0` ms.
    Tick(u64),
}

/// Random histories of up to [`EVENTS_MAX`] events over [`REPLICAS`] replicas.
pub fn history<Op: Debug + Clone + 'static>(
    op: BoxedStrategy<Op>,
) -> impl Strategy<Value = (Vec<u64>, Vec<Event<Op>>)> {
    let replica = 0..REPLICAS;
    let event = prop_oneof![
        4 => (replica.clone(), op).prop_map(|(r, op)| Event::Write(r, op)),
        3 => (replica.clone(), any::<usize>()).prop_map(|(r, i)| Event::Deliver(r, i)),
        1 => (replica.clone(), any::<usize>()).prop_map(|(r, i)| Event::Duplicate(r, i)),
        1 => (replica.clone(), any::<usize>()).prop_map(|(r, i)| Event::Drop(r, i)),
        1 => (replica.clone(), replica).prop_map(|(a, b)| Event::Sync(a, b)),
        1 => (0..40u64).prop_map(Event::Tick),
    ];
    let skews = prop::collection::vec(0..=2 * SKEW_MS_MAX, REPLICAS);
    (skews, prop::collection::vec(event, 0..EVENTS_MAX))
}

/// How a simulated replica applies a mutation: returns the delta.
pub type Apply<T, Op> = fn(&mut T, Stamp, &Op) -> T;

/// Three replicas running a history: their states, the messages in flight
/// to each, and every delta made.
pub struct Simulation<T, Op> {
    /// Each replica's state.
    pub states: Vec<T>,
    /// Each replica's inbox of deltas not yet delivered.
    pub inboxes: Vec<Vec<T>>,
    /// Every delta any replica made, in order.
    pub deltas: Vec<T>,
    /// True once a message was dropped.
    pub dropped: bool,
    apply: Apply<T, Op>,
    clocks: Vec<ManualClock>,
    hlcs: Vec<Hlc>,
}

impl<T: Crdt, Op> Simulation<T, Op> {
    /// Replicas `1..=REPLICAS`, whose wall clocks start at `1_000_000 + skew`.
    pub fn new(skews: &[u64], apply: Apply<T, Op>) -> Self {
        let clocks: Vec<ManualClock> = (0..REPLICAS)
            .map(|i| ManualClock::new(1_000_000 + skews.get(i).copied().unwrap_or(0)))
            .collect();
        let hlcs = clocks
            .iter()
            .enumerate()
            .map(|(i, c)| Hlc::with_clock(replica_id(i), c.clone()))
            .collect();
        Simulation {
            states: (0..REPLICAS).map(|_| T::default()).collect(),
            inboxes: (0..REPLICAS).map(|_| Vec::new()).collect(),
            deltas: Vec::new(),
            dropped: false,
            apply,
            clocks,
            hlcs,
        }
    }

    /// Runs one event.
    pub fn step(&mut self, event: &Event<Op>) {
        match event {
            Event::Write(r, op) => {
                let delta = (self.apply)(&mut self.states[*r], self.hlcs[*r].stamp(), op);
                for (i, inbox) in self.inboxes.iter_mut().enumerate() {
                    if i != *r {
                        inbox.push(delta.clone());
                    }
                }
                self.deltas.push(delta);
            }
            Event::Deliver(r, i) | Event::Duplicate(r, i) | Event::Drop(r, i) => {
                let inbox = &mut self.inboxes[*r];
                if inbox.is_empty() {
                    return;
                }
                let at = i % inbox.len();
                match event {
                    Event::Duplicate(..) => self.states[*r].merge(&inbox[at]),
                    Event::Deliver(..) => {
                        let message = inbox.remove(at);
                        self.states[*r].merge(&message);
                    }
                    _ => {
                        inbox.remove(at);
                        self.dropped = true;
                    }
                }
            }
            Event::Sync(from, to) => {
                let state = self.states[*from].clone();
                self.states[*to].merge(&state);
            }
            Event::Tick(ms) => self.clocks.iter().for_each(|c| c.advance(*ms)),
        }
    }

    /// Runs a whole history.
    pub fn run(skews: &[u64], events: &[Event<Op>], apply: Apply<T, Op>) -> Self {
        let mut sim = Self::new(skews, apply);
        for event in events {
            sim.step(event);
        }
        sim
    }

    /// Delivers every message still in flight, in inbox order.
    pub fn flush(&mut self) {
        for (state, inbox) in self.states.iter_mut().zip(self.inboxes.iter_mut()) {
            for message in inbox.drain(..) {
                state.merge(&message);
            }
        }
    }

    /// One round of full-state merges: afterwards every replica has merged
    /// every other's state.
    pub fn repair(&mut self) {
        let mut all = T::default();
        for state in &self.states {
            all.merge(state);
        }
        for state in &mut self.states {
            state.merge(&all);
        }
    }

    /// A stamp from replica `r`'s clock.
    pub fn stamp(&self, r: usize) -> Stamp {
        self.hlcs[r].stamp()
    }
}

/// The id of simulated replica `i` (0-based): `i + 1`.
pub fn replica_id(i: usize) -> ReplicaId {
    ReplicaId::new(i as u64 + 1)
}

fn join<T: Crdt>(a: &T, b: &T) -> T {
    let mut out = a.clone();
    out.merge(b);
    out
}

fn ensure(ok: bool, law: &str, detail: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("{law} broken: {}", detail())))
    }
}

/// Merge is commutative, associative, idempotent, with `Default` as bottom.
pub fn merge_laws<T: Crdt + Debug + PartialEq>(a: &T, b: &T, c: &T) -> Result<(), TestCaseError> {
    let (ab, ba) = (join(a, b), join(b, a));
    ensure(ab == ba, "commutativity", || format!("{ab:?} != {ba:?}"))?;
    let (ab_c, a_bc) = (join(&ab, c), join(a, &join(b, c)));
    ensure(ab_c == a_bc, "associativity", || {
        format!("{ab_c:?} != {a_bc:?}")
    })?;
    let aa = join(a, a);
    ensure(aa == *a, "idempotence", || format!("{aa:?} != {a:?}"))?;
    let bottom = T::default();
    ensure(
        join(a, &bottom) == *a && join(&bottom, a) == *a,
        "bottom",
        || format!("{a:?} changed by merging the default"),
    )
}

/// Merging `delta` has the effect of merging `post`, into `pre` and into
/// `other ⊔ pre`.
pub fn delta_law<T: Crdt + Debug + PartialEq>(
    pre: &T,
    delta: &T,
    post: &T,
    other: &T,
) -> Result<(), TestCaseError> {
    let at_origin = join(pre, delta);
    ensure(
        at_origin == *post,
        "delta equivalence at the origin",
        || format!("{pre:?} ⊔ {delta:?} = {at_origin:?}, expected {post:?}"),
    )?;
    let seen = join(other, pre);
    let (via_delta, via_state) = (join(&seen, delta), join(&seen, post));
    ensure(
        via_delta == via_state,
        "delta equivalence at a peer",
        || format!("{via_delta:?} != {via_state:?}"),
    )
}

/// Replicas that received the same deltas are equal and read the same, and
/// contain every delta ever made.
pub fn convergence<T, Op, R>(
    sim: &mut Simulation<T, Op>,
    read: impl Fn(usize, &T) -> R,
) -> Result<(), TestCaseError>
where
    T: Crdt + Debug + PartialEq,
    R: Debug + PartialEq,
{
    sim.flush();
    if !sim.dropped {
        let first = &sim.states[0];
        for state in &sim.states[1..] {
            ensure(state == first, "convergence by deltas alone", || {
                format!("{first:?} != {state:?}")
            })?;
        }
    }
    sim.repair();
    let first = &sim.states[0];
    let first_read = read(0, first);
    for (i, state) in sim.states.iter().enumerate().skip(1) {
        ensure(state == first, "convergence after repair", || {
            format!("{first:?} != {state:?}")
        })?;
        let other = read(i, state);
        ensure(other == first_read, "equal reads", || {
            format!("replica 0 reads {first_read:?}, replica {i} reads {other:?}")
        })?;
    }
    for delta in &sim.deltas {
        let with = join(first, delta);
        ensure(with == *first, "no write lost", || {
            format!("{delta:?} not contained in {first:?}")
        })?;
    }
    Ok(())
}

/// The state decodes to itself through the wire codec and through JSON.
pub fn codec_round_trip<T>(state: &T) -> Result<(), TestCaseError>
where
    T: Debug + PartialEq + Serialize + DeserializeOwned,
{
    let frame = crate::wire::encode(state).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = crate::wire::decode(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
    ensure(back == *state, "wire round trip", || {
        format!("{back:?} != {state:?}")
    })?;
    let json = serde_json::to_string(state).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    ensure(back == *state, "JSON round trip", || {
        format!("{json} decoded to {back:?}")
    })
}

/// Runs every law with proptest's default configuration (which reads
/// `PROPTEST_CASES`). Panics with the smallest failing history found.
pub fn check_crdt_laws<S: CrdtSpec>()
where
    S::Op: 'static,
{
    check_crdt_laws_with::<S>(Config::default());
}

/// As [`check_crdt_laws`], with an explicit proptest configuration.
pub fn check_crdt_laws_with<S: CrdtSpec>(config: Config)
where
    S::Op: 'static,
{
    let config = Config {
        failure_persistence: None,
        ..config
    };
    let mut runner = TestRunner::new(config);
    let cases = (history(S::op()), S::op(), 0..REPLICAS, 0..REPLICAS);
    let outcome = runner.run(&cases, |(history, op, writer, other)| {
        let (skews, events) = history;
        let mut sim = Simulation::run(&skews, &events, S::apply);
        let [a, b, c] = [&sim.states[0], &sim.states[1], &sim.states[2]];
        merge_laws(a, b, c)?;
        for state in &sim.states {
            codec_round_trip(state)?;
        }
        let pre = sim.states[writer].clone();
        let stamp = sim.stamp(writer);
        let mut post = pre.clone();
        let delta = S::apply(&mut post, stamp, &op);
        delta_law(&pre, &delta, &post, &sim.states[other])?;
        codec_round_trip(&delta)?;
        convergence(&mut sim, |_, state| S::read(state))
    });
    if let Err(failure) = outcome {
        panic!("CRDT law check failed: {failure}");
    }
}

/// Three pairwise-concurrent versions, as three replicas writing at once
/// after a shared history: each vector is the shared one plus the writer's
/// own next write, and the stamps are distinct.
pub fn concurrent_versions<T: Debug + Clone + 'static>(
    values: BoxedStrategy<T>,
) -> impl Strategy<Value = [Versioned<T>; 3]> {
    let base = prop::collection::vec(0..4u64, REPLICAS);
    let times = prop::collection::vec(0..2 * SKEW_MS_MAX, REPLICAS);
    (base, times, [values.clone(), values.clone(), values]).prop_map(|(base, times, values)| {
        let [a, b, c] = values;
        let mut shared = crate::clock::VersionVector::new();
        for (i, n) in base.iter().enumerate() {
            shared.raise(replica_id(i), *n);
        }
        let version = |i: usize, value: T| {
            let mut version = shared.clone();
            version.increment(replica_id(i));
            let time = crate::clock::Timestamp::new(1_000_000 + times[i], 0);
            Versioned::new(value, version, Stamp::new(time, replica_id(i)))
        };
        [version(0, a), version(1, b), version(2, c)]
    })
}

/// The pairwise contract of a resolver on three concurrent versions, with
/// each replica's own instance (`make(replica)`): commutative across
/// instances, idempotent, version joined, associative in stamp order.
pub fn resolver_laws<T, R>(
    make: &impl Fn(ReplicaId) -> R,
    versions: &[Versioned<T>; 3],
) -> Result<(), TestCaseError>
where
    T: Debug + PartialEq + Clone,
    R: Resolver<T>,
{
    let [a, b, c] = versions;
    let (here, there) = (make(replica_id(0)), make(replica_id(1)));
    if here.keeps_siblings() {
        return Ok(());
    }
    let (ab, ba) = (here.resolve(a, b), there.resolve(b, a));
    ensure(ab == ba, "commutativity", || {
        format!("resolve(a, b) = {ab:?} at one replica, resolve(b, a) = {ba:?} at another")
    })?;
    let aa = here.resolve(a, a);
    ensure(aa == *a, "idempotence", || {
        format!("resolve(a, a) = {aa:?}, not {a:?}")
    })?;
    let mut joined = a.version.clone();
    joined.merge(&b.version);
    ensure(ab.version == joined, "version join", || {
        format!("resolved version {:?}, expected {joined:?}", ab.version)
    })?;
    let mut sorted = [a, b, c];
    sorted.sort_by_key(|v| v.stamp);
    let [x, y, z] = sorted;
    let left = here.resolve(&here.resolve(x, y), z);
    let right = there.resolve(x, &there.resolve(y, z));
    ensure(left == right, "associativity (in stamp order)", || {
        format!("{left:?} != {right:?}")
    })
}

/// Checks a resolver's contract with proptest (default configuration,
/// which reads `PROPTEST_CASES`): the pairwise laws of [`resolver_laws`],
/// then convergence: three replicas, each resolving with its own instance
/// `make(replica)`, write random `values` while their deltas are reordered,
/// duplicated and dropped; once repaired they must hold equal version sets
/// and read equal resolutions. Panics with the smallest failing case.
///
/// ```
/// use archipelago::resolve::LastWriteWins;
/// use archipelago::testing::check_resolver_laws;
/// use proptest::prelude::*;
///
/// check_resolver_laws(|_replica| LastWriteWins, any::<u8>().boxed());
/// ```
pub fn check_resolver_laws<T, R>(make: impl Fn(ReplicaId) -> R, values: BoxedStrategy<T>)
where
    T: Debug + PartialEq + Clone + 'static,
    R: Resolver<T>,
{
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let cases = (concurrent_versions(values.clone()), history(values));
    let outcome = runner.run(&cases, |(versions, (skews, events))| {
        resolver_laws(&make, &versions)?;
        let apply: Apply<VersionSet<T>, T> = |set, stamp, value| set.write(stamp, value.clone());
        let mut sim = Simulation::run(&skews, &events, apply);
        let resolvers: Vec<R> = (0..REPLICAS).map(|i| make(replica_id(i))).collect();
        convergence(&mut sim, |i, set: &VersionSet<T>| {
            set.resolve(&resolvers[i])
        })
    });
    if let Err(failure) = outcome {
        panic!("resolver law check failed: {failure}");
    }
}
