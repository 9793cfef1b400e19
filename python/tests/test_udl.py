"""Python UDLs hosted by real nodes: pipelines, zero copy, Cascade-style classes,
failures, replacement, and uploads from the CLI."""

import json
import subprocess
import textwrap
import time
import uuid

import numpy as np
import pytest

import squall


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def wait_for(client, key, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        obj = client.get(key)
        if obj is not None:
            return obj
        if time.monotonic() > deadline:
            logs = ""
            if hasattr(client, "log"):
                for n in range(len(client.addrs)):
                    warned = [l for l in client.log(n).splitlines() if "WARN" in l or "ERROR" in l]
                    logs += f"\n--- node {n} ---\n" + "\n".join(warned[-20:])
            raise AssertionError(f"{key} never appeared; UDLs: {client.list_udls()}{logs}")
        time.sleep(0.02)


def write_module(tmp_path, name, source):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def dfg(vertices):
    return [{"id": str(uuid.uuid4()), "desc": "python test", "graph": vertices}]


def vertex(pathname, udl, dest, config=None, action="put", dispatcher="one"):
    return {
        "pathname": pathname,
        "user_defined_logic_list": [udl],
        "shard_dispatcher_list": [dispatcher],
        "user_defined_logic_stateful_list": ["stateless"],
        "user_defined_logic_config_list": [config or {}],
        "destinations": [{dest: action}],
    }


def test_two_stage_python_pipeline(cluster, tmp_path):
    name = unique("stages_")
    path = write_module(
        tmp_path,
        name,
        """
        import numpy as np
        import squall

        class Scale(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                factor = self.config["factor"]
                ctx.emit(obj.key_suffix, (obj.blob.astype(np.uint32) * factor).astype(np.uint8))

        class Total(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                ctx.emit(obj.key_suffix, str(int(obj.blob.sum())))
        """,
    )
    scale = cluster.upload_python_udl(path, "Scale")
    total = cluster.upload_python_udl(path, "Total")
    assert scale != total
    listed = {u["uuid"]: u for u in cluster.list_udls()}
    assert listed[scale]["description"] == f"Python UDL {name}.Scale"
    src, mid, out = unique("/cache/pin"), unique("/cache/pmid"), unique("/demo/pout")
    graph = dfg(
        [
            vertex(src, scale, mid, {"factor": 3}, action="trigger_put"),
            vertex(mid, total, out),
        ]
    )
    cluster.add_dfgs(graph)
    for i in range(20):
        cluster.put(f"{src}/k{i}", bytes([i, 1, 2]))
    for i in range(20):
        assert bytes(wait_for(cluster, f"{out}/k{i}").value) == str(3 * (i + 3)).encode()
    cluster.remove_dfg(graph[0]["id"])


def test_udl_sees_the_delivered_bytes_without_a_copy(cluster, tmp_path):
    name = unique("zc_")
    path = write_module(
        tmp_path,
        name,
        """
        import json, squall

        class Probe(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                a = obj.blob
                ctx.emit(obj.key_suffix, json.dumps({
                    "array": a.__array_interface__["data"][0],
                    "value": obj.value.address,
                    "owndata": bool(a.flags.owndata),
                    "writeable": bool(a.flags.writeable),
                    "dtype": str(a.dtype),
                    "len": int(a.size),
                    "key": obj.key, "suffix": obj.key_suffix, "version": obj.version,
                    "worker": ctx.worker_id, "config": ctx.config,
                }))
        """,
    )
    udl = cluster.upload_python_udl(path, "Probe")
    src, out = unique("/cache/zin"), unique("/demo/zout")
    graph = dfg([vertex(src, udl, out, {"probe": True})])
    cluster.add_dfgs(graph)
    version, _ = cluster.put(f"{src}/a", np.arange(4096, dtype=np.uint8))
    seen = json.loads(bytes(wait_for(cluster, f"{out}/a").value))
    # The numpy array is a view of the very buffer the node delivered (no copy), and
    # it cannot be written.
    assert seen["array"] == seen["value"]
    assert seen["owndata"] is False and seen["writeable"] is False
    assert seen["dtype"] == "uint8" and seen["len"] == 4096
    assert seen["key"] == f"{src}/a" and seen["suffix"] == "a"
    assert seen["version"] == version and seen["config"] == {"probe": True}
    cluster.remove_dfg(graph[0]["id"])


def test_cascade_style_udl_runs_unchanged(cluster, tmp_path):
    name = unique("casc_")
    write_module(
        tmp_path,
        name,
        """
        import json
        import cascade_context
        from derecho.cascade.udl import UserDefinedLogic

        class Upper(UserDefinedLogic):
            def __init__(self, conf_str):
                self.conf = json.loads(conf_str)

            def ocdpo_handler(self, **kwargs):
                blob = kwargs["blob"]
                out = bytes(blob).upper() + self.conf["suffix"].encode()
                cascade_context.emit(kwargs["key"], out, message_id=kwargs["message_id"])
        """,
    )
    src, out = unique("/cache/cin"), unique("/demo/cout")
    config = {"python_path": [str(tmp_path)], "module": name, "entry_class": "Upper", "suffix": "!"}
    # Cascade's own UUID for Python UDLs, with Cascade's configuration keys.
    graph = dfg([vertex(src, "6cfe8f64-3a1d-11ed-8e7e-0242ac110006", out, config)])
    cluster.add_dfgs(graph)
    cluster.put(f"{src}/x", b"hello")
    assert bytes(wait_for(cluster, f"{out}/x").value) == b"HELLO!"
    cluster.remove_dfg(graph[0]["id"])


def test_failing_udl_is_counted_and_others_keep_running(cluster, tmp_path):
    name = unique("fail_")
    path = write_module(
        tmp_path,
        name,
        """
        import squall

        class Flaky(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                if bytes(obj.value) == b"bad":
                    raise ValueError("refusing a bad input")
                ctx.emit(obj.key_suffix, b"ok")
        """,
    )
    udl = cluster.upload_python_udl(path, "Flaky")
    src, out = unique("/cache/fin"), unique("/demo/fout")
    graph = dfg([vertex(src, udl, out, dispatcher="all")])
    cluster.add_dfgs(graph)
    cluster.put(f"{src}/1", b"bad")
    cluster.put(f"{src}/2", b"good")
    assert bytes(wait_for(cluster, f"{out}/2").value) == b"ok"
    deadline = time.monotonic() + 20
    while True:
        counts = []
        for addr in cluster.addrs:
            with squall.Client(addr, policy="fixed") as c:
                counts += [u["errors"] for u in c.list_udls() if u["uuid"] == udl]
        if sum(counts) >= 1:
            break
        assert time.monotonic() < deadline, f"errors never counted: {counts}"
        time.sleep(0.1)
    assert cluster.get(f"{out}/1") is None
    cluster.put(f"{src}/3", b"fine")
    assert bytes(wait_for(cluster, f"{out}/3").value) == b"ok"
    cluster.remove_dfg(graph[0]["id"])


def test_replacing_a_python_udl_switches_outputs(cluster, tmp_path):
    name = unique("ver_")
    src, out = unique("/cache/vin"), unique("/demo/vout")
    source = """
        import squall

        class Tag(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                ctx.emit(obj.key_suffix, b"%s")
        """
    path = write_module(tmp_path, name, source % "v1")
    udl = cluster.upload_python_udl(path, "Tag")
    graph = dfg([vertex(src, udl, out)])
    cluster.add_dfgs(graph)
    cluster.put(f"{src}/a", b"x")
    assert bytes(wait_for(cluster, f"{out}/a").value) == b"v1"
    path.write_text(textwrap.dedent(source % "v2"))
    assert cluster.upload_python_udl(path, "Tag") == udl
    deadline = time.monotonic() + 30
    i = 0
    while True:
        i += 1
        cluster.put(f"{src}/b{i}", b"x")
        if bytes(wait_for(cluster, f"{out}/b{i}").value) == b"v2":
            break
        assert time.monotonic() < deadline, "the new version never took over"
    cluster.remove_dfg(graph[0]["id"])


def test_cli_uploads_a_python_udl(cluster, tmp_path):
    name = unique("cli_")
    path = write_module(
        tmp_path,
        name,
        """
        class Echo:
            def __init__(self, config):
                pass

            def handle(self, obj, ctx):
                ctx.emit(obj.key_suffix, obj.value)
        """,
    )
    out = subprocess.run(
        [squall.squall_binary(), "--cluster", cluster.addrs[0], "udl", "upload", str(path), "--entry", "Echo"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    udl = out.split("Python UDL ")[1].split()[0]
    assert udl == squall._native.python_udl_uuid(name, "Echo")
    assert any(u["uuid"] == udl for u in cluster.list_udls())
    src, dst = unique("/cache/ein"), unique("/demo/eout")
    graph = dfg([vertex(src, udl, dst)])
    cluster.add_dfgs(graph)
    cluster.put(f"{src}/k", b"echo")
    assert bytes(wait_for(cluster, f"{dst}/k").value) == b"echo"
    cluster.remove_dfg(graph[0]["id"])
    bad = subprocess.run(
        [squall.squall_binary(), "--cluster", cluster.addrs[0], "udl", "upload", str(path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--entry" in bad.stderr


def test_bad_python_uploads_are_refused_before_anything_changes(cluster, tmp_path):
    before = cluster.list_udls()
    broken = write_module(tmp_path, unique("broken_"), "def oops(:\n")
    with pytest.raises(SyntaxError):
        cluster.upload_python_udl(broken, "X")
    good = write_module(tmp_path, unique("good_"), "class X:\n    pass\n")
    with pytest.raises(ValueError):
        cluster.upload_python_udl(good, "not a class")
    with pytest.raises(ValueError):
        cluster.upload_python_udl(tmp_path / "missing.txt", "X")
    with pytest.raises(squall.UdlError):
        cluster.add_dfgs("[{]")
    assert cluster.list_udls() == before


def test_call_returns_what_a_python_udl_emits(cluster, tmp_path):
    """``Client.call``: the UDL's outputs come back to the caller (a vertex with no
    destination is a function next to the data); a raising UDL fails the call with its
    message; a key no vertex covers is refused; asyncio has it too."""
    name = unique("call_")
    path = write_module(
        tmp_path,
        name,
        """
        import numpy as np
        import squall

        class Stats(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                if obj.blob.size == 0:
                    raise ValueError("nothing to sum")
                ctx.emit("sum", str(int(obj.blob.sum(dtype=np.uint64))))
                ctx.emit("doubled", (obj.blob.astype(np.uint16) * 2).astype(np.uint8))
        """,
    )
    udl = cluster.upload_python_udl(path, "Stats")
    src = unique("/cache/callin")
    graph = dfg([dict(vertex(src, udl, "/unused"), destinations=[{}])])
    cluster.add_dfgs(graph)
    data = np.arange(1, 101, dtype=np.uint8)
    outputs = cluster.call(f"{src}/a", data)
    assert [o.key for o in outputs] == ["sum", "doubled"]
    assert isinstance(outputs[0], squall.Output)
    assert bytes(outputs[0].value) == b"5050"
    doubled = np.frombuffer(outputs[1].value, dtype=np.uint8)
    assert not doubled.flags.writeable
    assert np.array_equal(doubled, (data.astype(np.uint16) * 2).astype(np.uint8))
    # Nothing stored: not the input, and no destination.
    assert cluster.get(f"{src}/a") is None

    with pytest.raises(squall.UdlFailedError, match="nothing to sum"):
        cluster.call(f"{src}/empty", b"")
    with pytest.raises(squall.NotFoundError):
        cluster.call(unique("/cache/nobody"), b"x")
    with pytest.raises(squall.PoolError):
        cluster.call(unique("/nopool/"), b"x")
    with pytest.raises(TypeError):
        cluster.call(f"{src}/a", 42)

    async def from_asyncio():
        async with squall.AsyncClient(cluster.addrs) as client:
            return await client.call(f"{src}/b", b"\x01\x02")

    import asyncio

    outputs = asyncio.run(from_asyncio())
    assert bytes(outputs[0].value) == b"3"
    cluster.remove_dfg(graph[0]["id"])


def test_a_worker_thread_keeps_its_python_thread_state_across_invocations(cluster, tmp_path):
    """Each node thread that runs Python UDLs keeps one Python thread state for its whole
    life, so per-thread state survives from one invocation to the next, as it would on a
    Python thread: ``threading.local`` here, and the thread-local state extensions keep
    (torch's second ``from_dlpack`` on a worker blocked for ever when each invocation ran
    under a fresh thread state)."""
    name = unique("tls_")
    path = write_module(
        tmp_path,
        name,
        """
        import os
        import threading
        import squall

        PER_THREAD = threading.local()

        class Count(squall.UserDefinedLogic):
            def handle(self, obj, ctx):
                PER_THREAD.calls = getattr(PER_THREAD, "calls", 0) + 1
                ctx.emit("seen", f"{os.getpid()}:{threading.get_ident()}:{PER_THREAD.calls}")
        """,
    )
    udl = cluster.upload_python_udl(path, "Count")
    src = unique("/cache/tlsin")
    # Single-threaded: one worker thread per vertex and node runs every invocation there.
    graph = dfg([dict(vertex(src, udl, "/unused"), destinations=[{}],
                      user_defined_logic_stateful_list=["singlethreaded"])])
    cluster.add_dfgs(graph)
    calls_by_thread = {}
    for i in range(12):
        (out,) = cluster.call(f"{src}/k{i}", b"x")
        pid, thread, calls = bytes(out.value).decode().split(":")
        calls_by_thread.setdefault((pid, thread), []).append(int(calls))
    cluster.remove_dfg(graph[0]["id"])
    assert any(len(seen) > 1 for seen in calls_by_thread.values()), calls_by_thread
    for seen in calls_by_thread.values():
        # Counted on, call after call: the thread's threading.local was never reset.
        assert seen == list(range(seen[0], seen[0] + len(seen))), calls_by_thread
