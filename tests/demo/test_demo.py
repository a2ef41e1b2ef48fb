"""The demo's story against real pieces: ``outerloop serve`` and ``outerloop daemon`` (with the
demo's runner: the real agent graph plus the demo agent) as two processes on one embedded
Redis, the tiny trained artifacts, and each moment driven through the API and checked for its
effect, as ``outerloop demo`` plays it on the bigger world."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import redis

from outerloop.data.synthetic import SyntheticWorld
from outerloop.demo.agents import DEMO_AGENT, DEMO_ROW
from outerloop.demo.moments import budget_overrun, episode_release, genre_backoff, late_night
from outerloop.demo.processes import services
from outerloop.demo.runner import read_run_log
from outerloop.demo.story import Story, pick_roles, real_time, stream_history
from tests.api.test_api_fixtures import SYNTHETIC, tiny_dir  # noqa: F401

WORLD = {k: int(v) for k, v in (kv.split("=") for kv in SYNTHETIC)}


def test_the_demo_story_happens(tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    from outerloop.data.datasets import load_dataset
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.ensemble import EnsembleConfig, train_ensemble

    # as the demo does: the artifacts carry a trained ensemble, so the daemon runs the ensemble agent
    arts = tmp_path / "artifacts"
    shutil.copytree(tiny_dir, arts)
    train_ensemble(Artifacts.load(arts), load_dataset("synthetic", None, **WORLD),
                   EnsembleConfig(extra_transformers=0, ease_lambdas=(50.0,), half_lives=(0.0,)), progress=False)
    world = SyntheticWorld.generate(n_users=WORLD["n_users"], n_films=WORLD["n_films"],
                                    n_series=WORLD["n_series"], seed=WORLD["seed"])
    events = world.simulate(days=WORLD["days"])
    roles = pick_roles(world, events)
    lines: list[str] = []  # what the demo would print (shown when an assertion fails)
    with services(arts, tmp_path, redis_dir=tmp_path / "redis") as svc, \
            httpx.Client(base_url=svc.base_url, timeout=10.0) as http, \
            contextlib.closing(redis.Redis.from_url(svc.redis_url)) as client:
        story = Story(http=http, redis=client, catalog=world.catalog, say=lines.append, timeout_s=30.0)
        streamed = stream_history(story, world, events, roles.users(), days=WORLD["days"], idle_timeout_s=60)
        assert streamed.idle and streamed.cycles > 0, lines
        assert not real_time(story, roles.follower).still_recommended

        release = episode_release(story, roles.follower, roles.series)
        assert release.happened, lines
        assert release.lead_after == release.released_item and roles.follower in release.refreshed
        assert roles.co_followers and set(roles.co_followers) <= set(release.refreshed), lines  # fanned out

        owl = late_night(story, roles.night_owl, world.user(roles.night_owl).tz_offset_min)
        assert owl.happened and owl.row is not None and owl.row["produced_by"] == "tools", lines
        dark = {"thriller", "horror"}
        assert not any(dark & {g.lower() for g in world.catalog.get(it["item_id"]).genres} for it in owl.row["items"])

        backoff = genre_backoff(story, roles.genre_fan, roles.genre)
        assert backoff.fact is not None and backoff.happened, lines
        assert backoff.fact.evidence == backoff.skip_ids  # cited by event id
        assert "Picked from your viewing and what's trending (tools)" in backoff.refreshed
        assert all(backoff.after[row][0] == 0 for row in backoff.refreshed), backoff.after

        overrun = budget_overrun(story, roles.follower, DEMO_AGENT, DEMO_ROW)
        assert overrun.happened, lines
        assert overrun.good is not None and overrun.good["outcome"] == "ok"
        assert overrun.killed is not None and overrun.killed["outcome"] == "killed"
        assert overrun.killed["retries"] == 0 and overrun.killed["writes_committed"] == 0
        assert overrun.killed["overrun_ms"] >= 0 and overrun.later_runs == 0
        assert overrun.good_row_run == overrun.good["run_id"] == overrun.served_run_after

        cycles = [c for _, c in read_run_log(client, story.base)]
        runs = [r for c in cycles for r in c["records"]]
        assert sum(r["retries"] for r in runs) == 0
        assert [r["agent"] for r in runs if r["outcome"] == "killed"] == [DEMO_AGENT]
        # the heavy agent ran in the daemon, within its budget, and its row is served by the API
        heavy = [r for r in runs if r["agent"] == "ensemble"]
        assert heavy and all(r["outcome"] == "ok" for r in heavy), heavy[:3]
        served = http.get(f"/v1/users/{roles.follower}/recommendations").json()
        row = next((r for r in served["rows"] if r["row_id"] == "ensemble_picks"), None)
        assert row is not None and row["produced_by"] == "ensemble" and row["items"], served["rows"]
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()

