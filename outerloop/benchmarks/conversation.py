"""Conversational recommendations: parser accuracy on a tuning set and a held-out set,
constraint satisfaction, relevance, latency. Prints one JSON object.

    outerloop bench conversation --ml1m ARTIFACTS_DIR [--ml-latest-small DIR] [--synthetic DIR]

* ``parser``: two request sets through the rule parser, reported separately:
  ``tuning`` (tests/data/conversation_requests.json, the requests the rules were written
  against) and ``held_out`` (tests/data/conversation_heldout.json, written apart from the
  tuning set and never used to tune the parser). For each: requests whose constraints came out
  exactly as a person reads them, and *silent drops*: a constraint the request states that the
  parse lacks without naming anything as not applied, plus each phrase the set marks as
  unappliable that the answer does not name.
* ``satisfaction``: every tuning request on every catalog with artifacts, for several real
  users; every returned item is checked against the applied constraints. Must be 1.0.
* ``held_out_satisfaction``: every held-out request, every returned item checked against the
  constraints *as a person reads the request* (its ``expect``), less what the catalog cannot
  check and the answer refused out loud (runtimes on MovieLens). Must be 1.0.
* ``relevance``: leave-last-out. For each sampled user the last item is held out, a request is
  written from its metadata ("a comedy from the 90s"; on the synthetic world "... under 100
  minutes") and sent through the whole pipeline (parser included); HR@10 / NDCG@10 of the
  held-out item are reported beside the unconstrained baseline (same model, same pipeline, no
  constraints). The request leaks what the held-out item is like, which is the point: it
  measures how much a conversation that narrows correctly helps the collaborative ranking.
* ``llm``: the three fake-model cases (valid, slow -> killed, garbage) and what answered.
* ``latency_ms``: ``respond`` end to end (parse, filter, retrieve, rerank, explain), p50/p95.

Artifacts: ``outerloop train --dataset ml-1m --out DIR`` (and ml-latest-small). Without
``--synthetic`` a small synthetic model is trained into a temp dir first (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]  # outerloop/benchmarks/conversation.py -> the checkout
REQUESTS = REPO / "tests" / "data" / "conversation_requests.json"  # the tuning set
HELD_OUT = REPO / "tests" / "data" / "conversation_heldout.json"  # never used to tune the parser
DEFAULT_DATA = REPO.parent / "shared" / "data"
TESTS_SYNTHETIC = {"n_users": 120, "n_films": 120, "n_series": 4, "days": 10, "seed": 3}  # the request set's world
SYNTHETIC_OPTS = ["n_users=400", "n_films=300", "n_series=10", "days=30", "seed=11"]
GENRE_WORDS = {"Children's": "kids movie", "Children": "kids movie", "Film-Noir": "film noir", "Sci-Fi": "sci-fi",
               "IMAX": "imax movie", "Family": "family film"}
HARD = ("include_genres", "any_genres", "exclude_genres", "min_runtime_min", "max_runtime_min", "min_year",
        "max_year", "kind", "tones", "anchors")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else float("nan")


# --- catalogs and artifacts -------------------------------------------------------------------

def load_data(name: str, data_dir: Path, manifest: dict[str, Any] | None) -> Any:
    from outerloop.data.datasets import load_dataset

    if name == "synthetic":
        opts = dict((manifest or {}).get("dataset_options") or {})
        return load_dataset("synthetic", None, **opts)
    return load_dataset(name, data_dir)


def train_synthetic(out: Path) -> Path:
    from outerloop.cli import main as cli

    argv = ["train", "--dataset", "synthetic", "--out", str(out), "--epochs", "6", "--d-model", "32",
            "--max-len", "50", "--quiet", "--threads", "1"]
    for opt in SYNTHETIC_OPTS:
        argv += ["--dataset-opt", opt]
    with contextlib.redirect_stdout(io.StringIO()):
        if cli(argv) != 0:
            raise SystemExit("training the synthetic model failed")
    return out


# --- parser accuracy ----------------------------------------------------------------------------

def load_requests(path: Path = REQUESTS) -> list[dict[str, Any]]:
    return list(json.loads(Path(path).read_text())["requests"])


def request_turns(r: dict[str, Any], facts: Any) -> list[Any]:
    """A request's earlier turns; assistant turns' titles resolved to ids by exact title."""
    from outerloop.conversation import Turn

    turns = []
    for t in r.get("turns", []):
        if t["role"] == "assistant":
            turns.append(Turn(role="assistant", item_ids=[facts.titles.resolve(x, loose=False) for x in t["shown"]]))
        else:
            turns.append(Turn(role="user", text=t["text"]))
    return turns


def _defaults() -> dict[str, Any]:
    from outerloop.conversation import Constraints

    return {k: getattr(Constraints(), k) for k in HARD}


def comparable(c: Any) -> dict[str, Any]:
    """The fields a request's ``expect`` speaks about, anchors as titles."""
    got = c.model_dump(include=set(HARD))
    got["anchors"] = [a["title"] for a in got["anchors"]]
    return got


