"""One fold of training, end to end: the configuration, each preset's default recipe, and ``train_fold``, which
``notebooks/10_train.py`` calls in process and ``torchrun -m kitlib.train`` runs on several GPUs.

``train_fold(cfg)`` writes ``artifacts/<exp>/fold<k>/``:

- ``config.json``: the configuration, versions and git commit (``kitlib.config.save_config``);
- ``last.pt``, ``best.pt``, ``history.csv``: see ``kitlib.engine.fit``;
- ``oof_probs.npy``: probabilities of the held-out images at the competition's scoring resolution, rows in
  ``folds.csv`` order: (n, K, H, W) uint8 (round(p x 255)) for segmentation, (n, C) float16 for classification;
  ``oof_cls_probs.npy`` (n, K) float32 when the model has a classification head; (n, K) float32 class presence
  probabilities for a presence classifier (``arch="classifier"`` on a binary/multilabel preset);
- ``oof_ids.csv``: the image_id of each row;
- ``scores.json``: the held-out scores at the scoring resolution (probability 0.5, no post-processing);
- ``done.json``: written last; its presence means the fold is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from kitlib import engine
from kitlib.config import project_path, read_json, save_config, write_csv, write_json
from kitlib.data import build_cache, build_transforms, make_dataset, normalization_for
from kitlib.folds import attach_folds, load_folds
from kitlib.formats import class_presence, load_competition, load_masks, masks_to_label_map
from kitlib.losses import LOSSES, RECIPES, SEGMENTATION_LOSSES, create_loss, create_recipe
from kitlib.metrics import ConfusionMatrix, dice_per_image_class
from kitlib.models import PRESENCE_ARCH, create_classifier, create_model
from kitlib.presets import Preset, get_preset

__all__ = [
    "TRAIN_RECIPES",
    "TrainConfig",
    "train_config",
    "train_fold",
    "launch_distributed",
    "scoring_size",
    "iter_target_masks",
    "score_oof",
    "read_oof",
    "fold_tables",
    "fold_run_id",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one fold's training run (the parameters cell of ``notebooks/10_train.py``).

    Attributes:
        exp, preset, data_dir, fold, label_file, artifacts_root: where the data and the artifacts are; ``fold`` is
            0-based and must exist in ``artifacts/<exp>/folds.csv`` (written by ``00_eda``).
        arch, encoder_name, encoder_weights, aux_head, dropout, model_kwargs: ``kitlib.models.create_model``
            arguments (segmentation); ``encoder_weights`` None trains from scratch, a name or a local file/folder
            loads pretrained weights (offline: a file). Classification presets use ``model_name`` and
            ``encoder_weights`` with ``create_classifier``. ``arch="classifier"`` on a binary/multilabel preset
            trains a *presence classifier* instead (``model_name``, one sigmoid per class, BCE on whether the class
            has any pixel; ``kitlib.data.PresenceDataset``), whose OOF probabilities gate another experiment's
            masks (``20_oof``'s ``gate_exp``; Severstal top solutions).
        height, width: training and validation resolution in pixels (multiples of 32 for most encoders).
        crop_height, crop_width: train on random crops of this size of the resized images (0: whole images);
            validation and OOF stay on whole images.
        batch_size, epochs, encoder_lr, decoder_lr, weight_decay: AdamW with differential learning rates.
        scheduler, warmup_epochs, pct_start: ``engine.make_scheduler`` ("onecycle", "cosine", "constant").
        loss, loss_kwargs: a ``kitlib.losses.RECIPES`` name, or a ``LOSSES`` name built with ``loss_kwargs`` (the
            preset's mode is added for segmentation losses).
        accumulate, clip_grad_norm, amp, channels_last, ema_decay: see ``engine.fit``.
        augment: ``kitlib.data.build_transforms`` augment level for training.
        monitor, patience: the history column that picks ``best.pt`` (default ``valid_<metric>``), early stopping.
        seed: seeds folds' model init, shuffling and augmentation.
        num_workers: DataLoader processes; cache: read images from an on-disk cache at the training resolution.
        device: "auto", "cpu", "cuda".
        tta: test-time augmentation for the OOF predictions (``kitlib.tta``).
        oof_dtype: "uint8" or "float16" for segmentation OOF.
        smoke: a quick check of the whole path: 2 epochs on at most 2 batches of images.
        recipe_source: where the preset's defaults come from (set by ``train_config``).
    """

    exp: str = "demo"
    preset: str = "demo"
    data_dir: str = "data/demo"
    fold: int = 0
    label_file: str = ""
    artifacts_root: str = "artifacts"
    arch: str = "unet"
    encoder_name: str = "resnet34"
    model_name: str = "resnet34"
    encoder_weights: str | None = None
    aux_head: bool = False
    dropout: float = 0.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    height: int = 256
    width: int = 256
    crop_height: int = 0
    crop_width: int = 0
    batch_size: int = 8
    epochs: int = 10
    encoder_lr: float = 2.5e-5
    decoder_lr: float = 2.5e-4
    weight_decay: float = 0.01
    scheduler: str = "onecycle"
    warmup_epochs: float = 0.0
    pct_start: float = 0.3
    loss: str = "clouds_6th"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    accumulate: int = 1
    clip_grad_norm: float = 0.0
    amp: str = "auto"
    channels_last: bool = False
    ema_decay: float = 0.0
    augment: str = "light"
    monitor: str = ""
    patience: int = 0
    seed: int = 42
    num_workers: int = 0
    cache: bool = True
    device: str = "auto"
    tta: str = "none"
    oof_dtype: str = "uint8"
    smoke: bool = False
    recipe_source: str = ""

    @property
    def exp_dir(self) -> Path:
        return project_path(self.artifacts_root) / self.exp

    @property
    def fold_dir(self) -> Path:
        return self.exp_dir / f"fold{self.fold}"

    @property
    def presence(self) -> bool:
        """A presence classifier on a segmentation preset (``arch="classifier"``)."""
        return self.arch == PRESENCE_ARCH and get_preset(self.preset).is_segmentation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """SHA-256 (16 hex) of the fields that change the trained weights; ``last.pt`` of another id is refused."""
        ignore = {"num_workers", "device", "tta", "oof_dtype", "recipe_source", "artifacts_root", "data_dir"}
        fields = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Each preset's default recipe: what its winners trained (with pretrained encoders, which a Kaggle kernel attaches
