"""``outerloop bench <scenario> [flags]``: run one benchmark and print one JSON object.

Each scenario is a module with ``main(argv) -> int`` that parses its own flags, so adding a
benchmark is one row in :data:`BENCHMARKS` and nothing here changes.
"""

from __future__ import annotations

import argparse
import importlib

# scenario -> module exposing main(argv) -> int
BENCHMARKS: dict[str, str] = {
    "serve": "outerloop.benchmarks.serve",
    "freshness": "outerloop.benchmarks.freshness",
    "budgets": "outerloop.benchmarks.budgets",
    "loop": "outerloop.benchmarks.loop",
    "model": "outerloop.benchmarks.model",
    "conversation": "outerloop.benchmarks.conversation",
    "cluster": "outerloop.benchmarks.cluster",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="the scenario's own flags (see `outerloop bench NAME -h`)")


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(BENCHMARKS[args.scenario]).main(list(args.flags)))
