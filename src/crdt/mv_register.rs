//! A multi-value register: concurrent writes are all kept.
//!
//! ```
//! use archipelago::clock::ReplicaId;
//! use archipelago::crdt::{Crdt, MvRegister};
//!
//! let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
//! let mut a = MvRegister::new();
//! let mut b = MvRegister::new();
//! let da = a.write(tokyo, "draft by Aiko");
//! let db = b.write(frankfurt, "draft by Ben");
//! a.merge(&db);
//! b.merge(&da);
//! assert_eq!(a, b);
//! assert_eq!(a.values().count(), 2); // siblings, for the app to reconcile
//!
//! let merged = a.write(tokyo, "merged draft"); // replaces both siblings it saw
//! b.merge(&merged);
//! assert_eq!(b.values().collect::<Vec<_>>(), [&"merged draft"]);
//! ```

use serde::{Deserialize, Serialize};

use super::Crdt;
use crate::clock::{CausalContext, Dot, ReplicaId};
use crate::wire::{DELIMITED_LEN_TAG, InvalidRule, ValueBytes, ValueOf, invalid};

/// A register that keeps every concurrent write as a sibling.
///
/// Each value carries the dot of its write; a write replaces exactly the
/// siblings its replica had observed, so values written concurrently
/// elsewhere survive it until someone writes having seen them.
///
/// # Schema evolution
/// Since protocol 6 (storage format 5) each sibling's value is
/// **delimited**: a byte string of its own, read tolerantly, as the values
/// of a [`VersionSet`](crate::resolve::VersionSet) are (see its *Schema
/// evolution* section for the full table). Adding a trailing field marked
/// `#[serde(default)]` to `T` is safe while older builds still run: an
/// older value reads with the default, and a newer value read by an old
/// build keeps the bytes it does not know
/// ([`unknown_bytes`](MvRegister::unknown_bytes)) and ships them on.
/// Removing, reordering or retyping fields, a trailing field without a
/// default, or an enum variant added anywhere but at the end are not safe.
///
/// The binary encoding of the delimited layout starts with the byte
/// `255`, then the number of siblings, each `(dot, value bytes)`, then the
/// causal context. The older layout (what protocol-5 peers are sent and
/// format-4 stores hold, still decoded) starts with the number of
/// siblings, a bincode varint, which never starts with `255` (that byte is
/// reserved), so the first byte tells the layouts apart. Equal registers
/// encode to equal bytes. The human-readable form (JSON) is unchanged and
/// carries no unknown bytes.
///
/// ```
/// use archipelago::clock::ReplicaId;
/// use archipelago::crdt::MvRegister;
/// use archipelago::wire;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V1 { visits: u32 }
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V2 { visits: u32, #[serde(default)] nickname: Option<String> }
///
/// let mut new = MvRegister::new();
/// new.write(ReplicaId::new(1), V2 { visits: 4, nickname: Some("Aiko".into()) });
/// let bytes = wire::encode(&new)?;
/// let at_old: MvRegister<V1> = wire::decode(&bytes)?;
/// assert_eq!(at_old.values().collect::<Vec<_>>(), [&V1 { visits: 4 }]);
/// assert_eq!(wire::encode(&at_old)?, bytes, "the unknown field travels on");
/// # Ok::<(), wire::WireError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MvRegister<T> {
    /// Sorted by dot; every dot in `ctx`.
    siblings: Vec<(Dot, T)>,
    ctx: CausalContext,
    /// The bytes each sibling's value left unread, for the siblings that
    /// left any (usually none): sorted by dot, each dot a sibling's.
    unknown: Vec<(Dot, Box<[u8]>)>,
}

/// The human-readable form and the older binary layout, as derived before
/// values were delimited.
#[derive(Serialize)]
#[serde(rename = "MvRegister")]
struct ReprRef<'a, T> {
    siblings: &'a [(Dot, T)],
    ctx: &'a CausalContext,
}

#[derive(Deserialize)]
#[serde(rename = "MvRegister")]
struct Repr<T> {
    siblings: Vec<(Dot, T)>,
    ctx: CausalContext,
}

