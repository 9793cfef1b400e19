//! Object pools: a path prefix mapped to a store kind, a subgroup of the layout and a
//! sharding policy. Pools never nest, so a key belongs to at most one pool and the
//! lookup is a walk up its ancestors. The table is the metadata pool's state: every node
//! applies the same create/remove operations in the same order and holds the same table.

use std::collections::BTreeMap;

use regex::Regex;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::key::{self, KeyError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// Latest version of each key, in memory; answered once delivered.
    Volatile,
    /// Every version, in the durable log; answered once durable on every replica.
    Persistent,
    /// Not stored: objects only trigger user logic where they arrive.
    Trigger,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Volatile => "volatile",
            StoreKind::Persistent => "persistent",
            StoreKind::Trigger => "trigger",
        }
    }

    pub fn parse(name: &str) -> Option<StoreKind> {
        match name {
            "volatile" => Some(StoreKind::Volatile),
            "persistent" => Some(StoreKind::Persistent),
            "trigger" => Some(StoreKind::Trigger),
            _ => None,
        }
    }
}

/// What a client asks for when it creates a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub path: String,
    pub kind: StoreKind,
    pub subgroup: u32,
    /// Shards of the subgroup the pool spreads over (the first `shards`); 0 = all.
    pub shards: u32,
    /// Keys whose match of this regex is equal land on one shard (the match is hashed
    /// instead of the key).
    pub affinity: Option<String>,
    /// Keys pinned to a shard, overriding the hash.
    pub overrides: BTreeMap<String, u32>,
    /// Keep the pool's objects cached on a GPU (the `gpu_cache` pool option). Only
    /// persistent and volatile pools can: a trigger pool stores nothing to cache.
    pub gpu_cache: Option<GpuCache>,
    /// Which pool made at this path this is: assigned by the cluster when the creation is
    /// applied (the metadata version it was delivered at), so a pool made again at a path
    /// has a greater one than every pool there before. Writes name it, so a write made
    /// for a removed pool is refused rather than landing in its successor. 0 in a request
    /// (a client does not choose it) and in logs written before generations.
    pub generation: u64,
}

/// A pool's `gpu_cache` option as replicated metadata: which GPU and how many bytes. The
/// node opens a `squall_gpu::DeviceCache` from it; this crate only carries and checks it
/// (no GPU code here: the store is pure logic, and simulated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpuCache {
    /// CUDA device ordinal.
    pub device: u32,
    pub capacity_bytes: u64,
}

