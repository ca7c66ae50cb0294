use std::cmp::Ordering;
use std::fmt::Debug;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{ConflictFeed, ConflictRecord, Resolver};
use crate::clock::{ReplicaId, Stamp, Timestamp, VersionVector};
use crate::crdt::Crdt;
use crate::wire::{InvalidRule, Unknown, ValueBytes, ValueOf, invalid};

/// A plain value with what resolving it needs: its causal version, the
/// hybrid-logical-clock stamp of its write, and (in the stamp) the replica
/// it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// The value written (or, after resolution, the resolved value).
    pub value: T,
    /// Every write this one had seen: a write dominates the versions it
    /// replaced and is concurrent with the ones it did not know about.
    pub version: VersionVector,
    /// When, by which replica.
    pub stamp: Stamp,
    /// Bytes of the value this build's `T` did not read: fields a newer
    /// build's `T` wrote after the ones this build knows. Kept and written
    /// out again after the value's own, so they reach the regions that
    /// read them; never in the human-readable form.
    #[serde(skip)]
    unknown: Unknown,
}

impl<T> Versioned<T> {
    /// A version from its parts.
    pub fn new(value: T, version: VersionVector, stamp: Stamp) -> Self {
        Versioned {
            value,
            version,
            stamp,
            unknown: Unknown::default(),
        }
    }

    /// The bytes of the value this build's `T` did not read (empty unless
    /// a newer build's `T`, with more trailing fields, wrote it): they are
    /// kept and re-sent after the value's own bytes, so a field added in a
    /// newer build survives passing through an older region. See
    /// [`VersionSet`]'s section on schema evolution.
    pub fn unknown_bytes(&self) -> &[u8] {
        self.unknown.bytes()
    }

    /// The replica whose write this is.
    pub fn origin(&self) -> ReplicaId {
        self.stamp.replica
    }

    /// Causal order of the two versions: `None` when concurrent.
    pub fn causal_cmp(&self, other: &Self) -> Option<Ordering> {
        self.version.partial_cmp(&other.version)
    }

    /// True when neither version had seen the other.
    pub fn concurrent_with(&self, other: &Self) -> bool {
        self.version.concurrent_with(&other.version)
    }
}

/// What the application reads from a [`VersionSet`] under a resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution<T> {
    /// One value: the only version, or the resolver's verdict on several.
    Value(Versioned<T>),
    /// The concurrent versions, kept for the application to settle
    /// ([`Siblings`](super::Siblings) strategy). Write the settled value
    /// back with [`VersionSet::write`]: it replaces every sibling it saw.
    Siblings(Vec<Versioned<T>>),
}

impl<T> Resolution<T> {
    /// The single value, when there is one.
    pub fn value(&self) -> Option<&T> {
        match self {
            Resolution::Value(v) => Some(&v.value),
            Resolution::Siblings(_) => None,
        }
    }

    /// Every value the read returns: one, or each sibling.
    pub fn values(&self) -> Vec<&T> {
        match self {
            Resolution::Value(v) => vec![&v.value],
            Resolution::Siblings(s) => s.iter().map(|v| &v.value).collect(),
        }
    }
}

