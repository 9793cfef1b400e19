//! The object store against real node processes (`squall node`) on 127.0.0.1: every
//! client operation, its errors, restarts, idempotent retries, authentication, garbage on
//! the client port, and a linearizability check of concurrent clients while a node is
//! killed and restarted.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use squall_adapters::client::{Client, ClientError, Policy, Written};
use squall_adapters::config::{Role, SubgroupKind, SubgroupSpec};
use squall_adapters::wire::{self, At, ErrorCode, Frame, Request, Response};
use squall_kvs::op::{self, Op};
use squall_kvs::{Condition, MessageId, PoolSpec, StoreKind};
use squall_lincheck as lin;
use squall_platform::Version;

mod common;
use common::{Cluster, http, strip_ansi};

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_and_its_errors_on_a_real_cluster() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.start_all();
    let c = cluster.client(None, 3).await;

    // Puts, gets, versions, time travel.
    let v1 = c
        .put("/demo/a", Bytes::from_static(b"one"))
        .await
        .expect("put");
    let v2 = c
        .put("/demo/a", Bytes::from_static(b"two"))
        .await
        .expect("put");
    assert!(v2.version > v1.version && v2.timestamp_us > v1.timestamp_us);
    let now = c.get("/demo/a").await.expect("get").expect("present");
    assert_eq!(&now.blob[..], b"two");
    assert_eq!(now.previous_key_version, Some(v1.version));
    let then = c
        .get_at("/demo/a", At::Version(v1.version))
        .await
        .expect("by version");
    assert_eq!(then.map(|o| o.blob), Some(Bytes::from_static(b"one")));
    let at_t = c
        .get_at("/demo/a", At::Time(v1.timestamp_us))
        .await
        .expect("by time");
    assert_eq!(at_t.map(|o| o.blob), Some(Bytes::from_static(b"one")));
    assert_eq!(
        c.get_at("/demo/a", At::Time(v1.timestamp_us - 1))
            .await
            .expect("by time"),
        None
    );
    assert_eq!(c.get_size("/demo/a").await.expect("size"), Some(3));
    // Stable: durable on every replica (persistent puts are answered only then).
    let stable = c.get_at("/demo/a", At::Stable).await.expect("stable");
    assert_eq!(stable.map(|o| o.version), Some(v2.version));

    // Conditional puts.
    let conflict = c
        .put_if(
            "/demo/a",
            Bytes::from_static(b"x"),
            Condition::KeyVersion(None),
        )
        .await
        .expect_err("the key exists");
    assert_eq!(code(&conflict), Some(ErrorCode::Conflict));
    assert!(matches!(conflict, ClientError::Server { current: Some(v), .. } if v == v2.version));
    c.put_if(
        "/demo/a",
        Bytes::from_static(b"three"),
        Condition::KeyVersion(Some(v2.version)),
    )
    .await
    .expect("the expected version");
    c.put_if(
        "/demo/new",
        Bytes::from_static(b"n"),
        Condition::KeyVersion(None),
    )
    .await
    .expect("absent");

    // Remove, list, multi_get.
    c.put("/demo/b", Bytes::from_static(b"bee"))
        .await
        .expect("put");
    let before_rm = c
        .put("/demo/c", Bytes::from_static(b"sea"))
        .await
        .expect("put");
    c.remove("/demo/c").await.expect("remove");
    assert_eq!(c.get("/demo/c").await.expect("get"), None);
    assert_eq!(
        code(&c.remove("/demo/c").await.expect_err("gone")),
        Some(ErrorCode::NoSuchKey)
    );
    let keys = c.list_keys("/demo", None).await.expect("ls");
    assert_eq!(keys, vec!["/demo/a", "/demo/b", "/demo/new"]);
    let past = c
        .list_keys("/demo", Some(before_rm.timestamp_us))
        .await
        .expect("ls");
    assert!(past.contains(&"/demo/c".to_string()));
    let both = c
        .multi_get(&[
            "/demo/a".to_string(),
            "/demo/b".to_string(),
            "/demo/zz".to_string(),
        ])
        .await
        .expect("multi_get");
    assert_eq!(both.len(), 3);
    assert_eq!(both[1].as_ref().map(|o| &o.blob[..]), Some(&b"bee"[..]));
    assert!(both[2].is_none());

    // Volatile pool: no history.
    c.put("/cache/k", Bytes::from_static(b"v"))
        .await
        .expect("volatile put");
    assert_eq!(
        code(
            &c.get_at("/cache/k", At::Version(Version(1)))
                .await
                .expect_err("no history")
        ),
        Some(ErrorCode::NotVersioned)
    );

    // Pools and their errors.
    let pools = c.list_pools().await.expect("pools");
    let persistent_subgroup = pools
        .iter()
        .find(|p| p.kind == StoreKind::Persistent)
        .expect("the default persistent pool")
        .subgroup;
    c.create_pool(PoolSpec::new(
        "/photos",
        StoreKind::Persistent,
        persistent_subgroup,
    ))
    .await
    .expect("create");
    assert_eq!(
        c.find_pool("/photos/cat.jpg").await.expect("find").path,
        "/photos"
    );
    let nested = c
        .create_pool(PoolSpec::new(
            "/photos/cats",
            StoreKind::Persistent,
            persistent_subgroup,
        ))
        .await
        .expect_err("nested");
    assert_eq!(code(&nested), Some(ErrorCode::NestedPool));
    let exists = c
        .create_pool(PoolSpec::new(
            "/photos",
            StoreKind::Persistent,
            persistent_subgroup,
        ))
        .await
        .expect_err("exists");
    assert_eq!(code(&exists), Some(ErrorCode::PoolExists));
    let bad_subgroup = c
        .create_pool(PoolSpec::new("/x", StoreKind::Persistent, 99))
        .await
        .expect_err("no subgroup 99");
    assert_eq!(code(&bad_subgroup), Some(ErrorCode::InvalidPool));
    c.remove_pool("/photos").await.expect("remove pool");
    assert_eq!(
        code(&c.remove_pool("/photos").await.expect_err("gone")),
        Some(ErrorCode::NoSuchPool)
    );

    // Bad keys and objects change nothing.
    for (key, expected) in [
        ("/nowhere/k", ErrorCode::NoPoolForKey),
        ("relative", ErrorCode::InvalidKey),
        ("/demo//x", ErrorCode::InvalidKey),
    ] {
        let e = c.put(key, Bytes::from_static(b"v")).await.expect_err(key);
        assert_eq!(code(&e), Some(expected), "{key}: {e}");
    }
    let huge = Bytes::from(vec![0u8; (1 << 20) + 1]);
    let too_large = c.put("/demo/huge", huge).await.expect_err("over the limit");
    assert_eq!(code(&too_large), Some(ErrorCode::TooLarge), "{too_large}");
    // A frame over the node's limit: the node reads past it and answers that request
    // TooLarge; the client fails it with that reason instead of retrying it as a lost
    // connection, and the connection goes on.
    let too_large = c
        .put("/demo/huge", Bytes::from(vec![0u8; 2 << 20]))
        .await
        .expect_err("a frame over the limit");
    assert_eq!(code(&too_large), Some(ErrorCode::TooLarge), "{too_large}");
    assert!(too_large.to_string().contains("refused"), "{too_large}");
    assert_eq!(c.get("/demo/huge").await.expect("get"), None);

    let long_key = format!("/demo/{}", "k".repeat(2000));
    let e = c
        .put(&long_key, Bytes::from_static(b"v"))
        .await
        .expect_err("too long");
    assert_eq!(code(&e), Some(ErrorCode::InvalidKey), "{e}");
    // A put conditional on the shard's version: only if nothing was written since.
    let last = c
        .put("/demo/s1", Bytes::from_static(b"1"))
        .await
        .expect("put");
    c.put_if(
        "/demo/s2",
        Bytes::from_static(b"2"),
        Condition::ShardVersion(Some(last.version)),
    )
    .await
    .expect("nothing written since");
    let stale = c
        .put_if(
            "/demo/s3",
            Bytes::from_static(b"3"),
            Condition::ShardVersion(Some(last.version)),
        )
        .await
        .expect_err("s2 was written since");
    assert_eq!(code(&stale), Some(ErrorCode::Conflict));

    // The command line: output on success, one line and status 1 on error.
    let cli = |args: &[&str]| cluster.cli(1, args);
    let (status, stdout, _) = cli(&["put", "/demo/cli", "from the cli"]);
    assert_eq!(status, Some(0), "{stdout}");
    let (status, stdout, _) = cli(&["get", "/demo/cli"]);
    assert_eq!(status, Some(0));
    assert!(stdout.contains("from the cli"), "{stdout}");
    let (_, stdout, _) = cli(&["ls", "/demo"]);
    assert!(stdout.lines().any(|l| l == "/demo/cli"), "{stdout}");
    let (_, stdout, _) = cli(&["pool", "ls"]);
    assert!(
        stdout.contains("/demo") && stdout.contains("persistent"),
        "{stdout}"
    );
    let (_, stdout, _) = cli(&["members"]);
    assert_eq!(
        stdout.lines().filter(|l| l.contains("node ")).count(),
        3,
        "{stdout}"
    );
    let (status, stdout, stderr) = cli(&[
        "pool",
        "create",
        "/pinned",
        "--kind",
        "volatile",
        "--override",
        "/pinned/k=0",
    ]);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    let pinned = c.find_pool("/pinned/k").await.expect("created by the cli");
    assert_eq!(pinned.overrides.get("/pinned/k"), Some(&0));
    let (status, _, stderr) = cli(&["pool", "create", "/bad", "--kind", "nope"]);
    assert_eq!(status, Some(1));
    assert!(
        stderr.contains("expected volatile, persistent or trigger"),
        "{stderr}"
    );
    let (status, _, stderr) = cli(&["put", "/demo/cli", "x", "--if-absent"]);
    assert_eq!(status, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: conflict"), "{stderr}");
    let (status, _, stderr) = cli(&["get", "/nowhere/x"]);
    assert_eq!(status, Some(1));
    assert!(stderr.contains("no_pool_for_key"), "{stderr}");

    // Time travel from the command line: a put prints its time in µs and in RFC 3339,
    // `--time` takes either, or a duration back from now.
    let (status, stdout, stderr) = cli(&["put", "/demo/when", "before"]);
    assert_eq!(status, Some(0), "{stderr}");
    let (us, rfc3339) = stdout
        .trim()
        .split_once(" at ")
        .and_then(|(_, t)| t.split_once(" µs = "))
        .unwrap_or_else(|| panic!("no time in {stdout:?}"));
    assert!(rfc3339.ends_with('Z') && rfc3339.contains('T'), "{stdout}");
    let (status, _, stderr) = cli(&["put", "/demo/when", "after"]);
    assert_eq!(status, Some(0), "{stderr}");
    for at in [us, rfc3339] {
        let (status, stdout, stderr) = cli(&["get", "/demo/when", "--time", at]);
        assert_eq!(status, Some(0), "--time {at}: {stderr}");
        assert!(stdout.contains("= before ("), "--time {at}: {stdout}");
        assert!(stdout.contains(rfc3339), "--time {at}: {stdout}");
    }
    let (_, stdout, _) = cli(&["get", "/demo/when", "--time", "0s ago"]);
    assert!(stdout.contains("= after ("), "{stdout}");
    let (status, _, stderr) = cli(&["get", "/demo/when", "--time", "-1h"]);
    assert_eq!(
        status,
        Some(1),
        "the key did not exist an hour ago: {stderr}"
    );
    assert!(stderr.contains("not found"), "{stderr}");
    let (_, stdout, _) = cli(&["ls", "/demo", "--time", rfc3339]);
    assert!(stdout.lines().any(|l| l == "/demo/when"), "{stdout}");
    let (_, stdout, _) = cli(&["ls", "/demo", "--time", "1h ago"]);
    assert!(!stdout.lines().any(|l| l == "/demo/when"), "{stdout}");
    let (status, _, stderr) = cli(&["get", "/demo/when", "--time", "yesterday"]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("\"yesterday\"") && stderr.contains("RFC 3339"),
        "{stderr}"
    );

    // Watch and members.
    let mut watch = c.watch("/demo").await.expect("watch");
    c.put("/demo/w", Bytes::from_static(b"seen"))
        .await
        .expect("put");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open");
    assert_eq!(event.key, "/demo/w");
    assert_eq!(event.blob, Some(Bytes::from_static(b"seen")));
    let (_, members) = c.members().await.expect("members");
    assert_eq!(members.len(), 3);
}

