//! `squall-bench wan`: what a WAN costs a DFG whose outputs go to another cluster.
//!
//! One run starts two Squall clusters of 3 node processes each (this binary's hidden
//! `kv-node`): a cloud (its own cluster id, site `cloud`, persistent pool `/ingest`) and
//! an edge (site `edge`, persistent pool `/sensors`, HTTP for `/metrics`) whose
//! `[[remotes]] name = "cloud"` reaches the cloud only through an in-process
//! [`squall_wanlink::WanLink`]: one proxied address per cloud node, and an
//! `address_map` from the cloud's advertised client addresses to the proxy's (as
//! `adapters/tests/wan.rs` sets it up). The edge runs the printer example UDL (quiet,
//! stateful) on `/sensors/`, destination `cloud:/ingest/` put: every input is passed on,
//! unchanged, through the edge's WAN outbox to the cloud.
//!
//! For the link's added one-way delay D = 0 (the baseline) and D = `--delay-ms`, in the
//! same run:
//!
//! - `e2e`: a closed loop of one input at a time: put at the edge, until a watch on
//!   `/ingest/` at a cloud node sees the result. p50/p99 over `--probes` inputs.
//! - `throughput`: `--concurrency` edge clients put as fast as they can for `--seconds`
//!   (after one unmeasured second); the rate is results arriving at the cloud's watch
//!   in the window (their latency, from the send stamp in the payload, gives p50/p99).
//!   Reported beside it: the edge's accepted puts per second, the backlog at the
//!   window's end (accepted at the edge, not yet at the cloud) and how much of it is in
//!   the outbox (`squall_wan_outbox_entries`, the largest over the edge nodes: every
//!   replica of the outbox shard holds the same queue), the cores this run's processes
//!   used and how busy the machine was, and from those, what limited the rate. The
//!   baseline's backlog is drained (every result at the cloud) before the delayed case.
//!
//! **Why the link limits the rate.** The outbox forwards one batch (at most
//! `wan.batch_max` entries) per outbox shard per round trip and waits for it to be
//! applied before sending the next (what keeps exactly-once and per-key order), so with
//! round trip `2·D` the rate is at most `batch_max · shards / 2D`. The outbox takes
//! inputs at the edge's own pace meanwhile (`outbox_full = "block"`, a million
//! entries), so a link-bound run shows a growing outbox, not slower edge puts; a
//! backlog mostly *before* the outbox means the edge's own pipeline (UDL runs, outbox
//! puts) is the slower stage.
//!
//! **Closed-loop e2e under delay** costs about 2·D, not D: a probe's result is visible
//! after one way, but the next probe's outbox entry waits for the previous batch's
//! acknowledgement to come back before it is sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use squall_adapters::client::{Client, Policy};
use squall_adapters::config::{self, Config, Remote, SiteKind, SiteSection};
use squall_kvs::{PoolSpec, StoreKind};
use squall_wanlink::{LinkSettings, LinkSpec, WanLink, WanLinkHandle};

use crate::WanArgs;
use crate::kv::{Ports, Procs, start_nodes};
use crate::size::format_size;
use crate::stats::{now_us, stamp_of, stamped_payload};

const PRINTER_UUID: &str = "48e60f7c-8500-11eb-8755-0242ac110002";
/// Nodes per cluster.
const NODES: usize = 3;
/// The cloud cluster's id (the edge keeps the default): two clusters on one machine
/// must not merge.
const CLOUD_CLUSTER_ID: u64 = 0xc10d;
/// Keys the e2e probes cycle through (one probe in flight at a time).
const E2E_KEYS: usize = 8;
/// Unmeasured probes before the measured ones of each e2e case.
const E2E_WARMUP_PROBES: usize = 10;
/// Keys each throughput client cycles through.
const KEYS_PER_CLIENT: usize = 64;
/// Unmeasured sending before each throughput window.
const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);
/// The longest one probe's result may take to reach the cloud.
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the baseline's outbox may take to drain before the delayed cases.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Machine busy above this share of its cores counts as CPU-bound.
const CPU_BOUND_SHARE: f64 = 0.85;

