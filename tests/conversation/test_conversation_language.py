"""What people actually say (issue 17): negation by verbs and phrases, its scope, comparison
direction, numbers in words, everyday genre words, and what is not applied being named.

Each case here is one the old parser got wrong in the worst way (the opposite of what was
asked) or dropped without a word; the end-to-end ones check the returned items, not only the
parse, since hard constraints are enforced on what the parser extracted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from outerloop.conversation import CatalogFacts, ConversationService, UserHistory, parse_message, replay
from outerloop.conversation.number_words import digits
from outerloop.conversation.session import next_state
from outerloop.data.schema import Catalog, Item
from tests.conversation_support import CatalogArtifacts, comparable, dataset, facts


def constraints(text: str, f: CatalogFacts) -> dict[str, Any]:
    return {k: v for k, v in comparable(next_state(replay([], f), text, f)[0].constraints).items() if v not in (None, [])}


@pytest.mark.parametrize(("text", "want"), [
    ("ninety minutes", "90 minutes"),
    ("a hundred and twenty minutes", "120 minutes"),
    ("forty-five minutes", "45 minutes"),
    ("nineteen eighty", "1980"),
    ("nineteen eighty-five", "1985"),
    ("nineteen oh five", "1905"),
    ("twenty fifteen", "2015"),
    ("twenty twenty", "2020"),
    ("two thousand and five", "2005"),
    ("the nineteen-eighties", "the 1980s"),
    ("the two thousands", "the 2000s"),
    ("one hour", "1 hour"),
    ("the second one", "the second one"),  # a pronoun, not a number
    ("one of those", "one of those"),
    ("an hour and a half", "an hour and a half"),  # read by the duration patterns
])
def test_number_words_become_digits(text: str, want: str) -> None:
    assert digits(text) == want


@pytest.mark.parametrize("text", [
    "I can't stand musicals", "I cannot stand musicals", "I hate musicals", "skip the musicals",
    "nothing like a musical", "musicals? no thanks", "musicals are out", "I'm not a fan of musicals",
    "spare me the musicals", "anything but a musical", "everything except musicals", "no more musicals",
    "musicals aren't my thing", "I'm sick of musicals", "steer clear of musicals", "I don't do musicals",
])
def test_negation_by_verb_or_phrase_excludes(text: str, data_dir: Path) -> None:
    c = constraints(text, facts("ml-1m", str(data_dir)))
    assert c == {"exclude_genres": ["Musical"]}


@pytest.mark.parametrize(("text", "want"), [
    ("no romantic stuff, something funny",
     {"exclude_genres": ["Romance"], "include_genres": ["Comedy"], "tones": ["funny"]}),
    ("I hate musicals and a comedy would be nice", {"exclude_genres": ["Musical"], "include_genres": ["Comedy"]}),
    ("no romance or horror", {"exclude_genres": ["Horror", "Romance"]}),
    ("no romance, horror or war", {"exclude_genres": ["Horror", "Romance", "War"]}),
    ("not a drama, a thriller", {"exclude_genres": ["Drama"], "include_genres": ["Thriller"]}),
    ("non-violent action", {"include_genres": ["Action"], "tones": ["not violent"]}),
])
def test_a_negation_governs_its_own_phrase(text: str, want: dict[str, Any], data_dir: Path) -> None:
    assert constraints(text, facts("ml-1m", str(data_dir))) == want


def test_a_comma_alone_is_read_one_way_and_the_reading_is_said(data_dir: Path) -> None:
    d = parse_message("no romance, horror", facts("ml-1m", str(data_dir)))
    assert d.exclude_genres == ["Romance"] and d.include_genres == ["Horror"]
    assert any("horror" in r and "wanted" in r for r in d.readings)


@pytest.mark.parametrize(("text", "want"), [
    ("nothing over an hour and a half", {"max_runtime_min": 90}),
    ("no longer than two hours", {"max_runtime_min": 120}),
    ("it shouldn't be longer than 100 minutes", {"max_runtime_min": 100}),
    ("I don't want anything over 2 hours", {"max_runtime_min": 120}),
    ("nothing under ninety minutes", {"min_runtime_min": 90}),
    ("over two hours", {"min_runtime_min": 120}),
    ("under ninety minutes", {"max_runtime_min": 90}),
    ("before 1980", {"max_year": 1979}),
    ("nothing before 1980", {"min_year": 1980}),
    ("after 1990", {"min_year": 1991}),
    ("nothing after 1990", {"max_year": 1990}),
    ("not older than 1990", {"min_year": 1990}),
    ("older than 1990", {"max_year": 1989}),
    ("no later than the seventies", {"max_year": 1979}),
    ("from nineteen eighty", {"min_year": 1980, "max_year": 1980}),
    ("the nineties", {"min_year": 1990, "max_year": 1999}),
    ("the 80s", {"min_year": 1980, "max_year": 1989}),
])
def test_comparison_direction_reads_with_its_negation(text: str, want: dict[str, Any], data_dir: Path) -> None:
    assert constraints(text, facts("ml-1m", str(data_dir))) == want


@pytest.mark.parametrize(("text", "genre"), [
    ("cowboys", "Western"), ("cartoons", "Animation"), ("a whodunit", "Mystery"), ("a gangster flick", "Crime"),
    ("something scary", "Horror"), ("a heist movie", "Crime"), ("kung fu", "Action"), ("a space opera", "Sci-Fi"),
])
def test_everyday_genre_words(text: str, genre: str, data_dir: Path) -> None:
    assert genre in constraints(text, facts("ml-1m", str(data_dir)))["include_genres"]


def test_a_tearjerker_is_a_sad_film(data_dir: Path) -> None:
    assert constraints("a real tearjerker", facts("ml-1m", str(data_dir))) == {"tones": ["sad"]}


def test_the_catalogs_own_genre_names_are_words_too() -> None:
    """A genre the everyday lexicon has never heard of is still understood by its catalog name."""
    items = [Item(item_id=1, source_id="1", title="A Life", genres=("Biography",), year=2001),
             Item(item_id=2, source_id="2", title="Laughs", genres=("Comedy",), year=2002)]
    f = CatalogFacts(Catalog(items=items, genres=["Biography", "Comedy"]), name="tiny")
    assert constraints("a biography", f) == {"include_genres": ["Biography"]}
    assert constraints("no biographies", f) == {"exclude_genres": ["Biography"]}


def test_two_digit_decades_follow_the_catalog(data_dir: Path) -> None:
    assert constraints("the 20s", facts("ml-1m", str(data_dir))) == {"min_year": 1920, "max_year": 1929}
    assert constraints("the 20s", facts("synthetic", str(data_dir))) == {"min_year": 2020, "max_year": 2029}


@pytest.mark.parametrize(("text", "phrase"), [
    ("something with Tom Hanks", "tom hanks"),
    ("a comedy in black and white", "black and white"),
    ("nothing from the 80s", "80s"),  # leaving out one period: not a range, so said, not inverted
    ("I don't want anything like Titanic", "titanic"),  # not an anchor
    ("like Zzyzx Quantum Llama", "zzyzx quantum llama"),
])
def test_what_is_not_applied_is_named(text: str, phrase: str, data_dir: Path) -> None:
    f = facts("ml-1m", str(data_dir))
    state = next_state(replay([], f), text, f)[0]
    assert any(phrase in u.phrase for u in state.unapplied), state.unapplied
    assert state.constraints.anchors == [] and state.constraints.min_year is None


def test_a_missing_genre_is_named(data_dir: Path) -> None:
    state = next_state(replay([], facts("synthetic", str(data_dir))), "a western", facts("synthetic", str(data_dir)))[0]
    assert [u.phrase for u in state.unapplied] == ["western"]


PARAPHRASES = [
    "something funny but not stupid, under 90 minutes, no romance",
    "make me laugh, nothing dumb, no longer than an hour and a half, and skip the romance",
    "I can't stand romance; I want something funny that isn't silly and runs under ninety minutes",
]


@pytest.mark.parametrize("catalog", ["ml-1m", "synthetic"])
def test_three_paraphrases_give_the_same_constraints(catalog: str, data_dir: Path) -> None:
    """The README's example: three ways to say one request."""
    f = facts(catalog, str(data_dir))
    got = [next_state(replay([], f), p, f)[0].constraints for p in PARAPHRASES]
    assert got[0] == got[1] == got[2]
    assert got[0].include_genres == ["Comedy"] and got[0].exclude_genres == ["Romance"]
    assert got[0].max_runtime_min == 90 and got[0].tones == ["funny", "not stupid"]


