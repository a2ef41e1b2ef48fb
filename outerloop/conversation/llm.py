"""An optional language-model parser: any langchain-core chat model fills a :class:`Constraints`.

The model runs under a :class:`~outerloop.budgets.Budget` through the budgets module's
enforcement (cancelled at the deadline, never retried, tokens counted). Whatever it returns is
treated as untrusted input:

* genre names are mapped onto the catalog's (unknown ones dropped, with a note);
* every title it mentions (anchors, suggestions) is resolved against the catalog, and dropped
  when it is not there; ids it claims are ignored, so no invented title can reach a response;
* tags and tone names are lower-cased; tones the rule lexicon knows add their tags.

When the run is killed, fails, goes over its token budget or returns something that does not
validate, the caller falls back to the rule parser and says so in the response.

Models with tool calling use ``with_structured_output(Constraints)``; others (including
langchain-core's fake chat models) are asked for JSON, which is validated as the same type.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from outerloop.budgets import Budget, Enforcer, RunContext, RunRecord
from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import Constraints, TitleRef, Unapplied
from outerloop.conversation.lexicon import TONES, tone_tags
from outerloop.errors import RunFailed

DEFAULT_LLM_BUDGET = Budget(latency_ms=1500, max_llm_tokens=4000)

_INSTRUCTIONS = """You turn a movie request into search constraints for a recommender.
Return the complete constraints after this message: start from the current constraints and apply
what the new message changes (a follow-up like "shorter" or "without horror" refines them).
Use only these genre names: {genres}.
Known tones (use these words when they fit): {tones}.
Runtimes are minutes, years are four digits. "anchors" are titles the user wants more like;
"suggestions" may list up to 10 real titles you think fit. Do not set item_id.
Current constraints (JSON): {current}
Titles shown last turn, in order: {shown}
Answer with a JSON object with the fields of this schema and nothing else: {schema}"""


class LLMParseError(RunFailed):
    """The model's answer could not be turned into constraints (no JSON, invalid fields)."""


@dataclass
class LLMParse:
    """The outcome of one budgeted LLM parse: constraints when usable, else why not."""

    constraints: Constraints | None
    record: RunRecord
    notes: list[str] = field(default_factory=list)
    failure: str | None = None
    unapplied: list[Unapplied] = field(default_factory=list)  # what validation took out of the model's answer


