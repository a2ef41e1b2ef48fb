"""``POST /v1/users/{user_id}/conversation`` as a FastAPI router the API's owner includes.

The router is built around a :class:`ConversationService` and a *history reader* (the app's
own access to user state), so it neither opens Redis itself nor imports the app: the app wires
``await store.read(user_id, ...)`` in, tests wire a dict in. A reader that raises a storage error
(Redis down or slow) is answered without history and flagged ``degraded``, as the
recommendations route does; bad input is a 422 whose ``detail`` names the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from outerloop.conversation.constraints import MAX_MESSAGE_CHARS, MAX_TURNS, Turn
from outerloop.conversation.response import ConversationResponse
from outerloop.conversation.retrieval import UserHistory
from outerloop.conversation.service import MAX_K, ConversationService
from outerloop.errors import UserInputError

USER_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"  # the Event contract's user_id
# a character that is not whitespace as Python's str.strip() sees it (the OpenAPI schema says so)
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

HistoryReader = Callable[[str], Awaitable[UserHistory | None]]
STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, ConnectionError)


class ConversationRequest(BaseModel):
    """A message and the earlier turns (the previous response's ``turns``)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS,
                         examples=["something funny but not stupid, under 90 minutes, no romance"],
                         json_schema_extra={"pattern": NOT_BLANK})  # the service refuses a blank one
    turns: list[Turn] = Field(default_factory=list, max_length=MAX_TURNS)
    k: int = Field(10, ge=1, le=MAX_K, description="how many titles to return")


def _storage_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import RedisError
    except ImportError:  # redis is a dependency, but the router itself does not need it
        return STORAGE_ERRORS
    return (*STORAGE_ERRORS, RedisError)


def conversation_router(service: ConversationService, history: HistoryReader | None = None) -> APIRouter:
    """The conversation route. ``history(user_id)`` returns the user's history, ``None`` for an
    unknown user (cold start); without a reader every request is a cold start."""
    router = APIRouter(tags=["conversation"])
    storage_errors = _storage_errors()

    @router.post(
        "/v1/users/{user_id}/conversation",
        response_model=ConversationResponse,
        summary="Conversational recommendations: a message (and the earlier turns) -> constrained, explained picks",
        responses={422: {"description": "invalid request; `detail` names the field"}},
    )
    async def converse_route(
        body: ConversationRequest,
        user_id: str = Path(min_length=1, max_length=128, pattern=USER_ID_PATTERN),
    ) -> ConversationResponse:
        hist: UserHistory | None = None
        degraded = False
        if history is not None:
            try:
                hist = await history(user_id)
            except storage_errors:
                degraded = True
        try:
            return await service.respond(user_id, body.message, body.turns, hist, k=body.k, degraded=degraded)
        except UserInputError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    return router
