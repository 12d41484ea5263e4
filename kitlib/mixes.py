"""Batch mixing: for classification MixUp, CutMix and FMix turn (images, labels) into (mixed images, soft targets);
for segmentation CutMix and object copy-paste mix images and masks together (``SegmentationMix``, below).

Each mixes a batch with itself reversed (image i with image N-1-i, as ``timm.data.Mixup`` does in its "batch" mode)
with one lambda per batch drawn from Beta(alpha, alpha); the soft targets are lambda * one_hot(y_i) + (1 - lambda) *
one_hot(y_{N-1-i}), with lambda the share of image i's pixels (after the area correction of CutMix, the mask mean of
FMix). A batch is mixed with probability ``prob``, else passed through unchanged (int64 labels: every kit
classification loss takes both, ``kitlib.class_losses``).

- MixUp (Zhang, Cisse, Dauphin, Lopez-Paz 2018, "mixup: Beyond Empirical Risk Minimization"): x = lambda x_i +
  (1 - lambda) x_j.
- CutMix (Yun, Han, Oh, Chun, Choe, Yoo 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features"): a box of area (1 - lambda) H W from x_j pasted into x_i; the box and lambda recomputed from
  the box clipped at the border come from timm (``timm.data.mixup.cutmix_bbox_and_lam``, ``correct_lam=True``).
- FMix (Harris, Marcu, Painter, Niranjan, Prugel-Bennett, Hare 2020, "FMix: Enhancing Mixed Sample Data
  Augmentation", arXiv:2002.12047; reference code github.com/ecs-vlc/FMix, fmix.py): a binary mask from Fourier
  noise whose spectrum decays as 1 / f^decay_power, the top lambda share of its pixels set to 1 (``fmix_mask``).
  Written here: no maintained package ships it. The reference's soft-edged masks (``max_soft``) and its
  ``reformulate`` lambda are left out.
- "mixup_cutmix": MixUp or CutMix, chosen per batch with probability 1/2 each (timm's ``switch_prob``).

SnapMix (Huang et al. 2021), also seen in Cassava solutions, is not here: it needs the classifier's class activation
maps inside the loss, which the kit's loop does not expose.

Why not ``timm.data.Mixup`` itself: it refuses odd batch sizes (the last batch of a fold may be odd) and smooths
labels in torch's convention inside the mix, where the kit leaves smoothing to the loss (``loss_kwargs``), so each
loss smooths in its own convention, mixed or not. timm's box and lambda correction are used as they are.

Randomness: lambda, the choice, the box and the Fourier noise are drawn from numpy's global generator, which the
training loop reseeds every epoch from (seed, epoch) (``kitlib.engine.fit``), so a resumed run mixes as an
uninterrupted one does.

Segmentation (``SegmentationMix``; the partner of image i is again image N-1-i):

- "cutmix": a box of area (1 - lambda) H W of image j and of its masks pasted into image i and its masks (CutMix
  applied to dense labels, as in French, Laine, Aila et al. 2020, "Semi-supervised semantic segmentation needs strong,
  varied perturbations"); the box is timm's, as above.
- "copy_paste": the pixels of image j that belong to the chosen classes (``classes``: the objects) pasted, in place,
  onto image i with their labels (Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data Augmentation Method for
  Instance Segmentation"; the trash-sorting team's "SongbaeMix" pasted objects of its rare classes cut from other
  training images). The pasted object covers what was beneath it: a multiclass mask takes the object's class there, a
  multilabel mask the object image's channels.

Usage::

    mix = make_mix("cutmix", num_classes=5, prob=0.5, alpha=1.0)
    images, targets = mix(images, labels)   # (N, 3, H, W), (N,) int64 -> (N, 3, H, W), (N, 5) float (or labels)
    seg = SegmentationMix("copy_paste", multiclass=True, classes=[4, 5, 6])
    images, masks = seg(images, masks)      # (N, 3, H, W), (N, H, W) int64 class indices -> the same shapes
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.mixup import cutmix_bbox_and_lam

from kitlib.recipes import CLASSIFICATION_MIXES, MIXES, SEGMENTATION_MIXES

__all__ = ["BatchMix", "SegmentationMix", "check_mix", "fmix_mask", "make_mix", "mix_targets"]


def check_mix(kind: str, prob: float, alpha: float) -> None:
    """Check a batch mix's settings, named as 10_train's parameters.

    Raises:
        ValueError: ``mix`` not one of ``kitlib.recipes.MIXES``, ``mix_prob`` outside [0, 1], ``mix_alpha`` <= 0.
    """
    if kind not in MIXES:
        raise ValueError(f"unknown mix {kind!r}; options: {list(MIXES)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mix_prob must be in [0, 1], got {prob}")
    if not alpha > 0.0:
        raise ValueError(f"mix_alpha must be > 0, got {alpha}")


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    """Soft targets of a batch mixed with itself reversed: lam * one_hot(y_i) + (1 - lam) * one_hot(y_{N-1-i}).

    Args:
        labels: (N,) int64 in 0..num_classes-1, or (N, C) float soft rows (pseudo-labels), mixed linearly the same way.
        num_classes: C.
        lam: share of each sample's own image, in [0, 1].
    Returns:
        (N, C) float32, rows summing to 1 (when the soft rows do); sample i has mass lam on y_i (plus 1 - lam when
        y_{N-1-i} = y_i).
    """
    one_hot = labels.float() if labels.dim() == 2 else F.one_hot(labels.long(), num_classes).float()
    return lam * one_hot + (1.0 - lam) * one_hot.flip(0)


def fmix_mask(lam: float, shape: tuple[int, int], decay_power: float = 3.0) -> np.ndarray:
    """A binary FMix mask: low-frequency Fourier noise, its top ``round(lam * H * W)`` pixels set to 1 (Harris et al.
    2020; github.com/ecs-vlc/FMix, ``make_low_freq_image`` and ``binarise_mask``).

    The noise is the inverse real FFT of complex Gaussian coefficients scaled by 1 / max(f, 1 / max(H, W))^decay_power,
    f the radial frequency of each coefficient (cycles per pixel); large ``decay_power`` gives large smooth blobs.
    Draws from numpy's global generator.

    Args:
        lam: share of ones, in [0, 1].
        shape: (H, W).
        decay_power: decay of the spectrum (3 in the paper).
    Returns:
        (H, W) float32 in {0, 1} whose mean is round(lam * H * W) / (H * W).
    Raises:
        ValueError: lam outside [0, 1], decay_power <= 0.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if decay_power <= 0:
        raise ValueError(f"decay_power must be > 0, got {decay_power}")
    h, w = shape
    freqs = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
    coefficients = np.random.randn(*freqs.shape, 2) * scale[..., None]  # noqa: NPY002 - the per-epoch seeded state
    noise = np.fft.irfftn(coefficients[..., 0] + 1j * coefficients[..., 1], s=(h, w), axes=(0, 1))
    mask = np.zeros(h * w, np.float32)
    mask[np.argsort(-noise.ravel(), kind="stable")[: int(round(lam * h * w))]] = 1.0
    return mask.reshape(h, w)


