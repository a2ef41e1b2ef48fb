"""The load of the failover measurement offered by ``wrk`` (C), not by Python: on 2 cores a
Python client reached 105-153 of the 300 events/s asked for, its own CPU the bottleneck.

The failover measurement needs each request's outcome (which event ids got a 2xx, so that
"acknowledged events lost" is counted exactly against what reached the stream and the history),
which wrk's summary does not give. The Lua script (:data:`LUA`) therefore:

- runs one connection per wrk thread, so a thread's responses come back in the order of its
  requests and each one belongs to the request before it (wrk's ``response()`` hook does not say
  which connection answered);
- paces the requests with wrk's ``delay()`` hook against a shared wall-clock schedule (request
  ``g`` of the run is due at ``t0 + g / rate``; thread ``k`` sends ``g = k, k + T, k + 2T...``),
  read through LuaJIT's FFI (``gettimeofday``: Lua's own clocks are seconds or CPU time); a thread
  that fell behind (a slow answer during the failover) sends its late requests at once;
- makes request ``g`` the event ``g`` of :func:`outerloop.benchmarks.failover.event` (its own
  event_id, user, item and timestamp), except every ``get_every``-th, a GET of a victim user's
  recommendations;
- ignores wrk's own first call of ``request()`` (it checks the script with it and never sends
  it: the call before any ``delay()``);
- writes per thread a line when a request is sent (``S g kind ms``) and when it is answered
  (``R g status degraded ms``). A request sent and never answered (its connection broke, or wrk
  stopped first) got no acknowledgement: the client retries it like a failed one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } ol_timeval;
int gettimeofday(ol_timeval *tv, void *tz);
]]
local tv = ffi.new("ol_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local prefix, users, rate, threads, t0, key, total, get_every = "fo", 1, 1, 1, 0, "", 0, 0
local victims, n, pending, out, armed = {}, 0, nil, nil, false
function init(args)
  prefix = args[1]; users = tonumber(args[2]); rate = tonumber(args[3]); threads = tonumber(args[4])
  t0 = tonumber(args[5]); key = args[6]; total = tonumber(args[8]); get_every = tonumber(args[9])
  for v in string.gmatch(args[10] or "", "[^,]+") do table.insert(victims, v) end
  out = io.open(args[7] .. "/thread-" .. tid .. ".log", "w")
  out:setvbuf("line")
end

local function index() return n * threads + tid end

function delay()
  armed = true
  local g = index()
  if g >= total then return 3600000 end  -- the schedule is over: wrk's -d ends the run
  local wait = t0 + g * 1000 / rate - now_ms()
  if wait <= 0 then return 0 end
  return math.floor(wait)
end

function request()
  if not armed then  -- wrk's own check of the script (thread 1, before any delay()): never sent
    return wrk.format("GET", "/healthz")
  end
  local g = index()
  n = n + 1
  pending = g
  if get_every > 0 and #victims > 0 and g % get_every == get_every - 1 then
    out:write(string.format("S %d G %.1f\n", g, now_ms()))
    local user = victims[(math.floor(g / get_every) % #victims) + 1]
    return wrk.format("GET", "/v1/users/" .. user .. "/recommendations?k=10", {["X-API-Key"] = key})
  end
  out:write(string.format("S %d P %.1f\n", g, now_ms()))
  local body = string.format('{"event_id":"%s-%d","user_id":"%s-u%02d","item_id":%d,"type":"play","ts":%d}',
    prefix, g, prefix, g % users, 1 + g % 100, T0_MS + g)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json", ["X-API-Key"] = key}, body)
end

function response(status, headers, body)
  if pending == nil then return end
  local degraded = 0
  if body and (string.find(body, '"degraded":true', 1, true) or string.find(body, '"degraded": true', 1, true)) then
    degraded = 1
  end
  out:write(string.format("R %d %d %d %.1f\n", pending, status, degraded, now_ms()))
  pending = nil
end
"""


def lua_script(t0_ms_of_events: int) -> str:
    """The script with the events' first timestamp (:data:`outerloop.benchmarks.failover.T0_MS`)."""
    return LUA.replace("T0_MS", str(t0_ms_of_events))


