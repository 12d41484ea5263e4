"""Pseudo-labels from test probabilities, and the loss's ignored pixels.

Pseudo-labelling (Lee 2013, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural
Networks"): a trained model's (or an ensemble's) confident test predictions become training targets of the next
model. Winners used it in the kit's competitions: Understanding Clouds (pseudo masks of the test set from the
ensemble), Cassava 2020 (soft test labels of the ensemble, kept above a confidence), Severstal (confident test images).
The rows built from them are train-only rows (``kitlib.train_rows``), so the test set never enters the OOF.

- ``pseudo_labels``: classification probabilities (n, C) -> the rows kept (max probability >= threshold), their hard
  labels and their soft rows;
- ``pseudo_masks``: one image's segmentation probabilities (K, H, W) -> a mask in the cache's format whose
  low-confidence pixels hold ``kitlib.presets.IGNORE_INDEX`` (255);
- ``ignore_pixels``: in ``kitlib.engine.compute_loss``, the pixels whose target is ``IGNORE_INDEX`` get their logits
  detached and the model's own prediction as target, so any loss (BCE, Dice, Lovasz, SSIM, CE and their sums) takes
  exactly zero gradient from them; a loss of its own ``ignore_index`` would serve CE only.
"""

from __future__ import annotations

import numpy as np
import torch

from kitlib._pixels import as_float_probs
from kitlib.presets import IGNORE_INDEX

__all__ = ["ignore_pixels", "pseudo_labels", "pseudo_masks"]


def pseudo_labels(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident rows of classification probabilities.

    Args:
        probs: (n, C) float (float16 as ``test_probs.npy`` holds them) or uint8 p x 255, rows summing to about 1.
        threshold: keep the rows whose max probability is >= it, in [0, 1] (0 keeps every row).
    Returns:
        ``(keep, labels, soft)``: (n,) bool, (m,) int64 argmax of the kept rows, (m, C) float32 kept rows renormalised
        to sum to 1.
    Raises:
        ValueError: probs not 2-D, a threshold outside [0, 1].
    """
    p = as_float_probs(probs, np.float64)  # float64: a threshold compares with v / 255 as elsewhere
    if p.ndim != 2:
        raise ValueError(f"classification probabilities must be (n, C), got shape {p.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"pseudo_threshold must be in [0, 1], got {threshold}")
    keep = p.max(axis=1) >= threshold
    kept = p[keep]
    soft = kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
    return keep, kept.argmax(axis=1).astype(np.int64), soft.astype(np.float32)


def pseudo_masks(probs: np.ndarray, threshold: float, multiclass: bool) -> np.ndarray:
    """One image's pseudo mask, the cache's mask format with ``IGNORE_INDEX`` where the prediction is not confident.

    Binary / multilabel: per class channel, 1 where p >= 0.5, else 0; 255 where the confidence max(p, 1 - p) is below
    ``threshold`` (per channel). Multiclass: the argmax class index per pixel; 255 where max_c p_c is below it.

    Args:
        probs: (K, H, W) float in [0, 1] or uint8 p x 255 (sigmoid channels), or (C, H, W) softmax (multiclass,
            background included).
        threshold: the confidence a labelled pixel needs, in [0, 1] (0.5 or less labels every sigmoid pixel).
        multiclass: softmax probabilities -> class indices.
    Returns:
        (H, W, K) uint8 in {0, 1, 255}, or (H, W) uint8 class indices and 255 (multiclass).
    Raises:
        ValueError: probs not 3-D, a threshold outside [0, 1], more than 255 classes.
    """
    p = as_float_probs(probs, np.float64)  # float64: a threshold compares with v / 255 as elsewhere
    if p.ndim != 3:
        raise ValueError(f"one image's probabilities must be (K, H, W), got shape {p.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"pseudo_threshold must be in [0, 1], got {threshold}")
    if multiclass:
        if p.shape[0] > IGNORE_INDEX:
            raise ValueError(f"{p.shape[0]} classes: class indices must stay below IGNORE_INDEX {IGNORE_INDEX}")
        out = p.argmax(axis=0).astype(np.uint8)
        out[p.max(axis=0) < threshold] = IGNORE_INDEX
        return out
    out = (p >= 0.5).astype(np.uint8)
    out[np.maximum(p, 1.0 - p) < threshold] = IGNORE_INDEX
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def ignore_pixels(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the pixels whose target is ``IGNORE_INDEX`` out of the gradient, for any segmentation loss.

    There the logits are replaced by their detached copy and the target by the detached prediction (logits > 0 per
    channel; the argmax class for multiclass), so the loss sees a pixel it already gets right and no gradient reaches
    the logits through it. Batches without such pixels (every competition row) pass through unchanged.

    Args:
        logits: (N, K, H, W) float (sigmoid channels) or (N, C, H, W) (multiclass).
        target: (N, K, H, W) float {0, 1, 255} or (N, H, W) int64 class indices and 255; anything else (labels,
            soft rows, presence vectors) passes through.
    Returns:
        ``(logits, target)``, new tensors where some pixel is ignored.
    """
    if target.dim() < 3 or logits.dim() != 4:
        return logits, target
    ignored = target == IGNORE_INDEX
    if not bool(ignored.any()):
        return logits, target
    frozen = logits.detach()
    if target.dim() == 3:  # multiclass class indices
        prediction = frozen.argmax(dim=1).to(target.dtype)
        return torch.where(ignored[:, None], frozen, logits), torch.where(ignored, prediction, target)
    prediction = (frozen > 0).to(target.dtype)
    return torch.where(ignored, frozen, logits), torch.where(ignored, prediction, target)
