//! `squall up` as a user runs it: a real `up` process and its node processes. A node
//! killed with SIGKILL, and a node the group evicted (stopped with SIGSTOP past its
//! suspicion timeout, then let go), are started again by `up`, rejoin the group as new
//! incarnations and serve; a node stopped with SIGTERM is left stopped; SIGTERM to `up`
//! stops every node, and the nodes of an `up` killed with SIGKILL leave by themselves.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::SQUALL;
use squall_adapters::client::{Client, Policy};

/// A port p such that p .. p+count are free on loopback (checked, not held).
fn free_run(count: u16) -> u16 {
    for _ in 0..200 {
        let base = common::free_addr().port();
        if base.checked_add(count).is_none() {
            continue;
        }
        if (base..base + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no run of free loopback ports");
}

struct Up {
    child: Child,
    out: std::path::PathBuf,
    client_port: u16,
}

impl Up {
    fn output(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.out)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("up's output");
        text
    }

    /// Waits until up's output holds `needle` (after `from` bytes); returns the output.
    fn wait_for(&self, needle: &str, from: usize, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.output();
            if text.get(from..).is_some_and(|t| t.contains(needle)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from squall up in {secs} s; it printed:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn addrs(&self) -> Vec<String> {
        (0..3)
            .map(|i| format!("127.0.0.1:{}", self.client_port + i))
            .collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// The pid `up` printed last for `node` ("node N: pid P" at start, "node N started
/// again (pid P)" after a restart).
fn pid_of(text: &str, node: u32) -> u32 {
    let start = format!("node {node}: pid ");
    let again = format!("node {node} started again (pid ");
    text.lines()
        .rev()
        .find_map(|line| {
            let rest = line
                .split_once(&start)
                .or_else(|| line.split_once(&again))?
                .1;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pid for node {node} in:\n{text}"))
}

/// Base ports for three nodes' peers and clients, all free and distinct.
fn free_ports() -> (u16, u16) {
    let peer_port = free_run(3);
    let mut client_port = free_run(3);
    while client_port.abs_diff(peer_port) < 3 {
        client_port = free_run(3);
    }
    (peer_port, client_port)
}

fn start_up(dir: &Path) -> Up {
    let (peer_port, client_port) = free_ports();
    let out = dir.join("up.out");
    let file = std::fs::File::create(&out).expect("up.out");
    let child = Command::new(SQUALL)
        .args(["up", "--nodes", "3", "--http-port", "0", "--data"])
        .arg(dir.join("data"))
        .args(["--peer-port", &peer_port.to_string()])
        .args(["--client-port", &client_port.to_string()])
        .stdout(Stdio::from(file.try_clone().expect("dup")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("squall up starts");
    let up = Up {
        child,
        out,
        client_port,
    };
    up.wait_for("is up", 0, 60);
    up
}

/// Members (node, incarnation) once the view holds `count` of them.
async fn members(addrs: &[String], count: usize) -> Vec<(u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = Client::connect(addrs, None, Policy::default()).await
            && let Ok((_, m)) = c.members().await
            && m.len() == count
        {
            let mut m: Vec<_> = m.iter().map(|m| (m.node, m.incarnation)).collect();
            m.sort();
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "the view never held {count} members"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn put_and_read(addrs: &[String], key: &str, value: &'static [u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = loop {
        match Client::connect(addrs, None, Policy::default()).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // `/demo` is persistent: a put is answered once durable on every replica, so a
    // restarted replica must be serving for this to succeed.
    c.put(key, Bytes::from_static(value))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    let got = c.get(key).await.expect("get").expect("the object");
    assert_eq!(&got.blob[..], value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_again_a_node_that_was_killed_or_evicted_and_stops_all_on_sigterm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut up = start_up(dir.path());
    let addrs = up.addrs();
    let first = members(&addrs, 3).await;
    put_and_read(&addrs, "/demo/before", b"v1").await;

    // SIGKILL: a crash.
    let text = up.output();
    let killed = pid_of(&text, 1);
    assert!(signal(killed, "KILL"));
    let text = up.wait_for("node 1 started again", text.len(), 60);
    assert!(text.contains("node 1 exited (signal: 9"), "{text}");
    let restarted = pid_of(&text, 1);
    assert_ne!(restarted, killed);
    assert!(alive(restarted));
    let after_kill = members(&addrs, 3).await;
    let inc = |m: &[(u32, u32)], node: u32| m.iter().find(|(n, _)| *n == node).map(|(_, i)| *i);
    assert!(
        inc(&after_kill, 1) > inc(&first, 1),
        "node 1 rejoined as a new incarnation: {first:?} -> {after_kill:?}"
    );
    put_and_read(&addrs, "/demo/after-kill", b"v2").await;
    put_and_read(&addrs, "/demo/before", b"v1").await;
    let log = std::fs::read_to_string(dir.path().join("data/n1.log")).expect("n1.log");
    assert!(
        log.contains("--- squall up: start 2 of node 1 ---"),
        "{log}"
    );

    // SIGSTOP past the suspicion timeout: the group goes on without node 2; once let
    // go, node 2 finds itself out of the group, exits with an error, and is started
    // again.
    let from = up.output().len();
    let frozen = pid_of(&up.output(), 2);
    assert!(signal(frozen, "STOP"));
    members(&addrs, 2).await;
    assert!(signal(frozen, "CONT"));
    let text = up.wait_for("node 2 started again", from, 60);
    assert!(
        text[from..].contains("node 2 exited (exit status: 1)"),
        "{}",
        &text[from..]
    );
    let after_evict = members(&addrs, 3).await;
    assert!(
        inc(&after_evict, 2) > inc(&after_kill, 2),
        "{after_evict:?}"
    );
    put_and_read(&addrs, "/demo/after-evict", b"v3").await;
    let log = std::fs::read_to_string(dir.path().join("data/n2.log")).expect("n2.log");
    assert!(log.contains("starting it again rejoins the group"), "{log}");

    // SIGTERM to one node: a stop it was asked for stays a stop.
    let from = up.output().len();
    let stopped = pid_of(&up.output(), 0);
    assert!(signal(stopped, "TERM"));
    up.wait_for("node 0 stopped as asked", from, 30);
    members(&addrs, 2).await;
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !up.output()[from..].contains("node 0 started again"),
        "{}",
        up.output()
    );

    // SIGTERM to up stops the rest.
    let pids = [pid_of(&up.output(), 1), pid_of(&up.output(), 2)];
    assert!(signal(up.child.id(), "TERM"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = up.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", up.output());
    assert!(up.output().contains("local cluster stopped"));
    for pid in pids {
        assert!(!alive(pid), "node process {pid} outlived up");
    }
}

/// `squall up` killed with SIGKILL cannot stop its nodes; they notice it is gone and
/// leave by themselves rather than live on as orphans holding the cluster's ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_of_a_killed_up_leave_by_themselves() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut up = start_up(dir.path());
    members(&up.addrs(), 3).await;
    let text = up.output();
    let pids: Vec<u32> = (0..3).map(|n| pid_of(&text, n)).collect();
    up.child.kill().expect("SIGKILL to up");
    up.child.wait().expect("up reaped");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "node processes outlived a killed up: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.path().join("data/n0.log")).expect("n0.log");
    assert!(
        log.contains("squall up that started this node is gone"),
        "{log}"
    );
}

/// README command 1: `squall demo` runs from start to end on a local cluster of its own
/// (here on free ports; the UDL pipeline part runs where its plugin is built next to the
/// binary, as the README's command builds it, and says it skips otherwise).
#[test]
fn the_demo_runs_from_start_to_end() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (peer_port, client_port) = free_ports();
    let out = Command::new(SQUALL)
        .args(["demo", "--http-port", "0", "--data"])
        .arg(dir.path().join("data"))
        .args(["--peer-port", &peer_port.to_string()])
        .args(["--client-port", &client_port.to_string()])
        .output()
        .expect("squall demo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for line in [
        "get /demo/greeting              -> /demo/greeting = hello, world",
        "-> /demo/greeting = hello (5 bytes",
        "watch: /demo/greeting changed to Some(\"hello, world\")",
        "compact /demo before the second put -> 1 older version(s) forgotten",
        "compacted: the history of /demo/greeting before version",
        "== demo done",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}
