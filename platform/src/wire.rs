//! Messages between protocol cores. These are in-memory types; a transport (next layer)
//! encodes them. Every message travels over a FIFO link from one member to another, and
//! the receiver applies them in arrival order.

use std::sync::Arc;

use bytes::Bytes;

use crate::ids::{NodeId, Version, ViewId};
use crate::restart::{LoggedState, RestartPlan};
use crate::row::{Ballot, Row};
use crate::view::View;

/// One entry of a sender's multicast stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Message(Bytes),
    /// A run of null messages: they fill the sender's round-robin slots so idle senders
    /// never hold up delivery; they are never delivered to the application.
    Nulls(u32),
}

impl Item {
    pub fn slots(&self) -> u64 {
        match self {
            Item::Message(_) => 1,
            Item::Nulls(n) => u64::from(*n),
        }
    }
}

/// Consecutive messages of one sender in one subgroup, starting at `first_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRun {
    pub subgroup: u32,
    pub first_index: u64,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The batched traffic of one flush to one peer: multicast data first, then the
    /// sender's latest state-table row (which acknowledges everything before it).
    Update {
        view_id: ViewId,
        data: Vec<DataRun>,
        row: Option<Arc<Row>>,
    },
    /// A new node (or a new incarnation) asks to be admitted.
    JoinRequest,
    /// "I am not the leader, ask this node."
    Redirect { leader: NodeId },
    /// Sent by a view's leader to the members it admitted (and by any member to a member
    /// that asks again).
    Welcome { view: Arc<View> },
    /// Part `part` of the shard state for a member new to the shard, as of the start of
    /// `view_id` (the parts, in order, concatenated, up to the one marked `last`: see
    /// [`CoreConfig::state_part_bytes_max`](crate::CoreConfig::state_part_bytes_max)).
    /// The source learns only as it goes how many parts there are: it streams a shard
    /// larger than its memory.
    State {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        part: u32,
        last: bool,
        state: Bytes,
    },
    /// From a member new to a shard to its state source: "my application took in every
    /// part of the state up to `part`": the source's window of parts in flight moves on
    /// ([`CoreConfig::state_window_bytes`](crate::CoreConfig::state_window_bytes)).
    StateAck {
        view_id: ViewId,
        subgroup: u32,
        part: u32,
    },
    /// From a member new to a shard in `view_id` to the shard's state source: its log of
    /// the shard already holds every version up to `after` (from its last life), so the
    /// state need carry only what follows. The source waits for this from every joiner
    /// of a view that is not a restart view before it asks its application for the state.
    StateWanted {
        view_id: ViewId,
        subgroup: u32,
        after: Option<Version>,
    },
    /// "You are not (or no longer) a member as far as view `view_id` is concerned."
    Evicted { view_id: ViewId },
    /// A node restarting from its log reports what the log holds (to the restart leaders;
    /// a live member takes it as a join request). Sent after a promise is logged, it
    /// answers that claim.
    RestartHello { logged: LoggedState },
    /// A restart leader asks for a durable promise of `ballot` (no plan of a lower ballot
    /// will be agreed to), answered by a `RestartHello` once it is logged.
    RestartClaim { ballot: Ballot },
    /// The restart leader's plan, to every member of the restart view: log your
    /// agreement, then answer `RestartAck`.
    RestartPrepare { plan: Arc<RestartPlan> },
    /// "I logged my agreement to the restart view `view_id`."
    RestartAck { view_id: ViewId, ballot: Ballot },
    /// Every member agreed durably: install the prepared restart view `view_id`.
    RestartCommit { view_id: ViewId, ballot: Ballot },
    /// "Do you still count me as a member of view `view_id`?" A member asks before it
    /// serves local reads (read probes, round `round`): a majority that says yes after
    /// the reads began proves no view excluding it had been committed by then.
    ReadProbe { view_id: ViewId, round: u64 },
    /// "Yes, as of now": the answer to a `ReadProbe` of the same view and round. With
    /// `lease`, also a promise: for `CoreConfig::read_lease_ms` from now (the answerer's
    /// clock), the answerer agrees to no view change until the asker's row shows it
    /// wedged (see `Core::request_read`). Only an answerer that is not wedged promises.
    ReadProbeAck {
        view_id: ViewId,
        round: u64,
        lease: bool,
    },
}

impl Wire {
    /// The view this message belongs to, for messages that are only meaningful in one view.
    pub fn view_id(&self) -> Option<ViewId> {
        match self {
            Wire::Update { view_id, .. }
            | Wire::State { view_id, .. }
            | Wire::StateWanted { view_id, .. }
            | Wire::StateAck { view_id, .. } => Some(*view_id),
            _ => None,
        }
    }
}
