"""Hard constraints against a catalog: what can be checked, the eligible set, and a per-item check.

Two implementations on purpose: :func:`eligible_mask` is the vectorised filter retrieval uses;
:func:`violations` checks one item from its plain metadata. The reflect step runs every pick
through :func:`violations` before it is returned, so a bug in the fast path shows up as a
dropped pick and a note, never as a violated constraint.

What cannot be checked is refused, not pretended: a runtime bound on a catalog without runtimes
(MovieLens), a tag exclusion on a catalog without tags (ML-1M), "a series" on a films-only
catalog. On a catalog that has the field for only some items, an item whose value is unknown
does not pass a bound on it (unknown is not "satisfied").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from outerloop.conversation.catalog_facts import CatalogFacts, tag_matches
from outerloop.conversation.constraints import Constraints, Refusal
from outerloop.data.schema import Item


def applicable(c: Constraints, facts: CatalogFacts) -> tuple[Constraints, list[Refusal]]:
    """``c`` without what this catalog cannot check, and a refusal for each part taken out."""
    refused: list[Refusal] = []
    update: dict[str, object] = {}
    where = facts.name
    if c.has_runtime and not facts.has_runtimes:
        for name in ("min_runtime_min", "max_runtime_min"):
            value = getattr(c, name)
            if value is not None:
                refused.append(Refusal(field=name, value=value, reason=(
                    f"{where} has no runtimes, so a runtime bound cannot be checked; it was not applied "
                    "(the titles below may be any length)")))
                update[name] = None
    if c.has_era and not facts.has_years:
        for name in ("min_year", "max_year"):
            value = getattr(c, name)
            if value is not None:
                refused.append(Refusal(field=name, value=value,
                                       reason=f"{where} has no release years; the bound was not applied"))
                update[name] = None
    if not facts.has_tags:
        if c.exclude_tags:
            negated = ", ".join(t for t in c.tones if t.startswith("not ")) or "excluded tags"
            refused.append(Refusal(field="exclude_tags", value=c.exclude_tags, reason=(
                f"{where} has no tags, so '{negated}' cannot be checked; it was not applied")))
            update["exclude_tags"] = []
        if c.prefer_tags:
            refused.append(Refusal(field="prefer_tags", value=c.prefer_tags, reason=(
                f"{where} has no tags; tone preferences can only act through genres here")))
            update["prefer_tags"] = []
    if c.kind == "episode" and not facts.has_episodes:
        refused.append(Refusal(field="kind", value="episode", reason=f"{where} has only films; not applied"))
        update["kind"] = None
    if c.kind == "film" and not facts.has_films:
        refused.append(Refusal(field="kind", value="film", reason=f"{where} has only episodes; not applied"))
        update["kind"] = None
    return (c.model_copy(update=update) if update else c), refused


def eligible_mask(facts: CatalogFacts, c: Constraints, exclude_ids: Iterable[int] = ()) -> np.ndarray:
    """(N+1,) bool: items that satisfy every hard constraint of ``c`` (row 0 never)."""
    mask = np.ones(facts.n_items + 1, dtype=bool)
    mask[0] = False
    if c.include_genres:
        mask &= facts.genre_mask(c.include_genres, "all")
    if c.any_genres:
        mask &= facts.genre_mask(c.any_genres, "any")
    if c.exclude_genres:
        mask &= ~facts.genre_mask(c.exclude_genres, "any")
    bounds = ((c.min_runtime_min, c.max_runtime_min, facts.runtimes), (c.min_year, c.max_year, facts.years))
    for lo, hi, values in bounds:
        if lo is not None or hi is not None:
            mask &= values >= 0
            if lo is not None:
                mask &= values >= lo
            if hi is not None:
                mask &= values <= hi
    if c.kind is not None:
        mask &= facts.is_episode if c.kind == "episode" else ~facts.is_episode
    if c.exclude_tags:
        mask &= ~facts.tag_mask(c.exclude_tags)
    ids = np.fromiter((int(i) for i in exclude_ids), dtype=np.int64)
    ids = ids[(ids > 0) & (ids <= facts.n_items)]
    mask[ids] = False
    return mask


def violations(item: Item, c: Constraints) -> list[str]:
    """Which hard constraints ``item`` breaks, from its own metadata (empty = satisfies all)."""
    out: list[str] = []
    genres = set(item.genres)
    missing = [g for g in c.include_genres if g not in genres]
    if missing:
        out.append(f"not {', '.join(missing)}")
    if c.any_genres and not genres & set(c.any_genres):
        out.append(f"none of {', '.join(c.any_genres)}")
    banned = sorted(genres & set(c.exclude_genres))
    if banned:
        out.append(f"is {', '.join(banned)}")
    if c.has_runtime:
        rt = item.runtime_min
        if rt is None:
            out.append("runtime unknown")
        elif (c.min_runtime_min is not None and rt < c.min_runtime_min) or \
                (c.max_runtime_min is not None and rt > c.max_runtime_min):
            out.append(f"runtime {rt} min")
    if c.has_era:
        y = item.year
        if y is None:
            out.append("year unknown")
        elif (c.min_year is not None and y < c.min_year) or (c.max_year is not None and y > c.max_year):
            out.append(f"year {y}")
    if c.kind is not None and item.kind != c.kind:
        out.append(f"is a {item.kind}")
    tags = [t.lower() for t in item.tags]
    bad_tags = sorted({t for t in tags for w in c.exclude_tags if tag_matches(w.lower(), t)})
    if bad_tags:
        out.append(f"tagged {', '.join(bad_tags)}")
    return out


def relax_hints(facts: CatalogFacts, c: Constraints, exclude_ids: Iterable[int], have: int) -> list[str]:
    """When few items qualify: how many more each single constraint is holding back.

    This is the "reflect" half of reflect-and-rerank: instead of quietly loosening anything,
    the answer says which ask is the narrow one and lets the user decide.
    """
    seen = list(exclude_ids)
    options: list[tuple[int, str]] = []
    trials: list[tuple[str, dict[str, object]]] = [
        ("the genre ask", {"include_genres": [], "any_genres": []}),
        ("the excluded genres", {"exclude_genres": []}),
        ("the runtime bound", {"min_runtime_min": None, "max_runtime_min": None}),
        ("the year range", {"min_year": None, "max_year": None}),
        ("the film/series choice", {"kind": None}),
        ("the tone exclusions", {"exclude_tags": []}),
    ]
    for label, change in trials:
        if all(getattr(c, k) in (None, []) for k in change):
            continue
        gained = int(eligible_mask(facts, c.model_copy(update=change), seen).sum()) - have
        if gained > 0:
            options.append((gained, f"dropping {label} would allow {gained} more"))
    if not options:
        return ["no single constraint is the narrow one; several would have to go"]
    return [text for _, text in sorted(options, reverse=True)[:2]]
