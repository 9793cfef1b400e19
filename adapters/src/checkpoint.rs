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

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use squall_kvs::{ShardStore, SnapshotLoader, SnapshotStream, StoreKind, StoreLimits};
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

    /// Keeps the checkpoint a state transfer brought (`bytes`, checked whole) as this
    /// shard's, durably; its version. Blocking. The driver calls it (as its
    /// `StateKeeper`) before the shard's log takes the records that follow it.
    pub fn keep_transferred(
        &self,
        subgroup: u32,
        shard: u32,
        bytes: &[u8],
    ) -> Result<Version, CheckpointError> {
        let version = version_of(bytes).map_err(|reason| CheckpointError::Damaged {
            path: self.dir(subgroup, shard),
            reason: format!("the transferred checkpoint: {reason}"),
        })?;
        self.write_encoded(subgroup, shard, version, bytes)?;
        Ok(version)
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
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(&path))?;
        let loaded = decode(Bytes::from(bytes), kind, limits).map_err(|reason| {
            CheckpointError::Damaged {
                path: path.clone(),
                reason,
            }
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

/// Counts CRC32C over what passes through.
struct Crc<'a> {
    out: &'a mut dyn Write,
    crc: u32,
}

impl Write for Crc<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a field over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// Encodes a checkpoint of the state `stream` was taken at, a piece at a time.
pub fn encode(
    version: Version,
    mut stream: SnapshotStream,
    outbox: &[(String, OutboxEntry)],
    rebuild: &[Bytes],
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut w = Crc { out, crc: 0 };
    w.write_all(MAGIC)?;
    w.write_all(&version.0.to_le_bytes())?;
    loop {
        let (piece, last) = stream.next_piece(PIECE_BYTES);
        if !piece.is_empty() {
            put_bytes(&mut w, &piece)?;
        }
        if last {
            break;
        }
    }
    w.write_all(&0u32.to_le_bytes())?;
    let count = u32::try_from(outbox.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many outbox entries"))?;
    w.write_all(&count.to_le_bytes())?;
    for (site, e) in outbox {
        put_bytes(&mut w, site.as_bytes())?;
        w.write_all(&e.version.0.to_le_bytes())?;
        w.write_all(&e.timestamp_us.to_le_bytes())?;
        w.write_all(&[u8::from(e.trigger)])?;
        put_bytes(&mut w, e.key.as_bytes())?;
        put_bytes(&mut w, &e.blob)?;
    }
    let count = u32::try_from(rebuild.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many rebuild operations"))?;
    w.write_all(&count.to_le_bytes())?;
    for op in rebuild {
        put_bytes(&mut w, op)?;
    }
    let crc = w.crc;
    w.out.write_all(&crc.to_le_bytes())
}

/// Encodes a checkpoint into memory (a state transfer's application state).
pub fn encode_to_bytes(
    version: Version,
    stream: SnapshotStream,
    outbox: &[(String, OutboxEntry)],
    rebuild: &[Bytes],
) -> Bytes {
    let mut out = Vec::new();
    // Writing to a Vec fails only for a field over 4 GiB, which no limit allows.
    if let Err(e) = encode(version, stream, outbox, rebuild, &mut out) {
        tracing::error!(error = %e, "encoding a checkpoint");
        return Bytes::new();
    }
    Bytes::from(out)
}

/// The length of an encoded checkpoint's body (all but its checksum), once the checksum
/// checks out.
fn checked_body_len(bytes: &[u8]) -> Result<usize, String> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or("shorter than its checksum")?;
    let stored = u32::from_le_bytes(
        bytes[body_len..]
            .try_into()
            .map_err(|_| "shorter than its checksum")?,
    );
    if crc32c::crc32c(&bytes[..body_len]) != stored {
        return Err("its checksum does not match".to_string());
    }
    Ok(body_len)
}

/// The version of an encoded checkpoint, once its checksum and header check out.
pub fn version_of(bytes: &[u8]) -> Result<Version, String> {
    let body_len = checked_body_len(bytes)?;
    if body_len < 16 || (&bytes[..8] != MAGIC && &bytes[..8] != MAGIC_V1) {
        return Err("not a checkpoint (bad magic)".to_string());
    }
    let version: [u8; 8] = bytes[8..16]
        .try_into()
        .map_err(|_| "it ends inside its header")?;
    Ok(Version(u64::from_le_bytes(version)))
}

/// Reads a checkpoint; the reason if it is damaged.
pub fn decode(mut bytes: Bytes, kind: StoreKind, limits: StoreLimits) -> Result<Loaded, String> {
    let body_len = checked_body_len(&bytes)?;
    bytes.truncate(body_len);
    let r = &mut bytes;
    let need = |r: &Bytes, n: usize, what: &str| {
        if r.remaining() < n {
            Err(format!("it ends inside {what}"))
        } else {
            Ok(())
        }
    };
    need(r, 16, "its header")?;
    let has_rebuild = match &r[..8] {
        m if m == MAGIC => true,
        m if m == MAGIC_V1 => false,
        _ => return Err("not a checkpoint (bad magic)".to_string()),
    };
    r.advance(8);
    let version = Version(r.get_u64_le());
    let take = |r: &mut Bytes, what: &str| -> Result<Bytes, String> {
        need(r, 4, what)?;
        let len = r.get_u32_le() as usize;
        need(r, len, what)?;
        Ok(r.split_to(len))
    };
    let mut loader = SnapshotLoader::new(kind, limits);
    loop {
        let piece = take(r, "the snapshot")?;
        if piece.is_empty() {
            break;
        }
        // A copy per piece, so that what the store keeps does not pin the whole file.
        loader
            .push(Bytes::copy_from_slice(&piece))
            .map_err(|e| e.to_string())?;
    }
    let store = loader.finish().map_err(|e| e.to_string())?;
    if store.last_delivered() != Some(version) {
        return Err(format!(
            "its store is at {:?}, not at its version {version}",
            store.last_delivered()
        ));
    }
    need(r, 4, "the outbox")?;
    let count = r.get_u32_le() as usize;
    let mut outbox = Vec::with_capacity(count.min(r.remaining() / 29));
    for _ in 0..count {
        let site = String::from_utf8(take(r, "an outbox site")?.to_vec())
            .map_err(|_| "an outbox site is not UTF-8")?;
        need(r, 17, "an outbox entry")?;
        let version = Version(r.get_u64_le());
        let timestamp_us = r.get_u64_le();
        let trigger = r.get_u8() != 0;
        let key = String::from_utf8(take(r, "an outbox key")?.to_vec())
            .map_err(|_| "an outbox key is not UTF-8")?;
        let blob = Bytes::copy_from_slice(&take(r, "an outbox value")?);
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
        need(r, 4, "the rebuild operations")?;
        let count = r.get_u32_le() as usize;
        rebuild.reserve(count.min(r.remaining() / 4));
        for _ in 0..count {
            // Copied out, as the snapshot's pieces are: a plugin kept must not pin the file.
            rebuild.push(Bytes::copy_from_slice(&take(r, "a rebuild operation")?));
        }
    }
    if r.has_remaining() {
        return Err(format!("{} bytes after its end", r.remaining()));
    }
    Ok(Loaded {
        version,
        store,
        outbox,
        rebuild,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_kvs::{Condition, MessageId, Op, Outcome};

    fn store() -> ShardStore {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        for seq in 1..=20u32 {
            let op = Op::Put {
                id: MessageId {
                    client: 7,
                    seq: u64::from(seq),
                },
                hlc_us: 1_000 + u64::from(seq),
                condition: Condition::Always,
                pool_generation: 0,
                key: format!("/p/k{}", seq % 3),
                blob: Bytes::from(vec![seq as u8; 100 * seq as usize]),
            };
            let (outcome, _) = s.apply(Version::new(1, seq), &op);
            assert!(matches!(outcome, Outcome::Applied { .. }));
        }
        s
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
        // The bytes a transfer carries are the file's.
        let bytes = encode_to_bytes(at, s.snapshot_stream(), &outbox(), &rebuild());
        assert_eq!(bytes, fs::read(ck.path(1, 2, at))?);
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

    #[test]
    fn a_damaged_checkpoint_is_refused() -> anyhow::Result<()> {
        let s = store();
        let at = s.last_delivered().expect("applied");
        let good = encode_to_bytes(at, s.snapshot_stream(), &outbox(), &rebuild()).to_vec();
        let limits = StoreLimits::default();
        // Any flipped byte, and any cut, is caught.
        for i in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(
                decode(Bytes::from(bad.clone()), StoreKind::Persistent, limits).is_err(),
                "byte {i}"
            );
            assert!(version_of(&bad).is_err(), "byte {i}");
        }
        for len in [0, 3, 20, good.len() - 1] {
            let cut = Bytes::copy_from_slice(&good[..len]);
            assert!(
                decode(cut, StoreKind::Persistent, limits).is_err(),
                "cut at {len}"
            );
            assert!(version_of(&good[..len]).is_err(), "cut at {len}");
        }
        let dir = tempfile::tempdir()?;
        let ck = Checkpoints::new(dir.path().to_path_buf());
        // A transferred one is kept only whole, under its own version.
        let mut bad = good.clone();
        bad[30] ^= 1;
        assert!(ck.keep_transferred(2, 0, &bad).is_err());
        assert!(ck.versions(2, 0)?.is_empty());
        assert_eq!(ck.keep_transferred(2, 0, &good)?, at);
        assert!(ck.has(2, 0, at));
        assert_eq!(fs::read(ck.path(2, 0, at))?, good);
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
    fn a_checkpoint_written_before_rebuild_operations_still_reads() -> anyhow::Result<()> {
        let s = store();
        let at = s.last_delivered().expect("applied");
        let current = encode_to_bytes(at, s.snapshot_stream(), &outbox(), &[]).to_vec();
        // The first format: another magic, no rebuild count, its own checksum.
        let mut v1 = current[..current.len() - 8].to_vec();
        v1[..8].copy_from_slice(MAGIC_V1);
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(version_of(&v1), Ok(at));
        let loaded = decode(
            Bytes::from(v1),
            StoreKind::Persistent,
            StoreLimits::default(),
        )
        .map_err(anyhow::Error::msg)?;
        assert_eq!(loaded.store.snapshot(), s.snapshot());
        assert_eq!(loaded.outbox, outbox());
        assert!(loaded.rebuild.is_empty());
        Ok(())
    }
}
