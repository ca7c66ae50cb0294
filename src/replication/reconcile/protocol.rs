//! The messages of a reconciliation and the pure function that answers one:
//! no engine, no clock, no I/O; [`Exchange`] adds the bookkeeping of one
//! side (frames, message count, the end).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{
    BOUND_BYTES_PER_MESSAGE_MAX, BRANCHING, Bound, EXCHANGE_MESSAGES_MAX, Fingerprint,
    ITEM_LIST_LEN_MAX, ITEMS_PER_MESSAGE_MAX, RANGES_PER_MESSAGE_MAX, RangeIndex, ReconcileError,
};
use crate::replication::store::Key;
use crate::wire::{self, WireError};

/// Items of ours a [`Body::Need`] range may make us walk, a bound far above
/// the [`ITEM_LIST_LEN_MAX`] we listed there (writes may have landed in the
/// range since): a peer cannot make us walk the table with needs.
const NEED_WALK_ITEMS_MAX: usize = 4 * ITEM_LIST_LEN_MAX;

/// The limits a reply is written within: the message limits, smaller in
/// tests (so that deferring the rest is exercised on small tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) ranges: usize,
    pub(super) items: usize,
    pub(super) bound_bytes: usize,
}

impl Limits {
    pub(super) const MESSAGE: Limits = Limits {
        ranges: RANGES_PER_MESSAGE_MAX,
        items: ITEMS_PER_MESSAGE_MAX,
        bound_bytes: BOUND_BYTES_PER_MESSAGE_MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::MESSAGE
    }
}

/// Ranges a reply keeps free for the fingerprint over what it defers (and
/// the skip before it).
const DEFERRED_RANGES: usize = 2;

/// What a message says of one key range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Nothing to do here (the ranges agreed, or were settled).
    Skip,
    /// The sender's fingerprint of the range: compare it with yours.
    Compare(Fingerprint),
    /// The fingerprints of every item the sender holds in the range: ship
    /// what you hold beyond them, and answer with what you lack.
    Items(Vec<Fingerprint>),
    /// Of the items listed for this range, the ones the sender lacks: ship
    /// them. Ends the range.
    Need(Vec<Fingerprint>),
}

/// One key range of a message: from the previous range's upper bound (the
/// empty key for the first) to `upper`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Its upper bound, exclusive.
    pub upper: Bound,
    /// What it says of the range.
    pub body: Body,
}

/// One message of a reconciliation: ranges in key order, the key space
/// after the last one skipped. An empty message ends the exchange.
///
/// Only [`initiate`](RangeMessage::initiate), [`reconcile`] and
/// [`decode`](RangeMessage::decode) make one, so every message holds at
/// most [`RANGES_PER_MESSAGE_MAX`] ranges and [`ITEMS_PER_MESSAGE_MAX`]
/// item fingerprints, its bounds rising.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RangeMessage {
    ranges: Vec<Range>,
}

impl RangeMessage {
    /// The first message of an exchange: the fingerprint of every item, or
    /// the list of them when there are at most [`ITEM_LIST_LEN_MAX`].
    pub fn initiate(index: &RangeIndex) -> RangeMessage {
        let all = index.below(&Bound::End);
        let body = if all.count as usize <= ITEM_LIST_LEN_MAX {
            Body::Items(list(index, &[], &Bound::End))
        } else {
            Body::Compare(all.fingerprint())
        };
        RangeMessage {
            ranges: vec![Range {
                upper: Bound::End,
                body,
            }],
        }
    }

    /// Its ranges, in key order.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Whether it ends the exchange: no range left to talk about.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Item fingerprints it carries (lists and needs).
    pub fn items(&self) -> usize {
        self.ranges
            .iter()
            .map(|r| match &r.body {
                Body::Items(list) | Body::Need(list) => list.len(),
                Body::Skip | Body::Compare(_) => 0,
            })
            .sum()
    }

