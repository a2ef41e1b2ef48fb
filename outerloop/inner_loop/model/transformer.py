"""The sequential recommender: a causal transformer over a user's interaction tokens.

Reads top-down: the config, the item embedding (ID blended with metadata by exposure), the
attention (full causal, or blocked local-window for long histories), a pre-LN block, the
adapter (an optional residual on the user vector, what a warm start on a frozen backbone
trains), and the model with its two heads (next item, tied to the item embeddings; next genre,
auxiliary).

A token is ``item + position (+ action + time gap + hour of day)``. Positions count from the
first item of the window, so the output at step ``t`` during training is exactly what serving
computes for a history of ``t + 1`` items: no padding is needed at serving time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from outerloop.contracts.events import EVENT_TYPES
from outerloop.inner_loop.model.features import (
    N_GAP_BUCKETS,
    N_HOURS,
    N_KINDS,
    N_RUNTIME_BUCKETS,
    N_YEAR_BUCKETS,
    ItemFeatures,
)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; stored with every checkpoint and artifact."""

    n_items: int  # catalog size N; item ids are 1..N, 0 = padding
    genre_vocab: tuple[str, ...] = ()  # stable genre order (metadata embedding + genre head)
    genre_slots: int = 1  # max genres per item (shape of the padded genre bag)
    tag_slots: int = 1  # max tags per item
    n_tag_buckets: int = 1024  # tags are hashed into this many rows
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 4
    max_len: int = 200  # sliding context window: the last max_len events
    dropout: float = 0.2
    attention: Literal["full", "local"] = "full"
    window: int = 64  # local attention: each token sees itself and the previous window-1 tokens
    use_metadata: bool = True
    blend_k: float = 10.0  # id weight w = n / (n + blend_k), n = training count of the item
    use_actions: bool = False
    use_time: bool = False
    genre_head: bool = True
    adapter_dim: int = 0  # > 0: a residual adapter of this width on the hidden states (see Adapter)

    @property
    def n_genres(self) -> int:
        return len(self.genre_vocab)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["genre_vocab"] = list(self.genre_vocab)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["genre_vocab"] = tuple(kw.get("genre_vocab", ()))
        return cls(**kw)


