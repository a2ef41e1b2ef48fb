"""``outerloop plan-capacity``: the capacity model's arithmetic on a small benchmark JSON, and bad
input refused naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outerloop.capacity import parse_scenario, plan
from outerloop.cli import main
from outerloop.errors import UserInputError

BENCH = {
    "benchmark": "cluster", "smoke": True,
    "settings": [
        {"setting": "standalone-w1-d1", "redis": "standalone", "api_workers": 1, "daemons": 1,
         "events": {"api_cpu_ms_per_event": 9.0, "daemon_cpu_ms_per_event": 9.0, "redis_cpu_ms_per_event": 9.0},
         "get_fixed_rate": {"api_cpu_ms_per_request": 9.0, "redis_cpu_ms_per_request": 9.0}},
        {"setting": "cluster-w1-d1", "redis": "cluster", "api_workers": 1, "daemons": 1,
         "events": {"api_cpu_ms_per_event": 0.5, "daemon_cpu_ms_per_event": 1.2, "redis_cpu_ms_per_event": 0.25},
         "get_fixed_rate": {"api_cpu_ms_per_request": 2.0, "redis_cpu_ms_per_request": 0.3},
         "get_max": {"max_rps_at_p99_bound": 700.0}},
        {"setting": "cluster-w2-d0", "redis": "cluster", "api_workers": 2, "daemons": 0,
         "events": {"api_cpu_ms_per_event": 0.5, "daemon_cpu_ms_per_event": None, "redis_cpu_ms_per_event": 0.25},
         "get_fixed_rate": {"api_cpu_ms_per_request": 2.0, "redis_cpu_ms_per_request": 0.3}},
    ],
}


def test_the_plan_scales_the_unit_costs_of_the_chosen_setting() -> None:
    out = plan(BENCH, [parse_scenario("reqs=10000,0"), parse_scenario("events=0,2300000"),
                       parse_scenario("mixed=1000,1000")], utilisation=0.5, replicas=1, cores_per_host=16)
    assert out["from_setting"] == "cluster-w1-d1" and out["from_smoke_run"] is True  # the default choice
    reqs, events, mixed = out["plans"]
    # 10k GET/s: API 10000 x 2 ms = 20 cores -> 40 workers at 50%; Redis 10000 x 0.3 ms = 3 cores -> 6 masters
    assert (reqs["api_cpu_cores"], reqs["api_workers"], reqs["daemon_processes"]) == (20.0, 40, 0)
    assert (reqs["redis_cpu_cores"], reqs["cluster_masters"], reqs["redis_nodes"]) == (3.0, 6, 12)
    assert reqs["cores"] == 46 and reqs["hosts"] == 4  # (46 cores + 6 replicas) / 16 -> 4
    # 2.3M events/s: API 1150 cores -> 2300 workers; daemons 2760 -> 5520; Redis 575 -> 1150 masters
    assert (events["api_workers"], events["daemon_processes"], events["cluster_masters"]) == (2300, 5520, 1150)
    assert events["cores"] == 2300 + 5520 + 1150 and events["hosts"] == -(-(events["cores"] + 1150) // 16)
    # mixed: API 1000 x 2 + 1000 x 0.5 = 2.5 cores -> 5; daemons 1.2 -> 3; Redis 0.55 -> 2
    assert (mixed["api_workers"], mixed["daemon_processes"], mixed["cluster_masters"]) == (5, 3, 2)
    assert out["measured_max_rps_at_p99_bound_one_machine"] == 700.0
    assert any("linearly" in a for a in out["assumptions"])
    # another setting on request; one without a daemon cannot size daemons
    assert plan(BENCH, [("x", 1000, 0)], setting="standalone-w1-d1", utilisation=1.0)["plans"][0]["api_workers"] == 9
    with pytest.raises(UserInputError, match="lacks .*daemon_ms_per_event"):
        plan(BENCH, [("x", 1, 0)], setting="cluster-w2-d0")
    with pytest.raises(UserInputError, match="--setting: 'nope' is not in the JSON"):
        plan(BENCH, [("x", 1, 0)], setting="nope")
    with pytest.raises(UserInputError, match="--utilisation must be in"):
        plan(BENCH, [("x", 1, 0)], utilisation=0)


def test_the_command_prints_the_plan_and_its_assumptions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(BENCH))
    assert main(["plan-capacity", str(path)]) == 0
    text = capsys.readouterr().out
    assert "SMOKE run" in text and "10k-requests | 10000 | 0 | 34 | 0 | 5 | 10" in text and "assumptions:" in text
    assert main(["plan-capacity", str(path), "--json", "--scenario", "a=100,100", "--utilisation", "1"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["plans"]
    assert (row["api_workers"], row["daemon_processes"], row["cluster_masters"]) == (1, 1, 1)
    assert main(["plan-capacity", str(path), "--scenario", "bad"]) == 2
    assert "--scenario: NAME=REQUESTS_PER_S,EVENTS_PER_S" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "serve"}))
    assert main(["plan-capacity", str(tmp_path / "other.json")]) == 2
    assert "is not the output of `outerloop bench cluster`" in capsys.readouterr().err
    assert main(["plan-capacity", str(tmp_path / "missing.json")]) == 2
    assert "bench_json: cannot read" in capsys.readouterr().err
