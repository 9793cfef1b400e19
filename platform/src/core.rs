//! The protocol core: one member's view of the group, as a state machine.
//!
//! Inputs are method calls (`handle_message`, `tick`, `send`, `suspect`, `persisted`,
//! `trim_persisted`, `supply_state`, `leave`); commands come out of `drain_outputs`.
//! The core performs no I/O, reads no clock (time arrives with `tick`) and draws no random
//! numbers, so a driver (tokio, or the simulator) fully determines its behaviour.
//!
//! Protocol outline (see ARCHITECTURE.md for the invariants):
//! - every member owns a [`Row`] of counters, pushed to every peer after its data;
//! - ordered multicast per shard: round-robin slots, nulls from idle senders, delivery
//!   up to the slot every member has received;
//! - view change: suspicion (gossiped through rows) wedges; the lowest unsuspected rank
//!   proposes (adopting any earlier leader's proposal unchanged), all unsuspected members
//!   acknowledge, the leader commits; each shard then agrees on a ragged trim (also adopted
//!   on shard-leader failover), logs it, delivers exactly it, persists, and installs the
//!   next view.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::config::{ConfigError, CoreConfig};
use crate::ids::{MemberId, NodeId, SendTicket, Version, ViewId};
use crate::layout::{DeliveryMode, Inadequate};
use crate::restart::{self, LoggedState, RestartPlan, ShardTail, restart_attempt, restart_ballot};
use crate::row::{Ballot, Change, Proposal, Row, ShardRow, Trim};
use crate::view::View;
use crate::wire::{DataRun, Item, Wire};

/// Pending join requests a leader holds; more are answered on the joiner's next retry.
pub const JOINS_PENDING_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// Ordered, delivered once every shard member had received it.
    Stable,
    /// Ordered, delivered by the ragged trim at the end of a view.
    Trim,
    /// Raw mode: delivered on receipt.
    Raw,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub view_id: ViewId,
    pub subgroup: u32,
    pub shard: u32,
    pub sender: MemberId,
    /// The message's index in its sender's stream for this view.
    pub sender_index: u64,
    /// `None` in raw mode.
    pub version: Option<Version>,
    pub kind: DeliveryKind,
    pub payload: Bytes,
    /// Set on the sender's own copy.
    pub ticket: Option<SendTicket>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// Another member suspects us, or a newer view excludes us.
    Evicted,
    /// Too many members are suspected for this side to hold a majority.
    MinorityPartition,
    /// We asked to leave and the group has installed a view without us.
    Left,
    /// The buffer of messages for views we have not installed overflowed.
    FellBehind,
    /// This node's log could not write ([`Core::storage_failed`]).
    StorageFailed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send over the FIFO link to `to` (only to that incarnation when given).
    Send {
        to: NodeId,
        incarnation: Option<u32>,
        msg: Wire,
    },
    Deliver(Delivery),
    /// Make every delivered version of `subgroup` up to `version` durable, then call
    /// [`Core::persisted`].
    Persist {
        subgroup: u32,
        version: Version,
    },
    /// Log this trim durably, then call [`Core::trim_persisted`]; the core uses it only then.
    PersistTrim {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        trim: Arc<Trim>,
    },
    /// The trim this member applies to end `view_id` in this shard.
    Trimmed {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        received: Vec<u64>,
    },
    /// Every current member of the shard has made `version` durable.
    GlobalPersisted {
        subgroup: u32,
        version: Version,
    },
    InstallView(Arc<View>),
    /// Call [`Core::supply_state`] with the application's state of this shard as of now
    /// (before anything of `view_id` is delivered); deliveries wait for it. A driver with
    /// a log ships the shard's log records after `joiners_hold` with it if its log holds
    /// that version (then the joiners' logs are prefixes of its own up to there: versions
    /// name the view they were delivered in, so a version is never reused for another
    /// message), else all of them, and says which. A large state may be supplied piece
    /// by piece ([`Core::supply_state_piece`]): deliveries wait only for the first.
    StateTransferRequest {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        joiners: Vec<MemberId>,
        /// Every joiner's log already holds this shard up to here (a total restart);
        /// `None`: the joiners' logs hold nothing of it that counts.
        joiners_hold: Option<Version>,
    },
    /// The joiners took in enough of the state supplied so far: call
    /// [`Core::supply_state_piece`] with the next piece of it (as of the start of
    /// `view_id`, whatever was delivered since).
    StateSupplyMore {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
    },
    /// Part `part` of the shard's state at the start of `view_id`: the parts, in order,
    /// concatenated, up to the `last`, are the state the source supplied. Call
    /// [`Core::state_part_applied`] once it is taken in: the source sends only
    /// [`CoreConfig::state_window_bytes`] ahead of that. Deliveries of the shard follow
    /// the last part.
    ReceiveState {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        part: u32,
        last: bool,
        /// With a log, the state says how far the receiver's log is kept (the source
        /// ships only what follows what the joiners hold, when its own log has that).
        state: Bytes,
    },
    /// Log durably that this member agreed to `next` (the view that a proposal to end
    /// `view_id` would install, or a restart plan's view), then call [`Core::ack_logged`].
    /// The agreement is published only then, so every view ever installed is known to the
    /// log of a majority of its predecessor: a total restart cannot miss it.
    LogAck {
        view_id: ViewId,
        ballot: Ballot,
        next: Arc<View>,
    },
    /// Log durably that this node promised restart ballot `ballot` (it will agree to no
    /// restart plan of a lower one, in any incarnation), then call [`Core::promise_logged`].
    LogPromise {
        ballot: Ballot,
    },
    /// The group restarts from logs with this plan (installed next): a driver truncates
    /// its log of each shard it is in to the shard's agreed trim, before anything else.
    Restart(Arc<RestartPlan>),
    /// Accepted sends that will never be multicast (we left the shard, or stopped).
    SendsAborted {
        subgroup: u32,
        tickets: Vec<SendTicket>,
    },
    /// The read asked for with [`Core::request_read`] may be served from local state
    /// once every delivery up to the version given is applied (`None`: at once, after
    /// the deliveries already output). An error: it cannot be served here.
    ReadReady {
        ticket: u64,
        /// The view the answer is relative to: the read is served in it (or later).
        view_id: ViewId,
        result: Result<Option<Version>, SendError>,
        /// Served under a read lease, without a probe round.
        leased: bool,
    },
    Stopped(StopReason),
}

/// A local read waiting for its probe round (see [`Core::request_read`]).
#[derive(Debug)]
struct PendingRead {
    ticket: u64,
    subgroup: u32,
    /// The newest ordered message received and not yet delivered when it was asked.
    barrier: Option<Version>,
}

/// Read probes: before a member serves local reads, a majority of its view confirms,
/// after the reads were asked, that it is still a member (see [`Core::request_read`]).
#[derive(Debug, Default)]
struct Reads {
    next_ticket: u64,
    /// Asked while a round was in flight: they need a round that starts after them.
    waiting: Vec<PendingRead>,
    /// Covered by the round in flight.
    probing: Vec<PendingRead>,
    /// The round in flight (or the last one); rounds only grow.
    round: u64,
    in_flight: bool,
    /// By rank, for the round in flight; my own rank counts.
    acks: Vec<bool>,
    /// By rank, the acks of the round in flight that came with a lease promise.
    lease_acks: Vec<bool>,
    /// When the round in flight went out (my clock), and in which view: a lease it
    /// earns runs from then.
    round_sent_ms: u64,
    round_view: ViewId,
    /// Reads are served at once, without a round, until then (my clock) in
    /// `lease_view`, while I am not wedged.
    lease_until_ms: u64,
    lease_view: Option<ViewId>,
    /// A round to renew the lease is wanted even with no read waiting.
    renew: bool,
    /// Asked where this member is new to its shard and the shard's state has not
    /// arrived: its replica holds nothing yet. Started once the state is in.
    after_state: Vec<(u64, u32)>,
}

/// A read lease I granted: `member` may serve local reads until `until_ms` (my clock),
/// so until then I agree to no view change of `view_id` unless its row shows it wedged
/// (it stopped serving from the lease).
#[derive(Debug, Clone, Copy)]
struct Promise {
    member: MemberId,
    view_id: ViewId,
    until_ms: u64,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SendError {
    #[error("no subgroup {subgroup} in the layout")]
    NoSuchSubgroup { subgroup: u32 },
    #[error("this member has no shard in subgroup {subgroup} in the current view")]
    NotMember { subgroup: u32 },
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("{pending} sends already pending in subgroup {subgroup} (limit {max}); retry later")]
    Backlogged {
        subgroup: u32,
        pending: usize,
        max: usize,
    },
    #[error("this member has not joined a view yet")]
    NotJoined,
    #[error("this member has stopped: {0:?}")]
    Stopped(StopReason),
}

#[derive(Debug)]
enum Phase {
    /// The first member gathering joiners until the layout is adequate for view 0.
    Founding {
        members: Vec<MemberId>,
    },
    Joining {
        contacts: Vec<NodeId>,
        next_contact: usize,
        last_attempt_ms: Option<u64>,
    },
    /// Back from a total stop with a log: looking for a live group, and reporting the log
    /// to the restart leaders (or, as one, gathering reports until the group can restart).
    Restarting(Box<Restarting>),
    Member,
    Stopped(StopReason),
}

#[derive(Debug)]
struct Restarting {
    /// The restart leaders in order of preference: one leads while it hears from no
    /// leader before it (see [`Core::restart`]).
    leaders: Vec<NodeId>,
    contacts: Vec<NodeId>,
    /// What this node reports: its log as found, then each agreement and promise once
    /// logged.
    logged: LoggedState,
    /// The highest restart ballot promised, logged or being logged: plans of a lower
    /// ballot are refused, and so is acknowledging one logged before the promise.
    promised: Option<Ballot>,
    /// Reports heard (leaders only): the newest incarnation of each node, with when.
    heard: Vec<(MemberId, LoggedState, u64)>,
    /// Since when the reports allow a restart (leaders only); reset when they stop.
    ready_since_ms: Option<u64>,
    last_hello_ms: Option<u64>,
    /// A plan this node agreed to (logging, or logged and acknowledged), with when.
    prepared: Option<(Arc<RestartPlan>, u64)>,
    /// Leader: the ballot claimed, whom it asked, the reports of those that promised it.
    claim: Option<Claim>,
    /// Leader: the plan proposed, who acknowledged it (logged), since when.
    proposing: Option<(Arc<RestartPlan>, Vec<MemberId>, u64)>,
    /// Leader: no new claim before then (my clock). An attempt that failed or was
    /// outranked waits a retry per place in the list of leaders, so that rivals do not
    /// outbid each other forever and the earlier leader gets there first.
    claim_after_ms: u64,
    /// Leader: why it has not restarted the group yet, for the driver to report.
    waiting: Option<RestartWait>,
    /// Leader: since when it has deferred to an earlier leader while what it hears allows
    /// a restart, without seeing that leader claim or plan (see [`restart_patience_ms`]).
    deferring_since_ms: Option<u64>,
}

/// Why a restart leader has not restarted the group yet ([`Core::restart_waiting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartWait {
    /// An earlier restart leader is back and restarting: it leads, unless it makes no
    /// attempt while this leader's reports allow a restart for longer than
    /// `restart_grace_ms + 4 × suspicion_timeout_ms` per place in the list.
    Deferring { leader: NodeId },
    /// The reports heard do not allow a restart yet.
    NotYet(restart::NotYet),
    /// They do; `restart_grace_ms` runs for the rest of the last view.
    Grace,
}

impl std::fmt::Display for RestartWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartWait::Deferring { leader } => {
                write!(f, "restart leader {leader} is back and leads")
            }
            RestartWait::NotYet(why) => write!(f, "{why}"),
            RestartWait::Grace => {
                write!(
                    f,
                    "a majority is back; waiting the restart grace for the others"
                )
            }
        }
    }
}

impl Restarting {
    /// Leader: wait before claiming again.
    fn back_off(&mut self, me: NodeId, now_ms: u64, retry_ms: u64) {
        let place = self.leaders.iter().position(|l| *l == me).unwrap_or(0) as u64;
        self.claim_after_ms = now_ms.saturating_add(retry_ms.saturating_mul(place + 1));
    }

    /// `leader` claimed or planned: if it comes before `me`, it is at work, and this
    /// leader's patience with it starts again.
    fn saw_attempt_by(&mut self, leader: NodeId, me: NodeId, now_ms: u64) {
        let place = |n: NodeId| self.leaders.iter().position(|l| *l == n);
        if let (Some(theirs), Some(mine)) = (place(leader), place(me))
            && theirs < mine
            && self.deferring_since_ms.is_some()
        {
            self.deferring_since_ms = Some(now_ms);
        }
    }
}

/// A restart leader's reports of the nodes back: its own log first, then what it heard.
/// (Fields, not the whole `Restarting`, so the rest of it stays free to change.)
fn restart_reports<'a>(
    me: MemberId,
    logged: &'a LoggedState,
    heard: &'a [(MemberId, LoggedState, u64)],
) -> Vec<(MemberId, &'a LoggedState)> {
    std::iter::once((me, logged))
        .chain(heard.iter().map(|(m, logged, _)| (*m, logged)))
        .collect()
}

/// How long a restart leader at `place` (0: the preferred one) defers to earlier leaders
/// it hears but never sees claim or plan, while what it hears allows a restart (an
/// earlier leader waiting for reports that this one waits for too is not stuck, and two
/// leaders claiming as soon as the reports allow would only outbid each other). An
/// earlier leader that hears too few to
/// restart (cut off from the others, which reach this one) would otherwise hold the
/// whole group back for as long as its links stay cut. Long enough for an earlier
/// leader that can restart the group to do it (its grace, then a few attempts), and one
/// such span per place, so that the next leader in line takes over first.
fn restart_patience_ms(grace_ms: u64, fresh_ms: u64, place: usize) -> u64 {
    grace_ms
        .saturating_add(fresh_ms.saturating_mul(4))
        .saturating_mul(place as u64)
}

/// A restart leader's first phase: before it makes a plan, the nodes it will be made from
/// promise its ballot durably and report their logs after promising. A plan of this
/// ballot is then made from reports that show every agreement a plan of a lower ballot
/// could have been committed with (Paxos' phase 1), so two leaders cannot restart the
/// group twice, differently.
#[derive(Debug)]
struct Claim {
    ballot: Ballot,
    asked: Vec<MemberId>,
    promises: Vec<(MemberId, LoggedState)>,
    since_ms: u64,
}

/// Multicast state of the one shard this member has in a subgroup, for the current view.
#[derive(Debug)]
struct ShardState {
    shard: usize,
    mode: DeliveryMode,
    members: Vec<MemberId>,
    /// View rank of each shard member.
    ranks: Vec<usize>,
    /// My index in `members` (my sender rank).
    me: usize,
    /// Received, not yet delivered, per sender; `None` is a null.
    inbox: Vec<VecDeque<Option<Bytes>>>,
    /// Messages taken out of `inbox` per sender.
    popped: Vec<u64>,
    /// Per sender, one past the index of its newest message (not null) received:
    /// idle senders fill their slots up to that sender's next one (see `send_nulls`).
    message_end: Vec<u64>,
    /// Next round-robin slot to deliver.
    delivered_slots: u64,
    own_tickets: VecDeque<(u64, SendTicket)>,
    state_source: Option<MemberId>,
    hold_for_state: bool,
    /// The number of the next state part this joiner expects.
    state_next_part: u32,
    hold_for_supply: bool,
    /// The transfer this member is the source of, once the application began supplying.
    supply: Option<StateSupply>,
    /// Outside restart views the source asks for the state only once every joiner said
    /// how much of the shard its log holds (`Wire::StateWanted`), by joiner index.
    wanted: Option<Vec<Option<Option<Version>>>>,
    joiners: Vec<MemberId>,
    last_version: Option<Version>,
    persist_asked: Option<Version>,
    persisted: Option<Version>,
    global_persisted: Option<Version>,
    trim_logging: Option<Arc<Trim>>,
    trim_logged: Option<Arc<Trim>>,
    trim_applied: bool,
}

impl ShardState {
    fn holding(&self) -> bool {
        self.hold_for_state || self.hold_for_supply
    }
    fn senders(&self) -> u64 {
        self.members.len() as u64
    }
}

