"""Fixtures for the store tests: a real etcd per pytest worker, and a fresh key prefix per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.store.etcd import EtcdStore
from cnm.testing.etcd import EtcdCluster, start_cluster


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for this worker's whole session, on free loopback ports, stopped by PID."""
    cluster = start_cluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_name() -> str:
    """A key prefix (``/cnm/<name>/``) no other test uses."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def etcd_store(etcd_server: EtcdCluster, cluster_name: str) -> Iterator[EtcdStore]:
    """An EtcdStore on the session's etcd, under this test's own prefix."""
    store = EtcdStore(etcd_server.endpoints, cluster=cluster_name, timeout=5.0)
    yield store
    store.close()


@pytest.fixture
def etcd_cluster3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member cluster of this test's own (members may be killed)."""
    cluster = start_cluster(tmp_path / "etcd3", size=3)
    yield cluster
    cluster.stop()
