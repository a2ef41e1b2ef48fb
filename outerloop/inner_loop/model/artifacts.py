"""Trained artifacts: what ``outerloop train`` writes and the request path loads.

A directory holds everything needed to serve without the training data::

    manifest.json      model_version, dataset, data hash, config, metrics, wall time, created_at,
                       parent version and alignment (when retrained), file list
    model.pt           {"model_config", "state_dict"} (weights_only-loadable: rebuilds the model)
    catalog.json       the catalog (dense ids, source ids, metadata)
    item_vectors.npy   (N+1, d) float32 item vectors, row 0 zeros (already aligned, if aligned)
    popularity.npy     (N+1,) training interaction counts
    cold_user.npy      (d,) the user vector of an empty history (retrieves popular items)
    index.faiss        FAISS index over item_vectors[1:]
    align.npy          optional (d, d) rotation applied to the model's outputs (see align.py)

User and item vectors share one space: ``score = user_vec @ item_vec`` (no normalisation).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from outerloop.data.schema import Catalog, Item
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.batching import make_batch
from outerloop.inner_loop.model.index import ItemIndex, build_item_index
from outerloop.inner_loop.model.transformer import ModelConfig, SeqRecModel

MANIFEST = "manifest.json"
MODEL = "model.pt"
CATALOG = "catalog.json"
ITEM_VECTORS = "item_vectors.npy"
POPULARITY = "popularity.npy"
COLD_USER = "cold_user.npy"
INDEX = "index.faiss"
ALIGN = "align.npy"


def catalog_to_json(catalog: Catalog) -> dict[str, Any]:
    return {"genres": list(catalog.genres), "items": [dataclasses.asdict(it) for it in catalog.items]}


def catalog_from_json(obj: dict[str, Any]) -> Catalog:
    items = []
    for d in obj["items"]:
        d = dict(d)
        d["genres"] = tuple(d.get("genres", ()))
        d["tags"] = tuple(d.get("tags", ()))
        items.append(Item(**d))
    return Catalog(items=items, genres=list(obj.get("genres", [])))


def weights_hash(model: SeqRecModel) -> str:
    """sha256 of the weights (name, shape, bytes in order): the model's identity."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cold_start_vector(item_vectors: np.ndarray, popularity: np.ndarray, steps: int = 300) -> np.ndarray:
    """The user vector whose softmax over items best matches the popularity distribution.

    An empty history has no tokens to encode; this vector makes the index return what a new
    user is most likely to play (popular items), through the same search path as everyone.
    """
    pop = np.asarray(popularity[1:], dtype=np.float64) + 1.0  # add-one: unseen items stay possible
    target = torch.from_numpy(pop / pop.sum()).float()  # (N,)
    E = torch.from_numpy(np.ascontiguousarray(item_vectors[1:], dtype=np.float32))  # (N, d)
    u = torch.zeros(E.shape[1], requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            loss = -(target * torch.log_softmax(E @ u, 0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return u.detach().numpy().astype(np.float32)


class Artifacts:
    """A trained model, its item vectors, FAISS index, catalog and manifest.

    ``encode`` turns histories into user vectors; ``index.search`` turns user vectors into
    candidates. For serving, call ``torch.set_num_threads(1)`` once in the server process:
    one user's forward pass is too small to gain from threads and they cost latency.
    """

    def __init__(
        self,
        dir: Path,
        manifest: dict[str, Any],
        catalog: Catalog,
        model: SeqRecModel,
        item_vectors: np.ndarray,
        popularity: np.ndarray,
        index: ItemIndex,
        cold_vector: np.ndarray,
        rotation: np.ndarray | None = None,
    ) -> None:
        self.dir = Path(dir)
        self.manifest = manifest
        self.catalog = catalog
        self.model = model.eval()
        self.item_vectors = item_vectors
        self.popularity = popularity
        self.index = index
        self.cold_vector = cold_vector
        self.rotation = rotation  # (d, d): user/item vectors = model outputs @ rotation
        with torch.inference_mode():
            self._table = model.item_table()  # (N+1, d) input embeddings, computed once
        self._rotation_t = None if rotation is None else torch.from_numpy(np.ascontiguousarray(rotation, dtype=np.float32))

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    # ---- building -------------------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: SeqRecModel,
        catalog: Catalog,
        popularity: np.ndarray,
        manifest: dict[str, Any],
        dir: str | Path = ".",
        index_kind: str = "auto",
    ) -> "Artifacts":
        """Item vectors, cold-start vector and index from a trained model.

        ``manifest`` carries what only the trainer knows (dataset, data hash, metrics, ...);
        ``model_version`` and ``created_at`` are filled in here.
        """
        model = model.eval()
        with torch.inference_mode():
            vectors = model.item_table().numpy().astype(np.float32)  # (N+1, d)
        vectors[0] = 0.0
        popularity = np.asarray(popularity, dtype=np.int64)
        manifest = dict(manifest)
        dataset = str(manifest.get("dataset", "model"))
        manifest["model_version"] = f"{dataset}-{weights_hash(model)[:10]}"
        manifest.setdefault("created_at", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        index = build_item_index(vectors, kind=index_kind)  # type: ignore[arg-type]
        manifest["index"] = {"kind": index.kind, "n_items": index.n_items, "dim": index.dim}
        manifest["config"] = {**manifest.get("config", {}), "model": model.cfg.to_dict()}
        return cls(Path(dir), manifest, catalog, model, vectors, popularity, index, cold_start_vector(vectors, popularity))

    # ---- serving --------------------------------------------------------------------------

    def encode(
        self,
        histories: list[Sequence[int]],
        actions: list[Sequence[int]] | None = None,
        ts: list[Sequence[int]] | None = None,
    ) -> np.ndarray:
        """(B, d) float32 user vectors, one per history (oldest event first).

        Histories longer than the model's window keep their last ``max_len`` events; an empty
        history gets the cold-start vector. Item ids must be 1..N of this catalog.
        """
        n, d = len(histories), self.item_vectors.shape[1]
        out = np.empty((n, d), dtype=np.float32)
        live = [i for i, h in enumerate(histories) if len(h) > 0]
        out[[i for i in range(n) if len(histories[i]) == 0]] = self.cold_vector
        if not live:
            return out
        hist = [np.asarray(histories[i], dtype=np.int64) for i in live]
        n_items = len(self.catalog)
        for i, h in zip(live, hist):
            if h.min() < 1 or h.max() > n_items:
                raise UserInputError(f"history {i} has item ids outside 1..{n_items} of model {self.model_version}")
        batch = make_batch(
            self.model.cfg,
            hist,
            None if actions is None else [actions[i] for i in live],
            None if ts is None else [ts[i] for i in live],
        )
        with torch.inference_mode():
            u = self.model.user_vectors(batch, self._table)  # (b, d)
            if self._rotation_t is not None:
                u = u @ self._rotation_t
        out[live] = u.numpy()
        return out

    def branch_encode(self, history: Sequence[int], after: Sequence[int], actions: Sequence[int] | None = None,
                      ts: Sequence[int] | None = None, next_action: int | None = None) -> np.ndarray:
        """(len(after), d) user vectors of ``history`` followed by each item of ``after``: what
        ``encode`` gives for ``history + [x]``, each x at the newest event's time, with action
        ``next_action`` (default: the newest event's); see :meth:`SeqRecModel.branch_vectors`:
        the history is encoded once."""
        h = np.asarray(history, dtype=np.int64)
        nxt = np.asarray(after, dtype=np.int64)
        d = self.item_vectors.shape[1]
        if nxt.shape[0] == 0:
            return np.zeros((0, d), dtype=np.float32)
        n_items = len(self.catalog)
        if h.shape[0] == 0:
            raise UserInputError("branch_encode needs a non-empty history")
        for name, ids in (("history", h), ("after", nxt)):
            if ids.min() < 1 or ids.max() > n_items:
                raise UserInputError(f"{name} has item ids outside 1..{n_items} of model {self.model_version}")
        keep = self.model.cfg.max_len - 1  # the history's window, the new event makes max_len

        def with_placeholder(xs: Sequence[int] | None, last: int | None = None) -> list[list[int]] | None:
            if xs is None:
                return None
            xs = list(xs)[-keep:] if keep > 0 else []
            return [xs + ([last] if last is not None else xs[-1:])]

        batch = make_batch(self.model.cfg, with_placeholder(h.tolist()),  # type: ignore[arg-type]
                           with_placeholder(actions, next_action), with_placeholder(ts))
        with torch.inference_mode():
            u = self.model.branch_vectors(batch, torch.from_numpy(nxt), self._table)
            if self._rotation_t is not None:
                u = u @ self._rotation_t
        return u.numpy().astype(np.float32, copy=False)

    def scores(self, histories: list[Sequence[int]], actions: Any = None, ts: Any = None) -> np.ndarray:
        """(B, N+1) score of every item (column 0 is padding): the evaluation scorer."""
        return self.encode(histories, actions, ts) @ self.item_vectors.T

    # ---- alignment ------------------------------------------------------------------------

    def set_rotation(self, rotation: np.ndarray, alignment: dict[str, Any]) -> None:
        """Rotate this model's output space by ``rotation`` (d, d), orthogonal.

        User and item vectors turn together, so every score stays what it was; only the
        coordinates move (towards the parent version's, see :mod:`outerloop.inner_loop.model.align`).
        """
        rotation = np.asarray(rotation, dtype=np.float32)
        base = self.rotation if self.rotation is not None else np.eye(rotation.shape[0], dtype=np.float32)
        self.rotation = base @ rotation
        self._rotation_t = torch.from_numpy(np.ascontiguousarray(self.rotation))
        self.item_vectors = (self.item_vectors @ rotation).astype(np.float32)
        self.cold_vector = (self.cold_vector @ rotation).astype(np.float32)
        self.index = build_item_index(self.item_vectors, kind=self.index.kind)
        self.manifest["parent_version"] = alignment.get("parent_version")
        self.manifest["alignment"] = {**alignment, "file": ALIGN}

    # ---- files ----------------------------------------------------------------------------

    def save(self, dir: str | Path | None = None) -> None:
        """Write every file (each written to a temp name then renamed; manifest last)."""
        out = Path(dir) if dir is not None else self.dir
        out.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"model_config": self.model.cfg.to_dict(), "state_dict": self.model.state_dict()}, buf)
        _write_bytes(out / MODEL, buf.getvalue())
        _write_bytes(out / CATALOG, json.dumps(catalog_to_json(self.catalog)).encode())
        for name, arr in ((ITEM_VECTORS, self.item_vectors), (POPULARITY, self.popularity), (COLD_USER, self.cold_vector)):
            _write_npy(out / name, arr)
        if self.rotation is not None:
            _write_npy(out / ALIGN, self.rotation)
        elif (out / ALIGN).exists():
            (out / ALIGN).unlink()
        self.index.save(out / INDEX)
        files = [MODEL, CATALOG, ITEM_VECTORS, POPULARITY, COLD_USER, INDEX] + ([ALIGN] if self.rotation is not None else [])
        self.manifest["files"] = files
        _write_bytes(out / MANIFEST, json.dumps(self.manifest, indent=2, default=_json_default).encode())
        self.dir = out

    @classmethod
    def load(cls, dir: str | Path) -> "Artifacts":
        """Load a directory written by :meth:`save`. Missing or corrupt files raise
        :class:`UserInputError` naming the file."""
        d = Path(dir)
        if not d.is_dir():
            raise UserInputError(f"{d}: artifacts directory not found")
        manifest = _read(d / MANIFEST, lambda p: json.loads(p.read_text()))
        if not isinstance(manifest, dict) or "model_version" not in manifest:
            raise UserInputError(f"{d / MANIFEST}: not an outerloop manifest (no model_version)")
        blob = _read(d / MODEL, lambda p: torch.load(p, map_location="cpu", weights_only=True))
        try:
            cfg = ModelConfig.from_dict(blob["model_config"])
            model = SeqRecModel(cfg)
            model.load_state_dict(blob["state_dict"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserInputError(f"{d / MODEL}: weights do not match their config ({exc})") from exc
        catalog = _read(d / CATALOG, lambda p: catalog_from_json(json.loads(p.read_text())))
        vectors = _read(d / ITEM_VECTORS, np.load)
        popularity = _read(d / POPULARITY, np.load)
        cold = _read(d / COLD_USER, np.load)
        index = _read(d / INDEX, ItemIndex.load)
        rotation = _read(d / ALIGN, np.load) if (d / ALIGN).exists() else None
        n = cfg.n_items + 1
        if len(catalog) + 1 != n or vectors.shape != (n, cfg.d_model) or popularity.shape != (n,) or index.n_items != n - 1:
            raise UserInputError(
                f"{d}: files disagree (catalog {len(catalog)} items, model {cfg.n_items}, "
                f"vectors {vectors.shape}, popularity {popularity.shape}, index {index.n_items})"
            )
        return cls(d, manifest, catalog, model, vectors, popularity, index, cold, rotation)


def training_data(artifacts: Artifacts, dataset: str | None = None, data_dir: str | Path | None = None) -> Any:
    """The data set the artifacts were trained on (their manifest names it and the options it was
    loaded with: a generated set's, a rating set's ``dislike_below``), or ``dataset`` from
    ``data_dir`` when given. For commands that train more next to existing artifacts (ranker,
    ensemble): without the options, ML-100K trained with ``dislike_below=3`` would come back with
    no skips, other data than the model saw."""
    from outerloop.data.datasets import load_dataset

    manifest = artifacts.manifest or {}
    name = dataset or manifest.get("dataset") or (manifest.get("data") or {}).get("name")
    if not name:
        raise UserInputError("--dataset is required: the artifacts' manifest does not name one")
    options = (manifest.get("dataset_options") or {}) if not dataset or dataset == manifest.get("dataset") else {}
    root = data_dir or (manifest.get("data_dir") if not dataset else None)
    return load_dataset(name, root, **options)


def _read(path: Path, reader: Any) -> Any:
    if not path.is_file():
        raise UserInputError(f"{path}: missing (not an outerloop artifacts directory, or an incomplete one)")
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise UserInputError(f"{path}: unreadable or corrupt ({type(exc).__name__}: {exc})") from exc


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr))
    _write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
