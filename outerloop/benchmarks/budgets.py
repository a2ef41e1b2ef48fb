"""Budget enforcement under adversarial agents: prints one JSON object with ``--json``.

    python bench/budgets.py --json                 # embedded Redis in a temp dir
    python bench/budgets.py --json --redis-url redis://127.0.0.1:6379

Runs (default 1,200, mixed and concurrent):

* ``sleeper``      async, sleeps far past its deadline: cancelled.
* ``swallower``    async, swallows the first cancellation and sleeps again: cancelled again.
* ``late_writer``  async, stages a write and, when cancelled, fires a direct write with its
                   fencing token: the run is cancelled and the write must be refused.
* ``tool_hog``     async, keeps calling tools past ``max_tool_calls``: over_tool_budget.
* ``token_hog``    async, keeps spending LLM tokens past ``max_llm_tokens``: over_token_budget.
* ``spinner``      isolated CPU loop: its worker process is SIGKILLed at the deadline.
* ``isolated_late_writer``  isolated; spins until just past its deadline, then writes with its
                   token from inside the worker: killed, or refused by the server-side
                   deadline check, never committed.
* ``ok``           async, stages a write and returns in time: committed (a control group).

Ground truth is read back from Redis at the end: every late write and every staged write of a
run that did not end ``ok`` must be absent, every ``ok`` write present. Exit code 1 when a
requirement fails (``overrun_p99_ms`` <= 10, ``retries`` == 0, ``late_writes_committed`` == 0).

Then the naive blocking agent (``blocking`` in the JSON): an ``async def`` agent that does
``--blocker-ms`` of CPU work without awaiting under a 100 ms budget, run ``--blocking-runs``
times while well-behaved agents run their cycles beside it (each cycle: three short in-process
runs, one started every 20 ms, its time taken from when it was due, so waiting on a blocked loop
counts), once with the enforcer's watchdog and once without. Reported: the first offence's
overrun, the later runs' overruns (p50/p99; with the watchdog they run isolated, in a worker
SIGKILLed at the deadline, once the worker pool started on the first offence is warm), and the
well-behaved cycles' P50/P99. Requirement: later overrun p99 <= 10 ms with the watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from outerloop.budgets import (
    Accounting,
    Budget,
    Enforcer,
    Fence,
    FenceRejected,
    RunContext,
    RunRecord,
    StagedWrite,
    WorkerPool,
    percentile,
)
from outerloop.budgets.priority import PRIORITIES, set_supervisor_priority
from outerloop.contracts.keys import namespaced_keys
from outerloop.storage.clients import RedisTarget
from outerloop.storage.embedded import embedded_socket, release_embedded

MIX: dict[str, float] = {  # share of runs per kind
    "sleeper": 0.25,
    "swallower": 0.08,
    "late_writer": 0.17,
    "tool_hog": 0.12,
    "token_hog": 0.04,
    "spinner": 0.17,
    "isolated_late_writer": 0.08,
    "ok": 0.09,
}
ISOLATED = {"spinner", "isolated_late_writer"}
P99_LIMIT_MS = 10.0


@dataclass(frozen=True, slots=True)
class Deps:
    """What the agents get through ``ctx.deps`` (picklable, for isolated agents too)."""

    redis_url: str
    prefix: str
    staged_key: str  # a key of the run's user that the run stages
    late_key: str  # a key of the run's user that a late write targets


# -- agents --------------------------------------------------------------------------------------
async def sleeper(ctx: RunContext) -> None:
    await asyncio.sleep(ctx.budget.latency_s * 10)


async def swallower(ctx: RunContext) -> None:
    try:
        await asyncio.sleep(ctx.budget.latency_s * 10)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(ctx.budget.latency_s * 10)


async def late_writer(ctx: RunContext, fence: Fence, late: list[asyncio.Task[Any]]) -> None:
    ctx.stage(ctx.deps.staged_key, "staged")
    try:
        await asyncio.sleep(ctx.budget.latency_s * 10)
    except asyncio.CancelledError:
        write = StagedWrite(ctx.deps.late_key, "late")
        late.append(asyncio.ensure_future(fence.commit(ctx.user_id, ctx.fencing_token, [write])))
        raise


async def tool_hog(ctx: RunContext) -> None:
    ctx.stage(ctx.deps.staged_key, "staged")
    while True:
        ctx.count_tool_call()
        await asyncio.sleep(0)


async def token_hog(ctx: RunContext) -> None:
    ctx.stage(ctx.deps.staged_key, "staged")
    while True:
        ctx.count_tokens(97)
        await asyncio.sleep(0)


async def ok(ctx: RunContext) -> str:
    ctx.stage(ctx.deps.staged_key, "committed")
    await asyncio.sleep(0.001)
    return "done"


async def naive_blocker(ctx: RunContext) -> None:
    """The most common mistake: CPU work in an async def agent, never awaiting."""
    ctx.stage(ctx.deps.staged_key, "staged")
    end = time.perf_counter() + ctx.deps.burn_ms / 1000.0
    x = 0
    while time.perf_counter() < end:
        x = (x * 31 + 7) % 1_000_003


async def well_behaved(ctx: RunContext) -> str:
    """Awaits its I/O and stages a write: what a good in-process agent looks like."""
    await asyncio.sleep(0.002)
    ctx.stage(ctx.deps.staged_key, "committed")
    return "done"


@dataclass(frozen=True, slots=True)
class BlockDeps:
    staged_key: str
    burn_ms: float


def spinner(ctx: RunContext) -> None:
    ctx.stage(ctx.deps.staged_key, "staged")
    x = 0
    while True:
        x += 1


async def isolated_late_writer(ctx: RunContext) -> None:
    """Runs in a worker process: connects first, then writes just after its deadline."""
    client = aioredis.Redis.from_url(ctx.deps.redis_url)
    fence = Fence(client, keys=namespaced_keys(ctx.deps.prefix))
    await client.ping()
    while time.monotonic() < ctx.deadline + 0.0005:  # CPU-bound until just past the deadline
        pass
    await fence.commit(ctx.user_id, ctx.fencing_token, [StagedWrite(ctx.deps.late_key, "late")])


# -- the bench -----------------------------------------------------------------------------------
async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    if args.redis_url:
        target, url = RedisTarget(url=args.redis_url), args.redis_url
    else:
        target = RedisTarget(embedded_dir=Path(tempfile.mkdtemp(prefix="ol-bench-redis-")))
        url = f"unix://{embedded_socket(target.embedded_dir)}"
    prefix = f"olbench-{uuid.uuid4().hex[:10]}"
    keys = namespaced_keys(prefix)
    client = target.async_client()
    fence = Fence(client, keys=keys)
    # Open the connections up front: a new redis-py connection runs a blocking
    # importlib.metadata lookup (and a TCP connect) on the event loop, which would otherwise
    # land in the middle of the measured runs whenever concurrency reaches a new peak.
    # (redis-py's asyncio pool holds at most 100 connections by default.)
    await asyncio.gather(*(client.ping() for _ in range(min(90, 2 * args.concurrency))))
    module = spinner.__module__
    kinds = [k for k, share in MIX.items() for _ in range(round(share * args.runs))]
    rng.shuffle(kinds)

    acct = Accounting()
    executions: dict[int, int] = {}  # enforcer runs per planned run: a retry would make one 2
    late_tasks: list[asyncio.Task[Any]] = []
    plans: list[tuple[int, str, Deps]] = []
    outcomes: dict[int, str] = {}
    async_gate = asyncio.Semaphore(args.concurrency)
    isolated_gate = asyncio.Semaphore(args.isolated_concurrency)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    pool = WorkerPool(size=args.isolated_concurrency + args.spares, preload=[module],
                      worker_nice=args.worker_nice, hasten_exit=not args.no_hasten_exit)
    async with pool:
        enforcer = Enforcer(fence=fence, pool=pool, watchdog=not args.no_watchdog)
        pool_ready_s = time.monotonic() - t0

        async def one(i: int, kind: str) -> None:
            user = f"user-{rng.randrange(args.users)}"
            deps = Deps(url, prefix, keys.user(user, f"staged:{i}"), keys.user(user, f"late:{i}"))
            plans.append((i, kind, deps))
            budget = Budget(latency_ms=rng.uniform(args.min_budget_ms, args.max_budget_ms),
                            max_tool_calls=5, max_llm_tokens=500)
            fn, extra = globals()[kind], ()
            if kind == "late_writer":
                extra = (fence, late_tasks)
            gate = isolated_gate if kind in ISOLATED else async_gate
            async with gate:
                executions[i] = executions.get(i, 0) + 1
                record = await enforcer.run(fn, budget, *extra, agent=kind, user_id=user,
                                            isolated=kind in ISOLATED, deps=deps)
            acct.add(record)
            outcomes[i] = record.outcome

        lags: list[float] = []
        t1 = time.monotonic()
        runs = [asyncio.ensure_future(one(i, kind)) for i, kind in enumerate(kinds)]
        monitor = asyncio.ensure_future(_watch_loop_lag(lags))  # after the bulk task creation
        await asyncio.gather(*runs)
        runs_s = time.monotonic() - t1
        monitor.cancel()
        for task in late_tasks:
            try:
                await task
                acct.note_late_write(committed=True)
            except FenceRejected:
                acct.note_late_write(committed=False)
        await pool.wait_full()
        stats = pool.stats

    # ground truth, from Redis
    late_present = killed_staged_present = ok_missing = 0
    for i, kind, deps in plans:
        staged_present = await client.exists(deps.staged_key)
        if outcomes[i] == "ok":
            ok_missing += 1 - staged_present
        else:
            killed_staged_present += staged_present
        if kind in ("late_writer", "isolated_late_writer"):
            late_present += await client.exists(deps.late_key)
    ok_records = sum(1 for r in acct.records if r.outcome == "ok")
    blocking = {}
    if args.blocking_runs > 0:
        for watched in (True, False):
            blocking["watchdog" if watched else "no_watchdog"] = await _blocking(args, fence, keys, watched)
    await _cleanup(client, prefix)
    await client.aclose()
    if not args.redis_url:
        release_embedded(target.embedded_dir, save=False)
        shutil.rmtree(target.embedded_dir, ignore_errors=True)
    load_after = os.getloadavg()

    summary = acct.summary(by="agent")
    out: dict[str, Any] = {
        "bench": "budgets",
        "runs": summary["runs"],
        "killed": summary["killed"],
        "overrun_p50_ms": summary["overrun_p50_ms"],
        "overrun_p99_ms": summary["overrun_p99_ms"],
        "overrun_max_ms": summary["overrun_max_ms"],
        "retries": sum(n - 1 for n in executions.values()) + summary["retries"],
        "late_writes_committed": max(late_present, summary["late_writes_committed"]),
        "late_writes_refused": summary["late_writes_refused"],
        "not_ok_staged_writes_committed": killed_staged_present,
        "ok_runs": ok_records,
        "ok_writes_missing": ok_missing,
        "over_tool_budget": summary["over_tool_budget"],
        "over_token_budget": summary["over_token_budget"],
        "errors": summary["errors"],
        "not_stopped": summary["not_stopped"],
        "by_kind": {k: {f: v[f] for f in ("runs", "ok", "killed", "over_tool_budget",
                                          "over_token_budget", "errors", "overrun_p50_ms",
                                          "overrun_p99_ms", "overrun_max_ms")}
                    for k, v in summary["by_agent"].items()},
        "spares": {
            "pool_size": args.isolated_concurrency + args.spares,
            "workers_started": stats.started,
            "workers_killed": stats.killed,
            "replacement_p50_ms": _r(percentile(stats.replacement_ms, 50)),
            "replacement_p99_ms": _r(percentile(stats.replacement_ms, 99)),
            "acquire_wait_p50_ms": _r(percentile(stats.acquire_wait_ms, 50)),
            "acquire_wait_p99_ms": _r(percentile(stats.acquire_wait_ms, 99)),
            "pool_start_s": round(pool_ready_s, 2),
        },
        "event_loop_lag_ms": {"p50": _r(percentile(lags, 50)), "p99": _r(percentile(lags, 99)),
                              "max": _r(max(lags) if lags else None)},
        "config": {
            "seed": args.seed, "concurrency": args.concurrency,
            "isolated_concurrency": args.isolated_concurrency, "users": args.users,
            "budget_ms": [args.min_budget_ms, args.max_budget_ms],
            "redis": "server" if args.redis_url else "embedded",
            "start_method": "forkserver", "priority": args.priority,
            "worker_nice": args.worker_nice, "hasten_exit": not args.no_hasten_exit,
            "watchdog": not args.no_watchdog,
        },
        "machine": {
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "elapsed_s": round(runs_s, 2),
        "blocking": blocking,
    }
    watched = blocking.get("watchdog")
    out["pass"] = (
        out["overrun_p99_ms"] is not None and out["overrun_p99_ms"] <= P99_LIMIT_MS
        and out["retries"] == 0 and out["late_writes_committed"] == 0
        and out["not_ok_staged_writes_committed"] == 0 and out["ok_writes_missing"] == 0
        and (watched is None or (watched["later_overrun_p99_ms"] is not None
                                 and watched["later_overrun_p99_ms"] <= P99_LIMIT_MS
                                 and watched["staged_writes_committed"] == 0))
    )
    return out


async def _blocking(args: argparse.Namespace, fence: Fence, keys: Any, watchdog: bool) -> dict[str, Any]:
    """The naive blocking agent beside well-behaved cycles, with or without the watchdog."""
    module = naive_blocker.__module__
    enforcer = Enforcer(fence=fence, watchdog=watchdog,
                        pool_factory=lambda: WorkerPool(size=2, preload=[module], worker_nice=args.worker_nice))
    tag = "wd" if watchdog else "nowd"
    blocker_budget = Budget(latency_ms=100.0)
    polite_budget = Budget(latency_ms=50.0)
    records: list[RunRecord] = []
    staged_keys: list[str] = []
    cycles_ms: list[tuple[float, float]] = []  # (due, ms)
    done = asyncio.Event()
    pool_wait_s = 0.0
    first_done = float("inf")

    async def blocker_runs() -> None:
        nonlocal pool_wait_s, first_done
        for i in range(args.blocking_runs):
            key = keys.user(f"blocker-{tag}", f"staged:{i}")
            staged_keys.append(key)
            if i == 1 and enforcer.demoted("naive_blocker") == "isolate":
                t0 = time.monotonic()
                await enforcer.pool_ready()  # started on the first offence
                pool_wait_s = time.monotonic() - t0
            records.append(await enforcer.run(naive_blocker, blocker_budget, agent="naive_blocker",
                                              user_id=f"blocker-{tag}", deps=BlockDeps(key, args.blocker_ms)))
            first_done = min(first_done, time.monotonic())
            await asyncio.sleep(args.blocking_spacing_ms / 1000.0)
        done.set()

    async def cycle(n: int, due: float) -> None:
        user = f"polite-{tag}-{n % 20}"
        for j in range(3):
            await enforcer.run(well_behaved, polite_budget, agent="well_behaved", user_id=user,
                               deps=BlockDeps(keys.user(user, f"ok:{n}:{j}"), 0.0))
        cycles_ms.append((due, (time.monotonic() - due) * 1000.0))

    async def cycles() -> None:
        tasks, n, t0 = [], 0, time.monotonic()
        while not done.is_set():
            due = t0 + n * 0.020
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(cycle(n, due)))
            n += 1
        await asyncio.gather(*tasks)

    started = time.monotonic()
    await asyncio.gather(blocker_runs(), cycles())
    elapsed = time.monotonic() - started
    await enforcer.aclose()
    committed = sum([await fence.redis.exists(k) for k in staged_keys])
    first, later = records[0], records[1:]
    over = [r.overrun_ms for r in later if r.outcome == "killed"]
    every = [ms for _, ms in cycles_ms]
    after = [ms for due, ms in cycles_ms if due >= first_done]
    return {
        "blocker_runs": len(records), "blocker_ms": args.blocker_ms, "budget_ms": blocker_budget.latency_ms,
        "first_offence": {"outcome": first.outcome, "error": first.error, "overrun_ms": _r(first.overrun_ms)},
        "first_offence_overrun_ms": _r(first.overrun_ms),
        "later_killed": len(over), "later_isolated": sum(r.isolated for r in later),
        "later_overrun_p50_ms": _r(percentile(over, 50)), "later_overrun_p99_ms": _r(percentile(over, 99)),
        "later_overrun_max_ms": _r(max(over) if over else None),
        "staged_writes_committed": committed,
        "well_behaved_cycles": len(every),
        "well_behaved_cycle_p50_ms": _r(percentile(every, 50)),
        "well_behaved_cycle_p99_ms": _r(percentile(every, 99)),
        "well_behaved_cycle_max_ms": _r(max(every) if every else None),
        "after_first_offence": {"cycles": len(after), "p50_ms": _r(percentile(after, 50)),
                                "p99_ms": _r(percentile(after, 99)), "max_ms": _r(max(after) if after else None)},
        "isolation_pool_wait_s": round(pool_wait_s, 2),
        "elapsed_s": round(elapsed, 2),
    }


async def _watch_loop_lag(lags: list[float], every_s: float = 0.002) -> None:
    """How late the event loop wakes up (ms): the floor under every in-process overrun."""
    while True:
        due = time.monotonic() + every_s
        await asyncio.sleep(every_s)
        lags.append((time.monotonic() - due) * 1000.0)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def _cleanup(client: aioredis.Redis, prefix: str) -> None:
    doomed = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(doomed), 500):
        await client.delete(*doomed[i:i + 500])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outerloop bench budgets", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object (else a summary)")
    p.add_argument("--runs", type=int, default=1200, help="agent runs in total")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--redis-url", default=os.environ.get("OUTERLOOP_REDIS_URL"),
                   help="a real server (default: OUTERLOOP_REDIS_URL, else embedded)")
    p.add_argument("--concurrency", type=int, default=32, help="in-process runs at once")
    p.add_argument("--isolated-concurrency", type=int, default=1, help="isolated runs at once")
    p.add_argument("--spares", type=int, default=2, help="warm workers beyond the concurrency")
    p.add_argument("--users", type=int, default=50, help="distinct users (fencing is per user)")
    p.add_argument("--worker-nice", type=int, default=10, help="nice of isolated workers")
    p.add_argument("--no-hasten-exit", action="store_true",
                   help="do not lift killed workers to real-time priority to exit")
    p.add_argument("--priority", choices=PRIORITIES, default="normal",
                   help="the supervising process: nice = nice -10, rt = SCHED_RR; both reset "
                        "to normal in child processes and threads (needs CAP_SYS_NICE)")
    p.add_argument("--no-watchdog", action="store_true",
                   help="the adversarial runs without the event-loop watchdog (to measure what it costs)")
    p.add_argument("--blocking-runs", type=int, default=12,
                   help="runs of the naive blocking agent, with and without the watchdog (0: skip that part)")
    p.add_argument("--blocker-ms", type=float, default=1000.0, help="CPU the naive blocking agent burns per run")
    p.add_argument("--blocking-spacing-ms", type=float, default=300.0, help="pause between its runs")
    p.add_argument("--min-budget-ms", type=float, default=10.0)
    p.add_argument("--max-budget-ms", type=float, default=40.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1000 and args.json:
        print("note: fewer than 1,000 runs", file=sys.stderr)
    set_supervisor_priority(args.priority)  # reset on fork: workers and the embedded redis-server stay normal
    result = asyncio.run(_bench(args))
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("runs", "killed", "overrun_p50_ms", "overrun_p99_ms", "overrun_max_ms",
                    "retries", "late_writes_committed", "late_writes_refused",
                    "not_ok_staged_writes_committed", "ok_writes_missing", "pass"):
            print(f"{key:32} {result[key]}")
        print(f"{'by kind':32} " + ", ".join(
            f"{k}: {v['runs']} runs p99 {v['overrun_p99_ms']} ms" for k, v in result["by_kind"].items()))
        for mode, b in result["blocking"].items():
            print(f"{'blocking agent, ' + mode:32} first offence overrun {b['first_offence_overrun_ms']} ms; later "
                  f"overrun p50/p99 {b['later_overrun_p50_ms']}/{b['later_overrun_p99_ms']} ms; well-behaved "
                  f"cycles p50/p99 {b['well_behaved_cycle_p50_ms']}/{b['well_behaved_cycle_p99_ms']} ms (after the "
                  f"first offence {b['after_first_offence']['p50_ms']}/{b['after_first_offence']['p99_ms']} ms)")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
