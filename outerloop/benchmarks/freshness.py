"""``outerloop bench freshness``: how fast an event becomes a refreshed row with the real outer
loop doing its work, and whether any event is lost or applied twice on the way (optionally with a
daemon SIGKILLed mid-run and replaced).

1. Redis: a server of its own in a temporary directory (or ``--redis-url``).
2. Ingest: the serving API (``outerloop serve --artifacts DIR``) in its own process when
   ``--artifacts`` holds trained artifacts; events are POSTed to ``/v1/events``. Without
   artifacts the events are XADDed straight to the stream (reported as ``"ingest": "xadd"``).
3. ``--daemons N`` daemon processes share the consumer group. ``--runner outerloop`` (the default
   when there are trained artifacts) runs the real outer loop: the planner and the built-in
   agents (memory, tools, evaluator, and the ensemble when the artifacts have one) on the
   artifacts, under their budgets, as ``outerloop daemon --artifacts DIR`` does. ``--runner rows``
   is the transport-only baseline: one row write per cycle, no planner, no agents. Both run with
   the same triggers (``--triggers activity``: a trigger on every interaction, besides the
   default ones; ``default``: finishes, releases, closed sessions, drift, stale rows only) and
   log every cycle to a stream (``outerloop daemon --refresh-log``).
4. Events of the synthetic world (its catalog matches the artifacts') go out open-loop at
   ``--rate`` for ``--duration`` seconds: event ``i`` is due at ``t0 + i / rate``.
   ``--crash``: at half time one daemon is SIGKILLed and a new one started.
5. After a drain (stream read and acknowledged, no user waiting for a cycle), from the cycle log
   (its entry time: the server's clock right after the cycle's rows were committed, an upper
   bound on when they became visible):

   - ``refresh_*_ms``, **event -> refreshed row**: over the events that called for a row (the
     cycle that took the event's trigger planned at least one row), the time from the event's
     due time to the first row committed by a run that saw the event. A run saw it when its
     cycle started no earlier than the cycle that took the event's trigger (the event was
     applied before that trigger fired, and a cycle reads the user's state after it starts):
     the event's own cycle, or, when its rows were not committed (an agent killed, a daemon
     SIGKILLed), the next one that committed a row. Events that called for a row and never got
     one are ``refresh_missing``.
   - ``event_to_cycle_*_ms``: over every event that fired a trigger, due time -> the end of the cycle
     that took it, rows or not (with the outer loop, the agents' work on it is done).
   - ``event_to_any_row_*_ms``: over every user event, due time -> the first row committed by a cycle
     that started after the API acknowledged the event or after the cycle that took its trigger
     started, whichever came first (how stale rows get under the planner's rules: the outer loop
     refreshes rows on episode finishes, releases and closed sessions, not on every play);
     ``event_to_any_row_never`` counts events no row covered by the end.
   - ``lost``: accepted events with no effect; ``duplicated``: effects beyond one per event
     (per-user counters, session records); ``dead_letters``.
   - ``agent_runs``: runs per agent and outcome (ok, killed, error); ``cycles``, those that
     committed rows and those with a killed agent; ``trigger_wait_*_ms`` (first trigger fired ->
     cycle started) and ``cycle_run_*_ms`` (cycle started -> logged).
   - closed sessions: users with a closed session against users whose newest close was handed
     to a cycle (``users_with_closed_session``, ``users_with_cycle_after_close``), and sessions
     closed with no cycle after them (``closed_sessions_without_cycle``).

Prints one JSON object (``--json``: only that); exits 1 unless nothing was lost, duplicated,
refused or dead-lettered and every closed session got its cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from outerloop.ports import free_port, redis_server_binary
from outerloop.storage.clients import RedisClient

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outerloop bench freshness", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None,
                   help="trained artifacts (synthetic world): ingest through the API, the outer loop runs on them")
    p.add_argument("--runner", choices=("auto", "outerloop", "rows"), default="auto",
                   help="outerloop: the real outer loop (planner, built-in agents; needs --artifacts); rows: one row "
                        "write per cycle, the transport-only baseline; auto: outerloop when --artifacts holds "
                        "trained artifacts, else rows")
    p.add_argument("--triggers", choices=("activity", "default"), default="activity",
                   help="activity: also a trigger on every interaction; default: the daemon's default triggers")
    p.add_argument("--rate", type=float, default=500.0, help="events per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--daemons", type=int, default=1, help="daemon processes sharing the group")
    p.add_argument("--crash", action="store_true", help="SIGKILL a daemon at half time and start another")
    p.add_argument("--users", type=int, default=2000, help="synthetic users (when no artifacts say otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--post-batch-ms", type=float, default=0.0,
                   help="0: one POST per event; else POST the events due every N ms together")
    p.add_argument("--max-cycles", type=int, default=64, help="concurrent cycles per daemon")
    p.add_argument("--redis-url", default=None, help="use this Redis (default: an embedded one)")
    p.add_argument("--drain-timeout-s", type=float, default=60.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    return p


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class FreshnessBench:
    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.tmp = Path(tempfile.mkdtemp(prefix="outerloop-freshness-"))
        if not args.keep:
            stack.callback(shutil.rmtree, self.tmp, True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.refresh_log = f"ol:bench:refresh:{uuid.uuid4().hex[:8]}"
        self.notes: list[str] = []
        self.redis_url = ""
        self.redis_pid: int | None = None
        self.api_proc: subprocess.Popen[bytes] | None = None
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.api_port: int | None = None
        self.world_options: dict[str, Any] = {}
        self.runner = "rows"
        self.final_cpu: dict[str, float | None] = {}  # CPU seconds of a daemon right before it was killed

    # ---- set-up -------------------------------------------------------------------------------
    def start_redis(self) -> None:
        """A redis-server of its own (unix socket, append-only file like the embedded one), as
        a service of its own; ``--redis-url`` uses a running one instead."""
        import redis

        if self.args.redis_url:
            self.redis_url = self.args.redis_url
        else:
            data = self.tmp / "redis"
            data.mkdir()
            sock = data / "redis.sock"
            proc = self.redis_proc = self._spawn([redis_server_binary(), "--port", "0", "--unixsocket", str(sock),
                                "--unixsocketperm", "700", "--dir", str(data), "--appendonly", "yes",
                                "--appendfsync", "everysec", "--save", ""], "redis.log")
            self.redis_url = f"unix://{sock}"
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
        client = redis.Redis.from_url(self.redis_url)
        info = client.info("server")
        client.close()
        # a local server's CPU is measured too (not one on another machine)
        self.redis_pid = int(info["process_id"]) if _cpu_s(int(info["process_id"])) is not None else None

    def load_world(self) -> tuple[Any, list[dict[str, Any]]]:
        from outerloop.data.synthetic import SyntheticWorld

        options: dict[str, Any] = {"n_users": self.args.users, "seed": self.args.seed}
        manifest = self.args.artifacts / "manifest.json" if self.args.artifacts else None
        if manifest is not None and manifest.is_file():
            m = json.loads(manifest.read_text())
            if m.get("dataset") != "synthetic":
                raise SystemExit(f"{self.args.artifacts}: trained on {m.get('dataset')!r}; the freshness bench "
                                 "needs artifacts trained on the synthetic world")
            opts = dict(m.get("dataset_options") or {})
            options.update({k: opts[k] for k in ("n_users", "n_films", "n_series", "seed") if k in opts})
        self.world_options = options
        world = SyntheticWorld.generate(**options)
        want = int(self.args.rate * self.args.duration)
        days, events = 7, []
        while True:
            events = [e for e in world.simulate(days=days)]
            if len(events) >= want or days > 365:
                break
            days *= 2
        return world, events[:want]

    def write_profiles(self, world: Any) -> None:
        import redis

        from outerloop.contracts.keys import SchedulerKeys

        client = redis.Redis.from_url(self.redis_url)
        keys = SchedulerKeys.default()
        pipe = client.pipeline(transaction=False)
        for u in world.users:
            pipe.hset(keys.profile(u.user_id), "utc_offset_min", u.tz_offset_min)
        pipe.execute()
        client.close()

    def _spawn(self, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a component in a session of its own, as a separate service would run (under the
        kernel's autogroup scheduling each session gets its own fair share of the CPU)."""
        log = open(self.tmp / log_name, "wb")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_api(self) -> bool:
        art = self.args.artifacts
        if art is None or not (art / "manifest.json").is_file():
            self.notes.append("no trained artifacts: events XADDed straight to the stream (no API)")
            return False
        self.api_port = free_port()
        env = {**os.environ, "OUTERLOOP_REDIS_URL": self.redis_url}
        proc = self._spawn([sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(art),
                            "--port", str(self.api_port), "--log-level", "warning"], "api.log", env)
        self.api_proc = proc
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the API exited with {proc.returncode}: {(self.tmp / 'api.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("the API did not become ready")

    def start_daemon(self, name: str) -> subprocess.Popen[bytes]:
        o = self.world_options
        cmd = [sys.executable, "-m", "outerloop.cli", "daemon", "--redis-url", self.redis_url, "--consumer", name,
               "--runner", self.runner, "--refresh-log", self.refresh_log,
               "--claim-min-idle-ms", "1000", "--claim-interval-s", "0.5", "--max-cycles", str(self.args.max_cycles),
               "--metrics-interval-s", "5", "--log-level", "info"]
        if self.args.triggers == "activity":
            cmd.append("--activity-triggers")
        if self.runner == "outerloop":  # the loop and the genre/series rules on the artifacts' catalog
            cmd += ["--artifacts", str(self.args.artifacts), "--catalog", "artifacts"]
        else:
            cmd += ["--catalog", "synthetic", "--world-seed", str(o.get("seed", 0)),
                    "--world-films", str(o.get("n_films", 900)), "--world-series", str(o.get("n_series", 35))]
        proc = self._spawn(cmd, f"daemon-{name}.log")
        self.daemons.append(proc)
        return proc

    def stop_all(self) -> None:
        """Daemons and the API first (they may still write), the Redis server last."""
        others = [p for p in self.procs if p is not self.redis_proc]
        for group in (others, [self.redis_proc] if self.redis_proc else []):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # ---- load -----------------------------------------------------------------------------------
    async def load(self, events: list[dict[str, Any]], use_api: bool) -> dict[str, Any]:
        from outerloop.contracts.keys import SchedulerKeys
        from outerloop.storage.clients import daemon_async_client

        keys = SchedulerKeys.default()
        client = daemon_async_client(url=self.redis_url)
        pool = None
        if use_api:
            from outerloop.benchmarks.loadgen import Pool

            pool = Pool("127.0.0.1", self.api_port or 0)
        from outerloop.benchmarks.loadgen import HttpError

        rate, n = self.args.rate, len(events)
        batch_s = self.args.post_batch_ms / 1000 if self.args.post_batch_ms > 0 else 1 / rate
        due_ms: dict[str, float] = {}
        accepted: set[str] = set()
        acked_ms: dict[str, float] = {}  # when the API (or the XADD) answered: the event is in the user's state
        failures: dict[str, int] = {}
        send_lag_ms: list[float] = []
        in_flight: set[asyncio.Task[None]] = set()
        crash_at = self.args.duration / 2 if self.args.crash else None
        crashed: dict[str, Any] = {}

        async def send(batch: list[dict[str, Any]], due_wall_ms: float) -> None:
            body = json.dumps({"events": batch}).encode()
            for attempt in range(10):
                try:
                    if pool is not None:
                        status, payload = await pool.request("POST", "/v1/events", body)
                        if 200 <= status < 300:
                            break
                        failures[str(status)] = failures.get(str(status), 0) + 1
                        if status < 500:
                            return
                    else:
                        pipe = client.pipeline(transaction=False)
                        for e in batch:
                            pipe.xadd(keys.stream(), {"event": json.dumps(e)})
                        await pipe.execute()
                        break
                except (HttpError, OSError, RedisError) as exc:  # transport: retry (events are idempotent)
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return
            accepted.update(e["event_id"] for e in batch)
            now_ms = time.time() * 1000
            acked_ms.update((e["event_id"], now_ms) for e in batch)

        loop = asyncio.get_running_loop()
        t0_loop = loop.time()
        t0_wall_ms = time.time() * 1000
        k = 0
        while k < n:
            now = loop.time() - t0_loop
            upto = min(n, int(now * rate) + 1)
            if upto > k:
                batch = events[k:upto]
                first_due = k / rate
                send_lag_ms.append((now - first_due) * 1000)
                for i, e in enumerate(batch):
                    due_ms[e["event_id"]] = t0_wall_ms + (k + i) / rate * 1000
                task = loop.create_task(send(batch, t0_wall_ms + first_due * 1000))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                k = upto
            if crash_at is not None and not crashed and now >= crash_at:
                victim = self.daemons[0]
                self.final_cpu["daemon0"] = _cpu_s(victim.pid)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                crashed.update(at_s=round(now, 2), killed_pid=victim.pid)
                self.start_daemon("bench-replacement")
            next_due = upto / rate if self.args.post_batch_ms <= 0 else now + batch_s
            await asyncio.sleep(max(0.0, next_due - (loop.time() - t0_loop)))
        if in_flight:
            await asyncio.gather(*in_flight)
        elapsed = loop.time() - t0_loop
        if pool is not None:
            pool.close()
        await client.aclose()
        return {"due_ms": due_ms, "acked_ms": acked_ms, "accepted": accepted, "failures": failures,
                "elapsed_s": elapsed, "send_lag_p99_ms": _pct(send_lag_ms, 0.99), "crash": crashed or None}

    # ---- drain and measure ------------------------------------------------------------------------
    def drain(self) -> float:
        """Wait until the group has read and acknowledged everything and no user waits for a cycle
        (pending or running), twice in a row 1.5 s apart (the idle sweep closes what it can within
        its interval), or the timeout."""
        import redis

        from outerloop.contracts.keys import SchedulerKeys

        keys = SchedulerKeys.default()
        client = redis.Redis.from_url(self.redis_url)
        started = time.monotonic()
        settled = 0
        while time.monotonic() - started < self.args.drain_timeout_s:
            groups = client.xinfo_groups(keys.stream())
            idle = all(int(g["pending"]) == 0 and (g.get("lag") in (0, None)) for g in groups)
            settled = settled + 1 if idle and client.zcard(keys.due(0)) == 0 else 0
            if settled >= 2:
                break
            time.sleep(1.5 if settled else 0.2)
        client.close()
        return time.monotonic() - started

    def read_cycles(self, client: RedisClient) -> list[dict[str, Any]]:
        """The cycle log (:func:`outerloop.scheduler.runners.queue_refresh_log`), oldest first."""
        cycles = []
        for entry_id, f in client.xrange(self.refresh_log, count=None):
            d = {k.decode(): v.decode() for k, v in f.items()}
            cycles.append({
                "user": d["user"], "at": int(entry_id.split(b"-")[0]), "started": int(d["started_ms"]),
                "first_fired": int(d["first_fired_ms"]), "event_ids": [i for i in d["event_ids"].split(",") if i],
                "rows": bool(d.get("rows")), "planned": bool(d.get("planned")),
                "runs": [r.rsplit(":", 1) for r in d.get("runs", "").split(",") if r],
                "session_end_ts": int(d["session_end_ts"]) if d.get("session_end_ts") else None,
            })
        return cycles

    def measure(self, events: list[dict[str, Any]], loaded: dict[str, Any]) -> dict[str, Any]:
        import bisect

        import redis

        from outerloop.contracts.keys import SchedulerKeys

        client = redis.Redis.from_url(self.redis_url)
        keys = SchedulerKeys.default()
        accepted: set[str] = loaded["accepted"]
        due, acked = loaded["due_ms"], loaded["acked_ms"]
        cycles = self.read_cycles(client)
        first_cycle: dict[str, dict[str, Any]] = {}  # event id -> the first finished cycle that took it
        row_cycles: dict[str, list[tuple[int, int]]] = {}  # user -> (started, committed) of cycles with rows
        agent_runs: dict[str, dict[str, int]] = {}
        waited_ms: list[float] = []  # first trigger fired -> cycle started (queueing, lock, slots)
        cycle_ms: list[float] = []  # cycle started -> logged (its rows committed)
        handled_close: dict[str, int] = {}  # user -> newest session end (event time) handed to a cycle
        for c in cycles:
            if c["first_fired"]:
                waited_ms.append(c["started"] - c["first_fired"])
            cycle_ms.append(c["at"] - c["started"])
            for eid in c["event_ids"]:
                if eid not in first_cycle or c["at"] < first_cycle[eid]["at"]:
                    first_cycle[eid] = c
            if c["rows"]:
                row_cycles.setdefault(c["user"], []).append((c["started"], c["at"]))
            for agent, outcome in c["runs"]:
                per = agent_runs.setdefault(agent, {})
                per[outcome] = per.get(outcome, 0) + 1
            if c["session_end_ts"] is not None:
                handled_close[c["user"]] = max(handled_close.get(c["user"], c["session_end_ts"]), c["session_end_ts"])
        # per user, the commits of cycles with rows ordered by start, with the earliest commit from
        # each position on: "the first row by a cycle that started at or after t" is one bisect
        first_row_from: dict[str, tuple[list[int], list[int]]] = {}
        for user, rc in row_cycles.items():
            rc.sort()
            suffix_min = [0] * len(rc)
            best = None
            for i in range(len(rc) - 1, -1, -1):
                best = rc[i][1] if best is None else min(best, rc[i][1])
                suffix_min[i] = best
            first_row_from[user] = ([st for st, _ in rc], suffix_min)

        def first_row_after(user: str, t: float) -> int | None:
            starts, mins = first_row_from.get(user, ([], []))
            i = bisect.bisect_left(starts, t)
            return mins[i] if i < len(starts) else None

        user_events = [e for e in events if e["event_id"] in accepted and e["type"] != "episode_release"]
        refresh: list[tuple[float, dict[str, Any]]] = []
        refresh_missing = 0
        to_cycle: list[float] = []
        any_row: list[float] = []
        any_row_never = 0
        for e in user_events:
            eid, user = e["event_id"], e["user_id"]
            c = first_cycle.get(eid)
            if c is not None:
                to_cycle.append(c["at"] - due[eid])
                if c["planned"] or c["rows"]:
                    at = first_row_after(user, c["started"])
                    if at is None:
                        refresh_missing += 1
                    else:
                        refresh.append((at - due[eid], e))
            # the event is in the user's state from the API's answer, or from the start of the
            # cycle that took its trigger if that came first
            seen = min(acked[eid], c["started"]) if c is not None else acked[eid]
            at = first_row_after(user, seen)
            if at is None:
                any_row_never += 1
            else:
                any_row.append(at - due[eid])
        latencies = [t for t, _ in refresh]
        slowest = [{"ms": round(t), "event_id": e["event_id"], "user": e["user_id"], "type": e["type"]}
                   for t, e in sorted(refresh, key=lambda x: -x[0])[:5]]
        # every event we tried to post counts: the API may have written one whose reply failed
        by_user: dict[str, set[str]] = {}
        for e in events:
            by_user.setdefault(e["user_id"], set()).add(e["event_id"])
        lost = duplicated = 0
        closed_users = closed_users_handled = closed_sessions = closed_without_cycle = 0
        users = list(by_user)
        for i in range(0, len(users), 500):
            chunk = users[i:i + 500]
            pipe = client.pipeline(transaction=False)
            for u in chunk:
                pipe.smembers(keys.applied(u))
                pipe.hget(keys.counters(u), "events")
                pipe.lrange(keys.sessions(u), 0, -1)
            replies = pipe.execute()
            for j, u in enumerate(chunk):
                # a followed series' release is marked in its followers' sets too ("release:<id>")
                applied = {m.decode() for m in replies[3 * j]}
                applied = {m for m in applied if not m.startswith("release:")}
                count = int(replies[3 * j + 1] or 0)
                records = [json.loads(r) for r in replies[3 * j + 2]]
                sids = [r["sid"] for r in records]
                lost += len((by_user[u] & accepted) - applied)  # acknowledged by the API, no effect
                # effects beyond one per event: the counter against the distinct applied ids, and
                # session records written twice
                duplicated += max(0, count - len(applied)) + (len(sids) - len(set(sids)))
                if records:
                    closed_users += 1
                    closed_sessions += len(records)
                    handled = handled_close.get(u)
                    closed_without_cycle += sum(1 for r in records if handled is None or int(r["end_ts"]) > handled)
                    closed_users_handled += handled is not None and handled >= max(int(r["end_ts"]) for r in records)
        dead = client.xlen(keys.dead_letter)
        client.close()
        n = len(events)
        killed_cycles = sum(1 for c in cycles if any(o == "killed" for _, o in c["runs"]))
        return {
            "runner": self.runner,
            "triggers": self.args.triggers,
            "events": n,
            "events_per_s": round(len(accepted) / loaded["elapsed_s"], 1),
            "refresh_p50_ms": _pct(latencies, 0.50),
            "refresh_p99_ms": _pct(latencies, 0.99),
            "refresh_max_ms": _pct(latencies, 1.0),
            "refreshed_events": len(latencies),
            "refresh_missing": refresh_missing,
            "event_to_cycle_p50_ms": _pct(to_cycle, 0.50), "event_to_cycle_p99_ms": _pct(to_cycle, 0.99),
            "cycled_events": len(to_cycle), "events_without_cycle": len(user_events) - len(to_cycle),
            "event_to_any_row_p50_ms": _pct(any_row, 0.50), "event_to_any_row_p99_ms": _pct(any_row, 0.99),
            "event_to_any_row_never": any_row_never,
            "lost": lost,
            "not_accepted_by_api": n - len(accepted),
            "duplicated": duplicated,
            "dead_letters": dead,
            "cycles": len(cycles),
            "cycles_with_rows": sum(1 for c in cycles if c["rows"]),
            "cycles_with_a_killed_agent": killed_cycles,
            "agent_runs": agent_runs,
            "users_with_closed_session": closed_users,
            "users_with_cycle_after_close": closed_users_handled,
            "sessions_closed": closed_sessions,
            "closed_sessions_without_cycle": closed_without_cycle,
            "trigger_wait_p50_ms": _pct(waited_ms, 0.5), "trigger_wait_p99_ms": _pct(waited_ms, 0.99),
            "cycle_run_p50_ms": _pct(cycle_ms, 0.5), "cycle_run_p99_ms": _pct(cycle_ms, 0.99),
            "post_failures": loaded["failures"],
            "send_lag_p99_ms": loaded["send_lag_p99_ms"],
            "slowest": slowest,
        }

    def run(self) -> dict[str, Any]:
        self.stack.callback(self.stop_all)
        self.start_redis()
        world, events = self.load_world()
        self.runner = self.pick_runner()
        self.write_profiles(world)
        use_api = self.start_api()
        for i in range(self.args.daemons):
            self.start_daemon(f"bench-{i}")
        self._wait_daemons(self.args.daemons)
        cpu0 = self._cpu()
        loaded = asyncio.run(self.load(events, use_api))
        cpu1 = self._cpu()
        drain_s = self.drain()
        result = self.measure(events, loaded)
        result.update({
            "rate": self.args.rate, "duration_s": self.args.duration, "daemons": self.args.daemons,
            "crash": loaded["crash"], "ingest": "api" if use_api else "xadd",
            "post_batch_ms": self.args.post_batch_ms, "drain_s": round(drain_s, 2),
            "world": self.world_options, "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            # a process started during the load (the crash's replacement) counts from its start
            "cpu_share_during_load": {k: round((cpu1[k] - cpu0.get(k, 0.0)) / loaded["elapsed_s"], 3) for k in cpu1},
            "notes": self.notes,
        })
        return result

    def pick_runner(self) -> str:
        trained = self.args.artifacts is not None and (self.args.artifacts / "manifest.json").is_file()
        if self.args.runner == "auto":
            return "outerloop" if trained else "rows"
        if self.args.runner == "outerloop" and not trained:
            raise SystemExit("--runner outerloop needs trained artifacts (--artifacts DIR; "
                             f"none at {self.args.artifacts})")
        return self.args.runner

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process of the benchmark (cores used = delta / wall)."""
        out = {"bench": _cpu_s(os.getpid())}
        if self.api_proc is not None:
            out["api"] = _cpu_s(self.api_proc.pid)
        for i, d in enumerate(self.daemons):
            out[f"daemon{i}"] = _cpu_s(d.pid) if d.poll() is None else self.final_cpu.get(f"daemon{i}")
        if self.redis_pid:
            out["redis"] = _cpu_s(self.redis_pid)
        return {k: v for k, v in out.items() if v is not None}

    def _wait_daemons(self, n: int) -> None:
        import redis

        from outerloop.contracts.keys import SchedulerKeys

        keys = SchedulerKeys.default()
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            live = [c for c in client.zrange(keys.heartbeats(), 0, -1) if client.exists(keys.heartbeat(c.decode()))]
            if len(live) >= n:
                client.close()
                return
            for d in self.daemons:
                if d.poll() is not None:
                    raise SystemExit(f"a daemon exited with {d.returncode}; logs in {self.tmp}")
            time.sleep(0.2)
        raise SystemExit("the daemons did not start")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with ExitStack() as stack:
        result = FreshnessBench(args, stack).run()
    text = json.dumps(result)
    if not args.json:
        print(f"runner {result['runner']}  events/s {result['events_per_s']}  event -> row p50 "
              f"{result['refresh_p50_ms']} ms  p99 {result['refresh_p99_ms']} ms  lost {result['lost']}  "
              f"duplicated {result['duplicated']}  dead letters {result['dead_letters']}  closed sessions without "
              f"a cycle {result['closed_sessions_without_cycle']}", file=sys.stderr)
    print(text)
    ok = (result["lost"] == 0 and result["duplicated"] == 0 and result["not_accepted_by_api"] == 0
          and result["dead_letters"] == 0 and result["closed_sessions_without_cycle"] == 0)
    return 0 if ok else 1
