"""``GET /v1/items/{item_id}``: one catalog item, with its training popularity."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Path

from outerloop.api.context import ApiContext, ApiError
from outerloop.api.openapi import ErrorOut


def items_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    funnel, artifacts, n_items = ctx.funnel, ctx.artifacts, ctx.n_items

    @router.get("/v1/items/{item_id}", responses={404: {"model": ErrorOut}}, summary="One catalog item")
    async def get_item(item_id: int = Path(ge=1, description="dense item id, 1..N")) -> dict[str, Any]:
        if not 1 <= item_id <= n_items:
            raise ApiError(404, f"item_id {item_id} is not in the catalog (1..{n_items})")
        it = funnel.catalog.items[item_id - 1]
        return {
            "item_id": it.item_id, "source_id": it.source_id, "title": it.title, "genres": list(it.genres),
            "year": it.year, "runtime_min": it.runtime_min, "tags": list(it.tags), "kind": it.kind,
            "series_id": it.series_id, "season": it.season, "episode": it.episode, "release_ts": it.release_ts,
            "popularity": float(np.asarray(artifacts.popularity)[item_id]),
        }
    return router
