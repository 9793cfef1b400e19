//! Compacting a persistent pool's history (`squall compact`) on real `squall node`
//! processes: what is forgotten and what is kept, the log files freed on every replica,
//! and the same answers after a node restarts, after the whole cluster restarts, and from
//! a node that lost its disk and joins again (its state comes as a checkpoint, since the
//! others' logs no longer hold the beginning).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use squall_adapters::client::{Client, ClientError, Policy, Written};
use squall_adapters::wire::{At, ErrorCode};

mod common;
use common::{Cluster, PRINTER_UUID, now_us, strip_ansi};

/// The tests take turns: each runs a three-node cluster through restarts.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEYS: usize = 8;
const VALUE_BYTES: usize = 8 << 10;
/// k6's one value: large enough that a checkpoint goes to a joiner in several pieces
/// (`SNAPSHOT_PIECE_BYTES` of the store each), never encoded whole.
const K6_VALUE_BYTES: usize = 12 << 20;
/// Rounds of puts before the point the test compacts to, and after it.
const ROUNDS_BEFORE: usize = 40;
const ROUNDS_AFTER: usize = 20;

fn value(key: usize, round: usize) -> Bytes {
    let mut v = format!("k{key} round {round} ").into_bytes();
    v.resize(
        if key == 6 {
            K6_VALUE_BYTES
        } else {
            VALUE_BYTES
        },
        b'.',
    );
    Bytes::from(v)
}

fn key(k: usize) -> String {
    format!("/demo/k{k}")
}

/// Bytes in the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn log_bytes(cluster: &Cluster, node: usize) -> u64 {
    bytes_under(&cluster.configs[node].node.data_dir.join("log"))
}

