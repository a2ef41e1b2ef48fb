"""``outerloop report``: write the HTML report (``index.html`` + ``plots/``) into ``--out``.

    outerloop report --out reports/run1 --artifacts artifacts/ml1m \\
        --inputs replay_ml100k.json replay_mlsmall.json replay_ml1m.json budgets.json serve.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from outerloop.errors import UserInputError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write index.html and plots/ into")
    parser.add_argument("--artifacts", metavar="DIR", help="trained artifacts: training curves, in-process latency")
    parser.add_argument("--inputs", nargs="*", default=[], metavar="JSON",
                        help="replay / bench JSON files (recognised by content)")
    parser.add_argument("--no-measure", action="store_true",
                        help="do not measure funnel latency in process when no bench carries samples")
    parser.add_argument("--latency-requests", type=int, default=300, help="requests of the in-process measurement")
    parser.add_argument("--json", action="store_true", help="print {index, figures} as JSON")


def run(args: argparse.Namespace) -> int:
    from outerloop.evals.report import build_report, load_inputs

    if args.latency_requests <= 0:
        raise UserInputError(f"--latency-requests must be > 0, got {args.latency_requests}")
    if args.artifacts and not Path(args.artifacts).is_dir():
        raise UserInputError(f"--artifacts {args.artifacts}: directory not found")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a directory")
    index = build_report(out, artifacts_dir=args.artifacts, inputs=load_inputs(args.inputs),
                         measure_latency=not args.no_measure, latency_requests=args.latency_requests)
    figures = sorted(str(p.relative_to(out)) for p in (out / "plots").glob("*.png"))
    if args.json:
        print(json.dumps({"index": str(index), "figures": figures}))
    else:
        print(f"report: {index} ({len(figures)} figures); open it in a browser (works offline)")
    return 0
