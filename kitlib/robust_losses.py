"""Noise-robust classification losses, from logits: the losses of the Cassava Leaf Disease solutions.

Every loss here is a ``kitlib.class_losses.ClassificationLoss``: logits (N, C) with int64 labels (N,) or soft
targets (N, C) float (rows summing to 1, e.g. from the batch mixes of ``kitlib.mixes``), an optional ``weight`` per
class and a ``reduction``. They are registered in ``kitlib.losses.LOSSES`` ("bi_tempered", "focal_cosine",
"taylor_ce", "symmetric_ce", "nce_rce"), beside the cross-entropy and the focal loss of ``kitlib.class_losses``;
build them with ``kitlib.losses.create_loss``.

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
- ``NCERCELoss``: normalized CE + reverse CE (Ma, Huang, Wang, Romano, Erfani, Bailey 2020, "Normalized Loss
  Functions for Deep Learning with Noisy Labels", ICML), the Cassava solutions' "ComboLoss".

Label smoothing here defaults to the bi-tempered reference's convention ("others": 1 - s on the true class,
s / (C - 1) elsewhere), not torch's; ``smoothing_convention="uniform"`` gives torch's (``kitlib.class_losses``).

Usage::

    loss_fn = BiTemperedLoss(t1=0.8, t2=1.4, label_smoothing=0.1)   # or create_loss("bi_tempered", ...)
    loss = loss_fn(logits, targets)   # logits (N, C), targets (N,) int64 or (N, C) float
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kitlib.class_losses import ClassificationLoss, check_smoothing, focal_nll, smooth_targets

__all__ = [
    "BiTemperedLoss",
    "tempered_softmax",
    "FocalCosineLoss",
    "TaylorCELoss",
    "taylor_softmax",
    "SymmetricCELoss",
    "NCERCELoss",
    "reverse_ce",
]


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


class BiTemperedLoss(ClassificationLoss):
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
        label_smoothing: s in [0, 1), applied to labels and soft targets alike.
        num_iters: iterations of the normalisation of the tempered softmax (5 in the reference).
        reduction: "mean", "sum" or "none".
        smoothing_convention: "others" (the reference's: 1 - s on the true class, s / (C - 1) on each other) or
            "uniform" (torch's).
        weight: C class weights (``kitlib.class_losses``), or None.

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
        smoothing_convention: str = "others",
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__(weight, reduction)
        if not 0.0 <= t1 < 2.0:
            raise ValueError(f"t1 must be in [0, 2), got {t1}")
        if t2 <= 0.0:
            raise ValueError(f"t2 must be > 0, got {t2}")
        if num_iters < 1:
            raise ValueError(f"num_iters must be >= 1, got {num_iters}")
        self.t1, self.t2, self.num_iters = float(t1), float(t2), num_iters
        self.label_smoothing = check_smoothing(label_smoothing, smoothing_convention)
        self.smoothing_convention = smoothing_convention

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels = smooth_targets(targets, self.label_smoothing, self.smoothing_convention)
        if self.t1 == 1.0 and self.t2 == 1.0:
            return -(labels * logits.log_softmax(dim=-1)).sum(dim=-1)
        t1 = self.t1
        probs = tempered_softmax(logits, self.t2, self.num_iters).clamp_min(torch.finfo(logits.dtype).tiny)
        return (
            labels * (_log_t(labels + 1e-10, t1) - _log_t(probs, t1))
            - (labels.pow(2.0 - t1) - probs.pow(2.0 - t1)) / (2.0 - t1)
        ).sum(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"t1={self.t1}, t2={self.t2}, label_smoothing={self.label_smoothing}, num_iters={self.num_iters}, "
            f"smoothing_convention={self.smoothing_convention!r}"
        )


class FocalCosineLoss(ClassificationLoss):
    """Focal cosine loss (Kim, Kim, Lee, Song, Park 2020, "Data-Efficient Deep Learning Method for Image
    Classification Using Data Augmentation, Focal Cosine Loss, and Ensemble", arXiv:2007.07805), in the form the
    Cassava solutions used (kaggle.com/c/cassava-leaf-disease-classification/discussion/203271):

        (1 - cos(logits, t)) + xent * alpha * focal(normalize(logits), t),

    where t is the one-hot row of the label (or the soft target), normalize scales each row of logits to unit L2
    norm before the softmax, and focal is -sum_c t_c (1 - p_c)^gamma log p_c (``focal_nll``: (1 - p_y)^gamma CE
    for a label).

    Args:
        alpha: weight of the focal term.
        gamma: focusing parameter of the focal term.
        xent: weight of the focal cross-entropy against the cosine term (0.1 in the paper).
        reduction: "mean", "sum" or "none".
        weight: C class weights, or None.

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1, or (N, C) float soft targets.

    Raises:
        ValueError: targets that do not fit the logits; bad reduction.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        gamma: float = 2.0,
        xent: float = 0.1,
        reduction: str = "mean",
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__(weight, reduction)
        self.alpha, self.gamma, self.xent = alpha, gamma, xent

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cosine = 1.0 - F.cosine_similarity(logits, targets, dim=1)
        focal = self.alpha * focal_nll(F.normalize(logits, dim=1).log_softmax(dim=1), targets, self.gamma)
        return cosine + self.xent * focal


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


class TaylorCELoss(ClassificationLoss):
    """The Cassava solutions' Taylor cross-entropy: the NLL of the order-n Taylor softmax (``taylor_softmax``),
    with label smoothing (kaggle.com/yerramvarun/cassava-taylorce-loss-label-smoothing-combo, after
    github.com/CoinCheung/pytorch-loss, taylor_softmax.py).

    The kernels cite Feng et al. 2020 ("Can Cross Entropy Loss Be Robust to Label Noise?", IJCAI), whose Taylor
    CE is another expansion, sum_{k<=n} (1 - p_y)^k / k of -log p_y; both tend to the cross-entropy as n grows.
    This class is the kernels' version.

    Args:
        n: even order of the Taylor softmax (2 in the kernels).
        smoothing: s in [0, 1) (the kernels used 0.2).
        reduction: "mean", "sum" or "none".
        smoothing_convention: "others" (the kernels': 1 - s on the true class, s / (C - 1) on each other) or
            "uniform" (torch's).
        weight: C class weights, or None.

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1, or (N, C) float soft targets.

    Raises:
        ValueError: n odd or < 2; smoothing out of range; targets that do not fit the logits.
    """

    def __init__(
        self,
        n: int = 2,
        smoothing: float = 0.0,
        reduction: str = "mean",
        smoothing_convention: str = "others",
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__(weight, reduction)
        if n < 2 or n % 2:
            raise ValueError(f"Taylor softmax order n must be even and >= 2, got {n}")
        self.n = n
        self.smoothing = check_smoothing(smoothing, smoothing_convention)
        self.smoothing_convention = smoothing_convention

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels = smooth_targets(targets, self.smoothing, self.smoothing_convention)
        return -(labels * taylor_softmax(logits, self.n, dim=1).log()).sum(dim=1)


def reverse_ce(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reverse cross-entropy -sum_c p_c log t_c, as the symmetric-CE and NCE+RCE authors compute it: p clamped to
    [1e-7, 1] and t to [1e-4, 1], so log 0 is -log(1e-4); for a label y, -log(1e-4) (1 - p_y) when no p is clamped.

    Args:
        probs: (N, C) softmax probabilities.
        targets: (N, C) target rows.
    Returns:
        (N,) per sample, >= 0.
    """
    return -(probs.clamp(1e-7, 1.0) * targets.clamp(1e-4, 1.0).log()).sum(dim=1)


class _PlusReverseCE(ClassificationLoss):
    """alpha * active + beta * ``reverse_ce``, the form of symmetric CE and of Ma et al.'s active + passive losses; a
    subclass writes the active term, ``active(log_probs, targets)`` -> (N,)."""

    def __init__(self, alpha: float, beta: float, reduction: str, weight: Sequence[float] | None) -> None:
        super().__init__(weight, reduction)
        self.alpha, self.beta = float(alpha), float(beta)

    def active(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = logits.log_softmax(dim=1)
        return self.alpha * self.active(log_probs, targets) + self.beta * reverse_ce(log_probs.exp(), targets)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class SymmetricCELoss(_PlusReverseCE):
    """Symmetric cross-entropy, alpha * CE + beta * RCE (Wang, Ma, Chen, Luo, Yi, Bailey 2019, "Symmetric Cross
    Entropy for Robust Learning with Noisy Labels", ICCV), as the authors' code computes it: RCE is ``reverse_ce``.

    Args:
        alpha: weight of CE (0.1 in the paper's CIFAR-10 runs).
        beta: weight of RCE (1.0 in the paper's CIFAR-10 runs).
        reduction: "mean", "sum" or "none".
        weight: C class weights, or None.

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1, or (N, C) float soft targets.

    Raises:
        ValueError: targets that do not fit the logits; bad reduction.
    """

    def __init__(
        self, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean", weight: Sequence[float] | None = None
    ) -> None:
        super().__init__(alpha, beta, reduction, weight)

    def active(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(targets * log_probs).sum(dim=1)


class NCERCELoss(_PlusReverseCE):
    """NCE + RCE, alpha * NCE + beta * RCE (Ma, Huang, Wang, Romano, Erfani, Bailey 2020, "Normalized Loss Functions
    for Deep Learning with Noisy Labels", ICML; the authors' code: github.com/HanxunH/Active-Passive-Losses,
    loss.py, ``NCEandRCE``), the Cassava solutions' "ComboLoss". An active loss made robust by normalisation plus a
    passive one:

        NCE = (-sum_c t_c log p_c) / (-sum_k log p_k)   (= log p_y / sum_k log p_k for a label y; in [0, 1])
        RCE = ``reverse_ce``(p, t)                       (= -log(1e-4) (1 - p_y) for a label y)

    The normalisation divides the CE of the target by the sum of the CEs of every class; for a soft target the
    numerator is the CE of the target row (linear in it, so a one-hot row gives its label's NCE). C >= 2.

    Args:
        alpha: weight of NCE (1 in the paper's CIFAR-10 runs, 10 on CIFAR-100).
        beta: weight of RCE (1 on CIFAR-10, 0.1 on CIFAR-100).
        reduction: "mean", "sum" or "none".
        weight: C class weights, or None.

    Shape:
        y_pred: (N, C) logits.
        y_true: (N,) int64 in 0..C-1, or (N, C) float soft targets.

    Raises:
        ValueError: targets that do not fit the logits; bad reduction.
    """

    def __init__(
        self, alpha: float = 1.0, beta: float = 1.0, reduction: str = "mean", weight: Sequence[float] | None = None
    ) -> None:
        super().__init__(alpha, beta, reduction, weight)

    def active(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (targets * log_probs).sum(dim=1) / log_probs.sum(dim=1)
