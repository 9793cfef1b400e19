//! The deterministic simulator. One `u64` seed draws the scenario (nodes, layout,
//! workload, fault schedule) and drives a simulated network (per-link FIFO with random
//! delays), clock, timers and disks. It runs the real [`Core`] and records a [`History`]
//! that the [`checkers`] judge.
//!
//! A run has two phases: a safety phase under faults (crashes at any moment, partitions
//! and heals, slow nodes and disks, joins, graceful leaves, restarts as new incarnations),
//! then a heal phase: faults stop, every node comes back, and the run checks that the
//! group converges and delivers fresh probe messages everywhere.
//!
//! A fifth of the seeds also stop every node at once mid-run and restart them in a
//! shuffled order: a total restart from the simulated disks (each node's log survives its
//! crashes; what it had not made durable does not).
//!
//! Throughout, members ask their core for read barriers ([`Core::read_barrier`]) at
//! random moments and right after another shard member delivered: the `read_barrier`
//! checker judges the answers. These draws come from an RNG of their own, so a seed's
//! run is the same with or without them.
//!
//! Fault injection keeps the preconditions under which the protocol promises progress:
//! every view in play keeps a live majority and a live member in each shard. Safety
//! checkers hold regardless; liveness is only claimed under those preconditions.

pub mod checkers;
pub mod history;
pub mod history_io;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::CoreConfig;
use crate::core::{Core, Output};
use crate::ids::{MemberId, NodeId, Version, ViewId};
use crate::layout::{DeliveryMode, Layout, ShardLayout, SubgroupLayout};
use crate::restart::{LoggedState, ShardFed, ShardTail};
use crate::row::Ballot;
use crate::view::View;
use crate::wire::Wire;

use checkers::Violation;
use history::{Event, History, PayloadId, StateDigest, UNKNOWN_PAYLOAD};

/// Simulated time between a node's clock ticks.
const TICK_INTERVAL_US: u64 = 5_000;
/// Longest a heal phase may take before liveness is declared violated.
const HEAL_DEADLINE_US: u64 = 30_000_000;
/// Large payloads (up to 1 MiB) per run, to bound memory.
const LARGE_PAYLOADS_MAX: usize = 3;
/// Mixed into the seed for the read-barrier RNG, so that read barriers draw nothing from
/// the scenario's or the run's RNG: a seed runs exactly as it did without them.
const READ_BARRIER_SEED_MIX: u64 = 0x4ead_ba55_1e55_0b5e;
/// Mixed into the seed for the RNG of disk failures, so that a seed without one runs
/// exactly as it did before they were simulated.
const DISK_FAILURE_SEED_MIX: u64 = 0xd15c_fa11_0000_0001;
/// Mixed into the seed for the RNG of faults during a total restart (a preferred restart
/// leader lost, two leaders that cannot hear each other, crashes mid-restart), so that
/// nothing else in a seed changes with them.
const RESTART_FAULT_SEED_MIX: u64 = 0x4e57_a47f_a017_0002;
/// Mixed into the seed for the RNG of the bridged restart leader (cut off from every node
/// but the next leader), so that seeds without it run as they did before it.
const BRIDGE_SEED_MIX: u64 = 0xb41d_9e00_0000_0003;
/// Longest gap between two read barriers at random members.
const READ_BARRIER_GAP_MAX_US: u64 = 4_000;
/// Chance, in percent, that an ordered delivery is followed by a read barrier at another
/// member of the shard (the moment its contract is most at risk).
const READ_BARRIER_AFTER_DELIVERY_PERCENT: u32 = 10;

/// Everything a seed decides about a run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub initial_nodes: usize,
    pub layout: Layout,
    pub core: CoreConfig,
    pub safety_phase_us: u64,
    pub messages_per_node: usize,
    pub send_gap_max_us: u64,
    pub link_delay_base_us: u64,
    pub link_jitter_us: u64,
    pub crashes: usize,
    pub partitions: usize,
    pub slow_nodes: usize,
    pub slow_disks: usize,
    pub joins: usize,
    pub leaves: usize,
    /// Nodes whose log fails a write (a full disk): they stop at once
    /// (`Core::storage_failed`), losing what they had not made durable.
    pub disk_failures: usize,
    /// Every message sent is also encoded and decoded, and must come back equal (the
    /// original travels on: payload identity matters to the checkers).
    pub codec_check: bool,
    /// Links have two FIFO lanes, as a transport that lets rows and control overtake a
    /// large message would: data (multicast runs, state) and control (rows, membership
    /// traffic). An update carrying both is split, so its row may arrive before its data.
    pub split_lanes: bool,
    /// Every node stops at once at this time and all restart, in a shuffled order.
    pub total_restart_at_us: Option<u64>,
    /// Odd subgroups report persistence lazily (`Core::persisted_lazily`), as a driver
    /// does for volatile subgroups: their news waits for the next row push or tick.
    pub lazy_persistence: bool,
}

impl Scenario {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let initial_nodes = rng.random_range(3..=7usize);
        let shards = rng.random_range(1..=3usize).min(initial_nodes);
        let mut subgroups = Vec::new();
        // Subgroup 0: 1-3 disjoint shards sized to fit the initial nodes.
        let min_nodes = if initial_nodes >= 2 * shards && rng.random_bool(0.6) {
            2
        } else {
            1
        };
        let max_nodes = rng.random_range(min_nodes..=3usize.max(min_nodes));
        subgroups.push(SubgroupLayout {
            shards: (0..shards)
                .map(|_| ShardLayout {
                    min_nodes,
                    max_nodes,
                    mode: DeliveryMode::Ordered,
                })
                .collect(),
        });
        // Sometimes a second, overlapping subgroup: one shard over everyone, ordered or raw.
        if rng.random_bool(0.4) {
            let mode = if rng.random_bool(0.4) {
                DeliveryMode::Raw
            } else {
                DeliveryMode::Ordered
            };
            subgroups.push(SubgroupLayout {
                shards: vec![ShardLayout {
                    min_nodes: 1,
                    max_nodes: 7,
                    mode,
                }],
            });
        }
        let layout = Layout { subgroups };
        let mut core = CoreConfig::new(layout.clone());
        core.window_size = rng.random_range(2..=64);
        core.heartbeat_interval_ms = 10;
        core.suspicion_timeout_ms = 100;
        core.join_retry_ms = 50;
        core.restart_grace_ms = 300;
        // Read leases on odd seeds (from the seed, not the generator: the other draws
        // stay what they were), for 20-289 ms: under the suspicion timeout (100 ms) on
        // some seeds, over it on most (a member can then be suspected while its lease
        // runs), always under the restart grace.
        if seed % 2 == 1 && std::env::var("NOLEASE").is_err() {
            core.read_lease_ms = 20 + (seed / 2) % 270;
        }
        // Shard states in parts of 1-40 bytes on a third of the seeds (again from the
        // seed): a transfer then takes many messages, and faults land between them.
        if seed.is_multiple_of(3) {
            core.state_part_bytes_max = 1 + (seed / 3 % 40) as usize;
            // And 64-512 parts in flight: the source waits for acks. (A transfer of a
            // shard's log then takes some round trips, as one of many parts does in a
            // real cluster; a window of one tiny part would take thousands.)
            core.state_window_bytes = core.state_part_bytes_max * (64 << (seed / 7 % 4));
        }
        // Updates cut at 1-4,096 payload bytes on a quarter of the seeds (from the seed):
        // a flush then sends several updates to a peer, the row on the last.
        if seed % 4 == 1 {
            core.update_data_bytes_max = 1 << (seed / 4 % 13);
        }
        core.pending_sends_max = 256;
        core.batch_messages_max = rng.random_range(1..=32);
        if rng.random_bool(0.05) {
            // Exercise epoch rolls: views run out of slots quickly.
            core.view_slots_max = rng.random_range(40..=400);
        }
        let faulty = rng.random_bool(0.9);
        let safety_phase_us = rng.random_range(600_000..=2_000_000);
        let total_restart_at_us = (seed % 5 == 2)
            .then(|| rng.random_range(safety_phase_us / 4..=safety_phase_us * 3 / 4));
        Scenario {
            seed,
            initial_nodes,
            layout,
            core,
            safety_phase_us,
            messages_per_node: rng.random_range(5..=40),
            send_gap_max_us: rng.random_range(1_000..=30_000),
            link_delay_base_us: rng.random_range(50..=2_000),
            link_jitter_us: rng.random_range(0..=3_000),
            crashes: if faulty { rng.random_range(0..=3) } else { 0 },
            partitions: if faulty { rng.random_range(0..=2) } else { 0 },
            slow_nodes: if faulty { rng.random_range(0..=2) } else { 0 },
            slow_disks: if faulty { rng.random_range(0..=2) } else { 0 },
            joins: if faulty { rng.random_range(0..=2) } else { 0 },
            leaves: if faulty { rng.random_range(0..=1) } else { 0 },
            codec_check: seed.is_multiple_of(4),
            split_lanes: seed % 3 == 1,
            total_restart_at_us,
            lazy_persistence: (seed / 5) % 2 == 1,
            // Drawn last, so the scenario's other draws are those of before.
            disk_failures: if faulty { rng.random_range(0..=1) } else { 0 },
        }
    }
}

