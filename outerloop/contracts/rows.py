"""Agent-compiled rows ("candidate sets"), the one format of ``Keys.rows(user)``, and its one
codec: :class:`Row` is written by a committed outer-loop run (``Row.model_dump_json``) and read
back by :func:`decode_row` only, by the agents and the inner loop alike.

A row is JSON ``{row_id, title, reason, items: [[item_id, score], ...], produced_by, run_id,
model_version, created_at, expires_at, ordered?, score_kind?, history_ts?}`` (the fields of
:class:`Row`). Times (``created_at``, ``expires_at``, ``history_ts``) are read as epoch
milliseconds, epoch seconds (numbers below 10^11) or ISO-8601 strings (:func:`to_epoch_ms`), and
held as milliseconds.

What differs between the readers is not the decoding but what each does with a row that fails
to decode (:class:`RowDecodeError`) and where expiry counts:

- the agents (:func:`stored_rows`) leave a failed row out: it is theirs to rebuild, and a row
  that expired is still theirs to see (the planner's sweep refreshes it);
- the inner loop (:func:`live_rows`) must never fail because of a row: a row that fails, has
  expired, or names no item the catalog knows is skipped and counted, and the plain funnel
  still answers.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from outerloop.contracts.events import ACTION_ID
from outerloop.errors import OuterloopError

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


ScoreKind = Literal["relative", "log_prob"]


class RowBranches(BaseModel):
    """What a log-prob row would hold had the user's next interaction been each of ``after``:
    the outer loop's answer to staleness. A row is compiled from the history as it was; when
    the user's first interaction since is one of ``after`` (the agent guesses the likeliest),
    the inner loop serves that branch, a row one interaction fresher, and otherwise the row.

    The branches travel packed (base64 of little-endian arrays, ``width`` per branch, item 0
    = padding): a hundred branches of a hundred items as JSON pairs cost milliseconds to
    validate on every request; packed they decode in microseconds, and only when used.
    """

    model_config = ConfigDict(extra="forbid")

    after: list[int] = Field(description="the assumed next item of each branch")
    width: int = Field(ge=1, le=10_000, description="items per branch (padded with item 0)")
    items: str = Field(description="base64 of int32 (len(after), width): each branch's items, best first")
    log_probs: str = Field(description="base64 of float16 (len(after), width): their log-probabilities")
    floor: list[float | None] = Field(description="per branch, the log-probability where a row of the "
                                      "unbranched row's length would have ended (None: unknown)")

    @model_validator(mode="after")
    def _shapes(self) -> "RowBranches":
        n = len(self.after) * self.width
        if len(self.floor) != len(self.after):
            raise ValueError(f"floor has {len(self.floor)} values for {len(self.after)} branches")
        for name, size in (("items", 4), ("log_probs", 2)):  # lengths only: every request decodes rows
            want = 4 * -(-n * size // 3)
            if len(getattr(self, name)) != want:
                raise ValueError(f"{name} is {len(getattr(self, name))} base64 characters, not the {want} of "
                                 f"{len(self.after)} x {self.width} values of {size} bytes")
        return self

    @classmethod
    def pack(cls, branches: Sequence[tuple[int, Sequence[tuple[int, float]], float | None]]) -> "RowBranches":
        """From ``(after, [(item, log_prob), ...], floor)`` per branch."""
        width = max([1, *(len(items) for _, items, _ in branches)])
        ids = np.zeros((len(branches), width), dtype="<i4")
        lps = np.full((len(branches), width), -np.inf, dtype="<f2")
        for r, (_, items, _) in enumerate(branches):
            if items:
                ids[r, : len(items)] = [i for i, _ in items]
                lps[r, : len(items)] = [s for _, s in items]
        return cls(after=[int(a) for a, _, _ in branches], width=width,
                   items=base64.b64encode(ids.tobytes()).decode(), log_probs=base64.b64encode(lps.tobytes()).decode(),
                   floor=[None if f is None else float(f) for _, _, f in branches])

    def only(self, after: int | None) -> "RowBranches | None":
        """These branches cut to the one for ``after`` (``None`` when there is none): what a
        reader that already knows the user's next item needs to keep."""
        got = None if after is None else self.branch(after)
        return None if got is None else RowBranches.pack(
            [(int(after), list(zip(got[0].tolist(), got[1].tolist())), got[2])])  # type: ignore[arg-type]

    def branch(self, after: int) -> tuple[np.ndarray, np.ndarray, float | None] | None:
        """The items (int64), log-probabilities (float32) and floor of the branch for ``after``;
        ``None`` when no branch assumed it (or the packing does not decode: the row is served as
        it is)."""
        try:
            r = self.after.index(int(after))
            ids = np.frombuffer(base64.b64decode(self.items, validate=True), dtype="<i4").reshape(-1, self.width)[r]
            lps = np.frombuffer(base64.b64decode(self.log_probs, validate=True), dtype="<f2").reshape(-1, self.width)[r]
        except (ValueError, binascii.Error):  # not a branch, or not base64 of its length: no branch
            return None
        keep = ids > 0
        return ids[keep].astype(np.int64), lps[keep].astype(np.float32), self.floor[r]


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
    floor: float | None = Field(default=None, description="log_prob rows: the log-probability below which the "
                                "agent cut the row; an item not in it counts as below that (default: the "
                                "row's lowest score)")
    branches: RowBranches | None = Field(default=None, description="log_prob rows: the row had the next "
                                         "interaction been each of several items (see RowBranches)")

    def item_ids(self) -> list[int]:
        return [i for i, _ in self.items]

    def is_fresh(self, at_ms: int) -> bool:
        return self.expires_at > at_ms

    @property
    def log_prob(self) -> bool:
        return self.score_kind == "log_prob"

    def continued(self, next_item: int) -> "Row | None":
        """This row as its branch for ``next_item`` has it (its items, their log-probabilities
        and its floor; the times stay the row's), or ``None`` when it has no such branch."""
        got = None if self.branches is None else self.branches.branch(next_item)
        if got is None:
            return None
        ids, lps, floor = got
        return self.model_copy(update={"items": list(zip(ids.tolist(), lps.tolist())), "floor": floor,
                                       "branches": None})


