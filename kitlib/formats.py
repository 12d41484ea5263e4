"""Competition label files -> one canonical table.

``load_competition(preset, data_dir)`` reads a competition folder as the competition ships it and returns one
row per image:

================  ===========================================================================================
``image_id``      str, as the competition writes it ("0011165.jpg", "TRAIN_0000", "1000015157.jpg")
``image_path``    str, absolute path of the image file
``height``        int, image height in pixels (read from the file header)
``width``         int, image width in pixels
targets           RLE presets (clouds, severstal, dacon_building, coco, demo): one str column per class in
                  ``preset.target_classes`` with the RLE at (height, width) in ``preset.rle_order``, "" = empty;
                  ``masks``: a ``mask_path`` column; classification (cassava): an int ``label`` column
================  ===========================================================================================

Bad input fails early, with the file and the offending ids or rows (the first few and a count): missing image
files, duplicated ids, unknown class names, unreadable rows, malformed RLE, sizes that disagree (below). Two explicit
options keep what is good instead: ``drop_missing`` (rows whose image file is absent) and ``drop_invalid`` (rows with
a malformed label).

Sizes are read from the file headers (``kitlib.images.image_size``; the pixels are decoded whole by
``kitlib.images.verify_images`` in ``00_eda``) and checked where there is something to check them against, each file
named with both sizes and "width and height swapped?" for a transpose: an image against its preset's ``image_size``
(Clouds, Severstal, a preset file's), a mask file against its image, a COCO image record (whose size its polygons are
rasterised at) against its file, a COCO RLE against its image (``kitlib.coco``). An RLE column is decoded at its
image's header size and must fit it (runs past H x W fail); an RLE of a swapped size with the same pixel count cannot
be told apart where the preset has no ``image_size``, and nothing guesses one (e.g. from the most common size).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib._private import chunk_rows, listing, progress, row_slices, to_numpy
from kitlib.coco import coco_images, load_coco_json, read_coco
from kitlib.images import image_size, read_mask_file
from kitlib.label_checks import CompetitionDataError, check_classes, check_unique
from kitlib.presets import Preset
from kitlib.rle import is_empty_rle, rle_decode, rle_parse

__all__ = [
    "CompetitionDataError",
    "LOADERS",
    "load_competition",
    "target_columns",
    "load_masks",
    "masks_to_label_map",
    "class_presence",
]

log = logging.getLogger(__name__)

BASE_COLUMNS = ("image_id", "image_path", "height", "width")
#: Columns that only train-only rows fill (``kitlib.train_rows``; "" / None on the competition's rows): a target file
#: (``.npz`` of the cache's mask format, ``kitlib.cache``) standing for the preset's target columns, a soft label row
#: (C,) float32 beside the hard ``label``, and the marker of the rows that join every fold's training set only.
TARGET_FILE_COLUMN = "target_file"
SOFT_LABEL_COLUMN = "soft_label"
TRAIN_ONLY_COLUMN = "train_only"


def target_columns(preset: Preset) -> list[str]:
    """Target columns of a train table of this preset: class names, ``["mask_path"]`` or ``["label"]``."""
    if preset.task == "classification":
        return ["label"]
    if preset.label_format == "mask_folder":
        return ["mask_path"]
    return list(preset.target_classes)


# ----------------------------------------------------------------------------------------------------- files


def _sizes(df: pd.DataFrame, path_column: str = "image_path") -> tuple[list[int], list[int]]:
    """Heights and widths of every file in a column; one error listing every unreadable file."""
    heights, widths, bad = [], [], []
    paths = df[path_column].tolist()
    for image_id, path in progress(
        zip(df["image_id"], paths, strict=True), total=len(paths), desc="image sizes", disable=len(paths) < 2000
    ):
        try:
            h, w = image_size(path)
        except (ValueError, FileNotFoundError) as e:
            bad.append(f"{image_id} ({e})")
            h = w = -1
        heights.append(h)
        widths.append(w)
    if bad:
        raise CompetitionDataError(f"{len(bad)} unreadable image file(s): {listing(bad, 3)}", bad)
    return heights, widths


class _FileIndex:
    """Files under a folder by base name, listed once on first use (to re-home paths like '/content/x.png')."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, name: str) -> Path | None:
        if self._by_name is None:
            self._by_name = {}
            for dirpath, _, filenames in os.walk(self.root):
                for f in filenames:
                    self._by_name.setdefault(f, []).append(Path(dirpath) / f)
        hits = self._by_name.get(name, [])
        return hits[0] if len(hits) == 1 else None


