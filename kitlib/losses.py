"""Losses for segmentation and image classification, from logits, behind one registry.

Segmentation losses come from ``segmentation_models_pytorch.losses`` (smp) where smp has them. The kit adds what
smp lacks: an SSIM loss, weighted sums of losses, a mask + classification-head loss (``SegClsLoss``) and the
classification losses of the Cassava solutions. Every loss takes raw logits, never probabilities.

Segmentation losses take a ``mode``, in smp's words; a preset's ``task`` is that mode
(``create_loss("dice", mode=preset.task)``):

- ``"binary"``: logits (N, 1, H, W); masks (N, 1, H, W) or (N, H, W) in {0, 1}.
- ``"multilabel"``: logits (N, K, H, W); masks (N, K, H, W) float in {0, 1}, classes may overlap (Understanding
  Clouds).
- ``"multiclass"``: logits (N, C, H, W); masks (N, H, W) int64 class indices, background 0 (trash contest).

Classification losses take logits (N, C) and int64 targets (N,) (Cassava); "ce", "bi_tempered" and "taylor_ce"
also take soft targets (N, C) float.

Usage::

    loss_fn = create_loss("combo", terms={"bce": 0.75, "dice": 0.25}, mode="multilabel")
    loss = loss_fn(logits, masks)     # scalar; loss_fn.last_values == {"bce": ..., "dice": ...} (detached)
    loss_fn = create_recipe("clouds_1st")
    loss = loss_fn(mask_logits, cls_logits, masks)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

__all__ = [
    "MODES",
    "LOSSES",
    "SEGMENTATION_LOSSES",
    "RECIPES",
    "LossRecipe",
    "create_loss",
    "create_recipe",
    "WeightedSum",
    "SegClsLoss",
    "mask_presence",
    "SoftBCELoss",
    "SSIMLoss",
    "ssim",
    "FocalCELoss",
    "BiTemperedLoss",
    "tempered_softmax",
    "FocalCosineLoss",
    "TaylorCELoss",
    "taylor_softmax",
    "SymmetricCELoss",
]

#: Segmentation modes, smp's words (``segmentation_models_pytorch.losses.constants``).
MODES: tuple[str, ...] = ("binary", "multilabel", "multiclass")
_REDUCTIONS = ("mean", "sum", "none")


def _check_mode(mode: str, allowed: tuple[str, ...] = MODES) -> str:
    if mode not in allowed:
        raise ValueError(f"mode must be one of {allowed}, got {mode!r}")
    return mode


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_smoothing(smoothing: float) -> float:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    return float(smoothing)


def _class_probs_targets(logits: torch.Tensor, targets: torch.Tensor, soft_ok: bool = True) -> torch.Tensor:
    """(N, C) float targets from int64 class indices (N,) or, where ``soft_ok``, soft targets (N, C)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    n, c = logits.shape
    if soft_ok and targets.is_floating_point() and targets.shape == logits.shape:
        return targets.to(logits.dtype)
    if targets.dim() == 1 and targets.size(0) == n and not targets.is_floating_point():
        return F.one_hot(targets.long(), c).to(logits.dtype)
    accepted = "int64 (N,) or float (N, C)" if soft_ok else "int64 (N,)"
    raise ValueError(
        f"targets must be {accepted} for logits {tuple(logits.shape)}, got {targets.dtype} {tuple(targets.shape)}"
    )


