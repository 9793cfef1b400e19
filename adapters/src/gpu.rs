//! The node's GPU caches: one [`squall_gpu::DeviceCache`] per pool whose spec has a
//! `gpu_cache` option, kept by every replica of the pool's shards.
//!
//! - **Detection** runs once, at node start ([`squall_gpu::detect`]); its answer is what
//!   `/api/v1/node` reports. Without a GPU every cache runs over the host tier (zero copy:
//!   the entry is the very `Bytes` the store holds) and `squall-gpu` logs once per process
//!   that no GPU was found.
//! - **Caching on arrival**: the service inserts each applied put of a GPU-cached pool
//!   ([`NodeGpu::on_put`]) and removes each applied remove ([`NodeGpu::on_remove`]). A
//!   cache opens lazily, at the pool's first object here; the caches of removed pools are
//!   dropped ([`NodeGpu::retain_pools`]).
//! - **UDL views**: [`NodeGpu::view`] pins the cached copy of (key, version) for an
//!   invocation; [`dlpack_view`] turns it into the SDK's DLPack-style
//!   [`squall_udl::DeviceView`].
//! - **Outputs on the device**: a UDL's output in GPU memory
//!   ([`NodeGpu::take_output`]) is read to host once for the store and copied device to
//!   device into the cache of each destination pool GPU-cached on that GPU here; when its
//!   put is applied here, [`NodeGpu::on_put`] caches that copy instead of uploading the
//!   bytes again.
//!
//! Boundary: the cache is an accelerator, never the store. A refused insert (`TooLarge`,
//! `NoRoom`, `StaleVersion`) or a cache that cannot open (a device the machine lacks)
//! never fails a write: it is counted (`squall_gpu_cache_refused_total`) and logged at
//! debug level, and the host copy serves. Reads (`get`) are always answered from the
//! store's host copy.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounterVec, Opts, Registry};
use squall_gpu::{
    Block, ByteSize, DeviceCache, GpuAvailability, GpuCacheSpec, GpuError, GpuMetrics, Location,
    PinnedView, Tier,
};
use squall_kvs::{GpuCache, PoolSpec, PoolTable};
use tracing::{debug, info, warn};

/// The most UDL outputs held as device copies waiting for their put to be applied here
/// ([`NodeGpu::take_output`]); beyond it the oldest is dropped (its put then uploads).
const STAGED_OUTPUTS_MAX: usize = 256;
/// How long such a copy waits: an output whose put is applied on other nodes only (this
/// node holds no replica of its shard) is never claimed here.
const STAGED_OUTPUT_TTL: Duration = Duration::from_secs(10);

/// Why an insert was refused, as the `reason` label of `squall_gpu_cache_refused_total`.
const REFUSAL_REASONS: [&str; 4] = ["too_large", "no_room", "stale_version", "error"];

/// The GPU side of one node. Cheap to clone (a handle): the service inserts and looks up,
/// the HTTP server reads the status.
#[derive(Clone, Debug)]
pub struct NodeGpu {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    availability: GpuAvailability,
    metrics: GpuMetrics,
    refused: IntCounterVec,
    /// By pool path.
    caches: Mutex<BTreeMap<String, PoolCache>>,
    /// UDL outputs copied into a destination's cache, oldest first.
    staged: Mutex<VecDeque<StagedOutput>>,
    /// Device tiers for reading outputs on GPUs no cache here is on, by ordinal.
    readers: Mutex<BTreeMap<u32, Arc<dyn Tier>>>,
    /// UDL instances granted a GPU that have run here, by (vertex, UDL): what stays warm.
    models: Mutex<BTreeMap<(String, String), GpuModelStatus>>,
}

/// A UDL's output already copied into `pool`'s cache tier, waiting for its put.
#[derive(Debug)]
struct StagedOutput {
    pool: String,
    key: String,
    /// What the put will carry (compared before the copy is used).
    host: Bytes,
    block: Block,
    made: Instant,
}

#[derive(Debug)]
struct PoolCache {
    spec: GpuCache,
    /// `Err`: why it could not be opened; the pool is then served from host memory only.
    cache: Result<DeviceCache, String>,
}

