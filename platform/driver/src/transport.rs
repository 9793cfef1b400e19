//! How protocol messages travel between nodes: the [`Transport`] obligations and the TCP
//! implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use squall_platform::codec::{self, CODEC_VERSION, DecodeLimits};
use squall_platform::{MemberId, NodeId, Wire};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::frame::{
    Frame, FrameError, Hello, Incoming, put_chunk_header, put_frame, put_message_header,
    read_frame, read_incoming, write_frame,
};

/// What the transport hands to the node: messages in link order, and broken links.
#[derive(Debug)]
pub enum Inbound {
    Message {
        from: MemberId,
        msg: Wire,
    },
    /// The link to `peer` broke (connection lost, silent past the timeout, overflowed or
    /// spoke garbage). The node suspects `peer`; that incarnation is never heard again.
    Broken {
        peer: MemberId,
        reason: String,
    },
}

/// A carrier of protocol messages between nodes. Every implementation must guarantee:
///
/// - **FIFO per link, no holes**: messages from one incarnation to another arrive in the
///   order sent, each once, or the link is reported [`Inbound::Broken`] and carries
///   nothing from that incarnation again. A suspected incarnation never returns: a node
///   that restarts comes back with a new incarnation.
/// - **Incarnation addressing**: a message sent to `Some(incarnation)` reaches only that
///   incarnation; `None` (join requests) reaches whichever incarnation is up.
/// - **Bounded**: every queue has a limit; overflowing one breaks the link (reported),
///   never drops silently.
///
/// `send` never blocks: the core's send window and row coalescing bound what a link holds.
/// An RDMA transport (verbs, cargo feature `rdma`, to come) fits the same trait.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: NodeId, incarnation: Option<u32>, msg: Wire);
    /// The node gave up on `peer` (suspected it): close the link and refuse it from now on.
    fn forget(&self, peer: MemberId);
}

/// Where a peer listens: a host (an IP address or a DNS name) and a port.
///
/// A name is resolved at every connection attempt, never once for good: in Kubernetes a
/// restarted pod keeps its name but comes back with a new IP, and a pod not scheduled
/// yet has no address at all. A name that does not resolve is a failed attempt like a
/// refused connection, retried with the same backoff.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// An IP address (IPv6 without brackets) or a DNS name.
    host: String,
    port: u16,
}

impl PeerAddr {
    /// `host` is an IP address (IPv6 without brackets) or a DNS name; it is not checked
    /// here (a name that never resolves is a peer that is never reached).
    pub fn new(host: impl Into<String>, port: u16) -> PeerAddr {
        PeerAddr {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The addresses the host has now: a literal IP as it is, a name through the
    /// system resolver (`getaddrinfo`, off the runtime's threads).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        #[cfg(test)]
        if let Some(answer) = test_hosts::lookup(&self.host) {
            return answer
                .map(|ip| vec![SocketAddr::new(ip, self.port)])
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "name not known (test)")
                });
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        PeerAddr::new(addr.ip().to_string(), addr.port())
    }
}

/// `host:port`, an IPv6 host in brackets.
impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A fault hook for the unit tests: names answered (or refused) without DNS, so a test
/// can make a peer's name start resolving while the transport runs.
#[cfg(test)]
mod test_hosts {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::sync::Mutex;

    static HOSTS: Mutex<BTreeMap<String, Option<IpAddr>>> = Mutex::new(BTreeMap::new());

    /// `Some(ip)`: `name` resolves to `ip`; `None`: it does not resolve.
    pub fn set(name: &str, ip: Option<IpAddr>) {
        HOSTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), ip);
    }

    /// `None` for a name the tests did not set (resolved for real).
    pub fn lookup(name: &str) -> Option<Option<IpAddr>> {
        HOSTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }
}