def _smooth_labels(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Spread ``smoothing`` over the other classes: one-hot -> 1 - s on the true class, s / (C - 1) elsewhere.

    This is the smoothing of Google's bi-tempered reference and of the Cassava Taylor-CE kernels; torch's
    ``label_smoothing`` differs (s / C on every class, the true one included).
    """
    if smoothing == 0.0:
        return labels
    c = labels.size(-1)
    if c < 2:
        raise ValueError("label smoothing needs at least 2 classes")
    return (1.0 - smoothing * c / (c - 1)) * labels + smoothing / (c - 1)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------


class SoftBCELoss(smp_losses.SoftBCEWithLogitsLoss):
    """Binary cross-entropy from logits with label smoothing: smp's ``SoftBCEWithLogitsLoss`` that also takes
    (N, H, W) binary masks and integer masks.

    Args:
        mode: "binary" or "multilabel" (the two differ only in the number of channels).
        smooth_factor: label smoothing s: targets {0, 1} become {s, 1 - s}; None for none.
        pos_weight: weight of positive pixels, broadcast against the logits (smp / torch semantics).
        ignore_index: target value whose pixels add 0 to the loss (they still count in the mean).
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, K, H, W) logits (any shape works).
        y_true: same shape, or (N, H, W) when K = 1; {0, 1}, any dtype.

    Raises:
        ValueError: mode "multiclass" (use "soft_ce"); shapes that do not match.
    """

    def __init__(
        self,
        mode: str = "multilabel",
        smooth_factor: float | None = None,
        pos_weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        _check_mode(mode, ("binary", "multilabel"))
        super().__init__(
            ignore_index=ignore_index,
            reduction=_check_reduction(reduction),
            smooth_factor=smooth_factor,
            pos_weight=pos_weight,
        )
        self.mode = mode

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if y_true.dim() == y_pred.dim() - 1 and y_pred.size(1) == 1:
            y_true = y_true.unsqueeze(1)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"bce: targets {tuple(y_true.shape)} do not match logits {tuple(y_pred.shape)}")
        return super().forward(y_pred, y_true.to(y_pred.dtype))


def _bce(
    *,
    mode: str = "multilabel",
    smooth_factor: float | None = None,
    pos_weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> nn.Module:
    return SoftBCELoss(mode, smooth_factor, pos_weight, ignore_index, reduction)


def _dice(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``DiceLoss``: 1 - soft Dice per class over the batch, classes without target pixels count 0."""
    return smp_losses.DiceLoss(_check_mode(mode), **kwargs)