def parse_logs(logdir: Path, start_ms: float) -> tuple[dict[int, tuple[str, float, float, int, bool]], int]:
    """Request index -> (kind P/G, sent s, answered s, status (0: no answer), degraded), times from
    ``start_ms``; and how many lines were unreadable (a line cut by wrk's exit)."""
    out: dict[int, tuple[str, float, float, int, bool]] = {}
    bad = 0
    for path in sorted(logdir.glob("thread-*.log")):
        for line in path.read_text().splitlines():
            bits = line.split()
            try:
                if bits[0] == "S" and len(bits) == 4:
                    t = (float(bits[3]) - start_ms) / 1000
                    out[int(bits[1])] = (bits[2], t, t, 0, False)
                elif bits[0] == "R" and len(bits) == 5:
                    g = int(bits[1])
                    kind, sent, _, _, _ = out[g]
                    out[g] = (kind, sent, (float(bits[4]) - start_ms) / 1000, int(bits[2]), bits[3] == "1")
                else:
                    bad += 1
            except (IndexError, KeyError, ValueError):
                bad += 1
    return out, bad


async def offer_events_wrk(wrk: str, base: str, prefix: str, n_users: int, victim_users: list[str],
                           kill: Callable[[], None], workdir: Path, *, rate: float, before_s: float, after_s: float,
                           api_key: str, events_t0_ms: int, threads: int = 64, get_every: int = 11,
                           grace_s: float = 3.0) -> dict[str, Any]:
    """Offer ``rate`` events/s (plus one GET of a victim user per ``get_every - 1`` events) for
    ``before_s + after_s`` through wrk, call ``kill`` ``before_s`` after the first request is
    due, and return what :func:`outerloop.benchmarks.failover.run_failover` reads: per event id
    (sent, answered, status), the GETs, the kill time, and wrk's own CPU seconds."""
    logdir = workdir / "wrk-failover"
    logdir.mkdir(parents=True, exist_ok=True)
    for old in logdir.glob("thread-*.log"):
        old.unlink()
    script = logdir / "failover.lua"
    script.write_text(lua_script(events_t0_ms))
    requests_per_s = rate * get_every / (get_every - 1) if get_every > 1 else rate
    total = int(requests_per_s * (before_s + after_s))
    start_ms = (time.time() + 1.0) * 1000  # wrk's threads are up well within a second
    cmd = [wrk, f"-t{threads}", f"-c{threads}", f"-d{int(before_s + after_s + 1.0 + grace_s)}s", "--timeout", "10s",
           "-s", str(script), base, "--", prefix, str(n_users), str(requests_per_s), str(threads),
           str(int(start_ms)), api_key, str(logdir), str(total), str(get_every), ",".join(victim_users)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    await asyncio.sleep(max(0.0, start_ms / 1000 + before_s - time.time()))
    kill()
    killed_at = time.time() - start_ms / 1000
    # once every request due was sent and answered, stop wrk (SIGINT: it prints and exits as at
    # the end of -d), so what follows (the daemons' catch-up) is timed from the load's real end;
    # a request never answered keeps it running to -d, grace_s past the schedule
    await asyncio.sleep(max(0.0, start_ms / 1000 + before_s + after_s - time.time()))
    while proc.poll() is None:
        sent, _ = parse_logs(logdir, start_ms)
        if len(sent) >= total and all(status for _, _, _, status, _ in sent.values()):
            proc.send_signal(signal.SIGINT)
            break
        await asyncio.sleep(0.05)

    def reap() -> tuple[int, Any, str]:
        assert proc.stdout is not None
        text = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        return os.waitstatus_to_exitcode(status), usage, text

    code, usage, text = await asyncio.to_thread(reap)
    proc.returncode = code
    if code != 0:
        raise RuntimeError(f"wrk failed ({code}): {' '.join(cmd)}\n{text[-2000:]}")
    requests, unreadable = parse_logs(logdir, start_ms)
    posts = {f"{prefix}-{g}": (sent, answered, status) for g, (kind, sent, answered, status, _) in requests.items()
             if kind == "P"}
    gets = [(sent, status, deg) for kind, sent, _, status, deg in requests.values() if kind == "G"]
    sends = sorted(sent for _, sent, _, _, _ in requests.values())
    return {"posts": posts, "gets": gets, "killed_at": killed_at, "t0": time.monotonic() - (time.time() - start_ms / 1000),
            "elapsed": sends[-1] if sends else before_s + after_s, "total": len(posts),
            "schedule_s": before_s + after_s, "first_to_last_send_s": (sends[-1] - sends[0]) if sends else 0.0,
            "loadgen": {"tool": "wrk", "threads": threads, "connections": threads,
                        "cpu_s": usage.ru_utime + usage.ru_stime, "requests_due": total,
                        "requests_sent": len(requests), "unreadable_log_lines": unreadable}}
