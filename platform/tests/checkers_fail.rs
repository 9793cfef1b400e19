//! Every checker of `sim::checkers` can fail and can pass. For each checker, a small
//! hand-made history breaks exactly that checker's property (every other checker accepts
//! it), and a corrected variant of the same history passes all checkers.
//!
//! In every view here the members are listed in node order (A, B, C, D are nodes 0-3,
//! incarnation 1), so a member's rank is its node id.

use std::sync::Arc;

use squall_platform::sim::checkers::{self, CHECKERS, Violation};
use squall_platform::sim::history::{Event, History, PayloadId, StateDigest, UNKNOWN_PAYLOAD};
use squall_platform::{
    DeliveryKind, DeliveryMode, MemberId, SendTicket, ShardView, StopReason, Version, View, ViewId,
};

const A: MemberId = MemberId::new(0, 1);
const B: MemberId = MemberId::new(1, 1);
const C: MemberId = MemberId::new(2, 1);
const D: MemberId = MemberId::new(3, 1);

type Check = fn(&History) -> Result<(), Violation>;

// ----- views -----------------------------------------------------------------------------

fn shard(members: &[MemberId], mode: DeliveryMode) -> ShardView {
    ShardView {
        members: members.to_vec(),
        mode,
        joined: Vec::new(),
        state_source: None,
    }
}

/// View `id` over `members`, with one subgroup of one shard that holds all of them.
fn view(id: ViewId, members: &[MemberId], mode: DeliveryMode) -> Arc<View> {
    Arc::new(View {
        id,
        members: members.to_vec(),
        joined: if id == 0 {
            members.to_vec()
        } else {
            Vec::new()
        },
        failed: Vec::new(),
        left: Vec::new(),
        shards: vec![vec![shard(members, mode)]],
    })
}

fn ordered(id: ViewId, members: &[MemberId]) -> Arc<View> {
    view(id, members, DeliveryMode::Ordered)
}

// ----- messages --------------------------------------------------------------------------

/// One multicast in subgroup 0, shard 0.
#[derive(Clone, Copy, Debug)]
struct Msg {
    view_id: ViewId,
    sender: MemberId,
    /// Index in the sender's stream of the view; also its send ticket (all sends here
    /// start in the view they are delivered in).
    index: u64,
    payload: PayloadId,
    /// `None` in raw mode.
    version: Option<Version>,
}

/// `sender`'s `index`-th message of `view`, with the version of its round-robin slot.
fn msg(view: &View, sender: MemberId, index: u64, payload: PayloadId) -> Msg {
    let rank = view.rank_of(sender).expect("the sender is a member") as u64;
    let slot = index * view.members.len() as u64 + rank;
    let version = match view.shards[0][0].mode {
        DeliveryMode::Ordered => Some(Version::new(view.id, slot as u32)),
        DeliveryMode::Raw => None,
    };
    Msg {
        view_id: view.id,
        sender,
        index,
        payload,
        version,
    }
}

// ----- histories -------------------------------------------------------------------------

/// Builds a history event by event; every event is 100 µs after the previous one.
struct Run {
    history: History,
    now_us: u64,
}

impl Run {
    fn new() -> Self {
        Run {
            history: History::new(7),
            now_us: 0,
        }
    }

    fn event(&mut self, make: impl FnOnce(u64) -> Event) -> &mut Self {
        self.now_us += 100;
        self.history.push(make(self.now_us));
        self
    }

    fn install(&mut self, view: &Arc<View>, members: &[MemberId]) -> &mut Self {
        for member in members {
            self.event(|at_us| Event::Installed {
                at_us,
                member: *member,
                view: Arc::clone(view),
            });
        }
        self
    }

    fn send_as(&mut self, m: &Msg, probe: bool) -> &mut Self {
        self.event(|at_us| Event::Sent {
            at_us,
            member: m.sender,
            subgroup: 0,
            ticket: SendTicket(m.index),
            payload: m.payload,
            len: 1024,
            probe,
        })
    }

