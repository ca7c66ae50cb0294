//! The wire codec: the one place that turns values into bytes and back.
//!
//! Every byte the crate sends or stores goes through [`encode`] and
//! [`decode`]; nothing else names the codec (bincode 2, compact variable-
//! length integers), so it can be swapped here alone. Each frame opens with
//! a version byte, [`WIRE_VERSION`], so a future codec can be told apart.
//!
//! Decoding treats its input as hostile: it never panics, refuses frames
//! longer than [`FRAME_BYTES_MAX`] before reading them, checks every value
//! against the rules its join relies on (sorted, no repeated dot, no dot
//! with counter 0, every dot inside its context, ...: a frame breaking one
//! is [`WireError::Invalid`]), and reports a typed [`WireError`].
//!
//! # Memory: at most K bytes per frame byte
//! A length prefix is a claim, not a fact, so no allocation is sized by one:
//! a container reserves at most a few slots before its elements are read,
//! and a string is checked against the bytes present before it is copied.
//! What a decode may allocate is then bounded by a **budget** proportional
//! to the frame: every decoded element of a sequence or map charges its
//! inline size (`size_of` of its type, at least 1 byte), every string its
//! length, and the decode fails with [`WireError::OverBudget`] past
//!
//! > `K × body bytes + DECODE_SLACK_BYTES`, with `K =`
//! > [`DECODE_BYTES_PER_FRAME_BYTE`] `= 32`.
//!
//! 32 admits every value this crate encodes (the densest, a list of empty
//! strings, needs 24 bytes of `String` per encoded byte) and refuses a
//! frame whose values would be larger in memory, such as a list of a
//! user enum whose one-byte variant is a kilobyte in memory. Containers
//! grow by doubling and a value may be converted once after decoding, so
//! the peak the allocator sees is a small multiple of the budget:
//! `tests/wire_hostile.rs` measures it with a counting allocator, for
//! hostile and valid frames of every type, against
//! [`DECODE_PEAK_BYTES_PER_FRAME_BYTE`]. The budget also bounds the
//! elements a frame can make the decoder visit, so a short frame claiming
//! 2⁶⁴ zero-sized elements fails fast too.
//!
//! ```
//! use archipelago::crdt::GCounter;
//! use archipelago::clock::ReplicaId;
//! use archipelago::wire;
//!
//! let mut hits = GCounter::new();
//! hits.inc(ReplicaId::new(1), 3);
//! let bytes = wire::encode(&hits)?;
//! let back: GCounter = wire::decode(&bytes)?;
//! assert_eq!(back, hits);
//!
//! assert!(wire::decode::<GCounter>(&[0xff, 1, 2]).is_err()); // unknown version
//! # Ok::<(), wire::WireError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte every frame starts with.
pub const WIRE_VERSION: u8 = 1;

/// The largest frame [`encode`] produces and [`decode`] accepts, in bytes.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_BYTES_MAX>,
>;

/// `K`: what a decode may allocate per byte of the body, in bytes,
/// counted as the module page says (each element's inline size, each
/// string's length). See the [module page](self).
pub const DECODE_BYTES_PER_FRAME_BYTE: usize = 32;

/// What any decode may allocate on top of `K` bytes per body byte, in
/// bytes: room for the handful of small values a short frame holds.
pub const DECODE_SLACK_BYTES: usize = 1024;

/// The peak heap a decode may reach per byte of the frame, in bytes: the
/// budget [`DECODE_BYTES_PER_FRAME_BYTE`] times the at most 4× by which
/// containers outgrow what they hold (doubling, one conversion after
/// decoding). Checked by `tests/wire_hostile.rs` and the fuzz harness.
pub const DECODE_PEAK_BYTES_PER_FRAME_BYTE: usize = 4 * DECODE_BYTES_PER_FRAME_BYTE;

/// The peak heap any decode may reach on top of
/// [`DECODE_PEAK_BYTES_PER_FRAME_BYTE`] per frame byte, in bytes (error
/// messages, the few slots a container reserves before reading).
pub const DECODE_PEAK_SLACK_BYTES: usize = 16 * 1024;

/// The budget of a decode of `body_bytes` bytes, in bytes.
pub const fn decode_budget_bytes(body_bytes: usize) -> usize {
    DECODE_BYTES_PER_FRAME_BYTE
        .saturating_mul(body_bytes)
        .saturating_add(DECODE_SLACK_BYTES)
}

