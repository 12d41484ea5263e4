"""Benchmark: training images/s of kitlib.engine.train_one_epoch, plain fp32 vs mixed precision + channels_last.

Run: ``python benchmarks/bench_train.py`` (CUDA: Unet-resnet34 at 384x576, batch 16, the Understanding Clouds
setting; CPU: the same model at 128x192, batch 4, where autocast is bf16 on CPU).

Both configurations train the same model architecture (fresh random init, same seed) through the kit's own loop
(``train_one_epoch``: BCE + Dice, AdamW, optimiser step every batch) on synthetic images held in memory, so the data
pipeline is not measured. Each configuration gets warm-up steps (cuDNN autotuning, allocator), then timed steps with
the device synchronised. Prints images/s for each and the ratio (mixed precision + channels_last / fp32).
"""

from __future__ import annotations

import argparse

import torch
from _timing import train_images_per_s
from torch.utils.data import Dataset

from kitlib import optim, runtime
from kitlib.losses import create_loss
from kitlib.models import create_model
from kitlib.presets import PRESETS


class _Synthetic(Dataset):
    def __init__(self, n: int, height: int, width: int, classes: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, height, width, generator=g)
        self.masks = (torch.rand(n, classes, height, width, generator=g) > 0.7).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image_id": str(i), "image": self.images[i], "mask": self.masks[i]}


def _images_per_s(
    device, height, width, batch_size, steps, warmup, amp: str, channels_last: bool, encoder: str
) -> float:
    torch.manual_seed(0)
    model = create_model("unet", encoder, classes=4).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optim.make_optimizer(model, 2.5e-5, 2.5e-4, 0.01)
    loss = create_loss("combo", terms={"bce": 0.75, "dice": 0.25}, mode="multilabel")
    dataset = lambda n: _Synthetic(n, height, width, 4)  # noqa: E731
    return train_images_per_s(model, dataset, loss, optimizer, PRESETS["clouds"], device, batch_size, steps, warmup,
                              amp, channels_last)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--encoder", default="resnet34")
    args = parser.parse_args()
    _, device = runtime.init_distributed(args.device)
    if device.type == "cuda":
        height, width, batch_size, steps, warmup = 384, 576, 16, args.steps or 30, 5
    else:
        height, width, batch_size, steps, warmup = 128, 192, 4, args.steps or 6, 2
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"Unet-{args.encoder} {height}x{width} batch {batch_size}, {steps} timed steps")  # fmt: skip
    fp32 = _images_per_s(device, height, width, batch_size, steps, warmup, "off", False, args.encoder)
    print(f"fp32, NCHW:                  {fp32:8.1f} images/s")
    fast = _images_per_s(device, height, width, batch_size, steps, warmup, "auto", True, args.encoder)
    label = "bf16/fp16 autocast" if device.type == "cuda" else "bf16 autocast (CPU)"
    print(f"{label}, channels_last: {fast:8.1f} images/s")
    print(f"ratio (mixed precision + channels_last / fp32): {fast / fp32:.2f}x")


if __name__ == "__main__":
    main()
