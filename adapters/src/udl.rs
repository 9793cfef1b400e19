//! The node's UDL runtime: the plugins and DFGs stored in the cluster (applied from the
//! metadata subgroup, identically at every node), one instance per DFG vertex using a
//! UDL, dispatch of arriving objects to them, and the hand-off of their outputs.
//!
//! Dispatch happens when an object is applied (hook `ordered`: a delivered put) or
//! received (hook `trigger`: a `trigger_put` to this node). Every vertex whose pathname
//! is an ancestor prefix of the object's key is matched (pathnames are normalised to end
//! in `/`, so `/a/b` covers `/a/b/c`, not `/a/bc`). Dispatcher `all` runs the
//! UDL on every replica of the shard; `one` on exactly one, the member at
//! `hash(key) % n` of the shard's current member list, which every replica computes
//! alike. Jobs go to the [`Engine`]'s bounded queues; the delivery path never waits.
//!
//! Outputs (`emit`) go to every destination of the vertex as `destination + key`, `put`
//! or `trigger_put`, with a message id derived from the input's, the UDL and the
//! destination: a re-run of the same input is applied at most once (within the
//! store's per-client retry memory).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use crate::wire::{CALL_OUTPUTS_MAX, CallOutput};
use bytes::Bytes;
use serde_json::json;
use squall_gpu::PinnedView;
use squall_kvs::MessageId;
use squall_platform::MemberId;
use squall_udl::{Input, Resources};
use squall_udl_host::dfg::{self, DestinationAction, Dfg, Dispatcher, Statefulness, VertexUdl};
use squall_udl_host::engine::{Engine, Job, Placement};
use squall_udl_host::plugin::{ContextClient, Instance, Invocation, Plugin};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Jobs held while the engine's queues are full; beyond this, writes to pools with
/// UDLs are refused until the workers catch up.
pub const OVERFLOW_MAX: usize = 65_536;

/// Marks message ids derived for UDL outputs (client ids of real clients and of the
/// node itself use other top bits).
const DERIVED_CLIENT_BIT: u64 = 1 << 62;

/// One output of a UDL, for the node's emitter to write.
#[derive(Debug)]
pub struct Emit {
    pub key: String,
    pub value: Bytes,
    pub trigger: bool,
    pub id: MessageId,
    /// A remote cluster's name: the output goes through this cluster's WAN outbox.
    pub site: Option<String>,
}

/// A UDL context's `get` or `put`, for the node's client-call task to run; the worker
/// waits on `reply`.
#[derive(Debug)]
pub enum ClientCall {
    Get {
        key: String,
        reply: oneshot::Sender<Result<Option<Bytes>, String>>,
    },
    Put {
        key: String,
        value: Bytes,
        id: MessageId,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The context's client for one invocation: its calls go to the node's client-call
/// task; its puts get ids derived from the input and their order in the invocation.
struct InvocationClient {
    calls: mpsc::Sender<ClientCall>,
    /// The derived client id of this invocation's puts.
    client: u64,
    input_seq: u64,
    puts: u64,
}

const STOPPING: &str = "the node is stopping";

impl ContextClient for InvocationClient {
    fn get(&mut self, key: &str) -> Result<Option<Bytes>, String> {
        let (reply, answer) = oneshot::channel();
        let call = ClientCall::Get {
            key: key.to_string(),
            reply,
        };
        self.calls
            .blocking_send(call)
            .map_err(|_| STOPPING.to_string())?;
        answer.blocking_recv().map_err(|_| STOPPING.to_string())?
    }

    fn put(&mut self, key: &str, value: Bytes) -> Result<(), String> {
        let id = MessageId {
            client: self.client,
            seq: self.input_seq.wrapping_mul(1 << 16).wrapping_add(self.puts),
        };
        self.puts += 1;
        let (reply, answer) = oneshot::channel();
        let call = ClientCall::Put {
            key: key.to_string(),
            value,
            id,
            reply,
        };
        self.calls
            .blocking_send(call)
            .map_err(|_| STOPPING.to_string())?;
        answer.blocking_recv().map_err(|_| STOPPING.to_string())?
    }
}

/// What the emitter receives, in order: outputs, and after all outputs of a `one` job,
/// its completion (reported back once those outputs are written).
#[derive(Debug)]
pub enum EmitItem {
    Output(Emit),
    Done(InputRef),
}

/// An input by its place: shard and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InputRef {
    pub subgroup: u32,
    pub shard: u32,
    pub version: u64,
}

/// What a call's UDL invocations emitted, or why it failed; handed to [`CallSink`]'s
/// answer once the last invocation let go of it.
pub type CallResult = Result<Vec<CallOutput>, CallFailure>;

/// Where a call's result goes (the service's reply to the caller).
type CallAnswer = Box<dyn FnOnce(CallResult) + Send>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// An invocation returned an error or panicked (its message).
    Udl(String),
    /// The outputs together exceed the limit (bytes, or [`CALL_OUTPUTS_MAX`] outputs).
    TooLarge { limit_bytes: usize },
    /// Invocations that were queued never ran (queues full, or the node stopping).
    NotRun { missing: usize, of: usize },
    /// No UDL on this node runs on a `trigger_put` of this key.
    NoUdl(String),
}

/// Collects what the UDLs triggered by one [`Request::Call`](crate::wire::Request::Call)
/// emit, and answers the call when the last invocation holding it lets go of it: when it
/// returned, or when it was dropped without running. Shared by the invocations' worker
/// threads, so the answer never waits for the service.
pub struct CallSink {
    state: std::sync::Mutex<CallState>,
    answer: std::sync::Mutex<Option<CallAnswer>>,
    /// The most output bytes one call collects (the node's object limit: the answer is
    /// one frame).
    limit_bytes: usize,
}

#[derive(Default)]
struct CallState {
    outputs: Vec<CallOutput>,
    bytes: usize,
    expected: usize,
    finished: usize,
    failure: Option<CallFailure>,
}

impl std::fmt::Debug for CallSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSink")
            .field("limit_bytes", &self.limit_bytes)
            .finish_non_exhaustive()
    }
}

impl CallSink {
    pub fn new(limit_bytes: usize, answer: impl FnOnce(CallResult) + Send + 'static) -> Self {
        CallSink {
            state: std::sync::Mutex::new(CallState::default()),
            answer: std::sync::Mutex::new(Some(Box::new(answer))),
            limit_bytes,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, key: &str, jobs: usize) {
        let mut st = self.state();
        st.expected += jobs;
        if st.expected == 0 && st.failure.is_none() {
            st.failure = Some(CallFailure::NoUdl(key.to_string()));
        }
    }

    /// An output emitted by one of the call's invocations (its bytes are shared, not
    /// copied).
    fn record(&self, key: &str, value: &Bytes) {
        let mut st = self.state();
        if st.failure.is_some() {
            return;
        }
        let bytes = st.bytes.saturating_add(key.len() + value.len());
        if bytes > self.limit_bytes || st.outputs.len() >= CALL_OUTPUTS_MAX {
            st.outputs = Vec::new();
            st.failure = Some(CallFailure::TooLarge {
                limit_bytes: self.limit_bytes,
            });
            return;
        }
        st.bytes = bytes;
        st.outputs.push(CallOutput {
            key: key.to_string(),
            blob: value.clone(),
        });
    }

    /// One invocation returned; `error`: how it failed.
    fn finished(&self, error: Option<&str>) {
        let mut st = self.state();
        st.finished += 1;
        if let Some(e) = error
            && st.failure.is_none()
        {
            st.outputs = Vec::new();
            st.failure = Some(CallFailure::Udl(e.to_string()));
        }
    }
}

impl Drop for CallSink {
    fn drop(&mut self) {
        let st = std::mem::take(self.state.get_mut().unwrap_or_else(|p| p.into_inner()));
        let result = match st.failure {
            Some(failure) => Err(failure),
            None if st.finished < st.expected => Err(CallFailure::NotRun {
                missing: st.expected - st.finished,
                of: st.expected,
            }),
            None => Ok(st.outputs),
        };
        if let Some(answer) = self
            .answer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            answer(result);
        }
    }
}

