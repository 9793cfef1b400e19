#!/usr/bin/env python3
"""Squall measured from Python, beside the peers a Python user would pick instead.

One run, one machine, one closed-loop client per case:

1. K/V: ``squall.Client`` against a 3-node ``squall.local_cluster`` (put and get on the
   volatile pool ``/cache`` and the persistent pool ``/demo``) versus redis-py on a
   local Redis primary with one replica (``SET``, ``SET`` + ``WAIT 1 0``, ``GET``).
2. "Put, run Python code on the data, get the result": a Python UDL on a vertex under
   ``/cache`` that sums the bytes with numpy and emits the total; the client puts the
   input (stored put, or unstored ``trigger_put``) and waits for the output through a
   watch on the destination prefix; and ``Client.call`` (the same UDL on a vertex with
   no destination: the outputs come back as the call's answer, nothing is stored).
   Versus Ray: ``ray.put`` + a resident actor's method on the ref doing the same numpy
   sum + ``ray.get``.

Every system runs alone: each one is started, measured and stopped before the next
starts, so their background threads do not share the CPUs with another's cases.
Everything started here is stopped on every exit path (error, Ctrl-C, SIGTERM): the
Squall nodes by ``local_cluster``, Redis by PID, Ray with ``ray.shutdown()``.

Usage::

    target/pyenv/bin/python bench/python/bench_python.py [--seconds 3] [--warmup 0.5] \
        [--sizes 1KiB,1MiB] [--systems squall,redis,ray] [--json]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

SYSTEMS = ("squall", "redis", "ray")
# Keys a K/V case cycles through (as the Rust harness does), so 1 MiB cases do not
# grow the stores without bound.
KV_KEYS = 64
# Bytes of inputs the stored-put UDL case may keep in /cache (per replica) before it
# reuses key names: small values get a fresh key every iteration.
UDL_KEY_BYTES = 256 << 20
EVENT_TIMEOUT_S = 30.0
SQUALL_BUILD: Optional[str] = None  # what bench_squall found out about the wheel

now_ns = time.perf_counter_ns


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----- sizes and statistics ---------------------------------------------------------------

_UNITS = {
    "": 1,
    "B": 1,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_size(text: str) -> int:
    t = text.strip().upper()
    digits = len(t) - len(t.lstrip("0123456789."))
    num, unit = t[:digits], t[digits:].strip()
    if not num or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1KiB, 64KiB, 1MiB, 4096)")
    size = int(float(num) * _UNITS[unit])
    if size < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1 byte")
    return size


def format_size(size: int) -> str:
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= mult and size % mult == 0:
            return f"{size // mult}{unit}"
    return f"{size}B"


def percentile(sorted_ns: List[int], q: float) -> float:
    """Nearest-rank percentile, in ns."""
    if not sorted_ns:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100.0 * len(sorted_ns))))
    return float(sorted_ns[rank - 1])


@dataclass
class Row:
    system: str
    case: str  # shared by the rows ratios compare
    what: str  # the operation, in the system's own words
    size: int
    latencies_ns: List[int]
    elapsed_s: float
    extra: Dict[str, float] = field(default_factory=dict)
    load1: float = field(default_factory=lambda: os.getloadavg()[0])  # when it ended

    @property
    def count(self) -> int:
        return len(self.latencies_ns)

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies_ns), q)

    @property
    def ops_per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def json(self, bench: str = "python", case: Optional[str] = None) -> dict:
        """The row in DESIGN.md's JSON form; ``case`` defaults to the case and size."""
        d = {
            "bench": bench,
            "kind": "case",
            "system": self.system,
            "case": case if case is not None else f"{self.case} {format_size(self.size)}",
            "what": self.what,
            "size": self.size,
            "p50_us": round(self.p(50) / 1e3, 1),
            "p99_us": round(self.p(99) / 1e3, 1),
            "ops_per_s": round(self.ops_per_s, 1),
            "bytes_per_s": round(self.ops_per_s * self.size, 1),
            "count": self.count,
            "load1": round(self.load1, 2),
        }
        d.update({k: round(v, 1) for k, v in self.extra.items()})
        if self.system == "squall" and SQUALL_BUILD:
            d["squall_build"] = SQUALL_BUILD
        return d


