//! Session tokens: read-your-writes across regions.
//!
//! A user writes in Tokyo, and the next request lands in Frankfurt. Without
//! help, Frankfurt answers from a state that may not hold the write yet, and
//! the user sees their change vanish. A [`SessionToken`] names the writes a
//! client has made or seen, as a [`VersionVector`]; a replica serves the
//! client only once its *applied* vector covers the token
//! ([`SessionToken::covered_by`]), and otherwise waits or refuses, naming
//! what it still lacks ([`SessionToken::missing`]).
//!
//! [`Session`] gives the four session guarantees of Terry et al., *Session
//! Guarantees for Weakly Consistent Replicated Data* (Bayou, 1994), each of
//! which can be switched off ([`Guarantees`]):
//!
//! - **read your writes**: a read sees every write the session made before it;
//! - **monotonic reads**: a read sees every write an earlier read saw;
//! - **monotonic writes**: a write is applied after the session's earlier writes;
//! - **writes follow reads**: a write is applied after the writes its session's
//!   earlier reads saw.
//!
//! As in Bayou, a session keeps a *write-set* (the writes it made) and a
//! *read-set* (the writes its reads saw), both as version vectors. A replica
//! may serve a read once it has applied [`Session::read_requirement`] (the
//! write-set for read-your-writes, the read-set for monotonic reads), and
//! accept a write once it has applied [`Session::write_requirement`] (the
//! write-set for monotonic writes, the read-set for writes follow reads).
//!
//! ```
//! use archipelago::clock::{ReplicaId, VersionVector};
//! use archipelago::session::{Session, SessionToken, TokenParseError};
//!
//! let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
//! let mut applied_tokyo = VersionVector::new();
//! let mut applied_frankfurt = VersionVector::new();
//! applied_frankfurt.increment(frankfurt);
//!
//! // Tokyo accepts the user's write and hands back its token.
//! let dot = applied_tokyo.increment(tokyo);
//! let mut session = Session::new();
//! session.record_write(&SessionToken::from_dot(dot));
//!
//! // The client carries the token to the next region in a header or cookie.
//! let header = session.token().to_string();
//! assert_eq!(header, "v1.AQABAAEAAAABAAAAAAAAAA");
//! let session = Session::from_token(&header.parse()?);
//!
//! // Frankfurt has not applied the write yet: it must wait, or refuse saying why.
//! let needed = session.read_requirement();
//! assert!(!needed.covered_by(&applied_frankfurt));
//! let lag: Vec<String> = needed.missing(&applied_frankfurt).map(|m| m.to_string()).collect();
//! assert_eq!(lag, ["replica 00000001: needs 1, has applied 0"]);
//!
//! // Once the write's delta arrives, Frankfurt may serve the read.
//! applied_frankfurt.merge(&applied_tokyo);
//! assert!(needed.covered_by(&applied_frankfurt));
//! # Ok::<(), TokenParseError>(())
//! ```
//!
//! ## Why a version vector
//!
//! A token is satisfied *exactly* when a replica's applied vector covers it:
//! never too early (the replica has every write the client depends on) and
//! never later than needed (writes from other replicas the client never saw
//! do not hold it up). A wall-clock timestamp can do neither: a replica whose
//! clock has passed `t` may still lack a write stamped before `t`, and clock
//! skew makes it wait for nothing. Nor does the token grow with the data:
//! Cosmos DB's session token carries a sequence number per partition range,
//! so a client touching many partitions sends a header that grows until
//! requests fail with HTTP 431 (azure-sdk-for-python issue 47256). Ours has
//! one entry per *replica* that wrote, whatever the number of keys, tables or
//! writes: `4 + 16·R` bytes for `R` replicas in its binary form
//! ([`wire::encode_vector_fixed`]; `4 + 12·R` when every replica id fits in
//! 32 bits, as ids of older builds and small assigned ones do), and a third
//! more as text.
//!
//! ## Text form, limits, hostile input
//!
//! [`Display`](fmt::Display) writes a prefix naming the layout of the binary
//! form, then the binary form in base64url without padding: safe in HTTP
//! headers, cookies and URLs. The prefix is [`TOKEN_TEXT_PREFIX_V1`]
//! (`"v1."`) when every replica id fits in 32 bits (the only form of builds
//! whose ids were 32 bits, which still parse it), [`TOKEN_TEXT_PREFIX_V2`]
//! (`"v2."`, 8-byte ids) otherwise. Both parse; a v1 token's ids widen
//! losslessly. Each token has one text: a `"v2."` text whose ids all fit in
//! 32 bits is refused. [`FromStr`] and [`SessionToken::from_bytes`] treat their input as
//! hostile: they refuse text over [`TOKEN_TEXT_BYTES_MAX`] before decoding
//! it, tokens naming more than [`TOKEN_REPLICAS_MAX`] replicas, and any
//! non-canonical form, with a typed error; they never panic. A token joined in
//! memory past [`TOKEN_REPLICAS_MAX`] replicas (no deployment within the
//! limit makes one) is written as a header alone that every parser refuses
//! ([`TooManyEntries`](wire::FixedVectorError::TooManyEntries)): the mistake
//! surfaces as an error on the next request, never as a token that asks for
//! less.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::clock::{Dot, ReplicaId, VersionVector};
use crate::wire::{self, WireError};

