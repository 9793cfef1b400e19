//! The binary encoding of [`Wire`] messages, for transports that carry bytes (TCP, RDMA).
//!
//! Little-endian, length-checked, versioned by [`CODEC_VERSION`] (a transport's handshake
//! refuses peers that speak another). Decoding never trusts a count: every length is
//! checked against the bytes that remain and against [`DecodeLimits`] before anything is
//! allocated, so a hostile or corrupt frame costs at most its own size. Payloads (`Item::
//! Message`, `Wire::State`) are slices of the received frame: decoding copies no payload.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::ids::{MemberId, Version};
use crate::layout::DeliveryMode;
use crate::restart::{LoggedState, RestartPlan, RestartShard, ShardFed, ShardTail};
use crate::row::{Ballot, Change, Proposal, Row, ShardRow, Trim};
use crate::view::{ShardView, View};
use crate::wire::{DataRun, Item, Wire};

/// Bumped whenever the encoding changes; peers with another version are refused.
pub const CODEC_VERSION: u16 = 7;

const TAG_UPDATE: u8 = 1;
const TAG_JOIN_REQUEST: u8 = 2;
const TAG_REDIRECT: u8 = 3;
const TAG_WELCOME: u8 = 4;
const TAG_STATE: u8 = 5;
const TAG_EVICTED: u8 = 6;
const TAG_RESTART_HELLO: u8 = 7;
const TAG_RESTART_PREPARE: u8 = 8;
const TAG_RESTART_ACK: u8 = 9;
const TAG_RESTART_COMMIT: u8 = 10;
const TAG_READ_PROBE: u8 = 11;
const TAG_READ_PROBE_ACK: u8 = 12;
const TAG_STATE_WANTED: u8 = 13;
const TAG_STATE_ACK: u8 = 14;
const TAG_RESTART_CLAIM: u8 = 15;

const ITEM_MESSAGE: u8 = 0;
const ITEM_NULLS: u8 = 1;

/// Bounds on what a decoded message may contain, beyond the frame's own size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Members of a view (and entries of a row's suspicion vector).
    pub members_max: usize,
    /// Subgroups of a layout, shards of a subgroup.
    pub shards_max: usize,
    /// Data runs in one update, items in one run.
    pub items_max: usize,
    /// One message payload or state blob.
    pub payload_bytes_max: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            members_max: 4096,
            shards_max: 4096,
            items_max: 1 << 20,
            payload_bytes_max: 1 << 30,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame ends inside {what}")]
    Truncated { what: &'static str },
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what}: {count} exceeds the limit {max}")]
    TooMany {
        what: &'static str,
        count: u64,
        max: usize,
    },
    #[error("{what}: invalid value {value}")]
    Invalid { what: &'static str, value: u64 },
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
}

/// Payloads at least this large are not copied by [`encode_parts`]: they become parts of
/// their own, shared with the message.
pub const INLINE_PAYLOAD_BYTES_MAX: usize = 4096;

/// Where an encoding goes: a flat buffer, or parts that keep large payloads by reference.
trait Sink {
    fn buf(&mut self) -> &mut BytesMut;
    fn payload(&mut self, payload: &Bytes);
}

impl Sink for BytesMut {
    fn buf(&mut self) -> &mut BytesMut {
        self
    }
    fn payload(&mut self, payload: &Bytes) {
        self.put_slice(payload);
    }
}

struct Parts<'a> {
    scratch: &'a mut BytesMut,
    parts: &'a mut Vec<Bytes>,
}

impl Sink for Parts<'_> {
    fn buf(&mut self) -> &mut BytesMut {
        self.scratch
    }
    fn payload(&mut self, payload: &Bytes) {
        if payload.len() < INLINE_PAYLOAD_BYTES_MAX {
            self.scratch.put_slice(payload);
        } else {
            if !self.scratch.is_empty() {
                self.parts.push(self.scratch.split().freeze());
            }
            self.parts.push(payload.clone());
        }
    }
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Wire, out: &mut BytesMut) {
    encode_into(msg, out);
}

/// The encoding of `msg` as parts whose concatenation is [`encode`]'s output: headers
/// and small payloads are copied into `scratch` (reused across calls), payloads of
/// [`INLINE_PAYLOAD_BYTES_MAX`] bytes or more are shared, not copied, so a transport can
/// write them straight from the sender's buffer. Returns the total length.
pub fn encode_parts(msg: &Wire, scratch: &mut BytesMut, parts: &mut Vec<Bytes>) -> usize {
    let first = parts.len();
    let mut sink = Parts { scratch, parts };
    encode_into(msg, &mut sink);
    if !sink.scratch.is_empty() {
        sink.parts.push(sink.scratch.split().freeze());
    }
    parts[first..].iter().map(Bytes::len).sum()
}

