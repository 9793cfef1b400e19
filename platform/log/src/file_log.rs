//! [`FileLog`]: the [`LogStore`] on local files.
//!
//! Layout under `LogConfig::dir`:
//! - `shard-<subgroup>-<shard>/<first version, 20 digits>.seg`: one shard's segments;
//!   zero padding makes lexical order version order.
//! - `meta.log`: the metadata log.
//!
//! Invariant that recovery leans on: every segment but a shard's last one is sealed
//! (cut to its records and fsynced) before the next one is created. A crash can
//! therefore only tear the last segment, and damage anywhere else is real corruption,
//! reported as such. The last segment may end in zeros written ahead of its records
//! (`LogConfig::preallocate_bytes`); recovery tells them from a torn tail by their being
//! all zero.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::format::{self, HEADER_BYTES, META_MAGIC, RECORD_BYTES_MAX_FORMAT, SEGMENT_MAGIC};
use crate::format::{Header, ScanEnd};
use crate::{LogConfig, LogError, LogStore, Record, RecoveryReport, ShardKey};

const META_FILE: &str = "meta.log";
const LOCK_FILE: &str = "LOCK";
const SEGMENT_SUFFIX: &str = ".seg";
/// Digits in a segment file name: enough for any u64.
const SEGMENT_NAME_DIGITS: usize = 20;

/// The file-backed log. See the crate README for the format and guarantees.
#[derive(Debug)]
pub struct FileLog {
    cfg: LogConfig,
    shards: BTreeMap<ShardKey, ShardLog>,
    meta: MetaLog,
    /// Reused encode buffer, so an append is one allocation-free write.
    scratch: Vec<u8>,
    /// Set by any I/O failure while writing; see [`LogError::Poisoned`].
    poisoned: bool,
    /// Holds an exclusive lock on `dir/LOCK` for as long as the log is open: two
    /// writers on one directory would interleave records. The kernel drops the lock
    /// when the process dies, so a crash never leaves the log locked.
    _lock: File,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes of valid records; for the active segment, where the next append goes.
    len: u64,
    /// The file's length: `len` plus the zeros written ahead of the records (only the
    /// active segment has any; sealing cuts them).
    prepared: u64,
}

/// Where one record lives. Kept for every record in memory (40 bytes each) so reads
/// never scan.
#[derive(Clone, Copy, Debug)]
struct Entry {
    version: u64,
    hlc_us: u64,
    /// First version of the segment holding it (the segment's key).
    segment: u64,
    offset: u64,
    payload_len: u32,
}

impl Entry {
    fn end(&self) -> u64 {
        self.offset + HEADER_BYTES as u64 + u64::from(self.payload_len)
    }
}

#[derive(Debug)]
struct ShardLog {
    dir: PathBuf,
    /// First version → segment; the last one is the active (appended-to) segment.
    segments: BTreeMap<u64, Segment>,
    /// Open handle of the active segment (`Some` iff `segments` is non-empty). Sealed
    /// segments are opened per read instead, so a long log does not pin one file
    /// descriptor per segment.
    active: Option<File>,
    /// Every record, in version order.
    index: VecDeque<Entry>,
    /// Whether `hlc_us` is non-decreasing along `index`. HLC normally is, which lets
    /// `get_by_time` binary search; if a clock misbehaves we fall back to a scan rather
    /// than return a wrong answer.
    hlc_monotone: bool,
    durable: Option<u64>,
    /// The active segment has writes not yet fsynced.
    unsynced: bool,
    /// Appended to since the last `sync` (what `sync` reports).
    touched: bool,
}

#[derive(Debug)]
struct MetaLog {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    /// Metadata is rare and small, so all of it stays in memory.
    records: Vec<(u8, Bytes)>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// fsync a directory, so that files created or removed in it stay so after a crash.
fn sync_dir(path: &Path) -> Result<(), LogError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_err(path))
}

fn shard_dir_name(key: ShardKey) -> String {
    format!("shard-{}-{}", key.subgroup, key.shard)
}