# as files), and, for the real-data check and the demo, recipes that train from scratch on a CPU in minutes.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "clouds": dict(
        arch="unet",
        encoder_name="resnet34",
        encoder_weights="imagenet",
        aux_head=True,
        height=320,
        width=480,
        batch_size=16,
        epochs=20,
        encoder_lr=2.5e-5,
        decoder_lr=2.5e-4,
        weight_decay=0.01,
        scheduler="onecycle",
        loss="clouds_1st",
        amp="auto",
        channels_last=True,
        recipe_source="Understanding Clouds 1st place (pudae): Unet with a classification head, BCE 0.75 + Dice 0.25 "
        "on masks + 0.1 BCE on the head, AdamW wd 0.01, encoder lr 2.5e-5 / decoder 2.5e-4, OneCycle; resnet34 and "
        "320x480 are the kit's defaults (the winners used several encoders at 384x576 and 320x640).",
    ),
    "severstal": dict(
        arch="unet",
        encoder_name="resnet34",
        encoder_weights="imagenet",
        height=256,
        width=1600,
        batch_size=8,
        epochs=20,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="clouds_6th",
        channels_last=True,
        recipe_source="Severstal top solutions: Unet resnet34 at full 256x1600, BCE + Dice.",
    ),
    "dacon_building": dict(
        arch="upernet",
        encoder_name="resnet50",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=8,
        epochs=20,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="building_bce",
        channels_last=True,
        recipe_source="Dacon building contest: UPerNet, BCE; resnet50 and 512x512 crops are the kit's defaults.",
    ),
    "coco": dict(
        arch="unetplusplus",
        encoder_name="efficientnet-b3",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=8,
        epochs=30,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="trash_ce_dice",
        channels_last=True,
        recipe_source="Trash-sorting contest: Unet++ EfficientNet-B3 at 512x512, CE + Dice.",
    ),
    "cassava": dict(
        model_name="tf_efficientnet_b4.ns_jft_in1k",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=16,
        epochs=10,
        encoder_lr=1e-4,
        decoder_lr=1e-4,
        weight_decay=1e-6,
        scheduler="cosine",
        warmup_epochs=1,
        loss="ce",
        loss_kwargs={"label_smoothing": 0.1},
        channels_last=True,
        recipe_source="Cassava top solutions: EfficientNet-B4 Noisy Student at 512, CE with label smoothing 0.1, "
        "cosine schedule with warmup.",
    ),
    "masks": dict(
        arch="unet",
        encoder_name="resnet18",
        encoder_weights=None,
        model_kwargs={"decoder_channels": [128, 64, 32, 16, 8]},
        height=256,
        width=256,
        batch_size=4,
        epochs=30,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        scheduler="onecycle",
        loss="bce",
        augment="flips",
        monitor="valid_pixel_error",
        recipe_source="ISBI 2012 membranes on a CPU: pixel-wise cross-entropy as in U-Net (Ronneberger et al. 2015), "
        "who trained from scratch with flips and elastic deformation at full resolution; here a slim Unet-resnet18 "
        "from scratch at half resolution (256x256), flips, OneCycle at 3e-3, 30 epochs: about 95 s a fold on 2 "
        "CPU cores. The best epoch is picked on validation pixel error.",
    ),
    "demo": dict(
        arch="unet",
        encoder_name="resnet18",
        encoder_weights=None,
        aux_head=True,
        model_kwargs={"decoder_channels": [128, 64, 32, 16, 8]},
        height=128,
        width=192,
        batch_size=8,
        epochs=8,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        loss="clouds_1st",
        augment="flips",
        recipe_source="The demo: the Understanding Clouds 1st-place loss and head on a slim Unet from scratch.",
    ),
}