/// A state transfer this member is the source of, streamed: the application supplies the
/// state in pieces, the core cuts them into parts (slices, no copy) and keeps at most
/// `CoreConfig::state_window_bytes` of them unacknowledged by the joiners still trusted,
/// asking for the next piece only when its queue is empty and the window has room. So
/// neither this member, its transport nor a joiner holds much more than the window of a
/// shard of any size.
#[derive(Debug, Default)]
struct StateSupply {
    /// Parts cut and not yet sent: the window was full.
    queued: VecDeque<Bytes>,
    /// The application supplied its last piece.
    supplied_all: bool,
    /// `Output::StateSupplyMore` is out and unanswered.
    asked: bool,
    next_part: u32,
    /// Parts sent that some trusted joiner has not acknowledged: number and size.
    in_flight: VecDeque<(u32, usize)>,
    in_flight_bytes: usize,
    /// Per joiner (by index in `ShardState::joiners`), one past the last part it
    /// acknowledged.
    acked: Vec<u32>,
}

/// One member's protocol core. See the module documentation.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    me: MemberId,
    phase: Phase,
    now_ms: u64,
    view: Option<Arc<View>>,
    my_rank: usize,
    rows: Vec<Arc<Row>>,
    row_dirty: bool,
    /// My row changed in a way no peer waits on promptly (delivery and volatile
    /// persistence counters): it rides on the next push, or goes at the next tick.
    row_lazy: bool,
    last_push_ms: u64,
    last_heard_ms: Vec<u64>,
    last_tick_ms: u64,
    leave_requested: bool,
    pending_joins: Vec<MemberId>,
    adopted: bool,
    committed: Option<Arc<Proposal>>,
    next_view: Option<Arc<View>>,
    shards: Vec<Option<ShardState>>,
    pending_sends: Vec<VecDeque<(Bytes, SendTicket)>>,
    next_ticket: u64,
    future: VecDeque<(MemberId, Wire)>,
    evicted_notified: Vec<MemberId>,
    outbox: Vec<Vec<DataRun>>,
    outputs: Vec<Output>,
    reads: Reads,
    /// Read leases I granted (see [`Core::request_read`]): until each expires, or its
    /// member's row shows it wedged, I agree to no view change.
    promises: Vec<Promise>,
    /// The restart plan being installed (its view's setup reads the shards' holds).
    restart: Option<Arc<RestartPlan>>,
    /// What this member's log held of each shard when it started from it (a restart),
    /// until it installs its first view: a joiner reports it so only the rest travels.
    last_life_tails: Vec<ShardTail>,
    /// What this member's log holds of each shard it received a state transfer of (all
    /// or part: one that broke off with its view left a prefix of the shard's history)
    /// in this life, as its application said ([`Core::state_logged`]): a joiner of that
    /// shard again reports it, so only the rest travels. Dropped at a restart (which
    /// truncates logs).
    transfer_tails: Vec<ShardTail>,
    /// A proposal I agreed to (as leader or follower) whose agreement is being logged;
    /// my row shows it once [`Core::ack_logged`] confirms.
    ack_logging: Option<Arc<Proposal>>,
}

impl Core {
    /// Starts a new group with `me` as its first member; view 0 forms once the members
    /// gathered so far satisfy the layout.
    pub fn found(cfg: CoreConfig, me: MemberId, now_ms: u64) -> Result<Self, ConfigError> {
        let mut core = Self::new(cfg, me, now_ms, Phase::Founding { members: vec![me] })?;
        core.try_form_first_view();
        Ok(core)
    }

    /// Joins an existing group through any of `contacts` (redirected to the leader).
    pub fn join(
        cfg: CoreConfig,
        me: MemberId,
        contacts: Vec<NodeId>,
        now_ms: u64,
    ) -> Result<Self, ConfigError> {
        if contacts.is_empty() {
            return Err(ConfigError::Zero { field: "contacts" });
        }
        let phase = Phase::Joining {
            contacts,
            next_contact: 0,
            last_attempt_ms: None,
        };
        let mut core = Self::new(cfg, me, now_ms, phase)?;
        core.attempt_join();
        Ok(core)
    }

    /// Restarts a node whose log holds a view: a live group reached through `contacts`
    /// admits it as a joiner; otherwise it reports its log to the restart `leaders` (every
    /// restarting node is given the same list, in order of preference). A leader that
    /// hears from no leader before it leads: once the reports allow a restart (see
    /// [`crate::restart`]) it claims a ballot, makes the plan from the reports of those
    /// that promised it, and commits it in two phases. Leaders that cannot hear each other
    /// may both lead; the ballots see to it that at most one plan is installed.
    pub fn restart(
        cfg: CoreConfig,
        me: MemberId,
        contacts: Vec<NodeId>,
        leaders: Vec<NodeId>,
        logged: LoggedState,
        now_ms: u64,
    ) -> Result<Self, ConfigError> {
        if logged.view.is_none() {
            return Err(ConfigError::NothingToRestart);
        }
        if leaders.is_empty() {
            return Err(ConfigError::NoRestartLeader);
        }
        let tails = logged.tails.clone();
        let promised = logged
            .promised
            .max(logged.acked.as_ref().map(|(ballot, _)| *ballot));
        let phase = Phase::Restarting(Box::new(Restarting {
            leaders,
            contacts,
            logged,
            promised,
            heard: Vec::new(),
            ready_since_ms: None,
            last_hello_ms: None,
            prepared: None,
            claim: None,
            proposing: None,
            claim_after_ms: 0,
            waiting: None,
            deferring_since_ms: None,
        }));
        let mut core = Self::new(cfg, me, now_ms, phase)?;
        core.last_life_tails = tails;
        core.restart_step();
        Ok(core)
    }

