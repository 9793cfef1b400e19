//! `squall-bench kv`: put and get latency and throughput of the object store (3 node
//! processes, 3 replicas) beside Redis (a primary and one replica: SET, SET + WAIT 1,
//! GET) and a 3-member etcd (put, linearizable get), all on this machine in the same run.
//!
//! Every case is a closed loop: `clients` concurrent clients, each with its own
//! connection, issue one request after another for `seconds`; latency is per request,
//! throughput is completed requests per second. Redis and etcd come from Debian
//! (`redis-server`, `etcd-server`); the harness installs them with apt when missing and
//! starts and stops its own instances on free loopback ports. Their clients here are
//! minimal RESP and HTTP/JSON (etcd's v3 gateway) clients, so the build stays lean; they
//! speak keep-alive connections like any real client.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use squall_adapters::client::{Client, Policy};
use squall_adapters::config::{self, Config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::KvArgs;
use crate::resp::{Redis, Value};
use crate::size::{format_rate, format_size};

/// Distinct keys each client cycles through.
const KEYS_PER_CLIENT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvSystem {
    Squall,
    Redis,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvOp {
    Put,
    Get,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvStore {
    Volatile,
    Persistent,
}

#[derive(Debug, Serialize)]
struct Row {
    bench: &'static str,
    system: String,
    case: String,
    p50_us: u64,
    p99_us: u64,
    ops_per_s: f64,
    bytes_per_s: f64,
}

/// One measured operation kind of one system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    SquallPut { persistent: bool },
    SquallGet { persistent: bool },
    RedisSet { wait_replica: bool },
    RedisGet,
    EtcdPut,
    EtcdGet,
}

impl Workload {
    fn op(self) -> KvOp {
        match self {
            Workload::SquallGet { .. } | Workload::RedisGet | Workload::EtcdGet => KvOp::Get,
            _ => KvOp::Put,
        }
    }

    fn system(self) -> &'static str {
        match self {
            Workload::SquallPut { .. } | Workload::SquallGet { .. } => "squall",
            Workload::RedisSet { .. } | Workload::RedisGet => "redis",
            Workload::EtcdPut | Workload::EtcdGet => "etcd",
        }
    }

    /// The case name shared by comparable rows of different systems.
    fn case(self, size: usize, clients: usize) -> String {
        let what = match self {
            Workload::SquallPut { persistent: false } => "put volatile",
            Workload::SquallPut { persistent: true } => "put persistent",
            Workload::SquallGet { persistent: false } => "get volatile",
            Workload::SquallGet { persistent: true } => "get persistent",
            Workload::RedisSet { wait_replica: true } => "put volatile",
            Workload::RedisSet {
                wait_replica: false,
            } => "put volatile no-wait",
            Workload::RedisGet => "get volatile",
            Workload::EtcdPut => "put persistent",
            Workload::EtcdGet => "get persistent",
        };
        format!("{what} {} r3 c{clients}", format_size(size))
    }
}

/// A loopback address whose port was free a moment ago. Two calls can return the same
/// one (the port is released at once and may come back): take a run's addresses from
/// one [`Ports`].
fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Addresses not handed out before in this run. Without it, two addresses of one
/// cluster could share a port: a node then refuses its config ("every node-to-node and
/// client address must be distinct"), or two Redis or etcd processes fight over it.
#[derive(Default)]
pub(crate) struct Ports(BTreeSet<SocketAddr>);

impl Ports {
    pub(crate) fn fresh(&mut self) -> Result<SocketAddr> {
        loop {
            let a = free_addr()?;
            if self.0.insert(a) {
                return Ok(a);
            }
        }
    }
}

/// Kills its processes however the run ends.
pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: &KvArgs) -> Result<()> {
    let systems = if args.systems.is_empty() {
        vec![KvSystem::Squall, KvSystem::Redis, KvSystem::Etcd]
    } else {
        args.systems.clone()
    };
    let dir = std::env::temp_dir().join(format!("squall-bench-kv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for system in systems {
        let result = match system {
            KvSystem::Squall => runtime.block_on(bench_squall(args, &dir.join("squall"))),
            KvSystem::Redis => runtime.block_on(bench_redis(args, &dir.join("redis"))),
            KvSystem::Etcd => runtime.block_on(bench_etcd(args, &dir.join("etcd"))),
        };
        match result {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                eprintln!("{system:?}: not measured: {e:#}");
                failed.push(format!("{system:?}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(args, &rows)?;
    not_measured(&failed)
}

/// The run's verdict once what was measured is reported: a run that did not measure a
/// system it was asked for fails, so a script reading only the exit status cannot take
/// a partial table for a full one.
pub(crate) fn not_measured(failed: &[String]) -> Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("not measured: {} (why: above)", failed.join(", "))
    }
}

fn report(args: &KvArgs, rows: &[Row]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        for row in rows {
            writeln!(out, "{}", serde_json::to_string(row)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<8} {:<36} {:>9} {:>9} {:>11} {:>12}",
        "system", "case", "p50 µs", "p99 µs", "ops/s", "bytes/s"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<8} {:<36} {:>9} {:>9} {:>11.0} {:>12}",
            row.system,
            row.case,
            row.p50_us,
            row.p99_us,
            row.ops_per_s,
            format_rate(row.bytes_per_s)
        )?;
    }
    writeln!(
        out,
        "\nratios (squall / peer, same case; latency: lower is better)"
    )?;
    for row in rows.iter().filter(|r| r.system == "squall") {
        for peer in rows
            .iter()
            .filter(|r| r.system != "squall" && r.case == row.case)
        {
            writeln!(
                out,
                "{:<36} vs {:<6} p50 {:>6.2}x  ops/s {:>6.2}x",
                row.case,
                peer.system,
                row.p50_us as f64 / peer.p50_us.max(1) as f64,
                row.ops_per_s / peer.ops_per_s.max(1e-9)
            )?;
        }
    }
    Ok(())
}

/// Keys a closed loop touches per client in its unmeasured warm-up.
const WARM_KEYS: usize = 16;
const _: () = assert!(WARM_KEYS <= KEYS_PER_CLIENT);

/// Runs `clients` closed loops of `op` for the measured window; `op(client, i)` does
/// request `i` of that client, on its key `i % KEYS_PER_CLIENT`. Returns the row and, per
/// client, how many of its keys (`0..n`) the loop touched: after a put phase, the keys
/// that hold the value (a short window at 1 MiB may not reach them all).
async fn closed_loop<F, Fut>(
    workload: Workload,
    size: usize,
    clients: usize,
    seconds: f64,
    op: F,
) -> Result<(Row, Vec<usize>)>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    // Warm up first, unmeasured.
    each_client(&op, clients, |_| 0..WARM_KEYS).await?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("a histogram");
            let mut i = 0;
            while Instant::now() < end {
                let t = Instant::now();
                op(c, i).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                i += 1;
            }
            anyhow::Ok((hist, i.clamp(WARM_KEYS, KEYS_PER_CLIENT)))
        }));
    }
    let started = Instant::now();
    let mut all = Histogram::<u64>::new(3)?;
    let mut touched = Vec::with_capacity(clients);
    for t in tasks {
        let (hist, keys) = t.await??;
        all.add(hist)?;
        touched.push(keys);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = all.len() as f64 / elapsed;
    let row = Row {
        bench: "kv",
        system: workload.system().to_string(),
        case: workload.case(size, clients),
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        ops_per_s: ops,
        bytes_per_s: ops * size as f64,
    };
    Ok((row, touched))
}

