//! Rateless invertible Bloom lookup tables: set reconciliation whose bytes
//! grow with the difference alone, about 1.35 coded symbols per differing
//! item once the difference is large, and one symbol when the sets are
//! equal.
//!
//! Each side holds a set of distinct 64-bit items (here: the
//! [`item_fingerprint`](super::item_fingerprint) of each key and its state).
//! The encoder turns its set into an endless stream of [`CodedSymbol`]s;
//! item `x` is folded into symbol `i` with probability about `1 / (1 + i/2)`
//! (symbol 0 holds every item), each symbol keeping the XOR of its items,
//! the XOR of their checks and their count. The decoder subtracts its own
//! items from every symbol it receives: what is left is the symmetric
//! difference. A symbol left with one item (count ±1, and a check that
//! matches its sum) names that item and its side; peeling it out of the
//! other symbols frees more. Once symbol 0 is empty every difference has
//! been found, and the decoder asks for no more (Yang, Gilad and Alizadeh,
//! "Practical Rateless Set Reconciliation", SIGCOMM 2024; the index
//! sequence below is that paper's).
//!
//! The encoder streams a prefix of the symbols; the decoder asks for more
//! (doubling what it has, [`Decoder::wanted`]) until it is done, so a
//! reconciliation of `d` differing items takes about `log2(1.35 d)` round
//! trips and at most twice the symbols a perfect rate would have sent.
//!
//! This module is the algorithm and its wire format (a symbol is
//! [`SYMBOL_BYTES`] bytes). The engine's anti-entropy still reconciles by
//! ranges (`replication::core::ranges`); the `testing` feature exposes this
//! as `archipelago::testing::reconcile::riblt` for benches and checks.
//!
//! ```
//! use archipelago::testing::reconcile::riblt::{Decoder, Encoder, decode_symbols, encode_symbols};
//!
//! let ours: Vec<u64> = (1..=1000).collect();
//! // They missed 7 and 8 and hold 5000 we lack.
//! let theirs: Vec<u64> = (1..=1000).filter(|x| *x != 7 && *x != 8).chain([5000]).collect();
//!
//! let mut encoder = Encoder::new(ours.iter().copied());
//! let mut decoder = Decoder::new(theirs.iter().copied());
//! let mut wanted = 1;
//! while wanted > 0 {
//!     let frame = encode_symbols(&encoder.next_symbols(wanted));
//!     decoder.add_symbols(&decode_symbols(&frame)?)?;
//!     wanted = decoder.wanted();
//! }
//! let mut only_ours = decoder.remote().to_vec();
//! only_ours.sort();
//! assert_eq!(only_ours, vec![7, 8]);
//! assert_eq!(decoder.local(), &[5000]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limits and hostile input
//! A frame holds at most [`SYMBOLS_PER_MESSAGE_MAX`] symbols and a decoder
//! takes at most [`SYMBOLS_MAX`] in all; past either it refuses with a
//! typed [`RibltError`]. Decoding a frame allocates in proportion to the
//! frame. A peer sending made-up symbols can keep a decoder from finishing
//! (until [`SYMBOLS_MAX`]) or make it peel items that are no one's: a
//! caller maps every peeled item back to a key it holds (or asks the peer
//! for it), so an item that maps to nothing is refused there, and nothing
//! is merged that the usual join would not take. Items must be distinct:
//! an item held twice by one side cancels out of its symbols.

use std::fmt;

use super::mix64;

/// Bytes of one coded symbol on the wire: its sum (8), its check (8) and
/// its count modulo 256 (1).
pub const SYMBOL_BYTES: usize = 17;

/// The most coded symbols one frame holds (1.1 MiB of them).
pub const SYMBOLS_PER_MESSAGE_MAX: usize = 64 * 1024;

/// The most coded symbols a decoder takes in one reconciliation: enough for
/// about three million differing items; past it the peer is told to use
/// another way (a full transfer).
pub const SYMBOLS_MAX: usize = 4 * 1024 * 1024;

/// The multiplier of the index sequence's generator (the paper's).
const PRNG_MULTIPLIER: u64 = 0xda94_2042_e4dd_58b5;

/// Salts that keep an item's check and its index sequence independent of
/// the item itself (and of each other).
const CHECK_SALT: u64 = 0x6a09_e667_f3bc_c908;
const SEQUENCE_SALT: u64 = 0xbb67_ae85_84ca_a73b;

