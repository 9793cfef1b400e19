//! UDLs on real node processes: upload the example printer plugin, add a DFG, put and
//! trigger_put inputs, read the outputs, refuse bad uploads and DFGs, and stop
//! triggering once the DFG is removed.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, PRINTER_UUID, printer};
use squall_adapters::client::Client;
use squall_adapters::config::Role;
use squall_adapters::wire::ErrorCode;

/// Three started nodes whose limits admit plugin libraries (megabytes: the test
/// cluster's 1 MiB limits are too small).
fn udl_cluster(tokens: &[(&str, Role)]) -> Cluster {
    let mut cluster = Cluster::new(3, tokens);
    for cfg in &mut cluster.configs {
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
    }
    cluster.start_all();
    cluster
}

/// A started [`udl_cluster`] without tokens, with the printer plugin uploaded, and a
/// client of it.
async fn printer_cluster() -> (Cluster, Client) {
    let plugin = std::fs::read(printer()).expect("the plugin library");
    let cluster = udl_cluster(&[]);
    let c = cluster.client(None, 3).await;
    c.upload_udl("printer", Bytes::from(plugin))
        .await
        .expect("upload");
    (cluster, c)
}

/// Waits for `key` to hold a value, up to `within`.
async fn eventually(c: &Client, key: &str, within: Duration) -> Option<Bytes> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(o)) = c.get(key).await {
            return Some(o.blob);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dfg(id: &str, udl: &str) -> Bytes {
    dfg_with(id, udl, r#"{"quiet": true}"#)
}

fn dfg_with(id: &str, udl: &str, config: &str) -> Bytes {
    Bytes::from(format!(
        r#"[{{
            "id": "{id}",
            "desc": "printer from /cache/in to /demo/out",
            "graph": [{{
                "pathname": "/cache/in",
                "user_defined_logic_list": ["{udl}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_hook_list": ["both"],
                "user_defined_logic_config_list": [{config}],
                "destinations": [{{"/demo/out": "put"}}]
            }}]
        }}]"#
    ))
}

/// How many of `inputs` have their output under `/demo/out` already; fails the test
/// when most do (a kill now would leave too little unfinished to prove anything).
async fn backlog_left(c: &Client, inputs: usize) -> usize {
    let done = c
        .list_keys("/demo/out", None)
        .await
        .map_or(0, |keys| keys.len());
    assert!(
        done < inputs * 3 / 4,
        "{done} of {inputs} inputs ran before the kill: the test proves little"
    );
    done
}

