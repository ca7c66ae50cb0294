use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{Dot, ReplicaId, VersionVector};
use crate::wire::{InvalidRule, invalid};

/// The causal context of a delta CRDT: every dot a replica has seen.
///
/// A [`VersionVector`] holds the contiguous prefix of each replica's dots;
/// the *cloud* holds the dots seen out of order (a delta can arrive before
/// the ones it follows). Whenever a cloud dot becomes contiguous with the
/// vector it is folded in, so a replica that has caught up carries no cloud.
///
/// ```
/// use archipelago::clock::{CausalContext, Dot, ReplicaId};
///
/// let r = ReplicaId::new(1);
/// let mut ctx = CausalContext::new();
/// ctx.insert(Dot::new(r, 2)); // out of order: held in the cloud
/// assert!(ctx.contains(Dot::new(r, 2)) && !ctx.contains(Dot::new(r, 1)));
/// ctx.insert(Dot::new(r, 1)); // fills the gap: both fold into the vector
/// assert_eq!(ctx.vector().get(r), 2);
/// assert_eq!(ctx.cloud().len(), 0);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct CausalContext {
    vv: VersionVector,
    /// Sorted, not covered by `vv`, never `vv[r] + 1` (that would fold).
    /// One dot inline: the context of a single write's delta allocates
    /// nothing.
    cloud: SmallVec<[Dot; 1]>,
}

impl<'de> Deserialize<'de> for CausalContext {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = ContextRepr::deserialize(deserializer)?;
        CausalContext::try_from(repr).map_err(|(ty, rule)| invalid(ty, rule))
    }
}

#[derive(Deserialize)]
struct ContextRepr {
    vv: VersionVector,
    cloud: Vec<Dot>,
}

/// Accepts only the form a context is kept in (one pass over the cloud):
/// cloud dots sorted without repeats, none with counter 0, none the vector
/// covers or would absorb (`vv[r] + 1`). Anything else did not come from a
/// replica, and two encodings of one context would compare unequal.
impl TryFrom<ContextRepr> for CausalContext {
    type Error = (&'static str, InvalidRule);

    fn try_from(repr: ContextRepr) -> Result<Self, Self::Error> {
        const TYPE_NAME: &str = "CausalContext";
        let mut previous: Option<Dot> = None;
        for dot in &repr.cloud {
            if dot.counter == 0 {
                return Err((TYPE_NAME, InvalidRule::ZeroCounter));
            }
            match previous {
                Some(p) if p == *dot => return Err((TYPE_NAME, InvalidRule::DuplicateDot)),
                Some(p) if p > *dot => return Err((TYPE_NAME, InvalidRule::Unsorted)),
                _ => {}
            }
            if dot.counter <= repr.vv.get(dot.replica).saturating_add(1) {
                return Err((TYPE_NAME, InvalidRule::NotCompact));
            }
            previous = Some(*dot);
        }
        Ok(CausalContext {
            vv: repr.vv,
            cloud: repr.cloud.into(),
        })
    }
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context holding exactly the dots of `vv`.
    pub fn from_vector(vv: VersionVector) -> Self {
        CausalContext {
            vv,
            cloud: SmallVec::new(),
        }
    }

    /// True when no dot has been seen.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// The contiguous part.
    pub fn vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The dots seen out of order, sorted.
    pub fn cloud(&self) -> &[Dot] {
        &self.cloud
    }

    /// True when `dot` has been seen.
    #[inline]
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.contains(dot) || (!self.cloud.is_empty() && self.cloud.binary_search(&dot).is_ok())
    }

    /// Makes a new dot for `replica`, records it and returns it.
    #[inline]
    pub fn next_dot(&mut self, replica: ReplicaId) -> Dot {
        let dot = self.vv.increment(replica);
        if !self.cloud.is_empty() {
            self.compact();
        }
        dot
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.vv.contains(dot) {
            return;
        }
        if dot.counter == self.vv.get(dot.replica) + 1 {
            self.vv.raise(dot.replica, dot.counter);
            if !self.cloud.is_empty() {
                self.compact();
            }
        } else if let Err(i) = self.cloud.binary_search(&dot) {
            self.cloud.insert(i, dot);
        }
    }

