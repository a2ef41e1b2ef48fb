"""A user's real-time state in Redis: the history the transformer reads, what they have seen,
and the agent rows and caches next to it, read in ONE round trip and written atomically.

Which events change the state (decided here, used by the API and by anything else that applies
events, so there is one way to do it):

============================  =============  ===========  =====================================
type                          history token  marks seen   why
============================  =============  ===========  =====================================
finish, rate                  yes            yes          done with it: interest, and not worth
                                                          recommending again
play, click, add_to_list      yes            no           interest; a title only started stays
                                                          recommendable ("continue watching")
skip                          yes            yes          an explicit "not this": never shown
                                                          again; a token so that models with
                                                          action inputs learn from it (the
                                                          funnel drops it for models without)
impression, search, pause,    no             no           exposure / navigation / progress of
seek, episode_release                                     a play already recorded; kept in
                                                          the event stream for the agents
============================  =============  ===========  =====================================

The token types are the synthetic world's ``INTERACTION_TYPES`` (what the model is trained on)
plus ``click`` and ``rate``, so serving tokenizes a history the way training did.

A history token is ``b"<item_id>:<action_id>:<ts_ms>"`` (``action_id`` = ``ACTION_ID[type]``),
newest last, capped at ``history_cap``; each event is its own token, as in training.

Writes: events are grouped by user, sorted by event time, and applied to the history by one Lua
script per user (idempotent by ``event_id`` through ``Keys.applied_events``); each event is also
``XADD``ed to its user's stream shard (``SchedulerKeys.stream_for_user``: ``Keys.events_stream``
when the stream has one shard) through the one stream codec
(:func:`outerloop.contracts.stream.encode_event`). The stream is at-least-once: a
re-posted event is appended again (the daemon dedupes by ``event_id``); its state change is
applied once. Each entry holds ``event`` (the Event JSON) and, when telemetry is on,
``traceparent`` (the posting request's span), so the daemon's spans can link back to the request.

How a batch is written depends on the server (:meth:`UserStore.apply`):

- one server: the scripts and the ``XADD``s go in one ``MULTI``/``EXEC``, so a batch is
  applied whole or not at all;
- a Redis Cluster, which refuses a transaction over keys in different slots (a user's keys are
  in the user's slot, each stream shard in its own): two steps, the stream first, then the
  history. Why this order: once step 1 answered, the event is durable in the stream (as durable
  as the shard's master: see the README on failover), and step 2 is idempotent by ``event_id``.
  The API answers 2xx only after both; a crash or an error between them answers no 2xx, and
  the client's retry (what a 503 asks for) appends the event again, which the daemon dedupes,
  and applies the history once. So a crash between the steps loses nothing and doubles
  nothing. The other order could acknowledge nothing yet lose the event from the stream for
  good when the client gives up after step 1. Until step 2 lands (microseconds, or the retry),
  a daemon may see the event before the history does.

Durable writes (``durable_wait_ms``, the topology's ``--durable-writes``): the write is followed by
``WAIT 1 <durable_wait_ms>`` on the same connection as the writes it confirms (``WAIT`` counts
the replicas that acknowledged this connection's last write, so sent on another pooled
connection it could confirm an older offset and answer at once). On one server: ``MULTI``, the
writes, ``EXEC``, ``WAIT``, one round trip. On a cluster each step's commands are grouped by the
master of their key's slot, and each master gets its commands then ``WAIT`` in one round trip on
one connection (no redirection is followed: a ``MOVED`` or a dead node fails the step, the slot
map is refreshed, and the client's retry goes to the new master). If a master's ``WAIT`` answers
0 replicas, :class:`NotReplicated` is raised and the API answers 503; the write itself may have
landed, and the retry is idempotent by ``event_id``.

Reads: one Lua script returns the history, the history version, the seen set, the agent rows and
the cached user vector as a handful of flat strings. (redis-py without hiredis parses a
2,000-member ``SMEMBERS`` reply in ~10 ms; the same data joined by Lua takes ~0.3 ms.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from outerloop import telemetry
from outerloop.contracts.events import Event
from outerloop.contracts.keys import Keys, SchedulerKeys, embedding_key, precomputed_key
from outerloop.contracts.stream import encode_event
from outerloop.data.schema import ACTION_ID
from outerloop.storage.clients import AsyncRedisClient, RedisClient
from outerloop.storage.scripts import LuaScript, ScriptSet

log = logging.getLogger(__name__)

HISTORY_TYPES: frozenset[str] = frozenset({"play", "finish", "skip", "add_to_list", "click", "rate"})
SEEN_TYPES: frozenset[str] = frozenset({"finish", "rate", "skip"})

APPLIED_TTL_S = 7 * 24 * 3600  # idempotency window: redeliveries older than this re-apply
# None: the API never trims the stream. Trimming here could delete entries no daemon has read yet
# (a backlog while daemons are down); the daemon trims only what every group has acknowledged.
DEFAULT_STREAM_MAXLEN: int | None = None


def event_mode(event_type: str) -> str:
    """``"hs"`` history + seen, ``"h"`` history only, ``"s"`` seen only, ``"-"`` neither."""
    h = event_type in HISTORY_TYPES
    s = event_type in SEEN_TYPES
    return ("h" if h else "") + ("s" if s else "") or "-"


# "apply" KEYS: hist, hist_v, seen, applied. ARGV: cap, applied_ttl_s, then per event:
#   event_id, mode, token, item_id. Returns {events newly applied, history version}.
# "read" KEYS: hist, hist_v, seen, rows, emb. ARGV: max history tokens.
# "read_precomputed" KEYS: precomputed, seen. The baseline reads only what a precompute engine would.
SCRIPTS = ScriptSet(LuaScript.of("apply", "history_apply"), LuaScript.of("read", "user_read"),
                    LuaScript.of("read_precomputed", "user_read_precomputed"))

_EMPTY_I64 = np.empty(0, dtype=np.int64)


def _ints(joined: bytes) -> np.ndarray:
    """``b"1,2,3"`` -> int64 array; anything unparsable (not written by us) reads as empty."""
    if not joined:
        return _EMPTY_I64
    try:
        return np.array(joined.split(b","), dtype=np.int64)
    except ValueError:
        log.warning("ignoring a malformed id list in redis (%d bytes)", len(joined))
        return _EMPTY_I64


@dataclass(slots=True)
class UserState:
    """What the funnel needs about one user, as read in one round trip."""

    user_id: str
    items: np.ndarray = field(default_factory=lambda: _EMPTY_I64)  # (L,) newest last
    actions: np.ndarray = field(default_factory=lambda: _EMPTY_I64)  # (L,) ACTION_ID
    ts: np.ndarray = field(default_factory=lambda: _EMPTY_I64)  # (L,) ms
    version: int = 0  # history version; 0 = nothing applied yet
    seen: np.ndarray = field(default_factory=lambda: _EMPTY_I64)  # item ids, unordered
    rows: dict[str, bytes] = field(default_factory=dict)  # row_id -> candidate-set JSON
    cached_vector: bytes = b""  # raw embedding-cache value (see embedding_key)

    @property
    def is_new(self) -> bool:
        """No history tokens: serve cold-start rows."""
        return self.items.shape[0] == 0


def parse_history(joined: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joined history tokens -> (items, actions, ts) int64 arrays."""
    if not joined:
        return _EMPTY_I64, _EMPTY_I64, _EMPTY_I64
    try:
        grid = np.array(joined.replace(b":", b",").split(b","), dtype=np.int64).reshape(-1, 3)
    except ValueError:
        log.warning("ignoring a malformed history in redis (%d bytes)", len(joined))
        return _EMPTY_I64, _EMPTY_I64, _EMPTY_I64
    return grid[:, 0], grid[:, 1], grid[:, 2]


