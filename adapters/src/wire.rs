//! The client wire protocol: length-prefixed binary frames over TCP.
//!
//! A frame is `len: u32` (of what follows) `| kind: u8 | body`. The client opens with
//! `Hello` (magic, protocol version, bearer token); the node answers `Welcome` (its id and
//! the role granted) or `Refused` (a reason) and closes. Then the client sends `Request`s
//! (`request id: u64` + a request) and the node answers each with a `Response` (the same
//! id + a response), in any order; a watch answers with a stream of `Event`s under the
//! watch's request id. Object bytes are the last field of their message and are sliced
//! out of the received frame, never copied by a serialization step. Every frame is
//! bounded by the node's `frame_bytes_max`, checked before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_kvs::PoolSpec;
use squall_kvs::op::PoolSpecLayout;
use squall_platform::Version;
use thiserror::Error;

pub const MAGIC: u32 = 0x5351_4b56; // "SQKV"
pub const PROTOCOL_VERSION: u16 = 1;

const FRAME_HELLO: u8 = 1;
const FRAME_WELCOME: u8 = 2;
const FRAME_REFUSED: u8 = 3;
/// The kind byte of a request frame (the server reads it off an oversized frame to
/// answer that request with `TooLarge`).
pub const FRAME_REQUEST: u8 = 4;
const FRAME_RESPONSE: u8 = 5;
const FRAME_EVENT: u8 = 6;

pub use crate::config::Role;

/// Response tags of pool listings: the first layout, and the one with pool options
/// (`gpu_cache`), used only when a listed pool has one.
const RESPONSE_POOLS: u8 = 7;
const RESPONSE_LAYOUT: u8 = 11;
const RESPONSE_POOLS_EXTENDED: u8 = 13;
const RESPONSE_LAYOUT_EXTENDED: u8 = 14;

/// Which version of a key a `Get` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// The latest, linearizably (an ordered read through the shard).
    Latest,
    /// As of this shard version.
    Version(Version),
    /// As of this timestamp (µs).
    Time(u64),
    /// The latest version durable on every replica.
    Stable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A put, remove or pool change: `op` is the operation encoded as the shard will apply
    /// it (`squall_kvs::op::encode`). The node validates it and multicasts these very
    /// bytes: the object's bytes are never copied after they left the socket.
    Write {
        /// Answer once accepted, before the operation is applied (`put_and_forget`).
        forget: bool,
        op: OpBytes,
    },
    /// To this node only, not stored: for logic triggered on arrival.
    TriggerPut {
        key: String,
        blob: Bytes,
    },
    /// A `trigger_put` whose answer is what the UDLs it triggers on this node emit
    /// ([`Response::Outputs`]), once every one of them returned: a call into the
    /// cluster's logic, next to the data, without a round through a result pool. The
    /// outputs go to the vertices' destinations as well, as for any `trigger_put`.
    Call {
        key: String,
        blob: Bytes,
    },
    Get {
        key: String,
        at: At,
    },
    /// Several keys of one shard, read at one point of its order.
    MultiGet {
        keys: Vec<String>,
    },
    GetSize {
        key: String,
    },
    ListKeys {
        prefix: String,
        at_time_us: Option<u64>,
    },
    ListPools,
    FindPool {
        key: String,
    },
    Members,
    Watch {
        prefix: String,
    },
    /// A watch of one shard's changes under `prefix`, answered with
    /// [`Response::Watching`] (where the shard stands here), then its events. Resuming
    /// (`from` not `Now`), first the changes this node holds since that point, so a
    /// client whose watch broke (a node down, its queue overrun) goes on at another
    /// replica without a gap: every version for a persistent shard, the latest of each
    /// changed key for a volatile one. Refused with `NotHere` by a node that holds no
    /// replica of the shard and `Unavailable` by one still receiving the shard's state.
    WatchShard {
        prefix: String,
        subgroup: u32,
        shard: u32,
        from: WatchPoint,
    },
    /// Ends this connection's watch started by request `watch` (its client stopped
    /// taking the events); answered `Done`, also for a watch already ended.
    Unwatch {
        watch: u64,
    },
    /// The UDL plugins stored in the cluster: a JSON array in [`Response::Json`].
    ListUdls,
    /// The DFGs in force: Cascade's `dfgs.json` form, in [`Response::Json`].
    ListDfgs,
    /// What a client needs to route requests itself: the pools and the members of every
    /// shard ([`Response::Layout`]).
    Layout,
    /// Several writes (each as in [`Request::Write`]) multicast in this order by the node
    /// that takes them, so writes to one shard are applied in this order. After the first
    /// write refused before it was sent, the rest are not sent (each answers
    /// `Unavailable`): the applied ones are always a prefix per shard, which is what lets
    /// the WAN forwarder keep each key's order across retries. Answered with
    /// [`Response::Many`], one answer per write, once all are answered; a refusal of
    /// the first write answers the whole request (so redirects work as for one write).
    WriteMany {
        /// Each write as [`Request::Write`] carries it: a client's values go to the
        /// socket from their own buffers (unless compressed), uncopied.
        ops: Vec<OpBytes>,
        /// Encode the writes LZ4-compressed when that saves at least an eighth (for a
        /// WAN link: CPU is cheaper there than bytes). Decoding says `false`.
        compress: bool,
    },
}

/// Where a [`Request::WatchShard`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchPoint {
    /// With the next change delivered.
    Now,
    /// With every change the node holds (a watch that broke before it saw any version).
    Start,
    /// With the changes after this version (the last one the watch saw).
    After(Version),
}

/// The most writes in one [`Request::WriteMany`].
pub const WRITE_MANY_MAX: usize = 1024;

/// The largest body a compressed [`Request::WriteMany`] may expand to (LZ4 expands at
/// most 255-fold; this bounds what one frame can make a node allocate).
pub const WRITE_MANY_EXPANDED_BYTES_MAX: usize = 256 << 20;

impl Request {
    /// A short name for metrics and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Write { .. } => "write",
            Request::TriggerPut { .. } => "trigger_put",
            Request::Call { .. } => "call",
            Request::Get { .. } => "get",
            Request::MultiGet { .. } => "multi_get",
            Request::GetSize { .. } => "get_size",
            Request::ListKeys { .. } => "list_keys",
            Request::ListPools => "list_pools",
            Request::FindPool { .. } => "find_pool",
            Request::Members => "members",
            Request::Watch { .. } | Request::WatchShard { .. } => "watch",
            Request::Unwatch { .. } => "unwatch",
            Request::ListUdls => "list_udls",
            Request::ListDfgs => "list_dfgs",
            Request::Layout => "layout",
            Request::WriteMany { .. } => "write_many",
        }
    }
}

/// An object as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireObject {
    pub key: String,
    pub version: Version,
    pub timestamp_us: u64,
    pub previous_version: Option<Version>,
    pub previous_key_version: Option<Version>,
    pub blob: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub node: u32,
    pub incarnation: u32,
    /// `host:port` as the node's config gives it: an IP or a DNS name (the client
    /// resolves it), at most [`ADDRESS_BYTES_MAX`] bytes.
    pub client_addr: String,
}

/// The longest client address (`host:port`, the host possibly a DNS name) in a
/// `Members`, `Layout` or `NotHere` response; a longer one makes the frame malformed.
pub const ADDRESS_BYTES_MAX: usize = crate::addr::HOST_PORT_BYTES_MAX;