class ItemEmbedding(nn.Module):
    """One vector per item: ``w * id_embedding + (1 - w) * metadata_embedding``.

    ``w = n / (n + k)`` grows with the item's training exposure ``n``, so a popular item is
    mostly its own learned vector while a rare or never-seen item (``n = 0``) is entirely its
    metadata (genres, year, runtime, kind, tags): cold items can be retrieved and scored at
    once. The whole table is computed in one shot (it doubles as the output layer).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, d = cfg.n_items + 1, cfg.d_model
        self.id_emb = nn.Embedding(n, d, padding_idx=0)
        self.use_metadata = cfg.use_metadata
        if cfg.use_metadata:
            self.genre_emb = nn.Embedding(cfg.n_genres + 1, d, padding_idx=0)
            self.year_emb = nn.Embedding(N_YEAR_BUCKETS, d, padding_idx=0)
            self.runtime_emb = nn.Embedding(N_RUNTIME_BUCKETS, d, padding_idx=0)
            self.kind_emb = nn.Embedding(N_KINDS, d, padding_idx=0)
            self.tag_emb = nn.Embedding(cfg.n_tag_buckets + 1, d, padding_idx=0)
        # item data: persistent buffers, so a state dict alone rebuilds the table
        self.register_buffer("genres", torch.zeros(n, cfg.genre_slots, dtype=torch.long))
        self.register_buffer("tags", torch.zeros(n, cfg.tag_slots, dtype=torch.long))
        self.register_buffer("year", torch.zeros(n, dtype=torch.long))
        self.register_buffer("runtime", torch.zeros(n, dtype=torch.long))
        self.register_buffer("kind", torch.zeros(n, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(n, dtype=torch.float32))
        self.id_dropout = 0.0  # set by the trainer: share of items shown as metadata only

    def set_item_data(self, features: ItemFeatures, counts: torch.Tensor | None = None) -> None:
        """Load the catalog's features (and training counts, which set the blend weights)."""
        for name in ("genres", "tags", "year", "runtime", "kind"):
            getattr(self, name).copy_(torch.as_tensor(getattr(features, name)))
        if counts is not None:
            self.counts.copy_(torch.as_tensor(counts, dtype=torch.float32))

    @staticmethod
    def _bag_mean(emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        n = (ids > 0).sum(-1, keepdim=True).clamp(min=1)  # (N, 1)
        return emb(ids).sum(-2) / n  # (N, d); padding rows of emb are zero

    def metadata_table(self) -> torch.Tensor:
        """(N+1, d) metadata embedding of every item."""
        return (
            self._bag_mean(self.genre_emb, self.genres)
            + self.year_emb(self.year)
            + self.runtime_emb(self.runtime)
            + self.kind_emb(self.kind)
            + self._bag_mean(self.tag_emb, self.tags)
        )

    def blend_weight(self) -> torch.Tensor:
        """(N+1,) weight of the ID embedding; metadata gets the rest."""
        return self.counts / (self.counts + self.cfg.blend_k)

    def forward(self) -> torch.Tensor:
        """(N+1, d) table; row 0 (padding) is zero."""
        ids = self.id_emb.weight  # (N+1, d)
        if not self.use_metadata:
            return ids
        w = self.blend_weight()
        if self.training and self.id_dropout > 0:
            # items dropped this step are seen as metadata only: trains the cold-start path
            keep = torch.rand_like(w) >= self.id_dropout
            w = w * keep
        w = w.unsqueeze(1)  # (N+1, 1)
        # row 0 stays zero: every embedding above has padding_idx 0 and item 0 has no features
        return w * ids + (1 - w) * self.metadata_table()


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout from a uniform draw: about twice as fast as ``F.dropout`` on CPU,
    whose Bernoulli sampling was the largest non-matmul cost of a training step."""
    if not training or p <= 0.0:
        return x
    return x * (torch.rand_like(x) >= p).to(x.dtype) * (1.0 / (1.0 - p))


def local_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention where each query sees itself and the ``window - 1`` keys before it.

    Blocked so it really does O(T * W) work: the sequence is cut into blocks of ``window``
    queries, and each block attends only to its own keys and the previous block's (2W keys),
    masked down to the exact window. With ``window >= T`` this is plain causal attention.
    q, k, v: (B, H, T, hd), right-padded (padding only after real tokens, so causality alone
    keeps real queries off padding keys).
    """
    B, H, T, hd = q.shape
    W = window
    nb = -(-T // W)  # ceil(T / W)
    pad = nb * W - T
    if pad:  # right-pad to whole blocks; those queries are dropped at the end
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb = q.view(B, H, nb, W, hd)  # (B, H, nb, W, hd)
    kb = k.view(B, H, nb, W, hd)
    vb = v.view(B, H, nb, W, hd)
    zeros = kb.new_zeros(B, H, 1, W, hd)
    k2 = torch.cat([torch.cat([zeros, kb[:, :, :-1]], 2), kb], 3)  # (B, H, nb, 2W, hd): previous + own block
    v2 = torch.cat([torch.cat([zeros, vb[:, :, :-1]], 2), vb], 3)
    # query i of block b sits at b*W + i; key j of its 2W keys at (b-1)*W + j
    qi = torch.arange(W, device=q.device).view(W, 1)
    kj = torch.arange(2 * W, device=q.device).view(1, 2 * W)
    dist = qi + W - kj  # (W, 2W) query position - key position
    mask = (dist >= 0) & (dist < W)  # (W, 2W)
    first = mask & (kj >= W)  # block 0 has no previous block
    mask = torch.stack([first] + [mask] * (nb - 1))  # (nb, W, 2W)
    y = F.scaled_dot_product_attention(qb, k2, v2, attn_mask=mask)  # (B, H, nb, W, hd)
    y = y.reshape(B, H, nb * W, hd)
    return y[:, :, :T] if pad else y


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, full or local-window.

    No attention-probability dropout: on CPU it costs as much as the attention itself and
    the residual and embedding dropout regularise enough (measured in bench/model_ml1m.py).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.attention = cfg.attention
        self.window = cfg.window
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, query_at: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``query_at`` (B,) only that step of each row is
        computed, (B, 1, C): what serving needs from the last block."""
        if query_at is not None:
            return self._one_query(x, query_at)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if self.attention == "local" and T > self.window:
            y = local_window_attention(q, k, v, self.window)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)
        return fast_dropout(self.proj(y), self.dropout, self.training)

    def extend(self, ctx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(Bb, 1, C): one new token per branch ``y`` (Bb, 1, C), each appended after the same
        context ``ctx`` (1, T, C) and attending to it and itself; the context's keys and values
        are computed once for every branch (what :meth:`SeqRecModel.branch_vectors` needs)."""
        Bb, C = y.shape[0], y.shape[2]
        H, hd = self.n_heads, C // self.n_heads
        _, k_c, v_c = self.qkv(ctx).split(C, dim=2)  # (1, T, C)
        if self.attention == "local":  # the new token sees itself and the window - 1 before it
            k_c, v_c = k_c[:, max(0, k_c.shape[1] - self.window + 1):], v_c[:, max(0, v_c.shape[1] - self.window + 1):]
        q, k_y, v_y = (t.reshape(Bb, H, hd).transpose(0, 1) for t in self.qkv(y).split(C, dim=2))  # (H, Bb, hd)
        T = k_c.shape[1]
        # per head, every branch's query against the shared context (one batched product, the
        # context's keys never copied per branch) and against its own key
        scale = 1.0 / math.sqrt(hd)
        s_ctx = torch.bmm(q, k_c[0].view(T, H, hd).permute(1, 2, 0)) * scale  # (H, Bb, T)
        s_own = (q * k_y).sum(-1, keepdim=True) * scale  # (H, Bb, 1)
        w = torch.softmax(torch.cat([s_ctx, s_own], -1), -1)
        out = torch.bmm(w[..., :T], v_c[0].view(T, H, hd).transpose(0, 1)) + w[..., T:] * v_y  # (H, Bb, hd)
        return fast_dropout(self.proj(out.transpose(0, 1).reshape(Bb, 1, C)), self.dropout, self.training)

    def _one_query(self, x: torch.Tensor, query_at: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, hd = self.n_heads, C // self.n_heads
        w, b = self.qkv.weight, self.qkv.bias
        xq = x[torch.arange(B, device=x.device), query_at].unsqueeze(1)  # (B, 1, C)
        q = F.linear(xq, w[:C], b[:C]).view(B, 1, H, hd).transpose(1, 2)  # (B, H, 1, hd)
        k, v = F.linear(x, w[C:], b[C:]).split(C, dim=2)
        k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (k, v))  # (B, H, T, hd)
        pos = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
        mask = pos <= query_at.unsqueeze(1)  # (B, T): causal
        if self.attention == "local":
            mask = mask & (pos > query_at.unsqueeze(1) - self.window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.view(B, 1, 1, T))  # (B, H, 1, hd)
        return fast_dropout(self.proj(y.transpose(1, 2).reshape(B, 1, C)), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model)
        self.proj = nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(self.proj(F.gelu(self.fc(x))), self.dropout, self.training)


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, query_at: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, 1, C) at ``query_at`` only (see the attention)."""
        if query_at is None:
            x = x + self.attn(self.ln1(x))
        else:
            x = x[torch.arange(x.shape[0], device=x.device), query_at].unsqueeze(1) + self.attn(self.ln1(x), query_at)
        return x + self.mlp(self.ln2(x))

    def extend(self, ctx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The block's output at new tokens ``y`` (Bb, 1, C), each appended after ``ctx`` (1, T, C)."""
        y = y + self.attn.extend(self.ln1(ctx), self.ln1(y))
        return y + self.mlp(self.ln2(y))


class Adapter(nn.Module):
    """``h + up(gelu(down(h)))`` on the encoder's output: a small residual that a warm start on
    a frozen backbone trains (with the new items' embeddings) to move users towards what the
    new interactions say. ``up`` starts at zero, so a fresh adapter changes nothing."""

    def __init__(self, d: int, width: int) -> None:
        super().__init__()
        self.down = nn.Linear(d, width)
        self.up = nn.Linear(width, d)

    def zero_(self) -> "Adapter":
        with torch.no_grad():
            self.up.weight.zero_()
            self.up.bias.zero_()
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))  # (..., d)


