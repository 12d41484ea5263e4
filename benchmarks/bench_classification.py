"""Benchmark: classification training images/s (fp32 vs mixed precision + channels_last) and loader-only images/s
(raw JPEG files vs the kitlib.cache image cache), as ratios measured in one run.

Run: ``python benchmarks/bench_classification.py [--data ../shared/data] [--device auto]``

Training: a timm classifier (``kitlib.models.create_classifier``) through the kit's own loop
(``engine.train_one_epoch``: cross-entropy, AdamW, an optimiser step every batch) on synthetic images held in memory,
so the data pipeline is not measured. CUDA: EfficientNet-B4 at 512x512, batch 16 (the Cassava 1st-place setting);
CPU: resnet18 at 224x224, batch 8, where autocast is bf16. Both configurations start from the same random init and
get warm-up steps before the timed ones, the device synchronised around them.

Loader: the real Cassava sample's train images (``cassava_sample``: 800x600 JPEGs; synthetic JPEGs of that size when
the folder is absent) through the train transform at the training size (resize, flips, affine, colour, normalise)
and a ``make_loader`` DataLoader (0 workers: one process's throughput), read from the files and from the cache that
``build_cache`` wrote once. Prints images/s of each path and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _timing
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kitlib import optim, runtime
from kitlib.cache import build_cache
from kitlib.data import ClassificationDataset, build_transforms
from kitlib.formats import load_competition
from kitlib.losses import create_loss
from kitlib.models import create_classifier
from kitlib.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


class _Synthetic(Dataset):
    def __init__(self, n: int, size: int, classes: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image_id": str(i), "image": self.images[i], "label": self.labels[i]}


def train_images_per_s(device, model_name, size, batch_size, steps, warmup, amp: str, channels_last: bool) -> float:
    """Images/s of ``train_one_epoch`` on a fresh ``model_name`` classifier (seed 0)."""
    preset = get_preset("cassava")
    torch.manual_seed(0)
    model = create_classifier(model_name, preset.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optim.make_optimizer(model, 1e-4, 1e-4, 1e-6)
    loss = create_loss("ce")
    dataset = lambda n: _Synthetic(n, size, preset.num_classes)  # noqa: E731
    return _timing.train_images_per_s(model, dataset, loss, optimizer, preset, device, batch_size, steps, warmup, amp,
                                      channels_last)  # fmt: skip


def cassava_table(data: Path, tmp: Path) -> tuple[pd.DataFrame, str]:
    """The real sample's labelled train images, or 8 synthetic 800x600 JPEGs when it is absent."""
    folder = data / "cassava_sample"
    if (folder / "train_images").is_dir():
        df = load_competition(get_preset("cassava"), folder, drop_missing=True)
        return df, f"{len(df)} real Cassava train images (800x600 JPEG)"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        path = tmp / f"{i}.jpg"
        cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8), (0, 0), 3))
        rows.append({"image_id": path.name, "image_path": str(path), "height": 600, "width": 800, "label": i % 5})
    return pd.DataFrame(rows), f"8 synthetic 800x600 JPEGs ({folder} not found)"


def loader_images_per_s(dataset: ClassificationDataset, batch_size: int, passes: int) -> float:
    """Images/s of ``passes`` epochs of a training DataLoader over ``dataset`` (0 workers), after a warm-up batch."""
    loader = runtime.make_loader(dataset, batch_size, train=True, drop_last=False)
    next(iter(loader))
    start = time.perf_counter()
    n = 0
    for epoch in range(passes):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            n += len(batch["image"])
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--model", default=None, help="timm model (default: by device, see the docstring)")
    parser.add_argument("--passes", type=int, default=20, help="loader epochs over the images from the cache")
    args = parser.parse_args()
    _, device = runtime.init_distributed(args.device)
    if device.type == "cuda":
        model_name, size, batch_size, steps, warmup = args.model or "tf_efficientnet_b4", 512, 16, args.steps or 30, 5
    else:
        model_name, size, batch_size, steps, warmup = args.model or "resnet18", 224, 8, args.steps or 6, 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), {model_name} {size}x{size} batch {batch_size}, {steps} timed steps")
    fp32 = train_images_per_s(device, model_name, size, batch_size, steps, warmup, "off", False)
    print(f"train fp32, NCHW:                    {fp32:8.1f} images/s")
    fast = train_images_per_s(device, model_name, size, batch_size, steps, warmup, "auto", True)
    label = "bf16/fp16 autocast" if device.type == "cuda" else "bf16 autocast (CPU)"
    print(f"train {label}, channels_last: {fast:8.1f} images/s")
    print(f"ratio (mixed precision + channels_last / fp32): {fast / fp32:.2f}x")

    torch.set_num_threads(1)  # the loader's work, as in one DataLoader worker
    preset = get_preset("cassava")
    with tempfile.TemporaryDirectory(prefix="bench_cls_") as tmp:
        df, what = cassava_table(args.data, Path(tmp))
        transform = build_transforms("train", size, size, augment="light")
        t0 = time.perf_counter()
        cache = build_cache(df, preset, Path(tmp) / "cache", size, size)
        build_s = time.perf_counter() - t0
        raw = loader_images_per_s(ClassificationDataset(df, preset, transform=transform), batch_size, 2)
        cached = loader_images_per_s(ClassificationDataset(df, preset, transform=transform, cache=cache), batch_size,
                                     args.passes)  # fmt: skip
    print(f"loader: {what} -> {size}x{size}, train transform, 1 process")
    print(f"cache build: {build_s:.2f} s ({len(df) / build_s:.1f} images/s)")
    print(f"loader from files:  {raw:8.1f} images/s")
    print(f"loader from cache:  {cached:8.1f} images/s")
    print(f"ratio (cache / files): {cached / raw:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
