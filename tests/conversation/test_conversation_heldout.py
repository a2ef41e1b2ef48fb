"""The parser measured out of sample, on tests/data/conversation_heldout.json.

THE HELD-OUT SET IS NEVER USED TO TUNE THE PARSER. It was written in one sitting, before the
parser was reworked for issue 17 and apart from the tuning set (conversation_requests.json),
by reading each request as a person would; no rule, word list or threshold was changed because
of what it scores. This module only measures: it reports the exact-constraint accuracy (run with
``-s`` to see the report) and fails when the figures fall under what the issue requires:
>= 95% exact, 0 silent drops, and every returned item satisfying the request as a person reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from outerloop.benchmarks.conversation import (
    HELD_OUT,
    REQUESTS,
    load_requests,
    satisfaction_as_read,
    score_set,
)
from outerloop.conversation import ConversationService, UserHistory
from tests.conversation_support import CATALOGS, CatalogArtifacts, dataset, facts
from tests.api.test_api_fixtures import tiny_artifacts, tiny_data, tiny_dir  # noqa: F401

HELD = load_requests(HELD_OUT)
REQUIRED_ACCURACY = 0.95


def test_the_held_out_set_is_separate_from_the_tuning_set_and_big() -> None:
    assert len(HELD) >= 100
    assert len({r["id"] for r in HELD}) == len(HELD)
    assert {r["catalog"] for r in HELD} == set(CATALOGS)
    tuning = {r["message"].lower() for r in load_requests(REQUESTS)}
    assert not [r["message"] for r in HELD if r["message"].lower() in tuning]
    assert "never used to tune" in json.loads(HELD_OUT.read_text())["about"].lower()


@pytest.fixture(scope="module")
def held_out_score(data_dir: Path) -> dict[str, Any]:
    return score_set(HELD, {name: facts(name, str(data_dir)) for name in CATALOGS})


def _report(score: dict[str, Any]) -> str:
    lines = [f"held-out: {score['exact']}/{score['requests']} exact ({score['accuracy']:.1%}), "
             f"silent drops {score['silent_drops']}"]
    lines += [f"  {c}: {v['exact']}/{v['requests']}" for c, v in sorted(score["by_catalog"].items())]
    lines += [f"  wrong {w['id']}: {w['message']!r} {w['diff']}" for w in score["wrong"]]
    lines += [f"  dropped {d['id']}: {d['message']!r} {d['dropped']}" for d in score["dropped"]]
    return "\n".join(lines)


def test_exact_constraint_accuracy_on_the_held_out_set(held_out_score: dict[str, Any]) -> None:
    print("\n" + _report(held_out_score))
    assert held_out_score["accuracy"] >= REQUIRED_ACCURACY, _report(held_out_score)


def test_no_silent_drops_on_the_held_out_set(held_out_score: dict[str, Any]) -> None:
    """A constraint the request states is either in the parse or named as not applied."""
    assert held_out_score["silent_drops"] == 0, _report(held_out_score)


@pytest.fixture(scope="module")
def services(data_dir: Path, tiny_artifacts) -> dict[str, tuple[ConversationService, list[UserHistory]]]:  # noqa: F811
    out = {}
    for name in CATALOGS:
        data = dataset(name, str(data_dir))
        arts = tiny_artifacts if name == "synthetic" else CatalogArtifacts(data.catalog, name)
        users = [UserHistory(items=[int(i) for i in u.items[:30]]) for u in data.users[:2]]
        out[name] = (ConversationService(arts, catalog_name=name), users)
    return out


@pytest.mark.parametrize("catalog", CATALOGS)
async def test_every_pick_satisfies_the_request_as_a_person_reads_it(catalog: str, services) -> None:
    """Checked against the held-out set's own reading of each request (its ``expect``), not the
    parser's: a misread request enforced faithfully would fail here. Only what the catalog cannot
    check (runtimes on MovieLens, refused out loud) is left out."""
    service, users = services[catalog]
    result = await satisfaction_as_read(service, HELD, users, catalog)
    assert result["items"] > 0
    assert result["violations"] == 0, result["examples"]
