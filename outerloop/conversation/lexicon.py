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

# phrase (lower case) -> canonical genres it asks for: the catalog's own genre names (added per
# catalog by CatalogFacts.genre_words) plus the everyday words people use for them
_EVERYDAY_GENRES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("action",): ("action", "action movie", "action movies", "action flick", "action flicks", "shoot-em-up",
                  "shoot 'em up", "martial arts", "kung fu", "kung-fu", "car chases", "explosions", "blockbuster action"),
    ("adventure",): ("adventure", "adventures", "adventurous", "swashbuckler", "swashbucklers", "swashbuckling",
                     "treasure hunt"),
    ("animation",): ("animation", "animated", "cartoon", "cartoons", "anime", "stop-motion", "stop motion",
                     "claymation", "animations"),
    ("kids",): ("kids", "kid", "kiddie", "kiddy", "children", "children's", "childrens", "child", "family",
                "family-friendly", "family friendly", "for the family", "whole family", "little ones", "toddler",
                "toddlers", "young kids", "kids'", "for kids"),
    ("comedy",): ("comedy", "comedies", "comedic", "spoof", "spoofs", "parody", "parodies", "stand-up",
                  "standup", "stand up comedy", "screwball"),
    ("romance", "comedy"): ("rom-com", "romcom", "rom com", "romantic comedy", "romantic comedies", "romcoms",
                            "rom-coms", "rom coms"),
    ("crime",): ("crime", "crimes", "heist", "heists", "caper", "gangster", "gangsters", "mafia", "mob movie",
                 "mobster", "mobsters", "cop movie", "cop movies", "cops and robbers", "criminal", "criminals",
                 "organized crime", "organised crime", "bank robbery"),
    ("documentary",): ("documentary", "documentaries", "doc", "docs", "docu", "docuseries", "non-fiction",
                       "nonfiction"),
    ("drama",): ("drama", "dramas", "dramatic", "period drama", "costume drama", "melodrama", "melodramas"),
    ("fantasy",): ("fantasy", "fantasies", "fairy tale", "fairy tales", "fairytale", "fairytales",
                   "sword and sorcery", "wizards", "wizard", "dragons", "magical", "magic and dragons", "elves"),
    ("noir",): ("noir", "film noir", "film-noir", "neo-noir", "neo noir", "noirs"),
    ("horror",): ("horror", "horrors", "horror movie", "horror flick", "slasher", "slashers", "splatter",
                  "monster movie", "monster movies", "creature feature", "zombie movie", "zombie movies",
                  "ghost story", "ghost stories", "haunted house", "fright flick", "vampire movie"),
    ("imax",): ("imax",),
    ("musical",): ("musical", "musicals", "song and dance", "song-and-dance", "singalong", "sing-along"),
    ("mystery",): ("mystery", "mysteries", "whodunit", "whodunnit", "whodunits", "detective", "detectives",
                   "detective story", "murder mystery", "murder mysteries", "sleuth", "sleuths"),
    ("romance",): ("romance", "romances", "romantic", "love story", "love stories", "love affair"),
    ("scifi",): ("sci-fi", "scifi", "sci fi", "science fiction", "science-fiction", "space opera", "futuristic",
                 "time travel", "cyberpunk"),
    ("thriller",): ("thriller", "thrillers", "suspense", "psychological thriller", "spy thriller", "espionage"),
    ("war",): ("war", "wars", "war movie", "war movies", "war film", "war films", "wartime", "world war",
               "ww2", "wwii", "ww1", "wwi", "military"),
    ("western",): ("western", "westerns", "cowboy", "cowboys", "cowboy movie", "cowboy flick", "gunslinger",
                   "gunslingers", "spaghetti western", "spaghetti westerns", "wild west", "the old west",
                   "frontier"),
}
GENRE_WORDS: dict[str, tuple[str, ...]] = {w: canon for canon, words in _EVERYDAY_GENRES.items() for w in words}

# phrase -> what kind of title it asks for
KIND_WORDS: dict[str, str] = {
    "movie": "film", "movies": "film", "film": "film", "films": "film", "feature": "film",
    "series": "episode", "show": "episode", "shows": "episode", "tv show": "episode", "tv shows": "episode",
    "episode": "episode", "episodes": "episode", "binge": "episode", "something to binge": "episode",
    "tv series": "episode", "flick": "film", "flicks": "film", "miniseries": "episode", "mini-series": "episode",
}
# phrases that say two things at once (a sitcom is a comedy and a series)
COMPOUND_WORDS: dict[str, tuple[tuple[str, str | tuple[str, ...]], ...]] = {
    "sitcom": (("kind", "episode"), ("genre", ("comedy",))),
    "sitcoms": (("kind", "episode"), ("genre", ("comedy",))),
    "docuseries": (("kind", "episode"), ("genre", ("documentary",))),
    "cartoon series": (("kind", "episode"), ("genre", ("animation",))),
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
                   "laugh out loud", "make me laugh", "lol", "amusing", "a laugh", "comical", "hysterical",
                   "giggle", "giggles", "funnier"),
         genres=("comedy",), prefer=("funny", "hilarious", "witty", "humorous", "comedy", "satire", "quirky")),
    Tone("clever", ("clever", "smart", "intelligent", "witty", "thought-provoking", "thought provoking", "cerebral",
                    "brainy", "thoughtful", "sophisticated", "clever writing", "well-written", "smarter"),
         prefer=_CLEVER),
    Tone("stupid", ("stupid", "dumb", "silly", "goofy", "mindless", "brainless", "slapstick", "idiotic", "moronic",
                    "lowbrow", "low-brow", "juvenile", "crude", "dumber", "sillier", "stupid humor", "crude humor",
                    "toilet humor", "toilet humour"),
         prefer=("silly", "goofy", "stupid", "dumb", "slapstick", "stupid humor"), negation="not stupid"),
    Tone("not stupid", (), prefer=_CLEVER, avoid=_STUPID),
    Tone("dark", ("dark", "grim", "bleak", "gritty", "disturbing", "twisted", "darker", "heavy", "nihilistic"),
         prefer=_DARK, negation="not dark", soft_genres=("thriller", "horror", "crime", "noir")),
    Tone("not dark", (), prefer=("light", "feel-good", "heartwarming", "uplifting"), avoid=_DARK),
    Tone("feel-good", ("feel-good", "feel good", "feelgood", "uplifting", "heartwarming", "heart-warming",
                       "wholesome", "cozy", "cosy", "cheerful", "happy", "comforting", "lighthearted",
                       "light-hearted", "sweet", "cute", "upbeat", "cheery", "happy ending", "optimistic",
                       "charming", "warm", "heart warming", "feel-good factor"),
         prefer=("feel-good", "feel good", "heartwarming", "uplifting", "cozy", "light", "happy ending", "cute",
                 "whimsical"),
         avoid=("depressing", "bleak", "disturbing", "gory"), soft_genres=("comedy", "kids", "animation")),
    Tone("scary", ("scary", "creepy", "spooky", "frightening", "terrifying", "chilling", "horrifying", "scares",
                   "jump scares", "jump-scares", "eerie", "spine-chilling", "hair-raising", "freaky", "scarier",
                   "scare me", "creepier", "spookier"),
         genres=("horror",), prefer=("scary", "creepy", "horror", "atmospheric", "suspense", "tense"),
         negation="not scary"),
    Tone("not scary", (), avoid=("scary", "creepy", "horror", "gory", "gore")),
    Tone("tense", ("tense", "suspenseful", "gripping", "edge of my seat", "edge-of-your-seat", "edge of your seat",
                   "edge-of-the-seat", "edge of the seat", "nail-biting", "nail biting", "nail-biter", "nail biter",
                   "thrilling", "heart-pounding", "intense", "tension"),
         prefer=("tense", "suspense", "suspenseful", "twisty", "twist ending", "gripping"),
         soft_genres=("thriller",)),
    Tone("mind-bending", ("mind-bending", "mind bending", "mindbending", "trippy", "twisty", "surreal", "mind-bender",
                          "mind bender", "mind-twisting", "twist ending", "plot twist", "plot twists", "twists"),
         prefer=("mindfuck", "twist ending", "surreal", "twisty", "mind-bending", "psychological", "nonlinear",
                 "time travel", "dreamlike")),
    Tone("sad", ("sad", "tearjerker", "tear-jerker", "tear jerker", "tearjerkers", "emotional", "moving", "weepy",
                 "weepie", "weepies", "cry", "crying", "make me cry", "heartbreaking", "heart-breaking",
                 "sob story", "depressing", "melancholy", "melancholic", "sadder", "tears"),
         prefer=("sad", "emotional", "tearjerker", "bittersweet", "moving"), negation="not sad",
         soft_genres=("drama",)),
    Tone("not sad", (), avoid=("sad", "depressing", "tearjerker", "bleak")),
    Tone("violent", ("violent", "gory", "bloody", "brutal", "gore", "violence", "gruesome", "bloodshed", "blood",
                     "graphic violence", "splattery"),
         prefer=_VIOLENT, negation="not violent"),
    Tone("not violent", (), avoid=_VIOLENT),
    Tone("light", ("light", "easy", "easygoing", "easy-going", "chill", "relaxing", "breezy", "fun", "easy watching",
                   "easy to watch", "popcorn", "laid-back", "laid back", "low-key", "low key", "relaxed",
                   "lighter"),
         prefer=("light", "feel-good", "fun", "funny", "cozy", "quirky")),
)}
# a negated tone without a tone of its own ("not funny") becomes: exclude its required genres
TONE_WORDS: dict[str, str] = {w: t.name for t in TONES.values() for w in t.words}

