"""The daemon's settings: one typed, keyword-only object, units in the names.

Built by the CLI from flags (or by code and tests directly); nothing here reads the
environment. Defaults suit one production daemon; tests shorten the intervals.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from outerloop.errors import UsageError


def default_consumer_name() -> str:
    """Unique per process: a restarted daemon is a new consumer and claims the old one's
    entries by XAUTOCLAIM (pass a fixed ``consumer`` to resume its own pending entries)."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    consumer: str = field(default_factory=default_consumer_name)
    group_start_id: str = "0"  # a new group reads the stream from the start: nothing is skipped

    # reading
    read_count: int = 200  # entries per XREADGROUP
    apply_chunk: int = 100  # entries applied per pipeline; a stop request is honoured between chunks
    block_ms: int = 1_000
    claim_interval_s: float = 5.0
    claim_min_idle_ms: int = 30_000  # an entry idle this long belongs to a dead consumer
    max_deliveries: int = 5  # deliveries after which an entry is dead-lettered
    consumer_prune_idle_ms: int = 3_600_000  # forget consumers idle this long that own no entries
    dead_letter_maxlen: int = 100_000  # approximate cap of the dead-letter stream
    trim_consumed: bool = True  # drop entries every group has acknowledged (each claim pass)

    # cycles
    max_concurrent_cycles: int = 16
    cycle_timeout_s: float = 60.0  # backstop over the agents' own budgets
    lock_ttl_s: float = 10.0  # renewed every third of it while the cycle runs; a dead daemon's
    # users are taken over by another daemon at most this long after it died
    dispatch_poll_s: float = 0.05  # how often due users written by other daemons are looked for
    shutdown_grace_s: float = 20.0

    # sweeps
    session_sweep_interval_s: float = 1.0
    stale_sweep_interval_s: float = 30.0
    stale_after_s: float = 3_600.0  # rows without an expiry are refreshed this long after a cycle
    min_refresh_interval_s: float = 60.0  # never re-trigger a user's stale sweep sooner than this

    # operating
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    metrics_interval_s: float = 10.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0

    def __post_init__(self) -> None:
        if self.read_count < 1 or self.apply_chunk < 1:
            raise UsageError("read_count and apply_chunk must be >= 1")
        if self.max_concurrent_cycles < 1:
            raise UsageError("max_concurrent_cycles must be >= 1")
        if self.max_deliveries < 1:
            raise UsageError("max_deliveries must be >= 1")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise UsageError("heartbeat_ttl_s must exceed heartbeat_interval_s")
        if self.lock_ttl_s <= 0.1:
            raise UsageError("lock_ttl_s must be > 0.1 (it is renewed every third of it)")

    @property
    def lock_ttl_ms(self) -> int:
        return int(self.lock_ttl_s * 1000)
