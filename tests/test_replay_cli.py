"""``python -m outerloop.evals.replay_cli`` (what ``outerloop eval replay`` delegates to): the
fresh-vs-stale path end to end on a small generated world, a saved model reused only when its
data hash matches, and flag errors that name the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outerloop.evals.replay_cli import main

WORLD = ["--dataset", "synthetic", "--dataset-opt", "n_users=40", "--dataset-opt", "n_films=50",
         "--dataset-opt", "n_series=2", "--dataset-opt", "days=6", "--dataset-opt", "seed=4"]
TINY = ["--epochs", "1", "--d-model", "8", "--threads", "1"]


def test_fresh_stale_cli_trains_saves_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fs.json"
    assert main([*WORLD, *TINY, "--json", "--out", str(out), "--save-model", str(tmp_path / "m"),
                 "--test-share", "0.2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["replay"] == "fresh_vs_stale" and printed["n_requests"] > 0
    assert printed["leakage"] == {"max_train_ts_before_cut": True, "every_history_before_its_request": True}
    assert {"fresh_ndcg@10", "stale_ndcg@10", "fresh_over_stale"} <= set(printed)
    # the saved model is accepted for the same cut, refused for another one (it saw that period)
    assert main([*WORLD, "--json", "--artifacts", str(tmp_path / "m"), "--test-share", "0.2"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["trained"].startswith("loaded from")
    assert main([*WORLD, "--json", "--artifacts", str(tmp_path / "m"), "--test-share", "0.4"]) == 2
    assert "may have seen the test period" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--replay", "inner-outer"], "needs --artifacts"),
    (["--test-share", "1.5"], "--test-share must be in (0, 1)"),
    (["--k", "0"], "--k must be > 0"),
    (["--artifacts", "/nonexistent/dir"], "--artifacts /nonexistent/dir: directory not found"),
])
def test_flag_errors_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*WORLD, *argv]) == 2
    assert message in capsys.readouterr().err