@dataclass
class Batch:
    """Model inputs, RIGHT-padded to a common length T (0 = padding everywhere).

    Right padding means causal attention alone keeps real tokens off the padding (no mask
    tensor, the fused attention kernel) and position ``t`` is the ``t``-th event everywhere.
    """

    items: torch.Tensor  # (B, T) long
    actions: torch.Tensor | None = None  # (B, T) long, ACTION_ID
    gaps: torch.Tensor | None = None  # (B, T) long, gap bucket
    hours: torch.Tensor | None = None  # (B, T) long, hour + 1

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real tokens per row."""
        return (self.items > 0).sum(1)


class FusedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of ``h @ table.T`` against ``targets``, with its gradient computed
    in the same pass, chunk by chunk.

    The (P, N) logit matrix never exists whole: each chunk of rows is multiplied, softmaxed
    and turned into its gradient while it is still in cache. On this CPU that halves the step
    time against ``F.cross_entropy`` (which writes and re-reads hundreds of MB per batch).
    ``mm_dtype=torch.bfloat16`` runs the three matmuls in bf16 (softmax stays fp32).
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int, mm_dtype: torch.dtype) -> torch.Tensor:
        P = h.shape[0]
        hm = h.detach().to(mm_dtype)  # (P, d)
        E = table.detach().to(mm_dtype)  # (N, d)
        Et = E.t().contiguous()  # (d, N)
        grad_h = torch.empty(h.shape, dtype=torch.float32)
        grad_t = torch.zeros(table.shape, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float64)
        for s in range(0, P, chunk):
            hc, yc = hm[s : s + chunk], targets[s : s + chunk]
            logits = (hc @ Et).float()  # (c, N)
            target_logit = logits.gather(1, yc.unsqueeze(1)).squeeze(1)  # (c,)
            mx = logits.amax(1)  # (c,)
            probs = logits.sub_(mx.unsqueeze(1)).exp_()  # (c, N) one exp pass, in place
            z = probs.sum(1)  # (c,)
            total += (z.log() + mx - target_logit).sum().double()
            probs.div_(z.unsqueeze(1))  # softmax
            probs[torch.arange(yc.shape[0]), yc] -= 1.0  # d loss / d logits (times P)
            g = probs.to(mm_dtype)
            grad_h[s : s + chunk] = g @ E
            grad_t += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h.div_(P), grad_t.div_(P))
        return (total / P).float()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_t = ctx.saved_tensors
        return grad_h * grad, grad_t * grad, None, None, None


class SeqRecModel(nn.Module):
    """Causal transformer: history tokens in, one hidden state per step out.

    The hidden state at the last step is the user vector; its inner product with an item's
    embedding is that item's score (the FAISS index holds the same item vectors).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item = ItemEmbedding(cfg)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.action_emb = nn.Embedding(len(EVENT_TYPES) + 1, d, padding_idx=0) if cfg.use_actions else None
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d, padding_idx=0) if cfg.use_time else None
        self.hour_emb = nn.Embedding(N_HOURS, d, padding_idx=0) if cfg.use_time else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.adapter = Adapter(d, cfg.adapter_dim) if cfg.adapter_dim > 0 else None
        # heads: the next-item head is the (tied) item table; the genre head is auxiliary
        self.heads = nn.ModuleDict()
        if cfg.genre_head and cfg.n_genres:
            self.heads["genre"] = nn.Linear(d, cfg.n_genres)
        self.apply(self._init_weights)
        if self.adapter is not None:
            self.adapter.zero_()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def item_table(self) -> torch.Tensor:
        """(N+1, d) item vectors (input tokens and output layer)."""
        return self.item()

    def forward(self, batch: Batch, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) hidden states. ``table`` may be passed in when it was already computed."""
        x = self._embed(batch, table)
        for block in self.blocks:
            x = block(x)
        return self._out(x)  # (B, T, d)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm, then the adapter when there is one."""
        x = self.ln_f(x)
        return x if self.adapter is None else self.adapter(x)

    def user_vectors(self, batch: Batch, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) hidden state at each row's last real event (rows must be non-empty).

        Same as ``forward(batch)[row, last]``, but the last block computes only that step:
        the earlier blocks must run everywhere (their outputs are its keys), the last need not.
        """
        x = self._embed(batch, table)
        for block in self.blocks[:-1]:
            x = block(x)
        last = (batch.lengths - 1).clamp(min=0)  # (B,)
        x = self.blocks[-1](x, query_at=last)  # (B, 1, d)
        return self._out(x[:, 0])  # (B, d)

    def branch_vectors(self, batch: Batch, after: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(Bb, d) user vectors of one history continued by each of ``after`` (Bb,) in turn.

        ``batch`` holds one row, unpadded: the history's last ``max_len - 1`` events and one
        placeholder event whose action and time features the continuations take (its item is
        swapped for each of ``after``). Same as ``user_vectors`` of the ``Bb`` histories, but
        causal attention leaves the history's hidden states unchanged by what follows, so they
        are computed once and each continuation costs one token: the outer loop can ask "what
        if the next item is x" for a hundred x in about the time of one forward pass.
        """
        if batch.items.shape[0] != 1 or batch.items.shape[1] < 2:
            raise ValueError("branch_vectors takes one history of at least one event and the placeholder")
        if table is None:
            table = self.item_table()
        x = self._embed(batch, table)  # (1, T + 1, d)
        T = x.shape[1] - 1
        placeholder = x[0, T] - table[batch.items[0, T]]  # position, action and time of the new event
        y = (placeholder.unsqueeze(0) + table[after]).unsqueeze(1)  # (Bb, 1, d)
        ctx = x[:, :T]
        for i, block in enumerate(self.blocks):
            y = block.extend(ctx, y)
            if i < len(self.blocks) - 1:
                ctx = block(ctx)
        return self._out(y[:, 0])

    def _embed(self, batch: Batch, table: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) input tokens: item + position (+ action, gap, hour), dropout."""
        items = batch.items
        B, T = items.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.cfg.max_len}")
        if table is None:
            table = self.item_table()
        pos = torch.arange(T, device=items.device)  # (T,) right padding: the t-th event is at t
        x = F.embedding(items, table) + self.pos_emb(pos)  # (B, T, d)
        if self.action_emb is not None and batch.actions is not None:
            x = x + self.action_emb(batch.actions)
        if self.gap_emb is not None and batch.gaps is not None:
            x = x + self.gap_emb(batch.gaps) + self.hour_emb(batch.hours)
        return fast_dropout(x, self.cfg.dropout, self.training)

    def genre_targets(self, items: torch.Tensor) -> torch.Tensor:
        """(P, G) multi-hot genres of ``items`` (P,) for the auxiliary head."""
        g = self.item.genres[items]  # (P, Gmax), genre index + 1, 0 = empty
        out = torch.zeros(items.shape[0], self.cfg.n_genres + 1, device=items.device)
        out.scatter_(1, g, 1.0)
        return out[:, 1:]

    def loss(
        self, batch: Batch, targets: torch.Tensor, genre_weight: float = 0.1, bf16: bool = False, chunk: int = 512
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Full-softmax cross-entropy over the catalog at every real target position, plus
        the auxiliary next-genre loss (multi-label BCE) weighted by ``genre_weight``.

        Logits are computed only where ``targets > 0`` (padding is a third of a padded grid
        on ML-1M), in chunks (:class:`FusedSoftmaxCE`).
        """
        table = self.item_table()  # (N+1, d)
        h = self.forward(batch, table)  # (B, T, d)
        sel = targets > 0  # (B, T)
        hs = h[sel]  # (P, d)
        ys = targets[sel]  # (P,)
        mm_dtype = torch.bfloat16 if bf16 else torch.float32
        loss_item = FusedSoftmaxCE.apply(hs, table[1:], ys - 1, chunk, mm_dtype)  # padding row never competes
        parts = {"item": float(loss_item.detach())}
        loss = loss_item
        if "genre" in self.heads and genre_weight > 0:
            g_logits = self.heads["genre"](hs)  # (P, G)
            loss_genre = F.binary_cross_entropy_with_logits(g_logits, self.genre_targets(ys))
            parts["genre"] = float(loss_genre.detach())
            loss = loss + genre_weight * loss_genre
        return loss, parts

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
