//! One Squall node's configuration: a single TOML file.
//!
//! Why one file per node, and why this shape:
//!
//! * **Every node of a cluster must agree on the cluster**: the peers, the layout of data
//!   subgroups and the pools created at first start. Keeping those in the same file as the
//!   node's own settings lets an operator copy one file and change `[node]` only.
//! * **Typos must not be silent.** Every table is `deny_unknown_fields`: a misspelt
//!   `suspicion_timout_ms` is an error naming the field, not a default quietly used.
//! * **Versioned.** `version = 1` is required; a file written for another version is
//!   refused with an error naming the version this build supports, instead of being
//!   half-understood.
//! * **Environment overrides** (`SQUALL__NODE__ID=3`) let containers and systemd units
//!   share one file and differ in a few values. They are applied to the parsed TOML before
//!   it is interpreted, so they get exactly the same checks as the file, and errors they
//!   cause name the variable.
//! * **Validated up front** ([`Config::validate`]): a node that would fail minutes later
//!   (a subgroup that can never be provisioned, a pool in a subgroup that does not
//!   exist) refuses to start with a [`ConfigError`] naming the field.
//!
//! A complete example (every section and field; the optional ones show their defaults
//! where they have one):
//!
//! ```toml
//! version = 1
//!
//! [node]
//! id = 0
//! data_dir = "/var/lib/squall/n0"
//! client_addr = "127.0.0.1:7200"
//! # Where to listen for peers; default: this node's cluster.peers `addr`, resolved.
//! peer_listen_addr = "0.0.0.0:7100"
//! http_addr = "127.0.0.1:7300"
//!
//! [cluster]
//! id = 1364541772
//! # Preferred to lead a total restart; every other peer backs it up, in id order.
//! restart_leader = 0
//! contacts = [1, 2]
//!
//! # `addr` and `client_addr` are host:port, the host an IP (IPv6 in brackets) or a DNS
//! # name resolved at every connection: "squall-0.squall-peers.default.svc:7100".
//! [[cluster.peers]]
//! id = 0
//! addr = "127.0.0.1:7100"
//! client_addr = "127.0.0.1:7200"
//!
//! [[cluster.peers]]
//! id = 1
//! addr = "127.0.0.1:7101"
//! client_addr = "127.0.0.1:7201"
//!
//! [[cluster.peers]]
//! id = 2
//! addr = "127.0.0.1:7102"
//! client_addr = "127.0.0.1:7202"
//!
//! # Data subgroups, numbered from 1 in this order (subgroup 0, the pool metadata over
//! # all nodes, is implicit).
//! [[layout.subgroups]]
//! kind = "persistent"
//! shards = 1
//! min_nodes = 1
//! max_nodes = 3
//!
//! [[layout.subgroups]]
//! kind = "volatile"
//! shards = 3
//! min_nodes = 1
//! max_nodes = 1
//!
//! [limits]
//! key_bytes_max = 1024
//! object_bytes_max = 67108864
//! frame_bytes_max = 68157440
//! clients_max = 1024
//! requests_in_flight_max = 4096
//! watchers_max = 1024
//! watch_queue_max = 4096
//! watch_replay_bytes = 16777216
//! dedup_clients_max = 4096
//! dedup_per_client_max = 256
//! pools_max = 1024
//! udl_workers = 4
//! udl_queue_max = 1024
//! udl_emit_queue_max = 1024
//! history_cache_bytes = 67108864
//! history_retention_s = 0
//! log_preallocate_bytes = 1048576
//! log_segment_bytes = 67108864
//! disk_reserve_bytes = 268435456
//! metadata_log_compact_bytes = 67108864
//!
//! [timing]
//! heartbeat_interval_ms = 20
//! suspicion_timeout_ms = 1000
//! restart_grace_ms = 2000
//! read_lease_ms = 300
//!
//! [[auth.tokens]]
//! token = "s3cret"
//! role = "admin"
//!
//! [[auth.tokens]]
//! token = "dashboard-ro"
//! role = "read"
//!
//! [[pools]]
//! path = "/demo"
//! kind = "persistent"
//! subgroup = 1
//! shards = 0
//!
//! [[pools]]
//! path = "/cams"
//! kind = "volatile"
//! affinity = "cam[0-9]+"
//! # Keep this pool's objects cached on GPU 0 (at most 8 GiB), so its UDLs get a device
//! # pointer; on a machine without a GPU the node serves it from host memory (zero copy)
//! # and says so once. Persistent and volatile pools only (a trigger pool stores nothing).
//! gpu_cache = { device = 0, capacity = "8GiB" }
//!
//! # This cluster's site, and the other clusters its DFGs may send outputs to
//! # (`"cloud:/ingest/": "put"`). Virtual synchrony never spans sites: a remote cluster
//! # is reached as a client, through a durable outbox in this cluster.
//! [site]
//! name = "edge-1"
//! kind = "edge"
//!
//! [[remotes]]
//! name = "cloud"
//! addresses = ["cloud-0.example.net:7200", "cloud-1.example.net:7200"]
//! token = "edge-writer"
//! # Where this cluster reaches addresses the remote cluster advertises, if not directly.
//! address_map = { "10.1.0.7:7200" = "gateway.example.net:17200" }
//!
//! [wan]
//! # outbox_subgroup = 1   # default: the first persistent subgroup
//! outbox_entries_max = 1000000
//! outbox_bytes_max = 1073741824
//! outbox_full = "block"   # or "reject": refuse new inputs with `outbox_full`
//! batch_max = 128
//! batch_bytes_max = 8388608
//! retry_backoff_max_ms = 2000
//! compress = true         # LZ4 batches where that saves an eighth or more
//! ```
//!
//! **Kubernetes** (a StatefulSet `squall` behind a headless service `squall-peers`): one
//! file for every pod, peers named by their pod's DNS name (`addr =
//! "squall-1.squall-peers.default.svc.cluster.local:7100"`), `peer_listen_addr =
//! "0.0.0.0:7100"` and `client_addr = "0.0.0.0:7200"` (a pod's own name resolves only once
//! it is ready), and `squall node --config FILE --node-id-from-hostname`, which takes
//! `node.id` from the pod's name (`squall-2` → 2). A name is looked up at every
//! connection attempt, so a restarted pod is found at its new IP; one that does not
//! resolve yet is retried like a refused connection.
//!
//! Environment overrides: a variable `SQUALL__<SECTION>__<FIELD>` (segments separated by
//! double underscores, lowercased) sets that path, e.g. `SQUALL__NODE__ID=3`,
//! `SQUALL__NODE__DATA_DIR=/tmp/x`, `SQUALL__TIMING__SUSPICION_TIMEOUT_MS=500`. The value
//! is read as a TOML value when it is one (`3`, `true`, `[1, 2]`, `{ a = 1 }`,
//! `"quoted string"`), otherwise taken as a string (`/tmp/x`, `127.0.0.1:7200`); quote it
//! to force a string (`SQUALL__NODE__DATA_DIR='"true"'`). Missing tables are created; a
//! numeric segment indexes an existing array (`SQUALL__CLUSTER__PEERS__1__ADDR`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::addr::{HostPort, HostPortError};

/// The only configuration format version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// Environment variables starting with this name override configuration values.
pub const ENV_PREFIX: &str = "SQUALL__";

/// Default `cluster.id`: "QUAL" in ASCII. Nodes refuse peers with another cluster id, so
/// two clusters sharing a network cannot merge by mistake; give each cluster its own.
pub const DEFAULT_CLUSTER_ID: u64 = 0x5155_414c;

/// Bytes a frame must hold beyond the largest object: the request header and the key.
pub const FRAME_HEADROOM_BYTES: usize = 4096;

/// The longest site or remote name: the DFG grammar's (`"site:/pool/"`).
pub const SITE_NAME_BYTES_MAX: usize = squall_udl_host::dfg::SITE_NAME_SIZE_MAX_BYTES;

/// Why a configuration was refused. Each variant names what to fix: the file, the
/// version, the field, or the environment variable.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or TOML that does not fit the schema (unknown or missing field, wrong
    /// type); toml's message, with line and column where it has them.
    #[error("config does not parse: {0}")]
    Parse(String),
    #[error("config version {found} is not supported: this build reads `version = {supported}`")]
    Version { found: i64, supported: u32 },
    /// Parsed, but a value breaks a rule. `field` is a path like `cluster.peers[1].id`.
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// An environment override could not be applied, or made the configuration fail to
    /// parse. `var` names the variable(s).
    #[error("environment override {var}: {reason}")]
    Env { var: String, reason: String },
}

/// `host:port` as peers' addresses are ([`HostPort`]), with a port from 1.
fn is_host_port(address: &str) -> bool {
    address
        .parse::<HostPort>()
        .is_ok_and(|address| address.port() != 0)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a client token may do. Ordered: `admin` can do everything `write` can, which can
/// do everything `read` can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and watches.
    Read,
    /// Also puts and removes.
    Write,
    /// Also creates and removes pools and administers the cluster.
    Admin,
}

impl Role {
    /// Whether a holder of `self` may do something that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a data subgroup stores (and so which pools it can hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubgroupKind {
    /// Latest version of each key, in memory.
    Volatile,
    /// Every version, in the durable log.
    Persistent,
    /// Not stored: objects only trigger user logic.
    Trigger,
}

impl SubgroupKind {
    pub fn name(self) -> &'static str {
        match self {
            SubgroupKind::Volatile => "volatile",
            SubgroupKind::Persistent => "persistent",
            SubgroupKind::Trigger => "trigger",
        }
    }
}

impl fmt::Display for SubgroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<SubgroupKind> for squall_kvs::StoreKind {
    fn from(kind: SubgroupKind) -> Self {
        match kind {
            SubgroupKind::Volatile => squall_kvs::StoreKind::Volatile,
            SubgroupKind::Persistent => squall_kvs::StoreKind::Persistent,
            SubgroupKind::Trigger => squall_kvs::StoreKind::Trigger,
        }
    }
}

/// The whole file. See the [module documentation](self) for an example.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    pub node: NodeSection,
    pub cluster: ClusterSection,
    pub layout: LayoutSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default, skip_serializing_if = "Auth::is_empty")]
    pub auth: Auth,
    /// Pools created when the cluster first starts (later starts leave the pool table as
    /// it is: it lives in the metadata subgroup's log).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolEntry>,
    /// Which site this cluster is (edge or cloud). Virtual synchrony stays inside a site:
    /// other sites are separate clusters, reached as [`Remote`]s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteSection>,
    /// Other clusters a DFG may send outputs to (`"cloud:/ingest/": "put"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<Remote>,
    /// The outbox that carries outputs to remote clusters.
    #[serde(default)]
    pub wan: Wan,
}

/// Where a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    Edge,
    Cloud,
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SiteKind::Edge => "edge",
            SiteKind::Cloud => "cloud",
        })
    }
}

/// This cluster's site.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// The site id, unique among the clusters that exchange data (`edge-berlin-1`).
    pub name: String,
    pub kind: SiteKind,
}

/// Another cluster this one forwards DFG outputs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The name DFG destinations use: `"<name>:/pool/"`.
    pub name: String,
    /// Client addresses (`host:port`) of some of the remote cluster's nodes; the
    /// forwarder learns the rest from them.
    pub addresses: Vec<String>,
    /// Bearer token for the remote cluster (write role at least); absent for an open one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Client addresses the remote cluster advertises → where this cluster reaches them,
    /// when they differ (NAT, a gateway, the rehearsal's WAN proxy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub address_map: BTreeMap<String, String>,
}

