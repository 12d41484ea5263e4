"""Augmentation pipelines as data: albumentations' own serialisation, kept as YAML files.

A pipeline file is what ``A.to_dict`` writes (``{"__version__", "transform"}``; ``A.from_dict`` / ``A.load`` read
it back), with one optional key of the kit's beside it:

- ``transform``: the train-time augmentation, applied by ``kitlib.data.build_transforms`` after the kit's resize to
  (height, width) (and its ``crop``), before the kit's normalisation, in the train stage only;
- ``preprocess`` (optional): another ``A.to_dict`` serialisation applied at *every* stage (train, valid, test, the
  Kaggle kernel's inference) right after the resize: a deterministic preprocessing such as CLAHE (``clouds_2nd_clahe``)
  that the model must also see at inference. albumentations ignores this key, so ``A.load(path)`` still gives the
  train augmentation.

Sizes: the kit resizes every stage to (height, width) first (``native_scale`` skips that resize: the images' own
scale at every stage, ``kitlib.stages.TrainConfig``). A pipeline that sets its own size (a crop, a resize, a pad) sets
the size of the *train* items only; validation and test items keep (height, width) (or the native size). Its output
must have one size for every image, so that a batch stacks (end it with a fixed-size crop or resize).

``augment`` (a 10_train / 00_eda parameter) is a name of ``PIPELINES`` (files ``kitlib/augmentations/<name>.yaml``,
shipped as package data, so the wheel of a Kaggle bundle carries them) or a path to such a file. The resolved pipeline
itself is saved in ``fold<k>/config.json`` (``augment_pipeline``), so a rerun or inference reproduces it without the
file.

albumentations is imported lazily with its online version check switched off (``NO_ALBUMENTATIONS_UPDATE=1`` unless
already set): Kaggle kernels run without internet.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kitlib.io import atomic_write_text

__all__ = ["PIPELINES", "PIPELINE_DIR", "albumentations", "compose", "load_pipeline", "pipeline_path", "save_pipeline"]

PIPELINE_DIR = Path(__file__).resolve().parent / "augmentations"

#: Named pipelines: name -> what it does and whose it is (``kitlib/augmentations/<name>.yaml`` holds it, with the
#: source in its header comment).
PIPELINES: dict[str, str] = {
    "none": "no augmentation (resize + normalise only)",
    "flips": "horizontal and vertical flips",
    "light": "flips, a small affine and brightness/contrast jitter (the kit's default)",
    "clouds_1st": "Understanding Clouds 1st place (pudae): flips, shift/scale/rotate, grid distortion, channel "
    "shuffle, invert, to-gray",
    "clouds_6th": "Understanding Clouds 6th place: resize 350x525, pad to 352x544, shift/scale/rotate, flips",
    "clouds_2nd_clahe": "Understanding Clouds 2nd place: CLAHE as preprocessing (every stage), flips",
    "dacon_building": "Dacon building contest: RandomScale(0.2) + RandomCrop 224 at native scale, flips",
    "trash": "trash-sorting contest: resize 512, flips, elastic, rotate 30/90, grid distortion, CLAHE, random resized "
    "crop, coarse dropout, GridMask",
    "cassava": "Cassava Leaf Disease solutions: random resized crop 512, transpose, flips, shift/scale/rotate, "
    "hue/saturation, brightness/contrast, coarse dropout, CLAHE",
    "unet_elastic": "U-Net (Ronneberger et al. 2015): elastic deformations, rotations and flips at full resolution",
}

_PARTS = ("transform", "preprocess")


def albumentations():
    """The albumentations module, imported without its online version check (offline Kaggle kernels)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def pipeline_path(name: str) -> Path:
    """``kitlib/augmentations/<name>.yaml`` of a named pipeline.

    Raises:
        ValueError: not a name of ``PIPELINES`` (the message lists them).
    """
    if name not in PIPELINES:
        raise ValueError(f"unknown augment {name!r}; options: {list(PIPELINES)}, or a path to a pipeline YAML file")
    return PIPELINE_DIR / f"{name}.yaml"