#[derive(Clone, Debug)]
pub struct TcpConfig {
    pub cluster_id: u64,
    pub me: MemberId,
    /// Every node of the cluster and where it listens (this node included; its own
    /// entry is not dialed: the listener is given to [`TcpTransport::start`]).
    pub peers: BTreeMap<NodeId, PeerAddr>,
    /// Largest frame accepted; larger messages travel in chunks.
    pub frame_bytes_max: usize,
    /// Messages larger than this are cut into chunks of this size.
    pub chunk_bytes: usize,
    /// Largest reassembled message.
    pub message_bytes_max: usize,
    /// Messages queued for one peer (connected or not) before its link counts as broken.
    pub peer_queue_messages_max: usize,
    /// Transport heartbeats keep a link alive while a large message is in flight.
    pub heartbeat_interval_ms: u64,
    /// A link silent this long is broken.
    pub suspicion_timeout_ms: u64,
    /// Pause between attempts to (re)connect to a peer.
    pub connect_retry_ms: u64,
    pub decode_limits: DecodeLimits,
}

impl TcpConfig {
    /// `peers`: node id and where it listens, as a [`PeerAddr`] or a [`SocketAddr`].
    pub fn new<A: Into<PeerAddr>>(
        cluster_id: u64,
        me: MemberId,
        peers: impl IntoIterator<Item = (NodeId, A)>,
    ) -> Self {
        TcpConfig {
            cluster_id,
            me,
            peers: peers
                .into_iter()
                .map(|(node, addr)| (node, addr.into()))
                .collect(),
            frame_bytes_max: (1 << 20) + 64,
            chunk_bytes: 1 << 20,
            message_bytes_max: 80 << 20,
            peer_queue_messages_max: 65_536,
            heartbeat_interval_ms: 50,
            suspicion_timeout_ms: 1_000,
            connect_retry_ms: 50,
            decode_limits: DecodeLimits::default(),
        }
    }
}

struct Link {
    incarnation: u32,
    serial: u64,
    tx: mpsc::Sender<Wire>,
}

#[derive(Default)]
struct Peer {
    link: Option<Link>,
    /// Messages for a peer not connected yet, with the incarnation they are meant for.
    pending: VecDeque<(Option<u32>, Wire)>,
    /// Incarnations whose link broke or that the node gave up on.
    dead: BTreeSet<u32>,
}