def _resolve_paths(candidates: pd.Series, image_ids: pd.Series, data_dir: Path, image_dir: str) -> list[str]:
    """Absolute image paths: the path as written (relative to data_dir), else ``image_dir/<file name>``, else the
    one file of that name anywhere under data_dir. Unresolved paths are returned as tried (and reported later)."""
    index = _FileIndex(data_dir)
    out = []
    for raw, image_id in zip(candidates, image_ids, strict=True):
        raw = str(raw)
        name = os.path.basename(raw.replace("\\", "/")) or str(image_id)
        for p in (data_dir / raw.lstrip("/") if not os.path.isabs(raw) else Path(raw), data_dir / image_dir / name):
            if p.is_file():
                out.append(str(p.resolve()))
                break
        else:
            found = index.find(name)
            out.append(str(found.resolve()) if found is not None else str(data_dir / image_dir / name))
    return out


# ---------------------------------------------------------------------------------------------------- checks


def _read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CompetitionDataError(f"{path}: unreadable CSV: {e}") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CompetitionDataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def _check_files(df: pd.DataFrame, source: str, drop_missing: bool) -> pd.DataFrame:
    exists = np.fromiter((os.path.isfile(p) for p in df["image_path"]), dtype=bool, count=len(df))
    if exists.all():
        return df
    missing = df.loc[~exists, "image_id"].tolist()
    if not drop_missing:
        folder = os.path.dirname(df.loc[~exists, "image_path"].iloc[0])
        raise CompetitionDataError(
            f"{len(missing)} of {len(df)} images listed in {source} are missing (e.g. under {folder}): "
            f"{listing(missing)}; pass drop_missing=True to keep the {int(exists.sum())} that exist",
            missing,
        )
    log.warning("%s: dropped %d of %d rows whose image file is missing (%s)", source, len(missing), len(df),
                listing(missing))  # fmt: skip
    out = df.loc[exists].reset_index(drop=True)
    out.attrs["dropped_missing"] = len(missing)
    return out


def _validate_rles(df: pd.DataFrame, columns: Sequence[str], source: str, drop_invalid: bool) -> pd.DataFrame:
    """Parse every RLE against its image size; empty tokens become ""."""
    bad: dict[str, str] = {}
    heights, widths = df["height"].to_numpy(), df["width"].to_numpy()
    for col in columns:
        values = df[col].tolist()
        for i, rle in enumerate(values):
            if is_empty_rle(rle):
                values[i] = ""
                continue
            try:
                rle_parse(rle, (int(heights[i]), int(widths[i])))
            except ValueError as e:
                bad.setdefault(df["image_id"].iat[i], f"{col}: {e}")
        df[col] = values
    if not bad:
        return df
    details = [f"{k} ({v})" for k, v in bad.items()]
    if not drop_invalid:
        raise CompetitionDataError(
            f"{source}: {len(bad)} image(s) with a malformed RLE: {listing(details, 3)}; "
            f"pass drop_invalid=True to keep the other {len(df) - len(bad)}",
            list(bad),
        )
    log.warning("%s: dropped %d image(s) with a malformed RLE: %s", source, len(bad), listing(details, 3))
    out = df[~df["image_id"].isin(bad)].reset_index(drop=True)
    out.attrs.update(df.attrs, dropped_invalid=len(bad))
    return out


def _split_key(keys: pd.Series, source: Path, classes: Sequence[str]) -> tuple[pd.Series, pd.Series]:
    """'0011165.jpg_Fish' -> ('0011165.jpg', 'Fish'), splitting at the last '_'."""
    parts = keys.str.rpartition("_")
    bad_rows = keys.index[(parts[1] != "_") | (parts[0] == "")]
    if len(bad_rows):
        lines = [f"line {i + 2} ({keys[i]!r})" for i in bad_rows]
        raise CompetitionDataError(f"{source}: {len(lines)} unreadable key(s), expected '<image>_<class>': "
                                   f"{listing(lines)}", lines)  # fmt: skip
    check_classes(parts[2], source, classes)
    return parts[0], parts[2]


