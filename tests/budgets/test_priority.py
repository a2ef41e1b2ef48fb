"""The budget enforcer's CPU priority (``--priority`` of the daemon and the budgets bench): the
supervisor is raised, its children are not, and a missing capability is a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from outerloop.budgets.priority import set_supervisor_priority
from outerloop.errors import UsageError

PROBE = """
import os, sys
from outerloop.budgets.priority import set_supervisor_priority
from outerloop.errors import UsageError
try:
    set_supervisor_priority(sys.argv[1])
except UsageError as exc:
    print("error", exc); sys.exit(0)
me = (os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.getpriority(os.PRIO_PROCESS, 0))
pid = os.fork()
if pid == 0:
    child = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    os.write(1, f"child {child[0]} {child[1]}\\n".encode()); os._exit(0)
os.waitpid(pid, 0)
print("parent", me[0], me[1])
"""


def _probe(priority: str) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, priority], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.parametrize("priority,policy,nice", [("rt", "SCHED_RR", 0), ("nice", "SCHED_OTHER", -10)])
def test_raised_supervisor_and_normal_children(priority: str, policy: str, nice: int) -> None:
    import os

    got = _probe(priority)
    if "error" in got:  # no CAP_SYS_NICE here: the message must say what is missing
        assert "CAP_SYS_NICE" in " ".join(got["error"])
        return
    assert got["parent"] == [str(getattr(os, policy)), str(nice)]
    assert got["child"] == [str(os.SCHED_OTHER), "0"]  # reset on fork: workers never run raised


def test_normal_leaves_the_process_alone_and_unknown_is_refused() -> None:
    import os

    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    set_supervisor_priority("normal")
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before
    with pytest.raises(UsageError, match="--priority must be one of"):
        set_supervisor_priority("turbo")  # type: ignore[arg-type]
