//! FileLog against real files in temporary directories: the API round trip, segment
//! rolling and compaction, recovery from torn tails and from corruption, ragged trims,
//! argument errors and the metadata log.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use common::{A, B, open, payload, preallocating, rec, rec_bytes, segments, shard_dir};
use squall_log::{
    FileLog, HEADER_BYTES, LogConfig, LogError, LogStore, RECORD_BYTES_MAX_FORMAT, Record, ShardKey,
};

type TestResult = Result<(), LogError>;

/// Large enough that the tests which count bytes see a single segment.
const ONE_SEGMENT: u64 = 1 << 30;

fn versions(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.version).collect()
}

/// Check that `shard` holds exactly `rec(v)` for each `v` in `expected`, in order.
fn assert_holds(log: &FileLog, shard: ShardKey, expected: &[u64]) -> TestResult {
    let all = log.range(shard, 0, u64::MAX)?;
    assert_eq!(versions(&all), expected, "versions of {shard:?}");
    for record in &all {
        assert_eq!(
            record,
            &rec(record.version),
            "content of version {}",
            record.version
        );
    }
    Ok(())
}

fn append_range(log: &mut FileLog, shard: ShardKey, versions: impl Iterator<Item = u64>) {
    for v in versions {
        log.append(shard, rec(v)).expect("append");
    }
}

/// Flip one bit of the byte at `offset` in `path`.
fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read file");
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).expect("write file");
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncate file");
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

/// Offset of `rec(version)` in a single segment holding `first..`, all consecutive.
fn offset_of(first: u64, version: u64) -> u64 {
    (first..version).map(rec_bytes).sum()
}

#[test]
fn round_trip_and_reopen() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, report) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(report.records, 0);
    assert!(log.shards().is_empty());

    append_range(&mut log, A, 1..=50);
    append_range(&mut log, B, (2..=20).step_by(2));
    assert_eq!(log.last_version(A), Some(50));
    assert_eq!(
        log.durable_version(A),
        None,
        "nothing is durable before sync"
    );
    assert_eq!(log.sync()?, vec![(A, 50), (B, 20)]);
    assert_eq!(log.durable_version(A), Some(50));
    assert_eq!(log.durable_version(B), Some(20));
    assert_eq!(log.sync()?, vec![], "no shard touched since the last sync");

    let check = |log: &FileLog| -> TestResult {
        assert_eq!(log.shards(), vec![A, B]);
        assert_holds(log, A, &(1..=50).collect::<Vec<_>>())?;
        assert_holds(log, B, &(2..=20).step_by(2).collect::<Vec<_>>())?;
        assert_eq!(log.get(A, 17)?, Some(rec(17)));
        assert_eq!(log.get(B, 7)?, None, "a version never appended");
        assert_eq!(log.get(A, 51)?, None);
        assert_eq!(
            log.get(
                ShardKey {
                    subgroup: 9,
                    shard: 9
                },
                1
            )?,
            None
        );
        assert_eq!(
            versions(&log.range(A, 10, 20)?),
            (10..=20).collect::<Vec<_>>()
        );
        assert_eq!(versions(&log.range(B, 5, 9)?), vec![6, 8]);
        assert!(log.range(A, 20, 10)?.is_empty());
        // hlc_us = 10 * version.
        assert_eq!(log.get_by_time(A, 105)?, Some(rec(10)));
        assert_eq!(log.get_by_time(A, 110)?, Some(rec(11)));
        assert_eq!(log.get_by_time(A, 9)?, None);
        assert_eq!(log.get_by_time(A, u64::MAX)?, Some(rec(50)));
        assert_eq!(log.get_by_time(B, 75)?, Some(rec(6)));
        Ok(())
    };
    check(&log)?;
    drop(log);

    let (log, report) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(report.records, 60);
    assert!(report.torn_tails_cut.is_empty());
    assert_eq!(log.durable_version(A), Some(50));
    assert_eq!(log.last_version(B), Some(20));
    check(&log)
}