/// The state of one plain value under a resolver: every version no other
/// version has seen (an antichain of versions), in stamp order.
///
/// Causality comes first: when a version arrives that has seen another, it
/// replaces it, and no resolver is involved. Only versions that are truly
/// concurrent are kept side by side, and a [`Resolver`] turns them into what
/// the application reads. Because the resolver sees the same set of
/// versions in the same (stamp) order on every replica, whatever order they
/// arrived in, every replica reads the same result.
///
/// `VersionSet` is itself a CRDT: its merge keeps the versions not
/// dominated by any other, a join. A write replaces every version the
/// writing replica has seen, so a conflict lasts until someone writes having
/// seen it; at most one version per replica can be concurrent, so the set
/// never holds more versions than there are replicas.
///
/// **Deletes** are observed-removes: [`remove`](VersionSet::remove) drops
/// every version this replica has seen and keeps their joined vector as
/// the set's *delete context* (its tombstone). A merge drops every version
/// the context covers, wherever it comes from, so a copy of a deleted
/// version (a late batch, an anti-entropy transfer from a region that had
/// not seen the delete) never comes back; a version the delete had not
/// seen (a concurrent write elsewhere) is not covered and survives
/// (add-wins). A later write has seen the context (it is part of
/// [`version`](VersionSet::version)), so it is never covered. The context
/// is one vector, at most an entry per replica, and stays with the key.
///
/// # Schema evolution
/// Regions on different builds may hold one table with different structs
/// during a deploy. Since protocol 5 (storage format 4) each version's
/// value is **delimited**: a byte string of its own inside the set, read
/// tolerantly. So when a struct changes between builds:
///
/// | change | safe? | what happens |
/// | --- | --- | --- |
/// | add a trailing field marked `#[serde(default)]` | yes | an older value reads with the default; a newer value read by an old build keeps the bytes it does not know ([`Versioned::unknown_bytes`]) and ships them on, so the field reaches the next new build |
/// | add a trailing field without `#[serde(default)]` | no | an older value is undecodable at the new build (counted in `undecodable_values`) |
/// | remove or reorder fields, change a field's type | no | bincode reads fields by position: values decode as the wrong fields or not at all |
/// | add an enum variant in the middle, reorder variants | no | variants travel by index; add new variants at the end, and only once every region reads them |
///
/// A value an old build *writes* has only the old fields: the new field of
/// that key reads as its default afterwards (the write replaced the
/// version that carried it). Keep the new field optional until every
/// region runs the new build. The tolerance covers the value's own
/// trailing fields and those of a struct in its last field.
///
/// States of the older layout (protocol 4, storage format 3 and older:
/// value, vector and stamp one after the other) still decode, told apart
/// by their first bytes; they hold no delimiter, so only the struct they
/// were written with reads them. Upgrade the library first, then change
/// the struct once the values were rewritten (each is at its next write).
/// Peers on protocol 4 are sent the older layout; the delimited one costs
/// 3 bytes more per update (a 3-byte header where the count was 1 byte, a
/// 1-byte length per value under 251 bytes: `cargo test --test suite
/// schema_evolution::a_delimited -- --nocapture`).
///
/// ```
/// use archipelago::clock::{Hlc, ManualClock, ReplicaId};
/// use archipelago::resolve::VersionSet;
/// use archipelago::wire;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V1 { visits: u32 }
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V2 { visits: u32, #[serde(default)] nickname: Option<String> }
///
/// let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
/// let mut old = VersionSet::new();
/// old.write(hlc.stamp(), V1 { visits: 3 });
/// let read: VersionSet<V2> = wire::decode(&wire::encode(&old)?)?;
/// assert_eq!(read.versions()[0].value, V2 { visits: 3, nickname: None });
///
/// let mut new = VersionSet::new();
/// new.write(hlc.stamp(), V2 { visits: 4, nickname: Some("Aiko".into()) });
/// let bytes = wire::encode(&new)?;
/// let at_old: VersionSet<V1> = wire::decode(&bytes)?;
/// assert_eq!(at_old.versions()[0].value, V1 { visits: 4 });
/// assert_eq!(wire::encode(&at_old)?, bytes, "the unknown field travels on");
/// # Ok::<(), wire::WireError>(())
/// ```
///
/// ```
/// use archipelago::clock::{Hlc, ManualClock, ReplicaId};
/// use archipelago::crdt::Crdt;
/// use archipelago::resolve::{LastWriteWins, VersionSet};
///
/// let wall = ManualClock::new(1_000);
/// let tokyo = Hlc::with_clock(ReplicaId::new(1), wall.clone());
/// let frankfurt = Hlc::with_clock(ReplicaId::new(2), wall.clone());
///
/// let mut a = VersionSet::new();
/// let mut b = VersionSet::new();
/// let da = a.write(tokyo.stamp(), "Aiko");
/// wall.advance(3);
/// let db = b.write(frankfurt.stamp(), "Aiko Tanaka");
/// a.merge(&db);
/// b.merge(&da);
/// assert_eq!(a, b);
/// assert!(a.is_conflicted());
/// assert_eq!(a.resolve(&LastWriteWins).unwrap().value(), Some(&"Aiko Tanaka"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionSet<T: Clone> {
    /// Pairwise concurrent, sorted by stamp, none covered by `removed`.
    versions: SmallVec<[Versioned<T>; 1]>,
    /// The delete context: every version deletes here had seen.
    removed: VersionVector,
}