def _missing(want: Any, got: Any) -> bool:
    """Whether a constraint the request states is absent from the parse (not just different)."""
    if isinstance(want, list):
        return bool(set(want) - set(got))
    return want is not None and got is None


def score_request(r: dict[str, Any], facts: Any) -> dict[str, Any]:
    """One request through the rule parser: exact or not, and its silent drops."""
    from outerloop.conversation import replay
    from outerloop.conversation.session import next_state

    state = next_state(replay(request_turns(r, facts), facts), r["message"], facts)[0]
    got = comparable(state.constraints)
    want = {**_defaults(), **r["expect"]}
    named = [u.phrase for u in state.unapplied]
    drops = [f"{k}={want[k]!r}" for k in r["expect"] if _missing(want[k], got[k]) and not named]
    drops += [f"unapplied {p!r}" for p in r.get("unapplied", [])
              if not any(p.lower() in n or n in p.lower() for n in named)]
    return {"id": r["id"], "exact": got == want, "silent_drops": drops,
            "diff": {k: {"want": want[k], "got": got[k]} for k in want if got[k] != want[k]}, "unapplied": named,
            "readings": state.readings}


def score_set(requests: list[dict[str, Any]], facts_by_catalog: dict[str, Any]) -> dict[str, Any]:
    """Exact-constraint accuracy and silent drops over a request set, overall and per catalog."""
    per: dict[str, dict[str, Any]] = {}
    right = total = drops = 0
    wrong: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for r in requests:
        s = score_request(r, facts_by_catalog[r["catalog"]])
        c = per.setdefault(r["catalog"], {"requests": 0, "exact": 0})
        c["requests"] += 1
        c["exact"] += s["exact"]
        total += 1
        right += s["exact"]
        drops += len(s["silent_drops"])
        if not s["exact"]:
            wrong.append({"id": r["id"], "message": r["message"], "diff": s["diff"]})
        if s["silent_drops"]:
            dropped.append({"id": r["id"], "message": r["message"], "dropped": s["silent_drops"]})
    for c in per.values():
        c["accuracy"] = round(c["exact"] / max(1, c["requests"]), 4)
    return {"requests": total, "exact": right, "accuracy": round(right / max(1, total), 4), "silent_drops": drops,
            "by_catalog": per, "wrong": wrong, "dropped": dropped}


def catalog_facts(data_dir: Path) -> dict[str, Any]:
    """The three catalogs the request sets are written against (the synthetic one: the tests' world)."""
    from outerloop.conversation import CatalogFacts
    from outerloop.data.datasets import load_dataset

    out = {}
    for name in ("ml-1m", "ml-latest-small", "synthetic"):
        data = load_dataset("synthetic", None, **TESTS_SYNTHETIC) if name == "synthetic" else load_dataset(name, data_dir)
        out[name] = CatalogFacts(data.catalog, name=name)
    return out


def parser_accuracy(data_dir: Path) -> dict[str, Any]:
    """Both request sets, reported separately (the held-out set is never used for tuning)."""
    facts = catalog_facts(data_dir)
    return {"tuning": score_set(load_requests(REQUESTS), facts), "held_out": score_set(load_requests(HELD_OUT), facts)}


