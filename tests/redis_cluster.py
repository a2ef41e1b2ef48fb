"""A real local Redis Cluster for tests: the machine's ``redis-server`` (7 or later) started as
``masters`` masters with ``replicas`` replicas each on free loopback ports, joined by
``redis-cli --cluster create``, and killed afterwards (their data lives in pytest's temporary
directories). The nodes themselves are started by :mod:`outerloop.storage.local_servers` (which
``outerloop bench cluster`` uses too); this module adds the fixtures and the skip mark.

Nothing is shared with other people: each fixture starts its own nodes (one cluster per test
module; the module's tests keep to their own key prefixes). Modules import the fixtures they
use (``cluster``, ``cluster_with_replicas``) and ``needs_cluster`` (the skip mark, with the
reason, where ``redis-server`` cannot run a cluster). :func:`local_pair` starts one master and its
replica (no cluster). The nodes can be killed (``SIGKILL``) or paused (``SIGSTOP``) one by one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from outerloop.storage.local_servers import (  # noqa: F401  (re-exported to the tests)
    REDIS_CLI,
    REDIS_SERVER,
    LocalCluster,
    LocalPair,
    local_cluster,
    local_pair,
    missing,
)

needs_cluster = pytest.mark.skipif(missing() is not None, reason=f"needs a Redis Cluster: {missing()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 masters, no replicas; one per test module (tests keep to their own key prefix)."""
    with local_cluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=0) as c:
        yield c


@pytest.fixture(scope="module")
def cluster_with_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 masters, each with one replica (6 nodes); one per test module (tests keep to their own
    key prefix)."""
    with local_cluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1) as c:
        yield c
