//! The `squall-wanlink` binary as a child process: its printed addresses, its control
//! port's line protocol, signals, and its `--link` error messages.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{PROMPTLY, assert_closed_promptly, round_trip, start_echo_upstream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BINARY: &str = env!("CARGO_BIN_EXE_squall-wanlink");

/// The child process, killed if the test fails before it stops it.
struct WanLinkProcess {
    child: Child,
    link: SocketAddr,
    upstream: String,
    control: SocketAddr,
}

impl Drop for WanLinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_wanlink(upstream: SocketAddr, extra_args: &[&str]) -> WanLinkProcess {
    let mut child = Command::new(BINARY)
        .arg("--link")
        .arg(format!("127.0.0.1:0={upstream}"))
        .args(["--control", "127.0.0.1:0"])
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn squall-wanlink");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = || {
        lines
            .next()
            .expect("a startup line")
            .expect("read a startup line")
    };
    // `link 127.0.0.1:PORT -> UPSTREAM`
    let link_line = next_line();
    let (link, upstream_printed) = link_line
        .strip_prefix("link ")
        .and_then(|rest| rest.split_once(" -> "))
        .unwrap_or_else(|| panic!("unexpected first line '{link_line}'"));
    let link: SocketAddr = link.parse().expect("a bound link address");
    let upstream_printed = upstream_printed.to_owned();
    // `control 127.0.0.1:PORT`
    let control_line = next_line();
    let control: SocketAddr = control_line
        .strip_prefix("control ")
        .unwrap_or_else(|| panic!("unexpected second line '{control_line}'"))
        .parse()
        .expect("a bound control address");
    assert_ne!(link.port(), 0);
    assert_ne!(control.port(), 0);
    WanLinkProcess {
        child,
        link,
        upstream: upstream_printed,
        control,
    }
}

struct ControlConnection {
    reader: AsyncBufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl ControlConnection {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect control");
        let (read_half, writer) = stream.into_split();
        ControlConnection {
            reader: AsyncBufReader::new(read_half),
            writer,
        }
    }

    async fn command(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send a control line");
        let mut reply = String::new();
        tokio::time::timeout(PROMPTLY, self.reader.read_line(&mut reply))
            .await
            .expect("a reply within the liveness bound")
            .expect("read a reply");
        assert!(reply.ends_with('\n'), "one whole line: {reply:?}");
        reply.trim_end().to_owned()
    }
}

fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_port_line_protocol_drives_the_binary() {
    let echo = start_echo_upstream().await;
    let mut wanlink = spawn_wanlink(echo.addr, &["--delay-ms", "20", "--jitter-ms", "0"]);
    assert_eq!(wanlink.upstream, echo.addr.to_string());
    let mut control = ControlConnection::connect(wanlink.control).await;

    let status = control.command("status").await;
    assert!(
        status.starts_with("up delay_ms=20 jitter_ms=0 connections=0 bytes_up=0 bytes_down=0"),
        "{status}"
    );

    let mut client = TcpStream::connect(wanlink.link)
        .await
        .expect("connect link");
    assert_eq!(round_trip(&mut client, b"hello").await, b"hello");

    assert_eq!(
        control.command("delay 100 5").await,
        "ok delay_ms=100 jitter_ms=5"
    );
    let started = Instant::now();
    assert_eq!(round_trip(&mut client, b"slow").await, b"slow");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200),
        "round trip took only {elapsed:?}"
    );
    let status = control.command("status").await;
    assert!(
        status.starts_with("up delay_ms=100 jitter_ms=5 connections=1 bytes_up=9 bytes_down=9"),
        "{status}"
    );

    assert_eq!(control.command("cut").await, "ok cut");
    assert_closed_promptly(&mut client, "a proxied connection after `cut`").await;
    let status = control.command("status").await;
    assert!(status.starts_with("cut delay_ms=100"), "{status}");
    if let Ok(mut refused) = TcpStream::connect(wanlink.link).await {
        assert_closed_promptly(&mut refused, "a new connection while cut").await;
    }

    let error = control.command("reboot now").await;
    assert!(
        error.starts_with("error unknown command 'reboot'"),
        "{error}"
    );
    let error = control.command("delay soon").await;
    assert!(error.starts_with("error delay 'soon'"), "{error}");
    let error = control.command("delay 999999999").await;
    assert!(
        error.starts_with("error invalid setting delay_ms"),
        "{error}"
    );

    assert_eq!(control.command("restore").await, "ok up");
    assert_eq!(
        control.command("delay 0").await,
        "ok delay_ms=0 jitter_ms=0"
    );
    let mut client = TcpStream::connect(wanlink.link)
        .await
        .expect("connect after restore");
    assert_eq!(round_trip(&mut client, b"again").await, b"again");

    // A second control connection, and the signal shortcuts.
    send_signal(&wanlink.child, "-USR1");
    let mut second_control = ControlConnection::connect(wanlink.control).await;
    let mut status = String::new();
    let deadline = Instant::now() + PROMPTLY;
    while !status.starts_with("cut ") {
        assert!(Instant::now() < deadline, "SIGUSR1 did not cut: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = second_control.command("status").await;
    }
    send_signal(&wanlink.child, "-USR2");
    while !status.starts_with("up ") {
        assert!(
            Instant::now() < deadline,
            "SIGUSR2 did not restore: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = second_control.command("status").await;
    }

    send_signal(&wanlink.child, "-TERM");
    let exit = loop {
        if let Some(exit) = wanlink.child.try_wait().expect("poll the child") {
            break exit;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the binary");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(exit.success(), "clean exit on SIGTERM: {exit}");
}

#[test]
fn bad_link_syntax_is_explained() {
    for (link, reason_part) in [
        ("127.0.0.1:17100", "missing '='"),
        ("127.0.0.1:17100=localhost", "has no ':PORT'"),
        ("nowhere:1=localhost:7100", "listen address 'nowhere:1'"),
    ] {
        let output = Command::new(BINARY)
            .args(["--link", link])
            .output()
            .expect("run squall-wanlink");
        assert!(!output.status.success(), "{link} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason_part), "{link}: {stderr}");
        assert!(
            stderr.contains("LISTEN_ADDR=UPSTREAM_ADDR"),
            "{link}: {stderr}"
        );
    }
}
