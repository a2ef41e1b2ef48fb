"""Training: full-softmax next-item cross-entropy, early stopping on validation NDCG@10.

The route is SASRec trained with cross-entropy over the whole catalog instead of one sampled
negative (Klenitskiy & Vasilev 2023): on ML-1M it is both the better and the simpler model.
The checkpoint kept is the best by *validation* NDCG@10 (full ranking); the test split is
never looked at here.

CPU speed: logits only at real positions, fused chunked softmax (see ``FusedSoftmaxCE``),
bf16 matmuls for the logits where the CPU has native bf16 (``bf16_pays``), and batches of
similar-length users so little is padding.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from outerloop.data.schema import Catalog, InteractionData, UserSequence
from outerloop.inner_loop.model.evaluate import ScoreFn, evaluate, item_counts, leave_one_out, train_sequences
from outerloop.inner_loop.model.batching import event_features, make_batch, pad_right
from outerloop.inner_loop.model.features import build_item_features
from outerloop.inner_loop.model.transformer import Batch, ModelConfig, SeqRecModel

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to train (the model's shape is :class:`ModelConfig`)."""

    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 32  # more updates per epoch: at 128 ML-1M gets 47 steps an epoch and learns ~3x slower per epoch
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 8  # validations without improvement before stopping
    lr_decay_patience: int = 3  # validations without improvement before the lr is halved
    eval_every: int = 1  # epochs between validations
    seed: int = 42
    # bf16 matmuls for the catalog logits; None = where they pay (``bf16_pays``): ~1.5x faster
    # on a CPU with native bf16, 6x slower on an AVX2-only one, which emulates it
    bf16: bool | None = None
    genre_weight: float = 0.1  # auxiliary next-genre loss weight
    id_dropout: float = 0.0  # share of items shown as metadata only per step (cold-start training)
    num_threads: int = 0  # 0 = auto: all cores when idle, 1 when other processes compete (see pick_threads)
    max_minutes: float | None = None  # wall-clock budget for the epochs (None = no limit)
    freeze_backbone: bool = False  # a warm start that trains only new items, the adapter and the heads


@dataclass
class TrainResult:
    model: SeqRecModel
    popularity: np.ndarray  # (N+1,) training counts
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]  # best validation metrics
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass(slots=True)
class SequenceTensors:
    """Every user's training window as right-padded arrays (inputs are ``[:, :-1]``,
    targets ``[:, 1:]``). Built once; an epoch only reshuffles row indices."""

    items: np.ndarray  # (U, T+1)
    actions: np.ndarray | None
    gaps: np.ndarray | None
    hours: np.ndarray | None
    lengths: np.ndarray  # (U,) real events per row

    @classmethod
    def build(cls, seqs: list[UserSequence], cfg: ModelConfig) -> "SequenceTensors":
        seqs = [u for u in seqs if len(u) >= 2]  # one event predicts nothing
        T1 = cfg.max_len + 1
        items = pad_right([u.items for u in seqs], T1)
        actions = gaps = hours = None
        if cfg.use_actions and seqs and all(u.actions is not None for u in seqs):
            actions = pad_right([u.actions for u in seqs], T1)
        if cfg.use_time and seqs and all(u.ts is not None for u in seqs):
            feats = [event_features(u.ts) for u in seqs]
            gaps = pad_right([f[0] for f in feats], T1)
            hours = pad_right([f[1] for f in feats], T1)
        lengths = np.minimum([len(u) for u in seqs], T1).astype(np.int64)
        return cls(items=items, actions=actions, gaps=gaps, hours=hours, lengths=lengths)

    def batch(self, rows: np.ndarray) -> tuple[Batch, torch.Tensor]:
        """Inputs and targets for ``rows``, trimmed to the longest row of the batch."""
        T = int(self.lengths[rows].max()) - 1

        def cut(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a[rows, :T])

        batch = Batch(items=cut(self.items), actions=cut(self.actions), gaps=cut(self.gaps), hours=cut(self.hours))
        return batch, torch.from_numpy(self.items[rows, 1 : T + 1])

    def epoch_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Shuffled batches of similar-length rows: users are shuffled, cut into pools of 32
        batches, sorted by length inside a pool, batched, and the batch order shuffled.
        Padding (and so wasted attention work) drops several-fold; batches stay random."""
        perm = rng.permutation(self.lengths.shape[0])
        pool = batch_size * 32
        batches = []
        for s in range(0, perm.shape[0], pool):
            p = perm[s : s + pool]
            p = p[np.argsort(self.lengths[p], kind="stable")]
            batches.extend(p[i : i + batch_size] for i in range(0, p.shape[0], batch_size))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]


def pick_threads(requested: int) -> int:
    """Torch intra-op threads for the next epoch.

    ``requested > 0`` is used as given. ``0`` (auto) takes every core while the machine is
    otherwise idle and one thread when other processes compete for the cores: OpenMP barriers
    stall whenever a peer thread is descheduled, and on the shared 2-core machine two threads
    under load ~10 ran a training step 5x slower than one thread did (7.1 s vs 1.4 s).
    """
    if requested > 0:
        return requested
    n_cpu = os.cpu_count() or 1
    load_1min = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy_elsewhere = load_1min - torch.get_num_threads()  # our own threads count towards the load
    return n_cpu if busy_elsewhere < 0.5 else 1


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def build_model(cfg: ModelConfig, catalog: Catalog, counts: np.ndarray) -> SeqRecModel:
    """A fresh model with the catalog's features and training counts loaded."""
    model = SeqRecModel(cfg)
    model.item.set_item_data(build_item_features(catalog, cfg.genre_vocab, cfg.n_tag_buckets), torch.from_numpy(counts))
    return model


