"""Benchmark: dataset items read from the raw files against items read from the kitlib.cache image cache.

Run: ``python benchmarks/bench_cache.py [--data ../shared/data] [--height 320] [--width 480] [--passes 20]``

Input: the 20 real Understanding Clouds train images of ``clouds_sample`` (1400x2100 JPEGs). The sample has
real RLE labels for one image only (``train_small.csv``: 0011165), so the benchmark table holds all 20 images
and gives each of them 0011165's four RLE columns (Fish and Flower filled, Gravel and Sugar empty): every item
decodes four real full-size RLE strings, as a real train table would. The masks are then not those of the other
19 images, which does not matter for a speed measurement.

Both paths run in this process, one item at a time (as one DataLoader worker would), through the same
deterministic transform (resize to 320x480 + ImageNet normalisation): the raw path decodes the JPEG and the
RLE strings and resizes them; the cached path reads rows of the memory maps that ``build_cache`` wrote once
(its build time is printed too). The script checks that both paths give identical items, then prints
images/s for each and the ratio. Target: the cache at least 10x the raw path.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from kitlib.cache import build_cache
from kitlib.data import SegmentationDataset, build_transforms
from kitlib.formats import load_competition
from kitlib.presets import PRESETS, get_preset

REPO = Path(__file__).resolve().parents[1]


def clouds_table(clouds_dir: Path) -> pd.DataFrame:
    """All train images of the sample, each with the RLE columns of 0011165 (see the module docstring)."""
    labelled = load_competition(PRESETS["clouds"], clouds_dir, label_file="train_small.csv")
    targets = labelled.iloc[0][list(get_preset("clouds").target_classes)]
    rows = []
    for path in sorted((clouds_dir / "train_images").glob("*.jpg")):
        rows.append({"image_id": path.name, "image_path": str(path.resolve()), "height": 1400, "width": 2100,
                     **targets.to_dict()})  # fmt: skip
    return pd.DataFrame(rows)


def items_per_second(dataset: SegmentationDataset, passes: int) -> float:
    """Items per second over ``passes`` full passes, after one warm-up item."""
    _ = dataset[0]
    t0 = time.perf_counter()
    for _ in range(passes):
        for i in range(len(dataset)):
            _ = dataset[i]
    return passes * len(dataset) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--passes", type=int, default=20, help="passes over the 20 images for the cached path")
    parser.add_argument("--raw-passes", type=int, default=2, help="passes for the raw path")
    args = parser.parse_args()
    clouds_dir = args.data / "clouds_sample"
    if not (clouds_dir / "train_images").is_dir():
        print(f"real Understanding Clouds sample not found: {clouds_dir}; pass --data <folder holding "
              "clouds_sample/>", file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(1)  # one item at a time, as in one DataLoader worker
    preset = get_preset("clouds")
    df = clouds_table(clouds_dir)
    transform = build_transforms("valid", args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        cache_dir = Path(tmp) / f"clouds_{args.height}x{args.width}"
        t0 = time.perf_counter()
        cache = build_cache(df, preset, cache_dir, args.height, args.width)
        build_s = time.perf_counter() - t0
        raw = SegmentationDataset(df, preset, transform=transform)
        cached = SegmentationDataset(df, preset, transform=transform, cache=cache)
        for i in range(len(df)):
            a, b = raw[i], cached[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]), df.image_id[i]
        raw_ips = items_per_second(raw, args.raw_passes)
        cached_ips = items_per_second(cached, args.passes)
        size_mb = sum(f.stat().st_size for f in cache_dir.iterdir()) / 2**20
    print(f"table: {len(df)} real clouds images, 1400x2100 JPEG + 4 RLE each -> {args.height}x{args.width}")
    print(f"cache build: {build_s:.2f} s ({len(df) / build_s:.1f} images/s, {os.cpu_count()} cores), {size_mb:.1f} MiB")
    print(f"identical items from both paths: {len(df)}/{len(df)}")
    print(f"raw files:  {raw_ips:8.1f} images/s")
    print(f"cache:      {cached_ips:8.1f} images/s")
    print(f"ratio:      {cached_ips / raw_ips:8.1f}x (target >= 10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
