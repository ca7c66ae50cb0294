//! Homed tables: the sharded pattern for data that needs one writer.
//!
//! A balance must not be debited twice by two regions that each saw
//! enough money; a CRDT cannot prevent that, since each region decides
//! alone. A **homed table** ([`Region::homed_table`]) gives every key one
//! *home* region, named by a [`Placement`] (the account's region): only the
//! home writes the key. A write made at the home applies there at once (one
//! local write, replicated like any other); a write made anywhere else is
//! *forwarded* to the home over the transport, applied there, and its
//! outcome returned to the caller, with the home's session token. A home
//! that cannot be reached within [`RegionConfig::homed_forward_timeout`]
//! fails the write with [`RegionError::HomeUnreachable`] naming it; a write
//! never applies in a region that is not its key's home.
//!
//! Writes are data, not closures, because they travel: a value type
//! implements [`HomedValue`], whose [`Op`](HomedValue::Op) is serialized to
//! the home and applied there by [`HomedValue::apply`], which may refuse it
//! with a typed [`Rejection`](HomedValue::Rejection) (insufficient funds)
//! that comes back to the caller in its own region as
//! [`HomedError::Rejected`].
//!
//! ```
//! use archipelago::region::{HomedError, HomedValue, Placement, Region};
//! use archipelago::transport::ChannelNetwork;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Default, Serialize, Deserialize)]
//! struct Account { balance: u64 }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum Entry { Deposit(u64), Withdraw(u64) }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct InsufficientFunds { balance: u64, wanted: u64 }
//!
//! impl HomedValue for Account {
//!     type Op = Entry;
//!     type Rejection = InsufficientFunds;
//!     fn apply(&mut self, op: Entry) -> Result<(), InsufficientFunds> {
//!         match op {
//!             Entry::Deposit(n) => self.balance += n,
//!             Entry::Withdraw(n) if n > self.balance => {
//!                 return Err(InsufficientFunds { balance: self.balance, wanted: n });
//!             }
//!             Entry::Withdraw(n) => self.balance -= n,
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = ChannelNetwork::new(7);
//! let tokyo = Region::builder("ap-northeast").transport(net.endpoint("ap-northeast")).build()?;
//! let frankfurt = Region::builder("eu-central").transport(net.endpoint("eu-central")).build()?;
//! // Every account lives in the region its name starts with.
//! let home = |account: &String| {
//!     if account.starts_with("jp-") { "ap-northeast".to_string() } else { "eu-central".to_string() }
//! };
//! let accounts = frankfurt.homed_table::<String, Account>("accounts", home)?;
//! let _ = tokyo.homed_table::<String, Account>("accounts", home)?;
//! tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the regions meet
//!
//! // Written in Frankfurt, applied in Tokyo (the account's home).
//! let deposit = accounts.apply("jp-aiko", Entry::Deposit(100)).await?;
//! assert_eq!(deposit.value.balance, 100);
//! let refused = accounts.apply("jp-aiko", Entry::Withdraw(250)).await.unwrap_err();
//! assert!(matches!(
//!     refused,
//!     HomedError::Rejected { rejection: InsufficientFunds { balance: 100, wanted: 250 }, .. }
//! ));
//! // Linearizable for that key: asks Tokyo.
//! let read = accounts.read_at_home("jp-aiko").await?;
//! assert_eq!(read.value.map(|a| a.balance), Some(100));
//!
//! // Aiko moves to Berlin: her account's home follows, at epoch 1.
//! let moved = accounts.move_home("jp-aiko", "eu-central").await?;
//! assert_eq!((moved.home.as_str(), moved.epoch), ("eu-central", 1));
//! tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the handoff replicates
//! let deposit = accounts.apply("jp-aiko", Entry::Deposit(1)).await?;
//! assert_eq!((deposit.home.as_str(), deposit.epoch, deposit.value.balance), ("eu-central", 1, 101));
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **One writer per key.** Only the key's home applies writes to it
//!   (by the placement, the same at every region): its writes are totally
//!   ordered there, each one local write (one dot) that replicates to every
//!   region like any other, so every region converges on the home's state.
//!   Each stored value carries its *epoch*, home and version (see
//!   [`HomedTable::meta`]); a later version of the same epoch wins.
//! - **Reads.** [`HomedTable::read`] is local and eventual (the home's
//!   state as far as replication brought it here). [`HomedTable::read_at_home`]
//!   asks the home (at once, locally, when this region is the home):
//!   linearizable for that key while the home lives, since every write of
//!   it is applied there, in one order, before it is acknowledged.
//! - **Read your writes.** Every write returns the home's token for it
//!   (the dot of the write at the home): a session that records it
//!   ([`HomedTable::apply_session`]) reads it in any region
//!   ([`HomedTable::read_session`] waits, bounded, until the write has
//!   replicated there). Writes of one session to keys of different homes
//!   are not ordered with each other: each home orders its own keys.
//! - **At most once.** A forwarded request carries an id; the home
//!   remembers the outcome of up to [`HOMED_REPLIES_REMEMBERED_MAX`]
//!   requests ([`HOMED_REPLY_BYTES_REMEMBERED_MAX`] bytes), so a duplicated
//!   or resent request is answered again, never applied twice. A request
//!   older than what it remembers is refused ([`HomedRefusal::Expired`]).
//!   The memory is not stored: a home that restarts within the forward
//!   timeout of a request may apply a resent copy of it again.
//! - **Failure.** Past `homed_forward_timeout` the call fails with
//!   [`RegionError::HomeUnreachable`]: not applied if the request never
//!   left (`maybe_applied: false`, the home was disconnected all along),
//!   else possibly applied at the home and its answer lost (read it at the
//!   home). A home speaking a protocol older than 4 gets no homed message
//!   ([`RegionError::HomeProtocol`]); a home whose placement disagrees
//!   refuses ([`HomedRefusal::NotHome`]).
//! - **Durability.** With storage at the home, a forwarded write's answer
//!   leaves once the write is committed there, and a write made at the
//!   home returns once committed: [`AckLevel::Local`] at the home. Without
//!   storage it is applied in the home's memory.
//!
//! # Moving homes: epochs and fencing
//! Every key has an *epoch*: 0 while its home is the placement's. A
//! region's *view* of a key is the home its state names once the key
//! moved (epoch above 0), else the placement's: **a move overrides the
//! placement function and pins**. A region accepts a key's operations
//! only when its view names itself, checked under its state lock.
//! - **Planned handoff** ([`HomedTable::move_home`], a user relocated):
//!   carried out at the key's home, which writes the key's last state at
//!   epoch + 1 naming the new home (one local write, replicated like any
//!   other). From that write on the old home's view names the new home;
//!   the new home's view names itself once the handoff replicated there,
//!   so it starts from the old home's last state. Operations that reach a
//!   region that is no longer home are refused ([`HomedRefusal::Moved`],
//!   naming the new home and epoch, counted in `homed_fenced`) and the
//!   asking region sends them on there, up to [`HOMED_REDIRECTS_MAX`]
//!   times within the forward timeout (`homed_redirects`); a new home not
//!   yet caught up refuses them ([`HomedRefusal::NotHome`] naming the old
//!   home), and the caller gets that refusal: nothing applied, try again.
//! - **Fencing.** Epoch 0's home is the placement's, the same everywhere;
//!   the home of epoch e + 1 is named once, by the single home of epoch e,
//!   which then never accepts the key again (states only grow). So no two
//!   regions accept a write of a key in one epoch, whatever the network
//!   loses, duplicates or reorders, and across a partition in the middle of
//!   the handoff (tests/homed_epochs.rs checks it from the history of
//!   acknowledged writes, each of which reports its [`HomedWrite::epoch`]).
//! - **Restart.** The view is the table's state: with storage it survives
//!   a restart (a handoff leaves a region only once committed), so a
//!   restarted old home does not accept the key again. A region without
//!   storage restarts empty, at the placement's view, until anti-entropy
//!   brings the key back.
//!
//! # Operator failover, and why it is not automatic
//! [`HomedTable::fail_over_home`] (every key held here whose home is the
//! lost one) and [`HomedTable::fail_over_key`] are an operator's call: the
//! region called writes, for each key, the value it holds at the first
//! epoch of the next failover generation ([`HOMED_FAILOVER_EPOCH_STRIDE`])
//! naming the new home. The lost home, once it returns and hears of it,
//! refuses the key: fenced.
//!
//! **What a write acknowledged at the lost home may lose:** every write it
//! acknowledged that had not replicated to the region making the failover
//! before the call, including those it went on acknowledging while cut
//! off: the failover's state outranks them everywhere (a higher epoch), so
//! they vanish when it returns. Reconcile them from the lost home's own
//! log if they matter; read [`HomedTable::meta`] to see what survived.
//!
//! Failover is not automatic because a region cannot tell a home that is
//! down from one it is cut off from. Say Tokyo, home of `jp-aiko`, is
//! partitioned from Frankfurt and Virginia but serves Tokyo's clients. If
//! Frankfurt failed over on its own after a timeout, Tokyo and Frankfurt
//! would both accept debits of `jp-aiko` at once (split brain): an account
//! debited twice. And if Frankfurt and Virginia each did so, naming
//! themselves, two homes would share the failover's epoch. Deciding safely
//! needs a majority to agree who is home (a consensus engine, later); until
//! then an operator, who can see that Tokyo is really lost (or fence it,
//! by cutting it off from clients), makes the call once, from one region.
//! A failover of a home that is alive loses its writes as above.
//!
//! Moves need every region at protocol 5: a region of protocol 4 would go
//! on placing a moved key at its former home. A region refuses to move
//! homes while it speaks with an older peer ([`RegionError::MoveProtocol`]);
//! a region down at the time is the operator's to upgrade first.

