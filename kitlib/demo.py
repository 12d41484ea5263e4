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
      noisy_ids.csv          with ``label_noise`` only: the train images whose masks were given the wrong classes on
                             purpose (image_id, shift), hidden like test_truth.csv
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
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kitlib._private import lookup, progress
from kitlib._synthetic import (
    JPEG_QUALITY,
    MARKER,
    TRUTH_FILE,
    background,
    check_demo_args,
    noisy_rows,
    prepare_dir,
    region,
    texture,
    write_noisy_ids,
)  # fmt: skip
from kitlib.demo_classify import make_classification_demo, score_classification_submission
from kitlib.io import atomic_write_bytes, read_json, write_csv, write_json
from kitlib.presets import PRESETS
from kitlib.rle import rle_encode

__all__ = [
    "DEMOS", "make_demo", "make_preset_demo", "score_submission", "score_demo", "DEMO_VERSION", "MARKER",
    "TRUTH_FILE", "JPEG_QUALITY", "main",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Bumped whenever the generator changes what it draws: a folder made by another version is rebuilt.
DEMO_VERSION = 1

_PRESET = PRESETS["demo"]
_CLASSES = _PRESET.classes
_SPLITS = {"train": (0, "d", _PRESET.image_dir), "test": (1, "t", _PRESET.test_image_dir)}  # rng key, id prefix, dir
_MIN_VISIBLE = 0.02  # smallest visible part of a class, fraction of the image


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
    regions = {c: region(rng, h, w) for c in order}
    textures = {c: texture(_CLASSES[c], rng, h, w, regions[c][1]) for c in order}

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

    image = background(rng, h, w)
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


def make_demo(
    data_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 80,
    n_test: int = 20,
    height: int = 128,
    width: int = 192,
    overwrite: bool = False,
    label_noise: float = 0.0,
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
        label_noise: the fraction in [0, 1) of train images whose masks get the wrong classes on purpose: each
            class's mask is written under class (c + shift) mod 4, shift drawn from 1..3 (every object keeps its
            outline and is labelled as another texture, an annotator's class mix-up); round(label_noise x n_train)
            images, listed in the hidden ``noisy_ids.csv``. The images and the test truth are the clean demo's.
    Returns:
        ``data_dir`` as a Path. A folder that already holds a complete demo (``demo.json`` with the same parameters
        and every file present) is returned untouched; a half-written one (no marker), or one made with other
        parameters, is rebuilt: the marker is removed first and demo images the new demo does not write are deleted.
    Raises:
        ValueError: a negative seed, fewer than 1 image per split, a side under 32 pixels, label_noise outside [0, 1).
        FileExistsError: ``data_dir/train.csv`` exists, is not a demo's and ``overwrite`` is False.
    """
    check_demo_args(seed, n_train, n_test, height, width)
    data_dir = Path(data_dir)
    params = _params(int(seed), int(n_train), int(n_test), int(height), int(width))
    noisy, noise_rng = noisy_rows(params["seed"], params["n_train"], float(label_noise))
    if label_noise:  # a clean demo's marker stays as it was
        params["label_noise"] = float(label_noise)
    images = {
        _PRESET.image_dir: {f"d{i:04d}.jpg" for i in range(n_train)},
        _PRESET.test_image_dir: {f"t{i:04d}.jpg" for i in range(n_test)},
    }
    names = "|".join(map(re.escape, _CLASSES))
    if not prepare_dir(data_dir, params, _PRESET, images, rf"^d\d{{4,}}\.jpg_({names}),", overwrite):
        return data_dir

    train = _write_split(data_dir, "train", params["n_train"], params["seed"], params["height"], params["width"])
    truth = _write_split(data_dir, "test", params["n_test"], params["seed"], params["height"], params["width"])
    sample = truth.assign(EncodedPixels="1 1")
    write_noisy_ids(data_dir, _swap_classes(train, noisy, noise_rng) if label_noise else None)
    write_csv(data_dir / _PRESET.label_file, train)
    write_csv(data_dir / TRUTH_FILE, truth)
    write_csv(data_dir / _PRESET.sample_submission, sample)
    write_json(data_dir / MARKER, params)  # last: the folder is complete
    empty = (train["EncodedPixels"] == "").mean()
    log.info("wrote demo to %s: %d train, %d test images of %dx%d, %.0f%% empty train masks", data_dir, n_train,
             n_test, height, width, 100 * empty)  # fmt: skip
    return data_dir


def _swap_classes(train: pd.DataFrame, images: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Give the masks of ``images`` (row indices of the images, 4 label rows each in class order) the wrong classes,
    in place: class c's mask goes to class (c + shift) mod 4 (a cyclic shift moves every mask, and two non-empty masks
    never coincide, so every chosen image's labels change); the noisy_ids table."""
    k = len(_CLASSES)
    shifts = rng.integers(1, k, size=len(images))
    column = train.columns[1]
    for i, shift in zip(images, shifts, strict=True):
        rows = train.index[i * k : (i + 1) * k]
        train.loc[rows, column] = np.roll(train.loc[rows, column].to_numpy(), shift)
    ids = [train.iloc[i * k, 0].rsplit("_", 1)[0] for i in images]
    return pd.DataFrame({"image_id": ids, "shift": shifts})


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


#: The built-in synthetic competitions: preset name -> (writer, scorer). ``./run_all.sh --preset NAME`` without
#: ``--data`` writes ``data/NAME`` with the writer and scores the submission on the hidden test truth at the end.
DEMOS: dict[str, tuple[Callable[..., Path], Callable[..., dict]]] = {
    "demo": (make_demo, score_submission),
    "demo_classify": (make_classification_demo, score_classification_submission),
}


def make_preset_demo(preset: str, data_dir: str | os.PathLike, **kwargs) -> Path:
    """Write the synthetic competition of ``preset`` (a ``DEMOS`` key) into ``data_dir``; ``kwargs`` go to its writer.

    Raises:
        KeyError: not a demo preset (the message lists them).
    """
    return lookup(DEMOS, preset, "demo preset")[0](data_dir, **kwargs)


def score_demo(submission: str | os.PathLike, data_dir: str | os.PathLike) -> tuple[str, dict]:
    """Score a submission on the hidden test truth of the demo in ``data_dir`` (its ``demo.json`` names the preset).

    Returns:
        ``(line, result)``: a one-line summary ("test Dice 0.91 (all-empty 0.52) on 20 images" or "test accuracy 0.88
        (majority class 0.40) on 50 images") and the scorer's dict.
    Raises:
        FileNotFoundError: not a demo folder. KeyError: a marker of an unknown demo.
    """
    preset = read_json(Path(data_dir) / MARKER).get("preset", "demo")
    result = lookup(DEMOS, preset, "demo preset")[1](submission, data_dir)
    if "dice" in result:
        line = f"test Dice {result['dice']:.4f} (all-empty {result['empty_dice']:.4f}) on {result['n_images']} images"
    else:
        line = (f"test accuracy {result['accuracy']:.4f} (majority class {result['majority_accuracy']:.4f}) on "
                f"{result['n_images']} images")  # fmt: skip
    return line, result


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m kitlib.demo DATA_DIR [--preset demo_classify] [--seed S] [--n-train N] [--n-test N]
    [--label-noise FRAC] [--overwrite]``; ``python -m kitlib.demo DATA_DIR --score SUBMISSION.csv`` prints the
    submission's test score; ``python -m kitlib.demo --list`` prints the demo presets."""
    parser = argparse.ArgumentParser(prog="python -m kitlib.demo", description="Write a synthetic demo competition.")
    parser.add_argument("data_dir", nargs="?", help="folder to write the demo competition into, e.g. data/demo")
    parser.add_argument("--preset", default="demo", help=f"which demo: {', '.join(DEMOS)} (default demo)")
    parser.add_argument("--list", action="store_true", help="print the demo presets, one a line, and exit")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-train", type=int, help="number of train images (default: the demo's, 80 / 200)")
    parser.add_argument("--n-test", type=int, help="number of test images (default: the demo's, 20 / 50)")
    parser.add_argument("--height", type=int, help="image height in pixels (default: the demo's, 128 / 96)")
    parser.add_argument("--width", type=int, help="image width in pixels (default: the demo's, 192 / 128)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a complete demo is there")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        metavar="FRAC",
        help="corrupt this fraction of the train labels on purpose (listed in noisy_ids.csv)",
    )
    parser.add_argument("--score", metavar="SUBMISSION", help="score this submission on the hidden test truth")
    parser.add_argument("--quiet", action="store_true", help="log warnings only (run_all.sh without --verbose)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(DEMOS))
        return
    if not args.data_dir:
        parser.error("DATA_DIR is required")
    if args.score:
        print(score_demo(args.score, args.data_dir)[0])
        return
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    sizes = {k: getattr(args, k) for k in ("n_train", "n_test", "height", "width") if getattr(args, k) is not None}
    try:
        noise = {"label_noise": args.label_noise} if args.label_noise else {}
        path = make_preset_demo(args.preset, args.data_dir, seed=args.seed, overwrite=args.overwrite, **sizes, **noise)
    except KeyError as e:
        parser.error(str(e.args[0]))
    print(path)


if __name__ == "__main__":
    main()
