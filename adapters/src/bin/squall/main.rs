//! `squall`: run a node, start a local cluster, or talk to a cluster.
//!
//! ```text
//! squall up [--nodes 3] [--data DIR]      a local cluster of node processes, kept running
//!                                         (a node that dies is started again; Ctrl-C stops it)
//! squall demo                             a local cluster, a short tour, then stop
//! squall node --config FILE [--node-id-from-hostname]
//!                                         one node (the id from a host name like squall-2)
//! squall put KEY VALUE|@FILE [--if-version V | --if-absent]
//! squall get KEY [--version V | --time T | --stable]
//!                                         T: µs since the epoch, RFC 3339, or "5m ago"
//! squall rm KEY | ls PREFIX [--time T] | members | watch PREFIX
//! squall call KEY VALUE|@FILE             run the UDLs a trigger_put of KEY triggers;
//!                                         print what they emit
//! squall pool create PATH --kind K [--shards N] [--affinity RE] [--override KEY=SHARD]
//!                         [--gpu-cache DEVICE:CAPACITY]   e.g. --gpu-cache 0:8GiB
//! squall pool ls | pool rm PATH
//! ```
//! Client commands find the cluster from `--cluster ADDR`, `SQUALL_CLUSTER`, or the local
//! `up` cluster (127.0.0.1:7200). Errors print one line and exit with status 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use squall_adapters::client::{Client, Policy};
use squall_adapters::config::{self, Config};
use squall_adapters::udl;
use squall_adapters::wire::{At, ErrorCode, WireObject};
use squall_kvs::{Condition, PoolSpec, StoreKind};
use squall_platform::Version;

mod local;
mod moment;

use local::LocalCluster;

const PEER_BASE_PORT: u16 = 7100;
const CLIENT_BASE_PORT: u16 = 7200;
const HTTP_BASE_PORT: u16 = 7300;

#[derive(Parser, Debug)]
#[command(
    name = "squall",
    version,
    about = "Squall: a replicated object store that runs your logic next to the data"
)]
struct Cli {
    /// A node of the cluster (host:port of its client port).
    #[arg(
        long,
        global = true,
        env = "SQUALL_CLUSTER",
        default_value = "127.0.0.1:7200"
    )]
    cluster: String,
    /// Bearer token (if the cluster requires one).
    #[arg(long, global = true, env = "SQUALL_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

/// Where a local cluster's nodes listen (`up`, `demo`).
#[derive(clap::Args, Debug)]
struct Ports {
    /// Node i listens for clients on this port + i.
    #[arg(long, default_value_t = CLIENT_BASE_PORT)]
    client_port: u16,
    /// Node i listens for its peers on this port + i.
    #[arg(long, default_value_t = PEER_BASE_PORT)]
    peer_port: u16,
    /// Node i serves its dashboard, REST API and metrics on this port + i (0: none).
    #[arg(long, default_value_t = HTTP_BASE_PORT)]
    http_port: u16,
}

