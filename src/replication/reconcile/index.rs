//! The index reconciliation reads: a table's keys in key order, each with
//! its item fingerprint, in a treap whose nodes hold the sum and count of
//! their subtree, so the fingerprint of any key range costs two walks from
//! the root (O(log n)), not a walk over the range.

use std::hash::{BuildHasher, RandomState};

use smallvec::SmallVec;

use super::{Bound, Summary};
use crate::replication::store::Key;

/// Items a [`RangeIndex`] holds at most: node links are `u32`, one value is
/// kept free as the null link.
pub const INDEX_ITEMS_MAX: usize = (u32::MAX - 1) as usize;

/// The null link.
const NIL: u32 = u32::MAX;

/// Nodes on the stack of a walk before it spills to the heap: a treap of a
/// billion items is about 60 deep.
type Path = SmallVec<[u32; 64]>;

/// One item and the summary of its subtree.
#[derive(Clone, Debug)]
struct Node {
    key: Key,
    /// The key's first 8 bytes (zero-padded), big-endian: most comparisons
    /// end here, without reading the key from the heap.
    prefix: u64,
    /// The item's fingerprint ([`item_fingerprint`](super::item_fingerprint)).
    item: u64,
    /// Heap order: a parent's priority is at least its children's. Drawn
    /// at random, never from the key, so no choice of keys deepens the tree.
    priority: u64,
    left: u32,
    right: u32,
    /// Wrapping sum of the items of this subtree.
    sum: u64,
    /// Items in this subtree.
    count: u32,
}

/// The index over one table's items: every key with its item fingerprint,
/// in key order (the byte order of the keys' `wire` encodings, which every
/// replica computes alike).
///
/// Inserting, updating or removing an item costs O(log n) expected; so do
/// [`summary`](RangeIndex::summary) of any range and
/// [`key_at`](RangeIndex::key_at). The shape is random (each index draws
/// its own priorities), its summaries are not: two indexes holding the same
/// items give every range the same [`Summary`].
#[derive(Clone, Debug)]
pub struct RangeIndex {
    nodes: Vec<Node>,
    /// Slots of removed nodes, reused first.
    free: Vec<u32>,
    root: u32,
    /// State of the xorshift generator behind the priorities.
    rng: u64,
}

/// An index that is full: [`INDEX_ITEMS_MAX`] items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the range index holds its maximum of {INDEX_ITEMS_MAX} items")]
pub struct IndexFull;

impl Default for RangeIndex {
    fn default() -> Self {
        RangeIndex::new()
    }
}

impl RangeIndex {
    /// An empty index.
    pub fn new() -> Self {
        // Any odd nonzero state; the process's random hasher keys it.
        let rng = RandomState::new().hash_one(0x5eed_u64) | 1;
        RangeIndex {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            rng,
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.count(self.root) as usize
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.root == NIL
    }

    /// Sets the fingerprint of `key` to `item`, adding the key if absent.
    ///
    /// # Errors
    /// [`IndexFull`] when the key is new and the index holds
    /// [`INDEX_ITEMS_MAX`] items; the index is unchanged.
    pub fn insert(&mut self, key: &[u8], item: u64) -> Result<(), IndexFull> {
        if let Some(old) = self.get(key) {
            // The key stays where it is: every subtree on its path changes
            // by the same difference.
            let delta = item.wrapping_sub(old);
            let prefix = prefix_of(key);
            let mut t = self.root;
            while t != NIL {
                let node = &mut self.nodes[t as usize];
                node.sum = node.sum.wrapping_add(delta);
                match node.order(key, prefix) {
                    std::cmp::Ordering::Less => t = node.left,
                    std::cmp::Ordering::Greater => t = node.right,
                    std::cmp::Ordering::Equal => {
                        node.item = item;
                        break;
                    }
                }
            }
            return Ok(());
        }
        if self.len() >= INDEX_ITEMS_MAX {
            return Err(IndexFull);
        }
        let node = Node {
            key: key.into(),
            prefix: prefix_of(key),
            item,
            priority: self.next_priority(),
            left: NIL,
            right: NIL,
            sum: item,
            count: 1,
        };
        let n = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let (less, rest) = self.split(self.root, key, prefix_of(key));
        let left = self.merge(less, n);
        self.root = self.merge(left, rest);
        debug_assert_eq!(self.get(key), Some(item));
        Ok(())
    }

    /// Removes `key`; false when it was absent.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        self.root = self.remove_from(self.root, key);
        true
    }

