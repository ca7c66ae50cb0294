use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};

use serde::{Deserialize, Serialize};

use super::Versioned;

/// Which strategy settled a conflict, for the audit feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// [`LastWriteWins`].
    LastWriteWins,
    /// [`FirstWriteWins`].
    FirstWriteWins,
    /// [`Merge`].
    Merge,
    /// [`Siblings`].
    Siblings,
    /// A resolver of the application's, by its name.
    Custom(&'static str),
}

impl Strategy {
    /// Its stable name: the `strategy` label of
    /// `archipelago_conflicts_total` and what `Display` prints
    /// (`"last-write-wins"`, `"first-write-wins"`, `"merge"`, `"siblings"`,
    /// or a custom resolver's own name).
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::LastWriteWins => "last-write-wins",
            Strategy::FirstWriteWins => "first-write-wins",
            Strategy::Merge => "merge",
            Strategy::Siblings => "siblings",
            Strategy::Custom(name) => name,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settles two concurrent versions of a plain value.
///
/// Called only for versions that are concurrent: when one has seen the
/// other, it wins without asking. The contract, checked by
/// `testing::check_resolver_laws` (feature `testing`):
///
/// - **deterministic**: the result depends on the two versions only, never
///   on which replica runs it or which version is local;
/// - **commutative**: `resolve(a, b) == resolve(b, a)`, value, version and
///   stamp alike;
/// - **idempotent**: `resolve(a, a) == a`;
/// - **associative** over versions taken in stamp order, which is the order
///   [`VersionSet`](super::VersionSet) folds them in;
/// - the result's version is the join of both versions.
///
/// Built in: [`LastWriteWins`], [`FirstWriteWins`], [`Merge`] (with a deep
/// merge for map-like values), [`Siblings`].
///
/// In a region, resolvers run while the region's state is locked: they
/// must be quick and must not call back into the region.
pub trait Resolver<T>: Send + Sync {
    /// The name the audit feed records.
    fn strategy(&self) -> Strategy;

    /// The resolution of two concurrent versions.
    fn resolve(&self, a: &Versioned<T>, b: &Versioned<T>) -> Versioned<T>;

    /// True when concurrent versions are to be kept for the application
    /// ([`Siblings`]) rather than resolved.
    fn keeps_siblings(&self) -> bool {
        false
    }
}

fn joined<T>(
    value: T,
    a: &Versioned<T>,
    b: &Versioned<T>,
    stamp: crate::clock::Stamp,
) -> Versioned<T> {
    let mut version = a.version.clone();
    version.merge(&b.version);
    Versioned::new(value, version, stamp)
}

/// The version with the highest stamp (hybrid-logical-clock time, then
/// replica) wins. Right for most plain values: a profile photo, a setting.
/// The losing writes are gone, but each one is in the audit feed.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastWriteWins;

impl<T: Clone> Resolver<T> for LastWriteWins {
    fn strategy(&self) -> Strategy {
        Strategy::LastWriteWins
    }

    fn resolve(&self, a: &Versioned<T>, b: &Versioned<T>) -> Versioned<T> {
        let winner = if a.stamp >= b.stamp { a } else { b };
        joined(winner.value.clone(), a, b, winner.stamp)
    }
}

/// The version with the lowest stamp wins: the first claim on a username, a
/// seat, a coupon. Later concurrent claims lose (and are audited).
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstWriteWins;

impl<T: Clone> Resolver<T> for FirstWriteWins {
    fn strategy(&self) -> Strategy {
        Strategy::FirstWriteWins
    }

    fn resolve(&self, a: &Versioned<T>, b: &Versioned<T>) -> Versioned<T> {
        let winner = if a.stamp <= b.stamp { a } else { b };
        joined(winner.value.clone(), a, b, winner.stamp)
    }
}

/// Keep every concurrent version; the application reads them all, settles
/// them its own way, and writes the result back. MV-register semantics, for
/// values only a person or domain logic can reconcile.
#[derive(Clone, Copy, Debug, Default)]
pub struct Siblings;

impl<T: Clone> Resolver<T> for Siblings {
    fn strategy(&self) -> Strategy {
        Strategy::Siblings
    }

    /// Not called for this strategy ([`keeps_siblings`](Resolver::keeps_siblings)
    /// is true); resolves like [`LastWriteWins`] if it is.
    fn resolve(&self, a: &Versioned<T>, b: &Versioned<T>) -> Versioned<T> {
        LastWriteWins.resolve(a, b)
    }

