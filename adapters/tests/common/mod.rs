//! A cluster of real `squall node` processes on 127.0.0.1, for the process tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use squall_adapters::client::{Client, Policy};
use squall_adapters::config::{self, Config, Role, TokenEntry};

pub const SQUALL: &str = env!("CARGO_BIN_EXE_squall");

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("bound")
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<Config>,
    pub procs: BTreeMap<u32, Child>,
}

impl Cluster {
    /// `nodes` node configs with free ports; `tokens` configured when given.
    pub fn new(nodes: u32, tokens: &[(&str, Role)]) -> Cluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut configs =
            config::try_local_cluster(nodes, 20_000, 21_000, dir.path()).expect("local configs");
        // Free ports, all distinct: the OS may hand a released port out again.
        let mut ports = std::collections::BTreeSet::new();
        let mut distinct = || loop {
            let addr = free_addr();
            if ports.insert(addr) {
                break addr;
            }
        };
        let addrs: Vec<(SocketAddr, SocketAddr)> =
            (0..nodes).map(|_| (distinct(), distinct())).collect();
        for cfg in &mut configs {
            for (i, peer) in cfg.cluster.peers.iter_mut().enumerate() {
                peer.addr = addrs[i].0.into();
                peer.client_addr = addrs[i].1.into();
            }
            cfg.node.client_addr = addrs[cfg.node.id as usize].1;
            cfg.timing.suspicion_timeout_ms = 1_000;
            cfg.limits.object_bytes_max = 1 << 20;
            cfg.limits.frame_bytes_max = (1 << 20) + 8192;
            cfg.auth.tokens = tokens
                .iter()
                .map(|(t, r)| TokenEntry {
                    token: t.to_string(),
                    role: *r,
                })
                .collect();
            cfg.validate().expect("a valid test config");
        }
        Cluster {
            dir,
            configs,
            procs: BTreeMap::new(),
        }
    }

    /// Gives every node an HTTP server (dashboard, REST API, metrics) on a free port.
    pub fn with_http(&mut self) {
        // A released port can come back from the OS: keep every address distinct.
        let mut taken: Vec<SocketAddr> = self.configs[0]
            .cluster
            .peers
            .iter()
            .flat_map(|p| [&p.addr, &p.client_addr])
            .filter_map(|a| a.socket_addr())
            .collect();
        for cfg in &mut self.configs {
            let addr = loop {
                let a = free_addr();
                if !taken.contains(&a) {
                    break a;
                }
            };
            taken.push(addr);
            cfg.node.http_addr = Some(addr);
        }
    }

    /// Runs the `squall` CLI against node `node` with `args`: its exit status, stdout
    /// and stderr.
    pub fn cli(&self, node: usize, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(SQUALL)
            .args(["--cluster", &self.addrs()[node]])
            .args(args)
            .output()
            .expect("squall runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// The HTTP address of `node` (after [`Cluster::with_http`]).
    pub fn http_addr(&self, node: u32) -> SocketAddr {
        self.configs[node as usize]
            .node
            .http_addr
            .expect("with_http was called")
    }

    /// Mounts a tmpfs of `size_bytes` under every node's data directory and gives each
    /// node a disk reserve of `reserve_bytes`; `None`, having said why, where this
    /// process may not mount (not root).
    pub fn small_disks(&mut self, size_bytes: u64, reserve_bytes: u64) -> Option<Vec<SmallDisk>> {
        let mut disks = Vec::new();
        for cfg in &mut self.configs {
            cfg.limits.disk_reserve_bytes = reserve_bytes;
            match SmallDisk::mount(&cfg.node.data_dir, size_bytes) {
                Ok(disk) => disks.push(disk),
                Err(reason) => {
                    println!("skipped: cannot mount a small file system: {reason}");
                    return None;
                }
            }
        }
        Some(disks)
    }

    pub fn start(&mut self, node: u32) {
        self.start_with(node, &[], &[]);
    }

    /// Starts `node` with more arguments to `squall node` and more environment.
    pub fn start_with(&mut self, node: u32, args: &[&str], env: &[(&str, &str)]) {
        let cfg = &self.configs[node as usize];
        let path = self.dir.path().join(format!("n{node}.toml"));
        std::fs::write(&path, cfg.to_toml_string()).expect("config written");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{node}.log")))
            .expect("log file");
        let child = Command::new(SQUALL)
            .args(["node", "--config"])
            .arg(&path)
            .args(args)
            .env("SQUALL_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("squall node starts");
        self.procs.insert(node, child);
    }

    pub fn start_all(&mut self) {
        for node in 0..self.configs.len() as u32 {
            self.start(node);
        }
    }

    pub fn kill9(&mut self, node: u32) {
        if let Some(mut child) = self.procs.remove(&node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for `node`'s process to end by itself; its exit status.
    #[allow(dead_code)]
    pub fn wait_exit(
        &mut self,
        node: u32,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.procs.get_mut(&node)?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.procs.remove(&node);
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|c| c.node.client_addr.to_string())
            .collect()
    }

    /// Each node process and its state, for a failure message.
    pub fn exited(&self) -> String {
        let mut out = String::new();
        for (node, child) in &self.procs {
            // From /proc (`try_wait` needs `&mut self`): R, S, D running or waiting,
            // Z exited, T stopped.
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
            let state = match stat {
                Ok(s) => s
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string(),
                Err(_) => "gone".to_string(),
            };
            out += &format!("node {node}: process {} state {state}\n", child.id());
        }
        out
    }

    /// Everything `node` has logged, over all its starts.
    #[allow(dead_code)]
    pub fn node_log(&self, node: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{node}.log"))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for c in &self.configs {
            let path = self.dir.path().join(format!("n{}.log", c.node.id));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            all += &format!("\n--- node {} ---\n", c.node.id);
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all
    }

    /// A client once every running node is in one view of `members` nodes.
    pub async fn client(&self, token: Option<&str>, members: usize) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) =
                Client::connect(&self.addrs(), token.map(str::to_string), Policy::default()).await
                && let Ok((_, m)) = c.members().await
                && m.len() == members
                && let Ok(pools) = c.list_pools().await
                && pools.len() >= 2
            {
                return c;
            }
            if Instant::now() > deadline {
                panic!("the cluster did not form; {}{}", self.exited(), self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Builds an example plugin (`udl/examples/<name>`) in its own target directory (the
/// outer cargo holds the workspace's) and returns the library's path.
pub fn example_plugin(name: &str) -> PathBuf {
    example_plugin_in(name, "udl-plugins", &[])
}

/// ... in `target/<dir>`, with `env` set for the build (a variant of the plugin).
pub fn example_plugin_in(name: &str, dir: &str, env: &[(&str, &str)]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let release = profile.file_name().is_some_and(|n| n == "release");
    let target = profile.parent().expect("target/").join(dir);
    let package = format!("squall-udl-example-{name}");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--quiet", "-p", &package])
        .env("CARGO_TARGET_DIR", &target)
        .envs(env.iter().copied());
    if release {
        cargo.arg("--release");
    }
    assert!(
        cargo.status().expect("run cargo").success(),
        "building {package}"
    );
    target
        .join(if release { "release" } else { "debug" })
        .join(format!("libsquall_udl_example_{name}.so"))
}

/// The UUID the printer example plugin exports.
pub const PRINTER_UUID: &str = "48e60f7c-8500-11eb-8755-0242ac110002";

/// The printer example plugin.
pub fn printer() -> PathBuf {
    example_plugin("printer")
}

/// An HTTP response: the status, the header lines as sent, the body (de-chunked).
pub struct HttpReply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with
/// `extra_headers` (each line ending in `\r\n`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &[u8],
) -> HttpReply {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    HttpReply {
        status,
        headers,
        body,
    }
}

/// A JSON request ([`http_request`]); the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let reply = http_request(
        addr,
        method,
        path,
        "Content-Type: application/json\r\n",
        body,
    );
    (reply.status, reply.body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let len = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        if len == 0 || raw.len() < eol + 2 + len {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        raw = &raw[(eol + 4 + len).min(raw.len())..];
    }
    out
}

/// A small file system mounted on a node's data directory for a test (tmpfs: a real
/// `ENOSPC` when full), unmounted when dropped.
pub struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// Fails, with the reason, where this process may not mount (not root).
    pub fn mount(path: &std::path::Path, size_bytes: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Grows the file system, keeping its files: the operator freed space.
    pub fn grow(&self, size_bytes: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size_bytes}")])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount {}", self.path.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Now, in µs since the Unix epoch (what puts are stamped with).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

/// The node logs without their terminal colours.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