/// What is folded into one coded symbol: the XOR of its items, the XOR of
/// their checks, and their count modulo 256 (a decoder's symbols hold the
/// encoder's items minus its own, so the count is a difference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodedSymbol {
    /// XOR of the items.
    pub sum: u64,
    /// XOR of the items' checks.
    pub check: u64,
    /// Number of items (the encoder's minus the decoder's), modulo 256.
    pub count: u8,
}

impl CodedSymbol {
    /// Folds `item` in (`add`) or out.
    fn fold(&mut self, item: u64, add: bool) {
        self.sum ^= item;
        self.check ^= check_of(item);
        self.count = if add {
            self.count.wrapping_add(1)
        } else {
            self.count.wrapping_sub(1)
        };
    }

    /// True when nothing is left in the symbol.
    pub fn is_empty(&self) -> bool {
        *self == CodedSymbol::default()
    }

    /// The item this symbol holds alone, and whether the encoder holds it
    /// (`true`) or the decoder does: a count of ±1 and a check that matches
    /// the sum (a false match has probability about 2⁻⁶⁴).
    fn pure(&self) -> Option<(u64, bool)> {
        let side = match self.count {
            1 => true,
            u8::MAX => false,
            _ => return None,
        };
        (self.check == check_of(self.sum)).then_some((self.sum, side))
    }
}

fn check_of(item: u64) -> u64 {
    mix64(item ^ CHECK_SALT)
}

/// The indexes of the coded symbols one item is folded into: 0, then gaps
/// drawn so that index `i` is hit with probability about `1 / (1 + i/2)`.
#[derive(Clone, Copy, Debug)]
struct Sequence {
    state: u64,
    next: u64,
}

impl Sequence {
    fn of(item: u64) -> Sequence {
        Sequence {
            state: mix64(item ^ SEQUENCE_SALT),
            next: 0,
        }
    }

    /// Moves to the next index: `i + ceil((i + 1.5) * (1/sqrt(1-u) - 1))`
    /// with `u` uniform in [0, 1), drawn as `2³² / sqrt(r + 1)` for a
    /// random 64-bit `r`. The cast saturates, so a huge gap ends the
    /// sequence's use rather than wrapping.
    fn advance(&mut self) {
        self.state = self.state.wrapping_mul(PRNG_MULTIPLIER);
        let scale = (1u64 << 32) as f64 / ((self.state as f64) + 1.0).sqrt() - 1.0;
        let gap = ((self.next as f64 + 1.5) * scale).ceil() as u64;
        self.next = self.next.saturating_add(gap.max(1));
    }

    /// Folds `item` into every symbol of `symbols` (which start at index
    /// `first`) its sequence hits, and leaves the sequence past them.
    fn fold_into(&mut self, item: u64, add: bool, first: usize, symbols: &mut [CodedSymbol]) {
        let end = (first + symbols.len()) as u64;
        debug_assert!(self.next >= first as u64, "a sequence is never behind");
        while self.next < end {
            symbols[(self.next - first as u64) as usize].fold(item, add);
            self.advance();
        }
    }
}

/// Streams the coded symbols of one set, prefix by prefix.
#[derive(Debug)]
pub struct Encoder {
    items: Vec<(u64, Sequence)>,
    produced: usize,
}

impl Encoder {
    /// An encoder of `items` (distinct).
    pub fn new(items: impl IntoIterator<Item = u64>) -> Encoder {
        Encoder {
            items: items.into_iter().map(|x| (x, Sequence::of(x))).collect(),
            produced: 0,
        }
    }

    /// The next `len` coded symbols of the stream. Costs about
    /// `n + n · 2 ln((produced + len) / produced)` folds for `n` items.
    pub fn next_symbols(&mut self, len: usize) -> Vec<CodedSymbol> {
        let mut symbols = vec![CodedSymbol::default(); len];
        for (item, sequence) in &mut self.items {
            sequence.fold_into(*item, true, self.produced, &mut symbols);
        }
        self.produced += len;
        symbols
    }

    /// Symbols produced so far.
    pub fn produced(&self) -> usize {
        self.produced
    }
}

/// The first coded symbols of a set, kept current as items come and go
/// (a write replaces its key's old item by the new one): an exchange then
/// sends them, and subtracts them, with no work per item of the set.
/// Costs about `2 + 4 ln(len / 2)` folds per replaced item, and
/// [`SYMBOL_BYTES`]-ish memory per symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolPrefix {
    symbols: Vec<CodedSymbol>,
}

