"""Pixel-level helpers shared by post-processing (``kitlib.postprocess``) and its searches (``kitlib.search``,
``kitlib.gate``): the exact threshold comparison, input checks, connected components and histograms, the one-sweep
component tree of the threshold x min_area search (``component_sweep``), and reading large arrays a chunk of rows at a
time with their memmap pages released. Internal: not part of the public API.

Threshold semantics: see ``kitlib.postprocess``'s module docstring (``cutoff``).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from kitlib._private import to_numpy

U8_VALUES = np.arange(256, dtype=np.float64) / 255.0  # exactly what np.float64(v) / 255 gives for each uint8 v


def check_probs_dtype(probs: np.ndarray, name: str = "probs") -> None:
    if probs.dtype != np.uint8 and probs.dtype.kind != "f":
        raise TypeError(f"{name} must be float in [0, 1] or uint8 0..255 (p = v / 255), got dtype {probs.dtype}")


def as_float_probs(probs: Any, dtype: Any = np.float32) -> np.ndarray:
    """Probabilities as floats of ``dtype``: uint8 v -> v / 255 (the kit's prediction files; float64 gives exactly
    ``U8_VALUES[v]``, what the threshold comparisons use), float arrays cast as they are.

    Raises:
        TypeError: neither uint8 nor float.
    """
    p = np.asarray(probs)
    check_probs_dtype(p)
    if p.dtype == np.uint8:
        return p.astype(dtype) / np.asarray(255.0, dtype=dtype)
    return p.astype(dtype)


def cutoff(threshold: float, dtype: np.dtype) -> Any:
    """The value c of ``dtype`` such that ``p > c`` (compared in ``dtype``) is exactly ``float64(p) > threshold``.

    uint8 (p = v / 255): an int in -1..255, the largest v with v / 255 <= threshold (-1: every pixel is above it).
    Float dtypes: the largest value of the dtype not above the threshold.
    """
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    if dtype == np.uint8:
        return int(np.count_nonzero(U8_VALUES <= t)) - 1
    kind = np.dtype(dtype).type
    with np.errstate(over="ignore"):
        c = kind(t)
    if float(c) > t:
        c = np.nextafter(c, kind(-np.inf))
    return c


def binarize_2d(p: np.ndarray, cut: Any) -> np.ndarray:
    """(H, W) probs -> (H, W) uint8 {0, 1}, foreground where p > cut (``cut`` from ``cutoff`` for p's dtype)."""
    if p.dtype == np.uint8:
        return cv2.threshold(p, cut, 1, cv2.THRESH_BINARY)[1]  # 8-bit: v > floor(cut); cut < 0 keeps every pixel
    return np.greater(p, cut).view(np.uint8)


def check_float_range(chunk: np.ndarray, offset: int, name: str) -> None:
    """Float probs must lie in [0, 1] (NaN fails): ValueError naming the first offending [image, class]."""
    if chunk.dtype == np.uint8 or chunk.size == 0:
        return
    lo, hi = chunk.min(), chunk.max()
    if lo >= 0 and hi <= 1:
        return
    bad = ~((chunk >= 0) & (chunk <= 1))
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name} must be probabilities in [0, 1] (apply the sigmoid first); found {chunk[where].item()!r} at "
        f"[image, class, y, x] = {[where[0] + offset, *where[1:]]}"
    )


def binary_masks(chunk: np.ndarray, offset: int, name: str = "masks") -> np.ndarray:
    """Masks chunk -> uint8 {0, 1} (a view when already 1-byte), after checking every value is 0 or 1."""
    kind = chunk.dtype.kind
    if kind == "b":
        return chunk.view(np.uint8)
    if kind not in "iuf":
        raise TypeError(f"{name} must be bool, integer or float {{0, 1}} masks, got dtype {chunk.dtype}")
    if chunk.size and (chunk.max() > 1 or chunk.min() < 0 or (kind == "f" and np.any((chunk != 0) & (chunk != 1)))):
        where = tuple(int(i) for i in np.argwhere((chunk != 0) & (chunk != 1))[0])
        raise ValueError(
            f"{name} must be binary {{0, 1}}; found {chunk[where].item()!r} at [image, class, y, x] = "
            f"{[where[0] + offset, *where[1:]]}"
        )
    if chunk.dtype == np.uint8:
        return chunk
    return chunk.astype(np.uint8)


