//! The region engine: replicated tables between regions.
//!
//! A [`Region`] is one replica of the archipelago: it hosts named tables,
//! answers reads and writes from its own state at once, and replicates every
//! write to its peers through a [`Transport`]
//! (an in-process [`ChannelNetwork`](crate::transport::ChannelNetwork) today).
//!
//! - A **CRDT table** ([`Region::table`]) holds values of a [`Crdt`] type:
//!   a write runs a mutator and ships its delta; concurrent writes merge.
//! - A **resolver table** ([`Region::table_with`]) holds plain serde values
//!   as [`VersionSet`]s, settled by a [`Resolver`] with every conflict in
//!   the table's [`ConflictFeed`].
//!
//! Each table has one key type `K`, any serde type (encoded by
//! [`crate::wire`]), named when it is declared (see [Keys](#keys)).
//!
//! ```
//! use archipelago::crdt::OrSet;
//! use archipelago::region::Region;
//! use archipelago::resolve::LastWriteWins;
//! use archipelago::session::Session;
//! use archipelago::transport::ChannelNetwork;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), archipelago::region::RegionError> {
//! let net = ChannelNetwork::new(7);
//! let tokyo = Region::builder("ap-northeast").transport(net.endpoint("ap-northeast")).build()?;
//! let frankfurt = Region::builder("eu-central").transport(net.endpoint("eu-central")).build()?;
//!
//! let carts = tokyo.table::<String, OrSet<String>>("carts")?;
//! let mut session = Session::new();
//! let token = carts.update("user-1", |cart, ctx| cart.apply(|c| c.insert(ctx.replica(), "matcha".into()))).await?;
//! session.record_write(&token);
//!
//! // The same user's next request lands in Frankfurt: the session read
//! // waits until Frankfurt has applied the write (bounded), never stale.
//! let carts_fra = frankfurt.table::<String, OrSet<String>>("carts")?;
//! let cart = carts_fra.read_session("user-1", &mut session).await?.unwrap();
//! assert!(cart.contains("matcha"));
//!
//! let profiles = tokyo.table_with::<u64, String>("profiles", LastWriteWins)?;
//! profiles.put(&42u64, "Aiko".to_string()).await?;
//! tokyo.shutdown().await;
//! frankfurt.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Keys
//! A table is declared with its key type (`region.table::<String, V>(..)`)
//! and the region remembers it: declaring the same table with another key
//! type is refused ([`RegionError::KeyType`]), so `1u8` and `1u64`, which
//! encode to the same bytes, cannot hit one key through two handles. (The
//! check is per region: the key type is not on the wire, so a peer that
//! declares the table with another key type is not refused; its keys are
//! merged by their bytes, see scans below.)
//!
//! Key methods take `&Q` where `K: Borrow<Q>`, as `HashMap` does, so a
//! `String`-keyed table takes `"user-1"` (a `&str`) without an allocation.
//! A key is found by its `wire` encoding, so a borrowed form must encode
//! exactly as `K` does: `str` for `String`, `[T]` for `Vec<T>`, `T` for
//! `Box<T>` all do. A type of yours whose `Borrow` form serializes
//! differently (another serde shape) would read and write other keys:
//! pass `&K` for such types.
//!
//! ## Scans
//! [`Table::keys`], [`Table::iter`] and [`Table::range`] (and their
//! [`ResolverTable`] forms, which yield the resolver's verdict as `read`
//! does) read a consistent snapshot of the table at this region. Under the
//! region's state lock they copy every key of the table (and, but for
//! `keys`, clone every value) in one pass, then release the lock and decode
//! the keys outside it. So the lock is held for one copy of the table,
//! O(keys), never while the caller iterates; writes that land meanwhile are
//! not in the snapshot, which costs memory for a copy of the table until
//! the [`Scan`] is dropped. A table of more keys than
//! [`RegionConfig::scan_keys_max`] is not scanned
//! ([`RegionError::ScanTooLarge`]). `keys` and `iter` come in no particular
//! order; `range` filters and sorts the snapshot by key outside the lock
//! (keys are stored by hash, not in order). Keys that do not decode as `K`
//! (a peer declared the table with another key type) are skipped with a
//! `warn` event and counted in [`Scan::skipped`] and
//! [`TableStats::undecodable_keys`].
//!
//! ## Transactions
//! [`Region::transaction`] applies writes to several keys and tables here
//! as one unit (all or none: a closure error or panic applies nothing) and
//! appends them to the outbox as one group that no segment, batch, commit
//! or resend boundary cuts: a peer applies them in one batch under one
//! lock, after their dependencies. Reads inside see one snapshot plus the
//! transaction's own writes; a read-only transaction is the way to read
//! several keys consistently (separate reads outside one are each of their
//! moment: no isolation between them). Bounds: `batch_len_max` writes,
//! `batch_bytes_max` bytes ([`RegionError::TransactionTooLarge`]). It
//! returns at [`AckLevel::Memory`];
//! [`Region::transaction_with_ack`] waits for `Local` (the one commit
//! that holds all its writes) or `Replicated(n)` (n peers applied all of
//! it). Change streams get a transaction's events consecutively, published under the
//! same lock. Anti-entropy replies are built and applied under one lock;
//! values it sets aside (stamps past the clock bound, undeclared tables)
//! are not yet kept transaction-whole: a known limit.
//!
//! [`ResolverTable::delete`] and [`Table::delete`] (for values that are
//! [`Reset`](crate::crdt::Reset)) are observed-removes, replicated as
//! writes with a session token:
//! - **What they remove**: what this region has observed of the key, no
//!   more. A write made concurrently elsewhere, that the delete had not
//!   seen, survives it (add-wins) and the key reads as that write
//!   everywhere; a write made after the delete is seen has seen it and is
//!   kept.
//! - **What stays behind** (the tombstone): the key, with the context of
//!   what was deleted: for a resolver table the joined version vector of
//!   the removed versions ([`VersionSet::removed`], at most an entry per
//!   replica), which reads as `None`; for a CRDT table the empty value with
//!   the removed dots in its causal context, which reads as that empty
//!   value. [`Region::stats`] and `len` count tombstones as keys. They are
//!   not collected: dropping one is sound only once every region has
//!   applied the delete (a stable cut, the round `retire_peer` lacks too).
//! - **No resurrection**: a late copy of a deleted write (a retransmitted
//!   batch, an anti-entropy transfer from a region partitioned during the
//!   delete) is covered by the tombstone's context and stays deleted,
//!   since the tombstone is part of the key's state that merges and
//!   anti-entropy ship.
//! - Deleting a key not held here (or already deleted) writes nothing and
//!   returns an empty token.
//!
//! ## Bounded tables and rights movement
//! [`Region::bounded_table`] declares a table of
//! [`BoundedCounter`](crate::crdt::BoundedCounter)s: stock that never goes
//! below its bound at any region, under any partition. Each region holds
//! *rights* to some of the units; restocking ([`BoundedTable::inc`]) gives
//! the rights to the region that restocks, and a sale
//! ([`BoundedTable::try_dec`]) spends rights held here, or fails at once
//! with [`RegionError::Rights`] (what is held here and in total). A sale
//! never waits on the network. The engine moves rights to where demand is:
//! - **Asking.** A refused sale, or one that leaves fewer than
//!   `rights_request_below_units` rights here, records a want for the key;
//!   on its next tick the engine sends a rights request to the connected
//!   peer believed (by this region's copy of the counter) to hold the most.
//!   One request per key is outstanding; it is sent again, to another peer
//!   when there is one, after `rights_request_timeout` without rights
//!   arriving; at most 64 requests leave per tick and 4096 keys are wanted
//!   at once. A partitioned region asks no one, and sells only what it
//!   holds; its want is asked for once a peer is back.
//! - **Granting.** A peer that holds rights transfers at most half of them
//!   (rounded up, so the last unit moves), never more than asked, as a
//!   local write that replicates like any other; it answers one request
//!   per peer and key per `rights_request_timeout`, so a duplicated
//!   request moves rights once, and an absurd request gets at most half.
//!   Grants never create rights: the counter's own `transfer` checks them.
//! - **Refills** below the threshold (no sale refused) are asked only of a
//!   peer holding at least twice as many rights plus two, for half the
//!   difference, so holdings settle instead of moving back and forth.
//! - **Protocol.** Rights requests are protocol 3: a connection negotiated
//!   at an older protocol carries none (both regions just sell what they
//!   hold). [`RegionStats`] counts `rights_requested`, `rights_granted`
//!   (units) and `rights_refused`.
//!
//! ## Homed tables: one writer per key
//! [`Region::homed_table`] declares a table whose every key has one *home*
//! region, named by a [`Placement`] (a function of the key, and pinned
//! keys, which win): balances, anything that must not be written by two
//! regions at once. See the [`homed`] module page for the whole story.
//!
//! | | at the key's home | anywhere else |
//! | --- | --- | --- |
//! | [`HomedTable::apply`], [`HomedTable::put`] | applied at once: one local write, replicated | forwarded to the home (protocol 4 connections only), applied there once (duplicates answered from memory), answered with the home's token; [`RegionError::HomeUnreachable`] naming the home after `homed_forward_timeout` (2 s) |
//! | [`HomedTable::read`] | local | local, eventual |
//! | [`HomedTable::read_at_home`] | local, linearizable | asks the home: linearizable for the key |
//! | [`HomedTable::read_session`] | waits for the session's tokens | the same: a forwarded write's token waits for its replication here |
//! | [`HomedTable::move_home`] | hands the key off at the next epoch (its last state travels with it); then refuses the key's writes, naming the new home | forwarded to the home, as a write |
//! | [`HomedTable::fail_over_home`] | an operator's call when a home is lost: this region names a new home at the next failover epoch; the lost home is fenced once it hears of it | the same |
//!
//! A value refuses an operation through [`HomedValue::apply`]: the typed
//! rejection comes back to the caller ([`HomedError::Rejected`]).
//! [`RegionStats`] counts `homed_forwarded`, `homed_served`,
//! `homed_duplicates`, `homed_refused`, `homed_moves`, `homed_fenced`
//! and `homed_redirects`. Homes move by epochs (protocol 5 everywhere):
//! no two regions accept a key's writes in the same epoch.
//!
//! ## Guarantees
//! - Local reads and writes never wait for another region.
//! - A region applies a peer's batch only after every write it depends on
//!   (causal delivery across keys and tables): no reply before its post.
//! - Writes are acknowledged by each peer and retransmitted until they are;
//!   duplicates and reordering are harmless (merges are joins).
//! - The outbox and the causal buffer are bounded: past the bound, what
//!   cannot be kept is dropped and anti-entropy repairs it.
//! - Anti-entropy runs on (re)connect and periodically. Between regions of
//!   protocol 6 it reconciles each table by fingerprints of key ranges
//!   (Meyer's range-based set reconciliation): ranges that agree drop out,
//!   the others are split until the differing keys are known, and each
//!   side ships the states of those keys only, so its bytes grow with the
//!   difference, not the table (about 1 KB of fingerprints per differing
//!   key, 14 bytes for equal tables; see BENCHMARKS.md). A table's range
//!   index costs a write nothing but noting its key; it is brought up to
//!   date when an exchange reads it. With a peer of protocol 5 or older,
//!   regions compare digests of 1024 buckets per table and ship the
//!   differing buckets. Fingerprints and digests hash each value's `wire`
//!   encoding, so they assume equal values encode to equal bytes, as every
//!   type of this crate does. A value type whose encoding follows hash-map
//!   order still converges; anti-entropy just ships it more often than
//!   needed.
//! - A repair by anti-entropy counts as done only once the peer confirms
//!   it merged our states; until then the peer's batches wait, and a lost
//!   transfer is retried after `sync_timeout`.
//! - Input from peers is hostile until decoded: a frame that does not
//!   decode, or whose entries are not well framed, is refused whole and
//!   touches nothing. A well-framed value that does not decode as its
//!   table's type (the table declared with another type elsewhere) is
//!   dropped and counted in [`RegionStats::undecodable_values`], with a
//!   warning; the rest of its batch is applied, so one bad value does not
//!   stop replication from its origin.
//! - A write changes the stored value only by its delta: its closure
//!   runs mutators on a copy through [`Mutation::apply`], and the region
//!   joins the join of their deltas into the stored value once that delta
//!   is encoded. What a write changes here is what it ships; a write that
//!   fails (encoding, a panic in the closure) changes nothing.
//! - [`Region::shutdown`] closes the region to writes
//!   ([`RegionError::Closed`]), flushes what is queued, waits, bounded, for
//!   it to be acknowledged, and returns a [`ShutdownReport`]: per peer, the
//!   writes it did not acknowledge.
//! - **A supervised engine.** If the engine stops without `shutdown` (a
//!   panic in it or in a user resolver or merger it runs, a panic that left
//!   the state locked and half-changed, a closed transport), every later
//!   read and write returns [`RegionError::Engine`] and
//!   [`RegionStats::engine_failure`] names it (logged at `error`): a region
//!   never accepts a write it cannot replicate. A panic in an `update`
//!   closure is the caller's: it reaches the caller and fails nothing.
//!
//! ## Restarts, identity and what is lost
//! - **Without storage** a region lives in memory only: a restart (or a
//!   crash) loses every write it had not replicated, and the region comes
//!   back as a new replica with a fresh id. Its peers rebind its name to
//!   the new id at the handshake, so its writes flow again at once; version
//!   vectors and session tokens gain an entry per restart.
//! - **With storage** ([`RegionBuilder::storage`], [`RegionBuilder::data_dir`])
//!   it keeps its replica id, tables, unacknowledged writes and clock (see
//!   [`storage`](crate::storage)); writes return at their [`AckLevel`].
//! - **The handshake.** On every connection both sides send a hello: replica
//!   id, incarnation, writes made and applied vector. A peer back with a new
//!   incarnation (or id) has its binding, cursor and buffered batches reset;
//!   frames of its former incarnation are ignored and counted in
//!   [`RegionStats::stale_frames`]. Our own id, another peer's id, an older
//!   incarnation, or fewer writes than we applied of the peer are refused
//!   ([`HandshakeRefusal`]): nothing of such a peer is merged.
//! - **Protocol versions.** Before its hello, each side announces the
//!   engine protocol versions it speaks ([`PROTOCOL_VERSION_MIN`] to
//!   [`RegionConfig::protocol_version_max`], by default
//!   [`PROTOCOL_VERSION`]); a peer whose range does not meet ours is
//!   refused ([`HandshakeRefusal::Protocol`], naming both ranges), and the
//!   connection speaks the newest both know ([`PeerStats::protocol`]). A
//!   peer that announces nothing speaks protocol 1, the frames of
//!   `tests/fixtures/frames/v1`, which every build must keep decoding. An
//!   announcement lost on a lossy link is asked for again: a region greeted
//!   without one announces its own again (one per `ack_timeout`, at most
//!   [`PROTOCOL_ANNOUNCEMENTS_MAX`] per connection), and a repeated
//!   announcement is answered; until then homed forwards to that peer wait
//!   instead of failing with [`RegionError::HomeProtocol`].
//! - **Tables not declared here (yet).** A peer on a newer build may write
//!   to a table this region has not declared. Its values are held encoded
//!   (and stored, with storage) up to [`RegionConfig::undeclared_bytes_max`]
//!   for all such tables together, and merged in when the table is
//!   declared. Past the bound they are dropped, never held and never a
//!   reason to refuse a frame: the batch is applied and acknowledged, so
//!   every other table keeps replicating. Dropped values are counted
//!   ([`RegionStats::undeclared_values_dropped`], a `warn` event once per
//!   table); declaring such a table starts an anti-entropy exchange with
//!   every peer at once (on the next tick, not at the periodic round), which
//!   ships the table's state from the peers that hold it. Until then, this
//!   region's applied vector names writes whose values it dropped: a region
//!   that hears of them only from it (not from their origin) believes it.
//!   The mark of dropped values is not stored: a region restarted before
//!   declaring such a table catches it up at the periodic round instead.
//!
//! ## What a peer is believed
//! A peer may be authenticated and still wrong (a bug, an old copy of a
//! store, a hostile process). Nothing it *claims* moves this region's state
//! beyond data it actually sent:
//! - **Its own writes**: a peer speaks for itself. Its hello, its batches
//!   and the applied vector of its anti-entropy transfers say how many
//!   writes it made.
//! - **A third region's writes**: a region keeps two accounts. What it
//!   holds *first-hand* (each origin's batches, each peer's own writes in
//!   its transfers) is its applied vector ([`Region::applied`]): it alone
//!   decides which batches are stale, what is acknowledged to an origin
//!   and what a session read waits for. What a transfer's vector claims of
//!   a third region is *believed*: it lets a buffered batch that depends on
//!   those writes through (the transfer brought them, if the claim is
//!   true), and, up to what that region told us itself, it is named in the
//!   dependencies of our own writes; it never counts as held. A claim about
//!   a peer's replica beyond what that peer told us starts an exchange with
//!   it, counted in [`RegionStats::untrusted_claims`], and its next hello
//!   takes back what it never made. A batch held back for an ack timeout by
//!   writes their origin never told us of (its sender believed a peer that
//!   inflated its own count) starts an exchange with the sender, which lets
//!   it through. So no claim makes a write look applied, a batch look stale
//!   or a log truncate; a false one at worst lets a batch through early.
//!   A region may hold more than its applied vector names, never less: a
//!   session read may wait for a write it already shows, until the write's
//!   origin (or a transfer of its own) confirms it. Only of a replica no
//!   peer speaks for (a former id of a restarted region, a retired one,
//!   one we never met) is a peer's word taken as held: nobody will ever
//!   confirm it.
//! - **Our writes**: a vector claiming more of our writes than we made is
//!   refused whole; an acknowledgement of writes of ours the peer was never
//!   sent (by batch or by a transfer of ours) is refused and truncates
//!   nothing; a batch depending on writes of ours we
//!   never made is refused, not buffered. Each counts in
//!   [`RegionStats::rejected_frames`].
//! - **Its clock**: a batch's send time moves our clock at most the max
//!   offset (500 ms by default) past our wall clock. A *value* stamped
//!   later than that (a last-writer-wins register or map, a resolver
//!   table's versions: [`Crdt::latest_stamp`]) is not merged, nor clamped
//!   (clamping would change the value, and the regions would diverge): a
//!   batch carrying it is refused and its origin sends it again; from an
//!   anti-entropy transfer it is set aside, the rest merged and the
//!   transfer's vector not believed, and a later exchange brings it. It
//!   lands once our clock is within the offset of its stamp; a write made
//!   here after it landed stamps above it and wins. Each counts in
//!   [`RegionStats::values_ahead`]. So a region whose clock runs
//!   ahead delays its own writes elsewhere by the excess, and wins no
//!   conflict it would not win with a correct clock by more than the
//!   offset. Values held for a table before it was declared are not
//!   checked again when it is.
//!
//! ## Metrics
//! With feature `metrics` the region publishes through the [`metrics`
//! facade](https://docs.rs/metrics/0.24) (no exporter in the library):
//! install one in the application before building regions, e.g.
//! `metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(addr).install()`.
//! Gauges and counters are published from the engine's tick, at most once
//! per second (counters as absolute values of [`RegionStats`]); histograms
//! where the wait or commit happens. Every series has a `region` label.
//!
//! | name | type | labels | unit | meaning |
//! | --- | --- | --- | --- | --- |
//! | `archipelago_replication_lag_seconds` | gauge | `peer` | s | age, by this region's clock, of the oldest local write the peer has not acknowledged; 0 when none ([`PeerStats::lag`]) |
//! | `archipelago_replication_lag_updates` | gauge | `peer` | writes | local writes the peer has not acknowledged |
//! | `archipelago_peer_status` | gauge | `peer` | 0/1/2 | 0 in sync (connected, every write of ours acknowledged, no repair pending, none of its writes we know of unapplied), 1 syncing (connected, not in sync), 2 disconnected |
//! | `archipelago_peer_bytes_sent_total` | counter | `peer` | bytes | encoded frame bytes sent to the peer, anti-entropy included ([`PeerStats::bytes_sent`]) |
//! | `archipelago_peer_bytes_received_total` | counter | `peer` | bytes | encoded frame bytes received from the peer, undecodable frames included ([`PeerStats::bytes_received`]) |
//! | `archipelago_anti_entropy_bytes_sent_total` | counter | `peer` | bytes | the anti-entropy part of the bytes sent ([`PeerStats::sync_bytes_sent`]) |
//! | `archipelago_anti_entropy_bytes_received_total` | counter | `peer` | bytes | the anti-entropy part of the bytes received ([`PeerStats::sync_bytes_received`]) |
//! | `archipelago_clock_offset_seconds` | gauge | `peer` | s | the peer's clock minus ours, as last observed from a timestamp it sent (transit time reads as the peer being behind); absent until one arrived ([`PeerStats::clock_offset_ms`]) |
//! | `archipelago_outbox_len` | gauge | | writes | local writes kept for peers |
//! | `archipelago_outbox_bytes` | gauge | | bytes | bytes the outbox holds |
//! | `archipelago_causal_buffer_len` | gauge | | batches | batches waiting for their dependencies |
//! | `archipelago_batches_sent_total` | counter | | batches | batches sent, retransmissions included |
//! | `archipelago_batches_applied_total` | counter | | batches | batches applied |
//! | `archipelago_batches_dropped_total` | counter | | batches | batches dropped from a full causal buffer |
//! | `archipelago_rejected_frames_total` | counter | `reason` | frames | frames refused, by [`RejectReason::as_str`] ([`RegionStats::rejected_by_reason`]) |
//! | `archipelago_outbox_overflows_total` | counter | | events | times the outbox outgrew its bound |
//! | `archipelago_anti_entropy_rounds_total` | counter | | exchanges | anti-entropy exchanges completed |
//! | `archipelago_anti_entropy_states_received_total` | counter | | key states | key states received through anti-entropy |
//! | `archipelago_refused_handshakes_total` | counter | | hellos | peer handshakes refused |
//! | `archipelago_values_ahead_total` | counter | | values | values stamped past this region's clock plus its max offset |
//! | `archipelago_undeclared_values_dropped_total` | counter | | values | values of tables not declared here dropped past `undeclared_bytes_max` (repaired at declare) |
//! | `archipelago_rights_requested_total` | counter | | requests | rights requests sent to peers ([bounded tables](#bounded-tables-and-rights-movement)) |
//! | `archipelago_rights_granted_units_total` | counter | | units | rights granted to peers that asked |
//! | `archipelago_rights_refused_total` | counter | | requests | rights requests answered with nothing |
//! | `archipelago_homed_forwarded_total` | counter | | requests | homed operations forwarded to their keys' homes ([homed tables](#homed-tables-one-writer-per-key)) |
//! | `archipelago_homed_served_total` | counter | | requests | forwarded operations served here as the key's home (applied, read or rejected) |
//! | `archipelago_homed_duplicates_total` | counter | | requests | forwarded requests received again and answered from memory, not applied again |
//! | `archipelago_homed_refused_total` | counter | | requests | forwarded requests refused here (not the home, not a homed table, types that do not fit, expired) |
//! | `archipelago_homed_moves_total` | counter | | keys | keys whose home this region moved (handoffs as the old home, operator failovers) |
//! | `archipelago_homed_fenced_total` | counter | | operations | homed operations refused here because the key's home moved away (fenced) |
//! | `archipelago_homed_redirects_total` | counter | | operations | homed operations sent on to the home a refusal named |
//! | `archipelago_hlc_remote_rejects_total` | counter | | timestamps | remote timestamps past this region's clock plus its max offset, not followed beyond that bound ([`RegionStats::hlc_remote_rejects`]) |
//! | `archipelago_conflicts_total` | counter | `table`, `strategy` | conflicts | conflicts resolved in a resolver table, labelled with its resolver's [`Strategy::as_str`](crate::resolve::Strategy::as_str) |
//! | `archipelago_commits_total` | counter | | commits | commits to storage |
//! | `archipelago_commit_failures_total` | counter | | commits | commits that failed |
//! | `archipelago_session_wait_seconds` | histogram | | s | how long a session read or write waited for this region to catch up |
//! | `archipelago_commit_seconds` | histogram | | s | how long a commit to storage took (with storage) |
//!
//! `testing::Forger` (feature `testing`) makes a region lie in all these
//! ways, for tests.

