//! Total restart: bringing a group back from its members' logs after every process of it
//! stopped. A pure function of what the restarting nodes report, so the restart leader's
//! decision can be tested (and simulated) without any I/O.
//!
//! The rule (after Derecho's): the newest view any restarting node logged is the last
//! view `L`, whether it logged the view as installed or only its agreement to it (a
//! member logs its agreement before it acknowledges a proposal or a restart plan, so a
//! view installed anywhere is known to the log of a majority of its predecessor, and any
//! restart quorum includes one of them). The group restarts as view `L.id + 1` once
//! - a majority of `L`'s members (counted by node: every restart is a new incarnation) is
//!   back, and
//! - every shard of `L` has a member back that held the shard's state in `L` (it was not
//!   still waiting for a state transfer there, or it had already logged something of `L`),
//!   and the layout is satisfied.
//!
//! Each shard then continues from the longest log among those holders: that member is the
//! shard's state source, its last logged version is the shard's agreed trim (every member
//! truncates its log there), and every other shard member receives the state, with the log
//! records it lacks. Versions delivered in `L` are received by every shard member before
//! any delivers them, so the logs of one shard are prefixes of one sequence and the
//! longest holds everything any present member made durable.

use std::sync::Arc;

use thiserror::Error;

use crate::ids::{MemberId, NodeId, Version, ViewId};
use crate::layout::{Inadequate, Layout};
use crate::row::Ballot;
use crate::view::View;

/// The last version a log holds for one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardTail {
    pub subgroup: u32,
    pub shard: u32,
    pub version: Version,
}

/// What a restarting node found in its own log: the newest view it installed, the
/// latest view it agreed to (which may have been installed elsewhere), the highest restart
/// ballot it promised, and the end of each shard log it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoggedState {
    pub view: Option<Arc<View>>,
    pub acked: Option<(Ballot, Arc<View>)>,
    /// The highest ballot of a restart leader this node promised (logged before it answered
    /// the claim): it agrees to no restart plan of a lower ballot, in any incarnation.
    pub promised: Option<Ballot>,
    pub tails: Vec<ShardTail>,
    /// Shards whose state this node received whole in a view it joined them in (logged
    /// once the state was): it then held them like their source did.
    pub fed: Vec<ShardFed>,
}

/// A shard's state received whole in view `view_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardFed {
    pub view_id: ViewId,
    pub subgroup: u32,
    pub shard: u32,
}

impl LoggedState {
    /// Received the shard's state whole in view `view_id`.
    pub fn fed_in(&self, view_id: ViewId, subgroup: usize, shard: usize) -> bool {
        self.fed.iter().any(|f| {
            f.view_id == view_id && f.subgroup as usize == subgroup && f.shard as usize == shard
        })
    }

    pub fn tail(&self, subgroup: usize, shard: usize) -> Option<Version> {
        self.tails
            .iter()
            .find(|t| t.subgroup as usize == subgroup && t.shard as usize == shard)
            .map(|t| t.version)
    }
}

/// What the restart decided for one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RestartShard {
    /// The agreed trim: the end of the longest log. Every member truncates its log of this
    /// shard after it (`None`: the shard restarts empty).
    pub trim: Option<Version>,
    /// Every member receiving the shard's state already holds its log up to here, so the
    /// source ships only the records after it.
    pub joiners_hold: Option<Version>,
}

/// The restart leader's decision: the restart view and, per `[subgroup][shard]`, its trim.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RestartPlan {
    /// The ballot its leader claimed, and every member of `view` promised, before the plan
    /// was made from their reports; members log their agreement under it.
    pub ballot: Ballot,
    pub view: Arc<View>,
    pub shards: Vec<Vec<RestartShard>>,
}

/// Why the group cannot restart yet (the leader waits for more nodes).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NotYet {
    #[error("no restarting node logged a view")]
    NoLoggedView,
    #[error("{present} of view {view_id}'s {members} members are back; a majority is needed")]
    NoMajority {
        view_id: u32,
        present: usize,
        members: usize,
    },
    #[error("no member that held subgroup {subgroup} shard {shard} in view {view_id} is back yet")]
    NoHolder {
        view_id: u32,
        subgroup: usize,
        shard: usize,
    },
    #[error(transparent)]
    Inadequate(#[from] Inadequate),
}