impl SymbolPrefix {
    /// The first `len` symbols of the empty set (`len` at most
    /// [`SYMBOLS_MAX`]).
    pub fn new(len: usize) -> SymbolPrefix {
        SymbolPrefix {
            symbols: vec![CodedSymbol::default(); len.min(SYMBOLS_MAX)],
        }
    }

    /// Adds `item` to the set.
    pub fn insert(&mut self, item: u64) {
        Sequence::of(item).fold_into(item, true, 0, &mut self.symbols);
    }

    /// Takes `item` out of the set (it must be in it).
    pub fn remove(&mut self, item: u64) {
        Sequence::of(item).fold_into(item, false, 0, &mut self.symbols);
    }

    /// The symbols from `first` on, at most `len` of them: what an encoder
    /// of the set streams.
    pub fn symbols(&self, first: usize, len: usize) -> &[CodedSymbol] {
        let first = first.min(self.symbols.len());
        let end = first.saturating_add(len).min(self.symbols.len());
        &self.symbols[first..end]
    }

    /// How many symbols it keeps.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// True when it keeps none.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

/// Why coded symbols are refused. The reconciliation they belong to is
/// then over (fall back to another way); nothing was learned from them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RibltError {
    /// A frame whose length is not a whole number of symbols.
    #[error("{bytes} bytes is not a whole number of {SYMBOL_BYTES}-byte symbols")]
    Truncated {
        /// The frame's length.
        bytes: usize,
    },
    /// More symbols in one frame than [`SYMBOLS_PER_MESSAGE_MAX`].
    #[error("{symbols} symbols in one frame (at most {SYMBOLS_PER_MESSAGE_MAX})")]
    TooManyInFrame {
        /// How many it holds.
        symbols: usize,
    },
    /// More symbols in all than the decoder takes ([`SYMBOLS_MAX`] or
    /// its own lower limit).
    #[error("more than {symbols_max} symbols in one reconciliation")]
    TooMany {
        /// The decoder's limit.
        symbols_max: usize,
    },
    /// Symbols that peel more items than an honest stream can: they do
    /// not come from one set.
    #[error("the symbols peel more items than they can hold")]
    Inconsistent,
}

/// Receives an encoder's symbols, subtracts its own set, and peels the
/// difference out.
pub struct Decoder {
    symbols: Vec<CodedSymbol>,
    /// What we subtract from each symbol received.
    own: Own,
    /// Items found only at the encoder, likewise.
    remote: Vec<(u64, Sequence)>,
    /// Items found only here, likewise.
    local: Vec<(u64, Sequence)>,
    /// Indexes of symbols to look at for a pure one.
    dirty: Vec<usize>,
    /// The most symbols taken ([`SYMBOLS_MAX`] unless set lower).
    symbols_max: usize,
}

/// A decoder's own set, as it subtracts it.
enum Own {
    /// Our items, each with its sequence past the symbols received.
    Items(Vec<(u64, Sequence)>),
    /// The first symbols of our set, kept by a [`SymbolPrefix`]: the
    /// decoder takes no more than these.
    Symbols(Vec<CodedSymbol>),
}

impl Own {
    fn len(&self) -> usize {
        match self {
            Own::Items(items) => items.len(),
            Own::Symbols(_) => 0,
        }
    }

    /// Takes our set out of `new`, the symbols from index `first` on.
    fn subtract(&mut self, first: usize, new: &mut [CodedSymbol]) {
        match self {
            Own::Items(items) => {
                for (item, sequence) in items {
                    sequence.fold_into(*item, false, first, new);
                }
            }
            Own::Symbols(own) => {
                for (symbol, ours) in new.iter_mut().zip(&own[first..]) {
                    symbol.sum ^= ours.sum;
                    symbol.check ^= ours.check;
                    symbol.count = symbol.count.wrapping_sub(ours.count);
                }
            }
        }
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("symbols", &self.symbols.len())
            .field("own items", &self.own.len())
            .field("remote", &self.remote.len())
            .field("local", &self.local.len())
            .field("done", &self.is_done())
            .finish()
    }
}

impl Decoder {
    /// A decoder holding `items` (distinct).
    pub fn new(items: impl IntoIterator<Item = u64>) -> Decoder {
        Decoder::with_limit(items, SYMBOLS_MAX)
    }

