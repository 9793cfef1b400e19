//! Views: the agreed membership of the group and its shard layout, numbered 0, 1, 2, ...

use crate::ids::{MemberId, ViewId};
use crate::layout::DeliveryMode;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardView {
    /// Shard members; a member's index here is its sender rank in the round robin.
    pub members: Vec<MemberId>,
    pub mode: DeliveryMode,
    /// Members new to this shard in this view; each receives the shard's state from
    /// `state_source` before it delivers anything.
    pub joined: Vec<MemberId>,
    /// Lowest-ranked member that held this shard in the previous view (None for a shard
    /// that starts empty).
    pub state_source: Option<MemberId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub id: ViewId,
    /// Members in rank order; rank 0 leads the view change protocol.
    pub members: Vec<MemberId>,
    /// Members added by this view.
    pub joined: Vec<MemberId>,
    /// Members removed because they failed (were suspected).
    pub failed: Vec<MemberId>,
    /// Members removed because they asked to leave.
    pub left: Vec<MemberId>,
    /// `shards[subgroup][shard]`.
    pub shards: Vec<Vec<ShardView>>,
}

impl View {
    pub fn rank_of(&self, member: MemberId) -> Option<usize> {
        self.members.iter().position(|m| *m == member)
    }

    pub fn contains(&self, member: MemberId) -> bool {
        self.members.contains(&member)
    }

    /// A view that restarts the group from logs: every member is a new incarnation (a
    /// normal view keeps a majority of its predecessor's members).
    pub fn is_restart(&self) -> bool {
        self.id > 0 && self.joined.len() == self.members.len()
    }

    pub fn leader(&self) -> MemberId {
        self.members[0]
    }

    /// The shard of `subgroup` that `member` belongs to, if any.
    pub fn shard_of(&self, subgroup: usize, member: MemberId) -> Option<usize> {
        self.shards
            .get(subgroup)?
            .iter()
            .position(|sv| sv.members.contains(&member))
    }
}