/// Writes, unmeasured, every key a get phase will read that no put phase wrote yet
/// (`written[c]`: client `c`'s keys `0..written[c]` hold the value), with `put(client,
/// i)`. A get that finds nothing is a different and cheaper operation than reading a
/// value: without this, a run of gets alone, or one after a put window too short to
/// reach every key, would time misses.
async fn fill_keys<F, Fut>(written: &[usize], clients: usize, put: F) -> Result<()>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let from = |c: usize| written.get(c).copied().unwrap_or(0);
    each_client(&Arc::new(put), clients, |c| from(c)..KEYS_PER_CLIENT).await
}

/// Runs `op(c, i)` for every `i` of `requests(c)` in order, for every client `c` at once,
/// unmeasured.
async fn each_client<F, Fut>(
    op: &Arc<F>,
    clients: usize,
    requests: impl Fn(usize) -> std::ops::Range<usize>,
) -> Result<()>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, requests) = (Arc::clone(op), requests(c));
        tasks.push(tokio::spawn(async move {
            for i in requests {
                op(c, i).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The length of the value in etcd's JSON answer to a range if it is `encoded_len`
/// base64 characters; `None` if there is no value (the key was not found) or it has
/// another length. Looked up, not parsed, so the check costs etcd's row next to nothing
/// even at 1 MiB: the value is the first field named `value`, and as base64 holds no
/// quotes, its closing quote must be the first quote after its opening one, exactly
/// `encoded_len` characters on (a byte search, `memchr` under `<[u8]>::contains`).
fn etcd_value_len(answer: &[u8], encoded_len: usize) -> Option<usize> {
    const FIELD: &[u8] = b"\"value\":\"";
    let start = answer.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let end = start + encoded_len;
    let closed = answer.get(end) == Some(&b'"');
    (closed && !answer.get(start..end)?.contains(&b'"')).then_some(encoded_len)
}

/// A measured get must read back what the puts wrote: `read` is the length of the value
/// it found, `None` for a miss. Anything else fails the run instead of showing as a fast
/// row.
fn check_read(system: &str, key: &str, read: Option<usize>, size: usize) -> Result<()> {
    match read {
        Some(n) if n == size => Ok(()),
        Some(n) => bail!("{system}: a get of {key} read {n} bytes, not the {size} written"),
        None => bail!("{system}: a get of {key} found nothing, though it was written first"),
    }
}

fn value(size: usize) -> Bytes {
    Bytes::from(vec![0x5a; size])
}

// ----- squall -------------------------------------------------------------------------

/// Starts one `kv-node` process per config (configs and logs in `dir`).
pub(crate) fn start_nodes(dir: &Path, configs: &[Config]) -> Result<Procs> {
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let mut procs = Procs(Vec::new());
    for cfg in configs {
        cfg.validate()
            .with_context(|| format!("node {} of {}", cfg.node.id, dir.display()))?;
        let path = dir.join(format!("n{}.toml", cfg.node.id));
        std::fs::write(&path, cfg.to_toml_string())?;
        let log = std::fs::File::create(dir.join(format!("n{}.log", cfg.node.id)))?;
        procs.0.push(
            Command::new(&exe)
                .args(["kv-node", "--config"])
                .arg(&path)
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()?,
        );
    }
    Ok(procs)
}

/// Starts a 3-node Squall cluster (this binary's hidden `kv-node`) with objects up to
/// 16 MiB; returns its processes and client addresses once every node sees all members.
pub(crate) async fn start_squall(dir: &Path) -> Result<(Procs, Vec<String>)> {
    std::fs::create_dir_all(dir)?;
    let mut configs = config::try_local_cluster(3, 20_000, 21_000, dir)?;
    let mut ports = Ports::default();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| Ok((ports.fresh()?, ports.fresh()?)))
        .collect::<Result<_>>()?;
    for cfg in &mut configs {
        for (i, peer) in cfg.cluster.peers.iter_mut().enumerate() {
            peer.addr = addrs[i].0.into();
            peer.client_addr = addrs[i].1.into();
        }
        cfg.node.client_addr = addrs[cfg.node.id as usize].1;
        cfg.limits.object_bytes_max = 16 << 20;
        cfg.limits.frame_bytes_max = (16 << 20) + 8192;
    }
    let procs = start_nodes(dir, &configs)?;
    let client_addrs: Vec<String> = configs
        .iter()
        .map(|c| c.node.client_addr.to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = Client::connect(&client_addrs, None, Policy::default()).await
            && let Ok((_, m)) = c.members().await
            && m.len() == 3
            && c.list_pools().await.is_ok_and(|p| p.len() >= 2)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the squall cluster did not form in 30 s (logs in {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((procs, client_addrs))
}

async fn bench_squall(args: &KvArgs, dir: &Path) -> Result<Vec<Row>> {
    let (procs, client_addrs) = start_squall(dir).await?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for &clients in &args.clients {
            for persistent in [false, true] {
                let store = if persistent {
                    KvStore::Persistent
                } else {
                    KvStore::Volatile
                };
                if !args.stores.contains(&store) {
                    continue;
                }
                let pool = if persistent { "/demo" } else { "/cache" };
                let mut conns = Vec::new();
                for c in 0..clients {
                    // Spread clients over the nodes, as a deployment would.
                    let mut a = client_addrs.clone();
                    let n = a.len();
                    a.rotate_left(c % n);
                    conns.push(Client::connect(&a, None, Policy::default()).await?);
                }
                let conns = Arc::new(conns);
                let blob = value(size);
                let put = move |conns: Arc<Vec<Client>>, blob: Bytes| {
                    move |c: usize, i: usize| {
                        let (conns, blob) = (Arc::clone(&conns), blob.clone());
                        async move {
                            let key = format!("{pool}/b{c}-{}", i % KEYS_PER_CLIENT);
                            conns[c].put(&key, blob).await?;
                            Ok(())
                        }
                    }
                };
                let mut written = vec![0; clients];
                for get in [false, true] {
                    if !args.ops.contains(if get { &KvOp::Get } else { &KvOp::Put }) {
                        continue;
                    }
                    let (conns, blob) = (Arc::clone(&conns), blob.clone());
                    let (row, touched) = if get {
                        fill_keys(&written, clients, put(Arc::clone(&conns), blob)).await?;
                        let workload = Workload::SquallGet { persistent };
                        closed_loop(workload, size, clients, args.seconds, move |c, i| {
                            let conns = Arc::clone(&conns);
                            async move {
                                let key = format!("{pool}/b{c}-{}", i % KEYS_PER_CLIENT);
                                let read = conns[c].get(&key).await?.map(|o| o.blob.len());
                                check_read("squall", &key, read, size)
                            }
                        })
                        .await?
                    } else {
                        let workload = Workload::SquallPut { persistent };
                        closed_loop(workload, size, clients, args.seconds, put(conns, blob)).await?
                    };
                    if !get {
                        written = touched;
                    }
                    print_progress(args, &row);
                    rows.push(row);
                }
            }
        }
    }
    drop(procs);
    Ok(rows)
}

fn print_progress(args: &KvArgs, row: &Row) {
    if !args.json {
        eprintln!(
            "  {} {}: p50 {} µs, {:.0} ops/s",
            row.system, row.case, row.p50_us, row.ops_per_s
        );
    }
}

/// The hidden `kv-node` subcommand: one Squall node process.
pub fn node_main(config: &Path) -> Result<()> {
    let config = Config::load(config)?;
    // As `squall node` runs: one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        squall_adapters::node::run(config, shutdown).await
    })?;
    Ok(())
}

// ----- peers: installation --------------------------------------------------------------

/// The path of `binary`, installing the Debian `packages` first if it is missing.
pub(crate) fn ensure_installed(binary: &str, packages: &[&str]) -> Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(binary))
                .find(|p| p.is_file())
        })
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!(
        "{binary} is missing: installing {} with apt",
        packages.join(" ")
    );
    let status = Command::new("apt-get")
        .arg("update")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    find().ok_or_else(|| anyhow!("{binary} is still missing after installing"))
}

