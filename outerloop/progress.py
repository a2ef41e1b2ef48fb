"""One progress bar for long work (training, index builds, replays, row compilation).

Long functions take a ``progress(done, total)`` callback instead of drawing bars themselves,
so library code stays quiet and tests stay fast; command-line entry points pass
``bar.update_to`` from :func:`progress_bar`. The bar draws on stderr only when it is a
terminal (or when ``enabled=True``), so ``--json`` output and CI logs stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class _Bar:
    def __init__(self, bar: tqdm) -> None:
        self._bar = bar

    def update_to(self, done: int, total: int) -> None:
        """The ``progress(done, total)`` callback: moves the bar to ``done`` of ``total``."""
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        self._bar.refresh()


@contextmanager
def progress_bar(desc: str, unit: str = "it", *, enabled: bool | None = None) -> Iterator[_Bar]:
    """A tqdm bar on stderr; ``enabled`` defaults to "stderr is a terminal"."""
    show = sys.stderr.isatty() if enabled is None else enabled
    bar = tqdm(desc=desc, unit=unit, disable=not show, dynamic_ncols=True, file=sys.stderr)
    try:
        yield _Bar(bar)
    finally:
        bar.close()