/// The encodings:
/// - **binary** (`wire`), since protocol 5: the header
///   [`DELIMITED_TAG`]` + 2 × versions + deleted`, then each version as
///   `(value bytes, vector, stamp)`, then the delete context when deleted
///   (see *Schema evolution* on [`VersionSet`]);
/// - **binary, older layout** (what peers of protocol 4 are sent, and what
///   stores of format 3 hold; still decoded): a set without a delete
///   context is the length-prefixed list of its versions; one with a
///   context is [`DELETED_TAG`] (a length no list of versions has), then
///   the list, then the context;
/// - **human-readable** (JSON): the list of versions, or
///   `{"versions": [...], "removed": {...}}` once deleted.
impl<T: Clone + Serialize> Serialize for VersionSet<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeStruct, SerializeTuple};
        let versions = &self.versions[..];
        match (self.removed.is_empty(), serializer.is_human_readable()) {
            (true, true) => versions.serialize(serializer),
            (false, true) => {
                let mut map = serializer.serialize_struct("VersionSet", 2)?;
                map.serialize_field("versions", versions)?;
                map.serialize_field("removed", &self.removed)?;
                map.end()
            }
            (_, false) if !crate::wire::legacy_layout() => {
                let deleted = !self.removed.is_empty();
                let header = DELIMITED_TAG + 2 * versions.len() as u64 + u64::from(deleted);
                let mut tuple = serializer.serialize_tuple(2 + versions.len())?;
                tuple.serialize_element(&header)?;
                for version in versions {
                    tuple.serialize_element(&DelimitedRef(version))?;
                }
                if deleted {
                    tuple.serialize_element(&self.removed)?;
                }
                tuple.end()
            }
            (true, false) => versions.serialize(serializer),
            (false, false) => {
                let mut tuple = serializer.serialize_tuple(3)?;
                tuple.serialize_element(&DELETED_TAG)?;
                tuple.serialize_element(versions)?;
                tuple.serialize_element(&self.removed)?;
                tuple.end()
            }
        }
    }
}

/// A version in the delimited layout: `(value bytes, version, stamp)`,
/// the value's bytes (its own, then the ones it kept unread) a byte string.
struct DelimitedRef<'a, T>(&'a Versioned<T>);

impl<T: Serialize> Serialize for DelimitedRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(3)?;
        tuple.serialize_element(&ValueBytes(&self.0.value, self.0.unknown.bytes()))?;
        tuple.serialize_element(&self.0.version)?;
        tuple.serialize_element(&self.0.stamp)?;
        tuple.end()
    }
}

/// A version in the delimited layout, decoding.
struct DelimitedVersion<T>(Versioned<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for DelimitedVersion<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_tuple(3, DelimitedVisitor(std::marker::PhantomData))
    }
}

struct DelimitedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for DelimitedVisitor<T> {
    type Value = DelimitedVersion<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a delimited version")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("a version ends early");
        let ValueOf(value, unknown) = seq.next_element()?.ok_or_else(missing)?;
        let version = seq.next_element()?.ok_or_else(missing)?;
        let stamp = seq.next_element()?.ok_or_else(missing)?;
        Ok(DelimitedVersion(Versioned {
            value,
            version,
            stamp,
            unknown,
        }))
    }
}

/// The most versions a decoded `VersionSet` may hold: concurrent versions
/// come one per replica, and no archipelago has this many.
pub const VERSIONS_MAX: usize = 4096;

/// What a binary `VersionSet` with a delete context starts with, where a
/// set without one starts with its number of versions (at most one per
/// replica: never this).
pub const DELETED_TAG: u64 = u64::MAX;