    fn send(&mut self, m: &Msg) -> &mut Self {
        self.send_as(m, false)
    }

    fn arrive(&mut self, m: &Msg, receivers: &[MemberId]) -> &mut Self {
        for member in receivers {
            self.event(|at_us| Event::Arrived {
                at_us,
                member: *member,
                from: m.sender,
                view_id: m.view_id,
                subgroup: 0,
                first_index: m.index,
                count: 1,
            });
        }
        self
    }

    fn deliver(&mut self, m: &Msg, members: &[MemberId]) -> &mut Self {
        for member in members {
            self.event(|at_us| Event::Delivered {
                at_us,
                member: *member,
                view_id: m.view_id,
                subgroup: 0,
                shard: 0,
                sender: m.sender,
                sender_index: m.index,
                version: m.version,
                kind: match m.version {
                    Some(_) => DeliveryKind::Stable,
                    None => DeliveryKind::Raw,
                },
                payload: m.payload,
                ticket: (*member == m.sender).then_some(SendTicket(m.index)),
            });
        }
        self
    }

    /// Sent, received by the rest of `shard`, then delivered by all of it.
    fn multicast(&mut self, m: &Msg, shard: &[MemberId]) -> &mut Self {
        let others: Vec<MemberId> = shard.iter().copied().filter(|x| *x != m.sender).collect();
        self.send(m).arrive(m, &others).deliver(m, shard)
    }

    fn persist(&mut self, members: &[MemberId], version: Version) -> &mut Self {
        for member in members {
            self.event(|at_us| Event::Persisted {
                at_us,
                member: *member,
                subgroup: 0,
                version,
            });
        }
        self
    }

    fn global_persisted(&mut self, member: MemberId, version: Version) -> &mut Self {
        self.event(|at_us| Event::GlobalPersisted {
            at_us,
            member,
            subgroup: 0,
            version,
        })
    }

    fn log_trim(&mut self, member: MemberId, view_id: ViewId, received: &[u64]) -> &mut Self {
        self.event(|at_us| Event::TrimLogged {
            at_us,
            member,
            view_id,
            subgroup: 0,
            received: received.to_vec(),
        })
    }

    fn apply_trim(&mut self, member: MemberId, view_id: ViewId, received: &[u64]) -> &mut Self {
        self.event(|at_us| Event::Trimmed {
            at_us,
            member,
            view_id,
            subgroup: 0,
            shard: 0,
            received: received.to_vec(),
        })
    }

    /// `member` asks read `ticket` of subgroup 0 shard 0 in view `view_id`.
    fn ask_read(&mut self, member: MemberId, view_id: ViewId, ticket: u64) -> &mut Self {
        self.event(|at_us| Event::ReadRequested {
            at_us,
            member,
            ticket,
            view_id,
            subgroup: 0,
            shard: 0,
        })
    }

    /// ... and its core answers it in view `view_id` with `barrier`.
    fn answer_read(
        &mut self,
        member: MemberId,
        view_id: ViewId,
        ticket: u64,
        barrier: Option<Version>,
    ) -> &mut Self {
        self.event(|at_us| Event::ReadBarrier {
            at_us,
            member,
            ticket,
            view_id,
            subgroup: 0,
            shard: 0,
            barrier,
        })
    }

    /// A read asked and answered at once (ticket 0).
    fn read_barrier(
        &mut self,
        member: MemberId,
        view_id: ViewId,
        barrier: Option<Version>,
    ) -> &mut Self {
        self.ask_read(member, view_id, 0)
            .answer_read(member, view_id, 0, barrier)
    }

    fn finish(&mut self, live: &[MemberId], converged: bool) -> History {
        self.event(|at_us| Event::Finished {
            at_us,
            live: live.to_vec(),
            converged,
        });
        std::mem::take(&mut self.history)
    }
}

// ----- assertions ------------------------------------------------------------------------

