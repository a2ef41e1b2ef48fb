"""Words the rule parser knows: genre synonyms, tones, and the tags each tone maps to.

Kept as plain data in one module so the vocabulary can be read (and extended) without reading
the parser. Genre synonyms point at *canonical* genres; :class:`~outerloop.conversation.catalog_facts.CatalogFacts`
maps those onto each catalog's own names (ML-1M says "Children's", ml-latest-small "Children",
the synthetic world "Family").
"""

from __future__ import annotations

from dataclasses import dataclass

# canonical genre -> the catalog names it may appear under (every present one is used)
GENRE_NAMES: dict[str, tuple[str, ...]] = {
    "action": ("Action",),
    "adventure": ("Adventure",),
    "animation": ("Animation",),
    "kids": ("Children's", "Children", "Family"),
    "comedy": ("Comedy",),
    "crime": ("Crime",),
    "documentary": ("Documentary",),
    "drama": ("Drama",),
    "fantasy": ("Fantasy",),
    "noir": ("Film-Noir",),
    "horror": ("Horror",),
    "imax": ("IMAX",),
    "musical": ("Musical",),
    "mystery": ("Mystery",),
    "romance": ("Romance",),
    "scifi": ("Sci-Fi",),
    "thriller": ("Thriller",),
    "war": ("War",),
    "western": ("Western",),
}

# phrase (lower case) -> canonical genres it asks for
GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "action": ("action",), "adventure": ("adventure",), "adventures": ("adventure",),
    "animation": ("animation",), "animated": ("animation",), "cartoon": ("animation",),
    "cartoons": ("animation",), "anime": ("animation",),
    "kids": ("kids",), "kid": ("kids",), "children": ("kids",), "children's": ("kids",),
    "childrens": ("kids",), "family": ("kids",), "family-friendly": ("kids",), "family friendly": ("kids",),
    "comedy": ("comedy",), "comedies": ("comedy",), "comedic": ("comedy",),
    "rom-com": ("romance", "comedy"), "romcom": ("romance", "comedy"), "rom com": ("romance", "comedy"),
    "romantic comedy": ("romance", "comedy"), "romantic comedies": ("romance", "comedy"),
    "crime": ("crime",), "heist": ("crime",), "gangster": ("crime",), "mafia": ("crime",),
    "documentary": ("documentary",), "documentaries": ("documentary",), "doc": ("documentary",),
    "docs": ("documentary",), "non-fiction": ("documentary",),
    "drama": ("drama",), "dramas": ("drama",),
    "fantasy": ("fantasy",), "fairy tale": ("fantasy",),
    "noir": ("noir",), "film noir": ("noir",), "film-noir": ("noir",),
    "horror": ("horror",), "horrors": ("horror",), "slasher": ("horror",),
    "imax": ("imax",),
    "musical": ("musical",), "musicals": ("musical",),
    "mystery": ("mystery",), "mysteries": ("mystery",), "whodunit": ("mystery",), "whodunnit": ("mystery",),
    "detective": ("mystery",),
    "romance": ("romance",), "romances": ("romance",), "romantic": ("romance",), "love story": ("romance",),
    "love stories": ("romance",), "romcoms": ("romance", "comedy"), "rom-coms": ("romance", "comedy"),
    "sci-fi": ("scifi",), "scifi": ("scifi",), "sci fi": ("scifi",), "science fiction": ("scifi",),
    "science-fiction": ("scifi",),
    "thriller": ("thriller",), "thrillers": ("thriller",),
    "war": ("war",), "war movie": ("war",), "war movies": ("war",),
    "western": ("western",), "westerns": ("western",), "cowboy": ("western",),
}

# phrase -> what kind of title it asks for
KIND_WORDS: dict[str, str] = {
    "movie": "film", "movies": "film", "film": "film", "films": "film", "feature": "film",
    "series": "episode", "show": "episode", "shows": "episode", "tv show": "episode", "tv shows": "episode",
    "episode": "episode", "episodes": "episode", "binge": "episode", "something to binge": "episode",
    "tv series": "episode", "sitcom": "episode",
}