class BatchMix:
    """One of ``kitlib.recipes.MIXES`` (but "none") applied to training batches (module docstring).

    Args:
        kind: "mixup", "cutmix", "fmix" or "mixup_cutmix".
        num_classes: C, the width of the soft targets.
        prob: probability that a batch is mixed, in [0, 1].
        alpha: lambda ~ Beta(alpha, alpha), alpha > 0 (1: uniform).
        decay_power: FMix's spectrum decay.

    Call:
        ``mix(images, labels)``: images (N, C_in, H, W) float, labels (N,) int64 or (N, C) float soft rows ->
        ``(images, targets)``: a new mixed tensor and (N, C) float soft targets, or the inputs themselves when the
        batch is not mixed. ``mix(images, labels, teacher)``: also a distillation teacher's (N, C) probabilities,
        mixed with the same partner and lambda (``kitlib.distill``) -> ``(images, targets, teacher)``.

    Raises:
        ValueError: "none" or an unknown kind, prob outside [0, 1], alpha <= 0 (``check_mix``), num_classes < 2
            (when built); labels that are neither (N,) integers nor (N, C) floats for N images (when called).
    """

    def __init__(self, kind: str, num_classes: int, prob: float = 1.0, alpha: float = 1.0, decay_power: float = 3.0):
        check_mix(kind, prob, alpha)
        if kind not in CLASSIFICATION_MIXES:
            raise ValueError(f"BatchMix mixes classification batches, not {kind!r} (make_mix gives None for 'none'; "
                             "copy_paste pastes segmentation objects: SegmentationMix)")  # fmt: skip
        if num_classes < 2:
            raise ValueError(f"mixing needs at least 2 classes, got {num_classes}")
        self.kind, self.num_classes, self.prob, self.alpha = kind, num_classes, float(prob), float(alpha)
        self.decay_power = decay_power

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None) -> tuple:
        hard = labels.dim() == 1 and not labels.is_floating_point()
        soft = labels.dim() == 2 and labels.is_floating_point() and labels.size(1) == self.num_classes
        if not (hard or soft) or labels.size(0) != images.size(0):
            raise ValueError(f"mixing needs int64 labels (N,) or float soft targets (N, {self.num_classes}) for "
                             f"{images.size(0)} images, got {labels.dtype} {tuple(labels.shape)}")  # fmt: skip
        if np.random.rand() >= self.prob:  # noqa: NPY002 - the per-epoch seeded state
            return (images, labels) if teacher is None else (images, labels, teacher)
        kind = self.kind
        if kind == "mixup_cutmix":
            kind = "cutmix" if np.random.rand() < 0.5 else "mixup"  # noqa: NPY002
        lam = float(np.random.beta(self.alpha, self.alpha))  # noqa: NPY002
        other = images.flip(0)
        if kind == "mixup":
            mixed = lam * images + (1.0 - lam) * other
        elif kind == "cutmix":
            (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
            lam = float(lam)
            mixed = images.clone()
            mixed[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
        else:
            mask_np = fmix_mask(lam, tuple(images.shape[-2:]), self.decay_power)
            lam = float(mask_np.mean())
            mask = torch.from_numpy(mask_np).to(device=images.device, dtype=images.dtype)
            mixed = mask * images + (1.0 - mask) * other
        targets = mix_targets(labels, self.num_classes, lam).to(images.device)
        if teacher is None:
            return mixed, targets
        return mixed, targets, lam * teacher + (1.0 - lam) * teacher.flip(0)  # the soft labels mixed as the labels

    def __repr__(self) -> str:
        return f"BatchMix({self.kind!r}, num_classes={self.num_classes}, prob={self.prob}, alpha={self.alpha})"


def make_mix(kind: str, num_classes: int, prob: float = 1.0, alpha: float = 1.0) -> BatchMix | None:
    """The batch mix of a training run: None for "none", else a ``BatchMix``.

    Raises:
        ValueError: as ``check_mix`` (also for "none"), or ``BatchMix``.
    """
    check_mix(kind, prob, alpha)
    if kind == "none":
        return None
    return BatchMix(kind, num_classes, prob, alpha)


class SegmentationMix:
    """CutMix of images and masks, or object copy-paste, on segmentation batches (module docstring).

    Args:
        kind: "cutmix" or "copy_paste" (``kitlib.recipes.SEGMENTATION_MIXES``).
        multiclass: masks are (N, H, W) class indices (True) or (N, K, H, W) {0, 1} channels (False).
        prob: probability that a batch is mixed, in [0, 1].
        alpha: CutMix's lambda ~ Beta(alpha, alpha).
        classes: copy_paste: the mask values (multiclass, background 0 excluded) or channels (multilabel) whose
            pixels are pasted; None or empty: every class but a multiclass background.

    Call:
        ``mix(images, masks)`` -> ``(images, masks)`` of the same shapes and dtypes, new tensors when mixed.
        ``mix(images, masks, teacher)``: also a distillation teacher's (N, K, H, W) soft masks, given the same box or
        the same pasted pixels (``kitlib.distill``) -> ``(images, masks, teacher)``.

    Raises:
        ValueError: an unknown kind, prob or alpha out of range (when built); masks that do not fit the images
            (when called).
    """

    def __init__(self, kind: str, multiclass: bool, prob: float = 1.0, alpha: float = 1.0, classes=None):
        check_mix(kind, prob, alpha)
        if kind not in SEGMENTATION_MIXES:
            raise ValueError(f"mix {kind!r} does not mix segmentation masks; options: {list(SEGMENTATION_MIXES)}")
        self.kind, self.multiclass, self.prob, self.alpha = kind, bool(multiclass), float(prob), float(alpha)
        self.classes = [int(c) for c in classes or []]

    def _objects(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: the pixels of ``masks`` that belong to the chosen classes."""
        if self.multiclass:
            if not self.classes:
                return masks > 0
            return torch.isin(masks, torch.tensor(self.classes, device=masks.device))
        channels = masks[:, self.classes] if self.classes else masks
        return channels.amax(dim=1) > 0.5

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, teacher: torch.Tensor | None = None) -> tuple:
        n, _, h, w = images.shape
        if masks.dim() != (3 if self.multiclass else 4) or (masks.shape[0], *masks.shape[-2:]) != (n, h, w):
            want = "(N, H, W) class indices" if self.multiclass else "(N, K, H, W) channels"
            raise ValueError(f"masks {tuple(masks.shape)} do not fit images {tuple(images.shape)} ({want})")
        if teacher is not None and (teacher.dim() != 4 or (teacher.shape[0], *teacher.shape[-2:]) != (n, h, w)):
            raise ValueError(f"teacher {tuple(teacher.shape)} does not fit images {tuple(images.shape)} (N, K, H, W)")
        if np.random.rand() >= self.prob:  # noqa: NPY002 - the per-epoch seeded state
            return (images, masks) if teacher is None else (images, masks, teacher)
        other_images, other_masks = images.flip(0), masks.flip(0)
        if self.kind == "cutmix":
            lam = float(np.random.beta(self.alpha, self.alpha))  # noqa: NPY002
            (y0, y1, x0, x1), _ = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
            images, masks = images.clone(), masks.clone()
            images[:, :, y0:y1, x0:x1] = other_images[:, :, y0:y1, x0:x1]
            masks[..., y0:y1, x0:x1] = other_masks[..., y0:y1, x0:x1]
            if teacher is not None:  # the teacher's soft masks get the same box
                teacher = teacher.clone()
                teacher[..., y0:y1, x0:x1] = teacher.flip(0)[..., y0:y1, x0:x1]
        else:
            pasted = self._objects(other_masks)
            images = torch.where(pasted[:, None], other_images, images)
            masks = torch.where(pasted if self.multiclass else pasted[:, None], other_masks, masks)
            if teacher is not None:  # the pasted objects bring their teacher's probabilities
                teacher = torch.where(pasted[:, None], teacher.flip(0), teacher)
        return (images, masks) if teacher is None else (images, masks, teacher)

    def __repr__(self) -> str:
        return f"SegmentationMix({self.kind!r}, multiclass={self.multiclass}, prob={self.prob}, classes={self.classes})"
