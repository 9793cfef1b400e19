//! Recovery of nodes that come back with less than they left with: a shard grown past
//! one peer message, a lost data directory. Real `squall node` processes. These tests
//! move hundreds of MiB, so they take turns (`HEAVY`) rather than load the machine at
//! once, and suspect a silent peer only after 3 s: a killed node's links break at once
//! anyway.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use squall_adapters::client::{Client, Policy};
use squall_adapters::wire::{At, ErrorCode};

mod common;
use common::{Cluster, SmallDisk, now_us, strip_ansi};

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster() -> Cluster {
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        cfg.timing.suspicion_timeout_ms = 3_000;
    }
    cluster
}

/// Each member's incarnation in the current view, by node.
async fn incarnations(c: &Client) -> BTreeMap<u32, u32> {
    let (_, members) = c.members().await.expect("members");
    members.iter().map(|m| (m.node, m.incarnation)).collect()
}

/// A node killed and restarted into a cluster whose shards outgrew one peer message
/// (90 MiB each, over the 80 MiB message limit) takes their state in parts: it rejoins,
/// serves every object and an overwritten version from its own replica, and the other
/// nodes stay in the view throughout. Before parts, the joiner refused the one oversized
/// state message, suspected its sources, and the whole cluster stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_into_shards_larger_than_a_message_rejoins_and_serves_them() {
    const OBJECTS: usize = 90;
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let value = |i: usize| Bytes::from(vec![i as u8; 1 << 20]);
    let first = c.put("/demo/k0", value(200)).await.expect("put");
    for i in 0..OBJECTS {
        for pool in ["/demo", "/cache"] {
            c.put(&format!("{pool}/k{i}"), value(i)).await.expect("put");
        }
    }
    let before = incarnations(&c).await;
    cluster.kill9(2);
    // Suspected and removed, then back as its next incarnation; meanwhile k0 changes,
    // so what node 2 replays from its own log at start is stale.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = c.put("/demo/k0", value(201)).await.expect("put");
    cluster.start(2);
    // Every request through node 2 alone (the others' addresses lead there too), from
    // its first moments back: reads of the latest value wait for the state, reads of a
    // past version go elsewhere until it is in (here: retried until then); none may
    // find nothing.
    let addrs = cluster.addrs();
    let to_2: HashMap<String, String> = [0, 1].map(|n| (addrs[n].clone(), addrs[2].clone())).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let c2 = loop {
        if let Ok(c2) =
            Client::connect_via(&addrs[2..], None, Policy::RoundRobin, to_2.clone()).await
        {
            break c2;
        }
        assert!(Instant::now() < deadline, "node 2 never took clients");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut reads = 0;
    loop {
        for (version, v) in [(first.version, 200), (during.version, 201)] {
            let past = c2
                .get_at("/demo/k0", At::Version(version))
                .await
                .expect("by version");
            assert!(
                past.is_some_and(|o| o.blob == value(v)),
                "node 2 lacks version {version} of /demo/k0"
            );
        }
        let latest = c2.get("/demo/k0").await.expect("get");
        assert!(
            latest.is_some_and(|o| o.blob == value(201)),
            "node 2 read a stale /demo/k0"
        );
        let last = format!("/cache/k{}", OBJECTS - 1);
        let got = c2.get(&last).await.expect("get");
        assert!(
            got.is_some_and(|o| o.blob == value(OBJECTS - 1)),
            "{last} missing at node 2"
        );
        reads += 1;
        let now = incarnations(&c).await;
        if now.get(&2) == Some(&(before[&2] + 1)) && reads > 3 {
            assert!(
                now.get(&0) == before.get(&0) && now.get(&1) == before.get(&1),
                "the other nodes left the view: {before:?} then {now:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 did not rejoin: {now:?}\n{}",
            cluster.logs()
        );
    }
    for i in [1, OBJECTS / 2, OBJECTS - 1] {
        for pool in ["/demo", "/cache"] {
            let key = format!("{pool}/k{i}");
            let got = c2.get(&key).await.expect("get");
            assert!(
                got.is_some_and(|o| o.blob == value(i)),
                "{key} missing or different at node 2"
            );
        }
    }
    // Node 2's own log held the persistent shard up to its crash: only what followed
    // travelled (the source logs what it shipped).
    let plain: String = strip_ansi(&cluster.logs());
    let shipped: Vec<&str> = plain
        .lines()
        .filter(|l| l.contains("state for joiners") && l.contains("subgroup=1"))
        .collect();
    assert!(
        shipped
            .iter()
            .any(|l| l.contains("after=Some") && l.contains("records=1")),
        "the whole log travelled again: {shipped:?}"
    );
    c.put("/demo/after", Bytes::from_static(b"x"))
        .await
        .expect("the cluster takes writes");
}

/// Bytes of each value in [`cluster_with_a_long_log`].
const LONG_LOG_VALUE_BYTES: usize = 512 << 10;

/// The `i`th value written by [`cluster_with_a_long_log`].
fn long_log_value(i: usize) -> Bytes {
    Bytes::from(vec![i as u8; LONG_LOG_VALUE_BYTES])
}

/// A cluster with one persistent key overwritten `versions` times with
/// `long_log_value(i)`: a log of `versions × LONG_LOG_VALUE_BYTES` whose store keeps one
/// value. Past versions kept in memory for reads by version (64 MiB by default) are few
/// here, so that what a node holds is its store, not a cache of history. Returns the
/// client and the versions written.
async fn cluster_with_a_long_log(
    versions: usize,
) -> (Cluster, Client, Vec<squall_platform::Version>) {
    let mut cluster = cluster();
    for cfg in &mut cluster.configs {
        cfg.limits.history_cache_bytes = 4 << 20;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let mut written = Vec::new();
    for i in 0..versions {
        written.push(
            c.put("/demo/big", long_log_value(i))
                .await
                .expect("put")
                .version,
        );
    }
    (cluster, c, written)
}

/// Reads through `c` the `i`th version written by [`cluster_with_a_long_log`] for each
/// `i` in `indices`, and checks it is `long_log_value(i)`.
async fn reads_past_versions(c: &Client, versions: &[squall_platform::Version], indices: &[usize]) {
    for &i in indices {
        let past = c
            .get_at("/demo/big", At::Version(versions[i]))
            .await
            .expect("by version");
        assert!(
            past.is_some_and(|o| o.blob == long_log_value(i)),
            "the node's log lacks version {i}"
        );
    }
}

/// Waits until `node` is back, as a later incarnation than in `before`, in a view of
/// `members` nodes, then connects to it alone (the others' addresses lead there too).
async fn rejoined(
    cluster: &Cluster,
    c: &Client,
    before: &BTreeMap<u32, u32>,
    node: usize,
    members: usize,
) -> Client {
    let addrs = cluster.addrs();
    let only: HashMap<String, String> = (0..addrs.len())
        .filter(|n| *n != node)
        .map(|n| (addrs[n].clone(), addrs[node].clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = incarnations(c).await;
        if now.len() == members && now.get(&(node as u32)) > before.get(&(node as u32)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} did not rejoin: {now:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Client::connect_via(&addrs[node..=node], None, Policy::RoundRobin, only)
        .await
        .expect("the node takes clients")
}

/// A memory figure (`field`, in kB there) of a process, from /proc (bytes).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// Resident memory of a process (bytes).
fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS")
}

/// A node restarts from a persistent log far larger than what its store keeps (one key
/// overwritten 240 times with 512 KiB: a 120 MiB log, 512 KiB live) without holding the
/// log in memory: once back and serving (the latest value, and a past version from the
/// log), its resident memory stays far below the log's size (with a small history
/// cache). Before, the start read
/// every shard's whole log at once and kept it for the node's life, so such a node needed
/// memory for its whole history, and a history larger than memory could not restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_from_a_log_larger_than_its_store_without_holding_the_log() {
    const VERSIONS: usize = 240;
    const LOG_BYTES: u64 = (VERSIONS * LONG_LOG_VALUE_BYTES) as u64;
    let _turn = HEAVY.lock().await;
    let (mut cluster, c, versions) = cluster_with_a_long_log(VERSIONS).await;
    let before = incarnations(&c).await;
    cluster.kill9(1);
    cluster.start(1);
    let c1 = rejoined(&cluster, &c, &before, 1, 3).await;
    let latest = c1.get("/demo/big").await.expect("get");
    assert!(latest.is_some_and(|o| o.blob == long_log_value(VERSIONS - 1)));
    let past = c1
        .get_at("/demo/big", At::Version(versions[VERSIONS / 2]))
        .await
        .expect("by version");
    assert!(past.is_some_and(|o| o.blob == long_log_value(VERSIONS / 2)));
    let pid = cluster.procs.get(&1).expect("node 1 runs").id();
    let rss = rss_bytes(pid);
    let others: Vec<u64> = [0, 2]
        .iter()
        .map(|n| rss_bytes(cluster.procs[n].id()))
        .collect();
    println!(
        "node 1 after restart: {} MiB resident; the log {} MiB; nodes 0 and 2 (never \
         restarted): {:?} MiB",
        rss >> 20,
        LOG_BYTES >> 20,
        others.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
    assert!(
        rss < LOG_BYTES / 2,
        "node 1 holds {} MiB after replaying a {} MiB log",
        rss >> 20,
        LOG_BYTES >> 20
    );
}

/// The records `log` (a node's log text) says it replayed into subgroup 1 (the
/// persistent pools'), and how many times it continued its store instead of rebuilding.
fn replays_of_subgroup_1(log: &str) -> (u64, usize) {
    let records = log
        .lines()
        .filter(|l| l.contains("replayed the log") && l.contains("subgroup=1"))
        .filter_map(|l| {
            l.split("records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let continued = log
        .lines()
        .filter(|l| l.contains("the store continues from its own log") && l.contains("subgroup=1"))
        .count();
    (records, continued)
}

/// A node killed and restarted rebuilds its store from its log once, at start: the
/// transfer it rejoins with brings what was written while it was down, and its store
/// takes those records after the ones it replayed ("the store continues from its own
/// log") instead of being rebuilt from the start a second time (before, a restarted
/// node replayed its whole log twice, which doubled the time it took to rejoin). It
/// then serves the latest value and versions from before and during its absence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_replays_its_log_once() {
    const VERSIONS: usize = 40;
    const WHILE_DOWN: usize = 6;
    let _turn = HEAVY.lock().await;
    let (mut cluster, c, mut versions) = cluster_with_a_long_log(VERSIONS).await;
    let before = incarnations(&c).await;
    cluster.kill9(1);
    for i in VERSIONS..VERSIONS + WHILE_DOWN {
        let put = c.put("/demo/big", long_log_value(i)).await.expect("put");
        versions.push(put.version);
    }
    let log_start = log_since(&cluster, 1, 0).len();
    cluster.start(1);
    let c1 = rejoined(&cluster, &c, &before, 1, 3).await;
    let latest = c1.get("/demo/big").await.expect("get");
    assert!(latest.is_some_and(|o| o.blob == long_log_value(VERSIONS + WHILE_DOWN - 1)));
    reads_past_versions(&c1, &versions, &[0, VERSIONS - 1, VERSIONS, VERSIONS + 2]).await;
    let log = log_since(&cluster, 1, log_start);
    let (replayed, continued) = replays_of_subgroup_1(&log);
    println!("node 1 replayed {replayed} records of subgroup 1 ({continued} continued)");
    assert!(
        continued >= 1,
        "the store was rebuilt after the transfer\n{log}"
    );
    // Its own log (the puts before it died, and a few other operations) at start, then
    // what was written while it was down; not its whole log a second time.
    assert!(
        replayed >= (VERSIONS + WHILE_DOWN) as u64 && replayed < (2 * VERSIONS) as u64,
        "node 1 replayed {replayed} records for {} versions\n{log}",
        VERSIONS + WHILE_DOWN
    );
}

/// A process's peak resident memory since it started or since [`reset_peak`] (bytes).
fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM")
}

/// Restarts the count of a process's peak resident memory from what it holds now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
}

/// Nodes 0 and 2, the sources of node 1's state, as (node, pid, resident bytes), their
/// peak resident memory counted from now.
fn sources_with_peaks_reset(cluster: &Cluster) -> Vec<(u32, u32, u64)> {
    [0u32, 2]
        .iter()
        .map(|n| {
            let pid = cluster.procs[n].id();
            reset_peak(pid);
            (*n, pid, rss_bytes(pid))
        })
        .collect()
}

/// Node 1 took `bytes` of state (`what`) in `took` from its start; `sources` are the other
/// nodes as (node, pid, resident bytes when their peaks were reset). Prints the peaks and
/// asserts node 1's stayed under `joiner_max` and each source's growth under `source_max`.
fn check_transfer_memory(
    cluster: &Cluster,
    sources: &[(u32, u32, u64)],
    what: &str,
    bytes: u64,
    took: Duration,
    joiner_max: u64,
    source_max: u64,
) {
    let joiner_peak = peak_rss_bytes(cluster.procs[&1].id());
    let source_growth: Vec<(u32, u64)> = sources
        .iter()
        .map(|(n, pid, rss)| (*n, peak_rss_bytes(*pid).saturating_sub(*rss)))
        .collect();
    println!(
        "a {} MiB {what} in {took:?} from its start: its peak {} MiB resident; the others' \
         peaks grew by {:?} MiB",
        bytes >> 20,
        joiner_peak >> 20,
        source_growth
            .iter()
            .map(|(n, b)| (*n, b >> 20))
            .collect::<Vec<_>>()
    );
    assert!(
        joiner_peak < joiner_max,
        "node 1 peaked at {} MiB taking in a {} MiB {what}",
        joiner_peak >> 20,
        bytes >> 20
    );
    for (n, growth) in source_growth {
        assert!(
            growth < source_max,
            "node {n} grew by {} MiB shipping a {} MiB {what}",
            growth >> 20,
            bytes >> 20
        );
    }
}

/// A brand-new node (its disk wiped) joins a shard whose log is larger than a node should
/// hold at once (one key overwritten 320 times with 512 KiB: a 160 MiB log) and receives
/// the whole log by state transfer, streamed: the source reads and sends it a chunk at a
/// time, at most a window ahead of what the joiner has written to its own log. Neither
/// side's peak resident memory comes near the log's size (measured: the joiner's peak
/// 48-67 MiB, the source's growth 61-65 MiB: a chunk, its encoding, the 32 MiB window),
/// and the joiner then serves the latest value and past versions from its own log.
/// Before, the source read the whole log into memory and encoded a copy of it, and the
/// joiner held every part and then a copy of them all: each side's peak grew by at least
/// the log's size, the joiner's by twice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_takes_a_log_larger_than_memory_should_hold_without_either_side_holding_it() {
    const VERSIONS: usize = 320;
    const LOG_BYTES: u64 = (VERSIONS * LONG_LOG_VALUE_BYTES) as u64;
    let _turn = HEAVY.lock().await;
    let (mut cluster, c, versions) = cluster_with_a_long_log(VERSIONS).await;
    let before = incarnations(&c).await;
    let sources = sources_with_peaks_reset(&cluster);
    cluster.kill9(1);
    let data_dir = cluster.configs[1].node.data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe the data directory");
    let started = Instant::now();
    cluster.start(1);
    let c1 = rejoined(&cluster, &c, &before, 1, 3).await;
    let latest = c1.get("/demo/big").await.expect("get");
    assert!(latest.is_some_and(|o| o.blob == long_log_value(VERSIONS - 1)));
    // Reads of the latest value wait for the state: the transfer is done.
    let took = started.elapsed();
    reads_past_versions(&c1, &versions, &[0, VERSIONS / 2]).await;
    check_transfer_memory(
        &cluster,
        &sources,
        "log to a new node",
        LOG_BYTES,
        took,
        LOG_BYTES * 3 / 4,
        LOG_BYTES * 3 / 4,
    );
}

/// Bytes of shard log segments under `node`'s data directory.
fn log_bytes(cluster: &Cluster, node: usize) -> u64 {
    let dir = cluster.configs[node].node.data_dir.join("log");
    let Ok(shards) = std::fs::read_dir(&dir) else {
        return 0;
    };
    shards
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("shard-"))
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// What `node` logged since `from` bytes into its log file.
fn log_since(cluster: &Cluster, node: usize, from: usize) -> String {
    let path = cluster.dir.path().join(format!("n{node}.log"));
    let text = std::fs::read(path).unwrap_or_default();
    strip_ansi(&String::from_utf8_lossy(&text[from.min(text.len())..]))
}

/// A new node's state transfer cut off by its source's crash, mid-log, resumes from the
/// other replica where the new node's log got: the second transfer ships only what
/// follows (its source logs `after=Some(..)`), and the node then serves the latest value
/// and past versions from either side of the cut from its own log. Real processes; the
/// simulator checks the same on thousands of seeds (`Core::state_logged`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_off_by_its_source_crash_resumes_where_the_new_node_log_got() {
    const VERSIONS: usize = 320;
    const LOG_BYTES: u64 = (VERSIONS * LONG_LOG_VALUE_BYTES) as u64;
    /// The cut comes once the new node logged this much: past its first parts.
    const CUT_AFTER_BYTES: u64 = 24 << 20;
    let _turn = HEAVY.lock().await;
    let (mut cluster, c, versions) = cluster_with_a_long_log(VERSIONS).await;
    let before = incarnations(&c).await;
    cluster.kill9(1);
    let data_dir = cluster.configs[1].node.data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe the data directory");
    let log_start: Vec<usize> = (0..3).map(|n| log_since(&cluster, n, 0).len()).collect();
    let shipping = |cluster: &Cluster, n: usize| {
        log_since(cluster, n, log_start[n])
            .lines()
            .filter(|l| l.contains("state for joiners") && l.contains("subgroup=1"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    cluster.start(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (source, logged_at_cut) = loop {
        let source = [0, 2]
            .into_iter()
            .find(|&n| !shipping(&cluster, n).is_empty());
        let logged = log_bytes(&cluster, 1);
        if let Some(source) = source
            && logged >= CUT_AFTER_BYTES
        {
            cluster.kill9(source as u32);
            break (source, logged);
        }
        assert!(
            Instant::now() < deadline,
            "no transfer to node 1 under way (source {source:?}, {logged} bytes logged)\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        logged_at_cut < LOG_BYTES,
        "the transfer was over before the cut ({logged_at_cut} bytes logged): nothing to resume"
    );
    let other = 2 - source;
    // Node 1 back in a view with the other replica, its source gone.
    let c1 = rejoined(&cluster, &c, &before, 1, 2).await;
    let latest = c1.get("/demo/big").await.expect("get");
    assert!(latest.is_some_and(|o| o.blob == long_log_value(VERSIONS - 1)));
    let cut_at = (logged_at_cut / LONG_LOG_VALUE_BYTES as u64) as usize;
    let around_cut = [0, cut_at.saturating_sub(1), cut_at + 1, VERSIONS - 2];
    reads_past_versions(&c1, &versions, &around_cut).await;
    let resumed = shipping(&cluster, other);
    println!(
        "cut after node 1 logged {} MiB of a {} MiB log; node {other} then shipped: {resumed:?}",
        logged_at_cut >> 20,
        LOG_BYTES >> 20
    );
    assert!(
        resumed.iter().any(|l| l.contains("after=Some")),
        "node {other} shipped the whole log again: {resumed:?}"
    );
    // Through all those views, a log line names the current view once (its own span):
    // recording it into the node's span appended one value per view ever installed.
    let survivor = log_since(&cluster, other, 0);
    assert!(
        survivor.contains("}:view{view="),
        "no view span in node {other}'s log"
    );
    for line in survivor.lines() {
        let node_span = line.split("node{").nth(1).and_then(|r| r.split('}').next());
        assert!(
            node_span.is_none_or(|fields| !fields.contains("view=")),
            "a view in the node's span: {line}"
        );
    }
}

/// A node restarted into a volatile shard of 160 MiB (160 objects of 1 MiB, in memory
/// only, so the whole shard travels) takes it as a streamed snapshot: the source encodes
/// it a piece at a time as the transfer asks, with blobs shared until their piece is
/// encoded, and the joiner applies each part as it arrives. The source's peak resident
/// memory grows by far less than the shard, and the joiner's peak stays well under twice
/// it. Before, the source encoded the whole store into one snapshot and the driver copied
/// that once more into the transfer's first message, and the joiner gathered every part
/// before decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_a_volatile_shard_streamed_without_its_source_copying_it() {
    const OBJECTS: usize = 160;
    const OBJECT_BYTES: usize = 1 << 20;
    const SHARD_BYTES: u64 = (OBJECTS * OBJECT_BYTES) as u64;
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let value = |i: usize| Bytes::from(vec![i as u8; OBJECT_BYTES]);
    for i in 0..OBJECTS {
        c.put(&format!("/cache/k{i}"), value(i)).await.expect("put");
    }
    let before = incarnations(&c).await;
    let sources = sources_with_peaks_reset(&cluster);
    cluster.kill9(1);
    let started = Instant::now();
    cluster.start(1);
    let c1 = rejoined(&cluster, &c, &before, 1, 3).await;
    // Reads of the latest value wait for the state: once one is answered, it is in.
    let last = format!("/cache/k{}", OBJECTS - 1);
    let got = c1.get(&last).await.expect("get");
    assert!(
        got.is_some_and(|o| o.blob == value(OBJECTS - 1)),
        "{last} missing at node 1"
    );
    let took = started.elapsed();
    for i in [0, OBJECTS / 3, OBJECTS / 2] {
        let key = format!("/cache/k{i}");
        let got = c1.get(&key).await.expect("get");
        assert!(
            got.is_some_and(|o| o.blob == value(i)),
            "{key} missing or different at node 1"
        );
    }
    let keys = c1.list_keys("/cache", None).await.expect("list");
    assert_eq!(keys.len(), OBJECTS, "node 1 lists other keys than were put");
    check_transfer_memory(
        &cluster,
        &sources,
        "volatile shard to a restarted node",
        SHARD_BYTES,
        took,
        SHARD_BYTES * 3 / 2,
        SHARD_BYTES / 2,
    );
}

/// Whether every node but `except` has a compacted log (its `log-start` marker).
fn logs_compacted(cluster: &Cluster, except: usize) -> bool {
    fn has_marker(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name() == "log-start" || (e.path().is_dir() && has_marker(&e.path()))
            })
        })
    }
    (0..cluster.configs.len())
        .filter(|n| *n != except)
        .all(|n| has_marker(&cluster.configs[n].node.data_dir.join("checkpoints")))
}

/// A brand-new node (its disk wiped) joins a persistent shard of 160 MiB (160 objects of
/// 1 MiB) whose log was compacted, so no log holds the shard's beginning and its state
/// comes as a checkpoint of the source's store: encoded a piece at a time as the window
/// drains, written by the joiner's driver to a file as parts arrive, and loaded from it
/// in one pass. The source's peak resident memory grows by far less than the shard, and
/// the joiner's stays well under twice it, as it does when the node restarts from its
/// checkpoint. Before, the source encoded the whole checkpoint and the driver copied it
/// into the transfer's first piece (measured: the source grew by 342 MiB), and the
/// joiner gathered every part, copied them into one buffer and decoded the store from it
/// (its peak 369 MiB; now 195-205 MiB, the source's growth 54 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_takes_a_compacted_shard_as_a_checkpoint_neither_side_holds_whole() {
    const OBJECTS: usize = 160;
    const OBJECT_BYTES: usize = 1 << 20;
    const SHARD_BYTES: u64 = (OBJECTS * OBJECT_BYTES) as u64;
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    for cfg in &mut cluster.configs {
        cfg.limits.history_cache_bytes = 4 << 20;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let value = |i: usize| Bytes::from(vec![i as u8; OBJECT_BYTES]);
    for i in 0..OBJECTS {
        c.put(&format!("/demo/k{i}"), value(i)).await.expect("put");
    }
    // A compaction writes a checkpoint only when it forgets something: an overwritten
    // version. The log is compacted once the checkpoint is durable everywhere, which
    // the next delivery shows.
    c.put("/demo/k0", value(0)).await.expect("put");
    c.compact("/demo", now_us()).await.expect("compact");
    c.put("/demo/k0", value(0)).await.expect("put");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !logs_compacted(&cluster, usize::MAX) {
        assert!(
            Instant::now() < deadline,
            "the logs were not compacted\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = incarnations(&c).await;
    let sources = sources_with_peaks_reset(&cluster);
    cluster.kill9(1);
    std::fs::remove_dir_all(&cluster.configs[1].node.data_dir).expect("wipe node 1");
    let started = Instant::now();
    cluster.start(1);
    let c1 = rejoined(&cluster, &c, &before, 1, 3).await;
    // Reads of the latest value wait for the state: once one is answered, it is in.
    for i in [OBJECTS - 1, 0, OBJECTS / 2] {
        let key = format!("/demo/k{i}");
        let got = c1.get(&key).await.expect("get");
        assert!(
            got.is_some_and(|o| o.blob == value(i)),
            "{key} missing or different at node 1"
        );
    }
    let took = started.elapsed();
    let keys = c1.list_keys("/demo", None).await.expect("list");
    assert_eq!(keys.len(), OBJECTS, "node 1 lists other keys than were put");
    let log = strip_ansi(&cluster.node_log(1));
    assert!(
        log.contains("took the transferred checkpoint"),
        "node 1 did not take a checkpoint:\n{log}"
    );
    check_transfer_memory(
        &cluster,
        &sources,
        "compacted shard to a new node",
        SHARD_BYTES,
        took,
        SHARD_BYTES * 3 / 2,
        SHARD_BYTES / 2,
    );

    // Restarted, node 1 rebuilds from the checkpoint it kept, read in one pass (before,
    // the whole file was read into memory beside the store built from it), and its log
    // continues into its sources': no checkpoint comes again (before, every rejoin of a
    // compacted shard took the whole store once more, and held two of it).
    let before = incarnations(&c).await;
    cluster.kill9(1);
    cluster.start(1);
    let c1 = rejoined(&cluster, &c, &before, 1, 3).await;
    let last = format!("/demo/k{}", OBJECTS - 1);
    let got = c1.get(&last).await.expect("get");
    assert!(got.is_some_and(|o| o.blob == value(OBJECTS - 1)));
    let log = strip_ansi(&cluster.node_log(1));
    assert!(
        log.contains("loaded the checkpoint"),
        "node 1 did not restart from its checkpoint:\n{log}"
    );
    assert_eq!(
        log.matches("took the transferred checkpoint").count(),
        1,
        "a checkpoint came again to node 1 restarted with its log:\n{log}"
    );
    let peak = peak_rss_bytes(cluster.procs[&1].id());
    println!(
        "restarted from a {} MiB checkpoint: its peak {} MiB resident",
        SHARD_BYTES >> 20,
        peak >> 20
    );
    assert!(
        peak < SHARD_BYTES * 3 / 2,
        "node 1 peaked at {} MiB restarting from a {} MiB checkpoint",
        peak >> 20,
        SHARD_BYTES >> 20
    );
}

/// A node whose data directory was lost (a wiped or replaced disk) comes back into the
/// running cluster: node 0, which founds the group at a cluster's first start, must join
/// it rather than found a second one beside it (split brain: before, it did, alone and
/// empty, and clients reaching it saw another world), and node 2 must not reuse the
/// incarnation number the group gave up on (before, it was refused for good). Both then
/// serve the cluster's data from their own replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_rejoins_the_running_cluster() {
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let put = c
        .put("/demo/kept", Bytes::from_static(b"before the wipe"))
        .await
        .expect("put");
    let addrs = cluster.addrs();
    for node in [0u32, 2] {
        let before = incarnations(&c).await;
        cluster.kill9(node);
        let data_dir = cluster.configs[node as usize].node.data_dir.clone();
        std::fs::remove_dir_all(&data_dir).expect("wipe the data directory");
        // Suspected and removed while it is away.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cluster.start(node);
        let deadline = Instant::now() + Duration::from_secs(30);
        let now = loop {
            let now = incarnations(&c).await;
            if now.len() == 3 {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not rejoin: {now:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for other in (0..3).filter(|n| *n != node) {
            assert_eq!(now[&other], before[&other], "node {other} left the view");
        }
        assert!(
            now[&node] > before[&node],
            "node {node} reused an incarnation: {before:?} then {now:?}"
        );
        // Through the wiped node alone: it is in the cluster's one view, with its data.
        let only: HashMap<String, String> = (0..3)
            .filter(|n| *n != node as usize)
            .map(|n| (addrs[n].clone(), addrs[node as usize].clone()))
            .collect();
        let via = Client::connect_via(
            &addrs[node as usize..=node as usize],
            None,
            Policy::RoundRobin,
            only,
        )
        .await
        .expect("connect to the wiped node");
        let (_, members) = via.members().await.expect("members");
        assert_eq!(
            members.len(),
            3,
            "node {node} is in another group: {members:?}"
        );
        let kept = via.get("/demo/kept").await.expect("get");
        assert!(
            kept.is_some_and(|o| o.version == put.version && &o.blob[..] == b"before the wipe"),
            "node {node} lacks the cluster's data"
        );
    }
}

/// A node whose disk fills stops at once, and the others go on: every put is answered,
/// persistent and volatile, and reads return them. Before, the node tried to leave
/// gracefully, which needs its log (a member logs the next view before acknowledging
/// it), so every shard of the cluster, volatile ones too, waited on it for good. Once
/// the operator frees space and the node is started again, it rejoins and serves
/// everything from its own replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_and_the_others_go_on() {
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    // No reserve: the disk fills (the last line of defence, and what a reserve too small
    // for a burst of writes comes to).
    cluster.configs[1].limits.disk_reserve_bytes = 0;
    let data_dir = cluster.configs[1].node.data_dir.clone();
    let disk = match SmallDisk::mount(&data_dir, 12 << 20) {
        Ok(disk) => disk,
        Err(reason) => {
            println!("skipped: cannot mount a small file system: {reason}");
            return;
        }
    };
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let before = incarnations(&c).await;
    let value = |i: usize| Bytes::from(vec![(i % 251) as u8; 64 << 10]);
    let mut written = Vec::new();
    let mut stopped = None;
    // 12 MiB hold about 180 such objects; every put must be answered all the same.
    for i in 0..400 {
        let key = format!("/demo/full/{i:03}");
        let put = tokio::time::timeout(Duration::from_secs(30), c.put(&key, value(i)))
            .await
            .unwrap_or_else(|_| panic!("put {i} was not answered\n{}", cluster.logs()))
            .unwrap_or_else(|e| panic!("put {i}: {e}\n{}", cluster.logs()));
        written.push((key, put.version));
        if stopped.is_none()
            && let Some(status) = cluster
                .procs
                .get_mut(&1)
                .and_then(|p| p.try_wait().expect("wait"))
        {
            stopped = Some((i, status));
        }
        if stopped.is_some_and(|(at, _)| i >= at + 20) {
            break;
        }
    }
    let (at, status) =
        stopped.unwrap_or_else(|| panic!("node 1 did not stop on a full disk\n{}", cluster.logs()));
    println!("node 1 stopped ({status}) after put {at}");
    assert_eq!(status.code(), Some(1), "a stop on a failed log is an error");
    let log = strip_ansi(
        &std::fs::read_to_string(cluster.dir.path().join("n1.log")).expect("node 1's log"),
    );
    assert!(
        log.contains("No space left on device") && log.contains("its log could not write"),
        "node 1 does not say why it stopped:\n{log}"
    );
    // The other two go on, volatile pools too.
    let now = incarnations(&c).await;
    assert_eq!(
        now.keys().copied().collect::<Vec<_>>(),
        vec![0, 2],
        "{now:?}"
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        c.put("/cache/after", Bytes::from_static(b"volatile")),
    )
    .await
    .expect("a volatile put is answered")
    .expect("volatile put");
    for (i, (key, version)) in written.iter().enumerate() {
        let o = c.get(key).await.expect("get").expect("present");
        assert!(o.version == *version && o.blob == value(i), "{key}");
    }
    // The operator frees space; the node starts again, rejoins and has everything.
    disk.grow(256 << 20);
    cluster.procs.remove(&1);
    cluster.start(1);
    let via = rejoined(&cluster, &c, &before, 1, 3).await;
    for (i, (key, version)) in written.iter().enumerate() {
        let o = via.get(key).await.expect("get").expect("present");
        assert!(
            o.version == *version && o.blob == value(i),
            "{key} through node 1"
        );
    }
    drop(cluster);
    drop(disk);
}

/// Disks fill together: every replica holds the same data. Under its reserve a node
/// raises a storage alarm, and the cluster refuses what it would log with `StorageFull`
/// (typed, naming the node) before any disk is full: no node stops, reads and volatile
/// pools go on, nothing already written is lost. Once space is freed the alarm clears by
/// itself and writes are taken again. Without the reserve the first full disk stops its
/// node, the next one the shard, and the cluster serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_under_their_reserve_refuse_writes_and_serve_reads() {
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    cluster.with_http();
    let Some(disks) = cluster.small_disks(24 << 20, 8 << 20) else {
        return;
    };
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let value = |i: usize| Bytes::from(vec![(i % 251) as u8; 64 << 10]);
    let mut written = Vec::new();
    let refused = loop {
        let i = written.len();
        assert!(
            i < 400,
            "24 MiB disks took {i} objects of 64 KiB without an alarm"
        );
        let key = format!("/demo/low/{i:03}");
        match tokio::time::timeout(Duration::from_secs(30), c.put(&key, value(i)))
            .await
            .unwrap_or_else(|_| panic!("put {i} was not answered\n{}", cluster.logs()))
        {
            Ok(put) => written.push((key, put.version)),
            Err(e) => break e,
        }
    };
    println!("refused after {} puts: {refused}", written.len());
    assert_eq!(
        refused.code(),
        Some(ErrorCode::StorageFull),
        "{refused}\n{}",
        cluster.logs()
    );
    assert!(
        refused.to_string().contains("limits.disk_reserve_bytes"),
        "{refused}"
    );
    // Refused again, and metadata writes too; no node stopped.
    let again = c
        .put("/demo/low/again", value(0))
        .await
        .expect_err("refused");
    assert_eq!(again.code(), Some(ErrorCode::StorageFull));
    let pool = c
        .create_pool(squall_kvs::PoolSpec::new(
            "/more",
            squall_kvs::StoreKind::Volatile,
            2,
        ))
        .await
        .expect_err("a metadata write is refused");
    assert_eq!(pool.code(), Some(ErrorCode::StorageFull), "{pool}");
    for (node, proc) in &mut cluster.procs {
        assert!(
            proc.try_wait().expect("wait").is_none(),
            "node {node} stopped"
        );
    }
    assert_eq!(incarnations(&c).await.len(), 3);
    // What the dashboard shows: the alarm, and the disk's free space.
    let metrics = node_metrics(&cluster, 0);
    assert!(
        metric_value(&metrics, "squall_storage_alarms") >= 1.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, "squall_disk_free_bytes") < f64::from(24u32 << 20));
    // Volatile pools and reads go on.
    c.put("/cache/low", Bytes::from_static(b"volatile"))
        .await
        .expect("a volatile put");
    for (i, (key, version)) in written.iter().enumerate() {
        let o = c.get(key).await.expect("get").expect("present");
        assert!(o.version == *version && o.blob == value(i), "{key}");
    }
    // Space is freed: the alarms clear and writes are taken again.
    for disk in &disks {
        disk.grow(256 << 20);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let put = loop {
        match c.put("/demo/low/after", value(1)).await {
            Ok(put) => break put,
            Err(e) if e.code() == Some(ErrorCode::StorageFull) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after freeing space: {e}\n{}", cluster.logs()),
        }
    };
    let o = c
        .get("/demo/low/after")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(o.version, put.version);
    c.create_pool(squall_kvs::PoolSpec::new(
        "/more",
        squall_kvs::StoreKind::Volatile,
        2,
    ))
    .await
    .expect("a metadata write once space is freed");
    assert_eq!(
        metric_value(&node_metrics(&cluster, 0), "squall_storage_alarms"),
        0.0
    );
    drop(cluster);
    drop(disks);
}

/// The way out of a storage alarm without more disk: a pool whose keys were overwritten
/// until the disks reached their reserve is compacted (taken under the alarm), the logs
/// drop what nothing needs, the alarms clear and writes are taken again, with every key
/// at its latest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_a_full_pool_frees_its_disk_and_lifts_the_alarm() {
    let _turn = HEAVY.lock().await;
    let mut cluster = cluster();
    let Some(disks) = cluster.small_disks(24 << 20, 8 << 20) else {
        return;
    };
    for cfg in &mut cluster.configs {
        cfg.limits.log_segment_bytes = 1 << 20;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let value = |i: usize| Bytes::from(vec![(i % 251) as u8; 64 << 10]);
    let key = |i: usize| format!("/demo/full/k{}", i % 4);
    let mut latest = BTreeMap::new();
    let mut puts = 0;
    let refused = loop {
        let i = puts;
        assert!(
            i < 400,
            "24 MiB disks took {i} objects of 64 KiB without an alarm"
        );
        match tokio::time::timeout(Duration::from_secs(30), c.put(&key(i), value(i)))
            .await
            .unwrap_or_else(|_| panic!("put {i} was not answered\n{}", cluster.logs()))
        {
            Ok(put) => {
                latest.insert(key(i), (i, put.version));
                puts += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code(), Some(ErrorCode::StorageFull), "{refused}");
    let compacted = c
        .compact("/demo", now_us())
        .await
        .expect("a compaction is taken under a storage alarm");
    let dropped: u64 = compacted.iter().map(|s| s.versions_dropped).sum();
    assert!(dropped > 100, "{compacted:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match c.put("/demo/full/after", value(1)).await {
            Ok(put) => break put,
            Err(e) if e.code() == Some(ErrorCode::StorageFull) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after the compaction: {e}\n{}", cluster.logs()),
        }
    };
    println!("refused after {puts} puts; {dropped} versions dropped");
    for (k, (i, version)) in &latest {
        let o = c.get(k).await.expect("get").expect("present");
        assert!(o.version == *version && o.blob == value(*i), "{k}");
    }
    let o = c
        .get("/demo/full/after")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(o.version, after.version);
    drop(cluster);
    drop(disks);
}

/// Node `node`'s `/metrics` text.
fn node_metrics(cluster: &Cluster, node: u32) -> String {
    let (status, body) = common::http(cluster.http_addr(node), "GET", "/metrics", b"");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).to_string()
}

/// The value of an unlabelled metric in a `/metrics` text.
fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}
