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
    /// below their maximum. Shards with no surviving holder of their state fail with
    /// [`Inadequate::ShardLost`]. `stateless` lists `(member, subgroup)` pairs whose state
    /// transfer never completed: they keep their place but receive the state again, and
    /// a donor shard never gives away its last holder.
    pub fn allocate(
        &self,
        previous: Option<&View>,
        members: &[MemberId],
        stateless: &[(MemberId, u32)],
    ) -> Result<Vec<Vec<ShardView>>, Inadequate> {
        let mut result = Vec::with_capacity(self.subgroups.len());
        for (g, sub) in self.subgroups.iter().enumerate() {
            let holds = |m: &MemberId, before: &[MemberId]| {
                before.contains(m) && !stateless.contains(&(*m, g as u32))
            };
            let before_of = |s: usize| -> &[MemberId] {
                previous
                    .and_then(|v| v.shards.get(g))
                    .and_then(|shards| shards.get(s))
                    .map_or(&[], |sv| sv.members.as_slice())
            };
            let mut shards: Vec<Vec<MemberId>> = Vec::with_capacity(sub.shards.len());
            for s in 0..sub.shards.len() {
                let before = before_of(s);
                let survivors: Vec<MemberId> = before
                    .iter()
                    .copied()
                    .filter(|m| members.contains(m))
                    .collect();
                if !before.is_empty() && !survivors.iter().any(|m| holds(m, before)) {
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
                    let spare = donor.and_then(|d| {
                        // The last member whose leaving keeps a holder of d's state.
                        let before = before_of(d);
                        let holders = shards[d].iter().filter(|m| holds(m, before)).count();
                        let i = shards[d]
                            .iter()
                            .rposition(|m| !holds(m, before) || holders > 1)?;
                        Some(shards[d].remove(i))
                    });
                    match spare {
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
                    let before = before_of(s);
                    // The state source is the lowest-ranked member that already holds the
                    // shard; everyone else in it receives state from it.
                    let state_source = members
                        .iter()
                        .copied()
                        .find(|m| shard_members.contains(m) && holds(m, before));
                    let joined = if state_source.is_some() {
                        shard_members
                            .iter()
                            .copied()
                            .filter(|m| !holds(m, before))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(shards: usize, min: usize, max: usize) -> Layout {
        Layout {
            subgroups: vec![SubgroupLayout {
                shards: (0..shards)
                    .map(|_| ShardLayout {
                        min_nodes: min,
                        max_nodes: max,
                        mode: DeliveryMode::Ordered,
                    })
                    .collect(),
            }],
        }
    }

    fn m(node: u32) -> MemberId {
        MemberId::new(node, 1)
    }

    fn view(members: &[MemberId], shards: Vec<Vec<ShardView>>) -> View {
        View {
            id: 3,
            members: members.to_vec(),
            joined: Vec::new(),
            failed: Vec::new(),
            left: Vec::new(),
            shards,
        }
    }

    #[test]
    fn survivors_stay_and_newcomers_receive_state_from_the_lowest_ranked_holder() {
        let layout = layout(1, 2, 3);
        let first = layout.allocate(None, &[m(0), m(1)], &[]).expect("fits");
        let before = view(&[m(0), m(1)], first);
        let next = layout
            .allocate(Some(&before), &[m(1), m(2)], &[])
            .expect("fits");
        let shard = &next[0][0];
        assert_eq!(shard.members, vec![m(1), m(2)]);
        assert_eq!(shard.state_source, Some(m(1)));
        assert_eq!(shard.joined, vec![m(2)]);
    }

    #[test]
    fn a_member_whose_transfer_failed_is_fed_again_by_a_holder() {
        let layout = layout(1, 2, 3);
        // m(2) joined in view 3 with m(0) as its source; m(0) failed before sending.
        let shards = vec![vec![ShardView {
            members: vec![m(0), m(1), m(2)],
            mode: DeliveryMode::Ordered,
            joined: vec![m(2)],
            state_source: Some(m(0)),
        }]];
        let before = view(&[m(0), m(1), m(2)], shards);
        let next = layout
            .allocate(Some(&before), &[m(1), m(2)], &[(m(2), 0)])
            .expect("m(1) still holds the shard");
        assert_eq!(next[0][0].state_source, Some(m(1)));
        assert_eq!(next[0][0].joined, vec![m(2)]);
    }

    #[test]
    fn a_shard_whose_only_survivors_lack_its_state_is_lost() {
        let layout = layout(1, 1, 3);
        let shards = vec![vec![ShardView {
            members: vec![m(0), m(2)],
            mode: DeliveryMode::Ordered,
            joined: vec![m(2)],
            state_source: Some(m(0)),
        }]];
        let before = view(&[m(0), m(2)], shards);
        assert_eq!(
            layout.allocate(Some(&before), &[m(2)], &[(m(2), 0)]),
            Err(Inadequate::ShardLost {
                subgroup: 0,
                shard: 0
            })
        );
    }

    #[test]
    fn a_donor_shard_keeps_its_last_holder() {
        // Shard 0 holds [m(0) holder, m(3) still stateless]; shard 1 lost its members and
        // must take one from shard 0 to reach its minimum.
        let layout = layout(2, 1, 2);
        let shards = vec![vec![
            ShardView {
                members: vec![m(3), m(0)],
                mode: DeliveryMode::Ordered,
                joined: vec![m(3)],
                state_source: Some(m(0)),
            },
            ShardView {
                members: vec![],
                mode: DeliveryMode::Ordered,
                joined: vec![],
                state_source: None,
            },
        ]];
        let before = view(&[m(0), m(3)], shards);
        let next = layout
            .allocate(Some(&before), &[m(0), m(3)], &[(m(3), 0)])
            .expect("fits");
        assert_eq!(next[0][0].members, vec![m(0)], "the holder stays");
        assert_eq!(next[0][1].members, vec![m(3)]);
    }
}
