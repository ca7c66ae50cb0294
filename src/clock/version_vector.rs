use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::{Dot, ReplicaId};
use crate::wire::{InvalidRule, invalid};

/// Entries stored inline before the vector spills to the heap: most
/// deployments run a handful of regions.
const INLINE_ENTRIES: usize = 4;

/// What each replica has written that this vector has seen: replica `r`
/// maps to `n` when dots `r.1 ..= r.n` are all covered.
///
/// Stored as a small vector sorted by replica, inline up to four replicas:
/// with the ≤ 64 replicas a deployment runs, a sorted scan beats any map, a
/// merge of two vectors over the same replicas is one pass without branches
/// on the layout, and cloning a short vector allocates nothing.
///
/// Comparison is causal, through [`PartialOrd`]: `a < b` when `b` has seen
/// everything `a` has and more; `partial_cmp` returns `None` when the two
/// are concurrent. `VersionVector` deliberately does not implement `Ord`.
///
/// ```
/// use archipelago::clock::{ReplicaId, VersionVector};
///
/// let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut a = VersionVector::new();
/// let mut b = VersionVector::new();
/// a.increment(tokyo);
/// b.increment(frankfurt);
/// assert!(a.concurrent_with(&b));
/// assert_eq!(a.partial_cmp(&b), None);
///
/// b.merge(&a);
/// assert!(b.dominates(&a));
/// assert!(a < b);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    /// Sorted, no duplicates. Kept apart from the counters (struct of
    /// arrays): comparing two layouts is one `memcmp`, and the counters'
    /// maximum is a straight loop the compiler vectorises.
    ids: SmallVec<[ReplicaId; INLINE_ENTRIES]>,
    /// `counters[i]` belongs to `ids[i]`; never zero.
    counters: SmallVec<[u64; INLINE_ENTRIES]>,
}