@pytest.fixture(scope="module")
def ml1m(data_dir: Path) -> tuple[ConversationService, UserHistory]:
    data = dataset("ml-1m", str(data_dir))
    service = ConversationService(CatalogArtifacts(data.catalog, "ml-1m"), catalog_name="ml-1m")
    return service, UserHistory(items=[int(i) for i in data.users[0].items[:30]])


async def test_a_user_who_cannot_stand_musicals_gets_none(ml1m) -> None:
    service, history = ml1m
    resp = await service.respond("u1", "I can't stand musicals, show me something", history=history, k=30)
    assert len(resp.items) == 30 and not any("Musical" in p.genres for p in resp.items)


async def test_runtime_in_words_is_refused_out_loud_on_movielens(ml1m) -> None:
    """ "under ninety minutes" on a catalog without runtimes: understood, then refused in words."""
    service, history = ml1m
    resp = await service.respond("u1", "a comedy under ninety minutes", history=history)
    assert resp.constraints.max_runtime_min == 90 and resp.applied.max_runtime_min is None
    assert [r.field for r in resp.refused] == ["max_runtime_min"] and "max_runtime_min" in resp.reply


async def test_unapplied_parts_and_readings_are_in_the_reply_and_the_response(ml1m) -> None:
    service, history = ml1m
    resp = await service.respond("u1", "a comedy with Tom Hanks, no romance, horror", history=history)
    assert any(u.phrase == "tom hanks" for u in resp.unapplied) and "'tom hanks'" in resp.reply
    assert resp.readings and resp.readings[0][:20].lower() in resp.reply.lower()
    assert resp.applied.exclude_genres == ["Romance"]