#[test]
fn segments_roll_and_reopen() -> TestResult {
    // Without preallocation, and with zeros written ahead 2 KiB at a time: sealing cuts
    // them, so only the last segment may end in them.
    for preallocate_bytes in [0, 2 * 1024] {
        segments_roll_and_reopen_case(preallocate_bytes)?;
    }
    Ok(())
}

fn segments_roll_and_reopen_case(preallocate_bytes: u64) -> TestResult {
    const SEGMENT_BYTES_MAX: u64 = 8 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = preallocating(dir.path(), SEGMENT_BYTES_MAX, preallocate_bytes);
    let (mut log, _) = FileLog::open(cfg.clone())?;
    append_range(&mut log, A, 1..=200);
    log.sync()?;
    drop(log);

    let files = segments(dir.path(), A);
    assert!(files.len() > 20, "only {} segments", files.len());
    let mut next = 1;
    for (i, path) in files.iter().enumerate() {
        // Named by the first version they hold, zero padded to 20 digits.
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name, format!("{next:020}.seg"));
        // Records fill the file back to back; a segment only exceeds the limit when it
        // holds a single record.
        let len = file_len(path);
        assert!(len <= SEGMENT_BYTES_MAX || len == rec_bytes(next));
        let mut used = 0;
        while used < len && next <= 200 {
            used += rec_bytes(next);
            next += 1;
        }
        if i + 1 < files.len() || preallocate_bytes == 0 {
            assert_eq!(used, len, "{} ends mid-record or in zeros", path.display());
        } else {
            assert!(used <= len && zeros_from(path, used), "{}", path.display());
        }
    }
    assert_eq!(next, 201);

    let (log, report) = FileLog::open(cfg)?;
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_eq!(report.segments, files.len() as u64);
    assert_eq!(report.records, 200);
    assert_holds(&log, A, &(1..=200).collect::<Vec<_>>())?;
    assert_eq!(log.get_by_time(A, 1_234)?, Some(rec(123)));
    Ok(())
}

#[test]
fn compact_before_drops_only_whole_old_segments() -> TestResult {
    const SEGMENT_BYTES_MAX: u64 = 8 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    append_range(&mut log, A, 1..=200);
    log.sync()?;
    let before = segments(dir.path(), A);

    log.compact_before(A, 100)?;
    let after = segments(dir.path(), A);
    assert!(after.len() < before.len(), "nothing was compacted");
    let first_kept: u64 = after[0]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("segment name");
    assert!(first_kept <= 100, "segment holding version 100 was dropped");
    assert!(first_kept > 1);
    // The segment before the first kept one ended below 100, so nothing more could go.
    let check = |log: &FileLog| -> TestResult {
        assert_eq!(log.get(A, first_kept - 1)?, None);
        assert_eq!(log.get(A, 1)?, None);
        assert_eq!(
            log.get_by_time(A, 5)?,
            None,
            "time travel before the compacted point"
        );
        assert_holds(log, A, &(first_kept..=200).collect::<Vec<_>>())
    };
    check(&log)?;
    drop(log);
    let (mut log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    check(&log)?;

    // Even compacting past everything keeps the active segment, so the version order
    // check still knows where the shard stands.
    log.compact_before(A, u64::MAX)?;
    assert_eq!(segments(dir.path(), A).len(), 1);
    assert_eq!(log.last_version(A), Some(200));
    assert!(matches!(
        log.append(A, rec(150)),
        Err(LogError::NotIncreasing { last: 200, .. })
    ));
    log.append(A, rec(201))?;
    log.sync()?;
    assert_eq!(log.get(A, 201)?, Some(rec(201)));
    assert_eq!(log.get(A, 200)?, Some(rec(200)));
    Ok(())
}

/// Append 1..=20 and sync, append 21..=25 without syncing, damage the single segment
/// with `damage(path)`, reopen, and check that the log holds exactly `1..=expect_last`,
/// that the report names `expect_cut` bytes, and that appending then works.
fn torn_tail_case(damage: impl FnOnce(&Path), expect_last: u64, expect_cut: u64) -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    append_range(&mut log, A, 1..=20);
    assert_eq!(log.sync()?, vec![(A, 20)]);
    append_range(&mut log, A, 21..=25);
    drop(log);

    let files = segments(dir.path(), A);
    assert_eq!(files.len(), 1);
    damage(&files[0]);

    let (mut log, report) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(report.torn_tails_cut, vec![(A, expect_cut)]);
    assert_eq!(report.records, expect_last);
    assert!(
        expect_last >= 20,
        "the case itself must not damage durable records"
    );
    assert_holds(&log, A, &(1..=expect_last).collect::<Vec<_>>())?;
    assert_eq!(log.durable_version(A), Some(expect_last));
    assert_eq!(file_len(&files[0]), offset_of(1, expect_last + 1));

    log.append(A, rec(expect_last + 1))?;
    assert_eq!(log.sync()?, vec![(A, expect_last + 1)]);
    drop(log);
    let (log, report) = open(dir.path(), ONE_SEGMENT);
    assert!(report.torn_tails_cut.is_empty());
    assert_holds(&log, A, &(1..=expect_last + 1).collect::<Vec<_>>())
}

