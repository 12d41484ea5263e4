"""The image-level class gate: per-class thresholds read off the out-of-fold precision-recall curve, the search that
keeps a gate only when it raises the OOF score, and the report of a presence classifier.

- ``precision_recall_table`` / ``classifier_thresholds``: the cut of each class's image-level probabilities
  (``class_probs > threshold`` keeps the class, as pudae's ``cls_score > cls_thres``; Understanding Clouds 1st place).
- ``search_gate``: adds a gate on top-K pixel probabilities, a classification head, or a separate presence classifier
  (``kitlib.postprocess`` applies it) to a ``PostProcess`` when it raises the OOF Dice.
- ``presence_report``: precision, recall and F1 of a presence classifier's OOF at its gate thresholds.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kitlib._private import to_numpy
from kitlib.formats import class_presence
from kitlib.postprocess import PostProcess, combine_class_probs, scale_top_k, top_k_class_probs
from kitlib.presets import Preset
from kitlib.scoring import score_oof

__all__ = ["classifier_thresholds", "precision_recall_table", "presence_report", "search_gate"]

log = logging.getLogger(__name__)


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


def search_gate(
    oof_probs: Any,
    oof_masks: Any,
    preset: Preset,
    params: PostProcess,
    cls_probs: Any = None,
    top_k: int | None = None,
    head_weights: Sequence[float] = (0.5,),
    criterion: str = "f1",
    chunk_size: int | None = None,
    gate_probs: Any = None,
    gate_exp: str = "",
) -> tuple[PostProcess, pd.DataFrame]:
    """Add an image-level class gate to ``params`` when it raises the OOF score (Understanding Clouds 1st place;
    Severstal top solutions for the separate classifier).

    The gate's class probabilities are the mean of the top-K pixel probabilities (``top_k_class_probs``; K = 17,500
    at 350 x 525 scaled to the OOF resolution by default), alone or averaged with the classification head's
    (``cls_probs``, one candidate per ``head_weights``); with ``gate_probs``, also a separate presence classifier's
    probabilities alone and averaged with the top-K ones. Per-class thresholds are read off the OOF
    precision-recall curve (``classifier_thresholds``, ``criterion``); each candidate is tried with and without
    forcing the most probable class on (``force_one_class``). Every candidate is scored on the same OOF
    (``kitlib.scoring.score_oof``); the best one is kept only if it beats ``params`` without a gate.

    Args:
        oof_probs: (N, K, H, W) uint8 or float probs; oof_masks: (N, K, H, W) {0, 1}.
        preset: binary or multilabel.
        params: the binarisation chosen by ``search_postprocess``.
        cls_probs: (N, K) head probs (``oof_cls_probs.npy``), or None.
        top_k: K; None scales 17,500 at 350 x 525 to (H, W).
        head_weights: weights of the head (or of the separate classifier) in the averaged candidates.
        criterion: ``classifier_thresholds`` criterion ("f1", "precision>=0.9", ...).
        gate_probs: (N, K) OOF probs of a separate presence classifier (``gate_class_probs``), rows as ``oof_probs``.
        gate_exp: that classifier's experiment, saved as ``PostProcess.gate_exp`` when one of its candidates wins.
    Returns:
        ``(params, table)``: the chosen ``PostProcess`` (its ``meta["gate"]`` says which candidate won) and one row per
        candidate: ``gate`` (description), ``head_weight``, ``force_one_class``, ``dice`` (overall OOF score).
    Raises:
        ValueError: a preset that is not binary/multilabel; ``gate_probs`` without ``gate_exp`` or of another shape
            than (N, K).
    """
    if preset.task not in ("binary", "multilabel"):
        raise ValueError(f"preset {preset.name!r} ({preset.task}): no class gate")
    k = top_k or scale_top_k(tuple(oof_probs.shape[-2:]))
    labels = class_presence(oof_masks, chunk_size=chunk_size)
    top = top_k_class_probs(oof_probs, k, chunk_size=chunk_size)
    base = dataclasses.replace(params, classifier_threshold=None, force_one_class=False, top_k=None, head_weight=None,
                               gate_exp=None)  # fmt: skip
    rows = [("none", None, False, score_oof(oof_probs, oof_masks, preset, base, chunk_size=chunk_size).overall)]
    # (name, gate probs, evaluation class probs, top_k, head_weight, gate_exp)
    candidates = [(f"top-{k}", top, None, k, None, None)]
    for source, probs, exp in (("head", cls_probs, None), (f"classifier {gate_exp}", gate_probs, gate_exp)):
        if probs is None:
            continue
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != top.shape:
            raise ValueError(f"{source} probs must be (N, K) = {top.shape}, got {probs.shape}")
        if exp is not None:
            if not gate_exp:
                raise ValueError("gate_probs needs gate_exp, the classifier's experiment, for 40_submit")
            candidates.append((source, probs, probs, None, None, exp))
        candidates += [(f"top-{k} + {source} x {w:g}", combine_class_probs(top, probs, w), probs, k, float(w), exp)
                       for w in head_weights if w > 0]  # fmt: skip
    best, best_score = base, rows[0][3]
    for name, probs_c, eval_probs, cand_k, weight, exp in candidates:
        thresholds = classifier_thresholds(probs_c, labels, criterion)
        for force in (False, True):
            cand = dataclasses.replace(
                base, classifier_threshold=list(thresholds), force_one_class=force, top_k=cand_k, head_weight=weight,
                gate_exp=exp,
            )  # fmt: skip
            score = score_oof(oof_probs, oof_masks, preset, cand, eval_probs, chunk_size=chunk_size).overall
            rows.append((name, weight, force, score))
            if score > best_score:
                best, best_score = cand, score
    table = pd.DataFrame(rows, columns=["gate", "head_weight", "force_one_class", "dice"])
    winner = table.loc[table["dice"].idxmax()]
    meta = {**params.meta, "gate": str(winner["gate"]) if best is not base else "none", "gate_dice": best_score}
    return dataclasses.replace(best, meta=meta), table


def presence_report(class_probs: Any, labels: Any, classes: Sequence[str], criterion: str = "f1") -> pd.DataFrame:
    """How well a presence classifier's OOF probabilities tell which classes an image has.

    Args:
        class_probs: (N, K) probabilities; labels: (N, K) {0, 1} or bool (``kitlib.formats.class_presence``).
        classes: the K class names.
        criterion: how the gate threshold is picked (``classifier_thresholds``).
    Returns:
        DataFrame, one row per class then ``"overall"`` (means over classes; accuracy over all pairs): ``class``,
        ``n_positive``, ``accuracy@0.5``, ``threshold`` (by ``criterion``), and ``precision``, ``recall``, ``f1`` at
        that threshold.
    Raises:
        ValueError: shapes that differ or are not (N, K); K != len(classes).
    """
    probs, y = np.asarray(class_probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if probs.ndim != 2 or probs.shape != y.shape or probs.shape[1] != len(classes):
        raise ValueError(f"class_probs {probs.shape} and labels {y.shape} must be (N, {len(classes)})")
    thresholds = classifier_thresholds(probs, y, criterion)
    rows = []
    for k, name in enumerate(classes):
        kept = probs[:, k] > thresholds[k]
        tp = int(np.sum(kept & y[:, k]))
        precision = tp / kept.sum() if kept.any() else float("nan")
        recall = tp / y[:, k].sum() if y[:, k].any() else float("nan")
        f1 = 2 * tp / (kept.sum() + y[:, k].sum()) if (kept.sum() + y[:, k].sum()) else float("nan")
        acc = float(np.mean((probs[:, k] > 0.5) == y[:, k]))
        rows.append((str(name), int(y[:, k].sum()), acc, float(thresholds[k]), precision, recall, f1))
    columns = ["class", "n_positive", "accuracy@0.5", "threshold", "precision", "recall", "f1"]
    table = pd.DataFrame(rows, columns=columns)
    overall = table.drop(columns="class").mean(numeric_only=True)
    overall["n_positive"], overall["accuracy@0.5"] = int(y.sum()), float(np.mean((probs > 0.5) == y))
    overall["threshold"] = np.nan
    table.loc[len(table)] = {"class": "overall", **overall.to_dict()}
    return table.astype({"n_positive": np.int64})
