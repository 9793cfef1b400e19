//! The operations a shard applies in delivery order, and their binary encoding (the
//! payload multicast through `squall-platform` and kept in the log). The blob is the last
//! field and is decoded as a slice of the delivered buffer: applying a put copies no
//! object bytes.
//!
//! Layout (little-endian): `tag: u8`, then per kind the fields below; strings are
//! `len: u32` + UTF-8; the blob is `len: u32` + bytes, last.
//!
//! Compatibility: a pool creation whose spec uses an option added after the first
//! layout (`gpu_cache`) is written under its own tag, [`TAG_CREATE_POOL_EXTENDED`], as
//! the original spec followed by an extension section ([`PoolSpecLayout::Extended`]); a
//! spec without such options is still written under the original tag, byte for byte as
//! before. So every log written before decodes unchanged, and a truncated extended
//! operation is an error rather than a valid older one (which a trailing optional
//! section would have allowed). A node of an older build refuses the new tag loudly
//! instead of silently dropping the option. Likewise a put, remove, pool drop or
//! end-of-drop naming a pool generation sets [`TAG_GENERATION`] in its tag and carries
//! the generation after the message id; without one (0) it is written as before.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_platform::Version;
use thiserror::Error;

use crate::pool::{GpuCache, PoolSpec, StoreKind};

/// Identifies one client request; a retried request carries the same id, and a shard
/// applies an id once (the retry gets the first answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub client: u64,
    pub seq: u64,
}

/// A precondition checked when the operation is applied (in order, identically at every
/// replica).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Condition {
    #[default]
    Always,
    /// The key's latest version is this one (`None`: the key does not exist).
    KeyVersion(Option<Version>),
    /// The shard's latest version is this one (nothing was applied to the shard since).
    ShardVersion(Option<Version>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        id: MessageId,
        /// The sender's clock; the store makes timestamps increase along the shard.
        hlc_us: u64,
        condition: Condition,
        /// The generation of the key's pool this write was made for
        /// ([`PoolSpec::generation`]): the node refuses it unless that is the pool's
        /// generation now, and the shard refuses it once that generation was dropped
        /// (`DropPool`), so a write racing its pool's removal cannot outlive it. 0 only in
        /// logs written before generations (not checked).
        pool_generation: u64,
        key: String,
        blob: Bytes,
    },
    Remove {
        id: MessageId,
        hlc_us: u64,
        condition: Condition,
        /// As for `Put`.
        pool_generation: u64,
        key: String,
    },
    /// An ordered read: its delivery marks the point where a `multi_get` reads.
    Read {
        id: MessageId,
    },
    CreatePool {
        id: MessageId,
        spec: PoolSpec,
    },
    RemovePool {
        id: MessageId,
        path: String,
    },
    /// Stores (or replaces) a UDL plugin library, named by the UUID it exports; its
    /// xxh3-64 `checksum` is checked by every node before it loads the plugin.
    PutUdl {
        id: MessageId,
        uuid: String,
        name: String,
        checksum: u64,
        plugin: Bytes,
    },
    RemoveUdl {
        id: MessageId,
        uuid: String,
    },
    /// Adds the data-flow graphs of a Cascade `dfgs.json` text (replacing DFGs with the
    /// same ids).
    AddDfgs {
        id: MessageId,
        json: Bytes,
    },
    RemoveDfg {
        id: MessageId,
        dfg: String,
    },
    /// In a data shard: the member `member` (node << 32 | incarnation) has run, and
    /// written the outputs of, every `one`-dispatched UDL it was assigned for inputs
    /// below version `below`. Replicas forget those inputs; the rest they re-run if the
    /// member fails.
    UdlDone {
        id: MessageId,
        member: u64,
        below: u64,
    },
    /// A UDL output bound for a pool of another cluster (`site`), kept in this cluster's
    /// WAN outbox until the remote side has applied it. Routed (and sharded) by
    /// [`outbox_key`]`(site, key)` in the [`OUTBOX_POOL`]; every replica queues it, the
    /// shard's first member forwards it.
    OutboxPut {
        id: MessageId,
        hlc_us: u64,
        site: String,
        /// How the remote side receives it: a stored put, or a `trigger_put`.
        trigger: bool,
        /// The key at the remote cluster.
        key: String,
        blob: Bytes,
    },
    /// In an outbox shard: everything queued for `site` below version `below` was applied
    /// by the remote cluster; replicas drop it.
    OutboxDone {
        id: MessageId,
        site: String,
        below: u64,
    },
    /// In the metadata shard: node `node`'s data disk has `free_bytes` left, under its
    /// reserve of `reserve_bytes` (`low`), or back above it (not `low`). While a node is
    /// low, writes it would have to log (to a persistent shard it holds, to the metadata)
    /// are refused with `StorageFull` at every node, before its disk fills.
    StorageAlarm {
        id: MessageId,
        node: u32,
        low: bool,
        free_bytes: u64,
        reserve_bytes: u64,
    },
    /// In a persistent shard: forget the history of pool `pool`'s keys before
    /// `before_us`. Each replica finds the same point in its store (the newest write
    /// under the pool stamped at or before `before_us`); each key keeps its later versions,
    /// or, if it was not written since, its value then, and the rest is dropped (a key
    /// removed by then whole). Reads of the past that needed it answer `Compacted`. `shard` names the
    /// shard the sender addressed (a pool spreads over several), so a node that holds
    /// another one can refuse it.
    Compact {
        id: MessageId,
        pool: String,
        shard: u32,
        before_us: u64,
    },
    /// In a data shard: drop every object under pool path `pool` with its history (and
    /// the pool's compaction horizon), as of this point of the shard's order. Sent to each
    /// shard of a pool's subgroup after the pool is removed (to free what it held) and
    /// before a pool is created there (so a pool made again at a path starts empty, not
    /// with what an earlier pool of that path left). `shard` as for `Compact`.
    ///
    /// `generation` is the removed pool's: the shard remembers it, refuses the writes of
    /// that generation (or older) that arrive after it, and applies a second drop of it
    /// (a second remover's) as a no-op, which could otherwise drop a newer pool's first
    /// writes. 0 only in logs written before generations (drops, remembers nothing).
    DropPool {
        id: MessageId,
        pool: String,
        shard: u32,
        generation: u64,
    },
    /// In the metadata: removed pool `path`'s objects are dropped from every shard
    /// (`DropPool`), so a pool may be made at the path again. Ends the removal of
    /// `generation` only (0: whichever, as logs written before generations say).
    PoolDropped {
        id: MessageId,
        path: String,
        generation: u64,
    },
    /// In the metadata: every node writes a checkpoint of the cluster's metadata (pools,
    /// UDLs, DFGs, storage alarms) as of this point, and once it is durable everywhere
    /// drops the metadata log before it. Sent by the metadata's first member when the
    /// log has grown past `limits.metadata_log_compact_bytes` since the last one.
    CompactMetadata {
        id: MessageId,
    },
}

