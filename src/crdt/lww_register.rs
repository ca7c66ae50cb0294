//! A last-writer-wins register.
//!
//! ```
//! use archipelago::clock::{Hlc, ManualClock, ReplicaId};
//! use archipelago::crdt::{Crdt, LwwRegister};
//!
//! let wall = ManualClock::new(1_000);
//! let tokyo = Hlc::with_clock(ReplicaId::new(1), wall.clone());
//! let frankfurt = Hlc::with_clock(ReplicaId::new(2), wall.clone());
//!
//! let mut a = LwwRegister::new();
//! let mut b = LwwRegister::new();
//! let da = a.set(tokyo.stamp(), "blue");
//! wall.advance(1);
//! let db = b.set(frankfurt.stamp(), "green");
//! a.merge(&db);
//! b.merge(&da);
//! assert_eq!(a, b);
//! assert_eq!(a.get(), Some(&"green")); // the later write
//! ```

use serde::{Deserialize, Serialize};

use super::Crdt;
use crate::clock::Stamp;
use crate::wire::{InvalidRule, Unknown, ValueBytes, ValueOf, invalid};

/// A single value; the write with the highest [`Stamp`] wins.
///
/// Stamps order by hybrid-logical-clock time, then by replica, so every
/// replica picks the same winner. Writes that happened concurrently are
/// silently lost to the winner: use [`MvRegister`](super::MvRegister) or a
/// resolver when that matters.
///
/// # Schema evolution
/// Since protocol 6 (storage format 5) the value is **delimited**: a byte
/// string of its own inside the register, read tolerantly, as the values
/// of a [`VersionSet`](crate::resolve::VersionSet) are (see its *Schema
/// evolution* section for the full table). Adding a trailing field marked
/// `#[serde(default)]` to `T` is safe while older builds still run: an
/// older value reads with the default, and a newer value read by an old
/// build keeps the bytes it does not know
/// ([`unknown_bytes`](LwwRegister::unknown_bytes)) and ships them on, so
/// the field reaches the next new build. Removing, reordering or retyping
/// fields, a trailing field without a default, or an enum variant added
/// anywhere but at the end are not safe. A value an old build *writes*
/// has only the old fields (it replaced the one that carried the new
/// field).
///
/// The binary encoding: the first byte says the layout, `0` unset, `1` the
/// older layout (the stamp, then the value positionally: what protocol-5
/// peers are sent and format-4 stores hold, still decoded), `2` delimited
/// (the stamp, then the value's bytes, then any it kept unread). An older
/// encoding can never start with `2`: it was the tag of an `Option`,
/// which bincode writes as `0` or `1`. Equal registers encode to equal
/// bytes. The human-readable form (JSON) is unchanged,
/// `{"entry": [stamp, value]}`, and carries no unknown bytes.
///
/// ```
/// use archipelago::clock::{Hlc, ManualClock, ReplicaId};
/// use archipelago::crdt::LwwRegister;
/// use archipelago::wire;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V1 { visits: u32 }
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct V2 { visits: u32, #[serde(default)] nickname: Option<String> }
///
/// let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
/// let mut new = LwwRegister::new();
/// new.set(hlc.stamp(), V2 { visits: 4, nickname: Some("Aiko".into()) });
/// let bytes = wire::encode(&new)?;
/// let at_old: LwwRegister<V1> = wire::decode(&bytes)?;
/// assert_eq!(at_old.get(), Some(&V1 { visits: 4 }));
/// assert_eq!(wire::encode(&at_old)?, bytes, "the unknown field travels on");
/// let mut old = LwwRegister::new();
/// old.set(hlc.stamp(), V1 { visits: 3 });
/// let at_new: LwwRegister<V2> = wire::decode(&wire::encode(&old)?)?;
/// assert_eq!(at_new.get(), Some(&V2 { visits: 3, nickname: None }));
/// # Ok::<(), wire::WireError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LwwRegister<T> {
    entry: Option<(Stamp, T)>,
    /// The bytes of the value this build's `T` left unread.
    unknown: Unknown,
}

/// The first byte of a binary register: unset.
const UNSET: u8 = 0;
/// The first byte of a binary register in the older layout (the value
/// positional).
const POSITIONAL: u8 = 1;
/// The first byte of a binary register in the delimited layout.
const DELIMITED: u8 = 2;

