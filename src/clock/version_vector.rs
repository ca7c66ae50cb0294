use std::cmp::Ordering;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::{Dot, ReplicaId};

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
    /// Sorted by replica, no duplicates, no zero counters.
    entries: SmallVec<[(ReplicaId, u64); INLINE_ENTRIES]>,
}

impl VersionVector {
    /// The empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of replicas with a non-zero entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The highest counter seen from `replica` (0 for none).
    #[inline]
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.position(replica) {
            Ok(i) => self.entries[i].1,
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
                let entry = &mut self.entries[i].1;
                *entry = entry.checked_add(1).expect("dot counter overflow");
                *entry
            }
            Err(i) => {
                self.entries.insert(i, (replica, 1));
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
                let entry = &mut self.entries[i].1;
                *entry = (*entry).max(counter);
            }
            Err(i) => self.entries.insert(i, (replica, counter)),
        }
    }

    /// Joins `other` into `self`: the entry-wise maximum.
    pub fn merge(&mut self, other: &Self) {
        // Fast path, one pass: the same replicas in both (the steady state
        // of a deployment), no allocation. Falls back to a sorted union at
        // the first entry where the layouts part.
        if self.entries.len() == other.entries.len() {
            let mut same = true;
            for (mine, theirs) in self.entries.iter_mut().zip(other.entries.iter()) {
                if mine.0 != theirs.0 {
                    same = false;
                    break;
                }
                mine.1 = mine.1.max(theirs.1);
            }
            if same {
                return;
            }
        }
        if other.entries.is_empty() {
            return;
        }
        let mut merged = SmallVec::with_capacity(self.entries.len() + other.entries.len());
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => {
                    merged.push(a[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    merged.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    merged.push((a[i].0, a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.entries = merged;
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
        self.entries.iter().copied()
    }

    /// Number of dots covered (the sum of the entries), saturating.
    pub fn dot_count(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.1))
    }

    #[inline]
    fn position(&self, replica: ReplicaId) -> Result<usize, usize> {
        // Linear for the inline case: fewer branches than a binary search.
        if self.entries.len() <= INLINE_ENTRIES * 2 {
            for (i, e) in self.entries.iter().enumerate() {
                match e.0.cmp(&replica) {
                    Ordering::Less => continue,
                    Ordering::Equal => return Ok(i),
                    Ordering::Greater => return Err(i),
                }
            }
            Err(self.entries.len())
        } else {
            self.entries.binary_search_by(|e| e.0.cmp(&replica))
        }
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let (a, b) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        let (mut less, mut greater) = (false, false);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a[i].1.cmp(&b[j].1) {
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
        greater |= i < a.len();
        less |= j < b.len();
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
        f.debug_map()
            .entries(self.entries.iter().map(|(r, c)| (r, c)))
            .finish()
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
        serializer.collect_seq(self.entries.iter())
    }
}

/// Rejects entries that are unsorted, repeated or zero: what we encode is
/// canonical, so anything else did not come from us.
impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries: SmallVec<[(ReplicaId, u64); INLINE_ENTRIES]> =
            SmallVec::deserialize(deserializer)?;
        let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted {
            return Err(D::Error::custom(
                "version vector entries must be sorted by replica without repeats",
            ));
        }
        if entries.iter().any(|e| e.1 == 0) {
            return Err(D::Error::custom("version vector entry with counter 0"));
        }
        Ok(VersionVector { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u32, u64)]) -> VersionVector {
        entries
            .iter()
            .map(|&(r, c)| (ReplicaId::new(r), c))
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