/// One measured case.
#[derive(Debug, Serialize)]
struct Row {
    bench: &'static str,
    system: &'static str,
    case: String,
    p50_us: u64,
    p99_us: u64,
    /// e2e: probes per second (one at a time); throughput: results per second arriving
    /// at the cloud.
    ops_per_s: f64,
    /// The link's added one-way delay.
    delay_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_puts_per_s: Option<f64>,
    /// Results not yet at the cloud at the window's end (accepted at the edge).
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog_end: Option<u64>,
    /// Of which in the edge's WAN outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_entries_end: Option<u64>,
    /// Cores used by this run's processes (harness and nodes) in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    run_cores: Option<f64>,
    /// Share of the machine's cores busy in the window (anything running on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_busy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
}

pub fn run(args: &WanArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("squall-bench-wan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(bench(args, &dir));
    match result {
        Ok(rows) => {
            let _ = std::fs::remove_dir_all(&dir);
            report(args, &rows)
        }
        // Keep the logs for a failed run.
        Err(e) => Err(e.context(format!("node logs in {}", dir.display()))),
    }
}

// ----- the two clusters and the link ----------------------------------------------------

/// Configs of a 3-node cluster on free loopback ports, data under `dir`.
fn cluster_configs(dir: &Path, ports: &mut Ports, http: bool) -> Result<Vec<Config>> {
    let mut configs = config::try_local_cluster(NODES as u32, 20_000, 21_000, dir)?;
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..NODES)
        .map(|_| Ok((ports.fresh()?, ports.fresh()?)))
        .collect::<Result<_>>()?;
    for cfg in &mut configs {
        for (i, peer) in cfg.cluster.peers.iter_mut().enumerate() {
            peer.addr = addrs[i].0.into();
            peer.client_addr = addrs[i].1.into();
        }
        cfg.node.client_addr = addrs[cfg.node.id as usize].1;
        if http {
            cfg.node.http_addr = Some(ports.fresh()?);
        }
    }
    Ok(configs)
}

fn client_addrs(configs: &[Config]) -> Vec<String> {
    configs
        .iter()
        .map(|c| c.node.client_addr.to_string())
        .collect()
}

