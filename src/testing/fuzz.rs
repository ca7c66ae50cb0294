//! A fuzz harness for the decoders, on stable Rust (feature `testing`).
//!
//! No `cargo fuzz`, no nightly: [`run`] draws executions from a seed, each
//! one a frame built from a corpus of valid frames of every public type and
//! every engine message, then mutated
//! - at the byte level ([`mutate_frame`]): bit flips, random bytes,
//!   insertions, deletions, splices from other frames, truncations, and
//!   length prefixes overwritten with hostile varints (2³², 2⁴⁰, `u64::MAX`,
//!   one past the bytes left, ...);
//! - at the structure level: the frame decoded, one field or one mutator
//!   applied (edge-value counters, replicas, stamps, duplicate tables, ...),
//!   encoded again, and often mutated at the byte level after that.
//!
//! Every execution decodes the frame as its type (and, one time in eight,
//! as another type) and checks:
//! - no panic;
//! - no allocation over the cap: with [`CountingAllocator`] installed as
//!   the global allocator, the decode's peak heap is at most
//!   [`DECODE_PEAK_BYTES_PER_FRAME_BYTE`] × the frame's length +
//!   [`DECODE_PEAK_SLACK_BYTES`];
//! - decode → encode → decode is stable: the value decodes back equal, and
//!   encodes to the same bytes again;
//! - for a CRDT, merging the decoded value into the empty one gives it back
//!   (`⊥ ⊔ v == v`) and merging it into itself changes nothing.
//!
//! An execution is a pure function of `(seed, execution index)`: a failure
//! names both ([`FuzzFailure`]), and [`replay`] runs that one execution
//! again.
//!
//! The corpus builder ([`corpus`], [`message_frames`]), the mutator
//! ([`mutate_frame`]) and the allocator are public so that other harnesses
//! (a region fed mutated frames from a peer) can reuse them.
//!
//! ```
//! use archipelago::testing::fuzz::{self, FuzzConfig};
//!
//! let report = fuzz::run(&FuzzConfig { seed: 7, execs: 200, check_alloc: false })
//!     .unwrap_or_else(|failure| panic!("{failure}"));
//! assert_eq!(report.execs, 200);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::{self, Debug};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::{CausalContext, Dot, ReplicaId, Stamp, Timestamp, VersionVector};
use crate::crdt::{
    BoundedCounter, Crdt, GCounter, LwwMap, LwwRegister, MvRegister, OrMap, OrSet, PnCounter,
};
use crate::id::{SnowflakeId, SnowflakeLayout};
use crate::replication::message::{self, Blob, HomedOutcome, Message};
use crate::resolve::{VersionSet, Versioned};
use crate::session::SessionToken;
use crate::storage::{Identity, Progress};
use crate::wire::{self, DECODE_PEAK_BYTES_PER_FRAME_BYTE, DECODE_PEAK_SLACK_BYTES};

// ---------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------

/// A global allocator that counts, per thread, the bytes live and their
/// peak, so a test can measure what one call allocates.
///
/// Install it in a test binary, then wrap the call in [`measure`]:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: archipelago::testing::fuzz::CountingAllocator =
///     archipelago::testing::fuzz::CountingAllocator;
/// ```
///
/// A reallocation counts the old and the new block both until it returns:
/// the measure errs high, never low.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

thread_local! {
    static LIVE_BYTES: Cell<usize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<usize> = const { Cell::new(0) };
    static LARGEST_REQUEST_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn on_alloc(bytes: usize) {
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get().saturating_add(bytes);
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = LARGEST_REQUEST_BYTES.try_with(|largest| largest.set(largest.get().max(bytes)));
}

fn on_free(bytes: usize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// thread-local cells with no destructor, touched without allocating.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            on_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            on_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        on_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_alloc(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            on_free(new_size);
        } else {
            on_free(layout.size());
        }
        moved
    }
}

/// What a measured call allocated on its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllocPeak {
    /// The most bytes live at once above what was live before the call.
    pub peak_bytes: usize,
    /// The largest single request (allocation or reallocation), in bytes.
    pub largest_request_bytes: usize,
}

/// Runs `f` and reports what it allocated on this thread at peak. Reports
/// zeros unless [`CountingAllocator`] is the global allocator.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, AllocPeak) {
    let base = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(base));
    LARGEST_REQUEST_BYTES.with(|largest| largest.set(0));
    let result = f();
    let peak = AllocPeak {
        peak_bytes: PEAK_BYTES.with(Cell::get).saturating_sub(base),
        largest_request_bytes: LARGEST_REQUEST_BYTES.with(Cell::get),
    };
    (result, peak)
}

/// True when [`CountingAllocator`] is the global allocator.
pub fn counting_allocator_installed() -> bool {
    let (probe, peak) = measure(|| std::hint::black_box(Vec::<u8>::with_capacity(64)));
    drop(probe);
    peak.largest_request_bytes >= 64
}

/// The most a decode of a `frame_bytes`-byte frame may allocate at peak:
/// the cap the harness and `tests/wire_hostile.rs` check.
pub const fn decode_peak_cap_bytes(frame_bytes: usize) -> usize {
    DECODE_PEAK_BYTES_PER_FRAME_BYTE
        .saturating_mul(frame_bytes)
        .saturating_add(DECODE_PEAK_SLACK_BYTES)
}

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// A small seeded generator (SplitMix64): the harness's only source of
/// randomness, so a run is a function of its seed.
#[derive(Debug, Clone)]
pub struct FuzzRng(u64);

