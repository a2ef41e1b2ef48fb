"""``outerloop demo``: the steps, in order. See :mod:`outerloop.demo` for what it shows."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from outerloop.errors import UserInputError

DEMO_WORLD = {"n_users": 1500, "n_films": 700, "n_series": 30, "seed": 7, "days": 28}
STEPS = 7


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                        help="where the artifacts, the embedded Redis, the logs and the report go (default runs/demo)")
    parser.add_argument("--train-minutes", type=float, default=1.5,
                        help="wall-clock budget for training the model (default 1.5)")
    parser.add_argument("--users", type=int, default=5,
                        help="users whose viewing is streamed (default 5; the moments' users come first)")
    parser.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in --workdir if present")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the API, the daemon and the console up after the story, until Ctrl-C")


def run(args: argparse.Namespace) -> int:
    if args.train_minutes <= 0:
        raise UserInputError(f"--train-minutes must be > 0, got {args.train_minutes}")
    if not 1 <= args.users <= 20:
        raise UserInputError(f"--users must be between 1 and 20, got {args.users}")
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        return _run(args, workdir, started)
    except KeyboardInterrupt:
        _say(f"\nInterrupted; the API and the daemon were stopped. Logs: {workdir}")
        return 130


def _run(args: argparse.Namespace, workdir: Path, started: float) -> int:
    import httpx
    import redis as redis_lib

    from outerloop.demo.processes import services
    from outerloop.demo.story import Story, pick_roles

    world, events = _step_world()
    artifacts = workdir / "artifacts"
    _step_train(artifacts, args.train_minutes, reuse=args.reuse)
    redis_dir = workdir / "redis"
    if redis_dir.exists():
        shutil.rmtree(redis_dir)  # every demo starts from an empty state
    _say(f"3/{STEPS}  Starting the API (outerloop serve) and the outer-loop daemon (outerloop daemon) "
         f"on one embedded Redis")
    t0 = time.perf_counter()
    # the console's control needs the API key: the one set in the environment, else one for this run
    api_key = os.environ.get("OUTERLOOP_API_KEY") or secrets.token_urlsafe(12)
    with services(artifacts.resolve(), workdir, redis_dir=redis_dir, port=args.port, api_key=api_key) as svc, \
            httpx.Client(base_url=svc.base_url, timeout=10.0, headers={"X-API-Key": api_key}) as http, \
            contextlib.closing(redis_lib.Redis.from_url(svc.redis_url)) as client:
        _say(f"     both ready in {time.perf_counter() - t0:.0f} s: API {svc.base_url}, Redis {svc.redis_url}; "
             f"logs {svc.api_log}, {svc.daemon_log}")
        _say(f"     console (live, while the demo runs): {svc.console_url}  (API key for its controls: {api_key})")
        story = Story(http=http, redis=client, catalog=world.catalog, say=_say)
        roles = pick_roles(world, events)
        _step_stream(story, world, events, _users(roles, events, args.users))
        _step_real_time(story, roles.follower)
        results = _step_moments(story, world, roles)
        _say(f"7/{STEPS}  Summary")
        index = _summary(story, results, artifacts, workdir, started)
        if args.keep_running:
            _say(f"\nDone in {time.perf_counter() - started:.0f} s. Report: {index}")
            _keep_running(svc.console_url, svc.base_url, api_key)
            return 0
    _say(f"\nDone in {time.perf_counter() - started:.0f} s (the API and the daemon are stopped). Report: {index}")
    return 0


def _keep_running(console_url: str, base_url: str, api_key: str) -> None:
    """Block until Ctrl-C or SIGTERM (then the caller's context stops the daemon and the API)."""
    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    _say(f"Still running (--keep-running): console {console_url} (API key: {api_key}), API {base_url}.\n"
         "Ctrl-C stops the API and the daemon.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("Stopping the API and the daemon.")


# --- 1, 2: the world and the model ---------------------------------------------------------------

def _step_world() -> tuple[Any, list[dict[str, Any]]]:
    from outerloop.data.synthetic import SyntheticWorld

    _say(f"1/{STEPS}  Generating the synthetic streaming world")
    t0 = time.perf_counter()
    world = SyntheticWorld.generate(n_users=DEMO_WORLD["n_users"], n_films=DEMO_WORLD["n_films"],
                                    n_series=DEMO_WORLD["n_series"], seed=DEMO_WORLD["seed"])
    events = world.simulate(days=DEMO_WORLD["days"])
    n_eps = sum(1 for it in world.catalog.items if it.kind == "episode")
    _say(f"     {len(world.catalog)} titles ({n_eps} episodes of {DEMO_WORLD['n_series']} series), "
         f"{DEMO_WORLD['n_users']} users, {len(events):,} events over {DEMO_WORLD['days']} days "
         f"({time.perf_counter() - t0:.1f} s)")
    return world, events


def _step_train(out: Path, minutes: float, *, reuse: bool) -> None:
    from outerloop.cli import main as cli

    if reuse and (out / "manifest.json").is_file() and (out / "ranker.json").is_file() \
            and (out / "ensemble" / "ensemble.json").is_file():
        _say(f"2/{STEPS}  Reusing the trained model in {out}")
        return
    _say(f"2/{STEPS}  Training a small transformer on the world (budget {minutes:g} min) and the ranker")
    argv = ["train", "--dataset", "synthetic", "--out", str(out), "--max-minutes", str(minutes),
            "--d-model", "48", "--max-len", "100", "--epochs", "40", "--patience", "4"]
    for key, value in DEMO_WORLD.items():
        argv += ["--dataset-opt", f"{key}={value}"]
    t0 = time.perf_counter()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        code = cli(argv)
    if code != 0:
        raise UserInputError("training failed (see the message above)")
    _train_ranker(out)
    metrics = json.loads(summary.getvalue().strip().splitlines()[-1])["metrics"]
    _say(f"     trained in {time.perf_counter() - t0:.0f} s: test HR@10 {metrics['hr@10']:.3f}, "
         f"NDCG@10 {metrics['ndcg@10']:.3f} (popularity: NDCG@10 {metrics['popularity']['ndcg@10']:.3f})")


def _train_ranker(out: Path) -> None:
    """The outer loop's parts next to the model: the heavy ensemble (here the model and EASE, no
    extra transformer: the demo is short), the inner-only ranker, and the served ranker that
    corrects it, trained on the rows the real outer loop compiles, the ensemble agent's log-prob
    row among them."""
    import torch

    from outerloop.data.datasets import load_dataset
    from outerloop.evals.prepare import prepare_outer_loop
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.ensemble import EnsembleConfig

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = load_dataset("synthetic", None, **DEMO_WORLD)
    parts = prepare_outer_loop(Artifacts.load(out), data, ensemble_config=EnsembleConfig(extra_transformers=0),
                               row_users=600, ranker_epochs=6, progress=False)
    rep = parts.ensemble.report if parts.ensemble is not None else {}
    _say(f"     ensemble agent's model: transformer + EASE, validation NDCG@10 "
         f"{rep.get('valid', {}).get('base_ndcg@10', 0):.3f} -> {rep.get('valid', {}).get('ensemble_ndcg@10', 0):.3f}")


# --- 4-6: the story ------------------------------------------------------------------------------

def _step_moments(story: Any, world: Any, roles: Any) -> dict[str, Any]:
    from outerloop.demo.agents import DEMO_AGENT, DEMO_BUDGET_MS, DEMO_ROW
    from outerloop.demo.moments import budget_overrun, episode_release, genre_backoff, late_night

    _say(f"6/{STEPS}  The moments the outer loop is for (times run from the POST to the refreshed row as "
         "GET /v1/users/{id}/recommendations serves it)")
    results: dict[str, Any] = {}
    _say("\n  a. A new episode is released -> 'Continue watching' refreshed for the series' followers")
    results["release"] = episode_release(story, roles.follower, roles.series)
    _say("\n  b. A 2 AM thriller session -> a 'Wind down' row")
    owl = roles.night_owl
    results["late_night"] = late_night(story, owl, world.user(owl).tz_offset_min)
    genre = roles.genre.lower()
    _say(f"\n  c. Three {genre} films dropped in a row -> {genre} backed off")
    fan = roles.genre_fan
    results["backoff"] = genre_backoff(story, fan, roles.genre, world.user(fan).tz_offset_min)
    _say(f"\n  d. An agent over its budget -> killed, not retried, nothing committed ({DEMO_AGENT}, a demo agent "
         f"registered through the SDK: isolated, budget {DEMO_BUDGET_MS:.0f} ms, run by the daemon)")
    results["overrun"] = budget_overrun(story, roles.follower, DEMO_AGENT, DEMO_ROW)
    _say("")
    return results


def _users(roles: Any, events: list[dict[str, Any]], n: int) -> list[str]:
    """The users the moments need, then the most active ones, ``n`` in all (or more, when the
    moments need more)."""
    from outerloop.demo.story import CATALOG_USER

    counts: dict[str, int] = {}
    for e in events:
        if e["type"] in ("play", "finish") and e["user_id"] != CATALOG_USER:
            counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    ranked = sorted(counts, key=lambda u: (-counts[u], u))
    return list(dict.fromkeys([*roles.users(), *ranked]))[:max(n, len(roles.users()))]


def _step_stream(story: Any, world: Any, events: list[dict[str, Any]], users: list[str]) -> None:
    from outerloop.demo.story import stream_history

    _say(f"4/{STEPS}  Streaming {len(users)} users' last four weeks through POST /v1/events ({', '.join(users)})")
    stream_history(story, world, events, users, days=DEMO_WORLD["days"])
    for user in users:
        body = story.recommendations(user, k=5)
        rows = "; ".join(f"{r['title']} [{r['produced_by']}]" for r in body["rows"])
        _say(f"     {user} likes {' & '.join(world.user(user).top_genres(2))}: {rows}")


def _step_real_time(story: Any, user: str) -> None:
    from outerloop.demo.story import real_time

    _say(f"5/{STEPS}  Real time: the inner loop answers the next request with the new event in it")
    real_time(story, user)


# --- 7: summary and report -----------------------------------------------------------------------

def _summary(story: Any, results: dict[str, Any], artifacts: Path, workdir: Path, started: float) -> Path:
    from outerloop.budgets.accounting import percentile
    from outerloop.demo.runner import read_run_log
    from outerloop.evals.budget_report import budget_compliance

    cycles = [c for _, c in read_run_log(story.redis, story.keys.base)]
    records = [r for c in cycles for r in c["records"]]
    by_agent: dict[str, int] = {}
    for r in records:
        by_agent[r["agent"]] = by_agent.get(r["agent"], 0) + 1
    killed = [r for r in records if r["outcome"] == "killed"]
    refresh, req = story.refresh_ms, story.request_ms

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    _say(f"     events streamed through POST /v1/events: {story.events_posted:,}")
    _say(f"     daemon: {len(cycles)} cycles for {len({c['user'] for c in cycles})} users, {len(records)} agent runs "
         f"({', '.join(f'{a} {n}' for a, n in sorted(by_agent.items()))}); killed {len(killed)}, "
         f"retries {sum(r['retries'] for r in records)}, errors {sum(r['outcome'] == 'error' for r in records)}")
    _say(f"     POST -> refreshed row served: p50 {ms(percentile(refresh, 50))}, p99 {ms(percentile(refresh, 99))} "
         f"(n={len(refresh)}); GET recommendations: p50 {percentile(req, 50) or 0:.1f} ms, "
         f"p99 {percentile(req, 99) or 0:.1f} ms (n={len(req)}, client side)")
    names = {"release": "new episode -> continue watching", "late_night": "2 AM thrillers -> wind down",
             "backoff": "three dropped -> back-off", "overrun": "over budget -> killed, not retried"}
    _say("     moments: " + "; ".join(f"{names[k]}: {'yes' if v.happened else 'NO'}" for k, v in results.items()))
    inputs = workdir / "report-inputs"
    inputs.mkdir(exist_ok=True)
    budgets = {"name": "demo daemon", **budget_compliance(records)}
    (inputs / "budgets.json").write_text(json.dumps(budgets))
    (inputs / "requests.json").write_text(json.dumps({
        "name": "demo GET recommendations", "latency_samples_ms": [round(v, 3) for v in req],
        "p50_ms": percentile(req, 50), "p99_ms": percentile(req, 99)}))
    index = _report(workdir / "report", artifacts, [inputs / "budgets.json", inputs / "requests.json"])
    _say(f"     wall time {time.perf_counter() - started:.0f} s")
    return index


def _report(out: Path, artifacts: Path, inputs: list[Path]) -> Path:
    from outerloop.cli import main as cli

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = cli(["report", "--out", str(out), "--artifacts", str(artifacts), "--no-measure", "--json",
                    "--inputs", *map(str, inputs)])
    if code != 0:
        raise UserInputError(f"outerloop report failed with code {code}")
    doc = json.loads(captured.getvalue().strip().splitlines()[-1])
    _say(f"     report: {doc['index']} ({len(doc['figures'])} figures: training curves, request latency, "
         f"agent runs against budgets)")
    return Path(doc["index"])


def _say(text: str) -> None:
    print(text, flush=True)