/// Where the header of a binary `VersionSet` in the delimited layout
/// starts: the header is `DELIMITED_TAG + 2 × versions + deleted` (a
/// 3-byte varint, above any count of the older layouts), then each
/// version as `(value bytes, version, stamp)`, then the delete context
/// when `deleted` is 1.
pub const DELIMITED_TAG: u64 = 8192;

/// The largest header of the delimited layout.
const DELIMITED_TAG_MAX: u64 = DELIMITED_TAG + 2 * VERSIONS_MAX as u64 + 1;

/// Accepts only an antichain that writes make, in `O(n log n + e log n)`
/// for `n` versions holding `e` vector entries in all (a sort and one pass,
/// where comparing every pair would be quadratic):
/// - versions sorted by stamp, without repeats;
/// - with several versions, at most one per replica (the stamp's replica
///   is the writer, and one replica's writes are ordered), each vector
///   holding its own write (`version[writer] ≥ 1`), and no version having
///   seen another's write (`b.version[a.writer] < a.version[a.writer]`).
///
/// The last rule implies no version dominates another (`a ≤ b` would need
/// `b.version[a.writer] ≥ a.version[a.writer]`), so merging the set into
/// the empty one gives it back. It is stricter than "pairwise concurrent"
/// only for vectors no write makes: a write's vector is its causal past,
/// so a version that has seen another's write has seen its whole vector.
impl<T: Clone> TryFrom<Vec<Versioned<T>>> for VersionSet<T> {
    type Error = InvalidRule;

    fn try_from(versions: Vec<Versioned<T>>) -> Result<Self, Self::Error> {
        if !versions.windows(2).all(|w| w[0].stamp < w[1].stamp) {
            return Err(InvalidRule::Unsorted);
        }
        if versions.len() > 1 {
            check_antichain(&versions)?;
        }
        Ok(VersionSet {
            versions: versions.into(),
            removed: VersionVector::new(),
        })
    }
}

/// The writer rules of [`VersionSet`]'s `TryFrom`, for two or more versions.
fn check_antichain<T>(versions: &[Versioned<T>]) -> Result<(), InvalidRule> {
    // (writer, its counter in its own vector, position), sorted by writer.
    let mut writers: Vec<(ReplicaId, u64, usize)> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| (v.origin(), v.version.get(v.origin()), i))
        .collect();
    writers.sort_unstable_by_key(|w| w.0);
    if writers.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(InvalidRule::ReplicaRepeated);
    }
    if writers.iter().any(|w| w.1 == 0) {
        return Err(InvalidRule::OwnWriteMissing);
    }
    for (j, seer) in versions.iter().enumerate() {
        for (replica, counter) in seer.version.iter() {
            let Ok(at) = writers.binary_search_by_key(&replica, |w| w.0) else {
                continue;
            };
            let (_, own, i) = writers[at];
            if i != j && counter >= own {
                return Err(InvalidRule::VersionSeen);
            }
        }
    }
    Ok(())
}

impl<'de, T: Clone + Deserialize<'de>> Deserialize<'de> for VersionSet<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (versions, removed) = if deserializer.is_human_readable() {
            deserializer.deserialize_any(SetVisitor(std::marker::PhantomData))?
        } else {
            // A list's length prefix is a varint like any u64: read it as the
            // first element of a tuple, then what it announces.
            deserializer.deserialize_tuple(usize::MAX, BinaryVisitor(std::marker::PhantomData))?
        };
        let mut set = VersionSet::try_from(versions).map_err(|rule| invalid("VersionSet", rule))?;
        if set.versions.iter().any(|v| removed.dominates(&v.version)) {
            return Err(invalid("VersionSet", InvalidRule::VersionRemoved));
        }
        set.removed = removed;
        Ok(set)
    }
}

type Parts<T> = (Vec<Versioned<T>>, VersionVector);

