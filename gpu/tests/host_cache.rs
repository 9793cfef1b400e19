//! The device cache over the host tier (runs everywhere): LRU order, pins, the byte budget,
//! versions, refusals, metrics and zero copy.

use std::sync::Arc;

use bytes::Bytes;
use prometheus::Registry;
use squall_gpu::{
    CacheMetricsSnapshot, DeviceCache, GpuError, GpuMetrics, HostTier, Location, TierKind,
    conformance,
};

fn host_cache(capacity_bytes: u64) -> DeviceCache {
    let metrics = GpuMetrics::new();
    DeviceCache::new(
        Arc::new(HostTier::new()),
        capacity_bytes,
        metrics.cache_metrics(Location::Host, "/test"),
    )
}

fn object(len_bytes: usize, fill: u8) -> Bytes {
    Bytes::from(vec![fill; len_bytes])
}

/// Inserts and releases the pin at once.
fn put(cache: &DeviceCache, key: &str, version: u64, len_bytes: usize) {
    cache
        .insert(key, version, &object(len_bytes, key.as_bytes()[0]))
        .expect("insert");
    cache.check_invariants();
}

fn cached(cache: &DeviceCache) -> Vec<String> {
    let mut keys: Vec<String> = ["a", "b", "c", "d", "e", "f"]
        .into_iter()
        .filter(|key| cache.cached_version(key).is_some())
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

#[test]
fn host_tier_passes_the_tier_conformance_suite() {
    conformance::check_tier(&HostTier::new());
}

#[test]
fn evicts_the_least_recently_used_entry_first() {
    let cache = host_cache(30);
    put(&cache, "a", 1, 10);
    put(&cache, "b", 1, 10);
    put(&cache, "c", 1, 10);
    drop(cache.get("a", 1).expect("a cached")); // a is now the most recent
    put(&cache, "d", 1, 10);
    assert_eq!(
        cached(&cache),
        ["a", "c", "d"],
        "b was the least recently used"
    );
    put(&cache, "e", 1, 10);
    assert_eq!(cached(&cache), ["a", "d", "e"], "then c");
    put(&cache, "f", 1, 20);
    assert_eq!(cached(&cache), ["e", "f"], "then a and d, in that order");
    assert_eq!(cache.metrics().snapshot().evictions, 4);
}

#[test]
fn pinned_entries_are_never_evicted() {
    let cache = host_cache(30);
    let pinned_a = cache.insert("a", 1, &object(10, b'a')).expect("insert a");
    put(&cache, "b", 1, 10);
    put(&cache, "c", 1, 10);
    put(&cache, "d", 1, 10); // a is the oldest but pinned: b goes
    assert_eq!(cached(&cache), ["a", "c", "d"]);
    put(&cache, "e", 1, 20); // c and d go, a stays
    assert_eq!(cached(&cache), ["a", "e"]);
    assert_eq!(pinned_a.to_host().expect("to_host"), object(10, b'a'));
    assert_eq!(cache.stats().pinned_entries, 1);
    drop(pinned_a);
    assert_eq!(cache.stats().pinned_entries, 0);
    put(&cache, "f", 1, 10); // a was released after e: e is the least recent and goes
    assert_eq!(cached(&cache), ["a", "f"]);
}

#[test]
fn a_clone_of_a_view_is_a_second_pin() {
    let cache = host_cache(20);
    let first = cache.insert("a", 1, &object(10, b'a')).expect("insert");
    let second = first.clone();
    drop(first);
    put(&cache, "b", 1, 10);
    put(&cache, "c", 1, 10); // needs a's room, but `second` still pins it: b goes
    assert_eq!(cached(&cache), ["a", "c"]);
    drop(second);
    cache.check_invariants();
}

#[test]
fn used_bytes_never_exceed_capacity_and_fill_it_exactly() {
    let cache = host_cache(100);
    for round in 0..50u64 {
        let key = format!("k{}", round % 7);
        let len_bytes = 1 + (round * 37 % 60) as usize;
        cache
            .insert(&key, round, &object(len_bytes, 1))
            .expect("insert");
        let stats = cache.stats();
        assert!(stats.used_bytes <= 100, "round {round}: {stats:?}");
        cache.check_invariants();
    }
    let exact = host_cache(100);
    put(&exact, "a", 1, 60);
    put(&exact, "b", 1, 40);
    assert_eq!(
        exact.stats().used_bytes,
        100,
        "a cache fills to the last byte"
    );
    assert_eq!(
        cached(&exact),
        ["a", "b"],
        "nothing evicted when it fits exactly"
    );
}

#[test]
fn a_newer_version_replaces_an_older_one() {
    let cache = host_cache(100);
    put(&cache, "a", 1, 10);
    cache
        .insert("a", 2, &object(30, b'A'))
        .expect("newer version");
    assert_eq!(cache.cached_version("a"), Some(2));
    assert!(cache.get("a", 1).is_none(), "the old version is gone");
    assert_eq!(
        cache.to_host("a", 2).expect("to_host"),
        Some(object(30, b'A'))
    );
    assert_eq!(
        cache.stats().used_bytes,
        30,
        "the old version's bytes are freed"
    );
    assert_eq!(cache.stats().entries, 1);
}

#[test]
fn an_older_version_is_refused_and_the_same_version_is_not_uploaded_twice() {
    let cache = host_cache(100);
    put(&cache, "a", 5, 10);
    let stale = cache.insert("a", 4, &object(10, 0));
    assert!(
        matches!(
            stale,
            Err(GpuError::StaleVersion {
                offered_version: 4,
                cached_version: 5,
                ..
            })
        ),
        "{stale:?}"
    );
    let first = cache.get("a", 5).expect("cached");
    let again = cache.insert("a", 5, &object(10, 9)).expect("same version");
    assert_eq!(
        again.view(),
        first.view(),
        "the entry already cached, not a second copy"
    );
    assert_eq!(cache.stats().used_bytes, 10);
}

#[test]
fn replacing_a_pinned_version_keeps_its_memory_until_the_view_is_dropped() {
    let cache = host_cache(100);
    let old = cache.insert("a", 1, &object(40, b'o')).expect("insert v1");
    cache.insert("a", 2, &object(50, b'n')).expect("insert v2");
    assert_eq!(
        cache.stats().used_bytes,
        90,
        "v1 is still in use: its bytes still count"
    );
    assert_eq!(cache.stats().entries, 1, "but only v2 can be found");
    assert_eq!(old.to_host().expect("old bytes"), object(40, b'o'));
    let no_room = cache.insert("b", 1, &object(70, b'b'));
    assert!(
        matches!(no_room, Err(GpuError::NoRoom { held_bytes: 40, .. })),
        "the retired v1 is not evictable: {no_room:?}"
    );
    assert_eq!(
        cache.cached_version("a"),
        Some(2),
        "nothing evicted for the refusal"
    );
    drop(old);
    assert_eq!(cache.stats().used_bytes, 50);
    cache.check_invariants();
    assert!(cache.remove("a"));
    assert!(!cache.remove("a"));
    assert_eq!(cache.stats().used_bytes, 0);
}

#[test]
fn an_object_larger_than_the_cache_is_refused_with_a_typed_error() {
    let cache = host_cache(100);
    put(&cache, "a", 1, 60);
    let refused = cache.insert("big", 1, &object(101, 0));
    assert!(
        matches!(
            &refused,
            Err(GpuError::TooLarge { key, len_bytes: 101, capacity_bytes: 100 }) if key == "big"
        ),
        "{refused:?}"
    );
    assert_eq!(
        cached(&cache),
        ["a"],
        "nothing was evicted for a refused insert"
    );
}

#[test]
fn an_object_that_does_not_fit_beside_pinned_entries_is_refused_without_evicting() {
    let cache = host_cache(100);
    let _pinned = cache.insert("a", 1, &object(70, b'a')).expect("insert a");
    put(&cache, "b", 1, 20);
    let refused = cache.insert("c", 1, &object(40, b'c'));
    assert!(
        matches!(
            refused,
            Err(GpuError::NoRoom {
                len_bytes: 40,
                held_bytes: 70,
                capacity_bytes: 100,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(cached(&cache), ["a", "b"], "b was not evicted in vain");
    cache
        .insert("c", 1, &object(30, b'c'))
        .expect("30 bytes fit once b goes");
    assert_eq!(cached(&cache), ["a", "c"]);
}

#[test]
fn metrics_count_hits_misses_evictions_and_bytes() {
    let registry = Registry::new();
    let metrics = GpuMetrics::new();
    metrics.register(&registry).expect("register");
    let cache = DeviceCache::new(
        Arc::new(HostTier::new()),
        20,
        metrics.cache_metrics(Location::Host, "/pool"),
    );
    put(&cache, "a", 1, 10);
    put(&cache, "b", 1, 10);
    assert!(cache.get("a", 1).is_some());
    assert!(cache.get("a", 2).is_none(), "another version is a miss");
    assert!(cache.get("z", 1).is_none());
    put(&cache, "c", 1, 10);
    let held = cache.get("c", 1).expect("c");
    assert_eq!(
        cache.metrics().snapshot(),
        CacheMetricsSnapshot {
            used_bytes: 20,
            capacity_bytes: 20,
            entries: 2,
            pinned_entries: 1,
            hits: 2,
            misses: 2,
            evictions: 1,
            // the host tier shares buffers: no transfers
            ..CacheMetricsSnapshot::default()
        }
    );
    drop(held);

    let families = registry.gather();
    let family = |name: &str| {
        families
            .iter()
            .find(|family| family.name() == name)
            .unwrap_or_else(|| panic!("{name} registered"))
    };
    let hits = &family("squall_gpu_cache_hits_total").get_metric()[0];
    let labels: Vec<(&str, &str)> = hits
        .get_label()
        .iter()
        .map(|pair| (pair.name(), pair.value()))
        .collect();
    assert_eq!(labels, [("cache", "/pool"), ("device", "host")]);
    assert_eq!(hits.get_counter().get_value(), 2.0);
    for name in [
        "squall_gpu_cache_used_bytes",
        "squall_gpu_cache_capacity_bytes",
        "squall_gpu_cache_entries",
        "squall_gpu_cache_misses_total",
        "squall_gpu_cache_evictions_total",
        "squall_gpu_transfer_bytes_total",
        "squall_gpu_transfer_seconds",
    ] {
        family(name);
    }
    assert!(
        matches!(metrics.register(&registry), Err(GpuError::Metrics(_))),
        "registering twice is a typed error"
    );
}

#[test]
fn the_host_tier_is_zero_copy() {
    let cache = host_cache(1 << 20);
    let bytes = object(4_096, 42);
    let view = cache.insert("a", 1, &bytes).expect("insert");
    let device_view = view.view();
    assert_eq!(
        device_view.address,
        bytes.as_ptr() as u64,
        "the view is the inserted buffer"
    );
    assert_eq!(device_view.len_bytes, 4_096);
    assert_eq!(device_view.location, Location::Host);
    assert_eq!(device_view.location.kind(), TierKind::Host);
    assert_eq!(device_view.device_ordinal(), None);
    assert_eq!(device_view.stream_handle, 0);
    assert_eq!(
        view.host_bytes().map(|shared| shared.as_ptr()),
        Some(bytes.as_ptr())
    );
    let read_back = cache.to_host("a", 1).expect("to_host").expect("hit");
    assert_eq!(
        read_back.as_ptr(),
        bytes.as_ptr(),
        "reads share the buffer too"
    );
    let snapshot = cache.metrics().snapshot();
    assert_eq!(snapshot.host_to_device_transfers, 0);
    assert_eq!(snapshot.device_to_host_transfers, 0);
}

#[test]
fn empty_objects_are_cached_in_no_bytes() {
    let cache = host_cache(10);
    let view = cache.insert("empty", 1, &Bytes::new()).expect("insert");
    assert_eq!(view.view().address, 0);
    assert_eq!(view.len_bytes(), 0);
    assert_eq!(cache.stats().used_bytes, 0);
    assert_eq!(cache.stats().entries, 1);
}

#[test]
fn views_and_inserts_work_across_threads() {
    let cache = host_cache(1_000);
    std::thread::scope(|scope| {
        for worker in 0..4u64 {
            let cache = cache.clone();
            scope.spawn(move || {
                for round in 0..200u64 {
                    let key = format!("k{}", (worker + round) % 9);
                    match cache.insert(&key, round, &object(50, worker as u8)) {
                        Ok(view) => assert_eq!(view.len_bytes(), 50),
                        Err(GpuError::StaleVersion { .. } | GpuError::NoRoom { .. }) => {}
                        Err(other) => panic!("{other}"),
                    }
                    drop(cache.get(&key, round));
                }
            });
        }
    });
    cache.check_invariants();
    assert!(cache.stats().used_bytes <= 1_000);
    assert_eq!(cache.stats().pinned_entries, 0);
}
