"""local_cluster starts real node processes and always takes them down: at the end of
the block, on an exception, and on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

import squall


def alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pgid, timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while alive(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} still alive"
        time.sleep(0.05)


def test_exception_in_block_stops_every_node(cluster):
    # Beside another cluster (the session's): every port of each is its own.
    with pytest.raises(RuntimeError):
        with squall.local_cluster(nodes=2) as c:
            pgid = c.proc.pid
            assert len(c.members()[1]) == 2
            assert not set(c.http_addrs) & set(cluster.http_addrs)
            with urllib.request.urlopen(c.dashboard_url + "api/v1/members", timeout=10) as r:
                assert len(json.load(r)["members"]) == 2
            raise RuntimeError("boom")
    wait_gone(pgid)


def test_ctrl_c_stops_every_node(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time, squall
            with squall.local_cluster(nodes=2) as c:
                print(c.proc.pid, c.addrs[0], flush=True)
                time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    pgid, addr = int(line[0]), line[1]
    assert alive(pgid)
    assert len(squall.Client(addr).members()[1]) == 2
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert "KeyboardInterrupt" in proc.stderr.read()
    wait_gone(pgid)


def test_a_second_ctrl_c_during_teardown_still_cleans_up(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import time, squall
            with squall.local_cluster(nodes=2) as c:
                print(c.proc.pid, c.data_dir, flush=True)
                time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    pgid, data_dir = int(line[0]), line[1]
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    wait_gone(pgid)
    assert not os.path.exists(data_dir)


def test_a_stopped_cluster_is_a_clear_error():
    with squall.local_cluster(nodes=1) as c:
        client = squall.Client(c.addrs)
        client.put("/demo/k", b"v")
    started = time.monotonic()
    with pytest.raises(squall.UnavailableError):
        client.get("/demo/k")
    assert time.monotonic() - started < 60
    with pytest.raises(squall.ConnectError):
        squall.Client(c.addrs)


def test_a_disk_under_its_reserve_refuses_writes_with_storage_full(tmp_path, monkeypatch):
    """Nodes whose data disk is under ``limits.disk_reserve_bytes`` make the cluster refuse
    what they would log with ``StorageFullError`` (a ``SquallError``) naming the setting;
    what was written reads back and volatile pools go on. The three nodes share one small
    tmpfs here (mounting needs root)."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(data)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv("SQUALL__LIMITS__DISK_RESERVE_BYTES", str(8 << 20))
        with squall.local_cluster(nodes=3, data_dir=str(data)) as cluster:
            with squall.Client(cluster.addrs) as c:
                value = bytes(range(256)) * 256  # 64 KiB
                written = 0
                with pytest.raises(squall.StorageFullError) as refused:
                    for i in range(600):
                        c.put(f"/demo/low/{i}", value)
                        written += 1
                assert isinstance(refused.value, squall.SquallError)
                assert "limits.disk_reserve_bytes" in str(refused.value), str(refused.value)
                assert 20 < written < 600, written
                assert bytes(c.get(f"/demo/low/{written - 1}").value) == value
                c.put("/cache/low", b"volatile")
                assert bytes(c.get("/cache/low").value) == b"volatile"
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