/// Pool metadata is replicated state and read like it: a pool created through one node is
/// there at once for a client of any other node, and a client routes to it (its cached
/// layout refreshed after the change) without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_created_through_one_node_is_seen_at_once_through_every_node() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.start_all();
    let _ready = cluster.client(None, 3).await;
    // One client per node: each sends cluster-wide requests to its own node first.
    let mut clients = Vec::new();
    for addr in cluster.addrs() {
        clients.push(
            Client::connect(&[addr], None, Policy::default())
                .await
                .expect("connect"),
        );
    }
    let subgroup = clients[0]
        .list_pools()
        .await
        .expect("pools")
        .iter()
        .find(|p| p.kind == StoreKind::Volatile)
        .map(|p| p.subgroup)
        .expect("a default volatile pool");
    for round in 0..20 {
        let creator = &clients[round % 3];
        let path = format!("/fresh{round}");
        creator
            .create_pool(PoolSpec::new(path.clone(), StoreKind::Volatile, subgroup))
            .await
            .expect("create");
        for (i, c) in clients.iter().enumerate() {
            let found = c.find_pool(&format!("{path}/k")).await;
            assert_eq!(
                found.map(|p| p.path),
                Ok(path.clone()),
                "round {round}: node {i} does not see the pool node {} created",
                round % 3
            );
        }
        let key = format!("{path}/k");
        let written = clients[(round + 1) % 3]
            .put(&key, Bytes::from(format!("v{round}")))
            .await
            .expect("put into the new pool");
        let read = clients[(round + 2) % 3]
            .get(&key)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(read.version, written.version);
    }
}

