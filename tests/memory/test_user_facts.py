"""Your own memory facts: a subclass of ``outerloop.Fact`` declared in an agent's
``memory_scopes`` is stored, versioned, cached and compare-and-set like the built-ins, on a real
Redis; other agents cannot touch it; a process that does not define the kind reads it as an
``UnknownFact`` instead of failing the whole memory."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Literal

import pytest

from outerloop import AgentContext, Budget, Fact, GenreBackoff, OuterLoop, Trigger, UsageError, agent
from outerloop.memory.facts import InvalidFact, UnknownFact, parse_fact
from outerloop.memory.store import MemoryChanges, MemoryStore, UserMemory
from tests.agents.test_outer_loop_support import TinyArtifacts


class PrefersSubtitles(Fact):
    """The user turns subtitles on for a language."""

    kind: Literal["prefers_subtitles"] = "prefers_subtitles"
    language: str

    @property
    def key(self) -> str:
        return f"prefers_subtitles:{self.language}"


class Mood(Fact):
    """One per user: the key defaults to the kind."""

    kind: Literal["household_mood"] = "household_mood"
    mood: str


@agent(name="subtitles", budget=Budget(latency_ms=500), rows=(), memory_scopes=[PrefersSubtitles, Mood],
       triggers=("manual",))
async def subtitles(ctx: AgentContext) -> int:
    """Writes the language asked for (and reads back what it knows)."""
    known = ctx.memory(PrefersSubtitles)
    ctx.remember(PrefersSubtitles(language=str(ctx.triggers[0].detail["language"]), evidence="settings page",
                                  confidence=0.9, source="subtitles"))
    ctx.remember(Mood(mood="cosy", evidence="asked", confidence=0.5, source="subtitles"))
    return len(known)


@agent(name="nosy", budget=Budget(latency_ms=500), rows=(), memory_scopes=[GenreBackoff], triggers=("manual",))
async def nosy(ctx: AgentContext) -> None:
    """Tries to write a fact kind it did not declare."""
    ctx.remember(PrefersSubtitles(language="xx", evidence="guess", confidence=0.1, source="nosy"))


def ask(language: str) -> Trigger:
    return Trigger.manual("subtitles", language=language)


async def test_a_user_fact_is_stored_versioned_and_cached(redis_target, redis_keys, redis_client):
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[subtitles, nosy],
                         builtins=False) as loop:
        first = await loop.run_cycle("u-sub", [ask("fr")])
        assert first.record("subtitles").outcome == "ok"
        mem = await MemoryStore(redis_client, keys=redis_keys).load("u-sub")
        fr = mem.get("prefers_subtitles:fr")
        assert isinstance(fr, PrefersSubtitles) and fr.version == mem.version == 1 and fr.source == "subtitles"
        assert isinstance(mem.get("household_mood"), Mood)
        raw = json.loads(await redis_client.hget(redis_keys.memory("u-sub"), "prefers_subtitles:fr"))
        assert raw["kind"] == "prefers_subtitles" and raw["language"] == "fr"

        hits = loop.deps.memory_cache.stats.hits
        second = await loop.run_cycle("u-sub", [ask("de")])  # reads fr back through the process cache
        assert second.record("subtitles").value.value == 1  # it saw the fr fact
        assert loop.deps.memory_cache.stats.hits == hits + 1
        mem = await MemoryStore(redis_client, keys=redis_keys).load("u-sub")
        assert mem.version == 2 and {f.key for f in mem.of_kind(PrefersSubtitles)} == {
            "prefers_subtitles:fr", "prefers_subtitles:de"}
        assert mem.get("prefers_subtitles:fr").version == 1 and mem.get("prefers_subtitles:de").version == 2

        # an agent without the scope cannot write it: its run fails, naming the scope, writing nothing
        res = await loop.run_cycle("u-sub", [Trigger.manual("nosy")])
        assert res.record("nosy").outcome == "error" and "no memory scope 'prefers_subtitles'" in res.record("nosy").error
        assert (await MemoryStore(redis_client, keys=redis_keys).load("u-sub")).version == 2


async def test_user_facts_are_compare_and_set(redis_target, redis_keys, redis_client):
    store = MemoryStore(redis_client, keys=redis_keys)
    base = PrefersSubtitles(language="fr", evidence="a", confidence=0.5, source="a")
    await store.commit("u-cas", 0, MemoryChanges(upsert=(base,)))
    stale = UserMemory("u-cas", 0, {})
    calls: list[int] = []

    def decide(mem: UserMemory) -> MemoryChanges:
        calls.append(mem.version)
        n = len(mem.of_kind(PrefersSubtitles))
        return MemoryChanges(upsert=(Mood(mood=f"{n} languages", evidence="b", confidence=0.5, source="b"),))

    res = await store.update_with_retry("u-cas", decide, start_from=stale)
    assert calls == [0, 1] and res.attempts == 2  # the stale decision lost and was made again
    mem = await store.load("u-cas")
    assert mem.get("household_mood").mood == "1 languages" and mem.version == 2


def test_fact_classes_are_checked_when_defined():
    with pytest.raises(UsageError, match="must declare its kind"):
        class NoKind(Fact):  # noqa: F841
            level: int
    with pytest.raises(UsageError, match="already"):
        class Impostor(Fact):  # noqa: F841
            kind: Literal["prefers_subtitles"] = "prefers_subtitles"
    with pytest.raises(InvalidFact, match="prefers_subtitles.language"):
        parse_fact({"kind": "prefers_subtitles", "evidence": "x", "confidence": 1, "source": "s"})


def test_a_process_without_the_class_reads_it_as_unknown_and_keeps_the_rest():
    doc = PrefersSubtitles(language="fr", evidence="a", confidence=0.5, source="a").model_dump_json()
    code = ("import sys, json; from outerloop.memory.facts import parse_fact, UnknownFact; "
            f"f = parse_fact({doc!r}, unknown_ok=True, key='prefers_subtitles:fr'); "
            "print(type(f).__name__, f.key, f.model_extra['language'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["UnknownFact", "prefers_subtitles:fr", "fr"]
    assert isinstance(parse_fact('{"kind": "elsewhere", "evidence": "e", "confidence": 1, "source": "s"}',
                                 unknown_ok=True), UnknownFact)
    with pytest.raises(InvalidFact, match="not a known fact kind"):
        parse_fact('{"kind": "elsewhere", "evidence": "e", "confidence": 1, "source": "s"}')