#[test]
fn torn_tail_cut_mid_payload() -> TestResult {
    let at = offset_of(1, 23) + HEADER_BYTES as u64 + 1;
    torn_tail_case(|path| set_len(path, at), 22, at - offset_of(1, 23))
}

#[test]
fn torn_tail_cut_mid_header() -> TestResult {
    let at = offset_of(1, 21) + 10;
    torn_tail_case(|path| set_len(path, at), 20, 10)
}

#[test]
fn torn_tail_flipped_payload_byte_in_last_record() -> TestResult {
    let last = offset_of(1, 25);
    torn_tail_case(
        |path| flip_byte(path, last + HEADER_BYTES as u64),
        24,
        rec_bytes(25),
    )
}

#[test]
fn torn_tail_bad_record_drops_valid_ones_after_it() -> TestResult {
    // Unsynced writes can reach the disk out of order, so intact records after a bad
    // one (22..=25 here) are not a prefix of the log and must go with it.
    let at = offset_of(1, 21);
    torn_tail_case(|path| flip_byte(path, at + 24), 20, offset_of(21, 26))
}

#[test]
fn torn_tail_garbage_appended() -> TestResult {
    torn_tail_case(
        |path| {
            let mut file = OpenOptions::new().append(true).open(path).expect("open");
            file.write_all(&[0xAB; 100]).expect("write garbage");
        },
        25,
        100,
    )
}

#[test]
fn torn_tail_header_claiming_huge_length() -> TestResult {
    torn_tail_case(
        |path| {
            let mut file = OpenOptions::new().append(true).open(path).expect("open");
            let mut header = Vec::new();
            header.extend_from_slice(b"SQLR");
            header.extend_from_slice(&u32::MAX.to_le_bytes());
            header.extend_from_slice(&[0; 20]);
            file.write_all(&header).expect("write header");
        },
        25,
        HEADER_BYTES as u64,
    )
}

