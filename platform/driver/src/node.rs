//! The driver: one tokio task owns a node's protocol core, feeds it the transport's
//! messages, the real clock and the log's completions, and executes its commands.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use squall_log::{LogError, LogStore, Record, ShardKey};
use squall_platform::codec::{self, DecodeError};
use squall_platform::{
    Ballot, ConfigError, Core, CoreConfig, Delivery, LoggedState, MemberId, NodeId, Output,
    RestartPlan, SendError, SendTicket, ShardFed, ShardTail, StopReason, Version, View, ViewId,
    Wire,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, error, info, info_span, warn};

use crate::state::{StateHeader, StateReader, encode_app_bytes, encode_app_end, encode_records};
use crate::transport::{Inbound, Transport};

/// Appends, syncs and metadata queued for the log thread. The core's send window bounds
/// what is delivered but not yet persisted, so this is far from reached in practice; if
/// it were, the node task would wait for the log (backpressure), never drop work.
pub const LOG_QUEUE_MAX: usize = 65_536;

/// Appends and syncs the driver gathers before sending them to the log thread at once.
pub const LOG_BATCH_MAX: usize = 1024;

/// Peer messages the node task takes in before it executes the core's outputs.
pub const INBOUND_BATCH_MAX: usize = 64;

/// Commands (sends, mostly) the driver takes in before executing the core's outputs.
pub const COMMAND_BATCH_MAX: usize = 64;

/// Kinds of metadata records in the log.
pub const META_VIEW: u8 = 1;
pub const META_TRIM: u8 = 2;
/// An agreement to a next view (a proposal or a restart plan), logged before it is
/// acknowledged: the ballot, then the view encoded as a `Welcome`.
pub const META_ACK: u8 = 3;
/// A promise to a restart leader (its ballot), logged before the node reports its log to
/// it: the node agrees to no restart plan of a lower ballot, in this life or the next.
pub const META_PROMISE: u8 = 4;
/// A shard's state received whole (view id, subgroup, shard), logged after the state: a
/// total restart then counts this node a holder of the shard in that view.
pub const META_FED: u8 = 5;

/// The restart leaders in order: `preferred`, then every other of `peers` by id, once
/// each. Built this way on every node, the list is the same everywhere.
pub fn restart_order(preferred: NodeId, peers: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let mut others: Vec<NodeId> = peers.into_iter().filter(|id| *id != preferred).collect();
    others.sort_unstable();
    others.dedup();
    std::iter::once(preferred).chain(others).collect()
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub core: CoreConfig,
    pub me: MemberId,
    /// Found a new group (this node is its first member) rather than join one. Ignored
    /// when the log holds a view: the node then restarts (see `restart_leaders`).
    pub found: bool,
    /// Nodes to ask for admission when joining.
    pub contacts: Vec<NodeId>,
    /// The nodes that may decide a total restart, in order of preference; every node of a
    /// cluster names the same list. A node whose log holds a view first looks for a live
    /// group through `contacts`, and otherwise reports its log to these nodes; the first
    /// of them that is back and hears from none before it leads the restart.
    pub restart_leaders: Vec<NodeId>,
    /// How often the core's clock advances.
    pub tick_interval_ms: u64,
    /// Application events buffered before the node waits for the application.
    pub events_max: usize,
    /// Commands buffered before callers wait.
    pub commands_max: usize,
    /// Report every run of multicast data as it arrives ([`AppEvent::Arrived`]): for
    /// histories that check stability before delivery. Off in production.
    pub report_arrivals: bool,
    /// Subgroups whose deliveries are not logged (volatile data): their persistence is
    /// immediate and their state transfers carry no log. Views, trims and agreements are
    /// logged regardless when there is a log.
    pub unlogged_subgroups: Vec<u32>,
    /// Keeps a logged shard's transferred application state (when the source sent one)
    /// durably, on the log thread, as its chunks arrive and before the log drops what it
    /// held of the shard and takes the records that follow that state. So a log never
    /// holds a transferred log's records without the state they follow: if the source's
    /// log no longer starts at the shard's beginning, those records alone rebuild a
    /// different store, and a crash between the two would leave just that; and the state,
    /// which may be as large as the shard, is never held whole in memory. `None`: the
    /// driver collects the state and the application gets it with
    /// [`AppEvent::StateReceived`].
    pub state_keeper: Option<StateKeeper>,
}

/// See [`NodeConfig::state_keeper`].
#[derive(Clone)]
pub struct StateKeeper(pub Arc<dyn KeepState>);

/// Stores a shard's transferred application state as it arrives, durably once whole.
/// Called on the log thread, in order, for one transfer of a shard at a time; a transfer
/// that breaks off is followed by the next one's [`KeepState::begin`].
pub trait KeepState: Send + Sync {
    /// A transfer's state begins for `key`: drop whatever an earlier one left unfinished.
    fn begin(&self, key: ShardKey) -> std::io::Result<()>;
    /// The next bytes of the state, in order.
    fn append(&self, key: ShardKey, bytes: &[u8]) -> std::io::Result<()>;
    /// The state is whole: keep it, durably (synced), before returning; an error if it is
    /// not a state the application can take.
    fn finish(&self, key: ShardKey) -> std::io::Result<()>;
}

impl std::fmt::Debug for StateKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKeeper")
    }
}

/// The application state a logged shard's transfer brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferredState {
    /// None: the source's log holds the shard's whole history.
    Empty,
    /// The [`NodeConfig::state_keeper`] kept it.
    Kept,
    /// Collected in memory, without a state keeper.
    Bytes(Bytes),
}

/// An [`AppEvent`] stamped with the wall clock when the driver produced it: before any
/// peer can have learned of it, so histories of processes on one machine sort causally.
#[derive(Clone, Debug)]
pub struct NodeEvent {
    pub at_us: u64,
    pub event: AppEvent,
}

/// What the node tells its application, in order.
#[derive(Clone, Debug)]
pub enum AppEvent {
    /// Multicast data from `from` reached this node (only with `report_arrivals`):
    /// slots `first_index..first_index + count` of its stream in `subgroup`.
    Arrived {
        from: MemberId,
        view_id: ViewId,
        subgroup: u32,
        first_index: u64,
        count: u64,
    },
    /// The group restarts from logs with this plan (the restart view is installed next);
    /// this node's shard logs were truncated to the plan's trims.
    Restarting(Arc<RestartPlan>),
    Installed(Arc<View>),
    Delivered(Delivery),
    SendsAborted {
        subgroup: u32,
        tickets: Vec<SendTicket>,
    },
    /// Every delivered version of `subgroup` up to `version` is durable here.
    Persisted {
        subgroup: u32,
        version: Version,
    },
    /// ... and at every member of the shard.
    GlobalPersisted {
        subgroup: u32,
        version: Version,
    },
    TrimLogged {
        view_id: ViewId,
        subgroup: u32,
        received: Vec<u64>,
    },
    Trimmed {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        received: Vec<u64>,
    },
    /// The read asked for with [`NodeHandle::read_barrier`] may be served now (or not,
    /// with the reason: this node holds no replica of the subgroup, or stopped).
    ReadReady {
        token: u64,
        result: Result<(), SendError>,
        /// Served under a read lease (no probe round among the replicas).
        leased: bool,
    },
    /// Answer with [`NodeHandle::supply_state`]: the shard's state as of now (for a logged
    /// subgroup, what its log lacks: empty if the log is whole). The state may also come
    /// in pieces ([`NodeHandle::supply_state_piece`]), so that a large one need not be
    /// encoded at once.
    StateRequested {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        /// Whether the joiners need the application's state. Always for a subgroup
        /// without a log; with one, not when the joiners' logs continue into the
        /// source's (the transfer then carries only the records after what they hold,
        /// and their logs, with what they kept beside them, hold the shard's history):
        /// the state supplied may then be empty.
        needs_state: bool,
    },
    /// The joiners took what was sent of a state supplied in pieces: answer with the next
    /// one ([`NodeHandle::supply_state_piece`]).
    StateSupplyMore {
        view_id: ViewId,
        subgroup: u32,
    },
    /// A part of the state of a subgroup without a log, as the source supplied it cut
    /// into parts of at most `state_part_bytes_max`; the parts in order are the bytes the
    /// source supplied. Tell the driver once each is applied
    /// ([`NodeHandle::state_part_taken`]): the source sends only a window ahead of that.
    StatePart {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        part: u32,
        state: Bytes,
        last: bool,
    },
    /// The state of a logged subgroup (after its records reached the log).
    StateReceived {
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        state: TransferredState,
        /// The transferred records are in this node's log, which now holds the shard's
        /// whole history. An application that replays its log rebuilds from it, in
        /// chunks ([`NodeHandle::read_log_chunk`]).
        log: LoggedHistory,
    },
    Stopped(StopReason),
}

