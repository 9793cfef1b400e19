//! The CUDA tiers and a cache on a real GPU. Each test skips, saying so, where detection
//! finds no GPU; on a GPU machine they run for real (`cargo test -p squall-gpu --test
//! device -- --nocapture` shows which).
#![cfg(feature = "cuda")]

use std::sync::Arc;

use bytes::Bytes;
use squall_gpu::{
    ByteSize, DeviceCache, DeviceInfo, DeviceTier, GpuAvailability, GpuCacheSpec, GpuError,
    GpuMetrics, Location, PinnedHostTier, Tier, TierKind, conformance, detect,
};

/// GPU 0, or `None` after printing why the test is skipped.
fn first_gpu(test: &str) -> Option<DeviceInfo> {
    match detect() {
        GpuAvailability::Available { devices } => {
            eprintln!("{test}: running on GPU {:?}", devices[0]);
            Some(devices[0].clone())
        }
        GpuAvailability::Unavailable { reason } => {
            eprintln!("{test}: skipped: no GPU: {reason}");
            None
        }
    }
}

fn device_cache(capacity_bytes: u64) -> DeviceCache {
    let tier = DeviceTier::open(0).expect("open GPU 0");
    let metrics = GpuMetrics::new().cache_metrics(tier.location(), "/test");
    DeviceCache::new(Arc::new(tier), capacity_bytes, metrics)
}

fn pattern(len_bytes: usize, seed: u8) -> Bytes {
    (0..len_bytes)
        .map(|index| (index as u8).wrapping_mul(13).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn device_tier_passes_the_tier_conformance_suite() {
    if first_gpu("device_tier_conformance").is_none() {
        return;
    }
    let tier = DeviceTier::open(0).expect("open GPU 0");
    assert_eq!(tier.kind(), TierKind::Device);
    assert_ne!(
        tier.stream_handle(),
        0,
        "copies run on a stream of the tier's own"
    );
    conformance::check_tier(&tier);
}

#[test]
fn pinned_host_tier_passes_the_tier_conformance_suite() {
    if first_gpu("pinned_tier_conformance").is_none() {
        return;
    }
    let tier = PinnedHostTier::open(0).expect("open GPU 0");
    assert_eq!(tier.location(), Location::PinnedHost { device: 0 });
    conformance::check_tier(&tier);
}

#[test]
fn device_blocks_free_their_memory_when_dropped() {
    let Some(gpu) = first_gpu("device_blocks_free_their_memory") else {
        return;
    };
    let tier = DeviceTier::open(0).expect("open GPU 0");
    let block_bytes = 1usize << 30;
    // Three times the device's memory, one GiB at a time: only works if drop frees.
    let rounds = 3 * gpu.total_memory_bytes.div_ceil(block_bytes as u64);
    for round in 0..rounds {
        let block = tier
            .alloc(block_bytes)
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(block.len_bytes(), block_bytes);
    }
}

#[test]
fn a_device_cache_uploads_once_per_insert_and_reads_back_the_same_bytes() {
    if first_gpu("device_cache_round_trip").is_none() {
        return;
    }
    let cache = device_cache(64 << 20);
    let bytes = pattern((8 << 20) + 5, 3);
    let view = cache.insert("/pool/a", 1, &bytes).expect("insert");
    let after_insert = cache.metrics().snapshot();
    assert_eq!(
        after_insert.host_to_device_transfers, 1,
        "exactly one transfer per insert"
    );
    assert_eq!(after_insert.host_to_device_bytes, bytes.len() as u64);

    let device_view = view.view();
    assert_eq!(device_view.location, Location::Device { ordinal: 0 });
    assert_eq!(device_view.device_ordinal(), Some(0));
    assert_eq!(device_view.len_bytes, bytes.len() as u64);
    assert_ne!(device_view.address, 0);
    assert_ne!(
        device_view.address,
        bytes.as_ptr() as u64,
        "a copy, not the host buffer"
    );
    assert_ne!(device_view.stream_handle, 0);
    assert!(view.host_bytes().is_none());

    let again = cache.get("/pool/a", 1).expect("hit");
    assert_eq!(
        again.view(),
        device_view,
        "the pointer is stable while cached"
    );
    let same_version = cache.insert("/pool/a", 1, &bytes).expect("same version");
    assert_eq!(same_version.view(), device_view);
    assert_eq!(
        cache.metrics().snapshot().host_to_device_transfers,
        1,
        "re-inserting the cached version transfers nothing"
    );

    assert_eq!(
        cache.to_host("/pool/a", 1).expect("to_host"),
        Some(bytes.clone())
    );
    let after_read = cache.metrics().snapshot();
    assert_eq!(after_read.device_to_host_transfers, 1);
    assert_eq!(after_read.device_to_host_bytes, bytes.len() as u64);
    cache.check_invariants();
}

#[test]
fn a_device_cache_evicts_and_re_uploads() {
    if first_gpu("device_cache_eviction").is_none() {
        return;
    }
    let object_bytes = 16usize << 20;
    let cache = device_cache(3 * object_bytes as u64);
    let pinned = cache.insert("a", 1, &pattern(object_bytes, 1)).expect("a");
    for (index, key) in ["b", "c", "d", "e"].into_iter().enumerate() {
        cache
            .insert(key, 1, &pattern(object_bytes, index as u8 + 2))
            .expect("insert");
        assert!(cache.stats().used_bytes <= cache.stats().capacity_bytes);
    }
    assert_eq!(
        cache.cached_version("a"),
        Some(1),
        "the pinned object stayed"
    );
    assert_eq!(pinned.to_host().expect("to_host"), pattern(object_bytes, 1));
    let snapshot = cache.metrics().snapshot();
    assert_eq!(snapshot.evictions, 2);
    assert_eq!(snapshot.host_to_device_transfers, 5);
    let too_large = cache.insert("big", 1, &pattern(4 * object_bytes, 0));
    assert!(
        matches!(too_large, Err(GpuError::TooLarge { .. })),
        "{too_large:?}"
    );
    cache.check_invariants();
}

#[test]
fn a_gpu_cache_spec_opens_on_the_gpu_and_refuses_more_than_its_memory() {
    let Some(gpu) = first_gpu("gpu_cache_spec") else {
        return;
    };
    let availability = detect();
    let spec = GpuCacheSpec::new(0, ByteSize::from_bytes(256 << 20)).expect("spec");
    let cache = DeviceCache::open(&spec, &availability, &GpuMetrics::new(), "/pool").expect("open");
    assert_eq!(cache.location(), Location::Device { ordinal: 0 });
    let too_big =
        GpuCacheSpec::new(0, ByteSize::from_bytes(gpu.total_memory_bytes + 1)).expect("spec");
    let refused = DeviceCache::open(&too_big, &availability, &GpuMetrics::new(), "/pool");
    assert!(
        matches!(refused, Err(GpuError::CapacityExceedsDevice { .. })),
        "{refused:?}"
    );
    let missing = GpuCacheSpec::new(availability.devices().len() as u32, ByteSize::from_bytes(1))
        .expect("spec");
    let refused = DeviceCache::open(&missing, &availability, &GpuMetrics::new(), "/pool");
    assert!(
        matches!(refused, Err(GpuError::NoSuchDevice { .. })),
        "{refused:?}"
    );
}