#[test]
fn torn_first_record_of_new_segment_removes_it() -> TestResult {
    const SEGMENT_BYTES_MAX: u64 = 8 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    append_range(&mut log, A, 1..=30);
    log.sync()?;
    drop(log);
    let files = segments(dir.path(), A);
    let last = files.last().expect("segments");
    let first: u64 = last
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("segment name");
    // Keep the last segment's first header only partly, as if the crash hit the roll.
    set_len(last, 5);
    let (mut log, report) = open(dir.path(), SEGMENT_BYTES_MAX);
    assert_eq!(report.torn_tails_cut, vec![(A, 5)]);
    assert!(!last.exists(), "the emptied segment should be gone");
    assert_holds(&log, A, &(1..first).collect::<Vec<_>>())?;
    append_range(&mut log, A, first..=40);
    log.sync()?;
    drop(log);
    let (log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    assert_holds(&log, A, &(1..=40).collect::<Vec<_>>())
}

#[test]
fn corruption_in_sealed_segment_is_an_error() -> TestResult {
    const SEGMENT_BYTES_MAX: u64 = 8 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    append_range(&mut log, A, 1..=100);
    log.sync()?;
    drop(log);
    let files = segments(dir.path(), A);
    assert!(files.len() > 3);
    let victim = &files[1];
    let first: u64 = victim
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("segment name");
    // Damage the victim's second record's payload.
    let offset = rec_bytes(first);
    flip_byte(victim, offset + HEADER_BYTES as u64);

    match FileLog::open(common::config(dir.path(), SEGMENT_BYTES_MAX)) {
        Err(LogError::Corrupt {
            path,
            offset: at,
            reason,
        }) => {
            assert_eq!(&path, victim);
            assert_eq!(at, offset);
            assert!(reason.contains("CRC"), "reason: {reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // Repair that byte, then cut the victim short instead: also corruption, not a
    // torn tail, because the segment was sealed.
    flip_byte(victim, offset + HEADER_BYTES as u64);
    let cut = file_len(victim) - 3;
    set_len(victim, cut);
    match FileLog::open(common::config(dir.path(), SEGMENT_BYTES_MAX)) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!(&path, victim);
            assert!(offset < cut);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    Ok(())
}

#[test]
fn segment_named_for_another_version_is_an_error() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    append_range(&mut log, A, 1..=3);
    log.sync()?;
    drop(log);
    let from = shard_dir(dir.path(), A).join(format!("{:020}.seg", 1));
    let to = shard_dir(dir.path(), A).join(format!("{:020}.seg", 2));
    fs::rename(&from, &to).expect("rename");
    match FileLog::open(common::config(dir.path(), ONE_SEGMENT)) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, to);
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    Ok(())
}

#[test]
fn truncate_after_is_durable_and_survives_reopen() -> TestResult {
    const SEGMENT_BYTES_MAX: u64 = 8 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    append_range(&mut log, A, 1..=60);
    log.sync()?;
    append_range(&mut log, A, 61..=100);
    append_range(&mut log, B, 1..=5);
    let segments_before = segments(dir.path(), A).len();

    log.truncate_after(A, Some(70))?;
    assert_eq!(log.last_version(A), Some(70));
    // The kept unsynced records 61..=70 were fsynced by the trim.
    assert_eq!(log.durable_version(A), Some(70));
    assert_eq!(log.get(A, 71)?, None);
    assert_eq!(log.get_by_time(A, u64::MAX)?, Some(rec(70)));
    assert!(segments(dir.path(), A).len() < segments_before);
    assert_holds(&log, A, &(1..=70).collect::<Vec<_>>())?;
    // Another shard is untouched.
    assert_holds(&log, B, &(1..=5).collect::<Vec<_>>())?;
    drop(log);

    let (mut log, report) = open(dir.path(), SEGMENT_BYTES_MAX);
    assert!(report.torn_tails_cut.is_empty());
    assert_holds(&log, A, &(1..=70).collect::<Vec<_>>())?;
    // A new epoch may reuse the trimmed versions.
    log.append(A, rec(71))?;
    log.sync()?;
    // Trimming at a version between records keeps the ones below it.
    log.truncate_after(B, Some(3))?;
    log.append(B, rec(10))?;
    // Trimming everything.
    log.truncate_after(A, None)?;
    assert_eq!(log.last_version(A), None);
    assert_eq!(log.durable_version(A), None);
    assert!(segments(dir.path(), A).is_empty());
    log.append(A, rec(5))?;
    log.sync()?;
    drop(log);

    let (log, _) = open(dir.path(), SEGMENT_BYTES_MAX);
    assert_holds(&log, A, &[5])?;
    assert_holds(&log, B, &[1, 2, 3, 10])?;
    Ok(())
}

#[test]
fn versions_must_strictly_increase() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    log.append(A, rec(5))?;
    for bad in [5, 3] {
        match log.append(A, rec(bad)) {
            Err(LogError::NotIncreasing {
                shard,
                version,
                last,
            }) => assert_eq!((shard, version, last), (A, bad, 5)),
            other => panic!("expected NotIncreasing, got {other:?}"),
        }
    }
    // Shards are independent.
    log.append(B, rec(1))?;
    log.sync()?;
    drop(log);
    // The check survives a restart.
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    assert!(matches!(
        log.append(A, rec(4)),
        Err(LogError::NotIncreasing { last: 5, .. })
    ));
    log.append(A, rec(6))?;
    assert_holds(&log, A, &[5, 6])
}

#[test]
fn oversized_records_and_bad_config_are_refused() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        record_bytes_max: 100,
        ..LogConfig::new(dir.path())
    };
    let (mut log, _) = FileLog::open(cfg)?;
    let record = |len: usize| Record {
        version: len as u64,
        hlc_us: 0,
        payload: Bytes::from(vec![7u8; len]),
    };
    log.append(A, record(100))?;
    match log.append(A, record(101)) {
        Err(LogError::RecordTooLarge {
            payload_bytes,
            record_bytes_max,
        }) => assert_eq!((payload_bytes, record_bytes_max), (101, 100)),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert!(matches!(
        log.append_meta(1, Bytes::from(vec![0u8; 101])),
        Err(LogError::RecordTooLarge { .. })
    ));
    // A refused append changes nothing.
    assert_eq!(log.last_version(A), Some(100));
    assert!(log.meta()?.is_empty());

    let too_big = LogConfig {
        record_bytes_max: RECORD_BYTES_MAX_FORMAT + 1,
        ..LogConfig::new(dir.path())
    };
    assert!(matches!(
        FileLog::open(too_big),
        Err(LogError::InvalidConfig { .. })
    ));
    Ok(())
}