    /// The fingerprint of `key`, if held.
    pub fn get(&self, key: &[u8]) -> Option<u64> {
        let prefix = prefix_of(key);
        let mut t = self.root;
        while t != NIL {
            let node = &self.nodes[t as usize];
            match node.order(key, prefix) {
                std::cmp::Ordering::Less => t = node.left,
                std::cmp::Ordering::Greater => t = node.right,
                std::cmp::Ordering::Equal => return Some(node.item),
            }
        }
        None
    }

    /// The summary of the items with keys in `[lower, upper)`.
    pub fn summary(&self, lower: &[u8], upper: &Bound) -> Summary {
        self.below(upper).minus(self.below_key(lower))
    }

    /// The summary of the items below `bound` (all of them for
    /// [`Bound::End`]).
    pub fn below(&self, bound: &Bound) -> Summary {
        match bound {
            Bound::Key(key) => self.below_key(key),
            Bound::End => self.subtree(self.root),
        }
    }

    /// The summary of the items with keys below `key`.
    pub fn below_key(&self, key: &[u8]) -> Summary {
        let prefix = prefix_of(key);
        let mut acc = Summary::default();
        let mut t = self.root;
        while t != NIL {
            let node = &self.nodes[t as usize];
            if node.order(key, prefix).is_gt() {
                acc = acc
                    .plus(self.subtree(node.left))
                    .plus(Summary::of(node.item));
                t = node.right;
            } else {
                t = node.left;
            }
        }
        acc
    }

    /// The summary of the first `rank` items in key order.
    pub fn first(&self, rank: usize) -> Summary {
        debug_assert!(rank <= self.len());
        let mut acc = Summary::default();
        let mut rank = rank as u64;
        let mut t = self.root;
        while t != NIL && rank > 0 {
            let node = &self.nodes[t as usize];
            let left = u64::from(self.count(node.left));
            if rank <= left {
                t = node.left;
            } else {
                acc = acc
                    .plus(self.subtree(node.left))
                    .plus(Summary::of(node.item));
                rank -= left + 1;
                t = node.right;
            }
        }
        acc
    }

    /// The key of the item at `rank` (from 0) in key order.
    pub fn key_at(&self, rank: usize) -> Option<&[u8]> {
        let mut rank = u64::try_from(rank).ok()?;
        let mut t = self.root;
        while t != NIL {
            let node = &self.nodes[t as usize];
            let left = u64::from(self.count(node.left));
            match rank.cmp(&left) {
                std::cmp::Ordering::Less => t = node.left,
                std::cmp::Ordering::Equal => return Some(&node.key),
                std::cmp::Ordering::Greater => {
                    rank -= left + 1;
                    t = node.right;
                }
            }
        }
        None
    }

    /// The items with keys in `[lower, upper)`, in key order, with their
    /// fingerprints.
    pub fn items<'a>(&'a self, lower: &[u8], upper: &'a Bound) -> Items<'a> {
        let prefix = prefix_of(lower);
        let mut stack = Path::new();
        let mut t = self.root;
        while t != NIL {
            let node = &self.nodes[t as usize];
            if node.order(lower, prefix).is_le() {
                stack.push(t);
                t = node.left;
            } else {
                t = node.right;
            }
        }
        Items {
            index: self,
            stack,
            upper,
        }
    }

