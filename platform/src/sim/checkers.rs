//! One checker per guarantee of `reference/derecho.md` §10, each a small function over a
//! recorded [`History`]. A checker returns the first violation it finds, with enough
//! detail to find it in the history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::core::DeliveryKind;
use crate::ids::{MemberId, SendTicket, Version, ViewId};
use crate::layout::DeliveryMode;
use crate::view::View;

use super::history::{Event, History, PayloadId, StateDigest, UNKNOWN_PAYLOAD};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.checker, self.message)
    }
}

type Check = Result<(), Violation>;

fn fail(checker: &'static str, message: String) -> Check {
    Err(Violation { checker, message })
}

/// Every checker, in a fixed order.
/// A named checker over a history.
pub type Checker = (&'static str, fn(&History) -> Check);

pub const CHECKERS: &[Checker] = &[
    ("view_agreement", view_agreement),
    ("total_order", total_order),
    ("sender_fifo", sender_fifo),
    ("same_delivered_set_per_view", same_delivered_set_per_view),
    ("stability_before_delivery", stability_before_delivery),
    ("no_invention_or_duplication", no_invention_or_duplication),
    ("trim_consistency", trim_consistency),
    ("no_split_brain", no_split_brain),
    ("persistence_frontier", persistence_frontier),
    ("state_transfer", state_transfer),
    ("restart_recovery", restart_recovery),
    ("read_barrier", read_barrier),
    ("liveness_after_heal", liveness_after_heal),
];

/// Every checker but liveness: what must hold in every run, whatever the faults.
pub fn check_safety(history: &History) -> Check {
    for (name, checker) in CHECKERS {
        if *name != "liveness_after_heal" {
            checker(history)?;
        }
    }
    Ok(())
}

pub fn check_all(history: &History) -> Check {
    for (_, checker) in CHECKERS {
        checker(history)?;
    }
    Ok(())
}

/// Views are installed in id order with no gaps from a member's first view, and every
/// member that installs view v installs the same members, ranks and layout.
pub fn view_agreement(h: &History) -> Check {
    let mut by_id: BTreeMap<ViewId, &Arc<View>> = BTreeMap::new();
    let mut last: HashMap<MemberId, ViewId> = HashMap::new();
    for event in &h.events {
        let Event::Installed { member, view, .. } = event else {
            continue;
        };
        if let Some(first) = by_id.get(&view.id) {
            if ***first != **view {
                return fail(
                    "view_agreement",
                    format!(
                        "{member} installed view {} as {:?}, another member as {:?}",
                        view.id, view, first
                    ),
                );
            }
        } else {
            by_id.insert(view.id, view);
        }
        if !view.contains(*member) {
            return fail(
                "view_agreement",
                format!(
                    "{member} installed view {} that does not contain it",
                    view.id
                ),
            );
        }
        if let Some(prev) = last.insert(*member, view.id)
            && view.id != prev + 1
        {
            return fail(
                "view_agreement",
                format!(
                    "{member} installed view {} right after view {prev}",
                    view.id
                ),
            );
        }
    }
    Ok(())
}

/// Members deliver what they both deliver in the same order: a message has one version
/// everywhere, one version names one message, and versions increase at each member.
pub fn total_order(h: &History) -> Check {
    let mut version_of: HashMap<PayloadId, Version> = HashMap::new();
    let mut payload_at: HashMap<(u32, u32, Version), PayloadId> = HashMap::new();
    let mut last: HashMap<(MemberId, u32), Version> = HashMap::new();
    for event in &h.events {
        let Event::Delivered {
            member,
            subgroup,
            shard,
            version: Some(version),
            payload,
            ..
        } = event
        else {
            continue;
        };
        if let Some(other) = version_of.insert(*payload, *version)
            && other != *version
        {
            return fail(
                "total_order",
                format!("payload #{payload} delivered as {other} and as {version} (at {member})"),
            );
        }
        if let Some(other) = payload_at.insert((*subgroup, *shard, *version), *payload)
            && other != *payload
        {
            return fail(
                "total_order",
                format!(
                    "subgroup {subgroup} shard {shard} version {version} is payload #{other} at one member, \
 #{payload} at {member}"
                ),
            );
        }
        if let Some(prev) = last.insert((*member, *subgroup), *version)
            && prev >= *version
        {
            return fail(
                "total_order",
                format!("{member} delivered {version} after {prev} in subgroup {subgroup}"),
            );
        }
    }
    Ok(())
}

/// One sender's messages are delivered in the order it sent them (also in raw mode).
pub fn sender_fifo(h: &History) -> Check {
    let tickets = sent_tickets(h);
    let mut last: HashMap<(MemberId, MemberId, u32), SendTicket> = HashMap::new();
    for event in &h.events {
        let Event::Delivered {
            member,
            sender,
            subgroup,
            payload,
            ..
        } = event
        else {
            continue;
        };
        let Some((_, ticket)) = tickets.get(payload) else {
            continue;
        };
        if let Some(prev) = last.insert((*member, *sender, *subgroup), *ticket)
            && prev >= *ticket
        {
            return fail(
                "sender_fifo",
                format!(
                    "{member} delivered {sender}'s send #{} after its send #{}",
                    ticket.0, prev.0
                ),
            );
        }
    }
    Ok(())
}

/// Virtual synchrony: the members of an ordered shard in view v that install v+1 deliver
/// exactly the same set of view-v messages, and nobody delivers a view-v message after
/// installing a later view.
pub fn same_delivered_set_per_view(h: &History) -> Check {
    let mut current: HashMap<MemberId, ViewId> = HashMap::new();
    let mut sets: BTreeMap<(ViewId, u32, u32), BTreeMap<MemberId, BTreeSet<PayloadId>>> =
        BTreeMap::new();
    let mut installed: BTreeSet<(MemberId, ViewId)> = BTreeSet::new();
    for event in &h.events {
        match event {
            Event::Installed { member, view, .. } => {
                current.insert(*member, view.id);
                installed.insert((*member, view.id));
            }
            Event::Delivered {
                member,
                view_id,
                subgroup,
                shard,
                payload,
                version: Some(_),
                ..
            } => {
                if current.get(member) != Some(view_id) {
                    return fail(
                        "same_delivered_set_per_view",
                        format!(
                            "{member} delivered a view-{view_id} message while in view {:?}",
                            current.get(member)
                        ),
                    );
                }
                sets.entry((*view_id, *subgroup, *shard))
                    .or_default()
                    .entry(*member)
                    .or_default()
                    .insert(*payload);
            }
            _ => {}
        }
    }
    let views = h.views();
    for (id, view) in &views {
        if !views.contains_key(&(id + 1)) {
            continue;
        }
        for (g, shards) in view.shards.iter().enumerate() {
            for (s, shard) in shards.iter().enumerate() {
                if shard.mode != DeliveryMode::Ordered {
                    continue;
                }
                let empty = BTreeMap::new();
                let delivered = sets.get(&(*id, g as u32, s as u32)).unwrap_or(&empty);
                let survivors: Vec<MemberId> = shard
                    .members
                    .iter()
                    .copied()
                    .filter(|m| installed.contains(&(*m, id + 1)))
                    .collect();
                let none = BTreeSet::new();
                // A survivor that the next view feeds this shard's state again (its own
                // transfer never completed) may have dropped the trim: it delivers a
                // subset, and the state covers the rest.
                let refed = |m: &MemberId| views[&(id + 1)].shards[g][s].joined.contains(m);
                let (refed, survivors): (Vec<MemberId>, Vec<MemberId>) =
                    survivors.into_iter().partition(|m| refed(m));
                let mut reference: Option<(MemberId, &BTreeSet<PayloadId>)> = None;
                for m in survivors {
                    let set = delivered.get(&m).unwrap_or(&none);
                    match reference {
                        None => reference = Some((m, set)),
                        Some((first, first_set)) if first_set != set => {
                            let only_first: Vec<_> = first_set.difference(set).take(5).collect();
                            let only_m: Vec<_> = set.difference(first_set).take(5).collect();
                            return fail(
                                "same_delivered_set_per_view",
                                format!(
                                    "view {id} subgroup {g} shard {s}: {first} and {m} delivered different sets \
 ({} vs {} messages; only at {first}: {only_first:?}; only at {m}: {only_m:?})",
                                    first_set.len(),
                                    set.len()
                                ),
                            );
                        }
                        Some(_) => {}
                    }
                }
                if let Some((first, first_set)) = reference {
                    for m in refed {
                        let set = delivered.get(&m).unwrap_or(&none);
                        if !set.is_subset(first_set) {
                            let extra: Vec<_> = set.difference(first_set).take(5).collect();
                            return fail(
                                "same_delivered_set_per_view",
                                format!(
                                    "view {id} subgroup {g} shard {s}: {m} (fed state again next view) \
 delivered messages {first} did not: {extra:?}"
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// An ordered message is delivered only after every shard member received it (a trim
/// delivery: after every member that applied the trim received it).
pub fn stability_before_delivery(h: &History) -> Check {
    let views = h.views();
    // (receiver, sender, view, subgroup) -> received prefix length with the event index
    // at which each arrival happened.
    type ArrivalKey = (MemberId, MemberId, ViewId, u32);
    let mut arrivals: HashMap<ArrivalKey, Vec<(u64, u64, usize)>> = HashMap::new();
    let mut trimmed: HashMap<(ViewId, u32, u32), Vec<MemberId>> = HashMap::new();
    for (i, event) in h.events.iter().enumerate() {
        match event {
            Event::Arrived {
                member,
                from,
                view_id,
                subgroup,
                first_index,
                count,
                ..
            } => {
                arrivals
                    .entry((*member, *from, *view_id, *subgroup))
                    .or_default()
                    .push((*first_index, *count, i));
            }
            Event::Trimmed {
                member,
                view_id,
                subgroup,
                shard,
                ..
            } => {
                trimmed
                    .entry((*view_id, *subgroup, *shard))
                    .or_default()
                    .push(*member);
            }
            _ => {}
        }
    }
    let arrived =
        |receiver: MemberId, sender: MemberId, view: ViewId, g: u32, index: u64, before: usize| {
            receiver == sender
                || arrivals
                    .get(&(receiver, sender, view, g))
                    .is_some_and(|list| {
                        list.iter().any(|(first, count, at)| {
                            *at < before && *first <= index && index < first + count
                        })
                    })
        };
    for (i, event) in h.events.iter().enumerate() {
        let Event::Delivered {
            member,
            view_id,
            subgroup,
            shard,
            sender,
            sender_index,
            kind,
            ..
        } = event
        else {
            continue;
        };
        let Some(view) = views.get(view_id) else {
            return fail(
                "stability_before_delivery",
                format!("{member} delivered in unknown view {view_id}"),
            );
        };
        let witnesses: Vec<MemberId> = match kind {
            DeliveryKind::Raw => vec![*member],
            DeliveryKind::Stable => view.shards[*subgroup as usize][*shard as usize]
                .members
                .clone(),
            DeliveryKind::Trim => {
                let mut w = trimmed
                    .get(&(*view_id, *subgroup, *shard))
                    .cloned()
                    .unwrap_or_default();
                w.push(*member);
                w
            }
        };
        let limit = if *kind == DeliveryKind::Trim {
            h.events.len()
        } else {
            i
        };
        for w in witnesses {
            if !arrived(w, *sender, *view_id, *subgroup, *sender_index, limit) {
                return fail(
                    "stability_before_delivery",
                    format!(
                        "{member} delivered ({kind:?}) {sender}'s message #{sender_index} of view {view_id} \
 subgroup {subgroup} before {w} had received it"
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Every delivered payload was sent, by the member named as its sender, who was in that
/// view's shard; nobody delivers one payload twice; nulls are never delivered.
pub fn no_invention_or_duplication(h: &History) -> Check {
    let views = h.views();
    let tickets = sent_tickets(h);
    let mut seen: BTreeSet<(MemberId, PayloadId)> = BTreeSet::new();
    for event in &h.events {
        let Event::Delivered {
            member,
            view_id,
            subgroup,
            shard,
            sender,
            payload,
            ..
        } = event
        else {
            continue;
        };
        if *payload == UNKNOWN_PAYLOAD {
            return fail(
                "no_invention_or_duplication",
                format!(
                    "{member} delivered a payload nobody sent (a copy or an invention) from {sender}"
                ),
            );
        }
        match tickets.get(payload) {
            Some((origin, _)) if origin == sender => {}
            other => {
                return fail(
                    "no_invention_or_duplication",
                    format!(
                        "{member} delivered payload #{payload} as {sender}'s, but it was sent by {other:?}"
                    ),
                );
            }
        }
        let in_shard = views
            .get(view_id)
            .and_then(|v| v.shards.get(*subgroup as usize)?.get(*shard as usize))
            .is_some_and(|sv| sv.members.contains(sender));
        if !in_shard {
            return fail(
                "no_invention_or_duplication",
                format!(
                    "{member} delivered a message from {sender}, not in view {view_id} shard {subgroup}/{shard}"
                ),
            );
        }
        if !seen.insert((*member, *payload)) {
            return fail(
                "no_invention_or_duplication",
                format!("{member} delivered payload #{payload} twice"),
            );
        }
    }
    Ok(())
}

/// One trim per view and shard: every member applies the same trim, and only after it
/// logged that trim.
pub fn trim_consistency(h: &History) -> Check {
    let mut logged: BTreeSet<(MemberId, ViewId, u32, Vec<u64>)> = BTreeSet::new();
    let mut applied: HashMap<(ViewId, u32, u32), (MemberId, Vec<u64>)> = HashMap::new();
    for event in &h.events {
        match event {
            Event::TrimLogged {
                member,
                view_id,
                subgroup,
                received,
                ..
            } => {
                logged.insert((*member, *view_id, *subgroup, received.clone()));
            }
            Event::Trimmed {
                member,
                view_id,
                subgroup,
                shard,
                received,
                ..
            } => {
                if !logged.contains(&(*member, *view_id, *subgroup, received.clone())) {
                    return fail(
                        "trim_consistency",
                        format!(
                            "{member} applied trim {received:?} of view {view_id} subgroup {subgroup} before logging it"
                        ),
                    );
                }
                match applied.get(&(*view_id, *subgroup, *shard)) {
                    Some((first, trim)) if trim != received => {
                        return fail(
                            "trim_consistency",
                            format!(
                                "view {view_id} subgroup {subgroup} shard {shard}: {first} applied trim {trim:?}, \
 {member} applied {received:?}"
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        applied.insert((*view_id, *subgroup, *shard), (*member, received.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Partition safety: every view is agreed by a majority of its predecessor (members that
/// carry over or leave gracefully through it).
pub fn no_split_brain(h: &History) -> Check {
    let views = h.views();
    for (id, view) in &views {
        let Some(next) = views.get(&(id + 1)) else {
            continue;
        };
        // A restart view is agreed by nodes back from the stop (new incarnations).
        let agreeing = view
            .members
            .iter()
            .filter(|m| {
                if next.is_restart() {
                    next.members.iter().any(|n| n.node == m.node)
                } else {
                    next.contains(**m) || next.left.contains(m)
                }
            })
            .count();
        if agreeing * 2 <= view.members.len() {
            return fail(
                "no_split_brain",
                format!(
                    "view {} was installed with only {agreeing} of view {id}'s {} members",
                    id + 1,
                    view.members.len()
                ),
            );
        }
    }
    Ok(())
}

/// The global persistence frontier only grows, and a version at the frontier is durable
/// at every shard member that carries the shard into the next view (or stays in it).
pub fn persistence_frontier(h: &History) -> Check {
    let views = h.views();
    let mut last: HashMap<(MemberId, u32), Version> = HashMap::new();
    let mut persisted: HashMap<(MemberId, u32), Version> = HashMap::new();
    let mut installed: BTreeSet<(MemberId, ViewId)> = BTreeSet::new();
    for event in &h.events {
        if let Event::Installed { member, view, .. } = event {
            installed.insert((*member, view.id));
        }
    }
    for event in &h.events {
        match event {
            Event::Persisted {
                member,
                subgroup,
                version,
                ..
            } => {
                let entry = persisted.entry((*member, *subgroup)).or_insert(*version);
                *entry = (*entry).max(*version);
            }
            Event::GlobalPersisted {
                member,
                subgroup,
                version,
                ..
            } => {
                if let Some(prev) = last.insert((*member, *subgroup), *version)
                    && prev >= *version
                {
                    return fail(
                        "persistence_frontier",
                        format!(
                            "{member}'s frontier in subgroup {subgroup} went from {prev} to {version}"
                        ),
                    );
                }
                let Some(view) = views.get(&version.view_id()) else {
                    continue;
                };
                let Some(shard) = view.shards[*subgroup as usize]
                    .iter()
                    .find(|s| s.members.contains(member))
                else {
                    return fail(
                        "persistence_frontier",
                        format!("{member} reported a frontier for a shard it is not in"),
                    );
                };
                for m in &shard.members {
                    let survives = installed.contains(&(*m, view.id + 1))
                        || !views.contains_key(&(view.id + 1));
                    let durable = persisted
                        .get(&(*m, *subgroup))
                        .is_some_and(|p| p >= version);
                    if survives && !durable && installed.contains(&(*m, view.id)) {
                        return fail(
                            "persistence_frontier",
                            format!(
                                "{member} reported {version} durable everywhere, but {m} had not persisted it"
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A member new to a shard receives exactly the state the shard's old members had when
/// they installed the view.
pub fn state_transfer(h: &History) -> Check {
    let mut at_install: HashMap<(ViewId, u32, MemberId), StateDigest> = HashMap::new();
    for event in &h.events {
        if let Event::StateAtInstall {
            member,
            view_id,
            subgroup,
            digest,
            ..
        } = event
        {
            at_install.insert((*view_id, *subgroup, *member), *digest);
        }
    }
    let views = h.views();
    for event in &h.events {
        let Event::StateReceived {
            member,
            view_id,
            subgroup,
            digest,
            ..
        } = event
        else {
            continue;
        };
        let Some(view) = views.get(view_id) else {
            continue;
        };
        let Some(shard) = view.shards[*subgroup as usize]
            .iter()
            .find(|s| s.members.contains(member))
        else {
            return fail(
                "state_transfer",
                format!("{member} received state for a shard it is not in"),
            );
        };
        for old in shard.members.iter().filter(|m| !shard.joined.contains(m)) {
            if let Some(expected) = at_install.get(&(*view_id, *subgroup, *old))
                && expected != digest
            {
                return fail(
                    "state_transfer",
                    format!(
                        "{member} received {digest:?} in view {view_id}, but {old} held {expected:?}"
                    ),
                );
            }
        }
    }
    Ok(())
}

/// A total restart continues each shard from the longest log: the restart state of every
/// shard (its source's state when it installed the restart view) replays a prefix of the
/// shard's delivery order, and that prefix holds every version reported durable at every
/// shard member, and every version a holder of the shard in the last view (one that came
/// back) had made durable.
pub fn restart_recovery(h: &History) -> Check {
    let views = h.views();
    // Delivery order per (subgroup, shard): version -> payload.
    let mut lineage: HashMap<(u32, u32), BTreeMap<Version, PayloadId>> = HashMap::new();
    let mut at_install: HashMap<(ViewId, u32, MemberId), StateDigest> = HashMap::new();
    for event in &h.events {
        match event {
            Event::Delivered {
                subgroup,
                shard,
                version: Some(version),
                payload,
                ..
            } => {
                lineage
                    .entry((*subgroup, *shard))
                    .or_default()
                    .insert(*version, *payload);
            }
            Event::StateAtInstall {
                member,
                view_id,
                subgroup,
                digest,
                ..
            } => {
                at_install.insert((*view_id, *subgroup, *member), *digest);
            }
            _ => {}
        }
    }
    let shard_at = |member: MemberId, subgroup: u32, version: Version| -> Option<u32> {
        let view = views.get(&version.view_id())?;
        view.shard_of(subgroup as usize, member).map(|s| s as u32)
    };
    for (restart_id, view) in views.iter().filter(|(_, v)| v.is_restart()) {
        // What had to survive, per (subgroup, shard).
        let mut required: HashMap<(u32, u32), (Version, String)> = HashMap::new();
        let mut require = |key: (u32, u32), version: Version, why: String| {
            let entry = required.entry(key).or_insert((version, why.clone()));
            if entry.0 < version {
                *entry = (version, why);
            }
        };
        // The longest log among the last view's holders of each shard that came back.
        let holders: BTreeSet<(MemberId, u32, u32)> = views
            .get(&(restart_id - 1))
            .map(|last| {
                let mut holders = BTreeSet::new();
                for (g, shards) in last.shards.iter().enumerate() {
                    for (s, sv) in shards.iter().enumerate() {
                        for m in &sv.members {
                            if view.members.iter().any(|b| b.node == m.node) {
                                holders.insert((*m, g as u32, s as u32));
                            }
                        }
                    }
                }
                holders
            })
            .unwrap_or_default();
        let mut persisted_in_last: BTreeSet<(MemberId, u32)> = BTreeSet::new();
        for event in &h.events {
            if let Event::Persisted {
                member,
                subgroup,
                version,
                ..
            } = event
                && version.view_id() + 1 == *restart_id
            {
                persisted_in_last.insert((*member, *subgroup));
            }
        }
        for event in &h.events {
            match event {
                Event::GlobalPersisted {
                    member,
                    subgroup,
                    version,
                    ..
                } if version.view_id() < *restart_id => {
                    if let Some(s) = shard_at(*member, *subgroup, *version) {
                        require(
                            (*subgroup, s),
                            *version,
                            format!("{member} reported it durable everywhere"),
                        );
                    }
                }
                Event::Persisted {
                    member,
                    subgroup,
                    version,
                    ..
                } if version.view_id() < *restart_id => {
                    let Some(s) = shard_at(*member, *subgroup, *version) else {
                        continue;
                    };
                    let was_fed = views
                        .get(&(restart_id - 1))
                        .and_then(|last| last.shards.get(*subgroup as usize)?.get(s as usize))
                        .is_some_and(|sv| sv.joined.contains(member));
                    let held = holders.contains(&(*member, *subgroup, s))
                        && (!was_fed || persisted_in_last.contains(&(*member, *subgroup)));
                    if held {
                        require(
                            (*subgroup, s),
                            *version,
                            format!(
                                "{member}, a holder of the shard in the last view, had made it durable"
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
        for (g, shards) in view.shards.iter().enumerate() {
            for (s, sv) in shards.iter().enumerate() {
                let key = (g as u32, s as u32);
                let Some(source) = sv.state_source else {
                    if let Some((version, why)) = required.get(&key) {
                        return fail(
                            "restart_recovery",
                            format!(
                                "restart view {restart_id} starts subgroup {g} shard {s} empty, but {version} had to survive: {why}"
                            ),
                        );
                    }
                    continue;
                };
                let Some(digest) = at_install.get(&(*restart_id, g as u32, source)) else {
                    continue;
                };
                let order: Vec<(Version, PayloadId)> = lineage
                    .get(&key)
                    .map(|l| {
                        l.range(..Version::new(*restart_id, 0))
                            .map(|(v, p)| (*v, *p))
                            .collect()
                    })
                    .unwrap_or_default();
                let applied = digest.applied as usize;
                if applied <= order.len() {
                    let mut replay = StateDigest::default();
                    for (_, payload) in &order[..applied] {
                        replay.apply(*payload);
                    }
                    if replay != *digest {
                        return fail(
                            "restart_recovery",
                            format!(
                                "restart view {restart_id}: {source}'s state of subgroup {g} shard {s} is not the first {applied} deliveries of the shard"
                            ),
                        );
                    }
                }
                if let Some((version, why)) = required.get(&key) {
                    let needed = order.iter().take_while(|(v, _)| v <= version).count();
                    if applied < needed {
                        return fail(
                            "restart_recovery",
                            format!(
                                "restart view {restart_id} restarts subgroup {g} shard {s} from {applied} messages, but {version} (message {needed}) had to survive: {why}"
                            ),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Linearizable local reads (`Core::request_read`). When member M asks for a read in
/// its view v, let S be the ordered messages of its shard that some member delivered in
/// view v before the request and M had not. When the core answers in view v with
/// barrier b, every message of S is delivered at M by then or has a version at most b
/// (`None`: below every version), so M serves the read after applying all of S. An
/// answer in a later view is covered by that view's install (whose state holds all of
/// view v that anyone delivered; `same_delivered_set_per_view` judges that). A member
/// that is excluded from v's successor must never get an answer in v for a read asked
/// after the others delivered without it: that is what the read probes are for.
///
/// Also: the request names M's current view and the shard M holds in it; the answer
/// names M's current view, the request's subgroup and shard, and a version of its view.
/// "Before" is the history's order, not `at_us`: the simulator records events in the
/// order it executes them.
pub fn read_barrier(h: &History) -> Check {
    type ShardKey = (ViewId, u32, u32);
    struct Asked {
        at_us: u64,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        missing: BTreeSet<Version>,
    }
    let views = h.views();
    let mut current: HashMap<MemberId, ViewId> = HashMap::new();
    // The first delivery of each version anywhere: by whom, when, and how.
    let mut first: HashMap<(ShardKey, Version), (MemberId, u64, DeliveryKind)> = HashMap::new();
    // Per shard member: versions delivered somewhere in its shard and not yet by it.
    let mut missing: HashMap<(ShardKey, MemberId), BTreeSet<Version>> = HashMap::new();
    let mut asked: HashMap<(MemberId, u64), Asked> = HashMap::new();
    // Joiners whose shard state arrived: (member, view, subgroup).
    let mut state_in: HashSet<(MemberId, ViewId, u32)> = HashSet::new();
    for event in &h.events {
        match event {
            Event::Installed { member, view, .. } => {
                current.insert(*member, view.id);
            }
            Event::StateReceived {
                member,
                view_id,
                subgroup,
                ..
            } => {
                state_in.insert((*member, *view_id, *subgroup));
            }
            Event::Delivered {
                at_us,
                member,
                view_id,
                subgroup,
                shard,
                version: Some(version),
                kind,
                ..
            } => {
                let key = (*view_id, *subgroup, *shard);
                if first.contains_key(&(key, *version)) {
                    if let Some(versions) = missing.get_mut(&(key, *member)) {
                        versions.remove(version);
                    }
                    continue;
                }
                first.insert((key, *version), (*member, *at_us, *kind));
                let members = views
                    .get(view_id)
                    .and_then(|v| v.shards.get(*subgroup as usize)?.get(*shard as usize))
                    .map_or(&[][..], |sv| sv.members.as_slice());
                for m in members.iter().filter(|m| *m != member) {
                    missing.entry((key, *m)).or_default().insert(*version);
                }
            }
            Event::ReadRequested {
                at_us,
                member,
                ticket,
                view_id,
                subgroup,
                shard,
            } => {
                let installed = current.get(member).copied();
                if installed != Some(*view_id) {
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} asked read {ticket} in view {view_id} at {at_us} us while in \
 view {installed:?}"
                        ),
                    );
                }
                let held = views
                    .get(view_id)
                    .and_then(|v| v.shard_of(*subgroup as usize, *member));
                if held != Some(*shard as usize) {
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} asked read {ticket} of subgroup {subgroup} shard {shard} in \
 view {view_id}, but holds shard {held:?} there"
                        ),
                    );
                }
                let key = (*view_id, *subgroup, *shard);
                let snapshot = missing.get(&(key, *member)).cloned().unwrap_or_default();
                asked.insert(
                    (*member, *ticket),
                    Asked {
                        at_us: *at_us,
                        view_id: *view_id,
                        subgroup: *subgroup,
                        shard: *shard,
                        missing: snapshot,
                    },
                );
            }
            Event::ReadBarrier {
                at_us,
                member,
                ticket,
                view_id,
                subgroup,
                shard,
                barrier,
            } => {
                let shown = barrier.map_or_else(|| "none".to_string(), |b| b.to_string());
                let Some(ask) = asked.remove(&(*member, *ticket)) else {
                    return fail(
                        "read_barrier",
                        format!("{member} answered read {ticket} at {at_us} us, never asked"),
                    );
                };
                if (ask.subgroup, ask.shard) != (*subgroup, *shard) {
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} answered read {ticket} for subgroup {subgroup} shard {shard}, \
 asked for subgroup {} shard {}",
                            ask.subgroup, ask.shard
                        ),
                    );
                }
                let installed = current.get(member).copied();
                if installed != Some(*view_id) || *view_id < ask.view_id {
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} answered read {ticket} (asked in view {}) in view {view_id} \
 at {at_us} us while in view {installed:?}",
                            ask.view_id
                        ),
                    );
                }
                // A member new to the shard holds nothing until its state arrives.
                let joined = views
                    .get(view_id)
                    .and_then(|v| v.shards.get(*subgroup as usize)?.get(*shard as usize))
                    .is_some_and(|sv| sv.state_source.is_some() && sv.joined.contains(member));
                if joined && !state_in.contains(&(*member, *view_id, *subgroup)) {
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} answered read {ticket} at {at_us} us in view {view_id}, \
 where it joined subgroup {subgroup} shard {shard}, before that shard's state arrived"
                        ),
                    );
                }
                if let Some(b) = barrier
                    && b.view_id() != *view_id
                {
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} answered read {ticket} in view {view_id} with barrier {b}: a \
 version of another view"
                        ),
                    );
                }
                if *view_id > ask.view_id {
                    continue;
                }
                let key = (*view_id, *subgroup, *shard);
                let still = missing.get(&(key, *member));
                let uncovered = ask
                    .missing
                    .iter()
                    .filter(|v| still.is_some_and(|s| s.contains(v)))
                    .find(|v| barrier.is_none_or(|b| **v > b));
                if let Some(version) = uncovered {
                    let (by, when_us, kind) = first[&(key, *version)];
                    return fail(
                        "read_barrier",
                        format!(
                            "{member} got read barrier {shown} of view {view_id} subgroup {subgroup} \
 shard {shard} at {at_us} us for read {ticket} asked at {} us, but {by} had delivered \
 ({kind:?}) {version} at {when_us} us before the read was asked and {member} had not",
                            ask.at_us
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Once faults stop: every live node ends in one view holding exactly the live nodes;
/// every probe sent then is delivered by every member of its shard; and every message a
/// surviving member sent (and that was not aborted) was delivered.
pub fn liveness_after_heal(h: &History) -> Check {
    let Some(Event::Finished {
        live, converged, ..
    }) = h
        .events
        .iter()
        .rev()
        .find(|e| matches!(e, Event::Finished { .. }))
    else {
        return fail(
            "liveness_after_heal",
            "the run has no Finished event".to_string(),
        );
    };
    if !converged {
        return fail(
            "liveness_after_heal",
            format!("live members {live:?} did not converge on one view"),
        );
    }
    let mut final_view: HashMap<MemberId, Arc<View>> = HashMap::new();
    for event in &h.events {
        if let Event::Installed { member, view, .. } = event {
            final_view.insert(*member, Arc::clone(view));
        }
    }
    let views: BTreeSet<ViewId> = live
        .iter()
        .filter_map(|m| final_view.get(m).map(|v| v.id))
        .collect();
    if views.len() != 1 || live.iter().any(|m| !final_view.contains_key(m)) {
        return fail(
            "liveness_after_heal",
            format!("live members ended in views {views:?}"),
        );
    }
    let view = &final_view[&live[0]];
    let in_view: BTreeSet<MemberId> = view.members.iter().copied().collect();
    let alive: BTreeSet<MemberId> = live.iter().copied().collect();
    if in_view != alive {
        return fail(
            "liveness_after_heal",
            format!("final view {:?} but live members {alive:?}", view.members),
        );
    }
    let mut delivered: BTreeSet<(MemberId, PayloadId)> = BTreeSet::new();
    // Where each sender delivered its own message: the view whose shard owes it.
    let mut own_view: HashMap<PayloadId, (ViewId, u32, u32)> = HashMap::new();
    let mut aborted: BTreeSet<(MemberId, SendTicket)> = BTreeSet::new();
    for event in &h.events {
        match event {
            Event::Delivered {
                member,
                sender,
                payload,
                view_id,
                subgroup,
                shard,
                ..
            } => {
                delivered.insert((*member, *payload));
                if member == sender {
                    own_view.insert(*payload, (*view_id, *subgroup, *shard));
                }
            }
            Event::Aborted {
                member, tickets, ..
            } => aborted.extend(tickets.iter().map(|t| (*member, *t))),
            _ => {}
        }
    }
    let views = h.views();
    for event in &h.events {
        let Event::Sent {
            member,
            ticket,
            payload,
            probe,
            ..
        } = event
        else {
            continue;
        };
        if !alive.contains(member) || aborted.contains(&(*member, *ticket)) {
            continue;
        }
        if !delivered.contains(&(*member, *payload)) {
            return fail(
                "liveness_after_heal",
                format!(
                    "{member}'s send #{} was never delivered to itself",
                    ticket.0
                ),
            );
        }
        if *probe {
            let Some((view_id, g, s)) = own_view.get(payload) else {
                continue;
            };
            let shard = views
                .get(view_id)
                .map(|v| &v.shards[*g as usize][*s as usize]);
            for m in shard.map(|s| s.members.as_slice()).unwrap_or(&[]) {
                if !delivered.contains(&(*m, *payload)) {
                    return fail(
                        "liveness_after_heal",
                        format!(
                            "probe #{payload} from {member} (view {view_id}) never reached {m}"
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

fn sent_tickets(h: &History) -> HashMap<PayloadId, (MemberId, SendTicket)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::Sent {
                member,
                ticket,
                payload,
                ..
            } => Some((*payload, (*member, *ticket))),
            _ => None,
        })
        .collect()
}