#[test]
fn get_by_time_is_right_when_hlc_goes_backwards() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    // The clock jumped ahead at version 2 and was corrected at version 7.
    let hlcs = [
        (1, 10),
        (2, 50),
        (3, 60),
        (4, 70),
        (5, 80),
        (6, 90),
        (7, 20),
        (8, 100),
    ];
    for (version, hlc_us) in hlcs {
        log.append(
            A,
            Record {
                version,
                hlc_us,
                payload: payload(version),
            },
        )?;
    }
    log.sync()?;
    let check = |log: &FileLog| -> TestResult {
        let at =
            |t| -> Result<Option<u64>, LogError> { Ok(log.get_by_time(A, t)?.map(|r| r.version)) };
        assert_eq!(at(5)?, None);
        assert_eq!(at(15)?, Some(1));
        // Versions 1 and 7 have hlc <= 25 and the latest of them is 7; a binary search
        // over these non-monotone timestamps would answer 1.
        assert_eq!(at(25)?, Some(7));
        assert_eq!(at(55)?, Some(7));
        assert_eq!(at(95)?, Some(7));
        assert_eq!(at(100)?, Some(8));
        let record = log.get_by_time(A, 25)?.expect("a record at 25");
        assert_eq!((record.hlc_us, record.payload), (20, payload(7)));
        Ok(())
    };
    check(&log)?;
    drop(log);
    let (log, _) = open(dir.path(), ONE_SEGMENT);
    check(&log)
}

fn meta_entry(i: u64) -> (u8, Bytes) {
    (
        (i % 251) as u8,
        Bytes::from(format!("view {i}").repeat(i as usize % 7 + 1)),
    )
}

#[test]
fn meta_round_trip() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, report) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(report.meta_records, 0);
    let expected: Vec<_> = (1..=10).map(meta_entry).collect();
    for (kind, bytes) in &expected {
        log.append_meta(*kind, bytes.clone())?;
    }
    assert_eq!(log.meta()?, expected);
    drop(log);
    let (log, report) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(report.meta_records, 10);
    assert_eq!(report.meta_bytes_cut, 0);
    assert_eq!(log.meta()?, expected);
    Ok(())
}

#[test]
fn meta_torn_tail_is_cut() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    let expected: Vec<_> = (1..=3).map(meta_entry).collect();
    for (kind, bytes) in &expected {
        log.append_meta(*kind, bytes.clone())?;
    }
    drop(log);
    let path = dir.path().join("meta.log");
    let len = file_len(&path);
    set_len(&path, len - 4);

    let (mut log, report) = open(dir.path(), ONE_SEGMENT);
    let third = (HEADER_BYTES + expected[2].1.len()) as u64;
    assert_eq!(report.meta_bytes_cut, third - 4);
    assert_eq!(report.meta_records, 2);
    assert_eq!(log.meta()?, expected[..2]);
    // Appending continues with the right sequence number.
    log.append_meta(expected[2].0, expected[2].1.clone())?;
    drop(log);
    let (log, report) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(report.meta_bytes_cut, 0);
    assert_eq!(log.meta()?, expected);
    Ok(())
}

