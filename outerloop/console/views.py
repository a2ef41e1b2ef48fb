"""What the console shows, read from what the daemons and the API keep in Redis (JSON-ready).

- :func:`health_view`: daemons (heartbeats joined with what each daemon's loop publishes), lag and
  pending entries per stream shard, dead letters with their reasons, the API's request rate,
  P50/P99 and degraded answers (every API process), event -> refreshed row latency.
- :func:`agents_view`: runs per agent by outcome, run time against the budget (a histogram per
  agent), overrun past the deadline, kills and runs per minute, retries, tool calls, cache hit
  rates, and the operators' control with its audit log.
- :func:`user_view`: one user's history with titles, sessions, memory facts, the rows served now
  (the API's own funnel, as a request would get them) and the stored agent rows, the last cycles.
- :func:`item_chain`: for an item served to a user, the chain that put it there.

Everything is read in a handful of pipelined round trips; nothing here writes except the
clean-up of API processes that stopped publishing.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from outerloop.budgets.accounting import percentile
from outerloop.clock import now_ms
from outerloop.console.apistats import read_api_stats
from outerloop.contracts.events import EVENT_TYPES
from outerloop.contracts.keys import (
    Keys,
    SchedulerKeys,
    counts_keys,
    daemons_key,
    minute_keys,
    runs_keys,
    user_journal_key,
)
from outerloop.contracts.rows import RowDecodeError, decode_row
from outerloop.scheduler import control as ctl
from outerloop.scheduler.consumer import group_lag
from outerloop.storage.clients import AsyncRedisClient

RECENT_CYCLES = 1000  # entries of the runs stream the distributions are computed over
HIST_BINS = 24
MINUTES = 60
OVER_BUDGET = ("over_tool_budget", "over_token_budget")
ACTION_NAME = {i + 1: name for i, name in enumerate(EVENT_TYPES)}



def _t(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _loads(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return None


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(float(v), nd)


async def daemon_docs(client: AsyncRedisClient, keys: type[Keys]) -> dict[str, dict[str, Any]]:
    """What each daemon's loop published (``host:pid`` -> doc)."""
    out = {}
    for name, raw in (await client.hgetall(daemons_key(keys))).items():
        doc = _loads(raw)
        if isinstance(doc, dict):
            out[_t(name)] = doc
    return out


def scheduler_keys(keys: type[Keys], docs: dict[str, dict[str, Any]]) -> SchedulerKeys:
    """The stream layout the live daemons use (the most recent report; defaults without one)."""
    latest = max(docs.values(), key=lambda d: d.get("at_ms", 0), default={})
    return SchedulerKeys(base=keys, shards=int(latest.get("shards", 1) or 1),
                         group=str(latest.get("group", "outerloop-daemon")))


async def recent_runs(client: AsyncRedisClient, keys: type[Keys], count: int = RECENT_CYCLES,
                      shards: int = 1) -> list[dict[str, Any]]:
    """The newest cycle entries of the runs streams (one per stream shard, merged by time),
    newest first (records in short form)."""
    pipe = client.pipeline(transaction=False)  # one slot per command: a cluster splits it by node
    for key in runs_keys(keys, shards):
        pipe.xrevrange(key, count=count)
    out = []
    for entries in await pipe.execute():
        for _, fields in entries:
            f = {_t(k): _t(v) for k, v in fields.items()}
            out.append({"user": f.get("user", ""), "at_ms": int(f.get("at_ms") or 0),
                        "plan_cache_hit": f.get("plan_cache_hit") == "1",
                        "refresh_ms": float(f["refresh_ms"]) if f.get("refresh_ms") else None,
                        "records": _loads(f.get("records", "[]")) or []})
    out.sort(key=lambda r: r["at_ms"], reverse=True)  # stable: one shard keeps the stream's order
    return out[:count]


# --- health ----------------------------------------------------------------------------------------