    /// Joins `other` into `self`: the union of the dots seen.
    pub fn merge(&mut self, other: &Self) {
        self.vv.merge(&other.vv);
        if !other.cloud.is_empty() {
            if self.cloud.is_empty() {
                self.cloud.extend_from_slice(&other.cloud);
            } else {
                let mut union = SmallVec::with_capacity(self.cloud.len() + other.cloud.len());
                let (mut i, mut j) = (0, 0);
                let (a, b) = (&self.cloud, &other.cloud);
                while i < a.len() && j < b.len() {
                    match a[i].cmp(&b[j]) {
                        std::cmp::Ordering::Less => {
                            union.push(a[i]);
                            i += 1;
                        }
                        std::cmp::Ordering::Greater => {
                            union.push(b[j]);
                            j += 1;
                        }
                        std::cmp::Ordering::Equal => {
                            union.push(a[i]);
                            i += 1;
                            j += 1;
                        }
                    }
                }
                union.extend_from_slice(&a[i..]);
                union.extend_from_slice(&b[j..]);
                self.cloud = union;
            }
        }
        if !self.cloud.is_empty() {
            self.compact();
        }
    }

    /// True when every dot of `other` is in `self` (may answer false for a
    /// vector entry `self` covers only through its cloud: a cheap check).
    pub fn covers(&self, other: &Self) -> bool {
        other.vv.iter().all(|(r, n)| self.vv.get(r) >= n)
            && other.cloud.iter().all(|d| self.contains(*d))
    }

    /// True when some dot is in both contexts.
    pub fn intersects(&self, other: &Self) -> bool {
        let vectors_overlap = self
            .vv
            .iter()
            .any(|(replica, counter)| counter > 0 && other.vv.get(replica) > 0);
        vectors_overlap
            || self.cloud.iter().any(|d| other.contains(*d))
            || other.cloud.iter().any(|d| self.contains(*d))
    }

    /// Every dot seen, the vector's first. Can be long: a vector entry of
    /// `n` yields `n` dots.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.vv
            .iter()
            .flat_map(|(r, n)| (1..=n).map(move |c| Dot::new(r, c)))
            .chain(self.cloud.iter().copied())
    }

    /// Folds cloud dots that became contiguous into the vector and drops
    /// the ones it already covers.
    fn compact(&mut self) {
        let vv = &mut self.vv;
        // Sorted by (replica, counter): one pass folds each replica's run.
        self.cloud.retain(|dot| {
            let seen = vv.get(dot.replica);
            if dot.counter <= seen {
                false
            } else if dot.counter == seen + 1 {
                vv.raise(dot.replica, dot.counter);
                false
            } else {
                true
            }
        });
    }
}

impl std::fmt::Debug for CausalContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.cloud.is_empty() {
            write!(f, "{:?}", self.vv)
        } else {
            write!(f, "{:?}+{:?}", self.vv, self.cloud)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_folds_when_gaps_fill_in_any_order() {
        let r = ReplicaId::new(9);
        let mut ctx = CausalContext::new();
        for c in [5, 3, 4, 2] {
            ctx.insert(Dot::new(r, c));
        }
        assert_eq!(ctx.cloud().len(), 4);
        ctx.insert(Dot::new(r, 1));
        assert!(ctx.cloud().is_empty());
        assert_eq!(ctx.vector().get(r), 5);
    }

    #[test]
    fn merge_unions_clouds_and_compacts() {
        let r = ReplicaId::new(1);
        let mut a = CausalContext::new();
        a.insert(Dot::new(r, 3));
        let mut b = CausalContext::new();
        b.insert(Dot::new(r, 1));
        b.insert(Dot::new(r, 2));
        a.merge(&b);
        assert_eq!(a.vector().get(r), 3);
        assert!(a.cloud().is_empty());
    }

    #[test]
    fn intersects_sees_vector_and_cloud_overlap() {
        let (r, s) = (ReplicaId::new(1), ReplicaId::new(2));
        let mut a = CausalContext::new();
        a.insert(Dot::new(r, 1));
        let mut b = CausalContext::new();
        b.insert(Dot::new(s, 1));
        assert!(!a.intersects(&b));
        b.insert(Dot::new(r, 4));
        assert!(!a.intersects(&b));
        a.insert(Dot::new(r, 4));
        assert!(a.intersects(&b));
    }
}
