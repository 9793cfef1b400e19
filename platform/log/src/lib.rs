//! Squall's durable per-shard log.
//!
//! The protocol core asks to "persist up to version V" for a shard and waits for
//! "persisted up to V"; before it acts on a ragged trim or a new view it asks for that to
//! be logged too. This crate is the storage behind those requests: [`LogStore`] states
//! what any log must guarantee, and [`FileLog`] provides it with append-only, CRC32C
//! checked segment files, group commit ([`LogStore::sync`]) and torn-tail recovery
//! ([`FileLog::open`]). See the crate's README.md for the on-disk format.
//!
//! The API is synchronous std I/O on purpose: the async driver calls it from a blocking
//! thread, and keeping tokio out of this crate keeps the durability argument local.

mod file_log;
mod format;

use std::io;
use std::path::PathBuf;

use bytes::Bytes;

pub use file_log::FileLog;
pub use format::{HEADER_BYTES, META_MAGIC, RECORD_BYTES_MAX_FORMAT, SEGMENT_MAGIC};

/// Default [`LogConfig::segment_bytes_max`]: large enough that rolling (one extra fsync)
/// is rare, small enough that compaction frees space in useful steps.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default [`LogConfig::preallocate_bytes`]. Measured on this project's VM (ext4, three
/// processes each writing and syncing one file in a loop): an fdatasync after overwriting
/// zeros already on disk took 200-300 µs at p50, after appending past the end of the file
/// 320-800 µs, because growing a file makes the sync commit the file system's journal too.
/// A megabyte of zeros is written, and synced, once per megabyte of small records.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1024 * 1024;

/// Default [`LogConfig::record_bytes_max`]: a record is one multicast message, and
/// messages far larger than this point at a bug upstream rather than real traffic.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// One shard's log is identified by (subgroup, shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub subgroup: u32,
    pub shard: u32,
}

/// One logged update: the version the protocol assigned, its hybrid logical clock
/// timestamp (for time travel) and the opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub hlc_us: u64,
    pub payload: Bytes,
}

/// Where the log lives and its limits.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Root directory; created if missing.
    pub dir: PathBuf,
    /// Roll to a new segment file when an append would grow the active one past this.
    /// A single record larger than this still gets a segment of its own.
    pub segment_bytes_max: u64,
    /// Refuse payloads larger than this (`RecordTooLarge`). Must not exceed
    /// [`RECORD_BYTES_MAX_FORMAT`]. Lowering it later never makes existing records
    /// unreadable: recovery judges lengths by the format's limit, not this one.
    pub record_bytes_max: usize,
    /// Zeros written ahead of the active segment's end, this many bytes at a time, so that
    /// small appends overwrite space the file already has and a sync need not grow the
    /// file (see [`PREALLOCATE_BYTES_DEFAULT`]). Records of more than a quarter of it are
    /// appended as they are: for them the journal commit is a small part of the sync, and
    /// zeros written first would double the bytes written. 0 turns preallocation off.
    pub preallocate_bytes: u64,
}

impl LogConfig {
    /// A configuration with the default limits.
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

/// What [`FileLog::open`] found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Per shard whose last segment ended in a torn or corrupt record: the bytes cut off.
    pub torn_tails_cut: Vec<(ShardKey, u64)>,
    /// Bytes cut off the end of `meta.log` (0 when its tail was clean).
    pub meta_bytes_cut: u64,
    /// Shard records recovered, over all shards.
    pub records: u64,
    /// Metadata records recovered.
    pub meta_records: u64,
    /// Segment files kept, over all shards.
    pub segments: u64,
}

/// Everything that can go wrong. Variants carry enough to act on without a debugger:
/// the file and byte offset for damage, the versions for ordering mistakes.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Damage that recovery must not repair silently: a bad record before the last
    /// segment's tail, records out of order, or a record that fails its check on read.
    #[error("corrupt log {} at byte {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("shard {shard:?}: version {version} is not above the last appended version {last}")]
    NotIncreasing {
        shard: ShardKey,
        version: u64,
        last: u64,
    },
    #[error("payload of {payload_bytes} bytes exceeds record_bytes_max {record_bytes_max}")]
    RecordTooLarge {
        payload_bytes: usize,
        record_bytes_max: usize,
    },
    /// Another `FileLog` (in this or another process) has the directory open.
    #[error("log directory is in use: {} is locked", .path.display())]
    Locked { path: PathBuf },
    #[error("invalid log config: {reason}")]
    InvalidConfig { reason: String },
    /// A write or fsync failed earlier. After a failed fsync the kernel may have dropped
    /// the dirty pages, so neither retrying nor trusting our in-memory state is safe;
    /// reopening re-derives the state from what is really on disk.
    #[error("log refuses writes after an earlier I/O failure; reopen it")]
    Poisoned,
}