impl Ports {
    /// `(peer, client, http)` base ports as `LocalCluster::start` takes them.
    fn local(&self) -> (u16, u16, Option<u16>) {
        (
            self.peer_port,
            self.client_port,
            (self.http_port != 0).then_some(self.http_port),
        )
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster of node processes on loopback and keep it running (a node
    /// that crashes or is evicted is started again); Ctrl-C stops it.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Where the nodes keep their data (kept across runs: a restart recovers it).
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        ports: Ports,
        /// TOML merged into every node's config: `[site]`, `[[remotes]]`, `[wan]`,
        /// `[auth]`, `[limits]`, `[cluster] id`, ... (tables merge, other values replace).
        #[arg(long)]
        overlay: Option<PathBuf>,
    },
    /// Start a local cluster, show puts, gets, a time-travel read, a watch and a
    /// compaction, run the example UDL pipeline if it is built, then stop.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        ports: Ports,
    },
    /// Run one node.
    Node {
        #[arg(long)]
        config: PathBuf,
        /// Take node.id from the trailing `-<n>` of this machine's host name (`squall-2`
        /// is node 2): the `HOSTNAME` environment variable, else /etc/hostname. Lets the
        /// pods of a Kubernetes StatefulSet share one config file.
        #[arg(long)]
        node_id_from_hostname: bool,
    },
    /// Check a node's config file (with the `SQUALL__...` environment applied) and print
    /// what it describes; exits 1 with the reason if a node would refuse it.
    CheckConfig {
        config: PathBuf,
        /// As `squall node --node-id-from-hostname`.
        #[arg(long)]
        node_id_from_hostname: bool,
    },
    /// Store a value (`@FILE` reads it from a file).
    Put {
        key: String,
        value: String,
        /// Only if the key's current version is this one.
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<String>,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
    },
    /// Read a value (latest, or as of a version or a time, or the stable one).
    Get {
        key: String,
        #[arg(long, conflicts_with_all = ["time", "stable"])]
        version: Option<String>,
        /// As of a time: microseconds since the Unix epoch (as a put prints), an RFC 3339
        /// time (2026-11-24T03:00:00Z) or a duration back from now ("90s ago", -5m).
        #[arg(long, conflicts_with = "stable", value_parser = moment::parse_arg, allow_hyphen_values = true)]
        time: Option<u64>,
        #[arg(long)]
        stable: bool,
    },
    /// Run the UDLs that a trigger_put of KEY triggers, on a node holding it, and print
    /// what they emit (nothing is stored for the input; `@FILE` reads it from a file).
    Call { key: String, value: String },
    /// Remove a key.
    Rm { key: String },
    /// List the keys under a prefix (now, or at a time).
    Ls {
        prefix: String,
        /// As of a time, in any form `get --time` takes.
        #[arg(long, value_parser = moment::parse_arg, allow_hyphen_values = true)]
        time: Option<u64>,
    },
    /// Object pools.
    Pool {
        #[command(subcommand)]
        command: PoolCmd,
    },
    /// Forget a persistent pool's history before a time (admin): each key keeps its later
    /// versions, or, if not written since, its value then; reads of earlier points
    /// answer `compacted`.
    /// The nodes' logs then drop the files nothing needs (freeing disk).
    Compact {
        pool: String,
        /// The time, in any form `get --time` takes; default now (keep only each key's
        /// latest value).
        #[arg(long, value_parser = moment::parse_arg, allow_hyphen_values = true)]
        before: Option<u64>,
    },
    /// Print every change under a prefix as it happens.
    Watch { prefix: String },
    /// The current view's members.
    Members,
    /// UDL plugins stored in the cluster (admin).
    Udl {
        #[command(subcommand)]
        command: UdlCmd,
    },
    /// Data-flow graphs (Cascade's dfgs.json) in force (admin).
    Dfg {
        #[command(subcommand)]
        command: DfgCmd,
    },
}

#[derive(Subcommand, Debug)]
enum UdlCmd {
    /// Upload a plugin library (`.so`), or a Python UDL (a module `.py`, or a `.zip` of
    /// a package, with `--entry`); it replaces a stored one with the same UUID on every
    /// node, without a restart.
    Upload {
        file: PathBuf,
        /// A name to list it by (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Python UDLs: the class to run, `Class` (in the module the file is) or
        /// `module:Class` (a module inside a zipped package).
        #[arg(long)]
        entry: Option<String>,
        /// Python UDLs: the UUID DFGs name it by (default: derived from module and
        /// class, so a new version replaces the old).
        #[arg(long)]
        uuid: Option<String>,
    },
    Ls,
    Rm {
        uuid: String,
    },
}

