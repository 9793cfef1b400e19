//! The HTTP server of real node processes: the REST API (every client operation, JSON
//! errors with stable codes, tokens and roles), the OpenAPI document, health probes and
//! Prometheus metrics.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cluster, HttpReply as Reply, http_request};
use serde_json::Value;
use squall_adapters::config::Role;

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request on a fresh connection, with `token` as its bearer token.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_request(addr, method, path, &auth, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_does_every_client_operation() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.with_http();
    cluster.start_all();
    let _ = cluster.client(None, 3).await;
    let web = cluster.http_addr(1);

    assert_eq!(http(web, "GET", "/healthz", None, b"").status, 200);
    let ready = http(web, "GET", "/readyz", None, b"");
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );

    let members = http(web, "GET", "/api/v1/members", None, b"").json();
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3));
    let node = http(web, "GET", "/api/v1/node", None, b"").json();
    assert_eq!(node["node"], 1);
    let shards = node["shards"].as_array().expect("shards");
    assert!(!shards.is_empty());
    assert!(
        shards
            .iter()
            .any(|s| s["kind"] == "persistent" && s["members"].as_array().map(Vec::len) == Some(3)),
        "{node}"
    );
    let views = http(web, "GET", "/api/v1/views", None, b"").json();
    let last = views.as_array().and_then(|v| v.last()).expect("a view");
    assert_eq!(last["id"], members["view_id"]);
    assert_eq!(last["members"].as_array().map(Vec::len), Some(3));
    let page = http(web, "GET", "/", None, b"");
    assert_eq!(page.status, 200);
    assert!(page.headers.contains("text/html"));
    assert_eq!(
        http(web, "GET", "/assets/nothing.js", None, b"").status,
        404
    );

    // Objects: put, get (JSON and raw), versions, time, list, remove.
    let w1 = http(web, "PUT", "/api/v1/objects/demo/web/a", None, b"one");
    assert_eq!(w1.status, 200);
    let w1 = w1.json();
    let w2 = http(web, "PUT", "/api/v1/objects/demo/web/a", None, b"two").json();
    let got = http(web, "GET", "/api/v1/objects/demo/web/a", None, b"");
    assert_eq!(got.status, 200);
    let got = got.json();
    assert_eq!(got["value_text"], "two");
    assert_eq!(got["version"], w2["version"]);
    assert_eq!(got["previous_version_by_key"], w1["version"]);
    let old = http(
        web,
        "GET",
        &format!("/api/v1/objects/demo/web/a?version={}", w1["version"]),
        None,
        b"",
    )
    .json();
    assert_eq!(old["value_text"], "one");
    let then = http(
        web,
        "GET",
        &format!("/api/v1/objects/demo/web/a?time_us={}", w1["timestamp_us"]),
        None,
        b"",
    )
    .json();
    assert_eq!(then["value_text"], "one");
    let raw = http(
        web,
        "GET",
        "/api/v1/objects/demo/web/a?format=raw",
        None,
        b"",
    );
    assert_eq!(raw.body, b"two");
    assert!(
        raw.headers
            .to_ascii_lowercase()
            .contains("x-squall-version")
    );
    http(web, "PUT", "/api/v1/objects/demo/web/b", None, b"bee");
    let keys = http(web, "GET", "/api/v1/keys?prefix=/demo/web", None, b"").json();
    assert_eq!(
        keys["keys"],
        serde_json::json!(["/demo/web/a", "/demo/web/b"])
    );
    assert_eq!(
        http(web, "DELETE", "/api/v1/objects/demo/web/b", None, b"").status,
        200
    );
    let gone = http(web, "GET", "/api/v1/objects/demo/web/b", None, b"");
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["code"], "no_such_key");

    // Errors are JSON with stable codes, and change nothing.
    let conflict = http(
        web,
        "PUT",
        "/api/v1/objects/demo/web/a?if_absent=true",
        None,
        b"x",
    );
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["code"], "conflict");
    assert_eq!(conflict.json()["current_version"], w2["version"]);
    let no_pool = http(web, "PUT", "/api/v1/objects/nowhere/k", None, b"x");
    assert_eq!(no_pool.status, 404);
    assert_eq!(no_pool.json()["code"], "no_pool_for_key");
    let bad_query = http(
        web,
        "GET",
        "/api/v1/objects/demo/web/a?version=1&stable=true",
        None,
        b"",
    );
    assert_eq!(bad_query.status, 400);
    let too_large = http(
        web,
        "PUT",
        "/api/v1/objects/demo/web/huge",
        None,
        &vec![0u8; (1 << 20) + 1],
    );
    assert_eq!(
        too_large.status,
        413,
        "{}",
        String::from_utf8_lossy(&too_large.body)
    );
    assert_eq!(too_large.json()["code"], "too_large");
    // A body over the HTTP server's own limit (the frame limit) is refused before it
    // reaches the node, as JSON too.
    let over_body = http(
        web,
        "PUT",
        "/api/v1/objects/demo/web/huge",
        None,
        &vec![0u8; (2 << 20) + 1],
    );
    assert_eq!(over_body.status, 413);
    assert_eq!(over_body.json()["code"], "too_large");
    assert_eq!(http(web, "GET", "/api/v1/nothing", None, b"").status, 404);
    assert_eq!(
        http(web, "GET", "/api/v1/objects/demo/web/a", None, b"").json()["value_text"],
        "two"
    );

    // Pools.
    let created = http(
        web,
        "POST",
        "/api/v1/pools",
        None,
        br#"{"path": "/webpool", "kind": "volatile"}"#,
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let pools = http(web, "GET", "/api/v1/pools", None, b"").json();
    assert!(
        pools
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["path"] == "/webpool")),
        "{pools}"
    );
    assert_eq!(
        http(web, "GET", "/api/v1/pools/webpool/k", None, b"").json()["path"],
        "/webpool"
    );
    let exists = http(
        web,
        "POST",
        "/api/v1/pools",
        None,
        br#"{"path": "/webpool", "kind": "volatile"}"#,
    );
    assert_eq!(exists.json()["code"], "pool_exists");
    let bad = http(web, "POST", "/api/v1/pools", None, b"{not json");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "bad_request");
    let bad_query = http(
        web,
        "GET",
        "/api/v1/keys?prefix=/demo&time_us=soon",
        None,
        b"",
    );
    assert_eq!(bad_query.status, 400);
    assert_eq!(bad_query.json()["code"], "bad_request");
    assert_eq!(
        http(web, "DELETE", "/api/v1/pools/webpool", None, b"").status,
        204
    );

    // Compaction: history before the point is gone (410 `compacted`), the latest stays.
    let created = http(
        web,
        "POST",
        "/api/v1/pools",
        None,
        br#"{"path": "/webhist", "kind": "persistent"}"#,
    );
    assert_eq!(created.status, 201);
    let first = http(web, "PUT", "/api/v1/objects/webhist/k", None, b"one").json();
    http(web, "PUT", "/api/v1/objects/webhist/k", None, b"two");
    let done = http(
        web,
        "POST",
        "/api/v1/compact",
        None,
        br#"{"pool": "/webhist"}"#,
    );
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    let dropped: u64 = done
        .json()
        .as_array()
        .expect("one entry per shard")
        .iter()
        .map(|s| s["versions_dropped"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(dropped, 1, "{}", done.json());
    let old = http(
        web,
        "GET",
        &format!(
            "/api/v1/objects/webhist/k?time_us={}",
            first["timestamp_us"]
        ),
        None,
        b"",
    );
    assert_eq!(old.status, 410, "{}", String::from_utf8_lossy(&old.body));
    assert_eq!(old.json()["code"], "compacted");
    assert_eq!(
        http(web, "GET", "/api/v1/objects/webhist/k", None, b"").json()["value_text"],
        "two"
    );
    let volatile = http(
        web,
        "POST",
        "/api/v1/compact",
        None,
        br#"{"pool": "/cache"}"#,
    );
    assert_eq!(volatile.status, 400);
    assert_eq!(volatile.json()["code"], "not_versioned");
    let missing = http(
        web,
        "POST",
        "/api/v1/compact",
        None,
        br#"{"pool": "/nope"}"#,
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], "no_such_pool");
    assert_eq!(
        http(web, "DELETE", "/api/v1/pools/webhist", None, b"").status,
        204
    );

    // DFGs and UDLs are listed (the UDL tests upload and run them).
    assert_eq!(
        http(web, "GET", "/api/v1/udls", None, b"").json(),
        serde_json::json!([])
    );
    assert_eq!(
        http(web, "GET", "/api/v1/dfgs", None, b"").json(),
        serde_json::json!([])
    );
    let bad_dfg = http(web, "POST", "/api/v1/dfgs", None, b"[{]");
    assert_eq!(bad_dfg.status, 400);
    assert_eq!(bad_dfg.json()["code"], "invalid_dfg");

    // The OpenAPI document describes these paths.
    let doc = http(web, "GET", "/api/v1/openapi.json", None, b"").json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    for path in [
        "/api/v1/objects/{key}",
        "/api/v1/pools",
        "/api/v1/members",
        "/api/v1/keys",
        "/api/v1/compact",
        "/api/v1/udls",
        "/api/v1/dfgs",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }

    // Metrics in Prometheus' text format: the key series exist and move.
    let scrape = || {
        let m = http(web, "GET", "/metrics", None, b"");
        assert_eq!(m.status, 200);
        assert!(m.headers.contains("text/plain"), "{}", m.headers);
        String::from_utf8_lossy(&m.body).to_string()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    // Writes go to their shard's first member, whichever node took the HTTP request.
    let everywhere = |series: &str| -> f64 {
        (0..3)
            .map(|n| {
                let m = http(cluster.http_addr(n), "GET", "/metrics", None, b"");
                let text = String::from_utf8_lossy(&m.body).to_string();
                text.lines()
                    .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let writes = r#"squall_client_requests_total{op="write"}"#;
    let multicasts = r#"squall_multicast_seconds_count{subgroup="1"}"#;
    let writes_before = everywhere(writes);
    let multicasts_before = everywhere(multicasts);
    let before = scrape();
    assert_eq!(value(&before, "squall_view_members"), 3.0);
    assert!(value(&before, "squall_view_id") >= 1.0);
    assert!(value(&before, "squall_process_resident_memory_bytes") > 0.0);
    assert!(value(&before, "squall_client_connections") >= 1.0);
    let puts = r#"squall_pool_ops_total{op="put",pool="/demo"}"#;
    let puts_before = value(&before, puts);
    for i in 0..5 {
        http(
            web,
            "PUT",
            &format!("/api/v1/objects/demo/m/{i}"),
            None,
            b"x",
        );
    }
    let after = scrape();
    assert_eq!(value(&after, puts), puts_before + 5.0);
    assert!(everywhere(writes) >= writes_before + 5.0);
    assert!(everywhere(multicasts) >= multicasts_before + 5.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let objects = r#"squall_pool_objects{pool="/demo"} "#;
    while !scrape()
        .lines()
        .any(|l| l.strip_prefix(objects).and_then(|v| v.parse::<f64>().ok()) >= Some(6.0))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pool objects never sampled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_hold_over_http() {
    let mut cluster = Cluster::new(
        1,
        &[
            ("r-token", Role::Read),
            ("w-token", Role::Write),
            ("a-token", Role::Admin),
        ],
    );
    cluster.with_http();
    cluster.start_all();
    let _ = cluster.client(Some("a-token"), 1).await;
    let web = cluster.http_addr(0);

    let anonymous = http(web, "GET", "/api/v1/members", None, b"");
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["code"], "unauthenticated");
    assert_eq!(
        http(web, "GET", "/api/v1/members", Some("wrong"), b"").status,
        401
    );
    assert_eq!(http(web, "GET", "/metrics", None, b"").status, 401);
    assert_eq!(
        http(web, "GET", "/metrics", Some("r-token"), b"").status,
        200
    );

    let denied = http(web, "PUT", "/api/v1/objects/demo/k", Some("r-token"), b"v");
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["code"], "forbidden");
    assert_eq!(
        http(web, "PUT", "/api/v1/objects/demo/k", Some("w-token"), b"v").status,
        200
    );
    assert_eq!(
        http(web, "GET", "/api/v1/objects/demo/k", Some("r-token"), b"").json()["value_text"],
        "v"
    );
    let not_admin = http(
        web,
        "POST",
        "/api/v1/pools",
        Some("w-token"),
        br#"{"path": "/p", "kind": "volatile"}"#,
    );
    assert_eq!(not_admin.status, 403);
    assert_eq!(
        http(
            web,
            "POST",
            "/api/v1/pools",
            Some("a-token"),
            br#"{"path": "/p", "kind": "volatile"}"#,
        )
        .status,
        201
    );
    // Forgetting history is the admin's.
    let compact = |token| {
        http(
            web,
            "POST",
            "/api/v1/compact",
            Some(token),
            br#"{"pool": "/demo"}"#,
        )
    };
    assert_eq!(compact("w-token").status, 403);
    assert_eq!(compact("w-token").json()["code"], "forbidden");
    let as_admin = compact("a-token");
    assert_eq!(
        as_admin.status,
        200,
        "{}",
        String::from_utf8_lossy(&as_admin.body)
    );
    assert_eq!(
        http(web, "GET", "/api/v1/objects/demo/k", Some("r-token"), b"").json()["value_text"],
        "v"
    );
}
