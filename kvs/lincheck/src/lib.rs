#![doc = include_str!("../README.md")]
//!
//! # How the search works
//!
//! A history is linearizable if each operation can be given a point between its invocation
//! and its completion such that executing the operations in point order explains every
//! result. The search is Wing & Gong's algorithm with Lowe's memoization: events sit in a
//! time-ordered linked list; an operation invoked before the first pending completion may
//! take effect next; dead ends backtrack. Every explored (set of linearized operations,
//! map state) pair is remembered as a 128-bit Zobrist fingerprint, so no configuration is
//! explored twice (a false match needs a 2^-128 coincidence).
//!
//! Three reductions keep it fast without losing completeness: keys never read together by
//! one `multi_get` form independent components, searched separately; a pending read that
//! matches the current state is linearized at once and never branched on (moving it to the
//! front of any valid order keeps the order valid); and an unknown-outcome put whose value
//! nobody read is assumed never to have taken effect (removing it changes no result).

use std::collections::{HashMap, HashSet};
use std::fmt;

/// Default bound on explored states across one [`check`] call. A linearizable history
/// of a few thousand operations explores a few states per operation; the bound only
/// stops pathological (typically non-linearizable and highly concurrent) searches.
pub const STATES_MAX_DEFAULT: u64 = 2_000_000;

/// An operation on the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes `value` to `key`. Expects [`Output::Ok`] or [`Output::Unknown`].
    Put { key: String, value: u64 },
    /// Reads `key`. Expects [`Output::Value`] (or [`Output::Unknown`], which is ignored).
    Get { key: String },
    /// Reads several keys at one instant. Expects [`Output::Values`], one per key, in order.
    MultiGet { keys: Vec<String> },
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A put was acknowledged.
    Ok,
    /// A get's result (`None` = absent).
    Value(Option<u64>),
    /// A multi_get's results, in the order of its keys.
    Values(Vec<Option<u64>>),
    /// The reply never came (timeout, connection cut). A put may then have taken effect at
    /// any point after its invocation, or never; a read is simply ignored.
    Unknown,
}

/// One recorded operation, as pushed; `index` is its position in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub index: usize,
    pub client: u32,
    pub invoked_us: u64,
    pub returned_us: Option<u64>,
    pub op: Op,
    pub output: Output,
}

/// Why a history was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// An entry is inconsistent in itself (wrong output kind, missing completion time...).
    #[error("malformed history entry {record}: {reason}")]
    Malformed {
        record: Box<Record>,
        reason: &'static str,
    },
    /// No real-time-respecting order explains `culprit`'s result.
    #[error("history is not linearizable: {culprit} cannot be explained: {detail}")]
    NotLinearizable {
        culprit: Box<Record>,
        detail: String,
    },
    /// The search explored `states_max` states without deciding.
    #[error(
        "linearizability search gave up after {states_max} states on {ops} operations over keys \
         {keys:?}; raise states_max or record a shorter history"
    )]
    SearchLimit {
        states_max: u64,
        ops: usize,
        keys: Vec<String>,
    },
}