    /// A decoder that takes at most `symbols_max` symbols (at most
    /// [`SYMBOLS_MAX`]).
    pub fn with_limit(items: impl IntoIterator<Item = u64>, symbols_max: usize) -> Decoder {
        let items = items.into_iter().map(|x| (x, Sequence::of(x))).collect();
        Decoder::of(Own::Items(items), symbols_max)
    }

    /// A decoder whose set is summed up by `prefix`: it subtracts the
    /// prefix's symbols, with no work per item, and takes at most as many
    /// symbols as the prefix holds.
    pub fn against(prefix: &SymbolPrefix) -> Decoder {
        let len = prefix.symbols.len();
        Decoder::of(Own::Symbols(prefix.symbols.clone()), len)
    }

    fn of(own: Own, symbols_max: usize) -> Decoder {
        Decoder {
            symbols: Vec::new(),
            own,
            remote: Vec::new(),
            local: Vec::new(),
            dirty: Vec::new(),
            symbols_max: symbols_max.min(SYMBOLS_MAX),
        }
    }

    /// Takes the encoder's next symbols (in stream order) and peels what
    /// it can.
    pub fn add_symbols(&mut self, batch: &[CodedSymbol]) -> Result<(), RibltError> {
        let first = self.symbols.len();
        if first + batch.len() > self.symbols_max {
            return Err(RibltError::TooMany {
                symbols_max: self.symbols_max,
            });
        }
        self.symbols.extend_from_slice(batch);
        let new = &mut self.symbols[first..];
        self.own.subtract(first, new);
        // Items already peeled come out of the new symbols too: the
        // encoder's as they went in, ours as we took them out above.
        for (item, sequence) in &mut self.remote {
            sequence.fold_into(*item, false, first, new);
        }
        for (item, sequence) in &mut self.local {
            sequence.fold_into(*item, true, first, new);
        }
        self.dirty.extend(first..self.symbols.len());
        self.peel()
    }

    /// Peels pure symbols until none is left. An honest stream peels at
    /// most one item per symbol (peeling an item empties its pure symbol
    /// for good); more means made-up symbols, refused.
    fn peel(&mut self) -> Result<(), RibltError> {
        while let Some(index) = self.dirty.pop() {
            let Some((item, remote)) = self.symbols[index].pure() else {
                continue;
            };
            if self.remote.len() + self.local.len() >= self.symbols.len() {
                self.dirty.clear();
                return Err(RibltError::Inconsistent);
            }
            // Take the item out of every symbol it is in (an encoder's item
            // leaves as it came in; ours goes back in).
            let mut sequence = Sequence::of(item);
            let end = self.symbols.len() as u64;
            while sequence.next < end {
                let at = sequence.next as usize;
                self.symbols[at].fold(item, !remote);
                self.dirty.push(at);
                sequence.advance();
            }
            let found = if remote {
                &mut self.remote
            } else {
                &mut self.local
            };
            found.push((item, sequence));
        }
        Ok(())
    }

    /// True once every difference is found: symbol 0, which holds every
    /// item, is empty (false before any symbol arrived). Of an honest
    /// stream every symbol is then empty; of a made-up one, the items found
    /// are checked by the caller (see the module page).
    pub fn is_done(&self) -> bool {
        self.symbols.first().is_some_and(CodedSymbol::is_empty)
    }

    /// How many more symbols to ask the encoder for: none once done, else
    /// as many as received (at least one), so the stream doubles; none
    /// either at the decoder's limit, with [`is_done`](Self::is_done) false:
    /// the difference is too large for this way, reconcile another.
    pub fn wanted(&self) -> usize {
        if self.is_done() {
            0
        } else {
            self.symbols
                .len()
                .max(1)
                .min(self.symbols_max - self.symbols.len())
                .min(SYMBOLS_PER_MESSAGE_MAX)
        }
    }

    /// Symbols received so far.
    pub fn received(&self) -> usize {
        self.symbols.len()
    }

    /// Items found only at the encoder (in the order found).
    pub fn remote(&self) -> Vec<u64> {
        self.remote.iter().map(|(x, _)| *x).collect()
    }

    /// Items found only here (in the order found).
    pub fn local(&self) -> Vec<u64> {
        self.local.iter().map(|(x, _)| *x).collect()
    }
}

/// The wire form of `symbols`: [`SYMBOL_BYTES`] each, little-endian sum
/// and check, then the count.
pub fn encode_symbols(symbols: &[CodedSymbol]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(symbols.len() * SYMBOL_BYTES);
    for symbol in symbols {
        bytes.extend_from_slice(&symbol.sum.to_le_bytes());
        bytes.extend_from_slice(&symbol.check.to_le_bytes());
        bytes.push(symbol.count);
    }
    bytes
}

