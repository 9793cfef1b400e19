//! Runs many simulator seeds in parallel and reports every failure.
//!
//! ```text
//! cargo run --release -p squall-platform --example soak -- --seeds 0..100000 [--threads 8]
//! ```
//!
//! `--seeds A..B` runs the half-open range A..B, `--seeds N` runs 0..N. `--threads`
//! defaults to the machine's available parallelism. Each failure is printed as it happens;
//! the last line on stdout is `seeds: N, failures: M`. Exit code: 0 when every seed passed,
//! 1 when any failed, 2 on bad arguments.

use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use squall_platform::sim::run_seed;

const PROGRESS_EVERY: u64 = 10_000;

const USAGE: &str = "usage: soak --seeds <A..B | N> [--threads <T>]
  --seeds A..B   run seeds A (inclusive) to B (exclusive)
  --seeds N      run seeds 0..N
  --threads T    worker threads (default: available parallelism)";

#[derive(Debug)]
struct Args {
    seeds: Range<u64>,
    threads: usize,
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("--seeds: {s:?} is not a non-negative integer"))
    };
    let range = match text.split_once("..") {
        Some((start, end)) => number(start)?..number(end)?,
        None => 0..number(text)?,
    };
    if range.start > range.end {
        return Err(format!("--seeds: range {text:?} ends before it starts"));
    }
    Ok(range)
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut seeds = None;
    let mut threads = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--seeds" => seeds = Some(parse_seeds(&value()?)?),
            "--threads" => {
                let text = value()?;
                match text.parse::<usize>() {
                    Ok(n) if n > 0 => threads = Some(n),
                    _ => return Err(format!("--threads: {text:?} is not a positive integer")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let seeds = seeds.ok_or("--seeds is required")?;
    let threads = threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, std::num::NonZero::get));
    Ok(Args { seeds, threads })
}

/// Runs one seed; a panic in the simulator or the core counts as a failure.
fn run_one(seed: u64) -> Option<String> {
    match std::panic::catch_unwind(|| run_seed(seed)) {
        Ok(report) => report.failure_line(),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Some(format!(
                "seed {seed} panicked: {reason}\nreplay with: SQUALL_SEED={seed} cargo test -p squall-platform replay_seed"
            ))
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("soak: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let total = args.seeds.end - args.seeds.start;
    let next = AtomicU64::new(args.seeds.start);
    let done = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let end = args.seeds.end;
    let threads = args
        .threads
        .min(usize::try_from(total).unwrap_or(usize::MAX))
        .max(1);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // Take the next seed, never moving the counter past `end`.
                while let Ok(seed) = next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    (s < end).then_some(s + 1)
                }) {
                    if let Some(line) = run_one(seed) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        println!("{line}");
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if finished.is_multiple_of(PROGRESS_EVERY) {
                        eprintln!(
                            "soak: {finished}/{total} seeds, {} failures",
                            failures.load(Ordering::Relaxed)
                        );
                    }
                }
            });
        }
    });
    let failed = failures.load(Ordering::Relaxed);
    println!("seeds: {total}, failures: {failed}");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
