"""Agent-compiled rows ("candidate sets"), the one format of ``Keys.rows(user)``: :class:`Row`
writes it and reads it back for the agents; :func:`parse_row` reads it for the inner loop.

A row is JSON ``{row_id, title, reason, items: [[item_id, score], ...], produced_by, run_id,
model_version, created_at, expires_at, ordered?, score_kind?, history_ts?}`` (the fields of
:class:`Row`), written only by a committed outer-loop run. The agents read rows back strictly
(:func:`stored_rows`: a row that no longer validates is theirs to rebuild). The inner
loop is a reader that must never fail because of a row: a row that does not parse, has expired,
or names no known item is skipped (and counted), and the plain funnel still answers.

Times (``created_at``, ``expires_at``) may be epoch milliseconds, epoch seconds (numbers below
10^11 are read as seconds) or ISO-8601 strings; a missing ``expires_at`` means "no expiry".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

_SECONDS_BELOW = 10**11  # 10^11 s is the year 5138; 10^11 ms is 1973


def to_epoch_ms(value: Any) -> int | None:
    """Epoch ms from ms, seconds or an ISO-8601 string; ``None`` when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value * 1000) if abs(value) < _SECONDS_BELOW else int(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    return None


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One live agent row: items (dense ids) with the agent's scores, in the agent's order."""

    row_id: str
    title: str
    reason: str
    item_ids: np.ndarray  # (R,) int64
    scores: np.ndarray  # (R,) float32
    produced_by: str
    run_id: str | None
    model_version: str | None
    created_at: int | None
    expires_at: int | None
    ordered: bool = False  # serve in the agent's order (no re-ranking)
    score_kind: str = "relative"  # "log_prob": scores are next-item log-probabilities the ranker reads
    history_ts: int | None = None  # newest event the producing run saw (staleness = events since)

    @property
    def log_prob(self) -> bool:
        return self.score_kind == "log_prob"


def parse_row(row_id: str, raw: bytes, *, now_ms: int, n_items: int) -> AgentRow | None:
    """The row, or ``None`` when it is malformed, expired or empty after dropping unknown items."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    expires_at = to_epoch_ms(doc.get("expires_at"))
    if expires_at is not None and expires_at <= now_ms:
        return None
    ids: list[int] = []
    scores: list[float] = []
    items = doc.get("items")
    if not isinstance(items, list):
        return None
    for entry in items:
        if isinstance(entry, (list, tuple)) and len(entry) >= 1:
            item, score = entry[0], (entry[1] if len(entry) > 1 else 0.0)
        elif isinstance(entry, dict):
            item, score = entry.get("item_id"), entry.get("score", 0.0)
        else:
            continue
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= n_items:
            continue
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            score = 0.0
        ids.append(item)
        scores.append(float(score))
    if not ids:
        return None

    def _s(key: str, default: str = "") -> str:
        v = doc.get(key)
        return v if isinstance(v, str) else default

    return AgentRow(
        row_id=_s("row_id", row_id) or row_id,
        title=_s("title", row_id) or row_id,
        reason=_s("reason"),
        item_ids=np.asarray(ids, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32),
        produced_by=_s("produced_by", "unknown"),
        run_id=doc.get("run_id") if isinstance(doc.get("run_id"), str) else None,
        model_version=doc.get("model_version") if isinstance(doc.get("model_version"), str) else None,
        created_at=to_epoch_ms(doc.get("created_at")),
        expires_at=expires_at,
        ordered=doc.get("ordered") is True,
        score_kind="log_prob" if doc.get("score_kind") == "log_prob" else "relative",
        history_ts=to_epoch_ms(doc.get("history_ts")),
    )


def live_rows(raw_rows: dict[str, bytes], *, now_ms: int, n_items: int, limit: int) -> tuple[list[AgentRow], int]:
    """Live rows in a stable order (newest first, then row id) and how many were skipped."""
    rows: list[AgentRow] = []
    skipped = 0
    for row_id, raw in raw_rows.items():
        row = parse_row(row_id, raw, now_ms=now_ms, n_items=n_items)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    rows.sort(key=lambda r: (-(r.created_at or 0), r.row_id))
    return rows[:limit], skipped


@dataclass(frozen=True, slots=True)
class CompiledRows:
    """One user's live rows as the outer loop compiled them, and how many interactions the user
    made after the history those rows were compiled from (what the funnel computes from
    ``history_ts`` when serving). Replays hand these to the ranker's training."""

    rows: list[AgentRow]
    events_since: int = 0


ScoreKind = Literal["relative", "log_prob"]


class Row(BaseModel):
    """One candidate set, as stored in ``Keys.rows(user)`` (field ``row_id``, value this JSON).

    Times are ms since the epoch; a row whose ``expires_at`` has passed is ignored by the
    inner loop, which falls back to the plain funnel.
    """

    model_config = ConfigDict(extra="forbid")

    row_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    title: str
    reason: str
    items: list[tuple[int, float]]
    produced_by: str
    run_id: str
    model_version: str
    created_at: int
    expires_at: int
    ordered: bool = Field(default=False, description="the agent's order is the row's order: the inner "
                          "loop drops seen items but does not re-rank (e.g. continue watching)")
    score_kind: ScoreKind = Field(default="relative", description="'relative': scores only order this row; "
                                  "'log_prob': log-probability that the item is the user's next one, comparable "
                                  "across rows and users, which the inner loop's ranker reads as a feature")
    history_ts: int | None = Field(default=None, description="event time (ms) of the newest interaction the run "
                                   "saw; the inner loop counts the user's interactions since (the row's staleness)")

    def item_ids(self) -> list[int]:
        return [i for i, _ in self.items]

    def is_fresh(self, at_ms: int) -> bool:
        return self.expires_at > at_ms


def stored_rows(raw: dict[str, bytes] | dict[bytes, bytes]) -> dict[str, Row]:
    """Stored rows that still validate as :class:`Row` (others are someone else's problem)."""
    out: dict[str, Row] = {}
    for row_id, blob in raw.items():
        name = row_id.decode() if isinstance(row_id, bytes) else row_id
        try:
            out[name] = Row.model_validate_json(blob)
        except ValidationError:
            continue
    return out
