//! Delimited user values: a value carried inside one of the crate's states
//! as a byte string of its own, decoded **tolerantly**, so a struct that
//! gained or lost trailing fields between builds still decodes.
//!
//! bincode is not self-describing: a struct is its fields one after the
//! other, with nothing saying where it ends. Inside a
//! [`Versioned`](crate::resolve::Versioned) the value used to be followed
//! directly by the version's vector and stamp, so a build whose struct has
//! one field more read into the vector, and one with a field less left the
//! extra bytes to be read as the vector. Delimited, the value's bytes are a
//! slice whose end is known, and [`decode_tolerant`] reads the value from
//! it such that:
//! - **fewer bytes than the struct needs**: once the slice is exhausted,
//!   each remaining field of a struct or tuple reads as absent, so a
//!   trailing field marked `#[serde(default)]` takes its default (a field
//!   without one fails the decode, as serde's derive says);
//! - **more bytes than the struct reads**: the bytes left over are handed
//!   back, for the caller to keep and write out again after the value's
//!   own (see [`Versioned::unknown_bytes`](crate::resolve::Versioned::unknown_bytes)).
//!
//! Tolerance applies to the value's own trailing fields and, recursively,
//! to those of a struct or tuple in its last field; a field of zero bytes
//! (`()`, a unit struct) at the very end reads as absent too.
//!
//! The slice is decoded within the budget of the frame around it (the
//! same [`Budget`](super::budget::Budget)), so a value adds nothing to
//! what a frame may allocate; a length prefix claiming more than the frame
//! holds is refused by bincode before anything is read.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use bincode::de::read::{BorrowReader, Reader};
use bincode::error::DecodeError;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use super::budget::{Budget, Budgeted};

/// The bytes left in a delimited value's slice, and the budget it charges.
type ValueContext = (Rc<Cell<usize>>, Rc<Budget>);

thread_local! {
    /// The budget of the frame being decoded on this thread, if any.
    pub(super) static FRAME_BUDGET: RefCell<Option<Rc<Budget>>> = const { RefCell::new(None) };
    /// What [`Tolerant`] needs while a delimited value decodes: the bytes
    /// left in its slice and the budget to charge.
    static VALUE: RefCell<Option<ValueContext>> = const { RefCell::new(None) };
    /// The protocol of the peer states are being encoded for on this
    /// thread: `u16::MAX` (this build's own layout) unless re-encoding for
    /// an older peer.
    static LAYOUT_PROTOCOL: Cell<u16> = const { Cell::new(u16::MAX) };
}

/// The first protocol whose version sets carry delimited values
/// ([`Versioned`](crate::resolve::Versioned)).
pub(crate) const DELIMITED_PROTOCOL: u16 = 5;

/// The first protocol whose [`LwwRegister`](crate::crdt::LwwRegister),
/// [`LwwMap`](crate::crdt::LwwMap) and [`MvRegister`](crate::crdt::MvRegister)
/// states carry delimited values.
pub(crate) const DELIMITED_CRDT_PROTOCOL: u16 = 6;

/// True while [`encode_bare_legacy_into`](super::encode_bare_legacy_into)
/// runs on this thread for a peer older than [`DELIMITED_PROTOCOL`]:
/// version sets then encode in the layout protocol-4 peers read (values
/// not delimited).
pub(crate) fn legacy_layout() -> bool {
    LAYOUT_PROTOCOL.with(Cell::get) < DELIMITED_PROTOCOL
}

/// True while [`encode_bare_legacy_into`](super::encode_bare_legacy_into)
/// runs on this thread for a peer older than [`DELIMITED_CRDT_PROTOCOL`]:
/// registers and last-writer-wins maps then encode their values
/// positionally, as protocol-5 peers read them.
pub(crate) fn positional_crdt_values() -> bool {
    LAYOUT_PROTOCOL.with(Cell::get) < DELIMITED_CRDT_PROTOCOL
}

