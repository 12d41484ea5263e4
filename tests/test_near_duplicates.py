"""Near-duplicates (kitlib.near_duplicates): resized, re-encoded and brightened copies of real images are grouped,
distinct images are not, the groups share a fold (also united with a user's group column), the pair search matches a
brute force, and the hash cache is reused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from kitlib import near_duplicates
from kitlib.folds import make_folds
from kitlib.presets import PRESETS
from tests.conftest import SHARED_DATA


def _sources(tmp_path: Path, n: int = 10) -> list[Path]:
    """Real images when ../shared/data holds them (Clouds and Cassava train images), else synthetic textures
    (smoothed noise at several scales: as distinct from each other as photographs)."""
    real = sorted((SHARED_DATA / "clouds_sample" / "train_images").glob("*.jpg"))[:6]
    real += sorted((SHARED_DATA / "cassava_sample" / "train_images").glob("*.jpg"))[:4]
    if len(real) >= n:
        return real[:n]
    import cv2

    rng, out = np.random.default_rng(0), []
    for k in range(n):
        image = sum(cv2.resize(rng.uniform(0, 255, (s, s, 3)), (192, 128)) for s in (4, 8, 16, 32)) / 4
        path = tmp_path / f"tex{k}.png"
        Image.fromarray(image.astype(np.uint8)).save(path)
        out.append(path)
    return out


def _copies(sources: list[Path], folder: Path) -> pd.DataFrame:
    """A table: each source, and for the first three a resized, a JPEG-re-encoded (quality 60) and a brightened (x1.1)
    copy; ``truth`` names the source of each row."""
    folder.mkdir(exist_ok=True)
    rows = []
    for k, src in enumerate(sources):
        rows.append((f"src{k}", str(src), f"src{k}"))
        if k >= 3:
            continue
        image = Image.open(src).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=60)
        variants = {
            "small": image.resize((image.width // 3, image.height // 3), Image.BILINEAR),
            "jpeg": Image.open(io.BytesIO(buffer.getvalue())),
            "bright": ImageEnhance.Brightness(image).enhance(1.1),
        }
        for name, variant in variants.items():
            path = folder / f"{k}_{name}.png"
            variant.save(path, compress_level=1)
            rows.append((f"copy{k}_{name}", str(path), f"src{k}"))
    table = pd.DataFrame(rows, columns=["image_id", "image_path", "truth"])
    rng = np.random.default_rng(1)
    return table.assign(label=rng.integers(0, 5, len(table))).sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("dups")
    return _copies(_sources(tmp), tmp / "copies")


def test_copies_are_grouped_and_distinct_images_are_not(copies, tmp_path):
    table = copies
    dups = near_duplicates.find_duplicates(table, max_distance=4, cache_path=tmp_path / "cache" / "phash.csv")
    got = dups.table.set_index("image_id")["dup_group"].reindex(table["image_id"]).to_numpy()
    truth = table["truth"].to_numpy()
    same_truth, same_group = truth[:, None] == truth[None, :], got[:, None] == got[None, :]
    assert (same_truth == same_group).all()  # copies together, distinct sources apart
    assert dups.n_groups == 3 and len(dups.duplicated) == 12 and set(dups.duplicated["group_size"]) == {4}
    assert set(dups.table.loc[dups.table["group_size"] == 1, "image_id"]) == {f"src{k}" for k in range(3, 10)}
    assert (dups.pairs["distance"] <= 4).all() and len(dups.pairs) == 3 * 6  # every pair of a group of 4
    assert dups.table.set_index("image_id").loc["copy0_jpeg", "dup_group"] == "copy0_bright"  # smallest id names it
    near_duplicates.save_duplicates(tmp_path / "duplicates.csv", dups)
    assert len(pd.read_csv(tmp_path / "duplicates.csv")) == 12
    # negative control: distance 0 still joins the exact-hash copies only, never distinct images
    strict = near_duplicates.find_duplicates(table, max_distance=0, cache_path=tmp_path / "cache" / "phash.csv")
    g0 = strict.table.set_index("image_id")["dup_group"].reindex(table["image_id"]).to_numpy()
    assert not ((g0[:, None] == g0[None, :]) & ~same_truth).any()


def test_duplicates_share_a_fold_also_with_a_group_column(copies):
    table = copies
    dups = near_duplicates.find_duplicates(table, 4)
    preset = PRESETS["cassava"]
    frame, group = near_duplicates.fold_groups(table, dups)
    folds = make_folds(frame, preset, n_folds=3, seed=0, group_col=group)
    assert group == near_duplicates.FOLD_GROUP_COL and near_duplicates.split_groups(folds, dups) == []
    assert (folds.groupby("truth")["fold"].nunique() == 1).all()
    # without the duplicate groups, some group is split (the check can fail)
    plain = make_folds(table, preset, n_folds=3, seed=0)
    assert near_duplicates.split_groups(plain, dups)
    # a user's group column joins src5 and src6 with group 0: one united group of 6
    user = table.assign(patient=np.where(table["truth"].isin(["src5", "src6", "src0"]), "p0", table["image_id"]))
    frame, group = near_duplicates.fold_groups(user, dups, "patient")
    united = frame.set_index("image_id")[group]
    assert united["src5"] == united["src6"] == united["copy0_small"] and frame[group].nunique() == 10 - 2
    folds = make_folds(frame, preset, n_folds=3, seed=0, group_col=group)
    assert folds.loc[folds["truth"].isin(["src0", "src5", "src6"]), "fold"].nunique() == 1
    # no duplicates: the table and group column pass through unchanged
    none = near_duplicates.find_duplicates(table[table["image_id"].str.startswith("src")].reset_index(drop=True), 4)
    assert none.n_groups == 0 and near_duplicates.fold_groups(table, none, "truth") == (table, "truth")


def test_pair_search_matches_a_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = np.array([sum(np.uint64(1) << np.uint64(b) for b in rng.choice(64, rng.integers(0, 7), replace=False))
                      for _ in range(300)], dtype=np.uint64)  # fmt: skip
    hashes = np.concatenate([base, base ^ flips])  # each base and a copy 0..6 bits away
    found = set()
    for i, j, d in near_duplicates.near_pairs(hashes, 4, chunk_size=37):
        found |= {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d, strict=True)}
    bits = np.array([[bin(int(a) ^ int(b)).count("1") for b in hashes] for a in hashes])
    brute = {(a, b, int(bits[a, b])) for a, b in zip(*np.nonzero(np.triu(bits <= 4, 1)), strict=True)}
    assert found == brute and len(brute) >= 150
    x = hashes[:50]  # the numpy < 2 fallback counts the same bits
    np.testing.assert_array_equal(_swar(x), [bin(int(v)).count("1") for v in x])
    with pytest.raises(ValueError, match="max_distance must be in 0..64"):
        next(near_duplicates.near_pairs(hashes, 65))


def _swar(x: np.ndarray) -> np.ndarray:
    """near_duplicates._popcount's fallback (numpy < 2), run with np.bitwise_count hidden."""
    saved = np.bitwise_count
    try:
        del np.bitwise_count
        return near_duplicates._popcount(x)
    finally:
        np.bitwise_count = saved


