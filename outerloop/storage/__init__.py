"""One way to Redis: where it is and how to reach it (a URL, a Redis Cluster node, or the
embedded ``redis-server``), the Lua scripts behind one runner, and the local servers tests and
benchmarks start.

- :mod:`~outerloop.storage.embedded`: :class:`RedisTarget` and the embedded server's lifetime
- :mod:`~outerloop.storage.daemon_client`: the daemon's client (no silent retries)
- :mod:`~outerloop.storage.scripts`: Lua by SHA, NOSCRIPT handled in one place
- :mod:`~outerloop.storage.local_servers`: real local servers, pairs and clusters (tests, benchmarks)
"""