/// One TCP connection per pair of nodes: the lower node id dials, the higher accepts.
pub struct TcpTransport {
    cfg: TcpConfig,
    peers: Mutex<HashMap<NodeId, Peer>>,
    inbound: mpsc::Sender<Inbound>,
    serials: AtomicU64,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("me", &self.cfg.me)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Starts accepting on `listener` and dialing every higher-numbered peer.
    pub fn start(
        cfg: TcpConfig,
        listener: TcpListener,
        inbound: mpsc::Sender<Inbound>,
    ) -> Arc<TcpTransport> {
        let transport = Arc::new(TcpTransport {
            cfg,
            peers: Mutex::new(HashMap::new()),
            inbound,
            serials: AtomicU64::new(0),
        });
        tokio::spawn(Arc::clone(&transport).accept_loop(listener));
        let me = transport.cfg.me.node;
        for (&node, addr) in transport.cfg.peers.iter().filter(|(n, _)| **n > me) {
            tokio::spawn(Arc::clone(&transport).dial_loop(node, addr.clone()));
        }
        transport
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Peer>> {
        // A panic while holding this lock is a bug elsewhere; the map stays usable.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hello(&self) -> Hello {
        Hello::new(
            self.cfg.cluster_id,
            self.cfg.me.node,
            self.cfg.me.incarnation,
        )
    }

    fn report_broken(&self, peer: MemberId, reason: String) {
        warn!(me = %self.cfg.me, %peer, %reason, "link broken");
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            let _ = inbound.send(Inbound::Broken { peer, reason }).await;
        });
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(me = %self.cfg.me, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(self.cfg.connect_retry_ms)).await;
                    continue;
                }
            };
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(reason) = this.accept_one(stream).await {
                    warn!(me = %this.cfg.me, %addr, %reason, "refused a connection");
                }
            });
        }
    }

    async fn accept_one(self: &Arc<Self>, stream: TcpStream) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let theirs = self.read_hello(&mut rd).await?;
        if theirs.node > self.cfg.me.node {
            return Err(format!("node {} must be dialed by us", theirs.node));
        }
        write_frame(&mut wr, &Frame::Hello(self.hello()))
            .await
            .map_err(|e| format!("sending hello: {e}"))?;
        self.install(theirs, rd, wr)
    }

    /// Dials `node` whenever it is not linked. `addr` is resolved at every attempt (a
    /// restarted peer may have a new IP); a name that does not resolve yet is a failed
    /// attempt like any other, logged at debug and retried with the same backoff.
    async fn dial_loop(self: Arc<Self>, node: NodeId, addr: PeerAddr) {
        let first = Duration::from_millis(self.cfg.connect_retry_ms);
        // A peer that stays down is retried less and less often, up to once a second.
        let most = first.max(Duration::from_secs(1));
        let mut retry = first;
        loop {
            tokio::time::sleep(retry).await;
            if self.lock().get(&node).is_some_and(|p| p.link.is_some()) {
                retry = first;
                continue;
            }
            match self.dial_one(&addr).await {
                Ok(()) => retry = first,
                Err(reason) => {
                    debug!(me = %self.cfg.me, node, %addr, %reason, "connect failed");
                    retry = (retry * 2).min(most);
                }
            }
        }
    }

    async fn dial_one(self: &Arc<Self>, addr: &PeerAddr) -> Result<(), String> {
        let timeout = Duration::from_millis(self.cfg.suspicion_timeout_ms);
        let stream = tokio::time::timeout(timeout, connect(addr))
            .await
            .map_err(|_| "resolving and connecting timed out".to_string())??;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        write_frame(&mut wr, &Frame::Hello(self.hello()))
            .await
            .map_err(|e| format!("sending hello: {e}"))?;
        let theirs = self.read_hello(&mut rd).await?;
        self.install(theirs, rd, wr)
    }

    /// The peer's first frame, which must be an acceptable hello, within the timeout.
    async fn read_hello(&self, rd: &mut OwnedReadHalf) -> Result<Hello, String> {
        let timeout = Duration::from_millis(self.cfg.suspicion_timeout_ms);
        let theirs = match tokio::time::timeout(timeout, read_frame(rd, 64)).await {
            Err(_) => return Err("no hello in time".into()),
            Ok(Err(e)) => return Err(format!("bad first frame: {e}")),
            Ok(Ok(Frame::Hello(h))) => h,
            Ok(Ok(other)) => return Err(format!("first frame is not a hello: {other:?}")),
        };
        self.check_hello(&theirs)?;
        Ok(theirs)
    }

    fn check_hello(&self, h: &Hello) -> Result<(), String> {
        if h.protocol != CODEC_VERSION {
            return Err(format!(
                "protocol version {} (we speak {CODEC_VERSION})",
                h.protocol
            ));
        }
        if h.cluster_id != self.cfg.cluster_id {
            return Err(format!(
                "cluster id {:#x} (ours is {:#x})",
                h.cluster_id, self.cfg.cluster_id
            ));
        }
        if h.node == self.cfg.me.node || !self.cfg.peers.contains_key(&h.node) {
            return Err(format!("node {} is not a peer of this cluster", h.node));
        }
        Ok(())
    }

    /// Makes a handshaken connection the link to `theirs`, replacing an older incarnation's.
    fn install(
        self: &Arc<Self>,
        theirs: Hello,
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
    ) -> Result<(), String> {
        let peer_id = MemberId::new(theirs.node, theirs.incarnation);
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.peer_queue_messages_max);
        let mut replaced = None;
        {
            let mut peers = self.lock();
            let peer = peers.entry(theirs.node).or_default();
            if peer.dead.contains(&theirs.incarnation) {
                return Err(format!(
                    "{peer_id} was given up on; it must come back as a new incarnation"
                ));
            }
            if let Some(link) = &peer.link {
                if link.incarnation >= theirs.incarnation {
                    return Err(format!(
                        "{peer_id}: already linked to incarnation {}",
                        link.incarnation
                    ));
                }
                replaced = Some(MemberId::new(theirs.node, link.incarnation));
                peer.dead.insert(link.incarnation);
            }
            let mut keep = VecDeque::new();
            for (incarnation, msg) in peer.pending.drain(..) {
                match incarnation {
                    Some(i) if i > theirs.incarnation => keep.push_back((incarnation, msg)),
                    Some(i) if i < theirs.incarnation => {}
                    _ => {
                        // The channel is as large as the pending queue's limit.
                        let _ = tx.try_send(msg);
                    }
                }
            }
            peer.pending = keep;
            peer.link = Some(Link {
                incarnation: theirs.incarnation,
                serial,
                tx,
            });
        }
        if let Some(old) = replaced {
            self.report_broken(
                old,
                format!("replaced by incarnation {}", theirs.incarnation),
            );
        }
        info!(me = %self.cfg.me, peer = %peer_id, "link up");
        tokio::spawn(Arc::clone(self).write_loop(peer_id, serial, wr, rx));
        tokio::spawn(Arc::clone(self).read_loop(peer_id, serial, rd));
        Ok(())
    }

    /// Ends link `serial` to `peer` (if still current) and reports it once.
    fn link_failed(&self, peer: MemberId, serial: u64, reason: String) {
        let current = {
            let mut peers = self.lock();
            match peers.get_mut(&peer.node) {
                Some(p) if p.link.as_ref().is_some_and(|l| l.serial == serial) => {
                    p.link = None;
                    p.dead.insert(peer.incarnation);
                    true
                }
                _ => false,
            }
        };
        if current {
            self.report_broken(peer, reason);
        }
    }

    async fn write_loop(
        self: Arc<Self>,
        peer: MemberId,
        serial: u64,
        mut wr: OwnedWriteHalf,
        mut rx: mpsc::Receiver<Wire>,
    ) {
        let beat_every = Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let mut beat = tokio::time::interval(beat_every);
        let mut out = BytesMut::new();
        let mut scratch = BytesMut::new();
        let mut parts: Vec<Bytes> = Vec::new();
        let result: Result<(), FrameError> = async {
            loop {
                let first = tokio::select! {
                    first = rx.recv() => first,
                    _ = beat.tick() => {
                        write_frame(&mut wr, &Frame::Beat).await?;
                        continue;
                    }
                };
                let Some(first) = first else { return Ok(()) };
                let mut batch = vec![first];
                while batch.len() < BATCH_MESSAGES_MAX {
                    match rx.try_recv() {
                        Ok(msg) => batch.push(msg),
                        Err(_) => break,
                    }
                }
                let mut rest: VecDeque<Wire> = coalesce(batch, self.cfg.chunk_bytes).into();
                while let Some(msg) = rest.pop_front() {
                    parts.clear();
                    let total = codec::encode_parts(&msg, &mut scratch, &mut parts);
                    if total <= self.cfg.chunk_bytes {
                        put_message_header(&mut out, total);
                        for part in &parts {
                            put_part(&mut wr, &mut out, part).await?;
                        }
                        continue;
                    }
                    // A large message goes in chunks. Between them go heartbeats and the
                    // control lane: rows and membership traffic queued behind it (rows
                    // split from their data). Data stays in order behind the chunks.
                    let mut control = VecDeque::new();
                    for queued in std::mem::take(&mut rest) {
                        let (c, d) = split_lanes(queued);
                        control.extend(c);
                        rest.extend(d);
                    }
                    let mut pieces = Pieces::new(&parts);
                    let mut sent = 0;
                    while sent < total {
                        let len = (total - sent).min(self.cfg.chunk_bytes);
                        sent += len;
                        put_chunk_header(&mut out, sent < total, total, len);
                        for piece in pieces.take(len) {
                            put_part(&mut wr, &mut out, &piece).await?;
                        }
                        if beat_due(&mut beat) {
                            put_frame(&mut out, &Frame::Beat);
                        }
                        while let Ok(queued) = rx.try_recv() {
                            let (c, d) = split_lanes(queued);
                            control.extend(c);
                            rest.extend(d);
                        }
                        for c in control.drain(..) {
                            put_frame(&mut out, &Frame::Message(encode(&c)));
                        }
                    }
                }
                wr.write_all(&out).await?;
                out.clear();
                wr.flush().await?;
                // What was just written is the sign of life: beat only after a silence.
                beat.reset();
            }
        }
        .await;
        let reason = match result {
            Ok(()) => "link closed".to_string(),
            Err(e) => format!("write: {e}"),
        };
        let _ = wr.shutdown().await;
        self.link_failed(peer, serial, reason);
    }

    async fn read_loop(self: Arc<Self>, peer: MemberId, serial: u64, rd: OwnedReadHalf) {
        let timeout = Duration::from_millis(self.cfg.suspicion_timeout_ms);
        // Frames are small and many (rows, headers): read them from a buffer, one system
        // call for many. A body larger than the buffer bypasses it.
        let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, rd);
        let mut assembling: Option<BytesMut> = None;
        let reason = loop {
            let incoming = tokio::time::timeout(
                timeout,
                read_incoming(
                    &mut rd,
                    self.cfg.frame_bytes_max,
                    self.cfg.message_bytes_max,
                    &mut assembling,
                ),
            )
            .await;
            let body = match incoming {
                Err(_) => break format!("silent for {} ms", self.cfg.suspicion_timeout_ms),
                Ok(Err(e)) => break format!("read: {e}"),
                Ok(Ok(Incoming::Beat | Incoming::ChunkMore)) => continue,
                Ok(Ok(Incoming::Hello(_))) => break "a second hello".to_string(),
                Ok(Ok(Incoming::Message(body) | Incoming::ChunkDone(body))) => body,
            };
            let msg = match codec::decode(body, &self.cfg.decode_limits) {
                Ok(msg) => msg,
                Err(e) => break format!("undecodable message: {e}"),
            };
            if self
                .inbound
                .send(Inbound::Message { from: peer, msg })
                .await
                .is_err()
            {
                break "node stopped".to_string();
            }
        };
        self.link_failed(peer, serial, reason);
    }
}

