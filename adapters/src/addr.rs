//! Network names at the edge: [`HostPort`], the `host:port` a config gives for a peer
//! (an IP address or a DNS name), and the node id a Kubernetes StatefulSet host name
//! carries ([`node_id_from_hostname`]).
//!
//! Why names and not only IPs: in Kubernetes a StatefulSet pod is reached as
//! `squall-1.squall-peers.default.svc.cluster.local`, and its IP changes whenever it
//! restarts. So a configured name is kept as a name and resolved at every connection
//! attempt (the driver's `PeerAddr`, the client's `TcpStream::connect`), never once at
//! start.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest DNS name (RFC 1035: 253 characters, plus a trailing dot).
pub const HOST_NAME_BYTES_MAX: usize = 254;
/// Longest DNS label (RFC 1035).
pub const HOST_LABEL_BYTES_MAX: usize = 63;
/// Longest `host:port` text: the longest name, a colon and five digits. A bracketed IPv6
/// address is shorter. Client addresses on the wire are bounded by it too.
pub const HOST_PORT_BYTES_MAX: usize = HOST_NAME_BYTES_MAX + 1 + 5;

/// Why a `host:port` text was refused. The config names the field it came from.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HostPortError {
    #[error(
        "`{text}` has no port: expected host:port, like squall-0.squall:7100, 10.0.0.5:7100 or [fd00::5]:7100"
    )]
    MissingPort { text: String },
    #[error("`{text}` has an empty host: expected host:port")]
    EmptyHost { text: String },
    #[error("`{text}`: the port `{port}` is not a number")]
    PortNotANumber { text: String, port: String },
    #[error("`{text}`: the port {port} is beyond the last port (65535)")]
    PortOutOfRange { text: String, port: String },
    #[error("`{text}`: an IPv6 address goes in brackets, like [::1]:7100")]
    UnbracketedIpv6 { text: String },
    #[error("`{text}`: `{host}` (in brackets) is not an IPv6 address")]
    BadIpv6 { text: String, host: String },
    #[error("`{text}`: `{host}` looks like an IPv4 address but is not one")]
    BadIpv4 { text: String, host: String },
    #[error("`{text}`: `{host}` is not a host name: {reason}")]
    BadName {
        text: String,
        host: String,
        reason: &'static str,
    },
    #[error("`{text}` is {len} bytes; a host:port is at most {HOST_PORT_BYTES_MAX}")]
    TooLong { text: String, len: usize },
}

/// A host: an IP address, or a DNS name (lowercase: names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// `host:port` where host is an IPv4 address, an IPv6 address in brackets, or a DNS name
/// (letters, digits, `-` and `_`, labels of at most 63 bytes, 253 in all, an optional
/// trailing dot). Read and written as that string, so a config that gives IPs reads
/// exactly as before. A name is not resolved here: whoever connects resolves it at each
/// attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: Host,
    port: u16,
}

impl HostPort {
    /// `host` as in `host:port`: an IPv6 address may come with or without brackets.
    pub fn new(host: &str, port: u16) -> Result<HostPort, HostPortError> {
        let text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        text.parse()
    }