class RowDecodeError(OuterloopError):
    """Stored bytes that are not a :class:`Row` (not JSON, a missing or unknown field, a bad
    value). Each reader decides what that means: see the module docstring."""


_TIMES = ("created_at", "expires_at", "history_ts")


def decode_row(raw: bytes | str) -> Row:
    """The one decoder of a stored row: the JSON, its times in ms (:func:`to_epoch_ms`), the
    :class:`Row`. Expiry is not checked here: whether an expired row counts is the reader's
    business (the agents rebuild it, the inner loop skips it). Raises :class:`RowDecodeError`."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RowDecodeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RowDecodeError(f"not a JSON object: {type(doc).__name__}")
    for name in _TIMES:
        ms = to_epoch_ms(doc.get(name))
        if ms is not None:  # unreadable times stay as they are and fail validation below
            doc[name] = ms
    try:
        return Row.model_validate(doc)
    except ValidationError as exc:
        raise RowDecodeError(str(exc)) from None


def stored_rows(raw: Mapping[str, bytes] | Mapping[bytes, bytes]) -> dict[str, Row]:
    """The agents' read of a user's rows (``HGETALL Keys.rows(user)``): every row that decodes,
    expired ones included, keyed by hash field. A row that does not decode is left out, so the
    agent that owns it rebuilds it as if it were missing."""
    out: dict[str, Row] = {}
    for row_id, blob in raw.items():
        name = row_id.decode() if isinstance(row_id, bytes) else row_id
        try:
            out[name] = decode_row(blob)
        except RowDecodeError:
            continue
    return out


@dataclass(frozen=True, slots=True)
class AgentRow:
    """A decoded :class:`Row` as the inner loop serves it: the row, and its items the catalog
    knows (dense ids ``1..n_items``) with the agent's scores, in the agent's order, as arrays
    (what the funnel's and the ranker's vector operations take)."""

    row: Row
    item_ids: np.ndarray  # (R,) int64
    scores: np.ndarray  # (R,) float32
    continued: bool = False  # the row's branch for the user's next interaction: one interaction fresher

    @classmethod
    def of(cls, row: Row, n_items: int) -> "AgentRow | None":
        """The row's known items, or ``None`` when it names none (nothing to serve)."""
        known = [(i, s) for i, s in row.items if 1 <= i <= n_items]
        if not known:
            return None
        return cls(row, np.fromiter((i for i, _ in known), np.int64, len(known)),
                   np.fromiter((s for _, s in known), np.float32, len(known)))


