"""README's "Write your first agent", run as written: its module saved on disk, its
``outerloop serve`` and ``outerloop daemon --agents ... --tools ...`` lines run as processes
(the installed ``outerloop`` script, from the module's directory, on an embedded Redis), its
events posted through the API, and the agent's row served; then a manual refresh through the API
runs the agent again, and a refresh naming an agent no daemon runs is refused."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis

from outerloop.ports import free_ports
from outerloop.scheduler.health import live_daemons
from outerloop.contracts.keys import SchedulerKeys
from outerloop.storage.embedded import embedded_socket, release_embedded
from tests.api.test_api_fixtures import tiny_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
OUTERLOOP = Path(sys.executable).with_name("outerloop")  # the console script a user runs


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def commands(bash: str) -> list[str]:
    """The bash block's lines, continuation lines joined."""
    return [line for line in bash.replace("\\\n", " ").splitlines() if line.strip()]


def command(lines: list[str], start: str, artifacts: Path, port: int) -> list[str]:
    line = next(x for x in lines if x.startswith(start))
    argv = shlex.split(line.split("#")[0].rstrip(" &"))
    argv = [str(artifacts) if a == "runs/demo/artifacts" else a for a in argv]
    argv = [str(port) if a == "8000" else a for a in argv]
    return [str(OUTERLOOP), *argv[1:]]


@contextlib.contextmanager
def process(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for(what: str, check: Any, timeout_s: float, logs: list[Path], procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args[1]} exited ({p.returncode}): " + "\n".join(
                log.read_text()[-3000:] for log in logs)
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s:\n" + "\n".join(log.read_text()[-3000:] for log in logs))


def served_row(http: httpx.Client, user: str, row: str) -> dict[str, Any] | None:
    doc = http.get(f"/v1/users/{user}/recommendations", params={"row": row, "k": 20}).json()
    return next((r for r in doc.get("rows", []) if r["row_id"] == row), None)


def test_readme_first_agent_runs_in_the_daemon_as_written(tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    section = readme_section("Write your first agent")
    (module,) = blocks(section, "python")
    (bash,) = blocks(section, "bash")
    work = tmp_path / "project"
    work.mkdir()
    (work / "my_agents.py").write_text(module)  # the module, exactly as the README shows it
    lines = commands(bash)
    port = free_ports(1)[0]
    serve = command(lines, "outerloop serve", tiny_dir, port)
    daemon = command(lines, "outerloop daemon", tiny_dir, port)
    assert "--agents" in daemon and "my_agents:because_you_watched" in daemon

    redis_dir = tmp_path / "redis"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTERLOOP_")}
    env |= {"OUTERLOOP_EMBEDDED_REDIS_DIR": str(redis_dir), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / "api.log", tmp_path / "daemon.log"]
    user = "readme-user"
    try:
        _run(serve, daemon, work, env, logs, port, user, redis_dir, bash)
    finally:
        release_embedded(redis_dir, save=False)  # this test joined the embedded server too


def _run(serve: list[str], daemon: list[str], work: Path, env: dict[str, str], logs: list[Path], port: int,
         user: str, redis_dir: Path, bash: str) -> None:
    with process(serve, work, env, logs[0]) as api, process(daemon, work, env, logs[1]) as dmn, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
        procs = [api, dmn]

        def api_ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return http.get("/readyz").status_code == 200
            return False

        wait_for("the API", api_ready, 90, logs, procs)
        client = redis.Redis(unix_socket_path=embedded_socket(redis_dir))

        def daemon_agents() -> list[str] | None:
            import asyncio

            import redis.asyncio as aioredis

            async def read() -> list[dict[str, Any]]:
                c = aioredis.Redis(unix_socket_path=embedded_socket(redis_dir))
                try:
                    return await live_daemons(c, SchedulerKeys.default())
                finally:
                    await c.aclose()

            live = asyncio.run(read())
            return live[0].get("agents") if live else None

        agents = wait_for("the daemon's heartbeat", daemon_agents, 90, logs, procs)
        assert "because_you_watched" in agents and {"memory", "tools", "evaluator"} <= set(agents)

        # the events of the README's curl line (an item of this catalog, now)
        events = json.loads(re.search(r"-d '(\[.*?\])'", bash, flags=re.S).group(1))
        now = int(time.time() * 1000)
        for n, e in enumerate(events):
            e["user_id"], e["ts"] = user, now - 60_000 + n * 30_000
        r = http.post("/v1/events", json=events)
        assert r.status_code == 200 and r.json()["applied"] == 2, r.text

        row = wait_for("the agent's row", lambda: served_row(http, user, "because_you_watched"), 60, logs, procs)
        assert row["produced_by"] == "because_you_watched" and row["title"].startswith("Because you watched")
        assert row["items"] and 7 not in [it["item_id"] for it in row["items"]]  # seen items left out

        # a manual refresh through the API runs it again (a new run id is served)
        body = json.loads(re.search(r"-d '(\{.*?\})'", bash, flags=re.S).group(1))
        r = http.post(f"/v1/users/{user}/refresh", json=body)
        assert r.status_code == 202 and r.json()["agents"] == ["because_you_watched"], r.text
        again = wait_for("the refreshed row",
                         lambda: (x := served_row(http, user, "because_you_watched")) and x["run_id"] != row["run_id"]
                         and x, 60, logs, procs)
        assert again["produced_by"] == "because_you_watched"

        r = http.post(f"/v1/users/{user}/refresh", json={"agents": ["nobody_runs_me"]})
        assert r.status_code == 422 and "nobody_runs_me" in r.json()["detail"]
        client.close()
