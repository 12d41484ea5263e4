"""What the training benchmarks share: the AMP choice and one timed pass of the kit's own training loop over synthetic
batches held in memory (so the data pipeline is not measured), the device synchronised around it."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from kitlib import engine, runtime
from kitlib.presets import Preset


def amp_setup(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, GradScaler) of ``amp``: ``runtime.resolve_amp`` on CUDA; on CPU bf16 unless "off" (CPU
    autocast runs bf16 only)."""
    if device.type == "cuda":
        amp_dtype = runtime.resolve_amp(amp, device)
    else:
        amp_dtype = torch.bfloat16 if amp != "off" else None
    return amp_dtype, torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None


def train_images_per_s(
    model: torch.nn.Module, dataset: Callable[[int], Dataset], loss: torch.nn.Module, optimizer, preset: Preset,
    device: torch.device, batch_size: int, steps: int, warmup: int, amp: str, channels_last: bool,
) -> float:  # fmt: skip
    """Images/s of ``engine.train_one_epoch`` over ``dataset(n_images)`` after ``warmup`` untimed steps."""
    amp_dtype, scaler = amp_setup(amp, device)

    def run(n_steps: int) -> float:
        loader = runtime.make_loader(dataset(n_steps * batch_size), batch_size, train=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.train_one_epoch(model, loader, loss, optimizer, preset, device, scaler=scaler, amp_dtype=amp_dtype,
                               channels_last=channels_last)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(warmup)
    return steps * batch_size / run(steps)
