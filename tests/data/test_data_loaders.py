"""MovieLens loaders and the dataset registry, against the real files in ../shared/data and
small malformed files written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from outerloop.data import (
    ACTION_ID,
    DATASETS,
    InteractionData,
    dataset_hash,
    load_dataset,
    load_ml1m_ratings,
    load_ml100k,
    load_ml_latest_small,
    load_sasrec_ml1m,
)
from outerloop.errors import DataFormatError, UserInputError


@pytest.fixture(scope="module")
def sasrec(data_dir: Path) -> InteractionData:
    return load_sasrec_ml1m(data_dir / "ml-1m")


@pytest.fixture(scope="module")
def ml100k(data_dir: Path) -> InteractionData:
    return load_ml100k(data_dir / "ml-100k")


@pytest.fixture(scope="module")
def latest(data_dir: Path) -> InteractionData:
    return load_ml_latest_small(data_dir / "ml-latest-small")


def _by_source(data: InteractionData, source_id: str):
    return next(it for it in data.catalog.items if it.source_id == source_id)


def _assert_rating_dataset_shape(data: InteractionData) -> None:
    """Rules every rating loader promises: numeric user order, time order, dense ids by source."""
    ids = [int(u.user_id) for u in data.users]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for u in data.users[:50]:
        assert u.ts is not None and u.actions is not None
        assert np.all(np.diff(u.ts) >= 0)
        assert np.all(u.actions == ACTION_ID["rate"])
        assert u.items.dtype == np.int32 and u.ts.dtype == np.int64
    sources = [int(it.source_id) for it in data.catalog.items]
    assert sources == sorted(sources)
    assert [it.item_id for it in data.catalog.items] == list(range(1, len(data.catalog) + 1))


# --- real files -------------------------------------------------------------------------------


def test_sasrec_ml1m_counts_and_titles(sasrec: InteractionData) -> None:
    assert len(sasrec.users) == 6040
    assert len(sasrec.catalog) == 3416
    assert sasrec.n_interactions == 999_611
    first = sasrec.catalog.get(1)
    assert first.title == "Raiders of the Lost Ark (1981)"
    assert first.genres == ("Action", "Adventure")
    assert first.year == 1981 and first.source_id == "1198"
    assert sasrec.users[0].user_id == "1" and sasrec.users[0].ts is None


def test_sasrec_titles_are_latin1_decoded(sasrec: InteractionData) -> None:
    assert sasrec.catalog.get(20).title == "Life Is Beautiful (La Vita è bella) (1997)"


def test_ml100k_counts_and_join(ml100k: InteractionData) -> None:
    assert len(ml100k.users) == 943
    assert len(ml100k.catalog) == 1682
    assert ml100k.n_interactions == 100_000
    _assert_rating_dataset_shape(ml100k)
    toy = ml100k.catalog.get(1)
    assert toy.title == "Toy Story (1995)"
    assert toy.genres == ("Animation", "Children's", "Comedy")
    assert toy.year == 1995 and toy.release_ts == 788_918_400_000  # 01-Jan-1995


def test_low_ratings_become_skips_when_asked(ml100k: InteractionData, data_dir: Path) -> None:
    """``dislike_below=3``: ratings of 1 and 2 are explicit negative feedback (action ``skip``);
    the same interactions in the same order, only the actions differ."""
    from outerloop.data.schema import ACTION_ID

    disliked = load_dataset("ml-100k", data_dir, dislike_below=3)
    raw = [line.split("\t") for line in (data_dir / "ml-100k" / "u.data").read_text().splitlines()]
    low = sum(1 for r in raw if int(r[2]) < 3)
    skips = sum(int((u.actions == ACTION_ID["skip"]).sum()) for u in disliked.users)
    assert skips == low and 0 < low < len(raw)
    assert all(np.array_equal(a.items, b.items) for a, b in zip(ml100k.users, disliked.users))
    assert all((u.actions == ACTION_ID["rate"]).all() for u in ml100k.users)
    assert dataset_hash(disliked) != dataset_hash(ml100k)


def test_ml100k_latin1_and_year_rules(ml100k: InteractionData) -> None:
    assert ml100k.catalog.get(543).title == "Misérables, Les (1995)"
    assert ml100k.catalog.get(1633).title.startswith("Á köldum klaka")
    contempt = ml100k.catalog.get(1252)  # re-released 27-Jun-1997; the film is from 1963
    assert contempt.year == 1963 and contempt.release_ts == 867_369_600_000
    unknown = ml100k.catalog.get(267)
    assert unknown.title == "unknown" and unknown.genres == () and unknown.year is None


def test_ml100k_user_sequence_in_time_order(ml100k: InteractionData, data_dir: Path) -> None:
    # user 1's first ratings by time, straight from u.data (ties kept in file order)
    rows = [line.split("\t") for line in (data_dir / "ml-100k" / "u.data").read_text().splitlines()]
    mine = sorted(((int(r[3]), int(r[1])) for r in rows if r[0] == "1"), key=lambda r: r[0])
    u1 = ml100k.users[0]
    assert u1.user_id == "1" and len(u1) == len(mine) == 272
    assert u1.ts[0] == mine[0][0] * 1000
    assert sorted(u1.items[u1.ts == u1.ts[0]].tolist()) == sorted(i for t, i in mine if t == mine[0][0])


def test_ml_latest_small_counts(latest: InteractionData) -> None:
    assert len(latest.users) == 610
    assert len(latest.catalog) == 9742
    assert len({int(i) for u in latest.users for i in u.items}) == 9724
    assert latest.n_interactions == 100_836
    assert [u.user_id for u in latest.users[:11]] == [str(i) for i in range(1, 12)]  # numeric, not "1","10"
    _assert_rating_dataset_shape(latest)


def test_ml_latest_small_titles_and_genres(latest: InteractionData) -> None:
    city = _by_source(latest, "29")  # quoted title with commas and non-ASCII
    assert city.title == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert city.year == 1995 and "Sci-Fi" in city.genres
    assert "\r" not in city.genres[-1]
    assert all("(no genres listed)" not in it.genres for it in latest.catalog.items)


def test_ml_latest_small_tags(latest: InteractionData) -> None:
    tagged = [it for it in latest.catalog.items if it.tags]
    assert 1000 < len(tagged) < len(latest.catalog)
    assert _by_source(latest, "1").tags == ("pixar", "fun")
    memento = _by_source(latest, "4226")
    assert memento.tags[:2] == ("twist ending", "mystery")  # 3x, 2x: most frequent first
    assert _by_source(latest, "60756").tags == ("funny", "will ferrell", "comedy", "highly quotable")
    for it in tagged:
        assert len(it.tags) <= 20 and len(set(it.tags)) == len(it.tags)
        assert all(t == t.lower() for t in it.tags)
    assert max(len(it.tags) for it in tagged) == 20


# --- registry -------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(DATASETS) == {"ml-1m", "ml-1m-ratings", "ml-100k", "ml-latest-small", "synthetic"}


def test_load_dataset_by_root_or_folder_or_env(data_dir: Path, ml100k: InteractionData,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    expected = dataset_hash(ml100k)
    assert dataset_hash(load_dataset("ml-100k", data_dir)) == expected
    assert dataset_hash(load_dataset("ml-100k", data_dir / "ml-100k")) == expected
    monkeypatch.setenv("OUTERLOOP_DATA_DIR", str(data_dir))
    assert load_dataset("ml-100k").name == "ml-100k"


def test_load_dataset_errors(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserInputError, match="valid names: ml-1m, ml-1m-ratings, ml-100k, ml-latest-small, synthetic"):
        load_dataset("ml-20m", data_dir)
    with pytest.raises(UserInputError, match="no option.*seed; valid: dislike_below"):
        load_dataset("ml-100k", data_dir, seed=3)
    with pytest.raises(UserInputError, match="takes none"):
        load_dataset("ml-1m", data_dir, dislike_below=3)
    with pytest.raises(UserInputError, match="dislike_below must be a rating"):
        load_dataset("ml-100k", data_dir, dislike_below=9)
    with pytest.raises(UserInputError, match="n_items.*valid: n_users"):
        load_dataset("synthetic", n_items=10)
    monkeypatch.delenv("OUTERLOOP_DATA_DIR", raising=False)
    with pytest.raises(UserInputError, match="OUTERLOOP_DATA_DIR"):
        load_dataset("ml-100k")
    # ratings.dat is not shipped: the error names the file it looked for
    with pytest.raises(UserInputError, match=r"ml-1m[/\\]ratings\.dat: file not found"):
        load_dataset("ml-1m-ratings", data_dir)


def test_load_dataset_synthetic_options() -> None:
    a = load_dataset("synthetic", n_users=40, n_films=60, n_series=4, seed=5, days=7)
    b = load_dataset("synthetic", data_dir="/nonexistent", n_users=40, n_films=60, n_series=4, seed=5, days=7)
    assert a.name == "synthetic" and 0 < len(a.users) <= 40
    assert dataset_hash(a) == dataset_hash(b)


def test_dataset_hash_is_content_sensitive(ml100k: InteractionData) -> None:
    h = dataset_hash(ml100k)
    assert len(h) == 64 and h == dataset_hash(ml100k)
    user = ml100k.users[5]
    original = user.items.copy()
    try:
        user.items[[0, 1]] = user.items[[1, 0]]  # same items, different order
        assert dataset_hash(ml100k) != h
    finally:
        user.items[:] = original
    assert dataset_hash(ml100k) == h


# --- small files in tmp_path -------------------------------------------------------------------

_MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Misérables, Les (1995)::Drama\n"
    "5::Heat (1995)::Action|Crime\n"
)
_U_GENRE = "unknown|0\nAction|1\nComedy|2\n\n"
_U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
    "2|Misérables, Les (1995)|01-Jan-1995||http://y|0|1|0\n"
    "3|unknown||||1|0|0\n"
)


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _ml1m_dir(tmp_path: Path, ratings: str) -> Path:
    _write(tmp_path / "ml-1m" / "movies.dat", _MOVIES_DAT, "latin-1")
    _write(tmp_path / "ml-1m" / "ratings.dat", ratings)
    return tmp_path / "ml-1m"


def _ml100k_dir(tmp_path: Path, data: str, items: str = _U_ITEM) -> Path:
    _write(tmp_path / "ml-100k" / "u.genre", _U_GENRE)
    _write(tmp_path / "ml-100k" / "u.item", items, "latin-1")
    _write(tmp_path / "ml-100k" / "u.data", data)
    return tmp_path / "ml-100k"


def test_ml1m_ratings_small_file(tmp_path: Path) -> None:
    d = _ml1m_dir(tmp_path, "10::5::4::978300760\n2::1::3::978300800\n10::2::5::978300700\n10::1::5::978300760\n")
    data = load_ml1m_ratings(d)
    assert data.name == "ml-1m-ratings"
    assert [it.source_id for it in data.catalog.items] == ["1", "2", "5"]  # dense by source id
    assert data.catalog.get(2).title == "Misérables, Les (1995)"  # latin-1 decoded
    assert data.catalog.get(3).genres == ("Action", "Crime")
    assert [u.user_id for u in data.users] == ["2", "10"]  # numeric order
    u10 = data.users[1]
    assert u10.items.tolist() == [2, 3, 1]  # by time; the tie at ...760 keeps file order
    assert u10.ts.tolist() == [978300700000, 978300760000, 978300760000]
    assert data.n_interactions == 4


@pytest.mark.parametrize(
    ("ratings", "line", "problem"),
    [
        ("1::1::4::978300760\n1::2::4\n", 2, "expected 4 fields"),
        ("1::1::4::978300760\n\nx1::2::4::978300760\n", 3, "user id 'x1' is not a non-negative integer"),
        ("1::1::4::978300760\n1::2.5::4::978300760\n", 2, "movie id '2.5'"),
        ("1::1::4::978300760\n1::2::4::-5\n", 2, "bad timestamp '-5'"),
        ("1::1::4::978300760\n1::2::4::978300760000\n", 2, "bad timestamp"),
        ("1::1::nine::978300760\n", 1, "bad rating 'nine'"),
        ("1::1::4::978300760\n1::1::4::978300761\n1::3::4::978300762\n", 3, "movie id 3 is not in movies.dat"),
    ],
)
def test_ml1m_ratings_malformed(tmp_path: Path, ratings: str, line: int, problem: str) -> None:
    d = _ml1m_dir(tmp_path, ratings)
    with pytest.raises(DataFormatError) as err:
        load_ml1m_ratings(d)
    assert err.value.line == line
    assert f"ratings.dat:{line}: " in str(err.value)
    assert problem in str(err.value)


def test_movies_dat_malformed(tmp_path: Path) -> None:
    d = _ml1m_dir(tmp_path, "1::1::4::978300760\n")
    _write(d / "movies.dat", "1::Toy Story (1995)::Comedy\n2::Broken Title\n", "latin-1")
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: expected 'id::title::genres'"):
        load_ml1m_ratings(d)
    _write(d / "movies.dat", "1::Toy Story (1995)::Comedy\n1::Again (1995)::Drama\n", "latin-1")
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: movie id 1 appears twice"):
        load_ml1m_ratings(d)


def test_ml100k_small_files(tmp_path: Path) -> None:
    data = load_ml100k(_ml100k_dir(tmp_path, "7\t2\t3\t881250949\n7\t1\t5\t881250940\n3\t3\t1\t881250000\n"))
    assert [it.title for it in data.catalog.items] == ["Toy Story (1995)", "Misérables, Les (1995)", "unknown"]
    assert data.catalog.get(1).genres == ("Comedy",)
    assert data.catalog.get(3).genres == ()  # the 'unknown' flag means no genre
    assert [u.user_id for u in data.users] == ["3", "7"]
    assert data.users[1].items.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("data", "items", "file_line", "problem"),
    [
        ("1\t1\t3\t881250949\n1\t2\t3\n", _U_ITEM, "u.data:2", "expected 4 fields"),
        ("1\t1\t3\t881250949\n1\t9\t3\t881250949\n", _U_ITEM, "u.data:2", "movie id 9 is not in u.item"),
        ("1\t1\t3\tyesterday\n", _U_ITEM, "u.data:1", "bad timestamp 'yesterday'"),
        ("1\t1\t3\t881250949\n", _U_ITEM.replace("|0|1|0\n", "|0|1\n"), "u.item:2",
         "expected 8 '|'-separated fields, got 7"),
        ("1\t1\t3\t881250949\n", _U_ITEM.replace("01-Jan-1995||http://y", "1995-01-01||http://y"), "u.item:2",
         "bad release date"),
        ("1\t1\t3\t881250949\n", _U_ITEM.replace("|0|1|0\n", "|0|2|0\n"), "u.item:2", "genre flags must be 0 or 1"),
    ],
)
def test_ml100k_malformed(tmp_path: Path, data: str, items: str, file_line: str, problem: str) -> None:
    with pytest.raises(DataFormatError) as err:
        load_ml100k(_ml100k_dir(tmp_path, data, items))
    assert f"{file_line}: " in str(err.value) and problem in str(err.value)


def _latest_dir(tmp_path: Path, ratings: str, tags: str | None = None) -> Path:
    d = tmp_path / "ml-latest-small"
    _write(d / "movies.csv", 'movieId,title,genres\r\n10,"Lost Children, The (Cité, La) (1995)",Fantasy|Sci-Fi\r\n'
                            "2,Jumanji (1995),(no genres listed)\r\n")
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\r\n" + ratings)
    if tags is not None:
        _write(d / "tags.csv", "userId,movieId,tag,timestamp\r\n" + tags)
    return d


def test_ml_latest_small_small_files(tmp_path: Path) -> None:
    tags = "1,10,Dark,1\r\n2,10,dark ,2\r\n3,10,Weird,3\r\n1,2,board game,4\r\n"
    data = load_ml_latest_small(_latest_dir(tmp_path, "1,10,4.5,964982703\r\n1,2,0.5,964982700\r\n", tags))
    assert [it.source_id for it in data.catalog.items] == ["2", "10"]
    jumanji, lost = data.catalog.items
    assert lost.title == "Lost Children, The (Cité, La) (1995)" and lost.genres == ("Fantasy", "Sci-Fi")
    assert jumanji.genres == ()
    assert lost.tags == ("dark", "weird") and jumanji.tags == ("board game",)
    assert data.users[0].items.tolist() == [1, 2]
    # tags.csv is optional
    no_tags = load_ml_latest_small(_latest_dir(tmp_path / "b", "1,10,4.5,964982703\r\n"))
    assert all(it.tags == () for it in no_tags.catalog.items)


@pytest.mark.parametrize(
    ("ratings", "tags", "file_line", "problem"),
    [
        ("1,10,4.5,964982703\r\n1,10,4.5\r\n", None, "ratings.csv:3", "expected 4 fields"),
        ("1,11,4.5,964982703\r\n", None, "ratings.csv:2", "movie id 11 is not in movies.csv"),
        ("1,10,4.5,964982703\r\n1,10,6.0,964982703\r\n", None, "ratings.csv:3", "bad rating '6.0'"),
        ("1,10,4.5,964982703\r\n", "1,10,dark,1\r\n1,99,weird,2\r\n", "tags.csv:3", "movie id 99 is not in movies.csv"),
    ],
)
def test_ml_latest_small_malformed(tmp_path: Path, ratings: str, tags: str | None, file_line: str,
                                   problem: str) -> None:
    with pytest.raises(DataFormatError) as err:
        load_ml_latest_small(_latest_dir(tmp_path, ratings, tags))
    assert f"{file_line}: " in str(err.value) and problem in str(err.value)


def test_ml_latest_small_bad_header_and_encoding(tmp_path: Path) -> None:
    d = _latest_dir(tmp_path, "1,10,4.5,964982703\r\n")
    _write(d / "ratings.csv", "user,movie,rating,timestamp\r\n1,10,4.5,964982703\r\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:1: expected header"):
        load_ml_latest_small(d)
    _write(d / "movies.csv", "movieId,title,genres\r\n10,Café (1995),Drama\r\n", "latin-1")
    with pytest.raises(DataFormatError, match=r"movies\.csv: not UTF-8"):
        load_ml_latest_small(d)


def test_sasrec_malformed(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    _write(d / "movies.dat", _MOVIES_DAT, "latin-1")
    _write(d / "sasrec_item_map.txt", "1 5\n2 1\n")
    _write(d / "sasrec_ml-1m.txt", "1 1\n1 2\n2 1\n")
    ok = load_sasrec_ml1m(d)
    assert ok.catalog.get(1).title == "Heat (1995)" and [len(u) for u in ok.users] == [2, 1]
    _write(d / "sasrec_ml-1m.txt", "1 1\n1 2\n2 3\n")
    with pytest.raises(DataFormatError, match=r"sasrec_ml-1m\.txt:3: item id 3 is not in sasrec_item_map\.txt"):
        load_sasrec_ml1m(d)
    _write(d / "sasrec_ml-1m.txt", "1 1\n1\t2\tx\n")
    with pytest.raises(DataFormatError, match=r"sasrec_ml-1m\.txt:2: expected '<user> <item>'"):
        load_sasrec_ml1m(d)


@pytest.mark.parametrize(
    ("loader", "present", "missing"),
    [
        (load_ml100k, ["u.genre", "u.item"], "u.data"),
        (load_ml_latest_small, ["movies.csv"], "ratings.csv"),
        (load_ml1m_ratings, ["ratings.dat"], "movies.dat"),
        (load_sasrec_ml1m, ["sasrec_ml-1m.txt", "movies.dat"], "sasrec_item_map.txt"),
    ],
)
def test_missing_file_names_the_path(tmp_path: Path, loader, present: list[str], missing: str) -> None:
    for name in present:
        _write(tmp_path / name, "")
    with pytest.raises(UserInputError) as err:
        loader(tmp_path)
    assert not isinstance(err.value, DataFormatError)
    assert str(tmp_path / missing) in str(err.value) and "file not found" in str(err.value)


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="nowhere: data directory not found"):
        load_ml100k(tmp_path / "nowhere")


def test_commands_training_next_to_artifacts_load_the_data_the_model_saw(data_dir) -> None:
    """``training_data`` (what train-ranker and train-ensemble load) applies the options the
    artifacts were trained with: ML-100K with ``dislike_below=3`` comes back with its skips."""
    from types import SimpleNamespace

    from outerloop.data.schema import ACTION_ID
    from outerloop.inner_loop.model.artifacts import training_data

    arts = SimpleNamespace(manifest={"dataset": "ml-100k", "dataset_options": {"dislike_below": 3},
                                     "data_dir": str(data_dir)})
    skips = sum(int((u.actions == ACTION_ID["skip"]).sum()) for u in training_data(arts).users)  # type: ignore[arg-type]
    assert skips > 1000  # ratings 1-2 of ML-100K's 100,000
    plain = training_data(arts, "ml-100k", data_dir)  # type: ignore[arg-type]
    assert sum(int((u.actions == ACTION_ID["skip"]).sum()) for u in plain.users) == skips  # same name: same options
