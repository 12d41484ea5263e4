"""Benchmark: the cost of refusing truncated images, on real 1400x2100 Understanding Clouds JPEGs.

Run: ``python benchmarks/bench_verify_images.py [--data ../shared/data] [--copies 5] [--passes 3]``

Input: the 20 real train images of ``clouds_sample``, copied ``--copies`` times into a temporary folder (the decode
cache is keyed by path, so each copy is a file of its own to check). Printed, all measured in this process:

- ``read_image`` (OpenCV's decode + the JPEG end-marker check) against the same decode without the check (the
  reference ``cv2.imread`` + ``cvtColor``), in ms per image, and the check alone in microseconds: the price of refusing
  a truncated JPEG at training time. Target: under 1% of the decode.
- ``verify_images`` (a whole Pillow decode of every file, ``00_eda``) in images/s with 1 thread and with a thread per
  core, and a second run that reads everything from the cache. Targets: the pool faster than 1 thread on more than
  one core; the cached run decodes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

from kitlib import images

REPO = Path(__file__).resolve().parents[1]


def per_image_ms(fn, paths: list[str], passes: int) -> float:
    fn(paths[0])
    start = time.perf_counter()
    for _ in range(passes):
        for p in paths:
            fn(p)
    return (time.perf_counter() - start) / (passes * len(paths)) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--copies", type=int, default=5, help="copies of the 20 images for verify_images")
    parser.add_argument("--passes", type=int, default=3, help="passes over the 20 images for read_image")
    args = parser.parse_args()
    folder = args.data / "clouds_sample" / "train_images"
    if not folder.is_dir():
        print(f"real Understanding Clouds sample not found: {folder}; pass --data <folder holding clouds_sample>")
        return 1
    originals = sorted(str(p) for p in folder.glob("*.jpg"))
    cv2.setNumThreads(1)  # one decode at a time, as one DataLoader worker

    def reference(path: str):
        return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    # interleaved, so that a load change on a shared machine hits both alike
    ref_ms = check_ms = 0.0
    for _ in range(args.passes):
        ref_ms += per_image_ms(reference, originals, 1) / args.passes
        check_ms += per_image_ms(images.read_image, originals, 1) / args.passes
    end_us = per_image_ms(images._check_jpeg_end, originals, 50) * 1e3
    print(f"images: {len(originals)} real clouds JPEGs, 1400x2100; {os.cpu_count()} cores")
    print(f"read_image with the end check: {check_ms:7.2f} ms/img")
    print(f"decode without it (reference): {ref_ms:7.2f} ms/img")
    print(f"the end check alone:           {end_us:7.1f} us/img ({end_us / 1e3 / ref_ms:.3%} of the decode; "
          "target < 1%)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(args.copies):
            for p in originals:
                dest = Path(tmp) / f"{k}_{Path(p).name}"
                shutil.copyfile(p, dest)
                paths.append(str(dest))
        rates = {}
        for workers in (1, os.cpu_count() or 1):
            start = time.perf_counter()
            images.verify_images(paths, None, num_workers=workers)
            rates[workers] = len(paths) / (time.perf_counter() - start)
        cache = Path(tmp) / images.DECODE_CACHE
        images.verify_images(paths, cache)
        start = time.perf_counter()
        images.verify_images(paths, cache)
        cached = len(paths) / (time.perf_counter() - start)
    one, pool = rates[1], rates[max(rates)]
    print(f"verify_images, {len(paths)} files, 1 thread:    {one:8.1f} images/s")
    print(f"verify_images, {max(rates)} threads:             {pool:8.1f} images/s ({pool / one:.2f}x one thread)")
    print(f"verify_images, from the cache:      {cached:8.1f} images/s ({cached / pool:.0f}x the pool)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