def closed_loop(
    system: str,
    case: str,
    what: str,
    size: int,
    seconds: float,
    warmup: float,
    op: Callable[[int], Optional[dict]],
) -> Row:
    """Calls ``op(i)`` back to back: ``warmup`` seconds unmeasured, then ``seconds``
    measured. ``op`` may return phase timings (ns) that are collected per call."""
    log(f"  {system:<7} {case} {format_size(size)}: {what}")
    i = 0
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        op(i)
        i += 1
    lat: List[int] = []
    phases: Dict[str, List[int]] = {}
    start = time.perf_counter()
    end = start + seconds
    while True:
        t0 = now_ns()
        extra = op(i)
        lat.append(now_ns() - t0)
        i += 1
        if extra:
            for k, v in extra.items():
                phases.setdefault(k, []).append(v)
        if time.perf_counter() >= end:
            break
    elapsed = time.perf_counter() - start
    row = Row(system, case, what, size, lat, elapsed)
    for k, vals in phases.items():
        row.extra[f"{k}_p50_us"] = percentile(sorted(vals), 50) / 1e3
    return row


# ----- installing peers on demand ---------------------------------------------------------


def ensure_module(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    log(f"python module {module!r} is missing: installing {package!r} with pip into {sys.prefix}")
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", package],
        stdout=sys.stderr,
    )
    importlib.invalidate_caches()
    return importlib.import_module(module)


def ensure_binary(binary: str, packages: List[str]) -> str:
    found = shutil.which(binary)
    if found:
        return found
    log(f"{binary} is missing: installing {' '.join(packages)} with apt-get")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.check_call(sudo + ["apt-get", "update"], stdout=sys.stderr, env=env)
    subprocess.check_call(
        sudo + ["apt-get", "install", "-y", "--no-install-recommends"] + packages,
        stdout=sys.stderr,
        env=env,
    )
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} is still missing after installing {packages}")
    return found


# ----- the UDL both systems run -----------------------------------------------------------

UDL_SOURCE = '''
import time

import numpy as np
import squall


class BenchSum(squall.UserDefinedLogic):
    """Sums the input's bytes with numpy and emits the total, with the wall-clock
    times (ns) at which it started and finished, under the same key suffix."""

    def handle(self, obj, ctx):
        start = time.time_ns()
        total = int(obj.blob.sum(dtype=np.uint64))
        done = time.time_ns()
        ctx.emit(obj.key_suffix, b"%d %d %d %d" % (total, start, done, obj.timestamp_us))
'''


def expected_sum(data: np.ndarray) -> int:
    return int(data.sum(dtype=np.uint64))


