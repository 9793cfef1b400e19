//! The emulator: listeners, their accept loops, the shared state (up/cut, delay) and
//! the counters behind `status`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::forward::{OpenConnectionGuard, close_abruptly, run_connection};
use crate::settings::check_delay;
use crate::{LinkSettings, LinkSpec, WanLinkError};

/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Whether the emulated link carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connections are accepted and proxied.
    Up,
    /// Open connections were reset; new ones are accepted and reset at once.
    Cut,
    /// The emulator was shut down; nothing is accepted, and `restore` does nothing.
    Stopped,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Up => "up",
            LinkState::Cut => "cut",
            LinkState::Stopped => "stopped",
        })
    }
}

/// The one-way delay model: each chunk waits `delay_ms` plus uniform `[0, jitter_ms]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelaySettings {
    pub delay_ms: u64,
    pub jitter_ms: u64,
}

/// Which way bytes flow through a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the client that connected to the listen address, to the upstream.
    Up,
    /// From the upstream back to the client.
    Down,
}

/// Counters for one link, or summed over all links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Proxied connections open now.
    pub connections_open: u64,
    /// Connections proxied since start.
    pub connections_accepted: u64,
    /// Connections accepted and reset at once because the link was cut.
    pub connections_refused_cut: u64,
    /// Connections accepted and reset at once because `connections_per_link_max` were open.
    pub connections_refused_limit: u64,
    /// Bytes written to upstreams (client to upstream).
    pub bytes_up: u64,
    /// Bytes written back to clients (upstream to client).
    pub bytes_down: u64,
    /// Bytes read but not yet written, now, over all connections and directions.
    pub buffered_bytes: u64,
    /// The most bytes ever held for one direction of one connection; never above
    /// `buffer_bytes_max`.
    pub buffered_bytes_peak: u64,
}

impl TrafficCounters {
    fn add(&mut self, other: &TrafficCounters) {
        self.connections_open += other.connections_open;
        self.connections_accepted += other.connections_accepted;
        self.connections_refused_cut += other.connections_refused_cut;
        self.connections_refused_limit += other.connections_refused_limit;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.buffered_bytes += other.buffered_bytes;
        self.buffered_bytes_peak = self.buffered_bytes_peak.max(other.buffered_bytes_peak);
    }
}

/// One link's address pair and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The bound listen address (the real port when 0 was asked for).
    pub listen: SocketAddr,
    pub upstream: String,
    pub traffic: TrafficCounters,
}

/// A snapshot of the whole emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanLinkStatus {
    pub state: LinkState,
    pub delay: DelaySettings,
    /// Summed over links (`buffered_bytes_peak`: the largest).
    pub total: TrafficCounters,
    pub links: Vec<LinkStatus>,
}

impl fmt::Display for WanLinkStatus {
    /// The control port's `status` reply, one line:
    /// `up delay_ms=50 jitter_ms=5 connections=3 bytes_up=.. bytes_down=.. ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = &self.total;
        write!(
            f,
            "{} delay_ms={} jitter_ms={} connections={} bytes_up={} bytes_down={} \
             buffered_bytes={} buffered_bytes_peak={} accepted={} refused_cut={} refused_limit={}",
            self.state,
            self.delay.delay_ms,
            self.delay.jitter_ms,
            total.connections_open,
            total.bytes_up,
            total.bytes_down,
            total.buffered_bytes,
            total.buffered_bytes_peak,
            total.connections_accepted,
            total.connections_refused_cut,
            total.connections_refused_limit,
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    pub(crate) connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused_cut: AtomicU64,
    connections_refused_limit: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    pub(crate) buffered_bytes: AtomicU64,
    pub(crate) buffered_bytes_peak: AtomicU64,
}

impl LinkCounters {
    pub(crate) fn bytes_forwarded(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Up => &self.bytes_up,
            Direction::Down => &self.bytes_down,
        }
    }

