//! `squall-bench trigger`: logic triggered by arriving data, end to end, beside the same
//! path through Redis Streams with worker processes, in the same run.
//!
//! - `trigger`: a put reaches a UDL, which writes its output (Squall: a put under
//!   `/trig/in/` runs the printer example UDL on one replica, which puts the object
//!   under `/trig/out/`; Redis: XADD to stream `in`, a worker process blocked in XREAD
//!   XADDs it to `out`). The latency is from the client's put until the client is told
//!   of the output (Squall: a watch on `/trig/out`; Redis: a blocking XREAD on `out`),
//!   so it covers the put, the trigger, the UDL start and the output's write.
//! - `start`: put → UDL start, the issue's measure: the UDL (the printer with
//!   `"stamp": true`; Redis: the worker) passes on the wall-clock time its handler
//!   started, and the latency is that minus the time the client sent the put (one
//!   machine, one clock). `start trigger_put` is the same for Squall's unstored
//!   `trigger_put` (hook `trigger`); Redis has no unstored path, so both compare with
//!   its XADD.
//! - `pipeline`: the two-stage pipeline of `udl/examples/pipeline` (`/pipeline/in` ->
//!   upper-case -> trigger_put `/pipeline/stage1` -> tag -> put `/pipeline/out`); Redis:
//!   `in` -> worker -> `s1` -> worker -> `out`, each worker doing the same work.
//!
//! Squall runs 3 node processes (3 replicas); Redis a primary with one replica. The
//! plugins are the example `cdylib`s next to this binary, built with cargo if missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use squall_adapters::client::{Client, Policy};
use squall_adapters::wire::ErrorCode;
use squall_kvs::{PoolSpec, StoreKind};

use crate::TriggerArgs;
use crate::kv::{start_redis, start_squall};
use crate::resp::{Redis, Value};
use crate::size::format_size;

const PRINTER_UUID: &str = "48e60f7c-8500-11eb-8755-0242ac110002";

/// One measured case.
#[derive(Debug, serde::Serialize)]
struct Row {
    bench: &'static str,
    system: &'static str,
    case: String,
    p50_us: u64,
    p99_us: u64,
    count: u64,
}

pub fn run(args: &TriggerArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("squall-bench-trigger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    match runtime.block_on(bench_squall(args, &dir.join("squall"))) {
        Ok(mut r) => rows.append(&mut r),
        Err(e) => {
            eprintln!("squall: not measured: {e:#}");
            failed.push("squall".to_string());
        }
    }
    match runtime.block_on(bench_redis(args, &dir.join("redis"))) {
        Ok(mut r) => rows.append(&mut r),
        Err(e) => {
            eprintln!("redis: not measured: {e:#}");
            failed.push("redis".to_string());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(args, &rows)?;
    crate::kv::not_measured(&failed)
}

fn report(args: &TriggerArgs, rows: &[Row]) -> Result<()> {
    if args.json {
        for row in rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<8} {:<28} {:>9} {:>9} {:>7}",
        "system", "case", "p50 µs", "p99 µs", "count"
    );
    for r in rows {
        println!(
            "{:<8} {:<28} {:>9} {:>9} {:>7}",
            r.system, r.case, r.p50_us, r.p99_us, r.count
        );
    }
    println!("\nratios (squall / redis, same case; lower is better)");
    for r in rows.iter().filter(|r| r.system == "squall") {
        if let Some(peer) = rows
            .iter()
            // Redis has no unstored path: its stored one is the comparison.
            .find(|p| p.system == "redis" && p.case == r.case.replace(" trigger_put", ""))
        {
            println!(
                "{:<28} p50 {:>6.2}x  p99 {:>6.2}x",
                r.case,
                r.p50_us as f64 / peer.p50_us.max(1) as f64,
                r.p99_us as f64 / peer.p99_us.max(1) as f64
            );
        }
    }
    Ok(())
}

/// What a case's latency is taken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// The UDL's start, of a stored put.
    Start,
    /// The UDL's start, of an unstored `trigger_put`.
    StartUnstored,
    /// The client learning of the (last) output.
    Output,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The start time a stamping UDL or worker passed on.
fn stamp(blob: Option<&[u8]>) -> Result<u64> {
    let bytes: [u8; 8] = blob
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("the output is not an 8-byte stamp"))?;
    Ok(u64::from_le_bytes(bytes))
}

fn row(system: &'static str, case: String, hist: &Histogram<u64>) -> Row {
    let r = Row {
        bench: "trigger",
        system,
        case,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        count: hist.len(),
    };
    eprintln!(
        "  {} {}: p50 {} µs, p99 {} µs",
        r.system, r.case, r.p50_us, r.p99_us
    );
    r
}

