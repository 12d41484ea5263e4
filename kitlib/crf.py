"""DenseCRF refinement of segmentation probabilities with the image (fully connected CRF, mean-field inference).

Krähenbühl and Koltun 2011, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials" (NIPS), through
``pydensecrf2`` (the maintained PyPI build of lucasb-eyer/pydensecrf, the C++ code of the paper; an sdist, compiled by
pip). The trash-sorting contest's teams refined their models' softmax with it before the argmax; DeepLab v1/v2 did the
same (Chen et al. 2015).

- Unary: ``-log p`` of each class (``pydensecrf.utils.unary_from_softmax``, p clipped at 1e-5).
- Pairwise: a Gaussian kernel on the positions (``gaussian_sxy`` pixels, weight ``gaussian_compat``: smoothness) and a
  bilateral kernel on positions and colours (``bilateral_sxy`` pixels, ``bilateral_srgb`` colour units of 0..255, weight
  ``bilateral_compat``: pixels alike in colour and near each other get the same label, so edges follow the image),
  with the Potts compatibility, as in the paper.
- ``iterations`` mean-field steps.

``dense_crf`` refines exclusive classes (multiclass softmax, C >= 2); ``dense_crf_binary`` each class of a sigmoid task
(binary, multilabel) as a two-label CRF (background 1 - p, foreground p). ``kitlib.postprocess.decode`` applies them
when a ``PostProcess`` has ``crf`` set; ``kitlib.search.search_crf`` chooses the parameters on a subset of the OOF.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kitlib._pixels import as_float_probs

__all__ = ["CRF_DEFAULTS", "check_crf_params", "dense_crf", "dense_crf_binary"]

#: Parameters and their defaults: pydensecrf's README example (DeepLab's bilateral 80 / 13 / 10, Gaussian 3 / 3).
CRF_DEFAULTS: dict[str, float] = {
    "iterations": 5,
    "gaussian_sxy": 3.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_compat": 10.0,
}


def check_crf_params(params: Mapping[str, Any]) -> dict[str, float]:
    """The CRF parameters with the defaults filled in, checked.

    Args:
        params: any of ``CRF_DEFAULTS``' keys.
    Returns:
        Every key of ``CRF_DEFAULTS``: ``iterations`` an int >= 1, the others floats (sxy, srgb > 0; compat >= 0).
    Raises:
        ValueError: an unknown key (the valid ones are named) or a value out of range.
    """
    unknown = sorted(set(params) - set(CRF_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown CRF parameter(s) {unknown}; valid: {sorted(CRF_DEFAULTS)}")
    out = {key: float(params.get(key, default)) for key, default in CRF_DEFAULTS.items()}
    out["iterations"] = int(out["iterations"])
    bad = [k for k, v in out.items() if (v < 0 if k.endswith("compat") else v <= 0) or not np.isfinite(v)]
    if out["iterations"] < 1 or bad:
        raise ValueError(f"CRF parameters out of range: {out} (iterations >= 1, sxy and srgb > 0, compat >= 0)")
    return out


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:  # pragma: no cover - the requirement is installed in the kit's environments
        raise ImportError("DenseCRF needs pydensecrf2: pip install 'pydensecrf2>=1.1' (it compiles C++)") from e
    return dcrf, unary_from_softmax


def _check_image(image: Any, hw: tuple[int, ...]) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != tuple(hw):
        raise ValueError(f"image must be (H, W, 3) uint8 RGB at the probs' size {tuple(hw)}, got {img.dtype} "
                         f"{img.shape}")  # fmt: skip
    return np.ascontiguousarray(img)


def dense_crf(probs: Any, image: Any, **params: float) -> np.ndarray:
    """Refine the probabilities of exclusive classes of one image with a DenseCRF (module docstring).

    Args:
        probs: (C, H, W), C >= 2, float in [0, 1] summing to 1 over C (a softmax), or uint8 0..255 (p = v / 255;
            renormalised over C).
        image: (H, W, 3) uint8 RGB at the probs' size.
        **params: ``CRF_DEFAULTS``' keys (``check_crf_params``).
    Returns:
        (C, H, W) float32, the CRF's marginals (sum 1 over C); argmax gives the labels.
    Raises:
        ValueError: probs not (C, H, W) with C >= 2; an image of another size or type; bad parameters.
        TypeError: probs neither float nor uint8.
    """
    p = as_float_probs(probs)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"probs must be (C, H, W) with C >= 2, got shape {p.shape}")
    img = _check_image(image, p.shape[1:])
    kw = check_crf_params(params)
    dcrf, unary_from_softmax = _densecrf()
    c, h, w = p.shape
    p = p / np.maximum(p.sum(axis=0, keepdims=True), np.float32(1e-6))
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p, clip=1e-5), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=kw["gaussian_sxy"], compat=kw["gaussian_compat"])
    crf.addPairwiseBilateral(sxy=kw["bilateral_sxy"], srgb=kw["bilateral_srgb"], rgbim=img,
                             compat=kw["bilateral_compat"])  # fmt: skip
    return np.asarray(crf.inference(kw["iterations"]), dtype=np.float32).reshape(c, h, w)


def dense_crf_binary(probs: Any, image: Any, **params: float) -> np.ndarray:
    """Refine each class of a sigmoid task (binary, multilabel) on one image: a two-label CRF of (1 - p, p) per class.

    Args:
        probs: (K, H, W) float in [0, 1] or uint8 0..255, independent per class.
        image: (H, W, 3) uint8 RGB at the probs' size.
        **params: as ``dense_crf``.
    Returns:
        (K, H, W) float32 in [0, 1], the refined foreground probabilities.
    Raises:
        As ``dense_crf``.
    """
    p = as_float_probs(probs)
    if p.ndim != 3:
        raise ValueError(f"probs must be (K, H, W), got shape {p.shape}")
    return np.stack([dense_crf(np.stack([1.0 - pk, pk]), image, **params)[1] for pk in p])