/// A history of operations recorded by concurrent clients.
#[derive(Debug, Clone, Default)]
pub struct History {
    records: Vec<Record>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an operation invoked at `invoked_us` and completed at `returned_us` (any
    /// clock shared by all clients, e.g. µs since the test began). Use `returned_us: None`
    /// with [`Output::Unknown`] for operations whose reply never came; with
    /// [`Output::Unknown`] the completion time is ignored (treated as +infinity). Reads
    /// with an unknown outcome constrain nothing and are ignored (callers may also drop
    /// them). Entries are validated by [`check`], not here, so recording never fails.
    pub fn push(
        &mut self,
        client: u32,
        invoked_us: u64,
        returned_us: Option<u64>,
        op: Op,
        output: Output,
    ) {
        let index = self.records.len();
        self.records.push(Record {
            index,
            client,
            invoked_us,
            returned_us,
            op,
            output,
        });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }
}

/// Checks `history` with the default bound of [`STATES_MAX_DEFAULT`] explored states.
pub fn check(history: &History) -> Result<(), Violation> {
    check_bounded(history, STATES_MAX_DEFAULT)
}

/// Checks `history`, exploring at most `states_max` states in total.
pub fn check_bounded(history: &History, states_max: u64) -> Result<(), Violation> {
    let mut keys = Keys::default();
    let mut ops = Vec::with_capacity(history.len());
    for record in &history.records {
        if let Some(op) = compile(record, &mut keys)? {
            ops.push(op);
        }
    }
    check_writes_exist(history, &ops, &keys)?;
    // An unknown-outcome put whose value nobody read can be assumed never to have taken
    // effect: removing it from any valid order leaves every read's result unchanged.
    let read: HashSet<(usize, u64)> = ops
        .iter()
        .filter_map(|op| match &op.step {
            Step::Read(reads) => Some(reads.iter().filter_map(|&(k, v)| Some((k, v?)))),
            Step::Write(..) => None,
        })
        .flatten()
        .collect();
    ops.retain(|op| {
        op.returned.is_some() || matches!(op.step, Step::Write(k, v) if read.contains(&(k, v)))
    });

    // Components of keys connected by multi_gets (union-find), searched independently.
    let mut parent: Vec<usize> = (0..keys.names.len()).collect();
    for op in &ops {
        if let Step::Read(reads) = &op.step {
            for pair in reads.windows(2) {
                let (a, b) = (find(&mut parent, pair[0].0), find(&mut parent, pair[1].0));
                parent[a] = b;
            }
        }
    }
    let mut component_of_root: Vec<Option<usize>> = vec![None; keys.names.len()];
    let mut components: Vec<Vec<CompiledOp>> = Vec::new();
    for op in ops {
        let root = find(&mut parent, op.step.first_key());
        let c = *component_of_root[root].get_or_insert_with(|| {
            components.push(Vec::new());
            components.len() - 1
        });
        components[c].push(op);
    }

    let mut budget = states_max;
    for component in &components {
        let mut ckeys: Vec<usize> = component.iter().flat_map(|op| op.step.keys()).collect();
        ckeys.sort_unstable();
        ckeys.dedup();
        let key_names = || {
            ckeys
                .iter()
                .map(|&k| keys.names[k].clone())
                .collect::<Vec<_>>()
        };
        match search(component, keys.names.len(), &ckeys, &mut budget) {
            Ok(()) => {}
            Err(Failure::Limit) => {
                return Err(Violation::SearchLimit {
                    states_max,
                    ops: component.len(),
                    keys: key_names(),
                });
            }
            Err(Failure::Stuck(d)) => return Err(explain(history, component, &keys, &ckeys, d)),
        }
    }
    Ok(())
}

#[derive(Default)]
struct Keys {
    ids: HashMap<String, usize>,
    names: Vec<String>,
}

impl Keys {
    fn id(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), self.names.len() - 1);
        self.names.len() - 1
    }
}

/// An operation reduced to what the search needs; `returned: None` means unknown outcome.
struct CompiledOp {
    record: usize,
    invoked: u64,
    returned: Option<u64>,
    step: Step,
}

enum Step {
    Write(usize, u64),
    /// (key, expected value) pairs, all checked at one instant.
    Read(Vec<(usize, Option<u64>)>),
}

impl Step {
    fn keys(&self) -> Vec<usize> {
        match self {
            Step::Write(k, _) => vec![*k],
            Step::Read(reads) => reads.iter().map(|r| r.0).collect(),
        }
    }

    fn first_key(&self) -> usize {
        match self {
            Step::Write(k, _) => *k,
            Step::Read(reads) => reads.first().map_or(0, |r| r.0),
        }
    }
}

