"""``outerloop bench cluster``: the whole system on real local Redis servers, printed as ONE JSON
object: standalone Redis vs a 3-master Redis Cluster, 1 vs 2 API workers, 1 vs 2 daemons, and a
master killed under load.

For each setting (``--settings redis:workers:daemons``, e.g. ``cluster:2:1``) one run:

1. starts the machine's ``redis-server``: one plain server, or 3 masters joined as a cluster
   (:mod:`outerloop.storage.local_servers`), and ``outerloop serve --workers W`` plus ``D`` daemons
   (``outerloop daemon --runner outerloop``), all configured by the environment only
   (:meth:`outerloop.topology.Topology.env`: 3 stream shards);
2. gives ``--users`` users a history through the API and waits until the daemons have read it;
3. **events**: ``wrk`` posts one event per request (a Lua script, unique event ids) over
   ``--connections`` connections for ``--duration`` s: events/s acknowledged, then the time
   until the daemons have read and acknowledged every one (events/s the daemons sustain);
4. **GETs at a fixed rate**: ``wrk`` asks recommendations of random users at ``--get-rate``/s
   (each connection waits ``connections / rate`` between its requests: wrk's ``delay()``;
   latency is measured from each send, so a stall delays the next request: closed loop, not
   corrected for coordinated omission): P50/P99, errors, degraded answers;
5. **maximum rate**: ``wrk`` closed-loop at each ``--steps`` connection count for
   ``--step-duration`` s; the highest rate whose P99 <= ``--p99-ms`` with 0 errors and 0
   degraded answers (Debian has no wrk2, so no ``-R`` open-loop rate: say so beside the figure).

Every phase reports the CPU the API processes (the server and its workers), the daemons (and
their children) and the Redis nodes used, read from ``/proc`` before and after, per event or per
request, and the load generator's own CPU beside them (``wait4`` of the wrk process).

**Failover** (``--failover-modes``): a 3-master cluster with 2 replicas each (node timeout 1 s),
one daemon reading it, events posted one per request at ``--failover-rate``/s by wrk (a Lua
script paces them with ``delay()`` and logs each request's outcome per thread, so acknowledged
events lost are counted exactly: :mod:`outerloop.benchmarks.failover_load`), a stream shard's
master SIGKILLed after ``--failover-before-s``: the measurement of ``tests/test_cluster_failover.py``
(:mod:`outerloop.benchmarks.failover`) plus the time until the daemon has caught up, and the CPU
of wrk beside the API's, the daemon's and Redis's.

``--duration 5 --step-duration 2 --steps 1,4,16`` is a smoke run (a minute or two per setting).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from outerloop.benchmarks.failover import API_KEY, caught_up, caught_up_on, run_failover, serve, stop
from outerloop.benchmarks.cpu import CpuMeter, per
from outerloop.errors import UserInputError
from outerloop.topology import Topology

SHARDS = 3
REDIS_KINDS = ("standalone", "cluster")
DEFAULT_SETTINGS = "standalone:1:1,cluster:1:1,cluster:2:1,cluster:1:2"


@dataclass(frozen=True)
class Setting:
    redis: str  # standalone | cluster
    workers: int
    daemons: int

    @property
    def name(self) -> str:
        return f"{self.redis}-w{self.workers}-d{self.daemons}"


def parse_settings(text: str) -> list[Setting]:
    if text.strip() == "none":
        return []
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        bits = part.split(":")
        try:
            redis_kind, workers, daemons = bits[0], int(bits[1]), int(bits[2])
        except (IndexError, ValueError):
            raise UserInputError(f"--settings: each entry is redis:workers:daemons (e.g. cluster:2:1), "
                                 f"got {part!r}") from None
        if len(bits) != 3 or redis_kind not in REDIS_KINDS or not 1 <= workers <= 8 or not 0 <= daemons <= 4:
            raise UserInputError(f"--settings: redis is standalone or cluster, workers 1 to 8, daemons 0 to 4; "
                                 f"got {part!r}")
        out.append(Setting(redis_kind, workers, daemons))
    if not out:
        raise UserInputError("--settings names no setting (none: only the failover runs)")
    return out


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise UserInputError(f"{flag} takes integers >= 1, got {text!r}")
    return vals


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", type=Path, required=True, help="trained artifacts (serve and the daemons load them)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"redis:workers:daemons, comma-separated, or none (default {DEFAULT_SETTINGS})")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of each measured phase (5: a smoke run)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections posting events")
    p.add_argument("--get-rate", type=float, default=200.0, help="GETs per second of the fixed-rate phase")
    p.add_argument("--steps", default="1,2,4,8,16,32", help="wrk connection counts of the maximum-rate search")
    p.add_argument("--step-duration", type=float, default=None, help="seconds per step (default: --duration / 2)")
    p.add_argument("--p99-ms", type=float, default=15.0, help="the latency bound of the maximum rate")
    p.add_argument("--users", type=int, default=200, help="users given a history and asked for recommendations")
    p.add_argument("--catch-up-timeout", type=float, default=120.0, help="seconds to wait for the daemons")
    p.add_argument("--failover-modes", default="durable,default",
                   help="failover runs: durable, default, both comma-separated, or none")
    p.add_argument("--failover-rate", type=float, default=300.0, help="events/s offered during the failover")
    p.add_argument("--failover-before-s", type=float, default=3.0, help="seconds of load before the kill")
    p.add_argument("--failover-after-s", type=float, default=8.0, help="seconds of load after the kill")
    p.add_argument("--failover-connections", type=int, default=64,
                   help="wrk threads of the failover load, one connection each (closed loop: a request stalled by "
                        "the failover holds its connection, so more connections keep the offered rate)")
    p.add_argument("--wrk", default=None, help="the wrk binary (default: wrk on PATH)")
    p.add_argument("--workdir", type=Path, default=None, help="where logs and Redis data go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print only the JSON object (compact)")


def _check(args: argparse.Namespace) -> None:
    if not (args.artifacts / "manifest.json").is_file():
        raise UserInputError(f"--artifacts: no trained artifacts at {args.artifacts} (no manifest.json)")
    for flag, value, low in (("--duration", args.duration, 1.0), ("--get-rate", args.get_rate, 1.0),
                             ("--failover-rate", args.failover_rate, 1.0), ("--p99-ms", args.p99_ms, 0.1),
                             ("--catch-up-timeout", args.catch_up_timeout, 1.0)):
        if not value >= low:
            raise UserInputError(f"{flag} must be >= {low}, got {value}")
    if args.connections < 1 or args.users < 1 or args.failover_connections < 1:
        raise UserInputError("--connections, --users and --failover-connections must be >= 1")
    if args.step_duration is not None and args.step_duration < 1:
        raise UserInputError(f"--step-duration must be >= 1, got {args.step_duration}")
    modes = [m.strip() for m in args.failover_modes.split(",") if m.strip()]
    if modes != ["none"] and not set(modes) <= {"durable", "default"}:
        raise UserInputError(f"--failover-modes: durable, default, both or none; got {args.failover_modes!r}")
    args.modes = [] if modes == ["none"] else modes
    args.settings_list = parse_settings(args.settings)
    args.steps_list = _ints(args.steps, "--steps")
    wrk = args.wrk or shutil.which("wrk")
    if not wrk or not Path(wrk).exists():
        raise UserInputError("outerloop bench cluster needs wrk, the HTTP load generator (Debian: apt-get install -y "
                             "wrk), or --wrk PATH: none found" + (f" at {args.wrk}" if args.wrk else " on PATH"))
    args.wrk_path = wrk
    from outerloop.storage.local_servers import missing

    if missing() is not None:
        raise UserInputError(f"outerloop bench cluster needs redis-server and redis-cli 7 or later: {missing()}")


# --- wrk ------------------------------------------------------------------------------------------

_WRK_COMMON = r"""
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end
bad, degraded = 0, 0
function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
  elseif body and (string.find(body, '"degraded":true', 1, true) or string.find(body, '"degraded": true', 1, true)) then
    degraded = degraded + 1
  end