use std::any::Any;
use std::borrow::Borrow;
use std::collections::HashMap;

use serde::Deserialize;

use super::*;
use crate::clock::Dot;
use crate::replication::homed::{
    Answer, HOMED_EPOCHS_PROTOCOL, HOMED_PROTOCOL, HOMED_TOLERANT_PROTOCOL, HomedOps,
};
use crate::replication::message::{Blob, HomedOutcome};
use crate::wire::Unknown;

/// Most homed operations a region keeps waiting for their homes' answers
/// at once; past it a forward is refused at once
/// ([`RegionError::TooManyForwards`]).
pub const HOMED_FORWARDS_PENDING_MAX: usize = 4096;

/// Most replies to forwarded requests a home remembers (per region, all
/// requesters together), so that a duplicated request is answered, not
/// applied again; past it the oldest are forgotten and requests older
/// than them are refused ([`HomedRefusal::Expired`]).
pub const HOMED_REPLIES_REMEMBERED_MAX: usize = 16_384;

/// Most bytes (values and rejections) of the replies a home remembers
/// (same rule as [`HOMED_REPLIES_REMEMBERED_MAX`]).
pub const HOMED_REPLY_BYTES_REMEMBERED_MAX: usize = 16 << 20;

/// The epochs an operator failover jumps to: the next multiple of this
/// (epochs `n * stride` to `(n + 1) * stride - 1` are failover generation
/// `n`; planned handoffs step by one within a generation). A lost home
/// that handed a key off while cut away from the operator stays below the
/// failover's epoch, so its successor is fenced too.
pub const HOMED_FAILOVER_EPOCH_STRIDE: u64 = 1 << 32;

/// Most times one homed operation is sent on to the home a refusal names
/// ([`HomedRefusal::Moved`]), all within one `homed_forward_timeout`;
/// past it the refusal is the caller's error.
pub const HOMED_REDIRECTS_MAX: usize = 4;

/// A value type of a homed table: what its operations are, and how its
/// home applies them.
///
/// [`apply`](HomedValue::apply) runs at the key's home only, on a copy of
/// the value (the type's default for an absent key), under the home's
/// state lock: keep it short and deterministic, and do not call back into
/// the region from it. A rejection (or a panic) changes nothing, whatever
/// `apply` did to the copy before. Operations and rejections travel
/// between regions through [`wire`]: every region must declare the table
/// with the same types, or types that differ only as *Schema evolution*
/// allows.
///
/// # Schema evolution
/// During a rolling upgrade a struct value, its operation or its
/// rejection may gain a trailing field marked `#[serde(default)]` at some
/// regions while others still run the old struct (V1 regions, V2
/// regions). Since protocol 6 (storage format 5) both directions keep
/// working, and no field is lost on the V2 side:
/// - **Stored and replicated states** carry the value delimited (a byte
///   string of its own, read tolerantly as a
///   [`LwwRegister`](crate::crdt::LwwRegister)'s is): a V2 region reads a
///   V1 value with the field's default; a V1 region reads a V2 value's old
///   fields and **keeps the bytes of the new field** beside it, stores
///   them and replicates them on.
/// - **A write at a V1 home keeps the V2 field.** [`apply`](HomedValue::apply)
///   at a V1 home changes the fields it knows; the unknown bytes of the
///   key's value are written back unchanged after them. So are they
///   through a handoff ([`HomedTable::move_home`]) and a failover. A V2
///   region reading after the V1 home's write has the field as it was
///   before the write. A **put** replaces the whole value: a V1 caller's
///   put has no V2 field (it reads as the default afterwards), a V2
///   caller's put to a V1 home stores the field (the V1 home keeps its
///   bytes).
/// - **Forwarded operations** are read tolerantly by the home: an
///   operation of V1 at a V2 home takes the default of the field it lacks;
///   an operation of V2 at a V1 home **loses the field** the V1 home
///   cannot know (`apply` there acts on the old fields only; the bytes are
///   dropped, logged at debug level).
/// - **Replies** are read tolerantly by the caller: the value after the
///   write (with the unknown bytes a V1 home kept, so a V2 caller gets
///   its field) and a rejection (missing trailing fields default, extra
///   ones dropped).
///
/// Tolerance is for a struct's (or tuple's) trailing fields, recursively
/// in its last field; removing, reordering or retyping fields, a trailing
/// field without a default, or a field added inside an enum variant are
/// not safe (a variant added at the end of an enum is, while no region
/// that lacks it receives it). A region of protocol 5 or older is sent
/// states in its layout, without unknown bytes, and replies with the
/// value alone: it declares the same types, and a V2 field does not
/// survive a write of its own.
pub trait HomedValue:
    Clone + Debug + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// One operation on a value (a debit, a credit), sent to the home.
    type Op: Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Why `apply` refuses an operation (insufficient funds), sent back to
    /// the caller.
    type Rejection: Debug + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies `op`, or refuses it.
    ///
    /// # Errors
    /// The rejection, returned to the caller as [`HomedError::Rejected`].
    fn apply(&mut self, op: Self::Op) -> Result<(), Self::Rejection>;
}

/// A placement function: the home region of a key.
type HomeFn<K> = dyn Fn(&K) -> String + Send + Sync;

/// Which region is the home of each key of a homed table.
///
/// Two sources: a function of the key ([`Placement::by`], or any closure
/// `Fn(&K) -> String` through `into`), and an explicit map of keys to homes
/// ([`Placement::pin`]). **A pinned key's entry wins** over the function;
/// a key neither names has no home (its writes fail with
/// [`RegionError::NoHome`]). Every region must use the same placement:
/// a home asked for a key it does not place at itself refuses
/// ([`HomedRefusal::NotHome`]). The function runs on every write and on
/// every forwarded request at the home (under its state lock): keep it
/// short and deterministic.
///
/// ```
/// use archipelago::region::Placement;
///
/// let placement = Placement::by(|account: &String| {
///     if account.starts_with("jp-") { "ap-northeast".into() } else { "eu-central".into() }
/// })
/// .pin("jp-moved-to-berlin", "eu-central");
/// assert_eq!(placement.home_of("jp-aiko").unwrap().as_deref(), Some("ap-northeast"));
/// assert_eq!(placement.home_of("jp-moved-to-berlin").unwrap().as_deref(), Some("eu-central"));
/// ```
pub struct Placement<K> {
    by: Option<Arc<HomeFn<K>>>,
    /// Homes by the key's bare `wire` encoding.
    pinned: HashMap<Box<[u8]>, String>,
    /// The first key `pin` could not encode: surfaces at declaration.
    pin_error: Option<WireError>,
}

impl<K> Debug for Placement<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("by_function", &self.by.is_some())
            .field("pinned", &self.pinned.len())
            .finish()
    }
}

impl<K, F> From<F> for Placement<K>
where
    F: Fn(&K) -> String + Send + Sync + 'static,
{
    fn from(f: F) -> Self {
        Placement {
            by: Some(Arc::new(f)),
            pinned: HashMap::new(),
            pin_error: None,
        }
    }
}

impl<K: Serialize + DeserializeOwned + 'static> Placement<K> {
    /// Homes by `f`: `f(key)` names the key's home region.
    pub fn by(f: impl Fn(&K) -> String + Send + Sync + 'static) -> Self {
        Placement::from(f)
    }

    /// Every key at `home`.
    pub fn fixed(home: &str) -> Self {
        let home = home.to_owned();
        Placement::from(move |_: &K| home.clone())
    }

    /// No function: only pinned keys have a home.
    pub fn pinned() -> Self {
        Placement {
            by: None,
            pinned: HashMap::new(),
            pin_error: None,
        }
    }

    /// Pins `key` at `home`, whatever the function says.
    #[must_use]
    pub fn pin<Q>(mut self, key: &Q, home: &str) -> Self
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        match wire::with_bare(key, <[u8]>::to_vec) {
            Ok(bytes) => {
                self.pinned.insert(bytes.into(), home.to_owned());
            }
            Err(error) => {
                self.pin_error.get_or_insert(error);
            }
        }
        self
    }

    /// The home of `key`: its pinned entry, else the function's answer,
    /// else `None`.
    ///
    /// # Errors
    /// [`WireError`] when the key cannot be encoded.
    pub fn home_of<Q>(&self, key: &Q) -> Result<Option<String>, WireError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        wire::with_bare(key, |bytes| self.home_of_bytes(bytes))?
    }

    /// The home of the key whose bare encoding is `key`.
    fn home_of_bytes(&self, key: &[u8]) -> Result<Option<String>, WireError> {
        if let Some(home) = self.pinned.get(key) {
            return Ok(Some(home.clone()));
        }
        let Some(by) = &self.by else {
            return Ok(None);
        };
        let key: K = wire::decode_bare(key)?;
        Ok(Some(by(&key)))
    }
}

