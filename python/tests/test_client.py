"""Every client call against a real 3-node cluster (node processes)."""

import threading
import time
import uuid

import numpy as np
import pytest

import squall


def unique(prefix):
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


def test_put_get_roundtrip(client):
    key = unique("/demo/c")
    version, ts = client.put(key, b"hello")
    obj = client.get(key)
    assert bytes(obj.value) == b"hello"
    assert obj.key == key
    assert (obj.version, obj.timestamp_us) == (version, ts)
    assert squall.format_version(version).startswith("v")


def test_values_in_every_buffer_kind(client):
    base = unique("/cache/kinds")
    arr = np.arange(16, dtype=np.float32)
    cases = {
        "bytes": (b"abc", b"abc"),
        "bytearray": (bytearray(b"xyz"), b"xyz"),
        "memoryview": (memoryview(b"0123456789")[2:5], b"234"),
        "numpy": (arr, arr.tobytes()),
        "str": ("héllo", "héllo".encode()),
    }
    for name, (value, expected) in cases.items():
        client.put(f"{base}/{name}", value)
        assert bytes(client.get(f"{base}/{name}").value) == expected, name
    back = np.frombuffer(client.get(f"{base}/numpy").value, dtype=np.float32)
    assert np.array_equal(back, arr)


def test_get_does_not_copy(client):
    key = unique("/cache/zc")
    client.put(key, np.arange(1 << 16, dtype=np.uint8))
    obj = client.get(key)
    a = np.frombuffer(obj.value, dtype=np.uint8)
    b = np.frombuffer(obj.value, dtype=np.uint8)
    m = memoryview(obj.value)
    # Two views of one object share one address, the Rust buffer's; nothing owns a copy.
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0] == obj.value.address
    assert not a.flags.owndata and not a.flags.writeable
    assert m.readonly and m.nbytes == 1 << 16
    with pytest.raises(ValueError):
        a[0] = 1


def test_versions_time_and_stable_reads(client):
    key = unique("/demo/tt")
    v1, t1 = client.put(key, b"one")
    v2, t2 = client.put(key, b"two")
    assert v2 > v1 and t2 >= t1
    assert bytes(client.get(key, version=v1).value) == b"one"
    assert bytes(client.get(key, timestamp_us=t1).value) == b"one"
    assert bytes(client.get(key, timestamp_us=t2).value) == b"two"
    assert bytes(client.get(key, stable=True).value) == b"two"
    assert client.get(key, version=v2).previous_version_by_key == v1
    with pytest.raises(squall.NotVersionedError):
        client.get(unique("/cache/nv"), version=v1)
    with pytest.raises(ValueError):
        client.get(key, version=v1, stable=True)


def test_compact_forgets_history_before_a_time(client):
    """Compacting one pool: a key not written since keeps its value as of the point;
    reads before it raise ``CompactedError``; another pool of the same subgroup keeps
    its history."""
    pool = unique("/hist")
    client.create_pool(pool, "persistent")
    other = unique("/demo/kept")
    o1, _ = client.put(other, b"old")
    client.put(other, b"new")
    key = f"{pool}/k"
    v1, t1 = client.put(key, b"one")
    v2, t2 = client.put(key, b"two")
    time.sleep(0.002)
    shards = client.compact(pool)
    assert sum(s["versions_dropped"] for s in shards) == 1, shards
    assert [s["through"] for s in shards if s["through"] is not None] == [v2], shards
    assert bytes(client.get(key).value) == b"two"
    assert bytes(client.get(key, timestamp_us=t2).value) == b"two"
    with pytest.raises(squall.CompactedError) as e:
        client.get(key, timestamp_us=t1)
    assert e.value.code == "compacted" and isinstance(e.value, squall.SquallError)
    with pytest.raises(squall.CompactedError):
        client.get(key, version=v1)
    with pytest.raises(squall.CompactedError):
        client.list_keys(pool, timestamp_us=t1)
    assert bytes(client.get(other, version=o1).value) == b"old"
    with pytest.raises(squall.NotVersionedError):
        client.compact("/cache")
    with pytest.raises(squall.PoolError):
        client.compact(unique("/nowhere"))
    client.remove_pool(pool)


def test_conditional_puts(client):
    key = unique("/demo/cond")
    v1, _ = client.put(key, b"a", if_absent=True)
    with pytest.raises(squall.ConflictError) as e:
        client.put(key, b"b", if_absent=True)
    assert e.value.current_version == v1 and e.value.code == "conflict"
    v2, _ = client.put(key, b"b", previous_version_by_key=v1)
    with pytest.raises(squall.ConflictError):
        client.put(key, b"c", previous_version_by_key=v1)
    assert bytes(client.get(key).value) == b"b" and client.get(key).version == v2


def test_remove_size_list_multi_get(client):
    base = unique("/demo/l")
    for i in range(3):
        client.put(f"{base}/k{i}", b"x" * (i + 1))
    assert client.get_size(f"{base}/k2") == 3
    assert client.list_keys(base) == [f"{base}/k{i}" for i in range(3)]
    assert client.list_keys(base + "/") == client.list_keys(base)
    objs = client.multi_get([f"{base}/k0", f"{base}/k1", f"{base}/missing"])
    assert [bytes(o.value) for o in objs[:2]] == [b"x", b"xx"] and objs[2] is None
    version, _ = client.remove(f"{base}/k0")
    assert client.get(f"{base}/k0") is None
    assert client.get_size(f"{base}/k0") is None
    assert client.list_keys(base) == [f"{base}/k1", f"{base}/k2"]
    # The removed key's old version is still there (a persistent pool keeps history).
    assert bytes(client.get(f"{base}/k0", version=objs[0].version).value) == b"x"
    assert version > objs[0].version
    with pytest.raises(squall.NotFoundError):
        client.remove(unique("/demo/never"))


