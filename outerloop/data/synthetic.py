"""A small, seeded streaming world: a catalog of films and series, users with tastes and habits,
and a simulator that turns them into a time-ordered stream of playback events.

Why it exists: MovieLens has ratings, not viewing. The outer loop's demos need what a streaming
service sees (sessions at 2 AM, series continued episode by episode, titles dropped after five
minutes, episodes released mid-stream), with a ground truth we control. The behaviours are
few and simple, but each one is real in the events, so agents have something true to find:

- **continue watching**: series watchers mostly play the next episode (in the same session
  while time allows, or at the start of the next one); a title cut off by the end of a session
  is paused and usually resumed from that position later;
- **late-night lean**: some users (``night_dark``) pick thrillers and horror after 22:00 local;
- **genre fatigue**: some users (``tired_genre``) tire of their favourite genre part-way
  through: they start three or four titles of it in a row and skip each within minutes, then
  mostly avoid it for the rest of the simulation;
- **runtime by daypart**: short things on the phone in the morning, films on the TV at night;
- **releases**: airing series drop weekly episodes during the window; each release is an
  ``episode_release`` event with ``user_id`` :data:`CATALOG_USER_ID` and no device/position,
  and no one plays an episode before its release.

Everything is drawn from ``numpy.random.default_rng(seed)`` (catalog, users, session times)
and a ``random.Random`` per user seeded from (seed, user, window) for the step-by-step part,
so the same arguments give the same events, and one user's stream does not depend on how many
other users there are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from outerloop.data.schema import ACTION_ID, Catalog, InteractionData, Item, UserSequence
from outerloop.errors import UserInputError

GENRES: tuple[str, ...] = (
    "Action", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family",
    "Fantasy", "Horror", "Mystery", "Romance", "Sci-Fi", "Thriller",
)
# The secondary genre of a title is drawn from its primary genre's companions (Crime -> Drama...).
_COMPANIONS: dict[str, tuple[str, ...]] = {
    "Action": ("Thriller", "Sci-Fi", "Crime", "Fantasy"),
    "Animation": ("Family", "Comedy", "Fantasy", "Action"),
    "Comedy": ("Romance", "Drama", "Family", "Crime"),
    "Crime": ("Drama", "Thriller", "Mystery", "Drama"),
    "Documentary": ("Crime", "Drama", "Family", "Sci-Fi"),
    "Drama": ("Romance", "Crime", "Comedy", "Mystery"),
    "Family": ("Comedy", "Animation", "Fantasy", "Drama"),
    "Fantasy": ("Action", "Family", "Drama", "Horror"),
    "Horror": ("Thriller", "Mystery", "Sci-Fi", "Comedy"),
    "Mystery": ("Thriller", "Crime", "Drama", "Horror"),
    "Romance": ("Comedy", "Drama", "Fantasy", "Sci-Fi"),
    "Sci-Fi": ("Action", "Thriller", "Drama", "Horror"),
    "Thriller": ("Crime", "Mystery", "Horror", "Action"),
}
# Tone words per primary genre; a title gets two of its genre's.
_TONES: dict[str, tuple[str, ...]] = {
    "Action": ("fast-paced", "gritty", "explosive", "crowd-pleaser"),
    "Animation": ("quirky", "feel-good", "colourful", "whimsical"),
    "Comedy": ("witty", "feel-good", "quirky", "light"),
    "Crime": ("gritty", "dark", "slow-burn", "tense"),
    "Documentary": ("cerebral", "eye-opening", "slow-burn", "uplifting"),
    "Drama": ("slow-burn", "heartwarming", "bleak", "character-driven"),
    "Family": ("cozy", "feel-good", "uplifting", "whimsical"),
    "Fantasy": ("atmospheric", "epic", "whimsical", "dark"),
    "Horror": ("dark", "atmospheric", "gory", "tense"),
    "Mystery": ("slow-burn", "atmospheric", "twisty", "cerebral"),
    "Romance": ("feel-good", "heartwarming", "bittersweet", "light"),
    "Sci-Fi": ("cerebral", "atmospheric", "fast-paced", "dystopian"),
    "Thriller": ("tense", "dark", "twisty", "fast-paced"),
}
DARK_GENRES: tuple[str, ...] = ("Thriller", "Horror")
_SHORT_GENRES = ("Comedy", "Animation", "Family")  # their series run ~25 min an episode

# Dayparts in local time, and the local-minute window in which sessions of each start.
DAYPARTS: tuple[str, ...] = ("morning", "afternoon", "evening", "late_night")  # 05-12, 12-17, 17-22, 22-05
_SESSION_WINDOW_MIN = np.array([  # late-night sessions start 22:00-03:00 (27:00 = 03:00 next day)
    [6 * 60, 11 * 60 + 30], [12 * 60, 16 * 60 + 30], [17 * 60, 22 * 60], [22 * 60, 27 * 60],
])
_RUNTIME_PREF_MIN = np.array([28.0, 40.0, 95.0, 55.0])  # typical wanted runtime per daypart
# Habit -> how a user's sessions spread over the dayparts.
HABITS: dict[str, tuple[float, float, float, float]] = {
    "evening": (0.08, 0.12, 0.65, 0.15),
    "late_night": (0.05, 0.07, 0.28, 0.60),
    "daytime": (0.35, 0.35, 0.20, 0.10),
    "mixed": (0.20, 0.25, 0.35, 0.20),
}
_HABIT_SHARE = (0.40, 0.20, 0.15, 0.25)
DEVICES: tuple[str, ...] = ("tv", "phone", "tablet", "web")
_DEVICE_OWNERSHIP = np.array([0.85, 0.80, 0.30, 0.35])
_DEVICE_BY_DAYPART = np.array([  # rows: dayparts, cols: DEVICES
    [0.5, 3.0, 1.0, 0.6],
    [0.8, 2.0, 1.0, 1.5],
    [3.0, 0.6, 1.0, 0.7],
    [2.0, 1.2, 1.5, 0.5],
])
_TZ_OFFSETS_MIN = np.array([-480, -420, -360, -300, -180, 0, 60, 120, 330, 540, 600])

CATALOG_USER_ID = "__catalog__"  # user_id of episode_release events (no person did them)
# Event types that become model interactions; pause/seek are playback noise, releases are
# catalog events.
INTERACTION_TYPES: tuple[str, ...] = ("play", "finish", "skip", "add_to_list")
DEFAULT_START_TS_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: fixed, so runs repeat

_MIN_MS = 60_000
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_YEAR_MS = 365 * _DAY_MS
_LATENT_DIM = 16

_ADJECTIVES = (
    "Silent", "Crimson", "Hollow", "Golden", "Broken", "Midnight", "Electric", "Quiet", "Savage",
    "Lost", "Hidden", "Northern", "Burning", "Glass", "Velvet", "Iron", "Lonely", "Wild", "Last",
    "Paper", "Distant", "Frozen", "Secret", "Bright", "Restless", "Shallow", "Bitter", "Sweet",
    "Endless", "Fallen", "Little", "Violet", "Scarlet", "Empty", "Wandering", "Sudden", "Pale",
    "Tender", "Hungry", "Final",
)
_NOUNS = (
    "Harbor", "Garden", "Witness", "River", "Empire", "Letter", "Station", "Orchard", "Signal",
    "Kingdom", "Alibi", "Frontier", "Mirror", "Lighthouse", "Verdict", "Carnival", "Circuit",
    "Winter", "Summer", "Island", "Detective", "Orbit", "Cabin", "Promise", "Heist", "Shadow",
    "Valley", "Archive", "Tide", "Motel", "Parade", "Labyrinth", "Harvest", "Engine", "Forest",
    "Stranger", "Canyon", "Choir", "Comet", "Passage",
)


# ---------------------------------------------------------------------------------------------
# catalog


@dataclass(slots=True)
class _Titles:
    """Title-level facts (a film or a whole series) the simulator needs next to the catalog.

    Titles are films 0..n_films-1, then series; a film's item is ``first_item``; a series'
    episodes are ``first_item .. first_item + n_items - 1`` in season/episode order.
    """

    primary: np.ndarray  # (T,) genre index
    secondary: np.ndarray  # (T,) genre index or -1
    latent: np.ndarray  # (T, D) unit vectors
    log_pop: np.ndarray  # (T,)
    is_series: np.ndarray  # (T,) bool
    first_item: np.ndarray  # (T,) dense id
    n_items: np.ndarray  # (T,)


def _draw_series_shapes(rng: np.random.Generator, n_series: int) -> tuple[np.ndarray, np.ndarray]:
    """(seasons, episodes per season) for each series: 1-4 seasons of 6-12 episodes."""
    seasons = rng.choice(np.arange(1, 5), size=n_series, p=[0.4, 0.3, 0.2, 0.1])
    eps = rng.integers(6, 13, size=n_series)
    return seasons, eps


def _draw_names(rng: np.random.Generator, n: int, pattern: str) -> list[str]:
    a = rng.integers(0, len(_ADJECTIVES), size=n).tolist()
    b = rng.integers(0, len(_NOUNS), size=n).tolist()
    return [pattern.format(adj=_ADJECTIVES[i], noun=_NOUNS[j]) for i, j in zip(a, b)]


def _years(ts_ms: np.ndarray) -> np.ndarray:
    return ts_ms.astype("datetime64[ms]").astype("datetime64[Y]").astype(np.int64) + 1970


def _episode_release_ts(rng: np.random.Generator, seasons: np.ndarray, eps: np.ndarray,
                        start_ts_ms: int) -> np.ndarray:
    """Release time of every episode, series by series, season by season, weekly.

    A third of the series are airing: their last season started k weeks before the world's
    start (k < episodes), so its remaining episodes come out weekly during the simulation.
    Other series finished 2 months to 10 years ago. Seasons are a year apart.
    """
    n = len(seasons)
    airing = rng.random(n) < 1 / 3
    k_weeks = np.floor(rng.random(n) * eps).astype(np.int64)
    last_start = np.where(
        airing,
        start_ts_ms - k_weeks * _WEEK_MS + 20 * 3_600_000,  # 20:00 UTC on a release day
        start_ts_ms - (rng.uniform(60, 3650, size=n) * _DAY_MS).astype(np.int64),
    )
    per_series = seasons * eps
    series_idx = np.repeat(np.arange(n), per_series)
    offset = np.arange(per_series.sum()) - np.repeat(np.cumsum(per_series) - per_series, per_series)
    season0 = offset // eps[series_idx]
    ep0 = offset % eps[series_idx]
    return last_start[series_idx] - (seasons[series_idx] - 1 - season0) * _YEAR_MS + ep0 * _WEEK_MS


@dataclass(slots=True)
class _CatalogColumns:
    """The catalog as arrays, before it becomes :class:`Item` objects."""

    kind_episode: np.ndarray
    title_idx: np.ndarray
    season: np.ndarray
    episode: np.ndarray
    runtime: np.ndarray
    release_ts: np.ndarray
    names: list[str]
    series_ids: list[str]
    tone_pick: np.ndarray  # (N, 2) indexes into the primary genre's tones


def _build_columns(rng: np.random.Generator, n_films: int, seasons: np.ndarray, eps: np.ndarray,
                   primary: np.ndarray, start_ts_ms: int) -> _CatalogColumns:
    n_series = len(seasons)
    per_series = seasons * eps
    n_eps = int(per_series.sum())
    s_idx = np.repeat(np.arange(n_series), per_series)
    offset = np.arange(n_eps) - np.repeat(np.cumsum(per_series) - per_series, per_series)

    film_years_ago = np.minimum(rng.exponential(9.0, size=n_films), 60.0)
    film_release = start_ts_ms - (film_years_ago * _YEAR_MS).astype(np.int64) - rng.integers(1, 30, n_films) * _DAY_MS
    film_runtime = np.clip(rng.normal(108, 16, size=n_films), 80, 150)

    short = np.isin(primary[n_films:], [GENRES.index(g) for g in _SHORT_GENRES])
    series_runtime = np.where(short, rng.normal(26, 3, size=n_series), rng.normal(48, 6, size=n_series))
    ep_runtime = np.clip(series_runtime[s_idx] + rng.normal(0, 2, size=n_eps), 20, 60)

    series_ids = [f"s{j}" for j in range(n_series)]
    names = _draw_names(rng, n_films, "The {adj} {noun}") + _draw_names(rng, n_series, "{adj} {noun}")
    return _CatalogColumns(
        kind_episode=np.r_[np.zeros(n_films, bool), np.ones(n_eps, bool)],
        title_idx=np.r_[np.arange(n_films), n_films + s_idx],
        season=np.r_[np.zeros(n_films, np.int64), offset // eps[s_idx] + 1],
        episode=np.r_[np.zeros(n_films, np.int64), offset % eps[s_idx] + 1],
        runtime=np.rint(np.r_[film_runtime, ep_runtime]).astype(np.int64),
        release_ts=np.r_[film_release, _episode_release_ts(rng, seasons, eps, start_ts_ms)],
        names=names,
        series_ids=series_ids,
        tone_pick=rng.integers(0, 4, size=(n_films + n_eps, 2)),
    )


def _items_from_columns(cols: _CatalogColumns, primary: np.ndarray, secondary: np.ndarray,
                        n_films: int) -> list[Item]:
    """Build :class:`Item` objects column-wise (``map`` over lists, no per-item numpy access);
    genre and tag tuples come from small lookup tables and are shared, so a million items
    take a few seconds and little memory beyond the items themselves."""
    n_g, n_t = len(GENRES), 4
    genre_table = [(GENRES[p],) if s == n_g else (GENRES[p], GENRES[s]) for p in range(n_g) for s in range(n_g + 1)]
    tone_table = [tuple(dict.fromkeys((_TONES[g][a], _TONES[g][b])))
                  for g in GENRES for a in range(n_t) for b in range(n_t)]
    p_item = primary[cols.title_idx]
    s_item = np.where(secondary[cols.title_idx] < 0, n_g, secondary[cols.title_idx])
    genres = [genre_table[c] for c in (p_item * (n_g + 1) + s_item).tolist()]
    tones = [tone_table[c] for c in (p_item * n_t * n_t + cols.tone_pick[:, 0] * n_t + cols.tone_pick[:, 1]).tolist()]

    n = len(cols.title_idx)
    titles = cols.title_idx.tolist()
    ep_titles = titles[n_films:]
    seasons, episodes = cols.season[n_films:].tolist(), cols.episode[n_films:].tolist()
    series = [cols.series_ids[t - n_films] for t in ep_titles]
    source_ids = [f"f{t}" for t in titles[:n_films]] + [
        f"{sid}e{se:02d}{ep:02d}" for sid, se, ep in zip(series, seasons, episodes)]
    names = cols.names[:n_films] + [
        f"{cols.names[t]} S{se:02d}E{ep:02d}" for t, se, ep in zip(ep_titles, seasons, episodes)]
    n_eps = n - n_films
    return list(map(
        Item, range(1, n + 1), source_ids, names, genres, _years(cols.release_ts).tolist(),
        cols.runtime.tolist(), tones, ["film"] * n_films + ["episode"] * n_eps,
        [None] * n_films + series, [None] * n_films + seasons, [None] * n_films + episodes,
        cols.release_ts.tolist(),
    ))


def _draw_genres(rng: np.random.Generator, n_titles: int) -> tuple[np.ndarray, np.ndarray]:
    """Primary genre (Drama and Comedy most common) and an optional companion genre."""
    weights = np.array([1.2, 0.6, 1.6, 1.0, 0.5, 1.8, 0.6, 0.6, 0.8, 0.6, 0.9, 0.8, 1.2])
    primary = rng.choice(len(GENRES), size=n_titles, p=weights / weights.sum())
    companions = np.array([[GENRES.index(c) for c in _COMPANIONS[g]] for g in GENRES])
    secondary = companions[primary, rng.integers(0, 4, size=n_titles)]
    secondary = np.where(rng.random(n_titles) < 0.6, secondary, -1)
    return primary, secondary


def _build_catalog(rng: np.random.Generator, n_films: int, seasons: np.ndarray, eps: np.ndarray,
                   start_ts_ms: int) -> tuple[Catalog, np.ndarray, np.ndarray]:
    """The catalog, plus each title's primary and secondary genre index (the simulator's view)."""
    primary, secondary = _draw_genres(rng, n_films + len(seasons))
    cols = _build_columns(rng, n_films, seasons, eps, primary, start_ts_ms)
    catalog = Catalog(_items_from_columns(cols, primary, secondary, n_films), genres=sorted(GENRES))
    return catalog, primary, secondary


def _title_facts(rng: np.random.Generator, primary: np.ndarray, secondary: np.ndarray,
                 seasons: np.ndarray, eps: np.ndarray) -> _Titles:
    """Latent vectors (near their genres' centroids, so co-watching has structure) and
    popularity, per title. Kept out of :func:`synthetic_catalog`, which needs neither."""
    n_titles, n_series = len(primary), len(seasons)
    n_films = n_titles - n_series
    centroids = rng.normal(size=(len(GENRES), _LATENT_DIM))
    sec_part = np.where(secondary[:, None] >= 0, centroids[np.maximum(secondary, 0)], 0.0)
    latent = centroids[primary] + 0.5 * sec_part + 0.7 * rng.normal(size=(n_titles, _LATENT_DIM))
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    n_items = np.r_[np.ones(n_films, np.int64), seasons * eps]
    return _Titles(
        primary=primary,
        secondary=secondary,
        latent=latent,
        log_pop=rng.normal(0.0, 1.0, size=n_titles),
        is_series=np.r_[np.zeros(n_films, bool), np.ones(n_series, bool)],
        first_item=np.cumsum(n_items) - n_items + 1,
        n_items=n_items,
    )


def synthetic_catalog(n_items: int, seed: int = 0, start_ts_ms: int = DEFAULT_START_TS_MS) -> Catalog:
    """A catalog of exactly ``n_items`` films and episodes (about 40% episodes), built with
    the same generator as :class:`SyntheticWorld` but without users; fast enough for a
    million items, for serving and index benchmarks at scale."""
    if n_items < 1:
        raise UserInputError(f"n_items must be >= 1, got {n_items}")
    rng = np.random.default_rng([seed, 7])
    seasons, eps = _draw_series_shapes(rng, max(1, int(n_items * 0.4 / 10)) + 1)
    keep = int(np.searchsorted(np.cumsum(seasons * eps), int(n_items * 0.4), side="right"))
    seasons, eps = seasons[:keep], eps[:keep]
    n_films = n_items - int((seasons * eps).sum())
    return _build_catalog(rng, n_films, seasons, eps, start_ts_ms)[0]


# ---------------------------------------------------------------------------------------------
# users


@dataclass(frozen=True, slots=True)
class SyntheticUser:
    """The ground truth about one simulated user (what agents should discover from events)."""

    user_id: str
    tz_offset_min: int  # local time = UTC + offset
    habit: str  # a key of HABITS
    devices: tuple[str, ...]
    genre_prefs: tuple[float, ...]  # aligned with GENRES, sums to 1
    runtime_pref_min: tuple[float, ...]  # aligned with DAYPARTS
    sessions_per_day: float
    night_dark: bool  # leans to thrillers/horror late at night
    tired_genre: str | None  # the genre this user tires of during a simulation
    tired_at: float | None  # when, as a fraction of the simulated days

    def top_genres(self, k: int = 3) -> list[str]:
        order = np.argsort(self.genre_prefs)[::-1][:k]
        return [GENRES[i] for i in order]


@dataclass(slots=True)
class _UserArrays:
    prefs: np.ndarray  # (U, G)
    latent: np.ndarray  # (U, D)
    habit: np.ndarray  # (U,) index into HABITS
    tz: np.ndarray  # (U,) minutes
    devices: np.ndarray  # (U, 4) bool
    runtime_pref: np.ndarray  # (U, 4) minutes
    rate: np.ndarray  # (U,) sessions per day
    night_dark: np.ndarray  # (U,) bool
    tired_genre: np.ndarray  # (U,) genre index or -1
    tired_at: np.ndarray  # (U,) fraction of the window


def _draw_users(rng: np.random.Generator, n_users: int, titles: _Titles) -> _UserArrays:
    """Tastes (a peaked Dirichlet over genres, so most users have two or three favourites),
    habits, devices and the two scripted traits (night_dark, tired_genre)."""
    n_g = len(GENRES)
    prefs = rng.dirichlet(np.full(n_g, 0.35), size=n_users)
    # a user's latent taste is the mean direction of the titles of the genres they like
    genre_dirs = np.stack([
        titles.latent[titles.primary == g].mean(axis=0)
        if np.any(titles.primary == g) else np.zeros(_LATENT_DIM) for g in range(n_g)
    ])
    latent = prefs @ genre_dirs + 0.25 * rng.normal(size=(n_users, _LATENT_DIM))
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    habit = rng.choice(len(HABITS), size=n_users, p=_HABIT_SHARE)
    late = habit == list(HABITS).index("late_night")
    devices = rng.random((n_users, len(DEVICES))) < _DEVICE_OWNERSHIP
    devices[~devices.any(axis=1), 0] = True
    tired = rng.random(n_users) < 0.2
    return _UserArrays(
        prefs=prefs,
        latent=latent,
        habit=habit,
        tz=rng.choice(_TZ_OFFSETS_MIN, size=n_users),
        devices=devices,
        runtime_pref=_RUNTIME_PREF_MIN[None, :] * rng.lognormal(0.0, 0.2, size=(n_users, len(DAYPARTS))),
        rate=rng.lognormal(np.log(0.45), 0.5, size=n_users),
        night_dark=np.where(late, rng.random(n_users) < 0.6, rng.random(n_users) < 0.1),
        tired_genre=np.where(tired, prefs.argmax(axis=1), -1),
        tired_at=rng.uniform(0.3, 0.8, size=n_users),
    )


def _user_record(i: int, u: _UserArrays) -> SyntheticUser:
    tired = int(u.tired_genre[i])
    return SyntheticUser(
        user_id=_user_id(i),
        tz_offset_min=int(u.tz[i]),
        habit=list(HABITS)[int(u.habit[i])],
        devices=tuple(d for d, has in zip(DEVICES, u.devices[i]) if has),
        genre_prefs=tuple(round(float(x), 4) for x in u.prefs[i]),
        runtime_pref_min=tuple(round(float(x), 1) for x in u.runtime_pref[i]),
        sessions_per_day=round(float(u.rate[i]), 3),
        night_dark=bool(u.night_dark[i]),
        tired_genre=GENRES[tired] if tired >= 0 else None,
        tired_at=round(float(u.tired_at[i]), 3) if tired >= 0 else None,
    )


def _user_id(i: int) -> str:
    return f"u{i + 1:06d}"


def _candidate_pools(rng: np.random.Generator, users: _UserArrays, titles: _Titles, k: int) -> np.ndarray:
    """Each user's titles in the order they would reach for them: Gumbel top-k over a score of
    taste (latent match + genre preference) and popularity. (U, k) title indexes."""
    n_users = users.prefs.shape[0]
    pools = np.empty((n_users, k), dtype=np.int64)
    dark = np.isin(titles.primary, [GENRES.index(g) for g in DARK_GENRES])
    sec = np.maximum(titles.secondary, 0)
    for a in range(0, n_users, 512):
        b = min(a + 512, n_users)
        p = users.prefs[a:b]
        genre_fit = p[:, titles.primary] + 0.5 * np.where(titles.secondary >= 0, p[:, sec], 0.0)
        score = (3.0 * users.latent[a:b] @ titles.latent.T + np.log(genre_fit + 0.02)
                 + 0.7 * titles.log_pop[None, :] + np.log(1.5) * (users.night_dark[a:b, None] & dark[None, :]))
        score += rng.gumbel(size=score.shape)
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1)
        pools[a:b] = np.take_along_axis(top, order, axis=1)
    return pools


# ---------------------------------------------------------------------------------------------
# sessions: when each user sits down, for how long, on which device


@dataclass(slots=True)
class _Sessions:
    user: np.ndarray  # (S,) sorted by user, then start
    start_ms: np.ndarray
    daypart: np.ndarray
    budget_min: np.ndarray
    device: np.ndarray
    day: np.ndarray


def _draw_sessions(rng: np.random.Generator, users: _UserArrays, days: int, start_ts_ms: int) -> _Sessions:
    n_users = users.prefs.shape[0]
    weekday0 = datetime.fromtimestamp(start_ts_ms / 1000, tz=timezone.utc).weekday()
    weekend = np.isin((weekday0 + np.arange(days)) % 7, [5, 6])
    counts = rng.poisson(users.rate[:, None] * np.where(weekend, 1.3, 1.0)[None, :])  # (U, days)
    user = np.repeat(np.repeat(np.arange(n_users), days), counts.ravel())
    day = np.repeat(np.tile(np.arange(days), n_users), counts.ravel())
    n = len(user)

    habit_cum = np.cumsum(np.array(list(HABITS.values())), axis=1)[users.habit[user]]
    daypart = (rng.random(n)[:, None] > habit_cum).sum(axis=1).clip(0, len(DAYPARTS) - 1)
    lo, hi = _SESSION_WINDOW_MIN[daypart, 0], _SESSION_WINDOW_MIN[daypart, 1]
    local_min = lo + rng.random(n) * (hi - lo)
    start_ms = start_ts_ms + ((day * 1440 + local_min - users.tz[user]) * _MIN_MS).astype(np.int64)
    budget = users.runtime_pref[user, daypart] * rng.uniform(1.0, 2.6, size=n)

    weights = _DEVICE_BY_DAYPART[daypart] * users.devices[user]
    cum = np.cumsum(weights, axis=1)
    device = (rng.random(n)[:, None] * cum[:, -1:] > cum).sum(axis=1)

    end_ms = start_ts_ms + days * _DAY_MS
    keep = (start_ms >= start_ts_ms) & (start_ms < end_ms)
    order = np.lexsort((start_ms[keep], user[keep]))
    pick = np.flatnonzero(keep)[order]
    return _Sessions(user[pick], start_ms[pick], daypart[pick], budget[pick], device[pick], day[pick])


# ---------------------------------------------------------------------------------------------
# one user's viewing, step by step


@dataclass(slots=True)
class _Viewer:
    """Mutable state of one user during a simulation; emits (ts, seq, type, item, device, pos)."""

    rnd: random.Random
    pool: list[int]
    pool_rank: dict[int, int]
    used: set[int] = field(default_factory=set)
    ptr: int = 0
    watchlist: list[int] = field(default_factory=list)
    series_next: dict[int, int] = field(default_factory=dict)  # series title -> next episode offset
    recent_series: list[int] = field(default_factory=list)  # most recent last
    resume: tuple[int, int, float] | None = None  # (title, item, position_s) cut off by a session end
    banned_genre: int = -1
    tired_done: bool = False
    events: list[tuple[int, int, str, int, str | None, float | None]] = field(default_factory=list)

    def emit(self, ts: int, kind: str, item: int, device: str | None, pos: float | None) -> None:
        self.events.append((ts, len(self.events), kind, item, device, pos))


class _Simulator:
    """Runs every user's sessions against the shared catalog facts (read-only here)."""

    def __init__(self, titles: _Titles, catalog: Catalog, users: _UserArrays, seed: int,
                 start_ts_ms: int, days: int) -> None:
        self.users = users
        self.seed, self.start_ts_ms, self.days = seed, start_ts_ms, days
        self.end_ms = start_ts_ms + days * _DAY_MS
        self.release = np.array([it.release_ts for it in catalog.items], dtype=np.int64).tolist()
        self.runtime = [it.runtime_min for it in catalog.items]
        self.first_item = titles.first_item.tolist()
        self.n_items = titles.n_items.tolist()
        self.is_series = titles.is_series.tolist()
        self.primary = titles.primary.tolist()
        self.secondary = titles.secondary.tolist()
        dark = {GENRES.index(g) for g in DARK_GENRES}
        self.is_dark = [p in dark for p in self.primary]
        pop_order = np.argsort(-titles.log_pop).tolist()
        self.by_genre: dict[int, list[int]] = {g: [] for g in range(len(GENRES))}
        for ti in pop_order:
            self.by_genre[self.primary[ti]].append(ti)
        self.dark_by_pop = [ti for ti in pop_order if self.is_dark[ti]]
        # airing series: title -> episodes out before the window (some, not all)
        self.aired: dict[int, int] = {}
        for ti in np.flatnonzero(titles.is_series).tolist():
            out = sum(1 for k in range(self.n_items[ti]) if self.release[self.first_item[ti] - 1 + k] < start_ts_ms)
            if 0 < out < self.n_items[ti]:
                self.aired[ti] = out

    # -- choosing what to watch -----------------------------------------------------------

    def _next_item(self, v: _Viewer, title: int, now: int) -> int | None:
        """The item a title would play now: the film, or the series' next released episode."""
        if not self.is_series[title]:
            return self.first_item[title]
        k = v.series_next.get(title, 0)
        if k >= self.n_items[title]:
            return None
        item = self.first_item[title] + k
        return item if self.release[item - 1] <= now else None

    def _eligible(self, v: _Viewer, title: int, now: int, allow_banned: bool) -> bool:
        if title in v.used and not self.is_series[title]:
            return False
        if not allow_banned and v.banned_genre >= 0 and v.banned_genre in (self.primary[title], self.secondary[title]):
            return False
        return self._next_item(v, title, now) is not None

    def _from_pool(self, v: _Viewer, now: int, want_min: float, dark_only: bool, allow_banned: bool) -> int | None:
        """Among the first few eligible titles in the user's order, the one whose runtime best
        fits the daypart (60% of the time; otherwise simply the first)."""
        while v.ptr < len(v.pool) and v.pool[v.ptr] in v.used:
            v.ptr += 1
        found: list[int] = []
        for title in v.pool[v.ptr:]:
            if title in v.used or (dark_only and not self.is_dark[title]):
                continue
            if self._eligible(v, title, now, allow_banned):
                found.append(title)
                if len(found) == 3:
                    break
        if not found:
            return None
        if v.rnd.random() < 0.6:
            return min(found, key=lambda ti: abs(self.runtime[self.first_item[ti] - 1] - want_min))
        return found[0]

    def _pick(self, v: _Viewer, now: int, daypart: int, uid: int) -> int | None:
        allow_banned = v.banned_genre < 0 or v.rnd.random() < 0.1  # a back-off, not a ban
        if v.watchlist and v.rnd.random() < 0.5:
            title = v.watchlist.pop(0)
            if self._eligible(v, title, now, allow_banned):
                return title
        want = float(self.users.runtime_pref[uid, daypart])
        if daypart == 3 and self.users.night_dark[uid] and v.rnd.random() < 0.8:
            title = self._from_pool(v, now, want, True, allow_banned)
            if title is None:
                title = next((t for t in self.dark_by_pop
                              if t not in v.used and self._eligible(v, t, now, allow_banned)), None)
            if title is not None:
                return title
        return self._from_pool(v, now, want, False, allow_banned)

    def _continuation(self, v: _Viewer, now: int) -> int | None:
        """The most recent series with a released next episode, if any."""
        for title in reversed(v.recent_series):
            if self._next_item(v, title, now) is not None:
                return title
        return None

    # -- watching ---------------------------------------------------------------------------

    def _watch(self, v: _Viewer, title: int, item: int, pos0: float, now: int, left_min: float,
               device: str, p_skip: float) -> tuple[int, float, str]:
        """Play one item from ``pos0``: dropped early (skip), cut off by the end of the session
        (pause, remembered for resuming), or watched to the end. Returns (time after, minutes
        left in the session, outcome)."""
        runtime_s = self.runtime[item - 1] * 60.0
        v.emit(now, "play", item, device, pos0)
        v.used.add(title)
        if self.is_series[title]:
            v.recent_series = [s for s in v.recent_series if s != title] + [title]
        if v.rnd.random() < p_skip:
            return self._drop(v, title, item, pos0, now, left_min, device, runtime_s)
        if runtime_s - pos0 > left_min * 60:
            return self._cut(v, title, item, pos0, now, left_min, device, runtime_s)
        return self._finish(v, title, item, pos0, now, left_min, device, runtime_s)

    def _drop(self, v: _Viewer, title: int, item: int, pos0: float, now: int, left_min: float,
              device: str, runtime_s: float) -> tuple[int, float, str]:
        watched = max(1.0, min(60.0 * v.rnd.uniform(2.0, 12.0), runtime_s - pos0 - 1))
        end = now + int(watched * 1000)
        v.emit(end, "skip", item, device, round(pos0 + watched, 1))
        v.recent_series = [s for s in v.recent_series if s != title]  # dropped: not continued
        return end + int(v.rnd.uniform(0.3, 2.0) * _MIN_MS), left_min - watched / 60 - 1, "skip"

    def _cut(self, v: _Viewer, title: int, item: int, pos0: float, now: int, left_min: float,
             device: str, runtime_s: float) -> tuple[int, float, str]:
        watched = min(max(left_min * 60, 60.0), runtime_s - pos0 - 1)
        end = now + int(watched * 1000)
        v.emit(end, "pause", item, device, round(pos0 + watched, 1))
        v.resume = (title, item, round(pos0 + watched, 1))
        v.recent_series = [s for s in v.recent_series if s != title]  # resumed, not restarted
        return end, 0.0, "cut"

    def _finish(self, v: _Viewer, title: int, item: int, pos0: float, now: int, left_min: float,
                device: str, runtime_s: float) -> tuple[int, float, str]:
        rnd = v.rnd
        t, pos = now, pos0
        if rnd.random() < 0.12:  # a break in the middle
            mid = pos + (runtime_s - pos) * rnd.uniform(0.2, 0.8)
            t += int((mid - pos) * 1000)
            v.emit(t, "pause", item, device, round(mid, 1))
            t += int(rnd.uniform(1, 10) * _MIN_MS)
            v.emit(t, "play", item, device, round(mid, 1))
            pos = mid
        if rnd.random() < 0.08:  # skip an intro or a slow scene
            jump = min(rnd.uniform(30, 120), (runtime_s - pos) / 2)
            t += int((runtime_s - pos) * 0.3 * 1000)
            pos += (runtime_s - pos) * 0.3 + jump
            v.emit(t, "seek", item, device, round(pos, 1))
        t += int((runtime_s - pos) * 1000)
        v.emit(t, "finish", item, device, round(runtime_s, 1))
        if self.is_series[title]:
            v.series_next[title] = item - self.first_item[title] + 1
        return t + int(rnd.uniform(0.2, 1.5) * _MIN_MS), left_min - (t - now) / _MIN_MS, "finish"

    def _tired_run(self, v: _Viewer, genre: int, now: int, device: str) -> int:
        """Three (sometimes four) titles of the tiring genre started and dropped in a row."""
        runs = 4 if v.rnd.random() < 0.35 else 3
        candidates = [t for t in v.pool if self.primary[t] == genre] + self.by_genre[genre]
        done = 0
        for title in dict.fromkeys(candidates):
            if done == runs or now >= self.end_ms:
                break
            if title in v.used or (self.is_series[title] and title in v.series_next):
                continue
            item = self._next_item(v, title, now)
            if item is None:
                continue
            now, _, _ = self._watch(v, title, item, 0.0, now, 600.0, device, p_skip=1.0)
            done += 1
        v.banned_genre, v.tired_done = genre, True
        v.recent_series = [s for s in v.recent_series if genre not in (self.primary[s], self.secondary[s])]
        if v.resume is not None and genre in (self.primary[v.resume[0]], self.secondary[v.resume[0]]):
            v.resume = None
        return now

    def _session(self, v: _Viewer, uid: int, start: int, daypart: int, budget: float, device: str,
                 day: int) -> int:
        rnd = v.rnd
        now, left = start, budget
        tired = int(self.users.tired_genre[uid])
        if tired >= 0 and not v.tired_done and day >= self.users.tired_at[uid] * self.days:
            now = self._tired_run(v, tired, now, device)
            if rnd.random() < 0.5:
                return now
        if rnd.random() < 0.12:  # save something for later
            ahead = v.pool[min(len(v.pool) - 1, v.ptr + rnd.randrange(10, 40)):]
            title = next((t for t in ahead if t not in v.used and self._next_item(v, t, now)), None)
            if title is not None:
                v.emit(now, "add_to_list", self._next_item(v, title, now), device, None)
                v.watchlist.append(title)
                now += 20_000
        if v.resume is not None and rnd.random() < 0.6:
            title, item, pos = v.resume
            v.resume = None
            now, left, outcome = self._watch(v, title, item, pos, now, left, device, p_skip=0.05)
            title_next = title if outcome == "finish" and self.is_series[title] else None
        else:
            title_next = self._continuation(v, now) if rnd.random() < 0.75 else None
        for n_started in range(8):
            if left <= 5 or now >= self.end_ms:
                break
            if title_next is not None and self._next_item(v, title_next, now) is not None:
                title, p_skip = title_next, 0.03
            else:
                title = self._pick(v, now, daypart, uid)
                if title is None:
                    break
                rank = v.pool_rank.get(title, len(v.pool))
                p_skip = 0.05 + 0.25 * rank / max(len(v.pool), 1)
            item = self._next_item(v, title, now)
            if n_started and self.runtime[item - 1] > left + 10 and rnd.random() < 0.7:
                break  # not enough time left for it: most people stop rather than start it
            now, left, outcome = self._watch(v, title, item, 0.0, now, left, device, p_skip)
            binge = outcome == "finish" and self.is_series[title] and rnd.random() < 0.7
            title_next = title if binge else None
        return now

    def run_user(self, uid: int, pool: list[int], sessions: _Sessions, lo: int, hi: int) -> _Viewer:
        rnd = random.Random(f"{self.seed}:{uid}:{self.start_ts_ms}:{self.days}")
        v = _Viewer(rnd=rnd, pool=pool, pool_rank={t: r for r, t in enumerate(pool)})
        for title in pool[:50]:  # already a fan of an airing series: caught up, waiting for more
            if title in self.aired and rnd.random() < 0.5:
                v.series_next[title] = self.aired[title]
                v.recent_series.append(title)
                v.used.add(title)
        free_at = 0
        for s in range(lo, hi):
            start = max(int(sessions.start_ms[s]), free_at + 10 * _MIN_MS)
            if start >= self.end_ms:
                break
            free_at = self._session(v, uid, start, int(sessions.daypart[s]), float(sessions.budget_min[s]),
                                    DEVICES[int(sessions.device[s])], int(sessions.day[s]))
        return v


# ---------------------------------------------------------------------------------------------
# the world


@dataclass(slots=True)
class SyntheticWorld:
    """A generated catalog and user population; :meth:`simulate` turns them into events.

    Build one with :meth:`generate`. The world is immutable after generation: every call to
    :meth:`simulate` starts from fresh viewing state, so the same window gives the same events.
    """

    seed: int
    start_ts_ms: int
    catalog: Catalog
    users: list[SyntheticUser]
    _titles: _Titles = field(repr=False)
    _users: _UserArrays = field(repr=False)
    _pools: np.ndarray = field(repr=False)
    _by_id: dict[str, int] = field(repr=False)

    @classmethod
    def generate(cls, n_users: int = 2000, n_films: int = 900, n_series: int = 35, seed: int = 0,
                 start_ts_ms: int = DEFAULT_START_TS_MS) -> SyntheticWorld:
        """Draw a catalog (``n_films`` films and ``n_series`` series of 6-48 episodes) and
        ``n_users`` users. ``start_ts_ms`` anchors release dates: airing series release
        episodes weekly after it. The defaults give ~1,500 items and, over 30 days, ~110k
        events (~85k interactions) in about a second: enough structure for a small model,
        quick to train on two cores."""
        if n_users < 1 or n_films < 0 or n_series < 0 or n_films + n_series < 1:
            raise UserInputError(
                f"need n_users >= 1 and at least one film or series, got n_users={n_users}, "
                f"n_films={n_films}, n_series={n_series}")
        rng = np.random.default_rng([seed, 1])
        seasons, eps = _draw_series_shapes(rng, n_series)
        catalog, primary, secondary = _build_catalog(rng, n_films, seasons, eps, start_ts_ms)
        titles = _title_facts(rng, primary, secondary, seasons, eps)
        users = _draw_users(rng, n_users, titles)
        pools = _candidate_pools(rng, users, titles, k=min(len(titles.primary), 300))
        records = [_user_record(i, users) for i in range(n_users)]
        return cls(seed, start_ts_ms, catalog, records, titles, users, pools,
                   {r.user_id: i for i, r in enumerate(records)})

    def user(self, user_id: str) -> SyntheticUser:
        """The ground truth for one user; ``KeyError`` for an unknown id."""
        return self.users[self._by_id[user_id]]

    def local_hour(self, user_id: str, ts_ms: int) -> float:
        """Hour of the day (0-24) in the user's time zone."""
        local_min = (ts_ms // _MIN_MS + self.user(user_id).tz_offset_min) % 1440
        return local_min / 60

    def daypart(self, user_id: str, ts_ms: int) -> str:
        """One of :data:`DAYPARTS` for the user's local time."""
        h = self.local_hour(user_id, ts_ms)
        if 5 <= h < 12:
            return "morning"
        if 12 <= h < 17:
            return "afternoon"
        if 17 <= h < 22:
            return "evening"
        return "late_night"

    def simulate(self, days: int = 30, start_ts_ms: int | None = None) -> list[dict[str, Any]]:
        """Events of every user for ``days`` days from ``start_ts_ms`` (default: the world's
        start), plus ``episode_release`` events for episodes released in the window.

        Returns dicts with the fields of :class:`outerloop.contracts.events.Event`, sorted by time
        (ties: users in id order, catalog events first). ``event_id`` is
        ``syn<seed>-<window start s>-<n>``: deterministic, and unique across windows.
        """
        if days < 1:
            raise UserInputError(f"days must be >= 1, got {days}")
        start = self.start_ts_ms if start_ts_ms is None else int(start_ts_ms)
        rng = np.random.default_rng([self.seed, 2, start // 1000, days])
        sessions = _draw_sessions(rng, self._users, days, start)
        sim = _Simulator(self._titles, self.catalog, self._users, self.seed, start, days)
        rows: list[tuple[int, int, int, str, int, str | None, float | None]] = self._releases(start, sim.end_ms)
        bounds = np.searchsorted(sessions.user, np.arange(len(self.users) + 1)).tolist()
        for uid in range(len(self.users)):
            if bounds[uid] == bounds[uid + 1]:
                continue
            v = sim.run_user(uid, self._pools[uid].tolist(), sessions, bounds[uid], bounds[uid + 1])
            rows.extend((ts, uid, seq, kind, item, dev, pos) for ts, seq, kind, item, dev, pos in v.events
                        if ts < sim.end_ms)
        rows.sort()
        prefix = f"syn{self.seed}-{start // 1000}-"
        return [
            {"event_id": f"{prefix}{n}", "user_id": CATALOG_USER_ID if uid < 0 else self.users[uid].user_id,
             "item_id": item, "type": kind, "ts": ts, "device": dev, "position_s": pos}
            for n, (ts, uid, _seq, kind, item, dev, pos) in enumerate(rows)
        ]

    def _releases(self, start: int, end: int) -> list[tuple[int, int, int, str, int, str | None, float | None]]:
        return [(it.release_ts, -1, i, "episode_release", it.item_id, None, None)
                for i, it in enumerate(self.catalog.items)
                if it.kind == "episode" and start <= (it.release_ts or 0) < end]

    def to_interactions(self, events: list[dict[str, Any]], name: str = "synthetic") -> InteractionData:
        """Events -> model input: per user, the :data:`INTERACTION_TYPES` events in time order
        (stable for ties), each an (item, ts, action) token. Catalog events and playback noise
        (pause, seek) are left out. Users without any such event are left out."""
        per_user: dict[str, list[tuple[int, int, int]]] = {}
        n_items = len(self.catalog)
        for n, e in enumerate(events):
            if e["type"] not in INTERACTION_TYPES or e["user_id"] == CATALOG_USER_ID:
                continue
            item = e.get("item_id")
            if not isinstance(item, int) or not 1 <= item <= n_items:
                raise UserInputError(
                    f"event {e.get('event_id', n)}: item_id {item!r} is not in the catalog (1..{n_items})")
            per_user.setdefault(e["user_id"], []).append((int(e["ts"]), item, ACTION_ID[e["type"]]))
        users = []
        for uid in sorted(per_user):
            rows = sorted(per_user[uid], key=lambda r: r[0])
            arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
            users.append(UserSequence(user_id=uid, items=arr[:, 1].astype(np.int32), ts=arr[:, 0].copy(),
                                      actions=arr[:, 2].astype(np.int8)))
        return InteractionData(name=name, catalog=self.catalog, users=users)


def load_synthetic(n_users: int = 2000, n_films: int = 900, n_series: int = 35, seed: int = 0,
                   days: int = 30, start_ts_ms: int = DEFAULT_START_TS_MS) -> InteractionData:
    """Generate a world, simulate ``days`` of it and return the interactions (the
    ``synthetic`` entry of :data:`outerloop.data.datasets.DATASETS`)."""
    world = SyntheticWorld.generate(n_users=n_users, n_films=n_films, n_series=n_series, seed=seed,
                                    start_ts_ms=start_ts_ms)
    return world.to_interactions(world.simulate(days=days))