/// The most replicas a token may name: the fixed layout's entry limit
/// ([`wire::VECTOR_FIXED_ENTRIES_MAX`]), whatever the width of their ids.
pub const TOKEN_REPLICAS_MAX: usize = wire::VECTOR_FIXED_ENTRIES_MAX;

/// The largest binary form of a token, in bytes: [`TOKEN_REPLICAS_MAX`]
/// entries of the wide layout (64-bit ids).
pub const TOKEN_BYTES_MAX: usize = wire::FixedLayout::Wide.bytes_for(TOKEN_REPLICAS_MAX);

/// What the text form of a token whose replica ids all fit in 32 bits
/// starts with: its binary form is layout version 1
/// ([`wire::FixedLayout::Narrow`]).
pub const TOKEN_TEXT_PREFIX_V1: &str = "v1.";

/// What the text form of a token naming a replica id past 32 bits starts
/// with: its binary form is layout version 2 ([`wire::FixedLayout::Wide`]).
pub const TOKEN_TEXT_PREFIX_V2: &str = "v2.";

/// Bytes of either text prefix.
pub const TOKEN_TEXT_PREFIX_BYTES: usize = TOKEN_TEXT_PREFIX_V2.len();
const _: () = assert!(TOKEN_TEXT_PREFIX_V1.len() == TOKEN_TEXT_PREFIX_BYTES);

/// The longest text form a token has, in bytes: a prefix, then
/// [`TOKEN_BYTES_MAX`] bytes in unpadded base64. Longer text is refused
/// before it is decoded.
pub const TOKEN_TEXT_BYTES_MAX: usize = TOKEN_TEXT_PREFIX_BYTES + (TOKEN_BYTES_MAX * 4).div_ceil(3);

/// The text prefix of the tokens written in `layout`.
pub const fn token_text_prefix(layout: wire::FixedLayout) -> &'static str {
    match layout {
        wire::FixedLayout::Narrow => TOKEN_TEXT_PREFIX_V1,
        wire::FixedLayout::Wide => TOKEN_TEXT_PREFIX_V2,
    }
}