def model_config_for(data: InteractionData, **overrides: Any) -> ModelConfig:
    """Model config fitted to a dataset: catalog size, genre vocabulary, bag sizes, and the
    action/time features switched on only when every user has them."""
    catalog = data.catalog
    has_actions = bool(data.users) and all(u.actions is not None for u in data.users)
    has_time = bool(data.users) and all(u.ts is not None for u in data.users)
    base = dict(
        n_items=len(catalog),
        genre_vocab=tuple(catalog.genres),
        genre_slots=max([1] + [len(it.genres) for it in catalog.items]),
        tag_slots=max([1] + [len(it.tags) for it in catalog.items]),
        use_actions=has_actions,
        use_time=has_time,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**base)


def model_scorer(model: SeqRecModel, batch_size: int = 256) -> ScoreFn:
    """Score every item for a batch of histories with the model as it is now (eval mode)."""

    def score(histories: list[np.ndarray], actions: list[np.ndarray] | None, ts: list[np.ndarray] | None) -> np.ndarray:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            table = model.item_table()  # (N+1, d)
            out = []
            for s in range(0, len(histories), batch_size):
                sl = slice(s, s + batch_size)
                batch = make_batch(model.cfg, histories[sl], None if actions is None else actions[sl], None if ts is None else ts[sl])
                out.append(model.user_vectors(batch, table) @ table.t())  # (b, N+1)
            scores = torch.cat(out).numpy()
        model.train(was_training)
        return scores

    return score


