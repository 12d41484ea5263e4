"""Datasets, albumentations transforms and encoder normalisation.

One table row (``kitlib.formats.load_competition``) becomes one item, a dict as in the 1st-place Understanding
Clouds code (pudae, github.com/pudae/kaggle-understanding-clouds): ``{"image_id", "image", "mask"}`` for
segmentation, ``{"image_id", "image", "label"}`` for classification; test tables (no target columns) give no
``mask``/``label`` key. The datasets read the image files, or the rows of a ``kitlib.cache.ImageCache`` of resized
images (``kitlib.cache.build_cache``).

albumentations is imported lazily (inside ``build_transforms``, through ``kitlib.augment.albumentations``) with its
online version check switched off: Kaggle kernels run without internet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kitlib.augment import PIPELINES, albumentations, compose, load_pipeline
from kitlib.cache import (
    ImageCache,
    _check_same_size,
    _check_table,
    _read_image,
    _read_target_masks,
    _target_columns,
)
from kitlib.formats import SOFT_LABEL_COLUMN
from kitlib.io import read_json
from kitlib.presets import IGNORE_INDEX, Preset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STAGES",
    "AUGMENTS",
    "SegmentationDataset",
    "ClassificationDataset",
    "make_dataset",
    "build_transforms",
    "normalization_for",
    "config_normalization",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
STAGES = ("train", "valid", "test")
#: The named augmentation pipelines (``kitlib.augment.PIPELINES``; "none": resize + normalise only).
AUGMENTS = tuple(PIPELINES)


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------


class _TableDataset(Dataset):
    """Shared part of the datasets: the table, the transform, image reads from files or from an ``ImageCache``."""

    segmentation: bool  # which kind of preset the subclass serves

    def __init__(self, df: pd.DataFrame, preset: Preset, transform=None, cache: ImageCache | None = None):
        self.preset = preset
        if self.preset.is_segmentation != self.segmentation:
            other = "SegmentationDataset" if self.preset.is_segmentation else "ClassificationDataset"
            raise ValueError(f"preset {self.preset.name!r} is {self.preset.task}; use {other} (or make_dataset)")
        _check_table(df)
        self.df = df.reset_index(drop=True)
        self.image_ids: list[str] = self.df["image_id"].astype(str).tolist()
        self.target_columns = _target_columns(self.df, self.preset)
        self.has_targets = bool(self.target_columns)
        self.transform = transform
        self.cache = cache
        self._cache_rows = cache.rows_for(self.df) if cache is not None else None
        self.teacher = None  # a distillation teacher's probabilities per row (kitlib.distill.attach_teacher)
        if cache is not None:
            cache.check_compatible(self.preset, needs_masks=self.has_targets and self.preset.is_segmentation)

    def __len__(self) -> int:
        return len(self.df)

    def _image(self, i: int) -> np.ndarray:
        if self._cache_rows is not None:
            return np.array(self.cache.images[self._cache_rows[i]])
        return _read_image(self.image_ids[i], self.df.at[i, "image_path"])

    def _item(self, i: int, image: np.ndarray) -> dict[str, Any]:
        item = {"image_id": self.image_ids[i], "image": _image_tensor(image)}
        if self.teacher is not None and not self.teacher.spatial:  # (C,) / (K,) soft labels (kitlib.distill)
            item["teacher"] = torch.from_numpy(self.teacher.vector(self.image_ids[i]))
        return item


class SegmentationDataset(_TableDataset):
    """Images and masks of a segmentation table, as dicts.

    Args:
        df: table of ``kitlib.formats.load_competition`` (any subset of rows, e.g. one fold): ``image_id``,
            ``image_path``, ``height``, ``width`` and the target columns (one RLE column per class in
            ``preset.target_classes`` or ``mask_path``); a test table without them gives items without "mask".
        preset: a segmentation preset (binary, multilabel or multiclass) or its name.
        transform: albumentations-style callable ``transform(image=, mask=) -> {"image", "mask"}`` (see
            ``build_transforms``); None to return the image as read (or as cached).
        cache: an ``ImageCache`` built from a table holding these rows; images and masks are then read from its
            memory maps (already at the cache resolution) instead of decoding the files.
    Items:
        ``image_id``: str. ``image``: (3, H, W) float32 tensor: the transform's output (normalised), or 0..1 when
        the transform leaves uint8 pixels. ``mask``: (K, H, W) float32 {0,1} for binary/multilabel,
        (H, W) int64 class indices (0 = background) for multiclass. ``teacher`` (with ``kitlib.distill``'s
        ``attach_teacher``): (K, H, W) float32 soft masks in [0, 1] (multiclass: (C, H, W) probabilities).
    Raises:
        ValueError: not a segmentation preset; table without the base columns, with duplicated ids, with only some
            class columns; a cache of another task or without masks. At item time: unreadable image or malformed
            RLE (the message names the image_id and path).
        FileNotFoundError: missing image file (at item time).
        KeyError: ids missing from the cache.
    """

    segmentation = True

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self._image(i)
        masks = None
        if self.has_targets:
            if self._cache_rows is not None:
                masks = np.array(self.cache.masks[self._cache_rows[i]])
            else:
                row = self.df.iloc[i]
                masks = _read_target_masks(row, self.preset)
                _check_same_size(row, image, masks)
        spatial = self.teacher is not None and self.teacher.spatial
        soft = self.teacher.soft_mask(self.image_ids[i], image.shape[:2]) if spatial else None
        if self.transform is not None:
            targets = {k: v for k, v in (("mask", masks), ("masks", soft)) if v is not None}
            out = self.transform(image=image, **targets)
            image, masks, soft = out["image"], out.get("mask"), out.get("masks")
        item = self._item(i, image)
        if soft is not None:  # the teacher's (K, h, w) soft masks, moved with the image (kitlib.distill)
            item["teacher"] = torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32))
        if masks is not None:
            if self.preset.task == "multiclass":
                item["mask"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.int64))
            else:
                item["mask"] = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1), dtype=np.float32))
        return item


class ClassificationDataset(_TableDataset):
    """Images and labels of a classification table, as dicts.

    Args:
        df: table of ``kitlib.formats.load_competition`` with an int ``label`` column (absent for a test table).
        preset: a classification preset or its name.
        transform: albumentations-style callable ``transform(image=) -> {"image"}``; None to return the image as read.
        cache: an ``ImageCache`` holding these rows (images only).
    Items:
        ``image_id``: str; ``image``: (3, H, W) float32 tensor; ``label``: int64 scalar tensor in
        0..num_classes-1 (only when the table has labels), or (C,) float32 soft targets for every row when some row
        holds a soft label (``formats.SOFT_LABEL_COLUMN``: pseudo-labels; the hard rows one-hot); ``teacher`` (C,)
        float32 (``kitlib.distill``).
    Raises:
        ValueError: not a classification preset; labels outside 0..num_classes-1 (the message names an image_id).
        FileNotFoundError, ValueError: unreadable image at item time (the message names the image_id and path).
    """

    segmentation = False

    def __init__(self, df: pd.DataFrame, preset: Preset, transform=None, cache: ImageCache | None = None):
        super().__init__(df, preset, transform, cache)
        self.labels = None
        if self.has_targets:
            labels = pd.to_numeric(self.df["label"], errors="coerce")
            bad = labels.isna() | (labels < 0) | (labels >= self.preset.num_classes) | (labels % 1 != 0)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(
                    f"image {self.image_ids[i]!r}: label {self.df['label'].tolist()[i]!r} not an int in "
                    f"0..{self.preset.num_classes - 1}; {int(bad.sum())} such row(s)"
                )
            self.labels = labels.to_numpy(np.int64)
        self.soft = _soft_rows(self.df, self.labels, self.preset) if self.labels is not None else None

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self._image(i)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        item = self._item(i, image)
        if self.soft is not None:
            item["label"] = torch.from_numpy(self.soft[i])
        elif self.labels is not None:
            item["label"] = torch.tensor(self.labels[i], dtype=torch.int64)
        return item


def _soft_rows(df: pd.DataFrame, labels: np.ndarray, preset: Preset) -> np.ndarray | None:
    """(n, C) float32 targets of a table with soft label rows (``formats.SOFT_LABEL_COLUMN``, train-only pseudo rows):
    each soft row as it is, the hard labels one-hot; None when no row is soft (labels stay int64).

    Raises:
        ValueError: a soft row that is not C finite non-negative values (the message names the image_id).
    """
    soft = df[SOFT_LABEL_COLUMN].map(_is_row).to_numpy() if SOFT_LABEL_COLUMN in df.columns else None
    if soft is None or not soft.any():
        return None
    out = np.eye(preset.num_classes, dtype=np.float32)[labels]
    for i in np.flatnonzero(soft):
        row = np.asarray(df[SOFT_LABEL_COLUMN].iat[i], dtype=np.float32)
        if row.shape != (preset.num_classes,) or not np.isfinite(row).all() or (row < 0).any():
            raise ValueError(f"image {df['image_id'].iat[i]!r}: soft label {row.tolist()} is not "
                             f"{preset.num_classes} non-negative probabilities")  # fmt: skip
        out[i] = row
    return out


def _is_row(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


class PresenceDataset(Dataset):
    """A binary/multilabel ``SegmentationDataset`` whose targets are the classes present on each image: the
    training data of a separate presence classifier that gates the masks at inference.

    Presence is read off the *transformed* mask, so a crop or shift that removes a class also removes its label.

    Source: the Severstal Steel Defect Detection top solutions ran a multilabel classifier first and kept a class's
    masks only where it fired (12th place, Yakubovskiy et al.: "Multilabel Classification -> Multilabel
    Segmentation", BCE, thresholds chosen on F1); Understanding Clouds teams gated masks the same way.

    Args:
        dataset: a ``SegmentationDataset`` of a binary or multilabel preset.
    Items:
        As the wrapped dataset, with ``mask`` replaced by (K,) float32 {0, 1}: 1 where the class has any pixel.
    Raises:
        ValueError: a multiclass or classification dataset.
    """

    def __init__(self, dataset: SegmentationDataset):
        if not isinstance(dataset, SegmentationDataset) or dataset.preset.task not in ("binary", "multilabel"):
            raise ValueError("PresenceDataset wraps a binary or multilabel SegmentationDataset")
        self.dataset = dataset
        self.preset = dataset.preset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def transform(self):
        """The wrapped dataset's transform, so the training loop reseeds its augmentations every epoch (and every
        loader worker) as for any dataset: a resumed presence classifier then draws the same augmentations."""
        return self.dataset.transform

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if "mask" in item:
            mask = item["mask"].flatten(1)
            item["mask"] = ((mask > 0.5) & (mask != IGNORE_INDEX)).any(1).float()  # a pseudo mask's ignored pixels: 0
        return item


def make_dataset(
    df: pd.DataFrame, preset: Preset, transform=None, cache: ImageCache | None = None
) -> SegmentationDataset | ClassificationDataset | PresenceDataset:
    """The dataset of ``preset.task``: ``SegmentationDataset`` (binary, multilabel, multiclass),
    ``ClassificationDataset`` (classification), or a ``PresenceDataset`` over the segmentation dataset of its masks
    (presence, ``Preset.presence()``)."""
    if preset.task == "presence":
        return PresenceDataset(SegmentationDataset(df, preset.masks_preset(), transform=transform, cache=cache))
    cls = SegmentationDataset if preset.is_segmentation else ClassificationDataset
    return cls(df, preset, transform=transform, cache=cache)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> (3, H, W) float32 tensor; uint8 pixels are scaled to 0..1."""
    if isinstance(image, torch.Tensor):  # a transform that ends in ToTensorV2
        return image.float()
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


