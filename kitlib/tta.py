"""Test-time augmentation: named (augment, deaugment) pairs and a predictor that averages probabilities.

Besides the dihedral transforms (both tracks), classifiers get crops and rescales: five-crop (four corners and the
centre, each ``CROP_FRACTION`` of the side and resized back; Krizhevsky et al. 2012), centre crop, and multi-scale
(the image resized by 0.875 and 1.125; a classifier with global pooling takes any size). These cannot be undone on a
mask, so a segmentation model under them fails naming the transform. ``plain_weight`` weights the plain view against
the mean of the others, as the Cassava solutions blended their TTA and plain predictions.

A TTA is a list of geometric transforms of the image grid. Each pass feeds ``augment(images)`` to the model and
maps the mask output back with ``deaugment``, the transform's inverse, so that every pass predicts in the frame
of the original image; the passes are then averaged. The layout follows pytorch-toolbelt's
``d4_image_augment`` / ``d4_image_deaugment`` (named pairs, checked with an identity model), written here in a
few lines of torch.

Transforms act on the last two dimensions of a tensor: (N, C, H, W) images and (N, K, H, W) mask logits alike.
The transposing members of the dihedral group (``rot90``, ``rot270``, ``transpose``, ``antitranspose``) turn an
(H, W) image into a (W, H) one. They are exact for any H and W provided the model follows the geometry of its
input (a fully convolutional segmentation model whose input sides both meet its divisibility rule, or a
classifier); a model that always returns one fixed output size fails with a ``ValueError`` naming the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Transform", "TRANSFORMS", "TTA", "tta_pairs", "tta_names", "check_tta", "predict_tta", "ACTIVATIONS"]

Transform = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def _hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def _vflip(x: Tensor) -> Tensor:
    return x.flip(-2)


def _rot90(x: Tensor) -> Tensor:
    """Quarter turn counter-clockwise (as ``np.rot90`` draws it): (H, W) -> (W, H)."""
    return torch.rot90(x, 1, dims=(-2, -1))


def _rot180(x: Tensor) -> Tensor:
    """Half turn = horizontal and vertical flip."""
    return x.flip(-2, -1)


def _rot270(x: Tensor) -> Tensor:
    """Quarter turn clockwise: (H, W) -> (W, H)."""
    return torch.rot90(x, -1, dims=(-2, -1))


def _transpose(x: Tensor) -> Tensor:
    """Mirror about the main diagonal: (H, W) -> (W, H)."""
    return x.transpose(-2, -1)


def _antitranspose(x: Tensor) -> Tensor:
    """Mirror about the anti-diagonal (transpose of the half turn): (H, W) -> (W, H)."""
    return x.flip(-2, -1).transpose(-2, -1)


#: Side of a five-crop / centre-crop TTA crop, as a fraction of the image side (224 / 256, the ImageNet convention).
CROP_FRACTION = 0.875


def _crop(x: Tensor, where: str, fraction: float = CROP_FRACTION) -> Tensor:
    """A crop of ``fraction`` of each side at a corner ("tl", "tr", "bl", "br") or the centre ("c"), resized back
    to (H, W) (bilinear, ``align_corners=False``)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top = {"t": 0, "b": h - ch, "c": (h - ch) // 2}[where[0]]
    left = {"l": 0, "r": w - cw, "c": (w - cw) // 2}[where[-1]]
    return F.interpolate(x[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False)


def _scale(x: Tensor, factor: float) -> Tensor:
    """The image resized by ``factor`` (bilinear): a multi-scale TTA view for a classifier."""
    h, w = x.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


#: The 8 members of the dihedral group D4 of the image grid: name -> (augment, deaugment). Flips, the half
#: turn and both mirrors are their own inverse; the quarter turns invert each other. The crops and rescales that follow
#: have no inverse on a mask (deaugment None): classifiers only.
TRANSFORMS: dict[str, tuple[Transform, Transform | None]] = {
    "identity": (_identity, _identity),
    "hflip": (_hflip, _hflip),
    "vflip": (_vflip, _vflip),
    "rot90": (_rot90, _rot270),
    "rot180": (_rot180, _rot180),
    "rot270": (_rot270, _rot90),
    "transpose": (_transpose, _transpose),
    "antitranspose": (_antitranspose, _antitranspose),
    **{f"crop_{w}": (partial(_crop, where=w), None) for w in ("tl", "tr", "bl", "br", "c")},
    "scale_0.875": (partial(_scale, factor=0.875), None),
    "scale_1.125": (partial(_scale, factor=1.125), None),
}

#: TTA name -> the transforms it averages over (the original image included).
TTA: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "hflip": ("identity", "hflip"),
    "vflip": ("identity", "vflip"),
    "flips": ("identity", "hflip", "vflip", "rot180"),  # rot180 = both flips
    "d4": ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"),
    # classifiers only
    "center_crop": ("crop_c",),
    "five_crop": ("crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"),
    "plain_five_crop": ("identity", "crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"),
    "multiscale": ("identity", "scale_0.875", "scale_1.125"),
    "flips_multiscale": ("identity", "hflip", "vflip", "rot180", "scale_0.875", "scale_1.125"),
}

#: activation name -> function over the channel dimension (dim 1) of logits.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=1),
    "none": _identity,
}


def tta_names(tta: str | Sequence[str]) -> tuple[str, ...]:
    """The transform names of a TTA: a key of ``TTA``, or a sequence of keys of ``TRANSFORMS``.

    Raises:
        KeyError: unknown TTA or transform name; the message lists the valid ones.
        ValueError: an empty sequence.
    """
    if isinstance(tta, str):
        if tta not in TTA:
            raise KeyError(f"unknown TTA {tta!r}; options: {sorted(TTA)} (or a list of {sorted(TRANSFORMS)})")
        return TTA[tta]
    names = tuple(tta)
    if not names:
        raise ValueError("a TTA needs at least one transform (use 'none' for the plain prediction)")
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise KeyError(f"unknown transform(s) {unknown}; options: {sorted(TRANSFORMS)}")
    return names


def check_tta(tta: str | Sequence[str], plain_weight: float | None = None, segmentation: bool = False) -> None:
    """Check a TTA before a run starts (the notebooks' ``tta`` / ``tta_weight`` parameters).

    Args:
        tta: a TTA name or a list of transform names.
        plain_weight: ``predict_tta``'s weight of the plain pass, or None.
        segmentation: whether the model predicts masks: crops and rescales are then refused.
    Raises:
        KeyError: an unknown TTA or transform (the message lists the options).
        ValueError: a crop or rescale for a segmentation model; a ``plain_weight`` outside [0, 1], or one without an
            "identity" pass and another one to weigh it against.
    """
    names = tta_names(tta)
    lossy = [n for n in names if TRANSFORMS[n][1] is None]
    if segmentation and lossy:
        raise ValueError(f"TTA transforms {lossy} crop or rescale the image and cannot be undone on masks: they are "
                         "for classifiers (use hflip, vflip, flips or d4 for segmentation)")  # fmt: skip
    if plain_weight is not None and (not 0.0 <= plain_weight <= 1.0 or "identity" not in names or len(names) < 2):
        raise ValueError(f"plain_weight (tta_weight) {plain_weight} needs a weight in [0, 1] and a TTA with 'identity' "
                         f"and another pass, got {list(names)}")  # fmt: skip


def tta_pairs(tta: str | Sequence[str]) -> list[tuple[Transform, Transform | None]]:
    """(augment, deaugment) pairs of a TTA.

    Args:
        tta: a key of ``TTA`` ("none", "hflip", "vflip", "flips", "d4") or a sequence of ``TRANSFORMS`` keys.
    Returns:
        One pair per pass. Both functions take and return tensors whose last two dimensions are (H, W):
        ``deaugment(augment(x))`` equals ``x``. The transposing transforms of "d4" return (W, H).
    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    return [TRANSFORMS[n] for n in tta_names(tta)]


def _apply(output: object, deaugment: Transform, act: Callable, cls_act: Callable, name: str) -> tuple[Tensor, ...]:
    """Probabilities of one pass in the original frame: 4-D outputs deaugmented, 2-D ones left as they are."""
    parts = output if isinstance(output, (tuple, list)) else (output,)
    if not 1 <= len(parts) <= 2 or not all(isinstance(p, Tensor) for p in parts):
        raise TypeError(
            "model output must be a tensor or a tuple (mask_logits, cls_logits), got "
            f"{type(output).__name__} of {[type(p).__name__ for p in parts]}"
        )
    out = []
    for i, p in enumerate(parts):
        if p.ndim == 4 and deaugment is None:
            raise ValueError(
                f"TTA transform {name!r} crops or rescales the image and cannot be undone on mask outputs: it is for "
                "classifiers (use hflip, vflip, flips or d4 for segmentation)"
            )
        if p.ndim == 4:
            out.append(deaugment(act(p.float())))
        elif p.ndim == 2:
            out.append((cls_act if len(parts) == 2 else act)(p.float()))
        else:
            raise ValueError(
                f"model output {i} under TTA transform {name!r} has shape {tuple(p.shape)}; expected mask logits "
                "(N, K, H, W) or class logits (N, C)"
            )
    return tuple(out)


def predict_tta(
    model: nn.Module,
    images: Tensor,
    tta: str | Sequence[str] = "none",
    activation: str = "sigmoid",
    cls_activation: str | None = None,
    plain_weight: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Average a model's probabilities over the passes of a TTA.

    The model runs in eval mode under ``torch.no_grad``; its previous train/eval mode is restored afterwards,
    also when it raises. Probabilities, not logits, are averaged (the activation comes first, per pass). Wrap the
    call in ``torch.autocast`` for mixed precision; the average is accumulated in float32.

    Args:
        model: returns mask logits (N, K, H', W') spatially aligned with its input (any H', W' in proportion),
            a tuple (mask_logits (N, K, H', W'), cls_logits (N, K)) (segmentation with a classification head,
            whose logits are taken as flip-invariant and averaged without deaugment), or class logits (N, C)
            (an image classifier; averaged without deaugment).
        images: (N, C, H, W) float, already normalised and on the model's device.
        tta: a key of ``TTA`` ("none", "hflip", "vflip", "flips", "d4") or a sequence of ``TRANSFORMS`` keys.
            "d4" on non-square images feeds (W, H) images to the model for its transposing passes (see the
            module docstring).
        activation: "sigmoid" (binary / multilabel), "softmax" (multiclass, over dim 1) or "none" (average the
            raw outputs).
        cls_activation: activation of the classification head of a tuple output; None = ``activation``.
        plain_weight: None: every pass counts the same. A weight w in [0, 1]: ``w * plain + (1 - w) * mean(others)``,
            the plain ("identity") pass against the mean of the augmented ones (the Cassava solutions' blend of
            plain and TTA predictions); the TTA must hold "identity" and another transform.
    Returns:
        Probabilities, float32, on the model's output device: (N, K, H', W') or (N, C); or the tuple
        (mask_probs (N, K, H', W'), cls_probs (N, K)) for a tuple output.
    Raises:
        KeyError: unknown TTA, transform or activation name (the message lists the options).
        ValueError: images not 4-D; a pass whose output shape differs from the first pass's after deaugment
            (a model that ignores its input's geometry under a transposing transform); a crop or rescale on mask
            outputs; a ``plain_weight`` outside [0, 1] or without an identity and another pass.
        TypeError: a model output that is neither a tensor nor a tuple of two tensors.
    """
    names = tta_names(tta)
    for key in (activation, cls_activation if cls_activation is not None else activation):
        if key not in ACTIVATIONS:
            raise KeyError(f"unknown activation {key!r}; options: {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    cls_act = ACTIVATIONS[cls_activation] if cls_activation is not None else act
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    check_tta(names, plain_weight)
    if plain_weight is not None:  # the plain pass alone, then the others' mean
        plain = predict_tta(model, images, ("identity",), activation, cls_activation)
        others = predict_tta(model, images, [n for n in names if n != "identity"], activation, cls_activation)
        if isinstance(plain, tuple):
            return tuple(plain_weight * p + (1.0 - plain_weight) * o for p, o in zip(plain, others, strict=True))
        return plain_weight * plain + (1.0 - plain_weight) * others
    was_training = model.training
    model.eval()
    total: list[Tensor] | None = None
    first = names[0]
    try:
        with torch.no_grad():
            for name in names:
                augment, deaugment = TRANSFORMS[name]
                probs = _apply(model(augment(images)), deaugment, act, cls_act, name)
                if total is None:
                    total = [p.clone() for p in probs]  # never add into the model's (or the caller's) tensor
                    continue
                shapes = [tuple(p.shape) for p in probs], [tuple(t.shape) for t in total]
                if shapes[0] != shapes[1]:
                    raise ValueError(
                        f"TTA transform {name!r}: deaugmented output shape(s) {shapes[0]} differ from those of "
                        f"{first!r} {shapes[1]}; the model's output does not follow the geometry of its input "
                        f"(input {tuple(augment(images).shape)}; a transposing transform on non-square images "
                        "needs a fully convolutional model)"
                    )
                for t, p in zip(total, probs, strict=True):
                    t.add_(p)
    finally:
        model.train(was_training)
    assert total is not None  # names is never empty
    out = tuple(t.div_(len(names)) for t in total)
    return out if len(out) == 2 else out[0]
