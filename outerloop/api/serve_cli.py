"""``outerloop serve``: load artifacts (and the ranker next to them), build the API, run uvicorn.

Each worker process is single-threaded compute: the funnel is CPU work of a few milliseconds,
torch is pinned to one thread, and the process's long-lived objects are frozen out of the
garbage collector after loading, so a full collection never walks a million catalog items in the
middle of a request. ``--workers N`` runs N such processes on one port (uvicorn's supervisor
binds the socket once, the kernel spreads connections over the workers, a dead worker is
replaced); each loads the artifacts itself (N times the memory) and they share nothing but
Redis, so an event posted to one is in the history every other one reads.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from outerloop.errors import UserInputError
from outerloop.telemetry import add_cli_flag, setup_for_cli
from outerloop.topology import add_topology_flags, topology_from_args

WORKER_ARGS_ENV = "OUTERLOOP_SERVE_WORKER_ARGS"  # the parent's resolved flags, for each worker's app factory
_PATH_ARGS = ("artifacts", "index_cache")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP; anything else (``0.0.0.0``, a name, a LAN IP) is exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose write endpoints without a key: raises :class:`UserInputError`."""
    if not is_loopback(host) and not api_key:
        raise UserInputError(
            f"refusing to bind to {host!r} without an API key: set OUTERLOOP_API_KEY (write endpoints "
            "need it off loopback), or bind to 127.0.0.1"
        )


def _weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected name=weight[,name=weight], got {text!r}") from None
    return out


def configure(p: argparse.ArgumentParser) -> None:
    from outerloop.storage.embedded import EMBEDDED_LIFETIME

    p.epilog = EMBEDDED_LIFETIME
    p.add_argument("--artifacts", type=Path, default=None, help="trained artifacts (default: OUTERLOOP_ARTIFACTS_DIR)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; off loopback an API key is required")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="API processes on the one port (each loads the artifacts; they share Redis)")
    p.add_argument("--candidates", type=int, default=500, help="ANN candidates before ranking")
    p.add_argument("--max-history", type=int, default=None,
                   help="history tokens fed to the encoder (default: the model's context, max_len)")
    p.add_argument("--budget-ms", type=float, default=50.0, help="request budget the fallbacks work against")
    p.add_argument("--ranker-share", type=float, default=0.3, help="share of the budget the ranker may use")
    p.add_argument("--ranker-weights", type=_weights, default=None, help="objective weights of the ranker score, e.g. relevance=1,liked=0.5 (the objectives are "
                        "the ranker's own: see its ranker.json)")
    p.add_argument("--no-ranker", action="store_true", help="serve in retrieval order")
    p.add_argument("--inline-ensemble", action="store_true",
                   help="run the outer loop's heavy ensemble (DIR/ensemble) on every request instead of reading the "
                        "ensemble agent's row: measures what the request path would pay for it (not for production)")
    p.add_argument("--synthetic-items", type=int, default=0,
                   help="serve over a synthetic catalog of this many items (scale benchmarks)")
    p.add_argument("--synthetic-seed", type=int, default=0)
    p.add_argument("--index-cache", type=Path, default=Path("runs/index-cache"),
                   help="where synthetic-catalog indexes are cached")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_cli_flag(p)
    add_topology_flags(p.add_argument_group("redis (the same settings as outerloop daemon and outerloop mcp)"))


def _validate(args: argparse.Namespace) -> None:
    """Flag checks argparse cannot do; each message names the flag."""
    if args.candidates < 1:
        raise UserInputError(f"--candidates must be at least 1, got {args.candidates}")
    if args.budget_ms <= 0:
        raise UserInputError(f"--budget-ms must be positive, got {args.budget_ms}")
    if not 0.0 <= args.ranker_share <= 1.0:
        raise UserInputError(f"--ranker-share must be in [0, 1], got {args.ranker_share}")
    if args.synthetic_items < 0:
        raise UserInputError(f"--synthetic-items must be >= 0, got {args.synthetic_items}")
    if not 0 <= args.port <= 65535:
        raise UserInputError(f"--port must be 0..65535, got {args.port}")
    if args.workers < 1:
        raise UserInputError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.port == 0:
        raise UserInputError("--workers above 1 needs a fixed --port (0 would give each worker its own)")
    if args.max_history is not None and args.max_history < 1:
        raise UserInputError(f"--max-history must be at least 1, got {args.max_history}")


def load_serving(artifacts_dir: Path, *, synthetic_items: int = 0, synthetic_seed: int = 0,
                 index_cache: Path | None = None, no_ranker: bool = False,
                 ranker_weights: dict[str, float] | None = None) -> tuple[Any, Any]:
    """(artifacts, ranker or None) ready for :func:`create_app`."""
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.ranker import Ranker

    if not Path(artifacts_dir).is_dir():
        raise UserInputError(f"{artifacts_dir}: no such artifacts directory (train one with `outerloop train`)")
    artifacts = Artifacts.load(artifacts_dir)
    ranker = None
    if not no_ranker and Ranker.exists(artifacts_dir):
        try:
            ranker = Ranker.load(artifacts_dir, ranker_weights)
        except ValueError as exc:
            raise UserInputError(f"{artifacts_dir}: {exc}") from None
    if synthetic_items:
        from outerloop.inner_loop.serving.scale import scale_catalog

        artifacts = scale_catalog(artifacts, synthetic_items, seed=synthetic_seed, cache_dir=index_cache)
    return artifacts, ranker


