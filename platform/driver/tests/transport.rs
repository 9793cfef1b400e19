//! The TCP transport between in-process nodes: order, chunking, incarnations, peers
//! named by host name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use squall_driver::{Inbound, PeerAddr, TcpConfig, TcpTransport, Transport};
use squall_platform::{MemberId, Wire};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn pair(
    chunk_bytes: usize,
) -> (
    Arc<TcpTransport>,
    mpsc::Receiver<Inbound>,
    Arc<TcpTransport>,
    mpsc::Receiver<Inbound>,
) {
    let l0 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peers: BTreeMap<u32, _> = [
        (0, l0.local_addr().expect("addr")),
        (1, l1.local_addr().expect("addr")),
    ]
    .into();
    let config = |me| {
        let mut cfg = TcpConfig::new(42, me, peers.clone());
        cfg.chunk_bytes = chunk_bytes;
        cfg
    };
    let (tx0, rx0) = mpsc::channel(1024);
    let (tx1, rx1) = mpsc::channel(1024);
    let t0 = TcpTransport::start(config(MemberId::new(0, 1)), l0, tx0);
    let t1 = TcpTransport::start(config(MemberId::new(1, 1)), l1, tx1);
    (t0, rx0, t1, rx1)
}

async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message in time")
        .expect("transport alive")
}

#[tokio::test]
async fn a_16_mib_message_arrives_whole_in_order_between_small_ones() {
    let (t0, _rx0, _t1, mut rx1) = pair(256 << 10).await;
    let big = Bytes::from((0..16 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let state = |n: u32, state: Bytes| Wire::State {
        view_id: n,
        subgroup: 0,
        shard: 0,
        part: 0,
        last: true,
        state,
    };
    // Sent before the link is up: queued, then delivered in order.
    t0.send(1, Some(1), state(1, Bytes::from_static(b"before")));
    t0.send(1, Some(1), state(2, big.clone()));
    t0.send(1, Some(1), state(3, Bytes::from_static(b"after")));
    for expected in [
        state(1, Bytes::from_static(b"before")),
        state(2, big),
        state(3, Bytes::from_static(b"after")),
    ] {
        match next(&mut rx1).await {
            Inbound::Message { from, msg } => {
                assert_eq!(from, MemberId::new(0, 1));
                assert!(msg == expected, "out of order or damaged");
            }
            Inbound::Broken { peer, reason } => panic!("{peer} broke: {reason}"),
        }
    }
}

#[tokio::test]
async fn messages_for_another_incarnation_are_not_delivered() {
    let (t0, _rx0, _t1, mut rx1) = pair(1 << 20).await;
    // n1 runs as incarnation 1: a message for incarnation 0 (older) is dropped, one
    // for any incarnation arrives.
    t0.send(1, Some(0), Wire::Evicted { view_id: 7 });
    t0.send(1, None, Wire::Evicted { view_id: 8 });
    match next(&mut rx1).await {
        Inbound::Message { msg, .. } => assert_eq!(msg, Wire::Evicted { view_id: 8 }),
        Inbound::Broken { peer, reason } => panic!("{peer} broke: {reason}"),
    }
}

#[tokio::test]
async fn a_forgotten_peer_sees_its_link_break_and_is_refused_afterwards() {
    let (t0, _rx0, t1, mut rx1) = pair(1 << 20).await;
    t0.send(1, Some(1), Wire::Evicted { view_id: 1 });
    assert!(matches!(next(&mut rx1).await, Inbound::Message { .. }));
    // n0 gives up on n1.1: n1 sees the link to n0.1 break and never hears it again.
    t0.forget(MemberId::new(1, 1));
    match next(&mut rx1).await {
        Inbound::Broken { peer, .. } => assert_eq!(peer, MemberId::new(0, 1)),
        other => panic!("expected a broken link, got {other:?}"),
    }
    t0.send(1, Some(1), Wire::Evicted { view_id: 2 });
    t1.send(0, Some(1), Wire::Evicted { view_id: 3 });
    let quiet = tokio::time::timeout(Duration::from_millis(500), rx1.recv()).await;
    assert!(quiet.is_err(), "a forgotten link carried data: {quiet:?}");
}

#[tokio::test]
async fn control_traffic_overtakes_a_large_message_but_data_keeps_its_order() {
    let (t0, _rx0, _t1, mut rx1) = pair(64 << 10).await;
    let state = |n: u32, len: usize| Wire::State {
        view_id: n,
        subgroup: 0,
        shard: 0,
        part: 0,
        last: true,
        state: Bytes::from(vec![n as u8; len]),
    };
    // Queued before the link is up, so the writer sees all three at once.
    t0.send(1, Some(1), state(1, 4 << 20));
    t0.send(1, Some(1), Wire::Evicted { view_id: 9 });
    t0.send(1, Some(1), state(2, 10));
    let mut order = Vec::new();
    for _ in 0..3 {
        match next(&mut rx1).await {
            Inbound::Message { msg, .. } => order.push(match msg {
                Wire::State { view_id, state, .. } => {
                    assert!(state.iter().all(|b| *b == view_id as u8), "damaged state");
                    format!("state {view_id}")
                }
                other => format!("{other:?}"),
            }),
            Inbound::Broken { peer, reason } => panic!("{peer} broke: {reason}"),
        }
    }
    assert_eq!(order, ["Evicted { view_id: 9 }", "state 1", "state 2"]);
}

/// Peers named by host name: `localhost` is resolved at each dial, and a peer whose name
/// does not resolve (a `.invalid` name never does) only fails its own dial attempts,
/// retried with backoff: the node's other links work, and that peer's link is never
/// reported broken (nothing queued for it is lost).
#[tokio::test]
async fn a_peer_whose_name_does_not_resolve_is_retried_without_failing_the_others() {
    let l0 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let by_name =
        |l: &TcpListener| PeerAddr::new("localhost", l.local_addr().expect("addr").port());
    let peers: BTreeMap<u32, PeerAddr> = [
        (0, by_name(&l0)),
        (1, by_name(&l1)),
        (2, PeerAddr::new("squall-2.not-scheduled-yet.invalid", 7100)),
    ]
    .into();
    let config = |me| {
        let mut cfg = TcpConfig::new(42, me, peers.clone());
        cfg.connect_retry_ms = 10;
        cfg
    };
    let (tx0, mut rx0) = mpsc::channel(1024);
    let (tx1, mut rx1) = mpsc::channel(1024);
    let t0 = TcpTransport::start(config(MemberId::new(0, 1)), l0, tx0);
    let _t1 = TcpTransport::start(config(MemberId::new(1, 1)), l1, tx1);
    t0.send(2, Some(1), Wire::Evicted { view_id: 1 });
    t0.send(1, Some(1), Wire::Evicted { view_id: 2 });
    match next(&mut rx1).await {
        Inbound::Message { from, msg } => {
            assert_eq!(from, MemberId::new(0, 1));
            assert_eq!(msg, Wire::Evicted { view_id: 2 });
        }
        Inbound::Broken { peer, reason } => panic!("{peer} broke: {reason}"),
    }
    // Many failed attempts to resolve node 2 later, nothing is reported about it.
    let quiet = tokio::time::timeout(Duration::from_millis(1_500), rx0.recv()).await;
    assert!(quiet.is_err(), "node 0 reported: {quiet:?}");
    t0.send(1, Some(1), Wire::Evicted { view_id: 3 });
    match next(&mut rx1).await {
        Inbound::Message { msg, .. } => assert_eq!(msg, Wire::Evicted { view_id: 3 }),
        Inbound::Broken { peer, reason } => panic!("{peer} broke: {reason}"),
    }
}
