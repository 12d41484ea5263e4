"""What the training benchmarks share: the AMP choice, synchronised timing, and one timed pass of the kit's own
training loop (``engine.train_one_epoch``) over batches held in memory (so the data pipeline is not measured)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sized

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


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device synchronised before and after (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def kit_loop_seconds(
    model: torch.nn.Module, batches: Sized, loss: torch.nn.Module, optimizer, preset: Preset, device: torch.device,
    amp_dtype: torch.dtype | None, scaler, channels_last: bool, scheduler=None,
) -> float:  # fmt: skip
    """Seconds of one ``engine.train_one_epoch`` over ``batches`` (a DataLoader, or a list of batch dicts already on
    the device), synchronised (``timed``)."""
    return timed(lambda: engine.train_one_epoch(model, batches, loss, optimizer, preset, device, scheduler=scheduler,
                                                scaler=scaler, amp_dtype=amp_dtype, channels_last=channels_last),
                 device)  # fmt: skip


def train_images_per_s(
    model: torch.nn.Module, dataset: Callable[[int], Dataset], loss: torch.nn.Module, optimizer, preset: Preset,
    device: torch.device, batch_size: int, steps: int, warmup: int, amp: str, channels_last: bool,
) -> float:  # fmt: skip
    """Images/s of ``engine.train_one_epoch`` over ``dataset(n_images)`` after ``warmup`` untimed steps."""
    amp_dtype, scaler = amp_setup(amp, device)

    def run(n_steps: int) -> float:
        loader = runtime.make_loader(dataset(n_steps * batch_size), batch_size, train=True)
        return kit_loop_seconds(model, loader, loss, optimizer, preset, device, amp_dtype, scaler, channels_last)

    run(warmup)
    return steps * batch_size / run(steps)