/// Runs `f` encoding states in the layout of `protocol`.
pub(super) fn in_layout_of<R>(protocol: u16, f: impl FnOnce() -> R) -> R {
    let before = LAYOUT_PROTOCOL.with(|l| l.replace(protocol));
    let result = f();
    LAYOUT_PROTOCOL.with(|l| l.set(before));
    result
}

/// The bytes of a delimited value its type left unread (usually none):
/// fields a newer build's type wrote after the ones this build knows.
/// Kept beside the value and written out again after its own bytes, so
/// they reach the regions that read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Unknown(Option<Box<[u8]>>);

impl Unknown {
    /// `bytes` kept (no allocation when empty).
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        Unknown((!bytes.is_empty()).then(|| bytes.into()))
    }

    /// The bytes kept (empty when none).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

/// A value and the bytes it kept unread, serialized as one byte string:
/// the value's own bytes, then the unknown ones.
pub(crate) struct ValueBytes<'a, T: ?Sized>(pub &'a T, pub &'a [u8]);

impl<T: serde::Serialize + ?Sized> serde::Serialize for ValueBytes<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let unknown = self.1;
        super::with_bare(self.0, |own| {
            if unknown.is_empty() {
                serializer.serialize_bytes(own)
            } else {
                let mut whole = Vec::with_capacity(own.len() + unknown.len());
                whole.extend_from_slice(own);
                whole.extend_from_slice(unknown);
                serializer.serialize_bytes(&whole)
            }
        })
        .map_err(S::Error::custom)?
    }
}

/// A value read tolerantly from its byte string (see [`decode_tolerant`]),
/// and what it left unread.
pub(crate) struct ValueOf<T>(pub T, pub Unknown);

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for ValueOf<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(ValueVisitor(std::marker::PhantomData))
    }
}

struct ValueVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for ValueVisitor<T> {
    type Value = ValueOf<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value's bytes, borrowed from the frame")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<Self::Value, E> {
        let (value, rest) = decode_tolerant::<T>(bytes).map_err(E::custom)?;
        Ok(ValueOf(value, Unknown::from_bytes(rest)))
    }
}

/// The first byte of a layout that delimits its values where the older
/// layout starts with a length: bincode's varints never start with it
/// (254 announces a `u128`, 255 is reserved), so no length of an older
/// encoding does.
pub(crate) const DELIMITED_LEN_TAG: u8 = 255;

/// The length of an older layout whose first byte, `first`, was read as a
/// `u8` (to tell it from [`DELIMITED_LEN_TAG`]): the rest of bincode's
/// varint, read from `seq` as raw bytes (251: a `u16` follows, 252: a
/// `u32`, 253: a `u64`, little-endian).
///
/// # Errors
/// A byte no varint of a `u64` starts with, or the input ending early.
pub(crate) fn varint_rest<'de, A: SeqAccess<'de>>(first: u8, seq: &mut A) -> Result<u64, A::Error> {
    let ended = || de::Error::custom("a length ends early");
    Ok(match first {
        0..=250 => u64::from(first),
        251 => u64::from(u16::from_le_bytes(seq.next_element()?.ok_or_else(ended)?)),
        252 => u64::from(u32::from_le_bytes(seq.next_element()?.ok_or_else(ended)?)),
        253 => u64::from_le_bytes(seq.next_element()?.ok_or_else(ended)?),
        other => {
            return Err(de::Error::invalid_value(
                de::Unexpected::Unsigned(u64::from(other)),
                &"the first byte of a length",
            ));
        }
    })
}

/// A reader over a slice that publishes how many bytes are left.
struct TrackedSlice<'de> {
    slice: &'de [u8],
    left: Rc<Cell<usize>>,
}

impl<'de> TrackedSlice<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        if n > self.slice.len() {
            return Err(DecodeError::UnexpectedEnd {
                additional: n - self.slice.len(),
            });
        }
        let (taken, rest) = self.slice.split_at(n);
        self.slice = rest;
        self.left.set(rest.len());
        Ok(taken)
    }
}