pub(crate) async fn wait_port(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A no-delay loopback connection, split for the peer clients below.
pub(crate) async fn split_connection(
    addr: SocketAddr,
) -> Result<(
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
)> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s.into_split())
}

// ----- redis ----------------------------------------------------------------------------

/// Starts a Redis primary and an in-sync replica on free loopback ports.
pub(crate) async fn start_redis(dir: &Path) -> Result<(Procs, SocketAddr, SocketAddr)> {
    let server = ensure_installed("redis-server", &["redis-server", "redis-tools"])?;
    std::fs::create_dir_all(dir)?;
    let mut ports = Ports::default();
    let (primary, replica) = (ports.fresh()?, ports.fresh()?);
    let mut procs = Procs(Vec::new());
    for (addr, replica_of) in [(primary, None), (replica, Some(primary))] {
        let mut cmd = Command::new(&server);
        cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.port().to_string()]);
        }
        procs.0.push(cmd.spawn().context("starting redis-server")?);
        wait_port(addr, "redis-server").await?;
    }
    // The replica must be in sync before WAIT 1 means anything.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Redis::connect(primary).await?;
        c.call(&[b"SET", b"sync-probe", b"1"]).await?;
        let mut r = Redis::connect(replica).await?;
        if matches!(
            r.call(&[b"GET", b"sync-probe"]).await?,
            Value::Bulk(Some(_))
        ) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the redis replica did not sync in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((procs, primary, replica))
}

