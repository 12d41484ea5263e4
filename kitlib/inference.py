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
experiment's folds, then the weighted mean over experiments (``artifacts/<ensemble>/weights.json``), or, when
``30_ensemble`` chose a stacker (classification), its meta-model applied to the experiments' fold means
(``predict_test(stacker=kitlib.stacking.load_stacker(artifacts_root / ensemble))``). The whole test set is never in
memory: only one batch of probabilities and the submission's strings.
"""

from __future__ import annotations

import dataclasses
import json
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
from kitlib._private import progress, to_numpy
from kitlib.data import build_transforms, config_normalization, make_dataset
from kitlib.images import read_image_at
from kitlib.io import read_json
from kitlib.models import load_model
from kitlib.postprocess import PostProcess, decode, default_postprocess
from kitlib.presets import Preset
from kitlib.runtime import DistInfo, compile_model, make_loader, resolve_amp, resolve_device
from kitlib.stacking import LinearStacker, stacking_chosen
from kitlib.stages import TrainConfig
from kitlib.submit import encode_rows, order_like, read_sample_submission, validate_submission, write_submission

__all__ = [
    "FoldModel",
    "SubmissionResult",
    "compile_members",
    "ensemble_weights",
    "fold_dirs",
    "load_fold_models",
    "load_gate_models",
    "load_members",
    "make_submission",
    "predict_test",
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
        config: the fold's training config (``fold<k>/config.json``, ``TrainConfig.load``).
        mean, std: per-channel normalisation (0..1 units) of its encoder's pretrained weights.
    """

    model: nn.Module
    fold: int
    path: Path
    config: TrainConfig = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def preset(self) -> Preset:
        """What the model predicts: the competition's task, or its presence task (a gate's classifier)."""
        return self.config.model_preset

    @property
    def presence(self) -> bool:
        """A presence classifier: (N, K) class probabilities that gate another experiment's masks, no masks."""
        return self.preset.task == "presence"

    @property
    def height(self) -> int:
        return int(self.config.height)

    @property
    def width(self) -> int:
        return int(self.config.width)

    @property
    def transform_key(self) -> tuple:
        """What the test transform depends on: size, normalisation, the pipeline's ``preprocess`` part (as JSON, so
        that models with the same key share one read of the images) and whether images are resized."""
        preprocess = json.dumps(self.config.augment_pipeline.get("preprocess"), sort_keys=True)
        return (self.height, self.width, tuple(self.mean), tuple(self.std), preprocess, self.config.resize)


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
        ValueError: an unreadable checkpoint or config (as ``kitlib.models.load_model`` and ``TrainConfig.load``), or
            folds of different presets.
    """
    exp_dir = Path(exp_dir)
    device = resolve_device(device)
    models = []
    for fold_dir in fold_dirs(exp_dir, folds):
        config = TrainConfig.load(fold_dir / "config.json")
        mean, std = config_normalization(config)
        model, _ = load_model(fold_dir / "best.pt", map_location=device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        models.append(FoldModel(model=model, fold=int(fold_dir.name[4:]), path=fold_dir / "best.pt", config=config,
                                mean=tuple(mean), std=tuple(std)))  # fmt: skip
    presets = {m.config.preset.name for m in models}
    if len(presets) > 1:
        raise ValueError(f"{exp_dir}: folds trained for different presets {sorted(presets)}")
    return models


def ensemble_weights(artifacts_root: str | os.PathLike, exp: str, ensemble: str = "") -> list[tuple[str, float]]:
    """``[(exp, weight), ...]``: the ensemble's ``weights.json`` (``{"exps": [...], "weights": [...]}``, written by
    ``30_ensemble``), or ``[(exp, 1.0)]`` when ``ensemble`` is empty. Weights are normalised to sum to 1. When the
    ensemble's stacker was chosen (``weights.json``'s ``"stacking": {"chosen": true}``), every member enters the
    meta-model: each gets 1 / M, also those the weighted blend left at 0.

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
    if stacking_chosen(spec):
        return [(str(e), 1.0 / len(exps)) for e in exps]
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


