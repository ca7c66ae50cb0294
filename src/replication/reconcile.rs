//! Range-based set reconciliation: anti-entropy whose bytes grow with the
//! difference between two replicas' tables, not with the tables.
//!
//! Each side keeps a [`RangeIndex`] of its table: every key, in key order,
//! with the fingerprint of its item (key and canonical state encoding, see
//! [`item_fingerprint`]). The fingerprint of a key range combines its
//! items' and costs O(log n). The initiator sends the fingerprint of the
//! whole key space; a side that finds a range's fingerprint differing from
//! its own splits that range into [`BRANCHING`] parts of equal item counts
//! and sends their fingerprints back, or, once it holds at most
//! [`ITEM_LIST_LEN_MAX`] items in it, lists their fingerprints. The side
//! that receives a list sees what it holds that the other lacks (its to
//! send) and answers with the fingerprints it lacks (the other side's to
//! send). Ranges that agree drop out; the rounds go on until neither side
//! has a differing range left, about 2 log_b(n / d) messages (Meyer,
//! "Range-Based Set Reconciliation", SRDS 2022; the message layout follows
//! Hoyte's Negentropy: skip, fingerprint and item-list ranges, each named
//! by its upper bound, the lower bound being the previous range's upper).
//!
//! The engine's anti-entropy reconciles this way with peers of protocol 6
//! (`replication::core::ranges`); with older peers it still compares
//! [`DIGEST_BUCKETS`](crate::replication::store::DIGEST_BUCKETS) fixed
//! digests. The `testing` feature exposes this module as
//! `archipelago::testing::reconcile` for benches and checks.
//!
//! ```
//! use archipelago::testing::reconcile::{Exchange, RangeIndex, item_fingerprint};
//!
//! let (mut ours, mut theirs) = (RangeIndex::new(), RangeIndex::new());
//! for k in 0u32..1000 {
//!     let key = k.to_be_bytes();
//!     ours.insert(&key, item_fingerprint(&key, b"state"))?;
//!     // They missed our write to key 7 and hold key 1000 we lack.
//!     let state: &[u8] = if k == 7 { b"older" } else { b"state" };
//!     theirs.insert(&key, item_fingerprint(&key, state))?;
//! }
//! theirs.insert(&1000u32.to_be_bytes(), item_fingerprint(&1000u32.to_be_bytes(), b"state"))?;
//!
//! let (mut initiator, first) = Exchange::initiate(&ours)?;
//! let mut responder = Exchange::respond();
//! let mut frame = Some(first);
//! let mut turn = 0;
//! while let Some(bytes) = frame {
//!     frame = if turn % 2 == 0 {
//!         responder.on_frame(&theirs, &bytes)?
//!     } else {
//!         initiator.on_frame(&ours, &bytes)?
//!     };
//!     turn += 1;
//! }
//! // Each side learned which of its keys to ship: key 7 both ways (a
//! // join settles it), key 1000 from them.
//! assert_eq!(initiator.learned().send, vec![Box::from(7u32.to_be_bytes())]);
//! let mut sent = responder.learned().send.clone();
//! sent.sort();
//! assert_eq!(sent, vec![Box::from(7u32.to_be_bytes()), Box::from(1000u32.to_be_bytes())]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Fingerprints: what they catch, and what an adversary can do
//! A range's fingerprint is [`Summary::fingerprint`]: the wrapping sum
//! mod 2⁶⁴ of its items' fingerprints and their count, mixed into 64 bits.
//! A sum (not a hash of the list) is what makes it incremental: an update
//! changes the sums on one root path, and a range's summary is the
//! difference of two prefix summaries. Item fingerprints are the store's
//! [`item_hash`](crate::replication::store::item_hash) (64-bit FNV-1a of
//! the key and of the state encoding) passed through a bijective mixer:
//! FNV-1a of short, similar keys is structured enough that sums of a few
//! of them collide (see the test `structured_keys_do_not_cancel`); mixed,
//! honest differences behave as random 64-bit values, so two differing
//! ranges share a fingerprint with probability about 2⁻⁶⁴ per comparison
//! (a 1M-key exchange compares under 10⁵ ranges).
//!
//! The hash is not keyed, so it is not safe against an adversary who
//! chooses values: FNV-1a collisions are easy to build, and so are sets of
//! items whose sums cancel (a k-sum problem, Wagner's algorithm). A client
//! able to write chosen states in two regions can thus make them keep
//! different states for its keys, unnoticed by anti-entropy, until another
//! write changes that range. It cannot make a region take data it would not
//! take otherwise (states still merge by their join), nor hide differences
//! in ranges it does not write. The 1024 bucket digests share this
//! weakness (same hash, same sums). The fix, when it is wanted: key
//! [`item_fingerprint`] with a per-deployment secret (SipHash); the index
//! stays incremental, since the key never changes.
//!
//! # Limits
//! A message holds at most [`RANGES_PER_MESSAGE_MAX`] ranges and
//! [`ITEMS_PER_MESSAGE_MAX`] item fingerprints, and a side writes at most
//! about [`BOUND_BYTES_PER_MESSAGE_MAX`] bytes of bounds: what does not fit
//! is answered with one fingerprint over the rest, which the next round
//! splits again. An exchange takes at most [`EXCHANGE_MESSAGES_MAX`]
//! messages per side. Decoding refuses anything beyond with a typed
//! [`ReconcileError`], after the `wire` decode budget (memory proportional
//! to the frame).

