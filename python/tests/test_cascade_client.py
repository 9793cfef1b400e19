"""Cascade's Python client API (derecho.cascade) against a real Squall cluster."""

import time
import uuid

import numpy as np
import pytest

import squall
from derecho.cascade import member_client
from derecho.cascade.external_client import (
    CURRENT_VERSION,
    INVALID_NODE_ID,
    QueryResults,
    ServiceClientAPI,
    TimestampLogger,
)
from derecho.cascade.udl import UserDefinedLogic

PCSS = "PersistentCascadeStoreWithStringKey"
VCSS = "VolatileCascadeStoreWithStringKey"
TCSS = "TriggerCascadeNoStoreWithStringKey"
OBJECT_FIELDS = {
    "key",
    "value",
    "version",
    "timestamp",
    "previous_version",
    "previous_version_by_key",
    "message_id",
}


def unique(prefix: str) -> str:
    return f"{prefix}/cascade/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def capi(cluster):
    return ServiceClientAPI(addr=cluster.addrs)


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def test_put_get_roundtrip_has_cascade_shapes(capi):
    key = unique("/demo") + "/a"
    future = capi.put(key, b"hello")
    assert isinstance(future, QueryResults)
    version, ts = future.get_result()
    assert isinstance(version, int) and version >= 0
    assert ts > 1_600_000_000_000_000  # microseconds since the epoch

    obj = capi.get(key).get_result()
    assert set(obj) == OBJECT_FIELDS
    assert obj["key"] == key
    assert obj["value"] == b"hello" and isinstance(obj["value"], bytes)
    assert obj["version"] == version
    assert obj["timestamp"] == ts
    assert obj["previous_version_by_key"] == CURRENT_VERSION
    assert obj["message_id"] == 0

    v2, _ = capi.put(key, b"again", message_id=7).get_result()
    obj2 = capi.get(key, stable=False).get_result()
    assert obj2["value"] == b"again"
    assert obj2["version"] == v2 > version
    assert obj2["previous_version_by_key"] == version


def test_put_accepts_numpy_and_str_values(capi):
    base = unique("/demo")
    capi.put(f"{base}/np", np.arange(4, dtype=np.uint8)).get_result()
    capi.put(f"{base}/s", "text").get_result()
    assert capi.get(f"{base}/np").get_result()["value"] == bytes([0, 1, 2, 3])
    assert capi.get(f"{base}/s").get_result()["value"] == b"text"


def test_get_of_missing_key_is_cascades_invalid_object(capi):
    obj = capi.get(unique("/demo") + "/never").get_result()
    assert obj == {
        "key": "",
        "value": b"",
        "version": -1,
        "timestamp": 0,
        "previous_version": -1,
        "previous_version_by_key": -1,
        "message_id": 0,
    }


def test_get_by_version_and_by_timestamp(capi):
    base = unique("/demo")
    key = f"{base}/tt"
    v1, ts1 = capi.put(key, b"one").get_result()
    other_version, _ = capi.put(f"{base}/other", b"x").get_result()
    v2, ts2 = capi.put(key, b"two").get_result()

    assert capi.get(key, version=v1).get_result()["value"] == b"one"
    assert capi.get(key, version=v2).get_result()["value"] == b"two"
    # A shard version between the key's two puts gives the key's value as of then.
    assert capi.get(key, version=other_version).get_result()["value"] == b"one"
    assert capi.get(key, timestamp=ts1).get_result()["value"] == b"one"
    assert capi.get(key, timestamp=ts2).get_result()["value"] == b"two"
    assert capi.get(key, timestamp=ts1 - 1).get_result()["version"] == CURRENT_VERSION
    # An explicit version wins over a timestamp, as in Cascade.
    assert capi.get(key, version=v1, timestamp=ts2).get_result()["value"] == b"one"
    assert capi.get(key).get_result()["value"] == b"two"  # stable (default)
    assert capi.get(key, stable=False).get_result()["value"] == b"two"

    assert capi.get_size(key, version=v1).get_result() == 3
    assert capi.get_size(key, timestamp=ts1 - 1).get_result() == 0


def test_volatile_pool_reads_and_unversioned_errors(capi):
    key = unique("/cache") + "/v"
    version, _ = capi.put(key, b"fast").get_result()
    obj = capi.get(key).get_result()  # stable=True is Cascade's default
    assert obj["value"] == b"fast" and obj["version"] == version
    with pytest.raises(squall.NotVersionedError):
        capi.get(key, timestamp=obj["timestamp"])


def test_conditional_puts_raise_conflict(capi):
    key = unique("/demo") + "/cond"
    v1, _ = capi.put(key, b"1").get_result()
    v2, _ = capi.put(key, b"2", previous_version_by_key=v1).get_result()
    with pytest.raises(squall.ConflictError) as err:
        capi.put(key, b"stale", previous_version_by_key=v1)
    assert err.value.current_version == v2
    # The shard-wide check: the latest version of the shard must be the one given.
    with pytest.raises(squall.ConflictError):
        capi.put(key, b"stale", previous_version=v1)
    # A conditional put is checked even when not blocking.
    with pytest.raises(squall.ConflictError):
        capi.put(key, b"stale", previous_version_by_key=v1, blocking=False)
    assert capi.get(key).get_result()["value"] == b"2"