/// The outcome of one seed.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub history: History,
    pub result: Result<(), Violation>,
    pub state: StateCounts,
    pub restart: RestartCounts,
}

/// What a run's total restart did (all zero without one).
#[derive(Debug, Default, Clone)]
pub struct RestartCounts {
    /// Restart plans installed (by view id).
    pub installed: u64,
    /// Of those, plans of a leader other than the preferred one.
    pub by_backup: u64,
    /// Nodes that claimed a restart ballot of their own: more than one is a contest.
    pub claimants: BTreeSet<NodeId>,
    /// Total restarts where the preferred leader reached only the next one.
    pub bridged: u64,
    /// Of those, restart plans installed while it did (the next leader stopped deferring
    /// to it).
    pub past_bridged: u64,
    /// And those where its links stayed cut their whole time (2.5-4 s) with no restart.
    pub bridge_outlasted: u64,
}

/// What a run's state transfers did.
#[derive(Debug, Default, Clone, Copy)]
pub struct StateCounts {
    /// Parts a joiner received with its source's window full: how often flow control
    /// held a source back.
    pub windows_full: u64,
    /// Transfers asked of sources.
    pub transfers: u64,
    /// Transfers that shipped only what followed the joiners' logs.
    pub tails: u64,
}

impl RunReport {
    pub fn failure_line(&self) -> Option<String> {
        self.result.as_ref().err().map(|v| {
            format!("seed {} failed: {v}\nreplay with: SQUALL_SEED={} cargo test -p squall-platform replay_seed", self.seed, self.seed)
        })
    }
}

/// Runs one seed's scenario and checks its history.
pub fn run_seed(seed: u64) -> RunReport {
    let (history, state, restart) = Simulation::new(Scenario::from_seed(seed)).run();
    let result = checkers::check_all(&history);
    RunReport {
        seed,
        history,
        result,
        state,
        restart,
    }
}

#[derive(Debug)]
enum Action {
    Net {
        to: NodeId,
        incarnation: Option<u32>,
        from: MemberId,
        msg: Wire,
    },
    Tick {
        node: NodeId,
        incarnation: u32,
    },
    Persisted {
        node: NodeId,
        incarnation: u32,
        subgroup: u32,
        version: Version,
    },
    TrimLogged {
        node: NodeId,
        incarnation: u32,
        view_id: ViewId,
        subgroup: u32,
        ballot: Ballot,
        received: Vec<u64>,
    },
    AckLogged {
        node: NodeId,
        incarnation: u32,
        view_id: ViewId,
        ballot: Ballot,
        next: Arc<View>,
    },
    PromiseLogged {
        node: NodeId,
        incarnation: u32,
        ballot: Ballot,
    },
    Suspect {
        node: NodeId,
        incarnation: u32,
        target: MemberId,
        /// A broken link noticed late: void if that partition healed before the notice
        /// (a link that came back in time never looked broken).
        partition: Option<u64>,
    },
    AppSend {
        node: NodeId,
        incarnation: u32,
    },
    /// The parts of an incoming state transfer received so far reached the node's
    /// disk: acknowledge them.
    StatePartTaken {
        node: NodeId,
        incarnation: u32,
        view_id: ViewId,
        subgroup: u32,
    },
    /// A read barrier at a random member, then the next one is scheduled.
    ReadBarriers,
    /// A read barrier at one member in one subgroup.
    ReadBarrier {
        node: NodeId,
        incarnation: u32,
        subgroup: u32,
    },
    Resume {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Crash,
    TotalStop,
    /// Crash a node that is back from the total stop but not yet a member.
    CrashRestarting,
    HealCut,
    Partition {
        duration_us: u64,
    },
    Heal,
    SlowNode {
        duration_us: u64,
    },
    SlowDisk {
        duration_us: u64,
    },
    Join,
    Leave,
    DiskFails,
    HealPhase,
    Check,
}

/// A node's simulated disk: what its log made durable. It survives the node's crashes.
#[derive(Debug, Default)]
struct SimDisk {
    /// The newest view installed (logged on install).
    view: Option<Arc<View>>,
    /// The latest view agreed to (logged before the agreement is published).
    acked: Option<(Ballot, Arc<View>)>,
    /// The highest restart ballot promised (logged before the promise is reported).
    promised: Option<Ballot>,
    /// Shards whose state arrived whole, by view.
    fed: Vec<ShardFed>,
    /// Durable records per `(subgroup, shard)`, by version.
    logs: BTreeMap<(u32, u32), BTreeMap<Version, PayloadId>>,
}

impl SimDisk {
    fn logged_state(&self) -> LoggedState {
        LoggedState {
            view: self.view.clone(),
            acked: self.acked.clone(),
            promised: self.promised,
            fed: self.fed.clone(),
            tails: self
                .logs
                .iter()
                .filter_map(|((subgroup, shard), log)| {
                    log.keys().next_back().map(|v| ShardTail {
                        subgroup: *subgroup,
                        shard: *shard,
                        version: *v,
                    })
                })
                .collect(),
        }
    }
}

/// The application state a log replays to.
fn digest_of<'a>(records: impl Iterator<Item = &'a PayloadId>) -> StateDigest {
    let mut digest = StateDigest::default();
    for payload in records {
        digest.apply(*payload);
    }
    digest
}

#[derive(Debug, Default)]
struct SimNode {
    incarnation: u32,
    core: Option<Core>,
    /// Simulated application state per subgroup.
    app: Vec<StateDigest>,
    sends_left: usize,
    disk_free_at_us: u64,
    disk_slow_until_us: u64,
    paused_until_us: u64,
    /// A pause long enough to get the node suspected; it counts as lost until then.
    long_pause_until_us: u64,
    /// Actions that reached the node while it was paused, in arrival order.
    backlog: std::collections::VecDeque<Action>,
    resume_scheduled: bool,
    replaying: bool,
    restart_scheduled: bool,
    disk: SimDisk,
    /// Delivered, not yet durable: `(subgroup, shard, version, payload)`.
    unpersisted: Vec<(u32, u32, Version, PayloadId)>,
    /// Per subgroup, a state this node is the source of and has not supplied all of
    /// (supplied in pieces, as a driver streams a log): the view and what is left.
    state_out: HashMap<u32, (ViewId, Bytes, usize)>,
    /// Per subgroup, the state parts received and not yet taken in (less than a header
    /// or a record); the records before them are in the log already.
    state_in: HashMap<u32, StateIn>,
}

/// A state transfer on its way in: records go to the log as they arrive (as a driver
/// writes them), so a crash in the middle leaves a log that is a prefix of the shard.
#[derive(Debug, Default)]
struct StateIn {
    bytes: Vec<u8>,
    header: Option<StateDigest>,
    /// The last part received and not yet acknowledged (not yet on disk), and the bytes
    /// of all such parts.
    unacked_last: Option<u32>,
    unacked_bytes: usize,
    /// A disk write is under way; it takes in every part received when it completes
    /// (as a log thread's batch does).
    writing: bool,
    view_id: ViewId,
}

struct Simulation {
    sc: Scenario,
    rng: ChaCha8Rng,
    /// Draws only when and where read barriers happen (see `READ_BARRIER_SEED_MIX`).
    barrier_rng: ChaCha8Rng,
    /// Draws only when and where disks fail (see `DISK_FAILURE_SEED_MIX`).
    disk_rng: ChaCha8Rng,
    /// Draws only the faults of a total restart (see `RESTART_FAULT_SEED_MIX`).
    restart_rng: ChaCha8Rng,
    /// Draws only the bridged restart leader (see `BRIDGE_SEED_MIX`).
    bridge_rng: ChaCha8Rng,
    /// Pairs of nodes that cannot reach each other (cut links, not a partition: each
    /// reaches everyone else), and what they sent each other meanwhile (held, as TCP
    /// would).
    cut: BTreeSet<(NodeId, NodeId)>,
    cut_held: Vec<Action>,
    /// The preferred restart leader while it reaches only the next one (its other links
    /// cut): it hears too few to restart the group, and the next leader hears it.
    bridged: Option<NodeId>,
    /// The preferred restart leader at the total stop, and what the restart did.
    first_leader: Option<NodeId>,
    restart_counts: RestartCounts,
    restart_views: BTreeSet<ViewId>,
    /// Reads asked and not answered: their subgroup and shard.
    reads: HashMap<(MemberId, u64), (u32, u32)>,
    now_us: u64,
    queue: BTreeMap<(u64, u64), Action>,
    next_seq: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    next_node_id: NodeId,
    /// When each (from, to, lane) link is free again: messages on a lane stay FIFO.
    link_free_at_us: HashMap<(NodeId, NodeId, u8), u64>,
    /// Nodes cut off from the rest by the active partition.
    minority: BTreeSet<NodeId>,
    /// Counts partitions, so late notices of a healed one can be told apart.
    partition_epoch: u64,
    /// Messages that reached a cut link, in arrival order.
    held: Vec<Action>,
    /// Links of a broken cut: they never carry data again.
    broken_links: BTreeSet<(MemberId, MemberId)>,
    /// Partitions (by epoch) that broke before they healed.
    broken_cuts: BTreeSet<u64>,
    history: History,
    payload_ids: HashMap<(usize, usize), PayloadId>,
    /// Keeps every sent payload alive so buffer addresses are never reused.
    payloads: Vec<Bytes>,
    zero_anchor: Bytes,
    large_payloads: usize,
    healing: bool,
    probes_sent: bool,
    converged_checks: u32,
    finished: bool,
    /// A total stop happened and not every node is back yet.
    restarting_all: bool,
    /// State parts that found the joiner's window full (the source then waits for acks).
    state_windows_full: u64,
    /// State transfers asked of sources, and those that shipped only a log tail.
    state_transfers: u64,
    state_tails: u64,
}

