"""MovieLens loaders. Every loader returns :class:`InteractionData` with dense item ids.

Each loader takes the folder that holds one dataset's files (e.g. ``data/ml-100k``).
Malformed input raises :class:`DataFormatError` naming the file and the 1-based line, so a
broken download is found at load time rather than as a silent hole in a metric; a missing
folder or file raises :class:`UserInputError` naming the path.

Shared rules for the rating datasets (ML-1M ``ratings.dat``, ML-100K, ml-latest-small):

- dense item ids follow the source movie id: the catalog file's movies sorted by id get 1..N,
  so ids are stable across runs and unrated catalog entries keep an id;
- a rating that names a movie missing from the catalog file is an error (not dropped);
- users are sorted by numeric id; each user's ratings are sorted stably by timestamp, so ties
  keep file order; ``ts`` is in ms and every action is ``ACTION_ID["rate"]``.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from outerloop.data.schema import ACTION_ID, Catalog, InteractionData, Item, UserSequence
from outerloop.errors import DataFormatError, UserInputError

_YEAR = re.compile(r"\((\d{4})\)\s*$")
# Timestamps outside [1970, 2100) are taken as corrupt (a ms value in a seconds column, a sign).
_MAX_TS_S = 4_102_444_800
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
MAX_TAGS_PER_ITEM = 20


def _require(path: Path) -> Path:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    return path


def _require_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserInputError(f"{path}: data directory not found")
    return path


def _parse_title(title: str) -> tuple[str, int | None]:
    m = _YEAR.search(title)
    return title.strip(), (int(m.group(1)) if m else None)


# ---------------------------------------------------------------------------------------------
# field parsers: each names the file and line on failure


def _parse_id(text: str, path: Path, line: int, what: str) -> int:
    """A non-negative decimal id. ``int()`` alone would accept ' 7', '+7' and '1_0'."""
    if not (text.isascii() and text.isdigit()):
        raise DataFormatError(path, line, f"{what} {text[:40]!r} is not a non-negative integer")
    return int(text)


def _parse_ts_s(text: str, path: Path, line: int) -> int:
    """A Unix time in seconds, returned unchanged (callers convert to ms in bulk)."""
    if not (text.isascii() and text.isdigit()) or int(text) >= _MAX_TS_S:
        raise DataFormatError(path, line, f"bad timestamp {text[:40]!r} (expected Unix seconds)")
    return int(text)


def _check_rating(text: str, path: Path, line: int) -> None:
    """Ratings are not kept (the schema has no slot) but a garbled one means a garbled row."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 5.0:  # also false for nan
        raise DataFormatError(path, line, f"bad rating {text[:40]!r} (expected a number in (0, 5])")


def _parse_dd_mon_yyyy(text: str, path: Path, line: int) -> int:
    """ML-100K release dates ('01-Jan-1995') to ms; parsed by hand so the locale cannot matter."""
    parts = text.split("-")
    month = _MONTHS.get(parts[1].lower()) if len(parts) == 3 else None
    if month is None or not parts[0].isdigit() or not parts[2].isdigit():
        raise DataFormatError(path, line, f"bad release date {text[:40]!r} (expected dd-Mon-yyyy)")
    try:
        day = datetime(int(parts[2]), month, int(parts[0]), tzinfo=timezone.utc)
    except ValueError as exc:
        raise DataFormatError(path, line, f"bad release date {text!r}: {exc}") from None
    return int(day.timestamp() * 1000)


# ---------------------------------------------------------------------------------------------
# line readers: yield (1-based line number, fields), skipping blank lines


def _split_lines(path: Path, sep: str | None, encoding: str) -> Iterator[tuple[int, list[str]]]:
    try:
        with path.open(encoding=encoding, newline="") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield n, line.split(sep)
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, None, f"not {encoding} text ({exc.reason} at byte {exc.start})") from None


