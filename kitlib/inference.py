"""Test-set inference: every fold's ``best.pt`` of one experiment or an ensemble of experiments, averaged batch by
batch at the competition's scoring resolution, post-processed and written as a validated submission.

Flow (``notebooks/40_submit.py``)::

    members = load_members(artifacts_root, exp, ensemble, device=device)    # [(fold models, weight), ...]
    test_df = load_competition(preset, data_dir, split="test")
    batches = predict_test(members, test_df, preset, batch_size=8, tta="flips")
    result = make_submission(batches, test_df, preset, data_dir, "runs/<exp>/submission.csv",
                             load_postprocess(artifacts_root / (ensemble or exp), preset))

Each model keeps its own input size and normalisation (its fold's ``config.json``): the test images are read once
per distinct transform, and every model's probabilities are resized to the scoring size (``preset.submission_size``,
or each image's own size when the preset has none, e.g. ``masks``) before they are averaged: the mean over an
experiment's folds, then the weighted mean over experiments (``artifacts/<ensemble>/weights.json``). The whole test
set is never in memory: only one batch of probabilities and the submission's strings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from kitlib import engine
from kitlib._private import progress
from kitlib.config import read_json
from kitlib.data import build_transforms, make_dataset, normalization_for
from kitlib.models import PRESENCE_ARCH, load_model
from kitlib.postprocess import PostProcess, apply_postprocess
from kitlib.presets import Preset, get_preset
from kitlib.submit import encode_rows, order_like, read_sample_submission, validate_submission, write_submission

__all__ = [
    "FoldModel",
    "SubmissionResult",
    "default_postprocess",
    "ensemble_weights",
    "fold_dirs",
    "load_fold_models",
    "load_gate_models",
    "load_members",
    "load_postprocess",
    "masks_from_probs",
    "make_submission",
    "predict_test",
    "resolve_device",
]

log = logging.getLogger(__name__)

Batch = tuple[list[str], "torch.Tensor | list[torch.Tensor]", "torch.Tensor | None"]


@dataclass
class FoldModel:
    """One fold's trained model and what it needs to read an image.

    Attributes:
        model: in eval mode on its device.
        fold: the fold number (0-based).
        path: the ``best.pt`` it came from.
        params: the fold's TrainConfig fields (``config.json`` ``params`` over the TrainConfig defaults).
        height, width: input resolution in pixels.
        mean, std: per-channel normalisation (0..1 units).
        amp, channels_last: as in training (``engine.resolve_amp``).
    """

    model: nn.Module
    fold: int
    path: Path
    params: dict[str, Any] = field(repr=False)
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    amp: str = "auto"
    channels_last: bool = False

    @property
    def transform_key(self) -> tuple:
        return (self.height, self.width, tuple(self.mean), tuple(self.std))

    @property
    def presence(self) -> bool:
        """A presence classifier (``10_train`` with ``arch="classifier"``): (N, K) class probabilities, no masks."""
        return self.params.get("arch") == PRESENCE_ARCH


@dataclass
class SubmissionResult:
    """What ``make_submission`` wrote.

    Attributes:
        path: the submission CSV.
        summary: ``validate_submission``'s summary (rows, images, nonempty fractions, ...).
        submission: the rows written, in the sample submission's order.
        masks: image_id -> (H, W, K) uint8 masks of the images asked for in ``keep_masks`` (for plots).
    """

    path: Path
    summary: dict
    submission: pd.DataFrame = field(repr=False)
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as ``torch.device``.

    Raises:
        RuntimeError: a CUDA device asked for but torch sees none.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but torch sees no CUDA device")
    return device


def _fold_params(fold_dir: Path) -> dict[str, Any]:
    from kitlib.train import TrainConfig

    path = fold_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a fold folder needs the config.json that 10_train writes")
    params = read_json(path).get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{path}: no 'params' object (expected the config.json written by kitlib.train)")
    return {**TrainConfig().to_dict(), **params}


def fold_dirs(exp_dir: str | os.PathLike, folds: Sequence[int] | None = None) -> list[Path]:
    """The fold folders of an experiment that inference loads: ``fold<k>/`` with ``best.pt`` and ``config.json``.

    Args:
        exp_dir: ``artifacts/<exp>/``.
        folds: the folds; None: every ``fold<k>/`` that has a ``best.pt``, by k.
    Raises:
        FileNotFoundError: no experiment folder, no fold with a ``best.pt``, a requested fold without one, or a
            fold without ``config.json`` (the message names the path).
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"experiment folder not found: {exp_dir}")
    if folds is None:
        folds = sorted(
            int(m.group(1)) for p in exp_dir.glob("fold*/best.pt") if (m := re.fullmatch(r"fold(\d+)", p.parent.name))
        )
        if not folds:
            raise FileNotFoundError(f"{exp_dir}: no fold<k>/best.pt; train the folds first (notebooks/10_train.py)")
    dirs = [exp_dir / f"fold{int(k)}" for k in folds]
    for d in dirs:
        if not (d / "best.pt").is_file():
            raise FileNotFoundError(f"{d / 'best.pt'}: no such checkpoint ({d.name} of {exp_dir.name} is not trained)")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d / 'config.json'}: missing; a fold folder needs the config.json of 10_train")
    return dirs


