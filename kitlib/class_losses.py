"""Classification losses' common ground: targets as labels or soft rows, label smoothing in both conventions, class
weights and reductions; and the two plain losses, ``CrossEntropyLoss`` ("ce") and ``FocalCELoss`` ("focal_ce").

Every classification loss of the kit (here and in ``kitlib.robust_losses``) is a ``ClassificationLoss``: its forward
takes logits (N, C) and either int64 labels (N,) in 0..C-1 or soft targets (N, C) float whose rows sum to 1 (what the
batch mixes of ``kitlib.mixes`` produce). A label becomes its one-hot row, so a one-hot soft target gives exactly the
loss of its label. ``CrossEntropyLoss`` and ``FocalCELoss`` also take per-pixel logits (N, C, H, W) with labels
(N, H, W) or soft targets (N, C, H, W), and an ``ignore_index`` for labels.

Label smoothing s, two conventions (``smooth_targets``), for the one-hot row of class y among C classes:

- ``"uniform"``, torch's (``nn.CrossEntropyLoss(label_smoothing=s)``; Szegedy et al. 2016, "Rethinking the Inception
  Architecture for Computer Vision"): (1 - s) y + s / C: 1 - s + s / C on the true class, s / C on each other;
- ``"others"``, Google's bi-tempered reference (github.com/google/bi-tempered-loss, tensorflow/loss.py) and the
  Cassava kernels' (Taylor CE, bi-tempered): 1 - s on the true class, s / (C - 1) on each other, i.e.
  (1 - s C / (C - 1)) y + s / (C - 1).

Soft targets go through the same affine map.

Class weights (``weight``: C non-negative numbers): sample i weighs w_i = sum_c weight_c t_ic, the weight of its class
for a label (of its target before smoothing); "mean" is the weighted mean sum_i w_i l_i / sum_i w_i, "sum" is
sum_i w_i l_i and "none" gives w_i l_i. For labels without smoothing that is torch's weighted cross-entropy; torch
weighs soft targets inside the sum over classes and takes a plain mean, which would make a one-hot row differ from
its label, so the kit weighs samples in every loss instead.

Usage::

    loss_fn = CrossEntropyLoss(label_smoothing=0.1, smoothing_convention="others", weight=[1, 1, 2, 1, 1])
    loss = loss_fn(logits, labels)        # logits (N, C); labels (N,) int64 or soft targets (N, C) float
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SMOOTHING_CONVENTIONS",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "FocalCELoss",
    "class_targets",
    "focal_nll",
    "smooth_targets",
]

_REDUCTIONS = ("mean", "sum", "none")
#: ``smooth_targets`` conventions: torch's, and the bi-tempered reference's (module docstring).
SMOOTHING_CONVENTIONS = ("uniform", "others")


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is "mean", "sum" or "none". Raises ValueError otherwise."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """The mean, the sum, or ``loss`` itself ("none")."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_smoothing(smoothing: float, convention: str = "others") -> float:
    """``smoothing`` as a float. Raises ValueError: smoothing outside [0, 1), an unknown convention."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    if convention not in SMOOTHING_CONVENTIONS:
        raise ValueError(f"smoothing_convention must be one of {SMOOTHING_CONVENTIONS}, got {convention!r}")
    return float(smoothing)


def smooth_targets(targets: torch.Tensor, smoothing: float, convention: str = "others") -> torch.Tensor:
    """Label smoothing of target rows (classes along dim 1) in one of the two conventions (module docstring).

    Args:
        targets: (N, C, ...) float, rows summing to 1 (one-hot or soft).
        smoothing: s in [0, 1).
        convention: "uniform" (torch's: (1 - s) t + s / C) or "others" (1 - s on the true class, s / (C - 1) on
            the others: (1 - s C / (C - 1)) t + s / (C - 1)).
    Returns:
        The smoothed targets, same shape; ``targets`` itself for s = 0.
    Raises:
        ValueError: "others" with fewer than 2 classes.
    """
    if smoothing == 0.0:
        return targets
    c = targets.size(1)
    if convention == "uniform":
        return (1.0 - smoothing) * targets + smoothing / c
    if c < 2:
        raise ValueError("label smoothing 'others' needs at least 2 classes")
    return (1.0 - smoothing * c / (c - 1)) * targets + smoothing / (c - 1)


def class_targets(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None, pixelwise: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target rows of the shape of the logits, from labels or soft targets.

    Args:
        logits: (N, C) float; (N, C, H, W) (any trailing dimensions) when ``pixelwise``.
        targets: int labels of the logits' shape without C ((N,), (N, H, W)) in 0..C-1 (or ``ignore_index``), or
            float soft targets of the logits' shape.
        ignore_index: the label that counts for nothing (its row is all 0); None: none.
        pixelwise: accept trailing dimensions after C.
    Returns:
        ``(rows, keep)``: rows of the logits' shape and dtype (one-hot for labels), and the bool mask (N, ...) of
        the labels that count (None: every one).
    Raises:
        ValueError: logits of another rank; targets of neither accepted shape / dtype (the message says which).
    """
    if logits.dim() != 2 and not (pixelwise and logits.dim() > 2):
        expected = "(N, C) or (N, C, H, W)" if pixelwise else "(N, C)"
        raise ValueError(f"logits must be {expected}, got shape {tuple(logits.shape)}")
    label_shape = logits.shape[:1] + logits.shape[2:]
    if targets.is_floating_point() and targets.shape == logits.shape:
        return targets.to(logits.dtype), None
    if not targets.is_floating_point() and targets.shape == label_shape:
        labels = targets.long()
        keep = None if ignore_index is None else labels != ignore_index
        if keep is not None:
            labels = labels.where(keep, 0)
        rows = F.one_hot(labels, logits.size(1)).movedim(-1, 1).to(logits.dtype)
        return (rows if keep is None else rows * keep.unsqueeze(1)), keep
    raise ValueError(
        f"targets must be int64 {tuple(label_shape)} or float {tuple(logits.shape)} for logits "
        f"{tuple(logits.shape)}, got {targets.dtype} {tuple(targets.shape)}"
    )