/// The writes a client has made or seen, as a version vector: a replica
/// serves the client once it has applied them all.
///
/// Tokens form a join semilattice: [`merge`](Self::merge) is commutative,
/// associative and idempotent, so a user on two devices joins their tokens
/// in any order.
///
/// ```
/// use archipelago::clock::{Dot, ReplicaId, VersionVector};
/// use archipelago::session::SessionToken;
///
/// let phone = SessionToken::from_dot(Dot::new(ReplicaId::new(1), 4));
/// let laptop = SessionToken::from_dot(Dot::new(ReplicaId::new(2), 9));
/// let both = phone.join(&laptop);
///
/// let applied: VersionVector =
///     [(ReplicaId::new(1), 5), (ReplicaId::new(2), 8)].into_iter().collect();
/// assert!(phone.covered_by(&applied));
/// assert!(!both.covered_by(&applied)); // replica 2's write 9 is missing
/// assert_eq!(both.to_bytes().unwrap().len(), 4 + 12 * 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionToken {
    vector: VersionVector,
}

impl SessionToken {
    /// The empty token: any replica covers it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token of one write: covered once its replica's writes up to and
    /// including `dot` are applied (a replica applies another's writes in
    /// order, so earlier ones come with it).
    pub fn from_dot(dot: Dot) -> Self {
        let mut vector = VersionVector::new();
        vector.raise(dot.replica, dot.counter);
        SessionToken { vector }
    }

    /// The token requiring everything `vector` covers.
    pub fn from_vector(vector: VersionVector) -> Self {
        SessionToken { vector }
    }

    /// The writes required, as a version vector.
    pub fn as_vector(&self) -> &VersionVector {
        &self.vector
    }

    /// The writes required, as a version vector.
    pub fn into_vector(self) -> VersionVector {
        self.vector
    }

    /// True when the token requires nothing.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty()
    }

    /// The number of replicas the token names.
    pub fn len(&self) -> usize {
        self.vector.len()
    }

    /// Joins `other` into `self`: afterwards `self` requires what either did.
    pub fn merge(&mut self, other: &SessionToken) {
        self.vector.merge(&other.vector);
    }

    /// The join of `self` and `other`, as a new token.
    #[must_use]
    pub fn join(&self, other: &SessionToken) -> SessionToken {
        let mut joined = self.clone();
        joined.merge(other);
        joined
    }

    /// True when a replica that has applied `applied` may serve the token:
    /// every replica's entry in `applied` is at least the token's.
    ///
    /// The check the engine runs on every session read, allocating nothing:
    /// a lockstep pass when both name the same number of replicas (the
    /// steady state), else one walk over the two sorted entry lists that
    /// stops at the first shortfall. Agrees with the causal order:
    /// `t.covered_by(v)` exactly when `v >= t.as_vector()`.
    #[inline]
    pub fn covered_by(&self, applied: &VersionVector) -> bool {
        // Each token entry is non-zero, so it needs an entry of its own in
        // `applied`.
        let (len, applied_len) = (self.vector.len(), applied.len());
        if len > applied_len {
            return false;
        }
        if len == applied_len {
            // The steady state: both name the deployment's replicas. Then
            // every entry must meet its counterpart at the same position;
            // no early exit, so the loop has no branch to mispredict.
            return self.vector.iter().zip(applied.iter()).fold(
                true,
                |ok, ((replica, needed), (have_replica, have))| {
                    ok & (replica == have_replica) & (needed <= have)
                },
            );
        }
        let mut applied = applied.iter();
        'token: for (replica, needed) in self.vector.iter() {
            for (have_replica, have) in applied.by_ref() {
                if have_replica == replica {
                    if have < needed {
                        return false;
                    }
                    continue 'token;
                }
                if have_replica > replica {
                    return false;
                }
            }
            return false;
        }
        true
    }

    /// What a replica that has applied `applied` still lacks to serve the
    /// token: one [`Missing`] per replica it is behind on, sorted by replica.
    /// Empty exactly when [`covered_by`](Self::covered_by) holds.
    pub fn missing<'a>(&'a self, applied: &'a VersionVector) -> impl Iterator<Item = Missing> + 'a {
        self.vector.iter().filter_map(move |(replica, needed)| {
            let applied = applied.get(replica);
            (applied < needed).then_some(Missing {
                replica,
                needed,
                applied,
            })
        })
    }

    /// The binary form: [`wire::encode_vector_fixed`], `4 + 12·R` bytes for
    /// `R` replicas whose ids all fit in 32 bits, `4 + 16·R` otherwise.
    ///
    /// # Errors
    /// [`WireError::Vector`] when the token names more than
    /// [`TOKEN_REPLICAS_MAX`] replicas.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        wire::encode_vector_fixed(&self.vector)
    }

    /// Reads the binary form, treating `bytes` as hostile.
    ///
    /// # Errors
    /// [`WireError::Vector`] naming what is wrong; never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<SessionToken, WireError> {
        wire::decode_vector_fixed(bytes).map(SessionToken::from_vector)
    }

    /// The length of the binary form in bytes.
    pub fn encoded_len(&self) -> usize {
        wire::FixedLayout::of(&self.vector).bytes_for(self.vector.len())
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionToken").field(&self.vector).finish()
    }
}

