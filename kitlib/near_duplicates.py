"""Near-duplicate train images: perceptual hashes, groups within a Hamming distance, and folds that keep each group
whole (``notebooks/00_eda.py``).

A duplicate in two folds leaks: the model validates on an image it trained on, the CV rises and says nothing. The
Cassava 2020 train set held copies of the 2019 set's images (resized, re-encoded); Kaggle teams found them with
perceptual hashes and kept each group in one fold.

- ``image_hashes``: the 64-bit DCT hash (``imagehash.phash``, hash_size 8) of every image, cached in a CSV keyed by
  path, size and mtime (``artifacts/cache/phash.csv``), so a rerun hashes only new or changed files;
- ``near_pairs``: every pair within ``max_distance`` bits, a vectorised popcount of XORs over uint64 a chunk of rows
  at a time (own code: imagehash compares two hashes, it has no search over a set; N = 21k images is 2.2e8 pairs,
  about a second with ``np.bitwise_count``, and memory stays at a chunk x N);
- ``find_duplicates``: the groups, connected components of those pairs (``scipy.sparse.csgraph``), as
  ``Duplicates`` (a table image_id -> dup_group and the pairs); ``save_duplicates`` writes ``duplicates.csv``;
- ``fold_groups``: the group column ``kitlib.folds.make_folds`` keeps whole: the duplicate groups united with the
  user's ``group_col`` (an image is in the same fold as its duplicates and as the rows of its group);
  ``split_groups`` checks a split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from kitlib._private import listing, progress
from kitlib.io import file_key, read_file_cache, write_csv, write_file_cache

__all__ = [
    "DUPLICATES_FILE",
    "Duplicates",
    "FOLD_GROUP_COL",
    "HASH_BITS",
    "HASH_CACHE",
    "find_duplicates",
    "fold_groups",
    "image_hashes",
    "near_pairs",
    "save_duplicates",
    "split_groups",
]

log = logging.getLogger(__name__)

#: Bits of a perceptual hash (``imagehash.phash`` with hash_size 8).
HASH_BITS = 64
#: The hash cache under ``artifacts_root/cache/``.
HASH_CACHE = "phash.csv"
#: The duplicate groups beside ``folds.csv``.
DUPLICATES_FILE = "duplicates.csv"
#: The column ``fold_groups`` adds for ``make_folds``.
FOLD_GROUP_COL = "fold_group"
#: Pairs kept for the table and the figure (the groups use every pair).
MAX_PAIRS = 100_000
#: Edges held before they are folded into components (bounded memory when thousands of images are alike).
_MAX_EDGES = 4_000_000


def _phash(path: str) -> int:
    """The 64-bit pHash of one image file as an int. JPEGs are decoded at a reduced scale (``Image.draft``: the DCT
    scaling of libjpeg, 8x faster on a 2100 x 1400 image); the hash is taken of a 32 x 32 greyscale image anyway."""
    import imagehash
    from PIL import Image

    with Image.open(path) as image:
        image.draft("L", (128, 128))
        return int(str(imagehash.phash(image, hash_size=8)), 16)


def image_hashes(paths: Sequence[str | os.PathLike], cache_path: str | os.PathLike | None = None) -> np.ndarray:
    """The perceptual hash of every image, from the cache where the file is unchanged.

    Args:
        paths: image files.
        cache_path: a CSV ``path,size,mtime_ns,phash`` (hex); rows of files not hashed now are kept; written
            atomically when a hash was added. None: no cache.
    Returns:
        (N,) uint64 hashes in the order of ``paths``.
    Raises:
        FileNotFoundError: a missing image (named). OSError: an unreadable image (named).
    """
    keys = [file_key(p, "image file") for p in paths]
    known = read_file_cache(cache_path, {"phash": str})  # key -> (phash hex,)
    todo = sorted({k for k in keys if k not in known})
    for key in progress(todo, desc="perceptual hashes", total=len(todo)) if todo else ():
        try:
            known[key] = (f"{_phash(key[0]):016x}",)
        except OSError as e:
            raise OSError(f"{key[0]}: cannot hash the image: {e}") from e
    log.info(
        "perceptual hashes: %d image(s), %d from the cache, %d hashed", len(keys), len(keys) - len(todo), len(todo)
    )
    if todo and cache_path is not None:
        write_file_cache(cache_path, known, keys, ["phash"])
    return np.array([int(known[k][0], 16) for k in keys], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64: ``np.bitwise_count`` (numpy >= 2), else the SWAR sum of bits (Hacker's Delight 5-1)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


def near_pairs(hashes: np.ndarray, max_distance: int, chunk_size: int = 256):
    """Every pair of hashes within ``max_distance`` differing bits, a chunk of rows at a time.

    Args:
        hashes: (N,) uint64.
        max_distance: the largest Hamming distance of a pair, 0..64.
        chunk_size: rows compared with all the later rows at once (memory: chunk_size x N uint64).
    Yields:
        ``(i, j, distance)`` per chunk: (m,) int64 row indices with i < j and (m,) uint8 distances.
    Raises:
        ValueError: ``max_distance`` outside 0..64; hashes not 1-D.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    if h.ndim != 1:
        raise ValueError(f"hashes must be (N,) uint64, got shape {h.shape}")
    if not 0 <= int(max_distance) <= HASH_BITS:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS}, got {max_distance}")
    for start in range(0, len(h), chunk_size):
        stop = min(start + chunk_size, len(h))
        dist = _popcount(h[start:stop, None] ^ h[None, start + 1 :])  # (c, N - start - 1): column q is row start+1+q
        a, q = np.nonzero(dist <= max_distance)
        i, j = a + start, q + start + 1
        keep = i < j
        yield i[keep].astype(np.int64), j[keep].astype(np.int64), dist[a[keep], q[keep]].astype(np.uint8)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _group_keys(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's group named by the smallest image_id in it: names that do not depend on the row order."""
    table = pd.DataFrame({"id": ids, "label": labels})
    return table["label"].map(table.groupby("label")["id"].min()).to_numpy()


@dataclass(frozen=True)
class Duplicates:
    """Near-duplicate groups of a table's images.

    Attributes:
        table: one row per image, in the table's order: ``image_id``, ``phash`` (16 hex digits), ``dup_group`` (the
            smallest image_id of its group; its own id when it has no duplicate), ``group_size`` (1: none).
        pairs: ``image_a``, ``image_b``, ``distance`` (bits), closest first (at most ``MAX_PAIRS``).
        max_distance: the Hamming distance used.
    """

    table: pd.DataFrame
    pairs: pd.DataFrame
    max_distance: int

    @property
    def duplicated(self) -> pd.DataFrame:
        """The rows of ``table`` in groups of two or more, by group then id."""
        return self.table[self.table["group_size"] > 1].sort_values(["dup_group", "image_id"]).reset_index(drop=True)

    @property
    def n_groups(self) -> int:
        """Groups of two or more images."""
        return int(self.duplicated["dup_group"].nunique())


def find_duplicates(
    df: pd.DataFrame, max_distance: int = 4, cache_path: str | os.PathLike | None = None, chunk_size: int = 256
) -> Duplicates:
    """Group the table's images whose perceptual hashes differ in at most ``max_distance`` bits (transitively: a
    chain of near pairs is one group).

    Args:
        df: a table with ``image_id`` and ``image_path`` (``kitlib.formats.load_competition``).
        max_distance: 0..64; 4 catches resized, re-encoded and slightly brightened copies while distinct photos of
            one scene are usually 10 or more bits apart (tests/test_near_duplicates.py measures both).
        cache_path: the hash cache (``image_hashes``).
        chunk_size: rows per chunk of the pair search.
    Returns:
        ``Duplicates``.
    Raises:
        ValueError: no ``image_id`` / ``image_path`` column, repeated ids, ``max_distance`` outside 0..64.
        FileNotFoundError, OSError: as ``image_hashes``.
    """
    missing = [c for c in ("image_id", "image_path") if c not in df.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; columns: {list(df.columns)}")
    ids = df["image_id"].astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        raise ValueError(f"image_id not unique: {listing(pd.Series(ids)[pd.Series(ids).duplicated()].unique())}")
    hashes = image_hashes(df["image_path"].tolist(), cache_path)
    edges_i, edges_j, pairs, n_edges, n_pairs = [], [], [], 0, 0
    for i, j, d in near_pairs(hashes, max_distance, chunk_size):
        edges_i.append(i)
        edges_j.append(j)
        n_edges += len(i)
        n_pairs += len(i)
        if sum(len(p[0]) for p in pairs) < MAX_PAIRS:
            pairs.append((i, j, d))
        if n_edges > _MAX_EDGES:  # fold the edges into a star per component so far
            labels = _components(len(ids), np.concatenate(edges_i), np.concatenate(edges_j))
            first = np.unique(labels, return_index=True)[1][labels]
            star = np.flatnonzero(first != np.arange(len(ids)))
            edges_i, edges_j, n_edges = [first[star]], [star], len(star)
    cat = (lambda parts: np.concatenate(parts)) if edges_i else (lambda parts: np.zeros(0, np.int64))
    labels = _components(len(ids), cat(edges_i), cat(edges_j))
    sizes = np.bincount(labels)[labels]
    table = pd.DataFrame({"image_id": ids, "phash": [f"{int(h):016x}" for h in hashes],
                          "dup_group": _group_keys(ids, labels), "group_size": sizes})  # fmt: skip
    pi, pj, pd_ = (np.concatenate([p[k] for p in pairs]) if pairs else np.zeros(0, int) for k in range(3))
    pair_table = pd.DataFrame({"image_a": ids[pi], "image_b": ids[pj], "distance": pd_.astype(int)})
    pair_table = pair_table.sort_values(["distance", "image_a", "image_b"]).head(MAX_PAIRS).reset_index(drop=True)
    if n_pairs > MAX_PAIRS:
        log.warning("%d near pairs; the pairs table keeps %d (the groups use them all)", n_pairs, MAX_PAIRS)
    out = Duplicates(table=table, pairs=pair_table, max_distance=int(max_distance))
    log.info("near-duplicates (pHash distance <= %d): %d pairs, %d groups holding %d of %d images", max_distance,
             n_pairs, out.n_groups, len(out.duplicated), len(ids))  # fmt: skip
    return out


def save_duplicates(path: str | os.PathLike, duplicates: Duplicates) -> Path:
    """Write the images that have duplicates (``Duplicates.duplicated``: image_id, phash, dup_group, group_size)
    atomically, usually ``artifacts/<exp>/duplicates.csv``; returns the path."""
    return write_csv(path, duplicates.duplicated, index=False)


def fold_groups(
    df: pd.DataFrame, duplicates: Duplicates | None, group_col: str | None = None
) -> tuple[pd.DataFrame, str | None]:
    """The table and the group column for ``kitlib.folds.make_folds``: the duplicate groups united with the user's
    ``group_col`` (connected components of both relations, so a group of either kind stays in one fold).

    Args:
        df: the train table (``image_id``, and ``group_col`` when given).
        duplicates: ``find_duplicates`` of the same table, or None (off).
        group_col: the user's group column, or None.
    Returns:
        ``(table, column)``: without duplicates, ``df`` and ``group_col`` unchanged (the folds are those of a plain
        run); else a copy with ``FOLD_GROUP_COL`` (each row's united group, named by its smallest image_id) and that
        name.
    Raises:
        ValueError: ``group_col`` not in the table or missing in rows (ids named); ``duplicates`` of other images.
    """
    if duplicates is None or duplicates.n_groups == 0:
        return df, group_col
    ids = df["image_id"].astype(str).to_numpy()
    dup = duplicates.table.set_index("image_id")["dup_group"].reindex(ids)
    if dup.isna().any():
        raise ValueError(f"duplicates were found for another table: no hash for {listing(ids[dup.isna().to_numpy()])}")
    row_of = {image_id: k for k, image_id in enumerate(ids)}
    i = np.arange(len(ids))
    j = np.array([row_of[g] for g in dup.to_numpy()], dtype=np.int64)  # each row to its group's first image
    if group_col is not None:
        if group_col not in df.columns:
            raise ValueError(f"group column {group_col!r} not in the table; columns: {list(df.columns)}")
        if df[group_col].isna().any():
            raise ValueError(f"group column {group_col!r} missing for {listing(ids[df[group_col].isna().to_numpy()])}")
        first = df.groupby(df[group_col].astype(str).to_numpy())["image_id"].transform("first").astype(str)
        i, j = np.concatenate([i, np.arange(len(ids))]), np.concatenate([j, [row_of[g] for g in first]])
    out = df.copy()
    out[FOLD_GROUP_COL] = _group_keys(ids, _components(len(ids), i, j))
    log.info("fold groups: %d images in %d groups (duplicates%s)", len(ids), out[FOLD_GROUP_COL].nunique(),
             f" + {group_col!r}" if group_col else "")  # fmt: skip
    return out, FOLD_GROUP_COL


def split_groups(folds: pd.DataFrame, duplicates: Duplicates) -> list[str]:
    """The duplicate groups whose images are in more than one fold (none after ``fold_groups`` + ``make_folds``).

    Args:
        folds: ``image_id`` and ``fold``.
    Returns:
        Sorted group names.
    """
    fold = folds.set_index(folds["image_id"].astype(str))["fold"]
    dup = duplicates.duplicated
    spread = dup.assign(fold=fold.reindex(dup["image_id"]).to_numpy()).groupby("dup_group")["fold"].nunique()
    return sorted(spread.index[spread > 1].astype(str))
