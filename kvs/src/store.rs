//! One shard's store: the deterministic state machine every replica runs over the shard's
//! delivered operations. Same operations in the same order give the same objects,
//! versions, timestamps, conflicts and duplicate answers everywhere, so any replica can
//! answer any read, and a client's retry is answered like its first try.
//!
//! Volatile stores keep the latest object of each key. Persistent stores keep every
//! version's metadata (for reads by version and by time) and the latest blob; older blobs
//! are read back from the log through a [`VersionReader`]. Trigger stores keep nothing.
//!
//! A persistent store's history is forgotten on request, in the shard's order
//! ([`Op::Compact`]), so every replica forgets the same versions at the same point and
//! answers every later operation alike. What is forgotten is recorded (a [`Horizon`] per
//! pool, and per key where an older value was dropped), so a read of the past that would
//! need it answers [`ReadError::Compacted`] rather than a wrong "not found".

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_platform::Version;
use thiserror::Error;

use crate::op::{
    Condition, MessageId, Op, OpError, get_str, get_u8, get_u64, get_version, need, put_str,
    put_version,
};
use crate::pool::StoreKind;

mod snapshot;

pub use snapshot::{SnapshotLoader, SnapshotStream};

/// Bounds of one store. Duplicate detection remembers a window of recent requests per
/// client for a bounded number of clients (the least recently active is forgotten first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    pub object_bytes_max: usize,
    pub dedup_clients_max: usize,
    pub dedup_per_client_max: usize,
    /// A volatile store keeps its most recent changes (values included) up to this many
    /// bytes, so a watch that resumes here gets every version it missed, not only each
    /// key's latest ([`ShardStore::changes_after`]). 0 keeps none.
    pub watch_replay_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            object_bytes_max: 64 << 20,
            dedup_clients_max: 4096,
            dedup_per_client_max: 256,
            watch_replay_bytes: 16 << 20,
        }
    }
}

/// Values smaller than this are copied into a volatile store's recent changes rather
/// than shared: a small value is usually a slice of a larger buffer it arrived in (a
/// client's read buffer, a batch of messages), which sharing would keep alive long after
/// the store moved on, several times what the limit counts (measured: 64 MiB more on a
/// shard's first member for 16 MiB of 1 KiB puts). Copying one costs a `memcpy` of at
/// most this much per write; a larger value is most of whatever buffer holds it.
const RECENT_COPY_BELOW_BYTES: usize = 16 << 10;

/// A volatile store's most recent changes, oldest first, for watches that resume
/// (persistent stores have every version's metadata, and the log, instead).
#[derive(Debug, Default)]
struct Recent {
    changes: VecDeque<Change>,
    /// What `changes` accounts for ([`Recent::cost`]), at most
    /// [`StoreLimits::watch_replay_bytes`].
    bytes: usize,
    /// Every write after this point is in `changes` (`None`: every write since the store
    /// began); it moves up as the oldest are forgotten.
    complete_after: Option<Version>,
}

impl Recent {
    /// What a change costs: its value (shared with the store, but kept alive by the
    /// change once the key moves on), its key and its metadata.
    fn cost(change: &Change) -> usize {
        change.blob.as_ref().map_or(0, Bytes::len) + change.key.len() + size_of::<Change>()
    }

    fn push(&mut self, mut change: Change, bytes_max: usize) {
        if bytes_max == 0 {
            self.complete_after = Some(change.meta.version);
            return;
        }
        if let Some(blob) = change.blob.as_mut()
            && blob.len() < RECENT_COPY_BELOW_BYTES
        {
            *blob = Bytes::copy_from_slice(blob);
        }
        self.bytes += Recent::cost(&change);
        self.changes.push_back(change);
        while self.bytes > bytes_max {
            let Some(oldest) = self.changes.pop_front() else {
                break;
            };
            self.bytes -= Recent::cost(&oldest);
            self.complete_after = Some(oldest.meta.version);
        }
        debug_assert!(
            self.bytes <= bytes_max,
            "the replay holds {} bytes",
            self.bytes
        );
    }

    /// Forgets the changes of keys `gone` says are gone (a dropped pool's).
    fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        let before = self.changes.len();
        self.changes.retain(|c| !gone(&c.key));
        if self.changes.len() != before {
            self.bytes = self.changes.iter().map(Recent::cost).sum();
        }
    }
}

/// An object as stored and returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: Arc<str>,
    /// Shares the delivered buffer.
    pub blob: Bytes,
    pub version: Version,
    /// Hybrid logical clock, µs; strictly increasing along the shard.
    pub timestamp_us: u64,
    /// The shard's previous version (any key).
    pub previous_version: Option<Version>,
    /// This key's previous version.
    pub previous_key_version: Option<Version>,
    pub message_id: MessageId,
    /// A remove: the key does not exist as of this version.
    pub tombstone: bool,
}

/// What applying an operation did; identical at every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        version: Version,
        timestamp_us: u64,
    },
    /// The condition did not hold; `current` is what it was checked against.
    Conflict {
        current: Option<Version>,
    },
    NoSuchKey,
    TooLarge {
        size: usize,
        max: usize,
    },
    /// An ordered read point (`Op::Read`).
    ReadPoint {
        version: Version,
    },
    /// History forgotten (`Op::Compact`): the pool's versions up to `through` (stamped
    /// `timestamp_us`), except the value then of each key not written since. `through` is
    /// `None` when the pool had nothing that old; counts are what this operation dropped.
    Compacted {
        through: Option<Version>,
        timestamp_us: u64,
        versions_dropped: u64,
        keys_dropped: u64,
    },
    /// A pool's objects dropped (`Op::DropPool`): how many keys (live or removed) and
    /// versions went.
    Dropped {
        keys_dropped: u64,
        versions_dropped: u64,
    },
    /// A write made for a pool generation this shard has dropped since (its pool was
    /// removed while the write was on its way): nothing is written.
    PoolRemoved {
        pool: String,
        generation: u64,
    },
}

/// Removed pools whose drops a shard remembers ([`ShardStore`]'s `dropped`), to refuse
/// writes made for them that arrive late. Past it the oldest removal is forgotten, the
/// same at every replica; a write for that pool arriving later still would land as an
/// orphan no key of a live pool finds (unless a pool is made at that path once more).
pub const DROPPED_POOLS_MAX: usize = 4096;

/// How far back a pool's history is kept: reads as of a point before `through` (in
/// version or time) answer [`ReadError::Compacted`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Horizon {
    pub pool: Arc<str>,
    /// The newest write of the pool that was compacted to; a key not written since keeps
    /// its value as of it.
    pub through: Version,
    pub timestamp_us: u64,
}

impl Horizon {
    fn as_meta(&self) -> VersionMeta {
        VersionMeta {
            version: self.through,
            timestamp_us: self.timestamp_us,
            size: 0,
            tombstone: false,
        }
    }
}

/// Metadata of one version of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    pub version: Version,
    pub timestamp_us: u64,
    pub size: usize,
    pub tombstone: bool,
}

/// One change in [`ShardStore::changes_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Arc<str>,
    pub meta: VersionMeta,
    /// The value if it is the key's latest (in memory); `None` for a removal or for an
    /// older version, whose value is in the log.
    pub blob: Option<Bytes>,
}

/// Reads the blob of an older version from durable storage (the node's log).
pub trait VersionReader {
    fn read(&self, version: Version) -> Result<Option<Bytes>, String>;
}

/// A reader for stores that have no history to read (volatile, tests).
#[derive(Debug)]
pub struct NoHistory;