    /// Its frame, through `wire`.
    ///
    /// # Errors
    /// [`WireError::TooLarge`] past the frame limit (bounds of keys of
    /// tens of megabytes).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        wire::encode(self)
    }

    /// Decodes a frame from a peer, treating it as hostile: within the
    /// `wire` decode budget, then checked against the limits and the order
    /// of bounds.
    ///
    /// # Errors
    /// [`ReconcileError::Undecodable`], [`ReconcileError::TooManyRanges`],
    /// [`ReconcileError::TooManyItems`] or
    /// [`ReconcileError::BoundsOutOfOrder`]. Never panics.
    pub fn decode(frame: &[u8]) -> Result<RangeMessage, ReconcileError> {
        let ranges: Vec<Range> = wire::decode(frame)?;
        let message = RangeMessage { ranges };
        message.check()?;
        Ok(message)
    }

    /// Checks the limits and that bounds rise strictly, the end last.
    fn check(&self) -> Result<(), ReconcileError> {
        let ranges = self.ranges.len();
        if ranges > RANGES_PER_MESSAGE_MAX {
            return Err(ReconcileError::TooManyRanges { ranges });
        }
        let items = self.items();
        if items > ITEMS_PER_MESSAGE_MAX {
            return Err(ReconcileError::TooManyItems { items });
        }
        let mut lower: Option<&[u8]> = Some(&[]);
        for (index, range) in self.ranges.iter().enumerate() {
            let Some(below) = lower else {
                return Err(ReconcileError::BoundsOutOfOrder { index });
            };
            lower = match &range.upper {
                Bound::Key(key) if **key > *below => Some(key),
                Bound::Key(_) => return Err(ReconcileError::BoundsOutOfOrder { index }),
                Bound::End => None,
            };
        }
        Ok(())
    }
}

/// What one side learned in an exchange.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    /// Our keys whose states the peer lacks (it lacks the key, or holds
    /// another state of it): ship them. Each key once.
    pub send: Vec<Key>,
    /// Fingerprints of the peer's items we lack: the peer ships them (it
    /// learns so from our [`Body::Need`]). Known only to the side that
    /// received the peer's list.
    pub need: Vec<Fingerprint>,
    /// The keys in `send`, so a peer repeating itself cannot grow it.
    sending: HashSet<Key>,
}

impl Learned {
    fn send(&mut self, key: &[u8]) {
        if !self.sending.contains(key) {
            self.sending.insert(key.into());
            self.send.push(key.into());
        }
    }
}

/// Answers `message` from the items of `index`: learns what to ship into
/// `learned`, and returns the reply (empty when nothing is left to say: the
/// exchange is over once it is sent).
///
/// The reply stays within the message limits: past them, the rest of the
/// ranges is answered with one fingerprint, which the next round splits
/// again. The first range that needs an answer always gets it, so each
/// round makes progress.
pub fn reconcile(
    index: &RangeIndex,
    message: &RangeMessage,
    learned: &mut Learned,
) -> RangeMessage {
    reconcile_within(index, message, learned, Limits::MESSAGE)
}

/// [`reconcile`], the reply within `limits` (at most the message limits).
pub(super) fn reconcile_within(
    index: &RangeIndex,
    message: &RangeMessage,
    learned: &mut Learned,
    limits: Limits,
) -> RangeMessage {
    debug_assert!(limits.ranges <= RANGES_PER_MESSAGE_MAX && limits.items <= ITEMS_PER_MESSAGE_MAX);
    let mut reply = Reply {
        limits,
        ..Reply::default()
    };
    let mut lower: &[u8] = &[];
    for range in &message.ranges {
        let upper = &range.upper;
        let answered = match &range.body {
            Body::Skip => {
                reply.skip(upper);
                true
            }
            Body::Compare(theirs) => compare(index, lower, upper, *theirs, &mut reply),
            Body::Items(theirs) => take_list(index, lower, upper, theirs, learned, &mut reply),
            Body::Need(wanted) => {
                give(index, lower, upper, wanted, learned);
                reply.skip(upper);
                true
            }
        };
        if !answered {
            let last = &message.ranges.last().expect("a range was read").upper;
            let rest = index.summary(lower, last);
            reply.push(last.clone(), Body::Compare(rest.fingerprint()));
            break;
        }
        match upper {
            Bound::Key(key) => lower = key,
            Bound::End => break, // the last range (checked)
        }
    }
    reply.finish()
}