@dataclass(frozen=True, slots=True)
class Tone:
    """A mood word. ``genres``: canonical genres it requires (hard, like saying the genre).
    ``prefer``: tags that fit it (soft). ``avoid``: tags it rules out (hard) when asked for.
    ``negation``: the tone that "not <this>" means, when that is a tone of its own."""

    name: str
    words: tuple[str, ...]
    genres: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    negation: str | None = None
    soft_genres: tuple[str, ...] = ()


_CLEVER = ("clever", "witty", "smart", "intelligent", "thought-provoking", "cerebral", "satire", "satirical",
           "philosophical", "great dialogue", "intellectual")
_STUPID = ("stupid", "dumb", "silly", "idiotic", "mindless", "brainless", "stupid humor", "crude humor", "lowbrow")
_DARK = ("dark", "bleak", "gritty", "disturbing", "depressing", "grim", "dark comedy", "black comedy", "dystopian")
_VIOLENT = ("violent", "violence", "gory", "gore", "brutal", "bloody")

TONES: dict[str, Tone] = {t.name: t for t in (
    Tone("funny", ("funny", "hilarious", "humorous", "humourous", "laugh", "laughs", "laugh-out-loud",
                   "make me laugh", "lol"),
         genres=("comedy",), prefer=("funny", "hilarious", "witty", "humorous", "comedy", "satire", "quirky")),
    Tone("clever", ("clever", "smart", "intelligent", "witty", "thought-provoking", "cerebral", "brainy"),
         prefer=_CLEVER),
    Tone("stupid", ("stupid", "dumb", "silly", "goofy", "mindless", "brainless", "slapstick"),
         prefer=("silly", "goofy", "stupid", "dumb", "slapstick", "stupid humor"), negation="not stupid"),
    Tone("not stupid", (), prefer=_CLEVER, avoid=_STUPID),
    Tone("dark", ("dark", "grim", "bleak", "gritty", "disturbing", "twisted"),
         prefer=_DARK, negation="not dark", soft_genres=("thriller", "horror", "crime", "noir")),
    Tone("not dark", (), prefer=("light", "feel-good", "heartwarming", "uplifting"), avoid=_DARK),
    Tone("feel-good", ("feel-good", "feel good", "feelgood", "uplifting", "heartwarming", "heart-warming",
                       "wholesome", "cozy", "cosy", "cheerful", "happy", "comforting", "lighthearted",
                       "light-hearted"),
         prefer=("feel-good", "feel good", "heartwarming", "uplifting", "cozy", "light", "happy ending", "cute",
                 "whimsical"),
         avoid=("depressing", "bleak", "disturbing", "gory"), soft_genres=("comedy", "kids", "animation")),
    Tone("scary", ("scary", "creepy", "spooky", "frightening", "terrifying", "chilling"),
         genres=("horror",), prefer=("scary", "creepy", "horror", "atmospheric", "suspense", "tense"),
         negation="not scary"),
    Tone("not scary", (), avoid=("scary", "creepy", "horror", "gory", "gore")),
    Tone("tense", ("tense", "suspenseful", "gripping", "edge of my seat", "edge-of-your-seat", "nail-biting",
                   "thrilling"),
         prefer=("tense", "suspense", "suspenseful", "twisty", "twist ending", "gripping"),
         soft_genres=("thriller",)),
    Tone("mind-bending", ("mind-bending", "mind bending", "mindbending", "trippy", "twisty", "surreal"),
         prefer=("mindfuck", "twist ending", "surreal", "twisty", "mind-bending", "psychological", "nonlinear",
                 "time travel", "dreamlike")),
    Tone("sad", ("sad", "tearjerker", "tear-jerker", "emotional", "moving", "weepy"),
         prefer=("sad", "emotional", "tearjerker", "bittersweet", "moving"), negation="not sad",
         soft_genres=("drama",)),
    Tone("not sad", (), avoid=("sad", "depressing", "tearjerker", "bleak")),
    Tone("violent", ("violent", "gory", "bloody", "brutal", "gore"), prefer=_VIOLENT, negation="not violent"),
    Tone("not violent", (), avoid=_VIOLENT),
    Tone("light", ("light", "easy", "easygoing", "easy-going", "chill", "relaxing", "breezy", "fun"),
         prefer=("light", "feel-good", "fun", "funny", "cozy", "quirky")),
)}
# a negated tone without a tone of its own ("not funny") becomes: exclude its required genres
TONE_WORDS: dict[str, str] = {w: t.name for t in TONES.values() for w in t.words}

