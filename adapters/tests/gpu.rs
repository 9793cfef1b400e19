//! GPU-cached pools on real node processes: pools created with a `gpu_cache` option
//! (config, client API, CLI, REST), puts cached by every replica, gets answered from the
//! host copy, `/api/v1/node` and `/metrics` reporting the caches, a UDL of such a pool
//! handed a device view of its input, and the node saying once that it has no GPU.
//!
//! On a machine without a GPU (CI) the caches run over host memory: the view a UDL gets is
//! the very buffer of its blob (DLPack device type 1, same address) and no transfer is
//! counted. On a GPU machine the same test checks a CUDA view (type 2), the GPU granted
//! to the vertex, and exactly one host→device transfer per object and replica.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, PRINTER_UUID, SQUALL, http, printer};
use serde_json::Value;
use squall_adapters::client::Client;
use squall_adapters::config::{PoolEntry, SubgroupKind};
use squall_adapters::wire::ErrorCode;
use squall_gpu::{ByteSize, GpuAvailability, GpuCacheSpec};
use squall_kvs::{GpuCache, PoolSpec, StoreKind};

const NODES: u32 = 3;
/// The cache capacity of the pool created through the client: small enough for a
/// refused insert.
const CLIENT_POOL_CAPACITY_BYTES: u64 = 64 << 10;

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// The `gpu` section of `node`'s `/api/v1/node`.
fn gpu_status(cluster: &Cluster, node: u32) -> Value {
    let (status, body) = http(cluster.http_addr(node), "GET", "/api/v1/node", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    json(&body)["gpu"].clone()
}

fn cache_of<'a>(gpu: &'a Value, pool: &str) -> Option<&'a Value> {
    gpu["caches"]
        .as_array()
        .and_then(|caches| caches.iter().find(|c| c["pool"] == pool))
}

