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
