"""One real server: ``outerloop serve`` in its own process on a free loopback port (uvicorn),
talked to over TCP, with an API key and its own embedded Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from outerloop.storage.clients import RedisTarget
from outerloop.ports import free_port
from tests.redis_fixtures import url_for_children
from tests.api.test_api_fixtures import event, tiny_data, tiny_dir  # noqa: F401


def _start_serve(tiny_dir: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``outerloop serve`` on a free port over an embedded Redis in ``tmp_path`` (API key k1)."""
    target = RedisTarget(embedded_dir=tmp_path / "redis")
    port = free_port()
    env = {**os.environ, "OUTERLOOP_REDIS_URL": url_for_children(target), "OUTERLOOP_API_KEY": "k1"}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(tiny_dir),
                                 "--port", str(port), *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, port, log


def test_outerloop_serve_over_tcp(tiny_dir: Path, tiny_data, tmp_path: Path) -> None:  # noqa: F811
    proc, port, log = _start_serve(tiny_dir, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, log, timeout_s=60)
        with httpx.Client(base_url=base, timeout=5) as c:
            items = [int(i) for i in tiny_data.users[1].items[:5]]
            r = c.post("/v1/events", json=[event("tcp-user", i, "finish") for i in items], headers={"X-API-Key": "k1"})
            assert r.status_code == 200 and r.json()["applied"] == 5
            assert c.post("/v1/events", json=event("tcp-user", 1)).status_code == 401
            doc = c.get("/v1/users/tcp-user/recommendations", params={"k": 10}).json()
            assert doc["history_version"] == 1 and doc["ranker"] == "model" and not doc["degraded"]
            assert not {it["item_id"] for it in doc["rows"][0]["items"]} & set(items)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    """Until ``GET /readyz`` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def pids_answering(base: str, path: str, want: int, tries: int = 400, **params: object) -> dict[int, dict]:
    """GET ``path`` on a new connection each time until ``want`` different worker pids gave an
    answer that is not degraded (a kept-alive connection stays with one worker; on a machine
    this busy a read can overrun the 30 ms Redis budget now and then, and that answer is degraded
    by design); pid -> that worker's answer."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        with httpx.Client(base_url=base, timeout=5) as c:  # a new connection: the kernel picks a worker
            pid = c.get("/healthz").json()["pid"]
            doc = c.get(path, params=params).json() if path else {}
        if not doc.get("degraded"):
            seen[pid] = doc
        if len(seen) >= want:
            break
    return seen


def test_serve_with_two_workers_answers_from_both_and_both_see_every_event(  # noqa: F811
        tiny_dir: Path, tmp_path: Path) -> None:
    proc, port, log = _start_serve(tiny_dir, tmp_path, "--workers", "2")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, log)
        assert "2 workers" in log.read_text()
        items = [3, 5, 7, 9]
        with httpx.Client(base_url=base, timeout=5) as c:  # posted to whichever worker took the connection
            r = c.post("/v1/events", json=[event("two-workers", i, "finish") for i in items],
                       headers={"X-API-Key": "k1"})
            assert r.status_code == 200 and r.json()["applied"] == 4, r.json()
        answers = pids_answering(base, "/v1/users/two-workers/recommendations", want=2, k=10)
        assert len(answers) == 2 and proc.pid not in answers, f"answers came from {sorted(answers)} only"
        for pid, doc in answers.items():  # both workers read the one Redis: the same history, seen items dropped
            assert doc["history_version"] == 1 and not doc["degraded"], pid
            assert not {it["item_id"] for it in doc["rows"][0]["items"]} & set(items), pid
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, 128 + 15), log.read_text()


def test_serve_rejects_zero_workers(tiny_dir: Path) -> None:  # noqa: F811
    r = subprocess.run([sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(tiny_dir), "--workers", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--workers must be at least 1, got 0" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_to_expose_writes_without_a_key(tiny_dir: Path) -> None:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k != "OUTERLOOP_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(tiny_dir), "--host", "0.0.0.0"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "without an API key" in r.stderr and "Traceback" not in r.stderr