/// Why a home refused a forwarded request: nothing was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HomedRefusal {
    /// The region asked does not place the key at itself (the regions'
    /// placements disagree): it names the home it places the key at.
    #[error("it is not the key's home (it places the key at {home:?})")]
    NotHome {
        /// The home by its placement, if any.
        home: Option<String>,
    },
    /// The table is not a homed table there (not declared yet, or
    /// declared as another kind).
    #[error("the table is not a homed table there")]
    NotHomed,
    /// The key or operation does not decode as the home's types (the
    /// table declared with other types there), or the outcome could not be
    /// encoded.
    #[error("the key, operation or outcome does not fit the home's types")]
    Codec,
    /// The request's id is older than the replies the home remembers (see
    /// [`HOMED_REPLIES_REMEMBERED_MAX`]): it may be a late copy of a
    /// request applied long ago, so it is not applied.
    #[error("the request is older than the replies the home remembers")]
    Expired,
    /// [`HomedValue::apply`] panicked at the home (logged there).
    #[error("the operation panicked at the home")]
    Panicked,
    /// The key's home moved away from the region asked (a handoff or a
    /// failover, see [`HomedTable::move_home`]): it names the key's home
    /// and epoch by its view. Sent only to regions of protocol 5 or later
    /// (older ones get [`NotHome`](HomedRefusal::NotHome) naming the same
    /// home); the asking region sends the operation on to that home, up to
    /// [`HOMED_REDIRECTS_MAX`] times, so a caller sees it only past that.
    #[error("the key's home moved to {home} at epoch {epoch}")]
    Moved {
        /// The key's home by the refusing region's view.
        home: String,
        /// The key's epoch there.
        epoch: u64,
    },
}

impl HomedRefusal {
    /// Bytes it holds, for the home's bounded memory of replies.
    pub(crate) fn size(&self) -> usize {
        match self {
            HomedRefusal::NotHome { home } => 16 + home.as_ref().map_or(0, String::len),
            HomedRefusal::Moved { home, .. } => 24 + home.len(),
            _ => 8,
        }
    }
}

/// What went wrong with an operation on a homed table.
#[derive(Debug, thiserror::Error)]
pub enum HomedError<R: Debug> {
    /// The value refused the operation at its home
    /// ([`HomedValue::apply`] returned `rejection`): nothing changed.
    #[error("refused at home {home}: {rejection:?}")]
    Rejected {
        /// The key's home.
        home: String,
        /// Why.
        rejection: R,
    },
    /// The operation could not be carried out (see [`RegionError`]: among
    /// others [`RegionError::HomeUnreachable`], [`RegionError::HomeProtocol`],
    /// [`RegionError::HomedRefused`], [`RegionError::NoHome`]).
    #[error(transparent)]
    Region(#[from] RegionError),
}

/// A homed write, applied at its key's home.
#[derive(Clone, Debug)]
pub struct HomedWrite<V> {
    /// The home's token for the write: record it in a session to read the
    /// write in any region.
    pub token: SessionToken,
    /// The key's value at the home right after the write.
    pub value: V,
    /// The home that applied it.
    pub home: String,
    /// The key's epoch at that home when it applied it: no other region
    /// accepts a write of the key in this epoch (0 from a home of
    /// protocol 4).
    pub epoch: u64,
}

/// A key's home moved ([`HomedTable::move_home`]).
#[derive(Clone, Debug)]
pub struct HomedMove {
    /// The key's home from `epoch` on.
    pub home: String,
    /// The epoch the key moved to (its epoch then, when it was home
    /// already: nothing was written).
    pub epoch: u64,
    /// The old home's token for the handoff (what it wrote last, when
    /// nothing was written): a session that records it reads the key's
    /// last state anywhere.
    pub token: SessionToken,
}

/// What an operator failover did ([`HomedTable::fail_over_home`]).
#[derive(Clone, Debug, Default)]
pub struct HomedFailover {
    /// Keys this region moved to the new home.
    pub keys: usize,
    /// The highest epoch they moved to (0 when none moved).
    pub epoch: u64,
    /// This region's token for its last failover write (empty when none).
    pub token: SessionToken,
}

/// A read at the key's home.
#[derive(Clone, Debug)]
pub struct HomedRead<V> {
    /// The value at the home (`None`: never written).
    pub value: Option<V>,
    /// The home's token for the key's last write (empty when none).
    pub token: SessionToken,
    /// The key's epoch at the home (0 from a home of protocol 4).
    pub epoch: u64,
}

/// What a homed table's stored value says of its writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomedMeta {
    /// The key's epoch: 0 for the placement's home, above once it moved.
    pub epoch: u64,
    /// The key's home in that epoch (at epoch 0, the region that wrote
    /// it, the placement's home).
    pub home: String,
    /// Writes of the home to the key in that epoch, this one included (0:
    /// the handoff or failover that opened the epoch, written by the
    /// former home or an operator's region).
    pub version: u64,
    /// The dot of the write (the home's, or the handoff's).
    pub written: Option<Dot>,
}

/// A homed table's stored value: the value and its writer. A join on a
/// total order (epoch, version, write), so every region converges on the
/// latest write of the latest epoch.
///
/// The binary encoding (see *Schema evolution* on [`HomedValue`]): since
/// protocol 6 (storage format 5) [`HOMED_DELIMITED_TAG`], then epoch, home,
/// version and write, then the value as a byte string of its own (its
/// bytes, then those it kept unread). The older layout, what peers of
/// protocol 5 are sent and older stores hold (still decoded), is the same
/// fields without the tag and the value positional: it starts with the
/// epoch's varint, which never starts with 255. The human-readable form
/// (JSON) is unchanged and carries no unknown bytes.
#[derive(Clone, Debug)]
pub(crate) struct HomedState<V> {
    epoch: u64,
    home: String,
    version: u64,
    written: Option<Dot>,
    value: V,
    /// The bytes of the value this build's `V` left unread (fields of a
    /// newer build): written back after the value's own.
    unknown: Unknown,
}

/// The first byte of a homed state in the delimited layout: the older
/// layout starts with a varint, which never starts with it.
pub(crate) const HOMED_DELIMITED_TAG: u8 = wire::DELIMITED_LEN_TAG;

/// The older layout, as derived before values were delimited (and the
/// human-readable form).
#[derive(Serialize)]
#[serde(rename = "HomedState")]
struct HomedRepr<'a, V> {
    epoch: u64,
    home: &'a str,
    version: u64,
    written: Option<Dot>,
    value: &'a V,
}

#[derive(Deserialize)]
#[serde(rename = "HomedState")]
struct HomedReprOwned<V> {
    epoch: u64,
    home: String,
    version: u64,
    written: Option<Dot>,
    value: V,
}

impl<V: Serialize> Serialize for HomedState<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if serializer.is_human_readable() || wire::positional_crdt_values() {
            let repr = HomedRepr {
                epoch: self.epoch,
                home: &self.home,
                version: self.version,
                written: self.written,
                value: &self.value,
            };
            return repr.serialize(serializer);
        }
        let mut tuple = serializer.serialize_tuple(6)?;
        tuple.serialize_element(&HOMED_DELIMITED_TAG)?;
        tuple.serialize_element(&self.epoch)?;
        tuple.serialize_element(&self.home)?;
        tuple.serialize_element(&self.version)?;
        tuple.serialize_element(&self.written)?;
        tuple.serialize_element(&wire::ValueBytes(&self.value, self.unknown.bytes()))?;
        tuple.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for HomedState<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let r = HomedReprOwned::<V>::deserialize(deserializer)?;
            return Ok(HomedState {
                epoch: r.epoch,
                home: r.home,
                version: r.version,
                written: r.written,
                value: r.value,
                unknown: Unknown::default(),
            });
        }
        // The first byte is read alone, to tell the delimited layout's tag
        // from the older layout's epoch.
        deserializer.deserialize_tuple(6, HomedVisitor(PhantomData))
    }
}

struct HomedVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for HomedVisitor<V> {
    type Value = HomedState<V>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a homed table's state")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("a homed state ends early");
        let first: u8 = seq.next_element()?.ok_or_else(missing)?;
        let delimited = first == HOMED_DELIMITED_TAG;
        let epoch = if delimited {
            seq.next_element()?.ok_or_else(missing)?
        } else {
            wire::varint_rest(first, &mut seq)?
        };
        let home = seq.next_element()?.ok_or_else(missing)?;
        let version = seq.next_element()?.ok_or_else(missing)?;
        let written = seq.next_element()?.ok_or_else(missing)?;
        let (value, unknown) = if delimited {
            let wire::ValueOf(value, unknown) = seq.next_element()?.ok_or_else(missing)?;
            (value, unknown)
        } else {
            (seq.next_element()?.ok_or_else(missing)?, Unknown::default())
        };
        Ok(HomedState {
            epoch,
            home,
            version,
            written,
            value,
            unknown,
        })
    }
}

impl<V: Default> Default for HomedState<V> {
    fn default() -> Self {
        HomedState {
            epoch: 0,
            home: String::new(),
            version: 0,
            written: None,
            value: V::default(),
            unknown: Unknown::default(),
        }
    }
}

impl<V> HomedState<V> {
    fn rank(&self) -> (u64, u64, Option<Dot>) {
        (self.epoch, self.version, self.written)
    }

    /// The key's epoch and home by a region's view: a moved key's (epoch
    /// above 0) is the home its state names, whatever the placement says
    /// (`placed`); until then the placement's.
    fn view(state: Option<&Self>, placed: Option<String>) -> (u64, Option<String>) {
        match state {
            Some(s) if s.epoch > 0 => (s.epoch, Some(s.home.clone())),
            _ => (0, placed),
        }
    }
}

