"""The inner loop: the sequential transformer, its training, artifacts and FAISS index, and
the request path built on them.

Nothing heavy is imported here (``outerloop train --help`` must stay fast): the names below
are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Artifacts": "outerloop.inner_loop.model.artifacts",
    "ItemIndex": "outerloop.inner_loop.model.index",
    "build_item_index": "outerloop.inner_loop.model.index",
    "ModelConfig": "outerloop.inner_loop.model.transformer",
    "SeqRecModel": "outerloop.inner_loop.model.transformer",
    "TrainConfig": "outerloop.inner_loop.model.train",
    "train": "outerloop.inner_loop.model.train",
    "align_to_parent": "outerloop.inner_loop.model.align",
    "procrustes": "outerloop.inner_loop.model.align",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'outerloop.inner_loop' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
