"""Catalog and interaction schemas, MovieLens loaders, and the synthetic streaming world."""

from outerloop.data.datasets import DATASETS, DatasetSpec, dataset_hash, load_dataset
from outerloop.data.movielens import load_ml100k, load_ml1m_ratings, load_ml_latest_small, load_sasrec_ml1m
from outerloop.data.schema import ACTION_ID, Catalog, InteractionData, Item, UserSequence
from outerloop.data.synthetic import (
    CATALOG_USER_ID,
    SyntheticUser,
    SyntheticWorld,
    load_synthetic,
    synthetic_catalog,
)

__all__ = [
    "ACTION_ID",
    "CATALOG_USER_ID",
    "DATASETS",
    "Catalog",
    "DatasetSpec",
    "InteractionData",
    "Item",
    "SyntheticUser",
    "SyntheticWorld",
    "UserSequence",
    "dataset_hash",
    "load_dataset",
    "load_ml100k",
    "load_ml1m_ratings",
    "load_ml_latest_small",
    "load_sasrec_ml1m",
    "load_synthetic",
    "synthetic_catalog",
]
