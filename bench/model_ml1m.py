"""Thin script: ``python bench/model_ml1m.py [flags]`` is ``outerloop bench model [flags]``."""

import sys

from outerloop.benchmarks.model import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