def _wide(image_ids: pd.Series, classes: pd.Series, rles: pd.Series, all_classes: Sequence[str]) -> pd.DataFrame:
    """Long (image, class, rle) -> one row per image, one column per class ("" where no row)."""
    long = pd.DataFrame({"image_id": image_ids, "cls": classes, "rle": rles})
    wide = long.pivot(index="image_id", columns="cls", values="rle")
    order = list(dict.fromkeys(image_ids))  # first-appearance order, as in the file
    wide = wide.reindex(index=order, columns=list(all_classes)).astype(object).fillna("")
    wide.columns.name = None
    return wide.reset_index()


# --------------------------------------------------------------------------------------------------- loaders


def _load_image_label_csv(preset: Preset, data_dir: Path, label_path: Path) -> pd.DataFrame:
    """Understanding Clouds: ``Image_Label,EncodedPixels`` with keys ``<image>_<class>``; a missing pair is empty."""
    raw = _read_csv(label_path, ["Image_Label", "EncodedPixels"])
    check_unique(raw["Image_Label"], label_path, "Image_Label key")
    image_ids, classes = _split_key(raw["Image_Label"], label_path, preset.target_classes)
    df = _wide(image_ids, classes, raw["EncodedPixels"], preset.target_classes)
    df["image_path"] = [str(data_dir / preset.image_dir / i) for i in df["image_id"]]
    return df


def _load_class_id_csv(preset: Preset, data_dir: Path, label_path: Path) -> pd.DataFrame:
    """Severstal: ``ImageId,ClassId,EncodedPixels`` (or the first release's ``ImageId_ClassId,EncodedPixels``), one
    row per non-empty (image, class). Images of the train folder without a row have no defect: all classes empty."""
    raw = _read_csv(label_path, ["EncodedPixels"])
    if "ImageId_ClassId" in raw.columns:
        image_ids, classes = _split_key(raw["ImageId_ClassId"], label_path, preset.target_classes)
    elif {"ImageId", "ClassId"} <= set(raw.columns):
        image_ids, classes = raw["ImageId"], raw["ClassId"].str.strip()
        check_classes(classes, label_path, preset.target_classes)
    else:
        raise CompetitionDataError(f"{label_path}: expected columns ImageId,ClassId,EncodedPixels or "
                                   f"ImageId_ClassId,EncodedPixels; found {list(raw.columns)}")  # fmt: skip
    keys = image_ids + "_" + classes
    check_unique(keys, label_path, "(ImageId, ClassId) pair")
    df = _wide(image_ids, classes, raw["EncodedPixels"], preset.target_classes)
    listed = set(df["image_id"])
    folder = data_dir / preset.image_dir
    unlabelled = sorted(f for f in _list_images(folder, preset) if f not in listed) if folder.is_dir() else []
    if unlabelled:
        empty = pd.DataFrame({"image_id": unlabelled, **{c: "" for c in preset.target_classes}})
        df = pd.concat([df, empty], ignore_index=True)
    df["image_path"] = [str(folder / i) for i in df["image_id"]]
    return df


def _load_img_rle_csv(preset: Preset, data_dir: Path, label_path: Path) -> pd.DataFrame:
    """Dacon building: ``img_id,img_path,mask_rle`` (row-major, "-1" = empty). ``img_path`` values that do not
    exist (the '/content/...' paths of a Colab copy) are re-homed under data_dir by file name."""
    raw = _read_csv(label_path, ["img_id", "img_path", "mask_rle"])
    check_unique(raw["img_id"], label_path, "img_id")
    return pd.DataFrame(
        {
            "image_id": raw["img_id"],
            "image_path": _resolve_paths(raw["img_path"], raw["img_id"], data_dir, preset.image_dir),
            preset.target_classes[0]: raw["mask_rle"],
        }
    )


def _list_images(folder: Path, preset: Preset) -> list[str]:
    return sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in preset.image_exts)


