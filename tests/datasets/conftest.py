"""Fixtures for the dataset-ingestion tests: the shared real data and a Kaggle-layout tree built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ds_helpers import build_kaggle_tree, data_root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "faces").is_dir() or not (root / "danbooru-metadata").is_dir():
        pytest.skip(f"real data not found at {root} (set ANIMETAGNET_DATA to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def kaggle_tree(data_dir: Path, tmp_path_factory) -> dict:
    return build_kaggle_tree(data_dir, tmp_path_factory.mktemp("kaggle"))
