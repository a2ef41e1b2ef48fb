"""The MCP tool ``converse``: the conversation route as a typed tool for any MCP client.

:func:`converse_tool` returns a ``ToolSpec``; the MCP server's owner adds it to the registry it
serves (``registry.add(converse_tool())``) and the server lists and calls it like every other
tool. The user's history is read from the deps' Redis with the inner loop's own reader; when
Redis fails the answer comes without history, flagged ``degraded`` (as the HTTP route does).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from outerloop.contracts.keys import Keys
from outerloop.conversation.api import USER_ID_PATTERN
from outerloop.conversation.constraints import MAX_MESSAGE_CHARS, MAX_TURNS, Turn
from outerloop.conversation.response import ConversationResponse
from outerloop.conversation.retrieval import UserHistory
from outerloop.conversation.service import MAX_K, ConversationService
from outerloop.tools.contracts import ToolDeps, ToolSpec, tool

TOOL_TIMEOUT_MS = 3000  # covers an LLM parser's default 1.5 s budget plus retrieval


class ConverseIn(BaseModel):
    """Arguments of ``converse``."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID_PATTERN)
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS,
                         description="what the user asked, e.g. 'something funny but not stupid, under 90 minutes'")
    turns: list[Turn] = Field(default_factory=list, max_length=MAX_TURNS,
                              description="the previous answer's `turns`, to refine it "
                                          "('shorter', 'more like the second one')")
    k: int = Field(10, ge=1, le=MAX_K)


def converse_tool(service: ConversationService | None = None, *, keys: type[Keys] = Keys, max_history: int = 200,
                  timeout_ms: int = TOOL_TIMEOUT_MS) -> ToolSpec:
    """A ``converse`` ToolSpec. Without ``service`` one is built from the deps' artifacts on the
    first call (and rebuilt when the model version changes)."""
    built: dict[str, ConversationService] = {}

    def _service(deps: ToolDeps) -> ConversationService:
        if service is not None:
            return service
        version = deps.artifacts.model_version
        if version not in built:
            built.clear()
            built[version] = ConversationService(deps.artifacts)  # type: ignore[arg-type]
        return built[version]

    async def converse(args: ConverseIn, deps: ToolDeps) -> ConversationResponse:
        """Recommend catalog titles for a request in plain words ("something funny but not stupid,
        under 90 minutes, no romance"), personalised by the user's history. The answer lists the
        constraints understood and applied, any that this catalog cannot check (refused, with the
        reason), and one explanation per title. Pass the answer's `turns` back with a follow-up
        ("shorter", "no, something newer", "more like the second one", "without horror")."""
        from redis.exceptions import RedisError

        from outerloop.inner_loop.serving.user_state import UserStore  # the inner loop's one reader

        hist: UserHistory | None = None
        degraded = False
        try:
            state = await UserStore(deps.redis, history_cap=max_history, keys=keys).read(args.user_id, max_history)
            hist = UserHistory.from_state(state)
        except (RedisError, OSError):
            degraded = True
        return await _service(deps).respond(args.user_id, args.message, args.turns, hist, k=args.k,
                                            now_ms=deps.clock_ms(), degraded=degraded)

    return tool(name="converse", timeout_ms=timeout_ms)(converse)
