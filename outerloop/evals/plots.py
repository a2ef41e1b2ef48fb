"""The report's figures: one function per figure, data in, PNG file out (matplotlib, Agg).

Each function takes plain numbers (what the JSON inputs hold), writes ``path`` and returns it,
so figures are testable without a report around them. matplotlib is imported inside
:func:`_pyplot` with the non-interactive Agg backend chosen explicitly: reports are written
on servers and in CI, where no display exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
COLORS = {"fresh": "#2b8a3e", "stale": "#adb5bd", "inner": "#4c6ef5", "outer": "#f76707", "loss": "#495057",
          "valid": "#2b8a3e", "budget": "#e03131"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def training_curves(history: Sequence[Mapping[str, Any]], path: Path, *, title: str = "training") -> Path:
    """Per-epoch training loss and validation NDCG@10 (the checkpoint is chosen on the latter)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(epochs, [h.get("loss") for h in history], "o-", color=COLORS["loss"], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (next-item cross-entropy)")
    valid = [(h["epoch"], h["valid_ndcg@10"]) for h in history if h.get("valid_ndcg@10") is not None]
    if valid:
        ax2 = ax.twinx()
        ax2.plot(*zip(*valid), "s-", color=COLORS["valid"], label="valid NDCG@10")
        ax2.set_ylabel("validation NDCG@10", color=COLORS["valid"])
        best = max(valid, key=lambda v: v[1])
        ax2.annotate(f"best {best[1]:.4f} @ {best[0]}", best, textcoords="offset points", xytext=(-60, -18),
                     color=COLORS["valid"], fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def latency_histogram(samples_ms: Mapping[str, Sequence[float]], path: Path, *, title: str = "latency",
                      budget_ms: float | None = None) -> Path:
    """Histogram of request latencies per series, with p50 and p99 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    series = {k: np.asarray(v, dtype=np.float64) for k, v in samples_ms.items() if len(v)}
    hi = max((float(np.percentile(v, 99.5)) for v in series.values()), default=1.0)
    bins = np.linspace(0.0, hi * 1.05 or 1.0, 50)
    for name, v in series.items():
        p50, p99 = np.percentile(v, [50, 99])
        ax.hist(np.clip(v, 0, bins[-1]), bins=bins, alpha=0.6, label=f"{name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        ax.axvline(p99, linestyle="--", linewidth=1, color="black")
    if budget_ms is not None:
        ax.axvline(budget_ms, color=COLORS["budget"], linewidth=1.5, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("ms")
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def budget_overruns(elapsed_ms: Mapping[str, Sequence[float]], budgets_ms: Mapping[str, float],
                    overruns_ms: Sequence[float], path: Path, *, title: str = "agent runs against budgets") -> Path:
    """Left: each agent's run times against its budget. Right: overrun of killed runs
    (deadline to stopped), the number the kill path promises to keep small."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    names = [a for a in elapsed_ms if len(elapsed_ms[a])]
    if names:
        ax.boxplot([np.asarray(elapsed_ms[a]) for a in names], orientation="horizontal", showfliers=True)
        ax.set_yticks(range(1, len(names) + 1), names)
        for i, a in enumerate(names, 1):
            if a in budgets_ms:
                ax.plot([budgets_ms[a]] * 2, [i - 0.4, i + 0.4], color=COLORS["budget"], linewidth=2)
        ax.set_xlabel("run wall time, ms (red: budget)")
    else:
        ax.text(0.5, 0.5, "no agent runs", ha="center", va="center", transform=ax.transAxes)
    if len(overruns_ms):
        ax2.hist(overruns_ms, bins=30, color=COLORS["budget"], alpha=0.8)
        p50, p99 = np.percentile(overruns_ms, [50, 99])
        ax2.set_title(f"{len(overruns_ms)} killed: overrun p50 {p50:.2f} ms, p99 {p99:.2f} ms", fontsize=9)
        ax2.set_xlabel("overrun, ms")
    else:
        ax2.text(0.5, 0.5, "no run was killed", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_xticks([])
        ax2.set_yticks([])
    fig.suptitle(title)
    return _save(fig, path)


def overrun_by_kind(by_kind: Mapping[str, Mapping[str, Any]], path: Path, *, title: str = "budget bench") -> Path:
    """Killed runs and overrun p99 per adversarial agent kind (the budget bench's ``by_kind``)."""
    plt = _pyplot()
    kinds = sorted(by_kind)
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    p99 = [by_kind[k].get("overrun_p99_ms") or 0.0 for k in kinds]
    ax.bar(kinds, p99, color=COLORS["budget"], alpha=0.8)
    for i, k in enumerate(kinds):
        ax.text(i, p99[i], f"{by_kind[k].get('killed', 0)} killed", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("overrun p99, ms")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(fig, path)


def lift_bars(inner: float, outer: float, path: Path, *, k: int = 10, ci: Sequence[float] | None = None,
              users: int | None = None, reference_lift: float | None = 0.019) -> Path:
    """Inner loop alone vs inner+outer NDCG@k, with the relative lift and its interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    bars = ax.bar(["inner loop", "inner + outer"], [inner, outer], color=[COLORS["inner"], COLORS["outer"]])
    for b, v in zip(bars, (inner, outer)):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.4f}", ha="center", va="bottom")
    lift = outer / inner - 1.0 if inner > 0 else 0.0
    sub = f"lift {lift:+.2%}" + (f" (95% CI {ci[0]:+.2%} .. {ci[1]:+.2%})" if ci else "")
    if reference_lift is not None:
        sub += f"; AgentRec reported {reference_lift:+.1%}"
    ax.set_title(sub, fontsize=9)
    ax.set_ylabel(f"NDCG@{k}" + (f" ({users} users)" if users else ""))
    ax.set_ylim(0, max(inner, outer) * 1.2 or 1.0)
    return _save(fig, path)


def lift_by_staleness(by_k: Sequence[Mapping[str, Any]], path: Path, *, required: float | None = 0.02,
                      title: str = "") -> Path:
    """Left: relative NDCG lift of inner+outer over the inner loop against the rows' staleness
    (interactions between the outer loop's cycle and the request), with the 95% interval as a
    band. Right: the same lift against what it costs, outer-loop CPU ms per interaction."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    ks = [r["staleness"] for r in by_k]
    lift = [100.0 * (r.get("relative_lift") or 0.0) for r in by_k]
    cis = [r.get("relative_lift_ci95") or [None, None] for r in by_k]
    lo = [100.0 * c[0] if c[0] is not None else np.nan for c in cis]
    hi = [100.0 * c[1] if c[1] is not None else np.nan for c in cis]
    ax.fill_between(ks, lo, hi, color=COLORS["outer"], alpha=0.2, label="95% CI")
    ax.plot(ks, lift, "o-", color=COLORS["outer"], label="inner + outer vs inner")
    for x, y in zip(ks, lift):
        ax.annotate(f"{y:+.1f}%", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.axhline(0.0, color="#868e96", lw=0.8)
    if required is not None:
        ax.axhline(100.0 * required, color=COLORS["budget"], ls="--", lw=0.8, label=f"required {required:+.0%}")
    ax.set_xlabel("staleness k: interactions since the outer loop compiled the rows")
    ax.set_ylabel("relative NDCG@10 lift (%)")
    ax.legend(fontsize=8)
    ax.set_title(title or "lift against staleness", fontsize=9)
    cost = [((r.get("cost") or {}).get("outer_loop_cpu_ms_per_interaction")) for r in by_k]
    pts = [(c, y, k) for c, y, k in zip(cost, lift, ks) if c is not None]
    if pts:
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS["outer"])
        for c, y, k in pts:
            ax2.annotate(f"k={k}", (c, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        req = [((r.get("cost") or {}).get("inner_loop_cpu_ms_per_request") or {}).get("mean") for r in by_k]
        if req and req[0] is not None:
            ax2.axvline(req[0], color=COLORS["inner"], ls=":", lw=1.0, label=f"inner loop: {req[0]:.1f} ms CPU/request")
            ax2.legend(fontsize=8)
    ax2.axhline(0.0, color="#868e96", lw=0.8)
    ax2.set_xlabel("outer-loop CPU ms per interaction (one cycle every k+1)")
    ax2.set_ylabel("relative NDCG@10 lift (%)")
    ax2.set_title("lift against its cost", fontsize=9)
    return _save(fig, path)


def cache_tradeoff(points: Sequence[Mapping[str, Any]], path: Path, *, goal_loss_pct: float = 1.0,
                   goal_hit_rate: float = 0.5, title: str = "") -> Path:
    """The tool cache's trade-off: hit rate against recall@100 lost to reuse, one line per shared
    pool size through its cluster counts (labelled k), the goal's corner shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.axvspan(goal_hit_rate, 1.0, ymin=0.0, color=COLORS["fresh"], alpha=0.08, label="goal")
    ax.axhline(goal_loss_pct, color=COLORS["budget"], ls="--", lw=0.8, label=f"{goal_loss_pct:g}% loss")
    for pool in sorted({int(p["pool"]) for p in points}):
        line = sorted((p for p in points if int(p["pool"]) == pool), key=lambda p: p["hit_rate"])
        xs, ys = [p["hit_rate"] for p in line], [p["loss_pct"] for p in line]
        ax.plot(xs, ys, "o-", label=f"pool {pool}")
        for p in line:
            ax.annotate(f"k={p['clusters']}", (p["hit_rate"], p["loss_pct"]), textcoords="offset points",
                        xytext=(3, 3), fontsize=6)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("tool cache hit rate (vector search answered from a user cluster's pool)")
    ax.set_ylabel("recall@100 lost vs uncached (%)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "tool cache: hits against quality", fontsize=9)
    return _save(fig, path)


def fresh_stale(results: Sequence[Mapping[str, Any]], path: Path, *, k: int = 10) -> Path:
    """Left: fresh vs stale NDCG@k per dataset. Right: both against the number of the user's
    events since the nightly batch (where real time should matter most)."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    names = [r["dataset"] for r in results]
    x = np.arange(len(names))
    fresh = [r[f"fresh_ndcg@{k}"] for r in results]
    stale = [r[f"stale_ndcg@{k}"] for r in results]
    ax.bar(x - 0.2, fresh, 0.4, label="fresh (real time)", color=COLORS["fresh"])
    ax.bar(x + 0.2, stale, 0.4, label="stale (nightly batch)", color=COLORS["stale"])
    for i, r in enumerate(results):
        ax.text(i, max(fresh[i], stale[i]), f"x{r.get('fresh_over_stale')}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel(f"NDCG@{k}")
    ax.legend(fontsize=8)
    ax.set_title("served at each test interaction", fontsize=9)
    for r, marker in zip(results, "os^v"):
        buckets = [b for b in r.get("by_events_since_batch", []) if b["n"]]
        labels = [b["events_since_batch"] for b in buckets]
        ax2.plot(labels, [b[f"fresh_ndcg@{k}"] for b in buckets], marker + "-", color=COLORS["fresh"],
                 label=f"{r['dataset']} fresh")
        ax2.plot(labels, [b[f"stale_ndcg@{k}"] for b in buckets], marker + "--", color=COLORS["stale"],
                 label=f"{r['dataset']} stale")
    ax2.set_xlabel("user's events since the nightly batch")
    ax2.set_ylabel(f"NDCG@{k}")
    ax2.legend(fontsize=7)
    return _save(fig, path)
