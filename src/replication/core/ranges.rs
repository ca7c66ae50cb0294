//! Anti-entropy by ranges (protocol 6 on): the two sides reconcile each
//! table by fingerprints of key ranges (see
//! [`reconcile`](crate::replication::reconcile)), so what crosses grows
//! with the difference, not the table; then the answering side ships the
//! states of the keys it learned the starter lacks, and the exchange goes
//! on as by buckets (the starter merges, pushes back what it learned the
//! peer lacks, the peer confirms): the transfers, their vectors and what
//! those are believed are [`anti_entropy`](super::anti_entropy)'s.
//!
//! An exchange: the starter sends round 0, one frame per table it holds
//! ([`Message::SyncRanges`]); each side answers the frames of the tables
//! not yet settled; once the answering side has nothing left to say for
//! any table, it ships its transfer instead of a frame. Each side ships
//! what it learned to send, and the keys written on its side since the
//! exchange began (its transfer's vector covers them), and every key of a
//! table the other did not list.
//!
//! A range index is brought up to date (see
//! [`TableStore::catch_up_index`]) when an exchange reads it, never by a
//! write; the keys that changed in it go to every exchange by ranges in
//! progress.

use super::anti_entropy::{Selection, TableKeys};
use super::*;
use crate::replication::reconcile::{EXCHANGE_MESSAGES_MAX, Exchange, ReconcileError};
use crate::replication::store::{EMPTY_INDEX, Key};

/// The first protocol whose exchanges reconcile by ranges: with a peer of
/// an older one, anti-entropy compares bucket digests.
pub(crate) const RANGES_PROTOCOL: u16 = 6;

/// Tables one exchange by ranges reconciles at most: a table's frame is
/// at most about 2.5 MiB (bounds, item lists and ranges, see
/// [`reconcile`](crate::replication::reconcile)), so a message of 16 stays
/// well within the frame limit. A region with more tables exchanges by
/// buckets; a message naming more is refused.
pub(crate) const RANGE_TABLES_MAX: usize = 16;

/// Messages one exchange by ranges takes at most, both sides together:
/// each side's reconciliation of a table ends within
/// [`EXCHANGE_MESSAGES_MAX`] messages received.
pub(crate) const RANGE_ROUNDS_MAX: u32 = 2 * EXCHANGE_MESSAGES_MAX + 2;

/// One side of an exchange by ranges.
pub(crate) struct RangeSession {
    session: u64,
    /// Every table the starter listed, with our side of its
    /// reconciliation.
    tables: Vec<(String, Exchange)>,
    /// Per table, the keys whose items changed in our index since the
    /// exchange began: shipped too, since our transfer's vector covers
    /// them.
    changed: HashMap<String, HashSet<Key>>,
    /// The round the peer's next message carries.
    next_round: u32,
    /// When the peer's last message came (the answering side expires by
    /// it).
    at: Instant,
}

impl RangeSession {
    fn new(session: u64, tables: Vec<(String, Exchange)>, next_round: u32, at: Instant) -> Self {
        RangeSession {
            session,
            tables,
            changed: HashMap::new(),
            next_round,
            at,
        }
    }

    /// Notes keys changed in our indexes (of the tables it reconciles).
    fn note(&mut self, changed: &[(String, Vec<Key>)]) {
        for (table, keys) in changed {
            if self.tables.iter().any(|(t, _)| t == table) {
                let set = self.changed.entry(table.clone()).or_default();
                set.extend(keys.iter().cloned());
            }
        }
    }

    /// Whether every table's reconciliation is over on our side.
    fn finished(&self) -> bool {
        self.tables
            .iter()
            .all(|(_, exchange)| exchange.is_finished())
    }
}

/// The reason a refused reconciliation frame is counted under.
fn reason_of(error: &ReconcileError) -> RejectReason {
    match error {
        ReconcileError::Undecodable(_) => RejectReason::Undecodable,
        ReconcileError::TooManyRanges { .. }
        | ReconcileError::TooManyItems { .. }
        | ReconcileError::TooManyMessages
        | ReconcileError::Unencodable(_) => RejectReason::OverLimit,
        ReconcileError::BoundsOutOfOrder { .. } | ReconcileError::Finished => {
            RejectReason::Malformed
        }
    }
}

