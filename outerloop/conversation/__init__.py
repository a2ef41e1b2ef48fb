"""Conversational recommendations: "something funny but not stupid, under 90 minutes, no romance".

A message (and the earlier turns) becomes :class:`Constraints` (a rule parser by default, any
langchain-core chat model optionally, under a budget), the user's collaborative embedding and
the anchors' item vectors retrieve candidates, the hard constraints filter them, and a
reflect-and-rerank step orders, re-checks and explains each pick. The same service answers
three ways::

    service = ConversationService(artifacts)                        # once per model
    resp = await service.respond("u1", "a comedy under 90 minutes", history=UserHistory([...]))
    resp = await converse(artifacts, "shorter", turns=resp.turns)  # SDK one-off
    app.include_router(conversation_router(service, read_history))  # POST /v1/users/{id}/conversation
    registry.add(converse_tool(service))                            # MCP tool "converse"
"""

from outerloop.conversation.api import ConversationRequest, HistoryReader, conversation_router
from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import Constraints, Refusal, TitleRef, Turn
from outerloop.conversation.filters import applicable, eligible_mask, violations
from outerloop.conversation.llm import LLMParse, LLMParser
from outerloop.conversation.parser import ParsedMessage, parse_message
from outerloop.conversation.response import ConversationResponse, Pick
from outerloop.conversation.retrieval import UserHistory
from outerloop.conversation.service import ConversationService, ConverseOptions, converse, describe
from outerloop.conversation.session import SessionState, refine, replay
from outerloop.conversation.tool import ConverseIn, converse_tool

__all__ = [
    "CatalogFacts",
    "Constraints",
    "ConversationRequest",
    "ConversationResponse",
    "ConversationService",
    "ConverseIn",
    "ConverseOptions",
    "HistoryReader",
    "LLMParse",
    "LLMParser",
    "ParsedMessage",
    "Pick",
    "Refusal",
    "SessionState",
    "TitleRef",
    "Turn",
    "UserHistory",
    "applicable",
    "converse",
    "converse_tool",
    "conversation_router",
    "describe",
    "eligible_mask",
    "parse_message",
    "refine",
    "replay",
    "violations",
]
