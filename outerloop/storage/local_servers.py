"""Real local Redis servers for tests and benchmarks: the machine's ``redis-server`` (7 or later)
started on free loopback ports and killed afterwards. :func:`local_cluster` starts ``masters``
masters with ``replicas`` replicas each and joins them with ``redis-cli --cluster create``;
:func:`local_pair` one master and its replica (no cluster); :func:`local_server` one plain server.
The nodes can be killed (``SIGKILL``) or paused (``SIGSTOP``) one by one, and their pids read (a
benchmark counts their CPU). :func:`missing` says why a cluster cannot be started here, or None.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from outerloop.ports import free_ports

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _server_major() -> int:
    if not REDIS_SERVER:
        return 0
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    version = out.split("v=")[1].split()[0] if "v=" in out else "0"
    return int(version.split(".")[0])


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if not REDIS_SERVER:
        return "no redis-server on PATH"
    if not REDIS_CLI:
        return "no redis-cli on PATH (it creates the cluster)"
    if _server_major() < 7:
        return "redis-server < 7 has no --cluster-port (the bus port must be explicit on shared machines)"
    return None


@dataclass(frozen=True)
class LocalCluster:
    """The nodes of one running cluster."""

    ports: list[int]  # every node, masters first as created (roles may change on failover)
    masters: int
    replicas: int
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def url(self) -> str:
        """A URL of one node still running: what ``--redis-url`` takes with ``--cluster``."""
        return f"redis://127.0.0.1:{self.alive()[0]}"

    def alive(self) -> list[int]:
        return [p for p in self.ports if p not in self.procs or self.procs[p].poll() is None]

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no last write to anyone)."""
        self.procs[port].kill()
        self.procs[port].wait()

    def pause(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGCONT)

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of the replicas the master has now (its own word: ``INFO replication``)."""
        info = redis.Redis(port=master_port).info("replication")
        return [int(info[f"slave{i}"]["port"]) for i in range(int(info.get("connected_slaves", 0)))]

    def error_counts(self) -> dict[str, int]:
        """Error replies by kind (``CROSSSLOT``, ``MOVED``, ``ERR``...) the live nodes gave since
        they started (``INFO errorstats``), summed: a test's audit that no client sent a command
        spanning two slots. (``ERR`` is no such audit: redis-py 8 opens every connection with
        ``CLIENT SETINFO``, which Redis 7.0 answers with an ``ERR``.)"""
        out: dict[str, int] = {}
        for p in self.alive():
            for name, stat in redis.Redis(port=p).info("errorstats").items():
                if name.startswith("errorstat_"):
                    out[name[len("errorstat_"):]] = out.get(name[len("errorstat_"):], 0) + int(stat["count"])
        return out

    def wait_state_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok``."""
        _wait_ready(self.alive(), replicas=0, timeout_s=timeout_s)


@contextlib.contextmanager
def local_cluster(root: Path, *, masters: int = 3, replicas: int = 0,
                  node_timeout_ms: int = 2000) -> Iterator[LocalCluster]:
    """Start the nodes, create the cluster, wait until every node says ``cluster_state:ok``
    (and every replica's link to its master is up), yield, kill the nodes."""
    n = masters * (1 + replicas)
    free = free_ports(2 * n)
    ports, bus_ports = free[:n], free[n:]  # the bus port is explicit: port + 10000 may be taken or > 65535
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, bus in zip(ports, bus_ports):
            node_dir = root / f"node-{port}"
            node_dir.mkdir(parents=True)
            procs.append(subprocess.Popen(
                [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(node_timeout_ms),
                 "--save", "", "--appendonly", "no", "--logfile", str(node_dir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip(ports, procs):
            _wait_ping(port, proc, root / f"node-{port}" / "redis.log")
        done = subprocess.run([str(REDIS_CLI), "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                               "--cluster-replicas", str(replicas), "--cluster-yes"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        _wait_ready(ports, replicas=masters * replicas)
        yield LocalCluster(ports=ports, masters=masters, replicas=replicas, procs=dict(zip(ports, procs)))
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused node dies on SIGKILL all the same; be sure
            proc.kill()
        for proc in procs:
            proc.wait()


@dataclass(frozen=True)
class LocalPair:
    """One master and its replica (no cluster)."""

    master: int
    replica: int
    procs: dict[int, subprocess.Popen[bytes]] = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.master}"

    def pause(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGCONT)


@contextlib.contextmanager
def local_pair(root: Path) -> Iterator[LocalPair]:
    """A master and one replica of the machine's ``redis-server`` on free loopback ports; yields
    once the replica's link is up, kills both afterwards."""
    master, replica = free_ports(2)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, extra in ((master, []), (replica, ["--replicaof", "127.0.0.1", str(master)])):
            node_dir = root / f"node-{port}"
            node_dir.mkdir(parents=True)
            procs.append(subprocess.Popen(
                [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir), "--save", "",
                 "--appendonly", "no", "--logfile", str(node_dir / "redis.log"), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip((master, replica), procs):
            _wait_ping(port, proc, root / f"node-{port}" / "redis.log")
        deadline = time.monotonic() + 30
        while redis.Redis(port=replica).info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not link to its master"
            time.sleep(0.05)
        yield LocalPair(master=master, replica=replica, procs=dict(zip((master, replica), procs)))
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        for proc in procs:
            proc.wait()


def _wait_ping(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if redis.Redis(port=port).ping():
                return
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                raise AssertionError(f"redis-server on {port} did not start (exit {proc.poll()}):\n{text[-2000:]}")
            time.sleep(0.05)


def _wait_ready(ports: list[int], *, replicas: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ok = all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO") for p in ports)
        if ok and replicas:
            linked = sum(redis.Redis(port=p).info("replication").get("master_link_status") == "up" for p in ports)
            ok = linked == replicas
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the cluster did not become ready")
        time.sleep(0.1)


@dataclass(frozen=True)
class LocalServer:
    """One plain server (no cluster, no replica)."""

    port: int
    proc: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@contextlib.contextmanager
def local_server(root: Path) -> Iterator[LocalServer]:
    """One ``redis-server`` on a free loopback port (no persistence); killed afterwards."""
    (port,) = free_ports(1)
    node_dir = root / f"node-{port}"
    node_dir.mkdir(parents=True)
    proc = subprocess.Popen([str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                             "--save", "", "--appendonly", "no", "--logfile", str(node_dir / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ping(port, proc, node_dir / "redis.log")
        yield LocalServer(port=port, proc=proc)
    finally:
        proc.kill()
        proc.wait()