def test_put_and_forget_and_trigger_put(client):
    key = unique("/cache/paf")
    client.put_and_forget(key, b"later")
    deadline = time.monotonic() + 10
    while client.get(key) is None:
        assert time.monotonic() < deadline, "put_and_forget never applied"
        time.sleep(0.02)
    assert bytes(client.get(key).value) == b"later"
    # A trigger_put stores nothing.
    tkey = unique("/cache/trig")
    client.trigger_put(tkey, b"t")
    assert client.get(tkey) is None


def test_pools_and_members(client):
    view_id, members = client.members()
    assert view_id >= 1 and len(members) == 3
    assert sorted(m.node for m in members) == [0, 1, 2]
    path = unique("/pytestpool")
    client.create_pool(path, "volatile")
    assert any(p.path == path and p.kind == "volatile" for p in client.list_pools())
    assert client.find_pool(f"{path}/k").path == path
    client.put(f"{path}/k", b"v")
    with pytest.raises(squall.PoolError) as e:
        client.create_pool(path, "volatile")
    assert e.value.code == "pool_exists"
    with pytest.raises(squall.PoolError) as e:
        client.create_pool(f"{path}/inner", "volatile")
    assert e.value.code == "nested_pool"
    client.remove_pool(path)
    with pytest.raises(squall.PoolError):
        client.find_pool(f"{path}/k")
    with pytest.raises(ValueError):
        client.create_pool(unique("/badkind"), "sideways")
    # A pool must live in a subgroup of its kind.
    volatile_subgroup = next(p.subgroup for p in client.list_pools() if p.kind == "volatile")
    with pytest.raises(squall.PoolError) as e:
        client.create_pool(unique("/wrongkind"), "persistent", subgroup=volatile_subgroup)
    assert e.value.code == "invalid_pool"


def test_watch_sees_puts_and_removes(client):
    prefix = unique("/demo/w")
    watch = client.watch(prefix)
    client.put(f"{prefix}/a", b"1")
    client.put(f"{prefix}/b", b"2")
    client.remove(f"{prefix}/a")
    events = [watch.next(timeout_s=10) for _ in range(3)]
    assert [(e.key, e.removed) for e in events] == [
        (f"{prefix}/a", False),
        (f"{prefix}/b", False),
        (f"{prefix}/a", True),
    ]
    assert bytes(events[1].value) == b"2"
    with pytest.raises(TimeoutError):
        watch.next(timeout_s=0.2)
    watch.close()


def test_root_lists_and_watches_every_pool(client):
    keys = [unique("/demo/everywhere"), unique("/cache/everywhere")]
    watch = client.watch("/")
    for key in keys:
        client.put(key, b"v")
    listed = client.list_keys("/")
    assert all(key in listed for key in keys), listed
    seen = set()
    while seen != set(keys):
        event = watch.next(timeout_s=10)
        if event.key in keys:
            seen.add(event.key)
    watch.close()


def test_bad_input_is_a_clear_error_and_changes_nothing(client, cluster):
    with pytest.raises(squall.PoolError) as e:
        client.put("/nopool/x", b"1")
    assert e.value.code == "no_pool_for_key"
    with pytest.raises(squall.InvalidKeyError):
        client.put("relative/key", b"1")
    with pytest.raises(TypeError):
        client.put(unique("/demo/t"), 12345)
    with pytest.raises(TypeError):
        client.put(unique("/demo/t"), np.arange(10)[::2])  # not contiguous
    with pytest.raises(TypeError):
        client.put(None, b"x")
    with pytest.raises(squall.TooLargeError):
        client.put(unique("/cache/big"), bytes((64 << 20) + 1))
    with pytest.raises(squall.TooLargeError):
        client.put(unique("/cache/big"), bytes(100 << 20))
    with pytest.raises(ValueError):
        squall.Client(cluster.addrs, policy="sideways")
    with pytest.raises(squall.ConnectError):
        squall.Client("127.0.0.1:1")
    # The cluster is unharmed.
    key = unique("/demo/after")
    client.put(key, b"fine")
    assert bytes(client.get(key).value) == b"fine"


def test_closed_client_raises(cluster):
    c = squall.Client(cluster.addrs)
    c.close()
    with pytest.raises(squall.UnavailableError):
        c.get("/demo/x")


def test_blocking_calls_release_the_gil(client):
    # A watch blocked in next() must not stop this thread from putting.
    prefix = unique("/cache/gil")
    watch = client.watch(prefix)
    got = []
    t = threading.Thread(target=lambda: got.append(watch.next(timeout_s=10)))
    t.start()
    time.sleep(0.1)
    client.put(f"{prefix}/k", b"v")
    t.join(15)
    assert got and got[0].key == f"{prefix}/k"


def test_async_client(cluster):
    import asyncio

    async def main():
        async with squall.AsyncClient(cluster.addrs) as c:
            base = unique("/demo/async")
            results = await asyncio.gather(*(c.put(f"{base}/{i}", bytes([i])) for i in range(20)))
            assert len({v for v, _ in results}) == 20
            objs = await asyncio.gather(*(c.get(f"{base}/{i}") for i in range(20)))
            assert [bytes(o.value) for o in objs] == [bytes([i]) for i in range(20)]
            assert await c.list_keys(base) == sorted(f"{base}/{i}" for i in range(20))
            watch = await c.watch(base)
            await c.put(f"{base}/w", b"w")
            event = await asyncio.wait_for(watch.__anext__(), 10)
            assert event.key == f"{base}/w"
            with pytest.raises(squall.PoolError):
                await c.get("/nopool/x")
            view_id, members = await c.members()
            assert len(members) == 3

    asyncio.run(main())
