//! The Squall node: the composition of the group layer (`squall-driver` over TCP, with
//! the durable log), the object store service and the client server, from one
//! [`Config`].
//!
//! Layout: subgroup 0 is the pool metadata, one shard over every node, logged; the data
//! subgroups follow in config order (persistent ones logged, volatile and trigger ones
//! not). At start the node counts a new incarnation, replays its logs into the service,
//! then starts the platform: with a log that holds a view it restarts (joining a live
//! group, or bringing the whole cluster back from the logs), otherwise the lowest node id
//! founds the cluster and the others join.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use squall_udl_host::engine::{Engine, EngineConfig, EngineMetrics};

use crate::checkpoint::{Checkpoints, TransferKeeper};
use squall_driver::{
    NodeConfig, StateKeeper, TcpConfig, TcpTransport, has_incarnation, next_incarnation,
    next_incarnation_from, start_node,
};
use squall_kvs::StoreKind;
use squall_log::{FileLog, LogConfig, LogStore};
use squall_platform::{
    CoreConfig, DeliveryMode, Layout, MemberId, ShardLayout, StopReason, SubgroupLayout,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::client::{Client, Policy};
use crate::config::Role;
use crate::config::{Config, SubgroupKind};
use crate::server::{self, ServerConfig};
use crate::service::{Command, Reply, Service, ServiceConfig};
use crate::udl::{ClientCall, Emit, EmitItem, InputRef, UdlRuntime};
use crate::wan::WanConfig;
use crate::wire::{ErrorCode, Frame, Request, Response};

/// Requests queued for the service before connections wait.
pub const SERVICE_QUEUE_MAX: usize = 4096;
/// How long a leaving node waits for the group to let it go.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("incarnation: {0}")]
    Incarnation(#[from] squall_driver::incarnation::IncarnationError),
    #[error("log: {0}")]
    Log(#[from] squall_log::LogError),
    #[error("starting the platform: {0}")]
    Node(#[from] squall_driver::NodeError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// No `node.peer_listen_addr`, and this node's own `cluster.peers` entry does not
    /// resolve to an address of this machine (yet).
    #[error(
        "listening for peers at this node's own address {addr} (cluster.peers): {reason}; \
         set node.peer_listen_addr (e.g. 0.0.0.0:{port}) to listen elsewhere"
    )]
    OwnPeerAddr {
        addr: String,
        port: u16,
        reason: String,
    },
    #[error("starting the UDL engine: {0}")]
    Udl(#[from] squall_udl_host::engine::EngineError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("GPU: {0}")]
    Gpu(#[from] squall_gpu::GpuError),
    #[error("replaying the log: {0}")]
    Replay(String),
    /// The node stopped without being asked to. It exits with an error so that whatever
    /// supervises it (`squall up`, systemd's `Restart=on-failure`, Kubernetes) starts it
    /// again: a new start joins the running group and recovers from its log.
    #[error("this node stopped: {0}; starting it again rejoins the group")]
    Stopped(String),
}

/// Why the group stopped a node, in a user's words.
fn stop_reason_text(reason: Option<StopReason>) -> String {
    match reason {
        Some(StopReason::Evicted) => {
            "the group evicted it (a member suspected it, or a newer view leaves it out)".into()
        }
        Some(StopReason::MinorityPartition) => "it was on the minority side of a partition".into(),
        Some(StopReason::FellBehind) => "it fell too far behind the group's views".into(),
        Some(StopReason::Left) => "it left the group".into(),
        Some(StopReason::StorageFailed) => {
            "its log could not write (see the error above: a full disk?), so it stopped and \
             the group goes on without it"
                .into()
        }
        None => "its platform stopped (see the errors above)".into(),
    }
}

/// The platform layout of a config: the metadata subgroup, then the data subgroups.
pub fn layout(config: &Config) -> Layout {
    let peers = config.cluster.peers.len();
    let mut subgroups = vec![SubgroupLayout {
        shards: vec![ShardLayout {
            min_nodes: 1,
            max_nodes: peers,
            mode: DeliveryMode::Ordered,
        }],
    }];
    for sg in &config.layout.subgroups {
        subgroups.push(SubgroupLayout {
            shards: (0..sg.shards)
                .map(|_| ShardLayout {
                    min_nodes: sg.min_nodes as usize,
                    max_nodes: sg.max_nodes as usize,
                    mode: DeliveryMode::Ordered,
                })
                .collect(),
        });
    }
    Layout { subgroups }
}

/// Where this node listens for its peers: `node.peer_listen_addr`, else its own
/// `cluster.peers` entry's `addr` resolved now, bound at the first of its addresses that
/// belongs to this machine.
async fn peer_listener(config: &Config) -> Result<TcpListener, RunError> {
    if let Some(addr) = config.node.peer_listen_addr {
        return TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Listen { addr, source });
    }
    let Some(own) = config.peer(config.node.id).map(|p| &p.addr) else {
        unreachable!("a validated config lists this node among its peers");
    };
    let own_error = |reason: String| RunError::OwnPeerAddr {
        addr: own.to_string(),
        port: own.port(),
        reason,
    };
    let resolved: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((own.host().as_str(), own.port()))
            .await
            .map_err(|e| own_error(format!("it does not resolve ({e})")))?
            .collect();
    let mut foreign = Vec::new();
    for addr in &resolved {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            // Not an address of this machine: perhaps the next one is.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => foreign.push(*addr),
            Err(source) => {
                return Err(RunError::Listen {
                    addr: *addr,
                    source,
                });
            }
        }
    }
    Err(own_error(if foreign.is_empty() {
        "it resolves to no address".to_string()
    } else {
        format!("it resolves to {foreign:?}, none of them an address of this machine")
    }))
}

/// Runs a node until `shutdown` completes (then it leaves the group) or the group stops
/// it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // A node with no count of its starts is new, or lost its disk. If a group of this
    // cluster is running, the node must join it, never found a second one (the lowest
    // node founds at its first start), and with a number no earlier life of it used.
    let live_group = if has_incarnation(&config.node.data_dir) {
        None
    } else {
        find_live_group(&config).await
    };
    let incarnation = match &live_group {
        Some((node, view_id)) => {
            warn!(
                asked = node,
                view = view_id,
                "no start counted here, but the cluster runs: joining it as a new incarnation"
            );
            next_incarnation_from(&config.node.data_dir, incarnation_floor())?
        }
        None => next_incarnation(&config.node.data_dir)?,
    };
    let me = MemberId::new(config.node.id, incarnation);
    info!(node = me.node, incarnation, "starting");
    if std::env::var_os("SQUALL_PYTHON").is_some() {
        // A Python was named for UDLs: start it now, off the event loop, so the first
        // Python UDL does not stall the node while an interpreter starts (~0.4 s here).
        let _ = std::thread::Builder::new()
            .name("squall-python-start".into())
            .spawn(|| drop(squall_udl_host::python::host_plugin()));
    }

    let mut core = CoreConfig::new(layout(&config));
    core.heartbeat_interval_ms = config.timing.heartbeat_interval_ms;
    core.suspicion_timeout_ms = config.timing.suspicion_timeout_ms;
    core.restart_grace_ms = config.timing.restart_grace_ms;
    core.read_lease_ms = config.timing.read_lease_ms;
    core.join_retry_ms = 200;
    core.payload_size_max_bytes = config.limits.object_bytes_max + (64 << 10);

    let listener = peer_listener(&config).await?;
    let client_listener = TcpListener::bind(config.node.client_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.node.client_addr,
            source,
        })?;
    // Peer names stay names: the transport resolves them at every dial.
    let mut tcp = TcpConfig::new(
        config.cluster.id,
        me,
        config.cluster.peers.iter().map(|p| (p.id, &p.addr)),
    );
    tcp.heartbeat_interval_ms = config.timing.heartbeat_interval_ms;
    tcp.suspicion_timeout_ms = config.timing.suspicion_timeout_ms;
    // A shard's state for a joiner comes in parts of `state_part_bytes_max`: each part,
    // with its header, must fit one message.
    tcp.message_bytes_max = tcp
        .message_bytes_max
        .max(4 * config.limits.object_bytes_max)
        .max(core.state_part_bytes_max + (64 << 10));
    let (inbound_tx, inbound) = mpsc::channel(65_536);
    let transport = TcpTransport::start(tcp, listener, inbound_tx);

    let (log, report) = FileLog::open(LogConfig {
        preallocate_bytes: config.limits.log_preallocate_bytes,
        segment_bytes_max: config.limits.log_segment_bytes,
        ..LogConfig::new(config.node.data_dir.join("log"))
    })?;
    info!(?report, "log recovered");
    // The views of earlier lives: the replay tells from them who ran which UDL input.
    let logged_views = squall_driver::logged_views(&log)?;
    // What each shard's log holds now; the service replays it in chunks once it exists.
    let replays: Vec<_> = log
        .shards()
        .into_iter()
        .map(|key| (key, log.last_version(key)))
        .collect();
    let kinds: Vec<StoreKind> = std::iter::once(StoreKind::Persistent)
        .chain(config.layout.subgroups.iter().map(|sg| sg.kind.into()))
        .collect();
    let unlogged: Vec<u32> = config
        .layout
        .subgroups
        .iter()
        .enumerate()
        .filter(|(_, sg)| sg.kind != SubgroupKind::Persistent)
        .map(|(i, _)| i as u32 + 1)
        .collect();
    let lowest = config.peer_map().keys().next().copied();
    let checkpoint_dir = config.node.data_dir.join("checkpoints");
    let transfer_keeper = Arc::new(TransferKeeper::new(Checkpoints::new(
        checkpoint_dir.clone(),
    )));
    let node_cfg = NodeConfig {
        core,
        me,
        found: lowest == Some(me.node) && incarnation == 1 && live_group.is_none(),
        contacts: config.contacts(),
        restart_leaders: config.restart_leaders(),
        tick_interval_ms: (config.timing.heartbeat_interval_ms / 2).max(1),
        events_max: 65_536,
        commands_max: 4_096,
        report_arrivals: false,
        unlogged_subgroups: unlogged,
        state_keeper: Some(StateKeeper(transfer_keeper.clone())),
    };
    let (handle, events) = start_node(node_cfg, transport, inbound, Some(Box::new(log)))?;

    let service_cfg = ServiceConfig {
        me,
        kinds: kinds.clone(),
        shards: std::iter::once(1)
            .chain(config.layout.subgroups.iter().map(|sg| sg.shards))
            .collect(),
        key_bytes_max: config.limits.key_bytes_max,
        object_bytes_max: config.limits.object_bytes_max,
        pools_max: config.limits.pools_max,
        store_limits: config.limits.store_limits(),
        watchers_max: config.limits.watchers_max,
        watch_queue_max: config.limits.watch_queue_max,
        history_cache_bytes: config.limits.history_cache_bytes,
        history_retention_us: config.limits.history_retention_s.saturating_mul(1_000_000),
        requests_in_flight_max: config.limits.requests_in_flight_max,
        client_addrs: config
            .client_map()
            .into_iter()
            .map(|(id, addr)| (id, addr.to_string()))
            .collect(),
        default_pools: config.pools.iter().map(|p| config.pool_spec(p)).collect(),
        clock_skew_max_us: 60_000_000,
        wan: WanConfig::from_config(&config),
        log_dir: Some(config.node.data_dir.join("log")),
        checkpoint_dir: Some(checkpoint_dir),
        transfer_keeper: Some(transfer_keeper),
        disk_reserve_bytes: config.limits.disk_reserve_bytes,
        metadata_compact_bytes: config.limits.metadata_log_compact_bytes,
    };
    let mut service_cfg = service_cfg;
    if let Some(wan) = &service_cfg.wan {
        // The outbox is a persistent pool over every shard of its subgroup.
        service_cfg.default_pools.push(squall_kvs::PoolSpec::new(
            squall_kvs::OUTBOX_POOL,
            StoreKind::Persistent,
            wan.outbox_subgroup,
        ));
    }
    let registry = prometheus::Registry::new();
    let engine = Engine::start(
        &EngineConfig {
            workers: config.limits.udl_workers,
            queue_capacity: config.limits.udl_queue_max,
        },
        EngineMetrics::new(&registry)?,
    )?;
    let (emits_tx, emits) = mpsc::channel(config.limits.udl_emit_queue_max);
    let mut runtime = UdlRuntime::new(
        me,
        config.node.data_dir.join("udls"),
        Arc::new(engine),
        emits_tx,
    );
    let (calls_tx, calls) = mpsc::channel(config.limits.udl_emit_queue_max);
    runtime.set_client_calls(calls_tx);
    runtime.set_site(config.site.as_ref().map(|s| s.name.clone()));
    let (done_tx, udl_done) = mpsc::channel(config.limits.udl_emit_queue_max);
    let output_token = config
        .auth
        .tokens
        .iter()
        .find(|t| t.role >= Role::Write)
        .map(|t| t.token.clone());
    let client_addrs: Vec<String> = config
        .client_map()
        .values()
        .map(ToString::to_string)
        .collect();
    let wan_links = crate::wan::SharedLinks::default();
    let wan_pressure = crate::service::WanPressure::default();
    let wan_metrics = match &service_cfg.wan {
        Some(_) => Some(crate::wan::WanMetrics::new(&registry)?),
        None => None,
    };
    let client_calls = tokio::spawn(serve_client_calls(
        calls,
        client_addrs.clone(),
        output_token.clone(),
    ));
    let (commands_tx, commands) = mpsc::channel(SERVICE_QUEUE_MAX);
    let emitter = tokio::spawn(emit_outputs(
        done_tx,
        commands_tx.clone(),
        // As the layout names this node (its advertised address, not where it listens).
        config
            .peer(me.node)
            .map(|p| p.client_addr.to_string())
            .unwrap_or_default(),
        client_addrs,
        output_token,
        emits,
        wan_pressure.clone(),
    ));
    let mut service = Service::new(service_cfg, handle.clone(), runtime);
    // Once per node: which GPUs there are (none: GPU-cached pools use host memory).
    let gpu = crate::gpu::NodeGpu::new(squall_gpu::detect(), &registry)?;
    gpu.log_detection();
    service.set_gpu(gpu.clone());
    let metrics = crate::metrics::NodeMetrics::new(&registry)?;
    service.set_metrics(metrics.clone());
    let status = crate::metrics::SharedStatus::default();
    service.set_status(status.clone());
    service.set_wan(wan_links.clone(), wan_metrics, wan_pressure);
    if let (Some(site), Ok(mut st)) = (&config.site, status.lock()) {
        st.site = Some(site.name.clone());
        st.site_kind = Some(site.kind.to_string());
    }
    service.set_logged_views(logged_views);
    // Only logged subgroups (metadata and persistent ones) have logs worth replaying.
    for (key, last_version) in replays {
        if kinds.get(key.subgroup as usize) == Some(&StoreKind::Persistent) {
            service
                .replay_log(key.subgroup, key.shard, last_version)
                .await
                .map_err(RunError::Replay)?;
        }
    }
    let server_cfg = ServerConfig {
        node: me.node,
        frame_bytes_max: config.limits.frame_bytes_max,
        clients_max: config.limits.clients_max,
        watch_queue_max: config.limits.watch_queue_max,
        out_queue_max: 1024,
        tokens: config
            .auth
            .tokens
            .iter()
            .map(|t| (t.token.clone(), t.role))
            .collect(),
        metrics: Some(metrics),
    };
    let http = match config.node.http_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Listen { addr, source })?;
            let mut addrs = vec![config.node.client_addr.to_string()];
            addrs.extend(
                config
                    .client_map()
                    .values()
                    .map(ToString::to_string)
                    .filter(|a| *a != config.node.client_addr.to_string()),
            );
            let http_cfg = crate::http::HttpConfig {
                node: me.node,
                client_addrs: addrs,
                tokens: server_cfg.tokens.clone(),
                body_bytes_max: config.limits.frame_bytes_max,
                registry: registry.clone(),
                status: status.clone(),
                wan_links: wan_links.clone(),
                gpu: gpu.clone(),
            };
            Some(tokio::spawn(crate::http::serve(listener, http_cfg)))
        }
        None => None,
    };
    let server = tokio::spawn(server::serve(client_listener, server_cfg, commands_tx));
    println!(
        "node {} (incarnation {incarnation}) serving clients on {}",
        me.node, config.node.client_addr
    );
    let mut service_task = tokio::spawn(service.run(events, commands, udl_done));
    let unasked = tokio::select! {
        _ = shutdown => {
            info!("leaving the group");
            handle.leave().await;
            if tokio::time::timeout(LEAVE_TIMEOUT, &mut service_task).await.is_err() {
                warn!("the group did not let this node go in time; stopping anyway");
            }
            None
        }
        ended = &mut service_task => Some(ended.ok().flatten()),
    };
    server.abort();
    if let Some(http) = http {
        http.abort();
    }
    emitter.abort();
    client_calls.abort();
    match unasked {
        None => Ok(()),
        Some(reason) => Err(RunError::Stopped(stop_reason_text(reason))),
    }
}

