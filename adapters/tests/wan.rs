//! The edge+cloud rehearsal on one machine: an edge cluster and a cloud cluster (real
//! `squall node` processes), a WAN link between them through `squall-wanlink` (50 ms
//! added each way, then cut for 30 s, then restored), and a DFG at the edge whose
//! outputs go to a pool of the cloud through the edge's WAN outbox. Inputs stream in
//! throughout; an edge node holding outbox entries is killed with SIGKILL during the cut.
//! Afterwards every input's result is in the cloud exactly once, in per-key order, and
//! the outboxes are empty.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, PRINTER_UUID, printer};
use squall_adapters::client::Client;
use squall_adapters::config::{OutboxFull, Remote, SiteKind, SiteSection};
use squall_adapters::wire::At;
use squall_adapters::wire::ErrorCode;
use squall_kvs::{PoolSpec, StoreKind};
use squall_wanlink::{LinkSettings, LinkSpec, WanLink};

const SENSORS: usize = 8;
const DELAY_MS: u64 = 50;
const CUT: Duration = Duration::from_secs(30);

/// The edge DFG: what arrives under `/sensors/` passes (the printer, stateful so one
/// key's outputs keep their order) to the cloud's `/ingest/`.
fn edge_dfg() -> Bytes {
    Bytes::from(format!(
        r#"[{{
            "id": "7e1d0c4e-0000-4000-8000-00000000ed9e",
            "desc": "edge: pass sensor readings to the cloud",
            "graph": [{{
                "pathname": "/sensors/",
                "user_defined_logic_list": ["{PRINTER_UUID}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_hook_list": ["ordered"],
                "user_defined_logic_stateful_list": ["stateful"],
                "user_defined_logic_config_list": [{{"quiet": true}}],
                "destinations": [{{"cloud:/ingest/": "put"}}]
            }}]
        }}]"#
    ))
}

/// The application as one DFG for both sites: the edge's vertex (pinned to `edge`) passes
/// readings to the cloud's `/ingest/`; the cloud's vertex (pinned to `cloud`) passes them
/// on to `/results/`. Added to both clusters; each runs only its own vertex.
fn app_dfg() -> Bytes {
    Bytes::from(format!(
        r#"[{{
            "id": "7e1d0c4e-0000-4000-8000-00000000a99e",
            "desc": "edge filter, cloud stage: one application over two sites",
            "graph": [{{
                "pathname": "/sensors/",
                "site": "edge",
                "user_defined_logic_list": ["{PRINTER_UUID}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_hook_list": ["ordered"],
                "user_defined_logic_stateful_list": ["stateful"],
                "user_defined_logic_config_list": [{{"quiet": true}}],
                "destinations": [{{"cloud:/ingest/": "put"}}]
            }}, {{
                "pathname": "/ingest/",
                "site": "cloud",
                "user_defined_logic_list": ["{PRINTER_UUID}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_hook_list": ["ordered"],
                "user_defined_logic_stateful_list": ["stateful"],
                "user_defined_logic_config_list": [{{"quiet": true}}],
                "destinations": [{{"/results/": "put"}}]
            }}]
        }}]"#
    ))
}

/// A WAN link to `cloud` (one proxied address per cloud node) and the remote `cloud` as
/// the edge names it: reached only through the link, the addresses the cloud advertises
/// mapped to the proxy's.
async fn link_to(cloud: &Cluster, settings: LinkSettings) -> (WanLink, Remote) {
    let specs = cloud
        .addrs()
        .iter()
        .map(|a| LinkSpec::new("127.0.0.1:0".parse().expect("addr"), a.clone()))
        .collect::<Result<Vec<_>, _>>()
        .expect("link specs");
    let wan = WanLink::start(specs, settings).await.expect("the WAN link");
    let proxied: Vec<String> = wan.listen_addrs().iter().map(ToString::to_string).collect();
    let remote = Remote {
        name: "cloud".into(),
        addresses: proxied.clone(),
        token: None,
        address_map: cloud.addrs().into_iter().zip(proxied).collect(),
    };
    (wan, remote)
}

/// A `/metrics` series' value on one node (summed over its label sets), over plain HTTP.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

