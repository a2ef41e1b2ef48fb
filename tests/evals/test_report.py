"""The HTML report: figures from each kind of input, sections that say what is missing, inputs
recognised by content, and the CLI. (The browser check is in test_report_browser.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from outerloop.contracts.run_record import RunRecord
from outerloop.cli import main as cli
from outerloop.errors import UserInputError
from outerloop.evals import plots, replay
from outerloop.evals.budget_report import budget_compliance
from outerloop.evals.report import _find_latency, build_report, classify, load_inputs
from tests.evals.test_replay import chain_data, next_item_scorer


def fresh_stale_result() -> dict[str, Any]:
    """A real fresh-vs-stale result (the replay's own function on small data)."""
    data = chain_data()
    cut = replay.time_cut_ms(data, 0.5)
    requests, _ = replay.served_requests(data, cut)
    out = replay.fresh_vs_stale(data, next_item_scorer(len(data.catalog), []), requests)
    return {"replay": "fresh_vs_stale", "dataset": "chain", "cut": replay.iso(cut), **out}


def inner_outer_result() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    recs = [RunRecord(f"r{i}", agent, budget, float(rng.uniform(0.2, 1.1) * budget),
                      "killed" if i % 17 == 0 else "ok", overrun_ms=float(rng.uniform(0, 3)) if i % 17 == 0 else 0.0)
            for i, (agent, budget) in enumerate([("memory", 80.0), ("tools", 150.0), ("planner", 50.0)] * 40)]
    return {"replay": "inner_vs_outer", "dataset": "ml-1m", "users": 40, "k": 10, "inner_ndcg@10": 0.120,
            "outer_ndcg@10": 0.123, "relative_lift": 0.025, "relative_lift_ci95": [-0.01, 0.06],
            "users_better": 5, "users_worse": 3,
            "what_the_outer_loop_did": {"rows": {"top_picks": {"committed": 38, "target_in_row": 9,
                                                               "served_row_ndcg@10": 0.08}},
                                        "target_origin_in_outer_top_k": {"ann+agent": 7},
                                        "facts_written_by_kind": {"genre_affinity": 120}},
            "budget": budget_compliance(recs),
            "by_staleness": [{"staleness": k, "outer_ndcg@10": 0.123 - 0.001 * k, "relative_lift": 0.025 - 0.002 * k,
                              "relative_lift_ci95": [-0.01 - 0.002 * k, 0.06 - 0.002 * k],
                              "ablation_each_row_removed": {"top_picks": {"relative_lift_without": 0.01}},
                              "cost": {"outer_loop_cpu_ms_per_cycle": {"mean": 25.0},
                                       "outer_loop_cpu_ms_per_interaction": 25.0 / (k + 1),
                                       "inner_loop_cpu_ms_per_request": {"mean": 4.0}}}
                             for k in (0, 1, 2, 5, 10)]}


def training_manifest(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": e, "loss": 8.0 - 0.2 * e, "valid_ndcg@10": 0.02 + 0.01 * e - 0.0004 * e * e}
               for e in range(1, 13)]
    (path / "manifest.json").write_text(json.dumps({
        "model_version": "ml-1m-test", "dataset": "ml-1m", "history": history, "best_epoch": 12, "epochs_run": 12,
        "metrics": {"valid_best": {"ndcg@10": 0.08}, "ndcg@10": 0.079, "hr@10": 0.15, "popularity": {"ndcg@10": 0.02}}}))
    return path


def build_sample_report(out: Path) -> Path:
    """A report with every section filled: what the browser test opens."""
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    rng = np.random.default_rng(1)
    docs = {"fs.json": fresh_stale_result(), "io.json": inner_outer_result(),
            "serve.json": {"bench": "serve", "p50_ms": 6.1, "p99_ms": 19.0,
                           "phases": [{"name": "rate 200", "latency_samples_ms": rng.gamma(3, 2, 500).tolist()}]},
            "budgets.json": {"bench": "budgets", "runs": 100, "killed": 40, "retries": 0, "overrun_p50_ms": 0.6,
                             "overrun_p99_ms": 4.9, "late_writes_committed": 0,
                             "by_kind": {"sleeper": {"killed": 20, "overrun_p99_ms": 2.3},
                                         "spinner": {"killed": 20, "overrun_p99_ms": 5.2}}}}
    for name, doc in docs.items():
        p = out.parent / name
        p.write_text(json.dumps(doc))
        files.append(p)
    return build_report(out, artifacts_dir=training_manifest(out.parent / "arts"), inputs=load_inputs(files),
                        measure_latency=False)


def test_full_report_has_every_figure_and_no_missing_section(tmp_path: Path) -> None:
    index = build_sample_report(tmp_path / "r")
    text = index.read_text()
    figures = sorted(p.name for p in (tmp_path / "r" / "plots").glob("*.png"))
    assert figures == ["budget_bench_0.png", "budget_replay_0.png", "fresh_stale.png", "latency.png",
                       "lift_0.png", "lift_staleness_0.png", "training.png"]
    for name in figures:
        assert f'src="plots/{name}"' in text
        assert (tmp_path / "r" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'class="missing"' not in text
    assert "<script" not in text and "http" not in text.replace("http.", "")
    assert "ml-1m-test" in text and "0.0250" in text  # model version, lift
    assert "staleness k" in text and "top_picks: 0.01" in text  # the per-k table with its ablation


def test_empty_report_says_what_is_missing(tmp_path: Path) -> None:
    index = build_report(tmp_path / "empty", measure_latency=False)
    text = index.read_text()
    assert text.count('class="missing"') == 5
    for hint in ("outerloop train", "outerloop eval replay --dataset ml-100k", "--dataset ml-1m", "bench/budgets.py"):
        assert hint in text


def test_inputs_are_recognised_by_content(tmp_path: Path) -> None:
    assert classify({"replay": "fresh_vs_stale"}) == "fresh_stale"
    assert classify({"replay": "inner_vs_outer"}) == "inner_outer"
    assert classify({"runs": 3, "overrun_p99_ms": 1.0}) == "budget_bench"
    assert classify({"p99_ms": 12.0}) == "serve_bench"
    assert classify({"latency_histogram": {"edges_ms": [0, 1, 2], "counts": [3, 4]}}) == "serve_bench"
    lines = tmp_path / "many.jsonl"
    lines.write_text(json.dumps({"p99_ms": 1.0}) + "\n" + json.dumps({"what": "else"}) + "\n")
    got = load_inputs([lines])
    assert len(got.serve_benches) == 1 and got.other == [(str(lines), {"what": "else"})] and not got.unknown
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(UserInputError, match="not JSON"):
        load_inputs([bad])
    with pytest.raises(UserInputError, match="not found"):
        load_inputs([tmp_path / "absent.json"])


def test_latency_histogram_input_is_expanded(tmp_path: Path) -> None:
    doc = {"p99_ms": 3.0, "latency_histogram": {"edges_ms": [0.0, 2.0, 4.0], "counts": [5, 1]},
           "baseline_latency_histogram": {"edges_ms": [0.0, 1.0], "counts": [2]}}
    assert _find_latency(doc) == {"requests": [1.0] * 5 + [3.0], "requests (baseline)": [0.5, 0.5]}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    index = build_report(tmp_path / "r", inputs=load_inputs([tmp_path / "s.json"]), measure_latency=False)
    assert 'src="plots/latency.png"' in index.read_text()


def test_plots_write_pngs_even_without_kills(tmp_path: Path) -> None:
    p = plots.budget_overruns({"tools": [10.0, 20.0]}, {"tools": 150.0}, [], tmp_path / "b.png")
    q = plots.lift_bars(0.1, 0.0, tmp_path / "l.png", ci=None, reference_lift=None)
    assert p.stat().st_size > 1000 and q.stat().st_size > 1000


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arts = training_manifest(tmp_path / "arts")
    fs = tmp_path / "fs.json"
    fs.write_text(json.dumps(fresh_stale_result()))
    assert cli(["report", "--out", str(tmp_path / "out"), "--artifacts", str(arts), "--inputs", str(fs),
                "--no-measure", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["figures"] == ["plots/fresh_stale.png", "plots/training.png"]
    assert cli(["report", "--out", str(tmp_path / "o2"), "--artifacts", str(tmp_path / "nope")]) == 2
    assert "directory not found" in capsys.readouterr().err


def test_run_records_summarised_by_budget_compliance_get_a_figure_and_their_name(tmp_path: Path) -> None:
    recs = [RunRecord(run_id=f"r{i}", agent="tools", budget_ms=150.0, elapsed_ms=20.0 + i, outcome="ok")
            for i in range(5)]
    recs.append(RunRecord(run_id="k", agent="deep_rerank", budget_ms=250.0, elapsed_ms=252.0, outcome="killed",
                          overrun_ms=2.0, isolated=True))
    (tmp_path / "b.json").write_text(json.dumps({"name": "demo daemon", **budget_compliance(recs)}))
    index = build_report(tmp_path / "r", inputs=load_inputs([tmp_path / "b.json"]), measure_latency=False)
    text = index.read_text()
    assert 'src="plots/budget_runs_0.png"' in text and "demo daemon" in text


def test_other_benchmarks_show_their_figures(tmp_path: Path) -> None:
    """An input without a plot of its own (an eval, a loop or model bench) is a table of its
    scalar figures, nested keys dotted, samples left out; a non-object is still reported."""
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"model_version": "m-1", "ndcg@10": 0.1787,
                              "sampled100": {"ndcg@10": 0.6123, "n": 6040}, "samples": [1, 2, 3]}))
    odd = tmp_path / "odd.json"
    odd.write_text("[1, 2]")
    index = build_report(tmp_path / "r", inputs=load_inputs([ev, odd]), measure_latency=False)
    text = index.read_text()
    other = text.split("<h2>Other figures</h2>", 1)[1]
    for cell in ("<td>ndcg@10</td><td>0.1787</td>", "<td>sampled100.ndcg@10</td><td>0.6123</td>",
                 "<td>sampled100.n</td><td>6040</td>", "<td>model_version</td><td>m-1</td>"):
        assert cell in other
    assert "samples" not in other
    assert "Inputs not recognised" in text and str(odd) in text


def test_a_loop_bench_with_a_cache_curve_gets_its_plot_and_verdict(tmp_path: Path) -> None:
    pts = [{"clusters": k, "pool": pool, "hit_rate": hit, "loss_pct": loss}
           for k, hit in ((16, 0.9), (64, 0.7)) for pool, loss in ((600, 4.0 if k == 16 else 3.0), (1500, 0.4))]
    best = {"clusters": 16, "pool": 1500, "hit_rate": 0.9, "loss_pct": 0.4}
    doc = {"bench": "loop", "dataset": "ml-1m",
           "tool_cache_curve": {"users": 600, "points": pts, "goal": "loss <= 1%", "best_meeting_goal": best}}
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(doc))
    index = build_report(tmp_path / "r", inputs=load_inputs([path]), measure_latency=False)
    section = index.read_text().split("<h2>The tool cache: hit rate against quality</h2>", 1)[1]
    assert "k = 16 clusters, pool 1500: hit rate 90%, loss 0.4%" in section
    assert (tmp_path / "r" / "plots" / "cache_tradeoff_0.png").stat().st_size > 5_000
    doc["tool_cache_curve"]["best_meeting_goal"] = None
    path.write_text(json.dumps(doc))
    index = build_report(tmp_path / "r2", inputs=load_inputs([path]), measure_latency=False)
    assert "No setting swept meets the goal" in index.read_text()
