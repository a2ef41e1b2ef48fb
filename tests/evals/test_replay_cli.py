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


def test_inner_outer_trains_what_is_missing_once_and_reports_each_staleness(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On artifacts fresh from `outerloop train`, the replay trains the ensemble and both rankers
    once (the inner-only one first, the served one a correction of it), caches them next to the
    artifacts, and reports every staleness setting with its lift,
    ablation, cost and the ensemble agent's runs; a second run trains nothing."""
    from outerloop.cli import main as cli

    arts = tmp_path / "arts"
    assert cli(["train", *WORLD, "--out", str(arts), *TINY, "--max-len", "30", "--quiet"]) == 0
    capsys.readouterr()
    argv = [*WORLD, "--replay", "inner-outer", "--artifacts", str(arts), "--users", "6", "--staleness", "0,2", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    # the inner-only ranker first: the served one is a correction of it
    assert first["prepared"]["trained_now"] == ["ensemble", "inner-only ranker", "ranker (outer-loop rows)"]
    assert (arts / "ensemble" / "ensemble.json").is_file() and (arts / "ranker-inner" / "ranker.json").is_file()
    served = json.loads((arts / "ranker.json").read_text())
    assert served["residual_of"] == "ranker-inner" and served["report"]["residual_of"]["dir"] == "ranker-inner"
    # which rows the correction reads was chosen on users held out from its training and stopping
    choice = first["prepared"]["served_ranker_rows_choice"]
    assert set(choice["selection_ndcg@10"]) == {"every row", "log-prob rows only"}
    assert choice["selection_users"] > 0 and all(v is not None for v in choice["selection_ndcg@10"].values())
    assert choice["chosen"] == max(choice["selection_ndcg@10"], key=choice["selection_ndcg@10"].get)
    assert choice["reads_rows"]["log-prob rows only"] == ["ensemble_picks"]
    assert served["reads_rows"] == first["prepared"]["served_ranker_reads_rows"] == choice["reads_rows"][choice["chosen"]]
    assert first["staleness"] == [0, 2] and [s["staleness"] for s in first["by_staleness"]] == [0, 2]
    assert "ensemble" in first["agents"] and first["inner_arm"] in first["inner_arms"]
    # the headline's inner arm is the inner-only ranker, what a user without rows is served
    assert first["inner_arm"].startswith("inner-only") and len(first["inner_arms"]) == 2
    for s in first["by_staleness"]:
        assert s["agents"]["ensemble"].get("ok", 0) + s["agents"]["ensemble"].get("killed", 0) == 6
        assert "ensemble_picks" in s["ablation_each_row_removed"]
        assert s["leakage"]["events_after_the_staleness_cut"] == 0 and s["budget"]["retries"] == 0
    # every training user's rows fresh and once stale: two examples per user, all on one side
    rep = served["report"]
    assert rep["rows_provenance"]["every_user_at"] == [0] and rep["examples_train"] == 2 * rep["users_train"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["prepared"]["trained_now"] == []
    # rankers trained for other epochs (the demo's short ones) are not reused as if they were these
    from outerloop.errors import UserInputError
    from outerloop.evals.prepare import prepare_outer_loop
    from outerloop.inner_loop.model.artifacts import Artifacts, training_data

    loaded = Artifacts.load(arts)
    data = training_data(loaded, None, None)
    with pytest.raises(UserInputError, match="inner-only ranker is missing or was trained for another setup"):
        prepare_outer_loop(loaded, data, staleness=(0, 2), allow_training=False, ranker_epochs=3)
    assert main([*argv[:-3], "--staleness", "0,-1", "--json"]) == 2
    assert "--staleness must be comma-separated integers >= 0" in capsys.readouterr().err
