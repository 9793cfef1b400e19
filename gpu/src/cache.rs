//! The object cache of one tier (one GPU, or the host): a byte budget, least-recently-used
//! eviction of unpinned entries, pins held by [`PinnedView`] guards while a UDL uses an
//! object, one host→device transfer per insert, and metrics.
//!
//! Boundary: the cache never reads the store. The caller (the node) inserts what it has in
//! host memory and keeps that host copy: a refused insert ([`GpuError::TooLarge`],
//! [`GpuError::NoRoom`]) loses nothing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use crate::detect::{GpuAvailability, tier_for_spec};
use crate::error::GpuError;
use crate::lru::{Begin, EntryId, LruIndex, Pinned};
use crate::metrics::{CacheMetrics, Direction, GpuMetrics};
use crate::spec::GpuCacheSpec;
use crate::tier::{Block, Location, Tier};

/// A cache of objects (key + version) in one tier. Cheap to clone (a handle); `Send + Sync`.
#[derive(Debug, Clone)]
pub struct DeviceCache {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tier: Arc<dyn Tier>,
    index: Mutex<LruIndex<Arc<Block>>>,
    metrics: CacheMetrics,
}

/// A cache's occupancy at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub capacity_bytes: u64,
    /// Bytes of live entries, of replaced entries still pinned, and of uploads in flight.
    pub used_bytes: u64,
    /// Live entries (found by `get`).
    pub entries: usize,
    /// Live entries with at least one pin.
    pub pinned_entries: usize,
}

/// Where a cached object's bytes are, for code that launches GPU work on them (or reads
/// them from the host tier). Plain numbers: valid only while the [`PinnedView`] it came
/// from lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceView {
    /// Device pointer (`CUdeviceptr`) for device memory, host address otherwise; 0 when
    /// the object is empty.
    pub address: u64,
    pub len_bytes: u64,
    pub location: Location,
    /// The `CUstream` the cache copies on (0 for host tiers); the data is already complete
    /// on it when the view is handed out.
    pub stream_handle: u64,
}

impl DeviceView {
    pub fn device_ordinal(&self) -> Option<u32> {
        self.location.device_ordinal()
    }
}

impl DeviceCache {
    /// A cache of `capacity_bytes` over `tier`, reporting into `metrics`.
    pub fn new(tier: Arc<dyn Tier>, capacity_bytes: u64, metrics: CacheMetrics) -> Self {
        metrics.capacity_bytes.set(gauge_value(capacity_bytes));
        let cache = DeviceCache {
            shared: Arc::new(Shared {
                tier,
                index: Mutex::new(LruIndex::new(capacity_bytes)),
                metrics,
            }),
        };
        cache.publish(&cache.lock());
        cache
    }

    /// The cache a pool's `gpu_cache` option asks for: on the spec's GPU, or over the host
    /// tier where there is no GPU (see [`tier_for_spec`]). `cache_name` labels its metrics
    /// (the node gives the pool's path).
    pub fn open(
        spec: &GpuCacheSpec,
        availability: &GpuAvailability,
        metrics: &GpuMetrics,
        cache_name: &str,
    ) -> Result<Self, GpuError> {
        let tier = tier_for_spec(spec, availability)?;
        let cache_metrics = metrics.cache_metrics(tier.location(), cache_name);
        Ok(DeviceCache::new(tier, spec.capacity.bytes(), cache_metrics))
    }

    pub fn location(&self) -> Location {
        self.shared.tier.location()
    }

    pub fn tier(&self) -> &Arc<dyn Tier> {
        &self.shared.tier
    }

    pub fn metrics(&self) -> &CacheMetrics {
        &self.shared.metrics
    }

    pub fn stats(&self) -> CacheStats {
        let index = self.lock();
        CacheStats {
            capacity_bytes: index.capacity_bytes(),
            used_bytes: index.used_bytes(),
            entries: index.live_entries(),
            pinned_entries: index.pinned_live_entries(),
        }
    }

    /// The version cached for `key`, if any. Counts neither hit nor miss.
    pub fn cached_version(&self, key: &str) -> Option<u64> {
        self.lock().cached_version(key)
    }