async def health_view(client: AsyncRedisClient, keys: type[Keys]) -> dict[str, Any]:
    now = now_ms()
    docs = await daemon_docs(client, keys)
    sk = scheduler_keys(keys, docs)
    daemons = await _daemons(client, sk, docs, now)
    streams = []
    for shard in range(sk.shards):
        stream = sk.stream(shard)
        length = int(await client.xlen(stream))
        try:
            found = await group_lag(client, stream, sk.group)
        except ResponseError:  # no stream yet
            found = None
        lag, pending = found if found is not None else (None, None)
        streams.append({"shard": shard, "stream": stream, "group": sk.group, "length": length, "lag": lag,
                        "pending": pending})
    dead_total = int(await client.xlen(sk.dead_letter))
    dead = []
    for eid, fields in await client.xrevrange(sk.dead_letter, count=200):
        f = {_t(k): _t(v) for k, v in fields.items()}
        dead.append({"id": _t(eid), "reason": f.get("reason", ""), "stream": f.get("stream", ""),
                     "entry_id": f.get("entry_id", ""), "deliveries": f.get("deliveries", ""),
                     "dead_at_ms": int(f.get("dead_at_ms") or 0), "raw": f.get("raw", "")[:300]})
    reasons = Counter(_reason_kind(d["reason"]) for d in dead)
    runs = await recent_runs(client, keys, 500, sk.shards)
    refresh = [(r["at_ms"], r["refresh_ms"]) for r in runs if r["refresh_ms"] is not None]
    refresh.sort()
    values = [v for _, v in refresh]
    return {
        "now_ms": now,
        "daemons": daemons,
        "streams": streams,
        "dead_letters": {"total": dead_total, "recent": dead[:20], "by_reason": dict(reasons.most_common())},
        "api": _api(await read_api_stats(client, keys, now)),
        "refresh": {"n": len(values), "p50_ms": _r(percentile(values, 50)), "p99_ms": _r(percentile(values, 99)),
                    "max_ms": _r(max(values, default=None)), "series": [[t, v] for t, v in refresh[-300:]],
                    "measured": "from the daemon applying the event to the commit of the refreshed row "
                                "(time spent waiting in the stream is the lag above)"},
        "recent_users": list(dict.fromkeys(r["user"] for r in runs))[:30],
    }


def _reason_kind(reason: str) -> str:
    head = reason.split(":", 1)[0].strip()
    return head[:60] or "unknown"


async def _daemons(client: AsyncRedisClient, sk: SchedulerKeys, docs: dict[str, dict[str, Any]], now: int) -> list[dict[str, Any]]:
    beats = await client.zrange(sk.heartbeats(), 0, -1, withscores=True)
    names = [_t(n) for n, _ in beats]
    pipe = client.pipeline(transaction=False)
    for n in names:
        pipe.get(sk.heartbeat(n))
    values = await pipe.execute() if names else []
    out = []
    for (name, score), raw in zip(beats, values):
        hb = _loads(raw) if raw is not None else None
        entry: dict[str, Any] = {"consumer": _t(name), "live": hb is not None, "beat_ms": int(score),
                                 "age_ms": now - int(score)}
        if hb:
            entry.update({"pid": hb.get("pid"), "host": hb.get("host"), "started_ms": hb.get("started_ms"),
                          "stats": hb.get("stats", {})})
            loop = docs.get(f"{hb.get('host')}:{hb.get('pid')}")
            if loop:
                entry["loop"] = {k: loop.get(k) for k in ("cycles", "plan_cache_hit_rate", "tool_cache_hit_rate",
                                                          "memory_cache_hit_rate", "at_ms")}
        out.append(entry)
    out.sort(key=lambda d: (not d["live"], d["consumer"]))
    return out


def _api(instances: list[dict[str, Any]]) -> dict[str, Any]:
    by_sec: dict[int, list[Any]] = {}
    for inst in instances:
        for t, count, degraded, p50, p99 in inst.get("series", []):
            cur = by_sec.setdefault(int(t), [0, 0, None, None])
            cur[0] += count
            cur[1] += degraded
            cur[2] = p50 if cur[2] is None or (p50 is not None and p50 > cur[2]) else cur[2]
            cur[3] = p99 if cur[3] is None or (p99 is not None and p99 > cur[3]) else cur[3]
    series = [[t, *v] for t, v in sorted(by_sec.items())]
    p50s = [i["p50_ms_60s"] for i in instances if i.get("p50_ms_60s") is not None]
    p99s = [i["p99_ms_60s"] for i in instances if i.get("p99_ms_60s") is not None]
    return {
        "instances": [{k: i.get(k) for k in ("name", "at_ms", "requests_total", "degraded_total", "rate_10s",
                                             "p50_ms_60s", "p99_ms_60s", "degraded_60s")} for i in instances],
        "rate_10s": round(sum(i.get("rate_10s", 0) for i in instances), 3),
        "p50_ms_60s": max(p50s, default=None), "p99_ms_60s": max(p99s, default=None),
        "degraded_60s": sum(i.get("degraded_60s", 0) for i in instances),
        "requests_total": sum(i.get("requests_total", 0) for i in instances),
        "degraded_total": sum(i.get("degraded_total", 0) for i in instances),
        "series": series,  # [second, requests, degraded, p50 ms, p99 ms] (max over processes)
    }


