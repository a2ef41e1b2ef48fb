"""The whole system on a real local Redis Cluster (3 masters + 3 replicas of the machine's
``redis-server``): the API's event write, event by event in its user's stream shard and applied
once, and then the processes as an operator runs them, configured only by the environment's
topology: ``outerloop serve --workers 2`` and two ``outerloop daemon --runner outerloop`` in one
consumer group, on tiny trained artifacts. Events posted to the API reach the daemons through the
shards (together they apply each event once), their agents commit rows, both API workers serve
them, a manual refresh through the API reaches a daemon, the cycles' journal is spread by shard
and merged by the console, and no node answered ``CROSSSLOT`` (the daemons' operations audited)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from outerloop.console.views import agents_view
from outerloop.contracts.events import Event
from outerloop.contracts.keys import SchedulerKeys, counts_keys, runs_keys, shard_of
from outerloop.inner_loop.serving.user_state import UserStore, queue_stream
from outerloop.ports import free_port
from outerloop.topology import Topology
from tests.redis_cluster import LocalCluster, cluster_with_replicas, needs_cluster  # noqa: F401
from tests.api.test_api_fixtures import SYNTHETIC, tiny_dir  # noqa: F401
from tests.api.test_api_server import pids_answering, wait_ready
from tests.scheduler.test_scheduler_helpers import REPO, wait_until

pytestmark = needs_cluster
SHARDS = 3


def _events(users: int, per_user: int, t0: int = 1_780_000_000_000) -> list[Event]:
    return [Event(event_id=f"ev-{u}-{i}", user_id=f"cu{u:02d}", item_id=1 + (u * 7 + i) % 100,
                  type="finish" if i % 3 == 2 else "play", ts=t0 + i * 60_000)
            for u in range(users) for i in range(per_user)]


async def _stream_ids(client: Any, keys: SchedulerKeys) -> dict[str, list[str]]:
    """stream -> event ids in it, in order."""
    out: dict[str, list[str]] = {}
    for stream in keys.streams():
        out[stream] = [json.loads(f[b"event"])["event_id"] for _, f in await client.xrange(stream)]
    return out


async def test_the_api_write_puts_each_event_in_its_users_shard_and_applies_it_once(
        cluster_with_replicas: LocalCluster) -> None:  # noqa: F811
    topology = Topology(redis_url=cluster_with_replicas.url, cluster=True, stream_shards=SHARDS, key_prefix="w1")
    keys = SchedulerKeys.for_topology(topology)
    client = topology.target().async_client()
    store = UserStore(client, history_cap=50, keys=topology.keys(), stream_shards=SHARDS)
    events = _events(users=24, per_user=4)
    try:
        await client.initialize()
        # the shards live in three slots, on more than one master, and a user's keys in the user's slot
        assert len({client.keyslot(s) for s in keys.streams()}) == SHARDS
        assert len({client.get_node_from_key(s).name for s in keys.streams()}) >= 2
        k = topology.keys()
        assert len({client.keyslot(name) for name in (k.history("cu01"), k.seen("cu01"), k.rows("cu01"),
                                                      k.applied_events("cu01"), keys.counters("cu01"))}) == 1

        res = await store.apply(events)  # one batch over 24 users and 3 shards: no CROSSSLOT
        assert (res.accepted, res.applied) == (len(events), len(events))
        in_streams = await _stream_ids(client, keys)
        for ev in events:
            assert in_streams[keys.stream(shard_of(ev.user_id, SHARDS))].count(ev.event_id) == 1, ev.event_id
        assert sum(map(len, in_streams.values())) == len(events)
        assert not await client.exists(k.events_stream)  # nothing in the unsharded stream
        assert (await store.read("cu03", 50)).items.tolist() == [e.item_id for e in events if e.user_id == "cu03"]

        # a crash between the two steps: the stream write landed, the history write did not, and the
        # client (no 2xx) retries the batch: applied once, in the stream at least once
        late = Event(event_id="ev-late", user_id="cu03", item_id=42, type="finish", ts=1_780_000_999_000)
        async with client.pipeline(transaction=False) as pipe:
            queue_stream(pipe, [late], keys=k, stream_shards=SHARDS)
            await pipe.execute()
        assert 42 not in (await store.read("cu03", 50)).items.tolist()
        retried = await store.apply([late])
        assert (retried.applied, retried.duplicates) == (1, 0)
        again = await store.apply(events[:10])  # a re-posted batch changes no history
        assert (again.applied, again.duplicates) == (0, 10)
        state = await store.read("cu03", 50)
        assert state.items.tolist().count(42) == 1 and 42 in state.seen.tolist()
        assert (await _stream_ids(client, keys))[keys.stream_for_user("cu03")].count("ev-late") == 2
    finally:
        await client.aclose()


def _daemon_cmd(consumer: str, tiny: Path, refresh_log: str) -> list[str]:
    """A daemon with no topology flag: the environment says where Redis is and how it is sharded."""
    return [sys.executable, "-m", "outerloop.cli", "daemon", "--consumer", consumer, "--runner", "outerloop",
            "--artifacts", str(tiny), "--catalog", "artifacts", "--refresh-log", refresh_log,
            "--block-ms", "100", "--claim-interval-s", "0.5", "--heartbeat-interval-s", "0.5",
            "--session-sweep-interval-s", "0.2", "--metrics-interval-s", "2", "--cycle-timeout-s", "30",
            "--max-cycles", "4", "--log-level", "info"]


def _world_events(n_users: int) -> list[dict[str, Any]]:
    """Days of the synthetic world the tiny artifacts were trained on, for ``n_users`` users."""
    from outerloop.data.synthetic import SyntheticWorld

    opts = {k: int(v) for k, v in (kv.split("=") for kv in SYNTHETIC)}
    world = SyntheticWorld.generate(n_users=opts["n_users"], n_films=opts["n_films"], n_series=opts["n_series"],
                                    seed=opts["seed"])
    users = {u.user_id for u in world.users[:n_users]}
    return sorted((e for e in world.simulate(days=6) if e["user_id"] in users), key=lambda e: e["ts"])


async def _caught_up(client: Any, keys: SchedulerKeys) -> bool:
    """Every shard's entries read and acknowledged, and no user waiting for a cycle."""
    for shard, stream in enumerate(keys.streams()):
        if not await client.exists(stream):
            continue
        length = await client.xlen(stream)
        for g in await client.xinfo_groups(stream):
            if int(g["pending"]) or int(g.get("entries-read") or 0) < length:
                return False
        if await client.zcard(keys.due(shard)):
            return False
    return True


