"""The OOF stage's outputs (``notebooks/20_oof.py``, ``30_ensemble.py``): ``cv.json`` and ``postprocess.json``, a
classification experiment's per-class report (``class_report.csv``) and confusion matrix, and a separate presence
classifier's OOF lined up with another experiment's rows for the gate search.

The pieces the stage runs live in their own modules: gathering the folds (``kitlib.predictions``), the experiment's
table and truth (``kitlib.experiment``), CV scores (``kitlib.scoring``), the post-processing search
(``kitlib.search``, ``kitlib.gate``) and the plots (``kitlib.plots``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics

from kitlib._private import listing, to_numpy
from kitlib.io import project_path, write_csv, write_json
from kitlib.postprocess import PostProcess
from kitlib.predictions import gather_oof, read_gathered
from kitlib.presets import Preset
from kitlib.stages import TrainConfig

__all__ = [
    "CLASS_REPORT_FILE",
    "classification_report",
    "confusion_table",
    "gate_class_probs",
    "save_cv",
    "save_presence_cv",
]

#: A classification experiment's per-class report beside its ``cv.json``.
CLASS_REPORT_FILE = "class_report.csv"
#: ``confusion_table``'s ``normalize``: counts, or each true class's row divided by its images.
NORMALIZE = (None, "true")

log = logging.getLogger(__name__)


def gate_class_probs(exp_dir: str | os.PathLike, image_ids: Sequence[str]) -> np.ndarray:
    """A separate presence classifier's OOF probabilities, rows in the order of ``image_ids`` (another experiment's
    OOF), for ``search_gate(gate_probs=...)``.

    The classifier's folds are gathered first (``gather_oof``); its split may differ from the segmentation
    experiment's: each row is still predicted by a model that did not train on that image.

    Args:
        exp_dir: ``artifacts/<gate_exp>/`` of a presence classifier.
        image_ids: the ids to return rows for.
    Returns:
        (len(image_ids), K) float32 in [0, 1].
    Raises:
        FileNotFoundError: as ``gather_oof`` (folds not trained).
        ValueError: not a presence classifier (its OOF is not (N, K)); ids it has no OOF row for (named).
    """
    exp_dir = project_path(exp_dir)
    gather_oof(exp_dir)
    probs, ids, _ = read_gathered(exp_dir)
    config_path = exp_dir / "fold0" / "config.json"
    config = TrainConfig.load(config_path) if config_path.is_file() else None
    if probs.ndim != 2 or config is None or config.model_preset.task != "presence":
        raise ValueError(f"{exp_dir}: not a presence classifier (oof_probs.npy is {probs.shape}); train it with "
                         f"notebooks/10_train.py -p arch classifier")  # fmt: skip
    row_of = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in map(str, image_ids) if i not in row_of]
    if missing:
        raise ValueError(f"{exp_dir}: no OOF row for {len(missing)} id(s): {listing(missing)}")
    return np.asarray(probs, dtype=np.float32)[[row_of[str(i)] for i in image_ids]]


def _predicted_labels(probs_or_pred: Any, labels: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) predicted labels (the argmax of (N, C) probs, ties to the lower class, or (N,) labels as given) and the
    (N,) true labels, checked."""
    p, y = to_numpy(probs_or_pred), to_numpy(labels)
    pred = p.argmax(axis=1) if p.ndim == 2 else p
    if pred.ndim != 1 or y.shape != pred.shape or y.dtype.kind not in "iu":
        raise ValueError(f"need (N, C) probs or (N,) predictions and (N,) integer labels, got {p.shape} and "
                         f"{y.dtype} {y.shape}")  # fmt: skip
    if p.ndim == 2 and p.shape[1] != n_classes:
        raise ValueError(f"probs have {p.shape[1]} classes, {n_classes} class names given")
    bad = (y < 0) | (y >= n_classes) | (pred < 0) | (pred >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"row {i}: label {int(y[i])} / prediction {int(pred[i])} outside [0, {n_classes})")
    return pred.astype(np.int64), y.astype(np.int64)


