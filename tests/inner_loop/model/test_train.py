"""Training, artifacts and warm start on tiny synthetic data (seconds, one thread)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from outerloop.data.schema import Catalog, InteractionData, Item, UserSequence
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.evaluate import item_counts, train_sequences
from outerloop.inner_loop.model.artifacts import Artifacts
from outerloop.inner_loop.model.train import TrainConfig, TrainResult, model_config_for, train
from outerloop.inner_loop.model.warm_start import warm_start_model

GENRES = ("Comedy", "Drama", "Horror")


def cycle_catalog(n: int, offset: int = 0) -> list[Item]:
    return [
        Item(item_id=i, source_id=f"m{i + offset}", title=f"t{i}", genres=(GENRES[i % 3],), year=1980 + i)
        for i in range(1, n + 1)
    ]


def cycle_data(n_items: int = 50, n_users: int = 100, seed: int = 0) -> InteractionData:
    """Every user walks the catalog in order (i -> i+1, wrapping) from a random start: the
    next item is fully determined by the last one."""
    rng = np.random.default_rng(seed)
    users = []
    for u in range(n_users):
        start, length = rng.integers(0, n_items), rng.integers(6, 16)
        users.append(UserSequence(f"u{u}", ((start + np.arange(length)) % n_items + 1).astype(np.int32)))
    return InteractionData("cycle", Catalog(cycle_catalog(n_items)), users)


TINY = dict(d_model=16, max_len=16, dropout=0.0, n_heads=2)
FAST = TrainConfig(epochs=8, batch_size=16, lr=1e-2, patience=8, bf16=False, num_threads=1, seed=3)


@pytest.fixture(scope="module")
def trained() -> tuple[InteractionData, TrainResult]:
    data = cycle_data()
    return data, train(data, model_config_for(data, **TINY), FAST, progress=False)


def test_learns_a_deterministic_sequence(trained: tuple[InteractionData, TrainResult]) -> None:
    _, result = trained
    assert result.valid["ndcg@10"] > 0.9  # popularity gets ~0.1 here
    assert result.best_epoch >= 1 and len(result.history) == result.epochs_run


def test_training_is_reproducible_with_a_seed() -> None:
    data = cycle_data(n_users=40)
    cfg = TrainConfig(epochs=2, batch_size=16, bf16=False, num_threads=1, seed=7)
    a = train(data, model_config_for(data, **TINY), cfg, progress=False)
    b = train(data, model_config_for(data, **TINY), cfg, progress=False)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def artifacts_from(result: TrainResult, data: InteractionData, out: Path) -> Artifacts:
    arts = Artifacts.from_model(result.model, data.catalog, result.popularity, {"dataset": data.name}, dir=out)
    arts.save(out)
    return arts


def test_artifacts_round_trip(trained: tuple[InteractionData, TrainResult], tmp_path: Path) -> None:
    data, result = trained
    arts = artifacts_from(result, data, tmp_path)
    loaded = Artifacts.load(tmp_path)
    histories = [[1, 2, 3], [5], list(range(1, 41))]  # the last is longer than max_len
    np.testing.assert_array_equal(arts.encode(histories), loaded.encode(histories))
    assert loaded.model_version == arts.model_version and loaded.model_version.startswith("cycle-")
    assert loaded.item_vectors.shape == (51, 16) and not loaded.item_vectors[0].any()
    assert loaded.index.kind == "flat" and loaded.popularity.shape == (51,)
    for key in ("model_version", "dataset", "config", "created_at", "index", "files"):
        assert key in loaded.manifest
    # a long history keeps its last max_len events
    long = list(range(1, 41))
    np.testing.assert_allclose(loaded.encode([long]), loaded.encode([long[-16:]]), atol=1e-6)
    # the model found the cycle: after 3 comes 4 (seen items are filtered, as serving does)
    ids, _ = loaded.index.search(loaded.encode([[1, 2, 3]]), 5)
    assert [i for i in ids[0] if i not in (1, 2, 3)][0] == 4


def test_empty_history_gets_a_cold_start_vector(trained: tuple[InteractionData, TrainResult], tmp_path: Path) -> None:
    data, result = trained
    arts = artifacts_from(result, data, tmp_path)
    vecs = arts.encode([[], [1, 2]])
    assert vecs.shape == (2, 16) and np.abs(vecs[0]).sum() > 0
    np.testing.assert_array_equal(vecs[0], arts.cold_vector)
    with pytest.raises(UserInputError, match="outside"):
        arts.encode([[0, 99]])


def test_load_names_the_missing_or_corrupt_file(trained: tuple[InteractionData, TrainResult], tmp_path: Path) -> None:
    data, result = trained
    with pytest.raises(UserInputError, match="not found"):
        Artifacts.load(tmp_path / "nope")
    artifacts_from(result, data, tmp_path)
    (tmp_path / "index.faiss").unlink()
    with pytest.raises(UserInputError, match="index.faiss"):
        Artifacts.load(tmp_path)
    artifacts_from(result, data, tmp_path)
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="model.pt"):
        Artifacts.load(tmp_path)


def grown_data(n_old: int = 50, n_new: int = 5) -> InteractionData:
    """The cycle world with ``n_new`` more items at the end of the catalog (same source ids
    for the old ones) and a fresh batch of users."""
    data = cycle_data(n_items=n_old + n_new, n_users=60, seed=9)
    return InteractionData("cycle", Catalog(cycle_catalog(n_old + n_new)), data.users)


def test_warm_start_keeps_weights_and_grows_the_catalog(trained: tuple[InteractionData, TrainResult], tmp_path: Path) -> None:
    data, result = trained
    parent = artifacts_from(result, data, tmp_path)
    new = grown_data()
    counts = item_counts(train_sequences(new), len(new.catalog))
    model = warm_start_model(parent, new, counts)
    assert model.cfg.n_items == 55
    old_sd, new_sd = parent.model.state_dict(), model.state_dict()
    assert torch.equal(new_sd["item.id_emb.weight"][1:51], old_sd["item.id_emb.weight"][1:51])
    assert torch.equal(new_sd["blocks.0.attn.qkv.weight"], old_sd["blocks.0.attn.qkv.weight"])
    with torch.no_grad():
        meta = model.item.metadata_table()
    assert torch.allclose(new_sd["item.id_emb.weight"][51:], meta[51:])  # new items start at their metadata
    assert meta[51:].norm(dim=1).min() > 0
    # and it trains on the new data
    res = train(new, model.cfg, TrainConfig(epochs=1, batch_size=16, bf16=False, num_threads=1), model=model, progress=False)
    assert res.epochs_run == 1


def test_a_frozen_backbone_learns_the_new_items_and_changes_what_is_served(
        trained: tuple[InteractionData, TrainResult], tmp_path: Path) -> None:
    """``freeze_backbone`` on a grown catalog keeps the parent's encoder and known items exactly,
    trains the new items' embeddings and the adapter, and it shows where it is served: quality on
    the new interactions rises (it did not move when only the genre head, which serving never
    reads, was trained), and after item 50 the next pick is the new item 51, not the old wrap to 1."""
    from outerloop.inner_loop.model.evaluate import evaluate, leave_one_out
    from outerloop.inner_loop.model.train import model_scorer
    from outerloop.inner_loop.model.warm_start import new_item_ids

    data, result = trained
    parent = artifacts_from(result, data, tmp_path / "parent")
    new = grown_data()  # items 51..55 join the cycle: 50 -> 51 -> ... -> 55 -> 1
    new_items = new_item_ids(parent, new)
    assert new_items.tolist() == [51, 52, 53, 54, 55]
    model = warm_start_model(parent, new, item_counts(train_sequences(new), len(new.catalog)), adapter_dim=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    valid, test = leave_one_out(new, "valid"), leave_one_out(new, "test")
    on_new = test.subset(np.isin(test.targets, new_items))  # cases whose next item is a new one
    assert len(on_new) >= 5
    scores_before = {name: evaluate(model_scorer(model), cases, 55, "full")["ndcg@10"]
                     for name, cases in (("valid", valid), ("test", test), ("new", on_new))}

    cfg = TrainConfig(epochs=8, batch_size=16, lr=1e-2, patience=8, bf16=False, num_threads=1, seed=3,
                      freeze_backbone=True)
    res = train(new, model.cfg, cfg, model=model, progress=False, new_items=new_items)
    after = res.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("adapter.")} and "item.id_emb.weight" in changed
    assert changed <= {"item.id_emb.weight", "heads.genre.weight", "heads.genre.bias"} | {
        k for k in after if k.startswith("adapter.")}, changed  # the encoder is as the parent left it
    assert torch.equal(after["item.id_emb.weight"][:51], before["item.id_emb.weight"][:51])  # known items too
    assert not torch.equal(after["item.id_emb.weight"][51:], before["item.id_emb.weight"][51:])
    assert all(p.requires_grad for p in res.model.parameters()) and not res.model.item.id_emb.weight._backward_hooks

    scores_after = {"valid": res.valid["ndcg@10"], "test": evaluate(model_scorer(res.model), test, 55, "full")["ndcg@10"],
                    "new": evaluate(model_scorer(res.model), on_new, 55, "full")["ndcg@10"]}
    assert scores_after["valid"] > scores_before["valid"] + 0.02, (scores_before, scores_after)
    assert scores_after["test"] > scores_before["test"] + 0.02, (scores_before, scores_after)
    assert scores_after["new"] > scores_before["new"] + 0.1, (scores_before, scores_after)

    child = Artifacts.from_model(res.model, new.catalog, res.popularity, {"dataset": new.name}, dir=tmp_path / "child")
    served_parent, _ = parent.index.search(parent.encode([[48, 49, 50]]), 1)
    served_child, _ = child.index.search(child.encode([[48, 49, 50]]), 1)
    assert served_parent[0, 0] == 1 and served_child[0, 0] == 51
    child.save(tmp_path / "child")
    np.testing.assert_allclose(Artifacts.load(tmp_path / "child").encode([[50, 51]]), child.encode([[50, 51]]), atol=1e-6)


def test_synthetic_world_trains_with_action_and_time_features(tmp_path: Path) -> None:
    from outerloop.data.datasets import load_dataset

    data = load_dataset("synthetic", n_users=40, n_films=60, n_series=3, days=10)
    cfg = model_config_for(data, **TINY)
    assert cfg.use_actions and cfg.use_time  # the synthetic world has both
    res = train(data, cfg, TrainConfig(epochs=1, batch_size=16, bf16=False, num_threads=1), progress=False)
    arts = Artifacts.from_model(res.model, data.catalog, res.popularity, {"dataset": data.name}, dir=tmp_path)
    u = data.users[0]
    items, ts = u.items[:8].tolist(), u.ts[:8].tolist()
    play = arts.encode([items], actions=[[3] * 8], ts=[ts])
    skip = arts.encode([items], actions=[[7] * 8], ts=[ts])
    later = arts.encode([items], actions=[[3] * 8], ts=[[t + 7 * 3_600_000 for t in ts]])  # other hours
    assert play.shape == (1, 16)
    assert not np.allclose(play, skip) and not np.allclose(play, later)


def test_bf16_is_used_where_it_pays_unless_the_config_says() -> None:
    """``TrainConfig.bf16=None`` leaves it to a measurement on this CPU (an AVX2-only CPU
    emulates bf16 and runs it several times slower); True / False are obeyed as given."""
    from outerloop.inner_loop.model.train import bf16_pays, use_bf16

    assert use_bf16(TrainConfig(bf16=True)) is True and use_bf16(TrainConfig(bf16=False)) is False
    assert TrainConfig().bf16 is None and use_bf16(TrainConfig()) is bf16_pays()
    assert bf16_pays.cache_info().currsize == 1  # measured once per process
