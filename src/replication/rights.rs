//! Moving a bounded counter's rights to where demand is, inside the
//! engine. Internal: the public face is
//! [`BoundedTable`](crate::region::BoundedTable).
//!
//! - **Wants.** A sale refused here ([`BoundedTable::try_dec`]), or one
//!   that leaves fewer rights than `rights_request_below_units`, records a
//!   *want* for its key. Nothing waits on it: the sale has already
//!   returned.
//! - **Requests.** On each engine tick, for each want (at most
//!   [`RIGHTS_REQUESTS_PER_TICK_MAX`] requests a tick), the region asks the
//!   connected peer of protocol 3 or later that it believes holds the most
//!   rights to the key (by its own copy of the counter) with a
//!   [`Message::RightsRequest`]. One request per key is outstanding; it is
//!   sent again, to the peer then believed richest (another one than last
//!   time when there is one), once `rights_request_timeout` passes
//!   without rights arriving. A want ends once the rights held here meet
//!   it, or when no peer is believed to hold any.
//! - **Grants.** A peer that receives a request transfers, as a local
//!   write that replicates like any delta, at most half of what it holds
//!   (rounded up, so a last unit moves) and never more than asked, to the
//!   replica bound to the requesting connection. It answers one request
//!   per peer and key within `rights_request_timeout`: a duplicated frame
//!   moves rights once. A request for absurd amounts gets at most half the
//!   granter's rights; one for a table that is not bounded here, a key it
//!   does not hold, or from a peer not yet greeted, gets nothing.
//! - **No churn.** A refill below the threshold (no sale refused) is asked
//!   only of a peer believed to hold at least twice as many rights as here,
//!   plus two, and for half the difference: the sum of squares of the
//!   holdings then falls with every refill, so refills stop.
//!
//! [`BoundedTable::try_dec`]: crate::region::BoundedTable::try_dec

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::time::Duration;

use tokio::time::Instant;

use super::core::{Core, Outgoing};
use super::message::{Blob, Message};
use super::store::{CrdtStore, Key, TableStore};
use crate::clock::ReplicaId;
use crate::crdt::BoundedCounter;
use crate::hash::FastMap;
use crate::region::RejectReason;
use crate::wire;

/// The first engine protocol with rights requests.
pub(crate) const RIGHTS_PROTOCOL: u16 = 3;

/// Most rights requests a region sends in one engine tick.
pub(crate) const RIGHTS_REQUESTS_PER_TICK_MAX: usize = 64;

/// Most keys a region keeps wants for; past it the want recorded last is
/// dropped (the next refused sale of its key records it again).
pub(crate) const RIGHTS_WANTS_MAX: usize = 4096;

/// Most recent grants a region remembers (per peer and key) to answer a
/// duplicated request once; past it the oldest are forgotten.
pub(crate) const RIGHTS_GRANTS_REMEMBERED_MAX: usize = 4096;

/// What the engine needs of one bounded table, whatever its bound: fn
/// pointers instantiated for `BoundedCounter<B>` when it is declared.
#[derive(Clone, Copy)]
pub(crate) struct RightsOps {
    /// The rights each replica holds, as this region knows the key's
    /// counter (`None` when the key is not held).
    holdings: fn(&dyn TableStore, &[u8]) -> Option<Holdings>,
    /// Transfers up to `wanted` rights (at most half of what `from` holds,
    /// rounded up) from `from` to `to` in the stored value; returns the
    /// rights moved and the encoded delta, `None` when none move.
    grant: GrantFn,
}

/// A grant of up to `wanted` rights to one key, from one replica to
/// another, in one table's store: the rights moved and the encoded delta.
type GrantFn = fn(&mut dyn TableStore, &[u8], ReplicaId, ReplicaId, u64) -> Option<(u64, Vec<u8>)>;

impl RightsOps {
    pub(crate) fn of<const B: i64>() -> Self {
        RightsOps {
            holdings: holdings::<B>,
            grant: grant::<B>,
        }
    }
}

/// The rights to one key, as one region knows them.
pub(crate) struct Holdings {
    counter_rights: Vec<(ReplicaId, u64)>,
}

impl Holdings {
    pub(crate) fn of(&self, replica: ReplicaId) -> u64 {
        self.counter_rights
            .iter()
            .find(|(r, _)| *r == replica)
            .map_or(0, |(_, n)| *n)
    }
}

