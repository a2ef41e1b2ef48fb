"""One topology setting for serve, daemon and mcp: the same flags and environment, read the same
way, and bad values refused with a message naming the flag (and the variable)."""

from __future__ import annotations

import pytest

from outerloop.cli import build_parser, main
from outerloop.config import Settings
from outerloop.contracts.keys import Keys, SchedulerKeys
from outerloop.errors import UserInputError
from outerloop.topology import Topology, topology_from_args

COMMANDS = ("serve", "daemon", "mcp")
TOPOLOGY_ENV = ("OUTERLOOP_REDIS_URL", "OUTERLOOP_REDIS_CLUSTER", "OUTERLOOP_STREAM_SHARDS", "OUTERLOOP_KEY_PREFIX",
                "OUTERLOOP_DURABLE_WRITES", "OUTERLOOP_DURABLE_WAIT_MS", "OUTERLOOP_SHARED_BUCKETS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOPOLOGY_ENV:
        monkeypatch.delenv(name, raising=False)


def _topology(command: str, *flags: str) -> Topology:
    argv = [command, *flags]
    return topology_from_args(build_parser(argv).parse_args(argv), Settings())


def test_the_three_commands_read_the_environment_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {_topology(c) for c in COMMANDS} == {Topology()}  # the default: embedded, one stream, 'ol'
    monkeypatch.setenv("OUTERLOOP_REDIS_URL", "redis://10.0.0.5:7000")
    monkeypatch.setenv("OUTERLOOP_REDIS_CLUSTER", "true")
    monkeypatch.setenv("OUTERLOOP_STREAM_SHARDS", "4")
    monkeypatch.setenv("OUTERLOOP_KEY_PREFIX", "prod")
    want = Topology(redis_url="redis://10.0.0.5:7000", cluster=True, stream_shards=4, key_prefix="prod")
    assert {_topology(c) for c in COMMANDS} == {want}
    # flags win over the environment, in every command alike
    flags = ("--redis-url", "redis://10.0.0.6:7000", "--no-cluster", "--stream-shards", "2", "--key-prefix", "b")
    assert {_topology(c, *flags) for c in COMMANDS} == {
        Topology(redis_url="redis://10.0.0.6:7000", stream_shards=2, key_prefix="b")}


def test_the_api_and_the_daemon_name_the_same_shards() -> None:
    topo = Topology(redis_url="redis://h:1", cluster=True, stream_shards=3, key_prefix="p")
    keys = SchedulerKeys.for_topology(topo)
    assert keys.base.prefix == "p" and keys.streams() == ["p:events:{s0}", "p:events:{s1}", "p:events:{s2}"]
    assert SchedulerKeys.for_topology(Topology()).streams() == [Keys.events_stream]  # one shard: the plain stream
    assert topo.target().cluster and topo.keys().rows("u") == "p:u:{u}:rows"
    assert Topology.from_settings(Settings(**{k: v for k, v in (kv.split("=", 1) for kv in (
        "redis_url=redis://h:1", "redis_cluster=1", "stream_shards=3", "key_prefix=p"))})) == topo


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"stream_shards": 0}, "--stream-shards (OUTERLOOP_STREAM_SHARDS) must be an integer >= 1, got 0"),
    ({"cluster": True}, "--cluster (OUTERLOOP_REDIS_CLUSTER) needs --redis-url (OUTERLOOP_REDIS_URL)"),
    ({"cluster": True, "redis_url": "unix:///tmp/r.sock"}, "needs a redis:// or rediss:// node URL"),
    ({"key_prefix": "a:b"}, "--key-prefix (OUTERLOOP_KEY_PREFIX) may hold"),
    ({"durable_writes": True}, "--durable-writes (OUTERLOOP_DURABLE_WRITES) needs --redis-url (OUTERLOOP_REDIS_URL)"),
    ({"redis_url": "redis://h:1", "durable_wait_ms": 0},
     "--durable-wait-ms (OUTERLOOP_DURABLE_WAIT_MS) must be an integer from 1 to 10000, got 0"),
])
def test_bad_topologies_name_the_flag(kwargs: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Topology(**kwargs)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_refuses_a_bad_topology_before_loading_anything(
        command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OUTERLOOP_MCP_TOKEN", "x" * 40)
    assert main([command, "--artifacts", "/nonexistent", "--stream-shards", "0"]) == 2
    assert "--stream-shards must be >= 1, got 0" in capsys.readouterr().err
    assert main([command, "--artifacts", "/nonexistent", "--cluster"]) == 2
    assert "--cluster (OUTERLOOP_REDIS_CLUSTER) needs --redis-url" in capsys.readouterr().err
    monkeypatch.setenv("OUTERLOOP_STREAM_SHARDS", "0")
    assert main([command, "--artifacts", "/nonexistent"]) == 2
    assert "(OUTERLOOP_STREAM_SHARDS) must be an integer >= 1, got 0" in capsys.readouterr().err


def test_durable_writes_are_one_setting_for_the_three_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {_topology(c).durable_writes for c in COMMANDS} == {False}  # the default: acknowledge at once
    monkeypatch.setenv("OUTERLOOP_REDIS_URL", "redis://10.0.0.5:7000")
    monkeypatch.setenv("OUTERLOOP_DURABLE_WRITES", "1")
    monkeypatch.setenv("OUTERLOOP_DURABLE_WAIT_MS", "100")
    want = Topology(redis_url="redis://10.0.0.5:7000", durable_writes=True, durable_wait_ms=100)
    assert {_topology(c) for c in COMMANDS} == {want}
    assert want.env()["OUTERLOOP_DURABLE_WRITES"] == "1" and want.env()["OUTERLOOP_DURABLE_WAIT_MS"] == "100"
    assert "durable writes (WAIT 1 100 ms)" in want.describe()
    assert {_topology(c, "--no-durable-writes", "--durable-wait-ms", "50") for c in COMMANDS} == {
        Topology(redis_url="redis://10.0.0.5:7000", durable_wait_ms=50)}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_refuses_a_bad_durable_setting_naming_it(
        command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OUTERLOOP_MCP_TOKEN", "x" * 40)
    assert main([command, "--artifacts", "/nonexistent", "--durable-writes"]) == 2
    assert "--durable-writes (OUTERLOOP_DURABLE_WRITES) needs --redis-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([command, "--artifacts", "/nonexistent", "--durable-wait-ms", "soon"])
    assert "--durable-wait-ms: expected an integer from 1 to 10000, got 'soon'" in capsys.readouterr().err
    monkeypatch.setenv("OUTERLOOP_DURABLE_WRITES", "maybe")
    assert main([command, "--artifacts", "/nonexistent"]) == 2
    assert "OUTERLOOP_DURABLE_WRITES must be 1/true/yes/on or 0/false/no/off, got 'maybe'" in capsys.readouterr().err
    monkeypatch.setenv("OUTERLOOP_DURABLE_WRITES", "0")
    monkeypatch.setenv("OUTERLOOP_DURABLE_WAIT_MS", "20000")
    assert main([command, "--artifacts", "/nonexistent"]) == 2
    assert "(OUTERLOOP_DURABLE_WAIT_MS) must be an integer from 1 to 10000, got 20000" in capsys.readouterr().err


def test_shared_buckets_are_one_setting_one_tag_on_one_server_and_spread_on_a_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    one = _topology("serve")
    assert one.buckets == 1 and one.keys() is Keys  # one server: the keys as they always were
    assert one.keys().cowatch_item(7) == "ol:cw:{cw}:i:7" and one.keys().trending() == "ol:trend"
    monkeypatch.setenv("OUTERLOOP_REDIS_URL", "redis://10.0.0.5:7000")
    monkeypatch.setenv("OUTERLOOP_REDIS_CLUSTER", "1")
    assert {_topology(c).buckets for c in COMMANDS} == {16}  # a cluster's default
    monkeypatch.setenv("OUTERLOOP_SHARED_BUCKETS", "8")
    want = Topology(redis_url="redis://10.0.0.5:7000", cluster=True, shared_buckets=8)
    assert {_topology(c) for c in COMMANDS} == {want}
    assert want.env()["OUTERLOOP_SHARED_BUCKETS"] == "8" and "over 8 hash tags" in want.describe()
    keys = want.keys()
    assert keys.shared_buckets == 8 and keys.prefix == "ol" and keys.rows("u") == "ol:u:{u}:rows"
    assert keys.cowatch_item(7) == f"ol:cw:{{cw.{keys.shared_bucket(7)}}}:i:7"
    assert len({keys.shared_bucket(i) for i in range(1, 200)}) == 8
    assert {_topology(c, "--shared-buckets", "1").buckets for c in COMMANDS} == {1}
    assert Topology(redis_url="redis://h:1", key_prefix="p", shared_buckets=4).keys().prefix == "p"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_refuses_a_bad_bucket_count_naming_it(
        command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OUTERLOOP_MCP_TOKEN", "x" * 40)
    assert main([command, "--artifacts", "/nonexistent", "--shared-buckets", "0"]) == 2
    assert "--shared-buckets (OUTERLOOP_SHARED_BUCKETS) must be an integer from 1 to 1024, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([command, "--artifacts", "/nonexistent", "--shared-buckets", "many"])
    assert "--shared-buckets: expected an integer from 1 to 1024, got 'many'" in capsys.readouterr().err
    monkeypatch.setenv("OUTERLOOP_SHARED_BUCKETS", "lots")
    assert main([command, "--artifacts", "/nonexistent"]) == 2
    assert "OUTERLOOP_SHARED_BUCKETS must be an integer from 1 to 1024, got 'lots'" in capsys.readouterr().err