def _usage_tokens(message: Any, text: str) -> int:
    usage = getattr(message, "usage_metadata", None)
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        return int(usage["total_tokens"])
    return max(1, len(text) // 4)  # a model that reports nothing still spends tokens


def _json_object(text: str) -> dict[str, Any]:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise LLMParseError("the model's answer holds no JSON object")
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise LLMParseError(f"the model's JSON does not parse ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise LLMParseError("the model's JSON is not an object")
    return obj


class LLMParser:
    """Parses a message with ``model`` under ``budget``. One instance per model; reusable."""

    def __init__(self, model: Any, budget: Budget = DEFAULT_LLM_BUDGET, *, enforcer: Enforcer | None = None) -> None:
        self.model = model
        self.budget = budget
        self.enforcer = enforcer or Enforcer()
        self._structured: Any = None
        try:
            self._structured = model.with_structured_output(Constraints, include_raw=True)
        except NotImplementedError:  # no tool calling: ask for JSON instead
            self._structured = None

    def _prompt(self, message: str, prior: Constraints, shown: Sequence[str],
                facts: CatalogFacts) -> list[tuple[str, str]]:
        system = _INSTRUCTIONS.format(
            genres=", ".join(facts.catalog.genres), tones=", ".join(sorted(TONES)),
            current=prior.model_dump_json(exclude_defaults=True),
            shown="; ".join(f"{i + 1}. {t}" for i, t in enumerate(shown)) or "(none)",
            schema=json.dumps(Constraints.model_json_schema()["properties"], separators=(",", ":")),
        )
        return [("system", system), ("human", message)]

    async def _call(self, ctx: RunContext, prompt: list[tuple[str, str]]) -> Constraints:
        if self._structured is not None:
            out = await self._structured.ainvoke(prompt)
            raw = out.get("raw") if isinstance(out, dict) else None
            ctx.count_tokens(_usage_tokens(raw, str(getattr(raw, "content", ""))))
            parsed = out.get("parsed") if isinstance(out, dict) else out
            if isinstance(parsed, Constraints):
                return parsed
            why = out.get("parsing_error") if isinstance(out, dict) else out
            raise LLMParseError(f"structured output failed: {why}")
        reply = await self.model.ainvoke(prompt)
        text = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
        ctx.count_tokens(_usage_tokens(reply, text))
        try:
            return Constraints.model_validate(_json_object(text))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "constraints"
            raise LLMParseError(f"the model's constraints are invalid: {where}: {first.get('msg')}") from None

    async def parse(self, message: str, prior: Constraints, shown: Sequence[int], facts: CatalogFacts) -> LLMParse:
        """Run the model once under the budget; sanitise what it returns against the catalog."""
        titles = [facts.item(i).title for i in shown if 1 <= i <= facts.n_items]
        record = await self.enforcer.run(self._call, self.budget, self._prompt(message, prior, titles, facts),
                                         agent="conversation_llm_parser")
        if record.outcome != "ok" or not isinstance(record.value, Constraints):
            why = record.error or record.outcome
            return LLMParse(None, record, failure=f"language model run {record.outcome}: {why}")
        dropped: list[Unapplied] = []
        try:
            constraints, notes = sanitise(record.value, facts, dropped)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            return LLMParse(None, record,
                            failure=f"language model constraints invalid after mapping: {first.get('msg')}")
        return LLMParse(constraints, record, notes, unapplied=dropped)


def _resolve_titles(refs: Sequence[TitleRef], facts: CatalogFacts, what: str, notes: list[str],
                    dropped: list[Unapplied]) -> list[TitleRef]:
    out: list[TitleRef] = []
    for ref in refs:
        item_id = facts.titles.resolve(ref.title, ref.year)
        if item_id is None:
            notes.append(f"dropped the model's {what} {ref.title!r}: not in this catalog")
            if what == "anchor":  # a suggestion is the model's own idea; an anchor is the user's ask
                dropped.append(Unapplied(phrase=ref.title.lower(), reason="no such title in this catalog"))
            continue
        it = facts.item(item_id)
        if all(r.item_id != item_id for r in out):
            out.append(TitleRef(title=it.title, year=it.year, item_id=item_id))
    return out


def sanitise(c: Constraints, facts: CatalogFacts,
             dropped: list[Unapplied] | None = None) -> tuple[Constraints, list[str]]:
    """``c`` in catalog terms: genre names mapped, titles resolved or dropped, tones' tags added.
    What is taken out of an ask (not a suggestion) is added to ``dropped``, to be named to the user."""
    notes: list[str] = []
    dropped = dropped if dropped is not None else []

    def genres(values: list[str], asked: bool = True) -> list[str]:
        out: list[str] = []
        for v in values:
            names = facts.resolve_genre(v)
            if not names:
                notes.append(f"dropped the model's genre {v!r}: not a genre of this catalog")
                if asked:
                    dropped.append(Unapplied(phrase=v.lower(), reason=f"{facts.name} has no such genre"))
            out += names
        return out

    tones = sorted({t.lower().strip() for t in c.tones})
    for t in [t for t in tones if t not in TONES]:  # a tone nothing can act on is named, not kept silently
        dropped.append(Unapplied(phrase=t, reason="not a tone this catalog's filter or ranking knows"))
    tones = [t for t in tones if t in TONES]
    prefer, avoid = tone_tags([t for t in tones if t in TONES])
    kind = c.kind if c.kind == "episode" or facts.has_episodes else None
    excluded = {t.lower() for t in c.exclude_tags} | set(avoid)
    return Constraints(
        include_genres=genres(c.include_genres), any_genres=genres(c.any_genres),
        exclude_genres=genres(c.exclude_genres, asked=False),
        min_runtime_min=c.min_runtime_min, max_runtime_min=c.max_runtime_min,
        min_year=c.min_year, max_year=c.max_year, kind=kind, tones=tones,
        prefer_tags=sorted(({t.lower() for t in c.prefer_tags} | set(prefer)) - excluded),
        exclude_tags=sorted(excluded),
        anchors=_resolve_titles(c.anchors, facts, "anchor", notes, dropped),
        suggestions=_resolve_titles(c.suggestions, facts, "suggestion", notes, dropped),
    ), notes
