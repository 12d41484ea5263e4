"""The training loop: ``train_one_epoch``, ``evaluate``, ``predict`` and ``fit``, which ties them together.

Written here rather than taken from a trainer library because the loop is the core of the kit and must do exactly
what the winning solutions did, visibly: AdamW with separate encoder / decoder learning rates (Understanding Clouds
1st place), OneCycle or cosine-with-warmup stepped per optimiser step, gradient accumulation and clipping, mixed
precision on CUDA (bf16, or fp16 with a GradScaler; off on CPU), channels_last, an EMA of the weights, atomic
``last.pt`` / ``best.pt`` checkpoints that resume to the same result, a hard stop on a NaN loss, and DDP under
``torchrun``.

Determinism: every epoch reseeds torch, numpy, ``random``, the sampler and the albumentations pipeline from
``(seed, epoch)``, so epoch e draws the same batches and augmentations whether the run started at epoch 0 or resumed
from ``last.pt``; on CPU two runs with the same seed give identical weights and OOF bytes.

Batches are dicts (``{"image_id", "image", "mask" | "label"}``, ``kitlib.data``); models return logits, or
``(mask_logits, cls_logits)`` with a classification head (``kitlib.models.create_model(aux_head=True)``).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from kitlib._private import progress
from kitlib.config import write_csv
from kitlib.losses import SegClsLoss
from kitlib.metrics import ConfusionMatrix, dice_per_image_class
from kitlib.models import param_groups, save_model
from kitlib.presets import Preset, get_preset

__all__ = [
    "AMP_MODES",
    "SCHEDULERS",
    "CHECKPOINT_KIND",
    "NonFiniteLossError",
    "DistInfo",
    "FitResult",
    "Scorer",
    "activation_for",
    "barrier",
    "compute_loss",
    "dist_info",
    "evaluate",
    "fit",
    "init_distributed",
    "make_ema",
    "make_loader",
    "make_optimizer",
    "make_scheduler",
    "predict",
    "resolve_amp",
    "seed_everything",
    "seed_worker",
    "split_outputs",
    "train_one_epoch",
    "unwrap",
    "write_predictions",
]

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "off")
SCHEDULERS = ("onecycle", "cosine", "constant")
CHECKPOINT_KIND = "kitlib.training_state"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the checkpoints on disk are those of the last good epoch."""


# ---------------------------------------------------------------------------------------------------------------
# Seeding, devices, distributed
# ---------------------------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % 2**31


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every CUDA device).

    Args:
        seed: any int; reduced modulo 2**32 for numpy.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state is what third-party code draws from
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive ``random``, numpy and the dataset's albumentations seeds from the
    worker's torch seed, which the loader draws from its (seeded) generator, so workers differ from each other and
    runs repeat. albumentations 2.0 pipelines carry their own generator (``Compose.set_random_seed``), which a
    forked worker would otherwise copy unchanged into every worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    info = torch.utils.data.get_worker_info()
    _seed_transform(getattr(info.dataset, "transform", None) if info is not None else None, seed)