    fn keeps_siblings(&self) -> bool {
        true
    }
}

/// Merges concurrent versions with a function of the two values, called
/// as `f(newer, older)` by stamp, so the function itself need not be
/// symmetric. The result carries the newer stamp and the joined version.
///
/// [`Merge::deep`] merges map-like values ([`DeepMerge`]): keys from both
/// sides are kept, and where both hold a different leaf the newer version's
/// leaf wins. Never "the remote side wins": which side is remote differs
/// from replica to replica, and replicas that decide differently diverge.
///
/// ```
/// use archipelago::clock::{ReplicaId, Stamp, Timestamp, VersionVector};
/// use archipelago::resolve::{Merge, Resolver, Versioned};
/// use serde_json::json;
///
/// let v = |ms, r, value| {
///     let replica = ReplicaId::new(r);
///     let version: VersionVector = [(replica, 1)].into_iter().collect();
///     Versioned::new(value, version, Stamp::new(Timestamp::new(ms, 0), replica))
/// };
/// let tokyo = v(1_000, 1, json!({"name": "Aiko", "prefs": {"lang": "ja"}}));
/// let frankfurt = v(1_005, 2, json!({"name": "Aiko T.", "prefs": {"theme": "dark"}}));
/// let merged = Merge::deep().resolve(&tokyo, &frankfurt);
/// assert_eq!(merged.value, json!({"name": "Aiko T.", "prefs": {"lang": "ja", "theme": "dark"}}));
/// ```
pub struct Merge<F> {
    merge: F,
}

impl<F> Merge<F> {
    /// A resolver merging with `f(newer, older)`.
    pub fn new<T>(f: F) -> Self
    where
        F: Fn(&T, &T) -> T + Send + Sync,
    {
        Merge { merge: f }
    }
}

impl<T: DeepMerge> Merge<fn(&T, &T) -> T> {
    /// The deep merge of map-like values: union of keys, newer leaf wins.
    pub fn deep() -> Self {
        Merge {
            merge: T::deep_merge,
        }
    }
}

impl<F> fmt::Debug for Merge<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Merge")
    }
}

impl<T: Clone, F> Resolver<T> for Merge<F>
where
    F: Fn(&T, &T) -> T + Send + Sync,
{
    fn strategy(&self) -> Strategy {
        Strategy::Merge
    }

    fn resolve(&self, a: &Versioned<T>, b: &Versioned<T>) -> Versioned<T> {
        let (newer, older) = if a.stamp >= b.stamp { (a, b) } else { (b, a) };
        if newer.stamp == older.stamp && newer.version == older.version {
            // The same version twice: nothing to merge (idempotence).
            return newer.clone();
        }
        joined((self.merge)(&newer.value, &older.value), a, b, newer.stamp)
    }
}

/// Values that merge structurally: maps merge key by key, anything else is
/// a leaf, where the newer side wins.
///
/// Implemented for `serde_json::Value`, `BTreeMap` and `HashMap` of
/// mergeable values, `Option`, and the usual leaf types. Two rules make the
/// merge associative, so the result never depends on how versions were
/// grouped on their way in:
///
/// - where one side holds an object (or map) and the other a leaf, the
///   object wins whatever its age, and where one side holds `Some` and the
///   other `None`, `Some` wins: a concurrent edit inside a structure is
///   never erased by a concurrent overwrite of the whole structure;
/// - a deep merge cannot tell "deleted on one side" from "never there": a
///   key one version removed while the other, concurrently, did not is
///   kept. A version that saw the deletion replaces older ones outright.
pub trait DeepMerge: Sized {
    /// `newer` merged over `older`.
    fn deep_merge(newer: &Self, older: &Self) -> Self;
}

/// Key-wise merge shared by every map type: all of `older`, then each key
/// of `newer` merged over its older value (or taken as it is).
macro_rules! merge_keys {
    ($newer:expr, $older:expr, $merge:path) => {{
        let mut out = $older.clone();
        for (key, value) in $newer {
            let merged = match $older.get(key) {
                Some(old) => $merge(value, old),
                None => value.clone(),
            };
            out.insert(key.clone(), merged);
        }
        out
    }};
}

impl DeepMerge for serde_json::Value {
    fn deep_merge(newer: &Self, older: &Self) -> Self {
        match (newer, older) {
            (serde_json::Value::Object(n), serde_json::Value::Object(o)) => {
                serde_json::Value::Object(merge_keys!(n, o, DeepMerge::deep_merge))
            }
            (serde_json::Value::Object(_), _) => newer.clone(),
            (_, serde_json::Value::Object(_)) => older.clone(),
            _ => newer.clone(),
        }
    }
}

impl<K: Ord + Clone, V: DeepMerge + Clone> DeepMerge for BTreeMap<K, V> {
    fn deep_merge(newer: &Self, older: &Self) -> Self {
        merge_keys!(newer, older, V::deep_merge)
    }
}

impl<K, V, S> DeepMerge for HashMap<K, V, S>
where
    K: Hash + Eq + Clone,
    V: DeepMerge + Clone,
    S: BuildHasher + Clone,
{
    fn deep_merge(newer: &Self, older: &Self) -> Self {
        merge_keys!(newer, older, V::deep_merge)
    }
}

macro_rules! leaf {
    ($($t:ty),* $(,)?) => {$(
        impl DeepMerge for $t {
            fn deep_merge(newer: &Self, _older: &Self) -> Self {
                newer.clone()
            }
        }
    )*};
}

leaf!(
    bool, char, u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, String,
);

impl<T: Clone> DeepMerge for Vec<T> {
    /// A list is a leaf: concurrent edits to one list keep the newer list.
    fn deep_merge(newer: &Self, _older: &Self) -> Self {
        newer.clone()
    }
}

impl<T: DeepMerge + Clone> DeepMerge for Option<T> {
    /// `Some` on both sides merges; `Some` beats `None` on either side.
    fn deep_merge(newer: &Self, older: &Self) -> Self {
        match (newer, older) {
            (Some(n), Some(o)) => Some(T::deep_merge(n, o)),
            (Some(_), None) | (None, None) => newer.clone(),
            (None, Some(_)) => older.clone(),
        }
    }
}
