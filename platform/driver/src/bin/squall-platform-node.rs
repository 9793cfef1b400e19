//! A platform node for tests and demos: joins (or founds) a group over TCP, sends a
//! stream of ordered messages, records everything it sees as a history file the
//! simulator's checkers read, and leaves cleanly on SIGTERM. (The full `squall` server
//! comes with the object store.)
//!
//! ```text
//! squall-platform-node --node 0 --peers 0=127.0.0.1:7100,1=127.0.0.1:7101,2=127.0.0.1:7102 \
//!     --data-dir /tmp/n0 --history /tmp/n0/history --found --messages 1000 --size 1024
//! ```
//!
//! Every restart is a new incarnation (counted in `<data-dir>/incarnation`), as the
//! protocol requires. Payloads start with an 8-byte id, `(node << 40) | (incarnation << 24)
//! | counter`, so histories of different processes name the same message alike.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use squall_driver::{
    AppEvent, NodeConfig, NodeEvent, NodeSendError, TcpConfig, TcpTransport, TransferredState,
    restart_order, start_node,
};
use squall_log::{FileLog, LogConfig, LogStore, ShardKey};
use squall_platform::sim::history::{Event, StateDigest, UNKNOWN_PAYLOAD};
use squall_platform::sim::history_io::write_event;
use squall_platform::{
    CoreConfig, DeliveryMode, Layout, MemberId, SendError, SendTicket, ShardLayout, StopReason,
    SubgroupLayout,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Debug)]
struct Args {
    cluster_id: u64,
    node: u32,
    peers: BTreeMap<u32, SocketAddr>,
    data_dir: PathBuf,
    history: PathBuf,
    found: bool,
    contacts: Vec<u32>,
    shard_min: usize,
    shard_max: usize,
    messages: u64,
    size: usize,
    interval_us: u64,
    persistent: bool,
    heartbeat_ms: u64,
    timeout_ms: u64,
    /// After being evicted (or stopping in a minority), restart as a new incarnation.
    rejoin: bool,
    /// Decides a total restart (default: the lowest node id among the peers).
    restart_leader: Option<u32>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        cluster_id: 0x5155_414c,
        node: u32::MAX,
        peers: BTreeMap::new(),
        data_dir: PathBuf::new(),
        history: PathBuf::new(),
        found: false,
        contacts: Vec::new(),
        shard_min: 1,
        shard_max: 5,
        messages: 0,
        size: 64,
        interval_us: 0,
        persistent: false,
        heartbeat_ms: 20,
        timeout_ms: 1_000,
        rejoin: false,
        restart_leader: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--found" {
            args.found = true;
            continue;
        }
        if flag == "--persistent" {
            args.persistent = true;
            continue;
        }
        if flag == "--rejoin" {
            args.rejoin = true;
            continue;
        }
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--cluster-id" => args.cluster_id = num(&value)?,
            "--node" => args.node = u32::try_from(num(&value)?)?,
            "--peers" => {
                for entry in value.split(',') {
                    let (id, addr) = entry
                        .split_once('=')
                        .ok_or_else(|| anyhow!("--peers entries are id=addr, got `{entry}`"))?;
                    let addr: SocketAddr = addr
                        .parse()
                        .with_context(|| format!("--peers: bad address `{addr}`"))?;
                    args.peers.insert(u32::try_from(num(id)?)?, addr);
                }
            }
            "--data-dir" => args.data_dir = PathBuf::from(value),
            "--history" => args.history = PathBuf::from(value),
            "--contacts" => {
                args.contacts = value
                    .split(',')
                    .map(|c| Ok(u32::try_from(num(c)?)?))
                    .collect::<Result<_>>()?
            }
            "--shard-min" => args.shard_min = num(&value)? as usize,
            "--shard-max" => args.shard_max = num(&value)? as usize,
            "--messages" => args.messages = num(&value)?,
            "--size" => args.size = num(&value)? as usize,
            "--interval-us" => args.interval_us = num(&value)?,
            "--heartbeat-ms" => args.heartbeat_ms = num(&value)?,
            "--timeout-ms" => args.timeout_ms = num(&value)?,
            "--restart-leader" => args.restart_leader = Some(u32::try_from(num(&value)?)?),
            other => bail!("unknown flag {other}"),
        }
    }
    if !args.peers.contains_key(&args.node) {
        bail!("--node {} must be one of --peers", args.node);
    }
    if args.data_dir.as_os_str().is_empty() || args.history.as_os_str().is_empty() {
        bail!("--data-dir and --history are required");
    }
    if args.size < 8 {
        bail!("--size must be at least 8 (the payload id)");
    }
    if args.contacts.is_empty() {
        args.contacts = args
            .peers
            .keys()
            .copied()
            .filter(|n| *n != args.node)
            .collect();
    }
    Ok(args)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn payload_id(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(UNKNOWN_PAYLOAD, u64::from_le_bytes)
}

