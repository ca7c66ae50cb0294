//! [`BoundedCounter`]: escrow of rights (its page is the type's, since
//! this module is private).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::Crdt;
use crate::clock::{ReplicaId, VersionVector};
use crate::wire::{InvalidRule, invalid};

/// One count of the rights matrix: `(from, to, count)`. `from == to` holds
/// the increments made at `from`; otherwise the rights `from` has handed to
/// `to`, in total.
type Entry = (ReplicaId, ReplicaId, u64);

/// Entries kept inline: three regions' increments and one transfer.
const INLINE_ENTRIES: usize = 4;

/// Why a [`BoundedCounter`] refused a decrement or a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RightsError {
    /// The replica holds fewer rights than asked for. Nothing changed.
    #[error(
        "{replica:?} holds {available_here} of the {requested} rights asked for \
         ({available_total} held across all replicas)"
    )]
    Insufficient {
        /// The replica that asked.
        replica: ReplicaId,
        /// What it asked for.
        requested: u64,
        /// The rights it holds.
        available_here: u64,
        /// The rights every replica holds together, as this replica knows:
        /// what could be sold here after transfers.
        available_total: u64,
    },
    /// A transfer from a replica to itself. Nothing changed.
    #[error("a transfer of rights from {replica:?} to itself")]
    SelfTransfer {
        /// The replica named twice.
        replica: ReplicaId,
    },
}

/// A counter whose value never goes below `BOUND`: escrow of rights. Each
/// replica decrements only with rights it holds.
///
/// Stock that must not oversell. Each replica may only decrement what it
/// holds *rights* for: an increment gives its rights to the replica that
/// made it, a replica can hand rights to another with
/// [`transfer`](BoundedCounter::transfer), and
/// [`try_dec`](BoundedCounter::try_dec) refuses, without waiting on the
/// network, when the rights held here fall short. Partitioned replicas sell
/// only what they hold, so once they merge the value is still at or above
/// the bound (Balegas et al., *Putting consistency back into eventual
/// consistency*, SRDS 2015; AntidoteDB's `counter_b`).
///
/// Three units, two partitioned regions, never oversold:
///
/// ```
/// use archipelago::clock::ReplicaId;
/// use archipelago::crdt::{BoundedCounter, Crdt, RightsError};
///
/// let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut stock_tokyo = BoundedCounter::new();
/// let restock = stock_tokyo.inc(tokyo, 3); // Tokyo holds the rights to 3 units
/// let moved = stock_tokyo.transfer(tokyo, frankfurt, 1)?; // one of them for Frankfurt
/// let mut stock_frankfurt = BoundedCounter::new();
/// stock_frankfurt.merge(&restock);
/// stock_frankfurt.merge(&moved);
///
/// // A partition: each region sells what it holds, and no more.
/// let sold_tokyo = stock_tokyo.try_dec(tokyo, 2)?;
/// let sold_frankfurt = stock_frankfurt.try_dec(frankfurt, 1)?;
/// // Sold out here; Tokyo still holds 2 as far as Frankfurt knows.
/// let refused = stock_frankfurt.try_dec(frankfurt, 1).unwrap_err();
/// assert_eq!(
///     refused,
///     RightsError::Insufficient { replica: frankfurt, requested: 1, available_here: 0, available_total: 2 }
/// );
/// assert!(stock_tokyo.try_dec(tokyo, 1).is_err());
///
/// // The partition heals: 3 sold of 3, never below zero.
/// stock_tokyo.merge(&sold_frankfurt);
/// stock_frankfurt.merge(&sold_tokyo);
/// assert_eq!(stock_tokyo, stock_frankfurt);
/// assert_eq!(stock_tokyo.value(), 0);
/// # Ok::<(), RightsError>(())
/// ```
///
/// # Guarantees
/// - In every state any replica can reach, whatever order deltas arrive in
///   (duplicated, reordered, some lost), the value is at least the bound and
///   no replica's rights are negative. A decrement or transfer therefore
///   ships, as its delta, the whole state of the replica making it: the
///   rights it spent travel with it (for `n` replicas, at most `n² + n`
///   counts). An increment's delta is one count.
/// - The bound is part of the type (`BoundedCounter<BOUND>`, 0 by
///   default), so every replica agrees on it. A counter starts *at* its
///   bound: `value() = BOUND + increments − decrements`.
/// - Decoding refuses a state in which some replica has spent more rights
///   than it holds ([`InvalidRule::RightsOverdrawn`]). What decoding cannot
///   see is a replica that forks (two processes with one id writing
///   different histories): the engine's handshake refuses two peers with
///   one id.
/// - Rights move only by an explicit `transfer`; moving them automatically
///   to where demand is is the engine's job, not this type's.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct BoundedCounter<const BOUND: i64 = 0> {
    /// Sorted by `(from, to)`, no zero count.
    rights: SmallVec<[Entry; INLINE_ENTRIES]>,
    /// The decrements each replica made.
    decrements: VersionVector,
}

