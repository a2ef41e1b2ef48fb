"""Capped, jittered exponential backoff for reconnecting to Redis.

Jitter matters with several daemons: after a Redis restart they would otherwise all reconnect
in the same instant. Half the delay is fixed and half random ("equal jitter"), so a daemon
never hammers a server that is still down, and the cap keeps recovery quick once it is up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class Backoff:
    base_s: float = 0.1
    cap_s: float = 5.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay_s(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to ``cap_s``."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Back to the shortest delay (after a success)."""
        self.attempt = 0
