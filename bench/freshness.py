"""Thin script: ``python bench/freshness.py [flags]`` is ``outerloop bench freshness [flags]``."""

import sys

from outerloop.benchmarks.freshness import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