impl BoundedCounter<0> {
    /// A counter at 0 that never goes below 0. For another bound, use
    /// `BoundedCounter::<BOUND>::default()`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<const BOUND: i64> BoundedCounter<BOUND> {
    /// The value the counter never goes below.
    pub const fn bound(&self) -> i64 {
        BOUND
    }

    /// Adds `n` on behalf of `replica`, which receives the rights to them;
    /// returns the delta (that replica's new increment count). Always
    /// succeeds; saturates at `u64::MAX` increments per replica.
    pub fn inc(&mut self, replica: ReplicaId, n: u64) -> Self {
        let mut delta = Self::default();
        if n == 0 {
            return delta;
        }
        let count = self.raise_by(replica, replica, n);
        delta.rights.push((replica, replica, count));
        delta
    }

    /// Subtracts `n` on behalf of `replica`, spending rights it holds;
    /// returns the delta (the whole state of this replica, see the
    /// [type page](BoundedCounter)).
    ///
    /// # Errors
    /// [`RightsError::Insufficient`] when `replica` holds fewer than `n`
    /// rights; the counter is unchanged. Never waits: rights come from
    /// other replicas only by [`transfer`](Self::transfer).
    pub fn try_dec(&mut self, replica: ReplicaId, n: u64) -> Result<Self, RightsError> {
        self.check_rights(replica, n)?;
        if n == 0 {
            return Ok(Self::default());
        }
        let spent = self.decrements.get(replica).saturating_add(n);
        self.decrements.raise(replica, spent);
        self.debug_check(replica);
        Ok(self.clone())
    }

    /// Moves `n` rights from `from` to `to`; returns the delta (the whole
    /// state, as for [`try_dec`](Self::try_dec)). Call it at `from`: only
    /// the replica holding rights may give them away.
    ///
    /// # Errors
    /// [`RightsError::SelfTransfer`] when `from == to`, and
    /// [`RightsError::Insufficient`] when `from` holds fewer than `n`
    /// rights; the counter is then unchanged.
    pub fn transfer(
        &mut self,
        from: ReplicaId,
        to: ReplicaId,
        n: u64,
    ) -> Result<Self, RightsError> {
        if from == to {
            return Err(RightsError::SelfTransfer { replica: from });
        }
        self.check_rights(from, n)?;
        if n == 0 {
            return Ok(Self::default());
        }
        self.raise_by(from, to, n);
        self.debug_check(from);
        Ok(self.clone())
    }

    /// The rights `replica` holds: what it may decrement now.
    pub fn rights(&self, replica: ReplicaId) -> u64 {
        clamp_u64(self.balance(replica))
    }

    /// Every replica that holds rights, with the rights it holds, by
    /// replica id (as [`rights`](Self::rights) counts them; replicas that
    /// spent or gave away all they had are left out).
    pub fn holders(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        let mut named: SmallVec<[ReplicaId; INLINE_ENTRIES]> =
            self.rights.iter().map(|&(_, to, _)| to).collect();
        named.sort_unstable();
        named.dedup();
        named
            .into_iter()
            .map(|r| (r, self.rights(r)))
            .filter(|&(_, n)| n > 0)
    }

    /// The rights all replicas hold together: `value() − bound()`.
    pub fn total_rights(&self) -> u64 {
        clamp_u64(i128::from(self.increments()) - i128::from(self.decrements()))
    }