fn compile(r: &Record, keys: &mut Keys) -> Result<Option<CompiledOp>, Violation> {
    let malformed = |reason| Violation::Malformed {
        record: Box::new(r.clone()),
        reason,
    };
    let returned = match (&r.output, r.returned_us) {
        (Output::Unknown, _) => None,
        (_, None) => {
            return Err(malformed(
                "an operation with a known outcome needs returned_us",
            ));
        }
        (_, Some(t)) if t < r.invoked_us => {
            return Err(malformed("returned_us is before invoked_us"));
        }
        (_, Some(t)) => Some(t),
    };
    let step = match (&r.op, &r.output) {
        (Op::Put { key, value }, Output::Ok | Output::Unknown) => Step::Write(keys.id(key), *value),
        (Op::Put { .. }, _) => {
            return Err(malformed("a put must report Output::Ok or Output::Unknown"));
        }
        (Op::Get { .. } | Op::MultiGet { .. }, Output::Unknown) => return Ok(None),
        (Op::Get { key }, Output::Value(v)) => Step::Read(vec![(keys.id(key), *v)]),
        (Op::Get { .. }, _) => {
            return Err(malformed(
                "a get must report Output::Value or Output::Unknown",
            ));
        }
        (Op::MultiGet { keys: ks }, Output::Values(vs)) if ks.len() == vs.len() => {
            if ks.is_empty() {
                return Ok(None);
            }
            Step::Read(ks.iter().zip(vs).map(|(k, v)| (keys.id(k), *v)).collect())
        }
        (Op::MultiGet { .. }, _) => {
            return Err(malformed(
                "a multi_get must report Output::Values with one value per key",
            ));
        }
    };
    Ok(Some(CompiledOp {
        record: r.index,
        invoked: r.invoked_us,
        returned,
        step,
    }))
}