use std::any::type_name;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::{Hlc, PhysicalClock, ReplicaId, Stamp, SystemClock, VersionVector};
use crate::crdt::Crdt;
use crate::replication::core::{ConflictCount, Core, TableSlot};
use crate::replication::store::{CrdtStore, Merger};
use crate::replication::{self, Command, Shared};
use crate::resolve::{ConflictFeed, Resolution, Resolver, VersionSet};
use crate::session::{Missing, Session, SessionToken};
use crate::storage::{Commit, Identity, Snapshot, Storage, StorageError};
use crate::transport::Transport;
use crate::wire::{self, WireError};

mod bounded;
mod config;
mod error;
pub mod homed;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
mod stats;
mod table;
pub mod transaction;
pub mod watch;

pub use bounded::BoundedTable;
pub use config::{
    HELLO_VECTOR_ENTRIES_MAX, PROTOCOL_ANNOUNCEMENTS_MAX, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
    RegionConfig,
};
pub use error::{EngineFailure, HandshakeRefusal, RegionError};
pub use homed::{
    HOMED_FAILOVER_EPOCH_STRIDE, HOMED_FORWARDS_PENDING_MAX, HOMED_REDIRECTS_MAX,
    HOMED_REPLIES_REMEMBERED_MAX, HOMED_REPLY_BYTES_REMEMBERED_MAX, HomedError, HomedFailover,
    HomedMeta, HomedMove, HomedRead, HomedRefusal, HomedTable, HomedValue, HomedWrite, Placement,
};
pub use stats::{PeerFlush, PeerStats, RegionStats, RejectReason, ShutdownReport, TableStats};
use table::Declared;
pub use table::{ResolverTable, Scan, Table};
pub use transaction::Transaction;
pub use watch::{Change, ChangeSource, ChangeStream};