/// The pool holding the WAN outboxes (one persistent pool; its path is reserved).
pub const OUTBOX_POOL: &str = "/.squall/outbox";

/// The key an outbox entry is routed and sharded by: one remote key's entries share a
/// shard, so they are forwarded in the order they were written.
pub fn outbox_key(site: &str, key: &str) -> String {
    format!("{OUTBOX_POOL}/{site}/{}", key.trim_start_matches('/'))
}

impl Op {
    pub fn id(&self) -> MessageId {
        match self {
            Op::Put { id, .. }
            | Op::Remove { id, .. }
            | Op::Read { id }
            | Op::CreatePool { id, .. }
            | Op::RemovePool { id, .. }
            | Op::PutUdl { id, .. }
            | Op::RemoveUdl { id, .. }
            | Op::AddDfgs { id, .. }
            | Op::RemoveDfg { id, .. }
            | Op::UdlDone { id, .. }
            | Op::OutboxPut { id, .. }
            | Op::OutboxDone { id, .. }
            | Op::StorageAlarm { id, .. }
            | Op::Compact { id, .. }
            | Op::DropPool { id, .. }
            | Op::PoolDropped { id, .. }
            | Op::CompactMetadata { id } => *id,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpError {
    #[error("operation ends inside {what}")]
    Truncated { what: &'static str },
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{0} bytes after the operation")]
    Trailing(usize),
    /// A generation is written only when there is one: 0 there is malformed.
    #[error("a pool generation of 0 in {what}")]
    ZeroGeneration { what: &'static str },
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

const TAG_PUT: u8 = 1;
const TAG_REMOVE: u8 = 2;
const TAG_READ: u8 = 3;
const TAG_CREATE_POOL: u8 = 4;
const TAG_REMOVE_POOL: u8 = 5;
const TAG_PUT_UDL: u8 = 6;
const TAG_REMOVE_UDL: u8 = 7;
const TAG_ADD_DFGS: u8 = 8;
const TAG_REMOVE_DFG: u8 = 9;
const TAG_UDL_DONE: u8 = 10;
const TAG_OUTBOX_PUT: u8 = 11;
const TAG_OUTBOX_DONE: u8 = 12;
/// A pool creation whose spec has extensions (see the module doc).
pub const TAG_CREATE_POOL_EXTENDED: u8 = 13;
const TAG_STORAGE_ALARM: u8 = 14;
const TAG_COMPACT: u8 = 15;
const TAG_DROP_POOL: u8 = 16;
const TAG_POOL_DROPPED: u8 = 17;
const TAG_COMPACT_METADATA: u8 = 18;
/// Set in the tag of a put, remove, `DropPool` or `PoolDropped` that names a pool
/// generation, which follows the message id (see the module doc). Every tag is below it.
pub const TAG_GENERATION: u8 = 0x80;

/// The bits of a pool spec's extension section (`extensions: u8`); unknown bits are
/// refused.
const POOL_EXTENSION_GPU_CACHE: u8 = 1 << 0;
const POOL_EXTENSION_GENERATION: u8 = 1 << 1;
const POOL_EXTENSIONS_KNOWN: u8 = POOL_EXTENSION_GPU_CACHE | POOL_EXTENSION_GENERATION;

/// Bounds on decoded strings and collections: a frame costs at most its own size.
const STRING_BYTES_MAX: usize = 64 << 10;
const OVERRIDES_MAX: usize = 1 << 16;

pub fn encode(op: &Op) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    let tail = encode_into(op, &mut out, true);
    debug_assert!(tail.is_none(), "an inline encoding leaves no tail");
    out.freeze()
}

/// An operation's encoding as `(head, tail)`, to be laid end to end: the value of a put
/// (and of the other operations ending in a blob) is the tail, the caller's own buffer,
/// so a large value reaches the socket without being copied. Other operations have an
/// empty tail.
pub fn encode_split(op: &Op) -> (Bytes, Bytes) {
    let mut out = BytesMut::with_capacity(64);
    let tail = encode_into(op, &mut out, false);
    (out.freeze(), tail.unwrap_or_default())
}

/// Writes `op` to `out`; its trailing blob too if `inline`, else the blob is returned
/// (its length is written: the blob is the encoding's last field).
fn encode_into(op: &Op, out: &mut BytesMut, inline: bool) -> Option<Bytes> {
    let mut tail = None;
    let mut blob_field = |out: &mut BytesMut, blob: &Bytes| {
        out.put_u32_le(blob.len() as u32);
        if inline {
            out.reserve(blob.len());
            out.put_slice(blob);
        } else {
            tail = Some(blob.clone());
        }
    };
    match op {
        Op::Put {
            id,
            hlc_us,
            condition,
            pool_generation,
            key,
            blob,
        } => {
            put_tag_id(out, TAG_PUT, *id, *pool_generation);
            out.put_u64_le(*hlc_us);
            put_condition(out, *condition);
            put_str(out, key);
            blob_field(out, blob)
        }
        Op::Remove {
            id,
            hlc_us,
            condition,
            pool_generation,
            key,
        } => {
            put_tag_id(out, TAG_REMOVE, *id, *pool_generation);
            out.put_u64_le(*hlc_us);
            put_condition(out, *condition);
            put_str(out, key);
        }
        Op::Read { id } => {
            out.put_u8(TAG_READ);
            put_id(out, *id);
        }
        Op::CreatePool { id, spec } => {
            let layout = PoolSpecLayout::for_spec(spec);
            out.put_u8(match layout {
                PoolSpecLayout::Base => TAG_CREATE_POOL,
                PoolSpecLayout::Extended => TAG_CREATE_POOL_EXTENDED,
            });
            put_id(out, *id);
            put_pool_spec(out, spec, layout);
        }
        Op::RemovePool { id, path } => {
            out.put_u8(TAG_REMOVE_POOL);
            put_id(out, *id);
            put_str(out, path);
        }
        Op::PutUdl {
            id,
            uuid,
            name,
            checksum,
            plugin,
        } => {
            out.put_u8(TAG_PUT_UDL);
            put_id(out, *id);
            put_str(out, uuid);
            put_str(out, name);
            out.put_u64_le(*checksum);
            blob_field(out, plugin)
        }
        Op::RemoveUdl { id, uuid } => {
            out.put_u8(TAG_REMOVE_UDL);
            put_id(out, *id);
            put_str(out, uuid);
        }
        Op::AddDfgs { id, json } => {
            out.reserve(json.len());
            out.put_u8(TAG_ADD_DFGS);
            put_id(out, *id);
            out.put_u32_le(json.len() as u32);
            out.put_slice(json);
        }
        Op::RemoveDfg { id, dfg } => {
            out.put_u8(TAG_REMOVE_DFG);
            put_id(out, *id);
            put_str(out, dfg);
        }
        Op::UdlDone { id, member, below } => {
            out.put_u8(TAG_UDL_DONE);
            put_id(out, *id);
            out.put_u64_le(*member);
            out.put_u64_le(*below);
        }
        Op::OutboxPut {
            id,
            hlc_us,
            site,
            trigger,
            key,
            blob,
        } => {
            out.put_u8(TAG_OUTBOX_PUT);
            put_id(out, *id);
            out.put_u64_le(*hlc_us);
            put_str(out, site);
            out.put_u8(u8::from(*trigger));
            put_str(out, key);
            blob_field(out, blob)
        }
        Op::OutboxDone { id, site, below } => {
            out.put_u8(TAG_OUTBOX_DONE);
            put_id(out, *id);
            put_str(out, site);
            out.put_u64_le(*below);
        }
        Op::StorageAlarm {
            id,
            node,
            low,
            free_bytes,
            reserve_bytes,
        } => {
            out.put_u8(TAG_STORAGE_ALARM);
            put_id(out, *id);
            out.put_u32_le(*node);
            out.put_u8(u8::from(*low));
            out.put_u64_le(*free_bytes);
            out.put_u64_le(*reserve_bytes);
        }
        Op::Compact {
            id,
            pool,
            shard,
            before_us,
        } => {
            out.put_u8(TAG_COMPACT);
            put_id(out, *id);
            put_str(out, pool);
            out.put_u32_le(*shard);
            out.put_u64_le(*before_us);
        }
        Op::DropPool {
            id,
            pool,
            shard,
            generation,
        } => {
            put_tag_id(out, TAG_DROP_POOL, *id, *generation);
            put_str(out, pool);
            out.put_u32_le(*shard);
        }
        Op::PoolDropped {
            id,
            path,
            generation,
        } => {
            put_tag_id(out, TAG_POOL_DROPPED, *id, *generation);
            put_str(out, path);
        }
        Op::CompactMetadata { id } => {
            out.put_u8(TAG_COMPACT_METADATA);
            put_id(out, *id);
        }
    }
    tail
}

/// Decodes an operation; a put's blob is a slice of `buf` (no copy).
pub fn decode(mut buf: Bytes) -> Result<Op, OpError> {
    let r = &mut buf;
    let tag = get_u8(r, "tag")?;
    let named = tag & TAG_GENERATION != 0;
    let op = match get_generational(r, tag & !TAG_GENERATION, named)? {
        Some(op) => op,
        None if named => {
            return Err(OpError::UnknownTag {
                what: "operation",
                tag,
            });
        }
        None => decode_other(r, tag)?,
    };
    if buf.has_remaining() {
        return Err(OpError::Trailing(buf.remaining()));
    }
    Ok(op)
}

/// An operation that never names a pool generation, after its tag.
fn decode_other(r: &mut Bytes, tag: u8) -> Result<Op, OpError> {
    Ok(match tag {
        TAG_READ => Op::Read { id: get_id(r)? },
        TAG_CREATE_POOL => {
            let id = get_id(r)?;
            Op::CreatePool {
                id,
                spec: get_pool_spec(r, PoolSpecLayout::Base)?,
            }
        }
        TAG_CREATE_POOL_EXTENDED => {
            let id = get_id(r)?;
            Op::CreatePool {
                id,
                spec: get_pool_spec(r, PoolSpecLayout::Extended)?,
            }
        }
        TAG_REMOVE_POOL => Op::RemovePool {
            id: get_id(r)?,
            path: get_str(r, "pool path")?,
        },
        TAG_PUT_UDL => {
            let id = get_id(r)?;
            let uuid = get_str(r, "UDL uuid")?;
            let name = get_str(r, "UDL name")?;
            let checksum = get_u64(r, "checksum")?;
            Op::PutUdl {
                id,
                uuid,
                name,
                checksum,
                plugin: get_bytes(r, "plugin")?,
            }
        }
        TAG_REMOVE_UDL => Op::RemoveUdl {
            id: get_id(r)?,
            uuid: get_str(r, "UDL uuid")?,
        },
        TAG_ADD_DFGS => {
            let id = get_id(r)?;
            Op::AddDfgs {
                id,
                json: get_bytes(r, "DFG text")?,
            }
        }
        TAG_REMOVE_DFG => Op::RemoveDfg {
            id: get_id(r)?,
            dfg: get_str(r, "DFG id")?,
        },
        TAG_UDL_DONE => Op::UdlDone {
            id: get_id(r)?,
            member: get_u64(r, "member")?,
            below: get_u64(r, "version")?,
        },
        TAG_OUTBOX_PUT => {
            let id = get_id(r)?;
            let hlc_us = get_u64(r, "timestamp")?;
            let site = get_str(r, "site")?;
            let trigger = match get_u8(r, "outbox action")? {
                0 => false,
                1 => true,
                tag => {
                    return Err(OpError::UnknownTag {
                        what: "outbox action",
                        tag,
                    });
                }
            };
            let key = get_str(r, "key")?;
            Op::OutboxPut {
                id,
                hlc_us,
                site,
                trigger,
                key,
                blob: get_bytes(r, "blob")?,
            }
        }
        TAG_OUTBOX_DONE => Op::OutboxDone {
            id: get_id(r)?,
            site: get_str(r, "site")?,
            below: get_u64(r, "version")?,
        },
        TAG_STORAGE_ALARM => {
            let id = get_id(r)?;
            let node = get_u32(r, "node")?;
            let low = match get_u8(r, "alarm")? {
                0 => false,
                1 => true,
                tag => return Err(OpError::UnknownTag { what: "alarm", tag }),
            };
            Op::StorageAlarm {
                id,
                node,
                low,
                free_bytes: get_u64(r, "free bytes")?,
                reserve_bytes: get_u64(r, "reserve bytes")?,
            }
        }
        TAG_COMPACT => Op::Compact {
            id: get_id(r)?,
            pool: get_str(r, "pool")?,
            shard: get_u32(r, "shard")?,
            before_us: get_u64(r, "time")?,
        },
        TAG_COMPACT_METADATA => Op::CompactMetadata { id: get_id(r)? },
        tag => {
            return Err(OpError::UnknownTag {
                what: "operation",
                tag,
            });
        }
    })
}

/// A put, remove, pool drop or end of drop after its tag (`base`, the flag cleared), with
/// the generation after the id if the tag `named` one (a generation of 0 is written
/// without the flag, so one there is refused); `None` for the other operations.
fn get_generational(r: &mut Bytes, base: u8, named: bool) -> Result<Option<Op>, OpError> {
    if !matches!(
        base,
        TAG_PUT | TAG_REMOVE | TAG_DROP_POOL | TAG_POOL_DROPPED
    ) {
        return Ok(None);
    }
    let id = get_id(r)?;
    let generation = match named {
        false => 0,
        true => match get_u64(r, "pool generation")? {
            0 => {
                return Err(OpError::ZeroGeneration {
                    what: "an operation",
                });
            }
            generation => generation,
        },
    };
    Ok(Some(match base {
        TAG_PUT => get_put(r, id, generation)?,
        TAG_REMOVE => get_remove(r, id, generation)?,
        TAG_DROP_POOL => get_drop_pool(r, id, generation)?,
        _ => get_pool_dropped(r, id, generation)?,
    }))
}

fn get_put(r: &mut Bytes, id: MessageId, pool_generation: u64) -> Result<Op, OpError> {
    let hlc_us = get_u64(r, "timestamp")?;
    let condition = get_condition(r)?;
    let key = get_str(r, "key")?;
    let blob = get_bytes(r, "blob")?;
    Ok(Op::Put {
        id,
        hlc_us,
        condition,
        pool_generation,
        key,
        blob,
    })
}

fn get_remove(r: &mut Bytes, id: MessageId, pool_generation: u64) -> Result<Op, OpError> {
    Ok(Op::Remove {
        id,
        hlc_us: get_u64(r, "timestamp")?,
        condition: get_condition(r)?,
        pool_generation,
        key: get_str(r, "key")?,
    })
}

fn get_drop_pool(r: &mut Bytes, id: MessageId, generation: u64) -> Result<Op, OpError> {
    Ok(Op::DropPool {
        id,
        pool: get_str(r, "pool")?,
        shard: get_u32(r, "shard")?,
        generation,
    })
}

fn get_pool_dropped(r: &mut Bytes, id: MessageId, generation: u64) -> Result<Op, OpError> {
    Ok(Op::PoolDropped {
        id,
        path: get_str(r, "path")?,
        generation,
    })
}

/// A tag and message id, and the pool generation if there is one (flagged in the tag).
fn put_tag_id(out: &mut BytesMut, tag: u8, id: MessageId, generation: u64) {
    debug_assert!(
        tag & TAG_GENERATION == 0,
        "tag {tag} collides with the flag"
    );
    if generation == 0 {
        out.put_u8(tag);
        put_id(out, id);
    } else {
        out.put_u8(tag | TAG_GENERATION);
        put_id(out, id);
        out.put_u64_le(generation);
    }
}

/// How a pool spec is laid out. The writer picks it (from the spec, or for a listing
/// from all of its specs) and says so with a tag; the reader is told by that tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSpecLayout {
    /// The first layout: path, kind, subgroup, shards, affinity, overrides. What every
    /// log written before pool options existed holds; only for specs without extensions.
    Base,
    /// The base layout, then `extensions: u8` (bit 0: `gpu_cache`, bit 1: `generation`)
    /// and, per bit set in that order, its fields (`gpu_cache`: `device: u32`,
    /// `capacity_bytes: u64`; `generation: u64`).
    Extended,
}

impl PoolSpecLayout {
    /// The layout `spec` needs: [`PoolSpecLayout::Base`] unless it uses an extension.
    pub fn for_spec(spec: &PoolSpec) -> PoolSpecLayout {
        if spec.gpu_cache.is_some() || spec.generation != 0 {
            PoolSpecLayout::Extended
        } else {
            PoolSpecLayout::Base
        }
    }

    /// The layout a listing of `specs` needs (one for all of them).
    pub fn for_specs<'a>(specs: impl IntoIterator<Item = &'a PoolSpec>) -> PoolSpecLayout {
        if specs
            .into_iter()
            .any(|spec| PoolSpecLayout::for_spec(spec) == PoolSpecLayout::Extended)
        {
            PoolSpecLayout::Extended
        } else {
            PoolSpecLayout::Base
        }
    }
}

/// Appends a pool spec (the body of a pool creation, and of the client protocol's pool
/// listings) in `layout`, which must hold everything the spec says (asserted: a base
/// layout would silently drop an extension).
pub fn put_pool_spec(out: &mut BytesMut, spec: &PoolSpec, layout: PoolSpecLayout) {
    assert!(
        layout == PoolSpecLayout::Extended || PoolSpecLayout::for_spec(spec) == layout,
        "pool {}: its options need the extended layout",
        spec.path
    );
    put_str(out, &spec.path);
    out.put_u8(match spec.kind {
        StoreKind::Volatile => 0,
        StoreKind::Persistent => 1,
        StoreKind::Trigger => 2,
    });
    out.put_u32_le(spec.subgroup);
    out.put_u32_le(spec.shards);
    match &spec.affinity {
        Some(re) => {
            out.put_u8(1);
            put_str(out, re);
        }
        None => out.put_u8(0),
    }
    out.put_u32_le(spec.overrides.len() as u32);
    for (key, shard) in &spec.overrides {
        put_str(out, key);
        out.put_u32_le(*shard);
    }
    if layout == PoolSpecLayout::Base {
        return;
    }
    let mut extensions = 0u8;
    if spec.gpu_cache.is_some() {
        extensions |= POOL_EXTENSION_GPU_CACHE;
    }
    if spec.generation != 0 {
        extensions |= POOL_EXTENSION_GENERATION;
    }
    out.put_u8(extensions);
    if let Some(gpu_cache) = spec.gpu_cache {
        out.put_u32_le(gpu_cache.device);
        out.put_u64_le(gpu_cache.capacity_bytes);
    }
    if spec.generation != 0 {
        out.put_u64_le(spec.generation);
    }
}

/// Reads what [`put_pool_spec`] wrote in `layout`, from the front of `r`.
pub fn get_pool_spec(r: &mut Bytes, layout: PoolSpecLayout) -> Result<PoolSpec, OpError> {
    let path = get_str(r, "pool path")?;
    let kind = match get_u8(r, "store kind")? {
        0 => StoreKind::Volatile,
        1 => StoreKind::Persistent,
        2 => StoreKind::Trigger,
        tag => {
            return Err(OpError::UnknownTag {
                what: "store kind",
                tag,
            });
        }
    };
    let subgroup = get_u32(r, "subgroup")?;
    let shards = get_u32(r, "shards")?;
    let affinity = match get_u8(r, "affinity presence")? {
        0 => None,
        1 => Some(get_str(r, "affinity")?),
        tag => {
            return Err(OpError::UnknownTag {
                what: "affinity presence",
                tag,
            });
        }
    };
    let count = get_u32(r, "override count")? as usize;
    if count > OVERRIDES_MAX {
        return Err(OpError::TooLong {
            what: "override list",
            len: count,
            max: OVERRIDES_MAX,
        });
    }
    let mut overrides = BTreeMap::new();
    for _ in 0..count {
        let key = get_str(r, "override key")?;
        overrides.insert(key, get_u32(r, "override shard")?);
    }
    let mut gpu_cache = None;
    let mut generation = 0;
    if layout == PoolSpecLayout::Extended {
        let extensions = get_u8(r, "pool extensions")?;
        if extensions & !POOL_EXTENSIONS_KNOWN != 0 {
            return Err(OpError::UnknownTag {
                what: "pool extensions",
                tag: extensions,
            });
        }
        if extensions & POOL_EXTENSION_GPU_CACHE != 0 {
            gpu_cache = Some(GpuCache {
                device: get_u32(r, "gpu_cache device")?,
                capacity_bytes: get_u64(r, "gpu_cache capacity")?,
            });
        }
        if extensions & POOL_EXTENSION_GENERATION != 0 {
            generation = get_u64(r, "pool generation")?;
            if generation == 0 {
                return Err(OpError::ZeroGeneration {
                    what: "a pool spec",
                });
            }
        }
    }
    Ok(PoolSpec {
        path,
        kind,
        subgroup,
        shards,
        affinity,
        overrides,
        gpu_cache,
        generation,
    })
}

fn put_id(out: &mut BytesMut, id: MessageId) {
    out.put_u64_le(id.client);
    out.put_u64_le(id.seq);
}

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

pub(crate) fn put_version(out: &mut BytesMut, v: Option<Version>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v.0);
        }
        None => out.put_u8(0),
    }
}

