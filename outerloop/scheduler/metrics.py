"""The daemon's counters and gauges, and the one-line summary it logs.

A plain object so tests can read it and the OpenTelemetry wiring can observe it later
(callbacks over :meth:`DaemonMetrics.snapshot`) without the daemon depending on OTel.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class DaemonMetrics:
    events_applied: int = 0
    events_duplicate: int = 0  # redeliveries of already applied events (no effect)
    events_late: int = 0
    dead_letters: int = 0
    apply_errors: int = 0
    entries_claimed: int = 0  # taken over from idle consumers by XAUTOCLAIM
    sessions_closed: int = 0
    triggers_fired: int = 0
    cycles_started: int = 0
    cycles_by_status: Counter[str] = field(default_factory=Counter)
    agents_killed: int = 0
    cycles_busy_elsewhere: int = 0  # claims refused because another daemon held the user's lock
    locks_lost: int = 0  # renewals that found the lock gone (this daemon stalled past its TTL)
    reconnects: int = 0
    lag: int | None = None  # stream entries the group has not read yet (summed over shards)
    pending: int | None = None  # entries read but not acknowledged (group-wide)
    cycle_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    _last_mark: tuple[float, int] = field(default_factory=lambda: (time.monotonic(), 0))

    # hooks the daemon calls; subclasses may observe them
    def record_applied(self, applied: int, duplicates: int, late: int) -> None:
        self.events_applied += applied
        self.events_duplicate += duplicates
        self.events_late += late

    def record_cycle(self, status: str, duration_ms: float, killed_agents: int) -> None:
        self.cycles_by_status[status] += 1
        self.cycle_ms.append(duration_ms)
        self.agents_killed += killed_agents

    @property
    def kills(self) -> int:
        """Agents killed by their budgets plus cycles the daemon stopped at its timeout."""
        return self.agents_killed + self.cycles_by_status.get("timeout", 0)

    def events_per_s(self) -> float:
        """Applied events per second since the previous call (the summary interval)."""
        now = time.monotonic()
        then, count = self._last_mark
        self._last_mark = (now, self.events_applied)
        return (self.events_applied - count) / max(now - then, 1e-9)

    def snapshot(self) -> dict[str, Any]:
        durations = list(self.cycle_ms)
        return {
            "events_applied": self.events_applied,
            "events_duplicate": self.events_duplicate,
            "events_late": self.events_late,
            "dead_letters": self.dead_letters,
            "apply_errors": self.apply_errors,
            "entries_claimed": self.entries_claimed,
            "sessions_closed": self.sessions_closed,
            "triggers_fired": self.triggers_fired,
            "cycles_started": self.cycles_started,
            "cycles": dict(self.cycles_by_status),
            "kills": self.kills,
            "cycles_busy_elsewhere": self.cycles_busy_elsewhere,
            "locks_lost": self.locks_lost,
            "reconnects": self.reconnects,
            "lag": self.lag,
            "pending": self.pending,
            "cycle_p50_ms": _percentile(durations, 0.5),
            "cycle_p99_ms": _percentile(durations, 0.99),
        }

    def summary_line(self) -> str:
        s = self.snapshot()
        cycles = sum(s["cycles"].values())
        p50 = "-" if s["cycle_p50_ms"] is None else f"{s['cycle_p50_ms']:.0f}"
        return (f"events/s={self.events_per_s():.1f} applied={s['events_applied']} dup={s['events_duplicate']} "
                f"late={s['events_late']} lag={s['lag']} pending={s['pending']} cycles={cycles} "
                f"cycle_p50_ms={p50} kills={s['kills']} dead_letters={s['dead_letters']} "
                f"claimed={s['entries_claimed']} reconnects={s['reconnects']}")