#[derive(Debug)]
enum Command {
    Send {
        subgroup: u32,
        payload: Bytes,
        reply: oneshot::Sender<Result<SendTicket, NodeSendError>>,
    },
    /// Sends taken in one go: once one is refused, so is every one after it.
    SendBatch {
        subgroup: u32,
        sends: Vec<(Bytes, oneshot::Sender<Result<SendTicket, NodeSendError>>)>,
    },
    SupplyStatePiece {
        view_id: ViewId,
        subgroup: u32,
        piece: Bytes,
        last: bool,
    },
    StatePartTaken {
        view_id: ViewId,
        subgroup: u32,
        part: u32,
    },
    ReadBarrier {
        subgroup: u32,
        token: u64,
    },
    ReadLogged {
        subgroup: u32,
        shard: u32,
        version: Version,
        reply: oneshot::Sender<Result<Option<Bytes>, String>>,
    },
    Leave,
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("core configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("starting the log thread: {0}")]
    Thread(std::io::Error),
    #[error("the log's last view record is unreadable: {0}")]
    LoggedView(DecodeError),
    #[error("a view record of the log holds another kind of message")]
    LoggedViewKind,
}

/// A shard's history as this node's log holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedHistory {
    /// The shard's last logged version when it was reported (`None`: an empty log).
    /// Records after it are deliveries that the application hears of as such.
    pub last_version: Option<u64>,
    /// After a state transfer: this node's own log was kept through this version (the
    /// transfer's base) and the records after it came from the source; `None`: the log
    /// is the source's, whole. An application whose state was built from its own log
    /// through a version no later than this one can continue from there instead of
    /// rebuilding from the start.
    pub kept_through: Option<u64>,
}

/// The application's side of a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    /// The log thread's queue, for reads that must not wait on the driver task.
    log: Option<std::sync::mpsc::SyncSender<LogWork>>,
}

impl NodeHandle {
    /// Multicasts `payload` in `subgroup`. `Backlogged` means: retry later.
    pub async fn send(&self, subgroup: u32, payload: Bytes) -> Result<SendTicket, NodeSendError> {
        self.submit(subgroup, payload).await?.ticket().await
    }

    /// Queues `payload` for multicast in `subgroup` without waiting for the core to take
    /// it: the receipt yields its ticket (or why the core refused it) later. A caller
    /// that submits many sends before looking at any receipt lets the driver put them
    /// in one message per peer; one that awaits each ticket in turn costs every send a
    /// round trip to the driver, and a message of its own.
    pub async fn submit(
        &self,
        subgroup: u32,
        payload: Bytes,
    ) -> Result<SendReceipt, NodeSendError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Send {
                subgroup,
                payload,
                reply,
            })
            .await
            .map_err(|_| NodeSendError::Stopped)?;
        Ok(SendReceipt {
            answer: Some(answer),
            arrived: None,
        })
    }

    /// Submits `payloads` as one command, in order: the core takes a prefix of them and
    /// refuses the rest (once one is refused, every later one is, with
    /// [`NodeSendError::EarlierRefused`]), so an application whose batch must apply in
    /// order never sees a later send of it taken and an earlier one refused, which
    /// separate submits allow (the core's queue may free up between them). They leave
    /// together, as sends submitted together do. The caller bounds the batch's size.
    pub async fn submit_batch(
        &self,
        subgroup: u32,
        payloads: Vec<Bytes>,
    ) -> Result<Vec<SendReceipt>, NodeSendError> {
        let mut sends = Vec::with_capacity(payloads.len());
        let mut receipts = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let (reply, answer) = oneshot::channel();
            sends.push((payload, reply));
            receipts.push(SendReceipt {
                answer: Some(answer),
                arrived: None,
            });
        }
        self.commands
            .send(Command::SendBatch { subgroup, sends })
            .await
            .map_err(|_| NodeSendError::Stopped)?;
        Ok(receipts)
    }

    /// Asks for [`AppEvent::ReadReady`] with `token` once a linearizable read of this
    /// node's replica in `subgroup` may be served: every write that completed anywhere
    /// before this call has then been delivered *to the application*, since the event
    /// follows those deliveries in the event stream (see [`Core::request_read`]).
    pub async fn read_barrier(&self, subgroup: u32, token: u64) -> Result<(), NodeSendError> {
        self.commands
            .send(Command::ReadBarrier { subgroup, token })
            .await
            .map_err(|_| NodeSendError::Stopped)
    }

    /// The payload this node logged for `version` of its shard (`None`: not in its log),
    /// read by the log thread; the answer comes on the returned channel, so the caller
    /// need not wait for it in place.
    pub async fn read_logged(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
    ) -> Result<LoggedRead, NodeSendError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::ReadLogged {
                subgroup,
                shard,
                version,
                reply,
            })
            .await
            .map_err(|_| NodeSendError::Stopped)?;
        Ok(answer)
    }

    /// Drops the oldest whole segments of this node's log for a shard whose records are
    /// all below `before` (`LogStore::compact_before`), on the log thread after all log
    /// work queued before: the application's record that it no longer needs them (a
    /// checkpoint of its state) must be durable first. With no log, nothing happens.
    pub async fn compact_log(&self, subgroup: u32, shard: u32, before: u64) -> Result<(), String> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        log.send(LogWork::Compact {
            key: ShardKey { subgroup, shard },
            before,
            reply,
        })
        .map_err(|_| "the log thread ended".to_string())?;
        answer
            .await
            .map_err(|_| "the log thread ended".to_string())?
    }

    /// The records of this node's log for a shard with versions in `[from, to]`, as
    /// many as fit in `payload_bytes_max` (at least one when there is one); empty with no
    /// log. Read on the log thread after all log work queued before, and answered by it
    /// directly: an application may await this while the driver waits for it to take
    /// events (a replay holds back the events of a busy group).
    pub async fn read_log_chunk(
        &self,
        subgroup: u32,
        shard: u32,
        from: u64,
        to: u64,
        payload_bytes_max: usize,
    ) -> Result<Vec<Record>, String> {
        let Some(log) = &self.log else {
            return Ok(Vec::new());
        };
        let (reply, answer) = oneshot::channel();
        log.send(LogWork::ReadChunk {
            key: ShardKey { subgroup, shard },
            from,
            to,
            payload_bytes_max,
            reply,
        })
        .map_err(|_| "the log thread ended".to_string())?;
        answer
            .await
            .map_err(|_| "the log thread ended".to_string())?
    }

    pub async fn supply_state(&self, view_id: ViewId, subgroup: u32, state: Bytes) {
        let _ = self
            .commands
            .send(Command::SupplyStatePiece {
                view_id,
                subgroup,
                piece: state,
                last: true,
            })
            .await;
    }

    /// One piece of a shard's state; the first answers [`AppEvent::StateRequested`], each
    /// next one an [`AppEvent::StateSupplyMore`], and `last` ends it. For a logged
    /// subgroup the log's records the joiners lack follow the last piece.
    pub async fn supply_state_piece(
        &self,
        view_id: ViewId,
        subgroup: u32,
        piece: Bytes,
        last: bool,
    ) {
        let _ = self
            .commands
            .send(Command::SupplyStatePiece {
                view_id,
                subgroup,
                piece,
                last,
            })
            .await;
    }

    /// The application applied [`AppEvent::StatePart`] `part`.
    pub async fn state_part_taken(&self, view_id: ViewId, subgroup: u32, part: u32) {
        let _ = self
            .commands
            .send(Command::StatePartTaken {
                view_id,
                subgroup,
                part,
            })
            .await;
    }

    pub async fn leave(&self) {
        let _ = self.commands.send(Command::Leave).await;
    }
}

/// The answer of [`NodeHandle::read_logged`].
pub type LoggedRead = oneshot::Receiver<Result<Option<Bytes>, String>>;

#[derive(Debug, Error)]
pub enum NodeSendError {
    #[error(transparent)]
    Core(SendError),
    #[error("the node has stopped")]
    Stopped,
    #[error("an earlier send of its batch was refused")]
    EarlierRefused,
}

/// A submitted send's answer: its ticket once the core has taken it. Receipts are
/// answered in submission order, and before any event about the send (its delivery, or
/// its abort in a view change) is emitted.
#[derive(Debug)]
pub struct SendReceipt {
    /// `None` once the answer came off it (a oneshot is read once).
    answer: Option<oneshot::Receiver<Result<SendTicket, NodeSendError>>>,
    /// Taken off `answer` by [`SendReceipt::ready`], for `try_ticket` to hand out.
    arrived: Option<Result<SendTicket, NodeSendError>>,
}