/// `check` rejects `history` under its own name, with a message naming every fragment,
/// and every other checker accepts it: the history breaks exactly one property.
fn assert_fails(check: Check, name: &str, history: &History, fragments: &[&str]) {
    let violation = match check(history) {
        Err(v) => v,
        Ok(()) => panic!("{name} accepted a history that breaks it"),
    };
    assert_eq!(violation.checker, name, "{violation}");
    for fragment in fragments {
        assert!(
            violation.message.contains(fragment),
            "{name}'s message lacks {fragment:?}: {}",
            violation.message
        );
    }
    for (other, other_check) in CHECKERS {
        if *other != name {
            assert_eq!(
                other_check(history),
                Ok(()),
                "{other} also rejects the history built to break only {name}"
            );
        }
    }
}

/// `check`, and every other checker, accepts the corrected `history`.
fn assert_passes(check: Check, history: &History) {
    assert_eq!(check(history), Ok(()));
    assert_eq!(checkers::check_all(history), Ok(()));
}

// ----- one test per checker --------------------------------------------------------------

#[test]
fn every_checker_has_a_failing_test() {
    let names: Vec<&str> = CHECKERS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "view_agreement",
            "total_order",
            "sender_fifo",
            "same_delivered_set_per_view",
            "stability_before_delivery",
            "no_invention_or_duplication",
            "trim_consistency",
            "no_split_brain",
            "persistence_frontier",
            "state_transfer",
            "restart_recovery",
            "read_barrier",
            "liveness_after_heal",
        ],
        "a checker was added or renamed: give it a test here"
    );
}

#[test]
fn view_agreement() {
    let v0 = ordered(0, &[A, B, C]);
    let m = msg(&v0, A, 0, 0);

    // B installs a view 0 with other ranks than A and C.
    let with_b_view = |b_view: &Arc<View>| {
        Run::new()
            .install(&v0, &[A])
            .install(b_view, &[B])
            .install(&v0, &[C])
            .multicast(&m, &[A, B, C])
            .finish(&[A, B, C], true)
    };
    let reordered = ordered(0, &[B, A, C]);
    let bad = with_b_view(&reordered);
    assert_fails(
        checkers::view_agreement,
        "view_agreement",
        &bad,
        &["n1.1 installed view 0 as"],
    );
    assert_passes(checkers::view_agreement, &with_b_view(&v0));

    // A skips view 1.
    let v1 = ordered(1, &[A, B, C]);
    let v2 = ordered(2, &[A, B, C]);
    let with_a_in_v1 = |a_in_v1: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C]).multicast(&m, &[A, B, C]);
        if a_in_v1 {
            run.install(&v1, &[A]);
        }
        run.install(&v1, &[B, C])
            .install(&v2, &[A, B, C])
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::view_agreement,
        "view_agreement",
        &with_a_in_v1(false),
        &["n0.1 installed view 2 right after view 0"],
    );
    assert_passes(checkers::view_agreement, &with_a_in_v1(true));
}

#[test]
fn total_order() {
    let v0 = ordered(0, &[A, B, C]);
    let first = msg(&v0, A, 0, 0);
    let second = msg(&v0, B, 0, 1);
    // A and B deliver `first` then `second`; C delivers in `c_order`, numbering as it goes.
    let with_c_order = |c_order: [Msg; 2]| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .send(&first)
            .send(&second)
            .arrive(&first, &[B, C])
            .arrive(&second, &[A, C])
            .deliver(&first, &[A, B])
            .deliver(&second, &[A, B]);
        for (seq, m) in c_order.iter().enumerate() {
            let numbered = Msg {
                version: Some(Version::new(0, seq as u32)),
                ..*m
            };
            run.deliver(&numbered, &[C]);
        }
        run.finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::total_order,
        "total_order",
        &with_c_order([second, first]),
        &["payload #1 delivered as v0:1 and as v0:0 (at n2.1)"],
    );
    assert_passes(checkers::total_order, &with_c_order([first, second]));
}