/// The inverse of [`shard_dir_name`]; only the canonical spelling is accepted, so two
/// directories can never claim the same shard.
fn parse_shard_dir_name(name: &str) -> Option<ShardKey> {
    let (a, b) = name.strip_prefix("shard-")?.split_once('-')?;
    let key = ShardKey {
        subgroup: a.parse().ok()?,
        shard: b.parse().ok()?,
    };
    (shard_dir_name(key) == name).then_some(key)
}

fn segment_name(first_version: u64) -> String {
    format!(
        "{first_version:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn open_rw(path: &Path, create_new: bool) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_new)
        .open(path)
        .map_err(io_err(path))
}

impl FileLog {
    /// Open (or create) the log in `cfg.dir` and recover it: scan every segment, cut a
    /// torn tail off each shard's last segment and off `meta.log`, and fsync what is
    /// kept, so that everything this log then reports durable really is.
    pub fn open(cfg: LogConfig) -> Result<(FileLog, RecoveryReport), LogError> {
        if cfg.record_bytes_max > RECORD_BYTES_MAX_FORMAT {
            return Err(LogError::InvalidConfig {
                reason: format!(
                    "record_bytes_max {} exceeds the format's limit {RECORD_BYTES_MAX_FORMAT}",
                    cfg.record_bytes_max
                ),
            });
        }
        if cfg.segment_bytes_max == 0 {
            return Err(LogError::InvalidConfig {
                reason: "segment_bytes_max must be positive".into(),
            });
        }
        fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        if let Some(parent) = cfg.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The directory may have just been created.
            sync_dir(parent)?;
        }
        let lock_path = cfg.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LogError::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let mut report = RecoveryReport::default();
        let mut shard_dirs = BTreeMap::new();
        for entry in fs::read_dir(&cfg.dir).map_err(io_err(&cfg.dir))? {
            let entry = entry.map_err(io_err(&cfg.dir))?;
            let is_dir = entry.file_type().map_err(io_err(&entry.path()))?.is_dir();
            // Anything else in the directory is not ours and is left alone.
            if let Some(key) = entry.file_name().to_str().and_then(parse_shard_dir_name)
                && is_dir
            {
                shard_dirs.insert(key, entry.path());
            }
        }
        let mut shards = BTreeMap::new();
        for (key, dir) in shard_dirs {
            shards.insert(key, ShardLog::recover(key, dir, &mut report)?);
        }
        let meta = MetaLog::recover(cfg.dir.join(META_FILE), &mut report)?;
        sync_dir(&cfg.dir)?;

        let log = FileLog {
            cfg,
            shards,
            meta,
            scratch: Vec::new(),
            poisoned: false,
            _lock: lock,
        };
        Ok((log, report))
    }

    /// The configuration this log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// Run a mutating step; an I/O error in it leaves disk state unknown, so poison.
    fn guarded<T>(
        &mut self,
        step: impl FnOnce(&mut FileLog) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let result = step(self);
        if matches!(result, Err(LogError::Io { .. })) {
            self.poisoned = true;
        }
        result
    }

    fn check_size(&self, payload_bytes: usize) -> Result<(), LogError> {
        if payload_bytes > self.cfg.record_bytes_max {
            return Err(LogError::RecordTooLarge {
                payload_bytes,
                record_bytes_max: self.cfg.record_bytes_max,
            });
        }
        Ok(())
    }

    /// Writes `records` (checked already: sizes, increasing versions) to `key`'s log,
    /// with one write per segment they land in.
    fn append_checked(&mut self, key: ShardKey, records: &[Record]) -> Result<(), LogError> {
        let shard = match self.shards.entry(key) {
            MapEntry::Occupied(shard) => shard.into_mut(),
            MapEntry::Vacant(slot) => {
                let dir = self.cfg.dir.join(shard_dir_name(key));
                match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&dir)(e)),
                }
                sync_dir(&self.cfg.dir)?;
                slot.insert(ShardLog::empty(dir))
            }
        };
        let record_bytes = |r: &Record| HEADER_BYTES as u64 + r.payload.len() as u64;
        let mut rest = records;
        while let Some(first) = rest.first() {
            let roll = match shard.segments.last_key_value() {
                None => true,
                Some((_, active)) => {
                    active.len > 0 && active.len + record_bytes(first) > self.cfg.segment_bytes_max
                }
            };
            if roll {
                shard.retire_active()?;
                shard.create_segment(first.version)?;
            }
            let (Some(file), Some(mut active)) = (&shard.active, shard.segments.last_entry())
            else {
                return Err(corrupt(&shard.dir, 0, "no active segment after rolling"));
            };
            let segment = *active.key();
            let active = active.get_mut();
            // The records that fit in this segment (the first always does: it rolled).
            let mut end = active.len;
            let mut run = 0;
            let mut largest = 0;
            for r in rest {
                let bytes = record_bytes(r);
                if run > 0 && end + bytes > self.cfg.segment_bytes_max {
                    break;
                }
                end += bytes;
                largest = largest.max(bytes);
                run += 1;
            }
            let (now, later) = rest.split_at(run);
            self.scratch.clear();
            for r in now {
                format::encode_after(
                    SEGMENT_MAGIC,
                    r.version,
                    r.hlc_us,
                    &r.payload,
                    &mut self.scratch,
                );
            }
            let prepare = self.cfg.preallocate_bytes;
            if end > active.prepared && prepare > 0 && largest <= prepare / 4 {
                // Zeros ride along with this write; the sync that grows the file for them
                // is then the only one in the next `prepare` bytes that has to.
                let zeros_end = (end + prepare).min(self.cfg.segment_bytes_max).max(end);
                self.scratch
                    .resize(self.scratch.len() + (zeros_end - end) as usize, 0);
            }
            file.write_all_at(&self.scratch, active.len)
                .map_err(io_err(&active.path))?;
            active.prepared = active.prepared.max(active.len + self.scratch.len() as u64);
            let mut offset = active.len;
            active.len = end;
            for r in now {
                shard.push(Entry {
                    version: r.version,
                    hlc_us: r.hlc_us,
                    segment,
                    offset,
                    payload_len: r.payload.len() as u32,
                });
                offset += record_bytes(r);
            }
            shard.unsynced = true;
            shard.touched = true;
            rest = later;
        }
        Ok(())
    }

    fn sync_all_shards(&mut self) -> Result<Vec<(ShardKey, u64)>, LogError> {
        let mut durable = Vec::new();
        for (&key, shard) in &mut self.shards {
            shard.seal()?;
            if std::mem::take(&mut shard.touched)
                && let Some(version) = shard.durable
            {
                durable.push((key, version));
            }
        }
        Ok(durable)
    }

    fn append_meta_checked(&mut self, kind: u8, bytes: &Bytes) -> Result<(), LogError> {
        let meta = &mut self.meta;
        format::encode(
            META_MAGIC,
            meta.next_seq,
            u64::from(kind),
            bytes,
            &mut self.scratch,
        );
        meta.file
            .write_all_at(&self.scratch, meta.len)
            .and_then(|()| meta.file.sync_data())
            .map_err(io_err(&meta.path))?;
        meta.len += self.scratch.len() as u64;
        meta.next_seq += 1;
        meta.records.push((kind, bytes.clone()));
        Ok(())
    }
}

