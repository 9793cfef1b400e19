//! The device view a UDL of a GPU-cached pool is handed, in process: the node's GPU
//! caches ([`NodeGpu`]) and UDL runtime with the real printer plugin (`report_where`).
//!
//! - Everywhere: over the host tier (no GPU), the view is the blob's own buffer (DLPack
//!   CPU, same address), no transfer is counted, and no GPU is granted.
//! - Only with a GPU (`squall_gpu::detect()` finds one; otherwise the test prints
//!   `skipped: no GPU: <reason>` and passes): the UDL gets a CUDA view (DLPack type 2,
//!   GPU 0) at the very device address the cache holds, the vertex asking
//!   `"resources": {"gpu": 1}` is granted GPU 0, and each object cost exactly one
//!   host→device transfer (the cache's metrics).

mod common;
use common::PRINTER_UUID;

use std::sync::Arc;

use bytes::Bytes;
use squall_adapters::gpu::NodeGpu;
use squall_adapters::udl::{self, Arrival, Arrived, EmitItem, UdlRuntime};
use squall_gpu::GpuAvailability;
use squall_kvs::{GpuCache, MessageId, PoolSpec, StoreKind};
use squall_platform::MemberId;
use squall_udl_host::engine::{Engine, EngineConfig, EngineMetrics};
use tokio::sync::mpsc;

const OBJECTS: usize = 4;

struct Report {
    blob_address: u64,
    device_type: u32,
    device_id: u32,
    device_address: u64,
    device_len: u64,
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
    let parts: Vec<&str> = device.split(':').collect();
    assert_eq!(parts.len(), 5, "a device view in {text:?}");
    Report {
        blob_address: hex(&field("blob")),
        device_type: parts[0].parse().expect("type"),
        device_id: parts[1].parse().expect("id"),
        device_address: hex(parts[2]),
        device_len: parts[3].parse().expect("length"),
        gpus: field("gpus"),
    }
}

/// A runtime with the printer on `/frames/in` (reporting where its input lives, asking
/// for a GPU), and its output queue.
fn printer_runtime(me: MemberId, dir: &std::path::Path) -> (UdlRuntime, mpsc::Receiver<EmitItem>) {
    let plugin = Bytes::from(std::fs::read(common::printer()).expect("the plugin library"));
    let registry = prometheus::Registry::new();
    let engine = Engine::start(
        &EngineConfig {
            workers: 2,
            queue_capacity: 16,
        },
        EngineMetrics::new(&registry).expect("metrics"),
    )
    .expect("an engine");
    let (emits_tx, emits) = mpsc::channel(64);
    let mut runtime = UdlRuntime::new(me, dir.to_path_buf(), Arc::new(engine), emits_tx);
    runtime.put_udl(PRINTER_UUID, "printer", udl::checksum(&plugin), &plugin);
    runtime
        .add_dfgs(
            format!(
                r#"{{"id": "2a9c7b1e-1111-4a2b-9c3d-0000000000d1", "desc": "", "graph": [{{
                    "pathname": "/frames/in", "user_defined_logic_list": ["{PRINTER_UUID}"],
                    "user_defined_logic_config_list": [{{"report_where": true, "resources": {{"gpu": 1}}}}],
                    "destinations": [{{"/out": "put"}}]}}]}}"#
            )
            .as_bytes(),
            0,
        )
        .expect("the DFG");
    (runtime, emits)
}

fn gpu_cached_pool() -> PoolSpec {
    let mut pool = PoolSpec::new("/frames", StoreKind::Volatile, 1);
    pool.gpu_cache = Some(GpuCache {
        device: 0,
        capacity_bytes: 64 << 20,
    });
    pool
}