/// A `one`-dispatched input another replica runs, kept until it says it is done (and
/// re-run here if it fails first and this node is the new choice).
#[derive(Debug)]
struct PendingInput {
    assignee: MemberId,
    key: String,
    timestamp_us: u64,
    previous_version: Option<u64>,
    previous_version_by_key: Option<u64>,
    id: MessageId,
    blob: Bytes,
    sender: u32,
    /// The shard's members at delivery (see [`Arrived::holders`]).
    holders: Option<Arc<[MemberId]>>,
    /// Held because a log replay found it unfinished, not because it arrived live: run
    /// again if the view this node starts in is a total restart's (every assignee of
    /// the last life is gone), forgotten if it joins a live group (whose members hold it).
    replayed: bool,
}

/// Inputs held for other replicas, over all shards; beyond it the oldest are forgotten
/// (logged: a failure of their replica would then lose them).
pub const PENDING_INPUTS_MAX: usize = 65_536;

/// How an object reached this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A put delivered in its shard's order.
    Ordered,
    /// A `trigger_put` received by this node (not stored).
    Trigger,
}

/// What a re-run input's GPU-cached copy is looked up with: (key, version) → the pinned
/// copy, if cached, and the GPU of the key's pool cache, if on one.
pub type DeviceLookup<'a> = &'a dyn Fn(&str, u64) -> (Option<PinnedView>, Option<u32>);

/// An arrived object, as dispatch needs it.
#[derive(Debug)]
pub struct Arrived<'a> {
    pub subgroup: u32,
    pub shard: u32,
    pub key: &'a str,
    pub version: u64,
    pub timestamp_us: u64,
    pub previous_version: Option<u64>,
    pub previous_version_by_key: Option<u64>,
    pub id: MessageId,
    pub blob: &'a Bytes,
    pub sender: u32,
    pub arrival: Arrival,
    /// Ordered arrivals: the one replica that runs `one`-dispatched UDLs for this key
    /// (the shard member at `hash(key) % n`).
    pub assignee: Option<MemberId>,
    /// Ordered arrivals: the shard's members when the object was delivered. All of them
    /// but the assignee hold it for a re-run; one that joins the shard later never
    /// received it, so a new assignee is picked among these ([`reassigned`]).
    pub holders: Option<Arc<[MemberId]>>,
    /// The object's copy in its pool's GPU cache (host memory where there is no GPU),
    /// pinned: each job holds a pin of its own until its handler returns, and the UDL
    /// gets it as `Input::device`. `None` when the pool is not GPU-cached or the object
    /// is not cached (refused, evicted, or a re-run after a failover that missed).
    pub device: Option<PinnedView>,
    /// The GPU the pool's cache is on (none without a GPU): granted as
    /// `Resources::gpus` to vertices whose UDL config asks `"resources": {"gpu": 1}`.
    pub pool_gpu: Option<u32>,
}

impl<'a> Arrived<'a> {
    /// A delivered put as the shard store holds it (`object`, the key's latest), with
    /// no GPU copy.
    pub fn ordered(
        subgroup: u32,
        shard: u32,
        object: &'a squall_kvs::Object,
        sender: u32,
        assignee: Option<MemberId>,
        holders: Option<Arc<[MemberId]>>,
    ) -> Self {
        Arrived {
            subgroup,
            shard,
            key: &object.key,
            version: object.version.0,
            timestamp_us: object.timestamp_us,
            previous_version: object.previous_version.map(|v| v.0),
            previous_version_by_key: object.previous_key_version.map(|v| v.0),
            id: object.message_id,
            blob: &object.blob,
            sender,
            arrival: Arrival::Ordered,
            assignee,
            holders,
            device: None,
            pool_gpu: None,
        }
    }
}

#[derive(Debug)]
struct StoredUdl {
    name: String,
    checksum: u64,
    /// `Err`: why this node could not load it (every node reports it the same way
    /// unless its disk failed).
    plugin: Result<Plugin, String>,
    /// A Python UDL: the host's configuration keys (`python_path`, `module`,
    /// `entry_class`) added to each vertex's configuration of it.
    python: Option<serde_json::Map<String, serde_json::Value>>,
    /// The bytes uploaded, which a checkpoint of the metadata carries (its log, which
    /// held them, is dropped after one).
    upload: Bytes,
}

/// How an uploaded Python UDL begins: this line, a JSON [`PythonManifest`] line, then
/// the module's source (`format: "py"`) or a zip of a package (`"zip"`).
pub const PYTHON_BUNDLE_MAGIC: &[u8] = b"SQUALL-PYUDL/1\n";

/// What a Python UDL upload says about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonManifest {
    pub uuid: String,
    /// The module to import (dotted, for a module inside a zipped package).
    pub module: String,
    pub entry_class: String,
    /// `"py"` (one module file) or `"zip"` (a zip on `sys.path`).
    pub format: String,
    #[serde(default)]
    pub description: String,
}