/// A client once the cluster formed: every node in one view, the default pools there.
async fn formed(addrs: &[String], what: &str, dir: &Path) -> Result<Client> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        if let Ok(c) = Client::connect(addrs, None, Policy::default()).await
            && let Ok((_, m)) = c.members().await
            && m.len() == addrs.len()
            && c.list_pools().await.is_ok_and(|p| p.len() >= 2)
        {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!(
                "the {what} cluster did not form in {} s (logs in {})",
                FORM_TIMEOUT.as_secs(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The edge DFG: what arrives under `/sensors/` passes unchanged (the printer, quiet,
/// stateful so one key's outputs keep their order) to the cloud's `/ingest/`.
fn edge_dfg() -> Bytes {
    Bytes::from(format!(
        r#"[{{
            "id": "5d2c7e61-0b0e-4f3a-9a55-2f6f0e9b7a11",
            "desc": "squall-bench wan: pass inputs to the cloud",
            "graph": [{{
                "pathname": "/sensors/",
                "user_defined_logic_list": ["{PRINTER_UUID}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_hook_list": ["ordered"],
                "user_defined_logic_stateful_list": ["stateful"],
                "user_defined_logic_config_list": [{{"quiet": true}}],
                "destinations": [{{"cloud:/ingest/": "put"}}]
            }}]
        }}]"#
    ))
}

/// Everything a run measures against.
struct Setup {
    edge: Client,
    edge_addrs: Vec<String>,
    edge_http: Vec<SocketAddr>,
    cloud: Client,
    link: WanLinkHandle,
    /// The link's tasks live as long as this does.
    _wan: WanLink,
    /// Node processes: killed when dropped.
    procs: Vec<Procs>,
    batch_max: usize,
    outbox_shards: usize,
}

impl Setup {
    fn pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .flat_map(|p| p.0.iter().map(std::process::Child::id))
            .collect()
    }
}

async fn setup(dir: &Path) -> Result<Setup> {
    let plugin = crate::trigger::plugin("printer")?;
    let mut ports = Ports::default();

    // The cloud: its own cluster id and site, the pool results go to.
    let cloud_dir = dir.join("cloud");
    let mut cloud_configs = cluster_configs(&cloud_dir, &mut ports, false)?;
    for cfg in &mut cloud_configs {
        cfg.cluster.id = CLOUD_CLUSTER_ID;
        cfg.site = Some(SiteSection {
            name: "cloud".into(),
            kind: SiteKind::Cloud,
        });
    }
    let cloud_procs = start_nodes(&cloud_dir, &cloud_configs)?;
    let cloud_addrs = client_addrs(&cloud_configs);
    let cloud = formed(&cloud_addrs, "cloud", &cloud_dir).await?;
    cloud
        .create_pool(PoolSpec::new("/ingest", StoreKind::Persistent, 1))
        .await
        .context("the cloud's /ingest pool")?;

    // The WAN: one proxied address per cloud node, no delay yet.
    let specs = cloud_addrs
        .iter()
        .map(|a| LinkSpec::new("127.0.0.1:0".parse().expect("an address"), a.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let wan = WanLink::start(specs, LinkSettings::default()).await?;
    let link = wan.handle();
    let proxied: Vec<String> = wan.listen_addrs().iter().map(ToString::to_string).collect();

    // The edge reaches the cloud only through the link.
    let edge_dir = dir.join("edge");
    let mut edge_configs = cluster_configs(&edge_dir, &mut ports, true)?;
    for cfg in &mut edge_configs {
        cfg.site = Some(SiteSection {
            name: "edge".into(),
            kind: SiteKind::Edge,
        });
        cfg.remotes = vec![Remote {
            name: "cloud".into(),
            addresses: proxied.clone(),
            token: None,
            address_map: cloud_addrs.iter().cloned().zip(proxied.clone()).collect(),
        }];
    }
    let batch_max = edge_configs[0].wan.batch_max;
    let outbox_shards = edge_configs[0]
        .outbox_subgroup()
        .and_then(|g| edge_configs[0].layout.subgroups.get(g as usize - 1))
        .map_or(1, |sg| sg.shards as usize);
    let edge_http: Vec<SocketAddr> = edge_configs
        .iter()
        .filter_map(|c| c.node.http_addr)
        .collect();
    let edge_procs = start_nodes(&edge_dir, &edge_configs)?;
    let edge_addrs = client_addrs(&edge_configs);
    let edge = formed(&edge_addrs, "edge", &edge_dir).await?;
    edge.create_pool(PoolSpec::new("/sensors", StoreKind::Persistent, 1))
        .await
        .context("the edge's /sensors pool")?;
    edge.upload_udl("printer", Bytes::from(std::fs::read(&plugin)?))
        .await
        .context("uploading the printer plugin")?;
    edge.add_dfgs(edge_dfg()).await.context("the edge DFG")?;

    Ok(Setup {
        edge,
        edge_addrs,
        edge_http,
        cloud,
        link,
        _wan: wan,
        procs: vec![cloud_procs, edge_procs],
        batch_max,
        outbox_shards,
    })
}

// ----- measuring --------------------------------------------------------------------------

async fn bench(args: &WanArgs, dir: &Path) -> Result<Vec<Row>> {
    let s = setup(dir).await?;
    let mut rows = Vec::new();
    let mut delays = vec![0];
    if args.delay_ms > 0 {
        delays.push(args.delay_ms);
    }
    let last = delays.len() - 1;
    for (n, &delay_ms) in delays.iter().enumerate() {
        let jitter_ms = if delay_ms == 0 { 0 } else { args.jitter_ms };
        s.link.set_delay(delay_ms, jitter_ms)?;
        let suffix = if jitter_ms > 0 {
            format!("delay {delay_ms}ms jitter {jitter_ms}ms")
        } else {
            format!("delay {delay_ms}ms")
        };
        let row = e2e(&s, args, delay_ms, &suffix).await?;
        progress(args, &row);
        rows.push(row);
        // The next case starts with nothing in flight.
        let after = if n < last {
            AfterWindow::Drain
        } else {
            AfterWindow::Leave
        };
        let row = throughput(&s, args, delay_ms, &suffix, after).await?;
        progress(args, &row);
        rows.push(row);
    }
    Ok(rows)
}

fn progress(args: &WanArgs, row: &Row) {
    if !args.json {
        eprintln!(
            "  {}: p50 {} µs, p99 {} µs, {:.0}/s{}",
            row.case,
            row.p50_us,
            row.p99_us,
            row.ops_per_s,
            row.limit
                .as_ref()
                .map(|l| format!(" (limit: {l})"))
                .unwrap_or_default()
        );
    }
}

/// Waits for the watch event of `key` whose payload carries `stamp`.
async fn await_result(
    events: &mut tokio::sync::mpsc::Receiver<squall_adapters::wire::WatchEvent>,
    key: &str,
    stamp: u64,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "no result for {key} at the cloud in {} s",
                    RESULT_TIMEOUT.as_secs()
                )
            })?
            .ok_or_else(|| anyhow!("the cloud's watch ended"))?;
        if event.key == key && event.blob.as_deref().and_then(stamp_of) == Some(stamp) {
            return Ok(());
        }
    }
}

