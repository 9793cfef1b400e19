//! `squall-bench multicast`: starts the node processes of each system, runs them through
//! warm-up and the measured window, and prints what they measured.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::child::{GO, READY, STATS};
use crate::size::{format_rate, format_size};
use crate::stats::{Aggregate, NodeReport, aggregate, now_us};
use crate::{Mode, MulticastArgs, Senders, System, default_threads, default_window};

/// Time between the GO line and the start of sending, so every node starts together.
const START_DELAY_US: u64 = 200_000;
/// How long the nodes get to exit on their own before they are killed.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// One row of `--json` output (DESIGN.md §10).
#[derive(Debug, Serialize)]
struct Row<'a> {
    bench: &'static str,
    system: &'static str,
    case: &'a str,
    p50_us: u64,
    p99_us: u64,
    ops_per_s: f64,
    bytes_per_s: f64,
    /// CPU all nodes used together while sending, in cores: on a shared machine, read
    /// the rates against it.
    cpu_cores: f64,
    /// CPU µs (all nodes) per delivery at one receiver.
    cpu_us_per_op: f64,
    /// Squall's row only: its rates divided by raw-tcp's (when both were measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_vs_raw_tcp: Option<Ratio>,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Ratio {
    ops_per_s: f64,
    bytes_per_s: f64,
}

pub fn case_name(args: &MulticastArgs) -> String {
    format!(
        "{} {} n{} {}",
        mode_name(args.mode),
        format_size(args.size),
        args.nodes,
        senders_name(args.senders)
    )
}

/// The nodes whose rates count: every node that receives another node's messages.
fn receivers(args: &MulticastArgs) -> Vec<usize> {
    let first = match args.senders {
        Senders::All => 0,
        Senders::One => 1,
    };
    (first..args.nodes as usize).collect()
}