/// A durable, per-shard, append-only log plus a small metadata log.
///
/// Obligations of every implementation:
/// - Versions appended to one shard strictly increase; `append` refuses anything else
///   with [`LogError::NotIncreasing`], because the core relies on version order being
///   delivery order.
/// - Nothing is reported durable (returned by `sync` or `durable_version`) before it is
///   fsynced: the core acknowledges "persisted" to its peers on the strength of it.
/// - After a crash, `open` returns exactly a prefix of what was appended: every record
///   that was reported durable, in order, and never a torn or corrupt record. Records
///   appended but never reported durable may or may not survive. (The one deliberate
///   exception is `compact_before`, which drops the oldest records on request.)
/// - `truncate_after(v)` is itself durable before it returns, so a ragged trim can never
///   be undone by a crash after the core has acted on it.
/// - `append_meta` is durable before it returns.
///
/// Calls are made from one thread at a time (`&mut self` for writes); reads take `&self`.
pub trait LogStore {
    /// Write `record` to `shard`'s log. It is handed to the OS but not fsynced; call
    /// [`LogStore::sync`] to make it durable.
    fn append(&mut self, shard: ShardKey, record: Record) -> Result<(), LogError>;
    /// Writes `records` to `shard`'s log in order, like [`LogStore::append`] on each,
    /// with as few writes as the store can. A store may refuse them all (checking each
    /// before writing any) or, on an I/O error, have written a prefix.
    fn append_many(&mut self, shard: ShardKey, records: &[Record]) -> Result<(), LogError> {
        records
            .iter()
            .try_for_each(|record| self.append(shard, record.clone()))
    }
    /// Group commit: one fsync per file touched since the last sync; returns, per shard
    /// appended to since the last sync, the highest version now durable.
    fn sync(&mut self) -> Result<Vec<(ShardKey, u64)>, LogError>;
    /// The highest version of `shard` known to be on stable storage.
    fn durable_version(&self, shard: ShardKey) -> Option<u64>;
    /// The highest version of `shard` appended (maybe not yet durable).
    fn last_version(&self, shard: ShardKey) -> Option<u64>;
    /// The record with exactly this version, if present.
    fn get(&self, shard: ShardKey, version: u64) -> Result<Option<Record>, LogError>;
    /// The latest record with `hlc_us <= t` (time travel): among the records whose
    /// timestamp is at most `t`, the one with the highest version.
    fn get_by_time(&self, shard: ShardKey, hlc_us: u64) -> Result<Option<Record>, LogError>;
    /// Records with version in `[from, to]`, in order (state transfer of a log tail,
    /// recovery).
    fn range(&self, shard: ShardKey, from: u64, to: u64) -> Result<Vec<Record>, LogError>;
    /// The first records with version in `[from, to]`, in order, as many as fit in
    /// `payload_bytes_max` of payload, and at least one when there is one: a log larger
    /// than memory is read in such chunks (replay after a restart or a state transfer).
    fn range_bounded(
        &self,
        shard: ShardKey,
        from: u64,
        to: u64,
        payload_bytes_max: usize,
    ) -> Result<Vec<Record>, LogError>;
    /// Ragged trim on recovery: drop every record with version > `version` (all of them
    /// for `None`), durably. Records kept are durable afterwards.
    fn truncate_after(&mut self, shard: ShardKey, version: Option<u64>) -> Result<(), LogError>;
    /// Compaction: drop whole segments whose records are all < `version` (older versions
    /// no longer needed). Finer-grained than nothing, coarser than per record.
    fn compact_before(&mut self, shard: ShardKey, version: u64) -> Result<(), LogError>;
    /// Shards present in the log, in key order.
    fn shards(&self) -> Vec<ShardKey>;
    /// Append to the metadata log (views and trims; opaque to this crate). Durable
    /// before it returns, since these are rare and the core acts on them at once.
    fn append_meta(&mut self, kind: u8, bytes: Bytes) -> Result<(), LogError>;
    /// Every metadata record, in append order.
    fn meta(&self) -> Result<Vec<(u8, Bytes)>, LogError>;
}
