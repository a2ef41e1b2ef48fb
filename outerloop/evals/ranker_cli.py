"""``outerloop train-ranker``: train the multi-task ranker next to trained artifacts.

A CLI composes the loops: with ``--agent-rows outer`` it compiles the rows the real outer loop
would serve (:mod:`outerloop.evals.prepare`) and passes them in; the training itself
(:mod:`outerloop.inner_loop.ranker_train`) never imports the outer loop.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from outerloop.contracts.rows import RowsByUser
from outerloop.inner_loop.ranker_train import RANKER_BAGS, train_ranker


# --- command line: `outerloop train-ranker` (also `python -m outerloop.evals.ranker_cli`) -------
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", type=Path, required=True, help="trained artifacts; the ranker is saved there")
    p.add_argument("--dataset", default=None, help="dataset name (default: the one in the artifacts' manifest)")
    p.add_argument("--data-dir", type=Path, default=None, help="data root (default: OUTERLOOP_DATA_DIR)")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bags", type=int, default=RANKER_BAGS,
                   help="towers trained with successive seeds; held-out users choose how many to average "
                        "(default %(default)s)")
    p.add_argument("--agent-rows", choices=["simulated", "outer", "none"], default="simulated",
                   help="agent rows in the training lists: a simulated 'because you watched' row (fast), the "
                        "rows the real outer loop compiles at each user's validation cut (one cycle per user; the "
                        "ensemble agent's too when the artifacts have one), or none (the inner loop alone)")
    p.add_argument("--staleness", default="0,1,2,5,10", metavar="K,K,...",
                   help="with --agent-rows outer: every user's rows compiled fresh (K = 0, when listed) and once "
                        "more at a setting drawn from the rest (rows compiled K interactions before the cut)")
    p.add_argument("--residual-of", type=Path, default=None, metavar="DIR",
                   help="train a correction of the ranker in DIR (kept frozen) instead of a ranker of its own: "
                        "its score is DIR's plus the correction (how `prepare` builds the served ranker over the "
                        "inner-only one); DIR is recorded relative to --out")
    p.add_argument("--out", type=Path, default=None, help="where to save the ranker (default: --artifacts)")


def run(args: argparse.Namespace) -> int:
    from outerloop.errors import UserInputError
    from outerloop.inner_loop.model.artifacts import Artifacts, training_data

    if args.bags < 1:
        raise UserInputError(f"--bags must be >= 1, got {args.bags}")
    base = None
    if args.residual_of is not None:
        from outerloop.inner_loop.model.ranker import Ranker

        if not Ranker.exists(args.residual_of):
            raise UserInputError(f"--residual-of {args.residual_of}: no trained ranker there (ranker.json, ranker.pt)")
        base = Ranker.load(args.residual_of)
    artifacts = Artifacts.load(args.artifacts)
    data = training_data(artifacts, args.dataset, args.data_dir)
    rows: RowsByUser | None = None
    provenance = None
    if args.agent_rows == "outer":
        from outerloop.evals.prepare import outer_loop_rows, rows_provenance  # a CLI composes the loops

        staleness = parse_staleness(args.staleness, "--staleness")
        rows = outer_loop_rows(artifacts, data, staleness=staleness)
        provenance = {**rows_provenance(artifacts, staleness), "ranker_epochs": args.epochs}
    elif args.agent_rows == "none":
        from outerloop.evals.prepare import rows_provenance

        rows, provenance = {}, {**rows_provenance(artifacts, None), "ranker_epochs": args.epochs}
    ranker = train_ranker(artifacts, data, n_candidates=args.candidates, epochs=args.epochs, seed=args.seed,
                          max_history=int(getattr(getattr(artifacts.model, "cfg", None), "max_len", 200)),
                          agent_rows=rows, provenance=provenance, out_dir=args.out, bags=args.bags,
                          residual_of=base, residual_dir=None if base is None else os.path.relpath(
                              args.residual_of.resolve(), (args.out or args.artifacts).resolve()))
    rep = ranker.config.report
    print(json.dumps({"test": rep["test"], "test_lift_over_retrieval": rep["test_lift_over_retrieval"],
                      "weights": ranker.config.weights, "seconds": rep["seconds"]}, indent=2))
    return 0


def parse_staleness(text: str, flag: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); a clear error naming ``flag`` otherwise."""
    from outerloop.errors import UserInputError

    try:
        ks = tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise UserInputError(f"{flag} must be comma-separated integers >= 0, got {text!r}") from None
    if not ks or min(ks) < 0:
        raise UserInputError(f"{flag} must be comma-separated integers >= 0, got {text!r}")
    return ks


def main(argv: list[str] | None = None) -> int:
    """``python -m outerloop.evals.ranker_cli`` is ``outerloop train-ranker`` (same flags,
    same error handling)."""
    import sys

    from outerloop.cli import main as cli

    return cli(["train-ranker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