def continue_rows(rows: Sequence[AgentRow], items: np.ndarray, ts: np.ndarray, actions: np.ndarray | None,
                  n_items: int) -> tuple[list[AgentRow], int]:
    """``rows`` with each row that has branches (:class:`RowBranches`) and that the user has
    moved past replaced by its branch for the first interaction since (``AgentRow.continued``),
    when it has one and that interaction took the item (not a skip); and how many were
    replaced. ``items``, ``ts``, ``actions``: the user's history in the order it was applied,
    newest last (times need not be sorted)."""
    out: list[AgentRow] = []
    hits = 0
    for r in rows:
        served = None
        if r.row.branches is not None and r.row.history_ts is not None and ts.shape[0]:
            # the first event after the row's history; at 0 the row is older than the history read
            newer = np.flatnonzero(ts > r.row.history_ts)
            j = int(newer[0]) if newer.shape[0] else 0
            if 1 <= j < items.shape[0]:
                served = continue_row(r, int(items[j]), None if actions is None else int(actions[j]), n_items)
        out.append(served or r)
        hits += served is not None
    return out, hits


def continue_row(row: AgentRow, next_item: int, next_action: int | None, n_items: int) -> AgentRow | None:
    """``row``'s branch for a next interaction with ``next_item``, or ``None`` when it has
    none, or the interaction was a skip (a branch assumes the item was taken)."""
    if next_action == ACTION_ID["skip"]:
        return None
    cont = row.row.continued(next_item)
    served = None if cont is None else AgentRow.of(cont, n_items)
    return None if served is None else dataclasses.replace(served, continued=True)


def live_rows(raw_rows: Mapping[str, bytes], *, now_ms: int, n_items: int,
              limit: int) -> tuple[list[AgentRow], int]:
    """The inner loop's read of a user's rows: those that decode, have not expired at
    ``now_ms`` and name an item the catalog knows, in a stable order (newest first, then row
    id), at most ``limit``; and how many were skipped."""
    rows: list[AgentRow] = []
    skipped = 0
    for raw in raw_rows.values():
        try:
            row = decode_row(raw)
        except RowDecodeError:
            skipped += 1
            continue
        served = AgentRow.of(row, n_items) if row.is_fresh(now_ms) else None
        if served is None:
            skipped += 1
        else:
            rows.append(served)
    rows.sort(key=lambda r: (-r.row.created_at, r.row.row_id))
    return rows[:limit], skipped


@dataclass(frozen=True, slots=True)
class CompiledRows:
    """One user's live rows as the outer loop compiled them, and how many interactions the user
    made after the history those rows were compiled from (what the funnel computes from
    ``history_ts`` when serving). Replays hand these to the ranker's training."""

    rows: list[AgentRow]
    events_since: int = 0


# what a ranker trains on: each user's rows as compiled at one or more staleness settings (one
# training example per entry, all on the user's side of every held-out split)
RowsByUser = Mapping[str, Sequence[CompiledRows]]