impl ShardLog {
    fn empty(dir: PathBuf) -> ShardLog {
        ShardLog {
            dir,
            segments: BTreeMap::new(),
            active: None,
            index: VecDeque::new(),
            hlc_monotone: true,
            durable: None,
            unsynced: false,
            touched: false,
        }
    }

    fn last(&self) -> Option<u64> {
        self.index.back().map(|e| e.version)
    }

    fn push(&mut self, entry: Entry) {
        if let Some(prev) = self.index.back() {
            self.hlc_monotone &= prev.hlc_us <= entry.hlc_us;
        }
        self.index.push_back(entry);
    }

    fn recompute_hlc_monotone(&mut self) {
        self.hlc_monotone = self
            .index
            .iter()
            .zip(self.index.iter().skip(1))
            .all(|(a, b)| a.hlc_us <= b.hlc_us);
    }

    /// Seal the active segment before a new one takes over: cut the zeros written ahead
    /// of its records, so that only a last segment can ever end in anything but a record,
    /// and fsync it.
    fn retire_active(&mut self) -> Result<(), LogError> {
        if let (Some(file), Some(segment)) = (&self.active, self.segments.values_mut().next_back())
            && segment.prepared > segment.len
        {
            file.set_len(segment.len).map_err(io_err(&segment.path))?;
            segment.prepared = segment.len;
            // sync_all, not sync_data: the new, smaller size is what matters here.
            file.sync_all().map_err(io_err(&segment.path))?;
        }
        self.seal()
    }

