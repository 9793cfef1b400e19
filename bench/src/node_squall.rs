//! One member of the Squall group: `squall-driver` over its TCP transport, no durable
//! log (this measures the multicast layer), one subgroup with one shard holding every
//! node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use squall_driver::{
    AppEvent, NodeConfig, NodeEvent, NodeHandle, NodeSendError, TcpConfig, TcpTransport, start_node,
};
use squall_platform::{
    CoreConfig, DeliveryMode, Layout, MemberId, NodeId, SendError, ShardLayout, SubgroupLayout,
};
use tokio::sync::mpsc;

use crate::child::{self, Control};
use crate::stats::{CpuMeter, Recorder, Window, now_us, stamped_payload};
use crate::{Mode, NodeArgs};

const CLUSTER_ID: u64 = 0x0051_5542_454e_4348; // "QUBENCH"
/// Row heartbeats and transport beats. A busy CPU must not look like a failure, so the
/// suspicion timeout is generous.
const HEARTBEAT_MS: u64 = 20;
const SUSPICION_MS: u64 = 2_000;

pub fn main(args: &NodeArgs) -> Result<()> {
    child::runtime(args.threads)?.block_on(run(args))
}

fn core_config(args: &NodeArgs) -> CoreConfig {
    let nodes = args.addrs.len();
    let layout = Layout {
        subgroups: vec![SubgroupLayout {
            shards: vec![ShardLayout {
                min_nodes: nodes,
                max_nodes: nodes,
                mode: match args.mode {
                    Mode::Ordered => DeliveryMode::Ordered,
                    Mode::Raw => DeliveryMode::Raw,
                },
            }],
        }],
    };
    let mut core = CoreConfig::new(layout);
    core.window_size = args.window;
    core.pending_sends_max = args.window as usize;
    core.batch_messages_max = args.window.min(1024) as usize;
    core.payload_size_max_bytes = args.size.max(16 << 20);
    core.heartbeat_interval_ms = HEARTBEAT_MS;
    core.suspicion_timeout_ms = SUSPICION_MS;
    core.join_retry_ms = 200;
    core
}

async fn run(args: &NodeArgs) -> Result<()> {
    let nodes = args.addrs.len();
    let index = u32::try_from(args.index).context("node index")?;
    let me = MemberId::new(index, 1);
    let peers: BTreeMap<NodeId, SocketAddr> = args
        .addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Ok((u32::try_from(i)?, *a)))
        .collect::<Result<_>>()?;
    let listener = child::listen(args).await?;
    let mut tcp = TcpConfig::new(CLUSTER_ID, me, peers);
    tcp.heartbeat_interval_ms = HEARTBEAT_MS;
    tcp.suspicion_timeout_ms = SUSPICION_MS;
    // The writer merges queued updates of one view into one message: allow a whole
    // window of every sender in one.
    tcp.message_bytes_max = tcp
        .message_bytes_max
        .max(2 * nodes * args.window as usize * (args.size + 64) + (1 << 20));
    let (inbound_tx, inbound) = mpsc::channel(65_536);
    let transport = TcpTransport::start(tcp, listener, inbound_tx);
    let cfg = NodeConfig {
        core: core_config(args),
        me,
        found: args.index == 0,
        contacts: vec![0],
        restart_leaders: vec![0],
        tick_interval_ms: HEARTBEAT_MS / 2,
        events_max: 65_536,
        commands_max: 4_096,
        report_arrivals: false,
        unlogged_subgroups: Vec::new(),
        state_keeper: None,
    };
    let (handle, mut events) = start_node(cfg, transport, inbound, None)?;
    let mut control = child::control()?;

    let mut ready = false;
    let mut window: Option<Window> = None;
    let mut reported = false;
    let mut rec = Recorder::new();
    let mut cpu = CpuMeter::new();
    let sent = Arc::new(AtomicU64::new(0));
    let window_end = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(window_end);
    loop {
        tokio::select! {
            event = events.recv() => {
                // Once the report is out, peers exiting are no failure: just exit.
                let Some(NodeEvent { at_us, event }) = event else {
                    if reported {
                        return Ok(());
                    }
                    bail!("node {me}: the driver ended");
                };
                match event {
                    AppEvent::Installed(view)
                        if !ready && view.members.len() == nodes && view.contains(me) =>
                    {
                        ready = true;
                        child::say_ready();
                    }
                    AppEvent::Delivered(d) => {
                        if let Some(w) = window {
                            rec.delivered(w, at_us, &d.payload, d.sender.node != me.node);
                        }
                    }
                    AppEvent::StateRequested { view_id, subgroup, .. } => {
                        handle.supply_state(view_id, subgroup, Bytes::new()).await;
                    }
                    AppEvent::Stopped(_) if reported => return Ok(()),
                    AppEvent::Stopped(reason) => bail!("node {me} stopped: {reason:?}"),
                    _ => {}
                }
            }
            command = control.recv() => match command {
                Some(Control::Go { start_us }) if window.is_none() => {
                    let w = child::window(args, start_us);
                    window = Some(w);
                    cpu = CpuMeter::new();
                    window_end.as_mut().reset(child::instant_at(w.end_us));
                    if args.is_sender() {
                        for _ in 0..args.pipeline.max(1) {
                            let (handle, sent) = (handle.clone(), Arc::clone(&sent));
                            let size = args.size;
                            tokio::spawn(async move {
                                if let Err(e) = send_loop(handle, size, start_us, w, sent).await {
                                    eprintln!("node {me}: sending: {e:#}");
                                    std::process::exit(2);
                                }
                            });
                        }
                    }
                }
                Some(Control::Go { .. }) => {}
                Some(Control::End) | None => return Ok(()),
            },
            () = &mut window_end, if window.is_some() && !reported => {
                reported = true;
                rec.sent = sent.load(Ordering::Relaxed);
                rec.cpu_cores = cpu.cores();
                child::say_stats(&rec.report(args.index))?;
            }
        }
    }
}

/// Sends stamped messages from `start_us` to the window's end, as fast as the core
/// accepts them; a full queue (`Backlogged`) means: back off briefly and retry.
async fn send_loop(
    handle: NodeHandle,
    size: usize,
    start_us: u64,
    window: Window,
    sent: Arc<AtomicU64>,
) -> Result<()> {
    tokio::time::sleep_until(child::instant_at(start_us)).await;
    loop {
        let mut payload = stamped_payload(size);
        loop {
            if now_us() >= window.end_us {
                return Ok(());
            }
            let stamp = crate::stats::stamp_of(&payload).unwrap_or(0);
            match handle.send(0, payload.clone()).await {
                Ok(_) => {
                    if window.contains(stamp) {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Err(NodeSendError::Core(
                    SendError::Backlogged { .. } | SendError::NotMember { .. },
                )) => {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    // Latency counts from the accepted send: stamp it again.
                    payload = restamp(payload, size);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The same payload with a fresh send stamp (in place when nothing else holds it).
fn restamp(payload: Bytes, size: usize) -> Bytes {
    match payload.try_into_mut() {
        Ok(mut buf) => {
            let stamp = now_us().to_le_bytes();
            buf[..stamp.len()].copy_from_slice(&stamp);
            buf.freeze()
        }
        Err(_) => stamped_payload(size),
    }
}