/// Accepts only what writes make, in one pass: siblings sorted by dot
/// without repeats, no dot with counter 0 (the context "contains" every
/// such dot, so a merge would drop the sibling: `⊥ ⊔ v ≠ v`), and every
/// dot in the context. (Two siblings of one replica are allowed: a state
/// fed deltas out of causal order can hold them until the delta that
/// replaced the older one arrives.)
impl<T> TryFrom<Repr<T>> for MvRegister<T> {
    type Error = InvalidRule;

    fn try_from(repr: Repr<T>) -> Result<Self, Self::Error> {
        let mut previous: Option<Dot> = None;
        for (dot, _) in &repr.siblings {
            if dot.counter == 0 {
                return Err(InvalidRule::ZeroCounter);
            }
            if let Some(p) = previous {
                if p == *dot {
                    return Err(InvalidRule::DuplicateDot);
                }
                if p > *dot {
                    return Err(InvalidRule::Unsorted);
                }
            }
            if !repr.ctx.contains(*dot) {
                return Err(InvalidRule::OutsideContext);
            }
            previous = Some(*dot);
        }
        Ok(MvRegister {
            siblings: repr.siblings,
            ctx: repr.ctx,
            unknown: Vec::new(),
        })
    }
}

impl<T: Serialize> Serialize for MvRegister<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if serializer.is_human_readable() || crate::wire::positional_crdt_values() {
            let repr = ReprRef {
                siblings: &self.siblings,
                ctx: &self.ctx,
            };
            return repr.serialize(serializer);
        }
        let mut tuple = serializer.serialize_tuple(3 + self.siblings.len())?;
        tuple.serialize_element(&DELIMITED_LEN_TAG)?;
        tuple.serialize_element(&(self.siblings.len() as u64))?;
        for (dot, value) in &self.siblings {
            let unknown = self.unknown_of(*dot);
            tuple.serialize_element(&(dot, ValueBytes(value, unknown)))?;
        }
        tuple.serialize_element(&self.ctx)?;
        tuple.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MvRegister<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let repr = Repr::<T>::deserialize(deserializer)?;
            return MvRegister::try_from(repr).map_err(|rule| invalid("MvRegister", rule));
        }
        // The first byte is read alone, to tell the delimited layout's tag
        // from the older layout's length.
        deserializer.deserialize_tuple(usize::MAX, BinaryVisitor(std::marker::PhantomData))
    }
}

struct BinaryVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for BinaryVisitor<T> {
    type Value = MvRegister<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a multi-value register")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("a register ends early");
        let first: u8 = seq.next_element()?.ok_or_else(missing)?;
        let delimited = first == DELIMITED_LEN_TAG;
        let count = if delimited {
            seq.next_element::<u64>()?.ok_or_else(missing)?
        } else {
            crate::wire::varint_rest(first, &mut seq)?
        };
        let mut siblings = Vec::with_capacity((count as usize).min(4));
        let mut unknown = Vec::new();
        for _ in 0..count {
            if delimited {
                let (dot, ValueOf(value, left)): (Dot, ValueOf<T>) =
                    seq.next_element()?.ok_or_else(missing)?;
                if !left.bytes().is_empty() {
                    unknown.push((dot, left.bytes().into()));
                }
                siblings.push((dot, value));
            } else {
                siblings.push(seq.next_element()?.ok_or_else(missing)?);
            }
        }
        let ctx = seq.next_element()?.ok_or_else(missing)?;
        let mut register = MvRegister::try_from(Repr { siblings, ctx })
            .map_err(|rule| invalid("MvRegister", rule))?;
        // Siblings are sorted by dot, so the unknown bytes are too.
        register.unknown = unknown;
        Ok(register)
    }
}

impl<T> MvRegister<T> {
    /// The bytes the value of the sibling written at `dot` left unread.
    fn unknown_of(&self, dot: Dot) -> &[u8] {
        self.unknown
            .binary_search_by_key(&dot, |(d, _)| *d)
            .map_or(&[], |at| &self.unknown[at].1)
    }

