"""The API's OpenAPI document, made to tell the truth about what the API does.

FastAPI derives the document from the routes; this module corrects what it cannot know:

- **Errors.** Every 4xx and 5xx the app answers has the body its exception handlers write,
  :class:`ErrorOut` (``detail`` names the field; ``errors`` lists each problem), so every error
  response of every operation is documented with that schema (FastAPI documents its own
  ``HTTPValidationError``, which the app never sends). Operations with parameters or a body
  document 422; with a body, 400 (a body that is not JSON) too.
- **Constraints enforced in code.** The events body (one event, or 1 to ``max_batch`` of them,
  bare or as ``{"events": [...]}`` and nothing else), an event's ``item_id`` (required for every
  type but ``search``; 1 to the catalog's size) and ``ts`` (from 2000-01-01).
- **Security.** When an API key is configured, the write operations declare the ``X-API-Key``
  scheme and their 401.

One rule cannot be a static bound, and is documented in words (``x-max-future-skew-ms``): an
event's ``ts`` may be at most 5 minutes ahead of the server's clock.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from outerloop.contracts.events import MAX_FUTURE_SKEW_MS, MIN_LIVE_TS_MS, Event

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
API_KEY_SCHEME = "ApiKey"


class ErrorItem(BaseModel):
    loc: str = Field(description="where: body, query.k, path.user_id, events[3].ts, ...")
    msg: str


class ErrorOut(BaseModel):
    """Every error the API answers (never a traceback)."""

    detail: str = Field(description="one line naming the field(s) at fault")
    errors: list[ErrorItem] = Field(default_factory=list, description="each problem, when there are several")


ERROR_DESCRIPTIONS = {
    "400": "The body is not JSON",
    "401": "Missing or wrong X-API-Key header",
    "404": "Not found",
    "405": "Method not allowed (the Allow header lists the allowed ones)",
    "413": "The body is over the size limit",
    "415": "The body is not application/json",
    "422": "Invalid request; `detail` names the field",
    "503": "Storage unavailable; retry later",
}


def events_request_body(max_batch: int) -> dict[str, Any]:
    """The request body of ``POST /v1/events``: one event, a list, or ``{"events": [...]}``."""
    batch = {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1, "maxItems": max_batch}
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Event"},
            batch,
            {"type": "object", "required": ["events"], "properties": {"events": batch},
             "additionalProperties": False},
        ]}}},
    }


def event_schema(n_items: int) -> dict[str, Any]:
    """The Event contract as this API applies it (catalog of ``n_items`` items, live times)."""
    schema = Event.model_json_schema()
    props = schema["properties"]
    props["item_id"]["anyOf"][0]["maximum"] = n_items
    props["item_id"]["description"] = f"dense catalog id, 1..{n_items}; required for every type but search"
    props["ts"]["minimum"] = MIN_LIVE_TS_MS
    props["ts"]["description"] = (f"event time, ms since the Unix epoch: from 2000-01-01, and at most "
                                  f"{MAX_FUTURE_SKEW_MS // 60_000} minutes ahead of the server's clock")
    props["ts"]["x-max-future-skew-ms"] = MAX_FUTURE_SKEW_MS
    item = props["item_id"]["anyOf"][0]
    schema["anyOf"] = [  # (the branches repeat the field's bounds: some generators read only the branch)
        {"properties": {"type": {"const": "search"}}, "required": ["type"]},
        {"properties": {"item_id": dict(item)}, "required": ["item_id"]},
    ]
    return schema


def finish(schema: dict[str, Any], *, n_items: int, api_key: bool, write_paths: set[tuple[str, str]]) -> dict[str, Any]:
    """Correct FastAPI's document in place (see the module's docstring); returns it.
    ``write_paths``: the (path, method) pairs that take the API key."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Event"] = event_schema(n_items)
    turn = components.get("Turn", {}).get("properties", {}).get("item_ids", {}).get("items")
    if turn is not None:  # the conversation's earlier turns name catalog items
        turn["maximum"] = n_items
    for name, model in (("ErrorOut", ErrorOut), ("ErrorItem", ErrorItem)):
        components[name] = _local_refs(model.model_json_schema(ref_template="#/components/schemas/{model}"))
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = op.setdefault("responses", {})
            if op.get("parameters") or op.get("requestBody"):
                responses.setdefault("422", {})
            if op.get("requestBody"):
                responses.setdefault("400", {})
            if api_key and (path, method) in write_paths:
                op["security"] = [{API_KEY_SCHEME: []}]
                responses.setdefault("401", {})
            for status, resp in responses.items():
                if status[:1] in "45":
                    resp["description"] = resp.get("description") or ERROR_DESCRIPTIONS.get(status, "Error")
                    if resp["description"] in ("Validation Error", "Successful Response"):
                        resp["description"] = ERROR_DESCRIPTIONS.get(status, "Error")
                    resp["content"] = error_body
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if api_key:
        schema["components"]["securitySchemes"] = {
            API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    return schema


def _local_refs(model_schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` dropped (they are components already)."""
    model_schema.pop("$defs", None)
    return model_schema
