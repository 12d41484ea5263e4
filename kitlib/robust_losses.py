"""Noise-robust classification losses, from logits: the losses of the Cassava Leaf Disease solutions.

Every loss here takes logits (N, C) and int64 targets (N,); ``BiTemperedLoss`` and ``TaylorCELoss`` also take soft
targets (N, C) float. They are registered in ``kitlib.losses.LOSSES`` ("focal_ce", "bi_tempered", "focal_cosine",
"taylor_ce", "symmetric_ce"), beside the segmentation losses; build them with ``kitlib.losses.create_loss``.

- ``FocalCELoss``: softmax focal loss (Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for Dense Object
  Detection"); also usable per pixel, (N, C, H, W).
- ``BiTemperedLoss`` and ``tempered_softmax``: the bi-tempered logistic loss and its tempered softmax (Amid,
  Warmuth, Anil, Koren 2019, "Robust Bi-Tempered Logistic Loss Based on Bregman Divergences", NeurIPS), after
  Google's reference implementation (github.com/google/bi-tempered-loss, tensorflow/loss.py), with the exact
  implicit gradient of the normalisation.
- ``FocalCosineLoss``: focal cosine loss (Kim, Kim, Lee, Song, Park 2020, arXiv:2007.07805), in the Cassava
  solutions' form (kaggle.com/c/cassava-leaf-disease-classification/discussion/203271).
- ``TaylorCELoss`` and ``taylor_softmax``: NLL of the Taylor softmax (de Brebisson & Vincent 2016, "An Exploration
  of Softmax Alternatives Belonging to the Spherical Loss Family"; Banerjee et al. 2020, arXiv:2011.11538), as the
  Cassava kernels wrote it (kaggle.com/yerramvarun/cassava-taylorce-loss-label-smoothing-combo, after
  github.com/CoinCheung/pytorch-loss).
- ``SymmetricCELoss``: symmetric cross-entropy (Wang, Ma, Chen, Luo, Yi, Bailey 2019, "Symmetric Cross Entropy for
  Robust Learning with Noisy Labels", ICCV).

Label smoothing here is the bi-tempered reference's (1 - s on the true class, s / (C - 1) elsewhere), not torch's.

Usage::

    loss_fn = BiTemperedLoss(t1=0.8, t2=1.4, label_smoothing=0.1)   # or create_loss("bi_tempered", ...)
    loss = loss_fn(logits, targets)   # logits (N, C), targets (N,) int64 or (N, C) float
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FocalCELoss",
    "BiTemperedLoss",
    "tempered_softmax",
    "FocalCosineLoss",
    "TaylorCELoss",
    "taylor_softmax",
    "SymmetricCELoss",
]

_REDUCTIONS = ("mean", "sum", "none")


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
# Losses
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
