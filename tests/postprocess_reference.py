"""Naive reference implementations of kitlib.postprocess, for the tests and benchmarks/bench_postprocess.py.

Written as the Kaggle kernels do it, one (class, setting, image) at a time with no shortcut: binarise, label the
8-connected components (``cv2.connectedComponents``, as the kernels' ``post_process``), drop the small ones, score.
Component areas come from ``np.bincount`` rather than the kernels' ``(component == c).sum()`` loop, which gives the
same masks and is much faster on fragmented predictions, so the benchmark ratio is not inflated.

Semantics (the ones kitlib.postprocess documents): probs become float64 (uint8 as ``v / 255``) and a pixel is
foreground when ``prob > threshold``; a component is kept when its area is ``> min_area``; Dice is
``2.0 * inter / (pred_sum + true_sum)``, ``empty_score`` when both are empty (None: the pair is skipped); a class's
score is ``np.mean`` of its pairs in image order (NaN when every pair is skipped).
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np
import pandas as pd

from kitlib._pixels import (
    binarize_2d,
    check_areas,
    check_pair,
    check_thresholds,
    components,
    cutoff,
    label_counts,
    mean_over_images,
    pair_dice,
)
from kitlib.search import _per_image

__all__ = [
    "as_float",
    "remove_small_components_reference",
    "dice_reference",
    "search_thresholds_reference",
    "search_thresholds_per_threshold",
    "threshold_image_per_threshold",
    "triplet_mask_reference",
    "search_triplet_reference",
    "top_k_class_probs_reference",
]


def as_float(prob: np.ndarray) -> np.ndarray:
    """Probabilities as float64: uint8 v -> v / 255, floats as they are."""
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob.astype(np.float64) / 255.0
    return prob.astype(np.float64)


def remove_small_components_reference(binary: np.ndarray, min_area: int) -> np.ndarray:
    """Keep the 8-connected components of an (H, W) {0, 1} mask with more than ``min_area`` pixels."""
    num, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    areas = np.bincount(labels.ravel(), minlength=num)
    keep = areas > min_area
    keep[0] = False
    return keep[labels].astype(np.uint8)


def dice_reference(pred: np.ndarray, true: np.ndarray, empty_score: float | None = 1.0) -> float | None:
    """Dice of one (H, W) pair; ``empty_score`` when both are empty (None: skip the pair)."""
    p, t = pred.astype(bool), true.astype(bool)
    if p.sum() == 0 and t.sum() == 0:
        return empty_score
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def _mean(scores: list[float]) -> float:
    return float(np.mean(scores)) if scores else float("nan")


def search_thresholds_reference(probs, masks, thresholds, min_areas, empty_score: float | None = 1.0) -> pd.DataFrame:
    """The kernels' grid search: for each class, threshold and min_area, post-process every image and average Dice."""
    n, c = probs.shape[:2]
    rows = []
    for k in range(c):
        for t in thresholds:
            for a in min_areas:
                scores = []
                for i in range(n):
                    pred = remove_small_components_reference((as_float(probs[i, k]) > t).astype(np.uint8), a)
                    d = dice_reference(pred, np.asarray(masks[i, k]), empty_score)
                    if d is not None:
                        scores.append(d)
                rows.append((k, float(t), int(a), _mean(scores)))
    return pd.DataFrame(rows, columns=["class_index", "threshold", "min_area", "dice"])


def _kept_counts_one_labelling(n: int, labels: np.ndarray, truth_at: np.ndarray | None, min_areas: np.ndarray):
    areas = label_counts(labels, n)[1:]
    order = np.argsort(areas, kind="stable")
    sorted_areas = areas[order]
    dropped = np.searchsorted(sorted_areas, min_areas, side="right")  # components with area <= min_area
    cum_area = np.concatenate(([0], np.cumsum(sorted_areas)))
    kept_area = cum_area[-1] - cum_area[dropped]
    if truth_at is None:
        return kept_area, np.zeros_like(kept_area)
    inter = label_counts(labels.reshape(-1).take(truth_at), n)[1:]
    cum_inter = np.concatenate(([0], np.cumsum(inter[order])))
    return kept_area, cum_inter[-1] - cum_inter[dropped]