def history_token(event: Event) -> bytes:
    return f"{event.item_id}:{ACTION_ID[event.type]}:{event.ts}".encode()


class NotReplicated(RedisError):
    """A durable write that no replica confirmed in time (``WAIT`` answered 0). The write may
    have landed on the master; a retry is idempotent by ``event_id``."""


# A topology change (failover, resharding) or a dead node: refresh the slot map, then fail.
_TOPOLOGY_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError, RedisConnectionError,
                    RedisTimeoutError, OSError)


# What redis-py's asyncio cluster client raises, instead of a ConnectionError, when a node's
# connection is closed under a command in flight (it closes a failed node's connections while
# other requests use them): seen on the API during a master's failover, answered 500 before.
_CLIENT_FAULTS = (RuntimeError, AttributeError)


def _lost_connection(exc: BaseException) -> RedisConnectionError:
    return RedisConnectionError(f"the cluster client lost its connection mid-command ({type(exc).__name__}: {exc})")


class _Recorder:
    """Stands in for a pipeline in :func:`queue_stream` / :func:`queue_history`: records each
    command with the key that routes it (the durable cluster write sends them itself)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, list[Any]]] = []

    def xadd(self, name: str, fields: dict[Any, Any], *, maxlen: int | None = None,
             approximate: bool = True) -> None:
        args: list[Any] = ["XADD", name]
        if maxlen is not None:
            args += ["MAXLEN", "~", maxlen] if approximate else ["MAXLEN", maxlen]
        args.append("*")
        for k, v in fields.items():
            args += [k, v]
        self.commands.append((name, args))

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append((keys_and_args[0], ["EVAL", script, numkeys, *keys_and_args]))


@dataclass(frozen=True, slots=True)
class HistoryApplied:
    """Outcome of one batch: how many events changed state and each user's history version."""

    accepted: int
    applied: int
    versions: dict[str, int]

    @property
    def duplicates(self) -> int:
        return self.accepted - self.applied