mod budget;
mod delimited;

pub(crate) use delimited::{
    DELIMITED_CRDT_PROTOCOL, DELIMITED_LEN_TAG, DELIMITED_PROTOCOL, Unknown, ValueBytes, ValueOf,
    decode_tolerant, legacy_layout, positional_crdt_values, varint_rest,
};

const fn config() -> Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Why a value could not be encoded or a frame decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is empty: not even a version byte.
    #[error("empty frame")]
    Empty,
    /// The frame was written by a codec version we do not speak.
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The frame is longer than [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The body does not decode as the expected type (truncated, corrupt,
    /// or failing the type's own validation).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("{extra} unexpected bytes after the value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The body would decode to more memory than its size allows (see the
    /// [module page](self)): refused before it is allocated.
    #[error("a {body_bytes}-byte body needs more than its {budget_bytes}-byte decode budget")]
    OverBudget {
        /// The body's length.
        body_bytes: usize,
        /// What it could allocate: [`decode_budget_bytes`] of its length.
        budget_bytes: usize,
    },
    /// The body decodes but breaks a rule of the type it encodes (one its
    /// join relies on): no replica writes such a value.
    #[error("invalid {ty}: {rule}")]
    Invalid {
        /// The type, e.g. `"MvRegister"`.
        ty: &'static str,
        /// The rule broken.
        rule: InvalidRule,
    },
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Bytes that are not a version vector in the fixed layout, or a vector
    /// too large for it (see [`encode_vector_fixed`]).
    #[error("fixed-layout vector: {0}")]
    Vector(#[from] FixedVectorError),
}

/// A rule a decoded value breaks ([`WireError::Invalid`]). Each is one that
/// values made by replicas keep and that the type's join relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRule {
    /// Entries out of order or repeated where the encoding sorts them.
    #[error("entries out of order or repeated")]
    Unsorted,
    /// A dot or counter of 0: counters start at 1.
    #[error("a dot with counter 0")]
    ZeroCounter,
    /// A counter that overflows `u64`.
    #[error("a counter overflows")]
    CounterOverflow,
    /// A dot the value's causal context does not hold.
    #[error("a dot outside its causal context")]
    OutsideContext,
    /// The same dot twice.
    #[error("the same dot twice")]
    DuplicateDot,
    /// A causal context whose cloud holds a dot its vector covers, or one
    /// that would fold into it: not the form a context is kept in.
    #[error("a cloud dot the vector covers or would absorb")]
    NotCompact,
    /// Two versions or siblings from one replica: a replica's writes are
    /// ordered, so concurrent values number at most one per replica.
    #[error("two concurrent values from one replica (more values than replicas)")]
    ReplicaRepeated,
    /// A version whose own write another version of the set has seen: the
    /// set would not be an antichain.
    #[error("a version another version of the set has seen")]
    VersionSeen,
    /// A version (of a set of several) whose vector lacks its own write.
    #[error("a version whose vector lacks its own write")]
    OwnWriteMissing,
    /// A key repeated in a map.
    #[error("a key repeated")]
    KeyRepeated,
    /// A bounded counter in which a replica gave away or spent more rights
    /// than it received: merging it could take the value below its bound.
    #[error("a replica spent more rights than it holds")]
    RightsOverdrawn,
    /// A map key kept by no dot: a key without a write that put it there.
    #[error("a key without a dot")]
    KeyWithoutDot,
    /// A version of a resolver value that its own delete context covers:
    /// a deleted version kept beside the tombstone that removed it.
    #[error("a version its set's delete context covers")]
    VersionRemoved,
    /// A version set claiming more versions than
    /// [`VERSIONS_MAX`](crate::resolve::VERSIONS_MAX).
    #[error("more versions than a version set may hold")]
    TooManyVersions,
    /// A first byte naming a layout no build writes (a register's or a
    /// map row's tag other than those of its older and delimited layouts).
    #[error("a layout tag no build writes")]
    UnknownLayout,
    /// A reference to a replica past the ones a batch names (its origin
    /// and the replicas of its dependencies): see the batch layout of
    /// protocol 7 ([`PROTOCOL_VERSION`](crate::region::PROTOCOL_VERSION)).
    #[error("a replica reference past the batch's replicas")]
    ReplicaReference,
}

thread_local! {
    /// The first rule a value being decoded on this thread broke: serde
    /// carries errors as text, so the typed reason travels beside it.
    static BROKEN_RULE: std::cell::Cell<Option<(&'static str, InvalidRule)>> =
        const { std::cell::Cell::new(None) };
}

/// The error a `Deserialize` impl returns for a value of type `ty` breaking
/// `rule`; [`decode`] reports it as [`WireError::Invalid`].
pub(crate) fn invalid<E: serde::de::Error>(ty: &'static str, rule: InvalidRule) -> E {
    BROKEN_RULE.with(|slot| {
        if slot.get().is_none() {
            slot.set(Some((ty, rule)));
        }
    });
    E::custom(format_args!("invalid {ty}: {rule}"))
}

/// Encodes `value` into a frame: the version byte, then the body.
///
/// # Errors
/// [`WireError::Encode`] when serde reports an error for the value, and
/// [`WireError::TooLarge`] when the frame would exceed [`FRAME_BYTES_MAX`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = Vec::with_capacity(64);
    frame.push(WIRE_VERSION);
    encode_into(value, &mut frame)?;
    Ok(frame)
}

/// Encodes `value` into a frame of exactly its size (one allocation, no
/// slack): for keys and other values kept for long.
///
/// # Errors
/// As [`encode`].
pub fn encode_exact<T: Serialize + ?Sized>(value: &T) -> Result<Box<[u8]>, WireError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        scratch.push(WIRE_VERSION);
        encode_into(value, &mut scratch)?;
        let frame: Box<[u8]> = scratch.as_slice().into();
        if scratch.capacity() > 64 * 1024 {
            *scratch = Vec::new(); // do not keep a large buffer per thread
        }
        Ok(frame)
    })
}