mod index;
mod protocol;
pub mod riblt;
#[cfg(test)]
mod tests;

pub use index::{INDEX_ITEMS_MAX, IndexFull, Items, RangeIndex};
pub use protocol::{Body, Exchange, Learned, Range, RangeMessage, reconcile};

use serde::{Deserialize, Serialize};

use crate::replication::store::{self, item_hash};
use crate::wire::WireError;

/// Parts a differing range is split into.
pub const BRANCHING: usize = 16;

/// The most items a side holds in a differing range for it to list them
/// instead of splitting the range. At least [`BRANCHING`], so each part of
/// a split holds an item.
pub const ITEM_LIST_LEN_MAX: usize = 2 * BRANCHING;

/// The most ranges one message holds (skipped ranges included).
pub const RANGES_PER_MESSAGE_MAX: usize = 32 * 1024;

/// The most item fingerprints one message holds (lists and needs together):
/// 512 KiB of them.
pub const ITEMS_PER_MESSAGE_MAX: usize = 64 * 1024;

/// The bytes of bounds a side writes into one message before it answers the
/// rest with one fingerprint, in bytes (one range past it may still be
/// written, so a key longer than this can still bound a range).
pub const BOUND_BYTES_PER_MESSAGE_MAX: usize = 1024 * 1024;

/// The most messages one side of an exchange receives before it gives up
/// with [`ReconcileError::TooManyMessages`]: an exchange of two 1M-key
/// tables that differ in every state takes 81 in all (the ignored test
/// `a_million_differences_end_within_the_message_limit`).
pub const EXCHANGE_MESSAGES_MAX: u32 = 256;

const _: () = assert!(ITEM_LIST_LEN_MAX >= BRANCHING);
const _: () = assert!(RANGES_PER_MESSAGE_MAX >= 4 * BRANCHING);
const _: () = assert!(ITEMS_PER_MESSAGE_MAX >= ITEM_LIST_LEN_MAX);

/// The fixed digest buckets today's anti-entropy compares, for benches
/// that weigh the two schemes.
pub const DIGEST_BUCKETS_TODAY: usize = store::DIGEST_BUCKETS;

/// The digest bucket of `key` in today's anti-entropy (below
/// [`DIGEST_BUCKETS_TODAY`]).
pub fn digest_bucket(key: &[u8]) -> usize {
    store::bucket_of(key)
}

/// A bijective 64-bit mixer (MurmurHash3's finalizer): every input bit
/// flips each output bit with probability about 1/2.
const fn mix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^= z >> 33;
    z
}

/// The fingerprint of one item: `key` (its `wire` encoding) holding
/// `state` (the canonical encoding of its value), as every replica computes
/// it alike. The store's item hash is mixed (murmur3's finaliser) because
/// wrapping sums of plain FNV-1a hashes cancel: keys {0, 29} and {1, 28}
/// sum alike.
pub fn item_fingerprint(key: &[u8], state: &[u8]) -> u64 {
    mix64(item_hash(key, state))
}