#[test]
fn sender_fifo() {
    // Raw mode: no versions, so only sender order is promised (and checked).
    let v0 = view(0, &[A, B, C], DeliveryMode::Raw);
    let first = msg(&v0, A, 0, 0);
    let second = msg(&v0, A, 1, 1);
    let with_c_order = |c_order: [Msg; 2]| {
        Run::new()
            .install(&v0, &[A, B, C])
            .send(&first)
            .send(&second)
            .arrive(&first, &[B, C])
            .arrive(&second, &[B, C])
            .deliver(&first, &[A, B])
            .deliver(&second, &[A, B])
            .deliver(&c_order[0], &[C])
            .deliver(&c_order[1], &[C])
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::sender_fifo,
        "sender_fifo",
        &with_c_order([second, first]),
        &["n2.1 delivered n0.1's send #0 after its send #1"],
    );
    assert_passes(checkers::sender_fifo, &with_c_order([first, second]));
}

#[test]
fn same_delivered_set_per_view() {
    let v0 = ordered(0, &[A, B, C]);
    let v1 = ordered(1, &[A, B, C]);
    let m = msg(&v0, A, 0, 0);

    // C received the message but moves to view 1 without delivering it.
    let with_c_delivering = |c_delivers: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .send(&m)
            .arrive(&m, &[B, C])
            .deliver(&m, &[A, B]);
        if c_delivers {
            run.deliver(&m, &[C]);
        }
        run.install(&v1, &[A, B, C]).finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::same_delivered_set_per_view,
        "same_delivered_set_per_view",
        &with_c_delivering(false),
        &["view 0 subgroup 0 shard 0: n0.1 and n2.1 delivered different sets"],
    );
    assert_passes(
        checkers::same_delivered_set_per_view,
        &with_c_delivering(true),
    );

    // C delivers the view-0 message only after installing view 1.
    let late = Run::new()
        .install(&v0, &[A, B, C])
        .send(&m)
        .arrive(&m, &[B, C])
        .deliver(&m, &[A, B])
        .install(&v1, &[A, B, C])
        .deliver(&m, &[C])
        .finish(&[A, B, C], true);
    assert_fails(
        checkers::same_delivered_set_per_view,
        "same_delivered_set_per_view",
        &late,
        &["n2.1 delivered a view-0 message while in view"],
    );
}

#[test]
fn stability_before_delivery() {
    let v0 = ordered(0, &[A, B, C]);
    let m = msg(&v0, A, 0, 0);
    let with_c_receiving_first = |c_first: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C]).send(&m).arrive(&m, &[B]);
        if c_first {
            run.arrive(&m, &[C]).deliver(&m, &[A, B, C]);
        } else {
            run.deliver(&m, &[A, B, C]).arrive(&m, &[C]);
        }
        run.finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::stability_before_delivery,
        "stability_before_delivery",
        &with_c_receiving_first(false),
        &[
            "n0.1 delivered (Stable) n0.1's message #0 of view 0",
            "before n2.1 had received it",
        ],
    );
    assert_passes(
        checkers::stability_before_delivery,
        &with_c_receiving_first(true),
    );
}

#[test]
fn no_invention_or_duplication() {
    let v0 = ordered(0, &[A, B, C]);
    let m = msg(&v0, A, 0, 0);

    // A second message of A's stream is delivered everywhere, but its buffer is not one
    // that A sent (a copy, or made up).
    let with_second = |sent: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C]).multicast(&m, &[A, B, C]);
        let second = if sent {
            let second = msg(&v0, A, 1, 1);
            run.send(&second);
            second
        } else {
            msg(&v0, A, 1, UNKNOWN_PAYLOAD)
        };
        run.arrive(&second, &[B, C])
            .deliver(&second, &[A, B, C])
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::no_invention_or_duplication,
        "no_invention_or_duplication",
        &with_second(false),
        &["n0.1 delivered a payload nobody sent", "from n0.1"],
    );
    assert_passes(checkers::no_invention_or_duplication, &with_second(true));

    // A duplicate also breaks sender FIFO (and total order when ordered), so only this
    // checker's verdict is asserted.
    let raw = view(0, &[A, B, C], DeliveryMode::Raw);
    let r = msg(&raw, A, 0, 0);
    let twice = Run::new()
        .install(&raw, &[A, B, C])
        .multicast(&r, &[A, B, C])
        .deliver(&r, &[C])
        .finish(&[A, B, C], true);
    match checkers::no_invention_or_duplication(&twice) {
        Err(v) => {
            assert_eq!(v.checker, "no_invention_or_duplication");
            assert!(v.message.contains("n2.1 delivered payload #0 twice"), "{v}");
        }
        Ok(()) => panic!("a duplicate delivery was accepted"),
    }
}

