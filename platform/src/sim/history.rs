//! What a simulation run records: every send, arrival, delivery, view, trim, persistence
//! step and fault, in the order the simulator saw them. Checkers read only this.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::core::{DeliveryKind, StopReason};
use crate::ids::{MemberId, SendTicket, Version, ViewId};
use crate::view::View;

/// Simulator-assigned number of a payload (its identity is the buffer's address and
/// length, so a copied payload would not be recognised). `UNKNOWN_PAYLOAD` marks a
/// delivered buffer that no send produced.
pub type PayloadId = u64;
pub const UNKNOWN_PAYLOAD: PayloadId = u64::MAX;

/// The simulated application's state of one shard: how many ordered messages it applied
/// and a hash chain over them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateDigest {
    pub applied: u64,
    pub chain: u64,
}

impl StateDigest {
    /// Applies one ordered message (by payload identity) to the state.
    pub fn apply(&mut self, payload: PayloadId) {
        self.applied += 1;
        self.chain = self.chain.rotate_left(7) ^ payload.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    Installed {
        at_us: u64,
        member: MemberId,
        view: Arc<View>,
    },
    Sent {
        at_us: u64,
        member: MemberId,
        subgroup: u32,
        ticket: SendTicket,
        payload: PayloadId,
        len: usize,
        probe: bool,
    },
    Aborted {
        at_us: u64,
        member: MemberId,
        subgroup: u32,
        tickets: Vec<SendTicket>,
    },
    /// Multicast data reached `member`'s core (it may still have buffered or dropped it).
    Arrived {
        at_us: u64,
        member: MemberId,
        from: MemberId,
        view_id: ViewId,
        subgroup: u32,
        first_index: u64,
        count: u64,
    },
    Delivered {
        at_us: u64,
        member: MemberId,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        sender: MemberId,
        sender_index: u64,
        version: Option<Version>,
        kind: DeliveryKind,
        payload: PayloadId,
        ticket: Option<SendTicket>,
    },
    /// `member` asked its core for a linearizable local read of `subgroup` (its shard
    /// `shard` of view `view_id`, its current view): `Core::request_read`.
    ReadRequested {
        at_us: u64,
        member: MemberId,
        ticket: u64,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
    },
    /// ... and the core answered the read `ticket`: serve it in view `view_id` once
    /// deliveries reach `barrier` (`None`: at once).
    ReadBarrier {
        at_us: u64,
        member: MemberId,
        ticket: u64,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        barrier: Option<Version>,
    },
    Persisted {
        at_us: u64,
        member: MemberId,
        subgroup: u32,
        version: Version,
    },
    GlobalPersisted {
        at_us: u64,
        member: MemberId,
        subgroup: u32,
        version: Version,
    },
    TrimLogged {
        at_us: u64,
        member: MemberId,
        view_id: ViewId,
        subgroup: u32,
        received: Vec<u64>,
    },
    Trimmed {
        at_us: u64,
        member: MemberId,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        received: Vec<u64>,
    },
    StateAtInstall {
        at_us: u64,
        member: MemberId,
        view_id: ViewId,
        subgroup: u32,
        digest: StateDigest,
    },
    StateReceived {
        at_us: u64,
        member: MemberId,
        view_id: ViewId,
        subgroup: u32,
        digest: StateDigest,
    },
    Stopped {
        at_us: u64,
        member: MemberId,
        reason: StopReason,
    },
    Crashed {
        at_us: u64,
        member: MemberId,
    },
    Partitioned {
        at_us: u64,
        minority: Vec<u32>,
    },
    Healed {
        at_us: u64,
    },
    /// A slow-node fault: the node handles nothing until `until_us`.
    Paused {
        at_us: u64,
        node: u32,
        until_us: u64,
    },
    HealStarted {
        at_us: u64,
    },
    /// End of the run: who was alive, and whether they converged on one view.
    Finished {
        at_us: u64,
        live: Vec<MemberId>,
        converged: bool,
    },
}

impl Event {
    /// When it happened (simulated time, or a process's wall clock in real runs).
    pub fn at_us(&self) -> u64 {
        match self {
            Event::Installed { at_us, .. }
            | Event::Sent { at_us, .. }
            | Event::Aborted { at_us, .. }
            | Event::Arrived { at_us, .. }
            | Event::Delivered { at_us, .. }
            | Event::ReadRequested { at_us, .. }
            | Event::ReadBarrier { at_us, .. }
            | Event::Persisted { at_us, .. }
            | Event::GlobalPersisted { at_us, .. }
            | Event::TrimLogged { at_us, .. }
            | Event::Trimmed { at_us, .. }
            | Event::StateAtInstall { at_us, .. }
            | Event::StateReceived { at_us, .. }
            | Event::Stopped { at_us, .. }
            | Event::Crashed { at_us, .. }
            | Event::Partitioned { at_us, .. }
            | Event::Healed { at_us }
            | Event::Paused { at_us, .. }
            | Event::HealStarted { at_us }
            | Event::Finished { at_us, .. } => *at_us,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct History {
    pub seed: u64,
    pub events: Vec<Event>,
}

impl History {
    pub fn new(seed: u64) -> Self {
        History {
            seed,
            events: Vec::new(),
        }
    }

    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// A hash of the whole history; equal for two runs of one seed.
    pub fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.seed.hash(&mut hasher);
        self.events.hash(&mut hasher);
        hasher.finish()
    }

    /// Every view installed by anyone, by id (the first copy seen).
    pub fn views(&self) -> std::collections::BTreeMap<ViewId, Arc<View>> {
        let mut views = std::collections::BTreeMap::new();
        for event in &self.events {
            if let Event::Installed { view, .. } = event {
                views.entry(view.id).or_insert_with(|| Arc::clone(view));
            }
        }
        views
    }

    pub fn deliveries(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Delivered { .. }))
            .count()
    }
}