fn encode_into(msg: &Wire, sink: &mut impl Sink) {
    match msg {
        Wire::Update { view_id, data, row } => {
            sink.buf().put_u8(TAG_UPDATE);
            sink.buf().put_u32_le(*view_id);
            put_len(sink.buf(), data.len());
            for run in data {
                sink.buf().put_u32_le(run.subgroup);
                sink.buf().put_u64_le(run.first_index);
                put_len(sink.buf(), run.items.len());
                for item in &run.items {
                    match item {
                        Item::Message(payload) => {
                            sink.buf().put_u8(ITEM_MESSAGE);
                            put_len(sink.buf(), payload.len());
                            sink.payload(payload);
                        }
                        Item::Nulls(n) => {
                            sink.buf().put_u8(ITEM_NULLS);
                            sink.buf().put_u32_le(*n);
                        }
                    }
                }
            }
            match row {
                Some(row) => {
                    sink.buf().put_u8(1);
                    put_row(sink.buf(), row);
                }
                None => sink.buf().put_u8(0),
            }
        }
        Wire::JoinRequest => sink.buf().put_u8(TAG_JOIN_REQUEST),
        Wire::Redirect { leader } => {
            sink.buf().put_u8(TAG_REDIRECT);
            sink.buf().put_u32_le(*leader);
        }
        Wire::Welcome { view } => {
            sink.buf().put_u8(TAG_WELCOME);
            put_view(sink.buf(), view);
        }
        Wire::State {
            view_id,
            subgroup,
            shard,
            part,
            last,
            state,
        } => {
            sink.buf().put_u8(TAG_STATE);
            sink.buf().put_u32_le(*view_id);
            sink.buf().put_u32_le(*subgroup);
            sink.buf().put_u32_le(*shard);
            sink.buf().put_u32_le(*part);
            sink.buf().put_u8(u8::from(*last));
            put_len(sink.buf(), state.len());
            sink.payload(state);
        }
        Wire::Evicted { view_id } => {
            sink.buf().put_u8(TAG_EVICTED);
            sink.buf().put_u32_le(*view_id);
        }
        Wire::RestartHello { logged } => {
            sink.buf().put_u8(TAG_RESTART_HELLO);
            put_logged_state(sink.buf(), logged);
        }
        Wire::RestartClaim { ballot } => {
            sink.buf().put_u8(TAG_RESTART_CLAIM);
            put_ballot(sink.buf(), ballot);
        }
        Wire::RestartPrepare { plan } => {
            sink.buf().put_u8(TAG_RESTART_PREPARE);
            put_restart_plan(sink.buf(), plan);
        }
        Wire::RestartAck { view_id, ballot } => {
            sink.buf().put_u8(TAG_RESTART_ACK);
            sink.buf().put_u32_le(*view_id);
            put_ballot(sink.buf(), ballot);
        }
        Wire::RestartCommit { view_id, ballot } => {
            sink.buf().put_u8(TAG_RESTART_COMMIT);
            sink.buf().put_u32_le(*view_id);
            put_ballot(sink.buf(), ballot);
        }
        Wire::StateWanted {
            view_id,
            subgroup,
            after,
        } => {
            sink.buf().put_u8(TAG_STATE_WANTED);
            sink.buf().put_u32_le(*view_id);
            sink.buf().put_u32_le(*subgroup);
            put_version(sink.buf(), *after);
        }
        Wire::StateAck {
            view_id,
            subgroup,
            part,
        } => {
            sink.buf().put_u8(TAG_STATE_ACK);
            sink.buf().put_u32_le(*view_id);
            sink.buf().put_u32_le(*subgroup);
            sink.buf().put_u32_le(*part);
        }
        Wire::ReadProbe { view_id, round } => {
            sink.buf().put_u8(TAG_READ_PROBE);
            sink.buf().put_u32_le(*view_id);
            sink.buf().put_u64_le(*round);
        }
        Wire::ReadProbeAck {
            view_id,
            round,
            lease,
        } => {
            sink.buf().put_u8(TAG_READ_PROBE_ACK);
            sink.buf().put_u32_le(*view_id);
            sink.buf().put_u64_le(*round);
            sink.buf().put_u8(u8::from(*lease));
        }
    }
}

