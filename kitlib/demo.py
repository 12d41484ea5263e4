"""A small synthetic competition in the Understanding Clouds layout, to run the whole kit on a CPU in minutes.

``make_demo(data_dir)`` writes, deterministically from a seed::

    data_dir/
      train.csv              Image_Label,EncodedPixels: "<image_id>_<class>" keys, 4 rows per image in class order,
                             column-major ("F") RLE at the image size, an empty cell for an empty mask
      train_images/d0000.jpg ...   (H, W) = (128, 192) by default, BGR JPEG at quality 90
      test_images/t0000.jpg ...
      sample_submission.csv  Image_Label,EncodedPixels: 4 rows per test image, every EncodedPixels "1 1" (as on Kaggle)
      test_truth.csv         the hidden truth of the test images, in the format of train.csv (image size, order "F");
                             a competition would keep it private. The demo is scored at
                             ``PRESETS["demo"].submission_size`` (64, 96), as Understanding Clouds scores at 350x525:
                             decode the truth at the image size, resize it with nearest-neighbour interpolation to
                             (64, 96) and compare it with the submission's masks (mean Dice over image x class).
      demo.json              the parameters; written last, it marks the folder complete

The preset is ``kitlib.presets.PRESETS["demo"]``: multilabel, classes Stripes, Dots, Checker, Blob. Each class is a
texture that a small CNN tells apart quickly and that simple statistics already separate:

- Stripes: a sinusoidal grating (random angle, period 7-12 px): mid mean, high contrast, one orientation.
- Dots: a lattice of small bright dots (spacing 8-12 px) on a dark base: low mean, isotropic.
- Checker: a checkerboard (squares 5-9 px, random angle): mid mean, the highest contrast, isotropic.
- Blob: a smooth bright dome: high mean, no texture.

Each class fills one random region (ellipse, star-shaped polygon or rotated rectangle, 4-40 % of the image, some cut
by the border) over a smooth noisy background; 1-3 classes per image, so empty masks are common. Overlap rule: the
regions are painted one after another and a later region covers an earlier one; every mask is exactly the visible part
of its class (masks never overlap), and a class whose visible part would be under 2 % of the image is left out of the
image altogether. Image ``i`` always contains class ``i % 4`` (painted last, fully visible), so every class appears in
both splits once they hold 4 images. Each image has its own generator, ``np.random.default_rng([seed, split, i])``:
the first images do not change when ``n_train`` grows.

Run it from a shell: ``python -m kitlib.demo data/demo [--seed 0] [--n-train 80] [--n-test 20] [--overwrite]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kitlib._private import progress
from kitlib.io import atomic_write_bytes, read_json, write_csv, write_json
from kitlib.presets import PRESETS
from kitlib.rle import rle_encode

__all__ = ["make_demo", "score_submission", "DEMO_VERSION", "MARKER", "TRUTH_FILE", "JPEG_QUALITY", "main"]

log = logging.getLogger(__name__)

#: Bumped whenever the generator changes what it draws: a folder made by another version is rebuilt.
DEMO_VERSION = 1
#: Completion marker, written last: the parameters the folder was made with.
MARKER = "demo.json"
#: Hidden truth of the test images (train.csv format).
TRUTH_FILE = "test_truth.csv"
JPEG_QUALITY = 90

_PRESET = PRESETS["demo"]
_CLASSES = _PRESET.classes
_SPLITS = {"train": (0, "d", _PRESET.image_dir), "test": (1, "t", _PRESET.test_image_dir)}  # rng key, id prefix, dir
_DEMO_IMAGE = re.compile(r"^[dt]\d{4,}\.jpg$")
_MIN_REGION = 0.04  # smallest drawn region, fraction of the image
_MIN_VISIBLE = 0.02  # smallest visible part of a class, fraction of the image
_TINTS = {  # per-class BGR gain: a mild colour cue on top of the texture
    "Stripes": (0.80, 0.95, 1.15),
    "Dots": (0.85, 1.15, 0.90),
    "Checker": (1.00, 1.00, 1.00),
    "Blob": (1.15, 1.00, 0.85),
}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float32 around 80-130: smooth low-frequency 'weather' plus a little colour."""
    coarse = rng.normal(0.0, 1.0, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return rng.uniform(85.0, 120.0) + 12.0 * smooth


def _rotated(rng: np.random.Generator, h: int, w: int, max_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (H, W) float32 rotated by a random angle in [0, max_angle) and shifted randomly."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0.0, max_angle)
    c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
    u = xx * c + yy * s + np.float32(rng.uniform(0, 100))
    v = -xx * s + yy * c + np.float32(rng.uniform(0, 100))
    return u, v


def _texture(name: str, rng: np.random.Generator, h: int, w: int, center: tuple[float, float]) -> np.ndarray:
    """(H, W, 3) float32 in about [30, 240]: the texture of class ``name`` over the whole canvas."""
    if name == "Stripes":
        u, _ = _rotated(rng, h, w, np.pi)
        period = rng.uniform(7.0, 12.0)
        gray = 135.0 + 75.0 * np.sin(2 * np.pi * u / period)
    elif name == "Dots":
        u, v = _rotated(rng, h, w, np.pi / 2)
        spacing, radius = rng.uniform(8.0, 12.0), rng.uniform(1.6, 2.6)
        du, dv = np.mod(u, spacing) - spacing / 2, np.mod(v, spacing) - spacing / 2
        dot = np.clip(radius + 0.5 - np.sqrt(du * du + dv * dv), 0.0, 1.0)  # anti-aliased disc
        gray = 40.0 + 190.0 * dot
    elif name == "Checker":
        u, v = _rotated(rng, h, w, np.pi / 2)
        side = rng.uniform(5.0, 9.0)
        gray = 127.0 + 75.0 * np.sign(np.sin(np.pi * u / side) * np.sin(np.pi * v / side))
    elif name == "Blob":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        sigma = rng.uniform(0.25, 0.45) * max(h, w)
        d2 = (xx - center[0]) ** 2 + (yy - center[1]) ** 2
        gray = 185.0 + 50.0 * np.exp(-d2 / (2 * sigma * sigma))
    else:  # pragma: no cover - the class list is fixed
        raise KeyError(f"unknown demo class {name!r}; options: {list(_CLASSES)}")
    return gray.astype(np.float32)[..., None] * np.asarray(_TINTS[name], np.float32)


def _region(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, tuple[float, float]]:
    """A random filled region: (H, W) bool mask (at least 4 % of the image) and its centre (x, y) in pixels."""
    for _ in range(100):
        cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h  # some regions are cut by the border
        rx, ry = rng.uniform(0.12, 0.38) * w, rng.uniform(0.15, 0.45) * h
        angle = rng.uniform(0.0, 180.0)
        mask = np.zeros((h, w), np.uint8)
        kind = rng.integers(3)
        if kind == 0:
            cv2.ellipse(mask, (round(cx), round(cy)), (round(rx), round(ry)), angle, 0, 360, 1, thickness=-1)
        elif kind == 1:  # star-shaped polygon: sorted angles, random radii
            n = int(rng.integers(5, 9))
            theta = np.sort(rng.uniform(0.0, 2 * np.pi, n))
            radius = rng.uniform(0.55, 1.0, n)
            pts = np.stack([cx + rx * radius * np.cos(theta), cy + ry * radius * np.sin(theta)], axis=1)
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        else:
            box = cv2.boxPoints(((cx, cy), (2 * rx, 2 * ry), angle if rng.random() < 0.5 else 0.0))
            cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
        if mask.sum() >= _MIN_REGION * h * w:
            return mask.astype(bool), (cx, cy)
    raise RuntimeError(f"could not draw a region of at least {_MIN_REGION:.0%} of a {h}x{w} image")  # pragma: no cover


def _make_image(rng: np.random.Generator, index: int, h: int, w: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One image and its masks.

    Returns:
        image: (H, W, 3) uint8 BGR.
        masks: class name -> (H, W) bool visible mask, for every class (all False when absent).
    """
    k = len(_CLASSES)
    forced = index % k
    n_classes = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    others = rng.permutation([c for c in range(k) if c != forced])[: n_classes - 1]
    order = [*others.tolist(), forced]  # paint order; the forced class is painted last, so it is fully visible
    regions = {c: _region(rng, h, w) for c in order}
    textures = {c: _texture(_CLASSES[c], rng, h, w, regions[c][1]) for c in order}

    def visible(kept: list[int]) -> dict[int, np.ndarray]:
        out, covered = {}, np.zeros((h, w), bool)
        for c in reversed(kept):
            out[c] = regions[c][0] & ~covered
            covered |= regions[c][0]
        return out

    kept = order
    while True:  # leave out the first class whose visible part is a sliver; its removal uncovers others
        vis = visible(kept)
        small = [c for c in kept if vis[c].sum() < _MIN_VISIBLE * h * w]
        if not small:
            break
        kept = [c for c in kept if c != small[0]]

    image = _background(rng, h, w)
    for c in kept:
        image[vis[c]] = textures[c][vis[c]]
    image += rng.normal(0.0, 6.0, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    masks = {name: vis.get(c, np.zeros((h, w), bool)) for c, name in enumerate(_CLASSES)}
    return image, masks


def _write_split(data_dir: Path, split: str, n: int, seed: int, h: int, w: int) -> pd.DataFrame:
    """Write the images of one split; return its labels (Image_Label, EncodedPixels)."""
    key, prefix, folder = _SPLITS[split]
    rows: list[tuple[str, str]] = []
    for i in progress(range(n), desc=f"demo {split} images", unit="img", disable=n < 200):
        rng = np.random.default_rng([seed, key, i])
        image, masks = _make_image(rng, i, h, w)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV built without JPEG
            raise RuntimeError("cv2.imencode could not write a JPEG (OpenCV built without libjpeg?)")
        image_id = f"{prefix}{i:04d}.jpg"
        atomic_write_bytes(data_dir / folder / image_id, buf.tobytes())
        rows.extend((f"{image_id}_{name}", rle_encode(masks[name], order=_PRESET.rle_order)) for name in _CLASSES)
    return pd.DataFrame(rows, columns=list(_PRESET.submission_columns))


def _params(seed: int, n_train: int, n_test: int, height: int, width: int) -> dict:
    return {
        "generator": "kitlib.demo",
        "version": DEMO_VERSION,
        "preset": _PRESET.name,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "height": height,
        "width": width,
        "jpeg_quality": JPEG_QUALITY,
        "classes": list(_CLASSES),
    }


def _is_complete(data_dir: Path, params: dict) -> bool:
    """True when the marker holds ``params`` and every file it promises exists."""
    try:
        if read_json(data_dir / MARKER) != params:
            return False
    except (FileNotFoundError, ValueError):
        return False
    files = [_PRESET.label_file, _PRESET.sample_submission, TRUTH_FILE]
    for split, n in (("train", params["n_train"]), ("test", params["n_test"])):
        _, prefix, folder = _SPLITS[split]
        files += [f"{folder}/{prefix}{i:04d}.jpg" for i in range(n)]
    return all((data_dir / f).is_file() for f in files)


def _check_not_foreign(data_dir: Path) -> None:
    """Refuse to write over a real competition's train.csv (a folder with no marker and non-demo labels)."""
    path = data_dir / _PRESET.label_file
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        header, first = f.readline().strip(), f.readline().strip()
    names = "|".join(map(re.escape, _CLASSES))
    if header != ",".join(_PRESET.submission_columns) or not re.match(rf"^d\d{{4,}}\.jpg_({names}),", first):
        raise FileExistsError(
            f"{path} exists and is not a demo label file (header {header!r}, first row {first[:60]!r}); "
            f"make the demo in an empty folder or pass overwrite=True"
        )


def _remove_stale(data_dir: Path, keep: dict[str, set[str]]) -> None:
    """Delete demo-named images (d0000.jpg, t0000.jpg, ...) that the new demo does not write."""
    for folder, names in keep.items():
        path = data_dir / folder
        if not path.is_dir():
            continue
        stale = [p for p in path.iterdir() if _DEMO_IMAGE.match(p.name) and p.name not in names]
        for p in stale:
            p.unlink()
        if stale:
            log.info("removed %d stale demo images from %s", len(stale), path)


def make_demo(
    data_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 80,
    n_test: int = 20,
    height: int = 128,
    width: int = 192,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic demo competition into ``data_dir`` (see the module docstring for the layout).

    The same arguments give byte-identical files. The defaults (80 train, 20 test images of 128x192) make a full
    5-fold training and prediction run on 2 CPU cores in a few minutes; writing them takes about a second.

    Args:
        data_dir: folder to write into; created if needed. Usually ``data/demo``.
        seed: non-negative integer; every image and mask follows from it.
        n_train: number of train images (``d0000.jpg`` ...), >= 1.
        n_test: number of test images (``t0000.jpg`` ...), >= 1.
        height: image height in pixels, >= 32 (the preset's 128 by default).
        width: image width in pixels, >= 32 (the preset's 192 by default).
        overwrite: rebuild even when ``data_dir`` already holds a complete demo made with the same arguments, and
            write even over a ``train.csv`` that is not a demo's.
    Returns:
        ``data_dir`` as a Path. A folder that already holds a complete demo (``demo.json`` with the same parameters
        and every file present) is returned untouched; a half-written one (no marker), or one made with other
        parameters, is rebuilt: the marker is removed first and demo images the new demo does not write are deleted.
    Raises:
        ValueError: a negative seed, fewer than 1 image per split, or a side under 32 pixels.
        FileExistsError: ``data_dir/train.csv`` exists, is not a demo's and ``overwrite`` is False.
    """
    for name, value, low in (("seed", seed, 0), ("n_train", n_train, 1), ("n_test", n_test, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if min(height, width) < 32:
        raise ValueError(f"height and width must be >= 32 pixels, got {height}x{width}")
    data_dir = Path(data_dir)
    params = _params(int(seed), int(n_train), int(n_test), int(height), int(width))
    if not overwrite:
        if _is_complete(data_dir, params):
            log.info("demo already complete in %s (seed %d, %d train, %d test); not rewritten", data_dir, seed,
                     n_train, n_test)  # fmt: skip
            return data_dir
        if not (data_dir / MARKER).is_file():
            _check_not_foreign(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).unlink(missing_ok=True)  # no marker until every file is rewritten
    _remove_stale(data_dir, {
        _PRESET.image_dir: {f"d{i:04d}.jpg" for i in range(n_train)},
        _PRESET.test_image_dir: {f"t{i:04d}.jpg" for i in range(n_test)},
    })  # fmt: skip

    train = _write_split(data_dir, "train", params["n_train"], params["seed"], params["height"], params["width"])
    truth = _write_split(data_dir, "test", params["n_test"], params["seed"], params["height"], params["width"])
    sample = truth.assign(EncodedPixels="1 1")
    write_csv(data_dir / _PRESET.label_file, train)
    write_csv(data_dir / TRUTH_FILE, truth)
    write_csv(data_dir / _PRESET.sample_submission, sample)
    write_json(data_dir / MARKER, params)  # last: the folder is complete
    empty = (train["EncodedPixels"] == "").mean()
    log.info("wrote demo to %s: %d train, %d test images of %dx%d, %.0f%% empty train masks", data_dir, n_train,
             n_test, height, width, 100 * empty)  # fmt: skip
    return data_dir


def score_submission(submission: str | os.PathLike, data_dir: str | os.PathLike) -> dict:
    """Score a demo submission against the hidden ``test_truth.csv``, as Kaggle would score it on the private set.

    The truth is decoded at the image size and resized to the scoring size (64, 96) with nearest-neighbour
    interpolation (the module docstring); the submission is decoded at the scoring size.

    Args:
        submission: a submission CSV (``Image_Label,EncodedPixels``) for the demo's test images.
        data_dir: the demo folder (``demo.json``, ``test_truth.csv``).
    Returns:
        ``{"dice": mean Dice over (image, class) pairs (1 when both masks are empty), "dice_per_class": {...},
        "empty_dice": the score of an all-empty submission, "n_images"}``.
    Raises:
        FileNotFoundError: not a demo folder, or no submission file.
        ValueError: the submission lacks rows of the truth (the message names the first few) or has bad RLE.
    """
    from kitlib.metrics import dice_per_image_class
    from kitlib.rle import rle_decode
    from kitlib.submit import read_submission

    data_dir = Path(data_dir)
    params = read_json(data_dir / MARKER)
    truth = read_submission(data_dir / TRUTH_FILE).set_index(_PRESET.submission_columns[0]).iloc[:, 0]
    pred = read_submission(submission).set_index(_PRESET.submission_columns[0]).iloc[:, 0]
    missing = [key for key in truth.index if key not in pred.index]
    if missing:
        raise ValueError(f"{submission}: {len(missing)} row(s) of the truth missing, e.g. {missing[:3]}")
    h, w = int(params["height"]), int(params["width"])
    size = tuple(_PRESET.submission_size)
    image_ids = sorted({key.rsplit("_", 1)[0] for key in truth.index})
    true = np.zeros((len(image_ids), len(_CLASSES), *size), np.uint8)
    got = np.zeros_like(true)
    for i, image_id in enumerate(image_ids):
        for k, name in enumerate(_CLASSES):
            key = f"{image_id}_{name}"
            mask = rle_decode(truth[key], (h, w), order=_PRESET.rle_order)
            true[i, k] = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            got[i, k] = rle_decode(pred[key], size, order=_PRESET.rle_order)
    dice = dice_per_image_class(got, true, empty_score=1.0)
    empty = dice_per_image_class(np.zeros_like(true), true, empty_score=1.0)
    return {
        "dice": float(dice.mean()),
        "dice_per_class": dict(zip(_CLASSES, map(float, dice.mean(0)), strict=True)),
        "empty_dice": float(empty.mean()),
        "n_images": len(image_ids),
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m kitlib.demo DATA_DIR [--seed S] [--n-train N] [--n-test N] [--overwrite]``;
    ``python -m kitlib.demo DATA_DIR --score SUBMISSION.csv`` prints the submission's test Dice."""
    parser = argparse.ArgumentParser(prog="python -m kitlib.demo", description="Write the synthetic demo competition.")
    parser.add_argument("data_dir", help="folder to write the demo competition into, e.g. data/demo")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-train", type=int, default=80, help="number of train images (default 80)")
    parser.add_argument("--n-test", type=int, default=20, help="number of test images (default 20)")
    parser.add_argument("--height", type=int, default=128, help="image height in pixels (default 128)")
    parser.add_argument("--width", type=int, default=192, help="image width in pixels (default 192)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a complete demo is there")
    parser.add_argument("--score", metavar="SUBMISSION", help="score this submission on the hidden test truth")
    args = parser.parse_args(argv)
    if args.score:
        result = score_submission(args.score, args.data_dir)
        print(f"test Dice {result['dice']:.4f} (all-empty {result['empty_dice']:.4f}) on {result['n_images']} images")
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = make_demo(args.data_dir, seed=args.seed, n_train=args.n_train, n_test=args.n_test, height=args.height,
                     width=args.width, overwrite=args.overwrite)  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
