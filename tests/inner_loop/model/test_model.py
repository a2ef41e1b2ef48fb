"""The transformer itself: causality, local attention, the fused loss, cold-start embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from outerloop.data.schema import Catalog, Item
from outerloop.inner_loop.model.features import build_item_features
from outerloop.inner_loop.model.transformer import Batch, FusedSoftmaxCE, ModelConfig, SeqRecModel, local_window_attention


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_model(**kw: object) -> SeqRecModel:
    """ID embeddings only: without catalog data every item's metadata embedding is the same."""
    cfg = ModelConfig(n_items=30, genre_vocab=("A", "B"), d_model=16, n_layers=2, n_heads=2, max_len=24, dropout=0.0,
                      use_metadata=False, **kw)
    return SeqRecModel(cfg).eval()


@pytest.mark.parametrize("attention", ["full", "local"])
def test_output_at_t_ignores_future_tokens(attention: str) -> None:
    model = tiny_model(attention=attention, window=5)
    items = torch.randint(1, 31, (3, 20))
    changed = items.clone()
    changed[:, 12:] = torch.randint(1, 31, (3, 8))
    with torch.no_grad():
        a, b = model(Batch(items=items)), model(Batch(items=changed))
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)  # the future does matter to itself


def test_right_padding_does_not_change_real_outputs() -> None:
    model = tiny_model()
    items = torch.randint(1, 31, (1, 7))
    padded = torch.cat([items, torch.zeros(1, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        assert torch.allclose(model(Batch(items=items)), model(Batch(items=padded))[:, :7], atol=1e-5)
        assert torch.allclose(model.user_vectors(Batch(items=items)), model.user_vectors(Batch(items=padded)), atol=1e-5)


@pytest.mark.parametrize("attention", ["full", "local"])
def test_user_vectors_equal_the_last_real_step_of_the_full_forward(attention: str) -> None:
    model = tiny_model(attention=attention, window=4)
    items = torch.randint(1, 31, (4, 12))
    items[1, 7:] = 0  # right-padded rows of different lengths
    items[3, 2:] = 0
    with torch.no_grad():
        h = model(Batch(items=items))
        u = model.user_vectors(Batch(items=items))
    last = torch.tensor([11, 6, 11, 1])
    assert torch.allclose(u, h[torch.arange(4), last], atol=1e-5)


@pytest.mark.parametrize("T", [7, 16, 17])
def test_local_attention_equals_full_when_window_covers_sequence(T: int) -> None:
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(local_window_attention(q, k, v, window=T), full, atol=1e-5)
    assert torch.allclose(local_window_attention(q, k, v, window=T + 5), full, atol=1e-5)


def test_local_attention_is_exactly_a_sliding_window() -> None:
    T, W = 23, 5
    q, k, v = (torch.randn(2, 1, T, 8) for _ in range(3))
    i = torch.arange(T).view(T, 1)
    j = torch.arange(T).view(1, T)
    band = (i - j >= 0) & (i - j < W)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    assert torch.allclose(local_window_attention(q, k, v, window=W), expected, atol=1e-5)


def test_fused_softmax_ce_matches_cross_entropy() -> None:
    h = torch.randn(37, 8, requires_grad=True)
    table = torch.randn(11, 8, requires_grad=True)
    y = torch.randint(0, 11, (37,))
    ref = F.cross_entropy(h @ table.t(), y)
    gh, gt = torch.autograd.grad(ref, (h, table))
    got = FusedSoftmaxCE.apply(h, table, y, 10, torch.float32)  # chunks of 10 rows
    fh, ft = torch.autograd.grad(got, (h, table))
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(fh, gh, atol=1e-6) and torch.allclose(ft, gt, atol=1e-6)


def genre_catalog() -> Catalog:
    """Items 1-4 are Horror, 5-8 Comedy; item 9 (Horror) and 10 (Comedy) will be cold."""
    items = [
        Item(item_id=i, source_id=str(i), title=f"t{i}", genres=("Horror",) if i in (1, 2, 3, 4, 9) else ("Comedy",), year=1995)
        for i in range(1, 11)
    ]
    return Catalog(items)


def test_cold_item_gets_its_metadata_embedding() -> None:
    catalog = genre_catalog()
    cfg = ModelConfig(n_items=10, genre_vocab=tuple(catalog.genres), d_model=16, max_len=8)
    model = SeqRecModel(cfg)
    counts = torch.tensor([0, 50, 50, 50, 50, 50, 50, 50, 50, 0, 0], dtype=torch.float32)
    model.item.set_item_data(build_item_features(catalog, cfg.genre_vocab, cfg.n_tag_buckets), counts)
    # stand-in for training: ID vectors carry the genre signal, as learned ones would
    with torch.no_grad():
        horror, comedy = torch.randn(16), torch.randn(16)
        model.item.id_emb.weight[1:5] = horror + 0.1 * torch.randn(4, 16)
        model.item.id_emb.weight[5:9] = comedy + 0.1 * torch.randn(4, 16)
        model.item.genre_emb.weight[1 + catalog.genres.index("Horror")] = horror
        model.item.genre_emb.weight[1 + catalog.genres.index("Comedy")] = comedy
        table = model.eval().item_table()
    assert table[0].abs().sum() == 0  # padding
    assert table[9].norm() > 0.5 and table[10].norm() > 0.5  # cold items are not zero vectors
    cos = F.cosine_similarity
    assert cos(table[9], table[1:5].mean(0), dim=0) > cos(table[9], table[5:9].mean(0), dim=0)
    assert cos(table[10], table[5:9].mean(0), dim=0) > cos(table[10], table[1:5].mean(0), dim=0)
    # blend weight: a seen item is mostly its ID, a cold one entirely metadata
    w = model.item.blend_weight()
    assert w[9] == 0 and w[1] > 0.8


def test_config_round_trip() -> None:
    cfg = ModelConfig(n_items=5, genre_vocab=("x", "y"), attention="local", window=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_too_long_sequence_is_rejected() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="max_len"):
        model(Batch(items=torch.ones(1, 25, dtype=torch.long)))


def test_action_and_time_features_change_the_output() -> None:
    model = tiny_model(use_actions=True, use_time=True)
    items = torch.randint(1, 31, (2, 6))
    base = Batch(items=items, actions=torch.full((2, 6), 3), gaps=torch.full((2, 6), 4), hours=torch.full((2, 6), 9))
    other = Batch(items=items, actions=torch.full((2, 6), 7), gaps=torch.full((2, 6), 4), hours=torch.full((2, 6), 9))
    with torch.no_grad():
        assert not np.allclose(model(base).numpy(), model(other).numpy(), atol=1e-4)


@pytest.mark.parametrize("attention,T", [("full", 9), ("full", 1), ("local", 3), ("local", 11)])
def test_branch_vectors_equal_the_user_vectors_of_each_continued_history(attention: str, T: int) -> None:
    """One history encoded once, continued by each of several items: exactly the user vectors of
    the continued histories (actions and time features taken from the placeholder event)."""
    model = tiny_model(attention=attention, window=4, use_actions=True, use_time=True, adapter_dim=4)
    torch.nn.init.normal_(model.adapter.up.weight, std=0.1)  # a trained adapter, not the identity
    hist = torch.randint(1, 31, (1, T))
    acts, gaps, hours = torch.randint(1, 5, (1, T + 1)), torch.randint(1, 20, (1, T + 1)), torch.randint(1, 24, (1, T + 1))
    after = torch.tensor([3, 17, 30, int(hist[0, -1])])
    placeholder = torch.cat([hist, hist[:, -1:]], 1)
    with torch.no_grad():
        got = model.branch_vectors(Batch(items=placeholder, actions=acts, gaps=gaps, hours=hours), after)
        full = torch.cat([hist.expand(4, T), after[:, None]], 1)
        want = model.user_vectors(Batch(items=full, actions=acts.expand(4, -1), gaps=gaps.expand(4, -1),
                                        hours=hours.expand(4, -1)))
    assert got.shape == (4, 16)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # the continuation matters


def test_branch_vectors_refuse_a_batch_without_the_placeholder() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        tiny_model().branch_vectors(Batch(items=torch.tensor([[4]])), torch.tensor([1]))
