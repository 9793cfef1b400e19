//! Helpers shared by the integration tests: deterministic records, so every test can
//! check content and not just presence, and paths that follow the documented layout.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use squall_log::{FileLog, HEADER_BYTES, LogConfig, Record, RecoveryReport, ShardKey};

pub const A: ShardKey = ShardKey {
    subgroup: 0,
    shard: 0,
};
pub const B: ShardKey = ShardKey {
    subgroup: 3,
    shard: 1,
};

/// Payload of `version`: its little-endian bytes repeated, 1 to 3,000 bytes long.
pub fn payload(version: u64) -> Bytes {
    let len = 1 + (version.wrapping_mul(2_654_435_761) % 3_000) as usize;
    let pattern = version.to_le_bytes();
    Bytes::from((0..len).map(|i| pattern[i % 8]).collect::<Vec<u8>>())
}

/// The record the tests append for `version`; HLC is ten times the version.
pub fn rec(version: u64) -> Record {
    Record {
        version,
        hlc_us: version * 10,
        payload: payload(version),
    }
}

/// Bytes `rec(version)` takes on disk.
pub fn rec_bytes(version: u64) -> u64 {
    (HEADER_BYTES + payload(version).len()) as u64
}

/// A configuration without preallocation, so that a segment file is exactly its records
/// back to back: the layout the format tests count bytes of.
pub fn config(dir: &Path, segment_bytes_max: u64) -> LogConfig {
    preallocating(dir, segment_bytes_max, 0)
}

/// A configuration writing zeros ahead of the records, `preallocate_bytes` at a time.
pub fn preallocating(dir: &Path, segment_bytes_max: u64, preallocate_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max,
        preallocate_bytes,
        ..LogConfig::new(dir)
    }
}

pub fn open(dir: &Path, segment_bytes_max: u64) -> (FileLog, RecoveryReport) {
    FileLog::open(config(dir, segment_bytes_max)).expect("open log")
}

pub fn shard_dir(dir: &Path, key: ShardKey) -> PathBuf {
    dir.join(format!("shard-{}-{}", key.subgroup, key.shard))
}

/// A shard's segment files in version order.
pub fn segments(dir: &Path, key: ShardKey) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(shard_dir(dir, key))
        .expect("read shard dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    paths.sort();
    paths
}