fn holdings<const B: i64>(store: &dyn TableStore, key: &[u8]) -> Option<Holdings> {
    let store = store
        .as_any()
        .downcast_ref::<CrdtStore<BoundedCounter<B>>>()?;
    let counter = store.get(key)?;
    Some(Holdings {
        counter_rights: counter.holders().collect(),
    })
}

fn grant<const B: i64>(
    store: &mut dyn TableStore,
    key: &[u8],
    from: ReplicaId,
    to: ReplicaId,
    wanted: u64,
) -> Option<(u64, Vec<u8>)> {
    let store = store
        .as_any_mut()
        .downcast_mut::<CrdtStore<BoundedCounter<B>>>()?;
    let held = store.get(key)?;
    let own = held.rights(from);
    let n = wanted.min(own.div_ceil(2));
    if n == 0 || from == to {
        return None;
    }
    let mut working = held.clone();
    let delta = working.transfer(from, to, n).ok()?;
    let mut encoded = Vec::new();
    wire::encode_bare_into(&delta, &mut encoded).ok()?;
    store.merge_local(key, &delta);
    debug_assert_eq!(
        store.get(key).map(|c| c.rights(from)),
        Some(own - n),
        "a grant spends exactly what it moves"
    );
    Some((n, encoded))
}

/// What a region still wants of one key's rights.
struct Want {
    /// Rights it would like to hold.
    need: u64,
    /// A sale was refused for want of them (else: a refill below the
    /// threshold, asked only of a much richer peer).
    demand: bool,
    /// The request outstanding, if any.
    asked: Option<Asked>,
    /// When it was recorded: the newest is dropped when over the bound.
    since: Instant,
    /// Where it waits for the next look.
    queued: Queued,
}

/// Where a want waits for [`Core::due_rights_requests`] to look at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queued {
    /// In [`Rights::due`]: looked at on the next tick.
    Due,
    /// In [`Rights::waiting`]: its request is outstanding and its key has
    /// not changed since it left; looked at once the request times out,
    /// at this instant.
    Until(Instant),
    /// Its request is outstanding, never times out (the timeout does not
    /// fit an `Instant`), and its key has not changed since it left.
    Parked,
    /// In [`Rights::no_peer`]: no connected peer could be asked when it
    /// was last looked at; looked at again once a peer is greeted or its
    /// protocol settled ([`Rights::peers_changed`]), or its key changes.
    NoPeer,
}

struct Asked {
    peer: String,
    at: Instant,
    /// The rights held here when it left: more since means it was answered.
    held_then: u64,
}

/// What a tick makes of a want it looks at.
enum Look {
    /// Met, or no one to ask: forgotten.
    Done,
    /// No peer to ask now: looked at again once the peers change.
    Later,
    /// Its request, sent at this instant, is outstanding.
    Outstanding(Instant),
    /// A request to send to this peer.
    Ask(String, Message),
}

/// How many rights to ask of a peer believed to hold `theirs` when `here`
/// are held here: what a refused sale needs, or at least half of theirs;
/// for a refill, half the difference, and only of a peer holding at
/// least twice as many plus two (`None`: do not ask).
fn rights_to_ask(want: &Want, here: u64, theirs: u64) -> Option<u64> {
    if want.demand {
        Some((want.need - here).max(theirs.div_ceil(2)))
    } else if theirs >= here.saturating_mul(2).saturating_add(2) {
        Some((theirs - here) / 2)
    } else {
        None
    }
}

/// The rights bookkeeping of one region.
///
/// Every want is queued in one place (see [`Queued`]): a tick looks only
/// at the wants due, so its cost follows the requests due, not the wants
/// outstanding. A want whose request is outstanding is skipped until it
/// times out or rights arrive, and rights arrive only by a change of its
/// key's value, which [`Rights::key_changed`] hears of: until either, a
/// look would skip it anyway.
#[derive(Default)]
pub(crate) struct Rights {
    /// Bounded tables by slot.
    tables: HashMap<usize, RightsOps>,
    wants: FastMap<(usize, Key), Want>,
    /// Wants to look at on the next tick: never asked, timed out, or whose
    /// key changed since they were asked. Oldest first, then by key: a
    /// deterministic order across runs.
    due: BTreeSet<(Instant, usize, Key)>,
    /// Wants whose request is outstanding, by the instant it times out
    /// (then as `due`).
    waiting: BTreeSet<(Instant, Instant, usize, Key)>,
    /// Wants no connected peer could be asked for (as `due`): they wait
    /// for a peer, not for a tick.
    no_peer: BTreeSet<(Instant, usize, Key)>,
    /// Wants looked at by ticks, in all (for tests of the tick's cost).
    #[cfg(test)]
    examined: u64,
    /// The last grant to each (peer, slot, key).
    granted: HashMap<(String, usize, Key), Instant>,
}

