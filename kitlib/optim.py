"""Optimiser, learning-rate schedules and the EMA of the weights, as the winners set them up.

- ``make_optimizer``: AdamW over ``kitlib.models.param_groups`` (encoder and decoder/head learning rates, no decay on
  biases and norms: Understanding Clouds 1st place).
- ``make_scheduler``: OneCycle or cosine with linear warmup, stepped once per optimiser step.
- ``make_ema``: an exponential moving average of the weights (``torch.optim.swa_utils``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kitlib.models import param_groups
from kitlib.recipes import SCHEDULERS
from kitlib.runtime import unwrap

__all__ = ["make_ema", "make_optimizer", "make_scheduler"]


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
