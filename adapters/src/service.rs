//! The node's object-store service: one task that owns the pool table and this node's
//! shard stores, applies what the platform delivers (in order, identically at every
//! replica), and answers client requests.
//!
//! Writes are validated here, then multicast in the key's shard as the very bytes the
//! client sent; the answer waits for the delivery (volatile pools) or for the version to
//! be durable on every replica (persistent pools). `get` of the latest value, `get_size`
//! and `list_keys` are linearizable local reads: a majority of the view confirms this
//! replica is still a member, and it first applies every write it has received (a write
//! that completed anywhere was stable, so it is among them; see `Core::request_read`):
//! one round trip among replicas, no multicast. `multi_get` is an ordered read: a read
//! marker goes through the shard's order and the keys are read where it is delivered. Reads by version, time or stability are answered from the
//! local replica at once.

use crate::client::now_us;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use squall_driver::{
    AppEvent, LoggedHistory, NodeEvent, NodeHandle, NodeSendError, SendReceipt, TransferredState,
};
use squall_kvs::op::{self, Op};
use squall_kvs::store::ReadError;
use squall_kvs::{
    MessageId, Object, Outcome, PoolError, PoolSpec, PoolTable, ShardStore, SnapshotLoader,
    SnapshotStream, StoreKind, StoreLimits, VersionReader,
};
use squall_platform::{MemberId, SendError, SendTicket, Version, View, ViewId};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::checkpoint::{self, CheckpointPieces, Checkpoints, TransferKeeper};
use crate::compaction::{Compactor, Contents};
use crate::config::OutboxFull;
use crate::gpu::NodeGpu;
use crate::udl::{self, Arrival, Arrived, UdlRuntime};
use crate::wan::{
    Forwarded, Forwarders, OUTBOX_TICK, OutboxEntry, Outboxes, SharedLinks, WanConfig, WanMetrics,
};
use crate::wire::{
    At, ErrorCode, Frame, Layout, MemberInfo, Request, Response, Role, WatchEvent, WatchPoint,
    WireObject,
};

/// Everything the service needs to know about its node and cluster.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub me: MemberId,
    /// Store kind of each subgroup; subgroup 0 is the pool metadata.
    pub kinds: Vec<StoreKind>,
    /// Shards of each subgroup.
    pub shards: Vec<u32>,
    pub key_bytes_max: usize,
    pub object_bytes_max: usize,
    pub pools_max: usize,
    pub store_limits: StoreLimits,
    pub watchers_max: usize,
    pub watch_queue_max: usize,
    pub requests_in_flight_max: usize,
    /// See `Limits::history_cache_bytes`.
    pub history_cache_bytes: usize,
    /// Where clients reach each node (for redirects and `members`).
    pub client_addrs: BTreeMap<u32, String>,
    /// Pools the cluster creates when it first forms.
    pub default_pools: Vec<PoolSpec>,
    /// A write whose sender clock is this far from ours is refused.
    pub clock_skew_max_us: u64,
    /// Remote clusters and the outbox towards them; `None` when none is configured.
    pub wan: Option<WanConfig>,
    /// The directory of this node's log, whose file system's free space is watched
    /// against `disk_reserve_bytes` (`None`: no log, nothing to watch).
    pub log_dir: Option<std::path::PathBuf>,
    /// See `Limits::disk_reserve_bytes` (0: no alarm).
    pub disk_reserve_bytes: u64,
    /// Persistent pools forget versions older than this (µs) by themselves: see
    /// `Limits::history_retention_s` (0: never).
    pub history_retention_us: u64,
    /// Where checkpoints of compacted persistent shards go (`None`: compactions forget
    /// history in memory only, and the log keeps every record).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// See `Limits::metadata_log_compact_bytes` (0: never).
    pub metadata_compact_bytes: u64,
    /// The driver's state keeper, which writes the checkpoints state transfers bring (into
    /// `checkpoint_dir`); `None`: the driver collects them in memory.
    pub transfer_keeper: Option<Arc<TransferKeeper>>,
}

/// A state going to joiners, a piece at a time.
#[derive(Debug)]
enum OutgoingState {
    Snapshot(SnapshotStream),
    Checkpoint(Box<CheckpointPieces>),
}

/// A client request handed to the service by a connection.
#[derive(Debug)]
pub enum Command {
    Request {
        request: Request,
        role: Role,
        reply: Reply,
    },
    Watch {
        prefix: String,
        /// A one-shard watch ([`Request::WatchShard`]); `None`: every shard held here.
        shard: Option<WatchFrom>,
        events: mpsc::Sender<WatchEvent>,
        reply: tokio::sync::oneshot::Sender<WatchStart>,
    },
}

/// Which shard a [`Request::WatchShard`] watches, and where it starts.
#[derive(Clone, Copy, Debug)]
pub struct WatchFrom {
    pub subgroup: u32,
    pub shard: u32,
    pub from: WatchPoint,
}

/// The answer to [`Command::Watch`]: `Done` or `Watching` (or an error), and for a watch
/// that resumes, the changes it missed, to send before the events queued for it.
#[derive(Debug)]
pub struct WatchStart {
    pub response: Response,
    pub catch_up: Option<CatchUp>,
}

/// The most changes a resuming watch may have missed. A watch further behind is refused
/// (`TooLarge`): its client lists the keys again rather than having a node hold (and
/// read back from its log) an unbounded backlog for it.
pub const WATCH_CATCH_UP_MAX: usize = 262_144;

/// The changes a resuming watch missed, oldest first. Values not in memory (older
/// versions of a persistent shard) are read from the log one at a time as they are sent,
/// so the backlog costs keys and versions, not values.
#[derive(Debug)]
pub struct CatchUp {
    handle: NodeHandle,
    subgroup: u32,
    shard: u32,
    changes: std::vec::IntoIter<squall_kvs::Change>,
}

impl CatchUp {
    /// The next missed change as an event; an error if its value could not be read.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, String>> {
        let change = self.changes.next()?;
        let blob = match (change.blob, change.meta.tombstone) {
            (_, true) => Ok(None),
            (Some(blob), false) => Ok(Some(blob)),
            (None, false) => self.read_logged(change.meta.version).await.map(Some),
        };
        Some(blob.map(|blob| WatchEvent {
            key: change.key.to_string(),
            version: change.meta.version,
            timestamp_us: change.meta.timestamp_us,
            blob,
        }))
    }

    async fn read_logged(&self, version: Version) -> Result<Bytes, String> {
        let answer = self
            .handle
            .read_logged(self.subgroup, self.shard, version)
            .await
            .map_err(|_| "the node stopped".to_string())?;
        let payload = answer
            .await
            .map_err(|_| "the log stopped".to_string())??
            .ok_or_else(|| format!("version {version} is not in this node's log"))?;
        logged_blob(version, payload)
    }
}

/// The value in a logged record: a record is the delivered operation, and the value the
/// put's blob (a slice of the record, not a copy).
fn logged_blob(version: Version, payload: Bytes) -> Result<Bytes, String> {
    match op::decode(payload) {
        Ok(Op::Put { blob, .. }) => Ok(blob),
        _ => Err(format!("the log's record {version:?} is not a put")),
    }
}

/// Where a request's answer goes: straight into its connection's write queue, so an
/// answer costs no task of its own on the way out.
#[derive(Debug)]
pub struct Reply {
    request_id: u64,
    /// `None` once answered.
    out: Option<mpsc::Sender<Frame>>,
}

impl Reply {
    pub fn new(request_id: u64, out: mpsc::Sender<Frame>) -> Reply {
        Reply {
            request_id,
            out: Some(out),
        }
    }

    /// Queues the answer; `Err` if the connection is gone (nobody to tell).
    pub fn send(mut self, response: Response) -> Result<(), ConnectionGone> {
        self.answer(response)
    }

    fn answer(&mut self, response: Response) -> Result<(), ConnectionGone> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let frame = Frame::Response {
            request_id: self.request_id,
            response,
        };
        match out.try_send(frame) {
            Ok(()) => Ok(()),
            // A client that does not read its answers fills its queue; the service
            // never waits on one, so this answer waits in a task of its own.
            Err(mpsc::error::TrySendError::Full(frame)) => {
                tokio::spawn(async move {
                    let _ = out.send(frame).await;
                });
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ConnectionGone),
        }
    }
}

impl Drop for Reply {
    /// A request the service let go of unanswered still gets an answer, so its client
    /// retries at once instead of waiting out its timeout.
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.answer(Response::error(
                ErrorCode::Unavailable,
                "the node dropped the request",
            ));
        }
    }
}

/// Whether `SQUALL_TEST_CRASH_BEFORE_TAKING_STATE` is set: a test hook that makes the
/// node abort when a transferred checkpoint reaches the service (read once).
fn crash_before_taking_state() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var_os("SQUALL_TEST_CRASH_BEFORE_TAKING_STATE").is_some())
}

/// The client connection a [`Reply`] was for has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionGone;