/// Answers the peer's `frames` from our tables' indexes (an undeclared
/// table's is empty): the replies of the tables still open. Refuses a
/// message naming a table twice or one the exchange does not reconcile,
/// and any frame the reconciliation refuses.
fn answer_frames(
    tables: &[TableSlot],
    slots: &FastMap<Arc<str>, usize>,
    range: &mut RangeSession,
    frames: Vec<(String, Blob)>,
) -> Result<Vec<(String, Blob)>, (RejectReason, String)> {
    let mut seen: HashSet<&str> = HashSet::new();
    if let Some((table, _)) = frames.iter().find(|(t, _)| !seen.insert(t)) {
        let why = format!("sync ranges naming table {table} twice");
        return Err((RejectReason::Malformed, why));
    }
    let mut replies = Vec::new();
    for (table, frame) in &frames {
        let Some((_, exchange)) = range.tables.iter_mut().find(|(t, _)| t == table) else {
            let why = format!("sync ranges for table {table}, which the exchange does not hold");
            return Err((RejectReason::Malformed, why));
        };
        let index = slots
            .get(table.as_str())
            .map_or(&*EMPTY_INDEX, |&slot| tables[slot].store.range_index());
        match exchange.on_frame(index, &frame.0) {
            Ok(Some(reply)) => replies.push((table.clone(), Blob(reply))),
            Ok(None) => {}
            Err(error) => {
                let why = format!("reconciliation of table {table}: {error}");
                return Err((reason_of(&error), why));
            }
        }
    }
    Ok(replies)
}

impl Core {
    /// Whether an exchange with `peer` goes by ranges: both speak protocol
    /// 6, and we hold at most [`RANGE_TABLES_MAX`] tables.
    pub(super) fn syncs_by_ranges(&self, peer: &str) -> bool {
        self.config.protocol_version_max >= RANGES_PROTOCOL
            && self
                .peers
                .get(peer)
                .is_some_and(|p| p.protocol >= RANGES_PROTOCOL)
            && self.tables.len() <= RANGE_TABLES_MAX
    }

    /// Brings every table's range index up to date. The keys that changed
    /// in them go to every exchange by ranges in progress (started or
    /// answered), and are returned per table for an exchange held apart.
    pub(super) fn catch_up_indexes(&mut self) -> Vec<(String, Vec<Key>)> {
        let mut all = Vec::new();
        for slot in &mut self.tables {
            match slot.store.catch_up_index() {
                Ok(changed) if changed.is_empty() => {}
                Ok(changed) => all.push((slot.name.to_string(), changed)),
                Err(error) => {
                    tracing::warn!(region = %self.name, table = %slot.name, %error, "anti-entropy: the range index is full; its exchanges miss keys");
                }
            }
        }
        if !all.is_empty() {
            let started = self.syncs.values_mut().filter_map(|s| s.ranges.as_mut());
            for range in started.chain(self.answering.values_mut()) {
                range.note(&all);
            }
        }
        all
    }

    /// Starts the exchange `session` with `peer` by ranges: the first
    /// frame of each table. `None` when a frame cannot be encoded (a key
    /// past the frame limit): the exchange goes by buckets then.
    pub(super) fn start_range_sync(
        &mut self,
        peer: &str,
        session: u64,
        now: Instant,
    ) -> Option<Outgoing> {
        self.catch_up_indexes();
        let mut tables = Vec::with_capacity(self.tables.len());
        let mut frames = Vec::with_capacity(self.tables.len());
        for slot in &self.tables {
            let (exchange, frame) = Exchange::initiate(slot.store.range_index()).ok()?;
            tables.push((slot.name.to_string(), exchange));
            frames.push((slot.name.to_string(), Blob(frame)));
        }
        let ranges = Some(RangeSession::new(session, tables, 1, now));
        let state = SyncState {
            session,
            digests: Vec::new(),
            ranges,
        };
        self.syncs.insert(peer.to_owned(), state);
        self.peer(peer, now).last_sync = Some(now);
        tracing::debug!(region = %self.name, peer, session, tables = frames.len(), "anti-entropy: range fingerprints sent");
        let message = Message::SyncRanges {
            session,
            reply: false,
            round: 0,
            frames,
        };
        Some(vec![(peer.to_owned(), message)])
    }

