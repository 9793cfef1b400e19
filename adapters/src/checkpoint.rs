//! Checkpoints of persistent shards: what lets a node drop the old part of a shard's log
//! after a compaction (`Op::Compact`) and still rebuild the shard.
//!
//! A store is rebuilt by replaying its log, and a replay of a log with records missing
//! builds a different store (timestamps, back links, conditions and retry answers all
//! depend on what came before). So before dropping records, a node writes its store's
//! exact state as of the compaction (its metadata, each key's latest value and retry
//! memory: [`ShardStore::snapshot_stream`]) and the shard's WAN outbox entries, which
//! replaying would otherwise rebuild from the records. A restart loads the newest usable
//! checkpoint and replays only the records after it.
//!
//! Per shard, in `<root>/<subgroup>-<shard>/`:
//! - `<version, 16 hex digits>.ckpt`: a checkpoint, written to a temporary file, synced
//!   and renamed into place, so a crash leaves a whole checkpoint or none.
//! - `log-start`: once the log was compacted, the oldest checkpoint it can still be
//!   replayed from (a decimal version). A replay that finds no readable checkpoint from
//!   there fails rather than replay a log with its beginning missing.
//!
//! The metadata shard (subgroup 0) is checkpointed the same way after an
//! `Op::CompactMetadata`: its store is the metadata's retry memory, and the rest of its
//! state (pools, UDLs, DFGs, storage alarms) goes as *rebuild operations*, the metadata
//! operations that remake it on an empty node.
//!
//! File format (little-endian): magic `SQCKPT02`, version `u64`, the snapshot as pieces
//! (`u32 length | bytes`, ended by a zero length), the outbox entries (`u32 count`, then
//! each `site, version u64, timestamp u64, trigger u8, key, blob` with strings and blob
//! as `u32 length | bytes`), the rebuild operations (`u32 count`, then each encoded
//! operation as `u32 length | bytes`), and a CRC32C of everything before it. Magic
//! `SQCKPT01` (written before the metadata was compacted) is the same without rebuild
//! operations. A transfer to a joiner carries the same bytes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use squall_driver::KeepState;
use squall_kvs::{ShardStore, SnapshotLoader, SnapshotStream, StoreKind, StoreLimits};
use squall_log::ShardKey;
use squall_platform::Version;
use thiserror::Error;

use crate::wan::OutboxEntry;

const MAGIC: &[u8; 8] = b"SQCKPT02";
/// Checkpoints without rebuild operations, still read.
const MAGIC_V1: &[u8; 8] = b"SQCKPT01";
/// Snapshot bytes encoded at a time while a checkpoint is written.
const PIECE_BYTES: usize = 8 << 20;
/// The marker naming the oldest checkpoint a compacted log can be replayed from.
const LOG_START: &str = "log-start";
/// The file a checkpoint arriving in a state transfer is written to until it is whole.
const TRANSFER_TMP: &str = "transfer.tmp";
const SUFFIX: &str = ".ckpt";

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Loaded {
    pub version: Version,
    pub store: ShardStore,
    /// The shard's WAN outbox entries then, by site, in order.
    pub outbox: Vec<(String, OutboxEntry)>,
    /// The metadata's rebuild operations, in the order they are applied (none for a
    /// data shard).
    pub rebuild: Vec<Bytes>,
}