#[derive(Subcommand, Debug)]
enum DfgCmd {
    /// Add the DFGs of a dfgs.json file (refused whole if invalid).
    Add {
        file: PathBuf,
    },
    Ls,
    Rm {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCmd {
    Create {
        path: String,
        #[arg(long)]
        kind: String,
        #[arg(long, default_value_t = 0)]
        shards: u32,
        #[arg(long)]
        affinity: Option<String>,
        /// The data subgroup (default: the first of that kind).
        #[arg(long)]
        subgroup: Option<u32>,
        /// Pin a key to a shard: `--override /pool/key=SHARD` (repeatable).
        #[arg(long = "override", value_name = "KEY=SHARD")]
        overrides: Vec<String>,
        /// Keep the pool's objects cached on GPU DEVICE in at most CAPACITY bytes
        /// (`0:8GiB`); host memory on nodes without a GPU. Persistent and volatile pools.
        #[arg(long, value_name = "DEVICE:CAPACITY", value_parser = parse_gpu_cache)]
        gpu_cache: Option<squall_kvs::GpuCache>,
    },
    Ls,
    /// Remove a pool and its objects (a pool made at the path again starts empty); run it
    /// again to finish a removal that was interrupted.
    Rm {
        path: String,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", error_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line. Our error types name their cause in their own
/// message and report it as their source too, so a cause already in the line is not
/// repeated (`{:#}` printed a full disk's `os error 28` three times).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::CheckConfig {
            config,
            node_id_from_hostname,
        } => {
            let path = config;
            let config = if node_id_from_hostname {
                load_with_hostname_id(&path)?
            } else {
                Config::load(&path)?
            };
            let subgroups: Vec<String> = config
                .layout
                .subgroups
                .iter()
                .map(|sg| format!("{} x{}", sg.kind, sg.shards))
                .collect();
            println!(
                "{}: node {} of {} (cluster {}), subgroups [{}], {} pools at first start",
                path.display(),
                config.node.id,
                config.cluster.peers.len(),
                config.cluster.id,
                subgroups.join(", "),
                config.pools.len()
            );
            if let Some(site) = &config.site {
                println!("site {} ({})", site.name, site.kind);
            }
            for remote in &config.remotes {
                println!("remote {}: {}", remote.name, remote.addresses.join(", "));
            }
            if config.is_open() {
                println!("warning: no tokens: every client is admin");
            }
            Ok(())
        }
        Cmd::Node {
            config,
            node_id_from_hostname,
        } => {
            let config = if node_id_from_hostname {
                load_with_hostname_id(&config)?
            } else {
                Config::load(&config)?
            };
            // One thread: the node's work is one task chain per request, and cross-thread
            // wake-ups cost more than they bring (measured: -10% latency, +40% puts/s).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let shutdown = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("a SIGTERM handler");
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                        _ = local::supervisor_gone() => {
                            eprintln!("squall: the squall up that started this node is gone; leaving");
                        }
                    }
                };
                squall_adapters::node::run(config, shutdown).await
            })?;
            Ok(())
        }
        Cmd::Up {
            nodes,
            data,
            ports,
            overlay,
        } => {
            let data = data.unwrap_or_else(|| std::env::temp_dir().join("squall-up"));
            let overlay = match overlay {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let mut cluster = LocalCluster::start(nodes, &data, ports.local(), overlay.as_deref())?;
            cluster.print();
            println!("Ctrl-C stops the cluster; a node that dies is started again.");
            cluster.run_until_stopped()?;
            cluster.stop();
            Ok(())
        }
        Cmd::Demo { nodes, data, ports } => {
            let data = data.unwrap_or_else(|| std::env::temp_dir().join("squall-demo"));
            let _ = std::fs::remove_dir_all(&data);
            let mut cluster = LocalCluster::start(nodes, &data, ports.local(), None)?;
            cluster.print();
            let result = tokio::runtime::Runtime::new()?.block_on(demo(&cluster.client_addrs()));
            cluster.stop();
            result
        }
        command => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(client_command(&cli.cluster, cli.token, command))
        }
    }
}

/// The environment override that sets `node.id`.
const NODE_ID_VAR: &str = "SQUALL__NODE__ID";

