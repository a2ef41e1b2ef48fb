"""MovieLens loaders. Every loader returns :class:`InteractionData` with dense item ids.

Malformed input raises :class:`DataFormatError` naming the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from outerloop.data.schema import Catalog, InteractionData, Item, UserSequence
from outerloop.errors import DataFormatError, UserInputError

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    return path


def _parse_title(title: str) -> tuple[str, int | None]:
    m = _YEAR.search(title)
    return title.strip(), (int(m.group(1)) if m else None)


def load_sasrec_ml1m(data_dir: str | Path) -> InteractionData:
    """ML-1M in SASRec's form (``sasrec_ml-1m.txt``: ``user item`` per line, in time order),
    joined through ``sasrec_item_map.txt`` to ``movies.dat`` for titles and genres.

    SASRec's item ids (1..3416) are kept as the dense ids. There are no timestamps or actions.
    """
    data_dir = Path(data_dir)
    seq_path = _require(data_dir / "sasrec_ml-1m.txt")
    map_path = _require(data_dir / "sasrec_item_map.txt")
    movies_path = _require(data_dir / "movies.dat")

    movies: dict[str, tuple[str, tuple[str, ...]]] = {}
    with movies_path.open(encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != 3:
                raise DataFormatError(movies_path, n, f"expected 'id::title::genres', got {line[:60]!r}")
            movies[parts[0]] = (parts[1], tuple(g for g in parts[2].split("|") if g))

    sas_to_orig: dict[int, str] = {}
    with map_path.open() as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                raise DataFormatError(map_path, n, f"expected '<sasrec_id> <movie_id>', got {line.strip()[:60]!r}")
            sas_to_orig[int(parts[0])] = parts[1]

    n_items = max(sas_to_orig) if sas_to_orig else 0
    items: list[Item] = []
    for sid in range(1, n_items + 1):
        orig = sas_to_orig.get(sid)
        if orig is None:
            raise DataFormatError(map_path, None, f"no mapping for SASRec item id {sid}")
        if orig not in movies:
            raise DataFormatError(movies_path, None, f"movie id {orig} (SASRec item {sid}) is missing")
        title, genres = movies[orig]
        clean, year = _parse_title(title)
        items.append(Item(item_id=sid, source_id=orig, title=clean, genres=genres, year=year))

    seqs: dict[str, list[int]] = {}
    with seq_path.open() as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                raise DataFormatError(seq_path, n, f"expected '<user> <item>', got {line.strip()[:60]!r}")
            item = int(parts[1])
            if not 1 <= item <= n_items:
                raise DataFormatError(seq_path, n, f"item id {item} is not in {map_path.name} (1..{n_items})")
            seqs.setdefault(parts[0], []).append(item)

    users = [UserSequence(user_id=u, items=np.asarray(s, dtype=np.int32)) for u, s in seqs.items()]
    return InteractionData(name="ml-1m", catalog=Catalog(items), users=users)