@dataclass
class Frozen:
    """What :func:`freeze_backbone` left trainable, as optimizer parameter groups."""

    groups: list[dict[str, Any]]
    hooks: list[Any]  # gradient masks, removed by :meth:`release`

    def release(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def freeze_backbone(model: SeqRecModel, new_items: np.ndarray | None = None) -> Frozen:
    """Freeze the encoder (transformer blocks, position/action/time embeddings, the metadata
    tables, every known item's ID embedding) and leave trainable what serves new interactions
    through it: the ID embeddings of ``new_items`` (the other rows' gradients are masked), the
    adapter on the user vector (``model.cfg.adapter_dim``), and the heads. The served item vectors
    and user vectors both change; what the parent learned stays as it was."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups: list[dict[str, Any]] = []
    hooks: list[Any] = []
    dense = list(model.heads.parameters()) + (list(model.adapter.parameters()) if model.adapter is not None else [])
    if dense:
        groups.append({"params": dense})
    if new_items is not None and len(new_items):
        weight = model.item.id_emb.weight  # (N+1, d)
        mask = torch.zeros(weight.shape[0], 1)
        mask[torch.as_tensor(np.asarray(new_items, dtype=np.int64))] = 1.0
        weight.requires_grad_(True)
        hooks.append(weight.register_hook(lambda g: g * mask))
        groups.append({"params": [weight], "weight_decay": 0.0})  # decay would move the masked rows
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return Frozen(groups=groups, hooks=hooks)


@functools.cache
def bf16_pays() -> bool:
    """Whether bf16 matmuls of the training loss's shape beat fp32 on this CPU, measured once.

    CPUs with native bf16 (AVX512-BF16, AMX) run them ~1.5x faster; an AVX2-only CPU emulates
    them: on the project's AMD EPYC (AVX2) a (4096 x 64) @ (64 x 3500) product took 1.47 s in
    bf16 against 0.23 s in fp32, which made an ML-1M epoch several times slower."""
    a, b = torch.randn(512, 64), torch.randn(64, 2048)

    def best_of(dtype: torch.dtype) -> float:
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    return best_of(torch.bfloat16) < best_of(torch.float32)


def use_bf16(tcfg: TrainConfig) -> bool:
    """The config's choice, or :func:`bf16_pays` when it leaves it to the machine."""
    return bf16_pays() if tcfg.bf16 is None else bool(tcfg.bf16)


def train_epoch(model: SeqRecModel, opt: torch.optim.Optimizer, tensors: SequenceTensors, tcfg: TrainConfig,
                rng: np.random.Generator) -> float:
    """One pass over every user's window; returns the mean next-item loss."""
    model.train()
    losses = []
    for rows in tensors.epoch_batches(tcfg.batch_size, rng):
        batch, targets = tensors.batch(rows)
        loss, parts = model.loss(batch, targets, genre_weight=tcfg.genre_weight, bf16=use_bf16(tcfg))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(parts["item"])
    return float(np.mean(losses)) if losses else 0.0


def train(
    data: InteractionData,
    cfg: ModelConfig,
    tcfg: TrainConfig,
    model: SeqRecModel | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    new_items: np.ndarray | None = None,
) -> TrainResult:
    """Train on each user's training part, validate on the validation item.

    ``model`` continues training an existing model (a warm start); otherwise a fresh one is
    built from ``cfg``. The best state by validation NDCG@10 is restored before returning
    and, when ``checkpoint_dir`` is given, written there as ``best.pt`` each time it improves.
    With ``tcfg.freeze_backbone``, ``new_items`` are the item ids whose embeddings train (the
    items the parent never had: :func:`outerloop.inner_loop.model.warm_start.new_item_ids`).
    """
    t_start = time.perf_counter()
    torch.set_num_threads(pick_threads(tcfg.num_threads))
    seed_everything(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)

    seqs = train_sequences(data)
    counts = item_counts(seqs, len(data.catalog))
    if model is None:
        model = build_model(cfg, data.catalog, counts)
    cfg = model.cfg
    model.item.id_dropout = tcfg.id_dropout
    tensors = SequenceTensors.build(seqs, cfg)
    valid = leave_one_out(data, "valid")

    frozen = freeze_backbone(model, new_items) if tcfg.freeze_backbone else None
    groups = frozen.groups if frozen is not None else [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if not any(g["params"] for g in groups):
        raise ValueError("nothing to train: the model has no trainable parameters (a frozen backbone with no new "
                         "items, no adapter and no heads?)")
    opt = torch.optim.Adam(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None

    best: dict[str, Any] = {"ndcg": -1.0, "epoch": 0, "state": None, "valid": {}}
    history: list[dict[str, float]] = []
    stale = 0
    epoch = 0
    bar = tqdm(total=tcfg.epochs, desc="train", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in range(1, tcfg.epochs + 1):
        torch.set_num_threads(pick_threads(tcfg.num_threads))
        t0 = time.perf_counter()
        row: dict[str, float] = {
            "epoch": epoch,
            "loss": train_epoch(model, opt, tensors, tcfg, rng),
            "epoch_s": time.perf_counter() - t0,
            "threads": torch.get_num_threads(),
            "bf16": float(use_bf16(tcfg)),  # what the loss's matmuls ran in (1 = bf16)
            "lr": opt.param_groups[0]["lr"],
        }
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            m = evaluate(model_scorer(model), valid, len(data.catalog), "full", seed=tcfg.seed)
            row.update({"valid_hr@10": m["hr@10"], "valid_ndcg@10": m["ndcg@10"]})
            if m["ndcg@10"] > best["ndcg"]:
                best = {"ndcg": m["ndcg@10"], "epoch": epoch, "state": copy.deepcopy(model.state_dict()), "valid": m}
                stale = 0
                if ckpt is not None:
                    save_checkpoint(ckpt / "best.pt", model, epoch, m)
            else:
                stale += 1
                if tcfg.lr_decay_patience and stale % tcfg.lr_decay_patience == 0:
                    for group in opt.param_groups:  # a plateau: smaller steps settle into it
                        group["lr"] *= 0.5
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val_ndcg=f"{best['ndcg']:.4f}", best_ep=best["epoch"])
        log.info("epoch %s", row)
        if stale >= tcfg.patience:
            break
        if tcfg.max_minutes is not None and time.perf_counter() - t_start > 60 * tcfg.max_minutes:
            log.info("stopping: the %.1f-minute budget is spent", tcfg.max_minutes)
            break
    bar.close()
    if frozen is not None:
        frozen.release()
        for p in model.parameters():
            p.requires_grad_(True)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(
        model=model,
        popularity=counts,
        best_epoch=best["epoch"],
        epochs_run=epoch,
        valid=best["valid"],
        history=history,
        wall_s=time.perf_counter() - t_start,
    )


def save_checkpoint(path: Path, model: SeqRecModel, epoch: int, valid: dict[str, float]) -> None:
    """Weights + config (so a resume rebuilds the model) + when and how good."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), "epoch": epoch, "valid": valid}, tmp)
    tmp.replace(path)
