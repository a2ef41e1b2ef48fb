"""The outer loop's heavy model: an ensemble the request path does not run.

A request gets about 2 ms of model compute: one transformer forward pass and an ANN search. An
outer-loop agent refreshing a user's rows in the background can afford more, and this is what
the built-in ``ensemble`` agent spends it on:

- the served transformer, plus ``extra_transformers`` more of the same shape trained with other
  seeds (independent errors average out: the classic ensemble gain);
- EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019), an item-item model fitted in
  closed form on the same training parts. It reads the whole history as a bag, recent items
  weighted up (``half_life`` in interactions), where the transformer reads a sequence; the two
  make different mistakes. Its (N+1, N+1) matrix is why it is not for the request path of a big
  catalog; above ``max_ease_items`` it is left out.

Each member's scores are standardized per user (z-scores over the catalog), mixed with weights
chosen on the validation cut, and turned into log-probabilities of being the next item with a
temperature fitted on the validation cut too. Nothing here ever looks at the test cut except to
report it. The result is an agent row whose scores mean the same thing for every user and every
row (``score_kind="log_prob"``), which the ranker reads as a feature.

Files (in ``<artifacts>/ensemble/``): ``ensemble.json`` (members, weights, EASE settings,
temperature, the validation/test report), ``ease.npy`` and one artifacts directory per extra
transformer (``member-1``, ...), each written by the project's own ``train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from outerloop.data.schema import ACTION_ID, InteractionData
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.evaluate import EvalCases, leave_one_out, train_sequences
from outerloop.progress import progress_bar

if TYPE_CHECKING:
    from outerloop.inner_loop.model.artifacts import Artifacts

log = logging.getLogger(__name__)

ENSEMBLE_DIR = "ensemble"
ENSEMBLE_FILE = "ensemble.json"
EASE_FILE = "ease.npy"
EASE = "ease"


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    """What to train and the grids the validation cut chooses from."""

    # more transformers of the served shape, other seeds. 3: on ML-1M each seed added less
    # (test NDCG@10 with EASE and 1 / 2 extra 0.1880 / 0.1885 over a served 0.1787; 3 extra
    # 0.1891 over a served 0.1792, retrained 2026-12-07), and an
    # agent run scores all of them in ~10 ms of its 250 ms budget
    extra_transformers: int = 3
    tie_transformers: bool = True  # one weight shared by every transformer (see _weight_grid)
    seed_offset: int = 1  # member i trains with the served model's seed + seed_offset + i - 1
    max_minutes: float | None = None  # per extra transformer (None: train to early stopping)
    ease_lambdas: tuple[float, ...] = (100.0, 300.0, 1000.0, 3000.0)
    half_lives: tuple[float, ...] = (0.0, 20.0, 80.0)  # interactions; 0 = no recency weighting
    max_ease_items: int = 20_000
    weight_step: float = 0.05
    temperatures: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    batch_size: int = 512


_SKIP = ACTION_ID["skip"]


def _model_input(model: "Artifacts", h: Any, a: Any, t: Any, max_len: int,
                 ) -> tuple[list[int], list[int] | None, list[int] | None]:
    """One history's last ``max_len`` events as a transformer is fed them: a model without
    action inputs does not see skips (it would read them as interest)."""
    h = np.asarray(h, dtype=np.int64)
    a = None if a is None else np.asarray(a, dtype=np.int64)
    t = None if t is None else np.asarray(t, dtype=np.int64)
    if a is not None and not getattr(model.config, "use_actions", False) and a.shape[0] == h.shape[0]:
        keep = a != _SKIP
        h, a, t = h[keep], a[keep], (t[keep] if t is not None and t.shape[0] == keep.shape[0] else t)
    return (h[-max_len:].tolist(), None if a is None else a[-max_len:].tolist(),
            None if t is None else t[-max_len:].tolist())


def _transformer_scores(model: "Artifacts", histories: Sequence[Any], actions: Any, ts: Any, max_len: int) -> np.ndarray:
    """A transformer's (B, N+1) scores of the last ``max_len`` events (see :func:`_model_input`)."""
    rows = [_model_input(model, h, None if actions is None else actions[r], None if ts is None else ts[r], max_len)
            for r, h in enumerate(histories)]
    hs, acts, tss = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    a_arg = None if actions is None or any(a is None for a in acts) else acts
    t_arg = None if ts is None or any(t is None for t in tss) else tss
    return model.scores(hs, a_arg, t_arg)