    /// Caches `bytes` as (`key`, `version`) and returns it pinned. Costs one host→tier
    /// transfer (none on the host tier, which shares `bytes`). Evicts least-recently-used
    /// unpinned entries to make room. A newer version replaces an older one (freed once no
    /// view pins it); the same version already cached is returned as is, with no transfer.
    ///
    /// Errors: [`GpuError::TooLarge`], [`GpuError::NoRoom`] (nothing evicted),
    /// [`GpuError::StaleVersion`], or the tier's allocation/copy error. In every case the
    /// caller still has `bytes`.
    pub fn insert(&self, key: &str, version: u64, bytes: &Bytes) -> Result<PinnedView, GpuError> {
        self.insert_with(key, version, bytes.len() as u64, || self.upload(bytes))
    }

    /// Caches `block`, already in this cache's tier (made by
    /// [`DeviceCache::copy_from_device`]), as (`key`, `version`): like
    /// [`DeviceCache::insert`], with no transfer. A block of another tier is refused
    /// ([`GpuError::ForeignBlock`]).
    pub fn insert_block(
        &self,
        key: &str,
        version: u64,
        block: Block,
    ) -> Result<PinnedView, GpuError> {
        if block.location() != self.location() {
            return Err(GpuError::ForeignBlock {
                expected: self.location(),
                found: block.location(),
            });
        }
        self.insert_with(key, version, block.len_bytes() as u64, || Ok(block))
    }

    /// A copy of `len_bytes` of device memory at `address` (a UDL's output on this cache's
    /// GPU) in this cache's tier, ready for [`DeviceCache::insert_block`]: one
    /// device→device transfer, counted and timed. See [`Tier::copy_from_device`].
    pub fn copy_from_device(&self, address: u64, len_bytes: usize) -> Result<Block, GpuError> {
        self.timed(Direction::DeviceToDevice, len_bytes, || {
            self.shared.tier.copy_from_device(address, len_bytes)
        })
    }

    /// `len_bytes` of device memory at `address` copied to host memory: one device→host
    /// transfer, counted and timed here. See [`Tier::read_device`].
    pub fn read_device(&self, address: u64, len_bytes: usize) -> Result<Bytes, GpuError> {
        self.timed(Direction::DeviceToHost, len_bytes, || {
            self.shared.tier.read_device(address, len_bytes)
        })
    }

    fn insert_with(
        &self,
        key: &str,
        version: u64,
        len_bytes: u64,
        make_block: impl FnOnce() -> Result<Block, GpuError>,
    ) -> Result<PinnedView, GpuError> {
        let begun = {
            let mut index = self.lock();
            let begun = index.begin_insert(key, version, len_bytes);
            self.publish(&index); // even when refused: an older version may be gone
            begun
        };
        let dropped = match begun? {
            Begin::Present(pinned) => return Ok(self.view(pinned)),
            Begin::Reserved { dropped, evicted } => {
                self.shared.metrics.evictions.inc_by(evicted);
                dropped
            }
        };
        drop(dropped); // free evicted memory before allocating, outside the lock
        // The upload runs without the lock: a large copy does not stall other lookups.
        let uploaded = make_block();
        let mut index = self.lock();
        let block = match uploaded {
            Ok(block) => block,
            Err(error) => {
                index.cancel_reservation(len_bytes);
                self.publish(&index);
                return Err(error);
            }
        };
        assert_eq!(
            block.len_bytes() as u64,
            len_bytes,
            "the tier returned the length asked"
        );
        let finished = index.finish_insert(key, version, len_bytes, Arc::new(block));
        self.publish(&index);
        drop(index);
        let (pinned, _freed_outside_lock) = finished?;
        Ok(self.view(pinned))
    }

    /// The cached object (`key`, exactly `version`), pinned until the view is dropped.
    /// Counts a hit or a miss; an older or newer cached version is a miss.
    pub fn get(&self, key: &str, version: u64) -> Option<PinnedView> {
        let mut index = self.lock();
        let Some(pinned) = index.lookup(key, version) else {
            self.shared.metrics.misses.inc();
            return None;
        };
        self.shared.metrics.hits.inc();
        self.publish(&index);
        drop(index);
        Some(self.view(pinned))
    }

    /// The cached object's bytes in host memory, for a reader on the host side: one
    /// tier→host transfer (none on the host tier). `Ok(None)` on a miss.
    pub fn to_host(&self, key: &str, version: u64) -> Result<Option<Bytes>, GpuError> {
        let Some(view) = self.get(key, version) else {
            return Ok(None);
        };
        view.to_host().map(Some)
    }

