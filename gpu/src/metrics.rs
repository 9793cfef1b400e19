//! Prometheus metrics of the device caches. One [`GpuMetrics`] holds the metric families
//! and is registered once into the node's registry; each cache gets its [`CacheMetrics`],
//! the families' children for its labels:
//! - `device`: where the cache's memory is (`cuda:0`, `pinned:0`, `host`);
//! - `cache`: the cache's name (the node gives the pool's path), because two pools may
//!   each keep a cache on the same GPU and their gauges must not overwrite each other;
//! - `direction` (transfers only): `host_to_device`, `device_to_host`, or `device_to_device`
//!   (a UDL's output copied from its own GPU memory into a cache).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::error::GpuError;
use crate::tier::Location;

/// Histogram buckets of one transfer's duration: 10 µs to ~5 s, ×2 apart.
const TRANSFER_SECONDS_BUCKET_FIRST: f64 = 10e-6;
const TRANSFER_SECONDS_BUCKET_COUNT: usize = 20;

/// A direction of copy between the host and a cache's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::HostToDevice => "host_to_device",
            Direction::DeviceToHost => "device_to_host",
            Direction::DeviceToDevice => "device_to_device",
        }
    }
}

/// The metric families of every device cache of a process.
#[derive(Debug, Clone)]
pub struct GpuMetrics {
    used_bytes: IntGaugeVec,
    capacity_bytes: IntGaugeVec,
    entries: IntGaugeVec,
    pinned_entries: IntGaugeVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    evictions: IntCounterVec,
    transfer_bytes: IntCounterVec,
    transfer_seconds: HistogramVec,
}

const CACHE_LABELS: [&str; 2] = ["device", "cache"];
const TRANSFER_LABELS: [&str; 3] = ["device", "cache", "direction"];

fn gauge(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &CACHE_LABELS).expect("a valid constant metric")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid constant metric")
}

impl GpuMetrics {
    /// The families, not yet registered anywhere.
    pub fn new() -> Self {
        let buckets = prometheus::exponential_buckets(
            TRANSFER_SECONDS_BUCKET_FIRST,
            2.0,
            TRANSFER_SECONDS_BUCKET_COUNT,
        )
        .expect("valid constant buckets");
        GpuMetrics {
            used_bytes: gauge(
                "squall_gpu_cache_used_bytes",
                "Bytes held by the cache's entries, pinned or not, and uploads in flight",
            ),
            capacity_bytes: gauge(
                "squall_gpu_cache_capacity_bytes",
                "The cache's capacity in bytes",
            ),
            entries: gauge("squall_gpu_cache_entries", "Objects in the cache"),
            pinned_entries: gauge(
                "squall_gpu_cache_pinned_entries",
                "Objects in use (pinned) that eviction skips",
            ),
            hits: counter(
                "squall_gpu_cache_hits_total",
                "Lookups that found the object",
                &CACHE_LABELS,
            ),
            misses: counter(
                "squall_gpu_cache_misses_total",
                "Lookups that did not find the object at the asked version",
                &CACHE_LABELS,
            ),
            evictions: counter(
                "squall_gpu_cache_evictions_total",
                "Entries evicted (least recently used first) to make room",
                &CACHE_LABELS,
            ),
            transfer_bytes: counter(
                "squall_gpu_transfer_bytes_total",
                "Bytes copied between the host and the cache's memory",
                &TRANSFER_LABELS,
            ),
            transfer_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "squall_gpu_transfer_seconds",
                    "Duration of one copy between the host and the cache's memory",
                )
                .buckets(buckets),
                &TRANSFER_LABELS,
            )
            .expect("a valid constant metric"),
        }
    }

    /// Registers every family into `registry` (once per registry; a second time fails
    /// with [`GpuError::Metrics`]).
    pub fn register(&self, registry: &Registry) -> Result<(), GpuError> {
        registry.register(Box::new(self.used_bytes.clone()))?;
        registry.register(Box::new(self.capacity_bytes.clone()))?;
        registry.register(Box::new(self.entries.clone()))?;
        registry.register(Box::new(self.pinned_entries.clone()))?;
        registry.register(Box::new(self.hits.clone()))?;
        registry.register(Box::new(self.misses.clone()))?;
        registry.register(Box::new(self.evictions.clone()))?;
        registry.register(Box::new(self.transfer_bytes.clone()))?;
        registry.register(Box::new(self.transfer_seconds.clone()))?;
        Ok(())
    }

    /// Forgets the series of one cache (its pool was removed), so `/metrics` stops
    /// showing its last values. A series not there is skipped.
    pub fn remove_cache_metrics(&self, location: Location, cache_name: &str) {
        let device = location.to_string();
        let labels = [device.as_str(), cache_name];
        for gauge in [
            &self.used_bytes,
            &self.capacity_bytes,
            &self.entries,
            &self.pinned_entries,
        ] {
            let _ = gauge.remove_label_values(&labels);
        }
        for counter in [&self.hits, &self.misses, &self.evictions] {
            let _ = counter.remove_label_values(&labels);
        }
        for direction in [
            Direction::HostToDevice,
            Direction::DeviceToHost,
            Direction::DeviceToDevice,
        ] {
            let labels = [device.as_str(), cache_name, direction.label()];
            let _ = self.transfer_bytes.remove_label_values(&labels);
            let _ = self.transfer_seconds.remove_label_values(&labels);
        }
    }

    /// The metrics of one cache.
    pub fn cache_metrics(&self, location: Location, cache_name: &str) -> CacheMetrics {
        let device = location.to_string();
        let labels = [device.as_str(), cache_name];
        let transfer = |direction: Direction| {
            let labels = [device.as_str(), cache_name, direction.label()];
            (
                self.transfer_bytes.with_label_values(&labels),
                self.transfer_seconds.with_label_values(&labels),
            )
        };
        let (host_to_device_bytes, host_to_device_seconds) = transfer(Direction::HostToDevice);
        let (device_to_host_bytes, device_to_host_seconds) = transfer(Direction::DeviceToHost);
        let (device_to_device_bytes, device_to_device_seconds) =
            transfer(Direction::DeviceToDevice);
        CacheMetrics {
            used_bytes: self.used_bytes.with_label_values(&labels),
            capacity_bytes: self.capacity_bytes.with_label_values(&labels),
            entries: self.entries.with_label_values(&labels),
            pinned_entries: self.pinned_entries.with_label_values(&labels),
            hits: self.hits.with_label_values(&labels),
            misses: self.misses.with_label_values(&labels),
            evictions: self.evictions.with_label_values(&labels),
            host_to_device_bytes,
            host_to_device_seconds,
            device_to_host_bytes,
            device_to_host_seconds,
            device_to_device_bytes,
            device_to_device_seconds,
        }
    }
}