    /// `BOUND + increments − decrements`, saturating at the bounds of
    /// `i64`. Never below `BOUND` in a state a replica reaches.
    pub fn value(&self) -> i64 {
        let exact =
            i128::from(BOUND) + i128::from(self.increments()) - i128::from(self.decrements());
        exact.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Every increment, at every replica (saturating).
    pub fn increments(&self) -> u64 {
        self.rights
            .iter()
            .filter(|(from, to, _)| from == to)
            .fold(0u64, |sum, (_, _, n)| sum.saturating_add(*n))
    }

    /// Every decrement, at every replica (saturating).
    pub fn decrements(&self) -> u64 {
        self.decrements.dot_count()
    }

    /// Rights received minus rights given and spent, exactly.
    fn balance(&self, replica: ReplicaId) -> i128 {
        let mut balance = -i128::from(self.decrements.get(replica));
        for &(from, to, n) in &self.rights {
            if to == replica {
                balance += i128::from(n);
            } else if from == replica {
                balance -= i128::from(n);
            }
        }
        balance
    }

    fn check_rights(&self, replica: ReplicaId, requested: u64) -> Result<(), RightsError> {
        let available_here = self.rights(replica);
        if requested > available_here {
            tracing::debug!(
                ?replica,
                requested,
                available_here,
                "bounded counter: not enough rights"
            );
            return Err(RightsError::Insufficient {
                replica,
                requested,
                available_here,
                available_total: self.total_rights(),
            });
        }
        Ok(())
    }

    /// Raises the entry `(from, to)` by `n` (saturating); returns its new count.
    fn raise_by(&mut self, from: ReplicaId, to: ReplicaId, n: u64) -> u64 {
        match self
            .rights
            .binary_search_by_key(&(from, to), |e| (e.0, e.1))
        {
            Ok(at) => {
                let count = &mut self.rights[at].2;
                *count = count.saturating_add(n);
                *count
            }
            Err(at) => {
                self.rights.insert(at, (from, to, n));
                n
            }
        }
    }

    fn debug_check(&self, replica: ReplicaId) {
        debug_assert!(self.balance(replica) >= 0, "{replica:?} overdrew: {self:?}");
        debug_assert!(
            self.rights
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1))
        );
    }
}

fn clamp_u64(n: i128) -> u64 {
    n.clamp(0, i128::from(u64::MAX)) as u64
}

impl<const BOUND: i64> Crdt for BoundedCounter<BOUND> {
    /// Entry-wise maximum of the rights matrix and of the decrements.
    fn merge(&mut self, other: &Self) {
        self.decrements.merge(&other.decrements);
        let same_keys = self.rights.len() == other.rights.len()
            && self
                .rights
                .iter()
                .zip(&other.rights)
                .all(|(a, b)| (a.0, a.1) == (b.0, b.1));
        if same_keys {
            for (mine, theirs) in self.rights.iter_mut().zip(&other.rights) {
                mine.2 = mine.2.max(theirs.2);
            }
            return;
        }
        let (a, b) = (&self.rights, &other.rights);
        let mut joined = SmallVec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match (a[i].0, a[i].1).cmp(&(b[j].0, b[j].1)) {
                std::cmp::Ordering::Less => {
                    joined.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    joined.push(b[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    joined.push((a[i].0, a[i].1, a[i].2.max(b[j].2)));
                    i += 1;
                    j += 1;
                }
            }
        }
        joined.extend_from_slice(&a[i..]);
        joined.extend_from_slice(&b[j..]);
        self.rights = joined;
    }
}

impl<const BOUND: i64> fmt::Debug for BoundedCounter<BOUND> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoundedCounter<{BOUND}>{{")?;
        for (from, to, n) in &self.rights {
            if from == to {
                write!(f, "+{from:?}:{n} ")?;
            } else {
                write!(f, "{from:?}→{to:?}:{n} ")?;
            }
        }
        write!(f, "-{:?}}}", self.decrements)
    }
}

// Serialized form: the rights as a sequence of (from, to, count) triples
// sorted by (from, to), then the decrements as a version vector. Sequences,
// not maps, so JSON carries them.

#[derive(Serialize)]
struct ReprOut<'a> {
    rights: &'a [Entry],
    decrements: &'a VersionVector,
}

#[derive(Deserialize)]
struct ReprIn {
    rights: Vec<Entry>,
    decrements: VersionVector,
}

impl<const BOUND: i64> Serialize for BoundedCounter<BOUND> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ReprOut {
            rights: &self.rights,
            decrements: &self.decrements,
        }
        .serialize(serializer)
    }
}