impl Rights {
    /// True when no want is recorded.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.wants.is_empty()
    }

    /// Wants looked at by ticks so far.
    #[cfg(test)]
    pub(crate) fn examined(&self) -> u64 {
        self.examined
    }

    /// The value of `key` in the table in `slot` changed (a local write or
    /// a merge): a want of it whose request is outstanding is looked at on
    /// the next tick, since the rights it asked for may have arrived.
    pub(crate) fn key_changed(&mut self, slot: usize, key: &[u8]) {
        // Every want due (the common case: none recorded), or not a
        // bounded table: nothing to wake.
        if self.wants.len() == self.due.len() || !self.tables.contains_key(&slot) {
            return;
        }
        let id = (slot, Key::from(key));
        let Some(want) = self.wants.get_mut(&id) else {
            return;
        };
        let since = want.since;
        match std::mem::replace(&mut want.queued, Queued::Due) {
            Queued::Due => return,
            Queued::Until(at) => {
                let probe = (at, since, id.0, id.1);
                let taken = self.waiting.take(&probe);
                debug_assert!(
                    taken.is_some(),
                    "a want queued until an instant is in `waiting`"
                );
                let (_, since, slot, key) = taken.unwrap_or(probe);
                self.due.insert((since, slot, key));
            }
            Queued::Parked => {
                let (slot, key) = id;
                self.due.insert((since, slot, key));
            }
            Queued::NoPeer => {
                let (slot, key) = id;
                let removed = self.no_peer.remove(&(since, slot, key.clone()));
                debug_assert!(removed, "a want waiting for a peer is in `no_peer`");
                self.due.insert((since, slot, key));
            }
        }
        self.check_queues();
    }

    /// A peer was greeted or its protocol settled: the wants that had no
    /// peer to ask are looked at on the next tick.
    pub(crate) fn peers_changed(&mut self) {
        if self.no_peer.is_empty() {
            return;
        }
        for (since, slot, key) in std::mem::take(&mut self.no_peer) {
            if let Some(want) = self.wants.get_mut(&(slot, key.clone())) {
                want.queued = Queued::Due;
            }
            self.due.insert((since, slot, key));
        }
        self.check_queues();
    }

    /// Takes the want `id` (recorded at `since`) out of `due`: no peer
    /// could be asked, so it waits for one (see [`Queued::NoPeer`]).
    fn wait_for_peer(&mut self, id: &(usize, Key), since: Instant) {
        let Some(want) = self.wants.get_mut(id) else {
            return;
        };
        let (slot, key) = (id.0, id.1.clone());
        let removed = self.due.remove(&(since, slot, key.clone()));
        debug_assert!(removed, "only a due want is looked at");
        want.queued = Queued::NoPeer;
        self.no_peer.insert((since, slot, key));
        self.check_queues();
    }

    /// Moves the wants whose request timed out by `now` to `due`.
    fn promote_timed_out(&mut self, now: Instant) {
        while let Some(first) = self.waiting.first()
            && first.0 <= now
        {
            let (_, since, slot, key) = self.waiting.pop_first().expect("just seen");
            if let Some(want) = self.wants.get_mut(&(slot, key.clone())) {
                want.queued = Queued::Due;
            }
            self.due.insert((since, slot, key));
        }
    }

    /// Takes the want `id` (recorded at `since`) out of `due`: asked at
    /// `at` and waiting for an answer until `timeout` passes.
    fn wait_for_answer(
        &mut self,
        id: &(usize, Key),
        since: Instant,
        at: Instant,
        timeout: Duration,
    ) {
        let Some(want) = self.wants.get_mut(id) else {
            return;
        };
        if timeout.is_zero() {
            // Every tick may ask again: stays due.
            return;
        }
        let (slot, key) = (id.0, id.1.clone());
        let removed = self.due.remove(&(since, slot, key.clone()));
        debug_assert!(removed, "only a due want is asked");
        match at.checked_add(timeout) {
            Some(until) => {
                want.queued = Queued::Until(until);
                self.waiting.insert((until, since, slot, key));
            }
            None => want.queued = Queued::Parked,
        }
    }

    /// Forgets the want `id`, wherever it is queued.
    fn remove_want(&mut self, id: &(usize, Key)) {
        let Some(want) = self.wants.remove(id) else {
            return;
        };
        let (slot, key) = (id.0, id.1.clone());
        match want.queued {
            Queued::Due => {
                self.due.remove(&(want.since, slot, key));
            }
            Queued::Until(at) => {
                self.waiting.remove(&(at, want.since, slot, key));
            }
            Queued::NoPeer => {
                self.no_peer.remove(&(want.since, slot, key));
            }
            Queued::Parked => {}
        }
        self.check_queues();
    }

    /// Every want is queued once at most: `due`, `waiting` and `no_peer`
    /// together never hold more than the wants.
    fn check_queues(&self) {
        debug_assert!(
            self.due.len() + self.waiting.len() + self.no_peer.len() <= self.wants.len(),
            "a want is queued in one place"
        );
    }
}