#[test]
fn second_open_of_the_same_directory_is_refused() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open(dir.path(), ONE_SEGMENT);
    match FileLog::open(common::config(dir.path(), ONE_SEGMENT)) {
        Err(LogError::Locked { path }) => assert_eq!(path, dir.path().join("LOCK")),
        other => panic!("expected Locked, got {other:?}"),
    }
    log.append(A, rec(1))?;
    log.sync()?;
    drop(log);
    let (log, _) = open(dir.path(), ONE_SEGMENT);
    assert_holds(&log, A, &[1])
}

#[test]
fn bounded_ranges_read_a_log_in_chunks_across_segments() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments: chunks cross segment boundaries.
    let (mut log, _) = open(dir.path(), 4 * 1024);
    append_range(&mut log, A, 1..=300);
    log.sync()?;
    let budget = 5 * payload(1).len() + 3;
    let mut read = Vec::new();
    let mut from = 0;
    loop {
        let chunk = log.range_bounded(A, from, 250, budget)?;
        let Some(last) = chunk.last() else { break };
        let bytes: usize = chunk.iter().map(|r| r.payload.len()).sum();
        assert!(
            bytes <= budget || chunk.len() == 1,
            "{bytes} bytes in a chunk"
        );
        from = last.version + 1;
        read.extend(chunk);
    }
    assert_eq!(versions(&read), (1..=250).collect::<Vec<_>>());
    assert!(read.iter().all(|r| *r == rec(r.version)));
    // A record larger than the budget still comes, alone.
    assert_eq!(versions(&log.range_bounded(A, 7, 300, 1)?), vec![7]);
    // Nothing past the end or in an unknown shard; an empty window.
    assert!(log.range_bounded(A, 301, u64::MAX, budget)?.is_empty());
    assert!(log.range_bounded(B, 0, u64::MAX, budget)?.is_empty());
    assert!(log.range_bounded(A, 9, 8, budget)?.is_empty());
    Ok(())
}

/// Whether every byte of `path` from `from` on is zero.
fn zeros_from(path: &Path, from: u64) -> bool {
    fs::read(path).expect("read file")[from as usize..]
        .iter()
        .all(|&b| b == 0)
}

const PREALLOCATE_BYTES: u64 = 16 * 1024;

#[test]
fn preallocated_zeros_are_kept_across_reopen_and_are_no_torn_tail() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = preallocating(dir.path(), ONE_SEGMENT, PREALLOCATE_BYTES);
    let (mut log, _) = FileLog::open(cfg.clone())?;
    append_range(&mut log, A, 1..=10);
    assert_eq!(log.sync()?, vec![(A, 10)]);
    let file = &segments(dir.path(), A)[0];
    let data_end = offset_of(1, 11);
    // The first append wrote a chunk of zeros behind its record; later ones fit in it
    // until the records reach its end, and the next chunk follows.
    let len = file_len(file);
    assert!(
        len > data_end && len < data_end + PREALLOCATE_BYTES + rec_bytes(10),
        "file {len} bytes, records {data_end}"
    );
    assert!(zeros_from(file, data_end));
    drop(log);

    let (mut log, report) = FileLog::open(cfg.clone())?;
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_eq!(report.records, 10);
    assert_eq!(
        file_len(file),
        len,
        "recovery keeps the zeros for later appends"
    );
    assert_holds(&log, A, &(1..=10).collect::<Vec<_>>())?;
    // The next append overwrites zeros where the records end, not the file's end.
    append_range(&mut log, A, 11..=12);
    log.sync()?;
    assert_eq!(file_len(file), len);
    drop(log);

    // A log written with preallocation reads back the same without it, and the other
    // way round.
    let (mut log, report) = open(dir.path(), ONE_SEGMENT);
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_holds(&log, A, &(1..=12).collect::<Vec<_>>())?;
    append_range(&mut log, A, 13..=14);
    log.sync()?;
    drop(log);
    let (log, report) = FileLog::open(cfg)?;
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_holds(&log, A, &(1..=14).collect::<Vec<_>>())
}