#[test]
fn trim_consistency() {
    let v0 = ordered(0, &[A, B, C]);
    let v1 = ordered(1, &[A, B, C]);
    let m = msg(&v0, A, 0, 0);
    let agreed = [1, 0, 0];
    // View 0 ends with a trim; C logs `c_logged` and applies `c_applied`.
    let with_c_trim = |c_logged: Option<&[u64]>, c_applied: &[u64]| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C]).multicast(&m, &[A, B, C]);
        for member in [A, B] {
            run.log_trim(member, 0, &agreed)
                .apply_trim(member, 0, &agreed);
        }
        if let Some(logged) = c_logged {
            run.log_trim(C, 0, logged);
        }
        run.apply_trim(C, 0, c_applied)
            .install(&v1, &[A, B, C])
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::trim_consistency,
        "trim_consistency",
        &with_c_trim(Some(&[0, 0, 0]), &[0, 0, 0]),
        &["view 0 subgroup 0 shard 0: n0.1 applied trim [1, 0, 0], n2.1 applied [0, 0, 0]"],
    );
    assert_fails(
        checkers::trim_consistency,
        "trim_consistency",
        &with_c_trim(None, &agreed),
        &["n2.1 applied trim [1, 0, 0] of view 0 subgroup 0 before logging it"],
    );
    assert_passes(
        checkers::trim_consistency,
        &with_c_trim(Some(&agreed), &agreed),
    );
}

#[test]
fn no_split_brain() {
    let v0 = ordered(0, &[A, B, C, D]);
    let m = msg(&v0, A, 0, 0);
    // D crashes; C crashes too (bad) or leaves gracefully (good), and A and B go on alone.
    let with_c_leaving = |c_leaves: bool| {
        let v1 = Arc::new(View {
            failed: if c_leaves { vec![D] } else { vec![C, D] },
            left: if c_leaves { vec![C] } else { Vec::new() },
            ..(*ordered(1, &[A, B])).clone()
        });
        let mut run = Run::new();
        run.install(&v0, &[A, B, C, D])
            .multicast(&m, &[A, B, C, D])
            .event(|at_us| Event::Crashed { at_us, member: D });
        if c_leaves {
            run.install(&v1, &[A, B]).event(|at_us| Event::Stopped {
                at_us,
                member: C,
                reason: StopReason::Left,
            });
        } else {
            run.event(|at_us| Event::Crashed { at_us, member: C })
                .install(&v1, &[A, B]);
        }
        run.finish(&[A, B], true)
    };
    assert_fails(
        checkers::no_split_brain,
        "no_split_brain",
        &with_c_leaving(false),
        &["view 1 was installed with only 2 of view 0's 4 members"],
    );
    assert_passes(checkers::no_split_brain, &with_c_leaving(true));
}

#[test]
fn persistence_frontier() {
    let v0 = ordered(0, &[A, B, C]);
    let first = msg(&v0, A, 0, 0);
    let second = msg(&v0, B, 0, 1);
    let (v00, v01) = (Version::new(0, 0), Version::new(0, 1));
    // Everyone delivers both messages; `durable_at` persist them, then A reports `frontiers`.
    let with = |durable_at: &[MemberId], frontiers: &[Version]| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .multicast(&first, &[A, B, C])
            .multicast(&second, &[A, B, C])
            .persist(durable_at, v01);
        for frontier in frontiers {
            run.global_persisted(A, *frontier);
        }
        run.finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::persistence_frontier,
        "persistence_frontier",
        &with(&[A, B], &[v01]),
        &["n0.1 reported v0:1 durable everywhere, but n2.1 had not persisted it"],
    );
    assert_fails(
        checkers::persistence_frontier,
        "persistence_frontier",
        &with(&[A, B, C], &[v01, v00]),
        &["n0.1's frontier in subgroup 0 went from v0:1 to v0:0"],
    );
    assert_passes(
        checkers::persistence_frontier,
        &with(&[A, B, C], &[v00, v01]),
    );
}