impl VersionReader for NoHistory {
    fn read(&self, _: Version) -> Result<Option<Bytes>, String> {
        Ok(None)
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    #[error("{kind} pools keep no history: reads by version or time need a persistent pool")]
    NotVersioned { kind: &'static str },
    #[error("version {version} of {key} is not in the log")]
    Missing { key: String, version: Version },
    #[error("reading the log: {0}")]
    Log(String),
    #[error("the history of {key} before version {through} ({timestamp_us} µs) is no longer kept")]
    Compacted {
        key: String,
        through: Version,
        timestamp_us: u64,
    },
}

#[derive(Clone, Debug)]
struct KeyEntry {
    /// Oldest first. Volatile: only the latest.
    versions: Vec<VersionMeta>,
    latest: Object,
    /// The first version kept when a compaction dropped the value this key had just
    /// before it: reads as of an earlier point need what was dropped.
    history_from: Option<VersionMeta>,
}

#[derive(Clone, Debug, Default)]
struct ClientWindow {
    recent: VecDeque<(u64, Outcome)>,
    last_active: Option<Version>,
}

#[derive(Debug)]
pub struct ShardStore {
    kind: StoreKind,
    limits: StoreLimits,
    keys: HashMap<Arc<str>, KeyEntry>,
    /// The latest write (the shard's current version, for conditions and back links).
    last_version: Option<Version>,
    /// The latest operation delivered (writes, duplicates, conflicts, read points).
    last_delivered: Option<Version>,
    last_timestamp_us: u64,
    dedup: HashMap<u64, ClientWindow>,
    /// Clients by last activity, for evicting the least recently active.
    activity: BTreeMap<Version, u64>,
    /// Per pool compacted, how far back its history goes (pools cannot nest, so a key
    /// is under at most one).
    horizons: Vec<Horizon>,
    /// Per pool path dropped (`Op::DropPool` naming a generation): the newest generation
    /// dropped there. Writes made for it or an older one are refused, and a repeat of its
    /// drop does nothing. At most [`DROPPED_POOLS_MAX`].
    dropped: HashMap<Arc<str>, u64>,
    /// A volatile store's recent changes (empty otherwise).
    recent: Recent,
}

impl ShardStore {
    pub fn new(kind: StoreKind, limits: StoreLimits) -> ShardStore {
        ShardStore {
            kind,
            limits,
            keys: HashMap::new(),
            last_version: None,
            last_delivered: None,
            last_timestamp_us: 0,
            dedup: HashMap::new(),
            activity: BTreeMap::new(),
            horizons: Vec::new(),
            dropped: HashMap::new(),
            recent: Recent::default(),
        }
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    pub fn last_version(&self) -> Option<Version> {
        self.last_version
    }

    /// Applies the operation delivered as `version`. Versions must increase (delivery
    /// order); a request id seen before is answered as the first time, unapplied.
    /// Returns the outcome and whether it was a duplicate.
    pub fn apply(&mut self, version: Version, op: &Op) -> (Outcome, bool) {
        assert!(
            self.last_delivered < Some(version),
            "versions are applied in delivery order: {version} after {:?}",
            self.last_delivered
        );
        self.last_delivered = Some(version);
        let id = op.id();
        if let Some(previous) = self.remembered(id) {
            return (previous, true);
        }
        // A write made for a pool this shard has dropped since: refused, whatever it is.
        let removed = match op {
            Op::Put {
                pool_generation,
                key,
                ..
            }
            | Op::Remove {
                pool_generation,
                key,
                ..
            } => self
                .removed_pool(key, *pool_generation)
                .map(|(pool, generation)| Outcome::PoolRemoved {
                    pool: pool.to_string(),
                    generation,
                }),
            _ => None,
        };
        let outcome = match removed {
            Some(refused) => refused,
            None => self.apply_op(version, op, id),
        };
        if matches!(outcome, Outcome::Applied { .. }) {
            self.last_version = Some(version);
        }
        self.remember(id, version, outcome.clone());
        (outcome, false)
    }

    /// What `op`, delivered as `version`, does to the store (its pool not removed).
    fn apply_op(&mut self, version: Version, op: &Op, id: MessageId) -> Outcome {
        match op {
            Op::Put {
                hlc_us,
                condition,
                key,
                blob,
                ..
            } => self.put(version, *hlc_us, *condition, key, blob.clone(), id, false),
            Op::Remove {
                hlc_us,
                condition,
                key,
                ..
            } => self.put(version, *hlc_us, *condition, key, Bytes::new(), id, true),
            Op::Read { .. } => Outcome::ReadPoint { version },
            // Pool operations belong to the metadata shard, not to a data store.
            Op::CreatePool { .. }
            | Op::RemovePool { .. }
            | Op::PutUdl { .. }
            | Op::RemoveUdl { .. }
            | Op::AddDfgs { .. }
            | Op::RemoveDfg { .. }
            | Op::UdlDone { .. }
            | Op::OutboxDone { .. }
            | Op::StorageAlarm { .. }
            | Op::PoolDropped { .. }
            | Op::CompactMetadata { .. } => Outcome::ReadPoint { version },
            Op::Compact {
                pool, before_us, ..
            } => self.compact(pool, *before_us),
            Op::DropPool {
                pool, generation, ..
            } => self.drop_pool(pool, *generation),
            // Queued by the node's outbox, not stored as an object: it gets a version
            // and a timestamp (the outbox's order) and is applied once per message id.
            Op::OutboxPut { hlc_us, .. } => {
                let timestamp_us = (*hlc_us).max(self.last_timestamp_us + 1);
                self.last_timestamp_us = timestamp_us;
                Outcome::Applied {
                    version,
                    timestamp_us,
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the fields of one put
    fn put(
        &mut self,
        version: Version,
        hlc_us: u64,
        condition: Condition,
        key: &str,
        blob: Bytes,
        id: MessageId,
        tombstone: bool,
    ) -> Outcome {
        if blob.len() > self.limits.object_bytes_max {
            return Outcome::TooLarge {
                size: blob.len(),
                max: self.limits.object_bytes_max,
            };
        }
        let key_version = self.keys.get(key).map(|e| e.latest.version);
        let live_version = self.latest(key).map(|o| o.version);
        match condition {
            Condition::Always => {}
            Condition::KeyVersion(expected) if expected != live_version => {
                return Outcome::Conflict {
                    current: live_version,
                };
            }
            Condition::ShardVersion(expected) if expected != self.last_version => {
                return Outcome::Conflict {
                    current: self.last_version,
                };
            }
            Condition::KeyVersion(_) | Condition::ShardVersion(_) => {}
        }
        if tombstone && live_version.is_none() {
            return Outcome::NoSuchKey;
        }
        let timestamp_us = hlc_us.max(self.last_timestamp_us + 1);
        self.last_timestamp_us = timestamp_us;
        if self.kind == StoreKind::Trigger {
            return Outcome::Applied {
                version,
                timestamp_us,
            };
        }
        let key: Arc<str> = match self.keys.get_key_value(key) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(key),
        };
        let meta = VersionMeta {
            version,
            timestamp_us,
            size: blob.len(),
            tombstone,
        };
        let object = Object {
            key: Arc::clone(&key),
            blob,
            version,
            timestamp_us,
            previous_version: self.last_version,
            previous_key_version: key_version,
            message_id: id,
            tombstone,
        };
        if self.kind == StoreKind::Volatile {
            let change = Change {
                key: Arc::clone(&key),
                meta,
                blob: (!tombstone).then(|| object.blob.clone()),
            };
            self.recent.push(change, self.limits.watch_replay_bytes);
        }
        match self.keys.get_mut(&key) {
            Some(entry) => {
                if self.kind == StoreKind::Volatile {
                    entry.versions.clear();
                }
                entry.versions.push(meta);
                entry.latest = object;
            }
            None => {
                self.keys.insert(
                    key,
                    KeyEntry {
                        versions: vec![meta],
                        latest: object,
                        history_from: None,
                    },
                );
            }
        }
        Outcome::Applied {
            version,
            timestamp_us,
        }
    }

    /// Forgets the history of `pool`'s keys before the newest of its writes stamped at or
    /// before `before_us` (call it C): each key keeps its versions after C and its value
    /// as of C unless that is a removal; a key whose last version by C removed it is
    /// dropped whole (a later put of it has no previous key version). Deterministic: it
    /// depends only on the store, so every replica drops the same.
    fn compact(&mut self, pool: &str, before_us: u64) -> Outcome {
        let horizon = self.horizon(pool).cloned();
        let no_op = |h: Option<Horizon>| Outcome::Compacted {
            through: h.as_ref().map(|h| h.through),
            timestamp_us: h.map_or(0, |h| h.timestamp_us),
            versions_dropped: 0,
            keys_dropped: 0,
        };
        let Some(point) = self.compaction_point(pool, before_us) else {
            return no_op(horizon);
        };
        let under = |k: &str| crate::key::contains(pool, k);
        let through = point.version;
        let (mut versions_dropped, mut keys_dropped) = (0u64, 0u64);
        self.keys.retain(|k, e| {
            if !under(k) {
                return true;
            }
            let n = e.versions.partition_point(|m| m.version <= through);
            if n == 0 {
                return true;
            }
            if n == e.versions.len() {
                if e.versions[n - 1].tombstone {
                    versions_dropped += n as u64;
                    keys_dropped += 1;
                    return false;
                }
                // Its value as of C is its latest: in memory, not in the log.
                e.versions.drain(..n - 1);
                versions_dropped += (n - 1) as u64;
                e.history_from = None;
                return true;
            }
            let dropped_live = !e.versions[n - 1].tombstone;
            e.versions.drain(..n);
            versions_dropped += n as u64;
            e.history_from = dropped_live.then(|| e.versions[0]);
            true
        });
        let new = Horizon {
            pool: Arc::from(pool),
            through,
            timestamp_us: point.timestamp_us,
        };
        match self.horizons.iter_mut().find(|h| &*h.pool == pool) {
            Some(h) => *h = new,
            None => self.horizons.push(new),
        }
        Outcome::Compacted {
            through: Some(through),
            timestamp_us: point.timestamp_us,
            versions_dropped,
            keys_dropped,
        }
    }

    /// The removed pool (path, generation dropped) whose drop refuses a write of `key`
    /// made for `generation`, if any: a pool at or above the key dropped at that
    /// generation or a later one. Generation 0 (logs before generations) is not checked.
    fn removed_pool(&self, key: &str, generation: u64) -> Option<(&str, u64)> {
        if generation == 0 || self.dropped.is_empty() {
            return None;
        }
        let mut at = key;
        while let Some(cut) = at.rfind('/') {
            at = &at[..cut];
            if at.is_empty() {
                break;
            }
            if let Some((path, &dropped)) = self.dropped.get_key_value(at)
                && dropped >= generation
            {
                return Some((path, dropped));
            }
        }
        None
    }

    /// Drops every key under `pool` with all its versions, and the pool's horizon: what
    /// a removed pool left, so that a pool made at its path again starts empty. A drop of
    /// a generation already dropped here does nothing: it is a second remover's, and
    /// the keys under the path now may be a newer pool's.
    fn drop_pool(&mut self, pool: &str, generation: u64) -> Outcome {
        if generation != 0 {
            if self.dropped.get(pool).is_some_and(|&g| g >= generation) {
                return Outcome::Dropped {
                    keys_dropped: 0,
                    versions_dropped: 0,
                };
            }
            self.dropped.insert(Arc::from(pool), generation);
            if self.dropped.len() > DROPPED_POOLS_MAX {
                // The oldest removal (ties by path, so every replica forgets the same).
                let oldest = self
                    .dropped
                    .iter()
                    .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
                    .map(|(path, _)| Arc::clone(path));
                if let Some(path) = oldest {
                    self.dropped.remove(&path);
                }
            }
        }
        self.recent.forget(|k| crate::key::contains(pool, k));
        let (mut keys_dropped, mut versions_dropped) = (0u64, 0u64);
        self.keys.retain(|k, e| {
            if !crate::key::contains(pool, k) {
                return true;
            }
            keys_dropped += 1;
            versions_dropped += e.versions.len() as u64;
            false
        });
        self.horizons.retain(|h| &*h.pool != pool);
        Outcome::Dropped {
            keys_dropped,
            versions_dropped,
        }
    }

    /// The point a compaction of `pool` before `before_us` would compact to: the pool's
    /// newest write stamped at or before it, if past the pool's horizon (and the store
    /// keeps history at all).
    fn compaction_point(&self, pool: &str, before_us: u64) -> Option<VersionMeta> {
        if self.kind != StoreKind::Persistent {
            return None;
        }
        // Timestamps increase along each key's versions as versions do.
        let point = self
            .keys
            .iter()
            .filter(|(k, _)| crate::key::contains(pool, k))
            .filter_map(|(_, e)| {
                let n = e.versions.partition_point(|m| m.timestamp_us <= before_us);
                n.checked_sub(1).map(|i| e.versions[i])
            })
            .max_by_key(|m| m.version)?;
        match self.horizon(pool) {
            Some(h) if h.through >= point.version => None,
            _ => Some(point),
        }
    }

    /// Whether a compaction of `pool` before `before_us` would forget anything: lets a
    /// node that compacts on a schedule send nothing when there is nothing to forget.
    pub fn would_compact(&self, pool: &str, before_us: u64) -> bool {
        let Some(point) = self.compaction_point(pool, before_us) else {
            return false;
        };
        self.keys
            .iter()
            .filter(|(k, _)| crate::key::contains(pool, k))
            .any(|(_, e)| {
                let n = e.versions.partition_point(|m| m.version <= point.version);
                n > 0 && (n < e.versions.len() || n > 1 || e.versions[n - 1].tombstone)
            })
    }

    /// How far back the history of the pool at `pool` goes, if it was ever compacted.
    fn horizon(&self, pool: &str) -> Option<&Horizon> {
        self.horizons.iter().find(|h| &*h.pool == pool)
    }

    /// The horizon of the pool `key` is in.
    fn horizon_of(&self, key: &str) -> Option<&Horizon> {
        self.horizons
            .iter()
            .find(|h| crate::key::contains(&h.pool, key))
    }

    /// [`ReadError::Compacted`] if a pool under or over `prefix` has a horizon the read
    /// reaches `before`.
    fn check_horizons(
        &self,
        prefix: &str,
        before: impl Fn(&Horizon) -> bool,
    ) -> Result<(), ReadError> {
        match self
            .horizons
            .iter()
            .find(|h| overlap(&h.pool, prefix) && before(h))
        {
            Some(h) => Err(ReadError::Compacted {
                key: prefix.to_string(),
                through: h.through,
                timestamp_us: h.timestamp_us,
            }),
            None => Ok(()),
        }
    }

    /// Every pool's horizon.
    pub fn horizons(&self) -> &[Horizon] {
        &self.horizons
    }

    /// The oldest version the store may still read from the log (a key's version older
    /// than its latest), `None` if none: log records below it are needed by no read.
    pub fn history_floor(&self) -> Option<Version> {
        self.keys
            .values()
            .filter(|e| e.versions.len() > 1)
            .map(|e| e.versions[0].version)
            .min()
    }

    fn remembered(&self, id: MessageId) -> Option<Outcome> {
        self.dedup
            .get(&id.client)?
            .recent
            .iter()
            .find(|(seq, _)| *seq == id.seq)
            .map(|(_, outcome)| outcome.clone())
    }

    fn remember(&mut self, id: MessageId, version: Version, outcome: Outcome) {
        let window = self.dedup.entry(id.client).or_default();
        if let Some(old) = window.last_active.replace(version) {
            self.activity.remove(&old);
        }
        self.activity.insert(version, id.client);
        window.recent.push_back((id.seq, outcome));
        while window.recent.len() > self.limits.dedup_per_client_max {
            window.recent.pop_front();
        }
        while self.dedup.len() > self.limits.dedup_clients_max {
            let Some((_, client)) = self.activity.pop_first() else {
                break;
            };
            self.dedup.remove(&client);
        }
    }

    /// The latest object of `key`, unless it is removed.
    pub fn latest(&self, key: &str) -> Option<&Object> {
        self.keys
            .get(key)
            .map(|e| &e.latest)
            .filter(|o| !o.tombstone)
    }

    /// Size of the latest object of `key`.
    pub fn size(&self, key: &str) -> Option<usize> {
        self.latest(key).map(|o| o.blob.len())
    }

    /// `key` as of shard version `at`: its latest version not above `at`.
    pub fn at_version(
        &self,
        key: &str,
        at: Version,
        reader: &dyn VersionReader,
    ) -> Result<Option<Object>, ReadError> {
        self.at(key, reader, |m| m.version <= at)
    }

    /// `key` as of time `t_us`: its latest version with a timestamp not above `t_us`.
    pub fn at_time(
        &self,
        key: &str,
        t_us: u64,
        reader: &dyn VersionReader,
    ) -> Result<Option<Object>, ReadError> {
        self.at(key, reader, |m| m.timestamp_us <= t_us)
    }

    fn at(
        &self,
        key: &str,
        reader: &dyn VersionReader,
        visible: impl Fn(&VersionMeta) -> bool,
    ) -> Result<Option<Object>, ReadError> {
        if self.kind != StoreKind::Persistent {
            return Err(ReadError::NotVersioned {
                kind: self.kind.name(),
            });
        }
        let compacted = |meta: VersionMeta| ReadError::Compacted {
            key: key.to_string(),
            through: meta.version,
            timestamp_us: meta.timestamp_us,
        };
        if let Some(h) = self.horizon_of(key)
            && !visible(&h.as_meta())
        {
            return Err(compacted(h.as_meta()));
        }
        let Some(entry) = self.keys.get(key) else {
            return Ok(None);
        };
        if let Some(from) = entry.history_from
            && !visible(&from)
        {
            return Err(compacted(from));
        }
        // Versions and timestamps both increase along the list.
        let n = entry.versions.partition_point(|m| visible(m));
        let Some(i) = n.checked_sub(1) else {
            return Ok(None);
        };
        let meta = entry.versions[i];
        if meta.tombstone {
            return Ok(None);
        }
        if meta.version == entry.latest.version {
            return Ok(Some(entry.latest.clone()));
        }
        let blob = reader
            .read(meta.version)
            .map_err(ReadError::Log)?
            .ok_or_else(|| ReadError::Missing {
                key: key.to_string(),
                version: meta.version,
            })?;
        Ok(Some(Object {
            key: Arc::clone(&entry.latest.key),
            blob,
            version: meta.version,
            timestamp_us: meta.timestamp_us,
            previous_version: None,
            previous_key_version: i.checked_sub(1).map(|p| entry.versions[p].version),
            message_id: MessageId { client: 0, seq: 0 },
            tombstone: false,
        }))
    }

    /// Every version of `key` (persistent: all; volatile: the latest).
    pub fn versions(&self, key: &str) -> &[VersionMeta] {
        self.keys.get(key).map_or(&[], |e| e.versions.as_slice())
    }

    /// Keys under `prefix` that exist now (or at time `at_us`), sorted. A time before
    /// the horizon of a pool under (or over) `prefix` is [`ReadError::Compacted`].
    pub fn list_keys(&self, prefix: &str, at_us: Option<u64>) -> Result<Vec<Arc<str>>, ReadError> {
        if let Some(t) = at_us {
            self.check_horizons(prefix, |h| t < h.timestamp_us)?;
        }
        let mut keys: Vec<Arc<str>> = self
            .keys
            .iter()
            .filter(|(k, _)| crate::key::contains(prefix, k) || prefix == "/")
            .filter(|(_, e)| match at_us {
                None => !e.latest.tombstone,
                // Before its first kept version, the key held the value dropped.
                Some(t) if e.history_from.is_some_and(|f| t < f.timestamp_us) => true,
                Some(t) => {
                    let n = e.versions.partition_point(|m| m.timestamp_us <= t);
                    n > 0 && !e.versions[n - 1].tombstone
                }
            })
            .map(|(k, _)| Arc::clone(k))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// The changes to keys under `prefix` after version `after` (all with `None`), oldest
    /// first: what a watch that broke off there missed. A persistent store has every
    /// version. A volatile one has every version since a point its recent changes reach
    /// back to ([`StoreLimits::watch_replay_bytes`]; a store that came as a snapshot, from
    /// that point); before it, only each key's latest, so the versions in between are
    /// skipped (each key still ends at its current value or removal). From the start
    /// (`None`), the changes still held; after a point a compaction forgot, the changes
    /// since cannot all be given: [`ReadError::Compacted`].
    pub fn changes_after(
        &self,
        prefix: &str,
        after: Option<Version>,
    ) -> Result<Vec<Change>, ReadError> {
        if let Some(after) = after {
            self.check_horizons(prefix, |h| after < h.through)?;
        }
        if self.kind == StoreKind::Volatile && after >= self.recent.complete_after {
            let recent = &self.recent.changes;
            let from = recent.partition_point(|c| Some(c.meta.version) <= after);
            return Ok(recent
                .range(from..)
                .filter(|c| crate::key::contains(prefix, &c.key))
                .cloned()
                .collect());
        }
        let mut changes: Vec<Change> = self
            .keys
            .iter()
            .filter(|(k, _)| crate::key::contains(prefix, k))
            .flat_map(|(k, e)| {
                let from = e.versions.partition_point(|m| Some(m.version) <= after);
                e.versions[from..].iter().map(|m| Change {
                    key: Arc::clone(k),
                    meta: *m,
                    blob: (m.version == e.latest.version && !m.tombstone)
                        .then(|| e.latest.blob.clone()),
                })
            })
            .collect();
        changes.sort_unstable_by_key(|c| c.meta.version);
        Ok(changes)
    }

    /// The newest operation delivered to this shard (writes, duplicates, conflicts).
    pub fn last_delivered(&self) -> Option<Version> {
        self.last_delivered
    }

    /// Live keys under `prefix` and the bytes of their latest values (a pass over the
    /// shard's keys: for metrics sampled now and then, not for every request).
    pub fn usage(&self, prefix: &str) -> (usize, u64) {
        self.keys
            .iter()
            .filter(|(k, e)| !e.latest.tombstone && crate::key::contains(prefix, k))
            .fold((0, 0), |(n, b), (_, e)| {
                (n + 1, b + e.latest.blob.len() as u64)
            })
    }

    pub fn key_count(&self) -> usize {
        self.keys.values().filter(|e| !e.latest.tombstone).count()
    }

    /// The whole state (objects, version history, retry memory) in one piece: see
    /// [`ShardStore::snapshot_stream`] for the format. Blobs are copied into it once.
    pub fn snapshot(&self) -> Bytes {
        self.snapshot_stream().next_piece(usize::MAX).0
    }

    /// The state as of now, for a state transfer where no log carries it (volatile
    /// stores), encoded a piece at a time: this takes the stores' metadata only (keys,
    /// versions, retry memory), while blobs stay shared until their piece is encoded.
    pub fn snapshot_stream(&self) -> SnapshotStream {
        SnapshotStream::new(self)
    }

    /// Rebuilds a store from [`ShardStore::snapshot`]'s bytes; blobs share `bytes`.
    pub fn from_snapshot(
        kind: StoreKind,
        limits: StoreLimits,
        bytes: Bytes,
    ) -> Result<ShardStore, OpError> {
        let mut loader = SnapshotLoader::new(kind, limits);
        loader.push(bytes)?;
        loader.finish()
    }
}

fn put_outcome(out: &mut BytesMut, o: &Outcome) {
    match o {
        Outcome::Applied {
            version,
            timestamp_us,
        } => {
            out.put_u8(0);
            out.put_u64_le(version.0);
            out.put_u64_le(*timestamp_us);
        }
        Outcome::Conflict { current } => {
            out.put_u8(1);
            put_version(out, *current);
        }
        Outcome::NoSuchKey => out.put_u8(2),
        Outcome::TooLarge { size, max } => {
            out.put_u8(3);
            out.put_u64_le(*size as u64);
            out.put_u64_le(*max as u64);
        }
        Outcome::ReadPoint { version } => {
            out.put_u8(4);
            out.put_u64_le(version.0);
        }
        Outcome::Compacted {
            through,
            timestamp_us,
            versions_dropped,
            keys_dropped,
        } => {
            out.put_u8(5);
            put_version(out, *through);
            out.put_u64_le(*timestamp_us);
            out.put_u64_le(*versions_dropped);
            out.put_u64_le(*keys_dropped);
        }
        Outcome::Dropped {
            keys_dropped,
            versions_dropped,
        } => {
            out.put_u8(6);
            out.put_u64_le(*keys_dropped);
            out.put_u64_le(*versions_dropped);
        }
        Outcome::PoolRemoved { pool, generation } => {
            out.put_u8(7);
            put_str(out, pool);
            out.put_u64_le(*generation);
        }
    }
}

/// Whether one of two path prefixes contains the other (a pool and a listed prefix).
fn overlap(pool: &str, prefix: &str) -> bool {
    prefix == "/" || crate::key::contains(pool, prefix) || crate::key::contains(prefix, pool)
}

/// A count of entries of at least `min_bytes` each, refused if the rest cannot hold it.
fn get_count(r: &mut Bytes, what: &'static str, min_bytes: usize) -> Result<usize, OpError> {
    need(r, 4, what)?;
    let n = r.get_u32_le() as usize;
    need(r, n.saturating_mul(min_bytes), what)?;
    Ok(n)
}

fn get_outcome(r: &mut Bytes) -> Result<Outcome, OpError> {
    Ok(match get_u8(r, "outcome")? {
        0 => Outcome::Applied {
            version: Version(get_u64(r, "version")?),
            timestamp_us: get_u64(r, "timestamp")?,
        },
        1 => Outcome::Conflict {
            current: get_version(r)?,
        },
        2 => Outcome::NoSuchKey,
        3 => Outcome::TooLarge {
            size: get_u64(r, "size")? as usize,
            max: get_u64(r, "max")? as usize,
        },
        4 => Outcome::ReadPoint {
            version: Version(get_u64(r, "version")?),
        },
        5 => Outcome::Compacted {
            through: get_version(r)?,
            timestamp_us: get_u64(r, "timestamp")?,
            versions_dropped: get_u64(r, "count")?,
            keys_dropped: get_u64(r, "count")?,
        },
        6 => Outcome::Dropped {
            keys_dropped: get_u64(r, "count")?,
            versions_dropped: get_u64(r, "count")?,
        },
        7 => Outcome::PoolRemoved {
            pool: get_str(r, "pool")?,
            generation: get_u64(r, "pool generation")?,
        },
        tag => {
            return Err(OpError::UnknownTag {
                what: "outcome",
                tag,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { client: 1, seq }
    }

    fn put(seq: u64, key: &str, value: &'static [u8], condition: Condition) -> Op {
        Op::Put {
            id: id(seq),
            hlc_us: 1_000 + seq,
            condition,
            pool_generation: 0,
            key: key.into(),
            blob: Bytes::from_static(value),
        }
    }

    /// An unconditional remove (timestamp 0, no pool generation named).
    fn remove(seq: u64, key: &str) -> Op {
        Op::Remove {
            id: id(seq),
            hlc_us: 0,
            condition: Condition::Always,
            pool_generation: 0,
            key: key.into(),
        }
    }

    fn v(seq: u32) -> Version {
        Version::new(1, seq)
    }

    /// History blobs kept by the test instead of a log.
    struct Log(HashMap<Version, Bytes>);
    impl VersionReader for Log {
        fn read(&self, version: Version) -> Result<Option<Bytes>, String> {
            Ok(self.0.get(&version).cloned())
        }
    }

    #[test]
    fn persistent_store_keeps_versions_and_time() {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        let mut log = Log(HashMap::new());
        for (i, value) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
            let op = put(i as u64, "/p/a", value, Condition::Always);
            let (outcome, dup) = s.apply(v(i as u32), &op);
            assert!(!dup);
            assert!(matches!(outcome, Outcome::Applied { .. }));
            log.0.insert(v(i as u32), Bytes::from_static(value));
        }
        assert_eq!(s.latest("/p/a").map(|o| &o.blob[..]), Some(&b"three"[..]));
        let at1 = s.at_version("/p/a", v(1), &log).expect("readable");
        assert_eq!(at1.map(|o| o.blob), Some(Bytes::from_static(b"two")));
        let t0 = s.versions("/p/a")[0].timestamp_us;
        let at_t0 = s.at_time("/p/a", t0, &log).expect("readable");
        assert_eq!(at_t0.map(|o| o.blob), Some(Bytes::from_static(b"one")));
        assert_eq!(s.at_time("/p/a", t0 - 1, &log), Ok(None));
        // Remove: gone now, still there in the past.
        let rm = remove(10, "/p/a");
        assert!(matches!(s.apply(v(5), &rm).0, Outcome::Applied { .. }));
        assert_eq!(s.latest("/p/a"), None);
        assert!(s.list_keys("/p", None).expect("listed").is_empty());
        assert_eq!(s.list_keys("/p", Some(t0)).expect("listed").len(), 1);
        assert_eq!(s.apply(v(6), &remove(11, "/p/a")).0, Outcome::NoSuchKey);
        // Timestamps increase along the shard even when the sender's clock does not.
        let ts: Vec<u64> = s.versions("/p/a").iter().map(|m| m.timestamp_us).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    }

    #[test]
    fn outbox_entries_are_ordered_once_and_not_stored() {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        let entry = Op::OutboxPut {
            id: id(1),
            hlc_us: 5,
            site: "cloud".into(),
            trigger: false,
            key: "/ingest/a".into(),
            blob: Bytes::from_static(b"frame"),
        };
        let (first, dup) = s.apply(v(0), &entry);
        assert!(!dup);
        assert!(matches!(first, Outcome::Applied { version, .. } if version == v(0)));
        // A retry (the same message id) is the same answer and queues nothing new.
        let (again, dup) = s.apply(v(1), &entry);
        assert!(dup);
        assert_eq!(again, first);
        assert_eq!(s.key_count(), 0, "outbox entries are not objects");
        assert!(s.latest("/ingest/a").is_none());
    }

    #[test]
    fn conditions_and_duplicates_are_deterministic() {
        let mut s = ShardStore::new(StoreKind::Volatile, StoreLimits::default());
        let create = put(1, "/p/a", b"x", Condition::KeyVersion(None));
        assert!(matches!(s.apply(v(0), &create).0, Outcome::Applied { .. }));
        // The same request again (a client retry): the first answer, nothing applied.
        let (again, dup) = s.apply(v(1), &create);
        assert!(dup);
        assert_eq!(
            again,
            Outcome::Applied {
                version: v(0),
                timestamp_us: 1_001
            }
        );
        assert_eq!(s.versions("/p/a").len(), 1);
        // A create of an existing key conflicts and names the current version.
        let (conflict, _) = s.apply(v(2), &put(2, "/p/a", b"y", Condition::KeyVersion(None)));
        assert_eq!(
            conflict,
            Outcome::Conflict {
                current: Some(v(0))
            }
        );
        let update = put(3, "/p/a", b"z", Condition::KeyVersion(Some(v(0))));
        assert!(matches!(s.apply(v(3), &update).0, Outcome::Applied { .. }));
        assert_eq!(
            s.latest("/p/a").map(|o| o.previous_key_version),
            Some(Some(v(0)))
        );
        // Volatile stores answer no history.
        assert!(matches!(
            s.at_version("/p/a", v(0), &NoHistory),
            Err(ReadError::NotVersioned { .. })
        ));
        let shard_cond = put(4, "/p/b", b"w", Condition::ShardVersion(Some(v(2))));
        assert_eq!(
            s.apply(v(4), &shard_cond).0,
            Outcome::Conflict {
                current: Some(v(3))
            }
        );
    }

    #[test]
    fn duplicate_memory_is_bounded() {
        let limits = StoreLimits {
            dedup_clients_max: 2,
            dedup_per_client_max: 2,
            ..StoreLimits::default()
        };
        let mut s = ShardStore::new(StoreKind::Volatile, limits);
        let op = |client: u64, seq: u64| Op::Put {
            id: MessageId { client, seq },
            hlc_us: 0,
            condition: Condition::Always,
            pool_generation: 0,
            key: "/p/k".into(),
            blob: Bytes::new(),
        };
        let mut n = 0;
        let mut next = || {
            n += 1;
            v(n)
        };
        for client in 1..=3 {
            for seq in 0..3 {
                s.apply(next(), &op(client, seq));
            }
        }
        assert!(s.dedup.len() <= 2);
        assert!(s.dedup.values().all(|w| w.recent.len() <= 2));
        // Client 1 was forgotten (least recently active): its old id applies again.
        assert!(!s.apply(next(), &op(1, 2)).1);
        // Client 3's latest id is still remembered.
        assert!(s.apply(next(), &op(3, 2)).1);
    }

    #[test]
    fn snapshots_restore_the_same_store() {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        s.apply(v(0), &put(0, "/p/a", b"one", Condition::Always));
        s.apply(v(1), &put(1, "/p/a", b"two", Condition::Always));
        s.apply(v(2), &put(2, "/p/b", b"x", Condition::Always));
        let rm = remove(3, "/p/b");
        s.apply(v(3), &rm);
        let bytes = s.snapshot();
        let mut back =
            ShardStore::from_snapshot(StoreKind::Persistent, StoreLimits::default(), bytes.clone())
                .expect("restores");
        assert_eq!(back.snapshot(), bytes);
        assert_eq!(back.latest("/p/a"), s.latest("/p/a"));
        assert_eq!(back.versions("/p/a"), s.versions("/p/a"));
        // Retry memory came along: the same request is still a duplicate there.
        assert!(
            back.apply(v(4), &put(1, "/p/a", b"two", Condition::Always))
                .1
        );
        for cut in [0, 5, bytes.len() - 1] {
            assert!(
                ShardStore::from_snapshot(
                    StoreKind::Persistent,
                    StoreLimits::default(),
                    bytes.slice(..cut)
                )
                .is_err()
            );
        }
    }

    #[test]
    fn oversized_objects_are_refused() {
        let limits = StoreLimits {
            object_bytes_max: 2,
            ..StoreLimits::default()
        };
        let mut s = ShardStore::new(StoreKind::Volatile, limits);
        assert_eq!(
            s.apply(v(0), &put(0, "/p/a", b"abc", Condition::Always)).0,
            Outcome::TooLarge { size: 3, max: 2 }
        );
        assert_eq!(s.latest("/p/a"), None);
    }

    #[test]
    fn changes_after_a_version_are_every_version_or_each_latest() {
        // A volatile store with its recent changes, and one keeping none.
        for (kind, watch_replay_bytes) in [
            (StoreKind::Persistent, 0),
            (StoreKind::Volatile, 1 << 20),
            (StoreKind::Volatile, 0),
        ] {
            let limits = StoreLimits {
                watch_replay_bytes,
                ..StoreLimits::default()
            };
            let mut s = ShardStore::new(kind, limits);
            s.apply(v(1), &put(1, "/p/a", b"a1", Condition::Always));
            s.apply(v(2), &put(2, "/p/b", b"b1", Condition::Always));
            s.apply(v(3), &put(3, "/p/a", b"a2", Condition::Always));
            s.apply(v(4), &put(4, "/q/x", b"x", Condition::Always));
            s.apply(v(5), &remove(5, "/p/b"));
            s.apply(v(6), &put(6, "/p/a", b"a3", Condition::Always));
            let seen = |after| {
                s.changes_after("/p", after)
                    .expect("nothing compacted")
                    .into_iter()
                    .map(|c| (c.meta.version, c.key.to_string(), c.meta.tombstone, c.blob))
                    .collect::<Vec<_>>()
            };
            let a3 = (
                v(6),
                "/p/a".to_string(),
                false,
                Some(Bytes::from_static(b"a3")),
            );
            let b_removed = (v(5), "/p/b".to_string(), true, None);
            match (kind, watch_replay_bytes) {
                (StoreKind::Persistent, _) => {
                    // Every version after v1, oldest first; older values are in the log.
                    let b1 = (v(2), "/p/b".to_string(), false, None);
                    let a2 = (v(3), "/p/a".to_string(), false, None);
                    assert_eq!(seen(Some(v(1))), vec![b1, a2, b_removed, a3.clone()]);
                    assert_eq!(seen(None).len(), 5);
                }
                (_, 1..) => {
                    // Every version, with its value: the recent changes hold them.
                    let b1 = (
                        v(2),
                        "/p/b".to_string(),
                        false,
                        Some(Bytes::from_static(b"b1")),
                    );
                    let a2 = (
                        v(3),
                        "/p/a".to_string(),
                        false,
                        Some(Bytes::from_static(b"a2")),
                    );
                    assert_eq!(seen(Some(v(1))), vec![b1, a2, b_removed, a3.clone()]);
                    assert_eq!(seen(None).len(), 5);
                }
                _ => {
                    // Only each key's latest: its value now, or its removal.
                    assert_eq!(seen(Some(v(1))), vec![b_removed, a3.clone()]);
                    assert_eq!(seen(None).len(), 2);
                }
            }
            assert_eq!(seen(Some(v(5))), vec![a3]);
            assert_eq!(seen(Some(v(6))), vec![]);
        }
    }

    fn compact(seq: u64, pool: &str, before_us: u64) -> Op {
        Op::Compact {
            id: id(seq),
            pool: pool.into(),
            shard: 0,
            before_us,
        }
    }

    /// Puts (hlc = 1000 + seq, so the timestamp of `v(n)` is 1000 + n) and removes:
    /// `/p/a` a1 a2 | a3, `/p/b` b1 removed |, `/p/c` c1 |, `/p/d` removed | d2,
    /// `/q/x` x1 x2 |, where `|` is v(8), the point a compaction before 1008 µs finds.
    fn compactable() -> (ShardStore, Log) {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        let mut log = Log(HashMap::new());
        let remove = |seq: u64, key: &str| Op::Remove {
            id: id(seq),
            hlc_us: 1_000 + seq,
            condition: Condition::Always,
            pool_generation: 0,
            key: key.into(),
        };
        let ops = [
            put(1, "/p/a", b"a1", Condition::Always),
            put(2, "/p/b", b"b1", Condition::Always),
            put(3, "/p/a", b"a2", Condition::Always),
            put(4, "/p/c", b"c1", Condition::Always),
            put(5, "/p/d", b"d1", Condition::Always),
            remove(6, "/p/b"),
            put(7, "/q/x", b"x1", Condition::Always),
            remove(8, "/p/d"),
            put(9, "/p/a", b"a3", Condition::Always),
            put(10, "/p/d", b"d2", Condition::Always),
            put(11, "/q/x", b"x2", Condition::Always),
        ];
        for (i, op) in ops.iter().enumerate() {
            let seq = i as u32 + 1;
            let (outcome, _) = s.apply(v(seq), op);
            assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
            if let Op::Put { blob, .. } = op {
                log.0.insert(v(seq), blob.clone());
            }
        }
        (s, log)
    }

    fn value(s: &ShardStore, log: &Log, key: &str, t_us: u64) -> Result<Option<Bytes>, ReadError> {
        s.at_time(key, t_us, log).map(|o| o.map(|o| o.blob))
    }

    #[test]
    fn compaction_keeps_each_value_as_of_its_point_and_everything_after() {
        let (mut s, log) = compactable();
        let floor_before = s.history_floor();
        assert_eq!(floor_before, Some(v(1)), "a1 is an older version of /p/a");
        assert!(s.would_compact("/p", 1_008));
        assert!(!s.would_compact("/p", 1_000), "nothing that old");
        let (outcome, _) = s.apply(v(12), &compact(12, "/p", 1_008));
        assert!(!s.would_compact("/p", 1_008), "done");
        assert!(
            !s.would_compact("/p", u64::MAX),
            "one live version per key: nothing to forget"
        );
        assert!(s.would_compact("/q", u64::MAX), "x1 is older than x2");
        assert_eq!(
            outcome,
            Outcome::Compacted {
                through: Some(v(8)),
                timestamp_us: 1_008,
                // a1, a2; b1 and b's removal; d1 and d's removal.
                versions_dropped: 6,
                keys_dropped: 1,
            }
        );
        assert_eq!(s.last_version(), Some(v(11)), "a compaction is not a write");
        let b = |v: &'static [u8]| Ok(Some(Bytes::from_static(v)));
        // As of the point and later, every answer is what it was.
        assert_eq!(
            value(&s, &log, "/p/a", 1_008),
            Err(ReadError::Compacted {
                key: "/p/a".into(),
                through: v(9),
                timestamp_us: 1_009,
            }),
            "a2 was /p/a's value at the point, and it was dropped"
        );
        assert_eq!(value(&s, &log, "/p/a", 1_009), b(b"a3"));
        assert_eq!(value(&s, &log, "/p/b", 1_008), Ok(None));
        assert_eq!(value(&s, &log, "/p/c", 1_008), b(b"c1"));
        assert_eq!(value(&s, &log, "/p/d", 1_008), Ok(None), "removed then");
        assert_eq!(value(&s, &log, "/p/d", 1_010), b(b"d2"));
        // Before it: compacted, whatever the key.
        for key in ["/p/a", "/p/b", "/p/c", "/p/zzz"] {
            assert!(
                matches!(
                    value(&s, &log, key, 1_007),
                    Err(ReadError::Compacted { .. })
                ),
                "{key}"
            );
        }
        assert!(matches!(
            s.at_version("/p/c", v(7), &log),
            Err(ReadError::Compacted { .. })
        ));
        // Another pool of the shard keeps its history.
        assert_eq!(value(&s, &log, "/q/x", 1_007), b(b"x1"));
        assert_eq!(
            s.history_floor(),
            Some(v(7)),
            "x1 is the oldest version left"
        );
        // Listings: /p/a existed at 1008 (a2, dropped), /p/d did not.
        let names = |keys: Vec<Arc<str>>| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(s.list_keys("/p", Some(1_008)).expect("after the point")),
            ["/p/a", "/p/c"]
        );
        assert!(matches!(
            s.list_keys("/p", Some(1_007)),
            Err(ReadError::Compacted { .. })
        ));
        assert!(matches!(
            s.list_keys("/", Some(1_007)),
            Err(ReadError::Compacted { .. })
        ));
        assert_eq!(
            names(s.list_keys("/q", Some(1_007)).expect("not compacted")),
            ["/q/x"]
        );
        // A watch resuming before the point cannot get every change; after, it can.
        assert!(matches!(
            s.changes_after("/p", Some(v(7))),
            Err(ReadError::Compacted { .. })
        ));
        assert_eq!(s.changes_after("/p", Some(v(8))).expect("kept").len(), 2);
        assert_eq!(s.changes_after("/p", None).expect("what is kept").len(), 3);
        // The removed key is gone whole: a new put of it has no previous key version.
        s.apply(v(13), &put(13, "/p/b", b"b2", Condition::Always));
        assert_eq!(s.latest("/p/b").expect("put").previous_key_version, None);
        // Compacting again to an older or the same point drops nothing more.
        let (again, _) = s.apply(v(14), &compact(14, "/p", 1_005));
        assert!(matches!(
            again,
            Outcome::Compacted { through: Some(t), versions_dropped: 0, .. } if t == v(8)
        ));
    }

    #[test]
    fn a_compacted_store_travels_whole_in_a_snapshot() {
        let (mut s, log) = compactable();
        s.apply(v(12), &compact(12, "/p", 1_008));
        let copy =
            ShardStore::from_snapshot(StoreKind::Persistent, StoreLimits::default(), s.snapshot())
                .expect("loads");
        assert_eq!(copy.horizons(), s.horizons());
        for key in ["/p/a", "/p/b", "/p/c", "/p/d", "/q/x"] {
            assert_eq!(copy.versions(key), s.versions(key), "{key}");
            for t in 1_000..1_013 {
                assert_eq!(
                    value(&copy, &log, key, t),
                    value(&s, &log, key, t),
                    "{key} at {t}"
                );
            }
        }
        assert_eq!(copy.history_floor(), s.history_floor());
    }

    #[test]
    fn compacting_other_stores_or_a_pool_with_nothing_that_old_drops_nothing() {
        let (mut s, _) = compactable();
        let (outcome, _) = s.apply(v(12), &compact(12, "/p", 999));
        assert_eq!(
            outcome,
            Outcome::Compacted {
                through: None,
                timestamp_us: 0,
                versions_dropped: 0,
                keys_dropped: 0
            }
        );
        assert!(s.horizons().is_empty());
        let mut volatile = ShardStore::new(StoreKind::Volatile, StoreLimits::default());
        volatile.apply(v(1), &put(1, "/p/a", b"a", Condition::Always));
        let (outcome, _) = volatile.apply(v(2), &compact(2, "/p", u64::MAX));
        assert!(matches!(outcome, Outcome::Compacted { through: None, .. }));
        assert!(volatile.latest("/p/a").is_some());
    }

    /// A removed pool's objects go with their history and its horizon, and a pool made
    /// at the path again starts empty; other pools are untouched.
    #[test]
    fn dropping_a_pool_leaves_nothing_of_it() {
        let (mut s, log) = compactable();
        s.apply(v(12), &compact(12, "/p", 1_008));
        let drop = Op::DropPool {
            id: id(13),
            pool: "/p".into(),
            shard: 0,
            generation: 0,
        };
        // Left by the compaction: a3, c1, d2 (b was removed by its point).
        let (outcome, _) = s.apply(v(13), &drop);
        assert_eq!(outcome, outcome_of_drop());
        assert!(s.horizons().is_empty());
        assert_eq!(s.list_keys("/p", None), Ok(vec![]));
        // Before the drop is not "compacted" any more: the pool there now never had it.
        assert_eq!(value(&s, &log, "/p/a", 1_005), Ok(None));
        assert_eq!(s.list_keys("/p", Some(1_005)), Ok(vec![]));
        assert_eq!(
            value(&s, &log, "/q/x", 1_012).map(|b| b.is_some()),
            Ok(true)
        );
        // Made again: a put is the key's first version (no earlier one to point back to).
        let (outcome, _) = s.apply(v(14), &put(14, "/p/a", b"new", Condition::KeyVersion(None)));
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
        assert_eq!(s.versions("/p/a").len(), 1);
        // A retry of the drop is answered as before, not applied again.
        let (again, duplicate) = s.apply(v(15), &drop);
        assert!(duplicate);
        assert_eq!(again, outcome_of_drop());
        assert!(s.latest("/p/a").is_some());
        // Its outcome survives the retry memory's encoding.
        let mut buf = BytesMut::new();
        put_outcome(&mut buf, &again);
        assert_eq!(get_outcome(&mut buf.freeze()), Ok(again));
    }

    fn put_for(seq: u64, key: &str, pool_generation: u64) -> Op {
        Op::Put {
            id: id(seq),
            hlc_us: 1_000 + seq,
            condition: Condition::Always,
            pool_generation,
            key: key.into(),
            blob: Bytes::from_static(b"x"),
        }
    }

    fn drop_of(seq: u64, pool: &str, generation: u64) -> Op {
        Op::DropPool {
            id: id(seq),
            pool: pool.into(),
            shard: 0,
            generation,
        }
    }

    /// A write made for a pool generation that was dropped before it arrived is refused
    /// (it would be an orphan a later pool there shows), a newer pool's writes are not,
    /// and a second drop of the same generation (a second remover's) leaves the newer
    /// pool's objects alone.
    #[test]
    fn writes_for_a_dropped_pool_generation_are_refused() {
        let mut s = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        let applied = |o: &Outcome| matches!(o, Outcome::Applied { .. });
        assert!(applied(&s.apply(v(1), &put_for(1, "/p/a", 5)).0));
        let (outcome, _) = s.apply(v(2), &drop_of(2, "/p", 5));
        assert_eq!(
            outcome,
            Outcome::Dropped {
                keys_dropped: 1,
                versions_dropped: 1
            }
        );
        let removed = Outcome::PoolRemoved {
            pool: "/p".into(),
            generation: 5,
        };
        // Late: validated before the removal, delivered after the drop.
        assert_eq!(s.apply(v(3), &put_for(3, "/p/b", 5)).0, removed);
        let late_remove = Op::Remove {
            id: id(4),
            hlc_us: 0,
            condition: Condition::Always,
            pool_generation: 4,
            key: "/p/a".into(),
        };
        assert_eq!(s.apply(v(4), &late_remove).0, removed);
        assert_eq!(s.list_keys("/p", None), Ok(vec![]));
        assert_eq!(s.last_version(), Some(v(1)), "a refused write is no write");
        // The pool made again there has a greater generation.
        assert!(applied(&s.apply(v(5), &put_for(5, "/p/c", 9)).0));
        // A second remover of generation 5, late: nothing of generation 9 goes.
        let (again, duplicate) = s.apply(v(6), &drop_of(6, "/p", 5));
        assert!(!duplicate);
        assert_eq!(
            again,
            Outcome::Dropped {
                keys_dropped: 0,
                versions_dropped: 0
            }
        );
        assert!(s.latest("/p/c").is_some());
        // Logs written before generations are applied as they were.
        assert!(applied(&s.apply(v(7), &put_for(7, "/p/d", 0)).0));
        // A pool made above a removed one: its writes pass, the removed one's do not.
        s.apply(v(8), &drop_of(8, "/q/r", 3));
        assert!(applied(&s.apply(v(9), &put_for(9, "/q/r/x", 10)).0));
        assert!(matches!(
            s.apply(v(10), &put_for(10, "/q/r/y", 3)).0,
            Outcome::PoolRemoved { generation: 3, .. }
        ));
        // The refusal survives the retry memory's encoding, and the dropped generations
        // a snapshot.
        let mut buf = BytesMut::new();
        put_outcome(&mut buf, &removed);
        assert_eq!(get_outcome(&mut buf.freeze()), Ok(removed.clone()));
        let mut copy =
            ShardStore::from_snapshot(StoreKind::Persistent, StoreLimits::default(), s.snapshot())
                .expect("loads");
        assert_eq!(copy.snapshot(), s.snapshot());
        assert_eq!(copy.apply(v(11), &put_for(11, "/p/e", 5)).0, removed);
    }

    /// The dropped generations are bounded: past the limit the oldest is forgotten, the
    /// same way at every replica.
    #[test]
    fn the_oldest_dropped_generation_is_forgotten_past_the_limit() {
        let mut s = ShardStore::new(StoreKind::Volatile, StoreLimits::default());
        let n = DROPPED_POOLS_MAX as u64 + 1;
        for i in 0..n {
            s.apply(v(i as u32 + 1), &drop_of(i + 1, &format!("/p{i}"), i + 1));
        }
        assert_eq!(s.dropped.len(), DROPPED_POOLS_MAX);
        let at = n as u32 + 1;
        let oldest = s.apply(v(at), &put_for(n + 1, "/p0/a", 1)).0;
        assert!(matches!(oldest, Outcome::Applied { .. }), "{oldest:?}");
        let kept = s.apply(v(at + 1), &put_for(n + 2, "/p1/a", 2)).0;
        assert!(matches!(kept, Outcome::PoolRemoved { .. }), "{kept:?}");
    }

    /// A volatile store gives a watch resuming after a point every version since, while
    /// its recent changes reach back that far; before it (or in a store that came as a
    /// snapshot, before the snapshot) each key's latest.
    #[test]
    fn a_volatile_store_replays_its_recent_changes() {
        let versions = |changes: Vec<Change>| -> Vec<(u32, String, Option<Bytes>)> {
            changes
                .into_iter()
                .map(|c| (c.meta.version.seq(), c.key.to_string(), c.blob))
                .collect()
        };
        let one = |v: &'static [u8]| Some(Bytes::from_static(v));
        let cost = |blob: usize| size_of::<Change>() + "/p/a".len() + blob;
        let limits = StoreLimits {
            watch_replay_bytes: 3 * cost(1),
            ..StoreLimits::default()
        };
        let mut s = ShardStore::new(StoreKind::Volatile, limits);
        s.apply(v(1), &put(1, "/p/a", b"1", Condition::Always));
        s.apply(v(2), &put(2, "/p/a", b"2", Condition::Always));
        s.apply(v(3), &put(3, "/p/b", b"3", Condition::Always));
        let rm = remove(4, "/p/a");
        s.apply(v(4), &rm);
        // The first change no longer fits: every version after it is there.
        assert_eq!(
            versions(s.changes_after("/p", Some(v(1))).expect("changes")),
            vec![
                (2, "/p/a".into(), one(b"2")),
                (3, "/p/b".into(), one(b"3")),
                (4, "/p/a".into(), None)
            ]
        );
        assert_eq!(
            versions(s.changes_after("/p/a", Some(v(2))).expect("changes")),
            vec![(4, "/p/a".into(), None)]
        );
        // Before it: each key's latest.
        assert_eq!(
            versions(s.changes_after("/p", None).expect("changes")),
            vec![(3, "/p/b".into(), one(b"3")), (4, "/p/a".into(), None)]
        );
        // Within the default limit, everything since the start.
        let mut all = ShardStore::new(StoreKind::Volatile, StoreLimits::default());
        for seq in 1..=3 {
            all.apply(
                v(seq),
                &put(u64::from(seq), "/p/a", b"x", Condition::Always),
            );
        }
        assert_eq!(all.changes_after("/p", None).expect("changes").len(), 3);
        // A store from a snapshot has no changes before it.
        let mut copy =
            ShardStore::from_snapshot(StoreKind::Volatile, StoreLimits::default(), s.snapshot())
                .expect("loads");
        assert_eq!(
            versions(copy.changes_after("/p", Some(v(2))).expect("changes")),
            vec![(3, "/p/b".into(), one(b"3")), (4, "/p/a".into(), None)]
        );
        copy.apply(v(5), &put(5, "/p/c", b"5", Condition::Always));
        assert_eq!(
            versions(copy.changes_after("/p", Some(v(4))).expect("changes")),
            vec![(5, "/p/c".into(), one(b"5"))]
        );
        // A dropped pool's changes go with it.
        s.apply(v(5), &drop_of(5, "/p", 7));
        assert_eq!(s.changes_after("/p", Some(v(1))), Ok(vec![]));
        assert_eq!(s.recent.bytes, 0);
    }

    fn outcome_of_drop() -> Outcome {
        Outcome::Dropped {
            keys_dropped: 3,
            versions_dropped: 3,
        }
    }
}