/// The UUID a Python UDL gets unless its uploader names one: derived from its module and
/// class, so uploading a new version of the same class replaces the old one.
pub fn python_udl_uuid(module: &str, entry_class: &str) -> String {
    let h =
        xxhash_rust::xxh3::xxh3_128(format!("squall-python-udl:{module}:{entry_class}").as_bytes());
    let hex = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Packs a Python UDL for upload.
pub fn python_bundle(manifest: &PythonManifest, payload: &[u8]) -> Vec<u8> {
    let mut out = PYTHON_BUNDLE_MAGIC.to_vec();
    out.extend_from_slice(&serde_json::to_vec(manifest).unwrap_or_default());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `Ok(None)`: not a Python bundle. `Err`: a Python bundle that is malformed.
pub fn parse_python_bundle(bytes: &[u8]) -> Result<Option<(PythonManifest, &[u8])>, String> {
    let Some(rest) = bytes.strip_prefix(PYTHON_BUNDLE_MAGIC) else {
        return Ok(None);
    };
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("a Python UDL upload without its manifest line")?;
    let manifest: PythonManifest = serde_json::from_slice(&rest[..end])
        .map_err(|e| format!("a Python UDL manifest that does not parse: {e}"))?;
    if !squall_udl_host::plugin::is_uuid(&manifest.uuid) {
        return Err(format!(
            "the Python UDL's uuid {:?} is not 8-4-4-4-12 hex digits",
            manifest.uuid
        ));
    }
    if !is_dotted_identifier(&manifest.module) {
        return Err(format!(
            "module {:?} is not a Python module name",
            manifest.module
        ));
    }
    if !is_dotted_identifier(&manifest.entry_class) || manifest.entry_class.contains('.') {
        return Err(format!(
            "entry class {:?} is not a Python class name",
            manifest.entry_class
        ));
    }
    if manifest.format != "py" && manifest.format != "zip" {
        return Err(format!(
            "format {:?}: expected \"py\" or \"zip\"",
            manifest.format
        ));
    }
    Ok(Some((manifest, &rest[end + 1..])))
}

/// A vertex's use of one UDL.
#[derive(Debug)]
struct Handler {
    dfg: String,
    /// Since when (µs, the clock of the metadata log's records) its DFG has run here.
    since_us: u64,
    pathname: String,
    udl: VertexUdl,
    instance: Option<Arc<Instance>>,
    /// The UDL config asks for a GPU (`"resources": {"gpu": N}`, N ≥ 1).
    wants_gpu: bool,
}

/// Whether a vertex's UDL config asks for a GPU: `"resources": {"gpu": N}` with N ≥ 1.
/// A hint only: the node grants the GPU the input's pool is cached on, if any (see
/// [`Arrived::pool_gpu`]); it neither moves work to a node with a GPU nor reserves one.
pub fn wants_gpu(config: &serde_json::Value) -> bool {
    config
        .get("resources")
        .and_then(|resources| resources.get("gpu"))
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|gpus| gpus >= 1)
}

#[derive(Debug)]
pub struct UdlRuntime {
    me: MemberId,
    dir: PathBuf,
    udls: BTreeMap<String, StoredUdl>,
    dfgs: BTreeMap<String, Dfg>,
    /// Each DFG's JSON text as it was added (one DFG), for checkpoints of the metadata.
    dfg_sources: BTreeMap<String, String>,
    /// Since when each DFG has been in place (µs; `u64::MAX` when unknown): a log replay
    /// holds an unfinished input for a re-run only if its vertex was there when it arrived.
    dfg_since_us: BTreeMap<String, u64>,
    handlers: Vec<Handler>,
    engine: Arc<Engine>,
    emits: mpsc::Sender<EmitItem>,
    /// Where UDL contexts' `get` and `put` go; without it they fail.
    calls: Option<mpsc::Sender<ClientCall>>,
    overflow: VecDeque<Job>,
    resources: Arc<Resources>,
    /// This cluster's site: vertices pinned to another site are not run here.
    site: Option<String>,
    /// `one` inputs this node runs: per shard, jobs not done per input version.
    assigned: HashMap<(u32, u32), BTreeMap<u64, usize>>,
    /// Per shard: the newest input version this node was assigned.
    assigned_top: HashMap<(u32, u32), u64>,
    /// Per shard: the last `below` this node announced.
    announced: HashMap<(u32, u32), u64>,
    /// `one` inputs other replicas run, until they announce them done.
    pending: HashMap<(u32, u32), BTreeMap<u64, PendingInput>>,
    /// Takes outputs UDLs emit from GPU memory; without it `emit_device` fails.
    gpu: Option<crate::gpu::NodeGpu>,
}

/// The checksum a stored plugin carries: xxh3-64 of its bytes.
pub fn checksum(plugin: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(plugin)
}

/// Loads `plugin` from a scratch file in `dir` to check it, and returns its UUID and
/// description: what the node does before it accepts an upload.
pub fn inspect(dir: &std::path::Path, plugin: &[u8]) -> Result<(String, String), String> {
    if let Some((manifest, payload)) = parse_python_bundle(plugin)? {
        if manifest.format == "py" && std::str::from_utf8(payload).is_err() {
            return Err(format!("module {} is not UTF-8 text", manifest.module));
        }
        let description = if manifest.description.is_empty() {
            format!("Python UDL {}.{}", manifest.module, manifest.entry_class)
        } else {
            manifest.description.clone()
        };
        return Ok((manifest.uuid.to_ascii_lowercase(), description));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("inspect-{:016x}.so", checksum(plugin)));
    std::fs::write(&path, plugin).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let loaded = Plugin::load(&path).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&path);
    let loaded = loaded?;
    Ok((loaded.uuid.clone(), loaded.description.clone()))
}

/// The one replica of a shard that runs `one`-dispatched UDLs for `key`: the member at
/// `xxh3(key) % n` of the shard's member list. Every replica computes it alike, at
/// dispatch and again for a new view.
pub fn assignee_of(members: &[MemberId], key: &str) -> Option<MemberId> {
    if members.is_empty() {
        return None;
    }
    let at = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % members.len() as u64;
    Some(members[at as usize])
}

/// The new assignee of an input whose assignee left the shard: among the shard's
/// `members` that were members when it was delivered (`holders`: each of them holds it),
/// so it is never handed to a member that joined later and never received it; among
/// all `members` when none of those is left (a total restart's view, where every member
/// is new and every one replayed it from its log).
pub fn reassigned(
    members: &[MemberId],
    holders: Option<&[MemberId]>,
    key: &str,
) -> Option<MemberId> {
    if let Some(holders) = holders {
        let staying: Vec<MemberId> = members
            .iter()
            .filter(|m| holders.contains(m))
            .copied()
            .collect();
        if !staying.is_empty() {
            return assignee_of(&staying, key);
        }
    }
    assignee_of(members, key)
}

/// Who holds an input a replay held, in a total restart's view: the members on the
/// nodes that held it through the end of the last life (`holders`, shrunk view by view
/// by [`UdlRuntime::replayed_view`]). Only those nodes' replays hold it: a node that
/// missed a view since cannot tell who ran what then and forgets it; every node that
/// holds it computes the same set, having seen the same views. Its new assignee is
/// picked among them, and so is the next one if that one fails too.
pub fn restart_holders(
    members: &[MemberId],
    holders: Option<&[MemberId]>,
) -> Option<Arc<[MemberId]>> {
    holders.map(|old| {
        members
            .iter()
            .filter(|m| old.iter().any(|o| o.node == m.node))
            .copied()
            .collect()
    })
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(&(p.len() as u64).to_le_bytes());
        all.extend_from_slice(p);
    }
    xxhash_rust::xxh3::xxh3_64(&all)
}

impl UdlRuntime {
    /// Lets UDL contexts `get` and `put` through `calls` (served by the node).
    pub fn set_client_calls(&mut self, calls: mpsc::Sender<ClientCall>) {
        self.calls = Some(calls);
    }

