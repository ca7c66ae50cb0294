//! The decode budget: a `serde::Deserializer` adapter that bounds the memory
//! a frame can make the decoder allocate.
//!
//! Every value decoded from a frame goes through [`Budgeted`], which wraps
//! bincode's deserializer and every visitor, sequence, map and enum access
//! it hands out, so that whatever `Deserialize` impl runs (ours, serde's
//! for `Vec`/`String`/maps, smallvec's, a user's derived one) is accounted
//! the same way:
//!
//! - each element of a length-prefixed sequence, and each key and value of
//!   a map, charges `size_of` of its type (at least 1 byte) once decoded:
//!   the inline room it takes in its container;
//! - each string or byte string charges its length;
//! - struct and tuple fields are inline in their parent and charge nothing
//!   themselves (the containers inside them do).
//!
//! The budget is [`DECODE_BYTES_PER_FRAME_BYTE`](super::DECODE_BYTES_PER_FRAME_BYTE)
//! times the body's length plus [`DECODE_SLACK_BYTES`](super::DECODE_SLACK_BYTES);
//! the first charge past it fails the decode with
//! [`WireError::OverBudget`](super::WireError::OverBudget). Because every
//! element charges at least one byte, the budget also bounds the number of
//! elements a frame can make the decoder visit (a sequence of zero-sized
//! elements claiming 2⁶⁴ of them stops there).
//!
//! Two more rules keep a length prefix from asking for memory up front:
//! - the size hint a sequence or map reports is capped at
//!   [`SEQ_PREALLOC_ELEMENTS_MAX`] (and at the budget left): a container
//!   reserves at most that many slots before it has seen its elements, and
//!   grows by doubling past it;
//! - owned strings and byte strings are read borrowed from the frame (the
//!   length checked against the bytes present) and copied by the visitor,
//!   instead of bincode's owned path, which allocates the claimed length
//!   before reading.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The most elements a sequence or map may reserve room for before its
/// elements are decoded, whatever its length prefix claims.
pub(crate) const SEQ_PREALLOC_ELEMENTS_MAX: usize = 16;

/// What a decode may still allocate, in bytes.
#[derive(Debug)]
pub(crate) struct Budget {
    remaining: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        Budget {
            remaining: Cell::new(bytes),
            exceeded: Cell::new(false),
        }
    }

    /// A fresh budget of `bytes`, shareable with the delimited values a
    /// decode meets: the per-thread spare when it is free (a decode then
    /// allocates nothing for its budget), else a new one.
    pub(crate) fn shared(bytes: usize) -> SharedBudget {
        let budget = match SPARE_BUDGET.with(Cell::take) {
            Some(spare) => {
                debug_assert_eq!(Rc::strong_count(&spare), 1, "a spare budget is unshared");
                spare.remaining.set(bytes);
                spare.exceeded.set(false);
                spare
            }
            None => Rc::new(Budget::new(bytes)),
        };
        SharedBudget(Some(budget))
    }

    /// True once a charge has failed.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    /// Takes `bytes` off the budget, or fails the decode.
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let remaining = self.remaining.get();
        if bytes > remaining {
            self.exceeded.set(true);
            return Err(E::custom("decode memory budget exceeded"));
        }
        self.remaining.set(remaining - bytes);
        Ok(())
    }

    /// Charges the inline room of one decoded element of type `T`.
    fn charge_element<T, E: de::Error>(&self) -> Result<(), E> {
        self.charge(std::mem::size_of::<T>().max(1))
    }

    fn cap_hint(&self, hint: Option<usize>) -> Option<usize> {
        hint.map(|n| n.min(SEQ_PREALLOC_ELEMENTS_MAX).min(self.remaining.get()))
    }
}

thread_local! {
    /// A budget no decode holds, kept for the next one (see
    /// [`Budget::shared`]).
    static SPARE_BUDGET: Cell<Option<Rc<Budget>>> = const { Cell::new(None) };
}

