//! The async Rust client. It keeps one connection per node it talks to, multiplexes
//! requests over it by request id, and caches the cluster's layout (pools and shard
//! members) to send each request straight to a replica of its key's shard: reads to the
//! replica the selection policy picks, writes to the shard's first member, which orders
//! them without waiting for other senders' nulls (one network hop less than any other
//! member). It follows `NotHere` redirects, refreshes the layout after one or after a
//! failure, and retries on another node when a node fails or a view change aborts a
//! request. A write keeps its message id across retries, so a retried put is applied
//! once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use squall_kvs::op::Op;
use squall_kvs::{Condition, MessageId, PoolSpec, PoolTable, StoreKind};
use squall_platform::Version;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::wire::{
    self, At, CallOutput, ErrorCode, Frame, Layout, MAGIC, MemberInfo, PROTOCOL_VERSION, Request,
    Response, WatchEvent, WatchPoint, WireObject,
};

/// Largest frame the client accepts from a node.
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Attempts of one request across nodes before giving up.
pub const ATTEMPTS_MAX: u32 = 30;
/// How long every known node may refuse connections before a call gives up early.
pub const ALL_DOWN_GIVE_UP: Duration = Duration::from_secs(3);
/// How long one attempt waits for its answer before trying another node (a write keeps
/// its message id, so a late first attempt and the retry apply once).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a [`Client::call_udl`] waits for its UDLs (they may run a model) before it
/// is tried on another node.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Which replica of a shard serves a request, when the client has a choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Spread requests over the replicas in turn.
    #[default]
    RoundRobin,
    /// One replica per key (its hash), for cache locality.
    KeyHash,
    /// Always the first replica listed.
    Fixed,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The node answered with an error (`code` is stable; match on it).
    #[error("{}: {message}", code.name())]
    Server {
        code: ErrorCode,
        message: String,
        current: Option<Version>,
    },
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: String, reason: String },
    #[error("protocol error from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("no node could serve the request after {attempts} attempts; last: {last}")]
    Unavailable { attempts: u32, last: String },
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One `Members` request to the node at `addr`, on a connection of its own, with no
/// retry and no failover: what that node says the current view is, or why it cannot
/// (unreachable, not joined yet: `Unavailable`).
pub async fn members_of(
    addr: &str,
    token: Option<&str>,
) -> Result<(u32, Vec<MemberInfo>), ClientError> {
    let conn = Conn::open(addr, token).await?;
    match conn.call(Request::Members).await? {
        Response::Members { view_id, members } => Ok((view_id, members)),
        other => Err(Client::unexpected(other)),
    }
}

/// A write's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub version: Version,
    pub timestamp_us: u64,
}

/// What one shard of a pool forgot in a compaction ([`Client::compact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardCompacted {
    pub shard: u32,
    /// The point compacted to (the pool's newest write in the shard stamped at or before
    /// the time asked). `None`: nothing that old.
    pub through: Option<Version>,
    pub timestamp_us: u64,
    pub versions_dropped: u64,
    pub keys_dropped: u64,
}

#[derive(Debug)]
struct Conn {
    addr: String,
    /// Requests are written by their callers, one frame per write: a writer task would
    /// add a task hop (often a thread hop) to every request's latency.
    writer: Mutex<(tokio::net::tcp::OwnedWriteHalf, wire::FrameBuf)>,
    /// Set when the reader ends or a write fails: the connection is not reused.
    closed: Arc<AtomicBool>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>,
    watches: Arc<Mutex<HashMap<u64, mpsc::Sender<WatchEvent>>>>,
    next_request: AtomicU64,
}

impl Conn {
    async fn open(addr: &str, token: Option<&str>) -> Result<Arc<Conn>, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err("timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let hello = wire::frame_to_vec(&Frame::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            token: token.map(str::to_string),
        });
        stream
            .write_all(&hello)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(64 << 10);
        let first = read_frame(&mut stream, &mut buf, addr).await?;
        match first {
            Some(Frame::Welcome { .. }) => {}
            Some(Frame::Refused { reason }) => {
                return Err(ClientError::Refused {
                    addr: addr.to_string(),
                    reason,
                });
            }
            _ => {
                return Err(ClientError::Protocol {
                    addr: addr.to_string(),
                    reason: "no welcome".into(),
                });
            }
        }
        let (mut reader, writer) = stream.into_split();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>> = Arc::default();
        let watches: Arc<Mutex<HashMap<u64, mpsc::Sender<WatchEvent>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (p, w, c) = (
            Arc::clone(&pending),
            Arc::clone(&watches),
            Arc::clone(&closed),
        );
        let name = addr.to_string();
        let conn = Arc::new(Conn {
            addr: addr.to_string(),
            writer: Mutex::new((writer, wire::FrameBuf::new())),
            closed,
            pending,
            watches,
            next_request: AtomicU64::new(1),
        });
        let this = Arc::downgrade(&conn);
        tokio::spawn(async move {
            loop {
                match read_frame(&mut reader, &mut buf, &name).await {
                    Ok(Some(Frame::Response {
                        request_id,
                        response,
                    })) => {
                        if let Some(reply) = p.lock().await.remove(&request_id) {
                            let _ = reply.send(response);
                        } else {
                            // The end of a watch.
                            w.lock().await.remove(&request_id);
                        }
                    }
                    // The node refused what this connection sent (a frame over its
                    // limit, a malformed one) and closes it: the requests in flight
                    // fail for good, with the reason, rather than be retried.
                    Ok(Some(Frame::Refused { reason })) => {
                        let code = if reason.contains("exceeds the limit") {
                            ErrorCode::TooLarge
                        } else {
                            ErrorCode::BadRequest
                        };
                        for (_, reply) in p.lock().await.drain() {
                            let _ = reply.send(Response::error(
                                code,
                                format!("the node refused the request: {reason}"),
                            ));
                        }
                        break;
                    }
                    // Never waits on a watch's consumer: a reader blocked on one would
                    // hold up every other answer on this connection (a client that
                    // watches and writes without reading its events would deadlock).
                    // A watch whose queue is full (or whose consumer is gone) is ended
                    // here and at the node; a resuming watch then resumes from the last
                    // event it took, so a slow consumer loses nothing.
                    Ok(Some(Frame::Event { request_id, event })) => {
                        let mut sinks = w.lock().await;
                        let Some(sink) = sinks.get(&request_id) else {
                            continue;
                        };
                        if sink.try_send(event).is_err() {
                            sinks.remove(&request_id);
                            drop(sinks);
                            if let Some(conn) = this.upgrade() {
                                tokio::spawn(async move { conn.unwatch(request_id).await });
                            }
                        }
                    }
                    _ => break,
                }
            }
            // The connection is gone: every waiter learns it (its sender drops).
            c.store(true, Ordering::Relaxed);
            p.lock().await.clear();
            w.lock().await.clear();
        });
        Ok(conn)
    }

    /// Asks the node to end watch `watch`, whose events this client no longer takes (its
    /// answer is not waited for: a lost connection ends the watch anyway).
    async fn unwatch(&self, watch: u64) {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::Request {
            request_id,
            request: Request::Unwatch { watch },
        };
        let _ = self.send(&frame).await;
    }

    async fn send(&self, frame: &Frame) -> std::io::Result<()> {
        /// A caller dropped mid-write leaves half a frame on the wire: the connection
        /// is then done for (its other requests fail over like on any lost connection).
        struct Unfinished<'a>(&'a AtomicBool);
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let mut guard = self.writer.lock().await;
        let (writer, buf) = &mut *guard;
        buf.clear();
        wire::put_frame(buf, frame);
        let unfinished = Unfinished(&self.closed);
        let result = buf.write_to(writer).await;
        if result.is_ok() {
            std::mem::forget(unfinished);
        }
        result
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let timeout = match request {
            Request::Call { .. } => CALL_TIMEOUT,
            _ => REQUEST_TIMEOUT,
        };
        let (reply, answer) = oneshot::channel();
        self.pending.lock().await.insert(request_id, reply);
        let lost = || ClientError::Connect {
            addr: self.addr.clone(),
            reason: "connection lost".into(),
        };
        if self
            .send(&Frame::Request {
                request_id,
                request,
            })
            .await
            .is_err()
        {
            self.pending.lock().await.remove(&request_id);
            return Err(lost());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(answer) => answer.map_err(|_| lost()),
            Err(_) => {
                self.pending.lock().await.remove(&request_id);
                Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    reason: format!("no answer in {} s", timeout.as_secs()),
                })
            }
        }
    }
}

