"""The operator's console, served by the API at ``/console``: is the outer loop healthy, why does
this user see this row, and pause, resume or re-budget an agent across every daemon.

It reads what the daemons publish (:mod:`outerloop.scheduler.journal`, heartbeats, the event
streams) and what the API publishes (:mod:`outerloop.console.apistats`); control goes through
:mod:`outerloop.scheduler.control`. The page is a small front-end packaged with outerloop
(``static/``: plain JavaScript and uPlot, MIT, vendored): nothing is fetched from the internet.

:func:`mount_console` is the one hook: ``create_app`` calls it.
"""

from __future__ import annotations

from typing import Any

from outerloop.contracts.keys import Keys


def mount_console(app: Any, *, runtime: Any, keys: type[Keys], funnel: Any, api_key: str | None,
                  reads_need_key: bool, max_history: int, k: int = 10) -> None:
    """Add the console's routes, assets and request figures to the API ``app``.

    ``runtime`` holds the API's Redis ``client`` and user ``store`` (set at start-up);
    ``reads_need_key``: the API is bound off loopback, so the views need the key too."""
    from fastapi.staticfiles import StaticFiles

    from outerloop.console.apistats import RequestStats
    from outerloop.console.router import STATIC, console_router

    async def serve(user_id: str) -> Any:
        if runtime.store is None:
            return None
        state = await runtime.store.read(user_id, max_history)
        return funnel.recommend(state, k)

    def title(item_id: int) -> str:
        return funnel.title(item_id) if 1 <= item_id <= funnel.n_items else f"item {item_id} (not in the catalog)"

    app.include_router(console_router(client=lambda: runtime.client, keys=keys, api_key=api_key,
                                      reads_need_key=reads_need_key, serve=serve, title=title))
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(RequestStats, client=lambda: runtime.client, keys=keys)


__all__ = ["mount_console"]