    /// A reconciliation message of `from`: for our exchange (`reply`) or
    /// one we answer.
    pub(super) fn on_sync_ranges(
        &mut self,
        from: &str,
        message: Message,
        now: Instant,
    ) -> Outgoing {
        let Message::SyncRanges {
            session,
            reply,
            round,
            frames,
        } = message
        else {
            debug_assert!(false, "only sync ranges come here");
            return Vec::new();
        };
        if !self.ranges_allowed(from) {
            return Vec::new();
        }
        if frames.len() > RANGE_TABLES_MAX || round > RANGE_ROUNDS_MAX {
            let why = format!(
                "sync ranges of {} tables at round {round} (at most {RANGE_TABLES_MAX} tables, {RANGE_ROUNDS_MAX} rounds)",
                frames.len()
            );
            self.abort_range_sync(from, session, reply);
            self.reject(from, RejectReason::OverLimit, &why);
            return Vec::new();
        }
        if reply {
            self.on_range_reply(from, session, round, frames, now)
        } else {
            self.on_range_request(from, session, round, frames, now)
        }
    }

    /// Checks that a reconciliation message may come from `from`: this
    /// build and the connection speak protocol 6. Rejects the frame
    /// otherwise.
    fn ranges_allowed(&mut self, from: &str) -> bool {
        let ours = self.config.protocol_version_max;
        let below = ours < RANGES_PROTOCOL
            || self
                .peers
                .get(from)
                .is_none_or(|p| p.speaks_below(RANGES_PROTOCOL, ours));
        if below {
            let why = "sync ranges on a connection of protocol 5 or older";
            self.reject(from, RejectReason::Protocol, why);
        }
        !below
    }

    /// Forgets our side of the exchange `session` by ranges with `from`
    /// (ours when `reply`; the peer stays due for repair).
    fn abort_range_sync(&mut self, from: &str, session: u64, reply: bool) {
        if reply {
            if self.syncs.get(from).is_some_and(|s| s.session == session) {
                self.abort_sync(from, false);
            }
        } else if self
            .answering
            .get(from)
            .is_some_and(|r| r.session == session)
        {
            self.answering.remove(from);
        }
    }

    /// The peer's answer in our exchange: our next frames (or nothing: its
    /// transfer is on its way).
    fn on_range_reply(
        &mut self,
        from: &str,
        session: u64,
        round: u32,
        frames: Vec<(String, Blob)>,
        now: Instant,
    ) -> Outgoing {
        let expected = self
            .syncs
            .get(from)
            .filter(|s| s.session == session)
            .and_then(|s| s.ranges.as_ref())
            .is_some_and(|r| r.next_round == round);
        if !expected {
            tracing::debug!(region = %self.name, peer = from, session, round, "anti-entropy: ignored sync ranges out of turn");
            return Vec::new();
        }
        self.peer(from, now).last_sync = Some(now);
        self.catch_up_indexes();
        let sync = self.syncs.get_mut(from).expect("checked above");
        let range = sync.ranges.as_mut().expect("checked above");
        range.next_round = round + 2;
        range.at = now;
        match answer_frames(&self.tables, &self.table_slots, range, frames) {
            Err((reason, why)) => {
                self.abort_sync(from, false);
                self.reject(from, reason, &why);
                Vec::new()
            }
            Ok(replies) if replies.is_empty() => Vec::new(),
            Ok(replies) => vec![(
                from.to_owned(),
                Message::SyncRanges {
                    session,
                    reply: false,
                    round: round + 1,
                    frames: replies,
                },
            )],
        }
    }

