"""Clients of a Squall cluster: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak Squall's binary protocol through the Rust client, which keeps one connection
per node, sends each request straight to a replica of its key's shard, and retries on
another member after a view change (a retried put is applied once). Blocking calls
release the GIL while they wait, so threads run in parallel with them.

Values in may be ``bytes``, ``bytearray``, ``memoryview``, a C-contiguous numpy array
of any dtype (none of these is copied on the Python side), or ``str`` (sent as UTF-8).
Values out are :class:`Object` s whose ``value`` is a read-only buffer over the bytes
the client received: ``memoryview(obj.value)`` and ``numpy.frombuffer(obj.value, ...)``
share that memory.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import zipfile
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple, Union

from . import _native
from ._native import Member, Object, Output, Pool, WatchEvent
from .errors import UnavailableError


def _now_us() -> int:
    return time.time_ns() // 1000


#: What a put accepts: any contiguous buffer, or ``str`` (UTF-8).
Value = Union[bytes, bytearray, memoryview, str, Any]
#: ``(version, timestamp_us)`` of a write.
Written = Tuple[int, int]

DEFAULT_ADDR = "127.0.0.1:7200"


def _addrs(addr: Union[None, str, Sequence[str]]) -> list:
    if addr is None:
        addr = os.environ.get("SQUALL_CLUSTER", DEFAULT_ADDR)
    if isinstance(addr, str):
        return [a.strip() for a in addr.split(",") if a.strip()]
    addrs = list(addr)
    if not all(isinstance(a, str) for a in addrs):
        raise TypeError("addr must be 'host:port', a comma-separated list, or a list of them")
    return addrs


def _token(token: Optional[str]) -> Optional[str]:
    return token if token is not None else os.environ.get("SQUALL_TOKEN")


def _dfgs_text(dfgs: Union[str, bytes, list, dict]) -> str:
    if isinstance(dfgs, (list, dict)):
        return json.dumps(dfgs)
    if isinstance(dfgs, bytes):
        return dfgs.decode()
    if isinstance(dfgs, str):
        return dfgs
    raise TypeError("dfgs must be dfgs.json text, or its parsed list / dict")


_SIZE_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
               "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


def _byte_size(size: Union[int, str]) -> int:
    """``1073741824``, ``"1GiB"``, ``"512MiB"``, ``"8GB"`` -> bytes."""
    if isinstance(size, bool):
        raise TypeError("a size is an int of bytes or a string such as '1GiB'")
    if isinstance(size, int):
        return size
    if not isinstance(size, str):
        raise TypeError("a size is an int of bytes or a string such as '1GiB'")
    text = size.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    number, unit = text[:digits], text[digits:].strip().upper()
    if not number or unit not in _SIZE_UNITS:
        raise ValueError(f"size {size!r}: expected bytes or e.g. '512MiB', '1GiB', '8GB'")
    return int(number) * _SIZE_UNITS[unit]


def _gpu_cache(option: Optional[Mapping[str, Any]]) -> Optional[Tuple[int, int]]:
    """The pool option ``{"device": 0, "capacity": "1GiB"}`` as ``(device, bytes)``."""
    if option is None:
        return None
    unknown = set(option) - {"device", "capacity"}
    if unknown or "capacity" not in option:
        raise ValueError(
            f"gpu_cache {dict(option)!r}: expected {{'device': 0, 'capacity': '1GiB'}}"
            + (f" (unknown {sorted(unknown)})" if unknown else "")
        )
    device = option.get("device", 0)
    if not isinstance(device, int) or isinstance(device, bool) or device < 0:
        raise ValueError(f"gpu_cache device must be a GPU ordinal (int >= 0), not {device!r}")
    return device, _byte_size(option["capacity"])


def _plugin_bytes(plugin: Union[str, os.PathLike, bytes]) -> Tuple[str, bytes]:
    if isinstance(plugin, (bytes, bytearray, memoryview)):
        return "plugin", bytes(plugin)
    path = os.fspath(plugin)
    with open(path, "rb") as f:
        return os.path.basename(path), f.read()


def _python_bundle(
    path: Union[str, os.PathLike], entry: str, uuid: Optional[str]
) -> Tuple[str, Tuple[str, bytes]]:
    path = os.fspath(path)
    if not isinstance(entry, str) or not entry:
        raise TypeError("entry must be 'Class' or 'module:Class'")
    base = os.path.basename(os.path.normpath(path))
    if os.path.isdir(path):
        fmt, stem = "zip", base
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            parent = os.path.dirname(os.path.abspath(path))
            for root, _dirs, files in os.walk(path):
                for f in files:
                    if f.endswith(".pyc"):
                        continue
                    full = os.path.join(root, f)
                    z.write(full, os.path.relpath(full, parent))
        payload = buf.getvalue()
    elif path.endswith(".py") or path.endswith(".zip"):
        fmt, stem = path.rsplit(".", 1)[1], os.path.splitext(base)[0]
        with open(path, "rb") as f:
            payload = f.read()
        if fmt == "py":
            # A syntax error is reported here, not at the first invocation on a node.
            compile(payload, path, "exec")
    else:
        raise ValueError(f"{path}: expected a .py module, a package directory or a .zip")
    module, _, cls = entry.rpartition(":")
    module = module or stem
    uuid = uuid or _native.python_udl_uuid(module, cls)
    return base, (uuid, _native.python_bundle(uuid, module, cls, fmt, payload))


class Watch:
    """Every change under a prefix, as an iterator (``for event in watch``) or an async
    iterator (``async for event in watch``).

    A watch of a prefix inside one pool outlives the node it is on: when that node
    stops or drops the watch (it fell behind), the client resumes it at another replica
    after the last version it passed on, and is sent what it missed first. A persistent
    pool gives every version, a volatile one the latest of each key changed meanwhile.
    The stream ends (``StopIteration``) only if no replica takes the watch back within
    30 s, or one refuses (too far behind): then list the keys again and watch anew."""

    def __init__(self, native: "_native.Watch") -> None:
        self._native = native

    def __iter__(self) -> "Watch":
        return self

    def __next__(self) -> WatchEvent:
        event = self._native.next().wait()
        if event is None:
            raise StopIteration
        return event

    def next(self, timeout_s: Optional[float] = None) -> Optional[WatchEvent]:
        """The next event; ``TimeoutError`` if none came within ``timeout_s``; ``None``
        once the stream ended."""
        return self._native.next(timeout_s).wait()

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> WatchEvent:
        event = await _aio(self._native.next())
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stops the watch."""
        self._native.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Client:
    """A blocking client.

    ``addr`` is ``"host:port"`` of any node (or several, comma-separated or as a list);
    by default ``$SQUALL_CLUSTER`` or ``127.0.0.1:7200``, as for the CLI. ``token`` is
    the bearer token if the cluster requires one (default ``$SQUALL_TOKEN``).
    ``policy`` picks the replica a read goes to: ``"round_robin"`` (default),
    ``"key_hash"`` or ``"fixed"``.
    """

    def __init__(
        self,
        addr: Union[None, str, Sequence[str]] = None,
        token: Optional[str] = None,
        policy: str = "round_robin",
    ) -> None:
        self.addrs = _addrs(addr)
        self._n = _native.connect(self.addrs, _token(token), policy).wait()

    # ----- writes ---------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: Value,
        *,
        previous_version: Optional[int] = None,
        previous_version_by_key: Optional[int] = None,
        if_absent: bool = False,
    ) -> Written:
        """Stores ``value`` under ``key``; returns ``(version, timestamp_us)`` once it is
        delivered (volatile pools) or durable on every replica (persistent pools).

        Conditional forms raise :class:`~squall.ConflictError` when the condition fails:
        ``previous_version`` (the shard's latest version must be this one),
        ``previous_version_by_key`` (the key's must be), ``if_absent`` (the key must not
        exist).
        """
        return self._n.put(
            key, value, previous_version, previous_version_by_key, if_absent
        ).wait()

    def put_and_forget(self, key: str, value: Value) -> None:
        """Sends a put and returns once a node accepted it, not once applied."""
        self._n.put_and_forget(key, value).wait()

    def trigger_put(self, key: str, value: Value) -> None:
        """Hands ``value`` to the UDLs hooked on ``key``'s prefix at one node holding
        the key's shard; nothing is stored."""
        self._n.trigger_put(key, value).wait()

    def call(self, key: str, value: Value) -> list[Output]:
        """Runs the UDLs that a :meth:`trigger_put` of ``key`` triggers, on one node
        holding the key's shard, and returns what they emitted once all returned: a list
        of :class:`Output` (``.key`` as the UDL gave it, ``.value`` a read-only buffer,
        not copied). Nothing is stored for the input; the outputs also go to the
        vertices' destinations. Raises :class:`~squall.UdlFailedError` if a UDL raised,
        :class:`~squall.NotFoundError` if no UDL runs on ``key``. Like
        :meth:`trigger_put`, a call lost with its connection is sent again (its UDLs run
        at least once)."""
        return self._n.call(key, value).wait()

    def remove(self, key: str) -> Written:
        """Removes ``key`` (writes a tombstone version); :class:`~squall.NotFoundError`
        if it does not exist."""
        return self._n.remove(key).wait()

    # ----- reads ----------------------------------------------------------------------

    def get(
        self,
        key: str,
        *,
        version: Optional[int] = None,
        timestamp_us: Optional[int] = None,
        stable: bool = False,
    ) -> Optional[Object]:
        """The latest value of ``key`` (linearizable), or as of ``version`` or
        ``timestamp_us`` (persistent pools), or the latest durable on every replica
        (``stable=True``). ``None`` if there is none."""
        return self._n.get(key, version, timestamp_us, stable).wait()

    def multi_get(self, keys: Sequence[str]) -> list:
        """Several keys of one shard, read at one point of its order (``None`` for a
        missing key)."""
        return self._n.multi_get(list(keys)).wait()

    def get_size(self, key: str) -> Optional[int]:
        """The size in bytes of ``key``'s latest value, or ``None``."""
        return self._n.get_size(key).wait()

    def list_keys(self, prefix: str, *, timestamp_us: Optional[int] = None) -> list:
        """The keys under ``prefix``, sorted; as of ``timestamp_us`` if given
        (persistent pools). A prefix above several pools (``/``) lists every pool
        under it."""
        return self._n.list_keys(prefix, timestamp_us).wait()

    def watch(self, prefix: str) -> Watch:
        """Every change delivered under ``prefix`` from now on (see :class:`Watch`)."""
        return Watch(self._n.watch(prefix).wait())

    # ----- pools and members ----------------------------------------------------------

    def create_pool(
        self,
        path: str,
        kind: str = "persistent",
        *,
        subgroup: Optional[int] = None,
        shards: int = 0,
        affinity: Optional[str] = None,
        overrides: Optional[Mapping[str, int]] = None,
        gpu_cache: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Creates an object pool at ``path`` of ``kind`` (``"volatile"``,
        ``"persistent"`` or ``"trigger"``); ``subgroup`` defaults to that of an existing
        pool of the kind; ``shards`` (0: all of the subgroup's), ``affinity`` (a regex:
        keys whose matches are equal share a shard), ``overrides`` (key -> shard),
        ``gpu_cache`` (``{"device": 0, "capacity": "1GiB"}``, as the config's pool
        option: keep the pool's objects cached on that GPU, or in host memory on a node
        without one; its Python UDLs get the cached copy as ``obj.dlpack``)."""
        self._n.create_pool(
            path,
            kind,
            subgroup,
            shards,
            affinity,
            dict(overrides) if overrides else None,
            _gpu_cache(gpu_cache),
        ).wait()

    def remove_pool(self, path: str) -> None:
        """Removes pool ``path`` and its objects; a pool made at the path again starts
        empty. Run it again if it was interrupted (the path stays "being removed")."""
        self._n.remove_pool(path).wait()

    def compact(self, pool: str, *, before_us: Optional[int] = None) -> list:
        """Forgets the history of persistent pool ``pool`` before ``before_us`` (µs since
        the epoch; default now), shard by shard: each key keeps its later versions, or,
        if it was not written since, its value then; a key removed by then is dropped. Reads of earlier points
        raise :class:`~squall.CompactedError` from then on, and the nodes' logs drop the
        files nothing needs. Needs the admin role. Returns one dict per shard:
        ``shard``, ``through`` (the version compacted to, ``None`` if nothing was that
        old), ``timestamp_us``, ``versions_dropped``, ``keys_dropped``."""
        return self._n.compact(pool, _now_us() if before_us is None else before_us).wait()

    def find_pool(self, key: str) -> Pool:
        """The pool ``key`` belongs to (:class:`~squall.PoolError` if none)."""
        return self._n.find_pool(key).wait()

    def list_pools(self) -> list:
        return self._n.list_pools().wait()

    def members(self) -> Tuple[int, list]:
        """``(view_id, [Member, ...])`` of the current view."""
        return self._n.members().wait()

    # ----- UDLs and DFGs (admin) ------------------------------------------------------

    def upload_udl(self, plugin: Union[str, os.PathLike, bytes], name: Optional[str] = None) -> None:
        """Stores a UDL plugin library (a path or its bytes) in the cluster."""
        default_name, data = _plugin_bytes(plugin)
        self._n.upload_udl(name or default_name, data).wait()

    def upload_python_udl(
        self,
        path: Union[str, os.PathLike],
        entry: str,
        *,
        uuid: Optional[str] = None,
        name: Optional[str] = None,
    ) -> str:
        """Uploads a Python UDL and returns the UUID a DFG names it by.

        ``path`` is a module file (``my_udl.py``), a package directory (zipped here) or
        a ``.zip``; ``entry`` is ``"Class"`` (in the module the file is) or
        ``"module:Class"``. The UUID defaults to one derived from module and class, so
        uploading a new version replaces the old one on every node.
        """
        name, data = _python_bundle(path, entry, uuid)
        self._n.upload_udl(name, data[1]).wait()
        return data[0]

    def remove_udl(self, uuid: str) -> None:
        self._n.remove_udl(uuid).wait()

    def list_udls(self) -> list:
        return json.loads(self._n.list_udls().wait())

    def add_dfgs(self, dfgs: Union[str, bytes, list, dict]) -> None:
        """Adds data-flow graphs (Cascade's ``dfgs.json``: text, or its parsed form)."""
        self._n.add_dfgs(_dfgs_text(dfgs)).wait()

    def remove_dfg(self, dfg_id: str) -> None:
        self._n.remove_dfg(dfg_id).wait()

    def list_dfgs(self) -> list:
        return json.loads(self._n.list_dfgs().wait())

    def close(self) -> None:
        """Drops the connections (they also close when the client is garbage); later
        calls raise :class:`~squall.UnavailableError`."""
        self._n = _Closed()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"squall.Client({','.join(self.addrs)!r})"


class _Closed:
    """Stands in for the native client after ``close()``."""

    def __getattr__(self, name: str) -> Any:
        raise UnavailableError("this client is closed", "unavailable")


def _settle(future: "asyncio.Future", pending: "_native.Pending") -> None:
    if future.done():
        return
    try:
        future.set_result(pending.result())
    except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
        future.set_exception(e)


def _aio(call: "_native.Call") -> "asyncio.Future":
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    pending = call.spawn()
    pending.add_done_callback(lambda: loop.call_soon_threadsafe(_settle, future, pending))
    return future


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same methods, as coroutines.

    Connects on first use, or explicitly with ``await AsyncClient.connect(...)``. Calls
    run on the client's own I/O thread; the event loop is never blocked.
    """

    def __init__(
        self,
        addr: Union[None, str, Sequence[str]] = None,
        token: Optional[str] = None,
        policy: str = "round_robin",
    ) -> None:
        self.addrs = _addrs(addr)
        self._token = _token(token)
        self._policy = policy
        self._n = None

    @classmethod
    async def connect(
        cls,
        addr: Union[None, str, Sequence[str]] = None,
        token: Optional[str] = None,
        policy: str = "round_robin",
    ) -> "AsyncClient":
        client = cls(addr, token, policy)
        await client._native()
        return client

    async def _native(self):
        if self._n is None:
            self._n = await _aio(_native.connect(self.addrs, self._token, self._policy))
        return self._n

    async def put(
        self,
        key: str,
        value: Value,
        *,
        previous_version: Optional[int] = None,
        previous_version_by_key: Optional[int] = None,
        if_absent: bool = False,
    ) -> Written:
        """See :meth:`Client.put`."""
        n = await self._native()
        return await _aio(n.put(key, value, previous_version, previous_version_by_key, if_absent))

    async def put_and_forget(self, key: str, value: Value) -> None:
        n = await self._native()
        await _aio(n.put_and_forget(key, value))

    async def trigger_put(self, key: str, value: Value) -> None:
        n = await self._native()
        await _aio(n.trigger_put(key, value))

    async def call(self, key: str, value: Value) -> list[Output]:
        n = await self._native()
        return await _aio(n.call(key, value))

    async def remove(self, key: str) -> Written:
        n = await self._native()
        return await _aio(n.remove(key))

    async def get(
        self,
        key: str,
        *,
        version: Optional[int] = None,
        timestamp_us: Optional[int] = None,
        stable: bool = False,
    ) -> Optional[Object]:
        """See :meth:`Client.get`."""
        n = await self._native()
        return await _aio(n.get(key, version, timestamp_us, stable))

    async def multi_get(self, keys: Sequence[str]) -> list:
        n = await self._native()
        return await _aio(n.multi_get(list(keys)))

    async def get_size(self, key: str) -> Optional[int]:
        n = await self._native()
        return await _aio(n.get_size(key))

    async def list_keys(self, prefix: str, *, timestamp_us: Optional[int] = None) -> list:
        n = await self._native()
        return await _aio(n.list_keys(prefix, timestamp_us))

    async def watch(self, prefix: str) -> Watch:
        n = await self._native()
        return Watch(await _aio(n.watch(prefix)))

    async def create_pool(
        self,
        path: str,
        kind: str = "persistent",
        *,
        subgroup: Optional[int] = None,
        shards: int = 0,
        affinity: Optional[str] = None,
        overrides: Optional[Mapping[str, int]] = None,
        gpu_cache: Optional[Mapping[str, Any]] = None,
    ) -> None:
        n = await self._native()
        await _aio(
            n.create_pool(
                path,
                kind,
                subgroup,
                shards,
                affinity,
                dict(overrides) if overrides else None,
                _gpu_cache(gpu_cache),
            )
        )

    async def remove_pool(self, path: str) -> None:
        n = await self._native()
        await _aio(n.remove_pool(path))

    async def compact(self, pool: str, *, before_us: Optional[int] = None) -> list:
        """See :meth:`Client.compact`."""
        n = await self._native()
        return await _aio(n.compact(pool, _now_us() if before_us is None else before_us))

    async def find_pool(self, key: str) -> Pool:
        n = await self._native()
        return await _aio(n.find_pool(key))

    async def list_pools(self) -> list:
        n = await self._native()
        return await _aio(n.list_pools())

    async def members(self) -> Tuple[int, list]:
        n = await self._native()
        return await _aio(n.members())

    async def upload_udl(
        self, plugin: Union[str, os.PathLike, bytes], name: Optional[str] = None
    ) -> None:
        default_name, data = _plugin_bytes(plugin)
        n = await self._native()
        await _aio(n.upload_udl(name or default_name, data))

    async def upload_python_udl(
        self,
        path: Union[str, os.PathLike],
        entry: str,
        *,
        uuid: Optional[str] = None,
        name: Optional[str] = None,
    ) -> str:
        """See :meth:`Client.upload_python_udl`."""
        name, data = _python_bundle(path, entry, uuid)
        n = await self._native()
        await _aio(n.upload_udl(name, data[1]))
        return data[0]

    async def remove_udl(self, uuid: str) -> None:
        n = await self._native()
        await _aio(n.remove_udl(uuid))

    async def list_udls(self) -> list:
        n = await self._native()
        return json.loads(await _aio(n.list_udls()))

    async def add_dfgs(self, dfgs: Union[str, bytes, list, dict]) -> None:
        n = await self._native()
        await _aio(n.add_dfgs(_dfgs_text(dfgs)))

    async def remove_dfg(self, dfg_id: str) -> None:
        n = await self._native()
        await _aio(n.remove_dfg(dfg_id))

    async def list_dfgs(self) -> list:
        n = await self._native()
        return json.loads(await _aio(n.list_dfgs()))

    async def close(self) -> None:
        self._n = _Closed()

    async def __aenter__(self) -> "AsyncClient":
        await self._native()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"squall.AsyncClient({','.join(self.addrs)!r})"


__all__ = ["Client", "AsyncClient", "Watch", "Object", "Output", "Pool", "Member", "WatchEvent"]