def load_fold_models(
    exp_dir: str | os.PathLike, folds: Sequence[int] | None = None, device: str | torch.device = "cpu"
) -> list[FoldModel]:
    """Every fold's ``best.pt`` of an experiment, with the input size and normalisation it was trained with.

    Args:
        exp_dir: ``artifacts/<exp>/`` holding ``fold<k>/best.pt`` and ``fold<k>/config.json``.
        folds: the folds to load; None: every ``fold<k>/`` that has a ``best.pt``.
        device: "auto", "cpu", "cuda", ...
    Returns:
        FoldModels sorted by fold, in eval mode on ``device``.
    Raises:
        FileNotFoundError: no experiment folder, no fold with a ``best.pt``, a requested fold without one, or a
            fold without ``config.json`` (the message names the path).
        ValueError: an unreadable checkpoint or config (as ``kitlib.models.load_model``), or folds of different
            presets.
    """
    exp_dir = Path(exp_dir)
    device = resolve_device(device)
    models = []
    for fold_dir in fold_dirs(exp_dir, folds):
        fold = int(fold_dir.name[4:])
        path = fold_dir / "best.pt"
        params = _fold_params(fold_dir)
        preset = get_preset(params["preset"])
        presence = params.get("arch") == PRESENCE_ARCH
        name = params["encoder_name"] if preset.is_segmentation and not presence else params["model_name"]
        mean, std = normalization_for(name)
        model, _ = load_model(path, map_location=device)
        if params.get("channels_last"):
            model.to(memory_format=torch.channels_last)
        models.append(FoldModel(
            model=model, fold=int(fold), path=path, params=params, height=int(params["height"]),
            width=int(params["width"]), mean=tuple(mean), std=tuple(std), amp=str(params.get("amp") or "auto"),
            channels_last=bool(params.get("channels_last")),
        ))  # fmt: skip
    presets = {m.params["preset"] for m in models}
    if len(presets) > 1:
        raise ValueError(f"{exp_dir}: folds trained for different presets {sorted(presets)}")
    return models


def ensemble_weights(artifacts_root: str | os.PathLike, exp: str, ensemble: str = "") -> list[tuple[str, float]]:
    """``[(exp, weight), ...]``: the ensemble's ``weights.json`` (``{"exps": [...], "weights": [...]}``, written by
    ``30_ensemble``), or ``[(exp, 1.0)]`` when ``ensemble`` is empty. Weights are normalised to sum to 1.

    Raises:
        FileNotFoundError: ``artifacts/<ensemble>/weights.json`` is missing.
        ValueError: lists of different lengths, no experiment, a negative weight or weights summing to 0.
    """
    if not ensemble:
        return [(exp, 1.0)]
    path = Path(artifacts_root) / ensemble / "weights.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ensemble weights; run notebooks/30_ensemble.py or leave ensemble empty")
    spec = read_json(path)
    exps, weights = list(spec.get("exps", [])), [float(w) for w in spec.get("weights", [])]
    if not exps or len(exps) != len(weights):
        raise ValueError(f"{path}: needs 'exps' and 'weights' of the same non-zero length, got {exps} / {weights}")
    total = sum(weights)
    if min(weights) < 0 or total <= 0:
        raise ValueError(f"{path}: weights must be >= 0 and sum to > 0, got {weights}")
    return [(str(e), w / total) for e, w in zip(exps, weights, strict=True)]