# --- agents ------------------------------------------------------------------------------------------

async def agents_view(client: AsyncRedisClient, keys: type[Keys]) -> dict[str, Any]:
    now = now_ms()
    docs = await daemon_docs(client, keys)
    declared: dict[str, dict[str, Any]] = {}
    for doc in sorted(docs.values(), key=lambda d: d.get("at_ms", 0)):  # newest report wins
        declared.update(doc.get("agents") or {})
    shards = scheduler_keys(keys, docs).shards
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    pipe = client.pipeline(transaction=False)
    for key in counts_keys(keys, shards):
        pipe.hgetall(key)
    for shard_counts in await pipe.execute():
        for f, n in shard_counts.items():
            agent, _, outcome = _t(f).rpartition("|")
            counts[agent][outcome] += int(n)
    runs = await recent_runs(client, keys, shards=shards)
    by_agent: dict[str, list[list[Any]]] = defaultdict(list)
    for entry in runs:
        for rec in entry["records"]:
            by_agent[rec[0]].append([*rec, entry["at_ms"]])
    minute_now = now // 60_000
    minutes = list(range(minute_now - MINUTES + 1, minute_now + 1))
    pipe = client.pipeline(transaction=False)
    for m in minutes:
        for key in minute_keys(keys, m, shards):
            pipe.hgetall(key)
    replies = await pipe.execute()
    per_minute: list[dict[str, int]] = []  # each minute's runs, the shards' hashes summed
    width = max(shards, 1)
    for i in range(len(minutes)):
        merged: Counter[str] = Counter()
        for h in replies[i * width:(i + 1) * width]:
            for f, v in h.items():
                merged[_t(f)] += int(v)
        per_minute.append(dict(merged))
    control = await ctl.read_control(client, keys)
    names = sorted(set(declared) | set(counts) | set(by_agent) | set(control.agents))
    agents = []
    for name in names:
        recs = by_agent.get(name, [])
        elapsed = [r[2] for r in recs]
        budget_ms = recs[0][3] if recs else (declared.get(name) or {}).get("budget_ms")
        killed = [r for r in recs if r[1] == "killed"]
        overrun = [r[4] for r in killed]
        c = control.get(name)
        total = counts.get(name, Counter())
        agents.append({
            "name": name,
            "declared": declared.get(name),
            "control": (c or ctl.AgentControl(agent=name)).to_dict(),
            "totals": {"ok": total.get("ok", 0), "killed": total.get("killed", 0), "error": total.get("error", 0),
                       "over_budget": sum(total.get(o, 0) for o in OVER_BUDGET), "all": sum(total.values())},
            "recent": {
                "n": len(recs), "by_outcome": dict(Counter(r[1] for r in recs)),
                "p50_ms": _r(percentile(elapsed, 50)), "p99_ms": _r(percentile(elapsed, 99)),
                "max_ms": _r(max(elapsed, default=None)), "budget_ms": budget_ms,
                "over_deadline": sum(1 for e in elapsed if budget_ms and e > budget_ms),
                "overrun_p50_ms": _r(percentile(overrun, 50)), "overrun_p99_ms": _r(percentile(overrun, 99)),
                "overrun_max_ms": _r(max(overrun, default=None)),
                "retries": sum(r[5] for r in recs),
                "tool_calls_per_run": _r(sum(r[6] for r in recs) / len(recs)) if recs else None,
                "histogram": _histogram(elapsed, budget_ms),
                "last_run_ms": max((r[8] for r in recs), default=None),
            },
            "kills_per_minute": [int(_t_count(h, f"{name}|killed")) for h in per_minute],
            "runs_per_minute": [sum(int(v) for f, v in h.items() if _t(f).rpartition("|")[0] == name)
                                for h in per_minute],
        })
    hits = [r["plan_cache_hit"] for r in runs]
    loops = [d for d in docs.values() if now - int(d.get("at_ms", 0)) < 10 * 60_000]
    return {
        "now_ms": now,
        "window": {"cycles": len(runs), "since_ms": runs[-1]["at_ms"] if runs else None},
        "agents": agents,
        "minutes": [m * 60_000 for m in minutes],
        "kills_per_minute": [sum(int(v) for f, v in h.items() if _t(f).endswith("|killed")) for h in per_minute],
        "runs_per_minute": [sum(int(v) for v in h.values()) for h in per_minute],
        "caches": {
            "plan_cache_hit_rate_recent": _r(sum(hits) / len(hits), 4) if hits else None,
            "daemons": [{k: d.get(k) for k in ("name", "at_ms", "cycles", "plan_cache_hit_rate", "tool_cache_hit_rate",
                                               "memory_cache_hit_rate", "tool_cache_by_tool")} for d in loops],
        },
        "control_log": await ctl.read_log(client, keys, 30),
    }