/// The human-readable form, as derived before values were delimited.
#[derive(Serialize)]
#[serde(rename = "LwwRegister")]
struct ReprRef<'a, T> {
    entry: &'a Option<(Stamp, T)>,
}

#[derive(Deserialize)]
#[serde(rename = "LwwRegister")]
struct Repr<T> {
    entry: Option<(Stamp, T)>,
}

impl<T: Serialize> Serialize for LwwRegister<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if serializer.is_human_readable() {
            return ReprRef { entry: &self.entry }.serialize(serializer);
        }
        let Some((stamp, value)) = &self.entry else {
            return serializer.serialize_u8(UNSET);
        };
        let mut tuple = serializer.serialize_tuple(3)?;
        if crate::wire::positional_crdt_values() {
            tuple.serialize_element(&POSITIONAL)?;
            tuple.serialize_element(stamp)?;
            tuple.serialize_element(value)?;
        } else {
            tuple.serialize_element(&DELIMITED)?;
            tuple.serialize_element(stamp)?;
            tuple.serialize_element(&ValueBytes(value, self.unknown.bytes()))?;
        }
        tuple.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LwwRegister<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let Repr { entry } = Repr::deserialize(deserializer)?;
            return Ok(LwwRegister {
                entry,
                unknown: Unknown::default(),
            });
        }
        deserializer.deserialize_tuple(3, BinaryVisitor(std::marker::PhantomData))
    }
}

struct BinaryVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for BinaryVisitor<T> {
    type Value = LwwRegister<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a last-writer-wins register")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("a register ends early");
        let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
        if tag == UNSET {
            return Ok(LwwRegister::unset());
        }
        if tag != POSITIONAL && tag != DELIMITED {
            return Err(invalid("LwwRegister", InvalidRule::UnknownLayout));
        }
        let stamp = seq.next_element()?.ok_or_else(missing)?;
        let (value, unknown) = if tag == POSITIONAL {
            (seq.next_element()?.ok_or_else(missing)?, Unknown::default())
        } else {
            let ValueOf(value, unknown) = seq.next_element()?.ok_or_else(missing)?;
            (value, unknown)
        };
        Ok(LwwRegister {
            entry: Some((stamp, value)),
            unknown,
        })
    }
}

impl<T> LwwRegister<T> {
    fn unset() -> Self {
        LwwRegister {
            entry: None,
            unknown: Unknown::default(),
        }
    }

    /// The bytes of the value this build's `T` did not read (empty unless
    /// a newer build's `T`, with more trailing fields, wrote it): kept and
    /// re-sent after the value's own bytes (see *Schema evolution*).
    pub fn unknown_bytes(&self) -> &[u8] {
        self.unknown.bytes()
    }
}

impl<T: Clone> LwwRegister<T> {
    /// A register never written.
    pub fn new() -> Self {
        Self::unset()
    }

    /// Writes `value` at `stamp`; returns the delta.
    ///
    /// A stamp no higher than the current one loses to it: the register
    /// keeps its value, and the delta changes nothing where merged.
    pub fn set(&mut self, stamp: Stamp, value: T) -> Self {
        let delta = LwwRegister {
            entry: Some((stamp, value)),
            unknown: Unknown::default(),
        };
        self.merge(&delta);
        delta
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.entry.as_ref().map(|(_, v)| v)
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Option<Stamp> {
        self.entry.as_ref().map(|(s, _)| *s)
    }
}

impl<T: Clone> Default for LwwRegister<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Crdt for LwwRegister<T> {
    fn latest_stamp(&self) -> Option<crate::clock::Timestamp> {
        self.entry.as_ref().map(|(stamp, _)| stamp.time)
    }

    fn merge(&mut self, other: &Self) {
        if let Some((theirs, value)) = &other.entry
            && self.stamp().is_none_or(|mine| *theirs > mine)
        {
            self.entry = Some((*theirs, value.clone()));
            self.unknown.clone_from(&other.unknown);
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for LwwRegister<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.entry {
            Some((s, v)) => write!(f, "LwwRegister({v:?} at {s:?})"),
            None => write!(f, "LwwRegister(unset)"),
        }
    }
}
