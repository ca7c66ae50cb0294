use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one replica: one process embedding the library.
///
/// A `ReplicaId` is a plain `u32`: it sits on every [`Dot`] and in every
/// version vector entry, so it is kept to four bytes.
///
/// # From a region name
/// [`ReplicaId::from_name`] maps a name such as `"ap-northeast"` or
/// `"ap-northeast/host-3"` to an id with the 32-bit FNV-1a hash of its UTF-8
/// bytes. The mapping is stable across processes, platforms and releases, so
/// every replica computes the same id for the same name without talking.
/// With `n` replicas, the chance that two names collide is about
/// `n² / 2³³` (one in two million for 64 replicas); a deployment that wants
/// no chance at all assigns numbers itself with [`ReplicaId::new`].
///
/// ```
/// use archipelago::clock::ReplicaId;
///
/// let tokyo = ReplicaId::from_name("ap-northeast");
/// assert_eq!(tokyo, ReplicaId::from_name("ap-northeast"));
/// assert_ne!(tokyo, ReplicaId::from_name("eu-central"));
/// assert_eq!(ReplicaId::new(7).get(), 7);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(u32);

impl ReplicaId {
    /// A replica id from a number the deployment assigns.
    pub const fn new(id: u32) -> Self {
        ReplicaId(id)
    }

    /// The id for a region or replica name: 32-bit FNV-1a of its bytes.
    pub const fn from_name(name: &str) -> Self {
        let bytes = name.as_bytes();
        let mut hash: u32 = 0x811c_9dc5;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u32;
            hash = hash.wrapping_mul(0x0100_0193);
            i += 1;
        }
        ReplicaId(hash)
    }

    /// The number behind the id.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{:x}", self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl From<u32> for ReplicaId {
    fn from(id: u32) -> Self {
        ReplicaId(id)
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