impl SendReceipt {
    /// The answer if the driver has given it, once; `None` while the command still
    /// waits (and after the answer was handed out).
    pub fn try_ticket(&mut self) -> Option<Result<SendTicket, NodeSendError>> {
        if let Some(arrived) = self.arrived.take() {
            return Some(arrived);
        }
        let answer = match self.answer.as_mut()?.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => None,
        };
        self.answer = None;
        Some(receipt_result(answer))
    }

    /// Waits for the answer.
    pub async fn ticket(mut self) -> Result<SendTicket, NodeSendError> {
        self.ready().await;
        self.arrived.take().unwrap_or(Err(NodeSendError::Stopped))
    }

    /// Waits until the answer is there without taking it: `try_ticket` then has it.
    /// Cancel-safe: dropped before the answer came, it loses nothing.
    pub async fn ready(&mut self) {
        let Some(answer) = self.answer.as_mut() else {
            return;
        };
        let answer = answer.await.ok();
        self.answer = None;
        self.arrived = Some(receipt_result(answer));
    }
}

/// A receipt's answer as its caller sees it; `None`: the driver stopped unanswered.
fn receipt_result(
    answer: Option<Result<SendTicket, NodeSendError>>,
) -> Result<SendTicket, NodeSendError> {
    answer.unwrap_or(Err(NodeSendError::Stopped))
}

/// Bytes of a transfer's application state for the state keeper, in order.
#[derive(Debug, Default)]
struct StateBytes {
    /// The transfer's first ([`KeepState::begin`]).
    begin: bool,
    bytes: Vec<Bytes>,
    /// The state's last ([`KeepState::finish`]).
    end: bool,
}

/// Work for the log thread; it answers through [`LogDone`].
#[derive(Debug)]
enum LogWork {
    /// The appends and syncs of one driver step, in order.
    Batch(Vec<LogWork>),
    Append(ShardKey, Record),
    /// Persist everything appended for `subgroup` up to `version`.
    Sync {
        subgroup: u32,
        version: Version,
    },
    Meta {
        kind: u8,
        bytes: Bytes,
        then: Option<LogDone>,
    },
    /// The payload of `key`'s record `version`, for a read of the past.
    ReadRecord {
        key: ShardKey,
        version: u64,
        reply: oneshot::Sender<Result<Option<Bytes>, String>>,
    },
    /// The first chunk of the records of `key` after `after` (at most
    /// `payload_bytes_max` of payload) if the log holds that version, else from the
    /// start, for a state transfer: with the version they follow and the log's last
    /// version now (the transfer ends there).
    ReadTail {
        key: ShardKey,
        after: Option<Version>,
        payload_bytes_max: usize,
        reply: oneshot::Sender<Result<Tail, String>>,
    },
    /// The next chunk of a state transfer this node is the source of: records of `key`
    /// in `[from, to]`, answered with [`LogDone::StateChunk`].
    ReadStateChunk {
        key: ShardKey,
        from: u64,
        to: u64,
        payload_bytes_max: usize,
        view_id: ViewId,
        subgroup: u32,
    },
    /// What a part of a state transfer this node receives brought: bytes of the
    /// application's state go to the state keeper (`NodeConfig::state_keeper`); with
    /// `keep` (the state is whole, and kept), `key`'s log is first cut after `keep`
    /// (`Some(None)`: emptied), then takes `records`. Then answered with
    /// [`LogDone::StatePartTaken`] for `taken` (view and part) or, with `reply`, synced
    /// first and answered with the log's last version (the transfer's end).
    StateRecords {
        key: ShardKey,
        state: StateBytes,
        keep: Option<Option<Version>>,
        records: Vec<Record>,
        /// The log was cut for this transfer (by this work or an earlier one).
        logging: bool,
        taken: Option<(ViewId, u32)>,
        reply: Option<oneshot::Sender<Result<Option<u64>, String>>>,
    },
    /// A bounded chunk of `key`'s records (`LogStore::range_bounded`).
    ReadChunk {
        key: ShardKey,
        from: u64,
        to: u64,
        payload_bytes_max: usize,
        reply: oneshot::Sender<Result<Vec<Record>, String>>,
    },
    /// Drop `key`'s oldest whole segments below `before` (`LogStore::compact_before`).
    Compact {
        key: ShardKey,
        before: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Drop `key`'s records after `after`, durably (a restart's agreed trim).
    Truncate {
        key: ShardKey,
        after: Option<Version>,
    },
}

#[derive(Debug)]
enum LogDone {
    Persisted {
        subgroup: u32,
        version: Version,
    },
    TrimLogged {
        view_id: ViewId,
        subgroup: u32,
        ballot: Ballot,
        received: Vec<u64>,
    },
    AckLogged {
        view_id: ViewId,
        ballot: Ballot,
    },
    PromiseLogged {
        ballot: Ballot,
    },
    /// A chunk of a state transfer this node is the source of (`LogWork::ReadStateChunk`).
    StateChunk {
        view_id: ViewId,
        subgroup: u32,
        records: Vec<Record>,
    },
    /// A part of a state transfer this node receives is in its log, which now ends at
    /// `logged`.
    StatePartTaken {
        view_id: ViewId,
        key: ShardKey,
        part: u32,
        /// The log's last version, once it was cut for the transfer.
        logged: Option<Option<u64>>,
    },
    Failed(String),
}

/// Starts a node: the core task and, with `log`, the log thread. Returns the handle for
/// commands and the stream of application events.
pub fn start_node(
    cfg: NodeConfig,
    transport: Arc<dyn Transport>,
    inbound: mpsc::Receiver<Inbound>,
    log: Option<Box<dyn LogStore + Send>>,
) -> Result<(NodeHandle, mpsc::Receiver<NodeEvent>), NodeError> {
    let clock = Instant::now();
    let logged = match &log {
        Some(store) => logged_state(store.as_ref())?,
        None => LoggedState::default(),
    };
    let core = if logged.view.is_some() {
        info!(node = cfg.me.node, "the log holds a view: restarting");
        Core::restart(
            cfg.core.clone(),
            cfg.me,
            cfg.contacts.clone(),
            cfg.restart_leaders.clone(),
            logged,
            0,
        )?
    } else if cfg.found {
        Core::found(cfg.core.clone(), cfg.me, 0)?
    } else {
        Core::join(cfg.core.clone(), cfg.me, cfg.contacts.clone(), 0)?
    };
    let (commands_tx, commands) = mpsc::channel(cfg.commands_max);
    let (events_tx, events) = mpsc::channel(cfg.events_max);
    let (done_tx, done) = mpsc::channel(cfg.commands_max);
    let log_failure = Arc::new(OnceLock::new());
    let log_tx = match log {
        Some(store) => Some(
            spawn_log_thread(
                store,
                cfg.state_keeper.clone(),
                done_tx,
                Arc::clone(&log_failure),
            )
            .map_err(NodeError::Thread)?,
        ),
        None => None,
    };
    let log_handle = log_tx.clone();
    let driver = Driver {
        core,
        transport,
        events: events_tx,
        log: log_tx,
        log_failure,
        log_batch: Vec::new(),
        held_events: Vec::new(),
        clock,
        feedback: VecDeque::new(),
        last_hlc_us: 0,
        restart_waiting: None,
        tails: Vec::new(),
        outgoing: Vec::new(),
        incoming: Vec::new(),
        log_cuts: HashMap::new(),
        state_chunk_bytes: cfg.core.state_part_bytes_max,
        record_bytes_max: cfg.core.payload_size_max_bytes,
        keeps_state: cfg.state_keeper.is_some(),
        unlogged: cfg.unlogged_subgroups.clone(),
        read_waits: Vec::new(),
        reads_asked: HashMap::new(),
        node_span: tracing::Span::none(),
        view_span: tracing::Span::none(),
    };
    // Every log line of the node carries its node and incarnation, and from the first
    // view on the current view (a child span replaced at each install: recording the
    // field again would append to it, one value per view the node ever saw).
    let span = info_span!("node", node = cfg.me.node, incarnation = cfg.me.incarnation);
    tokio::spawn(driver.run(cfg, inbound, commands, done).instrument(span));
    Ok((
        NodeHandle {
            commands: commands_tx,
            log: log_handle,
        },
        events,
    ))
}