impl VersionVector {
    /// The empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of replicas with a non-zero entry.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The highest counter seen from `replica` (0 for none).
    #[inline]
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.position(replica) {
            Ok(i) => self.counters[i],
            Err(_) => 0,
        }
    }

    /// True when the vector covers `dot`.
    #[inline]
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.replica)
    }

    /// Records the next write of `replica` and returns its dot.
    ///
    /// # Panics
    /// When the replica's counter would pass `u64::MAX`, which no replica
    /// reaches by writing.
    #[inline]
    pub fn increment(&mut self, replica: ReplicaId) -> Dot {
        let counter = match self.position(replica) {
            Ok(i) => {
                let entry = &mut self.counters[i];
                *entry = entry.checked_add(1).expect("dot counter overflow");
                *entry
            }
            Err(i) => {
                self.ids.insert(i, replica);
                self.counters.insert(i, 1);
                1
            }
        };
        Dot::new(replica, counter)
    }

    /// Raises the entry of `replica` to at least `counter`, as if dots
    /// `1..=counter` had been seen. A lower `counter` changes nothing.
    #[inline]
    pub fn raise(&mut self, replica: ReplicaId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.position(replica) {
            Ok(i) => {
                let entry = &mut self.counters[i];
                *entry = (*entry).max(counter);
            }
            Err(i) => {
                self.ids.insert(i, replica);
                self.counters.insert(i, counter);
            }
        }
    }

    /// Joins `other` into `self`: the entry-wise maximum.
    pub fn merge(&mut self, other: &Self) {
        // Fast path: the same replicas in both (the steady state of a
        // deployment): one comparison of the id arrays, then a vectorised
        // maximum, no allocation.
        if self.ids == other.ids {
            max_into(&mut self.counters, &other.counters);
            return;
        }
        if other.ids.is_empty() {
            return;
        }
        let capacity = self.ids.len() + other.ids.len();
        let mut ids = SmallVec::with_capacity(capacity);
        let mut counters = SmallVec::with_capacity(capacity);
        let (mut i, mut j) = (0, 0);
        while i < self.ids.len() && j < other.ids.len() {
            match self.ids[i].cmp(&other.ids[j]) {
                Ordering::Less => {
                    ids.push(self.ids[i]);
                    counters.push(self.counters[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    ids.push(other.ids[j]);
                    counters.push(other.counters[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    ids.push(self.ids[i]);
                    counters.push(self.counters[i].max(other.counters[j]));
                    i += 1;
                    j += 1;
                }
            }
        }
        ids.extend_from_slice(&self.ids[i..]);
        counters.extend_from_slice(&self.counters[i..]);
        ids.extend_from_slice(&other.ids[j..]);
        counters.extend_from_slice(&other.counters[j..]);
        self.ids = ids;
        self.counters = counters;
    }

    /// True when `self` has seen everything `other` has (`self >= other`).
    pub fn dominates(&self, other: &Self) -> bool {
        matches!(
            self.partial_cmp(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    /// True when each has seen something the other has not.
    pub fn concurrent_with(&self, other: &Self) -> bool {
        self.partial_cmp(other).is_none()
    }

    /// The `(replica, counter)` entries, sorted by replica.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.ids.iter().copied().zip(self.counters.iter().copied())
    }

    /// Number of dots covered (the sum of the entries), saturating.
    pub fn dot_count(&self) -> u64 {
        self.counters
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(*c))
    }

    #[inline]
    fn position(&self, replica: ReplicaId) -> Result<usize, usize> {
        // Linear for short vectors: fewer branches than a binary search.
        if self.ids.len() <= INLINE_ENTRIES * 2 {
            for (i, id) in self.ids.iter().enumerate() {
                match id.cmp(&replica) {
                    Ordering::Less => continue,
                    Ordering::Equal => return Ok(i),
                    Ordering::Greater => return Err(i),
                }
            }
            Err(self.ids.len())
        } else {
            self.ids.binary_search(&replica)
        }
    }
}

/// `mine[i] = max(mine[i], theirs[i])`, with AVX2 where the processor has it
/// (a u64 maximum needs 64-bit compares, which baseline x86-64 lacks).
#[inline]
fn max_into(mine: &mut [u64], theirs: &[u64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if mine.len() >= 16 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor supports AVX2, checked just above.
            unsafe { max_into_avx2(mine, theirs) };
            return;
        }
    }
    max_into_scalar(mine, theirs);
}

#[inline(always)]
fn max_into_scalar(mine: &mut [u64], theirs: &[u64]) {
    for (a, b) in mine.iter_mut().zip(theirs) {
        *a = (*a).max(*b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn max_into_avx2(mine: &mut [u64], theirs: &[u64]) {
    max_into_scalar(mine, theirs);
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let (mut i, mut j) = (0, 0);
        let (mut less, mut greater) = (false, false);
        while i < self.ids.len() && j < other.ids.len() {
            match self.ids[i].cmp(&other.ids[j]) {
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match self.counters[i].cmp(&other.counters[j]) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if less && greater {
                return None;
            }
        }
        greater |= i < self.ids.len();
        less |= j < other.ids.len();
        match (less, greater) {
            (false, false) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (true, true) => None,
        }
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    /// Builds a vector from entries in any order; repeated replicas keep
    /// their highest counter and zero counters are dropped.
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (replica, counter) in iter {
            vv.raise(replica, counter);
        }
        vv
    }
}

/// Serialized as a sequence of `(replica, counter)` pairs sorted by replica,
/// so formats whose maps take only string keys (JSON) carry it too.
impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Rejects entries that are unsorted, repeated or zero: what we encode is
/// canonical, so anything else did not come from us. Reads the entries
/// straight into the vector, checking each against the one before: one
/// pass, no intermediate, and no room reserved past the inline entries
/// whatever the length prefix claims.
impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = VersionVector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (replica, counter) pairs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<VersionVector, A::Error> {
                let mut vv = VersionVector::new();
                while let Some((replica, counter)) = seq.next_element::<(ReplicaId, u64)>()? {
                    if vv.ids.last().is_some_and(|last| *last >= replica) {
                        return Err(invalid(TYPE_NAME, InvalidRule::Unsorted));
                    }
                    if counter == 0 {
                        return Err(invalid(TYPE_NAME, InvalidRule::ZeroCounter));
                    }
                    vv.ids.push(replica);
                    vv.counters.push(counter);
                }
                debug_assert_eq!(vv.ids.len(), vv.counters.len());
                Ok(vv)
            }
        }
        deserializer.deserialize_seq(Entries)
    }
}

/// The name decode errors give the type.
const TYPE_NAME: &str = "VersionVector";

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u32, u64)]) -> VersionVector {
        entries
            .iter()
            .map(|&(r, c)| (ReplicaId::from(r), c))
            .collect()
    }

    #[test]
    fn causal_order_of_vectors() {
        assert_eq!(
            vv(&[(1, 1)]).partial_cmp(&vv(&[(1, 2)])),
            Some(Ordering::Less)
        );
        assert_eq!(
            vv(&[(1, 2)]).partial_cmp(&vv(&[(1, 1)])),
            Some(Ordering::Greater)
        );
        assert_eq!(vv(&[(1, 1)]).partial_cmp(&vv(&[(2, 1)])), None);
        assert_eq!(vv(&[]).partial_cmp(&vv(&[(2, 1)])), Some(Ordering::Less));
        assert_eq!(
            vv(&[(1, 3), (2, 1)]).partial_cmp(&vv(&[(1, 3), (2, 1)])),
            Some(Ordering::Equal)
        );
        assert_eq!(
            vv(&[(1, 3), (2, 1)]).partial_cmp(&vv(&[(1, 2), (3, 1)])),
            None
        );
    }

    #[test]
    fn merge_takes_entrywise_max_across_layouts() {
        let mut a = vv(&[(1, 5), (3, 1)]);
        a.merge(&vv(&[(1, 2), (2, 7), (4, 1)]));
        assert_eq!(a, vv(&[(1, 5), (2, 7), (3, 1), (4, 1)]));
        let mut b = vv(&[(1, 1), (2, 9)]);
        b.merge(&vv(&[(1, 4), (2, 3)]));
        assert_eq!(b, vv(&[(1, 4), (2, 9)]));
    }

    #[test]
    fn deserialize_rejects_non_canonical_entries() {
        assert!(serde_json::from_str::<VersionVector>("[[2,1],[1,1]]").is_err());
        assert!(serde_json::from_str::<VersionVector>("[[1,1],[1,2]]").is_err());
        assert!(serde_json::from_str::<VersionVector>("[[1,0]]").is_err());
        let ok: VersionVector = serde_json::from_str("[[1,1],[2,2]]").unwrap();
        assert_eq!(ok, vv(&[(1, 1), (2, 2)]));
    }
}
