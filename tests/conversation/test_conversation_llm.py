"""The optional LLM parser with langchain-core's fake chat models: a valid answer is used (its
titles resolved or dropped), a slow one is killed at its budget and a garbage one is refused, and
both fall back to the rule parser, saying so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage

from outerloop.budgets import Budget
from outerloop.conversation import ConversationService, LLMParser, UserHistory, violations
from tests.conversation_support import CatalogArtifacts, dataset

MESSAGE = "something funny but not stupid, under 90 minutes, no romance"
VALID = {
    "include_genres": ["comedy"],  # lower case on purpose: mapped onto the catalog's "Comedy"
    "exclude_genres": ["Romance", "Telenovela"],  # a genre this catalog does not have: dropped
    "max_runtime_min": 90,
    "tones": ["funny", "not stupid"],
    "anchors": [{"title": "Toy Story", "year": 1995, "item_id": 999999}],  # its id is ignored
    "suggestions": [{"title": "Groundhog Day"}, {"title": "The Grand Budapest Hotel"},
                    {"title": "Moonlight Zebra Cavalcade 3"}],  # the last one is invented
}


@pytest.fixture(scope="module")
def artifacts(data_dir: Path) -> CatalogArtifacts:
    return CatalogArtifacts(dataset("ml-latest-small", str(data_dir)).catalog, "ml-latest-small")


@pytest.fixture(scope="module")
def rules(artifacts: CatalogArtifacts) -> ConversationService:
    return ConversationService(artifacts)


def service(rules: ConversationService, model: Any, budget: Budget = Budget(latency_ms=2000)) -> ConversationService:
    """A service with an LLM parser, sharing the rule service's catalog facts."""
    return ConversationService(rules.artifacts, llm=LLMParser(model, budget), facts=rules.facts)


async def test_a_valid_json_answer_is_used_and_sanitised(rules, artifacts) -> None:
    svc = service(rules, FakeListChatModel(responses=[json.dumps(VALID)]))
    resp = await svc.respond("u1", MESSAGE, history=UserHistory(items=[2, 3, 5]))
    assert resp.parser == "llm" and resp.parser_fallback is None and resp.llm_run["outcome"] == "ok"
    c = resp.constraints
    assert c.include_genres == ["Comedy"] and c.exclude_genres == ["Romance"] and c.max_runtime_min == 90
    assert [a.title for a in c.anchors] == ["Toy Story (1995)"] and c.anchors[0].item_id == 1
    assert 1 not in [p.item_id for p in resp.items]
    titles = [s.title for s in c.suggestions]
    assert "Groundhog Day (1993)" in titles and not any("Zebra" in t for t in titles)
    assert any("Telenovela" in n for n in resp.notes) and any("Moonlight Zebra" in n for n in resp.notes)
    assert {"stupid", "dumb"} <= set(c.exclude_tags)  # the tone's tags are added
    catalog = artifacts.catalog
    assert resp.items
    for p in resp.items:  # only catalog items, every hard constraint kept
        assert catalog.get(p.item_id).title == p.title
        assert violations(catalog.get(p.item_id), resp.applied) == []


