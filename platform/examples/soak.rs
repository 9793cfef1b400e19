//! Runs a range of simulator seeds and reports failures:
//! `cargo run --release -p squall-platform --example soak -- --seeds A..B`
//! ends with `seeds: N, failures: M` and exits 1 when M > 0.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

fn parse_range(arg: &str) -> Option<(u64, u64)> {
    match arg.split_once("..") {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((0, arg.parse().ok()?)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let range = args
        .iter()
        .position(|a| a == "--seeds")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| parse_range(a));
    let Some((start, end)) = range.filter(|(a, b)| a <= b) else {
        eprintln!("usage: soak --seeds A..B (or --seeds N for 0..N)");
        std::process::exit(2);
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let report = squall_platform::sim::run_seed(seed);
                    if let Some(line) = report.failure_line() {
                        println!("{line}");
                        failures.lock().map(|mut f| f.push(seed)).ok();
                    }
                    if (seed - start + 1).is_multiple_of(10_000) {
                        eprintln!("{} seeds run", seed - start + 1);
                    }
                }
            });
        }
    });
    let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
    println!("seeds: {}, failures: {failed}", end - start);
    if failed > 0 {
        std::process::exit(1);
    }
}