    /// The host without brackets: what a resolver takes (`lookup_host((host, port))`).
    pub fn host(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address when the host is an IP address; `None` for a name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Whether the host is a DNS name (resolved when connecting) rather than an IP.
    pub fn is_name(&self) -> bool {
        matches!(self.host, Host::Name(_))
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> HostPort {
        HostPort {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl From<HostPort> for String {
    fn from(addr: HostPort) -> String {
        addr.to_string()
    }
}

impl TryFrom<String> for HostPort {
    type Error = HostPortError;

    fn try_from(text: String) -> Result<HostPort, HostPortError> {
        text.parse()
    }
}

impl From<&HostPort> for squall_driver::PeerAddr {
    fn from(addr: &HostPort) -> squall_driver::PeerAddr {
        squall_driver::PeerAddr::new(addr.host(), addr.port)
    }
}

/// `host:port`, an IPv6 host in brackets: the form [`HostPort::from_str`] reads.
impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(text: &str) -> Result<HostPort, HostPortError> {
        let owned = || text.to_string();
        if text.len() > HOST_PORT_BYTES_MAX {
            return Err(HostPortError::TooLong {
                text: owned(),
                len: text.len(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(HostPortError::MissingPort { text: owned() });
        };
        if host.is_empty() {
            return Err(HostPortError::EmptyHost { text: owned() });
        }
        if port.is_empty() {
            return Err(HostPortError::MissingPort { text: owned() });
        }
        let port = parse_port(text, port)?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return Err(HostPortError::BadIpv6 {
                    text: owned(),
                    host: host.to_string(),
                });
            };
            let ip: Ipv6Addr = inner.parse().map_err(|_| HostPortError::BadIpv6 {
                text: owned(),
                host: inner.to_string(),
            })?;
            Host::Ip(IpAddr::V6(ip))
        } else if host.contains(':') {
            // `::1:7100` or `fd00::5`: the last colon is not clearly the port's.
            return Err(HostPortError::UnbracketedIpv6 { text: owned() });
        } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            // All digits and dots is an IPv4 address or a mistake (`10.0.0.256`,
            // `10.1`): no DNS name is all numeric.
            let ip: Ipv4Addr = host.parse().map_err(|_| HostPortError::BadIpv4 {
                text: owned(),
                host: host.to_string(),
            })?;
            Host::Ip(IpAddr::V4(ip))
        } else {
            check_name(host).map_err(|reason| HostPortError::BadName {
                text: owned(),
                host: host.to_string(),
                reason,
            })?;
            Host::Name(host.to_ascii_lowercase())
        };
        Ok(HostPort { host, port })
    }
}

fn parse_port(text: &str, port: &str) -> Result<u16, HostPortError> {
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostPortError::PortNotANumber {
            text: text.to_string(),
            port: port.to_string(),
        });
    }
    port.parse().map_err(|_| HostPortError::PortOutOfRange {
        text: text.to_string(),
        port: port.to_string(),
    })
}

/// A DNS name's syntax (RFC 1123 host names, plus `_`, which container runtimes'
/// service names may carry).
fn check_name(name: &str) -> Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > HOST_NAME_BYTES_MAX - 1 {
        return Err("longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > HOST_LABEL_BYTES_MAX {
            return Err("a label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-`, `_` and dots may appear");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
    }
    Ok(())
}

/// Why no node id could be taken from the host name.
#[derive(Debug, Error)]
pub enum HostnameError {
    #[error("the host name is empty (neither HOSTNAME nor /etc/hostname gives one)")]
    Empty,
    #[error(
        "host name `{hostname}` does not end in `-<number>` (like a StatefulSet pod's \
         `squall-2`), so it gives no node id"
    )]
    NoNumericSuffix { hostname: String },
    #[error("host name `{hostname}`: the suffix {suffix} is not a node id (at most 2^32 - 1)")]
    SuffixTooLarge { hostname: String, suffix: String },
    #[error("cannot read the host name from {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The node id a StatefulSet pod's host name carries: its trailing `-<n>` (`squall-2` →
/// 2; of a fully qualified name, the first label's). Pods of a StatefulSet are numbered
/// from 0, like the node ids of [`crate::config::local_cluster`].
pub fn node_id_from_hostname(hostname: &str) -> Result<u32, HostnameError> {
    let hostname = hostname.trim();
    if hostname.is_empty() {
        return Err(HostnameError::Empty);
    }
    let first_label = hostname.split('.').next().unwrap_or(hostname);
    let no_suffix = || HostnameError::NoNumericSuffix {
        hostname: hostname.to_string(),
    };
    let (_, suffix) = first_label.rsplit_once('-').ok_or_else(no_suffix)?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(no_suffix());
    }
    suffix.parse().map_err(|_| HostnameError::SuffixTooLarge {
        hostname: hostname.to_string(),
        suffix: suffix.to_string(),
    })
}

/// Where the host name is read when `HOSTNAME` is not set.
pub const HOSTNAME_FILE: &str = "/etc/hostname";