def _t_count(h: dict[Any, Any], field: str) -> int:
    v = h.get(field.encode()) if field.encode() in h else h.get(field)
    return int(v or 0)


def _histogram(values: Sequence[float], budget_ms: float | None) -> dict[str, Any]:
    """Equal-width bins from 0 to past both the budget and the slowest run."""
    top = max([*values, (budget_ms or 0) * 1.25, 1.0])
    width = top / HIST_BINS
    counts = [0] * HIST_BINS
    for v in values:
        counts[min(HIST_BINS - 1, int(v / width))] += 1
    return {"edges_ms": [round(i * width, 3) for i in range(HIST_BINS + 1)], "counts": counts}


# --- one user ---------------------------------------------------------------------------------------

async def user_view(client: AsyncRedisClient, keys: type[Keys], user_id: str, *, title: Any, served: dict[str, Any] | None,
                    history_len: int = 50, cycles: int = 15) -> dict[str, Any]:
    now = now_ms()
    sk = SchedulerKeys(base=keys)
    pipe = client.pipeline(transaction=False)
    pipe.lrange(keys.history(user_id), -history_len, -1)
    pipe.get(keys.history_version(user_id))
    pipe.hgetall(sk.session_state(user_id))
    pipe.lrange(sk.sessions(user_id), -10, -1)
    pipe.hgetall(keys.memory(user_id))
    pipe.hgetall(keys.rows(user_id))
    pipe.lrange(user_journal_key(keys, user_id), 0, cycles - 1)
    pipe.hgetall(keys.profile(user_id))
    pipe.hgetall(sk.counters(user_id))
    hist, hver, sess, closed, mem, rows, journal, profile, counters = await pipe.execute()
    history = []
    for token in reversed(hist):
        parts = _t(token).split(":")
        if len(parts) < 3:
            continue
        item, action, ts = int(parts[0]), int(parts[1]), int(parts[2])
        history.append({"item_id": item, "title": title(item), "type": ACTION_NAME.get(action, str(action)), "ts": ts})
    facts = []
    version = 0
    for f, raw in mem.items():
        if _t(f) == "_v":
            version = int(raw)
            continue
        doc = _loads(raw)
        if isinstance(doc, dict):
            doc = {**doc, "key": _t(f)}
            if isinstance(doc.get("next_item_id"), int):
                doc["next_title"] = title(doc["next_item_id"])
            facts.append(doc)
    facts.sort(key=lambda d: (-int(d.get("version", 0)), d["key"]))
    stored = []
    for rid, raw in rows.items():
        try:
            row = decode_row(raw)
        except RowDecodeError:  # what the agents rebuild and the inner loop skips
            stored.append({"row_id": _t(rid), "malformed": True})
            continue
        stored.append({"row_id": _t(rid), "title": row.title, "reason": row.reason,
                       "produced_by": row.produced_by, "run_id": row.run_id,
                       "created_at": row.created_at, "expires_at": row.expires_at,
                       "age_ms": now - row.created_at, "live": row.is_fresh(now), "n_items": len(row.items),
                       "items": [{"item_id": i, "title": title(i)} for i in row.item_ids()[:10]]})
    stored.sort(key=lambda d: -(d.get("created_at") or 0))
    return {
        "user_id": user_id, "now_ms": now,
        "history_version": int(hver or 0),
        "profile": {_t(k): _t(v) for k, v in profile.items()},
        "counters": {_t(k): int(v) for k, v in counters.items()},
        "history": history,
        "sessions": {"open": _open_sessions(sess), "closed": [d for d in map(_loads, reversed(closed)) if d]},
        "memory": {"version": version, "facts": facts},
        "served": served,
        "stored_rows": stored,
        "cycles": [d for d in map(_loads, journal) if isinstance(d, dict)],
    }


