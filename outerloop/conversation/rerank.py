"""Reflect and rerank: order the filtered candidates by fit, check each pick, and say why.

The collaborative score decides most of the order (standardised over the candidate pool);
bonuses reward what the conversation asked for softly: tags that fit the tone, the tone's
usual genres, the anchors' genres, a language model's suggestions. The selection is greedy
with a small penalty for repeating a genre mix and at most one entry per series (the earliest
eligible episode the user has not seen stands for it).

Before a pick is returned it is checked again from its own metadata
(:func:`outerloop.conversation.filters.violations`); the explanation is written from the same
metadata and from the user's nearest history item ("comedy, 86 min, close to X, which you
finished last week").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import Constraints
from outerloop.conversation.filters import violations
from outerloop.conversation.lexicon import TONES
from outerloop.conversation.response import Pick
from outerloop.conversation.retrieval import Candidates, SearchableArtifacts, UserHistory
from outerloop.data.schema import ACTION_ID, Item

TAG_BONUS = 0.4  # per matching preferred tag, at most two counted
SOFT_GENRE_BONUS = 0.3
ANCHOR_GENRE_BONUS = 0.6  # times the Jaccard overlap with the anchors' genres
SUGGESTION_BONUS = 0.5
REPEAT_PENALTY = 0.15  # per earlier pick with the same genre mix
EXPLAIN_HISTORY = 50  # how many recent history items an explanation may point at

_VERBS = {ACTION_ID["finish"]: "finished", ACTION_ID["play"]: "watched", ACTION_ID["rate"]: "rated",
          ACTION_ID["add_to_list"]: "saved", ACTION_ID["click"]: "looked at"}
_DAY_MS = 86_400_000


@dataclass
class RerankInput:
    candidates: Candidates
    constraints: Constraints
    mask: np.ndarray  # the eligible set (series substitutes must come from it)
    history: UserHistory
    suggestions: frozenset[int] = frozenset()
    now_ms: int | None = None


def _standardise(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return x
    sd = float(x.std())
    return (x - float(x.mean())) / (sd if sd > 1e-9 else 1.0)


def _soft_genres(c: Constraints, facts: CatalogFacts) -> set[str]:
    return {g for t in c.tones if t in TONES for canon in TONES[t].soft_genres for g in facts.genres_for(canon)}


def _first_unseen_episode(facts: CatalogFacts, item: Item, mask: np.ndarray) -> int:
    """The series' earliest eligible episode: a series is entered at its start, not mid-way."""
    best = item
    for other in facts.series_episodes(item.series_id or ""):
        if mask[other.item_id] and (other.season or 0, other.episode or 0) < (best.season or 0, best.episode or 0):
            best = other
    return best.item_id


def rerank(inp: RerankInput, facts: CatalogFacts, artifacts: SearchableArtifacts, k: int) -> tuple[list[Pick], list[str]]:
    """Top ``k`` picks with explanations, and notes on anything the reflection caught."""
    cands, c = inp.candidates, inp.constraints
    if cands.ids.size == 0:
        return [], []
    soft = _soft_genres(c, facts)
    anchor_genres = {g for a in c.anchors if a.item_id for g in facts.item(a.item_id).genres}
    base = _standardise(cands.scores.astype(np.float64))
    fit = np.zeros_like(base)
    for n, item_id in enumerate(cands.ids.tolist()):
        it = facts.item(item_id)
        genres = set(it.genres)
        if c.prefer_tags:
            fit[n] += TAG_BONUS * min(2, len(facts.tag_hits(item_id, c.prefer_tags)))
        if soft & genres:
            fit[n] += SOFT_GENRE_BONUS
        if anchor_genres and genres:
            fit[n] += ANCHOR_GENRE_BONUS * len(anchor_genres & genres) / len(anchor_genres | genres)
        if item_id in inp.suggestions:
            fit[n] += SUGGESTION_BONUS
    score = base + fit

    picks: list[Pick] = []
    notes: list[str] = []
    used_series: set[str] = set()
    used_ids: set[int] = set()
    mixes: dict[tuple[str, ...], int] = {}
    remaining = list(range(cands.ids.size))
    explainer = _Explainer(facts, artifacts, inp.history, c, inp.now_ms)
    while remaining and len(picks) < k:
        adjusted = [score[n] - REPEAT_PENALTY * mixes.get(facts.item(int(cands.ids[n])).genres, 0) for n in remaining]
        n = remaining.pop(int(np.argmax(adjusted)))
        item = facts.item(int(cands.ids[n]))
        if item.series_id is not None:
            if item.series_id in used_series:
                continue
            used_series.add(item.series_id)
            item = facts.item(_first_unseen_episode(facts, item, inp.mask))
        if item.item_id in used_ids:
            continue
        broken = violations(item, c)
        if broken:  # the vectorised filter and the per-item check disagree: never return it
            notes.append(f"dropped {item.title!r} on reflection ({'; '.join(broken)})")
            continue
        used_ids.add(item.item_id)
        mixes[item.genres] = mixes.get(item.genres, 0) + 1
        picks.append(Pick(
            item_id=item.item_id, title=item.title, score=round(float(score[n]), 4), genres=list(item.genres),
            year=item.year, runtime_min=item.runtime_min, kind=item.kind, series_id=item.series_id,
            matched_tags=facts.tag_hits(item.item_id, c.prefer_tags) if c.prefer_tags else [],
            explanation=explainer.explain(item),
        ))
    return picks, notes