impl Reader for TrackedSlice<'_> {
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), DecodeError> {
        let taken = self.take(bytes.len())?;
        bytes.copy_from_slice(taken);
        Ok(())
    }

    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.slice.get(..n)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.slice.len());
        self.slice = &self.slice[n..];
        self.left.set(self.slice.len());
    }
}

impl<'de> BorrowReader<'de> for TrackedSlice<'de> {
    fn take_bytes(&mut self, length: usize) -> Result<&'de [u8], DecodeError> {
        self.take(length)
    }
}

/// Decodes a `T` from all or part of `slice`, tolerantly (see the module
/// page): returns it and the bytes it did not read.
///
/// # Errors
/// The decode's error as text (the caller reports it through serde); a
/// rule broken or the budget exceeded are also recorded where
/// [`decode`](super::decode) finds them.
pub(crate) fn decode_tolerant<'de, T: de::Deserialize<'de>>(
    slice: &'de [u8],
) -> Result<(T, &'de [u8]), String> {
    let budget = FRAME_BUDGET
        .with(|b| b.borrow().clone())
        .unwrap_or_else(|| Rc::new(Budget::new(super::decode_budget_bytes(slice.len()))));
    let left = Rc::new(Cell::new(slice.len()));
    let reader = TrackedSlice {
        slice,
        left: left.clone(),
    };
    let mut decoder = bincode::de::DecoderImpl::new(reader, super::config(), ());
    let before = VALUE.with(|v| v.replace(Some((left.clone(), budget))));
    let decoded: Result<bincode::serde::BorrowCompat<Tolerant<T>>, _> =
        bincode::BorrowDecode::borrow_decode(&mut decoder);
    VALUE.with(|v| *v.borrow_mut() = before);
    let value = decoded.map_err(|e| e.to_string())?.0.0;
    let read = slice.len() - left.get();
    debug_assert!(read <= slice.len(), "a value reads inside its slice");
    Ok((value, &slice[read..]))
}

/// `T`, decoded through [`TolerantDe`] and the frame's budget.
struct Tolerant<T>(T);

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Tolerant<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Some((left, budget)) = VALUE.with(|v| v.borrow().clone()) else {
            return Err(de::Error::custom("a delimited value outside its decode"));
        };
        let tolerant = TolerantDe {
            inner: deserializer,
            left: &left,
        };
        T::deserialize(Budgeted::new(tolerant, &budget)).map(Tolerant)
    }
}

/// A deserializer whose structs and tuples end where the slice ends.
struct TolerantDe<'l, D> {
    inner: D,
    left: &'l Cell<usize>,
}

macro_rules! forward {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.inner.$method(visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TolerantDe<'_, D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let left = self.left;
        self.inner.deserialize_newtype_struct(
            name,
            TolerantVisitor {
                inner: visitor,
                left,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let left = self.left;
        self.inner.deserialize_tuple(
            len,
            TolerantVisitor {
                inner: visitor,
                left,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let left = self.left;
        self.inner.deserialize_tuple_struct(
            name,
            len,
            TolerantVisitor {
                inner: visitor,
                left,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let left = self.left;
        self.inner.deserialize_struct(
            name,
            fields,
            TolerantVisitor {
                inner: visitor,
                left,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// The visitor of a struct, tuple or newtype: hands on a sequence that
/// ends with the slice.
struct TolerantVisitor<'l, V> {
    inner: V,
    left: &'l Cell<usize>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for TolerantVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(TolerantSeq {
            inner: seq,
            left: self.left,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(TolerantDe {
            inner: d,
            left: self.left,
        })
    }
}

/// A struct's or tuple's fields: absent once the slice is exhausted.
struct TolerantSeq<'l, A> {
    inner: A,
    left: &'l Cell<usize>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for TolerantSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        if self.left.get() == 0 {
            return Ok(None);
        }
        self.inner.next_element_seed(TolerantSeed {
            inner: seed,
            left: self.left,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A field's seed, decoding through [`TolerantDe`].
struct TolerantSeed<'l, S> {
    inner: S,
    left: &'l Cell<usize>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TolerantSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(TolerantDe {
            inner: d,
            left: self.left,
        })
    }
}