/// A range whose fingerprint the peer sent: skipped when ours agrees, else
/// our list of it or its split. False when the reply has no room for it.
fn compare<'a>(
    index: &RangeIndex,
    lower: &[u8],
    upper: &'a Bound,
    theirs: Fingerprint,
    reply: &mut Reply<'a>,
) -> bool {
    let mine = index.summary(lower, upper);
    if mine.fingerprint() == theirs {
        reply.skip(upper);
        return true;
    }
    let count = mine.count as usize;
    if count <= ITEM_LIST_LEN_MAX {
        if !reply.fits(1, count, upper.len()) {
            return false;
        }
        reply.push(upper.clone(), Body::Items(list(index, lower, upper)));
        return true;
    }
    split(index, lower, upper, count, reply)
}

/// Splits a range holding `count` of our items (more than
/// [`ITEM_LIST_LEN_MAX`]) into [`BRANCHING`] parts of equal counts, each
/// with its fingerprint, each bounded by the shortest prefix of its first
/// key above the key before it.
fn split(
    index: &RangeIndex,
    lower: &[u8],
    upper: &Bound,
    count: usize,
    reply: &mut Reply<'_>,
) -> bool {
    debug_assert!(count > ITEM_LIST_LEN_MAX && ITEM_LIST_LEN_MAX >= BRANCHING);
    let start = index.below_key(lower).count as usize;
    let mut cuts: SmallVec<[(usize, &[u8]); BRANCHING]> = SmallVec::new();
    let mut bytes = upper.len();
    for part in 1..BRANCHING {
        let rank = start + count * part / BRANCHING;
        let (Some(before), Some(first)) = (index.key_at(rank - 1), index.key_at(rank)) else {
            debug_assert!(false, "ranks inside the range");
            return false;
        };
        let bound = separator(before, first);
        bytes += bound.len();
        cuts.push((rank, bound));
    }
    if !reply.fits(BRANCHING, 0, bytes) {
        return false;
    }
    let mut below = index.first(start);
    for (rank, bound) in cuts {
        let upto = index.first(rank);
        reply.push(
            Bound::Key(bound.into()),
            Body::Compare(upto.minus(below).fingerprint()),
        );
        below = upto;
    }
    let last = index.below(upper).minus(below);
    reply.push(upper.clone(), Body::Compare(last.fingerprint()));
    true
}

/// The shortest prefix of `next` above `before` (`before < next`): every
/// key between them sorts the same against it as against `next`.
fn separator<'a>(before: &[u8], next: &'a [u8]) -> &'a [u8] {
    debug_assert!(before < next);
    let common = before.iter().zip(next).take_while(|(a, b)| a == b).count();
    &next[..(common + 1).min(next.len())]
}

/// The peer's list of a range: what we hold beyond it goes to `send`; what
/// it holds that we lack, to `need` and to a [`Body::Need`] answer. False
/// when the reply has no room for the answer.
fn take_list<'a>(
    index: &RangeIndex,
    lower: &[u8],
    upper: &'a Bound,
    theirs: &[Fingerprint],
    learned: &mut Learned,
    reply: &mut Reply<'a>,
) -> bool {
    if !reply.fits(1, theirs.len(), upper.len()) {
        return false;
    }
    // Sized by the list, not by its claims: at most ITEMS_PER_MESSAGE_MAX.
    let mut unmatched: HashMap<u64, ()> = theirs.iter().map(|&fp| (u64::from(fp), ())).collect();
    for (key, item) in index.items(lower, upper) {
        if unmatched.remove(&item).is_none() {
            learned.send(key);
        }
    }
    let need: Vec<Fingerprint> = theirs
        .iter()
        .filter(|&&fp| unmatched.remove(&u64::from(fp)).is_some())
        .copied()
        .collect();
    if need.is_empty() {
        reply.skip(upper);
    } else {
        learned.need.extend_from_slice(&need);
        reply.push(upper.clone(), Body::Need(need));
    }
    true
}

/// The peer lacks these of the items we listed for the range: ship them.
fn give(
    index: &RangeIndex,
    lower: &[u8],
    upper: &Bound,
    wanted: &[Fingerprint],
    learned: &mut Learned,
) {
    let wanted: HashSet<u64> = wanted.iter().map(|&fp| u64::from(fp)).collect();
    for (key, item) in index.items(lower, upper).take(NEED_WALK_ITEMS_MAX) {
        if wanted.contains(&item) {
            learned.send(key);
        }
    }
}