/// Caches and dispatches `OBJECTS` objects as the service does on arrival; per object:
/// the blob's address, the cached copy's address and the printer's report.
fn run_objects(gpu: &NodeGpu) -> Vec<(u64, u64, Report)> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let me = MemberId::new(0, 1);
    let (mut runtime, mut emits) = printer_runtime(me, dir.path());
    let pool = gpu_cached_pool();
    let mut seen = Vec::new();
    for i in 0..OBJECTS {
        let key = format!("/frames/in/f{i}");
        let version = 100 + i as u64;
        let blob = Bytes::from(vec![i as u8; (64 << 10) + i]);
        gpu.on_put(&pool, &key, version, &blob);
        let device = gpu.view(&pool, &key, version).expect("cached on arrival");
        let cached_address = device.view().address;
        runtime.dispatch(&Arrived {
            subgroup: 1,
            shard: 0,
            key: &key,
            version,
            timestamp_us: 1,
            previous_version: None,
            previous_version_by_key: None,
            id: MessageId {
                client: 9,
                seq: i as u64,
            },
            blob: &blob,
            sender: 0,
            arrival: Arrival::Ordered,
            assignee: Some(me),
            holders: None,
            device: Some(device),
            pool_gpu: gpu.device_of(&pool),
        });
        let out = loop {
            match emits.blocking_recv().expect("an output") {
                EmitItem::Output(out) => break out,
                EmitItem::Done(_) => {}
            }
        };
        assert_eq!(out.key, format!("/out/f{i}"));
        let report = parse_report(&String::from_utf8_lossy(&out.value));
        assert_eq!(report.device_len, blob.len() as u64);
        seen.push((blob.as_ptr() as u64, cached_address, report));
    }
    seen
}

/// Every invocation lets go of its pin once its handler returns (just after its output).
fn assert_no_pin_left(gpu: &NodeGpu) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gpu.status().caches[0].pinned_entries != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a pin outlived its invocation: {:?}",
            gpu.status()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn over_the_host_tier_the_view_is_the_blob_itself() {
    let gpu = NodeGpu::unregistered(GpuAvailability::Unavailable {
        reason: "this test runs the host tier".to_string(),
    });
    for (blob_address, cached_address, report) in run_objects(&gpu) {
        assert_eq!(cached_address, blob_address, "the cache shares the blob");
        assert_eq!((report.device_type, report.device_id), (1, 0), "DLPack CPU");
        assert_eq!(report.device_address, report.blob_address, "zero copy");
        assert_eq!(report.gpus, "", "no GPU to grant");
    }
    let status = gpu.status();
    let cache = &status.caches[0];
    assert_eq!(cache.location, "host");
    assert_eq!(cache.entries, OBJECTS as u64);
    assert_eq!(cache.host_to_device_transfers, 0);
    assert_no_pin_left(&gpu);
}

#[test]
fn on_a_gpu_the_udl_gets_the_cached_device_pointer_and_one_transfer_per_object() {
    let availability = squall_gpu::detect();
    if let GpuAvailability::Unavailable { reason } = &availability {
        eprintln!("skipped: no GPU: {reason}");
        return;
    }
    eprintln!("running on {:?}", availability.devices());
    let registry = prometheus::Registry::new();
    let gpu = NodeGpu::new(availability, &registry).expect("metrics");
    let seen = run_objects(&gpu);
    let mut bytes = 0u64;
    for (blob_address, cached_address, report) in &seen {
        assert_eq!(
            (report.device_type, report.device_id),
            (2, 0),
            "DLPack CUDA, GPU 0"
        );
        assert_eq!(
            report.device_address, *cached_address,
            "the device address the cache holds"
        );
        assert_ne!(report.device_address, *blob_address, "a device copy");
        assert_eq!(
            report.blob_address, *blob_address,
            "the blob itself, uncopied"
        );
        assert_eq!(report.gpus, "0", "the pool's GPU granted to the vertex");
        bytes += report.device_len;
    }
    let status = gpu.status();
    let cache = &status.caches[0];
    assert_eq!(cache.location, "cuda:0");
    assert_eq!(cache.entries, OBJECTS as u64);
    assert_eq!(
        cache.host_to_device_transfers, OBJECTS as u64,
        "exactly one host→device transfer per object"
    );
    assert_eq!(cache.host_to_device_bytes, bytes);
    assert_no_pin_left(&gpu);
}