fn put_condition(out: &mut BytesMut, c: Condition) {
    match c {
        Condition::Always => out.put_u8(0),
        Condition::KeyVersion(v) => {
            out.put_u8(1);
            put_version(out, v);
        }
        Condition::ShardVersion(v) => {
            out.put_u8(2);
            put_version(out, v);
        }
    }
}

pub(crate) fn need(r: &Bytes, n: usize, what: &'static str) -> Result<(), OpError> {
    if r.remaining() < n {
        return Err(OpError::Truncated { what });
    }
    Ok(())
}

/// `len: u32` then that many bytes, as a slice of `r` (no copy).
fn get_bytes(r: &mut Bytes, what: &'static str) -> Result<Bytes, OpError> {
    let len = get_u32(r, what)? as usize;
    need(r, len, what)?;
    Ok(r.split_to(len))
}

pub(crate) fn get_u8(r: &mut Bytes, what: &'static str) -> Result<u8, OpError> {
    need(r, 1, what)?;
    Ok(r.get_u8())
}

fn get_u32(r: &mut Bytes, what: &'static str) -> Result<u32, OpError> {
    need(r, 4, what)?;
    Ok(r.get_u32_le())
}

pub(crate) fn get_u64(r: &mut Bytes, what: &'static str) -> Result<u64, OpError> {
    need(r, 8, what)?;
    Ok(r.get_u64_le())
}

