"""The out-of-fold (OOF) searches that choose the post-processing of binary and multilabel segmentation.

- ``search_thresholds``: mean Dice per class for every (threshold, min_area), as the Kaggle-kernel grid search over
  ``post_process(probability, threshold, min_size)`` (Severstal UNet starter kernel, reused in the Understanding Clouds
  kernels: ``cv2.threshold``, ``cv2.connectedComponents`` (8-connectivity), keep components with more than ``min_size``
  pixels). Same numbers as that naive loop (``tests/postprocess_reference.py``), much faster: per image and class one
  sweep over the thresholds from the highest down (``kitlib._pixels.component_sweep``: a threshold's components are
  unions of the next higher one's, so each level is labelled once and its component areas and truth pixels are
  summed from the level above plus the pixels between the two cuts) gives the kept area and intersection for every
  (threshold, min_area) at once; thresholds above an image's maximum prob cost nothing; images are processed by a
  thread pool (OpenCV releases the GIL) a chunk at a time, so a 4 GB memmap is streamed, not loaded
  (``benchmarks/bench_postprocess.py``).
- ``search_triplet``: the triplet scheme of the SIIM-ACR Pneumothorax 1st place (``kitlib.postprocess.triplet_masks``).
  The search needs no components: per image and class, counts of pixels (all, and on the truth) above each threshold
  give every triplet's Dice.
- ``best_per_class``: the best row of a search per class; ``search_postprocess`` runs both searches and keeps the
  better scheme as a ``PostProcess``; ``search_from_params`` is the whole search of ``20_oof`` / ``30_ensemble`` from
  their parameters (grids as text, the image-level gate of ``kitlib.gate``).
- ``search_crf``: the DenseCRF parameters (``kitlib.crf``, the trash-sorting contest's refinement) scored on a random
  subset of the OOF images (each candidate runs the CRF on every image of it), kept only when they raise the subset's
  score over the settings without CRF; ``search_crf_from_params`` draws the subset and reads its images at the scoring
  size (``20_oof``, ``30_ensemble``). Multiclass (mIoU, argmax after the CRF) and binary / multilabel (Dice, the chosen
  thresholds after the CRF).

Threshold semantics are ``kitlib.postprocess``'s. Dice of one (image, class) pair is ``2.0 * inter / (pred_area +
true_area)`` in float64, ``empty_score`` when both masks are empty (1.0 on Kaggle; None skips the pair, the Dacon rule);
a class's score is ``np.mean`` of its pairs in image order, exactly as the naive loop computes it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import cv2
import numpy as np
import pandas as pd

from kitlib._pixels import (
    binary_masks,
    check_areas,
    check_float_range,
    check_pair,
    check_thresholds,
    chunk_iter,
    component_sweep,
    cutoff,
    hist256,
    level_map,
    map_pool,
    mean_over_images,
    n_workers,
    pair_dice,
)
from kitlib._private import chunk_rows, progress
from kitlib.crf import CRF_DEFAULTS
from kitlib.gate import search_gate
from kitlib.images import read_image_at
from kitlib.postprocess import PostProcess, default_postprocess
from kitlib.presets import Preset
from kitlib.roc import pixel_roc, youden_thresholds
from kitlib.scoring import score_oof

__all__ = [
    "CRF_GRID",
    "CRF_TASKS",
    "POSTPROCESS_TASKS",
    "best_per_class",
    "parse_grid",
    "search_crf",
    "search_crf_from_params",
    "search_from_params",
    "search_postprocess",
    "search_thresholds",
    "search_triplet",
]

#: Tasks that get the threshold / min_area search; multiclass and classification are decoded by argmax.
POSTPROCESS_TASKS = ("binary", "multilabel")
#: Tasks whose probabilities a DenseCRF can refine (``search_crf``).
CRF_TASKS = ("binary", "multilabel", "multiclass")
#: The CRF parameters a notebook searches, each from its ``crf_<name>`` parameter (``search_crf_from_params``).
CRF_GRID = ("iterations", "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat")


def _per_image(
    p: np.ndarray, m: np.ndarray, fn, num_workers: int | None, chunk_size: int | None, desc: str
) -> Iterator[tuple[slice, list, np.ndarray]]:
    """Stream probs and masks a chunk of images at a time (memmap pages released), check them, and map ``fn(probs,
    masks)`` of one image over the chunk on a thread pool (OpenCV releases the GIL; its own threads are set to 1 while
    the pool runs, then restored): yields ``(rows, results, the chunk's masks as uint8 {0, 1})``, with a progress bar
    over the images."""
    workers = n_workers(num_workers)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    cv_threads = cv2.getNumThreads()
    if pool is not None:  # the pool uses the cores: OpenCV's own threads on top oversubscribe them (~15% slower)
        cv2.setNumThreads(1)
    try:
        with progress(total=len(p), desc=desc, unit="img", disable=len(p) < 200) as bar:
            for sl, (pc, mc) in chunk_iter([p, m], chunk_rows(p.shape, p.dtype.itemsize, chunk_size)):
                check_float_range(pc, sl.start, "probs")
                mc = binary_masks(mc, sl.start)
                yield sl, map_pool(fn, pool, pc, mc), mc
                bar.update(len(pc))
    finally:
        if pool is not None:
            pool.shutdown()
            cv2.setNumThreads(cv_threads)


def _threshold_image(p: np.ndarray, t: np.ndarray, levels: np.ndarray, lut, cols: np.ndarray, min_areas: np.ndarray):
    """One image (C, H, W): kept area and intersection (C, T, A) int64 and the true areas (C,).

    ``levels``: the distinct cuts, ascending; ``cols``: the level of each threshold; ``lut``: uint8 probs' level table.
    """
    kept_area, kept_inter = component_sweep(level_map(p, levels, lut), t, levels.size, min_areas)
    true_area = np.count_nonzero(t.reshape(len(t), -1), axis=1).astype(np.int64)
    return kept_area[:, cols], kept_inter[:, cols], true_area


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
    p, m = check_pair(probs, masks)
    ts = check_thresholds(thresholds, "thresholds")
    areas = check_areas(min_areas, "min_areas")
    sorted_areas, where = np.unique(areas, return_inverse=True)
    cut_type = np.int64 if p.dtype == np.uint8 else p.dtype  # uint8 cuts are ints -1..255
    levels, cols = np.unique(np.asarray([cutoff(t, p.dtype) for t in ts], dtype=cut_type), return_inverse=True)
    lut = None
    if p.dtype == np.uint8:  # level of each value 0..255: the number of cuts below it
        lut = np.searchsorted(levels, np.arange(256), side="left")
        lut = lut.astype(np.uint8 if lut.max() < 256 else np.uint16)
    n, c = p.shape[:2]
    dice = np.empty((c, len(ts), sorted_areas.size, n), dtype=np.float64)
    per_image = partial(_threshold_image, levels=levels, lut=lut, cols=cols.reshape(-1), min_areas=sorted_areas)
    for sl, results, _ in _per_image(p, m, per_image, num_workers, chunk_size, "threshold search"):
        kept_area = np.stack([r[0] for r in results])  # (n, C, T, A)
        kept_inter = np.stack([r[1] for r in results])
        true_area = np.stack([r[2] for r in results])[:, :, None, None]
        dice[..., sl] = pair_dice(kept_inter, kept_area, true_area, empty_score).transpose(1, 2, 3, 0)
    means = mean_over_images(dice[:, :, where])  # back to the order of min_areas as given
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
            hist, hist_true = hist256(pk), hist256(pk, tk)
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
    p, m = check_pair(probs, masks)
    tops = check_thresholds(top_thresholds, "top_thresholds")
    mcas = check_areas(min_contour_areas, "min_contour_areas")
    bottoms = check_thresholds(bottom_thresholds, "bottom_thresholds")
    cuts = [cutoff(t, p.dtype) for t in tops + bottoms]
    n, c = p.shape[:2]
    above = np.empty((n, c, len(cuts)), dtype=np.int64)
    above_true = np.empty((n, c, len(cuts)), dtype=np.int64)
    true_area = np.empty((n, c), dtype=np.int64)
    for sl, results, mc in _per_image(
        p, m, partial(_counts_above, cuts=cuts), num_workers, chunk_size, "triplet search"
    ):
        above[sl] = np.stack([r[0] for r in results])
        above_true[sl] = np.stack([r[1] for r in results])
        true_area[sl] = mc.reshape(len(mc), c, -1).sum(axis=2, dtype=np.int64)
    n_top = len(tops)
    top_count, bottom_area, bottom_inter = above[..., :n_top], above[..., n_top:], above_true[..., n_top:]
    dice = np.empty((c, n_top, mcas.size, len(bottoms)), dtype=np.float64)
    for k in range(c):
        for i in range(n_top):
            keep = top_count[:, k, i, None] >= mcas[None, :]  # (N, A)
            pred = np.where(keep[:, :, None], bottom_area[:, k, None, :], 0)  # (N, A, B)
            inter = np.where(keep[:, :, None], bottom_inter[:, k, None, :], 0)
            pair = pair_dice(inter, pred, true_area[:, k, None, None], empty_score)
            dice[k, i] = mean_over_images(pair.transpose(1, 2, 0))
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


def search_postprocess(
    oof_probs: Any,
    oof_masks: Any,
    preset: Preset,
    thresholds: Sequence[float],
    min_areas: Sequence[int],
    triplet: dict[str, Sequence[float]] | None = None,
    num_workers: int | None = None,
    chunk_size: int | None = None,
) -> tuple[PostProcess, dict[str, pd.DataFrame | None]]:
    """Pick per class the (threshold, min_area) with the best OOF Dice; optionally the triplet scheme too.

    Only binary and multilabel segmentation: multiclass is decoded by argmax, classification by the top class.

    Args:
        oof_probs: (N, K, H, W) uint8 (p x 255) or float probs; memmaps are streamed.
        oof_masks: (N, K, H, W) {0, 1} truth (``write_oof_masks``).
        preset: the competition (class names, ``dice_empty_score``).
        thresholds, min_areas: the grid of ``search_thresholds``.
        triplet: also search the triplet scheme: ``{"top_thresholds": [...], "min_contour_areas": [...],
            "bottom_thresholds": [...]}`` (``search_triplet``); the scheme with the higher mean over classes of the
            per-class best Dice wins (ties: threshold + min_area).
        num_workers, chunk_size: as ``search_thresholds``.
    Returns:
        ``(params, tables)``: ``params`` a ``PostProcess`` whose ``meta`` holds ``method`` ("threshold" or "triplet"),
        ``classes``, ``search_dice`` (the winner's per-class Dice), ``threshold_search_dice`` and, with a triplet,
        ``triplet_search_dice`` (means over classes). ``tables``: ``"threshold"`` (the search_thresholds table with a
        ``class`` column), ``"triplet"`` (the same for the triplet, or None), ``"best"`` (one row per class: the best
        setting and Dice of each scheme).
    Raises:
        ValueError: a preset that is not binary/multilabel; as ``search_thresholds`` / ``search_triplet``.
    """
    if preset.task not in POSTPROCESS_TASKS:
        raise ValueError(f"preset {preset.name!r} ({preset.task}): no threshold search; it is decoded by argmax")
    classes = list(preset.target_classes)
    kwargs = dict(empty_score=preset.dice_empty_score, num_workers=num_workers, chunk_size=chunk_size)
    grid = search_thresholds(oof_probs, oof_masks, thresholds, min_areas, **kwargs)
    grid.insert(1, "class", [classes[i] for i in grid["class_index"]])
    best = best_per_class(grid.drop(columns="class"))
    summary = pd.DataFrame({"class": classes, "threshold": best["threshold"], "min_area": best["min_area"],
                            "threshold_dice": best["dice"]})  # fmt: skip
    t_mean = float(np.nanmean(best["dice"]))
    params = PostProcess(threshold=best["threshold"], min_area=best["min_area"])
    meta: dict[str, Any] = {"method": "threshold", "classes": classes, "search_dice": best["dice"],
                            "threshold_search_dice": t_mean}  # fmt: skip
    tgrid = None
    if triplet:
        unknown = sorted(set(triplet) - {"top_thresholds", "min_contour_areas", "bottom_thresholds"})
        if unknown:
            raise ValueError(
                f"unknown triplet key(s) {unknown}; keys: top_thresholds, min_contour_areas, bottom_thresholds"
            )
        tgrid = search_triplet(oof_probs, oof_masks, triplet["top_thresholds"], triplet["min_contour_areas"],
                               triplet["bottom_thresholds"], **kwargs)  # fmt: skip
        tgrid.insert(1, "class", [classes[i] for i in tgrid["class_index"]])
        tbest = best_per_class(tgrid.drop(columns="class"))
        for col in ("top_score_threshold", "min_contour_area", "bottom_score_threshold"):
            summary[col] = tbest[col]
        summary["triplet_dice"] = tbest["dice"]
        meta["triplet_search_dice"] = tr_mean = float(np.nanmean(tbest["dice"]))
        if tr_mean > t_mean:
            params = PostProcess(top_score_threshold=tbest["top_score_threshold"],
                                 min_contour_area=tbest["min_contour_area"],
                                 bottom_score_threshold=tbest["bottom_score_threshold"])  # fmt: skip
            meta.update(method="triplet", search_dice=tbest["dice"])
    params = dataclasses.replace(params, meta=meta)
    return params, {"threshold": grid, "triplet": tgrid, "best": summary}


def search_from_params(
    oof_probs: Any,
    oof_masks: Any,
    preset: Preset,
    thresholds: str | Sequence[float],
    min_areas: str | Sequence[int],
    triplet: bool = False,
    top_thresholds: str | Sequence[float] = (),
    min_contour_areas: str | Sequence[int] = (),
    bottom_thresholds: str | Sequence[float] = (),
    gate: bool = False,
    top_k: int | None = None,
    cls_probs: Any = None,
    num_workers: int | None = None,
    gate_probs: Any = None,
    gate_exp: str = "",
    youden: bool = False,
) -> tuple[PostProcess, dict[str, pd.DataFrame | None]]:
    """The post-processing search of ``20_oof`` / ``30_ensemble`` from their notebook parameters: the grids as
    comma-separated strings or lists (``parse_grid``), ``search_postprocess`` (threshold x min_area, optionally the
    triplet), then, with ``gate``, ``search_gate`` (with a separate classifier's ``gate_probs`` / ``gate_exp`` when
    given).

    With ``youden``, each class's threshold of the largest Youden's index on the OOF pixels (``kitlib.roc``; the Dacon
    building team's choice beside the Dice sweep) joins the threshold grid, so the Dice sweep compares it with the
    others and keeps it where it scores best.

    Returns:
        ``(params, tables)`` as ``search_postprocess``, plus ``tables["gate"]`` (``search_gate``'s table, or None),
        ``tables["roc"]`` and ``tables["youden"]`` (``kitlib.roc``'s tables, or None without ``youden``).
    """
    threshold_grid = parse_grid(thresholds)
    roc = youden_table = None
    if youden:
        roc = pixel_roc(oof_probs, oof_masks, list(preset.target_classes))
        youden_table = youden_thresholds(roc)
        found = [float(t) for t in youden_table["threshold"].dropna()]
        threshold_grid = sorted(set(threshold_grid) | set(found))
    grids = None
    if triplet:
        grids = dict(
            top_thresholds=parse_grid(top_thresholds),
            min_contour_areas=parse_grid(min_contour_areas, int),
            bottom_thresholds=parse_grid(bottom_thresholds),
        )
    params, tables = search_postprocess(
        oof_probs, oof_masks, preset, threshold_grid, parse_grid(min_areas, int), triplet=grids,
        num_workers=num_workers,
    )  # fmt: skip
    tables.update(gate=None, roc=roc, youden=youden_table)
    if gate:
        params, tables["gate"] = search_gate(oof_probs, oof_masks, preset, params, cls_probs, top_k=top_k or None,
                                             gate_probs=gate_probs, gate_exp=gate_exp)  # fmt: skip
    return params, tables


def parse_grid(values: str | Sequence[float] | float, kind: type = float) -> list:
    """A notebook parameter as a list: "0.3,0.4,0.5" or "0.3 0.4", a list, or a single number.

    Raises:
        ValueError: an empty grid or a value that is not a number (named).
    """
    if isinstance(values, str):
        items = [v for v in values.replace(",", " ").split() if v]
    elif isinstance(values, (int, float)):
        items = [values]
    else:
        items = list(values)
    try:
        out = [kind(float(v)) if kind is int else kind(v) for v in items]
    except ValueError as e:
        raise ValueError(f"grid {values!r}: {e}") from e
    if not out:
        raise ValueError(f"empty grid {values!r}")
    return out


def search_crf(
    probs: Any,
    targets: Any,
    images: Any,
    preset: Preset,
    grid: Mapping[str, Sequence[float]],
    params: PostProcess | None = None,
    class_probs: Any = None,
) -> tuple[PostProcess | None, pd.DataFrame]:
    """Score every DenseCRF setting of ``grid`` on these OOF images; keep the best when it beats no CRF.

    Args:
        probs: (n, C, H, W) OOF probabilities of the subset, float or uint8 (p x 255).
        targets: (n, H, W) class indices (multiclass) or (n, K, H, W) masks, the same rows.
        images: (n, H, W, 3) uint8 RGB at the probs' size, the same rows.
        preset: the task (multiclass: mIoU of the argmax; binary / multilabel: Dice of ``params``).
        grid: ``kitlib.crf.CRF_DEFAULTS`` key -> values; every combination is tried (keys left out keep their
            default).
        params: the settings chosen without CRF (binary / multilabel; None: ``default_postprocess``); multiclass:
            None (argmax).
        class_probs: (n, K) the gate's class probs when ``params`` is gated.
    Returns:
        ``(params, table)``: ``params`` with ``crf`` set when the best candidate's score is higher than the score
        without CRF (``meta["crf_search"]``: the subset size, both scores, the candidates tried), else ``params``
        unchanged; ``table`` one row per candidate (the CRF parameters and ``score``) with, first, the row without CRF
        (``crf`` False).
    Raises:
        ValueError: a task a CRF cannot refine; unknown CRF keys; an empty grid; row counts that differ.
    Source:
        Trash-sorting segmentation contest (boostcamp AI Tech): DenseCRF after the ensemble's softmax, parameters
        tuned on validation images.
    """
    if preset.task not in CRF_TASKS:
        raise ValueError(f"preset {preset.name!r} ({preset.task}): a DenseCRF refines segmentation probabilities only")
    unknown = sorted(set(grid) - set(CRF_DEFAULTS))
    if unknown or not grid or not all(len(v) for v in grid.values()):
        raise ValueError(f"CRF grid {dict(grid)}: needs values for keys of {sorted(CRF_DEFAULTS)}; unknown: {unknown}")
    if not len(probs) == len(targets) == len(images):
        raise ValueError(f"{len(probs)} probs, {len(targets)} targets and {len(images)} images: one per row")
    if preset.task != "multiclass" and params is None:
        params = default_postprocess(preset)
    base = score_oof(probs, targets, preset, params, class_probs).overall
    rows = [{**{k: None for k in grid}, "crf": False, "score": base}]
    for values in itertools.product(*grid.values()):
        crf = dict(zip(grid, values, strict=True))
        trial = PostProcess(crf=crf) if params is None else dataclasses.replace(params, crf=crf)
        score = score_oof(probs, targets, preset, trial, class_probs, images=images).overall
        rows.append({**crf, "crf": True, "score": score})
    table = pd.DataFrame(rows)
    best = table.iloc[1:]["score"].idxmax()
    if not table.loc[best, "score"] > base:
        return params, table
    crf = {k: table.loc[best, k] for k in grid}
    meta = {**(params.meta if params is not None else {"method": "argmax"}),
            "crf_search": {"n_images": len(probs), "score_without": base, "score": float(table.loc[best, "score"]),
                           "candidates": len(table) - 1}}  # fmt: skip
    chosen = PostProcess(crf=crf) if params is None else dataclasses.replace(params, crf=crf)
    return dataclasses.replace(chosen, meta=meta), table


def search_crf_from_params(
    oof_probs: Any,
    targets: Any,
    df: pd.DataFrame,
    preset: Preset,
    n_images: int,
    grid: Mapping[str, str | Sequence[float]],
    params: PostProcess | None = None,
    class_probs: Any = None,
    seed: int = 0,
) -> tuple[PostProcess | None, pd.DataFrame]:
    """``search_crf`` on ``n_images`` OOF rows drawn at random (``seed``), their images read at the probs' size.

    Args:
        oof_probs: (N, C, H, W), rows in the order of ``df`` (``folds.csv``); a memmap is read only at the drawn rows.
        targets: the truth, the same rows (a memmap, ``kitlib.targets.TargetMasks``).
        df: the experiment's table (``image_path``), the same rows.
        n_images: rows drawn (all when >= N).
        grid: as ``search_crf``; values may be comma-separated text (``parse_grid``).
        params, class_probs: as ``search_crf`` (class_probs (N, K) for every row).
    Returns:
        As ``search_crf``; ``meta["crf_search"]["image_ids"]`` lists the rows drawn.
    """
    n = len(oof_probs)
    if len(df) != n:
        raise ValueError(f"the table has {len(df)} rows, the OOF {n}")
    rows = np.sort(np.random.default_rng(seed).permutation(n)[: max(1, min(int(n_images), n))])
    size = tuple(oof_probs.shape[-2:])
    images = np.stack([read_image_at(df["image_path"].iloc[i], size) for i in rows])
    heads = None if class_probs is None else np.asarray(class_probs)[rows]
    parsed = {k: parse_grid(v, int if k == "iterations" else float) for k, v in grid.items()}
    chosen, table = search_crf(np.asarray(oof_probs[rows]), np.asarray(targets[rows]), images, preset, parsed, params,
                               heads)  # fmt: skip
    if chosen is not None and chosen.crf is not None:
        chosen.meta["crf_search"]["image_ids"] = df["image_id"].astype(str).iloc[rows].tolist()
    return chosen, table