/// What a mutator knows about the write it makes.
#[derive(Clone)]
pub struct WriteCtx<'a> {
    hlc: &'a Hlc,
    /// Read from the clock on first use: counters and sets never need it.
    stamp: std::cell::Cell<Option<Stamp>>,
}

impl WriteCtx<'_> {
    /// The writing replica: pass it to dot-based mutators
    /// (`cart.insert(ctx.replica(), sku)`).
    pub fn replica(&self) -> ReplicaId {
        self.hlc.replica()
    }

    /// The write's hybrid-logical-clock stamp: pass it to last-writer-wins
    /// mutators (`map.insert(ctx.stamp(), k, v)`). One write has one stamp,
    /// however often it is asked for.
    pub fn stamp(&self) -> Stamp {
        match self.stamp.get() {
            Some(stamp) => stamp,
            None => {
                let stamp = self.hlc.stamp();
                self.stamp.set(Some(stamp));
                stamp
            }
        }
    }
}

impl Debug for WriteCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCtx")
            .field("replica", &self.replica())
            .field("stamp", &self.stamp.get())
            .finish()
    }
}

/// One write's hold on the value it changes: read it through `Deref`,
/// change it only through [`apply`](Mutation::apply).
///
/// There is no `&mut V` to the stored value: every change goes through a
/// mutator whose delta `apply` joins into the write's, so a write that
/// calls two mutators ships both. The closure works on a copy; the region
/// installs *the stored value joined with the write's delta*, never the
/// copy. So what a write changes here is exactly what it ships: a mutator
/// whose delta is wrong (one `apply` closure that calls two mutators and
/// returns one delta) loses that change here as well as everywhere else,
/// visibly, and the regions never diverge.
///
/// ```
/// use archipelago::crdt::OrSet;
/// use archipelago::region::Region;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), archipelago::region::RegionError> {
/// let region = Region::builder("ap-northeast").build()?;
/// let carts = region.table::<String, OrSet<String>>("carts")?;
/// // Two mutators, one write: both deltas are shipped.
/// carts
///     .update("user-1", |cart, ctx| {
///         cart.apply(|c| c.insert(ctx.replica(), "matcha".into()));
///         if cart.contains("matcha") {
///             cart.apply(|c| c.remove("sencha"));
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Mutation<V> {
    /// The value as this write's mutators left it.
    working: V,
    /// The join of their deltas; `None` until one ran.
    delta: Option<V>,
    /// True when the key was held before this write (deletes skip the
    /// others).
    held: bool,
}