/// The encoded size of `msg`, to size a buffer or check a frame limit before encoding.
/// Payload bytes are counted, not copied.
pub fn encoded_len(msg: &Wire) -> usize {
    struct Counter {
        headers: BytesMut,
        payload_bytes: usize,
    }
    impl Sink for Counter {
        fn buf(&mut self) -> &mut BytesMut {
            &mut self.headers
        }
        fn payload(&mut self, payload: &Bytes) {
            self.payload_bytes += payload.len();
        }
    }
    let mut counter = Counter {
        headers: BytesMut::new(),
        payload_bytes: 0,
    };
    encode_into(msg, &mut counter);
    counter.headers.len() + counter.payload_bytes
}

/// Decodes one whole message; `frame` must hold exactly one.
pub fn decode(frame: Bytes, limits: &DecodeLimits) -> Result<Wire, DecodeError> {
    let mut r = Reader {
        buf: frame,
        limits: *limits,
    };
    let msg = match r.u8("message tag")? {
        TAG_UPDATE => {
            let view_id = r.u32("view id")?;
            let runs = r.count("data runs", 13, limits.items_max)?;
            let mut data = Vec::with_capacity(runs);
            for _ in 0..runs {
                let subgroup = r.u32("run subgroup")?;
                let first_index = r.u64("run first index")?;
                let items = r.count("run items", 5, limits.items_max)?;
                let mut list = Vec::with_capacity(items);
                for _ in 0..items {
                    list.push(match r.u8("item tag")? {
                        ITEM_MESSAGE => Item::Message(r.blob("message payload")?),
                        ITEM_NULLS => Item::Nulls(r.u32("null count")?),
                        tag => return Err(DecodeError::UnknownTag { what: "item", tag }),
                    });
                }
                data.push(DataRun {
                    subgroup,
                    first_index,
                    items: list,
                });
            }
            let row = if r.flag("row presence")? {
                Some(Arc::new(r.row()?))
            } else {
                None
            };
            Wire::Update { view_id, data, row }
        }
        TAG_JOIN_REQUEST => Wire::JoinRequest,
        TAG_REDIRECT => Wire::Redirect {
            leader: r.u32("leader")?,
        },
        TAG_WELCOME => Wire::Welcome {
            view: Arc::new(r.view()?),
        },
        TAG_STATE => Wire::State {
            view_id: r.u32("view id")?,
            subgroup: r.u32("subgroup")?,
            shard: r.u32("shard")?,
            part: r.u32("state part")?,
            last: r.flag("last state part flag")?,
            state: r.blob("state")?,
        },
        TAG_EVICTED => Wire::Evicted {
            view_id: r.u32("view id")?,
        },
        TAG_RESTART_HELLO => Wire::RestartHello {
            logged: r.logged_state()?,
        },
        TAG_RESTART_CLAIM => Wire::RestartClaim {
            ballot: r.ballot()?,
        },
        TAG_RESTART_PREPARE => Wire::RestartPrepare {
            plan: Arc::new(r.restart_plan()?),
        },
        TAG_RESTART_ACK => Wire::RestartAck {
            view_id: r.u32("view id")?,
            ballot: r.ballot()?,
        },
        TAG_RESTART_COMMIT => Wire::RestartCommit {
            view_id: r.u32("view id")?,
            ballot: r.ballot()?,
        },
        TAG_STATE_WANTED => Wire::StateWanted {
            view_id: r.u32("view id")?,
            subgroup: r.u32("subgroup")?,
            after: r.version("state wanted after")?,
        },
        TAG_STATE_ACK => Wire::StateAck {
            view_id: r.u32("view id")?,
            subgroup: r.u32("subgroup")?,
            part: r.u32("state part")?,
        },
        TAG_READ_PROBE => Wire::ReadProbe {
            view_id: r.u32("view id")?,
            round: r.u64("probe round")?,
        },
        TAG_READ_PROBE_ACK => Wire::ReadProbeAck {
            view_id: r.u32("view id")?,
            round: r.u64("probe round")?,
            lease: r.flag("lease")?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "message",
                tag,
            });
        }
    };
    if r.buf.has_remaining() {
        return Err(DecodeError::Trailing(r.buf.remaining()));
    }
    Ok(msg)
}

