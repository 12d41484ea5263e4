"""Scores against the truth, one implementation for every stage: validation during training (``kitlib.engine``), a
fold's ``scores.json`` (``kitlib.train``), ``20_oof``'s and ``30_ensemble``'s CV and every candidate of the
post-processing search.

``Scorer`` accumulates additive statistics of decoded predictions (masks, labels) batch by batch or chunk by chunk,
so DDP ranks add theirs up exactly (``state``) and a memmap of several GB is never loaded whole:

- binary / multilabel (and the presence task, whose (N, K) predictions count as one-pixel masks): per class, the sum
  of the per-image Dice and the pairs counted (a pair with both masks empty scores the preset's
  ``dice_empty_score``, or is skipped when that is None: the Dacon rule), wrong pixels and pixels;
- multiclass: the confusion matrix (``kitlib.metrics.ConfusionMatrix``): IoU per class, mIoU, pixel accuracy;
- classification: the confusion matrix over labels: accuracy, and per class the recall.

``score_oof`` decodes probabilities (``kitlib.postprocess.decode``: probability 0.5, or a ``PostProcess``) a chunk of
rows at a time and scores them: its ``Scores`` hold the per-class table of the CV report and the summary of a fold's
``scores.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kitlib._private import chunk_rows, row_slices, to_numpy
from kitlib.metrics import ConfusionMatrix, dice_per_image_class
from kitlib.postprocess import PostProcess, decode
from kitlib.presets import Preset

__all__ = ["Scorer", "Scores", "score_oof", "overall"]


class Scorer:
    """Additive statistics of predictions against the truth for one preset's task (module docstring).

    Args:
        preset: what is scored: its ``task``, target classes and ``dice_empty_score``.
    """

    def __init__(self, preset: Preset):
        self.preset = preset
        if self._uses_confusion:
            self.cm = ConfusionMatrix(preset.num_classes)
        k = len(preset.target_classes)
        self.sums = np.zeros((4, k), dtype=np.float64)  # dice sum, pairs counted, wrong pixels, pixels (per class)

    @property
    def _uses_confusion(self) -> bool:
        return self.preset.task in ("multiclass", "classification")

    def update(self, pred: Any, true: Any) -> None:
        """Add a batch or chunk of decoded predictions.

        Args:
            pred: binary/multilabel (n, K, H, W) {0, 1} or bool masks; presence (n, K) bool; multiclass (n, H, W)
                class indices; classification (n,) labels.
            true: the truth of the same shape: masks {0, 1} (float masks > 0.5 count as 1), labels.
        Raises:
            ValueError: shapes that differ (as ``kitlib.metrics``).
        """
        pred, true = np.asarray(to_numpy(pred)), np.asarray(to_numpy(true))
        if self._uses_confusion:
            self.cm.update(pred, true)
            return
        if self.preset.task == "presence":  # (n, K): each (image, class) is a one-pixel mask
            pred, true = pred[..., None, None], true[..., None, None]
        true = true > 0.5 if true.dtype.kind == "f" else true != 0
        pred = pred != 0 if pred.dtype != np.bool_ else pred
        dice = dice_per_image_class(pred, true, empty_score=self.preset.dice_empty_score)
        valid = ~np.isnan(dice)
        self.sums[0] += np.where(valid, dice, 0.0).sum(axis=0)
        self.sums[1] += valid.sum(axis=0)
        self.sums[2] += np.count_nonzero(pred != true, axis=(0, 2, 3))
        self.sums[3] += np.prod(true.shape[2:]) * true.shape[0]

    def state(self) -> np.ndarray:
        """The statistics as one flat float64 array (to all-reduce over DDP ranks)."""
        if self._uses_confusion:
            return self.cm.hist.astype(np.float64).ravel()
        return self.sums.ravel().copy()

    def _parts(self, state: np.ndarray | None) -> tuple[np.ndarray | None, ConfusionMatrix | None]:
        s = self.state() if state is None else np.asarray(state, dtype=np.float64)
        if not self._uses_confusion:
            return s.reshape(self.sums.shape), None
        cm = ConfusionMatrix(self.preset.num_classes)
        cm.hist = s.reshape(cm.hist.shape).round().astype(np.int64)
        return None, cm

    def result(self, state: np.ndarray | None = None) -> dict[str, float]:
        """The validation scores (history columns): ``{"dice", "pixel_error"}`` for masks and presence,
        ``{"miou", "pixel_accuracy"}`` for multiclass, ``{"accuracy"}`` for classification.

        Args:
            state: ``state()`` summed over ranks; None: this process's statistics.
        """
        sums, cm = self._parts(state)
        if cm is not None:
            if self.preset.task == "classification":
                return {"accuracy": _ratio(np.trace(cm.hist), cm.hist.sum())}
            return {"miou": float(cm.miou()), "pixel_accuracy": float(cm.pixel_accuracy())}
        return {"dice": _ratio(sums[0].sum(), sums[1].sum()), "pixel_error": _ratio(sums[2].sum(), sums[3].sum())}

    def table(self, state: np.ndarray | None = None) -> pd.DataFrame:
        """The CV report: one row per class, then ``"overall"``; columns ``class``, the metric, ``n``.

        - dice (binary, multilabel, presence): mean Dice over the images per class, overall the mean over all
          (image, class) pairs; ``n`` the pairs counted.
        - miou: IoU per class (background included), overall the mIoU; ``n`` the true pixels.
        - accuracy: recall per class (accuracy on the images of that class), overall the accuracy; ``n`` images.
        """
        sums, cm = self._parts(state)
        if cm is not None and self.preset.task == "classification":
            hist = cm.hist
            rows = [(name, _ratio(hist[c, c], hist[c].sum()), int(hist[c].sum()))
                    for c, name in enumerate(self.preset.classes)]  # fmt: skip
            rows.append(("overall", _ratio(np.trace(hist), hist.sum()), int(hist.sum())))
            return pd.DataFrame(rows, columns=["class", "accuracy", "n"])
        if cm is not None:
            iou, true_pixels = cm.iou(), cm.hist.sum(axis=1)
            rows = [(name, float(iou[c]), int(true_pixels[c])) for c, name in enumerate(self.preset.classes)]
            rows.append(("overall", float(cm.miou()), int(cm.total)))
            return pd.DataFrame(rows, columns=["class", "miou", "n"])
        rows = [(name, _ratio(sums[0, c], sums[1, c]), int(sums[1, c]))
                for c, name in enumerate(self.preset.target_classes)]  # fmt: skip
        rows.append(("overall", _ratio(sums[0].sum(), sums[1].sum()), int(sums[1].sum())))
        return pd.DataFrame(rows, columns=["class", "dice", "n"])

    def summary(self, n_images: int, state: np.ndarray | None = None) -> dict[str, Any]:
        """A fold's ``scores.json``: masks ``{"dice", "dice_per_class", "pixel_error"}``, presence
        ``{"presence_accuracy", "accuracy_per_class"}``, multiclass ``{"miou", "pixel_accuracy"}``, classification
        ``{"accuracy"}``; plus ``"n_images"``."""
        out: dict[str, Any] = dict(self.result(state))
        sums, _ = self._parts(state)
        classes = self.preset.target_classes
        if self.preset.task == "presence":
            accuracy = 1.0 - sums[2] / np.maximum(sums[3], 1)
            out = {"presence_accuracy": 1.0 - out["pixel_error"],
                   "accuracy_per_class": dict(zip(classes, map(float, accuracy), strict=True))}  # fmt: skip
        elif sums is not None:
            per_class = [_ratio(sums[0, c], sums[1, c]) for c in range(len(classes))]
            out = {"dice": out["dice"], "dice_per_class": dict(zip(classes, per_class, strict=True)),
                   "pixel_error": out["pixel_error"]}  # fmt: skip
        out["n_images"] = int(n_images)
        return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


@dataclass
class Scores:
    """What ``score_oof`` returns.

    Attributes:
        table: the CV report (``Scorer.table``): per class and overall.
        summary: a fold's ``scores.json`` (``Scorer.summary``).
    """

    table: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def overall(self) -> float:
        """The overall score of the table (its ``"overall"`` row)."""
        return overall(self.table)


def overall(table: pd.DataFrame) -> float:
    """The ``"overall"`` row's score of a CV report."""
    return float(table.loc[table["class"] == "overall"].iloc[0, 1])