/// Stable error codes: clients and scripts match on these, not on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    BadRequest = 1,
    Unauthenticated = 2,
    Forbidden = 3,
    InvalidKey = 4,
    NoPoolForKey = 5,
    NoSuchPool = 6,
    PoolExists = 7,
    NestedPool = 8,
    InvalidPool = 9,
    TooLarge = 10,
    Conflict = 11,
    NoSuchKey = 12,
    NotVersioned = 13,
    /// This node holds no replica of the key's shard; `redirect` lists nodes that do.
    NotHere = 14,
    /// Try again (a view change aborted the request, or the node is busy).
    Unavailable = 15,
    Internal = 16,
    /// No UDL plugin with that UUID is stored.
    NoSuchUdl = 17,
    NoSuchDfg = 18,
    /// A `dfgs.json` refused whole (the message says where and why).
    InvalidDfg = 19,
    /// A library that is not a loadable UDL plugin (ABI, entry points, checksum).
    InvalidPlugin = 20,
    /// The WAN outbox towards a remote site is full: the input would produce outputs
    /// that cannot be queued now (`wan.outbox_full = "reject"`). Not retried by clients.
    OutboxFull = 21,
    /// A UDL invocation of a [`Request::Call`] returned an error or panicked (the
    /// message carries it). Not retried by clients: the logic ran.
    UdlFailed = 22,
    /// A node that would log the write has its data disk under its reserve
    /// (`limits.disk_reserve_bytes`; the message names it). Not retried by clients: it
    /// lasts until space is freed there.
    StorageFull = 23,
    /// A read of the past before the point its pool's history was compacted to
    /// (`squall compact`): what it needs is no longer kept.
    Compacted = 24,
    /// A write made for a generation of its pool that is not the current one (the pool
    /// was removed and made again since the client learnt it, or the write named none):
    /// the client refreshes its pool table and sends it again for the current one.
    PoolChanged = 25,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            BadRequest,
            Unauthenticated,
            Forbidden,
            InvalidKey,
            NoPoolForKey,
            NoSuchPool,
            PoolExists,
            NestedPool,
            InvalidPool,
            TooLarge,
            Conflict,
            NoSuchKey,
            NotVersioned,
            NotHere,
            Unavailable,
            Internal,
            NoSuchUdl,
            NoSuchDfg,
            InvalidDfg,
            InvalidPlugin,
            OutboxFull,
            UdlFailed,
            StorageFull,
            Compacted,
            PoolChanged,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
    }

    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            InvalidKey => "invalid_key",
            NoPoolForKey => "no_pool_for_key",
            NoSuchPool => "no_such_pool",
            PoolExists => "pool_exists",
            NestedPool => "nested_pool",
            InvalidPool => "invalid_pool",
            TooLarge => "too_large",
            Conflict => "conflict",
            NoSuchKey => "no_such_key",
            NotVersioned => "not_versioned",
            NotHere => "not_here",
            Unavailable => "unavailable",
            Internal => "internal",
            NoSuchUdl => "no_such_udl",
            NoSuchDfg => "no_such_dfg",
            InvalidDfg => "invalid_dfg",
            InvalidPlugin => "invalid_plugin",
            OutboxFull => "outbox_full",
            UdlFailed => "udl_failed",
            StorageFull => "storage_full",
            Compacted => "compacted",
            PoolChanged => "pool_changed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Written {
        version: Version,
        timestamp_us: u64,
    },
    Done,
    Object(Option<WireObject>),
    Objects(Vec<Option<WireObject>>),
    Size(Option<u64>),
    Keys(Vec<String>),
    Pools(Vec<PoolSpec>),
    Members {
        view_id: u32,
        members: Vec<MemberInfo>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// `Conflict`: the version the condition was checked against.
        current: Option<Version>,
        /// `NotHere`: client addresses of nodes that hold the shard.
        redirect: Vec<String>,
    },
    /// A JSON document (listings of UDLs and DFGs).
    Json(String),
    Layout(Layout),
    /// The answers to a [`Request::WriteMany`], in its order (never nested).
    Many(Vec<Response>),
    /// What the UDLs of a [`Request::Call`] emitted, in the order they emitted it.
    Outputs(Vec<CallOutput>),
    /// A [`Request::WatchShard`] is registered; the shard's last version delivered at
    /// this node then (`None`: nothing yet). Its events follow.
    Watching {
        version: Option<Version>,
    },
    /// A shard forgot its history up to `through` (stamped `timestamp_us`) but the value
    /// then of each key not written since. `through` is `None` when the
    /// pool held nothing that old; the counts are what was dropped.
    Compacted {
        through: Option<Version>,
        timestamp_us: u64,
        versions_dropped: u64,
        keys_dropped: u64,
    },
}

/// One output of a [`Request::Call`]: the key as the UDL emitted it (relative to the
/// vertex's destinations) and its value, the emitted bytes themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallOutput {
    pub key: String,
    pub blob: Bytes,
}

/// The most outputs one [`Request::Call`] answers with (their bytes are bounded by the
/// frame limit).
pub const CALL_OUTPUTS_MAX: usize = 65_536;

/// The pools and, per subgroup and shard, the client addresses of the shard's members in
/// rank order (the first is the shard's first sender, whose writes need no nulls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub view_id: u32,
    pub pools: Vec<PoolSpec>,
    pub shards: Vec<Vec<Vec<String>>>,
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
            current: None,
            redirect: Vec::new(),
        }
    }
}

