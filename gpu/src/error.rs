//! The crate's one error type. Every variant names something a caller can act on: keep
//! the host copy and serve from the host (`TooLarge`, `NoRoom`), drop a stale write
//! (`StaleVersion`), fix a configuration (`InvalidByteSize`, `InvalidCacheSpec`,
//! `NoSuchDevice`, `CapacityExceedsDevice`), or report a driver failure (`Driver`,
//! `DeviceOutOfMemory`).

use crate::tier::Location;

/// Errors of memory tiers, device caches, detection and configuration parsing.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The object is larger than the whole cache: it can never be cached. The caller keeps
    /// (and serves) the host copy.
    #[error("object {key:?} ({len_bytes} bytes) is larger than the cache ({capacity_bytes} bytes)")]
    TooLarge {
        key: String,
        len_bytes: u64,
        capacity_bytes: u64,
    },
    /// The object does not fit even after evicting every unpinned entry: pinned entries
    /// (and uploads in flight) hold the rest. Nothing was evicted. The caller keeps the host
    /// copy; a later insert may succeed once pins are released.
    #[error(
        "object {key:?} ({len_bytes} bytes) does not fit: {held_bytes} of {capacity_bytes} bytes \
         are held by pinned entries and uploads in flight"
    )]
    NoRoom {
        key: String,
        len_bytes: u64,
        held_bytes: u64,
        capacity_bytes: u64,
    },
    /// The cache already holds a newer version of this key; the older one is not cached.
    #[error(
        "object {key:?}: version {offered_version} is older than the cached version {cached_version}"
    )]
    StaleVersion {
        key: String,
        offered_version: u64,
        cached_version: u64,
    },
    /// The device has no memory left for an allocation the cache's budget allowed (another
    /// process or cache uses the GPU, or the capacity is set too close to the total).
    #[error("device {ordinal}: out of memory allocating {len_bytes} bytes")]
    DeviceOutOfMemory { ordinal: u32, len_bytes: u64 },
    /// A CUDA driver call failed.
    #[error("device {ordinal}: CUDA {operation} failed: {message}")]
    Driver {
        ordinal: u32,
        operation: &'static str,
        message: String,
    },
    /// A device tier was asked for where there is no GPU (or no `cuda` feature).
    #[error("no GPU: {reason}")]
    GpuUnavailable { reason: String },
    /// A device ordinal beyond the devices detected.
    #[error("no GPU with ordinal {ordinal}: {device_count} device(s) detected")]
    NoSuchDevice { ordinal: u32, device_count: u32 },
    /// A cache capacity larger than the device's memory.
    #[error(
        "cache capacity {capacity_bytes} bytes exceeds device {ordinal}'s {total_memory_bytes} bytes"
    )]
    CapacityExceedsDevice {
        ordinal: u32,
        capacity_bytes: u64,
        total_memory_bytes: u64,
    },
    /// A block handed to a tier that did not allocate it.
    #[error("a block in {found} was given to the tier of {expected}")]
    ForeignBlock { expected: Location, found: Location },
    /// A copy whose source length differs from the destination block's length.
    #[error("copy of {src_len_bytes} bytes into a block of {block_len_bytes} bytes")]
    LengthMismatch {
        block_len_bytes: u64,
        src_len_bytes: u64,
    },
    /// An operation this tier cannot do (copying from device memory, on a tier over host
    /// memory).
    #[error("{operation} is not possible in {location}")]
    Unsupported {
        location: Location,
        operation: &'static str,
    },
    /// Device memory handed in (a UDL's output) that is not one allocation of this GPU
    /// covering the whole range.
    #[error("{len_bytes} bytes at {address:#x} are not memory of GPU {ordinal}: {reason}")]
    NotDeviceMemory {
        ordinal: u32,
        address: u64,
        len_bytes: u64,
        reason: String,
    },
    /// A write into a block that shares a host buffer (the host tier's zero-copy blocks).
    #[error("the block shares a read-only host buffer")]
    ReadOnlyBlock,
    /// A byte size that does not parse (`"8GiB"`, `"512MiB"`, `"1000000"` do).
    #[error("invalid byte size {input:?}: {problem}")]
    InvalidByteSize {
        input: String,
        problem: ByteSizeProblem,
    },
    /// A `gpu_cache` pool option that parses but makes no sense.
    #[error("invalid gpu_cache option: {reason}")]
    InvalidCacheSpec { reason: String },
    /// Registering the metrics into the caller's registry failed (for example twice).
    #[error("registering GPU metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why a byte size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeProblem {
    #[error("it is empty")]
    Empty,
    #[error("it does not start with a whole non-negative number")]
    NotANumber,
    #[error("fractions are not accepted; use a smaller unit")]
    Fractional,
    #[error("unknown unit (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")]
    UnknownUnit,
    #[error("it overflows 64 bits")]
    Overflow,
}
