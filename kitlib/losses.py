"""Losses for segmentation and image classification, from logits, behind one registry.

Segmentation losses come from ``segmentation_models_pytorch.losses`` (smp) where smp has them. The kit adds what
smp lacks: an SSIM loss, weighted sums of losses and a mask + classification-head loss (``SegClsLoss``). The
classification losses live in ``kitlib.class_losses`` (cross-entropy with label smoothing in torch's and the
bi-tempered reference's conventions, focal CE; targets, class weights) and ``kitlib.robust_losses`` (the Cassava
solutions' bi-tempered, focal cosine, Taylor CE, symmetric CE, NCE+RCE); the registry ``LOSSES`` here lists them
too. Every loss takes raw logits, never probabilities.

Segmentation losses take a ``mode``, in smp's words; a preset's ``task`` is that mode
(``create_loss("dice", mode=preset.task)``):

- ``"binary"``: logits (N, 1, H, W); masks (N, 1, H, W) or (N, H, W) in {0, 1}.
- ``"multilabel"``: logits (N, K, H, W); masks (N, K, H, W) float in {0, 1}, classes may overlap (Understanding
  Clouds).
- ``"multiclass"``: logits (N, C, H, W); masks (N, H, W) int64 class indices, background 0 (trash contest).

Classification losses take logits (N, C) and int64 labels (N,) (Cassava) or soft targets (N, C) float (the batch
mixes of ``kitlib.mixes``), and a ``weight`` per class. ``loss_parameters(name)`` lists the keywords a loss takes
(what ``loss_kwargs`` may hold), ``check_loss_kwargs`` refuses others before anything is built.

Usage::

    loss_fn = create_loss("combo", terms={"bce": 0.75, "dice": 0.25}, mode="multilabel")
    loss = loss_fn(logits, masks)     # scalar; loss_fn.last_values == {"bce": ..., "dice": ...} (detached)
    loss_fn = create_recipe("clouds_1st")
    loss = loss_fn(mask_logits, cls_logits, masks)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from kitlib.class_losses import CrossEntropyLoss, FocalCELoss, check_reduction
from kitlib.robust_losses import BiTemperedLoss, FocalCosineLoss, NCERCELoss, SymmetricCELoss, TaylorCELoss

__all__ = [
    "MODES",
    "LOSSES",
    "SEGMENTATION_LOSSES",
    "RECIPES",
    "LossRecipe",
    "check_loss_kwargs",
    "create_loss",
    "create_recipe",
    "loss_parameters",
    "WeightedSum",
    "SegClsLoss",
    "mask_presence",
    "SoftBCELoss",
    "SSIMLoss",
    "ssim",
]

#: Segmentation modes, smp's words (``segmentation_models_pytorch.losses.constants``).
MODES: tuple[str, ...] = ("binary", "multilabel", "multiclass")


def _check_mode(mode: str, allowed: tuple[str, ...] = MODES) -> str:
    if mode not in allowed:
        raise ValueError(f"mode must be one of {allowed}, got {mode!r}")
    return mode


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
            reduction=check_reduction(reduction),
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


def _signature_of(cls: type) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Give a factory ``fn(*, mode, **kwargs) -> cls(mode, **kwargs)`` the signature of ``cls``, so that
    ``loss_parameters`` names the keywords smp's class takes."""

    def mark(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        fn.__signature__ = inspect.signature(cls)
        return fn

    return mark


@_signature_of(smp_losses.DiceLoss)
def _dice(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``DiceLoss``: 1 - soft Dice per class over the batch, classes without target pixels count 0."""
    return smp_losses.DiceLoss(_check_mode(mode), **kwargs)


@_signature_of(smp_losses.JaccardLoss)
def _jaccard(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``JaccardLoss``: 1 - soft IoU per class over the batch, classes without target pixels count 0."""
    return smp_losses.JaccardLoss(_check_mode(mode), **kwargs)


@_signature_of(smp_losses.FocalLoss)
def _focal(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``FocalLoss`` (Lin et al. 2017) on sigmoid outputs; multiclass sums one-vs-rest terms over classes."""
    return smp_losses.FocalLoss(_check_mode(mode), **kwargs)


@_signature_of(smp_losses.LovaszLoss)
def _lovasz(*, mode: str, **kwargs: Any) -> nn.Module:
    """smp ``LovaszLoss`` (Berman et al. 2018): Lovasz hinge (binary, multilabel), Lovasz-softmax (multiclass)."""
    return smp_losses.LovaszLoss(_check_mode(mode), **kwargs)


@_signature_of(smp_losses.TverskyLoss)
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
        reduction=check_reduction(reduction), smooth_factor=smooth_factor, ignore_index=ignore_index
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
    # classification: forward(logits (N, C), labels (N,) int64 or soft targets (N, C) float)
    "ce": CrossEntropyLoss,
    "focal_ce": FocalCELoss,
    "bi_tempered": BiTemperedLoss,
    "focal_cosine": FocalCosineLoss,
    "taylor_ce": TaylorCELoss,
    "symmetric_ce": SymmetricCELoss,
    "nce_rce": NCERCELoss,
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


def loss_parameters(name: str) -> tuple[str, ...]:
    """The keywords ``create_loss(name, ...)`` accepts (what ``loss_kwargs`` may hold), read from the loss's signature
    (smp's class for the smp losses).

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; options: {sorted(LOSSES)}")
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in inspect.signature(LOSSES[name]).parameters.values() if p.kind in kinds)


def check_loss_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse keywords that loss ``name`` does not take, before anything is built (for "combo": the terms' too).

    Args:
        name: key of ``LOSSES``.
        kwargs: the keywords for ``create_loss(name, **kwargs)``.
    Raises:
        KeyError: an unknown loss name (also of a combo term).
        TypeError: a keyword the loss does not take; the message names the loss and the keywords it takes.
    """
    accepted = loss_parameters(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"loss {name!r} takes no {', '.join(map(repr, unknown))}; its parameters: {', '.join(accepted)}"
        )
    if name == "combo":
        for term, spec in dict(kwargs.get("terms") or {}).items():
            check_loss_kwargs(term, dict(spec[1]) if isinstance(spec, tuple | list) and len(spec) > 1 else {})


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
        terms={"soft_ce": 0.8, "dice": 0.2}, mode="multiclass",
        source="Trash-sorting contest (boostcamp AI Tech): DiceCE with lambda 0.8, lambda * CE + (1 - lambda) * Dice.",
    ),  # fmt: skip
    "trash_ce_dice_ssim": LossRecipe(
        terms={"soft_ce": 0.75, "dice": 0.25, "ssim": 0.25}, mode="multiclass",
        source="Trash-sorting contest: CE 0.75 + Dice 0.25 + SSIM 0.25, the 1st place's TripleLoss weights (bcaitech1 "
        "p3-ims-obd-multihead_ensemble); SSIM on the softmax probabilities, so it has a gradient (theirs: argmax).",
    ),  # fmt: skip
    "trash_1st_triple": LossRecipe(
        terms={"focal_ce": (0.75, {"alpha": 0.25, "gamma": 2.0}), "dice": 0.25, "ssim": 0.25}, mode="multiclass",
        source="Trash-sorting 1st place TripleLoss: focal (alpha 0.25, gamma 2) 0.75 + Dice 0.25 + SSIM 0.25.",
    ),  # fmt: skip
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