/// Append 1..=20 and sync, append 21..=25 without syncing, all with preallocation;
/// damage the segment with `damage(path, file_len)`, reopen, and check that the log holds
/// exactly `1..=expect_last`, ends there, and that the cut reaches the file's old end.
fn preallocated_torn_tail_case(damage: impl FnOnce(&Path, u64), expect_last: u64) -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = preallocating(dir.path(), ONE_SEGMENT, PREALLOCATE_BYTES);
    let (mut log, _) = FileLog::open(cfg.clone())?;
    append_range(&mut log, A, 1..=20);
    log.sync()?;
    append_range(&mut log, A, 21..=25);
    drop(log);
    let file = &segments(dir.path(), A)[0];
    let len = file_len(file);
    damage(file, len);

    let (mut log, report) = FileLog::open(cfg.clone())?;
    let end = offset_of(1, expect_last + 1);
    assert_eq!(report.torn_tails_cut, vec![(A, len - end)]);
    assert_holds(&log, A, &(1..=expect_last).collect::<Vec<_>>())?;
    assert_eq!(file_len(file), end);
    append_range(&mut log, A, expect_last + 1..=expect_last + 3);
    log.sync()?;
    // The cut took the zeros too: the next append writes new ones behind it.
    assert!(
        zeros_from(file, offset_of(1, expect_last + 4))
            && file_len(file) > offset_of(1, expect_last + 4),
        "no zeros ahead after the cut"
    );
    drop(log);
    let (log, report) = FileLog::open(cfg)?;
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_holds(&log, A, &(1..=expect_last + 3).collect::<Vec<_>>())
}

#[test]
fn torn_record_in_preallocated_space_is_cut_with_the_zeros() -> TestResult {
    preallocated_torn_tail_case(|path, _| flip_byte(path, offset_of(1, 23) + 30), 22)
}

#[test]
fn a_stray_byte_among_preallocated_zeros_is_a_torn_tail() -> TestResult {
    // The zeros past the records must be all zeros; anything else there was never
    // written by this log's appends in this order, so it goes, records after it too.
    preallocated_torn_tail_case(|path, len| flip_byte(path, len - 1), 25)
}

#[test]
fn large_records_are_appended_without_zeros() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    // rec(v) is up to 3,000 bytes: more than a quarter of 4 KiB for most versions.
    let (mut log, _) = FileLog::open(preallocating(dir.path(), ONE_SEGMENT, 4 * 1024))?;
    let big: Vec<u64> = (1..=400)
        .filter(|&v| rec_bytes(v) > 1024)
        .take(20)
        .collect();
    for &v in &big {
        log.append(A, rec(v))?;
    }
    log.sync()?;
    let file = &segments(dir.path(), A)[0];
    assert_eq!(
        file_len(file),
        big.iter().map(|&v| rec_bytes(v)).sum::<u64>()
    );
    assert_holds(&log, A, &big)
}

#[test]
fn truncate_after_cuts_preallocated_zeros_too() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = preallocating(dir.path(), ONE_SEGMENT, PREALLOCATE_BYTES);
    let (mut log, _) = FileLog::open(cfg.clone())?;
    append_range(&mut log, A, 1..=20);
    log.sync()?;
    log.truncate_after(A, Some(12))?;
    let file = &segments(dir.path(), A)[0];
    assert_eq!(file_len(file), offset_of(1, 13));
    append_range(&mut log, A, 13..=15);
    log.sync()?;
    drop(log);
    let (log, report) = FileLog::open(cfg)?;
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_holds(&log, A, &(1..=15).collect::<Vec<_>>())
}

/// Every file of a shard, by name, with its bytes.
fn shard_files(dir: &Path, key: ShardKey) -> Vec<(String, Vec<u8>)> {
    segments(dir, key)
        .iter()
        .map(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).expect("name");
            (name.to_string(), fs::read(p).expect("read segment"))
        })
        .collect()
}

