"""The dataset registry: one name per dataset, one function to load any of them.

``load_dataset(name, data_dir)`` is what the CLI, training and benchmarks call, so a dataset is
added in one place (:data:`DATASETS`) and every command can use it. ``data_dir`` is the data
root holding one folder per dataset (``ml-1m/``, ``ml-100k/``, ``ml-latest-small/``); a
dataset's own folder is accepted too. Without it, ``OUTERLOOP_DATA_DIR`` is read (at call
time, never at import).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from outerloop.data.movielens import load_ml1m_ratings, load_ml100k, load_ml_latest_small, load_sasrec_ml1m
from outerloop.data.schema import InteractionData
from outerloop.data.synthetic import load_synthetic
from outerloop.errors import UserInputError

DATA_DIR_ENV = "OUTERLOOP_DATA_DIR"


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """How to load one dataset. ``folder`` is its sub-folder of the data root; ``None`` means
    it needs no files (generated), and then ``load`` takes keyword options instead."""

    name: str
    description: str
    folder: str | None
    load: Callable[..., InteractionData]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("ml-1m", "MovieLens 1M in SASRec's preprocessed form (6,040 users, 3,416 items, no time)",
                    "ml-1m", load_sasrec_ml1m),
        DatasetSpec("ml-1m-ratings", "MovieLens 1M from the original ratings.dat + movies.dat (with time)",
                    "ml-1m", load_ml1m_ratings),
        DatasetSpec("ml-100k", "MovieLens 100K (u.data, u.item, u.genre)", "ml-100k", load_ml100k),
        DatasetSpec("ml-latest-small", "MovieLens latest-small 2018 (ratings, movies, tags CSVs)",
                    "ml-latest-small", load_ml_latest_small),
        DatasetSpec("synthetic", "the seeded synthetic streaming world (no files; options: "
                    "n_users, n_films, n_series, seed, days, start_ts_ms)", None, load_synthetic),
    )
}


def _dataset_dir(spec: DatasetSpec, data_dir: str | Path | None) -> Path:
    """The folder holding ``spec``'s files: ``<root>/<folder>`` when it exists, else ``data_dir``
    itself (so both ``data/`` and ``data/ml-100k`` work)."""
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise UserInputError(f"dataset {spec.name!r} needs a data directory: pass one or set {DATA_DIR_ENV}")
        data_dir = env
    root = Path(data_dir)
    if not root.is_dir():
        raise UserInputError(f"{root}: data directory not found")
    nested = root / str(spec.folder)
    return nested if nested.is_dir() else root


def load_dataset(name: str, data_dir: str | Path | None = None, **options: Any) -> InteractionData:
    """Load a dataset by its registry name.

    File datasets take the keyword options their loader declares (the rating sets:
    ``dislike_below``); ``synthetic`` ignores ``data_dir`` and passes ``options`` to
    :func:`outerloop.data.synthetic.load_synthetic`. Unknown names and options are a
    :class:`UserInputError` that lists what is valid, since they usually come from a flag.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise UserInputError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if spec.folder is None:
        valid = list(inspect.signature(spec.load).parameters)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise UserInputError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return spec.load(**options)
    valid = list(inspect.signature(spec.load).parameters)[1:]  # after the data directory
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserInputError(f"dataset {name!r} has no option(s) {', '.join(unknown)}"
                             + (f"; valid: {', '.join(valid)}" if valid else " (it takes none)"))
    return spec.load(_dataset_dir(spec, data_dir), **options)


def dataset_hash(data: InteractionData) -> str:
    """sha256 over the catalog's ids and every user's sequence (items, times, actions).

    Stored in the model manifest so an artifact can say exactly which data it was trained on;
    titles and genres are left out (fixing a typo in a title does not change the training data).
    Arrays are hashed as little-endian fixed-width bytes, so the hash is the same on any machine.
    """
    h = hashlib.sha256(b"outerloop-dataset-v1\0")
    h.update(f"{len(data.catalog)}\0".encode())
    h.update("\0".join(f"{it.item_id}:{it.source_id}" for it in data.catalog.items).encode())
    h.update(f"\0{len(data.users)}\0".encode())
    for user in data.users:
        h.update(f"{user.user_id}\0{len(user)}\0".encode())
        h.update(np.ascontiguousarray(user.items, dtype="<i4").tobytes())
        for name, arr, dtype in (("ts", user.ts, "<i8"), ("actions", user.actions, "<i1")):
            if arr is None:
                h.update(f"{name}:none\0".encode())
            else:
                h.update(f"{name}\0".encode())
                h.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return h.hexdigest()


def parse_dataset_options(pairs: list[str], flag: str = "--dataset-opt") -> dict[str, Any]:
    """``["n_users=500", "name=x"]`` -> ``{"n_users": 500, "name": "x"}`` (values read as JSON
    when they parse, else kept as text), for every command that takes ``--dataset-opt``."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts
