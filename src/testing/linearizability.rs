//! A linearizability checker for histories of operations on keys.
//!
//! Record what every client called and what it got back in a [`History`]
//! (from any number of tasks: the history is shared), then [`check`] it
//! against a sequential [`Model`] of the object. The history is
//! **linearizable** when every operation can be given one instant between
//! its call and its return at which it took effect, such that the
//! operations, run one by one in that order on the model, return exactly
//! what the clients saw (Herlihy & Wing 1990). A homed table promises it
//! per key for [`read_at_home`](crate::region::HomedTable::read_at_home)
//! and the writes acknowledged by the home.
//!
//! **Algorithm.** Wing & Gong's search (1993) with Lowe's memoization
//! ("Testing for linearizability", 2017), the algorithm of Knossos and
//! Porcupine, usually called WGL: walk the calls and returns in real-time
//! order; at a call, try to linearize the operation now (step the model;
//! the output must be the one recorded) and continue; at a return whose
//! operation is not linearized yet, backtrack to the last choice. A
//! configuration (set of operations linearized, model state) already seen
//! is never explored twice, which keeps the search polynomial on the
//! histories tests produce. Linearizability is local (Herlihy & Wing,
//! Theorem 1), so each key is checked alone: the cost grows with the
//! concurrency on one key, not with the number of keys.
//!
//! **Operations whose outcome is unknown** (a forwarded write that timed
//! out after its request left: [`maybe_applied`] true) are recorded with
//! [`History::unknown`], or simply never completed: they may take effect at
//! any instant after their call, or never, and their output is not
//! compared. Operations that surely did not take effect (a refusal, a
//! timeout with `maybe_applied` false) are recorded with
//! [`History::not_applied`] and leave the history: the check then also
//! verifies that claim, since an effect nobody accounts for makes a later
//! read inexplicable.
//!
//! Time is the order in which the history hears of calls and returns:
//! record a call just before making it and its return just after it
//! completes, in the same task. On a current-thread runtime that order is
//! exact.
//!
//! ```
//! use archipelago::testing::linearizability::{check, History, RegisterModel, RegisterOp};
//!
//! type Log = History<&'static str, RegisterOp<u32>, Option<u32>>;
//! let history = Log::new();
//! // Client 1 writes 1 and is told it is done; then client 2 reads 0.
//! let write = history.invoke("k", RegisterOp::Put(1));
//! history.returned(write, None);
//! let read = history.invoke("k", RegisterOp::Get);
//! history.returned(read, Some(0));
//! // A read after a completed write must see it (or a later write).
//! assert!(check(&RegisterModel::new(0), &history).is_err());
//!
//! // Had the read overlapped the write, either answer would do.
//! let history = Log::new();
//! let write = history.invoke("k", RegisterOp::Put(1));
//! let read = history.invoke("k", RegisterOp::Get);
//! history.returned(read, Some(0));
//! history.returned(write, None);
//! assert!(check(&RegisterModel::new(0), &history).is_ok());
//! ```
//!
//! [`maybe_applied`]: crate::region::RegionError::HomeUnreachable

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// Most search steps [`check`] spends on one key before it gives up with
/// [`CheckError::Undecided`] (one step: one call tried or one backtrack).
pub const CHECK_STEPS_PER_KEY_MAX: u64 = 10_000_000;

/// A sequential specification: what one operation does to the object's
/// state and what it returns, when operations run one at a time.
///
/// `step` must be deterministic: the checker compares its output with the
/// one a client saw.
pub trait Model {
    /// The object's state (of one key).
    type State: Clone + Eq + Hash + Debug;
    /// An operation, with its arguments.
    type Input: Debug;
    /// What an operation returns.
    type Output: PartialEq + Debug;

    /// The state of a key never written.
    fn init(&self) -> Self::State;

    /// Runs `input` on `state`: the state after it and its output.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);
}

/// An operation on a [`RegisterModel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOp<V> {
    /// Replace the value (its output is `None`).
    Put(V),
    /// Read the value (its output is `Some(value)`).
    Get,
}

/// A read/write register of `V`, starting at a given value: the model of a
/// homed table written with `put` and read with `read_at_home`.
#[derive(Clone, Debug)]
pub struct RegisterModel<V> {
    initial: V,
}

impl<V> RegisterModel<V> {
    /// A register that starts at `initial`.
    pub fn new(initial: V) -> Self {
        RegisterModel { initial }
    }
}

impl<V: Clone + Eq + Hash + Debug> Model for RegisterModel<V> {
    type State = V;
    type Input = RegisterOp<V>;
    type Output = Option<V>;

    fn init(&self) -> V {
        self.initial.clone()
    }

    fn step(&self, state: &V, input: &RegisterOp<V>) -> (V, Option<V>) {
        match input {
            RegisterOp::Put(v) => (v.clone(), None),
            RegisterOp::Get => (state.clone(), Some(state.clone())),
        }
    }
}

/// Names an operation recorded in a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// What became of an operation.
#[derive(Clone, Debug, PartialEq)]
enum Fate<O> {
    /// Not completed yet, or completed without a known outcome: may have
    /// taken effect at any instant after its call, or never.
    Open,
    /// Returned `O` at the given instant.
    Returned(u64, O),
    /// Surely took no effect: not part of the history.
    NotApplied,
}

#[derive(Debug)]
struct Op<K, I, O> {
    key: K,
    input: I,
    called: u64,
    fate: Fate<O>,
}

#[derive(Debug)]
struct Ops<K, I, O> {
    clock: u64,
    ops: Vec<Op<K, I, O>>,
}

/// Calls and returns of operations on keys, in the order they happened.
///
/// Shared by reference between the tasks of a test (it locks inside).
#[derive(Debug)]
pub struct History<K, I, O> {
    inner: Mutex<Ops<K, I, O>>,
}

impl<K, I, O> Default for History<K, I, O> {
    fn default() -> Self {
        History {
            inner: Mutex::new(Ops {
                clock: 0,
                ops: Vec::new(),
            }),
        }
    }
}

impl<K, I, O> History<K, I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ops<K, I, O>> {
        // A test that panicked while recording leaves a history worth
        // nothing but still readable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the call of `input` on `key`, now.
    pub fn invoke(&self, key: impl Into<K>, input: I) -> OpId {
        let mut ops = self.lock();
        ops.clock += 1;
        let called = ops.clock;
        ops.ops.push(Op {
            key: key.into(),
            input,
            called,
            fate: Fate::Open,
        });
        OpId(ops.ops.len() - 1)
    }

    /// Records that `op` returned `output`, now.
    ///
    /// # Panics
    /// When `op` is not open (returned twice, or not of this history).
    pub fn returned(&self, op: OpId, output: O) {
        let mut ops = self.lock();
        ops.clock += 1;
        let now = ops.clock;
        let slot = &mut ops.ops[op.0];
        assert!(
            matches!(slot.fate, Fate::Open),
            "operation {op:?} already completed"
        );
        slot.fate = Fate::Returned(now, output);
    }

    /// Records that `op` completed without a known outcome: it may have
    /// taken effect, once, at any instant after its call (the same as
    /// never completing it).
    pub fn unknown(&self, op: OpId) {
        debug_assert!(matches!(self.lock().ops[op.0].fate, Fate::Open));
    }

    /// Records that `op` surely took no effect: it leaves the history.
    ///
    /// # Panics
    /// When `op` is not open.
    pub fn not_applied(&self, op: OpId) {
        let mut ops = self.lock();
        let slot = &mut ops.ops[op.0];
        assert!(
            matches!(slot.fate, Fate::Open),
            "operation {op:?} already completed"
        );
        slot.fate = Fate::NotApplied;
    }

    /// Operations recorded: (returned, open, not applied).
    pub fn counts(&self) -> (usize, usize, usize) {
        let ops = self.lock();
        let mut counts = (0, 0, 0);
        for op in &ops.ops {
            match op.fate {
                Fate::Returned(..) => counts.0 += 1,
                Fate::Open => counts.1 += 1,
                Fate::NotApplied => counts.2 += 1,
            }
        }
        counts
    }
}

/// What [`check`] found linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Keys checked.
    pub keys: usize,
    /// Operations with a known output.
    pub returned: usize,
    /// Operations whose outcome is unknown (linearized or left out, as
    /// the search needed).
    pub open: usize,
    /// Search steps spent, all keys together.
    pub steps: u64,
}

/// Why [`check`] did not find the history linearizable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No order of the key's operations explains what the clients saw.
    #[error("not linearizable for key {key}: {}", render(.operations, .longest))]
    NotLinearizable {
        /// The key (its `Debug` form).
        key: String,
        /// The key's operations in call order: input, output (or
        /// `unknown`), call and return instants.
        operations: Vec<String>,
        /// The longest order found that explains a prefix of the history.
        longest: Vec<String>,
    },
    /// The search for the key passed [`CHECK_STEPS_PER_KEY_MAX`] steps.
    #[error("undecided for key {key} after {steps} steps")]
    Undecided {
        /// The key (its `Debug` form).
        key: String,
        /// Steps spent.
        steps: u64,
    },
}

fn render(operations: &[String], longest: &[String]) -> String {
    format!(
        "operations:\n  {}\nlongest linearizable order:\n  {}",
        operations.join("\n  "),
        longest.join("\n  ")
    )
}

/// Checks that `history` is linearizable, key by key, against `model`.
///
/// # Errors
/// [`CheckError::NotLinearizable`] with the key, its operations and the
/// longest order found; [`CheckError::Undecided`] past
/// [`CHECK_STEPS_PER_KEY_MAX`] steps on one key.
pub fn check<M, K>(
    model: &M,
    history: &History<K, M::Input, M::Output>,
) -> Result<Checked, CheckError>
where
    M: Model,
    K: Ord + Debug,
{
    let ops = history.lock();
    type KeyOps<'a, K, M> = Vec<&'a Op<K, <M as Model>::Input, <M as Model>::Output>>;
    let mut by_key: BTreeMap<&K, KeyOps<'_, K, M>> = BTreeMap::new();
    for op in &ops.ops {
        if op.fate != Fate::NotApplied {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    let mut checked = Checked {
        keys: by_key.len(),
        returned: 0,
        open: 0,
        steps: 0,
    };
    for (key, ops) in by_key {
        for op in &ops {
            match op.fate {
                Fate::Returned(..) => checked.returned += 1,
                _ => checked.open += 1,
            }
        }
        checked.steps += search(model, key, &ops)?;
    }
    Ok(checked)
}

/// One call or return, in a doubly linked list of the key's events.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    call: bool,
}

/// The events still to linearize, in real-time order, with removal and
/// restoration in O(1) (dancing links: a node removed keeps its links, so
/// restoring in the reverse order of removal puts it back).
struct Events {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Index of each op's call and return node.
    nodes: Vec<(usize, Option<usize>)>,
    /// Return nodes still in the list.
    returns_left: usize,
}

impl Events {
    /// The head sentinel's index.
    fn head(&self) -> usize {
        self.events.len()
    }

    fn new<K, I, O>(ops: &[&Op<K, I, O>]) -> Self {
        let mut timed: Vec<(u64, Event)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            timed.push((op.called, Event { op: i, call: true }));
            if let Fate::Returned(at, _) = op.fate {
                debug_assert!(at > op.called, "a return follows its call");
                timed.push((at, Event { op: i, call: false }));
            }
        }
        // Instants are distinct: each call and return has its own tick.
        timed.sort_by_key(|(at, _)| *at);
        let events: Vec<Event> = timed.into_iter().map(|(_, e)| e).collect();
        let n = events.len();
        let mut nodes = vec![(usize::MAX, None); ops.len()];
        let mut returns_left = 0;
        for (i, e) in events.iter().enumerate() {
            if e.call {
                nodes[e.op].0 = i;
            } else {
                nodes[e.op].1 = Some(i);
                returns_left += 1;
            }
        }
        // Node n is the head: next of the last event, prev of the first.
        let next = (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        Events {
            events,
            next,
            prev,
            nodes,
            returns_left,
        }
    }

    fn remove(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn restore(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Takes `op`'s call and return out of the list (it is linearized).
    fn lift(&mut self, op: usize) {
        let (call, ret) = self.nodes[op];
        self.remove(call);
        if let Some(ret) = ret {
            self.remove(ret);
            self.returns_left -= 1;
        }
    }

    /// Puts back what [`lift`](Events::lift) took out, in reverse order.
    fn unlift(&mut self, op: usize) {
        let (call, ret) = self.nodes[op];
        if let Some(ret) = ret {
            self.restore(ret);
            self.returns_left += 1;
        }
        self.restore(call);
    }
}

/// A set of operations linearized, as bits.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

struct Described<'a, K, I, O>(&'a Op<K, I, O>);

impl<K, I: Debug, O: Debug> fmt::Display for Described<'_, K, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.fate {
            Fate::Returned(at, out) => write!(
                f,
                "{:?} -> {:?} (called {}, returned {})",
                self.0.input, out, self.0.called, at
            ),
            _ => write!(
                f,
                "{:?} -> unknown (called {}, never returned)",
                self.0.input, self.0.called
            ),
        }
    }
}