    fn new(cfg: CoreConfig, me: MemberId, now_ms: u64, phase: Phase) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let subgroups = cfg.layout.subgroups.len();
        Ok(Core {
            cfg,
            me,
            phase,
            now_ms,
            view: None,
            my_rank: 0,
            rows: Vec::new(),
            row_dirty: false,
            row_lazy: false,
            last_push_ms: now_ms,
            last_heard_ms: Vec::new(),
            last_tick_ms: now_ms,
            leave_requested: false,
            pending_joins: Vec::new(),
            adopted: false,
            committed: None,
            next_view: None,
            shards: (0..subgroups).map(|_| None).collect(),
            pending_sends: (0..subgroups).map(|_| VecDeque::new()).collect(),
            next_ticket: 0,
            future: VecDeque::new(),
            evicted_notified: Vec::new(),
            outbox: Vec::new(),
            outputs: Vec::new(),
            reads: Reads::default(),
            promises: Vec::new(),
            restart: None,
            last_life_tails: Vec::new(),
            transfer_tails: Vec::new(),
            ack_logging: None,
        })
    }

    // ----- read-only accessors -------------------------------------------------------

    pub fn me(&self) -> MemberId {
        self.me
    }

    pub fn view(&self) -> Option<&Arc<View>> {
        self.view.as_ref()
    }

    /// The view this member has committed to install next, if a change is under way.
    pub fn committed_next_view(&self) -> Option<&Arc<View>> {
        self.next_view.as_ref()
    }

    pub fn is_wedged(&self) -> bool {
        self.view.is_some() && self.my_row().wedged
    }

    pub fn stopped(&self) -> Option<StopReason> {
        match self.phase {
            Phase::Stopped(reason) => Some(reason),
            _ => None,
        }
    }

    /// The restart plan this node agreed to and has not installed yet (restarting only).
    pub fn prepared_restart(&self) -> Option<&Arc<RestartPlan>> {
        match &self.phase {
            Phase::Restarting(r) => r.prepared.as_ref().map(|(plan, _)| plan),
            _ => None,
        }
    }

    /// Why this restart leader has not restarted the group yet (`None`: not restarting,
    /// not a leader, or claiming or proposing now).
    pub fn restart_waiting(&self) -> Option<&RestartWait> {
        match &self.phase {
            Phase::Restarting(r) => r.waiting.as_ref(),
            _ => None,
        }
    }

    pub fn is_member(&self) -> bool {
        matches!(self.phase, Phase::Member)
    }

    /// Members of the current view this member suspects.
    pub fn suspected_members(&self) -> Vec<MemberId> {
        let Some(view) = self.view.as_ref().filter(|_| self.is_member()) else {
            return Vec::new();
        };
        (0..view.members.len())
            .filter(|r| self.is_suspected(*r))
            .map(|r| view.members[r])
            .collect()
    }

    /// A one-line account of where this member stands, for diagnostics.
    pub fn status_line(&self) -> String {
        let phase = match &self.phase {
            Phase::Founding { members } => format!("founding({})", members.len()),
            Phase::Joining { .. } => "joining".to_string(),
            Phase::Restarting(r) => format!("restarting({} reports)", r.heard.len()),
            Phase::Member => "member".to_string(),
            Phase::Stopped(reason) => format!("stopped({reason:?})"),
        };
        let Some(view) = self.view.as_ref() else {
            return format!("{} {phase}", self.me);
        };
        let row = self.my_row();
        let shards: Vec<String> = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(g, s)| {
                let s = s.as_ref()?;
                let r = row.shard(g)?;
                Some(format!(
                    "g{g}s{} recv{:?} dlv{} fr{} trim{:?} done{} hold{}/{} pend{}",
                    s.shard,
                    r.received,
                    r.delivered,
                    r.flush_ready,
                    r.trim.as_ref().map(|t| &t.received),
                    r.done,
                    s.hold_for_state,
                    s.hold_for_supply,
                    self.pending_sends[g].len()
                ))
            })
            .collect();
        format!(
            "{} {phase} view {} members {:?} susp {:?} wedged {} leaving {} prop {:?} committed {} joins {:?} [{}]",
            self.me,
            view.id,
            view.members
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
            self.suspected_members()
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
            row.wedged,
            row.leaving,
            row.proposal
                .as_ref()
                .map(|p| (p.ballot.round, p.ballot.leader.to_string(), &p.change)),
            self.committed.is_some(),
            self.pending_joins,
            shards.join("; ")
        )
    }

    /// A shard of this member waits for its state transfer (sent or received).
    pub fn awaiting_state(&self) -> bool {
        self.shards.iter().flatten().any(ShardState::holding)
    }

    /// This member asked to leave and has not been removed yet.
    pub fn is_leaving(&self) -> bool {
        self.leave_requested
    }

    /// Sends accepted but not yet multicast in `subgroup`.
    pub fn pending_sends(&self, subgroup: usize) -> usize {
        self.pending_sends.get(subgroup).map_or(0, VecDeque::len)
    }

    /// Outstanding work that must finish before the member is quiescent: pending sends,
    /// undelivered messages, a view change, a state transfer.
    pub fn is_quiescent(&self) -> bool {
        if !self.is_member() || self.is_wedged() || self.committed.is_some() {
            return false;
        }
        if self.pending_sends.iter().any(|q| !q.is_empty()) {
            return false;
        }
        self.shards.iter().flatten().all(|s| {
            !s.holding() && s.inbox.iter().all(VecDeque::is_empty) && s.own_tickets.is_empty()
        })
    }

    // ----- inputs --------------------------------------------------------------------

    /// Multicasts `payload` in this member's shard of `subgroup`. The payload is shared,
    /// never copied. Accepted sends are delivered in send order; if the view changes first
    /// they go out in the next view.
    pub fn send(&mut self, subgroup: u32, payload: Bytes) -> Result<SendTicket, SendError> {
        if let Phase::Stopped(reason) = self.phase {
            return Err(SendError::Stopped(reason));
        }
        if !self.is_member() {
            return Err(SendError::NotJoined);
        }
        let g = subgroup as usize;
        if g >= self.cfg.layout.subgroups.len() {
            return Err(SendError::NoSuchSubgroup { subgroup });
        }
        if self.shards[g].is_none() {
            return Err(SendError::NotMember { subgroup });
        }
        if payload.len() > self.cfg.payload_size_max_bytes {
            return Err(SendError::PayloadTooLarge {
                size: payload.len(),
                max: self.cfg.payload_size_max_bytes,
            });
        }
        let pending = self.pending_sends[g].len();
        if pending >= self.cfg.pending_sends_max {
            return Err(SendError::Backlogged {
                subgroup,
                pending,
                max: self.cfg.pending_sends_max,
            });
        }
        let ticket = SendTicket(self.next_ticket);
        self.next_ticket += 1;
        self.pending_sends[g].push_back((payload, ticket));
        if !self.is_wedged() && self.send_pending(g) {
            let alone = self.shards[g]
                .as_ref()
                .is_some_and(|shard| shard.ranks.len() == 1);
            if alone {
                // No other member will answer: what makes the message stable is this
                // member's own receipt, so deliver now rather than at the next tick
                // (a put on a one-node cluster waited a whole heartbeat interval).
                self.progress();
            }
        }
        Ok(ticket)
    }

    /// Asks for a linearizable read of this member's replica in `subgroup`; the answer
    /// comes as [`Output::ReadReady`] with the returned ticket.
    ///
    /// Two things make a local read linearizable. First, a write that completed anywhere
    /// before the read began was stable, hence received here: the read waits for the
    /// newest message received and not yet delivered (the barrier). Second, that
    /// argument needs this member to still be in the view: a member cut off in a
    /// minority, or paused long enough to be evicted, does not receive what the others
    /// deliver after excluding it. So a round of [`Wire::ReadProbe`]s goes out after the
    /// read was asked, and the read is ready once a majority of the view (counting this
    /// member) answered that it still counts this member in: a view excluding it needs
    /// the agreement of a majority that suspects it, and none of those answered yet.
    /// Reads asked while a round is in flight wait for the next one; one round serves
    /// them all. A new view answers every pending read (its state holds everything any
    /// member delivered in the old one).
    ///
    /// With read leases (`CoreConfig::read_lease_ms`), a read needs no round while this
    /// member holds a lease: a majority (counting it) answered a round with a promise,
    /// each to agree to no view change until this member's row shows it wedged or the
    /// lease time passed on its clock. Any view change needs the agreement of every
    /// unsuspected member, a majority (partition safety), so of this member or of a
    /// promiser: none can be decided before this member wedged, and it serves nothing
    /// from the lease once wedged, nor past 9/10 of the lease time after the round went
    /// out (its clock; promises run from their receipt). So the argument above holds
    /// at every read served from the lease. `now_ms` is the caller's clock read now: a
    /// stale one could serve a read after the lease ran out.
    pub fn request_read(&mut self, subgroup: u32, now_ms: u64) -> Result<u64, SendError> {
        self.observe_clock(now_ms);
        let barrier = self.received_barrier(subgroup)?;
        let ticket = self.reads.next_ticket;
        self.reads.next_ticket += 1;
        if self.awaits_state(subgroup) {
            self.reads.after_state.push((ticket, subgroup));
            return Ok(ticket);
        }
        self.start_read(ticket, subgroup, barrier);
        Ok(ticket)
    }

    /// This member is new to its shard of `subgroup` and the shard's state is not in.
    fn awaits_state(&self, subgroup: u32) -> bool {
        self.shards
            .get(subgroup as usize)
            .and_then(Option::as_ref)
            .is_some_and(|shard| shard.hold_for_state)
    }

    /// Serves a read from the lease, or sends it through a probe round.
    fn start_read(&mut self, ticket: u64, subgroup: u32, barrier: Option<Version>) {
        if self.lease_valid() {
            self.outputs.push(Output::ReadReady {
                ticket,
                view_id: self.current_view().id,
                result: Ok(barrier),
                leased: true,
            });
            let left_ms = self.reads.lease_until_ms - self.now_ms;
            if left_ms < self.lease_reader_ms() / 2 {
                self.reads.renew = true;
                self.start_read_round();
            }
            return;
        }
        self.reads.waiting.push(PendingRead {
            ticket,
            subgroup,
            barrier,
        });
        self.start_read_round();
    }

    /// The state of this member's shard of `subgroup` is in: the reads held for it start.
    fn start_reads_after_state(&mut self, subgroup: u32) {
        let mut now = std::mem::take(&mut self.reads.after_state);
        now.retain(|(ticket, g)| {
            let later = *g != subgroup;
            if later {
                self.reads.after_state.push((*ticket, *g));
            }
            !later
        });
        for (ticket, g) in now {
            match self.received_barrier(g) {
                Ok(barrier) => self.start_read(ticket, g, barrier),
                Err(e) => self.outputs.push(Output::ReadReady {
                    ticket,
                    view_id: self.current_view().id,
                    result: Err(e),
                    leased: false,
                }),
            }
        }
    }

    /// The newest ordered message of `subgroup` this member has received and not yet
    /// delivered. Raw subgroups have no order to wait for.
    fn received_barrier(&self, subgroup: u32) -> Result<Option<Version>, SendError> {
        if let Phase::Stopped(reason) = self.phase {
            return Err(SendError::Stopped(reason));
        }
        if !self.is_member() {
            return Err(SendError::NotJoined);
        }
        let g = subgroup as usize;
        if g >= self.cfg.layout.subgroups.len() {
            return Err(SendError::NoSuchSubgroup { subgroup });
        }
        let Some(shard) = self.shards[g].as_ref() else {
            return Err(SendError::NotMember { subgroup });
        };
        if shard.mode == DeliveryMode::Raw {
            return Ok(None);
        }
        let senders = shard.senders();
        let newest = (0..shard.members.len())
            .filter_map(|s| {
                let last = shard.inbox[s].iter().rposition(Option::is_some)?;
                let index = shard.popped[s] + last as u64;
                Some(index * senders + s as u64)
            })
            .max();
        Ok(newest.map(|slot| {
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            Version::new(self.current_view().id, slot)
        }))
    }

    /// The clock as the caller read it now (the core's own moves only with ticks).
    /// Drivers call it before handing a message over: a promise runs from its receipt.
    pub fn observe_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn leases_on(&self) -> bool {
        self.cfg.read_lease_ms > 0 && self.cfg.partition_safety
    }

    /// How long a lease serves reads after its round went out: 9/10 of the promises'
    /// time, for clock rates that differ by under 5%.
    fn lease_reader_ms(&self) -> u64 {
        self.cfg.read_lease_ms * 9 / 10
    }

    fn lease_valid(&self) -> bool {
        self.leases_on()
            && self.is_member()
            && !self.leave_requested
            && !self.my_row().wedged
            && self.reads.lease_view == Some(self.current_view().id)
            && self.now_ms < self.reads.lease_until_ms
    }

    /// Whether a lease I granted keeps me from agreeing to a view change now (its
    /// member still serves from it, or may); forgets the ones that ran out.
    fn promised_away(&mut self) -> bool {
        if self.promises.is_empty() {
            return false;
        }
        let now_ms = self.now_ms;
        let view = Arc::clone(self.current_view());
        self.promises
            .retain(|p| p.until_ms > now_ms && p.view_id == view.id);
        self.promises
            .iter()
            .any(|p| view.rank_of(p.member).is_some_and(|r| !self.rows[r].wedged))
    }

    /// Whether I have, or may soon have, a view change to agree to: a reason to propose
    /// one, or a proposal of this view in some row (mine included).
    fn agreement_wanted(&self) -> bool {
        let view_id = self.current_view().id;
        self.needs_change()
            || self.ack_logging.is_some()
            || self
                .rows
                .iter()
                .any(|row| row.proposal.as_ref().is_some_and(|p| p.view_id == view_id))
    }

    fn start_read_round(&mut self) {
        let wanted = !self.reads.waiting.is_empty() || self.reads.renew;
        if self.reads.in_flight || !wanted || !self.is_member() {
            return;
        }
        let view = Arc::clone(self.current_view());
        self.reads.round += 1;
        self.reads.in_flight = true;
        self.reads.renew = false;
        self.reads.round_sent_ms = self.now_ms;
        self.reads.round_view = view.id;
        self.reads.probing = std::mem::take(&mut self.reads.waiting);
        self.reads.acks = vec![false; view.members.len()];
        self.reads.acks[self.my_rank] = true;
        self.reads.lease_acks = vec![false; view.members.len()];
        self.reads.lease_acks[self.my_rank] = true;
        let round = self.reads.round;
        for (r, member) in view.members.iter().enumerate() {
            if r == self.my_rank || self.is_suspected(r) {
                continue;
            }
            self.send_to(
                member.node,
                Some(member.incarnation),
                Wire::ReadProbe {
                    view_id: view.id,
                    round,
                },
            );
        }
        self.finish_read_round();
    }

    /// Answers the reads of the round in flight once a majority acknowledged it.
    fn finish_read_round(&mut self) {
        let acked = self.reads.acks.iter().filter(|a| **a).count();
        if !self.reads.in_flight || acked * 2 <= self.reads.acks.len() {
            return;
        }
        self.reads.in_flight = false;
        let promised = self.reads.lease_acks.iter().filter(|a| **a).count();
        if self.leases_on()
            && promised * 2 > self.reads.lease_acks.len()
            && self.reads.round_view == self.current_view().id
            && !self.my_row().wedged
        {
            self.reads.lease_view = Some(self.reads.round_view);
            self.reads.lease_until_ms = self.reads.round_sent_ms + self.lease_reader_ms();
        }
        for read in std::mem::take(&mut self.reads.probing) {
            // Delivered meanwhile (those deliveries are output already): read at once.
            let delivered = self
                .shards
                .get(read.subgroup as usize)
                .and_then(Option::as_ref)
                .and_then(|s| s.last_version);
            let barrier = read.barrier.filter(|b| delivered < Some(*b));
            self.outputs.push(Output::ReadReady {
                ticket: read.ticket,
                view_id: self.current_view().id,
                result: Ok(barrier),
                leased: false,
            });
        }
        self.start_read_round();
    }

    /// A new view (this member installed it) or a stop answers every pending read; in a
    /// new view, a read of a shard this member is new to waits for the shard's state.
    fn settle_reads(
        &mut self,
        view: Option<&View>,
        view_id: ViewId,
        result: Result<Option<Version>, SendError>,
    ) {
        self.reads.in_flight = false;
        let pending: Vec<(u64, u32)> = std::mem::take(&mut self.reads.probing)
            .into_iter()
            .chain(std::mem::take(&mut self.reads.waiting))
            .map(|read| (read.ticket, read.subgroup))
            .chain(std::mem::take(&mut self.reads.after_state))
            .collect();
        for (ticket, subgroup) in pending {
            let joins = view.is_some_and(|v| {
                let g = subgroup as usize;
                v.shard_of(g, self.me)
                    .and_then(|s| v.shards.get(g)?.get(s))
                    .is_some_and(|sv| sv.joined.contains(&self.me))
            });
            if joins {
                self.reads.after_state.push((ticket, subgroup));
                continue;
            }
            self.outputs.push(Output::ReadReady {
                ticket,
                view_id,
                result: result.clone(),
                leased: false,
            });
        }
    }

    /// Advances the core's clock: heartbeats, suspicion timeouts, join retries.
    pub fn tick(&mut self, now_ms: u64) {
        let previous_tick_ms = self.last_tick_ms;
        self.now_ms = self.now_ms.max(now_ms);
        self.last_tick_ms = self.now_ms;
        if self.now_ms.saturating_sub(previous_tick_ms) > self.cfg.suspicion_timeout_ms / 2 {
            // We were stalled ourselves (paused process, overloaded driver): silence from
            // peers during our stall is not their failure. Restart their timers.
            for heard in &mut self.last_heard_ms {
                *heard = self.now_ms;
            }
        }
        match self.phase {
            Phase::Joining {
                last_attempt_ms, ..
            } => {
                let due = last_attempt_ms
                    .is_none_or(|t| self.now_ms.saturating_sub(t) >= self.cfg.join_retry_ms);
                if due {
                    self.attempt_join();
                }
            }
            Phase::Member => {
                let n = self.view_size();
                for r in 0..n {
                    if r == self.my_rank || self.is_suspected(r) {
                        continue;
                    }
                    if self.now_ms.saturating_sub(self.last_heard_ms[r])
                        > self.cfg.suspicion_timeout_ms
                    {
                        self.suspect_rank(r);
                    }
                }
                if self.row_lazy
                    || self.now_ms.saturating_sub(self.last_push_ms)
                        >= self.cfg.heartbeat_interval_ms
                {
                    self.row_dirty = true;
                }
                self.progress();
            }
            Phase::Restarting(_) => self.restart_step(),
            Phase::Founding { .. } | Phase::Stopped(_) => {}
        }
    }

    /// A failure detector outside the core (a broken connection) reports `member`.
    pub fn suspect(&mut self, member: MemberId) {
        if !self.is_member() {
            return;
        }
        if let Some(r) = self.current_view().rank_of(member)
            && r != self.my_rank
        {
            self.suspect_rank(r);
            self.progress();
        }
    }

    /// The driver made every delivered version of `subgroup` up to `version` durable.
    pub fn persisted(&mut self, subgroup: u32, version: Version) {
        self.record_persisted(subgroup, version, false);
    }

    /// Like [`Core::persisted`], for a subgroup whose persistence is immediate (no log):
    /// nobody waits on it, so the news rides on the next row push (at the latest the next
    /// tick) instead of costing a push of its own.
    pub fn persisted_lazily(&mut self, subgroup: u32, version: Version) {
        self.record_persisted(subgroup, version, true);
    }

    fn record_persisted(&mut self, subgroup: u32, version: Version, lazily: bool) {
        if !self.is_member() || version.view_id() != self.current_view().id {
            return;
        }
        let g = subgroup as usize;
        let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        if shard.persisted.is_some_and(|p| p >= version) {
            return;
        }
        shard.persisted = Some(version);
        let dirty = self.row_dirty;
        if let Some(row) = self.my_row_mut().shards[g].as_mut() {
            row.persisted = Some(version);
        }
        if lazily {
            self.row_dirty = dirty;
            self.row_lazy = true;
        }
        self.progress();
    }

    /// The driver logged the trim it was given in [`Output::PersistTrim`].
    pub fn trim_persisted(&mut self, view_id: ViewId, subgroup: u32, ballot: Ballot) {
        if !self.is_member() || view_id != self.current_view().id {
            return;
        }
        let g = subgroup as usize;
        let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        match shard.trim_logging.take() {
            Some(trim) if trim.ballot == ballot => shard.trim_logged = Some(trim),
            other => shard.trim_logging = other,
        }
        self.progress();
    }

    /// The driver logged the promise it was given in [`Output::LogPromise`]: the report
    /// goes to the leader that claimed the ballot, from the state logged by now.
    pub fn promise_logged(&mut self, ballot: Ballot) {
        let me = self.me;
        let Phase::Restarting(r) = &mut self.phase else {
            return;
        };
        if r.logged.promised.is_some_and(|p| p >= ballot) {
            return;
        }
        r.logged.promised = Some(ballot);
        if ballot.leader == me {
            let logged = r.logged.clone();
            self.promised_to_me(me, logged);
        } else {
            let hello = Wire::RestartHello {
                logged: r.logged.clone(),
            };
            self.outputs.push(Output::Send {
                to: ballot.leader.node,
                incarnation: Some(ballot.leader.incarnation),
                msg: hello,
            });
        }
    }

    /// The driver logged the agreement it was given in [`Output::LogAck`].
    pub fn ack_logged(&mut self, view_id: ViewId, ballot: Ballot) {
        if let Phase::Restarting(r) = &mut self.phase {
            let Some((plan, _)) = &r.prepared else {
                return;
            };
            if plan.view.id != view_id + 1 || plan.ballot != ballot {
                return;
            }
            let plan = Arc::clone(plan);
            r.logged.acked = Some((ballot, Arc::clone(&plan.view)));
            // Promised a higher ballot while this was being logged: that leader was told
            // (or will be) of this agreement, and this plan must not be committed.
            if r.promised.is_some_and(|p| p > ballot) {
                return;
            }
            let leader = ballot.leader;
            if leader == self.me {
                self.restart_acked(self.me, plan.view.id, ballot);
            } else {
                self.outputs.push(Output::Send {
                    to: leader.node,
                    incarnation: Some(leader.incarnation),
                    msg: Wire::RestartAck {
                        view_id: plan.view.id,
                        ballot,
                    },
                });
            }
            return;
        }
        if !self.is_member() || view_id != self.current_view().id {
            return;
        }
        let Some(pending) = self.ack_logging.clone() else {
            return;
        };
        if pending.ballot != ballot {
            return;
        }
        self.ack_logging = None;
        // A leader I have suspected since (my rows say so) must not count this agreement:
        // a new leader's failover barrier relies on it. It stays in the log, harmlessly
        // (a restart treats its view as possibly installed).
        let leader_suspected = self
            .current_view()
            .rank_of(pending.ballot.leader)
            .is_some_and(|r| r != self.my_rank && self.is_suspected(r));
        if !leader_suspected && self.my_row().acked_ballot().is_none_or(|b| b < ballot) {
            self.my_row_mut().proposal = Some(pending);
            self.row_dirty = true;
        }
        self.progress();
    }

    /// A joiner of this view said how much of the shard its log holds: once every joiner
    /// has, the application is asked for the state after the least of them.
    /// A joiner took in the state up to `part`: the window moves on.
    fn on_state_ack(&mut self, from: MemberId, subgroup: u32, part: u32) {
        let g = subgroup as usize;
        let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let Some(i) = shard.joiners.iter().position(|j| *j == from) else {
            return;
        };
        let Some(supply) = shard.supply.as_mut() else {
            return;
        };
        if part >= supply.next_part {
            // An ack of a part never sent: a broken joiner.
            if let Some(r) = self.current_view().rank_of(from) {
                self.suspect_rank(r);
            }
            return;
        }
        supply.acked[i] = supply.acked[i].max(part + 1);
        self.pump_state(g);
    }

    fn on_state_wanted(&mut self, from: MemberId, subgroup: u32, after: Option<Version>) {
        let view_id = self.current_view().id;
        let Some(shard) = self
            .shards
            .get_mut(subgroup as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        let (Some(wanted), Some(i)) = (
            shard.wanted.as_mut(),
            shard.joiners.iter().position(|j| *j == from),
        ) else {
            return;
        };
        wanted[i] = Some(after);
        if wanted.iter().any(Option::is_none) {
            return;
        }
        // The least of what they hold; none at all if any holds nothing.
        let joiners_hold = wanted
            .iter()
            .map(|w| w.flatten())
            .try_fold(Version(u64::MAX), |least, hold| hold.map(|h| least.min(h)));
        shard.wanted = None;
        self.outputs.push(Output::StateTransferRequest {
            view_id,
            subgroup,
            shard: shard.shard as u32,
            joiners: shard.joiners.clone(),
            joiners_hold,
        });
    }

    /// The application's answer to [`Output::StateTransferRequest`]: the whole state.
    pub fn supply_state(&mut self, view_id: ViewId, subgroup: u32, state: Bytes) {
        self.supply_state_piece(view_id, subgroup, state, true);
    }

    /// The application's answer to [`Output::StateTransferRequest`] (the first piece:
    /// the shard's deliveries resume) or to [`Output::StateSupplyMore`], piece by piece;
    /// `last` ends the state. The joiners receive the pieces concatenated.
    pub fn supply_state_piece(&mut self, view_id: ViewId, subgroup: u32, piece: Bytes, last: bool) {
        if !self.is_member() || view_id != self.current_view().id {
            return;
        }
        let g = subgroup as usize;
        let part_max = self.cfg.state_part_bytes_max.max(1);
        let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        if shard.hold_for_supply {
            shard.hold_for_supply = false;
            shard.supply = Some(StateSupply {
                acked: vec![0; shard.joiners.len()],
                ..StateSupply::default()
            });
        }
        let Some(supply) = shard.supply.as_mut().filter(|s| !s.supplied_all) else {
            return;
        };
        supply.asked = false;
        supply.supplied_all = last;
        // Parts of at most the configured size fit any transport's message limit; the
        // link's FIFO order brings them to each joiner in sequence.
        let mut from = 0;
        while from < piece.len() {
            let to = (from + part_max).min(piece.len());
            supply.queued.push_back(piece.slice(from..to));
            from = to;
        }
        if last && supply.queued.is_empty() {
            // The joiners learn the state is whole from a part marked last.
            supply.queued.push_back(Bytes::new());
        }
        self.pump_state(g);
        self.progress();
    }

    /// The application took in state part `part` of `subgroup` (see
    /// [`Output::ReceiveState`]): the source may send further.
    pub fn state_part_applied(&mut self, view_id: ViewId, subgroup: u32, part: u32) {
        if !self.is_member() || view_id != self.current_view().id {
            return;
        }
        let Some(source) = self
            .shards
            .get(subgroup as usize)
            .and_then(Option::as_ref)
            .and_then(|shard| shard.state_source)
        else {
            return;
        };
        self.send_to(
            source.node,
            Some(source.incarnation),
            Wire::StateAck {
                view_id,
                subgroup,
                part,
            },
        );
    }

    /// The application's log of `subgroup`'s shard `shard` now ends at `through` after
    /// taking in parts of a state transfer (every record up to it came from the shard's
    /// history, as the transfer's source had it). Should the transfer break off with its
    /// view, the next view's transfer ships only what follows. Call it only with a log
    /// that nothing but a later transfer or a restart will cut.
    pub fn state_logged(&mut self, subgroup: u32, shard: u32, through: Option<Version>) {
        self.transfer_tails
            .retain(|t| t.subgroup != subgroup || t.shard != shard);
        if let Some(version) = through {
            self.transfer_tails.push(ShardTail {
                subgroup,
                shard,
                version,
            });
        }
    }

    /// Sends the state parts the window has room for, and asks the application for the
    /// next piece once every part supplied is out and the window is not full.
    fn pump_state(&mut self, g: usize) {
        let view_id = self.current_view().id;
        let Some(shard) = self.shards.get(g).and_then(Option::as_ref) else {
            return;
        };
        if shard.supply.is_none() {
            return;
        }
        let trusted: Vec<bool> = shard
            .joiners
            .iter()
            .map(|j| {
                self.current_view()
                    .rank_of(*j)
                    .is_some_and(|r| !self.is_suspected(r))
            })
            .collect();
        let window = self.cfg.state_window_bytes;
        let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
            return;
        };
        let Some(supply) = shard.supply.as_mut() else {
            return;
        };
        // No part goes to a suspected joiner, nor waits for it: it will not finish in
        // this view, and the next one sends it the state again.
        let Some(floor) = supply
            .acked
            .iter()
            .zip(&trusted)
            .filter(|(_, trusted)| **trusted)
            .map(|(acked, _)| *acked)
            .min()
        else {
            return;
        };
        while let Some(&(part, bytes)) = supply.in_flight.front() {
            if part >= floor {
                break;
            }
            supply.in_flight.pop_front();
            supply.in_flight_bytes -= bytes;
        }
        while let Some(next) = supply.queued.front() {
            if supply.in_flight_bytes > 0 && supply.in_flight_bytes + next.len() > window {
                break;
            }
            let Some(state) = supply.queued.pop_front() else {
                break;
            };
            let last = supply.supplied_all && supply.queued.is_empty();
            let part = supply.next_part;
            supply.next_part += 1;
            supply.in_flight.push_back((part, state.len()));
            supply.in_flight_bytes += state.len();
            for (j, _) in shard.joiners.iter().zip(&trusted).filter(|(_, t)| **t) {
                self.outputs.push(Output::Send {
                    to: j.node,
                    incarnation: Some(j.incarnation),
                    msg: Wire::State {
                        view_id,
                        subgroup: g as u32,
                        shard: shard.shard as u32,
                        part,
                        last,
                        state: state.clone(),
                    },
                });
            }
        }
        if supply.queued.is_empty()
            && !supply.supplied_all
            && !supply.asked
            && supply.in_flight_bytes < window
        {
            supply.asked = true;
            self.outputs.push(Output::StateSupplyMore {
                view_id,
                subgroup: g as u32,
                shard: shard.shard as u32,
            });
        }
    }

    /// This node's log failed a write (a full disk, an I/O error): stop at once, as a
    /// crash would. A member that cannot make deliveries durable cannot keep what its
    /// acknowledgements promise, and it cannot [`Core::leave`] either: a member logs the
    /// agreement on the next view before it acknowledges it, so the group would wait on
    /// it for good (a full disk at one node stalled every shard). Stopped, it sends
    /// nothing more; the others suspect it once its links break and go on without it, and
    /// a new start recovers what its log holds and rejoins.
    pub fn storage_failed(&mut self) {
        self.stop(StopReason::StorageFailed);
    }

    /// Leaves the group gracefully: this member stops sending, takes part in the view
    /// change that removes it (so everything it sent is delivered), then stops.
    pub fn leave(&mut self) {
        match self.phase {
            Phase::Member => {
                self.leave_requested = true;
                let row = self.my_row_mut();
                row.leaving = true;
                row.wedged = true;
                self.progress();
            }
            Phase::Founding { .. } | Phase::Joining { .. } | Phase::Restarting(_) => {
                self.stop(StopReason::Left)
            }
            Phase::Stopped(_) => {}
        }
    }

    /// A message from `from` arrived over the FIFO link.
    pub fn handle_message(&mut self, from: MemberId, msg: Wire) {
        match self.phase {
            Phase::Stopped(_) => {}
            Phase::Founding { .. } => {
                match msg {
                    Wire::JoinRequest => self.on_join_request(from),
                    Wire::RestartHello { .. }
                    | Wire::RestartClaim { .. }
                    | Wire::RestartPrepare { .. }
                    | Wire::RestartAck { .. }
                    | Wire::RestartCommit { .. }
                    | Wire::ReadProbe { .. }
                    | Wire::ReadProbeAck { .. } => {}
                    _ => self.buffer_future(from, msg),
                }
                self.progress();
            }
            Phase::Joining { .. } => match msg {
                Wire::Redirect { leader } => {
                    if let Phase::Joining {
                        contacts,
                        next_contact,
                        ..
                    } = &mut self.phase
                    {
                        if !contacts.contains(&leader) {
                            contacts.push(leader);
                        }
                        *next_contact = contacts.iter().position(|c| *c == leader).unwrap_or(0);
                    }
                    self.attempt_join();
                }
                Wire::Welcome { view } => {
                    if view.contains(self.me) {
                        self.setup_view(view, None);
                        self.progress();
                    }
                }
                // A sign of life from a member still finishing the view before ours: it
                // carries nothing to replay once we are in.
                Wire::Update {
                    ref data,
                    row: None,
                    ..
                } if data.is_empty() => {}
                Wire::Update { .. } | Wire::State { .. } => self.buffer_future(from, msg),
                Wire::JoinRequest
                | Wire::StateWanted { .. }
                | Wire::StateAck { .. }
                | Wire::Evicted { .. }
                | Wire::RestartHello { .. }
                | Wire::RestartClaim { .. }
                | Wire::RestartPrepare { .. }
                | Wire::RestartAck { .. }
                | Wire::RestartCommit { .. }
                | Wire::ReadProbe { .. }
                | Wire::ReadProbeAck { .. } => {}
            },
            Phase::Restarting(_) => self.on_restarting_message(from, msg),
            Phase::Member => {
                self.handle_member_message(from, msg);
                self.progress();
            }
        }
    }

    /// Commands produced so far. Data and rows for each peer are batched here: one
    /// [`Wire::Update`] per peer per drain.
    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.flush();
        self.outputs.drain(..)
    }

    // ----- message handling ----------------------------------------------------------

    fn handle_member_message(&mut self, from: MemberId, msg: Wire) {
        let view = Arc::clone(self.current_view());
        let from_rank = view.rank_of(from);
        if let Some(r) = from_rank {
            self.last_heard_ms[r] = self.now_ms;
        }
        match msg {
            // A live group admits a node back from a total stop as any joiner.
            Wire::JoinRequest | Wire::RestartHello { .. } | Wire::RestartClaim { .. } => {
                self.on_join_request(from)
            }
            Wire::Redirect { .. } => {}
            Wire::Welcome { .. }
            | Wire::RestartPrepare { .. }
            | Wire::RestartAck { .. }
            | Wire::RestartCommit { .. } => {}
            Wire::ReadProbe { view_id, round } => {
                // Only while I count the asker in, in its view: see `request_read`.
                if let Some(r) = from_rank
                    && view_id == view.id
                    && !self.is_suspected(r)
                {
                    // A promise only while I have agreed to no view change.
                    let lease = self.leases_on() && !self.my_row().wedged;
                    if lease {
                        let until_ms = self.now_ms + self.cfg.read_lease_ms;
                        self.promises.retain(|p| p.member != from);
                        self.promises.push(Promise {
                            member: from,
                            view_id,
                            until_ms,
                        });
                    }
                    self.send_to(
                        from.node,
                        Some(from.incarnation),
                        Wire::ReadProbeAck {
                            view_id,
                            round,
                            lease,
                        },
                    );
                }
            }
            Wire::ReadProbeAck {
                view_id,
                round,
                lease,
            } => {
                if let Some(r) = from_rank
                    && view_id == view.id
                    && self.reads.in_flight
                    && round == self.reads.round
                    && let Some(ack) = self.reads.acks.get_mut(r)
                {
                    *ack = true;
                    if lease && let Some(promised) = self.reads.lease_acks.get_mut(r) {
                        *promised = true;
                    }
                    self.finish_read_round();
                }
            }
            Wire::Evicted { view_id } => {
                // Only a member we still trust can evict us: a member we suspect is
                // already on its way out and its opinion no longer counts.
                let trusted = from_rank.is_some_and(|r| !self.is_suspected(r));
                let evicted = view_id > view.id || (view_id == view.id && trusted);
                if evicted {
                    self.stop(StopReason::Evicted);
                }
            }
            Wire::Update { view_id, .. }
            | Wire::State { view_id, .. }
            | Wire::StateWanted { view_id, .. }
                if view_id > view.id =>
            {
                self.buffer_future(from, msg)
            }
            Wire::StateWanted {
                view_id,
                subgroup,
                after,
            } => {
                if view_id == view.id {
                    self.on_state_wanted(from, subgroup, after);
                }
            }
            Wire::StateAck {
                view_id,
                subgroup,
                part,
            } => {
                // An ack of another view's transfer concerns a stream that is gone.
                if view_id == view.id {
                    self.on_state_ack(from, subgroup, part);
                }
            }
            Wire::Update { view_id, .. } | Wire::State { view_id, .. } if view_id < view.id => {
                // A member lagging in an older view: if we have given up on it, tell it.
                if from_rank.is_none_or(|r| self.is_suspected(r)) {
                    self.notify_evicted(from);
                }
            }
            Wire::Update { data, row, .. } => {
                let Some(r) = from_rank else { return };
                if self.is_suspected(r) {
                    self.notify_evicted(from);
                    return;
                }
                for run in data {
                    if !self.receive_run(r, run) {
                        self.suspect_rank(r);
                        return;
                    }
                }
                if let Some(row) = row {
                    if row.view_id != view.id || row.suspected.len() != view.members.len() {
                        self.suspect_rank(r);
                        return;
                    }
                    self.rows[r] = row;
                }
            }
            Wire::State {
                subgroup,
                part,
                last,
                state,
                ..
            } => {
                let g = subgroup as usize;
                let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
                    return;
                };
                if shard.hold_for_state && shard.state_source == Some(from) {
                    let Some(r) = from_rank else { return };
                    if part != shard.state_next_part {
                        // The link is FIFO with no holes: a part out of sequence is a
                        // broken source.
                        self.suspect_rank(r);
                        return;
                    }
                    shard.state_next_part += 1;
                    let shard_no = shard.shard as u32;
                    if last {
                        shard.hold_for_state = false;
                    }
                    self.outputs.push(Output::ReceiveState {
                        view_id: view.id,
                        subgroup,
                        shard: shard_no,
                        part,
                        last,
                        state,
                    });
                    if !last {
                        return;
                    }
                    if let Some(row) = self.my_row_mut().shards[g].as_mut() {
                        row.awaiting_state = false;
                    }
                    self.start_reads_after_state(subgroup);
                }
            }
        }
    }

    /// Applies a run of `rank`'s multicast stream. Returns false if the run breaks the
    /// link's FIFO/no-holes guarantee or the shard layout (the sender is then suspected).
    fn receive_run(&mut self, rank: usize, run: DataRun) -> bool {
        let g = run.subgroup as usize;
        let my_rank = self.my_rank;
        let Some(shard) = self.shards.get_mut(g).and_then(Option::as_mut) else {
            return false;
        };
        let Some(s) = shard.ranks.iter().position(|r| *r == rank) else {
            return false;
        };
        if s == shard.me {
            return false;
        }
        let Some(row) = Arc::make_mut(&mut self.rows[my_rank]).shards[g].as_mut() else {
            return false;
        };
        if run.first_index != row.received[s] {
            return false;
        }
        let seq_before = row.seq_received;
        let mut slots = 0u64;
        for item in run.items {
            match item {
                Item::Message(payload) => {
                    shard.inbox[s].push_back(Some(payload));
                    slots += 1;
                    shard.message_end[s] = run.first_index + slots;
                }
                Item::Nulls(n) => {
                    if shard.mode == DeliveryMode::Ordered {
                        shard.inbox[s].extend(std::iter::repeat_n(None, n as usize));
                    } else {
                        shard.popped[s] += u64::from(n);
                    }
                    slots += u64::from(n);
                }
            }
        }
        row.received[s] += slots;
        row.seq_received = seq_received(&row.received);
        if row.seq_received > self.cfg.view_slots_max {
            return false;
        }
        let seq_after = row.seq_received;
        if shard.mode == DeliveryMode::Raw || holds_message(shard, seq_before, seq_after) {
            self.row_dirty = true;
        } else {
            // Only nulls became contiguous: no message waits on this news (the next
            // message's stability comes with its own acknowledgements), so it rides on
            // the next push (at the latest the next tick) instead of costing one.
            self.row_lazy = true;
        }
        true
    }

    fn on_join_request(&mut self, joiner: MemberId) {
        match &mut self.phase {
            Phase::Founding { members } => {
                if let Some(pos) = members.iter().position(|m| m.node == joiner.node) {
                    if members[pos].incarnation >= joiner.incarnation || members[pos] == self.me {
                        return;
                    }
                    members.remove(pos);
                }
                members.push(joiner);
                self.try_form_first_view();
            }
            Phase::Member => {
                let view = Arc::clone(self.current_view());
                if view.contains(joiner) {
                    self.send_to(
                        joiner.node,
                        Some(joiner.incarnation),
                        Wire::Welcome { view },
                    );
                    return;
                }
                if let Some(old) = view.members.iter().find(|m| m.node == joiner.node) {
                    if old.incarnation >= joiner.incarnation {
                        return;
                    }
                    // The node restarted: its old incarnation is gone for good.
                    let old_rank = view.rank_of(*old).unwrap_or(usize::MAX);
                    if old_rank != self.my_rank {
                        self.suspect_rank(old_rank);
                    }
                }
                let leader = self.believed_leader();
                if leader == self.my_rank {
                    self.pending_joins.retain(|p| p.node != joiner.node);
                    if self.pending_joins.len() < JOINS_PENDING_MAX {
                        self.pending_joins.push(joiner);
                    }
                } else {
                    let leader_node = view.members[leader].node;
                    self.send_to(
                        joiner.node,
                        Some(joiner.incarnation),
                        Wire::Redirect {
                            leader: leader_node,
                        },
                    );
                }
            }
            Phase::Joining { .. } | Phase::Restarting(_) | Phase::Stopped(_) => {}
        }
    }

    // ----- total restart -------------------------------------------------------------

    fn on_restarting_message(&mut self, from: MemberId, msg: Wire) {
        match msg {
            Wire::RestartHello { logged } => {
                let now = self.now_ms;
                let me = self.me.node;
                let Phase::Restarting(r) = &mut self.phase else {
                    return;
                };
                if !r.leaders.contains(&me) {
                    return;
                }
                let outranked = r
                    .claim
                    .as_ref()
                    .is_some_and(|c| logged.promised.is_some_and(|p| p > c.ballot));
                if outranked {
                    r.claim = None;
                    r.back_off(me, now, self.cfg.join_retry_ms);
                }
                match r.heard.iter_mut().find(|(m, ..)| m.node == from.node) {
                    Some(entry) if entry.0.incarnation > from.incarnation => {}
                    Some(entry) => *entry = (from, logged.clone(), now),
                    None => r.heard.push((from, logged.clone(), now)),
                }
                self.promised_to_me(from, logged);
                self.restart_step();
            }
            Wire::RestartClaim { ballot } => {
                let me = self.me;
                let Phase::Restarting(r) = &mut self.phase else {
                    return;
                };
                if ballot.leader != from || !r.leaders.contains(&from.node) {
                    return;
                }
                r.saw_attempt_by(from.node, me.node, self.now_ms);
                if r.promised.is_some_and(|p| p >= ballot) {
                    // Promised already (the claim came again) or outranked: the report
                    // says which, once the promise is logged.
                    if r.logged.promised.is_some_and(|p| p >= ballot) {
                        self.outputs.push(Output::Send {
                            to: from.node,
                            incarnation: Some(from.incarnation),
                            msg: Wire::RestartHello {
                                logged: r.logged.clone(),
                            },
                        });
                    }
                    return;
                }
                r.promised = Some(ballot);
                // A leader that promised a higher ballot gives up its own attempt.
                if r.claim.as_ref().is_some_and(|c| c.ballot < ballot) {
                    r.claim = None;
                }
                if r.proposing
                    .as_ref()
                    .is_some_and(|(plan, ..)| plan.ballot < ballot && plan.ballot.leader == me)
                {
                    r.proposing = None;
                }
                if r.leaders.contains(&me.node) {
                    r.back_off(me.node, self.now_ms, self.cfg.join_retry_ms);
                }
                self.outputs.push(Output::LogPromise { ballot });
            }
            Wire::RestartPrepare { plan } => {
                let now = self.now_ms;
                let Phase::Restarting(r) = &mut self.phase else {
                    return;
                };
                if from != plan.ballot.leader || !plan.view.contains(self.me) {
                    return;
                }
                r.saw_attempt_by(from.node, self.me.node, now);
                if r.promised.is_some_and(|p| p > plan.ballot)
                    || r.prepared.as_ref().is_some_and(|(p, _)| *p == plan)
                {
                    return;
                }
                r.promised = Some(plan.ballot);
                r.prepared = Some((Arc::clone(&plan), now));
                self.outputs.push(Output::LogAck {
                    view_id: plan.view.id - 1,
                    ballot: plan.ballot,
                    next: Arc::clone(&plan.view),
                });
            }
            Wire::RestartAck { view_id, ballot } => self.restart_acked(from, view_id, ballot),
            Wire::RestartCommit { view_id, ballot } => {
                let Phase::Restarting(r) = &self.phase else {
                    return;
                };
                // Every member of the plan acknowledged it: it was chosen, and installing
                // it is right even after a promise of a higher ballot.
                let prepared = r
                    .prepared
                    .as_ref()
                    .filter(|(plan, _)| {
                        plan.view.id == view_id
                            && plan.ballot == ballot
                            && from == plan.ballot.leader
                    })
                    .map(|(plan, _)| Arc::clone(plan));
                if let Some(plan) = prepared {
                    self.install_restart(plan);
                    self.progress();
                }
            }
            // A live group answers: join it like any new node.
            Wire::Redirect { leader } => {
                let Phase::Restarting(r) = &self.phase else {
                    return;
                };
                let mut contacts = vec![leader];
                contacts.extend(r.contacts.iter().copied().filter(|c| *c != leader));
                self.phase = Phase::Joining {
                    contacts,
                    next_contact: 0,
                    last_attempt_ms: None,
                };
                self.attempt_join();
            }
            Wire::Welcome { view } => {
                // A restart view arrives as `Restart` (with its trims); a welcome into a
                // restart view is only its leader's courtesy.
                if view.contains(self.me) && !view.is_restart() {
                    self.setup_view(view, None);
                    self.progress();
                }
            }
            Wire::Update {
                ref data,
                row: None,
                ..
            } if data.is_empty() => {}
            Wire::Update { .. } | Wire::State { .. } => self.buffer_future(from, msg),
            Wire::JoinRequest
            | Wire::StateWanted { .. }
            | Wire::StateAck { .. }
            | Wire::Evicted { .. }
            | Wire::ReadProbe { .. }
            | Wire::ReadProbeAck { .. } => {}
        }
    }

    /// Leader: `from` reported its log after it promised the ballot being claimed (this
    /// node's own report included).
    fn promised_to_me(&mut self, from: MemberId, logged: LoggedState) {
        let Phase::Restarting(r) = &mut self.phase else {
            return;
        };
        let Some(claim) = &mut r.claim else {
            return;
        };
        if logged.promised != Some(claim.ballot) {
            return;
        }
        match claim.promises.iter_mut().find(|(m, _)| m.node == from.node) {
            Some(entry) if entry.0.incarnation > from.incarnation => {}
            Some(entry) => *entry = (from, logged),
            None => claim.promises.push((from, logged)),
        }
    }

    /// Says hello (to the leaders and, to find a live group, to every contact) when due;
    /// as the leader that hears from none before it, restarts the group once the reports
    /// allow it: claim a ballot, plan from the promised reports, prepare, commit.
    fn restart_step(&mut self) {
        let now = self.now_ms;
        let me = self.me;
        let retry_ms = self.cfg.join_retry_ms;
        let fresh_ms = self.cfg.suspicion_timeout_ms;
        let grace_ms = self.cfg.restart_grace_ms;
        let Phase::Restarting(r) = &mut self.phase else {
            return;
        };
        if r.last_hello_ms
            .is_none_or(|t| now.saturating_sub(t) >= retry_ms)
        {
            r.last_hello_ms = Some(now);
            let hello = Wire::RestartHello {
                logged: r.logged.clone(),
            };
            let mut targets = r.contacts.clone();
            for leader in &r.leaders {
                if !targets.contains(leader) {
                    targets.push(*leader);
                }
            }
            targets.retain(|t| *t != me.node);
            for to in targets {
                self.outputs.push(Output::Send {
                    to,
                    incarnation: None,
                    msg: hello.clone(),
                });
            }
        }
        let Phase::Restarting(r) = &mut self.phase else {
            return;
        };
        let Some(rank) = r.leaders.iter().position(|l| *l == me.node) else {
            return;
        };
        r.heard
            .retain(|(m, _, at)| m.node != me.node && now.saturating_sub(*at) <= fresh_ms);
        // A leader before me is back and restarting: it leads, unless what I hear has
        // allowed a restart for as long as one takes and it made no attempt (it hears too
        // few: it is cut off from the others, which reach me). Ballots keep two leaders
        // safe; an earlier leader waiting for the reports I wait for is not stuck.
        match r
            .heard
            .iter()
            .find(|(m, ..)| r.leaders[..rank].contains(&m.node))
        {
            Some((earlier, ..)) => {
                let reports = restart_reports(me, &r.logged, &r.heard);
                let ready =
                    restart::plan(&self.cfg.layout, &reports, restart_ballot(0, me)).is_ok();
                let patient = if ready {
                    let since = *r.deferring_since_ms.get_or_insert(now);
                    now.saturating_sub(since) < restart_patience_ms(grace_ms, fresh_ms, rank)
                } else {
                    r.deferring_since_ms = None;
                    true
                };
                if patient {
                    r.waiting = Some(RestartWait::Deferring {
                        leader: earlier.node,
                    });
                    r.ready_since_ms = None;
                    return;
                }
            }
            None => r.deferring_since_ms = None,
        }
        r.waiting = None;
        if let Some((_, _, since)) = &r.proposing {
            // Every member of the plan must log its agreement before anyone installs it;
            // one that does not answer in time is left out of the next plan.
            if now.saturating_sub(*since) <= 2 * fresh_ms {
                return;
            }
            r.proposing = None;
            r.back_off(me.node, now, retry_ms);
        }
        if let Some(claim) = &r.claim {
            let everyone = claim
                .asked
                .iter()
                .chain(std::iter::once(&me))
                .all(|a| claim.promises.iter().any(|(m, _)| m == a));
            if !everyone && now.saturating_sub(claim.since_ms) <= fresh_ms {
                return;
            }
            let ballot = claim.ballot;
            let reports: Vec<(MemberId, &LoggedState)> =
                claim.promises.iter().map(|(m, l)| (*m, l)).collect();
            // A plan without this leader (its own promise not logged in time) waits for
            // the next claim: the leader is a member of what it commits.
            let planned = restart::plan(&self.cfg.layout, &reports, ballot)
                .ok()
                .filter(|plan| plan.view.contains(me));
            r.claim = None;
            match planned {
                Some(plan) => self.propose_restart(Arc::new(plan)),
                None => r.back_off(me.node, now, retry_ms),
            }
            return;
        }
        if now < r.claim_after_ms {
            return;
        }
        let reports = restart_reports(me, &r.logged, &r.heard);
        if let Err(why) = restart::plan(&self.cfg.layout, &reports, restart_ballot(0, me)) {
            r.waiting = Some(RestartWait::NotYet(why));
            r.ready_since_ms = None;
            return;
        }
        let since = *r.ready_since_ms.get_or_insert(now);
        if !restart::everyone_back(&reports) && now.saturating_sub(since) < grace_ms {
            r.waiting = Some(RestartWait::Grace);
            return;
        }
        // Above every restart ballot any report shows, promised or agreed to.
        let attempt = reports
            .iter()
            .flat_map(|(_, l)| {
                l.promised
                    .into_iter()
                    .chain(l.acked.iter().map(|(b, _)| *b))
            })
            .chain(r.promised)
            .map(restart_attempt)
            .max()
            .unwrap_or(0)
            + 1;
        let ballot = restart_ballot(attempt, me);
        let asked: Vec<MemberId> = r.heard.iter().map(|(m, ..)| *m).collect();
        r.promised = Some(ballot);
        r.claim = Some(Claim {
            ballot,
            asked: asked.clone(),
            promises: Vec::new(),
            since_ms: now,
        });
        for m in asked {
            self.outputs.push(Output::Send {
                to: m.node,
                incarnation: Some(m.incarnation),
                msg: Wire::RestartClaim { ballot },
            });
        }
        self.outputs.push(Output::LogPromise { ballot });
    }

    /// Leader: sends the plan made from the promised reports to its members, and logs its
    /// own agreement.
    fn propose_restart(&mut self, plan: Arc<RestartPlan>) {
        let now = self.now_ms;
        let me = self.me;
        let Phase::Restarting(r) = &mut self.phase else {
            return;
        };
        r.proposing = Some((Arc::clone(&plan), Vec::new(), now));
        r.prepared = Some((Arc::clone(&plan), now));
        for m in plan.view.members.iter().filter(|m| **m != me) {
            self.outputs.push(Output::Send {
                to: m.node,
                incarnation: Some(m.incarnation),
                msg: Wire::RestartPrepare {
                    plan: Arc::clone(&plan),
                },
            });
        }
        self.outputs.push(Output::LogAck {
            view_id: plan.view.id - 1,
            ballot: plan.ballot,
            next: Arc::clone(&plan.view),
        });
    }

    /// Leader: `from` logged its agreement to the plan for `view_id` of `ballot` (an
    /// agreement to an earlier plan for the same view counts for nothing); once every
    /// member of the plan has, the plan is committed and installed.
    fn restart_acked(&mut self, from: MemberId, view_id: ViewId, ballot: Ballot) {
        let me = self.me;
        let Phase::Restarting(r) = &mut self.phase else {
            return;
        };
        let Some((plan, acked, _)) = &mut r.proposing else {
            return;
        };
        if plan.view.id != view_id || plan.ballot != ballot || !plan.view.contains(from) {
            return;
        }
        if !acked.contains(&from) {
            acked.push(from);
        }
        if plan.view.members.iter().any(|m| !acked.contains(m)) {
            return;
        }
        let plan = Arc::clone(plan);
        for m in plan.view.members.iter().filter(|m| **m != me) {
            self.outputs.push(Output::Send {
                to: m.node,
                incarnation: Some(m.incarnation),
                msg: Wire::RestartCommit {
                    view_id,
                    ballot: plan.ballot,
                },
            });
        }
        self.install_restart(plan);
        self.progress();
    }

    fn install_restart(&mut self, plan: Arc<RestartPlan>) {
        self.outputs.push(Output::Restart(Arc::clone(&plan)));
        self.transfer_tails.clear();
        self.restart = Some(Arc::clone(&plan));
        self.setup_view(Arc::clone(&plan.view), None);
        self.restart = None;
    }

    fn attempt_join(&mut self) {
        let now = self.now_ms;
        let target = match &mut self.phase {
            Phase::Joining {
                contacts,
                next_contact,
                last_attempt_ms,
            } => {
                let target = contacts[*next_contact % contacts.len()];
                *next_contact = (*next_contact + 1) % contacts.len();
                *last_attempt_ms = Some(now);
                target
            }
            _ => return,
        };
        self.send_to(target, None, Wire::JoinRequest);
    }

    fn buffer_future(&mut self, from: MemberId, msg: Wire) {
        if self.future.len() >= self.cfg.future_messages_max {
            self.stop(StopReason::FellBehind);
            return;
        }
        self.future.push_back((from, msg));
    }

    fn notify_evicted(&mut self, member: MemberId) {
        if self.evicted_notified.contains(&member) {
            return;
        }
        self.evicted_notified.push(member);
        let view_id = self.current_view().id;
        self.send_to(
            member.node,
            Some(member.incarnation),
            Wire::Evicted { view_id },
        );
    }

    fn send_to(&mut self, to: NodeId, incarnation: Option<u32>, msg: Wire) {
        self.outputs.push(Output::Send {
            to,
            incarnation,
            msg,
        });
    }

    // ----- the predicate loop --------------------------------------------------------

    fn progress(&mut self) {
        // Each pass either changes something monotone or stops; the bound is a guard
        // against a livelock bug, far above what any real step needs.
        for _ in 0..256 {
            if !self.is_member() {
                return;
            }
            let mut changed = self.merge_suspicions();
            if !self.is_member() {
                return;
            }
            changed |= self.stop_waiting_for_joiners();
            changed |= self.multicast();
            changed |= self.membership();
            if !self.is_member() {
                return;
            }
            if self.committed.is_some() {
                changed |= self.end_epoch();
            }
            if !changed {
                return;
            }
        }
    }

    /// A state source waiting for its joiners to say what their logs hold stops waiting
    /// once one of them is suspected or this member wedged (a view change is under way,
    /// which needs the shard released): it asks for the whole state now.
    fn stop_waiting_for_joiners(&mut self) -> bool {
        let wedged = self.my_row().wedged;
        let view = Arc::clone(self.current_view());
        let mut changed = false;
        for g in 0..self.shards.len() {
            let Some(shard) = self.shards[g].as_ref() else {
                continue;
            };
            if shard.wanted.is_none() {
                continue;
            }
            let gone = shard
                .joiners
                .iter()
                .any(|j| view.rank_of(*j).is_none_or(|r| self.is_suspected(r)));
            if !(wedged || gone) {
                continue;
            }
            let Some(shard) = self.shards[g].as_mut() else {
                continue;
            };
            shard.wanted = None;
            self.outputs.push(Output::StateTransferRequest {
                view_id: view.id,
                subgroup: g as u32,
                shard: shard.shard as u32,
                joiners: shard.joiners.clone(),
                joiners_hold: None,
            });
            changed = true;
        }
        changed
    }

    /// Gossip: adopt every suspicion and leave notice found in peers' rows; stop if we are
    /// suspected or left in a minority.
    fn merge_suspicions(&mut self) -> bool {
        let n = self.view_size();
        let mut changed = false;
        for r in 0..n {
            if r == self.my_rank {
                continue;
            }
            let row = Arc::clone(&self.rows[r]);
            if row.suspected.get(self.my_rank).copied().unwrap_or(false) && !self.is_suspected(r) {
                self.stop(StopReason::Evicted);
                return true;
            }
            for (q, suspected) in row.suspected.iter().enumerate() {
                if *suspected && !self.is_suspected(q) && q != self.my_rank {
                    self.suspect_rank(q);
                    changed = true;
                }
            }
        }
        // With read leases, a wedged leader is about to propose and may be waiting for its
        // leaseholders to wedge (see `membership`): wedging, I give my lease up.
        let leader = self.believed_leader();
        if self.leases_on()
            && leader != self.my_rank
            && self.rows[leader].wedged
            && !self.my_row().wedged
        {
            self.my_row_mut().wedged = true;
            changed = true;
        }
        let failed = self.my_row().suspected.iter().filter(|s| **s).count();
        // Cut off in a minority, a member stops. Even with the next view committed: until
        // its trims are applied it would settle them with the few it still hears, while
        // the majority settles them without it (soak seed 22458: a leader partitioned
        // after its change committed delivered one message more than everyone else).
        let trims_pending = self.shards.iter().flatten().any(|s| !s.trim_applied);
        if failed > 0
            && (self.committed.is_none() || trims_pending)
            && self.cfg.partition_safety
            && (n - failed) * 2 <= n
        {
            self.stop(StopReason::MinorityPartition);
            return true;
        }
        changed
    }

    fn suspect_rank(&mut self, rank: usize) {
        if rank >= self.view_size() || rank == self.my_rank || self.is_suspected(rank) {
            return;
        }
        let row = self.my_row_mut();
        row.suspected[rank] = true;
        row.wedged = true;
        // A state transfer no longer waits for that member's acks.
        for g in 0..self.shards.len() {
            self.pump_state(g);
        }
    }

    // ----- ordered and raw multicast -------------------------------------------------

    fn multicast(&mut self) -> bool {
        let mut changed = false;
        let wedged = self.is_wedged();
        for g in 0..self.shards.len() {
            if self.shards[g].is_none() {
                continue;
            }
            changed |= self.deliver_received(g, wedged);
            if !wedged {
                changed |= self.send_pending(g);
                changed |= self.send_nulls(g);
            }
            self.request_persist(g);
            self.update_global_persistence(g);
        }
        changed
    }

    /// Ordered: delivers every slot all members have received (not once wedged: the trim
    /// decides). Raw: delivers everything received.
    fn deliver_received(&mut self, g: usize, wedged: bool) -> bool {
        let view_id = self.current_view().id;
        let stable = self.stable_slots(g);
        let Some(shard) = self.shards[g].as_mut() else {
            return false;
        };
        if shard.holding() {
            return false;
        }
        let mut delivered_any = false;
        match shard.mode {
            DeliveryMode::Raw => {
                for s in 0..shard.members.len() {
                    while let Some(item) = shard.inbox[s].pop_front() {
                        let index = shard.popped[s];
                        shard.popped[s] += 1;
                        if let Some(payload) = item {
                            let delivery = make_delivery(
                                shard,
                                g,
                                view_id,
                                s,
                                index,
                                None,
                                DeliveryKind::Raw,
                                payload,
                            );
                            self.outputs.push(Output::Deliver(delivery));
                            delivered_any = true;
                        }
                    }
                }
            }
            DeliveryMode::Ordered => {
                if wedged {
                    return false;
                }
                let senders = shard.senders();
                while shard.delivered_slots < stable {
                    let slot = shard.delivered_slots;
                    let s = (slot % senders) as usize;
                    let index = slot / senders;
                    assert_eq!(
                        index, shard.popped[s],
                        "slot order must follow each sender's stream"
                    );
                    let item = shard.inbox[s]
                        .pop_front()
                        .expect("a stable slot has been received");
                    shard.popped[s] += 1;
                    shard.delivered_slots += 1;
                    if let Some(payload) = item {
                        let version = Version::new(view_id, slot as u32);
                        shard.last_version = Some(version);
                        let delivery = make_delivery(
                            shard,
                            g,
                            view_id,
                            s,
                            index,
                            Some(version),
                            DeliveryKind::Stable,
                            payload,
                        );
                        self.outputs.push(Output::Deliver(delivery));
                    }
                    delivered_any = true;
                }
                if delivered_any {
                    let delivered = shard.delivered_slots;
                    if let Some(row) =
                        Arc::make_mut(&mut self.rows[self.my_rank]).shards[g].as_mut()
                    {
                        row.delivered = delivered;
                    }
                    // Only senders' windows read it, and they span many messages: a
                    // push of its own would double the row traffic of every message.
                    self.row_lazy = true;
                }
            }
        }
        delivered_any
    }

    /// Slots received by every shard member, as their rows report.
    fn stable_slots(&self, g: usize) -> u64 {
        let Some(shard) = self.shards[g].as_ref() else {
            return 0;
        };
        shard
            .ranks
            .iter()
            .map(|r| self.rows[*r].shard(g).map_or(0, |row| row.seq_received))
            .min()
            .unwrap_or(0)
    }

    fn window_allows(&self, g: usize, shard: &ShardState, index: u64) -> bool {
        let window = self.cfg.window_size;
        if index < window {
            return true;
        }
        let oldest = index - window;
        shard.ranks.iter().all(|r| {
            let Some(row) = self.rows[*r].shard(g) else {
                return false;
            };
            match shard.mode {
                DeliveryMode::Ordered => row.delivered > oldest * shard.senders() + shard.me as u64,
                DeliveryMode::Raw => row.received[shard.me] > oldest,
            }
        })
    }

    fn send_pending(&mut self, g: usize) -> bool {
        let mut sent = 0usize;
        while sent < self.cfg.batch_messages_max && !self.pending_sends[g].is_empty() {
            let Some(shard) = self.shards[g].as_ref() else {
                return false;
            };
            if shard.hold_for_state {
                // New to the shard: its messages wait until it holds the state, so a
                // failed transfer never strands a message this member sent.
                break;
            }
            let index = self
                .my_row()
                .shard(g)
                .map_or(0, |row| row.received[shard.me]);
            if (index + 1) * shard.senders() > self.cfg.view_slots_max {
                if !self.my_row().roll_requested {
                    // Epoch roll: ask for a new view with the same members.
                    self.my_row_mut().roll_requested = true;
                }
                break;
            }
            if !self.window_allows(g, shard, index) {
                break;
            }
            let Some((payload, ticket)) = self.pending_sends[g].pop_front() else {
                break;
            };
            self.append_own(g, Item::Message(payload), Some(ticket));
            sent += 1;
        }
        sent > 0
    }

    /// An idle sender fills its round-robin slots with nulls: up to every slot it has
    /// received from the others (what their delivery needs), and one round further for
    /// each sender of a message, up to just before that sender's *next* slot. A sender
    /// that keeps sending (a shard's writes routed to one member) then finds every slot
    /// before its next message filled already, and that message is stable as soon as
    /// each member acknowledges it: two network hops instead of three. The second rule
    /// follows messages only, never nulls, so nulls cannot chase each other.
    fn send_nulls(&mut self, g: usize) -> bool {
        let Some(shard) = self.shards[g].as_ref() else {
            return false;
        };
        let sending = !self.pending_sends[g].is_empty() && !shard.hold_for_state;
        if shard.mode == DeliveryMode::Raw || sending {
            return false;
        }
        let Some(row) = self.my_row().shard(g) else {
            return false;
        };
        let mine = row.received[shard.me];
        let target = null_target(
            shard.me,
            &row.received,
            &shard.message_end,
            self.cfg.view_slots_max / shard.senders(),
        );
        if target <= mine {
            return false;
        }
        let nulls = u32::try_from(target - mine).unwrap_or(u32::MAX);
        self.append_own(g, Item::Nulls(nulls), None);
        true
    }

    /// Adds one of my own messages (or nulls) to my stream: into my inbox, my counters,
    /// and the outbox of every shard peer.
    fn append_own(&mut self, g: usize, item: Item, ticket: Option<SendTicket>) {
        let my_rank = self.my_rank;
        let Some(shard) = self.shards[g].as_mut() else {
            return;
        };
        let Some(row) = Arc::make_mut(&mut self.rows[my_rank]).shards[g].as_mut() else {
            return;
        };
        let index = row.received[shard.me];
        let seq_before = row.seq_received;
        let slots = item.slots();
        match &item {
            Item::Message(payload) => {
                shard.inbox[shard.me].push_back(Some(payload.clone()));
                if let Some(ticket) = ticket {
                    shard.own_tickets.push_back((index, ticket));
                }
            }
            Item::Nulls(n) => {
                if shard.mode == DeliveryMode::Ordered {
                    shard.inbox[shard.me].extend(std::iter::repeat_n(None, *n as usize));
                } else {
                    shard.popped[shard.me] += u64::from(*n);
                }
            }
        }
        row.received[shard.me] += slots;
        row.seq_received = seq_received(&row.received);
        let eager = shard.mode == DeliveryMode::Raw
            || matches!(item, Item::Message(_))
            || holds_message(shard, seq_before, row.seq_received);
        for (s, rank) in shard.ranks.iter().enumerate() {
            if s == shard.me {
                continue;
            }
            let runs = &mut self.outbox[*rank];
            match runs.last_mut() {
                // Contiguous by construction: `index` advances by exactly the slots
                // appended, and a flush takes the whole outbox.
                Some(run) if run.subgroup == g as u32 => {
                    debug_assert_eq!(
                        run.first_index + run.items.iter().map(Item::slots).sum::<u64>(),
                        index,
                        "an outbox run must stay contiguous"
                    );
                    match (run.items.last_mut(), &item) {
                        (Some(Item::Nulls(a)), Item::Nulls(b)) if a.checked_add(*b).is_some() => {
                            *a += *b
                        }
                        _ => run.items.push(item.clone()),
                    }
                }
                _ => runs.push(DataRun {
                    subgroup: g as u32,
                    first_index: index,
                    items: vec![item.clone()],
                }),
            }
        }
        if eager {
            self.row_dirty = true;
        } else {
            self.row_lazy = true;
        }
    }

    fn request_persist(&mut self, g: usize) {
        let Some(shard) = self.shards[g].as_mut() else {
            return;
        };
        if let Some(version) = shard.last_version
            && shard.persist_asked < Some(version)
        {
            shard.persist_asked = Some(version);
            self.outputs.push(Output::Persist {
                subgroup: g as u32,
                version,
            });
        }
    }

    /// Emits `GlobalPersisted` when the minimum persisted version over the shard grows. An
    /// output only: it changes nothing the predicates read.
    fn update_global_persistence(&mut self, g: usize) {
        let Some(shard) = self.shards[g].as_ref() else {
            return;
        };
        if shard.mode == DeliveryMode::Raw {
            return;
        }
        let frontier = shard
            .ranks
            .iter()
            .map(|r| self.rows[*r].shard(g).and_then(|row| row.persisted))
            .min()
            .flatten();
        let Some(frontier) = frontier else {
            return;
        };
        let shard = self.shards[g].as_mut().expect("checked above");
        if shard.global_persisted.is_some_and(|p| p >= frontier) {
            return;
        }
        shard.global_persisted = Some(frontier);
        self.outputs.push(Output::GlobalPersisted {
            subgroup: g as u32,
            version: frontier,
        });
    }

    // ----- membership: propose, acknowledge, commit ----------------------------------

    fn membership(&mut self) -> bool {
        if self.learn_commit() {
            return true;
        }
        // A decision made by others is learnt above; my own agreement waits for the
        // members I promised a read lease (see `request_read`).
        if self.promised_away() {
            if self.agreement_wanted() && !self.my_row().wedged {
                // Wedged, I promise nothing more, and the members I promised wedge on
                // seeing a wedged leader (`merge_suspicions`): then I may agree.
                self.my_row_mut().wedged = true;
                return true;
            }
            return false;
        }
        let leader = self.believed_leader();
        if leader == self.my_rank {
            self.lead()
        } else {
            self.follow(leader)
        }
    }

    fn lead(&mut self) -> bool {
        let n = self.view_size();
        // Failover barrier: every unsuspected member must suspect all ranks below mine, so
        // none of them can still acknowledge an earlier leader.
        for r in 0..n {
            if self.is_suspected(r) || r == self.my_rank {
                continue;
            }
            if (0..self.my_rank).any(|q| !self.rows[r].suspected[q]) {
                return false;
            }
        }
        let mut changed = false;
        let mine = self.my_proposal();
        let leading = mine.as_ref().is_some_and(|p| p.ballot.leader == self.me);
        if !leading {
            let highest = (0..n)
                .filter(|r| !self.is_suspected(*r))
                .filter_map(|r| self.rows[r].proposal.clone())
                .max_by_key(|p| p.ballot);
            if let Some(prior) = highest {
                if let Some(committed) = &self.committed {
                    assert_eq!(
                        committed.change, prior.change,
                        "{}: committed change was superseded",
                        self.me
                    );
                }
                // Re-propose a previous leader's change unchanged: it may be committed.
                self.adopted = true;
                let change = prior.change.clone();
                self.publish_proposal(change);
                changed = true;
            } else if self.needs_change() {
                changed |= self.propose_fresh();
            }
        } else if !self.adopted && self.committed.is_none() {
            let proposal = mine.expect("leading implies a proposal");
            let covered = (0..n).filter(|r| self.is_suspected(*r)).all(|r| {
                let m = self.current_view().members[r];
                proposal.change.failed.contains(&m) || proposal.change.left.contains(&m)
            });
            if !covered {
                changed |= self.propose_fresh();
            }
        }
        // Only the proposal I stand by now: one superseded while its successor is being
        // logged must not be committed, whoever acknowledged it.
        if self.committed.is_none()
            && self.ack_logging.is_none()
            && let Some(proposal) = self.my_row().proposal.clone()
            && proposal.ballot.leader == self.me
        {
            let all_acked = (0..n)
                .filter(|r| !self.is_suspected(*r))
                .all(|r| self.rows[r].acked_ballot() == Some(proposal.ballot));
            if all_acked {
                self.my_row_mut().committed = Some(proposal.ballot);
                self.commit(proposal);
                changed = true;
            }
        }
        changed
    }

    fn needs_change(&self) -> bool {
        let n = self.view_size();
        // A wedged row without suspicion or leave is an epoch roll request.
        !self.pending_joins.is_empty()
            || (0..n).any(|r| {
                self.is_suspected(r) || self.rows[r].leaving || self.rows[r].roll_requested
            })
    }

    /// Proposes removal of every suspected and leaving member and admission of pending
    /// joiners, if the resulting view is adequately provisioned.
    fn propose_fresh(&mut self) -> bool {
        let view = Arc::clone(self.current_view());
        let mut change = Change::default();
        for (r, m) in view.members.iter().enumerate() {
            if self.is_suspected(r) {
                change.failed.push(*m);
            } else if self.rows[r].leaving {
                change.left.push(*m);
            }
        }
        change.failed.sort();
        change.left.sort();
        change.joined = self
            .pending_joins
            .iter()
            .copied()
            .filter(|j| {
                !view
                    .members
                    .iter()
                    .any(|m| m.node == j.node && !change.failed.contains(m))
            })
            .collect();
        for (r, m) in view.members.iter().enumerate() {
            if change.failed.contains(m) || change.left.contains(m) {
                continue;
            }
            // A joiner holds the state only once its row says so (a row not seen yet
            // proves nothing).
            for (g, shards) in view.shards.iter().enumerate() {
                let joiner = shards.iter().any(|sv| sv.joined.contains(m));
                let has_state = self.rows[r].shard(g).is_some_and(|row| !row.awaiting_state);
                if joiner && !has_state {
                    change.stateless.push((*m, g as u32));
                }
            }
        }
        change.stateless.sort();
        if next_view(&self.cfg, &view, &change).is_err() && !change.left.is_empty() {
            // Leaving would under-provision a shard: those leaves wait for joins, the
            // rest of the change goes ahead.
            change.left.clear();
        }
        let roll = (0..view.members.len()).any(|r| self.rows[r].roll_requested);
        // Members being fed state are no reason for a new view on their own.
        let empty = change.failed.is_empty() && change.left.is_empty() && change.joined.is_empty();
        if (empty && !roll) || next_view(&self.cfg, &view, &change).is_err() {
            // Inadequate: wedged (by the suspicion) until joins make the layout feasible.
            return false;
        }
        self.adopted = false;
        self.publish_proposal(change);
        true
    }

    fn publish_proposal(&mut self, change: Change) {
        let round = self
            .rows
            .iter()
            .filter_map(|row| row.proposal.as_ref().map(|p| p.ballot.round))
            .chain(self.ack_logging.as_ref().map(|p| p.ballot.round))
            .max()
            .unwrap_or(0)
            + 1;
        let proposal = Proposal {
            ballot: Ballot {
                round,
                leader: self.me,
            },
            view_id: self.current_view().id,
            change,
        };
        self.my_row_mut().wedged = true;
        self.log_ack(Arc::new(proposal));
    }

    /// The latest proposal I agreed to, logged or still being logged.
    fn my_proposal(&self) -> Option<Arc<Proposal>> {
        self.ack_logging
            .clone()
            .or_else(|| self.my_row().proposal.clone())
    }

    /// Asks the driver to log my agreement to `proposal`; my row shows it once logged.
    fn log_ack(&mut self, proposal: Arc<Proposal>) {
        let view = Arc::clone(self.current_view());
        match next_view(&self.cfg, &view, &proposal.change) {
            Ok(next) => {
                self.outputs.push(Output::LogAck {
                    view_id: view.id,
                    ballot: proposal.ballot,
                    next: Arc::new(next),
                });
                self.ack_logging = Some(proposal);
            }
            // Never committed (committing it would fail): nothing to make durable.
            Err(_) => self.my_row_mut().proposal = Some(proposal),
        }
    }

    fn follow(&mut self, leader: usize) -> bool {
        let leader_row = Arc::clone(&self.rows[leader]);
        let leader_id = self.current_view().members[leader];
        let mut changed = false;
        if let Some(proposal) = leader_row.proposal.as_ref() {
            let newer = self
                .my_proposal()
                .is_none_or(|mine| proposal.ballot > mine.ballot);
            if proposal.ballot.leader == leader_id
                && newer
                && proposal.view_id == self.current_view().id
            {
                if !self.acknowledge(proposal, true) {
                    return true;
                }
                changed = true;
            }
        }
        if self.committed.is_none()
            && let (Some(committed), Some(mine)) =
                (leader_row.committed, self.my_row().proposal.clone())
            && mine.ballot == committed
        {
            self.my_row_mut().committed = Some(committed);
            self.commit(mine);
            changed = true;
        }
        changed
    }

    /// A decision is a fact whoever reports it: a row (even a suspected member's final
    /// one) that shows its proposal committed tells us the next view. Without this, a
    /// leader that crashes mid-commit strands the members that missed it, waiting for
    /// acks from members that have already installed the next view.
    fn learn_commit(&mut self) -> bool {
        if self.committed.is_some() {
            return false;
        }
        let view_id = self.current_view().id;
        let decided = self.rows.iter().find_map(|row| {
            let proposal = row.proposal.as_ref()?;
            (row.committed == Some(proposal.ballot) && proposal.view_id == view_id)
                .then(|| Arc::clone(proposal))
        });
        let Some(proposal) = decided else {
            return false;
        };
        // Decided already (by agreements that were logged): nothing to log here.
        if self.acknowledge(&proposal, false) {
            self.my_row_mut().committed = Some(proposal.ballot);
            self.commit(proposal);
        }
        true
    }

    /// Agrees to `proposal` (wedged), suspecting whom it removes; my row shows it at once,
    /// or once logged when `durable`. Returns false if it removes me against my will:
    /// then I have stopped.
    fn acknowledge(&mut self, proposal: &Arc<Proposal>, durable: bool) -> bool {
        if proposal.change.failed.contains(&self.me)
            || (proposal.change.left.contains(&self.me) && !self.leave_requested)
        {
            self.stop(StopReason::Evicted);
            return false;
        }
        if let Some(committed) = &self.committed {
            assert_eq!(
                committed.change, proposal.change,
                "{}: committed change was superseded",
                self.me
            );
        }
        let view = Arc::clone(self.current_view());
        for m in &proposal.change.failed {
            if let Some(r) = view.rank_of(*m) {
                self.suspect_rank(r);
            }
        }
        self.my_row_mut().wedged = true;
        if durable {
            self.log_ack(Arc::clone(proposal));
        } else {
            self.ack_logging = None;
            self.my_row_mut().proposal = Some(Arc::clone(proposal));
        }
        true
    }

    fn commit(&mut self, proposal: Arc<Proposal>) {
        let view = Arc::clone(self.current_view());
        match next_view(&self.cfg, &view, &proposal.change) {
            Ok(next) => {
                self.next_view = Some(Arc::new(next));
                self.committed = Some(proposal);
                self.ack_logging = None;
                self.my_row_mut().wedged = true;
            }
            Err(inadequate) => {
                panic!(
                    "{}: committed change is not adequately provisioned: {inadequate}",
                    self.me
                )
            }
        }
    }

    // ----- ending a view: flush, trim, deliver, persist, install ---------------------

    fn end_epoch(&mut self) -> bool {
        let mut changed = false;
        let mut all_done = true;
        for g in 0..self.shards.len() {
            if self.shards[g].is_none() {
                continue;
            }
            changed |= self.mark_flush_ready(g);
            let mode = self.shards[g].as_ref().map(|s| s.mode);
            if mode == Some(DeliveryMode::Ordered) {
                changed |= self.lead_trim(g);
                changed |= self.follow_trim(g);
                changed |= self.apply_trim(g);
            } else {
                changed |= self.deliver_received(g, true);
            }
            changed |= self.mark_done(g);
            all_done &= self.shard_peers_done(g);
        }
        if all_done {
            self.install_next_view();
            return true;
        }
        changed
    }

    /// This member waits for the shard's state from a source we suspect: it will never
    /// come in this view.
    fn state_abandoned(&self, g: usize) -> bool {
        self.shards[g].as_ref().is_some_and(|shard| {
            shard.hold_for_state
                && shard
                    .state_source
                    .and_then(|s| self.current_view().rank_of(s))
                    .is_some_and(|r| self.is_suspected(r))
        })
    }

    fn unsuspected_shard_ranks(&self, g: usize) -> Vec<usize> {
        self.shards[g]
            .as_ref()
            .map(|s| {
                s.ranks
                    .iter()
                    .copied()
                    .filter(|r| !self.is_suspected(*r))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ready once every live sender's wedged row has arrived (its whole stream precedes
    /// that row on the FIFO link). From then on this member's counters are final.
    fn mark_flush_ready(&mut self, g: usize) -> bool {
        let Some(row) = self.my_row().shard(g) else {
            return false;
        };
        if row.flush_ready {
            return false;
        }
        // A wedged sender sends nothing more, so its row's count of its own stream is
        // final; once that many of its messages are here, so is its whole stream (even
        // if a transport let the row overtake the data).
        let shard = self.shards[g].as_ref().expect("caller checked");
        let ready = shard.ranks.iter().enumerate().all(|(s, r)| {
            *r == self.my_rank
                || self.is_suspected(*r)
                || (self.rows[*r].wedged
                    && self.rows[*r]
                        .shard(g)
                        .is_some_and(|theirs| row.received[s] >= theirs.received[s]))
        });
        if ready && let Some(row) = self.my_row_mut().shards[g].as_mut() {
            row.flush_ready = true;
        }
        ready
    }

    fn shard_leader(&self, g: usize) -> Option<usize> {
        self.unsuspected_shard_ranks(g).into_iter().min()
    }

    fn lead_trim(&mut self, g: usize) -> bool {
        if self.shard_leader(g) != Some(self.my_rank) {
            return false;
        }
        let live = self.unsuspected_shard_ranks(g);
        let shard = self.shards[g].as_ref().expect("caller checked");
        let lower: Vec<usize> = shard
            .ranks
            .iter()
            .copied()
            .filter(|r| *r < self.my_rank)
            .collect();
        if !live
            .iter()
            .all(|r| lower.iter().all(|q| self.rows[*r].suspected[*q]))
        {
            return false;
        }
        let published = self.my_row().shard(g).and_then(|row| row.trim.clone());
        if published
            .as_ref()
            .is_some_and(|t| t.ballot.leader == self.me)
            || shard.trim_logging.is_some()
        {
            return false;
        }
        let round = shard
            .ranks
            .iter()
            .filter_map(|r| {
                self.rows[*r]
                    .shard(g)
                    .and_then(|row| row.trim.as_ref())
                    .map(|t| t.ballot.round)
            })
            .max()
            .unwrap_or(0)
            + 1;
        let ballot = Ballot {
            round,
            leader: self.me,
        };
        let prior = live
            .iter()
            .filter_map(|r| self.rows[*r].shard(g).and_then(|row| row.trim.clone()))
            .max_by_key(|t| t.ballot);
        let received = if let Some(prior) = prior {
            prior.received.clone()
        } else {
            let all_ready = live
                .iter()
                .all(|r| self.rows[*r].shard(g).is_some_and(|row| row.flush_ready));
            if !all_ready {
                return false;
            }
            (0..shard.members.len())
                .map(|s| {
                    live.iter()
                        .map(|r| self.rows[*r].shard(g).map_or(0, |row| row.received[s]))
                        .min()
                        .unwrap_or(0)
                })
                .collect()
        };
        self.log_trim(g, Arc::new(Trim { ballot, received }));
        true
    }

    fn follow_trim(&mut self, g: usize) -> bool {
        let Some(leader) = self.shard_leader(g) else {
            return false;
        };
        if leader == self.my_rank {
            return false;
        }
        let leader_id = self.current_view().members[leader];
        let Some(trim) = self.rows[leader].shard(g).and_then(|row| row.trim.clone()) else {
            return false;
        };
        let mine = self
            .my_row()
            .shard(g)
            .and_then(|row| row.trim.as_ref().map(|t| t.ballot));
        if trim.ballot.leader != leader_id || mine.is_some_and(|b| b >= trim.ballot) {
            return false;
        }
        let shard = self.shards[g].as_ref().expect("caller checked");
        if shard
            .trim_logging
            .as_ref()
            .is_some_and(|t| t.ballot >= trim.ballot)
        {
            return false;
        }
        self.log_trim(g, trim);
        true
    }

    /// Publishes `trim` once it is logged; asks the driver to log it first if this content
    /// has not been logged yet.
    fn log_trim(&mut self, g: usize, trim: Arc<Trim>) {
        let view_id = self.current_view().id;
        let shard = self.shards[g].as_mut().expect("caller checked");
        if shard
            .trim_logged
            .as_ref()
            .is_some_and(|t| t.received == trim.received)
        {
            shard.trim_logged = Some(Arc::clone(&trim));
            if let Some(row) = Arc::make_mut(&mut self.rows[self.my_rank]).shards[g].as_mut() {
                row.trim = Some(trim);
            }
            self.row_dirty = true;
            return;
        }
        shard.trim_logging = Some(Arc::clone(&trim));
        let shard_index = shard.shard as u32;
        self.outputs.push(Output::PersistTrim {
            view_id,
            subgroup: g as u32,
            shard: shard_index,
            trim,
        });
    }

    fn apply_trim(&mut self, g: usize) -> bool {
        let view_id = self.current_view().id;
        // A logged trim whose publication was waiting on the log.
        let shard = self.shards[g].as_ref().expect("caller checked");
        if let Some(logged) = shard.trim_logged.clone() {
            let published = self
                .my_row()
                .shard(g)
                .and_then(|row| row.trim.as_ref().map(|t| t.ballot));
            if published.is_none_or(|b| b < logged.ballot) {
                if let Some(row) = self.my_row_mut().shards[g].as_mut() {
                    row.trim = Some(logged);
                }
                return true;
            }
        }
        let shard = self.shards[g].as_ref().expect("caller checked");
        let abandoned = self.state_abandoned(g);
        if shard.trim_applied || (shard.holding() && !abandoned) {
            return false;
        }
        let Some(trim) = self.my_row().shard(g).and_then(|row| row.trim.clone()) else {
            return false;
        };
        if abandoned {
            // Without the shard's state these messages mean nothing here; the next view
            // sends this member the state, trimmed messages included.
            let echoed = self.unsuspected_shard_ranks(g).iter().all(|r| {
                self.rows[*r]
                    .shard(g)
                    .and_then(|row| row.trim.as_ref())
                    .is_some_and(|t| t.received == trim.received)
            });
            if !echoed {
                return false;
            }
            let shard = self.shards[g].as_mut().expect("caller checked");
            shard.inbox.iter_mut().for_each(VecDeque::clear);
            shard.trim_applied = true;
            return true;
        }
        let echoed = self.unsuspected_shard_ranks(g).iter().all(|r| {
            self.rows[*r]
                .shard(g)
                .and_then(|row| row.trim.as_ref())
                .is_some_and(|t| t.received == trim.received)
        });
        let have_all = self.my_row().shard(g).is_some_and(|row| {
            row.received
                .iter()
                .zip(&trim.received)
                .all(|(have, need)| have >= need)
        });
        if !echoed || !have_all {
            return false;
        }
        let shard = self.shards[g].as_mut().expect("caller checked");
        self.outputs.push(Output::Trimmed {
            view_id,
            subgroup: g as u32,
            shard: shard.shard as u32,
            received: trim.received.clone(),
        });
        let senders = shard.senders();
        let end_slot = trim
            .received
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(s, count)| (count - 1) * senders + s as u64 + 1)
            .max()
            .unwrap_or(0);
        while shard.delivered_slots < end_slot {
            let slot = shard.delivered_slots;
            shard.delivered_slots += 1;
            let s = (slot % senders) as usize;
            let index = slot / senders;
            if index >= trim.received[s] {
                continue;
            }
            assert_eq!(
                index, shard.popped[s],
                "trim delivery must follow each sender's stream"
            );
            let item = shard.inbox[s]
                .pop_front()
                .expect("the trim covers only received messages");
            shard.popped[s] += 1;
            if let Some(payload) = item {
                let version = Version::new(view_id, slot as u32);
                shard.last_version = Some(version);
                let delivery = make_delivery(
                    shard,
                    g,
                    view_id,
                    s,
                    index,
                    Some(version),
                    DeliveryKind::Trim,
                    payload,
                );
                self.outputs.push(Output::Deliver(delivery));
            }
        }
        shard.trim_applied = true;
        self.request_persist(g);
        true
    }

    fn mark_done(&mut self, g: usize) -> bool {
        if self.my_row().shard(g).is_none_or(|row| row.done) {
            return false;
        }
        let shard = self.shards[g].as_ref().expect("caller checked");
        let done = match shard.mode {
            DeliveryMode::Raw => {
                self.my_row().shard(g).is_some_and(|row| row.flush_ready)
                    && (!shard.holding() || self.state_abandoned(g))
                    && shard.inbox.iter().all(VecDeque::is_empty)
            }
            DeliveryMode::Ordered => shard.trim_applied && shard.persisted >= shard.last_version,
        };
        if done && let Some(row) = self.my_row_mut().shards[g].as_mut() {
            row.done = true;
        }
        done
    }

    fn shard_peers_done(&self, g: usize) -> bool {
        self.unsuspected_shard_ranks(g)
            .iter()
            .all(|r| self.rows[*r].shard(g).is_some_and(|row| row.done))
    }

    fn install_next_view(&mut self) {
        // Peers of the ending view may still wait for my final row (my `done`): push it
        // before the view's links are reset.
        self.row_dirty = true;
        self.flush();
        let next = self.next_view.take().expect("install follows commit");
        for g in 0..self.shards.len() {
            let Some(shard) = self.shards[g].as_ref() else {
                continue;
            };
            // The whole trimmed view is durable at every shard member that carries into the
            // next view, if each of them said so (a suspected one may not have; one still
            // without the shard's state dropped the trim and persisted none of it).
            let Some(version) = shard.last_version else {
                continue;
            };
            let confirmed = shard.ranks.iter().all(|r| {
                *r == self.my_rank
                    || !next.contains(self.current_view().members[*r])
                    || self.rows[*r]
                        .shard(g)
                        .is_some_and(|row| row.done && !row.awaiting_state)
            });
            if confirmed && shard.global_persisted < Some(version) {
                self.outputs.push(Output::GlobalPersisted {
                    subgroup: g as u32,
                    version,
                });
            }
        }
        if !next.contains(self.me) {
            let reason = if self.leave_requested {
                StopReason::Left
            } else {
                StopReason::Evicted
            };
            self.stop(reason);
            return;
        }
        let previous = self.view.clone();
        self.setup_view(next, previous);
    }

    /// Enters `view`: fresh rows and multicast state, carried-over suspicions, welcomes for
    /// joiners (if we lead it), state transfer holds, then buffered messages for it.
    fn setup_view(&mut self, view: Arc<View>, previous: Option<Arc<View>>) {
        let n = view.members.len();
        let subgroups = self.cfg.layout.subgroups.len();
        let my_rank = view.rank_of(self.me).expect("only members set up a view");
        let mut my_row = Row::empty(view.id, n, subgroups);
        if let Some(prev) = &previous {
            for (r, m) in view.members.iter().enumerate() {
                if let Some(old_rank) = prev.rank_of(*m)
                    && *m != self.me
                    && self
                        .rows
                        .get(old_rank)
                        .is_some_and(|_| self.my_row().suspected[old_rank])
                {
                    my_row.suspected[r] = true;
                    my_row.wedged = true;
                }
            }
        }
        if self.leave_requested {
            my_row.leaving = true;
            my_row.wedged = true;
        }
        self.outputs.push(Output::InstallView(Arc::clone(&view)));
        self.settle_reads(Some(&view), view.id, Ok(None));
        // The view these promised in is over: by then each member wedged or its lease ran
        // out (no view change was agreed before that).
        self.promises.clear();
        self.reads.lease_view = None;
        let mut aborted = Vec::new();
        for g in 0..subgroups {
            let Some(s) = view.shard_of(g, self.me) else {
                self.shards[g] = None;
                if !self.pending_sends[g].is_empty() {
                    let tickets = self.pending_sends[g].drain(..).map(|(_, t)| t).collect();
                    aborted.push(Output::SendsAborted {
                        subgroup: g as u32,
                        tickets,
                    });
                }
                continue;
            };
            let sv = &view.shards[g][s];
            let senders = sv.members.len();
            let me_in_shard = sv
                .members
                .iter()
                .position(|m| *m == self.me)
                .expect("shard_of found it");
            let ranks = sv
                .members
                .iter()
                .map(|m| view.rank_of(*m).expect("shard members are members"))
                .collect();
            let hold_for_supply = sv.state_source == Some(self.me) && !sv.joined.is_empty();
            let hold_for_state = sv.joined.contains(&self.me);
            let restart_shard = self
                .restart
                .as_ref()
                .filter(|plan| plan.view.id == view.id)
                .and_then(|plan| plan.shards.get(g)?.get(s));
            let joiners_hold = restart_shard.and_then(|rs| rs.joiners_hold);
            // A restart view's plan says what the joiners' logs hold; otherwise each
            // joiner says it, and the source waits for all of them.
            let wanted =
                (hold_for_supply && restart_shard.is_none()).then(|| vec![None; sv.joined.len()]);
            if hold_for_supply && wanted.is_none() {
                self.outputs.push(Output::StateTransferRequest {
                    view_id: view.id,
                    subgroup: g as u32,
                    shard: s as u32,
                    joiners: sv.joined.clone(),
                    joiners_hold,
                });
            }
            if hold_for_state
                && restart_shard.is_none()
                && let Some(source) = sv.state_source
            {
                let after = self
                    .last_life_tails
                    .iter()
                    .chain(&self.transfer_tails)
                    .find(|t| t.subgroup == g as u32 && t.shard == s as u32)
                    .map(|t| t.version);
                self.send_to(
                    source.node,
                    Some(source.incarnation),
                    Wire::StateWanted {
                        view_id: view.id,
                        subgroup: g as u32,
                        after,
                    },
                );
            }
            my_row.shards[g] = Some(ShardRow {
                received: vec![0; senders],
                awaiting_state: hold_for_state,
                ..ShardRow::default()
            });
            self.shards[g] = Some(ShardState {
                shard: s,
                mode: sv.mode,
                members: sv.members.clone(),
                ranks,
                me: me_in_shard,
                inbox: (0..senders).map(|_| VecDeque::new()).collect(),
                popped: vec![0; senders],
                message_end: vec![0; senders],
                delivered_slots: 0,
                own_tickets: VecDeque::new(),
                state_source: sv.state_source,
                hold_for_state,
                state_next_part: 0,
                hold_for_supply,
                supply: None,
                wanted,
                joiners: sv.joined.clone(),
                last_version: None,
                persist_asked: None,
                persisted: None,
                global_persisted: None,
                trim_logging: None,
                trim_logged: None,
                trim_applied: false,
            });
        }
        // Only the first view after a start from the log finds the log as it was.
        self.last_life_tails.clear();
        self.outputs.extend(aborted);
        self.rows = (0..n)
            .map(|r| {
                if r == my_rank {
                    Arc::new(my_row.clone())
                } else {
                    Arc::new(Row::empty(view.id, n, subgroups))
                }
            })
            .collect();
        self.my_rank = my_rank;
        self.row_dirty = true;
        self.last_heard_ms = vec![self.now_ms; n];
        self.outbox = (0..n).map(|_| Vec::new()).collect();
        self.pending_joins
            .retain(|j| !view.members.iter().any(|m| m.node == j.node));
        self.committed = None;
        self.adopted = false;
        self.ack_logging = None;
        self.evicted_notified.clear();
        self.phase = Phase::Member;
        if my_rank == 0 && !view.is_restart() {
            let me = self.me;
            for joiner in view.joined.iter().filter(|j| **j != me) {
                self.send_to(
                    joiner.node,
                    Some(joiner.incarnation),
                    Wire::Welcome {
                        view: Arc::clone(&view),
                    },
                );
            }
        }
        self.view = Some(Arc::clone(&view));
        let buffered: Vec<(MemberId, Wire)> = self.future.drain(..).collect();
        for (from, msg) in buffered {
            match msg.view_id() {
                Some(v) if v < view.id => {}
                _ => self.handle_member_message(from, msg),
            }
            if !self.is_member() {
                return;
            }
        }
    }

    fn try_form_first_view(&mut self) {
        let Phase::Founding { members } = &self.phase else {
            return;
        };
        let members = members.clone();
        let Ok(shards) = self.cfg.layout.allocate(None, &members, &[]) else {
            return;
        };
        let view = View {
            id: 0,
            members: members.clone(),
            joined: members,
            failed: vec![],
            left: vec![],
            shards,
        };
        self.setup_view(Arc::new(view), None);
    }

    fn stop(&mut self, reason: StopReason) {
        if matches!(self.phase, Phase::Stopped(_)) {
            return;
        }
        self.phase = Phase::Stopped(reason);
        for g in 0..self.pending_sends.len() {
            let mut tickets: Vec<SendTicket> =
                self.pending_sends[g].drain(..).map(|(_, t)| t).collect();
            if let Some(shard) = self.shards[g].as_mut() {
                // Own messages multicast but not delivered here may or may not be
                // delivered by the survivors; report them too so no send goes unanswered.
                tickets.splice(0..0, shard.own_tickets.drain(..).map(|(_, t)| t));
            }
            if !tickets.is_empty() {
                self.outputs.push(Output::SendsAborted {
                    subgroup: g as u32,
                    tickets,
                });
            }
        }
        let view_id = self.view().map_or(0, |v| v.id);
        self.settle_reads(None, view_id, Err(SendError::Stopped(reason)));
        self.outputs.push(Output::Stopped(reason));
    }

    /// One [`Wire::Update`] per peer: its pending data, then my row if it changed.
    fn flush(&mut self) {
        if !self.is_member() {
            return;
        }
        let view = Arc::clone(self.current_view());
        let push_row = self.row_dirty;
        for r in 0..view.members.len() {
            if r == self.my_rank {
                continue;
            }
            if self.is_suspected(r) {
                self.outbox[r].clear();
                continue;
            }
            let data = std::mem::take(&mut self.outbox[r]);
            if data.is_empty() && !push_row {
                continue;
            }
            let member = view.members[r];
            let mut updates = split_data(data, self.cfg.update_data_bytes_max).peekable();
            while let Some(data) = updates.next() {
                // The row goes last: it counts every message before it as sent.
                let last = updates.peek().is_none();
                let row = (push_row && last).then(|| Arc::clone(&self.rows[self.my_rank]));
                self.outputs.push(Output::Send {
                    to: member.node,
                    incarnation: Some(member.incarnation),
                    msg: Wire::Update {
                        view_id: view.id,
                        data,
                        row,
                    },
                });
            }
        }
        if push_row {
            self.row_dirty = false;
            self.row_lazy = false;
            self.last_push_ms = self.now_ms;
            self.heartbeat_next_view_joiners(&view);
        }
    }

    /// While we finish the old view (a slow trim log, say), members that join in the
    /// committed next view hear nothing from us, and may have installed it already:
    /// without a sign of life they would suspect us and evict a healthy shard. An empty
    /// old-view update is that sign; it carries no data and no row.
    fn heartbeat_next_view_joiners(&mut self, view: &View) {
        let Some(next) = self.next_view.as_ref() else {
            return;
        };
        let newcomers: Vec<MemberId> = next
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.me && view.rank_of(*m).is_none())
            .collect();
        for member in newcomers {
            self.outputs.push(Output::Send {
                to: member.node,
                incarnation: Some(member.incarnation),
                msg: Wire::Update {
                    view_id: view.id,
                    data: Vec::new(),
                    row: None,
                },
            });
        }
    }

    // ----- small helpers -------------------------------------------------------------

    fn current_view(&self) -> &Arc<View> {
        self.view.as_ref().expect("members have a view")
    }

    fn view_size(&self) -> usize {
        self.view.as_ref().map_or(0, |v| v.members.len())
    }

    fn my_row(&self) -> &Row {
        &self.rows[self.my_rank]
    }

    fn my_row_mut(&mut self) -> &mut Row {
        self.row_dirty = true;
        Arc::make_mut(&mut self.rows[self.my_rank])
    }

    fn is_suspected(&self, rank: usize) -> bool {
        self.my_row().suspected.get(rank).copied().unwrap_or(false)
    }

    fn believed_leader(&self) -> usize {
        (0..self.view_size())
            .find(|r| !self.is_suspected(*r))
            .unwrap_or(self.my_rank)
    }
}

