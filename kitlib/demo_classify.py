"""A small synthetic image-classification competition in the Cassava Leaf Disease layout, to run the classification
track of the kit (00_eda -> 40_submit) on a CPU in minutes.

``make_classification_demo(data_dir)`` writes, deterministically from a seed::

    data_dir/
      train.csv              image_id,label: one row per train image, label an integer 0..4 (``CLASSES`` order)
      train_images/c0000.jpg ...   (H, W) = (96, 128) by default, BGR JPEG at quality 90
      test_images/e0000.jpg ...
      sample_submission.csv  image_id,label: every test image, label 4 (as Cassava's sample submission)
      test_truth.csv         the hidden labels of the test images, in the format of train.csv; a competition would
                             keep it private (``score_classification_submission``: accuracy, as Cassava is scored)
      noisy_ids.csv          with ``label_noise`` only: the train images whose label was corrupted on purpose
                             (image_id, label as written in train.csv, true_label), hidden like test_truth.csv
      demo.json              the parameters; written last, it marks the folder complete

The preset is ``kitlib.presets.PRESETS["demo_classify"]``: classification, classes Stripes, Dots, Checker, Blob,
Plain. Each image is a smooth noisy "leaf" background; a labelled image carries one region (10-45 % of the image) of
its class's texture (``kitlib._synthetic``'s, shared with the segmentation demo), and a third of the images also carry
a smaller distractor region (at most half the main region's area) of another texture, so the label is the texture of
the *largest* region, as a leaf's disease is the one that covers it. "Plain" images (Cassava's "Healthy") have no
main region, only a distractor in a third of them. Labels are drawn with Cassava-like imbalance (``CLASS_PRIORS``: the
fourth class is the most common, as Cassava Mosaic Disease is with 61 %). Image ``i`` of a split has its own generator,
``np.random.default_rng([seed, split, i])``: the first images do not change when ``n_train`` grows.

Run it from a shell: ``python -m kitlib.demo data/demo_classify --preset demo_classify`` (``kitlib.demo.main``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kitlib._private import progress
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
)
from kitlib.io import atomic_write_bytes, read_json, write_csv, write_json
from kitlib.presets import PRESETS

__all__ = ["make_classification_demo", "score_classification_submission", "CLASS_PRIORS", "DEMO_VERSION"]

log = logging.getLogger(__name__)

#: Bumped whenever the generator changes what it draws: a folder made by another version is rebuilt.
DEMO_VERSION = 1
_PRESET = PRESETS["demo_classify"]
_CLASSES = _PRESET.classes
_PLAIN = len(_CLASSES) - 1  # "Plain": no main region
#: Probability of each label (Cassava-like imbalance: 0.05 / 0.10 / 0.11 / 0.61 / 0.12 there).
CLASS_PRIORS = (0.12, 0.16, 0.14, 0.40, 0.18)
_SPLITS = {"train": (0, "c", _PRESET.image_dir), "test": (1, "e", _PRESET.test_image_dir)}  # rng key, id prefix, dir
_MAIN_AREA = (0.10, 0.45)  # fraction of the image covered by the labelled region
_DISTRACTOR_P = 1 / 3


def _sized_region(rng: np.random.Generator, h: int, w: int, low: float, high: float) -> tuple[np.ndarray, tuple]:
    """A ``kitlib._synthetic.region`` covering [low, high] of the image (the closest of 50 draws otherwise)."""
    best, best_gap = None, np.inf
    for _ in range(50):
        mask, center = region(rng, h, w)
        area = mask.mean()
        gap = max(low - area, area - high, 0.0)
        if gap < best_gap:
            best, best_gap = (mask, center), gap
        if gap == 0.0:
            break
    return best


def _make_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, int]:
    """One image and its label: (H, W, 3) uint8 BGR, int in 0..4 (the module docstring)."""
    label = int(rng.choice(len(_CLASSES), p=CLASS_PRIORS))
    image = background(rng, h, w)
    image *= np.asarray((0.75, 1.15, 0.8), np.float32)  # a green cast: the "leaf"
    main_area = 0.0
    if label != _PLAIN:
        mask, center = _sized_region(rng, h, w, *_MAIN_AREA)
        image[mask] = texture(_CLASSES[label], rng, h, w, center)[mask]
        main_area = float(mask.mean())
    if rng.random() < _DISTRACTOR_P:
        other = int(rng.choice([c for c in range(_PLAIN) if c != label]))
        high = 0.5 * main_area if main_area else _MAIN_AREA[0]
        mask, center = _sized_region(rng, h, w, 0.3 * high, high)
        image[mask] = texture(_CLASSES[other], rng, h, w, center)[mask]
    image += rng.normal(0.0, 6.0, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _write_split(data_dir: Path, split: str, n: int, seed: int, h: int, w: int) -> pd.DataFrame:
    """Write the images of one split; return its labels (image_id, label)."""
    key, prefix, folder = _SPLITS[split]
    rows = []
    for i in progress(range(n), desc=f"demo {split} images", unit="img", disable=n < 500):
        image, label = _make_image(np.random.default_rng([seed, key, i]), h, w)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV built without JPEG
            raise RuntimeError("cv2.imencode could not write a JPEG (OpenCV built without libjpeg?)")
        image_id = f"{prefix}{i:04d}.jpg"
        atomic_write_bytes(data_dir / folder / image_id, buf.tobytes())
        rows.append((image_id, label))
    return pd.DataFrame(rows, columns=list(_PRESET.submission_columns))


def make_classification_demo(
    data_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 200,
    n_test: int = 50,
    height: int = 96,
    width: int = 128,
    overwrite: bool = False,
    label_noise: float = 0.0,
) -> Path:
    """Write the synthetic classification demo into ``data_dir`` (the layout: the module docstring).

    The same arguments give byte-identical files. The defaults (200 train, 50 test images of 96x128) make a 5-fold
    training and prediction run on 2 CPU cores in a few minutes; writing them takes about a second.

    Args:
        data_dir: folder to write into; created if needed. Usually ``data/demo_classify``.
        seed: non-negative integer; every image and label follows from it.
        n_train: number of train images (``c0000.jpg`` ...), >= 1.
        n_test: number of test images (``e0000.jpg`` ...), >= 1.
        height: image height in pixels, >= 32.
        width: image width in pixels, >= 32.
        overwrite: rebuild even when ``data_dir`` holds a complete demo made with the same arguments, and write even
            over a ``train.csv`` that is not a demo's.
        label_noise: the fraction in [0, 1) of train images whose label is replaced, on purpose, by another class drawn
            uniformly (symmetric label noise, as in the co-teaching paper's benchmarks); round(label_noise x n_train)
            images, listed in the hidden ``noisy_ids.csv``. The images and the test truth are the clean demo's.
    Returns:
        ``data_dir`` as a Path; a folder that already holds a complete demo of the same parameters is untouched.
    Raises:
        ValueError: a negative seed, fewer than 1 image per split, a side under 32 pixels, label_noise outside [0, 1).
        FileExistsError: ``data_dir/train.csv`` exists, is not a demo's and ``overwrite`` is False.
    """
    check_demo_args(seed, n_train, n_test, height, width)
    data_dir = Path(data_dir)
    params = {
        "generator": __name__, "version": DEMO_VERSION, "preset": _PRESET.name, "seed": int(seed),
        "n_train": int(n_train), "n_test": int(n_test), "height": int(height), "width": int(width),
        "jpeg_quality": JPEG_QUALITY, "classes": list(_CLASSES), "class_priors": list(CLASS_PRIORS),
    }  # fmt: skip
    noisy, noise_rng = noisy_rows(params["seed"], params["n_train"], float(label_noise))
    if label_noise:  # a clean demo's marker stays as it was
        params["label_noise"] = float(label_noise)
    images = {folder: {f"{prefix}{i:04d}.jpg" for i in range(params[f"n_{split}"])}
              for split, (_, prefix, folder) in _SPLITS.items()}  # fmt: skip
    if not prepare_dir(data_dir, params, _PRESET, images, rf"^{_SPLITS['train'][1]}\d{{4,}}\.jpg,\d+$", overwrite):
        return data_dir
    train = _write_split(data_dir, "train", params["n_train"], params["seed"], params["height"], params["width"])
    truth = _write_split(data_dir, "test", params["n_test"], params["seed"], params["height"], params["width"])
    write_noisy_ids(data_dir, _corrupt(train, noisy, noise_rng) if label_noise else None)
    write_csv(data_dir / _PRESET.label_file, train)
    write_csv(data_dir / TRUTH_FILE, truth)
    write_csv(data_dir / _PRESET.sample_submission, truth.assign(label=_PLAIN))
    write_json(data_dir / MARKER, params)  # last: the folder is complete
    counts = train["label"].value_counts().reindex(range(len(_CLASSES)), fill_value=0).tolist()
    log.info("wrote the classification demo to %s: %d train (per class %s), %d test images of %dx%d", data_dir,
             n_train, counts, n_test, height, width)  # fmt: skip
    return data_dir


def _corrupt(train: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Replace, in place, the label of ``rows`` of ``train`` by another class drawn uniformly; the noisy_ids table."""
    true = train["label"].to_numpy()[rows]
    noisy = (true + rng.integers(1, len(_CLASSES), size=len(rows))) % len(_CLASSES)  # never the true class
    train.loc[train.index[rows], "label"] = noisy
    return pd.DataFrame({"image_id": train["image_id"].to_numpy()[rows], "label": noisy, "true_label": true})


def score_classification_submission(submission: str | os.PathLike, data_dir: str | os.PathLike) -> dict:
    """Score a classification demo submission against the hidden ``test_truth.csv`` (accuracy, as Cassava).

    Args:
        submission: a submission CSV (``image_id,label``) for the demo's test images.
        data_dir: the demo folder (``demo.json``, ``test_truth.csv``).
    Returns:
        ``{"accuracy", "accuracy_per_class": {class: recall}, "majority_accuracy": the score of predicting the most
        common train label everywhere, "n_images"}``.
    Raises:
        FileNotFoundError: not a demo folder, or no submission file.
        ValueError: the submission lacks test images (named) or has a label outside 0..4 (rows named).
    """
    from kitlib.submit import read_submission

    data_dir = Path(data_dir)
    read_json(data_dir / MARKER)  # FileNotFoundError outside a demo folder
    id_col, label_col = _PRESET.submission_columns
    truth = read_submission(data_dir / TRUTH_FILE).set_index(id_col)[label_col].astype(int)
    pred = read_submission(submission).set_index(id_col)[label_col]
    missing = [i for i in truth.index if i not in pred.index]
    if missing:
        raise ValueError(f"{submission}: {len(missing)} test image(s) missing, e.g. {missing[:3]}")
    got = pd.to_numeric(pred.reindex(truth.index), errors="coerce")
    bad = got.index[got.isna() | ~got.isin(range(len(_CLASSES)))].tolist()
    if bad:
        raise ValueError(f"{submission}: label not an integer in 0..{len(_CLASSES) - 1} for {bad[:5]}")
    correct = got.astype(int).to_numpy() == truth.to_numpy()
    majority = int(pd.read_csv(data_dir / _PRESET.label_file)["label"].mode()[0])
    per_class = {name: float(correct[truth.to_numpy() == k].mean()) if (truth == k).any() else None
                 for k, name in enumerate(_CLASSES)}  # fmt: skip
    return {
        "accuracy": float(correct.mean()),
        "accuracy_per_class": per_class,
        "majority_accuracy": float((truth == majority).mean()),
        "n_images": len(truth),
    }