def person_constraints(r: dict[str, Any], facts: Any) -> Any:
    """The constraints of a request as its ``expect`` states them (a person's reading), tone tags
    included, less what this catalog cannot check; anchors are soft and left out."""
    from outerloop.conversation import Constraints, applicable
    from outerloop.conversation.lexicon import tone_tags

    e = {k: v for k, v in r["expect"].items() if k != "anchors"}
    _, avoid = tone_tags(list(e.get("tones", [])))
    return applicable(Constraints(**e, exclude_tags=avoid), facts)[0]


async def satisfaction_as_read(service: Any, requests: list[dict[str, Any]], histories: list[Any],
                               catalog: str) -> dict[str, Any]:
    """Every returned item of every request (on ``catalog``) against the request as a person reads it."""
    from outerloop.conversation import violations

    n_resp = n_items = 0
    bad: list[dict[str, Any]] = []
    for r in requests:
        if r["catalog"] != catalog:
            continue
        want = person_constraints(r, service.facts)
        turns = request_turns(r, service.facts)
        for h in histories:
            resp = await service.respond("bench", r["message"], turns, h, k=10)
            n_resp += 1
            for p in resp.items:
                n_items += 1
                why = violations(service.facts.item(p.item_id), want)
                if why:
                    bad.append({"id": r["id"], "item": p.title, "violates": why})
    return {"responses": n_resp, "items": n_items, "violations": len(bad),
            "satisfaction": round(1.0 - len(bad) / max(1, n_items), 6), "examples": bad[:10]}


# --- satisfaction -------------------------------------------------------------------------------

async def satisfaction(service: Any, data: Any, users: int) -> dict[str, Any]:
    from outerloop.conversation import Turn, UserHistory, violations

    reqs = json.loads(REQUESTS.read_text())["requests"]
    histories = [UserHistory(items=[int(i) for i in u.items[:-1]][-200:]) for u in data.users[:users]]
    n_resp = n_items = bad = empty = 0
    refused: dict[str, int] = {}
    latencies: list[float] = []
    for r in reqs:
        turns = [Turn(role="user", text=t["text"]) for t in r.get("turns", []) if t["role"] == "user"]
        for h in histories:
            t0 = time.perf_counter()
            resp = await service.respond("bench", r["message"], turns, h, k=10)
            latencies.append((time.perf_counter() - t0) * 1000)
            n_resp += 1
            empty += not resp.items
            for ref in resp.refused:
                refused[ref.field] = refused.get(ref.field, 0) + 1
            for p in resp.items:
                n_items += 1
                item = service.facts.item(p.item_id)
                if violations(item, resp.applied) or p.item_id in h.items or item.title != p.title:
                    bad += 1
    return {"responses": n_resp, "items": n_items, "violations": bad,
            "satisfaction": round(1.0 - bad / max(1, n_items), 6), "empty_responses": empty,
            "refused_by_field": refused,
            "latency_ms": {"p50": pct(latencies, 50), "p95": pct(latencies, 95), "n": len(latencies)}}


# --- relevance ----------------------------------------------------------------------------------

def request_for(item: Any, with_era: bool, with_runtime: bool) -> str:
    genre = item.genres[0] if item.genres else None
    words = [GENRE_WORDS.get(genre, genre.lower()) if genre else "something"]
    if item.kind == "episode":
        words.append("series")
    if with_era and item.year is not None:
        words.append(f"from the {item.year // 10 * 10}s")
    if with_runtime and item.runtime_min is not None:
        words.append(f"under {int(math.ceil((item.runtime_min + 1) / 10.0) * 10)} minutes")
    text = " ".join(words)
    return ("an " if text[0] in "aeiou" else "a ") + text


def model_top(artifacts: Any, hist: Any, k: int) -> list[int]:
    scores = artifacts.scores([hist.items], None if hist.actions is None else [hist.actions],
                              None if hist.ts is None else [hist.ts])[0].astype(np.float64)  # (N+1,)
    scores[0] = -np.inf
    scores[np.asarray(hist.items, dtype=np.int64)] = -np.inf
    return [int(i) for i in np.argsort(-scores)[:k]]