/// Appends to a `Vec` without going through `std::io::Write`.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the body of `value` (no version byte) to `out`.
fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    bincode::serde::encode_into_writer(value, VecWriter(out), config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if out.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { len: out.len() });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Bare bodies: values inside a frame (keys, deltas and states in a batch),
// which the frame's version byte already covers.
// ---------------------------------------------------------------------------

/// Appends the body of `value` to `out`, without a version byte: for values
/// carried inside a frame.
///
/// # Errors
/// As [`encode`]; `out` may then hold part of the value.
pub(crate) fn encode_bare_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    encode_into(value, out)
}

/// Appends the body of `value` to `out` as [`encode_bare_into`] does, in
/// the layout peers of protocol `protocol` read: user values inside
/// version sets not delimited below protocol 5 (see
/// [`Versioned`](crate::resolve::Versioned)), those inside registers and
/// last-writer-wins maps not delimited below protocol 6 (see
/// [`LwwRegister`](crate::crdt::LwwRegister)).
///
/// # Errors
/// As [`encode`].
pub(crate) fn encode_bare_legacy_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    protocol: u16,
) -> Result<(), WireError> {
    delimited::in_layout_of(protocol, || encode_into(value, out))
}

/// A frame of `value` as [`encode`] makes it, in the layout of `protocol`
/// (see [`encode_bare_legacy_into`]): for the fuzz corpus, which keeps
/// the older layouts' decoders under test.
///
/// # Errors
/// As [`encode`].
#[cfg(feature = "testing")]
pub(crate) fn encode_legacy<T: Serialize + ?Sized>(
    value: &T,
    protocol: u16,
) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![WIRE_VERSION];
    encode_bare_legacy_into(value, &mut frame, protocol)?;
    Ok(frame)
}