/// `squall node --node-id-from-hostname`: the config at `path` with `node.id` taken from
/// the host name, applied as the `SQUALL__NODE__ID` override would be (with the other
/// `SQUALL__` overrides, and validated the same way).
fn load_with_hostname_id(path: &Path) -> Result<Config> {
    if std::env::var_os(NODE_ID_VAR).is_some() {
        bail!("--node-id-from-hostname and {NODE_ID_VAR} both set the node id: use one");
    }
    let hostname = squall_adapters::addr::this_hostname()?;
    let id = squall_adapters::addr::node_id_from_hostname(&hostname)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(config::ENV_PREFIX) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| anyhow!("environment variable {name}: the value is not valid UTF-8"))?;
        env.push((name.to_string(), value));
    }
    env.push((NODE_ID_VAR.to_string(), id.to_string()));
    let config = Config::from_toml_with_env(&text, env).with_context(|| {
        format!(
            "config file {} as node {id} (from host name `{hostname}`, \
             --node-id-from-hostname)",
            path.display()
        )
    })?;
    tracing::info!(node = id, %hostname, "node id from the host name");
    Ok(config)
}

fn parse_version(text: &str) -> Result<Version> {
    if let Some((view, seq)) = text.strip_prefix('v').and_then(|t| t.split_once(':')) {
        return Ok(Version::new(view.parse()?, seq.parse()?));
    }
    Ok(Version(text.parse().with_context(|| {
        format!("`{text}` is not a version (like v3:17 or a number)")
    })?))
}

/// A `VALUE|@FILE` argument's bytes.
fn value_arg(value: String) -> Result<Bytes> {
    Ok(match value.strip_prefix('@') {
        Some(path) => Bytes::from(std::fs::read(path).with_context(|| format!("reading {path}"))?),
        None => Bytes::from(value.into_bytes()),
    })
}

fn show(o: &WireObject) -> String {
    format!(
        "{} = {} ({} bytes, version {}, time {} µs = {})",
        o.key,
        String::from_utf8_lossy(&o.blob[..o.blob.len().min(200)]),
        o.blob.len(),
        o.version,
        o.timestamp_us,
        moment::rfc3339(o.timestamp_us)
    )
}