def _seed_transform(transform: Any, seed: int) -> None:
    if transform is not None and callable(getattr(transform, "set_random_seed", None)):
        transform.set_random_seed(int(seed))


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """The rank, world size and local rank that ``torchrun`` put in the environment (0, 1, 0 otherwise)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the ``torchrun`` process group when there is one, and pick this process's device.

    Args:
        device: "auto" (``cuda:<local_rank>`` when CUDA is available, else CPU), "cpu", "cuda" or "cuda:N".
    Returns:
        ``(DistInfo, torch.device)``. With WORLD_SIZE > 1 the default process group is initialised (NCCL on CUDA,
        gloo on CPU) unless it already is.
    Raises:
        RuntimeError: "cuda" asked for but not available.
    """
    info = dist_info()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / ``torch.compile`` / AveragedModel wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier() -> None:
    """Wait for every DDP rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _ShardSampler(Sampler[int]):
    """Rows rank, rank + world, ... in order: every row once over all ranks, no padding (evaluation, OOF)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    info: DistInfo | None = None,
    drop_last: bool | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)``, sharded over DDP ranks.

    Training loaders shuffle with a ``DistributedSampler`` (also in a single process: world size 1), whose
    permutation is ``seed + epoch``; ``train_one_epoch`` calls its ``set_epoch``. Evaluation loaders give rank r the
    rows r, r + world, ... in order, each row exactly once.

    Args:
        dataset: a ``kitlib.data`` dataset (items are dicts).
        batch_size: images per batch per process.
        train: shuffle and (by default) drop the last incomplete batch, so BatchNorm never sees a batch of one.
        seed: shuffling seed.
        num_workers: loader processes; their ``random``/numpy/albumentations seeds come from ``seed_worker``.
        info: DDP position (``dist_info()`` by default).
        drop_last: override of the default (``train and len(dataset) > batch_size``).
        pin_memory: pin host memory (CUDA).
    """
    info = info or dist_info()
    if drop_last is None:
        drop_last = train and len(dataset) // max(info.world_size, 1) > batch_size
    if train:
        sampler: Sampler = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
        )
    else:
        sampler = _ShardSampler(len(dataset), info.rank, info.world_size)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        worker_init_fn=seed_worker if num_workers else None,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Precision, optimiser, scheduler, EMA
# ---------------------------------------------------------------------------------------------------------------


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``.

    Args:
        amp: "auto" (bf16 on a CUDA device that supports it, else fp16 on CUDA; off on CPU), "bf16", "fp16", "off".
            "bf16" on a CPU autocasts too: ``benchmarks/bench_train.py`` measured it 1.67x faster than fp32 on a
            2-core x86 CPU, but the numbers differ from fp32, so "auto" keeps CPUs at fp32 (bitwise resumable runs).
    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None (full fp32).
    Raises:
        ValueError: unknown mode; "fp16" on a CPU device (it needs a GradScaler, which CPUs lack).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp {amp!r}; options: {list(AMP_MODES)}")
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        if amp == "bf16":
            return torch.bfloat16
        raise ValueError(f"amp={amp!r} needs a CUDA device; this run is on {device} (use 'bf16', 'auto' or 'off')")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def make_optimizer(
    model: nn.Module, encoder_lr: float, decoder_lr: float, weight_decay: float = 0.01
) -> torch.optim.AdamW:
    """AdamW over ``kitlib.models.param_groups``: encoder at ``encoder_lr``, decoder and heads at ``decoder_lr``,
    no decay on biases and norms (Understanding Clouds 1st place: 2.5e-5 / 2.5e-4, weight decay 0.01)."""
    return torch.optim.AdamW(param_groups(unwrap(model), encoder_lr, decoder_lr, weight_decay))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-optimiser-step learning-rate schedule whose peak is each group's ``lr``.

    Args:
        optimizer: its groups' ``lr`` are the peak rates (encoder and decoder keep their ratio).
        name: "onecycle" (``OneCycleLR``, cosine annealing; Smith & Topin 2017, the Understanding Clouds 1st
            place's schedule), "cosine" (linear warmup over ``warmup_steps`` then cosine decay to
            ``min_lr_ratio`` x peak; Loshchilov & Hutter 2017, SGDR without restarts), "constant" (None).
        total_steps: optimiser steps of the whole run (epochs x steps per epoch).
        warmup_steps: linear warmup steps of "cosine".
        pct_start, div_factor, final_div_factor: ``OneCycleLR``'s (start at peak / 25, end at start / 1e4).
        min_lr_ratio: final rate of "cosine" as a fraction of the peak, in [0, 1].
    Returns:
        The scheduler (call ``step()`` after every optimiser step), or None for "constant".
    Raises:
        ValueError: unknown name; total_steps < 1; warmup_steps outside [0, total_steps).
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; options: {list(SCHEDULERS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if name == "constant":
        return None
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}), got {warmup_steps}")
    decay_steps = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = min(step - warmup_steps, decay_steps) / decay_steps
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights and buffers, updated after every optimiser step
    (``torch.optim.swa_utils``; Polyak averaging as in timm's ModelEmaV3). Evaluate and save ``ema.module``.

    Args:
        model: the (unwrapped) model being trained.
        decay: in (0, 1), e.g. 0.999; the average moves by ``1 - decay`` towards the weights per step.
    Raises:
        ValueError: decay outside (0, 1).
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# ---------------------------------------------------------------------------------------------------------------
# Outputs, losses, scores
# ---------------------------------------------------------------------------------------------------------------


def split_outputs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, cls_logits)`` from what a model returns: logits alone, or a ``(mask_logits, cls_logits)`` pair."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], outputs[1]
    return outputs, None


def activation_for(preset: str | Preset) -> str:
    """ "sigmoid" for binary and multilabel presets (independent masks), "softmax" for multiclass segmentation and
    classification."""
    return "sigmoid" if get_preset(preset).task in ("binary", "multilabel") else "softmax"


def _target_key(preset: Preset) -> str:
    return "mask" if preset.is_segmentation else "label"


def compute_loss(loss_fn: nn.Module, outputs: Any, target: torch.Tensor) -> torch.Tensor:
    """The loss of one batch: ``loss_fn(mask_logits, cls_logits, masks)`` for a ``SegClsLoss`` (classification
    head), else ``loss_fn(logits, target)`` (a head's logits, if any, are then ignored)."""
    logits, cls_logits = split_outputs(outputs)
    if isinstance(loss_fn, SegClsLoss):
        return loss_fn(logits.float(), None if cls_logits is None else cls_logits.float(), target)
    return loss_fn(logits.float(), target)


class Scorer:
    """Validation scores accumulated batch by batch as sums, so DDP ranks add them up exactly.

    - binary / multilabel: ``dice`` (mean over (image, class) pairs at probability 0.5, the preset's rule for
      both-empty pairs) and ``pixel_error`` (fraction of wrong pixels over all classes); a presence classifier's
      (N, K) logits count as one-pixel masks, so ``pixel_error`` is 1 - its accuracy over (image, class) pairs and
      ``dice`` its accuracy when both-empty pairs score 1;
    - multiclass: ``miou`` (confusion matrix over the dataset, background included) and ``pixel_accuracy``;
    - classification: ``accuracy``.

    Scores are at the training resolution; the notebooks score OOF at the competition's resolution.
    """

    def __init__(self, preset: str | Preset):
        self.preset = get_preset(preset)
        task = self.preset.task
        if task == "multiclass":
            self.cm = ConfusionMatrix(self.preset.num_classes)
        self.sums = torch.zeros(4, dtype=torch.float64)  # task-specific numerators / denominators

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``logits`` (N, K, H, W) / (N, C), ``target`` as the dataset gives it."""
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        task = self.preset.task
        if task in ("binary", "multilabel"):
            if logits.dim() == 2:  # a presence classifier (N, K): each (image, class) is a one-pixel mask
                logits, target = logits[..., None, None], target[..., None, None]
            pred = (logits > 0).numpy()
            true = target.numpy() > 0.5
            dice = dice_per_image_class(pred, true, empty_score=self.preset.dice_empty_score)
            valid = ~np.isnan(dice)
            wrong = np.count_nonzero(pred != true)
            self.sums += torch.tensor([dice[valid].sum(), valid.sum(), wrong, true.size], dtype=torch.float64)
        elif task == "multiclass":
            self.cm.update(logits.argmax(1).numpy(), target.numpy())
        else:
            correct = (logits.argmax(1) == target).sum().item()
            self.sums += torch.tensor([correct, target.numel(), 0, 0], dtype=torch.float64)

    def state(self) -> torch.Tensor:
        if self.preset.task == "multiclass":
            return torch.from_numpy(self.cm.hist.astype(np.float64)).flatten()
        return self.sums

    def result(self, state: torch.Tensor | None = None) -> dict[str, float]:
        """The scores from ``state`` (e.g. all-reduced over ranks) or this process's sums."""
        s = (self.state() if state is None else state).numpy()
        task = self.preset.task
        if task in ("binary", "multilabel"):
            return {"dice": s[0] / s[1] if s[1] else float("nan"), "pixel_error": s[2] / s[3] if s[3] else float("nan")}
        if task == "multiclass":
            cm = ConfusionMatrix(self.preset.num_classes)
            cm.hist = s.reshape(cm.hist.shape).astype(np.int64)
            return {"miou": float(cm.miou()), "pixel_accuracy": float(cm.pixel_accuracy())}
        return {"accuracy": s[0] / s[1] if s[1] else float("nan")}


# ---------------------------------------------------------------------------------------------------------------
# The loops
# ---------------------------------------------------------------------------------------------------------------


def _to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool, key: str | None):
    images = batch["image"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = batch[key].to(device, non_blocking=True) if key is not None and key in batch else None
    return images, target


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    preset: str | Preset,
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
) -> dict[str, float]:
    """One pass over ``loader`` with optimiser steps every ``accumulate`` batches.

    Args:
        model: returns logits or ``(mask_logits, cls_logits)``; may be wrapped in DDP (gradients of the batches
            between steps are then accumulated without an all-reduce, ``no_sync``).
        loader: batches ``{"image", "mask" | "label"}``; a ``DistributedSampler`` gets ``set_epoch(epoch)``.
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
    Returns:
        ``{"loss": mean over batches, "<term>": mean of each loss term, "grad_norm": mean pre-clip norm (when
        clipping)}`` of this process.
    Raises:
        NonFiniteLossError: a NaN/inf loss (the message names the epoch, batch and image ids); nothing is stepped.
        ValueError: accumulate < 1.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    preset = get_preset(preset)
    key = _target_key(preset)
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)
    model.train()
    totals: dict[str, float] = {}
    n_batches = len(loader)
    optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, desc=desc, leave=False, delay=5, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        images, target = _to_device(batch, device, channels_last, key)
        step_now = (i + 1) % accumulate == 0 or i + 1 == n_batches
        sync = nullcontext() if step_now or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with _autocast(device, amp_dtype):
                outputs = model(images)
            loss = compute_loss(loss_fn, outputs, target)
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
    preset: str | Preset,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    desc: str = "valid",
) -> dict[str, float]:
    """Validation loss and scores (``Scorer``) over ``loader``, summed over DDP ranks.

    Args:
        model: any mode; it is put in eval mode and restored afterwards.
        loader: batches with targets; under DDP each rank holds a shard (``make_loader(train=False)``).
        loss_fn: as in training (None: no ``loss`` entry).
        preset, device, amp_dtype, channels_last: as ``train_one_epoch``.
    Returns:
        ``{"loss": mean over images, <Scorer.result()>}``, the same on every rank.
    """
    preset = get_preset(preset)
    key = _target_key(preset)
    was_training = model.training
    model.eval()
    scorer = Scorer(preset)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    try:
        for batch in progress(loader, desc=desc, leave=False, delay=5, dynamic_ncols=True):
            images, target = _to_device(batch, device, channels_last, key)
            with _autocast(device, amp_dtype):
                outputs = model(images)
            logits, _ = split_outputs(outputs)
            if loss_fn is not None:
                loss_sum += torch.tensor([compute_loss(loss_fn, outputs, target).item() * len(images), len(images)])
            scorer.update(logits, target)
    finally:
        model.train(was_training)
    loss_sum = _all_reduce(loss_sum)
    result = scorer.result(_all_reduce(scorer.state()))
    if loss_fn is not None:
        result = {"loss": float(loss_sum[0] / max(loss_sum[1], 1)), **result}
    return result


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "none":
        return logits
    raise ValueError(f"unknown activation {activation!r}; options: ['sigmoid', 'softmax', 'none']")


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
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Probabilities batch by batch, so a whole test set is never held in memory.

    Args:
        model: returns logits or ``(mask_logits, cls_logits)``; eval mode during the pass, restored afterwards.
        loader: batches with ``image_id`` and ``image``.
        device, amp_dtype, channels_last: as ``train_one_epoch``.
        activation: "sigmoid" (binary, multilabel), "softmax" (multiclass, classification) or "none".
        out_size: (H, W) to resize segmentation probabilities to (bilinear, ``align_corners=False``), e.g. the
            competition's scoring resolution; None keeps the model's.
        tta: a ``kitlib.tta`` name ("none", "hflip", "vflip", "flips", "d4"): probabilities are averaged over the
            augmented views after undoing each augmentation.
    Yields:
        ``(image_ids, probs, cls_probs)``: probs (B, K, H, W) or (B, C) float32 on the CPU in [0, 1]; cls_probs
        (B, K) from a classification head (sigmoid), else None.
    """
    from kitlib.tta import tta_pairs

    pairs = tta_pairs(tta)
    was_training = model.training
    model.eval()
    try:
        for batch in progress(loader, desc=desc, leave=False, delay=5, dynamic_ncols=True):
            images, _ = _to_device(batch, device, channels_last, None)
            probs_sum, cls_sum = None, None
            for augment, deaugment in pairs:
                with _autocast(device, amp_dtype):
                    outputs = model(augment(images))
                logits, cls_logits = split_outputs(outputs)
                probs = _activate(logits.float(), activation)
                if probs.dim() == 4:
                    probs = deaugment(probs)
                probs_sum = probs if probs_sum is None else probs_sum + probs
                if cls_logits is not None:
                    cls_probs = torch.sigmoid(cls_logits.float())
                    cls_sum = cls_probs if cls_sum is None else cls_sum + cls_probs
            probs = probs_sum / len(pairs)
            if out_size is not None and probs.dim() == 4 and tuple(probs.shape[-2:]) != tuple(out_size):
                probs = F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False)
            cls_probs = None if cls_sum is None else (cls_sum / len(pairs)).cpu()
            yield list(batch["image_id"]), probs.clamp_(0, 1).cpu(), cls_probs
    finally:
        model.train(was_training)