/// What a range's fingerprint is made of: the wrapping sum of its items'
/// fingerprints and their count. Summaries form a group, so the summary of
/// `[a, b)` is that of `[.., b)` minus that of `[.., a)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Wrapping sum of the item fingerprints.
    pub sum: u64,
    /// Number of items.
    pub count: u64,
}

impl Summary {
    /// The summary of one item.
    pub fn of(item: u64) -> Summary {
        Summary {
            sum: item,
            count: 1,
        }
    }

    /// The summary of two disjoint ranges together.
    #[must_use]
    pub fn plus(self, other: Summary) -> Summary {
        Summary {
            sum: self.sum.wrapping_add(other.sum),
            count: self.count.wrapping_add(other.count),
        }
    }

    /// The summary of this range without `part`, a range inside it.
    #[must_use]
    pub fn minus(self, part: Summary) -> Summary {
        debug_assert!(part.count <= self.count, "a part of the range");
        Summary {
            sum: self.sum.wrapping_sub(part.sum),
            count: self.count.wrapping_sub(part.count),
        }
    }

    /// The fingerprint sent for the range: sum and count mixed, so ranges
    /// of different sizes do not collide by arithmetic (a range missing one
    /// item of fingerprint 0 still differs). 0 for the empty range.
    pub fn fingerprint(self) -> Fingerprint {
        Fingerprint::from(mix64(self.sum ^ mix64(self.count)))
    }
}

/// A 64-bit fingerprint as it travels: 8 bytes, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 8]);

impl From<u64> for Fingerprint {
    fn from(value: u64) -> Self {
        Fingerprint(value.to_le_bytes())
    }
}

impl From<Fingerprint> for u64 {
    fn from(fp: Fingerprint) -> u64 {
        u64::from_le_bytes(fp.0)
    }
}

/// The upper end of a key range, exclusive: a key's encoding (or a prefix
/// of one: the shortest that separates two neighbouring keys), or the end
/// of the key space. The lower end is the previous range's upper, or the
/// empty key (below every key) for the first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    /// Below this byte string.
    Key(Box<[u8]>),
    /// Every key.
    End,
}

impl Bound {
    /// Whether `key` is below this bound (in the range it ends).
    pub fn is_above(&self, key: &[u8]) -> bool {
        match self {
            Bound::Key(bound) => key < &**bound,
            Bound::End => true,
        }
    }

    /// Its bytes in a message (0 for the end).
    fn len(&self) -> usize {
        match self {
            Bound::Key(bound) => bound.len(),
            Bound::End => 0,
        }
    }
}

/// Why a received reconciliation message is refused. The exchange it
/// belongs to is then over; nothing was learned from the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The frame does not decode as a message.
    #[error("undecodable reconciliation message: {0}")]
    Undecodable(#[from] WireError),
    /// More ranges than [`RANGES_PER_MESSAGE_MAX`].
    #[error("{ranges} ranges in one message (at most {RANGES_PER_MESSAGE_MAX})")]
    TooManyRanges {
        /// How many it holds.
        ranges: usize,
    },
    /// More item fingerprints than [`ITEMS_PER_MESSAGE_MAX`].
    #[error("{items} item fingerprints in one message (at most {ITEMS_PER_MESSAGE_MAX})")]
    TooManyItems {
        /// How many it holds.
        items: usize,
    },
    /// A range whose upper bound is not above the previous one's, or a
    /// range after the one that ends the key space.
    #[error("range {index} does not end above the one before it")]
    BoundsOutOfOrder {
        /// The range's position, from 0.
        index: usize,
    },
    /// The exchange went on past [`EXCHANGE_MESSAGES_MAX`] messages.
    #[error("more than {EXCHANGE_MESSAGES_MAX} messages in one exchange")]
    TooManyMessages,
    /// Our reply could not be encoded (a bound past the frame limit).
    #[error("cannot encode the reply: {0}")]
    Unencodable(WireError),
    /// A message after the exchange ended.
    #[error("a message after the exchange ended")]
    Finished,
}