impl PoolSpec {
    pub fn new(path: impl Into<String>, kind: StoreKind, subgroup: u32) -> PoolSpec {
        PoolSpec {
            path: path.into(),
            kind,
            subgroup,
            shards: 0,
            affinity: None,
            overrides: BTreeMap::new(),
            gpu_cache: None,
            generation: 0,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PoolError {
    #[error("invalid pool path: {0}")]
    Path(#[from] KeyError),
    #[error("pool {path} already exists")]
    Exists { path: String },
    #[error("pool {path} would nest with existing pool {existing}; pools cannot nest")]
    Nested { path: String, existing: String },
    #[error("no pool {path}")]
    NoSuchPool { path: String },
    #[error("no pool holds key {key}")]
    NoPoolForKey { key: String },
    #[error("the layout has no subgroup {subgroup} for {kind} pools")]
    NoSuchSubgroup { subgroup: u32, kind: &'static str },
    #[error("pool asks for {asked} shards; subgroup {subgroup} has {available}")]
    TooManyShards {
        subgroup: u32,
        asked: u32,
        available: u32,
    },
    #[error("affinity regex `{regex}` is invalid: {reason}")]
    Affinity { regex: String, reason: String },
    #[error("override of {key}: {reason}")]
    Override { key: String, reason: String },
    #[error("the pool table is full ({max} pools)")]
    TooMany { max: usize },
    /// `gpu_cache` on a pool that cannot have it (a trigger pool stores nothing), or
    /// with a zero capacity.
    #[error("pool {path}: {reason}")]
    GpuCache { path: String, reason: String },
    /// A pool at or around the path was removed and its objects are still being
    /// dropped (`squall pool rm` finishes that; run it again if it was interrupted).
    #[error(
        "pool {removing} is still being removed (its objects are being dropped); \
         retry, or finish it with `squall pool rm {removing}` if that was interrupted"
    )]
    BeingRemoved { path: String, removing: String },
}

/// Only stored pools can be GPU-cached, and a cache must be able to hold something.
fn check_gpu_cache(spec: &PoolSpec) -> Result<(), PoolError> {
    let Some(gpu_cache) = spec.gpu_cache else {
        return Ok(());
    };
    let refuse = |reason: &str| {
        Err(PoolError::GpuCache {
            path: spec.path.clone(),
            reason: reason.to_string(),
        })
    };
    if spec.kind == StoreKind::Trigger {
        return refuse(
            "a trigger pool stores nothing, so it cannot have a gpu_cache; \
             only persistent and volatile pools can",
        );
    }
    if gpu_cache.capacity_bytes == 0 {
        return refuse("gpu_cache capacity must be more than 0 bytes");
    }
    Ok(())
}

/// A created pool, its regex compiled.
#[derive(Clone, Debug)]
pub struct Pool {
    pub spec: PoolSpec,
    /// Shards actually used (the spec's, or the subgroup's when it said 0).
    pub shards: u32,
    affinity: Option<Regex>,
}

impl Pool {
    /// The shard (of the pool's subgroup) that holds `key`: an override, else a stable
    /// hash (xxh3) of the affinity match or of the whole key.
    pub fn shard_of(&self, key: &str) -> u32 {
        if let Some(shard) = self.spec.overrides.get(key) {
            return *shard;
        }
        let basis = self
            .affinity
            .as_ref()
            .and_then(|re| re.find(key))
            .map_or(key, |m| m.as_str());
        (xxh3_64(basis.as_bytes()) % u64::from(self.shards.max(1))) as u32
    }
}

/// Every pool, by path.
#[derive(Clone, Debug, Default)]
pub struct PoolTable {
    pools: BTreeMap<String, Pool>,
    /// Pools removed whose objects are still being dropped from their shards
    /// (`Op::DropPool`), until `Op::PoolDropped`: no key finds them, and no pool can be
    /// made at or around their path meanwhile, so nothing written to a new pool there
    /// can be dropped with the old one's objects.
    removing: BTreeMap<String, Pool>,
    key_bytes_max: usize,
    pools_max: usize,
}

impl PoolTable {
    pub fn new(key_bytes_max: usize, pools_max: usize) -> PoolTable {
        PoolTable {
            pools: BTreeMap::new(),
            removing: BTreeMap::new(),
            key_bytes_max,
            pools_max,
        }
    }

    /// Validates `spec` against the table and the layout (`shards_per_subgroup[g]`) and
    /// adds it. Nothing changes on error.
    pub fn create(&mut self, spec: PoolSpec, shards_per_subgroup: &[u32]) -> Result<(), PoolError> {
        key::validate_pool_path(&spec.path, self.key_bytes_max)?;
        if self.pools.contains_key(&spec.path) {
            return Err(PoolError::Exists { path: spec.path });
        }
        // A path at, above or below one of `paths`.
        let around = |paths: &BTreeMap<String, Pool>| {
            paths
                .keys()
                .find(|p| key::contains(p, &spec.path) || key::contains(&spec.path, p))
                .cloned()
        };
        if let Some(existing) = around(&self.pools) {
            return Err(PoolError::Nested {
                path: spec.path.clone(),
                existing,
            });
        }
        if let Some(removing) = around(&self.removing) {
            return Err(PoolError::BeingRemoved {
                path: spec.path.clone(),
                removing,
            });
        }
        if self.pools.len() >= self.pools_max {
            return Err(PoolError::TooMany {
                max: self.pools_max,
            });
        }
        check_gpu_cache(&spec)?;
        let available =
            *shards_per_subgroup
                .get(spec.subgroup as usize)
                .ok_or(PoolError::NoSuchSubgroup {
                    subgroup: spec.subgroup,
                    kind: spec.kind.name(),
                })?;
        let shards = if spec.shards == 0 {
            available
        } else {
            spec.shards
        };
        if shards > available || shards == 0 {
            return Err(PoolError::TooManyShards {
                subgroup: spec.subgroup,
                asked: spec.shards,
                available,
            });
        }
        let affinity = match &spec.affinity {
            Some(re) => Some(Regex::new(re).map_err(|e| PoolError::Affinity {
                regex: re.clone(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        for (key, shard) in &spec.overrides {
            key::validate_key(key, self.key_bytes_max).map_err(|e| PoolError::Override {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if !key::contains(&spec.path, key) || key == &spec.path {
                return Err(PoolError::Override {
                    key: key.clone(),
                    reason: format!("not a key of pool {}", spec.path),
                });
            }
            if *shard >= shards {
                return Err(PoolError::Override {
                    key: key.clone(),
                    reason: format!("shard {shard} is not one of the pool's {shards}"),
                });
            }
        }
        let path = spec.path.clone();
        self.pools.insert(
            path,
            Pool {
                spec,
                shards,
                affinity,
            },
        );
        Ok(())
    }

    /// Removes a pool: no key finds it from now on, and it is being removed until
    /// [`PoolTable::dropped`] says its objects are gone. Removing a pool that is being
    /// removed again gives it again (its remover may have stopped half-way).
    pub fn remove(&mut self, path: &str) -> Result<Pool, PoolError> {
        if let Some(pool) = self.removing.get(path) {
            return Ok(pool.clone());
        }
        let pool = self
            .pools
            .remove(path)
            .ok_or_else(|| PoolError::NoSuchPool {
                path: path.to_string(),
            })?;
        self.removing.insert(path.to_string(), pool.clone());
        Ok(pool)
    }

    /// The objects of removed pool `path` of `generation` (0: whichever) are gone from
    /// every shard: a pool may be made there again. Nothing happens if it is not being
    /// removed, or if the pool being removed there is another generation (a late repeat
    /// of an earlier removal's end must not end a later one's before its drops).
    pub fn dropped(&mut self, path: &str, generation: u64) {
        if self
            .removing
            .get(path)
            .is_some_and(|p| generation == 0 || p.spec.generation == generation)
        {
            self.removing.remove(path);
        }
    }

    /// The removed pool at `path` whose objects are still being dropped, if any.
    pub fn removing(&self, path: &str) -> Option<&Pool> {
        self.removing.get(path)
    }

    pub fn get(&self, path: &str) -> Option<&Pool> {
        self.pools.get(path)
    }

    /// The pool that holds `key` (an ancestor of it; pools do not nest, so at most one).
    pub fn find(&self, key: &str) -> Result<&Pool, PoolError> {
        let mut at = key;
        while let Some(cut) = at.rfind('/') {
            at = &at[..cut];
            if at.is_empty() {
                break;
            }
            if let Some(pool) = self.pools.get(at) {
                return Ok(pool);
            }
        }
        Err(PoolError::NoPoolForKey {
            key: key.to_string(),
        })
    }

    pub fn list(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// The removed pools whose objects are still being dropped.
    pub fn list_removing(&self) -> impl Iterator<Item = &Pool> {
        self.removing.values()
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PoolTable {
        PoolTable::new(256, 16)
    }

    #[test]
    fn pools_do_not_nest_and_keys_find_their_pool() {
        let mut t = table();
        t.create(PoolSpec::new("/photos", StoreKind::Persistent, 1), &[1, 4])
            .expect("created");
        t.create(PoolSpec::new("/photos2", StoreKind::Volatile, 1), &[1, 4])
            .expect("a sibling, not nested");
        assert!(matches!(
            t.create(
                PoolSpec::new("/photos/cats", StoreKind::Volatile, 1),
                &[1, 4]
            ),
            Err(PoolError::Nested { .. })
        ));
        assert!(matches!(
            t.create(PoolSpec::new("/", StoreKind::Volatile, 1), &[1, 4]),
            Err(PoolError::Path(KeyError::Root))
        ));
        assert!(matches!(
            t.create(PoolSpec::new("/photos", StoreKind::Volatile, 1), &[1, 4]),
            Err(PoolError::Exists { .. })
        ));
        assert_eq!(
            t.find("/photos/cats/1.jpg").map(|p| p.spec.path.as_str()),
            Ok("/photos")
        );
        assert_eq!(t.find("/photos2/x").map(|p| p.shards), Ok(4));
        assert!(matches!(
            t.find("/photos"),
            Err(PoolError::NoPoolForKey { .. })
        ));
        assert!(matches!(
            t.find("/other/x"),
            Err(PoolError::NoPoolForKey { .. })
        ));
        t.remove("/photos").expect("removed");
        assert!(matches!(
            t.find("/photos/a"),
            Err(PoolError::NoPoolForKey { .. })
        ));
    }

    #[test]
    fn bad_specs_change_nothing() {
        let mut t = table();
        let mut spec = PoolSpec::new("/a", StoreKind::Volatile, 3);
        assert!(matches!(
            t.create(spec.clone(), &[1, 2]),
            Err(PoolError::NoSuchSubgroup { .. })
        ));
        spec.subgroup = 1;
        spec.shards = 3;
        assert!(matches!(
            t.create(spec.clone(), &[1, 2]),
            Err(PoolError::TooManyShards { .. })
        ));
        spec.shards = 0;
        spec.affinity = Some("(".to_string());
        assert!(matches!(
            t.create(spec.clone(), &[1, 2]),
            Err(PoolError::Affinity { .. })
        ));
        spec.affinity = None;
        spec.overrides.insert("/b/x".to_string(), 0);
        assert!(matches!(
            t.create(spec.clone(), &[1, 2]),
            Err(PoolError::Override { .. })
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn only_stored_pools_can_be_gpu_cached() {
        let mut t = table();
        let gpu_cache = GpuCache {
            device: 0,
            capacity_bytes: 1 << 30,
        };
        let mut trigger = PoolSpec::new("/t", StoreKind::Trigger, 1);
        trigger.gpu_cache = Some(gpu_cache);
        assert!(matches!(
            t.create(trigger, &[1, 2]),
            Err(PoolError::GpuCache { .. })
        ));
        let mut empty = PoolSpec::new("/e", StoreKind::Volatile, 1);
        empty.gpu_cache = Some(GpuCache {
            device: 0,
            capacity_bytes: 0,
        });
        assert!(matches!(
            t.create(empty, &[1, 2]),
            Err(PoolError::GpuCache { .. })
        ));
        assert!(t.is_empty());
        for (path, kind) in [("/v", StoreKind::Volatile), ("/p", StoreKind::Persistent)] {
            let mut spec = PoolSpec::new(path, kind, 1);
            spec.gpu_cache = Some(gpu_cache);
            t.create(spec, &[1, 2])
                .expect("a stored pool can be GPU-cached");
            assert_eq!(t.get(path).and_then(|p| p.spec.gpu_cache), Some(gpu_cache));
        }
    }

    #[test]
    fn sharding_is_stable_with_affinity_and_overrides() {
        let mut t = table();
        let mut spec = PoolSpec::new("/cams", StoreKind::Volatile, 0);
        spec.affinity = Some("cam[0-9]+".to_string());
        spec.overrides.insert("/cams/special".to_string(), 2);
        t.create(spec, &[8]).expect("created");
        let pool = t.get("/cams").expect("exists");
        // Same camera, same shard, whatever the frame.
        let s = pool.shard_of("/cams/cam7/frame-1");
        for i in 0..50 {
            assert_eq!(pool.shard_of(&format!("/cams/cam7/frame-{i}")), s);
        }
        assert_eq!(pool.shard_of("/cams/special"), 2);
        // Without affinity, keys spread over every shard.
        let spread: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| pool.shard_of(&format!("/cams/x{i}")))
            .collect();
        assert_eq!(spread.len(), 8);
        // A pinned value: the hash never changes across builds or machines.
        assert_eq!(pool.shard_of("/cams/x0"), (xxh3_64(b"/cams/x0") % 8) as u32);
    }
}
