//! The shared state table. Each member owns one row of counters and pushes it to its peers
//! over FIFO links; a receiver keeps the latest (hence largest) copy. Multicast counters
//! restart with each view; every row names the view it belongs to.

use std::sync::Arc;

use crate::ids::{MemberId, Version, ViewId};

/// Orders proposals and trims across successive leaders: a new leader always uses a
/// `round` above every ballot it has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ballot {
    pub round: u64,
    pub leader: MemberId,
}

/// The membership change that turns view `view_id` into the next view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proposal {
    pub ballot: Ballot,
    pub view_id: ViewId,
    pub change: Change,
}

/// A proposal's content. Content, not ballot, determines the next view, so a re-proposed
/// (adopted) change yields the same view whoever leads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Change {
    /// Suspected members, sorted.
    pub failed: Vec<MemberId>,
    /// Members leaving gracefully, sorted.
    pub left: Vec<MemberId>,
    /// Admitted joiners in admission order.
    pub joined: Vec<MemberId>,
    /// `(member, subgroup)` pairs, sorted: surviving members that hold no state for that
    /// subgroup because their state transfer never completed (their source failed). The
    /// next view feeds them state again from a member that holds it.
    pub stateless: Vec<(MemberId, u32)>,
}

/// The ragged trim of one shard: for each sender rank, how many of its messages are
/// delivered in the ending view. Everything beyond is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Trim {
    pub ballot: Ballot,
    pub received: Vec<u64>,
}

/// Per-subgroup counters of a member that belongs to a shard of that subgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRow {
    /// Contiguous messages received from each sender rank of the shard (counts).
    pub received: Vec<u64>,
    /// Round-robin slots received without a hole: `min_s(received[s] * S + s)`.
    pub seq_received: u64,
    /// Slots delivered (ordered mode).
    pub delivered: u64,
    /// Latest version this member has made durable.
    pub persisted: Option<Version>,
    /// Every live sender's final message of the view has arrived here.
    pub flush_ready: bool,
    /// The trim this member has logged and adopted.
    pub trim: Option<Arc<Trim>>,
    /// Trimmed messages delivered and persisted here.
    pub done: bool,
    /// This member is new to the shard and has not received its state yet.
    pub awaiting_state: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub view_id: ViewId,
    /// By rank. Monotonic within a view: suspicion is never withdrawn.
    pub suspected: Vec<bool>,
    pub leaving: bool,
    /// This member's stream reached the view's slot limit: it asks for an epoch roll.
    pub roll_requested: bool,
    pub wedged: bool,
    /// The latest proposal this member published (as leader) or acknowledged.
    pub proposal: Option<Arc<Proposal>>,
    /// The ballot this member knows to be committed.
    pub committed: Option<Ballot>,
    /// Per subgroup; `None` where the member has no shard.
    pub shards: Vec<Option<ShardRow>>,
}

impl Row {
    pub fn empty(view_id: ViewId, members: usize, subgroups: usize) -> Self {
        Row {
            view_id,
            suspected: vec![false; members],
            leaving: false,
            roll_requested: false,
            wedged: false,
            proposal: None,
            committed: None,
            shards: vec![None; subgroups],
        }
    }

    pub fn acked_ballot(&self) -> Option<Ballot> {
        self.proposal.as_ref().map(|p| p.ballot)
    }

    pub fn shard(&self, subgroup: usize) -> Option<&ShardRow> {
        self.shards.get(subgroup).and_then(Option::as_ref)
    }
}