    /// Stops caching `key` (the object was deleted or is no longer wanted). Memory pinned by
    /// views stays until they are dropped. Returns whether the key was cached.
    pub fn remove(&self, key: &str) -> bool {
        let mut index = self.lock();
        let removed = index.remove(key);
        self.publish(&index);
        drop(index);
        removed.is_some()
    }

    /// Checks the bookkeeping invariants (O(entries)); panics if one is broken. For tests.
    pub fn check_invariants(&self) {
        let index = self.lock();
        index.check_invariants();
        let snapshot = self.shared.metrics.snapshot();
        assert_eq!(snapshot.used_bytes, index.used_bytes(), "used-bytes gauge");
        assert_eq!(
            snapshot.entries,
            index.live_entries() as u64,
            "entries gauge"
        );
    }

    fn upload(&self, bytes: &Bytes) -> Result<Block, GpuError> {
        let tier = &self.shared.tier;
        if !tier.copies_host_bytes() {
            return tier.upload(bytes);
        }
        self.timed(Direction::HostToDevice, bytes.len(), || tier.upload(bytes))
    }

    fn download(&self, block: &Block) -> Result<Bytes, GpuError> {
        let tier = &self.shared.tier;
        if !tier.copies_host_bytes() {
            return tier.copy_to_host(block);
        }
        self.timed(Direction::DeviceToHost, block.len_bytes(), || {
            tier.copy_to_host(block)
        })
    }

    /// Runs a transfer of `len_bytes` and, if it succeeds, counts and times it.
    fn timed<T>(
        &self,
        direction: Direction,
        len_bytes: usize,
        transfer: impl FnOnce() -> Result<T, GpuError>,
    ) -> Result<T, GpuError> {
        let started = Instant::now();
        let done = transfer()?;
        self.shared
            .metrics
            .record_transfer(direction, len_bytes, started.elapsed().as_secs_f64());
        Ok(done)
    }

    fn view(&self, pinned: Pinned<Arc<Block>>) -> PinnedView {
        PinnedView {
            cache: self.clone(),
            id: pinned.id,
            key: pinned.key,
            version: pinned.version,
            block: pinned.value,
        }
    }

    /// The lock over the bookkeeping. A panic while it was held (an invariant assertion)
    /// poisons it; the state is still the last consistent one the assertions saw, and
    /// unpinning from `Drop` must not panic again, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, LruIndex<Arc<Block>>> {
        self.shared
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, index: &LruIndex<Arc<Block>>) {
        let metrics = &self.shared.metrics;
        metrics.used_bytes.set(gauge_value(index.used_bytes()));
        metrics
            .entries
            .set(gauge_value(index.live_entries() as u64));
        metrics
            .pinned_entries
            .set(gauge_value(index.pinned_live_entries() as u64));
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A cached object in use: while this guard lives the entry is pinned (never evicted, its
/// memory never freed or moved). Dropping it unpins. Cloning adds a pin.
#[derive(Debug)]
pub struct PinnedView {
    cache: DeviceCache,
    id: EntryId,
    key: Arc<str>,
    version: u64,
    block: Arc<Block>,
}

impl PinnedView {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len_bytes(&self) -> u64 {
        self.block.len_bytes() as u64
    }

    /// Address, length, device and stream, for launching GPU work on the object.
    pub fn view(&self) -> DeviceView {
        DeviceView {
            address: self.block.address(),
            len_bytes: self.len_bytes(),
            location: self.block.location(),
            stream_handle: self.cache.shared.tier.stream_handle(),
        }
    }

    pub fn block(&self) -> &Block {
        &self.block
    }

    /// On the host tier: the very `Bytes` that was inserted (zero copy). `None` elsewhere.
    pub fn host_bytes(&self) -> Option<&Bytes> {
        self.block.host_bytes()
    }

    /// The object's bytes in host memory: one tier→host transfer, counted (none on the
    /// host tier).
    pub fn to_host(&self) -> Result<Bytes, GpuError> {
        self.cache.download(&self.block)
    }
}

impl Clone for PinnedView {
    fn clone(&self) -> Self {
        let mut index = self.cache.lock();
        let pinned = index.pin(self.id);
        self.cache.publish(&index);
        drop(index);
        self.cache.view(pinned)
    }
}

impl Drop for PinnedView {
    fn drop(&mut self) {
        let mut index = self.cache.lock();
        let freed = index.unpin(self.id);
        self.cache.publish(&index);
        drop(index);
        drop(freed); // a retired entry's memory, freed outside the lock
    }
}