/// Runs `f` on the body of `value`, encoded into a per-thread scratch
/// buffer (no allocation once warm). Re-entrant: a nested call gets a
/// fresh buffer.
///
/// # Errors
/// As [`encode`].
pub(crate) fn with_bare<T: Serialize + ?Sized, R>(
    value: &T,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, WireError> {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut scratch = SCRATCH.with(std::cell::Cell::take);
    scratch.clear();
    let result = encode_into(value, &mut scratch).map(|()| f(&scratch));
    if scratch.capacity() <= 64 * 1024 {
        SCRATCH.with(|cell| cell.set(scratch)); // do not keep a large buffer per thread
    }
    result
}

/// Decodes a body made by [`encode_bare_into`]: all of `body`, no version
/// byte.
///
/// # Errors
/// As [`decode`]; never panics.
pub(crate) fn decode_bare<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { len: body.len() });
    }
    let budget = budget::Budget::shared(decode_budget_bytes(body.len()));
    BROKEN_RULE.with(|slot| slot.set(None));
    // Delimited values inside the body charge the same budget.
    let outer = delimited::FRAME_BUDGET.with(|b| b.replace(Some(std::rc::Rc::clone(&budget))));
    let decoded = bincode::serde::seed_decode_from_slice(
        budget::BudgetedSeed::<T>::new(&budget),
        body,
        config(),
    );
    delimited::FRAME_BUDGET.with(|b| *b.borrow_mut() = outer);
    let broken = BROKEN_RULE.with(std::cell::Cell::take);
    let (value, read) = decoded.map_err(|e| {
        if budget.exceeded() {
            WireError::OverBudget {
                body_bytes: body.len(),
                budget_bytes: decode_budget_bytes(body.len()),
            }
        } else if let Some((ty, rule)) = broken {
            WireError::Invalid { ty, rule }
        } else {
            WireError::Malformed(e.to_string())
        }
    })?;
    if read != body.len() {
        return Err(WireError::TrailingBytes {
            extra: body.len() - read,
        });
    }
    Ok(value)
}

/// Appends `bytes` with its length in front (LEB128): the framing of the
/// opaque byte strings packed into a batch.
#[inline]
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends `n` as LEB128.
#[inline]
pub(crate) fn put_len(out: &mut Vec<u8>, mut n: usize) {
    // One byte, the common case (keys, values and table positions of a
    // batch entry are short): no loop.
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Takes a LEB128 length off the front of `input`.
///
/// # Errors
/// [`WireError::Malformed`] when `input` ends inside it or it overflows.
#[inline]
pub(crate) fn take_len(input: &mut &[u8]) -> Result<usize, WireError> {
    // One byte, the common case: no loop.
    if let Some((&b, rest)) = input.split_first()
        && b < 0x80
    {
        *input = rest;
        return Ok(usize::from(b));
    }
    take_len_long(input)
}

/// [`take_len`] of a length of more than one byte (or of none: an error).
#[cold]
fn take_len_long(input: &mut &[u8]) -> Result<usize, WireError> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input
            .split_first()
            .ok_or_else(|| WireError::Malformed("truncated length".into()))?;
        *input = rest;
        if shift == 63 && b > 1 {
            break;
        }
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return usize::try_from(n).map_err(|_| WireError::Malformed("length overflows".into()));
        }
    }
    Err(WireError::Malformed("length overflows".into()))
}

/// Takes a byte string [`put_bytes`] wrote off the front of `input`.
///
/// # Errors
/// [`WireError::Malformed`] when `input` is too short for it.
#[inline]
pub(crate) fn take_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let len = take_len(input)?;
    if len > input.len() {
        return Err(short_bytes(len, input.len()));
    }
    let (bytes, rest) = input.split_at(len);
    *input = rest;
    Ok(bytes)
}

/// The error of a byte string of `len` bytes with `left` bytes left.
#[cold]
fn short_bytes(len: usize, left: usize) -> WireError {
    WireError::Malformed(format!("byte string of {len} bytes, {left} left"))
}

/// Decodes a frame made by [`encode`], treating it as hostile: within the
/// memory budget the [module page](self) states, and checking the value
/// against its type's rules.
///
/// # Errors
/// A [`WireError`] naming what is wrong with the frame: among them
/// [`WireError::OverBudget`] for a body that would take more memory than
/// its size allows and [`WireError::Invalid`] for a value that breaks a
/// rule of its type. Never panics.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let (&version, body) = frame.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    if frame.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { len: frame.len() });
    }
    decode_bare(body)
}

/// The encoded size of `value` in bytes, version byte included.
///
/// # Errors
/// As [`encode`].
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, WireError> {
    encode(value).map(|frame| frame.len())
}

