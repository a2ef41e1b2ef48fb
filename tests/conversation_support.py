"""Shared helpers of the conversation tests (no tests here): the written request set and the
three catalogs it is written against, each loaded once per session."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from outerloop.conversation import CatalogFacts, Turn

REQUESTS_FILE = Path(__file__).parent / "data" / "conversation_requests.json"
SYNTHETIC_OPTIONS = {"n_users": 120, "n_films": 120, "n_series": 4, "days": 10, "seed": 3}  # test_api_fixtures' world
CATALOGS = ("ml-1m", "ml-latest-small", "synthetic")


def requests() -> list[dict[str, Any]]:
    return list(json.loads(REQUESTS_FILE.read_text())["requests"])


@lru_cache(maxsize=None)
def dataset(name: str, data_dir: str) -> Any:
    from outerloop.data.datasets import load_dataset

    if name == "synthetic":
        return load_dataset("synthetic", None, **SYNTHETIC_OPTIONS)
    return load_dataset(name, data_dir)


@lru_cache(maxsize=None)
def facts(name: str, data_dir: str) -> CatalogFacts:
    return CatalogFacts(dataset(name, data_dir).catalog, name=name)


def turns_for(request: dict[str, Any], f: CatalogFacts) -> list[Turn]:
    """The request's earlier turns, assistant turns' titles resolved to ids by exact title."""
    out = []
    for t in request.get("turns", []):
        if t["role"] == "assistant":
            ids = []
            for title in t.get("shown", []):
                item_id = f.titles.resolve(title, loose=False)
                assert item_id is not None and f.item(item_id).title == title, f"{title!r} is not in {f.name}"
                ids.append(item_id)
            out.append(Turn(role="assistant", item_ids=ids))
        else:
            out.append(Turn(role="user", text=t["text"]))
    return out


HARD_DEFAULTS: dict[str, Any] = {
    "include_genres": [], "any_genres": [], "exclude_genres": [], "min_runtime_min": None, "max_runtime_min": None,
    "min_year": None, "max_year": None, "kind": None, "tones": [], "anchors": [],
}


def comparable(constraints: Any) -> dict[str, Any]:
    """The fields a request's ``expect`` speaks about, anchors as titles."""
    d = constraints.model_dump(include=set(HARD_DEFAULTS))
    d["anchors"] = [a["title"] for a in d["anchors"]]
    return d


class CatalogArtifacts:
    """Artifacts-shaped vectors for a catalog that has no trained model in the test run.

    Training on ML-1M takes minutes, so the MovieLens satisfaction tests use content vectors
    (genres, decade, a seeded random part) in a real FAISS index, and a user vector that is the
    mean of the history's vectors. Constraint satisfaction is a property of the filter and the
    reflect step, not of embedding quality; relevance is measured with trained artifacts in
    ``bench/conversation.py``.
    """

    def __init__(self, catalog: Any, name: str, dim: int = 32, seed: int = 0) -> None:
        import numpy as np

        from outerloop.inner_loop.model.index import build_item_index

        rng = np.random.default_rng(seed)
        genres = {g: j for j, g in enumerate(catalog.genres)}
        n = len(catalog) + 1
        vecs = rng.normal(0.0, 0.3, size=(n, dim)).astype(np.float32)
        for it in catalog.items:
            for g in it.genres:
                vecs[it.item_id, genres[g] % dim] += 1.0
            if it.year is not None:
                vecs[it.item_id, (it.year // 10) % dim] += 0.5
        vecs[0] = 0.0
        self.catalog = catalog
        self.item_vectors = vecs
        self.popularity = np.zeros(n, dtype=np.int64)
        self.index = build_item_index(vecs)
        self.manifest = {"dataset": name, "model_version": f"catalog-{name}"}

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    def encode(self, histories: Any, actions: Any = None, ts: Any = None) -> Any:
        import numpy as np

        out = np.zeros((len(histories), self.item_vectors.shape[1]), dtype=np.float32)
        for b, h in enumerate(histories):
            if len(h):
                out[b] = self.item_vectors[np.asarray(h, dtype=np.int64)].mean(axis=0)
        return out