# What a presence classifier changes in a segmentation preset's recipe (``arch="classifier"``): a timm classifier
# (the recipe's encoder when timm knows it), plain BCE per class, no decoder settings, the best epoch on the loss.
PRESENCE_RECIPE: dict[str, Any] = dict(
    aux_head=False,
    model_kwargs={},
    loss="bce",
    loss_kwargs={},
    monitor="valid_loss",
    recipe_source="Presence classifier (Severstal top solutions: a multilabel classifier gates the masks): one "
    "sigmoid per class, BCE on whether the class has any pixel, the segmentation recipe's size and schedule.",
)


def train_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset's recipe (``TRAIN_RECIPES``) with ``overrides`` on top; None values are ignored, so a notebook's
    ``None  # the recipe's`` parameters fall through. ``arch="classifier"`` on a binary/multilabel preset starts from
    the recipe with ``PRESENCE_RECIPE`` on top (a presence classifier; ``model_name`` defaults to the recipe's
    encoder when timm has that name, else resnet34).

    Raises:
        KeyError: unknown preset.
        TypeError: an override that is not a ``TrainConfig`` field (the message lists the fields).
    """
    get_preset(preset)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown training parameters {unknown}; fields: {sorted(names)}")
    values = {**TRAIN_RECIPES.get(preset, {}), "preset": preset}
    if overrides.get("arch") == PRESENCE_ARCH and get_preset(preset).is_segmentation:
        import timm

        encoder = str(values.get("encoder_name", ""))
        values.update(PRESENCE_RECIPE, model_name=encoder if timm.is_model(encoder) else "resnet34")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("encoder_weights"), str) and values["encoder_weights"].lower() in ("", "none"):
        values["encoder_weights"] = None
    cfg = TrainConfig(**values)
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    for name in ("height", "width", "batch_size", "epochs", "accumulate"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.fold < 0:
        raise ValueError(f"fold must be >= 0, got {cfg.fold}")
    if cfg.scheduler not in engine.SCHEDULERS:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; options: {list(engine.SCHEDULERS)}")
    if cfg.amp not in engine.AMP_MODES:
        raise ValueError(f"unknown amp {cfg.amp!r}; options: {list(engine.AMP_MODES)}")
    if cfg.loss not in RECIPES and cfg.loss not in LOSSES:
        raise KeyError(f"unknown loss {cfg.loss!r}; recipes: {sorted(RECIPES)}; losses: {sorted(LOSSES)}")
    if cfg.oof_dtype not in ("uint8", "float16", "float32"):
        raise ValueError(f"oof_dtype must be uint8, float16 or float32, got {cfg.oof_dtype!r}")
    preset = get_preset(cfg.preset)
    if cfg.arch == PRESENCE_ARCH and preset.is_segmentation and preset.task not in ("binary", "multilabel"):
        raise ValueError(f"arch='classifier' (a presence classifier) needs a binary/multilabel preset, "
                         f"not {preset.name!r} ({preset.task})")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Scoring resolution and targets
# ---------------------------------------------------------------------------------------------------------------


def scoring_size(preset: str | Preset, df: pd.DataFrame) -> tuple[int, int]:
    """(H, W) at which the competition scores masks: ``preset.submission_size``, else the images' own size.

    Raises:
        ValueError: no submission size and images of several sizes (the message names two of them).
    """
    preset = get_preset(preset)
    if preset.submission_size is not None:
        return tuple(preset.submission_size)
    sizes = df[["height", "width"]].drop_duplicates()
    if len(sizes) != 1:
        first = df.groupby(["height", "width"])["image_id"].first().head(2)
        raise ValueError(
            f"preset {preset.name!r} has no submission_size and the images have {len(sizes)} sizes "
            f"(e.g. {dict(first)}); set one with preset.replace(submission_size=(H, W))"
        )
    return int(sizes.iloc[0, 0]), int(sizes.iloc[0, 1])


def iter_target_masks(df: pd.DataFrame, preset: str | Preset, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Each row's true masks at ``size``, one image at a time (nearest-neighbour resize, as the competitions
    downscale their labels).

    Yields:
        (K, H, W) uint8 {0, 1} for binary/multilabel presets; (H, W) uint8 class indices for multiclass.
    Raises:
        ValueError, FileNotFoundError: as ``kitlib.formats.load_masks`` (the message names the image).
    """
    preset = get_preset(preset)
    height, width = size
    for _, row in df.iterrows():
        masks = load_masks(row, preset)  # (H, W, K) uint8
        if masks.shape[:2] != (height, width):
            masks = cv2.resize(masks, (width, height), interpolation=cv2.INTER_NEAREST)
            masks = masks.reshape(height, width, -1)
        if preset.task == "multiclass":
            yield masks_to_label_map(masks)
        else:
            yield np.ascontiguousarray(masks.transpose(2, 0, 1))


