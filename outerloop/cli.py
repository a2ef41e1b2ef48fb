"""The one ``outerloop`` command. Each subcommand lives in the module that does the work.

A command module exposes ``configure(parser)`` (adds its flags; keeps imports light) and
``run(args) -> int``. Only the chosen command's module is imported, so ``--help`` is fast.
Add a command by adding one row to :data:`COMMANDS` once it works end to end.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from outerloop.errors import UserInputError

# name -> (one-line help, module implementing configure/run)
COMMANDS: dict[str, tuple[str, str]] = {}


def _register(name: str, help_text: str, module: str) -> None:
    COMMANDS[name] = (help_text, module)


_register("demo", "the whole system in a few minutes: world, model, API, daemon and the outer loop's moments",
          "outerloop.demo")
_register("train", "train the sequential transformer and build its artifacts", "outerloop.inner_loop.model.train_cli")
_register("train-ranker", "train the multi-task ranker next to trained artifacts (the funnel's second stage)",
          "outerloop.evals.ranker_cli")
_register("train-ensemble", "train the outer loop's heavy model (more transformers + EASE) next to trained artifacts",
          "outerloop.inner_loop.model.ensemble")
_register("eval", "offline metrics of trained artifacts (HR@10, NDCG@10, full and sampled)", "outerloop.evals.cli")
_register("serve", "serve real-time recommendations over HTTP (FastAPI + uvicorn)", "outerloop.api.serve_cli")
_register("bench", "run a benchmark and print one JSON object", "outerloop.bench_cli")
_register("plan-capacity", "size API workers, daemons and Redis masters for a load from `bench cluster`'s JSON",
          "outerloop.capacity")
_register("mcp", "serve outerloop's tools to MCP clients (stdio or streamable HTTP)", "outerloop.tools.mcp.cli")
_register("daemon", "consume events, sessionize, trigger agent cycles", "outerloop.scheduler.daemon_cli")
_register("report", "write an offline HTML report (training, latency, fresh vs stale, lift, budgets)",
          "outerloop.evals.report_cli")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outerloop",
        description="Agents around your recommender, never in its request path.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (help_text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).configure(p)
    return parser


def stop_on_sigterm_as_on_ctrl_c() -> list[int]:
    """SIGTERM (``kill``, systemd, Docker) stops a command the way Ctrl-C does, instead of ending
    the process where it stands: the SIGINT handler in force runs (Python's, which raises
    KeyboardInterrupt, or asyncio's, which cancels the main task), so ``finally`` blocks and exit
    hooks run, and the embedded redis-server is left or stopped as ``outerloop.storage.embedded`` says.
    Commands that handle SIGTERM themselves (uvicorn, the daemon) replace this handler while they
    run. Returns the list the handler appends each signal it gets to. Main thread only."""
    got: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        got.append(signum)
        interrupt = signal.getsignal(signal.SIGINT)
        if callable(interrupt):
            interrupt(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job): stop anyway
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    return got


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][1])
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    terminated = stop_on_sigterm_as_on_ctrl_c() if in_main_thread else []
    try:
        return int(module.run(args) or 0)
    except UserInputError as exc:
        print(f"outerloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if terminated:
            print(f"outerloop {args.command}: stopped (SIGTERM)", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"outerloop {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread and previous is not None:  # an in-process caller (a test) gets its handler back
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