/// Waits up to 30 s for the view `c` sees to have `n` members.
async fn wait_for_members(c: &Client, cluster: &Cluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.members().await.map_or(0, |(_, m)| m.len()) != n {
        assert!(
            Instant::now() < deadline,
            "no view of {n} members; {}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every input `/…/k{i}` (i < `inputs`, value `v{i}`) has exactly one output
/// `/demo/out/k{i}` holding its value, with no earlier version: waits up to `within` for
/// the first, then a second for each after one is missing; panics listing what is
/// missing, with the cluster's logs.
async fn assert_one_output_each(c: &Client, cluster: &Cluster, inputs: usize, within: Duration) {
    let mut missing = Vec::new();
    for i in 0..inputs {
        let key = format!("/demo/out/k{i}");
        let deadline = Instant::now()
            + if missing.is_empty() {
                within
            } else {
                Duration::from_secs(1)
            };
        let found = loop {
            if let Ok(Some(o)) = c.get(&key).await {
                break Some(o);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match found {
            Some(o) => {
                assert_eq!(o.blob, Bytes::from(format!("v{i}")), "{key}");
                assert_eq!(
                    o.previous_key_version, None,
                    "{key} was written more than once"
                );
            }
            None => missing.push(i),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {inputs} inputs without output: {:?}; {}",
        missing.len(),
        &missing[..missing.len().min(20)],
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_plugins_run_on_arrival_and_stop_with_their_dfg() {
    let plugin = std::fs::read(printer()).expect("the plugin library");
    let cluster = udl_cluster(&[]);
    let c = cluster.client(None, 3).await;

    // Bad uploads and DFGs change nothing.
    let e = c
        .upload_udl("junk", Bytes::from_static(b"\x7fELF not a library"))
        .await
        .expect_err("not a plugin");
    assert_eq!(e.code(), Some(ErrorCode::InvalidPlugin), "{e}");
    let dfg_id = "2a9c7b1e-1111-4a2b-9c3d-000000000001";
    let e = c
        .add_dfgs(dfg(dfg_id, PRINTER_UUID))
        .await
        .expect_err("the UDL is not uploaded yet");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchUdl), "{e}");
    let e = c
        .add_dfgs(Bytes::from_static(b"[{\"id\": 3}]"))
        .await
        .expect_err("not a DFG");
    assert_eq!(e.code(), Some(ErrorCode::InvalidDfg), "{e}");
    assert_eq!(c.list_dfgs().await.expect("list"), "[]");

    if let Err(e) = c.upload_udl("printer", Bytes::from(plugin)).await {
        panic!("upload: {e}; {}", cluster.logs());
    }
    let udls = c.list_udls().await.expect("list");
    assert!(udls.contains(PRINTER_UUID), "{udls}");
    assert!(
        !udls.contains("NOT LOADED") && udls.contains("\"load_error\":null"),
        "{udls}"
    );
    c.add_dfgs(dfg(dfg_id, PRINTER_UUID))
        .await
        .expect("add the DFG");
    assert!(c.list_dfgs().await.expect("list").contains(dfg_id));

    // Ordered puts: every input has its output, with the same bytes.
    for i in 0..20 {
        c.put(
            &format!("/cache/in/k{i}"),
            Bytes::from(format!("value {i}")),
        )
        .await
        .expect("put an input");
    }
    for i in 0..20 {
        let out = eventually(&c, &format!("/demo/out/k{i}"), Duration::from_secs(10)).await;
        assert_eq!(
            out.as_deref(),
            Some(format!("value {i}").as_bytes()),
            "output of k{i}; {}",
            cluster.logs()
        );
    }
    // A vertex covers its pathname's keys segment-wise: `/cache/in` is not an ancestor
    // of `/cache/inbox/k0` (as in Cascade, whose dispatch matches path prefixes); an
    // output of it would be `/demo/outbox/k0`.
    c.put("/cache/inbox/k0", Bytes::from_static(b"not an input"))
        .await
        .expect("put beside the vertex");
    c.put("/cache/in/k20", Bytes::from_static(b"value 20"))
        .await
        .expect("put an input");
    assert!(
        eventually(&c, "/demo/out/k20", Duration::from_secs(10))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = c.list_keys("/demo", None).await.expect("list");
    assert!(
        written.iter().all(|k| !k.contains("box")),
        "the vertex ran on a key outside its pathname: {written:?}"
    );
    // A trigger_put is not stored, yet triggers the vertex.
    c.trigger_put("/cache/in/t1", Bytes::from_static(b"triggered"))
        .await
        .expect("trigger_put");
    assert_eq!(
        eventually(&c, "/demo/out/t1", Duration::from_secs(10))
            .await
            .as_deref(),
        Some(&b"triggered"[..])
    );
    assert!(c.get("/cache/in/t1").await.expect("get").is_none());

    // Removing the DFG stops the triggering.
    let e = c.remove_dfg("2a9c7b1e-1111-4a2b-9c3d-00000000ffff").await;
    assert_eq!(
        e.expect_err("no such DFG").code(),
        Some(ErrorCode::NoSuchDfg)
    );
    c.remove_dfg(dfg_id).await.expect("remove the DFG");
    c.put("/cache/in/after", Bytes::from_static(b"late"))
        .await
        .expect("put");
    c.trigger_put("/cache/in/after2", Bytes::from_static(b"late"))
        .await
        .expect("trigger_put");
    assert_eq!(
        eventually(&c, "/demo/out/after", Duration::from_secs(2)).await,
        None
    );
    assert_eq!(c.get("/demo/out/after2").await.expect("get"), None);
    // And the UDL can go too.
    c.remove_udl(PRINTER_UUID).await.expect("remove the UDL");
    assert_eq!(c.list_udls().await.expect("list"), "[]");
    let e = c.remove_udl(PRINTER_UUID).await.expect_err("gone");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchUdl));
}

/// A UDL's context reaches the whole cluster: the printer puts a copy of each input
/// elsewhere and reads it back (failing unless it reads what it wrote) before it emits.
/// A call that fails (a key in no pool) fails the invocation: no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udl_gets_and_puts_through_its_context() {
    let (cluster, c) = printer_cluster().await;
    let dfg_id = "2a9c7b1e-1111-4a2b-9c3d-0000000000c1";
    c.add_dfgs(dfg_with(
        dfg_id,
        PRINTER_UUID,
        r#"{"quiet": true, "copy_to": "/cache/copies/"}"#,
    ))
    .await
    .expect("add the DFG");
    for i in 0..10 {
        c.put(&format!("/cache/in/c{i}"), Bytes::from(format!("copy {i}")))
            .await
            .expect("put an input");
    }
    for i in 0..10 {
        let want = format!("copy {i}");
        let out = eventually(&c, &format!("/demo/out/c{i}"), Duration::from_secs(10)).await;
        assert_eq!(
            out.as_deref(),
            Some(want.as_bytes()),
            "output of c{i}; {}",
            cluster.logs()
        );
        let copy = c
            .get(&format!("/cache/copies/c{i}"))
            .await
            .expect("get the copy")
            .map(|o| o.blob);
        assert_eq!(copy.as_deref(), Some(want.as_bytes()));
    }
    c.remove_dfg(dfg_id).await.expect("remove the DFG");

    let failing = "2a9c7b1e-1111-4a2b-9c3d-0000000000c2";
    c.add_dfgs(dfg_with(
        failing,
        PRINTER_UUID,
        r#"{"quiet": true, "copy_to": "/nowhere/"}"#,
    ))
    .await
    .expect("add the DFG");
    c.put("/cache/in/lost", Bytes::from_static(b"no copy"))
        .await
        .expect("put an input");
    assert_eq!(
        eventually(&c, "/demo/out/lost", Duration::from_secs(2)).await,
        None,
        "the put into no pool should have failed the invocation"
    );
    // The cluster and the UDL go on.
    c.remove_dfg(failing).await.expect("remove the DFG");
    c.add_dfgs(dfg(dfg_id, PRINTER_UUID)).await.expect("add");
    c.put("/cache/in/again", Bytes::from_static(b"fine"))
        .await
        .expect("put");
    assert_eq!(
        eventually(&c, "/demo/out/again", Duration::from_secs(10))
            .await
            .as_deref(),
        Some(&b"fine"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_is_lost_when_the_replica_running_it_is_killed() {
    let (mut cluster, c) = printer_cluster().await;
    // Each invocation takes 20 ms: the node killed has work in flight.
    c.add_dfgs(dfg_with(
        "2a9c7b1e-1111-4a2b-9c3d-000000000002",
        PRINTER_UUID,
        r#"{"quiet": true, "work_ms": 20}"#,
    ))
    .await
    .expect("add the DFG");
    const INPUTS: usize = 1000;
    // Inputs stream in; a third of the way, the node running a third of them dies.
    let feeder = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..INPUTS {
                let mut tries = 0;
                loop {
                    match c
                        .put(&format!("/cache/in/k{i}"), Bytes::from(format!("v{i}")))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if tries < 5 => {
                            tries += 1;
                            eprintln!("put k{i}: {e}; again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("put k{i}: {e}"),
                    }
                }
                // A steady stream, so the kill lands in the middle of it.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get("/demo/out/k300").await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "no outputs; {}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!feeder.is_finished(), "the inputs ended before the kill");
    cluster.kill9(2);
    feeder.await.expect("every input was put");
    // Every input has exactly one output: present, with no earlier version.
    assert_one_output_each(&c, &cluster, INPUTS, Duration::from_secs(30)).await;
    // The survivors did re-run work of the killed node (else this proved nothing).
    let logs = cluster.logs();
    let reruns = logs.matches("re-running a UDL input").count();
    assert!(reruns > 0, "no input was re-run; {logs}");
    println!("{reruns} inputs re-run after the kill");
}

/// A vertex from `from` to `to` running the printer once per input (`one`), on ordered
/// puts, taking `work_ms` per input.
fn one_dfg(id: &str, from: &str, to: &str, work_ms: u64) -> Bytes {
    Bytes::from(format!(
        r#"[{{
            "id": "{id}",
            "desc": "printer from {from} to {to}",
            "graph": [{{
                "pathname": "{from}",
                "user_defined_logic_list": ["{PRINTER_UUID}"],
                "shard_dispatcher_list": ["one"],
                "user_defined_logic_hook_list": ["ordered"],
                "user_defined_logic_config_list": [{{"quiet": true, "work_ms": {work_ms}}}],
                "destinations": [{{"{to}": "put"}}]
            }}]
        }}]"#
    ))
}

/// The same with a node down at the end of the last life: its log stops before the
/// inputs, so after the restart it cannot tell who ran what and holds none of them; the
/// nodes that held them to the end run them (before, a third went to it and never ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_restart_with_a_node_behind_runs_every_unfinished_input() {
    let (mut cluster, c) = printer_cluster().await;
    c.add_dfgs(one_dfg(
        "2a9c7b1e-1111-4a2b-9c3d-000000000013",
        "/demo/in",
        "/demo/out",
        100,
    ))
    .await
    .expect("add the DFG");
    cluster.kill9(2);
    wait_for_members(&c, &cluster, 2).await;
    const INPUTS: usize = 300;
    for i in 0..INPUTS {
        c.put(&format!("/demo/in/k{i}"), Bytes::from(format!("v{i}")))
            .await
            .expect("put an input");
    }
    let done = backlog_left(&c, INPUTS).await;
    cluster.kill9(0);
    cluster.kill9(1);
    drop(c);
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    assert_one_output_each(&c, &cluster, INPUTS, Duration::from_secs(60)).await;
    let reruns = |node| {
        cluster
            .node_log(node)
            .matches("left unfinished before the total restart")
            .count()
    };
    let (r0, r1, r2) = (reruns(0), reruns(1), reruns(2));
    assert!(r0 + r1 > 0, "nothing re-run; {}", cluster.logs());
    assert_eq!(r2, 0, "node 2 ran inputs it never held");
    println!("{done} of {INPUTS} outputs before the kill; re-run by node 0: {r0}, node 1: {r1}");
}

/// Inputs delivered while a node was down are held by the replicas of that time only.
/// The node comes back (a new member of the shard), then the replica running those
/// inputs is killed: each of them must go to the replica that holds it, not to the
/// newcomer, which never received it (before, about half of them were handed to it and
/// never ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_from_before_a_rejoin_survive_their_replica_s_failure() {
    let (mut cluster, c) = printer_cluster().await;
    c.add_dfgs(one_dfg(
        "2a9c7b1e-1111-4a2b-9c3d-000000000012",
        "/demo/in",
        "/demo/out",
        100,
    ))
    .await
    .expect("add the DFG");
    // 100 ms an input over 4 workers a node: seconds of work queue up. Node 2 dies with
    // some of the first inputs in its log, unfinished: it comes back into a live group,
    // whose members re-ran them, so it must not run them again.
    const INPUTS: usize = 300;
    const BEFORE: usize = 60;
    let put = |i: usize| {
        let c = c.clone();
        async move {
            c.put(&format!("/demo/in/k{i}"), Bytes::from(format!("v{i}")))
                .await
                .expect("put an input")
        }
    };
    for i in 0..BEFORE {
        put(i).await;
    }
    cluster.kill9(2);
    wait_for_members(&c, &cluster, 2).await;
    for i in BEFORE..INPUTS {
        put(i).await;
    }
    cluster.start(2);
    wait_for_members(&c, &cluster, 3).await;
    let done = backlog_left(&c, INPUTS).await;
    // Node 1: in the shard's member list of then (0, 1) and of after the kill (0, 2) it
    // is at the same place, so the hash that gave it an input gives it to node 2 now.
    cluster.kill9(1);
    // Every input has exactly one output: present, with no earlier version.
    assert_one_output_each(&c, &cluster, INPUTS, Duration::from_secs(60)).await;
    let reruns = cluster
        .node_log(0)
        .matches("re-running a UDL input whose replica failed")
        .count();
    assert!(reruns > 0, "node 0 re-ran nothing; {}", cluster.logs());
    let node2 = common::strip_ansi(&cluster.node_log(2));
    // Its replay did hold inputs (else the forgetting went untested).
    let held: usize = node2
        .lines()
        .filter(|l| l.contains("replayed the log"))
        .filter_map(|l| {
            l.split("held=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(held > 0, "node 2's replay held nothing; {node2}");
    assert!(
        !node2.contains("left unfinished before the total restart"),
        "node 2 re-ran what its log held, though it rejoined a live group; {}",
        cluster.logs()
    );
    println!(
        "{done} of {INPUTS} outputs before the kill, {reruns} inputs re-run by node 0, \
         {held} held by node 2's replay and forgotten"
    );
}

/// Every node is killed with inputs of a persistent pool still queued for their UDL, and
/// the cluster restarts from its logs: each input left unfinished runs again (on the
/// replica now assigned it), so every input has exactly one output; inputs put before
/// their DFG was added never ran, and do not run after the restart either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_inputs_run_after_a_total_restart() {
    let (mut cluster, c) = printer_cluster().await;
    // Put before their DFG exists: no UDL ran on them, and none may after a restart.
    const EARLY: usize = 20;
    for i in 0..EARLY {
        c.put(&format!("/demo/early/k{i}"), Bytes::from(format!("e{i}")))
            .await
            .expect("put an early input");
    }
    c.add_dfgs(one_dfg(
        "2a9c7b1e-1111-4a2b-9c3d-000000000010",
        "/demo/early",
        "/demo/done-early",
        0,
    ))
    .await
    .expect("add the late DFG");
    // 50 ms an input over 4 workers on each of 3 nodes: the inputs queue up.
    c.add_dfgs(one_dfg(
        "2a9c7b1e-1111-4a2b-9c3d-000000000011",
        "/demo/in",
        "/demo/out",
        50,
    ))
    .await
    .expect("add the DFG");
    const INPUTS: usize = 400;
    for i in 0..INPUTS {
        c.put(&format!("/demo/in/k{i}"), Bytes::from(format!("v{i}")))
            .await
            .expect("put an input");
    }
    let outputs = |c: &Client| {
        let c = c.clone();
        async move { c.list_keys("/demo/out", None).await.map(|keys| keys.len()) }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done;
    loop {
        done = outputs(&c).await.unwrap_or(0);
        if done >= 20 {
            assert!(
                done < INPUTS,
                "every input ran before the kill: {done}; the test proves nothing"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no outputs; {}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for node in 0..3 {
        cluster.kill9(node);
    }
    drop(c);
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    // Every input has exactly one output: present, with no earlier version.
    assert_one_output_each(&c, &cluster, INPUTS, Duration::from_secs(60)).await;
    let all = (0..3).map(|n| cluster.node_log(n)).collect::<String>();
    let reruns = all
        .matches("re-running a UDL input left unfinished before the total restart")
        .count();
    assert!(reruns > 0, "no input was re-run; {}", cluster.logs());
    assert_eq!(
        c.list_keys("/demo/done-early", None).await.expect("list"),
        Vec::<String>::new(),
        "inputs from before their DFG ran after the restart"
    );
    println!("{done} of {INPUTS} outputs before the kill, {reruns} inputs re-run after it");
}

/// A call runs the UDLs a trigger_put of its key triggers and answers with what they
/// emitted (the very value the printer echoes), which also reaches the vertex's
/// destination; a failing or panicking UDL fails the call with its message, and a key no
/// vertex covers is refused; the node goes on serving calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answers_with_what_its_udls_emit() {
    let (cluster, c) = printer_cluster().await;
    c.add_dfgs(dfg_with(
        "2a9c7b1e-1111-4a2b-9c3d-0000000000ca",
        PRINTER_UUID,
        r#"{"quiet": true, "panic_on": "boom", "fail_on": "bad"}"#,
    ))
    .await
    .expect("add the DFG");

    for i in 0..20 {
        let value = format!("called {i}");
        let outputs = c
            .call_udl(&format!("/cache/in/c{i}"), Bytes::from(value.clone()))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}; {}", cluster.logs()));
        assert_eq!(outputs.len(), 1, "one output per call: {outputs:?}");
        assert_eq!(outputs[0].blob, value.as_bytes());
        assert!(outputs[0].key.ends_with(&format!("c{i}")), "{outputs:?}");
    }
    // The outputs went to the destination too; the input was not stored.
    assert_eq!(
        eventually(&c, "/demo/out/c19", Duration::from_secs(10))
            .await
            .as_deref(),
        Some(&b"called 19"[..])
    );
    assert!(c.get("/cache/in/c19").await.expect("get").is_none());

    for (value, said) in [("bad", "asked to fail on"), ("boom", "panicked")] {
        let e = c
            .call_udl("/cache/in/x", Bytes::from(value))
            .await
            .expect_err("a failing UDL fails the call");
        assert_eq!(e.code(), Some(ErrorCode::UdlFailed), "{e}");
        assert!(e.to_string().contains(said), "{value}: {e}");
    }
    let e = c
        .call_udl("/cache/nothing-here", Bytes::from_static(b"x"))
        .await
        .expect_err("no vertex");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchDfg), "{e}");
    let e = c
        .call_udl("/no-pool/x", Bytes::from_static(b"x"))
        .await
        .expect_err("no pool");
    assert_eq!(e.code(), Some(ErrorCode::NoPoolForKey), "{e}");

    let outputs = c
        .call_udl("/cache/in/after", Bytes::from_static(b"still here"))
        .await
        .expect("the node goes on");
    assert_eq!(outputs[0].blob, &b"still here"[..]);

    // The CLI prints the outputs, and one clear line with a failure status on an error.
    let cli = |args: &[&str]| cluster.cli(2, args);
    let (status, stdout, stderr) = cli(&["call", "/cache/in/cli", "from the cli"]);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("from the cli (12 bytes)"), "{stdout}");
    let (status, _, stderr) = cli(&["call", "/cache/in/cli", "bad"]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("udl_failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_failing_udl_is_counted_and_the_node_goes_on() {
    let (cluster, c) = printer_cluster().await;
    // `all`: every replica runs it, so every node meets the panic.
    let text = String::from_utf8(
        dfg_with(
            "2a9c7b1e-1111-4a2b-9c3d-000000000003",
            PRINTER_UUID,
            r#"{"quiet": true, "panic_on": "boom", "fail_on": "bad"}"#,
        )
        .to_vec(),
    )
    .expect("utf-8")
    .replace(r#"["one"]"#, r#"["all"]"#);
    c.add_dfgs(Bytes::from(text)).await.expect("add the DFG");
    for (key, value) in [("p", "boom"), ("f", "bad"), ("ok", "fine")] {
        c.put(&format!("/cache/in/{key}"), Bytes::from(value))
            .await
            .expect("put");
    }
    assert_eq!(
        eventually(&c, "/demo/out/ok", Duration::from_secs(10))
            .await
            .as_deref(),
        Some(&b"fine"[..])
    );
    assert_eq!(c.get("/demo/out/p").await.expect("get"), None);
    assert_eq!(c.get("/demo/out/f").await.expect("get"), None);
    // Each node counted three invocations, two of them errors, and is still serving.
    for addr in cluster.addrs() {
        let node = Client::connect(
            std::slice::from_ref(&addr),
            None,
            squall_adapters::client::Policy::Fixed,
        )
        .await
        .expect("the node is up");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list: serde_json::Value =
                serde_json::from_str(&node.list_udls().await.expect("list")).expect("JSON");
            let (invocations, errors) = (&list[0]["invocations"], &list[0]["errors"]);
            if invocations == 3 && errors == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr}: {invocations} invocations, {errors} errors; {}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let logs = cluster.logs();
    assert!(logs.contains("panicked"), "the panic is logged");
    assert!(logs.contains("asked to fail on"), "the failure is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_word_count_example_counts_words_over_two_pools() {
    let plugin = std::fs::read(common::example_plugin("wordcount")).expect("the plugin");
    let cluster = udl_cluster(&[]);
    let c = cluster.client(None, 3).await;
    let volatile = c
        .list_pools()
        .await
        .expect("pools")
        .iter()
        .find(|p| p.kind == squall_kvs::StoreKind::Volatile)
        .map(|p| p.subgroup)
        .expect("a volatile pool");
    for path in ["/wc/text", "/wc/words", "/wc/counts"] {
        c.create_pool(squall_kvs::PoolSpec::new(
            path.to_string(),
            squall_kvs::StoreKind::Volatile,
            volatile,
        ))
        .await
        .expect("a pool");
    }
    c.upload_udl("wordcount", Bytes::from(plugin))
        .await
        .expect("upload");
    c.add_dfgs(Bytes::from(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../udl/examples/wordcount/dfgs.json"
        ))
        .expect("the example's dfgs.json"),
    ))
    .await
    .expect("add the DFG");
    let docs = [
        "the quick brown fox",
        "The lazy dog and the fox",
        "a fox, a dog; THE end",
    ];
    for (i, d) in docs.iter().enumerate() {
        c.put(&format!("/wc/text/doc{i}"), Bytes::from(*d))
            .await
            .expect("put a document");
    }
    for (word, count) in [
        ("the", "4"),
        ("fox", "3"),
        ("dog", "2"),
        ("a", "2"),
        ("end", "1"),
    ] {
        let key = format!("/wc/counts/{word}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = c.get(&key).await.expect("get").map(|o| o.blob);
            if got.as_deref() == Some(count.as_bytes()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key}: {got:?}, expected {count}; {}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_version_takes_over_while_inputs_flow_and_none_is_lost() {
    let v1 = std::fs::read(printer()).expect("version 1");
    let v2 = std::fs::read(common::example_plugin_in(
        "printer",
        "udl-plugins-v2",
        &[("SQUALL_PRINTER_TAG", "v2:")],
    ))
    .expect("version 2");
    assert_ne!(v1, v2, "two different builds");
    let cluster = udl_cluster(&[("admin", Role::Admin), ("writer", Role::Write)]);
    // Uploads and DFGs need the admin role.
    let writer = cluster.client(Some("writer"), 3).await;
    let e = writer
        .upload_udl("printer", Bytes::from(v1.clone()))
        .await
        .expect_err("not admin");
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let e = writer
        .add_dfgs(dfg("2a9c7b1e-1111-4a2b-9c3d-000000000004", PRINTER_UUID))
        .await
        .expect_err("not admin");
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let admin = cluster.client(Some("admin"), 3).await;
    assert_eq!(admin.list_udls().await.expect("list"), "[]");
    admin
        .upload_udl("printer", Bytes::from(v1))
        .await
        .expect("upload version 1");
    admin
        .add_dfgs(dfg("2a9c7b1e-1111-4a2b-9c3d-000000000004", PRINTER_UUID))
        .await
        .expect("add the DFG");
    const INPUTS: usize = 300;
    let feeder = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for i in 0..INPUTS {
                writer
                    .put(&format!("/cache/in/r{i}"), Bytes::from(format!("x{i}")))
                    .await
                    .expect("put");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.get("/demo/out/r100").await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "no outputs; {}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!feeder.is_finished(), "the inputs ended before the upload");
    admin
        .upload_udl("printer", Bytes::from(v2))
        .await
        .expect("upload version 2");
    feeder.await.expect("every input was put");
    // Every input has its output, from one version or the other; the new one takes over.
    let mut versions = Vec::new();
    for i in 0..INPUTS {
        let out = eventually(&writer, &format!("/demo/out/r{i}"), Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no output for r{i}; {}", cluster.logs()));
        let v2 = out.starts_with(b"v2:");
        let body = if v2 { &out[3..] } else { &out[..] };
        assert_eq!(body, format!("x{i}").as_bytes());
        versions.push(v2);
    }
    assert!(!versions[0], "the first inputs ran on version 1");
    assert!(versions[INPUTS - 1], "the last inputs ran on version 2");
    let switches = versions.windows(2).filter(|w| w[0] != w[1]).count();
    println!(
        "{} of {INPUTS} outputs from version 2; {switches} switches",
        versions.iter().filter(|v| **v).count()
    );
}

/// A UDL's output refused because a replica's disk is under its reserve waits for space
/// instead of being dropped: the input was counted done, so a dropped output would be
/// lost for good. Inputs go to a volatile pool (taken while the disks are low), the
/// printer's outputs to a persistent one (refused); once space is freed every output is
/// written, with its input's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udl_output_refused_for_disk_space_is_written_once_space_returns() {
    let plugin = std::fs::read(printer()).expect("the plugin library");
    let mut cluster = Cluster::new(3, &[]);
    for cfg in &mut cluster.configs {
        cfg.limits.object_bytes_max = 64 << 20;
        cfg.limits.frame_bytes_max = (64 << 20) + (1 << 20);
    }
    // Room for the plugin (in the metadata log and the UDL directory) and some data.
    let room = 3 * plugin.len() as u64 + (48 << 20);
    let Some(disks) = cluster.small_disks(room, 16 << 20) else {
        return;
    };
    cluster.start_all();
    let c = cluster.client(None, 3).await;
    c.upload_udl("printer", Bytes::from(plugin))
        .await
        .expect("upload");
    let dfg_id = "2a9c7b1e-1111-4a2b-9c3d-000000000009";
    c.add_dfgs(dfg(dfg_id, PRINTER_UUID))
        .await
        .expect("add the DFG");
    // Fill the persistent pool until the disks are under their reserve.
    let junk = Bytes::from(vec![7u8; 256 << 10]);
    let mut filled = 0;
    loop {
        assert!(
            filled < 400,
            "no storage alarm after {filled} puts\n{}",
            cluster.logs()
        );
        match c.put(&format!("/demo/junk/{filled}"), junk.clone()).await {
            Ok(_) => filled += 1,
            Err(e) if e.code() == Some(ErrorCode::StorageFull) => break,
            Err(e) => panic!("filling: {e}\n{}", cluster.logs()),
        }
    }
    // Inputs are taken (volatile); their outputs wait.
    for i in 0..10 {
        c.put(
            &format!("/cache/in/k{i}"),
            Bytes::from(format!("value {i}")),
        )
        .await
        .expect("a volatile input");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..10 {
        assert!(
            c.get(&format!("/demo/out/k{i}"))
                .await
                .expect("get")
                .is_none(),
            "output k{i} written under a storage alarm"
        );
    }
    for disk in &disks {
        disk.grow(512 << 20);
    }
    for i in 0..10 {
        let out = eventually(&c, &format!("/demo/out/k{i}"), Duration::from_secs(20)).await;
        assert_eq!(
            out.as_deref(),
            Some(format!("value {i}").as_bytes()),
            "output of k{i} once space is freed\n{}",
            cluster.logs()
        );
    }
    drop(cluster);
    drop(disks);
}