/// The first epoch of the failover generation after `epoch`'s.
fn failover_epoch(epoch: u64) -> u64 {
    (epoch / HOMED_FAILOVER_EPOCH_STRIDE + 1).saturating_mul(HOMED_FAILOVER_EPOCH_STRIDE)
}

impl<V: Clone + Default + Serialize> Crdt for HomedState<V> {
    fn merge(&mut self, other: &Self) {
        match other.rank().cmp(&self.rank()) {
            std::cmp::Ordering::Greater => *self = other.clone(),
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                // One dot is one write: equal ranks are equal states, but
                // for a hostile or corrupt copy. Their encodings decide,
                // so the merge stays a join.
                let mine = wire::with_bare(&*self, <[u8]>::to_vec).unwrap_or_default();
                let theirs = wire::with_bare(other, <[u8]>::to_vec).unwrap_or_default();
                if theirs > mine {
                    *self = other.clone();
                }
            }
        }
    }
}

/// An operation as it travels to the home.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum HomedOp<V: HomedValue> {
    /// Read the value at the home.
    Read,
    /// Replace the value.
    Put(V),
    /// Apply a value operation.
    Apply(V::Op),
    /// Hand the key off to the home `to`, at the next epoch (protocol 5).
    Move { to: String },
}

/// The tag of [`HomedOp::Put`] in an operation's encoding (serde's
/// variant index, a one-byte varint).
const PUT_VARIANT: u32 = 1;
/// The tag of [`HomedOp::Apply`] in an operation's encoding.
const APPLY_VARIANT: u32 = 2;

/// A forwarded operation, decoded tolerantly (see *Schema evolution* on
/// [`HomedValue`]): a put's value or an applied operation missing
/// trailing fields reads with their defaults. A put's value keeps the
/// bytes it left unread (returned beside it, stored with it); an
/// operation's are **dropped**: `apply` cannot act on fields its type
/// does not have.
fn decode_op<V: HomedValue>(bytes: &[u8]) -> Result<(HomedOp<V>, Unknown), String> {
    let (variant, rest) = wire::decode_tolerant::<u32>(bytes)?;
    match variant {
        PUT_VARIANT => {
            let (value, unknown) = wire::decode_tolerant::<V>(rest)?;
            Ok((HomedOp::Put(value), Unknown::from_bytes(unknown)))
        }
        APPLY_VARIANT => {
            let (op, unknown) = wire::decode_tolerant::<V::Op>(rest)?;
            if !unknown.is_empty() {
                tracing::debug!(
                    op = type_name::<V::Op>(),
                    bytes = unknown.len(),
                    "homed: an operation's fields this build does not know are dropped"
                );
            }
            Ok((HomedOp::Apply(op), Unknown::default()))
        }
        _ => wire::decode_bare::<HomedOp<V>>(bytes)
            .map(|op| (op, Unknown::default()))
            .map_err(|e| e.to_string()),
    }
}

/// A reply's value for a requester of `protocol`: `value`'s bare
/// encoding, then, from [`HOMED_TOLERANT_PROTOCOL`] on, `unknown` (the
/// fields of a newer build it carries; such a requester reads it
/// tolerantly). An older requester reads it strictly, as its own type:
/// it gets only the fields this build knows.
fn value_blob<V: Serialize>(value: &V, unknown: &Unknown, protocol: u16) -> Option<Blob> {
    let none = Unknown::default();
    let unknown = if protocol >= HOMED_TOLERANT_PROTOCOL {
        unknown
    } else {
        &none
    };
    wire::with_bare(value, |b| {
        let mut bytes = Vec::with_capacity(b.len() + unknown.bytes().len());
        bytes.extend_from_slice(b);
        bytes.extend_from_slice(unknown.bytes());
        Blob(bytes)
    })
    .ok()
}

/// What an operation came to at the home.
enum Applied<V: HomedValue> {
    Wrote {
        dot: Dot,
        value: V,
        unknown: Unknown,
        epoch: u64,
    },
    Read {
        written: Option<Dot>,
        value: Option<V>,
        unknown: Unknown,
        epoch: u64,
    },
    Rejected(V::Rejection),
    Panicked(Box<dyn Any + Send>),
    /// This region is not the key's home by its view: the home it sees
    /// (at `epoch`), and the operation, not applied.
    NotHere {
        home: Option<String>,
        epoch: u64,
        op: HomedOp<V>,
    },
}

/// Applies `op` to `key` of the homed table in `slot`, if this region is
/// the key's home by its view (`placed`: the placement's home for it): a
/// local write (one dot) unless it is a read or refused. The view is read
/// under the state's lock, so no write lands after a handoff here.
/// `put_unknown`: the bytes a forwarded put's value left unread, stored
/// with it. Every other write keeps those the key's value kept (fields of
/// a newer build, which `apply` cannot see or change).
fn apply_at_home<V: HomedValue>(
    core: &mut Core,
    slot: usize,
    key: &[u8],
    (op, put_unknown): (HomedOp<V>, Unknown),
    placed: Option<String>,
) -> Result<Applied<V>, RegionError> {
    let store = core
        .store::<CrdtStore<HomedState<V>>>(slot)
        .expect("declared as a homed table of V");
    let current = store.get(key);
    let (epoch, home) = HomedState::view(current, placed);
    if home.as_deref() != Some(core.name.as_str()) {
        if epoch > 0 {
            core.counters.homed_fenced += 1;
            tracing::debug!(region = %core.name, epoch, home = ?home, "homed: the key's home moved away: fenced");
        }
        return Ok(Applied::NotHere { home, epoch, op });
    }
    let (version, written) = current.map_or((0, None), |s| (s.version, s.written));
    debug_assert!(
        current.is_none_or(|s| s.epoch == epoch),
        "a home writes at its key's epoch"
    );
    let kept = current.map(|s| s.unknown.clone()).unwrap_or_default();
    let value = match op {
        HomedOp::Read => {
            return Ok(Applied::Read {
                written,
                value: current.map(|s| s.value.clone()),
                unknown: kept,
                epoch,
            });
        }
        HomedOp::Move { to } if to == core.name => {
            // Home already: nothing to hand off.
            return Ok(Applied::Read {
                written,
                value: None,
                unknown: Unknown::default(),
                epoch,
            });
        }
        HomedOp::Move { to } => {
            // The handoff: the key's last state, at the next epoch, naming
            // the new home. From here on this region's view names `to`.
            let value = current.map(|s| s.value.clone()).unwrap_or_default();
            core.counters.homed_moves += 1;
            tracing::info!(region = %core.name, to = %to, epoch = epoch + 1, "homed: key handed off");
            return write_homed(core, slot, key, (epoch + 1, to, 0), (value, kept));
        }
        // A put replaces the whole value: the fields it carries, no others.
        HomedOp::Put(value) => (value, put_unknown),
        HomedOp::Apply(op) => {
            let mut value = current.map(|s| s.value.clone()).unwrap_or_default();
            let applied =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.apply(op)));
            match applied {
                // The fields `apply` does not know go on unchanged.
                Ok(Ok(())) => (value, kept),
                Ok(Err(rejection)) => return Ok(Applied::Rejected(rejection)),
                Err(panic) => return Ok(Applied::Panicked(panic)),
            }
        }
    };
    let home = core.name.clone();
    write_homed(core, slot, key, (epoch, home, version + 1), value)
}

/// Writes `value` (and the bytes of a newer build's fields it carries,
/// `unknown`) under `key` of the homed table in `slot` as `(epoch, home,
/// version)`: one local write (one dot), replicated like any other.
fn write_homed<V: HomedValue>(
    core: &mut Core,
    slot: usize,
    key: &[u8],
    (epoch, home, version): (u64, String, u64),
    (value, unknown): (V, Unknown),
) -> Result<Applied<V>, RegionError> {
    let dot = Dot::new(core.replica, core.seq + 1);
    let delta = HomedState {
        epoch,
        home,
        version,
        written: Some(dot),
        value,
        unknown,
    };
    let mut scratch = std::mem::take(&mut core.delta_scratch);
    scratch.clear();
    if let Err(error) = wire::encode_bare_into(&delta, &mut scratch) {
        core.delta_scratch = scratch;
        return Err(RegionError::Encode(error));
    }
    core.store_mut::<CrdtStore<HomedState<V>>>(slot)
        .expect("declared as a homed table of V")
        .merge_local(key, &delta);
    let token = core.record_write(slot, key, &scratch);
    core.delta_scratch = scratch;
    debug_assert_eq!(
        token,
        SessionToken::from_dot(dot),
        "the write got the dot foreseen"
    );
    Ok(Applied::Wrote {
        dot,
        value: delta.value,
        unknown: delta.unknown,
        epoch,
    })
}

