"""``outerloop demo``: the whole system on one machine, on the embedded Redis, in a few minutes.

What it does, as a user would do it by hand:

1. generates a seeded synthetic streaming world (films, series with episodes, users with tastes
   and time-of-day habits) and simulates a month of viewing;
2. trains a small transformer on it (``outerloop train``) and the multi-task ranker;
3. starts the API (``outerloop serve``) in its own process on loopback;
4. streams a few users' viewing through ``POST /v1/events`` and shows their recommendations
   (titles, scores, the row's reason), then posts one more event and shows that the very next
   response already reflects it, with the measured latency.

Everything it writes lives under ``--workdir`` (default ``runs/demo``); nothing outside it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from outerloop.errors import UserInputError

DEMO_WORLD = {"n_users": 1500, "n_films": 700, "n_series": 30, "seed": 7, "days": 28}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                        help="where the artifacts, the embedded Redis and the logs go (default runs/demo)")
    parser.add_argument("--train-minutes", type=float, default=1.5,
                        help="wall-clock budget for training the model (default 1.5)")
    parser.add_argument("--users", type=int, default=3, help="how many users to show (default 3)")
    parser.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in --workdir if present")


def run(args: argparse.Namespace) -> int:
    if args.train_minutes <= 0:
        raise UserInputError(f"--train-minutes must be > 0, got {args.train_minutes}")
    if not 1 <= args.users <= 20:
        raise UserInputError(f"--users must be between 1 and 20, got {args.users}")
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    world, events = _step_world()
    artifacts_dir = workdir / "artifacts"
    _step_train(artifacts_dir, args.train_minutes, reuse=args.reuse)
    redis_dir = workdir / "redis"
    if redis_dir.exists():
        shutil.rmtree(redis_dir)  # every demo starts from an empty state
    port = args.port or _free_port()
    env = {**os.environ, "OUTERLOOP_EMBEDDED_REDIS_DIR": str(redis_dir.resolve()), "OUTERLOOP_REDIS_URL": ""}
    env.pop("OUTERLOOP_REDIS_URL")
    with _serving(artifacts_dir, port, env, workdir / "serve.log") as base_url:
        _step_stream_and_show(base_url, world, events, n_users=args.users)
    _say(f"\nDone in {time.perf_counter() - started:.0f} s. Artifacts: {artifacts_dir}  logs: {workdir}")
    return 0


# --- steps ---------------------------------------------------------------------------------------

def _step_world() -> tuple[Any, list[dict[str, Any]]]:
    from outerloop.data.synthetic import SyntheticWorld

    _say("1/4  Generating the synthetic streaming world")
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

    if reuse and (out / "manifest.json").is_file():
        _say(f"2/4  Reusing the trained model in {out}")
        return
    _say(f"2/4  Training a small transformer on the world (budget {minutes:g} min) and the ranker")
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
    import json

    metrics = json.loads(summary.getvalue().strip().splitlines()[-1])["metrics"]
    _say(f"     trained in {time.perf_counter() - t0:.0f} s: test HR@10 {metrics['hr@10']:.3f}, "
         f"NDCG@10 {metrics['ndcg@10']:.3f} (popularity: NDCG@10 {metrics['popularity']['ndcg@10']:.3f})")


def _train_ranker(out: Path) -> None:
    import torch

    from outerloop.data.datasets import load_dataset
    from outerloop.inner_loop.artifacts import Artifacts
    from outerloop.inner_loop.ranker_train import train_ranker

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = load_dataset("synthetic", None, **DEMO_WORLD)
    train_ranker(Artifacts.load(out), data, epochs=6, patience=2, max_history=100)


def _step_stream_and_show(base_url: str, world: Any, events: list[dict[str, Any]], *, n_users: int) -> None:
    import httpx

    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        users = _pick_users(events, n_users)
        mine = [e for e in events if e["user_id"] in users]
        _say(f"3/4  Streaming {len(mine):,} events of {len(users)} users through POST /v1/events")
        for start in range(0, len(mine), 200):
            r = http.post("/v1/events", json=mine[start:start + 200])
            r.raise_for_status()

        _say("4/4  Recommendations (GET /v1/users/{id}/recommendations)")
        for user in users:
            watched = [_title(world, e["item_id"]) for e in mine if e["user_id"] == user and e["type"] in ("finish", "play")]
            recent = list(dict.fromkeys(reversed(watched)))[:3]
            _say(f"\n  user {user}: likes {' & '.join(world.user(user).top_genres(2))}; recently watched: " + "; ".join(recent))
            _show(http, user, world)

        user = users[0]
        last = max(e["ts"] for e in mine if e["user_id"] == user)
        pick = _first_item(http, user)
        _say(f"\n  Real time: {user} finishes {_title(world, pick)!r}; the next request already knows")
        t0 = time.perf_counter()
        http.post("/v1/events", json={"user_id": user, "item_id": pick, "type": "finish", "ts": last + 60_000}
                  ).raise_for_status()
        body = http.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
        took = (time.perf_counter() - t0) * 1000
        still = any(it["item_id"] == pick for row in body["rows"] for it in row["items"])
        _say(f"     POST + GET took {took:.1f} ms; the finished title is {'STILL' if still else 'no longer'} "
             f"recommended (history version {body['history_version']})")
        _show(http, user, world, body=body)


# --- helpers -------------------------------------------------------------------------------------

def _pick_users(events: list[dict[str, Any]], n: int) -> list[str]:
    """The most active users (a rich history makes the demo readable)."""
    counts: dict[str, int] = {}
    for e in events:
        if e["type"] in ("play", "finish"):
            counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    return sorted(counts, key=lambda u: (-counts[u], u))[:n]


def _title(world: Any, item_id: int | None) -> str:
    if item_id is None:
        return "?"
    it = world.catalog.get(int(item_id))
    if it.kind == "episode":
        return f"{it.title} S{it.season}E{it.episode}"
    return it.title


def _first_item(http: Any, user: str) -> int:
    body = http.get(f"/v1/users/{user}/recommendations", params={"k": 1}).json()
    return int(body["rows"][0]["items"][0]["item_id"])


def _show(http: Any, user: str, world: Any, body: dict[str, Any] | None = None) -> None:
    if body is None:
        r = http.get(f"/v1/users/{user}/recommendations", params={"k": 5})
        r.raise_for_status()
        body = r.json()
    timing = body.get("timings_ms", {}).get("total")
    _say(f"     request {body['request_id'][:8]}  model {body['model_version']}  "
         f"server time {timing:.1f} ms" if timing is not None else "")
    for row in body["rows"]:
        _say(f"     [{row['title']}] ({row['produced_by']}: {row['reason']})")
        for it in row["items"][:5]:
            item = world.catalog.get(it["item_id"])
            genres = "/".join(item.genres[:2])
            _say(f"        {it['score']:7.3f}  {_title(world, it['item_id'])}  ({genres})")


@contextlib.contextmanager
def _serving(artifacts: Path, port: int, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``outerloop serve`` in its own process; stopped with SIGTERM (then SIGKILL) on exit."""
    import httpx

    cmd = [sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise UserInputError(f"the API exited with code {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise UserInputError(f"the API did not become ready in 90 s; see {log_path}")
                time.sleep(0.2)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    if text:
        print(text, flush=True)
