"""Run the daemon from Python, arq-style: ``outerloop.run_daemon(OuterLoop(...), settings)``.

    from outerloop import Artifacts, DaemonSettings, OuterLoop, run_daemon
    from mypkg.agents import new_this_week
    from mypkg.tools import new_releases

    loop = OuterLoop(Artifacts.load("runs/demo/artifacts"), agents=[new_this_week], tools=[new_releases])
    run_daemon(loop, DaemonSettings(max_concurrent_cycles=8))   # until SIGTERM / Ctrl-C

This is what ``outerloop daemon --artifacts DIR --agents ... --tools ...`` runs: the loop's cycles
behind :class:`~outerloop.scheduler.runners.OuterLoopRunner` (manual refreshes, the operators'
control, the console's journal), on the loop's own Redis and key namespace.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from outerloop.contracts.keys import SchedulerKeys
from outerloop.scheduler.daemon import Daemon, run_until_signalled
from outerloop.scheduler.sessionizer import Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.storage.clients import AsyncRedisClient, RedisTarget, daemon_async_client


async def serve_daemon(runner: Any, *, client: AsyncRedisClient, keys: SchedulerKeys, settings: DaemonSettings,
                       sessionizer: Sessionizer | None = None) -> None:
    """Run a daemon around ``runner`` until SIGTERM/SIGINT; closes the runner and ``client``."""
    daemon = Daemon(client=client, runner=runner, keys=keys, settings=settings, sessionizer=sessionizer,
                    sink=getattr(runner, "ingest", None))
    gc.collect()
    gc.freeze()  # the catalog and models live as long as the process: keep them out of GC passes
    try:
        await run_until_signalled(daemon)
    finally:
        if hasattr(runner, "aclose"):
            await runner.aclose()
        await client.aclose()


async def serve_loop(loop: Any, settings: DaemonSettings | None = None, *, sessionizer: Sessionizer | None = None,
                     stream_shards: int = 1, group: str = "outerloop-daemon") -> None:
    """:func:`run_daemon` inside a running event loop."""
    from outerloop.scheduler.runners import OuterLoopRunner
    from outerloop.scheduler.triggers import CatalogLookup

    settings = settings or DaemonSettings()
    keys = SchedulerKeys(base=loop.keys, group=group, shards=stream_shards)
    target = loop._redis_arg
    if isinstance(target, RedisTarget):  # the daemon's own client: its reads block for block_ms
        client = daemon_async_client(url=target.url, embedded_dir=target.embedded_dir, block_ms=settings.block_ms)
    else:  # a client you made: the loop and the daemon share it (not closed here)
        client = _Unclosed(target)
    if sessionizer is None:
        catalog = getattr(loop.artifacts, "catalog", None)
        sessionizer = Sessionizer(items=CatalogLookup(catalog)) if catalog is not None and len(catalog) else Sessionizer()
    await serve_daemon(OuterLoopRunner(loop, client, keys), client=client, keys=keys, settings=settings,
                       sessionizer=sessionizer)


def run_daemon(loop: Any, settings: DaemonSettings | None = None, *, sessionizer: Sessionizer | None = None,
               stream_shards: int = 1, group: str = "outerloop-daemon") -> None:
    """Consume the event stream and run ``loop``'s cycles for the users that need them, until
    SIGTERM or Ctrl-C (running cycles get ``settings.shutdown_grace_s`` to finish).

    ``loop`` is an :class:`~outerloop.OuterLoop` (its agents, tools, Redis and keys are the
    daemon's); ``settings`` a :class:`~outerloop.scheduler.settings.DaemonSettings`. Item facts
    for the genre and series triggers come from the loop's catalog unless ``sessionizer`` says
    otherwise."""
    asyncio.run(serve_loop(loop, settings, sessionizer=sessionizer, stream_shards=stream_shards, group=group))


class _Unclosed:
    """A caller's client, passed through with ``aclose`` left to its owner."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def aclose(self) -> None:
        return None
