"""Budget compliance of a set of agent runs, as a replay or a report shows it.

:class:`~outerloop.budgets.accounting.Accounting` already totals outcomes and overruns; this
adds what a reader of a report asks next: how long runs took against their budgets (p50/p99 of
``elapsed / budget``), the kill rate, and the raw overruns for a histogram. It reads only
:class:`~outerloop.contracts.run_record.RunRecord` fields, so it works on records from a replay, a
bench's JSON (``RunRecord.to_dict`` rows) or the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from outerloop.budgets.accounting import Accounting, percentile
from outerloop.contracts.run_record import RunRecord


def _as_record(r: RunRecord | Mapping[str, Any]) -> RunRecord:
    if isinstance(r, RunRecord):
        return r
    fields = {k: v for k, v in r.items() if k in RunRecord.__dataclass_fields__ and k != "value"}
    return RunRecord(**fields)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def budget_compliance(records: Iterable[RunRecord | Mapping[str, Any]], *, late_writes_refused: int = 0,
                      keep_samples: int = 5000) -> dict[str, Any]:
    """Runs, kills, overrun p50/p99 (killed runs), retries (counted per cycle and plan step from
    what ran: 0 unless something re-ran a step), and per agent
    the elapsed-to-budget ratio. ``overrun_samples_ms`` / ``elapsed_samples_ms`` (the first
    ``keep_samples``) feed the report's histograms."""
    recs = [_as_record(r) for r in records]
    acc = Accounting(records=list(recs), late_writes_refused=late_writes_refused)
    out = acc.summary(by="agent")
    out["kill_rate"] = round(out["killed"] / out["runs"], 4) if out["runs"] else 0.0
    for agent, group in out["by_agent"].items():
        mine = [r for r in recs if r.agent == agent]
        ratios = [r.elapsed_ms / r.budget_ms for r in mine if r.budget_ms > 0]
        group["budget_ms"] = sorted({r.budget_ms for r in mine})
        group["elapsed_p50_ms"] = _round(percentile([r.elapsed_ms for r in mine], 50))
        group["elapsed_p99_ms"] = _round(percentile([r.elapsed_ms for r in mine], 99))
        group["elapsed_over_budget_p50"] = _round(percentile(ratios, 50))
        group["elapsed_over_budget_p99"] = _round(percentile(ratios, 99))
    out["overrun_samples_ms"] = [round(r.overrun_ms, 3) for r in recs if r.outcome == "killed"][:keep_samples]
    out["elapsed_samples_ms"] = {a: [round(r.elapsed_ms, 3) for r in recs if r.agent == a][:keep_samples]
                                 for a in out["by_agent"]}
    return out