def _load_mask_folder(preset: Preset, data_dir: Path, label_path: Path) -> pd.DataFrame:
    """ISBI / Carvana: every image of ``image_dir`` has a mask in ``label_file`` named stem + mask_suffix + ext."""
    folder = data_dir / preset.image_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not label_path.is_dir():
        raise FileNotFoundError(f"mask folder not found: {label_path}")
    names = _list_images(folder, preset)
    if not names:
        raise CompetitionDataError(f"{folder}: no image files ({', '.join(preset.image_exts)})")
    mask_paths = [label_path / (Path(n).stem + preset.mask_suffix + (preset.mask_ext or Path(n).suffix)) for n in names]
    missing = [f"{n} -> {m.name}" for n, m in zip(names, mask_paths, strict=True) if not m.is_file()]
    if missing:
        raise CompetitionDataError(f"{label_path}: {len(missing)} image(s) without a mask file: {listing(missing)}",
                                   [m.split(" ")[0] for m in missing])  # fmt: skip
    return pd.DataFrame(
        {"image_id": names, "image_path": [str(folder / n) for n in names], "mask_path": [str(m) for m in mask_paths]}
    )


def _load_label_csv(preset: Preset, data_dir: Path, label_path: Path) -> pd.DataFrame:
    """Cassava: ``image_id,label`` with integer labels 0..C-1."""
    raw = _read_csv(label_path, ["image_id", "label"])
    check_unique(raw["image_id"], label_path, "image_id")
    labels = pd.to_numeric(raw["label"].str.strip(), errors="coerce")
    bad = raw.index[labels.isna() | (labels % 1 != 0) | (labels < 0) | (labels >= len(preset.classes))]
    if len(bad):
        rows = [f"line {i + 2} ({raw['image_id'][i]}: {raw['label'][i]!r})" for i in bad]
        raise CompetitionDataError(f"{label_path}: {len(rows)} label(s) not an integer in 0..{len(preset.classes) - 1}"
                                   f": {listing(rows)}", raw["image_id"][bad].tolist())  # fmt: skip
    return pd.DataFrame(
        {
            "image_id": raw["image_id"],
            "image_path": [str(data_dir / preset.image_dir / i) for i in raw["image_id"]],
            "label": labels.astype(np.int64),
        }
    )


#: label_format -> loader(preset, data_dir, label_path) returning image_id, image_path and the target columns.
LOADERS: dict[str, Callable[[Preset, Path, Path], pd.DataFrame]] = {
    "image_label_csv": _load_image_label_csv,
    "class_id_csv": _load_class_id_csv,
    "img_rle_csv": _load_img_rle_csv,
    "mask_folder": _load_mask_folder,
    "coco_json": load_coco_json,
    "label_csv": _load_label_csv,
}


def _test_table(preset: Preset, data_dir: Path) -> tuple[pd.DataFrame, str]:
    """image_id + image_path of the test images: from the test list file, else the sample submission's ids,
    else the test folder listing."""
    folder = data_dir / preset.test_image_dir
    test_file = data_dir / preset.test_file if preset.test_file else None
    if test_file is not None and test_file.is_file():
        if test_file.suffix == ".json":
            images = coco_images(read_coco(test_file), test_file)
            return images[["image_id", "height", "width"]].assign(
                image_path=[str(folder / f) for f in images["image_id"]]
            ), str(test_file)
        raw = _read_csv(test_file, [])
        id_col = raw.columns[0]
        check_unique(raw[id_col], test_file)
        paths = raw["img_path"] if "img_path" in raw.columns else raw[id_col]
        return pd.DataFrame(
            {"image_id": raw[id_col], "image_path": _resolve_paths(paths, raw[id_col], data_dir, preset.test_image_dir)}
        ), str(test_file)
    sample = data_dir / preset.sample_submission if preset.sample_submission else None
    if sample is not None and sample.is_file():
        raw = _read_csv(sample, [preset.submission_columns[0]])
        ids = raw[preset.submission_columns[0]]
        if preset.label_format == "image_label_csv":
            ids, _ = _split_key(ids, sample, preset.target_classes)
        ids = list(dict.fromkeys(ids))
        return pd.DataFrame({"image_id": ids, "image_path": [str(folder / i) for i in ids]}), str(sample)
    if not folder.is_dir():
        raise FileNotFoundError(f"{preset.name}: no test list, sample submission or test folder under {data_dir}")
    names = _list_images(folder, preset)
    return pd.DataFrame({"image_id": names, "image_path": [str(folder / n) for n in names]}), str(folder)


