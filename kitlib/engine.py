"""The training loop: ``train_one_epoch``, ``evaluate``, ``predict`` and ``fit``, which ties them together.

The pieces around it have modules of their own: seeds, devices, DDP and loaders in ``kitlib.runtime``, the optimiser,
schedules and EMA in ``kitlib.optim``, checkpoints and resuming in ``kitlib.checkpoint``, scores in
``kitlib.scoring``, TTA in ``kitlib.tta`` and the prediction files in ``kitlib.predictions``.

Written here rather than taken from a trainer library because the loop is the core of the kit and must do exactly
what the winning solutions did, visibly: AdamW with separate encoder / decoder learning rates (Understanding Clouds
1st place), OneCycle or cosine-with-warmup stepped per optimiser step, gradient accumulation and clipping, mixed
precision on CUDA (bf16, or fp16 with a GradScaler; off on CPU), channels_last, an EMA of the weights, atomic
``last.pt`` / ``best.pt`` checkpoints that resume to the same result, a hard stop on a NaN loss, and DDP under
``torchrun``.

Determinism: every epoch reseeds torch, numpy, ``random``, the sampler and the albumentations pipeline from
``(seed, epoch)``, so epoch e draws the same batches, augmentations and batch mixes (``kitlib.mixes``, from numpy's
state) whether the run started at epoch 0 or resumed from ``last.pt``; on CPU two runs with the same seed give
identical weights and OOF bytes.

Batches are dicts (``{"image_id", "image", "mask" | "label"}``, ``kitlib.data``); models return logits, or
``(mask_logits, cls_logits)`` with a classification head (``kitlib.models.create_model(aux_head=True)``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from kitlib import checkpoint
from kitlib._private import PhaseTimer, progress
from kitlib.averaging import WeightAverage, recompute_bn
from kitlib.coteach import CoTeachingLoss
from kitlib.distill import DistillationLoss
from kitlib.hrnet_ocr import AuxSegLoss
from kitlib.io import write_csv
from kitlib.losses import SegClsLoss
from kitlib.mixes import BatchMix, SegmentationMix, make_mix
from kitlib.optim import make_ema, steps_per_epoch_only
from kitlib.presets import Preset
from kitlib.pseudo import ignore_pixels
from kitlib.runtime import (
    WeightedShardSampler,
    all_reduce,
    autocast,
    barrier,
    dist_info,
    epoch_seed,
    resolve_amp,
    seed_everything,
    seed_transform,
    to_device,
    unwrap,
)
from kitlib.scoring import Scorer
from kitlib.tta import predict_tta

__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "compute_loss",
    "evaluate",
    "fit",
    "predict",
    "split_outputs",
    "train_one_epoch",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the checkpoints on disk are those of the last good epoch."""


def split_outputs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, cls_logits)`` from what a model returns: logits alone, or a ``(mask_logits, cls_logits)`` pair."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], outputs[1]
    return outputs, None


def compute_loss(loss_fn: nn.Module, outputs: Any, target: torch.Tensor, teacher: torch.Tensor | None = None
                 ) -> torch.Tensor:  # fmt: skip
    """The loss of one batch: ``loss_fn(mask_logits, cls_logits, masks)`` for a ``SegClsLoss`` (classification
    head), ``loss_fn(logits, aux_logits, masks)`` for an ``AuxSegLoss`` (HRNet-OCR's soft object regions, the second
    output in train mode), else ``loss_fn(logits, target)`` (a head's logits, if any, are then ignored). Mask pixels
    of ``kitlib.presets.IGNORE_INDEX`` (pseudo masks) give no gradient (``kitlib.pseudo.ignore_pixels``). A
    ``kitlib.distill.DistillationLoss`` gets its base loss computed so, and the batch's ``teacher`` probabilities; a
    ``kitlib.coteach.CoTeachingLoss`` gets both networks' outputs and calls this function with its base loss."""
    if isinstance(loss_fn, CoTeachingLoss):
        return loss_fn(outputs, target, partial(compute_loss, loss_fn.base))
    if isinstance(loss_fn, DistillationLoss):
        return _distillation_loss(loss_fn, outputs, target, teacher)
    logits, cls_logits = split_outputs(outputs)
    logits, target = ignore_pixels(logits, target)  # pseudo masks' IGNORE_INDEX pixels: no gradient
    if isinstance(loss_fn, (SegClsLoss, AuxSegLoss)):
        return loss_fn(logits.float(), None if cls_logits is None else cls_logits.float(), target)
    return loss_fn(logits.float(), target)


