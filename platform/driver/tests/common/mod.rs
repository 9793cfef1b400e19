//! Two in-process nodes over real TCP on loopback, as several tests build them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use squall_driver::{AppEvent, NodeConfig, NodeEvent};
use squall_platform::layout::{DeliveryMode, Layout, ShardLayout, SubgroupLayout};
use squall_platform::{CoreConfig, MemberId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub async fn next_event(events: &mut mpsc::Receiver<NodeEvent>) -> AppEvent {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("an event in time")
        .expect("the node runs")
        .event
}

/// A listener per node on a free loopback port, and the address map every node gets.
pub async fn listen(nodes: usize) -> (Vec<TcpListener>, BTreeMap<u32, SocketAddr>) {
    let mut listeners = Vec::new();
    for _ in 0..nodes {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let peers = listeners
        .iter()
        .enumerate()
        .map(|(n, l)| (n as u32, l.local_addr().expect("addr")))
        .collect();
    (listeners, peers)
}

/// Node `n` of a group with one ordered shard of exactly two members; node 0 founds it.
pub fn two_member_config(n: usize, payload_size_max_bytes: Option<usize>) -> NodeConfig {
    let layout = Layout {
        subgroups: vec![SubgroupLayout {
            shards: vec![ShardLayout {
                min_nodes: 2,
                max_nodes: 2,
                mode: DeliveryMode::Ordered,
            }],
        }],
    };
    let mut core = CoreConfig::new(layout);
    core.join_retry_ms = 50;
    if let Some(max) = payload_size_max_bytes {
        core.payload_size_max_bytes = max;
    }
    NodeConfig {
        core,
        me: MemberId::new(n as u32, 1),
        found: n == 0,
        contacts: vec![0],
        restart_leaders: vec![0],
        tick_interval_ms: 5,
        events_max: 4096,
        commands_max: 4096,
        report_arrivals: false,
        unlogged_subgroups: Vec::new(),
        state_keeper: None,
    }
}

/// Waits until every node installed a view of two members (the shard has formed).
pub async fn until_both_installed(events: &mut [&mut mpsc::Receiver<NodeEvent>]) {
    for events in events {
        loop {
            if let AppEvent::Installed(view) = next_event(events).await
                && view.members.len() == 2
            {
                break;
            }
        }
    }
}
