"""The one codec of a stored row (``outerloop.contracts.rows``): one decoder for the agents and
the inner loop, times read as ms from ms, seconds or ISO-8601, and the two readers differing only
in what they do with a row that fails to decode or has expired."""

from __future__ import annotations

import json

import numpy as np
import pytest

from outerloop.contracts.events import ACTION_ID
from outerloop.contracts.rows import (AgentRow, Row, RowBranches, RowDecodeError, continue_rows, decode_row,
                                      live_rows, stored_rows)

NOW = 1_750_000_000_000


def row_bytes(row_id: str = "r", **fields: object) -> bytes:
    doc: dict[str, object] = {"row_id": row_id, "title": "t", "reason": "why", "items": [[3, 0.9], [5, 0.5]],
                              "produced_by": "tools", "run_id": "run-1", "model_version": "m",
                              "created_at": NOW - 1000, "expires_at": NOW + 60_000}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_a_written_row_decodes_to_itself() -> None:
    row = Row(row_id="top_picks", title="Top", reason="r", items=[(1, 0.5)], produced_by="tools", run_id="x",
              model_version="m", created_at=NOW, expires_at=NOW + 1, score_kind="log_prob", history_ts=NOW - 5)
    assert decode_row(row.model_dump_json()) == row


@pytest.mark.parametrize("expires_at", [NOW + 60_000, (NOW + 60_000) / 1000, "2025-06-15T15:07:40Z"])
def test_times_are_read_as_ms_from_ms_seconds_or_iso(expires_at: object) -> None:
    assert decode_row(row_bytes(expires_at=expires_at)).expires_at == NOW + 60_000
    assert decode_row(row_bytes(history_ts=(NOW - 7_000) / 1000)).history_ts == NOW - 7_000


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", row_bytes(expires_at="soon"), row_bytes(items=[["x", 1]]),
                                 row_bytes(run_id=None), row_bytes(surprise=1)])
def test_what_is_not_a_row_fails_to_decode(raw: bytes) -> None:
    with pytest.raises(RowDecodeError):
        decode_row(raw)


def test_the_agents_see_expired_rows_and_rebuild_what_does_not_decode() -> None:
    raw = {b"fresh": row_bytes("fresh"), b"old": row_bytes("old", expires_at=NOW - 1), b"bad": b"{"}
    rows = stored_rows(raw)
    assert set(rows) == {"fresh", "old"}  # "bad" is missing to them: its owner rebuilds it
    assert not rows["old"].is_fresh(NOW)


def test_the_inner_loop_skips_and_counts_what_it_cannot_serve() -> None:
    raw = {"newer": row_bytes("newer", created_at=NOW - 10), "older": row_bytes("older"),
           "old": row_bytes("old", expires_at=NOW - 1), "bad": b"{",
           "unknown": row_bytes("unknown", items=[[99, 1.0]]),
           "partly": row_bytes("partly", items=[[99, 1.0], [4, 0.2]], created_at=NOW - 20)}
    rows, skipped = live_rows(raw, now_ms=NOW, n_items=10, limit=5)
    assert [r.row.row_id for r in rows] == ["newer", "partly", "older"] and skipped == 3  # newest first
    partly = rows[1]
    assert partly.item_ids.tolist() == [4] and partly.scores.tolist() == [pytest.approx(0.2)]  # known items only
    assert AgentRow.of(decode_row(row_bytes(items=[[11, 1.0]])), n_items=10) is None
    assert [r.row.row_id for r in live_rows(raw, now_ms=NOW, n_items=10, limit=1)[0]] == ["newer"]


def branched_row(**fields: object) -> Row:
    """A log-prob row compiled at NOW - 100 with branches for items 3 and 5."""
    branches = RowBranches.pack([(3, [(7, -1.5), (8, -2.25)], -9.0), (5, [(9, -1.0)], None)])
    doc = {"row_id": "ens", "title": "t", "reason": "r", "items": [(3, -1.0), (5, -1.2), (6, -3.0)],
           "produced_by": "ensemble", "run_id": "x", "model_version": "m", "created_at": NOW,
           "expires_at": NOW + 60_000, "score_kind": "log_prob", "history_ts": NOW - 100, "branches": branches}
    doc.update(fields)
    return Row.model_validate(doc)


