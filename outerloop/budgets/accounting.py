"""Totals over many run records: what benches print and what metrics/reports will export.

Overrun percentiles are over killed runs only (a run that ended in time has no overrun).
Late writes are counted by whoever attempted them (benches, the scheduler), because a refused
write never reaches a run record.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from outerloop.contracts.run_record import RunRecord


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(slots=True)
class Accounting:
    """Collects run records and late-write attempts; :meth:`summary` turns them into totals."""

    records: list[RunRecord] = field(default_factory=list)
    late_writes_refused: int = 0
    late_writes_committed: int = 0

    def add(self, record: RunRecord) -> None:
        self.records.append(record)

    def extend(self, records: Iterable[RunRecord]) -> None:
        self.records.extend(records)

    def note_late_write(self, *, committed: bool) -> None:
        """Count a write attempted with the token of a run that had already ended."""
        if committed:
            self.late_writes_committed += 1
        else:
            self.late_writes_refused += 1

    def summary(self, *, by: str | None = "agent") -> dict[str, Any]:
        """Totals (times in ms, rounded to 0.01); ``by`` adds a breakdown by a record field."""
        out = _totals(self.records)
        out["late_writes_refused"] = self.late_writes_refused
        out["late_writes_committed"] = self.late_writes_committed
        if by is not None:
            groups: dict[str, list[RunRecord]] = defaultdict(list)
            for r in self.records:
                groups[str(getattr(r, by))].append(r)
            out[f"by_{by}"] = {k: _totals(v) for k, v in sorted(groups.items())}
        return out


def _totals(records: Sequence[RunRecord]) -> dict[str, Any]:
    outcomes = Counter(r.outcome for r in records)
    overruns = [r.overrun_ms for r in records if r.outcome == "killed"]

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "runs": len(records),
        "ok": outcomes["ok"],
        "killed": outcomes["killed"],
        "errors": outcomes["error"],
        "over_tool_budget": outcomes["over_tool_budget"],
        "over_token_budget": outcomes["over_token_budget"],
        "not_stopped": sum(1 for r in records if not r.stopped),
        "retries": sum(r.retries for r in records),
        "overrun_p50_ms": ms(percentile(overruns, 50)),
        "overrun_p99_ms": ms(percentile(overruns, 99)),
        "overrun_max_ms": ms(max(overruns) if overruns else None),
        "writes_committed": sum(r.writes_committed for r in records),
    }
