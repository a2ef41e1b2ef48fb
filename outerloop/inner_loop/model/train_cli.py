"""``outerloop train``: train the sequential transformer and write its artifacts directory.

Imports at the top stay light (argparse only) so ``outerloop --help`` is fast; torch, FAISS
and the data loaders are imported by :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from outerloop.errors import UserInputError

DEFAULT_ADAPTER_DIM = 16


def configure(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", default="ml-1m", help="dataset name (ml-1m, ml-100k, ml-latest-small, synthetic, ...)")
    d.add_argument("--data-dir", help="data root (one folder per dataset) or the dataset's own folder")
    d.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a generated dataset, e.g. --dataset-opt n_users=500 (repeatable)")
    d.add_argument("--out", required=True, help="artifacts directory to write (created; files in it are replaced)")

    w = parser.add_argument_group("warm start and versions")
    w.add_argument("--init-from", metavar="DIR", help="continue from these artifacts (the catalog may have grown)")
    w.add_argument("--freeze-backbone", action="store_true",
                   help="keep the parent's encoder and known items as they are; train the new items' embeddings, "
                        "a residual adapter on the user vector and the heads (needs --init-from)")
    w.add_argument("--adapter-dim", type=int, default=None,
                   help=f"width of that adapter (default {DEFAULT_ADAPTER_DIM}, or the parent's when it has one)")
    w.add_argument("--align-to", metavar="DIR",
                   help="rotate the new vector space onto these artifacts' (default: the --init-from parent)")

    m = parser.add_argument_group("model")
    m.add_argument("--d-model", type=int, help="embedding width (default 64)")
    m.add_argument("--layers", type=int, help="transformer blocks (default 2)")
    m.add_argument("--heads", type=int, help="attention heads (default 1)")
    m.add_argument("--max-len", type=int, help="context window: the last N events (default 200)")
    m.add_argument("--dropout", type=float, help="dropout (default 0.2)")
    m.add_argument("--attention", choices=["full", "local"], help="full causal or blocked local-window attention")
    m.add_argument("--window", type=int, help="local attention window (default 64)")
    m.add_argument("--no-metadata", action="store_true", help="ID embeddings only (no cold start)")
    m.add_argument("--no-genre-head", action="store_true", help="drop the auxiliary next-genre head")

    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 200; early stopping ends sooner)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--patience", type=int, default=None, help="validations without improvement before stopping")
    t.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget for training")
    t.add_argument("--id-dropout", type=float, default=None, help="share of items trained as metadata-only per step")
    t.add_argument("--genre-weight", type=float, default=None, help="weight of the next-genre loss")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: every core while the machine is idle, one when other "
                        "processes compete for them; re-chosen each epoch)")
    t.add_argument("--no-bf16", action="store_true",
                   help="fp32 logits matmuls even where bf16 would be faster (default: bf16 where this CPU runs "
                        "it natively, measured at start)")
    t.add_argument("--index", choices=["auto", "flat", "hnsw"], default="auto", help="FAISS index kind")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive(args: argparse.Namespace, name: str, flag: str, allow_zero: bool = False) -> None:
    v = getattr(args, name)
    if v is not None and (v < 0 or (v == 0 and not allow_zero)):
        raise UserInputError(f"{flag} must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def _fraction(args: argparse.Namespace, name: str, flag: str) -> None:
    v = getattr(args, name)
    if v is not None and not 0.0 <= v < 1.0:
        raise UserInputError(f"{flag} must be in [0, 1), got {v}")


def validate(args: argparse.Namespace) -> None:
    """Flag checks argparse cannot do; each message names the flag."""
    for name, flag in (("d_model", "--d-model"), ("layers", "--layers"), ("heads", "--heads"), ("max_len", "--max-len"),
                       ("window", "--window"), ("epochs", "--epochs"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                       ("patience", "--patience"), ("max_minutes", "--max-minutes"), ("threads", "--threads")):
        _positive(args, name, flag)
    _positive(args, "genre_weight", "--genre-weight", allow_zero=True)
    _fraction(args, "dropout", "--dropout")
    _fraction(args, "id_dropout", "--id-dropout")
    if args.max_len is not None and args.max_len < 2:
        raise UserInputError(f"--max-len must be at least 2, got {args.max_len}")
    if args.d_model is not None and args.heads is not None and args.d_model % args.heads:
        raise UserInputError(f"--d-model {args.d_model} is not divisible by --heads {args.heads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a directory")
    if args.freeze_backbone and not args.init_from:
        raise UserInputError("--freeze-backbone needs --init-from DIR (there is no backbone to freeze)")
    if args.adapter_dim is not None and not args.freeze_backbone:
        raise UserInputError("--adapter-dim goes with --freeze-backbone (the adapter is what it trains)")
    _positive(args, "adapter_dim", "--adapter-dim")
    for flag, value in (("--init-from", args.init_from), ("--align-to", args.align_to)):
        if value is not None and not Path(value).is_dir():
            raise UserInputError(f"{flag} {value}: artifacts directory not found")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UserInputError(f"--data-dir {args.data_dir}: directory not found")


def run(args: argparse.Namespace) -> int:
    validate(args)
    import torch  # heavy imports only once the flags are known to be good

    from outerloop.data.datasets import dataset_hash, load_dataset, parse_dataset_options
    from outerloop.inner_loop.model.evaluate import evaluate_recommender, item_counts, train_sequences
    from outerloop.inner_loop.model.align import align_to_parent
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.train import TrainConfig, model_config_for, train
    from outerloop.inner_loop.model.warm_start import new_item_ids, warm_start_model

    data = load_dataset(args.dataset, args.data_dir, **parse_dataset_options(args.dataset_opt))
    model_overrides = dict(
        d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, max_len=args.max_len, dropout=args.dropout,
        attention=args.attention, window=args.window,
        use_metadata=False if args.no_metadata else None, genre_head=False if args.no_genre_head else None,
    )
    tcfg = TrainConfig(**{k: v for k, v in dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience, max_minutes=args.max_minutes,
        id_dropout=args.id_dropout, genre_weight=args.genre_weight, seed=args.seed, num_threads=args.threads,
    ).items() if v is not None}, bf16=False if args.no_bf16 else None, freeze_backbone=args.freeze_backbone)

    parent = Artifacts.load(args.init_from) if args.init_from else None
    align_parent = Artifacts.load(args.align_to) if args.align_to else parent
    new_items = None
    if parent is not None:
        torch.manual_seed(tcfg.seed)
        counts = item_counts(train_sequences(data), len(data.catalog))
        if args.freeze_backbone:
            model_overrides["adapter_dim"] = args.adapter_dim or parent.model.cfg.adapter_dim or DEFAULT_ADAPTER_DIM
            new_items = new_item_ids(parent, data)
        model = warm_start_model(parent, data, counts, **model_overrides)
        cfg = model.cfg
    else:
        model = None
        cfg = model_config_for(data, **model_overrides)

    out = Path(args.out)
    result = train(data, cfg, tcfg, model=model, checkpoint_dir=out / "checkpoints", progress=not args.quiet,
                   new_items=new_items)
    manifest = {
        "dataset": data.name,
        "dataset_options": parse_dataset_options(args.dataset_opt),
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        "data_hash": dataset_hash(data),
        "config": {"train": dataclasses.asdict(tcfg)},
        "wall_time_s": round(result.wall_s, 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "init_from": parent.model_version if parent is not None else None,
        "new_items": int(len(new_items)) if new_items is not None else None,
        "history": result.history,
    }
    arts = Artifacts.from_model(result.model, data.catalog, result.popularity, manifest, dir=out, index_kind=args.index)
    if align_parent is not None:
        align_to_parent(arts, align_parent)
    # test metrics are reported, never used to choose anything (the checkpoint is chosen on valid)
    test = evaluate_recommender(arts.scores, arts.popularity, data, split="test", seed=tcfg.seed)
    arts.manifest["metrics"] = {"valid_best": result.valid, **test}
    arts.save(out)
    summary = {
        "out": str(out), "model_version": arts.model_version, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "wall_time_s": round(result.wall_s, 1), "metrics": arts.manifest["metrics"],
    }
    print(json.dumps(summary), file=sys.stdout)
    return 0