def _rank(ids: list[int], target: int) -> int | None:
    return ids.index(target) if target in ids else None


async def relevance(service: Any, data: Any, n_users: int, seed: int, k: int, runtime: bool) -> dict[str, Any]:
    from outerloop.conversation import Constraints, UserHistory, violations

    rng = np.random.default_rng(seed)
    eligible_users = [u for u in data.users if len(u) >= 3]
    pick = rng.choice(len(eligible_users), size=min(n_users, len(eligible_users)), replace=False)
    variants = {"genre": (False, False), "genre+decade": (True, False)}
    if runtime:
        variants["genre+runtime"] = (False, True)
        variants["genre+decade+runtime"] = (True, True)
    hits: dict[str, list[bool]] = {v: [] for v in ["model", "baseline", *variants]}
    ndcg: dict[str, list[float]] = {v: [] for v in hits}
    skipped = 0
    target_ok = {v: 0 for v in variants}
    parsed_ok = {v: 0 for v in variants}
    for n, idx in enumerate(pick.tolist()):
        u = eligible_users[idx]
        items = [int(i) for i in u.items]
        target = items[-1]
        hist = UserHistory(items=items[:-1],
                           ts=None if u.ts is None else [int(t) for t in u.ts[:-1]],
                           actions=None if u.actions is None else [int(a) for a in u.actions[:-1]])
        if target in hist.items:  # a re-watch cannot be recommended (seen items are filtered)
            skipped += 1
            continue
        base = service.plan(Constraints(), hist, k)
        r = _rank([p.item_id for p in base.picks], target)
        hits["baseline"].append(r is not None)
        ndcg["baseline"].append(0.0 if r is None else 1.0 / math.log2(r + 2))
        r = _rank(model_top(service.artifacts, hist, k), target)
        hits["model"].append(r is not None)
        ndcg["model"].append(0.0 if r is None else 1.0 / math.log2(r + 2))
        item = service.facts.item(target)
        for name, (era, rt) in variants.items():
            resp = await service.respond("bench", request_for(item, era, rt), [], hist, k=k)
            target_ok[name] += not violations(item, resp.applied)
            parsed_ok[name] += bool(item.genres) and item.genres[0] in resp.applied.include_genres
            r = _rank([p.item_id for p in resp.items], target)
            hits[name].append(r is not None)
            ndcg[name].append(0.0 if r is None else 1.0 / math.log2(r + 2))
        if n and n % 200 == 0:
            log(f"  relevance: {n}/{len(pick)} users")
    users = len(hits["baseline"])
    out: dict[str, Any] = {
        "users": users, "skipped_rewatch": skipped, "k": k,
        "protocol": "leave-last-out; request written from the held-out item",
        "model": "the model's raw top-k (user vector . item vectors, seen removed): no conversation",
        "baseline": "the conversation pipeline with no constraints (retrieve, rerank, explain)",
    }
    for name in hits:
        what = {"what": out[name]} if name in ("model", "baseline") else {}
        out[name] = {**what, f"hr@{k}": round(float(np.mean(hits[name])), 4),
                     f"ndcg@{k}": round(float(np.mean(ndcg[name])), 4)}
        if name in variants:
            out[name]["held_out_satisfies_constraints"] = round(target_ok[name] / max(1, users), 4)
            out[name]["genre_parsed"] = round(parsed_ok[name] / max(1, users), 4)
            out[name]["example_request"] = request_for(service.facts.item(int(eligible_users[int(pick[0])].items[-1])),
                                                       *variants[name])
    return out


# --- the LLM fallbacks --------------------------------------------------------------------------

