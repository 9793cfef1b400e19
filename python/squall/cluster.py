"""An embedded local cluster for notebooks, tests and examples.

``with squall.local_cluster(nodes=3) as cluster:`` starts the same node processes a
deployment runs (``squall up``: one ``squall node`` process per node, on loopback, with
free ports), yields a :class:`LocalCluster` whose ``client`` is connected, and stops
every process on the way out, whether the block ended, raised, or was interrupted with
Ctrl-C. The processes run in their own process group, so a teardown reaches the nodes
even if the launcher itself is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, Optional

from .client import AsyncClient, Client
from .errors import SquallError


def squall_binary() -> str:
    """The ``squall`` executable: ``$SQUALL_BIN``, the one shipped in this package, or
    the first on ``PATH``."""
    env = os.environ.get("SQUALL_BIN")
    if env:
        return env
    bundled = os.path.join(os.path.dirname(__file__), "bin", "squall")
    if os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("squall")
    if found:
        return found
    raise SquallError(
        "no squall executable: set SQUALL_BIN, install a wheel that bundles it, or put "
        "`squall` on PATH",
        "connect",
    )


def _free_port_run(count: int) -> int:
    """A port p such that p .. p+count-1 are all free on loopback (checked, not held)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SquallError("no run of free loopback ports found", "connect")


class LocalCluster(Client):
    """A running local cluster, and a :class:`~squall.Client` connected to it (every
    client method works on it directly). Also: ``addrs`` (the nodes' client
    addresses), ``http_addrs`` and ``dashboard_url``, ``data_dir``, ``log(node)``,
    ``async_client()`` and ``stop()``."""

    def __init__(self, proc: subprocess.Popen, addrs: List[str], data_dir: str) -> None:
        super().__init__(addrs)
        self.proc = proc
        self.data_dir = data_dir
        #: Each node's HTTP address (dashboard, REST API, metrics).
        self.http_addrs: List[str] = []

    @property
    def dashboard_url(self) -> str:
        """Node 0's dashboard."""
        return f"http://{self.http_addrs[0]}/" if self.http_addrs else ""

    @property
    def client(self) -> Client:
        """This cluster's client (the cluster object itself)."""
        return self

    @property
    def addr(self) -> str:
        """All node addresses, comma-separated (what ``Client(addr)`` accepts)."""
        return ",".join(self.addrs)

    def async_client(self) -> AsyncClient:
        return AsyncClient(self.addrs)

    def log(self, node: int) -> str:
        """The log of node ``node`` so far."""
        with open(os.path.join(self.data_dir, f"n{node}.log"), errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """Stops every node (SIGTERM to the process group; SIGKILL after 10 s)."""
        if self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not _group_alive(self.proc.pid):
                    return
                time.sleep(0.05)
        except BaseException:
            # Interrupted while waiting (a second Ctrl-C): no more patience.
            _signal_group(self.proc.pid, signal.SIGKILL)
            raise
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@contextlib.contextmanager
def local_cluster(
    nodes: int = 3,
    *,
    data_dir: Optional[str] = None,
    startup_timeout_s: float = 60.0,
    python: Optional[str] = None,
) -> Iterator[LocalCluster]:
    """Starts ``nodes`` node processes on loopback and yields the running cluster.

    ``data_dir`` keeps the nodes' data (default: a temporary directory removed at the
    end). Python UDLs run with ``python`` (default: this interpreter), so they see the
    packages installed beside this one. While the block runs, a node process that dies
    (crashed, killed, or evicted by its group) is started again and rejoins, as
    ``squall up`` does; its log (``log(node)``) says why.
    """
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError("nodes must be a positive int")
    own_dir = data_dir is None
    data = tempfile.mkdtemp(prefix="squall-local-") if own_dir else data_dir
    ports: List[int] = []
    for _ in range(3):  # peer, client and HTTP ports: three disjoint runs
        run = _free_port_run(nodes)
        while any(abs(run - p) < nodes for p in ports):
            run = _free_port_run(nodes)
        ports.append(run)
    peer, client, http = ports
    env = dict(os.environ)
    env["SQUALL_PYTHON"] = python or sys.executable
    cmd = [
        squall_binary(),
        "up",
        "--nodes",
        str(nodes),
        "--data",
        data,
        "--peer-port",
        str(peer),
        "--client-port",
        str(client),
        "--http-port",
        str(http),
    ]
    out = open(os.path.join(data, "up.log"), "w+")
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    cluster: Optional[LocalCluster] = None
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            out.seek(0)
            text = out.read()
            if "is up" in text:
                break
            if proc.poll() is not None:
                raise SquallError(f"the local cluster failed to start:\n{text}", "connect")
            if time.monotonic() > deadline:
                raise SquallError(
                    f"the local cluster did not come up in {startup_timeout_s} s:\n{text}",
                    "connect",
                )
            time.sleep(0.05)
        addrs = [f"127.0.0.1:{client + i}" for i in range(nodes)]
        cluster = LocalCluster(proc, addrs, data)
        cluster.http_addrs = [f"127.0.0.1:{http + i}" for i in range(nodes)]
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.close()
                cluster.stop()
            else:
                LocalCluster.stop(_Stopper(proc))  # type: ignore[arg-type]
        finally:
            # Even when the stop itself was interrupted: the nodes are gone or killed.
            out.close()
            if own_dir:
                shutil.rmtree(data, ignore_errors=True)


class _Stopper:
    """Just enough of a LocalCluster for ``stop`` before the cluster came up."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
