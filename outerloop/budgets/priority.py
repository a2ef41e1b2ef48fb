"""CPU priority of the process that enforces budgets.

A kill is only as punctual as the supervising event loop: on a busy machine a normal-priority
loop can be kept off the CPU for tens of milliseconds, and every deadline it should enforce in
that time overruns by as much. Raising the supervisor (``rt``: ``SCHED_RR``) bounds that wait;
``SCHED_RESET_ON_FORK`` keeps worker processes, the embedded redis-server and threads started
later at normal priority, so agent code never runs raised. Both raised modes need
``CAP_SYS_NICE`` (root, or ``setcap cap_sys_nice+ep`` on the interpreter); without it the caller
gets a :class:`UsageError` saying so rather than a silent normal-priority run.
"""

from __future__ import annotations

import os
from typing import Literal

from outerloop.errors import UsageError

Priority = Literal["normal", "nice", "rt"]
PRIORITIES: tuple[str, ...] = ("normal", "nice", "rt")
RT_PRIORITY = 10  # SCHED_RR priority: above every normal process, far below kernel threads (50+)
NICE_RAISED = -10


def set_supervisor_priority(priority: Priority, *, flag: str = "--priority") -> None:
    """Run this process at ``priority``: ``normal`` (leave it), ``nice`` (nice -10) or ``rt``
    (``SCHED_RR``), each reset to normal in children (Linux only for the raised modes)."""
    if priority == "normal":
        return
    if priority not in PRIORITIES:
        raise UsageError(f"{flag} must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if not hasattr(os, "sched_setscheduler"):
        raise UsageError(f"{flag} {priority} needs Linux scheduling calls, not available here")
    try:
        if priority == "rt":
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(RT_PRIORITY))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, NICE_RAISED)
    except PermissionError as exc:
        raise UsageError(f"{flag} {priority} needs CAP_SYS_NICE (run as root or grant the capability); "
                         f"use {flag} normal otherwise") from exc
