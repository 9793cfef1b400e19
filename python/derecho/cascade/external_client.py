"""Cascade's ``derecho.cascade.external_client`` over a Squall cluster.

Code written for Cascade's Python client (``ServiceClientAPI``) runs unchanged: the
methods keep Cascade's names, arguments and return shapes, and each call is translated
to :class:`squall.Client`. How Cascade's model maps onto Squall's:

Futures
    Cascade's operations return futures whose ``get_result()`` waits for the reply.
    Here each operation runs to completion when it is called (in program order, the GIL
    released while it waits) and returns a :class:`QueryResults` that already holds the
    reply. Failures raise the typed :class:`squall.SquallError` subclasses at the call,
    never later: e.g. a ``previous_version`` check that fails raises
    :class:`squall.ConflictError` where Cascade would return version ``-1``.

Return shapes (as Cascade's)
    ``put`` / ``remove``: ``get_result()`` gives ``[version, timestamp_us]``; a
    non-blocking or trigger put returns ``None``. ``get`` / ``multi_get``: a dict
    ``{key, value (bytes), version, timestamp, previous_version,
    previous_version_by_key, message_id}``; a key with no value (never written,
    removed, or not yet written at the requested version or time) gives Cascade's
    invalid object: ``key ""``, ``value b""``, ``version -1``, ``timestamp 0``.
    ``get_size``: the value's length in bytes (Cascade counts its serialized object,
    headers included), ``0`` for no value. ``list_keys_in_object_pool``: a list of
    futures of key lists (Squall answers with one, covering every shard).

Versions and timestamps
    Squall versions are the shard's ``(view << 32) | sequence`` as a non-negative int,
    and timestamps are hybrid-clock microseconds, as in Cascade; both pass through
    unchanged. ``-1`` (``CURRENT_VERSION``, Cascade's ``INVALID_VERSION``) means "none"
    / "latest" wherever Cascade uses it. ``previous_version=v`` on a put requires the
    shard's latest version to be exactly ``v`` and ``previous_version_by_key=v`` the
    key's (Cascade rejects only versions older than the current one). ``get`` with
    ``version`` returns the key's value as of that shard version; with ``timestamp``
    (and no version) its value as of that time; otherwise, ``stable=True`` (Cascade's
    default) reads the latest value durable on every replica of a persistent pool and
    the latest value of any other pool, ``stable=False`` the latest value (Squall's
    latest reads are linearizable). ``message_id`` is accepted on puts but not stored:
    objects read back carry ``message_id 0``.

Placement arguments
    Squall routes every key by its object pool, so ``subgroup_type`` /
    ``subgroup_index`` on data operations only assert where the key lives: they are
    checked against the key's pool (:class:`squall.BadRequestError` on a mismatch) and
    ``shard_index`` is ignored. Keys must belong to a pool (Cascade's pool-less typed
    puts have no Squall equivalent).

Subgroup indices
    Cascade numbers subgroups per store type (the i-th ``VolatileCascadeStore...``
    subgroup); Squall numbers its data subgroups from 1 across all kinds. Index ``i`` of
    a type here means the i-th smallest Squall subgroup that holds at least one pool of
    that kind, learned from :meth:`squall.Client.list_pools`. A subgroup that holds no
    pool of its kind yet is invisible to clients: create its first pool with
    :meth:`squall.Client.create_pool` and an explicit ``subgroup``.

Membership
    Squall clients see the view's members but not which nodes hold which shard, so the
    shard and subgroup member lists are the whole view (a superset of the true
    replicas), shard counts are lower bounds, and the member selection policy is
    recorded and reported but does not steer requests (the Squall client picks
    replicas itself). Squall clients are not group members: ``get_my_id`` is ``-1``.

Not provided
    ``list_keys_in_shard`` / ``multi_list_keys_in_shard`` (the shard-addressed listings:
    a client cannot address one shard of a subgroup), ``as_trigger`` puts (Squall has
    no ordered trigger multicast; use ``trigger=True``), listing keys as of a version
    (use ``timestamp``), and server-to-client notifications (Cascade's Python client has
    none either).
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar, Union

import squall
from squall import BadRequestError, NotVersionedError, Object, Pool, PoolError
from squall.client import Value

#: Cascade's "latest version" / "no version" (its ``INVALID_VERSION``).
CURRENT_VERSION: int = -1

#: Cascade's store types -> Squall pool kinds.
_KINDS: Dict[str, str] = {
    "VolatileCascadeStoreWithStringKey": "volatile",
    "PersistentCascadeStoreWithStringKey": "persistent",
    "TriggerCascadeNoStoreWithStringKey": "trigger",
}
#: The short names Cascade's CLI uses.
_SHORT_NAMES: Dict[str, str] = {"VCSS": "volatile", "PCSS": "persistent", "TCSS": "trigger"}
#: Cascade's ``subgroup_type_index`` of each kind (its order of store types).
_TYPE_INDEX: Dict[str, int] = {"volatile": 0, "persistent": 1, "trigger": 2}

#: Cascade's ``ShardMemberSelectionPolicy`` names.
MEMBER_SELECTION_POLICIES: Tuple[str, ...] = (
    "FirstMember",
    "LastMember",
    "Random",
    "FixedRandom",
    "RoundRobin",
    "KeyHashing",
    "UserSpecified",
)
#: Derecho's "no node" id, the user node of every policy but ``UserSpecified``.
INVALID_NODE_ID: int = 0xFFFF_FFFF

T = TypeVar("T")
Address = Union[None, str, Sequence[str]]


class QueryResults(Generic[T]):
    """The reply of one operation, in the shape of Cascade's ``QueryResults`` futures.

    The operation has already completed when this is returned (see the module
    documentation); :meth:`get_result` hands back its reply.
    """

    __slots__ = ("_result",)

    def __init__(self, result: T) -> None:
        self._result = result

    def get_result(self) -> T:
        """The operation's reply."""
        return self._result

    def __repr__(self) -> str:
        return f"QueryResults({self._result!r})"