def _csv_rows(path: Path, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Rows of a UTF-8 CSV with a required header (quoted fields, CRLF or LF endings)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            first = next(reader, None)
            if first != header:
                raise DataFormatError(path, 1, f"expected header {','.join(header)!r}, got {first!r}")
            try:
                for row in reader:
                    if row:
                        yield reader.line_num, row
            except csv.Error as exc:
                raise DataFormatError(path, reader.line_num, f"unreadable CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# ---------------------------------------------------------------------------------------------
# catalog and interactions assembled the same way for every rating dataset


@dataclass(slots=True)
class _Movie:
    source_id: int
    title: str
    genres: tuple[str, ...]
    year: int | None
    release_ts: int | None = None
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class _Ratings:
    """Ratings collected row by row, turned into arrays once."""

    users: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)  # dense ids
    ts_s: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # the rating itself


def _movie_genres(text: str) -> tuple[str, ...]:
    """'A|B' -> ('A', 'B'); ml-latest-small writes '(no genres listed)' for none."""
    return tuple(g for g in text.split("|") if g and g != "(no genres listed)")


def _add_movie(movies: dict[int, _Movie], movie: _Movie, path: Path, line: int) -> None:
    if movie.source_id in movies:
        raise DataFormatError(path, line, f"movie id {movie.source_id} appears twice")
    movies[movie.source_id] = movie


def _dense_catalog(movies: dict[int, _Movie]) -> tuple[Catalog, dict[int, int]]:
    """Movies sorted by source id get dense ids 1..N; returns the catalog and source -> dense."""
    ordered = sorted(movies.values(), key=lambda m: m.source_id)
    items = [
        Item(item_id=i, source_id=str(m.source_id), title=m.title, genres=m.genres, year=m.year,
             tags=m.tags, release_ts=m.release_ts)
        for i, m in enumerate(ordered, 1)
    ]
    return Catalog(items), {m.source_id: i for i, m in enumerate(ordered, 1)}


def _read_ratings(path: Path, rows: Iterable[tuple[int, list[str]]], dense: dict[int, int],
                  catalog_name: str) -> _Ratings:
    """Rows of (user, movie, rating, timestamp) in seconds, validated, items mapped to dense."""
    out = _Ratings()
    for n, fields in rows:
        if len(fields) != 4:
            raise DataFormatError(path, n, f"expected 4 fields (user, movie, rating, timestamp), got {len(fields)}")
        user = _parse_id(fields[0], path, n, "user id")
        movie = _parse_id(fields[1], path, n, "movie id")
        _check_rating(fields[2], path, n)
        ts = _parse_ts_s(fields[3], path, n)
        item = dense.get(movie)
        if item is None:
            raise DataFormatError(path, n, f"movie id {movie} is not in {catalog_name}")
        out.users.append(user)
        out.items.append(item)
        out.ts_s.append(ts)
        out.values.append(float(fields[2]))
    return out


def _interaction_data(name: str, catalog: Catalog, ratings: _Ratings,
                      dislike_below: float | None = None) -> InteractionData:
    """Group ratings by user (numeric order), each user's sorted stably by time. With
    ``dislike_below``, a rating under it is explicit negative feedback and becomes the action
    ``skip`` (what the memory agent reads as "dropped"; serving counts it as seen); every other
    rating stays ``rate``."""
    if dislike_below is not None and not 0 < float(dislike_below) <= 5:
        raise UserInputError(f"dislike_below must be a rating in (0, 5], got {dislike_below!r}")
    users = np.asarray(ratings.users, dtype=np.int64)
    items = np.asarray(ratings.items, dtype=np.int32)
    ts_ms = np.asarray(ratings.ts_s, dtype=np.int64) * 1000
    values = np.asarray(ratings.values, dtype=np.float32)
    order = np.argsort(ts_ms, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]  # by user, then time, then file order
    users, items, ts_ms, values = users[order], items[order], ts_ms[order], values[order]
    acts = np.full(len(items), ACTION_ID["rate"], dtype=np.int8)
    if dislike_below is not None:
        acts[values < float(dislike_below)] = ACTION_ID["skip"]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([], dtype=np.int64)
    bounds = np.r_[starts, len(users)]
    seqs = [
        UserSequence(
            user_id=str(int(users[a])),
            items=items[a:b].copy(),
            ts=ts_ms[a:b].copy(),
            actions=acts[a:b].copy(),
        )
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())
    ]
    return InteractionData(name=name, catalog=catalog, users=seqs)


# ---------------------------------------------------------------------------------------------
# ML-1M


def _read_movies_dat(path: Path) -> dict[int, _Movie]:
    """ML-1M ``movies.dat``: ``MovieID::Title::Genres`` in latin-1."""
    movies: dict[int, _Movie] = {}
    for n, parts in _split_lines(path, "::", "latin-1"):
        if len(parts) != 3:
            raise DataFormatError(path, n, f"expected 'id::title::genres', got {'::'.join(parts)[:60]!r}")
        title, year = _parse_title(parts[1])
        movie = _Movie(_parse_id(parts[0], path, n, "movie id"), title, _movie_genres(parts[2]), year)
        _add_movie(movies, movie, path, n)
    return movies