end
function done(summary, latency, requests)
  local b, d = 0, 0
  for _, t in ipairs(threads) do b = b + t:get("bad"); d = d + t:get("degraded") end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"degraded":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, b, d, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""

_WRK_GET = _WRK_COMMON + r"""
local users, prefix, wait = 1, "u", 0
function init(args)
  prefix = args[1]; users = tonumber(args[2]); wait = tonumber(args[3])
  math.randomseed(os.time() + (tid or 0) * 7919)
end
function delay() return wait end
function request()
  return wrk.format("GET", "/v1/users/" .. prefix .. math.random(0, users - 1) .. "/recommendations?k=10")
end
"""

_WRK_POST = _WRK_COMMON + r"""
local users, prefix, items, key, n, t0 = 1, "u", 1, "", 0, 0
function init(args)
  prefix = args[1]; users = tonumber(args[2]); items = tonumber(args[3]); key = args[4]; t0 = tonumber(args[5])
  math.randomseed(os.time() + (tid or 0) * 7919)
end
function request()
  n = n + 1
  local body = string.format(
    '{"event_id":"%s-wrk-%d-%d","user_id":"%s%d","item_id":%d,"type":"play","ts":%d}',
    prefix, tid, n, prefix, math.random(0, users - 1), math.random(1, items), t0 + n)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json", ["X-API-Key"] = key}, body)
end
"""


