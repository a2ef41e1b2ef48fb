"""The contracts of the user-facing tools (``outerloop.tools.mcp.user_tools``): pydantic inputs and
outputs, which are also the JSON schemas an MCP client sees, and the errors the tools raise.

Kept apart from the implementations, which are mostly about reaching the serving, memory and
agents modules; the models here are what a reader of the API needs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from outerloop.errors import UserInputError
from outerloop.inner_loop.serving.answer import Recommendations, RecommendedRow
from outerloop.memory.facts import BuiltinFact, Fact
from outerloop.tools.builtin import ItemMeta

USER_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"  # the Event contract's user_id
FactKind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$", examples=["genre_backoff"])]


class OtherFact(BaseModel):
    """A fact of a kind the deployment's own agents define (subclasses of ``outerloop.Fact``):
    the common fields plus the kind's own."""

    model_config = ConfigDict(extra="allow")

    kind: str
    evidence: list[str] | str
    confidence: float
    source: str
    version: int = 0

    @classmethod
    def of(cls, fact: Fact) -> "OtherFact":
        return cls.model_validate(fact.model_dump(mode="json"))


AnyFact = BuiltinFact | OtherFact


def fact_out(fact: Fact) -> Any:
    """A stored fact as the tools' output carries it (built-in kinds as themselves)."""
    return fact if fact.kind in BUILTIN_KINDS else OtherFact.of(fact)


BUILTIN_KINDS = frozenset({"genre_affinity", "genre_backoff", "runtime_preference", "continue_watching"})


class UnknownUser(UserInputError):
    """The user id has no history, memory or rows in this deployment (the tools that have
    nothing to say about such a user raise it; ``recommend`` answers it as a new user)."""


class UnknownItem(UserInputError):
    """The item id (or title) is not in the catalog."""


class UnknownAgent(UserInputError):
    """``refresh_user`` named an agent the outer loop does not have."""


# --- inputs and outputs ----------------------------------------------------------------------


class UserIn(BaseModel):
    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID_PATTERN,
                         description="the user's id, as in the events the service receives")


class RecommendIn(UserIn):
    """The API's ``GET /v1/users/{user_id}/recommendations?k=&row=`` as tool arguments."""

    k: int = Field(default=20, ge=1, le=100, description="items per row")
    rows: list[str] | None = Field(default=None, description="only these row ids (default: every row)")




class RecommendOut(Recommendations):
    """What the API answers for the same user and arguments, without what belongs to one HTTP
    request (``request_id``, timings, the encoder cache outcome)."""


class SimilarIn(BaseModel):
    item_id: int | None = Field(default=None, ge=1, description="the item to match (or give title)")
    title: str | None = Field(default=None, min_length=1, max_length=200,
                              description="a title, or part of one; the most popular match is used")
    k: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _one_query(self) -> "SimilarIn":
        if (self.item_id is None) == (self.title is None):
            raise ValueError("give exactly one of item_id or title")
        return self


class SimilarItem(BaseModel):
    item_id: int
    title: str
    genres: list[str]
    year: int | None = None
    score: float = Field(description="inner product of the two items' embeddings (higher = closer)")


class SimilarOut(BaseModel):
    query: ItemMeta
    items: list[SimilarItem]


class ItemIn(BaseModel):
    item_id: int = Field(ge=1, description="dense catalog id, 1..N")


class ItemDetails(ItemMeta):
    source_id: str = Field(description="the id in the source data (e.g. a MovieLens movieId)")
    tags: list[str] = Field(default_factory=list)
    popularity: float = Field(description="training interactions with the item")


class HistoryIn(UserIn):
    limit: int = Field(default=50, ge=1, le=500, description="most recent interactions to return")


class HistoryEntry(BaseModel):
    item_id: int
    title: str
    action: str = Field(description="play, finish, skip, click, add_to_list, rate, ...")
    ts: int = Field(description="event time, ms since the epoch")


class HistoryOut(BaseModel):
    user_id: str
    history_version: int
    seen_count: int = Field(description="items the user has consumed or skipped (never recommended again)")
    items: list[HistoryEntry] = Field(description="newest first")


class MemoryIn(UserIn):
    kinds: list[FactKind] | None = Field(default=None, description="only facts of these kinds")


class MemoryOut(BaseModel):
    user_id: str
    version: int = Field(description="memory version (0 = nothing written yet)")
    facts: list[AnyFact]


class ExplainIn(UserIn):
    item_id: int = Field(ge=1)


class Placement(BaseModel):
    row_id: str
    title: str
    reason: str
    produced_by: str
    source: str
    run_id: str | None = None
    rank: int = Field(description="1-based position in the row")
    score: float
    origin: str
    live: bool = Field(description="false when the row has expired and is no longer served")


class ToolEvidence(BaseModel):
    tool: str
    input: dict[str, Any] = Field(description="the arguments the tool was called with (long lists shortened)")
    found: bool = Field(description="whether the item is among the tool's results")
    rank: int | None = Field(default=None, description="1-based rank of the item in the tool's output")
    score: float | None = None
    error: str | None = None


class ExplainOut(BaseModel):
    user_id: str
    item: ItemMeta
    summary: str
    placements: list[Placement] = Field(description="the rows the item is in, and where")
    facts: list[AnyFact] = Field(description="memory facts about the item's genres, series or runtime")
    tool_evidence: list[ToolEvidence] = Field(
        description="tool outputs recomputed now, through the same registry the agents use")


class RefreshIn(UserIn):
    agents: list[str] | None = Field(
        default=None, description="agents to run (default: every agent that produces rows)")
    detail: dict[str, int | float | str] = Field(
        default_factory=dict, max_length=32,
        description="handed to the named agents as their manual trigger's detail, as sent")


class RunOut(BaseModel):
    agent: str
    outcome: str = Field(description="ok | killed | error | over_tool_budget | over_token_budget")
    elapsed_ms: float
    budget_ms: float
    overrun_ms: float
    tool_calls: int
    error: str | None = None


class PlanStepOut(BaseModel):
    agent: str
    rows: list[str]
    reason: str


class RefreshOut(BaseModel):
    user_id: str
    elapsed_ms: float
    plan: list[PlanStepOut]
    runs: list[RunOut]
    rows_committed: list[RecommendedRow]  # the API's row: one contract (outerloop.inner_loop.serving.answer)
    notes: list[str]