impl Core {
    /// Registers the table in `slot` as a bounded table of bound `B`.
    pub(crate) fn declare_bounded<const B: i64>(&mut self, slot: usize) {
        self.rights.tables.insert(slot, RightsOps::of::<B>());
    }

    /// Records that this region wants to hold `need` rights to `key` of the
    /// bounded table in `slot` (`demand`: a sale was refused).
    pub(crate) fn want_rights(
        &mut self,
        slot: usize,
        key: &[u8],
        need: u64,
        demand: bool,
        now: Instant,
    ) {
        if !self.replicating || need == 0 || !self.rights.tables.contains_key(&slot) {
            return;
        }
        let wants = &mut self.rights.wants;
        if let Some(want) = wants.get_mut(&(slot, Box::from(key))) {
            want.need = want.need.max(need);
            want.demand |= demand;
            return;
        }
        if wants.len() >= RIGHTS_WANTS_MAX {
            tracing::debug!(region = %self.name, "rights: too many keys wanted; a want is dropped");
            return;
        }
        wants.insert(
            (slot, key.into()),
            Want {
                need,
                demand,
                asked: None,
                since: now,
                queued: Queued::Due,
            },
        );
        self.rights.due.insert((now, slot, key.into()));
        self.rights.check_queues();
    }

    /// The rights requests due now: wants not yet asked for, or whose
    /// request timed out (or was answered with too little), at most
    /// [`RIGHTS_REQUESTS_PER_TICK_MAX`]. Only the wants due are looked at
    /// (see [`Rights`]).
    pub(crate) fn due_rights_requests(&mut self, now: Instant) -> Outgoing {
        if self.rights.wants.is_empty() {
            return Vec::new();
        }
        let timeout = self.config.rights_request_timeout;
        self.rights.promote_timed_out(now);
        let mut out = Vec::new();
        let mut next = self.rights.due.first().cloned();
        while let Some(entry) = next {
            if out.len() >= RIGHTS_REQUESTS_PER_TICK_MAX {
                break;
            }
            next = (self.rights.due)
                .range((Excluded(&entry), Unbounded))
                .next()
                .cloned();
            let (since, slot, key) = entry;
            let id = (slot, key);
            #[cfg(test)]
            {
                self.rights.examined += 1;
            }
            match self.look_at_want(&id, now) {
                Look::Done => self.rights.remove_want(&id),
                Look::Later => self.rights.wait_for_peer(&id, since),
                Look::Outstanding(at) => self.rights.wait_for_answer(&id, since, at, timeout),
                Look::Ask(peer, request) => {
                    out.push((peer, request));
                    self.rights.wait_for_answer(&id, since, now, timeout);
                }
            }
        }
        out
    }

    /// What to do now with the want `id`, which is due: a request to
    /// send (recorded as outstanding), or why none.
    fn look_at_want(&mut self, id: &(usize, Key), now: Instant) -> Look {
        let timeout = self.config.rights_request_timeout;
        let (slot, key) = id;
        let Some(ops) = self.rights.tables.get(slot).copied() else {
            return Look::Done;
        };
        let holdings = (ops.holdings)(&*self.tables[*slot].store, key);
        let Some(holdings) = holdings else {
            // Nothing known of the key: no one to ask.
            return Look::Done;
        };
        let here = holdings.of(self.replica);
        let want = &self.rights.wants[id];
        if here >= want.need {
            return Look::Done;
        }
        let answered = want.asked.as_ref().is_some_and(|a| here > a.held_then);
        if let Some(asked) = &want.asked
            && !answered
            && now.duration_since(asked.at) < timeout
        {
            return Look::Outstanding(asked.at);
        }
        let last_asked = want.asked.as_ref().map(|a| a.peer.clone());
        let Some((peer, theirs)) = self.richest_peer(&holdings, last_asked.as_deref()) else {
            if holdings
                .counter_rights
                .iter()
                .all(|&(r, n)| r == self.replica || n == 0)
            {
                // No one holds any: sold out, as far as we know.
                return Look::Done;
            }
            return Look::Later;
        };
        let want = &self.rights.wants[id];
        let Some(wanted) = rights_to_ask(want, here, theirs) else {
            // A refill, and no peer much richer: stop asking.
            return Look::Done;
        };
        let Some(table) = self.tables.get(*slot).map(|s| s.name.to_string()) else {
            return Look::Done;
        };
        tracing::debug!(
            region = %self.name,
            %peer,
            %table,
            wanted,
            held_here = here,
            held_there = theirs,
            demand = want.demand,
            "rights: requested"
        );
        self.counters.rights_requested += 1;
        let want = self.rights.wants.get_mut(id).expect("listed");
        want.asked = Some(Asked {
            peer: peer.clone(),
            at: now,
            held_then: here,
        });
        let request = Message::RightsRequest {
            table,
            key: Blob(key.to_vec()),
            wanted,
        };
        Look::Ask(peer, request)
    }