async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
    addr: &str,
) -> Result<Option<Frame>, ClientError> {
    let protocol = |reason: String| ClientError::Protocol {
        addr: addr.to_string(),
        reason,
    };
    loop {
        if let Some(body) =
            wire::split_frame(buf, FRAME_BYTES_MAX).map_err(|e| protocol(e.to_string()))?
        {
            return wire::decode_frame(body)
                .map(Some)
                .map_err(|e| protocol(e.to_string()));
        }
        buf.reserve(64 << 10);
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// A connection to a Squall cluster.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    token: Option<String>,
    /// Nodes to try, seeds first, then members learned from the cluster.
    nodes: Mutex<Vec<String>>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    client_id: u64,
    seq: AtomicU64,
    turn: AtomicU64,
    policy: Policy,
    /// The cached layout; `None` until fetched. A plain mutex: held for a lookup only.
    routing: std::sync::Mutex<Option<Arc<Routing>>>,
    /// Set when the layout may be out of date (a redirect, a failed node): the next
    /// keyed request fetches it first.
    routing_stale: AtomicBool,
    /// Addresses the cluster advertises → where this client dials them (NAT, a gateway,
    /// a WAN proxy); the rest are dialed as advertised.
    translate: HashMap<String, String>,
}

/// The layout as the client routes with it.
#[derive(Debug)]
struct Routing {
    pools: PoolTable,
    /// Per subgroup, per shard: member client addresses in rank order.
    shards: Vec<Vec<Vec<String>>>,
}

impl Routing {
    /// The pool `prefix` names or lies in.
    fn pool_of_prefix(&self, prefix: &str) -> Option<&squall_kvs::Pool> {
        self.pools
            .get(prefix)
            .or_else(|| self.pools.find(prefix).ok())
    }
}

/// Nodes covering a pool's shards (see [`Client::shard_plan`]).
struct ShardPlan {
    /// Each node with the shards it covers.
    nodes: Vec<(String, Vec<u32>)>,
}

/// Where a request goes first.
#[derive(Clone, Copy, Debug)]
enum Route<'a> {
    /// Any node: cluster-wide requests.
    Any,
    /// A replica of the key's shard, as the policy picks.
    Read(&'a str),
    /// The key's shard's first member.
    Write(&'a str),
    /// This node first.
    Node(&'a str),
}

impl Route<'_> {
    fn key(&self) -> Option<&str> {
        match self {
            Route::Any | Route::Node(_) => None,
            Route::Read(key) | Route::Write(key) => Some(key),
        }
    }
}

/// Wall-clock µs since the Unix epoch (0 before it): the HLC a write carries.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Client {
    /// Connects to the first reachable of `addrs` (`host:port`).
    pub async fn connect(
        addrs: &[String],
        token: Option<String>,
        policy: Policy,
    ) -> Result<Client, ClientError> {
        Self::connect_via(addrs, token, policy, HashMap::new()).await
    }

    /// [`Client::connect`], dialing every address the cluster advertises (members,
    /// redirects) through `translate` when it names it: for a cluster whose advertised
    /// addresses this client cannot reach directly.
    pub async fn connect_via(
        addrs: &[String],
        token: Option<String>,
        policy: Policy,
        translate: HashMap<String, String>,
    ) -> Result<Client, ClientError> {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let client = Client {
            inner: Arc::new(Inner {
                token,
                nodes: Mutex::new(addrs.to_vec()),
                conns: Mutex::new(HashMap::new()),
                // The top bit is the nodes' own.
                client_id: (random ^ now_us()) & !(1 << 63),
                seq: AtomicU64::new(0),
                turn: AtomicU64::new(0),
                policy,
                routing: std::sync::Mutex::new(None),
                routing_stale: AtomicBool::new(true),
                translate,
            }),
        };
        let mut last = None;
        for addr in addrs {
            match client.conn(addr).await {
                Ok(_) => {
                    // Learn every member, for failover.
                    if let Ok(members) = client.members().await {
                        let mut nodes = client.inner.nodes.lock().await;
                        for m in members.1 {
                            if !nodes.contains(&m.client_addr) {
                                nodes.push(m.client_addr);
                            }
                        }
                    }
                    client.refresh_routing().await;
                    return Ok(client);
                }
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Unavailable {
            attempts: 0,
            last: "no address given".into(),
        }))
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, ClientError> {
        let mut conns = self.inner.conns.lock().await;
        if let Some(c) = conns.get(addr)
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let dial = self.inner.translate.get(addr).map_or(addr, String::as_str);
        let c = Conn::open(dial, self.inner.token.as_deref()).await?;
        conns.insert(addr.to_string(), Arc::clone(&c));
        Ok(c)
    }

    fn next_id(&self) -> MessageId {
        MessageId {
            client: self.inner.client_id,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn pick(&self, replicas: &[String], key: Option<&str>) -> String {
        let i = match (self.inner.policy, key) {
            (Policy::Fixed, _) => 0,
            (Policy::KeyHash, Some(key)) => {
                (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % replicas.len() as u64) as usize
            }
            _ => self.inner.turn.fetch_add(1, Ordering::Relaxed) as usize % replicas.len(),
        };
        replicas[i].clone()
    }

    /// Fetches the layout from the first node that gives it; keeps the old one (or none)
    /// if none does: routing is an optimisation, the nodes redirect anyway.
    async fn refresh_routing(&self) {
        self.inner.routing_stale.store(false, Ordering::Relaxed);
        let nodes = self.inner.nodes.lock().await.clone();
        for addr in nodes {
            let Ok(conn) = self.conn(&addr).await else {
                continue;
            };
            if let Ok(Response::Layout(layout)) = conn.call(Request::Layout).await {
                self.install_routing(layout);
                return;
            }
        }
        self.inner.routing_stale.store(true, Ordering::Relaxed);
    }

    fn install_routing(&self, layout: Layout) {
        let shards_per_subgroup: Vec<u32> = layout.shards.iter().map(|s| s.len() as u32).collect();
        let mut pools = PoolTable::new(usize::MAX, usize::MAX);
        for spec in layout.pools {
            // The nodes validated every pool; one this client cannot place is left to the
            // nodes' redirects.
            let _ = pools.create(spec, &shards_per_subgroup);
        }
        let routing = Routing {
            pools,
            shards: layout.shards,
        };
        *self
            .inner
            .routing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(routing));
    }

    /// The cached layout, if there is one.
    fn routing(&self) -> Option<Arc<Routing>> {
        self.inner
            .routing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The node `route` names under the cached layout, if it knows one.
    fn routed(&self, route: Route<'_>) -> Option<String> {
        let (key, write) = match route {
            Route::Any => return None,
            Route::Node(addr) => return Some(addr.to_string()),
            Route::Read(key) => (key, false),
            Route::Write(key) => (key, true),
        };
        self.with_replicas(key, |members| match members.first() {
            None => None,
            Some(first) if write => Some(first.clone()),
            Some(_) => Some(self.pick(members, Some(key))),
        })?
    }

    /// Whether `addr` (a node's client address) is a member of `key`'s shard under the
    /// cached layout; `None` if the layout does not say.
    pub fn is_replica_of(&self, key: &str, addr: &str) -> Option<bool> {
        self.with_replicas(key, |members| members.iter().any(|m| m == addr))
    }

    /// `f` of the members of `key`'s shard (client addresses, first member first) under
    /// the cached layout, if it says.
    fn with_replicas<R>(&self, key: &str, f: impl FnOnce(&[String]) -> R) -> Option<R> {
        let routing = self.routing()?;
        let Ok(pool) = routing.pools.find(key) else {
            // A pool created since (through another client): the next request learns it.
            self.routing_changed();
            return None;
        };
        let members = routing
            .shards
            .get(pool.spec.subgroup as usize)?
            .get(pool.shard_of(key) as usize)?;
        Some(f(members))
    }

    /// The replica a read (or `trigger_put`) of `key` goes to first, by the cached layout
    /// and the policy; `None` if the layout does not say. (Under round robin, asking
    /// takes a turn.)
    pub fn replica_for(&self, key: &str) -> Option<String> {
        self.routed(Route::Read(key))
    }

    fn routing_changed(&self) {
        self.inner.routing_stale.store(true, Ordering::Relaxed);
    }

    /// Sends `request` where it can be served: first where the cached layout routes it,
    /// then follows redirects and fails over to other nodes on errors that a retry can
    /// fix, up to [`ATTEMPTS_MAX`] attempts.
    async fn call(&self, request: Request, route: Route<'_>) -> Result<Response, ClientError> {
        let key = route.key();
        if key.is_some() && self.inner.routing_stale.load(Ordering::Relaxed) {
            self.refresh_routing().await;
        }
        let mut target: Option<String> = self.routed(route);
        let mut last = String::new();
        // Nodes this call could not connect to, since when: once every known node has
        // refused connections for a while, the cluster is down (not changing views) and
        // waiting out every attempt would only delay the error.
        let mut unreachable: Vec<String> = Vec::new();
        let mut unreachable_since: Option<std::time::Instant> = None;
        for attempt in 0..ATTEMPTS_MAX {
            let addr = match &target {
                Some(a) => a.clone(),
                None => {
                    let nodes = self.inner.nodes.lock().await.clone();
                    if nodes.is_empty() {
                        break;
                    }
                    nodes[attempt as usize % nodes.len()].clone()
                }
            };
            let conn = match self.conn(&addr).await {
                Ok(c) => {
                    unreachable.clear();
                    unreachable_since = None;
                    c
                }
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => {
                    last = e.to_string();
                    if matches!(e, ClientError::Connect { .. }) {
                        let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                        if !unreachable.contains(&addr) {
                            unreachable.push(addr.clone());
                        }
                        let nodes = self.inner.nodes.lock().await.len();
                        if unreachable.len() >= nodes && since.elapsed() >= ALL_DOWN_GIVE_UP {
                            return Err(ClientError::Unavailable {
                                attempts: attempt + 1,
                                last: format!(
                                    "no node of the cluster accepts connections ({} s); last: {last}",
                                    ALL_DOWN_GIVE_UP.as_secs()
                                ),
                            });
                        }
                    }
                    target = None;
                    self.routing_changed();
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            };
            match conn.call(request.clone()).await {
                Ok(Response::Error {
                    code: ErrorCode::NotHere,
                    redirect,
                    message,
                    ..
                }) if !redirect.is_empty() => {
                    last = message;
                    self.routing_changed();
                    target = Some(match route {
                        Route::Write(_) => redirect[0].clone(),
                        _ => self.pick(&redirect, key),
                    });
                }
                Ok(Response::Error {
                    code: ErrorCode::Unavailable,
                    message,
                    ..
                }) => {
                    last = message;
                    target = None;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Ok(error @ Response::Error { .. }) => return Err(Self::unexpected(error)),
                Ok(response) => return Ok(response),
                Err(e) => {
                    last = e.to_string();
                    target = None;
                    self.routing_changed();
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts: ATTEMPTS_MAX,
            last,
        })
    }

    async fn write(
        &self,
        op: Op,
        forget: bool,
        key: Option<&str>,
    ) -> Result<Response, ClientError> {
        self.write_to(op, forget, key.map_or(Route::Any, Route::Write))
            .await
    }

    /// `op` sent where `route` says. A put or remove names its pool's generation as the
    /// cached layout has it; refused for a pool made again since (`PoolChanged`), it is
    /// sent again for the current one once the layout is fetched anew.
    async fn write_to(
        &self,
        op: Op,
        forget: bool,
        route: Route<'_>,
    ) -> Result<Response, ClientError> {
        self.refresh_for_generation(std::slice::from_ref(&op)).await;
        let mut attempt = 1;
        loop {
            let request = Request::Write {
                forget,
                op: wire::OpBytes::split(&self.with_generation(&op)),
            };
            match self.call(request, route).await {
                Err(e) if pool_changed(&e) && attempt < POOL_CHANGED_ATTEMPTS => {
                    attempt += 1;
                    self.refresh_routing().await;
                }
                answer => return answer,
            }
        }
    }

    /// `op` naming the generation of its key's pool under the cached layout, if it is a
    /// put or remove that names none (0 if the layout does not know the pool: the node
    /// then answers `PoolChanged`, or why the key has no pool).
    fn with_generation(&self, op: &Op) -> Op {
        let mut op = op.clone();
        if let Op::Put {
            key,
            pool_generation,
            ..
        }
        | Op::Remove {
            key,
            pool_generation,
            ..
        } = &mut op
            && *pool_generation == 0
            && let Some(routing) = self.routing()
            && let Ok(pool) = routing.pools.find(key)
        {
            *pool_generation = pool.spec.generation;
        }
        op
    }

    /// Fetches the layout before writes that will name pool generations, if it is
    /// known to be stale (a pool made since, a view change).
    async fn refresh_for_generation(&self, ops: &[Op]) {
        if self.inner.routing_stale.load(Ordering::Relaxed)
            && ops
                .iter()
                .any(|op| matches!(op, Op::Put { .. } | Op::Remove { .. }))
        {
            self.refresh_routing().await;
        }
    }

    /// A node's error as a `Server` error; any other answer the caller did not expect
    /// as a protocol error.
    fn unexpected(response: Response) -> ClientError {
        match response {
            Response::Error {
                code,
                message,
                current,
                ..
            } => ClientError::Server {
                code,
                message,
                current,
            },
            other => ClientError::Protocol {
                addr: String::new(),
                reason: format!("unexpected answer {other:?}"),
            },
        }
    }

    fn written(response: Response) -> Result<Written, ClientError> {
        match response {
            Response::Written {
                version,
                timestamp_us,
            } => Ok(Written {
                version,
                timestamp_us,
            }),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Stores `value` under `key`; answered once applied (volatile) or durable on every
    /// replica (persistent).
    pub async fn put(&self, key: &str, value: Bytes) -> Result<Written, ClientError> {
        self.put_if(key, value, Condition::Always).await
    }

    /// A conditional put: `Conflict` (with the current version) if `condition` fails.
    pub async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
    ) -> Result<Written, ClientError> {
        let op = put_op(self.next_id(), condition, key, value);
        Self::written(self.write(op, false, Some(key)).await?)
    }

    /// Sends a put and returns once a node accepted it, not once applied.
    pub async fn put_and_forget(&self, key: &str, value: Bytes) -> Result<(), ClientError> {
        let op = put_op(self.next_id(), Condition::Always, key, value);
        self.write(op, true, Some(key)).await.map(drop)
    }

    /// Removes `key` (a tombstone version); `NoSuchKey` if it does not exist.
    pub async fn remove(&self, key: &str) -> Result<Written, ClientError> {
        let op = Op::Remove {
            id: self.next_id(),
            hlc_us: now_us(),
            condition: Condition::Always,
            pool_generation: 0,
            key: key.to_string(),
        };
        Self::written(self.write(op, false, Some(key)).await?)
    }

    /// Delivers `value` to one node holding `key`'s pool for its triggered logic; not
    /// stored.
    pub async fn trigger_put(&self, key: &str, value: Bytes) -> Result<(), ClientError> {
        let request = Request::TriggerPut {
            key: key.to_string(),
            blob: value,
        };
        self.call(request, Route::Read(key)).await.map(drop)
    }

    /// Runs the UDLs that a `trigger_put` of `key` triggers, on one node holding its
    /// shard, and returns what they emitted (keys as the UDLs gave them), once every one
    /// of them returned. Nothing is stored for the input; the outputs also go to the
    /// vertices' destinations, as for [`trigger_put`](Self::trigger_put). Errors:
    /// `udl_failed` (an invocation failed: its message), `no_such_dfg` (no UDL runs on
    /// that key). Like `trigger_put`, a call lost with its connection is sent again, so
    /// its UDLs run at least once.
    pub async fn call_udl(&self, key: &str, value: Bytes) -> Result<Vec<CallOutput>, ClientError> {
        let request = Request::Call {
            key: key.to_string(),
            blob: value,
        };
        match self.call(request, Route::Read(key)).await? {
            Response::Outputs(outputs) => Ok(outputs),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The latest value of `key` (linearizable).
    pub async fn get(&self, key: &str) -> Result<Option<WireObject>, ClientError> {
        self.get_at(key, At::Latest).await
    }

    pub async fn get_at(&self, key: &str, at: At) -> Result<Option<WireObject>, ClientError> {
        let request = Request::Get {
            key: key.to_string(),
            at,
        };
        match self.call(request, Route::Read(key)).await? {
            Response::Object(o) => Ok(o),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Several keys of one shard, read at one point of its order.
    pub async fn multi_get(&self, keys: &[String]) -> Result<Vec<Option<WireObject>>, ClientError> {
        let request = Request::MultiGet {
            keys: keys.to_vec(),
        };
        let route = keys.first().map_or(Route::Any, |k| Route::Read(k));
        match self.call(request, route).await? {
            Response::Objects(list) => Ok(list),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn get_size(&self, key: &str) -> Result<Option<u64>, ClientError> {
        let request = Request::GetSize {
            key: key.to_string(),
        };
        match self.call(request, Route::Read(key)).await? {
            Response::Size(s) => Ok(s),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The keys under `prefix`, sorted: from a set of nodes that together hold every
    /// shard of the pool, each read linearizably. A prefix not inside one pool (`/`, or a
    /// parent of several pools) lists every pool under it, each pool read on its own (the
    /// listing is not one snapshot of all of them).
    pub async fn list_keys(
        &self,
        prefix: &str,
        at_time_us: Option<u64>,
    ) -> Result<Vec<String>, ClientError> {
        if self.inner.routing_stale.load(Ordering::Relaxed) {
            self.refresh_routing().await;
        }
        if self.shard_plan(prefix).is_none() {
            // Not inside a pool this client knows: read the pool table again, so a pool
            // made elsewhere a moment ago is listed (or is the one `prefix` lies in).
            self.refresh_routing().await;
        }
        let pools: Vec<String> = match self.routing() {
            Some(r) => match r.pool_of_prefix(prefix) {
                Some(pool) => vec![pool.spec.path.clone()],
                // `/` or a parent of several pools: every pool under it, each whole.
                None => r
                    .pools
                    .list()
                    .filter(|p| squall_kvs::key::contains(prefix, &p.spec.path))
                    .map(|p| p.spec.path.clone())
                    .collect(),
            },
            None => Vec::new(),
        };
        if pools.is_empty() {
            if prefix == "/" && self.routing().is_some() {
                return Ok(Vec::new()); // no pools at all
            }
            // The node says why (no pool there, most likely) in its typed error.
            let request = Request::ListKeys {
                prefix: prefix.to_string(),
                at_time_us,
            };
            return match self.call(request, Route::Any).await? {
                Response::Keys(keys) => Ok(keys),
                other => Err(Self::unexpected(other)),
            };
        }
        // One request per pool and node covering its shards, all at once.
        let mut asks = Vec::new();
        for pool in &pools {
            // Within its pool, `prefix` itself; a pool under `prefix`, whole.
            let within = if squall_kvs::key::contains(pool, prefix) {
                prefix
            } else {
                pool
            };
            let cover = self
                .shard_plan(pool)
                .map(|plan| plan.nodes)
                .unwrap_or_default();
            if cover.is_empty() {
                asks.push((within.to_string(), None));
            }
            for (addr, _) in cover {
                asks.push((within.to_string(), Some(addr)));
            }
        }
        let lists = futures_util::future::try_join_all(asks.into_iter().map(|(within, addr)| {
            let request = Request::ListKeys {
                prefix: within,
                at_time_us,
            };
            async move {
                let route = addr.as_deref().map_or(Route::Any, Route::Node);
                match self.call(request, route).await? {
                    Response::Keys(keys) => Ok(keys),
                    other => Err(Self::unexpected(other)),
                }
            }
        }))
        .await?;
        let all: std::collections::BTreeSet<String> = lists.into_iter().flatten().collect();
        Ok(all.into_iter().collect())
    }

    /// Nodes that together hold every shard of the pool `prefix` names or lies in, each
    /// with the shards it is asked for, by the cached layout; `None` if it does not know
    /// the pool.
    fn shard_plan(&self, prefix: &str) -> Option<ShardPlan> {
        let routing = self.routing()?;
        let pool = routing.pool_of_prefix(prefix)?;
        let shards = routing.shards.get(pool.spec.subgroup as usize)?;
        let mut nodes: Vec<(String, Vec<u32>)> = Vec::new();
        for s in 0..pool.shards {
            let members = shards.get(s as usize).filter(|m| !m.is_empty())?;
            match nodes.iter_mut().find(|(addr, _)| members.contains(addr)) {
                Some((_, mine)) => mine.push(s),
                None => nodes.push((self.pick(members, Some(prefix)), vec![s])),
            }
        }
        Some(ShardPlan { nodes })
    }

    pub async fn create_pool(&self, spec: PoolSpec) -> Result<(), ClientError> {
        let op = Op::CreatePool {
            id: self.next_id(),
            spec,
        };
        let result = self.write(op, false, None).await.map(drop);
        self.routing_changed();
        result
    }

    /// Removes pool `path` with its objects. Three steps: the pool leaves the table (no
    /// key finds it; none can be made at or around its path yet); its objects are
    /// dropped from each of its shards, in that shard's order; then the table lets a pool
    /// be made there again, which starts empty. If this stops half-way (the client dies),
    /// the pool stays "being removed" until `remove_pool` of it runs again.
    pub async fn remove_pool(&self, path: &str) -> Result<(), ClientError> {
        let op = Op::RemovePool {
            id: self.next_id(),
            path: path.to_string(),
        };
        let removed = self.write(op, false, None).await;
        self.routing_changed();
        let spec = match removed? {
            Response::Pools(mut specs) if specs.len() == 1 => specs.remove(0),
            // A retry whose first attempt was applied, and the removal finished since.
            Response::Done => return Ok(()),
            other => return Err(Self::unexpected(other)),
        };
        if spec.kind != StoreKind::Trigger {
            self.refresh_routing().await;
            // `spec.shards`: the shards it spread over.
            for shard in 0..spec.shards.max(1) {
                let member = self.first_member(spec.subgroup, shard);
                let op = Op::DropPool {
                    id: self.next_id(),
                    pool: path.to_string(),
                    shard,
                    generation: spec.generation,
                };
                let route = member.as_deref().map_or(Route::Any, Route::Node);
                match self.write_to(op, false, route).await? {
                    Response::Done => {}
                    other => return Err(Self::unexpected(other)),
                }
            }
        }
        let op = Op::PoolDropped {
            id: self.next_id(),
            path: path.to_string(),
            generation: spec.generation,
        };
        match self.write(op, false, None).await? {
            Response::Done => Ok(()),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Forgets the history of pool `pool` before `before_us` (µs since the epoch), shard
    /// by shard: each key keeps its later versions, or, if it was not written since, its
    /// value then; a key removed by then is dropped whole. Reads of an earlier point answer `Compacted`
    /// from then on. Each replica then drops the log files nothing needs any more, once
    /// the compaction is durable on every replica. Needs the Admin role; not refused
    /// while a disk is under its reserve, since it is how space comes back.
    pub async fn compact(
        &self,
        pool: &str,
        before_us: u64,
    ) -> Result<Vec<ShardCompacted>, ClientError> {
        if self.inner.routing_stale.load(Ordering::Relaxed) || self.routing().is_none() {
            self.refresh_routing().await;
        }
        // Shards by the cached layout; a pool it does not know goes once to any node,
        // which names the error.
        let (subgroup, shards) = self
            .routing()
            .and_then(|r| r.pools.get(pool).map(|p| (Some(p.spec.subgroup), p.shards)))
            .unwrap_or((None, 1));
        let mut done = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            let op = Op::Compact {
                id: self.next_id(),
                pool: pool.to_string(),
                shard,
                before_us,
            };
            let member = subgroup.and_then(|g| self.first_member(g, shard));
            let route = member.as_deref().map_or(Route::Any, Route::Node);
            match self.write_to(op, false, route).await? {
                Response::Compacted {
                    through,
                    timestamp_us,
                    versions_dropped,
                    keys_dropped,
                } => done.push(ShardCompacted {
                    shard,
                    through,
                    timestamp_us,
                    versions_dropped,
                    keys_dropped,
                }),
                other => return Err(Self::unexpected(other)),
            }
        }
        Ok(done)
    }

    /// A put under a caller-chosen message id: a repeat with the same id is applied once.
    /// UDL outputs use ids derived from their input, so a re-run writes nothing new.
    pub async fn put_with_id(
        &self,
        key: &str,
        value: Bytes,
        id: MessageId,
    ) -> Result<Written, ClientError> {
        let op = put_op(id, Condition::Always, key, value);
        Self::written(self.write(op, false, Some(key)).await?)
    }

    /// Queues `value` in this cluster's WAN outbox for `key` at the remote cluster
    /// `site` (a stored put there, or a `trigger_put`); answered once the entry is
    /// durable on every replica of its outbox shard. UDL outputs to remote destinations
    /// go this way, with ids derived from their input (a re-run queues nothing new).
    pub async fn outbox_put(
        &self,
        site: &str,
        trigger: bool,
        key: &str,
        value: Bytes,
        id: MessageId,
    ) -> Result<Written, ClientError> {
        let routing = squall_kvs::outbox_key(site, key);
        let op = Op::OutboxPut {
            id,
            hlc_us: now_us(),
            site: site.to_string(),
            trigger,
            key: key.to_string(),
            blob: value,
        };
        Self::written(self.write(op, false, Some(&routing)).await?)
    }

    /// Sends `ops` (puts, removes, outbox entries of keys of one shard) in one request to
    /// the shard's first member, which multicasts them in this order; after a write
    /// refused before it was sent, the rest are not sent. One answer per write, in order:
    /// the writes applied are a prefix of those of one shard. `route_key` routes it (a
    /// key of that shard); `compress` sends it LZ4-compressed where that pays.
    pub async fn write_many(
        &self,
        ops: &[Op],
        route_key: &str,
        compress: bool,
    ) -> Result<Vec<Result<Written, ClientError>>, ClientError> {
        self.refresh_for_generation(ops).await;
        // Answers so far, in order: the writes before the first refused for a changed
        // pool, which is sent again with the rest once the layout is fetched anew.
        let mut done: Vec<Result<Written, ClientError>> = Vec::with_capacity(ops.len());
        let mut attempt = 1;
        loop {
            let rest = &ops[done.len()..];
            let retry = attempt < POOL_CHANGED_ATTEMPTS;
            let answers = match self.write_many_once(rest, route_key, compress).await {
                Ok(answers) => answers,
                Err(e) if done.is_empty() && !(retry && pool_changed(&e)) => return Err(e),
                // The first of `rest` refused: the others were not sent.
                Err(e) => std::iter::once(Err(e))
                    .chain((1..rest.len()).map(|_| Err(not_sent())))
                    .collect(),
            };
            match answers
                .iter()
                .position(|a| a.as_ref().is_err_and(pool_changed))
            {
                Some(first) if retry => {
                    done.extend(answers.into_iter().take(first));
                    attempt += 1;
                    self.refresh_routing().await;
                }
                _ => {
                    done.extend(answers);
                    return Ok(done);
                }
            }
        }
    }

    /// One [`Request::WriteMany`] of `ops`, each naming its pool's generation as the
    /// cached layout has it.
    async fn write_many_once(
        &self,
        ops: &[Op],
        route_key: &str,
        compress: bool,
    ) -> Result<Vec<Result<Written, ClientError>>, ClientError> {
        let request = Request::WriteMany {
            ops: ops
                .iter()
                .map(|op| wire::OpBytes::split(&self.with_generation(op)))
                .collect(),
            compress,
        };
        match self.call(request, Route::Write(route_key)).await? {
            Response::Many(answers) if answers.len() == ops.len() => {
                Ok(answers.into_iter().map(Self::written).collect())
            }
            // The first write was refused: the node answered the whole request with it.
            Response::Error {
                code,
                message,
                current,
                ..
            } => Err(ClientError::Server {
                code,
                message,
                current,
            }),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The node a write of `key` goes to first, as the cached layout routes it (`None`
    /// before the layout is known, or for a pool created since).
    pub fn write_target(&self, key: &str) -> Option<String> {
        self.routed(Route::Write(key))
    }

    /// Stores a UDL plugin library in the cluster (admin); the node checks it loads (ABI
    /// version, entry points) and stores it under the UUID it exports, which every node
    /// then loads. Replaces a stored plugin with the same UUID.
    pub async fn upload_udl(&self, name: &str, plugin: Bytes) -> Result<(), ClientError> {
        let op = Op::PutUdl {
            id: self.next_id(),
            uuid: String::new(),
            name: name.to_string(),
            checksum: crate::udl::checksum(&plugin),
            plugin,
        };
        self.write(op, false, None).await.map(drop)
    }

    pub async fn remove_udl(&self, uuid: &str) -> Result<(), ClientError> {
        let op = Op::RemoveUdl {
            id: self.next_id(),
            uuid: uuid.to_string(),
        };
        self.write(op, false, None).await.map(drop)
    }

    /// Adds the DFGs of a Cascade `dfgs.json` text (admin): refused whole if invalid or
    /// naming a UDL that is not uploaded.
    pub async fn add_dfgs(&self, json: Bytes) -> Result<(), ClientError> {
        let op = Op::AddDfgs {
            id: self.next_id(),
            json,
        };
        self.write(op, false, None).await.map(drop)
    }

    pub async fn remove_dfg(&self, id: &str) -> Result<(), ClientError> {
        let op = Op::RemoveDfg {
            id: self.next_id(),
            dfg: id.to_string(),
        };
        self.write(op, false, None).await.map(drop)
    }

    /// The stored UDL plugins, as a JSON array.
    pub async fn list_udls(&self) -> Result<String, ClientError> {
        match self.call(Request::ListUdls, Route::Any).await? {
            Response::Json(j) => Ok(j),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The DFGs in force, in Cascade's `dfgs.json` form.
    pub async fn list_dfgs(&self) -> Result<String, ClientError> {
        match self.call(Request::ListDfgs, Route::Any).await? {
            Response::Json(j) => Ok(j),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn list_pools(&self) -> Result<Vec<PoolSpec>, ClientError> {
        match self.call(Request::ListPools, Route::Any).await? {
            Response::Pools(p) => Ok(p),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The subgroup of the first existing pool of `kind`: where a new pool of that kind
    /// lands when its creator names no subgroup (the layout is the node's; clients see
    /// pools). `None`: no pool of that kind exists to learn it from.
    pub async fn first_subgroup_of(&self, kind: StoreKind) -> Result<Option<u32>, ClientError> {
        let pools = self.list_pools().await?;
        Ok(pools
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.subgroup)
            .min())
    }

    pub async fn find_pool(&self, key: &str) -> Result<PoolSpec, ClientError> {
        let request = Request::FindPool {
            key: key.to_string(),
        };
        match self.call(request, Route::Any).await? {
            Response::Pools(mut p) if p.len() == 1 => Ok(p.remove(0)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The current view: its id and members with their client addresses.
    pub async fn members(&self) -> Result<(u32, Vec<MemberInfo>), ClientError> {
        match self.call(Request::Members, Route::Any).await? {
            Response::Members { view_id, members } => Ok((view_id, members)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Every change delivered under `prefix` from now on, as one stream.
    ///
    /// A prefix inside one pool is watched shard by shard, each at one of its replicas.
    /// When a replica's watch breaks (the node stops, the connection drops, the node drops
    /// a watcher that fell behind or a shard it no longer holds), the client resumes it
    /// at a replica after the last version it passed on: that node first sends what the
    /// watch missed, so nothing is lost or repeated. A persistent pool gives every
    /// version; a volatile one the latest of each key changed in the meantime (it keeps
    /// no versions in between). The stream ends only when no replica of a shard takes the
    /// watch back within [`WATCH_RESUME_PATIENCE`], or one refuses it for good (too far
    /// behind, `TooLarge`: list the keys again).
    ///
    /// A prefix not inside one pool (`/`, or a parent of several pools) is watched the
    /// same way on every shard of every data subgroup, so it resumes as well, and it also
    /// sees pools created under it after the watch began (they live in those shards).
    /// Changes of different shards arrive in no particular order between them.
    pub async fn watch(&self, prefix: &str) -> Result<mpsc::Receiver<WatchEvent>, ClientError> {
        if self.inner.routing_stale.load(Ordering::Relaxed) || self.routing().is_none() {
            self.refresh_routing().await;
        }
        let targets = self.watched_shards(prefix)?;
        // Every shard's watch is in place before this returns, so the stream has every
        // change from then on.
        let mut started = Vec::with_capacity(targets.len());
        for (subgroup, shard) in targets {
            let at = ShardWatch {
                prefix: prefix.to_string(),
                subgroup,
                shard,
            };
            let first = self
                .watch_shard_patiently(&at, WatchPoint::Now, None)
                .await?;
            started.push((at, first));
        }
        let (merged, rx) = mpsc::channel(1024);
        let (stop, _) = tokio::sync::watch::channel(false);
        for (at, first) in started {
            let follow = ShardFollow {
                at,
                addr: first.addr,
                last: first.version,
                events: first.events,
                merged: merged.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(self.clone().follow_shard(follow));
        }
        Ok(rx)
    }

    /// The shards (subgroup, shard) a watch of `prefix` follows: those of the pool it lies
    /// in, or for a prefix not inside one pool, every shard of every data subgroup (not
    /// the metadata, subgroup 0, which holds no objects).
    fn watched_shards(&self, prefix: &str) -> Result<Vec<(u32, u32)>, ClientError> {
        let Some(routing) = self.routing() else {
            return Err(ClientError::Unavailable {
                attempts: 1,
                last: "no node answered with the cluster's layout".to_string(),
            });
        };
        if let Some(pool) = routing.pool_of_prefix(prefix)
            && routing.shards.get(pool.spec.subgroup as usize).is_some()
        {
            let g = pool.spec.subgroup;
            return Ok((0..pool.shards).map(|s| (g, s)).collect());
        }
        Ok(routing
            .shards
            .iter()
            .enumerate()
            .skip(1)
            .flat_map(|(g, shards)| (0..shards.len()).map(move |s| (g as u32, s as u32)))
            .collect())
    }

    /// The first member of a shard (where its writes go) as routing knows it.
    fn first_member(&self, subgroup: u32, shard: u32) -> Option<String> {
        self.routing()?
            .shards
            .get(subgroup as usize)?
            .get(shard as usize)?
            .first()
            .cloned()
    }

    /// The replicas of a shard as routing knows them, the policy's pick first and `avoid`
    /// (where a watch just broke) last.
    fn replicas_of(&self, subgroup: u32, shard: u32, avoid: Option<&str>) -> Vec<String> {
        let mut members = self
            .routing()
            .and_then(|r| {
                r.shards
                    .get(subgroup as usize)?
                    .get(shard as usize)
                    .cloned()
            })
            .unwrap_or_default();
        if members.is_empty() {
            return members;
        }
        let first = self.pick(&members, None);
        members.retain(|m| *m != first);
        members.insert(0, first);
        if let Some(avoid) = avoid
            && let Some(i) = members.iter().position(|m| m == avoid)
        {
            let again = members.remove(i);
            members.push(again);
        }
        members
    }

    /// Starts a one-shard watch at the first replica that takes it.
    async fn watch_shard(
        &self,
        at: &ShardWatch,
        from: WatchPoint,
        avoid: Option<&str>,
    ) -> Result<ShardWatchStarted, ClientError> {
        let replicas = self.replicas_of(at.subgroup, at.shard, avoid);
        let mut last = format!(
            "no replica of subgroup {} shard {} is known",
            at.subgroup, at.shard
        );
        let attempts = replicas.len() as u32;
        for addr in replicas {
            let request = Request::WatchShard {
                prefix: at.prefix.clone(),
                subgroup: at.subgroup,
                shard: at.shard,
                from,
            };
            match self.start_watch(&addr, request).await {
                Ok((Response::Watching { version }, events)) => {
                    return Ok(ShardWatchStarted {
                        addr,
                        version,
                        events,
                    });
                }
                Ok((other, _)) => return Err(Self::unexpected(other)),
                Err(ClientError::Server {
                    code: ErrorCode::NotHere | ErrorCode::Unavailable,
                    message,
                    ..
                }) => last = format!("{addr}: {message}"),
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) => last = e.to_string(),
            }
        }
        Err(ClientError::Unavailable {
            attempts: attempts.max(1),
            last,
        })
    }

    /// Passes one shard's events on to the merged stream, resuming the watch where it
    /// breaks; ends every shard's part (`stop`) if it cannot.
    async fn follow_shard(self, mut f: ShardFollow) {
        let mut stopped = f.stop.subscribe();
        loop {
            loop {
                let event = tokio::select! {
                    event = f.events.recv() => event,
                    _ = stopped.changed() => return,
                    _ = f.merged.closed() => return,
                };
                let Some(event) = event else { break };
                // A replica resumed behind the one before sends again what was passed on.
                if f.last.is_some_and(|last| event.version <= last) {
                    continue;
                }
                f.last = Some(event.version);
                if f.merged.send(event).await.is_err() {
                    return;
                }
            }
            let from = f.last.map_or(WatchPoint::Start, WatchPoint::After);
            self.refresh_routing().await;
            let resumed = tokio::select! {
                resumed = self.watch_shard_patiently(&f.at, from, Some(&f.addr)) => resumed,
                _ = f.merged.closed() => return,
            };
            match resumed {
                Ok(started) => {
                    f.addr = started.addr;
                    f.events = started.events;
                }
                Err(e) => {
                    tracing::warn!(
                        prefix = %f.at.prefix,
                        subgroup = f.at.subgroup,
                        shard = f.at.shard,
                        error = %e,
                        "the watch could not be resumed; it ends"
                    );
                    let _ = f.stop.send(true);
                    return;
                }
            }
        }
    }

    /// [`Client::watch_shard`] until a replica takes the watch: a node may be starting,
    /// still receiving the shard's state, or gone from a stale layout. Gives up after
    /// [`WATCH_RESUME_PATIENCE`], or at once on an error retrying cannot cure.
    async fn watch_shard_patiently(
        &self,
        at: &ShardWatch,
        from: WatchPoint,
        avoid: Option<&str>,
    ) -> Result<ShardWatchStarted, ClientError> {
        let deadline = std::time::Instant::now() + WATCH_RESUME_PATIENCE;
        let mut attempt = 0;
        loop {
            match self.watch_shard(at, from, avoid).await {
                Ok(started) => return Ok(started),
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            self.refresh_routing().await;
        }
    }

    /// Sends a watch request to the node at `addr`: its first answer and the events.
    async fn start_watch(
        &self,
        addr: &str,
        request: Request,
    ) -> Result<(Response, mpsc::Receiver<WatchEvent>), ClientError> {
        let lost = |reason: &str| ClientError::Connect {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let conn = self.conn(addr).await?;
        let request_id = conn.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1024);
        let (reply, answer) = oneshot::channel();
        conn.watches.lock().await.insert(request_id, tx);
        conn.pending.lock().await.insert(request_id, reply);
        let frame = Frame::Request {
            request_id,
            request,
        };
        if conn.send(&frame).await.is_err() {
            conn.watches.lock().await.remove(&request_id);
            return Err(lost("connection lost"));
        }
        match answer.await {
            Ok(Response::Error {
                code,
                message,
                current,
                ..
            }) => {
                conn.watches.lock().await.remove(&request_id);
                Err(ClientError::Server {
                    code,
                    message,
                    current,
                })
            }
            Ok(response) => Ok((response, rx)),
            Err(_) => Err(lost("connection lost")),
        }
    }
}

/// One shard of a watched prefix.
#[derive(Clone, Debug)]
struct ShardWatch {
    prefix: String,
    subgroup: u32,
    shard: u32,
}

/// A one-shard watch a replica took.
struct ShardWatchStarted {
    addr: String,
    /// Where the shard stood at that replica (its last delivered version).
    version: Option<Version>,
    events: mpsc::Receiver<WatchEvent>,
}

/// A shard's part of a watch as [`Client::follow_shard`] runs it.
struct ShardFollow {
    at: ShardWatch,
    /// The replica watched now.
    addr: String,
    /// The last version passed on (or where the shard stood when the watch began).
    last: Option<Version>,
    events: mpsc::Receiver<WatchEvent>,
    merged: mpsc::Sender<WatchEvent>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// How long a shard watch keeps trying replicas (to start, or to resume once broken)
/// before it fails, ending the whole watch.
pub const WATCH_RESUME_PATIENCE: Duration = Duration::from_secs(30);

/// A put for the client to send; it names the pool's generation then
/// ([`Client::with_generation`]).
fn put_op(id: MessageId, condition: Condition, key: &str, value: Bytes) -> Op {
    Op::Put {
        id,
        hlc_us: now_us(),
        condition,
        pool_generation: 0,
        key: key.to_string(),
        blob: value,
    }
}

/// Attempts at a write refused because its pool was made again since the client learnt
/// it (`PoolChanged`): each after fetching the layout anew. More than one only if the
/// pool keeps being made again meanwhile.
const POOL_CHANGED_ATTEMPTS: u32 = 4;

fn pool_changed(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server {
            code: ErrorCode::PoolChanged,
            ..
        }
    )
}

/// The answer of a write of a batch sent after one refused before it was sent.
fn not_sent() -> ClientError {
    ClientError::Server {
        code: ErrorCode::Unavailable,
        message: "not sent: an earlier write of this batch was refused; retry".to_string(),
        current: None,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(5)).min(500))
}
