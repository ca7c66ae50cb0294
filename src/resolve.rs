//! Conflict resolution for plain values, with an audit feed.
//!
//! Not every value is a CRDT: a user profile or an order document is a
//! struct, and two regions can write it at the same time. This module keeps
//! such values as [`Versioned`] writes (value, causal version, HLC stamp)
//! in a [`VersionSet`], and settles concurrent writes with a [`Resolver`].
//!
//! **Causality first.** A write that has seen another replaces it; no
//! resolver is asked. Only writes that are truly concurrent (neither saw
//! the other) are resolved, and every replica resolves the same set of
//! versions in the same order, so every replica reads the same value
//! without talking to the others.
//!
//! **Every resolution is audited.** [`VersionSet::merge_audited`] reports
//! each conflict to the table's [`ConflictFeed`]: the winner, the losers
//! with their versions, the strategy, when and where. Subscribers read the
//! feed from bounded queues that never block writes; counters give the
//! total and the recent rate per table.
//!
//! **Values may evolve between builds.** Each value travels as a byte
//! string of its own, so a struct can gain a trailing `#[serde(default)]`
//! field while old regions still run: see *Schema evolution* on
//! [`VersionSet`] for what changes are safe.
//!
//! ## Which strategy
//!
//! | data | use | why |
//! | --- | --- | --- |
//! | balances | not a resolver: home-region ownership or consensus | a lost or merged debit is money |
//! | inventory | a CRDT counter ([`PnCounter`](crate::crdt::PnCounter)) | concurrent sales add up instead of overwriting |
//! | sessions, carts | [`LastWriteWins`] or an [`OrSet`](crate::crdt::OrSet) | the latest state is what the user expects |
//! | profiles, settings | [`Merge::deep`] | edits to different fields both survive; same field: newer wins |
//! | usernames, seats, coupons | [`FirstWriteWins`] | the first claim keeps it; later ones are told (audit) |
//! | feeds, comments | a CRDT set plus causal delivery | no entry is lost; replies follow posts |
//! | analytics | a CRDT counter ([`GCounter`](crate::crdt::GCounter)) | counts add up |
//! | documents | [`Siblings`] | only the author can reconcile two drafts |
//!
//! Your own: implement [`Resolver`] and check it with
//! `testing::check_resolver_laws` (feature `testing`), which shows a
//! resolver that lets "the remote side" win, or stamps its result with the
//! local replica, diverging.
//!
//! ```
//! use archipelago::clock::{Hlc, ManualClock, ReplicaId};
//! use archipelago::crdt::Crdt;
//! use archipelago::resolve::{Merge, Resolution, VersionSet};
//! use serde_json::json;
//!
//! let wall = ManualClock::new(1_000);
//! let tokyo = Hlc::with_clock(ReplicaId::new(1), wall.clone());
//! let frankfurt = Hlc::with_clock(ReplicaId::new(2), wall.clone());
//!
//! let mut profile_tokyo = VersionSet::new();
//! let created = profile_tokyo.write(tokyo.stamp(), json!({"name": "Aiko"}));
//! let mut profile_frankfurt = VersionSet::new();
//! profile_frankfurt.merge(&created);
//!
//! // Concurrent edits of different fields.
//! let a = profile_tokyo.write(tokyo.stamp(), json!({"name": "Aiko", "lang": "ja"}));
//! let b = profile_frankfurt.write(frankfurt.stamp(), json!({"name": "Aiko", "city": "Berlin"}));
//! profile_tokyo.merge(&b);
//! profile_frankfurt.merge(&a);
//!
//! let resolver = Merge::deep();
//! let read = profile_tokyo.resolve(&resolver).unwrap();
//! assert_eq!(read, profile_frankfurt.resolve(&resolver).unwrap());
//! assert_eq!(read.value(), Some(&json!({"name": "Aiko", "lang": "ja", "city": "Berlin"})));
//! ```

mod audit;
mod registry;
mod strategy;
mod versioned;

pub use audit::{
    ConflictFeed, ConflictRecord, ConflictStats, ConflictSubscription, RATE_WINDOW_SECS,
    SUBSCRIPTION_CAPACITY_MAX,
};
pub use registry::{RegistryError, ResolverRegistry};
pub use strategy::{DeepMerge, FirstWriteWins, LastWriteWins, Merge, Resolver, Siblings, Strategy};
pub use versioned::{DELETED_TAG, DELIMITED_TAG, Resolution, VERSIONS_MAX, VersionSet, Versioned};
