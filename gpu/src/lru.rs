//! The cache's bookkeeping as a state machine that does no I/O: which entries exist, their
//! sizes, pins and recency, and the byte budget. It never touches memory; it hands back the
//! values (blocks) it drops so the caller frees them outside its lock.
//! [`DeviceCache`](crate::DeviceCache) wraps it with a tier, a lock and metrics.
//!
//! Invariants (checked by [`LruIndex::check_invariants`]; the cheap ones asserted on every
//! change, in release builds too):
//! - `used_bytes` == sum of the sizes of all entries (live and retired) + `reserved_bytes`;
//! - `used_bytes` <= `capacity_bytes`, always;
//! - an entry is in the eviction order iff it is live and unpinned, and
//!   `evictable_bytes` is the sum of their sizes;
//! - at most one live entry per key; a retired entry (replaced or removed while pinned) is
//!   found by no lookup and is freed when its last pin goes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::GpuError;

pub(crate) type EntryId = u64;

#[derive(Debug)]
struct Entry<V> {
    key: Arc<str>,
    version: u64,
    len_bytes: u64,
    pins: u32,
    /// Position in the eviction order while live and unpinned.
    last_release_tick: u64,
    retired: bool,
    value: V,
}

/// A pinned entry: its id (to unpin with), key, version and value.
#[derive(Debug)]
pub(crate) struct Pinned<V> {
    pub id: EntryId,
    pub key: Arc<str>,
    pub version: u64,
    pub value: V,
}

/// What `begin_insert` decided.
#[derive(Debug)]
pub(crate) enum Begin<V> {
    /// The same key and version is cached already: pinned, nothing to upload.
    Present(Pinned<V>),
    /// `len_bytes` are reserved: upload, then `finish_insert` or `cancel_reservation`.
    /// `dropped` are the values evicted or replaced, to be freed by the caller.
    Reserved { dropped: Vec<V>, evicted: u64 },
}

#[derive(Debug)]
pub(crate) struct LruIndex<V> {
    capacity_bytes: u64,
    used_bytes: u64,
    reserved_bytes: u64,
    evictable_bytes: u64,
    next_entry_id: EntryId,
    next_tick: u64,
    live: HashMap<Arc<str>, EntryId>,
    entries: HashMap<EntryId, Entry<V>>,
    /// Live unpinned entries by the tick of their last release: first = least recent.
    eviction_order: BTreeMap<u64, EntryId>,
}