/// Rejects entries unsorted or repeated, counts of zero, and any replica
/// that gave or spent more rights than it received: no replica makes such
/// a state, and merging one could take the value below the bound. One pass
/// over the entries, then one over the replicas named.
impl<'de, const BOUND: i64> Deserialize<'de> for BoundedCounter<BOUND> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const TYPE_NAME: &str = "BoundedCounter";
        let repr = ReprIn::deserialize(deserializer)?;
        let mut balances: BTreeMap<ReplicaId, i128> = BTreeMap::new();
        let mut previous: Option<(ReplicaId, ReplicaId)> = None;
        for &(from, to, n) in &repr.rights {
            if previous.is_some_and(|p| p >= (from, to)) {
                return Err(invalid(TYPE_NAME, InvalidRule::Unsorted));
            }
            previous = Some((from, to));
            if n == 0 {
                return Err(invalid(TYPE_NAME, InvalidRule::ZeroCounter));
            }
            *balances.entry(to).or_default() += i128::from(n);
            if from != to {
                *balances.entry(from).or_default() -= i128::from(n);
            }
        }
        for (replica, spent) in repr.decrements.iter() {
            *balances.entry(replica).or_default() -= i128::from(spent);
        }
        if balances.values().any(|b| *b < 0) {
            return Err(invalid(TYPE_NAME, InvalidRule::RightsOverdrawn));
        }
        Ok(BoundedCounter {
            rights: repr.rights.into(),
            decrements: repr.decrements,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u32) -> ReplicaId {
        ReplicaId::from(n)
    }

    #[test]
    fn rights_follow_increments_and_transfers() {
        let mut c = BoundedCounter::new();
        c.inc(r(1), 10);
        c.transfer(r(1), r(2), 4).unwrap();
        assert_eq!((c.rights(r(1)), c.rights(r(2)), c.rights(r(3))), (6, 4, 0));
        c.try_dec(r(2), 4).unwrap();
        assert_eq!(c.rights(r(2)), 0);
        assert_eq!(c.value(), 6);
        assert_eq!(c.total_rights(), 6);
        let err = c.transfer(r(2), r(3), 1).unwrap_err();
        assert!(matches!(
            err,
            RightsError::Insufficient {
                available_here: 0,
                available_total: 6,
                ..
            }
        ));
        assert_eq!(
            c.transfer(r(1), r(1), 1),
            Err(RightsError::SelfTransfer { replica: r(1) })
        );
    }

    #[test]
    fn a_counter_starts_at_its_bound() {
        let mut c = BoundedCounter::<-100>::default();
        assert_eq!(c.value(), -100);
        c.inc(r(1), 100);
        c.try_dec(r(1), 150).unwrap_err();
        c.try_dec(r(1), 100).unwrap();
        assert_eq!(c.value(), -100);
    }

    #[test]
    fn a_decrement_delta_carries_the_rights_it_spent() {
        // Tokyo restocks and hands 3 to Frankfurt; Frankfurt sells them. A
        // third replica that hears only of the sale still reads 0, not -3.
        let mut tokyo = BoundedCounter::new();
        tokyo.inc(r(1), 3);
        let moved = tokyo.transfer(r(1), r(2), 3).unwrap();
        let mut frankfurt = BoundedCounter::new();
        frankfurt.merge(&moved);
        let sold = frankfurt.try_dec(r(2), 3).unwrap();
        let mut virginia = BoundedCounter::new();
        virginia.merge(&sold);
        assert_eq!(virginia.value(), 0);
    }

    #[test]
    fn wire_and_json_round_trip() {
        let mut c = BoundedCounter::new();
        c.inc(r(1), 7);
        c.inc(r(3), 2);
        c.transfer(r(1), r(2), 5).unwrap();
        c.try_dec(r(2), 1).unwrap();
        let back: BoundedCounter = crate::wire::decode(&crate::wire::encode(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let back: BoundedCounter =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn overdrawn_unsorted_and_zero_states_are_rejected() {
        let decode = |json: &str| {
            serde_json::from_str::<BoundedCounter>(json)
                .unwrap_err()
                .to_string()
        };
        let overdrawn = r#"{"rights":[[1,1,3],[1,2,4]],"decrements":[]}"#;
        assert!(
            decode(overdrawn).contains("rights"),
            "{}",
            decode(overdrawn)
        );
        let spent = r#"{"rights":[[1,1,3]],"decrements":[[1,4]]}"#;
        assert!(decode(spent).contains("rights"));
        let unsorted = r#"{"rights":[[2,2,3],[1,1,3]],"decrements":[]}"#;
        assert!(decode(unsorted).contains("order"));
        let zero = r#"{"rights":[[1,1,0]],"decrements":[]}"#;
        assert!(decode(zero).contains("0"));
    }
}
