"""``outerloop plan-capacity BENCH.json``: a capacity model from ``outerloop bench cluster``'s JSON.

The benchmark measures, for one setting, the CPU the API processes spend per request (GET of
recommendations) and per event (POST), the CPU the daemons spend per event (reading it, the
co-watch graph and trending, sessions and the agent cycles those events trigger: all in), and the
CPU the Redis nodes spend per request and per event. The model scales those linearly:

    API cores     = requests/s x API CPU per request + events/s x API CPU per event
    daemon cores  = events/s x daemon CPU per event
    Redis cores   = requests/s x Redis CPU per request + events/s x Redis CPU per event

and divides each by the utilisation a core is run at (``--utilisation``, headroom for the P99):
an API worker and a daemon are one Python process each (one core at most), a Redis master is
single-threaded (one core). Replicas (``--replicas``) are counted as nodes, not cores. Hosts:
all cores over ``--cores-per-host``. What the model leaves out is printed with it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from outerloop.errors import UserInputError

DEFAULT_SCENARIOS = ("10k-requests=10000,0", "seed-scale-events=0,2300000")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("bench_json", type=Path, help="the JSON object `outerloop bench cluster` printed")
    p.add_argument("--setting", default=None,
                   help="which measured setting to scale (default: cluster-w1-d1, else the first cluster setting)")
    p.add_argument("--scenario", action="append", default=None, metavar="NAME=REQUESTS_PER_S,EVENTS_PER_S",
                   help=f"a load to size (repeatable; default: {' and '.join(DEFAULT_SCENARIOS)})")
    p.add_argument("--utilisation", type=float, default=0.6,
                   help="the share of each core the plan uses (headroom for the P99; default 0.6)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per Redis master (nodes, not cores)")
    p.add_argument("--cores-per-host", type=int, default=16, help="cores per machine, for the host count")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")


def parse_scenario(text: str) -> tuple[str, float, float]:
    try:
        name, rest = text.split("=", 1)
        req, ev = (float(x) for x in rest.split(","))
    except ValueError:
        raise UserInputError(f"--scenario: NAME=REQUESTS_PER_S,EVENTS_PER_S (e.g. peak=10000,500), got {text!r}") from None
    if not name or req < 0 or ev < 0 or req + ev <= 0:
        raise UserInputError(f"--scenario: a name and rates >= 0, not both 0; got {text!r}")
    return name, req, ev


def pick_setting(bench: dict[str, Any], name: str | None) -> dict[str, Any]:
    settings = bench.get("settings") or []
    if not settings:
        raise UserInputError("the benchmark JSON has no settings (run `outerloop bench cluster` first)")
    if name is not None:
        for s in settings:
            if s.get("setting") == name:
                return s
        raise UserInputError(f"--setting: {name!r} is not in the JSON (it has {[s.get('setting') for s in settings]})")
    for s in settings:
        if s.get("setting") == "cluster-w1-d1":
            return s
    return next((s for s in settings if s.get("redis") == "cluster"), settings[0])


def unit_costs(setting: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per request and per event, of each part, from one measured setting."""
    ev, get = setting.get("events") or {}, setting.get("get_fixed_rate") or {}
    need = {"api_ms_per_request": get.get("api_cpu_ms_per_request"),
            "redis_ms_per_request": get.get("redis_cpu_ms_per_request"),
            "api_ms_per_event": ev.get("api_cpu_ms_per_event"),
            "daemon_ms_per_event": ev.get("daemon_cpu_ms_per_event"),
            "redis_ms_per_event": ev.get("redis_cpu_ms_per_event")}
    missing = [k for k, v in need.items() if v is None]
    if missing:
        raise UserInputError(f"setting {setting.get('setting')!r} lacks {missing} (a daemon-less setting has no "
                             "daemon CPU per event: pick another with --setting)")
    # the benchmark sums the CPU of every process of a kind, so these are per unit whatever the count
    return {k: float(v) for k, v in need.items()}


