//! Property test of the cache over the host tier: under random inserts, lookups, pins,
//! releases and removals, the bytes used always equal the sum of the entries' sizes (live
//! ones, plus replaced ones a view still pins) and never exceed the capacity; a pinned
//! object is never evicted and its bytes never change; refusals happen exactly when the
//! object cannot fit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use squall_gpu::{DeviceCache, GpuError, GpuMetrics, HostTier, Location, PinnedView};

const CAPACITY_BYTES: u64 = 100;
const KEYS: u8 = 6;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        key: u8,
        version: u64,
        len_bytes: usize,
        hold: bool,
    },
    Get {
        key: u8,
        version: u64,
        hold: bool,
    },
    Release {
        index: usize,
    },
    Remove {
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, 0..5u64, 0..45usize, any::<bool>())
            .prop_map(|(key, version, len_bytes, hold)| Op::Insert { key, version, len_bytes, hold }),
        3 => (0..KEYS, 0..5u64, any::<bool>()).prop_map(|(key, version, hold)| Op::Get { key, version, hold }),
        2 => (0..16usize).prop_map(|index| Op::Release { index }),
        1 => (0..KEYS).prop_map(|key| Op::Remove { key }),
    ]
}

struct Held {
    view: PinnedView,
    bytes: Bytes,
    /// The model's name for the entry the view pins.
    serial: u64,
}

#[derive(Debug, Clone, Copy)]
struct LiveEntry {
    version: u64,
    len_bytes: u64,
    serial: u64,
}

/// What the cache should hold, as far as a client can tell: the live entry of each key
/// (evictions are learnt by looking), and which entries were replaced or removed.
struct Model {
    cache: DeviceCache,
    held: Vec<Held>,
    live: HashMap<String, LiveEntry>,
    superseded: HashSet<u64>,
    next_serial: u64,
    next_fill: u8,
}

impl Model {
    fn new() -> Self {
        let metrics = GpuMetrics::new().cache_metrics(Location::Host, "/model");
        Model {
            cache: DeviceCache::new(Arc::new(HostTier::new()), CAPACITY_BYTES, metrics),
            held: Vec::new(),
            live: HashMap::new(),
            superseded: HashSet::new(),
            next_serial: 0,
            next_fill: 0,
        }
    }