def score_oof(
    probs: Any,
    targets: Any,
    preset: Preset,
    postprocess: PostProcess | None = None,
    class_probs: Any = None,
    threshold: float = 0.5,
    chunk_size: int | None = None,
    images: Any = None,
) -> Scores:
    """Decode probabilities and score them against the truth, a chunk of rows at a time.

    Args:
        probs: binary/multilabel (N, K, H, W) uint8 (p x 255) or float; multiclass (N, C, H, W); classification (N, C);
            presence (N, K) float. Rows in the order of ``targets``; memmaps are streamed.
        targets: binary/multilabel (N, K, H, W) {0, 1} masks; multiclass (N, H, W) class indices; classification
            (N,) labels; presence (N, K) bool. Anything sliceable by rows (a memmap, ``kitlib.targets.TargetMasks``).
        preset: what is scored (``kitlib.presets``; a presence task for a presence classifier).
        postprocess: binary/multilabel: these settings per image instead of ``threshold``.
        class_probs: (N, K) image-level class probabilities for a gated ``postprocess`` (a head, or a presence
            classifier).
        threshold: foreground where p > threshold (binary, multilabel, presence).
        chunk_size: rows per chunk; None for about 16 MB of probs.
        images: (N, H, W, 3) uint8 RGB at the probs' size, rows in the same order, for a ``postprocess`` with a
            ``crf`` (``kitlib.postprocess.decode``).
    Returns:
        ``Scores`` (the CV table and the ``scores.json`` summary).
    Raises:
        ValueError: row counts or per-row shapes that differ (both named).
    """
    p = to_numpy(probs)
    n = len(p)
    if n != len(targets):
        raise ValueError(f"probs have {len(p)} rows, the targets {len(targets)}")
    _check_shapes(p, targets, preset)
    scorer = Scorer(preset)
    for sl in row_slices(n, chunk_rows(p.shape, p.dtype.itemsize, chunk_size)):
        heads = None if class_probs is None else np.asarray(class_probs[sl])
        ims = None if images is None else images[sl]
        scorer.update(decode(np.asarray(p[sl]), preset, postprocess, heads, threshold, ims), np.asarray(targets[sl]))
    return Scores(table=scorer.table(), summary=scorer.summary(n))


def _check_shapes(p: np.ndarray, targets: Any, preset: Preset) -> None:
    shape: Sequence[int] = tuple(getattr(targets, "shape", ()))
    if preset.task == "multiclass" and shape and tuple(shape) != (p.shape[0], *p.shape[2:]):
        raise ValueError(f"labels shape {tuple(shape)} != probs {tuple(p.shape)} without its class axis")
    if preset.task in ("binary", "multilabel", "presence") and shape and tuple(shape) != tuple(p.shape):
        raise ValueError(f"masks shape {tuple(shape)} != probs shape {tuple(p.shape)}")
