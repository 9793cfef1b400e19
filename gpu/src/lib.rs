//! GPU support for Squall: memory tiers, a per-device object cache, and detection.
//!
//! - [`Tier`]: where bytes live. [`HostTier`] (plain host memory, zero copy), and with the
//!   `cuda` feature `PinnedHostTier` (page-locked host memory) and `DeviceTier` (memory on
//!   one GPU). A [`Block`] knows its location, address and length and frees itself on drop.
//! - [`DeviceCache`]: a pool's objects kept resident in one tier, with a byte budget, LRU
//!   eviction of unpinned entries, [`PinnedView`] guards that keep an object in place while
//!   a UDL uses it, one counted host→device transfer per insert, and Prometheus metrics
//!   ([`GpuMetrics`]).
//! - [`detect()`]: which GPUs this machine has, as a [`GpuAvailability`]; never panics.
//!   Where there is none, [`DeviceCache::open`] serves the pool from the host tier with the
//!   same API (and warns once).
//! - [`GpuCacheSpec`]: the `gpu_cache = { device = 0, capacity = "8GiB" }` pool option.
//!
//! CUDA is reached through `cudarc` with *dynamic loading*: `libcuda.so` is opened at run
//! time, so this crate builds with no CUDA toolkit and runs where there is no NVIDIA
//! driver. Not `cuda-sys`: unmaintained since 2018, and its build script links
//! libcuda/libcudart at build time, so every CPU-only build fails to link.

mod cache;
pub mod conformance;
#[cfg(feature = "cuda")]
mod cuda;
mod detect;
mod error;
mod host;
mod lru;
mod metrics;
mod spec;
mod tier;

pub use cache::{CacheStats, DeviceCache, DeviceView, PinnedView};
#[cfg(feature = "cuda")]
pub use cuda::{DeviceTier, PinnedHostTier};
pub use detect::{DeviceInfo, GpuAvailability, detect, device_tier, tier_for_spec};
pub use error::{ByteSizeProblem, GpuError};
pub use host::HostTier;
pub use metrics::{CacheMetrics, CacheMetricsSnapshot, Direction, GpuMetrics};
pub use spec::{ByteSize, GpuCacheSpec};
pub use tier::{Block, Location, Tier, TierKind};
