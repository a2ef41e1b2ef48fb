"""What producers and consumers share, defined once (the bottom floor of the package).

- :mod:`~outerloop.contracts.events`: the Event (what the API accepts and the daemon applies)
- :mod:`~outerloop.contracts.stream`: the one codec of an event stream entry (API writes, daemon reads)
- :mod:`~outerloop.contracts.keys`: every Redis key, hash-tagged by user; a user's stream shard
- :mod:`~outerloop.contracts.triggers`: the trigger kinds (what the scheduler fires is what agents
  subscribe to and the planner reads) and the one place for each trigger rule's settings
- :mod:`~outerloop.contracts.plans`: plans (the planner's output, the agents' steps)
- :mod:`~outerloop.contracts.rows`: the stored row and its one codec (the agents and the inner
  loop decode it alike and differ only in what they do with a row that fails or expired)
- :mod:`~outerloop.contracts.budget`: what an agent run may spend

Nothing here imports anything above it (only :mod:`outerloop.errors`), so the API, the daemon,
the agents and the tools can all depend on it without depending on each other.
"""
