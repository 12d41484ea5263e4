"""COCO instance files: their images, their categories as classes, and their polygons as multiclass semantic masks.

A COCO file (``images``, ``annotations``, ``categories``) is the label format ``coco_json`` (the trash-sorting
contest's, and what labelling tools such as CVAT or Label Studio export). ``load_coco_json`` is its loader in
``kitlib.formats.LOADERS``; ``coco_classes`` reads the classes of a preset file that leaves them out
(``with_label_classes``, called by the stage configs).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib._private import listing, progress
from kitlib.label_checks import CompetitionDataError, check_classes, check_unique
from kitlib.presets import Preset
from kitlib.rle import rle_encode

__all__ = ["coco_classes", "coco_images", "load_coco_json", "read_coco", "with_label_classes"]

log = logging.getLogger(__name__)


def load_coco_json(preset: Preset, data_dir: Path, label_path: Path) -> pd.DataFrame:
    """COCO instances -> multiclass semantic masks, one RLE column per non-background class.

    Categories map to class indices by name (``preset.classes.index(name)``, as the trash-sorting contest's baseline
    paints ``category_names.index(name)``); a category of another name is an error when it has annotations and is
    ignored (logged) when it has none, such as an export's unused parent category. Overlaps are resolved as in the
    trash-sorting contest's baseline: annotations are painted in decreasing area, so a small object on top of a large
    one keeps its pixels. Polygons and RLE segmentations are rasterised with pycocotools, exactly as the COCO API does.
    """
    from pycocotools import mask as coco_mask

    coco = read_coco(label_path)
    categories = _coco_categories(coco, label_path)
    used = {ann.get("category_id") for ann in coco.get("annotations", [])}
    unused = {cid: name for cid, name in categories.items() if cid not in used and name not in preset.classes}
    if unused:
        log.info("%s: %d categor(y/ies) without annotations and not among the classes ignored: %s", label_path,
                 len(unused), listing(unused.values()))  # fmt: skip
    categories = {cid: name for cid, name in categories.items() if cid not in unused}
    check_classes(pd.Series(list(categories.values()), dtype=str), label_path, preset.classes)
    class_index = {cid: preset.classes.index(name) for cid, name in categories.items()}
    images = coco_images(coco, label_path)
    by_image: dict[int, list[dict]] = {}
    unknown = []
    for ann in coco.get("annotations", []):
        if ann.get("category_id") not in class_index:
            unknown.append(str(ann.get("id")))
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    if unknown:
        raise CompetitionDataError(f"{label_path}: {len(unknown)} annotation(s) with an unknown category_id: "
                                   f"{listing(unknown)}", unknown)  # fmt: skip
    orphans = sorted(set(by_image) - set(images["coco_id"]))
    if orphans:
        raise CompetitionDataError(f"{label_path}: annotations refer to {len(orphans)} image id(s) not in 'images': "
                                   f"{listing(orphans)}", [str(o) for o in orphans])  # fmt: skip
    columns: dict[str, list[str]] = {c: [] for c in preset.target_classes}
    bad = []
    for coco_id, file_name, h, w in progress(
        images[["coco_id", "image_id", "height", "width"]].itertuples(index=False),
        total=len(images), desc="rasterising COCO", disable=len(images) < 200,
    ):  # fmt: skip
        label_map = np.zeros((h, w), np.uint8)
        anns = sorted(by_image.get(coco_id, []), key=lambda a: a.get("area", 0), reverse=True)
        for ann in anns:
            try:
                segm = ann["segmentation"]
                if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
                    rles = segm  # a compressed RLE is decoded as it is, as the COCO API's annToRLE does
                else:
                    rles = coco_mask.frPyObjects(segm, h, w)
                m = coco_mask.decode(coco_mask.merge(rles) if isinstance(rles, list) else rles)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                bad.append(f"{file_name} annotation {ann.get('id')} ({type(e).__name__}: {e})")
                continue
            if m.shape[:2] != (h, w):  # an RLE segmentation carries its own size, which must be its image's
                hint = " (width and height swapped?)" if m.shape[:2] == (w, h) else ""
                bad.append(f"{file_name} annotation {ann.get('id')} (its RLE is {m.shape[0]}x{m.shape[1]}, the "
                           f"image {h}x{w} (H x W){hint})")  # fmt: skip
                continue
            label_map[m.astype(bool)] = class_index[ann["category_id"]]
        for k, cls in enumerate(preset.target_classes, start=1):
            columns[cls].append(rle_encode(label_map == k, order=preset.rle_order))
    if bad:
        raise CompetitionDataError(f"{label_path}: {len(bad)} unreadable segmentation(s): {listing(bad, 3)}", bad)
    df = images.drop(columns="coco_id").assign(**columns)
    df["image_path"] = [str(data_dir / preset.image_dir / f) for f in df["image_id"]]
    return df


def _coco_categories(coco: dict, path: Path) -> dict[int, str]:
    """category id -> name, in id order. Raises CompetitionDataError: a record without id/name, a repeated name."""
    try:
        categories = {c["id"]: str(c["name"]) for c in coco.get("categories", [])}
    except (KeyError, TypeError) as e:
        raise CompetitionDataError(f"{path}: a category record without id/name ({e})") from None
    check_unique(pd.Series(list(categories.values()), dtype=str), path, "category name")
    try:
        return dict(sorted(categories.items()))
    except TypeError:
        raise CompetitionDataError(f"{path}: category ids of mixed types: {listing(categories)}") from None


def coco_classes(label_path: str | os.PathLike, background: str = "Background") -> tuple[str, ...]:
    """The classes of a COCO label file: the background first, then the categories that have at least one annotation,
    in category-id order (categories without any, such as an export's unused parent category, are dropped and
    logged). A category named like the background (any case) is the background itself.

    Args:
        label_path: the COCO instance file.
        background: the name of class 0.
    Returns:
        ("Background", name of the lowest used id, ...): class index k paints category k's pixels.
    Raises:
        FileNotFoundError: no such file. CompetitionDataError: not a COCO file, a repeated category name, no
            annotated category.
    """
    label_path = Path(label_path)
    coco = read_coco(label_path)
    categories = _coco_categories(coco, label_path)
    used = {ann.get("category_id") for ann in coco.get("annotations", [])}
    dropped = [name for cid, name in categories.items() if cid not in used]
    if dropped:
        log.warning("%s: %d categor(y/ies) without annotations dropped from the classes: %s", label_path,
                    len(dropped), listing(dropped))  # fmt: skip
    names = [name for cid, name in categories.items() if cid in used and name.lower() != background.lower()]
    if not names:
        raise CompetitionDataError(f"{label_path}: no category with annotations: no classes to learn")
    return (background, *names)


def with_label_classes(preset: Preset, data_dir: str | os.PathLike) -> Preset:
    """``preset`` with its classes: itself when it has them, else (a preset file of a ``coco_json`` competition that
    leaves them out) the classes of its label file ``data_dir / preset.label_file`` (``coco_classes``; always the
    competition's own label file, so every stage reads the same classes whatever ``label_file`` a stage is given).

    Raises:
        FileNotFoundError: the label file is absent (the message says to list the classes in the preset file).
        CompetitionDataError: as ``coco_classes``.
    """
    if preset.classes:
        return preset
    path = Path(data_dir).expanduser() / preset.label_file
    if not path.is_file():
        raise FileNotFoundError(f"preset {preset.name!r} leaves out its classes and its label file {path}, where they "
                                "would be read, is absent: list the classes in the preset file")  # fmt: skip
    return preset.replace(classes=coco_classes(path))


def read_coco(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CompetitionDataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(coco, dict) or "images" not in coco:
        raise CompetitionDataError(f"{path}: not a COCO file (no 'images' list)")
    return coco


def coco_images(coco: dict, path: Path) -> pd.DataFrame:
    rows, bad = [], []
    for i, im in enumerate(coco["images"]):
        try:
            rows.append((im["id"], str(im["file_name"]), int(im["height"]), int(im["width"])))
        except (KeyError, TypeError, ValueError):
            bad.append(f"images[{i}]")
    if bad:
        raise CompetitionDataError(f"{path}: {len(bad)} image record(s) without id/file_name/height/width: "
                                   f"{listing(bad)}", bad)  # fmt: skip
    images = pd.DataFrame(rows, columns=["coco_id", "image_id", "height", "width"])
    check_unique(images["image_id"], path, "file_name")
    check_unique(images["coco_id"].astype(str), path, "image id")
    return images
