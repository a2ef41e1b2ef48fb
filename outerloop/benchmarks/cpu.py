"""CPU seconds of groups of processes, read from ``/proc``: what a benchmark reports per event
or per request for the API, the daemons and the Redis nodes, beside the load generator's own
(``wait4`` of its process). Shared by ``bench cluster``'s phases and the failover measurement."""

from __future__ import annotations

from pathlib import Path

from outerloop.benchmarks.serve import _cpu_s


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


class CpuMeter:
    """CPU seconds of groups of processes (roots and their descendants), summed from /proc."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def read(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, roots in self.groups.items():
            pids = set(roots)
            for r in roots:
                pids.update(children(r))
            out[name] = {p: c for p in pids if (c := _cpu_s(p)) is not None}
        return out

    @staticmethod
    def delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds each group used between two reads (a process born in between counts from 0;
        one that died in between is not counted: read before a node is killed, and after)."""
        return {name: sum(c - before.get(name, {}).get(p, 0.0) for p, c in after[name].items()) for name in after}


def per(cpu_s: float, n: float) -> float | None:
    """CPU milliseconds per unit (None when there were none)."""
    return round(cpu_s * 1000 / n, 4) if n else None