# words that may stand between a negator and what it negates ("not too dark", "no more horror")
FILLERS: frozenset[str] = frozenset({
    "too", "very", "so", "overly", "any", "a", "an", "the", "more", "much", "really", "that", "something",
    "anything", "stuff", "of", "with", "kind", "type", "sort", "too much", "please", "at", "all", "it",
    "to", "be", "want", "like", "watch", "see", "some", "i", "is", "too many", "many", "either", "fan", "fond",
    "mood", "in", "for", "feeling", "one", "ones", "thanks", "tonight", "today",
} | set(KIND_WORDS))
CONNECTORS: frozenset[str] = frozenset({"and", "or", "nor", ",", "/", "&"})
CLAUSE_BREAKS: frozenset[str] = frozenset({"but", "though", "although", "however", "yet", ".", ";", "!", "?",
                                            "while", "just"})

NUMBER_WORDS: dict[str, float] = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "half": 0.5, "one and a half": 1.5,
    "an hour and a half": 1.5, "a couple of": 2, "a couple": 2, "couple of": 2,
}
DECADE_WORDS: dict[str, int] = {
    "twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
    "seventies": 1970, "eighties": 1980, "nineties": 1990, "noughties": 2000,
}
ORDINALS: dict[str, int] = {
    "first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3,
    "fifth": 4, "5th": 4, "sixth": 5, "6th": 5, "seventh": 6, "7th": 6, "eighth": 7, "8th": 7,
    "ninth": 8, "9th": 8, "tenth": 9, "10th": 9, "last": -1,
}

SHORT_MAX_MIN = 90  # "short", "quick"
NOT_TOO_LONG_MAX_MIN = 120  # "not too long"
LONG_MIN_MIN = 150  # "long", "epic length"
NOT_TOO_SHORT_MIN_MIN = 80
RUNTIME_STEP_MIN = 15  # "shorter" / "longer": this many minutes past the reference
DEFAULT_REFERENCE_RUNTIME_MIN = 105  # reference for "shorter" when nothing was shown yet
RECENT_SPAN_YEARS = 5  # "recent": the catalog's last five years
CLASSIC_AGE_YEARS = 25  # "classic", "old": at least this much older than the catalog's newest
ABOUT_SLACK_MIN = 15  # "about 90 minutes" = 75..105


def tone_tags(tones: list[str]) -> tuple[list[str], list[str]]:
    """(prefer_tags, exclude_tags) for a set of tone names (unknown names contribute nothing)."""
    prefer: set[str] = set()
    avoid: set[str] = set()
    for name in tones:
        tone = TONES.get(name)
        if tone is not None:
            prefer.update(tone.prefer)
            avoid.update(tone.avoid)
    return sorted(prefer - avoid), sorted(avoid)


def opposite_tone(name: str) -> str | None:
    """The tone that contradicts ``name`` ("dark" <-> "not dark"), if any."""
    tone = TONES.get(name)
    if tone is not None and tone.negation:
        return tone.negation
    for other in TONES.values():
        if other.negation == name:
            return other.name
    return None
