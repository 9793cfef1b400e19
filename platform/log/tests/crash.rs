//! Crash test with a real process: a child appends and syncs in a loop, announcing each
//! durable version, and is killed with SIGKILL at a random moment; the parent then
//! reopens the log and checks that every announced version is there, intact and in
//! order. The child is this test binary re-executed with `SQUALL_LOG_CHILD` set.
//!
//! SIGKILL loses nothing the kernel already accepted, so this checks the process-crash
//! half of the durability argument (ordering, announcing only after fsync returned,
//! recovery of whatever state a kill leaves, repeated over one growing log). Power loss
//! is approximated by the hand-made torn tails in `file_log.rs`.
//!
//! Set `SQUALL_LOG_CRASH_SEED` to replay the kill timings of a failed run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{A, B, preallocating, rec};
use squall_log::{FileLog, LogStore, ShardKey};

const CHILD_ENV: &str = "SQUALL_LOG_CHILD";
const SYNC_EVERY_ENV: &str = "SQUALL_LOG_CHILD_SYNC_EVERY";
const PREALLOCATE_ENV: &str = "SQUALL_LOG_CHILD_PREALLOCATE_BYTES";
const SEED_ENV: &str = "SQUALL_LOG_CRASH_SEED";
/// Marks the child's announcements, which share stdout with the test harness.
const TAG: &str = "SQUALL_LOG ";
const SHARDS: [ShardKey; 2] = [A, B];
const ROUNDS: u64 = 24;
/// Small, so a round rolls segments and kills also land around rolls.
const SEGMENT_BYTES_MAX: u64 = 32 * 1024;
/// Zeros written ahead of the records this many bytes at a time, in every other round
/// (the rounds between run without), so kills land around preallocation, and a log
/// written one way is reopened the other.
const PREALLOCATE_BYTES: u64 = 4 * 1024;
/// A metadata record every this many shard appends.
const META_EVERY: u64 = 11;
/// The child stops on its own after this, in case the parent died.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(10);
/// How long the parent waits for a child's first announcement.
const FIRST_ANNOUNCEMENT_WAIT_MAX: Duration = Duration::from_secs(10);
/// The kill lands this long (at most) after the first announcement.
const KILL_DELAY_MAX_MS: u64 = 250;

fn meta_entry(seq: u64) -> (u8, Bytes) {
    (
        (seq % 256) as u8,
        Bytes::from(seq.to_le_bytes().repeat(seq as usize % 50 + 1)),
    )
}

/// Runs only as the re-executed child; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let sync_every: u64 = std::env::var(SYNC_EVERY_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let preallocate_bytes: u64 = std::env::var(PREALLOCATE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    child_main(Path::new(&dir), sync_every, preallocate_bytes);
}