/// A connection to `addr` as its host resolves now: each of its addresses in turn (as
/// the resolver orders them) until one accepts.
async fn connect(addr: &PeerAddr) -> Result<TcpStream, String> {
    let resolved = addr
        .resolve()
        .await
        .map_err(|e| format!("resolving {}: {e}", addr.host()))?;
    let mut last = format!("{} resolves to no address", addr.host());
    for ip in resolved {
        match TcpStream::connect(ip).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connect {ip}: {e}"),
        }
    }
    Err(last)
}

/// Read buffer of a peer link.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Parts this small are copied into the output buffer; larger ones are written from
/// their own buffers (no copy), after what is buffered.
const COPY_PART_BYTES_MAX: usize = 16 << 10;

async fn put_part(
    wr: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    part: &Bytes,
) -> Result<(), FrameError> {
    if part.len() <= COPY_PART_BYTES_MAX {
        out.extend_from_slice(part);
        return Ok(());
    }
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    wr.write_all(part).await?;
    Ok(())
}

/// Walks a message's parts in pieces of a given length (chunk bodies), without copying.
struct Pieces<'a> {
    parts: &'a [Bytes],
    index: usize,
    offset: usize,
}

impl<'a> Pieces<'a> {
    fn new(parts: &'a [Bytes]) -> Self {
        Pieces {
            parts,
            index: 0,
            offset: 0,
        }
    }