impl FuzzRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        FuzzRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A counter biased to the edges: 0, 1, small, huge, `u64::MAX`.
    pub fn edgy_u64(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX - 1,
            4 => 1 << self.below(64),
            5 => self.next_u64(),
            _ => self.below(8) as u64 + 1,
        }
    }

    /// A replica id, mostly from a handful so values meet.
    pub fn replica(&mut self) -> ReplicaId {
        if self.one_in(8) {
            ReplicaId::new(self.next_u64())
        } else {
            ReplicaId::new(self.below(4) as u64 + 1)
        }
    }

    /// A stamp, often tied with others.
    pub fn stamp(&mut self) -> Stamp {
        let time = if self.one_in(8) {
            Timestamp::from_u64(self.edgy_u64())
        } else {
            Timestamp::new(1_000 + self.below(8) as u64, self.below(2) as u16)
        };
        Stamp::new(time, self.replica())
    }

    /// A short string, sometimes empty.
    pub fn text(&mut self) -> String {
        let len = self.below(6);
        (0..len)
            .map(|_| (b'a' + self.below(4) as u8) as char)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Byte-level mutation
// ---------------------------------------------------------------------------

/// A varint (bincode's encoding) claiming a length or counter no frame
/// backs: what an attacker writes into a length prefix.
fn hostile_varint(rng: &mut FuzzRng, left: usize) -> Vec<u8> {
    let value: u64 = match rng.below(9) {
        0 => u64::MAX,
        1 => 1 << 32,
        2 => 1 << 40,
        3 => 0x4000_0000,
        4 => (left as u64).saturating_add(1),
        5 => (left as u64).saturating_mul(2),
        6 => wire::FRAME_BYTES_MAX as u64,
        7 => u32::MAX as u64,
        _ => rng.next_u64(),
    };
    let mut out = Vec::with_capacity(9);
    if value < 251 {
        out.push(value as u8);
    } else if let Ok(v) = u16::try_from(value) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(value) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// One to four byte-level mutations of `frame`: flips, random bytes,
/// insertions, deletions, splices from `donors`, truncations and hostile
/// length prefixes. The version byte is kept most of the time, so the
/// mutations reach the decoder behind it.
pub fn mutate_frame(frame: &[u8], donors: &[Vec<u8>], rng: &mut FuzzRng) -> Vec<u8> {
    let mut out = frame.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        // Positions from 1: the version byte survives unless chosen below.
        let at = 1 + rng.below(out.len().saturating_sub(1).max(1));
        let at = at.min(out.len());
        match rng.below(9) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 if at < out.len() => out[at] = rng.next_u64() as u8,
            2 => {
                let n = 1 + rng.below(4);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            4 if !donors.is_empty() => {
                let donor = &donors[rng.below(donors.len())];
                if donor.len() > 1 {
                    let from = 1 + rng.below(donor.len() - 1);
                    let end = (from + 1 + rng.below(32)).min(donor.len());
                    let end_here = (at + rng.below(8)).min(out.len());
                    out.splice(at..end_here, donor[from..end].iter().copied());
                }
            }
            5 => out.truncate(at),
            6 | 7 => {
                let varint = hostile_varint(rng, out.len().saturating_sub(at));
                let end = (at + varint.len().min(1 + rng.below(2))).min(out.len());
                out.splice(at..end, varint);
            }
            8 if !out.is_empty() && rng.one_in(16) => out[0] = rng.next_u64() as u8,
            _ => {
                if at < out.len() {
                    out[at] = out[at].wrapping_add(1);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Targets: the types decoded, with samples and structure-level mutators
// ---------------------------------------------------------------------------

/// A type the harness decodes: how to make valid samples of it and how to
/// change one field of a decoded value.
trait FuzzValue: Serialize + DeserializeOwned + PartialEq + Debug + Sized {
    const NAME: &'static str;

    fn samples(rng: &mut FuzzRng) -> Vec<Self>;

    /// A structure-level change: one field or one mutator.
    fn mutate(&mut self, rng: &mut FuzzRng);

    /// Laws a decoded value keeps beyond the round trip (CRDTs: bottom and
    /// idempotence of the join).
    fn laws(&self) -> Result<(), String> {
        Ok(())
    }

    /// Extra decoding of what the value carries (a message's entries).
    fn inner(&self) {}
}

fn crdt_laws<T: Crdt + PartialEq + Debug>(value: &T) -> Result<(), String> {
    let mut from_bottom = T::default();
    from_bottom.merge(value);
    if from_bottom != *value {
        return Err(format!("⊥ ⊔ v != v: {from_bottom:?} from {value:?}"));
    }
    let mut twice = value.clone();
    twice.merge(value);
    if twice != *value {
        return Err(format!("v ⊔ v != v: {twice:?} from {value:?}"));
    }
    Ok(())
}

fn vector(rng: &mut FuzzRng, entries: usize) -> VersionVector {
    (0..entries)
        .map(|_| (rng.replica(), 1 + rng.below(20) as u64))
        .collect()
}

impl FuzzValue for VersionVector {
    const NAME: &'static str = "VersionVector";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let wide: VersionVector = (1..=200u32)
            .map(|r| (ReplicaId::from(r), r as u64))
            .collect();
        vec![VersionVector::new(), vector(rng, 1), vector(rng, 3), wide]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let replica = rng.replica();
        self.raise(replica, rng.edgy_u64());
    }
    fn laws(&self) -> Result<(), String> {
        let mut joined = VersionVector::new();
        joined.merge(self);
        (joined == *self)
            .then_some(())
            .ok_or_else(|| format!("⊥ ⊔ v != v for {self:?}"))
    }
}

impl FuzzValue for CausalContext {
    const NAME: &'static str = "CausalContext";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut with_cloud = CausalContext::from_vector(vector(rng, 2));
        with_cloud.insert(Dot::new(ReplicaId::new(9), 5));
        with_cloud.insert(Dot::new(ReplicaId::new(9), 7));
        vec![CausalContext::new(), with_cloud]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        self.insert(Dot::new(rng.replica(), rng.edgy_u64()));
    }
}

impl FuzzValue for Dot {
    const NAME: &'static str = "Dot";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        vec![Dot::new(rng.replica(), 1)]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        self.counter = rng.edgy_u64();
    }
}

impl FuzzValue for Stamp {
    const NAME: &'static str = "Stamp";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        vec![rng.stamp()]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        *self = rng.stamp();
    }
}

impl FuzzValue for GCounter {
    const NAME: &'static str = "GCounter";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut c = GCounter::new();
        for _ in 0..3 {
            let replica = rng.replica();
            c.inc(replica, 1 + rng.below(100) as u64);
        }
        vec![GCounter::new(), c]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let replica = rng.replica();
        self.inc(replica, rng.edgy_u64());
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for PnCounter {
    const NAME: &'static str = "PnCounter";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut c = PnCounter::new();
        c.inc(rng.replica(), 5);
        c.dec(rng.replica(), 2);
        vec![PnCounter::new(), c]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let replica = rng.replica();
        if rng.one_in(2) {
            self.inc(replica, rng.edgy_u64());
        } else {
            self.dec(replica, rng.edgy_u64());
        }
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for OrSet<u64> {
    const NAME: &'static str = "OrSet<u64>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut set = OrSet::new();
        for i in 0..20u64 {
            set.insert(rng.replica(), i);
        }
        set.remove(&3);
        let mut big = OrSet::new();
        for i in 0..300u64 {
            big.insert(ReplicaId::new(1 + i % 5), i);
        }
        vec![OrSet::new(), set, big]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let element = rng.below(24) as u64;
        match rng.below(4) {
            0 => drop(self.remove(&element)),
            1 => drop(self.clear()),
            _ => drop(self.insert(rng.replica(), element)),
        }
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for OrSet<String> {
    const NAME: &'static str = "OrSet<String>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut set = OrSet::new();
        for _ in 0..10 {
            set.insert(rng.replica(), rng.text());
        }
        vec![set]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let element = rng.text();
        if rng.one_in(3) {
            self.remove(&element);
        } else {
            self.insert(rng.replica(), element);
        }
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for LwwRegister<String> {
    const NAME: &'static str = "LwwRegister<String>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut r = LwwRegister::new();
        r.set(rng.stamp(), rng.text());
        vec![LwwRegister::new(), r]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        self.set(rng.stamp(), rng.text());
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for LwwMap<String, Vec<u8>> {
    const NAME: &'static str = "LwwMap<String, Vec<u8>>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut map = LwwMap::new();
        for i in 0..10u8 {
            map.insert(rng.stamp(), format!("k{i}"), vec![i; 3]);
        }
        map.remove(rng.stamp(), "k1".to_string());
        vec![LwwMap::new(), map]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let key = rng.text();
        if rng.one_in(3) {
            self.remove(rng.stamp(), key);
        } else {
            let value = vec![rng.next_u64() as u8; rng.below(4)];
            self.insert(rng.stamp(), key, value);
        }
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for MvRegister<String> {
    const NAME: &'static str = "MvRegister<String>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut a = MvRegister::new();
        let mut b = MvRegister::new();
        a.write(ReplicaId::new(1), rng.text());
        let delta = b.write(ReplicaId::new(2), rng.text());
        a.merge(&delta);
        vec![MvRegister::new(), a]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        self.write(rng.replica(), rng.text());
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for BoundedCounter {
    const NAME: &'static str = "BoundedCounter";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
        let mut c = BoundedCounter::new();
        c.inc(a, 1 + rng.below(100) as u64);
        let _ = c.transfer(a, b, 1);
        let _ = c.try_dec(b, 1);
        vec![BoundedCounter::new(), c]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let (here, there) = (rng.replica(), rng.replica());
        let n = rng.edgy_u64();
        let _ = match rng.below(3) {
            0 => Ok(self.inc(here, n)),
            1 => self.try_dec(here, n),
            _ => self.transfer(here, there, n),
        };
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for OrMap<u64, OrMap<String, PnCounter>> {
    const NAME: &'static str = "OrMap<u64, OrMap<String, PnCounter>>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut carts = OrMap::new();
        for cart in 0..6u64 {
            let here = rng.replica();
            let line = rng.text();
            carts.update(here, cart, |lines: &mut OrMap<String, PnCounter>| {
                lines.update(here, line, |q| q.inc(here, 2))
            });
        }
        carts.remove(&2);
        vec![OrMap::new(), carts]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let (here, cart, line) = (rng.replica(), rng.below(8) as u64, rng.text());
        match rng.below(3) {
            0 => drop(self.remove(&cart)),
            1 => drop(self.update(here, cart, |lines| lines.remove(&line))),
            _ => {
                let n = rng.edgy_u64();
                drop(self.update(here, cart, |lines| {
                    lines.update(here, line, |q| q.dec(here, n))
                }));
            }
        }
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

/// A struct value of a resolver table, its last field optional with a
/// default: the shape schema evolution decodes tolerantly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FuzzProfile {
    /// A leading field.
    pub visits: u32,
    /// A trailing field a newer struct added.
    #[serde(default)]
    pub nickname: Option<String>,
}

impl FuzzValue for VersionSet<FuzzProfile> {
    const NAME: &'static str = "VersionSet<FuzzProfile>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut a = VersionSet::new();
        let mut b = VersionSet::new();
        let stamp = |ms, r| Stamp::new(Timestamp::new(ms, 0), ReplicaId::new(r));
        let profile = |rng: &mut FuzzRng| FuzzProfile {
            visits: rng.next_u64() as u32,
            nickname: rng.one_in(2).then(|| rng.text()),
        };
        let da = a.write(stamp(1_000, 1), profile(rng));
        let db = b.write(stamp(1_001, 2), profile(rng));
        a.merge(&db);
        let mut deleted = a.clone();
        deleted.remove();
        vec![da, a, deleted]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        let nickname = rng.one_in(2).then(|| rng.text());
        self.write(
            rng.stamp(),
            FuzzProfile {
                visits: rng.next_u64() as u32,
                nickname,
            },
        );
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for VersionSet<String> {
    const NAME: &'static str = "VersionSet<String>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let mut a = VersionSet::new();
        let mut b = VersionSet::new();
        let mut c = VersionSet::new();
        let da = a.write(
            Stamp::new(Timestamp::new(1_000, 0), ReplicaId::new(1)),
            rng.text(),
        );
        let db = b.write(
            Stamp::new(Timestamp::new(1_001, 0), ReplicaId::new(2)),
            rng.text(),
        );
        let dc = c.write(
            Stamp::new(Timestamp::new(1_002, 0), ReplicaId::new(3)),
            rng.text(),
        );
        a.merge(&db);
        a.merge(&dc);
        vec![VersionSet::new(), da, a]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        self.write(rng.stamp(), rng.text());
    }
    fn laws(&self) -> Result<(), String> {
        crdt_laws(self)
    }
}

impl FuzzValue for Versioned<String> {
    const NAME: &'static str = "Versioned<String>";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        vec![Versioned::new(rng.text(), vector(rng, 2), rng.stamp())]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        match rng.below(3) {
            0 => self.stamp = rng.stamp(),
            1 => self.version.raise(rng.replica(), rng.edgy_u64()),
            _ => self.value = rng.text(),
        }
    }
}

impl FuzzValue for SessionToken {
    const NAME: &'static str = "SessionToken";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        vec![SessionToken::from_vector(vector(rng, 3))]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        self.merge(&SessionToken::from_dot(Dot::new(
            rng.replica(),
            rng.edgy_u64(),
        )));
    }
    fn inner(&self) {
        // The token's other two forms decode from hostile bytes too.
        if let Ok(bytes) = self.to_bytes() {
            let _ = SessionToken::from_bytes(&bytes);
        }
    }
}

impl FuzzValue for Identity {
    const NAME: &'static str = "Identity";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        vec![Identity {
            region: "ap-northeast".into(),
            replica: rng.replica(),
            incarnation: 3,
        }]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        match rng.below(3) {
            0 => self.region = rng.text(),
            1 => self.replica = rng.replica(),
            _ => self.incarnation = rng.edgy_u64(),
        }
    }
}

impl FuzzValue for Progress {
    const NAME: &'static str = "Progress";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        vec![Progress {
            seq: 12,
            hlc: Timestamp::new(5_000, 2),
            applied: vector(rng, 3),
        }]
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        match rng.below(3) {
            0 => self.seq = rng.edgy_u64(),
            1 => self.hlc = Timestamp::from_u64(rng.edgy_u64()),
            _ => self.applied.raise(rng.replica(), rng.edgy_u64()),
        }
    }
}