// ---------------------------------------------------------------------------
// Fixed layout for version vectors (session tokens).
//
// Session tokens travel in HTTP headers and cookies, where every byte counts
// and a reader in another language should be able to decode them from this
// comment alone. So they do not go through bincode's variable-length
// integers but through a fixed layout, all integers little-endian:
//
//   offset     size  field
//   0          1     layout version `v`: 1 (32-bit ids) or 2 (64-bit ids)
//   1          1     flags: reserved, must be 0
//   2          2     entry count `n` (u16), at most [`VECTOR_FIXED_ENTRIES_MAX`]
//   4+E·i      W     entry i: replica id (u32 when v = 1, u64 when v = 2)
//   4+E·i+W    8     entry i: counter (u64), non-zero
//
// with `W` = 4 and `E` = 12 in version 1, `W` = 8 and `E` = 16 in version 2.
// Entries are sorted by replica, strictly (no repeats). The length is
// exactly `4 + E·n` bytes: one entry per replica, whatever the number of
// keys, tables or writes behind it.
//
// A vector is written in version 1 when every id fits in 32 bits (so a
// build that reads only version 1 still reads it), in version 2 otherwise;
// a version-2 vector whose ids all fit in 32 bits is refused, so each vector
// has one encoding. Version 1 is the layout of builds whose ids were 32
// bits: its ids widen losslessly.
// ---------------------------------------------------------------------------

/// Bytes of the fixed layout's header: version, flags, u16 entry count.
pub const VECTOR_FIXED_HEADER_BYTES: usize = 4;

/// Bytes of an entry's counter in the fixed layout (a u64).
pub const VECTOR_FIXED_COUNTER_BYTES: usize = 8;

/// Bytes of one entry in layout version 1: u32 replica, u64 counter.
pub const VECTOR_FIXED_NARROW_ENTRY_BYTES: usize = 4 + VECTOR_FIXED_COUNTER_BYTES;

/// Bytes of one entry in layout version 2: u64 replica, u64 counter.
pub const VECTOR_FIXED_WIDE_ENTRY_BYTES: usize = 8 + VECTOR_FIXED_COUNTER_BYTES;

/// The most entries (replicas) [`encode_vector_fixed`] writes and
/// [`decode_vector_fixed`] accepts, in either version: far above the
/// replicas a deployment runs, low enough that a hostile header cannot ask
/// for much.
pub const VECTOR_FIXED_ENTRIES_MAX: usize = 1024;

/// A version of the fixed vector layout: how wide its replica ids are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FixedLayout {
    /// Version 1: 32-bit replica ids, [`VECTOR_FIXED_NARROW_ENTRY_BYTES`]
    /// per entry. Written when every id fits.
    Narrow,
    /// Version 2: 64-bit replica ids, [`VECTOR_FIXED_WIDE_ENTRY_BYTES`] per
    /// entry. Written when some id needs more than 32 bits.
    Wide,
}

impl FixedLayout {
    /// The layout a vector is written in: the narrow one when every id
    /// fits in 32 bits, else the wide one.
    pub fn of(vector: &crate::clock::VersionVector) -> FixedLayout {
        if vector.iter().all(|(replica, _)| replica.is_narrow()) {
            FixedLayout::Narrow
        } else {
            FixedLayout::Wide
        }
    }

    /// The layout's version byte.
    pub const fn version(self) -> u8 {
        match self {
            FixedLayout::Narrow => 1,
            FixedLayout::Wide => 2,
        }
    }

    /// The layout a version byte names, if this build speaks it.
    pub const fn from_version(version: u8) -> Option<FixedLayout> {
        match version {
            1 => Some(FixedLayout::Narrow),
            2 => Some(FixedLayout::Wide),
            _ => None,
        }
    }

    /// Bytes of one entry.
    pub const fn entry_bytes(self) -> usize {
        match self {
            FixedLayout::Narrow => VECTOR_FIXED_NARROW_ENTRY_BYTES,
            FixedLayout::Wide => VECTOR_FIXED_WIDE_ENTRY_BYTES,
        }
    }

    /// The length in bytes of a vector of `entries` entries in this layout.
    pub const fn bytes_for(self, entries: usize) -> usize {
        VECTOR_FIXED_HEADER_BYTES + self.entry_bytes() * entries
    }
}

