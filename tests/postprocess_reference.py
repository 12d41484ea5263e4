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

import cv2
import numpy as np
import pandas as pd

__all__ = [
    "as_float",
    "remove_small_components_reference",
    "dice_reference",
    "search_thresholds_reference",
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