/// How often pool sizes and process memory are sampled for metrics.
const METRICS_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a node measures the free space of its log's file system: an alarm must
/// spread before the reserve is written full.
const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// The disk is also measured each time this fraction of its reserve was delivered to
/// logged shards: an alarm goes out within an eighth of the reserve, whatever the rate.
const DISK_CHECKS_PER_RESERVE: u64 = 8;
/// A storage alarm not yet in the metadata is sent again after this long.
const ALARM_RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
/// A metadata compaction not yet delivered is asked for again after this long.
const METADATA_COMPACT_RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a node tells its shards how far its `one` UDL work is done.
pub const UDL_PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Payload bytes read from the log at a time when a shard is rebuilt from it (at start,
/// and after a state transfer): what a replay holds beyond the store it builds.
pub const REPLAY_CHUNK_BYTES: usize = 16 << 20;

/// A shard's members in one view, shared by the inputs held for a re-run.
type ShardMembers = Arc<[MemberId]>;

/// Views a node remembers for replays (see `Service::known_views`); a replay that
/// reaches back past them forgets the inputs it held (it cannot tell who ran them).
pub const KNOWN_VIEWS_MAX: usize = 4096;

/// A volatile shard's snapshot goes to joiners in pieces of about this many bytes, each
/// encoded when the transfer asks for it: the source holds the pieces in flight (the
/// core's window) and one being encoded, not a copy of the store.
pub const SNAPSHOT_PIECE_BYTES: usize = 8 << 20;

/// Requests of the node itself (read markers, default pools) use ids of this client.
const SYSTEM_CLIENT_BIT: u64 = 1 << 63;

/// Keys and pools under this prefix are the nodes' own (the WAN outbox).
pub const RESERVED_PREFIX: &str = "/.squall/";

/// Whether a key or pool path is under [`RESERVED_PREFIX`].
fn reserved(path: &str) -> bool {
    path == RESERVED_PREFIX.trim_end_matches('/') || path.starts_with(RESERVED_PREFIX)
}

#[derive(Debug)]
enum Waiting {
    Write {
        reply: Reply,
        persistent: bool,
        /// When it was multicast (for the delivery latency histogram).
        sent: std::time::Instant,
    },
    /// A `multi_get`: read where its marker is delivered.
    Read { reply: Reply, keys: Vec<String> },
}

/// Waits until the driver has answered the oldest submitted send.
async fn front_answered(submitted: &mut VecDeque<Submitted>) {
    if let Some(front) = submitted.front_mut() {
        front.receipt.ready().await;
    }
}

/// Answers a request the driver would not take.
fn refuse(waiting: Waiting, e: NodeSendError) {
    let reply = match waiting {
        Waiting::Write { reply, .. } | Waiting::Read { reply, .. } => reply,
    };
    let message = match e {
        NodeSendError::Core(SendError::Backlogged { .. }) => "the shard is busy; retry".to_string(),
        other => format!("cannot send now ({other}); retry"),
    };
    let _ = reply.send(Response::error(ErrorCode::Unavailable, message));
}

/// One write's answer of a `WriteMany` into its slot.
fn take_answer(out: &mut [Option<Response>], frame: Frame) {
    if let Frame::Response {
        request_id,
        response,
    } = frame
        && let Some(slot) = out.get_mut(request_id as usize)
    {
        *slot = Some(response);
    }
}

/// A validated write of a `WriteMany`, not yet handed to the driver.
#[derive(Debug)]
struct Batched {
    subgroup: u32,
    id: MessageId,
    bytes: Bytes,
    waiting: Waiting,
}

/// A request the driver has been handed, waiting for its ticket.
#[derive(Debug)]
struct Submitted {
    subgroup: u32,
    id: MessageId,
    receipt: SendReceipt,
    waiting: Waiting,
}

#[derive(Debug)]
struct Watcher {
    prefix: String,
    /// (subgroup, shard) of a one-shard watch; `None`: every shard held here.
    shard: Option<(u32, u32)>,
    events: mpsc::Sender<WatchEvent>,
}

/// A response held until it may be sent.
type Answer = (Reply, Response);

/// The newest blobs of older versions of a persistent shard, sharing the delivered
/// buffers, up to `history_cache_bytes`; the rest are read back from the log.
#[derive(Debug, Default)]
struct History {
    blobs: BTreeMap<Version, Bytes>,
    bytes: usize,
}

impl History {
    fn insert(&mut self, version: Version, blob: Bytes, bytes_max: usize) {
        // One blob may not push out everything else: a large one is only in the log.
        if blob.len() > bytes_max / 4 {
            return;
        }
        self.bytes += blob.len();
        if let Some(old) = self.blobs.insert(version, blob) {
            self.bytes -= old.len();
        }
        while self.bytes > bytes_max {
            let Some((_, oldest)) = self.blobs.pop_first() else {
                break;
            };
            self.bytes -= oldest.len();
        }
    }
}

impl VersionReader for History {
    fn read(&self, version: Version) -> Result<Option<Bytes>, String> {
        Ok(self.blobs.get(&version).cloned())
    }
}

/// The one blob a read of the past fetched from the log.
struct Fetched {
    version: Version,
    blob: Bytes,
}

impl VersionReader for Fetched {
    fn read(&self, version: Version) -> Result<Option<Bytes>, String> {
        Ok((version == self.version).then(|| self.blob.clone()))
    }
}

/// Which past a read asked for.
#[derive(Clone, Copy, Debug)]
enum PastRead {
    Version(Version),
    Time(u64),
}

/// A `stable` read waiting for the global persistence frontier to reach `target`.
#[derive(Debug)]
struct StableWait {
    subgroup: u32,
    target: Version,
    key: String,
    reply: Reply,
}

/// A log read's token and what the log answered.
type LogReadDone = (u64, Result<Option<Bytes>, String>);

/// A read of the past waiting for a blob from the log.
#[derive(Debug)]
struct LogRead {
    subgroup: u32,
    shard: u32,
    key: String,
    at: PastRead,
    version: Version,
    reply: Reply,
}

#[derive(Debug)]
pub struct Service {
    cfg: ServiceConfig,
    handle: NodeHandle,
    pools: PoolTable,
    /// Retry memory of the metadata shard (its state is the pool table).
    meta: ShardStore,
    stores: HashMap<(u32, u32), ShardStore>,
    history: HashMap<(u32, u32), History>,
    /// Shards this node is new to in the current view whose state has not arrived:
    /// reads that do not wait for the core's barrier (past versions) go elsewhere.
    awaiting_state: HashSet<(u32, u32)>,
    /// States on their way to joiners, by subgroup: volatile shards' snapshots and
    /// compacted shards' checkpoints, encoded a piece at a time as the transfer asks
    /// ([`SNAPSHOT_PIECE_BYTES`]).
    snapshots_out: HashMap<u32, (ViewId, OutgoingState)>,
    /// Snapshots arriving, applied a part at a time.
    snapshots_in: HashMap<(u32, u32), (ViewId, SnapshotLoader)>,
    stable_waits: Vec<StableWait>,
    /// Reads of the past waiting for the log, by token.
    log_reads: HashMap<u64, LogRead>,
    next_log_read: u64,
    log_read_done: mpsc::Sender<LogReadDone>,
    log_read_done_rx: Option<mpsc::Receiver<LogReadDone>>,
    view: Option<Arc<View>>,
    /// The views this node installed (from its meta log at start, then live), newest
    /// [`KNOWN_VIEWS_MAX`]: a replay of a shard's log tells from them which replica was
    /// assigned each `one` input, to hold the unfinished ones for a re-run.
    known_views: BTreeMap<ViewId, Arc<View>>,
    /// While a log replays: the log clock (µs) of the record being applied.
    replay_hlc_us: Option<u64>,
    /// While a shard's log replays: the view of the last record applied.
    replay_views: HashMap<(u32, u32), ViewId>,
    /// Per shard, its members in the newest view asked for ([`Service::shard_members`]).
    members_cache: HashMap<(u32, u32), (ViewId, ShardMembers)>,
    /// What `/metrics` and the dashboard show (absent in tests that build a bare service).
    metrics: Option<crate::metrics::NodeMetrics>,
    /// Views and shards as the HTTP server shows them.
    status: Option<crate::metrics::SharedStatus>,
    waiting: HashMap<MessageId, Waiting>,
    tickets: HashMap<(u32, SendTicket), MessageId>,
    /// Requests handed to the driver whose tickets have not come back yet, in
    /// submission order (the driver answers in that order). Submitting without waiting
    /// lets requests that arrive together leave in one message per peer.
    submitted: VecDeque<Submitted>,
    /// While a `WriteMany` is validated: its writes, held back to go to the driver as
    /// batches ([`NodeHandle::submit_batch`]) once all are validated.
    batch: Option<Vec<Batched>>,
    /// Answers waiting for their version to be durable on every replica.
    durable: BTreeMap<(u32, Version), Vec<Answer>>,
    global: HashMap<u32, Version>,
    watchers: Vec<Watcher>,
    /// Nodes whose data disk is under its reserve, with its free and reserve bytes, as
    /// the metadata says (`Op::StorageAlarm`): writes they would log are refused.
    storage_alarms: BTreeMap<u32, (u64, u64)>,
    /// A failure to measure the disk was logged (once, not every check).
    disk_check_failed: bool,
    /// Bytes delivered to logged shards since the disk was last measured.
    logged_since_disk_check: u64,
    /// The last storage alarm this node sent and when: the same one is not sent again
    /// while the first may still be on its way.
    alarm_sent: Option<(bool, std::time::Instant)>,
    /// Bytes the metadata log took since its last checkpoint (or since the start).
    metadata_logged_bytes: u64,
    /// When this node last asked for a metadata checkpoint (`Op::CompactMetadata`): not
    /// again while that one may still be on its way.
    metadata_compact_sent: Option<std::time::Instant>,
    next_seq: u64,
    /// Linearizable local reads waiting for their barrier ([`AppEvent::ReadReady`]).
    reads: HashMap<u64, (Request, Reply)>,
    next_read: u64,
    udl: UdlRuntime,
    /// The WAN outbox queues of the outbox shards this node holds.
    outboxes: Outboxes,
    /// One per remote site, started by [`Service::run`].
    forwarders: Option<Forwarders>,
    links: SharedLinks,
    wan_metrics: Option<WanMetrics>,
    /// Sites whose outbox refused an output lately (`wan.outbox_full = "reject"`).
    wan_pressure: WanPressure,
    /// The GPU caches of GPU-cached pools (host memory where there is no GPU).
    gpu: NodeGpu,
    /// Checkpoints of compacted shards and the log compactions they allow.
    compactor: Compactor,
}

/// Sites whose outbox is full, as the node's UDL output writer last found them.
pub type WanPressure = Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

fn wire_object(o: &Object) -> WireObject {
    WireObject {
        key: o.key.to_string(),
        version: o.version,
        timestamp_us: o.timestamp_us,
        previous_version: o.previous_version,
        previous_key_version: o.previous_key_version,
        blob: o.blob.clone(),
    }
}

/// Whether `me` is the first member of shard `(g, s)` in `view`: the one member that
/// acts for the shard (forwards its outbox, sends its scheduled compactions).
/// The kind of store a checkpoint of `subgroup` holds: the metadata's is its retry
/// memory (no objects), a data shard's a persistent store.
fn checkpoint_kind(subgroup: u32) -> StoreKind {
    if subgroup == 0 {
        StoreKind::Trigger
    } else {
        StoreKind::Persistent
    }
}

fn leads(view: &View, g: u32, s: u32, me: MemberId) -> bool {
    view.shards
        .get(g as usize)
        .and_then(|shards| shards.get(s as usize))
        .is_some_and(|sv| sv.members.first() == Some(&me))
}

fn pool_error(e: &PoolError) -> Response {
    let code = match e {
        PoolError::Path(_) => ErrorCode::InvalidKey,
        PoolError::Exists { .. } => ErrorCode::PoolExists,
        PoolError::Nested { .. } => ErrorCode::NestedPool,
        PoolError::NoSuchPool { .. } => ErrorCode::NoSuchPool,
        PoolError::NoPoolForKey { .. } => ErrorCode::NoPoolForKey,
        _ => ErrorCode::InvalidPool,
    };
    Response::error(code, e.to_string())
}

/// A removed pool's spec with the shards it spread over (not 0 for "all").
fn removed_spec(pool: &squall_kvs::Pool) -> PoolSpec {
    let mut spec = pool.spec.clone();
    spec.shards = pool.shards;
    spec
}

fn not_being_removed(path: &str, generation: u64) -> Response {
    Response::error(
        ErrorCode::InvalidPool,
        format!(
            "pool {path} (generation {generation}) is not being removed: only a removed \
             pool's objects are dropped"
        ),
    )
}

fn outcome_response(outcome: &Outcome) -> Response {
    match outcome {
        Outcome::Applied {
            version,
            timestamp_us,
        } => Response::Written {
            version: *version,
            timestamp_us: *timestamp_us,
        },
        Outcome::Conflict { current } => Response::Error {
            code: ErrorCode::Conflict,
            message: format!(
                "the condition does not hold: the current version is {}",
                current.map_or("none".to_string(), |v| v.to_string())
            ),
            current: *current,
            redirect: Vec::new(),
        },
        Outcome::NoSuchKey => Response::error(ErrorCode::NoSuchKey, "no such key"),
        Outcome::TooLarge { size, max } => Response::error(
            ErrorCode::TooLarge,
            format!("object of {size} bytes exceeds the limit of {max} bytes"),
        ),
        Outcome::ReadPoint { .. } | Outcome::Dropped { .. } => Response::Done,
        Outcome::PoolRemoved { pool, generation } => Response::error(
            ErrorCode::NoSuchPool,
            format!(
                "pool {pool} (generation {generation}) was removed while this write was on its way"
            ),
        ),
        Outcome::Compacted {
            through,
            timestamp_us,
            versions_dropped,
            keys_dropped,
        } => Response::Compacted {
            through: *through,
            timestamp_us: *timestamp_us,
            versions_dropped: *versions_dropped,
            keys_dropped: *keys_dropped,
        },
    }
}

fn read_error(e: ReadError) -> Response {
    match e {
        ReadError::NotVersioned { .. } => Response::error(ErrorCode::NotVersioned, e.to_string()),
        ReadError::Compacted { .. } => Response::error(ErrorCode::Compacted, e.to_string()),
        _ => Response::error(ErrorCode::Internal, e.to_string()),
    }
}

impl Service {
    pub fn new(cfg: ServiceConfig, handle: NodeHandle, udl: UdlRuntime) -> Service {
        let pools = PoolTable::new(cfg.key_bytes_max, cfg.pools_max);
        let meta = ShardStore::new(StoreKind::Trigger, cfg.store_limits);
        let (log_read_done, log_read_done_rx) = mpsc::channel(cfg.requests_in_flight_max);
        let checkpoints = cfg.checkpoint_dir.clone().map(Checkpoints::new);
        Service {
            cfg,
            handle,
            pools,
            meta,
            stores: HashMap::new(),
            history: HashMap::new(),
            awaiting_state: HashSet::new(),
            known_views: BTreeMap::new(),
            replay_hlc_us: None,
            replay_views: HashMap::new(),
            members_cache: HashMap::new(),
            snapshots_out: HashMap::new(),
            snapshots_in: HashMap::new(),
            log_reads: HashMap::new(),
            stable_waits: Vec::new(),
            next_log_read: 0,
            log_read_done,
            log_read_done_rx: Some(log_read_done_rx),
            view: None,
            metrics: None,
            status: None,
            waiting: HashMap::new(),
            tickets: HashMap::new(),
            batch: None,
            submitted: VecDeque::new(),
            durable: BTreeMap::new(),
            global: HashMap::new(),
            watchers: Vec::new(),
            storage_alarms: BTreeMap::new(),
            disk_check_failed: false,
            logged_since_disk_check: 0,
            alarm_sent: None,
            metadata_logged_bytes: 0,
            metadata_compact_sent: None,
            next_seq: 0,
            reads: HashMap::new(),
            next_read: 0,
            udl,
            outboxes: Outboxes::default(),
            forwarders: None,
            links: SharedLinks::default(),
            wan_metrics: None,
            wan_pressure: WanPressure::default(),
            gpu: NodeGpu::unregistered(squall_gpu::GpuAvailability::Unavailable {
                reason: "GPU detection was not run (a service without its node)".to_string(),
            }),
            compactor: Compactor::new(checkpoints),
        }
    }

    /// Caches the objects of GPU-cached pools through `gpu` from now on (before the logs
    /// are replayed, so replayed objects are cached too).
    pub fn set_gpu(&mut self, gpu: NodeGpu) {
        self.udl.set_gpu(gpu.clone());
        self.gpu = gpu;
    }

    /// Shares the WAN link status, metrics and outbox pressure with the rest of the node.
    pub fn set_wan(
        &mut self,
        links: SharedLinks,
        metrics: Option<WanMetrics>,
        pressure: WanPressure,
    ) {
        self.links = links;
        self.wan_metrics = metrics;
        self.wan_pressure = pressure;
    }

    /// The views this node's meta log holds (every view it installed in earlier lives),
    /// before its logs replay.
    pub fn set_logged_views(&mut self, views: impl IntoIterator<Item = Arc<View>>) {
        for view in views {
            self.know_view(view);
        }
    }

    fn know_view(&mut self, view: Arc<View>) {
        self.known_views.insert(view.id, view);
        while self.known_views.len() > KNOWN_VIEWS_MAX {
            self.known_views.pop_first();
        }
    }

    /// A replayed record of shard `(g, s)` is from view `view_id`: inputs held from
    /// earlier views move to their assignee in each view since, as they did live; if one
    /// of those views is unknown here, who ran them cannot be told and they are
    /// forgotten (this node was away then: the members of that time hold them).
    fn replay_enter_view(&mut self, g: u32, s: u32, view_id: ViewId) {
        let Some(last) = self.replay_views.insert((g, s), view_id) else {
            return;
        };
        if last >= view_id {
            return;
        }
        let crossed: Vec<Arc<View>> = self
            .known_views
            .range(last + 1..=view_id)
            .map(|(_, v)| Arc::clone(v))
            .collect();
        if crossed.len() as u64 != u64::from(view_id - last) {
            self.udl.forget_replayed(g, s);
            return;
        }
        for view in crossed {
            if let Some(sv) = view
                .shards
                .get(g as usize)
                .and_then(|sh| sh.get(s as usize))
            {
                self.udl.replayed_view(g, s, &sv.members);
            }
        }
    }

    /// A put replayed from shard `(g, s)`'s log: if a `one` UDL ran on it then, it is
    /// held until the log shows its assignee finished it (`Op::UdlDone`); what is still
    /// held at the end runs again in a total restart's view.
    fn hold_replayed(&mut self, g: u32, s: u32, key: &str, version: Version) {
        let Some(at_us) = self.replay_hlc_us else {
            return;
        };
        if !self.udl.runs_one_on(key, at_us) {
            return;
        }
        let Some(members) = self.shard_members(g, s, version.view_id()) else {
            return;
        };
        let Some(assignee) = udl::assignee_of(&members, key) else {
            return;
        };
        let Some(object) = self.stores.get(&(g, s)).and_then(|st| st.latest(key)) else {
            return;
        };
        let me = self.cfg.me.node;
        self.udl.hold_replayed(&Arrived::ordered(
            g,
            s,
            object,
            me,
            Some(assignee),
            Some(members),
        ));
    }

    /// Shard `(g, s)`'s members in view `view_id` (known to this node), shared by the
    /// inputs held for a re-run (see [`Arrived::holders`]).
    fn shard_members(&mut self, g: u32, s: u32, view_id: ViewId) -> Option<ShardMembers> {
        if let Some((at, members)) = self.members_cache.get(&(g, s))
            && *at == view_id
        {
            return Some(Arc::clone(members));
        }
        let members: ShardMembers = self
            .known_views
            .get(&view_id)?
            .shards
            .get(g as usize)?
            .get(s as usize)?
            .members
            .as_slice()
            .into();
        self.members_cache
            .insert((g, s), (view_id, Arc::clone(&members)));
        Some(members)
    }

    /// Moves the inputs held for replicas no longer in the view to their new assignee
    /// (re-running those now this node's), and settles what log replays held: see
    /// [`UdlRuntime::reassign`].
    fn reassign_held(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let (pools, gpu, awaiting) = (&self.pools, &self.gpu, &self.awaiting_state);
        self.udl.reassign(
            &view,
            &|key: &str, version: u64| match pools.find(key) {
                Ok(pool) if pool.spec.gpu_cache.is_some() => (
                    gpu.view(&pool.spec, key, version),
                    gpu.device_of(&pool.spec),
                ),
                _ => (None, None),
            },
            &|g, s| awaiting.contains(&(g, s)),
        );
    }

    /// Rebuilds shard `(subgroup, shard)` from this node's log, through `last_version` (at
    /// start, or after a state transfer): from its newest usable checkpoint and the
    /// records after it if the shard was compacted, else from the log's first record.
    pub async fn replay_log(
        &mut self,
        subgroup: u32,
        shard: u32,
        last_version: Option<u64>,
    ) -> Result<u64, String> {
        self.replay_reset(subgroup, shard);
        let from = match self.load_checkpoint(subgroup, shard, last_version).await? {
            Some(version) => version.0.saturating_add(1),
            None => 0,
        };
        self.replay_records(subgroup, shard, from, last_version)
            .await
    }

    /// After a transfer of log records alone: the first version to replay if the shard's
    /// store can take the records that follow it instead of being rebuilt from the start.
    /// It can when every record it applied is still in the log as it was: it applied
    /// them from this node's own log (at start, or at the end of an earlier transfer),
    /// and the transfer kept that log at least that far (`kept_through`). A joiner back
    /// from a restart thus replays its log once, not a second time when it rejoins.
    fn continues_from(&self, subgroup: u32, shard: u32, log: LoggedHistory) -> Option<u64> {
        let store = if subgroup == 0 {
            &self.meta
        } else {
            self.stores.get(&(subgroup, shard))?
        };
        match (store.last_delivered(), log.kept_through) {
            (Some(applied), Some(kept)) if applied.0 <= kept => applied.0.checked_add(1),
            // Nothing applied (a rebuild costs the same), or records it applied were cut.
            _ => None,
        }
    }

    /// Installs the newest checkpoint of a persistent shard that its log can be replayed
    /// from (see [`Checkpoints::newest_usable`]); its version.
    async fn load_checkpoint(
        &mut self,
        subgroup: u32,
        shard: u32,
        last_version: Option<u64>,
    ) -> Result<Option<Version>, String> {
        if subgroup != 0 && self.kind(subgroup) != StoreKind::Persistent {
            return Ok(None);
        }
        let Some(ck) = self.compactor.checkpoints().cloned() else {
            return Ok(None);
        };
        let limits = self.cfg.store_limits;
        let kind = checkpoint_kind(subgroup);
        let loaded = tokio::task::spawn_blocking(move || {
            ck.newest_usable(subgroup, shard, last_version, kind, limits)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let Some(loaded) = loaded else {
            return Ok(None);
        };
        let version = loaded.version;
        info!(subgroup, shard, %version, "loaded the checkpoint");
        self.install(subgroup, shard, loaded)?;
        Ok(Some(version))
    }

    /// A checkpoint becomes the shard's store (and outbox), or the metadata.
    fn install(
        &mut self,
        subgroup: u32,
        shard: u32,
        loaded: checkpoint::Loaded,
    ) -> Result<(), String> {
        if subgroup == 0 {
            return self.install_metadata(loaded);
        }
        let checkpoint::Loaded { store, outbox, .. } = loaded;
        cache_store(&self.gpu, &self.pools, subgroup, &store);
        if let Some(replaced) = self.stores.insert((subgroup, shard), store) {
            uncache_store(&self.gpu, &self.pools, subgroup, &replaced);
        }
        self.outboxes.clear(subgroup, shard);
        for (site, entry) in outbox {
            self.outboxes.push(subgroup, shard, &site, entry);
        }
        Ok(())
    }

    /// A persistent shard's state as a transfer brought it (its source's log was
    /// compacted, so the records alone cannot rebuild it): kept as this node's checkpoint
    /// (and the start its log can be replayed from), installed, and the records after it
    /// replayed.
    async fn receive_checkpoint(
        &mut self,
        subgroup: u32,
        shard: u32,
        state: TransferredState,
        last_version: Option<u64>,
    ) -> Result<u64, String> {
        let ck = self.compactor.checkpoints().cloned();
        let limits = self.cfg.store_limits;
        let kind = checkpoint_kind(subgroup);
        let kept = match state {
            TransferredState::Kept => Some(
                self.cfg
                    .transfer_keeper
                    .as_ref()
                    .and_then(|keeper| keeper.take_kept(subgroup, shard))
                    .ok_or("the driver kept a checkpoint this node does not know of")?,
            ),
            _ => None,
        };
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = match (state, kept, &ck) {
                // The driver kept it (`TransferKeeper`) before the log took the records
                // after it: read from its file.
                (_, Some(version), Some(ck)) => ck
                    .load(subgroup, shard, version, kind, limits)
                    .map_err(|e| e.to_string())?,
                (TransferredState::Bytes(state), _, ck) => {
                    let loaded = checkpoint::decode(state.clone(), kind, limits)?;
                    if let Some(ck) = ck
                        && !ck.has(subgroup, shard, loaded.version)
                    {
                        ck.write_encoded(subgroup, shard, loaded.version, &state)
                            .map_err(|e| e.to_string())?;
                    }
                    loaded
                }
                _ => return Err("a kept checkpoint without a checkpoint directory".to_string()),
            };
            if last_version.is_none_or(|last| loaded.version.0 > last) {
                return Err(format!(
                    "the state is at version {}, past the transferred log's end {last_version:?}",
                    loaded.version
                ));
            }
            if let Some(ck) = &ck {
                ck.set_log_start(subgroup, shard, loaded.version)
                    .map_err(|e| e.to_string())?;
            }
            Ok(loaded)
        })
        .await
        .map_err(|e| e.to_string())??;
        let from = loaded.version.0.saturating_add(1);
        info!(subgroup, shard, version = %loaded.version, "took the transferred checkpoint");
        self.replay_reset(subgroup, shard);
        self.install(subgroup, shard, loaded)?;
        self.replay_records(subgroup, shard, from, last_version)
            .await
    }

    /// Applies shard `(subgroup, shard)`'s logged records in `[from, last_version]`, read
    /// in chunks of [`REPLAY_CHUNK_BYTES`] so that a log larger than memory replays. Each
    /// payload is copied out of its chunk: a value the store keeps (the latest of its
    /// key) must not hold the rest of the chunk it was read with in memory.
    async fn replay_records(
        &mut self,
        subgroup: u32,
        shard: u32,
        mut from: u64,
        last_version: Option<u64>,
    ) -> Result<u64, String> {
        let mut records = 0u64;
        while let Some(last) = last_version.filter(|last| from <= *last) {
            let chunk = self
                .handle
                .read_log_chunk(subgroup, shard, from, last, REPLAY_CHUNK_BYTES)
                .await?;
            let Some(end) = chunk.last().map(|r| r.version) else {
                break;
            };
            for record in chunk {
                let payload = Bytes::copy_from_slice(&record.payload);
                self.replay_hlc_us = Some(record.hlc_us);
                self.apply(subgroup, shard, Version(record.version), payload, false);
                records += 1;
            }
            self.replay_hlc_us = None;
            let Some(next) = end.checked_add(1) else {
                break;
            };
            from = next;
        }
        let held = self.udl.replayed_held(subgroup, shard);
        info!(subgroup, shard, records, held, "replayed the log");
        // In a view already (after a state transfer): a total restart's re-runs them,
        // any other forgets them.
        self.reassign_held();
        Ok(records)
    }

    /// An empty store for shard `(subgroup, shard)` before its log is replayed.
    fn replay_reset(&mut self, subgroup: u32, shard: u32) {
        self.udl.forget_held(subgroup, shard);
        self.replay_views.remove(&(subgroup, shard));
        if subgroup == 0 {
            self.pools = PoolTable::new(self.cfg.key_bytes_max, self.cfg.pools_max);
            self.meta = ShardStore::new(checkpoint_kind(0), self.cfg.store_limits);
            self.metadata_logged_bytes = 0;
        } else {
            let kind = self.kind(subgroup);
            let replaced = self.stores.insert(
                (subgroup, shard),
                ShardStore::new(kind, self.cfg.store_limits),
            );
            if let Some(replaced) = replaced {
                uncache_store(&self.gpu, &self.pools, subgroup, &replaced);
            }
            self.history.remove(&(subgroup, shard));
            self.outboxes.clear(subgroup, shard);
        }
    }

    /// Whether this node compacted the shard's log (it no longer begins at the start).
    fn log_compacted(&self, subgroup: u32, shard: u32) -> bool {
        let Some(ck) = self.compactor.checkpoints() else {
            return false;
        };
        match ck.log_start(subgroup, shard) {
            Ok(start) => start.is_some(),
            Err(e) => {
                // Sending a checkpoint the joiner may not need is safe; the reverse is not.
                warn!(error = %e, subgroup, shard, "reading the log start marker");
                true
            }
        }
    }

    fn kind(&self, subgroup: u32) -> StoreKind {
        self.cfg
            .kinds
            .get(subgroup as usize)
            .copied()
            .unwrap_or(StoreKind::Volatile)
    }

    /// Counts into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: crate::metrics::NodeMetrics) {
        self.metrics = Some(metrics);
    }

    /// Keeps `status` (views, shards) up to date from now on.
    pub fn set_status(&mut self, status: crate::metrics::SharedStatus) {
        self.status = Some(status);
    }

    fn record_view(&self, view: &View) {
        let Some(status) = &self.status else { return };
        let names = |ms: &[MemberId]| ms.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
        st.node = self.cfg.me.node;
        st.incarnation = self.cfg.me.incarnation;
        if st.views.len() >= crate::metrics::VIEW_HISTORY_MAX {
            st.views.remove(0);
        }
        st.views.push(crate::metrics::ViewRecord {
            id: view.id,
            members: names(&view.members),
            joined: names(&view.joined),
            failed: names(&view.failed),
            left: names(&view.left),
            installed_unix_ms: now_us() / 1000,
        });
        st.shards = view
            .shards
            .iter()
            .enumerate()
            .flat_map(|(g, shards)| {
                let kind = if g == 0 {
                    "metadata".to_string()
                } else {
                    self.kind(g as u32).name().to_string()
                };
                shards
                    .iter()
                    .enumerate()
                    .map(move |(s, sh)| (g, s, kind.clone(), sh))
            })
            .map(|(g, s, kind, sh)| crate::metrics::ShardStatus {
                subgroup: g as u32,
                shard: s as u32,
                kind,
                members: sh.members.iter().map(|m| m.node).collect(),
                held_here: sh.members.contains(&self.cfg.me),
                delivered_version: None,
                persisted_version: None,
                objects: None,
            })
            .collect();
    }

    /// Samples what is not counted as it happens: pool sizes, memory, shard versions.
    fn sample_metrics(&self) {
        if let Some(status) = &self.status {
            let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
            for sh in &mut st.shards {
                if let Some(store) = self.stores.get(&(sh.subgroup, sh.shard)) {
                    sh.delivered_version = store.last_delivered().map(|v| v.0);
                    sh.objects = Some(store.key_count() as u64);
                }
                sh.persisted_version = self.global.get(&sh.subgroup).map(|v| v.0);
            }
        }
        let Some(m) = &self.metrics else { return };
        m.sample();
        for pool in self.pools.list() {
            let g = pool.spec.subgroup;
            let (mut objects, mut bytes) = (0usize, 0u64);
            for ((sg, _), store) in &self.stores {
                if *sg == g {
                    let (n, b) = store.usage(&pool.spec.path);
                    objects += n;
                    bytes += b;
                }
            }
            m.pool_objects
                .with_label_values(&[pool.spec.path.as_str()])
                .set(objects as i64);
            m.pool_bytes
                .with_label_values(&[pool.spec.path.as_str()])
                .set(bytes as i64);
        }
    }

    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<NodeEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut udl_done: mpsc::Receiver<udl::InputRef>,
    ) -> Option<squall_platform::StopReason> {
        let mut progress = tokio::time::interval(UDL_PROGRESS_INTERVAL);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample = tokio::time::interval(METRICS_SAMPLE_INTERVAL);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log_read_done = self.log_read_done_rx.take()?;
        let mut checkpoint_written = self.compactor.start(self.handle.clone())?;
        let (forwarded_tx, mut forwarded) = mpsc::channel(crate::wan::FORWARD_QUEUE_MAX);
        self.forwarders = self.cfg.wan.as_ref().map(|wan| {
            Forwarders::start(
                wan,
                forwarded_tx,
                Arc::clone(&self.links),
                self.wan_metrics.clone(),
            )
        });
        let wan = self.forwarders.is_some();
        let mut outbox_tick = tokio::time::interval(OUTBOX_TICK);
        outbox_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut disk_tick = tokio::time::interval(DISK_CHECK_INTERVAL);
        disk_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watch_disk = self.watches_disk();
        let retention_us = self.cfg.history_retention_us;
        let mut retention_tick = tokio::time::interval(std::time::Duration::from_micros(
            (retention_us / 2).clamp(1_000_000, 60_000_000),
        ));
        retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = loop {
            self.udl.drain_overflow();
            self.settle_submitted();
            tokio::select! {
                // A refused send is answered at once, not at the next event.
                () = front_answered(&mut self.submitted), if !self.submitted.is_empty() => {}
                Some(done) = udl_done.recv() => self.udl.job_done(done),
                Some(done) = forwarded.recv() => self.on_forwarded(done).await,
                _ = outbox_tick.tick(), if wan => {
                    self.pump_outbox();
                    self.sample_outbox();
                }
                Some((token, result)) = log_read_done.recv() => self.finish_log_read(token, result),
                Some(done) = checkpoint_written.recv() => self.compactor.written(done, &self.global),
                _ = progress.tick() => self.announce_udl_progress().await,
                _ = disk_tick.tick(), if watch_disk => self.check_disk().await,
                _ = retention_tick.tick(), if retention_us > 0 => self.retain_history().await,
                _ = sample.tick() => self.sample_metrics(),
                event = events.recv() => {
                    let Some(NodeEvent { event, .. }) = event else { break None };
                    if let AppEvent::Stopped(reason) = event {
                        warn!(?reason, "the node stopped");
                        break Some(reason);
                    }
                    self.settle_submitted();
                    self.on_event(event).await;
                }
                command = commands.recv() => {
                    let Some(command) = command else { break None };
                    self.on_command(command).await;
                }
            }
        };
        self.settle_submitted();
        let submitted = self.submitted.drain(..).map(|s| s.waiting);
        for waiting in self.waiting.drain().map(|(_, w)| w).chain(submitted) {
            let reply = match waiting {
                Waiting::Write { reply, .. } | Waiting::Read { reply, .. } => reply,
            };
            let _ = reply.send(Response::error(ErrorCode::Unavailable, "the node stopped"));
        }
        for (_, (_, reply)) in self.reads.drain() {
            let _ = reply.send(Response::error(ErrorCode::Unavailable, "the node stopped"));
        }
        stopped
    }

    // ----- platform events -------------------------------------------------------------

    /// Returns false when the node stopped.
    async fn on_event(&mut self, event: AppEvent) {
        match event {
            AppEvent::Delivered(d) => {
                if let Some(version) = d.version {
                    if self.logs(d.subgroup) {
                        self.logged_since_disk_check += d.payload.len() as u64;
                    }
                    let subgroup = d.subgroup;
                    self.apply(d.subgroup, d.shard, version, d.payload, true);
                    if subgroup == 0 {
                        self.maybe_compact_metadata().await;
                    }
                    // A fast writer fills the reserve quicker than the clock ticks.
                    if self.watches_disk()
                        && self.logged_since_disk_check
                            >= self.cfg.disk_reserve_bytes / DISK_CHECKS_PER_RESERVE
                    {
                        self.check_disk().await;
                    }
                }
            }
            AppEvent::GlobalPersisted { subgroup, version } => {
                self.global.insert(subgroup, version);
                self.compactor.durable(&self.global);
                if let Some(m) = &self.metrics {
                    let g = subgroup.to_string();
                    m.persisted_version
                        .with_label_values(&[g.as_str()])
                        .set(version.0 as i64);
                    for ((sg, s), store) in &self.stores {
                        if *sg != subgroup {
                            continue;
                        }
                        let delivered = store.last_delivered().unwrap_or(version);
                        let lag = if delivered.view_id() == version.view_id() {
                            i64::from(delivered.seq().saturating_sub(version.seq()))
                        } else {
                            0
                        };
                        m.persistence_lag
                            .with_label_values(&[g.as_str(), s.to_string().as_str()])
                            .set(lag);
                    }
                }
                let (ready, waiting): (Vec<StableWait>, Vec<StableWait>) =
                    std::mem::take(&mut self.stable_waits)
                        .into_iter()
                        .partition(|w| w.subgroup == subgroup && w.target <= version);
                self.stable_waits = waiting;
                for wait in ready {
                    let Ok((g, s, _)) = self.locate(&wait.key) else {
                        continue;
                    };
                    self.serve_past(g, s, wait.key, PastRead::Version(version), wait.reply)
                        .await;
                }
                let ready: Vec<(u32, Version)> = self
                    .durable
                    .range((subgroup, Version(0))..=(subgroup, version))
                    .map(|(k, _)| *k)
                    .collect();
                for key in ready {
                    for (reply, response) in self.durable.remove(&key).unwrap_or_default() {
                        let _ = reply.send(response);
                    }
                }
            }
            AppEvent::Installed(view) => self.on_view(view).await,
            AppEvent::ReadReady {
                token,
                result,
                leased,
            } => {
                if result.is_ok()
                    && let Some(m) = &self.metrics
                {
                    let cleared_by = if leased { "lease" } else { "probe" };
                    m.reads.with_label_values(&[cleared_by]).inc();
                }
                if let Some((request, reply)) = self.reads.remove(&token) {
                    if let (
                        Ok(()),
                        Request::Get {
                            key,
                            at: At::Stable,
                        },
                    ) = (&result, &request)
                    {
                        self.serve_stable(key.clone(), reply).await;
                        return;
                    }
                    let response = match result {
                        Ok(()) => self.local_read(request),
                        Err(e) => Response::error(
                            ErrorCode::Unavailable,
                            format!("cannot read here now ({e}); retry"),
                        ),
                    };
                    let _ = reply.send(response);
                }
            }
            AppEvent::SendsAborted { subgroup, tickets } => {
                for ticket in tickets {
                    if let Some(id) = self.tickets.remove(&(subgroup, ticket)) {
                        self.fail(id, "a view change aborted the request; retry");
                    }
                }
            }
            AppEvent::StateRequested {
                view_id,
                subgroup,
                shard,
                needs_state,
            } => {
                // Logged shards travel as their log; volatile ones as a snapshot, streamed.
                // A compacted log lacks its beginning: a checkpoint of the store goes
                // with it, unless the joiners' logs continue into it (a member back
                // from a restart, rebuilt from its own checkpoint and log).
                let needs_checkpoint = needs_state && self.log_compacted(subgroup, shard);
                match self.stores.get(&(subgroup, shard)) {
                    Some(store) if store.kind() == StoreKind::Volatile => {
                        let stream = OutgoingState::Snapshot(store.snapshot_stream());
                        self.snapshots_out.insert(subgroup, (view_id, stream));
                        self.supply_snapshot_piece(view_id, subgroup).await;
                    }
                    Some(store) if store.kind() == StoreKind::Persistent && needs_checkpoint => {
                        let version = store.last_delivered().unwrap_or(Version(0));
                        let pieces = CheckpointPieces::new(
                            version,
                            store.snapshot_stream(),
                            self.outboxes.entries(subgroup, shard),
                            Vec::new(),
                        );
                        info!(subgroup, shard, %version, "a checkpoint goes with the compacted log");
                        self.snapshots_out.insert(
                            subgroup,
                            (view_id, OutgoingState::Checkpoint(Box::new(pieces))),
                        );
                        self.supply_snapshot_piece(view_id, subgroup).await;
                    }
                    None if subgroup == 0 && needs_checkpoint => {
                        let version = self.meta.last_delivered().unwrap_or(Version(0));
                        let pieces = CheckpointPieces::new(
                            version,
                            self.meta.snapshot_stream(),
                            Vec::new(),
                            self.metadata_rebuild(),
                        );
                        info!(%version, "a metadata checkpoint goes with the compacted log");
                        self.snapshots_out.insert(
                            subgroup,
                            (view_id, OutgoingState::Checkpoint(Box::new(pieces))),
                        );
                        self.supply_snapshot_piece(view_id, subgroup).await;
                    }
                    _ => {
                        self.handle
                            .supply_state(view_id, subgroup, Bytes::new())
                            .await
                    }
                }
            }
            AppEvent::StateSupplyMore { view_id, subgroup } => {
                self.supply_snapshot_piece(view_id, subgroup).await;
            }
            AppEvent::StatePart {
                view_id,
                subgroup,
                shard,
                part,
                state,
                last,
            } => {
                self.on_state_part(view_id, subgroup, shard, part, state, last)
                    .await
            }
            AppEvent::StateReceived {
                subgroup,
                shard,
                log,
                state,
                ..
            } => {
                self.awaiting_state.remove(&(subgroup, shard));
                if state != TransferredState::Empty && crash_before_taking_state() {
                    // Test hook: a crash in the window between the log taking a
                    // compacted shard's records and this node taking their state.
                    std::process::abort();
                }
                let rebuilt = match state {
                    TransferredState::Empty => match self.continues_from(subgroup, shard, log) {
                        Some(from) => {
                            info!(
                                subgroup,
                                shard, from, "the store continues from its own log"
                            );
                            self.replay_records(subgroup, shard, from, log.last_version)
                                .await
                        }
                        None => self.replay_log(subgroup, shard, log.last_version).await,
                    },
                    state => {
                        self.receive_checkpoint(subgroup, shard, state, log.last_version)
                            .await
                    }
                };
                if let Err(e) = rebuilt {
                    warn!(error = %e, subgroup, shard, "cannot replay the transferred log; leaving");
                    self.handle.leave().await;
                }
            }
            // `run` ends on it before it comes here.
            AppEvent::Stopped(_) => {}
            AppEvent::Restarting(plan) => {
                info!(view = plan.view.id, "the group restarts from its logs");
            }
            AppEvent::Arrived { .. }
            | AppEvent::Persisted { .. }
            | AppEvent::TrimLogged { .. }
            | AppEvent::Trimmed { .. } => {}
        }
    }

    /// The next piece of the snapshot going to `subgroup`'s joiners in `view_id`.
    async fn supply_snapshot_piece(&mut self, view_id: ViewId, subgroup: u32) {
        let Some((for_view, stream)) = self.snapshots_out.get_mut(&subgroup) else {
            return;
        };
        if *for_view != view_id {
            return;
        }
        let next = match stream {
            OutgoingState::Snapshot(stream) => Ok(stream.next_piece(SNAPSHOT_PIECE_BYTES)),
            OutgoingState::Checkpoint(pieces) => pieces.next_piece(SNAPSHOT_PIECE_BYTES),
        };
        let (piece, last) = match next {
            Ok(next) => next,
            Err(e) => {
                // Only a field over 4 GiB, which no limit allows: another member has to
                // be the source.
                self.snapshots_out.remove(&subgroup);
                warn!(error = %e, subgroup, "cannot encode the state for joiners; leaving");
                self.handle.leave().await;
                return;
            }
        };
        if last {
            if let OutgoingState::Checkpoint(pieces) = stream {
                info!(
                    subgroup,
                    pieces = pieces.pieces(),
                    "the checkpoint for joiners is supplied"
                );
            }
            self.snapshots_out.remove(&subgroup);
        }
        self.handle
            .supply_state_piece(view_id, subgroup, piece, last)
            .await;
    }

    /// A part of a volatile shard's state (this node is new to the shard): applied to the
    /// store being rebuilt, which replaces the shard's store once the last part is in.
    async fn on_state_part(
        &mut self,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        part: u32,
        state: Bytes,
        last: bool,
    ) {
        let kind = self.kind(subgroup);
        if part == 0 {
            let loader = SnapshotLoader::new(kind, self.cfg.store_limits);
            self.snapshots_in
                .insert((subgroup, shard), (view_id, loader));
        }
        let applied = match self.snapshots_in.get_mut(&(subgroup, shard)) {
            Some((for_view, loader)) if *for_view == view_id => loader.push(state),
            _ => {
                warn!(
                    subgroup,
                    shard, part, "a state part of a transfer that never began; leaving"
                );
                self.handle.leave().await;
                return;
            }
        };
        if let Err(e) = applied {
            self.snapshots_in.remove(&(subgroup, shard));
            warn!(error = %e, subgroup, shard, part, "malformed state; leaving");
            self.handle.leave().await;
            return;
        }
        self.handle.state_part_taken(view_id, subgroup, part).await;
        if !last {
            return;
        }
        let Some((_, loader)) = self.snapshots_in.remove(&(subgroup, shard)) else {
            return;
        };
        self.awaiting_state.remove(&(subgroup, shard));
        // Nothing at all: the source held no store (a trigger shard, or a new one).
        let store = if loader.bytes_received() == 0 {
            Ok(ShardStore::new(kind, self.cfg.store_limits))
        } else {
            loader.finish()
        };
        match store {
            Ok(store) => {
                cache_store(&self.gpu, &self.pools, subgroup, &store);
                if let Some(replaced) = self.stores.insert((subgroup, shard), store) {
                    uncache_store(&self.gpu, &self.pools, subgroup, &replaced);
                }
            }
            Err(e) => {
                warn!(error = %e, subgroup, shard, "malformed state; leaving");
                self.handle.leave().await;
            }
        }
    }

    async fn on_view(&mut self, view: Arc<View>) {
        let me = self.cfg.me;
        self.record_view(&view);
        // Metadata changes waiting to be logged everywhere: the view change delivered
        // the old view's messages at every member that stays (ragged trim), so each of
        // them applied those changes.
        let metadata: Vec<(u32, Version)> = self
            .durable
            .range((0, Version(0))..(1, Version(0)))
            .map(|(k, _)| *k)
            .collect();
        for key in metadata {
            for (reply, response) in self.durable.remove(&key).unwrap_or_default() {
                let _ = reply.send(response);
            }
        }
        if let Some(m) = &self.metrics {
            m.view_id.set(i64::from(view.id));
            m.view_members.set(view.members.len() as i64);
            m.view_changes.inc();
        }
        // Stores of shards this node no longer holds are stale from now on (and so are
        // their objects' cached copies).
        let left_shards: Vec<(u32, u32)> = self
            .stores
            .keys()
            .filter(|(g, s)| view.shard_of(*g as usize, me) != Some(*s as usize))
            .copied()
            .collect();
        for (g, s) in left_shards {
            if let Some(left) = self.stores.remove(&(g, s)) {
                uncache_store(&self.gpu, &self.pools, g, &left);
            }
        }
        self.history
            .retain(|(g, s), _| view.shard_of(*g as usize, me) == Some(*s as usize));
        // A one-shard watcher of a shard this node left would wait forever: ending it
        // sends its client to a replica that holds the shard.
        self.watchers.retain(|w| {
            w.shard
                .is_none_or(|(g, s)| view.shard_of(g as usize, me) == Some(s as usize))
        });
        // Transfers end with their view (the next one starts again): drop what they hold.
        self.snapshots_out.retain(|_, (v, _)| *v >= view.id);
        self.snapshots_in.retain(|_, (v, _)| *v >= view.id);
        self.awaiting_state = view
            .shards
            .iter()
            .enumerate()
            .flat_map(|(g, shards)| shards.iter().enumerate().map(move |(s, sv)| (g, s, sv)))
            .filter(|(_, _, sv)| sv.state_source.is_some() && sv.joined.contains(&me))
            .map(|(g, s, _)| (g as u32, s as u32))
            .collect();
        // Outbox shards too; and a forwarder may have changed: each shard's first member
        // starts again at its queue front (what was applied remotely is de-duplicated).
        self.outboxes
            .retain(|g, s| view.shard_of(g as usize, me) == Some(s as usize));
        self.outboxes.clear_in_flight();
        // A stable read may wait for versions the view change trimmed: it retries.
        for wait in std::mem::take(&mut self.stable_waits) {
            let _ = wait.reply.send(Response::error(
                ErrorCode::Unavailable,
                "a view change came before the stable read's versions were durable; retry",
            ));
        }
        // Answers waiting for durability in a shard this node left would never come:
        // the client retries elsewhere (same message id, so applied once).
        let left: Vec<(u32, Version)> = self
            .durable
            .keys()
            .filter(|(g, _)| view.shard_of(*g as usize, me).is_none())
            .copied()
            .collect();
        for key in left {
            for (reply, _) in self.durable.remove(&key).unwrap_or_default() {
                let _ = reply.send(Response::error(
                    ErrorCode::Unavailable,
                    "this node left the shard before the write was durable everywhere; retry",
                ));
            }
        }
        let leads = view.members.first() == Some(&me);
        self.view = Some(Arc::clone(&view));
        self.know_view(Arc::clone(&view));
        // Inputs re-run here after their replica failed get the cached copy if this
        // node still has that version cached (else only the blob).
        self.reassign_held();
        self.pump_outbox();
        if leads {
            // Default pools, once: a deterministic id makes every repeat a duplicate.
            for spec in self.cfg.default_pools.clone() {
                if self.pools.get(&spec.path).is_some() {
                    continue;
                }
                let id = MessageId {
                    client: SYSTEM_CLIENT_BIT | 1,
                    seq: pool_seq(&spec.path),
                };
                let bytes = op::encode(&Op::CreatePool { id, spec });
                if let Err(e) = self.handle.send(0, bytes).await {
                    warn!(error = %e, "creating a default pool");
                }
            }
        }
    }

    /// What a metadata operation does to the pools, UDLs, DFGs and alarms (its retry
    /// memory aside): delivered, replayed, or rebuilt from a checkpoint.
    fn apply_metadata(&mut self, op: Op, version: Version, live: bool) -> Response {
        match op {
            Op::CreatePool { mut spec, .. } => match self.pool_kind_error(&spec) {
                Some(refused) => refused,
                None => {
                    // Delivered (or replayed): one past its metadata version, so a pool
                    // made again at a path outranks every earlier one there. Rebuilt
                    // from a checkpoint: the one it was given then.
                    if spec.generation == 0 {
                        spec.generation = version.0 + 1;
                    }
                    match self.pools.create(spec, &self.cfg.shards) {
                        Ok(()) => Response::Done,
                        Err(e) => pool_error(&e),
                    }
                }
            },
            // Answered with the pool, so its remover knows which shards to drop
            // its objects from (`Client::remove_pool`).
            Op::RemovePool { path, .. } => match self.pools.remove(&path) {
                Ok(pool) => {
                    self.gpu.retain_pools(&self.pools);
                    Response::Pools(vec![removed_spec(&pool)])
                }
                Err(e) => pool_error(&e),
            },
            Op::PoolDropped {
                path, generation, ..
            } => {
                self.pools.dropped(&path, generation);
                Response::Done
            }
            Op::PutUdl {
                uuid,
                name,
                checksum,
                plugin,
                ..
            } => {
                self.udl.put_udl(&uuid, &name, checksum, &plugin);
                Response::Done
            }
            Op::RemoveUdl { uuid, .. } => {
                self.udl.remove_udl(&uuid);
                Response::Done
            }
            // In place since: the record's log clock in a replay, now live, unknown when
            // rebuilt from a checkpoint (no replay re-runs inputs of it, then).
            Op::AddDfgs { json, .. } => match self.udl.add_dfgs(
                &json,
                match (self.replay_hlc_us, live) {
                    (Some(at_us), _) => at_us,
                    (None, true) => now_us(),
                    (None, false) => u64::MAX,
                },
            ) {
                Ok(_) => Response::Done,
                Err(e) => Response::error(ErrorCode::InvalidDfg, e),
            },
            Op::RemoveDfg { dfg, .. } => {
                self.udl.remove_dfg(&dfg);
                Response::Done
            }
            Op::StorageAlarm {
                node,
                low,
                free_bytes,
                reserve_bytes,
                ..
            } => {
                let was = if low {
                    self.storage_alarms
                        .insert(node, (free_bytes, reserve_bytes))
                } else {
                    self.storage_alarms.remove(&node)
                };
                if live && was.is_some() != low {
                    info!(
                        node,
                        low,
                        free_bytes,
                        reserve_bytes,
                        "storage alarm {}",
                        if low { "raised" } else { "cleared" }
                    );
                }
                if let Some(m) = &self.metrics {
                    m.storage_alarms.set(self.storage_alarms.len() as i64);
                }
                Response::Done
            }
            Op::CompactMetadata { .. } => {
                self.metadata_logged_bytes = 0;
                self.metadata_compact_sent = None;
                if live {
                    self.checkpoint_metadata(version);
                }
                Response::Done
            }
            _ => Response::error(ErrorCode::BadRequest, "not a metadata operation"),
        }
    }

    /// Writes a checkpoint of the metadata as of `version` (an `Op::CompactMetadata`);
    /// the log before it is dropped once it is durable everywhere.
    fn checkpoint_metadata(&self, version: Version) {
        let rebuild = self.metadata_rebuild();
        info!(%version, operations = rebuild.len(), "checkpointing the metadata");
        self.compactor.checkpoint(
            0,
            0,
            version,
            Contents {
                stream: self.meta.snapshot_stream(),
                outbox: Vec::new(),
                rebuild,
            },
            None,
        );
    }

    /// The metadata operations that remake this node's pools, UDLs, DFGs and storage
    /// alarms on an empty one, in the order they apply: pools being removed are made and
    /// removed before the live ones are made (nothing can be made around them), UDLs
    /// before the DFGs that name them.
    fn metadata_rebuild(&self) -> Vec<Bytes> {
        let mut seq = 0u64;
        let mut id = || {
            seq += 1;
            // Never applied to the retry memory: a rebuild bypasses it.
            MessageId {
                client: SYSTEM_CLIENT_BIT,
                seq,
            }
        };
        let mut ops = Vec::new();
        for pool in self.pools.list_removing() {
            ops.push(Op::CreatePool {
                id: id(),
                spec: pool.spec.clone(),
            });
        }
        for pool in self.pools.list_removing() {
            ops.push(Op::RemovePool {
                id: id(),
                path: pool.spec.path.clone(),
            });
        }
        for pool in self.pools.list() {
            ops.push(Op::CreatePool {
                id: id(),
                spec: pool.spec.clone(),
            });
        }
        for (uuid, name, checksum, upload) in self.udl.uploads() {
            ops.push(Op::PutUdl {
                id: id(),
                uuid: uuid.to_string(),
                name: name.to_string(),
                checksum,
                plugin: upload.clone(),
            });
        }
        for source in self.udl.dfg_sources() {
            ops.push(Op::AddDfgs {
                id: id(),
                json: Bytes::copy_from_slice(source.as_bytes()),
            });
        }
        for (node, (free_bytes, reserve_bytes)) in &self.storage_alarms {
            ops.push(Op::StorageAlarm {
                id: id(),
                node: *node,
                low: true,
                free_bytes: *free_bytes,
                reserve_bytes: *reserve_bytes,
            });
        }
        ops.iter().map(op::encode).collect()
    }

    /// A metadata checkpoint becomes this node's metadata: its retry memory, and the
    /// pools, UDLs, DFGs and alarms its rebuild operations make.
    fn install_metadata(&mut self, loaded: checkpoint::Loaded) -> Result<(), String> {
        let checkpoint::Loaded {
            version,
            store,
            rebuild,
            ..
        } = loaded;
        self.meta = store;
        self.pools = PoolTable::new(self.cfg.key_bytes_max, self.cfg.pools_max);
        self.udl.clear();
        self.storage_alarms.clear();
        self.metadata_logged_bytes = 0;
        for bytes in rebuild {
            let op = op::decode(bytes)
                .map_err(|e| format!("the metadata checkpoint at {version}: {e}"))?;
            if let Response::Error { message, .. } = self.apply_metadata(op, version, false) {
                return Err(format!(
                    "the metadata checkpoint at {version} does not rebuild: {message}"
                ));
            }
        }
        self.gpu.retain_pools(&self.pools);
        if let Some(m) = &self.metrics {
            m.storage_alarms.set(self.storage_alarms.len() as i64);
        }
        Ok(())
    }

    /// Asks every node for a checkpoint of the metadata once its log has grown by
    /// `limits.metadata_log_compact_bytes` since the last one. The metadata's first
    /// member asks; the count is the same everywhere (the same log).
    async fn maybe_compact_metadata(&mut self) {
        let max = self.cfg.metadata_compact_bytes;
        if max == 0 || self.metadata_logged_bytes < max {
            return;
        }
        let Some(view) = &self.view else { return };
        if !leads(view, 0, 0, self.cfg.me) {
            return;
        }
        if self
            .metadata_compact_sent
            .is_some_and(|at| at.elapsed() < METADATA_COMPACT_RESEND_AFTER)
        {
            return;
        }
        self.metadata_compact_sent = Some(std::time::Instant::now());
        info!(
            bytes = self.metadata_logged_bytes,
            "the metadata log grew past limits.metadata_log_compact_bytes: asking for a checkpoint"
        );
        let op = Op::CompactMetadata {
            id: self.system_id(),
        };
        if let Err(e) = self.handle.send(0, op::encode(&op)).await {
            warn!(error = %e, "sending a metadata compaction");
        }
    }

    /// Applies a delivered operation; `live`: answer waiting clients and watchers (not
    /// while replaying a log).
    fn apply(&mut self, subgroup: u32, shard: u32, version: Version, payload: Bytes, live: bool) {
        if subgroup == 0 {
            self.metadata_logged_bytes += payload.len() as u64;
        }
        let op = match op::decode(payload) {
            Ok(op) => op,
            Err(e) => {
                // Every replica skips it alike: the sender validated it, so this is a bug.
                warn!(error = %e, subgroup, shard, %version, "undecodable operation skipped");
                return;
            }
        };
        let id = op.id();
        if subgroup == 0 {
            let (_, duplicate) = self.meta.apply(version, &op);
            let response = if duplicate {
                // A retried removal still gets the pool to finish removing.
                match &op {
                    Op::RemovePool { path, .. } => self
                        .pools
                        .removing(path)
                        .map_or(Response::Done, |p| Response::Pools(vec![removed_spec(p)])),
                    _ => Response::Done,
                }
            } else {
                self.apply_metadata(op, version, live)
            };
            if live && let Some(Waiting::Write { reply, .. }) = self.waiting.remove(&id) {
                // A change that took effect is answered once every node has logged it,
                // hence applied it: after `add_dfgs` or `create_pool` returns, no node
                // still runs without it (an input put right after would otherwise miss
                // its UDL on a node a little behind in the metadata order).
                if !duplicate
                    && matches!(response, Response::Done)
                    && self.global.get(&0) < Some(&version)
                {
                    self.durable
                        .entry((0, version))
                        .or_default()
                        .push((reply, response));
                } else {
                    let _ = reply.send(response);
                }
            }
            return;
        }
        if self.replay_hlc_us.is_some() {
            self.replay_enter_view(subgroup, shard, version.view_id());
        }
        let kind = self.kind(subgroup);
        let limits = self.cfg.store_limits;
        let store = self
            .stores
            .entry((subgroup, shard))
            .or_insert_with(|| ShardStore::new(kind, limits));
        let (outcome, duplicate) = store.apply(version, &op);
        if let (
            Op::Compact { .. },
            Outcome::Compacted {
                versions_dropped,
                keys_dropped,
                ..
            },
            false,
            true,
        ) = (&op, &outcome, duplicate, live)
            && versions_dropped + keys_dropped > 0
        {
            // Older values cached for reads of the past may be ones just forgotten.
            self.history.remove(&(subgroup, shard));
            self.compactor.checkpoint(
                subgroup,
                shard,
                version,
                Contents {
                    stream: store.snapshot_stream(),
                    outbox: self.outboxes.entries(subgroup, shard),
                    rebuild: Vec::new(),
                },
                store.history_floor(),
            );
        }
        if let (Outcome::Applied { .. }, false) = (&outcome, duplicate) {
            // Every replica caches what it stores (the store's own `Bytes`: the host tier
            // shares it); a refusal never fails the write.
            match &op {
                Op::Put { key, .. } => {
                    if let Ok(pool) = self.pools.find(key)
                        && pool.spec.gpu_cache.is_some()
                        && let Some(object) = store.latest(key)
                    {
                        self.gpu.on_put(&pool.spec, key, version.0, &object.blob);
                    }
                }
                Op::Remove { key, .. } => {
                    if let Ok(pool) = self.pools.find(key)
                        && pool.spec.gpu_cache.is_some()
                    {
                        self.gpu.on_remove(&pool.spec.path, key);
                    }
                }
                _ => {}
            }
        }
        if let Some(m) = &self.metrics {
            let (g, s) = (subgroup.to_string(), shard.to_string());
            m.shard_delivered
                .with_label_values(&[g.as_str(), s.as_str()])
                .inc();
            m.shard_version
                .with_label_values(&[g.as_str(), s.as_str()])
                .set(version.0 as i64);
            let written = match &op {
                Op::Put { key, .. } => Some((key, "put")),
                Op::Remove { key, .. } => Some((key, "remove")),
                _ => None,
            };
            if let (Some((key, what)), Outcome::Applied { .. }, false) =
                (written, &outcome, duplicate)
                && let Ok(pool) = self.pools.find(key)
            {
                m.pool_ops
                    .with_label_values(&[pool.spec.path.as_str(), what])
                    .inc();
            }
        }
        if let Op::UdlDone { member, below, .. } = &op {
            let member = MemberId::new((member >> 32) as u32, *member as u32);
            self.udl.done_by(subgroup, shard, member, *below);
            return;
        }
        if let Op::OutboxDone { site, below, .. } = &op {
            self.outboxes.done(subgroup, shard, site, *below);
            if live {
                self.pump_outbox();
            }
            return;
        }
        if let (
            Op::OutboxPut {
                site,
                trigger,
                key,
                blob,
                ..
            },
            Outcome::Applied { timestamp_us, .. },
            false,
        ) = (&op, &outcome, duplicate)
        {
            let entry = OutboxEntry {
                version,
                timestamp_us: *timestamp_us,
                trigger: *trigger,
                key: key.clone(),
                blob: blob.clone(),
            };
            self.outboxes.push(subgroup, shard, site, entry);
            if live {
                self.pump_outbox();
            }
        }
        if let (Outcome::Applied { timestamp_us, .. }, false) = (&outcome, duplicate) {
            if let Op::Put { blob, .. } = &op
                && kind == StoreKind::Persistent
            {
                self.history.entry((subgroup, shard)).or_default().insert(
                    version,
                    blob.clone(),
                    self.cfg.history_cache_bytes,
                );
            }
            if !live
                && let Op::Put { key, .. } = &op
                && self.udl.has_handlers()
            {
                self.hold_replayed(subgroup, shard, key, version);
            }
            if live {
                self.notify(subgroup, shard, &op, version, *timestamp_us);
                if let Op::Put { key, .. } = &op
                    && self.udl.has_handlers()
                    && let Some(object) = self
                        .stores
                        .get(&(subgroup, shard))
                        .and_then(|st| st.latest(key))
                        .cloned()
                {
                    let holders = self.shard_members(subgroup, shard, version.view_id());
                    let assignee = holders.as_deref().and_then(|m| udl::assignee_of(m, key));
                    // The cached copy, pinned for the invocations (none for a refused
                    // insert), and the GPU the pool's cache is on, for vertices that ask.
                    let (device, pool_gpu) = match self.pools.find(key) {
                        Ok(pool) if pool.spec.gpu_cache.is_some() && self.udl.handles(key) => (
                            self.gpu.view(&pool.spec, key, version.0),
                            self.gpu.device_of(&pool.spec),
                        ),
                        _ => (None, None),
                    };
                    self.udl.dispatch(&Arrived {
                        device,
                        pool_gpu,
                        ..Arrived::ordered(
                            subgroup,
                            shard,
                            &object,
                            self.cfg.me.node,
                            assignee,
                            holders,
                        )
                    });
                }
            }
        }
        if !live {
            return;
        }
        match self.waiting.remove(&id) {
            Some(Waiting::Write {
                reply,
                persistent,
                sent,
            }) => {
                if let Some(m) = &self.metrics {
                    m.multicast_seconds
                        .with_label_values(&[subgroup.to_string().as_str()])
                        .observe(sent.elapsed().as_secs_f64());
                }
                let response = outcome_response(&outcome);
                // A persistent write, a compaction and a pool's drop (so that once it is
                // answered, every replica has it) are answered once durable on every
                // replica.
                let durable_at = match (&outcome, persistent) {
                    (Outcome::Applied { version, .. }, true) => Some(*version),
                    (Outcome::Compacted { .. } | Outcome::Dropped { .. }, true) => Some(version),
                    _ => None,
                };
                match durable_at {
                    Some(at) if self.global.get(&subgroup) < Some(&at) => {
                        self.durable
                            .entry((subgroup, at))
                            .or_default()
                            .push((reply, response));
                    }
                    _ => {
                        let _ = reply.send(response);
                    }
                }
            }
            Some(Waiting::Read { reply, keys }) => {
                let store = &self.stores[&(subgroup, shard)];
                let objects: Vec<Option<WireObject>> = keys
                    .iter()
                    .map(|k| store.latest(k).map(wire_object))
                    .collect();
                let _ = reply.send(Response::Objects(objects));
            }
            None => {}
        }
    }

    fn notify(&mut self, subgroup: u32, shard: u32, op: &Op, version: Version, timestamp_us: u64) {
        let (key, blob) = match op {
            Op::Put { key, blob, .. } => (key, Some(blob.clone())),
            Op::Remove { key, .. } => (key, None),
            _ => return,
        };
        self.watchers.retain(|w| {
            if !squall_kvs::key::contains(&w.prefix, key)
                || w.shard.is_some_and(|held| held != (subgroup, shard))
            {
                return !w.events.is_closed();
            }
            let event = WatchEvent {
                key: key.clone(),
                version,
                timestamp_us,
                blob: blob.clone(),
            };
            match w.events.try_send(event) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // A watcher that cannot keep up is dropped, never allowed to stall
                    // the store; its connection reports it.
                    warn!(prefix = %w.prefix, "a watcher fell behind and was dropped");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn fail(&mut self, id: MessageId, why: &str) {
        if let Some(waiting) = self.waiting.remove(&id) {
            let reply = match waiting {
                Waiting::Write { reply, .. } | Waiting::Read { reply, .. } => reply,
            };
            let _ = reply.send(Response::error(ErrorCode::Unavailable, why));
        }
    }

    // ----- client requests -------------------------------------------------------------

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Watch {
                prefix,
                shard,
                events,
                reply,
            } => {
                let start = self.watch(prefix, shard, events);
                let _ = reply.send(start);
            }
            Command::Request {
                request,
                role,
                reply,
            } => {
                if self.waiting.len() + self.submitted.len() >= self.cfg.requests_in_flight_max {
                    let _ = reply.send(Response::error(
                        ErrorCode::Unavailable,
                        "too many requests in flight; retry",
                    ));
                    return;
                }
                self.request(request, role, reply).await;
            }
        }
    }

    /// Registers a watcher: of every shard held here, or of one shard, resuming after a
    /// version with what this node holds since (the backlog is taken in the same step as
    /// the watcher is registered, so nothing falls between the two).
    fn watch(
        &mut self,
        prefix: String,
        shard: Option<WatchFrom>,
        events: mpsc::Sender<WatchEvent>,
    ) -> WatchStart {
        let refused = |response| WatchStart {
            response,
            catch_up: None,
        };
        self.watchers.retain(|w| !w.events.is_closed());
        if self.watchers.len() >= self.cfg.watchers_max {
            return refused(Response::error(
                ErrorCode::Unavailable,
                format!("{} watchers already (the limit)", self.cfg.watchers_max),
            ));
        }
        let Some(from) = shard else {
            self.watchers.push(Watcher {
                prefix,
                shard: None,
                events,
            });
            return refused(Response::Done);
        };
        let (g, s) = (from.subgroup, from.shard);
        if let Err(response) = self.check_member(g, s) {
            return refused(response);
        }
        if self.awaiting_state.contains(&(g, s)) {
            return refused(Response::error(
                ErrorCode::Unavailable,
                format!("this node is still receiving subgroup {g} shard {s}; retry"),
            ));
        }
        // No store yet: nothing was delivered to the shard here.
        let store = self.stores.get(&(g, s));
        let version = store.and_then(ShardStore::last_delivered);
        let after = match from.from {
            WatchPoint::Now => None,
            WatchPoint::Start => Some(None),
            WatchPoint::After(v) => Some(Some(v)),
        };
        let catch_up = match after {
            None => None,
            Some(after) => {
                let changes = match store.map(|st| st.changes_after(&prefix, after)) {
                    None => Vec::new(),
                    Some(Ok(changes)) => changes,
                    Some(Err(e)) => return refused(read_error(e)),
                };
                if changes.len() > WATCH_CATCH_UP_MAX {
                    return refused(Response::error(
                        ErrorCode::TooLarge,
                        format!(
                            "the watch missed {} changes, more than a watch may catch up on \
                             ({WATCH_CATCH_UP_MAX}): list the keys again",
                            changes.len()
                        ),
                    ));
                }
                // Older values still in memory need no log read.
                let mut changes = changes;
                if let Some(history) = self.history.get(&(g, s)) {
                    for c in changes.iter_mut().filter(|c| c.blob.is_none()) {
                        c.blob = history.blobs.get(&c.meta.version).cloned();
                    }
                }
                Some(CatchUp {
                    handle: self.handle.clone(),
                    subgroup: g,
                    shard: s,
                    changes: changes.into_iter(),
                })
            }
        };
        self.watchers.push(Watcher {
            prefix,
            shard: Some((g, s)),
            events,
        });
        WatchStart {
            response: Response::Watching { version },
            catch_up,
        }
    }

    /// Answers a read of `key` as of `past`, from memory or, for a version no longer
    /// kept there, from the log.
    async fn serve_past(&mut self, g: u32, s: u32, key: String, past: PastRead, reply: Reply) {
        let result = match self.stores.get(&(g, s)) {
            None => Ok(None),
            Some(store) => {
                let empty = History::default();
                let history = self.history.get(&(g, s)).unwrap_or(&empty);
                match past {
                    PastRead::Version(v) => store.at_version(&key, v, history),
                    PastRead::Time(t) => store.at_time(&key, t, history),
                }
            }
        };
        match result {
            Ok(o) => {
                let _ = reply.send(Response::Object(o.as_ref().map(wire_object)));
            }
            Err(ReadError::Missing { version, .. }) => {
                let read = LogRead {
                    subgroup: g,
                    shard: s,
                    key,
                    at: past,
                    version,
                    reply,
                };
                self.read_from_log(read).await;
            }
            Err(e) => {
                let _ = reply.send(read_error(e));
            }
        }
    }

    /// A `stable` read, once past its barrier: every write that completed before it is
    /// delivered here; it is answered at the global persistence frontier once that
    /// frontier covers them (the last version delivered now), so a client reads its own
    /// durable writes wherever it reads.
    async fn serve_stable(&mut self, key: String, reply: Reply) {
        let (g, s) = match self.locate(&key) {
            Ok((g, s, _)) => (g, s),
            Err(r) => {
                let _ = reply.send(r);
                return;
            }
        };
        let target = self.stores.get(&(g, s)).and_then(ShardStore::last_version);
        let view_id = self.view.as_ref().map(|v| v.id);
        match (target, self.global.get(&g).copied()) {
            (_, None) => {
                // No frontier known in this view yet (none is until a write of this view
                // is durable everywhere): nothing to read as stable.
                let _ = reply.send(Response::Object(None));
            }
            (Some(target), Some(frontier))
                if frontier < target && Some(target.view_id()) == view_id =>
            {
                if self.stable_waits.len() >= self.cfg.requests_in_flight_max {
                    let _ = reply.send(Response::error(
                        ErrorCode::Unavailable,
                        "too many stable reads wait on persistence; retry",
                    ));
                    return;
                }
                self.stable_waits.push(StableWait {
                    subgroup: g,
                    target,
                    key,
                    reply,
                });
            }
            (_, Some(frontier)) => {
                self.serve_past(g, s, key, PastRead::Version(frontier), reply)
                    .await;
            }
        }
    }

    /// Fetches the blob `read` needs from this node's log; answered in
    /// [`Service::finish_log_read`].
    async fn read_from_log(&mut self, read: LogRead) {
        if self.log_reads.len() >= self.cfg.requests_in_flight_max {
            let _ = read.reply.send(Response::error(
                ErrorCode::Unavailable,
                "too many reads of the past wait on the log; retry",
            ));
            return;
        }
        let answer = match self
            .handle
            .read_logged(read.subgroup, read.shard, read.version)
            .await
        {
            Ok(answer) => answer,
            Err(_) => {
                let _ = read
                    .reply
                    .send(Response::error(ErrorCode::Unavailable, "the node stopped"));
                return;
            }
        };
        self.next_log_read += 1;
        let token = self.next_log_read;
        self.log_reads.insert(token, read);
        let done = self.log_read_done.clone();
        tokio::spawn(async move {
            let result = answer
                .await
                .unwrap_or_else(|_| Err("the log stopped".to_string()));
            let _ = done.send((token, result)).await;
        });
    }

    fn finish_log_read(&mut self, token: u64, result: Result<Option<Bytes>, String>) {
        let Some(read) = self.log_reads.remove(&token) else {
            return;
        };
        let LogRead {
            subgroup,
            shard,
            key,
            at,
            version,
            reply,
        } = read;
        let missing = || ReadError::Missing {
            key: key.clone(),
            version,
        };
        let blob = match result {
            Ok(Some(payload)) => logged_blob(version, payload).map_err(ReadError::Log),
            Ok(None) => Err(missing()),
            Err(e) => Err(ReadError::Log(e)),
        };
        let response = match blob {
            Err(e) => read_error(e),
            Ok(blob) => match self.stores.get(&(subgroup, shard)) {
                None => Response::error(
                    ErrorCode::Unavailable,
                    "this node no longer holds the shard; retry",
                ),
                Some(store) => {
                    let fetched = Fetched { version, blob };
                    let object = match at {
                        PastRead::Version(v) => store.at_version(&key, v, &fetched),
                        PastRead::Time(t) => store.at_time(&key, t, &fetched),
                    };
                    match object {
                        Ok(o) => Response::Object(o.as_ref().map(wire_object)),
                        Err(e) => read_error(e),
                    }
                }
            },
        };
        let _ = reply.send(response);
    }

    /// Serves `request` from this replica once every write that completed before now is
    /// applied here: the driver answers with [`AppEvent::ReadReady`] after the deliveries
    /// it has to wait for (usually none, so no multicast and no round trip).
    async fn read_after_barrier(&mut self, subgroup: u32, request: Request, reply: Reply) {
        if self.reads.len() >= self.cfg.requests_in_flight_max {
            let _ = reply.send(Response::error(
                ErrorCode::Unavailable,
                format!(
                    "{} reads already wait on this node; retry",
                    self.reads.len()
                ),
            ));
            return;
        }
        self.next_read += 1;
        let token = self.next_read;
        if self.handle.read_barrier(subgroup, token).await.is_err() {
            let _ = reply.send(Response::error(ErrorCode::Unavailable, "the node stopped"));
            return;
        }
        self.reads.insert(token, (request, reply));
    }

    /// A pool must live in a subgroup that stores its kind: a "persistent" pool in a
    /// volatile subgroup would keep no versions. Every node's layout is the same, so
    /// every replica decides this alike.
    fn pool_kind_error(&self, spec: &PoolSpec) -> Option<Response> {
        let held = self.cfg.kinds.get(spec.subgroup as usize)?;
        if spec.subgroup == 0 || *held == spec.kind {
            return None;
        }
        Some(Response::error(
            ErrorCode::InvalidPool,
            format!(
                "subgroup {} stores {} pools; a {} pool needs a {} subgroup",
                spec.subgroup,
                held.name(),
                spec.kind.name(),
                spec.kind.name()
            ),
        ))
    }

    /// Reads of this replica's current state (the caller has waited for the barrier) or
    /// of its past.
    fn local_read(&self, request: Request) -> Response {
        match request {
            Request::Get { key, .. } => {
                let (g, s, _) = match self.locate(&key) {
                    Ok(l) => l,
                    Err(r) => return r,
                };
                if let Err(r) = self.check_member(g, s) {
                    return r;
                }
                let object = self.stores.get(&(g, s)).and_then(|st| st.latest(&key));
                Response::Object(object.map(wire_object))
            }
            Request::GetSize { key } => {
                let (g, s, _) = match self.locate(&key) {
                    Ok(l) => l,
                    Err(r) => return r,
                };
                if let Err(r) = self.check_member(g, s) {
                    return r;
                }
                let size = self
                    .stores
                    .get(&(g, s))
                    .and_then(|st| st.size(&key))
                    .map(|n| n as u64);
                Response::Size(size)
            }
            Request::ListKeys { prefix, at_time_us } => {
                let (g, shards) = match self.list_pool(&prefix) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                // The shards of the pool held here; a client lists a pool spread over
                // several nodes by asking a set of nodes that covers its shards.
                let held: Vec<u32> = (0..shards)
                    .filter(|s| self.check_member(g, *s).is_ok())
                    .collect();
                if held.is_empty()
                    && let Err(r) = self.check_member(g, 0)
                {
                    return r;
                }
                let mut keys = Vec::new();
                for s in held {
                    if let Some(store) = self.stores.get(&(g, s)) {
                        match store.list_keys(&prefix, at_time_us) {
                            Ok(held) => keys.extend(held.iter().map(|k| k.to_string())),
                            Err(e) => return read_error(e),
                        }
                    }
                }
                keys.sort();
                Response::Keys(keys)
            }
            Request::ListPools => {
                Response::Pools(self.pools.list().map(|p| p.spec.clone()).collect())
            }
            Request::FindPool { key } => match self.pools.find(&key) {
                Ok(p) => Response::Pools(vec![p.spec.clone()]),
                Err(e) => pool_error(&e),
            },
            Request::Layout => self.layout(),
            _ => Response::error(ErrorCode::BadRequest, "not a local read"),
        }
    }

    /// The pools and every shard's members, for clients to route by.
    fn layout(&self) -> Response {
        let Some(view) = &self.view else {
            return Response::error(ErrorCode::Unavailable, "not joined yet");
        };
        let addr = |m: &MemberId| self.cfg.client_addrs.get(&m.node).cloned();
        let shards = view
            .shards
            .iter()
            .map(|subgroup| {
                subgroup
                    .iter()
                    .map(|sv| sv.members.iter().filter_map(addr).collect())
                    .collect()
            })
            .collect();
        Response::Layout(Layout {
            view_id: view.id,
            pools: self.pools.list().map(|p| p.spec.clone()).collect(),
            shards,
        })
    }

    /// The subgroup and shard count of the pool `prefix` names or lies in.
    fn list_pool(&self, prefix: &str) -> Result<(u32, u32), Response> {
        self.pools
            .get(prefix)
            .map(Ok)
            .unwrap_or_else(|| self.pools.find(prefix))
            .map(|p| (p.spec.subgroup, p.shards))
            .map_err(|e| pool_error(&e))
    }

    /// Refuses a write of `key` made for another generation of its pool than the current
    /// one (`PoolChanged`: the client refreshes its table and sends it again). The shard
    /// refuses one that passed here but arrives after its generation was dropped.
    fn check_generation(&self, key: &str, generation: u64) -> Result<(), Response> {
        let pool = self.pools.find(key).map_err(|e| pool_error(&e))?;
        if pool.spec.generation == generation {
            return Ok(());
        }
        Err(Response::error(
            ErrorCode::PoolChanged,
            if generation == 0 {
                format!(
                    "the write names no generation of pool {} (now {}): refresh the pool \
                     table",
                    pool.spec.path, pool.spec.generation
                )
            } else {
                format!(
                    "the write was made for generation {generation} of pool {}, which is \
                     generation {} now (removed and made again): refresh the pool table",
                    pool.spec.path, pool.spec.generation
                )
            },
        ))
    }

    fn locate(&self, key: &str) -> Result<(u32, u32, StoreKind), Response> {
        squall_kvs::validate_key(key, self.cfg.key_bytes_max)
            .map_err(|e| Response::error(ErrorCode::InvalidKey, e.to_string()))?;
        let pool = self.pools.find(key).map_err(|e| pool_error(&e))?;
        Ok((pool.spec.subgroup, pool.shard_of(key), pool.spec.kind))
    }

    /// [`Request::WriteMany`]: each write through the single-write path, in order; after a
    /// write refused before it was sent, the rest are not sent.
    async fn write_many(&mut self, ops: Vec<crate::wire::OpBytes>, role: Role, reply: Reply) {
        let n = ops.len();
        let (answers_tx, mut answers) = mpsc::channel(n.max(1));
        // Validated first, all of them, then handed to the driver as one batch per run
        // of writes to one subgroup, so they leave together.
        self.batch = Some(Vec::new());
        for (i, op) in ops.into_iter().enumerate() {
            let one = Reply::new(i as u64, answers_tx.clone());
            Box::pin(self.request(Request::Write { forget: false, op }, role, one)).await;
            // Answered at once (refused, or a retry already applied): the batch ends
            // before it.
            if !answers.is_empty() {
                break;
            }
        }
        drop(answers_tx);
        let batched = self.batch.take().unwrap_or_default();
        let mut runs = batched.into_iter().peekable();
        let mut refused = false;
        while let Some(first) = runs.next() {
            let subgroup = first.subgroup;
            let mut run = vec![first];
            while let Some(next) = runs.next_if(|b| b.subgroup == subgroup) {
                run.push(next);
            }
            if refused {
                // Never sent: the answer below says so.
                continue;
            }
            let payloads = run.iter().map(|b| b.bytes.clone()).collect();
            match self.handle.submit_batch(subgroup, payloads).await {
                Ok(receipts) => {
                    for (b, receipt) in run.into_iter().zip(receipts) {
                        self.submitted.push_back(Submitted {
                            subgroup,
                            id: b.id,
                            receipt,
                            waiting: b.waiting,
                        });
                    }
                }
                Err(e) => {
                    for b in run {
                        refuse(b.waiting, NodeSendError::Stopped);
                    }
                    warn!(error = %e, "handing a batch of writes to the driver");
                }
            }
            // What the core refused of a batch is its suffix; know it before the next
            // run, or a later write could be applied and an earlier one not.
            self.settle_all_submitted().await;
            refused = !answers.is_empty();
        }
        // Nothing is delivered before this returns: what came back are refusals.
        let mut out: Vec<Option<Response>> = vec![None; n];
        while let Ok(frame) = answers.try_recv() {
            take_answer(&mut out, frame);
        }
        if let Some(first) = out.first_mut().and_then(Option::take) {
            // The first write was refused: that answers the whole request (a redirect or
            // a retry applies to all of it).
            let _ = reply.send(first);
            return;
        }
        tokio::spawn(async move {
            while let Some(frame) = answers.recv().await {
                take_answer(&mut out, frame);
            }
            let all = out
                .into_iter()
                .map(|answer| {
                    answer.unwrap_or_else(|| {
                        Response::error(
                            ErrorCode::Unavailable,
                            "not sent: an earlier write of this batch was refused; retry",
                        )
                    })
                })
                .collect();
            let _ = reply.send(Response::Many(all));
        });
    }

    /// Where an outbox entry goes, and whether it may: a configured site, a valid key, a
    /// size within limits, a sane clock, this node holding the shard, and room in the
    /// outbox. Returns the subgroup and that the answer waits for durability.
    fn check_outbox_put(
        &self,
        site: &str,
        key: &str,
        bytes: usize,
        hlc_us: u64,
    ) -> Result<(u32, bool), Response> {
        let Some(wan) = &self.cfg.wan else {
            return Err(Response::error(
                ErrorCode::BadRequest,
                "this cluster has no remote sites (`[[remotes]]` in its config)",
            ));
        };
        if wan.remote(site).is_none() {
            return Err(Response::error(
                ErrorCode::BadRequest,
                format!("no remote site `{site}` in this cluster's config"),
            ));
        }
        squall_kvs::validate_key(key, self.cfg.key_bytes_max)
            .map_err(|e| Response::error(ErrorCode::InvalidKey, e.to_string()))?;
        if bytes > self.cfg.object_bytes_max {
            return Err(Response::error(
                ErrorCode::TooLarge,
                format!(
                    "object of {bytes} bytes exceeds the limit of {} bytes",
                    self.cfg.object_bytes_max
                ),
            ));
        }
        if now_us().abs_diff(hlc_us) > self.cfg.clock_skew_max_us {
            return Err(Response::error(
                ErrorCode::BadRequest,
                "the client's clock is too far from the node's",
            ));
        }
        let routing = squall_kvs::outbox_key(site, key);
        let (g, s, kind) = match self.locate(&routing) {
            Ok(located) => located,
            // The leader creates the outbox pool at the first view with remotes.
            Err(_) => {
                return Err(Response::error(
                    ErrorCode::Unavailable,
                    "the WAN outbox pool is not created yet; retry",
                ));
            }
        };
        self.check_member(g, s)?;
        self.check_storage(g, s)?;
        self.outboxes
            .room(g, s, site, bytes, wan)
            .map_err(|full| Response::error(ErrorCode::OutboxFull, full.to_string()))?;
        Ok((g, kind == StoreKind::Persistent))
    }

    /// With `wan.outbox_full = "reject"`: why an input under `key` is refused now (a DFG
    /// sends its outputs to a site whose outbox is full).
    fn outbox_pressure(&self, key: &str) -> Option<String> {
        let wan = self.cfg.wan.as_ref()?;
        if wan.full != OutboxFull::Reject {
            return None;
        }
        let full = self.wan_pressure.lock().ok()?.clone();
        if full.is_empty() {
            return None;
        }
        let site = self
            .udl
            .remote_sites(key)
            .into_iter()
            .find(|site| full.contains(site))?;
        Some(format!(
            "the WAN outbox towards site `{site}` is full, and this input's DFG sends there; \
             retry once the link drains it"
        ))
    }

    /// Hands the next batch of every outbox shard this node forwards (it is the shard's
    /// first member) to its site's forwarder.
    fn pump_outbox(&mut self) {
        let (Some(forwarders), Some(wan), Some(view)) =
            (&self.forwarders, &self.cfg.wan, &self.view)
        else {
            return;
        };
        let me = self.cfg.me;
        let leads = |g: u32, s: u32| leads(view, g, s, me);
        for batch in self.outboxes.next_batches(leads, wan) {
            if let Err(batch) = forwarders.send(batch) {
                // No forwarder for that site (not in this node's config), or it is busy:
                // the queue keeps the entries, the next tick tries again.
                self.outboxes
                    .unmark(batch.subgroup, batch.shard, &batch.site);
            }
        }
    }

    /// The remote cluster applied a batch: the shard learns it in its order, and every
    /// replica drops those entries.
    async fn on_forwarded(&mut self, done: Forwarded) {
        let member = self.view.as_ref().is_some_and(|v| {
            v.shard_of(done.subgroup as usize, self.cfg.me) == Some(done.shard as usize)
        });
        if !member {
            return;
        }
        let op = Op::OutboxDone {
            id: self.system_id(),
            site: done.site.clone(),
            below: done.below,
        };
        if let Err(e) = self.handle.send(done.subgroup, op::encode(&op)).await {
            warn!(error = %e, site = %done.site, "announcing forwarded outbox entries");
            self.outboxes.unmark(done.subgroup, done.shard, &done.site);
        }
    }

    /// Refreshes the outbox gauges and the links' depth figures.
    fn sample_outbox(&self) {
        let depth = self.outboxes.depth();
        let now = now_us();
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        for (site, link) in links.iter_mut() {
            let d = depth.get(site).copied().unwrap_or_default();
            let age_s = d.oldest_us.map(|t| now.saturating_sub(t) as f64 / 1e6);
            link.outbox_entries = d.entries;
            link.outbox_bytes = d.bytes;
            link.oldest_age_s = age_s;
            if let Some(m) = &self.wan_metrics {
                let l = [site.as_str()];
                m.outbox_entries.with_label_values(&l).set(d.entries as i64);
                m.outbox_bytes.with_label_values(&l).set(d.bytes as i64);
                m.oldest_age_seconds
                    .with_label_values(&l)
                    .set(age_s.unwrap_or(0.0));
            }
        }
    }

    /// `limits.history_retention_s`: the first member of each persistent pool's shard
    /// sends a compaction of what is older than the retention, when there is something to
    /// forget (each one costs a checkpoint of the shard).
    async fn retain_history(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let me = self.cfg.me;
        let before_us = now_us().saturating_sub(self.cfg.history_retention_us);
        let mut due = Vec::new();
        for pool in self.pools.list() {
            let (path, g) = (&pool.spec.path, pool.spec.subgroup);
            if pool.spec.kind != StoreKind::Persistent || reserved(path) {
                continue;
            }
            let Some(s) = view.shard_of(g as usize, me) else {
                continue;
            };
            if !leads(&view, g, s as u32, me) || s as u32 >= pool.shards {
                continue;
            }
            if self
                .stores
                .get(&(g, s as u32))
                .is_some_and(|st| st.would_compact(path, before_us))
            {
                due.push((g, s as u32, path.clone()));
            }
        }
        for (subgroup, shard, pool) in due {
            info!(subgroup, shard, %pool, before_us, "forgetting history older than limits.history_retention_s");
            let op = Op::Compact {
                id: self.system_id(),
                pool,
                shard,
                before_us,
            };
            if let Err(e) = self.handle.send(subgroup, op::encode(&op)).await {
                warn!(error = %e, subgroup, shard, "sending a scheduled compaction");
            }
        }
    }

    /// Where an `Op::DropPool` goes: a shard of a pool being removed (never a live one's),
    /// answered once durable on every replica if the pool was persistent (so a pool made
    /// again at its path, which waits for `Op::PoolDropped`, cannot find it back after a
    /// restart). Not refused under a storage alarm: it frees memory.
    fn check_drop(&self, pool: &str, shard: u32, generation: u64) -> Result<(u32, bool), Response> {
        let Some(p) = self
            .pools
            .removing(pool)
            .filter(|p| p.spec.generation == generation)
        else {
            return Err(not_being_removed(pool, generation));
        };
        if shard >= p.shards {
            return Err(Response::error(
                ErrorCode::BadRequest,
                format!("{pool} had {} shards; there is no shard {shard}", p.shards),
            ));
        }
        self.check_member(p.spec.subgroup, shard)?;
        Ok((p.spec.subgroup, p.spec.kind == StoreKind::Persistent))
    }

    /// Whether a compaction of `pool`'s shard `shard` can be taken here: the subgroup to
    /// send it in, or the refusal.
    fn check_compact(&self, pool: &str, shard: u32) -> Result<u32, Response> {
        if reserved(pool) {
            return Err(Response::error(
                ErrorCode::InvalidPool,
                format!("pools under {RESERVED_PREFIX} are the nodes' own"),
            ));
        }
        let Some(p) = self.pools.get(pool) else {
            return Err(pool_error(&PoolError::NoSuchPool {
                path: pool.to_string(),
            }));
        };
        if p.spec.kind != StoreKind::Persistent {
            return Err(Response::error(
                ErrorCode::NotVersioned,
                format!(
                    "{pool} is a {} pool: it keeps no history to compact",
                    p.spec.kind.name()
                ),
            ));
        }
        if shard >= p.shards {
            return Err(Response::error(
                ErrorCode::BadRequest,
                format!("{pool} has {} shards; there is no shard {shard}", p.shards),
            ));
        }
        self.check_member(p.spec.subgroup, shard)?;
        Ok(p.spec.subgroup)
    }

    /// Tells each shard how far this node's `one` UDL work is done (see `Op::UdlDone`).
    async fn announce_udl_progress(&mut self) {
        let me = self.cfg.me;
        for ((subgroup, _shard), below) in self.udl.announcements() {
            let id = self.system_id();
            let op = Op::UdlDone {
                id,
                member: (u64::from(me.node) << 32) | u64::from(me.incarnation),
                below,
            };
            if let Err(e) = self.handle.send(subgroup, op::encode(&op)).await {
                warn!(error = %e, subgroup, "announcing UDL progress");
            }
        }
    }

    /// The shard a `trigger_put` or call of `key` runs in, if this node holds it and the
    /// caller may write.
    fn trigger_target(&self, key: &str, role: Role, what: &str) -> Result<(u32, u32), Response> {
        let (g, s, _) = self.locate(key)?;
        self.check_member(g, s)?;
        if role < Role::Write {
            return Err(Response::error(
                ErrorCode::Forbidden,
                format!("{what} needs the Write role"),
            ));
        }
        Ok((g, s))
    }

    /// The message id of a trigger arrival (the base its UDLs' outputs derive theirs from).
    fn trigger_id(&mut self) -> MessageId {
        self.next_seq += 1;
        MessageId {
            client: SYSTEM_CLIENT_BIT | (u64::from(self.cfg.me.node) << 32) | 0x7f,
            seq: self.next_seq,
        }
    }

    /// `NotHere` with the client addresses of the shard's members, unless this node is one.
    fn check_member(&self, subgroup: u32, shard: u32) -> Result<(), Response> {
        let Some(view) = &self.view else {
            return Err(Response::error(
                ErrorCode::Unavailable,
                "this node has not joined the cluster yet",
            ));
        };
        if view.shard_of(subgroup as usize, self.cfg.me) == Some(shard as usize) {
            return Ok(());
        }
        let redirect = view
            .shards
            .get(subgroup as usize)
            .and_then(|s| s.get(shard as usize))
            .map(|sv| {
                sv.members
                    .iter()
                    .filter_map(|m| self.cfg.client_addrs.get(&m.node).cloned())
                    .collect()
            })
            .unwrap_or_default();
        Err(Response::Error {
            code: ErrorCode::NotHere,
            message: format!(
                "node {} holds no replica of subgroup {subgroup} shard {shard}",
                self.cfg.me.node
            ),
            current: None,
            redirect,
        })
    }

    /// `StorageFull` if a write to this shard would be logged by a node whose disk is
    /// under its reserve (`Op::StorageAlarm`): a persistent shard's members, or every
    /// member for the metadata. Volatile and trigger shards log nothing.
    fn check_storage(&self, subgroup: u32, shard: u32) -> Result<(), Response> {
        if self.storage_alarms.is_empty() || !self.logs(subgroup) {
            return Ok(());
        }
        let Some(view) = &self.view else {
            return Ok(());
        };
        let members: &[MemberId] = if subgroup == 0 {
            &view.members
        } else {
            view.shards
                .get(subgroup as usize)
                .and_then(|s| s.get(shard as usize))
                .map_or(&[], |sv| &sv.members)
        };
        let Some((node, (free, reserve))) = members
            .iter()
            .find_map(|m| self.storage_alarms.get(&m.node).map(|a| (m.node, *a)))
        else {
            return Ok(());
        };
        let what = if subgroup == 0 {
            "the cluster's metadata".to_string()
        } else {
            format!("subgroup {subgroup} shard {shard}")
        };
        Err(Response::error(
            ErrorCode::StorageFull,
            format!(
                "node {node} logs {what} and has {} MiB free on its data disk, under its \
                 reserve of {} MiB (limits.disk_reserve_bytes): writes there are refused until \
                 space is freed on that node; reads and volatile pools go on",
                free >> 20,
                reserve >> 20
            ),
        ))
    }

    /// Whether `subgroup`'s deliveries go to the log: persistent ones and the metadata
    /// (subgroup 0, persistent in `ServiceConfig::kinds`).
    fn logs(&self, subgroup: u32) -> bool {
        self.kind(subgroup) == StoreKind::Persistent
    }

    /// Whether this node watches its disk against a reserve (it has a log and a reserve).
    fn watches_disk(&self) -> bool {
        self.cfg.log_dir.is_some() && self.cfg.disk_reserve_bytes > 0
    }

    /// Measures the free space of the log's file system and raises or clears this node's
    /// storage alarm when the metadata does not say what the disk does: below the reserve
    /// raises it; it clears once a quarter more than the reserve is free, so that a disk
    /// hovering at the mark does not flap.
    async fn check_disk(&mut self) {
        self.logged_since_disk_check = 0;
        let Some(dir) = &self.cfg.log_dir else { return };
        let free = match rustix::fs::statvfs(dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(e) => {
                if !self.disk_check_failed {
                    self.disk_check_failed = true;
                    warn!(dir = %dir.display(), error = %e, "cannot measure the data disk's free space");
                }
                return;
            }
        };
        if let Some(m) = &self.metrics {
            m.disk_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let reserve = self.cfg.disk_reserve_bytes;
        let node = self.cfg.me.node;
        let raised = self.storage_alarms.contains_key(&node);
        let low = if raised {
            free < reserve.saturating_add(reserve / 4)
        } else {
            free < reserve
        };
        // Only a member may send; the metadata tells when the alarm took effect, so a
        // lost send is sent again at a check after `ALARM_RESEND_AFTER`.
        if low == raised || self.view.as_ref().is_none_or(|v| !v.contains(self.cfg.me)) {
            return;
        }
        if self
            .alarm_sent
            .is_some_and(|(sent, at)| sent == low && at.elapsed() < ALARM_RESEND_AFTER)
        {
            return;
        }
        self.alarm_sent = Some((low, std::time::Instant::now()));
        if low {
            warn!(
                free_mib = free >> 20,
                reserve_mib = reserve >> 20,
                "the data disk is under its reserve: raising a storage alarm (writes this node \
                 must log are refused cluster-wide until space is freed)"
            );
        } else {
            info!(
                free_mib = free >> 20,
                "the data disk has room again: clearing the storage alarm"
            );
        }
        let op = Op::StorageAlarm {
            id: self.system_id(),
            node,
            low,
            free_bytes: free,
            reserve_bytes: reserve,
        };
        if let Err(e) = self.handle.send(0, op::encode(&op)).await {
            warn!(error = %e, "sending the storage alarm");
        }
    }

    fn system_id(&mut self) -> MessageId {
        self.next_seq += 1;
        MessageId {
            client: SYSTEM_CLIENT_BIT
                | (u64::from(self.cfg.me.node) << 32)
                | u64::from(self.cfg.me.incarnation),
            seq: self.next_seq,
        }
    }

    /// Multicasts `bytes` in `subgroup` and parks `waiting` under `id` until delivery.
    /// Does not wait for the driver: the ticket is taken in by `settle_submitted`.
    async fn multicast(&mut self, subgroup: u32, id: MessageId, bytes: Bytes, waiting: Waiting) {
        if let Some(batch) = &mut self.batch {
            batch.push(Batched {
                subgroup,
                id,
                bytes,
                waiting,
            });
            return;
        }
        match self.handle.submit(subgroup, bytes).await {
            Ok(receipt) => self.submitted.push_back(Submitted {
                subgroup,
                id,
                receipt,
                waiting,
            }),
            Err(e) => refuse(waiting, e),
        }
    }

    /// Waits until the driver has answered every send submitted so far, and takes the
    /// answers in.
    async fn settle_all_submitted(&mut self) {
        if let Some(last) = self.submitted.back_mut() {
            // Answered in submission order: once the last is, all are.
            last.receipt.ready().await;
        }
        self.settle_submitted();
    }

    /// Takes in the tickets the driver has answered, in order. Runs before any event is
    /// handled: an event about a send (its delivery, its abort) comes after its ticket,
    /// so the request is found waiting under its id by then.
    fn settle_submitted(&mut self) {
        while let Some(front) = self.submitted.front_mut() {
            let Some(answer) = front.receipt.try_ticket() else {
                return;
            };
            let Some(Submitted {
                subgroup,
                id,
                waiting,
                ..
            }) = self.submitted.pop_front()
            else {
                return;
            };
            match answer {
                Ok(ticket) => {
                    self.tickets.insert((subgroup, ticket), id);
                    if let Some(old) = self.waiting.insert(id, waiting) {
                        // The same request again on this node while the first is in
                        // flight: the first caller gave up; the retry gets the answer.
                        let reply = match old {
                            Waiting::Write { reply, .. } | Waiting::Read { reply, .. } => reply,
                        };
                        let _ = reply.send(Response::error(ErrorCode::Unavailable, "superseded"));
                    }
                }
                Err(e) => refuse(waiting, e),
            }
        }
    }

    async fn request(&mut self, request: Request, role: Role, reply: Reply) -> Option<()> {
        let answer = |reply: Reply, r: Response| {
            let _ = reply.send(r);
            Some(())
        };
        match request {
            Request::WriteMany { ops, .. } => {
                self.write_many(ops, role, reply).await;
                Some(())
            }
            Request::Write { forget, op: bytes } => {
                // From a frame or the node's own emitter: one buffer, no copy.
                let bytes = bytes.into_bytes();
                let op = match op::decode(bytes.clone()) {
                    Ok(op) => op,
                    Err(e) => {
                        return answer(
                            reply,
                            Response::error(ErrorCode::BadRequest, e.to_string()),
                        );
                    }
                };
                let needed = match op {
                    Op::UdlDone { .. }
                    | Op::OutboxDone { .. }
                    | Op::StorageAlarm { .. }
                    | Op::CompactMetadata { .. } => {
                        return answer(
                            reply,
                            Response::error(
                                ErrorCode::BadRequest,
                                "UDL progress, outbox markers, storage alarms and metadata \
                                 compactions are the nodes' own",
                            ),
                        );
                    }
                    Op::CreatePool { .. }
                    | Op::RemovePool { .. }
                    | Op::PutUdl { .. }
                    | Op::RemoveUdl { .. }
                    | Op::AddDfgs { .. }
                    | Op::RemoveDfg { .. }
                    | Op::Compact { .. }
                    | Op::DropPool { .. }
                    | Op::PoolDropped { .. } => Role::Admin,
                    Op::Read { .. } => {
                        return answer(
                            reply,
                            Response::error(
                                ErrorCode::BadRequest,
                                "clients do not send read markers",
                            ),
                        );
                    }
                    _ => Role::Write,
                };
                if role < needed {
                    return answer(
                        reply,
                        Response::error(
                            ErrorCode::Forbidden,
                            format!("this needs the {needed:?} role; the token has {role:?}"),
                        ),
                    );
                }
                let id = op.id();
                if id.client & SYSTEM_CLIENT_BIT != 0 {
                    return answer(
                        reply,
                        Response::error(
                            ErrorCode::BadRequest,
                            "client ids with the top bit set are the node's",
                        ),
                    );
                }
                let (subgroup, persistent) = match &op {
                    Op::Put {
                        key,
                        hlc_us,
                        pool_generation,
                        ..
                    }
                    | Op::Remove {
                        key,
                        hlc_us,
                        pool_generation,
                        ..
                    } => {
                        if reserved(key) {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::InvalidKey,
                                    format!("keys under {RESERVED_PREFIX} are the nodes' own"),
                                ),
                            );
                        }
                        let (g, s, kind) = match self.locate(key) {
                            Ok(l) => l,
                            Err(r) => return answer(reply, r),
                        };
                        if let Err(r) = self.check_generation(key, *pool_generation) {
                            return answer(reply, r);
                        }
                        if let Some(full) = self.outbox_pressure(key) {
                            return answer(reply, Response::error(ErrorCode::OutboxFull, full));
                        }
                        if let Op::Put { blob, .. } = &op
                            && blob.len() > self.cfg.object_bytes_max
                        {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::TooLarge,
                                    format!(
                                        "object of {} bytes exceeds the limit of {} bytes",
                                        blob.len(),
                                        self.cfg.object_bytes_max
                                    ),
                                ),
                            );
                        }
                        if now_us().abs_diff(*hlc_us) > self.cfg.clock_skew_max_us {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::BadRequest,
                                    "the client's clock is too far from the node's",
                                ),
                            );
                        }
                        if let Err(r) = self.check_member(g, s) {
                            return answer(reply, r);
                        }
                        if let Err(r) = self.check_storage(g, s) {
                            return answer(reply, r);
                        }
                        (g, kind == StoreKind::Persistent)
                    }
                    Op::Compact { pool, shard, .. } => match self.check_compact(pool, *shard) {
                        // Not refused under a storage alarm: compacting is how a full
                        // disk gets space back.
                        Ok(g) => (g, true),
                        Err(refused) => return answer(reply, refused),
                    },
                    Op::OutboxPut {
                        site,
                        key,
                        blob,
                        hlc_us,
                        ..
                    } => match self.check_outbox_put(site, key, blob.len(), *hlc_us) {
                        Ok(located) => located,
                        Err(refused) => return answer(reply, refused),
                    },
                    Op::CreatePool { spec, .. } => {
                        if spec.generation != 0 {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::BadRequest,
                                    "a pool's generation is the cluster's to assign",
                                ),
                            );
                        }
                        if reserved(&spec.path) {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::InvalidPool,
                                    format!("pools under {RESERVED_PREFIX} are the nodes' own"),
                                ),
                            );
                        }
                        // Check now for a fast, clear error; the delivery decides.
                        if let Some(refused) = self.pool_kind_error(spec) {
                            return answer(reply, refused);
                        }
                        let mut trial = self.pools.clone();
                        if let Err(e) = trial.create(spec.clone(), &self.cfg.shards) {
                            return answer(reply, pool_error(&e));
                        }
                        (0, false)
                    }
                    Op::RemovePool { path, .. } => {
                        if reserved(path) {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::InvalidPool,
                                    format!("pools under {RESERVED_PREFIX} are the nodes' own"),
                                ),
                            );
                        }
                        // One being removed may be removed again: its remover may have
                        // stopped before its objects were dropped.
                        if self.pools.get(path).is_none() && self.pools.removing(path).is_none() {
                            return answer(
                                reply,
                                pool_error(&PoolError::NoSuchPool { path: path.clone() }),
                            );
                        }
                        (0, false)
                    }
                    Op::DropPool {
                        pool,
                        shard,
                        generation,
                        ..
                    } => match self.check_drop(pool, *shard, *generation) {
                        Ok(located) => located,
                        Err(refused) => return answer(reply, refused),
                    },
                    Op::PoolDropped {
                        path, generation, ..
                    } => {
                        if self
                            .pools
                            .removing(path)
                            .is_none_or(|p| p.spec.generation != *generation)
                        {
                            return answer(reply, not_being_removed(path, *generation));
                        }
                        (0, false)
                    }
                    Op::PutUdl {
                        id,
                        name,
                        checksum,
                        plugin,
                        ..
                    } => {
                        if let Err(r) = self.check_storage(0, 0) {
                            return answer(reply, r);
                        }
                        if udl::checksum(plugin) != *checksum {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::InvalidPlugin,
                                    "the plugin's checksum does not match its bytes",
                                ),
                            );
                        }
                        let uuid = match udl::inspect(&self.udl.dir().join("incoming"), plugin) {
                            Ok((uuid, _)) => uuid,
                            Err(e) => {
                                return answer(reply, Response::error(ErrorCode::InvalidPlugin, e));
                            }
                        };
                        // Stored under the UUID the library exports, as every node checks.
                        let op = Op::PutUdl {
                            id: *id,
                            uuid,
                            name: name.clone(),
                            checksum: *checksum,
                            plugin: plugin.clone(),
                        };
                        self.multicast(
                            0,
                            *id,
                            op::encode(&op),
                            Waiting::Write {
                                reply,
                                persistent: false,
                                sent: std::time::Instant::now(),
                            },
                        )
                        .await;
                        return Some(());
                    }
                    Op::RemoveUdl { uuid, .. } => {
                        if !self.udl.has_udl(uuid) {
                            return answer(
                                reply,
                                Response::error(ErrorCode::NoSuchUdl, format!("no UDL {uuid}")),
                            );
                        }
                        (0, false)
                    }
                    Op::AddDfgs { json, .. } => {
                        let parsed = std::str::from_utf8(json)
                            .map_err(|_| "the DFG text is not UTF-8".to_string())
                            .and_then(|t| {
                                squall_udl_host::dfg::parse_dfgs(t).map_err(|e| e.to_string())
                            });
                        let dfgs = match parsed {
                            Ok(d) => d,
                            Err(e) => {
                                return answer(reply, Response::error(ErrorCode::InvalidDfg, e));
                            }
                        };
                        let sites = self.udl.unknown_sites(&dfgs, |site| {
                            self.cfg
                                .wan
                                .as_ref()
                                .is_some_and(|w| w.remote(site).is_some())
                        });
                        if !sites.is_empty() {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::InvalidDfg,
                                    format!(
                                        "the DFGs send to sites this cluster does not know \
                                         (`[[remotes]]` in its config): {}",
                                        sites.join(", ")
                                    ),
                                ),
                            );
                        }
                        let unknown = self.udl.unknown_udls(&dfgs);
                        if !unknown.is_empty() {
                            return answer(
                                reply,
                                Response::error(
                                    ErrorCode::NoSuchUdl,
                                    format!(
                                        "the DFGs name UDLs that are not uploaded: {}",
                                        unknown.join(", ")
                                    ),
                                ),
                            );
                        }
                        (0, false)
                    }
                    Op::RemoveDfg { dfg, .. } => {
                        if !self.udl.has_dfg(dfg) {
                            return answer(
                                reply,
                                Response::error(ErrorCode::NoSuchDfg, format!("no DFG {dfg}")),
                            );
                        }
                        (0, false)
                    }
                    Op::Read { .. }
                    | Op::UdlDone { .. }
                    | Op::OutboxDone { .. }
                    | Op::StorageAlarm { .. }
                    | Op::CompactMetadata { .. } => {
                        unreachable!("refused above")
                    }
                };
                if subgroup == 0
                    && let Err(r) = self.check_storage(0, 0)
                {
                    return answer(reply, r);
                }
                if self.udl.saturated() && subgroup != 0 {
                    return answer(
                        reply,
                        Response::error(
                            ErrorCode::Unavailable,
                            "UDL queues are full on this node; retry",
                        ),
                    );
                }
                if forget {
                    // Nobody waits for its outcome, nor for the driver to take it.
                    let _ = self.handle.submit(subgroup, bytes).await;
                    return answer(reply, Response::Done);
                }
                self.multicast(
                    subgroup,
                    id,
                    bytes,
                    Waiting::Write {
                        reply,
                        persistent,
                        sent: std::time::Instant::now(),
                    },
                )
                .await;
                Some(())
            }
            Request::TriggerPut { key, blob } => {
                // Nothing stored: it only runs the logic triggered on arrival (UDLs), on
                // a node holding the key's shard.
                let (g, s) = match self.trigger_target(&key, role, "trigger_put") {
                    Ok(place) => place,
                    Err(r) => return answer(reply, r),
                };
                let id = self.trigger_id();
                self.udl
                    .dispatch(&trigger_arrival(g, s, &key, id, &blob, self.cfg.me.node));
                answer(reply, Response::Done)
            }
            Request::Call { key, blob } => {
                // A trigger_put answered with what its UDLs emit: the answer leaves from
                // the worker thread of the last invocation to return.
                let (g, s) = match self.trigger_target(&key, role, "call") {
                    Ok(place) => place,
                    Err(r) => return answer(reply, r),
                };
                let id = self.trigger_id();
                let runtime = tokio::runtime::Handle::current();
                let sink = Arc::new(udl::CallSink::new(
                    self.cfg.object_bytes_max,
                    move |result| {
                        // `Reply` may spawn a task for a client slow to read.
                        let _in_runtime = runtime.enter();
                        let _ = reply.send(call_response(result));
                    },
                ));
                let arrived = trigger_arrival(g, s, &key, id, &blob, self.cfg.me.node);
                // With nothing queued, dropping the sink answers `no_such_dfg`.
                self.udl.call(&arrived, &sink);
                Some(())
            }
            Request::ListUdls => answer(reply, Response::Json(self.udl.list_udls())),
            Request::ListDfgs => answer(reply, Response::Json(self.udl.list_dfgs())),
            Request::Get { key, at } => {
                let (g, s, kind) = match self.locate(&key) {
                    Ok(l) => l,
                    Err(r) => return answer(reply, r),
                };
                if let Err(r) = self.check_member(g, s) {
                    return answer(reply, r);
                }
                let past = match (at, kind) {
                    (At::Latest, _) => {
                        let request = Request::Get { key, at };
                        self.read_after_barrier(g, request, reply).await;
                        return Some(());
                    }
                    // Durable everywhere as of now: after every write completed before
                    // this read (see `serve_stable`).
                    (At::Stable, StoreKind::Persistent) => {
                        let request = Request::Get { key, at };
                        self.read_after_barrier(g, request, reply).await;
                        return Some(());
                    }
                    (At::Stable, other) => {
                        let e = ReadError::NotVersioned { kind: other.name() };
                        return answer(reply, read_error(e));
                    }
                    (At::Version(v), _) => PastRead::Version(v),
                    (At::Time(t), _) => PastRead::Time(t),
                };
                if self.awaiting_state.contains(&(g, s)) {
                    // Nothing here yet: another replica answers (the client fails over).
                    let msg = "this replica is receiving its state; retry";
                    return answer(reply, Response::error(ErrorCode::Unavailable, msg));
                }
                self.serve_past(g, s, key, past, reply).await;
                Some(())
            }
            Request::MultiGet { keys } => {
                let mut target = None;
                for key in &keys {
                    let (g, s, _) = match self.locate(key) {
                        Ok(l) => l,
                        Err(r) => return answer(reply, r),
                    };
                    if target.is_some_and(|t| t != (g, s)) {
                        return answer(
                            reply,
                            Response::error(
                                ErrorCode::BadRequest,
                                "multi_get reads one shard: these keys live on several",
                            ),
                        );
                    }
                    target = Some((g, s));
                }
                let Some((g, s)) = target else {
                    return answer(reply, Response::Objects(Vec::new()));
                };
                if let Err(r) = self.check_member(g, s) {
                    return answer(reply, r);
                }
                let id = self.system_id();
                let bytes = op::encode(&Op::Read { id });
                let waiting = Waiting::Read { reply, keys };
                self.multicast(g, id, bytes, waiting).await;
                Some(())
            }
            Request::GetSize { ref key } => {
                let (g, s, _) = match self.locate(key) {
                    Ok(l) => l,
                    Err(r) => return answer(reply, r),
                };
                if let Err(r) = self.check_member(g, s) {
                    return answer(reply, r);
                }
                self.read_after_barrier(g, request, reply).await;
                Some(())
            }
            Request::ListKeys {
                ref prefix,
                at_time_us,
            } => {
                let g = match self.list_pool(prefix) {
                    Ok((g, _)) => g,
                    Err(r) => return answer(reply, r),
                };
                if at_time_us.is_some() {
                    // A read of the past: nothing in flight can change it.
                    return answer(reply, self.local_read(request));
                }
                self.read_after_barrier(g, request, reply).await;
                Some(())
            }
            // The pool table is read like any replicated state: after every metadata
            // change that completed before the request, wherever it was made.
            Request::ListPools | Request::FindPool { .. } | Request::Layout => {
                self.read_after_barrier(0, request, reply).await;
                Some(())
            }
            Request::Members => {
                let Some(view) = &self.view else {
                    return answer(
                        reply,
                        Response::error(ErrorCode::Unavailable, "not joined yet"),
                    );
                };
                let members = view
                    .members
                    .iter()
                    .map(|m| MemberInfo {
                        node: m.node,
                        incarnation: m.incarnation,
                        client_addr: self
                            .cfg
                            .client_addrs
                            .get(&m.node)
                            .cloned()
                            .unwrap_or_default(),
                    })
                    .collect();
                answer(
                    reply,
                    Response::Members {
                        view_id: view.id,
                        members,
                    },
                )
            }
            Request::Watch { .. } | Request::WatchShard { .. } | Request::Unwatch { .. } => answer(
                reply,
                Response::error(
                    ErrorCode::BadRequest,
                    "watch is a stream; use the watch frame",
                ),
            ),
        }
    }
}