    /// The starter's message in an exchange we answer: our next frames, or
    /// our transfer once every table is settled.
    fn on_range_request(
        &mut self,
        from: &str,
        session: u64,
        round: u32,
        frames: Vec<(String, Blob)>,
        now: Instant,
    ) -> Outgoing {
        match self.answering.get(from) {
            Some(range) if range.session == session && range.next_round == round => {}
            Some(range) if range.session >= session => {
                tracing::debug!(region = %self.name, peer = from, session, round, "anti-entropy: ignored sync ranges out of turn");
                return Vec::new();
            }
            _ => {
                if round != 0 || self.answered_last.get(from).is_some_and(|&l| session <= l) {
                    tracing::debug!(region = %self.name, peer = from, session, round, "anti-entropy: ignored a repeated or stale exchange");
                    return Vec::new();
                }
                // Changes from here on count: catch up before the session.
                self.catch_up_indexes();
                let tables = frames
                    .iter()
                    .map(|(t, _)| (t.clone(), Exchange::respond()))
                    .collect();
                let range = RangeSession::new(session, tables, 0, now);
                self.answering.insert(from.to_owned(), range);
            }
        }
        self.catch_up_indexes();
        let mut range = self.answering.remove(from).expect("present above");
        range.next_round = round + 2;
        range.at = now;
        let replies = match answer_frames(&self.tables, &self.table_slots, &mut range, frames) {
            Ok(replies) => replies,
            Err((reason, why)) => {
                self.reject(from, reason, &why);
                return Vec::new();
            }
        };
        if range.finished() {
            return self.ship_by_ranges(from, range);
        }
        if replies.is_empty() {
            let why = "sync ranges leaving open tables unanswered";
            self.reject(from, RejectReason::Malformed, why);
            return Vec::new();
        }
        self.answering.insert(from.to_owned(), range);
        let message = Message::SyncRanges {
            session,
            reply: true,
            round: round + 1,
            frames: replies,
        };
        vec![(from.to_owned(), message)]
    }

    /// Every table of the exchange we answered is settled: ships what the
    /// starter lacks, with our vector, as a reply by buckets would.
    fn ship_by_ranges(&mut self, from: &str, range: RangeSession) -> Outgoing {
        let session = range.session;
        let selection = self.range_selection(&range, &[]);
        // A new exchange supersedes the one we answered before: drop what
        // we held of its push.
        if let Some(old) = self.answered.insert(from.to_owned(), session)
            && old != session
        {
            self.sync_inbox.remove(&(from.to_owned(), old, true));
        }
        self.answered_last.insert(from.to_owned(), session);
        tracing::debug!(region = %self.name, peer = from, session, rounds = range.next_round - 1, "anti-entropy: ranges reconciled; shipping");
        let applied = self.transfer_claims();
        self.shipped_transfer(from, &applied);
        self.states_chunks(from, session, false, selection, applied, &HashSet::new())
    }

    /// What our side of `range` ships: of each table it reconciled, the
    /// keys it learned to send and those changed since it began (in it or
    /// in `changed`); every key of a table it does not hold.
    pub(super) fn range_selection(
        &self,
        range: &RangeSession,
        changed: &[(String, Vec<Key>)],
    ) -> Selection {
        let mut selection = Vec::new();
        for slot in &self.tables {
            let name = &*slot.name;
            let Some((_, exchange)) = range.tables.iter().find(|(t, _)| t == name) else {
                selection.push((name.to_owned(), TableKeys::All));
                continue;
            };
            let mut keys: HashSet<&Key> = exchange.learned().send.iter().collect();
            keys.extend(range.changed.get(name).into_iter().flatten());
            let later = changed.iter().filter(|(t, _)| t == name);
            keys.extend(later.flat_map(|(_, k)| k));
            if !keys.is_empty() {
                let keys = keys.into_iter().cloned().collect();
                selection.push((name.to_owned(), TableKeys::Some(keys)));
            }
        }
        Selection::Keys(selection)
    }

    /// Forgets the exchanges by ranges we answer that went quiet.
    pub(super) fn expire_range_syncs(&mut self, now: Instant) {
        let timeout = self.config.sync_timeout;
        self.answering
            .retain(|_, range| now.duration_since(range.at) < timeout);
    }

    /// Our exchange by ranges got the peer's transfer: what we push back
    /// (see [`range_selection`](Core::range_selection)), keys written
    /// since our last frame included.
    pub(super) fn push_selection(&mut self, range: &RangeSession) -> Selection {
        let changed = self.catch_up_indexes();
        self.range_selection(range, &changed)
    }
}
