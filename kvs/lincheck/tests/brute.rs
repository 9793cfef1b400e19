//! Cross-check against brute force: on tiny random histories (random results, repeated
//! values, unknown puts, multi_gets), `check` must agree with an exhaustive search over
//! every real-time-respecting order.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use squall_lincheck::{History, Op, Output, check};

type Entry = (u64, Option<u64>, Op, Output);

/// Whether some order of the not-yet-done entries, extending `done`, explains them all.
fn brute(entries: &[Entry], done: &mut Vec<bool>, state: &mut [Option<u64>; 2]) -> bool {
    let pending = |i: usize, done: &[bool]| !done[i];
    if (0..entries.len()).all(|i| !pending(i, done) || matches!(entries[i].3, Output::Unknown)) {
        return true; // unknown puts left over never took effect
    }
    let candidates: Vec<usize> = (0..entries.len()).filter(|&c| pending(c, done)).collect();
    for c in candidates {
        let must_wait = (0..entries.len())
            .any(|r| pending(r, done) && entries[r].1.is_some_and(|t| t < entries[c].0));
        if must_wait {
            continue;
        }
        let key = |k: &String| usize::from(k == "b");
        let saved = *state;
        let ok = match (&entries[c].2, &entries[c].3) {
            (Op::Put { key: k, value }, _) => {
                state[key(k)] = Some(*value);
                true
            }
            (Op::Get { key: k }, Output::Value(v)) => state[key(k)] == *v,
            (Op::MultiGet { keys }, Output::Values(vs)) => {
                keys.iter().zip(vs).all(|(k, v)| state[key(k)] == *v)
            }
            _ => false,
        };
        done[c] = true;
        if ok && brute(entries, done, state) {
            return true;
        }
        done[c] = false;
        *state = saved;
    }
    false
}

#[test]
fn agrees_with_brute_force_on_tiny_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..20_000 {
        let n = rng.random_range(1..=7);
        let mut entries: Vec<Entry> = Vec::new();
        for _ in 0..n {
            let key = if rng.random_bool(0.5) { "a" } else { "b" }.to_owned();
            let value =
                |rng: &mut ChaCha8Rng| rng.random_bool(0.7).then(|| rng.random_range(1..=2u64));
            let invoked = rng.random_range(0..20);
            let returned = Some(invoked + rng.random_range(0..8));
            entries.push(match rng.random_range(0..10) {
                0..=3 if rng.random_bool(0.2) => (
                    invoked,
                    None,
                    Op::Put {
                        key,
                        value: rng.random_range(1..=2),
                    },
                    Output::Unknown,
                ),
                0..=3 => (
                    invoked,
                    returned,
                    Op::Put {
                        key,
                        value: rng.random_range(1..=2),
                    },
                    Output::Ok,
                ),
                4..=7 => (
                    invoked,
                    returned,
                    Op::Get { key },
                    Output::Value(value(&mut rng)),
                ),
                _ => {
                    let keys = vec!["a".to_owned(), "b".to_owned()];
                    (
                        invoked,
                        returned,
                        Op::MultiGet { keys },
                        Output::Values(vec![value(&mut rng), value(&mut rng)]),
                    )
                }
            });
        }
        let mut h = History::new();
        for (i, (invoked, returned, op, output)) in entries.iter().cloned().enumerate() {
            h.push(i as u32, invoked, returned, op, output);
        }
        let expected = brute(&entries, &mut vec![false; n], &mut [None, None]);
        assert_eq!(check(&h).is_ok(), expected, "{entries:?}: {:?}", check(&h));
        if expected {
            accepted += 1
        } else {
            rejected += 1
        }
    }
    assert!(
        accepted > 2_000 && rejected > 2_000,
        "{accepted} accepted, {rejected} rejected"
    );
}