impl<V: Clone> LruIndex<V> {
    pub fn new(capacity_bytes: u64) -> Self {
        LruIndex {
            capacity_bytes,
            used_bytes: 0,
            reserved_bytes: 0,
            evictable_bytes: 0,
            next_entry_id: 0,
            next_tick: 0,
            live: HashMap::new(),
            entries: HashMap::new(),
            eviction_order: BTreeMap::new(),
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn live_entries(&self) -> usize {
        self.live.len()
    }

    pub fn pinned_live_entries(&self) -> usize {
        self.live.len() - self.eviction_order.len()
    }

    pub fn cached_version(&self, key: &str) -> Option<u64> {
        let id = self.live.get(key)?;
        Some(self.entries[id].version)
    }

    /// Pins and returns the live entry for exactly (`key`, `version`).
    pub fn lookup(&mut self, key: &str, version: u64) -> Option<Pinned<V>> {
        let id = *self.live.get(key)?;
        if self.entries[&id].version != version {
            return None;
        }
        Some(self.pin(id))
    }

    /// Adds a pin to an entry (live or retired) that exists.
    pub fn pin(&mut self, id: EntryId) -> Pinned<V> {
        let entry = self
            .entries
            .get_mut(&id)
            .expect("pinning an entry that exists");
        if entry.pins == 0 {
            assert!(
                !entry.retired,
                "a retired entry without pins is already freed"
            );
            self.eviction_order.remove(&entry.last_release_tick);
            self.evictable_bytes -= entry.len_bytes;
        }
        entry.pins += 1;
        Pinned {
            id,
            key: entry.key.clone(),
            version: entry.version,
            value: entry.value.clone(),
        }
    }

    /// Drops a pin. Returns the entry's value when this freed a retired entry.
    pub fn unpin(&mut self, id: EntryId) -> Option<V> {
        let entry = self
            .entries
            .get_mut(&id)
            .expect("unpinning an entry that exists");
        assert!(entry.pins > 0, "unpinning an entry that is not pinned");
        entry.pins -= 1;
        if entry.pins > 0 {
            return None;
        }
        if entry.retired {
            return Some(self.free(id));
        }
        entry.last_release_tick = self.next_tick;
        self.next_tick += 1;
        self.eviction_order.insert(entry.last_release_tick, id);
        self.evictable_bytes += entry.len_bytes;
        None
    }

    /// Takes `key` out of the lookups: freed now if unpinned (value returned), else retired
    /// and freed at its last unpin.
    pub fn remove(&mut self, key: &str) -> Option<Option<V>> {
        let id = self.live.remove(key)?;
        let entry = self
            .entries
            .get_mut(&id)
            .expect("a live key names an entry");
        if entry.pins > 0 {
            entry.retired = true;
            return Some(None);
        }
        self.eviction_order.remove(&entry.last_release_tick);
        self.evictable_bytes -= entry.len_bytes;
        Some(Some(self.free(id)))
    }

    /// First half of an insert: settles what is cached for `key` and reserves `len_bytes`,
    /// evicting least-recently-released entries as needed. Refuses (evicting nothing) when
    /// the object could not fit even with every unpinned entry gone.
    pub fn begin_insert(
        &mut self,
        key: &str,
        version: u64,
        len_bytes: u64,
    ) -> Result<Begin<V>, GpuError> {
        let mut dropped = Vec::new();
        if let Some(&id) = self.live.get(key) {
            let cached_version = self.entries[&id].version;
            if cached_version == version {
                return Ok(Begin::Present(self.pin(id)));
            }
            if cached_version > version {
                return Err(GpuError::StaleVersion {
                    key: key.to_owned(),
                    offered_version: version,
                    cached_version,
                });
            }
            dropped.extend(self.remove(key).flatten());
        }
        if len_bytes > self.capacity_bytes {
            return Err(GpuError::TooLarge {
                key: key.to_owned(),
                len_bytes,
                capacity_bytes: self.capacity_bytes,
            });
        }
        let held_bytes = self.used_bytes - self.evictable_bytes;
        if held_bytes + len_bytes > self.capacity_bytes {
            return Err(GpuError::NoRoom {
                key: key.to_owned(),
                len_bytes,
                held_bytes,
                capacity_bytes: self.capacity_bytes,
            });
        }
        let mut evicted = 0;
        while self.used_bytes + len_bytes > self.capacity_bytes {
            let (_, id) = self
                .eviction_order
                .pop_first()
                .expect("the unpinned entries cover the shortfall");
            let entry = &self.entries[&id];
            self.evictable_bytes -= entry.len_bytes;
            self.live.remove(&entry.key);
            dropped.push(self.free(id));
            evicted += 1;
        }
        self.used_bytes += len_bytes;
        self.reserved_bytes += len_bytes;
        self.assert_budget();
        Ok(Begin::Reserved { dropped, evicted })
    }

    /// Gives back a reservation whose upload failed.
    pub fn cancel_reservation(&mut self, len_bytes: u64) {
        assert!(
            self.reserved_bytes >= len_bytes,
            "cancelling more than is reserved"
        );
        self.reserved_bytes -= len_bytes;
        self.used_bytes -= len_bytes;
    }

    /// Second half of an insert: turns the reservation into a pinned entry holding
    /// `value`, and returns it with the values to free. Another insert of the same key may
    /// have finished meanwhile: if it cached the same version, that entry is pinned and
    /// `value` goes back with the values to free; a newer version refuses ours; an older
    /// one is replaced.
    pub fn finish_insert(
        &mut self,
        key: &str,
        version: u64,
        len_bytes: u64,
        value: V,
    ) -> Result<(Pinned<V>, Vec<V>), GpuError> {
        assert!(
            self.reserved_bytes >= len_bytes,
            "finishing an insert that reserved nothing"
        );
        self.reserved_bytes -= len_bytes;
        let mut dropped = Vec::new();
        if let Some(&id) = self.live.get(key) {
            let cached_version = self.entries[&id].version;
            if cached_version >= version {
                self.used_bytes -= len_bytes;
                if cached_version > version {
                    return Err(GpuError::StaleVersion {
                        key: key.to_owned(),
                        offered_version: version,
                        cached_version,
                    });
                }
                dropped.push(value);
                return Ok((self.pin(id), dropped));
            }
            dropped.extend(self.remove(key).flatten());
        }
        let id = self.next_entry_id;
        self.next_entry_id += 1;
        let key: Arc<str> = Arc::from(key);
        self.entries.insert(
            id,
            Entry {
                key: key.clone(),
                version,
                len_bytes,
                pins: 1,
                last_release_tick: 0,
                retired: false,
                value: value.clone(),
            },
        );
        self.live.insert(key.clone(), id);
        self.assert_budget();
        let pinned = Pinned {
            id,
            key,
            version,
            value,
        };
        Ok((pinned, dropped))
    }

    /// Forgets an entry that is neither live-unpinned-in-order nor pinned any more.
    fn free(&mut self, id: EntryId) -> V {
        let entry = self
            .entries
            .remove(&id)
            .expect("freeing an entry that exists");
        self.used_bytes -= entry.len_bytes;
        entry.value
    }

    fn assert_budget(&self) {
        assert!(
            self.used_bytes <= self.capacity_bytes,
            "cache uses {} of {} bytes",
            self.used_bytes,
            self.capacity_bytes
        );
        assert!(self.evictable_bytes + self.reserved_bytes <= self.used_bytes);
    }

    /// Checks every invariant of the module doc (O(entries)); panics on a violation.
    pub fn check_invariants(&self) {
        self.assert_budget();
        let entry_bytes: u64 = self.entries.values().map(|entry| entry.len_bytes).sum();
        assert_eq!(
            self.used_bytes,
            entry_bytes + self.reserved_bytes,
            "used bytes"
        );
        let mut evictable_bytes = 0;
        for (id, entry) in &self.entries {
            let is_live = self.live.get(&entry.key) == Some(id);
            assert_eq!(is_live, !entry.retired, "entry {id} live iff not retired");
            assert!(
                !entry.retired || entry.pins > 0,
                "retired entry {id} without pins"
            );
            let in_order = self.eviction_order.get(&entry.last_release_tick) == Some(id);
            assert_eq!(in_order, is_live && entry.pins == 0, "entry {id} evictable");
            if in_order {
                evictable_bytes += entry.len_bytes;
            }
        }
        assert_eq!(self.evictable_bytes, evictable_bytes, "evictable bytes");
        assert_eq!(
            self.eviction_order.len(),
            self.live.len() - self.pinned_live_count_slow()
        );
        for id in self.live.values() {
            assert!(self.entries.contains_key(id), "live key names entry {id}");
        }
    }

    fn pinned_live_count_slow(&self) -> usize {
        self.live
            .values()
            .filter(|id| self.entries[*id].pins > 0)
            .count()
    }
}