    pub fn new(
        me: MemberId,
        dir: PathBuf,
        engine: Arc<Engine>,
        emits: mpsc::Sender<EmitItem>,
    ) -> Self {
        UdlRuntime {
            me,
            assigned: HashMap::new(),
            assigned_top: HashMap::new(),
            announced: HashMap::new(),
            pending: HashMap::new(),
            gpu: None,
            dir,
            udls: BTreeMap::new(),
            dfgs: BTreeMap::new(),
            dfg_sources: BTreeMap::new(),
            dfg_since_us: BTreeMap::new(),
            handlers: Vec::new(),
            engine,
            emits,
            calls: None,
            overflow: VecDeque::new(),
            site: None,
            resources: Arc::new(Resources {
                cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                gpus: Vec::new(),
            }),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// This cluster's site (`[site] name`): DFG vertices pinned to another site
    /// (`"site": "cloud"`) are skipped here.
    /// The node's GPU side, which takes outputs UDLs emit from GPU memory.
    pub fn set_gpu(&mut self, gpu: crate::gpu::NodeGpu) {
        self.gpu = Some(gpu);
    }

    pub fn set_site(&mut self, site: Option<String>) {
        self.site = site;
        self.rebuild();
    }

    pub fn has_udl(&self, uuid: &str) -> bool {
        self.udls.contains_key(uuid)
    }

    /// Whether any DFG vertex is in force: without one, arrivals need no UDL work.
    pub fn has_handlers(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// Whether some vertex's pathname is a prefix of `key` (its UDLs may run on it).
    pub fn handles(&self, key: &str) -> bool {
        self.handlers.iter().any(|h| key.starts_with(&h.pathname))
    }

    pub fn has_dfg(&self, id: &str) -> bool {
        self.dfgs.contains_key(id)
    }

    /// True while held jobs wait for room: new writes to pools with UDLs should wait.
    pub fn saturated(&self) -> bool {
        self.overflow.len() >= OVERFLOW_MAX
    }

    /// Stores a plugin (replacing one with the same UUID): every vertex using it gets a
    /// new instance; invocations in flight finish on the old one.
    pub fn put_udl(&mut self, uuid: &str, name: &str, sum: u64, plugin: &Bytes) {
        let mut python = None;
        let loaded = if checksum(plugin) != sum {
            Err(format!(
                "checksum mismatch: stored {sum:016x}, computed {:016x}",
                checksum(plugin)
            ))
        } else {
            match parse_python_bundle(plugin) {
                Ok(Some((manifest, payload))) => {
                    match self.unpack_python(uuid, sum, &manifest, payload) {
                        Ok(config) => {
                            python = Some(config);
                            squall_udl_host::python::host_plugin()
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok(None) => self.load(uuid, sum, plugin),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = &loaded {
            warn!(%uuid, error = %e, "cannot load a stored UDL");
        } else {
            info!(%uuid, %name, bytes = plugin.len(), "UDL stored and loaded");
        }
        self.udls.insert(
            uuid.to_string(),
            StoredUdl {
                name: name.to_string(),
                checksum: sum,
                plugin: loaded,
                python,
                upload: plugin.clone(),
            },
        );
        self.rebuild();
    }

    /// Writes a Python UDL's code where its interpreter will import it from (a new
    /// directory per version) and returns the host configuration that finds it.
    fn unpack_python(
        &self,
        uuid: &str,
        sum: u64,
        manifest: &PythonManifest,
        payload: &[u8],
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let dir = self.dir.join("python").join(format!("{uuid}-{sum:016x}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let top = manifest.module.split('.').next().unwrap_or_default();
        let (file, path_entry) = match manifest.format.as_str() {
            "zip" => {
                let f = dir.join(format!("{top}.zip"));
                (f.clone(), f)
            }
            _ => (dir.join(format!("{top}.py")), dir.clone()),
        };
        std::fs::write(&file, payload).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let mut config = serde_json::Map::new();
        config.insert("python_path".into(), json!([path_entry.to_string_lossy()]));
        config.insert("module".into(), json!(manifest.module));
        config.insert("entry_class".into(), json!(manifest.entry_class));
        Ok(config)
    }

    fn load(&self, uuid: &str, sum: u64, plugin: &Bytes) -> Result<Plugin, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        // A new file per version: a library in use is never overwritten.
        let path = self.dir.join(format!("{uuid}-{sum:016x}.so"));
        if !path.exists() {
            std::fs::write(&path, plugin)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        let loaded = Plugin::load(&path).map_err(|e| e.to_string())?;
        if loaded.uuid != uuid {
            return Err(format!(
                "the library exports UDL {}, not {uuid}",
                loaded.uuid
            ));
        }
        Ok(loaded)
    }

    pub fn remove_udl(&mut self, uuid: &str) {
        if self.udls.remove(uuid).is_some() {
            info!(%uuid, "UDL removed");
            self.rebuild();
        }
    }

    /// Adds the DFGs of a `dfgs.json` (already validated by the node that took the
    /// request; checked again here, identically everywhere), in place since `since_us`
    /// (µs; `u64::MAX` when unknown); a DFG added again keeps the time it was first added.
    pub fn add_dfgs(&mut self, json: &[u8], since_us: u64) -> Result<Vec<String>, String> {
        let text = std::str::from_utf8(json).map_err(|_| "the DFG text is not UTF-8")?;
        let dfgs = dfg::parse_dfgs(text).map_err(|e| e.to_string())?;
        let ids: Vec<String> = dfgs.iter().map(|d| d.id.clone()).collect();
        // The text of each DFG alone (it parsed, so it is an object or an array of them).
        let sources: Vec<String> = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(items)) => items.iter().map(|v| v.to_string()).collect(),
            Ok(one) => vec![one.to_string()],
            Err(e) => return Err(format!("the DFG text: {e}")),
        };
        if sources.len() != dfgs.len() {
            return Err(format!(
                "the DFG text holds {} items for {} DFGs",
                sources.len(),
                dfgs.len()
            ));
        }
        for (d, source) in dfgs.into_iter().zip(sources) {
            self.dfg_since_us.entry(d.id.clone()).or_insert(since_us);
            self.dfg_sources.insert(d.id.clone(), source);
            self.dfgs.insert(d.id.clone(), d);
        }
        info!(?ids, "DFGs added");
        self.rebuild();
        Ok(ids)
    }

    pub fn remove_dfg(&mut self, id: &str) -> bool {
        let removed = self.dfgs.remove(id).is_some();
        self.dfg_sources.remove(id);
        self.dfg_since_us.remove(id);
        if removed {
            info!(%id, "DFG removed");
            self.rebuild();
        }
        removed
    }

    /// The stored UDLs as uploaded, by UUID: `(uuid, name, checksum, bytes)`.
    pub fn uploads(&self) -> impl Iterator<Item = (&str, &str, u64, &Bytes)> {
        self.udls
            .iter()
            .map(|(uuid, u)| (uuid.as_str(), u.name.as_str(), u.checksum, &u.upload))
    }

    /// Each DFG's JSON text (one DFG, as [`UdlRuntime::add_dfgs`] takes it), by id.
    pub fn dfg_sources(&self) -> impl Iterator<Item = &str> {
        self.dfg_sources.values().map(String::as_str)
    }

    /// Forgets every UDL and DFG: the metadata is about to be rebuilt from a checkpoint.
    pub fn clear(&mut self) {
        if self.udls.is_empty() && self.dfgs.is_empty() {
            return;
        }
        self.udls.clear();
        self.dfgs.clear();
        self.dfg_sources.clear();
        self.dfg_since_us.clear();
        self.rebuild();
    }

    /// Remote sites the DFGs send outputs of inputs under `key` to.
    pub fn remote_sites(&self, key: &str) -> Vec<String> {
        let mut sites: Vec<String> = self
            .handlers
            .iter()
            .filter(|h| squall_kvs::key::contains(&h.pathname, key))
            .flat_map(|h| h.udl.destinations.iter())
            .filter_map(|d| d.site.clone())
            .collect();
        sites.sort();
        sites.dedup();
        sites
    }

    /// Whether this cluster runs `vertex` (it is pinned to no site, or to this one).
    fn runs_here(&self, vertex: &squall_udl_host::dfg::Vertex) -> bool {
        vertex.site.is_none() || vertex.site == self.site
    }

    /// Remote sites the vertices this cluster runs send to, that `known` does not name.
    pub fn unknown_sites(&self, dfgs: &[Dfg], known: impl Fn(&str) -> bool) -> Vec<String> {
        let mut unknown: Vec<String> = dfgs
            .iter()
            .flat_map(|d| d.vertices.iter())
            .filter(|v| self.runs_here(v))
            .flat_map(|v| v.udls.iter())
            .flat_map(|u| u.destinations.iter())
            .filter_map(|d| d.site.clone())
            .filter(|site| !known(site))
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }

    /// UDL UUIDs the vertices this cluster runs name that are not stored.
    pub fn unknown_udls(&self, dfgs: &[Dfg]) -> Vec<String> {
        let mut unknown: Vec<String> = dfgs
            .iter()
            .flat_map(|d| d.vertices.iter())
            .filter(|v| self.runs_here(v))
            .flat_map(|v| v.udls.iter())
            .filter(|u| {
                !self.udls.contains_key(&u.uuid)
                    && u.uuid != squall_udl_host::python::PYTHON_UDL_UUID
            })
            .map(|u| u.uuid.clone())
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }

    /// New instances for every vertex (their configuration or plugin may have changed).
    fn rebuild(&mut self) {
        let mut handlers = Vec::new();
        for dfg in self.dfgs.values() {
            for vertex in &dfg.vertices {
                if !self.runs_here(vertex) {
                    // Another site's part of the application.
                    continue;
                }
                for udl in &vertex.udls {
                    let stored = self.udls.get(&udl.uuid);
                    let plugin = match stored {
                        Some(u) => u.plugin.clone(),
                        // Cascade's Python UDL, named directly: its configuration says
                        // where the module is.
                        None if udl.uuid == squall_udl_host::python::PYTHON_UDL_UUID => {
                            squall_udl_host::python::host_plugin()
                        }
                        None => Err("not stored".to_string()),
                    };
                    let mut config = udl.config.clone();
                    if let (Some(extra), serde_json::Value::Object(map)) =
                        (stored.and_then(|u| u.python.as_ref()), &mut config)
                    {
                        for (k, v) in extra {
                            map.insert(k.clone(), v.clone());
                        }
                    } else if let Some(extra) = stored.and_then(|u| u.python.as_ref()) {
                        config = serde_json::Value::Object(extra.clone());
                    }
                    let instance = match &plugin {
                        Ok(plugin) => match plugin.instantiate(&config.to_string()) {
                            Ok(i) => Some(Arc::new(i)),
                            Err(e) => {
                                warn!(dfg = %dfg.id, vertex = %vertex.pathname, error = %e, "cannot instantiate a UDL");
                                None
                            }
                        },
                        _ => None,
                    };
                    handlers.push(Handler {
                        dfg: dfg.id.clone(),
                        since_us: self.dfg_since_us.get(&dfg.id).copied().unwrap_or(u64::MAX),
                        pathname: vertex.pathname.clone(),
                        udl: udl.clone(),
                        instance,
                        wants_gpu: wants_gpu(&udl.config),
                    });
                }
            }
        }
        if let Some(gpu) = &self.gpu {
            gpu.retain_models(|vertex, udl| {
                handlers
                    .iter()
                    .any(|h| h.pathname == vertex && h.udl.uuid == udl)
            });
        }
        self.handlers = handlers;
    }

    /// Runs every matching UDL for an arrived object (queued; never waits). For an
    /// ordered arrival, `one` UDLs run only at the assignee; the other replicas keep the
    /// input until the assignee announces it done, to re-run it if the assignee fails.
    pub fn dispatch(&mut self, a: &Arrived<'_>) {
        self.dispatch_to(a, None);
    }

    /// Dispatches a [`Request::Call`](crate::wire::Request::Call)'s input (a trigger
    /// arrival) with `sink` collecting what its UDLs emit; returns how many invocations
    /// were queued (0: nothing here runs on it, and `sink` is dropped unanswered for the
    /// caller to answer).
    pub fn call(&mut self, a: &Arrived<'_>, sink: &Arc<CallSink>) -> usize {
        debug_assert_eq!(a.arrival, Arrival::Trigger, "a call is a trigger arrival");
        self.dispatch_to(a, Some(sink))
    }

    fn dispatch_to(&mut self, a: &Arrived<'_>, call: Option<&Arc<CallSink>>) -> usize {
        self.drain_overflow();
        let ordered = a.arrival == Arrival::Ordered;
        let mine = !ordered || a.assignee == Some(self.me);
        let input = InputRef {
            subgroup: a.subgroup,
            shard: a.shard,
            version: a.version,
        };
        let mut one_matched = false;
        let mut one_jobs = 0usize;
        let mut jobs = Vec::new();
        for h in &self.handlers {
            if !a.key.starts_with(&h.pathname) {
                continue;
            }
            let fires = if ordered {
                h.udl.hook.fires_on_ordered()
            } else {
                h.udl.hook.fires_on_trigger()
            };
            if !fires {
                continue;
            }
            let one = ordered && h.udl.dispatcher == Dispatcher::One;
            one_matched |= one;
            if one && !mine {
                continue;
            }
            let Some(instance) = h.instance.clone() else {
                warn!(vertex = %h.pathname, udl = %h.udl.uuid, key = %a.key, "no loaded UDL for this vertex; input skipped");
                continue;
            };
            if one {
                one_jobs += 1;
            }
            jobs.push(self.job(h, instance, a, one.then_some(input), call.cloned()));
        }
        if one_matched && ordered {
            let key = (a.subgroup, a.shard);
            if mine {
                if one_jobs > 0 {
                    *self
                        .assigned
                        .entry(key)
                        .or_default()
                        .entry(a.version)
                        .or_default() += one_jobs;
                }
                let top = self.assigned_top.entry(key).or_default();
                *top = (*top).max(a.version);
            } else if let Some(assignee) = a.assignee {
                self.hold(key, a, assignee, false);
            }
        }
        let queued = jobs.len();
        if let Some(sink) = call {
            sink.expect(a.key, queued);
        }
        for job in jobs {
            self.submit(job);
        }
        queued
    }

    fn submit(&mut self, job: Job) {
        if let Err(full) = self.engine.try_submit(job) {
            if self.overflow.len() >= OVERFLOW_MAX {
                warn!(vertex = %full.0.vertex, udl = %full.0.udl, key = %full.0.key, "UDL queues and overflow full; input dropped");
            } else {
                self.overflow.push_back(full.0);
            }
        }
    }

    fn hold(&mut self, key: (u32, u32), a: &Arrived<'_>, assignee: MemberId, replayed: bool) {
        let held: usize = self.pending.values().map(BTreeMap::len).sum();
        if held >= PENDING_INPUTS_MAX
            && let Some(oldest) = self.pending.get_mut(&key).and_then(|p| p.pop_first())
        {
            warn!(
                version = oldest.0,
                "too many inputs held for other replicas; forgetting the oldest"
            );
        }
        self.pending.entry(key).or_default().insert(
            a.version,
            PendingInput {
                assignee,
                key: a.key.to_string(),
                timestamp_us: a.timestamp_us,
                previous_version: a.previous_version,
                previous_version_by_key: a.previous_version_by_key,
                id: a.id,
                blob: a.blob.clone(),
                sender: a.sender,
                holders: a.holders.clone(),
                replayed,
            },
        );
    }

    /// Whether a `one` UDL that runs on ordered arrivals covers `key`, with its DFG in
    /// place at `at_us`: a log replay holds such an input until its assignee announces
    /// it done ([`UdlRuntime::hold_replayed`]).
    pub fn runs_one_on(&self, key: &str, at_us: u64) -> bool {
        self.handlers.iter().any(|h| {
            key.starts_with(&h.pathname)
                && h.udl.hook.fires_on_ordered()
                && h.udl.dispatcher == Dispatcher::One
                && h.since_us <= at_us
        })
    }

    /// A `one` input found in a replayed log, with its assignee in the view it was
    /// delivered in: held as if it had arrived live at a replica other than the
    /// assignee, until the assignee's `UdlDone` (later in the log) covers it.
    pub fn hold_replayed(&mut self, a: &Arrived<'_>) {
        if let Some(assignee) = a.assignee {
            self.hold((a.subgroup, a.shard), a, assignee, true);
        }
    }

    /// The replay of a shard's log reached a view whose shard members are `members`:
    /// replayed inputs whose assignee is not among them moved to their new assignee
    /// then, as [`UdlRuntime::reassign`] did live. Their holders shrink to the members
    /// still there: a holder that left (even to come back as a new incarnation) missed
    /// views, so its own replay forgets the input (see [`restart_holders`]).
    pub fn replayed_view(&mut self, subgroup: u32, shard: u32, members: &[MemberId]) {
        let Some(held) = self.pending.get_mut(&(subgroup, shard)) else {
            return;
        };
        for p in held.values_mut() {
            if !p.replayed {
                continue;
            }
            if !members.contains(&p.assignee)
                && let Some(assignee) = reassigned(members, p.holders.as_deref(), &p.key)
            {
                p.assignee = assignee;
            }
            if let Some(holders) = &p.holders
                && holders.iter().any(|h| !members.contains(h))
            {
                p.holders = Some(
                    holders
                        .iter()
                        .filter(|h| members.contains(h))
                        .copied()
                        .collect(),
                );
            }
        }
    }

    /// Forgets the inputs held for shard `(subgroup, shard)`: its store is rebuilt from
    /// its log, which holds them again.
    pub fn forget_held(&mut self, subgroup: u32, shard: u32) {
        self.pending.remove(&(subgroup, shard));
    }

    /// Forgets the inputs a replay held for shard `(subgroup, shard)`: who ran them
    /// cannot be told (the log crosses views this node did not see), or the live
    /// members of the shard hold them (this node joined them).
    pub fn forget_replayed(&mut self, subgroup: u32, shard: u32) {
        if let Some(held) = self.pending.get_mut(&(subgroup, shard)) {
            held.retain(|_, p| !p.replayed);
        }
    }

    /// How many inputs a replay holds for shard `(subgroup, shard)`.
    pub fn replayed_held(&self, subgroup: u32, shard: u32) -> usize {
        self.pending
            .get(&(subgroup, shard))
            .map_or(0, |held| held.values().filter(|p| p.replayed).count())
    }

    /// A `one` job of this node ended and its outputs are written.
    pub fn job_done(&mut self, input: InputRef) {
        let key = (input.subgroup, input.shard);
        if let Some(versions) = self.assigned.get_mut(&key)
            && let Some(left) = versions.get_mut(&input.version)
        {
            *left = left.saturating_sub(1);
            if *left == 0 {
                versions.remove(&input.version);
            }
        }
    }

    /// Per shard, the `below` to announce now (everything assigned to this node below it
    /// is done), where it moved since the last announcement.
    pub fn announcements(&mut self) -> Vec<((u32, u32), u64)> {
        let mut out = Vec::new();
        for (key, top) in &self.assigned_top {
            let below = self
                .assigned
                .get(key)
                .and_then(|v| v.keys().next().copied())
                .unwrap_or(top + 1);
            let last = self.announced.entry(*key).or_default();
            if below > *last {
                *last = below;
                out.push((*key, below));
            }
        }
        out
    }

    /// `member` announced its `one` inputs below `below` in this shard done.
    pub fn done_by(&mut self, subgroup: u32, shard: u32, member: MemberId, below: u64) {
        if let Some(held) = self.pending.get_mut(&(subgroup, shard)) {
            held.retain(|version, p| !(p.assignee == member && *version < below));
        }
    }

    /// After a view change: inputs held for members that are gone go to the new
    /// assignee; those that are now this node's run here. Inputs a log replay held run
    /// again in a total restart's view (every member of it is new), except in shards
    /// for which `settling` holds (their state is still coming: they are reassigned once
    /// it is replayed); any other view means this node joined a live group, whose
    /// members hold them, so they are forgotten.
    pub fn reassign(
        &mut self,
        view: &squall_platform::View,
        device: DeviceLookup<'_>,
        settling: &dyn Fn(u32, u32) -> bool,
    ) {
        let restart = view.is_restart();
        let mut rerun = Vec::new();
        for (&(g, s), held) in &mut self.pending {
            if !restart {
                held.retain(|_, p| !p.replayed);
            } else if settling(g, s) {
                continue;
            }
            let Some(members) = view
                .shards
                .get(g as usize)
                .and_then(|sh| sh.get(s as usize))
                .map(|sv| &sv.members)
            else {
                continue;
            };
            if !members.contains(&self.me) {
                // Not a replica of it in this view: its members hold what they need.
                held.retain(|_, p| !p.replayed);
                continue;
            }
            let gone: Vec<u64> = held
                .iter()
                .filter(|(_, p)| !members.contains(&p.assignee))
                .map(|(v, _)| *v)
                .collect();
            for version in gone {
                let Some(mut p) = held.remove(&version) else {
                    continue;
                };
                if restart && p.replayed {
                    p.holders = restart_holders(members, p.holders.as_deref());
                }
                let Some(assignee) = reassigned(members, p.holders.as_deref(), &p.key) else {
                    held.insert(version, p);
                    continue;
                };
                p.assignee = assignee;
                if p.assignee == self.me {
                    rerun.push((g, s, version, p));
                } else {
                    p.replayed = false;
                    held.insert(version, p);
                }
            }
        }
        for (g, s, version, p) in rerun {
            if p.replayed {
                info!(subgroup = g, shard = s, version, key = %p.key, "re-running a UDL input left unfinished before the total restart");
            } else {
                info!(subgroup = g, shard = s, version, key = %p.key, "re-running a UDL input whose replica failed");
            }
            let (device, pool_gpu) = device(&p.key, version);
            self.dispatch(&Arrived {
                subgroup: g,
                shard: s,
                key: &p.key,
                version,
                timestamp_us: p.timestamp_us,
                previous_version: p.previous_version,
                previous_version_by_key: p.previous_version_by_key,
                id: p.id,
                blob: &p.blob,
                sender: p.sender,
                arrival: Arrival::Ordered,
                assignee: Some(self.me),
                holders: p.holders.clone(),
                device,
                pool_gpu,
            });
        }
    }

    /// Moves held jobs into the engine while it has room.
    pub fn drain_overflow(&mut self) {
        while let Some(job) = self.overflow.pop_front() {
            if let Err(full) = self.engine.try_submit(job) {
                self.overflow.push_front(full.0);
                return;
            }
        }
    }

    pub fn overflow_len(&self) -> usize {
        self.overflow.len()
    }

    fn job(
        &self,
        h: &Handler,
        instance: Arc<Instance>,
        a: &Arrived<'_>,
        done: Option<InputRef>,
        call: Option<Arc<CallSink>>,
    ) -> Job {
        let placement = match h.udl.statefulness {
            Statefulness::Stateful => Placement::Stateful,
            Statefulness::Stateless => Placement::Stateless,
            Statefulness::SingleThreaded => Placement::SingleThreaded,
        };
        let key = a.key.to_string();
        let pathname = h.pathname.clone();
        let (version, timestamp_us, sender, id) = (a.version, a.timestamp_us, a.sender, a.id);
        let (previous_version, previous_version_by_key) =
            (a.previous_version, a.previous_version_by_key);
        let blob = a.blob.clone();
        let destinations: Vec<(Option<String>, String, bool)> = h
            .udl
            .destinations
            .iter()
            .map(|d| {
                let trigger = d.action == DestinationAction::TriggerPut;
                (d.site.clone(), d.pool.clone(), trigger)
            })
            .collect();
        let emits = self.emits.clone();
        let done_emits = self.emits.clone();
        let gpu = self.gpu.clone();
        let calls = self.calls.clone();
        if let (true, Some(_), Some(gpu)) = (h.wants_gpu, &a.device, &self.gpu) {
            gpu.note_model_run(&h.pathname, &h.udl.uuid, a.pool_gpu);
        }
        let resources = match (h.wants_gpu, a.pool_gpu) {
            (true, Some(gpu)) => Arc::new(Resources {
                cpu_cores: self.resources.cpu_cores,
                gpus: vec![gpu],
            }),
            _ => Arc::clone(&self.resources),
        };
        // A pin of this job's own, held until its handler returns.
        let device_pin = a.device.clone();
        let udl_uuid = h.udl.uuid.clone();
        let vertex_key = format!("{}{}", h.dfg, h.pathname);
        Job {
            vertex: h.pathname.clone(),
            udl: h.udl.uuid.clone(),
            placement,
            key: key.clone(),
            run: Box::new(move |worker_id| {
                let input = Input {
                    pathname: &pathname,
                    key: &key,
                    version,
                    timestamp_us,
                    previous_version,
                    previous_version_by_key,
                    message_id: squall_udl::MessageId {
                        client: id.client,
                        seq: id.seq,
                    },
                    sender,
                    blob,
                    device: device_pin
                        .as_ref()
                        .map(|pinned| crate::gpu::dlpack_view(pinned.view())),
                };
                let mut client = calls.map(|calls| InvocationClient {
                    calls,
                    client: DERIVED_CLIENT_BIT
                        | (hash64(&[
                            &id.client.to_le_bytes(),
                            udl_uuid.as_bytes(),
                            vertex_key.as_bytes(),
                            b"context put",
                        ]) >> 2),
                    input_seq: id.seq,
                    puts: 0,
                });
                let mut emitted: u64 = 0;
                let emit = |out_key: &str, value: Bytes| -> Result<(), String> {
                    if let Some(call) = &call {
                        call.record(out_key, &value);
                    }
                    for (d, (site, pool, trigger)) in destinations.iter().enumerate() {
                        // Derived from the input, the vertex, the destination and the
                        // output's place: the same on a re-run, distinct otherwise.
                        let client = DERIVED_CLIENT_BIT
                            | (hash64(&[
                                &id.client.to_le_bytes(),
                                udl_uuid.as_bytes(),
                                vertex_key.as_bytes(),
                                site.as_deref().unwrap_or("").as_bytes(),
                                pool.as_bytes(),
                            ]) >> 2);
                        let seq = id.seq.wrapping_mul(1 << 16).wrapping_add(emitted);
                        let out = Emit {
                            key: format!("{pool}{}", out_key.trim_start_matches('/')),
                            value: value.clone(),
                            trigger: *trigger,
                            id: MessageId { client, seq },
                            site: site.clone(),
                        };
                        emits
                            .blocking_send(EmitItem::Output(out))
                            .map_err(|_| "the node is stopping".to_string())?;
                        let _ = d;
                    }
                    emitted += 1;
                    Ok(())
                };
                // An output in GPU memory: read to host once, and copied on the GPU into
                // the destinations cached there, before it goes out like any other.
                let output_keys = |out_key: &str| -> Vec<String> {
                    destinations
                        .iter()
                        .filter(|(site, _, _)| site.is_none())
                        .map(|(_, pool, _)| format!("{pool}{}", out_key.trim_start_matches('/')))
                        .collect()
                };
                // Both ways out write through one `emit` (the handler calls one at a time).
                let emit = std::cell::RefCell::new(emit);
                let mut emit_host =
                    |out_key: &str, value: Bytes| (emit.borrow_mut())(out_key, value);
                let mut emit_device = |out_key: &str, view: &squall_udl::DeviceView| {
                    let gpu = gpu
                        .as_ref()
                        .ok_or("this node takes no outputs in GPU memory")?;
                    let host = gpu.take_output(view, &output_keys(out_key))?;
                    (emit.borrow_mut())(out_key, host)
                };
                let result = instance
                    .invoke(
                        &input,
                        Invocation {
                            worker_id,
                            resources: &resources,
                            emit: &mut emit_host,
                            emit_device: Some(&mut emit_device),
                            client: client.as_mut().map(|c| c as &mut dyn ContextClient),
                        },
                    )
                    .map_err(|e| e.to_string());
                // The handler has returned: the cached copy may move or go now.
                drop(device_pin);
                if let Some(call) = call {
                    call.finished(result.as_ref().err().map(String::as_str));
                }
                // Done (a failure too: it is not retried), once its outputs are written.
                if let Some(done) = done {
                    let _ = done_emits.blocking_send(EmitItem::Done(done));
                }
                result
            }),
        }
    }

    /// `squall udl ls`: a JSON array.
    pub fn list_udls(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .udls
            .iter()
            .map(|(uuid, u)| {
                let (mut description, sdk, error) = match &u.plugin {
                    Ok(p) => (p.description.clone(), p.sdk_version.clone(), None),
                    Err(e) => (String::new(), String::new(), Some(e.clone())),
                };
                if let Some(py) = &u.python {
                    let field = |k: &str| py.get(k).and_then(|v| v.as_str()).unwrap_or("?");
                    description =
                        format!("Python UDL {}.{}", field("module"), field("entry_class"));
                }
                // Over every vertex using it, on this node.
                let metrics = self.engine.metrics();
                let (mut invocations, mut errors) = (0u64, 0u64);
                for h in self.handlers.iter().filter(|h| h.udl.uuid == *uuid) {
                    let labels = [uuid.as_str(), h.pathname.as_str()];
                    invocations += metrics.invocations.with_label_values(&labels).get();
                    errors += metrics.errors.with_label_values(&labels).get();
                }
                json!({
                    "uuid": uuid,
                    "name": u.name,
                    "invocations": invocations,
                    "errors": errors,
                    "checksum": format!("{:016x}", u.checksum),
                    "bytes": u.upload.len(),
                    "description": description,
                    "sdk_version": sdk,
                    "load_error": error,
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    /// `squall dfg ls`: Cascade's `dfgs.json` form.
    pub fn list_dfgs(&self) -> String {
        let list: Vec<Dfg> = self.dfgs.values().cloned().collect();
        dfg::dfgs_to_json(&list).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_platform::{DeliveryMode, ShardView, View};
    use squall_udl_host::engine::{EngineConfig, EngineMetrics};
    use std::sync::mpsc;

    fn runtime(me: MemberId) -> UdlRuntime {
        let engine = Engine::start(
            &EngineConfig {
                workers: 1,
                queue_capacity: 4,
            },
            EngineMetrics::new(&prometheus::Registry::new()).expect("metrics"),
        )
        .expect("an engine");
        let (emits, _) = tokio::sync::mpsc::channel(4);
        UdlRuntime::new(me, std::env::temp_dir(), Arc::new(engine), emits)
    }

    fn view(id: u32, members: &[MemberId], joined: &[MemberId]) -> View {
        View {
            id,
            members: members.to_vec(),
            joined: joined.to_vec(),
            failed: Vec::new(),
            left: Vec::new(),
            shards: vec![
                Vec::new(),
                vec![ShardView {
                    members: members.to_vec(),
                    mode: DeliveryMode::Ordered,
                    joined: joined.to_vec(),
                    state_source: None,
                }],
            ],
        }
    }

    /// `key` delivered to shard (1, 0) at `version`, assigned to `assignee`, held by the
    /// other `holders`.
    fn arrived<'a>(
        key: &'a str,
        version: u64,
        assignee: MemberId,
        holders: &[MemberId],
        blob: &'a Bytes,
    ) -> Arrived<'a> {
        Arrived {
            subgroup: 1,
            shard: 0,
            key,
            version,
            timestamp_us: 1,
            previous_version: None,
            previous_version_by_key: None,
            id: MessageId {
                client: 9,
                seq: version,
            },
            blob,
            sender: 0,
            arrival: Arrival::Ordered,
            assignee: Some(assignee),
            holders: Some(holders.into()),
            device: None,
            pool_gpu: None,
        }
    }

    /// Holds `key`, found in a replayed log at `version` and assigned to `assignee`, as
    /// delivered to the shard's `holders`.
    fn hold(
        rt: &mut UdlRuntime,
        key: &str,
        version: u64,
        assignee: MemberId,
        holders: &[MemberId],
    ) {
        let blob = Bytes::from_static(b"input");
        rt.hold_replayed(&arrived(key, version, assignee, holders, &blob));
    }

    /// What shard (1, 0) holds: version, assignee, held by a replay.
    fn held(rt: &UdlRuntime) -> Vec<(u64, MemberId, bool)> {
        rt.pending
            .get(&(1, 0))
            .map(|h| {
                h.iter()
                    .map(|(v, p)| (*v, p.assignee, p.replayed))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nodes 0, 1 and 2 in their first incarnation.
    fn first_lives() -> [MemberId; 3] {
        [0, 1, 2].map(|node| MemberId::new(node, 1))
    }

    /// A key whose assignee among `members` is `want`.
    fn key_for(members: &[MemberId], want: MemberId, tag: &str) -> String {
        (0..)
            .map(|i| format!("/in/{tag}{i}"))
            .find(|k| assignee_of(members, k) == Some(want))
            .expect("some key hashes there")
    }

    #[test]
    fn a_replay_follows_assignments_across_views_and_finished_work() {
        let [a, b, c] = first_lives();
        let mut rt = runtime(MemberId::new(0, 2));
        // Two inputs of view 1 (members a, b, c): one for a, one for b.
        let for_a = key_for(&[a, b, c], a, "a");
        let for_b = key_for(&[a, b, c], b, "b");
        hold(&mut rt, &for_a, 10, a, &[a, b, c]);
        hold(&mut rt, &for_b, 11, b, &[a, b, c]);
        // View 2 drops a: its input moves to its assignee among b and c, as it did live.
        rt.replayed_view(1, 0, &[b, c]);
        let moved_to = assignee_of(&[b, c], &for_a).expect("an assignee");
        assert_eq!(held(&rt), vec![(10, moved_to, true), (11, b, true)]);
        // b announces everything it was assigned below 12 done: only its inputs go.
        rt.done_by(1, 0, b, 12);
        let left: Vec<u64> = held(&rt).iter().map(|h| h.0).collect();
        assert_eq!(left, if moved_to == b { vec![] } else { vec![10] });
        // A shard rebuilt from its log forgets what it held (the replay holds it again).
        rt.forget_held(1, 0);
        assert!(held(&rt).is_empty());
    }

    #[test]
    fn replayed_inputs_run_again_in_a_total_restart_only() {
        let old = [
            MemberId::new(0, 1),
            MemberId::new(1, 1),
            MemberId::new(2, 1),
        ];
        let new = [
            MemberId::new(0, 2),
            MemberId::new(1, 2),
            MemberId::new(2, 2),
        ];
        let me = new[0];
        let mine = key_for(&new, me, "mine");
        let theirs = key_for(&new, new[1], "theirs");
        let no_device: DeviceLookup<'_> = &|_, _| (None, None);

        // Joining a live group (a view that is not a restart's): forgotten, since the
        // members of the live group hold them.
        let mut rt = runtime(me);
        hold(&mut rt, &mine, 10, old[1], &old);
        rt.reassign(
            &view(5, &[old[1], old[2], me], &[me]),
            no_device,
            &|_, _| false,
        );
        assert!(held(&rt).is_empty());
        assert_eq!(rt.replayed_held(1, 0), 0);

        // A total restart's view (every member new): this node's runs here, the other
        // replica's is held for it like a live input.
        let mut rt = runtime(me);
        hold(&mut rt, &mine, 10, old[1], &old);
        hold(&mut rt, &theirs, 11, old[0], &old);
        let restart = view(5, &new, &new);
        assert!(restart.is_restart());
        // Its state still coming: nothing moves yet.
        rt.reassign(&restart, no_device, &|g, s| (g, s) == (1, 0));
        assert_eq!(rt.replayed_held(1, 0), 2);
        rt.reassign(&restart, no_device, &|_, _| false);
        assert_eq!(held(&rt), vec![(11, new[1], false)]);
    }

    /// A node that left the shard in the last life (and so missed views its replay
    /// cannot follow) forgets the inputs from before; the others must not hand them to
    /// it after a total restart, though its new incarnation is a member again.
    #[test]
    fn a_total_restart_hands_inputs_only_to_nodes_that_held_them_to_the_end() {
        let [a, b, c] = first_lives();
        let new = [0, 1, 2].map(|node| MemberId::new(node, 2));
        // A key the hash over every new member gives to node 2.
        let key = key_for(&new, new[2], "k");
        let mut rt = runtime(new[0]);
        hold(&mut rt, &key, 10, a, &[a, b, c]);
        // Node 2 fails in the next view: the holders shrink to nodes 0 and 1.
        rt.replayed_view(1, 0, &[a, b]);
        let holders = rt.pending[&(1, 0)][&10].holders.clone();
        assert_eq!(holders.as_deref(), Some(&[a, b][..]));
        let back = restart_holders(&new, holders.as_deref());
        assert_eq!(back.as_deref(), Some(&new[..2]));
        let assignee = reassigned(&new, back.as_deref(), &key);
        assert!(
            assignee == Some(new[0]) || assignee == Some(new[1]),
            "{assignee:?}"
        );
        assert_eq!(reassigned(&new, holders.as_deref(), &key), Some(new[2]));
        // The restart view hands it to that node: here, or held for the other one,
        // which is then the only other holder (not node 2, should that one fail too).
        let no_device: DeviceLookup<'_> = &|_, _| (None, None);
        rt.reassign(&view(5, &new, &new), no_device, &|_, _| false);
        match assignee {
            Some(m) if m == new[0] => assert!(held(&rt).is_empty()),
            _ => {
                assert_eq!(held(&rt), vec![(10, new[1], false)]);
                let held_by = rt.pending[&(1, 0)][&10].holders.clone();
                assert_eq!(held_by.as_deref(), Some(&new[..2]));
            }
        }
    }

    /// An input delivered before a member joined the shard is held by the replicas of
    /// that time only: when its assignee fails, one of them runs it, never the joiner
    /// (which never received it and would leave it unrun).
    #[test]
    fn a_failed_assignee_s_input_goes_to_a_replica_that_holds_it() {
        let [a, b, c] = first_lives();
        // A key the old rule (hash over the new members) would hand to the joiner c.
        let key = key_for(&[b, c], c, "k");
        let mut rt = runtime(b);
        let blob = Bytes::from_static(b"input");
        rt.hold((1, 0), &arrived(&key, 7, a, &[a, b], &blob), a, false);
        assert_eq!(held(&rt), vec![(7, a, false)]);
        // c joined, then a failed: b, the one replica left that holds it, runs it.
        let no_device: DeviceLookup<'_> = &|_, _| (None, None);
        rt.reassign(&view(3, &[b, c], &[]), no_device, &|_, _| false);
        assert!(held(&rt).is_empty(), "b runs it: {:?}", held(&rt));
        assert_eq!(reassigned(&[b, c], Some(&[a, b]), &key), Some(b));
        assert_eq!(reassigned(&[b, c], None, &key), Some(c));
        // Nobody of that time left (a total restart): any member.
        let new = [MemberId::new(1, 2), MemberId::new(2, 2)];
        assert_eq!(
            reassigned(&new, Some(&[a, b]), &key),
            assignee_of(&new, &key)
        );
    }

    fn sink(limit_bytes: usize) -> (Arc<CallSink>, mpsc::Receiver<CallResult>) {
        let (tx, rx) = mpsc::channel();
        let sink = CallSink::new(limit_bytes, move |r| tx.send(r).expect("the test waits"));
        (Arc::new(sink), rx)
    }

    #[test]
    fn a_call_is_answered_once_its_last_invocation_lets_go() {
        let (s, rx) = sink(1 << 20);
        s.expect("/k", 2);
        let value = Bytes::from_static(b"shared bytes");
        let (a, b) = (Arc::clone(&s), Arc::clone(&s));
        drop(s);
        a.record("out/1", &value);
        a.finished(None);
        drop(a);
        assert!(rx.try_recv().is_err(), "one invocation is still running");
        b.record("out/2", &Bytes::from_static(b"two"));
        b.finished(None);
        drop(b);
        let outputs = rx.try_recv().expect("answered").expect("no failure");
        assert_eq!(outputs.len(), 2);
        assert_eq!(
            (outputs[0].key.as_str(), outputs[1].key.as_str()),
            ("out/1", "out/2")
        );
        assert_eq!(outputs[0].blob.as_ptr(), value.as_ptr(), "not copied");
    }

    #[test]
    fn a_call_fails_with_its_first_failure_and_drops_its_outputs() {
        let (s, rx) = sink(1 << 20);
        s.expect("/k", 2);
        s.record("a", &Bytes::from_static(b"x"));
        s.finished(Some("first"));
        s.finished(Some("second"));
        drop(s);
        assert_eq!(
            rx.try_recv().expect("answered"),
            Err(CallFailure::Udl("first".into()))
        );
    }

    #[test]
    fn outputs_over_the_limit_fail_the_call() {
        let (s, rx) = sink(10);
        s.expect("/k", 1);
        s.record("k", &Bytes::from_static(b"123456789"));
        s.record("k", &Bytes::from_static(b"1"));
        s.finished(None);
        drop(s);
        assert_eq!(
            rx.try_recv().expect("answered"),
            Err(CallFailure::TooLarge { limit_bytes: 10 })
        );
    }

    #[test]
    fn a_call_without_invocations_or_with_unrun_ones_is_refused() {
        let (s, rx) = sink(10);
        s.expect("/nobody", 0);
        drop(s);
        assert_eq!(
            rx.try_recv().expect("answered"),
            Err(CallFailure::NoUdl("/nobody".into()))
        );
        // Two queued, one dropped without running (a full queue).
        let (s, rx) = sink(10);
        s.expect("/k", 2);
        s.finished(None);
        drop(s);
        assert_eq!(
            rx.try_recv().expect("answered"),
            Err(CallFailure::NotRun { missing: 1, of: 2 })
        );
    }
}