def _open_sessions(state: dict[Any, Any]) -> list[dict[str, Any]]:
    s = {_t(k): _t(v) for k, v in state.items()}
    out = []
    for prefix, which in (("c_", "current"), ("p_", "closing (waiting for the watermark)")):
        if s.get(prefix + "sid"):
            out.append({"state": which, "sid": s[prefix + "sid"], "start_ts": int(float(s.get(prefix + "start", 0))),
                        "last_ts": int(float(s.get(prefix + "last", 0))), "events": int(float(s.get(prefix + "n", 0))),
                        "hold_until_ts": int(float(s.get(prefix + "hold", 0) or 0))})
    return out


def served_rows(rec: Any, title: Any) -> dict[str, Any]:
    """A funnel :class:`~outerloop.inner_loop.serving.funnel.Recommendation` as the console shows it."""
    rows = []
    for r in rec.rows:
        rows.append({"row_id": r.row_id, "title": r.title, "reason": r.reason, "produced_by": r.produced_by,
                     "source": r.source, "run_id": r.run_id, "model_version": r.model_version,
                     "expires_at": r.expires_at,
                     "items": [{"item_id": int(i), "title": title(int(i)), "score": round(float(s), 4), "origin": o}
                               for i, s, o in zip(r.item_ids.tolist(), r.scores.tolist(), r.origins)]})
    return {"rows": rows, "degraded": rec.degraded, "cold_start": rec.cold_start, "ranker": rec.ranker,
            "model_version": rec.model_version, "history_version": rec.history_version, "fallbacks": rec.fallbacks}


def item_chain(view: dict[str, Any], item_id: int) -> dict[str, Any]:
    """Why ``item_id`` is on the user's screen: each served row holding it, and for an agent row
    the run that wrote it, the plan step that asked for that run and the triggers (with their
    events) that started the cycle."""
    links = []
    for row in (view.get("served") or {}).get("rows", []):
        for pos, it in enumerate(row["items"]):
            if it["item_id"] != item_id:
                continue
            link: dict[str, Any] = {"row_id": row["row_id"], "row_title": row["title"], "position": pos + 1,
                                    "score": it["score"], "origin": it["origin"], "source": row["source"],
                                    "produced_by": row["produced_by"], "run_id": row["run_id"],
                                    "reason": row["reason"]}
            if row["source"] == "agent" and row["run_id"]:
                link["cycle"] = _cycle_of(view.get("cycles", []), row["run_id"], row["produced_by"], row["row_id"])
            else:
                link["funnel"] = (f"the inner loop: the transformer over the user's history (version "
                                  f"{view.get('history_version')}), FAISS retrieval, the ranker "
                                  f"({(view.get('served') or {}).get('ranker')}); origin {it['origin']}")
            links.append(link)
    return {"user_id": view["user_id"], "item_id": item_id, "links": links}


def _cycle_of(cycles: Iterable[dict[str, Any]], run_id: str, agent: str, row_id: str) -> dict[str, Any] | None:
    for c in cycles:
        rec = next((r for r in c.get("records", []) if r.get("run_id") == run_id), None)
        if rec is None:
            continue
        steps = [s for p in c.get("plans", []) for s in p.get("steps", [])
                 if s.get("agent") == agent and (not s.get("rows") or row_id in s["rows"])]
        return {"started_ms": c.get("started_ms"), "daemon": c.get("daemon"), "record": rec,
                "plan_steps": steps, "rationale": " | ".join(p.get("rationale", "") for p in c.get("plans", [])),
                "triggers": c.get("triggers", []), "notes": c.get("notes", [])}
    return None