def check_pair(probs: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    p, m = to_numpy(probs), to_numpy(masks)
    check_probs_dtype(p)
    if p.ndim != 4 or p.size == 0:
        raise ValueError(f"probs must be a non-empty (N, C, H, W) array, got shape {p.shape}")
    if m.shape != p.shape:
        raise ValueError(f"probs shape {p.shape} != masks shape {m.shape}")
    return p, m


def madvise() -> Any:
    """libc ``madvise`` on Linux, else None."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


MADVISE = madvise()


def release_pages(x: np.ndarray, sl: slice) -> None:
    """Unmap the pages of ``x[sl]`` from this process once they have been copied out (memmaps in a shared mode only).

    Reading a memmap maps its pages into the process, so a full pass over a 4 GB file would end with a 4 GB resident
    set even though only a chunk is used at a time. ``madvise(MADV_DONTNEED)`` on a shared file mapping drops those
    pages from the process (the OS page cache keeps them, with any writes); it is skipped for private ("c") mappings,
    whose pages could hold unsaved changes, and outside Linux.
    """
    if MADVISE is None or not isinstance(x, np.memmap) or x.mode not in ("r", "r+", "w+"):
        return
    part = x[sl]
    if not part.flags.c_contiguous or part.nbytes == 0:
        return
    start = part.ctypes.data
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the chunk only
    hi = (start + part.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        MADVISE(lo, hi - lo, mmap.MADV_DONTNEED)


def read(x: np.ndarray, sl: slice) -> np.ndarray:
    """``x[sl]`` as a C-contiguous in-memory array; memmap chunks are copied and their pages released."""
    if isinstance(x, np.memmap):
        out = np.array(x[sl], order="C")
        release_pages(x, sl)
        return out
    return np.ascontiguousarray(x[sl])


def chunk_iter(arrays: Sequence[np.ndarray], rows: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    n = arrays[0].shape[0]
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        yield sl, [read(a, sl) for a in arrays]


def n_workers(num_workers: int | None) -> int:
    if num_workers is None:
        try:
            return max(1, min(8, len(os.sched_getaffinity(0))))
        except AttributeError:  # not Linux
            return max(1, min(8, os.cpu_count() or 1))
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 or 1: no thread pool), got {num_workers}")
    return max(1, int(num_workers))


def map_pool(fn, pool: ThreadPoolExecutor | None, *iterables) -> list:
    return list(pool.map(fn, *iterables)) if pool is not None else list(map(fn, *iterables))


def per_class(values: Any, c: int, name: str, kind: type) -> list:
    """A scalar or a length-C sequence -> a list of C values of ``kind``."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(c, arr)
    if arr.shape != (c,):
        raise ValueError(f"{name} must be a scalar or have one value per class ({c}), got shape {arr.shape}")
    return [kind(v) for v in arr.tolist()]


def check_thresholds(values: Any, name: str) -> list[float]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or np.isnan(arr).any():
        raise ValueError(f"{name} must be a non-empty sequence of numbers without NaN, got {values!r}")
    return arr.tolist()


def check_areas(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of integers")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (pixel counts), got {values!r}")
    return arr.astype(np.int64)


def pair_dice(inter: np.ndarray, pred: np.ndarray, true: np.ndarray, empty_score: float | None) -> np.ndarray:
    """Per-pair Dice ``2.0 * inter / (pred + true)`` (float64); both empty: ``empty_score``, NaN when it is None."""
    total = pred + true
    out = np.full(np.shape(total), np.nan if empty_score is None else float(empty_score), dtype=np.float64)
    np.divide(2.0 * inter, total, out=out, where=total > 0)
    return out


def mean_over_images(rows: np.ndarray) -> np.ndarray:
    """(..., N) per-image Dice -> (...) means, NaN skipped: ``np.mean`` of each contiguous row, as the reference."""
    flat = rows.reshape(-1, rows.shape[-1])
    out = np.empty(flat.shape[0], dtype=np.float64)
    for j, row in enumerate(flat):
        kept = np.ascontiguousarray(row[~np.isnan(row)])
        out[j] = kept.mean() if kept.size else np.nan
    return out.reshape(rows.shape[:-1])


def components(b: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of an (H, W) uint8 mask: (number of labels with background 0, labels).

    Labels are uint16 when the image cannot hold more than 65535 components (ceil(H/2) * ceil(W/2): two pixels of one
    2 x 2 block always touch), which makes the label histograms ``cv2.calcHist`` calls; int32 otherwise.
    """
    h, w = b.shape
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 65535 else cv2.CV_32S
    return cv2.connectedComponents(b, connectivity=8, ltype=ltype)


def hist256(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """int64 counts of each value 0..255 of a uint8 array (cv2.calcHist, exact below 2**24 pixels), on ``mask`` != 0."""
    img2 = img if img.ndim == 2 else img.reshape(1, -1)
    if img.size < (1 << 24):
        m2 = None if mask is None else (mask if mask.ndim == 2 else mask.reshape(1, -1))
        return cv2.calcHist([img2], [0], m2, [256], [0, 256]).reshape(-1).astype(np.int64)
    values = img.reshape(-1) if mask is None else img.reshape(-1)[mask.reshape(-1) != 0]
    return np.bincount(values, minlength=256).astype(np.int64)


def label_counts(values: np.ndarray, n: int) -> np.ndarray:
    """int64 counts of each label 0..n-1 in ``values`` (uint16 via cv2.calcHist, exact below 2**24 pixels)."""
    if values.dtype == np.uint16 and values.size < (1 << 24):
        img = values if values.ndim == 2 else values.reshape(1, -1)
        return cv2.calcHist([img], [0], None, [n], [0, n]).reshape(-1).astype(np.int64)
    return np.bincount(values.reshape(-1), minlength=n).astype(np.int64)


def kept_counts(areas: np.ndarray, inter: np.ndarray, min_areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept area and intersection (A,) int64 for every min_area (ascending) from one level's components' areas and
    truth pixels (int64, one entry per component): the sums over the components with area > min_area."""
    order = np.argsort(areas, kind="stable")
    sorted_areas = areas[order]
    dropped = np.searchsorted(sorted_areas, min_areas, side="right")  # components with area <= min_area
    cum_area = np.concatenate(([0], np.cumsum(sorted_areas)))
    cum_inter = np.concatenate(([0], np.cumsum(inter[order])))
    return cum_area[-1] - cum_area[dropped], cum_inter[-1] - cum_inter[dropped]


def level_map(p: np.ndarray, levels: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    """(..., H, W) probs -> the level q of each pixel, the number of cuts below it, so that ``q > j`` is exactly
    ``p > levels[j]`` (``levels``: distinct cuts from ``cutoff``, ascending; ``lut``: their table for uint8 probs)."""
    if lut is not None:  # uint8: a 256-entry table
        if lut.dtype != np.uint8:
            return lut.take(p)
        flat = np.ascontiguousarray(p).reshape(-1, p.shape[-1])
        return cv2.LUT(flat, lut).reshape(p.shape)
    q = np.searchsorted(levels, p, side="left")  # number of levels < p, compared in p's dtype
    return q.astype(np.uint8 if levels.size < 255 else np.int32)


def _sweep_one(q: np.ndarray, truth: np.ndarray, n_levels: int, min_areas: np.ndarray):
    """``component_sweep`` of one (H, W) level map and its truth: kept area and intersection (L, A) int64."""
    kept_area = np.zeros((n_levels, min_areas.size), dtype=np.int64)
    kept_inter = np.zeros((n_levels, min_areas.size), dtype=np.int64)
    x, y, w, h = cv2.boundingRect(cv2.compare(q, 0, cv2.CMP_GT))
    if w == 0:  # nothing above the lowest cut
        return kept_area, kept_inter
    q = np.ascontiguousarray(q[y : y + h, x : x + w])
    qf = q.reshape(-1)
    tf = np.ascontiguousarray(truth[y : y + h, x : x + w]).reshape(-1) if cv2.countNonZero(truth) else None
    above = np.flatnonzero(qf > 0)  # on a bool array: ~5x faster than on the uint8 levels
    q_above = qf.take(above)
    order = above.take(np.argsort(q_above, kind="stable"))  # pixels above the lowest cut by level, ascending
    starts = np.concatenate(([0], np.cumsum(np.bincount(q_above, minlength=n_levels + 1))))
    area = inter = np.zeros(0, dtype=np.int64)  # per component of the level above, background excluded
    rep = np.zeros(0, dtype=np.intp)  # one pixel of each of those components
    for j in range(int(q_above.max()) - 1, -1, -1):  # the pixels of level j are those with q > j
        new = order[starts[j + 1] : starts[j + 2]]  # q == j + 1: above cut j, not above cut j + 1
        if new.size:
            n, labels = components(cv2.compare(q, j, cv2.CMP_GT))
            lf = labels.reshape(-1)
            at_new, parent = lf.take(new), lf.take(rep)
            # sums of integer-valued float64 weights: exact below 2**53 pixels
            area = np.bincount(at_new, minlength=n)[1:] + np.bincount(parent, area, n)[1:].astype(np.int64)
            if tf is None:  # an empty truth: no intersection
                inter = np.zeros(n - 1, dtype=np.int64)
            else:
                on_truth = np.bincount(at_new[tf.take(new) != 0], minlength=n)[1:]
                inter = on_truth + np.bincount(parent, inter, n)[1:].astype(np.int64)
            next_rep = np.empty(n, dtype=np.intp)
            next_rep[at_new] = new
            next_rep[parent] = rep
            rep = next_rep[1:]
        kept_area[j], kept_inter[j] = kept_counts(area, inter, min_areas)
    return kept_area, kept_inter


def component_sweep(q: np.ndarray, truth: np.ndarray, n_levels: int, min_areas: np.ndarray):
    """Kept area and intersection of every (class, level, min_area) of one image, in one sweep over the levels.

    Args:
        q: (C, H, W) levels from ``level_map``: pixel > cut j of the sorted distinct cuts exactly when q > j.
        truth: (C, H, W) uint8 {0, 1}.
        n_levels: the number of distinct cuts L.
        min_areas: (A,) int64, ascending; a component is kept when its area is > min_area.
    Returns:
        (kept_area, kept_inter), each (C, L, A) int64: pixels of the 8-connected components of ``q > j`` with more than
        ``min_areas[a]`` pixels, and those of them on the truth.

    Components at a lower threshold are unions of those at a higher one plus the pixels between the two cuts, so the
    levels are swept from the highest down: each level is labelled once (``components``), and a component's area and
    truth pixels are the sums over the components of the level above that it contains (found through one pixel of
    each) plus its own new pixels, counted on those pixels only, never over the whole label image. Pixels are ordered
    by level once (a stable argsort of the levels, a radix sort for uint8); a level without new pixels keeps the
    components of the level above; each class is cropped to its pixels above the lowest cut. Own code: the component
    tree of the kit's post-processing search (union-find over pixels sorted by level) on OpenCV's labelling.
    """
    out = [_sweep_one(q[k], truth[k], n_levels, min_areas) for k in range(q.shape[0])]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
