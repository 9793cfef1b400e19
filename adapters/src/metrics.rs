//! The node's Prometheus metrics beyond the UDL engine's (which registers its own):
//! the view, each shard this node holds, each pool, the client server and the process.
//! Everything the dashboard shows comes from these, through `/metrics` and
//! `/api/v1/events`.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone, Debug)]
pub struct NodeMetrics {
    pub view_id: IntGauge,
    pub view_members: IntGauge,
    pub view_changes: IntCounter,
    /// Operations applied per shard (delivered in order).
    pub shard_delivered: IntCounterVec,
    /// The shard's newest delivered version (`view << 32 | seq`).
    pub shard_version: IntGaugeVec,
    /// The subgroup's newest version durable on every replica.
    pub persisted_version: IntGaugeVec,
    /// Delivered messages of the current view not yet durable everywhere.
    pub persistence_lag: IntGaugeVec,
    /// Writes applied per pool and kind of operation.
    pub pool_ops: IntCounterVec,
    pub pool_objects: IntGaugeVec,
    pub pool_bytes: IntGaugeVec,
    /// A write's time from its multicast to its delivery here (ordering: one round of
    /// the group protocol), per subgroup.
    pub multicast_seconds: HistogramVec,
    pub client_requests: IntCounterVec,
    /// Linearizable local reads by how they were cleared: `lease` (at once, under a read
    /// lease) or `probe` (after a probe round among the replicas).
    pub reads: IntCounterVec,
    pub client_connections: IntGauge,
    pub resident_bytes: IntGauge,
    /// Free bytes on the file system of this node's log (`limits.disk_reserve_bytes`).
    pub disk_free_bytes: IntGauge,
    /// Nodes with a storage alarm raised, as this node's metadata says.
    pub storage_alarms: IntGauge,
}

fn metric<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    m: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

impl NodeMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<NodeMetrics> {
        let shard = &["subgroup", "shard"];
        Ok(NodeMetrics {
            view_id: metric(
                registry,
                IntGauge::new("squall_view_id", "The installed view")?,
            )?,
            view_members: metric(
                registry,
                IntGauge::new("squall_view_members", "Members of the installed view")?,
            )?,
            view_changes: metric(
                registry,
                IntCounter::new("squall_view_changes_total", "Views installed by this node")?,
            )?,
            shard_delivered: metric(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "squall_shard_delivered_total",
                        "Operations delivered (applied in order) per shard held here",
                    ),
                    shard,
                )?,
            )?,
            shard_version: metric(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "squall_shard_version",
                        "Newest delivered version per shard held here (view << 32 | seq)",
                    ),
                    shard,
                )?,
            )?,
            persisted_version: metric(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "squall_persisted_version",
                        "Newest version durable on every replica, per subgroup",
                    ),
                    &["subgroup"],
                )?,
            )?,
            persistence_lag: metric(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "squall_persistence_lag",
                        "Delivered messages not yet durable on every replica, per shard",
                    ),
                    shard,
                )?,
            )?,
            pool_ops: metric(
                registry,
                IntCounterVec::new(
                    Opts::new("squall_pool_ops_total", "Writes applied here per pool"),
                    &["pool", "op"],
                )?,
            )?,
            pool_objects: metric(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "squall_pool_objects",
                        "Live keys per pool, in shards held here",
                    ),
                    &["pool"],
                )?,
            )?,
            pool_bytes: metric(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "squall_pool_bytes",
                        "Bytes of the latest values per pool, in shards held here",
                    ),
                    &["pool"],
                )?,
            )?,
            multicast_seconds: metric(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "squall_multicast_seconds",
                        "Writes sent by this node: multicast to delivery here",
                    )
                    .buckets(vec![
                        0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                        0.1, 0.5, 1.0,
                    ]),
                    &["subgroup"],
                )?,
            )?,
            client_requests: metric(
                registry,
                IntCounterVec::new(
                    Opts::new("squall_client_requests_total", "Client requests served"),
                    &["op"],
                )?,
            )?,
            reads: metric(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "squall_linearizable_reads_total",
                        "Linearizable local reads served, by how they were cleared",
                    ),
                    &["cleared_by"],
                )?,
            )?,
            client_connections: metric(
                registry,
                IntGauge::new("squall_client_connections", "Open client connections")?,
            )?,
            resident_bytes: metric(
                registry,
                IntGauge::new(
                    "squall_process_resident_memory_bytes",
                    "Resident memory of this node process",
                )?,
            )?,
            disk_free_bytes: metric(
                registry,
                IntGauge::new(
                    "squall_disk_free_bytes",
                    "Free bytes on the file system of this node's log",
                )?,
            )?,
            storage_alarms: metric(
                registry,
                IntGauge::new(
                    "squall_storage_alarms",
                    "Nodes whose data disk is under its reserve: writes they would log are refused",
                )?,
            )?,
        })
    }

    /// Reads what is sampled rather than counted (the process's memory).
    pub fn sample(&self) {
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(rss);
        }
    }
}

/// Resident set size from `/proc/self/statm` (Linux; `None` elsewhere).
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// How many views a node remembers for the dashboard's history.
pub const VIEW_HISTORY_MAX: usize = 64;

/// What this node knows about the cluster's structure, for `/api/v1/node` and
/// `/api/v1/views`: kept by the service, read by the HTTP server.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub node: u32,
    pub incarnation: u32,
    /// The views this node installed, oldest first (at most [`VIEW_HISTORY_MAX`]).
    pub views: Vec<ViewRecord>,
    /// Every shard of the current view.
    pub shards: Vec<ShardStatus>,
    /// This cluster's site (`[site]` in its config), if named.
    pub site: Option<String>,
    /// `edge` or `cloud`.
    pub site_kind: Option<String>,
    /// The links to remote clusters, with this node's outbox depth towards each.
    pub wan: Vec<crate::wan::LinkStatus>,
    /// GPU detection and the caches of GPU-cached pools on this node (read when asked).
    pub gpu: crate::gpu::GpuStatus,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ViewRecord {
    pub id: u32,
    /// `n<node>.<incarnation>`, in rank order.
    pub members: Vec<String>,
    pub joined: Vec<String>,
    pub failed: Vec<String>,
    pub left: Vec<String>,
    /// When this node installed it (ms since the Unix epoch).
    pub installed_unix_ms: u64,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ShardStatus {
    pub subgroup: u32,
    pub shard: u32,
    /// `volatile`, `persistent`, `trigger` or `metadata`.
    pub kind: String,
    /// Node ids in rank order; the first orders writes (the leader).
    pub members: Vec<u32>,
    /// Whether this node holds a replica.
    pub held_here: bool,
    /// Newest delivered version here (`view << 32 | seq`), for shards held here.
    pub delivered_version: Option<u64>,
    /// Newest version durable on every replica (the subgroup's frontier).
    pub persisted_version: Option<u64>,
    /// Live keys here (sampled).
    pub objects: Option<u64>,
}

pub type SharedStatus = std::sync::Arc<std::sync::Mutex<NodeStatus>>;