fn put_len(out: &mut BytesMut, len: usize) {
    let len = u32::try_from(len).expect("lengths are bounded far below 4 GiB by config");
    out.put_u32_le(len);
}

fn put_member(out: &mut BytesMut, m: MemberId) {
    out.put_u32_le(m.node);
    out.put_u32_le(m.incarnation);
}

fn put_members(out: &mut BytesMut, members: &[MemberId]) {
    put_len(out, members.len());
    for m in members {
        put_member(out, *m);
    }
}

fn put_ballot(out: &mut BytesMut, b: &Ballot) {
    out.put_u64_le(b.round);
    put_member(out, b.leader);
}

fn put_counts(out: &mut BytesMut, counts: &[u64]) {
    put_len(out, counts.len());
    for c in counts {
        out.put_u64_le(*c);
    }
}

fn put_row(out: &mut BytesMut, row: &Row) {
    out.put_u32_le(row.view_id);
    put_len(out, row.suspected.len());
    for s in &row.suspected {
        out.put_u8(u8::from(*s));
    }
    out.put_u8(u8::from(row.leaving));
    out.put_u8(u8::from(row.roll_requested));
    out.put_u8(u8::from(row.wedged));
    match &row.proposal {
        Some(p) => {
            out.put_u8(1);
            put_ballot(out, &p.ballot);
            out.put_u32_le(p.view_id);
            put_members(out, &p.change.failed);
            put_members(out, &p.change.left);
            put_members(out, &p.change.joined);
            put_len(out, p.change.stateless.len());
            for (m, g) in &p.change.stateless {
                put_member(out, *m);
                out.put_u32_le(*g);
            }
        }
        None => out.put_u8(0),
    }
    match &row.committed {
        Some(b) => {
            out.put_u8(1);
            put_ballot(out, b);
        }
        None => out.put_u8(0),
    }
    put_len(out, row.shards.len());
    for shard in &row.shards {
        let Some(s) = shard else {
            out.put_u8(0);
            continue;
        };
        out.put_u8(1);
        put_counts(out, &s.received);
        out.put_u64_le(s.seq_received);
        out.put_u64_le(s.delivered);
        match s.persisted {
            Some(v) => {
                out.put_u8(1);
                out.put_u64_le(v.0);
            }
            None => out.put_u8(0),
        }
        out.put_u8(u8::from(s.flush_ready));
        match &s.trim {
            Some(t) => {
                out.put_u8(1);
                put_ballot(out, &t.ballot);
                put_counts(out, &t.received);
            }
            None => out.put_u8(0),
        }
        out.put_u8(u8::from(s.done));
        out.put_u8(u8::from(s.awaiting_state));
    }
}

fn put_version(out: &mut BytesMut, version: Option<Version>) {
    match version {
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v.0);
        }
        None => out.put_u8(0),
    }
}

fn put_logged_state(out: &mut BytesMut, logged: &LoggedState) {
    match &logged.view {
        Some(view) => {
            out.put_u8(1);
            put_view(out, view);
        }
        None => out.put_u8(0),
    }
    match &logged.acked {
        Some((ballot, view)) => {
            out.put_u8(1);
            put_ballot(out, ballot);
            put_view(out, view);
        }
        None => out.put_u8(0),
    }
    match &logged.promised {
        Some(ballot) => {
            out.put_u8(1);
            put_ballot(out, ballot);
        }
        None => out.put_u8(0),
    }
    put_len(out, logged.tails.len());
    for t in &logged.tails {
        out.put_u32_le(t.subgroup);
        out.put_u32_le(t.shard);
        out.put_u64_le(t.version.0);
    }
    put_len(out, logged.fed.len());
    for f in &logged.fed {
        out.put_u32_le(f.view_id);
        out.put_u32_le(f.subgroup);
        out.put_u32_le(f.shard);
    }
}

fn put_restart_plan(out: &mut BytesMut, plan: &RestartPlan) {
    put_ballot(out, &plan.ballot);
    put_view(out, &plan.view);
    put_len(out, plan.shards.len());
    for shards in &plan.shards {
        put_len(out, shards.len());
        for s in shards {
            put_version(out, s.trim);
            put_version(out, s.joiners_hold);
        }
    }
}