impl FuzzValue for SnowflakeLayout {
    const NAME: &'static str = "SnowflakeLayout";
    fn samples(_rng: &mut FuzzRng) -> Vec<Self> {
        vec![SnowflakeLayout::default()]
    }
    fn mutate(&mut self, _rng: &mut FuzzRng) {}
}

impl FuzzValue for SnowflakeId {
    const NAME: &'static str = "SnowflakeId";
    fn samples(_rng: &mut FuzzRng) -> Vec<Self> {
        [0i64, 1, i64::MAX]
            .into_iter()
            .filter_map(|n| SnowflakeId::try_from(n).ok())
            .collect()
    }
    fn mutate(&mut self, _rng: &mut FuzzRng) {}
}

/// Packed entries as the engine ships them: valid keys and values.
fn packed_entries(rng: &mut FuzzRng, tables: usize, n: usize) -> Blob {
    let writer = rng.replica();
    packed_entries_of(rng, writer, tables, n)
}

/// [`packed_entries`], counters of `writer` (every other one of a random
/// replica).
fn packed_entries_of(rng: &mut FuzzRng, writer: ReplicaId, tables: usize, n: usize) -> Blob {
    let mut packed = Vec::new();
    for i in 0..n {
        let mut key = Vec::new();
        let mut value = Vec::new();
        let mut counter = GCounter::new();
        let replica = if i % 2 == 0 { writer } else { rng.replica() };
        counter.inc(replica, 1 + i as u64);
        // Bare bodies cannot fail for these types; an empty one is still a
        // well-framed entry.
        let _ = wire::encode_bare_into(&format!("key-{i}"), &mut key);
        let _ = wire::encode_bare_into(&counter, &mut value);
        message::push_entry(&mut packed, i % tables.max(1), &key, &value);
    }
    Blob(packed)
}

