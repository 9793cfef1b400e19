//! Ordered multicast throughput of the protocol core alone: three members in one ordered
//! shard, every member sending 1 KiB messages as fast as the core accepts them, driven by
//! an in-memory loop (FIFO queues as links, persistence acknowledged at once, a simulated
//! clock). The figure is deliveries per second at one member, i.e. per shard.
//!
//! ```text
//! cargo bench -p squall-platform --bench multicast
//! ```

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use squall_platform::{
    Core, CoreConfig, DeliveryMode, Layout, MemberId, Output, SendError, ShardLayout,
    SubgroupLayout, Wire,
};

const MEMBERS: usize = 3;
const PAYLOAD_BYTES: usize = 1024;
/// Deliveries at member 0 per criterion iteration.
const DELIVERIES_PER_ITER: u64 = 10_000;
/// Deliveries of the plain timed run printed before criterion's.
const TIMED_DELIVERIES: u64 = 200_000;
/// Driver rounds per simulated millisecond (the cores' clock advances by one per tick).
const ROUNDS_PER_TICK: u64 = 64;
/// Rounds without any delivery after which the driver gives up (a stuck core).
const STALL_ROUNDS_MAX: u64 = 100_000;

fn config() -> CoreConfig {
    let layout = Layout {
        subgroups: vec![SubgroupLayout {
            shards: vec![ShardLayout {
                min_nodes: MEMBERS,
                max_nodes: MEMBERS,
                mode: DeliveryMode::Ordered,
            }],
        }],
    };
    let mut cfg = CoreConfig::new(layout);
    cfg.window_size = 1024;
    cfg.batch_messages_max = 256;
    cfg.pending_sends_max = 4096;
    cfg
}

/// Three cores wired together by FIFO links (`links[from][to]`).
struct Cluster {
    cores: Vec<Core>,
    ids: Vec<MemberId>,
    links: Vec<Vec<VecDeque<Wire>>>,
    /// Reused buffer for one core's outputs.
    outputs: Vec<Output>,
    payload: Bytes,
    rounds: u64,
    now_ms: u64,
    /// Ordered deliveries at member 0 so far.
    delivered: u64,
}

impl Cluster {
    /// Founds the group at member 0; members 1 and 2 join through it. Returns once all
    /// three have installed view 0.
    fn form() -> Self {
        let ids: Vec<MemberId> = (0..MEMBERS as u32).map(|n| MemberId::new(n, 1)).collect();
        let mut cores = vec![Core::found(config(), ids[0], 0).expect("valid config")];
        for id in &ids[1..] {
            cores.push(Core::join(config(), *id, vec![0], 0).expect("valid config"));
        }
        let mut cluster = Cluster {
            cores,
            ids,
            links: (0..MEMBERS)
                .map(|_| (0..MEMBERS).map(|_| VecDeque::new()).collect())
                .collect(),
            outputs: Vec::new(),
            payload: Bytes::from(vec![0x5a; PAYLOAD_BYTES]),
            rounds: 0,
            now_ms: 0,
            delivered: 0,
        };
        while !cluster.cores.iter().all(|c| c.is_member()) {
            assert!(cluster.rounds < 1_000, "the group did not form");
            cluster.round(false);
        }
        cluster
    }

    /// One driver round: (optionally) fill every member's send queue, execute every
    /// core's outputs, then carry every queued message over its link.
    fn round(&mut self, send: bool) {
        self.rounds += 1;
        if self.rounds.is_multiple_of(ROUNDS_PER_TICK) {
            self.now_ms += 1;
            for core in &mut self.cores {
                core.tick(self.now_ms);
            }
        }
        if send {
            for core in &mut self.cores {
                // The pending queue (pending_sends_max) bounds what is in flight.
                loop {
                    match core.send(0, self.payload.clone()) {
                        Ok(_) => {}
                        Err(SendError::Backlogged { .. }) => break,
                        Err(e) => panic!("{} cannot send: {e}", core.me()),
                    }
                }
            }
        }
        for i in 0..MEMBERS {
            self.outputs.extend(self.cores[i].drain_outputs());
            for output in self.outputs.drain(..) {
                match output {
                    Output::Send { to, msg, .. } => self.links[i][to as usize].push_back(msg),
                    Output::Deliver(delivery) if i == 0 => {
                        black_box(&delivery.payload);
                        self.delivered += 1;
                    }
                    Output::Persist { subgroup, version } => {
                        self.cores[i].persisted(subgroup, version);
                    }
                    Output::Stopped(reason) => panic!("{} stopped: {reason:?}", self.ids[i]),
                    _ => {}
                }
            }
        }
        for from in 0..MEMBERS {
            for to in 0..MEMBERS {
                while let Some(msg) = self.links[from][to].pop_front() {
                    self.cores[to].handle_message(self.ids[from], msg);
                }
            }
        }
    }

    /// Runs until member 0 has delivered `count` more messages than before.
    fn deliver(&mut self, count: u64) {
        let goal = self.delivered + count;
        let mut last = (self.delivered, self.rounds);
        while self.delivered < goal {
            self.round(true);
            if self.delivered > last.0 {
                last = (self.delivered, self.rounds);
            }
            assert!(
                self.rounds - last.1 < STALL_ROUNDS_MAX,
                "no delivery for {STALL_ROUNDS_MAX} rounds"
            );
        }
    }
}

fn multicast(c: &mut Criterion) {
    let mut cluster = Cluster::form();
    // Warm up to the steady state, then time a fixed number of deliveries.
    cluster.deliver(TIMED_DELIVERIES / 10);
    let start = Instant::now();
    cluster.deliver(TIMED_DELIVERIES);
    let rate = TIMED_DELIVERIES as f64 / start.elapsed().as_secs_f64();
    assert!(
        cluster
            .cores
            .iter()
            .all(|core| core.view().is_some_and(|v| v.id == 0) && !core.is_wedged()),
        "a view change disturbed the measurement"
    );
    println!("deliveries per second per shard: {rate:.0}");

    let mut group = c.benchmark_group("multicast");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(DELIVERIES_PER_ITER));
    group.bench_function("ordered_3_members_1KiB", |b| {
        // The overshoot of one iteration counts towards the next, so the mean is exact.
        let mut goal = cluster.delivered;
        b.iter(|| {
            goal += DELIVERIES_PER_ITER;
            let missing = goal.saturating_sub(cluster.delivered);
            cluster.deliver(missing);
        });
    });
    group.finish();
}

criterion_group!(benches, multicast);
criterion_main!(benches);
