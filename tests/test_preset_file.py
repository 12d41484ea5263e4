"""A user's own competition as a preset file (kitlib.presets.load_preset_file): the fields checked one by one, the
COCO classes read from the label file, and the resolved preset saved in the stage configs so that a later stage
rebuilds it without the file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from kitlib.presets import PRESETS, PresetFileError, get_preset, is_preset_file, load_preset_file, preset_fields
from kitlib.recipes import TASK_DEFAULTS

#: The tiny COCO competition's preset file: no classes (read from train.json), no sample submission.
TINY_COCO_PRESET = {
    "name": "shapes",
    "task": "multiclass",
    "label_format": "coco_json",
    "label_file": "train.json",
    "image_dir": "images",
    "test_image_dir": "images",
    "test_file": "test.json",
    "submission_columns": ["image_id", "PredictionString"],
    "submission_format": "class_ids",
    "submission_size": [32, 32],
    "metric": "miou",
    "rle_order": "C",
    "description": "tiny COCO set of the tests: discs and squares on noise, 64x64",
}


def _polygon(kind: str, cx: int, cy: int, r: int) -> list[float]:
    if kind == "disc":
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        return [float(v) for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))]
    return [float(v) for v in (cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r)]


def write_tiny_coco(root: Path, n_train: int = 8, n_test: int = 3, seed: int = 0) -> Path:
    """A COCO competition folder: 64x64 images under images/ with a bright disc (category 2) in the left half and a
    dark square (category 3) in the right half, an unused parent category (1, "shape", no annotation), train.json, and test.json listing the
    test images without annotations; no sample submission."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 1, "name": "shape", "supercategory": "none"}, {"id": 2, "name": "disc", "supercategory": "shape"},
                  {"id": 3, "name": "square", "supercategory": "shape"}]  # fmt: skip
    images, annotations = [], []
    for i in range(n_train + n_test):
        name = f"img_{i:02d}.png"
        image = rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)
        for kind, cat, colour, left in (("disc", 2, 235, 4), ("square", 3, 20, 36)):  # side by side, never overlapping
            cx, cy, r = left + int(rng.integers(10, 18)), int(rng.integers(12, 52)), int(rng.integers(6, 10))
            poly = _polygon(kind, cx, cy, r)
            cv2.fillPoly(image, [np.round(np.array(poly).reshape(-1, 2)).astype(np.int32)], (colour,) * 3)
            if i < n_train:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                                    "segmentation": [poly], "area": float((2 * r) ** 2), "iscrowd": 0})  # fmt: skip
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / name), image)
        images.append({"id": i + 1, "file_name": name, "height": 64, "width": 64})
    (root / "train.json").write_text(json.dumps({"images": images[:n_train], "annotations": annotations,
                                                 "categories": categories}))  # fmt: skip
    (root / "test.json").write_text(json.dumps({"images": images[n_train:], "categories": categories}))
    return root


def write_preset(path: Path, **changes) -> Path:
    fields = {**TINY_COCO_PRESET, **changes}
    path.write_text(yaml.safe_dump({k: v for k, v in fields.items() if v is not None}, sort_keys=False))
    return path
