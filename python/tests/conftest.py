"""Fixtures: one real 3-node cluster (node processes from the wheel's `squall` binary,
or $SQUALL_BIN) shared by the tests of a session."""

import pytest

import squall


@pytest.fixture(scope="session")
def cluster():
    with squall.local_cluster(nodes=3) as c:
        yield c


@pytest.fixture
def client(cluster):
    with squall.Client(cluster.addrs) as c:
        yield c