def _kind(service_type: str) -> str:
    """The Squall pool kind of a Cascade store type name (full or short)."""
    kind = _KINDS.get(service_type) or _SHORT_NAMES.get(service_type)
    if kind is None:
        raise ValueError(
            f"unknown subgroup type {service_type!r}: expected one of {', '.join(_KINDS)}"
        )
    return kind


def _version_arg(version: int) -> Optional[int]:
    """Cascade's ``-1`` ("none") as Squall's ``None``."""
    return None if version == CURRENT_VERSION else version


def _object_dict(obj: Optional[Object]) -> Dict[str, Any]:
    """A Squall object as Cascade's dict (its invalid object for ``None``)."""
    if obj is None:
        return {
            "key": "",
            "value": b"",
            "version": CURRENT_VERSION,
            "timestamp": 0,
            "previous_version": CURRENT_VERSION,
            "previous_version_by_key": CURRENT_VERSION,
            "message_id": 0,
        }
    prev = obj.previous_version
    prev_by_key = obj.previous_version_by_key
    return {
        "key": obj.key,
        "value": obj.tobytes(),
        "version": obj.version,
        "timestamp": obj.timestamp_us,
        "previous_version": CURRENT_VERSION if prev is None else prev,
        "previous_version_by_key": CURRENT_VERSION if prev_by_key is None else prev_by_key,
        "message_id": 0,
    }


def _pool_path(pathname: str) -> str:
    """A pool pathname without a trailing ``/`` (Cascade tolerates one)."""
    return pathname.rstrip("/") or "/"