/// The checkpoints of this node's persistent shards.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Checkpoints {
    pub fn new(root: PathBuf) -> Checkpoints {
        Checkpoints { root }
    }

    fn dir(&self, subgroup: u32, shard: u32) -> PathBuf {
        self.root.join(format!("{subgroup}-{shard}"))
    }

    fn path(&self, subgroup: u32, shard: u32, version: Version) -> PathBuf {
        self.dir(subgroup, shard)
            .join(format!("{:016x}{SUFFIX}", version.0))
    }

    /// Writes the state `stream` was taken at (`version`, its last delivered operation)
    /// with the shard's outbox entries and rebuild operations, durably. Blocking: call it
    /// off the async threads.
    pub fn write(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
        stream: SnapshotStream,
        outbox: &[(String, OutboxEntry)],
        rebuild: &[Bytes],
    ) -> Result<(), CheckpointError> {
        self.write_with(subgroup, shard, version, |out| {
            encode(version, stream, outbox, rebuild, out)
        })
    }

    /// Writes a checkpoint received whole (a state transfer's), durably. Blocking.
    pub fn write_encoded(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
        bytes: &[u8],
    ) -> Result<(), CheckpointError> {
        self.write_with(subgroup, shard, version, |out| out.write_all(bytes))
    }

    /// A checkpoint a state transfer brings, to be written as it arrives (in place of
    /// one an earlier transfer left unfinished). Blocking.
    pub fn begin_transferred(
        &self,
        subgroup: u32,
        shard: u32,
    ) -> Result<Incoming, CheckpointError> {
        let dir = self.dir(subgroup, shard);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(TRANSFER_TMP);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(Incoming {
            checkpoints: self.clone(),
            subgroup,
            shard,
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            head: Vec::with_capacity(HEAD_BYTES),
            held: Vec::with_capacity(2 * CRC_BYTES),
            crc: 0,
        })
    }

    /// Whether this shard has a checkpoint file at `version`.
    pub fn has(&self, subgroup: u32, shard: u32, version: Version) -> bool {
        self.path(subgroup, shard, version).is_file()
    }

    fn write_with(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
        body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), CheckpointError> {
        let dir = self.dir(subgroup, shard);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.path(subgroup, shard, version);
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        body(&mut out).map_err(io_err(&tmp))?;
        let file = out.into_inner().map_err(|e| CheckpointError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&dir)
    }

    /// The files in this shard's directory (none before its first checkpoint).
    fn files(&self, subgroup: u32, shard: u32) -> Result<Vec<PathBuf>, CheckpointError> {
        let dir = self.dir(subgroup, shard);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        entries
            .map(|entry| entry.map(|e| e.path()).map_err(io_err(&dir)))
            .collect()
    }

    /// The versions of this shard's checkpoints, oldest first.
    pub fn versions(&self, subgroup: u32, shard: u32) -> Result<Vec<Version>, CheckpointError> {
        let mut versions: Vec<Version> = self
            .files(subgroup, shard)?
            .iter()
            .filter_map(|path| {
                let hex = path.file_name()?.to_str()?.strip_suffix(SUFFIX)?;
                u64::from_str_radix(hex, 16).ok().map(Version)
            })
            .collect();
        versions.sort();
        Ok(versions)
    }

    /// Reads the checkpoint at `version` back. Blocking.
    pub fn load(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
        kind: StoreKind,
        limits: StoreLimits,
    ) -> Result<Loaded, CheckpointError> {
        let path = self.path(subgroup, shard, version);
        let file = File::open(&path).map_err(io_err(&path))?;
        let loaded =
            decode_from(file, kind, limits).map_err(|reason| CheckpointError::Damaged {
                path: path.clone(),
                reason,
            })?;
        if loaded.version != version {
            return Err(CheckpointError::Damaged {
                path,
                reason: format!("it holds version {}", loaded.version),
            });
        }
        Ok(loaded)
    }

    /// The newest checkpoint of a persistent shard that its log, ending at `last_version`,
    /// can be replayed from: not past the log's end (a restart may have cut the log
    /// shorter than a checkpoint written just before; such ones are removed), not older
    /// than the log's start marker, and readable (a damaged one is skipped for an older
    /// one). `None` if there is none and the log was never compacted (replay it whole);
    /// an error if it was compacted and none is left to start from. Blocking.
    pub fn newest_usable(
        &self,
        subgroup: u32,
        shard: u32,
        last_version: Option<u64>,
        kind: StoreKind,
        limits: StoreLimits,
    ) -> Result<Option<Loaded>, CheckpointError> {
        let start = self.log_start(subgroup, shard)?;
        self.remove_partial(subgroup, shard)?;
        for version in self.versions(subgroup, shard)?.into_iter().rev() {
            if last_version.is_none_or(|last| version.0 > last) {
                tracing::warn!(subgroup, shard, %version, ?last_version, "a checkpoint past the log's end is removed");
                self.remove(subgroup, shard, version)?;
                continue;
            }
            if start.is_some_and(|start| version < start) {
                break;
            }
            match self.load(subgroup, shard, version, kind, limits) {
                Ok(loaded) => return Ok(Some(loaded)),
                Err(e) => tracing::warn!(error = %e, "skipping a checkpoint"),
            }
        }
        match start {
            None => Ok(None),
            Some(start) => Err(CheckpointError::Damaged {
                path: self.dir(subgroup, shard),
                reason: format!(
                    "the log was compacted and can be replayed only from checkpoint {start} or \
                     a later one, and none is readable up to the log's end {last_version:?}"
                ),
            }),
        }
    }

    /// Removes this shard's checkpoints older than `version` (the log no longer holds
    /// what a replay from them needs).
    pub fn remove_below(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
    ) -> Result<(), CheckpointError> {
        for old in self.versions(subgroup, shard)? {
            if old < version {
                let path = self.path(subgroup, shard, old);
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Removes the temporary files of writes a crash cut short.
    fn remove_partial(&self, subgroup: u32, shard: u32) -> Result<(), CheckpointError> {
        for path in self.files(subgroup, shard)? {
            if path.extension().is_some_and(|x| x == "tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Removes one checkpoint (ahead of a log a restart cut shorter).
    pub fn remove(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
    ) -> Result<(), CheckpointError> {
        let path = self.path(subgroup, shard, version);
        fs::remove_file(&path).map_err(io_err(&path))
    }

    /// The oldest checkpoint this shard's log can still be replayed from, once it was
    /// compacted; `None` while the log holds the shard's whole history.
    pub fn log_start(&self, subgroup: u32, shard: u32) -> Result<Option<Version>, CheckpointError> {
        let path = self.dir(subgroup, shard).join(LOG_START);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map(|v| Some(Version(v))).map_err(|e| {
                CheckpointError::Damaged {
                    path,
                    reason: format!("not a version: {e}"),
                }
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Records, durably, that the log will be replayable only from checkpoint `version`
    /// on. Written before the log is compacted.
    pub fn set_log_start(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
    ) -> Result<(), CheckpointError> {
        let dir = self.dir(subgroup, shard);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(LOG_START);
        let tmp = dir.join(format!("{LOG_START}.tmp"));
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        writeln!(file, "{}", version.0).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a field over 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A checkpoint encoded a piece at a time, so that neither a file written nor a state
/// transfer holds it whole (it can be as large as the shard).
pub struct CheckpointPieces {
    version: Version,
    /// `None` once the snapshot's last piece went.
    stream: Option<SnapshotStream>,
    outbox: Vec<(String, OutboxEntry)>,
    rebuild: Vec<Bytes>,
    started: bool,
    crc: u32,
    /// Pieces given so far.
    pieces: u32,
}

impl std::fmt::Debug for CheckpointPieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointPieces")
            .field("version", &self.version)
            .field("snapshot_done", &self.stream.is_none())
            .finish()
    }
}

impl CheckpointPieces {
    /// A checkpoint of the state `stream` was taken at (`version`, its last delivered
    /// operation) with the shard's outbox entries and rebuild operations.
    pub fn new(
        version: Version,
        stream: SnapshotStream,
        outbox: Vec<(String, OutboxEntry)>,
        rebuild: Vec<Bytes>,
    ) -> CheckpointPieces {
        CheckpointPieces {
            version,
            stream: Some(stream),
            outbox,
            rebuild,
            started: false,
            crc: 0,
            pieces: 0,
        }
    }

    /// The pieces given so far.
    pub fn pieces(&self) -> u32 {
        self.pieces
    }

    /// The next piece, with about `piece_bytes` of the snapshot (the last piece holds the
    /// outbox, the rebuild operations and the checksum), and whether it is the last. An
    /// error for a field over 4 GiB, which no limit allows.
    pub fn next_piece(&mut self, piece_bytes: usize) -> io::Result<(Bytes, bool)> {
        self.pieces += 1;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&self.version.0.to_le_bytes());
        }
        if let Some(stream) = &mut self.stream {
            let (piece, last) = stream.next_piece(piece_bytes);
            if !piece.is_empty() {
                put_bytes(&mut out, &piece)?;
            }
            if !last {
                self.crc = crc32c::crc32c_append(self.crc, &out);
                return Ok((Bytes::from(out), false));
            }
            self.stream = None;
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        let count = u32::try_from(self.outbox.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many outbox entries"))?;
        out.extend_from_slice(&count.to_le_bytes());
        for (site, e) in &self.outbox {
            put_bytes(&mut out, site.as_bytes())?;
            out.extend_from_slice(&e.version.0.to_le_bytes());
            out.extend_from_slice(&e.timestamp_us.to_le_bytes());
            out.push(u8::from(e.trigger));
            put_bytes(&mut out, e.key.as_bytes())?;
            put_bytes(&mut out, &e.blob)?;
        }
        let count = u32::try_from(self.rebuild.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "too many rebuild operations")
        })?;
        out.extend_from_slice(&count.to_le_bytes());
        for op in &self.rebuild {
            put_bytes(&mut out, op)?;
        }
        self.crc = crc32c::crc32c_append(self.crc, &out);
        out.extend_from_slice(&self.crc.to_le_bytes());
        Ok((Bytes::from(out), true))
    }
}

/// Encodes a checkpoint of the state `stream` was taken at, a piece at a time.
pub fn encode(
    version: Version,
    stream: SnapshotStream,
    outbox: &[(String, OutboxEntry)],
    rebuild: &[Bytes],
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut pieces = CheckpointPieces::new(version, stream, outbox.to_vec(), rebuild.to_vec());
    loop {
        let (piece, last) = pieces.next_piece(PIECE_BYTES)?;
        out.write_all(&piece)?;
        if last {
            return Ok(());
        }
    }
}

/// Reads a checkpoint's body (all but its checksum, which it holds back) and counts
/// CRC32C over it: a checkpoint is read in one pass, never whole in memory.
struct Body<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    crc: u32,
}

/// The bytes a [`Body`] reads from its file at a time.
const BODY_READ_BYTES: usize = 256 << 10;
const CRC_BYTES: usize = 4;

impl<R: Read> Body<R> {
    fn new(inner: R) -> Body<R> {
        Body {
            inner,
            buf: vec![0; BODY_READ_BYTES + CRC_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            crc: 0,
        }
    }

    /// Once the body is read to its end: whether its checksum matches (an error if the
    /// file is shorter than one).
    fn checksum_matches(&self) -> Result<bool, String> {
        let held = &self.buf[self.start..self.end];
        let stored: [u8; CRC_BYTES] = held
            .try_into()
            .map_err(|_| "shorter than its checksum".to_string())?;
        Ok(u32::from_le_bytes(stored) == self.crc)
    }
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.end - self.start <= CRC_BYTES && !self.eof {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let n = (self.end - self.start)
            .saturating_sub(CRC_BYTES)
            .min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.crc = crc32c::crc32c_append(self.crc, &out[..n]);
        self.start += n;
        Ok(n)
    }
}

/// Reads a checkpoint, in one pass; the reason if it is damaged. A damaged one whose
/// checksum does not match says so, whatever else the damage broke.
pub fn decode_from(r: impl Read, kind: StoreKind, limits: StoreLimits) -> Result<Loaded, String> {
    let mut body = Body::new(r);
    let parsed = parse(&mut body, kind, limits);
    // What the parse left (nothing, unless it failed or the body runs on) goes through
    // the checksum too.
    let after = io::copy(&mut body, &mut io::sink()).map_err(|e| e.to_string())?;
    if !body.checksum_matches()? {
        return Err("its checksum does not match".to_string());
    }
    let loaded = parsed?;
    if after > 0 {
        return Err(format!("{after} bytes after its end"));
    }
    Ok(loaded)
}

/// Reads a checkpoint held in memory; the reason if it is damaged.
pub fn decode(bytes: Bytes, kind: StoreKind, limits: StoreLimits) -> Result<Loaded, String> {
    decode_from(&bytes[..], kind, limits)
}

fn exact<const N: usize>(r: &mut dyn Read, what: &str) -> Result<[u8; N], String> {
    let mut b = [0; N];
    r.read_exact(&mut b).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("it ends inside {what}"),
        _ => e.to_string(),
    })?;
    Ok(b)
}

fn u32_of(r: &mut dyn Read, what: &str) -> Result<u32, String> {
    exact::<4>(r, what).map(u32::from_le_bytes)
}

fn u64_of(r: &mut dyn Read, what: &str) -> Result<u64, String> {
    exact::<8>(r, what).map(u64::from_le_bytes)
}

/// A field's bytes (`u32 length | bytes`): read as they come, so that a damaged length
/// costs no more memory than the file holds.
fn field(r: &mut dyn Read, what: &str) -> Result<Vec<u8>, String> {
    let len = u32_of(r, what)?;
    let mut bytes = Vec::new();
    r.take(u64::from(len))
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() != len as usize {
        return Err(format!("it ends inside {what}"));
    }
    Ok(bytes)
}

fn parse(r: &mut dyn Read, kind: StoreKind, limits: StoreLimits) -> Result<Loaded, String> {
    let magic = exact::<8>(r, "its header")?;
    let has_rebuild = match &magic {
        m if m == MAGIC => true,
        m if m == MAGIC_V1 => false,
        _ => return Err("not a checkpoint (bad magic)".to_string()),
    };
    let version = Version(u64_of(r, "its header")?);
    let mut loader = SnapshotLoader::new(kind, limits);
    loop {
        let piece = field(r, "the snapshot")?;
        if piece.is_empty() {
            break;
        }
        loader.push(Bytes::from(piece)).map_err(|e| e.to_string())?;
    }
    let store = loader.finish().map_err(|e| e.to_string())?;
    if store.last_delivered() != Some(version) {
        return Err(format!(
            "its store is at {:?}, not at its version {version}",
            store.last_delivered()
        ));
    }
    let utf8 = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
    };
    let count = u32_of(r, "the outbox")?;
    let mut outbox = Vec::new();
    for _ in 0..count {
        let site = utf8(field(r, "an outbox site")?, "an outbox site")?;
        let version = Version(u64_of(r, "an outbox entry")?);
        let timestamp_us = u64_of(r, "an outbox entry")?;
        let trigger = exact::<1>(r, "an outbox entry")?[0] != 0;
        let key = utf8(field(r, "an outbox key")?, "an outbox key")?;
        let blob = Bytes::from(field(r, "an outbox value")?);
        outbox.push((
            site,
            OutboxEntry {
                version,
                timestamp_us,
                trigger,
                key,
                blob,
            },
        ));
    }
    let mut rebuild = Vec::new();
    if has_rebuild {
        let count = u32_of(r, "the rebuild operations")?;
        for _ in 0..count {
            rebuild.push(Bytes::from(field(r, "a rebuild operation")?));
        }
    }
    Ok(Loaded {
        version,
        store,
        outbox,
        rebuild,
    })
}

/// A checkpoint arriving in a state transfer, written to a temporary file as it comes and
/// checked as a whole at its end ([`Incoming::finish`]).
pub struct Incoming {
    checkpoints: Checkpoints,
    subgroup: u32,
    shard: u32,
    tmp: PathBuf,
    out: BufWriter<File>,
    /// The first bytes (magic and version), once arrived.
    head: Vec<u8>,
    /// The last bytes so far: the checksum, if they are the last.
    held: Vec<u8>,
    crc: u32,
}

const HEAD_BYTES: usize = 16;

impl Incoming {
    /// The next bytes of the checkpoint, in order.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.out.write_all(bytes).map_err(io_err(&self.tmp))?;
        if self.head.len() < HEAD_BYTES {
            let n = (HEAD_BYTES - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
        }
        // Everything but the last CRC_BYTES seen is body: it goes through the checksum.
        let body = (self.held.len() + bytes.len()).saturating_sub(CRC_BYTES);
        let from_held = body.min(self.held.len());
        let from_bytes = body - from_held;
        self.crc = crc32c::crc32c_append(self.crc, &self.held[..from_held]);
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..from_bytes]);
        self.held.drain(..from_held);
        self.held.extend_from_slice(&bytes[from_bytes..]);
        Ok(())
    }

    /// The checkpoint is whole: checked (magic, checksum) and kept, durably, under its
    /// version; that version.
    pub fn finish(self) -> Result<Version, CheckpointError> {
        let damaged = |reason: &str| CheckpointError::Damaged {
            path: self.tmp.clone(),
            reason: format!("the transferred checkpoint: {reason}"),
        };
        let stored: [u8; CRC_BYTES] = self
            .held
            .as_slice()
            .try_into()
            .map_err(|_| damaged("shorter than its checksum"))?;
        if u32::from_le_bytes(stored) != self.crc {
            return Err(damaged("its checksum does not match"));
        }
        if self.head.len() < HEAD_BYTES || (&self.head[..8] != MAGIC && &self.head[..8] != MAGIC_V1)
        {
            return Err(damaged("not a checkpoint (bad magic)"));
        }
        let mut version = [0; 8];
        version.copy_from_slice(&self.head[8..HEAD_BYTES]);
        let version = Version(u64::from_le_bytes(version));
        let file = self.out.into_inner().map_err(|e| CheckpointError::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        let path = self.checkpoints.path(self.subgroup, self.shard, version);
        fs::rename(&self.tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.checkpoints.dir(self.subgroup, self.shard))?;
        Ok(version)
    }
}

/// Keeps the checkpoints state transfers bring, as the driver's state keeper: each is
/// written as it arrives and kept whole before the shard's log takes the records that
/// follow it; the service then loads it ([`TransferKeeper::take_kept`]).
#[derive(Debug)]
pub struct TransferKeeper {
    checkpoints: Checkpoints,
    incoming: Mutex<HashMap<ShardKey, Incoming>>,
    kept: Mutex<HashMap<ShardKey, Version>>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("tmp", &self.tmp).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> io::Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("a thread panicked while keeping a transferred checkpoint"))
}

impl TransferKeeper {
    pub fn new(checkpoints: Checkpoints) -> TransferKeeper {
        TransferKeeper {
            checkpoints,
            incoming: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// The version of the checkpoint the last transfer of the shard brought, once.
    pub fn take_kept(&self, subgroup: u32, shard: u32) -> Option<Version> {
        lock(&self.kept).ok()?.remove(&ShardKey { subgroup, shard })
    }
}

impl KeepState for TransferKeeper {
    fn begin(&self, key: ShardKey) -> io::Result<()> {
        let incoming = self
            .checkpoints
            .begin_transferred(key.subgroup, key.shard)
            .map_err(io::Error::other)?;
        lock(&self.incoming)?.insert(key, incoming);
        lock(&self.kept)?.remove(&key);
        Ok(())
    }

    fn append(&self, key: ShardKey, bytes: &[u8]) -> io::Result<()> {
        match lock(&self.incoming)?.get_mut(&key) {
            Some(incoming) => incoming.append(bytes).map_err(io::Error::other),
            None => Err(io::Error::other(
                "checkpoint bytes of a transfer that never began",
            )),
        }
    }

    fn finish(&self, key: ShardKey) -> io::Result<()> {
        let incoming = lock(&self.incoming)?
            .remove(&key)
            .ok_or_else(|| io::Error::other("the end of a transfer that never began"))?;
        let version = incoming.finish().map_err(io::Error::other)?;
        lock(&self.kept)?.insert(key, version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_kvs::{Condition, MessageId, Op, Outcome};

    /// A persistent store that applied `puts` (key, value), one version each from 1.
    fn store_of(puts: impl IntoIterator<Item = (String, Bytes)>) -> ShardStore {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        for (seq, (key, blob)) in (1u32..).zip(puts) {
            let op = Op::Put {
                id: MessageId {
                    client: 7,
                    seq: u64::from(seq),
                },
                hlc_us: 1_000 + u64::from(seq),
                condition: Condition::Always,
                pool_generation: 0,
                key,
                blob,
            };
            let (outcome, _) = s.apply(Version::new(1, seq), &op);
            assert!(matches!(outcome, Outcome::Applied { .. }));
        }
        s
    }

    fn store() -> ShardStore {
        store_of((1..=20usize).map(|seq| {
            (
                format!("/p/k{}", seq % 3),
                Bytes::from(vec![seq as u8; 100 * seq]),
            )
        }))
    }

    fn outbox() -> Vec<(String, OutboxEntry)> {
        vec![(
            "cloud".to_string(),
            OutboxEntry {
                version: Version::new(1, 4),
                timestamp_us: 1_004,
                trigger: true,
                key: "/ingest/a".to_string(),
                blob: Bytes::from_static(b"frame"),
            },
        )]
    }

    fn rebuild() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"first"),
            Bytes::new(),
            Bytes::from_static(b"third"),
        ]
    }

    #[test]
    fn a_checkpoint_reads_back_the_store_and_outbox_it_was_written_from() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ck = Checkpoints::new(dir.path().to_path_buf());
        let s = store();
        let at = s.last_delivered().expect("applied");
        ck.write(1, 2, at, s.snapshot_stream(), &outbox(), &rebuild())?;
        assert_eq!(ck.versions(1, 2)?, vec![at]);
        let loaded = ck.load(1, 2, at, StoreKind::Persistent, StoreLimits::default())?;
        assert_eq!(loaded.version, at);
        assert_eq!(loaded.store.snapshot(), s.snapshot());
        assert_eq!(loaded.outbox, outbox());
        assert_eq!(loaded.rebuild, rebuild());
        // A transfer carries the file's bytes; in smaller pieces, a checkpoint that
        // reads back the same.
        let file = fs::read(ck.path(1, 2, at))?;
        assert!(encoded(&s, &rebuild()) == file);
        let mut pieces = CheckpointPieces::new(at, s.snapshot_stream(), outbox(), rebuild());
        let mut streamed = Vec::new();
        let mut count = 0;
        loop {
            let (piece, last) = pieces.next_piece(256)?;
            streamed.extend_from_slice(&piece);
            count += 1;
            if last {
                break;
            }
        }
        assert!(count > 3, "{count} pieces");
        let loaded = decode(
            Bytes::from(streamed),
            StoreKind::Persistent,
            StoreLimits::default(),
        )
        .map_err(anyhow::Error::msg)?;
        assert_eq!(loaded.store.snapshot(), s.snapshot());
        assert_eq!(loaded.outbox, outbox());
        assert_eq!(loaded.rebuild, rebuild());
        assert_eq!(ck.log_start(1, 2)?, None);
        ck.set_log_start(1, 2, at)?;
        assert_eq!(ck.log_start(1, 2)?, Some(at));
        // The newest usable one; a write a crash cut short is cleaned up.
        std::fs::write(ck.dir(1, 2).join("00000000000000ff.tmp"), b"partial")?;
        let usable = ck.newest_usable(
            1,
            2,
            Some(at.0),
            StoreKind::Persistent,
            StoreLimits::default(),
        )?;
        assert_eq!(usable.map(|l| l.version), Some(at));
        assert!(!ck.dir(1, 2).join("00000000000000ff.tmp").exists());
        // Past the log's end (a restart cut it shorter): removed, and with the log
        // compacted from it, nothing usable is an error.
        let err = ck
            .newest_usable(
                1,
                2,
                Some(at.0 - 1),
                StoreKind::Persistent,
                StoreLimits::default(),
            )
            .expect_err("no checkpoint from the log's start");
        assert!(err.to_string().contains("compacted"), "{err}");
        assert!(ck.versions(1, 2)?.is_empty());
        Ok(())
    }

    fn encoded(s: &ShardStore, rebuild: &[Bytes]) -> Vec<u8> {
        let at = s.last_delivered().expect("applied");
        let mut out = Vec::new();
        encode(at, s.snapshot_stream(), &outbox(), rebuild, &mut out).expect("encodes");
        out
    }

    /// Hands `bytes` to a transfer's checkpoint in pieces of `piece` bytes.
    fn transfer(ck: &Checkpoints, bytes: &[u8], piece: usize) -> Result<Version, CheckpointError> {
        let mut incoming = ck.begin_transferred(2, 0)?;
        for chunk in bytes.chunks(piece) {
            incoming.append(chunk)?;
        }
        incoming.finish()
    }

    #[test]
    fn a_damaged_checkpoint_is_refused() -> anyhow::Result<()> {
        let s = store();
        let at = s.last_delivered().expect("applied");
        let good = encoded(&s, &rebuild());
        assert!(good.len() > 1000);
        let limits = StoreLimits::default();
        let dir = tempfile::tempdir()?;
        let ck = Checkpoints::new(dir.path().to_path_buf());
        // Any flipped byte is caught by the checksum, whatever else it broke, and a
        // transfer's checkpoint with one is not kept.
        for i in (0..good.len()).step_by(97).chain([good.len() - 1]) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            let err = decode(Bytes::from(bad.clone()), StoreKind::Persistent, limits)
                .expect_err("damaged");
            assert!(err.contains("checksum"), "byte {i}: {err}");
            let err = transfer(&ck, &bad, 13).expect_err("damaged");
            assert!(err.to_string().contains("checksum"), "byte {i}: {err}");
            assert!(ck.versions(2, 0)?.is_empty());
        }
        for len in [0, 3, 20, good.len() - 1] {
            let cut = Bytes::copy_from_slice(&good[..len]);
            assert!(
                decode(cut, StoreKind::Persistent, limits).is_err(),
                "cut at {len}"
            );
            assert!(transfer(&ck, &good[..len], 7).is_err(), "cut at {len}");
        }
        // Bytes after the end, with a checksum over them that matches.
        let mut long = good[..good.len() - 4].to_vec();
        long.extend_from_slice(b"more");
        let crc = crc32c::crc32c(&long);
        long.extend_from_slice(&crc.to_le_bytes());
        let err = decode(Bytes::from(long), StoreKind::Persistent, limits).expect_err("long");
        assert!(err.contains("4 bytes after its end"), "{err}");
        // A transferred one is kept whole, under its own version, whatever its pieces.
        for piece in [1, 3, 4, 5, 1000, good.len()] {
            assert_eq!(transfer(&ck, &good, piece)?, at);
            assert_eq!(ck.versions(2, 0)?, vec![at]);
            assert!(fs::read(ck.path(2, 0, at))? == good, "pieces of {piece}");
            assert!(!ck.dir(2, 0).join(TRANSFER_TMP).exists());
            ck.remove(2, 0, at)?;
        }
        ck.write_encoded(1, 1, at, &good)?;
        let path = ck.path(1, 1, at);
        let mut bytes = fs::read(&path)?;
        bytes[40] ^= 1;
        fs::write(&path, bytes)?;
        let err = ck
            .load(1, 1, at, StoreKind::Persistent, limits)
            .expect_err("damaged");
        assert!(err.to_string().contains("checksum"), "{err}");
        Ok(())
    }

    #[test]
    fn a_checkpoint_larger_than_a_read_loads_in_one_pass() -> anyhow::Result<()> {
        // Values over several of the reader's buffers, so fields span its refills.
        let s = store_of((1..=6usize).map(|seq| {
            (
                format!("/big/k{seq}"),
                Bytes::from(vec![seq as u8; BODY_READ_BYTES + 1_000 * seq]),
            )
        }));
        let at = s.last_delivered().expect("applied");
        let dir = tempfile::tempdir()?;
        let ck = Checkpoints::new(dir.path().to_path_buf());
        ck.write(3, 0, at, s.snapshot_stream(), &outbox(), &rebuild())?;
        let loaded = ck.load(3, 0, at, StoreKind::Persistent, StoreLimits::default())?;
        assert_eq!(loaded.store.snapshot(), s.snapshot());
        assert_eq!(loaded.outbox, outbox());
        assert_eq!(loaded.rebuild, rebuild());
        Ok(())
    }

    #[test]
    fn a_checkpoint_written_before_rebuild_operations_still_reads() -> anyhow::Result<()> {
        let s = store();
        let at = s.last_delivered().expect("applied");
        let current = encoded(&s, &[]);
        // The first format: another magic, no rebuild count, its own checksum.
        let mut v1 = current[..current.len() - 8].to_vec();
        v1[..8].copy_from_slice(MAGIC_V1);
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let loaded = decode(
            Bytes::from(v1),
            StoreKind::Persistent,
            StoreLimits::default(),
        )
        .map_err(anyhow::Error::msg)?;
        assert_eq!(loaded.version, at);
        assert_eq!(loaded.store.snapshot(), s.snapshot());
        assert_eq!(loaded.outbox, outbox());
        assert!(loaded.rebuild.is_empty());
        Ok(())
    }
}