def threshold_image_per_threshold(p: np.ndarray, t: np.ndarray, cuts: list, min_areas: np.ndarray):
    """kitlib's per-image step before the one-sweep component tree: one labelling and two label histograms per
    (class, threshold). (C, H, W) probs and truth -> kept area and intersection (C, T, A) int64, true areas (C,)."""
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
            n, labels = components(binarize_2d(pk, cut))
            kept = _kept_counts_one_labelling(n, labels, truth_at if truth_at.size else None, min_areas)
            kept_area[k, j], kept_inter[k, j] = kept
    return kept_area, kept_inter, true_area


def search_thresholds_per_threshold(
    probs, masks, thresholds, min_areas, empty_score=1.0, num_workers=None, chunk_size=None
) -> pd.DataFrame:
    """``kitlib.search.search_thresholds`` as it was before the one-sweep component tree (same streaming, threads and
    Dice; one connected-components pass per image, class and threshold): the old table and the old time."""
    p, m = check_pair(probs, masks)
    ts = check_thresholds(thresholds, "thresholds")
    areas = check_areas(min_areas, "min_areas")
    sorted_areas, where = np.unique(areas, return_inverse=True)
    cuts = [cutoff(t, p.dtype) for t in ts]
    n, c = p.shape[:2]
    dice = np.empty((c, len(ts), sorted_areas.size, n), dtype=np.float64)
    per_image = partial(threshold_image_per_threshold, cuts=cuts, min_areas=sorted_areas)
    for sl, results, _ in _per_image(p, m, per_image, num_workers, chunk_size, "threshold search (per threshold)"):
        kept_area, kept_inter = np.stack([r[0] for r in results]), np.stack([r[1] for r in results])
        true_area = np.stack([r[2] for r in results])[:, :, None, None]
        dice[..., sl] = pair_dice(kept_inter, kept_area, true_area, empty_score).transpose(1, 2, 3, 0)
    means = mean_over_images(dice[:, :, where])
    ci, ti, ai = np.meshgrid(np.arange(c), np.arange(len(ts)), np.arange(areas.size), indexing="ij")
    columns = {"class_index": ci.reshape(-1), "threshold": np.asarray(ts, dtype=np.float64)[ti.reshape(-1)]}
    return pd.DataFrame({**columns, "min_area": areas[ai.reshape(-1)], "dice": means.reshape(-1)})


def triplet_mask_reference(prob: np.ndarray, top: float, min_contour_area: int, bottom: float) -> np.ndarray:
    """SIIM 1st place triplet on one (H, W) prob map."""
    p = as_float(prob)
    if (p > top).sum() < min_contour_area:
        return np.zeros(p.shape, dtype=np.uint8)
    return (p > bottom).astype(np.uint8)


def search_triplet_reference(probs, masks, tops, min_contour_areas, bottoms, empty_score=1.0) -> pd.DataFrame:
    """Every triplet, every image, one at a time."""
    n, c = probs.shape[:2]
    rows = []
    for k in range(c):
        for top in tops:
            for area in min_contour_areas:
                for bottom in bottoms:
                    scores = []
                    for i in range(n):
                        pred = triplet_mask_reference(probs[i, k], top, area, bottom)
                        d = dice_reference(pred, np.asarray(masks[i, k]), empty_score)
                        if d is not None:
                            scores.append(d)
                    rows.append((k, float(top), int(area), float(bottom), _mean(scores)))
    columns = ["class_index", "top_score_threshold", "min_contour_area", "bottom_score_threshold", "dice"]
    return pd.DataFrame(rows, columns=columns)


def top_k_class_probs_reference(probs, k: int) -> np.ndarray:
    """pudae's ``np.mean(np.sort(p.flatten())[-k:])`` per (image, class), in float64, returned as float32."""
    n, c = probs.shape[:2]
    out = np.empty((n, c), dtype=np.float32)
    for i in range(n):
        for j in range(c):
            out[i, j] = np.mean(np.sort(as_float(probs[i, j]).ravel())[-k:])
    return out