/// Reads a frame written by [`encode_symbols`]; never panics, and allocates
/// in proportion to `bytes`.
pub fn decode_symbols(bytes: &[u8]) -> Result<Vec<CodedSymbol>, RibltError> {
    if !bytes.len().is_multiple_of(SYMBOL_BYTES) {
        return Err(RibltError::Truncated { bytes: bytes.len() });
    }
    let len = bytes.len() / SYMBOL_BYTES;
    if len > SYMBOLS_PER_MESSAGE_MAX {
        return Err(RibltError::TooManyInFrame { symbols: len });
    }
    let word = |part: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(part);
        u64::from_le_bytes(word)
    };
    Ok(bytes
        .chunks_exact(SYMBOL_BYTES)
        .map(|chunk| CodedSymbol {
            sum: word(&chunk[..8]),
            check: word(&chunk[8..16]),
            count: chunk[16],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a whole reconciliation: the symbols it took, the frames, and
    /// the two sides' differences as found.
    fn reconcile(ours: &[u64], theirs: &[u64]) -> (usize, usize, Vec<u64>, Vec<u64>) {
        let mut encoder = Encoder::new(ours.iter().copied());
        let mut decoder = Decoder::new(theirs.iter().copied());
        let (mut wanted, mut frames) = (1, 0);
        while wanted > 0 {
            let frame = encode_symbols(&encoder.next_symbols(wanted));
            decoder
                .add_symbols(&decode_symbols(&frame).unwrap())
                .unwrap();
            frames += 1;
            wanted = decoder.wanted();
        }
        let (mut remote, mut local) = (decoder.remote(), decoder.local());
        remote.sort_unstable();
        local.sort_unstable();
        (decoder.received(), frames, remote, local)
    }

    fn random(seed: u64, len: usize) -> Vec<u64> {
        let mut state = seed.wrapping_mul(2).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                mix64(state)
            })
            .collect()
    }

    #[test]
    fn equal_sets_take_one_symbol() {
        let items = random(1, 10_000);
        let (symbols, frames, remote, local) = reconcile(&items, &items);
        assert_eq!((symbols, frames), (1, 1));
        assert!(remote.is_empty() && local.is_empty());
    }

    #[test]
    fn every_difference_is_found_on_its_side() {
        for (seed, d) in [
            (2u64, 1usize),
            (3, 2),
            (4, 10),
            (5, 100),
            (6, 1000),
            (7, 5000),
        ] {
            let shared = random(seed, 20_000);
            let only_ours = random(seed + 100, d / 2 + d % 2);
            let only_theirs = random(seed + 200, d / 2);
            let ours: Vec<u64> = shared.iter().chain(&only_ours).copied().collect();
            let theirs: Vec<u64> = shared.iter().chain(&only_theirs).copied().collect();
            let (symbols, frames, remote, local) = reconcile(&ours, &theirs);
            let (mut want_remote, mut want_local) = (only_ours.clone(), only_theirs.clone());
            want_remote.sort_unstable();
            want_local.sort_unstable();
            assert_eq!(
                remote, want_remote,
                "seed {seed}, d {d}: the encoder's items"
            );
            assert_eq!(local, want_local, "seed {seed}, d {d}: the decoder's items");
            // Doubling overshoots a rate of ~1.35-1.7 symbols per item by at
            // most 2x, plus the first few symbols of a small difference.
            assert!(
                symbols <= 4 * d + 8,
                "seed {seed}, d {d}: {symbols} symbols"
            );
            assert!(
                frames <= 2 + (4 * d + 8).ilog2() as usize,
                "seed {seed}, d {d}: {frames} frames"
            );
        }
    }

    #[test]
    fn a_kept_prefix_reconciles_as_the_items_do() {
        let shared = random(13, 5000);
        let mut ours = SymbolPrefix::new(1024);
        let mut theirs = SymbolPrefix::new(1024);
        for item in &shared {
            ours.insert(*item);
            theirs.insert(*item);
        }
        // Writes: we replace 40 items, they add 30 and drop 20.
        for (old, new) in shared[..40].iter().zip(random(14, 40)) {
            ours.remove(*old);
            ours.insert(new);
        }
        let added = random(15, 30);
        added.iter().for_each(|x| theirs.insert(*x));
        shared[100..120].iter().for_each(|x| theirs.remove(*x));
        let mut decoder = Decoder::against(&theirs);
        let (mut first, mut wanted) = (0, 1);
        while wanted > 0 {
            decoder.add_symbols(ours.symbols(first, wanted)).unwrap();
            first += wanted;
            wanted = decoder.wanted();
        }
        let (mut remote, mut local) = (decoder.remote(), decoder.local());
        remote.sort_unstable();
        local.sort_unstable();
        let mut want_remote: Vec<u64> = random(14, 40)
            .into_iter()
            .chain(shared[100..120].iter().copied())
            .collect();
        want_remote.sort_unstable();
        let mut want_local: Vec<u64> = shared[..40].iter().chain(&added).copied().collect();
        want_local.sort_unstable();
        assert_eq!(remote, want_remote);
        assert_eq!(local, want_local);
        assert!(first <= 512, "{first} symbols for 110 items");
        // A prefix too short for the difference ends in a typed refusal.
        let mut short = Decoder::against(&SymbolPrefix::new(8));
        let big = Encoder::new(random(16, 100)).next_symbols(8);
        short.add_symbols(&big).unwrap();
        assert!(!short.is_done());
        assert_eq!(
            short.wanted(),
            0,
            "at its limit it asks for no more, not done"
        );
        assert_eq!(
            short.add_symbols(&big[..1]),
            Err(RibltError::TooMany { symbols_max: 8 })
        );
    }

    #[test]
    fn one_item_alone_is_found_from_symbol_zero() {
        let shared = random(8, 1000);
        let mut ours = shared.clone();
        ours.push(42);
        let (symbols, _, remote, local) = reconcile(&ours, &shared);
        assert_eq!((symbols, remote, local), (1, vec![42], vec![]));
    }

    #[test]
    fn hostile_frames_are_refused_or_harmless() {
        assert_eq!(
            decode_symbols(&[0; SYMBOL_BYTES + 1]),
            Err(RibltError::Truncated {
                bytes: SYMBOL_BYTES + 1
            })
        );
        let too_many = vec![0; (SYMBOLS_PER_MESSAGE_MAX + 1) * SYMBOL_BYTES];
        assert_eq!(
            decode_symbols(&too_many),
            Err(RibltError::TooManyInFrame {
                symbols: SYMBOLS_PER_MESSAGE_MAX + 1
            })
        );
        // Made-up symbols: decoding goes on without panicking, refuses
        // what peels more than it can hold, and takes a bounded number.
        let mut decoder = Decoder::new(random(9, 1000));
        let garbage: Vec<u8> = random(10, 3 * 1024)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .take(1024 * SYMBOL_BYTES)
            .collect();
        let result = decoder.add_symbols(&decode_symbols(&garbage).unwrap());
        assert!(
            matches!(result, Ok(()) | Err(RibltError::Inconsistent)),
            "{result:?}"
        );
        // A symbol that names an item alone, wherever it is: made pure at
        // every index, the same item peels again and again.
        let item = 77u64;
        let forged = CodedSymbol {
            sum: item,
            check: check_of(item),
            count: 1,
        };
        let mut decoder = Decoder::new([]);
        assert_eq!(
            decoder.add_symbols(&[forged; 64]),
            Err(RibltError::Inconsistent)
        );
        let mut decoder = Decoder::with_limit(random(12, 100), 100);
        let empty = [CodedSymbol::default(); 60];
        decoder.add_symbols(&empty).unwrap();
        assert_eq!(
            decoder.add_symbols(&empty),
            Err(RibltError::TooMany { symbols_max: 100 })
        );
        assert_eq!(decoder.received(), 60, "refused symbols are not taken");
        assert_eq!(decoder.wanted(), 40, "it asks for no more than its limit");
    }

    #[test]
    fn index_sequences_hit_index_i_about_once_in_1_plus_i_over_2() {
        let items = random(11, 20_000);
        let mut hits = [0usize; 64];
        for item in &items {
            let mut sequence = Sequence::of(*item);
            while sequence.next < 64 {
                hits[sequence.next as usize] += 1;
                sequence.advance();
            }
        }
        for (i, hit) in hits.iter().enumerate() {
            let expected = items.len() as f64 / (1.0 + i as f64 / 2.0);
            let ratio = *hit as f64 / expected;
            assert!(
                (0.85..1.15).contains(&ratio),
                "index {i}: {hit} hits, {expected:.0} expected"
            );
        }
    }
}