/// Checks the dashboard's WAN tab in headless Chromium (`tests/browser/wan.test.mjs`):
/// the row of site `cloud` shows `state` and `waiting` ("some" or "none"); saves
/// `target/browser-screenshots/<shot>.png`. Without Chromium or playwright-core it says
/// so and returns, unless `SQUALL_REQUIRE_TOOLS=1` (the test command installs both).
async fn browser_wan(http: std::net::SocketAddr, state: &str, waiting: &str, shot: &str) {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("SQUALL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = browser_dir.join("node_modules/playwright-core").is_dir()
        && std::path::Path::new(&chromium).exists();
    if !ready {
        if std::env::var("SQUALL_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("Chromium or playwright-core is missing, and SQUALL_REQUIRE_TOOLS=1");
        }
        println!("SKIPPED the browser check of the WAN tab: no Chromium or playwright-core");
        return;
    }
    let exe = std::env::current_exe().expect("the test's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let shot = target
        .join("browser-screenshots")
        .join(format!("{shot}.png"));
    let url = squall_adapters::http::dashboard_url(http);
    let (state, waiting) = (state.to_string(), waiting.to_string());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(browser_dir.join("wan.test.mjs"))
            .current_dir(&browser_dir)
            .env("SQUALL_DASHBOARD_URL", url)
            .env("SQUALL_WAN_SITE", "cloud")
            .env("SQUALL_WAN_SITE_SELF", "edge")
            .env("SQUALL_WAN_STATE", state)
            .env("SQUALL_WAN_WAITING", waiting)
            .env("SQUALL_SCREENSHOT", &shot)
            .env("SQUALL_CHROMIUM", chromium)
            .output()
    })
    .await
    .expect("the browser task")
    .expect("run node (Node.js) on the browser script");
    let out = String::from_utf8_lossy(&output.stdout);
    print!("{out}");
    assert!(output.status.success(), "the WAN tab check failed: {out}");
}

