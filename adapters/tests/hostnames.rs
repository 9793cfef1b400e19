//! Nodes and clients that reach each other by host name, as in Kubernetes (a pod is
//! `squall-1.squall-peers...:7100`, its IP changes when it restarts): real `squall node`
//! processes whose peers and clients are told `localhost:<port>`, a client and the CLI
//! that connect by name, a node that takes its id from its host name, and the typed
//! errors of a host name without an id or an own address that is not this machine's.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use squall_adapters::client::{Client, Policy};
use squall_adapters::config::HostPort;

mod common;
use common::{Cluster, SQUALL};

fn localhost(port: u16) -> HostPort {
    HostPort::new("localhost", port).expect("a host:port")
}

/// A 3-node cluster whose peer and client addresses are all `localhost:<port>`. Nodes 0
/// and 1 listen for peers at `node.peer_listen_addr` (127.0.0.1); node 2 has none and
/// binds its own entry's name, resolved. Node 1's file says `id = 0` (node 0's): it
/// runs as node 1 because its host name is `squall-1` (`--node-id-from-hostname`).
fn named_cluster() -> Cluster {
    let mut cluster = Cluster::new(3, &[]);
    let listen: Vec<SocketAddr> = cluster.configs[0]
        .cluster
        .peers
        .iter()
        .map(|p| p.addr.socket_addr().expect("the helper's IPs"))
        .collect();
    for cfg in &mut cluster.configs {
        for peer in &mut cfg.cluster.peers {
            peer.addr = localhost(peer.addr.port());
            peer.client_addr = localhost(peer.client_addr.port());
        }
        let id = cfg.node.id as usize;
        cfg.node.peer_listen_addr = (id != 2).then_some(listen[id]);
        cfg.validate().expect("a valid config with names");
    }
    cluster
}

fn start_named(cluster: &mut Cluster) {
    cluster.start(0);
    cluster.start(2);
    cluster.configs[1].node.id = 0;
    cluster.start_with(1, &["--node-id-from-hostname"], &[("HOSTNAME", "squall-1")]);
    cluster.configs[1].node.id = 1;
}

/// The advertised (by-name) client address of `node`.
fn client_name(cluster: &Cluster, node: usize) -> String {
    cluster.configs[0].cluster.peers[node]
        .client_addr
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_configured_by_host_names_serves_a_client_that_connects_by_name() {
    let mut cluster = named_cluster();
    start_named(&mut cluster);
    let by_name = client_name(&cluster, 0);
    assert!(by_name.starts_with("localhost:"), "{by_name}");
    // Connected by name; once the cluster formed, the members are told by name too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        if let Ok(c) =
            Client::connect(std::slice::from_ref(&by_name), None, Policy::default()).await
            && let Ok((_, members)) = c.members().await
            && members.len() == 3
            && let Ok(pools) = c.list_pools().await
            && pools.len() >= 2
        {
            let mut named: Vec<(u32, String)> = members
                .iter()
                .map(|m| (m.node, m.client_addr.clone()))
                .collect();
            named.sort();
            let expected: Vec<(u32, String)> = (0..3)
                .map(|i| (i as u32, client_name(&cluster, i)))
                .collect();
            assert_eq!(named, expected);
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not form by name; {}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Writes go to the shard's first member and reads round-robin over the replicas,
    // each reached at its advertised name.
    for i in 0..10 {
        let key = format!("/demo/named-{i}");
        let value = Bytes::from(format!("value {i}"));
        client.put(&key, value.clone()).await.expect("put by name");
        let got = client.get(&key).await.expect("get by name");
        assert_eq!(got.map(|o| o.blob), Some(value));
    }
    client
        .put("/cache/named", Bytes::from_static(b"volatile"))
        .await
        .expect("put in the volatile pool");
    // The CLI by name, at another node.
    let out = Command::new(SQUALL)
        .args([
            "--cluster",
            &client_name(&cluster, 2),
            "get",
            "/demo/named-3",
        ])
        .output()
        .expect("squall runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("value 3"), "{stdout}");
    // Node 1 runs as node 1 (its file said 0): it took its id from the host name. Its
    // incarnation is 1, or a large number if node 0 had founded the group before node 1
    // looked for a running one (a first start then joins as a new incarnation).
    let log = std::fs::read_to_string(cluster.dir.path().join("n1.log")).expect("n1's log");
    assert!(log.contains("node 1 (incarnation "), "{log}");
}

/// Runs `squall node` on `config` (written to a file) with `env`; it must exit (within
/// 20 s) with a failure: its output.
fn failing_node(cluster: &Cluster, node: usize, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = cluster.dir.path().join(format!("failing-n{node}.toml"));
    std::fs::write(&path, cluster.configs[node].to_toml_string()).expect("config written");
    let mut child = Command::new(SQUALL)
        .args(["node", "--config"])
        .arg(&path)
        .args(args)
        .env_remove("SQUALL__NODE__ID")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("squall node starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("squall node {args:?} {env:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(status.code(), Some(1), "{text}");
    text
}

#[test]
fn a_node_refuses_to_start_with_a_host_name_without_an_id_or_an_address_not_its_own() {
    let mut cluster = named_cluster();
    let hostname = ["--node-id-from-hostname"];
    let text = failing_node(&cluster, 1, &hostname, &[("HOSTNAME", "squall")]);
    assert!(
        text.contains("`squall` does not end in `-<number>`"),
        "{text}"
    );
    let text = failing_node(&cluster, 1, &hostname, &[("HOSTNAME", "squall-7")]);
    assert!(
        text.contains("node.id") && text.contains("host name `squall-7`"),
        "{text}"
    );
    let text = failing_node(
        &cluster,
        1,
        &hostname,
        &[("HOSTNAME", "squall-1"), ("SQUALL__NODE__ID", "1")],
    );
    assert!(text.contains("both set the node id"), "{text}");
    // Node 2 binds its own entry's address: one that is not this machine's, or a name
    // that does not resolve, is refused at start, pointing at node.peer_listen_addr.
    cluster.configs[2].cluster.peers[2].addr = "192.0.2.1:7100".parse().expect("TEST-NET-1");
    let text = failing_node(&cluster, 2, &[], &[]);
    assert!(
        text.contains("none of them an address of this machine")
            && text.contains("node.peer_listen_addr"),
        "{text}"
    );
    cluster.configs[2].cluster.peers[2].addr = "squall-2.not-scheduled-yet.invalid:7100"
        .parse()
        .expect("a name");
    let text = failing_node(&cluster, 2, &[], &[]);
    assert!(
        text.contains("does not resolve") && text.contains("node.peer_listen_addr"),
        "{text}"
    );
}
