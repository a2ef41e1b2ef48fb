"""The rule parser against the written request set, and the parts of it worth pinning alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outerloop.conversation import Constraints, Turn, parse_message, replay
from outerloop.conversation.session import next_state
from tests.conversation_support import CATALOGS, HARD_DEFAULTS, comparable, facts, requests, turns_for

REQUESTS = requests()


def test_the_request_set_is_big_and_diverse() -> None:
    assert len(REQUESTS) >= 50
    assert len({r["id"] for r in REQUESTS}) == len(REQUESTS)
    assert {r["catalog"] for r in REQUESTS} == set(CATALOGS)
    kinds = {k for r in REQUESTS for k in r["expect"]}
    assert {"include_genres", "any_genres", "exclude_genres", "min_runtime_min", "max_runtime_min", "min_year",
            "max_year", "kind", "tones", "anchors"} <= kinds
    assert sum(1 for r in REQUESTS if r.get("turns")) >= 10  # follow-ups


@pytest.mark.parametrize("req", REQUESTS, ids=[r["id"] for r in REQUESTS])
def test_parser_reads_each_written_request(req: dict[str, Any], data_dir: Path) -> None:
    f = facts(req["catalog"], str(data_dir))
    prior = replay(turns_for(req, f), f)
    state, _ = next_state(prior, req["message"], f)
    assert comparable(state.constraints) == {**HARD_DEFAULTS, **req["expect"]}, state.notes


def test_parsing_is_deterministic_and_replayable(data_dir: Path) -> None:
    """The same turns give the same state, however it was reached (one message at a time or
    replayed from the turns the response returned)."""
    f = facts("ml-1m", str(data_dir))
    msgs = ["a thriller from the 80s", "no romance", "shorter", "like Alien", "any era"]
    state = replay([], f)
    for m in msgs:
        state, _ = next_state(state, m, f)
    again = replay([Turn(role="user", text=m) for m in msgs], f)
    assert again.constraints == state.constraints
    assert replay([Turn(role="user", text=m) for m in msgs], f).constraints == again.constraints


def test_not_stupid_maps_to_tag_exclusions_and_preferences(data_dir: Path) -> None:
    f = facts("ml-latest-small", str(data_dir))
    c = next_state(replay([], f), "funny but not stupid", f)[0].constraints
    assert {"stupid", "dumb"} <= set(c.exclude_tags)
    assert {"clever", "witty", "funny"} <= set(c.prefer_tags)
    assert not set(c.prefer_tags) & set(c.exclude_tags)


def test_title_words_are_not_read_as_tones(data_dir: Path) -> None:
    """ "like Scary Movie" is an anchor, not a request for horror."""
    f = facts("ml-1m", str(data_dir))
    d = parse_message("something like Scary Movie", f)
    assert [a.title for a in d.anchors] == ["Scary Movie (2000)"]
    assert d.tones == [] and d.include_genres == []


def test_unknown_title_and_missing_genre_are_reported_not_guessed(data_dir: Path) -> None:
    f = facts("synthetic", str(data_dir))
    d = parse_message("a western, something like Zzyzx Quantum Llama", f)
    assert d.anchors == [] and d.include_genres == []
    assert any("western" in n for n in d.notes)
    assert any("Zzyzx" in n or "zzyzx" in n for n in d.notes)


def test_ordinal_without_an_earlier_list_is_a_note(data_dir: Path) -> None:
    f = facts("ml-1m", str(data_dir))
    d = parse_message("more like the second one", f, shown=[])
    assert d.anchors == [] and any("earlier list" in n for n in d.notes)


def test_contradictory_bounds_do_not_crash(data_dir: Path) -> None:
    f = facts("synthetic", str(data_dir))
    state = next_state(replay([], f), "over 2 hours but under 90 minutes", f)[0]
    c = state.constraints
    assert c.max_runtime_min == 90 and c.min_runtime_min is None
    assert any("contradict" in n for n in state.notes)


def test_constraints_model_rejects_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="min_year"):
        Constraints(min_year=2000, max_year=1990)
    with pytest.raises(ValueError, match="both wanted and excluded"):
        Constraints(include_genres=["Comedy"], exclude_genres=["Comedy"])


WORDS = ["funny", "not", "no", "stupid", "under", "90", "minutes", "an", "hour", "and", "a", "half", "romance",
         "horror", "or", "but", "like", "toy", "story", "from", "the", "80s", "before", "2000", "shorter", "newer",
         "more", "second", "one", "series", "without", "dark", "recent", "between", "1990", "1980", ",", ".",
         "at", "least", "2", "hours", "is", "fine", "start", "over", "also", "kids", "sci-fi", "(1995)", "any",
         "ninety", "nineteen", "eighty", "hundred", "thousand", "twenty", "oh", "can't", "stand", "hate", "nothing",
         "gore-free", "?", "thanks", "is out", "the 20s", "'85", "quarter", "tom", "hanks", "-", "anything like"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), max_size=14) | st.text(max_size=120),
       st.lists(st.integers(min_value=1, max_value=180), max_size=5))
def test_any_text_parses_to_valid_constraints(data_dir: Path, words: Any, shown: list[int]) -> None:
    """Word salad and random unicode never crash the parser or produce an invalid state."""
    f = facts("synthetic", str(data_dir))
    text = " ".join(words) if isinstance(words, list) else words
    prior = replay([Turn(role="user", text="a comedy under 90 minutes"), Turn(role="assistant", item_ids=shown)], f)
    state, _ = next_state(prior, text, f)
    Constraints.model_validate(state.constraints.model_dump())  # re-validates every invariant
    assert all(g in f.catalog.genres for g in state.constraints.include_genres + state.constraints.exclude_genres)


def test_ordinals_refer_to_the_last_answer_but_titles_win(data_dir: Path) -> None:
    f = facts("ml-latest-small", str(data_dir))
    shown = [1, 2, 3]
    assert [a.item_id for a in parse_message("more like the last one", f, shown).anchors] == [3]
    assert [a.item_id for a in parse_message("similar to #2, but shorter", f, shown).anchors] == [2]
    assert [a.item_id for a in parse_message("more like these", f, shown).anchors] == shown
    samurai = parse_message("like The Last Samurai", f, shown).anchors
    assert [a.title for a in samurai] == ["Last Samurai, The (2003)"]