def _distillation_loss(loss_fn: DistillationLoss, outputs: Any, target: torch.Tensor, teacher: torch.Tensor | None
                       ) -> torch.Tensor:  # fmt: skip
    """alpha * the base loss (as ``compute_loss`` computes it) + the soft term on the main logits; with
    ``alpha == 1`` or no teacher (validation) exactly the base loss."""
    hard = compute_loss(loss_fn.base, outputs, target)
    return loss_fn(split_outputs(outputs)[0], target, teacher, hard_loss=hard)


def _teacher_and_mix(batch: Mapping[str, Any], device: torch.device, images: torch.Tensor, target: torch.Tensor,
                     mix: Callable | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The batch's ``teacher`` probabilities on ``device`` (None without distillation), and the batch mix applied to
    images, targets and teacher alike (``kitlib.mixes``: the same partner and lambda / box)."""
    teacher = batch["teacher"].to(device, non_blocking=True) if "teacher" in batch else None
    if mix is None:
        return images, target, teacher
    if teacher is None:
        return (*mix(images, target), None)
    return mix(images, target, teacher)


def _decode_logits(logits: torch.Tensor, preset: Preset) -> np.ndarray:
    """Predicted masks or labels of a batch: logits > 0 (probability > 0.5) for sigmoid tasks, argmax otherwise."""
    logits = logits.detach().float().cpu()
    return (logits > 0).numpy() if preset.activation == "sigmoid" else logits.argmax(1).numpy()


def _target_key(preset: Preset) -> str:
    """The batch key of the targets: "mask" (segmentation and presence), "label" (classification)."""
    return "mask" if preset.has_masks else "label"


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    preset: Preset,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    accumulate: int = 1,
    clip_grad_norm: float = 0.0,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    channels_last: bool = False,
    epoch: int = 0,
    desc: str = "train",
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    timer: PhaseTimer | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` with optimiser steps every ``accumulate`` batches.

    Args:
        model: returns logits or ``(mask_logits, cls_logits)``; may be wrapped in DDP (gradients of the batches
            between steps are then accumulated without an all-reduce, ``no_sync``).
        loader: batches ``{"image", "mask" | "label"}`` (and ``teacher`` when distilling, ``kitlib.distill``); a
            ``DistributedSampler`` gets ``set_epoch(epoch)``.
        loss_fn: see ``compute_loss``; its ``last_values`` (terms of a ``WeightedSum`` / ``SegClsLoss``) are averaged
            into the result.
        optimizer, scheduler: the scheduler steps after every optimiser step.
        preset: says which batch key holds the targets.
        device: where the model is.
        scaler: a GradScaler for fp16 autocast (None or disabled otherwise).
        amp_dtype: autocast dtype (``resolve_amp``), None for fp32.
        accumulate: batches per optimiser step (gradient accumulation; the loss is divided by it).
        clip_grad_norm: clip the global gradient norm to this value (0: off); unscaled first under fp16.
        ema: updated after every optimiser step.
        channels_last: feed NHWC images (the model should be converted too).
        epoch: 0-based, for the sampler and error messages.
        desc: progress-bar label.
        mix: ``(images, labels) -> (images, targets)`` before the forward pass (a ``kitlib.mixes.BatchMix``: mixed
            images and soft targets; ``mix(images, labels, teacher)`` when the batch has a teacher); None: batches as
            they come.
        timer: the waits for each batch (loading, augmenting) are added to its "train_data" phase.
    Returns:
        ``{"loss": mean over batches, "<term>": mean of each loss term, "grad_norm": mean pre-clip norm (when
        clipping)}`` of this process.
    Raises:
        NonFiniteLossError: a NaN/inf loss (the message names the epoch, batch and image ids); nothing is stepped.
        ValueError: accumulate < 1.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    key = _target_key(preset)
    if isinstance(getattr(loader, "sampler", None), DistributedSampler | WeightedShardSampler):
        loader.sampler.set_epoch(epoch)
    if callable(getattr(loss_fn, "set_epoch", None)):  # co-teaching's forget rate R(T) follows the epoch
        loss_fn.set_epoch(epoch)
    model.train()
    totals: dict[str, float] = {}
    n_batches = len(loader)
    optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, desc=desc, leave=False, delay=5, dynamic_ncols=True)
    for i, batch in enumerate(bar if timer is None else timer.iterate(bar, "train_data")):
        images, target = to_device(batch, device, channels_last, key)
        images, target, teacher = _teacher_and_mix(batch, device, images, target, mix)
        step_now = (i + 1) % accumulate == 0 or i + 1 == n_batches
        sync = nullcontext() if step_now or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, amp_dtype):
                outputs = model(images)
            loss = compute_loss(loss_fn, outputs, target, teacher)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"epoch {epoch}, batch {i}: loss is {loss.item()} (images {', '.join(batch['image_id'][:4])}); "
                    "training stopped, last.pt and best.pt on disk are from the last good epoch. Lower the learning "
                    "rate, add gradient clipping, or use amp='bf16'/'off'."
                )
            backward_loss = loss / accumulate
            (scaler.scale(backward_loss) if scaler is not None else backward_loss).backward()
        if step_now:
            if clip_grad_norm:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(unwrap(model))
        totals["loss"] = totals.get("loss", 0.0) + loss.item()
        for name, value in getattr(loss_fn, "last_values", {}).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    bar.close()
    steps = math.ceil(n_batches / accumulate)
    out = {name: value / max(n_batches, 1) for name, value in totals.items() if name != "grad_norm"}
    if "grad_norm" in totals:
        out["grad_norm"] = totals["grad_norm"] / max(steps, 1)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module | None,
    preset: Preset,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    desc: str = "valid",
) -> dict[str, float]:
    """Validation loss and scores (``kitlib.scoring.Scorer``) over ``loader``, summed over DDP ranks.

    Args:
        model: any mode; it is put in eval mode and restored afterwards.
        loader: batches with targets; under DDP each rank holds a shard (``make_loader(train=False)``).
        loss_fn: as in training (None: no ``loss`` entry).
        preset, device, amp_dtype, channels_last: as ``train_one_epoch``.
    Returns:
        ``{"loss": mean over images, <Scorer.result()>}``, the same on every rank.
    """
    key = _target_key(preset)
    was_training = model.training
    model.eval()
    scorer = Scorer(preset)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    try:
        for batch in progress(loader, desc=desc, leave=False, delay=5, dynamic_ncols=True):
            images, target = to_device(batch, device, channels_last, key)
            with autocast(device, amp_dtype):
                outputs = model(images)
            logits, _ = split_outputs(outputs)
            if loss_fn is not None:
                loss_sum += torch.tensor([compute_loss(loss_fn, outputs, target).item() * len(images), len(images)])
            scorer.update(_decode_logits(logits, preset), target)
    finally:
        model.train(was_training)
    loss_sum = all_reduce(loss_sum)
    result = scorer.result(all_reduce(torch.from_numpy(scorer.state())).numpy())
    if loss_fn is not None:
        result = {"loss": float(loss_sum[0] / max(loss_sum[1], 1)), **result}
    return result


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    activation: str = "sigmoid",
    out_size: tuple[int, int] | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta: str = "none",
    desc: str = "predict",
    tta_weight: float | None = None,
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Probabilities batch by batch, so a whole test set is never held in memory.

    Args:
        model: returns logits or ``(mask_logits, cls_logits)``; eval mode during the pass, restored afterwards.
        loader: batches with ``image_id`` and ``image``.
        device, amp_dtype, channels_last: as ``train_one_epoch``.
        activation: ``Preset.activation``: "sigmoid" (binary, multilabel, presence), "softmax" (multiclass,
            classification) or "none".
        out_size: (H, W) to resize segmentation probabilities to (bilinear, ``align_corners=False``), e.g. the
            competition's scoring resolution; None keeps the model's.
        tta: a ``kitlib.tta`` name ("none", "hflip", "vflip", "flips", "d4"): ``kitlib.tta.predict_tta`` averages the
            probabilities over the augmented views after undoing each augmentation; crops and rescales
            ("five_crop", "multiscale", ...) for classifiers.
        tta_weight: ``predict_tta``'s ``plain_weight``: the plain view's weight against the mean of the others; None
            weighs every view the same.
    Yields:
        ``(image_ids, probs, cls_probs)``: probs (B, K, H, W) or (B, C) float32 on the CPU in [0, 1]; cls_probs
        (B, K) from a classification head (sigmoid), else None.
    """
    was_training = model.training
    try:
        for batch in progress(loader, desc=desc, leave=False, delay=5, dynamic_ncols=True):
            images, _ = to_device(batch, device, channels_last, None)
            with autocast(device, amp_dtype):
                out = predict_tta(model, images, tta, activation, cls_activation="sigmoid", plain_weight=tta_weight)
            probs, cls_probs = out if isinstance(out, tuple) else (out, None)
            if out_size is not None and probs.dim() == 4 and tuple(probs.shape[-2:]) != tuple(out_size):
                probs = F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False)
            yield list(batch["image_id"]), probs.clamp_(0, 1).cpu(), None if cls_probs is None else cls_probs.cpu()
    finally:
        model.train(was_training)


@dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
        history: one row per epoch: epoch (0-based), train_* losses, valid_* loss and scores, lr_<group>, time_s.
        best_score: best value of the monitored score (``monitor``), NaN if none was finite.
        best_epoch: the epoch whose weights are in ``best.pt`` (-1 if none).
        monitor: the history column that picked ``best.pt`` ("valid_dice", "valid_loss", ...).
        resumed_from: the epoch after which a previous run's ``last.pt`` was loaded, else None.
        stopped_early: whether ``patience`` ended the run.
        paths: ``last``, ``best`` and ``history`` files.
        averaged: with weight averaging (``cfg.swa_epochs`` / ``cfg.average_top_k``), the method and the averaged
            weights' validation scores (they are ``best.pt``; the best epoch's weights are ``best_epoch.pt``).
    """

    history: pd.DataFrame
    best_score: float
    best_epoch: int
    monitor: str
    resumed_from: int | None = None
    stopped_early: bool = False
    paths: dict[str, Path] = field(default_factory=dict)
    averaged: dict[str, Any] | None = None


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    valid_loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: Any,
    out_dir: str | os.PathLike,
    model_config: Mapping[str, Any],
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
    stop_after_epoch: int | None = None,
    resume: bool = True,
    on_epoch: Callable[[list[dict[str, float]]], None] | None = None,
    timer: PhaseTimer | None = None,
) -> FitResult:
    """Train for ``cfg.n_epochs``, validating every epoch (or the last valid_last), with atomic checkpoints, history.

    Files in ``out_dir`` (rank 0 writes them; ``kitlib.checkpoint``):

    - ``last.pt`` after every epoch: the model and all that continues the run (``checkpoint.save_last``);
    - ``best.pt`` when the monitored score improves: the evaluated weights (the EMA's when ``cfg.ema_decay``) with
      ``epoch`` and ``score``;
    - ``history.csv``, rewritten after every epoch.

    Resuming: with ``resume`` and a ``last.pt`` of the same ``run_id`` in ``out_dir``, training continues after its
    epoch and ends with the same weights, history and OOF as an uninterrupted run (each epoch is reseeded from
    ``(cfg.seed, epoch)``; tested on CPU). A finished run returns at once. A ``last.pt`` of another ``run_id`` is an
    error rather than silently mixed in.

    Args:
        model: on ``device`` (and in channels_last when asked), possibly DDP-wrapped.
        train_loader, valid_loader: from ``kitlib.runtime.make_loader``.
        loss_fn: see ``compute_loss``.
        optimizer: e.g. ``kitlib.optim.make_optimizer``; its groups' names label the ``lr_<name>`` history columns.
        cfg: the run's ``kitlib.stages.TrainConfig``; read: ``model_preset`` (targets, metric), ``n_epochs``, ``amp``
            (``resolve_amp``; fp16 adds a GradScaler), ``accumulate``, ``clip_grad_norm``, ``channels_last``,
            ``ema_decay`` (0: none; validation and ``best.pt`` use the EMA weights), ``monitor`` (the history column
            that picks ``best.pt``; "" for ``valid_<metric>``; ``*loss`` and ``*error`` are minimised), ``patience``
            (epochs without improvement before stopping; 0: never), ``seed``, ``swa_epochs`` / ``average_top_k``
            (weight averaging at the end, ``kitlib.averaging``: the averaged weights become ``best.pt``, the best
            epoch's ``best_epoch.pt``), and the batch mix of classification runs (``mix``, ``mix_prob``,
            ``mix_alpha``; ``mix_epochs``: the first epochs mix, the rest train unmixed; validation is never mixed),
            ``valid_last`` (only the last N epochs validated, valid_* NaN before; 0, patience, plateau: every epoch).
        out_dir: the fold's artifact folder.
        model_config: ``create_model`` / ``create_classifier`` keywords, saved with the weights.
        device: the training device.
        scheduler: ``kitlib.optim.make_scheduler``'s: stepped per optimiser step, or per epoch with the monitored
            score for "plateau".
        run_id: fingerprint of the configuration (``TrainConfig.run_id``, with the folds).
        extra: more entries saved in both checkpoints (``fold``, ``preset`` ...).
        stop_after_epoch: end the process's training after this epoch as if killed (tests of resuming).
        resume: continue from ``last.pt`` when there is one.
        on_epoch: called on rank 0 after each epoch's ``history.csv`` is written, with the history so far (its rows;
            after a resume the restored ones first): ``kitlib.tracking.Tracker.log_history``.
        timer: receives the phases "train_steps" (forward, backward, optimiser), "train_data", "validation" and
            "checkpoints" (``last.pt``, ``best.pt``, ``history.csv``).
    Returns:
        ``FitResult``.
    Raises:
        NonFiniteLossError: a NaN/inf training loss.
        ValueError: fewer than one epoch; a ``last.pt`` of another run; an unknown ``monitor``.
    """
    epochs = int(cfg.n_epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    amp_dtype = resolve_amp(cfg.amp, device)
    monitor, minimise = cfg.monitor_column, cfg.minimise
    run = _Run(
        model=model, train_loader=train_loader, valid_loader=valid_loader, loss_fn=loss_fn, optimizer=optimizer,
        scheduler=scheduler, cfg=cfg, device=device, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
        ema=make_ema(model, cfg.ema_decay) if cfg.ema_decay else None,
        mix=_batch_mix(cfg) if cfg.mix_epochs else None,
        average=WeightAverage(model, out_dir, epochs, min(cfg.swa_epochs, epochs), min(cfg.average_top_k, epochs),
                              minimise),  # a smoke run averages what it has
        timer=timer or PhaseTimer(),
    )  # fmt: skip
    out_dir, info = Path(out_dir), dist_info()
    paths = {"last": out_dir / "last.pt", "best": out_dir / "best.pt", "history": out_dir / "history.csv"}
    saved = dict(model_config=model_config, run_id=run_id, monitor=monitor, extra=dict(extra or {}))
    state = (checkpoint.resume(paths["last"], run_id, model, optimizer, scheduler, run.scaler, run.ema, run.average)
             if resume else None)  # fmt: skip
    resumed_from = None if state is None else state.epoch + 1
    state = state or checkpoint.TrainingState()
    stopped_early = False
    for epoch in range(epochs if state.finished else state.epoch + 1, epochs):
        row = _run_epoch(run, epoch, epochs)
        improved = state.record(row, monitor, minimise)
        run.average.after_epoch(model, epoch, float(row[monitor]), write=info.is_main)
        if steps_per_epoch_only(scheduler):
            scheduler.step(row[monitor])
        stop = bool(cfg.patience) and state.stale >= cfg.patience
        state.finished = stop or epoch + 1 == epochs
        if info.is_main:
            with run.timer.phase("checkpoints"):
                if improved:
                    checkpoint.save_best(paths["best"], run.eval_model, model_config, epoch, state.best_score,
                                         monitor, run_id, saved["extra"])  # fmt: skip
                checkpoint.save_last(paths["last"], model, model_config, state, optimizer=optimizer,
                                     scheduler=scheduler, scaler=run.scaler, ema=run.ema, average=run.average,
                                     run_id=run_id, monitor=monitor, extra=saved["extra"])  # fmt: skip
                write_csv(paths["history"], pd.DataFrame(state.history), index=False)
            _epoch_line(row, monitor, improved)
            if on_epoch is not None:
                on_epoch(state.history)
        barrier()
        if stop:
            stopped_early = True
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch and not state.finished:
            break
    averaged = _finish_average(run, state, paths, saved) if run.average.active and state.finished else None
    return FitResult(
        history=pd.DataFrame(state.history), best_score=state.best_score, best_epoch=state.best_epoch,
        monitor=monitor, resumed_from=resumed_from, stopped_early=stopped_early, paths=paths, averaged=averaged,
    )  # fmt: skip


@dataclass
class _Run:
    """What every epoch of one ``fit`` uses."""

    model: nn.Module
    train_loader: DataLoader
    valid_loader: DataLoader
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: Any
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: Any
    ema: Any
    mix: Any
    average: WeightAverage
    timer: PhaseTimer

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved as ``best.pt``: the EMA of the weights when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _run_epoch(run: _Run, epoch: int, epochs: int) -> dict[str, float]:
    """Train and validate one epoch; its history row."""
    cfg, started = run.cfg, time.perf_counter()
    _reseed(run.train_loader, cfg.seed, epoch, dist_info().rank)
    groups = run.optimizer.param_groups
    lrs = {f"lr_{g.get('name', str(i))}": g["lr"] for i, g in enumerate(groups)}
    per_step = None if steps_per_epoch_only(run.scheduler) else run.scheduler
    with run.timer.phase("train_steps"):
        train = train_one_epoch(
            run.model, run.train_loader, run.loss_fn, run.optimizer, cfg.model_preset, run.device, scheduler=per_step,
            scaler=run.scaler, amp_dtype=run.amp_dtype, accumulate=cfg.accumulate, clip_grad_norm=cfg.clip_grad_norm,
            ema=run.ema, channels_last=cfg.channels_last, epoch=epoch, desc=f"epoch {epoch + 1}/{epochs}",
            mix=run.mix if epoch < cfg.mix_epochs else None, timer=run.timer,
        )  # fmt: skip
    valid = {}
    with run.timer.phase("validation"):
        if epoch >= epochs - (cfg.valid_last or epochs) or cfg.patience or steps_per_epoch_only(run.scheduler):
            valid = evaluate(run.eval_model, run.valid_loader, run.loss_fn, cfg.model_preset, run.device,
                             run.amp_dtype, cfg.channels_last)  # fmt: skip
    row = {"epoch": epoch, **{f"train_{k}": v for k, v in _mean_over_ranks(train).items()}}
    row.update({f"valid_{k}": v for k, v in valid.items()}, **lrs, time_s=round(time.perf_counter() - started, 3))
    if not valid and cfg.monitor_column.startswith("valid_"):  # not validated (valid_last): never the best epoch
        row[cfg.monitor_column] = math.nan
    return row


def _finish_average(run: _Run, state: Any, paths: dict[str, Path], saved: dict[str, Any]) -> dict[str, Any]:
    """The averaged weights (``kitlib.averaging``), their BatchNorm statistics recomputed, validated, and saved as
    ``best.pt`` (what OOF and test predictions load); the best single epoch's weights move to ``best_epoch.pt``."""
    cfg, info = run.cfg, dist_info()
    averaged = run.average.averaged(run.model).to(run.device)
    _reseed(run.train_loader, cfg.seed, int(cfg.n_epochs), info.rank)
    recompute_bn(averaged, run.train_loader, run.device, cfg.channels_last)
    valid = evaluate(averaged, run.valid_loader, run.loss_fn, cfg.model_preset, run.device, run.amp_dtype,
                     cfg.channels_last)  # fmt: skip
    scores = {f"valid_{k}": v for k, v in valid.items()}
    if info.is_main:
        best_epoch = paths["best"].with_name("best_epoch.pt")
        if paths["best"].is_file() and not best_epoch.is_file():
            os.replace(paths["best"], best_epoch)
        extra = {**saved["extra"], "averaged": run.average.description, "best_epoch": state.best_epoch}
        checkpoint.save_best(paths["best"], averaged, saved["model_config"], -1, float(scores[saved["monitor"]]),
                             saved["monitor"], saved["run_id"], extra)  # fmt: skip
        from tqdm import tqdm

        shown = "  ".join(f"{k} {v:.4g}" for k, v in scores.items())
        tqdm.write(f"averaged ({run.average.description}): {shown}", file=sys.stderr)
    barrier()
    return {"method": run.average.description, **scores}


