"""Benchmark runners behind ``outerloop bench <name>``; each module exposes ``main(argv) -> int``
and prints one JSON object. They live inside the package (not in the repo's ``bench/``) so that
the installed ``outerloop`` command can import them from any directory; ``bench/*.py`` are thin
scripts that call them."""