def run_wrk(wrk: str, base: str, script: Path, seconds: float, connections: int, args: Sequence[str]) -> dict[str, Any]:
    """One wrk run (1 thread: the cores are the server's); its summary and its own CPU seconds."""
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency",
           "-s", str(script), base, "--", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    text = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{text[-2000:]}")
    out = json.loads(line[len("WRKJSON "):])
    out["loadgen_cpu_s"] = usage.ru_utime + usage.ru_stime
    out["errors"] = out["non2xx"] + out["connect_errors"] + out["read_errors"] + out["write_errors"] + out["timeouts"]
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6) if out["duration_us"] else 0.0
    return out


# --- one setting ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _redis(kind: str, root: Path) -> Iterator[tuple[str, list[int], bool]]:
    """(URL, node pids, cluster?)"""
    from outerloop.storage.local_servers import local_cluster, local_server

    if kind == "standalone":
        with local_server(root) as s:
            yield s.url, [s.proc.pid], False
    else:
        with local_cluster(root, masters=3, replicas=0) as c:
            yield c.url, [p.pid for p in c.procs.values()], True


def _daemon_cmd(consumer: str, artifacts: Path, refresh_log: str) -> list[str]:
    return [sys.executable, "-m", "outerloop.cli", "daemon", "--consumer", consumer, "--runner", "outerloop",
            "--artifacts", str(artifacts), "--catalog", "artifacts", "--refresh-log", refresh_log,
            "--block-ms", "100", "--claim-interval-s", "1", "--heartbeat-interval-s", "1",
            "--session-gap-s", "2", "--session-sweep-interval-s", "0.5", "--metrics-interval-s", "5",
            "--cycle-timeout-s", "30", "--log-level", "warning"]