def score_oof(oof_probs: np.ndarray, df: pd.DataFrame, preset: str | Preset, threshold: float = 0.5) -> dict:
    """Scores of OOF probabilities against the truth at the scoring resolution, image by image.

    Args:
        oof_probs: (N, K, H, W) uint8 (0..255) or float; (N, C) for classification; (N, K) float class presence
            probabilities of a presence classifier on a binary/multilabel preset; rows in ``df`` order.
        df: the held-out rows (targets included).
        preset: the competition.
        threshold: probability above which a pixel (a class, for a presence classifier) is foreground.
    Returns:
        binary/multilabel: ``{"dice", "dice_per_class": {class: dice}, "pixel_error"}``; multiclass: ``{"miou",
        "pixel_accuracy"}``; classification: ``{"accuracy"}``; presence classifier: ``{"presence_accuracy",
        "accuracy_per_class": {class: accuracy}}``. Plus ``"n_images"``.
    """
    preset = get_preset(preset)
    if len(oof_probs) != len(df):
        raise ValueError(f"oof_probs has {len(oof_probs)} rows, the table {len(df)}")
    if preset.is_segmentation and np.ndim(oof_probs) == 2:
        truth = class_presence(df, preset)
        right = (np.asarray(oof_probs, dtype=np.float32) > threshold) == truth
        return {
            "presence_accuracy": float(right.mean()),
            "accuracy_per_class": dict(zip(preset.target_classes, map(float, right.mean(0)), strict=True)),
            "n_images": len(df),
        }
    if not preset.is_segmentation:
        labels = df["label"].to_numpy(np.int64)
        return {"accuracy": float(np.mean(np.asarray(oof_probs).argmax(1) == labels)), "n_images": len(df)}
    cut = threshold * 255 if oof_probs.dtype == np.uint8 else threshold
    size = tuple(oof_probs.shape[-2:])
    if preset.task == "multiclass":
        cm = ConfusionMatrix(preset.num_classes)
        for probs, labels in zip(oof_probs, iter_target_masks(df, preset, size), strict=True):
            cm.update(np.asarray(probs).argmax(0), labels)
        return {"miou": float(cm.miou()), "pixel_accuracy": float(cm.pixel_accuracy()), "n_images": len(df)}
    dice, wrong, total = [], 0, 0
    for probs, masks in zip(oof_probs, iter_target_masks(df, preset, size), strict=True):
        pred = np.asarray(probs) > cut
        dice.append(dice_per_image_class(pred[None], masks[None], empty_score=preset.dice_empty_score)[0])
        wrong += int(np.count_nonzero(pred != (masks > 0)))
        total += masks.size
    dice = np.stack(dice)
    per_class = np.nanmean(dice, axis=0)
    return {
        "dice": float(np.nanmean(dice)),
        "dice_per_class": dict(zip(preset.target_classes, map(float, per_class), strict=True)),
        "pixel_error": wrong / max(total, 1),
        "n_images": len(df),
    }