/// Rounds of restart ballots start here, above any proposal's: a restart plan is only
/// made when no proposal for its base view can have been committed, so it outranks them.
pub const RESTART_ROUND_FLOOR: u64 = 1 << 63;

/// The ballot of a restart leader's `attempt`-th claim (counted from 1).
pub fn restart_ballot(attempt: u64, leader: MemberId) -> Ballot {
    Ballot {
        round: RESTART_ROUND_FLOOR.saturating_add(attempt),
        leader,
    }
}

/// The attempt a restart ballot counts (0 for a proposal's ballot).
pub fn restart_attempt(ballot: Ballot) -> u64 {
    ballot.round.saturating_sub(RESTART_ROUND_FLOOR)
}

/// A member back from the stop that held a shard in the last view, with its log's end.
type Holder = (MemberId, Option<Version>);

/// The restart's last view: the newest view any report installed or agreed to; for one
/// id, an installed view over an agreement (it was the one committed), then the highest
/// ballot.
pub fn last_view<'a>(reports: &[(MemberId, &'a LoggedState)]) -> Option<&'a Arc<View>> {
    let installed = reports
        .iter()
        .filter_map(|(_, r)| r.view.as_ref().map(|v| ((v.id, 1u8, None), v)));
    let agreed = reports
        .iter()
        .filter_map(|(_, r)| r.acked.as_ref().map(|(b, v)| ((v.id, 0u8, Some(*b)), v)));
    installed
        .chain(agreed)
        .max_by_key(|(key, _)| *key)
        .map(|(_, v)| v)
}

/// Other views agreed to with the last view's id, when no report installed one: a
/// proposal logged on the minority side of a partition can carry a higher ballot than
/// the one the majority committed (they were made apart), so the ballot alone cannot say
/// which of them, if any, was installed.
fn rivals<'a>(reports: &[(MemberId, &'a LoggedState)], last: &View) -> Vec<&'a Arc<View>> {
    let installed_here = reports
        .iter()
        .any(|(_, r)| r.view.as_ref().is_some_and(|v| v.id == last.id));
    if installed_here {
        return Vec::new();
    }
    let mut rivals: Vec<&Arc<View>> = Vec::new();
    for (_, r) in reports {
        if let Some((_, v)) = &r.acked
            && v.id == last.id
            && **v != *last
            && !rivals.iter().any(|o| o == &v)
        {
            rivals.push(v);
        }
    }
    rivals
}

/// `old`, a member of shard `s` of subgroup `g` in `view`, held the shard's state there
/// (as its log now says, in `report`).
fn held(view: &View, g: usize, s: usize, old: &MemberId, report: &LoggedState) -> bool {
    let joined = view.shards[g][s].joined.contains(old);
    // A member fed in the view holds the state once it logged something of that view, or
    // logged that the state arrived whole.
    !joined
        || report.tail(g, s).is_some_and(|t| t.view_id() >= view.id)
        || report.fed_in(view.id, g, s)
}

/// Every member of the last view is back: no reason to wait any longer.
pub fn everyone_back(reports: &[(MemberId, &LoggedState)]) -> bool {
    last_view(reports).is_some_and(|last| {
        last.members
            .iter()
            .all(|m| reports.iter().any(|(r, _)| r.node == m.node))
    })
}

