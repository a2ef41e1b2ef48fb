"""Thin script: ``python bench/serve.py [flags]`` is ``outerloop bench serve [flags]``."""

import sys

from outerloop.benchmarks.serve import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