/// WGL on one key's operations: the steps spent, or why it failed.
fn search<M: Model, K: Debug>(
    model: &M,
    key: &K,
    ops: &[&Op<K, M::Input, M::Output>],
) -> Result<u64, CheckError> {
    let mut events = Events::new(ops);
    let head = events.head();
    let mut state = model.init();
    let mut linearized = Bits::new(ops.len());
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    // The calls linearized, each with the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut entry = events.next[head];
    let mut steps = 0u64;
    while events.returns_left > 0 {
        steps += 1;
        if steps > CHECK_STEPS_PER_KEY_MAX {
            return Err(CheckError::Undecided {
                key: format!("{key:?}"),
                steps,
            });
        }
        // A return of every op not linearized lies ahead of its call.
        debug_assert_ne!(entry, head, "ran past the last return");
        let event = events.events[entry];
        if event.call {
            let op = ops[event.op];
            let (after, output) = model.step(&state, &op.input);
            let fits = match &op.fate {
                Fate::Returned(_, seen) => *seen == output,
                _ => true,
            };
            if fits {
                linearized.set(event.op);
                if seen.insert((linearized.clone(), after.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, after)));
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|(e, _)| events.events[*e].op).collect();
                    }
                    events.lift(event.op);
                    entry = events.next[head];
                    continue;
                }
                linearized.clear(event.op);
            }
            entry = events.next[entry];
        } else {
            // An op returned before it could be linearized: undo the last
            // choice and try the next call after it.
            let Some((call, before)) = stack.pop() else {
                return Err(CheckError::NotLinearizable {
                    key: format!("{key:?}"),
                    operations: ops.iter().map(|op| Described(op).to_string()).collect(),
                    longest: longest
                        .iter()
                        .map(|&i| Described(ops[i]).to_string())
                        .collect(),
                });
            };
            let op = events.events[call].op;
            linearized.clear(op);
            events.unlift(op);
            state = before;
            entry = events.next[call];
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reg = History<&'static str, RegisterOp<u32>, Option<u32>>;

    fn put(h: &Reg, v: u32) -> OpId {
        h.invoke("k", RegisterOp::Put(v))
    }
    fn get(h: &Reg) -> OpId {
        h.invoke("k", RegisterOp::Get)
    }
    fn verdict(h: &Reg) -> Result<Checked, CheckError> {
        check(&RegisterModel::new(0), h)
    }

    #[test]
    fn sequential_histories_are_checked_against_the_model() {
        let h = Reg::new();
        let w = put(&h, 1);
        h.returned(w, None);
        let r = get(&h);
        h.returned(r, Some(1));
        assert_eq!(verdict(&h).unwrap().returned, 2);

        let h = Reg::new();
        let r = get(&h);
        h.returned(r, Some(7));
        assert!(matches!(
            verdict(&h),
            Err(CheckError::NotLinearizable { .. })
        ));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = Reg::new();
        let w1 = put(&h, 1);
        h.returned(w1, None);
        let w2 = put(&h, 2);
        h.returned(w2, None);
        let r = get(&h);
        h.returned(r, Some(1));
        let err = verdict(&h).unwrap_err();
        assert!(err.to_string().contains("Put(2)"), "{err}");
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // w1 and w2 overlap; reads after both see one of them, and all
        // reads after agree.
        let h = Reg::new();
        let w1 = put(&h, 1);
        let w2 = put(&h, 2);
        h.returned(w2, None);
        h.returned(w1, None);
        let r = get(&h);
        h.returned(r, Some(2));
        let r = get(&h);
        h.returned(r, Some(2));
        assert!(verdict(&h).is_ok());
        // ... but not flip back: 2 then 1 without a write between.
        let r = get(&h);
        h.returned(r, Some(1));
        assert!(verdict(&h).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_apply_late_or_never() {
        let h = Reg::new();
        let lost = put(&h, 5);
        h.unknown(lost);
        let r = get(&h);
        h.returned(r, Some(0));
        let r = get(&h);
        h.returned(r, Some(5));
        assert!(verdict(&h).is_ok(), "it applied between the reads");
        // Once applied it cannot be undone.
        let r = get(&h);
        h.returned(r, Some(0));
        assert!(verdict(&h).is_err());
    }

    #[test]
    fn a_write_said_not_applied_must_not_show() {
        let h = Reg::new();
        let refused = put(&h, 5);
        h.not_applied(refused);
        let r = get(&h);
        h.returned(r, Some(5));
        assert!(verdict(&h).is_err(), "5 came from nowhere");
    }

    #[test]
    fn keys_are_checked_alone() {
        let h: History<u8, RegisterOp<u32>, Option<u32>> = History::new();
        for key in 0..50u8 {
            let w = h.invoke(key, RegisterOp::Put(u32::from(key)));
            h.returned(w, None);
            let r = h.invoke(key, RegisterOp::Get);
            h.returned(r, Some(u32::from(key)));
        }
        let checked = check(&RegisterModel::new(0), &h).unwrap();
        assert_eq!((checked.keys, checked.returned, checked.open), (50, 100, 0));
        // One wrong read among them names its key.
        let r = h.invoke(17u8, RegisterOp::Get);
        h.returned(r, Some(3));
        match check(&RegisterModel::new(0), &h) {
            Err(CheckError::NotLinearizable { key, .. }) => assert_eq!(key, "17"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn many_concurrent_writers_stay_cheap_with_memoization() {
        // 12 writers all overlapping, then one read: 12! orders without
        // memoization, a few thousand configurations with it.
        let h = Reg::new();
        let ws: Vec<OpId> = (1..=12).map(|v| put(&h, v)).collect();
        for w in ws {
            h.returned(w, None);
        }
        let r = get(&h);
        h.returned(r, Some(7));
        let checked = verdict(&h).unwrap();
        assert!(checked.steps < 200_000, "{} steps", checked.steps);
    }
}