async fn e2e(s: &Setup, args: &WanArgs, delay_ms: u64, suffix: &str) -> Result<Row> {
    let mut events = s.cloud.watch("/ingest/").await?;
    let mut hist = Histogram::<u64>::new(3)?;
    let mut measured = Duration::ZERO;
    let probes = usize::try_from(args.probes)?;
    for i in 0..E2E_WARMUP_PROBES + probes {
        let k = i % E2E_KEYS;
        let payload = stamped_payload(args.size);
        let stamp = stamp_of(&payload).expect("a stamped payload");
        let started = Instant::now();
        s.edge.put(&format!("/sensors/e2e-{k}"), payload).await?;
        await_result(&mut events, &format!("/ingest/e2e-{k}"), stamp).await?;
        let latency = started.elapsed();
        if i >= E2E_WARMUP_PROBES {
            hist.record(latency.as_micros() as u64)?;
            measured += latency;
        }
    }
    Ok(Row {
        bench: "wan",
        system: "squall",
        case: format!("e2e {} {suffix}", format_size(args.size)),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        ops_per_s: hist.len() as f64 / measured.as_secs_f64().max(1e-9),
        delay_ms,
        edge_puts_per_s: None,
        backlog_end: None,
        outbox_entries_end: None,
        run_cores: None,
        machine_busy: None,
        limit: None,
    })
}

/// What `throughput` does once the window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterWindow {
    /// Waits until every input's result reached the cloud (the next case starts clean).
    Drain,
    /// Returns at once (the last case).
    Leave,
}