/// The example plugin `name`, next to this binary, (re)built with cargo first so it
/// matches the SDK's ABI (a stale library from before an ABI change is refused). Without
/// cargo, the library already there is used.
pub(crate) fn plugin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow!("no directory"))?;
    let path = dir.join(format!("libsquall_udl_example_{name}.so"));
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "-q", "-p", &format!("squall-udl-example-{name}")]);
    if release {
        cargo.arg("--release");
    }
    match cargo.status() {
        Ok(status) if status.success() && path.exists() => Ok(path),
        Err(_) if path.exists() => Ok(path),
        _ => bail!("cannot build the example plugin {name}"),
    }
}

async fn bench_squall(args: &TriggerArgs, dir: &Path) -> Result<Vec<Row>> {
    let (procs, addrs) = start_squall(dir).await?;
    let c = Client::connect(&addrs, None, Policy::default()).await?;
    let subgroup = c
        .list_pools()
        .await?
        .iter()
        .filter(|p| p.kind == StoreKind::Volatile)
        .map(|p| p.subgroup)
        .min()
        .ok_or_else(|| anyhow!("no volatile pool"))?;
    for path in [
        "/trig/in",
        "/trig/out",
        "/trig/start",
        "/trig/tstart",
        "/trig/stamps",
        "/pipeline/in",
        "/pipeline/stage1",
        "/pipeline/out",
    ] {
        match c
            .create_pool(PoolSpec::new(
                path.to_string(),
                StoreKind::Volatile,
                subgroup,
            ))
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::PoolExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    c.upload_udl("printer", Bytes::from(std::fs::read(plugin("printer")?)?))
        .await?;
    c.upload_udl("pipeline", Bytes::from(std::fs::read(plugin("pipeline")?)?))
        .await?;
    c.add_dfgs(Bytes::from(format!(
        r#"[{{"id": "3b7d9e10-5a2c-4e8f-9b1d-7c6e5f4a3b21", "desc": "trigger bench",
            "graph": [{{"pathname": "/trig/in", "user_defined_logic_list": ["{PRINTER_UUID}"],
            "user_defined_logic_hook_list": ["ordered"],
            "user_defined_logic_stateful_list": ["stateless"],
            "user_defined_logic_config_list": [{{"quiet": true}}],
            "destinations": [{{"/trig/out": "put"}}]}}]}}]"#
    )))
    .await?;
    c.add_dfgs(Bytes::from(format!(
        r#"[{{"id": "8c1e2f3a-4b5d-4c6e-8f7a-9b0c1d2e3f4a", "desc": "UDL start stamps",
            "graph": [{{"pathname": "/trig/start", "user_defined_logic_list": ["{PRINTER_UUID}"],
            "user_defined_logic_hook_list": ["ordered"],
            "user_defined_logic_stateful_list": ["stateless"],
            "user_defined_logic_config_list": [{{"quiet": true, "stamp": true}}],
            "destinations": [{{"/trig/stamps": "put"}}]}},
            {{"pathname": "/trig/tstart", "user_defined_logic_list": ["{PRINTER_UUID}"],
            "user_defined_logic_hook_list": ["trigger"],
            "user_defined_logic_stateful_list": ["stateless"],
            "user_defined_logic_config_list": [{{"quiet": true, "stamp": true}}],
            "destinations": [{{"/trig/stamps": "put"}}]}}]}}]"#
    )))
    .await?;
    c.add_dfgs(Bytes::from_static(include_bytes!(
        "../../udl/examples/pipeline/dfgs.json"
    )))
    .await?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for (case, input, output, measure) in [
            ("start", "/trig/start", "/trig/stamps", Measure::Start),
            (
                "start trigger_put",
                "/trig/tstart",
                "/trig/stamps",
                Measure::StartUnstored,
            ),
            ("trigger", "/trig/in", "/trig/out", Measure::Output),
            ("pipeline", "/pipeline/in", "/pipeline/out", Measure::Output),
        ] {
            let mut events = c.watch(output).await?;
            let blob = Bytes::from(vec![b'z'; size]);
            let mut hist = Histogram::<u64>::new(3)?;
            for i in 0..args.warmup + args.count {
                let key = format!("{input}/s{size}-{i}");
                let want = format!("{output}/s{size}-{i}");
                let started = Instant::now();
                let sent_us = now_us();
                if measure == Measure::StartUnstored {
                    c.trigger_put(&key, blob.clone()).await?;
                } else {
                    c.put(&key, blob.clone()).await?;
                }
                let latency_us = loop {
                    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                        .await
                        .map_err(|_| anyhow!("no output for {key} in 10 s"))?
                        .ok_or_else(|| anyhow!("the watch ended"))?;
                    if event.key == want {
                        break match measure {
                            Measure::Output => started.elapsed().as_micros() as u64,
                            Measure::Start | Measure::StartUnstored => {
                                stamp(event.blob.as_deref())?.saturating_sub(sent_us)
                            }
                        };
                    }
                };
                if i >= args.warmup {
                    hist.record(latency_us)?;
                }
            }
            rows.push(row(
                "squall",
                format!("{case} {}", format_size(size)),
                &hist,
            ));
        }
    }
    drop(procs);
    Ok(rows)
}