fn child_main(dir: &Path, sync_every: u64, preallocate_bytes: u64) {
    let (mut log, _) = FileLog::open(preallocating(dir, SEGMENT_BYTES_MAX, preallocate_bytes))
        .expect("child: open");
    let mut next = SHARDS.map(|s| log.last_version(s).unwrap_or(0) + 1);
    let mut meta_next = log.meta().expect("child: meta").len() as u64 + 1;
    let mut out = std::io::stdout().lock();
    // A fresh line, in case the harness left its "test crash_child ... " open.
    writeln!(out).expect("child: stdout");
    let deadline = Instant::now() + CHILD_LIFETIME_MAX;
    let mut appended = 0u64;
    while Instant::now() < deadline {
        // Shard A gets two appends for each one of B, so their versions drift apart.
        let i = usize::from(appended % 3 == 2);
        log.append(SHARDS[i], rec(next[i])).expect("child: append");
        next[i] += 1;
        appended += 1;
        if appended.is_multiple_of(sync_every) {
            for (shard, version) in log.sync().expect("child: sync") {
                writeln!(
                    out,
                    "{TAG}durable {} {} {version}",
                    shard.subgroup, shard.shard
                )
                .expect("child: stdout");
            }
            out.flush().expect("child: flush");
        }
        if appended.is_multiple_of(META_EVERY) {
            let (kind, bytes) = meta_entry(meta_next);
            log.append_meta(kind, bytes).expect("child: append_meta");
            writeln!(out, "{TAG}meta {meta_next}").expect("child: stdout");
            out.flush().expect("child: flush");
            meta_next += 1;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    Durable(ShardKey, u64),
    Meta(u64),
}

fn parse(line: &str) -> Option<Announcement> {
    let rest = &line[line.find(TAG)? + TAG.len()..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["durable", subgroup, shard, version] => Some(Announcement::Durable(
            ShardKey {
                subgroup: subgroup.parse().ok()?,
                shard: shard.parse().ok()?,
            },
            version.parse().ok()?,
        )),
        ["meta", seq] => Some(Announcement::Meta(seq.parse().ok()?)),
        _ => None,
    }
}

/// xorshift64*: enough randomness for kill timings without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What the children announced, over all rounds so far.
#[derive(Debug, Default)]
struct Promised {
    durable: [u64; 2],
    meta: u64,
}

/// Reopen the log and check it keeps every promise, with correct content.
fn verify(dir: &Path, promised: &Promised, round: u64) -> u64 {
    // Preallocation changes what is written, not how it is read back.
    let (log, report) = FileLog::open(preallocating(dir, SEGMENT_BYTES_MAX, 0))
        .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    for (i, shard) in SHARDS.into_iter().enumerate() {
        let last = log.last_version(shard).unwrap_or(0);
        assert!(
            last >= promised.durable[i],
            "round {round}: {shard:?} ends at {last}, but {} was announced durable",
            promised.durable[i]
        );
        // range re-verifies every CRC, so a corrupt record fails here too.
        let records = log
            .range(shard, 0, u64::MAX)
            .unwrap_or_else(|e| panic!("round {round}: reading {shard:?} failed: {e}"));
        assert_eq!(
            records.len() as u64,
            last,
            "round {round}: {shard:?} has gaps"
        );
        for (expected, record) in (1..).zip(&records) {
            assert_eq!(
                record,
                &rec(expected),
                "round {round}: {shard:?} v{expected}"
            );
        }
        assert_eq!(log.durable_version(shard), log.last_version(shard));
    }
    let meta = log.meta().expect("meta");
    assert!(
        meta.len() as u64 >= promised.meta,
        "round {round}: {} meta records, {} announced",
        meta.len(),
        promised.meta
    );
    for (seq, entry) in (1..).zip(&meta) {
        assert_eq!(entry, &meta_entry(seq), "round {round}: meta {seq}");
    }
    report
        .torn_tails_cut
        .iter()
        .map(|(_, bytes)| bytes)
        .sum::<u64>()
        + report.meta_bytes_cut
}

#[test]
fn kill_9_keeps_every_announced_durable_record() {
    let started = Instant::now();
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("crash test seed: {SEED_ENV}={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current_exe");
    let mut promised = Promised::default();
    let mut bytes_cut = 0;

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(SYNC_EVERY_ENV, (1 + round % 5).to_string())
            .env(
                PREALLOCATE_ENV,
                (PREALLOCATE_BYTES * u64::from(round % 2 == 0)).to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(announcement) = parse(&line)
                    && tx.send(announcement).is_err()
                {
                    break;
                }
            }
        });

        let mut announced = Vec::new();
        // Most kills land mid-loop; one round in eight kills early, maybe mid-recovery.
        if rng.below(8) == 0 {
            thread::sleep(Duration::from_millis(rng.below(30)));
        } else {
            match rx.recv_timeout(FIRST_ANNOUNCEMENT_WAIT_MAX) {
                Ok(first) => announced.push(first),
                Err(e) => panic!("round {round}: child announced nothing: {e}"),
            }
            thread::sleep(Duration::from_millis(rng.below(KILL_DELAY_MAX_MS)));
        }
        child.kill().expect("SIGKILL child");
        let status = child.wait().expect("wait child");
        // Anything but death by SIGKILL means the child failed (a panic exits with 101).
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: child ended with {status}"
        );
        reader.join().expect("reader thread");
        announced.extend(rx.try_iter());

        for announcement in announced {
            match announcement {
                Announcement::Durable(shard, version) => {
                    let i = SHARDS
                        .iter()
                        .position(|s| *s == shard)
                        .expect("known shard");
                    promised.durable[i] = promised.durable[i].max(version);
                }
                Announcement::Meta(seq) => promised.meta = promised.meta.max(seq),
            }
        }
        bytes_cut += verify(dir.path(), &promised, round);
    }
    eprintln!(
        "crash test: {ROUNDS} kills, durable {:?}, meta {}, torn bytes cut {bytes_cut}, {:?}",
        promised.durable,
        promised.meta,
        started.elapsed()
    );
    // Guard against a vacuous pass: the children must have made real progress.
    assert!(
        promised.durable.iter().all(|&v| v >= ROUNDS),
        "{promised:?}"
    );
}