impl From<VersionVector> for SessionToken {
    fn from(vector: VersionVector) -> Self {
        SessionToken::from_vector(vector)
    }
}

impl From<Dot> for SessionToken {
    fn from(dot: Dot) -> Self {
        SessionToken::from_dot(dot)
    }
}

/// The text form: [`TOKEN_TEXT_PREFIX_V1`] or [`TOKEN_TEXT_PREFIX_V2`] (as
/// the binary form's layout), then the binary form in base64url without
/// padding.
impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layout = wire::FixedLayout::of(&self.vector);
        let bytes = match self.to_bytes() {
            Ok(bytes) => bytes,
            Err(error) => {
                // Unreachable within the replica limit. Writing a token that
                // asks for less would break the guarantees; failing would
                // panic in `to_string`. Write the header alone, which every
                // parser refuses as naming too many replicas.
                tracing::warn!(
                    %error,
                    replicas = self.vector.len(),
                    "session token too large for its text form"
                );
                wire::vector_fixed_header(layout, self.vector.len()).to_vec()
            }
        };
        f.write_str(token_text_prefix(layout))?;
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// Why text is not a session token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    /// The text is longer than any token's: refused before decoding.
    #[error("session token text of {len} bytes exceeds the {TOKEN_TEXT_BYTES_MAX}-byte limit")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The text starts with neither [`TOKEN_TEXT_PREFIX_V1`] nor
    /// [`TOKEN_TEXT_PREFIX_V2`].
    #[error(
        "session token text starts with neither {TOKEN_TEXT_PREFIX_V1:?} nor {TOKEN_TEXT_PREFIX_V2:?}"
    )]
    MissingPrefix,
    /// The prefix names another layout than the bytes after it are in.
    #[error("session token text prefix {prefix:?} with bytes of layout version {layout}")]
    PrefixMismatch {
        /// The prefix found.
        prefix: &'static str,
        /// The layout version of the bytes.
        layout: u8,
    },
    /// After the prefix, the text is not base64url without padding.
    #[error("session token text is not base64url without padding: {0}")]
    Base64(String),
    /// The decoded bytes are not a token's binary form.
    #[error("session token bytes: {0}")]
    Bytes(#[from] WireError),
}

impl FromStr for SessionToken {
    type Err = TokenParseError;

    /// Parses the text form, treating `text` as hostile; never panics.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > TOKEN_TEXT_BYTES_MAX {
            return Err(TokenParseError::TooLong { len: text.len() });
        }
        let (prefix, encoded) = [TOKEN_TEXT_PREFIX_V1, TOKEN_TEXT_PREFIX_V2]
            .into_iter()
            .find_map(|prefix| Some((prefix, text.strip_prefix(prefix)?)))
            .ok_or(TokenParseError::MissingPrefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|e| TokenParseError::Base64(e.to_string()))?;
        let token = SessionToken::from_bytes(&bytes)?;
        let layout = wire::FixedLayout::of(&token.vector);
        if token_text_prefix(layout) != prefix {
            return Err(TokenParseError::PrefixMismatch {
                prefix,
                layout: layout.version(),
            });
        }
        Ok(token)
    }
}