/// An operator's failover of `key` of the homed table in `slot` to `to`,
/// written here: when `lost` is given, only if the key's home by this
/// region's view is `lost`. The key's epoch is raised to the next failover
/// generation's, with the value this region holds. The dot and epoch
/// written, or `None` when the key was not `lost`'s (or is `to`'s).
fn fail_over_at<V: HomedValue>(
    core: &mut Core,
    slot: usize,
    key: &[u8],
    (lost, to): (Option<&str>, &str),
    placed: Option<String>,
) -> Result<Option<(Dot, u64)>, RegionError> {
    let store = core
        .store::<CrdtStore<HomedState<V>>>(slot)
        .expect("declared as a homed table of V");
    let current = store.get(key);
    let (epoch, home) = HomedState::view(current, placed);
    if home.as_deref() == Some(to) || lost.is_some_and(|lost| home.as_deref() != Some(lost)) {
        return Ok(None);
    }
    let value = current.map(|s| s.value.clone()).unwrap_or_default();
    let unknown = current.map(|s| s.unknown.clone()).unwrap_or_default();
    let next = failover_epoch(epoch);
    debug_assert!(next > epoch, "a failover raises the epoch");
    core.counters.homed_moves += 1;
    tracing::warn!(region = %core.name, from = ?home, to, epoch = next, "homed: key failed over by the operator");
    match write_homed(core, slot, key, (next, to.to_owned(), 0), (value, unknown))? {
        Applied::Wrote { dot, epoch, .. } => Ok(Some((dot, epoch))),
        _ => unreachable!("write_homed writes"),
    }
}

/// The engine's view of one homed table of keys `K` and values `V`.
struct HomedTableOps<K, V> {
    placement: Arc<Placement<K>>,
    _values: PhantomData<fn() -> V>,
}

impl<K, V> HomedOps for HomedTableOps<K, V>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    V: HomedValue,
{
    fn serve(
        &self,
        core: &mut Core,
        slot: usize,
        key: &[u8],
        op: &[u8],
        protocol: u16,
    ) -> (HomedOutcome, bool) {
        let codec = (HomedOutcome::Refused(HomedRefusal::Codec), false);
        let epochs = protocol >= HOMED_EPOCHS_PROTOCOL;
        let Ok(placed) = self.placement.home_of_bytes(key) else {
            return codec;
        };
        let Ok(op) = decode_op::<V>(op) else {
            return codec;
        };
        if matches!(op.0, HomedOp::Move { .. }) && !epochs {
            // Only a region of protocol 5 moves homes.
            return codec;
        }
        let read = matches!(op.0, HomedOp::Read);
        let encode = |v: &V, unknown: &Unknown| value_blob(v, unknown, protocol);
        let done = |written, value, epoch| {
            if epochs {
                HomedOutcome::DoneAt {
                    written,
                    value,
                    epoch,
                }
            } else {
                HomedOutcome::Done { written, value }
            }
        };
        let outcome = match apply_at_home(core, slot, key, op, placed) {
            Ok(Applied::Wrote {
                dot,
                value,
                unknown,
                epoch,
            }) => done(
                Some(dot),
                Some(encode(&value, &unknown).unwrap_or_default()),
                epoch,
            ),
            Ok(Applied::Read {
                written,
                value,
                unknown,
                epoch,
            }) => match value.as_ref().map(|v| encode(v, &unknown)) {
                Some(None) => return codec,
                encoded => done(written, encoded.flatten(), epoch),
            },
            Ok(Applied::Rejected(rejection)) => {
                match wire::with_bare(&rejection, |b| Blob(b.to_vec())) {
                    Ok(rejection) => HomedOutcome::Rejected { rejection },
                    Err(_) => return codec,
                }
            }
            Ok(Applied::Panicked(_)) => {
                tracing::error!(region = %core.name, value = type_name::<V>(), "homed: HomedValue::apply panicked on a forwarded operation; nothing applied");
                HomedOutcome::Refused(HomedRefusal::Panicked)
            }
            Ok(Applied::NotHere {
                home: Some(home),
                epoch,
                ..
            }) if epoch > 0 && epochs => HomedOutcome::Refused(HomedRefusal::Moved { home, epoch }),
            Ok(Applied::NotHere { home, .. }) => {
                HomedOutcome::Refused(HomedRefusal::NotHome { home })
            }
            Err(_) => return codec,
        };
        (outcome, read)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Region {
    /// The homed table `name` of keys `K` and values `V`, each key written
    /// only at its home by `placement` (see the
    /// [homed module page](crate::region::homed)), declared on first use.
    ///
    /// Every handle on one table shares the first declaration's placement:
    /// a later call's `placement` is dropped. Declare the table (with the
    /// same placement and types) at every region: a home that has not
    /// declared it refuses forwarded operations
    /// ([`HomedRefusal::NotHomed`]).
    ///
    /// # Errors
    /// As [`Region::table`] (the same name declared with another value or
    /// key type, or as another kind of table); [`RegionError::Encode`]
    /// when a pinned key of `placement` could not be encoded.
    pub fn homed_table<K, V>(
        &self,
        name: &str,
        placement: impl Into<Placement<K>>,
    ) -> Result<HomedTable<K, V>, RegionError>
    where
        K: Serialize + DeserializeOwned + Send + Sync + 'static,
        V: HomedValue,
    {
        let mut placement = placement.into();
        if let Some(error) = placement.pin_error.take() {
            return Err(RegionError::Encode(error));
        }
        let table = self.table::<K, HomedState<V>>(name)?;
        let ops = Arc::new(HomedTableOps::<K, V> {
            placement: Arc::new(placement),
            _values: PhantomData,
        });
        let registered = self.core()?.declare_homed(table.slot, ops);
        let placement = registered
            .as_any()
            .downcast_ref::<HomedTableOps<K, V>>()
            .map(|ops| Arc::clone(&ops.placement))
            .expect("the table's key and value types were checked");
        Ok(HomedTable { table, placement })
    }

    /// Applies `op` here, if this region is the key's home by its view
    /// (`placed`: the placement's home): under the state's lock, like a
    /// local write.
    fn apply_homed<V: HomedValue>(
        &self,
        slot: usize,
        key: &[u8],
        op: HomedOp<V>,
        placed: Option<String>,
    ) -> Result<Applied<V>, RegionError> {
        let mut core = self.core()?;
        if !matches!(op, HomedOp::Read) && self.inner.closed.load(Ordering::Acquire) {
            return Err(RegionError::Closed);
        }
        let applied = apply_at_home(&mut core, slot, key, (op, Unknown::default()), placed)?;
        if let Applied::Panicked(panic) = applied {
            // The caller's value type panicked: its panic, after the lock.
            drop(core);
            std::panic::resume_unwind(panic);
        }
        Ok(applied)
    }

    /// Forwards the encoded `op` on `key` of `table` to `home` (on a
    /// connection of `protocol_min` or later) and waits for its answer, up
    /// to `homed_forward_timeout` after `started`.
    async fn forward_homed(
        &self,
        (table, home): (&str, &str),
        key: Vec<u8>,
        op: Vec<u8>,
        (started, protocol_min): (Instant, u16),
    ) -> Result<HomedOutcome, RegionError> {
        let unreachable = |maybe_applied| RegionError::HomeUnreachable {
            table: table.to_owned(),
            home: home.to_owned(),
            waited: started.elapsed(),
            maybe_applied,
        };
        let (reply, mut answer) = oneshot::channel();
        let id = {
            let mut core = self.core()?;
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(RegionError::Closed);
            }
            if !core.replicating {
                // No transport: no home can ever be reached.
                return Err(unreachable(false));
            }
            core.forward((home, table), key, op, protocol_min, reply)?
        };
        let deadline = started + self.inner.config.homed_forward_timeout;
        let answered = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(_)) => return Err(unreachable(true)),
            Err(_) => {
                let abandoned = self.core_any().abandon_forward(id);
                match (abandoned, answer.try_recv()) {
                    (Some(sent), _) => {
                        tracing::warn!(region = %self.inner.name, table, home, sent, "homed: the home did not answer in time");
                        return Err(unreachable(sent));
                    }
                    (None, Ok(answered)) => answered,
                    (None, Err(_)) => return Err(unreachable(true)),
                }
            }
        };
        match answered {
            Answer::Outcome(outcome) => Ok(outcome),
            Answer::OldProtocol(protocol) => Err(RegionError::HomeProtocol {
                table: table.to_owned(),
                home: home.to_owned(),
                protocol,
            }),
        }
    }

    /// Checks that this region may move homes: `to` is a region it knows,
    /// and no peer it speaks with is of a protocol older than 5.
    fn check_move(&self, table: &str, to: &str) -> Result<(), RegionError> {
        let core = self.core()?;
        if !core.knows_region(to) {
            return Err(RegionError::UnknownHome {
                table: table.to_owned(),
                home: to.to_owned(),
            });
        }
        if let Some((region, protocol)) = core.peer_without_epochs() {
            return Err(RegionError::MoveProtocol {
                table: table.to_owned(),
                region,
                protocol,
            });
        }
        Ok(())
    }
}

/// What an operation came to, in the caller's types.
enum Outcome<V: HomedValue> {
    Done {
        written: Option<Dot>,
        value: Option<V>,
    },
    Rejected(V::Rejection),
}

/// Where an operation was carried out: the home, and the key's epoch
/// there (0 from a home of protocol 4).
struct At {
    home: String,
    epoch: u64,
}

/// A handle on a homed table: keys `K`, values `V` written only at each
/// key's home (see the [homed module page](crate::region::homed)). Clones
/// share it.
pub struct HomedTable<K, V> {
    table: Table<K, HomedState<V>>,
    placement: Arc<Placement<K>>,
}

impl<K, V> Clone for HomedTable<K, V> {
    fn clone(&self) -> Self {
        HomedTable {
            table: self.table.clone(),
            placement: Arc::clone(&self.placement),
        }
    }
}

