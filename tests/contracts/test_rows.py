"""The one codec of a stored row (``outerloop.contracts.rows``): one decoder for the agents and
the inner loop, times read as ms from ms, seconds or ISO-8601, and the two readers differing only
in what they do with a row that fails to decode or has expired."""

from __future__ import annotations

import json

import pytest

from outerloop.contracts.rows import AgentRow, Row, RowDecodeError, decode_row, live_rows, stored_rows

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