    fn hold(&mut self, view: PinnedView, serial: u64) {
        let bytes = view.to_host().expect("to_host");
        self.held.push(Held {
            view,
            bytes,
            serial,
        });
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Insert {
                key,
                version,
                len_bytes,
                hold,
            } => self.insert(key, version, len_bytes, hold),
            Op::Get { key, version, hold } => {
                let key = format!("k{key}");
                let expected = self
                    .live
                    .get(&key)
                    .filter(|live| live.version == version)
                    .copied();
                let found = self.cache.get(&key, version);
                assert_eq!(
                    found.is_some(),
                    expected.is_some(),
                    "hit iff live at that version"
                );
                if let (Some(view), Some(live), true) = (found, expected, hold) {
                    self.hold(view, live.serial);
                }
            }
            Op::Release { index } => {
                if !self.held.is_empty() {
                    self.held.swap_remove(index % self.held.len());
                }
            }
            Op::Remove { key } => {
                let key = format!("k{key}");
                let removed = self.cache.remove(&key);
                let live = self.live.remove(&key);
                assert_eq!(removed, live.is_some());
                if let Some(live) = live {
                    self.superseded.insert(live.serial);
                }
            }
        }
        self.learn_evictions();
    }

    fn insert(&mut self, key: u8, version: u64, len_bytes: usize, hold: bool) {
        let key = format!("k{key}");
        self.next_fill = self.next_fill.wrapping_add(1);
        let bytes = Bytes::from(vec![self.next_fill; len_bytes]);
        let before = self.live.get(&key).copied();
        // Bytes eviction cannot reclaim; an older version of this key, if pinned, moves from
        // pinned-live to retired, so the sum is the same after it is replaced.
        let held_bytes = self.retired_bytes() + self.pinned_live_bytes();
        match self.cache.insert(&key, version, &bytes) {
            Ok(view) => {
                let serial = match before {
                    Some(live) if live.version == version => live.serial,
                    Some(live) => {
                        assert!(live.version < version, "never replaces a newer version");
                        self.superseded.insert(live.serial);
                        self.new_entry(&key, version, len_bytes)
                    }
                    None => self.new_entry(&key, version, len_bytes),
                };
                if hold {
                    self.hold(view, serial);
                }
            }
            Err(GpuError::StaleVersion { cached_version, .. }) => {
                assert_eq!(before.map(|live| live.version), Some(cached_version));
                assert!(cached_version > version);
            }
            Err(GpuError::TooLarge { .. }) => assert!(len_bytes as u64 > CAPACITY_BYTES),
            Err(GpuError::NoRoom { .. }) => {
                assert!(len_bytes as u64 <= CAPACITY_BYTES);
                assert!(
                    held_bytes + len_bytes as u64 > CAPACITY_BYTES,
                    "refused although it fits"
                );
                // the older version was dropped before the refusal
                if let Some(live) = before.filter(|live| live.version < version) {
                    self.superseded.insert(live.serial);
                    self.live.remove(&key);
                }
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }

    fn new_entry(&mut self, key: &str, version: u64, len_bytes: usize) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        let entry = LiveEntry {
            version,
            len_bytes: len_bytes as u64,
            serial,
        };
        self.live.insert(key.to_owned(), entry);
        serial
    }

    /// Keys the cache no longer has were evicted; none of them may be pinned.
    fn learn_evictions(&mut self) {
        let evicted: Vec<(String, LiveEntry)> = self
            .live
            .iter()
            .filter(|(key, live)| self.cache.cached_version(key) != Some(live.version))
            .map(|(key, live)| (key.clone(), *live))
            .collect();
        for (key, live) in evicted {
            assert!(
                self.cache.cached_version(&key).is_none(),
                "{key}: unexpected version"
            );
            assert!(
                !self.is_pinned(live.serial),
                "pinned {key} v{} was evicted",
                live.version
            );
            self.live.remove(&key);
        }
    }

    fn is_pinned(&self, serial: u64) -> bool {
        self.held.iter().any(|held| held.serial == serial)
    }

    fn pinned_live_bytes(&self) -> u64 {
        self.live
            .values()
            .filter(|live| self.is_pinned(live.serial))
            .map(|live| live.len_bytes)
            .sum()
    }

    /// Bytes of replaced or removed entries that views still pin (one count per entry).
    fn retired_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.held
            .iter()
            .filter(|held| self.superseded.contains(&held.serial))
            .filter(|held| seen.insert(held.serial))
            .map(|held| held.view.len_bytes())
            .sum()
    }

    fn live_bytes(&self) -> u64 {
        self.live.values().map(|live| live.len_bytes).sum()
    }

    fn check(&self) {
        self.cache.check_invariants();
        let stats = self.cache.stats();
        assert_eq!(
            stats.used_bytes,
            self.live_bytes() + self.retired_bytes(),
            "used bytes == sum of entry sizes"
        );
        assert!(stats.used_bytes <= CAPACITY_BYTES);
        assert_eq!(stats.entries, self.live.len());
        for held in &self.held {
            assert_eq!(
                held.view.to_host().expect("to_host"),
                held.bytes,
                "pinned bytes intact"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn used_bytes_equal_entry_sizes_within_capacity(ops in prop::collection::vec(op(), 1..120)) {
        let mut model = Model::new();
        for op in ops {
            model.apply(op);
            model.check();
        }
        model.held.clear();
        model.check();
        prop_assert_eq!(model.cache.stats().pinned_entries, 0);
        prop_assert_eq!(model.cache.stats().used_bytes, model.live_bytes());
    }
}
