"""Post-processing of segmentation probs: thresholds, small-component removal, the triplet scheme, image-level gating,
and the out-of-fold (OOF) searches that choose them.

Stages follow the kit's names: ``probs`` (N, C, H, W) -> ``masks`` uint8 {0, 1}. Probs are float (float16, float32,
float64) in [0, 1], or uint8 0..255 meaning p = v / 255 (how the kit stores OOF probs); either may be an ``np.memmap``.

Threshold semantics (every function here): a pixel is foreground when its probability is *strictly greater* than the
threshold, compared exactly, as ``probs.astype(np.float64) > threshold`` would, where uint8 values are first turned into
``np.float64(v) / 255``. For uint8 that is ``v > k``, k the largest value with ``k / 255 <= threshold`` (0.5 -> v > 127;
at 0.2 = 51 / 255 the value 51 is background, since 0.2 > 0.2 is false; at 0.6 the value 153 is background too, as
``153 / 255 == 0.6`` in float64). For float probs the comparison is made in the probs' own dtype against the largest
value of that dtype not above the threshold, which is the same test without a float64 copy. NumPy 2 compares
``probs_f32 > 0.1`` in float32 (the threshold rounded to the nearest float32), which differs from this for pixels equal
to ``np.float32(0.1)``; the Kaggle kernels' ``cv2.threshold`` does the same float32 rounding.

- ``search_thresholds``: mean Dice per class for every (threshold, min_area), as the Kaggle-kernel grid search over
  ``post_process(probability, threshold, min_size)`` (Severstal UNet starter kernel, reused in the Understanding Clouds
  kernels: ``cv2.threshold``, ``cv2.connectedComponents`` (8-connectivity), keep components with more than ``min_size``
  pixels). Same numbers as that naive loop (``tests/postprocess_reference.py``), much faster: per image, class and
  threshold one ``cv2.connectedComponents`` and two label histograms (component areas, truth pixels per component)
  give the kept area and intersection for every min_area at once; thresholds above an image's maximum prob cost
  nothing; images are processed by a thread pool (OpenCV releases the GIL) a chunk at a time, so a 4 GB memmap is
  streamed, not loaded (``benchmarks/bench_postprocess.py``).
- ``triplet_masks`` / ``search_triplet``: the triplet scheme of the SIIM-ACR Pneumothorax 1st place
  (sneddy/pneumothorax-segmentation, README "Triplet scheme of inference"; the issue also names the Understanding Clouds
  2nd place): a class is kept on an image only if at least ``min_contour_area`` pixels exceed
  ``top_score_threshold``; kept classes are binarised at ``bottom_score_threshold``. The search needs no components:
  per image and class, counts of pixels (all, and on the truth) above each threshold give every triplet's Dice.
- ``top_k_class_probs`` / ``scale_top_k`` / ``combine_class_probs`` / ``force_one_class``: image-level class probs of
  the Understanding Clouds 1st place (pudae/kaggle-understanding-clouds ``tools/evaluate.py``: the mean of the 17,500
  largest pixel probs at 350 x 525, averaged with the classification heads; the most probable class of an image always
  passes the gate).
- ``precision_recall_table`` / ``classifier_thresholds`` / ``gate_masks``: gating masks with per-class classifier
  thresholds read off the precision-recall curve of the OOF class probs (``class_probs > threshold`` keeps the class,
  as pudae's ``cls_score > cls_thres``).
- ``best_per_class`` / ``PostProcess`` / ``apply_postprocess``: the chosen settings, saved as
  ``artifacts/<exp>/postprocess.json`` and applied to one image at inference.

Dice of one (image, class) pair is ``2.0 * inter / (pred_area + true_area)`` in float64, ``empty_score`` when both masks
are empty (1.0 on Kaggle; None skips the pair, the Dacon rule); a class's score is ``np.mean`` of its pairs in image
order, exactly as the naive loop computes it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import mmap
import os
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from kitlib._private import progress, to_numpy
from kitlib.config import atomic_write_text, read_json

__all__ = [
    "binarize",
    "remove_small_components",
    "apply_threshold_min_area",
    "triplet_masks",
    "search_thresholds",
    "search_triplet",
    "top_k_class_probs",
    "scale_top_k",
    "combine_class_probs",
    "force_one_class",
    "class_presence",
    "precision_recall_table",
    "classifier_thresholds",
    "gate_masks",
    "best_per_class",
    "PostProcess",
    "apply_postprocess",
]

log = logging.getLogger(__name__)

# Bytes of probs read per chunk: 16 MB, about 21 Clouds images of 4 x 350 x 525 uint8 (plus as much for the masks).
_CHUNK_BYTES = 16 << 20
_U8_VALUES = np.arange(256, dtype=np.float64) / 255.0  # exactly what np.float64(v) / 255 gives for each uint8 v


# ------------------------------------------------------------------------------------------------------------ inputs


def _check_probs_dtype(probs: np.ndarray, name: str = "probs") -> None:
    if probs.dtype != np.uint8 and probs.dtype.kind != "f":
        raise TypeError(f"{name} must be float in [0, 1] or uint8 0..255 (p = v / 255), got dtype {probs.dtype}")


def _cutoff(threshold: float, dtype: np.dtype) -> Any:
    """The value c of ``dtype`` such that ``p > c`` (compared in ``dtype``) is exactly ``float64(p) > threshold``.

    uint8 (p = v / 255): an int in -1..255, the largest v with v / 255 <= threshold (-1: every pixel is above it).
    Float dtypes: the largest value of the dtype not above the threshold.
    """
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    if dtype == np.uint8:
        return int(np.count_nonzero(_U8_VALUES <= t)) - 1
    kind = np.dtype(dtype).type
    with np.errstate(over="ignore"):
        c = kind(t)
    if float(c) > t:
        c = np.nextafter(c, kind(-np.inf))
    return c


def _binarize_2d(p: np.ndarray, cut: Any) -> np.ndarray:
    """(H, W) probs -> (H, W) uint8 {0, 1}, foreground where p > cut (``cut`` from ``_cutoff`` for p's dtype)."""
    if p.dtype == np.uint8:
        return cv2.threshold(p, cut, 1, cv2.THRESH_BINARY)[1]  # 8-bit: v > floor(cut); cut < 0 keeps every pixel
    return np.greater(p, cut).view(np.uint8)


def _check_float_range(chunk: np.ndarray, offset: int, name: str) -> None:
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


def _binary_masks(chunk: np.ndarray, offset: int, name: str = "masks") -> np.ndarray:
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


def _check_pair(probs: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    p, m = to_numpy(probs), to_numpy(masks)
    _check_probs_dtype(p)
    if p.ndim != 4 or p.size == 0:
        raise ValueError(f"probs must be a non-empty (N, C, H, W) array, got shape {p.shape}")
    if m.shape != p.shape:
        raise ValueError(f"probs shape {p.shape} != masks shape {m.shape}")
    return p, m


def _madvise() -> Any:
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


_MADVISE = _madvise()


def _release_pages(x: np.ndarray, sl: slice) -> None:
    """Unmap the pages of ``x[sl]`` from this process once they have been copied out (memmaps in a shared mode only).

    Reading a memmap maps its pages into the process, so a full pass over a 4 GB file would end with a 4 GB resident
    set even though only a chunk is used at a time. ``madvise(MADV_DONTNEED)`` on a shared file mapping drops those
    pages from the process (the OS page cache keeps them, with any writes); it is skipped for private ("c") mappings,
    whose pages could hold unsaved changes, and outside Linux.
    """
    if _MADVISE is None or not isinstance(x, np.memmap) or x.mode not in ("r", "r+", "w+"):
        return
    part = x[sl]
    if not part.flags.c_contiguous or part.nbytes == 0:
        return
    start = part.ctypes.data
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the chunk only
    hi = (start + part.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        _MADVISE(lo, hi - lo, mmap.MADV_DONTNEED)


def _chunk_rows(shape: tuple[int, ...], itemsize: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    per_image = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    return max(1, _CHUNK_BYTES // max(per_image, 1))


def _read(x: np.ndarray, sl: slice) -> np.ndarray:
    """``x[sl]`` as a C-contiguous in-memory array; memmap chunks are copied and their pages released."""
    if isinstance(x, np.memmap):
        out = np.array(x[sl], order="C")
        _release_pages(x, sl)
        return out
    return np.ascontiguousarray(x[sl])


def _iter_chunks(arrays: Sequence[np.ndarray], rows: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    n = arrays[0].shape[0]
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        yield sl, [_read(a, sl) for a in arrays]


def _workers(num_workers: int | None) -> int:
    if num_workers is None:
        try:
            return max(1, min(8, len(os.sched_getaffinity(0))))
        except AttributeError:  # not Linux
            return max(1, min(8, os.cpu_count() or 1))
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 or 1: no thread pool), got {num_workers}")
    return max(1, int(num_workers))


def _map(fn, pool: ThreadPoolExecutor | None, *iterables) -> list:
    return list(pool.map(fn, *iterables)) if pool is not None else list(map(fn, *iterables))


def _per_class(values: Any, c: int, name: str, kind: type) -> list:
    """A scalar or a length-C sequence -> a list of C values of ``kind``."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(c, arr)
    if arr.shape != (c,):
        raise ValueError(f"{name} must be a scalar or have one value per class ({c}), got shape {arr.shape}")
    return [kind(v) for v in arr.tolist()]


def _thresholds(values: Any, name: str) -> list[float]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or np.isnan(arr).any():
        raise ValueError(f"{name} must be a non-empty sequence of numbers without NaN, got {values!r}")
    return arr.tolist()


def _areas(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of integers")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (pixel counts), got {values!r}")
    return arr.astype(np.int64)


def _pair_dice(inter: np.ndarray, pred: np.ndarray, true: np.ndarray, empty_score: float | None) -> np.ndarray:
    """Per-pair Dice ``2.0 * inter / (pred + true)`` (float64); both empty: ``empty_score``, NaN when it is None."""
    total = pred + true
    out = np.full(np.shape(total), np.nan if empty_score is None else float(empty_score), dtype=np.float64)
    np.divide(2.0 * inter, total, out=out, where=total > 0)
    return out


def _mean_over_images(rows: np.ndarray) -> np.ndarray:
    """(..., N) per-image Dice -> (...) means, NaN skipped: ``np.mean`` of each contiguous row, as the reference."""
    flat = rows.reshape(-1, rows.shape[-1])
    out = np.empty(flat.shape[0], dtype=np.float64)
    for j, row in enumerate(flat):
        kept = np.ascontiguousarray(row[~np.isnan(row)])
        out[j] = kept.mean() if kept.size else np.nan
    return out.reshape(rows.shape[:-1])


# ------------------------------------------------------------------------------------------------------ apply masks


def binarize(probs: Any, threshold: float) -> np.ndarray:
    """``probs > threshold`` with the module's exact semantics (uint8 v means v / 255; see the module docstring).

    Args:
        probs: any shape, float in [0, 1] or uint8 0..255.
        threshold: a float; values outside [0, 1] are allowed (< 0 keeps every pixel, >= 1 none).
    Returns:
        uint8 {0, 1}, the shape of ``probs``.
    Raises:
        TypeError: a dtype other than uint8 or float. ValueError: a NaN threshold.
    """
    p = to_numpy(probs)
    _check_probs_dtype(p)
    cut = _cutoff(threshold, p.dtype)
    if p.dtype == np.uint8:
        return (p > np.int16(cut)).view(np.uint8)
    return np.greater(p, cut).view(np.uint8)


def _components(b: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of an (H, W) uint8 mask: (number of labels with background 0, labels).

    Labels are uint16 when the image cannot hold more than 65535 components (ceil(H/2) * ceil(W/2): two pixels of one
    2 x 2 block always touch), which makes the label histograms ``cv2.calcHist`` calls; int32 otherwise.
    """
    h, w = b.shape
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 65535 else cv2.CV_32S
    return cv2.connectedComponents(b, connectivity=8, ltype=ltype)


def _hist256(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """int64 counts of each value 0..255 of a uint8 array (cv2.calcHist, exact below 2**24 pixels), on ``mask`` != 0."""
    img2 = img if img.ndim == 2 else img.reshape(1, -1)
    if img.size < (1 << 24):
        m2 = None if mask is None else (mask if mask.ndim == 2 else mask.reshape(1, -1))
        return cv2.calcHist([img2], [0], m2, [256], [0, 256]).reshape(-1).astype(np.int64)
    values = img.reshape(-1) if mask is None else img.reshape(-1)[mask.reshape(-1) != 0]
    return np.bincount(values, minlength=256).astype(np.int64)


def _label_counts(values: np.ndarray, n: int) -> np.ndarray:
    """int64 counts of each label 0..n-1 in ``values`` (uint16 via cv2.calcHist, exact below 2**24 pixels)."""
    if values.dtype == np.uint16 and values.size < (1 << 24):
        img = values if values.ndim == 2 else values.reshape(1, -1)
        return cv2.calcHist([img], [0], None, [n], [0, n]).reshape(-1).astype(np.int64)
    return np.bincount(values.reshape(-1), minlength=n).astype(np.int64)


def remove_small_components(mask: Any, min_area: int) -> np.ndarray:
    """Drop the 8-connected components of a binary mask that have ``min_area`` pixels or fewer.

    Args:
        mask: (H, W) bool or integer, nonzero = foreground.
        min_area: a component is kept when its pixel count is > ``min_area`` (the kernels' ``p.sum() > min_size``);
            0 or less keeps everything.
    Returns:
        (H, W) uint8 {0, 1}.
    Raises:
        ValueError: ``mask`` is not 2-D.
    Source:
        Kaggle-kernel ``post_process(probability, threshold, min_size)`` (Severstal UNet starter kernel, reused in
        Understanding Clouds): ``cv2.connectedComponents`` (8-connectivity by default), keep ``p.sum() > min_size``.
    """
    m = to_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    b = (m != 0).view(np.uint8) if m.dtype != np.uint8 else np.minimum(m, 1)
    if min_area <= 0:
        return np.ascontiguousarray(b)
    n, labels = _components(np.ascontiguousarray(b))
    keep = (_label_counts(labels, n) > min_area).astype(np.uint8)
    keep[0] = 0
    return keep[labels]


def apply_threshold_min_area(probs: Any, thresholds: Any, min_areas: Any = 0) -> np.ndarray:
    """Binarise each class of one image at its threshold, then drop its components of ``min_area`` pixels or fewer.

    Args:
        probs: (C, H, W) float in [0, 1] or uint8 0..255, one image.
        thresholds: (C,) or a scalar; foreground where prob > threshold (module docstring).
        min_areas: (C,) or a scalar; components with <= min_area pixels (8-connectivity) are removed.
    Returns:
        (C, H, W) uint8 {0, 1}: the masks that ``search_thresholds`` scored for these settings.
    Raises:
        ValueError: ``probs`` not 3-D; ``thresholds`` / ``min_areas`` of the wrong length.
        TypeError: a probs dtype other than uint8 or float.
    """
    p = to_numpy(probs)
    _check_probs_dtype(p)
    if p.ndim != 3:
        raise ValueError(f"probs must be one image (C, H, W), got shape {p.shape}")
    c = p.shape[0]
    ts, areas = _per_class(thresholds, c, "thresholds", float), _per_class(min_areas, c, "min_areas", int)
    out = np.empty(p.shape, dtype=np.uint8)
    for k in range(c):
        b = _binarize_2d(np.ascontiguousarray(p[k]), _cutoff(ts[k], p.dtype))
        out[k] = remove_small_components(b, areas[k])
    return out


def triplet_masks(
    probs: Any, top_score_threshold: Any, min_contour_area: Any, bottom_score_threshold: Any
) -> np.ndarray:
    """The triplet scheme on one image: keep a class only if enough pixels are confident, then binarise it lower.

    For each class: if fewer than ``min_contour_area`` pixels have prob > ``top_score_threshold`` the mask is empty;
    otherwise it is prob > ``bottom_score_threshold``.

    Args:
        probs: (C, H, W) float in [0, 1] or uint8 0..255, one image.
        top_score_threshold: (C,) or a scalar.
        min_contour_area: (C,) or a scalar, a pixel count (0 keeps every class).
        bottom_score_threshold: (C,) or a scalar.
    Returns:
        (C, H, W) uint8 {0, 1}.
    Raises:
        ValueError: ``probs`` not 3-D; parameters of the wrong length.
    Source:
        SIIM-ACR Pneumothorax 1st place, sneddy/pneumothorax-segmentation README, "Triplet scheme of inference":
        ``mask[classification_mask.sum() < min_contour_area] = 0; mask = mask > bot_score_threshold``.
    """
    p = to_numpy(probs)
    _check_probs_dtype(p)
    if p.ndim != 3:
        raise ValueError(f"probs must be one image (C, H, W), got shape {p.shape}")
    c = p.shape[0]
    tops = _per_class(top_score_threshold, c, "top_score_threshold", float)
    mcas = _per_class(min_contour_area, c, "min_contour_area", int)
    bottoms = _per_class(bottom_score_threshold, c, "bottom_score_threshold", float)
    out = np.zeros(p.shape, dtype=np.uint8)
    for k in range(c):
        pk = np.ascontiguousarray(p[k])
        if np.count_nonzero(_binarize_2d(pk, _cutoff(tops[k], p.dtype))) >= mcas[k]:
            out[k] = _binarize_2d(pk, _cutoff(bottoms[k], p.dtype))
    return out


# ------------------------------------------------------------------------------------------------------ searches


def _kept_counts(n: int, labels: np.ndarray, truth_at: np.ndarray | None, min_areas: np.ndarray):
    """Kept predicted area and intersection for every min_area (sorted ascending) from one labelling."""
    areas = _label_counts(labels, n)[1:]
    order = np.argsort(areas, kind="stable")
    sorted_areas = areas[order]
    dropped = np.searchsorted(sorted_areas, min_areas, side="right")  # components with area <= min_area
    cum_area = np.concatenate(([0], np.cumsum(sorted_areas)))
    kept_area = cum_area[-1] - cum_area[dropped]
    if truth_at is None:
        return kept_area, np.zeros_like(kept_area)
    inter = _label_counts(labels.reshape(-1).take(truth_at), n)[1:]
    cum_inter = np.concatenate(([0], np.cumsum(inter[order])))
    return kept_area, cum_inter[-1] - cum_inter[dropped]


def _threshold_image(p: np.ndarray, t: np.ndarray, cuts: list, min_areas: np.ndarray):
    """One image (C, H, W): kept area and intersection (C, T, A) int64 and the true areas (C,)."""
    c, n_t, n_a = p.shape[0], len(cuts), min_areas.size
    kept_area = np.zeros((c, n_t, n_a), dtype=np.int64)
    kept_inter = np.zeros((c, n_t, n_a), dtype=np.int64)
    true_area = np.zeros(c, dtype=np.int64)
    for k in range(c):
        pk, tk = p[k], t[k]
        truth_at = np.flatnonzero(tk)
        true_area[k] = truth_at.size
        top = pk.max()
        for j, cut in enumerate(cuts):
            if not top > cut:  # nothing above this threshold: empty prediction for every min_area
                continue
            n, labels = _components(_binarize_2d(pk, cut))
            kept_area[k, j], kept_inter[k, j] = _kept_counts(n, labels, truth_at if truth_at.size else None, min_areas)
    return kept_area, kept_inter, true_area


def search_thresholds(
    probs: Any,
    masks: Any,
    thresholds: Sequence[float],
    min_areas: Sequence[int],
    empty_score: float | None = 1.0,
    num_workers: int | None = None,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Mean Dice of each class for every (threshold, min_area): the OOF grid search of the Kaggle kernels, fast.

    Each pair (image, class) is binarised at prob > threshold, its 8-connected components with <= min_area pixels are
    removed, and its Dice with the truth is taken; a class's score is the mean over images. The numbers are exactly
    those of the naive loop (``tests/postprocess_reference.py``), with the same float formula and summation.

    Memory: probs and masks are read ``chunk_size`` images at a time (memmap pages are released after each chunk), and
    the per-image Dice is kept, 8 bytes x N x C x thresholds x min_areas (18 MB for Clouds' 5546 x 4 on a 10 x 10 grid).

    Args:
        probs: (N, C, H, W) float in [0, 1] or uint8 0..255 (p = v / 255); numpy, ``np.memmap`` or torch tensor.
        masks: (N, C, H, W) {0, 1} truth (uint8, bool, integer or float), same shape; may be a memmap.
        thresholds: pixel thresholds; foreground where prob > threshold (module docstring for the exact comparison).
        min_areas: integer pixel counts; a component is kept when its area is > min_area.
        empty_score: Dice of a pair whose prediction and truth are both empty: 1.0 on Kaggle (Clouds, Severstal);
            None skips such pairs (Dacon), and a class with every pair skipped scores NaN.
        num_workers: threads over images; None: the usable CPUs (at most 8); 0 or 1: no thread pool.
        chunk_size: images read per chunk; None for about 16 MB of probs.
    Returns:
        DataFrame with columns ``class_index`` (int), ``threshold`` (float), ``min_area`` (int), ``dice`` (float64),
        one row per class x threshold x min_area, in that nesting order and in the order given.
    Raises:
        ValueError: shapes differ or are not 4-D; float probs outside [0, 1] or masks outside {0, 1} (the [image, class,
            y, x] index is named); empty or NaN grids; ``chunk_size`` < 1 or ``num_workers`` < 0.
        TypeError: a probs dtype other than uint8 or float; non-integer min_areas.
    Source:
        Kaggle-kernel ``post_process(probability, threshold, min_size)`` and its grid search over
        ``t in range(0, 100, 5)`` x ``ms in [0, 100, 1200, 5000, 10000]`` (Understanding Clouds kernels).
    """
    p, m = _check_pair(probs, masks)
    ts = _thresholds(thresholds, "thresholds")
    areas = _areas(min_areas, "min_areas")
    sorted_areas, where = np.unique(areas, return_inverse=True)
    cuts = [_cutoff(t, p.dtype) for t in ts]
    n, c = p.shape[:2]
    dice = np.empty((c, len(ts), sorted_areas.size, n), dtype=np.float64)
    rows = _chunk_rows(p.shape, p.dtype.itemsize, chunk_size)
    workers = _workers(num_workers)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with progress(total=n, desc="threshold search", unit="img", disable=n < 200) as bar:
            for sl, (pc, mc) in _iter_chunks([p, m], rows):
                _check_float_range(pc, sl.start, "probs")
                mc = _binary_masks(mc, sl.start)
                results = _map(partial(_threshold_image, cuts=cuts, min_areas=sorted_areas), pool, pc, mc)
                kept_area = np.stack([r[0] for r in results])  # (n, C, T, A)
                kept_inter = np.stack([r[1] for r in results])
                true_area = np.stack([r[2] for r in results])[:, :, None, None]
                dice[..., sl] = _pair_dice(kept_inter, kept_area, true_area, empty_score).transpose(1, 2, 3, 0)
                bar.update(len(pc))
    finally:
        if pool is not None:
            pool.shutdown()
    means = _mean_over_images(dice[:, :, where])  # back to the order of min_areas as given
    ci, ti, ai = np.meshgrid(np.arange(c), np.arange(len(ts)), np.arange(areas.size), indexing="ij")
    return pd.DataFrame(
        {
            "class_index": ci.reshape(-1),
            "threshold": np.asarray(ts, dtype=np.float64)[ti.reshape(-1)],
            "min_area": areas[ai.reshape(-1)],
            "dice": means.reshape(-1),
        }
    )


def _counts_above(p: np.ndarray, t: np.ndarray, cuts: list) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) probs and truth -> pixels above each cut (C, K), and truth pixels above each cut (C, K)."""
    c = p.shape[0]
    above = np.zeros((c, len(cuts)), dtype=np.int64)
    above_true = np.zeros((c, len(cuts)), dtype=np.int64)
    for k in range(c):
        pk, tk = p[k], t[k]
        if p.dtype == np.uint8:  # 256-bin histograms; pixels > cut = total - pixels <= cut
            hist, hist_true = _hist256(pk), _hist256(pk, tk)
            at_most = np.concatenate(([0], np.cumsum(hist)))
            at_most_true = np.concatenate(([0], np.cumsum(hist_true)))
            idx = np.asarray(cuts, dtype=np.int64) + 1
            above[k] = at_most[-1] - at_most[idx]
            above_true[k] = at_most_true[-1] - at_most_true[idx]
        else:
            on_truth = pk.reshape(-1)[np.flatnonzero(tk)]
            for j, cut in enumerate(cuts):
                above[k, j] = np.count_nonzero(pk > cut)
                above_true[k, j] = np.count_nonzero(on_truth > cut)
    return above, above_true


def search_triplet(
    probs: Any,
    masks: Any,
    top_thresholds: Sequence[float],
    min_contour_areas: Sequence[int],
    bottom_thresholds: Sequence[float],
    empty_score: float | None = 1.0,
    num_workers: int | None = None,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Mean Dice of each class for every triplet (top_score_threshold, min_contour_area, bottom_score_threshold).

    The masks scored are those of ``triplet_masks``. Per image and class only pixel counts are needed (pixels above
    each threshold, on all pixels and on the truth: two 256-bin histograms for uint8), so every triplet of the grid is
    scored from them; probs and masks are streamed a chunk of images at a time, as in ``search_thresholds``. Every
    combination is scored, including bottom > top.

    Args:
        probs: (N, C, H, W) float in [0, 1] or uint8 0..255 (p = v / 255); numpy, memmap or torch tensor.
        masks: (N, C, H, W) {0, 1} truth, same shape.
        top_thresholds: values of ``top_score_threshold``.
        min_contour_areas: integer values of ``min_contour_area`` (a class is kept when at least this many pixels are
            above the top threshold).
        bottom_thresholds: values of ``bottom_score_threshold``.
        empty_score, num_workers, chunk_size: as ``search_thresholds``.
    Returns:
        DataFrame with columns ``class_index``, ``top_score_threshold``, ``min_contour_area``,
        ``bottom_score_threshold``, ``dice``; one row per class x top x area x bottom, in that nesting order.
    Raises:
        As ``search_thresholds``.
    Source:
        SIIM-ACR Pneumothorax 1st place (sneddy/pneumothorax-segmentation): triplets searched on validation, best
        (0.75, 2000, 0.3).
    """
    p, m = _check_pair(probs, masks)
    tops = _thresholds(top_thresholds, "top_thresholds")
    mcas = _areas(min_contour_areas, "min_contour_areas")
    bottoms = _thresholds(bottom_thresholds, "bottom_thresholds")
    cuts = [_cutoff(t, p.dtype) for t in tops + bottoms]
    n, c = p.shape[:2]
    above = np.empty((n, c, len(cuts)), dtype=np.int64)
    above_true = np.empty((n, c, len(cuts)), dtype=np.int64)
    true_area = np.empty((n, c), dtype=np.int64)
    rows = _chunk_rows(p.shape, p.dtype.itemsize, chunk_size)
    workers = _workers(num_workers)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with progress(total=n, desc="triplet search", unit="img", disable=n < 200) as bar:
            for sl, (pc, mc) in _iter_chunks([p, m], rows):
                _check_float_range(pc, sl.start, "probs")
                mc = _binary_masks(mc, sl.start)
                results = _map(partial(_counts_above, cuts=cuts), pool, pc, mc)
                above[sl] = np.stack([r[0] for r in results])
                above_true[sl] = np.stack([r[1] for r in results])
                true_area[sl] = mc.reshape(len(pc), c, -1).sum(axis=2, dtype=np.int64)
                bar.update(len(pc))
    finally:
        if pool is not None:
            pool.shutdown()
    n_top = len(tops)
    top_count, bottom_area, bottom_inter = above[..., :n_top], above[..., n_top:], above_true[..., n_top:]
    dice = np.empty((c, n_top, mcas.size, len(bottoms)), dtype=np.float64)
    for k in range(c):
        for i in range(n_top):
            keep = top_count[:, k, i, None] >= mcas[None, :]  # (N, A)
            pred = np.where(keep[:, :, None], bottom_area[:, k, None, :], 0)  # (N, A, B)
            inter = np.where(keep[:, :, None], bottom_inter[:, k, None, :], 0)
            pair = _pair_dice(inter, pred, true_area[:, k, None, None], empty_score)
            dice[k, i] = _mean_over_images(pair.transpose(1, 2, 0))
    grid = np.meshgrid(np.arange(c), np.arange(n_top), np.arange(mcas.size), np.arange(len(bottoms)), indexing="ij")
    ci, ti, ai, bi = (g.reshape(-1) for g in grid)
    return pd.DataFrame(
        {
            "class_index": ci,
            "top_score_threshold": np.asarray(tops, dtype=np.float64)[ti],
            "min_contour_area": mcas[ai],
            "bottom_score_threshold": np.asarray(bottoms, dtype=np.float64)[bi],
            "dice": dice.reshape(-1),
        }
    )


# -------------------------------------------------------------------------------------------- image-level gating


def top_k_class_probs(probs: Any, k: int, chunk_size: int | None = None) -> np.ndarray:
    """Image-level class probability: the mean of the ``k`` largest pixel probs of each (image, class).

    Args:
        probs: (N, C, H, W) float in [0, 1] or uint8 0..255 (p = v / 255); numpy, memmap (streamed) or torch tensor.
        k: pixels averaged, 1..H*W; 17,500 at 350 x 525 in the source (``scale_top_k`` for other sizes).
        chunk_size: images read per chunk; None for about 16 MB.
    Returns:
        (N, C) float32 in [0, 1]. uint8 input is summed exactly (integer histogram) and divided by 255 k in float64;
        float input is averaged in float64; both are rounded to float32 once.
    Raises:
        ValueError: not 4-D; ``k`` outside 1..H*W. TypeError: a dtype other than uint8 or float.
    Source:
        Understanding Clouds 1st place, pudae/kaggle-understanding-clouds ``tools/evaluate.py``:
        ``np.mean(np.sort(predictions[c].flatten())[-17500:])``.
    """
    p = to_numpy(probs)
    _check_probs_dtype(p)
    if p.ndim != 4:
        raise ValueError(f"probs must be (N, C, H, W), got shape {p.shape}")
    n, c = p.shape[:2]
    hw = int(np.prod(p.shape[2:]))
    if not 1 <= k <= hw:
        raise ValueError(f"k must be in 1..{hw} (H * W), got {k}")
    out = np.empty((n, c), dtype=np.float32)
    values = np.arange(256, dtype=np.int64)
    for sl, (pc,) in _iter_chunks([p], _chunk_rows(p.shape, p.dtype.itemsize, chunk_size)):
        _check_float_range(pc, sl.start, "probs")
        flat = pc.reshape(-1, hw)
        if p.dtype == np.uint8:
            hist = np.stack([_hist256(row) for row in flat])
            from_top = np.cumsum(hist[:, ::-1], axis=1)  # pixels >= 255 - j
            j = np.argmax(from_top >= k, axis=1)  # the value 255 - j holds the k-th largest pixel
            above = np.where(j > 0, from_top[np.arange(len(flat)), j - 1], 0)
            sums = np.cumsum(hist[:, ::-1] * values[::-1], axis=1)
            total = np.where(j > 0, sums[np.arange(len(flat)), j - 1], 0) + (k - above) * (255 - j)
            out[sl] = (total / (255.0 * k)).reshape(-1, c)
        else:
            top = np.partition(flat, hw - k, axis=1)[:, hw - k :]
            out[sl] = top.mean(axis=1, dtype=np.float64).reshape(-1, c)
    return out


def scale_top_k(to_hw: tuple[int, int], k: int = 17500, from_hw: tuple[int, int] = (350, 525)) -> int:
    """Scale a top-K pixel count with the image area: K at ``from_hw`` -> the same fraction of pixels at ``to_hw``.

    Args:
        to_hw: (H, W) the probs have.
        k: pixels at ``from_hw``; 17,500 at 350 x 525 is the Understanding Clouds 1st-place value (9.5% of the image).
        from_hw: (H, W) at which ``k`` was chosen.
    Returns:
        round(k * H * W / (H0 * W0)), at least 1 (17500 at (350, 525) -> 280000 at (1400, 2100)).
    Raises:
        ValueError: a non-positive size or ``k``.
    """
    if k < 1 or min(*to_hw, *from_hw) < 1:
        raise ValueError(f"k and sizes must be positive, got k={k}, to_hw={to_hw}, from_hw={from_hw}")
    return max(1, round(k * to_hw[0] * to_hw[1] / (from_hw[0] * from_hw[1])))


def combine_class_probs(top_k_probs: Any, head_probs: Any, head_weight: float = 0.5) -> np.ndarray:
    """Weighted mean of top-K class probs and a classification head's probs: ``(1 - w) * top_k + w * head``.

    Args:
        top_k_probs: (N, C) from ``top_k_class_probs``.
        head_probs: (N, C) sigmoid outputs of a classification head (or the mean of several heads).
        head_weight: w in [0, 1]. pudae averaged M heads and the top-K probs with equal weights, i.e. w = M / (M + 1).
    Returns:
        (N, C) float32.
    Raises:
        ValueError: shapes differ; ``head_weight`` outside [0, 1].
    """
    a, b = np.asarray(to_numpy(top_k_probs), np.float64), np.asarray(to_numpy(head_probs), np.float64)
    if a.shape != b.shape:
        raise ValueError(f"top_k_probs shape {a.shape} != head_probs shape {b.shape}")
    if not 0.0 <= head_weight <= 1.0:
        raise ValueError(f"head_weight must be in [0, 1], got {head_weight}")
    return ((1.0 - head_weight) * a + head_weight * b).astype(np.float32)


def force_one_class(class_probs: Any, keep: Any) -> np.ndarray:
    """Keep at least one class per image: where no class is kept, keep the most probable one.

    Args:
        class_probs: (N, C) or (C,) image-level class probs.
        keep: same shape, bool: which classes pass (e.g. ``class_probs > thresholds``).
    Returns:
        A bool copy of ``keep`` with, in each row that had no True, the argmax class (first on ties) set.
    Raises:
        ValueError: shapes differ.
    Source:
        Understanding Clouds 1st place (pudae ``tools/evaluate.py``): the largest class prob of each image is set to
        1.0 before gating, so every image has at least one class.
    """
    probs, kept = np.asarray(to_numpy(class_probs)), np.array(to_numpy(keep), dtype=bool)
    if probs.shape != kept.shape or probs.ndim not in (1, 2):
        raise ValueError(f"class_probs shape {probs.shape} and keep shape {kept.shape} must match, (N, C) or (C,)")
    p2, k2 = probs.reshape(-1, probs.shape[-1]), kept.reshape(-1, kept.shape[-1])
    none = ~k2.any(axis=1)
    k2[none, np.argmax(p2[none], axis=1)] = True
    return k2.reshape(kept.shape)


def class_presence(masks: Any, chunk_size: int | None = None) -> np.ndarray:
    """(N, C, H, W) masks -> (N, C) bool: whether class c has any pixel on image i (labels for a gate's classifier).

    Memmaps are streamed a chunk at a time.

    Raises:
        ValueError: not 4-D.
    """
    m = to_numpy(masks)
    if m.ndim != 4:
        raise ValueError(f"masks must be (N, C, H, W), got shape {m.shape}")
    out = np.empty(m.shape[:2], dtype=bool)
    for sl, (mc,) in _iter_chunks([m], _chunk_rows(m.shape, m.dtype.itemsize, chunk_size)):
        out[sl] = mc.reshape(mc.shape[0], mc.shape[1], -1).any(axis=2)
    return out


def precision_recall_table(scores: Any, labels: Any) -> pd.DataFrame:
    """Precision and recall of ``scores > threshold`` at every cut between distinct observed scores.

    Row j keeps the images whose score is among the j + 1 largest distinct values. Its ``threshold`` lies halfway
    between the lowest kept and the highest dropped score (the dropped score itself when the two are adjacent floats;
    0.0, or just below the lowest score when that is <= 0, for the last row, which keeps everything), so that
    ``scores > threshold`` reproduces the row exactly on these images.

    Args:
        scores: (N,) image-level probs of one class.
        labels: (N,) {0, 1} or bool, whether the class is present.
    Returns:
        DataFrame with ``threshold`` (decreasing), ``n_kept``, ``tp``, ``precision``, ``recall`` (NaN when there is no
        positive label), ``f1`` = 2 tp / (n_kept + positives).
    Raises:
        ValueError: shapes differ, not 1-D, empty, NaN scores, labels outside {0, 1}.
    """
    s = np.asarray(to_numpy(scores), dtype=np.float64)
    y = np.asarray(to_numpy(labels))
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be the same non-empty (N,) shape")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or bool")
    y = y.astype(bool)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])  # last index of each distinct score
    tp = np.cumsum(y_sorted)[last]
    n_kept = last + 1
    kept_low = s_sorted[last]
    dropped_high = np.r_[kept_low[1:], np.nan]
    mid = (kept_low + dropped_high) / 2
    threshold = np.where(mid < kept_low, mid, dropped_high)
    threshold[-1] = min(0.0, float(np.nextafter(kept_low[-1], -np.inf)))
    positives = int(y.sum())
    return pd.DataFrame(
        {
            "threshold": threshold,
            "n_kept": n_kept,
            "tp": tp,
            "precision": tp / n_kept,
            "recall": tp / positives if positives else np.full(tp.shape, np.nan),
            "f1": 2.0 * tp / (n_kept + positives),
        }
    )


_CRITERION = re.compile(r"^(f1|(precision|recall)\s*>=\s*([0-9.eE+-]+))$")


def classifier_thresholds(class_probs: Any, labels: Any, criterion: str = "f1") -> np.ndarray:
    """Per-class thresholds for a classifier gate, chosen on the OOF precision-recall curve.

    Criteria (each picks one row of ``precision_recall_table`` per class):

    - ``"f1"``: the largest F1; ties go to the higher threshold.
    - ``"precision>=x"``: the largest recall among cuts with precision >= x (ties: higher precision). If no cut
      reaches x the class is gated off (threshold ``max(1.0, max score)``) and a warning is logged.
    - ``"recall>=x"``: the largest precision among cuts with recall >= x (ties: higher recall).

    A class with no positive label is gated off (threshold ``max(1.0, max score)``), with a warning.

    Args:
        class_probs: (N, C) image-level class probs (a classifier head, ``top_k_class_probs``, or a blend).
        labels: (N, C) {0, 1} or bool, e.g. ``class_presence(masks)``.
        criterion: one of the above.
    Returns:
        (C,) float64 thresholds for ``gate_masks``: a class is kept on an image when its prob is > the threshold.
    Raises:
        ValueError: shapes differ or are not (N, C); an unknown criterion (the options are named); x outside [0, 1].
    """
    probs, y = np.asarray(to_numpy(class_probs), dtype=np.float64), np.asarray(to_numpy(labels))
    if probs.ndim != 2 or probs.shape != y.shape:
        raise ValueError(f"class_probs {probs.shape} and labels {y.shape} must be the same (N, C) shape")
    match = _CRITERION.match(criterion.strip())
    if match is None:
        raise ValueError(f"unknown criterion {criterion!r}; options: 'f1', 'precision>=x', 'recall>=x' (x in [0, 1])")
    kind = match.group(2) or "f1"
    goal = float(match.group(3)) if match.group(3) else None
    if goal is not None and not 0.0 <= goal <= 1.0:
        raise ValueError(f"criterion {criterion!r}: x must be in [0, 1]")
    out = np.empty(probs.shape[1], dtype=np.float64)
    for k in range(probs.shape[1]):
        table = precision_recall_table(probs[:, k], y[:, k])
        off = max(1.0, float(probs[:, k].max()))
        if table["tp"].iloc[-1] == 0:
            log.warning("class %d has no positive label: gated off (threshold %s)", k, off)
            out[k] = off
            continue
        if kind == "f1":
            row = int(np.argmax(table["f1"].to_numpy()))
        else:
            primary, secondary = ("recall", "precision") if kind == "precision" else ("precision", "recall")
            ok = table[kind].to_numpy() >= goal
            if not ok.any():
                log.warning("class %d: no threshold reaches %s; gated off (threshold %s)", k, criterion, off)
                out[k] = off
                continue
            cand = table[ok]
            best = cand[cand[primary] == cand[primary].max()]
            row = int(best[secondary].idxmax())
        out[k] = table["threshold"].iloc[row]
    return out


def gate_masks(masks: Any, class_probs: Any, thresholds: Any) -> np.ndarray:
    """Empty the masks of classes whose image-level prob is not above their threshold.

    Args:
        masks: (C, H, W) one image or (N, C, H, W), {0, 1}.
        class_probs: (C,) or (N, C) matching; compared in float64 as ``class_probs > thresholds``.
        thresholds: (C,) per-class thresholds (``classifier_thresholds``) or a scalar.
    Returns:
        uint8 masks of the same shape, zero where the class is gated off.
    Raises:
        ValueError: shapes that do not match.
    Source:
        Understanding Clouds 1st place (pudae ``tools/evaluate.py``): ``np.logical_and(mask > thres, cls_score >
        cls_thres)``.
    """
    m = to_numpy(masks)
    probs = np.asarray(to_numpy(class_probs), dtype=np.float64)
    if m.ndim not in (3, 4) or probs.shape != m.shape[:-2]:
        raise ValueError(f"masks {m.shape} must be (C, H, W) or (N, C, H, W), class_probs {probs.shape} (C,) or (N, C)")
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(m.shape[-3], float(thr))
    if thr.shape != (m.shape[-3],):
        raise ValueError(f"thresholds must have one value per class ({m.shape[-3]}), got shape {thr.shape}")
    keep = (probs > thr).astype(np.uint8)
    return (m != 0).astype(np.uint8) * keep[..., None, None]


# ---------------------------------------------------------------------------------------------- chosen settings


def best_per_class(df: pd.DataFrame, key: str = "dice") -> dict[str, list]:
    """The best row of a search for each class.

    Args:
        df: a ``search_thresholds`` or ``search_triplet`` result (any table with ``class_index`` and ``key``).
        key: the score column, higher is better; NaN rows are ignored; ties go to the first row (lowest grid values).
    Returns:
        ``{column: [value for class 0, 1, ...]}`` for every column except ``class_index``, Python ints / floats, e.g.
        ``{"threshold": [0.45, ...], "min_area": [10000, ...], "dice": [0.61, ...]}``: the parameter lists are those
        of ``PostProcess``.
    Raises:
        KeyError: ``class_index`` or ``key`` is missing. ValueError: a class of 0..C-1 has no scored row.
    """
    for col in ("class_index", key):
        if col not in df.columns:
            raise KeyError(f"column {col!r} not in the table; columns: {list(df.columns)}")
    scored = df[df[key].notna()]
    n_classes = int(df["class_index"].max()) + 1
    missing = sorted(set(range(n_classes)) - set(scored["class_index"].astype(int)))
    if missing:
        raise ValueError(f"class(es) {missing} have no scored row (every {key} is NaN or the class is absent)")
    best = scored.loc[scored.groupby("class_index", sort=True)[key].idxmax()]
    columns = [col for col in df.columns if col != "class_index"]
    return {col: best[col].tolist() for col in columns}


@dataclass
class PostProcess:
    """Per-class post-processing settings, saved as ``artifacts/<exp>/postprocess.json``.

    Exactly one binarisation is set: ``threshold`` (+ optional ``min_area``), or the triplet. Gating is optional.
    Lists hold one value per class.

    Attributes:
        threshold: prob > threshold is foreground (``search_thresholds``).
        min_area: components with <= min_area pixels are removed; None: none are.
        top_score_threshold, min_contour_area, bottom_score_threshold: the triplet scheme (``search_triplet``).
        classifier_threshold: a class is kept on an image when its class prob is > this (``classifier_thresholds``).
        force_one_class: the most probable class of an image always passes the gate (needs ``classifier_threshold``).
        top_k: the gate's class probs are ``top_k_class_probs`` of the image with this K (Clouds 1st place); None:
            the class probs passed to ``apply_postprocess`` (an external classifier) are used as they are.
        head_weight: with ``top_k``, the gate averages the top-K probs with the class probs passed to
            ``apply_postprocess`` (a classification head, or the ``gate_exp`` classifier):
            ``(1 - w) * top_k + w * head`` (``combine_class_probs``); None or 0: top-K alone.
        gate_exp: the experiment of a separate presence classifier (``10_train`` with ``arch="classifier"``) whose
            probabilities are the class probs of the gate (alone when ``top_k`` is None, else averaged with the
            top-K probs by ``head_weight``); ``40_submit`` runs its folds beside the segmentation models. None: the
            segmentation models' own head (or top-K alone).
        meta: free-form provenance (search scores, source experiment); saved as is.

    Example (``notebooks/20_oof.py`` then ``40_submit.py``)::

        df = search_thresholds(oof_probs, oof_masks, [0.3, 0.4, 0.5], [0, 5000, 10000])
        best = best_per_class(df)
        params = PostProcess(threshold=best["threshold"], min_area=best["min_area"], meta={"cv_dice": best["dice"]})
        params.to_json(exp_dir / "postprocess.json")
        masks = apply_postprocess(test_probs[i], PostProcess.from_json(exp_dir / "postprocess.json"))

    Raises:
        ValueError: neither or both binarisations; lists of different lengths; ``force_one_class`` without a gate.
    """

    threshold: list[float] | None = None
    min_area: list[int] | None = None
    top_score_threshold: list[float] | None = None
    min_contour_area: list[int] | None = None
    bottom_score_threshold: list[float] | None = None
    classifier_threshold: list[float] | None = None
    force_one_class: bool = False
    top_k: int | None = None
    head_weight: float | None = None
    gate_exp: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    _FLOATS = ("threshold", "top_score_threshold", "bottom_score_threshold", "classifier_threshold")
    _INTS = ("min_area", "min_contour_area")
    _TRIPLET = ("top_score_threshold", "min_contour_area", "bottom_score_threshold")

    def __post_init__(self) -> None:
        for name in self._FLOATS + self._INTS:
            value = getattr(self, name)
            if value is not None:
                kind = float if name in self._FLOATS else int
                setattr(self, name, [kind(v) for v in np.asarray(value).reshape(-1).tolist()])
        triplet = [getattr(self, name) is not None for name in self._TRIPLET]
        if any(triplet) and not all(triplet):
            raise ValueError(f"the triplet needs all of {self._TRIPLET}")
        if (self.threshold is not None) == all(triplet):
            raise ValueError("set exactly one binarisation: threshold (+ min_area) or the triplet")
        if self.min_area is not None and self.threshold is None:
            raise ValueError("min_area needs threshold")
        if self.force_one_class and self.classifier_threshold is None:
            raise ValueError("force_one_class acts on the classifier gate: set classifier_threshold too")
        lengths = {name: len(getattr(self, name)) for name in self._FLOATS + self._INTS if getattr(self, name)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"per-class lists must have one value per class; lengths: {lengths}")
        if self.top_k is not None:
            self.top_k = int(self.top_k)
        if self.head_weight is not None:
            self.head_weight = float(self.head_weight)
            if not 0.0 <= self.head_weight <= 1.0 or self.top_k is None:
                raise ValueError(f"head_weight must be in [0, 1] and needs top_k; got {self.head_weight}")
        self.force_one_class = bool(self.force_one_class)
        self.gate_exp = str(self.gate_exp) if self.gate_exp else None
        if self.gate_exp and self.classifier_threshold is None:
            raise ValueError(f"gate_exp {self.gate_exp!r} gates the masks: set classifier_threshold too")

    @property
    def num_classes(self) -> int:
        return len(self.threshold if self.threshold is not None else self.top_score_threshold)

    @property
    def needs_class_probs(self) -> bool:
        return self.classifier_threshold is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcess:
        """Raises: ValueError naming unknown keys and the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown post-processing key(s) {unknown}; valid: {sorted(valid)}")
        return cls(**d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The settings as JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=_json_value)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> PostProcess:
        """Read settings from a JSON file, or from JSON text (a string starting with ``{``).

        Raises:
            FileNotFoundError / ValueError: as ``kitlib.config.read_json``; ValueError for unknown keys.
        """
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{"):
            return cls.from_dict(json.loads(path_or_text))
        return cls.from_dict(read_json(Path(path_or_text)))


def _json_value(obj: Any) -> Any:
    """numpy scalars and arrays in ``meta`` as plain JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable in PostProcess.meta: {type(obj).__name__}")


def apply_postprocess(probs: Any, params: PostProcess, class_probs: Any = None) -> np.ndarray:
    """Apply a ``PostProcess`` to one image: binarise (threshold + min_area, or triplet), then the optional gate.

    Args:
        probs: (C, H, W) float in [0, 1] or uint8 0..255, one image.
        params: the settings.
        class_probs: (C,) image-level class probs for the gate: an external classifier's (``params.top_k`` None), or
            a classification head's to average with the top-K probs (``params.head_weight``); ignored otherwise.
    Returns:
        (C, H, W) uint8 {0, 1}.
    Raises:
        ValueError: ``probs`` does not have ``params.num_classes`` classes; a gate without class probs nor ``top_k``.
    """
    p = to_numpy(probs)
    if p.ndim != 3 or p.shape[0] != params.num_classes:
        raise ValueError(f"probs must be (C, H, W) with C = {params.num_classes}, got shape {p.shape}")
    if params.threshold is not None:
        masks = apply_threshold_min_area(p, params.threshold, params.min_area if params.min_area is not None else 0)
    else:
        masks = triplet_masks(p, params.top_score_threshold, params.min_contour_area, params.bottom_score_threshold)
    if not params.needs_class_probs:
        return masks
    if params.top_k is not None:
        top_k = top_k_class_probs(p[None], params.top_k)[0]
        if params.head_weight and class_probs is not None:
            class_probs = combine_class_probs(top_k[None], to_numpy(class_probs)[None], params.head_weight)[0]
        else:
            class_probs = top_k
    elif class_probs is None:
        raise ValueError("the gate needs class_probs: pass them or set top_k in the PostProcess")
    probs_c = np.asarray(to_numpy(class_probs), dtype=np.float64)
    if probs_c.shape != (params.num_classes,):
        raise ValueError(f"class_probs must be ({params.num_classes},), got shape {probs_c.shape}")
    keep = probs_c > np.asarray(params.classifier_threshold)
    if params.force_one_class:
        keep = force_one_class(probs_c, keep)
    return masks * keep[:, None, None].astype(np.uint8)