/// Slots received with no hole: slot `k` belongs to sender `k % S`, index `k / S`.
/// How far sender `me` of an ordered shard fills its stream with nulls: up to every
/// slot received from the others (`received`, what delivery needs), and one round further
/// for each sender of a message (`message_end`: one past its newest message's index), up
/// to just before that sender's next slot; never past `count_max` slots of its own.
fn null_target(me: usize, received: &[u64], message_end: &[u64], count_max: u64) -> u64 {
    received
        .iter()
        .zip(message_end)
        .enumerate()
        .filter(|(s, _)| *s != me)
        .map(|(s, (count, message_end))| {
            // My slot of a round comes before sender `s`'s slot iff I rank lower.
            let before = u64::from(me < s);
            let for_delivery = (*count + before).saturating_sub(1);
            let for_next_message = if *message_end > 0 {
                *message_end + before
            } else {
                0
            };
            for_delivery.max(for_next_message)
        })
        .max()
        .unwrap_or(0)
        // The fill that delivery needs always fits (the messages it follows did); the
        // look-ahead may not.
        .min(count_max)
}

/// Whether an ordered shard's undelivered slots `from..to` hold a message (not only
/// nulls). Long ranges count as holding one: the answer only saves a row push.
fn holds_message(shard: &ShardState, from: u64, to: u64) -> bool {
    const SCAN_SLOTS_MAX: u64 = 1024;
    if to <= from {
        return false;
    }
    if to - from > SCAN_SLOTS_MAX {
        return true;
    }
    let senders = shard.senders();
    (from..to).any(|slot| {
        let s = (slot % senders) as usize;
        let index = slot / senders;
        index
            .checked_sub(shard.popped[s])
            .and_then(|at| shard.inbox[s].get(at as usize))
            // A slot delivered already (or not held) is no reason to hurry.
            .is_some_and(Option::is_some)
    })
}