/// What a full outbox does to its producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutboxFull {
    /// UDL outputs wait for room; the wait fills the UDL queues, which then refuse new
    /// inputs with `Unavailable` (retried by clients).
    #[default]
    Block,
    /// New inputs to pools whose DFG sends to the full site are refused at once with
    /// `outbox_full` (not retried by clients), until the outbox has room again.
    Reject,
}

/// The WAN outbox (see [`Remote`]). Outputs for another cluster are kept in a persistent
/// subgroup of this one, replicated and logged, until the remote cluster applied them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Wan {
    /// The persistent data subgroup holding the outbox (numbered from 1); default: the
    /// first persistent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_subgroup: Option<u32>,
    /// Entries one outbox shard holds for one site before producers see `outbox_full`.
    pub outbox_entries_max: usize,
    /// Bytes one outbox shard holds for one site before producers see `outbox_full`.
    pub outbox_bytes_max: usize,
    pub outbox_full: OutboxFull,
    /// Entries forwarded in one round trip (at most `limits.dedup_per_client_max / 2`, so
    /// that a forwarder that fails over re-sends only what the remote side remembers).
    pub batch_max: usize,
    /// Bytes forwarded in one round trip (one entry always goes, however large).
    pub batch_bytes_max: usize,
    /// Retry pause after a failed round trip doubles up to this.
    pub retry_backoff_max_ms: u64,
    /// LZ4-compress forwarded batches where that saves at least an eighth of the bytes
    /// (the remote node expands them; CPU is cheaper than WAN bytes).
    pub compress: bool,
}

impl Default for Wan {
    fn default() -> Self {
        Wan {
            outbox_subgroup: None,
            outbox_entries_max: 1_000_000,
            outbox_bytes_max: 1 << 30,
            outbox_full: OutboxFull::Block,
            batch_max: 128,
            batch_bytes_max: 8 << 20,
            retry_backoff_max_ms: 2_000,
            compress: true,
        }
    }
}

/// This node: the only section that differs between the nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Must be one of `cluster.peers`: the node finds its node-to-node address there.
    pub id: u32,
    /// Log and snapshots. One directory per node: two nodes sharing one would corrupt it.
    pub data_dir: PathBuf,
    /// Where this node listens for clients. May differ from its entry's `client_addr` in
    /// `cluster.peers`, which is what clients are told (e.g. listen on `0.0.0.0:7200`,
    /// advertise `squall-0.squall-peers:7200` or `10.0.0.5:7200`).
    pub client_addr: SocketAddr,
    /// Where this node listens for its peers. Default: its own `cluster.peers` entry's
    /// `addr`, resolved, which must then be an address of this machine. Set it where that
    /// name does not resolve to this machine when the node starts (a Kubernetes pod's
    /// name resolves once the pod is ready): e.g. `0.0.0.0:7100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_listen_addr: Option<SocketAddr>,
    /// Dashboard and metrics over HTTP; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
}

/// Who is in the cluster. Identical on every node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Distinguishes clusters sharing a network; peers with another id are refused.
    #[serde(default = "default_cluster_id")]
    pub id: u64,
    /// The node preferred to coordinate a total restart; every other peer is a backup, in
    /// id order, and leads when no leader before it is back. Every node must name the
    /// same one, so the default (the lowest peer id) is the same everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_leader: Option<u32>,
    /// Peers this node asks to join through; default: every other peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<u32>>,
    /// Every node of the cluster, this one included.
    pub peers: Vec<Peer>,
}

fn default_cluster_id() -> u64 {
    DEFAULT_CLUSTER_ID
}

/// One node as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u32,
    /// Node-to-node (multicast, membership) address, `host:port`: an IP (IPv6 in
    /// brackets) or a DNS name, resolved at every connection attempt (a restarted pod
    /// keeps its name but not its IP).
    pub addr: HostPort,
    /// Where clients reach that node (`host:port` likewise), so any node can redirect a
    /// client to it. Told to clients as written: they resolve a name themselves.
    pub client_addr: HostPort,
}

/// How data is spread: the data subgroups. Identical on every node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutSection {
    /// Numbered from 1 in this order; subgroup 0 (the pool metadata, replicated on every
    /// node) is implicit and not listed.
    pub subgroups: Vec<SubgroupSpec>,
}

/// One data subgroup: `shards` disjoint shards of `min_nodes..=max_nodes` nodes each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubgroupSpec {
    pub kind: SubgroupKind,
    pub shards: u32,
    /// Below this many live nodes a shard stops (it cannot be safely replicated).
    pub min_nodes: u32,
    /// Nodes beyond this stay out of the shard (more replicas cost more per write).
    pub max_nodes: u32,
}

/// Bounds on what one node accepts, so that no client can make it run out of memory. All
/// optional; the defaults suit a development machine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub object_bytes_max: usize,
    /// One wire frame; must hold a whole object plus [`FRAME_HEADROOM_BYTES`], or the
    /// largest allowed object could not be sent.
    pub frame_bytes_max: usize,
    /// Concurrent client connections.
    pub clients_max: usize,
    /// Requests accepted but not yet answered, over all clients of this node.
    pub requests_in_flight_max: usize,
    pub watchers_max: usize,
    /// Events buffered per watcher; a watcher that falls further behind is dropped
    /// rather than letting it hold memory without bound.
    pub watch_queue_max: usize,
    /// Bytes of recent changes (values included) each volatile shard keeps, so a watch
    /// that resumes at it (its node failed, it fell behind) gets every version it missed
    /// while they reach back that far; past them, each key's latest value. 0 keeps none.
    /// Persistent shards need none: they keep every version.
    pub watch_replay_bytes: usize,
    /// Clients whose recent requests are remembered to answer retries exactly once.
    pub dedup_clients_max: usize,
    /// Recent requests remembered per client.
    pub dedup_per_client_max: usize,
    pub pools_max: usize,
    /// Worker threads running UDL invocations.
    pub udl_workers: usize,
    /// UDL invocations queued or running per worker; beyond it, jobs wait in a bounded
    /// overflow and then writes are refused until the workers catch up.
    pub udl_queue_max: usize,
    /// UDL outputs waiting to be written; a full queue makes the UDL's `emit` wait.
    pub udl_emit_queue_max: usize,
    /// Bytes of older versions of a persistent shard's objects kept in memory for reads
    /// by version or time; older ones are read back from the log.
    pub history_cache_bytes: usize,
    /// Persistent pools forget versions older than this many seconds by themselves
    /// (as `squall compact POOL --before "Ns ago"` would), checked every half of it (at
    /// most a minute). 0 (the default): every
    /// version is kept until someone compacts.
    pub history_retention_s: u64,
    /// Zeros written ahead of a persistent shard's log, this many bytes at a time, so that
    /// a small write's fsync need not grow the file (and commit the file system's journal
    /// with it): on ext4 it made the sync of a small put 1.6-3× faster on this project's test VM. 0 turns it off,
    /// which suits copy-on-write file systems (btrfs, ZFS), where it gains nothing.
    pub log_preallocate_bytes: u64,
    /// A shard's log rolls to a new file at this size. A compaction (`squall compact`)
    /// frees whole files only, so smaller files free space in finer steps; each roll
    /// costs one more fsync.
    pub log_segment_bytes: u64,
    /// Free space kept on the data directory's file system. Below it, this node raises a
    /// storage alarm (replicated in the metadata): every node refuses writes this node
    /// would have to log (to a persistent shard it holds, to the metadata) with
    /// `storage_full`, while reads and volatile pools go on. The alarm clears by itself
    /// once a quarter more than the reserve is free. It must cover what arrives in the
    /// alarm's fraction of a second to spread, so keep it a few times the largest object
    /// at your write rate. 0 turns it off (a full disk then stops the node).
    pub disk_reserve_bytes: u64,
    /// Once the metadata log (pools, UDL uploads, DFGs) has grown by this many bytes
    /// since its last checkpoint, every node writes a checkpoint of the metadata and
    /// drops the log's older segments (whole `log_segment_bytes` files), so uploading a
    /// plugin again and again does not fill the disk or slow every restart. 0: never.
    pub metadata_log_compact_bytes: u64,
}

/// The smallest `limits.log_segment_bytes`: below it, rolling files costs more than the
/// finer compaction saves.
pub const LOG_SEGMENT_BYTES_MIN: u64 = 64 << 10;

/// Default of `limits.disk_reserve_bytes`: four of the largest objects by default.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 256 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 1024,
            object_bytes_max: 64 << 20,
            frame_bytes_max: (64 << 20) + (1 << 20),
            clients_max: 1024,
            requests_in_flight_max: 4096,
            watchers_max: 1024,
            watch_queue_max: 4096,
            watch_replay_bytes: 16 << 20,
            dedup_clients_max: 4096,
            dedup_per_client_max: 256,
            pools_max: 1024,
            udl_workers: 4,
            udl_queue_max: 1024,
            udl_emit_queue_max: 1024,
            history_cache_bytes: 64 << 20,
            history_retention_s: 0,
            log_preallocate_bytes: squall_log::PREALLOCATE_BYTES_DEFAULT,
            log_segment_bytes: squall_log::SEGMENT_BYTES_MAX_DEFAULT,
            disk_reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
            metadata_log_compact_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// The bounds each shard's store enforces.
    pub fn store_limits(&self) -> squall_kvs::StoreLimits {
        squall_kvs::StoreLimits {
            object_bytes_max: self.object_bytes_max,
            dedup_clients_max: self.dedup_clients_max,
            dedup_per_client_max: self.dedup_per_client_max,
            watch_replay_bytes: self.watch_replay_bytes,
        }
    }
}

/// Failure detection and restart timing. Shorter detects failures sooner but suspects
/// slow nodes more often.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    /// Silence after which a peer is suspected; must exceed the heartbeat interval, or
    /// every peer would be suspected between two heartbeats.
    pub suspicion_timeout_ms: u64,
    /// How long a restarting cluster waits for more nodes once it could go on without
    /// them, so a slow node is not left behind needlessly.
    pub restart_grace_ms: u64,
    /// Read leases: a node serves linearizable gets locally, without asking its shard's
    /// peers each time, for up to this long after a majority promised not to agree to a
    /// view change without it (renewed in the background). 0 turns them off. A view
    /// change the leaseholder cannot take part in (it crashed) waits up to this long.
    /// Must be under `restart_grace_ms`.
    pub read_lease_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: 20,
            suspicion_timeout_ms: 1000,
            restart_grace_ms: 2000,
            read_lease_ms: 300,
        }
    }
}

impl Timing {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn suspicion_timeout(&self) -> Duration {
        Duration::from_millis(self.suspicion_timeout_ms)
    }

    pub fn restart_grace(&self) -> Duration {
        Duration::from_millis(self.restart_grace_ms)
    }
}

/// Client authentication. No tokens = open access (every client is admin): convenient on
/// a laptop, so allowed, but the node logs a loud warning ([`Config::is_open`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub tokens: Vec<TokenEntry>,
}

impl Auth {
    fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A bearer token and what it may do.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub token: String,
    pub role: Role,
}

/// Hides the secret: configurations end up in logs.
impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// A pool to create when the cluster first starts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    /// Absolute path prefix of the pool's keys, e.g. `/demo`.
    pub path: String,
    pub kind: SubgroupKind,
    /// Data subgroup (from 1); default: the first data subgroup of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subgroup: Option<u32>,
    /// Shards of the subgroup to spread over (the first `shards`); 0 = all.
    #[serde(default)]
    pub shards: u32,
    /// Regex: keys whose matches are equal land on one shard. Compiled when the pool is
    /// created, not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// `{ device = 0, capacity = "8GiB" }`: keep the pool's objects cached on that GPU
    /// (host memory where the node has none). Persistent and volatile pools only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_cache: Option<squall_gpu::GpuCacheSpec>,
}