    fn take(&mut self, mut len: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        while len > 0 && self.index < self.parts.len() {
            let part = &self.parts[self.index];
            let n = (part.len() - self.offset).min(len);
            out.push(part.slice(self.offset..self.offset + n));
            self.offset += n;
            len -= n;
            if self.offset == part.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
        out
    }
}

/// Messages taken from a peer's queue per write (then coalesced).
const BATCH_MESSAGES_MAX: usize = 1024;

/// Encodes a control message (small: rows, membership) into one buffer.
fn encode(msg: &Wire) -> Bytes {
    let mut body = BytesMut::new();
    codec::encode(msg, &mut body);
    body.freeze()
}

/// Splits a message into its control part (rows, membership traffic: may overtake a
/// large message) and its data part (multicast runs, state: stays in order). The core
/// accepts a row before the data it counts; it waits for the data.
fn split_lanes(msg: Wire) -> (Option<Wire>, Option<Wire>) {
    match msg {
        Wire::Update { view_id, data, row } if !data.is_empty() => {
            let control = row.map(|row| Wire::Update {
                view_id,
                data: Vec::new(),
                row: Some(row),
            });
            let data = Wire::Update {
                view_id,
                data,
                row: None,
            };
            (control, Some(data))
        }
        state @ Wire::State { .. } => (None, Some(state)),
        other => (Some(other), None),
    }
}

fn beat_due(beat: &mut tokio::time::Interval) -> bool {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::pin!(beat.tick()).as_mut().poll(&mut cx),
        Poll::Ready(_)
    )
}