def _transformer_branch_scores(model: "Artifacts", history: Any, actions: Any, ts: Any, after: np.ndarray,
                               max_len: int) -> np.ndarray:
    """(len(after), N+1) scores of ``history + [x]`` for each x of ``after``, as
    :func:`_transformer_scores` would give them one history at a time."""
    h, a, t = _model_input(model, history, actions, ts, max_len - 1)
    if not h:  # only skips: each continuation is a one-event history
        return _transformer_scores(model, [[int(x)] for x in after], None, None, max_len)
    return model.branch_encode(h, after, a, t, next_action=taken_action(a)) @ model.item_vectors.T


def taken_action(actions: Sequence[int] | None) -> int | None:
    """The action a continuation takes: the user's newest that is not a skip (a branch is an
    item taken), or the newest when all are skips."""
    if not actions:
        return None
    return next((int(a) for a in reversed(actions) if a != _SKIP), int(actions[-1]))


def _zscore(s: np.ndarray) -> np.ndarray:
    """Per-row standardization over the catalog (column 0, padding, left out and set to -inf)."""
    body = s[:, 1:]
    mu = body.mean(1, keepdims=True)
    sd = body.std(1, keepdims=True)
    out = np.empty_like(s, dtype=np.float32)
    out[:, 1:] = (body - mu) / np.maximum(sd, 1e-6)
    out[:, 0] = -np.inf
    return out


class EaseModel:
    """EASE's item-item weights ``B`` (diagonal zero) and how a history is weighted."""

    def __init__(self, weights: np.ndarray, half_life: float = 0.0) -> None:
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)  # (N+1, N+1)
        self.half_life = float(half_life)

    @staticmethod
    def gram(sequences: Sequence[np.ndarray], n_items: int, actions: Sequence[np.ndarray | None] | None = None,
             ) -> np.ndarray:
        """``X^T X`` of the binary user-item matrix of ``sequences`` ((N+1, N+1), float64);
        skipped items (explicit negative feedback) are not positives."""
        x = np.zeros((len(sequences), n_items + 1), dtype=np.float32)
        for r, s in enumerate(sequences):
            s = np.asarray(s, dtype=np.int64)
            a = None if actions is None else actions[r]
            x[r, s if a is None else s[np.asarray(a) != _SKIP]] = 1.0
        x[:, 0] = 0.0
        return (x.T @ x).astype(np.float64)

    @classmethod
    def fit(cls, gram: np.ndarray, lam: float, half_life: float = 0.0) -> "EaseModel":
        """Closed form: ``P = (G + lam I)^-1``, ``B = I - P / diag(P)``, diagonal zeroed."""
        g = gram.copy()
        idx = np.arange(g.shape[0])
        g[idx, idx] += lam
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))[None, :]
        b[idx, idx] = 0.0
        b[0, :] = 0.0
        b[:, 0] = 0.0
        return cls(b, half_life)

    def user_weights(self, history: np.ndarray) -> np.ndarray:
        """(L,) weight of each history item, the newest 1 (recency decay when ``half_life``)."""
        n = history.shape[0]
        if self.half_life <= 0:
            return np.ones(n, dtype=np.float32)
        age = np.arange(n - 1, -1, -1, dtype=np.float32)
        return (0.5 ** (age / self.half_life)).astype(np.float32)

    def bag(self, history: np.ndarray, actions: Any = None) -> np.ndarray:
        """(N+1,) the history as EASE reads it: each item's largest weight, skips left out."""
        n = self.weights.shape[0]
        x = np.zeros(n, dtype=np.float32)
        h = np.asarray(history, dtype=np.int64)
        w = self.user_weights(h)
        keep = (h >= 1) & (h < n)
        if actions is not None and len(actions) == len(h):
            keep &= np.asarray(actions) != _SKIP
        if keep.any():
            np.maximum.at(x, h[keep], w[keep])
        return x

    def branch_scores(self, history: np.ndarray, after: np.ndarray, actions: Any = None) -> np.ndarray:
        """(len(after), N+1) scores of ``history + [x]`` for each x of ``after``. The bag is
        linear in the history: one more event ages every weight by one step and gives x weight
        1, so each continuation is the history's scores, decayed, plus x's row of ``B``."""
        decay = 0.5 ** (1.0 / self.half_life) if self.half_life > 0 else 1.0
        x = self.bag(history, actions)
        nz = np.flatnonzero(x)
        base = x[nz] @ self.weights[nz]  # (N+1,)
        after = np.asarray(after, dtype=np.int64)
        gain = (1.0 - decay * x[after]).astype(np.float32)  # x's weight goes from decay * old to 1
        return (decay * base)[None, :] + gain[:, None] * self.weights[after]

    def scores(self, histories: Sequence[np.ndarray], actions: Sequence[Any] | None = None) -> np.ndarray:
        """(B, N+1) EASE scores; a history is a bag of its items, recent ones weighted up and
        skipped ones (``actions``) left out."""
        n = self.weights.shape[0]
        x = np.zeros((len(histories), n), dtype=np.float32)
        for r, h in enumerate(histories):
            x[r] = self.bag(h, None if actions is None else actions[r])
        if len(histories) > 8:  # batches (training, evaluation): one dense product
            return x @ self.weights
        out = np.zeros((len(histories), n), dtype=np.float32)
        for r in range(len(histories)):  # one user (an agent run): only the history's rows of B
            nz = np.flatnonzero(x[r])
            out[r] = x[r, nz] @ self.weights[nz]
        return out