def load_members(
    artifacts_root: str | os.PathLike,
    exp: str,
    ensemble: str = "",
    folds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> list[tuple[list[FoldModel], float]]:
    """The models of ``exp`` alone (weight 1), or of every experiment of ``ensemble`` with its weight.

    Raises:
        As ``ensemble_weights`` and ``load_fold_models``.
    """
    return [
        (load_fold_models(Path(artifacts_root) / name, folds, device), weight)
        for name, weight in ensemble_weights(artifacts_root, exp, ensemble)
        if weight > 0
    ]


def load_gate_models(
    artifacts_root: str | os.PathLike, postprocess: PostProcess | None, device: str | torch.device = "cpu"
) -> list[FoldModel] | None:
    """The presence classifier that gates the masks, when ``postprocess.gate_exp`` names one: every fold's
    ``best.pt`` of ``artifacts/<gate_exp>/`` (``10_train`` with ``arch="classifier"``); None otherwise.

    Raises:
        FileNotFoundError: as ``load_fold_models`` (the gate experiment is not there).
        ValueError: the gate experiment's models are not presence classifiers (the message names the checkpoint).
    """
    if postprocess is None or not postprocess.gate_exp:
        return None
    models = load_fold_models(Path(artifacts_root) / postprocess.gate_exp, None, device)
    for m in models:
        if not m.presence:
            raise ValueError(f"{m.path}: gate_exp {postprocess.gate_exp!r} must be a presence classifier "
                             f"(10_train with arch='classifier'), got arch {m.params.get('arch')!r}")  # fmt: skip
    return models


def default_postprocess(preset: str | Preset) -> PostProcess | None:
    """Threshold 0.5 and min_area 0 for every class of a binary/multilabel preset; None (argmax) otherwise."""
    preset = get_preset(preset)
    if preset.task not in ("binary", "multilabel"):
        return None
    k = len(preset.target_classes)
    return PostProcess(threshold=[0.5] * k, min_area=[0] * k, meta={"source": "default"})


def load_postprocess(folder: str | os.PathLike, preset: str | Preset) -> PostProcess | None:
    """``folder/postprocess.json`` (from ``20_oof`` or ``30_ensemble``) when it exists, else ``default_postprocess``.
    Multiclass and classification presets always use the argmax (None).

    Raises:
        ValueError: the file's classes do not match the preset (the message names the file).
    """
    preset = get_preset(preset)
    default = default_postprocess(preset)
    path = Path(folder) / "postprocess.json"
    if default is None or not path.is_file():
        return default
    params = PostProcess.from_json(path)
    if params.num_classes != default.num_classes:
        raise ValueError(f"{path}: {params.num_classes} classes, preset {preset.name!r} has {default.num_classes}")
    return params


def masks_from_probs(
    probs: Any, preset: str | Preset, postprocess: PostProcess | None = None, cls_probs: Any = None
) -> np.ndarray | int:
    """One image's probabilities -> what ``kitlib.submit.encode_rows`` takes.

    Args:
        probs: (K, H, W) float in [0, 1] (segmentation), or (C,) (classification); tensor or array.
        preset: the competition.
        postprocess: binary/multilabel settings (None: ``default_postprocess``); ignored for other tasks.
        cls_probs: (K,) from a classification head, for a ``PostProcess`` gate.
    Returns:
        (K, H, W) uint8 {0, 1} (binary/multilabel), (H, W) uint8 class indices (multiclass), or an int label.
    """
    preset = get_preset(preset)
    p = probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if preset.task == "classification":
        return int(p.argmax())
    if preset.task == "multiclass":
        return p.argmax(0).astype(np.uint8)
    params = postprocess or default_postprocess(preset)
    if cls_probs is not None and not params.needs_class_probs:
        cls_probs = None
    if isinstance(cls_probs, torch.Tensor):
        cls_probs = cls_probs.numpy()
    return apply_postprocess(p, params, class_probs=cls_probs)


def _loader(df: pd.DataFrame, preset: Preset, key: tuple, batch_size: int, num_workers: int):
    height, width, mean, std = key
    dataset = make_dataset(df, preset, build_transforms("test", height, width, mean, std))
    return engine.make_loader(dataset, batch_size, False, 0, num_workers, engine.DistInfo())


def _resize_each(probs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    return [
        p if tuple(p.shape[-2:]) == s else F.interpolate(p[None], size=s, mode="bilinear", align_corners=False)[0]
        for p, s in zip(probs, sizes, strict=True)
    ]


def predict_test(
    members: Sequence[tuple[Sequence[FoldModel], float]] | Sequence[FoldModel],
    test_df: pd.DataFrame,
    preset: str | Preset,
    batch_size: int = 8,
    tta: str | Sequence[str] = "none",
    num_workers: int = 0,
    desc: str = "test",
    gate_models: Sequence[FoldModel] | None = None,
) -> Iterator[Batch]:
    """Ensemble probabilities of the test images, batch by batch.

    Each batch is read once per distinct (input size, normalisation) of the models; every model's probabilities
    (TTA-averaged, ``kitlib.tta``) are resized (bilinear) to the scoring size and averaged: the mean over an
    experiment's folds, then the weighted mean over experiments. A classification head's probabilities are
    averaged over the models that have one; with ``gate_models`` (a presence classifier, ``load_gate_models``)
    the class probabilities are instead the mean of its folds' sigmoid outputs.

    Args:
        members: ``[(fold models, weight), ...]`` (``load_members``), or the fold models of one experiment.
        test_df: ``load_competition(preset, data_dir, split="test")``: image_id, image_path, height, width.
        preset: the competition; its ``submission_size`` is the scoring size, or each image's own (height, width)
            when None.
        batch_size: images per batch.
        tta: a ``kitlib.tta`` name ("none", "hflip", "vflip", "flips", "d4") or a list of transforms.
        num_workers: DataLoader processes per input transform.
        gate_models: presence classifier folds whose mean probabilities become ``cls_probs``.
    Yields:
        ``(image_ids, probs, cls_probs)``: probs (B, K, H, W) float32 in [0, 1] on the CPU (segmentation; a list
        of B (K, H_i, W_i) tensors when the preset has no submission size and the batch's images differ in
        size), (B, C) for classification; cls_probs (B, K) float32 or None.
    Raises:
        ValueError: no models; models of another preset than ``preset`` (the message names the checkpoint).
    """
    preset = get_preset(preset)
    if members and isinstance(members[0], FoldModel):
        members = [(list(members), 1.0)]
    weighted = [(m, float(w) / len(models)) for models, w in members for m in models if w > 0 and models]
    if not weighted:
        raise ValueError("predict_test needs at least one model with a weight > 0")
    gate_models = list(gate_models or [])
    for m in [m for m, _ in weighted] + gate_models:
        if m.params["preset"] != preset.name:
            raise ValueError(f"{m.path}: trained for preset {m.params['preset']!r}, predicting for {preset.name!r}")
    for m, is_gate in [(m, False) for m, _ in weighted] + [(m, True) for m in gate_models]:
        if m.presence != is_gate:
            role = "gate_models takes presence classifiers" if is_gate else "a presence classifier goes in gate_models"
            raise ValueError(f"{m.path}: {role}")
    total = sum(w for _, w in weighted)
    # the gate's folds (m.presence) are averaged on their own, read from the same batches
    weighted = [(m, w / total) for m, w in weighted] + [(m, 1.0 / len(gate_models)) for m in gate_models]
    test_df = test_df.reset_index(drop=True)
    groups: dict[tuple, list[tuple[FoldModel, float]]] = {}
    for m, w in weighted:
        groups.setdefault(m.transform_key, []).append((m, w))
    loaders = [_loader(test_df, preset, key, batch_size, num_workers) for key in groups]
    size_of = dict(zip(test_df["image_id"].astype(str), zip(test_df["height"], test_df["width"], strict=True),
                       strict=True))  # fmt: skip
    activation = engine.activation_for(preset)
    n_batches = len(loaders[0])
    for batches in progress(zip(*loaders, strict=True), total=n_batches, desc=desc, dynamic_ncols=True):
        ids = [str(i) for i in batches[0]["image_id"]]
        if preset.submission_size is not None:
            sizes = [tuple(preset.submission_size)] * len(ids)
        else:
            sizes = [(int(size_of[i][0]), int(size_of[i][1])) for i in ids]
        common = sizes[0] if len(set(sizes)) == 1 else None
        probs_sum, cls_sum, cls_weight, gate_sum = None, None, 0.0, None
        for batch, group in zip(batches, groups.values(), strict=True):
            for m, w in group:
                device = next(m.model.parameters()).device
                _, probs, cls_probs = next(engine.predict(
                    m.model, [batch], device, activation="sigmoid" if m.presence else activation,
                    out_size=common if preset.is_segmentation and not m.presence else None,
                    amp_dtype=engine.resolve_amp(m.amp, device), channels_last=m.channels_last, tta=tta, desc=desc,
                ))  # fmt: skip
                if m.presence:
                    gate_sum = probs * w if gate_sum is None else gate_sum + probs * w
                elif preset.is_segmentation and common is None:
                    probs = _resize_each(probs, sizes)
                    probs_sum = (
                        [p * w for p in probs]
                        if probs_sum is None
                        else [a + p * w for a, p in zip(probs_sum, probs, strict=True)]
                    )
                else:
                    probs_sum = probs * w if probs_sum is None else probs_sum + probs * w
                if cls_probs is not None:
                    cls_sum = cls_probs * w if cls_sum is None else cls_sum + cls_probs * w
                    cls_weight += w
        cls_mean = None if cls_sum is None else cls_sum / cls_weight
        yield ids, probs_sum, cls_mean if gate_sum is None else gate_sum


def _sample_or_ids(preset: Preset, data_dir: Path, test_df: pd.DataFrame) -> tuple[pd.DataFrame | None, Any]:
    sample = read_sample_submission(preset, data_dir)
    return sample, (None if sample is not None else test_df)


def make_submission(
    batches: Iterable[Batch],
    test_df: pd.DataFrame,
    preset: str | Preset,
    data_dir: str | os.PathLike,
    path: str | os.PathLike,
    postprocess: PostProcess | None = None,
    keep_masks: Sequence[str] = (),
) -> SubmissionResult:
    """Post-process each test image, encode its rows, order them like the sample submission, validate, write.

    Args:
        batches: ``predict_test``'s ``(image_ids, probs, cls_probs)`` batches.
        test_df: the test table (its ids order the rows of presets without a sample submission, and its sizes
            check their masks).
        preset: the competition.
        data_dir: the competition folder (its ``preset.sample_submission``).
        path: the CSV to write, atomically; parent folders are created.
        postprocess: binary/multilabel settings (None: ``default_postprocess``).
        keep_masks: image ids whose masks to return, for plots.
    Returns:
        ``SubmissionResult``; the file exists only if the submission validated.
    Raises:
        kitlib.submit.SubmissionError: predictions missing for test ids, unexpected ids, invalid rows (the message
            names the ids); FileNotFoundError: the preset's sample submission is not in ``data_dir``.
        ValueError: as ``kitlib.submit.encode_rows`` (the message names the image).
    """
    preset = get_preset(preset)
    data_dir = Path(data_dir)
    sample, image_ids = _sample_or_ids(preset, data_dir, test_df)
    params = postprocess or default_postprocess(preset)
    keep = {str(i) for i in keep_masks}
    rows, kept = [], {}
    for ids, probs, cls_probs in batches:
        for i, image_id in enumerate(ids):
            masks = masks_from_probs(probs[i], preset, params, None if cls_probs is None else cls_probs[i])
            rows += encode_rows(image_id, masks, preset)
            if image_id in keep and preset.is_segmentation:
                kept[image_id] = _hwk(masks, preset)
    columns = list(preset.submission_columns)
    submission = order_like(pd.DataFrame(rows, columns=columns), sample, preset, image_ids=image_ids)
    summary = validate_submission(submission, sample, preset, image_ids=image_ids, sizes=test_df)
    write_submission(submission, path)
    return SubmissionResult(path=Path(path), summary=summary, submission=submission, masks=kept)


def _hwk(masks: np.ndarray, preset: Preset) -> np.ndarray:
    """(K, H, W) masks or an (H, W) class map -> (H, W, K) uint8 for ``kitlib.plots.plot_samples(masks=)``."""
    if preset.task == "multiclass":
        return np.stack([masks == k for k in range(1, preset.num_classes)], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