/// What `/api/v1/node` says about this node's GPUs and caches.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct GpuStatus {
    /// `available` (then `devices` lists them) or `unavailable` (then `reason` says why).
    pub availability: String,
    pub reason: Option<String>,
    pub devices: Vec<GpuDeviceStatus>,
    /// One per GPU-cached pool with objects on this node.
    pub caches: Vec<GpuCacheStatus>,
    /// The warm models: UDL instances on this node that ask for a GPU (`"resources":
    /// {"gpu": 1}`) over a GPU-cached pool and have run. An instance
    /// builds its model once and keeps it across invocations, until its DFG or UDL is
    /// replaced or removed.
    pub models: Vec<GpuModelStatus>,
}

#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct GpuModelStatus {
    /// The vertex pathname the UDL serves.
    pub vertex: String,
    /// The UDL's UUID.
    pub udl: String,
    /// Where its input's cache is: `cuda:<n>`, or `host` on a node without a GPU.
    pub device: String,
    /// Invocations dispatched to it here.
    pub invocations: u64,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GpuDeviceStatus {
    pub ordinal: u32,
    pub name: String,
    pub total_memory_bytes: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct GpuCacheStatus {
    pub pool: String,
    /// Where the cached copies are: `cuda:<n>`, `pinned:<n>`, or `host` (no GPU here).
    pub location: String,
    /// The GPU the pool's `gpu_cache` option names.
    pub device: u32,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub entries: u64,
    pub pinned_entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub host_to_device_bytes: u64,
    pub host_to_device_transfers: u64,
    pub device_to_host_bytes: u64,
    pub device_to_host_transfers: u64,
    /// UDL outputs copied from GPU memory into this cache (no host round trip).
    pub device_to_device_bytes: u64,
    pub device_to_device_transfers: u64,
    /// Inserts refused (too large, no room, stale version, device error): those objects
    /// are served from the host copy.
    pub refused_inserts: u64,
    /// Why the cache could not be opened; the pool is then served from host memory only.
    pub error: Option<String>,
}

impl NodeGpu {
    /// The GPU side of a node whose detection found `availability`, its metrics
    /// registered in `registry` (`squall_gpu_*`).
    pub fn new(availability: GpuAvailability, registry: &Registry) -> Result<NodeGpu, GpuError> {
        let gpu = NodeGpu::unregistered(availability);
        gpu.shared.metrics.register(registry)?;
        registry.register(Box::new(gpu.shared.refused.clone()))?;
        Ok(gpu)
    }

    /// Metrics not registered anywhere: for a service built without a node (tests).
    pub fn unregistered(availability: GpuAvailability) -> NodeGpu {
        let refused = IntCounterVec::new(
            Opts::new(
                "squall_gpu_cache_refused_total",
                "Inserts into a pool's GPU cache that were refused; the host copy serves",
            ),
            &["cache", "reason"],
        )
        .expect("a valid constant metric");
        NodeGpu {
            shared: Arc::new(Shared {
                availability,
                metrics: GpuMetrics::new(),
                refused,
                caches: Mutex::new(BTreeMap::new()),
                staged: Mutex::new(VecDeque::new()),
                readers: Mutex::new(BTreeMap::new()),
                models: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn availability(&self) -> &GpuAvailability {
        &self.shared.availability
    }

    /// Logs what detection found, at node start. Says nothing when there is no GPU:
    /// `squall-gpu` says so (once per process) when the first GPU-cached pool falls back
    /// to host memory, so a node without such pools is not noisy about it.
    pub fn log_detection(&self) {
        if let GpuAvailability::Available { devices } = &self.shared.availability {
            let names: Vec<String> = devices
                .iter()
                .map(|d| {
                    format!(
                        "{} {} ({})",
                        d.ordinal,
                        d.name,
                        ByteSize::from_bytes(d.total_memory_bytes)
                    )
                })
                .collect();
            info!(devices = ?names, "GPUs found");
        }
    }

    /// Caches an applied put of `pool` (the store's own `Bytes`, so the host tier shares
    /// it). Never fails: a refusal is counted and logged at debug level.
    pub fn on_put(&self, pool: &PoolSpec, key: &str, version: u64, blob: &Bytes) {
        let Some(cache) = self.cache_for(pool) else {
            return;
        };
        let inserted = match self.claim_staged(&pool.path, key, blob) {
            Some(block) => cache.insert_block(key, version, block),
            None => cache.insert(key, version, blob),
        };
        match inserted {
            Ok(pinned) => drop(pinned),
            Err(error) => {
                let reason = match &error {
                    GpuError::TooLarge { .. } => REFUSAL_REASONS[0],
                    GpuError::NoRoom { .. } => REFUSAL_REASONS[1],
                    GpuError::StaleVersion { .. } => REFUSAL_REASONS[2],
                    _ => REFUSAL_REASONS[3],
                };
                self.shared
                    .refused
                    .with_label_values(&[pool.path.as_str(), reason])
                    .inc();
                debug!(pool = %pool.path, key, version, %error, "not cached on the GPU; the host copy serves");
            }
        }
    }

    /// A UDL's output in GPU memory (`view`, valid for the call): its bytes in host memory
    /// (one device→host copy, counted by a cache of that GPU if one is open here), and a
    /// device-to-device copy into the cache of each of `keys`' pools that is cached on that
    /// GPU here, which [`NodeGpu::on_put`] uses when the output's put is applied. Only
    /// CUDA views: host memory goes through `emit`. A failed device copy only means the
    /// put uploads as usual.
    pub fn take_output(
        &self,
        view: &squall_udl::DeviceView,
        keys: &[String],
    ) -> Result<Bytes, String> {
        if view.device_type != squall_udl::DeviceView::CUDA {
            return Err(format!(
                "emit_device takes GPU memory (DLPack device type {}), not type {}: emit \
                 host memory as bytes",
                squall_udl::DeviceView::CUDA,
                view.device_type
            ));
        }
        let len_bytes = usize::try_from(view.len_bytes)
            .map_err(|_| format!("an output of {} bytes", view.len_bytes))?;
        let on_this_gpu = |cache: &DeviceCache| {
            cache.location()
                == Location::Device {
                    ordinal: view.device_id,
                }
        };
        // (pool, output key, that pool's cache) for each key whose pool is cached on
        // this GPU here.
        let destinations: Vec<(String, String, DeviceCache)> = {
            let caches = self.lock();
            keys.iter()
                .filter_map(|key| {
                    caches
                        .iter()
                        .find_map(|(path, cached)| match &cached.cache {
                            Ok(cache) if in_pool(key, path) && on_this_gpu(cache) => {
                                Some((path.clone(), key.clone(), cache.clone()))
                            }
                            _ => None,
                        })
                })
                .collect()
        };
        let host = match destinations.first() {
            Some((_, _, cache)) => cache.read_device(view.address, len_bytes),
            None => self
                .reader(view.device_id)
                .and_then(|tier| tier.read_device(view.address, len_bytes)),
        }
        .map_err(|error| format!("reading the output from GPU {}: {error}", view.device_id))?;
        for (pool, key, cache) in destinations {
            match cache.copy_from_device(view.address, len_bytes) {
                Ok(block) => self.stage(StagedOutput {
                    pool,
                    key,
                    host: host.clone(),
                    block,
                    made: Instant::now(),
                }),
                Err(error) => {
                    debug!(%pool, %key, %error, "output not copied on the GPU; its put uploads it")
                }
            }
        }
        Ok(host)
    }

    /// Counts an invocation of `udl` at `vertex`, which asks for a GPU, on an object of a
    /// GPU-cached pool whose cache is on GPU `ordinal` (`None`: host memory, on a node
    /// without a GPU): its instance (and the model it holds) is warm here.
    pub fn note_model_run(&self, vertex: &str, udl: &str, ordinal: Option<u32>) {
        let mut models = self.models();
        let entry = models
            .entry((vertex.to_string(), udl.to_string()))
            .or_insert_with(|| GpuModelStatus {
                vertex: vertex.to_string(),
                udl: udl.to_string(),
                device: String::new(),
                invocations: 0,
            });
        entry.device = match ordinal {
            Some(ordinal) => Location::Device { ordinal }.to_string(),
            None => Location::Host.to_string(),
        };
        entry.invocations += 1;
    }

    /// Forgets the models of UDL instances that are gone (`alive(vertex, udl)` false).
    pub fn retain_models(&self, alive: impl Fn(&str, &str) -> bool) {
        self.models()
            .retain(|(vertex, udl), _| alive(vertex.as_str(), udl.as_str()));
    }

    fn models(&self) -> MutexGuard<'_, BTreeMap<(String, String), GpuModelStatus>> {
        self.shared
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn reader(&self, ordinal: u32) -> Result<Arc<dyn Tier>, GpuError> {
        let mut readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tier) = readers.get(&ordinal) {
            return Ok(Arc::clone(tier));
        }
        let tier = squall_gpu::device_tier(ordinal, &self.shared.availability)?;
        readers.insert(ordinal, Arc::clone(&tier));
        Ok(tier)
    }

    fn staged(&self) -> MutexGuard<'_, VecDeque<StagedOutput>> {
        self.shared
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stage(&self, output: StagedOutput) {
        let dropped = {
            let mut staged = self.staged();
            staged.retain(|s| !(s.pool == output.pool && s.key == output.key));
            let mut dropped = Vec::new();
            while staged.len() >= STAGED_OUTPUTS_MAX
                || staged
                    .front()
                    .is_some_and(|s| s.made.elapsed() > STAGED_OUTPUT_TTL)
            {
                dropped.extend(staged.pop_front());
            }
            staged.push_back(output);
            dropped
        };
        drop(dropped); // device memory freed outside the lock
    }

    /// The staged device copy of `key` in `pool`, if one waits and holds exactly `blob`.
    fn claim_staged(&self, pool: &str, key: &str, blob: &Bytes) -> Option<Block> {
        let claimed = {
            let mut staged = self.staged();
            if staged.is_empty() {
                return None;
            }
            let at = staged.iter().position(|s| s.pool == pool && s.key == key)?;
            staged.remove(at)?
        };
        (claimed.host == *blob).then_some(claimed.block)
    }

    /// Forgets `key` in `pool`'s cache (removed, or no longer held here).
    pub fn on_remove(&self, pool: &str, key: &str) {
        if let Some(PoolCache {
            cache: Ok(cache), ..
        }) = self.lock().get(pool)
        {
            cache.remove(key);
        }
    }

    /// The cached copy of (`key`, exactly `version`) of `pool`, pinned while the view
    /// lives; `None` when the pool is not GPU-cached, its cache is not open, or the
    /// object is not cached (refused, evicted, or replaced by a newer version).
    pub fn view(&self, pool: &PoolSpec, key: &str, version: u64) -> Option<PinnedView> {
        pool.gpu_cache?;
        match self.lock().get(&pool.path) {
            Some(PoolCache {
                cache: Ok(cache), ..
            }) => cache.get(key, version),
            _ => None,
        }
    }

    /// The GPU `pool`'s cache lives on, if it is on one (not on a machine without GPUs).
    pub fn device_of(&self, pool: &PoolSpec) -> Option<u32> {
        let cache = self.cache_for(pool)?;
        match cache.location() {
            Location::Device { ordinal } => Some(ordinal),
            Location::Host | Location::PinnedHost { .. } => None,
        }
    }

    /// Drops the caches of pools that are gone, or whose `gpu_cache` option changed (a
    /// pool removed and created again), and their metric series.
    pub fn retain_pools(&self, pools: &PoolTable) {
        let mut caches = self.lock();
        let stale: Vec<String> = caches
            .iter()
            .filter(|(path, cached)| {
                pools.get(path).and_then(|p| p.spec.gpu_cache) != Some(cached.spec)
            })
            .map(|(path, _)| path.clone())
            .collect();
        for path in stale {
            let Some(dropped) = caches.remove(&path) else {
                continue;
            };
            if let Ok(cache) = &dropped.cache {
                self.shared
                    .metrics
                    .remove_cache_metrics(cache.location(), &path);
            }
            for reason in REFUSAL_REASONS {
                let _ = self
                    .shared
                    .refused
                    .remove_label_values(&[path.as_str(), reason]);
            }
            info!(pool = %path, "GPU cache dropped");
        }
    }

    /// The status `/api/v1/node` shows, read now.
    pub fn status(&self) -> GpuStatus {
        let (availability, reason, devices) = match &self.shared.availability {
            GpuAvailability::Available { devices } => (
                "available",
                None,
                devices
                    .iter()
                    .map(|d| GpuDeviceStatus {
                        ordinal: d.ordinal,
                        name: d.name.clone(),
                        total_memory_bytes: d.total_memory_bytes,
                    })
                    .collect(),
            ),
            GpuAvailability::Unavailable { reason } => {
                ("unavailable", Some(reason.clone()), Vec::new())
            }
        };
        let caches = self
            .lock()
            .iter()
            .map(|(path, cached)| self.cache_status(path, cached))
            .collect();
        GpuStatus {
            availability: availability.to_string(),
            reason,
            devices,
            caches,
            models: self.models().values().cloned().collect(),
        }
    }

    fn cache_status(&self, path: &str, cached: &PoolCache) -> GpuCacheStatus {
        let refused_inserts = REFUSAL_REASONS
            .iter()
            .map(|reason| self.shared.refused.with_label_values(&[path, reason]).get())
            .sum();
        let mut status = GpuCacheStatus {
            pool: path.to_string(),
            device: cached.spec.device,
            capacity_bytes: cached.spec.capacity_bytes,
            refused_inserts,
            ..GpuCacheStatus::default()
        };
        match &cached.cache {
            Ok(cache) => {
                let stats = cache.stats();
                let counted = cache.metrics().snapshot();
                status.location = cache.location().to_string();
                status.capacity_bytes = stats.capacity_bytes;
                status.used_bytes = stats.used_bytes;
                status.entries = stats.entries as u64;
                status.pinned_entries = stats.pinned_entries as u64;
                status.hits = counted.hits;
                status.misses = counted.misses;
                status.evictions = counted.evictions;
                status.host_to_device_bytes = counted.host_to_device_bytes;
                status.host_to_device_transfers = counted.host_to_device_transfers;
                status.device_to_host_bytes = counted.device_to_host_bytes;
                status.device_to_host_transfers = counted.device_to_host_transfers;
                status.device_to_device_bytes = counted.device_to_device_bytes;
                status.device_to_device_transfers = counted.device_to_device_transfers;
            }
            Err(error) => {
                status.location = Location::Host.to_string();
                status.error = Some(error.clone());
            }
        }
        status
    }

    /// `pool`'s cache, opened at its first use; `None` if the pool is not GPU-cached or
    /// its cache cannot be opened (logged once, when that is found).
    fn cache_for(&self, pool: &PoolSpec) -> Option<DeviceCache> {
        let wanted = pool.gpu_cache?;
        let mut caches = self.lock();
        if let Some(cached) = caches.get(&pool.path)
            && cached.spec == wanted
        {
            return cached.cache.as_ref().ok().cloned();
        }
        let cache = self.open(&pool.path, wanted);
        let handle = cache.as_ref().ok().cloned();
        caches.insert(
            pool.path.clone(),
            PoolCache {
                spec: wanted,
                cache,
            },
        );
        handle
    }

    fn open(&self, path: &str, wanted: GpuCache) -> Result<DeviceCache, String> {
        let opened = GpuCacheSpec::new(wanted.device, ByteSize::from_bytes(wanted.capacity_bytes))
            .and_then(|spec| {
                DeviceCache::open(&spec, &self.shared.availability, &self.shared.metrics, path)
            });
        match opened {
            Ok(cache) => {
                info!(pool = %path, location = %cache.location(), capacity = %ByteSize::from_bytes(wanted.capacity_bytes), "GPU cache opened");
                Ok(cache)
            }
            Err(error) => {
                warn!(pool = %path, %error, "cannot open the pool's GPU cache; its objects are served from host memory");
                Err(error.to_string())
            }
        }
    }

    /// The lock over the cache table. Nothing panics while holding it but an invariant
    /// assertion, after which the table is still the last consistent one.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PoolCache>> {
        self.shared
            .caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `key` lies in the pool at `path`.
fn in_pool(key: &str, path: &str) -> bool {
    key.strip_prefix(path)
        .is_some_and(|rest| path.ends_with('/') || rest.starts_with('/'))
}

/// The SDK's (DLPack's) description of a cached copy: device type CPU (1) for the host
/// tier, CUDA_HOST (3) for pinned host memory, CUDA (2) with the GPU's ordinal for device
/// memory.
pub fn dlpack_view(view: squall_gpu::DeviceView) -> squall_udl::DeviceView {
    let (device_type, device_id) = match view.location {
        Location::Host => (squall_udl::DeviceView::CPU, 0),
        Location::PinnedHost { .. } => (squall_udl::DeviceView::CUDA_HOST, 0),
        Location::Device { ordinal } => (squall_udl::DeviceView::CUDA, ordinal),
    };
    squall_udl::DeviceView {
        address: view.address,
        len_bytes: view.len_bytes,
        device_type,
        device_id,
        stream: view.stream_handle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_kvs::StoreKind;

    fn no_gpu() -> GpuAvailability {
        GpuAvailability::Unavailable {
            reason: "libcuda.so not found: no NVIDIA driver on this machine".to_string(),
        }
    }

    fn cached_pool(path: &str, capacity_bytes: u64) -> PoolSpec {
        let mut spec = PoolSpec::new(path, StoreKind::Volatile, 1);
        spec.gpu_cache = Some(GpuCache {
            device: 0,
            capacity_bytes,
        });
        spec
    }

    #[test]
    fn dlpack_device_types_follow_the_location() {
        let view = |location| squall_gpu::DeviceView {
            address: 0x1000,
            len_bytes: 5,
            location,
            stream_handle: 7,
        };
        let host = dlpack_view(view(Location::Host));
        assert_eq!((host.device_type, host.device_id), (1, 0));
        let pinned = dlpack_view(view(Location::PinnedHost { device: 1 }));
        assert_eq!((pinned.device_type, pinned.device_id), (3, 0));
        let device = dlpack_view(view(Location::Device { ordinal: 2 }));
        assert_eq!((device.device_type, device.device_id), (2, 2));
        assert_eq!(
            (device.address, device.len_bytes, device.stream),
            (0x1000, 5, 7)
        );
    }

    #[test]
    fn without_a_gpu_puts_are_cached_zero_copy_and_refusals_are_counted() {
        let registry = Registry::new();
        let gpu = NodeGpu::new(no_gpu(), &registry).expect("metrics register");
        let pool = cached_pool("/frames", 10);
        let blob = Bytes::from_static(b"12345678");
        gpu.on_put(&pool, "/frames/a", 5, &blob);
        let view = gpu.view(&pool, "/frames/a", 5).expect("cached");
        assert_eq!(view.view().address, blob.as_ptr() as u64, "zero copy");
        assert_eq!(dlpack_view(view.view()).device_type, 1);
        assert_eq!(gpu.device_of(&pool), None, "no GPU to grant");
        drop(view);
        assert!(gpu.view(&pool, "/frames/a", 4).is_none(), "another version");
        // Refused, never failing: too large, then older than what is cached.
        gpu.on_put(&pool, "/frames/big", 6, &Bytes::from_static(b"12345678901"));
        gpu.on_put(&pool, "/frames/a", 3, &blob);
        let status = gpu.status();
        assert_eq!(status.availability, "unavailable");
        assert!(status.reason.is_some());
        let cache = &status.caches[0];
        assert_eq!(cache.pool, "/frames");
        assert_eq!(cache.location, "host");
        assert_eq!((cache.entries, cache.used_bytes), (1, 8));
        assert_eq!(cache.refused_inserts, 2);
        assert_eq!((cache.hits, cache.misses), (1, 1));
        gpu.on_remove("/frames", "/frames/a");
        assert_eq!(gpu.status().caches[0].entries, 0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        assert!(text.contains("squall_gpu_cache_refused_total"), "{text}");
        assert!(text.contains("squall_gpu_cache_capacity_bytes"), "{text}");
        // The pool is removed: its cache and series go.
        gpu.retain_pools(&PoolTable::new(256, 16));
        assert!(gpu.status().caches.is_empty());
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        assert!(!text.contains("cache=\"/frames\""), "{text}");
    }

    #[test]
    fn pools_without_the_option_are_not_cached() {
        let gpu = NodeGpu::unregistered(no_gpu());
        let pool = PoolSpec::new("/plain", StoreKind::Volatile, 1);
        gpu.on_put(&pool, "/plain/a", 1, &Bytes::from_static(b"x"));
        assert!(gpu.view(&pool, "/plain/a", 1).is_none());
        assert!(gpu.status().caches.is_empty());
    }
}