def queue_history(pipe: Any, events: Sequence[Event], *, history_cap: int, keys: type[Keys] = Keys) -> list[str]:
    """Add the per-user scripts that apply ``events`` to the users' histories (idempotent by
    ``event_id``); returns the user ids in the order their results come back."""
    by_user: dict[str, list[Event]] = {}
    for ev in events:
        by_user.setdefault(ev.user_id, []).append(ev)
    users = list(by_user)
    for user in users:
        args: list[Any] = [history_cap, APPLIED_TTL_S]
        for ev in sorted(by_user[user], key=lambda e: e.ts):  # stable: ties keep arrival order
            mode = event_mode(ev.type) if ev.item_id is not None else "-"
            token = history_token(ev) if ev.item_id is not None else b""
            args += [ev.event_id, mode, token, ev.item_id or 0]
        names = [keys.history(user), keys.history_version(user), keys.seen(user), keys.applied_events(user)]
        SCRIPTS.queue(pipe, "apply", names, args)  # EVAL: it runs inside the batch's MULTI
    return users


def queue_stream(pipe: Any, events: Sequence[Event], *, stream_maxlen: int | None = DEFAULT_STREAM_MAXLEN,
                 keys: type[Keys] = Keys, stream_shards: int = 1) -> None:
    """Add one ``XADD`` per event, to its user's stream shard, in the stream codec's format."""
    streams = SchedulerKeys(base=keys, shards=stream_shards)
    trace = telemetry.inject_trace({}) if telemetry.enabled() else {}  # the request's span, once per batch
    for ev in events:
        pipe.xadd(streams.stream_for_user(ev.user_id), {**encode_event(ev), **trace}, maxlen=stream_maxlen,
                  approximate=True)