    /// The bytes of each sibling's value this build's `T` did not read,
    /// for the siblings whose value left any (none unless a newer build's
    /// `T`, with more trailing fields, wrote it): kept and re-sent after
    /// the value's own bytes (see *Schema evolution*).
    pub fn unknown_bytes(&self) -> impl Iterator<Item = (Dot, &[u8])> + '_ {
        self.unknown.iter().map(|(dot, bytes)| (*dot, &bytes[..]))
    }
}

impl<T: Clone> MvRegister<T> {
    /// A register never written.
    pub fn new() -> Self {
        MvRegister {
            siblings: Vec::new(),
            ctx: CausalContext::new(),
            unknown: Vec::new(),
        }
    }

    /// Writes `value` on behalf of `replica`, replacing every sibling this
    /// replica has observed; returns the delta.
    pub fn write(&mut self, replica: ReplicaId, value: T) -> Self {
        let dot = self.ctx.next_dot(replica);
        let mut delta_ctx = CausalContext::new();
        delta_ctx.insert(dot);
        for (d, _) in &self.siblings {
            delta_ctx.insert(*d);
        }
        self.siblings.clear();
        self.unknown.clear();
        self.siblings.push((dot, value.clone()));
        MvRegister {
            siblings: vec![(dot, value)],
            ctx: delta_ctx,
            unknown: Vec::new(),
        }
    }

    /// The current values: one, or several written concurrently, ordered by
    /// the dot of their write.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.siblings.iter().map(|(_, v)| v)
    }

    /// The values with the dots of their writes.
    pub fn siblings(&self) -> &[(Dot, T)] {
        &self.siblings
    }

    /// True when concurrent writes are waiting to be reconciled.
    pub fn is_conflicted(&self) -> bool {
        self.siblings.len() > 1
    }

    /// Every dot this register has seen.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}

impl<T: Clone> crate::crdt::Reset for MvRegister<T> {
    /// Removes every sibling this replica has observed; returns the delta
    /// (their dots, no value).
    fn reset(&mut self) -> Self {
        let mut ctx = CausalContext::new();
        for (d, _) in self.siblings.drain(..) {
            ctx.insert(d);
        }
        self.unknown.clear();
        MvRegister {
            siblings: Vec::new(),
            ctx,
            unknown: Vec::new(),
        }
    }
}

impl<T: Clone> Default for MvRegister<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Crdt for MvRegister<T> {
    fn merge(&mut self, other: &Self) {
        let their_ctx = &other.ctx;
        self.siblings.retain(|(dot, _)| {
            !their_ctx.contains(*dot) || other.siblings.iter().any(|(d, _)| d == dot)
        });
        let fresh: Vec<(Dot, T)> = other
            .siblings
            .iter()
            .filter(|(dot, _)| !self.ctx.contains(*dot))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            self.siblings.extend(fresh);
            self.siblings.sort_unstable_by_key(|(dot, _)| *dot);
        }
        self.ctx.merge(&other.ctx);
        if !self.unknown.is_empty() || !other.unknown.is_empty() {
            self.merge_unknown(&other.unknown);
        }
    }
}

impl<T> MvRegister<T> {
    /// Keeps the unknown bytes of the siblings left after a merge: a dot
    /// names one write, so its bytes are the same wherever they come from.
    fn merge_unknown(&mut self, theirs: &[(Dot, Box<[u8]>)]) {
        for (dot, bytes) in theirs {
            if self.unknown.iter().all(|(d, _)| d != dot) {
                self.unknown.push((*dot, bytes.clone()));
            }
        }
        let siblings = &self.siblings;
        self.unknown
            .retain(|(dot, _)| siblings.binary_search_by_key(dot, |(d, _)| *d).is_ok());
        self.unknown.sort_unstable_by_key(|(dot, _)| *dot);
        debug_assert!(
            self.unknown.windows(2).all(|w| w[0].0 < w[1].0),
            "one entry per sibling"
        );
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MvRegister<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvRegister")
            .field("siblings", &self.siblings)
            .field("ctx", &self.ctx)
            .finish()
    }
}
