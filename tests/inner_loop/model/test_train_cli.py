"""``outerloop train`` then ``outerloop eval --json`` end to end, warm start through the CLI,
and bad flags (exit 2, a message naming the flag or file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from outerloop.cli import main

GENRES = ("Comedy", "Drama", "Horror", "Sci-Fi")
TINY_FLAGS = ["--d-model", "16", "--max-len", "16", "--epochs", "2", "--batch-size", "16", "--threads", "1", "--quiet", "--no-bf16"]


def write_sasrec_dir(root: Path, n_items: int = 40, n_users: int = 60, seed: int = 0) -> Path:
    """A tiny dataset in SASRec's ML-1M layout (movies.dat, item map, user-item lines)."""
    d = root / "ml-1m"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with (d / "movies.dat").open("w", encoding="latin-1") as f:
        for m in range(1, n_items + 1):
            f.write(f"{100 + m}::Film {m} ({1970 + m})::{GENRES[m % 4]}|{GENRES[(m + 1) % 4]}\n")
    (d / "sasrec_item_map.txt").write_text("".join(f"{m} {100 + m}\n" for m in range(1, n_items + 1)))
    lines = []
    for u in range(1, n_users + 1):
        start, length = rng.integers(0, n_items), rng.integers(5, 14)
        lines += [f"{u} {(start + k) % n_items + 1}\n" for k in range(length)]
    (d / "sasrec_ml-1m.txt").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    write_sasrec_dir(root)
    out = tmp_path_factory.mktemp("art") / "v1"
    assert main(["train", "--dataset", "ml-1m", "--data-dir", str(root), "--out", str(out), *TINY_FLAGS]) == 0
    return root, out


def test_train_writes_artifacts_and_manifest(trained_dir: tuple[Path, Path]) -> None:
    _, out = trained_dir
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("model_version", "dataset", "data_hash", "config", "metrics", "wall_time_s", "created_at"):
        assert key in manifest, key
    assert manifest["dataset"] == "ml-1m" and manifest["model_version"].startswith("ml-1m-")
    assert manifest["config"]["model"]["d_model"] == 16
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "index.faiss").is_file()
    assert manifest["metrics"]["valid_best"]["ndcg@10"] >= 0


def test_eval_json_prints_one_object_with_the_named_keys(trained_dir: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, out = trained_dir
    capsys.readouterr()
    assert main(["eval", "--artifacts", str(out), "--data-dir", str(root), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("hr@10", "ndcg@10", "sampled100", "popularity", "model_version", "n_users"):
        assert key in report, key
    assert set(report["sampled100"]) >= {"hr@10", "ndcg@10"}
    assert set(report["popularity"]) >= {"hr@10", "ndcg@10", "sampled100"}
    assert report["n_users"] == 60 and report["data_hash_matches"] is True


def test_warm_start_on_a_grown_catalog_with_a_frozen_backbone(trained_dir: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, parent = trained_dir
    root = write_sasrec_dir(tmp_path / "grown", n_items=46, n_users=50, seed=1)  # 6 new films
    out = tmp_path / "v2"
    code = main(["train", "--data-dir", str(root), "--out", str(out), "--init-from", str(parent), "--freeze-backbone", *TINY_FLAGS])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    parent_manifest = json.loads((parent / "manifest.json").read_text())
    assert manifest["config"]["model"]["n_items"] == 46
    assert manifest["parent_version"] == parent_manifest["model_version"]
    assert manifest["alignment"]["n_shared"] == 40 and manifest["alignment"]["file"] == "align.npy"
    assert manifest["config"]["train"]["freeze_backbone"] is True
    assert manifest["config"]["model"]["adapter_dim"] == 16 and manifest["new_items"] == 6  # what it trained


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data-dir", "/nonexistent/dir", "--out", "{tmp}/x"], "--data-dir"),
        (["train", "--data-dir", "{data}", "--out", "{tmp}/x", "--epochs", "0"], "--epochs"),
        (["train", "--data-dir", "{data}", "--out", "{tmp}/x", "--dropout", "1.5"], "--dropout"),
        (["train", "--data-dir", "{data}", "--out", "{tmp}/x", "--freeze-backbone"], "--freeze-backbone"),
        (["train", "--data-dir", "{data}", "--out", "{tmp}/x", "--adapter-dim", "8"], "--adapter-dim"),
        (["train", "--data-dir", "{data}", "--out", "{tmp}/x", "--init-from", "/nonexistent/art"], "--init-from"),
        (["train", "--dataset", "nope", "--data-dir", "{data}", "--out", "{tmp}/x"], "nope"),
        (["train", "--data-dir", "{data}", "--out", "{file}"], "--out"),
        (["eval", "--artifacts", "/nonexistent/art"], "--artifacts"),
        (["eval", "--artifacts", "{tmp}"], "manifest.json"),
    ],
)
def test_bad_input_exits_2_naming_the_flag_or_file(
    argv: list[str], needle: str, trained_dir: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = trained_dir
    (tmp_path / "afile").write_text("x")
    fill = {"tmp": str(tmp_path), "data": str(root), "file": str(tmp_path / "afile")}
    assert main([a.format(**fill) for a in argv]) == 2
    assert needle in capsys.readouterr().err


def test_malformed_flag_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x", "--epochs", "many"])
    assert exc.value.code == 2 and "--epochs" in capsys.readouterr().err