/// Our fingerprints of every item in `[lower, upper)`.
fn list(index: &RangeIndex, lower: &[u8], upper: &Bound) -> Vec<Fingerprint> {
    index
        .items(lower, upper)
        .map(|(_, item)| Fingerprint::from(item))
        .collect()
}

/// A reply being written: skips merged (a run of skipped ranges is one
/// range, a trailing one none), within the message limits.
#[derive(Default)]
struct Reply<'a> {
    limits: Limits,
    ranges: Vec<Range>,
    items: usize,
    bound_bytes: usize,
    /// The upper bound of the skipped ranges since the last range written.
    skip: Option<&'a Bound>,
}

impl<'a> Reply<'a> {
    fn skip(&mut self, upper: &'a Bound) {
        self.skip = Some(upper);
    }

    /// Whether `ranges` more ranges, with `items` fingerprints and `bytes`
    /// of bounds, fit (always, for the first range written), leaving room
    /// for a fingerprint over what is deferred.
    fn fits(&self, ranges: usize, items: usize, bytes: usize) -> bool {
        let skip = usize::from(self.skip.is_some());
        let limits = self.limits;
        self.ranges.is_empty() && ranges + skip + DEFERRED_RANGES <= limits.ranges
            || self.ranges.len() + skip + ranges + DEFERRED_RANGES <= limits.ranges
                && self.items + items <= limits.items
                && self.bound_bytes + bytes <= limits.bound_bytes
    }

    fn push(&mut self, upper: Bound, body: Body) {
        if let Some(skipped) = self.skip.take() {
            self.bound_bytes += skipped.len();
            self.ranges.push(Range {
                upper: skipped.clone(),
                body: Body::Skip,
            });
        }
        if let Body::Items(list) | Body::Need(list) = &body {
            self.items += list.len();
        }
        self.bound_bytes += upper.len();
        self.ranges.push(Range { upper, body });
    }

    fn finish(self) -> RangeMessage {
        let message = RangeMessage {
            ranges: self.ranges,
        };
        debug_assert_eq!(message.check(), Ok(()), "a reply within the limits");
        message
    }
}

/// One side of an exchange: takes the peer's frames, answers them, counts
/// them, and keeps what it learned.
#[derive(Debug, Default)]
pub struct Exchange {
    limits: Limits,
    learned: Learned,
    received: u32,
    finished: bool,
}

impl Exchange {
    /// Starts an exchange: the side and its first frame.
    ///
    /// # Errors
    /// As [`RangeMessage::encode`].
    pub fn initiate(index: &RangeIndex) -> Result<(Exchange, Vec<u8>), WireError> {
        let frame = RangeMessage::initiate(index).encode()?;
        Ok((Exchange::default(), frame))
    }

    /// The side that answers a peer's first frame.
    pub fn respond() -> Exchange {
        Exchange::default()
    }

    /// Answers a frame of the peer from `index`: the frame to send back,
    /// or `None` when the peer ended the exchange. A reply that is an
    /// empty message ends it too: nothing more is expected.
    ///
    /// # Errors
    /// A [`ReconcileError`] for a frame that is refused (nothing is learned
    /// from it) or that comes after the end or past
    /// [`EXCHANGE_MESSAGES_MAX`]; the exchange is then over.
    pub fn on_frame(
        &mut self,
        index: &RangeIndex,
        frame: &[u8],
    ) -> Result<Option<Vec<u8>>, ReconcileError> {
        if self.finished {
            return Err(ReconcileError::Finished);
        }
        self.received += 1;
        if self.received > EXCHANGE_MESSAGES_MAX {
            self.finished = true;
            return Err(ReconcileError::TooManyMessages);
        }
        let message = RangeMessage::decode(frame).inspect_err(|_| self.finished = true)?;
        if message.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        let reply = reconcile_within(index, &message, &mut self.learned, self.limits);
        self.finished = reply.is_empty();
        let frame = reply.encode().map_err(|error| {
            self.finished = true;
            ReconcileError::Unencodable(error)
        })?;
        Ok(Some(frame))
    }

    /// This side, writing its replies within `limits` (tests).
    #[cfg(test)]
    pub(super) fn with_limits(mut self, limits: Limits) -> Exchange {
        self.limits = limits;
        self
    }

    /// What it learned so far.
    pub fn learned(&self) -> &Learned {
        &self.learned
    }

    /// Frames received from the peer.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Whether the exchange is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}
