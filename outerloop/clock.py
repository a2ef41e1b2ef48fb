"""The wall clock in the unit every contract uses (ms since the Unix epoch), defined once."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock time in whole milliseconds since the Unix epoch (event times, row expiries,
    trigger firing times and key TTL bookkeeping are all in this unit)."""
    return int(time.time() * 1000)