/// What A and B hold after the one message of view 0 in [`c_joins_in_view_1`].
const HELD: StateDigest = StateDigest {
    applied: 1,
    chain: 42,
};

/// C joins the shard in view 1 and receives its state from A, which (like B) applied one
/// message in view 0 ([`HELD`]): the run up to C's install, with every member's state at
/// install. The caller adds C's `StateReceived` (and what goes around it).
fn c_joins_in_view_1() -> Run {
    let v0 = ordered(0, &[A, B]);
    let m = msg(&v0, A, 0, 0);
    let v1 = Arc::new(View {
        joined: vec![C],
        shards: vec![vec![ShardView {
            joined: vec![C],
            state_source: Some(A),
            ..shard(&[A, B, C], DeliveryMode::Ordered)
        }]],
        ..(*ordered(1, &[A, B, C])).clone()
    });
    let mut run = Run::new();
    run.install(&v0, &[A, B])
        .multicast(&m, &[A, B])
        .install(&v1, &[A, B, C]);
    for (member, digest) in [(A, HELD), (B, HELD), (C, StateDigest::default())] {
        run.event(|at_us| Event::StateAtInstall {
            at_us,
            member,
            view_id: 1,
            subgroup: 0,
            digest,
        });
    }
    run
}

#[test]
fn state_transfer() {
    let with_received = |received: StateDigest| {
        let mut run = c_joins_in_view_1();
        run.event(|at_us| Event::StateReceived {
            at_us,
            member: C,
            view_id: 1,
            subgroup: 0,
            digest: received,
        })
        .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::state_transfer,
        "state_transfer",
        &with_received(StateDigest::default()),
        &[
            "n2.1 received StateDigest { applied: 0, chain: 0 } in view 1",
            "but n0.1 held StateDigest { applied: 1, chain: 42 }",
        ],
    );
    assert_passes(checkers::state_transfer, &with_received(HELD));
}

