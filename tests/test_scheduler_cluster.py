"""The daemon on a real 3-node Redis Cluster (started from the machine's ``redis-server`` on
loopback ports), with the stream sharded by user over 3 streams, so shards, the per-user Lua
scripts and the indexes all land on different nodes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from outerloop.scheduler.keys import SchedulerKeys
from outerloop.scheduler.redis_client import async_client
from outerloop.scheduler.triggers import TriggerRules
from outerloop.ports import free_ports
from tests.test_daemon_process import assert_exactly_once, stream_of_events
from tests.test_scheduler_helpers import Env, RecordingRunner, fast_settings, make_daemon, running, wait_until

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _server_major() -> int:
    if not REDIS_SERVER:
        return 0
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    version = out.split("v=")[1].split()[0] if "v=" in out else "0"
    return int(version.split(".")[0])


pytestmark = pytest.mark.skipif(not (REDIS_CLI and _server_major() >= 7),
                                reason="needs redis-server >= 7 (--cluster-port) and redis-cli on PATH")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[int]]:
    free = free_ports(6)
    ports, bus_ports = free[:3], free[3:]  # the bus port is explicit: port + 10000 may be taken or > 65535
    procs = []
    try:
        for port, bus in zip(ports, bus_ports):
            node_dir = tmp_path / str(port)
            node_dir.mkdir()
            procs.append(subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--logfile", str(node_dir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip(ports, procs):
            _wait_ping(port, proc, tmp_path / str(port) / "redis.log")
        subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while not all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO") for p in ports):
            if time.monotonic() > deadline:
                raise AssertionError("cluster did not become ready")
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
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


async def test_sharded_streams_on_a_three_node_cluster(cluster: list[int]) -> None:
    keys = SchedulerKeys.with_prefix("cl", shards=3)
    client = async_client(url=f"redis://127.0.0.1:{cluster[0]}", cluster=True, block_ms=100)
    env = Env(target=None, prefix="cl", keys=keys, client=client)  # type: ignore[arg-type]
    events = stream_of_events(1_500, users=40, seed=3)
    try:
        await client.initialize()
        # the shards' streams live in different slots, on more than one node
        assert len({client.keyslot(s) for s in keys.streams()}) == 3
        assert len({client.get_node_from_key(s).name for s in keys.streams()}) >= 2
        for ev in events:
            await client.xadd(keys.stream_for_user(ev.user_id), {"event": ev.model_dump_json()})
        runner = RecordingRunner(client, keys=keys)
        a = make_daemon(env, runner, rules=TriggerRules(on_activity=True), settings=fast_settings())
        b = make_daemon(env, runner, rules=TriggerRules(on_activity=True), settings=fast_settings())

        async def all_read() -> bool:
            for stream in keys.streams():
                for g in await client.xinfo_groups(stream):
                    if int(g["pending"]) or int(g.get("lag") or 0):
                        return False
            return a.metrics.events_applied + b.metrics.events_applied == len(events)

        async with running(a), running(b):
            await wait_until(all_read, timeout_s=60, every_s=0.1)
            await asyncio.sleep(0.2)
        await assert_exactly_once(env, events)
        assert runner.max_overlap_per_user == 1
        assert a.metrics.cycles_started + b.metrics.cycles_started > 0
    finally:
        await client.aclose()