    /// fsync the active segment if it has unsynced writes. Since every earlier segment
    /// was sealed before it stopped being active, everything is then durable.
    fn seal(&mut self) -> Result<(), LogError> {
        if self.unsynced {
            if let (Some(file), Some(segment)) = (&self.active, self.segments.values().next_back())
            {
                file.sync_data().map_err(io_err(&segment.path))?;
            }
            self.unsynced = false;
        }
        self.durable = self.last();
        Ok(())
    }

    fn create_segment(&mut self, first_version: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(first_version));
        let file = open_rw(&path, true)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first_version,
            Segment {
                path,
                len: 0,
                prepared: 0,
            },
        );
        self.active = Some(file);
        Ok(())
    }

    /// Load one shard's segments, cutting a torn tail off the last one.
    fn recover(
        key: ShardKey,
        dir: PathBuf,
        report: &mut RecoveryReport,
    ) -> Result<ShardLog, LogError> {
        let mut names = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !name.ends_with(SEGMENT_SUFFIX) {
                continue;
            }
            let Some(first) = parse_segment_name(&name) else {
                return Err(corrupt(
                    &path,
                    0,
                    "segment file name is not a 20-digit version",
                ));
            };
            names.insert(first, path);
        }

        let mut shard = ShardLog::empty(dir);
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let file = open_rw(&path, false)?;
            let file_len = file.metadata().map_err(io_err(&path))?.len();
            let mut prev = shard.last();
            let mut entries = Vec::new();
            let end = format::scan(&file, &path, file_len, SEGMENT_MAGIC, |offset, h, _| {
                check_order(&path, offset, h, prev, entries.is_empty().then_some(first))?;
                prev = Some(h.version);
                entries.push(Entry {
                    version: h.version,
                    hlc_us: h.hlc_us,
                    segment: first,
                    offset,
                    payload_len: h.length,
                });
                Ok(())
            })?;
            // (records' end, file's end)
            let (len, prepared) = match end {
                ScanEnd::Clean => (file_len, file_len),
                ScanEnd::Defect { offset, .. }
                    if is_last && zeros(&file, &path, offset, file_len)? =>
                {
                    // Written ahead of the records, not torn: kept for the appends to come.
                    (offset, file_len)
                }
                ScanEnd::Defect { offset, .. } if is_last => {
                    // A crash mid-append: everything from here on was never reported
                    // durable (the last sync ended before it), so it can go.
                    file.set_len(offset).map_err(io_err(&path))?;
                    report.torn_tails_cut.push((key, file_len - offset));
                    (offset, offset)
                }
                ScanEnd::Defect { offset, defect } => {
                    return Err(corrupt(
                        &path,
                        offset,
                        format!("{} in a sealed (non-last) segment", defect.reason()),
                    ));
                }
            };
            if len == 0 {
                if !is_last {
                    return Err(corrupt(&path, 0, "empty sealed (non-last) segment"));
                }
                // Created by a roll whose first record never made it to disk.
                drop(file);
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            // The previous process may have died with these bytes only in the page
            // cache; make them durable before we call them durable.
            file.sync_all().map_err(io_err(&path))?;
            report.records += entries.len() as u64;
            report.segments += 1;
            shard.index.extend(entries);
            shard.segments.insert(
                first,
                Segment {
                    path,
                    len,
                    prepared,
                },
            );
            shard.active = is_last.then_some(file);
        }
        if shard.active.is_none()
            && let Some(segment) = shard.segments.values().next_back()
        {
            // The empty last segment was removed; the one before it is active again.
            shard.active = Some(open_rw(&segment.path, false)?);
        }
        sync_dir(&shard.dir)?;
        shard.recompute_hlc_monotone();
        shard.durable = shard.last();
        Ok(shard)
    }

    /// Read the records `entries` points at (in version order), re-verifying each CRC.
    /// Records adjacent in one segment are read with one `pread`.
    fn read<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        let mut run: Vec<&Entry> = Vec::new();
        for entry in entries {
            if run
                .last()
                .is_some_and(|prev| prev.segment != entry.segment || prev.end() != entry.offset)
            {
                self.read_run(&run, &mut out)?;
                run.clear();
            }
            run.push(entry);
        }
        if !run.is_empty() {
            self.read_run(&run, &mut out)?;
        }
        Ok(out)
    }

    fn read_run(&self, run: &[&Entry], out: &mut Vec<Record>) -> Result<(), LogError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let Some(segment) = self.segments.get(&first.segment) else {
            return Err(corrupt(
                &self.dir,
                first.offset,
                "index names a missing segment",
            ));
        };
        let is_active = self.segments.keys().next_back() == Some(&first.segment);
        let opened;
        let file = match &self.active {
            Some(file) if is_active => file,
            _ => {
                opened = File::open(&segment.path).map_err(io_err(&segment.path))?;
                &opened
            }
        };
        let start = first.offset;
        let mut buf = vec![0u8; (last.end() - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(io_err(&segment.path))?;
        let buf = Bytes::from(buf);
        for entry in run {
            let at = (entry.offset - start) as usize;
            let header = format::decode(&buf[at..], SEGMENT_MAGIC)
                .map_err(|d| corrupt(&segment.path, entry.offset, d.reason()))?;
            if header.version != entry.version || header.length != entry.payload_len {
                return Err(corrupt(
                    &segment.path,
                    entry.offset,
                    "record differs from the one indexed at open",
                ));
            }
            let payload_at = at + HEADER_BYTES;
            out.push(Record {
                version: header.version,
                hlc_us: header.hlc_us,
                payload: buf.slice(payload_at..payload_at + header.length as usize),
            });
        }
        Ok(())
    }

    fn truncate_after(&mut self, version: Option<u64>) -> Result<(), LogError> {
        let keep = match version {
            None => 0,
            Some(v) => self.index.partition_point(|e| e.version <= v),
        };
        if keep == self.index.len() {
            return Ok(());
        }
        // Whole segments go first, newest first, so that a crash part-way leaves a
        // prefix of the log; cutting the kept segment first could leave a hole.
        let doomed: Vec<u64> = match version {
            None => self.segments.keys().copied().collect(),
            Some(v) => self
                .segments
                .range((Bound::Excluded(v), Bound::Unbounded))
                .map(|(&k, _)| k)
                .collect(),
        };
        if !doomed.is_empty() {
            // The active segment is among them; release it before deleting.
            self.active = None;
        }
        for first in doomed.iter().rev() {
            if let Some(segment) = self.segments.remove(first) {
                fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            }
        }
        sync_dir(&self.dir)?;
        if let Some(kept) = keep.checked_sub(1).and_then(|i| self.index.get(i)).copied() {
            let Some(segment) = self.segments.get_mut(&kept.segment) else {
                return Err(corrupt(
                    &self.dir,
                    kept.offset,
                    "index names a missing segment",
                ));
            };
            // The kept segment is now the last one, hence the active one.
            let file = match self.active.take() {
                Some(file) => file,
                None => open_rw(&segment.path, false)?,
            };
            file.set_len(kept.end()).map_err(io_err(&segment.path))?;
            // sync_all, not sync_data: the new, smaller size is what matters here.
            file.sync_all().map_err(io_err(&segment.path))?;
            segment.len = kept.end();
            segment.prepared = kept.end();
            self.active = Some(file);
        }
        self.index.truncate(keep);
        self.unsynced = false;
        self.durable = self.last();
        self.recompute_hlc_monotone();
        Ok(())
    }

    fn compact_before(&mut self, version: u64) -> Result<(), LogError> {
        // The active segment is never dropped, so `last_version` (and with it the
        // strictly-increasing check) survives compaction.
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut dropped = Vec::new();
        for pair in firsts.windows(2) {
            let next_first = pair[1];
            let next_at = self.index.partition_point(|e| e.version < next_first);
            let Some(last_here) = next_at.checked_sub(1).and_then(|i| self.index.get(i)) else {
                break;
            };
            if last_here.version >= version {
                break;
            }
            dropped.push(pair[0]);
        }
        if dropped.is_empty() {
            return Ok(());
        }
        // Oldest first: a crash part-way leaves a contiguous suffix.
        for first in &dropped {
            if let Some(segment) = self.segments.remove(first) {
                fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            }
        }
        sync_dir(&self.dir)?;
        let keep_from = self.segments.keys().next().copied().unwrap_or(u64::MAX);
        let drop_count = self.index.partition_point(|e| e.version < keep_from);
        self.index.drain(..drop_count);
        self.recompute_hlc_monotone();
        Ok(())
    }
}