/// One `SQUALL__...` variable, parsed.
#[derive(Debug, Clone)]
struct EnvOverride {
    var: String,
    path: Vec<String>,
    value: toml::Value,
}

impl EnvOverride {
    fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// Sets the value at the path, creating missing tables.
    fn apply(&self, root: &mut toml::Table) -> Result<(), ConfigError> {
        let result = if self.path.is_empty() {
            Err("names no setting".to_string())
        } else {
            let mut node = toml::Value::Table(std::mem::take(root));
            let result = set_path(&mut node, &self.path, 0, &self.value);
            if let toml::Value::Table(table) = node {
                *root = table;
            }
            result
        };
        result.map_err(|reason| ConfigError::Env {
            var: self.var.clone(),
            reason,
        })
    }
}

/// Sets `value` at `path[depth..]` below `node`, creating missing tables; a numeric
/// segment indexes an existing array (`cluster.peers.1.addr`).
fn set_path(
    node: &mut toml::Value,
    path: &[String],
    depth: usize,
    value: &toml::Value,
) -> Result<(), String> {
    let Some(segment) = path.get(depth) else {
        *node = value.clone();
        return Ok(());
    };
    let here = || path[..depth].join(".");
    match node {
        toml::Value::Table(table) => {
            if depth + 1 == path.len() {
                table.insert(segment.clone(), value.clone());
                return Ok(());
            }
            let child = table
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            set_path(child, path, depth + 1, value)
        }
        toml::Value::Array(items) => {
            let len = items.len();
            let index: usize = segment.parse().map_err(|_| {
                format!(
                    "`{}` is an array: the next segment must be an index, not `{segment}`",
                    here()
                )
            })?;
            let Some(child) = items.get_mut(index) else {
                return Err(format!(
                    "`{}` has {len} entries; there is no index {index}",
                    here()
                ));
            };
            set_path(child, path, depth + 1, value)
        }
        _ => Err(format!(
            "`{}` is a single value, not a table, so `{}` cannot be set in it",
            here(),
            path.join(".")
        )),
    }
}

/// The environment value as TOML: a TOML value when it parses as one (except date-times:
/// no setting is a date, and `12:00:00` is more likely meant as a string), else a string.
fn env_value(raw: &str) -> toml::Value {
    match raw.parse::<toml::Value>() {
        Ok(toml::Value::Datetime(_)) | Err(_) => toml::Value::String(raw.to_string()),
        Ok(value) => value,
    }
}

/// The `SQUALL__` variables among `env`, sorted by name so the result does not depend on
/// the environment's order.
fn collect_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in env {
        if name.starts_with(ENV_PREFIX) {
            vars.insert(name, value);
        }
    }
    let mut overrides = Vec::with_capacity(vars.len());
    for (var, raw) in vars {
        let rest = &var[ENV_PREFIX.len()..];
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if rest.is_empty() || path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                reason: "expected SQUALL__SECTION__FIELD: segments separated by `__`, none \
                         empty"
                    .to_string(),
            });
        }
        overrides.push(EnvOverride {
            value: env_value(&raw),
            var,
            path,
        });
    }
    Ok(overrides)
}

fn apply_all(file: &toml::Table, overrides: &[&EnvOverride]) -> Result<toml::Table, ConfigError> {
    let mut table = file.clone();
    for ov in overrides {
        ov.apply(&mut table)?;
    }
    Ok(table)
}

fn parse_error(err: &toml::de::Error) -> ConfigError {
    ConfigError::Parse(err.to_string().trim_end().to_string())
}

/// `version` is checked before the schema: a file for another version would otherwise
/// fail on its first unfamiliar field, which says nothing about the real problem.
fn check_version(table: &toml::Table) -> Result<(), ConfigError> {
    match table.get("version") {
        None => Err(invalid(
            "version",
            format!("missing: a config starts with `version = {CONFIG_VERSION}`"),
        )),
        Some(toml::Value::Integer(found)) if *found == i64::from(CONFIG_VERSION) => Ok(()),
        Some(toml::Value::Integer(found)) => Err(ConfigError::Version {
            found: *found,
            supported: CONFIG_VERSION,
        }),
        Some(other) => Err(invalid(
            "version",
            format!(
                "must be the integer {CONFIG_VERSION}, not a {}",
                other.type_str()
            ),
        )),
    }
}