impl<K, V> Debug for HomedTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomedTable")
            .field("table", &self.table)
            .field("placement", &self.placement)
            .finish()
    }
}

impl<K, V> HomedTable<K, V>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
    V: HomedValue,
{
    /// The table's name.
    pub fn name(&self) -> &str {
        self.table.name()
    }

    /// The home of `key` by this region's view: the home its state names
    /// once the key moved ([`move_home`](HomedTable::move_home), a
    /// failover), else the table's placement's.
    ///
    /// # Errors
    /// [`RegionError::NoHome`] when the placement names none;
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn home_of<Q>(&self, key: &Q) -> Result<String, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let key = wire::with_bare(key, <[u8]>::to_vec).map_err(RegionError::Encode)?;
        self.view(&key)?.1.ok_or_else(|| RegionError::NoHome {
            table: self.name().to_owned(),
        })
    }

    /// Replaces the value under `key` with `value`, at its home. Returns
    /// the home's token for the write.
    ///
    /// # Errors
    /// As [`apply`](HomedTable::apply), but for rejections (a put is
    /// never rejected).
    pub async fn put<Q>(&self, key: &Q, value: V) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        match self.execute(key, HomedOp::Put(value)).await? {
            (
                _,
                Outcome::Done {
                    written: Some(dot), ..
                },
            ) => Ok(SessionToken::from_dot(dot)),
            // A put is never rejected, and always writes: a home that says
            // otherwise does not speak our types.
            (at, _) => Err(self.refused(&at.home, HomedRefusal::Codec)),
        }
    }

    /// Applies `op` to the value under `key` (the default value when
    /// absent), at its home: here at once when this region is the home,
    /// else forwarded to it and waited for, up to
    /// `homed_forward_timeout`. Returns the home's token for the write,
    /// the value after it, and the home and epoch that applied it. A home
    /// that refuses it because the key moved away
    /// ([`HomedRefusal::Moved`]) names the new home: the operation is sent
    /// there, up to [`HOMED_REDIRECTS_MAX`] times within the timeout.
    ///
    /// # Errors
    /// [`HomedError::Rejected`] when the value refused `op` (nothing
    /// changed); [`HomedError::Region`] with
    /// [`RegionError::HomeUnreachable`] naming the home when it did not
    /// answer in time, [`RegionError::HomeProtocol`] when it speaks a
    /// protocol older than 4, [`RegionError::HomedRefused`] when it
    /// refused the request, [`RegionError::NoHome`],
    /// [`RegionError::TooManyForwards`], [`RegionError::Closed`] after
    /// [`Region::shutdown`], [`RegionError::Encode`]: in none of these was
    /// anything applied here. With storage at the home, as for
    /// [`AckLevel::Local`] writes.
    pub async fn apply<Q>(
        &self,
        key: &Q,
        op: V::Op,
    ) -> Result<HomedWrite<V>, HomedError<V::Rejection>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let (at, outcome) = self.execute(key, HomedOp::Apply(op)).await?;
        match outcome {
            Outcome::Done {
                written: Some(dot),
                value: Some(value),
            } => Ok(HomedWrite {
                token: SessionToken::from_dot(dot),
                value,
                home: at.home,
                epoch: at.epoch,
            }),
            Outcome::Done { .. } => Err(self.refused(&at.home, HomedRefusal::Codec).into()),
            Outcome::Rejected(rejection) => Err(HomedError::Rejected {
                home: at.home,
                rejection,
            }),
        }
    }

    /// As [`apply`](HomedTable::apply), and records the write in
    /// `session`: a session read then sees it in any region.
    ///
    /// # Errors
    /// As [`apply`](HomedTable::apply).
    pub async fn apply_session<Q>(
        &self,
        key: &Q,
        op: V::Op,
        session: &mut Session,
    ) -> Result<HomedWrite<V>, HomedError<V::Rejection>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let write = self.apply(key, op).await?;
        session.record_write(&write.token);
        Ok(write)
    }

    /// The value under `key` here, now (eventual: the home's writes as
    /// far as they have replicated here).
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn read<Q>(&self, key: &Q) -> Result<Option<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table.read_with(key, |s| s.value.clone())
    }

    /// The value under `key` once this region has applied what the session
    /// requires (its homed writes' tokens among it), waiting up to
    /// `session_wait_max`; records the read in the session.
    ///
    /// # Errors
    /// [`RegionError::SessionTimeout`] when the region does not catch up
    /// in time: never a stale read.
    pub async fn read_session<Q>(
        &self,
        key: &Q,
        session: &mut Session,
    ) -> Result<Option<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let state = self.table.read_session(key, session).await?;
        Ok(state.map(|s| s.value))
    }

    /// The value under `key` at its home: linearizable for that key (see
    /// the [module page](crate::region::homed)). Read here at once when
    /// this region is the home; else asked of the home and waited for, up
    /// to `homed_forward_timeout` (following a moved key's home as
    /// [`apply`](HomedTable::apply) does).
    ///
    /// # Errors
    /// As [`apply`](HomedTable::apply), but for rejections.
    pub async fn read_at_home<Q>(&self, key: &Q) -> Result<HomedRead<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        match self.execute(key, HomedOp::Read).await? {
            (at, Outcome::Done { written, value }) => Ok(HomedRead {
                value,
                token: written.map(SessionToken::from_dot).unwrap_or_default(),
                epoch: at.epoch,
            }),
            // A read is never rejected: a home that says otherwise does not
            // speak our types.
            (at, Outcome::Rejected(_)) => Err(self.refused(&at.home, HomedRefusal::Codec)),
        }
    }

    /// Moves the home of `key` to the region `new_home` (a planned
    /// handoff: the user relocated). Carried out at the key's current home
    /// (forwarded there when it is another region, like a write): under
    /// its state lock it writes the key's last state at the next epoch,
    /// naming `new_home`, and from then on refuses the key's operations
    /// naming the new home ([`HomedRefusal::Moved`]). The new home accepts
    /// the key's writes once that handoff has replicated to it, so it
    /// starts from the old home's last state; until then it refuses them
    /// too (placing the key at the old home). Moving a key to its home is
    /// a no-op. See the [module page](crate::region::homed) for fencing.
    ///
    /// # Errors
    /// [`RegionError::UnknownHome`] when `new_home` is neither this region
    /// nor one of its peers; [`RegionError::MoveProtocol`] when a peer
    /// this region speaks with is of a protocol older than 5; else as
    /// [`apply`](HomedTable::apply) (with [`RegionError::HomeProtocol`]
    /// for a home older than 5). `HomeUnreachable` with `maybe_applied`:
    /// the handoff may have happened (see [`home_of`](HomedTable::home_of)
    /// once it replicated, or move again: a second move is answered from
    /// the new home's view).
    pub async fn move_home<Q>(&self, key: &Q, new_home: &str) -> Result<HomedMove, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table.region.check_move(self.name(), new_home)?;
        let op = HomedOp::Move {
            to: new_home.to_owned(),
        };
        match self.execute(key, op).await? {
            // Moved, or home already (nothing written): `new_home` is home.
            (at, Outcome::Done { written, .. }) => {
                debug_assert!(
                    at.epoch > 0 || at.home == new_home,
                    "a handoff raises the epoch"
                );
                Ok(HomedMove {
                    home: new_home.to_owned(),
                    epoch: at.epoch,
                    token: written.map(SessionToken::from_dot).unwrap_or_default(),
                })
            }
            (at, Outcome::Rejected(_)) => Err(self.refused(&at.home, HomedRefusal::Codec)),
        }
    }

    /// An operator's failover of every key held here whose home by this
    /// region's view is `lost_home`, to `new_home`: for each, this region
    /// writes the value it holds at the first epoch of the next failover
    /// generation (see [`HOMED_FAILOVER_EPOCH_STRIDE`]), naming
    /// `new_home`. The new home accepts the keys' writes once that has
    /// replicated to it; `lost_home`, once it hears of it, refuses them
    /// (fenced), and what it accepted at the old epoch that had not
    /// replicated here before the call is **lost**: the failover's state
    /// outranks it everywhere. Keys never replicated here are not moved:
    /// move them with [`fail_over_key`](HomedTable::fail_over_key).
    ///
    /// Call it once, from one region, and only for a home that is lost:
    /// two regions failing a home over at once, or a failover of a home
    /// that is alive, make two homes for a key (split brain; see the
    /// [module page](crate::region::homed)). With storage here it returns
    /// once the failover is committed.
    ///
    /// # Errors
    /// [`RegionError::UnknownHome`] when `new_home` is not a region this
    /// one knows; [`RegionError::MoveProtocol`] when a peer this region
    /// speaks with is older than protocol 5; [`RegionError::Encode`],
    /// [`RegionError::Closed`].
    pub async fn fail_over_home(
        &self,
        lost_home: &str,
        new_home: &str,
    ) -> Result<HomedFailover, RegionError> {
        self.table.region.check_move(self.name(), new_home)?;
        let keys: Vec<Box<[u8]>> = {
            let core = self.table.region.core()?;
            let store = core
                .store::<CrdtStore<HomedState<V>>>(self.table.slot)
                .expect("declared as a homed table of V");
            store.iter().map(|(key, _)| Box::from(&key[..])).collect()
        };
        let mut done = HomedFailover::default();
        for key in keys {
            let placed = self.placement.home_of_bytes(&key).ok().flatten();
            let written = {
                let mut core = self.table.region.core()?;
                if self.table.region.inner.closed.load(Ordering::Acquire) {
                    return Err(RegionError::Closed);
                }
                let to = (Some(lost_home), new_home);
                fail_over_at::<V>(&mut core, self.table.slot, &key, to, placed)?
            };
            if let Some((dot, epoch)) = written {
                done.keys += 1;
                done.epoch = done.epoch.max(epoch);
                done.token = SessionToken::from_dot(dot);
            }
        }
        self.committed(&done.token).await?;
        Ok(done)
    }

    /// An operator's failover of `key` to `new_home`, whatever its home
    /// (also a key never replicated here: it starts from the default
    /// value), as [`fail_over_home`](HomedTable::fail_over_home) does for
    /// a lost home's keys. A no-op when `new_home` is the key's home here.
    ///
    /// # Errors
    /// As [`fail_over_home`](HomedTable::fail_over_home).
    pub async fn fail_over_key<Q>(
        &self,
        key: &Q,
        new_home: &str,
    ) -> Result<HomedFailover, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table.region.check_move(self.name(), new_home)?;
        let key = wire::with_bare(key, <[u8]>::to_vec).map_err(RegionError::Encode)?;
        let placed = self
            .placement
            .home_of_bytes(&key)
            .map_err(RegionError::Encode)?;
        let written = {
            let mut core = self.table.region.core()?;
            if self.table.region.inner.closed.load(Ordering::Acquire) {
                return Err(RegionError::Closed);
            }
            fail_over_at::<V>(&mut core, self.table.slot, &key, (None, new_home), placed)?
        };
        let done = written.map_or_else(HomedFailover::default, |(dot, epoch)| HomedFailover {
            keys: 1,
            epoch,
            token: SessionToken::from_dot(dot),
        });
        self.committed(&done.token).await?;
        Ok(done)
    }

    /// What the value under `key` here says of its writer (`None` when
    /// absent): epoch, home, version.
    ///
    /// # Errors
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn meta<Q>(&self, key: &Q) -> Result<Option<HomedMeta>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table.read_with(key, |s| HomedMeta {
            epoch: s.epoch,
            home: s.home.clone(),
            version: s.version,
            written: s.written,
        })
    }

    /// Number of keys held here.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no key is held here.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn refused(&self, home: &str, refusal: HomedRefusal) -> RegionError {
        RegionError::HomedRefused {
            table: self.name().to_owned(),
            home: home.to_owned(),
            refusal,
        }
    }

    /// Waits, with storage here, until this region's write `token` (its
    /// own dot; none when empty) is committed.
    async fn committed(&self, token: &SessionToken) -> Result<(), RegionError> {
        let region = &self.table.region;
        let seq = token.as_vector().get(region.replica());
        if region.inner.durable && seq > 0 {
            region.wait_committed(seq).await?;
        }
        Ok(())
    }

    /// The key's epoch and home (bare encoding `key`) by this region's
    /// view.
    fn view(&self, key: &[u8]) -> Result<(u64, Option<String>), RegionError> {
        let placed = self
            .placement
            .home_of_bytes(key)
            .map_err(RegionError::Encode)?;
        let core = self.table.region.core()?;
        let store = core
            .store::<CrdtStore<HomedState<V>>>(self.table.slot)
            .expect("declared as a homed table of V");
        Ok(HomedState::view(store.get(key), placed))
    }

    /// Carries out `op` on `key` at its home (here, or forwarded),
    /// following a moved key's home up to [`HOMED_REDIRECTS_MAX`] times:
    /// where, and what `op` came to there.
    async fn execute<Q>(&self, key: &Q, op: HomedOp<V>) -> Result<(At, Outcome<V>), RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let region = &self.table.region;
        let key = wire::with_bare(key, <[u8]>::to_vec).map_err(RegionError::Encode)?;
        let protocol_min = if matches!(op, HomedOp::Move { .. }) {
            HOMED_EPOCHS_PROTOCOL
        } else {
            HOMED_PROTOCOL
        };
        let placed = self
            .placement
            .home_of_bytes(&key)
            .map_err(RegionError::Encode)?;
        let (mut epoch, home) = self.view(&key)?;
        let mut home = home.ok_or_else(|| RegionError::NoHome {
            table: self.name().to_owned(),
        })?;
        let mut call = Call {
            key,
            placed,
            op: Some(op),
            encoded: None,
            started: Instant::now(),
            protocol_min,
        };
        let mut redirects = 0;
        loop {
            let step = if home == region.name() {
                self.step_here(&mut call, epoch).await?
            } else {
                self.step_away(&mut call, &home, epoch).await?
            };
            let (to, at) = match step {
                Step::Done(at, outcome) => return Ok((at, outcome)),
                Step::Moved { to, epoch } => (to, epoch),
            };
            if redirects >= HOMED_REDIRECTS_MAX || home == to {
                return Err(self.refused(
                    &home,
                    HomedRefusal::Moved {
                        home: to,
                        epoch: at,
                    },
                ));
            }
            redirects += 1;
            region.core_any().counters.homed_redirects += 1;
            tracing::debug!(region = %region.name(), from = %home, to = %to, epoch = at, "homed: sent on to the key's home");
            home = to;
            epoch = at;
        }
    }

    /// One attempt here, where we believe the key's home is (at `epoch`).
    async fn step_here(&self, call: &mut Call<V>, epoch: u64) -> Result<Step<V>, RegionError> {
        let region = &self.table.region;
        let op = call.take_op()?;
        let here = || region.name().to_owned();
        match region.apply_homed::<V>(self.table.slot, &call.key, op, call.placed.clone())? {
            Applied::Wrote {
                dot, value, epoch, ..
            } => {
                if region.inner.durable {
                    region.wait_committed(dot.counter).await?;
                }
                let outcome = Outcome::Done {
                    written: Some(dot),
                    value: Some(value),
                };
                Ok(Step::Done(
                    At {
                        home: here(),
                        epoch,
                    },
                    outcome,
                ))
            }
            Applied::Read {
                written,
                value,
                epoch,
                ..
            } => Ok(Step::Done(
                At {
                    home: here(),
                    epoch,
                },
                Outcome::Done { written, value },
            )),
            Applied::Rejected(rejection) => Ok(Step::Done(
                At {
                    home: here(),
                    epoch,
                },
                Outcome::Rejected(rejection),
            )),
            Applied::Panicked(_) => unreachable!("apply_homed resumes the panic"),
            Applied::NotHere {
                home: Some(to),
                epoch: at,
                op: back,
            } if at > 0 => {
                call.op = Some(back);
                Ok(Step::Moved { to, epoch: at })
            }
            Applied::NotHere { home: placed, .. } => {
                Err(self.refused(region.name(), HomedRefusal::NotHome { home: placed }))
            }
        }
    }

    /// One attempt at `home`, another region: the operation forwarded and
    /// its reply decoded.
    async fn step_away(
        &self,
        call: &mut Call<V>,
        home: &str,
        epoch: u64,
    ) -> Result<Step<V>, RegionError> {
        let bytes = call.encoded_op()?;
        let outcome = self
            .table
            .region
            .forward_homed(
                (self.name(), home),
                call.key.clone(),
                bytes,
                (call.started, call.protocol_min),
            )
            .await?;
        let codec = || self.refused(home, HomedRefusal::Codec);
        let (written, value, at) = match outcome {
            HomedOutcome::Done { written, value } => (written, value, 0),
            HomedOutcome::DoneAt {
                written,
                value,
                epoch,
            } => (written, value, epoch),
            HomedOutcome::Rejected { rejection } => {
                let rejection = wire::decode_tolerant::<V::Rejection>(&rejection.0)
                    .map_err(|_| codec())?
                    .0;
                let at = At {
                    home: home.to_owned(),
                    epoch,
                };
                return Ok(Step::Done(at, Outcome::Rejected(rejection)));
            }
            HomedOutcome::Refused(HomedRefusal::Moved { home: to, epoch }) => {
                return Ok(Step::Moved { to, epoch });
            }
            HomedOutcome::Refused(refusal) => return Err(self.refused(home, refusal)),
        };
        let value = match value {
            // Tolerant: a home of another build of `V` (fields of a newer
            // build it carries are dropped here: the caller gets a `V`).
            Some(bytes) => Some(wire::decode_tolerant::<V>(&bytes.0).map_err(|_| codec())?.0),
            None => None,
        };
        let at = At {
            home: home.to_owned(),
            epoch: at,
        };
        Ok(Step::Done(at, Outcome::Done { written, value }))
    }
}

