"""One way to Redis: where it is and how to reach it (a URL, a Redis Cluster node, or the
embedded ``redis-server``), the Lua scripts behind one runner, and the local servers tests and
benchmarks start.

- :mod:`~outerloop.storage.clients`: :class:`RedisTarget` (every client is made there), the
  daemon's client (no silent retries) and the typed client aliases
- :mod:`~outerloop.storage.embedded`: the embedded server's lifetime (holders, last one out stops it)
- :mod:`~outerloop.storage.scripts`: the Lua (``storage/lua/*.lua``) behind one runner; NOSCRIPT
  handled in one place
- :mod:`~outerloop.storage.local_servers`: real local servers, pairs and clusters (tests, benchmarks)
"""
