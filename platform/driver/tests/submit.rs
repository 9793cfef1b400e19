//! Sends submitted together (`NodeHandle::submit`) leave together: two in-process nodes
//! over real TCP, node 0's outgoing traffic counted on its way to the transport.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use squall_driver::{
    AppEvent, NodeEvent, NodeSendError, TcpConfig, TcpTransport, Transport, start_node,
};
use squall_platform::wire::Item;
use squall_platform::{MemberId, NodeId, SendError, Wire};
use tokio::sync::mpsc;

/// The TCP transport, counting the multicast data it is handed for other nodes.
struct Counting {
    tcp: Arc<TcpTransport>,
    /// `Wire::Update`s that carried at least one message.
    updates_with_messages: AtomicUsize,
    /// Messages those updates carried.
    messages: AtomicUsize,
}

impl Transport for Counting {
    fn send(&self, to: NodeId, incarnation: Option<u32>, msg: Wire) {
        if let Wire::Update { data, .. } = &msg {
            let messages = data
                .iter()
                .flat_map(|run| &run.items)
                .filter(|item| matches!(item, Item::Message(_)))
                .count();
            if messages > 0 {
                self.updates_with_messages.fetch_add(1, Ordering::Relaxed);
                self.messages.fetch_add(messages, Ordering::Relaxed);
            }
        }
        self.tcp.send(to, incarnation, msg);
    }

    fn forget(&self, peer: MemberId) {
        self.tcp.forget(peer);
    }
}

type Nodes = Vec<(squall_driver::NodeHandle, mpsc::Receiver<NodeEvent>)>;

/// Two nodes in one view over real TCP, with messages of at most
/// `payload_size_max_bytes`, and the counting transport of each.
async fn two_nodes(payload_size_max_bytes: usize) -> (Nodes, Vec<Arc<Counting>>) {
    let (listeners, peers) = common::listen(2).await;
    let mut nodes = Vec::new();
    let mut counters = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let cfg = common::two_member_config(n, Some(payload_size_max_bytes));
        let (inbound_tx, inbound) = mpsc::channel(4096);
        let counting = Arc::new(Counting {
            tcp: TcpTransport::start(
                TcpConfig::new(7, cfg.me, peers.clone()),
                listener,
                inbound_tx,
            ),
            updates_with_messages: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
        });
        let transport: Arc<dyn Transport> = counting.clone();
        nodes.push(start_node(cfg, transport, inbound, None).expect("node starts"));
        counters.push(counting);
    }
    common::until_both_installed(&mut nodes.iter_mut().map(|(_, e)| e).collect::<Vec<_>>()).await;
    (nodes, counters)
}

#[tokio::test]
async fn sends_submitted_together_leave_in_one_message_per_peer_and_answer_in_order() {
    let (mut nodes, counters) = two_nodes(1 << 20).await;

    const SENDS: usize = 32;
    let before = counters[0].updates_with_messages.load(Ordering::Relaxed);
    let (handle, _) = &nodes[0];
    let mut receipts = Vec::new();
    for i in 0..SENDS {
        let payload = Bytes::from(format!("message {i}"));
        receipts.push(handle.submit(0, payload).await.expect("submitted"));
    }
    let mut tickets = Vec::new();
    for receipt in receipts {
        tickets.push(receipt.ticket().await.expect("the core took it"));
    }
    assert!(
        tickets.windows(2).all(|w| w[0] < w[1]),
        "receipts answer in submission order: {tickets:?}"
    );

    // Node 1 delivers all of them, in the order submitted.
    let (_, events) = &mut nodes[1];
    let mut delivered = Vec::new();
    while delivered.len() < SENDS {
        if let AppEvent::Delivered(d) = common::next_event(events).await {
            delivered.push(d.payload);
        }
    }
    let expected: Vec<Bytes> = (0..SENDS)
        .map(|i| Bytes::from(format!("message {i}")))
        .collect();
    assert_eq!(delivered, expected);

    let updates = counters[0].updates_with_messages.load(Ordering::Relaxed) - before;
    let messages = counters[0].messages.load(Ordering::Relaxed);
    assert!(messages >= SENDS, "{messages} messages counted");
    // One driver step takes every command queued: the 32 leave in one update (a second
    // one at most, should the runtime have let the driver run between two submits).
    assert!(
        updates <= 2,
        "{SENDS} sends submitted together left in {updates} updates"
    );
}

/// A batch (`submit_batch`) is taken as a prefix: once the core refuses one send, every
/// later one is refused too, even one it would take alone.
#[tokio::test]
async fn a_batch_is_taken_up_to_its_first_refusal() {
    let (mut nodes, counters) = two_nodes(64).await;
    let (handle, _) = &nodes[0];
    let small = |i: usize| Bytes::from(format!("small {i}"));
    let batch = vec![small(0), small(1), Bytes::from(vec![b'x'; 65]), small(3)];
    let receipts = handle.submit_batch(0, batch).await.expect("submitted");
    let mut answers = Vec::new();
    for receipt in receipts {
        answers.push(receipt.ticket().await);
    }
    assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
    assert!(
        matches!(
            answers[2],
            Err(NodeSendError::Core(SendError::PayloadTooLarge { .. }))
        ),
        "{answers:?}"
    );
    assert!(
        matches!(answers[3], Err(NodeSendError::EarlierRefused)),
        "{answers:?}"
    );
    // The same send alone is taken.
    handle
        .submit(0, small(3))
        .await
        .expect("submitted")
        .ticket()
        .await
        .expect("taken alone");
    let (_, events) = &mut nodes[1];
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        if let AppEvent::Delivered(d) = common::next_event(events).await {
            delivered.push(d.payload);
        }
    }
    assert_eq!(delivered, vec![small(0), small(1), small(3)]);

    // A batch taken whole leaves in one update.
    let before = counters[0].updates_with_messages.load(Ordering::Relaxed);
    let (handle, _) = &nodes[0];
    let receipts = handle
        .submit_batch(0, (10..42).map(small).collect())
        .await
        .expect("submitted");
    for receipt in receipts {
        receipt.ticket().await.expect("taken");
    }
    let (_, events) = &mut nodes[1];
    let mut delivered = 0;
    while delivered < 32 {
        if let AppEvent::Delivered(_) = common::next_event(events).await {
            delivered += 1;
        }
    }
    let updates = counters[0].updates_with_messages.load(Ordering::Relaxed) - before;
    assert_eq!(updates, 1, "a batch of 32 left in {updates} updates");
}
