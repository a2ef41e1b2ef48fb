"""``outerloop demo``: the whole system on one machine, on the embedded Redis, in a few minutes.

What it does, as a user would do it by hand:

1. generates a seeded synthetic streaming world (films, series with episodes, users with tastes
   and time-of-day habits) and simulates four weeks of viewing;
2. trains a small transformer on it (``outerloop train``) and the multi-task ranker;
3. starts the API (``outerloop serve``) and the outer-loop daemon (``outerloop daemon``, running
   the real agent graph plus one demo agent) as two processes on one embedded Redis;
4. streams a few users' four weeks through ``POST /v1/events``; the daemon sessionizes them and
   runs outer-loop cycles that write rows;
5. posts one more event and shows that the very next response already reflects it;
6. plays the moments the outer loop exists for, each with real events, each measured from the
   POST to the refreshed row the API serves (:mod:`outerloop.demo.moments`): a new episode
   released -> "Continue watching" refreshed for its followers; a 2 AM thriller session -> a
   "Wind down" row; three crime films dropped in a row -> crime backed off; an agent over its
   budget -> killed, not retried, nothing committed (:mod:`outerloop.demo.agents`);
7. sums up (events, cycles, agent runs, kills, retries, refresh and request latency) and writes
   the HTML report (``outerloop report``).

While the API runs it prints the console's URL (``http://127.0.0.1:PORT/console``) and an API key
for its controls; ``--keep-running`` leaves the API, the daemon and the console up afterwards.

Everything it writes lives under ``--workdir`` (default ``runs/demo``): artifacts, the embedded
Redis, ``api.log``, ``daemon.log``, the report and its inputs.
"""

from outerloop.demo.main import configure, run

__all__ = ["configure", "run"]