# words that may stand between a negator and what it negates ("not too dark", "no more horror")
FILLERS: frozenset[str] = frozenset({
    "too", "very", "so", "overly", "any", "a", "an", "the", "more", "much", "really", "that", "something",
    "anything", "stuff", "of", "with", "kind", "type", "sort", "too much", "please", "at", "all", "it",
    "to", "be", "want", "like", "watch", "see", "some", "i", "is", "too many", "many", "either", "fan", "fond",
    "mood", "in", "for", "feeling", "one", "ones", "thanks", "tonight", "today", "things", "thing", "bits", "bit",
    "parts", "scenes", "elements", "content", "genre", "genres", "actually", "definitely", "absolutely",
    "particularly", "remotely", "even", "slightly", "that's", "thats", "are", "was", "being", "got", "has", "have",
    "having", "involving", "containing", "featuring", "about", "my", "me", "we", "our", "on", "nothing", "none",
    "whatsoever", "at all", "more of", "again", "anymore", "any more", "way", "too much of", "lot", "lots",
    "of them", "them", "those", "these", "such", "heavy on", "plain", "pure", "overtly", "obviously", "full",
} | set(KIND_WORDS))
CONNECTORS: frozenset[str] = frozenset({"and", "or", "nor", ",", "/", "&"})
CLAUSE_BREAKS: frozenset[str] = frozenset({"but", "though", "although", "however", "yet", ".", ";", "!", "?",
                                            "while", "just", "instead", ":", "-"})
# after "and" or a comma these begin a new phrase, which a negation before them does not reach:
# "no romance, something funny"; "I hate musicals and a comedy would be nice"
SCOPE_STARTERS: frozenset[str] = frozenset({
    "something", "a", "an", "some", "maybe", "i", "i'd", "i'm", "give", "show", "how", "what", "make",
    "preferably", "ideally", "rather", "find", "get", "want", "perhaps", "possibly", "only", "prefer",
    "looking", "then", "also", "we", "let's", "lets", "would", "could", "can", "do", "you", "need", "go",
    "ok", "okay", "yes", "sure", "probably", "mostly", "mainly", "ideally", "love", "like", "enjoy",
})