/// A `trigger_put` (or call) received by this node, as dispatch takes it.
fn trigger_arrival<'a>(
    subgroup: u32,
    shard: u32,
    key: &'a str,
    id: MessageId,
    blob: &'a Bytes,
    me: u32,
) -> Arrived<'a> {
    Arrived {
        subgroup,
        shard,
        key,
        version: 0,
        timestamp_us: now_us(),
        previous_version: None,
        previous_version_by_key: None,
        id,
        blob,
        sender: me,
        arrival: Arrival::Trigger,
        assignee: None,
        holders: None,
        // Not stored, so not cached.
        device: None,
        pool_gpu: None,
    }
}

/// A call's answer: its outputs, or why there are none.
fn call_response(result: udl::CallResult) -> Response {
    use udl::CallFailure;
    match result {
        Ok(outputs) => Response::Outputs(outputs),
        Err(CallFailure::Udl(message)) => Response::error(
            ErrorCode::UdlFailed,
            format!("a UDL of the call failed: {message}"),
        ),
        Err(CallFailure::TooLarge { limit_bytes }) => Response::error(
            ErrorCode::TooLarge,
            format!(
                "the call's outputs exceed {limit_bytes} bytes or {} outputs",
                crate::wire::CALL_OUTPUTS_MAX
            ),
        ),
        // Queues full (or stopping): busy, so the client tries again.
        Err(CallFailure::NotRun { missing, of }) => Response::error(
            ErrorCode::Unavailable,
            format!("{missing} of the call's {of} UDL invocations could not run (UDL queues full)"),
        ),
        Err(CallFailure::NoUdl(key)) => Response::error(
            ErrorCode::NoSuchDfg,
            format!("no UDL runs on a trigger_put of {key} on this node"),
        ),
    }
}

/// Caches, in the GPU caches of its pools, the objects of a store installed whole (a
/// state transfer), as their puts would have been.
fn cache_store(gpu: &NodeGpu, pools: &PoolTable, subgroup: u32, store: &ShardStore) {
    for pool in pools
        .list()
        .filter(|p| p.spec.subgroup == subgroup && p.spec.gpu_cache.is_some())
    {
        for key in store.list_keys(&pool.spec.path, None).into_iter().flatten() {
            if let Some(object) = store.latest(&key) {
                gpu.on_put(&pool.spec, &key, object.version.0, &object.blob);
            }
        }
    }
}

/// Forgets, in the GPU caches, the objects of a store this node no longer holds.
fn uncache_store(gpu: &NodeGpu, pools: &PoolTable, subgroup: u32, store: &ShardStore) {
    for pool in pools
        .list()
        .filter(|p| p.spec.subgroup == subgroup && p.spec.gpu_cache.is_some())
    {
        for key in store.list_keys(&pool.spec.path, None).into_iter().flatten() {
            gpu.on_remove(&pool.spec.path, &key);
        }
    }
}

/// A stable id for a default pool's creation, the same at every node.
fn pool_seq(path: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(path.as_bytes())
}
