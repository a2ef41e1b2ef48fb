"""What a conversational request returns: the picks with their explanations, the constraints as
understood and as applied, what was refused and why, and the turns to send next time."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from outerloop.conversation.constraints import Constraints, Refusal, Turn, Unapplied


class Pick(BaseModel):
    """One recommended catalog item and why it fits."""

    item_id: int
    title: str
    score: float = Field(description="rerank score (collaborative score, standardised, plus fit bonuses)")
    genres: list[str]
    year: int | None = None
    runtime_min: int | None = None
    kind: str = "film"
    series_id: str | None = None
    matched_tags: list[str] = Field(default_factory=list, description="the item's tags that fit the tone asked for")
    explanation: str = Field(description="one line, e.g. 'comedy, 86 min, close to X, which you finished last week'")


class ConversationResponse(BaseModel):
    """The answer to one message. Send ``turns`` back with the next message to refine it."""

    user_id: str
    message: str
    reply: str = Field(description="a short sentence for the user: what was understood and what was found")
    constraints: Constraints = Field(description="everything understood from the conversation so far")
    applied: Constraints = Field(description="what the returned items were filtered by (constraints minus refused)")
    refused: list[Refusal] = Field(default_factory=list, description="understood but not applied, with the reason")
    unapplied: list[Unapplied] = Field(
        default_factory=list,
        description="parts of the message that read like a constraint but did not become one (not understood, "
                    "a genre or title this catalog lacks, a reading that cannot be expressed); named in the reply too")
    readings: list[str] = Field(
        default_factory=list,
        description="where a phrase had two readings: the one taken (also stated in the reply)")
    notes: list[str] = Field(default_factory=list)
    parser: Literal["rules", "llm"] = "rules"
    parser_fallback: str | None = Field(None, description="why the language model's parse was not used")
    llm_run: dict[str, Any] | None = Field(None, description="the budgeted LLM run's record (outcome, elapsed_ms, ...)")
    items: list[Pick] = Field(default_factory=list)
    eligible: int = Field(description="catalog items (not yet seen) that satisfy every applied constraint")
    retrieval: Literal["ann", "exact", "none"] = "none"
    cold_start: bool = Field(description="no history for this user: picks come from the request alone")
    degraded: bool = Field(False, description="the user's history could not be read; answered without it")
    model_version: str
    turns: list[Turn] = Field(description="the earlier turns, this message and this answer: the next request's turns")
    timings_ms: dict[str, float] = Field(default_factory=dict)
