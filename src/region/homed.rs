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
//! - **Not yet.** Moving a key's home (a planned handoff at a higher
//!   epoch, fenced) and operator failover when a home is lost are the next
//!   step: today a home that is down makes its keys unwritable until it is
//!   back, and readable only locally.

use std::any::Any;
use std::borrow::Borrow;
use std::collections::HashMap;

use serde::Deserialize;

use super::*;
use crate::clock::Dot;
use crate::replication::homed::{Answer, HomedOps};
use crate::replication::message::{Blob, HomedOutcome};

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

/// A value type of a homed table: what its operations are, and how its
/// home applies them.
///
/// [`apply`](HomedValue::apply) runs at the key's home only, on a copy of
/// the value (the type's default for an absent key), under the home's
/// state lock: keep it short and deterministic, and do not call back into
/// the region from it. A rejection (or a panic) changes nothing, whatever
/// `apply` did to the copy before. Operations and rejections travel
/// between regions through [`wire`]: every region must declare the table
/// with the same types.
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
}

impl HomedRefusal {
    /// Bytes it holds, for the home's bounded memory of replies.
    pub(crate) fn size(&self) -> usize {
        match self {
            HomedRefusal::NotHome { home } => 16 + home.as_ref().map_or(0, String::len),
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
}

/// A read at the key's home.
#[derive(Clone, Debug)]
pub struct HomedRead<V> {
    /// The value at the home (`None`: never written).
    pub value: Option<V>,
    /// The home's token for the key's last write (empty when none).
    pub token: SessionToken,
}

/// What a homed table's stored value says of its writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomedMeta {
    /// The epoch of the home that wrote it (0 until homes can move).
    pub epoch: u64,
    /// The region that wrote it: the key's home in that epoch.
    pub home: String,
    /// Writes to the key in that epoch, this one included.
    pub version: u64,
    /// The dot of the write at the home.
    pub written: Option<Dot>,
}

/// A homed table's stored value: the value and its writer. A join on a
/// total order (epoch, version, write), so every region converges on the
/// latest write of the latest epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HomedState<V> {
    epoch: u64,
    home: String,
    version: u64,
    written: Option<Dot>,
    value: V,
}

impl<V: Default> Default for HomedState<V> {
    fn default() -> Self {
        HomedState {
            epoch: 0,
            home: String::new(),
            version: 0,
            written: None,
            value: V::default(),
        }
    }
}

impl<V> HomedState<V> {
    fn rank(&self) -> (u64, u64, Option<Dot>) {
        (self.epoch, self.version, self.written)
    }
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
}

/// What an operation came to at the home.
enum Applied<V: HomedValue> {
    Wrote {
        dot: Dot,
        value: V,
    },
    Read {
        written: Option<Dot>,
        value: Option<V>,
    },
    Rejected(V::Rejection),
    Panicked(Box<dyn Any + Send>),
}