    fn count(&self, t: u32) -> u32 {
        if t == NIL {
            0
        } else {
            self.nodes[t as usize].count
        }
    }

    fn subtree(&self, t: u32) -> Summary {
        if t == NIL {
            return Summary::default();
        }
        let node = &self.nodes[t as usize];
        Summary {
            sum: node.sum,
            count: u64::from(node.count),
        }
    }

    /// Recomputes the sum and count of `t` from its children.
    fn pull(&mut self, t: u32) {
        let node = &self.nodes[t as usize];
        let (left, right) = (self.subtree(node.left), self.subtree(node.right));
        let all = left.plus(right).plus(Summary::of(node.item));
        let node = &mut self.nodes[t as usize];
        node.sum = all.sum;
        // At most INDEX_ITEMS_MAX, checked on insert.
        node.count = all.count as u32;
    }

    /// Splits the subtree `t` into the keys below `key` and the rest.
    fn split(&mut self, t: u32, key: &[u8], prefix: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].order(key, prefix).is_gt() {
            let (less, rest) = self.split(self.nodes[t as usize].right, key, prefix);
            self.nodes[t as usize].right = less;
            self.pull(t);
            (t, rest)
        } else {
            let (less, rest) = self.split(self.nodes[t as usize].left, key, prefix);
            self.nodes[t as usize].left = rest;
            self.pull(t);
            (less, t)
        }
    }

    /// Joins two subtrees, every key of `a` below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].priority >= self.nodes[b as usize].priority {
            let right = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = right;
            self.pull(a);
            a
        } else {
            let left = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = left;
            self.pull(b);
            b
        }
    }

    /// Removes `key` (held) from the subtree `t`; returns its new root.
    fn remove_from(&mut self, t: u32, key: &[u8]) -> u32 {
        debug_assert_ne!(t, NIL, "the key is held");
        let node = &self.nodes[t as usize];
        match node.order(key, prefix_of(key)) {
            std::cmp::Ordering::Less => {
                let left = self.remove_from(node.left, key);
                self.nodes[t as usize].left = left;
                self.pull(t);
                t
            }
            std::cmp::Ordering::Greater => {
                let right = self.remove_from(node.right, key);
                self.nodes[t as usize].right = right;
                self.pull(t);
                t
            }
            std::cmp::Ordering::Equal => {
                let (left, right) = (node.left, node.right);
                let node = &mut self.nodes[t as usize];
                node.key = Key::default(); // frees the key now
                node.left = NIL;
                node.right = NIL;
                self.free.push(t);
                self.merge(left, right)
            }
        }
    }

    fn next_priority(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

impl Node {
    /// How `key` (whose [`prefix_of`] is `prefix`) sorts against this
    /// node's key.
    #[inline]
    fn order(&self, key: &[u8], prefix: u64) -> std::cmp::Ordering {
        prefix.cmp(&self.prefix).then_with(|| key.cmp(&self.key))
    }
}

/// The first 8 bytes of `key`, zero-padded, big-endian. When two keys'
/// prefixes differ, they sort as their prefixes do (a shorter key padded
/// with zeros sorts below the longer one it is a prefix of, or equal to
/// it: then the keys decide).
fn prefix_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// The items of a key range in key order: see [`RangeIndex::items`].
pub struct Items<'a> {
    index: &'a RangeIndex,
    /// The nodes still to visit, innermost last: each is above the range's
    /// lower bound, and so is its right subtree.
    stack: Path,
    upper: &'a Bound,
}

impl<'a> Iterator for Items<'a> {
    type Item = (&'a [u8], u64);

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.stack.pop()?;
        let node = &self.index.nodes[t as usize];
        if !self.upper.is_above(&node.key) {
            self.stack.clear();
            return None;
        }
        let mut u = node.right;
        while u != NIL {
            self.stack.push(u);
            u = self.index.nodes[u as usize].left;
        }
        Some((&node.key, node.item))
    }
}