/// Merges consecutive updates of one view into one: data concatenated in order, the
/// latest row last. A busy link thus never carries stale rows, and the row still follows
/// every message it acknowledges.
fn coalesce(batch: Vec<Wire>, bytes_max: usize) -> Vec<Wire> {
    let payload_bytes = |data: &[squall_platform::DataRun]| -> usize {
        data.iter()
            .flat_map(|run| &run.items)
            .map(|item| match item {
                squall_platform::Item::Message(p) => p.len(),
                squall_platform::Item::Nulls(_) => 0,
            })
            .sum()
    };
    let mut out: Vec<Wire> = Vec::with_capacity(batch.len());
    let mut merged_bytes = 0;
    for msg in batch {
        let bytes = match &msg {
            Wire::Update { data, .. } => payload_bytes(data),
            _ => 0,
        };
        if let (
            Some(Wire::Update {
                view_id: prev_view,
                data: prev_data,
                row: prev_row,
            }),
            Wire::Update { view_id, data, row },
        ) = (out.last_mut(), &msg)
            && *prev_view == *view_id
            // Merging stops short of the chunk size: one large merged message would
            // only be cut up again.
            && merged_bytes + bytes <= bytes_max
        {
            merged_bytes += bytes;
            prev_data.extend(data.iter().cloned());
            if row.is_some() {
                prev_row.clone_from(row);
            }
            continue;
        }
        merged_bytes = bytes;
        out.push(msg);
    }
    out
}

impl Transport for TcpTransport {
    fn send(&self, to: NodeId, incarnation: Option<u32>, msg: Wire) {
        if to == self.cfg.me.node {
            return;
        }
        let mut broken = None;
        {
            let mut peers = self.lock();
            let peer = peers.entry(to).or_default();
            if incarnation.is_some_and(|i| peer.dead.contains(&i)) {
                return;
            }
            match &peer.link {
                Some(link) if incarnation.is_none_or(|i| i == link.incarnation) => {
                    if link.tx.try_send(msg).is_err() {
                        let dead = MemberId::new(to, link.incarnation);
                        peer.dead.insert(link.incarnation);
                        peer.link = None;
                        broken = Some((dead, "send queue full".to_string()));
                    }
                }
                Some(link) if incarnation.is_some_and(|i| i < link.incarnation) => {}
                _ => {
                    if peer.pending.len() >= self.cfg.peer_queue_messages_max {
                        // A hole in the link: that incarnation may never be linked now.
                        match incarnation {
                            Some(i) => {
                                peer.dead.insert(i);
                                broken = Some((
                                    MemberId::new(to, i),
                                    "queue for an unconnected peer full".to_string(),
                                ));
                            }
                            // Join traffic to a node that is not up: the joiner retries.
                            None => {
                                warn!(me = %self.cfg.me, node = to, "dropped a join message: node unreachable and its queue full")
                            }
                        }
                    } else {
                        peer.pending.push_back((incarnation, msg));
                    }
                }
            }
        }
        if let Some((peer, reason)) = broken {
            self.report_broken(peer, reason);
        }
    }

