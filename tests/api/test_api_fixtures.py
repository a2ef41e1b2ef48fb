"""Shared fixtures of the serving tests (no tests here): real trained artifacts and a ranker.

The artifacts are a tiny transformer trained through the public CLI on a small synthetic world
(about ten seconds), once per test session however many modules import the fixture, and a
ranker trained next to them with :func:`train_ranker`. Nothing here is a stand-in: the serving
tests run the real encoder, the real FAISS index and the real ranker.
"""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from outerloop.clock import now_ms
from outerloop.contracts.events import Event

SYNTHETIC = ["n_users=120", "n_films=120", "n_series=4", "days=10", "seed=3"]


@lru_cache(maxsize=1)
def _build(root: str) -> tuple[Path, Any]:
    import torch

    from outerloop.cli import main as cli
    from outerloop.data.datasets import load_dataset
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.ranker_train import train_ranker

    out = Path(root) / "tiny-artifacts"
    argv = ["train", "--dataset", "synthetic", "--out", str(out), "--epochs", "2", "--d-model", "16",
            "--max-len", "50", "--quiet", "--threads", "1"]
    for opt in SYNTHETIC:
        argv += ["--dataset-opt", opt]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(argv) == 0
    torch.set_num_threads(1)
    artifacts = Artifacts.load(out)
    options = dict(kv.split("=") for kv in SYNTHETIC)
    data = load_dataset("synthetic", None, **{k: int(v) for k, v in options.items()})
    train_ranker(artifacts, data, epochs=4, patience=2, max_history=50)
    return out, data


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of tiny trained artifacts with a ranker (built once per session)."""
    return _build(str(tmp_path_factory.getbasetemp()))[0]


@pytest.fixture(scope="session")
def tiny_data(tiny_dir: Path) -> Any:
    """The synthetic interactions the tiny artifacts were trained on."""
    return _build(str(tiny_dir.parent))[1]


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_dir: Path) -> Any:
    from outerloop.inner_loop.model.artifacts import Artifacts

    return Artifacts.load(tiny_dir)


@pytest.fixture(scope="session")
def tiny_ranker(tiny_dir: Path) -> Any:
    from outerloop.inner_loop.model.ranker import Ranker

    return Ranker.load(tiny_dir)



def event(user: str, item: int | None, type_: str = "play", **kw: Any) -> dict[str, Any]:
    """An Event as JSON (what a client posts)."""
    return {"user_id": user, "item_id": item, "type": type_, "ts": kw.pop("ts", now_ms()), **kw}


def event_obj(user: str, item: int | None, type_: str = "play", **kw: Any) -> Event:
    return Event.model_validate(event(user, item, type_, **kw))