/// What makes bytes not a version vector in the fixed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FixedVectorError {
    /// The first byte names a layout version we do not speak.
    #[error("unsupported fixed-layout version {found} (this build speaks 1 and 2)")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The reserved flags byte is not 0.
    #[error("reserved flags byte is {found:#04x}, must be 0")]
    ReservedFlags {
        /// The flags byte found.
        found: u8,
    },
    /// More entries than [`VECTOR_FIXED_ENTRIES_MAX`], named by a header or
    /// held by a vector to encode.
    #[error("{count} entries exceed the limit of {VECTOR_FIXED_ENTRIES_MAX}")]
    TooManyEntries {
        /// The entry count.
        count: usize,
    },
    /// Fewer bytes than the header and the entries it counts need.
    #[error("truncated: {len} bytes where {expected} are needed")]
    Truncated {
        /// The bytes given.
        len: usize,
        /// The bytes the header (or the header alone) needs.
        expected: usize,
    },
    /// More bytes than the header's entry count accounts for.
    #[error("{extra} bytes after the last counted entry")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// An entry's replica is not above the previous entry's replica.
    #[error("entry {index} is out of order or repeats a replica")]
    Unsorted {
        /// The entry's position, from 0.
        index: usize,
    },
    /// An entry has counter 0, which a canonical vector leaves out.
    #[error("entry {index} has counter 0")]
    ZeroCounter {
        /// The entry's position, from 0.
        index: usize,
    },
    /// Version 2 (64-bit ids) for a vector whose ids all fit in 32 bits,
    /// which is written in version 1: not the vector's one encoding.
    #[error("layout version 2 for ids that all fit in 32 bits (version 1)")]
    WiderThanNeeded,
}

/// Encodes `vector` in the fixed layout: exactly
/// [`FixedLayout::bytes_for`]`(vector.len())` bytes of
/// [`FixedLayout::of`]`(vector)`.
///
/// ```
/// use archipelago::clock::{ReplicaId, VersionVector};
/// use archipelago::wire;
///
/// let vector: VersionVector = [(ReplicaId::new(2), 7)].into_iter().collect();
/// let bytes = wire::encode_vector_fixed(&vector)?;
/// assert_eq!(bytes, [1, 0, 1, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
/// assert_eq!(wire::decode_vector_fixed(&bytes)?, vector);
///
/// // An id past 32 bits: version 2, 8-byte ids.
/// let wide: VersionVector = [(ReplicaId::new(1 << 32), 7)].into_iter().collect();
/// let bytes = wire::encode_vector_fixed(&wide)?;
/// assert_eq!(bytes, [2, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
/// assert_eq!(wire::decode_vector_fixed(&bytes)?, wide);
/// # Ok::<(), wire::WireError>(())
/// ```
///
/// # Errors
/// [`FixedVectorError::TooManyEntries`] (inside [`WireError::Vector`]) when
/// `vector` has more than [`VECTOR_FIXED_ENTRIES_MAX`] entries.
pub fn encode_vector_fixed(vector: &crate::clock::VersionVector) -> Result<Vec<u8>, WireError> {
    let count = vector.len();
    if count > VECTOR_FIXED_ENTRIES_MAX {
        return Err(FixedVectorError::TooManyEntries { count }.into());
    }
    let layout = FixedLayout::of(vector);
    let mut out = Vec::with_capacity(layout.bytes_for(count));
    out.extend_from_slice(&vector_fixed_header(layout, count));
    for (replica, counter) in vector.iter() {
        match layout {
            FixedLayout::Narrow => {
                debug_assert!(replica.is_narrow(), "the narrow layout holds every id");
                out.extend_from_slice(&(replica.get() as u32).to_le_bytes());
            }
            FixedLayout::Wide => out.extend_from_slice(&replica.get().to_le_bytes()),
        }
        out.extend_from_slice(&counter.to_le_bytes());
    }
    debug_assert_eq!(out.len(), layout.bytes_for(count));
    Ok(out)
}

/// The fixed layout's header for `count` entries in `layout`, the count
/// saturating at `u16::MAX`. Alone, with a count over the limit, it is what
/// a caller that cannot fail writes for a vector too large to encode: it
/// decodes to [`FixedVectorError::TooManyEntries`].
pub(crate) fn vector_fixed_header(
    layout: FixedLayout,
    count: usize,
) -> [u8; VECTOR_FIXED_HEADER_BYTES] {
    let [lo, hi] = u16::try_from(count).unwrap_or(u16::MAX).to_le_bytes();
    [layout.version(), 0, lo, hi]
}