def load_competition(
    preset: Preset,
    data_dir: str | os.PathLike,
    split: str = "train",
    label_file: str | None = None,
    drop_missing: bool = False,
    drop_invalid: bool = False,
) -> pd.DataFrame:
    """Read a competition folder into the canonical table (see the module docstring).

    Args:
        preset: a ``Preset`` or its name (``kitlib.presets.PRESETS``).
        data_dir: the competition folder as the competition ships it.
        split: "train" (labelled images with targets) or "test" (images to predict, no targets).
        label_file: train label file or folder relative to data_dir, when it is not the competition's own
            name (``preset.label_file``), e.g. "train_small.csv".
        drop_missing: keep only rows whose image file exists (logged, ``df.attrs["dropped_missing"]``);
            by default a missing file is an error.
        drop_invalid: drop images with a malformed RLE (logged, ``df.attrs["dropped_invalid"]``); by default
            it is an error naming them.
    Returns:
        DataFrame, one row per image, columns ``image_id, image_path, height, width`` then the targets
        (``target_columns(preset)``; none for split="test"), in the label file's order.
    Raises:
        FileNotFoundError: data_dir or the label file does not exist.
        CompetitionDataError (a ValueError): missing image files, duplicated ids, unknown class names, unreadable
            rows, malformed RLE, unreadable image headers, images not of ``preset.image_size``, mask files or COCO
            records whose size is not their image's; the message names the file and the offending ids.
        KeyError: unknown preset name.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    if split == "train":
        label_path = data_dir / (label_file or preset.label_file)
        df = LOADERS[preset.label_format](preset, data_dir, label_path)
        source = str(label_path)
    elif split == "test":
        df, source = _test_table(preset, data_dir)
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    df = _check_files(df, source, drop_missing)
    if "height" not in df.columns:
        df["height"], df["width"] = _sizes(df)
    else:  # COCO: its image records' sizes, at which its polygons are rasterised, against the files'
        _check_sizes(df, "image_path", _sizes(df), (df["height"], df["width"]), f"{source}: {{n}} image file(s) "
                     "whose size differs from their image record")  # fmt: skip
    if preset.image_size is not None:
        h, w = map(int, preset.image_size)
        _check_sizes(df, "image_path", (df["height"], df["width"]), ([h] * len(df), [w] * len(df)),
                     f"{source}: {{n}} image(s) not of preset {preset.name!r}'s image_size {h}x{w}")  # fmt: skip
    if preset.label_format == "mask_folder" and split == "train":
        _check_sizes(df, "mask_path", _sizes(df, "mask_path"), (df["height"], df["width"]),
                     "{n} mask file(s) whose size differs from their image")  # fmt: skip
    targets = target_columns(preset) if split == "train" else []
    df = df[[*BASE_COLUMNS, *targets]].reset_index(drop=True)
    df["height"] = df["height"].astype(np.int64)
    df["width"] = df["width"].astype(np.int64)
    if split == "train" and preset.is_segmentation and preset.label_format != "mask_folder":
        df = _validate_rles(df, targets, source, drop_invalid)
    df.attrs.update(preset=preset.name, data_dir=str(data_dir), split=split)
    return df


def _check_sizes(
    df: pd.DataFrame, path_column: str, found: tuple[Sequence[int], Sequence[int]],
    expected: tuple[Sequence[int], Sequence[int]], message: str,
) -> None:  # fmt: skip
    """Raise CompetitionDataError where a file's (height, width) ``found`` differs from ``expected``: each named with
    both sizes (H x W) and, when they are each other's transpose, "width and height swapped?". ``message`` is the
    error's start, with ``{n}`` for the count."""
    bad, ids = [], []
    rows = zip(df["image_id"], df[path_column], *found, *expected, strict=True)
    for image_id, path, fh, fw, eh, ew in rows:
        if (int(fh), int(fw)) != (int(eh), int(ew)):
            hint = " (width and height swapped?)" if (fh, fw) == (ew, eh) else ""
            bad.append(f"{path} is {fh}x{fw}, expected {eh}x{ew} (H x W){hint}")
            ids.append(image_id)
    if bad:
        raise CompetitionDataError(f"{message.format(n=len(bad))}: {listing(bad, 3)}", ids)


