//! What a link is (`LISTEN_ADDR=UPSTREAM_ADDR`) and the settings shared by all links of
//! one emulator: the delay model and the named limits that bound its memory.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::WanLinkError;

/// Default bytes held in the proxy per direction per connection before it stops
/// reading from the sending side (backpressure).
pub const BUFFER_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Largest accepted `buffer_bytes_max`: the bound must stay a bound.
pub const BUFFER_BYTES_MAX_CEILING: usize = 1 << 30;
/// Default largest single read; a chunk is the unit the delay is applied to.
pub const READ_CHUNK_BYTES_MAX_DEFAULT: usize = 64 << 10;
/// Default chunks queued per direction per connection. Bounds the per-chunk overhead
/// when a sender trickles tiny writes (each chunk costs more than its payload).
pub const CHUNKS_BUFFERED_MAX_DEFAULT: usize = 4096;
/// Default open proxied connections per link; more are accepted and closed at once.
pub const CONNECTIONS_PER_LINK_MAX_DEFAULT: usize = 1024;
/// Default time allowed to open the upstream connection for an accepted client.
pub const UPSTREAM_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Largest accepted delay or jitter: ten minutes is far past any WAN we rehearse.
pub const DELAY_MS_MAX: u64 = 600_000;

/// One link: connections accepted on `listen` are proxied to `upstream`.
///
/// The upstream is kept as text (`host:port`) and resolved at each connection, so it
/// may name a host that resolves only later (`localhost:7100`, a service name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub listen: SocketAddr,
    pub upstream: String,
}

impl LinkSpec {
    /// A link spec, checking that `upstream` has the `host:port` shape.
    pub fn new(listen: SocketAddr, upstream: impl Into<String>) -> Result<Self, WanLinkError> {
        let upstream = upstream.into();
        let spec_text = format!("{listen}={upstream}");
        check_upstream_syntax(&upstream).map_err(|reason| WanLinkError::LinkSyntax {
            spec: spec_text,
            reason,
        })?;
        Ok(LinkSpec { listen, upstream })
    }
}

impl FromStr for LinkSpec {
    type Err = WanLinkError;

    /// Parses `LISTEN_ADDR=UPSTREAM_ADDR`, e.g. `127.0.0.1:17100=localhost:7100`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let syntax_error = |reason: String| WanLinkError::LinkSyntax {
            spec: spec.to_owned(),
            reason,
        };
        let Some((listen_text, upstream_text)) = spec.split_once('=') else {
            return Err(syntax_error("missing '='".to_owned()));
        };
        let listen_text = listen_text.trim();
        let upstream_text = upstream_text.trim();
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            syntax_error(format!(
                "listen address '{listen_text}' is not IP:PORT (e.g. 127.0.0.1:17100, [::1]:17100)"
            ))
        })?;
        check_upstream_syntax(upstream_text).map_err(syntax_error)?;
        Ok(LinkSpec {
            listen,
            upstream: upstream_text.to_owned(),
        })
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.listen, self.upstream)
    }
}

/// `host:port` with a non-empty host (no spaces, no '=') and a port in 1..=65535.
fn check_upstream_syntax(upstream: &str) -> Result<(), String> {
    let Some((host, port_text)) = upstream.rsplit_once(':') else {
        return Err(format!("upstream address '{upstream}' has no ':PORT'"));
    };
    if host.is_empty() {
        return Err(format!("upstream address '{upstream}' has no host"));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '=') {
        return Err(format!("upstream host '{host}' contains a space or '='"));
    }
    match port_text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "upstream port '{port_text}' is not a number in 1..=65535"
        )),
        Ok(_) => Ok(()),
    }
}

/// Settings shared by every link of one emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// Fixed one-way delay added to every chunk, in each direction.
    pub delay_ms: u64,
    /// Extra one-way delay drawn uniformly from `[0, jitter_ms]` per chunk.
    pub jitter_ms: u64,
    /// Bytes held per direction per connection before reading from that side stops.
    pub buffer_bytes_max: usize,
    /// Chunks held per direction per connection before reading from that side stops.
    pub chunks_buffered_max: usize,
    /// Largest single read (clamped to `buffer_bytes_max`).
    pub read_chunk_bytes_max: usize,
    /// Open proxied connections per link; more are accepted and closed at once.
    pub connections_per_link_max: usize,
    /// Time allowed to connect to the upstream before the client is dropped.
    pub upstream_connect_timeout_ms: u64,
    /// Seeds the jitter: connection `n` of a run draws from `(jitter_seed, n, direction)`.
    pub jitter_seed: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            delay_ms: 0,
            jitter_ms: 0,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            chunks_buffered_max: CHUNKS_BUFFERED_MAX_DEFAULT,
            read_chunk_bytes_max: READ_CHUNK_BYTES_MAX_DEFAULT,
            connections_per_link_max: CONNECTIONS_PER_LINK_MAX_DEFAULT,
            upstream_connect_timeout_ms: UPSTREAM_CONNECT_TIMEOUT_MS_DEFAULT,
            jitter_seed: 0,
        }
    }
}