struct Driver {
    core: Core,
    transport: Arc<dyn Transport>,
    events: mpsc::Sender<NodeEvent>,
    log: Option<std::sync::mpsc::SyncSender<LogWork>>,
    /// Why the log thread ended, set before it ends: whichever notice of its end the
    /// driver meets first (a refused send, a dropped reply, the thread's own report)
    /// gives the operator the real reason, a full disk say.
    log_failure: Arc<OnceLock<String>>,
    /// Appends and syncs of this step, sent to the log thread together (one wake-up of
    /// it per step, not one per delivery): before other log work and when the step's
    /// outputs are executed, or every [`LOG_BATCH_MAX`].
    log_batch: Vec<LogWork>,
    /// Events of this step emitted while appends were held back, sent after them.
    held_events: Vec<NodeEvent>,
    clock: Instant,
    /// Completions available at once (no log: persistence is immediate).
    feedback: VecDeque<LogDone>,
    last_hlc_us: u64,
    /// Why the total restart waited when that was last logged (logged when it changes).
    restart_waiting: Option<squall_platform::RestartWait>,
    /// Log tails being read for state transfers the application has yet to answer.
    tails: Vec<ReadTail>,
    /// State transfers this node is the source of with log records still to read.
    outgoing: Vec<OutgoingState>,
    /// State transfers this node receives, by subgroup.
    incoming: Vec<IncomingState>,
    /// Per shard, the lowest version its log was cut to by transfers since the last one
    /// ended (`None`: cut whole): a transfer that broke off and began again cut it too.
    log_cuts: HashMap<ShardKey, Option<u64>>,
    /// Payload read from the log per piece of an outgoing state (a part's worth).
    state_chunk_bytes: usize,
    record_bytes_max: usize,
    /// A state keeper takes incoming application state (else it is collected here).
    keeps_state: bool,
    unlogged: Vec<u32>,
    /// Reads waiting for a delivery (see [`NodeHandle::read_barrier`]); the application
    /// bounds how many it asks for.
    read_waits: Vec<ReadWait>,
    /// Reads the core is confirming (read probes): its ticket to the subgroup and the
    /// application's token.
    reads_asked: HashMap<u64, (u32, u64)>,
    /// The span every step runs in is `view_span`, a child of `node_span` made anew at
    /// each view install.
    node_span: tracing::Span,
    view_span: tracing::Span,
}

struct ReadWait {
    subgroup: u32,
    after: Version,
    token: u64,
    leased: bool,
}

/// The first records of a shard log for joiners.
#[derive(Debug)]
struct Tail {
    /// The version they follow (none: from the start).
    base: Option<u64>,
    records: Vec<Record>,
    /// The log's last version when it was read: the transfer ends there.
    end: Option<u64>,
}

/// A state transfer this node is the source of, from the application's first piece on:
/// the application's further pieces, then the tail's first records, then the records
/// `next..=end` (`rest`), a chunk each time the core asks (`Output::StateSupplyMore`).
#[derive(Debug)]
struct OutgoingState {
    view_id: ViewId,
    subgroup: u32,
    /// The application supplied its last piece.
    app_done: bool,
    /// The tail's records read up front, sent after the application's last piece.
    first_records: Vec<Record>,
    rest: Option<RecordsLeft>,
}

/// Log records of an outgoing state still to be read.
#[derive(Debug, Clone, Copy)]
struct RecordsLeft {
    key: ShardKey,
    next: u64,
    end: u64,
}

/// A state transfer this node receives.
#[derive(Debug)]
struct IncomingState {
    view_id: ViewId,
    subgroup: u32,
    reader: StateReader,
    /// Bytes of the application's state arrived (they went to the state keeper, or to
    /// `app` without one).
    app_began: bool,
    /// The application's state, without a state keeper.
    app: BytesMut,
    /// Its records began to reach the log (which was cut to the base first, once the
    /// application's state was whole).
    logging: bool,
}

/// The tail of a shard's log read for a state transfer this node is asked to source.
struct ReadTail {
    view_id: ViewId,
    subgroup: u32,
    key: ShardKey,
    tail: Tail,
}

/// A view as the meta log holds it (`META_VIEW`, or after the ballot of a `META_ACK`).
fn decode_logged_view(bytes: Bytes) -> Result<Arc<View>, NodeError> {
    match codec::decode(bytes, &codec::DecodeLimits::default()) {
        Ok(Wire::Welcome { view }) => Ok(view),
        Ok(_) => Err(NodeError::LoggedViewKind),
        Err(e) => Err(NodeError::LoggedView(e)),
    }
}

/// Every view this node installed in its earlier lives, oldest first, as its meta log
/// holds them: the application tells from them who was in each shard when a logged
/// record was delivered (a replay holds the `one` UDL inputs left unfinished).
pub fn logged_views(store: &dyn LogStore) -> Result<Vec<Arc<View>>, NodeError> {
    store
        .meta()?
        .into_iter()
        .filter(|(kind, _)| *kind == META_VIEW)
        .map(|(_, bytes)| decode_logged_view(bytes))
        .collect()
}

/// What this node's log says about its last life: the newest view it logged and the end
/// of each shard log.
fn logged_state(store: &(dyn LogStore + Send)) -> Result<LoggedState, NodeError> {
    let decode_view = decode_logged_view;
    let mut view = None;
    let mut acked = None;
    let mut promised = None;
    let mut fed: Vec<ShardFed> = Vec::new();
    for (kind, bytes) in store.meta()? {
        match kind {
            META_VIEW => view = Some(decode_view(bytes)?),
            META_ACK => {
                let (ballot, rest) = decode_ballot(&bytes).ok_or(NodeError::LoggedViewKind)?;
                acked = Some((ballot, decode_view(bytes.slice(rest..))?));
            }
            META_PROMISE => {
                let (ballot, _) = decode_ballot(&bytes).ok_or(NodeError::LoggedViewKind)?;
                promised = promised.max(Some(ballot));
            }
            META_FED => {
                let f = decode_fed(&bytes).ok_or(NodeError::LoggedViewKind)?;
                // The newest view each shard was fed in is all a restart looks at.
                fed.retain(|old| (old.subgroup, old.shard) != (f.subgroup, f.shard));
                fed.push(f);
            }
            _ => {}
        }
    }
    let tails = store
        .shards()
        .into_iter()
        .filter_map(|key| {
            store.last_version(key).map(|v| ShardTail {
                subgroup: key.subgroup,
                shard: key.shard,
                version: Version(v),
            })
        })
        .collect();
    Ok(LoggedState {
        view,
        acked,
        promised,
        tails,
        fed,
    })
}

impl Driver {
    async fn run(
        mut self,
        cfg: NodeConfig,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
        mut done: mpsc::Receiver<LogDone>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.tick_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.node_span = tracing::Span::current();
        loop {
            // Each step runs in the span of the view it starts in, a child of the node's.
            let view_span = self.view_span.clone();
            let stop = self
                .step(&cfg, &mut inbound, &mut commands, &mut done, &mut tick)
                .instrument(view_span)
                .await;
            if stop {
                return;
            }
        }
    }

