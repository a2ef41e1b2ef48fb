"""Conversational recommendations end to end (no LLM): constraint satisfaction over the written
request set on all three catalogs, refusals, follow-ups, explanations and bad input.

The synthetic catalog runs on the session's real tiny model (``tiny_dir``); the MovieLens
catalogs on :class:`tests.conversation_support.CatalogArtifacts` (content vectors in a real
FAISS index), since satisfaction does not depend on what the vectors learned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from outerloop.conversation import (
    Constraints,
    ConversationResponse,
    ConversationService,
    UserHistory,
    converse,
    violations,
)
from outerloop.data.schema import Item
from outerloop.errors import UserInputError
from tests.conversation_support import CATALOGS, CatalogArtifacts, dataset, requests, turns_for
from tests.api.test_api_fixtures import tiny_artifacts, tiny_data, tiny_dir  # noqa: F401

REQUESTS = requests()
HARD = ("include_genres", "any_genres", "exclude_genres", "min_runtime_min", "max_runtime_min", "min_year",
        "max_year", "kind", "exclude_tags")


def _independent_check(item: Item, c: Constraints) -> list[str]:
    """A third, deliberately naive statement of the hard constraints (not the package's code)."""
    bad = []
    if not all(g in item.genres for g in c.include_genres):
        bad.append("include")
    if c.any_genres and not any(g in item.genres for g in c.any_genres):
        bad.append("any")
    if any(g in item.genres for g in c.exclude_genres):
        bad.append("exclude")
    if c.min_runtime_min is not None and not (item.runtime_min is not None and item.runtime_min >= c.min_runtime_min):
        bad.append("min_runtime")
    if c.max_runtime_min is not None and not (item.runtime_min is not None and item.runtime_min <= c.max_runtime_min):
        bad.append("max_runtime")
    if c.min_year is not None and not (item.year is not None and item.year >= c.min_year):
        bad.append("min_year")
    if c.max_year is not None and not (item.year is not None and item.year <= c.max_year):
        bad.append("max_year")
    if c.kind is not None and item.kind != c.kind:
        bad.append("kind")
    for tag in item.tags:
        words = tag.lower().split()
        if any(t.lower() == tag.lower() or (" " not in t and t.lower() in words) for t in c.exclude_tags):
            bad.append(f"tag {tag}")
    return bad


@pytest.fixture(scope="module")
def services(data_dir: Path, tiny_artifacts) -> dict[str, tuple[ConversationService, list[UserHistory]]]:  # noqa: F811
    out = {}
    for name in CATALOGS:
        data = dataset(name, str(data_dir))
        arts = tiny_artifacts if name == "synthetic" else CatalogArtifacts(data.catalog, name)
        if name == "synthetic":
            assert [it.title for it in arts.catalog.items] == [it.title for it in data.catalog.items]
        users = [UserHistory(items=[int(i) for i in u.items[:30]]) for u in data.users[:2]]
        out[name] = (ConversationService(arts, catalog_name=name), users)
    return out


def _assert_satisfied(resp: ConversationResponse, service: ConversationService, history: UserHistory) -> None:
    catalog = service.facts.catalog
    for field in HARD:
        refused = {r.field for r in resp.refused}
        expected = getattr(Constraints(), field) if field in refused else getattr(resp.constraints, field)
        assert getattr(resp.applied, field) == expected, field
    for pick in resp.items:
        item = catalog.get(pick.item_id)  # only catalog ids: KeyError otherwise
        assert pick.title == item.title
        assert violations(item, resp.applied) == [], (pick.title, resp.applied)
        assert _independent_check(item, resp.applied) == [], (pick.title, resp.applied)
        assert pick.item_id not in history.items
        assert pick.explanation


@pytest.mark.parametrize("catalog", CATALOGS)
async def test_every_pick_satisfies_every_applied_constraint(catalog: str, services) -> None:
    """100% satisfaction over the whole request set (each request, on each catalog)."""
    service, users = services[catalog]
    n_items = answered = 0
    for req in REQUESTS:
        turns = turns_for(req, service.facts) if req["catalog"] == catalog else \
            [t for t in turns_for_text_only(req)]
        for history in users:
            resp = await service.respond("u1", req["message"], turns, history, k=10)
            _assert_satisfied(resp, service, history)
            n_items += len(resp.items)
            answered += bool(resp.items)
    assert n_items > 0 and answered >= len(REQUESTS)  # most requests find something


def turns_for_text_only(req: dict[str, Any]) -> list[Any]:
    """A request's user turns alone (its shown titles belong to another catalog)."""
    from outerloop.conversation import Turn

    return [Turn(role="user", text=t["text"]) for t in req.get("turns", []) if t["role"] == "user"]


async def test_issue_example_and_follow_ups_on_the_synthetic_catalog(services, tiny_data) -> None:  # noqa: F811
    service, _ = services["synthetic"]
    user = tiny_data.users[0]
    ts0 = 1_735_689_600_000
    history = UserHistory(items=[int(i) for i in user.items[:20]], ts=[ts0 + n * 3_600_000 for n in range(20)],
                          actions=[6] * 20)  # finish
    now = ts0 + 9 * 86_400_000
    first = await service.respond("u1", "something funny but not stupid, under 90 minutes, no romance",
                                  history=history, now_ms=now)
    assert first.refused == [] and first.applied.max_runtime_min == 90
    assert first.items, first.notes
    for p in first.items:
        assert "Comedy" in p.genres and "Romance" not in p.genres and p.runtime_min <= 90
        assert "comedy" in p.explanation and f"{p.runtime_min} min" in p.explanation
        assert "close to" in p.explanation and "which you finished" in p.explanation and "week" in p.explanation
    assert first.turns[-1].role == "assistant" and first.turns[-1].item_ids == [p.item_id for p in first.items]

    shorter = await service.respond("u1", "shorter", first.turns, history, now_ms=now)
    assert shorter.applied.max_runtime_min == 75 and all(p.runtime_min <= 75 for p in shorter.items)
    assert shorter.applied.include_genres == ["Comedy"] and shorter.applied.exclude_genres == ["Romance"]

    if len(first.items) >= 2:
        second = first.items[1]
        like = await service.respond("u1", "more like the second one", first.turns, history, now_ms=now)
        assert [a.item_id for a in like.applied.anchors] == [second.item_id]
        assert second.item_id not in [p.item_id for p in like.items]  # "like X" never returns X
        assert all(f"like {second.title}" in p.explanation for p in like.items)

    no_horror = await service.respond("u1", "without horror", shorter.turns, history)
    assert "Horror" in no_horror.applied.exclude_genres and all("Horror" not in p.genres for p in no_horror.items)
    assert no_horror.applied.max_runtime_min == 75  # earlier turns still hold


async def test_series_are_entered_at_their_first_unseen_episode(services) -> None:
    service, _ = services["synthetic"]
    resp = await service.respond("u1", "a series", k=20)
    assert resp.items and all(p.kind == "episode" for p in resp.items)
    series = [p.series_id for p in resp.items]
    assert len(series) == len(set(series))  # one entry per series
    for p in resp.items:
        eps = service.facts.series_episodes(p.series_id or "")
        assert (eps[0].season, eps[0].episode) <= (service.facts.item(p.item_id).season,
                                                   service.facts.item(p.item_id).episode)
        assert min((e.season, e.episode) for e in eps) == (service.facts.item(p.item_id).season,
                                                            service.facts.item(p.item_id).episode)


async def test_movielens_refuses_runtime_out_loud(services) -> None:
    service, users = services["ml-1m"]
    resp = await service.respond("u1", "something funny but not stupid, under 90 minutes, no romance", [], users[0])
    fields = {r.field: r for r in resp.refused}
    assert "max_runtime_min" in fields and "no runtimes" in fields["max_runtime_min"].reason
    assert "exclude_tags" in fields and "no tags" in fields["exclude_tags"].reason  # ML-1M has no tags
    assert resp.constraints.max_runtime_min == 90 and resp.applied.max_runtime_min is None
    assert "Not applied: max_runtime_min" in resp.reply
    assert resp.items and all("Comedy" in p.genres and "Romance" not in p.genres for p in resp.items)


async def test_tag_exclusions_apply_where_the_catalog_has_tags(services) -> None:
    service, _ = services["ml-latest-small"]
    facts = service.facts
    resp = await service.respond("u1", "a comedy, but not stupid", k=50)
    assert resp.refused == []
    banned = facts.tag_mask(resp.applied.exclude_tags)
    assert banned[[it.item_id for it in facts.catalog.items if "Comedy" in it.genres]].any()  # the test bites
    assert resp.items and not any(banned[p.item_id] for p in resp.items)


async def test_a_series_on_a_films_only_catalog_is_refused(services) -> None:
    service, _ = services["ml-latest-small"]
    resp = await service.respond("u1", "a crime series")
    assert [r.field for r in resp.refused] == ["kind"] and resp.applied.kind is None
    assert resp.items and all("Crime" in p.genres for p in resp.items)


async def test_nothing_fits_says_which_constraint_is_narrow(services) -> None:
    service, _ = services["synthetic"]
    resp = await service.respond("u1", "a documentary from 2023 under 60 minutes")
    assert resp.eligible == 0 and resp.items == [] and resp.reply.startswith("Nothing fits")
    assert any("nothing in the catalog" in n for n in resp.notes)
    assert any(n.startswith("dropping the runtime bound would allow") or n.startswith("dropping the year range")
               for n in resp.notes), resp.notes


async def test_history_personalises_the_same_request(services, tiny_data) -> None:  # noqa: F811
    service, _ = services["synthetic"]
    lists = []
    for user in tiny_data.users[:6]:
        history = UserHistory(items=[int(i) for i in user.items[:30]])
        resp = await service.respond("u", "a film under two hours", [], history)
        lists.append(tuple(p.item_id for p in resp.items))
    assert len(set(lists)) > 1


async def test_sdk_function(tiny_artifacts) -> None:  # noqa: F811
    resp = await converse(tiny_artifacts, "a comedy under 100 minutes", history=[1, 2, 3], k=5)
    assert resp.parser == "rules" and len(resp.items) <= 5 and resp.items
    assert all("Comedy" in p.genres and p.runtime_min <= 100 for p in resp.items)
    again = await converse(tiny_artifacts, "no romance", history=[1, 2, 3], turns=resp.turns, k=5)
    assert again.applied.max_runtime_min == 100 and "Romance" in again.applied.exclude_genres


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"message": "   "}, "message"),
    ({"message": "x" * 1001}, "message"),
    ({"k": 0}, "k"),
    ({"k": 51}, "k"),
    ({"turns": [{"role": "robot", "text": "hi"}]}, "turns[0].role"),
    ({"turns": [{"role": "assistant", "item_ids": [10_000_000]}]}, "turns[0].item_ids"),
    ({"user_id": ""}, "user_id"),
])
async def test_bad_input_names_the_field(services, kwargs: dict[str, Any], field: str) -> None:
    service, _ = services["synthetic"]
    args = {"user_id": "u1", "message": "a comedy", "turns": [], "k": 10, **kwargs}
    with pytest.raises(UserInputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        await service.respond(args["user_id"], args["message"], args["turns"], k=args["k"])