/// A client that sends everything to `node`, once `node` is up and in a view of three.
async fn via(cluster: &Cluster, node: usize) -> Client {
    let addrs = cluster.addrs();
    let only: HashMap<String, String> = (0..addrs.len())
        .filter(|n| *n != node)
        .map(|n| (addrs[n].clone(), addrs[node].clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(c) =
            Client::connect_via(&addrs[node..=node], None, Policy::RoundRobin, only.clone()).await
            && let Ok((_, members)) = c.members().await
            && members.len() == 3
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} is not back in a view of three: {}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Expected {
    /// Each key's last put.
    latest: Vec<Option<Written>>,
    /// A put after the point: its version stays readable.
    after: Written,
    point_us: u64,
}

fn compacted(result: Result<Option<squall_adapters::wire::WireObject>, ClientError>) -> bool {
    matches!(result, Err(ref e) if e.code() == Some(ErrorCode::Compacted))
}

/// Waits (briefly) until `c` answers `compacted` for `key` as of `at`.
async fn forgotten(c: &Client, key: &str, at: At) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !compacted(c.get_at(key, at).await) {
        assert!(
            Instant::now() < deadline,
            "{key} as of {at:?} is still read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every node must answer after the compaction, whatever happened since.
async fn check(c: &Client, e: &Expected, who: &str) {
    for k in 0..KEYS {
        let got = c.get(&key(k)).await.expect("get");
        match e.latest[k] {
            Some(w) => {
                let o = got.unwrap_or_else(|| panic!("{who}: k{k} lost"));
                assert_eq!(o.version, w.version, "{who}: k{k}");
                let round = if k < 6 {
                    ROUNDS_BEFORE + ROUNDS_AFTER - 1
                } else {
                    0
                };
                assert_eq!(o.blob, value(k, round), "{who}: k{k}");
            }
            None => assert!(got.is_none(), "{who}: k{k} was removed"),
        }
    }
    // As of the point: a key untouched since keeps its value, a removed one is gone, and
    // one overwritten since had a value the compaction dropped.
    let at = At::Time(e.point_us);
    let k6 = c.get_at(&key(6), at).await.expect("k6 as of the point");
    assert_eq!(k6.map(|o| o.blob), Some(value(6, 0)), "{who}");
    assert_eq!(
        c.get_at(&key(7), at).await.expect("k7 as of the point"),
        None,
        "{who}"
    );
    assert!(
        compacted(c.get_at(&key(0), at).await),
        "{who}: k0 as of the point"
    );
    assert!(
        compacted(c.get_at(&key(6), At::Time(e.point_us - 60_000_000)).await),
        "{who}: a minute before the point"
    );
    // A version after the point is still read (from the log, where it is not the latest).
    let after = c
        .get_at(&key(0), At::Version(e.after.version))
        .await
        .expect("a version after the point");
    assert_eq!(after.map(|o| o.version), Some(e.after.version), "{who}");
    let mut listed = c
        .list_keys("/demo", Some(e.point_us))
        .await
        .expect("list as of the point");
    listed.sort();
    assert_eq!(listed, (0..7).map(key).collect::<Vec<_>>(), "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_forgets_history_frees_the_log_and_survives_restarts_and_joins() {
    let _turn = TURN.lock().await;
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        cfg.limits.log_segment_bytes = 256 << 10;
        cfg.limits.history_cache_bytes = 4 << 10;
        cfg.limits.object_bytes_max = K6_VALUE_BYTES;
        cfg.limits.frame_bytes_max = K6_VALUE_BYTES + (1 << 20);
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;

    let mut latest: Vec<Option<Written>> = vec![None; KEYS];
    // k6 is written once, first: its value lies in the oldest log file, which the
    // compaction drops, so only a checkpoint keeps it.
    for round in 0..ROUNDS_BEFORE {
        for (k, slot) in latest.iter_mut().enumerate() {
            if k == 6 && round > 0 {
                continue;
            }
            *slot = Some(c.put(&key(k), value(k, round)).await.expect("put"));
        }
    }
    c.remove(&key(7)).await.expect("remove");
    latest[7] = None;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let point_us = now_us();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut after = None;
    for round in ROUNDS_BEFORE..ROUNDS_BEFORE + ROUNDS_AFTER {
        for (k, slot) in latest.iter_mut().enumerate().take(6) {
            let w = c.put(&key(k), value(k, round)).await.expect("put");
            if k == 0 && round == ROUNDS_BEFORE {
                after = Some(w);
            }
            *slot = Some(w);
        }
    }
    let expected = Expected {
        latest,
        after: after.expect("a put after the point"),
        point_us,
    };
    let before: Vec<u64> = (0..3).map(|n| log_bytes(&cluster, n)).collect();

    let done = c.compact("/demo", point_us).await.expect("compact");
    let versions: u64 = done.iter().map(|d| d.versions_dropped).sum();
    let keys: u64 = done.iter().map(|d| d.keys_dropped).sum();
    // k0-k5: all 40 versions before the point (each was overwritten since); k6: none
    // (its one value is its value then); k7: 40 and its removal, and the key itself.
    assert_eq!((versions, keys), (6 * 40 + 41, 1), "{done:?}");
    assert!(done.iter().all(|d| d.through.is_some()), "{done:?}");
    // Answered once durable everywhere; each replica applies it as its service takes it.
    for n in 0..3 {
        forgotten(&via(&cluster, n).await, &key(0), At::Time(point_us)).await;
    }
    check(&c, &expected, "after the compaction").await;
    // Again to the same point: nothing more.
    let again = c.compact("/demo", point_us).await.expect("compact again");
    assert!(again.iter().all(|d| d.versions_dropped == 0), "{again:?}");

    // Every replica drops the log files nothing needs: about 40 of the 60 rounds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u64> = (0..3).map(|n| log_bytes(&cluster, n)).collect();
        let freed: Vec<i64> = (0..3).map(|n| before[n] as i64 - now[n] as i64).collect();
        println!("log bytes before {before:?}, now {now:?}");
        if freed.iter().all(|f| *f >= 2 << 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the logs were not compacted: before {before:?}, now {now:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // One node restarts: it rebuilds from its checkpoint and what its log still holds.
    cluster.kill9(1);
    cluster.start(1);
    check(&via(&cluster, 1).await, &expected, "node 1 restarted").await;

    // The whole cluster restarts.
    for n in 0..3 {
        cluster.kill9(n);
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    check(&c, &expected, "after a total restart").await;
    for n in 0..3 {
        check(
            &via(&cluster, n).await,
            &expected,
            &format!("node {n} after a total restart"),
        )
        .await;
    }

    // A node loses its disk and joins again: no log holds the shard's beginning now, so
    // its state comes as a checkpoint; it then restarts from its own.
    cluster.kill9(2);
    std::fs::remove_dir_all(&cluster.configs[2].node.data_dir).expect("wipe node 2");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.start(2);
    check(
        &via(&cluster, 2).await,
        &expected,
        "node 2 after losing its disk",
    )
    .await;
    // The checkpoint went in pieces, as the joiner's window took them.
    let pieces: Vec<u32> = (0..2)
        .flat_map(|n| {
            cluster
                .node_log(n)
                .lines()
                .filter(|l| l.contains("the checkpoint for joiners is supplied"))
                .filter_map(|l| {
                    let plain = strip_ansi(l);
                    plain
                        .split("pieces=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .collect::<Vec<u32>>()
        })
        .collect();
    assert!(
        !pieces.is_empty() && pieces.iter().all(|p| *p >= 2),
        "the checkpoint did not go in pieces: {pieces:?}\n{}",
        cluster.logs()
    );
    cluster.kill9(2);
    cluster.start(2);
    check(
        &via(&cluster, 2).await,
        &expected,
        "node 2 restarted from its checkpoint",
    )
    .await;

    // Again, but node 2 crashes once its log holds the transferred records and before
    // its service takes the checkpoint that came with them. The driver kept that
    // checkpoint before the log took the records, so node 2 rebuilds from it at restart
    // (it rebuilt from the records alone before, which no longer start at the shard's
    // beginning: a store without k6, which only a transfer back then corrected, and not
    // at all if node 2's log were the one a total restart continues from).
    cluster.kill9(2);
    let data2 = cluster.configs[2].node.data_dir.clone();
    std::fs::remove_dir_all(&data2).expect("wipe node 2");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.start_with(2, &[], &[("SQUALL_TEST_CRASH_BEFORE_TAKING_STATE", "1")]);
    let status = cluster.wait_exit(2, Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| !s.success()),
        "node 2 did not crash at the hook: {status:?}\n{}",
        cluster.logs()
    );
    assert!(
        bytes_under(&data2.join("checkpoints")) > 0,
        "no checkpoint beside the transferred log"
    );
    let loads = |c: &Cluster| c.node_log(2).matches("loaded the checkpoint").count();
    let loads_before = loads(&cluster);
    cluster.start(2);
    check(
        &via(&cluster, 2).await,
        &expected,
        "node 2 restarted after crashing before taking its state",
    )
    .await;
    // Loaded at start, and again once the transfer it rejoins with is in (its log
    // continues into the others', so no checkpoint comes with it).
    assert!(
        loads(&cluster) > loads_before,
        "node 2 did not rebuild from the kept checkpoint:\n{}",
        cluster.node_log(2)
    );

    // The CLI: a read before the point is a clear, typed error; compacting to now keeps
    // each key's latest value only.
    let (status, _, err) = cluster.cli(0, &["get", "/demo/k0", "--time", &point_us.to_string()]);
    assert_ne!(status, Some(0));
    assert!(err.contains("compacted"), "{err}");
    let (status, out, err) = cluster.cli(0, &["compact", "/demo"]);
    assert_eq!(status, Some(0), "{out}{err}");
    assert!(out.contains("forgotten"), "{out}");
    let c = cluster.client(None, 3).await;
    let k0 = c.get(&key(0)).await.expect("get").expect("k0");
    assert_eq!(k0.blob, value(0, ROUNDS_BEFORE + ROUNDS_AFTER - 1));
    for n in 0..3 {
        forgotten(
            &via(&cluster, n).await,
            &key(0),
            At::Version(expected.after.version),
        )
        .await;
    }
    // Bad input: a volatile pool, a pool that does not exist.
    let volatile = c.compact("/cache", point_us).await.expect_err("volatile");
    assert_eq!(volatile.code(), Some(ErrorCode::NotVersioned), "{volatile}");
    let missing = c.compact("/nowhere", point_us).await.expect_err("no pool");
    assert_eq!(missing.code(), Some(ErrorCode::NoSuchPool), "{missing}");
}

/// `limits.history_retention_s`: a pool forgets what is older than the retention by
/// itself (the shard's first member sends the compaction), keeping each key's latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_forgets_history_older_than_the_retention_by_itself() {
    let _turn = TURN.lock().await;
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        cfg.limits.history_retention_s = 4;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let old = c
        .put("/demo/kept", Bytes::from_static(b"one"))
        .await
        .expect("put");
    c.put("/demo/kept", Bytes::from_static(b"two"))
        .await
        .expect("put");
    // Within the retention, the past reads.
    let then = c
        .get_at("/demo/kept", At::Time(old.timestamp_us))
        .await
        .expect("a read within the retention");
    assert_eq!(then.map(|o| o.blob), Some(Bytes::from_static(b"one")));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !compacted(c.get_at("/demo/kept", At::Time(old.timestamp_us)).await) {
        assert!(
            Instant::now() < deadline,
            "the history was kept past the retention\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let latest = c.get("/demo/kept").await.expect("get").expect("kept");
    assert_eq!(latest.blob, Bytes::from_static(b"two"));
}

/// The metadata's state as a client sees it from `c`: pools (`kept` as it was, its
/// generation too), UDLs (loaded), DFGs.
async fn metadata_as_expected(
    c: &Client,
    who: &str,
    kept: &squall_kvs::PoolSpec,
    dfg_id: &str,
    cluster: &Cluster,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pools = c.list_pools().await.unwrap_or_default();
        let udls = c.list_udls().await.unwrap_or_default();
        let dfgs = c.list_dfgs().await.unwrap_or_default();
        let ok = pools.contains(kept)
            && !pools.iter().any(|p| p.path == "/gone")
            && udls.contains(PRINTER_UUID)
            && udls.contains("\"load_error\":null")
            && dfgs.contains(dfg_id);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: pools {pools:?}, UDLs {udls}, DFGs {dfgs}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An input put to `/cache/in` at `c` gets its output in `/kept/out` (the DFG runs).
async fn triggers(c: &Client, name: &str, cluster: &Cluster) {
    let input = format!("/cache/in/{name}");
    c.put(&input, Bytes::from(name.to_string()))
        .await
        .expect("put an input");
    let output = format!("/kept/out/{name}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(o)) = c.get(&output).await {
            assert_eq!(o.blob, name.as_bytes());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no output for {input}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `node`'s log without its colours, for matching fields.
fn plain_log(cluster: &Cluster, node: u32) -> String {
    let log = cluster.node_log(node);
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            // An escape sequence: `ESC [ ... m`.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn metadata_log_bytes(cluster: &Cluster, node: usize) -> u64 {
    bytes_under(
        &cluster.configs[node]
            .node
            .data_dir
            .join("log")
            .join("shard-0-0"),
    )
}

/// `limits.metadata_log_compact_bytes`: uploading a plugin again and again does not
/// grow the metadata log without end. Every node checkpoints the metadata (pools, UDLs,
/// DFGs) and drops the log before it; a node restarts from that checkpoint, the whole
/// cluster does, and a node that lost its disk gets the checkpoint with the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_log_is_checkpointed_and_compacted() {
    let _turn = TURN.lock().await;
    let plugin = Bytes::from(std::fs::read(common::printer()).expect("the printer plugin"));
    const UPLOADS: u64 = 6;
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        cfg.limits.log_segment_bytes = 256 << 10;
        cfg.limits.object_bytes_max = 16 << 20;
        cfg.limits.frame_bytes_max = 17 << 20;
        // Past it every second upload or so.
        cfg.limits.metadata_log_compact_bytes = plugin.len() as u64 * 3 / 2;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let persistent = c
        .list_pools()
        .await
        .expect("pools")
        .iter()
        .find(|p| p.path == "/demo")
        .map(|p| p.subgroup)
        .expect("the persistent default pool");
    for path in ["/kept", "/gone"] {
        c.create_pool(squall_kvs::PoolSpec::new(
            path.to_string(),
            squall_kvs::StoreKind::Persistent,
            persistent,
        ))
        .await
        .expect("a pool");
    }
    c.remove_pool("/gone").await.expect("remove a pool");
    for _ in 0..UPLOADS {
        c.upload_udl("printer", plugin.clone())
            .await
            .expect("upload");
    }
    let dfg_id = "2a9c7b1e-1111-4a2b-9c3d-00000000c0de";
    c.add_dfgs(Bytes::from(format!(
        r#"{{"id": "{dfg_id}", "desc": "printer to /kept/out", "graph": [{{
            "pathname": "/cache/in", "user_defined_logic_list": ["{PRINTER_UUID}"],
            "shard_dispatcher_list": ["one"], "user_defined_logic_hook_list": ["both"],
            "user_defined_logic_config_list": [{{"quiet": true}}],
            "destinations": [{{"/kept/out": "put"}}]}}]}}"#
    )))
    .await
    .expect("add the DFG");
    triggers(&c, "before", &cluster).await;
    let kept = c.find_pool("/kept/x").await.expect("/kept");

    // Every node dropped most of what the uploads logged.
    let uploaded = UPLOADS * plugin.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u64> = (0..3).map(|n| metadata_log_bytes(&cluster, n)).collect();
        println!("metadata log bytes {now:?} after {uploaded} bytes of uploads");
        if now.iter().all(|b| *b < uploaded / 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the metadata logs were not compacted: {now:?} after {uploaded} bytes of uploads\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for n in 0..3 {
        let checkpoints = cluster.configs[n]
            .node
            .data_dir
            .join("checkpoints")
            .join("0-0");
        assert!(
            bytes_under(&checkpoints) > 0,
            "node {n}: no metadata checkpoint"
        );
    }

    // One node restarts: from the checkpoint.
    cluster.kill9(1);
    cluster.start(1);
    let c1 = via(&cluster, 1).await;
    metadata_as_expected(&c1, "node 1 restarted", &kept, dfg_id, &cluster).await;
    assert!(
        plain_log(&cluster, 1).contains("loaded the checkpoint subgroup=0"),
        "node 1 did not load the metadata checkpoint:\n{}",
        cluster.node_log(1)
    );

    // The whole cluster restarts.
    for n in 0..3 {
        cluster.kill9(n);
    }
    cluster.start_all();
    for n in 0..3 {
        let cn = via(&cluster, n as usize).await;
        metadata_as_expected(
            &cn,
            &format!("node {n} after a total restart"),
            &kept,
            dfg_id,
            &cluster,
        )
        .await;
    }
    let c = cluster.client(None, 3).await;
    triggers(&c, "after-restart", &cluster).await;

    // A node loses its disk: no log holds the metadata's beginning, so it comes as a
    // checkpoint with the log.
    cluster.kill9(2);
    std::fs::remove_dir_all(&cluster.configs[2].node.data_dir).expect("wipe node 2");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.start(2);
    let c2 = via(&cluster, 2).await;
    metadata_as_expected(&c2, "node 2 after losing its disk", &kept, dfg_id, &cluster).await;
    assert!(
        plain_log(&cluster, 2).contains("took the transferred checkpoint subgroup=0"),
        "node 2 did not take a metadata checkpoint:\n{}",
        cluster.node_log(2)
    );
    cluster.kill9(2);
    cluster.start(2);
    let c2 = via(&cluster, 2).await;
    metadata_as_expected(&c2, "node 2 restarted", &kept, dfg_id, &cluster).await;
    triggers(&c2, "after-join", &cluster).await;
}