def classification_report(probs_or_pred: Any, labels: Any, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, their macro and weighted means, and the accuracy.

    Computed with ``sklearn.metrics.precision_recall_fscore_support`` (``zero_division=0``: a class never predicted
    has precision 0).

    Args:
        probs_or_pred: (N, C) class probabilities (the argmax is taken) or (N,) predicted labels.
        labels: (N,) integer true labels in [0, C).
        classes: the C class names.
    Returns:
        DataFrame with columns ``class``, ``precision``, ``recall``, ``f1``, ``support`` (images of the class): one
        row per class, then ``"macro avg"``, ``"weighted avg"`` (weighted by support) and ``"accuracy"`` (in the
        ``f1`` column, as in sklearn's report; precision and recall NaN), all with support N.
    Raises:
        ValueError: shapes that do not fit; a label or prediction outside [0, C) (row named).
    """
    classes = [str(c) for c in classes]
    pred, y = _predicted_labels(probs_or_pred, labels, len(classes))
    ks = list(range(len(classes)))
    p, r, f, n = metrics.precision_recall_fscore_support(y, pred, labels=ks, zero_division=0)
    rows = [(c, p[k], r[k], f[k], int(n[k])) for k, c in enumerate(classes)]
    for average in ("macro", "weighted"):
        pa, ra, fa, _ = metrics.precision_recall_fscore_support(y, pred, labels=ks, average=average, zero_division=0)
        rows.append((f"{average} avg", pa, ra, fa, len(y)))
    rows.append(("accuracy", np.nan, np.nan, float(np.mean(pred == y)), len(y)))
    table = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])
    return table.astype({"precision": np.float64, "recall": np.float64, "f1": np.float64})


def confusion_table(
    probs_or_pred: Any, labels: Any, classes: Sequence[str], normalize: str | None = None
) -> pd.DataFrame:
    """The confusion matrix (``sklearn.metrics.confusion_matrix``): rows the true class, columns the predicted one.

    Args:
        probs_or_pred, labels, classes: as ``classification_report``.
        normalize: None for counts (int64); "true" divides each row by the images of its true class (float64, rows
            sum to 1, a class without images is a row of 0).
    Returns:
        (C, C) DataFrame indexed and labelled by the class names.
    Raises:
        ValueError: as ``classification_report``; an unknown ``normalize`` (the options are named).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; options: {list(NORMALIZE)}")
    classes = [str(c) for c in classes]
    pred, y = _predicted_labels(probs_or_pred, labels, len(classes))
    cm = metrics.confusion_matrix(y, pred, labels=list(range(len(classes))), normalize=normalize)
    return pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def save_cv(
    out_dir: str | os.PathLike,
    preset: Preset,
    raw: pd.DataFrame,
    post: pd.DataFrame | None = None,
    params: PostProcess | None = None,
    extra: dict[str, Any] | None = None,
    report: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/cv.json`` and ``out_dir/postprocess.json`` (and ``class_report.csv``) and return the CV summary.

    Args:
        raw: the CV table (``kitlib.scoring.score_oof``) at probability 0.5 (argmax for multiclass / classification).
        post: the CV table with the chosen post-processing (None: same as ``raw``).
        params: the chosen ``PostProcess`` (binary/multilabel); None writes ``{"decode": "argmax"}`` for multiclass
            segmentation and removes any ``postprocess.json`` for classification.
        extra: more keys for cv.json.
        report: a classification experiment's ``classification_report``, written as ``class_report.csv``; None
            removes a stale one.
    Returns:
        cv.json: ``{"metric", "cv", "cv_postprocessed", "per_class": {class: {"cv", "cv_postprocessed", "n"}},
        "postprocess": method, "class_report": file name or None, ...extra}``; scores NaN -> null.
    """
    out_dir = project_path(out_dir)
    post = raw if post is None else post
    metric = raw.columns[1]

    def num(v: Any) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    r, p = raw.set_index("class"), post.set_index("class")
    per_class = {
        str(c): {"cv": num(r.loc[c, metric]), "cv_postprocessed": num(p.loc[c, metric]), "n": int(r.loc[c, "n"])}
        for c in r.index
        if c != "overall"
    }
    if params is not None:
        params.to_json(out_dir / "postprocess.json")
        method = params.meta.get("method", "threshold")
    elif preset.is_segmentation:
        write_json(out_dir / "postprocess.json", {"decode": "argmax", "task": preset.task})
        method = "argmax"
    else:
        (out_dir / "postprocess.json").unlink(missing_ok=True)
        method = "none"
    summary = {
        "metric": metric,
        "cv": num(r.loc["overall", metric]),
        "cv_postprocessed": num(p.loc["overall", metric]),
        "per_class": per_class,
        "postprocess": method,
        "class_report": _save_report(out_dir, report),
        **(extra or {}),
    }
    write_json(out_dir / "cv.json", summary)
    return summary


def _save_report(out_dir: Path, report: pd.DataFrame | None) -> str | None:
    """Write ``class_report.csv`` (or remove a stale one); returns its name, or None."""
    if report is None:
        (out_dir / CLASS_REPORT_FILE).unlink(missing_ok=True)
        return None
    write_csv(out_dir / CLASS_REPORT_FILE, report)
    return CLASS_REPORT_FILE


def save_presence_cv(out_dir: str | os.PathLike, report: pd.DataFrame, extra: dict[str, Any] | None = None) -> dict:
    """Write a presence classifier's ``out_dir/cv.json`` from ``presence_report`` and remove any ``postprocess.json``
    (its probabilities gate another experiment's masks; it submits nothing itself).

    Returns:
        cv.json: ``{"metric": "presence_f1", "cv": mean F1 over classes, "cv_postprocessed": the same, "accuracy":
        accuracy at 0.5 over (image, class) pairs, "per_class": {class: report row}, "postprocess", ...extra}``;
        NaN -> null.
    """
    out_dir = project_path(out_dir)
    table = report.set_index("class")

    def plain(row: pd.Series) -> dict[str, Any]:
        values = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.to_dict().items()}
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in values.items()}

    overall = plain(table.loc["overall"])
    summary = {
        "metric": "presence_f1",
        "cv": overall["f1"],
        "cv_postprocessed": overall["f1"],
        "accuracy": overall["accuracy@0.5"],
        "per_class": {str(c): plain(row) for c, row in table.drop(index="overall").iterrows()},
        "postprocess": "none: a gate for another experiment (20_oof gate_exp)",
        **(extra or {}),
    }
    write_json(out_dir / "cv.json", summary)
    (out_dir / "postprocess.json").unlink(missing_ok=True)
    return summary
