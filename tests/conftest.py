"""Shared fixtures: where the real competition samples live, and a skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real samples sit beside the checkout (../shared/data); KIT_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("KIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_sample(name: str) -> Path:
    """Path of a real sample folder under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real sample {path} is absent (set KIT_SHARED_DATA to the folder that holds {name}/)")
    return path


@pytest.fixture
def clouds_dir() -> Path:
    return shared_sample("clouds_sample")


@pytest.fixture
def dacon_dir() -> Path:
    return shared_sample("dacon_building_sample")


@pytest.fixture
def isbi_dir() -> Path:
    return shared_sample("isbi2012_membrane")


@pytest.fixture
def cassava_dir() -> Path:
    return shared_sample("cassava_sample")