def test_branches_round_trip_packed_and_a_branch_is_the_row_one_interaction_later() -> None:
    row = branched_row()
    again = decode_row(row.model_dump_json())
    assert again == row and again.branches is not None and again.branches.width == 2
    ids, lps, floor = again.branches.branch(3)
    assert ids.tolist() == [7, 8] and lps.tolist() == [-1.5, -2.25] and floor == -9.0
    ids, _, floor = again.branches.branch(5)
    assert ids.tolist() == [9] and floor is None  # padding (item 0) is not an item
    assert again.branches.branch(6) is None
    cont = again.continued(3)
    assert cont is not None and cont.item_ids() == [7, 8] and cont.history_ts == row.history_ts
    assert cont.floor == -9.0 and cont.branches is None  # a branch does not branch again
    assert again.continued(4) is None
    # the right length but not base64: decoding is left to the branch, which then serves nothing
    bad = again.branches.model_copy(update={"items": "!" * len(again.branches.items)})
    assert bad.branch(3) is None


@pytest.mark.parametrize("change", [{"items": "too short"}, {"log_probs": "AAAA"}, {"floor": [1.0]},
                                    {"after": [3]}])
def test_branches_that_do_not_match_their_shape_fail_to_decode(change: dict[str, object]) -> None:
    doc = json.loads(branched_row().model_dump_json())
    doc["branches"].update(change)
    with pytest.raises(RowDecodeError, match="branches"):
        decode_row(json.dumps(doc))


def test_the_inner_loop_serves_the_branch_of_what_the_user_did_next() -> None:
    row = AgentRow.of(branched_row(), n_items=10)
    plain = AgentRow.of(decode_row(row_bytes("plain")), n_items=10)
    ts = np.asarray([NOW - 300, NOW - 100, NOW - 60, NOW - 10])  # the row saw up to NOW - 100

    def served(next_item: int, next_action: int | None = None, times: np.ndarray = ts) -> tuple[list[int], int]:
        items = np.asarray([1, 2, next_item, 4])
        actions = None if next_action is None else np.asarray([9, 9, next_action, 9])
        rows, hits = continue_rows([row, plain], items, times, actions, n_items=10)
        assert rows[1] is plain  # a row without branches is served as it is
        assert rows[0].continued == bool(hits)
        return rows[0].item_ids.tolist(), hits

    assert served(3) == ([7, 8], 1)
    assert served(5) == ([9], 1)
    assert served(6) == ([3, 5, 6], 0)  # no branch for it: the row itself
    assert served(3, ACTION_ID["skip"]) == ([3, 5, 6], 0)  # a skipped item was not taken
    assert served(3, ACTION_ID["rate"]) == ([7, 8], 1)
    # the row's own newest event is older than the history read: what came next is unknown
    assert served(3, times=ts + 1_000) == ([3, 5, 6], 0)
    # nothing since the row: it is fresh as it is
    assert served(3, times=ts - 1_000) == ([3, 5, 6], 0)
    # times as applied, not sorted (a late event): the first event after the row's is still the next
    assert served(3, times=np.asarray([NOW - 300, NOW - 100, NOW - 10, NOW - 60])) == ([7, 8], 1)
    # the served row counts one interaction fewer since it was compiled, ties included
    from outerloop.inner_loop.serving.funnel import log_prob_row

    tied = np.asarray([NOW - 300, NOW - 100, NOW - 60, NOW - 60])
    rows, _ = continue_rows([row], np.asarray([1, 2, 3, 4]), tied, None, n_items=10)
    assert log_prob_row(rows, tied).events_since == 1 and log_prob_row([row], tied).events_since == 2