def load_sasrec_ml1m(data_dir: str | Path) -> InteractionData:
    """ML-1M in SASRec's form (``sasrec_ml-1m.txt``: ``user item`` per line, in time order),
    joined through ``sasrec_item_map.txt`` to ``movies.dat`` for titles and genres.

    SASRec's item ids (1..3416) are kept as the dense ids, so results compare directly with
    published SASRec numbers. There are no timestamps or actions.
    """
    data_dir = _require_dir(data_dir)
    seq_path = _require(data_dir / "sasrec_ml-1m.txt")
    map_path = _require(data_dir / "sasrec_item_map.txt")
    movies_path = _require(data_dir / "movies.dat")
    movies = _read_movies_dat(movies_path)

    sas_to_orig: dict[int, int] = {}
    for n, parts in _split_lines(map_path, None, "ascii"):
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
            raise DataFormatError(map_path, n, f"expected '<sasrec_id> <movie_id>', got {' '.join(parts)[:60]!r}")
        sas_to_orig[int(parts[0])] = int(parts[1])

    n_items = max(sas_to_orig) if sas_to_orig else 0
    items: list[Item] = []
    for sid in range(1, n_items + 1):
        orig = sas_to_orig.get(sid)
        if orig is None:
            raise DataFormatError(map_path, None, f"no mapping for SASRec item id {sid}")
        movie = movies.get(orig)
        if movie is None:
            raise DataFormatError(movies_path, None, f"movie id {orig} (SASRec item {sid}) is missing")
        items.append(Item(item_id=sid, source_id=str(orig), title=movie.title, genres=movie.genres, year=movie.year))

    seqs: dict[str, list[int]] = {}
    for n, parts in _split_lines(seq_path, None, "ascii"):
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
            raise DataFormatError(seq_path, n, f"expected '<user> <item>', got {' '.join(parts)[:60]!r}")
        item = int(parts[1])
        if not 1 <= item <= n_items:
            raise DataFormatError(seq_path, n, f"item id {item} is not in {map_path.name} (1..{n_items})")
        seqs.setdefault(parts[0], []).append(item)

    users = [UserSequence(user_id=u, items=np.asarray(s, dtype=np.int32)) for u, s in seqs.items()]
    return InteractionData(name="ml-1m", catalog=Catalog(items), users=users)


def load_ml1m_ratings(data_dir: str | Path, dislike_below: float | None = None) -> InteractionData:
    """The original GroupLens ML-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``,
    seconds) with ``movies.dat`` (latin-1) as the catalog. All 3,883 catalog movies get ids,
    including the ~180 nobody rated, so ids differ from SASRec's 1..3416.
    """
    data_dir = _require_dir(data_dir)
    ratings_path = _require(data_dir / "ratings.dat")
    movies_path = _require(data_dir / "movies.dat")
    catalog, dense = _dense_catalog(_read_movies_dat(movies_path))
    ratings = _read_ratings(ratings_path, _split_lines(ratings_path, "::", "latin-1"), dense, movies_path.name)
    return _interaction_data("ml-1m-ratings", catalog, ratings, dislike_below)


# ---------------------------------------------------------------------------------------------
# ML-100K