/// A batch in protocol 7's layout, its origin one its entries name.
fn compact_batch(rng: &mut FuzzRng, tables: Vec<String>) -> Message {
    let wide = ReplicaId::new(0x9e37_79b9_7f4a_7c15);
    Message::Batch {
        origin: wide,
        first: 1,
        last: 3,
        deps: vector(rng, 3)
            .iter()
            .chain([(ReplicaId::new(u64::MAX), 2)])
            .collect(),
        sent_at: Timestamp::new(9_000, 2),
        tables,
        entries: packed_entries_of(rng, wide, 2, 3),
    }
    .compact()
}

/// `FuzzValue::mutate` for the anti-entropy messages.
fn mutate_exchange(message: &mut Message, rng: &mut FuzzRng) {
    match message {
        Message::SyncRequest {
            session,
            applied,
            digests,
        } => match rng.below(3) {
            0 => *session = rng.edgy_u64(),
            1 => applied.raise(rng.replica(), rng.edgy_u64()),
            _ => digests.push((rng.text(), vec![0; rng.below(16)])),
        },
        Message::SyncStates {
            chunk,
            chunks,
            buckets,
            applied,
            ..
        } => match rng.below(4) {
            0 => *chunk = rng.next_u64() as u32,
            1 => *chunks = rng.next_u64() as u32,
            2 => buckets.push((rng.text(), vec![rng.next_u64() as u32])),
            _ => *applied = None,
        },
        Message::SyncDone { session } => *session = rng.edgy_u64(),
        Message::SyncRanges {
            session,
            reply,
            round,
            frames,
        } => match rng.below(5) {
            0 => *session = rng.edgy_u64(),
            1 => *reply = !*reply,
            2 => *round = rng.edgy_u64() as u32,
            3 => frames.push((rng.text(), random_blob(rng))),
            _ => {
                if let Some((_, frame)) = frames.first_mut() {
                    frame.0.push(rng.next_u64() as u8);
                }
            }
        },
        Message::SyncStatesGrouped(c) => match rng.below(4) {
            0 => c.chunk = rng.next_u64() as u32,
            1 => c.applied = None,
            2 => c.group_tables.push(rng.text()),
            _ => c.groups.push(vec![
                (rng.next_u64() as u32, random_blob(rng));
                rng.below(4)
            ]),
        },
        _ => {}
    }
}

