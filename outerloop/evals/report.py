"""``outerloop report``: one offline HTML page with the figures that say whether the system works.

Inputs are the JSON objects the commands already print: replays (``outerloop eval replay
--out``), the budget bench (``bench/budgets.py --json``), the serve bench (``outerloop bench
serve``), and an artifacts directory (its manifest's per-epoch training history). Each JSON file
is recognised by its content, not its name. A section whose input is missing says which command
produces it instead of disappearing, so a thin report is visibly thin.

The page is ``index.html`` with its PNGs in ``plots/`` next to it, referenced relatively: no
CDN, no script, nothing fetched; it opens from disk in any browser and can be zipped or served
as static files.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from outerloop.errors import UserInputError
from outerloop.evals import plots

PLOTS_DIR = "plots"


@dataclass(slots=True)
class ReportInputs:
    """The JSON inputs, sorted by what they are."""

    fresh_stale: list[dict[str, Any]] = field(default_factory=list)
    inner_outer: list[dict[str, Any]] = field(default_factory=list)
    budget_benches: list[dict[str, Any]] = field(default_factory=list)
    serve_benches: list[dict[str, Any]] = field(default_factory=list)
    other: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path, doc): shown as figure tables
    unknown: list[str] = field(default_factory=list)  # not a JSON object


def classify(doc: Mapping[str, Any]) -> str:
    """``fresh_stale`` | ``inner_outer`` | ``budget_bench`` | ``serve_bench`` | ``unknown``."""
    if doc.get("replay") == "fresh_vs_stale":
        return "fresh_stale"
    if doc.get("replay") == "inner_vs_outer":
        return "inner_outer"
    if "overrun_p99_ms" in doc and "runs" in doc:
        return "budget_bench"
    if _find_latency(doc) or any(k in doc for k in ("p99_ms", "table", "phases")):
        return "serve_bench"
    return "unknown"


def load_inputs(paths: Iterable[str | Path]) -> ReportInputs:
    """Read and sort JSON files (one object each; a JSON-lines file contributes every line)."""
    out = ReportInputs()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserInputError(f"--inputs {path}: file not found")
        text = path.read_text()
        try:
            docs = [json.loads(text)]
        except json.JSONDecodeError:
            try:
                docs = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise UserInputError(f"--inputs {path}: not JSON ({exc})") from exc
        for doc in docs:
            kind = classify(doc) if isinstance(doc, dict) else "unknown"
            if kind == "unknown" and isinstance(doc, dict):
                out.other.append((str(path), doc))  # eval, loop, model benches: their figures as a table
            elif kind == "unknown":
                out.unknown.append(str(path))
            else:
                getattr(out, {"fresh_stale": "fresh_stale", "inner_outer": "inner_outer",
                              "budget_bench": "budget_benches", "serve_bench": "serve_benches"}[kind]).append(doc)
    return out


def _find_latency(doc: Any, depth: int = 0) -> dict[str, list[float]]:
    """Latency samples anywhere in a bench object: ``latency_samples_ms`` lists, or a
    ``latency_histogram`` ``{edges_ms, counts}`` (expanded to bin centres); a key prefix such as
    ``baseline_latency_histogram`` labels the series."""
    found: dict[str, list[float]] = {}
    if depth > 4 or not isinstance(doc, Mapping):
        return found
    name = str(doc.get("name") or doc.get("phase") or "requests")
    for key, value in doc.items():
        label = name + (f" ({key[:-len('_latency_samples_ms')]})" if key.endswith("_latency_samples_ms") else
                        f" ({key[:-len('_latency_histogram')]})" if key.endswith("_latency_histogram") else "")
        if key.endswith("latency_samples_ms") and isinstance(value, list):
            found[label] = [float(v) for v in value]
        elif key.endswith("latency_histogram") and isinstance(value, Mapping):
            edges, counts = np.asarray(value.get("edges_ms", [])), np.asarray(value.get("counts", []), dtype=np.int64)
            if edges.size == counts.size + 1 and counts.size:
                centres = (edges[:-1] + edges[1:]) / 2
                found[label] = np.repeat(centres, counts).tolist()
        elif isinstance(value, Mapping):
            found.update({f"{key}: {k}": v for k, v in _find_latency(value, depth + 1).items()})
        elif isinstance(value, list):
            for i, item in enumerate(value):
                found.update({f"{key}[{i}]: {k}": v for k, v in _find_latency(item, depth + 1).items()})
    return found


def measure_funnel_latency(artifacts_dir: str | Path, *, requests: int = 300, seed: int = 0,
                           history_len: int = 100) -> dict[str, list[float]]:
    """Latency of the in-process funnel (encode, FAISS, ranker, seen filter) on histories drawn
    from the training popularity; every request is a cache miss. No HTTP, no Redis: the serve
    bench measures those, this is the fallback when its JSON carries no samples."""
    import torch

    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.serving.funnel import Funnel
    from outerloop.inner_loop.model.ranker import Ranker
    from outerloop.inner_loop.serving.user_state import UserState

    torch.set_num_threads(1)  # as the server does
    arts = Artifacts.load(artifacts_dir)
    ranker = Ranker.load(artifacts_dir) if Ranker.exists(artifacts_dir) else None
    funnel = Funnel(arts, ranker)
    rng = np.random.default_rng(seed)
    pop = np.asarray(arts.popularity[1:], dtype=np.float64) + 1.0
    p = pop / pop.sum()
    n = len(arts.catalog)
    samples = []
    for r in range(requests + 10):
        items = rng.choice(np.arange(1, n + 1), size=min(history_len, n), replace=False, p=p).astype(np.int64)
        ts = np.arange(items.shape[0], dtype=np.int64) * 60_000 + 1_600_000_000_000
        state = UserState(user_id=f"lat{r}", items=items, actions=np.full(items.shape[0], 3, dtype=np.int64),
                          ts=ts, version=1, seen=items)
        t0 = time.perf_counter()
        funnel.recommend(state, 20, started=t0)
        if r >= 10:  # the first few pay for lazy initialisation
            samples.append((time.perf_counter() - t0) * 1000.0)
    label = "in-process funnel" + (" + ranker" if ranker is not None else "")
    return {label: samples}


# --- the page ------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;
color:#212529;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #dee2e6;padding-bottom:.2em;margin-top:2em}
.meta{color:#868e96;font-size:.9em} .missing{background:#fff4e6;border-left:4px solid #f76707;padding:.5em 1em}
img{max-width:100%;height:auto;border:1px solid #e9ecef;margin:.5em 0}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #dee2e6;padding:.25em .6em;text-align:right}
th{background:#f8f9fa} td:first-child,th:first-child{text-align:left} code{background:#f1f3f5;padding:0 .2em}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    if v is None:
        return "-"
    return html.escape(str(v))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(rel: str, alt: str) -> str:
    return f'<img src="{html.escape(rel)}" alt="{html.escape(alt)}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


class _Page:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.parts: list[str] = []
        self.figures: list[str] = []

    def figure(self, name: str, alt: str) -> tuple[Path, str]:
        rel = f"{PLOTS_DIR}/{name}.png"
        self.figures.append(rel)
        return self.out / rel, _img(rel, alt)

    def add(self, *html_parts: str) -> None:
        self.parts.extend(html_parts)


def build_report(out_dir: str | Path, *, artifacts_dir: str | Path | None = None,
                 inputs: ReportInputs | None = None, measure_latency: bool = True,
                 latency_requests: int = 300) -> Path:
    """Write ``index.html`` and ``plots/*.png`` into ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    inputs = inputs or ReportInputs()
    page = _Page(out)
    manifest = _manifest(artifacts_dir)
    _training(page, manifest, artifacts_dir)
    _latency(page, inputs, artifacts_dir, measure_latency, latency_requests)
    _fresh_stale(page, inputs)
    _lift(page, inputs)
    _budgets(page, inputs)
    _cache_curve(page, inputs)
    _other(page, inputs)
    if inputs.unknown:
        page.add("<h2>Inputs not recognised</h2>", _missing("; ".join(html.escape(u) for u in inputs.unknown)))
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    model = html.escape(str(manifest.get("model_version", "no artifacts given")))
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>outerloop report</title>'
           f"<style>{_CSS}</style></head><body><h1>outerloop report</h1>"
           f'<p class="meta">model {model} &middot; written {created} &middot; {len(page.figures)} figures</p>'
           + "".join(page.parts) + "</body></html>\n")
    path = out / "index.html"
    path.write_text(doc)
    return path


def _manifest(artifacts_dir: str | Path | None) -> dict[str, Any]:
    if artifacts_dir is None:
        return {}
    path = Path(artifacts_dir) / "manifest.json"
    if not path.is_file():
        raise UserInputError(f"--artifacts {artifacts_dir}: no manifest.json (not an artifacts directory)")
    return json.loads(path.read_text())


def _training(page: _Page, manifest: Mapping[str, Any], artifacts_dir: Any) -> None:
    page.add("<h2>Training</h2>")
    history = manifest.get("history") or []
    if not history:
        page.add(_missing("No training history: pass <code>--artifacts DIR</code> written by "
                          "<code>outerloop train</code> (its manifest's <code>history</code>: loss and "
                          "validation NDCG@10 per epoch)."))
        return
    path, tag = page.figure("training", "training loss and validation NDCG@10 per epoch")
    plots.training_curves(history, path, title=f"{manifest.get('model_version')} on {manifest.get('dataset')}")
    m = manifest.get("metrics") or {}
    rows = [["best epoch", manifest.get("best_epoch")], ["epochs run", manifest.get("epochs_run")],
            ["wall time, s", manifest.get("wall_time_s")],
            ["valid NDCG@10 (chooses the checkpoint)", (m.get("valid_best") or {}).get("ndcg@10")],
            ["test NDCG@10 (reported, never chosen on)", m.get("ndcg@10")], ["test HR@10", m.get("hr@10")],
            ["popularity NDCG@10", (m.get("popularity") or {}).get("ndcg@10")]]
    page.add(tag, _table(rows, ["", "value"]))


def _latency(page: _Page, inputs: ReportInputs, artifacts_dir: Any, measure: bool, n: int) -> None:
    page.add("<h2>Request latency</h2>")
    samples: dict[str, list[float]] = {}
    for doc in inputs.serve_benches:
        samples.update(_find_latency(doc))
    note = "from the serve bench"
    if not samples and artifacts_dir is not None and measure:
        samples = measure_funnel_latency(artifacts_dir, requests=n)
        note = (f"measured in process now ({n} requests, one thread, every request a user-vector cache miss; "
                "no HTTP and no Redis: the serve bench measures those)")
    summary = [[doc.get("name") or doc.get("bench") or "serve bench", doc.get("p50_ms"), doc.get("p99_ms"),
                doc.get("achieved_rps") or doc.get("rate_rps")] for doc in inputs.serve_benches if "p99_ms" in doc]
    if samples:
        path, tag = page.figure("latency", "request latency histogram")
        plots.latency_histogram(samples, path, title=f"latency, {note.split(' (')[0]}")
        page.add(tag, f'<p class="meta">{html.escape(note)}</p>')
    else:
        page.add(_missing("No latency samples: pass a serve-bench JSON with <code>latency_samples_ms</code> or "
                          "<code>latency_histogram</code>, or <code>--artifacts</code> to measure the funnel in process."))
    if summary:
        page.add(_table(summary, ["serve bench", "p50 ms", "p99 ms", "requests/s"]))


def _fresh_stale(page: _Page, inputs: ReportInputs) -> None:
    page.add("<h2>Fresh vs stale</h2>")
    results = inputs.fresh_stale
    if not results:
        page.add(_missing("No fresh-vs-stale replay: run <code>outerloop eval replay --dataset ml-100k "
                          "--out FILE</code> (and ml-latest-small) and pass the files to <code>--inputs</code>."))
        return
    k = results[0].get("k", 10)
    path, tag = page.figure("fresh_stale", "fresh vs stale NDCG")
    plots.fresh_stale(results, path, k=k)
    rows = [[r["dataset"], r["n_requests"], r["cut"], r[f"fresh_ndcg@{k}"], r[f"stale_ndcg@{k}"], r["fresh_over_stale"],
             (r.get("stale_history_nonempty") or {}).get("fresh_over_stale"), r.get(f"popularity_ndcg@{k}"),
             r["share_with_same_day_events"]] for r in results]
    page.add(tag, _table(rows, ["dataset", "requests", "test period from", f"fresh NDCG@{k}", f"stale NDCG@{k}",
                                "fresh / stale", "fresh / stale, users the batch knew", f"popularity NDCG@{k}",
                                "with same-day events"]),
             f'<p class="meta">{html.escape(results[0].get("stale_policy", ""))}; '
             f'{html.escape(results[0].get("seen_filter", ""))}.</p>')


def _lift(page: _Page, inputs: ReportInputs) -> None:
    page.add("<h2>Inner loop vs inner + outer loop</h2>")
    if not inputs.inner_outer:
        page.add(_missing("No inner-vs-outer replay: run <code>outerloop eval replay --dataset ml-1m "
                          "--artifacts DIR --out FILE</code> and pass the file to <code>--inputs</code>."))
        return
    for i, r in enumerate(inputs.inner_outer):
        k = r.get("k", 10)
        path, tag = page.figure(f"lift_{i}", "inner vs inner+outer NDCG")
        plots.lift_bars(r[f"inner_ndcg@{k}"], r[f"outer_ndcg@{k}"], path, k=k, ci=r.get("relative_lift_ci95"),
                        users=r.get("users"))
        did = r.get("what_the_outer_loop_did", {})
        rows = [[rid, v.get("committed"), v.get("target_in_row"), v.get(f"served_row_ndcg@{k}")]
                for rid, v in (did.get("rows") or {}).items()]
        page.add(tag, _table([[r["dataset"], r["users"], r[f"inner_ndcg@{k}"], r[f"outer_ndcg@{k}"], r["relative_lift"],
                               str(r.get("relative_lift_ci95")), r.get("users_better"), r.get("users_worse")]],
                             ["dataset", "users", f"inner NDCG@{k}", f"inner+outer NDCG@{k}", "lift", "95% CI",
                              "users better", "users worse"]),
                 _table(rows, ["row", "committed", "served item in row", f"row alone NDCG@{k}"]),
                 f'<p class="meta">target origin in the served top {k}: '
                 f'{html.escape(json.dumps(did.get("target_origin_in_outer_top_k", {})))}; facts written: '
                 f'{html.escape(json.dumps(did.get("facts_written_by_kind", {})))}</p>')
        by_k = r.get("by_staleness") or []
        if by_k:
            path, tag = page.figure(f"lift_staleness_{i}", "lift against staleness and against its cost")
            plots.lift_by_staleness(by_k, path, title=f"{r['dataset']}: {r.get('users')} users, inner arm: "
                                    f"{r.get('inner_arm', 'funnel')}")
            stale_rows = []
            for s in by_k:
                cost = s.get("cost") or {}
                cpu = cost.get("outer_loop_cpu_ms_per_cycle") or {}
                abl = "; ".join(f"{rid}: {v.get('relative_lift_without')}"
                                for rid, v in (s.get("ablation_each_row_removed") or {}).items())
                stale_rows.append([s["staleness"], s.get(f"outer_ndcg@{k}"), s.get("relative_lift"),
                                   str(s.get("relative_lift_ci95")), cpu.get("mean"),
                                   cost.get("outer_loop_cpu_ms_per_interaction"), abl])
            page.add(tag, _table(stale_rows, ["staleness k", f"inner+outer NDCG@{k}", "lift", "95% CI",
                                              "outer CPU ms/cycle", "outer CPU ms/interaction",
                                              "lift with each row removed"]))


def _budgets(page: _Page, inputs: ReportInputs) -> None:
    page.add("<h2>Budgets</h2>")
    shown = False
    for i, r in enumerate(inputs.inner_outer):
        b = r.get("budget") or {}
        if not b.get("runs"):
            continue
        budgets = {a: (g.get("budget_ms") or [None])[-1] for a, g in (b.get("by_agent") or {}).items()}
        path, tag = page.figure(f"budget_replay_{i}", "agent run times and overruns")
        plots.budget_overruns(b.get("elapsed_samples_ms") or {}, {a: v for a, v in budgets.items() if v}, 
                              b.get("overrun_samples_ms") or [], path,
                              title=f"agent runs in the {r['dataset']} replay")
        page.add(tag, _budget_table(b, f"replay ({r['dataset']})"))
        shown = True
    for i, b in enumerate(inputs.budget_benches):
        source = str(b.get("name") or "budget bench")
        if b.get("by_kind"):
            path, tag = page.figure(f"budget_bench_{i}", "overrun p99 by agent kind")
            plots.overrun_by_kind(b["by_kind"], path, title="budget bench: adversarial agents")
            page.add(tag)
        elif b.get("elapsed_samples_ms"):  # run records summarised by budget_compliance (e.g. the demo's)
            budgets = {a: (g.get("budget_ms") or [None])[-1] for a, g in (b.get("by_agent") or {}).items()}
            path, tag = page.figure(f"budget_runs_{i}", "agent run times and overruns")
            plots.budget_overruns(b["elapsed_samples_ms"], {a: v for a, v in budgets.items() if v},
                                  b.get("overrun_samples_ms") or [], path, title=f"agent runs: {source}")
            page.add(tag)
        page.add(_budget_table(b, source))
        shown = True
    if not shown:
        page.add(_missing("No agent runs: pass an inner-vs-outer replay or <code>bench/budgets.py --json</code> output."))


def _budget_table(b: Mapping[str, Any], source: str) -> str:
    return _table([[source, b.get("runs"), b.get("killed"), b.get("errors"), b.get("retries"), b.get("overrun_p50_ms"),
                    b.get("overrun_p99_ms"), b.get("late_writes_committed")]],
                  ["source", "runs", "killed", "errors", "retries", "overrun p50 ms", "overrun p99 ms",
                   "late writes committed"])


OTHER_MAX_ROWS = 80  # per input: enough for an eval or a model bench, not a dump of samples


def flat_figures(doc: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every scalar of a benchmark's JSON as ``("a.b.c", value)``, in the file's order; lists
    (samples, histories) are left out, they are what the plots are for."""
    rows: list[tuple[str, Any]] = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flat_figures(value, name + "."))
        elif not isinstance(value, (list, tuple)):
            rows.append((name, value))
    return rows


def _cache_curve(page: _Page, inputs: ReportInputs) -> None:
    """The tool cache's hit rate against the quality it costs (``bench loop``'s ``tool_cache_curve``)."""
    for path, doc in inputs.other:
        curve = doc.get("tool_cache_curve") if doc.get("bench") == "loop" else None
        if not curve or not curve.get("points"):
            continue
        page.add("<h2>The tool cache: hit rate against quality</h2>")
        png, img = page.figure(f"cache_tradeoff_{len(page.figures)}", "tool cache trade-off")
        plots.cache_tradeoff(curve["points"], png, title=f"{doc.get('dataset', '?')}, {curve.get('users')} users")
        best = curve.get("best_meeting_goal")
        verdict = (f"Best setting meeting the goal ({html.escape(str(curve.get('goal')))}): k = {best['clusters']} "
                   f"clusters, pool {best['pool']}: hit rate {best['hit_rate']:.0%}, loss {best['loss_pct']}%."
                   if best else f"No setting swept meets the goal ({html.escape(str(curve.get('goal')))}).")
        page.add(img, f"<p>{verdict} From <code>{html.escape(path)}</code>.</p>")


def _other(page: _Page, inputs: ReportInputs) -> None:
    """Benchmarks without a plot of their own (``outerloop eval``, ``bench loop``, ``bench model``):
    their figures, so the report holds every number ``make bench`` measured."""
    if not inputs.other:
        return
    page.add("<h2>Other figures</h2>")
    for path, doc in inputs.other:
        title = doc.get("bench") or doc.get("benchmark") or Path(path).stem
        rows = flat_figures(doc)
        more = len(rows) - OTHER_MAX_ROWS
        page.add(f"<h3>{html.escape(str(title))} <small>({html.escape(path)})</small></h3>",
                 _table(rows[:OTHER_MAX_ROWS], ["figure", "value"]),
                 f"<p>{more} more in the file.</p>" if more > 0 else "")
