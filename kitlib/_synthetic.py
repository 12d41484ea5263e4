"""Drawing and folder handling shared by the synthetic competitions (``kitlib.demo``: segmentation,
``kitlib.demo_classify``: classification): class textures, random regions, a smooth background, and the completion
marker that makes a demo folder rebuild only when its parameters change."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kitlib.io import read_json, write_csv
from kitlib.presets import Preset

__all__ = ["MARKER", "TRUTH_FILE", "NOISY_FILE", "JPEG_QUALITY", "TINTS", "MIN_REGION", "background", "texture",
           "region", "check_demo_args", "prepare_dir", "noisy_rows", "write_noisy_ids"]  # fmt: skip

log = logging.getLogger(__name__)

#: Completion marker, written last: the parameters the folder was made with.
MARKER = "demo.json"
#: Hidden truth of the test images (the train label file's format).
TRUTH_FILE = "test_truth.csv"
#: Hidden list of the train images whose labels were corrupted on purpose (``label_noise``); training never reads it.
NOISY_FILE = "noisy_ids.csv"
JPEG_QUALITY = 90
MIN_REGION = 0.04  # smallest drawn region, fraction of the image
#: The textures ``texture`` draws and their per-class BGR gain: a mild colour cue on top of the texture.
TINTS = {
    "Stripes": (0.80, 0.95, 1.15),
    "Dots": (0.85, 1.15, 0.90),
    "Checker": (1.00, 1.00, 1.00),
    "Blob": (1.15, 1.00, 0.85),
}
_DEMO_IMAGE = re.compile(r"^[a-z]\d{4,}\.jpg$")


def check_demo_args(seed: int, n_train: int, n_test: int, height: int, width: int) -> None:
    """Raises ValueError: a negative or non-integer seed, fewer than 1 image per split, or a side under 32 pixels."""
    for name, value, low in (("seed", seed, 0), ("n_train", n_train, 1), ("n_test", n_test, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if min(height, width) < 32:
        raise ValueError(f"height and width must be >= 32 pixels, got {height}x{width}")


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


def texture(name: str, rng: np.random.Generator, h: int, w: int, center: tuple[float, float]) -> np.ndarray:
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
        raise KeyError(f"unknown demo class {name!r}; options: {sorted(TINTS)}")
    return gray.astype(np.float32)[..., None] * np.asarray(TINTS[name], np.float32)


def region(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, tuple[float, float]]:
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
        if mask.sum() >= MIN_REGION * h * w:
            return mask.astype(bool), (cx, cy)
    raise RuntimeError(f"could not draw a region of at least {MIN_REGION:.0%} of a {h}x{w} image")  # pragma: no cover


def _is_complete(data_dir: Path, params: dict, preset: Preset, images: dict[str, set[str]]) -> bool:
    """True when the marker holds ``params`` and every file it promises exists."""
    try:
        if read_json(data_dir / MARKER) != params:
            return False
    except (FileNotFoundError, ValueError):
        return False
    files = [preset.label_file, preset.sample_submission, TRUTH_FILE]
    files += [f"{folder}/{name}" for folder, names in images.items() for name in names]
    return all((data_dir / f).is_file() for f in files)


def _check_not_foreign(data_dir: Path, preset: Preset, first_row: str) -> None:
    """Refuse to write over a real competition's label file (a folder with no marker and non-demo labels)."""
    path = data_dir / preset.label_file
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        header, first = f.readline().strip(), f.readline().strip()
    if header != ",".join(preset.submission_columns) or not re.match(first_row, first):
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


def prepare_dir(
    data_dir: Path, params: dict, preset: Preset, images: dict[str, set[str]], first_row: str, overwrite: bool
) -> bool:
    """Make ``data_dir`` ready for a demo of ``params``, or find it complete.

    Args:
        data_dir: the demo folder.
        params: what the demo is made with (the marker's content).
        preset: the demo's preset (label file, sample submission, columns).
        images: image folder (relative) -> the file names the demo writes there.
        first_row: a regular expression the first data row of a demo's label file matches.
        overwrite: rebuild even a complete folder, and write over a foreign label file.
    Returns:
        False when the folder already holds a complete demo of ``params`` (nothing to write); True after the marker
        was removed and demo images the new demo does not write were deleted.
    Raises:
        FileExistsError: the label file exists, is not a demo's, and ``overwrite`` is False.
    """
    if not overwrite:
        if _is_complete(data_dir, params, preset, images):
            log.info("demo already complete in %s (%s); not rewritten", data_dir, params)
            return False
        if not (data_dir / MARKER).is_file():
            _check_not_foreign(data_dir, preset, first_row)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).unlink(missing_ok=True)  # no marker until every file is rewritten
    _remove_stale(data_dir, images)
    return True


def noisy_rows(seed: int, n: int, fraction: float) -> tuple[np.ndarray, np.random.Generator]:
    """Which of ``n`` train images get a corrupted label: round(fraction x n) distinct row indices (sorted), drawn
    from their own generator ``np.random.default_rng([seed, 2])`` (the splits use keys 0 and 1), so the images are
    those of the clean demo; and that generator, for drawing the corruptions.

    Raises:
        ValueError: a fraction outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {fraction!r}")
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False)), rng


def write_noisy_ids(data_dir: Path, rows: pd.DataFrame | None) -> None:
    """Write the hidden ``noisy_ids.csv`` (``rows``: image_id and what each demo records), or remove a stale one."""
    if rows is None:
        (data_dir / NOISY_FILE).unlink(missing_ok=True)
    else:
        write_csv(data_dir / NOISY_FILE, rows, index=False)