async fn client_command(cluster: &str, token: Option<String>, command: Cmd) -> Result<()> {
    let client = Client::connect(&[cluster.to_string()], token, Policy::default()).await?;
    match command {
        Cmd::Put {
            key,
            value,
            if_version,
            if_absent,
        } => {
            let bytes = value_arg(value)?;
            let condition = match (if_version, if_absent) {
                (Some(v), _) => Condition::KeyVersion(Some(parse_version(&v)?)),
                (None, true) => Condition::KeyVersion(None),
                (None, false) => Condition::Always,
            };
            let w = client.put_if(&key, bytes, condition).await?;
            println!(
                "{key}: version {} at {} µs = {}",
                w.version,
                w.timestamp_us,
                moment::rfc3339(w.timestamp_us)
            );
        }
        Cmd::Get {
            key,
            version,
            time,
            stable,
        } => {
            let at = match (version, time, stable) {
                (Some(v), _, _) => At::Version(parse_version(&v)?),
                (None, Some(t), _) => At::Time(t),
                (None, None, true) => At::Stable,
                _ => At::Latest,
            };
            match client.get_at(&key, at).await? {
                Some(o) => println!("{}", show(&o)),
                None => bail!("{key}: not found"),
            }
        }
        Cmd::Call { key, value } => {
            for o in client.call_udl(&key, value_arg(value)?).await? {
                println!(
                    "{} = {} ({} bytes)",
                    o.key,
                    String::from_utf8_lossy(&o.blob[..o.blob.len().min(200)]),
                    o.blob.len()
                );
            }
        }
        Cmd::Rm { key } => {
            let w = client.remove(&key).await?;
            println!("{key}: removed at version {}", w.version);
        }
        Cmd::Ls { prefix, time } => {
            for key in client.list_keys(&prefix, time).await? {
                println!("{key}");
            }
        }
        Cmd::Pool { command } => match command {
            PoolCmd::Create {
                path,
                kind,
                shards,
                affinity,
                subgroup,
                overrides,
                gpu_cache,
            } => {
                let kind = StoreKind::parse(&kind).ok_or_else(|| {
                    anyhow!("--kind {kind}: expected volatile, persistent or trigger")
                })?;
                let subgroup = match subgroup {
                    Some(g) => g,
                    None => first_subgroup_of(&client, kind).await?,
                };
                let mut spec = PoolSpec::new(path.clone(), kind, subgroup);
                spec.shards = shards;
                spec.affinity = affinity;
                spec.gpu_cache = gpu_cache;
                for o in overrides {
                    let (key, shard) = o
                        .rsplit_once('=')
                        .ok_or_else(|| anyhow!("--override {o}: expected KEY=SHARD"))?;
                    let shard = shard
                        .parse()
                        .with_context(|| format!("--override {o}: `{shard}` is not a shard"))?;
                    spec.overrides.insert(key.to_string(), shard);
                }
                client.create_pool(spec).await?;
                println!("pool {path} created");
            }
            PoolCmd::Ls => {
                for p in client.list_pools().await? {
                    println!(
                        "{}\t{}\tsubgroup {}\tshards {}{}{}",
                        p.path,
                        p.kind.name(),
                        p.subgroup,
                        p.shards,
                        p.affinity
                            .map(|a| format!("\taffinity {a}"))
                            .unwrap_or_default(),
                        p.gpu_cache
                            .map(|g| format!(
                                "\tgpu_cache {}:{}",
                                g.device,
                                squall_gpu::ByteSize::from_bytes(g.capacity_bytes)
                            ))
                            .unwrap_or_default()
                    );
                }
            }
            PoolCmd::Rm { path } => {
                client.remove_pool(&path).await?;
                println!("pool {path} removed");
            }
        },
        Cmd::Compact { pool, before } => {
            let before = before.unwrap_or_else(moment::now_us);
            for c in client.compact(&pool, before).await? {
                match c.through {
                    Some(through) => println!(
                        "{pool} shard {}: history before version {through} ({}) forgotten: \
                         {} versions, {} removed keys",
                        c.shard,
                        moment::rfc3339(c.timestamp_us),
                        c.versions_dropped,
                        c.keys_dropped
                    ),
                    None => println!(
                        "{pool} shard {}: nothing written at or before {}",
                        c.shard,
                        moment::rfc3339(before)
                    ),
                }
            }
        }
        Cmd::Watch { prefix } => {
            let mut events = client.watch(&prefix).await?;
            while let Some(e) = events.recv().await {
                match e.blob {
                    Some(b) => println!(
                        "{} = {} (version {})",
                        e.key,
                        String::from_utf8_lossy(&b[..b.len().min(200)]),
                        e.version
                    ),
                    None => println!("{} removed (version {})", e.key, e.version),
                }
            }
            bail!(
                "the watch ended: no replica of a watched shard took it back (see the nodes), \
                 or it fell too far behind; list the keys and watch again"
            );
        }
        Cmd::Members => {
            let (view, members) = client.members().await?;
            println!("view {view}");
            for m in members {
                println!(
                    "  node {} (incarnation {}) at {}",
                    m.node, m.incarnation, m.client_addr
                );
            }
        }
        Cmd::Udl { command } => match command {
            UdlCmd::Upload {
                file,
                name,
                entry,
                uuid,
            } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let name = name.unwrap_or_else(|| {
                    file.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                });
                let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
                let plugin = match (ext, entry) {
                    ("py" | "zip", Some(entry)) => {
                        let stem = file
                            .file_stem()
                            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                        let (module, class) = match entry.split_once(':') {
                            Some((m, c)) => (m.to_string(), c.to_string()),
                            None => (stem, entry),
                        };
                        let uuid = uuid.unwrap_or_else(|| udl::python_udl_uuid(&module, &class));
                        let manifest = udl::PythonManifest {
                            uuid: uuid.clone(),
                            module,
                            entry_class: class,
                            format: ext.to_string(),
                            description: String::new(),
                        };
                        println!("Python UDL {uuid}");
                        udl::python_bundle(&manifest, &bytes)
                    }
                    ("py" | "zip", None) => {
                        bail!("a Python UDL needs --entry Class (or module:Class)")
                    }
                    _ => bytes,
                };
                client.upload_udl(&name, Bytes::from(plugin)).await?;
                println!("UDL {name} uploaded");
            }
            UdlCmd::Ls => {
                let list: serde_json::Value = serde_json::from_str(&client.list_udls().await?)?;
                for u in list.as_array().into_iter().flatten() {
                    let field = |f: &str| u[f].as_str().unwrap_or_default().to_string();
                    let error = u["load_error"]
                        .as_str()
                        .map(|e| format!("\tNOT LOADED: {e}"))
                        .unwrap_or_default();
                    println!(
                        "{}\t{}\t{} bytes\tchecksum {}\t{}{error}",
                        field("uuid"),
                        field("name"),
                        u["bytes"],
                        field("checksum"),
                        field("description")
                    );
                }
            }
            UdlCmd::Rm { uuid } => {
                client.remove_udl(&uuid).await?;
                println!("UDL {uuid} removed");
            }
        },
        Cmd::Dfg { command } => match command {
            DfgCmd::Add { file } => {
                let json =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                client.add_dfgs(Bytes::from(json)).await?;
                println!("DFGs of {} added", file.display());
            }
            DfgCmd::Ls => {
                let list: serde_json::Value = serde_json::from_str(&client.list_dfgs().await?)?;
                println!("{}", serde_json::to_string_pretty(&list)?);
            }
            DfgCmd::Rm { id } => {
                client.remove_dfg(&id).await?;
                println!("DFG {id} removed");
            }
        },
        Cmd::Up { .. } | Cmd::Demo { .. } | Cmd::Node { .. } | Cmd::CheckConfig { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

/// `--gpu-cache DEVICE:CAPACITY`, e.g. `0:8GiB` (the capacity as in a config file).
fn parse_gpu_cache(text: &str) -> Result<squall_kvs::GpuCache, String> {
    let (device, capacity) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected DEVICE:CAPACITY, e.g. 0:8GiB"))?;
    let device: u32 = device
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: device {device:?} is not a GPU ordinal"))?;
    let capacity: squall_gpu::ByteSize = capacity.parse().map_err(|e| format!("{e}"))?;
    let spec = squall_gpu::GpuCacheSpec::new(device, capacity).map_err(|e| e.to_string())?;
    Ok(squall_kvs::GpuCache {
        device: spec.device,
        capacity_bytes: spec.capacity.bytes(),
    })
}

/// The pool a kind lands in by default: the first data subgroup of that kind, learned from
/// an existing pool of the kind (the layout is the node's; clients see pools).
async fn first_subgroup_of(client: &Client, kind: StoreKind) -> Result<u32> {
    client.first_subgroup_of(kind).await?.ok_or_else(|| {
        anyhow!(
            "no {} pool exists to learn its subgroup from: pass --subgroup",
            kind.name()
        )
    })
}

async fn demo(addrs: &[String]) -> Result<()> {
    let client = Client::connect(addrs, None, Policy::default()).await?;
    let (view, members) = client.members().await?;
    println!("\n== view {view}: {} members", members.len());
    let mut watch = client.watch("/demo").await?;
    println!("== watching /demo");
    let first = client
        .put("/demo/greeting", Bytes::from_static(b"hello"))
        .await?;
    println!(
        "put /demo/greeting = hello      -> version {}",
        first.version
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = client
        .put("/demo/greeting", Bytes::from_static(b"hello, world"))
        .await?;
    println!(
        "put /demo/greeting = hello, world -> version {}",
        second.version
    );
    client
        .put("/cache/session", Bytes::from_static(b"volatile value"))
        .await?;
    let now = client
        .get("/demo/greeting")
        .await?
        .ok_or_else(|| anyhow!("missing"))?;
    println!("get /demo/greeting              -> {}", show(&now));
    let then = client
        .get_at("/demo/greeting", At::Time(first.timestamp_us))
        .await?
        .ok_or_else(|| anyhow!("missing in the past"))?;
    println!(
        "get /demo/greeting at time {} -> {}",
        first.timestamp_us,
        show(&then)
    );
    let cached = client
        .get("/cache/session")
        .await?
        .ok_or_else(|| anyhow!("missing"))?;
    println!("get /cache/session              -> {}", show(&cached));
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), watch.recv()).await {
            Ok(Some(e)) => println!(
                "watch: {} changed to {:?} (version {})",
                e.key,
                e.blob.as_deref().map(String::from_utf8_lossy),
                e.version
            ),
            _ => bail!("the watch saw nothing"),
        }
    }
    // Forget /demo's history before the second put: the greeting keeps "hello, world",
    // and its past is no longer read.
    let forgotten: u64 = client
        .compact("/demo", second.timestamp_us)
        .await?
        .iter()
        .map(|s| s.versions_dropped)
        .sum();
    println!("compact /demo before the second put -> {forgotten} older version(s) forgotten");
    match client
        .get_at("/demo/greeting", At::Time(first.timestamp_us))
        .await
    {
        Err(e) if e.code() == Some(ErrorCode::Compacted) => {
            println!("get /demo/greeting at time {} -> {e}", first.timestamp_us)
        }
        other => bail!("the compacted past still reads: {other:?}"),
    }
    pipeline_demo(&client).await?;
    println!("== demo done");
    Ok(())
}

