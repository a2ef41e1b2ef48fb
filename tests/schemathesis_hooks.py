"""Schemathesis hooks for the API's contract run: the test suite's
(``tests/api/test_openapi_contract.py``) and one by hand::

    SCHEMATHESIS_HOOKS=tests.schemathesis_hooks schemathesis run http://127.0.0.1:8000/openapi.json --checks all

Two hooks, each for something a static schema or the wire cannot say:

- ``before_call``: one rule of the Event contract is relative to the server's clock: an event's
  ``ts`` may be at most 5 minutes ahead of it (the document says so in the field's
  ``description`` and ``x-max-future-skew-ms``). Generated events whose ``ts`` is past that are
  sent with the present time instead, as a client with a right clock would send them. Nothing
  the schema constrains is changed: only an integer ``ts`` above the schema's minimum is moved,
  to a value above it too.
- ``filter_query``: a repeatable query parameter (``row``) given one scalar value is, on the wire,
  the same request as the list of that one value (``?row=x``), so a "type violation" that
  replaces the list by a scalar is not one; such cases are not sent.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis

from outerloop.contracts.events import MAX_FUTURE_SKEW_MS


def _events(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        inner = body.get("events")
        return inner if isinstance(inner, list) else [body]
    return []


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if context.operation is None or context.operation.path != "/v1/events":
        return
    now = int(time.time() * 1000)
    for ev in _events(case.body):
        ts = ev.get("ts") if isinstance(ev, dict) else None
        whole = type(ts) is int or (type(ts) is float and ts.is_integer())  # a JSON Schema integer
        if whole and ts > now + MAX_FUTURE_SKEW_MS // 2:
            ev["ts"] = now


@schemathesis.hook
def filter_query(context: Any, query: dict[str, Any] | None) -> bool:
    if context.operation is None or not query or "row" not in query:
        return True
    return query["row"] is None or isinstance(query["row"], list)