async fn bench_redis(args: &KvArgs, dir: &Path) -> Result<Vec<Row>> {
    let (procs, primary, _replica) = start_redis(dir).await?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for &clients in &args.clients {
            let mut written = vec![0; clients];
            for workload in [
                Workload::RedisSet { wait_replica: true },
                Workload::RedisSet {
                    wait_replica: false,
                },
                Workload::RedisGet,
            ] {
                if !args.ops.contains(&workload.op()) {
                    continue;
                }
                let mut conns = Vec::new();
                for _ in 0..clients {
                    conns.push(tokio::sync::Mutex::new(Redis::connect(primary).await?));
                }
                let conns = Arc::new(conns);
                let blob = value(size);
                let op = move |workload: Workload| {
                    let (conns, blob) = (Arc::clone(&conns), blob.clone());
                    move |c: usize, i: usize| {
                        let (conns, blob) = (Arc::clone(&conns), blob.clone());
                        async move {
                            let key = format!("b{c}-{}", i % KEYS_PER_CLIENT);
                            let mut conn = conns[c].lock().await;
                            match workload {
                                Workload::RedisGet => {
                                    let read = match conn.call(&[b"GET", key.as_bytes()]).await? {
                                        Value::Bulk(value) => value.map(|v| v.len()),
                                        other => bail!("redis: GET {key} answered {other:?}"),
                                    };
                                    check_read("redis", &key, read, size)?;
                                }
                                Workload::RedisSet { wait_replica } => {
                                    conn.call(&[b"SET", key.as_bytes(), &blob]).await?;
                                    if wait_replica {
                                        conn.call(&[b"WAIT", b"1", b"0"]).await?;
                                    }
                                }
                                _ => unreachable!("redis workloads only"),
                            }
                            Ok(())
                        }
                    }
                };
                if workload.op() == KvOp::Get {
                    let set = op(Workload::RedisSet {
                        wait_replica: false,
                    });
                    fill_keys(&written, clients, set).await?;
                }
                let (row, touched) =
                    closed_loop(workload, size, clients, args.seconds, op(workload)).await?;
                if workload.op() == KvOp::Put {
                    for (w, t) in written.iter_mut().zip(touched) {
                        *w = (*w).max(t);
                    }
                }
                print_progress(args, &row);
                rows.push(row);
            }
        }
    }
    drop(procs);
    Ok(rows)
}

