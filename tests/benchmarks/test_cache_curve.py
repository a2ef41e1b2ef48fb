"""The tool cache's trade-off curve (``outerloop bench loop``'s ``tool_cache_curve``): hit rates
counted the way the cache sees users, recall against a real FAISS search, the plot."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from outerloop.benchmarks.loop import cache_curve, parse_curve
from outerloop.errors import UserInputError
from outerloop.evals import plots
from outerloop.inner_loop.model.index import build_item_index


def _world(n_items: int = 400, n_users: int = 120, d: int = 16, seed: int = 0) -> tuple[SimpleNamespace, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items + 1, d)).astype(np.float32)
    items[0] = 0.0
    art = SimpleNamespace(item_vectors=items, index=build_item_index(items, "flat"))
    users = rng.normal(size=(n_users, d)).astype(np.float32)
    sample = rng.normal(size=(300, d)).astype(np.float32)
    return art, sample, users


def test_parse_curve_reads_both_lists_and_refuses_bad_text_naming_the_flag() -> None:
    assert parse_curve("8,64x600,1500") == ([8, 64], [600, 1500])
    for bad in ("8,64", "8,ax600", "0x600", "8x"):
        with pytest.raises(UserInputError, match="--cache-curve"):
            parse_curve(bad)


def test_the_whole_catalog_as_pool_loses_nothing_and_hits_follow_the_cluster_count() -> None:
    art, sample, users = _world()
    out = cache_curve(art, sample, users, [1, 8], [50, 400], top=20)
    pts = {(p["clusters"], p["pool"]): p for p in out["points"]}
    # one cluster: only the first user misses
    assert pts[(1, 50)]["hit_rate"] == pytest.approx((len(users) - 1) / len(users), abs=1e-4)
    # more clusters, more first visits: fewer hits
    assert pts[(8, 50)]["hit_rate"] < pts[(1, 50)]["hit_rate"]
    # a pool holding every item re-scores to the exact answer
    assert pts[(1, 400)]["loss_pct"] == 0.0 and pts[(8, 400)]["loss_pct"] == 0.0
    # a small pool around one centroid misses much of random users' top 20
    assert pts[(1, 50)]["loss_pct"] > 20.0
    # the goal's best point is one that meets it, with the highest hit rate
    best = out["best_meeting_goal"]
    assert best is not None and best["loss_pct"] <= 1.0 and best["hit_rate"] >= 0.5
    assert (best["clusters"], best["pool"]) == (1, 400)


def test_the_plot_draws_one_line_per_pool(tmp_path: Path) -> None:
    art, sample, users = _world(n_users=40)
    out = cache_curve(art, sample, users, [2, 4], [100, 400], top=10)
    png = plots.cache_tradeoff(out["points"], tmp_path / "c.png")
    assert png.stat().st_size > 5_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