/// Decides the restart view from the reports of the nodes that are back (the leader's
/// own included), or says what is missing. `reports` lists each node once, with its
/// current incarnation; `ballot` is the leader's, which the reporters promised.
pub fn plan(
    layout: &Layout,
    reports: &[(MemberId, &LoggedState)],
    ballot: Ballot,
) -> Result<RestartPlan, NotYet> {
    let last = last_view(reports).ok_or(NotYet::NoLoggedView)?;
    let current = |node: NodeId| reports.iter().find(|(m, _)| m.node == node);
    // A majority of the last view, and of the newest view anyone back installed: an
    // agreement logged in a minority that never committed must not outvote the views
    // the majority went on to install.
    let installed = reports
        .iter()
        .filter_map(|(_, r)| r.view.as_ref())
        .max_by_key(|v| v.id);
    // Rival agreements to the last view's id: whichever was installed (at most one, and
    // only where no report shows it) must find a majority and a holder of each of its
    // shards back, as the last view does. Then it delivered nothing (its shard members
    // back did not install it) and any later view shows up in some report, so the plan
    // may build on the highest ballot.
    let rivals = rivals(reports, last);
    for rival in &rivals {
        for (g, shards) in rival.shards.iter().enumerate() {
            for (s, sv) in shards.iter().enumerate() {
                let any = sv.members.iter().any(|old| {
                    current(old.node).is_some_and(|(_, report)| held(rival, g, s, old, report))
                });
                if !sv.members.is_empty() && !any {
                    return Err(NotYet::NoHolder {
                        view_id: rival.id,
                        subgroup: g,
                        shard: s,
                    });
                }
            }
        }
    }
    for view in std::iter::once(last)
        .chain(installed)
        .chain(rivals.iter().copied())
    {
        let present = view
            .members
            .iter()
            .filter(|m| current(m.node).is_some())
            .count();
        if present * 2 <= view.members.len() {
            return Err(NotYet::NoMajority {
                view_id: view.id,
                present,
                members: view.members.len(),
            });
        }
    }
    // Members in the last view's rank order, then newcomers by node id.
    let mut members: Vec<MemberId> = last
        .members
        .iter()
        .filter_map(|m| current(m.node).map(|(now, _)| *now))
        .collect();
    let mut others: Vec<MemberId> = reports
        .iter()
        .map(|(m, _)| *m)
        .filter(|m| !last.members.iter().any(|old| old.node == m.node))
        .collect();
    others.sort();
    members.extend(others);

    // The last view as it would look with today's incarnations, for the allocator: a
    // member keeps its shard; one that did not hold its state is stateless.
    let renamed = |list: &[MemberId]| -> Vec<MemberId> {
        list.iter()
            .filter_map(|m| current(m.node).map(|(now, _)| *now))
            .collect()
    };
    let mut stateless = Vec::new();
    // Members fed in the last view that logged in it hold its state like any other.
    let mut fed_holders: Vec<(MemberId, usize, usize)> = Vec::new();
    let mut holders: Vec<Vec<Vec<Holder>>> = Vec::new();
    let mut previous = (**last).clone();
    for (g, shards) in last.shards.iter().enumerate() {
        let mut per_shard = Vec::new();
        for (s, sv) in shards.iter().enumerate() {
            let mut shard_holders = Vec::new();
            for old in &sv.members {
                let Some((now, report)) = current(old.node) else {
                    continue;
                };
                let tail = report.tail(g, s);
                if held(last, g, s, old, report) {
                    if sv.joined.contains(old) {
                        fed_holders.push((*old, g, s));
                    }
                    shard_holders.push((*now, tail));
                } else {
                    stateless.push((*now, g as u32));
                }
            }
            if !sv.members.is_empty() && shard_holders.is_empty() {
                return Err(NotYet::NoHolder {
                    view_id: last.id,
                    subgroup: g,
                    shard: s,
                });
            }
            per_shard.push(shard_holders);
        }
        holders.push(per_shard);
    }
    previous.members = renamed(&last.members);
    for (g, shards) in previous.shards.iter_mut().enumerate() {
        for (s, sv) in shards.iter_mut().enumerate() {
            sv.members = renamed(&sv.members);
            // Longest logs first: a shard that must give a member to another gives its
            // last one, never the holder whose log is the source.
            let tail_of = |m: &MemberId| {
                holders
                    .get(g)
                    .and_then(|h| h.get(s))
                    .and_then(|h| h.iter().find(|(holder, _)| holder == m))
                    .and_then(|(_, tail)| *tail)
            };
            sv.members.sort_by_key(|m| std::cmp::Reverse(tail_of(m)));
            // The allocator keeps holders in their shard; a fed member that logged in the
            // last view is one (its log may be the longest), not a joiner to move.
            sv.joined.retain(|j| !fed_holders.contains(&(*j, g, s)));
            sv.joined = renamed(&sv.joined);
        }
    }
    let mut shards = layout.allocate(Some(&previous), &members, &stateless)?;

    let mut decided = Vec::with_capacity(shards.len());
    for (g, shard_views) in shards.iter_mut().enumerate() {
        let mut per_shard = Vec::with_capacity(shard_views.len());
        for (s, sv) in shard_views.iter_mut().enumerate() {
            let candidates = holders
                .get(g)
                .and_then(|h| h.get(s))
                .map_or(&[][..], Vec::as_slice);
            // The longest log; among equals, the lowest-ranked holder.
            let source = members
                .iter()
                .filter_map(|m| {
                    candidates
                        .iter()
                        .find(|(c, _)| c == m && sv.members.contains(m))
                })
                .fold(None::<(MemberId, Option<Version>)>, |best, c| match best {
                    Some(b) if b.1 >= c.1 => Some(b),
                    _ => Some(*c),
                });
            let Some((source, trim)) = source else {
                // A shard that was empty in the last view starts empty.
                if candidates.is_empty() && !sv.members.is_empty() {
                    let was_empty = last.shards[g].get(s).is_none_or(|l| l.members.is_empty());
                    if !was_empty {
                        return Err(NotYet::NoHolder {
                            view_id: last.id,
                            subgroup: g,
                            shard: s,
                        });
                    }
                }
                sv.state_source = None;
                sv.joined = Vec::new();
                per_shard.push(RestartShard::default());
                continue;
            };
            sv.state_source = Some(source);
            sv.joined = sv
                .members
                .iter()
                .copied()
                .filter(|m| *m != source)
                .collect();
            let joiners_hold = sv
                .joined
                .iter()
                .map(|j| {
                    reports
                        .iter()
                        .find(|(m, _)| m == j)
                        .and_then(|(_, r)| r.tail(g, s))
                        .min(trim)
                })
                .min()
                .flatten();
            per_shard.push(RestartShard { trim, joiners_hold });
        }
        decided.push(per_shard);
    }
    let failed: Vec<MemberId> = last
        .members
        .iter()
        .copied()
        .filter(|m| current(m.node).is_none())
        .collect();
    let view = View {
        id: last.id + 1,
        joined: members.clone(),
        members,
        failed,
        left: Vec::new(),
        shards,
    };
    Ok(RestartPlan {
        ballot,
        view: Arc::new(view),
        shards: decided,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{DeliveryMode, ShardLayout, SubgroupLayout};
    use crate::view::ShardView;

    fn layout(shards: usize) -> Layout {
        Layout {
            subgroups: vec![SubgroupLayout {
                shards: (0..shards)
                    .map(|_| ShardLayout {
                        min_nodes: 1,
                        max_nodes: 3,
                        mode: DeliveryMode::Ordered,
                    })
                    .collect(),
            }],
        }
    }

    const BALLOT: Ballot = Ballot {
        round: RESTART_ROUND_FLOOR + 1,
        leader: MemberId {
            node: 0,
            incarnation: 2,
        },
    };

    fn m(node: u32, incarnation: u32) -> MemberId {
        MemberId::new(node, incarnation)
    }

    /// View 7 of nodes 0..5, shard 0 = {0,1,2}, shard 1 = {3,4}; node 4 joined in view 7.
    fn last() -> Arc<View> {
        let members: Vec<MemberId> = (0..5).map(|n| m(n, 1)).collect();
        Arc::new(View {
            id: 7,
            members: members.clone(),
            joined: vec![m(4, 1)],
            failed: vec![],
            left: vec![],
            shards: vec![vec![
                ShardView {
                    members: members[0..3].to_vec(),
                    mode: DeliveryMode::Ordered,
                    joined: vec![],
                    state_source: None,
                },
                ShardView {
                    members: members[3..5].to_vec(),
                    mode: DeliveryMode::Ordered,
                    joined: vec![m(4, 1)],
                    state_source: Some(m(3, 1)),
                },
            ]],
        })
    }

    fn report(view: Option<Arc<View>>, tails: &[(u32, Version)]) -> LoggedState {
        LoggedState {
            view,
            acked: None,
            promised: None,
            fed: Vec::new(),
            tails: tails
                .iter()
                .map(|(shard, version)| ShardTail {
                    subgroup: 0,
                    shard: *shard,
                    version: *version,
                })
                .collect(),
        }
    }

    #[test]
    fn longest_log_is_the_source_and_the_trim() {
        let l = last();
        let r0 = report(Some(l.clone()), &[(0, Version::new(7, 3))]);
        let r1 = report(Some(l.clone()), &[(0, Version::new(7, 9))]);
        let r3 = report(Some(l.clone()), &[(1, Version::new(6, 2))]);
        let reports = [(m(0, 2), &r0), (m(1, 2), &r1), (m(3, 2), &r3)];
        let plan = plan(&layout(2), &reports, BALLOT).expect("majority and every shard held");
        assert_eq!(plan.view.id, 8);
        assert_eq!(plan.view.members, vec![m(0, 2), m(1, 2), m(3, 2)]);
        assert_eq!(plan.view.failed, vec![m(2, 1), m(4, 1)]);
        let shard0 = &plan.view.shards[0][0];
        assert_eq!(shard0.state_source, Some(m(1, 2)));
        assert_eq!(shard0.joined, vec![m(0, 2)]);
        assert_eq!(plan.shards[0][0].trim, Some(Version::new(7, 9)));
        assert_eq!(plan.shards[0][0].joiners_hold, Some(Version::new(7, 3)));
        assert_eq!(plan.shards[0][1].trim, Some(Version::new(6, 2)));
        assert!(plan.view.is_restart());
    }

    #[test]
    fn a_shard_giving_a_member_to_another_keeps_its_longest_log() {
        // Shards of at least two: with node 4 gone, shard 1 takes one of shard 0's
        // three. Node 2 holds shard 0's longest log, so another one must go.
        let mut layout = layout(2);
        for shard in &mut layout.subgroups[0].shards {
            shard.min_nodes = 2;
        }
        let l = last();
        let short = report(Some(l.clone()), &[(0, Version::new(7, 3))]);
        let long = report(Some(l.clone()), &[(0, Version::new(7, 9))]);
        let r3 = report(Some(l.clone()), &[(1, Version::new(7, 2))]);
        let reports = [
            (m(0, 2), &short),
            (m(1, 2), &short),
            (m(2, 2), &long),
            (m(3, 2), &r3),
        ];
        let plan = plan(&layout, &reports, BALLOT).expect("a majority, every shard held");
        let shard0 = &plan.view.shards[0][0];
        assert!(shard0.members.contains(&m(2, 2)), "{:?}", shard0.members);
        assert_eq!(shard0.state_source, Some(m(2, 2)));
        assert_eq!(plan.shards[0][0].trim, Some(Version::new(7, 9)));
        assert_eq!(plan.view.shards[0][1].members.len(), 2);
    }

    #[test]
    fn waits_for_a_majority_and_for_a_holder_of_every_shard() {
        let l = last();
        let r = report(Some(l.clone()), &[]);
        let two = [(m(0, 2), &r), (m(3, 2), &r)];
        assert_eq!(
            plan(&layout(2), &two, BALLOT),
            Err(NotYet::NoMajority {
                view_id: 7,
                present: 2,
                members: 5
            })
        );
        // Node 4 joined shard 1 in view 7 and logged nothing there: not a holder.
        let without_holder = [(m(0, 2), &r), (m(1, 2), &r), (m(4, 2), &r)];
        assert_eq!(
            plan(&layout(2), &without_holder, BALLOT),
            Err(NotYet::NoHolder {
                view_id: 7,
                subgroup: 0,
                shard: 1
            })
        );
        // Once it logged a version of view 7 it had the state.
        let r4 = report(Some(l.clone()), &[(1, Version::new(7, 1))]);
        let with_holder = [(m(0, 2), &r), (m(1, 2), &r), (m(4, 2), &r4)];
        let plan = plan(&layout(2), &with_holder, BALLOT).expect("node 4 holds shard 1");
        assert_eq!(plan.view.shards[0][1].state_source, Some(m(4, 2)));
        assert!(!everyone_back(&with_holder));
    }

    /// Seed 8802 of the simulator: nodes 0 and 3, cut off in a minority of view 7, logged
    /// a proposal of view 8 = {0, 3} with a higher ballot than the view 8 = {1, 2, 4} the
    /// majority committed (and node 4 installed). Back after a total stop, 0, 2 and 3 are a
    /// majority of view 7 and of the minority's view 8, but not of the committed one:
    /// the restart waits for node 1 or 4, whatever the ballots say.
    #[test]
    fn a_minority_agreement_with_a_higher_ballot_does_not_outvote_the_committed_view() {
        let l = last();
        let view8 = |members: Vec<MemberId>| {
            let mut v = (*l).clone();
            v.id = 8;
            v.joined = Vec::new();
            v.shards[0][0].members = members.clone();
            v.shards[0][1].members = Vec::new();
            v.shards[0][1].joined = Vec::new();
            v.shards[0][1].state_source = None;
            v.members = members;
            Arc::new(v)
        };
        let committed = view8(vec![m(1, 1), m(2, 1), m(4, 1)]);
        let minority = view8(vec![m(0, 1), m(3, 1)]);
        let agreed = |round: u64, leader: MemberId, view: &Arc<View>| LoggedState {
            acked: Some((Ballot { round, leader }, view.clone())),
            ..report(Some(l.clone()), &[(0, Version::new(7, 4))])
        };
        let in_minority = agreed(2, m(0, 1), &minority);
        let in_majority = agreed(1, m(1, 1), &committed);
        let reports = [
            (m(0, 2), &in_minority),
            (m(2, 2), &in_majority),
            (m(3, 2), &in_minority),
        ];
        assert_eq!(last_view(&reports), Some(&minority));
        assert_eq!(
            plan(&layout(2), &reports, BALLOT),
            Err(NotYet::NoMajority {
                view_id: 8,
                present: 1,
                members: 3
            })
        );
        // Node 1 back too: a majority of both, and the committed view's shard has holders
        // back that did not install it (so it delivered nothing).
        let reports = [
            (m(0, 2), &in_minority),
            (m(1, 2), &in_majority),
            (m(2, 2), &in_majority),
            (m(3, 2), &in_minority),
        ];
        let plan = plan(&layout(2), &reports, BALLOT).expect("a majority of either view 8");
        assert_eq!(plan.view.id, 9);
        // Once any report shows the committed view installed, it alone is the last view.
        let installed = LoggedState {
            view: Some(committed.clone()),
            ..in_majority.clone()
        };
        let reports = [
            (m(0, 2), &in_minority),
            (m(2, 2), &installed),
            (m(3, 2), &in_minority),
        ];
        assert_eq!(last_view(&reports), Some(&committed));
        assert_eq!(
            super::plan(&layout(2), &reports, BALLOT),
            Err(NotYet::NoMajority {
                view_id: 8,
                present: 1,
                members: 3
            })
        );
    }

    #[test]
    fn a_member_that_logged_its_state_arrived_holds_the_shard() {
        let l = last();
        let r = report(Some(l.clone()), &[]);
        // Node 4 joined shard 1 in view 7 and its state arrived whole there, but nothing
        // was written to the shard since: its log is the source's, so it holds the shard.
        let fed = LoggedState {
            fed: vec![ShardFed {
                view_id: 7,
                subgroup: 0,
                shard: 1,
            }],
            ..report(Some(l.clone()), &[(1, Version::new(6, 9))])
        };
        let reports = [(m(0, 2), &r), (m(1, 2), &r), (m(4, 2), &fed)];
        let plan = plan(&layout(2), &reports, BALLOT).expect("node 4 holds shard 1");
        assert_eq!(plan.view.shards[0][1].state_source, Some(m(4, 2)));
        assert_eq!(plan.shards[0][1].trim, Some(Version::new(6, 9)));
        // Fed in an earlier view, or another shard, it is not a holder of view 7's.
        for other in [
            ShardFed {
                view_id: 6,
                subgroup: 0,
                shard: 1,
            },
            ShardFed {
                view_id: 7,
                subgroup: 0,
                shard: 0,
            },
        ] {
            let stale = LoggedState {
                fed: vec![other],
                ..fed.clone()
            };
            let reports = [(m(0, 2), &r), (m(1, 2), &r), (m(4, 2), &stale)];
            assert_eq!(
                super::plan(&layout(2), &reports, BALLOT),
                Err(NotYet::NoHolder {
                    view_id: 7,
                    subgroup: 0,
                    shard: 1
                }),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_view_agreed_to_but_not_installed_here_counts_as_the_last_view() {
        let l = last();
        // View 8 (without nodes 3 and 4) was agreed by node 1 and may be installed by
        // nodes that are not back: the restart must follow it, as view 9.
        let mut next = (*l).clone();
        next.id = 8;
        next.members.truncate(3);
        next.shards[0][0].members = next.members.clone();
        next.shards[0][1].members = vec![next.members[2]];
        next.shards[0][1].joined = Vec::new();
        let next = Arc::new(next);
        let agreed = LoggedState {
            acked: Some((
                Ballot {
                    round: 3,
                    leader: m(0, 1),
                },
                next.clone(),
            )),
            ..report(Some(l.clone()), &[(0, Version::new(7, 4))])
        };
        let r = report(
            Some(l.clone()),
            &[(0, Version::new(7, 4)), (1, Version::new(7, 2))],
        );
        let reports = [(m(0, 2), &agreed), (m(3, 2), &r), (m(4, 2), &r)];
        assert_eq!(last_view(&reports).map(|v| v.id), Some(8));
        // Only node 0 of view 8 is back: no majority of it.
        assert_eq!(
            plan(&layout(2), &reports, BALLOT),
            Err(NotYet::NoMajority {
                view_id: 8,
                present: 1,
                members: 3
            })
        );
        // Nodes 0 and 3 logged agreement to a view 8' = {0, 3, 4} in a minority; the
        // newest view they installed is view 7, of which two of five are back: no restart.
        let mut minority = (*l).clone();
        minority.id = 8;
        minority.members = vec![m(0, 1), m(3, 1), m(4, 1)];
        let agreed_in_minority = LoggedState {
            acked: Some((
                Ballot {
                    round: 2,
                    leader: m(0, 1),
                },
                Arc::new(minority),
            )),
            ..report(Some(l.clone()), &[])
        };
        let reports = [
            (m(0, 2), &agreed_in_minority),
            (m(3, 2), &agreed_in_minority),
        ];
        assert_eq!(
            plan(&layout(2), &reports, BALLOT),
            Err(NotYet::NoMajority {
                view_id: 7,
                present: 2,
                members: 5
            })
        );
        let reports = [(m(0, 2), &agreed), (m(1, 2), &r), (m(2, 2), &r)];
        let plan = plan(&layout(2), &reports, BALLOT).expect("a majority of view 8");
        assert_eq!(plan.view.id, 9);
    }

    #[test]
    fn the_newest_logged_view_wins_and_stale_nodes_rejoin_as_newcomers() {
        let l = last();
        let mut older = (*l).clone();
        older.id = 5;
        let stale = report(Some(Arc::new(older)), &[(0, Version::new(5, 1))]);
        let r = report(
            Some(l.clone()),
            &[(0, Version::new(7, 0)), (1, Version::new(7, 0))],
        );
        let reports = [
            (m(9, 1), &stale),
            (m(0, 2), &r),
            (m(1, 2), &r),
            (m(3, 2), &r),
        ];
        let plan = plan(&layout(2), &reports, BALLOT).expect("restartable");
        assert_eq!(plan.view.id, 8);
        assert_eq!(*plan.view.members.last().expect("members"), m(9, 1));
        assert!(
            plan.view.shards[0]
                .iter()
                .all(|s| s.state_source != Some(m(9, 1)))
        );
    }
}