/// Three nodes with one more volatile subgroup of three shards, one node each (so no
/// node holds every shard); the cluster and that subgroup's number.
fn spread_cluster() -> (Cluster, u32) {
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        cfg.layout.subgroups.push(SubgroupSpec {
            kind: SubgroupKind::Volatile,
            shards: 3,
            min_nodes: 1,
            max_nodes: 1,
        });
    }
    let subgroup = cluster.configs[0].layout.subgroups.len() as u32;
    (cluster, subgroup)
}

/// A pool over three shards held by one node each: every key is reached from any client
/// (routed to its shard), and `list_keys` lists all of them, whichever node the client
/// knows first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spread_over_nodes_lists_every_key() {
    let (mut cluster, spread_subgroup) = spread_cluster();
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    c.create_pool(PoolSpec::new(
        "/spread".to_string(),
        StoreKind::Volatile,
        spread_subgroup,
    ))
    .await
    .expect("create a pool over three shards");
    let mut keys: Vec<String> = (0..30).map(|i| format!("/spread/k{i:02}")).collect();
    for key in &keys {
        c.put(key, Bytes::from(key.clone())).await.expect("put");
    }
    keys.sort();
    c.put("/demo/d", Bytes::from_static(b"d"))
        .await
        .expect("put");
    c.put("/cache/c", Bytes::from_static(b"c"))
        .await
        .expect("put");
    // `/` spans every pool, each node holding one shard of /spread: a listing of it was
    // refused (no pool holds `/`) before, and a watch of it saw one node's shards only.
    let mut everything: Vec<String> = keys.clone();
    everything.extend(["/cache/c".to_string(), "/demo/d".to_string()]);
    everything.sort();
    for addr in cluster.addrs() {
        let one = Client::connect(std::slice::from_ref(&addr), None, Policy::default())
            .await
            .expect("connect");
        assert_eq!(
            one.list_keys("/spread", None).await.expect("list"),
            keys,
            "listed through a client of {addr}"
        );
        assert_eq!(
            one.list_keys("/", None).await.expect("list /"),
            everything,
            "/ listed through a client of {addr}"
        );
        let got = one.get("/spread/k07").await.expect("get").expect("present");
        assert_eq!(&got.blob[..], b"/spread/k07");
    }
    // A watch sees the changes of every shard, each once.
    let watcher = Client::connect(&cluster.addrs()[1..2], None, Policy::default())
        .await
        .expect("connect");
    let mut events = watcher.watch("/spread").await.expect("watch");
    let mut all_events = watcher.watch("/").await.expect("watch /");
    for key in everything.iter() {
        c.put(key, Bytes::from_static(b"again")).await.expect("put");
    }
    for (events, want) in [(&mut events, &keys), (&mut all_events, &everything)] {
        let mut seen = Vec::new();
        while seen.len() < want.len() {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {} changes seen", seen.len(), want.len()))
                .expect("the watch goes on");
            seen.push(event.key);
        }
        seen.sort();
        assert_eq!(&seen, want);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), events.recv())
                .await
                .is_err(),
            "a change was passed on twice"
        );
    }
    // A pool made after the watch began is watched too, and listed under `/`.
    c.create_pool(PoolSpec::new(
        "/later/pool".to_string(),
        StoreKind::Persistent,
        1,
    ))
    .await
    .expect("create a pool");
    c.put("/later/pool/x", Bytes::from_static(b"x"))
        .await
        .expect("put");
    let event = tokio::time::timeout(Duration::from_secs(10), all_events.recv())
        .await
        .expect("the new pool's change in time")
        .expect("the watch goes on");
    assert_eq!(event.key, "/later/pool/x");
    let listed = watcher.list_keys("/", None).await.expect("list /");
    assert!(listed.contains(&"/later/pool/x".to_string()), "{listed:?}");
    // A parent of one pool lists that pool; a parent of none is refused as before.
    assert_eq!(
        watcher
            .list_keys("/later", None)
            .await
            .expect("list /later"),
        vec!["/later/pool/x".to_string()]
    );
    let e = watcher
        .list_keys("/nowhere", None)
        .await
        .expect_err("no pool there");
    assert_eq!(code(&e), Some(ErrorCode::NoPoolForKey), "{e}");
}