#[test]
fn read_barrier() {
    let v0 = ordered(0, &[A, B, C]);
    let first = msg(&v0, A, 0, 0);
    let second = msg(&v0, B, 0, 1);
    let (v00, v01) = (Version::new(0, 0), Version::new(0, 1));
    // Both messages reach everyone; A delivers them, then C asks for its barrier, then B
    // and C deliver.
    let with_c_barrier = |barrier: Option<Version>| {
        Run::new()
            .install(&v0, &[A, B, C])
            .send(&first)
            .arrive(&first, &[B, C])
            .send(&second)
            .arrive(&second, &[A, C])
            .deliver(&first, &[A])
            .deliver(&second, &[A])
            .read_barrier(C, 0, barrier)
            .deliver(&first, &[B, C])
            .deliver(&second, &[B, C])
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &with_c_barrier(None),
        &[
            "n2.1 got read barrier none of view 0 subgroup 0 shard 0",
            "but n0.1 had delivered (Stable) v0:0",
            "and n2.1 had not",
        ],
    );
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &with_c_barrier(Some(v00)),
        &[
            "n2.1 got read barrier v0:0 of view 0",
            "n0.1 had delivered (Stable) v0:1",
        ],
    );
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &with_c_barrier(Some(Version::new(1, 5))),
        &["n2.1 answered read 0 in view 0 with barrier v1:5: a version of another view"],
    );
    assert_passes(checkers::read_barrier, &with_c_barrier(Some(v01)));

    // What C delivered before asking needs no cover; what it delivers later does.
    let with_c_delivering_first = |c_first: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .multicast(&first, &[A, B, C])
            .send(&second)
            .arrive(&second, &[A, C])
            .deliver(&second, &[A]);
        if c_first {
            run.deliver(&second, &[C]).read_barrier(C, 0, None);
        } else {
            run.read_barrier(C, 0, None).deliver(&second, &[C]);
        }
        run.deliver(&second, &[B]).finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &with_c_delivering_first(false),
        &[
            "n2.1 got read barrier none",
            "n0.1 had delivered (Stable) v0:1",
        ],
    );
    assert_passes(checkers::read_barrier, &with_c_delivering_first(true));

    // Events at the same `at_us` are ordered by the history: a barrier recorded before a
    // delivery at the same instant need not cover it, one recorded after must.
    let same_instant = |barrier_first: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .send(&first)
            .arrive(&first, &[B, C]);
        let mut history = run
            .deliver(&first, &[A])
            .read_barrier(C, 0, None)
            .deliver(&first, &[B, C])
            .finish(&[A, B, C], true);
        let at = |e: &Event| matches!(e, Event::ReadRequested { .. });
        let i = history.events.iter().position(at).expect("recorded");
        let now_us = history.events[i].at_us();
        if let Event::Delivered { at_us, .. } = &mut history.events[i - 1] {
            *at_us = now_us;
        }
        if barrier_first {
            history.events.swap(i - 1, i);
        }
        history
    };
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &same_instant(false),
        &["at 800 us, but n0.1 had delivered (Stable) v0:0 at 800 us"],
    );
    assert_passes(checkers::read_barrier, &same_instant(true));

    // A barrier must come from the member's current view.
    let v1 = ordered(1, &[A, B, C]);
    let in_view = |view_id: ViewId| {
        Run::new()
            .install(&v0, &[A, B, C])
            .multicast(&first, &[A, B, C])
            .install(&v1, &[A, B, C])
            .read_barrier(C, view_id, None)
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &in_view(0),
        &["n2.1 asked read 0 in view 0 at", "while in view Some(1)"],
    );
    assert_passes(checkers::read_barrier, &in_view(1));

    // A read asked after the others delivered what C has not: answered in the same view
    // without covering it, it fails; answered in the next view, the install covers it.
    let cut_off = |answer_view: ViewId| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .send(&first)
            .arrive(&first, &[B, C])
            .deliver(&first, &[A, B])
            .ask_read(C, 0, 7);
        if answer_view == 1 {
            run.deliver(&first, &[C]).install(&v1, &[A, B, C]);
        }
        run.answer_read(C, answer_view, 7, None)
            .finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &cut_off(0),
        &[
            "n2.1 got read barrier none of view 0",
            "for read 7 asked at",
            "n0.1 had delivered (Stable) v0:0",
        ],
    );
    assert_passes(checkers::read_barrier, &cut_off(1));
    // An answer to a read nobody asked is a bug too.
    let unasked = Run::new()
        .install(&v0, &[A, B, C])
        .answer_read(C, 0, 3, None)
        .finish(&[A, B, C], true);
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &unasked,
        &["n2.1 answered read 3 at", "never asked"],
    );
}

/// The state a shard's application reaches by applying `payloads` in order (the
/// simulator's and the node program's digest).
fn replay(payloads: &[PayloadId]) -> StateDigest {
    let mut digest = StateDigest::default();
    for p in payloads {
        digest.apply(*p);
    }
    digest
}