def test_non_blocking_put_becomes_visible(capi):
    key = unique("/demo") + "/nb"
    assert capi.put(key, b"later", blocking=False) is None
    assert wait_for(lambda: capi.get(key, stable=False).get_result()["value"] == b"later")


def test_trigger_put_stores_nothing(capi):
    key = unique("/cache") + "/trig"
    assert capi.put(key, b"fire", trigger=True) is None
    assert capi.get(key).get_result()["version"] == CURRENT_VERSION
    with pytest.raises(ValueError, match="as_trigger"):
        capi.put(key, b"fire", as_trigger=True)


def test_remove(capi):
    key = unique("/demo") + "/rm"
    v1, _ = capi.put(key, b"gone soon").get_result()
    rv, rts = capi.remove(key).get_result()
    assert rv > v1 and rts > 0
    assert capi.get(key).get_result()["version"] == CURRENT_VERSION
    assert capi.get_size(key).get_result() == 0
    # Persistent pools keep the history from before the removal.
    assert capi.get(key, version=v1).get_result()["value"] == b"gone soon"
    with pytest.raises(squall.NotFoundError):
        capi.remove(key)


def test_multi_get_and_sizes(capi):
    key = unique("/demo") + "/mg"
    version, _ = capi.put(key, b"x" * 1000).get_result()
    obj = capi.multi_get(key).get_result()
    assert obj["value"] == b"x" * 1000 and obj["version"] == version
    assert capi.get_size(key).get_result() == 1000
    assert capi.multi_get_size(key).get_result() == 1000
    missing = unique("/demo") + "/none"
    assert capi.multi_get(missing).get_result()["version"] == CURRENT_VERSION
    assert capi.multi_get_size(missing).get_result() == 0


def test_list_keys_in_object_pool(capi):
    base = unique("/demo")
    keys = [f"{base}/k{i}" for i in range(3)]
    _, ts0 = capi.put(keys[0], b"0").get_result()
    capi.put(keys[1], b"1").get_result()
    capi.put(keys[2], b"2").get_result()

    def listed(futures):
        assert all(isinstance(f, QueryResults) for f in futures)
        return {k for f in futures for k in f.get_result()}

    assert set(keys) <= listed(capi.list_keys_in_object_pool("/demo"))
    assert set(keys) <= listed(capi.list_keys_in_object_pool("/demo/"))
    assert set(keys) <= listed(capi.multi_list_keys_in_object_pool("/demo"))
    as_of_first = listed(capi.list_keys_in_object_pool("/demo", timestamp=ts0))
    assert keys[0] in as_of_first and keys[1] not in as_of_first

    with pytest.raises(ValueError):
        capi.list_keys_in_object_pool("/demo", version=5)
    with pytest.raises(squall.PoolError):
        capi.list_keys_in_object_pool(unique("/nopool"))


def test_object_pool_lifecycle(capi, cluster):
    pools = capi.list_object_pools()
    assert {"/demo", "/cache"} <= set(pools)
    demo = capi.get_object_pool("/demo")
    assert demo["pathname"] == "/demo"
    assert demo["subgroup_type_index"] == 1  # persistent, in Cascade's numbering
    assert demo["subgroup_index"] == 0
    assert demo["deleted"] is False
    assert capi.get_object_pool("/demo/some/key")["pathname"] == "/demo"

    path = "/cascadepool" + uuid.uuid4().hex[:8]
    capi.create_object_pool(path, VCSS, 0, affinity_set_regex="cam[0-9]+").get_result()
    assert path in capi.list_object_pools()
    meta = capi.get_object_pool(path)
    assert meta["subgroup_type_index"] == 0
    assert meta["affinity_set_regex"] == "cam[0-9]+"
    created = next(p for p in cluster.list_pools() if p.path == path)
    cache = next(p for p in cluster.list_pools() if p.path == "/cache")
    assert created.kind == "volatile" and created.subgroup == cache.subgroup

    capi.put(f"{path}/cam1/f", b"frame").get_result()
    assert capi.get(f"{path}/cam1/f").get_result()["value"] == b"frame"
    with pytest.raises(squall.PoolError):
        capi.create_object_pool(path, VCSS, 0)  # exists
    with pytest.raises(squall.PoolError):
        capi.create_object_pool(f"{path}/inner", VCSS, 0)  # would nest

    assert capi.remove_object_pool(path).get_result() is None
    assert path not in capi.list_object_pools()
    with pytest.raises(squall.PoolError):
        capi.get_object_pool(path)
    with pytest.raises(squall.PoolError):
        capi.put(f"{path}/cam1/f", b"frame")
    with pytest.raises(squall.PoolError):
        capi.remove_object_pool(path)