/// The bytes of a digest in the first piece of its transfer.
const DIGEST_FIRST_PIECE_BYTES: usize = 8;

fn encode_digest(d: StateDigest) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u64_le(d.applied);
    b.put_u64_le(d.chain);
    b.freeze()
}

fn decode_digest(b: &[u8]) -> Option<StateDigest> {
    Some(StateDigest {
        applied: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
        chain: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
    })
}

struct Recorder {
    out: LineWriter<File>,
}

impl Recorder {
    fn record(&mut self, event: Event) -> Result<()> {
        write_event(&mut self.out, &event).context("writing the history")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    let incarnation = squall_driver::next_incarnation(&args.data_dir)?;
    let me = MemberId::new(args.node, incarnation);

    let layout = Layout {
        subgroups: vec![SubgroupLayout {
            shards: vec![ShardLayout {
                min_nodes: args.shard_min,
                max_nodes: args.shard_max,
                mode: DeliveryMode::Ordered,
            }],
        }],
    };
    let mut core = CoreConfig::new(layout);
    core.heartbeat_interval_ms = args.heartbeat_ms;
    core.suspicion_timeout_ms = args.timeout_ms;
    core.join_retry_ms = 200;

    let listen = args.peers[&args.node];
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let mut tcp = TcpConfig::new(args.cluster_id, me, args.peers.clone());
    tcp.heartbeat_interval_ms = args.heartbeat_ms;
    tcp.suspicion_timeout_ms = args.timeout_ms;
    let (inbound_tx, inbound) = mpsc::channel(65_536);
    let transport = TcpTransport::start(tcp, listener, inbound_tx);

    // The application's state is what its log replays to (the log holds every version
    // this node delivered or received by state transfer, in order).
    let mut digest = StateDigest::default();
    let mut state_parts = Vec::new();
    // The rest of a digest being supplied: its view and subgroup, and the bytes.
    let mut supplying = None;
    let log: Option<Box<dyn LogStore + Send>> = if args.persistent {
        let (log, report) = FileLog::open(LogConfig::new(args.data_dir.join("log")))?;
        eprintln!("node {me}: log recovered: {report:?}");
        let shard = ShardKey {
            subgroup: 0,
            shard: 0,
        };
        for record in log.range(shard, 0, u64::MAX)? {
            digest.apply(payload_id(&record.payload));
        }
        Some(Box::new(log))
    } else {
        None
    };
    // The preferred restart leader, then every other peer by id as its backups.
    let first = args
        .restart_leader
        .or_else(|| args.peers.keys().next().copied())
        .ok_or_else(|| anyhow!("no peers"))?;
    let restart_leaders = restart_order(first, args.peers.keys().copied());
    let cfg = NodeConfig {
        core,
        me,
        found: args.found && incarnation == 1,
        contacts: args.contacts.clone(),
        restart_leaders,
        tick_interval_ms: (args.heartbeat_ms / 2).max(1),
        events_max: 65_536,
        commands_max: 4_096,
        report_arrivals: true,
        unlogged_subgroups: Vec::new(),
        state_keeper: None,
    };
    let (handle, mut events) = start_node(cfg, transport, inbound, log)?;

    let history = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.history)
        .with_context(|| format!("opening {}", args.history.display()))?;
    let mut rec = Recorder {
        out: LineWriter::new(history),
    };
    let mut sender: Option<tokio::task::JoinHandle<()>> = None;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut leaving = false;
    let mut stopped = None;