@contextlib.contextmanager
def _daemons(n: int, topology: Topology, artifacts: Path, logs: Path, refresh_log: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, **topology.env(), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            with (logs / f"daemon-{i}.log").open("wb") as out:
                procs.append(subprocess.Popen(_daemon_cmd(f"d{i}", artifacts, refresh_log), env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
        yield procs
    finally:
        for p in procs:
            stop(p)


async def _wait_caught_up(topology: Topology, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> float | None:
    """Seconds until every shard is read and acknowledged (None: not within ``timeout_s``)."""
    from outerloop.contracts.keys import SchedulerKeys

    keys = SchedulerKeys.for_topology(topology)
    client = topology.target().async_client()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout_s:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a daemon exited during the benchmark (see its log in --workdir)")
            if await caught_up(client, keys, include_due=False):
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        return None
    finally:
        await client.aclose()


def _item_ids(artifacts: Path) -> int:
    from outerloop.inner_loop.model.artifacts import CATALOG

    doc = json.loads((artifacts / CATALOG).read_text())
    items = doc.get("items", doc) if isinstance(doc, dict) else doc
    return max(1, len(items))


async def run_setting(args: argparse.Namespace, setting: Setting, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True)
    prefix = f"b{setting.redis[0]}{setting.workers}{setting.daemons}"
    n_items = _item_ids(args.artifacts)
    step_s = args.step_duration or max(1.0, args.duration / 2)
    out: dict[str, Any] = {"setting": setting.name, "redis": setting.redis,
                           "redis_masters": 3 if setting.redis == "cluster" else 1,
                           "api_workers": setting.workers, "daemons": setting.daemons, "stream_shards": SHARDS}
    with _redis(setting.redis, root / "redis") as (url, redis_pids, is_cluster):
        topology = Topology(redis_url=url, cluster=is_cluster, stream_shards=SHARDS, key_prefix=prefix)
        with serve(topology, args.artifacts, root / "api.log", workers=setting.workers) as (base, api), \
                _daemons(setting.daemons, topology, args.artifacts, root, f"{prefix}:refresh") as daemons:
            meter = CpuMeter({"api": [api.pid], "daemons": [d.pid for d in daemons], "redis": redis_pids})
            # histories for every user (batches through the API), read by the daemons before measuring
            rng = random.Random(0)
            t0 = int(time.time() * 1000) - 3_600_000
            async with httpx.AsyncClient(base_url=base, timeout=30, headers={"X-API-Key": API_KEY}) as http:
                evs = [{"event_id": f"{prefix}-seed-{u}-{i}", "user_id": f"{prefix}{u}",
                        "item_id": rng.randint(1, n_items), "type": "finish" if i % 4 == 3 else "play",
                        "ts": t0 + i * 60_000} for u in range(args.users) for i in range(10)]
                for i in range(0, len(evs), 200):
                    r = await http.post("/v1/events", json=evs[i:i + 200])
                    if r.status_code != 200:
                        raise RuntimeError(f"seeding histories: {r.status_code} {r.text[:300]}")
            if setting.daemons:
                await _wait_caught_up(topology, args.catch_up_timeout, daemons)
            scripts = root / "wrk"
            scripts.mkdir()
            (scripts / "get.lua").write_text(_WRK_GET)
            (scripts / "post.lua").write_text(_WRK_POST)

            # events through the API
            before = meter.read()
            t_start = time.monotonic()
            w = run_wrk(args.wrk_path, base, scripts / "post.lua", args.duration, args.connections,
                        [prefix, str(args.users), str(n_items), API_KEY, str(int(time.time() * 1000))])
            api_done = meter.read()
            acked = w["requests"] - w["errors"]
            catch = None
            if setting.daemons:
                waited = await _wait_caught_up(topology, args.catch_up_timeout, daemons)
                if waited is not None:
                    catch = time.monotonic() - t_start
            daemons_done = meter.read()
            cpu_api = CpuMeter.delta(before, api_done)
            cpu_all = CpuMeter.delta(before, daemons_done)
            out["events"] = {
                "events_per_s": round(acked / (w["duration_us"] / 1e6), 1),
                "events_acknowledged": acked, "errors": w["errors"], "connections": args.connections,
                "post_p50_ms": w["p50_us"] / 1000, "post_p99_ms": w["p99_us"] / 1000,
                "api_cpu_ms_per_event": per(cpu_api["api"], acked),
                "redis_cpu_ms_per_event": per(cpu_all["redis"], acked),
                "daemon_cpu_ms_per_event": per(cpu_all["daemons"], acked) if setting.daemons else None,
                "loadgen_cpu_ms_per_event": per(w["loadgen_cpu_s"], acked),
                "daemons_caught_up_s": round(catch, 2) if catch is not None else None,
                "daemon_events_per_s": round(acked / catch, 1) if catch else None,
            }

            # GETs at a fixed rate
            conns = max(1, min(16, int(args.get_rate // 25) or 1))
            wait_ms = int(conns * 1000 / args.get_rate)
            before = meter.read()
            g = run_wrk(args.wrk_path, base, scripts / "get.lua", args.duration, conns,
                        [prefix, str(args.users), str(wait_ms)])
            cpu = CpuMeter.delta(before, meter.read())
            out["get_fixed_rate"] = {
                "offered_rps": args.get_rate, "achieved_rps": round(g["rps"], 1), "connections": conns,
                "p50_ms": g["p50_us"] / 1000, "p99_ms": g["p99_us"] / 1000, "p999_ms": g["p999_us"] / 1000,
                "errors": g["errors"], "degraded": g["degraded"], "requests": g["requests"],
                "api_cpu_ms_per_request": per(cpu["api"], g["requests"]),
                "redis_cpu_ms_per_request": per(cpu["redis"], g["requests"]),
                "daemon_cpu_ms_during": round(cpu["daemons"] * 1000, 1),
                "loadgen_cpu_ms_per_request": per(g["loadgen_cpu_s"], g["requests"]),
            }

            # the maximum rate at P99 <= bound, 0 errors (closed loop, stepping connections)
            steps = []
            for c in args.steps_list:
                before = meter.read()
                s = run_wrk(args.wrk_path, base, scripts / "get.lua", step_s, c, [prefix, str(args.users), "0"])
                cpu = CpuMeter.delta(before, meter.read())
                steps.append({"connections": c, "rps": round(s["rps"], 1), "p50_ms": s["p50_us"] / 1000,
                              "p99_ms": s["p99_us"] / 1000, "errors": s["errors"], "degraded": s["degraded"],
                              "api_cpu_ms_per_request": per(cpu["api"], s["requests"]),
                              "loadgen_cpu_ms_per_request": per(s["loadgen_cpu_s"], s["requests"]),
                              "loadgen_cpu_share_of_one_core": round(s["loadgen_cpu_s"] / step_s, 3)})
                if s["p99_us"] / 1000 > 3 * args.p99_ms:
                    break  # past the bound by far: more connections only queue
            ok = [s for s in steps if s["p99_ms"] <= args.p99_ms and not s["errors"] and not s["degraded"]]
            out["get_max"] = {
                "max_rps_at_p99_bound": max((s["rps"] for s in ok), default=None), "p99_bound_ms": args.p99_ms,
                "method": "closed-loop wrk at each connection count (no wrk2 -R here): the highest rate whose P99 "
                          "stayed within the bound with 0 errors and 0 degraded answers",
                "steps": steps,
            }
            out["api_alive"] = api.poll() is None
            out["daemons_alive"] = all(d.poll() is None for d in daemons)
    return out


async def run_failover_mode(args: argparse.Namespace, mode: str, root: Path) -> dict[str, Any]:
    from outerloop.storage.local_servers import local_cluster

    root.mkdir(parents=True)
    load_at_start = round(os.getloadavg()[0], 2)
    with local_cluster(root / "redis", masters=3, replicas=2, node_timeout_ms=1000) as cluster:
        topology = Topology(redis_url=cluster.url, cluster=True, stream_shards=SHARDS, key_prefix=f"fo{mode[:3]}",
                            durable_writes=mode == "durable", durable_wait_ms=250)
        with _daemons(1, topology, args.artifacts, root, f"{topology.key_prefix}:refresh") as daemons:
            report = await run_failover(cluster, topology, args.artifacts, root / "api.log", rate=args.failover_rate,
                                        before_s=args.failover_before_s, after_s=args.failover_after_s,
                                        caught_up_probe=caught_up_on, caught_up_timeout_s=args.catch_up_timeout,
                                        wrk=args.wrk_path, wrk_threads=args.failover_connections,
                                        daemon_pids=[d.pid for d in daemons])
            report["load_avg_1m_at_start"] = load_at_start
            report["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report.pop("api_log_tail", None)
    report.pop("missing_after_retry_ids", None)
    return report


async def run(args: argparse.Namespace) -> dict[str, Any]:
    _check(args)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ol-bench-cluster-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    wrk_version = subprocess.run([args.wrk_path, "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    out: dict[str, Any] = {
        "benchmark": "cluster",
        "smoke": args.duration < 10,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "load_generator": {"tool": (wrk_version or ["wrk"])[0].strip(), "threads": 1,
                           "rate_control": "none (Debian's wrk has no -R): fixed rate by per-connection delay(), "
                                           "maximum rate by stepping connections, both closed loop",
                           "failover": "wrk, one connection per thread (loadgen_threads; closed loop: a stalled "
                                       "request holds its thread, see events_sent_in_window_per_s), each request due at "
                                       "start + g / rate on a shared wall-clock schedule (delay()), each request's "
                                       "status logged per thread"},
        "duration_s": args.duration,
        "settings": [],
        "failover": [],
    }
    try:
        for i, setting in enumerate(args.settings_list):
            out["settings"].append(await run_setting(args, setting, work / f"{i}-{setting.name}"))
        for mode in args.modes:
            out["failover"].append(await run_failover_mode(args, mode, work / f"failover-{mode}"))
    finally:
        if tmp is not None:
            tmp.cleanup()
    out["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="outerloop bench cluster", description=__doc__.split("\n\n")[0])
    configure(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = asyncio.run(run(args))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