/// One operation on its way to its key's home: the operation itself until
/// it is first carried out here, its encoding once it is first forwarded.
struct Call<V: HomedValue> {
    key: Vec<u8>,
    placed: Option<String>,
    op: Option<HomedOp<V>>,
    encoded: Option<Vec<u8>>,
    started: Instant,
    protocol_min: u16,
}

impl<V: HomedValue> Call<V> {
    /// The operation to carry out here (decoded again if it was forwarded
    /// first and sent back here by a move).
    fn take_op(&mut self) -> Result<HomedOp<V>, RegionError> {
        match self.op.take() {
            Some(op) => Ok(op),
            None => wire::decode_bare::<HomedOp<V>>(self.encoded.as_deref().unwrap_or_default())
                .map_err(RegionError::Encode),
        }
    }

    /// The operation's encoding, made once.
    fn encoded_op(&mut self) -> Result<Vec<u8>, RegionError> {
        if let Some(bytes) = &self.encoded {
            return Ok(bytes.clone());
        }
        let op = self.op.as_ref().expect("not yet encoded, so not taken");
        let bytes = wire::with_bare(op, <[u8]>::to_vec).map_err(RegionError::Encode)?;
        self.encoded = Some(bytes.clone());
        Ok(bytes)
    }
}

/// What one attempt at the home we believe in came to.
enum Step<V: HomedValue> {
    /// Carried out there: where, and what it came to.
    Done(At, Outcome<V>),
    /// That home says the key moved to `to` at `epoch`.
    Moved { to: String, epoch: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ReplicaId;

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct AccountV1 {
        balance: u64,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct AccountV2 {
        balance: u64,
        #[serde(default)]
        nickname: Option<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct DepositV1 {
        amount: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct DepositV2 {
        amount: u64,
        #[serde(default)]
        memo: Option<String>,
    }

    impl HomedValue for AccountV1 {
        type Op = DepositV1;
        type Rejection = ();
        fn apply(&mut self, op: DepositV1) -> Result<(), ()> {
            self.balance += op.amount;
            Ok(())
        }
    }

    impl HomedValue for AccountV2 {
        type Op = DepositV2;
        type Rejection = ();
        fn apply(&mut self, op: DepositV2) -> Result<(), ()> {
            self.balance += op.amount;
            Ok(())
        }
    }

    /// The homed state as the build before protocol 6 derived it.
    #[derive(Serialize)]
    struct PreviousBuildState<'a, V> {
        epoch: u64,
        home: &'a str,
        version: u64,
        written: Option<Dot>,
        value: V,
    }

    fn state<V>(value: V) -> HomedState<V> {
        HomedState {
            epoch: 1,
            home: "ap-northeast".into(),
            version: 3,
            written: Some(Dot::new(ReplicaId::new(0x7000_0001), 9)),
            value,
            unknown: Unknown::default(),
        }
    }

    fn aiko(balance: u64) -> AccountV2 {
        AccountV2 {
            balance,
            nickname: Some("Aiko".into()),
        }
    }

    /// The committed bytes of fixture `path` (under `tests/fixtures/`),
    /// written from `made` first when blessing
    /// (`ARCHIPELAGO_BLESS_FIXTURES=1`) and missing: see
    /// `tests/golden_fixtures.rs` for the rules.
    fn golden(path: &str, made: &[u8]) -> Vec<u8> {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path);
        if !file.exists() {
            assert!(
                std::env::var_os("ARCHIPELAGO_BLESS_FIXTURES").is_some(),
                "fixture {path} is missing: ARCHIPELAGO_BLESS_FIXTURES=1 writes it"
            );
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, made).unwrap();
        }
        std::fs::read(&file).unwrap()
    }

    fn same<V: PartialEq + Debug>(a: &HomedState<V>, b: &HomedState<V>) {
        assert_eq!(
            (a.epoch, &a.home, a.version, a.written, &a.value, &a.unknown),
            (b.epoch, &b.home, b.version, b.written, &b.value, &b.unknown)
        );
    }

    /// The older layout (the previous build's derived struct) still
    /// decodes, also with an epoch of several bytes; the delimited layout
    /// starts with 255, is fixed by a golden fixture, and is what this
    /// build writes.
    #[test]
    fn homed_states_of_both_layouts_decode_and_the_new_one_is_golden() {
        for epoch in [1, 300, HOMED_FAILOVER_EPOCH_STRIDE + 1] {
            let mut old = state(AccountV1 { balance: 5 });
            old.epoch = epoch;
            let bytes = wire::encode(&PreviousBuildState {
                epoch,
                home: &old.home,
                version: old.version,
                written: old.written,
                value: old.value.clone(),
            })
            .unwrap();
            same(
                &wire::decode::<HomedState<AccountV1>>(&bytes).unwrap(),
                &old,
            );
            let mut legacy = Vec::new();
            wire::encode_bare_legacy_into(&old, &mut legacy, 5).unwrap();
            assert_eq!(
                legacy,
                bytes[1..],
                "a protocol-5 peer gets the older layout"
            );
            // Positional, the older layout is read strictly: the struct
            // changes once every region runs a build of protocol 6.
            assert!(wire::decode::<HomedState<AccountV2>>(&bytes).is_err());
        }
        let old = state(AccountV1 { balance: 5 });
        let positional = golden(
            "states/v3/homed_state_positional.bin",
            &wire::encode(&PreviousBuildState {
                epoch: old.epoch,
                home: &old.home,
                version: old.version,
                written: old.written,
                value: old.value.clone(),
            })
            .unwrap(),
        );
        same(&wire::decode(&positional).unwrap(), &old);

        let delimited = wire::encode(&old).unwrap();
        assert_eq!(delimited.len(), positional.len() + 2, "a tag and a length");
        let new = state(aiko(7));
        let made = wire::encode(&new).unwrap();
        assert_eq!(made[1], HOMED_DELIMITED_TAG, "after the wire version");
        let committed = golden("states/v3/homed_state.bin", &made);
        assert_eq!(made, committed, "the delimited layout changed");
        same(&wire::decode(&committed).unwrap(), &new);
    }

    /// A V1 build reads a V2 state's old fields, keeps the new field's
    /// bytes and writes them out again unchanged; a V2 build reads them
    /// back whole. JSON has no unknown bytes and is unchanged.
    #[test]
    fn an_old_build_keeps_the_bytes_of_a_new_field() {
        let bytes = wire::encode(&state(aiko(7))).unwrap();
        let at_old: HomedState<AccountV1> = wire::decode(&bytes).unwrap();
        assert_eq!(at_old.value, AccountV1 { balance: 7 });
        assert_eq!(at_old.unknown.bytes().len(), 6, "Some(\"Aiko\")");
        assert_eq!(wire::encode(&at_old).unwrap(), bytes);
        let json = serde_json::to_string(&state(AccountV1 { balance: 7 })).unwrap();
        assert!(json.starts_with("{\"epoch\":1,"), "{json}");
        let back: HomedState<AccountV1> = serde_json::from_str(&json).unwrap();
        same(&back, &state(AccountV1 { balance: 7 }));
    }

    /// A reply's value carries the bytes a V1 home kept to a requester of
    /// protocol 6, which reads them as its V2 field; one of protocol 5
    /// reads strictly, so it gets the value alone.
    #[test]
    fn a_reply_carries_the_kept_bytes_only_to_protocol_6() {
        let at_old: HomedState<AccountV1> =
            wire::decode(&wire::encode(&state(aiko(7))).unwrap()).unwrap();
        let blob = |protocol| value_blob(&at_old.value, &at_old.unknown, protocol).unwrap();
        let tolerant = blob(HOMED_TOLERANT_PROTOCOL);
        let (read, rest) = wire::decode_tolerant::<AccountV2>(&tolerant.0).unwrap();
        assert_eq!((read, rest), (aiko(7), &[][..]));
        let strict = wire::decode_bare::<AccountV1>(&blob(HOMED_TOLERANT_PROTOCOL - 1).0);
        assert_eq!(strict.unwrap(), AccountV1 { balance: 7 });
    }

    /// Forwarded operations: variant tags as `decode_op` expects them; a
    /// V1 operation at a V2 home defaults the field it lacks, a V2
    /// operation at a V1 home drops the one it cannot know, and a V2 put
    /// at a V1 home keeps its new field's bytes.
    #[test]
    fn forwarded_operations_decode_tolerantly() {
        let encode = |op: &HomedOp<AccountV2>| wire::with_bare(op, <[u8]>::to_vec).unwrap();
        let put = encode(&HomedOp::Put(aiko(2)));
        assert_eq!(u32::from(put[0]), PUT_VARIANT);
        let apply = encode(&HomedOp::Apply(DepositV2 {
            amount: 3,
            memo: Some("rent".into()),
        }));
        assert_eq!(u32::from(apply[0]), APPLY_VARIANT);

        let (op, unknown) = decode_op::<AccountV1>(&apply).unwrap();
        assert!(matches!(op, HomedOp::Apply(DepositV1 { amount: 3 })));
        assert_eq!(
            unknown,
            Unknown::default(),
            "an operation's new field dropped"
        );
        let (op, unknown) = decode_op::<AccountV1>(&put).unwrap();
        assert!(matches!(op, HomedOp::Put(AccountV1 { balance: 2 })));
        assert_eq!(unknown.bytes().len(), 6, "a put's new field kept");

        let old_apply = wire::with_bare(
            &HomedOp::<AccountV1>::Apply(DepositV1 { amount: 4 }),
            <[u8]>::to_vec,
        )
        .unwrap();
        let (op, _) = decode_op::<AccountV2>(&old_apply).unwrap();
        assert!(matches!(
            op,
            HomedOp::Apply(DepositV2 {
                amount: 4,
                memo: None
            })
        ));
        for op in [HomedOp::<AccountV2>::Read, HomedOp::Move { to: "x".into() }] {
            let bytes = encode(&op);
            let (decoded, _) = decode_op::<AccountV2>(&bytes).unwrap();
            assert_eq!(encode(&decoded), bytes);
        }
        assert!(decode_op::<AccountV2>(&[9]).is_err(), "no such variant");
    }
}