/// A watch outlives the node it is on: killed, the watch resumes at another replica
/// after the last version it passed on, and that node sends what it missed first. While
/// a writer keeps writing, every node is killed and restarted in turn, so whichever holds
/// the watch dies under it: every acknowledged put to the persistent pool reaches the
/// watcher (a put the client retried at most twice), in version order, and the volatile
/// pool's keys end at their last values. The same holds for a watch of `/`, which spans
/// both pools. Without the resume the stream ends at the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_goes_on_at_another_replica_when_its_node_dies_and_misses_nothing() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let watcher = Client::connect(&cluster.addrs(), None, Policy::Fixed)
        .await
        .expect("connect");
    let mut persistent = watcher.watch("/demo/w").await.expect("watch /demo/w");
    let mut volatile = watcher.watch("/cache/w").await.expect("watch /cache/w");
    let mut everything = watcher.watch("/").await.expect("watch /");

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (c, writing) = (c.clone(), Arc::clone(&writing));
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while writing.load(Ordering::Relaxed) || i < 50 {
                let key = format!("/demo/w/{i:05}");
                // A put the client gave up on may still have been applied: the watch may
                // see it, and the retry, once each.
                while let Err(e) = c.put(&key, Bytes::from(key.clone())).await {
                    eprintln!("put {key}: {e}; again");
                }
                let cached = format!("/cache/w/{}", i % 8);
                while c.put(&cached, Bytes::from(i.to_string())).await.is_err() {}
                acked.push(key);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acked
        })
    };
    let members = |n: usize| {
        let c = c.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !matches!(c.members().await, Ok((_, m)) if m.len() == n) {
                assert!(Instant::now() < deadline, "no view of {n} members");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for node in [0, 1, 2] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.kill9(node);
        members(2).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.start(node);
        members(3).await;
    }
    writing.store(false, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(acked.len() >= 50, "{} puts", acked.len());

    let mut latest = std::collections::HashMap::new();
    for k in 0..8 {
        let key = format!("/cache/w/{k}");
        let o = c.get(&key).await.expect("get").expect("written");
        latest.insert(key, o.blob);
    }
    let none = std::collections::HashMap::new();
    follow_until(&mut persistent, "/demo/w", &acked, &none).await;
    follow_until(&mut volatile, "/cache/w", &[], &latest).await;
    follow_until(&mut everything, "/", &acked, &latest).await;
}

/// Reads a watch's events until every key of `acked` (persistent) was seen and every key
/// of `latest` (volatile) was last seen at its value there, checking on the way that
/// each pool's versions rise along the stream (one shard per pool here), that a
/// persistent value is its key, and that no acknowledged put came more than twice (put
/// and retry).
async fn follow_until(
    events: &mut tokio::sync::mpsc::Receiver<squall_adapters::wire::WatchEvent>,
    watched: &str,
    acked: &[String],
    latest: &std::collections::HashMap<String, Bytes>,
) {
    let mut seen = std::collections::BTreeMap::new();
    let mut now = std::collections::HashMap::new();
    let mut last_of_pool = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !acked.iter().all(|k| seen.contains_key(k))
        || latest.iter().any(|(k, v)| now.get(k) != Some(v))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = acked.iter().filter(|k| !seen.contains_key(*k)).collect();
                panic!(
                    "watch of {watched}: {} acknowledged puts never seen: {missing:?}; \
                     volatile keys end at {now:?}, not {latest:?}",
                    missing.len()
                )
            })
            .unwrap_or_else(|| panic!("the watch of {watched} ended at a kill"));
        let pool = event.key.split('/').nth(1).unwrap_or_default().to_string();
        let before = last_of_pool.insert(pool, event.version);
        assert!(
            before < Some(event.version),
            "watch of {watched}: {event:?} after {before:?}"
        );
        if event.key.starts_with("/demo/") {
            assert_eq!(event.blob.as_deref(), Some(event.key.as_bytes()));
            *seen.entry(event.key).or_insert(0) += 1;
        } else {
            now.insert(event.key, event.blob.expect("a value"));
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 2).collect();
    assert!(
        twice.is_empty(),
        "watch of {watched}: seen more than put and retry: {twice:?}"
    );
}

/// A watch started on a node that has had nothing delivered to the shard yet (no store)
/// starts at once and sees the first write (it was refused as "still receiving" once,
/// and the Python classify example's watch failed on a fresh one-node cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_fresh_cluster_sees_the_first_write() {
    let mut cluster = Cluster::new(1, &[]);
    cluster.start_all();
    let c = cluster.client(None, 1).await;
    let mut events = c.watch("/demo").await.expect("watch before any write");
    c.put("/demo/first", Bytes::from_static(b"1"))
        .await
        .expect("put");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open");
    assert_eq!(
        (event.key.as_str(), event.blob.as_deref()),
        ("/demo/first", Some(&b"1"[..]))
    );
}

/// A watch whose consumer does not keep up is ended (by its client when its queue is full,
/// or by its node) and resumed where the consumer stopped: the node sends the versions it
/// missed (older ones read back from its log, past a tiny history cache), then goes on.
/// Every version arrives once, in order; and the writes on the same client never wait for
/// the watch's consumer (they did: the connection's reader blocked on the full queue, and
/// this test hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_catches_up_with_every_version() {
    falls_behind("/demo/slow", 0).await;
}

/// The same on a volatile pool, which keeps only each key's latest value: its shards keep
/// their recent changes (`limits.watch_replay_bytes`) for watches that resume. (Without
/// them, 0, the resumed watch got each key's latest only, and this test fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_a_volatile_pool_that_falls_behind_catches_up_with_every_version() {
    falls_behind("/cache/slow", 64 << 20).await;
}

