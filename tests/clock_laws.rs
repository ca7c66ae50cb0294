//! Version vectors and causal contexts are join semilattices whose order
//! agrees with their join.

use std::cmp::Ordering;

use archipelago::clock::{CausalContext, Dot, ReplicaId, VersionVector};
use proptest::prelude::*;

fn vector() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0..6u32, 0..5u64), 0..6).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(r, c)| (ReplicaId::from(r), c))
            .collect()
    })
}

fn context() -> impl Strategy<Value = CausalContext> {
    prop::collection::vec((0..4u32, 1..8u64), 0..12).prop_map(|dots| {
        let mut ctx = CausalContext::new();
        for (r, c) in dots {
            ctx.insert(Dot::new(ReplicaId::from(r), c));
        }
        ctx
    })
}

fn joined(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #[test]
    fn version_vector_merge_is_a_join(a in vector(), b in vector(), c in vector()) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert!(ab.dominates(&a) && ab.dominates(&b));
    }

    /// `a <= b` exactly when joining `a` into `b` changes nothing, and
    /// `partial_cmp` is `None` exactly when neither dominates.
    #[test]
    fn version_vector_order_agrees_with_join(a in vector(), b in vector()) {
        let le = joined(&a, &b) == b;
        let ge = joined(&a, &b) == a;
        let expected = match (le, ge) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (false, false) => None,
        };
        prop_assert_eq!(a.partial_cmp(&b), expected);
        prop_assert_eq!(a.concurrent_with(&b), expected.is_none());
        prop_assert_eq!(b.dominates(&a), le);
    }

    #[test]
    fn version_vector_contains_what_it_counts(a in vector(), r in 0..6u32, c in 1..8u64) {
        let dot = Dot::new(ReplicaId::from(r), c);
        prop_assert_eq!(a.contains(dot), c <= a.get(ReplicaId::from(r)));
    }

    /// A context's join is the union of the dots it contains, and its form
    /// is canonical: equal dot sets give equal values.
    #[test]
    fn causal_context_merge_is_union(a in context(), b in context()) {
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert_eq!(&ab, &ba);
        for r in 0..4u32 {
            for c in 1..10u64 {
                let dot = Dot::new(ReplicaId::from(r), c);
                prop_assert_eq!(ab.contains(dot), a.contains(dot) || b.contains(dot));
            }
        }
        for dot in ab.cloud() {
            prop_assert!(dot.counter > ab.vector().get(dot.replica) + 1);
        }
        prop_assert_eq!(a.intersects(&b), a.dots().any(|d| b.contains(d)));
    }
}
