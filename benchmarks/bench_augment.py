"""Benchmark: loader images/s with the clouds_1st augmentation pipeline against the same loader without augmentation.

Run: ``python benchmarks/bench_augment.py [--data ../shared/data] [--workers 0 1 2] [--passes 10]``

Input: the 20 real Understanding Clouds train images of ``clouds_sample`` with the RLE columns of 0011165 (as
``bench_cache.py``), cached once at 320x480 by ``kitlib.cache.build_cache``. Both loaders read the cache through
``kitlib.data.SegmentationDataset`` and ``kitlib.runtime.make_loader`` (batch 16, shuffled), one with
``build_transforms("train", 320, 480, augment="clouds_1st")`` and one with ``augment="none"`` (resize + normalise:
identity resize on cached rows), in the same run. It prints images/s per worker count (0 workers = the main process)
and the ratio: augmentation must not make the loader the bottleneck of a GPU step (a resnet34 Unet step at 320x480
takes a few hundred images/s on one GPU, so images/s per worker says how many workers that needs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_cache import clouds_table

from kitlib.cache import build_cache
from kitlib.data import SegmentationDataset, build_transforms
from kitlib.presets import get_preset
from kitlib.runtime import DistInfo, make_loader

REPO = Path(__file__).resolve().parents[1]


def images_per_second(loader, passes: int) -> float:
    """Images per second over ``passes`` epochs of ``loader``, after one warm-up epoch (workers started)."""
    for _ in loader:
        pass
    t0, n = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            n += len(batch["image"])
    return n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--passes", type=int, default=10, help="epochs over the 20 images per measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    clouds_dir = args.data / "clouds_sample"
    if not (clouds_dir / "train_images").is_dir():
        print(f"real Understanding Clouds sample not found: {clouds_dir}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    preset, df = get_preset("clouds"), clouds_table(clouds_dir)
    with tempfile.TemporaryDirectory(prefix="bench_augment_") as tmp:
        cache = build_cache(df, preset, Path(tmp) / "clouds_320x480", 320, 480)
        print(f"table: {len(df)} real clouds images from the cache at 320x480, batch {args.batch_size}")
        print(f"{'workers':>7} {'none img/s':>11} {'clouds_1st img/s':>17} {'ratio':>6} {'aug img/s per worker':>21}")
        for workers in args.workers:
            speed = {}
            for augment in ("none", "clouds_1st"):
                dataset = SegmentationDataset(df, preset, build_transforms("train", 320, 480, augment=augment), cache)
                loader = make_loader(dataset, args.batch_size, True, 0, workers, DistInfo(), drop_last=False)
                speed[augment] = images_per_second(loader, args.passes)
            per_worker = speed["clouds_1st"] / max(workers, 1)
            print(f"{workers:>7} {speed['none']:>11.1f} {speed['clouds_1st']:>17.1f} "
                  f"{speed['clouds_1st'] / speed['none']:>6.2f} {per_worker:>21.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