/// Waits until every node's cache of `pool` satisfies `check`; panics with the last
/// status otherwise.
fn every_node_eventually(
    cluster: &Cluster,
    pool: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in 0..NODES {
        loop {
            let gpu = gpu_status(cluster, node);
            if cache_of(&gpu, pool).is_some_and(&check) {
                break;
            }
            if Instant::now() > deadline {
                panic!("node {node}, {pool}: {what}; its gpu status: {gpu:#}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn eventually_get(c: &Client, key: &str) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(object)) = c.get(key).await {
            return object.blob;
        }
        assert!(Instant::now() < deadline, "{key} never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn squall_cli(cluster: &Cluster, args: &[&str]) -> String {
    let output = std::process::Command::new(SQUALL)
        .arg("--cluster")
        .arg(&cluster.addrs()[0])
        .args(args)
        .output()
        .expect("run squall");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "squall {args:?}: {text}");
    text
}

/// A report of the printer's `report_where`: (blob address, blob length, device view
/// fields, GPUs granted).
struct Report {
    blob_address: u64,
    blob_len: u64,
    device: Option<(u32, u32, u64, u64)>,
    gpus: String,
}

fn parse_report(text: &str) -> Report {
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
            .to_string()
    };
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
    let device = field("device");
    let device = (device != "none").then(|| {
        let parts: Vec<&str> = device.split(':').collect();
        (
            parts[0].parse().expect("device type"),
            parts[1].parse().expect("device id"),
            hex(parts[2]),
            parts[3].parse().expect("length"),
        )
    });
    Report {
        blob_address: hex(&field("blob")),
        blob_len: field("len").parse().expect("length"),
        device,
        gpus: text
            .split_whitespace()
            .find_map(|part| part.strip_prefix("gpus="))
            .unwrap_or("")
            .to_string(),
    }
}

fn dfg(id: &str, pathname: &str, destination: &str) -> Bytes {
    Bytes::from(format!(
        r#"[{{"id": "{id}", "desc": "where does the input live",
            "graph": [{{
                "pathname": "{pathname}",
                "user_defined_logic_list": ["{PRINTER_UUID}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_config_list": [{{"report_where": true, "resources": {{"gpu": 1}}}}],
                "destinations": [{{"{destination}": "put"}}]
            }}]}}]"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_cached_pools_cache_on_every_replica_and_hand_udls_a_view() {
    let availability = squall_gpu::detect();
    match &availability {
        GpuAvailability::Unavailable { reason } => {
            eprintln!("no GPU here ({reason}): checking the host-tier path")
        }
        GpuAvailability::Available { devices } => {
            eprintln!("GPUs here ({devices:?}): checking the device path")
        }
    }
    let plugin = std::fs::read(printer()).expect("the printer plugin");
    let mut cluster = Cluster::new(NODES, &[]);
    cluster.with_http();
    for cfg in &mut cluster.configs {
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
        cfg.pools.push(PoolEntry {
            path: "/gpu-config".into(),
            kind: SubgroupKind::Persistent,
            subgroup: None,
            shards: 0,
            affinity: None,
            gpu_cache: Some(GpuCacheSpec::new(0, ByteSize::from_bytes(1 << 20)).expect("spec")),
        });
        cfg.validate().expect("a valid config");
    }
    cluster.start_all();
    let c = cluster.client(None, NODES as usize).await;

    // ----- pools: from the config, the client API, the CLI and REST ---------------------
    let mut spec = PoolSpec::new("/gpu-client", StoreKind::Volatile, 2);
    spec.gpu_cache = Some(GpuCache {
        device: 0,
        capacity_bytes: CLIENT_POOL_CAPACITY_BYTES,
    });
    c.create_pool(spec).await.expect("create a GPU-cached pool");
    let mut trigger = PoolSpec::new("/gpu-trigger", StoreKind::Trigger, 2);
    trigger.gpu_cache = Some(GpuCache {
        device: 0,
        capacity_bytes: 1 << 20,
    });
    let refused = c.create_pool(trigger).await.expect_err("a trigger pool");
    assert_eq!(refused.code(), Some(ErrorCode::InvalidPool), "{refused}");
    squall_cli(
        &cluster,
        &[
            "pool",
            "create",
            "/gpu-cli",
            "--kind",
            "volatile",
            "--gpu-cache",
            "0:2MiB",
        ],
    );
    let (status, body) = http(
        cluster.http_addr(1),
        "POST",
        "/api/v1/pools",
        br#"{"path": "/gpu-rest", "kind": "persistent", "gpu_cache": {"device": 0, "capacity": "3MiB"}}"#,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["gpu_cache"]["capacity"], "3MiB");
    let (status, body) = http(
        cluster.http_addr(1),
        "POST",
        "/api/v1/pools",
        br#"{"path": "/gpu-zero", "kind": "volatile", "gpu_cache": {"device": 0, "capacity": 0}}"#,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let listed = squall_cli(&cluster, &["pool", "ls"]);
    for line in [
        "/gpu-config\tpersistent\tsubgroup 1\tshards 0\tgpu_cache 0:1MiB",
        "/gpu-client\tvolatile\tsubgroup 2\tshards 0\tgpu_cache 0:64KiB",
        "/gpu-cli\tvolatile\tsubgroup 2\tshards 0\tgpu_cache 0:2MiB",
        "/gpu-rest\tpersistent\tsubgroup 1\tshards 0\tgpu_cache 0:3MiB",
        "/demo\tpersistent\tsubgroup 1\tshards 0\n",
    ] {
        assert!(listed.contains(line), "{line:?} not in\n{listed}");
    }
    let (_, body) = http(cluster.http_addr(2), "GET", "/api/v1/pools", b"");
    let pools = json(&body);
    let rest = pools
        .as_array()
        .and_then(|p| p.iter().find(|p| p["path"] == "/gpu-config"))
        .expect("listed over REST");
    assert_eq!(rest["gpu_cache"]["device"], 0);
    assert_eq!(rest["gpu_cache"]["capacity"], "1MiB");

    // ----- puts are cached on every replica; gets return the same bytes ------------------
    let mut put_bytes = 0u64;
    for (pool, count) in [("/gpu-client", 5usize), ("/gpu-config", 3)] {
        for i in 0..count {
            let value = Bytes::from(vec![b'a' + i as u8; 1000 + 100 * i]);
            if pool == "/gpu-client" {
                put_bytes += value.len() as u64;
            }
            let key = format!("{pool}/k{i}");
            c.put(&key, value.clone()).await.expect("put");
            let got = c.get(&key).await.expect("get").expect("present");
            assert_eq!(got.blob, value, "{key}");
        }
    }
    // One larger than the whole cache: stored and served, not cached.
    let big = Bytes::from(vec![7u8; CLIENT_POOL_CAPACITY_BYTES as usize + 1]);
    c.put("/gpu-client/big", big.clone())
        .await
        .expect("a put the cache refuses");
    assert_eq!(
        c.get("/gpu-client/big")
            .await
            .expect("get")
            .expect("present")
            .blob,
        big
    );
    let expected_location = match &availability {
        GpuAvailability::Available { .. } => "cuda:0",
        GpuAvailability::Unavailable { .. } => "host",
    };
    every_node_eventually(
        &cluster,
        "/gpu-client",
        "5 entries of the bytes put",
        |cache| {
            cache["entries"] == 5
                && cache["used_bytes"] == put_bytes
                && cache["refused_inserts"] == 1
                && cache["capacity_bytes"] == CLIENT_POOL_CAPACITY_BYTES
                && cache["location"] == expected_location
        },
    );
    every_node_eventually(&cluster, "/gpu-config", "3 entries", |cache| {
        cache["entries"] == 3 && cache["used_bytes"] == 1000 + 1100 + 1200
    });
    let gpu = gpu_status(&cluster, 0);
    match &availability {
        GpuAvailability::Unavailable { .. } => {
            assert_eq!(gpu["availability"], "unavailable", "{gpu:#}");
            assert!(
                gpu["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{gpu:#}"
            );
            let cache = cache_of(&gpu, "/gpu-client").expect("cache");
            assert_eq!(cache["host_to_device_transfers"], 0, "host tier: zero copy");
        }
        GpuAvailability::Available { .. } => {
            assert_eq!(gpu["availability"], "available", "{gpu:#}");
            let cache = cache_of(&gpu, "/gpu-client").expect("cache");
            assert_eq!(
                cache["host_to_device_transfers"], 5,
                "one per object: {gpu:#}"
            );
            assert_eq!(cache["host_to_device_bytes"], put_bytes, "{gpu:#}");
        }
    }
    // A remove uncaches.
    c.remove("/gpu-client/k0").await.expect("remove");
    every_node_eventually(
        &cluster,
        "/gpu-client",
        "4 entries after a remove",
        |cache| cache["entries"] == 4 && cache["used_bytes"] == put_bytes - 1000,
    );
    let (_, metrics) = http(cluster.http_addr(0), "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    let series = format!(
        "squall_gpu_cache_entries{{cache=\"/gpu-client\",device=\"{expected_location}\"}} 4"
    );
    assert!(metrics.contains(&series), "{series} not in /metrics");
    assert!(
        metrics.contains(
            "squall_gpu_cache_refused_total{cache=\"/gpu-client\",reason=\"too_large\"} 1"
        ),
        "no refusal counted in /metrics"
    );

    // ----- a UDL of a GPU-cached pool gets a view of its input ---------------------------
    c.upload_udl("printer", Bytes::from(plugin))
        .await
        .expect("upload the printer");
    c.add_dfgs(dfg(
        "2a9c7b1e-1111-4a2b-9c3d-0000000000c1",
        "/gpu-client/in",
        "/demo/where/",
    ))
    .await
    .expect("a DFG on the GPU-cached pool");
    c.add_dfgs(dfg(
        "2a9c7b1e-1111-4a2b-9c3d-0000000000c2",
        "/cache/in",
        "/demo/plain/",
    ))
    .await
    .expect("a DFG on a plain pool");
    let hits_before: u64 = (0..NODES)
        .map(|node| {
            cache_of(&gpu_status(&cluster, node), "/gpu-client").expect("cache")["hits"]
                .as_u64()
                .expect("hits")
        })
        .sum();
    for i in 0..3 {
        c.put(&format!("/gpu-client/in/x{i}"), Bytes::from(vec![i; 4096]))
            .await
            .expect("an input");
        c.put(&format!("/cache/in/x{i}"), Bytes::from(vec![i; 4096]))
            .await
            .expect("a plain input");
    }
    for i in 0..3 {
        let report = eventually_get(&c, &format!("/demo/where/x{i}")).await;
        let report = parse_report(&String::from_utf8_lossy(&report));
        assert_eq!(report.blob_len, 4096);
        let (device_type, device_id, address, len) =
            report.device.expect("a view of the cached copy");
        assert_eq!(len, 4096);
        match &availability {
            GpuAvailability::Unavailable { .. } => {
                assert_eq!((device_type, device_id), (1, 0), "DLPack CPU");
                assert_eq!(address, report.blob_address, "the very buffer: zero copy");
                assert_eq!(report.gpus, "", "no GPU to grant");
            }
            GpuAvailability::Available { .. } => {
                assert_eq!((device_type, device_id), (2, 0), "DLPack CUDA, GPU 0");
                assert_ne!(address, report.blob_address, "a device pointer");
                assert_eq!(report.gpus, "0", "the pool's GPU granted");
            }
        }
        let plain = eventually_get(&c, &format!("/demo/plain/x{i}")).await;
        let plain = parse_report(&String::from_utf8_lossy(&plain));
        assert!(plain.device.is_none(), "a plain pool's input has no view");
        assert_eq!(plain.gpus, "", "nothing to grant outside GPU-cached pools");
    }
    let hits_after: u64 = (0..NODES)
        .map(|node| {
            cache_of(&gpu_status(&cluster, node), "/gpu-client").expect("cache")["hits"]
                .as_u64()
                .expect("hits")
        })
        .sum();
    assert!(hits_after >= hits_before + 3, "the views were cache hits");
    every_node_eventually(&cluster, "/gpu-client", "no pin left", |cache| {
        cache["pinned_entries"] == 0
    });

    // ----- a removed pool's cache goes ---------------------------------------------------
    c.put(
        "/gpu-cli/a",
        Bytes::from_static(b"cached, then dropped with its pool"),
    )
    .await
    .expect("a put");
    every_node_eventually(&cluster, "/gpu-cli", "1 entry", |cache| {
        cache["entries"] == 1
    });
    c.remove_pool("/gpu-cli").await.expect("remove a pool");
    c.put("/gpu-config/after", Bytes::from_static(b"x"))
        .await
        .expect("a put");
    for node in 0..NODES {
        let deadline = Instant::now() + Duration::from_secs(20);
        while cache_of(&gpu_status(&cluster, node), "/gpu-cli").is_some() {
            assert!(
                Instant::now() < deadline,
                "node {node} kept /gpu-cli's cache"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ----- no GPU: each node says so once ------------------------------------------------
    if availability.is_available() {
        return;
    }
    for node in 0..NODES {
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("n{node}.log")))
            .expect("the node's log");
        assert_eq!(
            log.matches("no GPU").count(),
            1,
            "node {node} must say once that it has no GPU:\n{log}"
        );
    }
}