pub fn run(args: &MulticastArgs) -> Result<()> {
    let requested = if args.systems.is_empty() {
        vec![System::Squall, System::RawTcp]
    } else {
        args.systems.clone()
    };
    let mut systems: Vec<System> = Vec::new();
    for system in requested {
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    let case = case_name(args);
    let receivers = receivers(args);
    let mut results: Vec<(System, Aggregate)> = Vec::new();
    for system in systems {
        if !args.json {
            eprintln!(
                "measuring {} ({case}): {} ms warm-up, {} s window ...",
                system.name(),
                args.warmup_ms,
                args.seconds
            );
        }
        let reports = run_system(system, args)
            .with_context(|| format!("measuring {} ({case})", system.name()))?;
        let agg = aggregate(&reports, &receivers, args.seconds);
        if agg.ops_per_s <= 0.0 {
            bail!(
                "{} ({case}) delivered nothing in the measured window",
                system.name()
            );
        }
        results.push((system, agg));
    }
    let raw = results
        .iter()
        .find(|(s, _)| *s == System::RawTcp)
        .map(|(_, a)| a.clone());
    let ratio = |agg: &Aggregate| {
        raw.as_ref().map(|raw| Ratio {
            ops_per_s: agg.ops_per_s / raw.ops_per_s,
            bytes_per_s: agg.bytes_per_s / raw.bytes_per_s,
        })
    };
    if args.json {
        let mut out = std::io::stdout().lock();
        for (system, agg) in &results {
            let row = Row {
                bench: "multicast",
                system: system.name(),
                case: &case,
                p50_us: agg.p50_us,
                p99_us: agg.p99_us,
                ops_per_s: round2(agg.ops_per_s),
                bytes_per_s: round2(agg.bytes_per_s),
                cpu_cores: round2(agg.cpu_cores),
                cpu_us_per_op: round3(agg.cpu_us_per_op()),
                ratio_vs_raw_tcp: if *system == System::Squall {
                    ratio(agg).map(|r| Ratio {
                        ops_per_s: round3(r.ops_per_s),
                        bytes_per_s: round3(r.bytes_per_s),
                    })
                } else {
                    None
                },
            };
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        }
    } else {
        println!(
            "multicast {case}: {} s window; rates per receiving node ({} of {}), \
             latency over every receiver's deliveries",
            args.seconds,
            receivers.len(),
            args.nodes
        );
        println!(
            "{:<9} {:>11} {:>12} {:>10} {:>10} {:>12} {:>9} {:>11}",
            "system",
            "msgs/s",
            "bytes/s",
            "p50 µs",
            "p99 µs",
            "sent/s all",
            "CPU cores",
            "CPU µs/msg"
        );
        for (system, agg) in &results {
            println!(
                "{:<9} {:>11.0} {:>12} {:>10} {:>10} {:>12.0} {:>9.2} {:>11.2}",
                system.name(),
                agg.ops_per_s,
                format_rate(agg.bytes_per_s),
                agg.p50_us,
                agg.p99_us,
                agg.sent_per_s,
                agg.cpu_cores,
                agg.cpu_us_per_op()
            );
        }
        if let Some((_, squall)) = results.iter().find(|(s, _)| *s == System::Squall)
            && let Some(r) = ratio(squall)
        {
            println!(
                "squall / raw-tcp: msgs/s {:.3}, bytes/s {:.3}",
                r.ops_per_s, r.bytes_per_s
            );
        }
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Free ports on 127.0.0.1: bound together (so they differ), then released.
fn pick_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free ports")?;
    listeners
        .iter()
        .map(|l| l.local_addr().context("picking free ports"))
        .collect()
}

/// Runs one system's processes through one measurement; returns every node's report.
fn run_system(system: System, args: &MulticastArgs) -> Result<Vec<NodeReport>> {
    let nodes = args.nodes as usize;
    let addrs = pick_addrs(nodes)?;
    let mut cluster = Cluster::start(system, args, &addrs)?;
    let grace = Duration::from_secs(args.tuning.grace_s);
    cluster.wait_for(READY, Instant::now() + grace)?;
    let start_us = now_us() + START_DELAY_US;
    cluster.broadcast(&format!("{GO}{start_us}"))?;
    let run_time = Duration::from_micros(START_DELAY_US + args.warmup_ms * 1_000)
        + Duration::from_secs_f64(args.seconds);
    let lines = cluster.wait_for(STATS, Instant::now() + run_time + grace)?;
    let mut reports = Vec::with_capacity(nodes);
    for (node, line) in lines.into_iter().enumerate() {
        if std::env::var_os("SQUALL_BENCH_DEBUG").is_some() {
            eprintln!(
                "node {node}: {}",
                line.chars().take(300).collect::<String>()
            );
        }
        let report: NodeReport = serde_json::from_str(&line)
            .with_context(|| format!("node {node}: unreadable statistics `{line}`"))?;
        reports.push(report);
    }
    cluster.finish();
    Ok(reports)
}

/// What a node's output thread hands the parent.
#[derive(Debug)]
enum Said {
    Line(String),
    Closed,
}

/// The node processes of one measurement. Dropping it kills every one still running,
/// whether the run succeeded, failed or panicked.
#[derive(Debug)]
struct Cluster {
    system: System,
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    said: mpsc::Receiver<(usize, Said)>,
}

impl Cluster {
    fn start(system: System, args: &MulticastArgs, addrs: &[SocketAddr]) -> Result<Cluster> {
        let exe = std::env::current_exe().context("finding this program's path")?;
        let window = args
            .tuning
            .window
            .unwrap_or_else(|| default_window(args.size));
        let threads = args
            .tuning
            .threads
            .unwrap_or_else(|| default_threads(addrs.len()));
        let addr_list = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let (tx, said) = mpsc::channel();
        let mut cluster = Cluster {
            system,
            children: Vec::new(),
            stdins: Vec::new(),
            said,
        };
        for index in 0..addrs.len() {
            let mut child = Command::new(&exe)
                .arg("node")
                .args(["--system", system.name()])
                .args(["--index", &index.to_string()])
                .args(["--addrs", &addr_list])
                .args(["--size", &args.size.to_string()])
                .args(["--seconds", &args.seconds.to_string()])
                .args(["--warmup-ms", &args.warmup_ms.to_string()])
                .args(["--senders", senders_name(args.senders)])
                .args(["--mode", mode_name(args.mode)])
                .args(["--threads", &threads.to_string()])
                .args(["--pipeline", &args.tuning.pipeline.to_string()])
                .args(["--window", &window.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting node {index} ({})", exe.display()))?;
            let stdout = child.stdout.take().context("the node's stdout")?;
            cluster.stdins.push(child.stdin.take());
            cluster.children.push(child);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("node-{index}-out"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send((index, Said::Line(line))).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((index, Said::Closed));
                })
                .context("starting an output thread")?;
        }
        Ok(cluster)
    }

    /// Waits until every node said a line starting with `prefix`; returns the rest of
    /// each node's line, in node order. Fails if a node exits first or time runs out.
    fn wait_for(&mut self, prefix: &str, deadline: Instant) -> Result<Vec<String>> {
        let mut got: Vec<Option<String>> = vec![None; self.children.len()];
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (node, said) = match self.said.recv_timeout(left) {
                Ok(said) => said,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let missing: Vec<usize> =
                        (0..got.len()).filter(|&i| got[i].is_none()).collect();
                    bail!(
                        "timed out waiting for {} node(s) {missing:?} to say {}; killing them",
                        self.system.name(),
                        prefix.trim()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("every node's output closed")
                }
            };
            match said {
                Said::Line(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        got[node] = Some(rest.to_string());
                    }
                }
                Said::Closed => {
                    let status = self.children[node]
                        .wait()
                        .map_or_else(|e| e.to_string(), |s| s.to_string());
                    bail!(
                        "{} node {node} exited ({status}) before saying {}",
                        self.system.name(),
                        prefix.trim()
                    );
                }
            }
        }
        got.into_iter()
            .map(|line| line.ok_or_else(|| anyhow!("a node said nothing")))
            .collect()
    }

    fn broadcast(&mut self, line: &str) -> Result<()> {
        for (node, stdin) in self.stdins.iter_mut().enumerate() {
            let stdin = stdin.as_mut().context("the node's input is closed")?;
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .with_context(|| format!("telling node {node} `{line}`"))?;
        }
        Ok(())
    }

    /// Closes the nodes' input (their signal to exit) and gives them a moment.
    fn finish(&mut self) {
        self.stdins.clear();
        let deadline = Instant::now() + EXIT_WAIT;
        for child in &mut self.children {
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn senders_name(senders: Senders) -> &'static str {
    match senders {
        Senders::All => "all",
        Senders::One => "one",
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Ordered => "ordered",
        Mode::Raw => "raw",
    }
}