def plan(bench: dict[str, Any], scenarios: list[tuple[str, float, float]], *, setting: str | None = None,
         utilisation: float = 0.6, replicas: int = 1, cores_per_host: int = 16) -> dict[str, Any]:
    if not 0 < utilisation <= 1:
        raise UserInputError(f"--utilisation must be in (0, 1], got {utilisation}")
    if replicas < 0 or cores_per_host < 1:
        raise UserInputError("--replicas must be >= 0 and --cores-per-host >= 1")
    chosen = pick_setting(bench, setting)
    c = unit_costs(chosen)
    rows = []
    for name, req, ev in scenarios:
        api_cores = (req * c["api_ms_per_request"] + ev * c["api_ms_per_event"]) / 1000
        daemon_cores = ev * c["daemon_ms_per_event"] / 1000
        redis_cores = (req * c["redis_ms_per_request"] + ev * c["redis_ms_per_event"]) / 1000
        workers = math.ceil(api_cores / utilisation)
        daemons = math.ceil(daemon_cores / utilisation)
        masters = max(1, math.ceil(redis_cores / utilisation))
        cores = workers + daemons + masters
        rows.append({"scenario": name, "requests_per_s": req, "events_per_s": ev,
                     "api_cpu_cores": round(api_cores, 3), "daemon_cpu_cores": round(daemon_cores, 3),
                     "redis_cpu_cores": round(redis_cores, 3),
                     "api_workers": workers, "daemon_processes": daemons, "cluster_masters": masters,
                     "redis_nodes": masters * (1 + replicas), "cores": cores,
                     "hosts": math.ceil((cores + masters * replicas) / cores_per_host)})
    bound = (chosen.get("get_max") or {}).get("max_rps_at_p99_bound")
    return {
        "from_setting": chosen.get("setting"),
        "from_smoke_run": bool(bench.get("smoke")),
        "unit_costs_cpu_ms": c,
        "measured_max_rps_at_p99_bound_one_machine": bound,
        "utilisation": utilisation, "replicas_per_master": replicas, "cores_per_host": cores_per_host,
        "plans": rows,
        "assumptions": [
            "CPU per request and per event is constant: it scales linearly with load and with the number of "
            "processes (measured on one small machine; contention, cache effects and network hops elsewhere differ)",
            f"each core is run at {utilisation:.0%} of its capacity, the rest is headroom for the P99",
            "one API worker and one daemon are each one Python process (one core at most); a Redis master is "
            "single-threaded (one core)",
            "daemon CPU per event includes everything the daemons do with the events of the run: reading the "
            "streams, co-watch and trending, sessions, and the agent cycles those events triggered",
            "a request is one GET of recommendations; an event is one POST of one event (batched POSTs cost less "
            "per event)",
            "replica nodes replicate and serve no reads: counted as nodes and in hosts, not in the CPU model",
            "the load is spread evenly over users, stream shards and slots (no hot key, no hot user)",
            "network, TLS, load balancers and the load generator are not in the model",
        ],
    }


def format_plan(out: dict[str, Any]) -> str:
    lines = [f"capacity plan from setting {out['from_setting']}"
             + (" (a SMOKE run: its figures are pessimistic, rerun the benchmark at full length)"
                if out["from_smoke_run"] else ""),
             "unit costs (CPU ms): " + ", ".join(f"{k} {v:g}" for k, v in out["unit_costs_cpu_ms"].items())]
    if out["measured_max_rps_at_p99_bound_one_machine"] is not None:
        lines.append(f"one machine held {out['measured_max_rps_at_p99_bound_one_machine']:g} GET/s at the P99 bound")
    lines.append("")
    head = ("scenario", "req/s", "events/s", "API workers", "daemons", "masters", "redis nodes", "cores", "hosts")
    lines.append(" | ".join(head))
    for r in out["plans"]:
        lines.append(" | ".join(str(x) for x in (r["scenario"], f"{r['requests_per_s']:g}", f"{r['events_per_s']:g}",
                                                 r["api_workers"], r["daemon_processes"], r["cluster_masters"],
                                                 r["redis_nodes"], r["cores"], r["hosts"])))
    lines.append("")
    lines.append("assumptions:")
    lines.extend(f"- {a}" for a in out["assumptions"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        bench = json.loads(args.bench_json.read_text())
    except OSError as exc:
        raise UserInputError(f"bench_json: cannot read {args.bench_json}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"bench_json: {args.bench_json} is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(bench, dict) or bench.get("benchmark") != "cluster":
        raise UserInputError(f"bench_json: {args.bench_json} is not the output of `outerloop bench cluster`")
    scenarios = [parse_scenario(s) for s in (args.scenario or DEFAULT_SCENARIOS)]
    out = plan(bench, scenarios, setting=args.setting, utilisation=args.utilisation, replicas=args.replicas,
               cores_per_host=args.cores_per_host)
    print(json.dumps(out) if args.json else format_plan(out))
    return 0