/// The binary form: a count and that many versions, or the tag, the
/// versions and the delete context.
struct BinaryVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for BinaryVisitor<T> {
    type Value = Parts<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a version set")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parts<T>, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("a version set ends early");
        let count: u64 = seq.next_element()?.ok_or_else(missing)?;
        if (DELIMITED_TAG..=DELIMITED_TAG_MAX).contains(&count) {
            let (n, deleted) = (
                (count - DELIMITED_TAG) / 2,
                (count - DELIMITED_TAG) % 2 == 1,
            );
            let mut versions = Vec::with_capacity((n as usize).min(4));
            for _ in 0..n {
                let DelimitedVersion(version) = seq.next_element()?.ok_or_else(missing)?;
                versions.push(version);
            }
            let removed = if deleted {
                seq.next_element()?.ok_or_else(missing)?
            } else {
                VersionVector::new()
            };
            return Ok((versions, removed));
        }
        if count == DELETED_TAG {
            let versions = seq.next_element()?.ok_or_else(missing)?;
            let removed = seq.next_element()?.ok_or_else(missing)?;
            return Ok((versions, removed));
        }
        if count > VERSIONS_MAX as u64 {
            return Err(invalid("VersionSet", InvalidRule::TooManyVersions));
        }
        let mut versions = Vec::with_capacity((count as usize).min(4));
        for _ in 0..count {
            versions.push(seq.next_element()?.ok_or_else(missing)?);
        }
        Ok((versions, VersionVector::new()))
    }
}

/// The human-readable form: a list of versions, or a map of the versions
/// and the delete context.
struct SetVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for SetVisitor<T> {
    type Value = Parts<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of versions, or a map of versions and a delete context")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parts<T>, A::Error> {
        let mut versions = Vec::new();
        while let Some(version) = seq.next_element()? {
            versions.push(version);
        }
        Ok((versions, VersionVector::new()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parts<T>, A::Error> {
        use serde::de::Error;
        let (mut versions, mut removed) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "versions" => versions = Some(map.next_value()?),
                "removed" => removed = Some(map.next_value()?),
                other => return Err(A::Error::unknown_field(other, &["versions", "removed"])),
            }
        }
        Ok((
            versions.ok_or_else(|| A::Error::missing_field("versions"))?,
            removed.ok_or_else(|| A::Error::missing_field("removed"))?,
        ))
    }
}

impl<T: Clone> From<VersionSet<T>> for Vec<Versioned<T>> {
    fn from(set: VersionSet<T>) -> Self {
        set.versions.into_vec()
    }
}

impl<T: Clone> VersionSet<T> {
    /// A value never written.
    pub fn new() -> Self {
        VersionSet {
            versions: SmallVec::new(),
            removed: VersionVector::new(),
        }
    }

    /// A set holding one version.
    pub fn from_version(version: Versioned<T>) -> Self {
        VersionSet {
            versions: smallvec::smallvec![version],
            removed: VersionVector::new(),
        }
    }

    /// Writes `value` at `stamp` (whose replica is the writer), replacing
    /// every version this replica has seen; returns the delta.
    pub fn write(&mut self, stamp: Stamp, value: T) -> Self {
        let mut version = self.version();
        version.increment(stamp.replica);
        let written = Versioned::new(value, version, stamp);
        self.versions.clear();
        self.versions.push(written.clone());
        VersionSet::from_version(written)
    }

    /// Deletes every version this replica has seen (an observed-remove);
    /// returns the delta, which carries only the delete context. The set
    /// then reads as nothing until a write, here or one the delete had not
    /// seen elsewhere.
    pub fn remove(&mut self) -> Self {
        let seen = self.version();
        self.versions.clear();
        self.removed = seen.clone();
        VersionSet {
            versions: SmallVec::new(),
            removed: seen,
        }
    }

    /// The delete context: every version deletes of this set had seen
    /// (empty when never deleted).
    pub fn removed(&self) -> &VersionVector {
        &self.removed
    }

    /// The concurrent versions, in stamp order (one when no conflict).
    pub fn versions(&self) -> &[Versioned<T>] {
        &self.versions
    }

    /// True when concurrent versions are waiting to be resolved.
    pub fn is_conflicted(&self) -> bool {
        self.versions.len() > 1
    }

