//! `squall-bench`: Squall's benchmark harness. Each subcommand measures one layer of
//! Squall and, in the same run on the same machine, a peer system doing the same work,
//! and reports both side by side (a readable table, or one JSON object per line with
//! `--json`).
//!
//! ```text
//! squall-bench multicast --nodes 3 --size 1KiB --seconds 10 [--senders all|one]
//!     [--mode ordered|raw] [--json]
//! squall-bench kv [--sizes 1KiB,64KiB,1MiB] [--clients 1,16] [--seconds 3]
//!     [--systems squall,redis,etcd] [--json]
//! squall-bench trigger [--sizes 1KiB,1MiB] [--count 300] [--json]
//! squall-bench gpu [--seconds 10] [--json]   (runs bench/python/bench_gpu.py)
//! squall-bench wan [--delay-ms 50] [--jitter-ms 0] [--probes 200] [--concurrency 16]
//!     [--seconds 10] [--size 1KiB] [--json]
//! ```
//!
//! The processes of a run are this binary re-executed with a hidden `node` subcommand;
//! the parent starts them, tells them when to start sending, collects one line of
//! statistics from each and always kills them at the end.

mod child;
mod kv;
mod multicast;
mod node_raw;
mod node_squall;
mod resp;
mod size;
mod stats;
mod trigger;
mod wan;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "squall-bench", version, about = "Squall's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Multicast throughput and latency of the group layer (squall-driver over TCP)
    /// against a raw TCP fan-out of the same messages.
    Multicast(MulticastArgs),
    /// Object store put/get latency and throughput (3 node processes, 3 replicas)
    /// against Redis (primary + replica) and a 3-member etcd, in the same run.
    Kv(KvArgs),
    /// Data-triggered logic end to end: put -> UDL -> output, and a two-stage pipeline,
    /// against Redis Streams with worker processes, in the same run.
    Trigger(TriggerArgs),
    /// An edge cluster's DFG outputs to a cloud cluster through the WAN outbox and an
    /// emulated link: end-to-end latency and throughput with the link's delay at 0 and
    /// at `--delay-ms`, in the same run.
    Wan(WanArgs),
    /// The GPU example pipeline (put -> model inference -> result) through Squall
    /// against the same model in Ray (put + GPU actor + get), in the same run: runs
    /// `bench/python/bench_gpu.py` with the Python of `SQUALL_PYTHON`, else
    /// `target/pyenv/bin/python`, passing the arguments on (`--json`, `--seconds N`).
    /// The pipeline is Python (torch, or numpy without it), so its harness is too.
    Gpu {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// One process of a run (started by the harness itself).
    #[command(hide = true)]
    Node(NodeArgs),
    /// A Redis Streams worker of a `trigger` run (started by the harness itself).
    #[command(hide = true)]
    RedisWorker {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        stage: String,
    },
    /// One Squall object store node of a `kv` run (started by the harness itself).
    #[command(hide = true)]
    KvNode {
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

#[derive(Clone, Debug, Args)]
pub struct TriggerArgs {
    /// Object sizes (bytes, or with a unit: KiB, MiB, KB, MB).
    #[arg(long, value_delimiter = ',', default_value = "1KiB,1MiB", value_parser = size::parse_size)]
    pub sizes: Vec<usize>,
    /// Measured round trips per case (one client, one at a time).
    #[arg(long, default_value_t = 300)]
    pub count: usize,
    /// Unmeasured round trips first.
    #[arg(long, default_value_t = 30)]
    pub warmup: usize,
    /// One JSON object per line per measured case instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct WanArgs {
    /// The link's added one-way delay, in milliseconds, measured beside a 0 ms baseline
    /// (0: the baseline only).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub delay_ms: u64,
    /// Extra one-way delay drawn uniformly from [0, jitter] per chunk, in milliseconds
    /// (the delayed case only).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub jitter_ms: u64,
    /// Measured end-to-end probes per delay (one at a time).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub probes: u64,
    /// Edge clients putting as fast as they can in the throughput case.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Length of the throughput window, in seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Input size: bytes, or with a unit (KiB, MiB, KB, MB). At least 8 bytes (the send
    /// stamp).
    #[arg(long, default_value = "1KiB", value_parser = parse_message_size)]
    pub size: usize,
    /// One JSON object per line per measured case instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct KvArgs {
    /// Object sizes (bytes, or with a unit: KiB, MiB, KB, MB).
    #[arg(long, value_delimiter = ',', default_value = "1KiB,64KiB,1MiB", value_parser = size::parse_size)]
    pub sizes: Vec<usize>,
    /// Concurrent clients per case.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub clients: Vec<usize>,
    /// Measured seconds per case (after a short warm-up).
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Measure only these systems (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub systems: Vec<kv::KvSystem>,
    /// Measure only these operations (default: puts and gets). A profile of one case
    /// runs `--ops put --stores persistent` long enough to attach to.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "put,get")]
    pub ops: Vec<kv::KvOp>,
    /// Squall pools measured (default: both; peers have one kind each).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "volatile,persistent"
    )]
    pub stores: Vec<kv::KvStore>,
    /// One JSON object per line per measured case instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Senders {
    /// Every node sends.
    All,
    /// Only node 0 sends.
    One,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Total order: a message is delivered once every member received it.
    Ordered,
    /// Delivered on receipt (sender FIFO only).
    Raw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    Squall,
    #[value(name = "raw-tcp")]
    RawTcp,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Squall => "squall",
            System::RawTcp => "raw-tcp",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct MulticastArgs {
    /// Processes in the group (at least 2).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub nodes: u32,
    /// Message size: bytes, or with a unit (KiB, MiB, GiB, KB, MB, GB). At least 8 bytes
    /// (the send stamp).
    #[arg(long, default_value = "1KiB", value_parser = parse_message_size)]
    pub size: usize,
    /// Length of the measured window, in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Which nodes send.
    #[arg(long, value_enum, default_value_t = Senders::All)]
    pub senders: Senders,
    /// Squall's delivery mode.
    #[arg(long, value_enum, default_value_t = Mode::Ordered)]
    pub mode: Mode,
    /// Unmeasured sending before the window, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub warmup_ms: u64,
    /// Measure only these systems (default: both).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub systems: Vec<System>,
    /// One JSON object per line per measured case instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Knobs for experiments; the defaults are what the published figures use.
#[derive(Clone, Debug, Args)]
pub struct Tuning {
    /// Tokio worker threads per node process; 1 is a single-threaded runtime (default:
    /// the machine's cores divided among the nodes, 1 to 4).
    #[arg(long, hide = true)]
    pub threads: Option<usize>,
    /// Concurrent send calls per sending node (Squall's send is a request/reply).
    #[arg(long, default_value_t = 4, hide = true)]
    pub pipeline: usize,
    /// Send window in messages (default: 8 MiB worth, between 4 and 1024).
    #[arg(long, hide = true)]
    pub window: Option<u64>,
    /// Seconds past the run's expected end after which the harness gives up.
    #[arg(long, default_value_t = 30, hide = true)]
    pub grace_s: u64,
}

#[derive(Clone, Debug, Args)]
pub struct NodeArgs {
    #[arg(long, value_enum)]
    pub system: System,
    /// This node's index in `--addrs`.
    #[arg(long)]
    pub index: usize,
    /// Every node's listening address, in index order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addrs: Vec<std::net::SocketAddr>,
    #[arg(long, value_parser = parse_message_size)]
    pub size: usize,
    #[arg(long, value_parser = parse_seconds)]
    pub seconds: f64,
    #[arg(long)]
    pub warmup_ms: u64,
    #[arg(long, value_enum)]
    pub senders: Senders,
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long)]
    pub threads: usize,
    #[arg(long)]
    pub pipeline: usize,
    #[arg(long)]
    pub window: u64,
}

impl NodeArgs {
    pub fn is_sender(&self) -> bool {
        self.senders == Senders::All || self.index == 0
    }

    /// Nodes (other than `index`) that send.
    pub fn remote_senders(&self) -> usize {
        (0..self.addrs.len())
            .filter(|&i| i != self.index && (self.senders == Senders::All || i == 0))
            .count()
    }
}

/// Worker threads per node when `--threads` is not given: the cores shared among the
/// nodes, at least 1 (a single-threaded runtime, which also costs the least CPU per
/// message: no cross-thread wake-ups), at most 4.
pub fn default_threads(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / nodes.max(1)).clamp(1, 4)
}