def _read_u_genre(path: Path) -> list[str]:
    """``u.genre``: ``name|index`` lines; returns names by index (the order of u.item's flags)."""
    by_index: dict[int, str] = {}
    for n, parts in _split_lines(path, "|", "latin-1"):
        if len(parts) != 2 or not parts[0]:
            raise DataFormatError(path, n, f"expected 'genre|index', got {'|'.join(parts)[:60]!r}")
        by_index[_parse_id(parts[1], path, n, "genre index")] = parts[0]
    if sorted(by_index) != list(range(len(by_index))):
        raise DataFormatError(path, None, f"genre indexes are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _read_u_item(path: Path, genre_names: list[str]) -> dict[int, _Movie]:
    """``u.item``: ``id|title|release date|video release date|IMDb URL|<one 0/1 flag per genre>``.

    ``year`` comes from the title's '(1995)' where there is one, because the release date is
    sometimes a later re-release (Contempt (1963) is dated 27-Jun-1997); the release date is
    kept as ``release_ts`` and gives the year only for titles without one. The 'unknown' genre
    flag means no genre, as ml-latest-small's '(no genres listed)' does.
    """
    n_fields = 5 + len(genre_names)
    movies: dict[int, _Movie] = {}
    for n, parts in _split_lines(path, "|", "latin-1"):
        if len(parts) != n_fields:
            raise DataFormatError(path, n, f"expected {n_fields} '|'-separated fields, got {len(parts)}")
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataFormatError(path, n, "genre flags must be 0 or 1")
        title, year = _parse_title(parts[1])
        release_ts = _parse_dd_mon_yyyy(parts[2], path, n) if parts[2] else None
        if year is None and release_ts is not None:
            year = datetime.fromtimestamp(release_ts / 1000, tz=timezone.utc).year
        genres = tuple(g for g, f in zip(genre_names, flags) if f == "1" and g != "unknown")
        movie = _Movie(_parse_id(parts[0], path, n, "movie id"), title, genres, year, release_ts)
        _add_movie(movies, movie, path, n)
    return movies


def load_ml100k(data_dir: str | Path, dislike_below: float | None = None) -> InteractionData:
    """MovieLens 100K: ``u.data`` (tab-separated ``user item rating timestamp``), ``u.item``
    (pipe-separated, latin-1) and ``u.genre`` (the names of u.item's genre flags).
    ``dislike_below``: ratings under it become ``skip`` actions (see :func:`_interaction_data`)."""
    data_dir = _require_dir(data_dir)
    data_path = _require(data_dir / "u.data")
    item_path = _require(data_dir / "u.item")
    genre_path = _require(data_dir / "u.genre")
    catalog, dense = _dense_catalog(_read_u_item(item_path, _read_u_genre(genre_path)))
    ratings = _read_ratings(data_path, _split_lines(data_path, "\t", "latin-1"), dense, item_path.name)
    return _interaction_data("ml-100k", catalog, ratings, dislike_below)


# ---------------------------------------------------------------------------------------------
# ml-latest-small


def _read_movies_csv(path: Path) -> dict[int, _Movie]:
    movies: dict[int, _Movie] = {}
    for n, row in _csv_rows(path, ["movieId", "title", "genres"]):
        if len(row) != 3:
            raise DataFormatError(path, n, f"expected 3 fields (movieId, title, genres), got {len(row)}")
        title, year = _parse_title(row[1])
        _add_movie(movies, _Movie(_parse_id(row[0], path, n, "movie id"), title, _movie_genres(row[2]), year), path, n)
    return movies


def _read_tags_csv(path: Path, movies: dict[int, _Movie]) -> dict[int, tuple[str, ...]]:
    """Per movie: tags lower-cased and de-duplicated, most often applied first (ties
    alphabetical), at most :data:`MAX_TAGS_PER_ITEM`: a short, stable description per item
    rather than every user's spelling."""
    counts: dict[int, Counter[str]] = {}
    for n, row in _csv_rows(path, ["userId", "movieId", "tag", "timestamp"]):
        if len(row) != 4:
            raise DataFormatError(path, n, f"expected 4 fields (userId, movieId, tag, timestamp), got {len(row)}")
        _parse_id(row[0], path, n, "user id")
        movie = _parse_id(row[1], path, n, "movie id")
        _parse_ts_s(row[3], path, n)
        if movie not in movies:
            raise DataFormatError(path, n, f"movie id {movie} is not in movies.csv")
        tag = " ".join(row[2].lower().split())
        if tag:
            counts.setdefault(movie, Counter())[tag] += 1
    return {
        movie: tuple(t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAGS_PER_ITEM])
        for movie, c in counts.items()
    }


def load_ml_latest_small(data_dir: str | Path, dislike_below: float | None = None) -> InteractionData:
    """MovieLens "latest-small" (2018): ``ratings.csv`` and ``movies.csv`` (UTF-8, quoted
    titles, CRLF), with ``tags.csv`` folded into :attr:`Item.tags`. ``tags.csv`` is optional:
    without it items simply have no tags. ``dislike_below``: ratings under it become ``skip``
    actions (see :func:`_interaction_data`)."""
    data_dir = _require_dir(data_dir)
    ratings_path = _require(data_dir / "ratings.csv")
    movies_path = _require(data_dir / "movies.csv")
    movies = _read_movies_csv(movies_path)
    tags_path = data_dir / "tags.csv"
    if tags_path.is_file():
        for movie, tags in _read_tags_csv(tags_path, movies).items():
            movies[movie].tags = tags
    catalog, dense = _dense_catalog(movies)
    rows = _csv_rows(ratings_path, ["userId", "movieId", "rating", "timestamp"])
    ratings = _read_ratings(ratings_path, rows, dense, movies_path.name)
    return _interaction_data("ml-latest-small", catalog, ratings, dislike_below)