def _check_weight(weight: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    """``weight`` as a float32 (C,) CPU tensor. Raises ValueError: not a non-empty list of finite numbers >= 0."""
    if weight is None:
        return None
    try:
        values = torch.as_tensor(weight, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        values = torch.empty(0)
    if values.dim() != 1 or values.numel() == 0 or not bool(torch.isfinite(values).all() and (values >= 0).all()):
        raise ValueError(f"weight must be a list of C finite numbers >= 0 (one per class), got {weight!r}")
    return values


def focal_nll(log_probs: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """The focal term of every class, -sum_c t_c (1 - p_c)^gamma log p_c, over dim 1 (Lin et al. 2017, "Focal Loss
    for Dense Object Detection"): -(1 - p_y)^gamma log p_y for a one-hot row of class y, the CE for gamma = 0.

    Args:
        log_probs: (N, C, ...) log-probabilities.
        targets: (N, C, ...) target rows.
        gamma: focusing parameter >= 0.
    Returns:
        (N, ...) per sample.
    """
    return -(targets * (1.0 - log_probs.exp()).pow(gamma) * log_probs).sum(dim=1)


class ClassificationLoss(nn.Module):
    """Base of the kit's classification losses: targets (labels or soft rows), class weights, reduction.

    A subclass writes ``per_sample(logits, targets)``: float32 logits and target rows of one shape, (N, C) (or
    (N, C, ...) when ``pixelwise``), to a loss per sample (N, ...). ``forward(y_pred, y_true)`` turns labels into
    rows (``class_targets``), calls it and reduces with the class weights (module docstring).

    Args:
        weight: C class weights >= 0, or None (every sample weighs 1).
        reduction: "mean", "sum" or "none".
        ignore_index: label that counts for nothing (excluded from the mean, 0 under "none"); None: none.

    Raises:
        ValueError: bad reduction or weight (when built); a weight whose length is not C, targets that fit neither
            shape (when called).
    """

    #: whether per-pixel logits (N, C, H, W) are accepted.
    pixelwise: ClassVar[bool] = False

    def __init__(
        self,
        weight: Sequence[float] | torch.Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index
        self.register_buffer("weight", _check_weight(weight), persistent=False)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        logits = y_pred.float()
        targets, keep = class_targets(logits, y_true, self.ignore_index, self.pixelwise)
        loss = self.per_sample(logits, targets)
        if self.weight is not None:
            if self.weight.numel() != logits.size(1):
                raise ValueError(f"weight has {self.weight.numel()} values for {logits.size(1)} classes")
            shape = (1, -1) + (1,) * (targets.dim() - 2)
            sample_weight = (targets * self.weight.to(targets.device).view(shape)).sum(dim=1)
        else:
            sample_weight = None if keep is None else keep.to(loss.dtype)
        if sample_weight is None:
            return reduce_loss(loss, self.reduction)
        loss = loss * sample_weight
        if self.reduction == "mean":
            return loss.sum() / sample_weight.sum().clamp_min(torch.finfo(loss.dtype).tiny)
        return reduce_loss(loss, self.reduction)

    def extra_repr(self) -> str:
        return "" if self.weight is None else f"weight={self.weight.tolist()}"


class CrossEntropyLoss(ClassificationLoss):
    """Softmax cross-entropy, -sum_c t_c log softmax(logits)_c, with label smoothing in either convention.

    With the default "uniform" convention, labels and no weight it equals ``torch.nn.CrossEntropyLoss`` (tested);
    "others" is the smoothing of the Cassava kernels and of Google's bi-tempered reference (module docstring).

    Args:
        weight: C class weights (a sample weighs its class's; module docstring), or None.
        label_smoothing: s in [0, 1).
        smoothing_convention: "uniform" (torch's: s / C on every class) or "others" (1 - s on the true class,
            s / (C - 1) on each other).
        ignore_index: label that counts for nothing.
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, C) logits, or (N, C, H, W).
        y_true: (N,) int64 in 0..C-1 or (N, C) float soft targets; (N, H, W) or (N, C, H, W) per pixel.

    Raises:
        ValueError: smoothing out of range, unknown convention, bad weight or reduction; targets that do not fit.
    """

    pixelwise = True

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        smoothing_convention: str = "uniform",
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, reduction, ignore_index)
        self.label_smoothing = check_smoothing(label_smoothing, smoothing_convention)
        self.smoothing_convention = smoothing_convention

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = smooth_targets(targets, self.label_smoothing, self.smoothing_convention)
        return -(rows * logits.log_softmax(dim=1)).sum(dim=1)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, smoothing_convention={self.smoothing_convention!r}"


class FocalCELoss(ClassificationLoss):
    """Softmax focal loss, -alpha (1 - p_y)^gamma log p_y (Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for
    Dense Object Detection"), as the Cassava kernels write it: a scalar alpha; per-class weights go in ``weight``.
    Soft targets t give -alpha sum_c t_c (1 - p_c)^gamma log p_c (``focal_nll``).

    Args:
        gamma: focusing parameter >= 0; 0 gives alpha * CE.
        alpha: scalar weight.
        ignore_index: label that adds nothing; the mean is over the other labels.
        reduction: "mean", "sum" or "none".
        weight: C class weights, or None.

    Shape:
        y_pred: (N, C) logits, or (N, C, H, W) for segmentation.
        y_true: (N,) int64 in 0..C-1 or (N, C) float; (N, H, W) or (N, C, H, W) per pixel.

    Raises:
        ValueError: gamma < 0, bad reduction or weight; targets that do not fit.
    """

    pixelwise = True

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__(weight, reduction, ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.alpha = float(gamma), float(alpha)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.alpha * focal_nll(logits.log_softmax(dim=1), targets, self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