def test_hash_cache_is_reused_and_refreshed(tmp_path, monkeypatch):
    table = _copies(_sources(tmp_path)[:2], tmp_path / "copies")
    cache = tmp_path / "cache" / "phash.csv"
    first = near_duplicates.image_hashes(table["image_path"], cache)
    assert len(pd.read_csv(cache)) == len(table)

    def refuse(path):
        raise AssertionError(f"hashed again: {path}")

    monkeypatch.setattr(near_duplicates, "_phash", refuse)
    np.testing.assert_array_equal(near_duplicates.image_hashes(table["image_path"], cache), first)
    # a changed file (new size / mtime) is hashed again, the others come from the cache
    changed = Path(table.loc[table["image_id"] == "copy0_small", "image_path"].iloc[0])
    Image.open(changed).transpose(Image.FLIP_LEFT_RIGHT).save(changed)
    calls = []
    monkeypatch.setattr(near_duplicates, "_phash", lambda p: calls.append(p) or 7)
    again = near_duplicates.image_hashes(table["image_path"], cache)
    assert calls == [str(changed.resolve())] and int(again[table.index[table["image_id"] == "copy0_small"][0]]) == 7
    assert len(pd.read_csv(cache)) == len(table)  # the file's old row replaced
    with pytest.raises(FileNotFoundError, match="nope.png"):
        near_duplicates.image_hashes([tmp_path / "nope.png"], cache)


def test_folding_the_edges_keeps_the_groups(copies, monkeypatch):
    """With the edge budget tiny, the edges are folded into components after every chunk: the same groups."""
    whole = near_duplicates.find_duplicates(copies, 4, chunk_size=3)
    monkeypatch.setattr(near_duplicates, "_MAX_EDGES", 1)
    folded = near_duplicates.find_duplicates(copies, 4, chunk_size=3)
    pd.testing.assert_frame_equal(folded.table, whole.table)
    assert len(folded.pairs) == len(whole.pairs) == 18
