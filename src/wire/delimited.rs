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
    /// True while encoding for a peer of protocol 4 or older.
    static LEGACY: Cell<bool> = const { Cell::new(false) };
}

/// True while [`encode_legacy`](super::encode_bare_legacy_into) runs on
/// this thread: states then encode in the layout protocol-4 peers read
/// (values not delimited).
pub(crate) fn legacy_layout() -> bool {
    LEGACY.with(Cell::get)
}

/// Runs `f` with [`legacy_layout`] true.
pub(super) fn in_legacy_layout<R>(f: impl FnOnce() -> R) -> R {
    let before = LEGACY.with(|l| l.replace(true));
    let result = f();
    LEGACY.with(|l| l.set(before));
    result
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
