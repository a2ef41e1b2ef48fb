"""The second stage of the funnel: a small multi-task ranker over retrieval candidates.

Retrieval orders candidates by one inner product. The ranker looks at each candidate with
context retrieval cannot use cheaply (how popular it is, how it matches the genres of the
user's recent history, how close it is to the last few items, how often it followed them in
other people's histories, how old it is, whether an agent row put it forward) and predicts two
objectives from one shared trunk:

- ``relevance``: is this the user's next item? (listwise softmax over the candidate list)
- ``liked``: if the user takes this item, will they like it? Trained on what the data observed
  of each target: finished or rated at/above the data set's dislike threshold (1), played or
  clicked (0.6), skipped or rated below it (0). It is trained only where the data holds negative
  engagement (the synthetic world's skips, ML-100K and ml-latest-small loaded with
  ``dislike_below``); on a data set without any (SASRec's ML-1M: every interaction is a rating of
  unknown value) the ranker has the relevance head alone, rather than a head fitted to a proxy.

Each objective's head sits on ``bags`` independently trained copies of the trunk (other seeds,
each stopped early on held-out users), whose logits are averaged: a listwise ranker trained on
one positive per user is noisy, and averaging a few is the cheapest variance cut there is.

The serving score is ``sum(weight[o] * logit[o])`` with weights from the ranker config
(overridable at serve time). Features are computed for all candidates at once with numpy;
nothing loops over candidates in Python.

A ranker can be a **residual** of another (``RankerConfig.residual_of``): its score is the base
ranker's serving score plus its own relevance logit, trained with the base frozen and starting
from a zero correction. The served ranker of the outer loop is one: the inner-only ranker plus
what the agent rows add. Two rankers trained apart differ by as much as the rows are worth
(each chooses its epochs on a few hundred held-out users), so the lift of the rows was lost in
the noise of comparing them; a correction on a frozen base moves the ranking only where the
held-out users say the rows help, and serves exactly the base where it learned nothing.

A ranker may read only some agent rows (``RankerConfig.reads_rows``): the others are served as
rows of their own but neither join its candidates nor set its row features. The outer loop's
served ranker chooses on held-out users whether it reads every row or only the log-probability
rows (``outerloop.evals.prepare``): a row that looks informative on the users a ranker stops on
can still teach it something that does not carry over.

Files in the artifacts directory: ``ranker.pt`` (state dict), ``ranker.json`` (config:
feature names, standardization, weights, training report) and ``ranker_covisit.npz`` (the
co-visitation table two features read, see ``covisit.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, TypeVar

import numpy as np
import torch
import torch.nn as nn

from outerloop.data.schema import Catalog
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.covisit import CoVisitation

RANKER_WEIGHTS_FILE = "ranker.pt"
RANKER_CONFIG_FILE = "ranker.json"

FEATURE_NAMES: tuple[str, ...] = (
    "retrieval_score",  # inner product of user and item vectors
    "score_gap",  # retrieval score minus the best candidate's
    "retrieval_rank",  # log1p(rank) / log1p(#candidates), by retrieval score
    "popularity",  # log1p(training count), scaled to [0, 1]
    "genre_affinity",  # share of the recent history's genres the candidate has
    "recent_similarity",  # max cosine to the last RECENT items
    "last_similarity",  # cosine to the newest item
    "item_age",  # years before the catalog's newest item / 50, clipped to [0, 2]
    "in_agent_row",  # 1 when an agent row proposed it
    "agent_row_position",  # 1 / (1 + position in that row); 0 when in none
    "history_length",  # log1p(len(history)) / log1p(200)
    "covisit_recent",  # co-visitation from the last RECENT items, newer ones weigh more
    "covisit_last",  # co-visitation from the newest item
    "log_prob",  # next-item log-probability from a log-prob agent row (below its minimum when not in it)
    "log_prob_gap",  # log_prob minus the row's best
    "has_log_prob_row",  # 1 when the user has a live log-prob row
    "log_prob_row_staleness",  # log1p(interactions since that row was compiled)
)
# the columns an agent row sets; a ranker trained without rows must see them as "no row"
ROW_FEATURES: tuple[str, ...] = ("in_agent_row", "agent_row_position", "log_prob", "log_prob_gap",
                                 "has_log_prob_row", "log_prob_row_staleness")
_ROW_COLS = [FEATURE_NAMES.index(f) for f in ROW_FEATURES]
RECENT = 5  # items for recent_similarity
GENRE_WINDOW = 20  # items for genre_affinity
OBJECTIVES: tuple[str, ...] = ("relevance", "liked")


class _ServedRow(Protocol):
    """A served agent row (``contracts.rows.AgentRow``): what ``Ranker.rows_read`` filters."""

    @property
    def row(self) -> Any: ...


RowT = TypeVar("RowT", bound=_ServedRow)


class ArtifactsLike(Protocol):
    """What the funnel and the ranker need from trained artifacts (``Artifacts`` has it)."""

    catalog: Catalog
    model_version: str
    item_vectors: np.ndarray  # (N+1, d) float32, row 0 = padding
    popularity: np.ndarray  # (N+1,) training counts

    def encode(self, histories: list[Sequence[int]], actions: Any = None, ts: Any = None) -> np.ndarray: ...


@dataclass(slots=True)
class FeatureTables:
    """Per-item arrays the features read, computed once per catalog (row 0 = padding)."""

    vectors: np.ndarray  # (N+1, d) float32 (shared with the artifacts, not copied)
    inv_norm: np.ndarray  # (N+1,) float32
    popularity: np.ndarray  # (N+1,) float32 in [0, 1]
    genres: np.ndarray  # (N+1, G) float32 multi-hot
    genre_count: np.ndarray  # (N+1,) float32, at least 1
    age: np.ndarray  # (N+1,) float32
    covisit: CoVisitation | None = None  # the ranker's co-visitation table (None: features are 0)

    @classmethod
    def build(cls, catalog: Catalog, item_vectors: np.ndarray, popularity: np.ndarray,
              covisit: CoVisitation | None = None) -> "FeatureTables":
        n = len(catalog)
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        if vectors.shape[0] != n + 1:
            raise ValueError(f"item_vectors has {vectors.shape[0]} rows, the catalog needs {n + 1}")
        norms = np.linalg.norm(vectors, axis=1)
        inv_norm = np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        pop = np.log1p(np.asarray(popularity, dtype=np.float64)[: n + 1])
        pop = (pop / pop.max() if pop.max() > 0 else pop).astype(np.float32)
        gidx = {g: i for i, g in enumerate(catalog.genres)}
        genres = np.zeros((n + 1, max(1, len(gidx))), dtype=np.float32)
        years = np.full(n + 1, np.nan, dtype=np.float32)
        for it in catalog.items:
            for g in it.genres:
                j = gidx.get(g)
                if j is not None:
                    genres[it.item_id, j] = 1.0
            if it.year is not None:
                years[it.item_id] = it.year
        known = years[~np.isnan(years)]
        if known.size:
            age = np.clip((known.max() - years) / 50.0, 0.0, 2.0)
            age[np.isnan(age)] = float(np.median(np.clip((known.max() - known) / 50.0, 0.0, 2.0)))
        else:
            age = np.zeros(n + 1, dtype=np.float32)
        return cls(
            vectors=vectors,
            inv_norm=inv_norm,
            popularity=pop,
            genres=genres,
            genre_count=np.maximum(genres.sum(1), 1.0).astype(np.float32),
            age=age.astype(np.float32),
            covisit=covisit,
        )


@dataclass(frozen=True, slots=True)
class LogProbRow:
    """An agent row whose scores are next-item log-probabilities (``score_kind="log_prob"``, e.g.
    the ensemble agent's), as the ranker reads it. ``events_since``: the user's interactions
    after the newest one the producing run saw (0 = compiled from the current history)."""

    item_ids: np.ndarray  # (R,) int64
    log_probs: np.ndarray  # (R,) float32
    events_since: int = 0
    floor: float | None = None  # where the agent cut the row (``Row.floor``); None: its lowest score

    def lookup(self, cand: np.ndarray) -> np.ndarray:
        """(C,) log-probability of each candidate; items not in the row get the row's floor
        (default its minimum) minus one: they ranked below everything the row kept."""
        order = np.argsort(self.item_ids, kind="stable")
        ids, lp = self.item_ids[order], self.log_probs[order]
        lowest = self.floor if self.floor is not None else (float(lp.min()) if lp.shape[0] else None)
        fill = 0.0 if lowest is None else lowest - 1.0
        if not ids.shape[0]:
            return np.full(cand.shape[0], fill, dtype=np.float32)
        idx = np.minimum(np.searchsorted(ids, cand), ids.shape[0] - 1)
        return np.where(ids[idx] == cand, lp[idx], fill).astype(np.float32)


def without_rows(feats: np.ndarray) -> np.ndarray:
    """A copy of ``feats`` (..., F) as :func:`candidate_features` computes them for a user with
    no agent row (the row columns at their no-row value, 0)."""
    out = np.array(feats, dtype=np.float32, copy=True)
    out[..., _ROW_COLS] = 0.0
    return out


def candidate_features(
    t: FeatureTables,
    hist_items: np.ndarray,
    cand: np.ndarray,
    retrieval: np.ndarray,
    row_position: np.ndarray,
    log_prob_row: LogProbRow | None = None,
) -> np.ndarray:
    """(C, F) float32 features of candidates ``cand`` (C,) for a user with history
    ``hist_items`` (L,) (newest last; may be empty). ``retrieval`` (C,) is the inner product
    with the user vector; ``row_position`` (C,) is the 0-based position in an agent row, -1 when
    no agent row proposed the candidate; ``log_prob_row``: the user's freshest log-prob row."""
    c = cand.shape[0]
    out = np.empty((c, len(FEATURE_NAMES)), dtype=np.float32)
    out[:, 0] = retrieval
    out[:, 1] = retrieval - (retrieval.max() if c else 0.0)
    order = np.argsort(-retrieval, kind="stable")
    rank = np.empty(c, dtype=np.float32)
    rank[order] = np.arange(c, dtype=np.float32)
    out[:, 2] = np.log1p(rank) / np.log1p(max(c, 1))
    out[:, 3] = t.popularity[cand]
    if hist_items.shape[0]:
        recent_g = t.genres[hist_items[-GENRE_WINDOW:]].mean(0)  # (G,)
        out[:, 4] = (t.genres[cand] @ recent_g) / t.genre_count[cand]
        recent = hist_items[-RECENT:]
        cv = t.vectors[cand] * t.inv_norm[cand, None]  # (C, d)
        hv = t.vectors[recent] * t.inv_norm[recent, None]  # (R, d)
        sims = cv @ hv.T  # (C, R)
        out[:, 5] = sims.max(1)
        out[:, 6] = sims[:, -1]
    else:
        out[:, 4:7] = 0.0
    out[:, 7] = t.age[cand]
    in_row = row_position >= 0
    out[:, 8] = in_row
    out[:, 9] = np.where(in_row, 1.0 / (1.0 + np.maximum(row_position, 0)), 0.0)
    out[:, 10] = np.log1p(hist_items.shape[0]) / np.log1p(200)
    if t.covisit is not None and hist_items.shape[0]:
        recent = hist_items[-RECENT:]
        co = t.covisit.scores(recent, cand)  # (R, C), oldest first
        decay = 0.5 ** np.arange(recent.shape[0] - 1, -1, -1, dtype=np.float32)  # newest weighs 1
        out[:, 11] = np.log1p(100.0 * (decay @ co))
        out[:, 12] = np.log1p(100.0 * co[-1])
    else:
        out[:, 11:13] = 0.0
    if log_prob_row is not None and log_prob_row.item_ids.shape[0]:
        lp = log_prob_row.lookup(cand)
        out[:, 13] = lp
        out[:, 14] = lp - float(log_prob_row.log_probs.max())
        out[:, 15] = 1.0
        out[:, 16] = np.log1p(max(0, log_prob_row.events_since))
    else:
        out[:, 13:17] = 0.0
    return out


class _Tower(nn.Module):
    """A shared MLP trunk and one linear head per objective."""

    def __init__(self, n_features: int, hidden: int, n_objectives: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.heads = nn.Linear(hidden, n_objectives)  # one column per objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


class MultiTaskRanker(nn.Module):
    """``bags`` towers (trunk + one head per objective): features in, averaged logits out."""

    def __init__(self, n_features: int, hidden: int, objectives: Sequence[str], bags: int = 1) -> None:
        super().__init__()
        if bags < 1:
            raise ValueError(f"bags must be >= 1, got {bags}")
        self.objectives = tuple(objectives)
        self.towers = nn.ModuleList(_Tower(n_features, hidden, len(self.objectives)) for _ in range(bags))
        self._stacked: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def of(cls, models: Sequence["MultiTaskRanker"]) -> "MultiTaskRanker":
        """One ranker averaging the towers of ``models`` (same features, width and objectives)."""
        first = models[0]
        tower = first.towers[0]
        out = cls(tower.trunk[0].in_features, tower.trunk[0].out_features, first.objectives, bags=1)
        out.towers = nn.ModuleList(t for m in models for t in m.towers)
        out._stacked = None
        return out

    @property
    def bags(self) -> int:
        return len(self.towers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (..., O) logits, the towers' mean."""
        if len(self.towers) == 1:
            return self.towers[0](x)
        if self.training or torch.is_grad_enabled():
            return torch.stack([t(x) for t in self.towers]).mean(0)
        return self._fused(x)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference with every tower at once: one matmul into all first layers, then batched
        ones (a loop over five towers costs about 7x one tower; this about 2x)."""
        if self._stacked is None:
            first = [t.trunk[0] for t in self.towers]
            second = [t.trunk[2] for t in self.towers]
            self._stacked = (
                torch.cat([lin.weight.T for lin in first], 1).contiguous(),  # (F, B*H)
                torch.cat([lin.bias for lin in first]),  # (B*H,)
                torch.stack([lin.weight.T for lin in second]).contiguous(),  # (B, H, H)
                torch.stack([lin.bias for lin in second])[:, None, :],  # (B, 1, H)
                torch.stack([t.heads.weight.T for t in self.towers]).contiguous(),  # (B, H, O)
                torch.stack([t.heads.bias for t in self.towers])[:, None, :],  # (B, 1, O)
            )
        w1, b1, w2, b2, w3, b3 = self._stacked
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        h = torch.relu(torch.addmm(b1, flat, w1)).view(flat.shape[0], len(self.towers), -1).transpose(0, 1)
        h = torch.relu(torch.baddbmm(b2, h, w2))  # (B, N, H)
        return torch.baddbmm(b3, h, w3).mean(0).reshape(*lead, -1)

    def train(self, mode: bool = True) -> "MultiTaskRanker":
        self._stacked = None  # weights may change: the fused copy is rebuilt on the next inference
        return super().train(mode)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        """Also reads the one-tower files of rankers saved before towers existed."""
        if any(k.startswith(("trunk.", "heads.")) for k in state):
            state = {f"towers.0.{k}": v for k, v in state.items()}
        self._stacked = None
        return super().load_state_dict(state, strict=strict, assign=assign)


@dataclass
class RankerConfig:
    """Everything needed to rebuild and apply a trained ranker; saved as ``ranker.json``."""

    features: tuple[str, ...] = FEATURE_NAMES
    objectives: tuple[str, ...] = OBJECTIVES
    hidden: int = 64
    bags: int = 1  # towers averaged (see the module docstring)
    weights: dict[str, float] = field(default_factory=lambda: {"relevance": 1.0})
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    model_version: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    # the ranker this one corrects (its directory, relative to this one's), or None
    residual_of: str | None = None
    # the agent rows (by row id) this ranker reads: their items join its candidates and its row
    # features; other rows are served as rows of their own only (in the agent's order). None:
    # every row, including row ids that appear after training
    reads_rows: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features)
        d["objectives"] = list(self.objectives)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankerConfig":
        return cls(
            features=tuple(d["features"]),
            objectives=tuple(d["objectives"]),
            hidden=int(d["hidden"]),
            bags=int(d.get("bags", 1)),
            weights={str(k): float(v) for k, v in d["weights"].items()},
            mean=[float(x) for x in d["mean"]],
            std=[float(x) for x in d["std"]],
            model_version=str(d.get("model_version", "")),
            report=dict(d.get("report", {})),
            residual_of=d.get("residual_of"),
            reads_rows=None if d.get("reads_rows") is None else [str(r) for r in d["reads_rows"]],
        )


class Ranker:
    """A trained :class:`MultiTaskRanker` with its standardization and objective weights; with a
    ``base``, a residual ranker: the base's serving score plus this model's relevance logit."""

    def __init__(self, model: MultiTaskRanker, config: RankerConfig, weights: dict[str, float] | None = None,
                 covisit: CoVisitation | None = None, base: "Ranker | None" = None) -> None:
        unknown = [f for f in config.features if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"ranker was trained on features {unknown} that this code does not compute")
        if (config.residual_of is not None) != (base is not None):
            raise ValueError("a residual ranker needs its base ranker, and only a residual ranker takes one")
        if base is not None and tuple(config.objectives) != ("relevance",):
            raise ValueError(f"a residual ranker corrects relevance only, not {list(config.objectives)}")
        self.model = model.eval()
        self.config = config
        self.covisit = covisit
        self.base = base
        # a ranker trained on fewer features (an older version) reads just its own columns
        self._cols = None if tuple(config.features) == FEATURE_NAMES else [FEATURE_NAMES.index(f) for f in config.features]
        self._mean = np.asarray(config.mean, dtype=np.float32)
        self._inv_std = (1.0 / np.maximum(np.asarray(config.std, dtype=np.float32), 1e-6)).astype(np.float32)
        self.set_weights(weights or (base.weights if base is not None else config.weights))

    def set_weights(self, weights: dict[str, float]) -> None:
        """Objective weights of the serving score (unknown names are an error, missing are 0). A
        residual ranker's objectives are its base's: the weights go there, the correction always
        adds to the relevance logit with weight 1."""
        if self.base is not None:
            self.base.set_weights(weights)
            self.weights = dict(self.base.weights)
            self._w = torch.ones(1, dtype=torch.float32)
            return
        unknown = set(weights) - set(self.config.objectives)
        if unknown:
            raise ValueError(f"unknown ranker objectives {sorted(unknown)}; known: {list(self.config.objectives)}")
        self.weights = {o: float(weights.get(o, 0.0)) for o in self.config.objectives}
        self._w = torch.tensor([self.weights[o] for o in self.config.objectives], dtype=torch.float32)

    def rows_read(self, rows: Sequence[RowT]) -> list[RowT]:
        """The rows of ``rows`` (anything with a ``row.row_id``, e.g. ``AgentRow``) this ranker
        reads, in their order (see ``RankerConfig.reads_rows``)."""
        wanted = self.config.reads_rows
        return list(rows) if wanted is None else [r for r in rows if r.row.row_id in wanted]

    def standardize(self, feats: np.ndarray) -> np.ndarray:
        """Raw features (all of ``FEATURE_NAMES``) -> this ranker's standardized inputs."""
        if self._cols is not None:
            feats = feats[..., self._cols]
        return (feats - self._mean) * self._inv_std

    def logits(self, feats: np.ndarray) -> np.ndarray:
        """(C, F) raw features -> (C, O) this model's own logits (a residual's: its correction)."""
        with torch.inference_mode():
            return self.model(torch.from_numpy(self.standardize(feats))).numpy()

    def score(self, feats: np.ndarray) -> np.ndarray:
        """(..., F) raw features -> (...,) serving score (weighted sum of objective logits, plus
        the base's score for a residual ranker)."""
        with torch.inference_mode():
            z = self.model(torch.from_numpy(self.standardize(feats)))  # (..., O)
            own = (z @ self._w).numpy()
        # the base learned without rows (a row column it never saw vary would be read
        # thousands of standard deviations out): it scores the candidates as if there were none
        return own if self.base is None else self.base.score(without_rows(feats)) + own

    def save(self, directory: str | Path) -> None:
        """This ranker's files (a residual's base stays where ``residual_of`` points)."""
        directory = Path(directory)
        torch.save(self.model.state_dict(), directory / RANKER_WEIGHTS_FILE)
        if self.covisit is not None:
            self.covisit.save(directory)
        (directory / RANKER_CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, weights: dict[str, float] | None = None) -> "Ranker":
        directory = Path(directory)
        config = RankerConfig.from_dict(json.loads((directory / RANKER_CONFIG_FILE).read_text()))
        model = MultiTaskRanker(len(config.features), config.hidden, config.objectives, config.bags)
        model.load_state_dict(torch.load(directory / RANKER_WEIGHTS_FILE, map_location="cpu", weights_only=True))
        base = None
        if config.residual_of is not None:
            if not cls.exists(directory / config.residual_of):
                raise UserInputError(f"{directory}: a residual of {directory / config.residual_of}, which holds "
                                        "no ranker")
            base = cls.load(directory / config.residual_of, weights)
        return cls(model, config, weights, CoVisitation.load(directory), base=base)

    @staticmethod
    def exists(directory: str | Path) -> bool:
        directory = Path(directory)
        return (directory / RANKER_CONFIG_FILE).is_file() and (directory / RANKER_WEIGHTS_FILE).is_file()
