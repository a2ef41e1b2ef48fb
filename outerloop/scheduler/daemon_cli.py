"""``outerloop daemon``: consume events, sessionize, trigger agent cycles.

``outerloop daemon --check`` exits 0 when a live daemon (or the one named by ``--consumer``)
refreshed its heartbeat within its TTL, 1 otherwise: the health probe for a supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from outerloop.agents.plugins import add_plugin_flags
from outerloop.budgets.priority import PRIORITIES, set_supervisor_priority
from outerloop.errors import UserInputError
from outerloop.storage.clients import AsyncRedisClient
from outerloop.telemetry import add_cli_flag, setup_for_cli
from outerloop.topology import add_topology_flags, topology_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    from outerloop.storage.embedded import EMBEDDED_LIFETIME

    parser.epilog = EMBEDDED_LIFETIME
    g = parser.add_argument_group("redis (the same settings as outerloop serve and outerloop mcp)")
    add_topology_flags(g)
    g.add_argument("--group", default="outerloop-daemon", help="consumer group name")
    g.add_argument("--consumer", default=None, help="consumer name (default: host-pid); also for --check")

    g = parser.add_argument_group("health")
    g.add_argument("--check", action="store_true", help="exit 0 if a daemon's heartbeat is live, else 1")

    g = parser.add_argument_group("cycles")
    g.add_argument("--artifacts", type=Path, default=None,
                   help="trained artifacts for the outer loop and the catalog (default: OUTERLOOP_ARTIFACTS_DIR)")
    add_plugin_flags(g, agents_help="your @agent specs, run beside the built-in agents (MODULE:NAME, a spec or a "
                                    "list of them; comma-separated, repeatable; the current directory is importable)",
                     tools_help="your @tool specs, for your agents to call (MODULE:NAME; comma-separated, repeatable)")
    g.add_argument("--runner", default="auto",
                   help="auto (outerloop when the artifacts exist, else rows) | outerloop | rows | "
                        "MODULE:FACTORY (factory(setup: outerloop.scheduler.runners.RunnerSetup) -> runner)")
    g.add_argument("--rows-work-ms", type=float, default=0.0, help="rows runner: simulated agent time")
    g.add_argument("--refresh-log", default=None,
                   help="rows and outerloop runners: a stream recording each cycle (its source events, the rows it "
                        "planned and committed, each agent run's outcome) for benchmarks and tests")
    g.add_argument("--activity-triggers", action="store_true", help="trigger a cycle on every interaction")
    g.add_argument("--max-cycles", type=int, default=16, help="concurrent cycles in this daemon")
    g.add_argument("--cycle-timeout-s", type=float, default=60.0, help="backstop over the agents' budgets")
    g.add_argument("--lock-ttl-s", type=float, default=10.0,
                   help="per-user lock lifetime (renewed while a cycle runs): how soon a dead daemon's users move")
    g.add_argument("--catalog", choices=("auto", "artifacts", "synthetic", "none"), default="auto",
                   help="item facts for the genre/series rules: the artifacts' catalog (auto, when present), "
                        "the synthetic world's (--world-*), or none")
    g.add_argument("--world-seed", type=int, default=0)
    g.add_argument("--world-films", type=int, default=900)
    g.add_argument("--world-series", type=int, default=35)

    g = parser.add_argument_group("stream")
    g.add_argument("--read-count", type=int, default=200)
    g.add_argument("--block-ms", type=int, default=1000)
    g.add_argument("--claim-interval-s", type=float, default=5.0)
    g.add_argument("--claim-min-idle-ms", type=int, default=30_000)
    g.add_argument("--max-deliveries", type=int, default=5)

    g = parser.add_argument_group("sessions and sweeps")
    g.add_argument("--session-gap-s", type=float, default=1800.0)
    g.add_argument("--lateness-ms", type=int, default=5000)
    g.add_argument("--session-sweep-interval-s", type=float, default=1.0)
    g.add_argument("--stale-sweep-interval-s", type=float, default=30.0)
    g.add_argument("--stale-after-s", type=float, default=3600.0)

    g = parser.add_argument_group("operating")
    g.add_argument("--shutdown-grace-s", type=float, default=20.0)
    g.add_argument("--heartbeat-interval-s", type=float, default=2.0)
    g.add_argument("--heartbeat-ttl-s", type=float, default=10.0)
    g.add_argument("--metrics-interval-s", type=float, default=10.0)
    g.add_argument("--log-level", default="INFO")
    g.add_argument("--priority", choices=PRIORITIES, default="normal",
                   help="CPU priority of the daemon (the budget enforcer): nice = nice -10, rt = SCHED_RR, so "
                        "kills stay punctual on a busy machine; agent workers and children stay normal "
                        "(raised modes need CAP_SYS_NICE)")
    add_cli_flag(g)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.topology = topology_from_args(args)  # bad values fail here, naming the flag
    if args.check:
        return asyncio.run(_check(args))
    from outerloop.agents.plugins import load_plugins

    args.plugins = load_plugins(args.agents, args.tools)  # bad references fail here, before Redis or models
    set_supervisor_priority(args.priority)  # before the worker pool starts: its helper threads inherit it
    setup_for_cli("outerloop-daemon", args.telemetry)  # the SDK's providers flush at exit
    asyncio.run(_serve(args))
    return 0


def _keys(args: argparse.Namespace) -> Any:
    from outerloop.contracts.keys import SchedulerKeys

    return SchedulerKeys.for_topology(_topology(args), group=args.group)


def _topology(args: argparse.Namespace) -> Any:
    topology = getattr(args, "topology", None)
    return topology if topology is not None else topology_from_args(args)


def _client(args: argparse.Namespace) -> Any:
    from outerloop.storage.clients import daemon_async_client

    topology = _topology(args)
    return daemon_async_client(url=topology.redis_url, embedded_dir=topology.embedded_dir, cluster=topology.cluster,
                        block_ms=args.block_ms)


async def _check(args: argparse.Namespace) -> int:
    from outerloop.scheduler.dispatch import REDIS_DOWN
    from outerloop.scheduler.health import live_daemons

    keys = _keys(args)
    client = _client(args)
    try:
        live = await live_daemons(client, keys, args.consumer)
    except REDIS_DOWN as exc:
        print(f"daemon check: Redis unreachable ({exc})", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    if not live:
        who = f"daemon {args.consumer!r}" if args.consumer else "any daemon"
        print(f"daemon check: no live heartbeat from {who}", file=sys.stderr)
        return 1
    for hb in live:
        print(f"live: {hb['consumer']} pid={hb['pid']} host={hb['host']} beat_ms={hb['beat_ms']}")
    return 0


def _artifacts_dir(args: argparse.Namespace) -> Path | None:
    """The artifacts directory if it holds trained artifacts."""
    from outerloop.config import get_settings

    path = Path(args.artifacts or get_settings().artifacts_dir)
    return path if (path / "manifest.json").is_file() else None


def _items(args: argparse.Namespace) -> Any:
    from outerloop.scheduler.triggers import CatalogLookup, no_item_info

    art = _artifacts_dir(args)
    choice = args.catalog
    if choice == "auto":
        choice = "artifacts" if art is not None else "none"
    if choice == "none":
        if args.catalog == "auto":
            logging.getLogger(__name__).warning("no catalog: genre and series triggers will not fire "
                                                "(pass --artifacts or --catalog synthetic)")
        return no_item_info
    if choice == "artifacts":
        if art is None:
            raise UserInputError(f"--catalog artifacts: no trained artifacts at {args.artifacts}")
        import json

        from outerloop.inner_loop.model.artifacts import CATALOG, catalog_from_json

        return CatalogLookup(catalog_from_json(json.loads((art / CATALOG).read_text())))
    from outerloop.data.synthetic import SyntheticWorld

    world = SyntheticWorld.generate(n_users=1, n_films=args.world_films, n_series=args.world_series,
                                    seed=args.world_seed)
    return CatalogLookup(world.catalog)


def _runner(args: argparse.Namespace, client: AsyncRedisClient, keys: Any) -> Any:
    from outerloop.agents.plugins import Plugins
    from outerloop.errors import UsageError
    from outerloop.scheduler.runners import RowRefreshRunner, RunnerSetup, outer_loop_runner

    name = args.runner
    art = _artifacts_dir(args)
    plugins: Plugins = getattr(args, "plugins", None) or Plugins()
    if name == "rows" or (name == "auto" and art is None):
        if plugins.agents or plugins.tools:
            where = f"no trained artifacts at {args.artifacts}" if art is None else "--runner rows"
            raise UserInputError(f"--agents/--tools need the outer loop, which needs trained artifacts "
                                 f"(--artifacts DIR); {where}")
        if name == "auto":
            logging.getLogger(__name__).warning("no trained artifacts: cycles run the row-refresh runner")
        return RowRefreshRunner(client, keys=keys.base, work_ms=args.rows_work_ms, refresh_log=args.refresh_log)
    setup = RunnerSetup(client=client, keys=keys, artifacts_dir=art, agents=plugins.agents, tools=plugins.tools,
                        refresh_log=args.refresh_log)
    if name in ("auto", "outerloop"):
        if art is None:
            raise UserInputError(f"--runner outerloop needs trained artifacts (--artifacts; none at {args.artifacts})")
        factory: Any = outer_loop_runner
    else:
        module, sep, attr = name.partition(":")
        if not sep:
            raise UserInputError(f"--runner must be auto, outerloop, rows or MODULE:FACTORY, got {name!r}")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise UserInputError(f"--runner {name}: {exc}") from exc
    try:
        return factory(setup)
    except UsageError as exc:  # e.g. an agent declaring a tool nobody registered
        raise UserInputError(f"--agents/--tools: {exc}") from None


async def _serve(args: argparse.Namespace) -> None:
    from outerloop.scheduler.run import serve_daemon
    from outerloop.scheduler.sessionizer import SessionSettings, Sessionizer
    from outerloop.scheduler.settings import DaemonSettings, default_consumer_name
    from outerloop.contracts.triggers import TriggerRules

    keys = _keys(args)
    client = _client(args)
    settings = DaemonSettings(
        consumer=args.consumer or default_consumer_name(),
        read_count=args.read_count, block_ms=args.block_ms,
        claim_interval_s=args.claim_interval_s, claim_min_idle_ms=args.claim_min_idle_ms,
        max_deliveries=args.max_deliveries, max_concurrent_cycles=args.max_cycles,
        cycle_timeout_s=args.cycle_timeout_s, lock_ttl_s=args.lock_ttl_s, shutdown_grace_s=args.shutdown_grace_s,
        session_sweep_interval_s=args.session_sweep_interval_s,
        stale_sweep_interval_s=args.stale_sweep_interval_s, stale_after_s=args.stale_after_s,
        heartbeat_interval_s=args.heartbeat_interval_s, heartbeat_ttl_s=args.heartbeat_ttl_s,
        metrics_interval_s=args.metrics_interval_s,
    )
    sessionizer = Sessionizer(
        sessions=SessionSettings(gap_ms=int(args.session_gap_s * 1000), lateness_ms=args.lateness_ms),
        rules=TriggerRules(on_activity=args.activity_triggers),
        items=_items(args),
    )
    try:
        runner = _runner(args, client, keys)
    except BaseException:
        await client.aclose()
        raise
    await serve_daemon(runner, client=client, keys=keys, settings=settings, sessionizer=sessionizer)