/// Refuses tokens naming more than [`TOKEN_REPLICAS_MAX`] replicas, besides
/// what [`VersionVector`] itself refuses (unsorted, repeated or zero entries).
impl<'de> Deserialize<'de> for SessionToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let vector = VersionVector::deserialize(deserializer)?;
        if vector.len() > TOKEN_REPLICAS_MAX {
            return Err(D::Error::custom(format_args!(
                "session token names {} replicas, more than the {TOKEN_REPLICAS_MAX} limit",
                vector.len()
            )));
        }
        Ok(SessionToken { vector })
    }
}

/// One replica a replica is behind on, for a token: what the engine reports
/// when it cannot serve a session in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Missing {
    /// The replica whose writes are missing.
    pub replica: ReplicaId,
    /// The counter the token requires of it.
    pub needed: u64,
    /// The counter applied so far (less than `needed`).
    pub applied: u64,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replica {}: needs {}, has applied {}",
            self.replica, self.needed, self.applied
        )
    }
}

/// One of the four session guarantees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Guarantee {
    /// A read sees every write the session made before it.
    ReadYourWrites,
    /// A read sees every write an earlier read of the session saw.
    MonotonicReads,
    /// A write is applied after the session's earlier writes.
    MonotonicWrites,
    /// A write is applied after the writes the session's earlier reads saw.
    WritesFollowReads,
}

impl Guarantee {
    /// The four guarantees.
    pub const ALL: [Guarantee; 4] = [
        Guarantee::ReadYourWrites,
        Guarantee::MonotonicReads,
        Guarantee::MonotonicWrites,
        Guarantee::WritesFollowReads,
    ];

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A selection of the session guarantees; the default is all four.
///
/// ```
/// use archipelago::session::{Guarantee, Guarantees};
///
/// let reads_only = Guarantees::NONE
///     .with(Guarantee::ReadYourWrites)
///     .with(Guarantee::MonotonicReads);
/// assert!(reads_only.contains(Guarantee::MonotonicReads));
/// assert!(!reads_only.contains(Guarantee::MonotonicWrites));
/// assert!(reads_only.is_subset(Guarantees::ALL));
/// assert_eq!(Guarantees::default(), Guarantees::ALL);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guarantees {
    bits: u8,
}

impl Guarantees {
    /// All four guarantees.
    pub const ALL: Guarantees = Guarantees { bits: 0b1111 };
    /// None: the session requires nothing of a replica.
    pub const NONE: Guarantees = Guarantees { bits: 0 };

    /// This selection and `guarantee`.
    #[must_use]
    pub const fn with(self, guarantee: Guarantee) -> Self {
        Guarantees {
            bits: self.bits | guarantee.bit(),
        }
    }

    /// This selection without `guarantee`.
    #[must_use]
    pub const fn without(self, guarantee: Guarantee) -> Self {
        Guarantees {
            bits: self.bits & !guarantee.bit(),
        }
    }

    /// True when `guarantee` is selected.
    pub const fn contains(self, guarantee: Guarantee) -> bool {
        self.bits & guarantee.bit() != 0
    }

    /// True when every guarantee selected here is selected in `other`.
    pub const fn is_subset(self, other: Guarantees) -> bool {
        self.bits & !other.bits == 0
    }

    /// The selected guarantees, in the order of [`Guarantee::ALL`].
    pub fn iter(self) -> impl Iterator<Item = Guarantee> {
        Guarantee::ALL
            .into_iter()
            .filter(move |g| self.contains(*g))
    }
}

impl Default for Guarantees {
    fn default() -> Self {
        Guarantees::ALL
    }
}