def read_oof(fold_dir: str | os.PathLike, mmap: bool = True) -> tuple[np.ndarray, list[str]]:
    """A fold's ``oof_probs.npy`` (memory-mapped) and the image ids of its rows."""
    fold_dir = Path(fold_dir)
    probs = np.load(fold_dir / "oof_probs.npy", mmap_mode="r" if mmap else None)
    ids = pd.read_csv(fold_dir / "oof_ids.csv", dtype=str, keep_default_na=False)["image_id"].tolist()
    if len(ids) != len(probs):
        raise ValueError(f"{fold_dir}: oof_probs.npy has {len(probs)} rows, oof_ids.csv {len(ids)}")
    return probs, ids


# ---------------------------------------------------------------------------------------------------------------
# One fold
# ---------------------------------------------------------------------------------------------------------------


def fold_tables(cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(full, train, valid)`` tables of ``cfg.fold``: the competition table read as ``00_eda`` read it (its
    ``eda_config.json``) with its ``fold`` column, and the rows outside / inside the fold (``smoke`` trims them).

    Raises:
        FileNotFoundError: no ``folds.csv`` for the experiment.
        ValueError: the fold does not exist; images without a fold.
    """
    preset = get_preset(cfg.preset)
    folds_path = cfg.exp_dir / "folds.csv"
    if not folds_path.is_file():
        raise FileNotFoundError(f"{folds_path}: no folds; run notebooks/00_eda.py for exp {cfg.exp!r} first")
    # Read the table as 00_eda did when it made the folds (its drop_missing / drop_invalid choices).
    eda_path = cfg.exp_dir / "eda_config.json"
    eda = read_json(eda_path).get("params", {}) if eda_path.is_file() else {}
    df = load_competition(
        preset, project_path(cfg.data_dir), label_file=cfg.label_file or eda.get("label_file") or None,
        drop_missing=bool(eda.get("drop_missing", False)), drop_invalid=bool(eda.get("drop_invalid", False)),
    )  # fmt: skip
    df = attach_folds(df, load_folds(folds_path))
    n_folds = int(df["fold"].max()) + 1
    if cfg.fold >= n_folds:
        raise ValueError(f"fold {cfg.fold} does not exist: {folds_path} has folds 0..{n_folds - 1}")
    train_df = df[df["fold"] != cfg.fold].reset_index(drop=True)
    valid_df = df[df["fold"] == cfg.fold].reset_index(drop=True)
    if cfg.smoke:
        n = 2 * cfg.batch_size
        train_df, valid_df = train_df.head(n), valid_df.head(max(cfg.batch_size, 2))
    return df, train_df, valid_df


def _build_model(cfg: TrainConfig, preset: Preset) -> tuple[torch.nn.Module, dict[str, Any]]:
    if cfg.presence:
        model_config = dict(model_name=cfg.model_name, num_classes=len(preset.target_classes), drop_rate=cfg.dropout,
                            **cfg.model_kwargs)  # fmt: skip
        model = create_classifier(pretrained_weights=cfg.encoder_weights, **model_config)
    elif preset.is_segmentation:
        model_config = dict(
            arch=cfg.arch, encoder_name=cfg.encoder_name, classes=preset.num_classes, aux_head=cfg.aux_head,
            dropout=cfg.dropout, **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model_kwargs.items()},
        )  # fmt: skip
        model = create_model(encoder_weights=cfg.encoder_weights, **model_config)
    else:
        model_config = dict(
            model_name=cfg.model_name, num_classes=preset.num_classes, drop_rate=cfg.dropout, **cfg.model_kwargs
        )
        model = create_classifier(pretrained_weights=cfg.encoder_weights, **model_config)
    return model, model_config


def _crop(cfg: TrainConfig) -> tuple[int, int] | None:
    if cfg.crop_height or cfg.crop_width:
        return (cfg.crop_height or cfg.height, cfg.crop_width or cfg.width)
    return None


def _build_loss(cfg: TrainConfig, preset: Preset) -> torch.nn.Module:
    mode = preset.task if preset.is_segmentation else None
    if cfg.loss in RECIPES:
        return create_recipe(cfg.loss, mode=mode)
    kwargs = dict(cfg.loss_kwargs)
    if mode is not None and (cfg.loss in SEGMENTATION_LOSSES or cfg.loss == "combo"):
        kwargs.setdefault("mode", mode)
    return create_loss(cfg.loss, **kwargs)


def fold_run_id(cfg: TrainConfig) -> str:
    """``cfg.run_id()`` combined with the content of the experiment's ``folds.csv``: a new split is a new run."""
    folds_path = cfg.exp_dir / "folds.csv"
    folds = hashlib.sha256(folds_path.read_bytes()).hexdigest() if folds_path.is_file() else "no-folds"
    return hashlib.sha256(f"{cfg.run_id()}:{folds}".encode()).hexdigest()[:16]


def _set_aside_other_run(fold_dir: Path, run_id: str) -> None:
    """Move a fold folder written by another configuration (other parameters or folds) to ``fold<k>.previous/``
    (replacing an older one), so the new run starts clean and the last one's checkpoints are kept, not mixed in."""
    config_path = fold_dir / "config.json"
    if not config_path.is_file():
        return
    previous = read_json(config_path).get("params", {}).get("run_id")
    if previous == run_id:
        return
    aside = fold_dir.with_name(fold_dir.name + ".previous")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(fold_dir, aside)
    log.warning("%s was written by another configuration (run_id %s); moved to %s", fold_dir, previous, aside)


def train_fold(cfg: TrainConfig, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train fold ``cfg.fold`` and write its artifacts (module docstring); resumes a killed run from ``last.pt``.

    The fold folder belongs to one configuration (``fold_run_id``: the training parameters and ``folds.csv``): a
    finished fold of the same configuration is returned as it is; a folder of another one is moved to
    ``fold<k>.previous/`` first.

    Works in one process and under ``torchrun`` (DDP: each rank trains on its shard, rank 0 writes files; the OOF
    rows are predicted in shards and written into one file).

    Args:
        cfg: the run (``train_config``).
        stop_after_epoch: stop as if killed after this epoch (tests of resuming); no OOF is written then.
    Returns:
        ``{"fold_dir", "best_epoch", "best_score", "monitor", "scores", "history"}``; ``scores`` are the OOF scores
        at the scoring resolution (None when stopped early by ``stop_after_epoch``).
    Raises:
        FileNotFoundError: no ``folds.csv`` for the experiment.
        ValueError: a fold that does not exist.
        NonFiniteLossError: the loss became NaN/inf.
    """
    preset = get_preset(cfg.preset)
    info, device = engine.init_distributed(cfg.device)
    fold_dir = cfg.fold_dir
    run_id = fold_run_id(cfg)
    done_path = fold_dir / "done.json"
    if done_path.is_file() and read_json(done_path).get("run_id") == run_id:
        return read_json(done_path)
    if info.is_main:
        _set_aside_other_run(fold_dir, run_id)
        save_config(fold_dir / "config.json", {**cfg.to_dict(), "run_id": run_id, "world_size": info.world_size})
    engine.barrier()

    full_df, train_df, valid_df = fold_tables(cfg)
    mean, std = normalization_for(cfg.encoder_name if preset.is_segmentation and not cfg.presence else cfg.model_name)
    cache = None
    if cfg.cache:
        cache_dir = project_path(cfg.artifacts_root) / "cache" / f"{preset.name}_{cfg.height}x{cfg.width}"
        if info.is_main:
            cache = build_cache(full_df, preset, cache_dir, cfg.height, cfg.width, num_workers=cfg.num_workers or None)
        engine.barrier()
        cache = cache or build_cache(full_df, preset, cache_dir, cfg.height, cfg.width)
    train_ds = make_dataset(
        train_df,
        preset,
        build_transforms("train", cfg.height, cfg.width, mean, std, cfg.augment, crop=_crop(cfg)),
        cache,
        presence=cfg.presence,
    )
    valid_ds = make_dataset(valid_df, preset, build_transforms("valid", cfg.height, cfg.width, mean, std), cache,
                            presence=cfg.presence)  # fmt: skip
    train_loader = engine.make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers, info, drop_last=None)
    valid_loader = engine.make_loader(valid_ds, cfg.batch_size, False, cfg.seed, cfg.num_workers, info)

    engine.seed_everything(cfg.seed)
    model, model_config = _build_model(cfg, preset)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, cfg.encoder_lr, cfg.decoder_lr, cfg.weight_decay)
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    epochs = 2 if cfg.smoke else cfg.epochs
    steps_per_epoch = -(-len(train_loader) // cfg.accumulate)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = engine.make_scheduler(
        optimizer, cfg.scheduler, epochs * steps_per_epoch, warmup_steps=warmup, pct_start=cfg.pct_start
    )
    result = engine.fit(
        model, train_loader, valid_loader, _build_loss(cfg, preset), optimizer, preset, fold_dir, model_config,
        epochs, device, scheduler=scheduler, amp=cfg.amp, accumulate=cfg.accumulate,
        clip_grad_norm=cfg.clip_grad_norm, ema_decay=cfg.ema_decay, channels_last=cfg.channels_last,
        monitor=cfg.monitor or None, patience=cfg.patience, seed=cfg.seed, run_id=run_id,
        extra={"fold": cfg.fold, "preset": preset.name, "exp": cfg.exp}, stop_after_epoch=stop_after_epoch,
    )  # fmt: skip
    out = {
        "fold_dir": str(fold_dir),
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "monitor": result.monitor,
        "history": str(result.paths["history"]),
        "scores": None,
    }
    if stop_after_epoch is not None and len(result.history) < epochs and not result.stopped_early:
        return out

    # OOF of the held-out rows with the best weights, at the scoring resolution.
    best = torch.load(fold_dir / "best.pt", map_location="cpu", weights_only=True)
    engine.unwrap(model).load_state_dict(best["state_dict"])
    out_size = scoring_size(preset, valid_df) if preset.is_segmentation and not cfg.presence else None
    batches = engine.predict(
        model, valid_loader, device, activation=engine.activation_for(preset), out_size=out_size,
        amp_dtype=engine.resolve_amp(cfg.amp, device), channels_last=cfg.channels_last, tta=cfg.tta, desc="oof",
    )  # fmt: skip
    ids = valid_df["image_id"].astype(str).tolist()
    oof_path = fold_dir / "oof_probs.npy"
    oof_dtype = "float32" if cfg.presence else cfg.oof_dtype if preset.is_segmentation else "float16"
    engine.write_predictions(
        oof_path, batches, ids, dtype=oof_dtype,
        cls_path=fold_dir / "oof_cls_probs.npy" if cfg.aux_head and preset.is_segmentation else None,
    )  # fmt: skip
    if info.is_main:
        write_csv(fold_dir / "oof_ids.csv", pd.DataFrame({"image_id": ids}), index=False)
        out["scores"] = score_oof(np.load(oof_path, mmap_mode="r"), valid_df, preset)
        write_json(fold_dir / "scores.json", out["scores"])
        write_json(done_path, {**out, "run_id": run_id})
    engine.barrier()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Several GPUs (or CPU processes): torchrun
# ---------------------------------------------------------------------------------------------------------------


def launch_distributed(cfg: TrainConfig, nproc: int, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``train_fold(cfg)`` in ``nproc`` processes with ``torchrun --standalone`` (DDP; gloo on CPU, NCCL on
    GPUs) and return the fold's ``done.json``.

    The configuration travels as ``fold<k>/launch.json``; the processes' output streams through. With
    ``cfg.device == "cpu"`` the test suite runs 2 CPU processes.

    Raises:
        RuntimeError: torchrun exited non-zero (the message gives the exit status and the command).
    """
    launch_path = cfg.fold_dir / "launch.json"
    write_json(launch_path, cfg.to_dict())
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
        "-m", "kitlib.train", str(launch_path),
    ]  # fmt: skip
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {' '.join(cmd)}")
    return read_json(cfg.fold_dir / "done.json")


def main(argv: list[str] | None = None) -> int:
    """``python -m kitlib.train CONFIG.json [--stop-after-epoch N]``: one fold, as ``torchrun`` runs it."""
    parser = argparse.ArgumentParser(prog="python -m kitlib.train", description=main.__doc__)
    parser.add_argument("config", help="a TrainConfig as JSON (launch.json or a fold's config.json)")
    parser.add_argument("--stop-after-epoch", type=int, default=None)
    args = parser.parse_args(argv)
    values = read_json(args.config)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in names})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        train_fold(cfg, stop_after_epoch=args.stop_after_epoch)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