fn put_view(out: &mut BytesMut, view: &View) {
    out.put_u32_le(view.id);
    put_members(out, &view.members);
    put_members(out, &view.joined);
    put_members(out, &view.failed);
    put_members(out, &view.left);
    put_len(out, view.shards.len());
    for shards in &view.shards {
        put_len(out, shards.len());
        for sv in shards {
            put_members(out, &sv.members);
            out.put_u8(match sv.mode {
                DeliveryMode::Ordered => 0,
                DeliveryMode::Raw => 1,
            });
            put_members(out, &sv.joined);
            match sv.state_source {
                Some(m) => {
                    out.put_u8(1);
                    put_member(out, m);
                }
                None => out.put_u8(0),
            }
        }
    }
}

struct Reader {
    buf: Bytes,
    limits: DecodeLimits,
}

impl Reader {
    fn need(&self, bytes: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < bytes {
            return Err(DecodeError::Truncated { what });
        }
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Invalid {
                what,
                value: u64::from(other),
            }),
        }
    }

    /// A count of elements of at least `element_bytes` each: bounded by the limit and by
    /// what the frame can still hold, so no allocation exceeds the frame's own size.
    fn count(
        &mut self,
        what: &'static str,
        element_bytes: usize,
        max: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(DecodeError::TooMany {
                what,
                count: count as u64,
                max,
            });
        }
        self.need(count.saturating_mul(element_bytes), what)?;
        Ok(count)
    }

    fn blob(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.count(what, 1, self.limits.payload_bytes_max)?;
        Ok(self.buf.split_to(len))
    }

    fn member(&mut self) -> Result<MemberId, DecodeError> {
        Ok(MemberId::new(
            self.u32("member node")?,
            self.u32("member incarnation")?,
        ))
    }

    fn members(&mut self, what: &'static str) -> Result<Vec<MemberId>, DecodeError> {
        let n = self.count(what, 8, self.limits.members_max)?;
        (0..n).map(|_| self.member()).collect()
    }

    fn ballot(&mut self) -> Result<Ballot, DecodeError> {
        Ok(Ballot {
            round: self.u64("ballot round")?,
            leader: self.member()?,
        })
    }

    fn counts(&mut self, what: &'static str) -> Result<Vec<u64>, DecodeError> {
        let n = self.count(what, 8, self.limits.members_max)?;
        (0..n).map(|_| self.u64(what)).collect()
    }

    fn row(&mut self) -> Result<Row, DecodeError> {
        let view_id = self.u32("row view id")?;
        let n = self.count("suspicions", 1, self.limits.members_max)?;
        let suspected = (0..n)
            .map(|_| self.flag("suspicion"))
            .collect::<Result<Vec<bool>, _>>()?;
        let leaving = self.flag("leaving")?;
        let roll_requested = self.flag("roll requested")?;
        let wedged = self.flag("wedged")?;
        let proposal = if self.flag("proposal presence")? {
            let ballot = self.ballot()?;
            let view_id = self.u32("proposal view id")?;
            let failed = self.members("failed members")?;
            let left = self.members("left members")?;
            let joined = self.members("joined members")?;
            let k = self.count("stateless members", 12, self.limits.members_max)?;
            let stateless = (0..k)
                .map(|_| Ok((self.member()?, self.u32("stateless subgroup")?)))
                .collect::<Result<Vec<_>, DecodeError>>()?;
            Some(Arc::new(Proposal {
                ballot,
                view_id,
                change: Change {
                    failed,
                    left,
                    joined,
                    stateless,
                },
            }))
        } else {
            None
        };
        let committed = if self.flag("commit presence")? {
            Some(self.ballot()?)
        } else {
            None
        };
        let subgroups = self.count("row subgroups", 1, self.limits.shards_max)?;
        let mut shards = Vec::with_capacity(subgroups);
        for _ in 0..subgroups {
            if !self.flag("shard row presence")? {
                shards.push(None);
                continue;
            }
            let received = self.counts("received counts")?;
            let seq_received = self.u64("seq received")?;
            let delivered = self.u64("delivered")?;
            let persisted = if self.flag("persisted presence")? {
                Some(Version(self.u64("persisted version")?))
            } else {
                None
            };
            let flush_ready = self.flag("flush ready")?;
            let trim = if self.flag("trim presence")? {
                let ballot = self.ballot()?;
                let received = self.counts("trim counts")?;
                Some(Arc::new(Trim { ballot, received }))
            } else {
                None
            };
            let done = self.flag("done")?;
            let awaiting_state = self.flag("awaiting state")?;
            shards.push(Some(ShardRow {
                received,
                seq_received,
                delivered,
                persisted,
                flush_ready,
                trim,
                done,
                awaiting_state,
            }));
        }
        Ok(Row {
            view_id,
            suspected,
            leaving,
            roll_requested,
            wedged,
            proposal,
            committed,
            shards,
        })
    }

    fn version(&mut self, what: &'static str) -> Result<Option<Version>, DecodeError> {
        Ok(if self.flag(what)? {
            Some(Version(self.u64(what)?))
        } else {
            None
        })
    }

    fn logged_state(&mut self) -> Result<LoggedState, DecodeError> {
        let view = if self.flag("logged view presence")? {
            Some(Arc::new(self.view()?))
        } else {
            None
        };
        let acked = if self.flag("acked view presence")? {
            let ballot = self.ballot()?;
            Some((ballot, Arc::new(self.view()?)))
        } else {
            None
        };
        let promised = if self.flag("promised ballot presence")? {
            Some(self.ballot()?)
        } else {
            None
        };
        let n = self.count("shard tails", 16, self.limits.shards_max)?;
        let tails = (0..n)
            .map(|_| {
                Ok(ShardTail {
                    subgroup: self.u32("tail subgroup")?,
                    shard: self.u32("tail shard")?,
                    version: Version(self.u64("tail version")?),
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let n = self.count("fed shards", 12, self.limits.shards_max)?;
        let fed = (0..n)
            .map(|_| {
                Ok(ShardFed {
                    view_id: self.u32("fed view id")?,
                    subgroup: self.u32("fed subgroup")?,
                    shard: self.u32("fed shard")?,
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        Ok(LoggedState {
            view,
            acked,
            promised,
            tails,
            fed,
        })
    }

    fn restart_plan(&mut self) -> Result<RestartPlan, DecodeError> {
        let ballot = self.ballot()?;
        let view = Arc::new(self.view()?);
        let subgroups = self.count("restart subgroups", 4, self.limits.shards_max)?;
        let mut shards = Vec::with_capacity(subgroups);
        for _ in 0..subgroups {
            let n = self.count("restart shards", 2, self.limits.shards_max)?;
            let list = (0..n)
                .map(|_| {
                    Ok(RestartShard {
                        trim: self.version("restart trim")?,
                        joiners_hold: self.version("restart joiners hold")?,
                    })
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            shards.push(list);
        }
        Ok(RestartPlan {
            ballot,
            view,
            shards,
        })
    }

    fn view(&mut self) -> Result<View, DecodeError> {
        let id = self.u32("view id")?;
        let members = self.members("view members")?;
        let joined = self.members("view joined")?;
        let failed = self.members("view failed")?;
        let left = self.members("view left")?;
        let subgroups = self.count("view subgroups", 4, self.limits.shards_max)?;
        let mut shards = Vec::with_capacity(subgroups);
        for _ in 0..subgroups {
            let n = self.count("subgroup shards", 10, self.limits.shards_max)?;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                let members = self.members("shard members")?;
                let mode = match self.u8("delivery mode")? {
                    0 => DeliveryMode::Ordered,
                    1 => DeliveryMode::Raw,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "delivery mode",
                            tag,
                        });
                    }
                };
                let joined = self.members("shard joined")?;
                let state_source = if self.flag("state source presence")? {
                    Some(self.member()?)
                } else {
                    None
                };
                list.push(ShardView {
                    members,
                    mode,
                    joined,
                    state_source,
                });
            }
            shards.push(list);
        }
        Ok(View {
            id,
            members,
            joined,
            failed,
            left,
            shards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(node: u32) -> MemberId {
        MemberId::new(node, node + 1)
    }

    fn samples() -> Vec<Wire> {
        let ballot = Ballot {
            round: 7,
            leader: m(0),
        };
        let row = Row {
            view_id: 3,
            suspected: vec![false, true, false],
            leaving: true,
            roll_requested: false,
            wedged: true,
            proposal: Some(Arc::new(Proposal {
                ballot,
                view_id: 3,
                change: Change {
                    failed: vec![m(1)],
                    left: vec![],
                    joined: vec![m(5)],
                    stateless: vec![(m(2), 1)],
                },
            })),
            committed: Some(ballot),
            shards: vec![
                None,
                Some(ShardRow {
                    received: vec![4, 5],
                    seq_received: 9,
                    delivered: 8,
                    persisted: Some(Version::new(3, 7)),
                    flush_ready: true,
                    trim: Some(Arc::new(Trim {
                        ballot,
                        received: vec![4, 4],
                    })),
                    done: false,
                    awaiting_state: true,
                }),
            ],
        };
        let view = View {
            id: 4,
            members: vec![m(0), m(2), m(5)],
            joined: vec![m(5)],
            failed: vec![m(1)],
            left: vec![],
            shards: vec![vec![
                ShardView {
                    members: vec![m(0), m(5)],
                    mode: DeliveryMode::Ordered,
                    joined: vec![m(5)],
                    state_source: Some(m(0)),
                },
                ShardView {
                    members: vec![m(2)],
                    mode: DeliveryMode::Raw,
                    joined: vec![],
                    state_source: None,
                },
            ]],
        };
        vec![
            Wire::Update {
                view_id: 3,
                data: vec![DataRun {
                    subgroup: 1,
                    first_index: 42,
                    items: vec![
                        Item::Message(Bytes::from_static(b"hello")),
                        Item::Nulls(3),
                        Item::Message(Bytes::new()),
                    ],
                }],
                row: Some(Arc::new(row)),
            },
            Wire::Update {
                view_id: 0,
                data: vec![],
                row: None,
            },
            Wire::JoinRequest,
            Wire::Redirect { leader: 9 },
            Wire::Welcome {
                view: Arc::new(view.clone()),
            },
            Wire::State {
                view_id: 4,
                subgroup: 0,
                shard: 1,
                part: 2,
                last: false,
                state: Bytes::from(vec![7u8; 1000]),
            },
            Wire::State {
                view_id: 4,
                subgroup: 0,
                shard: 1,
                part: 3,
                last: true,
                state: Bytes::new(),
            },
            Wire::StateAck {
                view_id: 4,
                subgroup: 1,
                part: 77,
            },
            Wire::StateWanted {
                view_id: 7,
                subgroup: 2,
                after: Some(Version::new(3, 9)),
            },
            Wire::StateWanted {
                view_id: 7,
                subgroup: 0,
                after: None,
            },
            Wire::Evicted { view_id: 12 },
            Wire::RestartHello {
                logged: LoggedState {
                    view: Some(Arc::new(view.clone())),
                    acked: Some((
                        Ballot {
                            round: u64::MAX,
                            leader: MemberId::new(3, 9),
                        },
                        Arc::new(view.clone()),
                    )),
                    promised: Some(Ballot {
                        round: u64::MAX - 3,
                        leader: MemberId::new(2, 4),
                    }),
                    tails: vec![ShardTail {
                        subgroup: 0,
                        shard: 1,
                        version: Version::new(4, 17),
                    }],
                    fed: vec![ShardFed {
                        view_id: 4,
                        subgroup: 1,
                        shard: 0,
                    }],
                },
            },
            Wire::RestartHello {
                logged: LoggedState::default(),
            },
            Wire::RestartClaim {
                ballot: Ballot {
                    round: (1 << 63) + 2,
                    leader: MemberId::new(1, 3),
                },
            },
            Wire::RestartAck {
                view_id: 5,
                ballot: Ballot {
                    round: (1 << 63) + 4,
                    leader: MemberId::new(2, 7),
                },
            },
            Wire::RestartCommit {
                view_id: 5,
                ballot: Ballot {
                    round: (1 << 63) + 5,
                    leader: MemberId::new(1, 1),
                },
            },
            Wire::ReadProbe {
                view_id: 5,
                round: 77,
            },
            Wire::ReadProbeAck {
                view_id: 5,
                round: u64::MAX,
                lease: true,
            },
            Wire::ReadProbeAck {
                view_id: 5,
                round: 1,
                lease: false,
            },
            Wire::RestartPrepare {
                plan: Arc::new(RestartPlan {
                    ballot: Ballot {
                        round: (1 << 63) + 1,
                        leader: MemberId::new(0, 2),
                    },
                    view: Arc::new(view.clone()),
                    shards: vec![vec![
                        RestartShard {
                            trim: Some(Version::new(4, 20)),
                            joiners_hold: None,
                        },
                        RestartShard::default(),
                    ]],
                }),
            },
        ]
    }

    #[test]
    fn every_message_kind_round_trips_and_reports_its_length() {
        for msg in samples() {
            let mut buf = BytesMut::new();
            encode(&msg, &mut buf);
            assert_eq!(encoded_len(&msg), buf.len(), "{msg:?}");
            let back = decode(buf.freeze(), &DecodeLimits::default()).expect("decodes");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn parts_concatenate_to_the_encoding_and_share_large_payloads() {
        let big = Bytes::from(vec![3u8; INLINE_PAYLOAD_BYTES_MAX]);
        let mut msgs = samples();
        msgs.push(Wire::Update {
            view_id: 1,
            data: vec![DataRun {
                subgroup: 0,
                first_index: 0,
                items: vec![
                    Item::Message(Bytes::from_static(b"small")),
                    Item::Message(big.clone()),
                    Item::Nulls(2),
                    Item::Message(big.clone()),
                ],
            }],
            row: None,
        });
        let mut scratch = BytesMut::new();
        for msg in msgs {
            let mut flat = BytesMut::new();
            encode(&msg, &mut flat);
            let mut parts = Vec::new();
            let total = encode_parts(&msg, &mut scratch, &mut parts);
            assert_eq!(total, flat.len());
            assert_eq!(parts.concat(), flat.to_vec(), "{msg:?}");
        }
        let msg = Wire::State {
            view_id: 0,
            subgroup: 0,
            shard: 0,
            part: 0,
            last: true,
            state: big.clone(),
        };
        let mut parts = Vec::new();
        encode_parts(&msg, &mut scratch, &mut parts);
        assert!(
            parts.iter().any(|p| p.as_ptr() == big.as_ptr()),
            "a large payload was copied"
        );
    }

    #[test]
    fn payloads_are_slices_of_the_frame() {
        let msg = &samples()[0];
        let mut buf = BytesMut::new();
        encode(msg, &mut buf);
        let frame = buf.freeze();
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        let Ok(Wire::Update { data, .. }) = decode(frame.clone(), &DecodeLimits::default()) else {
            panic!("an update");
        };
        let Item::Message(payload) = &data[0].items[0] else {
            panic!("a message");
        };
        assert!(
            range.contains(&(payload.as_ptr() as usize)),
            "payload was copied"
        );
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_a_typed_error() {
        for msg in samples() {
            let mut buf = BytesMut::new();
            encode(&msg, &mut buf);
            let full = buf.freeze();
            for cut in 0..full.len() {
                let result = decode(full.slice(..cut), &DecodeLimits::default());
                assert!(
                    result.is_err(),
                    "{msg:?} cut at {cut} decoded as {result:?}"
                );
            }
            let mut longer = BytesMut::from(&full[..]);
            longer.put_u8(0);
            assert_eq!(
                decode(longer.freeze(), &DecodeLimits::default()),
                Err(DecodeError::Trailing(1))
            );
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // An update claiming 4 billion runs in a 9-byte frame.
        let mut buf = BytesMut::new();
        buf.put_u8(TAG_UPDATE);
        buf.put_u32_le(0);
        buf.put_u32_le(u32::MAX);
        let err = decode(buf.freeze(), &DecodeLimits::default()).expect_err("refused");
        assert!(matches!(err, DecodeError::TooMany { .. }), "{err}");

        let mut buf = BytesMut::new();
        buf.put_u8(TAG_STATE);
        buf.put_u32_le(0);
        buf.put_u32_le(0);
        buf.put_u32_le(0);
        buf.put_u32_le(0);
        buf.put_u8(1);
        buf.put_u32_le(1 << 20);
        let limits = DecodeLimits {
            payload_bytes_max: 1 << 10,
            ..DecodeLimits::default()
        };
        let err = decode(buf.freeze(), &limits).expect_err("refused");
        assert_eq!(
            err,
            DecodeError::TooMany {
                what: "state",
                count: 1 << 20,
                max: 1 << 10
            }
        );
    }

    #[test]
    fn a_state_part_with_a_bad_last_flag_is_refused() {
        let mut buf = BytesMut::new();
        encode(
            &Wire::State {
                view_id: 1,
                subgroup: 0,
                shard: 0,
                part: 3,
                last: true,
                state: Bytes::from_static(b"x"),
            },
            &mut buf,
        );
        // tag, view, subgroup, shard, part, then the flag.
        buf[1 + 4 * 4] = 2;
        let err = decode(buf.freeze(), &DecodeLimits::default()).expect_err("refused");
        assert!(
            matches!(err, DecodeError::Invalid { value: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_tags_are_named() {
        let err = decode(Bytes::from_static(&[99]), &DecodeLimits::default()).expect_err("bad");
        assert_eq!(
            err,
            DecodeError::UnknownTag {
                what: "message",
                tag: 99
            }
        );
    }
}