impl fmt::Debug for Guarantees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Guarantee> for Guarantees {
    fn from_iter<I: IntoIterator<Item = Guarantee>>(iter: I) -> Self {
        iter.into_iter().fold(Guarantees::NONE, Guarantees::with)
    }
}

/// One client's session: the writes it made and the writes its reads saw,
/// and what a replica must have applied to serve it under the selected
/// [`Guarantees`].
///
/// Record the token of every write ([`record_write`](Self::record_write))
/// and every read ([`record_read`](Self::record_read)) the session makes.
/// The requirements only grow; both are kept up to date as tokens are
/// recorded, so asking for them costs nothing.
///
/// ```
/// use archipelago::clock::{Dot, ReplicaId, VersionVector};
/// use archipelago::session::{Guarantee, Guarantees, Session, SessionToken};
///
/// let (tokyo, frankfurt) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut session = Session::new();
/// session.record_write(&SessionToken::from_dot(Dot::new(tokyo, 3)));
/// session.record_read(&SessionToken::from_dot(Dot::new(frankfurt, 8)));
///
/// let applied: VersionVector = [(tokyo, 3)].into_iter().collect();
/// assert!(!session.read_requirement().covered_by(&applied)); // monotonic reads
///
/// // Opting out of monotonic reads: only the session's own writes count.
/// let relaxed = session
///     .clone()
///     .with_guarantees(Guarantees::ALL.without(Guarantee::MonotonicReads));
/// assert!(relaxed.read_requirement().covered_by(&applied));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    guarantees: Guarantees,
    /// The writes the session's reads saw.
    read_set: SessionToken,
    /// The writes the session made.
    write_set: SessionToken,
    /// Kept equal to `requirement(read_set, write_set, READ_*)`.
    read_requirement: SessionToken,
    /// Kept equal to `requirement(read_set, write_set, WRITE_*)`.
    write_requirement: SessionToken,
}

impl Session {
    /// A new session with all four guarantees, requiring nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session resumed from a client's token, with all four guarantees.
    ///
    /// One token does not tell the writes a client made from those it read,
    /// so the token counts as both; with fewer than four guarantees the
    /// resumed session may require more than the original did, never less.
    pub fn from_token(token: &SessionToken) -> Self {
        let mut session = Session {
            read_set: token.clone(),
            write_set: token.clone(),
            ..Session::default()
        };
        session.refresh_requirements();
        session
    }

    /// The same session under the guarantees `guarantees`.
    #[must_use]
    pub fn with_guarantees(mut self, guarantees: Guarantees) -> Self {
        self.guarantees = guarantees;
        self.refresh_requirements();
        self
    }

    /// The guarantees the session keeps.
    pub fn guarantees(&self) -> Guarantees {
        self.guarantees
    }

    /// Records a write the session made: `token` names it (and may name
    /// more, such as everything its replica had applied).
    pub fn record_write(&mut self, token: &SessionToken) {
        self.write_set.merge(token);
        if self.guarantees.contains(Guarantee::ReadYourWrites) {
            self.read_requirement.merge(token);
        }
        if self.guarantees.contains(Guarantee::MonotonicWrites) {
            self.write_requirement.merge(token);
        }
    }

    /// Records a read the session made: `token` names the writes the read
    /// saw (at most everything its replica had applied).
    pub fn record_read(&mut self, token: &SessionToken) {
        self.read_set.merge(token);
        if self.guarantees.contains(Guarantee::MonotonicReads) {
            self.read_requirement.merge(token);
        }
        if self.guarantees.contains(Guarantee::WritesFollowReads) {
            self.write_requirement.merge(token);
        }
    }

    /// What a replica must have applied before serving the session a read:
    /// the write-set (read your writes) joined with the read-set (monotonic
    /// reads), as selected.
    pub fn read_requirement(&self) -> &SessionToken {
        &self.read_requirement
    }