class ServiceClientAPI:
    """Cascade's client API, connected to a Squall cluster.

    ``ServiceClientAPI()`` connects as :class:`squall.Client` does by default:
    ``$SQUALL_CLUSTER`` or ``127.0.0.1:7200``, with ``$SQUALL_TOKEN`` if set (Cascade's
    reads ``derecho.cfg`` instead). ``addr`` (``"host:port"``, comma-separated or a list)
    and ``token`` override those; Cascade's constructor has no arguments, so they are
    keyword-only.
    """

    #: The store type names Cascade accepts.
    CASCADE_SUBGROUP_TYPES: ClassVar[List[str]] = list(_KINDS)
    #: See the module constant :data:`CURRENT_VERSION`.
    CURRENT_VERSION: ClassVar[int] = CURRENT_VERSION

    def __init__(self, *, addr: Address = None, token: Optional[str] = None) -> None:
        self._client = squall.Client(addr, token)
        self._pools: Dict[str, Pool] = {}
        self._policies: Dict[Tuple[str, int, int], Tuple[str, int]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServiceClientAPI({','.join(self._client.addrs)!r})"

    # ----- pool metadata cache ---------------------------------------------------------

    def _refresh_pools(self) -> List[Pool]:
        pools = self._client.list_pools()
        self._pools = {p.path: p for p in pools}
        return pools

    def _find_cached(self, path: str, include_self: bool) -> Optional[Pool]:
        pools = self._pools
        if include_self and path in pools:
            return pools[path]
        parts = path.split("/")
        for end in range(2, len(parts)):
            pool = pools.get("/".join(parts[:end]))
            if pool is not None:
                return pool
        return None

    def _pool_of(self, path: str, include_self: bool = False) -> Optional[Pool]:
        """The pool holding key ``path`` (or, with ``include_self``, the pool named
        ``path``), from the cache, refreshed once on a miss; ``None`` if none."""
        pool = self._find_cached(path, include_self)
        if pool is None:
            self._refresh_pools()
            pool = self._find_cached(path, include_self)
        return pool

    def _existing_pool(self, pathname: str) -> Pool:
        """The pool named ``pathname`` or holding it; :class:`squall.PoolError` if none."""
        pool = self._pool_of(_pool_path(pathname), include_self=True)
        if pool is None:
            raise PoolError(f"no pool {pathname}", "no_such_pool")
        return pool

    def _subgroups(self, kind: str) -> List[int]:
        """Squall's subgroups holding pools of ``kind``, ascending: Cascade's per-type
        subgroup index ``i`` is the i-th of them. Reads the pool list afresh."""
        return sorted({p.subgroup for p in self._refresh_pools() if p.kind == kind})

    def _subgroup(self, service_type: str, subgroup_index: int) -> int:
        """Squall's subgroup for Cascade's ``(service_type, subgroup_index)``."""
        kind = _kind(service_type)
        subgroups = self._subgroups(kind)
        if not 0 <= subgroup_index < len(subgroups):
            raise PoolError(
                f"{service_type} subgroup {subgroup_index} is unknown: the cluster's pools "
                f"use {len(subgroups)} {kind} subgroup(s) (a subgroup becomes visible "
                "once it holds a pool; create the first one with squall.Client.create_pool("
                "path, kind, subgroup=N))",
                "invalid_pool",
            )
        return subgroups[subgroup_index]

    def _check_placement(
        self, key: str, subgroup_type: Optional[str], subgroup_index: int
    ) -> None:
        """Checks that ``key`` lives where a typed call says it does."""
        if subgroup_type is None:
            return
        kind = _kind(subgroup_type)
        pool = self._pool_of(key)
        if pool is None:
            return  # the operation itself reports the missing pool
        if pool.kind != kind:
            raise BadRequestError(
                f"{key} is in {pool.kind} pool {pool.path}, not in a {subgroup_type}"
            )
        subgroups = sorted({p.subgroup for p in self._pools.values() if p.kind == kind})
        index = subgroups.index(pool.subgroup) if pool.subgroup in subgroups else -1
        if index != subgroup_index:
            raise BadRequestError(
                f"{key} is in pool {pool.path}, in {subgroup_type} subgroup {index}, "
                f"not {subgroup_index}"
            )

    # ----- writes ----------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: Value,
        *,
        subgroup_type: Optional[str] = None,
        subgroup_index: int = 0,
        shard_index: int = 0,
        previous_version: int = CURRENT_VERSION,
        previous_version_by_key: int = CURRENT_VERSION,
        blocking: bool = True,
        trigger: bool = False,
        as_trigger: bool = False,
        message_id: int = 0,
    ) -> Optional[QueryResults[List[int]]]:
        """Stores ``value`` (bytes, or any buffer :meth:`squall.Client.put` takes) under
        ``key``.

        Returns a future of ``[version, timestamp_us]``, or ``None`` for ``trigger=True``
        (hands the value to the UDLs on ``key``'s prefix at one replica; nothing is
        stored) and ``blocking=False`` (sent without waiting for it to be applied).
        ``previous_version`` / ``previous_version_by_key`` (``-1``: unchecked) make the
        put conditional: :class:`squall.ConflictError` if the shard's / key's latest
        version is not the one given; a conditional put always waits for its answer.
        ``subgroup_type`` / ``subgroup_index`` are checked against ``key``'s pool;
        ``shard_index`` and ``message_id`` are accepted and ignored. ``as_trigger=True``
        raises ``ValueError`` (not supported by Squall).
        """
        if as_trigger:
            raise ValueError(
                "as_trigger=True (an ordered multicast that only fires UDLs) is not "
                "supported by Squall; use trigger=True"
            )
        self._check_placement(key, subgroup_type, subgroup_index)
        if trigger:
            self._client.trigger_put(key, value)
            return None
        conditional = (previous_version, previous_version_by_key) != (
            CURRENT_VERSION,
            CURRENT_VERSION,
        )
        if not blocking and not conditional:
            self._client.put_and_forget(key, value)
            return None
        version, timestamp_us = self._client.put(
            key,
            value,
            previous_version=_version_arg(previous_version),
            previous_version_by_key=_version_arg(previous_version_by_key),
        )
        return QueryResults([version, timestamp_us]) if blocking else None

    def remove(
        self,
        key: str,
        *,
        subgroup_type: Optional[str] = None,
        subgroup_index: int = 0,
        shard_index: int = 0,
    ) -> QueryResults[List[int]]:
        """Removes ``key`` (a tombstone version); a future of ``[version,
        timestamp_us]``. :class:`squall.NotFoundError` if the key has no value (Cascade
        writes a tombstone anyway)."""
        self._check_placement(key, subgroup_type, subgroup_index)
        version, timestamp_us = self._client.remove(key)
        return QueryResults([version, timestamp_us])

    # ----- reads -----------------------------------------------------------------------

    def _read(self, key: str, version: int, stable: bool, timestamp: int) -> Optional[Object]:
        """Cascade's choice among versioned, timed, stable and latest reads."""
        if version != CURRENT_VERSION:
            return self._client.get(key, version=version)
        if timestamp != 0:
            return self._client.get(key, timestamp_us=timestamp)
        if stable:
            pool = self._pool_of(key)
            if pool is not None and pool.kind == "persistent":
                try:
                    return self._client.get(key, stable=True)
                except NotVersionedError:
                    self._refresh_pools()  # the cached kind was stale
        return self._client.get(key)

    def get(
        self,
        key: str,
        *,
        subgroup_type: Optional[str] = None,
        subgroup_index: int = 0,
        shard_index: int = 0,
        version: int = CURRENT_VERSION,
        stable: bool = True,
        timestamp: int = 0,
    ) -> QueryResults[Dict[str, Any]]:
        """A future of ``key``'s object as Cascade's dict (see the module documentation
        for the fields and the invalid object given when there is no value).

        ``version``: as of that version (persistent pools); else ``timestamp`` (µs,
        non-zero): as of that time (persistent pools); else the latest value, durable on
        every replica if ``stable`` and the pool is persistent. Reads by version or time
        of a volatile pool raise :class:`squall.NotVersionedError` (Cascade returns an
        invalid object)."""
        self._check_placement(key, subgroup_type, subgroup_index)
        return QueryResults(_object_dict(self._read(key, version, stable, timestamp)))

    def multi_get(
        self,
        key: str,
        *,
        subgroup_type: Optional[str] = None,
        subgroup_index: int = 0,
        shard_index: int = 0,
    ) -> QueryResults[Dict[str, Any]]:
        """A future of ``key``'s latest object, read at one point of its shard's total
        order, as Cascade's dict."""
        self._check_placement(key, subgroup_type, subgroup_index)
        return QueryResults(_object_dict(self._client.multi_get([key])[0]))

    def get_size(
        self,
        key: str,
        *,
        subgroup_type: Optional[str] = None,
        subgroup_index: int = 0,
        shard_index: int = 0,
        version: int = CURRENT_VERSION,
        stable: bool = True,
        timestamp: int = 0,
    ) -> QueryResults[int]:
        """A future of the size in bytes of ``key``'s value (``0`` if none); ``version``
        and ``timestamp`` as for :meth:`get` (those read the object and measure it).
        Squall's size query reads the latest value, so ``stable`` is accepted and does
        not change it."""
        self._check_placement(key, subgroup_type, subgroup_index)
        if version == CURRENT_VERSION and timestamp == 0:
            return QueryResults(self._client.get_size(key) or 0)
        obj = self._read(key, version, stable, timestamp)
        return QueryResults(0 if obj is None else len(obj))

    def multi_get_size(
        self,
        key: str,
        *,
        subgroup_type: Optional[str] = None,
        subgroup_index: int = 0,
        shard_index: int = 0,
    ) -> QueryResults[int]:
        """A future of the size in bytes of ``key``'s latest value read as by
        :meth:`multi_get` (``0`` if none)."""
        self._check_placement(key, subgroup_type, subgroup_index)
        obj = self._client.multi_get([key])[0]
        return QueryResults(0 if obj is None else len(obj))

    def list_keys_in_object_pool(
        self,
        object_pool_pathname: str,
        *,
        version: int = CURRENT_VERSION,
        stable: bool = True,
        timestamp: int = 0,
    ) -> List[QueryResults[List[str]]]:
        """The keys of an object pool, as Cascade's list of per-shard futures (here one
        future holding the sorted keys of every shard). ``timestamp`` (µs, non-zero):
        the keys as of that time (persistent pools). Listing as of a ``version`` is not
        supported (``ValueError``); ``stable`` is accepted (every listing is
        linearizable). :class:`squall.PoolError` if there is no such pool."""
        if version != CURRENT_VERSION:
            raise ValueError("Squall lists keys as of a time, not a version: pass timestamp=")
        keys = self._client.list_keys(
            _pool_path(object_pool_pathname), timestamp_us=timestamp or None
        )
        return [QueryResults(keys)]

    def multi_list_keys_in_object_pool(
        self, object_pool_pathname: str
    ) -> List[QueryResults[List[str]]]:
        """The latest keys of an object pool, each shard read at one point of its order
        (as :meth:`list_keys_in_object_pool`, whose listings already are)."""
        return self.list_keys_in_object_pool(object_pool_pathname)

    # ----- object pools ----------------------------------------------------------------

    def create_object_pool(
        self,
        object_pool_pathname: str,
        service_type: str,
        subgroup_index: int,
        *,
        affinity_set_regex: str = "",
    ) -> QueryResults[None]:
        """Creates an object pool of store type ``service_type`` in that type's subgroup
        ``subgroup_index`` (the i-th Squall subgroup holding pools of the kind; see the
        module documentation), spread over all of its shards. ``affinity_set_regex``:
        keys whose matches are equal share a shard. Squall gives pool changes no version
        visible to clients, so ``get_result()`` is ``None``; failures raise
        :class:`squall.PoolError` (exists, nested, unknown subgroup)."""
        kind = _kind(service_type)
        subgroup = self._subgroup(service_type, subgroup_index)
        self._client.create_pool(
            _pool_path(object_pool_pathname),
            kind,
            subgroup=subgroup,
            affinity=affinity_set_regex or None,
        )
        self._refresh_pools()
        return QueryResults(None)

    def remove_object_pool(self, object_pool_pathname: str) -> QueryResults[None]:
        """Removes an object pool (:class:`squall.PoolError` if there is none);
        ``get_result()`` is ``None``."""
        self._client.remove_pool(_pool_path(object_pool_pathname))
        self._refresh_pools()
        return QueryResults(None)

    def list_object_pools(self) -> List[str]:
        """The pathnames of the object pools. Squall removes pools outright, so none is
        listed as deleted (Cascade's ``path(!)``)."""
        return [p.path for p in self._refresh_pools()]

    def get_object_pool(self, object_pool_pathname: str) -> Dict[str, Any]:
        """The metadata of the pool named ``object_pool_pathname`` (or holding that
        path) as Cascade's dict. ``subgroup_type_index`` is Cascade's (0 volatile,
        1 persistent, 2 trigger) and ``subgroup_index`` the per-type index; Squall keeps
        no version for pool records (``version -1``, ``timestamp_us 0``), and shards by
        hash only (``sharding_policy 0``); ``object_locations`` are the pool's per-key
        shard overrides. :class:`squall.PoolError` if there is no such pool."""
        pool = self._existing_pool(object_pool_pathname)
        subgroups = sorted({p.subgroup for p in self._pools.values() if p.kind == pool.kind})
        return {
            "version": CURRENT_VERSION,
            "timestamp_us": 0,
            "previous_version": CURRENT_VERSION,
            "previous_version_by_key": CURRENT_VERSION,
            "pathname": pool.path,
            "subgroup_type_index": _TYPE_INDEX.get(pool.kind, -1),
            "subgroup_index": subgroups.index(pool.subgroup),
            "sharding_policy": 0,
            "object_locations": dict(pool.overrides),
            "affinity_set_regex": pool.affinity or "",
            "deleted": False,
        }

    # ----- membership ------------------------------------------------------------------

    def get_my_id(self) -> int:
        """This client's node id: ``-1``, as Squall clients are not group members."""
        return -1

    def get_members(self) -> List[int]:
        """The node ids of the current view's members, in view order."""
        _, members = self._client.members()
        return [m.node for m in members]

    def _shard_count(self, subgroup: int) -> int:
        # A pool records how many shards it spreads over, 0 meaning "all of the
        # subgroup's": a lower bound on the subgroup's shard count.
        return max([p.shards for p in self._pools.values() if p.subgroup == subgroup] + [1])

    def _shards_members(self, subgroup: int) -> List[List[int]]:
        members = self.get_members()
        return [list(members) for _ in range(self._shard_count(subgroup))]

    def _shard_members(self, subgroup: int, shard_index: int) -> List[int]:
        shards = self._shards_members(subgroup)
        if not 0 <= shard_index < len(shards):
            raise ValueError(f"shard {shard_index} is unknown: {len(shards)} shard(s) known")
        return shards[shard_index]

    def get_subgroup_members(self, service_type: str, subgroup_index: int) -> List[List[int]]:
        """One member list per shard of the subgroup. Approximation: every list is the
        whole view (a superset of the shard's replicas), and there are
        :meth:`get_number_of_shards` of them."""
        return self._shards_members(self._subgroup(service_type, subgroup_index))

    def get_subgroup_members_by_object_pool(self, object_pool_pathname: str) -> List[List[int]]:
        """:meth:`get_subgroup_members` of the subgroup holding the pool."""
        return self._shards_members(self._existing_pool(object_pool_pathname).subgroup)

    def get_shard_members(
        self, service_type: str, subgroup_index: int, shard_index: int
    ) -> List[int]:
        """The members of one shard. Approximation: the whole view (a superset of the
        shard's replicas). ``ValueError`` for a shard beyond
        :meth:`get_number_of_shards`."""
        return self._shard_members(self._subgroup(service_type, subgroup_index), shard_index)

    def get_shard_members_by_object_pool(
        self, object_pool_pathname: str, shard_index: int
    ) -> List[int]:
        """:meth:`get_shard_members` of a shard of the subgroup holding the pool."""
        pool = self._existing_pool(object_pool_pathname)
        return self._shard_members(pool.subgroup, shard_index)

    def get_number_of_subgroups(self, service_type: str) -> int:
        """How many subgroups of the store type hold pools (subgroups holding none are
        not visible to clients)."""
        return len(self._subgroups(_kind(service_type)))

    def get_number_of_shards(self, service_type: str, subgroup_index: int) -> int:
        """How many shards the subgroup has. Approximation: the most shards any of its
        pools names, at least 1; a lower bound, exact when the subgroup has one shard or
        a pool names the count."""
        return self._shard_count(self._subgroup(service_type, subgroup_index))

    def set_member_selection_policy(
        self,
        service_type: str,
        subgroup_index: int,
        shard_index: int,
        policy: str,
        usernode: int = INVALID_NODE_ID,
    ) -> None:
        """Records the replica selection policy for a shard (one of
        :data:`MEMBER_SELECTION_POLICIES`; ``usernode`` for ``UserSpecified``). Recorded
        only: the Squall client chooses replicas by its own policy."""
        _kind(service_type)
        if policy not in MEMBER_SELECTION_POLICIES:
            raise ValueError(
                f"unknown policy {policy!r}: expected one of {', '.join(MEMBER_SELECTION_POLICIES)}"
            )
        with self._lock:
            self._policies[(service_type, subgroup_index, shard_index)] = (policy, usernode)

    def get_member_selection_policy(
        self, service_type: str, subgroup_index: int, shard_index: int
    ) -> Tuple[str, int]:
        """``(policy name, user node id)`` recorded for the shard; Cascade's default
        ``("RoundRobin", INVALID_NODE_ID)`` if none was set."""
        _kind(service_type)
        with self._lock:
            return self._policies.get(
                (service_type, subgroup_index, shard_index), ("RoundRobin", INVALID_NODE_ID)
            )


