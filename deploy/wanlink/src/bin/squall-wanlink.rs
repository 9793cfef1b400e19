//! `squall-wanlink`: a WAN link emulator between an edge and a cloud cluster (this
//! kernel has no netem). Proxies each `--link LISTEN=UPSTREAM` with a one-way delay
//! and jitter; a control port takes `delay`, `cut`, `restore` and `status` lines.
//!
//! ```text
//! squall-wanlink --link 127.0.0.1:17100=127.0.0.1:7100 --link 127.0.0.1:17101=localhost:7101 \
//!     --delay-ms 50 --jitter-ms 5 --control 127.0.0.1:17999
//! ```
//!
//! On start it prints one line per link (`link 127.0.0.1:17100 -> 127.0.0.1:7100`)
//! and `control 127.0.0.1:17999` to stdout, with the bound ports (port 0 picks one);
//! logs go to stderr (`RUST_LOG` filters them). SIGUSR1 cuts, SIGUSR2 restores,
//! SIGTERM or Ctrl-C stops.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use squall_wanlink::{
    BUFFER_BYTES_MAX_DEFAULT, CONNECTIONS_PER_LINK_MAX_DEFAULT, LinkSettings, LinkSpec, WanLink,
    serve_control,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "squall-wanlink",
    about = "A userspace WAN link emulator: a TCP proxy adding delay and jitter, with cut/restore"
)]
struct Args {
    /// A link, LISTEN_ADDR=UPSTREAM_ADDR (e.g. 127.0.0.1:17100=localhost:7100); repeatable.
    #[arg(long = "link", value_name = "LISTEN=UPSTREAM", required = true)]
    links: Vec<LinkSpec>,
    /// One-way delay added in each direction, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra one-way delay, uniform in [0, jitter_ms], per chunk.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Address of the line-protocol control port (delay/cut/restore/status).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Bytes held per direction per connection before the proxy stops reading.
    #[arg(long, default_value_t = BUFFER_BYTES_MAX_DEFAULT)]
    buffer_bytes_max: usize,
    /// Open connections per link; more are reset at once.
    #[arg(long, default_value_t = CONNECTIONS_PER_LINK_MAX_DEFAULT)]
    connections_per_link_max: usize,
    /// Seed of the jitter draws.
    #[arg(long, default_value_t = 0)]
    jitter_seed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let settings = LinkSettings {
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
        buffer_bytes_max: args.buffer_bytes_max,
        connections_per_link_max: args.connections_per_link_max,
        jitter_seed: args.jitter_seed,
        ..LinkSettings::default()
    };
    let wan = WanLink::start(args.links.clone(), settings)
        .await
        .context("cannot start the links")?;
    let control_listener = match args.control {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for control on {addr}"))?,
        ),
        None => None,
    };

    let mut stdout = std::io::stdout().lock();
    for (spec, listen) in args.links.iter().zip(wan.listen_addrs()) {
        writeln!(stdout, "link {listen} -> {}", spec.upstream)?;
    }
    if let Some(listener) = &control_listener {
        writeln!(stdout, "control {}", listener.local_addr()?)?;
    }
    stdout.flush()?;
    drop(stdout);

    let handle = wan.handle();
    if let Some(listener) = control_listener {
        tokio::spawn(serve_control(listener, handle.clone()));
    }
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut user1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    let mut user2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => { info!("SIGTERM: stopping"); break; }
            result = tokio::signal::ctrl_c() => {
                result.context("cannot watch Ctrl-C")?;
                info!("Ctrl-C: stopping");
                break;
            }
            _ = user1.recv() => { info!("SIGUSR1: cutting"); handle.cut(); }
            _ = user2.recv() => { info!("SIGUSR2: restoring"); handle.restore(); }
        }
    }
    wan.shutdown().await;
    Ok(())
}
