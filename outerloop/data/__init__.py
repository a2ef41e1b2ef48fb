"""Catalog and interaction schemas, MovieLens loaders, and the synthetic streaming world."""

from outerloop.data.schema import ACTION_ID, EVENT_TYPES, Catalog, InteractionData, Item, UserSequence

__all__ = ["ACTION_ID", "EVENT_TYPES", "Catalog", "InteractionData", "Item", "UserSequence"]