/// Every version of `key` in the cloud, oldest first (following each version's link to
/// the key's previous one).
/// Waits up to 60 s until `key`'s history is `expected`; on the way it must always be a
/// prefix of it (nothing out of order or repeated). `logs` explains a timeout.
async fn await_history(c: &Client, key: &str, expected: &[String], logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = history(c, key).await;
        if got == expected {
            return;
        }
        assert!(
            expected.starts_with(&got),
            "{key} holds {got:?}, expected a prefix of {expected:?}"
        );
        assert!(
            Instant::now() < deadline,
            "{key}: {} of {} results{}",
            got.len(),
            expected.len(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn history(c: &Client, key: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut next = c.get(key).await.ok().flatten();
    while let Some(o) = next {
        values.push(String::from_utf8_lossy(&o.blob).into_owned());
        next = match o.previous_key_version {
            Some(v) => c.get_at(key, At::Version(v)).await.ok().flatten(),
            None => None,
        };
    }
    values.reverse();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wan_cut_and_an_edge_crash_lose_nothing_and_apply_everything_once_in_order() {
    // The cloud: a cluster of its own (another cluster id), with the pool results go to.
    let mut cloud = Cluster::new(3, &[]);
    for cfg in &mut cloud.configs {
        cfg.cluster.id = 0xc10d;
        cfg.site = Some(SiteSection {
            name: "cloud".into(),
            kind: SiteKind::Cloud,
        });
        // Room for the plugin upload.
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
    }
    cloud.start_all();
    let cloud_client = cloud.client(None, 3).await;
    for pool in ["/ingest", "/results"] {
        cloud_client
            .create_pool(PoolSpec::new(pool, StoreKind::Persistent, 1))
            .await
            .expect("the cloud's pools");
    }
    let plugin = std::fs::read(printer()).expect("the printer plugin");
    cloud_client
        .upload_udl("printer", Bytes::from(plugin))
        .await
        .expect("upload to the cloud");
    // The whole application; the cloud runs only its vertex (the edge's names a site
    // the cloud does not know, which would be refused if the cloud ran it).
    cloud_client
        .add_dfgs(app_dfg())
        .await
        .expect("the application's DFG at the cloud");

    // The WAN: 50 ms added each way, some jitter.
    let settings = LinkSettings {
        delay_ms: DELAY_MS,
        jitter_ms: 5,
        ..LinkSettings::default()
    };
    let (wan, remote) = link_to(&cloud, settings).await;
    let link = wan.handle();

    // The edge reaches the cloud only through the link: the addresses the cloud
    // advertises are mapped to the proxy's.
    let mut edge = Cluster::new(3, &[]);
    edge.with_http();
    for cfg in &mut edge.configs {
        cfg.site = Some(SiteSection {
            name: "edge".into(),
            kind: SiteKind::Edge,
        });
        // Room for the plugin upload.
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
        cfg.remotes = vec![remote.clone()];
        cfg.validate().expect("a valid edge config");
    }
    edge.start_all();
    let edge_client = edge.client(None, 3).await;
    edge_client
        .create_pool(PoolSpec::new("/sensors", StoreKind::Persistent, 1))
        .await
        .expect("the edge's sensor pool");
    let plugin = std::fs::read(printer()).expect("the printer plugin");
    edge_client
        .upload_udl("printer", Bytes::from(plugin))
        .await
        .expect("upload");
    edge_client
        .add_dfgs(app_dfg())
        .await
        .expect("the application's DFG at the edge");

    // Inputs stream in: sensor k's readings 0, 1, 2, ... in order, round robin.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (c, stop, sent) = (edge_client.clone(), Arc::clone(&stop), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut latencies_ms: Vec<f64> = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for k in 0..SENSORS {
                    let key = format!("/sensors/s{k}");
                    let started = Instant::now();
                    // The edge accepts every input, cut or not (the client retries only
                    // across the killed node's view change).
                    c.put(&key, Bytes::from(seq.to_string()))
                        .await
                        .unwrap_or_else(|e| panic!("the edge refused {key} = {seq}: {e}"));
                    latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
                seq += 1;
                sent.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies_ms
        })
    };
    let wait_for = |what: &'static str, seconds: u64| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        move || {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    };

    // Phase 1: delayed link. Results reach the cloud ~100 ms after their input.
    let check = wait_for("the first results in the cloud", 30);
    let started = Instant::now();
    while history(&cloud_client, "/ingest/s0").await.len() < 10 {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The forwarder: the outbox shard's first member, the only node counting forwards.
    let mut first = None;
    for node in 0..3 {
        let forwarded = metric(edge.http_addr(node), "squall_wan_forwarded_total").await;
        if forwarded.is_some_and(|n| n > 0.0) {
            assert!(first.is_none(), "two edge nodes forward one outbox shard");
            first = Some(node);
        }
    }
    let first = first.expect("an edge node forwards");
    let delayed_rate = {
        let before = metric(edge.http_addr(first), "squall_wan_forwarded_total").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = metric(edge.http_addr(first), "squall_wan_forwarded_total").await;
        (after.unwrap_or(0.0) - before.unwrap_or(0.0)) / 3.0
    };
    println!(
        "delayed link: first results after {:.2} s; node {first} forwarded {delayed_rate:.0} \
         results/s",
        started.elapsed().as_secs_f64()
    );

    // Phase 2: the link is cut for 30 s; the edge keeps accepting inputs.
    link.cut();
    let cut_at = Instant::now();
    let sent_at_cut = sent.load(Ordering::Relaxed);
    // The forwarder holds entries it cannot send; kill it mid-cut.
    let check = wait_for("outbox entries on the forwarder", 20);
    loop {
        let waiting = metric(edge.http_addr(first), "squall_wan_outbox_entries").await;
        if waiting.is_some_and(|n| n >= 50.0) {
            println!("node {first} holds {waiting:?} outbox entries; kill -9");
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let link_up = metric(edge.http_addr(first), "squall_wan_link_up").await;
    edge.kill9(first);
    let survivors: Vec<u32> = (0..3).filter(|n| *n != first).collect();
    let remaining = CUT.saturating_sub(cut_at.elapsed());
    tokio::time::sleep(remaining).await;
    let sent_in_cut = sent.load(Ordering::Relaxed) - sent_at_cut;
    assert!(
        sent_in_cut > 100,
        "the edge accepted only {sent_in_cut} rounds of inputs during the cut"
    );
    // A survivor forwards now (the outbox shard's new first member): it counts failed
    // round trips, and the dashboard shows its link down and entries waiting.
    let check = wait_for("a surviving edge node to forward", 30);
    let forwarder = 'found: loop {
        for &node in &survivors {
            let failures = metric(edge.http_addr(node), "squall_wan_forward_failures_total").await;
            if failures.is_some_and(|n| n > 0.0) {
                break 'found node;
            }
        }
        check();
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    browser_wan(edge.http_addr(forwarder), "down", "some", "wan-cut").await;
    let waiting = metric(edge.http_addr(forwarder), "squall_wan_outbox_entries").await;
    println!(
        "after the cut: {sent_in_cut} rounds of {SENSORS} inputs accepted; node {forwarder} \
         forwards now, its outbox holds {waiting:?}; node {first} saw link_up = {link_up:?} \
         before its kill"
    );
    assert!(
        waiting.is_some_and(|n| n > 0.0),
        "nothing waited in the outbox during the cut"
    );

    // Phase 3: restored. The outbox drains; inputs stop a little later.
    link.restore();
    let restored_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let latencies = feeder.await.expect("the feeder");
    let rounds = sent.load(Ordering::Relaxed);
    let check = wait_for("the outboxes to drain", 120);
    loop {
        let mut left = 0.0;
        for &node in &survivors {
            left += metric(edge.http_addr(node), "squall_wan_outbox_entries")
                .await
                .unwrap_or(f64::MAX);
        }
        if left == 0.0 {
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "drained {:.1} s after the restore",
        restored_at.elapsed().as_secs_f64()
    );
    browser_wan(edge.http_addr(forwarder), "up", "none", "wan-restored").await;

    // Every input's result, exactly once, in order, per key.
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..SENSORS {
        let key = format!("/ingest/s{k}");
        let values = history(&cloud_client, &key).await;
        let expected: Vec<String> = (0..rounds).map(|i| i.to_string()).collect();
        assert_eq!(
            values.len(),
            expected.len(),
            "{key}: {} results for {} inputs{}",
            values.len(),
            expected.len(),
            edge.logs()
        );
        assert_eq!(values, expected, "{key}: results out of order or repeated");
        results.insert(key, values.len());
        // The cloud's own stage ran on each of them, once, in order.
        let key = format!("/results/s{k}");
        await_history(&cloud_client, &key, &expected, || cloud.logs()).await;
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    println!(
        "{} inputs, each result once and in order in the cloud; edge put latency p50 {:.2} ms \
         p99 {:.2} ms",
        rounds as usize * SENSORS,
        p(0.5),
        p(0.99)
    );
    wan.shutdown().await;
}

/// `wan.outbox_full = "reject"`: while the link is cut and the outbox is full, inputs
/// whose DFG sends to the remote site are refused with `outbox_full` (not retried by the
/// client) and the outbox stays within its limit; once the link is back it drains, inputs
/// are taken again, and every accepted input's result reaches the cloud once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_new_inputs_with_a_clear_error_when_configured_to() {
    const LIMIT: usize = 20;
    let mut cloud = Cluster::new(1, &[]);
    for cfg in &mut cloud.configs {
        cfg.cluster.id = 0xc10e;
    }
    cloud.start_all();
    let cloud_client = cloud.client(None, 1).await;
    cloud_client
        .create_pool(PoolSpec::new("/ingest", StoreKind::Persistent, 1))
        .await
        .expect("the cloud's ingest pool");
    let (wan, remote) = link_to(&cloud, LinkSettings::default()).await;
    let link = wan.handle();
    let mut edge = Cluster::new(1, &[]);
    edge.with_http();
    for cfg in &mut edge.configs {
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
        cfg.wan.outbox_full = OutboxFull::Reject;
        cfg.wan.outbox_entries_max = LIMIT;
        cfg.remotes = vec![remote.clone()];
        cfg.validate().expect("a valid edge config");
    }
    edge.start_all();
    let c = edge.client(None, 1).await;
    c.create_pool(PoolSpec::new("/sensors", StoreKind::Persistent, 1))
        .await
        .expect("the sensor pool");
    let plugin = std::fs::read(printer()).expect("the printer plugin");
    c.upload_udl("printer", Bytes::from(plugin))
        .await
        .expect("upload");
    c.add_dfgs(edge_dfg()).await.expect("the edge DFG");

    link.cut();
    let mut accepted: Vec<u64> = Vec::new();
    let mut refusal = None;
    for seq in 0..2_000u64 {
        match c.put("/sensors/s0", Bytes::from(seq.to_string())).await {
            Ok(_) => accepted.push(seq),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
        let waiting = metric(edge.http_addr(0), "squall_wan_outbox_entries").await;
        assert!(
            waiting.is_none_or(|n| n <= LIMIT as f64),
            "the outbox holds {waiting:?} entries, over its limit of {LIMIT}"
        );
    }
    let refusal = refusal.expect("a full outbox refused an input");
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::OutboxFull),
        "refused with {refusal}"
    );
    println!("{} inputs accepted, then: {refusal}", accepted.len());
    assert!(
        accepted.len() >= LIMIT,
        "refused before the outbox was full"
    );

    link.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = accepted.last().map_or(0, |s| s + 1);
    loop {
        match c.put("/sensors/s0", Bytes::from(seq.to_string())).await {
            Ok(_) => {
                accepted.push(seq);
                break;
            }
            Err(e) if e.code() == Some(ErrorCode::OutboxFull) => {
                assert!(Instant::now() < deadline, "still refused after the restore");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after the restore: {e}"),
        }
    }
    seq += 1;
    let _ = seq;
    let expected: Vec<String> = accepted.iter().map(u64::to_string).collect();
    await_history(&cloud_client, "/ingest/s0", &expected, || edge.logs()).await;
    wan.shutdown().await;
}