/// Cuts a peer's outbox into the data of successive updates, each carrying at most
/// `bytes_max` payload bytes (a larger message alone). Runs stay contiguous: a run cut in
/// two continues at the index where its first part ended. Always at least one (maybe
/// empty) update, for a row to ride on.
fn split_data(runs: Vec<DataRun>, bytes_max: usize) -> impl Iterator<Item = Vec<DataRun>> {
    let payload_bytes = |item: &Item| match item {
        Item::Message(payload) => payload.len(),
        Item::Nulls(_) => 0,
    };
    let total: usize = runs
        .iter()
        .flat_map(|run| &run.items)
        .map(payload_bytes)
        .sum();
    let mut updates = vec![Vec::new()];
    if total <= bytes_max {
        updates[0] = runs;
        return updates.into_iter();
    }
    let mut bytes = 0;
    for run in runs {
        let mut part = DataRun {
            subgroup: run.subgroup,
            first_index: run.first_index,
            items: Vec::new(),
        };
        let mut next_index = run.first_index;
        for item in run.items {
            let len = payload_bytes(&item);
            if len > 0 && bytes > 0 && bytes + len > bytes_max {
                let done = std::mem::replace(
                    &mut part,
                    DataRun {
                        subgroup: run.subgroup,
                        first_index: next_index,
                        items: Vec::new(),
                    },
                );
                if !done.items.is_empty() {
                    updates.last_mut().expect("never empty").push(done);
                }
                updates.push(Vec::new());
                bytes = 0;
            }
            bytes += len;
            next_index += item.slots();
            part.items.push(item);
        }
        if !part.items.is_empty() {
            updates.last_mut().expect("never empty").push(part);
        }
    }
    updates.into_iter()
}

