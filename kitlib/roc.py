"""Pixel-level ROC of out-of-fold (OOF) segmentation probabilities, and the threshold of Youden's index.

The Dacon building segmentation team chose the binary threshold from the ROC curve of the OOF pixels beside the Dice
sweep: Youden's index J = TPR - FPR (Youden 1950, "Index for rating diagnostic tests", Cancer 3(1)) is largest at the
threshold that best separates building from background pixels, whatever their balance. Threshold semantics are
``kitlib.postprocess``'s: a pixel is foreground when p > threshold.

Exact and streamed: probabilities on the uint8 grid (the kit's OOF dtype, p = v / 255) give per class two 256-bin
histograms (every pixel, truth pixels) whose cumulative sums are the ROC at every threshold v / 255; a memmap is read a
chunk of images at a time. Float probabilities are put on the same grid first (``round(p * 255)``), so thresholds are
multiples of 1/255 for every dtype. This is the kit's own code: ``sklearn.metrics.roc_curve`` needs every pixel in
memory at once (a Dacon OOF is 7,000 x 1024 x 1024 pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kitlib._pixels import binary_masks, check_float_range, check_pair, chunk_iter, hist256
from kitlib._private import chunk_rows, progress

__all__ = ["pixel_roc", "youden_thresholds"]


def _hists(probs: Any, masks: Any, chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(C, 256) int64 counts of each uint8 value over every pixel and over the truth pixels."""
    p, m = check_pair(probs, masks)
    c = p.shape[1]
    every, on_truth = np.zeros((c, 256), np.int64), np.zeros((c, 256), np.int64)
    with progress(total=len(p), desc="roc", unit="img", disable=len(p) < 200) as bar:
        for sl, (pc, mc) in chunk_iter([p, m], chunk_rows(p.shape, p.dtype.itemsize, chunk_size)):
            check_float_range(pc, sl.start, "probs")
            mc = binary_masks(mc, sl.start)
            if pc.dtype != np.uint8:
                pc = np.rint(np.asarray(pc, np.float32) * 255.0).astype(np.uint8)
            for k in range(c):
                pk, tk = np.ascontiguousarray(pc[:, k]), np.ascontiguousarray(mc[:, k])
                every[k] += hist256(pk)
                on_truth[k] += hist256(pk, tk)
            bar.update(len(pc))
    return every, on_truth


def pixel_roc(probs: Any, masks: Any, classes: list[str] | None = None, chunk_size: int | None = None) -> pd.DataFrame:
    """The ROC of the OOF pixels of each class at every threshold v / 255, v = 0..254.

    Args:
        probs: (N, C, H, W) probabilities: uint8 (p x 255, the kit's OOF files) or float in [0, 1]; memmaps stream.
        masks: (N, C, H, W) truth, {0, 1} (bool, integer or float).
        classes: C names; None: "0", "1", ...
        chunk_size: images per chunk; None: about 64 MB of probabilities.
    Returns:
        One row per (class, threshold): ``class``, ``threshold`` (float64), ``tpr`` (foreground pixels above it over
        foreground pixels; NaN for a class without any), ``fpr`` (background pixels above it over background pixels;
        NaN without any), ``youden_j`` = tpr - fpr.
    Raises:
        ValueError: shapes that differ or are not 4-D, probabilities outside [0, 1], masks that are not binary (the
            first offending [image, class, y, x] named); C names for another number of classes.
    """
    every, on_truth = _hists(probs, masks, chunk_size)
    names = [str(k) for k in range(len(every))] if classes is None else list(classes)
    if len(names) != len(every):
        raise ValueError(f"{len(names)} class names for {len(every)} classes")
    rows = []
    for k, name in enumerate(names):
        above = every[k].sum() - np.cumsum(every[k])[:-1]  # pixels > v for v = 0..254
        above_true = on_truth[k].sum() - np.cumsum(on_truth[k])[:-1]
        pos, neg = on_truth[k].sum(), every[k].sum() - on_truth[k].sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = above_true / pos if pos else np.full(255, np.nan)
            fpr = (above - above_true) / neg if neg else np.full(255, np.nan)
        rows.append(pd.DataFrame({"class": name, "threshold": np.arange(255) / 255.0, "tpr": tpr, "fpr": fpr}))
    roc = pd.concat(rows, ignore_index=True)
    roc["youden_j"] = roc["tpr"] - roc["fpr"]
    return roc


def youden_thresholds(roc: pd.DataFrame) -> pd.DataFrame:
    """Each class's threshold of the largest Youden's index J = TPR - FPR (the lowest such threshold on ties).

    Args:
        roc: ``pixel_roc``'s table.
    Returns:
        One row per class (in ``roc``'s order): ``class``, ``threshold``, ``youden_j``, ``tpr``, ``fpr``; a class
        whose J is undefined (no foreground or no background pixels) gets NaN threshold and J.
    """
    out = []
    for name, g in roc.groupby("class", sort=False):
        j = g["youden_j"].to_numpy()
        if np.isnan(j).all():
            out.append({"class": name, "threshold": np.nan, "youden_j": np.nan, "tpr": np.nan, "fpr": np.nan})
            continue
        best = g.iloc[int(np.nanargmax(j))]
        out.append({k: best[k] for k in ("class", "threshold", "youden_j", "tpr", "fpr")})
    return pd.DataFrame(out)