async def test_events_posted_to_two_api_workers_reach_two_daemons_through_the_shards_and_rows_are_served(
        cluster_with_replicas: LocalCluster, tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    topology = Topology(redis_url=cluster_with_replicas.url, cluster=True, stream_shards=SHARDS, key_prefix="e2e")
    keys = SchedulerKeys.for_topology(topology)
    env = {**os.environ, **topology.env(), "OUTERLOOP_API_KEY": "k1", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    refresh_log = "e2e:refresh"
    api_log, daemon_log, daemon2_log = tmp_path / "api.log", tmp_path / "daemon.log", tmp_path / "daemon2.log"
    with api_log.open("wb") as a, daemon_log.open("wb") as d, daemon2_log.open("wb") as d2:
        api = subprocess.Popen([sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(tiny_dir),
                                "--port", str(port), "--workers", "2"], cwd=REPO, env=env, stdout=a,
                               stderr=subprocess.STDOUT)
        daemon = subprocess.Popen(_daemon_cmd("d1", tiny_dir, refresh_log), cwd=REPO, env=env, stdout=d,
                                  stderr=subprocess.STDOUT)
        # a second daemon in the same consumer group: the two share every shard's entries
        daemon2 = subprocess.Popen(_daemon_cmd("d2", tiny_dir, refresh_log), cwd=REPO, env=env, stdout=d2,
                                   stderr=subprocess.STDOUT)
    client = topology.target().async_client()
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_ready, base, api, api_log)
        assert "Redis Cluster via" in api_log.read_text() and "3 stream shards" in api_log.read_text()
        events = _world_events(n_users=12)
        assert 150 <= len(events) <= 1500, len(events)
        async with httpx.AsyncClient(base_url=base, timeout=10, headers={"X-API-Key": "k1"}) as http:
            for i in range(0, len(events), 100):
                r = await http.post("/v1/events", json=events[i:i + 100])
                assert r.status_code == 200, r.text
                assert r.json()["applied"] == len(events[i:i + 100])
            # a client's retry of a batch it did not see acknowledged: nothing changes twice
            r = await http.post("/v1/events", json=events[:50])
            assert r.status_code == 200 and r.json()["duplicates"] == 50, r.text

        # every event is in its user's shard (the retried ones twice: the stream is at-least-once)
        in_streams = await _stream_ids(client, keys)
        for i, e in enumerate(events):
            assert in_streams[keys.stream_for_user(e["user_id"])].count(e["event_id"]) == (2 if i < 50 else 1)
        assert not await client.exists(topology.keys().events_stream)

        async def done() -> bool:  # everything read, no cycle waiting or running
            assert daemon.poll() is None, daemon_log.read_text()[-3000:]
            assert daemon2.poll() is None, daemon2_log.read_text()[-3000:]
            if not (await _caught_up(client, keys) and await client.xlen(refresh_log) > 0):
                return False
            for u in {e["user_id"] for e in events}:
                if await client.exists(keys.cycle_lock(u)):
                    return False
            return True

        await wait_until(done, timeout_s=90, every_s=0.2)
        # the daemon applied each event once (the retried batch included)
        by_user: dict[str, set[str]] = {}
        for e in events:
            by_user.setdefault(e["user_id"], set()).add(e["event_id"])
        for user, ids in by_user.items():
            applied = {m.decode() for m in await client.smembers(keys.applied(user))}
            assert {m for m in applied if not m.startswith("release:")} == ids, user
            assert int(await client.hget(keys.counters(user), "events")) == len(ids), user

        cycles = [{k.decode(): v.decode() for k, v in f.items()} for _, f in await client.xrange(refresh_log)]
        committed = {c["user"]: c["rows"].split(",") for c in cycles if c["rows"]}
        assert committed, f"no cycle committed a row: {cycles}"
        user, row_ids = next(iter(sorted(committed.items())))
        stored = {k.decode(): json.loads(v) for k, v in (await client.hgetall(topology.keys().rows(user))).items()}
        assert set(row_ids) <= set(stored)
        # both API workers serve the agents' row, as committed
        answers = await asyncio.to_thread(pids_answering, base, f"/v1/users/{user}/recommendations", 2, k=10)
        assert len(answers) == 2, f"answers came from {sorted(answers)} only"
        for pid, doc in answers.items():
            served = {r["row_id"]: r for r in doc["rows"]}
            assert not doc["degraded"], pid
            shown = [rid for rid in row_ids if rid in served]
            assert shown, (pid, row_ids, list(served))
            assert all(served[rid]["run_id"] == stored[rid]["run_id"] for rid in shown), pid

        # a manual refresh through the API reaches the daemon too (its due entry in the user's shard)
        seen = await client.xlen(refresh_log)
        async with httpx.AsyncClient(base_url=base, timeout=10, headers={"X-API-Key": "k1"}) as http:
            r = await http.post(f"/v1/users/{user}/refresh", json={"agents": ["tools"]})
            assert r.status_code == 202 and r.json()["live_daemons"] == 2, r.text

        async def refreshed() -> bool:
            entries = (await client.xrange(refresh_log))[seen:]
            return any(f[b"user"].decode() == user and b"manual" in f[b"triggers"] for _, f in entries)

        await wait_until(refreshed, timeout_s=30, every_s=0.1)

        # the cycles' journal is spread by shard (each shard's runs stream and counts under the
        # shard's tag, on more than one master), and the console's view merges the shards
        runs = runs_keys(topology.keys(), SHARDS)
        assert len({client.keyslot(k) for k in runs}) == SHARDS
        assert len({client.get_node_from_key(k).name for k in runs}) >= 2
        journaled = [await client.xlen(k) for k in runs]
        assert sum(1 for n in journaled if n) >= 2, journaled
        view = await agents_view(client, topology.keys())
        assert view["window"]["cycles"] == sum(journaled), (view["window"], journaled)
        totals = sum(a["totals"]["all"] for a in view["agents"])
        counted = 0
        for key in counts_keys(topology.keys(), SHARDS):
            counted += sum(int(v) for v in (await client.hgetall(key)).values())
        assert totals == counted > 0
    finally:
        for proc in (api, daemon, daemon2):
            proc.terminate()
        for proc, log in ((api, api_log), (daemon, daemon_log), (daemon2, daemon2_log)):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await client.aclose()
    assert daemon.returncode == 0, daemon_log.read_text()[-3000:]
    assert daemon2.returncode == 0, daemon2_log.read_text()[-3000:]
    assert "Traceback" not in api_log.read_text(), api_log.read_text()[-3000:]
    # the audit: no node refused a command spanning two slots, the cluster client refused none
    # before sending it, and no script touched a key it did not declare (its error is logged)
    errors = cluster_with_replicas.error_counts()
    assert not errors.get("CROSSSLOT"), errors
    for log in (api_log, daemon_log, daemon2_log):
        assert not any(s in log.read_text() for s in ("map to the same", "CROSSSLOT", "non local key")), log
    # together the two daemons applied each distinct event exactly once (each says so when it stops)
    applied = [int(re.findall(r"stopped: .*?applied=(\d+)", log.read_text())[-1]) for log in (daemon_log, daemon2_log)]
    assert sum(applied) == len({e["event_id"] for e in events}), applied