/// Applies `op` to `key` of the homed table in `slot`, as the key's home:
/// a local write (one dot) unless it is a read or refused.
fn apply_at_home<V: HomedValue>(
    core: &mut Core,
    slot: usize,
    key: &[u8],
    op: HomedOp<V>,
) -> Result<Applied<V>, RegionError> {
    let store = core
        .store::<CrdtStore<HomedState<V>>>(slot)
        .expect("declared as a homed table of V");
    let current = store.get(key);
    let value = match op {
        HomedOp::Read => {
            return Ok(Applied::Read {
                written: current.and_then(|s| s.written),
                value: current.map(|s| s.value.clone()),
            });
        }
        HomedOp::Put(value) => value,
        HomedOp::Apply(op) => {
            let mut value = current.map(|s| s.value.clone()).unwrap_or_default();
            let applied =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.apply(op)));
            match applied {
                Ok(Ok(())) => value,
                Ok(Err(rejection)) => return Ok(Applied::Rejected(rejection)),
                Err(panic) => return Ok(Applied::Panicked(panic)),
            }
        }
    };
    let (epoch, version) = current.map_or((0, 0), |s| (s.epoch, s.version));
    let dot = Dot::new(core.replica, core.seq + 1);
    let delta = HomedState {
        epoch,
        home: core.name.clone(),
        version: version + 1,
        written: Some(dot),
        value,
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
    })
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
    fn home_of(&self, key: &[u8]) -> Result<Option<String>, WireError> {
        self.placement.home_of_bytes(key)
    }

    fn serve(&self, core: &mut Core, slot: usize, key: &[u8], op: &[u8]) -> (HomedOutcome, bool) {
        let codec = (HomedOutcome::Refused(HomedRefusal::Codec), false);
        let Ok(op) = wire::decode_bare::<HomedOp<V>>(op) else {
            return codec;
        };
        let read = matches!(op, HomedOp::Read);
        let encode = |v: &V| wire::with_bare(v, |b| Blob(b.to_vec())).ok();
        let outcome = match apply_at_home(core, slot, key, op) {
            Ok(Applied::Wrote { dot, value }) => HomedOutcome::Done {
                written: Some(dot),
                value: Some(encode(&value).unwrap_or_default()),
            },
            Ok(Applied::Read { written, value }) => match value.as_ref().map(encode) {
                Some(None) => return codec,
                encoded => HomedOutcome::Done {
                    written,
                    value: encoded.flatten(),
                },
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

    /// Applies `op` here, as the key's home: under the state's lock, like
    /// a local write.
    fn apply_homed<V: HomedValue>(
        &self,
        slot: usize,
        key: &[u8],
        op: HomedOp<V>,
    ) -> Result<Applied<V>, RegionError> {
        let mut core = self.core()?;
        if !matches!(op, HomedOp::Read) && self.inner.closed.load(Ordering::Acquire) {
            return Err(RegionError::Closed);
        }
        let applied = apply_at_home(&mut core, slot, key, op)?;
        if let Applied::Panicked(panic) = applied {
            // The caller's value type panicked: its panic, after the lock.
            drop(core);
            std::panic::resume_unwind(panic);
        }
        Ok(applied)
    }

    /// Forwards the encoded `op` on `key` of `table` to `home` and waits,
    /// up to `homed_forward_timeout`, for its answer.
    async fn forward_homed(
        &self,
        table: &str,
        home: &str,
        key: Vec<u8>,
        op: Vec<u8>,
    ) -> Result<HomedOutcome, RegionError> {
        let started = Instant::now();
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
            core.forward(home, table, key, op, reply)?
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
}

/// What an operation came to, in the caller's types.
enum Outcome<V: HomedValue> {
    Done {
        written: Option<Dot>,
        value: Option<V>,
    },
    Rejected(V::Rejection),
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

    /// The home of `key` by the table's placement.
    ///
    /// # Errors
    /// [`RegionError::NoHome`] when the placement names none;
    /// [`RegionError::Encode`] when the key cannot be encoded.
    pub fn home_of<Q>(&self, key: &Q) -> Result<String, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.placement
            .home_of(key)?
            .ok_or_else(|| RegionError::NoHome {
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
            (home, _) => Err(self.refused(&home, HomedRefusal::Codec)),
        }
    }

    /// Applies `op` to the value under `key` (the default value when
    /// absent), at its home: here at once when this region is the home,
    /// else forwarded to it and waited for, up to
    /// `homed_forward_timeout`. Returns the home's token for the write and
    /// the value after it.
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
        let (home, outcome) = self.execute(key, HomedOp::Apply(op)).await?;
        match outcome {
            Outcome::Done {
                written: Some(dot),
                value: Some(value),
            } => Ok(HomedWrite {
                token: SessionToken::from_dot(dot),
                value,
            }),
            Outcome::Done { .. } => Err(self.refused(&home, HomedRefusal::Codec).into()),
            Outcome::Rejected(rejection) => Err(HomedError::Rejected { home, rejection }),
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
    /// to `homed_forward_timeout`.
    ///
    /// # Errors
    /// As [`apply`](HomedTable::apply), but for rejections.
    pub async fn read_at_home<Q>(&self, key: &Q) -> Result<HomedRead<V>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        match self.execute(key, HomedOp::Read).await? {
            (_, Outcome::Done { written, value }) => Ok(HomedRead {
                value,
                token: written.map(SessionToken::from_dot).unwrap_or_default(),
            }),
            // A read is never rejected: a home that says otherwise does not
            // speak our types.
            (home, Outcome::Rejected(_)) => Err(self.refused(&home, HomedRefusal::Codec)),
        }
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

    /// Carries out `op` on `key` at its home (here, or forwarded): the
    /// home, and what `op` came to there.
    async fn execute<Q>(&self, key: &Q, op: HomedOp<V>) -> Result<(String, Outcome<V>), RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let region = &self.table.region;
        let key = wire::with_bare(key, <[u8]>::to_vec).map_err(RegionError::Encode)?;
        let home = self
            .placement
            .home_of_bytes(&key)
            .map_err(RegionError::Encode)?
            .ok_or_else(|| RegionError::NoHome {
                table: self.name().to_owned(),
            })?;
        if home == region.name() {
            let outcome = match region.apply_homed::<V>(self.table.slot, &key, op)? {
                Applied::Wrote { dot, value } => {
                    if region.inner.durable {
                        region.wait_committed(dot.counter).await?;
                    }
                    Outcome::Done {
                        written: Some(dot),
                        value: Some(value),
                    }
                }
                Applied::Read { written, value } => Outcome::Done { written, value },
                Applied::Rejected(rejection) => Outcome::Rejected(rejection),
                Applied::Panicked(_) => unreachable!("apply_homed resumes the panic"),
            };
            return Ok((home, outcome));
        }
        let op = wire::with_bare(&op, <[u8]>::to_vec).map_err(RegionError::Encode)?;
        let outcome = region.forward_homed(self.name(), &home, key, op).await?;
        let codec = || self.refused(&home, HomedRefusal::Codec);
        let outcome = match outcome {
            HomedOutcome::Done { written, value } => {
                let value = match value {
                    Some(bytes) => Some(wire::decode_bare::<V>(&bytes.0).map_err(|_| codec())?),
                    None => None,
                };
                Outcome::Done { written, value }
            }
            HomedOutcome::Rejected { rejection } => {
                let rejection =
                    wire::decode_bare::<V::Rejection>(&rejection.0).map_err(|_| codec())?;
                Outcome::Rejected(rejection)
            }
            HomedOutcome::Refused(refusal) => return Err(self.refused(&home, refusal)),
        };
        Ok((home, outcome))
    }
}
