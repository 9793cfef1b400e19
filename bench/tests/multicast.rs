//! End to end: the real binary starts its node processes, measures both systems and
//! prints one parseable JSON row per system.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_squall-bench");

fn rows(stdout: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[test]
fn multicast_json_reports_both_systems() {
    let start = Instant::now();
    let out = Command::new(BIN)
        .args([
            "multicast",
            "--nodes",
            "3",
            "--size",
            "1KiB",
            "--seconds",
            "1",
            "--json",
        ])
        .output()
        .expect("runs squall-bench");
    assert!(
        out.status.success(),
        "squall-bench failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&out.stdout);
    assert_eq!(rows.len(), 2, "one row per system: {rows:?}");
    for (row, system) in rows.iter().zip(["squall", "raw-tcp"]) {
        assert_eq!(row["bench"], "multicast");
        assert_eq!(row["system"], system);
        assert_eq!(row["case"], "ordered 1KiB n3 all");
        for field in ["ops_per_s", "bytes_per_s"] {
            let value = row[field].as_f64().unwrap_or(0.0);
            assert!(value > 0.0, "{system} {field} = {value}: {row}");
        }
        for field in ["p50_us", "p99_us"] {
            assert!(row[field].as_u64().is_some(), "{system} {field}: {row}");
        }
        let ops = row["ops_per_s"].as_f64().unwrap_or(0.0);
        let bytes = row["bytes_per_s"].as_f64().unwrap_or(0.0);
        assert!((bytes / ops - 1024.0).abs() < 1.0, "1 KiB messages: {row}");
    }
    let ratio = &rows[0]["ratio_vs_raw_tcp"];
    assert!(
        ratio["ops_per_s"].as_f64().is_some_and(|r| r > 0.0),
        "{ratio}"
    );
    assert!(rows[1].get("ratio_vs_raw_tcp").is_none());
    // Two systems × (start-up + 1 s warm-up + 1 s window), with room for a busy machine.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    for (args, expected) in [
        (vec!["multicast", "--size", "3"], "too small"),
        (vec!["multicast", "--size", "1XiB"], "not a size"),
        (vec!["multicast", "--nodes", "1"], "--nodes"),
        (vec!["multicast", "--seconds", "0"], "positive"),
        (vec!["multicast", "--mode", "fifo"], "--mode"),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .output()
            .expect("runs squall-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn readable_table_without_json() {
    let out = Command::new(BIN)
        .args([
            "multicast",
            "--nodes",
            "2",
            "--size",
            "64KiB",
            "--seconds",
            "0.5",
            "--warmup-ms",
            "200",
            "--senders",
            "one",
            "--mode",
            "raw",
        ])
        .output()
        .expect("runs squall-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("raw 64KiB n2 one"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("squall ")), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("raw-tcp ")),
        "{stdout}"
    );
    assert!(stdout.contains("squall / raw-tcp"), "{stdout}");
}

#[test]
fn gives_up_with_a_message_when_nodes_are_late() {
    // No grace at all: the nodes cannot be ready in time, so the run must fail (and
    // kill them) instead of waiting.
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["multicast", "--seconds", "1", "--grace-s", "0"])
        .output()
        .expect("runs squall-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