# --------------------------------------------------------------------------------------------------------------
# Transforms and normalisation
# --------------------------------------------------------------------------------------------------------------


def build_transforms(
    stage: str,
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: str | Mapping[str, Any] = "light",
    crop: tuple[int, int] | None = None,
    resize: bool = True,
):
    """albumentations pipeline for one stage: resize, preprocess, crop and augment (train only), normalise.

    The one place that builds transforms. The resize uses ``cv2.INTER_AREA`` for images (the interpolation of
    ``build_cache``, so a cached image passes through unchanged) and nearest for masks. The augmentation is a
    pipeline of ``kitlib.augment`` (a named YAML file of albumentations' own serialisation, a path to one, or the
    loaded mapping from a saved config): its ``preprocess`` part (if any) follows the resize at every stage, its
    ``transform`` part follows the crop in the train stage. "flips" and "light" are the kit's former fixed pipelines
    (``kitlib/augmentations/``; "light" follows the 1st-place Understanding Clouds solution, pudae). Geometric
    transforms apply to the masks with nearest interpolation, so masks stay {0,1} (or class indices).

    Args:
        stage: "train", "valid" or "test"; "valid" and "test" are deterministic (resize, preprocess, normalise).
        height, width: output size in pixels of the resize (validation and test items have it; a train pipeline
            that crops or resizes sets the train items' size).
        mean, std: per-channel normalisation in 0..1 units (as timm gives them, see ``normalization_for``):
            ``(pixel / 255 - mean) / std``.
        augment: a ``kitlib.augment.PIPELINES`` name, a path to a pipeline YAML file, or a loaded pipeline
            (``kitlib.augment.load_pipeline``); its ``transform`` part is ignored for "valid" and "test".
        crop: (height, width) of a random crop taken after the resize, train stage only: training on tiles of the
            full-resolution image while validating on whole images, as the U-Net paper did on ISBI 2012
            (Ronneberger et al. 2015); None for no crop.
        resize: False: no resize at any stage (native scale; ``TrainConfig.native_scale``): height and width are
            then only used to check the crop.
    Returns:
        ``A.Compose``: ``transform(image=(H, W, 3) uint8[, mask=(H, W[, K]) uint8])`` ->
        ``{"image": (h, w, 3) float32, "mask": (h, w[, K]) uint8}``.
    Raises:
        ValueError: unknown stage or augment name (the message lists the options), a malformed pipeline; height or
            width < 1; a crop larger than the resized image.
        FileNotFoundError: an augment path that does not exist.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; options: {list(STAGES)}")
    pipeline = load_pipeline(augment)
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    A = albumentations()
    steps = []
    if resize:
        steps.append(A.Resize(int(height), int(width), interpolation=cv2.INTER_AREA,
                              mask_interpolation=cv2.INTER_NEAREST))  # fmt: skip
    steps += _steps(compose(pipeline, "preprocess"))
    if crop is not None and stage == "train":
        crop_h, crop_w = (int(v) for v in crop)
        if not (1 <= crop_h <= int(height) and 1 <= crop_w <= int(width)):
            raise ValueError(f"crop {crop_h}x{crop_w} must fit in the resized {height}x{width} image")
        steps.append(A.RandomCrop(crop_h, crop_w))
    if stage == "train":
        steps += _steps(compose(pipeline, "transform"))
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(steps)


def _steps(transform) -> list:
    """A pipeline part as steps of the kit's Compose: a plain ``Compose`` (p=1, no targets of its own) is
    flattened, so "flips" and "light" give the very transforms (and random draws) of the kit's former fixed
    pipelines; anything else is one step."""
    if transform is None:
        return []
    if type(transform).__name__ == "Compose" and transform.p == 1.0 and not transform.processors:
        return list(transform.transforms)
    return [transform]


def normalization_for(
    encoder_name: str, encoder_weights: str | os.PathLike | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 units) that an encoder's pretrained weights expect.

    Read from configuration only: no model is built, and nothing is downloaded except the hub ``config.json`` of
    named smp weights when it is not cached and downloads are on (smp fetches the same file with the weights).

    - smp encoder names (``resnet34``, ``efficientnet-b0``, ``inceptionv4``): the mean/std of ``encoder_weights``
      (a name; its first setting when None or a local path). Sources, in order: a ``config.json`` with ``mean`` and
      ``std`` beside a local weights file (``encoder_weights`` a path: the file's folder, as in a downloaded smp-hub
      repo); the setting itself and smp 0.5's legacy copy (``encoders.pretrained_settings``); the hub
      ``config.json`` (``smp-hub/<encoder>.<weights>``) in the Hugging Face cache (``kitlib.pretrained.
      smp_hub_config``), the only place smp 0.6 keeps them. Never timm's defaults for an smp encoder.
    - ``tu-<timm name>`` and plain timm names (``tu-vit_base_patch16_224``, ``convnext_tiny.fb_in22k``): the
      timm pretrained config (``timm.models.get_pretrained_cfg``; the default tag when none is given).
    - anything else, and an smp encoder with ``encoder_weights`` None whose hub config is not cached: ImageNet
      mean/std, with a logged warning (weights trained from scratch take any fixed normalisation; the training
      run records the values it used in its ``config.json``, see ``config_normalization``).

    Returns:
        ``(mean, std)``, each a tuple of 3 floats.
    Raises:
        ValueError: ``encoder_weights`` is not one of the smp encoder's pretrained settings (the message lists them);
            a config that is not RGB in 0..1 (``input_space``, ``input_range``).
        kitlib.pretrained.OfflineWeightsError: named or local weights of an smp encoder whose mean/std no file on
            this machine gives (the message names the hub repository and where to put its ``config.json``).
    """
    if encoder_name.startswith("tu-"):
        found = _timm_normalization(encoder_name[3:])
    else:
        found = _smp_normalization(encoder_name, encoder_weights)
        if found is None:
            found = _timm_normalization(encoder_name)
    if found is None:
        log.warning("no pretrained config for encoder %r: using ImageNet mean/std", encoder_name)
        return IMAGENET_MEAN, IMAGENET_STD
    return found