    /// What a replica must have applied before accepting a write from the
    /// session: the write-set (monotonic writes) joined with the read-set
    /// (writes follow reads), as selected.
    pub fn write_requirement(&self) -> &SessionToken {
        &self.write_requirement
    }

    /// The writes the session's reads saw.
    pub fn read_set(&self) -> &SessionToken {
        &self.read_set
    }

    /// The writes the session made.
    pub fn write_set(&self) -> &SessionToken {
        &self.write_set
    }

    /// The token to hand to the client: the read-set joined with the
    /// write-set, which covers both requirements.
    pub fn token(&self) -> SessionToken {
        self.read_set.join(&self.write_set)
    }

    /// Joins `other` into `self` (one user on two devices): afterwards
    /// `self` requires what either did. Keeps `self`'s guarantees.
    pub fn join(&mut self, other: &Session) {
        self.read_set.merge(&other.read_set);
        self.write_set.merge(&other.write_set);
        self.refresh_requirements();
    }

    fn refresh_requirements(&mut self) {
        let g = self.guarantees;
        self.read_requirement = requirement(
            g.contains(Guarantee::ReadYourWrites)
                .then_some(&self.write_set),
            g.contains(Guarantee::MonotonicReads)
                .then_some(&self.read_set),
        );
        self.write_requirement = requirement(
            g.contains(Guarantee::MonotonicWrites)
                .then_some(&self.write_set),
            g.contains(Guarantee::WritesFollowReads)
                .then_some(&self.read_set),
        );
    }
}

/// The join of the selected sets.
fn requirement(a: Option<&SessionToken>, b: Option<&SessionToken>) -> SessionToken {
    let mut joined = SessionToken::new();
    for set in [a, b].into_iter().flatten() {
        joined.merge(set);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(entries: &[(u64, u64)]) -> SessionToken {
        entries
            .iter()
            .map(|&(r, c)| (ReplicaId::new(r), c))
            .collect::<VersionVector>()
            .into()
    }

    #[test]
    fn text_limit_matches_the_longest_token() {
        let longest = token(
            &(0..TOKEN_REPLICAS_MAX as u64)
                .map(|r| (u64::MAX - r, u64::MAX))
                .collect::<Vec<_>>(),
        );
        let text = longest.to_string();
        assert_eq!(text.len(), TOKEN_TEXT_BYTES_MAX);
        assert!(text.starts_with(TOKEN_TEXT_PREFIX_V2));
        assert_eq!(text.parse::<SessionToken>(), Ok(longest));
        let mut long = text;
        long.push('A');
        assert_eq!(
            long.parse::<SessionToken>(),
            Err(TokenParseError::TooLong {
                len: TOKEN_TEXT_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn a_token_past_the_limit_writes_text_every_parser_refuses() {
        let count = TOKEN_REPLICAS_MAX + 1;
        let refusal = Err(TokenParseError::Bytes(WireError::Vector(
            wire::FixedVectorError::TooManyEntries { count },
        )));
        for base in [0, 1 << 32] {
            let huge = token(&(0..count as u64).map(|r| (base + r, 1)).collect::<Vec<_>>());
            assert_eq!(huge.to_string().parse::<SessionToken>(), refusal);
            assert!(huge.to_bytes().is_err());
        }
    }

    #[test]
    fn missing_names_each_replica_behind() {
        let needed = token(&[(1, 5), (2, 3), (4, 1)]);
        let applied: VersionVector = [(ReplicaId::new(1), 5), (ReplicaId::new(2), 1)]
            .into_iter()
            .collect();
        let missing: Vec<Missing> = needed.missing(&applied).collect();
        assert_eq!(
            missing,
            [
                Missing {
                    replica: ReplicaId::new(2),
                    needed: 3,
                    applied: 1
                },
                Missing {
                    replica: ReplicaId::new(4),
                    needed: 1,
                    applied: 0
                },
            ]
        );
        assert!(!needed.covered_by(&applied));
    }
}