/// A watch of `watched` whose consumer does not read while 16 keys there get 250
/// versions of 8 KiB each; then every version arrives once, in order.
async fn falls_behind(watched: &str, watch_replay_bytes: usize) {
    let mut cluster = Cluster::new(3, &[]);
    cluster.with_http();
    for cfg in &mut cluster.configs {
        cfg.limits.watch_queue_max = 8;
        cfg.limits.history_cache_bytes = 4 << 10;
        cfg.limits.watch_replay_bytes = watch_replay_bytes;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let mut events = c.watch(watched).await.expect("watch");
    // Nobody reads while 16 keys get 250 versions of 8 KiB each: 32 MiB, more than the
    // client's queues (2,048 events), the sockets and the node's queue hold.
    let mut written = Vec::new();
    for round in 0..250 {
        for k in 0..16 {
            let key = format!("{watched}/{k:02}");
            let mut value = format!("{key}@{round}").into_bytes();
            value.resize(8 << 10, b'.');
            let value = Bytes::from(value);
            let w = c.put(&key, value.clone()).await.expect("put");
            written.push((w.version, key, value));
        }
    }
    for (i, (version, key, value)) in written.iter().enumerate() {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {} versions seen", written.len()))
            .expect("the watch goes on");
        assert_eq!(
            (&event.version, &event.key, event.blob.as_ref()),
            (version, key, Some(value)),
            "change {i}"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "a change was passed on twice"
    );
    // The watch was ended and resumed (so what arrived came partly from catch-ups).
    let requests = |op: &str| -> f64 {
        (0..3)
            .map(|node| {
                let (status, body) = http(cluster.http_addr(node), "GET", "/metrics", b"");
                assert_eq!(status, 200);
                let name = format!("squall_client_requests_total{{op=\"{op}\"}} ");
                String::from_utf8_lossy(&body)
                    .lines()
                    .find_map(|l| l.strip_prefix(name.as_str())?.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let (watches, unwatches) = (requests("watch"), requests("unwatch"));
    let dropped = cluster
        .logs()
        .matches("a watcher fell behind and was dropped")
        .count();
    assert!(
        watches >= 2.0 && unwatches + dropped as f64 >= 1.0,
        "the slow watch was never ended and resumed: {watches} watch requests, {unwatches} \
         ended by the client, {dropped} by a node"
    );
}

/// A 3-node cluster that wrote `before`, then `after`, at `/demo/k`, and whose nodes
/// were then all killed.
async fn written_then_stopped() -> (Cluster, Written, Written) {
    let mut cluster = Cluster::new(3, &[]);
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let first = c
        .put("/demo/k", Bytes::from_static(b"before"))
        .await
        .expect("put");
    let second = c
        .put("/demo/k", Bytes::from_static(b"after"))
        .await
        .expect("put");
    drop(c);
    for node in 0..3 {
        cluster.kill9(node);
    }
    (cluster, first, second)
}

/// `/demo/k` reads `after` at its version, and `before` at the time it was written.
async fn reads_before_and_after(c: &Client, first: &Written, second: &Written) {
    let latest = c.get("/demo/k").await.expect("get").expect("survived");
    assert_eq!(
        (&latest.blob[..], latest.version),
        (&b"after"[..], second.version)
    );
    let past = c
        .get_at("/demo/k", At::Time(first.timestamp_us))
        .await
        .expect("by time")
        .expect("the old version");
    assert_eq!(&past.blob[..], b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_objects_and_time_travel_survive_a_restart_of_every_node() {
    let (mut cluster, first, second) = written_then_stopped().await;
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    reads_before_and_after(&c, &first, &second).await;
    // And the cluster takes writes again.
    let third = c
        .put("/demo/k", Bytes::from_static(b"again"))
        .await
        .expect("put");
    assert!(third.version > second.version);
}

/// A total restart does not wait for its preferred leader: every node is killed and node
/// 0, the restart leader, stays down; node 1 alone logs that it waits for a majority, then
/// nodes 1 and 2 restart the cluster under backup leader 1 and serve what was written, by
/// version and by time, and take writes.
/// Node 0 then comes back and joins the running cluster. With a single restart leader the
/// two waited for node 0 for as long as it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_restart_goes_on_without_its_restart_leader() {
    let (mut cluster, first, second) = written_then_stopped().await;
    // Alone, node 1 says what it waits for.
    cluster.start(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !strip_ansi(&cluster.node_log(1)).lines().any(|l| {
        l.contains("the total restart waits")
            && l.contains("1 of view")
            && l.contains("a majority is needed")
    }) {
        assert!(
            Instant::now() < deadline,
            "node 1 never said why it waits:\n{}",
            cluster.node_log(1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start(2);
    let c = cluster.client(None, 2).await;
    reads_before_and_after(&c, &first, &second).await;
    let third = c
        .put("/demo/k", Bytes::from_static(b"without node 0"))
        .await
        .expect("put");
    assert!(third.version > second.version);
    let led = |node: u32| {
        strip_ansi(&cluster.node_log(node))
            .lines()
            .any(|l| l.contains("restarting the group") && l.contains("leader=n1."))
    };
    assert!(
        led(1) && led(2),
        "node 1 did not lead the restart:\n{}",
        cluster.logs()
    );
    drop(c);

    cluster.start(0);
    let c = cluster.client(None, 3).await;
    let (_, members) = c.members().await.expect("members");
    assert!(members.iter().any(|m| m.node == 0), "{members:?}");
    let latest = c.get("/demo/k").await.expect("get").expect("kept");
    assert_eq!(
        (&latest.blob[..], latest.version),
        (&b"without node 0"[..], third.version)
    );
}

/// Older versions beyond the in-memory history cache are read back from the log: by
/// version, by time and `stable`, before and after a restart of every node; memory keeps
/// only `history_cache_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_beyond_the_history_cache_come_from_the_log() {
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        // Room for a few 1 KiB versions; anything older is only in the log.
        cfg.limits.history_cache_bytes = 8 << 10;
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let value = |i: usize| Bytes::from(format!("{i:04}").repeat(256));
    let mut written = Vec::new();
    for i in 0..40 {
        written.push(c.put("/demo/h", value(i)).await.expect("put"));
    }
    for round in ["before", "after"] {
        for i in [0, 1, 17, 38] {
            let by_version = c
                .get_at("/demo/h", At::Version(written[i].version))
                .await
                .expect("by version")
                .expect("kept");
            assert_eq!(by_version.blob, value(i), "{round} a restart: version {i}");
            assert_eq!(by_version.version, written[i].version);
            let by_time = c
                .get_at("/demo/h", At::Time(written[i].timestamp_us))
                .await
                .expect("by time")
                .expect("kept");
            assert_eq!(by_time.blob, value(i), "{round} a restart: time {i}");
        }
        if round == "before" {
            // A client reads its own durable writes as stable, wherever it reads.
            for _ in 0..6 {
                let stable = c
                    .get_at("/demo/h", At::Stable)
                    .await
                    .expect("stable")
                    .expect("durable");
                assert_eq!(stable.blob, value(39));
            }
            for node in 0..3 {
                cluster.kill9(node);
            }
            cluster.start_all();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_put_is_applied_once() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    let pool = c.find_pool("/demo/once").await.expect("its pool");
    assert_ne!(
        pool.generation, 0,
        "the cluster gives every pool a generation"
    );
    let put = Op::Put {
        id: MessageId {
            client: 4242,
            seq: 1,
        },
        hlc_us: now_us,
        condition: Condition::Always,
        pool_generation: pool.generation,
        key: "/demo/once".into(),
        blob: Bytes::from_static(b"payload"),
    };
    let bytes = op::encode(&put);
    // Send the put on a raw connection and cut it before the reply.
    let addr = &cluster.addrs()[0];
    let mut raw = std::net::TcpStream::connect(addr).expect("connect");
    let out = hello_and_write(1, bytes.clone());
    raw.write_all(&out.to_vec()).expect("write");
    raw.shutdown(std::net::Shutdown::Both).expect("cut");
    drop(raw);
    // Wait until the first attempt is applied, then retry the same request.
    let deadline = Instant::now() + Duration::from_secs(10);
    let applied = loop {
        if let Some(o) = c.get("/demo/once").await.expect("get") {
            break o;
        }
        assert!(Instant::now() < deadline, "the cut put was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&out).await.expect("the retry");
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        raw.read_buf(&mut buf).await.expect("read");
        while let Some(body) = wire::split_frame(&mut buf, 1 << 20).expect("frame") {
            frames.push(wire::decode_frame(body).expect("decodes"));
        }
    }
    let Frame::Response {
        response: Response::Written { version, .. },
        ..
    } = &frames[1]
    else {
        panic!("unexpected answer {:?}", frames[1]);
    };
    assert_eq!(*version, applied.version, "the retry got the first answer");
    // Exactly one version exists: nothing before it.
    let before = c
        .get_at("/demo/once", At::Version(Version(version.0 - 1)))
        .await
        .expect("by version");
    assert_eq!(before, None, "the retry was applied a second time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_garbage_are_refused_and_the_node_stays_up() {
    let mut cluster = Cluster::new(1, &[("admin-secret", Role::Admin), ("reader", Role::Read)]);
    cluster.start_all();
    let admin = cluster.client(Some("admin-secret"), 1).await;
    admin
        .put("/demo/k", Bytes::from_static(b"v"))
        .await
        .expect("admin writes");
    let wrong = Client::connect(&cluster.addrs(), Some("wrong".into()), Policy::default())
        .await
        .expect_err("a wrong token");
    assert!(matches!(wrong, ClientError::Refused { .. }), "{wrong}");
    let none = Client::connect(&cluster.addrs(), None, Policy::default())
        .await
        .expect_err("no token");
    assert!(matches!(none, ClientError::Refused { .. }), "{none}");
    let reader = Client::connect(&cluster.addrs(), Some("reader".into()), Policy::default())
        .await
        .expect("a read token");
    assert_eq!(
        reader.get("/demo/k").await.expect("reads").map(|o| o.blob),
        Some(Bytes::from_static(b"v"))
    );
    let denied = reader
        .put("/demo/k", Bytes::from_static(b"w"))
        .await
        .expect_err("read only");
    assert_eq!(code(&denied), Some(ErrorCode::Forbidden));
    let denied = reader
        .create_pool(PoolSpec::new("/p", StoreKind::Volatile, 2))
        .await
        .expect_err("not admin");
    assert_eq!(code(&denied), Some(ErrorCode::Forbidden));
    // Garbage, an oversized frame, a bad magic: each connection is dropped, the node lives.
    let addr = &cluster.addrs()[0];
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0x7f, 1, 2, 3],
        wire::frame_to_vec(&Frame::Hello {
            magic: 7,
            version: 1,
            token: None,
        }),
    ] {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(&garbage);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert_eq!(
        admin
            .get("/demo/k")
            .await
            .expect("still serving")
            .map(|o| o.blob),
        Some(Bytes::from_static(b"v"))
    );
    // The write that was refused changed nothing.
    assert_eq!(reader.get_size("/demo/k").await.expect("size"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_stay_linearizable_while_a_node_is_killed_and_restarted() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.start_all();
    let seed = cluster.client(None, 3).await;
    drop(seed);
    let clock = Instant::now();
    let stamp = move || clock.elapsed().as_micros() as u64;
    let history = Arc::new(std::sync::Mutex::new(lin::History::new()));
    let next_value = Arc::new(AtomicU64::new(1));
    // Persistent and volatile keys: a volatile put completes at delivery, so a read
    // elsewhere right after it is where a stale replica would show.
    let keys: Vec<String> = ["/demo/lin0", "/demo/lin1", "/cache/lin0", "/cache/lin1"]
        .map(String::from)
        .to_vec();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client_no in 0..5u32 {
        let addrs = cluster.addrs();
        let (history, next_value, keys, stop) = (
            Arc::clone(&history),
            Arc::clone(&next_value),
            keys.clone(),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(&addrs, None, Policy::default())
                .await
                .expect("connect");
            let mut i = client_no as usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = &keys[i % keys.len()];
                let start = stamp();
                match i % 3 {
                    0 => {
                        let value = next_value.fetch_add(1, Ordering::Relaxed);
                        let op = lin::Op::Put {
                            key: key.clone(),
                            value,
                        };
                        match c
                            .put(key, Bytes::copy_from_slice(&value.to_le_bytes()))
                            .await
                        {
                            Ok(_) => history.lock().expect("lock").push(
                                client_no,
                                start,
                                Some(stamp()),
                                op,
                                lin::Output::Ok,
                            ),
                            Err(_) => history.lock().expect("lock").push(
                                client_no,
                                start,
                                None,
                                op,
                                lin::Output::Unknown,
                            ),
                        }
                    }
                    1 => {
                        if let Ok(o) = c.get(key).await {
                            let value = o.map(|o| {
                                u64::from_le_bytes(o.blob[..8].try_into().expect("8 bytes"))
                            });
                            history.lock().expect("lock").push(
                                client_no,
                                start,
                                Some(stamp()),
                                lin::Op::Get { key: key.clone() },
                                lin::Output::Value(value),
                            );
                        }
                    }
                    _ => {
                        // One shard per multi_get: both keys of one pool.
                        let first = 2 * ((i / 3) % 2);
                        let pair = keys[first..first + 2].to_vec();
                        if let Ok(objects) = c.multi_get(&pair).await {
                            let values = objects
                                .into_iter()
                                .map(|o| {
                                    o.map(|o| {
                                        u64::from_le_bytes(o.blob[..8].try_into().expect("8 bytes"))
                                    })
                                })
                                .collect();
                            history.lock().expect("lock").push(
                                client_no,
                                start,
                                Some(stamp()),
                                lin::Op::MultiGet { keys: pair },
                                lin::Output::Values(values),
                            );
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = incarnations(&cluster.client(None, 3).await).await;
    cluster.kill9(2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.start(2);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a client task");
    }
    // The killed node came back as a new incarnation and rejoined.
    let c = cluster.client(None, 3).await;
    let (_, members) = c.members().await.expect("members");
    assert!(
        members
            .iter()
            .any(|m| m.node == 2 && m.incarnation == before[&2] + 1),
        "node 2 did not rejoin: {members:?}"
    );
    let history = history.lock().expect("lock").clone();
    let completed = history
        .records()
        .iter()
        .filter(|r| r.returned_us.is_some())
        .count();
    println!(
        "{} operations recorded ({completed} completed)",
        history.len()
    );
    assert!(
        completed > 100,
        "too few operations to judge: {completed}; {}",
        cluster.logs()
    );
    if let Err(v) = lin::check(&history) {
        panic!("not linearizable: {v}; {}", cluster.logs());
    }
}

#[test]
fn the_linearizability_checker_rejects_a_stale_read() {
    // The same checker the cluster test uses, on a hand-made bad history.
    let mut h = lin::History::new();
    h.push(
        0,
        0,
        Some(10),
        lin::Op::Put {
            key: "k".into(),
            value: 1,
        },
        lin::Output::Ok,
    );
    h.push(
        1,
        20,
        Some(30),
        lin::Op::Get { key: "k".into() },
        lin::Output::Value(None),
    );
    assert!(lin::check(&h).is_err());
}

/// The nodes' count of linearizable reads cleared `by` ("lease" or "probe"), summed.
fn reads_cleared_by(cluster: &Cluster, by: &str) -> u64 {
    let series = format!("squall_linearizable_reads_total{{cleared_by=\"{by}\"}} ");
    (0..3)
        .map(|n| {
            let (status, body) = http(cluster.http_addr(n), "GET", "/metrics", b"");
            assert_eq!(status, 200);
            String::from_utf8_lossy(&body)
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// With read leases (the default), gets on a settled cluster are served under a lease,
/// without a probe round, and read what was written; with `read_lease_ms = 0` every
/// get waits for a probe round. Both through real node processes and their `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_are_served_under_read_leases_unless_turned_off() {
    for lease_ms in [300, 0] {
        let mut cluster = Cluster::new(3, &[]);
        cluster.with_http();
        for cfg in &mut cluster.configs {
            cfg.timing.read_lease_ms = lease_ms;
        }
        cluster.start_all();
        let c = cluster.client(None, 3).await;
        for i in 0..200u32 {
            let value = Bytes::from(i.to_le_bytes().to_vec());
            c.put("/cache/leased", value.clone()).await.expect("put");
            let got = c.get("/cache/leased").await.expect("get").expect("present");
            assert_eq!(got.blob, value, "get {i} reads the put before it");
        }
        let (leased, probed) = (
            reads_cleared_by(&cluster, "lease"),
            reads_cleared_by(&cluster, "probe"),
        );
        if lease_ms > 0 {
            assert!(
                leased > probed,
                "{leased} gets under a lease, {probed} after a probe round"
            );
        } else {
            assert_eq!(leased, 0, "no lease when turned off");
            assert!(probed >= 200, "{probed} probe rounds for 200 gets");
        }
    }
}

/// Each member's incarnation in the current view, by node.
async fn incarnations(c: &Client) -> std::collections::BTreeMap<u32, u32> {
    let (_, members) = c.members().await.expect("members");
    members.iter().map(|m| (m.node, m.incarnation)).collect()
}

/// A handshake and one write request of `op`, as a raw connection sends them.
fn hello_and_write(request_id: u64, op: Bytes) -> wire::FrameBuf {
    let mut out = wire::FrameBuf::new();
    wire::put_frame(
        &mut out,
        &Frame::Hello {
            magic: wire::MAGIC,
            version: wire::PROTOCOL_VERSION,
            token: None,
        },
    );
    wire::put_frame(
        &mut out,
        &Frame::Request {
            request_id,
            request: Request::Write {
                forget: false,
                op: op.into(),
            },
        },
    );
    out
}

/// Sends one operation on a raw connection to `addr` and returns its answer (a client
/// that stops after one step of something).
async fn raw_write(addr: &str, op: &Op) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let out = hello_and_write(7, op::encode(op));
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw.write_all(&out.to_vec()).await.expect("write");
    let mut buf = BytesMut::new();
    loop {
        while let Some(body) = wire::split_frame(&mut buf, 1 << 20).expect("frame") {
            if let Frame::Response {
                request_id: 7,
                response,
            } = wire::decode_frame(body).expect("decodes")
            {
                return response;
            }
        }
        let n = raw.read_buf(&mut buf).await.expect("read");
        assert!(n > 0, "the node closed the connection");
    }
}

/// Removing a pool takes its objects with it: a pool made again at the path starts
/// empty, in every shard it spreads over, and stays so after a restart (its objects came
/// back before: the store kept them and the new pool found them). While a removal has
/// not finished (its remover stopped after the first step), no pool can be made there
/// and no key finds the old one; removing it again finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pool_takes_its_objects_and_a_pool_made_again_starts_empty() {
    let (mut cluster, spread) = spread_cluster();
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    let persistent = PoolSpec::new("/gone".to_string(), StoreKind::Persistent, 1);
    let volatile = PoolSpec::new("/spread".to_string(), StoreKind::Volatile, spread);
    for spec in [&persistent, &volatile] {
        c.create_pool(spec.clone()).await.expect("create");
    }
    let mut old = Vec::new();
    for i in 0..10 {
        let key = format!("/gone/k{i}");
        c.put(&key, Bytes::from_static(b"first"))
            .await
            .expect("put");
        old.push((
            key.clone(),
            c.put(&key, Bytes::from_static(b"second"))
                .await
                .expect("put"),
        ));
        c.put(&format!("/spread/k{i:02}"), Bytes::from_static(b"old"))
            .await
            .expect("put");
    }
    let then_us = old[9].1.timestamp_us;
    c.put("/demo/stays", Bytes::from_static(b"kept"))
        .await
        .expect("put");
    // A client that learnt the pools before the removal, and keeps its layout.
    let stale = cluster.client(None, 3).await;
    assert!(stale.get("/gone/k0").await.expect("get").is_some());
    let stale_batch = cluster.client(None, 3).await;
    assert!(stale_batch.get("/gone/k0").await.expect("get").is_some());
    let generation_before = c.find_pool("/gone/k").await.expect("/gone").generation;

    for pool in ["/gone", "/spread"] {
        c.remove_pool(pool).await.expect("remove");
    }
    for spec in [&persistent, &volatile] {
        c.create_pool(spec.clone()).await.expect("create again");
    }
    let generation_now = c.find_pool("/gone/k").await.expect("/gone").generation;
    assert!(
        generation_now > generation_before,
        "a pool made again outranks the one before: {generation_now} after {generation_before}"
    );
    // A write made for the removed pool is refused, not written to the new one.
    let late = raw_write(
        &cluster.addrs()[0],
        &Op::Put {
            id: MessageId {
                client: 777,
                seq: 10,
            },
            hlc_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_micros() as u64,
            condition: Condition::Always,
            pool_generation: generation_before,
            key: "/gone/late".into(),
            blob: Bytes::from_static(b"late"),
        },
    )
    .await;
    assert!(
        matches!(
            late,
            Response::Error {
                code: ErrorCode::PoolChanged,
                ..
            }
        ),
        "{late:?}"
    );
    // Generations are the cluster's to give.
    let chosen = raw_write(
        &cluster.addrs()[1],
        &Op::CreatePool {
            id: MessageId {
                client: 777,
                seq: 11,
            },
            spec: PoolSpec {
                generation: 99,
                ..PoolSpec::new("/chosen".to_string(), StoreKind::Volatile, spread)
            },
        },
    )
    .await;
    assert!(
        matches!(
            chosen,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{chosen:?}"
    );
    let empty_everywhere = |c: Client,
                            old: Vec<(String, squall_adapters::client::Written)>,
                            gone_now: Vec<String>| async move {
        assert_eq!(c.list_keys("/gone", None).await.expect("list"), gone_now);
        assert_eq!(
            c.list_keys("/spread", None).await.expect("list"),
            Vec::<String>::new()
        );
        assert_eq!(
            c.list_keys("/gone", Some(then_us))
                .await
                .expect("list then"),
            Vec::<String>::new()
        );
        for (key, written) in &old {
            assert_eq!(c.get(key).await.expect("get"), None, "{key}");
            assert_eq!(
                c.get_at(key, At::Version(written.version))
                    .await
                    .expect("by version"),
                None,
                "{key} by version"
            );
            assert_eq!(
                c.get_at(key, At::Time(then_us)).await.expect("by time"),
                None,
                "{key} by time"
            );
        }
        for i in 0..10 {
            let key = format!("/spread/k{i:02}");
            assert_eq!(c.get(&key).await.expect("get"), None, "{key}");
        }
        let stays = c
            .get("/demo/stays")
            .await
            .expect("get")
            .expect("another pool's key");
        assert_eq!(&stays.blob[..], b"kept");
    };
    empty_everywhere(c.clone(), old.clone(), vec![]).await;
    // The stale client's first try names the old generation; it learns the new one and
    // writes to the new pool.
    stale
        .put("/gone/new", Bytes::from_static(b"new"))
        .await
        .expect("a put by a client that learnt the pool before it was made again");
    // Likewise a batch: its first write names the new generation, the others none (the
    // client names the old one): sent again from the first refused on.
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    let batch: Vec<Op> = (0..3u8)
        .map(|i| Op::Put {
            id: MessageId {
                client: 888,
                seq: u64::from(i),
            },
            hlc_us: now_us,
            condition: Condition::Always,
            pool_generation: if i == 0 { generation_now } else { 0 },
            key: "/gone/batch".into(),
            blob: Bytes::from(vec![b'0' + i]),
        })
        .collect();
    let answers = stale_batch
        .write_many(&batch, "/gone/batch", false)
        .await
        .expect("the batch");
    assert_eq!(answers.len(), 3);
    let versions: Vec<Version> = answers
        .into_iter()
        .map(|a| a.expect("each write of the batch").version)
        .collect();
    assert!(versions.is_sorted(), "applied in order: {versions:?}");
    let last = c.get("/gone/batch").await.expect("get").expect("written");
    assert_eq!(&last.blob[..], b"2");

    // A removal whose remover stopped after taking the pool out of the table.
    let p2 = PoolSpec::new("/half".to_string(), StoreKind::Persistent, 1);
    c.create_pool(p2.clone()).await.expect("create /half");
    c.put("/half/k", Bytes::from_static(b"old"))
        .await
        .expect("put");
    let answer = raw_write(
        &cluster.addrs()[1],
        &Op::RemovePool {
            id: MessageId {
                client: 777,
                seq: 1,
            },
            path: "/half".into(),
        },
    )
    .await;
    let half_generation = match &answer {
        Response::Pools(p) if p.len() == 1 => p[0].generation,
        other => panic!("{other:?}"),
    };
    // Drops and their end name the generation being removed: another is refused.
    for op in [
        Op::DropPool {
            id: MessageId {
                client: 777,
                seq: 3,
            },
            pool: "/half".into(),
            shard: 0,
            generation: half_generation + 1,
        },
        Op::PoolDropped {
            id: MessageId {
                client: 777,
                seq: 4,
            },
            path: "/half".into(),
            generation: half_generation + 1,
        },
    ] {
        let refused = raw_write(&cluster.addrs()[0], &op).await;
        assert!(
            matches!(
                refused,
                Response::Error {
                    code: ErrorCode::InvalidPool,
                    ..
                }
            ),
            "{op:?}: {refused:?}"
        );
    }
    let refused = c
        .create_pool(p2.clone())
        .await
        .expect_err("still being removed");
    assert_eq!(code(&refused), Some(ErrorCode::InvalidPool), "{refused}");
    assert!(refused.to_string().contains("being removed"), "{refused}");
    let e = c
        .put("/half/k", Bytes::from_static(b"x"))
        .await
        .expect_err("no pool");
    assert_eq!(code(&e), Some(ErrorCode::NoPoolForKey), "{e}");
    // A drop of a live pool's objects is refused.
    let demo = c.find_pool("/demo/x").await.expect("/demo");
    let live = raw_write(
        &cluster.addrs()[0],
        &Op::DropPool {
            id: MessageId {
                client: 777,
                seq: 2,
            },
            pool: "/demo".into(),
            shard: 0,
            generation: demo.generation,
        },
    )
    .await;
    assert!(
        matches!(
            live,
            Response::Error {
                code: ErrorCode::InvalidPool,
                ..
            }
        ),
        "{live:?}"
    );
    c.remove_pool("/half").await.expect("finish the removal");
    c.create_pool(p2).await.expect("create /half again");
    assert_eq!(c.get("/half/k").await.expect("get"), None);

    // The same after every node restarts (the drops are in the logs).
    for n in 0..3 {
        cluster.kill9(n);
    }
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    empty_everywhere(
        c.clone(),
        old,
        vec!["/gone/batch".to_string(), "/gone/new".to_string()],
    )
    .await;
    let new = c
        .get("/gone/new")
        .await
        .expect("get")
        .expect("the new pool's key");
    assert_eq!(&new.blob[..], b"new");
    assert_eq!(
        c.find_pool("/gone/k").await.expect("/gone").generation,
        generation_now,
        "a pool keeps its generation across restarts"
    );
    assert_eq!(c.get("/half/k").await.expect("get"), None);
}