impl Simulation {
    fn new(sc: Scenario) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x5eed_5eed_5eed_5eed);
        let barrier_rng = ChaCha8Rng::seed_from_u64(sc.seed ^ READ_BARRIER_SEED_MIX);
        let disk_rng = ChaCha8Rng::seed_from_u64(sc.seed ^ DISK_FAILURE_SEED_MIX);
        let restart_rng = ChaCha8Rng::seed_from_u64(sc.seed ^ RESTART_FAULT_SEED_MIX);
        let bridge_rng = ChaCha8Rng::seed_from_u64(sc.seed ^ BRIDGE_SEED_MIX);
        Simulation {
            history: History::new(sc.seed),
            sc,
            rng,
            barrier_rng,
            disk_rng,
            restart_rng,
            bridge_rng,
            cut: BTreeSet::new(),
            cut_held: Vec::new(),
            bridged: None,
            first_leader: None,
            restart_counts: RestartCounts::default(),
            restart_views: BTreeSet::new(),
            reads: HashMap::new(),
            now_us: 0,
            queue: BTreeMap::new(),
            next_seq: 0,
            nodes: BTreeMap::new(),
            next_node_id: 0,
            link_free_at_us: HashMap::new(),
            minority: BTreeSet::new(),
            partition_epoch: 0,
            held: Vec::new(),
            broken_links: BTreeSet::new(),
            broken_cuts: BTreeSet::new(),
            payload_ids: HashMap::new(),
            payloads: Vec::new(),
            zero_anchor: Bytes::from(vec![0u8; 1 << 16]),
            state_windows_full: 0,
            state_transfers: 0,
            state_tails: 0,
            large_payloads: 0,
            healing: false,
            probes_sent: false,
            converged_checks: 0,
            finished: false,
            restarting_all: false,
        }
    }

    fn schedule(&mut self, at_us: u64, action: Action) {
        self.next_seq += 1;
        self.queue.insert((at_us, self.next_seq), action);
    }

    fn run(mut self) -> (History, StateCounts, RestartCounts) {
        for _ in 0..self.sc.initial_nodes {
            let id = self.next_node_id;
            self.next_node_id += 1;
            self.start_node(id, id == 0);
        }
        let end = self.sc.safety_phase_us;
        let start = 200_000.min(end / 4);
        type FaultMaker = fn(u64) -> Action;
        let faults: Vec<(usize, FaultMaker)> = vec![
            (self.sc.crashes, |_| Action::Crash),
            (self.sc.partitions, |d| Action::Partition { duration_us: d }),
            (self.sc.slow_nodes, |d| Action::SlowNode { duration_us: d }),
            (self.sc.slow_disks, |d| Action::SlowDisk { duration_us: d }),
            (self.sc.joins, |_| Action::Join),
            (self.sc.leaves, |_| Action::Leave),
        ];
        for (count, make) in faults {
            for _ in 0..count {
                let at = self.rng.random_range(start..end.max(start + 1));
                let duration = self.rng.random_range(30_000..=400_000);
                self.schedule(at, make(duration));
            }
        }
        for _ in 0..self.sc.disk_failures {
            let at = self.disk_rng.random_range(start..end.max(start + 1));
            self.schedule(at, Action::DiskFails);
        }
        if let Some(at) = self.sc.total_restart_at_us {
            self.schedule(at, Action::TotalStop);
        }
        self.schedule(end, Action::HealPhase);
        let first_barrier_at = self.barrier_rng.random_range(0..=READ_BARRIER_GAP_MAX_US);
        self.schedule(first_barrier_at, Action::ReadBarriers);
        while let Some(((at, _), action)) = self.queue.pop_first() {
            self.now_us = at;
            self.apply(action);
            if self.finished {
                break;
            }
        }
        if !self.finished {
            self.finish(false);
        }
        let counts = StateCounts {
            windows_full: self.state_windows_full,
            transfers: self.state_transfers,
            tails: self.state_tails,
        };
        (self.history, counts, self.restart_counts)
    }

    fn start_node(&mut self, id: NodeId, founder: bool) {
        let now_ms = self.now_us / 1000;
        let node = self.nodes.entry(id).or_default();
        node.incarnation += 1;
        node.restart_scheduled = false;
        node.app = vec![StateDigest::default(); self.sc.layout.subgroups.len()];
        node.sends_left = self.sc.messages_per_node;
        node.unpersisted.clear();
        let incarnation = node.incarnation;
        let me = MemberId::new(id, incarnation);
        let logged = node.disk.logged_state();
        let contacts: Vec<NodeId> = self.nodes.keys().copied().filter(|n| *n != id).collect();
        let leaders = self.restart_leaders();
        // A group stopped before its first view formed is founded again.
        let founder = founder || (leaders.is_empty() && id == 0);
        let core = if founder || contacts.is_empty() {
            Core::found(self.sc.core.clone(), me, now_ms)
        } else if logged.view.is_some() && !leaders.is_empty() {
            Core::restart(self.sc.core.clone(), me, contacts, leaders, logged, now_ms)
        } else {
            let mut contacts = contacts;
            let rotate = self.rng.random_range(0..contacts.len());
            contacts.rotate_left(rotate);
            Core::join(self.sc.core.clone(), me, contacts, now_ms)
        };
        let core = core.expect("scenario configs are valid");
        self.nodes.get_mut(&id).expect("inserted above").core = Some(core);
        self.pump(id);
        let tick_at = self.now_us + self.rng.random_range(0..TICK_INTERVAL_US);
        self.schedule(
            tick_at,
            Action::Tick {
                node: id,
                incarnation,
            },
        );
        let send_at = self.now_us + self.rng.random_range(0..=self.sc.send_gap_max_us);
        self.schedule(
            send_at,
            Action::AppSend {
                node: id,
                incarnation,
            },
        );
    }

    fn member_of(&self, id: NodeId) -> Option<MemberId> {
        let node = self.nodes.get(&id)?;
        node.core.as_ref().map(|c| c.me())
    }

    fn alive(&self, id: NodeId, incarnation: u32) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.incarnation == incarnation && n.core.is_some())
    }

    /// Holds an action aimed at a paused node in its backlog, replayed in arrival order
    /// when it resumes (so the pause keeps every link FIFO).
    fn deferred(&mut self, id: NodeId, action: Action) -> Option<Action> {
        let now = self.now_us;
        let node = self.nodes.get_mut(&id)?;
        if node.paused_until_us <= now && (node.backlog.is_empty() || node.replaying) {
            return Some(action);
        }
        node.backlog.push_back(action);
        if !node.resume_scheduled {
            node.resume_scheduled = true;
            let at = node.paused_until_us.max(now);
            self.schedule(at, Action::Resume { node: id });
        }
        None
    }

    fn resume(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.resume_scheduled = false;
        if node.paused_until_us > self.now_us {
            node.resume_scheduled = true;
            let at = node.paused_until_us;
            self.schedule(at, Action::Resume { node: id });
            return;
        }
        let backlog: Vec<Action> = node.backlog.drain(..).collect();
        node.replaying = true;
        for action in backlog {
            self.apply(action);
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.replaying = false;
        }
    }

    fn apply(&mut self, action: Action) {
        // A link-break notice is judged when it fires, even at a paused observer: the
        // link's timeout belongs to the transport, not to the stalled process.
        let action = match action {
            Action::Suspect {
                node,
                incarnation,
                target,
                partition: Some(epoch),
            } => {
                if epoch == self.partition_epoch && !self.minority.is_empty() {
                    self.break_cut(epoch);
                } else if !self.broken_cuts.contains(&epoch) {
                    // The cut healed before anyone gave up on it.
                    return;
                }
                Action::Suspect {
                    node,
                    incarnation,
                    target,
                    partition: None,
                }
            }
            other => other,
        };
        let target = match &action {
            Action::Net { to, .. } => Some(*to),
            Action::Tick { node, .. }
            | Action::Persisted { node, .. }
            | Action::TrimLogged { node, .. }
            | Action::AckLogged { node, .. }
            | Action::PromiseLogged { node, .. }
            | Action::Suspect { node, .. }
            | Action::StatePartTaken { node, .. }
            | Action::AppSend { node, .. } => Some(*node),
            _ => None,
        };
        let action = match target {
            Some(id) => match self.deferred(id, action) {
                Some(action) => action,
                None => return,
            },
            None => action,
        };
        match action {
            Action::Net {
                to,
                incarnation,
                from,
                msg,
            } => {
                let Some(node) = self.nodes.get(&to) else {
                    return;
                };
                if node.core.is_none() || incarnation.is_some_and(|i| i != node.incarnation) {
                    return;
                }
                let receiver = MemberId::new(to, node.incarnation);
                if self.broken_links.contains(&link_key(receiver, from)) {
                    return;
                }
                if self.cut.contains(&(to.min(from.node), to.max(from.node))) {
                    self.cut_held.push(Action::Net {
                        to,
                        incarnation,
                        from,
                        msg,
                    });
                    return;
                }
                if self.minority.contains(&to) != self.minority.contains(&from.node) {
                    // Like TCP, a cut link holds its messages until it heals or breaks.
                    self.held.push(Action::Net {
                        to,
                        incarnation,
                        from,
                        msg,
                    });
                    return;
                }
                if let Wire::Update { view_id, data, .. } = &msg {
                    let member = self.member_of(to).expect("alive checked above");
                    for run in data {
                        let count = run.items.iter().map(crate::wire::Item::slots).sum();
                        self.history.push(Event::Arrived {
                            at_us: self.now_us,
                            member,
                            from,
                            view_id: *view_id,
                            subgroup: run.subgroup,
                            first_index: run.first_index,
                            count,
                        });
                    }
                }
                let now_ms = self.now_us / 1000;
                if let Some(core) = self.core_mut(to) {
                    core.observe_clock(now_ms);
                    core.handle_message(from, msg);
                }
                self.pump(to);
            }
            Action::Tick { node, incarnation } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                let now_ms = self.now_us / 1000;
                if let Some(core) = self.core_mut(node) {
                    core.tick(now_ms);
                }
                self.pump(node);
                self.schedule(
                    self.now_us + TICK_INTERVAL_US,
                    Action::Tick { node, incarnation },
                );
            }
            Action::StatePartTaken {
                node,
                incarnation,
                view_id,
                subgroup,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                let Some(incoming) = self
                    .nodes
                    .get_mut(&node)
                    .and_then(|n| n.state_in.get_mut(&subgroup))
                else {
                    return;
                };
                if incoming.view_id != view_id {
                    // A write for a transfer that broke off with its view.
                    return;
                }
                incoming.writing = false;
                let Some(part) = incoming.unacked_last.take() else {
                    return;
                };
                incoming.unacked_bytes = 0;
                if let Some(core) = self.core_mut(node) {
                    core.state_part_applied(view_id, subgroup, part);
                }
                self.pump(node);
            }
            Action::Persisted {
                node,
                incarnation,
                subgroup,
                version,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                let member = MemberId::new(node, incarnation);
                self.history.push(Event::Persisted {
                    at_us: self.now_us,
                    member,
                    subgroup,
                    version,
                });
                if let Some(n) = self.nodes.get_mut(&node) {
                    let (durable, pending): (Vec<_>, Vec<_>) = n
                        .unpersisted
                        .drain(..)
                        .partition(|(g, _, v, _)| *g == subgroup && *v <= version);
                    n.unpersisted = pending;
                    for (g, shard, v, payload) in durable {
                        n.disk
                            .logs
                            .entry((g, shard))
                            .or_default()
                            .insert(v, payload);
                    }
                }
                let lazily = self.sc.lazy_persistence && subgroup % 2 == 1;
                if let Some(core) = self.core_mut(node) {
                    if lazily {
                        core.persisted_lazily(subgroup, version);
                    } else {
                        core.persisted(subgroup, version);
                    }
                }
                self.pump(node);
            }
            Action::TrimLogged {
                node,
                incarnation,
                view_id,
                subgroup,
                ballot,
                received,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                let member = MemberId::new(node, incarnation);
                self.history.push(Event::TrimLogged {
                    at_us: self.now_us,
                    member,
                    view_id,
                    subgroup,
                    received,
                });
                if let Some(core) = self.core_mut(node) {
                    core.trim_persisted(view_id, subgroup, ballot);
                }
                self.pump(node);
            }
            Action::AckLogged {
                node,
                incarnation,
                view_id,
                ballot,
                next,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.disk.acked = Some((ballot, next));
                }
                if let Some(core) = self.core_mut(node) {
                    core.ack_logged(view_id, ballot);
                }
                self.pump(node);
            }
            Action::PromiseLogged {
                node,
                incarnation,
                ballot,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.disk.promised = n.disk.promised.max(Some(ballot));
                }
                if let Some(core) = self.core_mut(node) {
                    core.promise_logged(ballot);
                }
                self.pump(node);
            }
            Action::Suspect {
                node,
                incarnation,
                target,
                partition,
            } => {
                if !self.alive(node, incarnation) {
                    return;
                }
                debug_assert!(partition.is_none(), "judged before deferral");
                if let Some(core) = self.core_mut(node) {
                    core.suspect(target);
                }
                self.pump(node);
            }
            Action::AppSend { node, incarnation } => self.app_send(node, incarnation),
            Action::ReadBarriers => {
                let members: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.core.as_ref().is_some_and(Core::is_member))
                    .map(|(id, _)| *id)
                    .collect();
                if !members.is_empty() {
                    let node = members[self.barrier_rng.random_range(0..members.len())];
                    self.read_barrier(node, None);
                }
                // The heal deadline ends every run; stop there so the queue can drain.
                if self.now_us <= self.sc.safety_phase_us + HEAL_DEADLINE_US {
                    let gap = self.barrier_rng.random_range(1..=READ_BARRIER_GAP_MAX_US);
                    self.schedule(self.now_us + gap, Action::ReadBarriers);
                }
            }
            Action::ReadBarrier {
                node,
                incarnation,
                subgroup,
            } => {
                if self.alive(node, incarnation) {
                    self.read_barrier(node, Some(subgroup));
                }
            }
            Action::Resume { node } => self.resume(node),
            Action::Restart { node } => {
                if self.nodes.get(&node).is_some_and(|n| n.core.is_none()) {
                    let others_quiet = self.quiet_except(node);
                    if self.healing || others_quiet || self.restarting_all {
                        self.start_node(node, false);
                    } else {
                        self.schedule(self.now_us + 50_000, Action::Restart { node });
                    }
                }
            }
            Action::Crash => {
                let candidates = self.safe_victims();
                if let Some(victim) = self.pick(&candidates) {
                    self.take_down(victim, true);
                }
            }
            Action::TotalStop => {
                if self.healing {
                    return;
                }
                self.restarting_all = true;
                // Every link and pause goes with the processes.
                self.minority.clear();
                self.held.clear();
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for id in &ids {
                    let node = self.nodes.get_mut(id).expect("listed");
                    node.paused_until_us = 0;
                    node.long_pause_until_us = 0;
                    node.backlog.clear();
                    node.unpersisted.clear();
                    node.restart_scheduled = true;
                    if let Some(core) = node.core.take() {
                        self.history.push(Event::Crashed {
                            at_us: self.now_us,
                            member: core.me(),
                        });
                    }
                }
                let leaders = self.restart_leaders();
                self.first_leader = leaders.first().copied();
                // The preferred leader stays away well past the restart grace: a backup
                // leader must restart the group without it.
                let lost_leader = if self.restart_rng.random_bool(0.3) {
                    leaders.first().copied()
                } else {
                    None
                };
                // Slow disks stretch claims and plans, so that rival ones overlap.
                let slow_disks = self.restart_rng.random_bool(0.5);
                // Back mid-restart (it then claims a higher ballot than the backup's) or
                // after the group restarted without it (it joins).
                let lost_for_us = self.restart_rng.random_range(200_000..=3_000_000);
                // The first two leaders of the last view cannot hear each other for a
                // while: with a third member back, both have a majority, and both lead.
                let last_members: Vec<NodeId> = self
                    .nodes
                    .values()
                    .filter_map(|n| n.disk.view.as_ref())
                    .max_by_key(|v| v.id)
                    .map(|v| {
                        leaders
                            .iter()
                            .copied()
                            .filter(|l| v.members.iter().any(|m| m.node == *l))
                            .collect()
                    })
                    .unwrap_or_default();
                if last_members.len() >= 3 && self.restart_rng.random_bool(0.5) {
                    self.cut.insert((last_members[0], last_members[1]));
                    let heal_at =
                        self.now_us + self.restart_rng.random_range(1_000_000..=3_000_000);
                    self.schedule(heal_at, Action::HealCut);
                }
                if slow_disks {
                    let until = self.now_us + 3_000_000;
                    for node in self.nodes.values_mut() {
                        node.disk_slow_until_us = node.disk_slow_until_us.max(until);
                    }
                }
                // Nodes crash while the group restarts (claims, plans, acks cut short).
                if self.restart_rng.random_bool(0.4) {
                    for _ in 0..self.restart_rng.random_range(1..=3) {
                        let at = self.now_us + self.restart_rng.random_range(20_000..=1_200_000);
                        self.schedule(at, Action::CrashRestarting);
                    }
                }
                // The preferred leader reaches only the next one for a while: it hears too
                // few to restart the group, the next leader hears it, and the others hear
                // the next leader. The next leader must stop deferring to it.
                if self.cut.is_empty()
                    && lost_leader.is_none()
                    && last_members.len() >= 4
                    && self.bridge_rng.random_bool(0.4)
                {
                    let (bridged, next) = (leaders[0], leaders[1]);
                    for &other in self.nodes.keys() {
                        if other != bridged && other != next {
                            self.cut.insert((bridged.min(other), bridged.max(other)));
                        }
                    }
                    self.bridged = Some(bridged);
                    self.restart_counts.bridged += 1;
                    let heal_at = self.now_us + self.bridge_rng.random_range(2_500_000..=4_000_000);
                    self.schedule(heal_at, Action::HealCut);
                }
                let mut order = ids;
                for i in (1..order.len()).rev() {
                    let j = self.rng.random_range(0..=i);
                    order.swap(i, j);
                }
                let mut at = self.now_us;
                for id in order {
                    at += self.rng.random_range(1_000..=150_000);
                    // Some come back late: the group restarts without them (if it can) and
                    // they join it as any new node.
                    let late = if self.rng.random_bool(0.25) {
                        self.rng.random_range(300_000..=1_500_000)
                    } else {
                        0
                    };
                    let lost = if lost_leader == Some(id) {
                        lost_for_us
                    } else {
                        0
                    };
                    self.schedule(at + late.max(lost), Action::Restart { node: id });
                }
            }
            Action::CrashRestarting => {
                if self.healing || !self.restarting_all {
                    return;
                }
                // Not the state source of a shard in a plan it agreed to: the plan may be
                // committed without it, and a shard whose holders are all gone waits for
                // them for good (the losses this simulator makes are those a group survives).
                let candidates: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| {
                        n.core.as_ref().is_some_and(|c| {
                            !c.is_member()
                                && c.prepared_restart().is_none_or(|plan| {
                                    plan.view
                                        .shards
                                        .iter()
                                        .flatten()
                                        .all(|s| s.state_source != Some(c.me()))
                                })
                        })
                    })
                    .map(|(id, _)| *id)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let victim = candidates[self.restart_rng.random_range(0..candidates.len())];
                self.take_down(victim, true);
            }
            Action::HealCut => {
                if self.bridged.is_some() {
                    self.restart_counts.bridge_outlasted += 1;
                }
                self.heal_cut();
            }
            Action::Partition { duration_us } => {
                if !self.minority.is_empty() {
                    return;
                }
                let live: Vec<NodeId> = self.live_members().into_iter().map(|m| m.node).collect();
                let size = self
                    .rng
                    .random_range(1..=(live.len().saturating_sub(1) / 2).max(1));
                let mut side = Vec::new();
                for _ in 0..size {
                    let candidates: Vec<NodeId> = self.safe_victims();
                    let candidates: Vec<NodeId> = candidates
                        .into_iter()
                        .filter(|c| !side.contains(c))
                        .collect();
                    match self.pick(&candidates) {
                        Some(c) if self.safe_to_lose(&[side.as_slice(), &[c]].concat()) => {
                            side.push(c)
                        }
                        _ => break,
                    }
                }
                if side.is_empty() {
                    return;
                }
                self.minority = side.iter().copied().collect();
                self.partition_epoch += 1;
                self.history.push(Event::Partitioned {
                    at_us: self.now_us,
                    minority: side.clone(),
                });
                // Broken connections are noticed on both sides after a detection delay.
                let everyone: Vec<NodeId> = self.nodes.keys().copied().collect();
                for a in &side {
                    for b in everyone.iter().filter(|b| !side.contains(b)) {
                        self.notify_break(*a, *b);
                        self.notify_break(*b, *a);
                    }
                }
                self.schedule(self.now_us + duration_us.max(60_000), Action::Heal);
            }
            Action::Heal => {
                if !self.minority.is_empty() {
                    self.minority.clear();
                    self.release_held();
                    self.history.push(Event::Healed { at_us: self.now_us });
                }
            }
            Action::SlowNode { duration_us } => {
                let live: Vec<NodeId> = self.live_members().into_iter().map(|m| m.node).collect();
                let Some(victim) = self.pick(&live) else {
                    return;
                };
                // Short pauses stay under the suspicion timeout; long ones only where
                // losing the node is safe (it will likely be suspected).
                let timeout_us = self.sc.core.suspicion_timeout_ms * 1000;
                let long_ok = self.safe_to_lose(&[victim]);
                let pause = if long_ok {
                    duration_us
                } else {
                    duration_us.min(timeout_us / 3)
                };
                self.history.push(Event::Paused {
                    at_us: self.now_us,
                    node: victim,
                    until_us: self.now_us + pause,
                });
                if let Some(node) = self.nodes.get_mut(&victim) {
                    node.paused_until_us = self.now_us + pause;
                    if pause > timeout_us / 3 {
                        node.long_pause_until_us = self.now_us + pause + timeout_us;
                    }
                }
            }
            Action::SlowDisk { duration_us } => {
                let live: Vec<NodeId> = self.live_members().into_iter().map(|m| m.node).collect();
                if let Some(victim) = self.pick(&live)
                    && let Some(node) = self.nodes.get_mut(&victim)
                {
                    node.disk_slow_until_us = self.now_us + duration_us;
                }
            }
            Action::Join => {
                if !self.quiet() {
                    self.schedule(self.now_us + 50_000, Action::Join);
                    return;
                }
                if !self.quiet() {
                    self.schedule(self.now_us + 50_000, Action::Join);
                    return;
                }
                let id = self.next_node_id;
                self.next_node_id += 1;
                self.start_node(id, false);
            }
            Action::DiskFails => {
                let candidates = self.safe_victims();
                if candidates.is_empty() {
                    return;
                }
                let victim = candidates[self.disk_rng.random_range(0..candidates.len())];
                if let Some(node) = self.nodes.get_mut(&victim) {
                    // The write that failed, and every one queued behind it, never lands.
                    node.unpersisted.clear();
                }
                if let Some(core) = self.core_mut(victim) {
                    core.storage_failed();
                }
                self.pump(victim);
            }
            Action::Leave => {
                // Only leaves the layout can absorb; others would wait for joins.
                let live = self.live_members();
                let candidates: Vec<NodeId> = self
                    .safe_victims()
                    .into_iter()
                    .filter(|n| {
                        let rest: Vec<MemberId> =
                            live.iter().copied().filter(|m| m.node != *n).collect();
                        self.sc.layout.allocate(None, &rest, &[]).is_ok()
                    })
                    .collect();
                if let Some(victim) = self.pick(&candidates) {
                    if let Some(core) = self.core_mut(victim) {
                        core.leave();
                    }
                    self.pump(victim);
                }
            }
            Action::HealPhase => {
                self.healing = true;
                self.history.push(Event::HealStarted { at_us: self.now_us });
                self.minority.clear();
                self.release_held();
                // A bridged leader's links stay cut their whole time (the fault is that
                // they outlast the restart); they heal by themselves within 4 s.
                if self.bridged.is_none() {
                    self.heal_cut();
                }
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for id in ids {
                    let node = self.nodes.get_mut(&id).expect("listed");
                    node.paused_until_us = node.paused_until_us.min(self.now_us);
                    node.long_pause_until_us = node.long_pause_until_us.min(self.now_us);
                    node.disk_slow_until_us = 0;
                    let resume_now = !node.backlog.is_empty();
                    if node.core.is_none() && !node.restart_scheduled {
                        node.restart_scheduled = true;
                        self.schedule(self.now_us + 1_000, Action::Restart { node: id });
                    }
                    if resume_now {
                        // Its resume was due at the old end of the pause: bring it forward.
                        self.schedule(self.now_us, Action::Resume { node: id });
                    }
                }
                self.schedule(self.now_us + 50_000, Action::Check);
            }
            Action::Check => self.check_progress(),
        }
        if self.restarting_all && self.nodes.values().all(|n| n.core.is_some()) {
            self.restarting_all = false;
        }
    }

    /// Someone declared a link across the cut broken. The cut is one fault: every link
    /// across it breaks, what they held is lost, and every late notice of it stands
    /// even if the cut heals first. (Links breaking one by one would let a minority
    /// node's suspicions of majority nodes leak back after the heal.)
    fn break_cut(&mut self, epoch: u64) {
        if !self.broken_cuts.insert(epoch) {
            return;
        }
        let members: Vec<MemberId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(id, n)| MemberId::new(*id, n.incarnation))
            .collect();
        for a in members.iter().filter(|m| self.minority.contains(&m.node)) {
            for b in members.iter().filter(|m| !self.minority.contains(&m.node)) {
                self.broken_links.insert(link_key(*a, *b));
            }
        }
        self.held.clear();
    }

    /// The cut healed: links that did not break deliver what they held, in order.
    /// Every node is told the same restart leaders: the nodes with a logged view, by id.
    fn restart_leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.disk.view.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn heal_cut(&mut self) {
        self.cut.clear();
        self.bridged = None;
        for action in std::mem::take(&mut self.cut_held) {
            self.schedule(self.now_us, action);
        }
    }

    fn release_held(&mut self) {
        for action in std::mem::take(&mut self.held) {
            self.schedule(self.now_us, action);
        }
    }

    fn core_mut(&mut self, id: NodeId) -> Option<&mut Core> {
        self.nodes.get_mut(&id).and_then(|n| n.core.as_mut())
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.rng.random_range(0..items.len())])
    }

    fn notify_break(&mut self, observer: NodeId, lost: NodeId) {
        let (Some(obs), Some(target)) = (self.nodes.get(&observer), self.member_of(lost)) else {
            return;
        };
        if obs.core.is_none() {
            return;
        }
        let incarnation = obs.incarnation;
        let delay = self.rng.random_range(2_000..=40_000);
        self.schedule(
            self.now_us + delay,
            Action::Suspect {
                node: observer,
                incarnation,
                target,
                partition: Some(self.partition_epoch),
            },
        );
    }

    /// Members that are running, reachable and not already doomed.
    fn live_members(&self) -> Vec<MemberId> {
        let doomed = self.doomed();
        self.nodes
            .values()
            .filter(|n| n.long_pause_until_us <= self.now_us)
            .filter_map(|n| n.core.as_ref())
            .filter(|c| {
                c.is_member() && !self.minority.contains(&c.me().node) && !doomed.contains(&c.me())
            })
            .map(Core::me)
            .collect()
    }

    /// Nothing is degraded: every node runs as a healthy member. Joins and restarts wait
    /// for this during the safety phase, so one fault never cascades past a majority.
    fn quiet(&self) -> bool {
        self.live_members().len() == self.nodes.len()
            && self
                .nodes
                .values()
                .filter_map(|n| n.core.as_ref())
                .all(|c| !c.awaiting_state() && c.committed_next_view().is_none())
    }

    /// Members someone suspects, or that are leaving: they will not be in the next view.
    fn doomed(&self) -> BTreeSet<MemberId> {
        let mut doomed = BTreeSet::new();
        for core in self.nodes.values().filter_map(|n| n.core.as_ref()) {
            doomed.extend(core.suspected_members());
            if core.is_leaving() {
                doomed.insert(core.me());
            }
        }
        doomed
    }

    /// Views that are installed or committed somewhere: each must keep a live majority
    /// and a live member per shard for the group to make progress.
    fn views_in_play(&self) -> Vec<Arc<View>> {
        let mut views: BTreeMap<ViewId, Arc<View>> = BTreeMap::new();
        for core in self.nodes.values().filter_map(|n| n.core.as_ref()) {
            for v in core.view().into_iter().chain(core.committed_next_view()) {
                views.entry(v.id).or_insert_with(|| Arc::clone(v));
            }
        }
        views.into_values().collect()
    }

    fn safe_to_lose(&self, lost_nodes: &[NodeId]) -> bool {
        let live: BTreeSet<MemberId> = self
            .live_members()
            .into_iter()
            .filter(|m| !lost_nodes.contains(&m.node))
            .collect();
        let pending_joiners = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .any(|c| !c.is_member() || c.awaiting_state());
        if pending_joiners {
            // Keep it simple while someone is being admitted: no new loss.
            return false;
        }
        self.views_in_play().iter().all(|v| {
            let up = v.members.iter().filter(|m| live.contains(m)).count();
            up * 2 > v.members.len()
                && v.shards.iter().flatten().all(|s| {
                    // Coverage counts holders of the state: a member still being fed it
                    // (listed as joined) cannot carry the shard alone.
                    s.members.is_empty()
                        || s.members
                            .iter()
                            .any(|m| live.contains(m) && !s.joined.contains(m))
                })
        })
    }

    /// `quiet`, ignoring the one node that is down and about to restart.
    fn quiet_except(&self, restarting: NodeId) -> bool {
        let others = self.nodes.iter().filter(|(id, _)| **id != restarting);
        let live: BTreeSet<MemberId> = self.live_members().into_iter().collect();
        others
            .clone()
            .all(|(_, n)| n.core.as_ref().is_some_and(|c| live.contains(&c.me())))
            && others
                .filter_map(|(_, n)| n.core.as_ref())
                .all(|c| !c.awaiting_state() && c.committed_next_view().is_none())
    }

    fn safe_victims(&self) -> Vec<NodeId> {
        if self.healing {
            return Vec::new();
        }
        self.live_members()
            .into_iter()
            .map(|m| m.node)
            .filter(|n| self.safe_to_lose(&[*n]))
            .collect()
    }

    fn take_down(&mut self, id: NodeId, crashed: bool) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(core) = node.core.take() else { return };
        node.state_out.clear();
        node.state_in.clear();
        let member = core.me();
        if crashed {
            self.history.push(Event::Crashed {
                at_us: self.now_us,
                member,
            });
        }
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|n| *n != id).collect();
        for other in others {
            if let Some(obs) = self.nodes.get(&other)
                && let Some(incarnation) = obs.core.as_ref().map(|_| obs.incarnation)
            {
                let delay = self.rng.random_range(1_000..=30_000);
                self.schedule(
                    self.now_us + delay,
                    Action::Suspect {
                        node: other,
                        incarnation,
                        target: member,
                        partition: None,
                    },
                );
            }
        }
        let node = self.nodes.get_mut(&id).expect("present");
        if !node.restart_scheduled {
            node.restart_scheduled = true;
            let delay = self.rng.random_range(20_000..=300_000);
            self.schedule(self.now_us + delay, Action::Restart { node: id });
        }
    }

    fn make_payload(&mut self) -> Bytes {
        let roll = self.rng.random_range(0..100u32);
        let len = if roll < 15 {
            0
        } else if roll < 75 {
            self.rng.random_range(1..=64)
        } else if roll < 97 || self.large_payloads >= LARGE_PAYLOADS_MAX {
            self.rng.random_range(65..=8192)
        } else {
            self.large_payloads += 1;
            self.rng.random_range(256 * 1024..=1024 * 1024)
        };
        if len == 0 {
            let offset = self.payloads.len() % self.zero_anchor.len();
            return self.zero_anchor.slice(offset..offset);
        }
        let fill = self.rng.random_range(0..=255u8);
        Bytes::from(vec![fill; len])
    }

    fn app_send(&mut self, id: NodeId, incarnation: u32) {
        if !self.alive(id, incarnation) {
            return;
        }
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let sends_left = node.sends_left;
        if sends_left == 0 || self.healing {
            return;
        }
        let subgroups: Vec<u32> = match node.core.as_ref().and_then(|c| c.view().cloned()) {
            Some(view) => (0..view.shards.len())
                .filter(|g| view.shard_of(*g, MemberId::new(id, incarnation)).is_some())
                .map(|g| g as u32)
                .collect(),
            None => Vec::new(),
        };
        if let Some(subgroup) = self.pick(&subgroups) {
            let payload = self.make_payload();
            self.send_payload(id, subgroup, payload, false);
        }
        let gap = self.rng.random_range(100..=self.sc.send_gap_max_us);
        self.schedule(
            self.now_us + gap,
            Action::AppSend {
                node: id,
                incarnation,
            },
        );
    }

    fn send_payload(&mut self, id: NodeId, subgroup: u32, payload: Bytes, probe: bool) {
        let key = (payload.as_ptr() as usize, payload.len());
        let Some(core) = self.core_mut(id) else {
            return;
        };
        let member = core.me();
        let Ok(ticket) = core.send(subgroup, payload.clone()) else {
            return;
        };
        let payload_id = self.payloads.len() as PayloadId;
        self.payload_ids.insert(key, payload_id);
        let len = payload.len();
        self.payloads.push(payload);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.sends_left = node.sends_left.saturating_sub(1);
        }
        self.history.push(Event::Sent {
            at_us: self.now_us,
            member,
            subgroup,
            ticket,
            payload: payload_id,
            len,
            probe,
        });
        self.pump(id);
    }

    /// Executes everything the node's core asked for.
    fn pump(&mut self, id: NodeId) {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(core) = node.core.as_mut() else {
                return;
            };
            let me = core.me();
            let outputs: Vec<Output> = core.drain_outputs().collect();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                self.execute(id, me, output);
            }
        }
    }

    /// The lane(s) a message travels on: one lane unless `split_lanes`.
    fn lanes(&self, msg: Wire) -> Vec<(u8, Wire)> {
        const DATA: u8 = 0;
        const CONTROL: u8 = 1;
        if !self.sc.split_lanes {
            return vec![(DATA, msg)];
        }
        match msg {
            Wire::Update { view_id, data, row } if !data.is_empty() => {
                let mut parts = vec![(
                    DATA,
                    Wire::Update {
                        view_id,
                        data,
                        row: None,
                    },
                )];
                if row.is_some() {
                    let data = Vec::new();
                    parts.push((CONTROL, Wire::Update { view_id, data, row }));
                }
                parts
            }
            state @ Wire::State { .. } => vec![(DATA, state)],
            other => vec![(CONTROL, other)],
        }
    }

    fn execute(&mut self, id: NodeId, me: MemberId, output: Output) {
        let now = self.now_us;
        match output {
            Output::Send {
                to,
                incarnation,
                msg,
            } => {
                if self.sc.codec_check {
                    let mut frame = bytes::BytesMut::new();
                    crate::codec::encode(&msg, &mut frame);
                    let back = crate::codec::decode(frame.freeze(), &Default::default());
                    assert_eq!(
                        back.as_ref(),
                        Ok(&msg),
                        "seed {}: codec round trip",
                        self.sc.seed
                    );
                }
                for (lane, msg) in self.lanes(msg) {
                    let delay = self.sc.link_delay_base_us
                        + self.rng.random_range(0..=self.sc.link_jitter_us);
                    let free = self
                        .link_free_at_us
                        .get(&(id, to, lane))
                        .copied()
                        .unwrap_or(0);
                    let at = (now + delay).max(free);
                    self.link_free_at_us.insert((id, to, lane), at);
                    self.schedule(
                        at,
                        Action::Net {
                            to,
                            incarnation,
                            from: me,
                            msg,
                        },
                    );
                }
            }
            Output::Deliver(d) => {
                let key = (d.payload.as_ptr() as usize, d.payload.len());
                let payload = self
                    .payload_ids
                    .get(&key)
                    .copied()
                    .unwrap_or(UNKNOWN_PAYLOAD);
                if let Some(version) = d.version
                    && let Some(node) = self.nodes.get_mut(&id)
                {
                    node.app[d.subgroup as usize].apply(payload);
                    node.unpersisted
                        .push((d.subgroup, d.shard, version, payload));
                }
                if d.version.is_some() {
                    self.read_barrier_after_delivery(id, me, d.subgroup);
                }
                self.history.push(Event::Delivered {
                    at_us: now,
                    member: me,
                    view_id: d.view_id,
                    subgroup: d.subgroup,
                    shard: d.shard,
                    sender: d.sender,
                    sender_index: d.sender_index,
                    version: d.version,
                    kind: d.kind,
                    payload,
                    ticket: d.ticket,
                });
            }
            Output::Persist { subgroup, version } => {
                let at = self.disk_done_at(id);
                let incarnation = me.incarnation;
                self.schedule(
                    at,
                    Action::Persisted {
                        node: id,
                        incarnation,
                        subgroup,
                        version,
                    },
                );
            }
            Output::PersistTrim {
                view_id,
                subgroup,
                trim,
                ..
            } => {
                let at = self.disk_done_at(id);
                let incarnation = me.incarnation;
                self.schedule(
                    at,
                    Action::TrimLogged {
                        node: id,
                        incarnation,
                        view_id,
                        subgroup,
                        ballot: trim.ballot,
                        received: trim.received.clone(),
                    },
                );
            }
            Output::LogPromise { ballot } => {
                if ballot.leader == me {
                    self.restart_counts.claimants.insert(id);
                }
                let at = self.disk_done_at(id);
                let incarnation = me.incarnation;
                self.schedule(
                    at,
                    Action::PromiseLogged {
                        node: id,
                        incarnation,
                        ballot,
                    },
                );
            }
            Output::LogAck {
                view_id,
                ballot,
                next,
            } => {
                let at = self.disk_done_at(id);
                let incarnation = me.incarnation;
                self.schedule(
                    at,
                    Action::AckLogged {
                        node: id,
                        incarnation,
                        view_id,
                        ballot,
                        next,
                    },
                );
            }
            Output::Trimmed {
                view_id,
                subgroup,
                shard,
                received,
            } => {
                self.history.push(Event::Trimmed {
                    at_us: now,
                    member: me,
                    view_id,
                    subgroup,
                    shard,
                    received,
                });
            }
            Output::GlobalPersisted { subgroup, version } => {
                self.history.push(Event::GlobalPersisted {
                    at_us: now,
                    member: me,
                    subgroup,
                    version,
                });
            }
            Output::Restart(plan) => {
                // The cut is a fault of the restart only: the restarted group is whole.
                let past_bridged = self.bridged.take().is_some();
                self.heal_cut();
                if self.restart_views.insert(plan.view.id) {
                    self.restart_counts.installed += 1;
                    if past_bridged {
                        self.restart_counts.past_bridged += 1;
                    }
                    if self.first_leader != Some(plan.ballot.leader.node) {
                        self.restart_counts.by_backup += 1;
                    }
                }
                // Truncate each shard log to the agreed trim; the application restarts
                // from what remains.
                let node = self.nodes.get_mut(&id).expect("a node produced it");
                for (g, shards) in plan.shards.iter().enumerate() {
                    let Some(s) = plan.view.shard_of(g, me) else {
                        continue;
                    };
                    let key = (g as u32, s as u32);
                    let log = node.disk.logs.entry(key).or_default();
                    match shards[s].trim {
                        Some(trim) => {
                            log.split_off(&Version(trim.0 + 1));
                        }
                        None => log.clear(),
                    }
                    node.app[g] = digest_of(log.values());
                }
            }
            Output::ReadReady {
                ticket,
                view_id,
                result,
                ..
            } => {
                let Some((subgroup, shard)) = self.reads.remove(&(me, ticket)) else {
                    panic!(
                        "seed {}: {me} answered read {ticket}, which it was never asked",
                        self.sc.seed
                    );
                };
                // A read that cannot be served (the member stopped) is no read.
                if let Ok(barrier) = result {
                    self.history.push(Event::ReadBarrier {
                        at_us: now,
                        member: me,
                        ticket,
                        view_id,
                        subgroup,
                        shard,
                        barrier,
                    });
                }
            }
            Output::InstallView(view) => {
                let node = self.nodes.get_mut(&id).expect("a node produced it");
                node.disk.view = Some(Arc::clone(&view));
                for (g, state) in node.app.iter_mut().enumerate() {
                    if view.shard_of(g, me).is_none() {
                        *state = StateDigest::default();
                    }
                }
                let states: Vec<(u32, StateDigest)> = (0..view.shards.len())
                    .filter(|g| view.shard_of(*g, me).is_some())
                    .map(|g| (g as u32, node.app[g]))
                    .collect();
                self.history.push(Event::Installed {
                    at_us: now,
                    member: me,
                    view: Arc::clone(&view),
                });
                for (subgroup, digest) in states {
                    self.history.push(Event::StateAtInstall {
                        at_us: now,
                        member: me,
                        view_id: view.id,
                        subgroup,
                        digest,
                    });
                }
            }
            Output::StateTransferRequest {
                view_id,
                subgroup,
                shard,
                joiners_hold,
                ..
            } => {
                // The state: the application's digest, the version the records follow
                // (u64::MAX: from the start), then the log records the joiners lack (as
                // a driver with a log ships them). A joiners' hold this log lacks (their
                // log has versions the shard's history does not) ships everything.
                let node = &self.nodes[&id];
                let digest = node.app[subgroup as usize];
                let mut state = Vec::with_capacity(24);
                state.extend_from_slice(&digest.applied.to_le_bytes());
                state.extend_from_slice(&digest.chain.to_le_bytes());
                let log = node.disk.logs.get(&(subgroup, shard));
                let base = joiners_hold.filter(|v| log.is_some_and(|l| l.contains_key(v)));
                self.state_transfers += 1;
                self.state_tails += u64::from(base.is_some());
                state.extend_from_slice(&base.map_or(u64::MAX, |v| v.0).to_le_bytes());
                if let Some(log) = log {
                    let from = base.map_or(Version(0), |v| Version(v.0 + 1));
                    for (v, payload) in log.range(from..) {
                        state.extend_from_slice(&v.0.to_le_bytes());
                        state.extend_from_slice(&payload.to_le_bytes());
                    }
                }
                // In pieces on odd seeds, each when the core asks for it: as a driver
                // reads its log a part's worth at a time, 1-3 parts per piece (or the
                // state in 1-3 pieces when it fits a part), so a transfer takes as many
                // messages as the state takes parts.
                let state = Bytes::from(state);
                let part_max = self.sc.core.state_part_bytes_max;
                let k = 1 + (self.sc.seed / 2 % 3) as usize;
                let piece = if self.sc.seed.is_multiple_of(2) {
                    state.len()
                } else if part_max < state.len() {
                    part_max * k
                } else {
                    state.len().div_ceil(k)
                }
                .max(1);
                let first = state.slice(..piece.min(state.len()));
                let rest = state.slice(first.len()..);
                let last = rest.is_empty();
                let node = self.nodes.get_mut(&id).expect("a node produced it");
                node.state_out.insert(subgroup, (view_id, rest, piece));
                if let Some(core) = node.core.as_mut() {
                    core.supply_state_piece(view_id, subgroup, first, last);
                }
            }
            Output::StateSupplyMore {
                view_id, subgroup, ..
            } => {
                let node = self.nodes.get_mut(&id).expect("a node produced it");
                let Some((for_view, rest, piece)) = node.state_out.get_mut(&subgroup) else {
                    panic!(
                        "seed {}: {me} asked for more of a state it never began",
                        self.sc.seed
                    );
                };
                assert_eq!(
                    *for_view, view_id,
                    "seed {}: {me} asked for more of another view's state",
                    self.sc.seed
                );
                let next = rest.split_to((*piece).min(rest.len()));
                let last = rest.is_empty();
                if let Some(core) = node.core.as_mut() {
                    core.supply_state_piece(view_id, subgroup, next, last);
                }
            }
            Output::ReceiveState {
                view_id,
                subgroup,
                shard,
                part,
                last,
                state,
            } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return;
                };
                let incoming = node.state_in.entry(subgroup).or_default();
                if part == 0 {
                    // A new transfer (an earlier one broke off with its view).
                    *incoming = StateIn {
                        view_id,
                        ..StateIn::default()
                    };
                }
                incoming.bytes.extend_from_slice(&state);
                let log = node.disk.logs.entry((subgroup, shard)).or_default();
                if incoming.header.is_none() && incoming.bytes.len() >= 24 {
                    incoming.header = Some(decode_digest(&incoming.bytes));
                    // The records follow the source's base: keep the log up to it.
                    match decode_base(&incoming.bytes) {
                        Some(v) => {
                            log.split_off(&Version(v.0 + 1));
                        }
                        None => log.clear(),
                    }
                    incoming.bytes.drain(..24);
                }
                if incoming.header.is_some() {
                    let whole = incoming.bytes.len() / 16 * 16;
                    for record in incoming.bytes[..whole].chunks_exact(16) {
                        let word = |at: usize| {
                            u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"))
                        };
                        log.insert(Version(word(0)), word(8));
                    }
                    incoming.bytes.drain(..whole);
                    // What the log holds now, should this transfer break off.
                    let through = log.keys().next_back().copied();
                    if let Some(core) = node.core.as_mut() {
                        core.state_logged(subgroup, shard, through);
                    }
                }
                if !last {
                    // The source keeps at most its window in flight (one part may
                    // exceed it alone).
                    incoming.unacked_last = Some(part);
                    incoming.unacked_bytes += state.len();
                    let window = self.sc.core.state_window_bytes;
                    let part_max = self.sc.core.state_part_bytes_max;
                    assert!(
                        incoming.unacked_bytes <= window.max(part_max),
                        "seed {}: {me} holds {} bytes of state unacknowledged, over the \
                         window of {window}",
                        self.sc.seed,
                        incoming.unacked_bytes
                    );
                    if incoming.unacked_bytes + part_max > window {
                        self.state_windows_full += 1;
                    }
                    // Acknowledged once on disk, as a driver does.
                    if !incoming.writing {
                        incoming.writing = true;
                        let at = self.disk_done_at(id);
                        self.schedule(
                            at,
                            Action::StatePartTaken {
                                node: id,
                                incarnation: me.incarnation,
                                view_id,
                                subgroup,
                            },
                        );
                    }
                    return;
                }
                let Some(node) = self.nodes.get_mut(&id) else {
                    return;
                };
                let incoming = node.state_in.remove(&subgroup).unwrap_or_default();
                let (Some(digest), true) = (incoming.header, incoming.bytes.is_empty()) else {
                    panic!(
                        "seed {}: {me} received a state that does not parse ({} bytes left over)",
                        self.sc.seed,
                        incoming.bytes.len()
                    );
                };
                node.app[subgroup as usize] = digest;
                node.disk.fed.push(ShardFed {
                    view_id,
                    subgroup,
                    shard,
                });
                self.history.push(Event::StateReceived {
                    at_us: now,
                    member: me,
                    view_id,
                    subgroup,
                    digest,
                });
            }
            Output::SendsAborted { subgroup, tickets } => {
                self.history.push(Event::Aborted {
                    at_us: now,
                    member: me,
                    subgroup,
                    tickets,
                });
            }
            Output::Stopped(reason) => {
                self.history.push(Event::Stopped {
                    at_us: now,
                    member: me,
                    reason,
                });
                self.take_down(id, false);
            }
        }
    }

    /// Asks `id`'s core for the read barrier of `subgroup` (`None`: a random subgroup it
    /// is in) and records the answer. Members only: before that, and while restarting,
    /// the core has no barrier to give. The core is asked even while the node is paused:
    /// the contract is the core's, and a lagging core is its hardest case.
    fn read_barrier(&mut self, id: NodeId, subgroup: Option<u32>) {
        let Some(core) = self.nodes.get(&id).and_then(|n| n.core.as_ref()) else {
            return;
        };
        if !core.is_member() {
            return;
        }
        let Some(view) = core.view() else {
            return;
        };
        let me = core.me();
        let mine: Vec<(u32, u32)> = (0..view.shards.len())
            .filter_map(|g| view.shard_of(g, me).map(|s| (g as u32, s as u32)))
            .collect();
        let chosen = match subgroup {
            Some(g) => mine.iter().copied().find(|(mine, _)| *mine == g),
            None if mine.is_empty() => None,
            None => Some(mine[self.barrier_rng.random_range(0..mine.len())]),
        };
        let Some((subgroup, shard)) = chosen else {
            return;
        };
        let view_id = view.id;
        let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) else {
            return;
        };
        let ticket = match core.request_read(subgroup, self.now_us / 1000) {
            Ok(ticket) => ticket,
            Err(e) => panic!(
                "seed {}: {me} is in subgroup {subgroup} shard {shard} of its view {view_id}, \
                 but request_read failed: {e:?}",
                self.sc.seed
            ),
        };
        self.reads.insert((me, ticket), (subgroup, shard));
        self.history.push(Event::ReadRequested {
            at_us: self.now_us,
            member: me,
            ticket,
            view_id,
            subgroup,
            shard,
        });
        self.pump(id);
    }

    /// Sometimes, right after `me` delivered an ordered message of `subgroup`, schedules
    /// a read barrier at another member of its shard: the one that may not have
    /// delivered it yet.
    fn read_barrier_after_delivery(&mut self, id: NodeId, me: MemberId, subgroup: u32) {
        if self.barrier_rng.random_range(0..100) >= READ_BARRIER_AFTER_DELIVERY_PERCENT {
            return;
        }
        let Some(view) = self.nodes.get(&id).and_then(|n| n.core.as_ref()?.view()) else {
            return;
        };
        let Some(shard) = view.shard_of(subgroup as usize, me) else {
            return;
        };
        let others: Vec<MemberId> = view.shards[subgroup as usize][shard]
            .members
            .iter()
            .copied()
            .filter(|m| *m != me)
            .collect();
        if others.is_empty() {
            return;
        }
        let other = others[self.barrier_rng.random_range(0..others.len())];
        let delay_us = if self.barrier_rng.random_bool(0.5) {
            0
        } else {
            self.barrier_rng
                .random_range(0..=self.sc.link_delay_base_us + self.sc.link_jitter_us)
        };
        self.schedule(
            self.now_us + delay_us,
            Action::ReadBarrier {
                node: other.node,
                incarnation: other.incarnation,
                subgroup,
            },
        );
    }

    fn disk_done_at(&mut self, id: NodeId) -> u64 {
        let now = self.now_us;
        let slow = self
            .nodes
            .get(&id)
            .is_some_and(|n| n.disk_slow_until_us > now);
        let latency = if slow {
            self.rng.random_range(20_000..=80_000)
        } else {
            self.rng.random_range(100..=2_000)
        };
        let node = self.nodes.get_mut(&id).expect("caller has a node");
        let at = node.disk_free_at_us.max(now) + latency;
        node.disk_free_at_us = at;
        at
    }

    /// Heal phase: waits for one view over every live node, then sends probes and waits
    /// for them to be delivered everywhere.
    fn check_progress(&mut self) {
        let converged = self.converged();
        if converged && self.probes_sent {
            // Twice in a row, so nothing (a raw-mode probe) is still in flight.
            if self.converged_checks >= 1 {
                self.finish(true);
                return;
            }
            self.converged_checks += 1;
        } else {
            self.converged_checks = 0;
        }
        if converged && !self.probes_sent {
            self.probes_sent = true;
            let members: Vec<(NodeId, Vec<u32>)> = self
                .nodes
                .iter()
                .filter_map(|(id, n)| {
                    let core = n.core.as_ref()?;
                    let view = core.view()?;
                    let subgroups = (0..view.shards.len())
                        .filter(|g| view.shard_of(*g, core.me()).is_some())
                        .map(|g| g as u32)
                        .collect();
                    Some((*id, subgroups))
                })
                .collect();
            for (id, subgroups) in members {
                for subgroup in subgroups {
                    let payload = Bytes::from(vec![0xab; 8]);
                    self.send_payload(id, subgroup, payload, true);
                }
            }
        }
        if self.now_us > self.sc.safety_phase_us + HEAL_DEADLINE_US {
            self.finish(false);
            return;
        }
        self.schedule(self.now_us + 50_000, Action::Check);
    }

    fn converged(&self) -> bool {
        let cores: Vec<&Core> = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .collect();
        if cores.len() != self.nodes.len() || cores.iter().any(|c| !c.is_quiescent()) {
            return false;
        }
        let views: BTreeSet<ViewId> = cores
            .iter()
            .filter_map(|c| c.view().map(|v| v.id))
            .collect();
        if views.len() != 1 {
            return false;
        }
        let view = cores[0].view().expect("quiescent members have views");
        view.members.len() == cores.len() && cores.iter().all(|c| view.contains(c.me()))
    }

    fn finish(&mut self, converged: bool) {
        if !converged && std::env::var_os("SQUALL_SIM_DEBUG").is_some() {
            for core in self.nodes.values().filter_map(|n| n.core.as_ref()) {
                eprintln!("{}", core.status_line());
            }
        }
        let live: Vec<MemberId> = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref().map(Core::me))
            .collect();
        self.history.push(Event::Finished {
            at_us: self.now_us,
            live,
            converged,
        });
        self.finished = true;
    }
}

/// The version a state's log records follow (see the state's layout above).
fn decode_base(state: &[u8]) -> Option<Version> {
    state
        .get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .filter(|v| *v != u64::MAX)
        .map(Version)
}

fn decode_digest(state: &[u8]) -> StateDigest {
    let word = |range: std::ops::Range<usize>| {
        state
            .get(range)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(u64::MAX, u64::from_le_bytes)
    };
    StateDigest {
        applied: word(0..8),
        chain: word(8..16),
    }
}

/// Both directions of a link between two incarnations, as one key.
fn link_key(a: MemberId, b: MemberId) -> (MemberId, MemberId) {
    if a <= b { (a, b) } else { (b, a) }
}