/// The `host:port` fields are checked before the schema, so that a malformed one is an
/// [`ConfigError::Invalid`] naming it (`cluster.peers[1].addr: \`nohost\` has no port`),
/// not a parse error that points at a line. A value that is not a string is left to the
/// schema (a type error).
fn check_addresses(table: &toml::Table) -> Result<(), ConfigError> {
    let peers = table
        .get("cluster")
        .and_then(|cluster| cluster.get("peers"))
        .and_then(toml::Value::as_array);
    for (i, peer) in peers.into_iter().flatten().enumerate() {
        for name in ["addr", "client_addr"] {
            if let Some(toml::Value::String(text)) = peer.get(name) {
                text.parse::<HostPort>()
                    .map_err(|e| invalid(format!("cluster.peers[{i}].{name}"), e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Deserializing the file with the overrides failed: say whose fault it is. A variable
/// whose removal makes it parse is named; else, if the file alone fails the same way, it
/// is the file's error (with line and column); else all the variables are named.
fn blame(
    text: &str,
    file: &toml::Table,
    overrides: &[EnvOverride],
    err: &toml::de::Error,
) -> ConfigError {
    let parses = |subset: Vec<&EnvOverride>| {
        apply_all(file, &subset)
            .ok()
            .is_some_and(|table| Config::deserialize(table).is_ok())
    };
    let culprits: Vec<&str> = overrides
        .iter()
        .enumerate()
        .filter(|(skip, _)| {
            parses(
                overrides
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i != skip)
                    .map(|(_, ov)| ov)
                    .collect(),
            )
        })
        .map(|(_, ov)| ov.var.as_str())
        .collect();
    if culprits.is_empty()
        && let Err(file_err) = toml::from_str::<Config>(text)
        && file_err.message() == err.message()
    {
        return parse_error(&file_err);
    }
    let named: Vec<&str> = if culprits.is_empty() {
        overrides.iter().map(|ov| ov.var.as_str()).collect()
    } else {
        culprits
    };
    ConfigError::Env {
        var: named.join(", "),
        reason: format!(
            "the config with this environment override does not parse: {}",
            err.message().trim_end()
        ),
    }
}

/// A validation error about a value an override set says so.
fn attribute(err: ConfigError, overrides: &[EnvOverride]) -> ConfigError {
    let ConfigError::Invalid { field, reason } = err else {
        return err;
    };
    let normalized = field.replace('[', ".").replace(']', "");
    let within = |outer: &str, inner: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    let vars: Vec<&str> = overrides
        .iter()
        .filter(|ov| {
            let path = ov.dotted();
            within(&path, &normalized) || within(&normalized, &path)
        })
        .map(|ov| ov.var.as_str())
        .collect();
    if vars.is_empty() {
        ConfigError::Invalid { field, reason }
    } else {
        ConfigError::Invalid {
            field,
            reason: format!(
                "{reason} (value from environment variable {})",
                vars.join(", ")
            ),
        }
    }
}

/// Compares without stopping at the first differing byte, so response time does not tell
/// a guesser how much of a token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Config {
    /// Parses and validates `text`; no environment overrides.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, std::iter::empty())
    }

    /// Reads `path`, applies the `SQUALL__...` variables of this process's environment,
    /// and validates: what a node does at start.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let value = value.into_string().map_err(|_| ConfigError::Env {
                var: name.to_string(),
                reason: "the value is not valid UTF-8".to_string(),
            })?;
            env.push((name.to_string(), value));
        }
        Config::from_toml_with_env(&text, env).map_err(|err| match err {
            ConfigError::Parse(message) => {
                ConfigError::Parse(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// This config with `overlay` (TOML text) merged in: tables merge key by key, any
    /// other value (arrays included) is replaced. `squall up --overlay` uses it to give
    /// every node of a local cluster a site, remotes, tokens or limits.
    pub fn with_overlay(&self, overlay: &str) -> Result<Config, ConfigError> {
        let overlay: toml::Table = toml::from_str(overlay).map_err(|e| parse_error(&e))?;
        let mut table = toml::Table::try_from(self)
            .map_err(|e| ConfigError::Parse(format!("serializing the config: {e}")))?;
        fn merge(into: &mut toml::Table, from: &toml::Table) {
            for (key, value) in from {
                match (into.get_mut(key), value) {
                    (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => {
                        merge(mine, theirs);
                    }
                    _ => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        merge(&mut table, &overlay);
        let text = toml::to_string(&table)
            .map_err(|e| ConfigError::Parse(format!("serializing the merged config: {e}")))?;
        Config::from_toml_str(&text)
    }

    /// Parses `text`, applies the `SQUALL__...` variables among `env` to it, deserializes
    /// and validates. Variables without the prefix are ignored, so a whole environment
    /// can be passed.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file: toml::Table = toml::from_str(text).map_err(|e| parse_error(&e))?;
        let overrides = collect_overrides(env)?;
        let config = if overrides.is_empty() {
            check_version(&file)?;
            check_addresses(&file)?;
            // From the text, so that errors carry line and column.
            toml::from_str::<Config>(text).map_err(|e| parse_error(&e))?
        } else {
            let table = apply_all(&file, &overrides.iter().collect::<Vec<_>>())?;
            check_version(&table)?;
            check_addresses(&table).map_err(|e| attribute(e, &overrides))?;
            Config::deserialize(table).map_err(|e| blame(text, &file, &overrides, &e))?
        };
        config.validate().map_err(|e| attribute(e, &overrides))?;
        Ok(config)
    }

    /// Checks every rule a node relies on; the first broken one is returned, naming its
    /// field. The constructors call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Version {
                found: i64::from(self.version),
                supported: CONFIG_VERSION,
            });
        }
        self.validate_cluster()?;
        self.validate_node()?;
        self.validate_layout()?;
        self.validate_limits()?;
        self.validate_timing()?;
        self.validate_auth()?;
        self.validate_pools()?;
        self.validate_wan()
    }

    fn validate_wan(&self) -> Result<(), ConfigError> {
        let site_name = |field: String, name: &str| -> Result<(), ConfigError> {
            if squall_udl_host::dfg::is_site_name(name) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!(
                        "`{name}` must be 1 to {SITE_NAME_BYTES_MAX} of [a-z0-9_-] (the \
                         grammar of DFG destinations `site:/pool/`)"
                    ),
                ))
            }
        };
        if let Some(site) = &self.site {
            site_name("site.name".into(), &site.name)?;
        }
        for (i, remote) in self.remotes.iter().enumerate() {
            site_name(format!("remotes[{i}].name"), &remote.name)?;
            if self.site.as_ref().is_some_and(|s| s.name == remote.name) {
                return Err(invalid(
                    format!("remotes[{i}].name"),
                    format!("`{}` is this cluster's own site", remote.name),
                ));
            }
            if let Some(j) = self.remotes[..i].iter().position(|r| r.name == remote.name) {
                return Err(invalid(
                    format!("remotes[{i}].name"),
                    format!("`{}` is also remotes[{j}]", remote.name),
                ));
            }
            if remote.addresses.is_empty() {
                return Err(invalid(
                    format!("remotes[{i}].addresses"),
                    "name at least one client address of the remote cluster",
                ));
            }
            for (j, address) in remote.addresses.iter().enumerate() {
                if !is_host_port(address) {
                    return Err(invalid(
                        format!("remotes[{i}].addresses[{j}]"),
                        format!("`{address}` is not `host:port`"),
                    ));
                }
            }
        }
        for (i, remote) in self.remotes.iter().enumerate() {
            for (advertised, reached) in &remote.address_map {
                for address in [advertised, reached] {
                    if !is_host_port(address) {
                        return Err(invalid(
                            format!("remotes[{i}].address_map"),
                            format!("`{address}` is not `host:port`"),
                        ));
                    }
                }
            }
        }
        let wan = &self.wan;
        if wan.batch_max == 0 || wan.batch_max > self.limits.dedup_per_client_max / 2 {
            return Err(invalid(
                "wan.batch_max",
                format!(
                    "must be 1 to limits.dedup_per_client_max / 2 = {}: a forwarder that \
                     fails over re-sends its last batch, which the remote cluster must still \
                     remember to apply it once",
                    self.limits.dedup_per_client_max / 2
                ),
            ));
        }
        for (field, value) in [
            ("wan.outbox_entries_max", wan.outbox_entries_max),
            ("wan.outbox_bytes_max", wan.outbox_bytes_max),
            ("wan.batch_bytes_max", wan.batch_bytes_max),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if wan.retry_backoff_max_ms == 0 {
            return Err(invalid("wan.retry_backoff_max_ms", "must be positive"));
        }
        if self.remotes.is_empty() {
            return Ok(());
        }
        match self.outbox_subgroup() {
            Some(_) => Ok(()),
            None => Err(match wan.outbox_subgroup {
                Some(g) => invalid(
                    "wan.outbox_subgroup",
                    format!("subgroup {g} is not a persistent data subgroup"),
                ),
                None => invalid(
                    "remotes",
                    "the WAN outbox needs a persistent data subgroup in layout.subgroups",
                ),
            }),
        }
    }

    /// The subgroup (numbered from 1) that holds the WAN outbox: `wan.outbox_subgroup`,
    /// else the first persistent one.
    pub fn outbox_subgroup(&self) -> Option<u32> {
        let persistent = |g: u32| {
            g >= 1
                && self
                    .layout
                    .subgroups
                    .get(g as usize - 1)
                    .is_some_and(|sg| sg.kind == SubgroupKind::Persistent)
        };
        match self.wan.outbox_subgroup {
            Some(g) => persistent(g).then_some(g),
            None => (1..=self.layout.subgroups.len() as u32).find(|g| persistent(*g)),
        }
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if cluster.id > i64::MAX as u64 {
            return Err(invalid(
                "cluster.id",
                "must be at most 2^63 - 1 (TOML integers are signed 64-bit)",
            ));
        }
        if cluster.peers.is_empty() {
            return Err(invalid(
                "cluster.peers",
                "at least one peer is needed (this node itself)",
            ));
        }
        let mut ids: BTreeMap<u32, usize> = BTreeMap::new();
        // Names are compared as written (lowercased): `localhost:7100` and
        // `127.0.0.1:7100` are not found equal without resolving them.
        let mut addrs: HashMap<&HostPort, String> = HashMap::new();
        for (i, peer) in cluster.peers.iter().enumerate() {
            if let Some(j) = ids.insert(peer.id, i) {
                return Err(invalid(
                    format!("cluster.peers[{i}].id"),
                    format!("peer id {} is also cluster.peers[{j}]'s", peer.id),
                ));
            }
            for (what, addr) in [("addr", &peer.addr), ("client_addr", &peer.client_addr)] {
                let field = format!("cluster.peers[{i}].{what}");
                if addr.port() == 0 {
                    return Err(invalid(
                        field,
                        "port 0 (any free port) cannot be told to other nodes and clients",
                    ));
                }
                if let Some(previous) = addrs.insert(addr, field.clone()) {
                    return Err(invalid(
                        field,
                        format!(
                            "{addr} is also {previous}; every node-to-node and client \
                             address must be distinct"
                        ),
                    ));
                }
            }
        }
        if let Some(leader) = cluster.restart_leader
            && !ids.contains_key(&leader)
        {
            return Err(invalid(
                "cluster.restart_leader",
                format!("{leader} is not a peer id"),
            ));
        }
        if let Some(contacts) = &cluster.contacts {
            let mut seen = BTreeSet::new();
            for (i, contact) in contacts.iter().enumerate() {
                if !ids.contains_key(contact) {
                    return Err(invalid(
                        format!("cluster.contacts[{i}]"),
                        format!("{contact} is not a peer id"),
                    ));
                }
                if !seen.insert(contact) {
                    return Err(invalid(
                        format!("cluster.contacts[{i}]"),
                        format!("{contact} is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_node(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        let Some(me) = self.peer(node.id) else {
            let ids: Vec<u32> = self.cluster.peers.iter().map(|p| p.id).collect();
            return Err(invalid(
                "node.id",
                format!(
                    "{} is not among the ids of cluster.peers {ids:?}: a node finds its own \
                     node-to-node address there",
                    node.id
                ),
            ));
        };
        if node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "must not be empty"));
        }
        if node.data_dir.to_str().is_none() {
            return Err(invalid("node.data_dir", "must be valid UTF-8"));
        }
        if let Some(listen) = node.peer_listen_addr {
            if listen.port() == 0 {
                return Err(invalid(
                    "node.peer_listen_addr",
                    "port 0 (any free port): peers dial the port of this node's \
                     cluster.peers entry, so it must be a fixed one",
                ));
            }
            if listen == node.client_addr {
                return Err(invalid(
                    "node.peer_listen_addr",
                    format!("{listen} is already this node's client address (node.client_addr)"),
                ));
            }
        }
        if let Some(http) = node.http_addr
            && (http == node.client_addr
                || node.peer_listen_addr == Some(http)
                || me.addr.socket_addr() == Some(http))
        {
            return Err(invalid(
                "node.http_addr",
                format!("{http} is already this node's client or node-to-node address"),
            ));
        }
        Ok(())
    }

    fn validate_layout(&self) -> Result<(), ConfigError> {
        let subgroups = &self.layout.subgroups;
        if subgroups.is_empty() {
            return Err(invalid(
                "layout.subgroups",
                "at least one data subgroup is needed (subgroup 0, the pool metadata, is \
                 implicit and holds no objects)",
            ));
        }
        let peers = self.cluster.peers.len() as u64;
        for (i, sg) in subgroups.iter().enumerate() {
            let field = |name: &str| format!("layout.subgroups[{i}].{name}");
            if sg.shards == 0 {
                return Err(invalid(field("shards"), "must be at least 1"));
            }
            if sg.min_nodes == 0 {
                return Err(invalid(field("min_nodes"), "must be at least 1"));
            }
            if sg.max_nodes < sg.min_nodes {
                return Err(invalid(
                    field("max_nodes"),
                    format!("{} is below min_nodes = {}", sg.max_nodes, sg.min_nodes),
                ));
            }
            let needed = u64::from(sg.shards) * u64::from(sg.min_nodes);
            if needed > peers {
                return Err(invalid(
                    field("min_nodes"),
                    format!(
                        "subgroup {} needs shards × min_nodes = {needed} distinct nodes (its \
                         shards are disjoint) but the cluster has {peers} peers",
                        i + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, value) in [
            ("key_bytes_max", l.key_bytes_max),
            ("object_bytes_max", l.object_bytes_max),
            ("frame_bytes_max", l.frame_bytes_max),
            ("clients_max", l.clients_max),
            ("requests_in_flight_max", l.requests_in_flight_max),
            ("watchers_max", l.watchers_max),
            ("watch_queue_max", l.watch_queue_max),
            ("dedup_clients_max", l.dedup_clients_max),
            ("dedup_per_client_max", l.dedup_per_client_max),
            ("pools_max", l.pools_max),
            ("udl_workers", l.udl_workers),
            ("udl_queue_max", l.udl_queue_max),
            ("udl_emit_queue_max", l.udl_emit_queue_max),
            ("history_cache_bytes", l.history_cache_bytes),
        ] {
            if value == 0 {
                return Err(invalid(format!("limits.{name}"), "must be at least 1"));
            }
        }
        if l.metadata_log_compact_bytes != 0 && l.metadata_log_compact_bytes < LOG_SEGMENT_BYTES_MIN
        {
            return Err(invalid(
                "limits.metadata_log_compact_bytes",
                format!(
                    "must be 0 (never) or at least {LOG_SEGMENT_BYTES_MIN}: each checkpoint \
                     writes every stored UDL again"
                ),
            ));
        }
        if l.log_segment_bytes < LOG_SEGMENT_BYTES_MIN {
            return Err(invalid(
                "limits.log_segment_bytes",
                format!("must be at least {LOG_SEGMENT_BYTES_MIN}"),
            ));
        }
        match l.object_bytes_max.checked_add(FRAME_HEADROOM_BYTES) {
            Some(needed) if l.frame_bytes_max >= needed => Ok(()),
            needed => Err(invalid(
                "limits.frame_bytes_max",
                format!(
                    "{} is below object_bytes_max + {FRAME_HEADROOM_BYTES} = {}: the largest \
                     object plus its request header must fit in one frame",
                    l.frame_bytes_max,
                    needed.map_or_else(|| "overflow".to_string(), |n| n.to_string())
                ),
            )),
        }
    }

    fn validate_timing(&self) -> Result<(), ConfigError> {
        let t = &self.timing;
        if t.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "timing.heartbeat_interval_ms",
                "must be at least 1",
            ));
        }
        if t.suspicion_timeout_ms <= t.heartbeat_interval_ms {
            return Err(invalid(
                "timing.suspicion_timeout_ms",
                format!(
                    "{} must exceed heartbeat_interval_ms = {}, or peers would be suspected \
                     between two heartbeats",
                    t.suspicion_timeout_ms, t.heartbeat_interval_ms
                ),
            ));
        }
        if t.read_lease_ms > 0 && t.read_lease_ms >= t.restart_grace_ms {
            return Err(invalid(
                "timing.read_lease_ms",
                format!(
                    "{} must be under restart_grace_ms = {}: a total restart must not \
                     outrun a read lease granted before it (0 turns leases off)",
                    t.read_lease_ms, t.restart_grace_ms
                ),
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        for (i, entry) in self.auth.tokens.iter().enumerate() {
            if entry.token.trim().is_empty() {
                return Err(invalid(
                    format!("auth.tokens[{i}].token"),
                    "must not be empty",
                ));
            }
            if let Some(j) = self.auth.tokens[..i]
                .iter()
                .position(|other| other.token == entry.token)
            {
                // The secret itself is not repeated in the message.
                return Err(invalid(
                    format!("auth.tokens[{i}].token"),
                    format!("the same token as auth.tokens[{j}]; tokens must be unique"),
                ));
            }
        }
        Ok(())
    }

    fn validate_pools(&self) -> Result<(), ConfigError> {
        if self.pools.len() > self.limits.pools_max {
            return Err(invalid(
                "pools",
                format!(
                    "{} pools exceed limits.pools_max = {}",
                    self.pools.len(),
                    self.limits.pools_max
                ),
            ));
        }
        let subgroups = &self.layout.subgroups;
        for (i, pool) in self.pools.iter().enumerate() {
            let field = |name: &str| format!("pools[{i}].{name}");
            squall_kvs::key::validate_pool_path(&pool.path, self.limits.key_bytes_max)
                .map_err(|e| invalid(field("path"), e.to_string()))?;
            for (j, other) in self.pools[..i].iter().enumerate() {
                if other.path == pool.path {
                    return Err(invalid(
                        field("path"),
                        format!("{} is also pools[{j}]", pool.path),
                    ));
                }
                if squall_kvs::key::contains(&other.path, &pool.path)
                    || squall_kvs::key::contains(&pool.path, &other.path)
                {
                    return Err(invalid(
                        field("path"),
                        format!(
                            "{} nests with pools[{j}] {}; pools cannot nest",
                            pool.path, other.path
                        ),
                    ));
                }
            }
            let index = match pool.subgroup {
                Some(0) => {
                    return Err(invalid(
                        field("subgroup"),
                        "subgroup 0 is the pool metadata; data subgroups are numbered from 1",
                    ));
                }
                Some(s) => {
                    let Some(sg) = subgroups.get(s as usize - 1) else {
                        return Err(invalid(
                            field("subgroup"),
                            format!(
                                "no data subgroup {s}: layout.subgroups has {} (numbered \
                                 from 1)",
                                subgroups.len()
                            ),
                        ));
                    };
                    if sg.kind != pool.kind {
                        return Err(invalid(
                            field("subgroup"),
                            format!("subgroup {s} is {} but the pool is {}", sg.kind, pool.kind),
                        ));
                    }
                    s as usize - 1
                }
                None => match subgroups.iter().position(|sg| sg.kind == pool.kind) {
                    Some(index) => index,
                    None => {
                        return Err(invalid(
                            field("kind"),
                            format!("no data subgroup in layout.subgroups is {}", pool.kind),
                        ));
                    }
                },
            };
            let available = subgroups[index].shards;
            if pool.shards > available {
                return Err(invalid(
                    field("shards"),
                    format!(
                        "{} exceeds the {available} shards of subgroup {}",
                        pool.shards,
                        index + 1
                    ),
                ));
            }
            if pool.affinity.as_deref() == Some("") {
                return Err(invalid(
                    field("affinity"),
                    "an empty regex matches the empty string in every key and would put \
                     every key on one shard; leave affinity out instead",
                ));
            }
            if pool.gpu_cache.is_some() && pool.kind == SubgroupKind::Trigger {
                return Err(invalid(
                    field("gpu_cache"),
                    "a trigger pool stores nothing, so it has nothing to cache; only \
                     persistent and volatile pools can have a gpu_cache",
                ));
            }
        }
        Ok(())
    }

    /// No tokens configured: every client is admin.
    pub fn is_open(&self) -> bool {
        self.auth.tokens.is_empty()
    }

    /// The peer with this id.
    pub fn peer(&self, id: u32) -> Option<&Peer> {
        self.cluster.peers.iter().find(|p| p.id == id)
    }

    /// Node id → node-to-node address (a name stays a name: the driver resolves it at
    /// every dial).
    pub fn peer_map(&self) -> BTreeMap<u32, HostPort> {
        self.cluster
            .peers
            .iter()
            .map(|p| (p.id, p.addr.clone()))
            .collect()
    }

    /// Node id → address clients reach it at (for redirecting clients).
    pub fn client_map(&self) -> BTreeMap<u32, HostPort> {
        self.cluster
            .peers
            .iter()
            .map(|p| (p.id, p.client_addr.clone()))
            .collect()
    }

    /// The configured restart leader, else the lowest peer id (the same on every node).
    pub fn restart_leader(&self) -> u32 {
        self.cluster.restart_leader.unwrap_or_else(|| {
            self.cluster
                .peers
                .iter()
                .map(|p| p.id)
                .min()
                .unwrap_or(self.node.id)
        })
    }

    /// Who may coordinate a total restart, in order: the restart leader, then every other
    /// peer by id (the same list on every node).
    pub fn restart_leaders(&self) -> Vec<u32> {
        squall_driver::restart_order(
            self.restart_leader(),
            self.cluster.peers.iter().map(|p| p.id),
        )
    }

    /// The configured contacts, else every other peer, by id.
    pub fn contacts(&self) -> Vec<u32> {
        match &self.cluster.contacts {
            Some(contacts) => contacts.clone(),
            None => self
                .peer_map()
                .into_keys()
                .filter(|id| *id != self.node.id)
                .collect(),
        }
    }

    /// The data subgroup (numbered from 1) that `entry` goes into: its own, else the
    /// first of its kind. 0 (never a data subgroup) only for an entry [`Config::validate`]
    /// would refuse.
    pub fn pool_subgroup(&self, entry: &PoolEntry) -> u32 {
        entry.subgroup.unwrap_or_else(|| {
            self.layout
                .subgroups
                .iter()
                .position(|sg| sg.kind == entry.kind)
                .map_or(0, |index| index as u32 + 1)
        })
    }

    /// What the metadata subgroup is asked to create for `entry`.
    pub fn pool_spec(&self, entry: &PoolEntry) -> squall_kvs::PoolSpec {
        let mut spec = squall_kvs::PoolSpec::new(
            entry.path.clone(),
            entry.kind.into(),
            self.pool_subgroup(entry),
        );
        spec.shards = entry.shards;
        spec.affinity = entry.affinity.clone();
        spec.gpu_cache = entry.gpu_cache.map(|gpu_cache| squall_kvs::GpuCache {
            device: gpu_cache.device,
            capacity_bytes: gpu_cache.capacity.bytes(),
        });
        spec
    }

    /// What a client presenting `token` may do: anything on an open node; else the role
    /// of its token, or `None` (refused) for a missing or unknown token.
    pub fn role_of(&self, token: Option<&str>) -> Option<Role> {
        if self.is_open() {
            return Some(Role::Admin);
        }
        let token = token?;
        // Every entry is compared, so timing does not reveal which one matched.
        let mut role = None;
        for entry in &self.auth.tokens {
            if same_secret(entry.token.as_bytes(), token.as_bytes()) {
                role = Some(entry.role);
            }
        }
        role
    }

    /// The configuration as TOML that [`Config::from_toml_str`] reads back equal.
    ///
    /// # Panics
    ///
    /// Only for a configuration that [`Config::validate`] refuses as unrepresentable: a
    /// `cluster.id` above `i64::MAX` or a non-UTF-8 `node.data_dir`.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a valid config is representable in TOML")
    }

    /// The configurations of `nodes` nodes on 127.0.0.1 for `squall up`; see
    /// [`local_cluster`].
    pub fn local_cluster(
        nodes: u32,
        peer_base_port: u16,
        client_base_port: u16,
        data_root: &Path,
    ) -> Vec<Config> {
        local_cluster(nodes, peer_base_port, client_base_port, data_root)
    }
}

/// Configurations for a local cluster (`squall up`): node `i` of `nodes` listens on
/// 127.0.0.1 at `peer_base_port + i` (node-to-node) and `client_base_port + i` (clients),
/// keeps its data in `data_root/n<i>`, and all share one persistent and one volatile
/// subgroup (1 shard of 1 to `nodes` nodes each) with pools `/demo` (persistent) and
/// `/cache` (volatile). Open access (no tokens).
///
/// # Panics
///
/// When [`try_local_cluster`] fails: no nodes, ports beyond 65535, overlapping port
/// ranges, or a non-UTF-8 `data_root`.
pub fn local_cluster(
    nodes: u32,
    peer_base_port: u16,
    client_base_port: u16,
    data_root: &Path,
) -> Vec<Config> {
    match try_local_cluster(nodes, peer_base_port, client_base_port, data_root) {
        Ok(configs) => configs,
        Err(err) => panic!("local cluster configuration: {err}"),
    }
}

/// [`local_cluster`], returning the reason instead of panicking.
pub fn try_local_cluster(
    nodes: u32,
    peer_base_port: u16,
    client_base_port: u16,
    data_root: &Path,
) -> Result<Vec<Config>, ConfigError> {
    if nodes == 0 {
        return Err(invalid("nodes", "a cluster needs at least one node"));
    }
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = |base: u16, i: u32, what: &str| {
        u16::try_from(u32::from(base) + i)
            .map(|port| SocketAddr::new(localhost, port))
            .map_err(|_| {
                invalid(
                    what,
                    format!("{base} + {i} is beyond the last port (65535)"),
                )
            })
    };
    let peers = (0..nodes)
        .map(|i| {
            Ok(Peer {
                id: i,
                addr: port(peer_base_port, i, "peer_base_port")?.into(),
                client_addr: port(client_base_port, i, "client_base_port")?.into(),
            })
        })
        .collect::<Result<Vec<Peer>, ConfigError>>()?;
    let subgroup = |kind| SubgroupSpec {
        kind,
        shards: 1,
        min_nodes: 1,
        max_nodes: nodes,
    };
    let pool = |path: &str, kind| PoolEntry {
        path: path.to_string(),
        kind,
        subgroup: None,
        shards: 0,
        affinity: None,
        gpu_cache: None,
    };
    peers
        .iter()
        .map(|me| {
            let config = Config {
                version: CONFIG_VERSION,
                node: NodeSection {
                    id: me.id,
                    data_dir: data_root.join(format!("n{}", me.id)),
                    client_addr: port(client_base_port, me.id, "client_base_port")?,
                    peer_listen_addr: None,
                    http_addr: None,
                },
                cluster: ClusterSection {
                    id: DEFAULT_CLUSTER_ID,
                    restart_leader: None,
                    contacts: None,
                    peers: peers.clone(),
                },
                layout: LayoutSection {
                    subgroups: vec![
                        subgroup(SubgroupKind::Persistent),
                        subgroup(SubgroupKind::Volatile),
                    ],
                },
                limits: Limits::default(),
                timing: Timing::default(),
                auth: Auth::default(),
                pools: vec![
                    pool("/demo", SubgroupKind::Persistent),
                    pool("/cache", SubgroupKind::Volatile),
                ],
                site: None,
                remotes: Vec::new(),
                wan: Wan::default(),
            };
            config.validate()?;
            Ok(config)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml block of the module documentation, so the documented example is the
    /// tested one.
    fn doc_example() -> String {
        let source = include_str!("config.rs");
        let mut lines = source
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .map(|line| line.strip_prefix("//!").unwrap_or(line))
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .skip_while(|line| *line != "```toml")
            .skip(1);
        let mut text = String::new();
        for line in lines.by_ref() {
            if line == "```" {
                return text;
            }
            text.push_str(line);
            text.push('\n');
        }
        panic!("the module documentation has no closed ```toml block");
    }

    const MINIMAL: &str = r#"
version = 1

[node]
id = 1
data_dir = "/tmp/squall/n1"
client_addr = "127.0.0.1:7201"

[[cluster.peers]]
id = 1
addr = "127.0.0.1:7101"
client_addr = "127.0.0.1:7201"

[[cluster.peers]]
id = 0
addr = "127.0.0.1:7100"
client_addr = "127.0.0.1:7200"

[[layout.subgroups]]
kind = "volatile"
shards = 1
min_nodes = 1
max_nodes = 2
"#;

    fn example() -> Config {
        Config::from_toml_str(&doc_example()).expect("the documented example is valid")
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, env(vars))
    }

    fn invalid_field(result: Result<impl fmt::Debug, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { field, reason }) => (field, reason),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    fn host_port(text: &str) -> HostPort {
        text.parse().expect("a host:port")
    }

    #[test]
    fn doc_example_parses_and_validates() {
        let text = doc_example();
        assert!(text.starts_with("version = 1\n"), "{text}");
        let config = example();
        assert_eq!(config.version, CONFIG_VERSION);
        assert_eq!(config.node.id, 0);
        assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/squall/n0"));
        assert_eq!(config.node.client_addr, addr("127.0.0.1:7200"));
        assert_eq!(config.node.http_addr, Some(addr("127.0.0.1:7300")));
        assert_eq!(config.node.peer_listen_addr, Some(addr("0.0.0.0:7100")));
        assert_eq!(config.cluster.id, DEFAULT_CLUSTER_ID);
        assert_eq!(config.cluster.id, 1_364_541_772);
        assert_eq!(config.restart_leader(), 0);
        assert_eq!(config.restart_leaders(), vec![0, 1, 2]);
        assert_eq!(config.contacts(), vec![1, 2]);
        // A preferred leader other than the lowest id comes first; the others back it up.
        let text = doc_example().replacen("restart_leader = 0", "restart_leader = 2", 1);
        let other = Config::from_toml_str(&text).expect("leader 2 is a peer");
        assert_eq!(other.restart_leaders(), vec![2, 0, 1]);
        assert_eq!(
            config.peer_map(),
            BTreeMap::from([
                (0, host_port("127.0.0.1:7100")),
                (1, host_port("127.0.0.1:7101")),
                (2, host_port("127.0.0.1:7102")),
            ])
        );
        assert_eq!(config.client_map()[&2], host_port("127.0.0.1:7202"));
        assert_eq!(config.layout.subgroups.len(), 2);
        assert_eq!(config.layout.subgroups[1].kind, SubgroupKind::Volatile);
        assert_eq!(config.layout.subgroups[1].shards, 3);
        // The example spells out every default.
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.timing, Timing::default());
        assert!(!config.is_open());
        assert_eq!(config.auth.tokens[0].role, Role::Admin);
        assert_eq!(config.pools.len(), 2);
        assert_eq!(config.pool_subgroup(&config.pools[0]), 1);
        assert_eq!(config.pool_subgroup(&config.pools[1]), 2);
        assert_eq!(config.pools[1].affinity.as_deref(), Some("cam[0-9]+"));
        let spec = config.pool_spec(&config.pools[1]);
        assert_eq!(spec.path, "/cams");
        assert_eq!(spec.kind, squall_kvs::StoreKind::Volatile);
        assert_eq!(spec.subgroup, 2);
        assert_eq!(spec.shards, 0);
        assert_eq!(spec.affinity.as_deref(), Some("cam[0-9]+"));
        assert_eq!(
            spec.gpu_cache,
            Some(squall_kvs::GpuCache {
                device: 0,
                capacity_bytes: 8 << 30
            })
        );
        assert_eq!(config.pool_spec(&config.pools[0]).gpu_cache, None);
    }

    #[test]
    fn gpu_cache_is_a_pool_option_of_stored_pools_only() {
        let with_pool = |pool: &str| {
            let text = doc_example();
            let cut = text.find("[[pools]]").expect("the example has pools");
            format!("{}{pool}", &text[..cut])
        };
        let config = Config::from_toml_str(&with_pool(
            "[[pools]]\npath = \"/frames\"\nkind = \"persistent\"\n\
             gpu_cache = { device = 1, capacity = \"512MiB\" }\n",
        ))
        .expect("a persistent pool can be GPU-cached");
        let spec = config.pool_spec(&config.pools[0]);
        assert_eq!(
            spec.gpu_cache,
            Some(squall_kvs::GpuCache {
                device: 1,
                capacity_bytes: 512 << 20
            })
        );
        // Written back out (an overlay merges through serialization), it is the same.
        let again = config.with_overlay("").expect("round trip");
        assert_eq!(again.pools, config.pools);

        let trigger = with_pool(
            "[[layout.subgroups]]\nkind = \"trigger\"\nshards = 1\nmin_nodes = 1\n\
             max_nodes = 1\n\n[[pools]]\npath = \"/t\"\nkind = \"trigger\"\n\
             gpu_cache = { device = 0, capacity = \"1GiB\" }\n",
        );
        let error = Config::from_toml_str(&trigger).expect_err("a trigger pool");
        assert!(error.to_string().contains("pools[0].gpu_cache"), "{error}");
        let error = Config::from_toml_str(&with_pool(
            "[[pools]]\npath = \"/z\"\nkind = \"volatile\"\n\
             gpu_cache = { device = 0, capacity = 0 }\n",
        ))
        .expect_err("a zero capacity");
        assert!(error.to_string().contains("more than 0 bytes"), "{error}");
        let error = Config::from_toml_str(&with_pool(
            "[[pools]]\npath = \"/z\"\nkind = \"volatile\"\n\
             gpu_cache = { device = 0, capacity = \"1GiB\", policy = \"lru\" }\n",
        ))
        .expect_err("an unknown field");
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere_with_the_field_named() {
        let text = doc_example();
        let anchors = [
            "version = 1",
            "[node]",
            "[cluster]",
            "[[cluster.peers]]",
            "[[layout.subgroups]]",
            "[limits]",
            "[timing]",
            "[[auth.tokens]]",
            "[[pools]]",
        ];
        for anchor in anchors {
            assert!(text.contains(anchor), "{anchor}");
            let broken = text.replacen(anchor, &format!("{anchor}\nbogus_field = 1"), 1);
            match Config::from_toml_str(&broken) {
                Err(ConfigError::Parse(message)) => {
                    assert!(message.contains("bogus_field"), "{anchor}: {message}");
                    assert!(message.contains("line"), "{anchor}: {message}");
                }
                other => panic!("{anchor}: expected a parse error, got {other:?}"),
            }
        }
        // An unknown section too.
        let broken = format!("{text}\n[extra]\nx = 1\n");
        let err = Config::from_toml_str(&broken).expect_err("unknown section");
        assert!(err.to_string().contains("extra"), "{err}");
        // A misspelt enum value.
        let broken = text.replacen("role = \"admin\"", "role = \"root\"", 1);
        let err = Config::from_toml_str(&broken).expect_err("unknown role");
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn not_toml_is_a_parse_error_with_position() {
        let err = Config::from_toml_str("version = 1\n[node\n").expect_err("not TOML");
        match err {
            ConfigError::Parse(message) => assert!(message.contains("line 2"), "{message}"),
            other => panic!("{other:?}"),
        }
        let err = Config::from_toml_str("version = 1\n").expect_err("missing sections");
        assert!(err.to_string().contains("node"), "{err}");
    }

    #[test]
    fn other_versions_are_refused_naming_the_supported_one() {
        let text = MINIMAL.replacen("version = 1", "version = 2", 1);
        let err = Config::from_toml_str(&text).expect_err("version 2");
        assert!(
            matches!(
                err,
                ConfigError::Version {
                    found: 2,
                    supported: 1
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("version = 1"), "{err}");
        // Checked before the schema: a future file's new fields do not hide the cause.
        let text = format!(
            "{}\n[future]\nx = 1\n",
            MINIMAL.replacen("version = 1", "version = 7", 1)
        );
        assert!(matches!(
            Config::from_toml_str(&text),
            Err(ConfigError::Version { found: 7, .. })
        ));
        let text = MINIMAL.replacen("version = 1", "", 1);
        let (field, reason) = invalid_field(Config::from_toml_str(&text));
        assert_eq!(field, "version");
        assert!(reason.contains("version = 1"), "{reason}");
        let text = MINIMAL.replacen("version = 1", "version = \"1\"", 1);
        assert_eq!(invalid_field(Config::from_toml_str(&text)).0, "version");
        // A struct built in code is checked too.
        let mut config = example();
        config.version = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Version { found: 0, .. })
        ));
    }

    #[test]
    fn defaults_are_filled() {
        let config = Config::from_toml_str(MINIMAL).expect("minimal config");
        assert_eq!(config.cluster.id, DEFAULT_CLUSTER_ID);
        assert_eq!(config.node.http_addr, None);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.key_bytes_max, 1024);
        assert_eq!(config.limits.object_bytes_max, 64 << 20);
        assert_eq!(config.limits.frame_bytes_max, 68_157_440);
        assert_eq!(config.limits.clients_max, 1024);
        assert_eq!(config.limits.requests_in_flight_max, 4096);
        assert_eq!(config.limits.watchers_max, 1024);
        assert_eq!(config.limits.watch_queue_max, 4096);
        assert_eq!(config.limits.dedup_clients_max, 4096);
        assert_eq!(config.limits.dedup_per_client_max, 256);
        assert_eq!(config.limits.pools_max, 1024);
        assert_eq!(
            config.timing.heartbeat_interval(),
            Duration::from_millis(20)
        );
        assert_eq!(config.timing.suspicion_timeout(), Duration::from_secs(1));
        assert_eq!(config.timing.restart_grace(), Duration::from_secs(2));
        assert!(config.is_open());
        assert!(config.pools.is_empty());
        // Lowest peer id, not the first listed.
        assert_eq!(config.restart_leader(), 0);
        assert_eq!(config.restart_leaders(), vec![0, 1]);
        assert_eq!(config.contacts(), vec![0]);
        // Partial sections keep the other defaults.
        let text =
            format!("{MINIMAL}\n[limits]\nclients_max = 8\n[timing]\nrestart_grace_ms = 500\n");
        let config = Config::from_toml_str(&text).expect("partial sections");
        assert_eq!(config.limits.clients_max, 8);
        assert_eq!(config.limits.watchers_max, 1024);
        assert_eq!(config.timing.restart_grace_ms, 500);
        assert_eq!(config.timing.heartbeat_interval_ms, 20);
        assert_eq!(
            config.limits.store_limits(),
            squall_kvs::StoreLimits::default()
        );
    }

    #[test]
    fn every_validation_rule_names_its_field() {
        type Break = fn(&mut Config);
        let cases: Vec<(&str, Break)> = vec![
            ("cluster.peers", |c| c.cluster.peers.clear()),
            ("cluster.peers[1].id", |c| c.cluster.peers[1].id = 0),
            ("cluster.peers[1].addr", |c| {
                c.cluster.peers[1].addr = c.cluster.peers[0].addr.clone();
            }),
            ("cluster.peers[2].client_addr", |c| {
                c.cluster.peers[2].client_addr = c.cluster.peers[0].client_addr.clone();
            }),
            ("cluster.peers[0].client_addr", |c| {
                c.cluster.peers[0].client_addr = c.cluster.peers[0].addr.clone();
            }),
            ("cluster.peers[0].addr", |c| {
                c.cluster.peers[0].addr = host_port("127.0.0.1:0");
            }),
            ("cluster.peers[1].addr", |c| {
                c.cluster.peers[0].addr = host_port("squall-0.squall:7100");
                c.cluster.peers[1].addr = host_port("Squall-0.Squall:7100");
            }),
            ("cluster.peers[2].client_addr", |c| {
                c.cluster.peers[2].client_addr = host_port("squall-0:0");
            }),
            ("node.peer_listen_addr", |c| {
                c.node.peer_listen_addr = Some(addr("0.0.0.0:0"))
            }),
            ("node.peer_listen_addr", |c| {
                c.node.peer_listen_addr = Some(c.node.client_addr)
            }),
            ("node.http_addr", |c| {
                c.node.http_addr = c.node.peer_listen_addr
            }),
            ("node.http_addr", |c| {
                c.node.http_addr = c.cluster.peers[0].addr.socket_addr()
            }),
            ("cluster.id", |c| c.cluster.id = u64::MAX),
            ("cluster.restart_leader", |c| {
                c.cluster.restart_leader = Some(9)
            }),
            ("cluster.contacts[1]", |c| {
                c.cluster.contacts = Some(vec![1, 7])
            }),
            ("cluster.contacts[1]", |c| {
                c.cluster.contacts = Some(vec![1, 1])
            }),
            ("node.id", |c| c.node.id = 5),
            ("node.data_dir", |c| c.node.data_dir = PathBuf::new()),
            ("node.http_addr", |c| {
                c.node.http_addr = Some(c.node.client_addr)
            }),
            ("layout.subgroups", |c| c.layout.subgroups.clear()),
            ("layout.subgroups[0].shards", |c| {
                c.layout.subgroups[0].shards = 0
            }),
            ("layout.subgroups[0].min_nodes", |c| {
                c.layout.subgroups[0].min_nodes = 0;
            }),
            ("layout.subgroups[0].max_nodes", |c| {
                c.layout.subgroups[0].min_nodes = 3;
                c.layout.subgroups[0].max_nodes = 2;
            }),
            ("layout.subgroups[1].min_nodes", |c| {
                c.layout.subgroups[1].min_nodes = 2;
                c.layout.subgroups[1].max_nodes = 2;
            }),
            ("timing.heartbeat_interval_ms", |c| {
                c.timing.heartbeat_interval_ms = 0
            }),
            ("timing.suspicion_timeout_ms", |c| {
                c.timing.suspicion_timeout_ms = c.timing.heartbeat_interval_ms;
            }),
            ("limits.frame_bytes_max", |c| {
                c.limits.frame_bytes_max = c.limits.object_bytes_max + 4095;
            }),
            ("limits.frame_bytes_max", |c| {
                c.limits.object_bytes_max = usize::MAX
            }),
            ("limits.watch_queue_max", |c| c.limits.watch_queue_max = 0),
            ("auth.tokens[1].token", |c| {
                c.auth.tokens[1].token = String::new()
            }),
            ("auth.tokens[1].token", |c| {
                c.auth.tokens[1].token = c.auth.tokens[0].token.clone();
            }),
            ("pools", |c| c.limits.pools_max = 1),
            ("pools[0].path", |c| c.pools[0].path = "demo".to_string()),
            ("pools[1].path", |c| c.pools[1].path = "/demo".to_string()),
            ("pools[1].path", |c| {
                c.pools[1].path = "/demo/cams".to_string()
            }),
            ("pools[0].subgroup", |c| c.pools[0].subgroup = Some(0)),
            ("pools[0].subgroup", |c| c.pools[0].subgroup = Some(3)),
            ("pools[0].subgroup", |c| c.pools[0].subgroup = Some(2)),
            ("pools[1].kind", |c| c.pools[1].kind = SubgroupKind::Trigger),
            ("pools[0].shards", |c| c.pools[0].shards = 2),
            ("pools[1].affinity", |c| {
                c.pools[1].affinity = Some(String::new())
            }),
        ];
        let base = example();
        assert_eq!(base.validate().ok(), Some(()));
        for (expected, break_it) in cases {
            let mut config = base.clone();
            break_it(&mut config);
            let (field, reason) = invalid_field(config.validate());
            assert_eq!(field, expected, "{reason}");
            assert!(!reason.is_empty());
            let message = ConfigError::Invalid {
                field: field.clone(),
                reason,
            }
            .to_string();
            assert!(message.contains(expected), "{message}");
        }
        // Each fix-up above really was needed: a valid variant of the same edits passes.
        let mut config = base.clone();
        config.pools[1].shards = 3;
        config.cluster.contacts = None;
        config.limits.frame_bytes_max = config.limits.object_bytes_max + 4096;
        assert_eq!(config.validate().ok(), Some(()));
    }

    #[test]
    fn the_constructors_validate() {
        let text = doc_example().replacen(
            "suspicion_timeout_ms = 1000",
            "suspicion_timeout_ms = 20",
            1,
        );
        let (field, _) = invalid_field(Config::from_toml_str(&text));
        assert_eq!(field, "timing.suspicion_timeout_ms");
        let text = doc_example().replacen("read_lease_ms = 300", "read_lease_ms = 2000", 1);
        assert_eq!(
            invalid_field(Config::from_toml_str(&text)).0,
            "timing.read_lease_ms"
        );
        let text = doc_example().replacen("read_lease_ms = 300", "read_lease_ms = 0", 1);
        assert_eq!(
            Config::from_toml_str(&text)
                .expect("leases off")
                .timing
                .read_lease_ms,
            0
        );
        let text = doc_example().replacen("restart_leader = 0", "restart_leader = 3", 1);
        assert_eq!(
            invalid_field(Config::from_toml_str(&text)).0,
            "cluster.restart_leader"
        );
        // The secret is never echoed.
        let text = doc_example().replacen("\"dashboard-ro\"", "\"s3cret\"", 1);
        let err = Config::from_toml_str(&text).expect_err("duplicate token");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn env_overrides_numbers_strings_and_nested_paths() {
        let config = with_env(
            MINIMAL,
            &[
                ("SQUALL__NODE__ID", "0"),
                ("SQUALL__NODE__DATA_DIR", "/tmp/x"),
                ("SQUALL__NODE__CLIENT_ADDR", "0.0.0.0:7200"),
                ("SQUALL__NODE__HTTP_ADDR", "127.0.0.1:7300"),
                ("SQUALL__LIMITS__OBJECT_BYTES_MAX", "1048576"),
                ("SQUALL__TIMING__SUSPICION_TIMEOUT_MS", "500"),
                ("SQUALL__CLUSTER__ID", "0x10"),
                ("SQUALL__CLUSTER__CONTACTS", "[1]"),
                ("SQUALL__CLUSTER__PEERS__0__ADDR", "127.0.0.1:8101"),
                ("SQUALL__LAYOUT__SUBGROUPS__0__KIND", "persistent"),
                (
                    "SQUALL__AUTH__TOKENS",
                    "[{ token = \"t\", role = \"write\" }]",
                ),
                ("PATH", "/usr/bin"),
                ("SQUALL_NODE_ID", "9"),
            ],
        )
        .expect("overrides apply");
        assert_eq!(config.node.id, 0);
        assert_eq!(config.node.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.node.client_addr, addr("0.0.0.0:7200"));
        assert_eq!(config.node.http_addr, Some(addr("127.0.0.1:7300")));
        assert_eq!(config.limits.object_bytes_max, 1 << 20);
        assert_eq!(
            config.limits.clients_max, 1024,
            "the rest keeps its defaults"
        );
        assert_eq!(config.timing.suspicion_timeout_ms, 500);
        assert_eq!(config.timing.heartbeat_interval_ms, 20);
        assert_eq!(config.cluster.id, 16);
        assert_eq!(config.contacts(), vec![1]);
        assert_eq!(config.peer_map()[&1], host_port("127.0.0.1:8101"));
        assert_eq!(config.layout.subgroups[0].kind, SubgroupKind::Persistent);
        assert_eq!(config.role_of(Some("t")), Some(Role::Write));
        // The file itself sets a value an override replaces.
        let text = format!("{MINIMAL}\n[timing]\nsuspicion_timeout_ms = 900\n");
        let config =
            with_env(&text, &[("SQUALL__TIMING__SUSPICION_TIMEOUT_MS", "700")]).expect("override");
        assert_eq!(config.timing.suspicion_timeout_ms, 700);
        // A quoted value stays a string.
        let config = with_env(MINIMAL, &[("SQUALL__NODE__DATA_DIR", "\"123\"")]).expect("quoted");
        assert_eq!(config.node.data_dir, PathBuf::from("123"));
        // Without overrides the result is the plain parse.
        assert_eq!(
            with_env(MINIMAL, &[("HOME", "/root")]).expect("no overrides"),
            Config::from_toml_str(MINIMAL).expect("minimal")
        );
    }

    #[test]
    fn env_override_of_an_unknown_field_names_the_variable() {
        let err = with_env(
            MINIMAL,
            &[("SQUALL__NODE__BOGUS", "1"), ("SQUALL__NODE__ID", "0")],
        )
        .expect_err("unknown field");
        match &err {
            ConfigError::Env { var, reason } => {
                assert_eq!(var, "SQUALL__NODE__BOGUS");
                assert!(reason.contains("bogus"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("SQUALL__NODE__BOGUS"), "{err}");
        // A whole unknown section.
        let err = with_env(MINIMAL, &[("SQUALL__NOPE__X", "1")]).expect_err("unknown section");
        assert!(err.to_string().contains("SQUALL__NOPE__X"), "{err}");
        // A value of the wrong type.
        let err = with_env(MINIMAL, &[("SQUALL__NODE__ID", "-1")]).expect_err("negative id");
        assert!(
            matches!(&err, ConfigError::Env { var, .. } if var == "SQUALL__NODE__ID"),
            "{err:?}"
        );
        let err = with_env(MINIMAL, &[("SQUALL__LIMITS__CLIENTS_MAX", "many")])
            .expect_err("not a number");
        assert!(
            err.to_string().contains("SQUALL__LIMITS__CLIENTS_MAX"),
            "{err}"
        );
    }

    #[test]
    fn env_errors_are_attributed() {
        // A rule broken by an override's value names the field and the variable.
        let (field, reason) = invalid_field(with_env(
            MINIMAL,
            &[("SQUALL__TIMING__SUSPICION_TIMEOUT_MS", "10")],
        ));
        assert_eq!(field, "timing.suspicion_timeout_ms");
        assert!(
            reason.contains("SQUALL__TIMING__SUSPICION_TIMEOUT_MS"),
            "{reason}"
        );
        let (field, reason) = invalid_field(with_env(MINIMAL, &[("SQUALL__NODE__ID", "4")]));
        assert_eq!(field, "node.id");
        assert!(reason.contains("SQUALL__NODE__ID"), "{reason}");
        // A version from the environment is checked like one from the file.
        assert!(matches!(
            with_env(MINIMAL, &[("SQUALL__VERSION", "2")]),
            Err(ConfigError::Version { found: 2, .. })
        ));
        // The file's own mistake is the file's, with its position, despite overrides.
        let text = MINIMAL.replacen("[node]", "[node]\ntypo = 1", 1);
        match with_env(&text, &[("SQUALL__NODE__ID", "0")]) {
            Err(ConfigError::Parse(message)) => {
                assert!(
                    message.contains("typo") && message.contains("line"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // An override can supply what the file lacks.
        let text = MINIMAL.replacen("id = 1\ndata_dir", "data_dir", 1);
        assert!(Config::from_toml_str(&text).is_err());
        assert_eq!(
            with_env(&text, &[("SQUALL__NODE__ID", "1")])
                .expect("id from the environment")
                .node
                .id,
            1
        );
        // Malformed names and paths.
        for (var, value) in [
            ("SQUALL__", "1"),
            ("SQUALL__NODE____ID", "1"),
            ("SQUALL__NODE__ID__X", "1"),
            ("SQUALL__CLUSTER__PEERS__5__ADDR", "127.0.0.1:1"),
            ("SQUALL__CLUSTER__PEERS__FIRST__ADDR", "127.0.0.1:1"),
        ] {
            match with_env(MINIMAL, &[(var, value)]) {
                Err(ConfigError::Env { var: named, reason }) => {
                    assert_eq!(named, var, "{reason}");
                }
                other => panic!("{var}: {other:?}"),
            }
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let configs = [
            example(),
            Config::from_toml_str(MINIMAL).expect("minimal"),
            local_cluster(2, 17100, 17200, Path::new("/tmp/squall")).remove(1),
        ];
        for config in configs {
            let text = config.to_toml_string();
            let back = Config::from_toml_str(&text).expect("reads back");
            assert_eq!(back, config, "{text}");
        }
    }

    #[test]
    fn local_cluster_gives_valid_distinct_nodes() {
        let root = Path::new("/tmp/squall-up");
        let configs = local_cluster(3, 7100, 7200, root);
        assert_eq!(configs.len(), 3);
        let mut ports = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        for (i, config) in configs.iter().enumerate() {
            assert_eq!(config.validate().ok(), Some(()));
            assert_eq!(config.node.id, i as u32);
            assert_eq!(config.node.data_dir, root.join(format!("n{i}")));
            assert_eq!(
                config.node.client_addr,
                addr(&format!("127.0.0.1:{}", 7200 + i))
            );
            assert_eq!(
                config.peer_map()[&(i as u32)],
                host_port(&format!("127.0.0.1:{}", 7100 + i))
            );
            assert_eq!(config.node.peer_listen_addr, None);
            assert!(ports.insert(config.node.client_addr.port()));
            assert!(ports.insert(config.peer_map()[&(i as u32)].port()));
            assert!(dirs.insert(config.node.data_dir.clone()));
            assert_eq!(config.cluster.peers, configs[0].cluster.peers);
            assert_eq!(config.layout, configs[0].layout);
            assert_eq!(config.restart_leader(), 0);
            assert_eq!(config.contacts().len(), 2);
            assert!(!config.contacts().contains(&(i as u32)));
            assert!(config.is_open());
            let subgroups = &config.layout.subgroups;
            assert_eq!(subgroups.len(), 2);
            assert_eq!(subgroups[0].kind, SubgroupKind::Persistent);
            assert_eq!(subgroups[1].kind, SubgroupKind::Volatile);
            assert!(
                subgroups
                    .iter()
                    .all(|sg| sg.shards == 1 && sg.min_nodes == 1 && sg.max_nodes == 3)
            );
            let pools: Vec<(&str, u32)> = config
                .pools
                .iter()
                .map(|p| (p.path.as_str(), config.pool_subgroup(p)))
                .collect();
            assert_eq!(pools, vec![("/demo", 1), ("/cache", 2)]);
        }
        assert_eq!(ports.len(), 6);
        assert_eq!(dirs.len(), 3);
        assert!(try_local_cluster(0, 7100, 7200, root).is_err());
        assert!(
            try_local_cluster(3, 7100, 7101, root).is_err(),
            "overlapping ports"
        );
        assert!(
            try_local_cluster(3, 65534, 7200, root).is_err(),
            "past port 65535"
        );
        assert_eq!(Config::local_cluster(1, 7100, 7200, root).len(), 1);
    }

    /// MINIMAL with its peers at these `addr`s (node 1's first) and `client_addr`s.
    fn with_peer_addrs(addrs: [&str; 2], client_addrs: [&str; 2]) -> String {
        MINIMAL
            .replacen(
                "addr = \"127.0.0.1:7101\"",
                &format!("addr = \"{}\"", addrs[0]),
                1,
            )
            .replacen(
                "addr = \"127.0.0.1:7100\"",
                &format!("addr = \"{}\"", addrs[1]),
                1,
            )
            .replacen(
                "client_addr = \"127.0.0.1:7201\"\n\n[[cluster.peers]]\nid = 0",
                &format!(
                    "client_addr = \"{}\"\n\n[[cluster.peers]]\nid = 0",
                    client_addrs[0]
                ),
                1,
            )
            .replacen(
                "client_addr = \"127.0.0.1:7200\"\n\n[[layout",
                &format!("client_addr = \"{}\"\n\n[[layout", client_addrs[1]),
                1,
            )
    }

    #[test]
    fn peer_addresses_may_be_dns_names() {
        let text = with_peer_addrs(
            [
                "squall-1.squall-peers.default.svc.cluster.local:7100",
                "[fd00::5]:7100",
            ],
            ["localhost:7201", "Squall-0.Squall-Peers:7200"],
        );
        let text = text.replacen(
            "[[cluster.peers]]",
            "peer_listen_addr = \"0.0.0.0:7100\"\n\n[[cluster.peers]]",
            1,
        );
        let config = Config::from_toml_str(&text).expect("names are addresses");
        assert_eq!(config.node.peer_listen_addr, Some(addr("0.0.0.0:7100")));
        let peers = config.peer_map();
        assert_eq!(
            peers[&1].to_string(),
            "squall-1.squall-peers.default.svc.cluster.local:7100"
        );
        assert!(peers[&1].is_name());
        assert_eq!(peers[&0].socket_addr(), Some(addr("[fd00::5]:7100")));
        let clients = config.client_map();
        assert_eq!(clients[&1].to_string(), "localhost:7201");
        assert_eq!(clients[&0].to_string(), "squall-0.squall-peers:7200");
        // Written back as the same strings (the name lowercased), read back equal.
        let written = config.to_toml_string();
        assert!(written.contains("\"[fd00::5]:7100\""), "{written}");
        assert!(
            written.contains("\"squall-0.squall-peers:7200\""),
            "{written}"
        );
        assert_eq!(Config::from_toml_str(&written).expect("reads back"), config);
        // A file of IPs reads as before and writes the same strings.
        let minimal = Config::from_toml_str(MINIMAL).expect("minimal");
        assert!(
            minimal
                .to_toml_string()
                .contains("addr = \"127.0.0.1:7101\"")
        );
        assert_eq!(
            minimal.peer_map()[&0].socket_addr(),
            Some(addr("127.0.0.1:7100"))
        );
        // The node's listen address from the environment.
        let config = with_env(
            MINIMAL,
            &[("SQUALL__NODE__PEER_LISTEN_ADDR", "0.0.0.0:7101")],
        )
        .expect("override");
        assert_eq!(config.node.peer_listen_addr, Some(addr("0.0.0.0:7101")));
    }

    #[test]
    fn malformed_addresses_are_errors_naming_the_field() {
        for (addrs, clients, field, says) in [
            (
                ["nohost", "127.0.0.1:7100"],
                ["127.0.0.1:7201", "127.0.0.1:7200"],
                "cluster.peers[0].addr",
                "has no port",
            ),
            (
                ["127.0.0.1:7101", "squall-0:70000"],
                ["127.0.0.1:7201", "127.0.0.1:7200"],
                "cluster.peers[1].addr",
                "beyond the last port",
            ),
            (
                ["127.0.0.1:7101", "127.0.0.1:7100"],
                [":7201", "127.0.0.1:7200"],
                "cluster.peers[0].client_addr",
                "empty host",
            ),
            (
                ["127.0.0.1:7101", "127.0.0.1:7100"],
                ["127.0.0.1:7201", "::1:7200"],
                "cluster.peers[1].client_addr",
                "in brackets",
            ),
            (
                ["squall_0 .x:1", "127.0.0.1:7100"],
                ["127.0.0.1:7201", "127.0.0.1:7200"],
                "cluster.peers[0].addr",
                "not a host name",
            ),
        ] {
            let text = with_peer_addrs(addrs, clients);
            let (named, reason) = invalid_field(Config::from_toml_str(&text));
            assert_eq!(named, field, "{reason}");
            assert!(reason.contains(says), "{field}: {reason}");
        }
        // From the environment: the field and the variable are named.
        let (field, reason) = invalid_field(with_env(
            MINIMAL,
            &[("SQUALL__CLUSTER__PEERS__1__CLIENT_ADDR", "squall-0:http")],
        ));
        assert_eq!(field, "cluster.peers[1].client_addr");
        assert!(reason.contains("not a number"), "{reason}");
        assert!(
            reason.contains("SQUALL__CLUSTER__PEERS__1__CLIENT_ADDR"),
            "{reason}"
        );
        // Not a string at all: the schema's type error.
        let text = MINIMAL.replacen("addr = \"127.0.0.1:7101\"", "addr = 7101", 1);
        assert!(matches!(
            Config::from_toml_str(&text),
            Err(ConfigError::Parse(_))
        ));
        // A listen address is an IP and a port: no names there.
        let text = MINIMAL.replacen(
            "[[cluster.peers]]",
            "peer_listen_addr = \"squall-1:7101\"\n\n[[cluster.peers]]",
            1,
        );
        match Config::from_toml_str(&text) {
            Err(ConfigError::Parse(message)) => {
                assert!(message.contains("line"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sites_remotes_and_the_outbox_are_checked() {
        let base = local_cluster(3, 7100, 7200, Path::new("/tmp/squall-wan")).remove(0);
        let overlay = r#"
            [site]
            name = "edge-1"
            kind = "edge"
            [[remotes]]
            name = "cloud"
            addresses = ["cloud-0.example:7200", "10.0.0.5:7200"]
            token = "t"
            address_map = { "10.0.0.5:7200" = "gw.example:17200" }
            [wan]
            outbox_full = "reject"
            outbox_entries_max = 10
        "#;
        let config = base.with_overlay(overlay).expect("a valid edge config");
        assert_eq!(config.site.as_ref().map(|s| s.kind), Some(SiteKind::Edge));
        assert_eq!(
            config.remotes[0].address_map["10.0.0.5:7200"],
            "gw.example:17200"
        );
        assert_eq!(config.wan.outbox_full, OutboxFull::Reject);
        assert_eq!(
            config.outbox_subgroup(),
            Some(1),
            "the first persistent subgroup"
        );
        // It round-trips through TOML.
        let back = Config::from_toml_str(&config.to_toml_string()).expect("reads back");
        assert_eq!(back, config);
        let broken = |extra: &str| invalid_field(base.with_overlay(&format!("{overlay}\n{extra}")));
        let (field, _) =
            invalid_field(base.with_overlay("[site]\nname = \"Edge 1\"\nkind = \"edge\""));
        assert_eq!(field, "site.name");
        let (field, reason) = broken("[[remotes]]\nname = \"cloud\"\naddresses = [\"x:1\"]");
        assert_eq!(field, "remotes[1].name");
        assert!(reason.contains("remotes[0]"), "{reason}");
        let (field, _) = broken("[[remotes]]\nname = \"edge-1\"\naddresses = [\"x:1\"]");
        assert_eq!(field, "remotes[1].name", "its own site");
        let (field, _) = broken("[[remotes]]\nname = \"far\"\naddresses = [\"no-port\"]");
        assert_eq!(field, "remotes[1].addresses[0]");
        let (field, _) = broken("[[remotes]]\nname = \"far\"\naddresses = []");
        assert_eq!(field, "remotes[1].addresses");
        let (field, reason) = invalid_field(
            config.with_overlay("[limits]\ndedup_per_client_max = 100\n[wan]\nbatch_max = 64"),
        );
        assert_eq!(field, "wan.batch_max");
        assert!(reason.contains("50"), "{reason}");
        let (field, _) = invalid_field(config.with_overlay("[wan]\noutbox_subgroup = 2"));
        assert_eq!(field, "wan.outbox_subgroup", "subgroup 2 is volatile");
    }

    #[test]
    fn roles_and_tokens() {
        assert!(Role::Admin.allows(Role::Write));
        assert!(Role::Admin.allows(Role::Read));
        assert!(Role::Write.allows(Role::Read));
        assert!(Role::Write.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
        assert!(!Role::Read.allows(Role::Write));
        let config = example();
        assert_eq!(config.role_of(Some("s3cret")), Some(Role::Admin));
        assert_eq!(config.role_of(Some("dashboard-ro")), Some(Role::Read));
        assert_eq!(config.role_of(Some("s3cre")), None);
        assert_eq!(config.role_of(Some("")), None);
        assert_eq!(config.role_of(None), None);
        let open = Config::from_toml_str(MINIMAL).expect("minimal");
        assert!(open.is_open());
        assert_eq!(open.role_of(None), Some(Role::Admin));
        assert_eq!(open.role_of(Some("anything")), Some(Role::Admin));
        // Secrets stay out of debug output.
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("Admin"), "{debug}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("squall.toml");
        match Config::load(&path) {
            Err(ConfigError::Io { path: named, .. }) => assert_eq!(named, path),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "version = 1\n[node\n").expect("write");
        match Config::load(&path) {
            Err(ConfigError::Parse(message)) => {
                assert!(message.contains("squall.toml"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, MINIMAL).expect("write");
        let in_env = std::env::vars_os()
            .any(|(name, _)| name.to_str().is_some_and(|n| n.starts_with(ENV_PREFIX)));
        if !in_env {
            assert_eq!(
                Config::load(&path).expect("loads"),
                Config::from_toml_str(MINIMAL).expect("minimal")
            );
        }
    }
}
