"""Benchmark: kitlib.postprocess searches against the naive Kaggle-kernel loop, and a Clouds-size streamed search.

Run: ``python benchmarks/bench_postprocess.py [--images 48] [--dtype uint8] [--workers N] [--clouds-size
[--clouds-images N]]``

Data: seeded synthetic OOF of realistic fragmentation at Clouds' 350 x 525, 4 classes: probs are a smooth field
(large regions) plus blurred pixel noise (many small blobs at every threshold), the truth is the smooth field
thresholded, and half the (image, class) pairs have an empty truth with lower probs.

Default run (under a minute on 2 cores): the reference (``tests/postprocess_reference.py``: per image, threshold and
min_area, threshold + ``cv2.connectedComponents`` + drop small components + Dice) and ``search_thresholds`` on the
same OOF in this process, 10 thresholds x 10 min_areas; the script checks that the tables are identical, then prints
both times and the ratio (target >= 20x), with the thread pool and with one thread, and the time of the per-threshold
path the one sweep replaced (``search_thresholds_per_threshold``). The triplet search is compared the
same way on a 4 x 4 x 4 grid.

``--clouds-size``: writes a 5546 x 4 x 350 x 525 uint8 probs memmap and a masks memmap of the same shape (4.1 GB each)
into a temporary folder (in a child process, a chunk at a time), then times ``search_thresholds`` on them, 10 x 10
(the time, the target <= 120 s on 2 cores met or not, the load average around it; with ``--clouds-images N`` the first
N images only, the time extrapolated to 5546; then the per-threshold path it replaced and the one sweep on the first
``--old-images`` images, same process, their ratio),
``search_triplet`` (7 x 10 x 10) and ``top_k_class_probs``, and prints the peak resident memory of this process
(``resource.getrusage``) after each: it stays far below the 8.2 GB read, because the arrays are streamed a chunk of
images at a time (memmap pages are released once copied). ``--tmp`` picks the folder (8.2 GB free needed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))  # `tests` is the repo's package, not a site-packages one of the same name

from kitlib.postprocess import scale_top_k, top_k_class_probs  # noqa: E402
from kitlib.search import search_thresholds, search_triplet  # noqa: E402
from tests.postprocess_reference import (  # noqa: E402
    search_thresholds_per_threshold,
    search_thresholds_reference,
    search_triplet_reference,
)

THRESHOLDS = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]
MIN_AREAS = [0, 100, 500, 1000, 2000, 5000, 8000, 10000, 15000, 20000]
TRIPLET = ([0.6, 0.7, 0.8, 0.9], [0, 1000, 5000, 10000], [0.3, 0.4, 0.5, 0.6])
CLOUDS_SHAPE = (5546, 4, 350, 525)
TARGET_S = 120  # search_thresholds at Clouds size on 2 cores (issue 15)


def fragmented_oof(rng: np.random.Generator, n: int, c: int = 4, h: int = 350, w: int = 525, noise_bank: int = 16):
    """(probs float32 (n, c, h, w) in [0, 1], masks uint8 {0, 1}): smooth regions plus blobs of blurred noise.

    Fine noise comes from a small bank of blurred fields, rolled by a random offset per map, to keep generation cheap.
    """
    bank = [cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.5) for _ in range(noise_bank)]
    bank = [b / b.std() for b in bank]
    probs = np.empty((n, c, h, w), dtype=np.float32)
    masks = np.zeros((n, c, h, w), dtype=np.uint8)
    for i in range(n):
        for k in range(c):
            coarse = rng.standard_normal((h // 35 + 2, w // 35 + 2)).astype(np.float32)
            smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
            fine = np.roll(bank[rng.integers(noise_bank)], (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
            present = rng.random() < 0.5
            if present:
                masks[i, k] = smooth > 0.3
            score = 2.0 * (smooth - 0.3) + 1.3 * fine - (0.0 if present else 1.5)
            probs[i, k] = 1.0 / (1.0 + np.exp(-score))
    return probs, masks


def to_uint8(probs: np.ndarray) -> np.ndarray:
    return np.rint(probs * 255).astype(np.uint8)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compare(args: argparse.Namespace) -> None:
    probs, masks = fragmented_oof(np.random.default_rng(0), args.images)
    if args.dtype == "uint8":
        probs = to_uint8(probs)
    n_comp = [cv2.connectedComponents((probs[i, k] > (127 if probs.dtype == np.uint8 else 0.5)).view(np.uint8))[0] - 1
              for i in range(min(8, len(probs))) for k in range(4)]  # fmt: skip
    print(f"OOF {probs.shape} {probs.dtype}: {np.mean(n_comp):.0f} components per map at 0.5 (mean of 32 maps), "
          f"{masks.any(axis=(2, 3)).mean():.0%} pairs with a truth")  # fmt: skip
    grid = f"{len(THRESHOLDS)} thresholds x {len(MIN_AREAS)} min_areas"
    ref, t_ref = timed(lambda: search_thresholds_reference(probs, masks, THRESHOLDS, MIN_AREAS))
    fast, t_fast = timed(lambda: search_thresholds(probs, masks, THRESHOLDS, MIN_AREAS, num_workers=args.workers))
    one, t_one = timed(lambda: search_thresholds(probs, masks, THRESHOLDS, MIN_AREAS, num_workers=1))
    old, t_old = timed(
        lambda: search_thresholds_per_threshold(probs, masks, THRESHOLDS, MIN_AREAS, num_workers=args.workers)
    )
    assert fast.equals(ref) and one.equals(ref) and old.equals(ref), "search_thresholds differs from the reference"
    print(f"search_thresholds, {grid}: reference {t_ref:.2f} s, kitlib {t_fast:.2f} s "
          f"(ratio {t_ref / t_fast:.1f}x, target >= 20x), one thread {t_one:.2f} s ({t_ref / t_one:.1f}x); "
          f"identical tables ({len(ref)} rows)")  # fmt: skip
    print(f"  the per-threshold path it replaced (one labelling per image, class and threshold): {t_old:.2f} s, "
          f"the one sweep {t_old / t_fast:.2f}x faster")  # fmt: skip
    tops, areas, bottoms = TRIPLET
    ref, t_ref = timed(lambda: search_triplet_reference(probs, masks, tops, areas, bottoms))
    fast, t_fast = timed(lambda: search_triplet(probs, masks, tops, areas, bottoms, num_workers=args.workers))
    assert fast.equals(ref), "search_triplet differs from the reference"
    print(f"search_triplet, {len(tops)} x {len(areas)} x {len(bottoms)}: reference {t_ref:.2f} s, kitlib "
          f"{t_fast:.3f} s (ratio {t_ref / t_fast:.0f}x); identical tables ({len(ref)} rows)")  # fmt: skip


def _write_clouds_size(folder: str, seed: int, n: int) -> None:
    """Child process: write probs.u8 and masks.u8 (n images of CLOUDS_SHAPE[1:]) with file writes, 64 at a time."""
    rng = np.random.default_rng(seed)
    with open(Path(folder) / "probs.u8", "wb") as fp, open(Path(folder) / "masks.u8", "wb") as fm:
        for start in range(0, n, 64):
            probs, masks = fragmented_oof(rng, min(64, n - start))
            to_uint8(probs).tofile(fp)
            masks.tofile(fm)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def clouds_size(args: argparse.Namespace) -> None:
    shape = (args.clouds_images or CLOUDS_SHAPE[0],) + CLOUDS_SHAPE[1:]
    folder = tempfile.mkdtemp(prefix="bench_postprocess_", dir=args.tmp)
    try:
        print(f"writing a {shape} uint8 probs memmap and masks memmap under {folder} ...", flush=True)
        t0 = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=_write_clouds_size, args=(folder, 1, shape[0]))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"generation failed (exit code {child.exitcode})")
        print(f"  written in {time.perf_counter() - t0:.0f} s; peak RSS of this process so far {peak_rss_mb():.0f} MB")
        probs = np.memmap(Path(folder) / "probs.u8", dtype=np.uint8, mode="r", shape=shape)
        masks = np.memmap(Path(folder) / "masks.u8", dtype=np.uint8, mode="r", shape=shape)
        print(f"  load average before the search {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        df, t = timed(lambda: search_thresholds(probs, masks, THRESHOLDS, MIN_AREAS, num_workers=args.workers))
        best = df.loc[df.groupby("class_index")["dice"].idxmax()]
        print(f"search_thresholds on the memmaps ({probs.nbytes / 2**30:.1f} GiB each), {len(THRESHOLDS)} x "
              f"{len(MIN_AREAS)}: {t:.0f} s ({t / 60:.1f} min), peak RSS {peak_rss_mb():.0f} MB; best dice per class "
              f"{np.round(best['dice'].to_numpy(), 4).tolist()}")  # fmt: skip
        full = t * CLOUDS_SHAPE[0] / shape[0]
        at = f"{full:.0f} s" if shape[0] == CLOUDS_SHAPE[0] else f"{full:.0f} s extrapolated from {shape[0]} images"
        print(f"  Clouds size ({CLOUDS_SHAPE[0]} images): {at}; target <= {TARGET_S} s: "
              f"{'met' if full <= TARGET_S else 'not met'}; load average after {os.getloadavg()[0]:.1f}")  # fmt: skip
        sub = min(shape[0], args.old_images)
        if sub:  # the per-threshold path it replaced, on the first images, in this process (same load)
            old, t_old = timed(lambda: search_thresholds_per_threshold(probs[:sub], masks[:sub], THRESHOLDS, MIN_AREAS))
            new, t_new = timed(lambda: search_thresholds(probs[:sub], masks[:sub], THRESHOLDS, MIN_AREAS))
            assert new.equals(old), "search_thresholds differs from the per-threshold path"
            print(f"  first {sub} images: the per-threshold path it replaced {t_old:.1f} s, one sweep {t_new:.1f} s "
                  f"(ratio {t_old / t_new:.2f}x), identical tables")  # fmt: skip
        grid = (THRESHOLDS[3:], [0, 1000, 2000, 5000, 8000, 10000, 15000, 20000, 25000, 30000], THRESHOLDS)
        df, t = timed(lambda: search_triplet(probs, masks, *grid, num_workers=args.workers))
        print(f"search_triplet on the memmaps, {' x '.join(str(len(g)) for g in grid)}: {t:.0f} s, "
              f"peak RSS {peak_rss_mb():.0f} MB")  # fmt: skip
        _, t = timed(lambda: top_k_class_probs(probs, scale_top_k(shape[2:])))
        print(f"top_k_class_probs on the memmap, k = 17500: {t:.0f} s, peak RSS {peak_rss_mb():.0f} MB")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="images in the OOF compared with the reference")
    parser.add_argument("--dtype", choices=["uint8", "float32"], default="uint8")
    parser.add_argument("--workers", type=int, default=None, help="threads for kitlib (default: usable CPUs)")
    parser.add_argument("--clouds-size", action="store_true", help="time a 5546 x 4 x 350 x 525 memmap search")
    parser.add_argument(
        "--clouds-images", type=int, default=None, help="with --clouds-size: the first N images only (iteration)"
    )
    parser.add_argument(
        "--old-images", type=int, default=200, help="with --clouds-size: time the replaced path on this many (0: no)"
    )
    parser.add_argument("--tmp", default=None, help="folder for the Clouds-size memmaps (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the Clouds-size memmaps")
    args = parser.parse_args()
    if args.clouds_size:
        clouds_size(args)
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