#[test]
fn appending_many_at_once_writes_what_appending_one_at_a_time_does() -> TestResult {
    const SEGMENT_BYTES_MAX: u64 = 8 * 1024;
    // Runs of every length, several crossing a segment boundary (records are up to
    // 3,000 bytes, so 50 of them span many segments).
    let runs: [u64; 6] = [1, 7, 50, 2, 90, 50];
    for preallocate_bytes in [0, 2 * 1024] {
        let (one, many) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let cfg = |dir: &Path| preallocating(dir, SEGMENT_BYTES_MAX, preallocate_bytes);
        let (mut log, _) = FileLog::open(cfg(one.path()))?;
        append_range(&mut log, A, 1..=200);
        log.sync()?;
        drop(log);

        let (mut log, _) = FileLog::open(cfg(many.path()))?;
        let mut next = 1;
        for run in runs {
            let records: Vec<Record> = (next..next + run).map(rec).collect();
            log.append_many(A, &records)?;
            next += run;
            assert_eq!(log.last_version(A), Some(next - 1));
        }
        assert_eq!(next, 201);
        // Read back before and after the sync, then from disk.
        assert_holds(&log, A, &(1..=200).collect::<Vec<_>>())?;
        log.sync()?;
        assert_eq!(log.durable_version(A), Some(200));
        drop(log);

        let (written_one, written_many) = (shard_files(one.path(), A), shard_files(many.path(), A));
        assert!(
            written_many.len() > 20,
            "only {} segments",
            written_many.len()
        );
        let names =
            |files: &[(String, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&written_one), names(&written_many), "segments");
        let last = written_one.len() - 1;
        for (i, ((name, a), (_, b))) in written_one.iter().zip(&written_many).enumerate() {
            if i < last || preallocate_bytes == 0 {
                assert!(a == b, "{name} differs ({} and {} bytes)", a.len(), b.len());
            } else {
                // Only how many zeros go ahead of the last segment's records may differ.
                let records = a.len().min(b.len());
                assert!(
                    a[..records] == b[..records],
                    "{name} differs in its records"
                );
            }
        }
        let (log, report) = FileLog::open(cfg(many.path()))?;
        assert!(report.torn_tails_cut.is_empty(), "{report:?}");
        assert_eq!(report.records, 200);
        assert_holds(&log, A, &(1..=200).collect::<Vec<_>>())?;
    }
    Ok(())
}

#[test]
fn a_refused_record_among_many_writes_none_of_them() -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        record_bytes_max: 4_000,
        ..LogConfig::new(dir.path())
    };
    let (mut log, _) = FileLog::open(cfg.clone())?;
    log.append_many(A, &[rec(1), rec(2)])?;
    // Out of order in the middle of the run.
    match log.append_many(A, &[rec(3), rec(5), rec(4), rec(6)]) {
        Err(LogError::NotIncreasing { version, last, .. }) => assert_eq!((version, last), (4, 5)),
        other => panic!("expected NotIncreasing, got {other:?}"),
    }
    // Not after what the log holds.
    assert!(matches!(
        log.append_many(A, &[rec(2), rec(3)]),
        Err(LogError::NotIncreasing {
            version: 2,
            last: 2,
            ..
        })
    ));
    // Too large, last in the run.
    let mut big = rec(5);
    big.payload = Bytes::from(vec![1u8; 4_001]);
    assert!(matches!(
        log.append_many(A, &[rec(3), rec(4), big]),
        Err(LogError::RecordTooLarge {
            payload_bytes: 4_001,
            ..
        })
    ));
    assert_eq!(log.last_version(A), Some(2));
    assert_holds(&log, A, &[1, 2])?;
    // The log takes the next good run, and a reopen finds exactly what was taken.
    log.append_many(A, &[rec(3), rec(4)])?;
    log.sync()?;
    drop(log);
    let (log, report) = FileLog::open(cfg)?;
    assert!(report.torn_tails_cut.is_empty(), "{report:?}");
    assert_holds(&log, A, &[1, 2, 3, 4])
}
