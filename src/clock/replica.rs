use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one replica: one process embedding the library.
///
/// A `ReplicaId` is a plain `u64`: it sits on every [`Dot`] and in every
/// version vector entry. A region draws one at random when its storage is
/// created (or, without storage, at every build) and keeps it: with `n`
/// ids drawn over an archipelago's life, the chance that two are equal is
/// about `n² / 2⁶⁵` (one in 37 million for a million ids). Two peers that
/// do present one id are refused at the handshake, never merged.
///
/// # Width on the wire
/// The codec ([`wire`](crate::wire)) writes integers as varints, so an id
/// below 2³² (every id of a build before ids were widened, and any
/// number a deployment assigns that fits) encodes to the same bytes as
/// when ids were 32 bits: old frames and stored states decode unchanged.
/// A random 64-bit id takes 9 bytes where a random 32-bit one took 5.
/// Session tokens' fixed layout has a version for each width (see
/// [`wire::encode_vector_fixed`](crate::wire::encode_vector_fixed)).
///
/// A build from before the widening cannot decode an id past 32 bits: it
/// refuses frames naming one as undecodable. During a rolling upgrade from
/// such a build, regions with storage keep their stored 32-bit ids and
/// replicate as before; add new regions (and restart regions without
/// storage, which draw a new id) once every region runs a build with 64-bit
/// ids, or pin 32-bit ids until then with
/// [`RegionBuilder::replica_id`](crate::region::RegionBuilder::replica_id).
///
/// # From a region name
/// [`ReplicaId::from_name`] maps a name such as `"ap-northeast"` or
/// `"ap-northeast/host-3"` to an id with the 64-bit FNV-1a hash of its
/// UTF-8 bytes. The mapping is stable across processes, platforms and
/// releases, so every replica computes the same id for the same name
/// without talking. With `n` names, the chance that two collide is about
/// `n² / 2⁶⁵`; a deployment that wants no chance at all assigns numbers
/// itself with [`ReplicaId::new`].
///
/// ```
/// use archipelago::clock::ReplicaId;
///
/// let tokyo = ReplicaId::from_name("ap-northeast");
/// assert_eq!(tokyo, ReplicaId::from_name("ap-northeast"));
/// assert_ne!(tokyo, ReplicaId::from_name("eu-central"));
/// assert_eq!(ReplicaId::new(7).get(), 7);
/// assert_eq!(ReplicaId::new(u64::MAX).get(), u64::MAX);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(u64);

/// FNV-1a's 64-bit offset basis.
const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

impl ReplicaId {
    /// A replica id from a number the deployment assigns.
    pub const fn new(id: u64) -> Self {
        ReplicaId(id)
    }

    /// The id for a region or replica name: 64-bit FNV-1a of its bytes.
    pub const fn from_name(name: &str) -> Self {
        let bytes = name.as_bytes();
        let mut hash = FNV64_OFFSET_BASIS;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(FNV64_PRIME);
            i += 1;
        }
        ReplicaId(hash)
    }

    /// The number behind the id.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// True when the id fits in 32 bits: the ids of builds before ids were
    /// widened, which the narrow session-token layout can carry.
    pub const fn is_narrow(self) -> bool {
        self.0 <= u32::MAX as u64
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{:x}", self.0)
    }
}

/// At least 8 lower-case hex digits (an id of 32 bits reads as it did when
/// ids were 32 bits), up to 16 for a 64-bit one.
impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl From<u64> for ReplicaId {
    fn from(id: u64) -> Self {
        ReplicaId(id)
    }
}

impl From<u32> for ReplicaId {
    fn from(id: u32) -> Self {
        ReplicaId(u64::from(id))
    }
}

/// One event: the `counter`-th write made by `replica`.
///
/// Counters start at 1; a version vector entry of `n` for a replica means
/// its dots `1..=n` have been seen.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that made the write.
    pub replica: ReplicaId,
    /// Its sequence number at that replica, from 1.
    pub counter: u64,
}

impl Dot {
    /// The dot `counter` of `replica`.
    pub const fn new(replica: ReplicaId, counter: u64) -> Self {
        Dot { replica, counter }
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}.{}", self.replica, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published 64-bit FNV-1a test vectors: the mapping from names is
    /// part of the format (every replica must compute the same id).
    #[test]
    fn from_name_is_64_bit_fnv_1a() {
        assert_eq!(ReplicaId::from_name("").get(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(ReplicaId::from_name("a").get(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(ReplicaId::from_name("foobar").get(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn narrow_ids_display_as_before() {
        assert_eq!(ReplicaId::new(0x7000_0001).to_string(), "70000001");
        assert_eq!(ReplicaId::new(1).to_string(), "00000001");
        assert_eq!(
            ReplicaId::new(0x0123_4567_89ab_cdef).to_string(),
            "123456789abcdef"
        );
        assert!(ReplicaId::new(u64::from(u32::MAX)).is_narrow());
        assert!(!ReplicaId::new(1 << 32).is_narrow());
    }
}
