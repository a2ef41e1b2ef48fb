"""Thin script: ``python bench/budgets.py [flags]`` is ``outerloop bench budgets [flags]``."""

import sys

from outerloop.benchmarks.budgets import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
