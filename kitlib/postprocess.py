"""Post-processing of segmentation probs: thresholds, small-component removal, the triplet scheme, image-level gating,
the chosen settings (``PostProcess``, ``postprocess.json``), and ``decode``, which turns probabilities into what is
scored and submitted. The out-of-fold searches that choose the settings are in ``kitlib.search`` and ``kitlib.gate``.

Stages follow the kit's names: ``probs`` (N, C, H, W) -> ``masks`` uint8 {0, 1}. Probs are float (float16, float32,
float64) in [0, 1], or uint8 0..255 meaning p = v / 255 (how the kit stores OOF probs); either may be an ``np.memmap``.

Threshold semantics (every function here): a pixel is foreground when its probability is *strictly greater* than the
threshold, compared exactly, as ``probs.astype(np.float64) > threshold`` would, where uint8 values are first turned into
``np.float64(v) / 255``. For uint8 that is ``v > k``, k the largest value with ``k / 255 <= threshold`` (0.5 -> v > 127;
at 0.2 = 51 / 255 the value 51 is background, since 0.2 > 0.2 is false; at 0.6 the value 153 is background too, as
``153 / 255 == 0.6`` in float64). For float probs the comparison is made in the probs' own dtype against the largest
value of that dtype not above the threshold, which is the same test without a float64 copy. NumPy 2 compares
``probs_f32 > 0.1`` in float32 (the threshold rounded to the nearest float32), which differs from this for pixels equal
to ``np.float32(0.1)``; the Kaggle kernels' ``cv2.threshold`` does the same float32 rounding.

- ``triplet_masks``: the triplet scheme of the SIIM-ACR Pneumothorax 1st place
  (sneddy/pneumothorax-segmentation, README "Triplet scheme of inference"; the issue also names the Understanding Clouds
  2nd place): a class is kept on an image only if at least ``min_contour_area`` pixels exceed
  ``top_score_threshold``; kept classes are binarised at ``bottom_score_threshold`` (searched by
  ``kitlib.search.search_triplet``).
- ``top_k_class_probs`` / ``scale_top_k`` / ``combine_class_probs`` / ``force_one_class``: image-level class probs of
  the Understanding Clouds 1st place (pudae/kaggle-understanding-clouds ``tools/evaluate.py``: the mean of the 17,500
  largest pixel probs at 350 x 525, averaged with the classification heads; the most probable class of an image always
  passes the gate).
- ``gate_masks``: gating masks with per-class classifier thresholds (``class_probs > threshold`` keeps the class, as
  pudae's ``cls_score > cls_thres``; the thresholds come from ``kitlib.gate.classifier_thresholds``).
- ``PostProcess`` / ``apply_postprocess``: the chosen settings, saved as ``artifacts/<exp>/postprocess.json`` and
  applied to one image; ``load_postprocess`` reads them for inference (``default_postprocess`` without a file).
- ``decode``: probabilities of any task into masks or labels, the one decoding that CV scores and submissions share.
  With ``PostProcess.crf`` it first refines the probabilities with a DenseCRF on the image (``kitlib.crf``; multiclass
  and sigmoid tasks): the images at the probs' size are then an argument (the OOF search reads the train images at the
  scoring size, ``40_submit`` each test image).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from kitlib._pixels import (
    binarize_2d,
    check_float_range,
    check_probs_dtype,
    chunk_iter,
    components,
    cutoff,
    hist256,
    label_counts,
    per_class,
)
from kitlib._private import chunk_rows, to_numpy
from kitlib.crf import check_crf_params, dense_crf, dense_crf_binary
from kitlib.io import atomic_write_text, json_default, read_json
from kitlib.presets import Preset

__all__ = [
    "binarize",
    "remove_small_components",
    "apply_threshold_min_area",
    "triplet_masks",
    "top_k_class_probs",
    "scale_top_k",
    "combine_class_probs",
    "force_one_class",
    "gate_masks",
    "PostProcess",
    "apply_postprocess",
    "decode",
    "default_postprocess",
    "load_postprocess",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ apply masks


def binarize(probs: Any, threshold: float) -> np.ndarray:
    """``probs > threshold`` with the module's exact semantics (uint8 v means v / 255; see the module docstring).

    Args:
        probs: any shape, float in [0, 1] or uint8 0..255.
        threshold: a float; values outside [0, 1] are allowed (< 0 keeps every pixel, >= 1 none).
    Returns:
        uint8 {0, 1}, the shape of ``probs``.
    Raises:
        TypeError: a dtype other than uint8 or float. ValueError: a NaN threshold.
    """
    p = to_numpy(probs)
    check_probs_dtype(p)
    cut = cutoff(threshold, p.dtype)
    if p.dtype == np.uint8:
        return (p > np.int16(cut)).view(np.uint8)
    return np.greater(p, cut).view(np.uint8)


def remove_small_components(mask: Any, min_area: int) -> np.ndarray:
    """Drop the 8-connected components of a binary mask that have ``min_area`` pixels or fewer.

    Args:
        mask: (H, W) bool or integer, nonzero = foreground.
        min_area: a component is kept when its pixel count is > ``min_area`` (the kernels' ``p.sum() > min_size``);
            0 or less keeps everything.
    Returns:
        (H, W) uint8 {0, 1}.
    Raises:
        ValueError: ``mask`` is not 2-D.
    Source:
        Kaggle-kernel ``post_process(probability, threshold, min_size)`` (Severstal UNet starter kernel, reused in
        Understanding Clouds): ``cv2.connectedComponents`` (8-connectivity by default), keep ``p.sum() > min_size``.
    """
    m = to_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    b = (m != 0).view(np.uint8) if m.dtype != np.uint8 else np.minimum(m, 1)
    if min_area <= 0:
        return np.ascontiguousarray(b)
    n, labels = components(np.ascontiguousarray(b))
    keep = (label_counts(labels, n) > min_area).astype(np.uint8)
    keep[0] = 0
    return keep[labels]


def apply_threshold_min_area(probs: Any, thresholds: Any, min_areas: Any = 0) -> np.ndarray:
    """Binarise each class of one image at its threshold, then drop its components of ``min_area`` pixels or fewer.

    Args:
        probs: (C, H, W) float in [0, 1] or uint8 0..255, one image.
        thresholds: (C,) or a scalar; foreground where prob > threshold (module docstring).
        min_areas: (C,) or a scalar; components with <= min_area pixels (8-connectivity) are removed.
    Returns:
        (C, H, W) uint8 {0, 1}: the masks that ``search_thresholds`` scored for these settings.
    Raises:
        ValueError: ``probs`` not 3-D; ``thresholds`` / ``min_areas`` of the wrong length.
        TypeError: a probs dtype other than uint8 or float.
    """
    p = to_numpy(probs)
    check_probs_dtype(p)
    if p.ndim != 3:
        raise ValueError(f"probs must be one image (C, H, W), got shape {p.shape}")
    c = p.shape[0]
    ts, areas = per_class(thresholds, c, "thresholds", float), per_class(min_areas, c, "min_areas", int)
    out = np.empty(p.shape, dtype=np.uint8)
    for k in range(c):
        b = binarize_2d(np.ascontiguousarray(p[k]), cutoff(ts[k], p.dtype))
        out[k] = remove_small_components(b, areas[k])
    return out


def triplet_masks(
    probs: Any, top_score_threshold: Any, min_contour_area: Any, bottom_score_threshold: Any
) -> np.ndarray:
    """The triplet scheme on one image: keep a class only if enough pixels are confident, then binarise it lower.

    For each class: if fewer than ``min_contour_area`` pixels have prob > ``top_score_threshold`` the mask is empty;
    otherwise it is prob > ``bottom_score_threshold``.

    Args:
        probs: (C, H, W) float in [0, 1] or uint8 0..255, one image.
        top_score_threshold: (C,) or a scalar.
        min_contour_area: (C,) or a scalar, a pixel count (0 keeps every class).
        bottom_score_threshold: (C,) or a scalar.
    Returns:
        (C, H, W) uint8 {0, 1}.
    Raises:
        ValueError: ``probs`` not 3-D; parameters of the wrong length.
    Source:
        SIIM-ACR Pneumothorax 1st place, sneddy/pneumothorax-segmentation README, "Triplet scheme of inference":
        ``mask[classification_mask.sum() < min_contour_area] = 0; mask = mask > bot_score_threshold``.
    """
    p = to_numpy(probs)
    check_probs_dtype(p)
    if p.ndim != 3:
        raise ValueError(f"probs must be one image (C, H, W), got shape {p.shape}")
    c = p.shape[0]
    tops = per_class(top_score_threshold, c, "top_score_threshold", float)
    mcas = per_class(min_contour_area, c, "min_contour_area", int)
    bottoms = per_class(bottom_score_threshold, c, "bottom_score_threshold", float)
    out = np.zeros(p.shape, dtype=np.uint8)
    for k in range(c):
        pk = np.ascontiguousarray(p[k])
        if np.count_nonzero(binarize_2d(pk, cutoff(tops[k], p.dtype))) >= mcas[k]:
            out[k] = binarize_2d(pk, cutoff(bottoms[k], p.dtype))
    return out


def top_k_class_probs(probs: Any, k: int, chunk_size: int | None = None) -> np.ndarray:
    """Image-level class probability: the mean of the ``k`` largest pixel probs of each (image, class).

    Args:
        probs: (N, C, H, W) float in [0, 1] or uint8 0..255 (p = v / 255); numpy, memmap (streamed) or torch tensor.
        k: pixels averaged, 1..H*W; 17,500 at 350 x 525 in the source (``scale_top_k`` for other sizes).
        chunk_size: images read per chunk; None for about 16 MB.
    Returns:
        (N, C) float32 in [0, 1]. uint8 input is summed exactly (integer histogram) and divided by 255 k in float64;
        float input is averaged in float64; both are rounded to float32 once.
    Raises:
        ValueError: not 4-D; ``k`` outside 1..H*W. TypeError: a dtype other than uint8 or float.
    Source:
        Understanding Clouds 1st place, pudae/kaggle-understanding-clouds ``tools/evaluate.py``:
        ``np.mean(np.sort(predictions[c].flatten())[-17500:])``.
    """
    p = to_numpy(probs)
    check_probs_dtype(p)
    if p.ndim != 4:
        raise ValueError(f"probs must be (N, C, H, W), got shape {p.shape}")
    n, c = p.shape[:2]
    hw = int(np.prod(p.shape[2:]))
    if not 1 <= k <= hw:
        raise ValueError(f"k must be in 1..{hw} (H * W), got {k}")
    out = np.empty((n, c), dtype=np.float32)
    values = np.arange(256, dtype=np.int64)
    for sl, (pc,) in chunk_iter([p], chunk_rows(p.shape, p.dtype.itemsize, chunk_size)):
        check_float_range(pc, sl.start, "probs")
        flat = pc.reshape(-1, hw)
        if p.dtype == np.uint8:
            hist = np.stack([hist256(row) for row in flat])
            from_top = np.cumsum(hist[:, ::-1], axis=1)  # pixels >= 255 - j
            j = np.argmax(from_top >= k, axis=1)  # the value 255 - j holds the k-th largest pixel
            above = np.where(j > 0, from_top[np.arange(len(flat)), j - 1], 0)
            sums = np.cumsum(hist[:, ::-1] * values[::-1], axis=1)
            total = np.where(j > 0, sums[np.arange(len(flat)), j - 1], 0) + (k - above) * (255 - j)
            out[sl] = (total / (255.0 * k)).reshape(-1, c)
        else:
            top = np.partition(flat, hw - k, axis=1)[:, hw - k :]
            out[sl] = top.mean(axis=1, dtype=np.float64).reshape(-1, c)
    return out


def scale_top_k(to_hw: tuple[int, int], k: int = 17500, from_hw: tuple[int, int] = (350, 525)) -> int:
    """Scale a top-K pixel count with the image area: K at ``from_hw`` -> the same fraction of pixels at ``to_hw``.

    Args:
        to_hw: (H, W) the probs have.
        k: pixels at ``from_hw``; 17,500 at 350 x 525 is the Understanding Clouds 1st-place value (9.5% of the image).
        from_hw: (H, W) at which ``k`` was chosen.
    Returns:
        round(k * H * W / (H0 * W0)), at least 1 (17500 at (350, 525) -> 280000 at (1400, 2100)).
    Raises:
        ValueError: a non-positive size or ``k``.
    """
    if k < 1 or min(*to_hw, *from_hw) < 1:
        raise ValueError(f"k and sizes must be positive, got k={k}, to_hw={to_hw}, from_hw={from_hw}")
    return max(1, round(k * to_hw[0] * to_hw[1] / (from_hw[0] * from_hw[1])))


def combine_class_probs(top_k_probs: Any, head_probs: Any, head_weight: float = 0.5) -> np.ndarray:
    """Weighted mean of top-K class probs and a classification head's probs: ``(1 - w) * top_k + w * head``.

    Args:
        top_k_probs: (N, C) from ``top_k_class_probs``.
        head_probs: (N, C) sigmoid outputs of a classification head (or the mean of several heads).
        head_weight: w in [0, 1]. pudae averaged M heads and the top-K probs with equal weights, i.e. w = M / (M + 1).
    Returns:
        (N, C) float32.
    Raises:
        ValueError: shapes differ; ``head_weight`` outside [0, 1].
    """
    a, b = np.asarray(to_numpy(top_k_probs), np.float64), np.asarray(to_numpy(head_probs), np.float64)
    if a.shape != b.shape:
        raise ValueError(f"top_k_probs shape {a.shape} != head_probs shape {b.shape}")
    if not 0.0 <= head_weight <= 1.0:
        raise ValueError(f"head_weight must be in [0, 1], got {head_weight}")
    return ((1.0 - head_weight) * a + head_weight * b).astype(np.float32)


def force_one_class(class_probs: Any, keep: Any) -> np.ndarray:
    """Keep at least one class per image: where no class is kept, keep the most probable one.

    Args:
        class_probs: (N, C) or (C,) image-level class probs.
        keep: same shape, bool: which classes pass (e.g. ``class_probs > thresholds``).
    Returns:
        A bool copy of ``keep`` with, in each row that had no True, the argmax class (first on ties) set.
    Raises:
        ValueError: shapes differ.
    Source:
        Understanding Clouds 1st place (pudae ``tools/evaluate.py``): the largest class prob of each image is set to
        1.0 before gating, so every image has at least one class.
    """
    probs, kept = np.asarray(to_numpy(class_probs)), np.array(to_numpy(keep), dtype=bool)
    if probs.shape != kept.shape or probs.ndim not in (1, 2):
        raise ValueError(f"class_probs shape {probs.shape} and keep shape {kept.shape} must match, (N, C) or (C,)")
    p2, k2 = probs.reshape(-1, probs.shape[-1]), kept.reshape(-1, kept.shape[-1])
    none = ~k2.any(axis=1)
    k2[none, np.argmax(p2[none], axis=1)] = True
    return k2.reshape(kept.shape)


def gate_masks(masks: Any, class_probs: Any, thresholds: Any) -> np.ndarray:
    """Empty the masks of classes whose image-level prob is not above their threshold.

    Args:
        masks: (C, H, W) one image or (N, C, H, W), {0, 1}.
        class_probs: (C,) or (N, C) matching; compared in float64 as ``class_probs > thresholds``.
        thresholds: (C,) per-class thresholds (``classifier_thresholds``) or a scalar.
    Returns:
        uint8 masks of the same shape, zero where the class is gated off.
    Raises:
        ValueError: shapes that do not match.
    Source:
        Understanding Clouds 1st place (pudae ``tools/evaluate.py``): ``np.logical_and(mask > thres, cls_score >
        cls_thres)``.
    """
    m = to_numpy(masks)
    probs = np.asarray(to_numpy(class_probs), dtype=np.float64)
    if m.ndim not in (3, 4) or probs.shape != m.shape[:-2]:
        raise ValueError(f"masks {m.shape} must be (C, H, W) or (N, C, H, W), class_probs {probs.shape} (C,) or (N, C)")
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(m.shape[-3], float(thr))
    if thr.shape != (m.shape[-3],):
        raise ValueError(f"thresholds must have one value per class ({m.shape[-3]}), got shape {thr.shape}")
    keep = (probs > thr).astype(np.uint8)
    return (m != 0).astype(np.uint8) * keep[..., None, None]


# ---------------------------------------------------------------------------------------------- chosen settings


@dataclass
class PostProcess:
    """Per-class post-processing settings, saved as ``artifacts/<exp>/postprocess.json``.

    Binary / multilabel: exactly one binarisation is set, ``threshold`` (+ optional ``min_area``) or the triplet;
    gating and ``crf`` are optional. Multiclass (argmax decoding): no binarisation, ``crf`` alone. Lists hold one value
    per class.

    Attributes:
        threshold: prob > threshold is foreground (``search_thresholds``).
        min_area: components with <= min_area pixels are removed; None: none are.
        top_score_threshold, min_contour_area, bottom_score_threshold: the triplet scheme (``search_triplet``).
        classifier_threshold: a class is kept on an image when its class prob is > this (``classifier_thresholds``).
        force_one_class: the most probable class of an image always passes the gate (needs ``classifier_threshold``).
        top_k: the gate's class probs are ``top_k_class_probs`` of the image with this K (Clouds 1st place); None:
            the class probs passed to ``apply_postprocess`` (an external classifier) are used as they are.
        head_weight: with ``top_k``, the gate averages the top-K probs with the class probs passed to
            ``apply_postprocess`` (a classification head, or the ``gate_exp`` classifier):
            ``(1 - w) * top_k + w * head`` (``combine_class_probs``); None or 0: top-K alone.
        gate_exp: the experiment of a separate presence classifier (``10_train`` with ``arch="classifier"``) whose
            probabilities are the class probs of the gate (alone when ``top_k`` is None, else averaged with the
            top-K probs by ``head_weight``); ``40_submit`` runs its folds beside the segmentation models. None: the
            segmentation models' own head (or top-K alone).
        crf: DenseCRF parameters (``kitlib.crf.CRF_DEFAULTS``' keys, ``kitlib.search.search_crf``) applied to the
            probabilities with the image before the binarisation or the argmax; None: no CRF.
        meta: free-form provenance (search scores, source experiment); saved as is.

    Example (``notebooks/20_oof.py`` then ``40_submit.py``)::

        df = search_thresholds(oof_probs, oof_masks, [0.3, 0.4, 0.5], [0, 5000, 10000])
        best = best_per_class(df)
        params = PostProcess(threshold=best["threshold"], min_area=best["min_area"], meta={"cv_dice": best["dice"]})
        params.to_json(exp_dir / "postprocess.json")
        masks = apply_postprocess(test_probs[i], PostProcess.from_json(exp_dir / "postprocess.json"))

    Raises:
        ValueError: both binarisations, or neither without ``crf``; lists of different lengths; ``force_one_class``
            without a gate; a gate without a binarisation; bad CRF parameters.
    """

    threshold: list[float] | None = None
    min_area: list[int] | None = None
    top_score_threshold: list[float] | None = None
    min_contour_area: list[int] | None = None
    bottom_score_threshold: list[float] | None = None
    classifier_threshold: list[float] | None = None
    force_one_class: bool = False
    top_k: int | None = None
    head_weight: float | None = None
    gate_exp: str | None = None
    crf: dict[str, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    _FLOATS = ("threshold", "top_score_threshold", "bottom_score_threshold", "classifier_threshold")
    _INTS = ("min_area", "min_contour_area")
    _TRIPLET = ("top_score_threshold", "min_contour_area", "bottom_score_threshold")

    def __post_init__(self) -> None:
        for name in self._FLOATS + self._INTS:
            value = getattr(self, name)
            if value is not None:
                kind = float if name in self._FLOATS else int
                setattr(self, name, [kind(v) for v in np.asarray(value).reshape(-1).tolist()])
        triplet = [getattr(self, name) is not None for name in self._TRIPLET]
        if any(triplet) and not all(triplet):
            raise ValueError(f"the triplet needs all of {self._TRIPLET}")
        if self.threshold is not None and all(triplet):
            raise ValueError("set exactly one binarisation: threshold (+ min_area) or the triplet, not both")
        self.crf = check_crf_params(self.crf) if self.crf is not None else None
        if self.argmax and (self.crf is None or self.classifier_threshold is not None):
            raise ValueError("set exactly one binarisation, threshold (+ min_area) or the triplet; without one "
                             "(multiclass argmax decoding) only crf applies")  # fmt: skip
        if self.min_area is not None and self.threshold is None:
            raise ValueError("min_area needs threshold")
        if self.force_one_class and self.classifier_threshold is None:
            raise ValueError("force_one_class acts on the classifier gate: set classifier_threshold too")
        lengths = {name: len(getattr(self, name)) for name in self._FLOATS + self._INTS if getattr(self, name)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"per-class lists must have one value per class; lengths: {lengths}")
        if self.top_k is not None:
            self.top_k = int(self.top_k)
        if self.head_weight is not None:
            self.head_weight = float(self.head_weight)
            if not 0.0 <= self.head_weight <= 1.0 or self.top_k is None:
                raise ValueError(f"head_weight must be in [0, 1] and needs top_k; got {self.head_weight}")
        self.force_one_class = bool(self.force_one_class)
        self.gate_exp = str(self.gate_exp) if self.gate_exp else None
        if self.gate_exp and self.classifier_threshold is None:
            raise ValueError(f"gate_exp {self.gate_exp!r} gates the masks: set classifier_threshold too")

    @property
    def argmax(self) -> bool:
        """No binarisation: multiclass probabilities decoded by argmax (after the ``crf``)."""
        return self.threshold is None and self.top_score_threshold is None

    @property
    def num_classes(self) -> int | None:
        """The classes of the per-class lists; None for argmax decoding (any number of classes)."""
        if self.argmax:
            return None
        return len(self.threshold if self.threshold is not None else self.top_score_threshold)

    @property
    def needs_class_probs(self) -> bool:
        return self.classifier_threshold is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcess:
        """Raises: ValueError naming unknown keys and the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown post-processing key(s) {unknown}; valid: {sorted(valid)}")
        return cls(**d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The settings as JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=json_default)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> PostProcess:
        """Read settings from a JSON file, or from JSON text (a string starting with ``{``).

        Raises:
            FileNotFoundError / ValueError: as ``kitlib.io.read_json``; ValueError for unknown keys.
        """
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{"):
            return cls.from_dict(json.loads(path_or_text))
        return cls.from_dict(read_json(Path(path_or_text)))


def apply_postprocess(probs: Any, params: PostProcess, class_probs: Any = None, image: Any = None) -> np.ndarray:
    """Apply a ``PostProcess`` to one image: the optional CRF, binarise (threshold + min_area, or triplet), then the
    optional gate.

    Args:
        probs: (C, H, W) float in [0, 1] or uint8 0..255, one image.
        params: the settings.
        class_probs: (C,) image-level class probs for the gate: an external classifier's (``params.top_k`` None), or
            a classification head's to average with the top-K probs (``params.head_weight``); ignored otherwise.
        image: (H, W, 3) uint8 RGB at the probs' size, for ``params.crf`` (``kitlib.crf.dense_crf_binary``).
    Returns:
        (C, H, W) uint8 {0, 1}.
    Raises:
        ValueError: ``probs`` does not have ``params.num_classes`` classes; a gate without class probs nor ``top_k``;
            argmax settings (``decode`` applies them); ``params.crf`` without the image.
    """
    p = to_numpy(probs)
    if params.argmax:
        raise ValueError("argmax settings (crf alone) are for multiclass probabilities: use decode")
    if p.ndim != 3 or p.shape[0] != params.num_classes:
        raise ValueError(f"probs must be (C, H, W) with C = {params.num_classes}, got shape {p.shape}")
    if params.crf is not None:
        if image is None:
            raise ValueError("these settings refine the probs with a DenseCRF: pass the image")
        p = dense_crf_binary(p, image, **params.crf)
    if params.threshold is not None:
        masks = apply_threshold_min_area(p, params.threshold, params.min_area if params.min_area is not None else 0)
    else:
        masks = triplet_masks(p, params.top_score_threshold, params.min_contour_area, params.bottom_score_threshold)
    if not params.needs_class_probs:
        return masks
    if params.top_k is not None:
        top_k = top_k_class_probs(p[None], params.top_k)[0]
        if params.head_weight and class_probs is not None:
            class_probs = combine_class_probs(top_k[None], to_numpy(class_probs)[None], params.head_weight)[0]
        else:
            class_probs = top_k
    elif class_probs is None:
        raise ValueError("the gate needs class_probs: pass them or set top_k in the PostProcess")
    probs_c = np.asarray(to_numpy(class_probs), dtype=np.float64)
    if probs_c.shape != (params.num_classes,):
        raise ValueError(f"class_probs must be ({params.num_classes},), got shape {probs_c.shape}")
    keep = probs_c > np.asarray(params.classifier_threshold)
    if params.force_one_class:
        keep = force_one_class(probs_c, keep)
    return masks * keep[:, None, None].astype(np.uint8)


def decode(
    probs: Any,
    preset: Preset,
    params: PostProcess | None = None,
    class_probs: Any = None,
    threshold: float = 0.5,
    images: Any = None,
) -> np.ndarray:
    """Probabilities of a batch of images into what is scored and submitted.

    Args:
        probs: binary/multilabel (N, K, H, W) float in [0, 1] or uint8 (p x 255); multiclass (N, C, H, W);
            classification (N, C); presence (N, K).
        preset: the task.
        params: binary/multilabel: settings applied per image (``apply_postprocess``); None: ``probs > threshold``
            (``binarize``, the same masks as threshold 0.5 and min_area 0).
        class_probs: (N, K) image-level class probs for a gated ``params``; ignored otherwise.
        threshold: binary/multilabel without ``params``, and presence: foreground / present where p > threshold.
        images: (N, H, W, 3) uint8 RGB at the probs' size (or N such arrays), for ``params.crf``; ignored otherwise.
    Returns:
        binary/multilabel (N, K, H, W) uint8 {0, 1}; multiclass (N, H, W) int64 class indices (argmax, after the
        ``params.crf`` refinement when set); classification (N,) int64 labels (argmax); presence (N, K) bool.
    Raises:
        ValueError: ``params.crf`` without ``images``, or a number of images other than N; as ``apply_postprocess``.
    """
    p = to_numpy(probs)
    crf = params is not None and params.crf is not None and preset.task != "classification"
    if crf and (images is None or len(images) != len(p)):
        raise ValueError(f"the post-processing refines the probs with a DenseCRF: pass the {len(p)} images")
    if preset.task == "multiclass" and crf:
        return np.stack([dense_crf(pi, im, **params.crf) for pi, im in zip(p, images, strict=True)]).argmax(axis=1)
    if preset.task in ("multiclass", "classification"):
        return np.asarray(p).argmax(axis=1)
    if preset.task == "presence":
        return np.asarray(p, dtype=np.float32) > threshold
    if params is None:
        return binarize(p, threshold)
    heads = [None] * len(p) if class_probs is None or not params.needs_class_probs else to_numpy(class_probs)
    if not len(p):
        return np.zeros(p.shape, dtype=np.uint8)
    ims = images if crf else [None] * len(p)
    return np.stack([apply_postprocess(pi, params, head, im) for pi, head, im in zip(p, heads, ims, strict=True)])


def default_postprocess(preset: Preset) -> PostProcess | None:
    """Threshold 0.5 and min_area 0 for every class of a binary/multilabel preset; None (argmax) otherwise."""
    if preset.task not in ("binary", "multilabel"):
        return None
    k = len(preset.target_classes)
    return PostProcess(threshold=[0.5] * k, min_area=[0] * k, meta={"source": "default"})


def load_postprocess(folder: str | os.PathLike, preset: Preset) -> PostProcess | None:
    """``folder/postprocess.json`` (from ``20_oof`` or ``30_ensemble``) when it exists, else ``default_postprocess``
    with a warning naming the missing file (one per call).
    Classification presets are decoded by argmax (None), whatever the file says; multiclass too, unless the file holds
    argmax settings with a ``crf`` (``kitlib.search.search_crf``).

    Raises:
        ValueError: the file's classes do not match the preset, or its keys are not ``PostProcess``'s (the message
            names the file).
    """
    default = default_postprocess(preset)
    path = Path(folder) / "postprocess.json"
    if preset.task == "multiclass" and path.is_file() and read_json(path).get("crf"):
        params = PostProcess.from_json(path)
        if not params.argmax:
            raise ValueError(f"{path}: per-class thresholds for the multiclass preset {preset.name!r} (argmax + crf)")
        return params
    if default is None:
        return default
    if not path.is_file():
        log.warning("%s not found (20_oof / 30_ensemble write it): using the defaults, threshold 0.5 and min_area 0 "
                    "for every class", path)  # fmt: skip
        return default
    params = PostProcess.from_json(path)
    if params.num_classes != default.num_classes:
        raise ValueError(f"{path}: {params.num_classes} classes, preset {preset.name!r} has {default.num_classes}")
    return params
