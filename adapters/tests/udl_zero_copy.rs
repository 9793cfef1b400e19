//! The put -> UDL path copies no payload byte after the socket read: the operation's
//! bytes as delivered (the very buffer a client's frame was read into, multicast as is)
//! are decoded, stored and handed to a real UDL plugin, which passes them on to `emit`,
//! and every stage sees the same memory.

mod common;
use common::PRINTER_UUID;

use std::sync::Arc;

use bytes::Bytes;
use squall_adapters::udl::{self, Arrival, Arrived, EmitItem, UdlRuntime};
use squall_kvs::op::{self, Op};
use squall_kvs::{Condition, MessageId, Object, ShardStore, StoreKind, StoreLimits};
use squall_platform::{MemberId, Version};
use squall_udl_host::engine::{Engine, EngineConfig, EngineMetrics};
use tokio::sync::mpsc;

fn within(inner: &[u8], outer: &[u8]) -> bool {
    let (start, end) = (
        outer.as_ptr() as usize,
        outer.as_ptr() as usize + outer.len(),
    );
    inner.as_ptr() as usize >= start && inner.as_ptr() as usize + inner.len() <= end
}

#[test]
fn a_delivered_blob_reaches_the_udl_and_its_output_without_a_copy() {
    let plugin = Bytes::from(std::fs::read(common::printer()).expect("the plugin library"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let me = MemberId::new(0, 1);
    let registry = prometheus::Registry::new();
    let engine = Engine::start(
        &EngineConfig {
            workers: 2,
            queue_capacity: 16,
        },
        EngineMetrics::new(&registry).expect("metrics"),
    )
    .expect("an engine");
    let (emits_tx, mut emits) = mpsc::channel(16);
    let mut runtime = UdlRuntime::new(me, dir.path().to_path_buf(), Arc::new(engine), emits_tx);
    runtime.put_udl(PRINTER_UUID, "printer", udl::checksum(&plugin), &plugin);
    runtime
        .add_dfgs(
            format!(
                r#"{{"id": "2a9c7b1e-1111-4a2b-9c3d-0000000000aa", "desc": "", "graph": [{{
                    "pathname": "/in", "user_defined_logic_list": ["{PRINTER_UUID}"],
                    "user_defined_logic_config_list": [{{"quiet": true}}],
                    "destinations": [{{"/out": "put"}}]}}]}}"#
            )
            .as_bytes(),
            0,
        )
        .expect("the DFG");

    // What a replica is handed by the platform: the client's operation bytes, as sent.
    let id = MessageId { client: 7, seq: 1 };
    let delivered = op::encode(&Op::Put {
        id,
        hlc_us: 1,
        condition: Condition::Always,
        pool_generation: 3,
        key: "/in/frame".into(),
        blob: Bytes::from(vec![42u8; 256 << 10]),
    });
    // Stage 1: decoding slices the blob out of the delivered buffer.
    let decoded = op::decode(delivered.clone()).expect("decodes");
    let Op::Put { blob, .. } = &decoded else {
        panic!("a put")
    };
    assert!(within(blob, &delivered), "decoding copied the blob");
    // Stage 2: the store keeps that slice.
    let mut store = ShardStore::new(StoreKind::Volatile, StoreLimits::default());
    let version = Version::new(1, 0);
    store.apply(version, &decoded);
    let object: Object = store.latest("/in/frame").expect("stored").clone();
    assert_eq!(
        object.blob.as_ptr(),
        blob.as_ptr(),
        "the store copied the blob"
    );
    // Stage 3 and 4: the UDL gets it and emits it on.
    runtime.dispatch(&Arrived {
        subgroup: 1,
        shard: 0,
        key: "/in/frame",
        version: version.0,
        timestamp_us: object.timestamp_us,
        previous_version: None,
        previous_version_by_key: None,
        id,
        blob: &object.blob,
        sender: 0,
        arrival: Arrival::Ordered,
        assignee: Some(me),
        holders: None,
        device: None,
        pool_gpu: None,
    });
    let out = loop {
        match emits.blocking_recv().expect("an output") {
            EmitItem::Output(out) => break out,
            EmitItem::Done(_) => {}
        }
    };
    assert_eq!(out.key, "/out/frame");
    assert_eq!(
        out.value.as_ptr(),
        object.blob.as_ptr(),
        "the UDL's input or output was copied"
    );
    assert_eq!(out.value.len(), 256 << 10);
    assert!(within(&out.value, &delivered));
    // Copies after the socket read on this path: none (pointer identity at each stage).
}