def config_normalization(cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of a training run's images: ``normalization`` saved in its ``config.json`` by ``kitlib.train``
    (so a Kaggle kernel without the Hugging Face cache, where smp 0.6 keeps them, normalises as training did) when
    it was saved for the same encoder and weights, else
    ``normalization_for(cfg.normalization_name, cfg.encoder_weights)`` (configs saved before it was recorded).

    Args:
        cfg: a ``kitlib.stages.TrainConfig`` (built, or loaded from a fold's ``config.json``).
    Returns:
        ``(mean, std)``, each a tuple of 3 floats.
    Raises:
        as ``normalization_for``.
    """
    saved = cfg.extra.get("normalization")
    same = saved and (saved.get("encoder"), saved.get("weights")) == (cfg.normalization_name, cfg.encoder_weights)
    if same:  # (a config changed with replace() keeps the extras of the one it came from)
        return tuple(map(float, saved["mean"])), tuple(map(float, saved["std"]))
    return normalization_for(cfg.normalization_name, cfg.encoder_weights)


def _smp_normalization(
    name: str, weights: str | os.PathLike | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    from segmentation_models_pytorch import encoders as smp_encoders

    from kitlib.pretrained import _as_weights_path, _legacy_smp_settings, smp_hub_config, smp_hub_config_missing

    if name not in smp_encoders.encoders:
        return None
    settings = smp_encoders.encoders[name].get("pretrained_settings") or {}
    if not settings:
        return None
    local = _as_weights_path(weights)
    if local is not None:
        config_file = (local if local.is_dir() else local.parent) / "config.json"
        found = _mean_std(read_json(config_file), config_file) if config_file.is_file() else None
        if found is not None:
            return found
        named = next(iter(settings))  # the mean/std of the encoder's first weights, as with None
    elif weights is None:
        named = next(iter(settings))
    elif str(weights) not in settings:
        raise ValueError(f"encoder {name!r} has no weights {weights!r}; options: {sorted(settings)}")
    else:
        named = str(weights)
    for source in (settings[named], _legacy_smp_settings().get(name, {}).get(named, {})):  # smp <0.5, 0.5
        found = _mean_std(source, f"smp's settings of {name!r} {named!r}")
        if found is not None:
            return found
    hub = smp_hub_config(name, named, download=weights is not None and local is None)
    found = None if hub is None else _mean_std(hub, f"the hub config.json of {name!r} {named!r}")
    if found is not None:
        return found
    if weights is None:
        log.warning("encoder %r from scratch: its hub config.json (mean/std of %r) is not cached: ImageNet mean/std",
                    name, named)  # fmt: skip
        return IMAGENET_MEAN, IMAGENET_STD
    raise smp_hub_config_missing(name, named, local)


def _mean_std(config: Mapping[str, Any], where: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of a settings mapping or config.json, None when it has none; RGB in 0..1 is checked."""
    if config.get("mean") is None or config.get("std") is None:
        return None
    space, value_range = config.get("input_space", "RGB"), list(config.get("input_range", [0, 1]))
    if space != "RGB" or value_range not in ([0, 1], [0.0, 1.0]):
        raise ValueError(f"{where}: input_space {space!r}, input_range {value_range}; the kit feeds RGB in [0, 1]")
    mean, std = tuple(map(float, config["mean"])), tuple(map(float, config["std"]))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{where}: mean {mean} and std {std} must be 3 values each, std > 0")
    return mean, std


def _timm_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):  # a tag that the architecture does not have
        return None
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return tuple(map(float, cfg.mean)), tuple(map(float, cfg.std))