# ---------------------------------------------------------------------------------------------------- targets


def load_masks(row: pd.Series, preset: Preset) -> np.ndarray:
    """The full-resolution masks of one table row.

    Args:
        row: a row of a train table from ``load_competition`` (needs height, width and the target columns).
        preset: its preset.
    Returns:
        (H, W, K) uint8 {0, 1}, C-contiguous, K = ``len(preset.target_classes)``. For multiclass presets the
        channels are disjoint and the background is where no channel is set (``masks_to_label_map``).
    Raises:
        ValueError: classification preset, malformed RLE (the message names the image and class), a mask file
            whose size differs from the row's.
        FileNotFoundError: a mask file is missing.
    """
    if not preset.has_masks:
        raise ValueError(f"preset {preset.name!r} is a classification task: no masks")
    h, w = int(row["height"]), int(row["width"])
    if "mask_path" in row.index:
        mask = read_mask_file(str(row["mask_path"]))
        if mask.shape != (h, w):
            raise ValueError(f"{row['image_id']}: mask {row['mask_path']} is {mask.shape}, image is {(h, w)}")
        return mask[:, :, None]
    out = np.empty((h, w, len(preset.target_classes)), dtype=np.uint8)
    for k, cls in enumerate(preset.target_classes):
        try:
            out[:, :, k] = rle_decode(row[cls], (h, w), order=preset.rle_order)
        except ValueError as e:
            raise ValueError(f"{row['image_id']} / {cls}: {e}") from e
    return out


def masks_to_label_map(masks: np.ndarray) -> np.ndarray:
    """(H, W, K) {0, 1} disjoint masks -> (H, W) uint8 class indices, 0 = background, k + 1 = channel k.

    Raises:
        ValueError: not 3-D, more than 255 channels, or a pixel set in two channels (not a multiclass mask).
    """
    if masks.ndim != 3 or masks.shape[2] > 255:
        raise ValueError(f"masks must be (H, W, K) with K <= 255, got {masks.shape}")
    if masks.shape[2] and (masks.sum(axis=2, dtype=np.uint16) > 1).any():
        raise ValueError("overlapping channels: a multiclass mask has one class per pixel")
    return (masks * np.arange(1, masks.shape[2] + 1, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


def class_presence(source: pd.DataFrame | np.ndarray, preset: Preset | None = None, chunk_size: int | None = None):
    """Whether each image has any pixel of each class: the labels of a presence classifier or of a gate.

    Args:
        source: a train table from ``load_competition`` (with its ``preset``): RLE columns are read without decoding,
            a ``mask_path`` column reads each mask file (with a progress bar); or (N, K, H, W) masks at any
            resolution (a memmap is read a chunk of images at a time).
        preset: the table's preset (a segmentation preset or its presence task); not needed for masks.
        chunk_size: images per chunk of masks; None for about 16 MB.
    Returns:
        (N, K) bool, K = ``len(preset.target_classes)`` (or the masks' K).
    Raises:
        ValueError: a table without a preset, a classification preset (use the label column), masks that are not 4-D.
    """
    if not isinstance(source, pd.DataFrame):
        m = to_numpy(source)
        if m.ndim != 4:
            raise ValueError(f"masks must be (N, K, H, W), got shape {m.shape}")
        out = np.empty(m.shape[:2], dtype=bool)
        for sl in row_slices(len(m), chunk_rows(m.shape, m.dtype.itemsize, chunk_size)):
            chunk = np.asarray(m[sl])
            out[sl] = chunk.reshape(chunk.shape[0], chunk.shape[1], -1).any(axis=2)
        return out
    df = source
    if preset is None or not preset.has_masks:
        name = "no preset" if preset is None else f"preset {preset.name!r} is a classification task"
        raise ValueError(f"class_presence of a table needs a segmentation preset ({name}); use df['label']")
    if "mask_path" in df.columns:
        paths = df["mask_path"].tolist()
        bar = progress(paths, desc="mask presence", disable=len(paths) < 200)
        return np.array([read_mask_file(p).any() for p in bar], dtype=bool).reshape(len(df), 1)
    return np.stack([df[c].map(lambda r: not is_empty_rle(r)).to_numpy(bool) for c in preset.target_classes], axis=1)
