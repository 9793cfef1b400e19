//! GPU detection, and the choice of tier for a pool's `gpu_cache` option: the device when
//! there is one, the host tier (same API) when there is none.

use std::sync::{Arc, Once};

use crate::error::GpuError;
use crate::host::HostTier;
use crate::spec::GpuCacheSpec;
use crate::tier::Tier;

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: u32,
    pub name: String,
    pub total_memory_bytes: u64,
}

/// What detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuAvailability {
    /// At least one GPU, listed by ordinal.
    Available { devices: Vec<DeviceInfo> },
    /// No usable GPU, and why (no driver library, driver failed, no devices, or a build
    /// without the `cuda` feature).
    Unavailable { reason: String },
}

impl GpuAvailability {
    pub fn is_available(&self) -> bool {
        matches!(self, GpuAvailability::Available { .. })
    }

    /// The devices found; empty when unavailable.
    pub fn devices(&self) -> &[DeviceInfo] {
        match self {
            GpuAvailability::Available { devices } => devices,
            GpuAvailability::Unavailable { .. } => &[],
        }
    }

    pub fn device(&self, ordinal: u32) -> Option<&DeviceInfo> {
        self.devices()
            .iter()
            .find(|device| device.ordinal == ordinal)
    }

    pub fn unavailable_reason(&self) -> Option<&str> {
        match self {
            GpuAvailability::Available { .. } => None,
            GpuAvailability::Unavailable { reason } => Some(reason),
        }
    }
}

/// Finds the GPUs of this machine. Never panics and creates no driver context, so it is
/// cheap to call at node start; without a driver it answers `Unavailable` with a reason.
pub fn detect() -> GpuAvailability {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        GpuAvailability::Unavailable {
            reason: "squall-gpu was built without its `cuda` feature".to_owned(),
        }
    }
}

/// The tier that serves a `gpu_cache` pool option: the spec's device where detection found
/// it, or the host tier where there is no GPU at all (logged once per process, as a
/// warning). A spec naming a device that does not exist, or asking for more than the
/// device's memory, on a machine that *has* GPUs is a configuration error, not a fallback.
pub fn tier_for_spec(
    spec: &GpuCacheSpec,
    availability: &GpuAvailability,
) -> Result<Arc<dyn Tier>, GpuError> {
    let devices = match availability {
        GpuAvailability::Unavailable { reason } => {
            warn_no_gpu_once(reason);
            return Ok(Arc::new(HostTier::new()));
        }
        GpuAvailability::Available { devices } => devices,
    };
    let Some(device) = availability.device(spec.device) else {
        return Err(GpuError::NoSuchDevice {
            ordinal: spec.device,
            device_count: devices.len() as u32,
        });
    };
    if spec.capacity.bytes() > device.total_memory_bytes {
        return Err(GpuError::CapacityExceedsDevice {
            ordinal: spec.device,
            capacity_bytes: spec.capacity.bytes(),
            total_memory_bytes: device.total_memory_bytes,
        });
    }
    open_device_tier(spec.device)
}

/// The device tier of GPU `ordinal`, which `availability` must list (for reading a UDL's
/// output from device memory where no cache of that GPU is open yet).
pub fn device_tier(
    ordinal: u32,
    availability: &GpuAvailability,
) -> Result<Arc<dyn Tier>, GpuError> {
    match availability {
        GpuAvailability::Unavailable { reason } => Err(GpuError::GpuUnavailable {
            reason: reason.clone(),
        }),
        GpuAvailability::Available { devices } => match availability.device(ordinal) {
            Some(_) => open_device_tier(ordinal),
            None => Err(GpuError::NoSuchDevice {
                ordinal,
                device_count: devices.len() as u32,
            }),
        },
    }
}

#[cfg(feature = "cuda")]
fn open_device_tier(ordinal: u32) -> Result<Arc<dyn Tier>, GpuError> {
    Ok(Arc::new(crate::cuda::DeviceTier::open(ordinal)?))
}

#[cfg(not(feature = "cuda"))]
fn open_device_tier(_ordinal: u32) -> Result<Arc<dyn Tier>, GpuError> {
    unreachable!("without the `cuda` feature detection never reports a device")
}

fn warn_no_gpu_once(reason: &str) {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| {
        tracing::warn!("no GPU found: {reason}; GPU-cached pools are served from host memory");
    });
}
