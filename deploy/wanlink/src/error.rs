//! The crate's one error type.

use std::net::SocketAddr;

/// Everything the library can refuse or fail at. Each variant names what the caller
/// can fix: a link spec, a setting, a control line, or an address already taken.
#[derive(Debug, thiserror::Error)]
pub enum WanLinkError {
    /// A `LISTEN_ADDR=UPSTREAM_ADDR` link spec that does not parse.
    #[error(
        "bad link '{spec}': {reason} (expected LISTEN_ADDR=UPSTREAM_ADDR, \
         e.g. 127.0.0.1:17100=localhost:7100)"
    )]
    LinkSyntax { spec: String, reason: String },
    /// `WanLink::start` was given no links to serve.
    #[error("no links to serve: give at least one LISTEN_ADDR=UPSTREAM_ADDR")]
    NoLinks,
    /// A setting outside the range this emulator supports.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting { name: &'static str, reason: String },
    /// A listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A control-port line that is not one of the commands.
    #[error("{reason}")]
    ControlSyntax { reason: String },
}
