"""Benchmarks of the sequential model on ML-1M. Each mode prints one JSON object.

    outerloop bench model --cold-start   [--epochs N] [--max-minutes M] [--id-dropout P]
    outerloop bench model --attention    [--epochs N] [--max-minutes M] [--window W] [--kinds full,local]
    outerloop bench model --align OLD_DIR NEW_DIR
    outerloop bench model --encode-latency DIR
    outerloop bench model --index-scale [--n-items 1000000]

(``python bench/model_ml1m.py`` takes the same flags.)

Timings on a shared machine are noisy: each mode records the load average next to them, and
the latency modes also report CPU time, which load moves less. The training modes keep their
models in memory (nothing is written); ``--align`` compares two artifacts directories made by
``outerloop train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from outerloop.data.datasets import load_dataset
from outerloop.data.schema import InteractionData, UserSequence
from outerloop.inner_loop.model.evaluate import evaluate, leave_one_out, popularity_scorer, random_scorer
from outerloop.inner_loop.model.align import align_to_parent
from outerloop.inner_loop.model.artifacts import Artifacts
from outerloop.inner_loop.model.index import build_item_index
from outerloop.inner_loop.model.transformer import Batch, ModelConfig, SeqRecModel
from outerloop.inner_loop.model.train import TrainConfig, model_config_for, model_scorer, train

REPO_ROOT = Path(__file__).resolve().parents[2]  # outerloop/benchmarks/model.py -> the checkout


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


# ---- cold start --------------------------------------------------------------------------


def hold_out_items(data: InteractionData, fraction: float, seed: int) -> tuple[InteractionData, np.ndarray]:
    """Drop a seeded ``fraction`` of items from every user's history, keeping each user's last
    event whatever it is: held-out items are then never trained on (not as input, not as
    target, not in the counts), and some test targets are items the model never saw."""
    rng = np.random.default_rng(seed)
    n = len(data.catalog)
    held = np.sort(rng.choice(np.arange(1, n + 1), size=int(round(fraction * n)), replace=False))
    is_held = np.zeros(n + 1, dtype=bool)
    is_held[held] = True
    users = []
    for u in data.users:
        keep = ~is_held[u.items]
        keep[-1] = True
        users.append(UserSequence(u.user_id, u.items[keep], None if u.ts is None else u.ts[keep],
                                  None if u.actions is None else u.actions[keep]))
    return InteractionData(f"{data.name}-cold{int(fraction * 100)}", data.catalog, users), held


def cold_start(args: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset("ml-1m", args.data_dir)
    cold_data, held = hold_out_items(data, 0.10, args.seed)
    cfg = model_config_for(cold_data)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, id_dropout=args.id_dropout, seed=args.seed,
                       max_minutes=args.max_minutes)
    t0 = time.perf_counter()
    res = train(cold_data, cfg, tcfg, progress=not args.quiet)
    wall = time.perf_counter() - t0
    n = len(data.catalog)
    test = leave_one_out(cold_data, "test")
    is_held = np.zeros(n + 1, dtype=bool)
    is_held[held] = True
    cold_cases = test.subset(is_held[test.targets])
    assert res.popularity[held].sum() == 0, "held-out items leaked into training"
    scorer = model_scorer(res.model)
    rows: dict[str, Any] = {}
    for label, mask in (("all_items", None), ("cold_items_only", is_held)):
        rows[label] = {
            name: evaluate(fn, cold_cases, n, "full", seed=args.seed, item_mask=mask)
            for name, fn in (("model", scorer), ("popularity", popularity_scorer(res.popularity)), ("random", random_scorer(n, args.seed)))
        }
    warm = evaluate(scorer, test.subset(~is_held[test.targets]), n, "full", seed=args.seed)
    return {
        "bench": "cold_start", "held_out_items": int(held.shape[0]), "cold_test_cases": len(cold_cases),
        "ndcg@10_cold_targets": rows, "warm_targets_model": warm, "epochs_run": res.epochs_run,
        "best_epoch": res.best_epoch, "id_dropout": args.id_dropout, "train_wall_s": round(wall, 1), "load_avg": load_avg(),
    }


# ---- local vs full attention --------------------------------------------------------------


def step_time_ms(cfg: ModelConfig, T: int, batch: int, reps: int = 5) -> dict[str, float]:
    """Forward+backward and forward-only time of the transformer (no catalog softmax) at length T."""
    model = SeqRecModel(dataclasses.replace(cfg, max_len=T, use_metadata=False))
    items = torch.randint(1, cfg.n_items + 1, (batch, T))
    b = Batch(items=items)

    def fwd_bwd() -> None:
        model(b).sum().backward()

    def fwd() -> None:
        with torch.inference_mode():
            model(b)

    out = {}
    for name, fn in (("train_step", fwd_bwd), ("forward", fwd)):
        fn()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            fn()
        out[f"{name}_wall_ms"] = round((time.perf_counter() - t) / reps * 1000, 1)
        out[f"{name}_cpu_ms"] = round((time.process_time() - c) / reps * 1000, 1)  # ~ wall on an idle core
    return out


def attention(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    base = ModelConfig(n_items=3416, d_model=64)
    speed = {}
    for T in (200, 1000, 2000):
        speed[f"T={T}"] = {
            "full": step_time_ms(base, T, max(1, 4000 // T)),
            f"local_w{args.window}": step_time_ms(dataclasses.replace(base, attention="local", window=args.window), T, max(1, 4000 // T)),
        }
    data = load_dataset("ml-1m", args.data_dir)
    quality = {}
    for kind in [k for k in args.kinds.split(",") if k] if args.epochs > 0 else []:
        cfg = model_config_for(data, attention=kind, window=args.window)
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, max_minutes=args.max_minutes)
        t0 = time.perf_counter()
        res = train(data, cfg, tcfg, progress=not args.quiet)
        test = evaluate(model_scorer(res.model), leave_one_out(data, "test"), len(data.catalog), "full", seed=args.seed)
        quality[kind] = {"valid": res.valid, "test": test, "epochs_run": res.epochs_run,
                         "train_wall_s": round(time.perf_counter() - t0, 1),
                         "mean_epoch_s": round(float(np.mean([h["epoch_s"] for h in res.history])), 1),
                         "valid_ndcg@10_by_epoch": [round(h["valid_ndcg@10"], 4) for h in res.history]}
    return {"bench": "attention", "window": args.window, "speed_1thread": speed, "quality_ml1m": quality, "load_avg": load_avg()}


# ---- embedding versions -------------------------------------------------------------------


def recall_at(truth: np.ndarray, got: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(truth, got)]))


def align(args: argparse.Namespace) -> dict[str, Any]:
    """Recall@100 of the OLD model's user vectors against the NEW index, before and after the
    NEW space is rotated onto the OLD one; the truth is what the NEW model's own user vectors
    retrieve from the NEW index (rotation does not change that)."""
    old, new = Artifacts.load(args.align[0]), Artifacts.load(args.align[1])
    data = load_dataset(old.manifest["dataset"], args.data_dir)
    histories = leave_one_out(data, "test").histories
    k = 100
    u_old = np.concatenate([old.encode(histories[s : s + 512]) for s in range(0, len(histories), 512)])
    u_new = np.concatenate([new.encode(histories[s : s + 512]) for s in range(0, len(histories), 512)])
    truth, _ = new.index.search(u_new, k)
    before, _ = new.index.search(u_old, k)
    report = align_to_parent(new, old)
    truth_after, _ = new.index.search(np.concatenate([new.encode(histories[s : s + 512]) for s in range(0, len(histories), 512)]), k)
    after, _ = new.index.search(u_old, k)
    return {
        "bench": "align", "old": old.model_version, "new": new.model_version, "users": len(histories),
        "recall@100_old_users_new_index": {"before": recall_at(truth, before), "after": recall_at(truth, after)},
        "new_model_unchanged_by_rotation": recall_at(truth, truth_after), "alignment": report,
    }


# ---- serving latency ----------------------------------------------------------------------


def encode_latency(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    arts = Artifacts.load(args.encode_latency)
    rng = np.random.default_rng(0)
    n = len(arts.catalog)
    out: dict[str, Any] = {"bench": "encode_latency", "model_version": arts.model_version, "threads": 1}
    for length in (10, 50, 200, 1000):
        hist = rng.integers(1, n + 1, size=length).tolist()
        for _ in range(20):
            arts.encode([hist])
        times, cpu = [], []
        for _ in range(args.reps):
            t, c = time.perf_counter(), time.thread_time()
            arts.encode([hist])
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.thread_time() - c) * 1000)
        q = np.percentile(times, [50, 99])
        qc = np.percentile(cpu, [50, 99])
        out[f"history_{length}"] = {"p50_ms": round(float(q[0]), 3), "p99_ms": round(float(q[1]), 3),
                                    "cpu_p50_ms": round(float(qc[0]), 3), "cpu_p99_ms": round(float(qc[1]), 3)}
    vec = arts.encode([rng.integers(1, n + 1, size=200).tolist()])
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        arts.index.search(vec, 500)
        times.append((time.perf_counter() - t) * 1000)
    out["search_k500"] = {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}
    out["load_avg"] = load_avg()
    return out


def index_scale(args: argparse.Namespace) -> dict[str, Any]:
    """HNSW over a synthetic catalog: build time, and per efSearch the one-query latency and
    recall@100 against exact search (Gaussian vectors: a hard case for graph search, since
    real item vectors cluster)."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    d = 64
    vecs = rng.standard_normal((args.n_items + 1, d)).astype(np.float32)
    vecs[0] = 0
    t = time.perf_counter()
    index = build_item_index(vecs)
    build_s = time.perf_counter() - t
    q = rng.standard_normal((200, d)).astype(np.float32)
    exact = np.stack([np.argpartition(-(row @ vecs[1:].T), 100)[:100] + 1 for row in q])  # sets are enough
    faiss.omp_set_num_threads(1)
    sweep = {}
    for ef in (64, 128, 256, 512):
        index.index.hnsw.efSearch = ef
        times, ids = [], []
        for row in q:
            t = time.perf_counter()
            _, i = index.index.search(row[None], 100)  # faiss returns (scores, rows)
            times.append((time.perf_counter() - t) * 1000)
            ids.append(i[0] + 1)
        sweep[f"efSearch={ef}"] = {
            "p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
            "recall@100_vs_exact": round(recall_at(exact, np.stack(ids)), 4),
        }
    return {"bench": "index_scale", "n_items": args.n_items, "kind": index.kind, "build_s": round(build_s, 1),
            "build_threads": args.threads, "search_k100": sweep, "load_avg": load_avg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="outerloop bench model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cold-start", action="store_true",
                      help="hold 10%% of items out of training; NDCG@10 on test cases whose target is one")
    mode.add_argument("--attention", action="store_true", help="local-window vs full attention: speed and quality")
    mode.add_argument("--align", nargs=2, metavar=("OLD_DIR", "NEW_DIR"),
                      help="recall@100 of OLD's user vectors against NEW's index, before/after Procrustes")
    mode.add_argument("--encode-latency", metavar="DIR", help="one-history encode and k=500 search latency")
    mode.add_argument("--index-scale", action="store_true", help="HNSW build time, latency and recall at --n-items")
    p.add_argument("--data-dir", default=os.environ.get("OUTERLOOP_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data"),
                   help="data root (default: $OUTERLOOP_DATA_DIR or ../shared/data next to the repo)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--id-dropout", type=float, default=0.1)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--kinds", default="full,local", help="attention kinds to train in --attention (0 epochs: speed only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reps", type=int, default=500)
    p.add_argument("--n-items", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1, help="FAISS build threads (1 on a shared machine)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.cold_start:
        out = cold_start(args)
    elif args.attention:
        out = attention(args)
    elif args.align:
        out = align(args)
    elif args.encode_latency:
        out = encode_latency(args)
    else:
        out = index_scale(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