fn seq_received(received: &[u64]) -> u64 {
    let senders = received.len() as u64;
    received
        .iter()
        .enumerate()
        .map(|(s, count)| count * senders + s as u64)
        .min()
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn make_delivery(
    shard: &mut ShardState,
    g: usize,
    view_id: ViewId,
    s: usize,
    index: u64,
    version: Option<Version>,
    kind: DeliveryKind,
    payload: Bytes,
) -> Delivery {
    let ticket = if s == shard.me {
        match shard.own_tickets.front() {
            Some((i, ticket)) if *i == index => {
                let ticket = *ticket;
                shard.own_tickets.pop_front();
                Some(ticket)
            }
            _ => None,
        }
    } else {
        None
    };
    Delivery {
        view_id,
        subgroup: g as u32,
        shard: shard.shard as u32,
        sender: shard.members[s],
        sender_index: index,
        version,
        kind,
        payload,
        ticket,
    }
}

/// The view that `change` turns `view` into: survivors keep their rank order, joiners
/// follow in admission order, then the layout allocator places everyone.
pub fn next_view(cfg: &CoreConfig, view: &View, change: &Change) -> Result<View, Inadequate> {
    let mut members: Vec<MemberId> = view
        .members
        .iter()
        .copied()
        .filter(|m| !change.failed.contains(m) && !change.left.contains(m))
        .collect();
    let mut joined = Vec::new();
    for j in &change.joined {
        if !members.iter().any(|m| m.node == j.node) {
            members.push(*j);
            joined.push(*j);
        }
    }
    let shards = cfg
        .layout
        .allocate(Some(view), &members, &change.stateless)?;
    Ok(View {
        id: view.id + 1,
        members,
        joined,
        failed: change.failed.clone(),
        left: change.left.clone(),
        shards,
    })
}

#[cfg(test)]
mod tests {
    use super::{Core, Output, null_target, seq_received, split_data};
    use crate::config::CoreConfig;
    use crate::ids::{MemberId, NodeId};
    use crate::layout::{DeliveryMode, Layout, ShardLayout, SubgroupLayout};
    use crate::wire::{DataRun, Item};
    use bytes::Bytes;

    fn message(len: usize) -> Item {
        Item::Message(Bytes::from(vec![7; len]))
    }

    #[test]
    fn an_outbox_over_the_update_limit_leaves_in_contiguous_parts() {
        let runs = vec![
            DataRun {
                subgroup: 0,
                first_index: 10,
                items: vec![message(40), Item::Nulls(3), message(40), message(40)],
            },
            DataRun {
                subgroup: 1,
                first_index: 5,
                items: vec![message(500), message(10)],
            },
        ];
        let updates: Vec<Vec<DataRun>> = split_data(runs.clone(), 100).collect();
        // 40 + 40 fit; the third 40 starts a new update; 500 goes alone; 10 follows.
        let bytes: Vec<usize> = updates
            .iter()
            .map(|u| {
                u.iter()
                    .flat_map(|r| &r.items)
                    .map(|i| match i {
                        Item::Message(p) => p.len(),
                        Item::Nulls(_) => 0,
                    })
                    .sum()
            })
            .collect();
        assert_eq!(bytes, vec![80, 40, 500, 10]);
        // Put back together, the parts are the runs: same items, each part starting
        // where the one before it in its subgroup ended.
        let mut next: std::collections::HashMap<u32, u64> =
            runs.iter().map(|r| (r.subgroup, r.first_index)).collect();
        let mut items: std::collections::HashMap<u32, Vec<Item>> = Default::default();
        for part in updates.iter().flatten() {
            assert!(!part.items.is_empty(), "no empty runs");
            assert_eq!(part.first_index, next[&part.subgroup], "contiguous");
            *next.get_mut(&part.subgroup).expect("known") +=
                part.items.iter().map(Item::slots).sum::<u64>();
            items
                .entry(part.subgroup)
                .or_default()
                .extend(part.items.clone());
        }
        for run in &runs {
            assert_eq!(items[&run.subgroup], run.items);
        }
        // Under the limit: one update, untouched; an empty outbox: one empty update.
        assert_eq!(
            split_data(runs.clone(), 10_000).collect::<Vec<_>>(),
            vec![runs]
        );
        assert_eq!(
            split_data(Vec::new(), 100).collect::<Vec<_>>(),
            vec![Vec::new()]
        );
    }

    #[test]
    fn a_shard_of_one_delivers_a_send_at_once_without_a_tick() {
        let layout = Layout {
            subgroups: vec![SubgroupLayout {
                shards: vec![ShardLayout {
                    min_nodes: 1,
                    max_nodes: 3,
                    mode: DeliveryMode::Ordered,
                }],
            }],
        };
        let me = MemberId {
            node: 0 as NodeId,
            incarnation: 1,
        };
        let mut core = Core::found(CoreConfig::new(layout), me, 0).expect("a valid config");
        let _ = core.drain_outputs().count();
        core.send(0, bytes::Bytes::from_static(b"alone"))
            .expect("sent");
        let delivered: Vec<_> = core
            .drain_outputs()
            .filter_map(|output| match output {
                Output::Deliver(delivery) => Some(delivery),
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 1, "delivered with no tick and no peer");
    }

    /// Slot `index * senders + s` of sender `s`: what `seq_received` counts.
    fn covers(received: &[u64], sender: usize, index: u64) -> bool {
        seq_received(received) > index * received.len() as u64 + sender as u64
    }

    #[test]
    fn a_lone_senders_next_message_finds_every_earlier_slot_filled() {
        // Three senders; only sender 0 sends, and its message k = 5 just arrived.
        let count_max = u64::MAX;
        let message_end = [6, 0, 0];
        // The others fill up to just before sender 0's next slot (index 6).
        let b = null_target(1, &[6, 5, 5], &message_end, count_max);
        let c = null_target(2, &[6, 5, 5], &message_end, count_max);
        assert_eq!((b, c), (6, 6));
        // So when message 6 arrives, a member holding it covers it at once: its ack is
        // the only hop after the send.
        assert!(covers(&[7, b, c], 0, 6));
        // Without the look-ahead (filling only what delivery of message 5 needs) it
        // could not: message 6 would wait for the others' nulls first.
        assert!(!covers(&[7, 5, 5], 0, 6));
    }

    #[test]
    fn a_middle_sender_gets_the_same() {
        // Sender 1 sends alone; its message 5 just arrived.
        let message_end = [0, 6, 0];
        let a = null_target(0, &[5, 6, 5], &message_end, u64::MAX);
        let c = null_target(2, &[5, 6, 5], &message_end, u64::MAX);
        // Sender 0's slot of round 6 comes before sender 1's: it fills round 6 too.
        assert_eq!((a, c), (7, 6));
        assert!(covers(&[a, 7, c], 1, 6));
    }

    #[test]
    fn nulls_never_chase_nulls_and_stop_at_the_view_end() {
        // Everyone's streams are equal and nobody sent a message: nothing to fill.
        assert_eq!(null_target(1, &[9, 9, 9], &[0, 0, 0], u64::MAX), 9);
        // Others' nulls ahead of me (and no message there) ask only for delivery's fill.
        assert_eq!(null_target(1, &[12, 9, 12], &[3, 0, 3], u64::MAX), 12);
        // The look-ahead stops at the view's slots; the delivery fill still fits.
        assert_eq!(null_target(2, &[48, 48, 47, 48], &[0, 0, 0, 48], 48), 48);
    }
}