    /// Takes in one event (or a batch of messages) and executes the core's outputs; true
    /// once the node has stopped.
    async fn step(
        &mut self,
        cfg: &NodeConfig,
        inbound: &mut mpsc::Receiver<Inbound>,
        commands: &mut mpsc::Receiver<Command>,
        done: &mut mpsc::Receiver<LogDone>,
        tick: &mut tokio::time::Interval,
    ) -> bool {
        // Completions that need no I/O (no log) act at once, with their outputs.
        while let Some(completion) = self.feedback.pop_front() {
            self.complete(completion).await;
            if self.execute_outputs().await.is_some() {
                return true;
            }
        }
        tokio::select! {
            Some(msg) = inbound.recv() => {
                self.inbound(cfg, msg).await;
                // Take in what else has arrived before answering: one row push
                // then answers many messages.
                for _ in 1..INBOUND_BATCH_MAX {
                    let Ok(msg) = inbound.try_recv() else { break };
                    self.inbound(cfg, msg).await;
                }
            }
            Some(command) = commands.recv() => {
                self.command(command).await;
                // Take in what else was asked before executing: sends submitted
                // together leave in one message per peer.
                for _ in 1..COMMAND_BATCH_MAX {
                    let Ok(command) = commands.try_recv() else { break };
                    self.command(command).await;
                }
            }
            Some(completion) = done.recv() => self.complete(completion).await,
            _ = tick.tick() => {
                let now_ms = self.clock.elapsed().as_millis() as u64;
                self.core.tick(now_ms);
                let waiting = self.core.restart_waiting();
                if waiting != self.restart_waiting.as_ref() {
                    if let Some(why) = waiting {
                        info!(%why, "the total restart waits");
                    }
                    self.restart_waiting = waiting.cloned();
                }
            }
        }
        self.execute_outputs().await.is_some()
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Send {
                subgroup,
                payload,
                reply,
            } => {
                let _ = reply.send(
                    self.core
                        .send(subgroup, payload)
                        .map_err(NodeSendError::Core),
                );
            }
            Command::SendBatch { subgroup, sends } => {
                let mut refused = false;
                for (payload, reply) in sends {
                    let answer = if refused {
                        Err(NodeSendError::EarlierRefused)
                    } else {
                        self.core
                            .send(subgroup, payload)
                            .map_err(NodeSendError::Core)
                    };
                    refused |= answer.is_err();
                    let _ = reply.send(answer);
                }
            }
            Command::ReadLogged {
                subgroup,
                shard,
                version,
                reply,
            } => {
                if self.log.is_some() {
                    self.queue_log_work(LogWork::ReadRecord {
                        key: ShardKey { subgroup, shard },
                        version: version.0,
                        reply,
                    });
                } else {
                    let _ = reply.send(Ok(None));
                }
            }
            Command::ReadBarrier { subgroup, token } => {
                let now_ms = self.clock.elapsed().as_millis() as u64;
                match self.core.request_read(subgroup, now_ms) {
                    Ok(ticket) => {
                        self.reads_asked.insert(ticket, (subgroup, token));
                    }
                    Err(e) => {
                        self.emit(AppEvent::ReadReady {
                            token,
                            result: Err(e),
                            leased: false,
                        })
                        .await;
                    }
                }
            }
            Command::SupplyStatePiece {
                view_id,
                subgroup,
                piece,
                last,
            } => {
                if self.logs(subgroup) {
                    self.supply_logged_piece(view_id, subgroup, piece, last)
                        .await;
                } else {
                    // No log to stream after it: the application's bytes are the
                    // whole transfer.
                    self.core.supply_state_piece(view_id, subgroup, piece, last);
                }
            }
            Command::StatePartTaken {
                view_id,
                subgroup,
                part,
            } => {
                self.core.state_part_applied(view_id, subgroup, part);
            }
            Command::Leave => self.core.leave(),
        }
    }

    async fn release_reads(&mut self, ready: impl Fn(&ReadWait) -> bool) {
        if self.read_waits.is_empty() {
            return;
        }
        let (now, later): (Vec<ReadWait>, Vec<ReadWait>) = std::mem::take(&mut self.read_waits)
            .into_iter()
            .partition(ready);
        self.read_waits = later;
        for wait in now {
            self.emit(AppEvent::ReadReady {
                token: wait.token,
                result: Ok(()),
                leased: wait.leased,
            })
            .await;
        }
    }

    async fn inbound(&mut self, cfg: &NodeConfig, msg: Inbound) {
        match msg {
            Inbound::Message { from, msg } => {
                if cfg.report_arrivals {
                    self.report_arrivals(from, &msg).await;
                }
                // A read-lease promise runs from its receipt: the core sees the clock now.
                self.core
                    .observe_clock(self.clock.elapsed().as_millis() as u64);
                self.core.handle_message(from, msg);
            }
            Inbound::Broken { peer, reason } => {
                info!(%peer, %reason, "suspecting");
                self.core.suspect(peer);
            }
        }
    }

    /// Executes everything the core produced; on a stop, tells the application.
    async fn execute_outputs(&mut self) -> Option<StopReason> {
        let outputs: Vec<Output> = self.core.drain_outputs().collect();
        for output in outputs {
            if let Some(reason) = self.execute(output).await {
                self.flush_log_and_events().await;
                info!(?reason, "stopped");
                self.emit(AppEvent::Stopped(reason)).await;
                return Some(reason);
            }
        }
        self.flush_log_and_events().await;
        None
    }

    async fn complete(&mut self, completion: LogDone) {
        match completion {
            LogDone::Persisted { subgroup, version } => {
                // Stamped before the core can tell any peer.
                let at_us = wall_clock_us();
                if self.logs(subgroup) {
                    self.core.persisted(subgroup, version);
                } else {
                    self.core.persisted_lazily(subgroup, version);
                }
                self.emit_at(at_us, AppEvent::Persisted { subgroup, version })
                    .await;
            }
            LogDone::TrimLogged {
                view_id,
                subgroup,
                ballot,
                received,
            } => {
                self.core.trim_persisted(view_id, subgroup, ballot);
                self.emit(AppEvent::TrimLogged {
                    view_id,
                    subgroup,
                    received,
                })
                .await;
            }
            LogDone::AckLogged { view_id, ballot } => self.core.ack_logged(view_id, ballot),
            LogDone::PromiseLogged { ballot } => self.core.promise_logged(ballot),
            LogDone::StateChunk {
                view_id,
                subgroup,
                records,
            } => self.supply_chunk(view_id, subgroup, records),
            LogDone::StatePartTaken {
                view_id,
                key,
                part,
                logged,
            } => {
                // Once the log was cut for the transfer, unless a later one began since.
                if let Some(logged) = logged
                    && self
                        .incoming
                        .iter()
                        .any(|i| i.subgroup == key.subgroup && i.view_id == view_id)
                {
                    self.core
                        .state_logged(key.subgroup, key.shard, logged.map(Version));
                }
                self.core.state_part_applied(view_id, key.subgroup, part);
            }
            LogDone::Failed(reason) => {
                // A log that cannot write cannot keep promises, nor log a graceful
                // leave: stop as a crash would (`Core::storage_failed`).
                error!(%reason, "the log failed; this node stops");
                self.core.storage_failed();
            }
        }
    }

    /// Hands the core a piece of a logged subgroup's application state. The first piece
    /// of a transfer goes after the stream's header; after the last one, the first log
    /// records the joiners lack, the rest a chunk at a time as the core asks
    /// ([`Driver::supply_more`]).
    async fn supply_logged_piece(
        &mut self,
        view_id: ViewId,
        subgroup: u32,
        app: Bytes,
        last: bool,
    ) {
        let mut piece = BytesMut::new();
        let i = match self.outgoing(view_id, subgroup) {
            Some(i) if !self.outgoing[i].app_done => i,
            Some(_) => {
                warn!(
                    subgroup,
                    "a state piece after the state's last one; ignored"
                );
                return;
            }
            None => {
                let Some(out) = self.begin_outgoing(view_id, subgroup) else {
                    return;
                };
                StateHeader { base: out.1 }.encode(&mut piece);
                self.outgoing.retain(|o| o.subgroup != subgroup);
                self.outgoing.push(out.0);
                self.outgoing.len() - 1
            }
        };
        encode_app_bytes(&app, &mut piece);
        if !last {
            self.core
                .supply_state_piece(view_id, subgroup, piece.freeze(), false);
            return;
        }
        encode_app_end(&mut piece);
        let out = &mut self.outgoing[i];
        out.app_done = true;
        encode_records(&std::mem::take(&mut out.first_records), &mut piece);
        let more = out.rest.is_some();
        if !more {
            self.outgoing.swap_remove(i);
        }
        self.core
            .supply_state_piece(view_id, subgroup, piece.freeze(), !more);
    }

    /// A new outgoing state of `subgroup` in `view_id`, with the records of the log's
    /// tail read when the core asked for it, and the version they follow; `None` if the
    /// core asked for none there (a piece of a transfer that a later one replaced).
    fn begin_outgoing(
        &mut self,
        view_id: ViewId,
        subgroup: u32,
    ) -> Option<(OutgoingState, Option<u64>)> {
        let Some(i) = self
            .tails
            .iter()
            .position(|t| t.view_id == view_id && t.subgroup == subgroup)
        else {
            tracing::debug!(
                subgroup,
                ?view_id,
                "a state piece of a transfer that is over; ignored"
            );
            return None;
        };
        let ReadTail { key, tail, .. } = self.tails.swap_remove(i);
        let next = tail.records.last().map(|r| r.version + 1);
        let rest = match (next, tail.end) {
            (Some(next), Some(end)) if next <= end => Some(RecordsLeft { key, next, end }),
            _ => None,
        };
        // `records`: in the piece after the application's state; with `more`, the rest
        // follow in chunks.
        info!(
            subgroup,
            after = ?tail.base.map(Version),
            through = ?tail.end.map(Version),
            records = tail.records.len(),
            more = rest.is_some(),
            "state for joiners"
        );
        let out = OutgoingState {
            view_id,
            subgroup,
            app_done: false,
            first_records: tail.records,
            rest,
        };
        Some((out, tail.base))
    }

    fn outgoing(&self, view_id: ViewId, subgroup: u32) -> Option<usize> {
        self.outgoing
            .iter()
            .position(|o| o.view_id == view_id && o.subgroup == subgroup)
    }

    /// The core can send more of an outgoing state: ask the application for its next
    /// piece, or read the next chunk of the log.
    async fn supply_more(&mut self, view_id: ViewId, subgroup: u32) {
        let Some(out) = self.outgoing(view_id, subgroup).map(|i| &self.outgoing[i]) else {
            if !self.logs(subgroup) {
                self.emit(AppEvent::StateSupplyMore { view_id, subgroup })
                    .await;
            }
            return;
        };
        if !out.app_done {
            self.emit(AppEvent::StateSupplyMore { view_id, subgroup })
                .await;
            return;
        }
        let Some(rest) = out.rest else {
            return;
        };
        let work = LogWork::ReadStateChunk {
            key: rest.key,
            from: rest.next,
            to: rest.end,
            payload_bytes_max: self.state_chunk_bytes,
            view_id,
            subgroup,
        };
        self.queue_log_work(work);
    }

    /// A chunk of an outgoing state was read: supply it.
    fn supply_chunk(&mut self, view_id: ViewId, subgroup: u32, records: Vec<Record>) {
        let Some(i) = self.outgoing(view_id, subgroup) else {
            return;
        };
        let mut piece = BytesMut::new();
        encode_records(&records, &mut piece);
        let out = &mut self.outgoing[i];
        let Some(rest) = out.rest.as_mut() else {
            return;
        };
        // An empty chunk: the log lost what it held (cannot happen while it serves);
        // the transfer ends rather than ask for the same chunk again.
        rest.next = records
            .last()
            .map_or(u64::MAX, |r| r.version.saturating_add(1));
        let last = rest.next > rest.end;
        if last {
            self.outgoing.swap_remove(i);
        }
        self.core
            .supply_state_piece(view_id, subgroup, piece.freeze(), last);
    }

    /// A part of an incoming state. Without a log it goes to the application as it is,
    /// which acknowledges it once applied. With one, the application's state goes to the
    /// state keeper (or is collected) and the records to the log as they arrive (the
    /// source sends only a window ahead of what this node took in); the application
    /// hears of the transfer once the last part is in.
    async fn receive_state(
        &mut self,
        view_id: ViewId,
        subgroup: u32,
        shard: u32,
        part: u32,
        last: bool,
        state: Bytes,
    ) -> Result<(), String> {
        if !self.logs(subgroup) {
            self.emit(AppEvent::StatePart {
                view_id,
                subgroup,
                shard,
                part,
                state,
                last,
            })
            .await;
            return Ok(());
        }
        if part == 0 {
            // A new transfer; one that broke off with its view is dropped (the new one
            // begins the state again and cuts the log again).
            self.incoming.retain(|i| i.subgroup != subgroup);
            self.incoming.push(IncomingState {
                view_id,
                subgroup,
                reader: StateReader::new(self.record_bytes_max),
                app_began: false,
                app: BytesMut::new(),
                logging: false,
            });
        }
        let Some(i) = self
            .incoming
            .iter()
            .position(|i| i.subgroup == subgroup && i.view_id == view_id)
        else {
            return Err(format!("state part {part} of a transfer that never began"));
        };
        let keeps_state = self.keeps_state;
        let incoming = &mut self.incoming[i];
        incoming.reader.push(state);
        let header = incoming.reader.header().map_err(|e| e.to_string())?;
        let (app, app_ended) = incoming.reader.app_bytes();
        let records = incoming.reader.records().map_err(|e| e.to_string())?;
        let begin = !app.is_empty() && !incoming.app_began;
        incoming.app_began |= !app.is_empty();
        let app = if keeps_state {
            app
        } else {
            app.iter().for_each(|b| incoming.app.extend_from_slice(b));
            Vec::new()
        };
        // Once the state is whole (and kept), the log is cut to the base, once.
        let keep = match header {
            Some(header) if app_ended && !incoming.logging => {
                incoming.logging = true;
                Some(header.base.map(Version))
            }
            _ => None,
        };
        let state = StateBytes {
            begin,
            bytes: app,
            end: keep.is_some() && incoming.app_began && keeps_state,
        };
        let logging = incoming.logging;
        let key = ShardKey { subgroup, shard };
        if let Some(base) = keep {
            self.note_log_cut(key, base);
        }
        if !last {
            if keep.is_some() || !records.is_empty() || !state.bytes.is_empty() {
                self.queue_log_work(LogWork::StateRecords {
                    key,
                    state,
                    keep,
                    records,
                    logging,
                    taken: Some((view_id, part)),
                    reply: None,
                });
            } else {
                self.core.state_part_applied(view_id, subgroup, part);
            }
            return Ok(());
        }
        let mut incoming = self.incoming.swap_remove(i);
        let header = incoming.reader.finish().map_err(|e| e.to_string())?;
        let (reply, whole) = oneshot::channel();
        self.queue_log_work(LogWork::StateRecords {
            key,
            state,
            keep,
            records,
            logging,
            taken: None,
            reply: Some(reply),
        });
        let log = match whole.await {
            Ok(Ok(last_version)) => {
                self.core
                    .state_logged(subgroup, shard, last_version.map(Version));
                LoggedHistory {
                    last_version,
                    kept_through: self.log_cuts.remove(&key).unwrap_or(header.base),
                }
            }
            // The log thread reports its failure (the node then leaves).
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        let state = match (incoming.app_began, keeps_state) {
            (false, _) => TransferredState::Empty,
            (true, true) => TransferredState::Kept,
            (true, false) => TransferredState::Bytes(incoming.app.freeze()),
        };
        self.emit(AppEvent::StateReceived {
            view_id,
            subgroup,
            shard,
            state,
            log,
        })
        .await;
        Ok(())
    }

    async fn report_arrivals(&mut self, from: MemberId, msg: &Wire) {
        let Wire::Update { view_id, data, .. } = msg else {
            return;
        };
        for run in data {
            let count = run.items.iter().map(squall_platform::Item::slots).sum();
            self.emit(AppEvent::Arrived {
                from,
                view_id: *view_id,
                subgroup: run.subgroup,
                first_index: run.first_index,
                count,
            })
            .await;
        }
    }

    async fn emit(&mut self, event: AppEvent) {
        self.emit_at(wall_clock_us(), event).await;
    }

    /// Waits while the application is behind (backpressure up to the core's inputs).
    /// The application may read the log on hearing of a delivery (`read_log_chunk`
    /// reads after the log work queued before it), so while this step holds appends
    /// back for the log thread, its events wait with them: [`Driver::flush_log_and_events`]
    /// sends the appends first.
    async fn emit_at(&mut self, at_us: u64, event: AppEvent) {
        let event = NodeEvent { at_us, event };
        if self.log_batch.is_empty() && self.held_events.is_empty() {
            let _ = self.events.send(event).await;
        } else {
            self.held_events.push(event);
        }
    }

    /// Sends the step's appends and syncs to the log thread, then the events held back
    /// behind them.
    async fn flush_log_and_events(&mut self) {
        self.flush_log_batch();
        for event in std::mem::take(&mut self.held_events) {
            let _ = self.events.send(event).await;
        }
    }

    fn hlc_us(&mut self) -> u64 {
        self.last_hlc_us = wall_clock_us().max(self.last_hlc_us + 1);
        self.last_hlc_us
    }

    /// `key`'s log is cut after `kept` (`None`: whole); see `log_cuts`.
    fn note_log_cut(&mut self, key: ShardKey, kept: Option<Version>) {
        let cut = kept.map(|v| v.0);
        let floor = self.log_cuts.entry(key).or_insert(cut);
        *floor = (*floor).min(cut);
    }

    /// Deliveries of `subgroup` go to the log.
    fn logs(&self, subgroup: u32) -> bool {
        self.log.is_some() && !self.unlogged.contains(&subgroup)
    }

    fn queue_log_work(&mut self, work: LogWork) {
        if self.log.is_none() {
            return;
        }
        if matches!(work, LogWork::Append(..) | LogWork::Sync { .. }) {
            self.log_batch.push(work);
            if self.log_batch.len() >= LOG_BATCH_MAX {
                self.flush_log_batch();
            }
            return;
        }
        self.flush_log_batch();
        self.send_log_work(work);
    }

    /// Sends this step's appends and syncs to the log thread.
    fn flush_log_batch(&mut self) {
        match self.log_batch.len() {
            0 => {}
            1 => {
                let work = self.log_batch.pop().expect("one item");
                self.send_log_work(work);
            }
            _ => {
                let batch = std::mem::take(&mut self.log_batch);
                self.send_log_work(LogWork::Batch(batch));
            }
        }
    }

    fn send_log_work(&mut self, work: LogWork) {
        let Some(log) = &self.log else { return };
        if log.send(work).is_err() {
            self.feedback.push_back(self.log_ended());
        }
    }

    /// The log thread is gone: why, as it said before ending.
    fn log_ended(&self) -> LogDone {
        LogDone::Failed(
            self.log_failure
                .get()
                .cloned()
                .unwrap_or_else(|| "the log thread ended".to_string()),
        )
    }

    /// Executes one command of the core; returns the stop reason when the core stopped.
    async fn execute(&mut self, output: Output) -> Option<StopReason> {
        match output {
            Output::Send {
                to,
                incarnation,
                msg,
            } => self.transport.send(to, incarnation, msg),
            Output::Deliver(delivery) => {
                if let Some(version) = delivery.version
                    && self.logs(delivery.subgroup)
                {
                    let key = ShardKey {
                        subgroup: delivery.subgroup,
                        shard: delivery.shard,
                    };
                    let record = Record {
                        version: version.0,
                        hlc_us: self.hlc_us(),
                        payload: delivery.payload.clone(),
                    };
                    self.queue_log_work(LogWork::Append(key, record));
                }
                let delivered = delivery.version.map(|v| (delivery.subgroup, v));
                self.emit(AppEvent::Delivered(delivery)).await;
                if let Some((subgroup, version)) = delivered {
                    self.release_reads(|w| w.subgroup == subgroup && w.after <= version)
                        .await;
                }
            }
            Output::Persist { subgroup, version } => {
                if self.logs(subgroup) {
                    self.queue_log_work(LogWork::Sync { subgroup, version });
                } else {
                    self.feedback
                        .push_back(LogDone::Persisted { subgroup, version });
                }
            }
            Output::PersistTrim {
                view_id,
                subgroup,
                shard,
                trim,
            } => {
                let done = LogDone::TrimLogged {
                    view_id,
                    subgroup,
                    ballot: trim.ballot,
                    received: trim.received.clone(),
                };
                if self.log.is_some() {
                    let mut bytes = BytesMut::new();
                    encode_trim(&mut bytes, view_id, subgroup, shard, &trim.received);
                    self.queue_log_work(LogWork::Meta {
                        kind: META_TRIM,
                        bytes: bytes.freeze(),
                        then: Some(done),
                    });
                } else {
                    self.feedback.push_back(done);
                }
            }
            Output::LogPromise { ballot } => {
                info!(
                    leader = %ballot.leader,
                    attempt = squall_platform::restart::restart_attempt(ballot),
                    "promising a restart leader's ballot"
                );
                let done = LogDone::PromiseLogged { ballot };
                if self.log.is_some() {
                    let mut bytes = BytesMut::new();
                    encode_ballot(&mut bytes, ballot);
                    self.queue_log_work(LogWork::Meta {
                        kind: META_PROMISE,
                        bytes: bytes.freeze(),
                        then: Some(done),
                    });
                } else {
                    self.feedback.push_back(done);
                }
            }
            Output::LogAck {
                view_id,
                ballot,
                next,
            } => {
                let done = LogDone::AckLogged { view_id, ballot };
                if self.log.is_some() {
                    let mut bytes = BytesMut::new();
                    encode_ballot(&mut bytes, ballot);
                    codec::encode(&Wire::Welcome { view: next }, &mut bytes);
                    self.queue_log_work(LogWork::Meta {
                        kind: META_ACK,
                        bytes: bytes.freeze(),
                        then: Some(done),
                    });
                } else {
                    self.feedback.push_back(done);
                }
            }
            Output::Trimmed {
                view_id,
                subgroup,
                shard,
                received,
            } => {
                self.emit(AppEvent::Trimmed {
                    view_id,
                    subgroup,
                    shard,
                    received,
                })
                .await;
            }
            Output::GlobalPersisted { subgroup, version } => {
                self.emit(AppEvent::GlobalPersisted { subgroup, version })
                    .await;
            }
            Output::ReadReady {
                ticket,
                result,
                leased,
                ..
            } => {
                // Asked by this driver; the core answers each ticket once.
                let (subgroup, token) = self.reads_asked.remove(&ticket)?;
                match result {
                    Ok(Some(after)) => self.read_waits.push(ReadWait {
                        subgroup,
                        after,
                        token,
                        leased,
                    }),
                    Ok(None) => {
                        self.emit(AppEvent::ReadReady {
                            token,
                            result: Ok(()),
                            leased,
                        })
                        .await;
                    }
                    Err(e) => {
                        self.emit(AppEvent::ReadReady {
                            token,
                            result: Err(e),
                            leased,
                        })
                        .await;
                    }
                }
            }
            Output::InstallView(view) => {
                self.view_span = info_span!(parent: &self.node_span, "view", view = view.id);
                info!(view = view.id, members = ?view.members, "installed");
                for gone in view.failed.iter().chain(&view.left) {
                    self.transport.forget(*gone);
                }
                if self.log.is_some() {
                    let mut bytes = BytesMut::new();
                    codec::encode(
                        &Wire::Welcome {
                            view: Arc::clone(&view),
                        },
                        &mut bytes,
                    );
                    self.queue_log_work(LogWork::Meta {
                        kind: META_VIEW,
                        bytes: bytes.freeze(),
                        then: None,
                    });
                }
                let view_id = view.id;
                self.emit(AppEvent::Installed(view)).await;
                // The new view's state holds everything any member delivered in older
                // views; what the trim dropped was never completed.
                self.release_reads(|w| w.after.view_id() < view_id).await;
            }
            Output::StateTransferRequest {
                view_id,
                subgroup,
                shard,
                joiners_hold,
                ..
            } => {
                // The log's tail is read first: whether the joiners' logs continue
                // into it decides whether they need the application's state.
                let mut needs_state = true;
                if self.logs(subgroup) {
                    let (reply, records) = oneshot::channel();
                    let key = ShardKey { subgroup, shard };
                    self.queue_log_work(LogWork::ReadTail {
                        key,
                        after: joiners_hold,
                        payload_bytes_max: self.state_chunk_bytes,
                        reply,
                    });
                    let tail = match records.await {
                        Ok(Ok(tail)) => tail,
                        Ok(Err(reason)) => {
                            self.feedback.push_back(LogDone::Failed(reason));
                            return None;
                        }
                        Err(_) => {
                            self.feedback.push_back(self.log_ended());
                            return None;
                        }
                    };
                    needs_state = tail.base.is_none();
                    self.tails.retain(|t| t.subgroup != subgroup);
                    self.tails.push(ReadTail {
                        view_id,
                        subgroup,
                        key,
                        tail,
                    });
                }
                self.emit(AppEvent::StateRequested {
                    view_id,
                    subgroup,
                    shard,
                    needs_state,
                })
                .await;
            }
            Output::StateSupplyMore {
                view_id, subgroup, ..
            } => self.supply_more(view_id, subgroup).await,
            Output::ReceiveState {
                view_id,
                subgroup,
                shard,
                part,
                last,
                state,
            } => {
                if let Err(e) = self
                    .receive_state(view_id, subgroup, shard, part, last, state)
                    .await
                {
                    // The source broke the protocol; without the state this node
                    // cannot serve the shard.
                    warn!(error = %e, "malformed state transfer; leaving the group");
                    self.core.storage_failed();
                } else if last && self.log.is_some() {
                    // Queued after the state's own log work: durable only once it is.
                    let mut bytes = BytesMut::new();
                    encode_fed(
                        &mut bytes,
                        ShardFed {
                            view_id,
                            subgroup,
                            shard,
                        },
                    );
                    self.queue_log_work(LogWork::Meta {
                        kind: META_FED,
                        bytes: bytes.freeze(),
                        then: None,
                    });
                }
            }
            Output::Restart(plan) => {
                info!(
                    view = plan.view.id,
                    members = ?plan.view.members,
                    leader = %plan.ballot.leader,
                    "restarting the group"
                );
                let me = self.core.me();
                for (g, shards) in plan.shards.iter().enumerate() {
                    if !self.logs(g as u32) {
                        continue;
                    }
                    if let Some(s) = plan.view.shard_of(g, me) {
                        let key = ShardKey {
                            subgroup: g as u32,
                            shard: s as u32,
                        };
                        let after = shards[s].trim;
                        // A later transfer into this shard must not report the records
                        // cut here as kept.
                        self.note_log_cut(key, after);
                        self.queue_log_work(LogWork::Truncate { key, after });
                    }
                }
                self.emit(AppEvent::Restarting(plan)).await;
            }
            Output::SendsAborted { subgroup, tickets } => {
                self.emit(AppEvent::SendsAborted { subgroup, tickets })
                    .await;
            }
            Output::Stopped(reason) => return Some(reason),
        }
        None
    }
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn encode_fed(out: &mut BytesMut, fed: ShardFed) {
    use bytes::BufMut;
    out.put_u32_le(fed.view_id);
    out.put_u32_le(fed.subgroup);
    out.put_u32_le(fed.shard);
}

fn decode_fed(bytes: &[u8]) -> Option<ShardFed> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    Some(ShardFed {
        view_id: word(0)?,
        subgroup: word(4)?,
        shard: word(8)?,
    })
}

