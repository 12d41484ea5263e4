"""kitlib.cache: the cache against the direct path, rebuilds, interrupted builds, leftovers, foreign folders, rows
checked against the table, pickling."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from kitlib import images
from kitlib.cache import ImageCache, build_cache, table_fingerprint
from kitlib.data import SegmentationDataset, make_dataset
from kitlib.io import temp_prefix
from kitlib.presets import PRESETS, get_preset
from kitlib.rle import rle_encode
from tests.test_data import OUT_H, OUT_W, TASK_PRESETS, H, W, make_table, valid_transform


@pytest.mark.parametrize("preset_name", list(TASK_PRESETS))
def test_cache_round_trip_equals_direct_path(tmp_path, preset_name):
    preset = get_preset(preset_name)
    df, _ = make_table(tmp_path, preset_name)
    cache = build_cache(df, preset, tmp_path / "cache", OUT_H, OUT_W, num_workers=2)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        ["images.npy", "index.csv", "meta.json"] + (["masks.npy"] if preset.is_segmentation else [])
    )
    assert cache.images.shape == (len(df), OUT_H, OUT_W, 3) and cache.images.dtype == np.uint8
    if preset.task == "multiclass":
        assert cache.masks.shape == (len(df), OUT_H, OUT_W)
    elif preset.is_segmentation:
        assert cache.masks.shape == (len(df), OUT_H, OUT_W, len(preset.target_classes))
        assert set(np.unique(cache.masks)) <= {0, 1}
    else:
        assert cache.masks is None
    assert cache.image_ids == df["image_id"].tolist()  # leading zeros kept
    # a fold subset in another order, through the same deterministic transform: identical items
    subset = df.iloc[[4, 1, 3]]
    direct = make_dataset(subset, preset, transform=valid_transform())
    cached = make_dataset(subset, preset, transform=valid_transform(), cache=cache)
    for i in range(len(subset)):
        a, b = direct[i], cached[i]
        assert a.keys() == b.keys() and a["image_id"] == b["image_id"]
        for key in a.keys() - {"image_id"}:
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # reopening from disk gives the same pixels
    reopened = ImageCache.open(tmp_path / "cache", df, preset)
    np.testing.assert_array_equal(reopened.images, cache.images)


def test_cache_is_reused_and_rebuilt_when_the_table_changes(tmp_path, caplog):
    df, _ = make_table(tmp_path, "demo")
    cache_dir = tmp_path / "cache"
    first = build_cache(df, PRESETS["demo"], cache_dir, OUT_H, OUT_W)
    stamp = (cache_dir / "images.npy").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="kitlib.cache"):
        again = build_cache(df.iloc[::-1], PRESETS["demo"], cache_dir, OUT_H, OUT_W)  # row order does not matter
    assert "is current" in caplog.text and (cache_dir / "images.npy").stat().st_mtime_ns == stamp
    assert again.meta["fingerprint"] == first.meta["fingerprint"]

    changed = df.copy()
    changed.loc[2, "Stripes"] = rle_encode(np.ones((H, W), np.uint8), order="F")
    assert table_fingerprint(changed, PRESETS["demo"]) != first.meta["fingerprint"]
    with pytest.raises(ValueError, match="stale"):
        ImageCache.open(cache_dir, changed, PRESETS["demo"])
    old_masks = first.masks  # memory-mapped before the rebuild
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kitlib.cache"):
        rebuilt = build_cache(changed, PRESETS["demo"], cache_dir, OUT_H, OUT_W)
    assert "stale" in caplog.text
    assert rebuilt.masks[rebuilt.row("0000002.png"), :, :, 0].all()
    assert not old_masks[first.row("0000002.png"), :, :, 0].all()  # an open memmap still reads the old file

    # a new resolution, then a touched image file (same bytes, new mtime): rebuilt each time
    bigger = build_cache(changed, PRESETS["demo"], cache_dir, 2 * OUT_H, 2 * OUT_W)
    assert bigger.images.shape[1:3] == (2 * OUT_H, 2 * OUT_W)
    path = df.loc[0, "image_path"]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert table_fingerprint(changed, PRESETS["demo"]) != bigger.meta["fingerprint"]
    # leftovers: nothing but the cache beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "images", "labels"]


class _Crash(Exception):
    pass


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    df, _ = make_table(tmp_path, "demo", n=8)
    real_read = images.read_image
    calls = []

    def crash_on_fifth(path):
        calls.append(path)
        if len(calls) == 5:
            raise _Crash("simulated kill in the middle of the build")
        return real_read(path)

    monkeypatch.setattr(images, "read_image", crash_on_fifth)
    cache_dir = tmp_path / "cache"
    with pytest.raises(_Crash):
        build_cache(df, PRESETS["demo"], cache_dir, OUT_H, OUT_W, num_workers=2)
    assert not cache_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels"]  # no hidden build folder

    # a failed rebuild keeps the previous cache as it was
    monkeypatch.setattr(images, "read_image", real_read)
    good = build_cache(df, PRESETS["demo"], cache_dir, OUT_H, OUT_W)
    calls.clear()
    monkeypatch.setattr(images, "read_image", crash_on_fifth)
    with pytest.raises(_Crash):
        build_cache(df, PRESETS["demo"], cache_dir, OUT_H, OUT_W, rebuild=True)
    np.testing.assert_array_equal(ImageCache.open(cache_dir, df, PRESETS["demo"]).images, good.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "images", "labels"]


def test_leftover_of_a_dead_build_is_removed(tmp_path):
    df, _ = make_table(tmp_path, "demo", n=2)
    dead_pid = 4194303  # above the usual pid_max, so no live process
    leftover = tmp_path / f"{temp_prefix(tmp_path / 'cache', pid=dead_pid)}abc123"  # as io.temp_dir names a build
    leftover.mkdir()
    (leftover / "images.npy").write_bytes(b"half")
    build_cache(df, PRESETS["demo"], tmp_path / "cache", OUT_H, OUT_W)
    assert not leftover.exists()


def test_cache_refuses_foreign_folder_and_checks_rows(tmp_path):
    df, _ = make_table(tmp_path, "demo")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an image cache"):
        build_cache(df, PRESETS["demo"], foreign, OUT_H, OUT_W)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        ImageCache.open(foreign)

    cache = build_cache(df.iloc[:3], PRESETS["demo"], tmp_path / "cache", OUT_H, OUT_W)
    with pytest.raises(KeyError, match="2 image\\(s\\) not in the cache"):
        SegmentationDataset(df, PRESETS["demo"], cache=cache)
    moved = df.iloc[:3].copy()
    moved.loc[1, "image_path"] = "/elsewhere/0000001.png"
    with pytest.raises(ValueError, match="image '0000001.png': table path /elsewhere"):
        SegmentationDataset(moved, PRESETS["demo"], cache=cache)
    with pytest.raises(ValueError, match="holds multilabel"):
        SegmentationDataset(df.iloc[:3].rename(columns={"Stripes": "x"}), PRESETS["coco"], cache=cache)
    test_cache = build_cache(df.iloc[:3, :4], PRESETS["demo"], tmp_path / "test_cache", OUT_H, OUT_W)
    assert test_cache.masks is None
    with pytest.raises(ValueError, match="holds no masks"):
        SegmentationDataset(df.iloc[:3], PRESETS["demo"], cache=test_cache)
    assert set(SegmentationDataset(df.iloc[:3, :4], PRESETS["demo"], cache=test_cache)[0]) == {"image_id", "image"}


def test_cache_pickles_without_its_arrays(tmp_path):
    df, _ = make_table(tmp_path, "demo")
    cache = build_cache(df, PRESETS["demo"], tmp_path / "cache", OUT_H, OUT_W)
    _ = cache.images[0]  # opened
    blob = pickle.dumps(cache)
    assert len(blob) < 10_000  # the memmaps are reopened, not copied
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.masks, cache.masks)
    assert "n_images=5" in repr(copy)
