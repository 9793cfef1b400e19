//! The child's side of the harness protocol, shared by every kind of node process.
//!
//! ```text
//! child → parent (stdout)   READY                 the node can start sending
//!                           STATS {json}          its NodeReport, once the window ended
//! parent → child (stdin)    GO <start_us>         start sending at this wall-clock time
//!                           (end of input)        exit now
//! ```
//!
//! A child also exits when its standard input closes because the parent died.

use std::io::BufRead;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::NodeArgs;
use crate::stats::{NodeReport, Window};

pub const READY: &str = "READY";
pub const STATS: &str = "STATS ";
pub const GO: &str = "GO ";

#[derive(Debug)]
pub enum Control {
    Go {
        start_us: u64,
    },
    /// The parent closed our input (done, or gone): exit.
    End,
}

/// Reads the parent's commands on a thread (standard input blocks).
pub fn control() -> Result<mpsc::UnboundedReceiver<Control>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("control".to_string())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(start) = line.strip_prefix(GO)
                    && let Ok(start_us) = start.trim().parse()
                {
                    let _ = tx.send(Control::Go { start_us });
                }
            }
            let _ = tx.send(Control::End);
        })
        .context("starting the control thread")?;
    Ok(rx)
}

/// The tokio runtime a node runs on.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    runtime.context("starting the tokio runtime")
}

/// The warm-up starts at `start_us`; the measured window follows it.
pub fn window(args: &NodeArgs, start_us: u64) -> Window {
    let start_us = start_us + args.warmup_ms * 1_000;
    Window {
        start_us,
        end_us: start_us + (args.seconds * 1e6) as u64,
    }
}

/// Binds this node's address (`--addrs[--index]`).
pub async fn listen(args: &NodeArgs) -> Result<tokio::net::TcpListener> {
    let addr = *args
        .addrs
        .get(args.index)
        .context("--index is not in --addrs")?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

pub fn say_ready() {
    println!("{READY}");
}

pub fn say_stats(report: &NodeReport) -> Result<()> {
    let json = serde_json::to_string(report).context("encoding the report")?;
    println!("{STATS}{json}");
    Ok(())
}

/// A `tokio::time::Instant` for a wall-clock time in µs since the epoch.
pub fn instant_at(at_us: u64) -> tokio::time::Instant {
    let now = crate::stats::now_us();
    let now_instant = tokio::time::Instant::now();
    if at_us >= now {
        now_instant + std::time::Duration::from_micros(at_us - now)
    } else {
        now_instant
    }
}
