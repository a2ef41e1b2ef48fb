"""The ensemble agent: what the outer loop can afford and a request cannot.

Once per session (and on sweeps and manual refreshes) it asks the ``ensemble_rank`` tool for the
user's most likely next items under the heavy model (several transformers and EASE, see
:mod:`outerloop.inner_loop.model.ensemble`) and stages them as one row whose scores are
log-probabilities (``score_kind="log_prob"``). The inner loop serves that row, and its ranker
reads the log-probabilities as features of every candidate, together with how many interactions
the user made since the row was compiled, so a row compiled a few interactions ago still helps
and is trusted less. Genres the user is backing off from are left out, as in every built-in row.

A row compiled before the user's latest interactions is stale, and on ML-1M a row one
interaction old was worth a tenth of a fresh one. So the agent also spends its budget on
guesses: for each of the row's ``ensemble_branches`` likeliest items, the row as it would be
had the user's next interaction been that item (``RowBranches``; the ensemble encodes the history
once and each guess costs one more token). When the user's next interaction was one of them,
the inner loop serves that branch: the row is fresh again, with no agent run in between.

``OuterLoop`` adds this agent by itself when the artifacts have a trained ensemble.
"""

from __future__ import annotations

from outerloop.agents.sdk import AgentContext, agent
from outerloop.contracts.rows import RowBranches
from outerloop.contracts.budget import Budget
from outerloop.memory.facts import GenreBackoff

ENSEMBLE_AGENT = "ensemble"
ROW_ENSEMBLE = "ensemble_picks"
ROW_TITLE = "More for you, from a bigger model"


@agent(name=ENSEMBLE_AGENT, budget=Budget(latency_ms=250, max_tool_calls=2, max_llm_tokens=0),
       tools=["ensemble_rank", "item_metadata"], memory_scopes=["genre_backoff"], rows=(ROW_ENSEMBLE,),
       triggers=("session_closed", "sweep", "manual"))
async def ensemble_agent(ctx: AgentContext) -> dict[str, int]:
    """Scores the whole catalog with the heavy ensemble and stages the top items as a log-prob row."""
    h = ctx.history  # skips included: the ensemble reads them as negative feedback (see ensemble.py)
    items, actions, ts = h.items, h.actions, h.ts
    if len(items) == 0:
        return {"items": 0}
    n = ctx.config.ensemble_row_len
    out = await ctx.call_tool("ensemble_rank", {
        "items": items.tolist(), "actions": actions.tolist() or None, "ts": ts.tolist() or None,
        "exclude": sorted(ctx.seen), "k": n, "branches": ctx.config.ensemble_branches,
        "branch_k": ctx.config.ensemble_branch_len})
    pairs = [(it.item_id, it.score) for it in out.items]
    branches = [(b.after, list(zip(b.items, b.log_probs)), b.floor) for b in out.branches]
    avoid = {f.genre.lower() for f in ctx.memory(GenreBackoff) if f.until.timestamp() * 1000 > ctx.now_ms}
    if avoid and pairs:
        named = sorted({i for i, _ in pairs} | {i for _, b, _ in branches for i, _ in b})
        meta = await ctx.call_tool("item_metadata", {"item_ids": named})
        banned = {m.item_id for m in meta.items if avoid & {g.lower() for g in m.genres}}
        pairs = [(i, s) for i, s in pairs if i not in banned]
        branches = [(a, [(i, s) for i, s in b if i not in banned], f) for a, b, f in branches if a not in banned]
    if pairs:  # an empty result keeps the last good row
        ctx.emit_row(ROW_ENSEMBLE, title=ROW_TITLE, reason=ctx.step.reason or "the heavy model's picks",
                     items=pairs, score_kind="log_prob",
                     branches=RowBranches.pack(branches) if branches else None)
    return {"items": len(pairs), "branches": len(branches)}