def test_create_object_pool_rejects_unknown_types_and_subgroups(capi):
    path = "/cascadebad" + uuid.uuid4().hex[:8]
    with pytest.raises(ValueError, match="unknown subgroup type"):
        capi.create_object_pool(path, "SidewaysStore", 0)
    n = capi.get_number_of_subgroups(VCSS)
    with pytest.raises(squall.PoolError, match="unknown"):
        capi.create_object_pool(path, VCSS, n)
    assert path not in capi.list_object_pools()


def test_placement_kwargs_are_checked_against_the_pool(capi):
    key = unique("/demo") + "/typed"
    v, _ = capi.put(key, b"ok", subgroup_type=PCSS, subgroup_index=0, shard_index=0).get_result()
    assert capi.get(key, subgroup_type=PCSS).get_result()["version"] == v
    with pytest.raises(squall.BadRequestError):
        capi.put(key, b"no", subgroup_type=VCSS)
    with pytest.raises(squall.BadRequestError):
        capi.get(key, subgroup_type=PCSS, subgroup_index=capi.get_number_of_subgroups(PCSS))
    with pytest.raises(ValueError):
        capi.remove(key, subgroup_type="Nonsense")
    assert capi.get(key).get_result()["value"] == b"ok"


def test_membership(capi, cluster):
    _, members = cluster.members()
    nodes = [m.node for m in members]
    assert capi.get_members() == nodes
    assert sorted(nodes) == [0, 1, 2]
    assert capi.get_my_id() == -1

    assert capi.get_number_of_subgroups(PCSS) >= 1
    assert capi.get_number_of_shards(PCSS, 0) == 1
    assert capi.get_subgroup_members(PCSS, 0) == [nodes]
    assert capi.get_shard_members(VCSS, 0, 0) == nodes
    assert capi.get_subgroup_members_by_object_pool("/cache") == [nodes]
    assert capi.get_shard_members_by_object_pool("/demo", 0) == nodes
    with pytest.raises(ValueError):
        capi.get_shard_members(PCSS, 0, 1)
    with pytest.raises(squall.PoolError):
        capi.get_shard_members_by_object_pool(unique("/nopool"), 0)

    if not any(p.kind == "trigger" for p in cluster.list_pools()):
        assert capi.get_number_of_subgroups(TCSS) == 0
        with pytest.raises(squall.PoolError):
            capi.get_subgroup_members(TCSS, 0)


def test_member_selection_policy(capi):
    assert capi.get_member_selection_policy(VCSS, 0, 0) == ("RoundRobin", INVALID_NODE_ID)
    capi.set_member_selection_policy(VCSS, 0, 0, "UserSpecified", 2)
    capi.set_member_selection_policy(PCSS, 0, 0, "KeyHashing")
    assert capi.get_member_selection_policy(VCSS, 0, 0) == ("UserSpecified", 2)
    assert capi.get_member_selection_policy(PCSS, 0, 0) == ("KeyHashing", INVALID_NODE_ID)
    with pytest.raises(ValueError):
        capi.set_member_selection_policy(VCSS, 0, 0, "Sideways")


def test_default_address_comes_from_the_environment(cluster, monkeypatch):
    monkeypatch.setenv("SQUALL_CLUSTER", ",".join(cluster.addrs))
    capi = ServiceClientAPI()
    key = unique("/cache") + "/env"
    capi.put(key, b"via env").get_result()
    assert cluster.get(key).tobytes() == b"via env"


def test_member_client_is_the_same_api():
    assert member_client.ServiceClientAPI is ServiceClientAPI
    assert member_client.CURRENT_VERSION == CURRENT_VERSION == -1
    assert ServiceClientAPI.CURRENT_VERSION == -1
    assert ServiceClientAPI.CASCADE_SUBGROUP_TYPES == [VCSS, PCSS, TCSS]


def test_timestamp_logger(tmp_path):
    logger = TimestampLogger()
    logger.clear()
    logger.log(1001, 0, 42)
    TimestampLogger().log(1002, 1, 42, 7)  # instances share one log, as in Cascade
    out = tmp_path / "ts.log"
    logger.flush(str(out))
    rows = [line.split() for line in out.read_text().splitlines()]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("1001", "0", "42", "0"),
        ("1002", "1", "42", "7"),
    ]
    assert int(rows[0][3]) <= int(rows[1][3])
    logger.flush(str(out))  # the first flush cleared the log
    assert out.read_text() == ""


def test_udl_base_class():
    class Incomplete(UserDefinedLogic):
        pass

    with pytest.raises(TypeError):
        Incomplete("{}")

    class Collect(UserDefinedLogic):
        def __init__(self, conf_str):
            super().__init__(conf_str)
            self.seen = []

        def ocdpo_handler(self, **kwargs):
            self.seen.append((kwargs["key"], kwargs["blob"].tobytes()))

    udl = Collect('{"k": 1}')
    assert udl.conf_str == '{"k": 1}'
    udl.ocdpo_handler(key="/in/a", blob=np.frombuffer(b"ab", dtype=np.uint8))
    assert udl.seen == [("/in/a", b"ab")]