/// A sample last chunk of a transfer with its transaction groups.
fn grouped_sample(rng: &mut FuzzRng) -> Message {
    Message::SyncStatesGrouped(Box::new(message::GroupedChunk {
        session: 3,
        push: false,
        chunk: 0,
        chunks: 1,
        sent_at: Timestamp::new(9_200, 0),
        buckets: Vec::new(),
        tables: vec!["hits".into(), "likes".into()],
        entries: packed_entries(rng, 2, 2),
        applied: Some(vector(rng, 2)),
        group_tables: vec!["hits".into()],
        groups: vec![vec![
            (0, message::Blob(vec![1])),
            (0, message::Blob(vec![2])),
        ]],
    }))
}

/// The messages of relay (protocol 7 on), one of each.
fn relay_samples(rng: &mut FuzzRng) -> Vec<Message> {
    vec![
        Message::Relay {
            origin: ReplicaId::new(2),
            first: 7,
            last: 8,
            deps: vector(rng, 2),
            sent_at: Timestamp::new(9_050, 2),
            tables: vec!["likes".into()],
            entries: packed_entries(rng, 1, 2),
        },
        Message::RelayWant {
            origin: ReplicaId::new(2),
            held: 6,
            want: true,
        },
    ]
}

/// `FuzzValue::mutate` for the messages of relay.
fn mutate_relay(message: &mut Message, rng: &mut FuzzRng) {
    match message {
        Message::Relay {
            origin,
            first,
            last,
            deps,
            tables,
            entries,
            ..
        } => match rng.below(6) {
            0 => *origin = rng.replica(),
            1 => *first = rng.edgy_u64(),
            2 => *last = rng.edgy_u64(),
            3 => deps.raise(rng.replica(), rng.edgy_u64()),
            4 => tables.push(tables.first().cloned().unwrap_or_default()),
            _ => {
                let n = rng.below(4);
                *entries = packed_entries(rng, tables.len() + 1, n);
            }
        },
        Message::RelayWant { origin, held, want } => match rng.below(3) {
            0 => *origin = rng.replica(),
            1 => *held = rng.edgy_u64(),
            _ => *want = !*want,
        },
        _ => {}
    }
}

/// Up to 7 bytes of one random value.
fn random_blob(rng: &mut FuzzRng) -> message::Blob {
    message::Blob(vec![rng.next_u64() as u8; rng.below(8)])
}

/// One of the outcomes a home answers with, its fields random.
fn random_outcome(rng: &mut FuzzRng) -> HomedOutcome {
    match rng.below(5) {
        0 => HomedOutcome::Rejected {
            rejection: random_blob(rng),
        },
        1 => HomedOutcome::Refused(crate::region::HomedRefusal::NotHome {
            home: Some(rng.text()),
        }),
        2 => HomedOutcome::Refused(crate::region::HomedRefusal::Moved {
            home: rng.text(),
            epoch: rng.edgy_u64(),
        }),
        3 => HomedOutcome::DoneAt {
            written: Some(Dot::new(rng.replica(), rng.edgy_u64())),
            value: None,
            epoch: rng.edgy_u64(),
        },
        _ => HomedOutcome::Done {
            written: Some(Dot::new(rng.replica(), rng.edgy_u64())),
            value: None,
        },
    }
}

