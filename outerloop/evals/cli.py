"""``outerloop eval``: offline metrics of trained artifacts on SASRec's leave-one-out split.

Prints one JSON object (``--json``) or a short table: full-ranking HR@10 / NDCG@10 (the
user's earlier items excluded), the same under the sampled-100-negatives protocol, and the
popularity baseline beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from outerloop.errors import UserInputError


def configure(parser: argparse.ArgumentParser) -> None:
    from outerloop.evals import replay_cli

    replay_cli.attach(parser)  # `outerloop eval replay ...`
    parser.add_argument("--artifacts", metavar="DIR", help="artifacts directory written by `outerloop train` (required)")
    parser.add_argument("--dataset", help="dataset to evaluate on (default: the one in the manifest)")
    parser.add_argument("--data-dir", help="data root (default: the one in the manifest)")
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument("--k", type=int, default=10, help="cut-off of HR@k and NDCG@k")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled negatives and tie breaks")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from outerloop.evals import replay_cli

    if (code := replay_cli.dispatch(args)) is not None:
        return code
    if not args.artifacts:
        raise UserInputError("--artifacts is required (or run `outerloop eval replay ...`)")
    if args.k <= 0:
        raise UserInputError(f"--k must be > 0, got {args.k}")
    if args.threads <= 0:
        raise UserInputError(f"--threads must be > 0, got {args.threads}")
    if not Path(args.artifacts).is_dir():
        raise UserInputError(f"--artifacts {args.artifacts}: artifacts directory not found")
    import torch

    from outerloop.data.datasets import dataset_hash, load_dataset
    from outerloop.inner_loop.model.evaluate import evaluate_recommender
    from outerloop.inner_loop.model.artifacts import Artifacts

    torch.set_num_threads(args.threads)
    arts = Artifacts.load(args.artifacts)
    name = args.dataset or arts.manifest.get("dataset")
    if not name:
        raise UserInputError(f"{args.artifacts}: the manifest names no dataset; pass --dataset")
    data_dir = args.data_dir or arts.manifest.get("data_dir")
    data = load_dataset(name, data_dir, **(arts.manifest.get("dataset_options") or {}))
    if len(data.catalog) != len(arts.catalog):
        raise UserInputError(f"dataset {name!r} has {len(data.catalog)} items, the model {len(arts.catalog)}")
    report = {
        "model_version": arts.model_version,
        "dataset": name,
        "data_hash_matches": dataset_hash(data) == arts.manifest.get("data_hash"),
        "k": args.k,
        **evaluate_recommender(arts.scores, arts.popularity, data, split=args.split, k=args.k, seed=args.seed),
    }
    if args.json:
        print(json.dumps(report))
    else:
        k = args.k
        pop = report["popularity"]
        print(f"{arts.model_version} on {name} ({args.split}, {report['n_users']} users)")
        print(f"{'':12} {'HR@' + str(k):>8} {'NDCG@' + str(k):>8} {'s100 HR':>8} {'s100 NDCG':>9}")
        for label, r in (("model", report), ("popularity", pop)):
            s = r["sampled100"]
            print(f"{label:12} {r[f'hr@{k}']:8.4f} {r[f'ndcg@{k}']:8.4f} {s[f'hr@{k}']:8.4f} {s[f'ndcg@{k}']:9.4f}")
    return 0