# phrases that negate what follows them, rewritten to "no" before the word pass (single-word
# negators are in the parser); regexes over the normalised, lower-case text
NEGATION_PHRASES: tuple[str, ...] = (
    r"(?:(?:i|we)\s+)?(?:can't|cannot|can\s+not|couldn't|could\s+not)\s+(?:stand|bear|stomach|take|handle|do|deal\s+with"
    r"|watch|abide|tolerate)",
    r"(?:(?:i|we)\s+)?(?:really\s+|absolutely\s+|kind\s+of\s+|kinda\s+|just\s+)?(?:hate|detest|loathe|despise|dislike"
    r"|abhor)(?:\s+(?:watching|seeing))?",
    r"(?:not|never)\s+(?:really\s+|much\s+|so\s+much\s+|a\s+big\s+|big\s+|too\s+|that\s+|overly\s+|very\s+)?"
    r"(?:into|a\s+fan\s+of|fan\s+of|fond\s+of|keen\s+on|big\s+on|crazy\s+about|in\s+the\s+mood\s+for|in\s+the\s+mood"
    r"|feeling|up\s+for|interested\s+in|wild\s+about|partial\s+to|a\s+big\s+fan\s+of)",
    r"(?:(?:i'm|i\s+am|we're|we\s+are)\s+)?(?:sick|tired|bored|weary)\s+(?:of|with)",
    r"(?:(?:i've|i\s+have|we've)\s+)?had\s+(?:enough|my\s+fill)\s+of", r"enough\s+(?:with|of)(?:\s+the)?",
    r"(?:spare|save)\s+me(?:\s+(?:from|the))?",
    r"(?:steer|stay|keep|stay\s+well|keep\s+well)\s+(?:clear|away)\s+(?:of|from)(?:\s+the)?",
    r"(?:leave|keep|cut|take)\s+out(?:\s+the)?", r"(?:pass|passing)\s+on(?:\s+the)?", r"allergic\s+to",
    r"rule\s+out(?:\s+the)?", r"lay\s+off(?:\s+the)?", r"(?:get|getting)\s+rid\s+of(?:\s+the)?",
    r"(?:drop|ditch|lose|skip|hold|minus)\s+the", r"no\s+more(?!\s+than)", r"(?:rather|sooner)\s+than", r"instead\s+of",
    r"as\s+opposed\s+to", r"(?:isn't|aren't|wasn't|shouldn't|mustn't|can't|cannot|won't)\s+be",
    r"(?:don't|doesn't|dont|didn't)\s+(?:want|need|like|love|enjoy|care\s+for|feel\s+like|fancy|go\s+for|do)",
    r"(?:wouldn't|would\s+not|won't)\s+(?:want|like|enjoy|watch)", r"zero(?=\s+[a-z])",
    r"anything\s+except", r"everything\s+except", r"except\s+for", r"apart\s+from", r"aside\s+from",
    r"other\s+than", r"not\s+(?:any|a\s+single)",
)
# after a genre or tone word: "romance? no thanks", "horror is out", "musicals are a no for me"
POSTPOSED_NEGATION = (
    r"^\s*(?:[?,:\-!.]\s*)?(?:(?:is|are|'s|'re|=)\s+)?(?:(?:definitely|totally|absolutely|completely|right)\s+)?(?:"
    r"(?:a\s+)?(?:hard\s+)?no(?:-go|\s+go)?(?:\s+(?:for\s+(?:me|us)|thanks|thank\s+you|way))?(?=\s*(?:[,.;!?]|$|\s(?:for|and|but|thanks|please)\b))"
    r"|out(?=\s*(?:[,.;!?]|$|\s(?:for|and|but|please)\b))|off\s+the\s+table|off\s+limits|off-limits|banned|forbidden"
    r"|not\s+(?:for\s+(?:me|us)|(?:my|our)\s+(?:thing|cup\s+of\s+tea|jam|style))|(?:isn't|aren't)\s+(?:for\s+(?:me|us)"
    r"|(?:my|our)\s+(?:thing|cup\s+of\s+tea|jam|style))|a\s+(?:deal\s*breaker|dealbreaker|turn-off|turn\s+off)"
    r"|nope|please\s+no|can\s+go|(?:does|do)n't\s+(?:work|appeal)|not\s+please|not\s+today|not\s+tonight|not\s+again)"
)

# words that carry no constraint: what is left of a message after every pass, minus these, is
# reported as not understood (so nothing that reads like a constraint is silently dropped)
STOPWORDS: frozenset[str] = frozenset("""
a an the and or nor but if then so to of in on at by for with without from into onto about as than that this these
those it its it's i i'm i'd i've i'll me my mine we we're we'd we've us our you you're your he she they them their
is are was were be been being am do does did done doing have has had having get got getting go going gonna wanna
want wanted wants like liked likes love loved loves enjoy enjoyed need needs needed would could should can will may
might must shall let let's lets please pls plz thanks thank cheers hey hi hello hmm hm um uh oh ok okay yes yeah yep
sure alright well actually really very quite rather pretty just only also too even still maybe perhaps probably
possibly definitely absolutely totally somewhat kinda sorta kind sort type something anything everything nothing
some any every all none no not more most less least much many lot lots bit little few couple one ones thing things
stuff watch watching watched see seeing seen show shows showing find look looking recommend recommendation
recommendations suggest suggestion suggestions give gimme pick picks option options choice choices tonight today
tomorrow now right evening night weekend afternoon morning time mood feel feeling fancy else other another
different same similar good great nice decent best better fine cool awesome amazing excellent solid proper real
new again instead preferably ideally prefer preferred whatever whichever either neither what which who whom how
why where when there here around something's idea ideas film films movie movies flick flicks title titles one's
make makes made making put play keep kept take cut leave come came out up down over off back away go goes
watchable worth while bored boring entertain entertaining entertainment interesting people person someone friend
friends partner wife husband girlfriend boyfriend family's date night's couch evening's tv netflix's
available please's though although however yet because since until till while where's that's there's what's
let's it'll you'll i'd've isn't aren't wasn't weren't don't doesn't didn't won't wouldn't can't couldn't shouldn't
mustn't haven't hasn't hadn't dont doesnt didnt cant wont isnt arent typically usually generally overall
both whole kinda lol haha runs run running lasting lasts last length runtime duration long
""".split())

NUMBER_WORDS: dict[str, float] = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "half": 0.5, "one and a half": 1.5,
    "an hour and a half": 1.5, "a couple of": 2, "a couple": 2, "couple of": 2,
}
DECADE_WORDS: dict[str, int] = {
    "twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
    "seventies": 1970, "eighties": 1980, "nineties": 1990, "noughties": 2000, "aughts": 2000,
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