def payload(size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    return rng.integers(0, 256, size, dtype=np.uint8)


# ----- Squall -----------------------------------------------------------------------------


def bench_squall(args, rows: List[Row], stack: contextlib.ExitStack) -> None:
    import squall

    global SQUALL_BUILD
    SQUALL_BUILD = _build_kind(squall)
    log(f"squall {squall.__version__}: binary {squall.squall_binary()} ({SQUALL_BUILD})")
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-python-squall-"))
    log("starting a 3-node squall.local_cluster")
    cluster = stack.enter_context(squall.local_cluster(nodes=3))
    client = squall.Client(cluster.addrs)
    stack.callback(client.close)
    tag = uuid.uuid4().hex[:8]

    for size in args.sizes:
        data = payload(size)
        for pool, label in (("/cache", "volatile"), ("/demo", "persistent")):
            keys = [f"{pool}/bench-{tag}-{size}/b{i}" for i in range(KV_KEYS)]
            rows.append(
                closed_loop(
                    "squall", f"put {label}", f"Client.put {pool}", size,
                    args.seconds, args.warmup,
                    lambda i, keys=keys: (client.put(keys[i % KV_KEYS], data), None)[1],
                )
            )
            for k in keys:  # every key the gets read exists, whatever the warm-up did
                client.put(k, data)

            def get(i, keys=keys):
                obj = client.get(keys[i % KV_KEYS])
                assert obj is not None and len(obj.value) == size
            rows.append(
                closed_loop(
                    "squall", f"get {label}", f"Client.get {pool}", size,
                    args.seconds, args.warmup, get,
                )
            )

    # The UDL: a module in a temp directory, on a vertex under /cache.
    module = f"bench_sum_{tag}"
    path = os.path.join(tmp, f"{module}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(UDL_SOURCE))
    udl = client.upload_python_udl(path, "BenchSum")
    src, dst = f"/cache/bench-udl-{tag}-in", f"/cache/bench-udl-{tag}-out"
    graph_id = str(uuid.uuid4())
    client.add_dfgs(
        [
            {
                "id": graph_id,
                "desc": "bench_python: numpy sum of the input",
                "graph": [
                    {
                        "pathname": src,
                        "user_defined_logic_list": [udl],
                        "shard_dispatcher_list": ["one"],
                        "user_defined_logic_stateful_list": ["stateless"],
                        "user_defined_logic_config_list": [{}],
                        "destinations": [{dst: "put"}],
                    }
                ],
            }
        ]
    )
    stack.callback(lambda: _quietly(client.remove_dfg, graph_id))
    # The same UDL as a function: no destination, its outputs are the call's answer.
    fn = f"/cache/bench-call-{tag}-in"
    call_graph = str(uuid.uuid4())
    client.add_dfgs(
        [
            {
                "id": call_graph,
                "desc": "bench_python: numpy sum of the input, called",
                "graph": [
                    {
                        "pathname": fn,
                        "user_defined_logic_list": [udl],
                        "shard_dispatcher_list": ["one"],
                        "user_defined_logic_stateful_list": ["stateless"],
                        "user_defined_logic_config_list": [{}],
                        "destinations": [{}],
                    }
                ],
            }
        ]
    )
    stack.callback(lambda: _quietly(client.remove_dfg, call_graph))
    watch = client.watch(dst)
    stack.callback(watch.close)

    def wait_output(key: str, want: int) -> tuple:
        while True:
            event = watch.next(timeout_s=EVENT_TIMEOUT_S)
            if event is None:
                raise RuntimeError("the watch on the UDL's destination ended")
            if event.key == key and not event.removed:
                got = bytes(event.value).split()
                if int(got[0]) != want:
                    raise RuntimeError(f"UDL output {got[0]!r} for {key}, expected {want}")
                return event, [int(x) for x in got[1:]]

    # First invocation: imports numpy and the module on the node (not measured).
    t0 = time.perf_counter()
    client.put(f"{src}/cold", np.zeros(8, np.uint8))
    wait_output(f"{dst}/cold", 0)
    log(f"  squall  first UDL invocation (module import, cold): {1e3 * (time.perf_counter() - t0):.0f} ms")

    for size in args.sizes:
        data = payload(size)
        want = expected_sum(data)
        ring = max(KV_KEYS, min(1_000_000, UDL_KEY_BYTES // size))
        run = uuid.uuid4().hex[:6]

        def udl_op(i, send, run=run, ring=ring, want=want, data=data):
            suffix = f"{run}-{i % ring}"
            w0 = time.time_ns()
            t0 = now_ns()
            send(f"{src}/{suffix}", data)
            t1 = now_ns()
            event, (udl_start, udl_done, _in_ts) = wait_output(f"{dst}/{suffix}", want)
            t2 = now_ns()
            w2 = w0 + (t2 - t0)  # wall clock at the event, on the monotonic clock's scale
            return {
                "send_call": t1 - t0,
                "to_udl_start": udl_start - w0,
                "udl_compute": udl_done - udl_start,
                "udl_done_to_output_stamped": event.timestamp_us * 1000 - udl_done,
                "output_stamped_to_client": w2 - event.timestamp_us * 1000,
            }

        rows.append(
            closed_loop(
                "squall", "put, python on it, result", "put /cache -> Python UDL -> emit -> watch",
                size, args.seconds, args.warmup,
                lambda i, f=udl_op: f(i, client.put),
            )
        )
        rows.append(
            closed_loop(
                "squall", "trigger_put, python on it, result",
                "trigger_put /cache (not stored) -> Python UDL -> emit -> watch",
                size, args.seconds, args.warmup,
                lambda i, f=udl_op: f(i, client.trigger_put),
            )
        )

        def call_op(i, want=want, data=data):
            w0 = time.time_ns()
            t0 = now_ns()
            outputs = client.call(f"{fn}/c{i % KV_KEYS}", data)
            t2 = now_ns()
            got = bytes(outputs[0].value).split()
            if int(got[0]) != want:
                raise RuntimeError(f"called UDL answered {got[0]!r}, expected {want}")
            udl_start, udl_done = int(got[1]), int(got[2])
            return {
                "to_udl_start": udl_start - w0,
                "udl_compute": udl_done - udl_start,
                "udl_done_to_client": w0 + (t2 - t0) - udl_done,
            }

        rows.append(
            closed_loop(
                "squall", "call, python on it, result",
                "Client.call /cache (not stored) -> Python UDL -> its outputs",
                size, args.seconds, args.warmup, call_op,
            )
        )


# Rust's checks of unsafe preconditions carry this message; they are compiled in only
# where debug assertions are on (the dev profile), in the crates that call them.
_DEBUG_MARKER = b"unsafe precondition(s) violated"


def _is_debug_build(path: str) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return _DEBUG_MARKER in f.read()
    return False


def _build_kind(squall) -> str:
    """Whether the node binary and the native module are release builds, and which of
    this checkout's builds the binary is."""
    import filecmp

    binary = squall.squall_binary()
    native = squall._native.__file__
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    same = ""
    for profile in ("release", "debug"):
        with contextlib.suppress(OSError):
            if filecmp.cmp(binary, os.path.join(root, "target", profile, "squall"), shallow=False):
                same = f", same as target/{profile}/squall"
                break
    kinds = {what: "DEBUG" if _is_debug_build(path) else "release"
             for what, path in (("node binary", binary), ("native module", native))}
    if "DEBUG" in kinds.values():
        log("WARNING: part of the squall wheel is a DEBUG build (debug assertions compiled in); "
            "rebuild with `python/build_wheel.sh --release` for meaningful numbers")
    return "; ".join(f"{what}: {kind}" for what, kind in kinds.items()) + same


def _quietly(fn, *a):
    with contextlib.suppress(Exception):
        fn(*a)


# ----- Redis ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM to this PID, SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def start_redis(stack: contextlib.ExitStack, redis):
    """A primary and one in-sync replica on free loopback ports, as the Rust harness
    (bench/src/kv.rs) starts them: no persistence."""
    server = ensure_binary("redis-server", ["redis-server", "redis-tools"])
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout.strip()
    log(f"{version}; redis-py {redis.__version__}")
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-python-redis-"))
    ports = []
    for replica_of in (None, "primary"):
        port = _free_port()
        cmd = [
            server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", tmp,
        ]
        if replica_of:
            cmd += ["--replicaof", "127.0.0.1", str(ports[0])]
        # Its own session: a Ctrl-C reaches this script, which stops it by PID.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        stack.callback(_stop_process, proc)
        atexit.register(_stop_process, proc)
        log(f"started redis-server pid {proc.pid} on 127.0.0.1:{port}" + (" (replica)" if replica_of else ""))
        ports.append(port)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port).ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not listen on {port}")
                time.sleep(0.05)
    primary = redis.Redis(host="127.0.0.1", port=ports[0], socket_timeout=None)
    replica = redis.Redis(host="127.0.0.1", port=ports[1], socket_timeout=None)
    stack.callback(primary.close)
    stack.callback(replica.close)
    deadline = time.monotonic() + 20
    while True:  # WAIT 1 means nothing until the replica is in sync
        primary.set("sync-probe", "1")
        if replica.get("sync-probe") is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the redis replica did not sync in 20 s")
        time.sleep(0.1)
    return primary


def bench_redis(args, rows: List[Row], stack: contextlib.ExitStack) -> None:
    redis = ensure_module("redis", "redis")
    r = start_redis(stack, redis)
    for size in args.sizes:
        data = payload(size).tobytes()
        keys = [f"bench-{size}-b{i}" for i in range(KV_KEYS)]

        def set_wait(i, keys=keys, data=data):
            r.set(keys[i % KV_KEYS], data)
            if r.execute_command("WAIT", 1, 0) < 1:
                raise RuntimeError("WAIT 1 0 returned without the replica's ack")

        rows.append(closed_loop("redis", "put volatile", "SET + WAIT 1 0", size,
                                args.seconds, args.warmup, set_wait))
        rows.append(closed_loop("redis", "put volatile no-wait", "SET", size, args.seconds,
                                args.warmup, lambda i, keys=keys, data=data: r.set(keys[i % KV_KEYS], data) and None))
        for k in keys:
            r.set(k, data)

        def get(i, keys=keys):
            v = r.get(keys[i % KV_KEYS])
            assert v is not None and len(v) == size
        rows.append(closed_loop("redis", "get volatile", "GET", size, args.seconds, args.warmup, get))


# ----- Ray --------------------------------------------------------------------------------


def bench_ray(args, rows: List[Row], stack: contextlib.ExitStack) -> None:
    # Throwaway local cluster: no token file, no usage report (peers.md: Ray 2.60 turns
    # token authentication on by default).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = ensure_module("ray", "ray")
    tmp = tempfile.mkdtemp(prefix="bench-ray-")  # short: Ray's socket paths live in it
    stack.callback(shutil.rmtree, tmp, True)
    log(f"ray {ray.__version__}: starting a local cluster (temp dir {tmp})")
    stack.callback(_ray_shutdown, ray)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tmp,
        log_to_driver=False,
        object_store_memory=1 << 30,
    )
    install_signal_handlers()  # ray.init replaced the SIGTERM handler with sys.exit

    @ray.remote
    class BenchSum:
        def sum(self, a):
            return int(a.sum(dtype=np.uint64))

    actor = BenchSum.remote()
    t0 = time.perf_counter()
    assert ray.get(actor.sum.remote(ray.put(np.zeros(8, np.uint8)))) == 0
    log(f"  ray     first actor call (actor start, cold): {1e3 * (time.perf_counter() - t0):.0f} ms")
    for size in args.sizes:
        data = payload(size)
        want = expected_sum(data)

        def op(i, data=data, want=want):
            ref = ray.put(data)
            got = ray.get(actor.sum.remote(ref))
            if got != want:
                raise RuntimeError(f"actor returned {got}, expected {want}")

        rows.append(closed_loop("ray", "put, python on it, result",
                                "ray.put -> resident actor.sum(ref) -> ray.get", size,
                                args.seconds, args.warmup, op))


def _ray_shutdown(ray) -> None:
    """``ray.shutdown()``, keeping our signal handlers in force. Ray 2.60's shutdown
    (about a second here) sets SIGTERM back to its default action underneath Python's
    handler, so a SIGTERM during it would kill this script before it cleaned up: it runs
    on a thread while this one keeps putting the handlers back."""
    import threading

    done = threading.Event()

    def shutdown():
        try:
            ray.shutdown()
        finally:
            done.set()

    threading.Thread(target=shutdown, name="ray.shutdown", daemon=True).start()
    while not done.wait(0.005):
        install_signal_handlers()
    install_signal_handlers()


# ----- report -----------------------------------------------------------------------------

# (squall case, peer system, peer case, note)
RATIOS = [
    ("put volatile", "redis", "put volatile", "/cache put vs SET + WAIT 1 0"),
    ("put persistent", "redis", "put volatile", "/demo put (logged) vs SET + WAIT 1 0"),
    ("get volatile", "redis", "get volatile", "/cache get vs GET"),
    ("get persistent", "redis", "get volatile", "/demo get vs GET"),
    ("put, python on it, result", "ray", "put, python on it, result",
     "put -> UDL -> watch vs ray.put -> actor -> ray.get"),
    ("trigger_put, python on it, result", "ray", "put, python on it, result",
     "trigger_put -> UDL -> watch vs ray.put -> actor -> ray.get"),
    ("call, python on it, result", "ray", "put, python on it, result",
     "Client.call -> UDL -> outputs vs ray.put -> actor -> ray.get"),
]


def ratios(rows: List[Row], sizes: List[int]) -> List[dict]:
    out = []
    by = {(r.system, r.case, r.size): r for r in rows}
    for size in sizes:
        for case, peer, peer_case, note in RATIOS:
            a, b = by.get(("squall", case, size)), by.get((peer, peer_case, size))
            if a is None or b is None:
                continue
            out.append(
                {
                    "bench": "python",
                    "kind": "ratio",
                    "case": f"{case} {format_size(size)}",
                    "vs": f"{peer}: {b.what}",
                    "note": note,
                    "p50": a.p(50) / b.p(50),
                    "p99": a.p(99) / b.p(99),
                    "ops_per_s": a.ops_per_s / b.ops_per_s,
                    "target": 0.1 if peer == "ray" else None,
                }
            )
    return out


def report(args, rows: List[Row]) -> None:
    rs = ratios(rows, args.sizes)
    if args.json:
        for row in rows:
            print(json.dumps(row.json()))
        for r in rs:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        return
    print()
    if SQUALL_BUILD:
        print(f"squall wheel: {SQUALL_BUILD}")
    print(f"{'system':<7} {'case':<40} {'operation':<58} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>8} {'n':>6} {'load':>5}")
    for r in rows:
        print(
            f"{r.system:<7} {r.case + ' ' + format_size(r.size):<40} {r.what:<58} "
            f"{r.p(50) / 1e6:>8.3f} {r.p(99) / 1e6:>8.3f} {r.ops_per_s:>8.0f} {r.count:>6} {r.load1:>5.2f}"
        )
    print("(load: the 1-minute load average when the case ended; this machine has "
          f"{os.cpu_count()} CPUs)")
    phased = [r for r in rows if r.extra]
    if phased:
        print("\nwhere the Squall UDL round trip goes (p50 of each phase, ms; wall clocks of one machine):")
        cols = [
            ("send_call", "send call"),
            ("to_udl_start", "send->UDL start"),
            ("udl_compute", "numpy sum"),
            ("udl_done_to_output_stamped", "UDL done->output stamped"),
            ("output_stamped_to_client", "output stamped->client"),
            ("udl_done_to_client", "UDL done->client (call)"),
        ]
        print(f"  {'case':<40}" + "".join(f"{label:>25}" for _, label in cols))
        for r in phased:
            print(
                f"  {r.case + ' ' + format_size(r.size):<40}"
                + "".join(f"{r.extra.get(k + '_p50_us', float('nan')) / 1e3:>25.3f}" for k, _ in cols)
            )
    if rs:
        print("\nratios squall / peer (latency: < 1 means Squall is faster; ops/s: > 1 means Squall is faster)")
        for r in rs:
            target = f"   (target p50 ≤ {r['target']})" if r["target"] else ""
            print(
                f"  {r['case']:<40} vs {r['vs']:<46} p50 {r['p50']:>6.2f}x  p99 {r['p99']:>6.2f}x  "
                f"ops/s {r['ops_per_s']:>6.2f}x{target}"
            )


# ----- main -------------------------------------------------------------------------------


# Set while a system's processes are being stopped: a signal then waits until they are.
_tearing_down = False
_deferred_signals = 0


def _on_signal(signum, frame) -> None:
    """SIGINT and SIGTERM unwind like Ctrl-C, so that everything started is stopped.
    A signal that comes while a teardown runs is deferred until that teardown is done: a
    KeyboardInterrupt in the middle of it would leave nodes, data directories or Redis
    behind (`timeout` sends its signal twice, and people press Ctrl-C twice). A third
    deferred signal abandons the teardown."""
    global _deferred_signals
    if _tearing_down:
        _deferred_signals += 1
        if _deferred_signals < 3:
            log(f"signal {signum}: stopping what this run started first "
                "(signal twice more to abandon that)")
            return
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_system(bench, system: str, args, rows: List[Row]) -> bool:
    """Starts, measures and stops one system; False if it failed (reported). Raises
    KeyboardInterrupt once everything it started is stopped, if a signal came."""
    global _tearing_down, _deferred_signals
    ok, interrupted = True, False
    try:
        with contextlib.ExitStack() as stack:
            try:
                bench(args, rows, stack)
            except KeyboardInterrupt:
                interrupted = True
            except Exception as e:  # noqa: BLE001 - reported, the other systems still run
                log(f"{system}: not fully measured: {type(e).__name__}: {e}")
                ok = False
            finally:
                _tearing_down = True  # the stack unwinds next
    finally:
        _tearing_down = False
    if interrupted or _deferred_signals:
        raise KeyboardInterrupt
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per case (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each case (default 0.5)")
    ap.add_argument("--sizes", default="1KiB,1MiB", help="value sizes (default 1KiB,1MiB)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="any of squall,redis,ray (default all)")
    ap.add_argument("--json", action="store_true", help="one JSON object per case (and per ratio)")
    args = ap.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        ap.error(f"--systems: unknown {bad}; choose from {','.join(SYSTEMS)}")
    if args.seconds <= 0 or args.warmup < 0:
        ap.error("--seconds must be > 0 and --warmup >= 0")

    install_signal_handlers()
    log(f"python {sys.version.split()[0]} at {sys.executable}; {os.cpu_count()} CPUs; "
        f"load average {_load()}")
    rows: List[Row] = []
    failed = []
    bench = {"squall": bench_squall, "redis": bench_redis, "ray": bench_ray}
    try:
        for system in SYSTEMS:
            if system not in systems:
                continue
            log(f"== {system} (load average {_load()})")
            # One system at a time: started, measured, stopped.
            if not run_system(bench[system], system, args, rows):
                failed.append(system)
    except KeyboardInterrupt:
        if _deferred_signals >= 3:
            log("interrupted: a teardown was abandoned, some processes may still run")
        else:
            log("interrupted: everything started was stopped; partial results follow")
        report(args, rows)
        return 130
    report(args, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