/// This machine's host name: the `HOSTNAME` environment variable (Kubernetes sets it to
/// the pod's name), else the first line of `/etc/hostname`.
pub fn this_hostname() -> Result<String, HostnameError> {
    if let Some(name) = std::env::var_os("HOSTNAME")
        && let Some(name) = name.to_str()
        && !name.trim().is_empty()
    {
        return Ok(name.trim().to_string());
    }
    let text =
        std::fs::read_to_string(HOSTNAME_FILE).map_err(|source| HostnameError::Unreadable {
            path: PathBuf::from(HOSTNAME_FILE),
            source,
        })?;
    let name = text.lines().next().unwrap_or("").trim();
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HostPort {
        text.parse()
            .unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
    }

    #[test]
    fn ips_and_names_parse_and_print_back() {
        for (text, printed, host, is_name) in [
            ("127.0.0.1:7100", "127.0.0.1:7100", "127.0.0.1", false),
            ("[::1]:7100", "[::1]:7100", "::1", false),
            ("[fd00:0::5]:1", "[fd00::5]:1", "fd00::5", false),
            ("localhost:7200", "localhost:7200", "localhost", true),
            (
                "squall-1.squall-peers.default.svc.cluster.local:7000",
                "squall-1.squall-peers.default.svc.cluster.local:7000",
                "squall-1.squall-peers.default.svc.cluster.local",
                true,
            ),
            (
                "Squall-0.Local.:65535",
                "squall-0.local.:65535",
                "squall-0.local.",
                true,
            ),
            (
                "squall_node1:7100",
                "squall_node1:7100",
                "squall_node1",
                true,
            ),
            ("0.0.0.0:0", "0.0.0.0:0", "0.0.0.0", false),
        ] {
            let addr = parse(text);
            assert_eq!(addr.to_string(), printed, "{text}");
            assert_eq!(addr.host(), host, "{text}");
            assert_eq!(addr.is_name(), is_name, "{text}");
            assert_eq!(parse(printed), addr, "{text}: reads back");
        }
        let ip = parse("10.0.0.5:7100");
        assert_eq!(ip.port(), 7100);
        assert_eq!(ip.socket_addr(), Some("10.0.0.5:7100".parse().expect("ip")));
        assert_eq!(HostPort::from(ip.socket_addr().expect("ip")), ip);
        assert_eq!(parse("localhost:1").socket_addr(), None);
        // The same name in another case is the same address.
        assert_eq!(parse("LOCALHOST:1"), parse("localhost:1"));
        assert_eq!(
            HostPort::new("fd00::5", 9).expect("v6 host"),
            parse("[fd00::5]:9")
        );
        assert_eq!(
            HostPort::new("squall-0", 9).expect("name"),
            parse("squall-0:9")
        );
        let peer = squall_driver::PeerAddr::from(&parse("[::1]:7100"));
        assert_eq!((peer.host(), peer.port()), ("::1", 7100));
    }

    #[test]
    fn bad_syntax_is_a_typed_error() {
        let long_label = format!("{}.local:1", "a".repeat(64));
        let long_name = format!("{}:1", vec!["a".repeat(63); 4].join("."));
        let too_long = format!("{}:1", "a".repeat(HOST_PORT_BYTES_MAX));
        for (text, expected) in [
            ("nohost", "MissingPort"),
            ("squall-0:", "MissingPort"),
            (":7100", "EmptyHost"),
            ("[]:7100", "BadIpv6"),
            ("squall-0:http", "PortNotANumber"),
            ("squall-0:-1", "PortNotANumber"),
            ("squall-0:+1", "PortNotANumber"),
            ("squall-0:70000", "PortOutOfRange"),
            ("squall-0:99999999999999999999", "PortOutOfRange"),
            ("::1:7100", "UnbracketedIpv6"),
            ("[::1:7100", "BadIpv6"),
            ("[10.0.0.1]:7100", "BadIpv6"),
            ("10.0.0.256:7100", "BadIpv4"),
            ("10.1:7100", "BadIpv4"),
            ("squall 0:7100", "BadName"),
            ("squall..peers:7100", "BadName"),
            (".squall:7100", "BadName"),
            ("-squall:7100", "BadName"),
            ("squall-.peers:7100", "BadName"),
            ("squall/0:7100", "BadName"),
            (long_label.as_str(), "BadName"),
            (long_name.as_str(), "BadName"),
            (too_long.as_str(), "TooLong"),
        ] {
            let err = text
                .parse::<HostPort>()
                .expect_err(&format!("`{text}` should be refused"));
            let variant = format!("{err:?}");
            assert!(variant.starts_with(expected), "{text}: {variant}");
            assert!(err.to_string().contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn serde_is_the_string_form() {
        #[derive(Debug, PartialEq, Deserialize, Serialize)]
        struct Holder {
            addr: HostPort,
        }
        let holder: Holder = toml::from_str("addr = \"squall-0.squall:7100\"").expect("reads");
        assert_eq!(holder.addr, parse("squall-0.squall:7100"));
        assert_eq!(
            toml::to_string(&holder).expect("writes").trim(),
            "addr = \"squall-0.squall:7100\""
        );
        let err = toml::from_str::<Holder>("addr = \"nohost\"").expect_err("no port");
        assert!(err.to_string().contains("has no port"), "{err}");
    }

    #[test]
    fn node_ids_come_from_a_numeric_suffix() {
        for (hostname, id) in [
            ("squall-2", 2),
            ("squall-0\n", 0),
            ("my-squall-cluster-17", 17),
            ("squall-3.squall-peers.default.svc.cluster.local", 3),
            ("s-4294967295", u32::MAX),
        ] {
            assert_eq!(node_id_from_hostname(hostname).expect(hostname), id);
        }
        for hostname in ["squall", "squall-", "squall-x", "squall2", "-", "squall-1a"] {
            let err = node_id_from_hostname(hostname).expect_err(hostname);
            assert!(
                matches!(&err, HostnameError::NoNumericSuffix { hostname: h } if h == hostname),
                "{hostname}: {err:?}"
            );
            assert!(err.to_string().contains("-<number>"), "{err}");
        }
        assert!(matches!(
            node_id_from_hostname("squall-4294967296"),
            Err(HostnameError::SuffixTooLarge { .. })
        ));
        assert!(matches!(
            node_id_from_hostname(" \n"),
            Err(HostnameError::Empty)
        ));
    }
}
