//! # archipelago
//!
//! Active-active multi-region replication. Every region is an island that
//! keeps serving reads and writes on its own; the archipelago converges.
//!
//! ## The model
//!
//! A **replica** is one process embedding this library, tagged with its
//! **region** (`"ap-northeast"`, `"eu-central"`) and named by a
//! [`ReplicaId`](clock::ReplicaId). Each replica answers reads and writes
//! from its own state, without waiting for any other region. Writes made at
//! the same time in two regions are *concurrent*: neither saw the other.
//! Instead of preventing them with locks or a leader, archipelago makes them
//! harmless by keeping data in types whose replicas always agree once they
//! have seen the same writes:
//!
//! - **CRDTs** ([`crdt`]): counters, sets, registers and maps whose
//!   [`merge`](crdt::Crdt::merge) is a *join*: commutative, associative and
//!   idempotent. Replicas may receive each other's updates in any order,
//!   twice, or late; they still end equal. Every mutator returns a **delta**,
//!   a small value of the same type holding just that change, which is what
//!   replicas ship to each other.
//! - **Clocks** ([`clock`]): a [`Dot`](clock::Dot) names one write; a
//!   [`VersionVector`](clock::VersionVector) summarises the writes a replica
//!   has seen and tells *before*, *after* and *concurrent* apart; a hybrid
//!   logical clock ([`Hlc`](clock::Hlc)) gives timestamps close to wall time
//!   that still move forward with causality, for last-writer-wins choices
//!   every replica makes alike.
//!
//! A write, end to end: the [`Region`](region::Region) ticks its clock,
//! runs the write's mutators (each through
//! [`Mutation::apply`](region::Mutation::apply), which joins its delta into
//! the write's), joins that delta into its local state (the write is now
//! visible locally, exactly as it ships) and returns a session token; the delta joins a batch for each
//! peer, which applies it once it has applied everything the write depended
//! on (causal delivery), and acknowledges it. What the network loses is
//! sent again; what a long partition makes too much to keep, anti-entropy
//! repairs by comparing digests and shipping only what differs, since
//! merging is idempotent.
//!
//! ```
//! use archipelago::clock::ReplicaId;
//! use archipelago::crdt::{Crdt, PnCounter};
//!
//! let (tokyo, frankfurt) = (ReplicaId::from_name("ap-northeast"), ReplicaId::from_name("eu-central"));
//! let mut stock_tokyo = PnCounter::new();
//! let restock = stock_tokyo.inc(tokyo, 10);
//! let mut stock_frankfurt = PnCounter::new();
//! stock_frankfurt.merge(&restock);
//!
//! // Both regions sell at the same moment, each on its own.
//! let sold_tokyo = stock_tokyo.dec(tokyo, 2);
//! let sold_frankfurt = stock_frankfurt.dec(frankfurt, 3);
//!
//! // Deltas cross in flight, one of them twice.
//! stock_frankfurt.merge(&sold_tokyo);
//! stock_tokyo.merge(&sold_frankfurt);
//! stock_tokyo.merge(&sold_frankfurt);
//! assert_eq!(stock_tokyo, stock_frankfurt);
//! assert_eq!(stock_tokyo.value(), 5);
//! ```
//!
//! ## Modules
//!
//! | module | holds |
//! | --- | --- |
//! | [`clock`] | replica ids, dots, version vectors, causal contexts, the hybrid logical clock |
//! | [`crdt`] | the [`Crdt`](crdt::Crdt) trait and the replicated types |
//! | [`id`] | region-aware identifiers: Snowflake, UUIDv7, ULID |
//! | [`region`] | the engine: regions, CRDT and resolver tables, session reads, stats |
//! | [`resolve`] | versioned plain values, resolvers, the conflict audit feed |
//! | [`session`] | session tokens and the four session guarantees: read-your-writes across regions |
//! | [`storage`] | the `Storage` seam, in memory and on redb: identity, tables, outbox, clock across restarts |
//! | [`stream`] | bounded, never-blocking event streams: table changes, the async conflict feed |
//! | [`transport`] | the `Transport` trait; an in-process mesh with fault injection; TCP (feature `tcp`) over mutual TLS (feature `tls`) or, by name, plaintext |
//! | [`wire`] | the versioned codec every byte goes through |
//! | `testing` | (feature `testing`) proptest law checks for your own CRDTs; seeded regions for testing your service |
//!
//! Plain values that are not CRDTs (a profile, an order) are kept as
//! versioned writes and settled by a deterministic resolver, each conflict
//! recorded in an audit feed ([`resolve`]). A session token names the writes
//! a client has made or seen, so any region can tell whether it may serve
//! that client's read ([`session`]). The [`region`] engine wires replicas
//! together over a [`transport`]: in-process channels (with fault injection,
//! for tests) or TCP between machines, authenticated by mutual TLS.
//!
//! ## Cargo features
//!
//! | feature | default | gives |
//! | --- | --- | --- |
//! | `tcp` | on | `TcpTransport`: regions on different machines (tokio's sockets) |
//! | `tls` | on | mutual TLS 1.3 for `TcpTransport` (rustls, `ring`); implies `tcp` |
//! | `redb` | on | `RedbStorage` and `RegionBuilder::data_dir`: durable regions |
//! | `metrics` | off | the `metrics` facade: replication lag, peer status, bytes, conflicts... |
//! | `testing` | off | law checkers for your own CRDTs and resolvers, the decoder fuzz harness |
//!
//! `tls` is on by default so that the secure transport is the short path:
//! without it, TCP offers only `TcpTransport::insecure_plaintext`. With no
//! features, the crate is the data types and the engine on in-process
//! channels (tests, simulations, one-process deployments).
//!
//! ## Identity and restarts
//!
//! A region with [`storage`] keeps its replica id for good and counts its
//! starts (its *incarnation*); its tables, unacknowledged writes and clock
//! survive a crash, and [`AckLevel::Local`](region::AckLevel) writes return
//! only once on disk. Regions greet each other with a handshake naming
//! replica id and incarnation: a restarted peer is reset, not refused, and
//! two peers with one replica id are refused
//! ([`HandshakeRefusal`](region::HandshakeRefusal)). A region without
//! storage loses on restart whatever it had not replicated, and comes back
//! as a new replica.
//!
//! ## Trust
//!
//! Over TCP, mutual TLS says who a peer is; nothing says it is right. A
//! peer speaks only for its own writes: what it claims of a third region
//! never counts as held (staleness, acknowledgements and session reads go
//! by what arrived first-hand); it only lets buffered batches through, and
//! a claim beyond what that region told us itself is a hint that starts an
//! exchange with it. Acknowledgements, dependencies and vectors naming our
//! writes beyond what exists or was sent are refused.
//! Values stamped past our clock plus its max offset wait until our clock
//! catches up. Frames are decoded within a memory budget proportional to
//! their size, and every type checks its own rules; see the
//! [`region`] page ("What a peer is believed") and [`wire`].

#![warn(missing_docs)]

pub mod clock;
pub mod crdt;
pub mod hash;
pub mod id;
pub mod region;
pub(crate) mod replication;
pub mod resolve;
pub mod session;
pub mod storage;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod wire;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