    /// True when it reads as nothing: never written, or deleted since.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Every write the versions and deletes have seen: the join of their
    /// vectors and the delete context.
    pub fn version(&self) -> VersionVector {
        let mut joined = self.removed.clone();
        for v in &self.versions {
            joined.merge(&v.version);
        }
        joined
    }

    /// What the application reads: nothing when never written, the single
    /// version when there is no conflict, and otherwise the resolver's
    /// verdict on the concurrent versions, folded in stamp order.
    pub fn resolve(&self, resolver: &dyn Resolver<T>) -> Option<Resolution<T>> {
        let (first, rest) = self.versions.split_first()?;
        if rest.is_empty() {
            return Some(Resolution::Value(first.clone()));
        }
        if resolver.keeps_siblings() {
            return Some(Resolution::Siblings(self.versions.to_vec()));
        }
        let mut acc = first.clone();
        for next in rest {
            acc = resolver.resolve(&acc, next);
        }
        Some(Resolution::Value(acc))
    }

    /// Merges `other` in, and when that leaves concurrent versions that
    /// were not all here before, resolves them and reports the conflict to
    /// `feed` (which also emits a `tracing` event). Returns the record.
    pub fn merge_audited(
        &mut self,
        other: &Self,
        resolver: &dyn Resolver<T>,
        feed: &ConflictFeed<T>,
        key: &dyn Debug,
        at: Timestamp,
    ) -> Option<std::sync::Arc<ConflictRecord<T>>> {
        if !self.merge_changed(other) || self.versions.len() < 2 {
            return None;
        }
        let resolution = self.resolve(resolver)?;
        let (winner, losers) = match resolution {
            Resolution::Value(winner) => {
                // Stamps are unique per write: the sibling carrying the
                // winner's stamp won, unless a merge made a new value.
                let merged = resolver.strategy() == super::Strategy::Merge;
                let losers = self
                    .versions
                    .iter()
                    .filter(|v| merged || v.stamp != winner.stamp)
                    .cloned()
                    .collect();
                (Some(winner), losers)
            }
            Resolution::Siblings(all) => (None, all),
        };
        Some(feed.record(ConflictRecord {
            table: feed.table_name(),
            key: format!("{key:?}"),
            strategy: resolver.strategy(),
            winner,
            losers,
            at,
            replica: feed.replica(),
        }))
    }

    /// Adds one version; true when the set changed.
    fn absorb(&mut self, theirs: &Versioned<T>) -> bool {
        if self.removed.dominates(&theirs.version) {
            return false; // deleted here
        }
        for (i, mine) in self.versions.iter().enumerate() {
            match mine.version.partial_cmp(&theirs.version) {
                Some(Ordering::Greater) => return false,
                Some(Ordering::Equal) => {
                    // The same write; a stamp tie-break keeps merges
                    // commutative even for inputs no replica would make.
                    if theirs.stamp > mine.stamp {
                        self.versions[i] = theirs.clone();
                        self.sort();
                        return true;
                    }
                    return false;
                }
                _ => {}
            }
        }
        self.versions
            .retain(|mine| mine.version.partial_cmp(&theirs.version) != Some(Ordering::Less));
        self.versions.push(theirs.clone());
        self.sort();
        true
    }

    fn merge_changed(&mut self, other: &Self) -> bool {
        let mut changed = false;
        if !self.removed.dominates(&other.removed) {
            self.removed.merge(&other.removed);
            let before = self.versions.len();
            let removed = &self.removed;
            self.versions.retain(|v| !removed.dominates(&v.version));
            // A conflict is audited only when the versions change.
            changed |= self.versions.len() != before;
        }
        for theirs in &other.versions {
            changed |= self.absorb(theirs);
        }
        changed
    }

    fn sort(&mut self) {
        self.versions.sort_by_key(|v| v.stamp);
    }
}

impl<T: Clone> Default for VersionSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Crdt for VersionSet<T> {
    fn merge(&mut self, other: &Self) {
        self.merge_changed(other);
    }

    fn latest_stamp(&self) -> Option<crate::clock::Timestamp> {
        // Sorted by stamp: the last is the latest.
        self.versions.last().map(|v| v.stamp.time)
    }
}
