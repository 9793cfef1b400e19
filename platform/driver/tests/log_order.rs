//! An application that hears of a delivery may read it from the log at once
//! (`NodeHandle::read_log_chunk` reads after the log work queued before it), even though
//! the driver hands a step's appends to the log thread together: two in-process nodes
//! over real TCP with real logs, on a runtime whose application tasks run on other
//! threads than the driver.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use squall_driver::{AppEvent, NodeConfig, NodeEvent, TcpConfig, TcpTransport, start_node};
use squall_log::{FileLog, LogConfig, LogStore};
use squall_platform::layout::{DeliveryMode, Layout, ShardLayout, SubgroupLayout};
use squall_platform::{CoreConfig, MemberId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SENDS: usize = 10_000;
/// Sends submitted before their tickets are awaited: deliveries then come many to a step.
const BURST: usize = 100;

async fn next_event(events: &mut mpsc::Receiver<NodeEvent>) -> AppEvent {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("an event in time")
        .expect("the node runs")
        .event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_is_in_the_log_when_the_application_hears_of_it() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    ];
    let peers: BTreeMap<u32, _> = listeners
        .iter()
        .enumerate()
        .map(|(n, l)| (n as u32, l.local_addr().expect("addr")))
        .collect();
    let layout = Layout {
        subgroups: vec![SubgroupLayout {
            shards: vec![ShardLayout {
                min_nodes: 2,
                max_nodes: 2,
                mode: DeliveryMode::Ordered,
            }],
        }],
    };
    let mut nodes = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let me = MemberId::new(n as u32, 1);
        let (inbound_tx, inbound) = mpsc::channel(4096);
        let transport =
            TcpTransport::start(TcpConfig::new(7, me, peers.clone()), listener, inbound_tx);
        let mut core = CoreConfig::new(layout.clone());
        core.join_retry_ms = 50;
        let cfg = NodeConfig {
            core,
            me,
            found: n == 0,
            contacts: vec![0],
            restart_leaders: vec![0],
            tick_interval_ms: 5,
            events_max: 4096,
            commands_max: 4096,
            report_arrivals: false,
            unlogged_subgroups: Vec::new(),
            state_keeper: None,
        };
        let (log, _) = FileLog::open(LogConfig::new(dirs[n].path())).expect("open log");
        let log: Box<dyn LogStore + Send> = Box::new(log);
        nodes.push(start_node(cfg, transport, inbound, Some(log)).expect("node starts"));
    }
    for (_, events) in &mut nodes {
        loop {
            if let AppEvent::Installed(view) = next_event(events).await
                && view.members.len() == 2
            {
                break;
            }
        }
    }

    // Each node's application reads every delivery back from the log the moment it
    // hears of it, on whatever thread the runtime runs it.
    let sender = nodes[0].0.clone();
    let mut readers = Vec::new();
    for (handle, mut events) in nodes {
        readers.push(tokio::spawn(async move {
            let (mut delivered, mut missing) = (0, Vec::new());
            while delivered < SENDS {
                let AppEvent::Delivered(d) = next_event(&mut events).await else {
                    continue;
                };
                let version = d.version.expect("ordered deliveries have versions");
                let records = handle
                    .read_log_chunk(d.subgroup, d.shard, version.0, version.0, 1 << 20)
                    .await
                    .expect("the log reads");
                match records.as_slice() {
                    [r] if r.version == version.0 && r.payload == d.payload => {}
                    _ => missing.push(version.0),
                }
                delivered += 1;
            }
            missing
        }));
    }

    for burst in 0..SENDS / BURST {
        let mut receipts = Vec::new();
        for i in 0..BURST {
            let payload = Bytes::from(format!("message {}", burst * BURST + i));
            receipts.push(sender.submit(0, payload).await.expect("submitted"));
        }
        for receipt in receipts {
            receipt.ticket().await.expect("the core took it");
        }
    }
    for (n, reader) in readers.into_iter().enumerate() {
        let missing = reader.await.expect("the reader ran");
        assert!(
            missing.is_empty(),
            "node {n}: {} of {SENDS} deliveries were not in the log when the application \
             heard of them (first versions: {:?})",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}