/// A range-reconciliation frame opening an exchange of an empty table.
fn ranges_sample() -> Message {
    Message::SyncRanges {
        session: 3,
        reply: false,
        round: 0,
        frames: vec![(
            "hits".into(),
            message::Blob(
                crate::replication::reconcile::RangeMessage::initiate(
                    &crate::replication::reconcile::RangeIndex::new(),
                )
                .encode()
                .expect("a small message"),
            ),
        )],
    }
}

/// One mutation of a batch, plain or compact.
fn mutate_batch(message: &mut Message, rng: &mut FuzzRng) {
    match message {
        Message::Batch {
            origin,
            first,
            last,
            deps,
            tables,
            entries,
            ..
        } => match rng.below(6) {
            0 => *origin = rng.replica(),
            1 => *first = rng.edgy_u64(),
            2 => *last = rng.edgy_u64(),
            3 => deps.raise(rng.replica(), rng.edgy_u64()),
            4 => tables.push(tables.first().cloned().unwrap_or_default()),
            _ => {
                let n = rng.below(4);
                *entries = packed_entries(rng, tables.len() + 1, n);
            }
        },
        Message::CompactBatch {
            origin,
            deps,
            tables,
            entries,
            ..
        } => match rng.below(5) {
            0 => *origin = rng.replica(),
            1 => deps.raise(rng.replica(), rng.edgy_u64()),
            2 => tables.truncate(rng.below(tables.len() + 1)),
            3 => entries.0.insert(
                rng.below(entries.0.len() + 1),
                [0xFE, 0xFF, 0xFD][rng.below(3)],
            ),
            _ => entries.0.truncate(rng.below(entries.0.len() + 1)),
        },
        _ => {}
    }
}

impl FuzzValue for Message {
    const NAME: &'static str = "Message";
    fn samples(rng: &mut FuzzRng) -> Vec<Self> {
        let tables = vec!["carts".to_string(), "likes".to_string()];
        let batch = Message::Batch {
            origin: ReplicaId::new(1),
            first: 4,
            last: 6,
            deps: vector(rng, 2),
            sent_at: Timestamp::new(9_000, 1),
            tables: tables.clone(),
            entries: packed_entries(rng, 2, 3),
        };
        let compact = compact_batch(rng, tables.clone());
        let mut samples = vec![
            batch,
            Message::Ack {
                origin: ReplicaId::new(2),
                applied: 17,
            },
            Message::SyncRequest {
                session: 5,
                applied: vector(rng, 3),
                digests: vec![("carts".into(), vec![7; 64]), ("likes".into(), Vec::new())],
            },
            Message::SyncStates {
                session: 5,
                push: false,
                chunk: 0,
                chunks: 2,
                sent_at: Timestamp::new(9_100, 0),
                buckets: vec![("carts".into(), vec![1, 9, 1023])],
                tables,
                entries: packed_entries(rng, 2, 2),
                applied: Some(vector(rng, 2)),
            },
            Message::SyncDone { session: 5 },
            Message::Hello {
                replica: ReplicaId::new(3),
                incarnation: 2,
                seq: 40,
                applied: vector(rng, 2),
                reply: false,
            },
            Message::Protocol { min: 1, max: 2 },
            Message::RightsRequest {
                table: "stock".into(),
                key: message::Blob(vec![5, b'm', b'a', b't', b'c', b'h']),
                wanted: 3,
            },
            Message::HomedRequest {
                id: 41,
                table: "balances".into(),
                key: message::Blob(vec![5, b'a', b'l', b'i', b'c', b'e']),
                op: message::Blob(vec![2, 0, 25]),
            },
            Message::HomedReply {
                id: 41,
                outcome: HomedOutcome::Done {
                    written: Some(Dot::new(ReplicaId::new(3), 41)),
                    value: Some(message::Blob(vec![75])),
                },
            },
            ranges_sample(),
            grouped_sample(rng),
            compact,
        ];
        samples.extend(relay_samples(rng));
        samples
    }
    fn mutate(&mut self, rng: &mut FuzzRng) {
        match self {
            Message::Batch { .. } | Message::CompactBatch { .. } => mutate_batch(self, rng),
            Message::Ack { origin, applied } => {
                *origin = rng.replica();
                *applied = rng.edgy_u64();
            }
            Message::Hello {
                replica,
                incarnation,
                seq,
                applied,
                reply,
            } => match rng.below(5) {
                0 => *replica = rng.replica(),
                1 => *incarnation = rng.edgy_u64(),
                2 => *seq = rng.edgy_u64(),
                3 => applied.raise(rng.replica(), rng.edgy_u64()),
                _ => *reply = !*reply,
            },
            Message::Protocol { min, max } => {
                *min = rng.next_u64() as u16;
                *max = rng.next_u64() as u16;
            }
            Message::RightsRequest { table, key, wanted } => match rng.below(3) {
                0 => *table = rng.text(),
                1 => key.0.truncate(rng.below(key.0.len() + 1)),
                _ => *wanted = rng.edgy_u64(),
            },
            Message::HomedRequest { id, table, key, op } => match rng.below(4) {
                0 => *id = rng.edgy_u64(),
                1 => *table = rng.text(),
                2 => key.0.truncate(rng.below(key.0.len() + 1)),
                _ => op.0.push(rng.next_u64() as u8),
            },
            Message::HomedReply { id, outcome } => match rng.below(6) {
                0 => *id = rng.edgy_u64(),
                _ => *outcome = random_outcome(rng),
            },
            Message::Relay { .. } | Message::RelayWant { .. } => mutate_relay(self, rng),
            Message::SyncRequest { .. }
            | Message::SyncStates { .. }
            | Message::SyncDone { .. }
            | Message::SyncRanges { .. }
            | Message::SyncStatesGrouped(_) => mutate_exchange(self, rng),
        }
    }
    fn inner(&self) {
        if let Message::CompactBatch { .. } = self {
            if let Ok(batch) = self.clone().expand() {
                batch.inner();
            }
            return;
        }
        if let Message::Batch {
            tables, entries, ..
        }
        | Message::SyncStates {
            tables, entries, ..
        } = self
        {
            let _ = message::count_entries(&entries.0, tables.len());
            for entry in message::Entries::new(&entries.0, tables.len()) {
                let Ok((_, key, value)) = entry else { break };
                let _ = wire::decode_bare::<String>(key);
                let _ = wire::decode_bare::<GCounter>(value);
            }
        }
    }
}