/// Whether bytes `from..to` of `file` are all zero: zeros written ahead of the records,
/// as opposed to a torn or damaged tail.
fn zeros(file: &File, path: &Path, from: u64, to: u64) -> Result<bool, LogError> {
    const CHUNK_BYTES: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK_BYTES.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK_BYTES) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io_err(path))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Recovery's ordering checks for a record that passed its CRC. A valid record in the
/// wrong place is not a torn write, so these are always corruption.
fn check_order(
    path: &Path,
    offset: u64,
    header: &Header,
    prev: Option<u64>,
    segment_first: Option<u64>,
) -> Result<(), LogError> {
    if let Some(first) = segment_first
        && header.version != first
    {
        return Err(corrupt(
            path,
            offset,
            format!(
                "first record has version {} but the file is named for {first}",
                header.version
            ),
        ));
    }
    if let Some(prev) = prev
        && header.version <= prev
    {
        return Err(corrupt(
            path,
            offset,
            format!("version {} does not follow {prev}", header.version),
        ));
    }
    Ok(())
}

impl MetaLog {
    fn recover(path: PathBuf, report: &mut RecoveryReport) -> Result<MetaLog, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let mut records = Vec::new();
        let end = format::scan(&file, &path, file_len, META_MAGIC, |offset, h, payload| {
            let expected = records.len() as u64 + 1;
            if h.version != expected {
                return Err(corrupt(
                    &path,
                    offset,
                    format!("sequence number {} where {expected} was due", h.version),
                ));
            }
            let kind = u8::try_from(h.hlc_us)
                .map_err(|_| corrupt(&path, offset, format!("kind {} is not a u8", h.hlc_us)))?;
            records.push((kind, Bytes::copy_from_slice(payload)));
            Ok(())
        })?;
        let len = match end {
            ScanEnd::Clean => file_len,
            ScanEnd::Defect { offset, .. } => {
                // append_meta fsyncs before returning, so only an unacknowledged
                // append can be torn.
                file.set_len(offset).map_err(io_err(&path))?;
                report.meta_bytes_cut = file_len - offset;
                offset
            }
        };
        file.sync_all().map_err(io_err(&path))?;
        report.meta_records = records.len() as u64;
        Ok(MetaLog {
            path,
            file,
            len,
            next_seq: records.len() as u64 + 1,
            records,
        })
    }
}

