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


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, offline (``HF_HUB_OFFLINE``, as in a Kaggle kernel): ``put(repo_id,
    filename, data, revision=None)`` writes a file where ``huggingface_hub`` (``try_to_load_from_cache``,
    ``hf_hub_download``) finds it; a 40-hex ``revision`` is the snapshot's commit, else ``refs/main`` points to it."""
    import re

    from huggingface_hub import constants

    cache = tmp_path / "hf_hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def put(repo_id: str, filename: str, data: bytes, revision: str | None = None) -> Path:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        commit = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else "0" * 40
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        path = repo / "snapshots" / commit / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    put.cache = cache
    return put
