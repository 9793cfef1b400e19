//! The subgroup/shard layout and the deterministic allocator that maps a view's members
//! onto it. Every member runs the allocator locally on the same inputs, so it must be a
//! pure function of (layout, previous view, new member list).

use crate::ids::MemberId;
use crate::view::{ShardView, View};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// Total order per shard, stability before delivery, versions, persistence.
    Ordered,
    /// Delivery on receipt: sender FIFO only, no versions, no persistence.
    Raw,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub min_nodes: usize,
    pub max_nodes: usize,
    pub mode: DeliveryMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubgroupLayout {
    pub shards: Vec<ShardLayout>,
}

/// Subgroups are independent of each other (a node may be in one shard of each); shards of
/// one subgroup are disjoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub subgroups: Vec<SubgroupLayout>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("layout has no subgroups")]
    Empty,
    #[error("subgroup {subgroup} has no shards")]
    NoShards { subgroup: usize },
    #[error(
        "subgroup {subgroup} shard {shard}: min_nodes {min} must be >= 1 and <= max_nodes {max}"
    )]
    BadBounds {
        subgroup: usize,
        shard: usize,
        min: usize,
        max: usize,
    },
    #[error("subgroup {subgroup} shard {shard}: max_nodes {max} exceeds the limit {limit}")]
    TooLarge {
        subgroup: usize,
        shard: usize,
        max: usize,
        limit: usize,
    },
}

/// Why a member list cannot be mapped onto the layout. The group stays wedged until this
/// changes (joins arrive).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Inadequate {
    #[error("subgroup {subgroup} shard {shard} needs {needed} nodes, only {available} available")]
    TooFewNodes {
        subgroup: usize,
        shard: usize,
        needed: usize,
        available: usize,
    },
    /// Every previous member of a shard is gone: continuing would silently start the shard
    /// empty. The group waits instead (a total restart from the logs recovers it).
    #[error(
        "subgroup {subgroup} shard {shard} lost every member; its state needs a restart from logs"
    )]
    ShardLost { subgroup: usize, shard: usize },
}

/// Largest shard the core supports (row vectors are sized by it).
pub const SHARD_MEMBERS_MAX: usize = 64;

impl Layout {
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.subgroups.is_empty() {
            return Err(LayoutError::Empty);
        }
        for (g, sub) in self.subgroups.iter().enumerate() {
            if sub.shards.is_empty() {
                return Err(LayoutError::NoShards { subgroup: g });
            }
            for (s, sh) in sub.shards.iter().enumerate() {
                if sh.min_nodes == 0 || sh.min_nodes > sh.max_nodes {
                    return Err(LayoutError::BadBounds {
                        subgroup: g,
                        shard: s,
                        min: sh.min_nodes,
                        max: sh.max_nodes,
                    });
                }
                if sh.max_nodes > SHARD_MEMBERS_MAX {
                    return Err(LayoutError::TooLarge {
                        subgroup: g,
                        shard: s,
                        max: sh.max_nodes,
                        limit: SHARD_MEMBERS_MAX,
                    });
                }
            }
        }
        Ok(())
    }

    /// Maps `members` (in rank order) onto the layout.
    ///
    /// Rules, per subgroup: survivors keep their shard; a shard below its minimum is filled
    /// from unassigned members in rank order, then by taking the last member of the largest
    /// shard that is above its own minimum; remaining members are dealt round-robin to shards
    /// below their maximum. Shards whose members all left fail with [`Inadequate::ShardLost`].
    pub fn allocate(
        &self,
        previous: Option<&View>,
        members: &[MemberId],
    ) -> Result<Vec<Vec<ShardView>>, Inadequate> {
        let mut result = Vec::with_capacity(self.subgroups.len());
        for (g, sub) in self.subgroups.iter().enumerate() {
            let mut shards: Vec<Vec<MemberId>> = Vec::with_capacity(sub.shards.len());
            for s in 0..sub.shards.len() {
                let before = previous
                    .and_then(|v| v.shards.get(g))
                    .and_then(|shards| shards.get(s))
                    .map(|sv| sv.members.as_slice())
                    .unwrap_or(&[]);
                let survivors: Vec<MemberId> = before
                    .iter()
                    .copied()
                    .filter(|m| members.contains(m))
                    .collect();
                if !before.is_empty() && survivors.is_empty() {
                    return Err(Inadequate::ShardLost {
                        subgroup: g,
                        shard: s,
                    });
                }
                shards.push(survivors);
            }
            let mut unassigned: std::collections::VecDeque<MemberId> = members
                .iter()
                .copied()
                .filter(|m| !shards.iter().any(|sh| sh.contains(m)))
                .collect();
            for s in 0..shards.len() {
                let min = sub.shards[s].min_nodes;
                while shards[s].len() < min {
                    if let Some(m) = unassigned.pop_front() {
                        shards[s].push(m);
                        continue;
                    }
                    // Take from the largest shard that can spare one (shrink, don't wedge).
                    let donor = (0..shards.len())
                        .filter(|&d| d != s && shards[d].len() > sub.shards[d].min_nodes)
                        .max_by_key(|&d| (shards[d].len(), std::cmp::Reverse(d)));
                    match donor.and_then(|d| shards[d].pop()) {
                        Some(m) => shards[s].push(m),
                        None => {
                            return Err(Inadequate::TooFewNodes {
                                subgroup: g,
                                shard: s,
                                needed: min,
                                available: shards[s].len(),
                            });
                        }
                    }
                }
            }
            #[allow(clippy::needless_range_loop)] // indexes both `shards` and `sub.shards`
            loop {
                let mut placed = false;
                for s in 0..shards.len() {
                    if shards[s].len() < sub.shards[s].max_nodes
                        && let Some(m) = unassigned.pop_front()
                    {
                        shards[s].push(m);
                        placed = true;
                    }
                }
                if !placed {
                    break;
                }
            }
            let views = shards
                .into_iter()
                .enumerate()
                .map(|(s, shard_members)| {
                    let before = previous
                        .and_then(|v| v.shards.get(g))
                        .and_then(|shards| shards.get(s))
                        .map(|sv| sv.members.as_slice())
                        .unwrap_or(&[]);
                    // The state source is the lowest-ranked member that already holds the
                    // shard; everyone new to the shard receives state from it.
                    let state_source = members
                        .iter()
                        .copied()
                        .find(|m| shard_members.contains(m) && before.contains(m));
                    let joined = if state_source.is_some() {
                        shard_members
                            .iter()
                            .copied()
                            .filter(|m| !before.contains(m))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    ShardView {
                        members: shard_members,
                        mode: sub.shards[s].mode,
                        joined,
                        state_source,
                    }
                })
                .collect();
            result.push(views);
        }
        Ok(result)
    }
}