def _top_k(lp: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite values of ``lp``, largest first."""
    k = max(0, min(k, int(np.isfinite(lp).sum())))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-lp, k - 1)[:k]
    return idx[np.argsort(-lp[idx], kind="stable")]


@dataclass(frozen=True, slots=True)
class Branch:
    """The heavy model's next items had the user's next interaction been ``after``."""

    after: int
    item_ids: np.ndarray  # (k,) int64, most likely first
    log_probs: np.ndarray  # (k,) float32
    floor: float | None = None  # log-prob where a full-length row would have ended (None: not asked)


@dataclass
class Ensemble:
    """The served transformer, extra transformers and EASE, mixed (see the module docstring)."""

    base: "Artifacts"
    members: list["Artifacts"]
    ease: EaseModel | None
    weights: dict[str, float]  # "base", "member-1", ..., "ease"
    temperature: float
    report: dict[str, Any] = field(default_factory=dict)
    max_len: int = 200

    @property
    def names(self) -> list[str]:
        return ["base", *[f"member-{i + 1}" for i in range(len(self.members))], *([EASE] if self.ease else [])]

    def member_scores(self, histories: Sequence[np.ndarray], actions: Any = None, ts: Any = None) -> dict[str, np.ndarray]:
        """Each member's standardized (B, N+1) scores (the transformers read the last ``max_len``)."""
        out = {"base": _zscore(_transformer_scores(self.base, histories, actions, ts, self.max_len))}
        for i, m in enumerate(self.members):
            out[f"member-{i + 1}"] = _zscore(_transformer_scores(m, histories, actions, ts, self.max_len))
        if self.ease is not None:
            out[EASE] = _zscore(self.ease.scores(histories, actions))
        return out

    def mix(self, z: dict[str, np.ndarray]) -> np.ndarray:
        total = sum(self.weights.get(k, 0.0) * v for k, v in z.items() if self.weights.get(k, 0.0))
        return np.asarray(total, dtype=np.float32)

    def log_probs(self, histories: Sequence[np.ndarray], actions: Any = None, ts: Any = None,
                  exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """(B, N+1) log-probability that each item is the user's next one; ``exclude`` (per
        history; default the history itself) and column 0 get -inf."""
        s = self.mix(self.member_scores(histories, actions, ts)) / self.temperature
        s[:, 0] = -np.inf
        for r, h in enumerate(histories if exclude is None else exclude):
            s[r, np.asarray(h, dtype=np.int64)] = -np.inf
        m = s.max(1, keepdims=True)
        return (s - m - np.log(np.exp(s - m).sum(1, keepdims=True))).astype(np.float32)

    def top(self, history: np.ndarray, k: int, *, actions: Any = None, ts: Any = None,
            exclude: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``k`` most likely next items for one history, with their log-probabilities."""
        lp = self.log_probs([history], None if actions is None else [actions], None if ts is None else [ts],
                            None if exclude is None else [exclude])[0]
        idx = _top_k(lp, k)
        return [(int(i), float(lp[i])) for i in idx]

    def branches(self, history: np.ndarray, after: Sequence[int], k: int, *, actions: Any = None, ts: Any = None,
                 exclude: np.ndarray | None = None, floor_at: int | None = None) -> list["Branch"]:
        """For each item x of ``after``: the ``k`` most likely next items had the user's next
        interaction been x, i.e. :meth:`top` of ``history + [x]`` (x taking the newest event's
        action and time) with x excluded too. Costs about one :meth:`top`: the transformers
        encode the history once and each x is one more token (``Artifacts.branch_encode``), and
        EASE is linear in the history. ``floor_at``: each branch's ``floor`` is the log-probability
        of its ``floor_at``-th item (a row of that length would have ended there)."""
        h = np.asarray(history, dtype=np.int64)
        nxt = np.asarray(after, dtype=np.int64)
        if nxt.shape[0] == 0 or h.shape[0] == 0:
            return []
        z = {"base": _zscore(_transformer_branch_scores(self.base, h, actions, ts, nxt, self.max_len))}
        for i, m in enumerate(self.members):
            z[f"member-{i + 1}"] = _zscore(_transformer_branch_scores(m, h, actions, ts, nxt, self.max_len))
        if self.ease is not None:
            z[EASE] = _zscore(self.ease.branch_scores(h, nxt, actions))
        s = self.mix(z) / self.temperature
        s[:, 0] = -np.inf
        s[:, h if exclude is None else np.asarray(exclude, dtype=np.int64)] = -np.inf
        s[np.arange(nxt.shape[0]), nxt] = -np.inf
        m = s.max(1, keepdims=True)
        lp = (s - m - np.log(np.exp(s - m).sum(1, keepdims=True))).astype(np.float32)
        # every branch's top items at once (torch's top-k: several times numpy's argpartition here)
        finite = np.isfinite(lp).sum(1)
        want = int(min(max(k, floor_at or 0), lp.shape[1]))
        part = torch.from_numpy(lp).topk(want, dim=1, sorted=True).indices.numpy()
        out = []
        for r, x in enumerate(nxt.tolist()):
            idx = part[r, : min(want, int(finite[r]))]
            floor = float(lp[r, idx[floor_at - 1]]) if floor_at and len(idx) >= floor_at else None
            idx = idx[:k]
            out.append(Branch(int(x), idx.astype(np.int64), lp[r, idx], floor))
        return out

    # ---- files ----------------------------------------------------------------------------
    @staticmethod
    def directory(artifacts_dir: str | Path) -> Path:
        return Path(artifacts_dir) / ENSEMBLE_DIR

    @classmethod
    def exists(cls, artifacts_dir: str | Path) -> bool:
        return (cls.directory(artifacts_dir) / ENSEMBLE_FILE).is_file()

    def save(self) -> None:
        d = self.directory(self.base.dir)
        d.mkdir(parents=True, exist_ok=True)
        if self.ease is not None:
            tmp = d / (EASE_FILE + ".tmp.npy")
            np.save(tmp, self.ease.weights)
            tmp.replace(d / EASE_FILE)
        doc = {
            "base_model_version": self.base.model_version,
            "members": [f"member-{i + 1}" for i in range(len(self.members))],
            "member_versions": [m.model_version for m in self.members],
            "ease": None if self.ease is None else {"file": EASE_FILE, "half_life": self.ease.half_life},
            "weights": self.weights,
            "temperature": self.temperature,
            "max_len": self.max_len,
            "report": self.report,
        }
        tmp = d / (ENSEMBLE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(d / ENSEMBLE_FILE)  # written last: its presence means the rest is there

    @classmethod
    def load(cls, base: "Artifacts") -> "Ensemble":
        """The ensemble trained for ``base`` (refused when it was trained for another model)."""
        from outerloop.inner_loop.model.artifacts import Artifacts

        d = cls.directory(base.dir)
        path = d / ENSEMBLE_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{path}: missing or unreadable ({exc}); run `outerloop train-ensemble`") from exc
        if doc.get("base_model_version") != base.model_version:
            raise UserInputError(f"{path}: trained for model {doc.get('base_model_version')}, not "
                                 f"{base.model_version}; re-run `outerloop train-ensemble`")
        members = [Artifacts.load(d / name) for name in doc.get("members", [])]
        ease = None
        if doc.get("ease"):
            try:
                ease = EaseModel(np.load(d / doc["ease"]["file"]), float(doc["ease"]["half_life"]))
            except (OSError, ValueError) as exc:
                raise UserInputError(f"{d / EASE_FILE}: unreadable ({exc})") from exc
        return cls(base, members, ease, {str(k): float(v) for k, v in doc["weights"].items()},
                   float(doc["temperature"]), dict(doc.get("report", {})), int(doc.get("max_len", 200)))


# ---- training ------------------------------------------------------------------------------------
def _seen_index(cases: EvalCases) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every case's history item, for masking a (cases, N+1) score matrix at once."""
    rows = np.repeat(np.arange(len(cases)), [h.shape[0] for h in cases.histories])
    cols = np.concatenate(cases.histories) if len(cases) else np.zeros(0, np.int64)
    return rows, cols.astype(np.int64)


def _masked(scores: np.ndarray, cases: EvalCases, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``scores`` with column 0 and each case's history at -inf (a repeated target
    keeps its score), and the targets' scores."""
    s = np.array(scores, dtype=dtype)
    s[:, 0] = -np.inf
    rows = np.arange(s.shape[0])
    keep = s[rows, cases.targets].copy()
    s[_seen_index(cases)] = -np.inf
    s[rows, cases.targets] = keep
    return s, keep


def _ranks(scores: np.ndarray, cases: EvalCases) -> np.ndarray:
    """0-based rank of each case's target, the case's history excluded (ties count half)."""
    s, keep = _masked(scores, cases, np.float32)
    t = keep[:, None]
    return (s > t).sum(1) + 0.5 * ((s == t).sum(1) - 1)


def _ndcg10(scores: np.ndarray, cases: EvalCases) -> float:
    r = _ranks(scores, cases)
    return float(np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0).mean()) if r.size else 0.0


def _nll(logits: np.ndarray, cases: EvalCases) -> float:
    s, keep = _masked(logits, cases, np.float64)
    m = s.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(1))
    return float((lse - keep).mean())


def _simplex(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to 1."""
    units = int(round(1.0 / step))

    def rec(left: int, k: int) -> list[tuple[int, ...]]:
        if k == 1:
            return [(left,)]
        return [(i, *rest) for i in range(left + 1) for rest in rec(left - i, k - 1)]

    return [tuple(u / units for u in w) for w in rec(units, n)]


def _weight_grid(names: list[str], cfg: EnsembleConfig) -> list[tuple[float, ...]]:
    """The mixes the validation cut chooses from. With ``tie_transformers`` the transformers,
    which differ only by seed and so are exchangeable, share one weight and only EASE's share is
    fitted: on ML-1M a free weight per seed (base 0.05, members 0.45 each, validation NDCG@10
    0.1996) fitted the validation cut's noise and scored 0.1869 on test, below the one-member
    ensemble's 0.1880."""
    if not cfg.tie_transformers:
        return _simplex(len(names), cfg.weight_step)
    n_tf = sum(n != EASE for n in names)
    shares = [w[0] for w in _simplex(2, cfg.weight_step)] if EASE in names else [0.0]
    return [tuple(share if n == EASE else (1.0 - share) / n_tf for n in names) for share in shares]


def _batched(fn: Callable[[list[np.ndarray], Any, Any], np.ndarray], cases: EvalCases, batch: int) -> np.ndarray:
    parts = []
    for s in range(0, len(cases), batch):
        sl = slice(s, s + batch)
        parts.append(fn(cases.histories[sl], None if cases.actions is None else cases.actions[sl],
                        None if cases.ts is None else cases.ts[sl]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def train_member(base: "Artifacts", data: InteractionData, index: int, cfg: EnsembleConfig, *,
                 progress: bool = True) -> "Artifacts":
    """One extra transformer: the served model's shape and training settings, another seed,
    trained by the project's own ``train`` and saved as ``ensemble/member-<index>``."""
    from outerloop.data.datasets import dataset_hash
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.train import TrainConfig, train

    tc = dict((base.manifest.get("config") or {}).get("train") or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if tc.get("bf16") is True:  # the default before bf16 was measured per CPU: measure it here too
        tc["bf16"] = None
    tcfg = TrainConfig(**{k: v for k, v in tc.items() if k in known})
    tcfg = dataclasses.replace(tcfg, seed=int(tcfg.seed) + cfg.seed_offset + index - 1, freeze_backbone=False,
                               max_minutes=cfg.max_minutes if cfg.max_minutes is not None else tcfg.max_minutes)
    out = Ensemble.directory(base.dir) / f"member-{index}"
    result = train(data, base.config, tcfg, checkpoint_dir=out / "checkpoints", progress=progress)
    manifest = {"dataset": data.name, "data_hash": dataset_hash(data), "config": {"train": dataclasses.asdict(tcfg)},
                "wall_time_s": round(result.wall_s, 1), "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch, "ensemble_member_of": base.model_version,
                "metrics": {"valid_best": result.valid}}
    arts = Artifacts.from_model(result.model, data.catalog, result.popularity, manifest, dir=out)
    arts.save(out)
    return arts


def _usable_member(path: Path, base: "Artifacts", data_hash: str) -> "Artifacts | None":
    """A member trained earlier for the same data and model shape (reused, not retrained)."""
    from outerloop.inner_loop.model.artifacts import Artifacts

    if not (path / "manifest.json").is_file():
        return None
    try:
        arts = Artifacts.load(path)
    except UserInputError:
        return None
    same_shape = arts.config.to_dict() == base.config.to_dict()
    return arts if same_shape and arts.manifest.get("data_hash") == data_hash else None


def train_ensemble(base: "Artifacts", data: InteractionData, cfg: EnsembleConfig | None = None, *,
                   progress: bool = True) -> Ensemble:
    """Train what is missing (extra transformers, EASE), choose EASE's settings, the mix and the
    temperature on the validation cut, report the test cut, and save into ``<base>/ensemble``."""
    from outerloop.data.datasets import dataset_hash

    cfg = cfg or EnsembleConfig()
    t0 = time.perf_counter()
    if len(base.catalog) != len(data.catalog):
        raise UserInputError(f"artifacts have {len(base.catalog)} items, dataset {data.name!r} {len(data.catalog)}")
    data_hash = dataset_hash(data)
    if base.manifest.get("data_hash") not in (None, data_hash):
        raise UserInputError(f"{base.dir}: trained on other data than {data.name!r} (data hash differs)")
    members: list[Artifacts] = []
    trained: list[str] = []
    for i in range(1, cfg.extra_transformers + 1):
        path = Ensemble.directory(base.dir) / f"member-{i}"
        arts = _usable_member(path, base, data_hash)
        if arts is None:
            arts = train_member(base, data, i, cfg, progress=progress)
            trained.append(path.name)
        members.append(arts)
    t_members = time.perf_counter() - t0

    val = leave_one_out(data, "valid")
    test = leave_one_out(data, "test")
    n_items = len(data.catalog)
    probe = Ensemble(base, members, None, {}, 1.0, max_len=int(base.config.max_len))
    # standardized validation scores of each transformer member
    z_val = {name: _batched(lambda h, a, t, m=m: _zscore(_transformer_scores(m, h, a, t, probe.max_len)),
                            val, cfg.batch_size)
             for name, m in zip(probe.names, [base, *members])}
    report: dict[str, Any] = {"valid": {}, "test": {}, "trained_now": trained}
    for name, z in z_val.items():
        report["valid"][f"{name}_ndcg@10"] = round(_ndcg10(z, val), 5)

    ease: EaseModel | None = None
    t_ease = time.perf_counter()
    if n_items <= cfg.max_ease_items:
        parts = train_sequences(data)
        gram = EaseModel.gram([u.items for u in parts], n_items, [u.actions for u in parts])
        best = (-1.0, None)
        grid = {}
        with progress_bar("EASE on validation", unit="setting", enabled=None if progress else False) as bar:
            for lam in cfg.ease_lambdas:
                model = EaseModel.fit(gram, lam)
                for hl in cfg.half_lives:
                    model.half_life = hl
                    nd = _ndcg10(_batched(lambda h, a, t: model.scores(h, a), val, cfg.batch_size), val)
                    grid[f"lambda={lam:g},half_life={hl:g}"] = round(nd, 5)
                    if nd > best[0]:
                        best = (nd, (lam, hl))
                    bar.update_to(len(grid), len(cfg.ease_lambdas) * len(cfg.half_lives))
        lam, hl = best[1]  # type: ignore[misc]
        ease = EaseModel.fit(gram, lam, hl)
        z_val[EASE] = _batched(lambda h, a, t: _zscore(ease.scores(h, a)), val, cfg.batch_size)  # type: ignore[union-attr]
        report["valid"]["ease_grid_ndcg@10"] = grid
        report["ease"] = {"lambda": lam, "half_life": hl}
        report["valid"][f"{EASE}_ndcg@10"] = round(best[0], 5)
    t_ease = time.perf_counter() - t_ease

    names = list(z_val)
    best_w: tuple[float, dict[str, float]] = (-1.0, {})
    with progress_bar("ensemble weights", unit="mix", enabled=None if progress else False) as bar:
        grid_w = _weight_grid(names, cfg)
        for done, w in enumerate(grid_w, 1):
            mixed = sum(wi * z_val[n] for wi, n in zip(w, names) if wi)
            nd = _ndcg10(mixed, val)
            if nd > best_w[0] + 1e-9:
                best_w = (nd, {n: wi for n, wi in zip(names, w)})
            bar.update_to(done, len(grid_w))
    weights = best_w[1]
    mixed = sum(w * z_val[n] for n, w in weights.items() if w)
    temps = {t: _nll(mixed / t, val) for t in cfg.temperatures}
    temperature = min(temps, key=temps.get)  # type: ignore[arg-type]
    report["valid"]["ensemble_ndcg@10"] = round(best_w[0], 5)
    report["valid"]["nll_by_temperature"] = {f"{t:g}": round(v, 4) for t, v in temps.items()}
    del z_val, mixed

    ens = Ensemble(base, members, ease, weights, temperature, report, max_len=int(base.config.max_len))
    for name in ens.names:  # reported, never used to choose anything
        only = {n: (1.0 if n == name else 0.0) for n in ens.names}
        report["test"][f"{name}_ndcg@10"] = round(_ndcg10(
            _batched(lambda h, a, t, o=only: dataclasses.replace(ens, weights=o).mix(ens.member_scores(h, a, t)),
                     test, cfg.batch_size), test), 5)
    report["test"]["ensemble_ndcg@10"] = round(_ndcg10(
        _batched(lambda h, a, t: ens.mix(ens.member_scores(h, a, t)), test, cfg.batch_size), test), 5)
    report["seconds"] = {"members": round(t_members, 1), "ease": round(t_ease, 1),
                         "total": round(time.perf_counter() - t0, 1)}
    ens.save()
    return ens


# ---- command line: `outerloop train-ensemble` ------------------------------------------------------
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", type=Path, required=True,
                   help="trained artifacts (`outerloop train`); the ensemble is saved in DIR/ensemble")
    p.add_argument("--dataset", default=None, help="dataset name (default: the one in the artifacts' manifest)")
    p.add_argument("--data-dir", type=Path, default=None, help="data root (default: the manifest's)")
    p.add_argument("--extra-transformers", type=int, default=EnsembleConfig.extra_transformers,
                   help="transformers trained besides the served one, other seeds (default %(default)s)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of each extra transformer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from outerloop.inner_loop.model.artifacts import Artifacts, training_data

    if args.extra_transformers < 0:
        raise UserInputError(f"--extra-transformers must be >= 0, got {args.extra_transformers}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserInputError(f"--max-minutes must be > 0, got {args.max_minutes}")
    base = Artifacts.load(args.artifacts)
    data = training_data(base, args.dataset, args.data_dir)
    cfg = EnsembleConfig(extra_transformers=args.extra_transformers, max_minutes=args.max_minutes)
    ens = train_ensemble(base, data, cfg, progress=not args.quiet)
    print(json.dumps({"dir": str(Ensemble.directory(base.dir)), "weights": ens.weights,
                      "temperature": ens.temperature, **ens.report}))
    return 0
