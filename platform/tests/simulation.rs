//! Seeded simulations of the protocol core under faults, judged by every checker.
//! A failure prints its seed; `SQUALL_SEED=<n> cargo test -p squall-platform replay_seed`
//! replays exactly that seed.

use squall_platform::sim::{checkers, run_seed};

/// Asserts every checker, liveness after the heal included, on each seed.
fn run_range(seeds: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in seeds.clone() {
        let report = run_seed(seed);
        if let Err(violation) = checkers::check_all(&report.history) {
            eprintln!(
                "seed {seed} failed: {violation}\nreplay with: SQUALL_SEED={seed} cargo test -p squall-platform replay_seed"
            );
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed: {failures:?}",
        failures.len(),
        seeds.end - seeds.start
    );
}

// 1,000 seeds in eight tests so the test harness spreads them over the cores.
#[test]
fn seeds_0000_0125() {
    run_range(0..125);
}
#[test]
fn seeds_0125_0250() {
    run_range(125..250);
}
#[test]
fn seeds_0250_0375() {
    run_range(250..375);
}
#[test]
fn seeds_0375_0500() {
    run_range(375..500);
}
#[test]
fn seeds_0500_0625() {
    run_range(500..625);
}
#[test]
fn seeds_0625_0750() {
    run_range(625..750);
}
#[test]
fn seeds_0750_0875() {
    run_range(750..875);
}
#[test]
fn seeds_0875_1000() {
    run_range(875..1000);
}

#[test]
fn replay_seed() {
    let Some(seed) = std::env::var("SQUALL_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let report = run_seed(seed);
    if let Some(line) = report.failure_line() {
        panic!("{line}");
    }
}

#[test]
fn one_seed_twice_gives_the_same_history() {
    for seed in [7, 4242, 90_001] {
        let first = run_seed(seed);
        let second = run_seed(seed);
        assert!(
            first.history.events.len() > 10,
            "seed {seed} recorded almost nothing"
        );
        assert_eq!(
            first.history.digest(),
            second.history.digest(),
            "seed {seed} is not deterministic"
        );
    }
}