def queue_apply(
    pipe: Any,
    events: Sequence[Event],
    *,
    history_cap: int,
    stream_maxlen: int | None = DEFAULT_STREAM_MAXLEN,
    keys: type[Keys] = Keys,
    stream_shards: int = 1,
) -> list[str]:
    """Add the commands that apply ``events`` to ``pipe`` (a sync or asyncio redis-py pipeline on
    one server, ideally ``transaction=True``): the history scripts, then the stream ``XADD``s;
    returns the user ids in the order their results come back.

    Validation is the caller's job: everything queued here is applied.
    """
    users = queue_history(pipe, events, history_cap=history_cap, keys=keys)
    queue_stream(pipe, events, stream_maxlen=stream_maxlen, keys=keys, stream_shards=stream_shards)
    return users


def collect_apply(users: list[str], results: Sequence[Any], n_events: int) -> HistoryApplied:
    """Turn the pipeline's results (from :func:`queue_apply`) into an :class:`HistoryApplied`."""
    applied = 0
    versions: dict[str, int] = {}
    for user, res in zip(users, results[: len(users)]):
        applied += int(res[0])
        versions[user] = int(res[1])
    return HistoryApplied(accepted=n_events, applied=applied, versions=versions)


class UserStore:
    """Async access to user state on one Redis or a Redis Cluster (one client per event loop).

    ``stream_shards`` must be the daemons' (:class:`outerloop.topology.Topology` gives both)."""

    def __init__(self, client: AsyncRedisClient, *, history_cap: int, stream_maxlen: int | None = DEFAULT_STREAM_MAXLEN,
                 keys: type[Keys] = Keys, stream_shards: int = 1, durable_wait_ms: int | None = None) -> None:
        from outerloop.storage.clients import is_cluster

        self.client = client
        self.durable_wait_ms = durable_wait_ms  # None: acknowledge without waiting for a replica
        self._slots_refreshed_at = 0.0
        self.keys = keys
        self.history_cap = history_cap
        self.stream_maxlen = stream_maxlen
        self.stream_shards = stream_shards
        self.cluster = is_cluster(client)

    async def read(self, user_id: str, max_len: int) -> UserState:
        """History (last ``max_len`` tokens), version, seen, agent rows and cached vector."""
        k = self.keys
        names = [k.history(user_id), k.history_version(user_id), k.seen(user_id), k.rows(user_id),
                 embedding_key(user_id, k)]
        try:
            hist, ver, seen, rows_flat, emb = await SCRIPTS.call(self.client, "read", names, [max_len])
        except _CLIENT_FAULTS as exc:
            if not self.cluster:
                raise
            raise _lost_connection(exc) from exc
        items, actions, ts = parse_history(hist)
        rows = {rows_flat[i].decode(errors="replace"): rows_flat[i + 1] for i in range(0, len(rows_flat) - 1, 2)}
        return UserState(
            user_id=user_id,
            items=items,
            actions=actions,
            ts=ts,
            version=int(ver) if ver else 0,
            seen=_ints(seen),
            rows=rows,
            cached_vector=emb or b"",
        )

    async def read_precomputed(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(precomputed item ids in order, seen item ids)."""
        try:
            pre, seen = await SCRIPTS.call(self.client, "read_precomputed",
                                           [precomputed_key(user_id, self.keys), self.keys.seen(user_id)], [])
        except _CLIENT_FAULTS as exc:
            if not self.cluster:
                raise
            raise _lost_connection(exc) from exc
        return _ints(pre), _ints(seen)

    async def apply(self, events: Sequence[Event]) -> HistoryApplied:
        """Apply a validated batch (see the module docstring): one ``MULTI``/``EXEC`` on one
        server; on a cluster the stream first, then the history (idempotent by ``event_id``).
        Returns only once every event is in the stream and in its user's history (and, with
        ``durable_wait_ms``, once a replica of each master written has them: else
        :class:`NotReplicated`)."""
        if self.durable_wait_ms is not None and not self.cluster:
            return await self._apply_durable(events)
        if not self.cluster:
            async with self.client.pipeline(transaction=True) as pipe:
                users = queue_apply(pipe, events, history_cap=self.history_cap, stream_maxlen=self.stream_maxlen,
                                    keys=self.keys, stream_shards=self.stream_shards)
                results = await pipe.execute()
            return collect_apply(users, results, len(events))
        try:
            if self.durable_wait_ms is not None:
                return await self._apply_durable_cluster(events)
            return await self._apply_cluster(events)
        except _CLIENT_FAULTS as exc:
            raise _lost_connection(exc) from exc

    async def _apply_cluster(self, events: Sequence[Event]) -> HistoryApplied:
        # A cluster pipeline sends each node its commands; an error anywhere raises, and the
        # caller answers 503 (a retry appends again: at-least-once, deduped downstream).
        async with self.client.pipeline(transaction=False) as pipe:
            queue_stream(pipe, events, stream_maxlen=self.stream_maxlen, keys=self.keys,
                         stream_shards=self.stream_shards)
            await pipe.execute()
        async with self.client.pipeline(transaction=False) as pipe:
            users = queue_history(pipe, events, history_cap=self.history_cap, keys=self.keys)
            results = await pipe.execute()
        return collect_apply(users, results, len(events))

    async def _apply_durable(self, events: Sequence[Event]) -> HistoryApplied:
        """One server: ``MULTI``, the writes, ``EXEC``, ``WAIT``, on one connection."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.execute_command("MULTI")
            users = queue_apply(pipe, events, history_cap=self.history_cap, stream_maxlen=self.stream_maxlen,
                                keys=self.keys, stream_shards=self.stream_shards)
            pipe.execute_command("EXEC")
            pipe.execute_command("WAIT", 1, self.durable_wait_ms)
            replies = await pipe.execute()
        results, acked = replies[-2], int(replies[-1])
        if not isinstance(results, list):  # EXECABORT is raised by execute(); a nil EXEC is not ours
            raise RedisError(f"the event transaction was not executed (EXEC answered {results!r})")
        for res in results:
            if isinstance(res, Exception):
                raise res
        if acked < 1:
            raise self._not_replicated("the server")
        return collect_apply(users, results, len(events))

    async def _apply_durable_cluster(self, events: Sequence[Event]) -> HistoryApplied:
        """A cluster: the stream step then the history step, each confirmed by ``WAIT`` on every
        master it wrote to."""
        streams = _Recorder()
        queue_stream(streams, events, stream_maxlen=self.stream_maxlen, keys=self.keys,
                     stream_shards=self.stream_shards)
        await self._on_masters_then_wait(streams.commands)
        history = _Recorder()
        users = queue_history(history, events, history_cap=self.history_cap, keys=self.keys)
        results = await self._on_masters_then_wait(history.commands)
        return collect_apply(users, results, len(events))

    async def _on_masters_then_wait(self, commands: list[tuple[str, list[Any]]]) -> list[Any]:
        """Send each command to the master of its key's slot, each master's commands followed by
        ``WAIT 1`` in one round trip on one connection; the results in ``commands``' order."""
        from redis.asyncio.cluster import PipelineCommand

        await self.client.initialize()  # a no-op unless the client marked its slot map stale
        by_node: dict[str, tuple[Any, list[Any]]] = {}
        try:
            for i, (key, args) in enumerate(commands):
                node = self.client.get_node_from_key(key)
                by_node.setdefault(node.name, (node, []))[1].append(PipelineCommand(i, *args))
        except _TOPOLOGY_ERRORS:
            await self._refresh_slots()
            raise
        waits = {name: PipelineCommand(-1, "WAIT", 1, self.durable_wait_ms) for name in by_node}
        sent = await asyncio.gather(*(node.execute_pipeline([*cmds, waits[name]])
                                      for name, (node, cmds) in by_node.items()), return_exceptions=True)
        errors = [r for r in sent if isinstance(r, BaseException)]
        errors += [c.result for _, cmds in by_node.values() for c in cmds if isinstance(c.result, Exception)]
        errors += [w.result for w in waits.values() if isinstance(w.result, Exception)]
        if errors:
            if any(isinstance(e, _TOPOLOGY_ERRORS) for e in errors):
                await self._refresh_slots()
            raise errors[0]
        unconfirmed = [name for name, w in waits.items() if int(w.result) < 1]
        if unconfirmed:
            raise self._not_replicated(f"master {', '.join(sorted(unconfirmed))}")
        results: list[Any] = [None] * len(commands)
        for _, cmds in by_node.values():
            for c in cmds:
                results[c.position] = c.result
        return results

    async def _refresh_slots(self) -> None:
        """Re-read the cluster's slot map (at most every 200 ms; best effort: the next request
        tries again)."""
        now = time.monotonic()
        if now - self._slots_refreshed_at < 0.2:
            return
        self._slots_refreshed_at = now
        try:
            await self.client.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            log.info("cluster slot map refresh failed (the next request retries): %s", exc)

    def _not_replicated(self, where: str) -> NotReplicated:
        return NotReplicated(f"durable write not confirmed: no replica of {where} acknowledged it within "
                             f"{self.durable_wait_ms} ms (WAIT 1 {self.durable_wait_ms} answered 0)")

    async def warm(self) -> None:
        """On a cluster, discover the nodes and load the read scripts on every primary now, so
        that the first requests (a 30 ms read budget) do not pay for either."""
        if self.cluster:
            await self.client.initialize()
            await SCRIPTS.load(self.client)

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def seed_history(
    client: RedisClient,
    user_id: str,
    items: Iterable[int],
    *,
    history_cap: int,
    ts_ms: int | Sequence[int] | None = None,
    actions: Sequence[int] | None = None,
    keys: type[Keys] = Keys,
) -> None:
    """Write a whole history at once with a blocking client (benchmarks, tests, imports).

    The last ``history_cap`` items become tokens. ``actions`` (``ACTION_ID`` values, one per
    item) decide what is seen as events would; without them every item is seen (MovieLens:
    each interaction is a rating). The version is bumped, never reset, so no cache keyed by it
    can serve an old vector.
    """
    items = [int(i) for i in items]
    n = len(items)
    now = int(time.time() * 1000)
    ts = [now] * n if ts_ms is None else ([int(ts_ms)] * n if isinstance(ts_ms, int) else [int(t) for t in ts_ms])
    acts = [ACTION_ID["rate"]] * n if actions is None else [int(a) for a in actions]
    seen_ids = {ACTION_ID[t] for t in SEEN_TYPES}
    seen = items if actions is None else [i for i, a in zip(items, acts) if a in seen_ids]
    tokens = [f"{i}:{a}:{t}".encode() for i, a, t in zip(items[-history_cap:], acts[-history_cap:], ts[-history_cap:])]
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.history(user_id), keys.seen(user_id), embedding_key(user_id, keys))
    if tokens:
        pipe.rpush(keys.history(user_id), *tokens)
    if seen:
        pipe.sadd(keys.seen(user_id), *seen)
    pipe.incr(keys.history_version(user_id))
    pipe.execute()


class WriteBehind:
    """Batches fire-and-forget writes (served records, embedding cache) into one pipeline every
    ``delay_s``, so they cost the request path neither a round trip nor much CPU: a pipeline's
    fixed cost (~0.3 ms of redis-py) is paid once per batch, not once per request.

    Losing a batch (Redis down, process killed) loses only caches and attribution logs.
    """

    def __init__(self, client: AsyncRedisClient, *, delay_s: float = 0.02, max_pending: int = 10_000) -> None:
        self.client = client
        self.delay_s = delay_s
        self.max_pending = max_pending
        self._pending: list[tuple[str, bytes, int | None]] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failures = 0

    def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append((key, value, ttl_s))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.delay_s)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value, ttl in batch:
                    pipe.set(key, value, ex=ttl)
                await pipe.execute()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._note_failure(exc, len(batch))

    def _note_failure(self, exc: BaseException, n: int) -> None:
        self.failures += 1
        self.dropped += n
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning("write-behind batch of %d dropped (%s failures so far): %s", n, self.failures, exc)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            await self._task
        await self.flush()