def run(args: argparse.Namespace) -> int:
    from outerloop.config import get_settings

    settings = get_settings()
    check_bind(args.host, settings.api_key)  # before anything heavy is imported or loaded
    _validate(args)
    topology = topology_from_args(args, settings)
    if args.workers > 1:
        return _run_workers(args, settings, topology)
    app = build_app(args, settings, topology)
    _announce(args, topology)
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(args))).run()
    return 0


def _uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    # "auto": uvloop and httptools when installed (uvicorn[standard]), asyncio and h11 otherwise
    return {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False,
            "loop": "auto", "http": "auto", "lifespan": "on", "timeout_keep_alive": 30}


def _announce(args: argparse.Namespace, topology: Any) -> None:
    shown = f"[{args.host}]" if ":" in args.host else args.host
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    print(f"outerloop API on http://{shown}:{args.port}{workers} (console: http://{shown}:{args.port}/console); "
          f"redis: {topology.describe()}", file=sys.stderr, flush=True)


def _run_workers(args: argparse.Namespace, settings: Any, topology: Any) -> int:
    """uvicorn's supervisor with ``args.workers`` processes, each building the app with
    :func:`worker_app` from the flags resolved here (the topology included, so every worker
    reads the same one)."""
    import uvicorn

    artifacts_dir = Path(args.artifacts or settings.artifacts_dir)
    if not (artifacts_dir / "manifest.json").is_file():  # fail here, once: uvicorn restarts a worker that dies
        raise UserInputError(f"{artifacts_dir}: no trained artifacts there (no manifest.json; train them with "
                             "`outerloop train`)")
    resolved = {k: (str(v) if k in _PATH_ARGS and v is not None else v) for k, v in vars(args).items()
                if k not in ("command",)}
    resolved.update(artifacts=str(artifacts_dir), redis_url=topology.redis_url, cluster=topology.cluster,
                    stream_shards=topology.stream_shards, key_prefix=topology.key_prefix,
                    durable_writes=topology.durable_writes, durable_wait_ms=topology.durable_wait_ms)
    os.environ[WORKER_ARGS_ENV] = json.dumps(resolved)  # inherited by the spawned workers
    _announce(args, topology)
    uvicorn.run("outerloop.api.serve_cli:worker_app", factory=True, workers=args.workers,
                **_uvicorn_options(args))
    return 0


def worker_app() -> Any:
    """The app factory each ``--workers`` process calls (uvicorn imports it by name)."""
    from outerloop.config import get_settings

    raw = os.environ.get(WORKER_ARGS_ENV)
    if not raw:
        raise UserInputError(f"worker_app runs under `outerloop serve --workers N` ({WORKER_ARGS_ENV} is not set)")
    values = json.loads(raw)
    for k in _PATH_ARGS:
        if values.get(k) is not None:
            values[k] = Path(values[k])
    args = argparse.Namespace(**values)
    settings = get_settings()
    return build_app(args, settings, topology_from_args(args, settings))


def build_app(args: argparse.Namespace, settings: Any, topology: Any) -> Any:
    """Load everything the flags name and return the API (one process's worth)."""
    # before loading (a missing exporter fails fast) and before the app: FastAPI traces every
    # request itself once a provider is installed. The SDK's providers flush at exit.
    setup_for_cli("outerloop-api", args.telemetry)

    import torch

    from outerloop.api.app import create_app
    from outerloop.api.context import ServeOptions
    from outerloop.inner_loop.serving.funnel import FunnelConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)  # one query per request: OpenMP only adds barrier spins under load
    artifacts_dir = args.artifacts or settings.artifacts_dir
    artifacts, ranker = load_serving(artifacts_dir, synthetic_items=args.synthetic_items,
                                     synthetic_seed=args.synthetic_seed, index_cache=args.index_cache,
                                     no_ranker=args.no_ranker, ranker_weights=args.ranker_weights)
    max_len = int(getattr(getattr(getattr(artifacts, "model", None), "cfg", None), "max_len", 200))
    if args.max_history is not None:
        max_len = min(max_len, args.max_history)
    options = ServeOptions(
        api_key=settings.api_key,
        require_api_key=not is_loopback(args.host),
        history_cap=settings.history_cap,
        funnel=FunnelConfig(n_candidates=args.candidates, max_history=max_len,
                            request_budget_ms=args.budget_ms, ranker_share=args.ranker_share),
    )
    inline = None
    if args.inline_ensemble:
        from outerloop.inner_loop.model.ensemble import Ensemble

        if not Ensemble.exists(artifacts.dir):
            raise UserInputError(f"--inline-ensemble: {artifacts.dir} has no ensemble (`outerloop train-ensemble`)")
        inline = Ensemble.load(artifacts)
    from outerloop.inner_loop.model.ranker import Ranker

    inner_dir = Path(artifacts_dir) / "ranker-inner"  # trained without rows (outerloop.evals.prepare)
    without_rows = Ranker.load(inner_dir) if ranker is not None and Ranker.exists(inner_dir) else None
    app = create_app(settings, artifacts, ranker=ranker, options=options, inline_model=inline,
                     ranker_without_rows=without_rows, topology=topology)
    gc.collect()
    gc.freeze()  # everything loaded so far lives as long as the process: keep it out of GC passes
    return app
