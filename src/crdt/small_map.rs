//! A map that lives inline while it is tiny.
//!
//! Every mutator of a map-like CRDT returns a delta holding one entry; a
//! `HashMap` for it costs an allocation and a hash. `SmallMap` keeps up to
//! [`INLINE_MAX`] entries in a small vector (the first one inline, no
//! allocation at all) and switches to a hash map past that. Carts and other
//! small sets get linear scans over a few entries instead of hashing.

use std::borrow::Borrow;
use std::hash::Hash;

use smallvec::SmallVec;

use crate::hash::{FastMap, ProcessHasher};

/// Most entries kept in the vector form.
pub(crate) const INLINE_MAX: usize = 8;

#[derive(Clone)]
pub(crate) enum SmallMap<K, V> {
    Inline(SmallVec<[(K, V); 1]>),
    Heap(FastMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Inline(SmallVec::new())
    }
}

impl<K, V> SmallMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Inline(v) => v.len(),
            SmallMap::Heap(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        match self {
            SmallMap::Inline(v) => Iter::Inline(v.iter()),
            SmallMap::Heap(m) => Iter::Heap(m.iter()),
        }
    }
}

impl<K: Hash + Eq, V> SmallMap<K, V> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        if n <= INLINE_MAX {
            SmallMap::Inline(SmallVec::with_capacity(n))
        } else {
            SmallMap::Heap(FastMap::with_capacity_and_hasher(n, ProcessHasher))
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Inline(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Heap(m) => m.get(key),
        }
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Inline(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Heap(m) => m.get_mut(key),
        }
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts, returning the value replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            SmallMap::Heap(m) => m.insert(key, value),
            SmallMap::Inline(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < INLINE_MAX {
                    v.push((key, value));
                    return None;
                }
                let mut map = FastMap::with_capacity_and_hasher(INLINE_MAX * 2, ProcessHasher);
                map.extend(v.drain(..));
                map.insert(key, value);
                *self = SmallMap::Heap(map);
                None
            }
        }
    }

    /// The value under `key`, inserting `make()` first if absent.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if let SmallMap::Inline(v) = self
            && v.len() >= INLINE_MAX
            && !v.iter().any(|(k, _)| *k == key)
        {
            let mut map = FastMap::with_capacity_and_hasher(INLINE_MAX * 2, ProcessHasher);
            map.extend(v.drain(..));
            *self = SmallMap::Heap(map);
        }
        match self {
            SmallMap::Heap(m) => m.entry(key).or_insert_with(make),
            SmallMap::Inline(v) => {
                let at = match v.iter().position(|(k, _)| *k == key) {
                    Some(at) => at,
                    None => {
                        v.push((key, make()));
                        v.len() - 1
                    }
                };
                &mut v[at].1
            }
        }
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Inline(v) => {
                let at = v.iter().position(|(k, _)| k.borrow() == key)?;
                Some(v.swap_remove(at).1)
            }
            SmallMap::Heap(m) => m.remove(key),
        }
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        match self {
            SmallMap::Inline(v) => v.retain(|(k, v)| keep(k, v)),
            SmallMap::Heap(m) => m.retain(|k, v| keep(k, v)),
        }
    }

    /// Room for `additional` more entries (moves to the hash form when they
    /// would not fit inline).
    pub(crate) fn reserve(&mut self, additional: usize) {
        match self {
            SmallMap::Heap(m) => m.reserve(additional),
            SmallMap::Inline(v) => {
                if v.len() + additional > INLINE_MAX {
                    let mut map =
                        FastMap::with_capacity_and_hasher(v.len() + additional, ProcessHasher);
                    map.extend(v.drain(..));
                    *self = SmallMap::Heap(map);
                }
            }
        }
    }

    /// Empties the map, handing each entry to `f`.
    pub(crate) fn drain_each(&mut self, mut f: impl FnMut(K, V)) {
        match std::mem::take(self) {
            SmallMap::Inline(v) => v.into_iter().for_each(|(k, v)| f(k, v)),
            SmallMap::Heap(m) => m.into_iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for SmallMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmallMap::Inline(v) => f
                .debug_map()
                .entries(v.iter().map(|(k, v)| (k, v)))
                .finish(),
            SmallMap::Heap(m) => f.debug_map().entries(m.iter()).finish(),
        }
    }
}

pub(crate) enum Iter<'a, K, V> {
    Inline(std::slice::Iter<'a, (K, V)>),
    Heap(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Inline(i) => i.next().map(|(k, v)| (k, v)),
            Iter::Heap(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Inline(i) => i.size_hint(),
            Iter::Heap(i) => i.size_hint(),
        }
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_the_heap_form_and_keeps_every_entry() {
        let mut m = SmallMap::default();
        for i in 0..20u32 {
            assert_eq!(m.insert(i, i * 2), None);
            assert_eq!(m.len(), i as usize + 1);
        }
        assert!(matches!(m, SmallMap::Heap(_)));
        for i in 0..20u32 {
            assert_eq!(m.get(&i), Some(&(i * 2)));
        }
        assert_eq!(m.insert(3, 7), Some(6));
        assert_eq!(m.remove(&3), Some(7));
        m.retain(|k, _| k % 2 == 0);
        assert_eq!(m.len(), 10);
        let mut small = SmallMap::default();
        for i in (0..20u32).step_by(2) {
            small.insert(i, i * 2);
        }
        assert!(small == m);
        assert!(m == small, "equality holds across the two forms");
        *small.get_or_insert_with(100, || 1) += 1;
        assert_eq!(small.get(&100), Some(&2));
    }
}