    fn forget(&self, peer: MemberId) {
        let mut peers = self.lock();
        let p = peers.entry(peer.node).or_default();
        p.dead.insert(peer.incarnation);
        if p.link
            .as_ref()
            .is_some_and(|l| l.incarnation == peer.incarnation)
        {
            // Dropping the sender ends the writer, which closes the connection.
            p.link = None;
        }
        p.pending
            .retain(|(i, _)| i.is_none_or(|i| i != peer.incarnation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_keeps_data_order_and_the_latest_row() {
        use squall_platform::{DataRun, Item, Row};
        let run = |first: u64| DataRun {
            subgroup: 0,
            first_index: first,
            items: vec![Item::Nulls(1)],
        };
        let row = |v| Some(Arc::new(Row::empty(v, 2, 1)));
        let batch = vec![
            Wire::Update {
                view_id: 1,
                data: vec![run(0)],
                row: row(1),
            },
            Wire::Update {
                view_id: 1,
                data: vec![run(1)],
                row: None,
            },
            Wire::JoinRequest,
            Wire::Update {
                view_id: 1,
                data: vec![],
                row: row(1),
            },
        ];
        let out = coalesce(batch, 1 << 20);
        assert_eq!(out.len(), 3);
        let Wire::Update { data, row, .. } = &out[0] else {
            panic!("an update first");
        };
        assert_eq!(data, &vec![run(0), run(1)]);
        assert!(row.is_some());
        assert_eq!(out[1], Wire::JoinRequest);
    }

    #[test]
    fn peer_addresses_print_as_host_port() {
        let v4: SocketAddr = "10.0.0.5:7100".parse().expect("v4");
        let v6: SocketAddr = "[::1]:7100".parse().expect("v6");
        assert_eq!(PeerAddr::from(v4).to_string(), "10.0.0.5:7100");
        assert_eq!(PeerAddr::from(v6).to_string(), "[::1]:7100");
        assert_eq!(PeerAddr::from(v6).host(), "::1");
        let name = PeerAddr::new("squall-1.squall-peers", 7100);
        assert_eq!(name.to_string(), "squall-1.squall-peers:7100");
        assert_eq!(name.port(), 7100);
    }

    /// A peer whose name does not resolve yet (a pod not scheduled, DNS not updated) is
    /// dialed again and again, without the link being reported broken or anything
    /// queued for it lost; once the name resolves, the link comes up and the queue
    /// drains in order.
    #[tokio::test]
    async fn a_name_that_resolves_only_later_is_dialed_until_it_does() {
        let name = "n1.resolves-later.test";
        test_hosts::set(name, None);
        let l0 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a0 = l0.local_addr().expect("addr");
        let a1 = l1.local_addr().expect("addr");
        let mut cfg0 = TcpConfig::new(
            42,
            MemberId::new(0, 1),
            [(0, PeerAddr::from(a0)), (1, PeerAddr::new(name, a1.port()))],
        );
        cfg0.connect_retry_ms = 10;
        let cfg1 = TcpConfig::new(42, MemberId::new(1, 1), [(0, a0), (1, a1)]);
        let (tx0, mut rx0) = mpsc::channel(16);
        let (tx1, mut rx1) = mpsc::channel(16);
        let t0 = TcpTransport::start(cfg0, l0, tx0);
        let _t1 = TcpTransport::start(cfg1, l1, tx1);
        t0.send(1, Some(1), Wire::Evicted { view_id: 1 });
        t0.send(1, Some(1), Wire::Evicted { view_id: 2 });
        // Several attempts fail (10, 20, 40, 80, 160 ms apart): nothing arrives, nothing
        // is reported broken.
        let quiet = tokio::time::timeout(Duration::from_millis(400), rx1.recv()).await;
        assert!(
            quiet.is_err(),
            "arrived before the name resolved: {quiet:?}"
        );
        assert!(rx0.try_recv().is_err(), "the unresolved peer was reported");
        test_hosts::set(name, Some(a1.ip()));
        for view_id in [1, 2] {
            let got = tokio::time::timeout(Duration::from_secs(10), rx1.recv())
                .await
                .expect("the link came up once the name resolved")
                .expect("transport alive");
            match got {
                Inbound::Message { from, msg } => {
                    assert_eq!(from, MemberId::new(0, 1));
                    assert_eq!(msg, Wire::Evicted { view_id });
                }
                Inbound::Broken { peer, reason } => panic!("{peer} broke: {reason}"),
            }
        }
    }
}