    // A lone or wedged node cannot leave through a view change: after this long it
    // records what the driver already reported and exits anyway.
    let give_up = tokio::time::sleep(Duration::from_secs(u32::MAX.into()));
    tokio::pin!(give_up);
    let mut giving_up = false;
    loop {
        if giving_up && events.is_empty() {
            break;
        }
        tokio::select! {
            _ = sigterm.recv(), if !leaving => {
                leaving = true;
                eprintln!("node {me}: SIGTERM, leaving");
                handle.leave().await;
                give_up.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            _ = &mut give_up, if leaving && !giving_up => giving_up = true,
            event = events.recv() => {
                let Some(NodeEvent { at_us, event }) = event else { break };
                match event {
                    AppEvent::Arrived { from, view_id, subgroup, first_index, count } => {
                        rec.record(Event::Arrived { at_us, member: me, from, view_id, subgroup, first_index, count })?;
                    }
                    AppEvent::Restarting(plan) => {
                        let trims: Vec<String> = plan.shards.iter().enumerate().flat_map(|(g, shards)| {
                            shards.iter().enumerate().map(move |(s, rs)| {
                                let trim = rs.trim.map_or("empty".to_string(), |v| v.to_string());
                                format!("subgroup {g} shard {s} trim {trim}")
                            })
                        }).collect();
                        let sources: Vec<String> = plan.view.shards.iter().flatten()
                            .map(|sv| sv.state_source.map_or("none".to_string(), |m| m.to_string()))
                            .collect();
                        println!(
                            "node {me}: restart view {} members {:?} failed {:?}; trims [{}]; longest logs at [{}]",
                            plan.view.id, plan.view.members, plan.view.failed, trims.join(", "), sources.join(", ")
                        );
                    }
                    AppEvent::Installed(view) => {
                        println!("node {me}: installed view {} members {:?}", view.id, view.members);
                        let in_shard = view.shard_of(0, me).is_some();
                        rec.record(Event::Installed { at_us, member: me, view: Arc::clone(&view) })?;
                        if in_shard {
                            rec.record(Event::StateAtInstall { at_us, member: me, view_id: view.id, subgroup: 0, digest })?;
                        }
                        if sender.is_none() && in_shard && args.messages > 0 {
                            let sent = Recorder { out: LineWriter::new(OpenOptions::new().append(true).open(&args.history)?) };
                            sender = Some(tokio::spawn(send_stream(handle.clone(), me, args.messages, args.size, args.interval_us, sent)));
                        }
                    }
                    AppEvent::Delivered(d) => {
                        let payload = payload_id(&d.payload);
                        if d.version.is_some() {
                            digest.apply(payload);
                        }
                        rec.record(Event::Delivered {
                            at_us, member: me, view_id: d.view_id, subgroup: d.subgroup, shard: d.shard,
                            sender: d.sender, sender_index: d.sender_index, version: d.version,
                            kind: d.kind, payload, ticket: d.ticket,
                        })?;
                    }
                    AppEvent::SendsAborted { subgroup, tickets } => {
                        rec.record(Event::Aborted { at_us, member: me, subgroup, tickets })?;
                    }
                    AppEvent::Persisted { subgroup, version } => {
                        rec.record(Event::Persisted { at_us, member: me, subgroup, version })?;
                    }
                    AppEvent::GlobalPersisted { subgroup, version } => {
                        rec.record(Event::GlobalPersisted { at_us, member: me, subgroup, version })?;
                    }
                    AppEvent::TrimLogged { view_id, subgroup, received } => {
                        rec.record(Event::TrimLogged { at_us, member: me, view_id, subgroup, received })?;
                    }
                    AppEvent::Trimmed { view_id, subgroup, shard, received } => {
                        rec.record(Event::Trimmed { at_us, member: me, view_id, subgroup, shard, received })?;
                    }
                    // The digest goes in two pieces, so that every transfer streams one.
                    AppEvent::StateRequested { view_id, subgroup, .. } => {
                        let mut whole = encode_digest(digest);
                        let rest = whole.split_off(DIGEST_FIRST_PIECE_BYTES);
                        supplying = Some((view_id, subgroup, rest));
                        handle.supply_state_piece(view_id, subgroup, whole, false).await;
                    }
                    AppEvent::StateSupplyMore { view_id, subgroup } => {
                        if let Some((for_view, for_subgroup, rest)) = supplying.take() {
                            if (for_view, for_subgroup) == (view_id, subgroup) {
                                handle.supply_state_piece(view_id, subgroup, rest, true).await;
                            } else {
                                supplying = Some((for_view, for_subgroup, rest));
                            }
                        }
                    }
                    AppEvent::StateReceived { view_id, subgroup, state, .. } => {
                        let TransferredState::Bytes(state) = state else {
                            bail!("the source sent no state");
                        };
                        digest = decode_digest(&state).ok_or_else(|| anyhow!("malformed state from the source"))?;
                        rec.record(Event::StateReceived { at_us, member: me, view_id, subgroup, digest })?;
                    }
                    // Unlogged subgroups: the digest in parts (one, unless it is huge).
                    AppEvent::StatePart { view_id, subgroup, part, state, last, .. } => {
                        if part == 0 {
                            state_parts.clear();
                        }
                        state_parts.extend_from_slice(&state);
                        handle.state_part_taken(view_id, subgroup, part).await;
                        if last {
                            digest = decode_digest(&state_parts).ok_or_else(|| anyhow!("malformed state from the source"))?;
                            rec.record(Event::StateReceived { at_us, member: me, view_id, subgroup, digest })?;
                        }
                    }
                    // This node asks for no reads.
                    AppEvent::ReadReady { .. } => {}
                    AppEvent::Stopped(reason) => {
                        rec.record(Event::Stopped { at_us, member: me, reason })?;
                        eprintln!("node {me}: stopped: {reason:?}");
                        stopped = Some(reason);
                        break;
                    }
                }
            }
        }
    }
    rec.out.flush()?;
    if args.rejoin && !leaving && stopped.is_some_and(|r| r != StopReason::Left) {
        // Given up on by the group: this incarnation is over. Come back as the next one.
        eprintln!("node {me}: restarting as a new incarnation");
        let err = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .exec();
        bail!("re-executing myself: {err}");
    }
    Ok(())
}

/// Sends `count` messages, retrying while the core's queue is full.
async fn send_stream(
    handle: squall_driver::NodeHandle,
    me: MemberId,
    count: u64,
    size: usize,
    interval_us: u64,
    mut sent: Recorder,
) {
    for counter in 0..count {
        let id = (u64::from(me.node) << 40) | (u64::from(me.incarnation) << 24) | counter;
        let mut payload = BytesMut::with_capacity(size);
        payload.put_u64_le(id);
        payload.resize(size, (counter % 251) as u8);
        let payload = payload.freeze();
        // Recorded before the send, so a kill -9 right after it cannot leave deliveries of
        // a message no history sent. Tickets count accepted sends from 0, and this task
        // is the only sender.
        let expected = SendTicket(counter);
        let event = Event::Sent {
            at_us: now_us(),
            member: me,
            subgroup: 0,
            ticket: expected,
            payload: id,
            len: size,
            probe: false,
        };
        if let Err(e) = sent.record(event) {
            eprintln!("node {me}: {e:#}");
            return;
        }
        loop {
            match handle.send(0, payload.clone()).await {
                Ok(ticket) => {
                    if ticket != expected {
                        eprintln!(
                            "node {me}: ticket {ticket:?}, expected {expected:?}; history is wrong"
                        );
                        std::process::exit(3);
                    }
                    break;
                }
                Err(NodeSendError::Core(
                    SendError::Backlogged { .. } | SendError::NotMember { .. },
                )) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => {
                    eprintln!("node {me}: send stopped: {e}");
                    return;
                }
            }
        }
        if interval_us > 0 {
            tokio::time::sleep(Duration::from_micros(interval_us)).await;
        }
    }
}