def compile_members(members: list[tuple[list[FoldModel], float]], cfg: Any) -> list[tuple[list[FoldModel], float]]:
    """``load_members``' models through ``kitlib.runtime.compile_model`` (``cfg.compile``, ``compile_mode``,
    ``compile_backend`` of a ``SubmitConfig``); the same list when ``cfg.compile`` is off. Each fold compiles at its
    first batch (per input size and TTA view shape); the predictions equal the eager ones up to float rounding.

    Raises:
        RuntimeError: as ``compile_model`` (no C++ compiler / triton for inductor).
    """
    if not getattr(cfg, "compile", False):
        return members
    return [([dataclasses.replace(m, model=compile_model(m.model, cfg)) for m in models], w) for models, w in members]


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
            raise ValueError(
                f"{m.path}: gate_exp {postprocess.gate_exp!r} must be a presence classifier (10_train with "
                f"arch='classifier'), got {m.preset.task} (arch {m.config.arch!r})"
            )
    return models


def _loader(df: pd.DataFrame, preset: Preset, key: tuple, batch_size: int, num_workers: int):
    height, width, mean, std, preprocess, resize = key
    pipeline = {"transform": {"__class_fullname__": "Compose", "transforms": []}}
    if preprocess != "null":
        pipeline["preprocess"] = json.loads(preprocess)
    dataset = make_dataset(df, preset, build_transforms("test", height, width, mean, std, pipeline, resize=resize))
    return make_loader(dataset, batch_size, False, 0, num_workers, DistInfo())