def load_pipeline(augment: str | Mapping[str, Any], check: bool = True) -> dict[str, Any]:
    """The pipeline an ``augment`` value stands for, checked.

    Args:
        augment: a ``PIPELINES`` name; a path to a ``.yaml`` / ``.yml`` / ``.json`` file holding ``A.to_dict``'s
            output (plus an optional ``preprocess``, module docstring); or such a mapping already loaded (from a
            saved ``config.json``).
        check: build each part with albumentations (which imports torch); False checks the keys only.
    Returns:
        ``{"__version__": str, "transform": {...}[, "preprocess": {...}]}`` (a copy).
    Raises:
        ValueError: an unknown name (the options are listed); a file or mapping that is not a pipeline, or whose
            transforms albumentations cannot build (the message names the file and the reason).
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(augment, Mapping):
        data, where = copy.deepcopy(dict(augment)), "pipeline"
    else:
        text = str(augment)
        looks_like_path = text.endswith((".yaml", ".yml", ".json")) or os.sep in text
        path = Path(text).expanduser() if looks_like_path else pipeline_path(text)
        if not path.is_file():
            raise FileNotFoundError(f"augment {text!r}: no such pipeline file {path}")
        import yaml  # JSON is YAML too

        data, where = yaml.safe_load(path.read_text(encoding="utf-8")), str(path)
    if not isinstance(data, dict) or not isinstance(data.get("transform"), dict):
        raise ValueError(f"{where}: not an albumentations pipeline (A.to_dict's output: a mapping with 'transform')")
    unknown = sorted(set(data) - {"__version__", *_PARTS})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a pipeline holds __version__, transform, preprocess")
    for part in _PARTS if check else ():
        if part in data:
            try:
                compose(data, part)
            except Exception as e:  # albumentations raises ValueError, TypeError, KeyError, pydantic errors
                raise ValueError(f"{where}: {part}: albumentations cannot build it: {e}") from None
    return data


def compose(pipeline: Mapping[str, Any], part: str = "transform"):
    """The albumentations transform of one part of a pipeline (``load_pipeline``'s output).

    Args:
        part: "transform" (train augmentation) or "preprocess" (every stage).
    Returns:
        The ``A.Compose`` (or other transform) that ``A.from_dict`` builds; None for an absent ``preprocess``.
    Raises:
        ValueError: an unknown part.
    """
    if part not in _PARTS:
        raise ValueError(f"unknown pipeline part {part!r}; options: {list(_PARTS)}")
    if part not in pipeline:
        return None
    A = albumentations()
    body = pipeline[part]
    if "transform" not in body:  # the part is A.to_dict's output (with __version__) or its "transform" alone
        body = {"__version__": pipeline.get("__version__", A.__version__), "transform": body}
    return A.from_dict(copy.deepcopy(body))


def save_pipeline(path: str | os.PathLike, transform, preprocess=None, header: str = "") -> Path:
    """Write a pipeline file (YAML, atomically) from albumentations transforms: a user's own pipeline for
    ``augment=path``.

    Args:
        path: the ``.yaml`` file to write.
        transform: the train augmentation (an ``A.Compose``, or any serialisable albumentations transform).
        preprocess: an optional transform applied at every stage (module docstring).
        header: comment lines written first (the pipeline's source), without the ``#``.
    Returns:
        The path written.
    """
    import json

    import yaml

    A = albumentations()
    data = json.loads(json.dumps(A.to_dict(transform)))  # tuples -> lists: plain YAML
    if preprocess is not None:
        data["preprocess"] = json.loads(json.dumps(A.to_dict(preprocess)["transform"]))
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return atomic_write_text(path, comment + yaml.safe_dump(data, sort_keys=False))