/// The send window used when `--window` is not given: about 8 MiB of messages in
/// flight per sender, at least 4 and at most 1024 messages. (Measured: larger windows
/// save little CPU per message but add queueing latency; 2 or fewer messages of 1 MiB
/// leave the links idle.)
pub fn default_window(size: usize) -> u64 {
    ((8usize << 20) / size.max(1)).clamp(4, 1024) as u64
}

fn parse_message_size(text: &str) -> Result<usize, String> {
    let bytes = size::parse_size(text)?;
    if bytes < stats::STAMP_BYTES {
        return Err(format!(
            "{bytes} bytes is too small: a message carries an {}-byte send stamp",
            stats::STAMP_BYTES
        ));
    }
    if bytes > 64 << 20 {
        return Err(format!("{bytes} bytes is too large: at most 64 MiB"));
    }
    Ok(bytes)
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "{seconds} s: the window must be positive and at most a day"
        ));
    }
    Ok(seconds)
}

/// `squall-bench gpu`: the Python harness of the GPU pipeline, from the repository root.
fn gpu_bench(args: &[String]) -> anyhow::Result<()> {
    // The repository this runs in (a copy carried to a GPU machine), else the one it
    // was built in.
    let here = std::path::Path::new(".");
    let root = if here.join("bench/python/bench_gpu.py").is_file() {
        here
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no repository root above bench/"))?
    };
    let python = std::env::var_os("SQUALL_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv/bin/python"));
    let script = root.join("bench/python/bench_gpu.py");
    let status = std::process::Command::new(&python)
        .arg(&script)
        .args(args)
        .current_dir(root)
        .status()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", python.display()))?;
    if !status.success() {
        anyhow::bail!("{} {} failed: {status}", python.display(), script.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Multicast(args) => multicast::run(&args),
        Command::Kv(args) => kv::run(&args),
        Command::KvNode { config } => kv::node_main(&config),
        Command::Trigger(args) => trigger::run(&args),
        Command::Wan(args) => wan::run(&args),
        Command::Gpu { args } => gpu_bench(&args),
        Command::RedisWorker {
            addr,
            from,
            to,
            stage,
        } => trigger::worker_main(addr, &from, &to, &stage),
        Command::Node(args) => match args.system {
            System::Squall => node_squall::main(&args),
            System::RawTcp => node_raw::main(&args),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("squall-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
