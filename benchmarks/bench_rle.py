"""Benchmark: kitlib.rle against the canonical Kaggle-kernel mask2rle / rle2mask, on real masks, both orders.

Run: ``python benchmarks/bench_rle.py [--data ../shared/data] [--repeat 7]`` (about 30 s on 2 cores).

Masks, all real: the Fish and Flower rows of Understanding Clouds image 0011165 (1400x2100, column-major) and
the 24 ISBI 2012 membrane labels (512x512 {0, 255}, cell interior = foreground), each resized with
``cv2.INTER_NEAREST`` to 256x1600 (Severstal), 350x525 (the Clouds submission size) and 1400x2100 (Clouds) and
encoded in both orders ("F" column-major: Clouds, Severstal; "C" row-major: Dacon, Carvana); plus the three
well-formed Dacon building rows (1024x1024, row-major) as they are in the file. The canonical pair defines the
strings; both implementations run in this process on the same inputs, the script checks that they agree exactly
(identical strings, identical masks), then prints per order x size x source the milliseconds per mask of each,
and per order x size the ratio over all its masks against the target: kitlib >= 3x the canonical pair for both
decode and encode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kitlib.rle import rle_decode, rle_encode

REPO = Path(__file__).resolve().parents[1]
SIZES = ((256, 1600), (350, 525), (1400, 2100))  # (H, W)
TARGET = 3.0


def mask2rle(img: np.ndarray) -> str:
    """The canonical Kaggle-kernel encoder (Understanding Clouds / Severstal kernels), column-major via img.T."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def rle2mask(mask_rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The canonical Kaggle-kernel decoder: a Python loop over runs; ``shape`` is (W, H) as in those kernels."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape).T


def canonical_encode(mask: np.ndarray, order: str) -> str:
    """The canonical encoder in ``order``; row-major masks go through it transposed, as kernels did."""
    return mask2rle(mask) if order == "F" else mask2rle(mask.T)


def canonical_decode(rle: str, shape: tuple[int, int], order: str) -> np.ndarray:
    h, w = shape
    return rle2mask(rle, (w, h)) if order == "F" else rle2mask(rle, (h, w)).T


def real_masks(data: Path) -> dict[str, list[np.ndarray]]:
    """Source name -> real (H, W) uint8 {0, 1} masks at their own size."""
    clouds = pd.read_csv(data / "clouds_sample" / "train_small.csv").dropna()
    isbi = sorted((data / "isbi2012_membrane" / "train" / "label").glob("*.png"), key=lambda p: int(p.stem))
    if not isbi:
        raise FileNotFoundError(f"no ISBI labels under {data / 'isbi2012_membrane' / 'train' / 'label'}")
    return {
        "clouds": [np.ascontiguousarray(rle2mask(r, (2100, 1400))) for r in clouds["EncodedPixels"]],
        "isbi": [(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8) for p in isbi],
    }


def load_groups(data: Path) -> list[tuple[str, tuple[int, int], str, list[np.ndarray], list[str]]]:
    """(order, (H, W), source, masks, canonical strings) for every group of real masks timed."""
    groups = []
    sources = real_masks(data)
    for order in ("F", "C"):
        for h, w in SIZES:
            for source, masks in sources.items():
                sized = [m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
                         for m in masks]  # fmt: skip
                groups.append((order, (h, w), source, sized, [canonical_encode(m, order) for m in sized]))
    dacon = pd.read_csv(data / "dacon_building_sample" / "train.csv")
    rles = [r for i, r in zip(dacon["img_id"], dacon["mask_rle"], strict=True) if i != "TRAIN_0003"]  # truncated row
    groups.append(("C", (1024, 1024), "dacon", [canonical_decode(r, (1024, 1024), "C") for r in rles], rles))
    return groups


def paired_medians(canon, ours, repeat: int) -> tuple[float, float]:
    """Median seconds per call of each over ``repeat`` timed calls after one warm-up, the two alternating (so a
    burst of load on a shared machine falls on both)."""
    canon(), ours()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((canon, times[0]), (ours, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if not (args.data / "clouds_sample").is_dir():
        print(f"real samples not found under {args.data}; pass --data", file=sys.stderr)
        return 2
    groups = load_groups(args.data)
    print(f"{'order':<5} {'H x W':>9} {'source':<7} {'masks':>5} {'runs/mask':>9}  {'op':<6} "
          f"{'canonical ms/mask':>17} {'kitlib ms/mask':>14} {'ratio':>7}")  # fmt: skip
    totals: dict[tuple[str, tuple[int, int]], dict[str, list[float]]] = {}
    for order, shape, source, masks, rles in groups:
        for m, r in zip(masks, rles, strict=True):
            assert rle_encode(m, order=order) == r, f"{order} {shape} {source}: encoders disagree"
            assert np.array_equal(rle_decode(r, shape, order=order), m), f"{order} {shape} {source}: decoders disagree"
            assert np.array_equal(canonical_decode(r, shape, order), m)
        runs = sum(len(r.split()) // 2 for r in rles) / len(rles)
        ops = {  # the defaults bind this group's values (the lambdas run inside this iteration anyway)
            "decode": (lambda r_=rles, s_=shape, o_=order: [canonical_decode(r, s_, o_) for r in r_],
                       lambda r_=rles, s_=shape, o_=order: [rle_decode(r, s_, order=o_) for r in r_]),
            "encode": (lambda m_=masks, o_=order: [canonical_encode(m, o_) for m in m_],
                       lambda m_=masks, o_=order: [rle_encode(m, order=o_) for m in m_]),
        }  # fmt: skip
        group_totals = totals.setdefault((order, shape), {"decode": [0.0, 0.0, 0], "encode": [0.0, 0.0, 0]})
        for op, (canon, ours) in ops.items():
            t_canon, t_ours = paired_medians(canon, ours, args.repeat)
            group_totals[op][0] += t_canon
            group_totals[op][1] += t_ours
            group_totals[op][2] += len(rles)
            per_mask = f"{t_canon / len(rles) * 1e3:>17.3f} {t_ours / len(rles) * 1e3:>14.3f}"
            print(f"{order:<5} {f'{shape[0]}x{shape[1]}':>9} {source:<7} {len(rles):>5} {runs:>9.0f}  {op:<6} "
                  f"{per_mask} {t_canon / t_ours:>6.1f}x")  # fmt: skip
    met = 0
    for (order, shape), ops in totals.items():
        parts = []
        for op, (t_canon, t_ours, _n) in ops.items():
            ok = t_canon / t_ours >= TARGET
            met += ok
            parts.append(f"{op} {t_canon / t_ours:.1f}x ({'met' if ok else 'NOT MET'})")
        print(f"order {order} {shape[0]}x{shape[1]} ({ops['decode'][2]} real masks): {', '.join(parts)}; "
              f"target >= {TARGET:g}x the canonical pair, exact round trip")  # fmt: skip
    print(f"targets met: {met} of {2 * len(totals)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
