"""Optimiser, learning-rate schedules and the EMA of the weights, as the winners set them up.

- ``make_optimizer``: any ``timm.optim`` optimiser (``create_optimizer_v2``: AdamW, AdamP, RAdam, SGD with Nesterov
  momentum, Lookahead-wrapped variants such as ``lookahead_radam``, ...) over ``kitlib.models.param_groups`` (encoder
  and decoder/head learning rates, no decay on biases and norms: Understanding Clouds 1st place).
- ``make_scheduler``: OneCycle, cosine with linear warmup, cosine with warm restarts (SGDR), stepped once per
  optimiser step; or ReduceLROnPlateau, stepped once per epoch on the monitored score (``steps_per_epoch_only``).
- ``make_ema``: an exponential moving average of the weights (``torch.optim.swa_utils``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from kitlib.models import param_groups
from kitlib.recipes import SCHEDULERS, check_optimizer
from kitlib.runtime import unwrap

__all__ = ["make_ema", "make_optimizer", "make_scheduler", "steps_per_epoch_only"]


def make_optimizer(
    model: nn.Module,
    encoder_lr: float,
    decoder_lr: float,
    weight_decay: float = 0.01,
    name: str = "adamw",
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """A ``timm.optim`` optimiser over ``kitlib.models.param_groups``: encoder at ``encoder_lr``, decoder and heads at
    ``decoder_lr``, no decay on biases and norms (Understanding Clouds 1st place: AdamW 2.5e-5 / 2.5e-4, weight decay
    0.01).

    Args:
        model: the model (possibly DDP-wrapped).
        encoder_lr, decoder_lr, weight_decay: per-group learning rates and decay.
        name: a ``timm.optim.list_optimizers()`` name: "adamw" (``torch.optim.AdamW``), "adamp", "radam", "sgd" (SGD
            with Nesterov momentum 0.9), "momentum" (without Nesterov), "lookahead_adamw", "lookahead_radam" (Lookahead,
            Zhang et al. 2019, around the optimiser), ...
        **kwargs: more optimiser arguments (``momentum``, ``betas``, ``eps``, ...), passed to
            ``timm.optim.create_optimizer_v2``.
    Returns:
        The optimiser; its ``param_groups`` keep the groups' ``name``, ``lr`` and ``weight_decay``.
    Raises:
        ValueError: an unknown optimiser name (close matches named).
        TypeError: an argument the optimiser does not take.
    """
    from timm.optim import create_optimizer_v2

    check_optimizer(name)
    groups = param_groups(unwrap(model), encoder_lr, decoder_lr, weight_decay)
    return create_optimizer_v2(groups, opt=name, lr=decoder_lr, weight_decay=weight_decay, **kwargs)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    min_lr_ratio: float = 0.0,
    restart_steps: int = 0,
    restart_mult: int = 1,
    restart_gamma: float = 1.0,
    plateau_mode: str = "max",
    plateau_factor: float = 0.1,
    plateau_patience: int = 2,
) -> Any:
    """A learning-rate schedule whose peak is each group's ``lr`` (encoder and decoder keep their ratio).

    Args:
        optimizer: its groups' ``lr`` are the peak rates.
        name: "onecycle" (``OneCycleLR``, cosine annealing; Smith & Topin 2017, the Understanding Clouds 1st place's
            schedule), "cosine" (linear warmup over ``warmup_steps`` then cosine decay to ``min_lr_ratio`` x peak;
            Loshchilov & Hutter 2017, SGDR without restarts), "cosine_restarts" (the same warmup, then cosine cycles
            of ``restart_steps`` steps, each ``restart_mult`` times longer than the last, every restart back at the
            peak: SGDR, as the Cassava solutions' ``CosineAnnealingWarmRestarts``), "cosine_warmup_restarts" (as the
            ``CosineAnnealingWarmupRestarts`` of katsura-jp/pytorch-cosine-annealing-with-warmup that the Dacon
            building team trained with: every cycle starts with a linear warmup of ``warmup_steps`` from
            ``min_lr_ratio`` x peak to the cycle's peak, peak x ``restart_gamma`` ** cycle, then a cosine back down;
            the first cycle lasts ``restart_steps``, each later one (``restart_steps`` - warmup) x ``restart_mult``
            + warmup), "plateau" (``ReduceLROnPlateau``:
            the rates times ``plateau_factor`` after ``plateau_patience`` epochs without improvement of the monitored
            score, mode ``plateau_mode``), "constant" (None).
        total_steps: optimiser steps of the whole run (epochs x steps per epoch).
        warmup_steps: linear warmup steps of "cosine" and "cosine_restarts".
        pct_start, div_factor, final_div_factor: ``OneCycleLR``'s (start at peak / 25, end at start / 1e4).
        min_lr_ratio: the lowest rate of "cosine" and "cosine_restarts" as a fraction of the peak, in [0, 1].
        restart_steps: length of the first cycle of "cosine_restarts" (>= 1).
        restart_mult: cycle length multiplier of "cosine_restarts" and "cosine_warmup_restarts" (>= 1).
        restart_gamma: "cosine_warmup_restarts": each cycle's peak is the last one's times this, in (0, 1].
        plateau_mode: "max" or "min", whether the monitored score should rise or fall.
        plateau_factor, plateau_patience: ``ReduceLROnPlateau``'s.
    Returns:
        The scheduler, None for "constant". Step "plateau" once per epoch with the monitored score
        (``steps_per_epoch_only``), the others after every optimiser step.
    Raises:
        ValueError: unknown name; total_steps < 1; warmup_steps outside [0, total_steps); a bad restart length,
            multiplier or plateau mode.
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
    if name == "plateau":
        if plateau_mode not in ("max", "min"):
            raise ValueError(f"plateau_mode must be 'max' or 'min', got {plateau_mode!r}")
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=plateau_mode, factor=plateau_factor, patience=plateau_patience
        )
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}), got {warmup_steps}")
    if name in ("cosine_restarts", "cosine_warmup_restarts") and (restart_steps < 1 or restart_mult < 1):
        raise ValueError(f"{name} needs restart_steps >= 1 and restart_mult >= 1, got {restart_steps}, "
                         f"{restart_mult}")  # fmt: skip
    if name == "cosine_warmup_restarts":
        if not warmup_steps < restart_steps or not 0.0 < restart_gamma <= 1.0:
            raise ValueError(f"cosine_warmup_restarts needs warmup_steps < restart_steps and restart_gamma in (0, 1], "
                             f"got {warmup_steps}, {restart_steps}, {restart_gamma}")  # fmt: skip
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(_warmup_restarts, restart_steps, warmup_steps, restart_mult, restart_gamma, min_lr_ratio)
        )
    cycle = restart_steps if name == "cosine_restarts" else total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t, length = step - warmup_steps, cycle
        if name == "cosine":
            t = min(t, length)
        else:
            while t >= length:  # SGDR: restart at the peak, the next cycle restart_mult times longer
                t, length = t - length, length * restart_mult
        frac = t / length
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _warmup_restarts(first: int, warmup: int, mult: int, gamma: float, floor: float, step: int) -> float:
    """The "cosine_warmup_restarts" factor of the peak rate at ``step`` (``make_scheduler``)."""
    cycle, length = 0, first
    while step >= length:
        step, length, cycle = step - length, (length - warmup) * mult + warmup, cycle + 1
    peak = gamma**cycle
    if step < warmup:
        return floor + (peak - floor) * step / warmup
    frac = (step - warmup) / (length - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def steps_per_epoch_only(scheduler: Any) -> bool:
    """True for a scheduler stepped once per epoch with the monitored score (``ReduceLROnPlateau``), False for one
    stepped after every optimiser step."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


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