/// Decodes a vector in the fixed layout (either version), treating `bytes`
/// as hostile.
///
/// # Errors
/// [`WireError::Vector`] naming the first thing wrong: the version, the
/// flags, an entry count over [`VECTOR_FIXED_ENTRIES_MAX`] (refused before
/// reading further), a length other than the count implies, an entry out of
/// order or repeated, a zero counter, version 2 for ids that all fit
/// version 1. Never panics.
pub fn decode_vector_fixed(bytes: &[u8]) -> Result<crate::clock::VersionVector, WireError> {
    use crate::clock::{ReplicaId, VersionVector};

    let len = bytes.len();
    let Some((&[version, flags, count_lo, count_hi], body)) =
        bytes.split_first_chunk::<VECTOR_FIXED_HEADER_BYTES>()
    else {
        return Err(FixedVectorError::Truncated {
            len,
            expected: VECTOR_FIXED_HEADER_BYTES,
        }
        .into());
    };
    let Some(layout) = FixedLayout::from_version(version) else {
        return Err(FixedVectorError::UnsupportedVersion { found: version }.into());
    };
    if flags != 0 {
        return Err(FixedVectorError::ReservedFlags { found: flags }.into());
    }
    let count = usize::from(u16::from_le_bytes([count_lo, count_hi]));
    if count > VECTOR_FIXED_ENTRIES_MAX {
        return Err(FixedVectorError::TooManyEntries { count }.into());
    }
    let expected = layout.bytes_for(count);
    if len < expected {
        return Err(FixedVectorError::Truncated { len, expected }.into());
    }
    if len > expected {
        return Err(FixedVectorError::TrailingBytes {
            extra: len - expected,
        }
        .into());
    }
    let id_bytes = layout.entry_bytes() - VECTOR_FIXED_COUNTER_BYTES;
    let mut previous: Option<u64> = None;
    let mut entries = Vec::with_capacity(count);
    for (index, entry) in body.chunks_exact(layout.entry_bytes()).enumerate() {
        let (replica, counter) = entry.split_at(id_bytes);
        // The conversions hold by `chunks_exact`; a failure is still an
        // error, not a panic.
        let replica = match layout {
            FixedLayout::Narrow => {
                <[u8; 4]>::try_from(replica).map(|r| u64::from(u32::from_le_bytes(r)))
            }
            FixedLayout::Wide => <[u8; 8]>::try_from(replica).map(u64::from_le_bytes),
        };
        let (Ok(replica), Ok(counter)) = (replica, <[u8; 8]>::try_from(counter)) else {
            return Err(FixedVectorError::Truncated { len, expected }.into());
        };
        let counter = u64::from_le_bytes(counter);
        if previous.is_some_and(|p| p >= replica) {
            return Err(FixedVectorError::Unsorted { index }.into());
        }
        if counter == 0 {
            return Err(FixedVectorError::ZeroCounter { index }.into());
        }
        previous = Some(replica);
        entries.push((ReplicaId::new(replica), counter));
    }
    // Sorted: the last id is the largest.
    if layout == FixedLayout::Wide && previous.is_none_or(|p| ReplicaId::new(p).is_narrow()) {
        return Err(FixedVectorError::WiderThanNeeded.into());
    }
    let vector: VersionVector = entries.into_iter().collect();
    debug_assert_eq!(vector.len(), count);
    debug_assert_eq!(FixedLayout::of(&vector), layout, "one vector, one encoding");
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_unknown_version_truncated_and_trailing() {
        assert_eq!(decode::<u64>(&[]), Err(WireError::Empty));
        assert_eq!(
            decode::<u64>(&[9, 1]),
            Err(WireError::UnsupportedVersion { found: 9 })
        );
        let frame = encode(&(1u64, 70_000u64)).unwrap();
        assert!(matches!(
            decode::<(u64, u64)>(&frame[..frame.len() - 1]),
            Err(WireError::Malformed(_))
        ));
        let mut long = frame.clone();
        long.push(0);
        assert_eq!(
            decode::<(u64, u64)>(&long),
            Err(WireError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        // A vector claiming u64::MAX elements.
        let frame = [WIRE_VERSION, 255, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(matches!(
            decode::<Vec<u64>>(&frame),
            Err(WireError::Malformed(_))
        ));
    }
}