#[test]
fn restart_recovery() {
    let v0 = ordered(0, &[A, B, C]);
    let m1 = msg(&v0, A, 0, 0);
    let m2 = msg(&v0, B, 0, 1);
    let (v1_0, v2_0) = (m1.version.expect("ordered"), m2.version.expect("ordered"));
    let back = [
        MemberId::new(0, 2),
        MemberId::new(1, 2),
        MemberId::new(2, 2),
    ];
    // Everyone stops; B and C had made m2 durable, A only m1. The group restarts as view
    // 1 from `source`'s log, whose state is `digest`.
    let with_source = |source: MemberId, digest: StateDigest| {
        let restart = Arc::new(View {
            id: 1,
            members: back.to_vec(),
            joined: back.to_vec(),
            failed: Vec::new(),
            left: Vec::new(),
            shards: vec![vec![ShardView {
                members: back.to_vec(),
                mode: DeliveryMode::Ordered,
                joined: back.iter().copied().filter(|m| *m != source).collect(),
                state_source: Some(source),
            }]],
        });
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .multicast(&m1, &[A, B, C])
            .multicast(&m2, &[A, B, C])
            .persist(&[A], v1_0)
            .persist(&[B, C], v2_0);
        for member in [A, B, C] {
            run.event(|at_us| Event::Crashed { at_us, member });
        }
        run.install(&restart, &back);
        for member in back {
            let mine = if member == source {
                digest
            } else {
                StateDigest::default()
            };
            run.event(|at_us| Event::StateAtInstall {
                at_us,
                member,
                view_id: 1,
                subgroup: 0,
                digest: mine,
            });
        }
        for member in back.into_iter().filter(|m| *m != source) {
            run.event(|at_us| Event::StateReceived {
                at_us,
                member,
                view_id: 1,
                subgroup: 0,
                digest,
            });
        }
        run.finish(&back, true)
    };
    // Restarting from A's shorter log loses m2, which B and C had made durable.
    assert_fails(
        checkers::restart_recovery,
        "restart_recovery",
        &with_source(back[0], replay(&[0])),
        &[
            "restart view 1 restarts subgroup 0 shard 0 from 1 messages",
            "v0:1 (message 2) had to survive: n1.1, a holder of the shard in the last view",
        ],
    );
    // A state that is not a prefix of the delivery order is refused too.
    assert_fails(
        checkers::restart_recovery,
        "restart_recovery",
        &with_source(back[1], replay(&[1, 0])),
        &["n1.2's state of subgroup 0 shard 0 is not the first 2 deliveries"],
    );
    assert_passes(
        checkers::restart_recovery,
        &with_source(back[1], replay(&[0, 1])),
    );
}

#[test]
fn liveness_after_heal() {
    let v0 = ordered(0, &[A, B, C]);
    let m = msg(&v0, A, 0, 0);
    let probe = msg(&v0, A, 1, 1);
    // After the heal, A's probe reaches A and B; C receives it and delivers it or not.
    let with = |c_delivers: bool, converged: bool| {
        let mut run = Run::new();
        run.install(&v0, &[A, B, C])
            .multicast(&m, &[A, B, C])
            .event(|at_us| Event::HealStarted { at_us })
            .send_as(&probe, true)
            .arrive(&probe, &[B, C])
            .deliver(&probe, &[A, B]);
        if c_delivers {
            run.deliver(&probe, &[C]);
        }
        run.finish(&[A, B, C], converged)
    };
    assert_fails(
        checkers::liveness_after_heal,
        "liveness_after_heal",
        &with(false, true),
        &["probe #1 from n0.1", "never reached n2.1"],
    );
    assert_fails(
        checkers::liveness_after_heal,
        "liveness_after_heal",
        &with(true, false),
        &["did not converge"],
    );
    assert_passes(checkers::liveness_after_heal, &with(true, true));
}

#[test]
fn read_barrier_at_a_joiner_waits_for_its_state() {
    // C answers a read before or after its state arrived.
    let with_read = |before_state: bool| {
        let mut run = c_joins_in_view_1();
        if before_state {
            run.read_barrier(C, 1, None);
        }
        run.event(|at_us| Event::StateReceived {
            at_us,
            member: C,
            view_id: 1,
            subgroup: 0,
            digest: HELD,
        });
        if !before_state {
            run.read_barrier(C, 1, None);
        }
        run.finish(&[A, B, C], true)
    };
    assert_fails(
        checkers::read_barrier,
        "read_barrier",
        &with_read(true),
        &[
            "n2.1 answered read 0",
            "in view 1, where it joined subgroup 0 shard 0, before that shard's state arrived",
        ],
    );
    assert_passes(checkers::read_barrier, &with_read(false));
}