async def test_structured_output_models_are_used_through_tool_calls(rules) -> None:
    class ToolCallingFake(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:  # what a real provider model does
            return self

    answer = AIMessage(content="", tool_calls=[{"name": "Constraints", "id": "c1",
                                                "args": {"include_genres": ["Horror"], "min_year": 2000}}])
    svc = service(rules, ToolCallingFake(messages=iter([answer])))
    resp = await svc.respond("u1", "scary stuff from this century")
    assert resp.parser == "llm", resp.parser_fallback
    assert resp.applied.include_genres == ["Horror"] and resp.applied.min_year == 2000
    assert resp.items and all("Horror" in p.genres and (p.year or 0) >= 2000 for p in resp.items)


async def test_a_slow_model_is_killed_at_its_budget_and_the_rules_answer(rules) -> None:
    slow = FakeListChatModel(responses=[json.dumps(VALID)], sleep=0.4)
    svc = service(rules, slow, Budget(latency_ms=50))
    resp = await svc.respond("u1", MESSAGE)
    assert resp.parser == "rules" and resp.llm_run["outcome"] == "killed" and resp.llm_run["retries"] == 0
    assert "killed" in resp.parser_fallback and "rule parser" in resp.parser_fallback
    assert resp.llm_run["elapsed_ms"] < 400  # it did not wait for the model
    assert resp.constraints.include_genres == ["Comedy"] and resp.constraints.max_runtime_min == 90
    assert resp.constraints.suggestions == []


@pytest.mark.parametrize("garbage", [
    "Sure! You would love some comedies, maybe Groundhog Day.",  # no JSON at all
    '{"include_genres": "Comedy", "max_runtime_min": "ninety"}',  # wrong types
    '{"min_year": 2010, "max_year": 1990}',  # inconsistent
    '{"include_genres": ["Comedy"], "exclude_genres": ["comedy"]}',  # contradictory after mapping
    '{"favourite_colour": "blue"}',  # fields the type does not have
])
async def test_garbage_falls_back_to_the_rule_parser(rules, garbage: str) -> None:
    svc = service(rules, FakeListChatModel(responses=[garbage]))
    resp = await svc.respond("u1", MESSAGE)
    assert resp.parser == "rules" and resp.parser_fallback and "rule parser" in resp.parser_fallback
    assert resp.constraints.include_genres == ["Comedy"] and resp.constraints.exclude_genres == ["Romance"]
    assert resp.items


async def test_token_budget_is_enforced(rules) -> None:
    model = FakeListChatModel(responses=[json.dumps(VALID)])
    svc = service(rules, model, Budget(latency_ms=2000, max_llm_tokens=5))
    resp = await svc.respond("u1", MESSAGE)
    assert resp.parser == "rules" and resp.llm_run["outcome"] == "over_token_budget"


async def test_follow_ups_give_the_model_the_replayed_state(rules) -> None:
    """Earlier turns are replayed with the rule parser (deterministic); only the new message goes
    to the model, with that state in its prompt."""
    seen: list[Any] = []

    class Recording(FakeListChatModel):
        async def ainvoke(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(prompt)
            return await super().ainvoke(prompt, *args, **kwargs)

    first = await rules.respond("u1", "a comedy from the 90s")
    svc = service(rules, Recording(responses=[json.dumps({"include_genres": ["Comedy"], "min_year": 1990,
                                                              "max_year": 1999, "exclude_genres": ["Horror"]})]))
    resp = await svc.respond("u1", "without horror", first.turns)
    assert resp.parser == "llm" and resp.applied.exclude_genres == ["Horror"]
    system = seen[0][0][1]
    assert '"min_year":1990' in system and first.items[0].title in system


async def test_the_models_answer_goes_through_the_same_validation(rules) -> None:
    """What validation takes out of the model's answer is named, as the rule parser's leftovers
    are: a genre the catalog lacks, a tone nothing acts on, an anchor that is not a title; and
    what no constraint field can say (an actor) stays named whichever parser answered."""
    answer = {"include_genres": ["Comedy", "Telenovela"], "tones": ["funny", "zany"],
              "anchors": [{"title": "Moonlight Zebra Cavalcade 3"}]}
    svc = service(rules, FakeListChatModel(responses=[json.dumps(answer)]))
    resp = await svc.respond("u1", "a zany comedy telenovela with Tom Hanks")
    assert resp.parser == "llm"
    named = {u.phrase for u in resp.unapplied}
    assert {"telenovela", "zany", "moonlight zebra cavalcade 3"} <= named
    assert any("tom hanks" in p for p in named)
    assert resp.constraints.include_genres == ["Comedy"] and resp.constraints.tones == ["funny"]
    assert "telenovela" in resp.reply and all("Comedy" in p.genres for p in resp.items)
