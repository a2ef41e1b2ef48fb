"""The scheduler daemon: consumes the event stream, sessionizes, fires triggers, runs cycles.

Modules, by what they do:

- :mod:`~outerloop.contracts.stream`: the stream entry format (shared with the API)
- :mod:`~outerloop.contracts.keys`: stream, shard and scheduler key names (hash-tagged)
- :mod:`~outerloop.scheduler.sessionizer`: the per-event effect and sessions, as Lua
- :mod:`~outerloop.scheduler.triggers`: coalesced triggers in Redis, handed to a cycle as the
  agents' :class:`~outerloop.contracts.triggers.Trigger` (kinds and rules: ``contracts.triggers``)
- :mod:`~outerloop.scheduler.consumer`: the consumer group (read, claim, dead-letter, ack)
- :mod:`~outerloop.scheduler.dispatch`: per-user locks, the due queue, bounded cycles
- :mod:`~outerloop.scheduler.sweeps`: idle-session close and stale-row sweeps
- :mod:`~outerloop.scheduler.health`, :mod:`~outerloop.scheduler.metrics`: heartbeat, counters
- :mod:`~outerloop.scheduler.daemon`: the loops and graceful stop; ``daemon_cli``: the command
- :mod:`~outerloop.scheduler.runners`: the outer-loop adapter and a row-refresh runner
"""

from outerloop.contracts.keys import SchedulerKeys, shard_of
from outerloop.contracts.stream import MalformedEntry, decode_entry, encode_event
from outerloop.contracts.triggers import TRIGGER_KINDS, TriggerRules
from outerloop.scheduler.daemon import Daemon, run_until_signalled
from outerloop.scheduler.dispatch import CycleOutcome, CycleRunner, request_cycle
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.sessionizer import SessionSettings, Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.triggers import ItemInfo, PendingTrigger, read_triggers

__all__ = [
    "CycleOutcome", "CycleRunner", "Daemon", "DaemonMetrics", "DaemonSettings", "ItemInfo", "MalformedEntry",
    "SchedulerKeys", "SessionSettings", "Sessionizer", "TRIGGER_KINDS", "PendingTrigger", "TriggerRules", "decode_entry",
    "encode_event", "read_triggers", "request_cycle", "run_until_signalled", "shard_of",
]