impl LogStore for FileLog {
    fn append(&mut self, shard: ShardKey, record: Record) -> Result<(), LogError> {
        self.append_many(shard, std::slice::from_ref(&record))
    }

    fn append_many(&mut self, shard: ShardKey, records: &[Record]) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        // Every record is checked before any is written: a refused one writes nothing.
        let mut last = self.last_version(shard);
        for record in records {
            self.check_size(record.payload.len())?;
            if let Some(last) = last
                && record.version <= last
            {
                return Err(LogError::NotIncreasing {
                    shard,
                    version: record.version,
                    last,
                });
            }
            last = Some(record.version);
        }
        self.guarded(|log| log.append_checked(shard, records))
    }

    fn sync(&mut self) -> Result<Vec<(ShardKey, u64)>, LogError> {
        self.guarded(FileLog::sync_all_shards)
    }

    fn durable_version(&self, shard: ShardKey) -> Option<u64> {
        self.shards.get(&shard)?.durable
    }

    fn last_version(&self, shard: ShardKey) -> Option<u64> {
        self.shards.get(&shard)?.last()
    }

    fn get(&self, shard: ShardKey, version: u64) -> Result<Option<Record>, LogError> {
        let Some(log) = self.shards.get(&shard) else {
            return Ok(None);
        };
        let Ok(at) = log.index.binary_search_by_key(&version, |e| e.version) else {
            return Ok(None);
        };
        Ok(log.read(log.index.get(at))?.pop())
    }

    fn get_by_time(&self, shard: ShardKey, hlc_us: u64) -> Result<Option<Record>, LogError> {
        let Some(log) = self.shards.get(&shard) else {
            return Ok(None);
        };
        let found = if log.hlc_monotone {
            let after = log.index.partition_point(|e| e.hlc_us <= hlc_us);
            after.checked_sub(1).and_then(|i| log.index.get(i))
        } else {
            log.index.iter().rev().find(|e| e.hlc_us <= hlc_us)
        };
        Ok(log.read(found)?.pop())
    }

    fn range(&self, shard: ShardKey, from: u64, to: u64) -> Result<Vec<Record>, LogError> {
        let Some(log) = self.shards.get(&shard) else {
            return Ok(Vec::new());
        };
        if from > to {
            return Ok(Vec::new());
        }
        let lo = log.index.partition_point(|e| e.version < from);
        let hi = log.index.partition_point(|e| e.version <= to);
        log.read(log.index.range(lo..hi))
    }

    fn range_bounded(
        &self,
        shard: ShardKey,
        from: u64,
        to: u64,
        payload_bytes_max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let Some(log) = self.shards.get(&shard) else {
            return Ok(Vec::new());
        };
        let lo = log.index.partition_point(|e| e.version < from);
        let mut bytes = 0usize;
        let entries = log
            .index
            .range(lo..)
            .take_while(|e| e.version <= to)
            .enumerate()
            .take_while(|(i, e)| {
                bytes = bytes.saturating_add(e.payload_len as usize);
                *i == 0 || bytes <= payload_bytes_max
            })
            .map(|(_, e)| e);
        log.read(entries)
    }

    fn truncate_after(&mut self, shard: ShardKey, version: Option<u64>) -> Result<(), LogError> {
        self.guarded(|log| match log.shards.get_mut(&shard) {
            Some(shard) => shard.truncate_after(version),
            None => Ok(()),
        })
    }

    fn compact_before(&mut self, shard: ShardKey, version: u64) -> Result<(), LogError> {
        self.guarded(|log| match log.shards.get_mut(&shard) {
            Some(shard) => shard.compact_before(version),
            None => Ok(()),
        })
    }

    fn shards(&self) -> Vec<ShardKey> {
        self.shards.keys().copied().collect()
    }

    fn append_meta(&mut self, kind: u8, bytes: Bytes) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.check_size(bytes.len())?;
        self.guarded(|log| log.append_meta_checked(kind, &bytes))
    }

    fn meta(&self) -> Result<Vec<(u8, Bytes)>, LogError> {
        Ok(self.meta.records.clone())
    }
}