fn get_id(r: &mut Bytes) -> Result<MessageId, OpError> {
    Ok(MessageId {
        client: get_u64(r, "message id")?,
        seq: get_u64(r, "message id")?,
    })
}

pub(crate) fn get_str(r: &mut Bytes, what: &'static str) -> Result<String, OpError> {
    let len = get_u32(r, what)? as usize;
    if len > STRING_BYTES_MAX {
        return Err(OpError::TooLong {
            what,
            len,
            max: STRING_BYTES_MAX,
        });
    }
    need(r, len, what)?;
    let bytes = r.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| OpError::NotUtf8 { what })
}

pub(crate) fn get_version(r: &mut Bytes) -> Result<Option<Version>, OpError> {
    match get_u8(r, "version presence")? {
        0 => Ok(None),
        1 => Ok(Some(Version(get_u64(r, "version")?))),
        tag => Err(OpError::UnknownTag {
            what: "version presence",
            tag,
        }),
    }
}

fn get_condition(r: &mut Bytes) -> Result<Condition, OpError> {
    match get_u8(r, "condition")? {
        0 => Ok(Condition::Always),
        1 => Ok(Condition::KeyVersion(get_version(r)?)),
        2 => Ok(Condition::ShardVersion(get_version(r)?)),
        tag => Err(OpError::UnknownTag {
            what: "condition",
            tag,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Op> {
        let id = MessageId { client: 7, seq: 9 };
        let mut spec = PoolSpec::new("/p", StoreKind::Persistent, 1);
        spec.affinity = Some("cam[0-9]+".into());
        spec.overrides.insert("/p/x".into(), 1);
        let mut cached = spec.clone();
        cached.path = "/gpu".into();
        cached.gpu_cache = Some(GpuCache {
            device: 1,
            capacity_bytes: 8 << 30,
        });
        vec![
            Op::CreatePool { id, spec: cached },
            Op::Put {
                id,
                hlc_us: 5,
                condition: Condition::KeyVersion(Some(Version::new(3, 4))),
                pool_generation: 0x0000_0002_0000_0007,
                key: "/p/a".into(),
                blob: Bytes::from_static(b"hello"),
            },
            Op::Put {
                id,
                hlc_us: 0,
                condition: Condition::ShardVersion(None),
                pool_generation: 0,
                key: "/p/empty".into(),
                blob: Bytes::new(),
            },
            Op::Remove {
                id,
                hlc_us: 6,
                condition: Condition::Always,
                pool_generation: 0,
                key: "/p/a".into(),
            },
            Op::Remove {
                id,
                hlc_us: 6,
                condition: Condition::KeyVersion(None),
                pool_generation: 9,
                key: "/p/b".into(),
            },
            Op::Read { id },
            Op::CreatePool {
                id,
                spec: PoolSpec {
                    generation: 0x0000_0002_0000_0007,
                    ..spec.clone()
                },
            },
            Op::CreatePool { id, spec },
            Op::RemovePool {
                id,
                path: "/p".into(),
            },
            Op::PutUdl {
                id,
                uuid: "48e60f7c-8500-11eb-8755-0242ac110002".into(),
                name: "printer".into(),
                checksum: 0xfeed_beef,
                plugin: Bytes::from_static(b"\x7fELF..."),
            },
            Op::RemoveUdl {
                id,
                uuid: "48e60f7c-8500-11eb-8755-0242ac110002".into(),
            },
            Op::AddDfgs {
                id,
                json: Bytes::from_static(b"[]"),
            },
            Op::RemoveDfg {
                id,
                dfg: "1d5f0c4e-0000-4000-8000-000000000001".into(),
            },
            Op::UdlDone {
                id,
                member: (2 << 32) | 3,
                below: 0x0000_0004_0000_0011,
            },
            Op::OutboxPut {
                id,
                hlc_us: 7,
                site: "cloud".into(),
                trigger: false,
                key: "/ingest/a".into(),
                blob: Bytes::from_static(b"frame"),
            },
            Op::OutboxPut {
                id,
                hlc_us: 8,
                site: "cloud".into(),
                trigger: true,
                key: "/ingest/b".into(),
                blob: Bytes::new(),
            },
            Op::OutboxDone {
                id,
                site: "cloud".into(),
                below: 0x0000_0004_0000_0012,
            },
            Op::StorageAlarm {
                id,
                node: 2,
                low: true,
                free_bytes: 3 << 20,
                reserve_bytes: 256 << 20,
            },
            Op::Compact {
                id,
                pool: "/demo".into(),
                shard: 3,
                before_us: 1_795_489_110_063_933,
            },
            Op::DropPool {
                id,
                pool: "/demo".into(),
                shard: 1,
                generation: 0,
            },
            Op::DropPool {
                id,
                pool: "/demo".into(),
                shard: 2,
                generation: 77,
            },
            Op::PoolDropped {
                id,
                path: "/demo".into(),
                generation: 0,
            },
            Op::PoolDropped {
                id,
                path: "/demo".into(),
                generation: 77,
            },
            Op::CompactMetadata { id },
        ]
    }

    #[test]
    fn round_trips_and_shares_the_blob() {
        for op in samples() {
            let bytes = encode(&op);
            let back = decode(bytes.clone()).expect("decodes");
            assert_eq!(back, op);
            if let Op::Put { blob, .. } | Op::OutboxPut { blob, .. } = &back
                && !blob.is_empty()
            {
                let start = bytes.as_ptr() as usize;
                let at = blob.as_ptr() as usize;
                assert!(
                    at >= start && at < start + bytes.len(),
                    "the blob is a slice of the delivered buffer"
                );
            }
        }
    }

    #[test]
    fn a_split_encoding_is_the_whole_one_with_the_blob_left_in_place() {
        for op in samples() {
            let whole = encode(&op);
            let (head, tail) = encode_split(&op);
            assert_eq!([&head[..], &tail[..]].concat(), &whole[..], "{op:?}");
            match &op {
                Op::Put { blob, .. }
                | Op::OutboxPut { blob, .. }
                | Op::PutUdl { plugin: blob, .. } => {
                    assert_eq!(
                        tail.as_ptr(),
                        blob.as_ptr(),
                        "the tail is the caller's buffer"
                    );
                    assert_eq!(tail.len(), blob.len());
                }
                _ => assert!(tail.is_empty(), "{op:?} has no blob to leave"),
            }
        }
    }

    /// A pool creation as the first layout wrote it (before pool options), byte by byte:
    /// what logs written then hold.
    fn create_pool_written_before_pool_options() -> Vec<u8> {
        let mut old = vec![TAG_CREATE_POOL];
        old.extend_from_slice(&7u64.to_le_bytes());
        old.extend_from_slice(&9u64.to_le_bytes());
        old.extend_from_slice(&2u32.to_le_bytes());
        old.extend_from_slice(b"/p");
        old.push(1); // persistent
        old.extend_from_slice(&1u32.to_le_bytes()); // subgroup
        old.extend_from_slice(&0u32.to_le_bytes()); // shards
        old.push(1); // an affinity
        old.extend_from_slice(&9u32.to_le_bytes());
        old.extend_from_slice(b"cam[0-9]+");
        old.extend_from_slice(&1u32.to_le_bytes()); // one override
        old.extend_from_slice(&4u32.to_le_bytes());
        old.extend_from_slice(b"/p/x");
        old.extend_from_slice(&1u32.to_le_bytes());
        old
    }

    #[test]
    fn pool_creations_written_before_pool_options_still_decode() {
        let old = create_pool_written_before_pool_options();
        let Op::CreatePool { id, spec } = decode(Bytes::from(old.clone())).expect("decodes") else {
            panic!("a pool creation");
        };
        assert_eq!(id, MessageId { client: 7, seq: 9 });
        assert_eq!(spec.path, "/p");
        assert_eq!(spec.affinity.as_deref(), Some("cam[0-9]+"));
        assert_eq!(spec.overrides.get("/p/x"), Some(&1));
        assert_eq!(spec.gpu_cache, None);
        // And a spec without options is still written exactly so.
        assert_eq!(encode(&Op::CreatePool { id, spec })[..], old[..]);
    }

    /// A write naming no generation is laid out as before generations (so old logs
    /// decode unchanged); one naming one flags its tag and carries it after the id. A
    /// flag on another operation, or a flagged generation of 0, is refused.
    #[test]
    fn a_pool_generation_is_flagged_in_the_tag() {
        let id = MessageId { client: 3, seq: 4 };
        let put = |pool_generation| Op::Put {
            id,
            hlc_us: 9,
            condition: Condition::Always,
            pool_generation,
            key: "/p/k".into(),
            blob: Bytes::from_static(b"v"),
        };
        let plain = encode(&put(0));
        let named = encode(&put(0x0102_0304));
        assert_eq!(plain[0], TAG_PUT);
        assert_eq!(named[0], TAG_PUT | TAG_GENERATION);
        assert_eq!(named.len(), plain.len() + 8);
        assert_eq!(named[17..25], 0x0102_0304u64.to_le_bytes());
        let mut zero = BytesMut::from(&named[..]);
        zero[17..25].copy_from_slice(&[0; 8]);
        assert_eq!(
            decode(zero.freeze()),
            Err(OpError::ZeroGeneration {
                what: "an operation"
            })
        );
        let mut read = BytesMut::from(&encode(&Op::Read { id })[..]);
        read[0] |= TAG_GENERATION;
        assert!(matches!(
            decode(read.freeze()),
            Err(OpError::UnknownTag {
                what: "operation",
                ..
            })
        ));
        assert!(matches!(
            decode(named.slice(..20)),
            Err(OpError::Truncated { .. })
        ));
    }

    #[test]
    fn a_gpu_cached_pool_is_written_under_the_extended_tag() {
        let id = MessageId { client: 1, seq: 2 };
        let mut spec = PoolSpec::new("/g", StoreKind::Volatile, 2);
        spec.gpu_cache = Some(GpuCache {
            device: 3,
            capacity_bytes: 1 << 20,
        });
        let bytes = encode(&Op::CreatePool {
            id,
            spec: spec.clone(),
        });
        assert_eq!(bytes[0], TAG_CREATE_POOL_EXTENDED);
        let mut tail = bytes.slice(bytes.len() - 13..);
        assert_eq!(tail.get_u8(), POOL_EXTENSION_GPU_CACHE);
        assert_eq!(tail.get_u32_le(), 3);
        assert_eq!(tail.get_u64_le(), 1 << 20);
        // Unknown extension bits are refused, not skipped.
        let mut unknown = BytesMut::from(&bytes[..bytes.len() - 12]);
        let at = unknown.len() - 1;
        unknown[at] = 0b100;
        assert!(matches!(
            decode(unknown.freeze()),
            Err(OpError::UnknownTag {
                what: "pool extensions",
                ..
            })
        ));
        // A listing of mixed specs uses the extended layout for all of them.
        let plain = PoolSpec::new("/plain", StoreKind::Volatile, 2);
        let layout = PoolSpecLayout::for_specs([&plain, &spec]);
        assert_eq!(layout, PoolSpecLayout::Extended);
        let mut listing = BytesMut::new();
        put_pool_spec(&mut listing, &plain, layout);
        put_pool_spec(&mut listing, &spec, layout);
        let mut listing = listing.freeze();
        assert_eq!(get_pool_spec(&mut listing, layout), Ok(plain));
        assert_eq!(get_pool_spec(&mut listing, layout), Ok(spec));
        assert!(listing.is_empty());
    }

    #[test]
    fn damaged_operations_are_refused() {
        for op in samples() {
            let bytes = encode(&op);
            for cut in 0..bytes.len() {
                assert!(decode(bytes.slice(..cut)).is_err(), "{op:?} cut at {cut}");
            }
            let mut longer = BytesMut::from(&bytes[..]);
            longer.put_u8(0);
            assert_eq!(decode(longer.freeze()), Err(OpError::Trailing(1)));
        }
        assert!(matches!(
            decode(Bytes::from_static(&[99])),
            Err(OpError::UnknownTag { .. })
        ));
    }
}
