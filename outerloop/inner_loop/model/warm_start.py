"""Warm start: continue from trained artifacts on new data, with a catalog that may have grown.

Weights are carried over by meaning, not by position: item rows are matched by source id,
genre rows by genre name. An item the parent never had starts with its ID embedding equal to
its metadata embedding, so it enters training already where its genres and year put it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from outerloop.data.schema import InteractionData
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.align import shared_items
from outerloop.inner_loop.model.artifacts import Artifacts
from outerloop.inner_loop.model.transformer import ModelConfig, SeqRecModel
from outerloop.inner_loop.model.train import build_model

# Changing these would change the backbone's parameter shapes: not a warm start any more.
_SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "ffn_mult")
# Item data buffers: always taken from the new catalog, never from the parent.
_ITEM_BUFFERS = frozenset({"genres", "tags", "year", "runtime", "kind", "counts"})


def warm_config(parent: ModelConfig, data: InteractionData, **overrides: Any) -> ModelConfig:
    """The parent's config resized to ``data``'s catalog; new genres are appended to the
    parent's vocabulary so existing genre rows keep their meaning."""
    for name in _SHAPE_FIELDS:
        if name in overrides and overrides[name] is not None and overrides[name] != getattr(parent, name):
            raise UserInputError(
                f"--init-from keeps the parent's {name}={getattr(parent, name)}; drop the flag that sets it to {overrides[name]}"
            )
    catalog = data.catalog
    vocab = list(parent.genre_vocab) + [g for g in catalog.genres if g not in parent.genre_vocab]
    kw = {k: v for k, v in overrides.items() if v is not None and k not in _SHAPE_FIELDS}
    return dataclasses.replace(
        parent,
        n_items=len(catalog),
        genre_vocab=tuple(vocab),
        genre_slots=max([1] + [len(it.genres) for it in catalog.items]),
        tag_slots=max([1] + [len(it.tags) for it in catalog.items]),
        **kw,
    )


def new_item_ids(parent: Artifacts, data: InteractionData) -> np.ndarray:
    """Ids in ``data``'s catalog of the items ``parent`` never had (matched by source id)."""
    _, shared = shared_items(parent.catalog, data.catalog)
    known = np.zeros(len(data.catalog) + 1, dtype=bool)
    known[0] = True
    known[np.asarray(shared, dtype=np.int64)] = True
    return np.flatnonzero(~known)


def warm_start_model(parent: Artifacts, data: InteractionData, counts: np.ndarray, **overrides: Any) -> SeqRecModel:
    """A model for ``data``'s catalog initialised from ``parent``'s weights."""
    cfg = warm_config(parent.model.cfg, data, **overrides)
    model = build_model(cfg, data.catalog, counts)
    src = parent.model.state_dict()
    dst = model.state_dict()
    old_ids, new_ids = shared_items(parent.catalog, data.catalog)
    with torch.no_grad():
        for name, t in dst.items():
            if name not in src or (name.startswith("item.") and name.split(".")[-1] in _ITEM_BUFFERS):
                continue  # a new head keeps its init; item data buffers come from the new catalog
            s = src[name]
            if name == "item.id_emb.weight":
                continue  # below, once the metadata embedding is in place
            if s.shape == t.shape:
                t.copy_(s)
            elif s.dim() >= 1 and s.shape[1:] == t.shape[1:]:
                n = min(s.shape[0], t.shape[0])  # genre rows (vocab grows at the end), positions
                t[:n].copy_(s[:n])
            else:
                raise UserInputError(f"--init-from: parameter {name} has shape {tuple(s.shape)}, the new model needs {tuple(t.shape)}")
        model.load_state_dict(dst)
        ids = model.item.id_emb.weight
        if cfg.use_metadata:
            ids.copy_(model.item.metadata_table())  # new items start at their metadata embedding
        else:
            ids.normal_(std=0.02)
        ids[0].zero_()
        ids[torch.from_numpy(new_ids)] = src["item.id_emb.weight"][torch.from_numpy(old_ids)]
    return model