fn encode_ballot(out: &mut BytesMut, ballot: Ballot) {
    use bytes::BufMut;
    out.put_u64_le(ballot.round);
    out.put_u32_le(ballot.leader.node);
    out.put_u32_le(ballot.leader.incarnation);
}

/// The ballot at the start of a `META_ACK` record (where the view begins follows) or of a
/// `META_PROMISE` record.
fn decode_ballot(bytes: &[u8]) -> Option<(Ballot, usize)> {
    let word = |at: usize, len: usize| bytes.get(at..at + len);
    let round = u64::from_le_bytes(word(0, 8)?.try_into().ok()?);
    let node = u32::from_le_bytes(word(8, 4)?.try_into().ok()?);
    let incarnation = u32::from_le_bytes(word(12, 4)?.try_into().ok()?);
    Some((
        Ballot {
            round,
            leader: MemberId::new(node, incarnation),
        },
        16,
    ))
}

fn encode_trim(out: &mut BytesMut, view_id: ViewId, subgroup: u32, shard: u32, received: &[u64]) {
    use bytes::BufMut;
    out.put_u32_le(view_id);
    out.put_u32_le(subgroup);
    out.put_u32_le(shard);
    out.put_u32_le(received.len() as u32);
    for r in received {
        out.put_u64_le(*r);
    }
}

/// Hands a part's bytes of a transferred state to the state keeper.
fn keep_state(keeper: &dyn KeepState, key: ShardKey, state: &StateBytes) -> std::io::Result<()> {
    if state.begin {
        keeper.begin(key)?;
    }
    for bytes in &state.bytes {
        keeper.append(key, bytes)?;
    }
    if state.end {
        keeper.finish(key)?;
    }
    Ok(())
}

/// The log runs on its own thread (file I/O blocks). It applies work in order and
/// commits in groups: every sync request queued behind one fsync is answered by it.
fn spawn_log_thread(
    mut store: Box<dyn LogStore + Send>,
    keeper: Option<StateKeeper>,
    done: mpsc::Sender<LogDone>,
    failure: Arc<OnceLock<String>>,
) -> std::io::Result<std::sync::mpsc::SyncSender<LogWork>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<LogWork>(LOG_QUEUE_MAX);
    std::thread::Builder::new()
        .name("squall-log".to_string())
        .spawn(move || {
            let fail = |done: &mpsc::Sender<LogDone>, e: LogError| {
                let _ = failure.set(e.to_string());
                let _ = done.blocking_send(LogDone::Failed(e.to_string()));
            };
            let mut batch = Vec::new();
            let mut run: Vec<Record> = Vec::new();
            let take = |batch: &mut Vec<LogWork>, work: LogWork| match work {
                LogWork::Batch(works) => batch.extend(works),
                work => batch.push(work),
            };
            while let Ok(first) = rx.recv() {
                take(&mut batch, first);
                while let Ok(more) = rx.try_recv() {
                    take(&mut batch, more);
                }
                let mut synced: Vec<(u32, Version)> = Vec::new();
                let mut after_sync = Vec::new();
                let mut works = batch.drain(..).peekable();
                while let Some(work) = works.next() {
                    match work {
                        LogWork::Batch(_) => unreachable!("batches are flattened when taken"),
                        LogWork::Append(key, record) => {
                            // Appends in a row to one shard go in one write.
                            run.clear();
                            run.push(record);
                            while let Some(LogWork::Append(_, record)) =
                                works.next_if(|w| matches!(w, LogWork::Append(k, _) if *k == key))
                            {
                                run.push(record);
                            }
                            let appended = store.append_many(key, &run);
                            run.clear();
                            if let Err(e) = appended {
                                return fail(&done, e);
                            }
                        }
                        LogWork::Sync { subgroup, version } => {
                            match synced.iter_mut().find(|(g, _)| *g == subgroup) {
                                Some((_, v)) => *v = (*v).max(version),
                                None => synced.push((subgroup, version)),
                            }
                        }
                        LogWork::Meta { kind, bytes, then } => {
                            if let Err(e) = store.append_meta(kind, bytes) {
                                return fail(&done, e);
                            }
                            after_sync.extend(then);
                        }
                        LogWork::ReadRecord {
                            key,
                            version,
                            reply,
                        } => {
                            let record = store
                                .get(key, version)
                                .map(|r| r.map(|r| r.payload))
                                .map_err(|e| e.to_string());
                            let _ = reply.send(record);
                        }
                        LogWork::ReadTail {
                            key,
                            after,
                            payload_bytes_max,
                            reply,
                        } => {
                            let tail = after
                                .map_or(Ok(None), |v| {
                                    store.get(key, v.0).map(|held| held.map(|_| v.0))
                                })
                                .and_then(|base| {
                                    let from = base.map_or(0, |b| b + 1);
                                    Ok(Tail {
                                        base,
                                        records: store.range_bounded(
                                            key,
                                            from,
                                            u64::MAX,
                                            payload_bytes_max,
                                        )?,
                                        end: store.last_version(key),
                                    })
                                })
                                .map_err(|e| e.to_string());
                            let _ = reply.send(tail);
                        }
                        LogWork::ReadStateChunk {
                            key,
                            from,
                            to,
                            payload_bytes_max,
                            view_id,
                            subgroup,
                        } => match store.range_bounded(key, from, to, payload_bytes_max) {
                            Ok(records) => after_sync.push(LogDone::StateChunk {
                                view_id,
                                subgroup,
                                records,
                            }),
                            Err(e) => return fail(&done, e),
                        },
                        LogWork::StateRecords {
                            key,
                            state,
                            keep,
                            records,
                            logging,
                            taken,
                            reply,
                        } => {
                            if let Some(keeper) = &keeper
                                && let Err(e) = keep_state(&*keeper.0, key, &state)
                            {
                                let e = LogError::Io {
                                    path: format!(
                                        "the transferred state of subgroup {} shard {}",
                                        key.subgroup, key.shard
                                    )
                                    .into(),
                                    source: e,
                                };
                                if let Some(reply) = reply {
                                    let _ = reply.send(Err(e.to_string()));
                                }
                                return fail(&done, e);
                            }
                            let result = keep
                                .map_or(Ok(()), |keep| store.truncate_after(key, keep.map(|v| v.0)))
                                .and_then(|()| store.append_many(key, &records))
                                .and_then(|()| match reply {
                                    Some(_) => store.sync().map(drop),
                                    None => Ok(()),
                                });
                            if let Err(e) = result {
                                if let Some(reply) = reply {
                                    let _ = reply.send(Err(e.to_string()));
                                }
                                return fail(&done, e);
                            }
                            let logged = store.last_version(key);
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(logged));
                            }
                            after_sync.extend(taken.map(|(view_id, part)| {
                                LogDone::StatePartTaken {
                                    view_id,
                                    key,
                                    part,
                                    logged: logging.then_some(logged),
                                }
                            }));
                        }
                        LogWork::ReadChunk {
                            key,
                            from,
                            to,
                            payload_bytes_max,
                            reply,
                        } => {
                            let chunk = store
                                .range_bounded(key, from, to, payload_bytes_max)
                                .map_err(|e| e.to_string());
                            let _ = reply.send(chunk);
                        }
                        LogWork::Compact { key, before, reply } => {
                            // A failure here loses nothing (the segments stay): it is
                            // the caller's to report, not a reason to stop the node.
                            let compacted =
                                store.compact_before(key, before).map_err(|e| e.to_string());
                            let _ = reply.send(compacted);
                        }
                        LogWork::Truncate { key, after } => {
                            if let Err(e) = store.truncate_after(key, after.map(|v| v.0)) {
                                return fail(&done, e);
                            }
                        }
                    }
                }
                if !synced.is_empty()
                    && let Err(e) = store.sync()
                {
                    return fail(&done, e);
                }
                for (subgroup, version) in synced {
                    if done
                        .blocking_send(LogDone::Persisted { subgroup, version })
                        .is_err()
                    {
                        return;
                    }
                }
                for completion in after_sync {
                    if done.blocking_send(completion).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(tx)
}