impl<V: Crdt> Mutation<V> {
    /// Runs `mutator` (`|cart| cart.insert(replica, sku)`) on the value and
    /// joins the delta it returns into the write's delta. One mutator per
    /// call: what `mutator` returns is all of its change that is kept.
    pub fn apply(&mut self, mutator: impl FnOnce(&mut V) -> V) {
        let delta = mutator(&mut self.working);
        match &mut self.delta {
            Some(joined) => joined.merge(&delta),
            None => self.delta = Some(delta),
        }
    }

    /// The value as the mutators applied so far left it.
    pub fn value(&self) -> &V {
        &self.working
    }

    /// True once a mutator ran: an update whose closure applies none is
    /// no write (nothing is logged, shipped or waited for).
    pub fn is_changed(&self) -> bool {
        self.delta.is_some()
    }
}

impl<V> std::ops::Deref for Mutation<V> {
    type Target = V;
    fn deref(&self) -> &V {
        &self.working
    }
}

impl<V: Debug> Debug for Mutation<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutation")
            .field("value", &self.working)
            .field("delta", &self.delta)
            .finish()
    }
}

/// When a write returns: what it survives once acknowledged.
///
/// | level | returns once | survives |
/// | --- | --- | --- |
/// | `Memory` (default) | applied here, in memory | nothing: a crash before the next commit (or, without storage, any restart) loses it, and it reaches peers only if this process lives to send it |
/// | `Local` | the commit that holds it is on this region's disk (group commit: one fsync covers every write waiting) | a crash or power loss of this region; it is then sent to peers after the restart |
/// | `Replicated(n)` | `n` other regions have applied it (and, those with storage, committed it) | the loss of this region and of `n - 1` of those; with storage here, it is also `Local` |
///
/// With storage, a write leaves for peers only once committed, whatever
/// its level, so a peer never holds a write this region could lose.
/// `Replicated(n)` waits up to `replication_wait_max` and then fails with
/// [`RegionError::ReplicationTimeout`]: the write stays applied here and
/// keeps replicating (Akka's `WriteTo(n)`, Cosmos DB's multi-region write
/// acknowledgement).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckLevel {
    /// Applied in memory.
    #[default]
    Memory,
    /// Committed to this region's storage.
    Local,
    /// Applied by this many other regions.
    Replicated(usize),
}

/// Builds a [`Region`].
pub struct RegionBuilder {
    name: String,
    replica: Option<ReplicaId>,
    storage: Option<Result<Box<dyn Storage>, StorageError>>,
    ack: AckLevel,
    clock: Option<Box<dyn PhysicalClock>>,
    max_offset: Option<Duration>,
    config: RegionConfig,
    #[allow(clippy::type_complexity)]
    engine: Option<
        Box<dyn FnOnce(Arc<Shared>, mpsc::Receiver<Command>, Option<Box<dyn Storage>>) + Send>,
    >,
}

impl RegionBuilder {
    /// Pins the replica id.
    ///
    /// By default a region with storage draws its id (64 random bits) once,
    /// when its store is created, and keeps it; a region without storage
    /// draws a fresh one at every build, so a restart is a new replica and
    /// can never reuse a dot its previous process gave out. Two regions
    /// with one id are refused at the handshake
    /// ([`HandshakeRefusal`]). Pin an id only in tests, or to create a
    /// store with a deployment-assigned id (a store that holds another id
    /// fails the build with [`RegionError::PinnedReplicaId`]).
    pub fn replica_id(mut self, replica: ReplicaId) -> Self {
        self.replica = Some(replica);
        self
    }

    /// The transport to peers. Without one, the region serves alone.
    pub fn transport<T: Transport>(mut self, transport: T) -> Self {
        self.engine = Some(Box::new(move |shared, commands, storage| {
            replication::spawn(shared, transport, commands, storage);
        }));
        self
    }