/// What one decode came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The frame decoded, and passed the round trip and laws.
    Decoded,
    /// The frame was refused with a typed error.
    Rejected,
}

/// One target type, behind a trait object.
trait Target: Sync {
    fn name(&self) -> &'static str;
    fn samples(&self, rng: &mut FuzzRng) -> Vec<Vec<u8>>;
    fn check(&self, frame: &[u8], check_alloc: bool) -> Result<Outcome, String>;
    fn mutate_structure(&self, frame: &[u8], rng: &mut FuzzRng) -> Option<Vec<u8>>;
}

struct Typed<T>(std::marker::PhantomData<fn() -> T>);

impl<T: FuzzValue> Target for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn samples(&self, rng: &mut FuzzRng) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for value in T::samples(rng) {
            let Ok(frame) = wire::encode(&value) else {
                continue;
            };
            // The older layouts (version sets before protocol 5,
            // registers and maps before protocol 6) still decode: their
            // frames join the corpus where they differ.
            let mut older: Option<Vec<u8>> = None;
            for protocol in [4, 5] {
                if let Ok(legacy) = wire::encode_legacy(&value, protocol)
                    && legacy != frame
                    && older.as_ref() != Some(&legacy)
                {
                    frames.push(legacy.clone());
                    older = Some(legacy);
                }
            }
            frames.push(frame);
        }
        frames
    }

    fn check(&self, frame: &[u8], check_alloc: bool) -> Result<Outcome, String> {
        let (decoded, peak) = measure(|| wire::decode::<T>(frame));
        let cap = decode_peak_cap_bytes(frame.len());
        if check_alloc && peak.peak_bytes > cap {
            return Err(format!(
                "decode of a {}-byte frame peaked at {} bytes (cap {cap}, largest request {})",
                frame.len(),
                peak.peak_bytes,
                peak.largest_request_bytes
            ));
        }
        let Ok(value) = decoded else {
            return Ok(Outcome::Rejected);
        };
        value.inner();
        let again =
            wire::encode(&value).map_err(|e| format!("decoded value does not encode: {e}"))?;
        let back: T =
            wire::decode(&again).map_err(|e| format!("re-encoded value does not decode: {e}"))?;
        if back != value {
            return Err(format!(
                "decode→encode→decode changed {value:?} into {back:?}"
            ));
        }
        let third = wire::encode(&back).map_err(|e| format!("does not encode again: {e}"))?;
        if third != again {
            return Err("encoding of the decoded value is not stable".into());
        }
        value.laws()?;
        Ok(Outcome::Decoded)
    }

    fn mutate_structure(&self, frame: &[u8], rng: &mut FuzzRng) -> Option<Vec<u8>> {
        let mut value: T = wire::decode(frame).ok()?;
        for _ in 0..1 + rng.below(3) {
            value.mutate(rng);
        }
        wire::encode(&value).ok()
    }
}

macro_rules! targets {
    ($($ty:ty),* $(,)?) => {
        &[$(&Typed::<$ty>(std::marker::PhantomData)),*]
    };
}

/// Every type decoded: the public types that cross the wire or sit in
/// storage, and the engine's messages.
static TARGETS: &[&dyn Target] = targets!(
    VersionVector,
    CausalContext,
    Dot,
    Stamp,
    GCounter,
    PnCounter,
    OrSet<u64>,
    OrSet<String>,
    LwwRegister<String>,
    LwwMap<String, Vec<u8>>,
    MvRegister<String>,
    BoundedCounter,
    OrMap<u64, OrMap<String, PnCounter>>,
    VersionSet<String>,
    VersionSet<FuzzProfile>,
    Versioned<String>,
    SessionToken,
    Identity,
    Progress,
    SnowflakeLayout,
    SnowflakeId,
    Message,
);

/// The names of the types the harness decodes, in [`corpus`] order.
pub fn target_names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name()).collect()
}

/// Decodes `frame` as the target named `name` (one of [`target_names`])
/// and checks it as an execution does: the decode's peak heap (when
/// `check_alloc`), the round trip and a CRDT's laws.
///
/// # Errors
/// What went wrong, in words; an unknown `name` is an error too.
pub fn check(name: &str, frame: &[u8], check_alloc: bool) -> Result<Outcome, String> {
    let target = TARGETS
        .iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("no fuzz target named {name}"))?;
    target.check(frame, check_alloc)
}

