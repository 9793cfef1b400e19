//! `squall-wanlink`: a userspace WAN link emulator, as a library and a binary.
//!
//! **Why.** The edge+cloud rehearsal needs a slow, breakable link between an edge
//! cluster and a cloud cluster, and the kernels we run on have no `netem` (and tests
//! cannot be root anyway). So the link is a TCP proxy: each link listens on one
//! address and proxies every accepted connection to an upstream, holding each chunk
//! it reads for `delay_ms` plus a uniform jitter in `[0, jitter_ms]` before passing it
//! on, in each direction (a round trip pays the delay twice). It can cut the link —
//! reset every open connection and every new one — and restore it, on command.
//!
//! **Invariants.** Bytes are never reordered, altered, lost or duplicated while a
//! connection lives; a chunk is released no earlier than `read_time + delay + jitter`
//! and no earlier than the chunk before it. Memory is bounded by named limits: at most
//! [`LinkSettings::buffer_bytes_max`] payload bytes (and `chunks_buffered_max` chunks)
//! held per direction per connection — past that the proxy stops reading, and TCP
//! pushes back on the sender — and at most `connections_per_link_max` connections per
//! link.
//!
//! **Boundary.** It emulates delay, jitter and cuts only: no bandwidth shaping, no
//! loss or reordering (TCP would hide them anyway), no UDP. A cut resets connections,
//! which a real partition does not do (there, peers find out by timeout); it is the
//! quick, deterministic version of a partition.
//!
//! **Runtime.** [`WanLink::start`] must be called inside a tokio runtime: it spawns its
//! tasks there (any flavour, `#[tokio::test]` included) and owns no thread. Use it from
//! other crates' tests like this:
//!
//! ```no_run
//! # async fn example() -> Result<(), squall_wanlink::WanLinkError> {
//! use squall_wanlink::{LinkSettings, LinkSpec, WanLink};
//! let links = vec![LinkSpec::new("127.0.0.1:0".parse().expect("addr"), "127.0.0.1:7100")?];
//! let settings = LinkSettings { delay_ms: 50, jitter_ms: 5, ..LinkSettings::default() };
//! let wan = WanLink::start(links, settings).await?;
//! let proxy_addr = wan.listen_addrs()[0]; // connect the edge here
//! let handle = wan.handle();
//! handle.cut();
//! handle.restore();
//! handle.set_delay(100, 0)?;
//! println!("{}", handle.status());
//! # Ok(()) }
//! ```

pub mod control;
mod error;
mod forward;
mod link;
mod settings;

pub use control::{ControlCommand, serve_control};
pub use error::WanLinkError;
pub use link::{
    DelaySettings, LinkState, LinkStatus, TrafficCounters, WanLink, WanLinkHandle, WanLinkStatus,
};
pub use settings::{
    BUFFER_BYTES_MAX_CEILING, BUFFER_BYTES_MAX_DEFAULT, CHUNKS_BUFFERED_MAX_DEFAULT,
    CONNECTIONS_PER_LINK_MAX_DEFAULT, DELAY_MS_MAX, LinkSettings, LinkSpec,
    READ_CHUNK_BYTES_MAX_DEFAULT, UPSTREAM_CONNECT_TIMEOUT_MS_DEFAULT,
};