def _quantize(probs: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return (probs * 255.0).round_().to(torch.uint8).numpy()
    return probs.numpy().astype(dtype)


def write_predictions(
    path: str | os.PathLike,
    batches: Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]],
    image_ids: list[str],
    dtype: str = "uint8",
    cls_path: str | os.PathLike | None = None,
) -> Path:
    """Write ``predict``'s batches into one ``.npy`` (rows in ``image_ids`` order) without holding them in memory.

    The array is a memory-mapped ``.npy`` written under a temporary name and renamed at the end (atomic). Under DDP
    every rank calls this with the same ``path`` and its own shard of batches: rank 0 creates the file, each rank
    writes its rows, and rank 0 renames it once all have finished.

    Args:
        path: destination, e.g. ``artifacts/<exp>/fold<k>/oof_probs.npy``.
        batches: ``predict(...)`` of a loader over the rows ``image_ids``.
        image_ids: every row's id in file order (the loader's dataset order).
        dtype: "uint8" (round(p x 255), 4x smaller; the Clouds OOF is 5546 x 4 x 350 x 525 = 4 GB as uint8) or
            "float16" / "float32".
        cls_path: where to write a classification head's probabilities (N, K) float32, when the model has one.
    Returns:
        ``path``.
    Raises:
        KeyError: a batch id that is not in ``image_ids``.
        ValueError: a row that no batch filled (the message names the ids).
    """
    np_dtype = np.dtype(dtype)
    path = Path(path)
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    info = dist_info()
    tmp = path.with_name(f".{path.name}.partial.npy")
    cls_tmp = None if cls_path is None else Path(cls_path).with_name(f".{Path(cls_path).name}.partial.npy")
    first = next(batches, None)
    if first is None:
        raise ValueError(f"{path}: no batches to write")
    shape = (len(image_ids), *first[1].shape[1:])
    has_cls = first[2] is not None and cls_tmp is not None
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=shape).flush()
        if has_cls:
            np.lib.format.open_memmap(cls_tmp, mode="w+", dtype=np.float32, shape=(len(image_ids), first[2].shape[1]))
    barrier()
    out = np.load(tmp, mmap_mode="r+")
    cls_out = np.load(cls_tmp, mmap_mode="r+") if has_cls else None
    filled = np.zeros(len(image_ids), dtype=np.int64)
    for ids, probs, cls_probs in itertools.chain([first], batches):
        try:
            idx = np.array([position[i] for i in ids])
        except KeyError as e:
            raise KeyError(f"{path}: image {e.args[0]!r} is not among the rows to write") from None
        out[idx] = _quantize(probs, np_dtype)
        if cls_out is not None and cls_probs is not None:
            cls_out[idx] = cls_probs.numpy()
        filled[idx] = 1
    out.flush()
    if cls_out is not None:
        cls_out.flush()
    out = cls_out = None  # close the memory maps before the rename
    filled = _all_reduce(torch.from_numpy(filled)).numpy()
    if info.is_main:
        missing = [image_ids[i] for i in np.flatnonzero(filled == 0)]
        if missing:
            raise ValueError(f"{path}: {len(missing)} rows were not predicted: {missing[:5]}")
        os.replace(tmp, path)
        if has_cls:
            os.replace(cls_tmp, cls_path)
    barrier()
    return path


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and fit
# ---------------------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    key = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy"]["pos"], 0, 0.0))  # noqa: NPY002
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    """

    history: pd.DataFrame
    best_score: float
    best_epoch: int
    monitor: str
    resumed_from: int | None = None
    stopped_early: bool = False
    paths: dict[str, Path] = field(default_factory=dict)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    valid_loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    preset: str | Preset,
    out_dir: str | os.PathLike,
    model_config: Mapping[str, Any],
    epochs: int,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp: str = "auto",
    accumulate: int = 1,
    clip_grad_norm: float = 0.0,
    ema_decay: float = 0.0,
    channels_last: bool = False,
    monitor: str | None = None,
    patience: int = 0,
    seed: int = 0,
    resume: bool = True,
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Train for ``epochs``, validating every epoch, with atomic ``last.pt`` / ``best.pt`` and ``history.csv``.

    Files in ``out_dir`` (rank 0 writes them):

    - ``last.pt`` after every epoch: model (``kitlib.models.save_model`` format, so ``load_model`` reads it),
      optimizer, scheduler, scaler, EMA, epoch, best score, history and RNG states; ``checkpoint`` is
      ``CHECKPOINT_KIND`` and ``run_id`` identifies the configuration.
    - ``best.pt`` when the monitored score improves: the evaluated weights (the EMA's when ``ema_decay``) with
      ``epoch`` and ``score``.
    - ``history.csv``, rewritten after every epoch.

    Resuming: with ``resume`` and a ``last.pt`` of the same ``run_id`` in ``out_dir``, training continues after its
    epoch and ends with the same weights, history and OOF as an uninterrupted run (each epoch is reseeded from
    ``(seed, epoch)``; tested on CPU). A finished run returns at once. A ``last.pt`` of another ``run_id`` is an error
    rather than silently mixed in.

    Args:
        model: on ``device`` (and in channels_last when asked), possibly DDP-wrapped.
        train_loader, valid_loader: from ``make_loader``.
        loss_fn: see ``compute_loss``.
        optimizer: e.g. ``make_optimizer``; its groups' names label the ``lr_<name>`` history columns.
        preset: the competition (targets, metric, activation).
        out_dir: the fold's artifact folder.
        model_config: ``create_model`` / ``create_classifier`` keywords, saved with the weights.
        epochs: total epochs (>= 1).
        device: the training device.
        scheduler: stepped per optimiser step (``make_scheduler``).
        amp: ``resolve_amp`` mode; fp16 adds a GradScaler.
        accumulate, clip_grad_norm, channels_last: see ``train_one_epoch``.
        ema_decay: 0 for none, else ``make_ema``'s decay; validation and ``best.pt`` use the EMA weights.
        monitor: history column that picks ``best.pt``: default ``valid_<preset.metric>`` (``valid_loss`` and
            ``valid_pixel_error`` are minimised, the rest maximised).
        patience: stop after this many epochs without improvement (0: never).
        seed: the run's seed (model init is the caller's: seed before building the model).
        resume: continue from ``last.pt`` when there is one.
        run_id: fingerprint of the configuration (e.g. a hash of the notebook parameters).
        extra: more entries saved in both checkpoints (``fold``, ``preset`` ...).
        stop_after_epoch: end the process's training after this epoch as if killed (tests of resuming).
    Returns:
        ``FitResult``.
    Raises:
        NonFiniteLossError: a NaN/inf training loss.
        ValueError: epochs < 1; a ``last.pt`` of another run; an unknown ``monitor``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    preset = get_preset(preset)
    out_dir = Path(out_dir)
    info = dist_info()
    amp_dtype = resolve_amp(amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ema = make_ema(model, ema_decay) if ema_decay else None
    monitor = monitor or f"valid_{preset.metric}"
    minimise = monitor.endswith("loss") or monitor.endswith("error")
    last_path, best_path, history_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "history.csv"
    extra = dict(extra or {})

    history: list[dict[str, float]] = []
    best_score, best_epoch, start_epoch, resumed_from = float("nan"), -1, 0, None
    stale = 0
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if state.get("checkpoint") != CHECKPOINT_KIND:
            raise ValueError(f"{last_path}: not a kitlib training checkpoint (no checkpoint={CHECKPOINT_KIND!r})")
        if state.get("run_id") != run_id:
            raise ValueError(
                f"{last_path} belongs to another configuration (run_id {state.get('run_id')!r}, this run {run_id!r}); "
                "delete the fold folder to start over, or use a new exp name"
            )
        unwrap(model).load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        history = [dict(row) for row in state["history"]]
        best_score, best_epoch, stale = float(state["best_score"]), int(state["best_epoch"]), int(state["stale"])
        start_epoch = resumed_from = int(state["epoch"]) + 1
        log.info("resumed %s after epoch %d", last_path, start_epoch - 1)
        if state.get("finished"):
            start_epoch = epochs

    stopped_early = False
    group_names = [g.get("name", str(i)) for i, g in enumerate(optimizer.param_groups)]
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        epoch_seed = _epoch_seed(seed, epoch)
        seed_everything(epoch_seed + info.rank)
        _seed_transform(getattr(train_loader.dataset, "transform", None), epoch_seed + info.rank)
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(epoch_seed)
        lrs = {f"lr_{name}": g["lr"] for name, g in zip(group_names, optimizer.param_groups, strict=True)}
        train = train_one_epoch(
            model, train_loader, loss_fn, optimizer, preset, device, scheduler=scheduler, scaler=scaler,
            amp_dtype=amp_dtype, accumulate=accumulate, clip_grad_norm=clip_grad_norm, ema=ema,
            channels_last=channels_last, epoch=epoch, desc=f"epoch {epoch + 1}/{epochs}",
        )  # fmt: skip
        train = _mean_over_ranks(train)
        eval_model = ema.module if ema is not None else model
        valid = evaluate(eval_model, valid_loader, loss_fn, preset, device, amp_dtype, channels_last)
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}}
        row.update({f"valid_{k}": v for k, v in valid.items()})
        row.update(lrs)
        row["time_s"] = round(time.perf_counter() - started, 3)
        if monitor not in row:
            raise ValueError(f"monitor {monitor!r} is not a history column; options: {sorted(row)}")
        history.append(row)
        score = float(row[monitor])
        improved = np.isfinite(score) and (best_epoch < 0 or (score < best_score if minimise else score > best_score))
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
        else:
            stale += 1
        stop = bool(patience) and stale >= patience
        finished = stop or epoch + 1 == epochs
        if info.is_main:
            if improved:
                save_model(
                    best_path, unwrap(eval_model), model_config,
                    extra={**extra, "epoch": epoch, "score": score, "monitor": monitor, "run_id": run_id},
                )  # fmt: skip
            state = {
                **extra, "checkpoint": CHECKPOINT_KIND, "run_id": run_id, "epoch": epoch, "finished": finished,
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "best_score": best_score, "best_epoch": best_epoch, "stale": stale, "history": history,
                "rng": _rng_state(), "monitor": monitor,
            }  # fmt: skip
            save_model(last_path, unwrap(model), model_config, extra=state)
            write_csv(history_path, pd.DataFrame(history), index=False)
            _epoch_line(row, monitor, improved)
        barrier()
        if stop:
            stopped_early = True
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch and not finished:
            break
    return FitResult(
        history=pd.DataFrame(history),
        best_score=best_score,
        best_epoch=best_epoch,
        monitor=monitor,
        resumed_from=resumed_from,
        stopped_early=stopped_early,
        paths={"last": last_path, "best": best_path, "history": history_path},
    )


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    names = sorted(values)
    reduced = _all_reduce(torch.tensor([values[n] for n in names], dtype=torch.float64)) / dist.get_world_size()
    return dict(zip(names, reduced.tolist(), strict=True))


def _epoch_line(row: Mapping[str, float], monitor: str, improved: bool) -> None:
    """One line per epoch on stderr, readable in papermill output and CI logs."""
    from tqdm import tqdm

    shown = [f"epoch {int(row['epoch']) + 1}"]
    for name, value in row.items():
        if name.startswith(("train_loss", "valid_")) or name == "time_s":
            shown.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    tqdm.write("  ".join(shown) + ("  *" if improved else ""), file=sys.stderr)