def _batch_mix(cfg) -> BatchMix | SegmentationMix:
    """The run's batch mix: ``BatchMix`` of labels (classification) or ``SegmentationMix`` of masks."""
    task = cfg.model_preset
    if task.is_segmentation:
        return SegmentationMix(cfg.mix, task.task == "multiclass", cfg.mix_prob, cfg.mix_alpha,
                               task.class_indices(cfg.mix_classes or []))  # fmt: skip
    return make_mix(cfg.mix, task.num_classes, cfg.mix_prob, cfg.mix_alpha)


def _reseed(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Reseed everything an epoch draws from (random, numpy, torch, the transform, the sampler) from (seed, epoch)."""
    seed_e = epoch_seed(seed, epoch)
    seed_everything(seed_e + rank)
    seed_transform(getattr(loader.dataset, "transform", None), seed_e + rank)
    if loader.generator is not None:
        loader.generator.manual_seed(seed_e)


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    names = sorted(values)
    reduced = all_reduce(torch.tensor([values[n] for n in names], dtype=torch.float64)) / dist.get_world_size()
    return dict(zip(names, reduced.tolist(), strict=True))


def _epoch_line(row: Mapping[str, float], monitor: str, improved: bool) -> None:
    """One line per epoch on stderr, readable in papermill output and CI logs."""
    from tqdm import tqdm

    shown = [f"epoch {int(row['epoch']) + 1}"]
    for name, value in row.items():
        if name.startswith(("train_loss", "valid_")) or name == "time_s":
            shown.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    tqdm.write("  ".join(shown) + ("  *" if improved else ""), file=sys.stderr)