def _resize_each(probs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    return [
        p if tuple(p.shape[-2:]) == s else F.interpolate(p[None], size=s, mode="bilinear", align_corners=False)[0]
        for p, s in zip(probs, sizes, strict=True)
    ]


def predict_test(
    members: Sequence[tuple[Sequence[FoldModel], float]] | Sequence[FoldModel],
    test_df: pd.DataFrame,
    preset: Preset,
    batch_size: int = 8,
    tta: str | Sequence[str] = "none",
    num_workers: int = 0,
    desc: str = "test",
    gate_models: Sequence[FoldModel] | None = None,
    tta_weight: float | None = None,
    stacker: LinearStacker | None = None,
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
        tta: a ``kitlib.tta`` name ("none", "hflip", "vflip", "flips", "d4"; for classifiers also "five_crop",
            "center_crop", "multiscale", ...) or a list of transforms.
        tta_weight: the plain view's weight against the mean of the other TTA views (``predict_tta``'s
            ``plain_weight``); None weighs them all the same.
        num_workers: DataLoader processes per input transform.
        gate_models: presence classifier folds whose mean probabilities become ``cls_probs``.
        stacker: a classification ensemble's chosen meta-model (``kitlib.stacking.load_stacker``): the probabilities
            are its ``predict_proba`` of the members' fold means instead of their weighted mean; ``members`` must be
            its ``exps``, in order (``load_members`` of the ensemble).
    Yields:
        ``(image_ids, probs, cls_probs)``: probs (B, K, H, W) float32 in [0, 1] on the CPU (segmentation; a list
        of B (K, H_i, W_i) tensors when the preset has no submission size and the batch's images differ in
        size), (B, C) for classification; cls_probs (B, K) float32 or None.
    Raises:
        ValueError: no models; models of another preset than ``preset`` (the message names the checkpoint); a
            stacker with a segmentation preset or other members than its ``exps``.
    """
    weighted = _weighted_models(members, gate_models, preset)
    _check_stacker(stacker, weighted, preset)
    test_df = test_df.reset_index(drop=True)
    groups: dict[tuple, list[tuple[FoldModel, float, int]]] = {}
    for m, w, j in weighted:
        groups.setdefault(m.transform_key, []).append((m, w, j))
    loaders = [_loader(test_df, preset, key, batch_size, num_workers) for key in groups]
    size_of = dict(zip(test_df["image_id"].astype(str), zip(test_df["height"], test_df["width"], strict=True),
                       strict=True))  # fmt: skip
    for batches in progress(zip(*loaders, strict=True), total=len(loaders[0]), desc=desc, dynamic_ncols=True):
        ids = [str(i) for i in batches[0]["image_id"]]
        if preset.submission_size is not None:
            sizes = [tuple(preset.submission_size)] * len(ids)
        else:
            sizes = [(int(size_of[i][0]), int(size_of[i][1])) for i in ids]
        common = sizes[0] if len(set(sizes)) == 1 else None
        probs_sum, cls_sum, cls_weight, gate_sum, member_sums = None, None, 0.0, None, {}
        for batch, group in zip(batches, groups.values(), strict=True):
            for m, w, j in group:
                probs, cls_probs = _predict_batch(m, batch, common if m.preset.is_segmentation else None, tta, desc,
                                                 tta_weight)  # fmt: skip
                if m.presence:
                    gate_sum = probs * w if gate_sum is None else gate_sum + probs * w
                elif stacker is not None:
                    member_sums[j] = probs * w if j not in member_sums else member_sums[j] + probs * w
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
        if stacker is not None:
            probs_sum = _stacked(stacker, member_sums, weighted)
        cls_mean = None if cls_sum is None else cls_sum / cls_weight
        yield ids, probs_sum, cls_mean if gate_sum is None else gate_sum


def _weighted_models(
    members: Sequence[tuple[Sequence[FoldModel], float]] | Sequence[FoldModel],
    gate_models: Sequence[FoldModel] | None,
    preset: Preset,
) -> list[tuple[FoldModel, float, int]]:
    """Every model with its weight in the average and its member's index: an experiment's folds share its weight,
    the members' weights are normalised to sum 1, and the gate's folds (averaged on their own, index -1) follow with
    1 / their number.

    Raises:
        ValueError: no model with a weight; a model of another preset; a presence classifier among the members or a
            segmentation model among the gate's (the checkpoint is named).
    """
    if members and isinstance(members[0], FoldModel):
        members = [(list(members), 1.0)]
    weighted = [(m, float(w) / len(models), j) for j, (models, w) in enumerate(members) for m in models
                if w > 0 and models]  # fmt: skip
    if not weighted:
        raise ValueError("predict_test needs at least one model with a weight > 0")
    gate_models = list(gate_models or [])
    for m in [m for m, _, _ in weighted] + gate_models:
        if m.config.preset.name != preset.name:
            raise ValueError(f"{m.path}: trained for preset {m.config.preset.name!r}, predicting for {preset.name!r}")
    for m, is_gate in [(m, False) for m, _, _ in weighted] + [(m, True) for m in gate_models]:
        if m.presence != is_gate:
            role = "gate_models takes presence classifiers" if is_gate else "a presence classifier goes in gate_models"
            raise ValueError(f"{m.path}: {role}")
    total = sum(w for _, w, _ in weighted)
    return [(m, w / total, j) for m, w, j in weighted] + [(m, 1.0 / len(gate_models), -1) for m in gate_models]


def _check_stacker(stacker: LinearStacker | None, weighted: list[tuple[FoldModel, float, int]], preset: Preset) -> None:
    """A stacker needs a classification preset and, as members, its ``exps`` in order (each fold's experiment is the
    folder above its ``fold<k>/``)."""
    if stacker is None:
        return
    if preset.task != "classification":
        raise ValueError(f"a stacker applies to classification probabilities, not to the {preset.task} preset "
                         f"{preset.name!r}")  # fmt: skip
    exps: dict[int, str] = {}
    for m, _, j in weighted:
        if j >= 0:
            exps.setdefault(j, m.path.parent.parent.name)
    got = [exps[j] for j in sorted(exps)]
    if got != list(stacker.exps):
        raise ValueError(f"the stacker was fitted on members {list(stacker.exps)}, predict_test got {got}; load "
                         "the members with load_members(ensemble=...)")  # fmt: skip


def _stacked(stacker: LinearStacker, member_sums: dict[int, torch.Tensor], weighted) -> torch.Tensor:
    """The stacker's (B, C) float32 probabilities of the members' fold means (their weighted sums / their weight)."""
    totals: dict[int, float] = {}
    for _, w, j in weighted:
        if j >= 0:
            totals[j] = totals.get(j, 0.0) + w
    means = [to_numpy(member_sums[j] / totals[j]) for j in sorted(totals)]
    return torch.from_numpy(stacker.predict_proba(means).astype(np.float32))


def _predict_batch(m: FoldModel, batch: dict, out_size: tuple[int, int] | None, tta, desc: str, tta_weight=None):
    """One model's (TTA-averaged) probabilities and head probabilities of one batch (``engine.predict``)."""
    device = next(m.model.parameters()).device
    _, probs, cls_probs = next(engine.predict(
        m.model, [batch], device, activation=m.preset.activation, out_size=out_size,
        amp_dtype=resolve_amp(m.config.amp, device), channels_last=m.config.channels_last, tta=tta, desc=desc,
        tta_weight=tta_weight,
    ))  # fmt: skip
    return probs, cls_probs


def _sample_or_ids(preset: Preset, data_dir: Path, test_df: pd.DataFrame) -> tuple[pd.DataFrame | None, Any]:
    sample = read_sample_submission(preset, data_dir)
    return sample, (None if sample is not None else test_df)


def image_submission_rows(image_id: str, path, probs, cls_probs, preset: Preset, params) -> tuple[np.ndarray, list]:
    """One test image's post-processing and submission rows, as ``make_submission`` writes them (and
    ``kitlib.kaggle_estimate`` times them): the image read at the probabilities' size when ``params`` has a DenseCRF,
    ``_decode_one``, then ``encode_rows``.

    Args:
        probs: (K, H, W) probabilities (or (K,) for a classifier); cls_probs: (K,) or None; params: the
            ``load_postprocess`` result or None.
    Returns:
        (the decoded masks or labels, the rows of ``preset.submission_columns``).
    """
    image = None if params is None or params.crf is None else read_image_at(path, probs.shape[-2:])
    masks = _decode_one(probs, preset, params, cls_probs, image)
    return masks, encode_rows(image_id, masks, preset)


def make_submission(
    batches: Iterable[Batch],
    test_df: pd.DataFrame,
    preset: Preset,
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
    data_dir = Path(data_dir)
    sample, image_ids = _sample_or_ids(preset, data_dir, test_df)
    params = postprocess or default_postprocess(preset)
    keep = {str(i) for i in keep_masks}
    rows, kept = [], {}
    paths = dict(zip(test_df["image_id"].astype(str), test_df["image_path"], strict=True))
    for ids, probs, cls_probs in batches:
        for i, image_id in enumerate(ids):
            cls_i = None if cls_probs is None else cls_probs[i]
            masks, image_rows = image_submission_rows(image_id, paths[image_id], probs[i], cls_i, preset, params)
            rows += image_rows
            if image_id in keep and preset.is_segmentation:
                kept[image_id] = _hwk(masks, preset)
    columns = list(preset.submission_columns)
    submission = order_like(pd.DataFrame(rows, columns=columns), sample, preset, image_ids=image_ids)
    summary = validate_submission(submission, sample, preset, image_ids=image_ids, sizes=test_df)
    write_submission(submission, path)
    return SubmissionResult(path=Path(path), summary=summary, submission=submission, masks=kept)


def _decode_one(
    probs: Any, preset: Preset, params: PostProcess | None, cls_probs: Any, image: Any = None
) -> np.ndarray | int:
    """One image's probabilities -> what ``kitlib.submit.encode_rows`` takes (``kitlib.postprocess.decode``): (K, H, W)
    uint8 masks, an (H, W) uint8 class map, or an int label; ``image`` (H, W, 3) for a ``crf``."""
    heads = None if cls_probs is None else to_numpy(cls_probs)[None]
    out = decode(to_numpy(probs)[None], preset, params, heads, images=None if image is None else image[None])[0]
    if preset.task == "classification":
        return int(out)
    return out.astype(np.uint8) if preset.task == "multiclass" else out


def _hwk(masks: np.ndarray, preset: Preset) -> np.ndarray:
    """(K, H, W) masks or an (H, W) class map -> (H, W, K) uint8 for ``kitlib.plots.plot_samples(masks=)``."""
    if preset.task == "multiclass":
        return np.stack([masks == k for k in range(1, preset.num_classes)], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