async fn throughput(
    s: &Setup,
    args: &WanArgs,
    delay_ms: u64,
    suffix: &str,
    after: AfterWindow,
) -> Result<Row> {
    let mut events = s.cloud.watch("/ingest/").await?;
    let start = Instant::now() + THROUGHPUT_WARMUP;
    let end = start + Duration::from_secs_f64(args.seconds);

    // The cloud side: every result of this case, those of the window with their latency
    // from the send stamp.
    let stop = Arc::new(AtomicBool::new(false));
    let arrived_total = Arc::new(AtomicU64::new(0));
    let counter = {
        let (stop, arrived_total) = (Arc::clone(&stop), Arc::clone(&arrived_total));
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("a histogram");
            let mut arrived_in_window = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(event) =
                    tokio::time::timeout(Duration::from_millis(100), events.recv()).await
                else {
                    continue;
                };
                let Some(event) = event else {
                    return Err(anyhow!("the cloud's watch ended"));
                };
                if !event.key.starts_with("/ingest/t") {
                    continue;
                }
                arrived_total.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if now < start || now >= end {
                    continue;
                }
                arrived_in_window += 1;
                if let Some(sent) = event.blob.as_deref().and_then(stamp_of) {
                    hist.record(now_us().saturating_sub(sent))?;
                }
            }
            anyhow::Ok((arrived_in_window, hist))
        })
    };

    // The edge side: closed loops putting as fast as they can.
    let puts_in_window = Arc::new(AtomicU64::new(0));
    let puts_total = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for c in 0..usize::try_from(args.concurrency)? {
        let mut addrs = s.edge_addrs.clone();
        let nodes = addrs.len();
        addrs.rotate_left(c % nodes);
        let client = Client::connect(&addrs, None, Policy::default()).await?;
        let size = args.size;
        let (in_window, total) = (Arc::clone(&puts_in_window), Arc::clone(&puts_total));
        producers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < end {
                let key = format!("/sensors/t{c}-{}", i % KEYS_PER_CLIENT);
                client.put(&key, stamped_payload(size)).await?;
                total.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if now >= start && now < end {
                    in_window.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu = CpuSample::take(&s.pids());
    tokio::time::sleep_until(end.into()).await;
    let (run_cores, machine_busy) = cpu.since(&s.pids());
    // Accepted at the edge, not yet at the cloud: in the outbox, or before it.
    let backlog = puts_total
        .load(Ordering::Relaxed)
        .saturating_sub(arrived_total.load(Ordering::Relaxed));
    let outbox = outbox_depth(&s.edge_http).await;
    for p in producers {
        p.await??;
    }
    if after == AfterWindow::Drain {
        let started = Instant::now();
        while arrived_total.load(Ordering::Relaxed) < puts_total.load(Ordering::Relaxed) {
            if started.elapsed() > DRAIN_TIMEOUT {
                bail!(
                    "{} of {} results reached the cloud in the {} s after the window",
                    arrived_total.load(Ordering::Relaxed),
                    puts_total.load(Ordering::Relaxed),
                    DRAIN_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !args.json {
            eprintln!(
                "  every result reached the cloud {:.1} s after the window",
                started.elapsed().as_secs_f64()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (arrived, hist) = counter.await??;

    let seconds = args.seconds;
    let rate = arrived as f64 / seconds;
    let edge_rate = puts_in_window.load(Ordering::Relaxed) as f64 / seconds;
    let measured = Measured {
        delay_ms,
        rate,
        edge_rate,
        backlog,
        outbox,
        machine_busy,
    };
    Ok(Row {
        bench: "wan",
        system: "squall",
        case: format!(
            "throughput {} c{} {suffix}",
            format_size(args.size),
            args.concurrency
        ),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        ops_per_s: rate,
        delay_ms,
        edge_puts_per_s: Some(edge_rate),
        backlog_end: Some(backlog),
        outbox_entries_end: outbox,
        run_cores,
        machine_busy,
        limit: Some(limit(s, &measured)),
    })
}

/// What a throughput case measured, for [`limit`].
#[derive(Debug)]
struct Measured {
    delay_ms: u64,
    /// Results per second arriving at the cloud.
    rate: f64,
    /// Puts per second the edge accepted.
    edge_rate: f64,
    /// Accepted at the edge and not at the cloud, at the window's end.
    backlog: u64,
    /// Of which in the outbox.
    outbox: Option<u64>,
    machine_busy: Option<f64>,
}

/// What limited a throughput case, from what was measured. The edge takes puts at its
/// own pace (they are answered once stored, before the UDL runs), so a slower stage
/// after it shows as a backlog: in the outbox when the link is the bottleneck, before
/// it (UDL queues, the outbox puts) when the edge's own pipeline is.
fn limit(s: &Setup, m: &Measured) -> String {
    let busy = m
        .machine_busy
        .map_or_else(|| "?".to_string(), |b| format!("{:.0}%", b * 100.0));
    let cpu = if m.machine_busy.is_some_and(|b| b >= CPU_BOUND_SHARE) {
        format!("CPU-bound: machine {busy} busy")
    } else {
        format!("machine {busy} busy")
    };
    if m.rate >= 0.9 * m.edge_rate {
        return format!("the edge's puts ({cpu}); the WAN path kept up");
    }
    let in_outbox = m.outbox.unwrap_or(0);
    if in_outbox * 2 >= m.backlog {
        let window = (s.batch_max * s.outbox_shards) as f64;
        let bound = if m.delay_ms > 0 {
            format!(
                "<= {:.0}/s: {window} entries per {} ms round trip",
                window * 1000.0 / (2 * m.delay_ms) as f64,
                2 * m.delay_ms
            )
        } else {
            "one batch in flight per outbox shard".to_string()
        };
        return format!(
            "the link: {in_outbox} of {} waiting entries in the outbox ({bound}); {cpu}",
            m.backlog
        );
    }
    format!(
        "the edge before the outbox (UDL runs and outbox puts): {} of {} waiting entries \
         not yet in the outbox; {cpu}",
        m.backlog - in_outbox,
        m.backlog
    )
}

/// The outbox depth: the largest `squall_wan_outbox_entries` over the edge nodes (each
/// replica of an outbox shard holds its whole queue). `None` if no node answered.
async fn outbox_depth(http: &[SocketAddr]) -> Option<u64> {
    let mut depth = None;
    for &addr in http {
        if let Some(n) = metric(addr, "squall_wan_outbox_entries").await {
            depth = Some(depth.unwrap_or(0).max(n as u64));
        }
    }
    depth
}

/// A `/metrics` series' value on one node (summed over its label sets), over plain HTTP.
async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .ok()??;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

// ----- CPU --------------------------------------------------------------------------------

/// CPU seconds of a process (user + system), from `/proc/<pid>/stat`.
fn process_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The machine's busy and total CPU time, in ticks, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// CPU use of this run's processes and of the machine from one moment on.
struct CpuSample {
    run_cpu_s: Option<f64>,
    machine: Option<(u64, u64)>,
    at: Instant,
}

fn run_cpu_s(pids: &[u32]) -> Option<f64> {
    let mut total = process_cpu_s("self")?;
    for pid in pids {
        total += process_cpu_s(&pid.to_string())?;
    }
    Some(total)
}

impl CpuSample {
    fn take(pids: &[u32]) -> CpuSample {
        CpuSample {
            run_cpu_s: run_cpu_s(pids),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    /// (cores this run used, share of the machine busy) since `take`.
    fn since(&self, pids: &[u32]) -> (Option<f64>, Option<f64>) {
        let elapsed = self.at.elapsed().as_secs_f64();
        let run = match (self.run_cpu_s, run_cpu_s(pids)) {
            (Some(then), Some(now)) if elapsed > 0.0 => Some((now - then).max(0.0) / elapsed),
            _ => None,
        };
        let machine = match (self.machine, machine_ticks()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                Some((busy1 - busy0) as f64 / (total1 - total0) as f64)
            }
            _ => None,
        };
        (run, machine)
    }
}

// ----- the report -------------------------------------------------------------------------

fn report(args: &WanArgs, rows: &[Row]) -> Result<()> {
    if args.json {
        for row in rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    println!(
        "{:<8} {:<40} {:>9} {:>9} {:>7} {:>7} {:>8} {:>7} {:>6} {:>5}",
        "system",
        "case",
        "p50 µs",
        "p99 µs",
        "ops/s",
        "edge/s",
        "backlog",
        "outbox",
        "cores",
        "busy"
    );
    for r in rows {
        let opt_f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        println!(
            "{:<8} {:<40} {:>9} {:>9} {:>7.0} {:>7} {:>8} {:>7} {:>6} {:>5}",
            r.system,
            r.case,
            r.p50_us,
            r.p99_us,
            r.ops_per_s,
            opt_f(r.edge_puts_per_s, 0),
            r.backlog_end.map_or("-".to_string(), |n| n.to_string()),
            r.outbox_entries_end
                .map_or("-".to_string(), |n| n.to_string()),
            opt_f(r.run_cores, 2),
            r.machine_busy
                .map_or("-".to_string(), |b| format!("{:.0}%", b * 100.0)),
        );
    }
    println!("\n(ops/s: e2e probes one at a time; throughput: results arriving at the cloud.");
    println!(" edge/s: puts the edge accepted; backlog: accepted, not yet at the cloud, at the");
    println!(" window's end; outbox: of which in the edge's WAN outbox;");
    println!(" cores: used by this run's processes, of {cores}; busy: the whole machine)");
    for r in rows.iter().filter_map(|r| r.limit.as_ref().map(|l| (r, l))) {
        println!("limit, {}: {}", r.0.case, r.1);
    }
    println!(
        "\nratios (delay {} ms / delay 0 ms, same case)",
        args.delay_ms
    );
    for r in rows.iter().filter(|r| r.delay_ms > 0) {
        let kind = r.case.split(" delay").next().unwrap_or_default();
        let Some(base) = rows
            .iter()
            .find(|b| b.delay_ms == 0 && b.case.split(" delay").next() == Some(kind))
        else {
            continue;
        };
        println!(
            "{:<28} p50 {:>7.2}x  p99 {:>7.2}x  ops/s {:>6.2}x",
            kind,
            r.p50_us as f64 / base.p50_us.max(1) as f64,
            r.p99_us as f64 / base.p99_us.max(1) as f64,
            r.ops_per_s / base.ops_per_s.max(1e-9)
        );
    }
    Ok(())
}
