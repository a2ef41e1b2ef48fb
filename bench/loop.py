"""Thin script: ``python bench/loop.py [flags]`` is ``outerloop bench loop [flags]``."""

import sys

from outerloop.benchmarks.loop import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
