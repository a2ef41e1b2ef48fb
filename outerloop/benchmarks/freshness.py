"""``outerloop bench freshness``: how fast an event becomes a refreshed row, and whether any
event is lost or applied twice on the way (optionally with a daemon SIGKILLed mid-run).

1. Redis: an embedded server in a temporary directory (or ``--redis-url``).
2. Ingest: the serving API (``outerloop serve --artifacts DIR``) in its own process when
   ``--artifacts`` holds trained artifacts; events are POSTed to ``/v1/events``. Without
   artifacts the events are XADDed straight to the stream (reported as ``"ingest": "xadd"``).
3. ``--daemons N`` daemon processes share the consumer group, with activity triggers on and the
   row-refresh runner, which logs every row commit with the events it covered.
4. Events of the synthetic world (its catalog matches the artifacts') go out open-loop at
   ``--rate`` for ``--duration`` seconds: event ``i`` is due at ``t0 + i / rate``.
   ``--crash``: at half time one daemon is SIGKILLed and a new one started.
5. After a drain, per event: refresh latency = first commit of a row covering it minus its
   due time; ``lost`` = posted events whose effect is missing; ``duplicated`` = effects beyond
   one per event (per-user counters, session records).

Prints one JSON object (``--json``: only that).
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

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outerloop bench freshness", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None, help="trained artifacts: ingest through the API")
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

        from outerloop.scheduler.keys import SchedulerKeys

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
               "--runner", "rows", "--activity-triggers", "--refresh-log", self.refresh_log,
               "--catalog", "synthetic", "--world-seed", str(o.get("seed", 0)),
               "--world-films", str(o.get("n_films", 900)), "--world-series", str(o.get("n_series", 35)),
               "--claim-min-idle-ms", "1000", "--claim-interval-s", "0.5", "--max-cycles", str(self.args.max_cycles),
               "--metrics-interval-s", "5", "--log-level", "info"]
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
        from outerloop.scheduler.keys import SchedulerKeys
        from outerloop.scheduler.redis_client import async_client

        keys = SchedulerKeys.default()
        client = async_client(url=self.redis_url)
        pool = None
        if use_api:
            from outerloop.benchmarks.loadgen import Pool

            pool = Pool("127.0.0.1", self.api_port or 0)
        from outerloop.benchmarks.loadgen import HttpError

        rate, n = self.args.rate, len(events)
        batch_s = self.args.post_batch_ms / 1000 if self.args.post_batch_ms > 0 else 1 / rate
        due_ms: dict[str, float] = {}
        accepted: set[str] = set()
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
        return {"due_ms": due_ms, "accepted": accepted, "failures": failures, "elapsed_s": elapsed,
                "send_lag_p99_ms": _pct(send_lag_ms, 0.99), "crash": crashed or None}

    # ---- drain and measure ------------------------------------------------------------------------
    def drain(self, events: list[dict[str, Any]], accepted: set[str]) -> float:
        """Wait until the group has read and acknowledged everything and every accepted user
        event is covered by a committed row (or the timeout)."""
        import redis

        from outerloop.scheduler.keys import SchedulerKeys

        keys = SchedulerKeys.default()
        client = redis.Redis.from_url(self.redis_url)
        want = {e["event_id"] for e in events if e["type"] != "episode_release" and e["event_id"] in accepted}
        covered: set[str] = set()
        cursor = "-"
        started = time.monotonic()
        while time.monotonic() - started < self.args.drain_timeout_s:
            for entry_id, fields in client.xrange(self.refresh_log, min=cursor, max="+", count=10_000):
                cursor = "(" + entry_id.decode()
                covered.update(fields[b"event_ids"].decode().split(",") if fields[b"event_ids"] else ())
            groups = client.xinfo_groups(keys.stream())
            idle = all(int(g["pending"]) == 0 and (g.get("lag") in (0, None)) for g in groups)
            if idle and want <= covered:
                break
            time.sleep(0.2)
        client.close()
        return time.monotonic() - started

    def measure(self, events: list[dict[str, Any]], loaded: dict[str, Any]) -> dict[str, Any]:
        import redis

        from outerloop.scheduler.keys import SchedulerKeys

        client = redis.Redis.from_url(self.redis_url)
        keys = SchedulerKeys.default()
        accepted: set[str] = loaded["accepted"]
        first_commit: dict[str, int] = {}
        commits = 0
        waited_ms: list[float] = []  # first trigger fired -> cycle started (queueing, lock, slots)
        cycle_ms: list[float] = []  # cycle started -> row committed
        for entry_id, fields in client.xrange(self.refresh_log, count=None):
            commits += 1
            at = int(entry_id.split(b"-")[0])  # the server's clock when the row was visible
            started = int(fields[b"started_ms"])
            waited_ms.append(started - int(fields[b"first_fired_ms"]))
            cycle_ms.append(at - started)
            for eid in (fields[b"event_ids"].decode().split(",") if fields[b"event_ids"] else ()):
                if eid not in first_commit or at < first_commit[eid]:
                    first_commit[eid] = at
        # every event we tried to post counts: the API may have written one whose reply failed
        by_user: dict[str, set[str]] = {}
        for e in events:
            by_user.setdefault(e["user_id"], set()).add(e["event_id"])
        lost = duplicated = 0
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
                applied = {m.decode() for m in replies[3 * j]}
                count = int(replies[3 * j + 1] or 0)
                sids = [json.loads(r)["sid"] for r in replies[3 * j + 2]]
                lost += len((by_user[u] & accepted) - applied)  # acknowledged by the API, no effect
                # effects beyond one per event: the counter against the distinct applied ids, and
                # session records written twice
                duplicated += max(0, count - len(applied)) + (len(sids) - len(set(sids)))
        timed = [(first_commit[e["event_id"]] - loaded["due_ms"][e["event_id"]], e)
                 for e in events if e["event_id"] in accepted and e["event_id"] in first_commit]
        latencies = [t for t, _ in timed]
        slowest = [{"ms": round(t), "event_id": e["event_id"], "user": e["user_id"], "type": e["type"]}
                   for t, e in sorted(timed, key=lambda x: -x[0])[:5]]
        measured_types = [e for e in events if e["event_id"] in accepted and e["type"] != "episode_release"]
        unrefreshed = sum(1 for e in measured_types if e["event_id"] not in first_commit)
        dead = client.xlen(keys.dead_letter)
        client.close()
        n = len(events)
        return {
            "events": n,
            "events_per_s": round(len(accepted) / loaded["elapsed_s"], 1),
            "refresh_p50_ms": _pct(latencies, 0.50),
            "refresh_p99_ms": _pct(latencies, 0.99),
            "refresh_max_ms": _pct(latencies, 1.0),
            "refreshed_events": len(latencies),
            "unrefreshed": unrefreshed,
            "lost": lost,
            "not_accepted_by_api": n - len(accepted),
            "duplicated": duplicated,
            "row_commits": commits,
            "trigger_wait_p50_ms": _pct(waited_ms, 0.5), "trigger_wait_p99_ms": _pct(waited_ms, 0.99),
            "cycle_p50_ms": _pct(cycle_ms, 0.5), "cycle_p99_ms": _pct(cycle_ms, 0.99),
            "dead_letters": dead,
            "post_failures": loaded["failures"],
            "send_lag_p99_ms": loaded["send_lag_p99_ms"],
            "slowest": slowest,
        }

    def run(self) -> dict[str, Any]:
        self.stack.callback(self.stop_all)
        self.start_redis()
        world, events = self.load_world()
        self.write_profiles(world)
        use_api = self.start_api()
        for i in range(self.args.daemons):
            self.start_daemon(f"bench-{i}")
        self._wait_daemons(self.args.daemons)
        cpu0 = self._cpu()
        loaded = asyncio.run(self.load(events, use_api))
        cpu1 = self._cpu()
        drain_s = self.drain(events, loaded["accepted"])
        result = self.measure(events, loaded)
        result.update({
            "rate": self.args.rate, "duration_s": self.args.duration, "daemons": self.args.daemons,
            "crash": loaded["crash"], "ingest": "api" if use_api else "xadd",
            "post_batch_ms": self.args.post_batch_ms, "drain_s": round(drain_s, 2),
            "world": self.world_options, "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "cpu_share_during_load": {k: round((cpu1[k] - cpu0.get(k, 0.0)) / loaded["elapsed_s"], 3)
                                      for k in cpu1 if cpu1[k] is not None and cpu0.get(k) is not None},
            "notes": self.notes,
        })
        return result

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process of the benchmark (cores used = delta / wall)."""
        out = {"bench": _cpu_s(os.getpid())}
        if self.api_proc is not None:
            out["api"] = _cpu_s(self.api_proc.pid)
        for i, d in enumerate(self.daemons):
            if d.poll() is None:
                out[f"daemon{i}"] = _cpu_s(d.pid)
        if self.redis_pid:
            out["redis"] = _cpu_s(self.redis_pid)
        return {k: v for k, v in out.items() if v is not None}

    def _wait_daemons(self, n: int) -> None:
        import redis

        from outerloop.scheduler.keys import SchedulerKeys

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
        print(f"events/s {result['events_per_s']}  refresh p50 {result['refresh_p50_ms']} ms  "
              f"p99 {result['refresh_p99_ms']} ms  lost {result['lost']}  duplicated {result['duplicated']}",
              file=sys.stderr)
    print(text)
    ok = result["lost"] == 0 and result["duplicated"] == 0 and result["not_accepted_by_api"] == 0
    return 0 if ok else 1
