"""Benchmark: kitlib.rle against the canonical Kaggle-kernel mask2rle / rle2mask, on real masks.

Run: ``python benchmarks/bench_rle.py [--data ../shared/data] [--repeat 30]``

Masks: the real Fish and Flower rows of Understanding Clouds image 0011165 (1400x2100, column-major) and the
three well-formed Dacon building rows (1024x1024, row-major). Both implementations run in this process on the
same inputs; the script checks that they agree exactly, then prints masks/s for each and the ratio.
Target: kitlib at least 2x the canonical pair for both encode and decode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib.rle import rle_decode, rle_encode

REPO = Path(__file__).resolve().parents[1]


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


def load_cases(data: Path) -> list[tuple[str, str, tuple[int, int], str]]:
    """(name, rle, (H, W), order) for every real mask used."""
    cases = []
    clouds = pd.read_csv(data / "clouds_sample" / "train_small.csv").dropna()
    for key, rle in zip(clouds["Image_Label"], clouds["EncodedPixels"], strict=True):
        cases.append((key, rle, (1400, 2100), "F"))
    dacon = pd.read_csv(data / "dacon_building_sample" / "train.csv")
    for img_id, rle in zip(dacon["img_id"], dacon["mask_rle"], strict=True):
        if img_id != "TRAIN_0003":  # truncated row (malformed on purpose in the real file)
            cases.append((img_id, rle, (1024, 1024), "C"))
    return cases


def best_of(fn, repeat: int) -> float:
    """Median seconds per call over ``repeat`` timed calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if not (args.data / "clouds_sample").is_dir():
        print(f"real samples not found under {args.data}; pass --data", file=sys.stderr)
        return 2
    cases = load_cases(args.data)
    totals = {"encode": [0.0, 0.0], "decode": [0.0, 0.0]}
    print(f"{'mask':<20} {'runs':>6} {'op':<7} {'canonical ms':>13} {'kitlib ms':>10} {'ratio':>7}")
    for name, rle, (h, w), order in cases:
        # the canonical pair is column-major only; row-major masks go through it transposed, as kernels did
        canon_decode = (lambda r=rle, h=h, w=w: rle2mask(r, (w, h))) if order == "F" else (
            lambda r=rle, h=h, w=w: rle2mask(r, (h, w)).T)  # fmt: skip
        mask = np.ascontiguousarray(canon_decode())
        canon_encode = (lambda m=mask: mask2rle(m)) if order == "F" else (lambda m=mask: mask2rle(m.T))
        ours_encode = lambda m=mask, o=order: rle_encode(m, order=o)  # noqa: E731
        ours_decode = lambda r=rle, s=(h, w), o=order: rle_decode(r, s, order=o)  # noqa: E731
        assert canon_encode() == rle and ours_encode() == rle, f"{name}: encoders disagree with the file"
        assert np.array_equal(ours_decode(), mask), f"{name}: decoders disagree"
        for op, canon, ours in (("encode", canon_encode, ours_encode), ("decode", canon_decode, ours_decode)):
            t_canon, t_ours = best_of(canon, args.repeat), best_of(ours, args.repeat)
            totals[op][0] += t_canon
            totals[op][1] += t_ours
            print(f"{name:<20} {len(rle.split()) // 2:>6} {op:<7} {t_canon * 1e3:>13.3f} {t_ours * 1e3:>10.3f} "
                  f"{t_canon / t_ours:>6.1f}x")  # fmt: skip
    n = len(cases)
    for op, (t_canon, t_ours) in totals.items():
        print(f"{op}: canonical {n / t_canon:,.0f} masks/s, kitlib {n / t_ours:,.0f} masks/s, "
              f"ratio {t_canon / t_ours:.2f}x (target >= 2x), exact round trip on {n} real masks")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