/// A change delivered under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    pub version: Version,
    pub timestamp_us: u64,
    /// `None`: the key was removed.
    pub blob: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        magic: u32,
        version: u16,
        token: Option<String>,
    },
    Welcome {
        node: u32,
        role: Role,
    },
    Refused {
        reason: String,
    },
    Request {
        request_id: u64,
        request: Request,
    },
    Response {
        request_id: u64,
        response: Response,
    },
    Event {
        request_id: u64,
        event: WatchEvent,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame ends inside {what}")]
    Truncated { what: &'static str },
    #[error("unknown {what} {tag}")]
    UnknownTag { what: &'static str, tag: u64 },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("pool spec: {0}")]
    PoolSpec(#[from] squall_kvs::OpError),
    #[error("{0} bytes after the end of the frame's content")]
    Trailing(usize),
    #[error("{what}: {count} entries exceed the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// Entries in one list field (keys, objects, pools, members).
const LIST_MAX: usize = 1 << 20;

/// A kvs operation's encoding as a [`Request::Write`] carries it: `head` then `tail`,
/// laid end to end. An encoder leaves a put's value (the encoding's last field) in
/// `tail`, the caller's own buffer, so a large value goes to the socket uncopied
/// ([`squall_kvs::op::encode_split`]); a decoder gives the whole operation in `head` (a
/// slice of the frame) and `tail` empty.
#[derive(Clone, Debug, Default)]
pub struct OpBytes {
    head: Bytes,
    tail: Bytes,
}

impl OpBytes {
    pub fn new(head: Bytes, tail: Bytes) -> Self {
        OpBytes { head, tail }
    }

    /// `op` encoded with its value left as the tail ([`squall_kvs::op::encode_split`]), as
    /// a client sends it.
    pub fn split(op: &squall_kvs::Op) -> Self {
        let (head, tail) = squall_kvs::op::encode_split(op);
        OpBytes { head, tail }
    }

    /// An operation encoded in one buffer.
    pub fn whole(op: Bytes) -> Self {
        OpBytes {
            head: op,
            tail: Bytes::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operation in one buffer: no copy unless it has a tail (a decoded one never
    /// has).
    pub fn into_bytes(self) -> Bytes {
        if self.tail.is_empty() {
            return self.head;
        }
        let mut whole = BytesMut::with_capacity(self.len());
        whole.extend_from_slice(&self.head);
        whole.extend_from_slice(&self.tail);
        whole.freeze()
    }
}

impl From<Bytes> for OpBytes {
    fn from(op: Bytes) -> Self {
        OpBytes::whole(op)
    }
}

/// Equal when the bytes laid end to end are, however they are split.
impl PartialEq for OpBytes {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .head
                .iter()
                .chain(self.tail.iter())
                .eq(other.head.iter().chain(other.tail.iter()))
    }
}

impl Eq for OpBytes {}

/// Values at least this large are written from their own buffers ([`FrameBuf`]); smaller
/// ones are copied into the frame, which costs less than another piece to write.
pub const BLOB_INLINE_BYTES_MAX: usize = 16 << 10;

/// The most pieces handed to one vectored write (the kernel's `IOV_MAX` is 1024).
const WRITE_PIECES_MAX: usize = 512;

/// Frames encoded for writing: their small fields copied into one buffer, values of
/// more than [`BLOB_INLINE_BYTES_MAX`] left in their own (shared) buffers and written in
/// place by vectored writes, so a 1 MiB object is not copied on its way to the socket.
#[derive(Debug, Default)]
pub struct FrameBuf {
    bytes: BytesMut,
    /// Values written from their own buffers, each with the offset in `bytes` it
    /// precedes.
    blobs: Vec<(usize, Bytes)>,
    blob_bytes: usize,
}

impl FrameBuf {
    pub fn new() -> Self {
        FrameBuf::default()
    }

    pub fn with_capacity(bytes: usize) -> Self {
        FrameBuf {
            bytes: BytesMut::with_capacity(bytes),
            ..FrameBuf::default()
        }
    }

    /// The bytes the frames take on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.blob_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.blobs.clear();
        self.blob_bytes = 0;
    }

    fn put_value(&mut self, value: &Bytes) {
        if value.len() > BLOB_INLINE_BYTES_MAX {
            self.blobs.push((self.bytes.len(), value.clone()));
            self.blob_bytes += value.len();
        } else {
            self.bytes.put_slice(value);
        }
    }

    /// Writes everything (vectored writes, the values from their own buffers) and
    /// clears the buffer.
    pub async fn write_to(
        &mut self,
        w: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> std::io::Result<()> {
        use std::io::IoSlice;
        use tokio::io::AsyncWriteExt;
        if self.blobs.is_empty() {
            w.write_all(&self.bytes).await?;
            self.clear();
            return Ok(());
        }
        let mut pieces = Vec::with_capacity(2 * self.blobs.len() + 1);
        let mut at = 0;
        for (offset, blob) in &self.blobs {
            pieces.push(IoSlice::new(&self.bytes[at..*offset]));
            pieces.push(IoSlice::new(blob));
            at = *offset;
        }
        pieces.push(IoSlice::new(&self.bytes[at..]));
        pieces.retain(|p| !p.is_empty());
        let mut left = &mut pieces[..];
        while !left.is_empty() {
            let batch = left.len().min(WRITE_PIECES_MAX);
            let n = w.write_vectored(&left[..batch]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut left, n);
        }
        self.clear();
        Ok(())
    }

    /// The frames in one contiguous buffer (a copy): for a blocking writer, or a test.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        let mut at = 0;
        for (offset, blob) in &self.blobs {
            all.extend_from_slice(&self.bytes[at..*offset]);
            all.extend_from_slice(blob);
            at = *offset;
        }
        all.extend_from_slice(&self.bytes[at..]);
        all
    }
}

/// The small fields go straight into the buffer.
impl std::ops::Deref for FrameBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.bytes
    }
}

impl std::ops::DerefMut for FrameBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }
}

// ----- encoding -------------------------------------------------------------------------

/// Appends `frame` (with its length prefix) to `out`.
pub fn put_frame(out: &mut FrameBuf, frame: &Frame) {
    let start = out.bytes.len();
    let start_len = out.len();
    out.put_u32_le(0);
    match frame {
        Frame::Hello {
            magic,
            version,
            token,
        } => {
            out.put_u8(FRAME_HELLO);
            out.put_u32_le(*magic);
            out.put_u16_le(*version);
            put_opt_str(out, token.as_deref());
        }
        Frame::Welcome { node, role } => {
            out.put_u8(FRAME_WELCOME);
            out.put_u32_le(*node);
            out.put_u8(*role as u8);
        }
        Frame::Refused { reason } => {
            out.put_u8(FRAME_REFUSED);
            put_str(out, reason);
        }
        Frame::Request {
            request_id,
            request,
        } => {
            out.put_u8(FRAME_REQUEST);
            out.put_u64_le(*request_id);
            put_request(out, request);
        }
        Frame::Response {
            request_id,
            response,
        } => {
            out.put_u8(FRAME_RESPONSE);
            out.put_u64_le(*request_id);
            put_response(out, response);
        }
        Frame::Event { request_id, event } => {
            out.put_u8(FRAME_EVENT);
            out.put_u64_le(*request_id);
            put_str(out, &event.key);
            out.put_u64_le(event.version.0);
            out.put_u64_le(event.timestamp_us);
            match &event.blob {
                Some(b) => {
                    out.put_u8(1);
                    put_blob(out, b);
                }
                None => out.put_u8(0),
            }
        }
    }
    let len = (out.len() - start_len - 4) as u32;
    out.bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// One frame in a buffer of its own (a copy of any value in it): for the small frames of
/// a handshake.
pub fn frame_to_vec(frame: &Frame) -> Vec<u8> {
    let mut out = FrameBuf::new();
    put_frame(&mut out, frame);
    out.to_vec()
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

/// A client address: what [`addr_`] accepts back (the config's `host:port`s are).
fn put_addr(out: &mut BytesMut, addr: &str) {
    debug_assert!(addr.len() <= ADDRESS_BYTES_MAX, "address `{addr}` too long");
    put_str(out, addr);
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn put_blob(out: &mut FrameBuf, b: &Bytes) {
    out.put_u32_le(b.len() as u32);
    out.put_value(b);
}

fn put_version(out: &mut BytesMut, v: Option<Version>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v.0);
        }
        None => out.put_u8(0),
    }
}

fn put_object(out: &mut FrameBuf, o: &Option<WireObject>) {
    let Some(o) = o else {
        out.put_u8(0);
        return;
    };
    out.put_u8(1);
    put_str(out, &o.key);
    out.put_u64_le(o.version.0);
    out.put_u64_le(o.timestamp_us);
    put_version(out, o.previous_version);
    put_version(out, o.previous_key_version);
    put_blob(out, &o.blob);
}

fn put_request(out: &mut FrameBuf, r: &Request) {
    match r {
        Request::Write { forget, op } => {
            out.put_u8(1);
            out.put_u8(u8::from(*forget));
            out.put_value(&op.head);
            out.put_value(&op.tail);
        }
        Request::TriggerPut { key, blob } => {
            out.put_u8(2);
            put_str(out, key);
            put_blob(out, blob);
        }
        Request::Call { key, blob } => {
            out.put_u8(19);
            put_str(out, key);
            put_blob(out, blob);
        }
        Request::Get { key, at } => {
            out.put_u8(4);
            put_str(out, key);
            match at {
                At::Latest => out.put_u8(0),
                At::Version(v) => {
                    out.put_u8(1);
                    out.put_u64_le(v.0);
                }
                At::Time(t) => {
                    out.put_u8(2);
                    out.put_u64_le(*t);
                }
                At::Stable => out.put_u8(3),
            }
        }
        Request::MultiGet { keys } => {
            out.put_u8(5);
            out.put_u32_le(keys.len() as u32);
            for k in keys {
                put_str(out, k);
            }
        }
        Request::GetSize { key } => {
            out.put_u8(6);
            put_str(out, key);
        }
        Request::ListKeys { prefix, at_time_us } => {
            out.put_u8(7);
            put_str(out, prefix);
            match at_time_us {
                Some(t) => {
                    out.put_u8(1);
                    out.put_u64_le(*t);
                }
                None => out.put_u8(0),
            }
        }
        Request::ListPools => out.put_u8(10),
        Request::FindPool { key } => {
            out.put_u8(11);
            put_str(out, key);
        }
        Request::Members => out.put_u8(12),
        Request::Watch { prefix } => {
            out.put_u8(13);
            put_str(out, prefix);
        }
        Request::Unwatch { watch } => {
            out.put_u8(21);
            out.put_u64_le(*watch);
        }
        Request::WatchShard {
            prefix,
            subgroup,
            shard,
            from,
        } => {
            out.put_u8(20);
            put_str(out, prefix);
            out.put_u32_le(*subgroup);
            out.put_u32_le(*shard);
            match from {
                WatchPoint::Now => out.put_u8(0),
                WatchPoint::Start => out.put_u8(1),
                WatchPoint::After(v) => {
                    out.put_u8(2);
                    out.put_u64_le(v.0);
                }
            }
        }
        Request::ListUdls => out.put_u8(14),
        Request::ListDfgs => out.put_u8(15),
        Request::Layout => out.put_u8(16),
        Request::WriteMany { ops, compress } => {
            let plain_len = 4 + ops.iter().map(|o| 4 + o.len()).sum::<usize>();
            if *compress && plain_len <= WRITE_MANY_EXPANDED_BYTES_MAX {
                let mut plain = BytesMut::with_capacity(plain_len);
                plain.put_u32_le(ops.len() as u32);
                for op in ops {
                    plain.put_u32_le(op.len() as u32);
                    plain.put_slice(&op.head);
                    plain.put_slice(&op.tail);
                }
                let packed = lz4_flex::block::compress(&plain);
                if packed.len() + 4 < plain.len() - plain.len() / 8 {
                    out.put_u8(18);
                    out.put_u32_le(plain.len() as u32);
                    out.put_slice(&packed);
                    return;
                }
            }
            // Plain: the same bytes as the body above, each value from its own buffer.
            out.put_u8(17);
            out.put_u32_le(ops.len() as u32);
            for op in ops {
                out.put_u32_le(op.len() as u32);
                out.put_value(&op.head);
                out.put_value(&op.tail);
            }
        }
    }
}

fn put_response(out: &mut FrameBuf, r: &Response) {
    match r {
        Response::Written {
            version,
            timestamp_us,
        } => {
            out.put_u8(1);
            out.put_u64_le(version.0);
            out.put_u64_le(*timestamp_us);
        }
        Response::Done => out.put_u8(2),
        Response::Object(o) => {
            out.put_u8(3);
            put_object(out, o);
        }
        Response::Objects(list) => {
            out.put_u8(4);
            out.put_u32_le(list.len() as u32);
            for o in list {
                put_object(out, o);
            }
        }
        Response::Size(s) => {
            out.put_u8(5);
            match s {
                Some(s) => {
                    out.put_u8(1);
                    out.put_u64_le(*s);
                }
                None => out.put_u8(0),
            }
        }
        Response::Keys(keys) => {
            out.put_u8(6);
            out.put_u32_le(keys.len() as u32);
            for k in keys {
                put_str(out, k);
            }
        }
        Response::Pools(pools) => {
            // A listing with a pool option added later (`gpu_cache`) has its own tag, so
            // a listing without one is what it always was (see `squall_kvs::op`).
            let layout = PoolSpecLayout::for_specs(pools);
            out.put_u8(match layout {
                PoolSpecLayout::Base => RESPONSE_POOLS,
                PoolSpecLayout::Extended => RESPONSE_POOLS_EXTENDED,
            });
            out.put_u32_le(pools.len() as u32);
            for p in pools {
                squall_kvs::op::put_pool_spec(out, p, layout);
            }
        }
        Response::Members { view_id, members } => {
            out.put_u8(8);
            out.put_u32_le(*view_id);
            out.put_u32_le(members.len() as u32);
            for m in members {
                out.put_u32_le(m.node);
                out.put_u32_le(m.incarnation);
                put_addr(out, &m.client_addr);
            }
        }
        Response::Error {
            code,
            message,
            current,
            redirect,
        } => {
            out.put_u8(9);
            out.put_u16_le(*code as u16);
            put_str(out, message);
            put_version(out, *current);
            out.put_u32_le(redirect.len() as u32);
            for r in redirect {
                put_addr(out, r);
            }
        }
        Response::Json(text) => {
            out.put_u8(10);
            out.put_u32_le(text.len() as u32);
            out.put_slice(text.as_bytes());
        }
        Response::Many(answers) => {
            out.put_u8(12);
            out.put_u32_le(answers.len() as u32);
            for answer in answers {
                put_response(out, answer);
            }
        }
        Response::Watching { version } => {
            out.put_u8(20);
            put_version(out, *version);
        }
        Response::Compacted {
            through,
            timestamp_us,
            versions_dropped,
            keys_dropped,
        } => {
            out.put_u8(21);
            put_version(out, *through);
            out.put_u64_le(*timestamp_us);
            out.put_u64_le(*versions_dropped);
            out.put_u64_le(*keys_dropped);
        }
        Response::Outputs(outputs) => {
            out.put_u8(15);
            out.put_u32_le(outputs.len() as u32);
            for o in outputs {
                put_str(out, &o.key);
                put_blob(out, &o.blob);
            }
        }
        Response::Layout(layout) => {
            let spec_layout = PoolSpecLayout::for_specs(&layout.pools);
            out.put_u8(match spec_layout {
                PoolSpecLayout::Base => RESPONSE_LAYOUT,
                PoolSpecLayout::Extended => RESPONSE_LAYOUT_EXTENDED,
            });
            out.put_u32_le(layout.view_id);
            out.put_u32_le(layout.pools.len() as u32);
            for p in &layout.pools {
                squall_kvs::op::put_pool_spec(out, p, spec_layout);
            }
            out.put_u32_le(layout.shards.len() as u32);
            for subgroup in &layout.shards {
                out.put_u32_le(subgroup.len() as u32);
                for shard in subgroup {
                    out.put_u32_le(shard.len() as u32);
                    for addr in shard {
                        put_addr(out, addr);
                    }
                }
            }
        }
    }
}

// ----- decoding -------------------------------------------------------------------------

/// Splits one whole frame off the front of `buf` if it is there: `Ok(None)` asks for more
/// bytes. A length over `max` is an error at once, before any buffering.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes one frame's content (without its length prefix).
pub fn decode_frame(mut b: Bytes) -> Result<Frame, WireError> {
    let r = &mut b;
    let frame = match u8_(r, "frame kind")? {
        FRAME_HELLO => Frame::Hello {
            magic: u32_(r, "magic")?,
            version: u16_(r, "protocol version")?,
            token: opt_str(r, "token")?,
        },
        FRAME_WELCOME => Frame::Welcome {
            node: u32_(r, "node")?,
            role: role(r)?,
        },
        FRAME_REFUSED => Frame::Refused {
            reason: str_(r, "reason")?,
        },
        FRAME_REQUEST => Frame::Request {
            request_id: u64_(r, "request id")?,
            request: request(r)?,
        },
        FRAME_RESPONSE => Frame::Response {
            request_id: u64_(r, "request id")?,
            response: response(r)?,
        },
        FRAME_EVENT => Frame::Event {
            request_id: u64_(r, "request id")?,
            event: WatchEvent {
                key: str_(r, "key")?,
                version: Version(u64_(r, "version")?),
                timestamp_us: u64_(r, "timestamp")?,
                blob: match u8_(r, "blob presence")? {
                    0 => None,
                    1 => Some(blob(r)?),
                    t => return Err(tag("blob presence", t)),
                },
            },
        },
        t => return Err(tag("frame kind", t)),
    };
    if b.has_remaining() {
        return Err(WireError::Trailing(b.remaining()));
    }
    Ok(frame)
}

fn tag(what: &'static str, t: u8) -> WireError {
    WireError::UnknownTag {
        what,
        tag: u64::from(t),
    }
}

fn need(r: &Bytes, n: usize, what: &'static str) -> Result<(), WireError> {
    if r.remaining() < n {
        return Err(WireError::Truncated { what });
    }
    Ok(())
}

fn u8_(r: &mut Bytes, what: &'static str) -> Result<u8, WireError> {
    need(r, 1, what)?;
    Ok(r.get_u8())
}

fn u16_(r: &mut Bytes, what: &'static str) -> Result<u16, WireError> {
    need(r, 2, what)?;
    Ok(r.get_u16_le())
}

fn u32_(r: &mut Bytes, what: &'static str) -> Result<u32, WireError> {
    need(r, 4, what)?;
    Ok(r.get_u32_le())
}

fn u64_(r: &mut Bytes, what: &'static str) -> Result<u64, WireError> {
    need(r, 8, what)?;
    Ok(r.get_u64_le())
}

fn count(r: &mut Bytes, what: &'static str, min_bytes: usize) -> Result<usize, WireError> {
    let n = u32_(r, what)? as usize;
    if n > LIST_MAX {
        return Err(WireError::TooMany {
            what,
            count: n,
            max: LIST_MAX,
        });
    }
    need(r, n.saturating_mul(min_bytes), what)?;
    Ok(n)
}

fn blob(r: &mut Bytes) -> Result<Bytes, WireError> {
    let n = u32_(r, "blob length")? as usize;
    need(r, n, "blob")?;
    Ok(r.split_to(n))
}

fn str_(r: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let n = u32_(r, what)? as usize;
    need(r, n, what)?;
    String::from_utf8(r.split_to(n).to_vec()).map_err(|_| WireError::NotUtf8 { what })
}

/// A client address (`host:port`), at most [`ADDRESS_BYTES_MAX`] bytes.
fn addr_(r: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let n = u32_(r, what)? as usize;
    if n > ADDRESS_BYTES_MAX {
        return Err(WireError::TooLong {
            what,
            len: n,
            max: ADDRESS_BYTES_MAX,
        });
    }
    need(r, n, what)?;
    String::from_utf8(r.split_to(n).to_vec()).map_err(|_| WireError::NotUtf8 { what })
}

fn opt_str(r: &mut Bytes, what: &'static str) -> Result<Option<String>, WireError> {
    match u8_(r, what)? {
        0 => Ok(None),
        1 => Ok(Some(str_(r, what)?)),
        t => Err(tag(what, t)),
    }
}

fn version(r: &mut Bytes) -> Result<Option<Version>, WireError> {
    match u8_(r, "version presence")? {
        0 => Ok(None),
        1 => Ok(Some(Version(u64_(r, "version")?))),
        t => Err(tag("version presence", t)),
    }
}

fn role(r: &mut Bytes) -> Result<Role, WireError> {
    match u8_(r, "role")? {
        0 => Ok(Role::Read),
        1 => Ok(Role::Write),
        2 => Ok(Role::Admin),
        t => Err(tag("role", t)),
    }
}

fn object(r: &mut Bytes) -> Result<Option<WireObject>, WireError> {
    match u8_(r, "object presence")? {
        0 => Ok(None),
        1 => Ok(Some(WireObject {
            key: str_(r, "key")?,
            version: Version(u64_(r, "version")?),
            timestamp_us: u64_(r, "timestamp")?,
            previous_version: version(r)?,
            previous_key_version: version(r)?,
            blob: blob(r)?,
        })),
        t => Err(tag("object presence", t)),
    }
}

fn request(r: &mut Bytes) -> Result<Request, WireError> {
    Ok(match u8_(r, "request")? {
        1 => {
            let forget = u8_(r, "forget")? != 0;
            // The rest of the frame is the operation (decoded and checked by the node).
            Request::Write {
                forget,
                op: OpBytes::whole(r.split_to(r.remaining())),
            }
        }
        2 => {
            let key = str_(r, "key")?;
            Request::TriggerPut {
                key,
                blob: blob(r)?,
            }
        }
        19 => {
            let key = str_(r, "key")?;
            Request::Call {
                key,
                blob: blob(r)?,
            }
        }
        4 => {
            let key = str_(r, "key")?;
            let at = match u8_(r, "read point")? {
                0 => At::Latest,
                1 => At::Version(Version(u64_(r, "version")?)),
                2 => At::Time(u64_(r, "time")?),
                3 => At::Stable,
                t => return Err(tag("read point", t)),
            };
            Request::Get { key, at }
        }
        5 => {
            let n = count(r, "keys", 4)?;
            Request::MultiGet {
                keys: (0..n).map(|_| str_(r, "key")).collect::<Result<_, _>>()?,
            }
        }
        6 => Request::GetSize {
            key: str_(r, "key")?,
        },
        7 => Request::ListKeys {
            prefix: str_(r, "prefix")?,
            at_time_us: match u8_(r, "time presence")? {
                0 => None,
                1 => Some(u64_(r, "time")?),
                t => return Err(tag("time presence", t)),
            },
        },
        10 => Request::ListPools,
        11 => Request::FindPool {
            key: str_(r, "key")?,
        },
        12 => Request::Members,
        13 => Request::Watch {
            prefix: str_(r, "prefix")?,
        },
        21 => Request::Unwatch {
            watch: u64_(r, "watch")?,
        },
        20 => Request::WatchShard {
            prefix: str_(r, "prefix")?,
            subgroup: u32_(r, "subgroup")?,
            shard: u32_(r, "shard")?,
            from: match u8_(r, "watch point")? {
                0 => WatchPoint::Now,
                1 => WatchPoint::Start,
                2 => WatchPoint::After(Version(u64_(r, "version")?)),
                t => return Err(tag("watch point", t)),
            },
        },
        14 => Request::ListUdls,
        15 => Request::ListDfgs,
        16 => Request::Layout,
        17 => write_many(r)?,
        18 => {
            let expanded = u32_(r, "expanded length")? as usize;
            let packed = r.split_to(r.remaining());
            if expanded > WRITE_MANY_EXPANDED_BYTES_MAX
                || expanded > packed.len().saturating_mul(255).saturating_add(16)
            {
                return Err(WireError::TooLong {
                    what: "expanded writes",
                    len: expanded,
                    max: WRITE_MANY_EXPANDED_BYTES_MAX.min(packed.len() * 255 + 16),
                });
            }
            let plain = lz4_flex::block::decompress(&packed, expanded).map_err(|e| {
                WireError::Malformed {
                    what: "compressed writes",
                    reason: e.to_string(),
                }
            })?;
            let mut plain = Bytes::from(plain);
            let request = write_many(&mut plain)?;
            if plain.has_remaining() {
                return Err(WireError::Malformed {
                    what: "compressed writes",
                    reason: format!("{} bytes after the writes", plain.remaining()),
                });
            }
            request
        }
        t => return Err(tag("request", t)),
    })
}

/// The body of a [`Request::WriteMany`] (plain, or once expanded).
fn write_many(r: &mut Bytes) -> Result<Request, WireError> {
    let n = count(r, "writes", 4)?;
    if n > WRITE_MANY_MAX {
        return Err(WireError::TooMany {
            what: "writes",
            count: n,
            max: WRITE_MANY_MAX,
        });
    }
    Ok(Request::WriteMany {
        ops: (0..n)
            .map(|_| blob(r).map(OpBytes::whole))
            .collect::<Result<_, _>>()?,
        compress: false,
    })
}

fn response(r: &mut Bytes) -> Result<Response, WireError> {
    let kind = u8_(r, "response")?;
    Ok(match kind {
        1 => Response::Written {
            version: Version(u64_(r, "version")?),
            timestamp_us: u64_(r, "timestamp")?,
        },
        2 => Response::Done,
        3 => Response::Object(object(r)?),
        4 => {
            let n = count(r, "objects", 1)?;
            Response::Objects((0..n).map(|_| object(r)).collect::<Result<_, _>>()?)
        }
        5 => Response::Size(match u8_(r, "size presence")? {
            0 => None,
            1 => Some(u64_(r, "size")?),
            t => return Err(tag("size presence", t)),
        }),
        6 => {
            let n = count(r, "keys", 4)?;
            Response::Keys((0..n).map(|_| str_(r, "key")).collect::<Result<_, _>>()?)
        }
        RESPONSE_POOLS | RESPONSE_POOLS_EXTENDED => {
            let layout = if kind == RESPONSE_POOLS {
                PoolSpecLayout::Base
            } else {
                PoolSpecLayout::Extended
            };
            let n = count(r, "pools", 14)?;
            Response::Pools(
                (0..n)
                    .map(|_| squall_kvs::op::get_pool_spec(r, layout))
                    .collect::<Result<_, _>>()?,
            )
        }
        8 => {
            let view_id = u32_(r, "view id")?;
            let n = count(r, "members", 12)?;
            let members = (0..n)
                .map(|_| {
                    Ok(MemberInfo {
                        node: u32_(r, "node")?,
                        incarnation: u32_(r, "incarnation")?,
                        client_addr: addr_(r, "client address")?,
                    })
                })
                .collect::<Result<_, WireError>>()?;
            Response::Members { view_id, members }
        }
        9 => {
            let raw = u16_(r, "error code")?;
            let code = ErrorCode::from_u16(raw).ok_or(WireError::UnknownTag {
                what: "error code",
                tag: u64::from(raw),
            })?;
            let message = str_(r, "error message")?;
            let current = version(r)?;
            let n = count(r, "redirects", 4)?;
            let redirect = (0..n)
                .map(|_| addr_(r, "redirect"))
                .collect::<Result<_, _>>()?;
            Response::Error {
                code,
                message,
                current,
                redirect,
            }
        }
        10 => Response::Json(str_(r, "JSON document")?),
        RESPONSE_LAYOUT | RESPONSE_LAYOUT_EXTENDED => {
            let spec_layout = if kind == RESPONSE_LAYOUT {
                PoolSpecLayout::Base
            } else {
                PoolSpecLayout::Extended
            };
            let view_id = u32_(r, "view id")?;
            let n = count(r, "pools", 14)?;
            let pools = (0..n)
                .map(|_| squall_kvs::op::get_pool_spec(r, spec_layout))
                .collect::<Result<_, _>>()?;
            let n = count(r, "subgroups", 4)?;
            let mut shards = Vec::with_capacity(n);
            for _ in 0..n {
                let m = count(r, "shards", 4)?;
                let mut subgroup = Vec::with_capacity(m);
                for _ in 0..m {
                    let k = count(r, "shard members", 4)?;
                    subgroup.push(
                        (0..k)
                            .map(|_| addr_(r, "member address"))
                            .collect::<Result<_, _>>()?,
                    );
                }
                shards.push(subgroup);
            }
            Response::Layout(Layout {
                view_id,
                pools,
                shards,
            })
        }
        12 => {
            let n = count(r, "answers", 1)?;
            if n > WRITE_MANY_MAX {
                return Err(WireError::TooMany {
                    what: "answers",
                    count: n,
                    max: WRITE_MANY_MAX,
                });
            }
            let mut answers = Vec::with_capacity(n);
            for _ in 0..n {
                // One level only: an answer inside is never itself a list.
                if r.first() == Some(&12) {
                    return Err(tag("nested answer", 12));
                }
                answers.push(response(r)?);
            }
            Response::Many(answers)
        }
        15 => {
            let n = count(r, "outputs", 8)?;
            if n > CALL_OUTPUTS_MAX {
                return Err(WireError::TooMany {
                    what: "outputs",
                    count: n,
                    max: CALL_OUTPUTS_MAX,
                });
            }
            let mut outputs = Vec::with_capacity(n);
            for _ in 0..n {
                let key = str_(r, "output key")?;
                outputs.push(CallOutput {
                    key,
                    blob: blob(r)?,
                });
            }
            Response::Outputs(outputs)
        }
        20 => Response::Watching {
            version: version(r)?,
        },
        21 => Response::Compacted {
            through: version(r)?,
            timestamp_us: u64_(r, "timestamp")?,
            versions_dropped: u64_(r, "count")?,
            keys_dropped: u64_(r, "count")?,
        },
        t => return Err(tag("response", t)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_kvs::StoreKind;

    /// A value written from its own buffer, not copied into the frame.
    fn large_value(fill: u8) -> Bytes {
        Bytes::from(vec![fill; BLOB_INLINE_BYTES_MAX + 1 + usize::from(fill)])
    }

    fn frames() -> Vec<Frame> {
        let mut spec = PoolSpec::new("/p", StoreKind::Persistent, 1);
        spec.affinity = Some("a+".into());
        spec.overrides.insert("/p/x".into(), 0);
        let mut gpu_cached = PoolSpec::new("/g", StoreKind::Volatile, 2);
        gpu_cached.gpu_cache = Some(squall_kvs::GpuCache {
            device: 0,
            capacity_bytes: 8 << 30,
        });
        let object = WireObject {
            key: "/p/a".into(),
            version: Version::new(2, 3),
            timestamp_us: 9,
            previous_version: Some(Version::new(2, 1)),
            previous_key_version: None,
            blob: Bytes::from_static(b"value"),
        };
        let requests = vec![
            Request::Write {
                forget: true,
                op: Bytes::from_static(b"\x01opaque to the wire").into(),
            },
            // A put's value left in its own buffer, and one over the inline bound.
            Request::Write {
                forget: false,
                op: OpBytes::new(Bytes::from_static(b"\x01head"), large_value(1)),
            },
            Request::TriggerPut {
                key: "/t/large".into(),
                blob: large_value(2),
            },
            Request::TriggerPut {
                key: "/t/a".into(),
                blob: Bytes::new(),
            },
            Request::Call {
                key: "/t/b".into(),
                blob: Bytes::from_static(b"in"),
            },
            Request::Get {
                key: "/p/a".into(),
                at: At::Time(77),
            },
            Request::Get {
                key: "/p/a".into(),
                at: At::Stable,
            },
            Request::MultiGet {
                keys: vec!["/p/a".into(), "/p/b".into()],
            },
            Request::GetSize { key: "/p/a".into() },
            Request::ListKeys {
                prefix: "/p".into(),
                at_time_us: Some(3),
            },
            Request::ListPools,
            Request::ListUdls,
            Request::ListDfgs,
            Request::Layout,
            Request::FindPool { key: "/p/a".into() },
            Request::Members,
            Request::Watch {
                prefix: "/p".into(),
            },
            Request::WatchShard {
                prefix: "/p/".into(),
                subgroup: 2,
                shard: 7,
                from: WatchPoint::After(Version(9 << 32 | 4)),
            },
            Request::WatchShard {
                prefix: "/p".into(),
                subgroup: 1,
                shard: 0,
                from: WatchPoint::Now,
            },
            Request::WatchShard {
                prefix: "/".into(),
                subgroup: 0,
                shard: 3,
                from: WatchPoint::Start,
            },
            Request::Unwatch { watch: 77 },
            Request::WriteMany {
                ops: vec![Bytes::from_static(b"\x01op").into(), Bytes::new().into()],
                compress: false,
            },
        ];
        let responses = vec![
            Response::Many(vec![
                Response::Written {
                    version: Version(1),
                    timestamp_us: 2,
                },
                Response::error(ErrorCode::Unavailable, "not sent"),
            ]),
            Response::Written {
                version: Version(1),
                timestamp_us: 2,
            },
            Response::Done,
            Response::Watching { version: None },
            Response::Compacted {
                through: Some(Version::new(3, 9)),
                timestamp_us: 1_795_489_110_063_933,
                versions_dropped: 12,
                keys_dropped: 2,
            },
            Response::Watching {
                version: Some(Version(3 << 32 | 1)),
            },
            Response::Outputs(vec![
                CallOutput {
                    key: "a".into(),
                    blob: Bytes::from_static(b"out"),
                },
                CallOutput {
                    key: String::new(),
                    blob: Bytes::new(),
                },
            ]),
            Response::Outputs(Vec::new()),
            Response::Object(Some(object.clone())),
            Response::Objects(vec![
                Some(WireObject {
                    blob: large_value(3),
                    ..object.clone()
                }),
                None,
                Some(object.clone()),
                Some(WireObject {
                    blob: large_value(4),
                    ..object.clone()
                }),
            ]),
            Response::Object(None),
            Response::Objects(vec![Some(object), None]),
            Response::Size(Some(5)),
            Response::Keys(vec!["/p/a".into()]),
            Response::Json("[{\"uuid\": \"x\"}]".into()),
            Response::Layout(Layout {
                view_id: 3,
                pools: vec![spec.clone()],
                shards: vec![vec![vec!["a:1".into(), "b:2".into()]], vec![]],
            }),
            Response::Layout(Layout {
                view_id: 4,
                pools: vec![spec.clone(), gpu_cached.clone()],
                shards: vec![vec![vec!["a:1".into()]]],
            }),
            Response::Pools(vec![spec.clone(), gpu_cached]),
            Response::Pools(vec![spec]),
            Response::Members {
                view_id: 4,
                members: vec![MemberInfo {
                    node: 1,
                    incarnation: 2,
                    client_addr: "127.0.0.1:7201".into(),
                }],
            },
            Response::Error {
                code: ErrorCode::Conflict,
                message: "no".into(),
                current: Some(Version(8)),
                redirect: vec!["x".into()],
            },
        ];
        let mut all = vec![
            Frame::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                token: Some("t".into()),
            },
            Frame::Welcome {
                node: 2,
                role: Role::Write,
            },
            Frame::Refused {
                reason: "bad token".into(),
            },
            Frame::Event {
                request_id: 1,
                event: WatchEvent {
                    key: "/p/a".into(),
                    version: Version(3),
                    timestamp_us: 4,
                    blob: Some(Bytes::from_static(b"z")),
                },
            },
        ];
        all.extend(
            requests
                .into_iter()
                .enumerate()
                .map(|(i, request)| Frame::Request {
                    request_id: i as u64,
                    request,
                }),
        );
        all.extend(
            responses
                .into_iter()
                .enumerate()
                .map(|(i, response)| Frame::Response {
                    request_id: i as u64,
                    response,
                }),
        );
        all
    }

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        for frame in frames() {
            let mut buf = BytesMut::from(&frame_to_vec(&frame)[..]);
            let whole = buf.clone();
            let body = split_frame(&mut buf, 1 << 20)
                .expect("within the limit")
                .expect("whole");
            assert!(buf.is_empty());
            assert_eq!(decode_frame(body.clone()), Ok(frame.clone()));
            // A write's operation runs to the end of the frame; its own decoder (in
            // squall-kvs) refuses a truncated one.
            let open_ended = matches!(
                frame,
                Frame::Request {
                    request: Request::Write { .. },
                    ..
                }
            );
            let checked = if open_ended { 10 } else { body.len() };
            for cut in 0..checked {
                assert!(
                    decode_frame(body.slice(..cut)).is_err(),
                    "{frame:?} at {cut}"
                );
            }
            // A partial frame asks for more bytes.
            let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
            assert_eq!(split_frame(&mut partial, 1 << 20), Ok(None));
        }
    }

    /// Over a real socket: many frames whose values are left in their own buffers (more
    /// pieces than one vectored write takes) arrive whole and in order, and the buffer
    /// held the values themselves, not copies.
    #[tokio::test]
    async fn frames_with_values_in_their_own_buffers_cross_a_socket_whole() {
        let values: Vec<Bytes> = (0..300u32)
            .map(|i| Bytes::from(vec![i as u8; BLOB_INLINE_BYTES_MAX + 1 + i as usize]))
            .collect();
        let mut out = FrameBuf::new();
        let mut sent = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let frame = Frame::Request {
                request_id: i as u64,
                request: Request::TriggerPut {
                    key: format!("/t/{i}"),
                    blob: value.clone(),
                },
            };
            put_frame(&mut out, &frame);
            sent.push(frame);
            // A small frame between large ones is copied in.
            let small = Frame::Request {
                request_id: 1000 + i as u64,
                request: Request::GetSize { key: "/t/s".into() },
            };
            put_frame(&mut out, &small);
            sent.push(small);
        }
        assert_eq!(out.blobs.len(), values.len());
        for ((_, held), value) in out.blobs.iter().zip(&values) {
            assert_eq!(
                held.as_ptr(),
                value.as_ptr(),
                "the value itself, not a copy"
            );
        }
        assert!(
            out.bytes.len() < 64 << 10,
            "only the small fields were copied"
        );
        let whole = out.to_vec();
        assert_eq!(whole.len(), out.len());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        out.write_to(&mut stream).await.expect("write");
        assert!(out.is_empty(), "written and cleared");
        drop(stream);
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), whole.len());
        assert!(
            got == whole,
            "the bytes on the wire are the frames laid end to end"
        );
        let mut buf = BytesMut::from(&got[..]);
        for frame in sent {
            let body = split_frame(&mut buf, 1 << 20)
                .expect("within the limit")
                .expect("whole");
            assert_eq!(decode_frame(body), Ok(frame));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn client_addresses_may_be_names_up_to_a_bound() {
        let name = format!("{}:7200", vec!["a".repeat(63); 4].join("."));
        assert_eq!(name.len(), ADDRESS_BYTES_MAX);
        let frame = Frame::Response {
            request_id: 1,
            response: Response::Members {
                view_id: 2,
                members: vec![MemberInfo {
                    node: 0,
                    incarnation: 1,
                    client_addr: "squall-0.squall-peers.default.svc.cluster.local:7200".into(),
                }],
            },
        };
        let mut buf = BytesMut::from(&frame_to_vec(&frame)[..]);
        let body = split_frame(&mut buf, 1 << 20)
            .expect("fits")
            .expect("whole");
        assert_eq!(decode_frame(body), Ok(frame));
        // An address one byte over the bound: refused before it is copied.
        let members = |addr: &str| {
            let mut body = BytesMut::new();
            body.put_u8(FRAME_RESPONSE);
            body.put_u64_le(1);
            body.put_u8(8);
            body.put_u32_le(2);
            body.put_u32_le(1);
            body.put_u32_le(0);
            body.put_u32_le(1);
            put_str(&mut body, addr);
            body.freeze()
        };
        assert!(decode_frame(members(&name)).is_ok());
        let too_long = format!("{name}0");
        assert_eq!(
            decode_frame(members(&too_long)),
            Err(WireError::TooLong {
                what: "client address",
                len: ADDRESS_BYTES_MAX + 1,
                max: ADDRESS_BYTES_MAX
            })
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1 << 30);
        assert_eq!(
            split_frame(&mut buf, 1 << 20),
            Err(WireError::TooLarge {
                len: 1 << 30,
                max: 1 << 20
            })
        );
    }

    /// A batch of large puts is framed with each value left in its own buffer, and its
    /// bytes are those of the same batch encoded whole (what a decoder gives back).
    #[test]
    fn a_batch_of_large_puts_is_framed_without_copying_the_values() {
        use squall_kvs::op::{self, Op};
        let ops: Vec<Op> = (0..3u8)
            .map(|i| Op::Put {
                id: op::MessageId {
                    client: 7,
                    seq: u64::from(i),
                },
                hlc_us: 1,
                condition: op::Condition::Always,
                pool_generation: 0,
                key: format!("/p/k{i}"),
                blob: Bytes::from(vec![i; BLOB_INLINE_BYTES_MAX * 4]),
            })
            .collect();
        let frame = |ops: Vec<OpBytes>| Frame::Request {
            request_id: 9,
            request: Request::WriteMany {
                ops,
                compress: false,
            },
        };
        let split: Vec<OpBytes> = ops.iter().map(OpBytes::split).collect();
        let whole: Vec<OpBytes> = ops.iter().map(|o| op::encode(o).into()).collect();
        let mut out = FrameBuf::new();
        put_frame(&mut out, &frame(split));
        assert_eq!(out.blobs.len(), ops.len(), "each value in its own buffer");
        for ((_, held), o) in out.blobs.iter().zip(&ops) {
            let Op::Put { blob, .. } = o else {
                unreachable!("puts only")
            };
            assert_eq!(held.as_ptr(), blob.as_ptr(), "the value itself, not a copy");
        }
        let bytes = out.to_vec();
        assert_eq!(bytes, frame_to_vec(&frame(whole.clone())), "the same bytes");
        let mut buf = BytesMut::from(&bytes[..]);
        let body = split_frame(&mut buf, 1 << 20)
            .expect("fits")
            .expect("whole");
        match decode_frame(body) {
            Ok(Frame::Request { request, .. }) => assert_eq!(
                request,
                Request::WriteMany {
                    ops: whole,
                    compress: false
                }
            ),
            other => panic!("not the batch: {other:?}"),
        }
    }

    #[test]
    fn batches_compress_where_it_pays_and_bombs_are_refused() {
        let body_of = |request: Request| {
            let mut buf = BytesMut::from(
                &frame_to_vec(&Frame::Request {
                    request_id: 1,
                    request,
                })[..],
            );
            split_frame(&mut buf, 64 << 20)
                .expect("fits")
                .expect("whole")
        };
        let decoded = |body: Bytes| match decode_frame(body) {
            Ok(Frame::Request { request, .. }) => request,
            other => panic!("not a request: {other:?}"),
        };
        // Sensor readings under similar keys: LZ4 pays.
        let ops: Vec<OpBytes> = (0..100)
            .map(|i| Bytes::from(format!("\x01/ingest/sensors/s{} {i} 42.5", i % 8)).into())
            .collect();
        let plain = body_of(Request::WriteMany {
            ops: ops.clone(),
            compress: false,
        });
        let packed = body_of(Request::WriteMany {
            ops: ops.clone(),
            compress: true,
        });
        assert!(
            packed.len() < plain.len() / 2,
            "{} bytes packed, {} plain",
            packed.len(),
            plain.len()
        );
        for body in [plain, packed] {
            assert_eq!(
                decoded(body),
                Request::WriteMany {
                    ops: ops.clone(),
                    compress: false
                }
            );
        }
        // Random bytes do not compress: sent plain.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let noisy = vec![OpBytes::from(Bytes::from(noise))];
        let body = body_of(Request::WriteMany {
            ops: noisy.clone(),
            compress: true,
        });
        assert!(body.len() > 4096, "sent plain");
        assert_eq!(
            decoded(body),
            Request::WriteMany {
                ops: noisy,
                compress: false
            }
        );
        // A frame claiming to expand beyond the bound, or beyond what LZ4 can, or whose
        // block is damaged, is refused.
        let frame = |expanded: u32, packed: &[u8]| {
            let mut b = BytesMut::new();
            b.put_u8(FRAME_REQUEST);
            b.put_u64_le(1);
            b.put_u8(18);
            b.put_u32_le(expanded);
            b.put_slice(packed);
            b.freeze()
        };
        assert!(matches!(
            decode_frame(frame(u32::MAX, &[0; 64])),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            decode_frame(frame(1 << 20, &[0; 16])),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            decode_frame(frame(100, &[0xff; 16])),
            Err(WireError::Malformed { .. })
        ));
    }
}