async def llm_cases(artifacts: Any) -> dict[str, Any]:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from outerloop.budgets import Budget
    from outerloop.conversation import ConversationService, LLMParser

    valid = json.dumps({"include_genres": ["Comedy"], "exclude_genres": ["Romance"], "max_runtime_min": 90,
                        "tones": ["funny", "not stupid"], "suggestions": [{"title": "Not A Real Film 9000"}]})
    cases = {
        "valid": (FakeListChatModel(responses=[valid]), Budget(latency_ms=2000)),
        "slow": (FakeListChatModel(responses=[valid], sleep=0.5), Budget(latency_ms=100)),
        "garbage": (FakeListChatModel(responses=["comedies, obviously!"]), Budget(latency_ms=2000)),
    }
    out = {}
    for name, (model, budget) in cases.items():
        svc = ConversationService(artifacts, llm=LLMParser(model, budget))
        resp = await svc.respond("bench", "something funny but not stupid, under 90 minutes, no romance")
        out[name] = {"parser": resp.parser, "llm_outcome": (resp.llm_run or {}).get("outcome"),
                     "llm_elapsed_ms": round((resp.llm_run or {}).get("elapsed_ms", 0.0), 1),
                     "fallback": resp.parser_fallback, "items": len(resp.items),
                     "suggestions_kept": len(resp.constraints.suggestions)}
    return out


# --- main ---------------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from outerloop.conversation import ConversationService, UserHistory
    from outerloop.inner_loop.model.artifacts import Artifacts

    torch.set_num_threads(1)
    started = time.perf_counter()
    dirs: dict[str, Path | None] = {"ml-1m": args.ml1m, "ml-latest-small": args.ml_latest_small,
                                    "synthetic": args.synthetic}
    tmp = tempfile.TemporaryDirectory(prefix="conv-bench-")
    if dirs["synthetic"] is None:
        log("training a small synthetic model ...")
        dirs["synthetic"] = train_synthetic(Path(tmp.name) / "synthetic")
    result: dict[str, Any] = {"bench": "conversation", "python": platform.python_version(), "artifacts": {},
                              "parser": {}, "satisfaction": {}, "held_out_satisfaction": {}, "relevance": {},
                              "skipped": {}}
    for name, d in dirs.items():
        if d is None or not (Path(d) / "manifest.json").is_file():
            flag = "--ml1m" if name == "ml-1m" else f"--{name}"
            result["skipped"][name] = f"no artifacts: outerloop train --dataset {name} --out DIR, then {flag} DIR"
            continue
        arts = Artifacts.load(d)
        data = load_data(name, args.data_dir, arts.manifest)
        service = ConversationService(arts, catalog_name=name)
        result["artifacts"][name] = {"dir": str(d), "model_version": arts.model_version,
                                     "test_hr@10": (arts.manifest.get("metrics") or {}).get("hr@10")}
        log(f"{name}: satisfaction ...")
        result["satisfaction"][name] = await satisfaction(service, data, args.sat_users)
        histories = [UserHistory(items=[int(i) for i in u.items[:-1]][-200:]) for u in data.users[:args.sat_users]]
        result["held_out_satisfaction"][name] = await satisfaction_as_read(service, load_requests(HELD_OUT),
                                                                           histories, name)
        log(f"{name}: relevance ...")
        result["relevance"][name] = await relevance(service, data, args.users, args.seed, args.k,
                                                    runtime=service.facts.has_runtimes)
        if name == "synthetic":
            result["llm"] = await llm_cases(arts)
    result["parser"] = parser_accuracy(args.data_dir)
    sats = [s["satisfaction"] for s in result["satisfaction"].values()]
    result["all_constraints_satisfied"] = bool(sats) and all(s == 1.0 for s in sats)
    read = [s["satisfaction"] for s in result["held_out_satisfaction"].values()]
    result["held_out_satisfied_as_read"] = bool(read) and all(s == 1.0 for s in read)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="outerloop bench conversation", description=__doc__.split("\n")[0])
    p.add_argument("--ml1m", type=Path, help="ML-1M artifacts directory")
    p.add_argument("--ml-latest-small", type=Path, help="ml-latest-small artifacts directory")
    p.add_argument("--synthetic", type=Path, help="synthetic artifacts directory (trained here when omitted)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--users", type=int, default=1000, help="users sampled for relevance, per catalog")
    p.add_argument("--sat-users", type=int, default=3, help="users per request for satisfaction")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