/// Cheap pre-check with a precise message: every value read must have been written to
/// that key by a put invoked before the read returned.
fn check_writes_exist(history: &History, ops: &[CompiledOp], keys: &Keys) -> Result<(), Violation> {
    let mut first_write: HashMap<(usize, u64), u64> = HashMap::new();
    for op in ops {
        if let Step::Write(k, v) = op.step {
            let t = first_write.entry((k, v)).or_insert(op.invoked);
            *t = (*t).min(op.invoked);
        }
    }
    for op in ops {
        let (Step::Read(reads), Some(returned)) = (&op.step, op.returned) else {
            continue;
        };
        for &(k, v) in reads {
            let Some(v) = v else { continue };
            if first_write.get(&(k, v)).is_none_or(|&t| t > returned) {
                return Err(Violation::NotLinearizable {
                    culprit: Box::new(history.records[op.record].clone()),
                    detail: format!(
                        "no put of {v} to key {:?} was invoked before this read returned",
                        keys.names[k]
                    ),
                });
            }
        }
    }
    Ok(())
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A pseudo-random 128-bit Zobrist key for (tag, a, b); the halves use independent seeds.
fn zobrist(tag: u64, a: u64, b: u64) -> u128 {
    let half = |seed: u64| splitmix(splitmix(splitmix(tag ^ seed) ^ a) ^ b);
    (u128::from(half(0x243F_6A88_85A3_08D3)) << 64) | u128::from(half(0x1319_8A2E_0370_7344))
}

/// Fingerprint contribution of `key` holding `value`; absent contributes nothing.
fn value_fp(key: usize, value: Option<u64>) -> u128 {
    value.map_or(0, |v| zobrist(2, key as u64, v))
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// Doubly linked list of call/return events in time order (node 0 is the head), with
/// dancing-links removal so that backtracking restores it exactly.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: (op, is_call).
    event: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    return_node: Vec<Option<usize>>,
}

impl Events {
    fn new(ops: &[CompiledOp]) -> Self {
        // (time, kind, op): calls sort before returns at equal times, so operations that
        // merely touch are treated as concurrent (the permissive reading of the clock).
        let mut sorted: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            sorted.push((op.invoked, 0, i));
            if let Some(t) = op.returned {
                sorted.push((t, 1, i));
            }
        }
        sorted.sort_unstable();
        let n = sorted.len() + 1;
        let mut ev = Events {
            next: (1..=n).map(|i| if i == n { NIL } else { i }).collect(),
            prev: (0..n).map(|i| i.wrapping_sub(1)).collect(),
            event: vec![(0, false); n],
            call_node: vec![0; ops.len()],
            return_node: vec![None; ops.len()],
        };
        for (node, &(_, kind, op)) in (1..).zip(&sorted) {
            ev.event[node] = (op, kind == 0);
            if kind == 0 {
                ev.call_node[op] = node;
            } else {
                ev.return_node[op] = Some(node);
            }
        }
        ev
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(r) = self.return_node[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.return_node[op] {
            self.relink(r);
        }
        self.relink(self.call_node[op]);
    }
}

/// The deepest dead end of a failed search, for the error message.
struct DeadEnd {
    depth: usize,
    /// The pending op whose completion could not be passed.
    blocking: Option<usize>,
    /// Reads that could have come next but contradict the state there.
    failed: Vec<usize>,
    /// Values of the component's keys at the dead end.
    state: Vec<Option<u64>>,
}

enum Failure {
    Limit,
    Stuck(DeadEnd),
}

fn search(
    ops: &[CompiledOp],
    nkeys: usize,
    ckeys: &[usize],
    budget: &mut u64,
) -> Result<(), Failure> {
    let op_fp: Vec<u128> = (0..ops.len()).map(|i| zobrist(1, i as u64, 0)).collect();
    let mut events = Events::new(ops);
    let mut state: Vec<Option<u64>> = vec![None; nkeys];
    let (mut done_fp, mut state_fp) = (0u128, 0u128);
    // Unknown-outcome puts may stay pending for ever (equivalently: take effect after
    // everything else), so the search succeeds once every known operation is placed.
    let mut remaining = ops.iter().filter(|op| op.returned.is_some()).count();
    // Linearized ops: (op, value a write overwrote, whether it was a write).
    let mut stack: Vec<(usize, Option<u64>, bool)> = Vec::new();
    let mut seen: HashSet<u128> = HashSet::new();
    let mut deepest: Option<DeadEnd> = None;
    // Where to resume trying writes at this configuration: None = fresh configuration.
    let mut cursor: Option<usize> = None;
    loop {
        if remaining == 0 {
            return Ok(());
        }
        let mut chosen = None;
        let mut refuted = false;
        if cursor.is_none() {
            // A candidate read that matches the state is linearized at once and is not a
            // choice point: moving a read that fits to the front of any valid order keeps it
            // valid (it changes nothing, and everything that had to precede it is done).
            let mut n = events.next[HEAD];
            while n != NIL && events.event[n].1 {
                let i = events.event[n].0;
                if let Step::Read(reads) = &ops[i].step
                    && reads.iter().all(|&(k, v)| state[k] == v)
                {
                    chosen = Some((i, state_fp, false));
                    // Already explored from another path, so it failed, and so does this one.
                    refuted = !seen.insert(done_fp ^ op_fp[i] ^ state_fp);
                    break;
                }
                n = events.next[n];
            }
            if chosen.is_none() {
                cursor = Some(events.next[HEAD]);
            }
        }
        // Otherwise branch on which write takes effect next, in invocation order.
        if let Some(mut n) = cursor {
            while n != NIL && events.event[n].1 {
                let i = events.event[n].0;
                if let Step::Write(k, v) = ops[i].step {
                    let fp = state_fp ^ value_fp(k, state[k]) ^ value_fp(k, Some(v));
                    if seen.insert(done_fp ^ op_fp[i] ^ fp) {
                        chosen = Some((i, fp, true));
                        break;
                    }
                }
                n = events.next[n];
            }
        }
        if let Some((i, new_state_fp, is_write)) = chosen.filter(|_| !refuted) {
            if *budget == 0 {
                return Err(Failure::Limit);
            }
            *budget -= 1;
            let old = match ops[i].step {
                Step::Write(k, v) => state[k].replace(v),
                Step::Read(_) => None,
            };
            stack.push((i, old, is_write));
            done_fp ^= op_fp[i];
            state_fp = new_state_fp;
            remaining -= usize::from(ops[i].returned.is_some());
            events.lift(i);
            cursor = None;
            continue;
        }
        // Dead end: nothing pending fits before the first pending completion.
        if deepest.as_ref().is_none_or(|d| stack.len() > d.depth) {
            deepest = Some(dead_end(ops, &events, &state, ckeys, stack.len()));
        }
        // Backtrack to the latest write choice; reads were forced, so pop through them.
        loop {
            let Some((i, old, is_write)) = stack.pop() else {
                return Err(Failure::Stuck(
                    deepest.unwrap_or_else(|| dead_end(ops, &events, &state, ckeys, 0)),
                ));
            };
            if let Step::Write(k, v) = ops[i].step {
                state_fp ^= value_fp(k, Some(v)) ^ value_fp(k, old);
                state[k] = old;
            }
            done_fp ^= op_fp[i];
            remaining += usize::from(ops[i].returned.is_some());
            events.unlift(i);
            if is_write {
                cursor = Some(events.next[events.call_node[i]]);
                break;
            }
        }
    }
}

fn dead_end(
    ops: &[CompiledOp],
    events: &Events,
    state: &[Option<u64>],
    ckeys: &[usize],
    depth: usize,
) -> DeadEnd {
    let mut failed = Vec::new();
    let mut n = events.next[HEAD];
    while n != NIL && events.event[n].1 {
        let i = events.event[n].0;
        if let Step::Read(reads) = &ops[i].step
            && reads.iter().any(|&(k, v)| state[k] != v)
        {
            failed.push(i);
        }
        n = events.next[n];
    }
    DeadEnd {
        depth,
        blocking: (n != NIL).then(|| events.event[n].0),
        failed,
        state: ckeys.iter().map(|&k| state[k]).collect(),
    }
}

/// Turns the deepest dead end into a message: the culprit is the op whose completion
/// could not be passed if it is a contradicted read, else the first contradicted read.
fn explain(
    history: &History,
    ops: &[CompiledOp],
    keys: &Keys,
    ckeys: &[usize],
    d: DeadEnd,
) -> Violation {
    let culprit = match d.blocking {
        Some(b) if d.failed.contains(&b) => b,
        _ => d.failed.first().copied().or(d.blocking).unwrap_or(0),
    };
    let show = |v: &Option<u64>| v.map_or_else(|| "absent".to_owned(), |v| v.to_string());
    let state: Vec<String> = ckeys
        .iter()
        .zip(&d.state)
        .map(|(&k, v)| format!("{}={}", keys.names[k], show(v)))
        .collect();
    let mut detail = format!(
        "the longest explainable order places {} of {} operations on these keys, after which the store holds {}, \
         and no pending operation can take effect next",
        d.depth,
        ops.len(),
        state.join(", ")
    );
    let others: Vec<String> = d
        .failed
        .iter()
        .filter(|&&i| i != culprit)
        .map(|&i| history.records[ops[i].record].to_string())
        .collect();
    if !others.is_empty() {
        detail.push_str(&format!(
            "; other operations contradicted there: {}",
            others.join("; ")
        ));
    }
    let culprit = ops.get(culprit).map_or(0, |op| op.record);
    Violation::NotLinearizable {
        culprit: Box::new(history.records[culprit].clone()),
        detail,
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, value } => write!(f, "put({key}, {value})"),
            Op::Get { key } => write!(f, "get({key})"),
            Op::MultiGet { keys } => write!(f, "multi_get({})", keys.join(", ")),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<u64>| v.map_or_else(|| "absent".to_owned(), |v| v.to_string());
        match self {
            Output::Ok => f.write_str("ok"),
            Output::Value(v) => f.write_str(&show(v)),
            Output::Values(vs) => write!(
                f,
                "[{}]",
                vs.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
            Output::Unknown => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let returned = self
            .returned_us
            .map_or_else(|| "?".to_owned(), |t| t.to_string());
        write!(
            f,
            "#{} (client {}: {} -> {}, {}..{} µs)",
            self.index, self.client, self.op, self.output, self.invoked_us, returned
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: u64) -> Op {
        Op::Put {
            key: key.into(),
            value,
        }
    }
    fn get(key: &str) -> Op {
        Op::Get { key: key.into() }
    }
    fn mget(keys: &[&str]) -> Op {
        Op::MultiGet {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    /// (client, invoked, returned, op, output)
    fn history(entries: Vec<(u32, u64, Option<u64>, Op, Output)>) -> History {
        let mut h = History::new();
        for (client, invoked, returned, op, output) in entries {
            h.push(client, invoked, returned, op, output);
        }
        h
    }

    /// Asserts that `h` is rejected because of record `index` and returns the message.
    fn assert_culprit(h: &History, index: usize) -> String {
        match check(h) {
            Err(Violation::NotLinearizable { culprit, detail }) => {
                let msg = Violation::NotLinearizable {
                    culprit: culprit.clone(),
                    detail,
                }
                .to_string();
                assert_eq!(culprit.index, index, "wrong culprit: {msg}");
                assert!(
                    msg.contains(&format!("#{index} (client {}", culprit.client)),
                    "{msg}"
                );
                msg
            }
            other => panic!("expected a linearizability violation, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&History::new()), Ok(()));
    }

    #[test]
    fn reads_overlapping_a_put_may_see_either_value() {
        let h = history(vec![
            (0, 0, Some(10), put("x", 1), Output::Ok),
            (1, 5, Some(15), get("x"), Output::Value(Some(1))),
            (2, 2, Some(8), get("x"), Output::Value(None)),
            (3, 20, Some(30), get("x"), Output::Value(Some(1))),
            (3, 40, Some(50), get("never-written"), Output::Value(None)),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn unknown_put_may_take_effect_late_or_never() {
        let observed = history(vec![
            (0, 0, None, put("x", 1), Output::Unknown),
            (1, 100, Some(110), get("x"), Output::Value(None)),
            (1, 120, Some(130), get("x"), Output::Value(Some(1))),
            (2, 140, Some(150), get("x"), Output::Value(Some(1))),
            (2, 160, None, get("x"), Output::Unknown),
        ]);
        assert_eq!(check(&observed), Ok(()));
        let never = history(vec![
            (0, 0, None, put("x", 1), Output::Unknown),
            (1, 100, Some(110), get("x"), Output::Value(None)),
            (1, 200, Some(210), put("x", 2), Output::Ok),
            (2, 300, Some(310), get("x"), Output::Value(Some(2))),
        ]);
        assert_eq!(check(&never), Ok(()));
    }

    #[test]
    fn unknown_put_takes_effect_at_most_once() {
        let h = history(vec![
            (0, 0, None, put("x", 1), Output::Unknown),
            (1, 10, Some(20), get("x"), Output::Value(Some(1))),
            (1, 30, Some(40), put("x", 2), Output::Ok),
            (2, 50, Some(60), get("x"), Output::Value(Some(1))),
        ]);
        assert_culprit(&h, 3);
    }

    #[test]
    fn multi_get_may_see_a_consistent_snapshot_of_concurrent_puts() {
        // b=1 takes effect before the snapshot, a=1 after it.
        let h = history(vec![
            (0, 0, Some(10), put("a", 1), Output::Ok),
            (1, 0, Some(10), put("b", 1), Output::Ok),
            (
                2,
                5,
                Some(15),
                mget(&["a", "b"]),
                Output::Values(vec![None, Some(1)]),
            ),
            (
                2,
                20,
                Some(30),
                mget(&["b", "a"]),
                Output::Values(vec![Some(1), Some(1)]),
            ),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = history(vec![
            (0, 0, Some(10), put("x", 1), Output::Ok),
            (1, 20, Some(30), get("x"), Output::Value(None)),
        ]);
        let msg = assert_culprit(&h, 1);
        assert!(
            msg.contains("get(x) -> absent") && msg.contains("x=1"),
            "{msg}"
        );
    }

    #[test]
    fn read_read_inversion_is_rejected() {
        // A sees put(x,2) (still in flight) took effect; B, starting after A returned, sees 1.
        let h = history(vec![
            (0, 0, Some(10), put("x", 1), Output::Ok),
            (0, 20, Some(100), put("x", 2), Output::Ok),
            (1, 30, Some(40), get("x"), Output::Value(Some(2))),
            (2, 50, Some(60), get("x"), Output::Value(Some(1))),
        ]);
        assert_culprit(&h, 3);
    }

    #[test]
    fn multi_get_of_a_state_that_never_existed_is_rejected() {
        // a=1 completes before b=1 starts, so whenever b=1 holds, a=1 holds too.
        let h = history(vec![
            (0, 0, Some(10), put("a", 1), Output::Ok),
            (0, 20, Some(30), put("b", 1), Output::Ok),
            (
                1,
                25,
                Some(40),
                mget(&["a", "b"]),
                Output::Values(vec![None, Some(1)]),
            ),
        ]);
        let msg = assert_culprit(&h, 2);
        assert!(msg.contains("multi_get(a, b) -> [absent, 1]"), "{msg}");
    }

    #[test]
    fn value_never_written_is_rejected() {
        let h = history(vec![
            (0, 0, Some(10), put("x", 1), Output::Ok),
            (1, 20, Some(30), get("x"), Output::Value(Some(7))),
        ]);
        let msg = assert_culprit(&h, 1);
        assert!(msg.contains("no put of 7"), "{msg}");
        // Written, but only after the read returned.
        let h = history(vec![
            (1, 0, Some(10), get("x"), Output::Value(Some(1))),
            (0, 20, Some(30), put("x", 1), Output::Ok),
        ]);
        assert_culprit(&h, 0);
    }

    #[test]
    fn independent_keys_are_checked_separately() {
        let h = history(vec![
            (0, 0, Some(10), put("x", 1), Output::Ok),
            (1, 0, Some(10), put("y", 1), Output::Ok),
            (0, 20, Some(30), put("y", 2), Output::Ok),
            (1, 20, Some(30), get("x"), Output::Value(Some(1))),
            (2, 40, Some(50), get("y"), Output::Value(Some(1))),
        ]);
        let msg = assert_culprit(&h, 4);
        assert!(msg.contains("y=2") && !msg.contains("x="), "{msg}");
    }

    #[test]
    fn malformed_entries_are_reported() {
        let h = history(vec![(0, 0, Some(10), put("x", 1), Output::Value(None))]);
        assert!(matches!(check(&h), Err(Violation::Malformed { .. })));
        let h = history(vec![(0, 0, None, get("x"), Output::Value(None))]);
        assert!(matches!(check(&h), Err(Violation::Malformed { .. })));
        let h = history(vec![(0, 10, Some(5), get("x"), Output::Value(None))]);
        assert!(matches!(check(&h), Err(Violation::Malformed { .. })));
        let h = history(vec![(
            0,
            0,
            Some(5),
            mget(&["a", "b"]),
            Output::Values(vec![None]),
        )]);
        assert!(matches!(check(&h), Err(Violation::Malformed { .. })));
    }

    #[test]
    fn search_limit_is_reported() {
        let h = history(vec![
            (0, 0, Some(10), put("x", 1), Output::Ok),
            (1, 0, Some(10), put("x", 2), Output::Ok),
            (2, 20, Some(30), get("x"), Output::Value(Some(2))),
        ]);
        assert_eq!(check_bounded(&h, 3), Ok(()));
        match check_bounded(&h, 1) {
            Err(Violation::SearchLimit {
                states_max: 1,
                ops: 3,
                keys,
            }) => assert_eq!(keys, vec!["x".to_owned()]),
            other => panic!("expected SearchLimit, got {other:?}"),
        }
    }
}
