//! The dashboard in a real browser: `tests/browser/dashboard.test.mjs` drives headless
//! Chromium (through `playwright-core`) against a real 3-node cluster. It sees the three
//! members, sees a pool's object count change live as objects are put through the REST
//! API, browses and time-travels the persistent pool, uploads a Python UDL and the
//! example printer plugin through the form, sees a DFG drawn with per-vertex rates, sees
//! the view change when a node is killed, fails on any console error, and saves
//! screenshots under `target/browser-screenshots` (or `$SQUALL_SCREENSHOTS`).
//!
//! It needs Chromium at `/usr/bin/chromium` (Debian's `chromium`; `$SQUALL_CHROMIUM`
//! names another) and `tests/browser/node_modules/playwright-core` (`npm ci` in
//! `adapters/tests/browser`, which pins its version): the test command installs both
//! first. Where either is missing this test prints why and passes without running.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, printer};

/// The browser script's whole run, at most.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the script saves, by name (`<name>.png`).
const SCREENSHOTS: [&str; 6] = ["overview", "shards", "pools", "udls", "dfgs", "after-kill"];

/// Why the browser test cannot run here, if it cannot.
fn missing(browser_dir: &Path, chromium: &Path) -> Option<String> {
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "{} has no node_modules/playwright-core (run `npm ci` there)",
            browser_dir.display()
        ));
    }
    if !chromium.exists() {
        return Some(format!(
            "no browser at {} (install Debian's `chromium`, or set SQUALL_CHROMIUM)",
            chromium.display()
        ));
    }
    None
}

/// `target/browser-screenshots` of the target directory this test was built in.
fn default_screenshots() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|target| target.join("browser-screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/browser-screenshots"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_cluster_in_a_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = PathBuf::from(
        std::env::var("SQUALL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if let Some(why) = missing(&browser_dir, &chromium) {
        println!("SKIPPED the browser test of the dashboard: {why}");
        return;
    }
    let screenshots = std::env::var_os("SQUALL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(default_screenshots);
    // No screenshot of an earlier run may pass for this one's.
    for shot in SCREENSHOTS {
        let _ = std::fs::remove_file(screenshots.join(format!("{shot}.png")));
    }
    let _ = std::fs::remove_file(screenshots.join("failure.png"));
    let plugin = printer();

    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        // Room for the plugin library (the test cluster's 1 MiB is too small).
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
    }
    cluster.with_http();
    cluster.start_all();
    let _ = cluster.client(None, 3).await;
    let urls: Vec<String> = (0..3)
        .map(|n| squall_adapters::http::dashboard_url(cluster.http_addr(n)))
        .collect();
    // The page is node 0's; the script kills node 2.
    let victim = 2;
    let pid = cluster.procs[&victim].id();

    let mut child = Command::new("node")
        .arg(browser_dir.join("dashboard.test.mjs"))
        .current_dir(&browser_dir)
        .env("SQUALL_DASHBOARD_URLS", urls.join(","))
        .env("SQUALL_KILL_PID", pid.to_string())
        .env("SQUALL_KILL_NODE", victim.to_string())
        .env("SQUALL_MEMBERS", "3")
        .env("SQUALL_UDL_PLUGIN", &plugin)
        .env("SQUALL_SCREENSHOTS", &screenshots)
        .env("SQUALL_CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (Node.js) on the browser script");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    println!("{out}");
    if !err.trim().is_empty() {
        println!("stderr:\n{err}");
    }
    // The script killed the victim: reap it.
    cluster.kill9(victim);
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "the browser test failed ({s}):\n{out}\n{err}\nnode logs:{}",
            cluster.logs()
        ),
        None => panic!(
            "the browser test ran past {SCRIPT_TIMEOUT:?}:\n{out}\n{err}\nnode logs:{}",
            cluster.logs()
        ),
    }
    for shot in SCREENSHOTS {
        let path = screenshots.join(format!("{shot}.png"));
        assert!(path.is_file(), "no screenshot {}", path.display());
    }
}
