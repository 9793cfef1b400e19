//! An application that hears of a delivery may read it from the log at once
//! (`NodeHandle::read_log_chunk` reads after the log work queued before it), even though
//! the driver hands a step's appends to the log thread together: two in-process nodes
//! over real TCP with real logs, on a runtime whose application tasks run on other
//! threads than the driver.

mod common;

use bytes::Bytes;
use squall_driver::{AppEvent, TcpConfig, TcpTransport, start_node};
use squall_log::{FileLog, LogConfig, LogStore};
use tokio::sync::mpsc;

const SENDS: usize = 10_000;
/// Sends submitted before their tickets are awaited: deliveries then come many to a step.
const BURST: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_is_in_the_log_when_the_application_hears_of_it() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let (listeners, peers) = common::listen(2).await;
    let mut nodes = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let cfg = common::two_member_config(n, None);
        let (inbound_tx, inbound) = mpsc::channel(4096);
        let transport = TcpTransport::start(
            TcpConfig::new(7, cfg.me, peers.clone()),
            listener,
            inbound_tx,
        );
        let (log, _) = FileLog::open(LogConfig::new(dirs[n].path())).expect("open log");
        let log: Box<dyn LogStore + Send> = Box::new(log);
        nodes.push(start_node(cfg, transport, inbound, Some(log)).expect("node starts"));
    }
    common::until_both_installed(&mut nodes.iter_mut().map(|(_, e)| e).collect::<Vec<_>>()).await;

    // Each node's application reads every delivery back from the log the moment it
    // hears of it, on whatever thread the runtime runs it.
    let sender = nodes[0].0.clone();
    let mut readers = Vec::new();
    for (handle, mut events) in nodes {
        readers.push(tokio::spawn(async move {
            let (mut delivered, mut missing) = (0, Vec::new());
            while delivered < SENDS {
                let AppEvent::Delivered(d) = common::next_event(&mut events).await else {
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
