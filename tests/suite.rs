//! Every integration test of the crate, in one test binary.
//!
//! Each file of `tests/` is a module here, named for the property it checks
//! (`convergence`, `session_guarantees`, ...), so `cargo test --test suite
//! convergence::` runs one of them. One binary, not one per file: each test
//! binary links the whole dependency tree and compiles its own copy of the
//! engine's generic code, and with one per file that cost dominated CI.
//!
//! Process-wide state is shared by every module: the global allocator below
//! counts allocations per thread (`fuzz`, `wire_hostile` measure decodes
//! with it; per-thread counts keep the other tests out of their figures).
//! `tests/metrics.rs` installs a global metrics recorder, so it stays a
//! binary of its own.

use archipelago::testing::fuzz::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

mod common;

mod anti_entropy;
mod batch_bytes;
mod broken_link;
mod causality;
mod change_streams;
mod channel_network;
mod clock_laws;
mod clock_skew;
mod commerce_types;
mod conflict_audit;
mod convergence;
mod crash;
mod crdt_laws;
mod durability_regressions;
mod fuzz;
mod golden_fixtures;
mod hlc;
mod homed_epochs;
mod homed_history;
mod homed_tables;
mod id_uniqueness;
mod lag_timeline;
mod peer_stats;
mod range_sync;
mod relay;
mod replica_ids;
mod resolver_laws;
mod restart;
mod retire;
mod review_regressions;
mod rights_movement;
mod rolling_upgrade;
mod schema_evolution;
mod session_guarantees;
mod session_tokens;
mod slow_peer;
mod supervision;
mod table_handles;
#[cfg(feature = "tcp")]
mod tcp_transport;
#[cfg(feature = "tls")]
mod tls;
mod transactions;
mod trust;
mod typed_tables;
mod undeclared_tables;
mod update_mutations;
mod wire_hostile;