    /// Keeps the region's identity and state in `storage` (see
    /// [`storage`](crate::storage)): a restart resumes with the same
    /// replica id, its tables, its unacknowledged writes and its clock.
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Ok(Box::new(storage)));
        self
    }

    /// Keeps the region's state in `dir/region.redb` ([`RedbStorage`]),
    /// creating the directory and the file if needed; errors surface at
    /// [`build`](RegionBuilder::build).
    ///
    /// [`RedbStorage`]: crate::storage::RedbStorage
    #[cfg(feature = "redb")]
    pub fn data_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        let dir = dir.as_ref();
        let opened = std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Io(format!("{}: {e}", dir.display())))
            .and_then(|()| crate::storage::RedbStorage::open(dir.join("region.redb")))
            .map(|s| Box::new(s) as Box<dyn Storage>);
        self.storage = Some(opened);
        self
    }

    /// The acknowledgement level of writes through tables of this region
    /// (default [`AckLevel::Memory`]); a table handle can set its own with
    /// [`Table::with_ack`].
    pub fn ack_level(mut self, ack: AckLevel) -> Self {
        self.ack = ack;
        self
    }

    /// The wall clock behind the region's hybrid logical clock (default:
    /// the system clock).
    pub fn clock(mut self, clock: impl PhysicalClock + 'static) -> Self {
        self.clock = Some(Box::new(clock));
        self
    }

    /// How far ahead a peer's clock may be before its batches are refused
    /// (default 500 ms).
    pub fn max_clock_offset(mut self, max_offset: Duration) -> Self {
        self.max_offset = Some(max_offset);
        self
    }

    /// All limits and timings at once.
    pub fn config(mut self, config: RegionConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the region (and its engine task, when it has a transport or
    /// storage). With storage, first loads it and commits the new
    /// incarnation (blocking), so every hello this region sends names an
    /// incarnation on disk.
    ///
    /// # Errors
    /// [`RegionError::NoRuntime`] outside a tokio runtime;
    /// [`RegionError::Storage`] when the store cannot be opened or read, is
    /// another region's or a newer format's; [`RegionError::PinnedReplicaId`].
    pub fn build(self) -> Result<Region, RegionError> {
        tokio::runtime::Handle::try_current().map_err(|_| RegionError::NoRuntime)?;
        let mut storage = self.storage.transpose()?;
        let clock: Box<dyn PhysicalClock> = self.clock.unwrap_or_else(|| Box::new(SystemClock));
        let (identity, snapshot) = match &mut storage {
            Some(storage) => {
                let snapshot = storage.load()?;
                let stored = snapshot.identity.as_ref();
                let identity = identity_from_storage(&self.name, self.replica, stored)?;
                (identity, Some(snapshot))
            }
            // Without storage each start is told apart by its start time
            // (ms): a restart under a pinned id presents a later
            // incarnation, so its peers check it for regressed writes and
            // refuse it, rather than take it for the old process.
            None => (
                Identity {
                    region: self.name.clone(),
                    replica: self.replica.unwrap_or_else(random_replica_id),
                    incarnation: clock.now_ms().max(1),
                },
                None,
            ),
        };
        let replica = identity.replica;
        let mut hlc = Hlc::with_clock(replica, BoxedClock(clock));
        if let Some(offset) = self.max_offset {
            hlc = hlc.with_max_offset(offset);
        }
        let hlc = Arc::new(hlc);
        let config = self.config;
        let mut core = Core::new(self.name.clone(), replica, config.clone(), Arc::clone(&hlc));
        core.replicating = self.engine.is_some();
        core.incarnation = identity.incarnation;
        // Exchanges are numbered apart per incarnation (by a random start
        // without storage, whose incarnation, a time in ms, does not fit
        // above 32 bits): a late frame of an exchange of the previous
        // process never matches one of ours.
        core.sync_session = if storage.is_some() {
            identity.incarnation << 32
        } else {
            random_session_base()
        };
        let replicating = self.engine.is_some();
        let durable = storage.is_some();
        if let Some(snapshot) = snapshot {
            restore_from_storage(&mut core, snapshot, &mut storage, &identity)?;
        }
        let durable_seq = core.seq;
        let shared = Arc::new(Shared::new(core, durable_seq));
        let (commands, receiver) = mpsc::channel(4);
        let running = start_engine(self.engine, &self.name, durable, &shared, receiver, storage);
        tracing::info!(region = %self.name, %replica, incarnation = identity.incarnation, replicating, durable, "region started");
        Ok(Region {
            inner: Arc::new(Inner {
                name: self.name,
                replica,
                incarnation: identity.incarnation,
                durable,
                ack: self.ack,
                hlc,
                config,
                shared,
                commands: running.then_some(commands),
                closed: AtomicBool::new(false),
                resolvers: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// The identity a region named `name` (its replica id `pinned`, if
/// pinned) starts with from a store holding `stored`: the stored one, one
/// incarnation later, or a new one for a new store.
///
/// # Errors
/// [`StorageError::OtherRegion`] for another region's store;
/// [`RegionError::PinnedReplicaId`] when the pinned id is not the stored
/// one.
fn identity_from_storage(
    name: &str,
    pinned: Option<ReplicaId>,
    stored: Option<&Identity>,
) -> Result<Identity, RegionError> {
    match stored {
        Some(stored) if stored.region != name => Err(StorageError::OtherRegion {
            stored: stored.region.clone(),
            opening: name.to_owned(),
        }
        .into()),
        Some(stored) => {
            if let Some(pinned) = pinned.filter(|&p| p != stored.replica) {
                return Err(RegionError::PinnedReplicaId {
                    stored: stored.replica,
                    pinned,
                });
            }
            Ok(Identity {
                incarnation: stored.incarnation + 1,
                ..stored.clone()
            })
        }
        None => Ok(Identity {
            region: name.to_owned(),
            replica: pinned.unwrap_or_else(random_replica_id),
            incarnation: 1,
        }),
    }
}

/// Restores `core` from the `snapshot` its store loaded, then commits the
/// new `identity`.
fn restore_from_storage(
    core: &mut Core,
    snapshot: Snapshot,
    storage: &mut Option<Box<dyn Storage>>,
    identity: &Identity,
) -> Result<(), RegionError> {
    let keys = snapshot.states.len();
    let unacknowledged = snapshot.outbox.len();
    core.restore(snapshot, Instant::now())?;
    // Only a store that restored is written to: the new incarnation
    // is on disk before any hello names it.
    if let Some(storage) = storage {
        storage.commit(&Commit {
            identity: Some(identity.clone()),
            outbox_keep_from: 0,
            ..Commit::default()
        })?;
    }
    tracing::info!(
        region = %core.name,
        replica = %identity.replica,
        incarnation = identity.incarnation,
        writes = core.seq,
        keys,
        outbox_segments = unacknowledged,
        "region restarted from storage"
    );
    Ok(())
}

/// What starts a region's engine, given its shared state, its command
/// channel and its store (the builder's `engine`).
type EngineStart =
    Box<dyn FnOnce(Arc<Shared>, mpsc::Receiver<Command>, Option<Box<dyn Storage>>) + Send>;

/// Starts the engine of `shared`: the builder's (`engine`, set by its
/// transport), or, for a `durable` region without one, an engine that
/// only commits. True when one runs.
fn start_engine(
    engine: Option<EngineStart>,
    name: &str,
    durable: bool,
    shared: &Arc<Shared>,
    receiver: mpsc::Receiver<Command>,
    storage: Option<Box<dyn Storage>>,
) -> bool {
    let engine = engine.or_else(|| {
        durable.then(|| {
            let name = name.to_owned();
            Box::new(move |shared, commands, storage| {
                let detached = replication::Detached(name);
                replication::spawn(shared, detached, commands, storage);
            }) as Box<dyn FnOnce(_, _, _) + Send>
        })
    });
    let running = engine.is_some();
    if let Some(start) = engine {
        start(Arc::clone(shared), receiver, storage);
    }
    running
}

/// The type of `value`, for comparing resolvers passed as `impl Resolver`.
/// Each peer as [`Region::stats`] reports it.
fn peer_stats(core: &Core, now: Instant) -> Vec<PeerStats> {
    let log_start = core.outbox.start().unwrap_or(core.seq + 1);
    core.peers
        .iter()
        .map(|(name, p)| PeerStats {
            name: name.clone(),
            connected: p.connected,
            replica: p.replica,
            incarnation: p.incarnation,
            refused: p.protocol_refused.clone().or_else(|| p.refused.clone()),
            protocol: p.protocol,
            unacknowledged: core.seq.saturating_sub(p.acked),
            behind: p
                .replica
                .map_or(0, |r| p.its_seq_seen.saturating_sub(core.applied.get(r))),
            since_contact: p.last_contact.map(|t| now.duration_since(t)),
            outbox_len: core
                .seq
                .saturating_sub(p.acked.max(log_start.saturating_sub(1))),
            lag: core.lag_of(p),
            clock_offset_ms: p.clock_offset_ms,
            bytes_sent: p.bytes_sent,
            bytes_received: p.bytes_received,
            sync_bytes_sent: p.sync_bytes_sent,
            sync_bytes_received: p.sync_bytes_received,
        })
        .collect()
}

/// Each declared table as [`Region::stats`] reports it, by name.
fn table_stats(core: &Core) -> Vec<TableStats> {
    let mut tables: Vec<TableStats> = core
        .tables
        .iter()
        .map(|slot| TableStats {
            name: slot.name.to_string(),
            keys: slot.store.len(),
            undecodable_keys: slot.undecodable_keys.load(Ordering::Relaxed),
            conflicts: slot.conflicts.as_ref().map_or(0, |count| (count.total)()),
            strategy: slot.conflicts.as_ref().map(|count| count.strategy),
        })
        .collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    tables
}

fn type_id_of<R: 'static>(_: &R) -> TypeId {
    TypeId::of::<R>()
}

/// 64 random bits (from a ULID's 80 random bits), never 0: with `n` ids
/// drawn, two are equal with odds about `n² / 2⁶⁵` (see [`ReplicaId`]).
fn random_replica_id() -> ReplicaId {
    loop {
        let id = ulid::Ulid::new().random() as u64;
        if id != 0 {
            return ReplicaId::new(id);
        }
    }
}

/// Where a region without storage starts numbering its anti-entropy
/// exchanges: 32 random bits (a draw of its own, not the replica id's)
/// above 32 bits of exchange numbers.
fn random_session_base() -> u64 {
    u64::from(ulid::Ulid::new().random() as u32) << 32
}

struct BoxedClock(Box<dyn PhysicalClock>);

impl PhysicalClock for BoxedClock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

struct Inner {
    name: String,
    replica: ReplicaId,
    incarnation: u64,
    durable: bool,
    ack: AckLevel,
    hlc: Arc<Hlc>,
    config: RegionConfig,
    shared: Arc<Shared>,
    commands: Option<mpsc::Sender<Command>>,
    /// Set (under the state's lock) when `shutdown` begins: writes are
    /// refused from then on.
    closed: AtomicBool,
    /// The resolver and conflict feed of each resolver table, by name:
    /// every handle on a table shares the ones its merges use. Locked
    /// before the state, never while holding it.
    resolvers: Mutex<HashMap<Arc<str>, ResolverSlot>>,
}

/// A resolver table's resolver and feed, kept for its later handles.
struct ResolverSlot {
    resolver_type: TypeId,
    resolver_name: &'static str,
    /// `(Arc<dyn Resolver<T>>, ConflictFeed<T>)` for the table's `T`.
    shared: Box<dyn Any + Send + Sync>,
}

/// What [`RegionError::ResolverMismatch`] says of a CRDT table.
const NO_RESOLVER: &str = "no resolver (a CRDT table)";

/// One region: a replica of every table it declares. Clones share it.
#[derive(Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.inner.name)
            .field("replica", &self.inner.replica)
            .finish()
    }
}

impl Region {
    /// A builder for the region named `name` ("ap-northeast").
    pub fn builder(name: &str) -> RegionBuilder {
        RegionBuilder {
            name: name.to_owned(),
            replica: None,
            storage: None,
            ack: AckLevel::Memory,
            clock: None,
            max_offset: None,
            config: RegionConfig::default(),
            engine: None,
        }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The region's replica id.
    pub fn replica(&self) -> ReplicaId {
        self.inner.replica
    }

    /// How many times this region's replica has started, with storage (1 on
    /// the first start with a new store); without storage, the start time
    /// in ms of its clock, which tells its restarts apart.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// The region's hybrid logical clock.
    pub fn hlc(&self) -> &Hlc {
        &self.inner.hlc
    }

    /// Every write this region has applied first-hand, its own included
    /// (what peers passed on of third regions may be held too, see "What a
    /// peer is believed" above): what session reads wait for.
    pub fn applied(&self) -> VersionVector {
        self.core_any().held().into_owned()
    }

    /// The CRDT table `name` of keys `K` and values `V`, declared on first
    /// use. Every handle on one table shares it.
    ///
    /// # Errors
    /// [`RegionError::TableType`] when `name` holds another value type;
    /// [`RegionError::KeyType`] when it has another key type;
    /// [`RegionError::ResolverMismatch`] when it is a resolver table;
    /// [`RegionError::Engine`] once the engine failed.
    pub fn table<K, V>(&self, name: &str) -> Result<Table<K, V>, RegionError>
    where
        K: Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Crdt + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let resolvers = self.resolvers();
        let merger: Merger<V> =
            Arc::new(|mine: &mut V, theirs: &V, _: &[u8], _| mine.merge(theirs));
        let declared = self.declare::<K, V>(name, merger, None)?;
        if let Some(registered) = resolvers.get(&*declared.name) {
            return Err(RegionError::ResolverMismatch {
                table: declared.name.to_string(),
                registered: registered.resolver_name,
                requested: NO_RESOLVER,
            });
        }
        Ok(Table {
            region: self.clone(),
            name: declared.name,
            slot: declared.slot,
            ack: self.inner.ack,
            undecodable_keys: declared.undecodable_keys,
            _types: PhantomData,
        })
    }

    /// The resolver table `name` of keys `K` and plain values `T`, settled
    /// by `resolver`, declared on first use.
    ///
    /// Every handle on one table shares the first handle's resolver and
    /// conflict feed, the ones its merges use: a later call with a resolver
    /// of the same type returns that table (its `resolver` argument is
    /// dropped, so a resolver type with settings keeps the first call's),
    /// and one with a resolver of another type is refused.
    ///
    /// # Errors
    /// [`RegionError::TableType`] when `name` holds another value type;
    /// [`RegionError::KeyType`] when it has another key type;
    /// [`RegionError::ResolverMismatch`] when it is settled by a resolver
    /// of another type, or is a CRDT table; [`RegionError::Engine`] once
    /// the engine failed.
    pub fn table_with<K, T>(
        &self,
        name: &str,
        resolver: impl Resolver<T> + 'static,
    ) -> Result<ResolverTable<K, T>, RegionError>
    where
        K: Serialize + DeserializeOwned + Send + Sync + 'static,
        T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut resolvers = self.resolvers();
        let requested = std::any::type_name_of_val(&resolver);
        let existing = {
            let core = self.core()?;
            Self::find::<K, VersionSet<T>>(&core, name)?
        };
        if let Some(declared) = existing {
            return self.registered_resolver_table(
                &resolvers,
                declared,
                type_id_of(&resolver),
                requested,
            );
        }
        let resolver_type = type_id_of(&resolver);
        let feed = ConflictFeed::new(name, self.inner.replica);
        let resolver: Arc<dyn Resolver<T>> = Arc::new(resolver);
        let merger = self.audited_merger(&feed, &resolver);
        let counter = {
            let feed = feed.clone();
            ConflictCount {
                strategy: resolver.strategy().as_str(),
                total: Box::new(move || feed.stats().total),
            }
        };
        let declared = self.declare::<K, VersionSet<T>>(name, merger, Some(counter))?;
        resolvers.insert(
            Arc::clone(&declared.name),
            ResolverSlot {
                resolver_type,
                resolver_name: requested,
                shared: Box::new((Arc::clone(&resolver), feed.clone())),
            },
        );
        Ok(self.resolver_table(declared, resolver, feed))
    }

    /// The resolver table `declared`, declared before: with the resolver
    /// and feed registered for it, when its resolver is of the type asked
    /// for (`resolver_type`, named `requested`).
    fn registered_resolver_table<K, T>(
        &self,
        resolvers: &HashMap<Arc<str>, ResolverSlot>,
        declared: Declared,
        resolver_type: TypeId,
        requested: &'static str,
    ) -> Result<ResolverTable<K, T>, RegionError>
    where
        T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let Some(registered) = resolvers.get(&*declared.name) else {
            return Err(RegionError::ResolverMismatch {
                table: declared.name.to_string(),
                registered: NO_RESOLVER,
                requested,
            });
        };
        if registered.resolver_type != resolver_type {
            return Err(RegionError::ResolverMismatch {
                table: declared.name.to_string(),
                registered: registered.resolver_name,
                requested,
            });
        }
        let (resolver, feed) = registered
            .shared
            .downcast_ref::<(Arc<dyn Resolver<T>>, ConflictFeed<T>)>()
            .expect("the table's value type was checked")
            .clone();
        Ok(self.resolver_table(declared, resolver, feed))
    }

    /// How a resolver table merges: the join of version sets, each
    /// conflict settled by `resolver` and reported to `feed`.
    fn audited_merger<T>(
        &self,
        feed: &ConflictFeed<T>,
        resolver: &Arc<dyn Resolver<T>>,
    ) -> Merger<VersionSet<T>>
    where
        T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let (feed, resolver, hlc) = (
            feed.clone(),
            Arc::clone(resolver),
            Arc::clone(&self.inner.hlc),
        );
        Arc::new(
            move |mine: &mut VersionSet<T>, theirs: &VersionSet<T>, key: &[u8], _| {
                mine.merge_audited(theirs, &*resolver, &feed, &KeyBytes(key), hlc.now());
            },
        )
    }

    /// A handle on the resolver table `declared`.
    fn resolver_table<K, T>(
        &self,
        declared: Declared,
        resolver: Arc<dyn Resolver<T>>,
        feed: ConflictFeed<T>,
    ) -> ResolverTable<K, T>
    where
        T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        ResolverTable {
            region: self.clone(),
            name: declared.name,
            slot: declared.slot,
            ack: self.inner.ack,
            resolver,
            feed,
            undecodable_keys: declared.undecodable_keys,
            _keys: PhantomData,
        }
    }

    /// The registry of resolver tables, locked (before the state).
    fn resolvers(&self) -> MutexGuard<'_, HashMap<Arc<str>, ResolverSlot>> {
        // Nothing panics while it is held but the state's lock, whose
        // poisoning is noticed there.
        self.inner
            .resolvers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The table `name`, if declared, checked to hold values `V` under
    /// keys `K`.
    fn find<K: 'static, V: 'static>(
        core: &Core,
        name: &str,
    ) -> Result<Option<Declared>, RegionError> {
        let Some(index) = core.slot_of(name) else {
            return Ok(None);
        };
        let slot = &core.tables[index];
        if slot.store.as_any().downcast_ref::<CrdtStore<V>>().is_none() {
            return Err(RegionError::TableType {
                table: name.to_owned(),
                registered: slot.type_name,
                requested: type_name::<V>(),
            });
        }
        if slot.key_type.0 != TypeId::of::<K>() {
            return Err(RegionError::KeyType {
                table: name.to_owned(),
                registered: slot.key_type.1,
                requested: type_name::<K>(),
            });
        }
        Ok(Some(Declared {
            name: Arc::clone(&slot.name),
            slot: index,
            undecodable_keys: Arc::clone(&slot.undecodable_keys),
        }))
    }

    fn declare<K, V>(
        &self,
        name: &str,
        merger: Merger<V>,
        conflicts: Option<ConflictCount>,
    ) -> Result<Declared, RegionError>
    where
        K: 'static,
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
    {
        let mut core = self.core()?;
        if let Some(found) = Self::find::<K, V>(&core, name)? {
            return Ok(found);
        }
        let table: Arc<str> = name.into();
        let undecodable_keys = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let index = core.declare(TableSlot {
            name: Arc::clone(&table),
            store: Box::new(CrdtStore::<V>::new(merger)),
            type_name: type_name::<V>(),
            key_type: (TypeId::of::<K>(), type_name::<K>()),
            undecodable_keys: Arc::clone(&undecodable_keys),
            conflicts,
        });
        Ok(Declared {
            name: table,
            slot: index,
            undecodable_keys,
        })
    }

    /// Peers, tables and counters, for operators.
    pub fn stats(&self) -> RegionStats {
        if self.inner.shared.core.is_poisoned() {
            self.inner.shared.fail(EngineFailure::Poisoned);
        }
        let engine_failure = self.inner.shared.failure();
        let closed = self.inner.closed.load(Ordering::Acquire);
        let core = self.core_any();
        let peers = peer_stats(&core, Instant::now());
        let tables = table_stats(&core);
        let c = core.counters;
        RegionStats {
            name: core.name.clone(),
            replica: core.replica,
            applied: core.held().into_owned(),
            writes: core.seq,
            outbox_len: core.outbox.len(),
            buffered_batches: core.buffer.len(),
            batches_sent: c.batches_sent,
            batches_applied: c.batches_applied,
            batches_dropped: c.batches_dropped,
            drain_slices: c.drain_slices,
            rejected_frames: c.rejected_frames,
            rejected_by_reason: RejectReason::ALL
                .iter()
                .map(|&r| (r, c.rejected_by_reason[r.index()]))
                .collect(),
            undecodable_values: c.undecodable_values,
            undeclared_values_dropped: c.undeclared_values_dropped,
            outbox_overflows: c.outbox_overflows,
            syncs_completed: c.syncs_completed,
            sync_states_received: c.sync_states_received,
            relayed_batches_sent: c.relayed_batches_sent,
            relayed_batches_received: c.relayed_batches_received,
            relay_overflows: c.relay_overflows,
            relay_log_bytes: core.relay.bytes(),
            refused_handshakes: c.refused_handshakes,
            stale_frames: c.stale_frames,
            untrusted_claims: c.untrusted_claims,
            values_ahead: c.values_ahead,
            transaction_values_set_aside: c.transaction_values_set_aside,
            transfers_held: c.transfers_held,
            rights_requested: c.rights_requested,
            rights_granted: c.rights_granted,
            rights_refused: c.rights_refused,
            homed_forwarded: c.homed_forwarded,
            homed_served: c.homed_served,
            homed_duplicates: c.homed_duplicates,
            homed_refused: c.homed_refused,
            homed_moves: c.homed_moves,
            homed_fenced: c.homed_fenced,
            homed_redirects: c.homed_redirects,
            hlc_remote_rejects: core.hlc.remote_rejects(),
            incarnation: core.incarnation,
            committed: core.durable.as_ref().map(|d| d.seq),
            commits: c.commits,
            committed_writes: c.committed_writes,
            commit_failures: c.commit_failures,
            engine_failure,
            closed,
            peers,
            tables,
        }
    }

    /// Closes the region to writes, flushes every queued write to the peers
    /// (and, with storage, commits it), waits up to `shutdown_wait_max` for
    /// the connected peers to acknowledge them, then stops the engine and
    /// closes the store. Returns what it flushed and what it could not.
    ///
    /// From the moment it is called, writes return [`RegionError::Closed`]
    /// and change nothing; every write accepted before is in the flush.
    /// Reads still work (session reads that need writes from elsewhere
    /// time out: nothing arrives any more). A second call only reports.
    pub async fn shutdown(&self) -> ShutdownReport {
        let started = Instant::now();
        {
            // Under the lock writes check the flag under: a write is either
            // recorded before this (and flushed) or refused.
            let _core = self.core_any();
            self.inner.closed.store(true, Ordering::Release);
        }
        if let Some(commands) = &self.inner.commands
            && self.inner.shared.failure().is_none()
        {
            let (done, wait) = oneshot::channel();
            if commands.send(Command::Shutdown(done)).await.is_ok() && wait.await.is_err() {
                // The engine ended without finishing the shutdown: its
                // supervisor records why.
                let mut failed = self.inner.shared.acks.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while self.inner.shared.failure().is_none() {
                        if failed.changed().await.is_err() {
                            break;
                        }
                    }
                })
                .await;
            }
        }
        let report = self.report(started.elapsed());
        if report.is_complete() {
            tracing::info!(region = %self.inner.name, writes = report.writes, "region shut down");
        } else {
            tracing::warn!(region = %self.inner.name, ?report, "region shut down with writes not flushed");
        }
        report
    }

    /// Makes the engine task panic (outside the state's lock), to test
    /// supervision: the failure then shows in [`Region::stats`] and on the
    /// next read or write. Feature `testing` only.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub async fn inject_engine_panic(&self) {
        if let Some(commands) = &self.inner.commands {
            let _ = commands.send(Command::Panic).await;
        }
    }

    /// What a shutdown leaves behind, now.
    fn report(&self, waited: Duration) -> ShutdownReport {
        let engine_failure = self.inner.shared.failure();
        let core = self.core_any();
        let peers = core
            .peers
            .iter()
            .map(|(name, p)| PeerFlush {
                name: name.clone(),
                connected: p.connected,
                acknowledged: p.acked.min(core.seq),
                unacknowledged: core.seq.saturating_sub(p.acked),
                repair_pending: p.needs_sync,
            })
            .collect();
        ShutdownReport {
            name: core.name.clone(),
            writes: core.seq,
            committed: core.durable.as_ref().map(|d| d.seq),
            peers,
            engine_failure,
            waited,
        }
    }

    /// The region's state, locked, unless its engine failed (or a panic
    /// left the state half-changed, which counts as a failure from then on).
    fn core(&self) -> Result<MutexGuard<'_, Core>, RegionError> {
        let shared = &self.inner.shared;
        if let Some(failure) = shared.failure() {
            return Err(RegionError::Engine(failure));
        }
        shared.core.lock().map_err(|_| {
            shared.fail(EngineFailure::Poisoned);
            RegionError::Engine(shared.failure().unwrap_or(EngineFailure::Poisoned))
        })
    }

    /// The region's state, locked, for what only reads it (stats, shutdown
    /// reports): also after a failure.
    fn core_any(&self) -> MutexGuard<'_, Core> {
        self.inner.shared.lock()
    }

    /// Writes through `mutate` to the table in `slot`, logs the write's
    /// delta for the peers and returns its token and sequence number;
    /// `None` when `mutate` applied no mutator.
    ///
    /// `mutate` works on a copy; the stored value is joined with the
    /// write's delta only once that delta is encoded: a write that fails
    /// (an encoding error, a panic in `mutate`) changes nothing, and what
    /// changes here is exactly what is shipped.
    fn write<V, K>(
        &self,
        slot: usize,
        key: &K,
        mutate: impl FnOnce(&mut Mutation<V>, &WriteCtx<'_>),
    ) -> Result<Option<(SessionToken, u64)>, RegionError>
    where
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
        K: Serialize + ?Sized,
    {
        let shared = &self.inner.shared;
        // The key is encoded into a per-thread buffer: no allocation unless
        // the key is new to the table.
        wire::with_bare(key, |key| {
            let ctx = WriteCtx {
                hlc: &self.inner.hlc,
                stamp: std::cell::Cell::new(None),
            };
            let mut core = self.core()?;
            // Checked under the lock that `shutdown` closes the region
            // under: every write accepted is in the shutdown's flush.
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(RegionError::Closed);
            }
            let stored = core
                .store::<CrdtStore<V>>(slot)
                .expect("declared by the handle")
                .get(key);
            let mut mutation = Mutation {
                held: stored.is_some(),
                working: stored.cloned().unwrap_or_default(),
                delta: None,
            };
            // A panic in the caller's closure unwinds after the lock is
            // released: it touched only the copy, so the state is sound and
            // the lock is not poisoned (a poisoned lock means the engine's
            // own state may be half-changed).
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                mutate(&mut mutation, &ctx)
            })) {
                drop(core);
                std::panic::resume_unwind(panic);
            }
            let Some(delta) = mutation.delta else {
                return Ok(None);
            };
            let mut scratch = std::mem::take(&mut core.delta_scratch);
            scratch.clear();
            let encoded = wire::encode_bare_into(&delta, &mut scratch);
            if let Err(error) = encoded {
                core.delta_scratch = scratch;
                return Err(RegionError::Encode(error));
            }
            core.store_mut::<CrdtStore<V>>(slot)
                .expect("declared by the handle")
                .merge_local(key, &delta);
            let token = core.record_write(slot, key, &scratch);
            let seq = core.seq;
            core.delta_scratch = scratch;
            // Batches leave on the engine's tick (`batch_delay`). Waking the
            // engine from here would queue it on this task's worker thread
            // (tokio's LIFO slot), where it competes with the writer instead
            // of running on the idle core: only a large backlog wakes it.
            let backlog = (self.inner.config.batch_len_max as u64).saturating_mul(16);
            let wake = core.replicating && core.seq - core.taken_seq >= backlog;
            drop(core);
            if wake {
                shared.wake.notify_one();
            }
            Ok(Some((token, seq)))
        })?
    }

    /// The value under `key`; with a session, also records the read in it
    /// (what this region had applied when it read). Plain reads copy no
    /// vector.
    fn read<V, K>(
        &self,
        slot: usize,
        key: &K,
        session: Option<&mut Session>,
    ) -> Result<Option<V>, RegionError>
    where
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
        K: Serialize + ?Sized,
    {
        wire::with_bare(key, |key| {
            let core = self.core()?;
            let value: Option<V> = core
                .store::<CrdtStore<V>>(slot)
                .and_then(|s| s.get(key))
                .cloned();
            if let Some(session) = session {
                session.record_read(&SessionToken::from_vector(core.held().into_owned()));
            }
            Ok(value)
        })?
    }

    /// Writes as [`write`](Region::write), then waits as `ack` asks.
    async fn write_acked<V, K>(
        &self,
        slot: usize,
        key: &K,
        ack: AckLevel,
        mutate: impl FnOnce(&mut Mutation<V>, &WriteCtx<'_>),
    ) -> Result<SessionToken, RegionError>
    where
        V: Crdt + Serialize + DeserializeOwned + Send + 'static,
        K: Serialize + ?Sized,
    {
        if ack == AckLevel::Local && !self.inner.durable {
            return Err(RegionError::NoStorage);
        }
        let Some((token, seq)) = self.write(slot, key, mutate)? else {
            return Ok(SessionToken::new());
        };
        match ack {
            AckLevel::Memory => {}
            AckLevel::Local => self.wait_committed(seq).await?,
            AckLevel::Replicated(n) => self.wait_replicated(seq, n).await?,
        }
        Ok(token)
    }

    /// Waits until `n` peers have acknowledged the local write `seq`, up to
    /// `replication_wait_max`.
    async fn wait_replicated(&self, seq: u64, n: usize) -> Result<(), RegionError> {
        let started = Instant::now();
        let deadline = started + self.inner.config.replication_wait_max;
        let mut acks = self.inner.shared.acks.subscribe();
        loop {
            // Marked seen before counting: a change after the count wakes us.
            acks.borrow_and_update();
            let replicated = {
                let core = self.core()?;
                // A peer marked for repair counts only once repaired: its
                // cursor was moved past writes it may not have.
                core.peers
                    .values()
                    .filter(|p| p.acked >= seq && !p.needs_sync)
                    .count()
            };
            if replicated >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, acks.changed())
                .await
                .is_err()
            {
                return Err(RegionError::ReplicationTimeout {
                    replicated,
                    wanted: n,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Waits until the local write `seq` is committed, up to
    /// `commit_wait_max`.
    async fn wait_committed(&self, seq: u64) -> Result<(), RegionError> {
        {
            let mut core = self.core()?;
            if core.durable.as_ref().is_some_and(|d| d.seq < seq) {
                core.commit_requested = true;
                self.inner
                    .shared
                    .commit_requests
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.inner.shared.wake.notify_one();
        let started = Instant::now();
        let deadline = started + self.inner.config.commit_wait_max;
        let mut marks = self.inner.shared.durable.subscribe();
        loop {
            {
                let mark = marks.borrow_and_update();
                if mark.seq >= seq {
                    return Ok(());
                }
                if let Some((covers, error)) = &mark.failed
                    && *covers >= seq
                {
                    return Err(RegionError::Storage(error.clone()));
                }
            }
            if let Some(failure) = self.inner.shared.failure() {
                return Err(RegionError::Engine(failure));
            }
            if self
                .inner
                .commands
                .as_ref()
                .is_none_or(mpsc::Sender::is_closed)
            {
                // Shut down without committing it (that commit failed).
                return Err(RegionError::CommitTimeout {
                    waited: started.elapsed(),
                });
            }
            match tokio::time::timeout_at(deadline, marks.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(RegionError::CommitTimeout {
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }

    /// Removes the region `name` from this region's archipelago for good:
    /// an operator's call once that region is decommissioned (or lost) and
    /// will not come back under that name. Call it on every region. Returns
    /// the replica ids `name` had (its current one and the earlier ones
    /// this region saw); a region retired here before it was ever met is
    /// remembered by name only.
    ///
    /// What changes, here (and, with storage, across restarts):
    /// - **Frames and handshakes** from `name` are ignored and refused (a
    ///   `warn` event, counted in [`RegionStats::refused_handshakes`]), and
    ///   its replica ids are refused from any peer
    ///   ([`HandshakeRefusal::IdOfAnotherPeer`] naming it).
    /// - **The outbox** no longer waits for its acknowledgements: writes
    ///   every remaining peer has are deleted.
    /// - **Session tokens** that name writes of its replica ids this region
    ///   has not applied no longer wait for them: a session read or write
    ///   is served once everything else it needs is here. Those writes may
    ///   never come (they were lost with the region), or may still arrive
    ///   later from another region's anti-entropy.
    /// - **Version vectors** keep its entries. Dropping an entry is sound
    ///   only once every region agrees on the last write of that replica it
    ///   holds (a stable cut); without that agreement a region that drops it
    ///   would take a late copy of those writes for new ones and apply them
    ///   out of causal order. That coordination round does not exist yet,
    ///   so vectors and tokens carry one entry per retired replica id.
    ///
    /// # Errors
    /// [`RegionError::RetireSelf`] for this region's own name;
    /// [`RegionError::Engine`] once the engine failed.
    pub fn retire_peer(&self, name: &str) -> Result<Vec<ReplicaId>, RegionError> {
        if name == self.inner.name {
            return Err(RegionError::RetireSelf);
        }
        let ids = self.core()?.retire_peer(name);
        // Session waits re-check what they still need.
        self.inner
            .shared
            .applied
            .send_modify(|g| *g = g.wrapping_add(1));
        Ok(ids)
    }

    /// Waits until this region has applied `token`, up to `session_wait_max`.
    async fn wait_for(&self, token: &SessionToken) -> Result<(), RegionError> {
        let started = Instant::now();
        let deadline = started + self.inner.config.session_wait_max;
        let mut changes = self.inner.shared.applied.subscribe();
        loop {
            let missing: Vec<Missing> = {
                let core = self.core()?;
                let held = core.held();
                if token.covered_by(&held) {
                    #[cfg(feature = "metrics")]
                    metrics::session_wait(&self.inner.name, started.elapsed());
                    return Ok(());
                }
                // Writes of retired regions are not waited for.
                let retired: Vec<ReplicaId> = core.retired_ids().collect();
                let missing: Vec<Missing> = token
                    .missing(&held)
                    .filter(|m| !retired.contains(&m.replica))
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                missing
            };
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(RegionError::SessionTimeout {
                        region: self.inner.name.clone(),
                        waited: started.elapsed(),
                        missing,
                    });
                }
            }
        }
    }
}

/// A key as the audit feed shows it: the text of a string key, else the
/// hex of its encoding.
struct KeyBytes<'a>(&'a [u8]);

impl Debug for KeyBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Ok(text) = wire::decode_bare::<String>(self.0) {
            return write!(f, "{text:?}");
        }
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
