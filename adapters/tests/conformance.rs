//! The HTTP server against outside judges: `promtool check metrics` (Prometheus) on
//! `/metrics`, and schemathesis generating requests from `/api/v1/openapi.json` (no 5xx,
//! every response as documented: status codes, content types, bodies against their
//! schemas).
//!
//! The test command installs both (Debian `prometheus`, PyPI `schemathesis` in
//! `target/pyenv`) and sets `SQUALL_REQUIRE_TOOLS=1`, which turns a missing tool into a
//! failure; elsewhere the test says what is missing and passes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::Cluster;

fn tool(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for c in candidates {
        let p = if c.contains('/') {
            root.join(c)
        } else {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .ok()?;
            PathBuf::from(String::from_utf8_lossy(&found.stdout).trim())
        };
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

fn missing(what: &str) {
    if std::env::var("SQUALL_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{what} is missing, and SQUALL_REQUIRE_TOOLS=1 (the test command installs it)");
    }
    eprintln!("SKIPPED: {what} is missing (the test command installs it)");
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_and_schemathesis_accept_the_http_api() {
    let promtool = tool("SQUALL_PROMTOOL", &["promtool"]);
    let st = tool("SQUALL_SCHEMATHESIS", &["target/pyenv/bin/st", "st"]);
    let mut cluster = Cluster::new(3, &[]);
    cluster.with_http();
    cluster.start_all();
    let client = cluster.client(None, 3).await;
    // Some traffic, so every kind of series has samples.
    for i in 0..10 {
        client
            .put(&format!("/demo/conf/{i}"), bytes::Bytes::from_static(b"v"))
            .await
            .expect("put");
    }
    let web = cluster.http_addr(0);

    match promtool {
        Some(promtool) => {
            let metrics = get(web, "/metrics");
            assert!(metrics.contains("squall_view_members"), "{metrics}");
            let mut check = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool");
            check
                .stdin
                .take()
                .expect("stdin")
                .write_all(metrics.as_bytes())
                .expect("feed promtool");
            let out = check.wait_with_output().expect("promtool output");
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => missing("promtool (Debian package prometheus)"),
    }

    match st {
        Some(st) => {
            // Every check but positive-data acceptance: the API's rules (key grammar, a
            // pool for the key, a DFG's meaning) go beyond what a JSON schema can say, so
            // schema-valid requests may rightly get a documented 4xx.
            let out = Command::new(&st)
                .args([
                    "run",
                    &format!("http://{web}/api/v1/openapi.json"),
                    "--checks",
                    "all",
                    "--exclude-checks",
                    "positive_data_acceptance",
                    "--max-examples",
                    "25",
                    "--seed",
                    "7",
                ])
                .current_dir(cluster.dir.path())
                .output()
                .expect("run schemathesis");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "schemathesis found failures:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("passed"), "{text}");
        }
        None => missing("schemathesis (PyPI, in target/pyenv)"),
    }
    // The node is still fine after the fuzzing.
    assert!(client.members().await.is_ok());
}