_log: List[Tuple[int, int, int, int, int]] = []
_log_lock = threading.Lock()


class TimestampLogger:
    """Cascade's evaluation logger: records ``(tag, node_id, msg_id, time, extra)``
    entries in memory and writes them to a file. Like Cascade's, every instance shares
    one process-wide log."""

    def __repr__(self) -> str:
        return "TimestampLogger for logging timestamps."

    def log(self, tag: int, node_id: int, msg_id: int, extra: int = 0) -> None:
        """Records an entry stamped with the current time (ns since the epoch)."""
        entry = (tag, node_id, msg_id, time.time_ns(), extra)
        with _log_lock:
            _log.append(entry)

    def flush(self, filename: str, clear: bool = True) -> None:
        """Writes the log to ``filename``, one ``tag node_id msg_id time_ns extra``
        line per entry in the order logged; then, with ``clear``, drops the entries
        written (entries logged meanwhile stay)."""
        with _log_lock:
            entries = list(_log)
        with open(filename, "w") as f:
            f.writelines(" ".join(map(str, e)) + "\n" for e in entries)
        if clear:
            with _log_lock:
                del _log[: len(entries)]

    def clear(self) -> None:
        """Empties the log."""
        with _log_lock:
            _log.clear()


__all__ = [
    "CURRENT_VERSION",
    "INVALID_NODE_ID",
    "MEMBER_SELECTION_POLICIES",
    "QueryResults",
    "ServiceClientAPI",
    "TimestampLogger",
]