    fn snapshot(&self) -> TrafficCounters {
        TrafficCounters {
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_refused_cut: self.connections_refused_cut.load(Ordering::Relaxed),
            connections_refused_limit: self.connections_refused_limit.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            buffered_bytes: self.buffered_bytes.load(Ordering::Relaxed),
            buffered_bytes_peak: self.buffered_bytes_peak.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub(crate) struct LinkShared {
    /// `listen` is the bound address.
    pub(crate) spec: LinkSpec,
    pub(crate) counters: LinkCounters,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// The limits; its delay fields are only the starting values (see `delay`).
    pub(crate) settings: LinkSettings,
    delay: Mutex<DelaySettings>,
    pub(crate) state: watch::Sender<LinkState>,
    links: Vec<Arc<LinkShared>>,
    next_connection_id: AtomicU64,
}

impl Shared {
    /// The delay model for a chunk read now.
    pub(crate) fn delay(&self) -> DelaySettings {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running emulator: one listener per link, proxying to its upstream.
///
/// Start it with [`WanLink::start`] from inside a tokio runtime (any flavour, including
/// `#[tokio::test]`'s current-thread one): it binds the listeners and spawns its tasks
/// onto that runtime; it starts no runtime or thread of its own. Control it through
/// [`WanLink::handle`]. Dropping the `WanLink` stops it: the listeners close and
/// every open connection is reset (call [`WanLink::shutdown`] to also wait until the
/// listen ports are released).
#[derive(Debug)]
pub struct WanLink {
    handle: WanLinkHandle,
    listen_addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl WanLink {
    /// Binds every link's listen address (port 0 picks a free port) and starts
    /// proxying. Fails, having started nothing, if any address cannot be bound.
    ///
    /// Must be called within a tokio runtime: it uses `tokio::spawn`.
    pub async fn start(
        links: Vec<LinkSpec>,
        settings: LinkSettings,
    ) -> Result<WanLink, WanLinkError> {
        settings.validate()?;
        if links.is_empty() {
            return Err(WanLinkError::NoLinks);
        }
        let mut listeners = Vec::with_capacity(links.len());
        let mut link_shareds = Vec::with_capacity(links.len());
        for spec in links {
            let bind_error = |source| WanLinkError::Bind {
                addr: spec.listen,
                source,
            };
            let listener = TcpListener::bind(spec.listen).await.map_err(bind_error)?;
            let listen = listener.local_addr().map_err(bind_error)?;
            link_shareds.push(Arc::new(LinkShared {
                spec: LinkSpec {
                    listen,
                    upstream: spec.upstream,
                },
                counters: LinkCounters::default(),
            }));
            listeners.push(listener);
        }
        let (state, _) = watch::channel(LinkState::Up);
        let shared = Arc::new(Shared {
            delay: Mutex::new(DelaySettings {
                delay_ms: settings.delay_ms,
                jitter_ms: settings.jitter_ms,
            }),
            settings,
            state,
            links: link_shareds.clone(),
            next_connection_id: AtomicU64::new(0),
        });
        let listen_addrs = link_shareds.iter().map(|link| link.spec.listen).collect();
        let accept_tasks = listeners
            .into_iter()
            .zip(link_shareds)
            .map(|(listener, link)| {
                let span = info_span!("wanlink", listen = %link.spec.listen, upstream = %link.spec.upstream);
                tokio::spawn(accept_loop(listener, Arc::clone(&shared), link).instrument(span))
            })
            .collect();
        Ok(WanLink {
            handle: WanLinkHandle { shared },
            listen_addrs,
            accept_tasks,
        })
    }

    /// The bound listen addresses, in the order the links were given.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// A cloneable handle to change the delay, cut, restore and read the status.
    pub fn handle(&self) -> WanLinkHandle {
        self.handle.clone()
    }

    /// Stops the emulator (resets every open connection) and waits until the
    /// listeners are closed.
    pub async fn shutdown(mut self) {
        self.handle.stop();
        for task in std::mem::take(&mut self.accept_tasks) {
            if let Err(error) = task.await {
                warn!(%error, "an accept loop ended abnormally");
            }
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.handle.stop();
    }
}

/// Controls a running [`WanLink`]. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct WanLinkHandle {
    shared: Arc<Shared>,
}

impl WanLinkHandle {
    /// Sets the one-way delay and jitter for chunks read from now on (chunks already
    /// queued keep their release time, and order is kept either way).
    pub fn set_delay(&self, delay_ms: u64, jitter_ms: u64) -> Result<(), WanLinkError> {
        check_delay(delay_ms, jitter_ms)?;
        *self
            .shared
            .delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = DelaySettings {
            delay_ms,
            jitter_ms,
        };
        info!(delay_ms, jitter_ms, "delay set");
        Ok(())
    }

    /// Cuts every link: resets all open connections (both sides) and resets new ones
    /// as soon as they are accepted, until [`restore`](Self::restore). Does nothing
    /// once stopped.
    pub fn cut(&self) {
        self.change_state(LinkState::Cut);
    }

    /// Accepts and proxies connections again after a [`cut`](Self::cut).
    pub fn restore(&self) {
        self.change_state(LinkState::Up);
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        *self.shared.state.borrow()
    }

    /// Counters and settings now.
    pub fn status(&self) -> WanLinkStatus {
        let mut total = TrafficCounters::default();
        let links = self
            .shared
            .links
            .iter()
            .map(|link| {
                let traffic = link.counters.snapshot();
                total.add(&traffic);
                LinkStatus {
                    listen: link.spec.listen,
                    upstream: link.spec.upstream.clone(),
                    traffic,
                }
            })
            .collect();
        WanLinkStatus {
            state: self.state(),
            delay: self.shared.delay(),
            total,
            links,
        }
    }

    /// Resolves once the emulator has stopped.
    pub async fn stopped(&self) {
        let mut state = self.shared.state.subscribe();
        // The sender lives in `shared`, which `self` keeps alive: no error possible.
        let _ = state.wait_for(|state| *state == LinkState::Stopped).await;
    }

    fn stop(&self) {
        self.shared.state.send_replace(LinkState::Stopped);
    }

    fn change_state(&self, new_state: LinkState) {
        let changed = self.shared.state.send_if_modified(|state| {
            if *state == LinkState::Stopped || *state == new_state {
                return false;
            }
            *state = new_state;
            true
        });
        if changed {
            info!(state = %new_state, "link state changed");
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, link: Arc<LinkShared>) {
    info!("listening");
    let mut state = shared.state.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = state.wait_for(|state| *state == LinkState::Stopped) => {
                info!("stopped");
                return;
            }
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                continue;
            }
        };
        let current_state = *shared.state.borrow();
        match current_state {
            LinkState::Up => {}
            LinkState::Cut => {
                debug!(%peer, "link cut: resetting new connection");
                link.counters
                    .connections_refused_cut
                    .fetch_add(1, Ordering::Relaxed);
                refuse(client);
                continue;
            }
            LinkState::Stopped => {
                refuse(client);
                return;
            }
        }
        let open = link.counters.connections_open.load(Ordering::Relaxed);
        if open >= shared.settings.connections_per_link_max as u64 {
            warn!(%peer, open, limit = shared.settings.connections_per_link_max,
                "connections_per_link_max reached: resetting new connection");
            link.counters
                .connections_refused_limit
                .fetch_add(1, Ordering::Relaxed);
            refuse(client);
            continue;
        }
        // Only this loop opens connections on this link, so the check above holds.
        let open_guard = OpenConnectionGuard::new(Arc::clone(&link));
        link.counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let connection_id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, connection_id, "accepted");
        let span = info_span!("connection", connection_id, %peer);
        tokio::spawn(
            run_connection(
                client,
                Arc::clone(&shared),
                Arc::clone(&link),
                connection_id,
                open_guard,
            )
            .instrument(span),
        );
    }
}

fn refuse(client: TcpStream) {
    close_abruptly(&client);
    drop(client);
}