/// The two-stage UDL pipeline of `udl/examples/pipeline`, from the plugin built next to
/// this binary (`cargo build --release -p squall-udl-example-pipeline`).
async fn pipeline_demo(client: &Client) -> Result<()> {
    let plugin_path = std::env::current_exe()?
        .parent()
        .map(|d| d.join("libsquall_udl_example_pipeline.so"))
        .ok_or_else(|| anyhow!("no directory for this binary"))?;
    let Ok(plugin) = std::fs::read(&plugin_path) else {
        println!(
            "== (no UDL pipeline: {} is not built; build it with \
             `cargo build --release -p squall-udl-example-pipeline`)",
            plugin_path.display()
        );
        return Ok(());
    };
    println!(
        "\n== UDL pipeline: /pipeline/in -> upper-case -> trigger_put /pipeline/stage1 -> tag -> /pipeline/out"
    );
    for (path, kind) in [
        ("/pipeline/in", StoreKind::Volatile),
        // trigger_put stores nothing, whatever the pool's kind.
        ("/pipeline/stage1", StoreKind::Volatile),
        ("/pipeline/out", StoreKind::Persistent),
    ] {
        let subgroup = first_subgroup_of(client, kind).await?;
        match client
            .create_pool(PoolSpec::new(path.to_string(), kind, subgroup))
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::PoolExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    client.upload_udl("pipeline", Bytes::from(plugin)).await?;
    client
        .add_dfgs(Bytes::from_static(include_bytes!(
            "../../../../udl/examples/pipeline/dfgs.json"
        )))
        .await?;
    println!("uploaded {} and added its dfgs.json", plugin_path.display());
    let inputs = ["a frame from camera one", "another frame", "the last frame"];
    for (i, text) in inputs.iter().enumerate() {
        client
            .put(&format!("/pipeline/in/item{i}"), Bytes::from(*text))
            .await?;
        println!("put /pipeline/in/item{i} = {text}");
    }
    for i in 0..inputs.len() {
        let key = format!("/pipeline/out/item{i}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let out = loop {
            if let Some(o) = client.get(&key).await? {
                break o;
            }
            if std::time::Instant::now() > deadline {
                bail!("{key} did not appear: the pipeline did not run");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!("get {key} -> {}", show(&out));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let disk = std::io::Error::from_raw_os_error(28);
        let inner = squall_driver::incarnation::IncarnationError::Io {
            path: "/d/incarnation.tmp".into(),
            source: disk,
        };
        let e = anyhow::Error::from(squall_adapters::node::RunError::from(inner));
        let line = error_line(&e);
        assert_eq!(line.matches("os error 28").count(), 1, "{line}");
        assert!(line.starts_with("incarnation: incarnation file /d/incarnation.tmp: "));
        // A context's cause is not in its message: it follows.
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(2)).context("reading x");
        assert_eq!(
            error_line(&e),
            format!("reading x: {}", std::io::Error::from_raw_os_error(2))
        );
    }
}
