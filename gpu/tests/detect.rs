//! Detection and the no-GPU fallback. On a machine without a GPU (CI) detection must say
//! so with a reason, and the `gpu_cache` path must serve from host memory; on a GPU machine
//! it must list the devices.

use std::sync::Arc;

use bytes::Bytes;
use squall_gpu::{
    ByteSize, DeviceCache, GpuAvailability, GpuCacheSpec, GpuError, GpuMetrics, Location, detect,
    tier_for_spec,
};

#[test]
fn detection_answers_without_panicking_and_explains_an_absence() {
    let availability = detect();
    match &availability {
        GpuAvailability::Unavailable { reason } => {
            assert!(!reason.is_empty());
            eprintln!("detect(): no GPU: {reason}");
            assert!(availability.devices().is_empty());
        }
        GpuAvailability::Available { devices } => {
            eprintln!("detect(): GPUs: {devices:?}");
            assert!(!devices.is_empty());
            for (index, device) in devices.iter().enumerate() {
                assert_eq!(device.ordinal as usize, index);
                assert!(device.total_memory_bytes > 0);
                assert!(!device.name.is_empty());
            }
        }
    }
    assert_eq!(detect(), availability, "detection is repeatable");
}

#[cfg(feature = "cuda")]
#[test]
fn without_a_gpu_opening_a_cuda_tier_is_an_error_not_a_panic() {
    let availability = detect();
    let Some(reason) = availability.unavailable_reason() else {
        eprintln!("skipped: this machine has a GPU");
        return;
    };
    if reason.starts_with("libcuda.so not found") {
        assert_eq!(
            reason,
            "libcuda.so not found: no NVIDIA driver on this machine"
        );
    }
    let device = squall_gpu::DeviceTier::open(0);
    assert!(
        matches!(
            device,
            Err(GpuError::GpuUnavailable { .. } | GpuError::Driver { .. })
        ),
        "{device:?}"
    );
    let pinned = squall_gpu::PinnedHostTier::open(0);
    assert!(
        matches!(
            pinned,
            Err(GpuError::GpuUnavailable { .. } | GpuError::Driver { .. })
        ),
        "{pinned:?}"
    );
}

fn spec(device: u32, capacity_bytes: u64) -> GpuCacheSpec {
    GpuCacheSpec::new(device, ByteSize::from_bytes(capacity_bytes)).expect("spec")
}

#[test]
fn with_no_gpu_a_gpu_cache_is_served_from_host_memory() {
    let no_gpu = GpuAvailability::Unavailable {
        reason: "test".to_owned(),
    };
    let tier = tier_for_spec(&spec(3, 1 << 30), &no_gpu).expect("host fallback");
    assert_eq!(tier.location(), Location::Host);
    let cache =
        DeviceCache::open(&spec(0, 100), &no_gpu, &GpuMetrics::new(), "/pool").expect("open");
    assert_eq!(cache.location(), Location::Host);
    let bytes = Bytes::from_static(b"served from the host");
    let view = cache.insert("k", 1, &bytes).expect("insert");
    assert_eq!(view.view().address, bytes.as_ptr() as u64);
    assert_eq!(cache.stats().capacity_bytes, 100);
}

#[test]
fn a_spec_naming_a_missing_device_or_too_much_memory_is_an_error() {
    let one_gpu = GpuAvailability::Available {
        devices: vec![squall_gpu::DeviceInfo {
            ordinal: 0,
            name: "Imaginary GPU".to_owned(),
            total_memory_bytes: 1 << 30,
        }],
    };
    let missing = tier_for_spec(&spec(1, 100), &one_gpu);
    assert!(
        matches!(
            missing,
            Err(GpuError::NoSuchDevice {
                ordinal: 1,
                device_count: 1
            })
        ),
        "{missing:?}"
    );
    let too_big = tier_for_spec(&spec(0, 2 << 30), &one_gpu);
    assert!(
        matches!(too_big, Err(GpuError::CapacityExceedsDevice { .. })),
        "{too_big:?}"
    );
}

#[test]
fn the_fallback_cache_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let cache = DeviceCache::open(
        &spec(0, 100),
        &GpuAvailability::Unavailable {
            reason: "test".to_owned(),
        },
        &GpuMetrics::new(),
        "/pool",
    )
    .expect("open");
    assert_send_sync(&cache);
    let tier: Arc<dyn squall_gpu::Tier> = cache.tier().clone();
    assert_send_sync(&tier);
}
