"""What producers and consumers share, defined once (the bottom floor of the package).

- :mod:`~outerloop.contracts.events`: the Event (what the API accepts and the daemon applies)
- :mod:`~outerloop.contracts.stream`: the one codec of an event stream entry (API writes, daemon reads)
- :mod:`~outerloop.contracts.keys`: every Redis key, hash-tagged by user; a user's stream shard
- :mod:`~outerloop.contracts.plans`: triggers in, plans, rows out (the outer loop's data)
- :mod:`~outerloop.contracts.rows`: a stored row as the inner loop reads it
- :mod:`~outerloop.contracts.budget`: what an agent run may spend

Nothing here imports anything above it (only :mod:`outerloop.errors`), so the API, the daemon,
the agents and the tools can all depend on it without depending on each other.
"""