def _jaccard(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``JaccardLoss``: 1 - soft IoU per class over the batch, classes without target pixels count 0."""
    return smp_losses.JaccardLoss(_check_mode(mode), **kwargs)


def _focal(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``FocalLoss`` (Lin et al. 2017) on sigmoid outputs; multiclass sums one-vs-rest terms over classes."""
    return smp_losses.FocalLoss(_check_mode(mode), **kwargs)


def _lovasz(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``LovaszLoss`` (Berman et al. 2018): Lovasz hinge (binary, multilabel), Lovasz-softmax (multiclass)."""
    return smp_losses.LovaszLoss(_check_mode(mode), **kwargs)


def _tversky(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``TverskyLoss`` (Salehi et al. 2017): alpha weighs false positives, beta false negatives."""
    return smp_losses.TverskyLoss(_check_mode(mode), **kwargs)


def _soft_ce(
    *, mode: str = "multiclass", smooth_factor: float = 0.0, ignore_index: int | None = -100, reduction: str = "mean"
) -> nn.Module:
    """smp ``SoftCrossEntropyLoss`` (softmax CE with label smoothing over pixels). smp's own default
    ``smooth_factor=None`` fails at the first call, so the default here is 0."""
    _check_mode(mode, ("multiclass",))
    return smp_losses.SoftCrossEntropyLoss(
        reduction=_check_reduction(reduction), smooth_factor=smooth_factor, ignore_index=ignore_index
    )


def _gaussian_window(window_size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(torch.float32)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    window: torch.Tensor,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Structural similarity map of two image batches, channel by channel (Wang et al. 2004).

    Local means, variances and the covariance are Gaussian-weighted sums over a window centred on each pixel; the
    images are zero-padded by half a window so the map keeps the input size (the convention of the pytorch-ssim
    package that segmentation code commonly uses).

    Args:
        x: (N, C, H, W) float.
        y: (N, C, H, W) float.
        window: (S, S) weights summing to 1, S odd.
        k1: C1 = (k1 * data_range)^2.
        k2: C2 = (k2 * data_range)^2.
        data_range: max - min of the pixel values (1 for probabilities).
    Returns:
        (N, C, H, W) SSIM in [-1, 1]; 1 where x and y agree.
    Raises:
        ValueError: x and y differ in shape or are not 4-D.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    c = x.size(1)
    s = window.size(-1)
    w = window.to(dtype=x.dtype, device=x.device).expand(5 * c, 1, s, s)
    # One depthwise convolution over [x, y, x*x, y*y, x*y] gives every local moment.
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), w, padding=s // 2, groups=5 * c)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


class SSIMLoss(nn.Module):
    """1 - SSIM between predicted probabilities and the target masks (Wang et al. 2004, "Image Quality Assessment:
    From Error Visibility to Structural Similarity"), averaged over pixels, channels and images.

    Probabilities are sigmoid (binary, multilabel) or softmax (multiclass) of the logits; multiclass masks become
    one-hot channels. The trash-sorting contest's solutions combined it with CE and Dice ("CE + Dice + SSIM").

    Args:
        mode: "binary", "multilabel" or "multiclass".
        window_size: side of the Gaussian window, odd (11 in the paper).
        sigma: standard deviation of the window in pixels (1.5 in the paper).
        k1: SSIM constant, C1 = k1^2 (probabilities have data range 1).
        k2: SSIM constant, C2 = k2^2.

    Shape:
        y_pred: (N, C, H, W) logits; C = 1 for binary.
        y_true: binary (N, 1, H, W) or (N, H, W) {0, 1}; multilabel (N, C, H, W) {0, 1}; multiclass (N, H, W) int64
            in 0..C-1 (pixels with another value, e.g. an ignore index, are 0 in every channel).

    Raises:
        ValueError: bad mode, even or non-positive window size, sigma <= 0, shapes that do not match the mode.
    """

    def __init__(self, mode: str, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
        super().__init__()
        self.mode = _check_mode(mode)
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"window_size must be odd and >= 1, got {window_size}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.k1, self.k2 = k1, k2
        self.register_buffer("window", _gaussian_window(window_size, sigma), persistent=False)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if y_pred.dim() != 4:
            raise ValueError(f"ssim: logits must be (N, C, H, W), got {tuple(y_pred.shape)}")
        n, c, h, w = y_pred.shape
        if self.mode == "multiclass":
            if y_true.shape != (n, h, w):
                raise ValueError(f"ssim multiclass: masks must be (N, H, W) = {(n, h, w)}, got {tuple(y_true.shape)}")
            probs = y_pred.softmax(dim=1)
            classes = torch.arange(c, device=y_true.device).view(1, c, 1, 1)
            target = (y_true.unsqueeze(1) == classes).to(probs.dtype)
        else:
            if self.mode == "binary" and y_true.dim() == 3:
                y_true = y_true.unsqueeze(1)
            if y_true.shape != y_pred.shape or (self.mode == "binary" and c != 1):
                raise ValueError(
                    f"ssim {self.mode}: masks {tuple(y_true.shape)} do not fit logits {tuple(y_pred.shape)}"
                )
            probs = y_pred.sigmoid()
            target = y_true.to(probs.dtype)
        return 1.0 - ssim(probs, target, self.window, self.k1, self.k2).mean()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, window_size={self.window.size(-1)}"


# ---------------------------------------------------------------------------------------------------------------
# Classification (Cassava)
# ---------------------------------------------------------------------------------------------------------------


class FocalCELoss(nn.Module):
    """Softmax focal loss, -alpha (1 - p_t)^gamma log p_t (Lin et al. 2017, "Focal Loss for Dense Object
    Detection"), as the Cassava kernels write it: a scalar alpha, the CE of the true class.

    Args:
        gamma: focusing parameter; 0 gives alpha * CE.
        alpha: scalar weight.
        ignore_index: target value that adds nothing; the mean is over the other targets.
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, C) logits, or (N, C, H, W) for segmentation.
        y_true: (N,) int64 in 0..C-1, or (N, H, W).

    Raises:
        ValueError: gamma < 0, bad reduction.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 1.0, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.alpha, self.ignore_index = gamma, alpha, ignore_index
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(y_pred.float(), y_true, reduction="none", ignore_index=self.ignore_index)
        loss = self.alpha * (1.0 - torch.exp(-ce)).pow(self.gamma) * ce
        if self.reduction == "mean":
            return loss.sum() / (y_true != self.ignore_index).sum().clamp_min(1)
        return _reduce(loss, self.reduction)


def _log_t(u: torch.Tensor, t: float) -> torch.Tensor:
    return u.log() if t == 1.0 else (u.pow(1.0 - t) - 1.0) / (1.0 - t)


def _exp_t(u: torch.Tensor, t: float) -> torch.Tensor:
    return u.exp() if t == 1.0 else (1.0 + (1.0 - t) * u).relu().pow(1.0 / (1.0 - t))


def _normalization_fixed_point(activations: torch.Tensor, t: float, num_iters: int) -> torch.Tensor:
    """Normalisation constant for t > 1 by the fixed-point iteration of Google's reference."""
    mu = activations.amax(dim=-1, keepdim=True)
    step_0 = activations - mu
    normalized = step_0
    for _ in range(num_iters):
        partition = _exp_t(normalized, t).sum(dim=-1, keepdim=True)
        normalized = step_0 * partition.pow(1.0 - t)
    partition = _exp_t(normalized, t).sum(dim=-1, keepdim=True)
    return -_log_t(1.0 / partition, t) + mu


def _normalization_binary_search(activations: torch.Tensor, t: float, num_iters: int) -> torch.Tensor:
    """Normalisation constant for t < 1 (finite support) by the bisection of Google's reference."""
    mu = activations.amax(dim=-1, keepdim=True)
    normalized = activations - mu
    effective_dim = (normalized > -1.0 / (1.0 - t)).sum(dim=-1, keepdim=True).to(activations.dtype)
    lower = torch.zeros_like(mu)
    upper = -_log_t(1.0 / effective_dim, t)
    for _ in range(num_iters):
        partition = (upper + lower) / 2.0
        below = (_exp_t(normalized - partition, t).sum(dim=-1, keepdim=True) < 1.0).to(activations.dtype)
        lower = lower * below + partition * (1.0 - below)
        upper = upper * (1.0 - below) + partition * below
    return (upper + lower) / 2.0 + mu


class _TemperedNormalization(torch.autograd.Function):
    """lambda(a) with sum_i exp_t(a_i - lambda, t) = 1; the backward is the implicit derivative, the escort
    distribution p_i^t / sum_j p_j^t (what the iterations approximate, not a derivative through them)."""

    @staticmethod
    def forward(ctx: Any, activations: torch.Tensor, t: float, num_iters: int) -> torch.Tensor:
        if t < 1.0:
            lam = _normalization_binary_search(activations, t, num_iters)
        else:
            lam = _normalization_fixed_point(activations, t, num_iters)
        ctx.save_for_backward(activations, lam)
        ctx.t = t
        return lam

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        activations, lam = ctx.saved_tensors
        escorts = _exp_t(activations - lam, ctx.t).pow(ctx.t)
        escorts = escorts / escorts.sum(dim=-1, keepdim=True)
        return escorts * grad_output, None, None


def tempered_softmax(logits: torch.Tensor, t: float, num_iters: int = 5) -> torch.Tensor:
    """Tempered softmax exp_t(a - lambda(a), t) (Amid et al. 2019); the softmax for t = 1.

    t > 1 gives heavier tails than the softmax, t < 1 a finite support (exact zeros). lambda comes from the
    fixed-point iteration (t > 1) or bisection (t < 1) of Google's reference
    (github.com/google/bi-tempered-loss, tensorflow/loss.py); raise ``num_iters`` for tighter normalisation
    (bisection halves the bracket once per iteration). Gradients are exact for the normalisation reached.

    Args:
        logits: (..., C) float.
        t: temperature > 0.
        num_iters: iterations of the normalisation.
    Returns:
        (..., C) probabilities in [0, 1], summing to 1 along the last dimension up to the normalisation error.
    Raises:
        ValueError: t <= 0 or num_iters < 1.
    """
    if t <= 0:
        raise ValueError(f"temperature must be > 0, got {t}")
    if t == 1.0:
        return logits.softmax(dim=-1)
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    return _exp_t(logits - _TemperedNormalization.apply(logits, t, num_iters), t)


class BiTemperedLoss(nn.Module):
    """Bi-tempered logistic loss (Amid, Warmuth, Anil, Koren 2019, "Robust Bi-Tempered Logistic Loss Based on
    Bregman Divergences", NeurIPS), after Google's reference implementation (github.com/google/bi-tempered-loss,
    tensorflow/loss.py): the Bregman divergence of the tempered logarithm log_t1 between the labels and the tempered
    softmax of temperature t2,

        sum_c y_c (log_t1(y_c + 1e-10) - log_t1(p_c)) - (y_c^(2 - t1) - p_c^(2 - t1)) / (2 - t1).

    t1 < 1 bounds the loss (robust to mislabelled outliers), t2 > 1 gives heavy tails (robust near the decision
    boundary). t1 = t2 = 1 is the softmax cross-entropy, computed as such, as the reference does. A Cassava
    favourite; t1=0.8, t2=1.4 with smoothing 0.06-0.2 were common settings.

    The loss is computed in float32; probabilities are clamped at the smallest float so that exact zeros of the
    finite-support softmax (t2 < 1) give finite gradients.

    Args:
        t1: temperature of the logarithm, 0 <= t1 < 2.
        t2: temperature of the softmax, > 0.
        label_smoothing: s in [0, 1): the true class gets 1 - s, each other class s / (C - 1) (the reference's
            smoothing, also applied to soft targets).
        num_iters: iterations of the normalisation of the tempered softmax (5 in the reference).
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1, or (N, C) float soft targets summing to 1.

    Raises:
        ValueError: temperatures or smoothing out of range; targets that do not fit the logits.
    """

    def __init__(
        self,
        t1: float = 0.8,
        t2: float = 1.4,
        label_smoothing: float = 0.0,
        num_iters: int = 5,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not 0.0 <= t1 < 2.0:
            raise ValueError(f"t1 must be in [0, 2), got {t1}")
        if t2 <= 0.0:
            raise ValueError(f"t2 must be > 0, got {t2}")
        if num_iters < 1:
            raise ValueError(f"num_iters must be >= 1, got {num_iters}")
        self.t1, self.t2, self.num_iters = float(t1), float(t2), num_iters
        self.label_smoothing = _check_smoothing(label_smoothing)
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        logits = y_pred.float()
        labels = _smooth_labels(_class_probs_targets(logits, y_true), self.label_smoothing)
        if self.t1 == 1.0 and self.t2 == 1.0:
            loss = -(labels * logits.log_softmax(dim=-1)).sum(dim=-1)
        else:
            t1 = self.t1
            probs = tempered_softmax(logits, self.t2, self.num_iters).clamp_min(torch.finfo(logits.dtype).tiny)
            loss = (
                labels * (_log_t(labels + 1e-10, t1) - _log_t(probs, t1))
                - (labels.pow(2.0 - t1) - probs.pow(2.0 - t1)) / (2.0 - t1)
            ).sum(dim=-1)
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"t1={self.t1}, t2={self.t2}, label_smoothing={self.label_smoothing}, num_iters={self.num_iters}"


class FocalCosineLoss(nn.Module):
    """Focal cosine loss (Kim, Kim, Lee, Song, Park 2020, "Data-Efficient Deep Learning Method for Image
    Classification Using Data Augmentation, Focal Cosine Loss, and Ensemble", arXiv:2007.07805), in the form the
    Cassava solutions used (kaggle.com/c/cassava-leaf-disease-classification/discussion/203271):

        (1 - cos(logits, one_hot)) + xent * alpha * (1 - p_t)^gamma * CE(normalize(logits), target),

    where normalize scales each row of logits to unit L2 norm before the softmax.

    Args:
        alpha: weight of the focal term.
        gamma: focusing parameter of the focal term.
        xent: weight of the focal cross-entropy against the cosine term (0.1 in the paper).
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1.

    Raises:
        ValueError: targets that are not int64 (N,); bad reduction.
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, xent: float = 0.1, reduction: str = "mean"):
        super().__init__()
        self.alpha, self.gamma, self.xent = alpha, gamma, xent
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        logits = y_pred.float()
        one_hot = _class_probs_targets(logits, y_true, soft_ok=False)
        cosine = 1.0 - F.cosine_similarity(logits, one_hot, dim=1)
        ce = F.cross_entropy(F.normalize(logits, dim=1), y_true.long(), reduction="none")
        focal = self.alpha * (1.0 - torch.exp(-ce)).pow(self.gamma) * ce
        return _reduce(cosine + self.xent * focal, self.reduction)


def taylor_softmax(logits: torch.Tensor, n: int = 2, dim: int = 1) -> torch.Tensor:
    """Taylor softmax: f(x) / sum f(x) with f the n-th order Taylor polynomial of exp, sum_{i<=n} x^i / i!
    (de Brebisson & Vincent 2016, "An Exploration of Softmax Alternatives Belonging to the Spherical Loss Family";
    higher orders: Banerjee et al. 2020, arXiv:2011.11538). f > 0 for every even n.

    Args:
        logits: float tensor, classes along ``dim``.
        n: even order >= 2.
        dim: class dimension.
    Returns:
        probabilities of the shape of ``logits``; the softmax as n grows.
    Raises:
        ValueError: n odd or < 2.
    """
    if n < 2 or n % 2:
        raise ValueError(f"Taylor softmax order n must be even and >= 2, got {n}")
    f = torch.ones_like(logits)
    term = torch.ones_like(logits)
    for i in range(1, n + 1):
        term = term * logits / i
        f = f + term
    return f / f.sum(dim=dim, keepdim=True)


class TaylorCELoss(nn.Module):
    """The Cassava solutions' Taylor cross-entropy: the NLL of the order-n Taylor softmax (``taylor_softmax``),
    with label smoothing (kaggle.com/yerramvarun/cassava-taylorce-loss-label-smoothing-combo, after
    github.com/CoinCheung/pytorch-loss, taylor_softmax.py).

    The kernels cite Feng et al. 2020 ("Can Cross Entropy Loss Be Robust to Label Noise?", IJCAI), whose Taylor
    CE is another expansion, sum_{k<=n} (1 - p_y)^k / k of -log p_y; both tend to the cross-entropy as n grows.
    This class is the kernels' version.

    Args:
        n: even order of the Taylor softmax (2 in the kernels).
        smoothing: s in [0, 1): the true class gets 1 - s, each other class s / (C - 1) (the kernels used 0.2).
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1, or (N, C) float soft targets.

    Raises:
        ValueError: n odd or < 2; smoothing out of range; targets that do not fit the logits.
    """

    def __init__(self, n: int = 2, smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        if n < 2 or n % 2:
            raise ValueError(f"Taylor softmax order n must be even and >= 2, got {n}")
        self.n = n
        self.smoothing = _check_smoothing(smoothing)
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        logits = y_pred.float()
        labels = _smooth_labels(_class_probs_targets(logits, y_true), self.smoothing)
        log_probs = taylor_softmax(logits, self.n, dim=1).log()
        return _reduce(-(labels * log_probs).sum(dim=1), self.reduction)


class SymmetricCELoss(nn.Module):
    """Symmetric cross-entropy, alpha * CE + beta * RCE (Wang, Ma, Chen, Luo, Yi, Bailey 2019, "Symmetric Cross
    Entropy for Robust Learning with Noisy Labels", ICCV), as the authors' code computes it: the reverse CE
    RCE = -sum_c p_c log(clamp(one_hot_c, 1e-4, 1)) with p clamped to [1e-7, 1], i.e. -log(1e-4) * (1 - p_y)
    for unclamped p.

    Args:
        alpha: weight of CE (0.1 in the paper's CIFAR-10 runs).
        beta: weight of RCE (1.0 in the paper's CIFAR-10 runs).
        reduction: "mean", "sum" or "none".

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1.

    Raises:
        ValueError: targets that are not int64 (N,); bad reduction.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        logits = y_pred.float()
        one_hot = _class_probs_targets(logits, y_true, soft_ok=False)
        ce = F.cross_entropy(logits, y_true.long(), reduction="none")
        probs = logits.softmax(dim=1).clamp(1e-7, 1.0)
        rce = -(probs * one_hot.clamp(1e-4, 1.0).log()).sum(dim=1)
        return _reduce(self.alpha * ce + self.beta * rce, self.reduction)


# ---------------------------------------------------------------------------------------------------------------
# Combinations
# ---------------------------------------------------------------------------------------------------------------


class WeightedSum(nn.Module):
    """A weighted sum of losses that keeps each term's last value for logging.

    Args:
        losses: name -> (weight, loss module); every module is called with the same arguments. Names must not
            contain ".".

    Attributes:
        weights: name -> weight.
        terms: ``nn.ModuleDict`` name -> module (moved with ``.to(device)``).
        last_values: name -> unweighted value of the last forward, detached (a tensor; ``.item()`` it when
            logging, which waits for the GPU).

    Raises:
        ValueError: no terms, a weight that is not a finite number.
    """

    def __init__(self, losses: Mapping[str, tuple[float, nn.Module]]):
        super().__init__()
        if not losses:
            raise ValueError("WeightedSum needs at least one (weight, loss) term")
        self.weights: dict[str, float] = {}
        for name, (weight, _) in losses.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(f"weight of loss term {name!r} must be a finite number, got {weight!r}")
            self.weights[name] = float(weight)
        self.terms = nn.ModuleDict({name: module for name, (_, module) in losses.items()})
        self.last_values: dict[str, torch.Tensor] = {}

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        values = {name: term(*args, **kwargs) for name, term in self.terms.items()}
        self.last_values = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())

    def extra_repr(self) -> str:
        return "weights=" + repr(self.weights)


def _combo(*, terms: Mapping[str, float | tuple[float, Mapping[str, Any]]], mode: str | None = None) -> WeightedSum:
    """``create_loss("combo", terms={"bce": 0.75, "dice": (0.25, {"smooth": 1.0})}, mode="multilabel")``: a
    ``WeightedSum`` of registry losses; ``mode`` goes to each segmentation term, per-term kwargs ride in a tuple."""
    built: dict[str, tuple[float, nn.Module]] = {}
    for name, spec in terms.items():
        weight, kwargs = spec if isinstance(spec, tuple | list) else (spec, {})
        kwargs = dict(kwargs)
        if mode is not None and name in SEGMENTATION_LOSSES:
            kwargs.setdefault("mode", mode)
        built[name] = (weight, create_loss(name, **kwargs))
    return WeightedSum(built)


def mask_presence(masks: torch.Tensor, classes: int) -> torch.Tensor:
    """Which classes each image contains: the targets of a classification head beside a segmentation head.

    Args:
        masks: (N, K, H, W) {0, 1} (binary, multilabel); (N, H, W) {0, 1} when ``classes`` is 1 (binary);
            (N, H, W) integer class indices when ``classes`` > 1 (multiclass).
        classes: number of mask channels of the model (K, or C with the background for multiclass).
    Returns:
        (N, classes) float {0, 1}: presence[n, k] = masks[n, k].amax() > 0, or, multiclass, any pixel == k.
    Raises:
        ValueError: a shape that fits none of the above; float multiclass masks.
    """
    if masks.dim() == 4:
        if masks.size(1) != classes:
            raise ValueError(f"masks have {masks.size(1)} channels, the model {classes}")
        return (masks.amax(dim=(2, 3)) > 0).float()
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, K, H, W) or (N, H, W), got {tuple(masks.shape)}")
    if classes == 1:
        return (masks.flatten(1).amax(dim=1) > 0).float().unsqueeze(1)
    if masks.is_floating_point():
        raise ValueError(f"multiclass masks (N, H, W) must hold integer class indices, got {masks.dtype}")
    ids = torch.arange(classes, device=masks.device).view(1, classes, 1)
    return (masks.flatten(1).unsqueeze(1) == ids).any(dim=2).float()


class SegClsLoss(nn.Module):
    """Mask loss plus a weighted BCE on a classification head that predicts which classes an image contains
    (Understanding Clouds 1st place, pudae: github.com/pudae/kaggle-understanding-clouds, custom/loss_hook.py).

        loss = mask_loss(mask_logits, masks) + cls_weight * BCE(cls_logits, mask_presence(masks))

    Args:
        mask_loss: any loss of (mask_logits, masks), e.g. ``create_loss("combo", ...)``.
        cls_weight: weight of the classification BCE (0.1 in the 1st place's configs).
        ignore_negative: multiply the mask logits of classes absent from an image by 0 before the mask loss, so the
            segmentation head is trained only on the classes present (pudae's ``ignore_negative``); binary and
            multilabel masks only.

    Attributes:
        last_values: "mask", "cls" (when there was a head) and, for a ``WeightedSum`` mask loss, its terms as
            "mask.<name>": unweighted values of the last forward, detached.

    Shape:
        mask_logits: (N, K, H, W).
        cls_logits: (N, K) or None (no head: the mask loss alone).
        masks: (N, K, H, W) float {0, 1}; (N, H, W) for binary (K = 1) or int64 multiclass.

    Raises:
        ValueError: cls_logits not (N, K); ``ignore_negative`` with multiclass masks; masks that fit no mode.
    """

    def __init__(self, mask_loss: nn.Module, cls_weight: float = 1.0, ignore_negative: bool = False):
        super().__init__()
        self.mask_loss = mask_loss
        self.cls_weight = float(cls_weight)
        self.ignore_negative = ignore_negative
        self.last_values: dict[str, torch.Tensor] = {}

    def forward(self, mask_logits: torch.Tensor, cls_logits: torch.Tensor | None, masks: torch.Tensor) -> torch.Tensor:
        k = mask_logits.size(1)
        presence = mask_presence(masks, k) if self.ignore_negative or cls_logits is not None else None
        if self.ignore_negative:
            if masks.dim() == 3 and k > 1:
                raise ValueError("ignore_negative needs binary or multilabel masks, got multiclass (N, H, W)")
            mask_logits = mask_logits * presence.to(mask_logits.dtype)[:, :, None, None]
        loss = self.mask_loss(mask_logits, masks)
        values = {"mask": loss.detach()}
        for name, value in getattr(self.mask_loss, "last_values", {}).items():
            values[f"mask.{name}"] = value
        if cls_logits is not None:
            if cls_logits.shape != presence.shape:
                raise ValueError(
                    f"cls_logits must be (N, K) = {tuple(presence.shape)} to match the masks, got "
                    f"{tuple(cls_logits.shape)}"
                )
            cls_loss = F.binary_cross_entropy_with_logits(cls_logits, presence.to(cls_logits.dtype))
            values["cls"] = cls_loss.detach()
            loss = loss + self.cls_weight * cls_loss
        self.last_values = values
        return loss

    def extra_repr(self) -> str:
        return f"cls_weight={self.cls_weight}, ignore_negative={self.ignore_negative}"


# ---------------------------------------------------------------------------------------------------------------
# Registry and recipes
# ---------------------------------------------------------------------------------------------------------------

LOSSES: dict[str, Callable[..., nn.Module]] = {
    # segmentation: forward(logits (N, C, H, W), masks); take mode=
    "bce": _bce,
    "dice": _dice,
    "jaccard": _jaccard,
    "focal": _focal,
    "lovasz": _lovasz,
    "tversky": _tversky,
    "soft_ce": _soft_ce,
    "ssim": SSIMLoss,
    # classification: forward(logits (N, C), targets (N,) int64)
    "ce": nn.CrossEntropyLoss,
    "focal_ce": FocalCELoss,
    "bi_tempered": BiTemperedLoss,
    "focal_cosine": FocalCosineLoss,
    "taylor_ce": TaylorCELoss,
    "symmetric_ce": SymmetricCELoss,
    # weighted sum of the above: terms={name: weight or (weight, kwargs)}, mode=
    "combo": _combo,
}

#: Registry keys that take ``mode`` (the combo passes its ``mode`` to these terms only).
SEGMENTATION_LOSSES: frozenset[str] = frozenset(
    {"bce", "dice", "jaccard", "focal", "lovasz", "tversky", "soft_ce", "ssim"}
)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss from the registry: ``create_loss("dice", mode="multilabel")``.

    Args:
        name: key of ``LOSSES``.
        **kwargs: arguments of that loss; segmentation losses need ``mode`` (except "bce": "multilabel", and
            "soft_ce": "multiclass"); "combo" takes ``terms`` and ``mode``.
    Returns:
        an ``nn.Module`` whose forward takes (logits, targets) and returns the loss.
    Raises:
        KeyError: unknown name; the message lists the valid ones.
        ValueError: bad mode or argument value.
        TypeError: a missing ``mode`` or an argument the loss does not take.
    """
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; options: {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)


@dataclass(frozen=True)
class LossRecipe:
    """A winning loss setup, as data.

    Attributes:
        terms: registry name -> weight, or (weight, kwargs), as for ``create_loss("combo", terms=...)``.
        mode: segmentation mode the recipe was used with.
        cls_weight: weight of the classification-head BCE (``SegClsLoss``); None when the model has no head.
        ignore_negative: ``SegClsLoss``'s ``ignore_negative``.
        source: where it comes from.
    """

    terms: Mapping[str, float | tuple[float, Mapping[str, Any]]]
    mode: str
    source: str
    cls_weight: float | None = None
    ignore_negative: bool = False


RECIPES: dict[str, LossRecipe] = {
    "clouds_1st": LossRecipe(
        terms={"bce": 0.75, "dice": (0.25, {"smooth": 1.0})},
        mode="multilabel",
        cls_weight=0.1,
        ignore_negative=True,
        source="Understanding Clouds 1st place (pudae), configs/model_a_02.yaml: BCE 0.75 + Dice 0.25 on masks, "
        "BCE x 0.1 on the classification head, ignore_negative. pudae's Dice (smooth 1) is per image and class; "
        "smp's is per class over the batch.",
    ),
    "clouds_6th": LossRecipe(
        terms={"bce": 0.2, "dice": 0.8},
        mode="multilabel",
        source="Understanding Clouds 6th place: BCE 0.2 + Dice 0.8.",
    ),
    "trash_ce_dice": LossRecipe(
        terms={"soft_ce": 1.0, "dice": 1.0},
        mode="multiclass",
        source="Trash-sorting segmentation contest (boostcamp AI Tech): CE + Dice; equal weights are the kit's choice.",
    ),
    "trash_ce_dice_ssim": LossRecipe(
        terms={"soft_ce": 1.0, "dice": 1.0, "ssim": 1.0},
        mode="multiclass",
        source="Trash-sorting segmentation contest: CE + Dice + SSIM; equal weights are the kit's choice.",
    ),
    "trash_focal_dice": LossRecipe(
        terms={"focal_ce": 1.0, "dice": 1.0},
        mode="multiclass",
        source="Trash-sorting segmentation contest: Focal + Dice; softmax focal (Lin et al. 2017) since the classes "
        "are exclusive; equal weights are the kit's choice.",
    ),
    "building_bce": LossRecipe(
        terms={"bce": 1.0},
        mode="binary",
        source="Dacon building segmentation contest: BCE.",
    ),
}


def create_recipe(name: str | LossRecipe, mode: str | None = None) -> nn.Module:
    """Build a recipe of ``RECIPES``: a ``WeightedSum``, wrapped in a ``SegClsLoss`` when the recipe trains a
    classification head (then forward(mask_logits, cls_logits, masks)).

    Args:
        name: key of ``RECIPES`` or a ``LossRecipe``.
        mode: segmentation mode to use instead of the recipe's (e.g. a multilabel recipe on a binary task).
    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    if isinstance(name, LossRecipe):
        recipe = name
    elif name in RECIPES:
        recipe = RECIPES[name]
    else:
        raise KeyError(f"unknown loss recipe {name!r}; options: {sorted(RECIPES)}")
    loss = _combo(terms=recipe.terms, mode=mode or recipe.mode)
    if recipe.cls_weight is None:
        return loss
    return SegClsLoss(loss, cls_weight=recipe.cls_weight, ignore_negative=recipe.ignore_negative)
