//! Randomized histories that are linearizable by construction: a sequential execution
//! is generated first, then every operation is stretched into a random interval around
//! its linearization point (clients never overlap themselves). Corrupting one read must
//! then make the checker fail and name that read.

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use squall_lincheck::{History, Op, Output, Violation, check, check_bounded};

/// (client, invoked, returned, op, output), in push order.
type Entry = (u32, u64, Option<u64>, Op, Output);

struct Shape {
    ops: usize,
    keys: usize,
    clients: usize,
    multi_get: f64,
    unknown_put: f64,
}

fn generate(seed: u64, shape: &Shape) -> Vec<Entry> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let key = |k: usize| format!("k{k}");
    let mut store: Vec<Option<u64>> = vec![None; shape.keys];
    let mut busy_until = vec![0u64; shape.clients];
    let (mut point, mut next_value) = (0u64, 1u64);
    let mut entries = Vec::with_capacity(shape.ops);
    for _ in 0..shape.ops {
        point += rng.random_range(1..=10);
        let free: Vec<usize> = (0..shape.clients)
            .filter(|&c| busy_until[c] < point)
            .collect();
        let client = if free.is_empty() {
            let c = (0..shape.clients)
                .min_by_key(|&c| busy_until[c])
                .unwrap_or(0);
            point = busy_until[c] + 1;
            c
        } else {
            free[rng.random_range(0..free.len())]
        };
        let invoked =
            rng.random_range((busy_until[client] + 1).max(point.saturating_sub(60))..=point);
        let returned = point + rng.random_range(0..=60);
        busy_until[client] = returned;
        let k = rng.random_range(0..shape.keys);
        let roll: f64 = rng.random();
        let (op, output, returned) = if roll < 0.4 {
            let value = next_value;
            next_value += 1;
            if rng.random_bool(shape.unknown_put) {
                // The reply was lost: it took effect at `point`, or never.
                if rng.random_bool(0.5) {
                    store[k] = Some(value);
                }
                (Op::Put { key: key(k), value }, Output::Unknown, None)
            } else {
                store[k] = Some(value);
                (Op::Put { key: key(k), value }, Output::Ok, Some(returned))
            }
        } else if roll < 0.4 + shape.multi_get {
            let mut ks = vec![k];
            while ks.len() < 3.min(shape.keys) {
                let other = rng.random_range(0..shape.keys);
                if !ks.contains(&other) {
                    ks.push(other);
                }
            }
            let values = ks.iter().map(|&k| store[k]).collect();
            (
                Op::MultiGet {
                    keys: ks.into_iter().map(key).collect(),
                },
                Output::Values(values),
                Some(returned),
            )
        } else {
            (
                Op::Get { key: key(k) },
                Output::Value(store[k]),
                Some(returned),
            )
        };
        entries.push((client as u32, invoked, returned, op, output));
    }
    entries
}

fn history(entries: &[Entry]) -> History {
    let mut h = History::new();
    for (client, invoked, returned, op, output) in entries.iter().cloned() {
        h.push(client, invoked, returned, op, output);
    }
    h
}

fn culprit(result: Result<(), Violation>) -> usize {
    match result {
        Err(Violation::NotLinearizable { culprit, .. }) => culprit.index,
        other => panic!("expected a linearizability violation, got {other:?}"),
    }
}

/// Known-outcome single-key gets that can be made stale, with the stale value: a put of
/// that value to the get's key completed before another put to that key, which completed
/// before the get was invoked. Values are unique, so reading it there is impossible.
fn stale_candidates(entries: &[Entry]) -> Vec<(usize, u64)> {
    // (invoked, returned, value) of the acknowledged puts to `key`.
    let known_puts = |key: &String| -> Vec<(u64, u64, u64)> {
        entries
            .iter()
            .filter_map(|e| match (&e.3, e.2) {
                (Op::Put { key: k, value }, Some(ret)) if k == key => Some((e.1, ret, *value)),
                _ => None,
            })
            .collect()
    };
    let stale = |e: &Entry| {
        let (Op::Get { key }, Some(_)) = (&e.3, e.2) else {
            return None;
        };
        let puts = known_puts(key);
        let overwriter = puts.iter().filter(|p| p.1 < e.1).max_by_key(|p| p.0)?;
        puts.iter().find(|p| p.1 < overwriter.0).map(|p| p.2)
    };
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, stale(e)?)))
        .collect()
}

#[test]
fn generated_histories_pass_and_corrupted_reads_fail() {
    let shape = Shape {
        ops: 400,
        keys: 4,
        clients: 5,
        multi_get: 0.2,
        unknown_put: 0.05,
    };
    let started = Instant::now();
    for seed in 0..20 {
        let mut entries = generate(seed, &shape);
        assert_eq!(check(&history(&entries)), Ok(()), "seed {seed}");

        // A read of a value that was never written at all.
        let gets: Vec<usize> = (0..entries.len())
            .filter(|&i| matches!(entries[i].3, Op::Get { .. }))
            .collect();
        let victim = gets[(seed as usize * 7) % gets.len()];
        let saved = entries[victim].4.clone();
        entries[victim].4 = Output::Value(Some(1_000_000 + seed));
        assert_eq!(culprit(check(&history(&entries))), victim, "seed {seed}");
        entries[victim].4 = saved;

        // A read of a value that existed, but had been overwritten before the read began:
        // only the full search (not the pre-check) can see this one.
        let (victim, stale) = stale_candidates(&entries)[0];
        entries[victim].4 = Output::Value(Some(stale));
        assert_eq!(culprit(check(&history(&entries))), victim, "seed {seed}");
    }
    eprintln!(
        "20 seeds x 3 checks of {} ops: {:?}",
        shape.ops,
        started.elapsed()
    );
}

#[test]
fn typical_integration_history_is_checked_quickly() {
    // 10 clients, 2000 ops, 8 keys; multi_gets connect all keys into one component.
    let shape = Shape {
        ops: 2000,
        keys: 8,
        clients: 10,
        multi_get: 0.2,
        unknown_put: 0.02,
    };
    for seed in 100..105 {
        let mut entries = generate(seed, &shape);
        let started = Instant::now();
        // A tight bound: a linearizable history should need only a few states per op.
        assert_eq!(
            check_bounded(&history(&entries), 20 * shape.ops as u64),
            Ok(()),
            "seed {seed}"
        );
        let passed = started.elapsed();

        // A stale read near the end forces the search to refute every order before it.
        let (victim, stale) = *stale_candidates(&entries)
            .last()
            .expect("a stale-read opportunity");
        entries[victim].4 = Output::Value(Some(stale));
        let started = Instant::now();
        assert_eq!(culprit(check(&history(&entries))), victim, "seed {seed}");
        eprintln!(
            "seed {seed}: {} ops: pass in {passed:?}, late violation found in {:?}",
            shape.ops,
            started.elapsed()
        );
    }
}