class _Explainer:
    """Writes one line per pick from its metadata and its nearest history item or anchor."""

    def __init__(self, facts: CatalogFacts, artifacts: SearchableArtifacts, history: UserHistory, c: Constraints,
                 now_ms: int | None) -> None:
        self.facts = facts
        self.c = c
        self.now_ms = now_ms
        n = facts.n_items
        recent = [(k, i) for k, i in enumerate(history.items) if 1 <= i <= n][-EXPLAIN_HISTORY:]
        self.hist_pos = [k for k, _ in recent]
        self.hist_ids = [i for _, i in recent]
        self.history = history
        self.anchor_ids = [a.item_id for a in c.anchors if a.item_id]
        self.vectors = artifacts.item_vectors  # (N+1, d)
        self.wanted = set(c.include_genres) | set(c.any_genres)

    def explain(self, item: Item) -> str:
        parts = [self._what(item)]
        if item.runtime_min is not None:
            parts.append(f"{item.runtime_min} min")
        if self.c.has_era and item.year is not None:
            parts.append(str(item.year))
        tags = self.facts.tag_hits(item.item_id, self.c.prefer_tags)[:2] if self.c.prefer_tags else []
        if tags:
            parts.append("tagged " + " and ".join(tags))
        parts.append(self._why(item))
        return ", ".join(p for p in parts if p)

    def _what(self, item: Item) -> str:
        shown = [g for g in item.genres if g in self.wanted] or list(item.genres[:2])
        text = " ".join(g.lower() for g in shown) if shown else "title"
        if item.kind == "episode":
            text += " series"
        return text

    def _nearest(self, item_id: int, ids: Sequence[int]) -> tuple[int, float] | None:
        if not ids:
            return None
        rows = np.asarray(self.vectors[list(ids)], dtype=np.float32)  # (H, d)
        me = np.asarray(self.vectors[item_id], dtype=np.float32)  # (d,)
        sims = rows @ me / np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(me), 1e-12)  # (H,)
        j = int(np.argmax(sims))
        return j, float(sims[j])

    def _why(self, item: Item) -> str:
        anchor = self._nearest(item.item_id, self.anchor_ids)
        if anchor is not None:
            return f"like {self.facts.item(self.anchor_ids[anchor[0]]).title}"
        near = self._nearest(item.item_id, self.hist_ids)
        if near is None:
            return "popular with viewers who start from the same request"
        j = near[0]
        title = self.facts.item(self.hist_ids[j]).title
        pos = self.hist_pos[j]
        h = self.history
        verb = _VERBS.get(h.actions[pos], "watched") if h.actions is not None else "watched"
        when = _when(h.ts[pos], self.now_ms) if h.ts is not None and self.now_ms is not None else ""
        return f"close to {title}, which you {verb}{(' ' + when) if when else ''}"


def _when(ts_ms: int, now_ms: int) -> str:
    """ "today", "yesterday", "last week", ... ; empty when the time is unknown or in the future."""
    if ts_ms <= 0 or ts_ms > now_ms + _DAY_MS:
        return ""
    days = (now_ms - ts_ms) // _DAY_MS
    if days < 1:
        return "today"
    if days < 2:
        return "yesterday"
    if days < 7:
        return f"{days} days ago"
    if days < 14:
        return "last week"
    if days < 60:
        return f"{days // 7} weeks ago"
    if days < 365:
        return f"{days // 30} months ago"
    return "over a year ago"