/// How long a new node waits for each other node's answer when it looks for a running
/// group: long enough for a loaded machine, short enough not to slow a cold start much
/// (nodes not up yet refuse the connection at once).
const LIVE_GROUP_PROBE_MS: u64 = 1_500;

/// Asks every other node, at once, for its view: the first that is a member of one
/// (node id, view id), or `None` if none is (a cold start: nobody has joined anything).
async fn find_live_group(config: &Config) -> Option<(u32, u32)> {
    let token = config.auth.tokens.first().map(|t| t.token.clone());
    let mut probes = tokio::task::JoinSet::new();
    for (node, addr) in config.client_map() {
        if node == config.node.id {
            continue;
        }
        let token = token.clone();
        probes.spawn(async move {
            let addr = addr.to_string();
            let probe = crate::client::members_of(&addr, token.as_deref());
            match tokio::time::timeout(Duration::from_millis(LIVE_GROUP_PROBE_MS), probe).await {
                Ok(Ok((view_id, members))) if !members.is_empty() => Some((node, view_id)),
                _ => None,
            }
        });
    }
    while let Some(answer) = probes.join_next().await {
        if let Ok(Some(found)) = answer {
            return Some(found);
        }
    }
    None
}

/// An incarnation above any a lost count can have reached: the clock's seconds (a node
/// would have to have restarted more than once a second on average since its first
/// start for its old count to pass it).
fn incarnation_floor() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX).max(2)
}

