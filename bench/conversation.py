"""Thin script: ``python bench/conversation.py [flags]`` is ``outerloop bench conversation [flags]``."""

import sys

from outerloop.benchmarks.conversation import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