// ----- etcd -----------------------------------------------------------------------------

/// A minimal HTTP/1.1 keep-alive client for etcd's v3 JSON gateway.
struct Http {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    host: String,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Http> {
        let (r, w) = split_connection(addr).await?;
        Ok(Http {
            reader: BufReader::with_capacity(1 << 20, r),
            writer: w,
            host: addr.to_string(),
        })
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.writer.write_all(head.as_bytes()).await?;
        self.writer.write_all(body).await?;
        let mut status = String::new();
        self.reader.read_line(&mut status).await?;
        if !status.contains(" 200 ") {
            bail!("etcd answered `{}`", status.trim());
        }
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>()?);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16)?;
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                body.extend_from_slice(&chunk);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader.read_exact(&mut body).await?;
        }
        Ok(body)
    }
}

async fn bench_etcd(args: &KvArgs, dir: &Path) -> Result<Vec<Row>> {
    let etcd = ensure_installed("etcd", &["etcd-server", "etcd-client"])?;
    std::fs::create_dir_all(dir)?;
    let mut ports = Ports::default();
    let members: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| Ok((ports.fresh()?, ports.fresh()?)))
        .collect::<Result<_>>()?;
    let cluster = members
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(Vec::new());
    for (i, (client, peer)) in members.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
        procs.0.push(
            Command::new(&etcd)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", &format!("http://{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-token", "squall-bench"])
                .args(["--initial-cluster-state", "new"])
                .args(["--max-request-bytes", &(64u64 << 20).to_string()])
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .context("starting etcd")?,
        );
    }
    let b64 = &base64::engine::general_purpose::STANDARD;
    // Ready once a put through the first member succeeds (a leader exists).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut h) = Http::connect(members[0].0).await
            && h.post(
                "/v3/kv/put",
                format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    b64.encode("probe"),
                    b64.encode("1")
                )
                .as_bytes(),
            )
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "etcd did not form a cluster in 30 s (logs in {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for &clients in &args.clients {
            let mut written = vec![0; clients];
            for workload in [Workload::EtcdPut, Workload::EtcdGet] {
                if !args.ops.contains(&workload.op()) {
                    continue;
                }
                let mut conns = Vec::new();
                for c in 0..clients {
                    let addr = members[c % members.len()].0;
                    conns.push(tokio::sync::Mutex::new(Http::connect(addr).await?));
                }
                let conns = Arc::new(conns);
                let encoded = Arc::new(b64.encode(value(size)));
                let op = move |workload: Workload| {
                    let (conns, encoded) = (Arc::clone(&conns), Arc::clone(&encoded));
                    move |c: usize, i: usize| {
                        let (conns, encoded) = (Arc::clone(&conns), Arc::clone(&encoded));
                        async move {
                            let plain = format!("b{c}-{}", i % KEYS_PER_CLIENT);
                            let key = b64.encode(&plain);
                            let mut conn = conns[c].lock().await;
                            match workload {
                                Workload::EtcdPut => {
                                    let body =
                                        format!("{{\"key\":\"{key}\",\"value\":\"{encoded}\"}}");
                                    conn.post("/v3/kv/put", body.as_bytes()).await?;
                                }
                                _ => {
                                    let body = format!("{{\"key\":\"{key}\"}}");
                                    let answer = conn.post("/v3/kv/range", body.as_bytes()).await?;
                                    let read = etcd_value_len(&answer, encoded.len()).map(|_| size);
                                    check_read("etcd", &plain, read, size)?;
                                }
                            }
                            Ok(())
                        }
                    }
                };
                if workload == Workload::EtcdGet {
                    fill_keys(&written, clients, op(Workload::EtcdPut)).await?;
                }
                let (row, touched) =
                    closed_loop(workload, size, clients, args.seconds, op(workload)).await?;
                if workload == Workload::EtcdPut {
                    written = touched;
                }
                print_progress(args, &row);
                rows.push(row);
            }
        }
    }
    drop(procs);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_value_len_finds_a_value_of_the_written_length_only() {
        let found = br#"{"header":{"revision":"7"},"kvs":[{"key":"YjAtMQ==","create_revision":"2","mod_revision":"7","version":"3","value":"WlpaWg=="}],"count":"1"}"#;
        assert_eq!(etcd_value_len(found, 8), Some(8));
        assert_eq!(
            etcd_value_len(found, 4),
            None,
            "a longer value is not the one written"
        );
        assert_eq!(
            etcd_value_len(found, 12),
            None,
            "a shorter value is not the one written"
        );
        let missing = br#"{"header":{"revision":"7"}}"#;
        assert_eq!(etcd_value_len(missing, 8), None);
        let truncated = br#"{"kvs":[{"value":"WlpaWg"#;
        assert_eq!(etcd_value_len(truncated, 8), None);
    }

    #[test]
    fn ports_never_hand_out_an_address_twice() -> Result<()> {
        // The kernel hands a released ephemeral port out again soon enough that a few
        // hundred draws from one run repeat some; the set must refuse them.
        let mut ports = Ports::default();
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            assert!(seen.insert(ports.fresh()?), "an address came back");
        }
        Ok(())
    }

    #[test]
    fn check_read_refuses_a_miss_and_a_wrong_length() {
        assert!(check_read("squall", "/cache/b0-1", Some(1024), 1024).is_ok());
        let Err(miss) = check_read("redis", "b0-1", None, 1024) else {
            panic!("a miss passed the check");
        };
        assert!(miss.to_string().contains("found nothing"), "{miss}");
        let Err(short) = check_read("squall", "/cache/b0-1", Some(10), 1024) else {
            panic!("a short value passed the check");
        };
        assert!(
            short.to_string().contains("read 10 bytes, not the 1024"),
            "{short}"
        );
    }
}