impl LinkSettings {
    /// Checks every limit is usable: positive, and not so large it stops being a bound.
    pub fn validate(&self) -> Result<(), WanLinkError> {
        check_delay(self.delay_ms, self.jitter_ms)?;
        check_range(
            "buffer_bytes_max",
            self.buffer_bytes_max,
            BUFFER_BYTES_MAX_CEILING,
        )?;
        check_range("chunks_buffered_max", self.chunks_buffered_max, 1 << 20)?;
        check_range(
            "read_chunk_bytes_max",
            self.read_chunk_bytes_max,
            BUFFER_BYTES_MAX_CEILING,
        )?;
        check_range(
            "connections_per_link_max",
            self.connections_per_link_max,
            1 << 20,
        )?;
        if self.upstream_connect_timeout_ms == 0 {
            return Err(WanLinkError::InvalidSetting {
                name: "upstream_connect_timeout_ms",
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }

    /// The size of one read: never more than the whole buffer may hold.
    pub(crate) fn read_chunk_bytes(&self) -> usize {
        self.read_chunk_bytes_max.min(self.buffer_bytes_max)
    }
}

/// Checks a delay and jitter pair against [`DELAY_MS_MAX`].
pub(crate) fn check_delay(delay_ms: u64, jitter_ms: u64) -> Result<(), WanLinkError> {
    for (name, value) in [("delay_ms", delay_ms), ("jitter_ms", jitter_ms)] {
        if value > DELAY_MS_MAX {
            return Err(WanLinkError::InvalidSetting {
                name,
                reason: format!("{value} is above the maximum {DELAY_MS_MAX}"),
            });
        }
    }
    Ok(())
}

fn check_range(name: &'static str, value: usize, max: usize) -> Result<(), WanLinkError> {
    if value == 0 || value > max {
        return Err(WanLinkError::InvalidSetting {
            name,
            reason: format!("{value} is not in 1..={max}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_and_host_upstreams() {
        let spec: LinkSpec = "127.0.0.1:17100=localhost:7100"
            .parse()
            .expect("valid spec");
        assert_eq!(spec.listen, "127.0.0.1:17100".parse().expect("addr"));
        assert_eq!(spec.upstream, "localhost:7100");
        let spec: LinkSpec = "[::1]:0=[::1]:7100".parse().expect("valid v6 spec");
        assert_eq!(spec.upstream, "[::1]:7100");
        assert_eq!(spec.to_string(), "[::1]:0=[::1]:7100");
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (spec, reason_part) in [
            ("127.0.0.1:17100", "missing '='"),
            ("localhost:17100=127.0.0.1:7100", "listen address"),
            ("127.0.0.1:17100=127.0.0.1", "no ':PORT'"),
            ("127.0.0.1:17100=:7100", "no host"),
            ("127.0.0.1:17100=host:0", "1..=65535"),
            ("127.0.0.1:17100=host:99999", "1..=65535"),
            ("127.0.0.1:17100=a=b:1", "'='"),
        ] {
            let error = spec.parse::<LinkSpec>().expect_err(spec);
            let message = error.to_string();
            assert!(message.contains(reason_part), "{spec}: {message}");
            assert!(message.contains("LISTEN_ADDR=UPSTREAM_ADDR"), "{message}");
        }
    }

    #[test]
    fn validates_limits() {
        assert!(LinkSettings::default().validate().is_ok());
        let zero_buffer = LinkSettings {
            buffer_bytes_max: 0,
            ..LinkSettings::default()
        };
        assert!(zero_buffer.validate().is_err());
        let huge_delay = LinkSettings {
            delay_ms: DELAY_MS_MAX + 1,
            ..LinkSettings::default()
        };
        assert!(huge_delay.validate().is_err());
        let small_buffer = LinkSettings {
            buffer_bytes_max: 1000,
            ..LinkSettings::default()
        };
        assert_eq!(small_buffer.read_chunk_bytes(), 1000);
    }
}