    /// The connected peer of protocol 3 or later believed to hold the most
    /// rights (some), another one than `skip` when there is one; with
    /// those rights.
    fn richest_peer(&self, holdings: &Holdings, skip: Option<&str>) -> Option<(String, u64)> {
        let candidates: Vec<(&String, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.connected
                    && p.greeted
                    && p.refused.is_none()
                    && p.protocol_refused.is_none()
                    && p.protocol >= RIGHTS_PROTOCOL
            })
            .filter_map(|(name, p)| Some((name, holdings.of(p.replica?))))
            .filter(|(_, n)| *n > 0)
            .collect();
        let best = |skip: Option<&str>| {
            candidates
                .iter()
                .filter(|(name, _)| Some(name.as_str()) != skip)
                // Most rights; ties to the first name.
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(name, n)| ((*name).clone(), *n))
        };
        best(skip).or_else(|| best(None))
    }

    /// A peer asks for rights: grants at most half of what this region
    /// holds (rounded up), never more than asked, as a local write.
    pub(crate) fn on_rights_request(
        &mut self,
        from: &str,
        table: &str,
        key: &[u8],
        wanted: u64,
        now: Instant,
    ) {
        if self.config.protocol_version_max < RIGHTS_PROTOCOL {
            // As a build of protocol 2: a frame it cannot read.
            self.reject(
                from,
                RejectReason::Protocol,
                "unknown message (protocol 2 has no rights requests)",
            );
            return;
        }
        let Some(peer) = self.peers.get(from) else {
            return;
        };
        // A peer whose announcement we missed shows by this frame that it
        // speaks protocol 3 (we do): read it.
        if peer.speaks_below(RIGHTS_PROTOCOL, self.config.protocol_version_max) {
            let why = format!(
                "a rights request on a connection of protocol {}",
                peer.protocol
            );
            self.reject(from, RejectReason::Protocol, &why);
            return;
        }
        let refuse = |core: &mut Core, why: &str| {
            core.counters.rights_refused += 1;
            tracing::debug!(region = %core.name, peer = from, table, wanted, why, "rights: request refused");
        };
        let Some(to) = peer.replica else {
            return refuse(self, "the peer's replica is not known yet");
        };
        let Some(slot) = self.slot_of(table) else {
            return refuse(self, "no such table here");
        };
        let Some(ops) = self.rights.tables.get(&slot).copied() else {
            return refuse(self, "not a bounded table here");
        };
        let timeout = self.config.rights_request_timeout;
        let id = (from.to_owned(), slot, Box::<[u8]>::from(key));
        if self
            .rights
            .granted
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < timeout)
        {
            return refuse(self, "answered within the request timeout already");
        }
        let Some((n, delta)) =
            (ops.grant)(&mut *self.tables[slot].store, key, self.replica, to, wanted)
        else {
            return refuse(self, "no rights held here");
        };
        self.record_write(slot, key, &delta);
        self.counters.rights_granted += n;
        tracing::info!(region = %self.name, peer = from, table, granted = n, wanted, "rights: granted");
        let granted = &mut self.rights.granted;
        if granted.len() >= RIGHTS_GRANTS_REMEMBERED_MAX {
            granted.retain(|_, at| now.duration_since(*at) < timeout);
            if granted.len() >= RIGHTS_GRANTS_REMEMBERED_MAX {
                granted.clear();
            }
        }
        granted.insert(id, now);
    }
}
