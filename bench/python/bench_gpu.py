#!/usr/bin/env python3
"""Model inference next to the data: the classify example through Squall versus the same
model in a Ray GPU actor, in one run, on one machine.

Both systems run the network of ``udl/examples/classify/classify.py`` (same seed, same
weights) on 32x32x3 ``uint8`` images, one image per request, closed loop:

- **squall**: ``put`` of the image into a GPU-cached pool (``gpu_cache = {device = 0}``)
  of a ``squall.local_cluster``; the Python UDL ``Classify`` wraps the object's GPU copy
  with ``torch.from_dlpack`` (no copy), runs the model and emits ``{class, score}``; the
  client waits for the result through a watch on the destination.
- **ray**: ``ray.put(image)``, a resident actor (``num_gpus=1`` when there is a GPU) that
  copies the image to the GPU, runs the model and returns ``(class, score)``, ``ray.get``.

Reported per system: latency p50/p99 and ops/s of put -> inference -> result, the device
the model ran on (``cuda:0``, or ``cpu`` on a machine without a GPU, where torch runs on
the CPU, or numpy without torch), and the fraction of that time spent copying between
host and device: for Squall, from the nodes' ``/metrics``
(``squall_gpu_transfer_seconds`` of the measured window, all caches and directions; every
replica uploads its own copy, in parallel, so the sum over the nodes is divided by the
number of nodes: one replica's copies, over the sum of the latencies); for Ray, the
actor's own timing of its host-to-device copy (synchronised). On a machine without a GPU
there are no transfers (the cache is the host buffer), so the fraction is 0.

Squall runs on 1 node (one copy of each object, like Ray) and on 3 nodes (three replicas,
each caching every object on the GPU), each against the same Ray run (``--nodes``). On a
machine with one GPU the three node processes share it, and their uploads contend with
the inference for it.

Ray is optional: without it only Squall is measured. Systems run one after another,
each started, measured and stopped before the next, and everything started is stopped
on every exit path (the helpers of ``bench_python.py``).

Usage::

    target/pyenv/bin/python bench/python/bench_gpu.py [--seconds 3] [--warmup 0.5] \\
        [--nodes 1,3] [--backend auto|torch|numpy] [--systems squall,ray] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLASSIFY_DIR = os.path.join(ROOT, "udl", "examples", "classify")
sys.path.insert(0, HERE)
sys.path.insert(0, CLASSIFY_DIR)

import numpy as np  # noqa: E402

import bench_python as bp  # noqa: E402  (closed loop, percentiles, signals, teardown)
import classify  # noqa: E402  (the model both systems run)

SYSTEMS = ("squall", "ray")
CASE = "classify 32x32x3: put, model, result"
# Distinct images the loop cycles through (and keys per run in Squall's pool).
IMAGES = 64
SEED = 7
CLASSES = 10
GPU_CACHE = {"device": 0, "capacity": "1GiB"}
EVENT_TIMEOUT_S = 30.0


def log(msg: str) -> None:
    bp.log(msg)


def row_json(row: bp.Row, extra: Dict[str, object]) -> dict:
    d = row.json(bench="gpu", case=CASE)
    d.update(extra)
    return d


# ----- metrics -----------------------------------------------------------------------------


def scrape(http_addrs: List[str]) -> Dict[str, float]:
    """Sums over every node, cache and direction of the GPU transfer metrics."""
    totals = {"transfer_seconds": 0.0, "transfer_count": 0.0, "transfer_bytes": 0.0}
    names = {
        "squall_gpu_transfer_seconds_sum": "transfer_seconds",
        "squall_gpu_transfer_seconds_count": "transfer_count",
        "squall_gpu_transfer_bytes_total": "transfer_bytes",
    }
    for addr in http_addrs:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                totals[names[name]] += float(line.rsplit(" ", 1)[1])
    return totals


# ----- Squall ------------------------------------------------------------------------------


def bench_squall(args, rows: List[dict], stack: contextlib.ExitStack) -> None:
    import squall

    build = bp._build_kind(squall)
    log(f"squall {squall.__version__}: {build}")
    cluster = stack.enter_context(squall.local_cluster(nodes=args.nodes))
    client = squall.Client(cluster.addrs)
    stack.callback(client.close)
    tag = uuid.uuid4().hex[:8]
    pool, dst = f"/benchgpu{tag}", f"/cache/benchgpu-{tag}-out"
    note = ""
    try:
        client.create_pool(pool, "volatile", gpu_cache=GPU_CACHE)
        cached = client.find_pool(f"{pool}/x").gpu_cache
        if cached is None:
            note = "pool created without gpu_cache (not supported by this node build)"
    except TypeError:
        client.create_pool(pool, "volatile")
        note = "pool created without gpu_cache (this squall package has no gpu_cache option)"
    if note:
        log(f"  note: {note}")
    udl = client.upload_python_udl(os.path.join(CLASSIFY_DIR, "classify.py"), "Classify")
    graph_id = str(uuid.uuid4())
    client.add_dfgs(
        [
            {
                "id": graph_id,
                "desc": "bench_gpu: the classify example",
                "graph": [
                    {
                        "pathname": f"{pool}/in",
                        "user_defined_logic_list": [udl],
                        "shard_dispatcher_list": ["one"],
                        "user_defined_logic_stateful_list": ["stateless"],
                        "user_defined_logic_config_list": [
                            {"seed": SEED, "classes": CLASSES, "backend": args.backend}
                        ],
                        "destinations": [{dst: "put"}],
                    }
                ],
            }
        ]
    )
    stack.callback(lambda: bp._quietly(client.remove_dfg, graph_id))
    watch = client.watch(dst)
    stack.callback(watch.close)

    def wait_output(key: str) -> tuple:
        while True:
            event = watch.next(timeout_s=EVENT_TIMEOUT_S)
            if event is None:
                raise RuntimeError("the watch on the UDL's destination ended")
            if event.key == key and not event.removed:
                return event, json.loads(bytes(event.value))

    images, expected = args.images, args.expected
    t0 = time.perf_counter()
    client.put(f"{pool}/in/cold", images[0])
    _, first = wait_output(f"{dst}/cold")
    log(f"  squall  first invocation (import, model build, cold): {1e3 * (time.perf_counter() - t0):.0f} ms; "
        f"backend {first['backend']} on {first['device']}, input on {first['input_device']}")
    seen = {"device": first["device"], "backend": first["backend"], "input_device": first["input_device"]}
    mismatches = [0]

    def op(i: int) -> dict:
        n = i % len(images)
        suffix = f"i{n}"
        w0 = time.time_ns()
        t0 = bp.now_ns()
        client.put(f"{pool}/in/{suffix}", images[n])
        t1 = bp.now_ns()
        event, out = wait_output(f"{dst}/{suffix}")
        if out["class"] != expected[n]:
            mismatches[0] += 1
        seen["device"], seen["input_device"] = out["device"], out["input_device"]
        return {
            "put_call": t1 - t0,
            "to_udl_start": out["start_ns"] - w0,
            "inference": out["done_ns"] - out["start_ns"],
            "udl_done_to_client": w0 + (bp.now_ns() - t0) - out["done_ns"],
        }

    for i in range(IMAGES):  # every key exists once before the measurement
        op(i)
    warm_until = time.perf_counter() + args.warmup
    i = IMAGES
    while time.perf_counter() < warm_until:
        op(i)
        i += 1
    # The metrics of the measured window only (warm-up done above).
    before = scrape(cluster.http_addrs)
    row = bp.closed_loop("squall", CASE, f"put {pool} -> Python UDL (DLPack) -> emit -> watch",
                         images[0].nbytes, args.seconds, 0.0, lambda j: op(i + j))
    after = scrape(cluster.http_addrs)
    measured_s = sum(row.latencies_ns) / 1e9
    # Every replica copies each object; one replica's share is on the UDL's path.
    transfer_s = (after["transfer_seconds"] - before["transfer_seconds"]) / args.nodes
    transfer_bytes = (after["transfer_bytes"] - before["transfer_bytes"]) / args.nodes
    rows.append(
        row_json(
            row,
            {
                "device": seen["device"],
                "backend": seen["backend"],
                "input_device": seen["input_device"],
                "nodes": args.nodes,
                "transfer_fraction": round(transfer_s / measured_s, 4) if measured_s else 0.0,
                "transfer_bytes_per_op": round(transfer_bytes / max(1, row.count), 1),
                "class_mismatches": mismatches[0],
                "squall_build": build,
                **({"note": note} if note else {}),
            },
        )
    )


# ----- Ray ---------------------------------------------------------------------------------


def bench_ray(args, rows: List[dict], stack: contextlib.ExitStack) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    gpu = classify.torch is not None and classify.torch.cuda.is_available()
    # The actor imports the example's module: its directory on the workers' path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [CLASSIFY_DIR, os.environ.get("PYTHONPATH")]))
    tmp = tempfile.mkdtemp(prefix="bench-ray-")
    stack.callback(shutil.rmtree, tmp, True)
    log(f"ray {ray.__version__}: starting a local cluster ({'1 GPU' if gpu else 'no GPU'}; temp dir {tmp})")
    stack.callback(bp._ray_shutdown, ray)
    ray.init(
        num_cpus=2,
        num_gpus=1 if gpu else 0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tmp,
        log_to_driver=False,
        object_store_memory=1 << 30,
    )
    bp.install_signal_handlers()  # ray.init replaced the SIGTERM handler

    @ray.remote(num_gpus=1 if gpu else 0)
    class Classifier:
        def __init__(self, backend: str) -> None:
            import classify as c

            self.c = c
            self.inner = c.Classifier({"seed": SEED, "classes": CLASSES, "backend": backend})
            self.device = self.inner._default_device

        def info(self) -> dict:
            return {"backend": self.inner.backend, "device": self.device}

        def classify(self, image: np.ndarray) -> tuple:
            c = self.c
            if self.inner.backend == "numpy":
                best, score = c.classify_numpy(self.inner.weights, image)
                return best, score, 0
            torch = c.torch
            pixels = torch.from_numpy(image)  # the object store's memory, no copy
            copy_ns = 0
            if self.device != "cpu":
                t0 = time.perf_counter_ns()
                pixels = pixels.to(self.device)
                torch.cuda.synchronize()
                copy_ns = time.perf_counter_ns() - t0
            best, score = self.inner.infer(pixels, self.device)  # the UDL's code path
            return best, score, copy_ns

    actor = Classifier.remote(args.backend)
    info = ray.get(actor.info.remote())
    t0 = time.perf_counter()
    ray.get(actor.classify.remote(ray.put(args.images[0])))
    log(f"  ray     first actor call (cold): {1e3 * (time.perf_counter() - t0):.0f} ms; "
        f"backend {info['backend']} on {info['device']}")
    copies: List[int] = []
    mismatches = [0]

    def op(i: int) -> None:
        n = i % len(args.images)
        ref = ray.put(args.images[n])
        best, _score, copy_ns = ray.get(actor.classify.remote(ref))
        if best != args.expected[n]:
            mismatches[0] += 1
        copies.append(copy_ns)

    what = ("ray.put -> GPU actor (copy to device, model) -> ray.get" if info["device"] != "cpu"
            else "ray.put -> actor (model on the CPU) -> ray.get")
    row = bp.closed_loop("ray", CASE, what,
                         args.images[0].nbytes, args.seconds, args.warmup, op)
    measured = copies[-row.count:] if row.count else []
    measured_s = sum(row.latencies_ns) / 1e9
    rows.append(
        row_json(
            row,
            {
                "device": info["device"],
                "backend": info["backend"],
                "transfer_fraction": round(sum(measured) / 1e9 / measured_s, 4) if measured_s else 0.0,
                "transfer_bytes_per_op": float(args.images[0].nbytes if info["device"] != "cpu" else 0),
                "class_mismatches": mismatches[0],
            },
        )
    )


# ----- report ------------------------------------------------------------------------------


def report(args, rows: List[dict]) -> None:
    ray_row = next((r for r in rows if r["system"] == "ray"), None)
    ratios = []
    for a in (r for r in rows if r["system"] == "squall"):
        if ray_row is None:
            break
        b = ray_row
        ratios.append({
            "bench": "gpu",
            "kind": "ratio",
            "case": CASE,
            "nodes": a["nodes"],
            "vs": "ray: " + b["what"],
            "p50": round(a["p50_us"] / b["p50_us"], 4) if b["p50_us"] else None,
            "p99": round(a["p99_us"] / b["p99_us"], 4) if b["p99_us"] else None,
            "ops_per_s": round(a["ops_per_s"] / b["ops_per_s"], 4) if b["ops_per_s"] else None,
            "same_device": a["device"] == b["device"],
        })
    if args.json:
        for r in rows:
            print(json.dumps(r))
        for ratio in ratios:
            print(json.dumps(ratio))
        return
    print()
    print(f"{'system':<7} {'nodes':>5} {'device':<7} {'backend':<7} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>8} "
          f"{'transfer':>9} {'n':>6} {'load':>5}  operation")
    for r in rows:
        print(f"{r['system']:<7} {r.get('nodes', '-'):>5} {r['device']:<7} {r['backend']:<7} {r['p50_us'] / 1e3:>8.3f} "
              f"{r['p99_us'] / 1e3:>8.3f} {r['ops_per_s']:>8.0f} {100 * r['transfer_fraction']:>8.1f}% "
              f"{r['count']:>6} {r['load1']:>5.2f}  {r['what']}")
    print("(transfer: share of the round trip spent copying between host and GPU memory; "
          f"load: 1-minute load average at the end; {os.cpu_count()} CPUs)")
    for squall_row in (r for r in rows if r["system"] == "squall" and "inference_p50_us" in r):
        print(f"\nwhere the Squall round trip goes ({squall_row['nodes']} nodes; p50, ms): "
              + ", ".join(f"{label} {squall_row.get(k + '_p50_us', float('nan')) / 1e3:.3f}"
                          for k, label in (("put_call", "put call"), ("to_udl_start", "put->UDL start"),
                                           ("inference", "inference"),
                                           ("udl_done_to_client", "UDL done->client"))))
    for r in rows:
        if r.get("class_mismatches"):
            print(f"{r['system']}: {r['class_mismatches']} result(s) differed from the numpy model "
                  "(near ties computed in another order)")
        if r.get("note"):
            print(f"{r['system']}: {r['note']}")
    for ratio in ratios:
        print(f"\nsquall ({ratio['nodes']} nodes) / ray: p50 {ratio['p50']:.2f}x  p99 {ratio['p99']:.2f}x  "
              f"ops/s {ratio['ops_per_s']:.2f}x"
              + ("" if ratio["same_device"] else "  (NOT on the same device)"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per system (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first (default 0.5)")
    ap.add_argument("--nodes", default="1,3",
                    help="Squall nodes, each a replica with its GPU cache; a list measures each cluster "
                         "size in turn, against the same Ray run (default 1,3: one copy, like Ray, and "
                         "three replicas)")
    ap.add_argument("--backend", choices=("auto", "torch", "numpy"), default="auto",
                    help="the model's implementation in both systems (default auto: torch if importable)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="any of squall,ray (default both)")
    ap.add_argument("--json", action="store_true", help="one JSON object per system, then the ratio")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        ap.error(f"--systems: unknown {bad}; choose from {','.join(SYSTEMS)}")
    try:
        node_counts = [int(n) for n in str(args.nodes).split(",") if n.strip()]
    except ValueError:
        ap.error(f"--nodes: {args.nodes!r} is not a list of whole numbers")
    if args.seconds <= 0 or args.warmup < 0 or not node_counts or min(node_counts) < 1:
        ap.error("--seconds must be > 0, --warmup >= 0, --nodes >= 1")
    if "ray" in systems:
        try:
            import ray  # noqa: F401
        except ImportError:
            log("ray is not installed: measuring squall only")
            systems.remove("ray")
    args.images = list(classify.make_images(IMAGES, seed=11))
    weights = classify.make_weights(SEED, CLASSES)
    args.expected = [classify.classify_numpy(weights, img)[0] for img in args.images]

    bp.install_signal_handlers()
    torch = classify.torch
    gpu = torch is not None and torch.cuda.is_available()
    log(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"torch {torch.__version__ if torch is not None else 'not installed'}; "
        f"GPU: {torch.cuda.get_device_name(0) if gpu else 'none (device cpu)'}")
    rows: List[dict] = []
    failed = []
    bench = {"squall": bench_squall, "ray": bench_ray}
    try:
        for system in SYSTEMS:
            if system not in systems:
                continue
            for nodes in node_counts if system == "squall" else [None]:
                if nodes is not None:
                    args.nodes = nodes
                log(f"== {system}" + (f" ({nodes} nodes)" if nodes is not None else ""))
                if not bp.run_system(bench[system], system, args, rows):
                    failed.append(system)
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped; partial results follow")
        report(args, rows)
        return 130
    report(args, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
