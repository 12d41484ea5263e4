"""Competition metrics, numpy-first: Dice (Understanding Clouds, Severstal, Dacon), mIoU (trash contest), accuracy.

Every function takes numpy arrays (``np.memmap`` included) or torch tensors, which are converted at entry with
``.detach().cpu().numpy()``. Large inputs are scored in chunks of images, so a (5546, 4, 350, 525) uint8 memmap of
out-of-fold masks is never loaded whole.

- ``dice_clouds``: Kaggle's Understanding Clouds and Severstal score, the mean over (image, class) pairs of
  Dice = 2|X∩Y| / (|X| + |Y|), 1 when both masks are empty. ``empty_score=None`` drops those pairs instead, as the
  Dacon building contest's ``calculate_dice_scores`` does.
- ``miou`` / ``ConfusionMatrix``: one confusion matrix over the whole dataset, IoU = diag / (row + col - diag) per
  class, classes absent from both truth and prediction excluded (NaN, then ``nanmean``). This is the evaluation
  code of the trash-segmentation contest (``_fast_hist`` / ``label_accuracy_score``, from wkentaro/pytorch-fcn
  ``torchfcn/utils.py``), not a mean of per-image IoUs.
- ``pixel_accuracy`` / ``pixel_error``: fraction of right / wrong pixels (ISBI 2012 "pixel error").
- ``accuracy``: image classification (Cassava); takes labels or (N, C) logits / probs.

``METRICS`` names them as presets do (``Preset.metric``); ``get_metric`` returns a ``Metric`` that knows whether
higher is better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kitlib._private import chunk_rows, lookup, row_slices, to_numpy

__all__ = [
    "dice_per_image_class",
    "dice_per_class",
    "dice_clouds",
    "ConfusionMatrix",
    "iou_per_class",
    "miou",
    "pixel_accuracy",
    "pixel_error",
    "accuracy",
    "Metric",
    "METRICS",
    "get_metric",
]

# Masks with at least this many pixels are counted one (image, class) pair at a time: np.count_nonzero over one
# contiguous mask is several times faster than a sum over an axis; smaller masks are counted in one vectorised call.
_LOOP_MIN_PIXELS = 4096


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} shape {a.shape} != {names[1]} shape {b.shape}")


def _check_integer(x: np.ndarray, name: str) -> None:
    if x.dtype.kind not in "biu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype} (argmax the logits first)")


# --------------------------------------------------------------------------------------------------------- Dice


def _binary_chunk(x: np.ndarray, name: str, offset: int) -> np.ndarray:
    """(n, K, H, W) chunk -> bool, after checking that every value is 0 or 1."""
    kind = x.dtype.kind
    if kind == "b":
        return x
    if kind not in "iuf":
        raise TypeError(f"{name} must be bool, integer or float {{0, 1}} masks, got dtype {x.dtype}")
    if kind == "u":
        ok = x.max() <= 1
    elif kind == "i":
        ok = x.min() >= 0 and x.max() <= 1
    else:
        ok = not np.any((x != 0) & (x != 1))  # NaN fails here too
    if not ok:
        where = tuple(int(i) for i in np.argwhere((x != 0) & (x != 1))[0])
        index = (where[0] + offset, *where[1:])
        raise ValueError(
            f"{name} must be binary {{0, 1}} masks (threshold the probs first); found {x[where].item()!r} at "
            f"[image, class, y, x] = {list(index)}"
        )
    if x.dtype.itemsize == 1:
        return x.view(np.bool_)  # 0/1 bytes are valid bools: no copy
    return x != 0


def _count_per_pair(b: np.ndarray) -> np.ndarray:
    """(n, K, H, W) bool -> (n, K) int64 foreground pixel counts."""
    n, k = b.shape[:2]
    flat = b.reshape(n * k, -1)
    if flat.shape[1] >= _LOOP_MIN_PIXELS:
        counts = np.fromiter((np.count_nonzero(row) for row in flat), dtype=np.int64, count=n * k)
    else:
        counts = np.count_nonzero(flat, axis=1).astype(np.int64)
    return counts.reshape(n, k)


def _check_masks(pred_masks: Any, true_masks: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, true = to_numpy(pred_masks), to_numpy(true_masks)
    _check_same_shape(pred, true, ("pred_masks", "true_masks"))
    if pred.ndim != 4 or pred.size == 0:
        raise ValueError(
            f"masks must be non-empty (N, K, H, W) arrays, got shape {pred.shape} (one class: add an axis, "
            "masks[:, None])"
        )
    return pred, true


def dice_per_image_class(
    pred_masks: Any, true_masks: Any, empty_score: float | None = 1.0, chunk_size: int | None = None
) -> np.ndarray:
    """Dice of every (image, class) pair: the building block of the Dice metrics.

    Dice = 2|X∩Y| / (|X| + |Y|) over the pixels of one image and class. Pixel counts are taken a chunk of images
    at a time, so a ``np.memmap`` is read piece by piece and never loaded whole.

    Args:
        pred_masks: (N, K, H, W) bool, integer or float in {0, 1}; a numpy array, memmap or torch tensor.
        true_masks: same shape, same rules.
        empty_score: Dice of a pair whose masks are both empty: 1.0 on Kaggle (Understanding Clouds, Severstal);
            None gives NaN, so that the means skip the pair, as the Dacon building contest's scorer does.
        chunk_size: images per chunk; None for about 16 M elements per chunk (22 images of 4 x 350 x 525).
    Returns:
        (N, K) float64 in [0, 1] (NaN for both-empty pairs when ``empty_score`` is None).
    Raises:
        ValueError: shapes differ (both are named), not 4-D or empty, a value outside {0, 1} (its index is named),
            ``chunk_size`` < 1.
        TypeError: a dtype that is not bool, integer or float.
    Source:
        Understanding Clouds / Severstal evaluation pages ("the mean Dice coefficient over each <ImageId, Label>
        pair ... defined as 1 when both X and Y are empty"); Dacon ``calculate_dice_scores`` returns None for a
        pair with both masks empty and averages the rest.
    """
    pred, true = _check_masks(pred_masks, true_masks)
    n, k = pred.shape[:2]
    inter = np.empty((n, k), dtype=np.int64)
    total = np.empty((n, k), dtype=np.int64)
    for sl in row_slices(n, chunk_rows(pred.shape, 1, chunk_size)):
        p = _binary_chunk(np.asarray(pred[sl]), "pred_masks", sl.start)
        t = _binary_chunk(np.asarray(true[sl]), "true_masks", sl.start)
        inter[sl] = _count_per_pair(p & t)
        total[sl] = _count_per_pair(p) + _count_per_pair(t)
    empty = np.nan if empty_score is None else float(empty_score)
    dice = np.full((n, k), empty, dtype=np.float64)
    np.divide(2.0 * inter, total, out=dice, where=total > 0)
    return dice


def _nanmean(a: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean over non-NaN values; NaN (without a RuntimeWarning) where there are none."""
    valid = ~np.isnan(a)
    count = valid.sum(axis=axis)
    total = np.where(valid, a, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def dice_per_class(
    pred_masks: Any, true_masks: Any, empty_score: float | None = 1.0, chunk_size: int | None = None
) -> np.ndarray:
    """Mean Dice of each class over the images (the per-class column of a CV report).

    Args and raises: as ``dice_per_image_class``.

    Returns:
        (K,) float64 in [0, 1]; NaN for a class whose every pair was dropped (``empty_score=None``).
    """
    return _nanmean(dice_per_image_class(pred_masks, true_masks, empty_score, chunk_size), axis=0)


def dice_clouds(
    pred_masks: Any, true_masks: Any, empty_score: float | None = 1.0, chunk_size: int | None = None
) -> float:
    """Kaggle's Understanding Clouds / Severstal score: mean Dice over all (image, class) pairs.

    Args and raises: as ``dice_per_image_class``.

    Returns:
        float in [0, 1], higher is better; NaN only when ``empty_score`` is None and every pair is empty on both
        sides.
    """
    return float(_nanmean(dice_per_image_class(pred_masks, true_masks, empty_score, chunk_size)))


# --------------------------------------------------------------------------------------------------------- mIoU


class ConfusionMatrix:
    """A confusion matrix accumulated over batches, for mIoU and pixel accuracy over a whole dataset.

    ``hist[i, j]`` counts pixels of true class i predicted as class j (rows: truth, columns: prediction), built as
    ``np.bincount(num_classes * true + pred)``, the trash contest's ``_fast_hist``.

    Example:
        >>> cm = ConfusionMatrix(num_classes=11)
        >>> for batch in loader:  # doctest: +SKIP
        ...     cm.update(logits.argmax(1), batch["mask"])
        >>> cm.miou()  # doctest: +SKIP

    Args:
        num_classes: C, the number of classes, background included.
        ignore_index: a true label whose pixels are not counted (e.g. 255 for unlabelled borders). A value inside
            [0, C) still counts as a class: it gets no true pixels, so its IoU is 0 where it was predicted, NaN
            otherwise.
    Raises:
        ValueError: ``num_classes`` < 1.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, pixels={self.total})"

    @property
    def total(self) -> int:
        """Pixels counted so far."""
        return int(self.hist.sum())

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        self.hist[:] = 0

    def update(self, pred_labels: Any, true_labels: Any, chunk_size: int | None = None) -> ConfusionMatrix:
        """Count a batch.

        Args:
            pred_labels: (N, H, W) or (H, W) integer class indices in [0, C); numpy, memmap or torch.
            true_labels: same shape, in [0, C) or ``ignore_index``.
            chunk_size: first-axis items per chunk; None for about 16 M pixels per chunk.
        Returns:
            self, so that ``ConfusionMatrix(c).update(p, t).miou()`` reads as one line.
        Raises:
            ValueError: shapes differ (both are named); a true label outside [0, C) that is not ``ignore_index``,
                or a prediction outside [0, C) on a counted pixel (the value and how many are named). Nothing is
                counted from a batch that raises.
            TypeError: a non-integer dtype (float logits or probs: argmax them first).
        """
        pred, true = to_numpy(pred_labels), to_numpy(true_labels)
        _check_same_shape(pred, true, ("pred_labels", "true_labels"))
        _check_integer(pred, "pred_labels")
        _check_integer(true, "true_labels")
        if pred.ndim < 2:
            pred, true = pred.reshape(1, -1), true.reshape(1, -1)
        c = self.num_classes
        hist = np.zeros(c * c, dtype=np.int64)
        for sl in row_slices(pred.shape[0], chunk_rows(pred.shape, 1, chunk_size)):
            p = np.asarray(pred[sl]).reshape(-1)
            t = np.asarray(true[sl]).reshape(-1)
            if self.ignore_index is not None:
                keep = t != self.ignore_index
                p, t = p[keep], t[keep]
            if t.size == 0:
                continue
            self._check_range(t, "true_labels")
            self._check_range(p, "pred_labels")
            hist += np.bincount(c * t.astype(np.int64) + p.astype(np.int64), minlength=c * c)
        self.hist += hist.reshape(c, c)
        return self

    def _check_range(self, x: np.ndarray, name: str) -> None:
        lo, hi = x.min(), x.max()
        if lo < 0 or hi >= self.num_classes:
            bad = (x < 0) | (x >= self.num_classes)
            value = x[np.argmax(bad)].item()
            hint = "" if self.ignore_index is not None or name == "pred_labels" else "; pass ignore_index"
            raise ValueError(
                f"{name} has class index {value} outside [0, {self.num_classes}) in {int(bad.sum())} counted "
                f"pixel(s){hint}"
            )

    def _require_pixels(self) -> None:
        if self.total == 0:
            raise ValueError("the confusion matrix is empty: no pixel counted (call update() first)")

    def iou(self) -> np.ndarray:
        """Per-class IoU = diag / (row + col - diag).

        Returns:
            (C,) float64 in [0, 1]; NaN for a class absent from both truth and prediction.
        Raises:
            ValueError: no pixel counted yet.
        """
        self._require_pixels()
        diag = np.diag(self.hist).astype(np.float64)
        union = self.hist.sum(axis=0) + self.hist.sum(axis=1) - diag
        return np.divide(diag, union, out=np.full(self.num_classes, np.nan), where=union > 0)

    def miou(self) -> float:
        """Mean IoU over the classes present in truth or prediction (``nanmean`` of ``iou()``).

        Raises:
            ValueError: no pixel counted yet.
        """
        return float(_nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels whose class is right.

        Raises:
            ValueError: no pixel counted yet.
        """
        self._require_pixels()
        return float(np.trace(self.hist) / self.total)


def iou_per_class(pred_labels: Any, true_labels: Any, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """IoU of each class over the whole dataset (one confusion matrix, not a mean over images).

    Args:
        pred_labels: (N, H, W) or (H, W) integer class indices in [0, C).
        true_labels: same shape, in [0, C) or ``ignore_index``.
        num_classes: C, background included.
        ignore_index: true label whose pixels are not counted.
    Returns:
        (C,) float64 in [0, 1]; NaN for a class absent from both truth and prediction.
    Raises:
        ValueError, TypeError: as ``ConfusionMatrix.update``; ValueError when every pixel is ignored.
    """
    return ConfusionMatrix(num_classes, ignore_index).update(pred_labels, true_labels).iou()


def miou(pred_labels: Any, true_labels: Any, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean IoU of a multiclass segmentation, as the trash contest scored it.

    Args and raises: as ``iou_per_class``.

    Returns:
        float in [0, 1], higher is better: the ``nanmean`` of ``iou_per_class`` (absent classes excluded).
    Source:
        trash-segmentation contest baseline ``utils.py`` (``add_hist`` over the validation set, then
        ``label_accuracy_score``), taken from wkentaro/pytorch-fcn ``torchfcn/utils.py``. Their ``_fast_hist`` drops
        true labels outside [0, C) silently; here those raise unless they are ``ignore_index``.
    """
    return ConfusionMatrix(num_classes, ignore_index).update(pred_labels, true_labels).miou()


# --------------------------------------------------------------------------------------------- pixels and labels


def pixel_accuracy(pred: Any, true: Any, ignore_index: int | None = None, chunk_size: int | None = None) -> float:
    """Fraction of pixels where the prediction equals the truth.

    Args:
        pred: any shape, e.g. (N, H, W) class indices or {0, 1} masks; numpy, memmap or torch.
        true: same shape and the same encoding (a 0/255 truth against 0/1 predictions counts every foreground
            pixel wrong).
        ignore_index: true value whose pixels are not counted.
        chunk_size: first-axis items per chunk; None for about 16 M pixels per chunk.
    Returns:
        float in [0, 1], higher is better.
    Raises:
        ValueError: shapes differ (both are named); no pixel to count.
    """
    p, t = to_numpy(pred), to_numpy(true)
    _check_same_shape(p, t, ("pred", "true"))
    if p.ndim == 0:
        p, t = p.reshape(1), t.reshape(1)
    right = counted = 0
    for sl in row_slices(p.shape[0], chunk_rows(p.shape, 1, chunk_size)):
        pc, tc = np.asarray(p[sl]), np.asarray(t[sl])
        equal = pc == tc
        if ignore_index is None:
            right += int(np.count_nonzero(equal))
            counted += equal.size
        else:
            keep = tc != ignore_index
            right += int(np.count_nonzero(equal & keep))
            counted += int(np.count_nonzero(keep))
    if counted == 0:
        raise ValueError(f"no pixel to count (shape {p.shape}, ignore_index={ignore_index})")
    return right / counted


def pixel_error(pred: Any, true: Any, ignore_index: int | None = None, chunk_size: int | None = None) -> float:
    """Fraction of wrong pixels, ``1 - pixel_accuracy``: the ISBI 2012 EM segmentation "pixel error".

    Args and raises: as ``pixel_accuracy``; for ISBI both are (N, H, W) {0, 1} membrane masks.

    Returns:
        float in [0, 1], lower is better.
    Source:
        ISBI 2012 challenge (Arganda-Carreras et al. 2015): the squared Euclidean distance between binary label
        maps over the pixel count, i.e. the fraction of pixels whose label differs.
    """
    return 1.0 - pixel_accuracy(pred, true, ignore_index=ignore_index, chunk_size=chunk_size)


def accuracy(pred_labels: Any, true_labels: Any) -> float:
    """Classification accuracy (Cassava).

    Args:
        pred_labels: (N,) integer class indices, or (N, C) logits or probs (argmax over C is taken).
        true_labels: (N,) integer class indices.
    Returns:
        float in [0, 1], higher is better.
    Raises:
        ValueError: shapes that do not match (both are named), no sample.
        TypeError: float (N,) predictions (ambiguous: pass (N, C) scores or class indices), non-integer labels.
    """
    p, t = to_numpy(pred_labels), to_numpy(true_labels)
    if t.ndim != 1 or p.ndim not in (1, 2) or p.shape[0] != t.shape[0]:
        raise ValueError(
            f"pred_labels shape {p.shape} does not match true_labels shape {t.shape}: expected (N,) or (N, C) "
            "against (N,)"
        )
    if t.size == 0:
        raise ValueError("no sample to score (N = 0)")
    _check_integer(t, "true_labels")
    if p.ndim == 2:
        p = p.argmax(axis=1)
    else:
        _check_integer(p, "pred_labels")
    return float(np.count_nonzero(p == t) / t.size)


# ------------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Metric:
    """A named metric and which way is better.

    Attributes:
        name: key in ``METRICS`` (what ``Preset.metric`` says).
        fn: ``fn(pred, true, **kwargs) -> float``.
        greater_is_better: True for scores (Dice, mIoU, accuracy), False for errors (pixel error).
        inputs: what ``pred`` and ``true`` are, and the keyword arguments the metric needs.
    """

    name: str
    fn: Callable[..., float]
    greater_is_better: bool
    inputs: str = ""

    def __call__(self, pred: Any, true: Any, **kwargs: Any) -> float:
        return self.fn(pred, true, **kwargs)

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` (None, or NaN, is beaten by any number)."""
        if best is None or np.isnan(best):
            return not np.isnan(value)
        return value > best if self.greater_is_better else value < best


METRICS: dict[str, Metric] = {
    "dice": Metric(
        "dice",
        dice_clouds,
        True,
        "masks (N, K, H, W) {0, 1} vs masks of the same shape; mean Dice over (image, class) pairs; "
        "empty_score=None for Dacon",
    ),
    "miou": Metric(
        "miou",
        miou,
        True,
        "class indices (N, H, W) vs (N, H, W); needs num_classes=, optional ignore_index=",
    ),
    "accuracy": Metric(
        "accuracy",
        accuracy,
        True,
        "labels (N,) or logits / probs (N, C) vs labels (N,)",
    ),
    "pixel_error": Metric(
        "pixel_error",
        pixel_error,
        False,
        "masks or class indices vs the same shape; fraction of wrong pixels (ISBI 2012)",
    ),
}


def get_metric(name: str | Metric) -> Metric:
    """Look up a metric by name (a ``Metric`` is returned as is).

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    return name if isinstance(name, Metric) else lookup(METRICS, name, "metric")