// ----- redis streams --------------------------------------------------------------------

/// Appends `value` to `stream` (capped near 1000 entries) under field `v`.
async fn xadd(redis: &mut Redis, stream: &str, value: &[u8]) -> Result<()> {
    redis
        .call(&[
            b"XADD",
            stream.as_bytes(),
            b"MAXLEN",
            b"~",
            b"1000",
            b"*",
            b"k",
            b"x",
            b"v",
            value,
        ])
        .await?;
    Ok(())
}

/// The hidden `redis-worker` subcommand: moves every entry of stream `from` to stream
/// `to`, doing a pipeline stage's work on the way (none, `upper`, or `tag`).
pub fn worker_main(addr: SocketAddr, from: &str, to: &str, stage: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut input = Redis::connect(addr).await?;
        let mut output = Redis::connect(addr).await?;
        let mut after = Bytes::from_static(b"$");
        loop {
            for e in input.read(from.as_bytes(), &after).await? {
                let value = match stage {
                    "stamp" => Bytes::copy_from_slice(&now_us().to_le_bytes()),
                    "upper" => Bytes::from(e.value.to_ascii_uppercase()),
                    "tag" => {
                        let mut v = e.value.to_vec();
                        v.extend_from_slice(b" [tagged by a redis worker]");
                        Bytes::from(v)
                    }
                    _ => e.value,
                };
                xadd(&mut output, to, &value).await?;
                after = e.id;
            }
        }
    })
}

async fn bench_redis(args: &TriggerArgs, dir: &Path) -> Result<Vec<Row>> {
    std::fs::create_dir_all(dir)?;
    let (mut procs, primary, _replica) = start_redis(dir).await?;
    let exe = std::env::current_exe()?;
    let mut worker = |from: &str, to: &str, stage: &str| -> Result<()> {
        procs.0.push(
            Command::new(&exe)
                .args(["redis-worker", "--addr", &primary.to_string()])
                .args(["--from", from, "--to", to, "--stage", stage])
                .stdout(Stdio::null())
                // It ends with an error when the harness stops Redis under it.
                .stderr(Stdio::null())
                .spawn()?,
        );
        Ok(())
    };
    worker("tin", "tout", "none")?;
    worker("sin", "sout", "stamp")?;
    worker("pin", "ps1", "upper")?;
    worker("ps1", "pout", "tag")?;
    // Workers block in XREAD from "$": give them a moment to be there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut producer = Redis::connect(primary).await?;
    let mut consumer = Redis::connect(primary).await?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for (case, input, output, measure) in [
            ("start", "sin", "sout", Measure::Start),
            ("trigger", "tin", "tout", Measure::Output),
            ("pipeline", "pin", "pout", Measure::Output),
        ] {
            let blob = Bytes::from(vec![b'z'; size]);
            let mut hist = Histogram::<u64>::new(3)?;
            // The newest entry of the output stream: what follows it is ours.
            let mut after = Bytes::from_static(b"$");
            if let Value::Array(Some(last)) = consumer
                .call(&[b"XREVRANGE", output.as_bytes(), b"+", b"-", b"COUNT", b"1"])
                .await?
                && let Some(Value::Array(Some(entry))) = last.into_iter().next()
                && let Some(Value::Bulk(Some(id))) = entry.into_iter().next()
            {
                after = id;
            }
            if &after[..] == b"$" {
                after = Bytes::from_static(b"0");
            }
            for i in 0..args.warmup + args.count {
                let started = Instant::now();
                let sent_us = now_us();
                xadd(&mut producer, input, &blob).await?;
                let got = consumer.read(output.as_bytes(), &after).await?;
                let last = got
                    .last()
                    .ok_or_else(|| anyhow!("XREAD returned nothing"))?;
                after = last.id.clone();
                let latency_us = match measure {
                    Measure::Output => started.elapsed().as_micros() as u64,
                    _ => stamp(Some(&last.value))?.saturating_sub(sent_us),
                };
                if i >= args.warmup {
                    hist.record(latency_us)?;
                }
            }
            rows.push(row("redis", format!("{case} {}", format_size(size)), &hist));
        }
    }
    drop(procs);
    Ok(rows)
}
