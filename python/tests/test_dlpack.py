"""DLPack: the input of a Python UDL as a zero-copy tensor (``obj.dlpack``), the
buffer's export rules (read-only, lifetime of lent memory, devices), the image
classification example end to end, and, on a GPU machine, CUDA tensors over the node's
cached copy."""

import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import squall
from squall import _native

from test_udl import dfg, unique, vertex, wait_for, write_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSIFY_DIR = os.path.join(ROOT, "udl", "examples", "classify")


def load_classify():
    spec = importlib.util.spec_from_file_location("classify_example", os.path.join(CLASSIFY_DIR, "classify.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capsule_name(capsule):
    # "<capsule object "dltensor" at 0x...>"
    return repr(capsule).split('"')[1]


def torch_cuda_or_skip():
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed: the CUDA DLPack path needs torch and a GPU")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device: the CUDA DLPack path needs a GPU")
    return torch


# ----- the buffer itself (no cluster) ------------------------------------------------------


def test_lent_host_view_exports_zero_copy_read_only_and_expires():
    owner = np.arange(256, dtype=np.uint8)
    buf, lease = _native._dlpack_view(owner.ctypes.data, owner.nbytes, 1, owner=owner)
    assert buf.__dlpack_device__() == (1, 0) and buf.device == "cpu"
    assert buf.lent and buf.valid and len(buf) == buf.nbytes == 256

    arr = np.from_dlpack(buf)
    # The very memory (no copy), 1-D uint8, and read-only: numpy asked for DLPack >= 1.0
    # and the capsule carries the read-only flag.
    assert arr.ctypes.data == buf.address == owner.ctypes.data
    assert arr.dtype == np.uint8 and arr.shape == (256,)
    assert not arr.flags.writeable and not arr.flags.owndata
    assert lease.exports_alive == 1

    legacy = buf.__dlpack__()
    versioned = buf.__dlpack__(max_version=(1, 0))
    assert capsule_name(legacy) == "dltensor"
    assert capsule_name(versioned) == "dltensor_versioned"
    assert lease.exports_alive == 3
    # Capsules nobody consumed free their export (the capsule destructor runs the
    # deleter); a consumer's array frees its export when it dies.
    del legacy, versioned, arr
    gc.collect()
    assert lease.exports_alive == 0

    # The call that lent the memory returned: no more exports, with the reason.
    lease.close()
    assert not buf.valid
    with pytest.raises(BufferError, match="lent for one UDL call"):
        np.from_dlpack(buf)
    assert lease.exports_alive == 0


def test_buffer_export_options():
    owner = np.arange(64, dtype=np.uint8)
    buf, lease = _native._dlpack_view(owner.ctypes.data, owner.nbytes, 1, owner=owner)
    with pytest.raises(BufferError, match="device"):
        buf.__dlpack__(dl_device=(2, 0))
    np.testing.assert_array_equal(np.from_dlpack(buf, device="cpu"), owner)
    # copy=True: a writable copy the export owns.
    copied = np.from_dlpack(buf, copy=True)
    assert copied.ctypes.data != owner.ctypes.data
    np.testing.assert_array_equal(copied, owner)
    assert lease.exports_alive == 0
    # Old consumers call __dlpack__(stream) without max_version: the legacy capsule.
    class Legacy:
        def __dlpack__(self, stream=None, **ignored):
            return buf.__dlpack__(stream)

        def __dlpack_device__(self):
            return buf.__dlpack_device__()

    legacy = np.from_dlpack(Legacy())
    assert legacy.ctypes.data == owner.ctypes.data
    del legacy
    # Pinned host memory (kDLCUDAHost) is exported as kDLCPU, which torch and numpy take.
    pinned, _ = _native._dlpack_view(owner.ctypes.data, owner.nbytes, 3, owner=owner)
    assert pinned.__dlpack_device__() == (1, 0) and pinned.memory_type == 3
    assert np.from_dlpack(pinned).ctypes.data == owner.ctypes.data
    # An empty buffer is a valid (0,) array.
    empty, _ = _native._dlpack_view(owner.ctypes.data, 0, 1, owner=owner)
    assert np.from_dlpack(empty).shape == (0,)
    # A CUDA view says so, and a CPU consumer refuses it (after it is made, the export
    # is freed: nothing leaks).
    gpu, gpu_lease = _native._dlpack_view(0x1000, 16, 2, 1, 7)
    assert gpu.__dlpack_device__() == (2, 1) and gpu.device == "cuda:1" and gpu.stream == 7
    with pytest.raises(BufferError, match="GPU memory"):
        gpu.__dlpack__(copy=True)
    with pytest.raises(Exception):
        np.from_dlpack(gpu)
    gc.collect()
    assert gpu_lease.exports_alive == 0
    with pytest.raises(ValueError):
        _native._dlpack_view(0x1000, 16, 9)


# ----- Python UDLs on a cluster ------------------------------------------------------------


def test_udl_gets_a_zero_copy_dlpack_buffer(cluster, tmp_path):
    name = unique("dl_")
    path = write_module(
        tmp_path,
        name,
        """
        import json
        import numpy as np
        import squall

        class Probe(squall.UserDefinedLogic):
            kept = None

            def handle(self, obj, ctx):
                arr = np.from_dlpack(obj.dlpack)
                report = {
                    "array": arr.ctypes.data,
                    "dlpack": obj.dlpack.address,
                    "value": obj.value.address,
                    "blob": obj.blob.ctypes.data,
                    "writeable": bool(arr.flags.writeable),
                    "dtype": str(arr.dtype), "shape": list(arr.shape),
                    "device": obj.device, "dlpack_device": list(obj.dlpack.__dlpack_device__()),
                    "lent": obj.dlpack.lent, "valid": obj.dlpack.valid,
                    "cached": obj.dlpack.cached,
                    "sum": int(arr.sum(dtype=np.uint64)),
                    "isinstance": isinstance(obj.dlpack, squall.DLPackBuffer),
                }
                # Host memory stays valid after the call: the buffer kept from the last
                # invocation still exports, over the same bytes.
                if Probe.kept is not None:
                    before = np.from_dlpack(Probe.kept)
                    report["kept_sum"] = int(before.sum(dtype=np.uint64))
                    report["kept_address"] = before.ctypes.data
                Probe.kept = obj.dlpack
                ctx.emit(obj.key_suffix, json.dumps(report))
        """,
    )
    udl = cluster.upload_python_udl(path, "Probe")
    src, out = unique("/cache/dlin"), unique("/demo/dlout")
    graph = dfg([vertex(src, udl, out)])
    cluster.add_dfgs(graph)
    first = np.arange(4096, dtype=np.uint8)
    cluster.put(f"{src}/a", first)
    seen = json.loads(bytes(wait_for(cluster, f"{out}/a").value))
    # numpy.from_dlpack over obj.dlpack is the node's buffer itself, as obj.blob is.
    assert seen["array"] == seen["dlpack"] == seen["value"] == seen["blob"]
    assert seen["writeable"] is False
    assert seen["dtype"] == "uint8" and seen["shape"] == [4096]
    assert seen["device"] == "cpu" and seen["dlpack_device"] == [1, 0]
    assert seen["lent"] is False and seen["valid"] is True and seen["isinstance"] is True
    assert seen["cached"] is False  # /cache has no gpu_cache: the host bytes alone
    assert seen["sum"] == int(first.sum(dtype=np.uint64))

    second = np.full(100, 3, dtype=np.uint8)
    cluster.put(f"{src}/b", second)
    seen2 = json.loads(bytes(wait_for(cluster, f"{out}/b").value))
    assert seen2["sum"] == 300
    # The same worker process may or may not have run the first call (dispatcher
    # "one" picks a replica): when it did, the kept buffer still views the first value.
    if "kept_sum" in seen2:
        assert seen2["kept_sum"] in (int(first.sum(dtype=np.uint64)), 300)
    cluster.remove_dfg(graph[0]["id"])


def test_cascade_udl_reaches_the_dlpack_buffer_with_cascade_kwargs_unchanged(cluster, tmp_path):
    name = unique("cdl_")
    write_module(
        tmp_path,
        name,
        """
        import json
        import numpy as np
        import cascade_context
        from derecho.cascade.udl import UserDefinedLogic

        class Probe(UserDefinedLogic):
            # An explicit signature: any keyword argument Squall added would break it.
            def ocdpo_handler(self, sender, pathname, key, version, timestamp_us,
                              previous_version, previous_version_by_key, blob, worker_id,
                              message_id):
                buf = cascade_context.dlpack()
                arr = np.from_dlpack(buf)
                cascade_context.emit(key, json.dumps({
                    "array": arr.ctypes.data, "blob": blob.ctypes.data,
                    "device": cascade_context.device(), "len": int(arr.size),
                }))
        """,
    )
    src, out = unique("/cache/cdin"), unique("/demo/cdout")
    config = {"python_path": [str(tmp_path)], "module": name, "entry_class": "Probe"}
    graph = dfg([vertex(src, "6cfe8f64-3a1d-11ed-8e7e-0242ac110006", out, config)])
    cluster.add_dfgs(graph)
    cluster.put(f"{src}/x", b"hello dlpack")
    seen = json.loads(bytes(wait_for(cluster, f"{out}/x").value))
    assert seen["array"] == seen["blob"] and seen["device"] == "cpu" and seen["len"] == 12
    cluster.remove_dfg(graph[0]["id"])
    with pytest.raises(RuntimeError, match="outside a UDL invocation"):
        import cascade_context

        cascade_context.dlpack()


# ----- the classify example ----------------------------------------------------------------


def test_classify_example_runs_end_to_end_on_the_numpy_path(cluster):
    classify = load_classify()
    weights = classify.make_weights(7, 10)
    images = classify.make_images(6, seed=3)
    expected = [classify.classify_numpy(weights, img) for img in images]
    assert len({c for c, _ in expected}) > 1, "the test images should not all be one class"

    udl = cluster.upload_python_udl(os.path.join(CLASSIFY_DIR, "classify.py"), "Classify")
    with open(os.path.join(CLASSIFY_DIR, "dfgs.json")) as f:
        shipped = json.load(f)
    # dfgs.json names the UDL by the UUID an upload of classify.py:Classify gets.
    assert shipped[0]["graph"][0]["user_defined_logic_list"] == [udl]

    src, out = unique("/cache/clsin"), unique("/demo/clsout")
    graph = dfg([vertex(src, udl, out, {"seed": 7, "classes": 10, "backend": "numpy"})])
    cluster.add_dfgs(graph)
    for i, img in enumerate(images):
        cluster.put(f"{src}/img{i}", img)
    for i, (want_class, want_score) in enumerate(expected):
        got = json.loads(bytes(wait_for(cluster, f"{out}/img{i}").value))
        assert got["backend"] == "numpy" and got["device"] == "cpu" and got["input_device"] == "cpu"
        assert got["class"] == want_class, (i, got, expected[i])
        assert abs(got["score"] - want_score) < 1e-6
        assert got["done_ns"] >= got["start_ns"]
    # A wrong-sized input fails its invocation (counted), not the node.
    cluster.put(f"{src}/bad", b"not an image")
    cluster.put(f"{src}/img-after", images[0])
    got = json.loads(bytes(wait_for(cluster, f"{out}/img-after").value))
    assert got["class"] == expected[0][0]
    assert cluster.get(f"{out}/bad") is None
    cluster.remove_dfg(graph[0]["id"])


def test_classify_example_script_on_its_own_cluster():
    env = dict(os.environ)
    run = subprocess.run(
        [sys.executable, os.path.join(CLASSIFY_DIR, "run_classify.py"), "--nodes", "1", "--images", "4",
         "--backend", "numpy"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4/4 as expected" in run.stdout, run.stdout


def test_numpy_and_torch_implementations_agree():
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed: only the numpy implementation can run here")
    classify = load_classify()
    weights = classify.make_weights(7, 10)
    images = classify.make_images(16, seed=5)
    model = classify.TorchTinyNet(weights).eval()
    with torch.inference_mode():
        scores = model(torch.from_numpy(images)).numpy()
    for img, s in zip(images, scores):
        np.testing.assert_allclose(s, classify.forward_numpy(weights, img), rtol=1e-4, atol=1e-4)


# ----- GPU (torch + CUDA) ------------------------------------------------------------------


def test_torch_imports_a_cuda_view_without_a_copy():
    torch = torch_cuda_or_skip()
    owner = torch.arange(0, 3072, device="cuda:0").to(torch.uint8)
    buf, lease = _native._dlpack_view(owner.data_ptr(), owner.numel(), 2, owner.device.index, owner=owner)
    tensor = torch.from_dlpack(buf)
    assert tensor.device.type == "cuda" and tensor.device.index == owner.device.index
    assert tensor.data_ptr() == buf.address == owner.data_ptr()
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3072,)
    assert torch.equal(tensor, owner)
    assert lease.exports_alive == 1
    del tensor
    gc.collect()
    assert lease.exports_alive == 0
    lease.close()
    with pytest.raises(BufferError):
        torch.from_dlpack(buf)


def _gpu_cache_option_or_skip(cluster, path):
    try:
        cluster.create_pool(path, "volatile", gpu_cache={"device": 0, "capacity": "256MiB"})
    except squall.SquallError as e:
        pytest.skip(f"the node refused a gpu_cache pool ({e}): GPU-cached pools are not wired in this build")
    pool = cluster.find_pool(f"{path}/x")
    if pool.gpu_cache is None:
        pytest.skip("the node created the pool without its gpu_cache option (not wired in this build)")
    return pool


GPU_PROBE = """
import json
import numpy as np
import squall

class GpuProbe(squall.UserDefinedLogic):
    def handle(self, obj, ctx):
        report = {"device": obj.device, "lent": obj.dlpack.lent, "cached": obj.dlpack.cached,
                  "address": obj.dlpack.address,
                  "value": obj.value.address, "stream": obj.dlpack.stream}
        try:
            import torch
        except ImportError:
            torch = None
        if obj.device.startswith("cuda"):
            if torch is not None:
                t = torch.from_dlpack(obj.dlpack)
                report.update(torch_device=t.device.type, data_ptr=t.data_ptr(),
                              sum=int(t.sum(dtype=torch.int64)))
                del t
        else:
            a = np.from_dlpack(obj.dlpack)
            report.update(data_ptr=a.ctypes.data, sum=int(a.sum(dtype=np.uint64)))
        ctx.emit(obj.key_suffix, json.dumps(report))
"""


def test_gpu_cached_pool_gives_the_udl_its_cached_copy(cluster, tmp_path):
    """On a GPU machine the UDL gets a CUDA view of the cached copy and
    ``torch.from_dlpack`` wraps it in place; without a GPU the cache is the host buffer
    itself and ``numpy.from_dlpack`` wraps that."""
    pool = unique("/gpool")
    _gpu_cache_option_or_skip(cluster, pool)
    name = unique("gprobe_")
    path = write_module(tmp_path, name, GPU_PROBE)
    udl = cluster.upload_python_udl(path, "GpuProbe")
    out = unique("/demo/gpout")
    graph = dfg([vertex(f"{pool}/in", udl, out)])
    cluster.add_dfgs(graph)
    data = np.arange(3072, dtype=np.uint32).astype(np.uint8)
    cluster.put(f"{pool}/in/a", data)
    seen = json.loads(bytes(wait_for(cluster, f"{out}/a").value))
    cluster.remove_dfg(graph[0]["id"])
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        torch, gpu = None, False
    if seen["device"].startswith("cuda"):
        if "torch_device" not in seen:
            pytest.skip(f"the node passed a CUDA view ({seen}) but torch is not installed to import it")
        assert seen["torch_device"] == "cuda" and seen["lent"], seen
    else:
        # No GPU: the cache is the host tier, whose entry is the stored bytes themselves,
        # so the node's view is the host buffer (not lent: valid after the call too).
        assert seen["device"] == "cpu" and seen["address"] == seen["value"] and not seen["lent"], seen
        assert not gpu, f"torch sees a GPU but the UDL got a host view of a GPU-cached pool: {seen}"
    assert seen["cached"], f"the UDL did not get the cache's view: {seen}"
    assert seen["sum"] == int(data.sum(dtype=np.uint64))
    assert seen["data_ptr"] == seen["address"], seen  # no copy on the way in


def test_gpu_cache_pool_option_is_checked_before_it_is_sent():
    from squall.client import _gpu_cache

    assert _gpu_cache(None) is None
    assert _gpu_cache({"device": 1, "capacity": "512MiB"}) == (1, 512 << 20)
    assert _gpu_cache({"capacity": 4096}) == (0, 4096)
    assert _gpu_cache({"device": 0, "capacity": "8GB"}) == (0, 8 * 1000**3)
    for bad in ({"device": 0}, {"device": -1, "capacity": "1GiB"}, {"capacity": "1 parsec"},
                {"capacity": "1GiB", "policy": "lru"}):
        with pytest.raises(ValueError):
            _gpu_cache(bad)
    with pytest.raises(TypeError):
        _gpu_cache({"capacity": 1.5})


GPU_PIPELINE = """
import json
import os
import torch
import squall

BUILDS = [0]

class Remap(squall.UserDefinedLogic):
    \"\"\"A "model" kept on the GPU (a byte lookup table, built once per instance), applied to
    the input's cached copy in place, its output emitted from GPU memory.\"\"\"

    def __init__(self, config):
        BUILDS[0] += 1
        self.table = ((torch.arange(256, dtype=torch.int32) * 3 + 1) % 256).to(torch.uint8).to("cuda:0")
        self.calls = 0

    def handle(self, obj, ctx):
        self.calls += 1
        pixels = torch.from_dlpack(obj.dlpack)  # the node's cached copy, no copy
        out = self.table[pixels.long()]  # on the GPU
        report = {"pid": os.getpid(), "device": obj.device, "data_ptr": pixels.data_ptr(),
                  "cache_address": obj.dlpack.address, "lent": obj.dlpack.lent,
                  "builds": BUILDS[0], "model": id(self.table), "calls": self.calls,
                  "out_device": str(out.device)}
        del pixels
        ctx.emit(obj.key_suffix, out)  # from GPU memory
        ctx.emit(obj.key_suffix + ".report", json.dumps(report))
"""


def _gpu_caches(cluster):
    """Per node: the `gpu` section's caches of `/api/v1/node`, by pool."""
    import urllib.request

    caches = []
    for addr in cluster.http_addrs:
        with urllib.request.urlopen(f"http://{addr}/api/v1/node", timeout=10) as r:
            caches.append({c["pool"]: c for c in json.loads(r.read())["gpu"]["caches"]})
    return caches


def test_gpu_pipeline_keeps_inputs_models_and_outputs_on_the_device(cluster, tmp_path):
    """On a GPU: a put into a GPU-cached pool costs one host→device transfer per replica;
    the UDL's tensor is that cached copy (same device address); its model is built once
    and stays warm across invocations; its output, emitted from GPU memory into another
    GPU-cached pool, reaches that pool's cache on the producing node device to device
    (every other copy, one upload per replica), and reads back right from the host."""
    torch = torch_cuda_or_skip()
    src, dst = unique("/gin"), unique("/gout")
    _gpu_cache_option_or_skip(cluster, src)
    _gpu_cache_option_or_skip(cluster, dst)
    cluster.put(f"{dst}/warmup", b"opens every replica's cache of the destination")
    name = unique("remap_")
    udl = cluster.upload_python_udl(write_module(tmp_path, name, GPU_PIPELINE), "Remap")
    graph = dfg([vertex(f"{src}/in", udl, f"{dst}/out")])
    cluster.add_dfgs(graph)
    inputs = {f"k{i}": np.random.default_rng(i).integers(0, 256, 4096, dtype=np.uint8) for i in range(8)}
    for key, data in inputs.items():
        cluster.put(f"{src}/in/{key}", data)
    reports = {key: json.loads(bytes(wait_for(cluster, f"{dst}/out/{key}.report").value)) for key in inputs}
    outputs = {key: bytes(wait_for(cluster, f"{dst}/out/{key}").value) for key in inputs}
    cluster.remove_dfg(graph[0]["id"])

    table = ((np.arange(256, dtype=np.int32) * 3 + 1) % 256).astype(np.uint8)
    for key, data in inputs.items():
        r = reports[key]
        assert r["device"] == "cuda:0" and r["out_device"] == "cuda:0" and r["lent"], r
        assert r["data_ptr"] == r["cache_address"], f"the UDL's tensor is not the cached copy: {r}"
        assert outputs[key] == table[data].tobytes(), f"{key}: the output read back wrong"
    by_pid = {}
    for r in reports.values():
        by_pid.setdefault(r["pid"], []).append(r)
    for pid, seen in by_pid.items():
        assert {r["builds"] for r in seen} == {1} and len({r["model"] for r in seen}) == 1, seen
        # One instance served them all (stateless invocations may overlap, so its call
        # count only grows).
        assert max(r["calls"] for r in seen) >= len(seen), seen
    assert max(len(s) for s in by_pid.values()) >= 2, f"no node ran two invocations: {by_pid}"

    # Transfers, once everything is applied everywhere: each input object cost every
    # replica one upload; each output object one transfer per replica, device to device on
    # the node that produced it.
    deadline = time.monotonic() + 20
    while True:
        caches = _gpu_caches(cluster)
        src_up = [c[src]["host_to_device_transfers"] for c in caches]
        dst_any = [c[dst]["host_to_device_transfers"] + c[dst]["device_to_device_transfers"] for c in caches]
        dst_d2d = [c[dst]["device_to_device_transfers"] for c in caches]
        objects_out = 1 + 2 * len(inputs)  # warm-up, tensors, reports
        if src_up == [len(inputs)] * len(caches) and dst_any == [objects_out] * len(caches):
            break
        assert time.monotonic() < deadline, (src_up, dst_any, dst_d2d, caches)
        time.sleep(0.1)
    assert sum(dst_d2d) == len(inputs), f"outputs went through host memory: {dst_d2d}"
    producers = {r["pid"] for r in reports.values()}
    assert sum(1 for n in dst_d2d if n > 0) == len(producers), (dst_d2d, producers)
    # The evidence, for a run with -s on a GPU machine.
    for key, r in sorted(reports.items()):
        print(f"{key}: node pid {r['pid']}: tensor data_ptr {r['data_ptr']:#x}, cache address "
              f"{r['cache_address']:#x}, model id {r['model']:#x} built {r['builds']}x, call {r['calls']}, "
              f"output on {r['out_device']}")
    print(f"per node: {src} host->device transfers {src_up} ({len(inputs)} objects); "
          f"{dst} host->device + device->device {dst_any} ({objects_out} objects), "
          f"device->device {dst_d2d} ({len(inputs)} outputs from GPU memory)")