/// Valid frames of every target type, as `(type name, frame)`, drawn from
/// `seed`.
pub fn corpus(seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = FuzzRng::new(seed);
    TARGETS
        .iter()
        .flat_map(|t| {
            let name = t.name();
            t.samples(&mut rng).into_iter().map(move |f| (name, f))
        })
        .collect()
}

/// Valid frames of every engine message variant (batch, ack, sync request,
/// sync states, sync done, hello, ..., sync ranges), drawn from `seed`: a peer's side of a
/// conversation, for a harness that feeds a region.
pub fn message_frames(seed: u64) -> Vec<Vec<u8>> {
    Typed::<Message>(std::marker::PhantomData).samples(&mut FuzzRng::new(seed))
}

/// How a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzConfig {
    /// The seed every execution derives from.
    pub seed: u64,
    /// Executions to run.
    pub execs: u64,
    /// Check each decode's peak heap against [`decode_peak_cap_bytes`]
    /// (needs [`CountingAllocator`] installed).
    pub check_alloc: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuzzReport {
    /// Executions run.
    pub execs: u64,
    /// Frames that decoded (and passed every check).
    pub decoded: u64,
    /// Frames refused with a typed error.
    pub rejected: u64,
    /// The largest frame decoded or refused, in bytes.
    pub largest_frame_bytes: usize,
}

/// An execution that broke an invariant: enough to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzFailure {
    /// The run's seed.
    pub seed: u64,
    /// The execution's index.
    pub exec: u64,
    /// The type decoded.
    pub target: &'static str,
    /// The frame.
    pub frame: Vec<u8>,
    /// What went wrong (a panic's message, an allocation, a round trip).
    pub reason: String,
}

impl fmt::Display for FuzzFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fuzz failure: seed {} exec {} (replay with fuzz::replay({}, {})), decoding {}: {}; frame ({} bytes): ",
            self.seed,
            self.exec,
            self.seed,
            self.exec,
            self.target,
            self.reason,
            self.frame.len()
        )?;
        for b in self.frame.iter().take(256) {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FuzzFailure {}

/// The corpus as frames grouped by target, plus every frame as a donor for
/// splices.
struct Pool {
    by_target: Vec<Vec<Vec<u8>>>,
    donors: Vec<Vec<u8>>,
}

impl Pool {
    fn new(seed: u64) -> Self {
        let mut rng = FuzzRng::new(seed);
        let by_target: Vec<Vec<Vec<u8>>> = TARGETS.iter().map(|t| t.samples(&mut rng)).collect();
        let donors = by_target.iter().flatten().cloned().collect();
        Pool { by_target, donors }
    }
}

/// The frame and target of execution `exec` of a run from `seed`.
fn draw(pool: &Pool, seed: u64, exec: u64) -> (usize, Vec<u8>) {
    let mut rng = FuzzRng::new(seed ^ exec.wrapping_mul(0xa076_1d64_78bd_642f));
    let target = rng.below(TARGETS.len());
    let samples = &pool.by_target[target];
    let mut frame = samples[rng.below(samples.len())].clone();
    match rng.below(8) {
        0 => {} // a valid frame, as is
        1 | 2 => {
            if let Some(mutated) = TARGETS[target].mutate_structure(&frame, &mut rng) {
                frame = mutated;
            }
            if rng.one_in(2) {
                frame = mutate_frame(&frame, &pool.donors, &mut rng);
            }
        }
        _ => frame = mutate_frame(&frame, &pool.donors, &mut rng),
    }
    // One time in eight, decode the frame as another type.
    let decoded_as = if rng.one_in(8) {
        rng.below(TARGETS.len())
    } else {
        target
    };
    (decoded_as, frame)
}

fn execute(pool: &Pool, config: &FuzzConfig, exec: u64) -> Result<(Outcome, usize), FuzzFailure> {
    let (target, frame) = draw(pool, config.seed, exec);
    let checked = catch_unwind(AssertUnwindSafe(|| {
        TARGETS[target].check(&frame, config.check_alloc)
    }));
    let reason = match checked {
        Ok(Ok(outcome)) => return Ok((outcome, frame.len())),
        Ok(Err(reason)) => reason,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            format!("panicked: {message}")
        }
    };
    Err(FuzzFailure {
        seed: config.seed,
        exec,
        target: TARGETS[target].name(),
        frame,
        reason,
    })
}

/// Runs `config.execs` executions; stops at the first failure.
///
/// # Errors
/// The first [`FuzzFailure`], which names the seed and execution to replay.
pub fn run(config: &FuzzConfig) -> Result<FuzzReport, FuzzFailure> {
    let pool = Pool::new(config.seed);
    let mut report = FuzzReport::default();
    for exec in 0..config.execs {
        let (outcome, len) = execute(&pool, config, exec)?;
        report.execs += 1;
        report.largest_frame_bytes = report.largest_frame_bytes.max(len);
        match outcome {
            Outcome::Decoded => report.decoded += 1,
            Outcome::Rejected => report.rejected += 1,
        }
    }
    Ok(report)
}

/// Runs execution `exec` of a run from `seed` alone, checking allocations
/// when `check_alloc`.
///
/// # Errors
/// The [`FuzzFailure`] it reproduces.
pub fn replay(seed: u64, exec: u64, check_alloc: bool) -> Result<Outcome, FuzzFailure> {
    let config = FuzzConfig {
        seed,
        execs: exec + 1,
        check_alloc,
    };
    execute(&Pool::new(seed), &config, exec).map(|(outcome, _)| outcome)
}
