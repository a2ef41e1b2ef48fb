"""``outerloop eval replay``: replay a dataset and print one JSON object (``--json``) or a summary.

Which replay runs follows from the data: a dataset with timestamps (ml-100k, ml-latest-small)
gets **fresh vs stale**; one without (SASRec's ml-1m) gets **inner vs inner+outer**, which needs
``--artifacts`` trained on it (leave-one-out training never sees the served test item).
``--replay`` chooses explicitly.

Wiring: ``outerloop eval`` delegates here (see :func:`attach` / :func:`dispatch`); the module
also runs on its own: ``python -m outerloop.evals.replay_cli --dataset ml-100k --json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from outerloop.errors import UserInputError

REPLAYS = ("auto", "fresh-stale", "inner-outer")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="ml-100k, ml-latest-small (fresh vs stale), ml-1m (inner vs outer)")
    parser.add_argument("--data-dir", help="data root (default: OUTERLOOP_DATA_DIR)")
    parser.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="option of a generated dataset (synthetic), repeatable")
    parser.add_argument("--replay", choices=REPLAYS, default="auto", help="which replay (default: by the data)")
    parser.add_argument("--artifacts", metavar="DIR", help="trained artifacts (inner-outer: required; fresh-stale: "
                        "only ones this replay saved, checked by data hash)")
    parser.add_argument("--k", type=int, default=10, help="cut-off of NDCG@k / HR@k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON to FILE (input of `outerloop report`)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = auto)")
    fs = parser.add_argument_group("fresh vs stale")
    fs.add_argument("--test-share", type=float, default=0.1, help="last share of interactions (by time) served")
    fs.add_argument("--max-requests", type=int, help="serve a seeded random subset of the test interactions")
    fs.add_argument("--epochs", type=int, help="training epochs of the replay's model (default 100, early stopping)")
    fs.add_argument("--d-model", type=int, help="width of the replay's model (default 48)")
    fs.add_argument("--max-minutes", type=float, help="training wall-clock budget in minutes (default 20)")
    fs.add_argument("--save-model", metavar="DIR", help="save the model trained before the cut (reuse with --artifacts)")
    io = parser.add_argument_group("inner vs outer")
    io.add_argument("--users", type=int, default=500, help="evaluated users, a seeded sample (0 = all)")
    io.add_argument("--staleness", default="0", metavar="K,K,...",
                    help="the outer loop compiles rows from the history K interactions before the request, the "
                         "inner loop serves from the full history; one replay per K (e.g. 0,1,2,5,10)")
    io.add_argument("--no-train", action="store_true",
                    help="refuse to train what is missing (by default the ensemble, the ranker trained on outer-loop "
                         "rows and the inner-only ranker are trained once and cached in --artifacts)")
    io.add_argument("--no-ensemble", action="store_true", help="leave the ensemble agent out (its ablation by hand)")
    io.add_argument("--no-ablation", action="store_true", help="skip serving each user without each row in turn")
    io.add_argument("--ablate-at", default=None, metavar="K,K,...",
                    help="ablate only at these staleness settings (default: every one; each ablation serves every "
                         "user once more per row)")
    io.add_argument("--ingest-events", type=int, default=10,
                    help="of every user's prefix, the last N events fed to the co-watch graph and trending")
    io.add_argument("--redis-url", help="a real Redis (default: an embedded one in a temp dir); keys are namespaced")


def _validate(args: argparse.Namespace) -> None:
    for name, flag in (("k", "--k"), ("epochs", "--epochs"), ("d_model", "--d-model"),
                       ("max_minutes", "--max-minutes"), ("max_requests", "--max-requests")):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UserInputError(f"{flag} must be > 0, got {v}")
    if args.ingest_events < 0:
        raise UserInputError(f"--ingest-events must be >= 0, got {args.ingest_events}")
    if args.users < 0:
        raise UserInputError(f"--users must be >= 0, got {args.users}")
    from outerloop.evals.ranker_cli import parse_staleness

    parse_staleness(args.staleness, "--staleness")
    if not 0.0 < args.test_share < 1.0:
        raise UserInputError(f"--test-share must be in (0, 1), got {args.test_share}")
    if args.artifacts and not Path(args.artifacts).is_dir():
        raise UserInputError(f"--artifacts {args.artifacts}: directory not found")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    import torch

    from outerloop.data.datasets import load_dataset, parse_dataset_options

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir, **parse_dataset_options(args.dataset_opt))
    kind = args.replay
    if kind == "auto":
        kind = "fresh-stale" if data.users and all(u.ts is not None for u in data.users) else "inner-outer"
    report = _fresh_stale(args, data) if kind == "fresh-stale" else _inner_outer(args, data)
    text = json.dumps(report, indent=None if args.json else 2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.json:
        print(text)
    else:
        print(_summary(report), file=sys.stdout)
    return 0


def _fresh_stale(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    from outerloop.evals.replay import ReplayModel, run_fresh_vs_stale
    from outerloop.inner_loop.model.artifacts import Artifacts

    model = ReplayModel(**{k: v for k, v in dict(epochs=args.epochs, d_model=args.d_model, max_minutes=args.max_minutes,
                                                  threads=args.threads).items() if v is not None})
    arts = Artifacts.load(args.artifacts) if args.artifacts else None
    save = (lambda a: a.save(args.save_model)) if args.save_model else None
    return run_fresh_vs_stale(data, test_share=args.test_share, artifacts=arts, model=model, k=args.k,
                              max_requests=args.max_requests, seed=args.seed, on_trained=save,
                              progress=not args.json and sys.stderr.isatty())


def _inner_outer(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    from outerloop.evals.prepare import INNER_ONLY, STALENESS_MIX, prepare_outer_loop
    from outerloop.evals.replay import OuterReplay, inner_vs_outer
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.evals.ranker_cli import parse_staleness
    from outerloop.progress import progress_bar

    if not args.artifacts:
        raise UserInputError("inner vs outer needs --artifacts trained on the dataset (`outerloop train`)")
    staleness = parse_staleness(args.staleness, "--staleness")
    arts = Artifacts.load(args.artifacts)
    if len(arts.catalog) != len(data.catalog):
        raise UserInputError(f"--artifacts has {len(arts.catalog)} items, dataset {data.name!r} {len(data.catalog)}")
    show = None  # progress bars on stderr when it is a terminal (stdout keeps the JSON)
    parts = prepare_outer_loop(arts, data, ensemble=not args.no_ensemble, staleness=STALENESS_MIX,
                               allow_training=not args.no_train, progress=show)
    import gc

    gc.collect()
    gc.freeze()  # the data, models and training rows live as long as the replay: keep them out of GC passes
    target = None
    keys = None
    if args.redis_url:
        import uuid

        from outerloop.storage.clients import RedisTarget
        from outerloop.contracts.keys import namespaced_keys

        target = RedisTarget(url=args.redis_url)
        keys = namespaced_keys(f"olreplay-{uuid.uuid4().hex[:8]}")

    cfg = OuterReplay(n_users=args.users or None, seed=args.seed, k=args.k, ingest_events_per_user=args.ingest_events,
                      staleness=staleness,
                      ablate_at=(() if args.no_ablation else None if args.ablate_at is None
                                 else parse_staleness(args.ablate_at, "--ablate-at")))
    try:
        with progress_bar("replay", unit="user", enabled=show) as bar:
            report = asyncio.run(inner_vs_outer(
                arts, data, ranker=parts.ranker, inner_rankers=parts.inner_rankers(), inner_choice=INNER_ONLY,
                config=cfg, redis_target=target, keys=keys, ensemble=parts.ensemble or False,
                ranker_without_rows=parts.inner_ranker,
                progress=bar.update_to))
    finally:
        if target is not None and keys is not None:
            from outerloop.storage.clients import delete_namespace

            delete_namespace(target, keys.prefix)
    report["prepared"] = {
        "trained_now": parts.trained_now,
        "ensemble": None if parts.ensemble is None else {"weights": parts.ensemble.weights,
                                                         "temperature": parts.ensemble.temperature,
                                                         **parts.ensemble.report},
        "ranker_val_no_rows_ndcg@10": {name: (r.config.report.get("val_no_rows") or {}).get("ndcg@10")
                                       for name, r in parts.inner_rankers().items()},
        "served_ranker_reads_rows": parts.ranker.config.reads_rows,
        "served_ranker_rows_choice": parts.ranker.config.report.get("rows_choice"),
        "inner_arm": "the inner-only ranker: what the funnel serves a user without an ensemble row (the served "
                     "ranker is its correction); the served ranker fed no rows is reported beside it",
    }
    return report


def _summary(r: dict[str, Any]) -> str:
    k = r.get("k", 10)
    if r.get("replay") == "fresh_vs_stale":
        return (f"{r['dataset']}: {r['n_requests']} requests after {r['cut']}: fresh NDCG@{k} {r[f'fresh_ndcg@{k}']:.4f}, "
                f"stale {r[f'stale_ndcg@{k}']:.4f}, fresh/stale {r['fresh_over_stale']}")
    lines = [f"{r['dataset']}: {r['users']} users: inner NDCG@{k} {r[f'inner_ndcg@{k}']:.4f} ({r['inner_arm']})"]
    for s in r["by_staleness"]:
        b = s["budget"]
        lines.append(f"  staleness {s['staleness']}: inner+outer {s[f'outer_ndcg@{k}']:.4f}, lift {s['relative_lift']} "
                     f"(95% CI {s['relative_lift_ci95']}); agent runs {b['runs']}, killed {b['killed']}, "
                     f"retries {b['retries']}")
    return "\n".join(lines)


# --- wiring into `outerloop eval` --------------------------------------------------------------------


def attach(eval_parser: argparse.ArgumentParser) -> None:
    """Add ``replay`` as a sub-command of ``outerloop eval`` (call from its ``configure``)."""
    sub = eval_parser.add_subparsers(dest="eval_command", metavar="{replay}")
    configure(sub.add_parser("replay", help="replay a dataset: fresh vs stale, inner vs inner+outer",
                             description=__doc__.split("\n\n")[0] if __doc__ else None))


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the replay when ``outerloop eval replay`` was asked for; None otherwise."""
    return run(args) if getattr(args, "eval_command", None) == "replay" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outerloop.evals.replay_cli", description=__doc__.split("\n\n")[0])
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserInputError as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