/// Runs UDL contexts' `get` and `put` through a cluster client, each call in a task of
/// its own (a worker waits on each, so at most one per worker is in flight).
async fn serve_client_calls(
    mut calls: mpsc::Receiver<ClientCall>,
    addrs: Vec<String>,
    token: Option<String>,
) {
    let mut client: Option<Client> = None;
    while let Some(call) = calls.recv().await {
        let c = loop {
            if let Some(c) = &client {
                break c.clone();
            }
            match Client::connect(&addrs, token.clone(), Policy::default()).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "UDL client calls cannot reach the cluster; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        tokio::spawn(async move {
            match call {
                ClientCall::Get { key, reply } => {
                    let result = c
                        .get(&key)
                        .await
                        .map(|o| o.map(|o| o.blob))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
                ClientCall::Put {
                    key,
                    value,
                    id,
                    reply,
                } => {
                    let result = c
                        .put_with_id(&key, value, id)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
            }
        });
    }
}

/// A request handed to this node's own service, as a client's would be (with the write
/// role: the node trusts its own UDLs' outputs as it trusts its config's tokens).
async fn request_here(service: &mpsc::Sender<Command>, request: Request) -> Option<Response> {
    let (answers, mut answer) = mpsc::channel(1);
    let command = Command::Request {
        request,
        role: Role::Write,
        reply: Reply::new(0, answers),
    };
    service.send(command).await.ok()?;
    match answer.recv().await? {
        Frame::Response { response, .. } => Some(response),
        _ => None,
    }
}

/// Queues an output for a remote site in the WAN outbox. Never dropped for want of room
/// or a reachable shard: it waits (with a pause that doubles up to a second), which
/// backs up the emit queue, the UDL workers and, through their queues, new inputs; the
/// site is marked full meanwhile (`wan.outbox_full = "reject"` then refuses new inputs
/// whose DFG sends there). Only an output the cluster can never take (a bad key, too
/// large) is logged and dropped, as a local output would be.
async fn outbox_output(c: &Client, site: &str, out: Emit, pressure: &crate::service::WanPressure) {
    let mut pause = Duration::from_millis(20);
    loop {
        match c
            .outbox_put(site, out.trigger, &out.key, out.value.clone(), out.id)
            .await
        {
            Ok(_) => {
                if let Ok(mut full) = pressure.lock() {
                    full.remove(site);
                }
                return;
            }
            Err(e) => {
                let code = e.code();
                let retry = matches!(
                    code,
                    None | Some(
                        ErrorCode::OutboxFull | ErrorCode::Unavailable | ErrorCode::NotHere
                    )
                );
                if !retry {
                    warn!(site, key = %out.key, error = %e, "a UDL output for a remote site was refused; dropped");
                    return;
                }
                if code == Some(ErrorCode::OutboxFull)
                    && let Ok(mut full) = pressure.lock()
                    && full.insert(site.to_string())
                {
                    warn!(site, "the WAN outbox is full; UDL outputs wait");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Writes what UDLs emit, in order, through a client of the cluster (with the first
/// token of the config that may write). A write that fails for good is logged and
/// dropped; the client itself retries across view changes and failovers. Outputs for
/// remote sites go to the WAN outbox ([`outbox_output`]).
async fn emit_outputs(
    done: mpsc::Sender<InputRef>,
    service: mpsc::Sender<Command>,
    own_addr: String,
    addrs: Vec<String>,
    token: Option<String>,
    mut emits: mpsc::Receiver<EmitItem>,
    pressure: crate::service::WanPressure,
) {
    let mut client: Option<Client> = None;
    // An item taken from the queue while gathering a batch, handled next.
    let mut next: Option<EmitItem> = None;
    loop {
        let item = match next.take() {
            Some(item) => item,
            None => match emits.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let out = match item {
            EmitItem::Output(out) => out,
            // Every output of that job was written before this arrived.
            EmitItem::Done(input) => {
                let _ = done.send(input).await;
                continue;
            }
        };
        let c = loop {
            if let Some(c) = &client {
                break c.clone();
            }
            // By key: every trigger_put of one key reaches the same replica, so a
            // stateful UDL behind it (a reducer) sees all of them in one place.
            match Client::connect(&addrs, token.clone(), Policy::KeyHash).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "the UDL output writer cannot reach the cluster; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if out.trigger && out.site.is_none() {
            // The replica its key routes to may be this node: then straight to the
            // local service, without a network round trip.
            let here = c.replica_for(&out.key).is_some_and(|a| a == own_addr);
            let request = Request::TriggerPut {
                key: out.key.clone(),
                blob: out.value.clone(),
            };
            let result = if here && let Some(Response::Done) = request_here(&service, request).await
            {
                Ok(())
            } else {
                // Elsewhere, or not (or no longer) served here: the cluster says where.
                c.trigger_put(&out.key, out.value).await
            };
            if let Err(e) = result {
                warn!(key = %out.key, error = %e, "a UDL output could not be written");
            }
            continue;
        }
        // A stored put or an outbox entry: written with those queued right behind it.
        let mut batch = vec![out];
        while batch.len() < EMIT_BATCH_MAX {
            match emits.try_recv() {
                Ok(EmitItem::Output(o)) if !(o.trigger && o.site.is_none()) => batch.push(o),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        write_outputs(&c, batch, &pressure, &service, &own_addr).await;
    }
}

/// The most outputs written in one round by the UDL output writer.
const EMIT_BATCH_MAX: usize = 128;

/// Where an output's write is routed: its key, or its outbox entry's.
fn output_route(out: &Emit) -> String {
    match &out.site {
        Some(site) => squall_kvs::outbox_key(site, &out.key),
        None => out.key.clone(),
    }
}

/// Writes outputs (puts and outbox entries) in their order: those of one shard in one
/// `WriteMany` (applied in this order; what the shard refused is a suffix, written then
/// one by one, still in order), the shards at once. One output of a key is never
/// overtaken by a later one: they share a shard.
///
/// Where this node is a replica of the shard (with 3 replicas on 3 nodes, always), the
/// outputs go to its own service, which multicasts them itself, as Cascade's emit does
/// an ordered send from the member that ran the UDL: one network hop less than through
/// the shard's first member, which for a 1 MiB output is a copy of it across the
/// network. Anything it does not take goes through the client (the message ids make a
/// second attempt apply once).
async fn write_outputs(
    c: &Client,
    batch: Vec<Emit>,
    pressure: &crate::service::WanPressure,
    service: &mpsc::Sender<Command>,
    own_addr: &str,
) {
    let mut groups: Vec<(String, Vec<Emit>)> = Vec::new();
    for out in batch {
        let route = output_route(&out);
        let target = c
            .write_target(&route)
            .unwrap_or_else(|| format!("key {route}"));
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, outs)) => outs.push(out),
            None => groups.push((target, vec![out])),
        }
    }
    let writes = groups.into_iter().map(|(_, outs)| async move {
        let route = output_route(&outs[0]);
        let here = !own_addr.is_empty() && c.is_replica_of(&route, own_addr) == Some(true);
        if outs.len() == 1 && !here {
            for out in outs {
                write_output(c, out, pressure).await;
            }
            return;
        }
        let now = crate::client::now_us();
        let ops: Vec<squall_kvs::Op> = outs.iter().map(|o| output_op(o, now)).collect();
        let answers: Option<Vec<bool>> = if here {
            // Each operation in one buffer, as the service multicasts it: here that is
            // the one copy of the value (a client's frame arrives in one buffer).
            let encoded: Vec<crate::wire::OpBytes> = ops
                .iter()
                .map(|o| squall_kvs::op::encode(o).into())
                .collect();
            let request = match &encoded[..] {
                [op] => Request::Write {
                    forget: false,
                    op: op.clone(),
                },
                _ => Request::WriteMany {
                    ops: encoded,
                    compress: false,
                },
            };
            match request_here(service, request).await {
                Some(Response::Written { .. }) => Some(vec![true]),
                Some(Response::Many(answers)) if answers.len() == outs.len() => Some(
                    answers
                        .iter()
                        .map(|a| matches!(a, Response::Written { .. }))
                        .collect(),
                ),
                // Refused whole (not a replica since, a full queue): the client's way.
                _ => None,
            }
        } else {
            c.write_many(&ops, &route, false)
                .await
                .ok()
                .map(|answers| answers.iter().map(Result::is_ok).collect())
        };
        let refused: Vec<Emit> = match answers {
            Some(answers) => {
                let mut refused = Vec::new();
                for (out, written) in outs.into_iter().zip(answers) {
                    match (written, &out.site) {
                        (true, Some(site)) => {
                            if let Ok(mut full) = pressure.lock() {
                                full.remove(site);
                            }
                        }
                        (true, None) => {}
                        (false, _) => refused.push(out),
                    }
                }
                refused
            }
            None => outs,
        };
        for out in refused {
            write_output(c, out, pressure).await;
        }
    });
    futures_util::future::join_all(writes).await;
}

/// The operation that writes `o` (a put, or an outbox entry for a remote site).
fn output_op(o: &Emit, now_us: u64) -> squall_kvs::Op {
    match &o.site {
        Some(site) => squall_kvs::Op::OutboxPut {
            id: o.id,
            hlc_us: now_us,
            site: site.clone(),
            trigger: o.trigger,
            key: o.key.clone(),
            blob: o.value.clone(),
        },
        None => squall_kvs::Op::Put {
            id: o.id,
            hlc_us: now_us,
            condition: squall_kvs::Condition::Always,
            // The client names the pool's current generation.
            pool_generation: 0,
            key: o.key.clone(),
            blob: o.value.clone(),
        },
    }
}

/// One output the way a single write goes: an outbox entry until it is taken, a put
/// with the client's retries. A put refused for a disk under its reserve
/// (`StorageFull`) waits for space, with a pause that doubles up to a second: dropping
/// it would lose the output of an input already counted done, and waiting backs up the
/// emit queue, the UDL workers and then new inputs instead. Any other write that fails
/// for good is logged and dropped.
async fn write_output(c: &Client, out: Emit, pressure: &crate::service::WanPressure) {
    if let Some(site) = out.site.clone() {
        outbox_output(c, &site, out, pressure).await;
        return;
    }
    let mut pause = Duration::from_millis(20);
    let mut waited = false;
    loop {
        match c.put_with_id(&out.key, out.value.clone(), out.id).await {
            Ok(_) => return,
            Err(e) if e.code() == Some(ErrorCode::StorageFull) => {
                if !waited {
                    waited = true;
                    warn!(key = %out.key, error = %e, "a UDL output waits for disk space");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                warn!(key = %out.key, error = %e, "a UDL output could not be written");
                return;
            }
        }
    }
}