impl Default for GpuMetrics {
    fn default() -> Self {
        GpuMetrics::new()
    }
}

/// One cache's metrics (children of the [`GpuMetrics`] families).
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    pub(crate) used_bytes: IntGauge,
    pub(crate) capacity_bytes: IntGauge,
    pub(crate) entries: IntGauge,
    pub(crate) pinned_entries: IntGauge,
    pub(crate) hits: IntCounter,
    pub(crate) misses: IntCounter,
    pub(crate) evictions: IntCounter,
    host_to_device_bytes: IntCounter,
    host_to_device_seconds: prometheus::Histogram,
    device_to_host_bytes: IntCounter,
    device_to_host_seconds: prometheus::Histogram,
    device_to_device_bytes: IntCounter,
    device_to_device_seconds: prometheus::Histogram,
}

/// The numbers of one cache's metrics at one moment (for tests and the dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheMetricsSnapshot {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub entries: u64,
    pub pinned_entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub host_to_device_bytes: u64,
    pub host_to_device_transfers: u64,
    pub device_to_host_bytes: u64,
    pub device_to_host_transfers: u64,
    pub device_to_device_bytes: u64,
    pub device_to_device_transfers: u64,
}

impl CacheMetrics {
    pub(crate) fn record_transfer(&self, direction: Direction, len_bytes: usize, seconds: f64) {
        let (bytes, duration) = match direction {
            Direction::HostToDevice => (&self.host_to_device_bytes, &self.host_to_device_seconds),
            Direction::DeviceToHost => (&self.device_to_host_bytes, &self.device_to_host_seconds),
            Direction::DeviceToDevice => {
                (&self.device_to_device_bytes, &self.device_to_device_seconds)
            }
        };
        bytes.inc_by(len_bytes as u64);
        duration.observe(seconds);
    }

    pub fn snapshot(&self) -> CacheMetricsSnapshot {
        let gauge = |gauge: &IntGauge| u64::try_from(gauge.get()).unwrap_or(0);
        CacheMetricsSnapshot {
            used_bytes: gauge(&self.used_bytes),
            capacity_bytes: gauge(&self.capacity_bytes),
            entries: gauge(&self.entries),
            pinned_entries: gauge(&self.pinned_entries),
            hits: self.hits.get(),
            misses: self.misses.get(),
            evictions: self.evictions.get(),
            host_to_device_bytes: self.host_to_device_bytes.get(),
            host_to_device_transfers: self.host_to_device_seconds.get_sample_count(),
            device_to_host_bytes: self.device_to_host_bytes.get(),
            device_to_host_transfers: self.device_to_host_seconds.get_sample_count(),
            device_to_device_bytes: self.device_to_device_bytes.get(),
            device_to_device_transfers: self.device_to_device_seconds.get_sample_count(),
        }
    }
}