/// A [`Budget`] from [`Budget::shared`]; dropped, it becomes the thread's
/// spare again unless something still holds it.
pub(crate) struct SharedBudget(Option<Rc<Budget>>);

impl std::ops::Deref for SharedBudget {
    type Target = Rc<Budget>;

    fn deref(&self) -> &Rc<Budget> {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for SharedBudget {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take()
            && Rc::strong_count(&budget) == 1
            && Rc::weak_count(&budget) == 0
        {
            SPARE_BUDGET.with(|spare| spare.set(Some(budget)));
        }
    }
}

/// A deserializer whose every allocation is charged to a [`Budget`].
pub(crate) struct Budgeted<'b, D> {
    inner: D,
    budget: &'b Budget,
}

impl<'b, D> Budgeted<'b, D> {
    pub(crate) fn new(inner: D, budget: &'b Budget) -> Self {
        Budgeted { inner, budget }
    }
}

/// A `DeserializeSeed` for `T` that decodes through [`Budgeted`]: the
/// entry point `wire` hands bincode.
pub(crate) struct BudgetedSeed<'b, T> {
    budget: &'b Budget,
    _value: PhantomData<fn() -> T>,
}

impl<'b, T> BudgetedSeed<'b, T> {
    pub(crate) fn new(budget: &'b Budget) -> Self {
        BudgetedSeed {
            budget,
            _value: PhantomData,
        }
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for BudgetedSeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(Budgeted::new(deserializer, self.budget))
    }
}

/// Wraps a visitor; `counted` is true for length-prefixed sequences and
/// maps (whose elements are charged), false for tuples and structs.
struct Wrap<'b, V> {
    inner: V,
    budget: &'b Budget,
    counted: bool,
}

impl<'b, V> Wrap<'b, V> {
    fn new(inner: V, budget: &'b Budget, counted: bool) -> Self {
        Wrap {
            inner,
            budget,
            counted,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.inner.$method(Wrap::new(visitor, self.budget, false))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Budgeted<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
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
        deserialize_bytes,
        deserialize_option,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    /// Read borrowed: bincode's owned path allocates the claimed length
    /// before it knows the bytes are there.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_str(Wrap::new(visitor, self.budget, false))
    }

    /// Read borrowed, as [`deserialize_string`](Self::deserialize_string).
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_bytes(Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_seq(Wrap::new(visitor, self.budget, true))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_map(Wrap::new(visitor, self.budget, true))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_unit_struct(name, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_newtype_struct(name, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple(len, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_struct(name, fields, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_enum(name, variants, Wrap::new(visitor, self.budget, false))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char,
    );

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.inner.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.inner.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.inner.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner
            .visit_some(Budgeted::new(deserializer, self.budget))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .visit_newtype_struct(Budgeted::new(deserializer, self.budget))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Seq {
            inner: seq,
            budget: self.budget,
            counted: self.counted,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Enum {
            inner: data,
            budget: self.budget,
        })
    }
}

/// Wraps a seed so the value it decodes goes through [`Budgeted`].
struct Seed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner
            .deserialize(Budgeted::new(deserializer, self.budget))
    }
}

struct Seq<'b, A> {
    inner: A,
    budget: &'b Budget,
    counted: bool,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let element = self.inner.next_element_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        if self.counted && element.is_some() {
            self.budget.charge_element::<T::Value, A::Error>()?;
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        self.budget.cap_hint(self.inner.size_hint())
    }
}

struct Map<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let key = self.inner.next_key_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        if key.is_some() {
            self.budget.charge_element::<K::Value, A::Error>()?;
        }
        Ok(key)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let value = self.inner.next_value_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        self.budget.charge_element::<V::Value, A::Error>()?;
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.budget.cap_hint(self.inner.size_hint())
    }
}

struct Enum<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'b, A> {
    type Error = A::Error;
    type Variant = Variant<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        Ok((
            value,
            Variant {
                inner: variant,
                budget: self.budget,
            },
        ))
    }
}

struct Variant<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, Wrap::new(visitor, self.budget, false))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, Wrap::new(visitor, self.budget, false))
    }
}
