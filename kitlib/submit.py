"""Submission files: rows built batch by batch, put in the sample submission's order, validated, written atomically.

The layout of a submission comes from the preset (``kitlib.presets``), never from its name:

================  ==========================================================================================
``rle``           one row per (image, class) of ``preset.target_classes``: the class sits in the id
                  (``Image_Label`` = ``<image>_<class>``, Understanding Clouds and the demo), in a ``ClassId``
                  column (1-based, Severstal) or nowhere when there is one class (Dacon ``img_id,mask_rle``,
                  ``masks`` ``img,rle_mask``). RLE in ``preset.rle_order``; an empty mask is ``preset.empty_token``.
``class_ids``     one row per image: the (H, W) map of class indices flattened in ``preset.rle_order`` as a
                  space-separated string (the trash-sorting contest's ``PredictionString``).
``label``         one row per image: an integer class label (Cassava).
================  ==========================================================================================

A row is identified by its *key*: the id column's value, or ``<ImageId>_<ClassId>`` where the class has a column
of its own (Severstal's original ``ImageId_ClassId``). Errors list the offending keys, and ``SubmissionError.ids``
carries all of them.

Test predictions never need to be held in memory at once: threshold and resize one batch, turn each image into
rows with ``encode_rows``, collect the rows (short strings), then build one DataFrame at the end:

    rows = []
    for batch in loader:
        for image_id, masks in zip(batch["image_id"], batch_masks):
            rows += encode_rows(image_id, masks, preset)
    submission = order_like(pd.DataFrame(rows), sample_submission, preset)
    summary = validate_submission(submission, sample_submission, preset)
    write_submission(submission, run_dir / "submission.csv")
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib._private import listing
from kitlib.io import write_csv
from kitlib.presets import Preset
from kitlib.rle import EMPTY_TOKENS, rle_decode, rle_encode, rle_parse

__all__ = [
    "SubmissionError",
    "encode_rows",
    "order_like",
    "read_sample_submission",
    "read_submission",
    "validate_submission",
    "write_submission",
]

log = logging.getLogger(__name__)

Sizes = Mapping[str, tuple[int, int]] | pd.DataFrame

#: Shape that parses an RLE's structure (pairs, order, positive values) without a bound on its end.
_UNBOUNDED = (1, 2**62)


class SubmissionError(ValueError):
    """A submission that the competition would reject or score wrongly.

    Attributes:
        ids: the offending row keys (image ids; ``<image>_<class>`` for per-class rows), all of them, not only
            the few in the message.
    """

    def __init__(self, message: str, ids: Sequence[str] = ()):
        super().__init__(message)
        self.ids = list(ids)


# ---------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    """Where a preset's submission keeps the image id, the class and the value."""

    columns: tuple[str, ...]
    id_col: str
    value_col: str
    class_col: str | None  # Severstal's ClassId (1-based)
    class_in_key: bool  # Clouds' Image_Label = <image>_<class>
    classes: tuple[str, ...]  # one row per image and class (rle), or a single pseudo-class

    @property
    def per_class(self) -> bool:
        return self.class_col is not None or self.class_in_key

    def keys_for(self, image_ids: Sequence[str]) -> list[str]:
        if self.class_in_key:
            return [f"{i}_{c}" for i in image_ids for c in self.classes]
        if self.class_col is not None:
            return [f"{i}_{k}" for i in image_ids for k in range(1, len(self.classes) + 1)]
        return [str(i) for i in image_ids]


def _layout(preset: Preset) -> _Layout:
    columns = tuple(preset.submission_columns)
    per_class = preset.submission_format == "rle" and len(preset.target_classes) > 1
    class_col = next((c for c in columns[1:] if c.lower() in ("classid", "class_id")), None) if per_class else None
    rest = [c for c in columns[1:] if c != class_col]
    if len(rest) != 1:
        raise ValueError(f"preset {preset.name!r}: cannot read submission columns {columns}: expected an id column, "
                         "a value column and, for per-class rows, a ClassId column")  # fmt: skip
    return _Layout(
        columns=columns,
        id_col=columns[0],
        value_col=rest[0],
        class_col=class_col,
        class_in_key=per_class and class_col is None,
        classes=tuple(preset.target_classes) if preset.submission_format == "rle" else tuple(preset.classes),
    )


def _class_id(value: object) -> str:
    """ClassId cell -> canonical '3' (ints, '3', ' 3 ', 3.0 read from a float column); anything else as text."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    s = str(value).strip()
    return str(int(s)) if _is_uint(s) else s


def _is_uint(s: str) -> bool:
    """'0', '12': ASCII digits only (``str.isdigit`` also accepts '²', which ``int`` rejects)."""
    return s.isascii() and s.isdigit()


def _row_keys(df: pd.DataFrame, layout: _Layout) -> list[str]:
    ids = [str(i) for i in df[layout.id_col].tolist()]
    if layout.class_col is None:
        return ids
    return [f"{i}_{_class_id(c)}" for i, c in zip(ids, df[layout.class_col].tolist(), strict=True)]


def _image_of(keys: Sequence[str], layout: _Layout) -> list[str]:
    return [k.rpartition("_")[0] for k in keys] if layout.per_class else list(keys)


def _class_of(keys: Sequence[str], layout: _Layout) -> list[str]:
    """Class name of each row key (keys already checked against the expected ones)."""
    if layout.class_in_key:
        return [k.rpartition("_")[2] for k in keys]
    if layout.class_col is not None:
        return [layout.classes[int(k.rpartition("_")[2]) - 1] for k in keys]
    return [layout.classes[0]] * len(keys)


# ----------------------------------------------------------------------------------------------------- files


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission (or sample submission) CSV with every cell as text: "" stays "", "-1" stays "-1".

    Raises:
        FileNotFoundError: no such file (the message names it).
        SubmissionError: the file is not a readable CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}: unreadable CSV: {e}") from e


def read_sample_submission(preset: Preset, data_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The competition's sample submission, every cell as text.

    Args:
        preset: a ``Preset`` or its name.
        data_dir: the competition folder.
    Returns:
        The sample submission, or None when the preset has none (``masks``): then the test images of
        ``kitlib.formats.load_competition(preset, data_dir, split="test")`` define the ids (pass them as
        ``image_ids`` to ``order_like`` / ``validate_submission``).
    Raises:
        FileNotFoundError: the preset names a sample submission that is not in data_dir.
        SubmissionError: its columns are not the preset's ``submission_columns`` (a wrong preset).
    """
    if preset.sample_submission is None:
        return None
    path = Path(data_dir).expanduser() / preset.sample_submission
    df = read_submission(path)
    if tuple(df.columns) != tuple(preset.submission_columns):
        raise SubmissionError(
            f"{path}: columns {list(df.columns)} are not those of preset {preset.name!r} "
            f"{list(preset.submission_columns)}"
        )
    return df


def write_submission(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a submission CSV atomically (no index; an empty string is an empty field). Returns the path."""
    return write_csv(path, df)


def _as_frame(table: pd.DataFrame | str | os.PathLike, what: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, (str, os.PathLike)):
        return read_submission(table)
    raise TypeError(f"{what} must be a DataFrame or a CSV path, got {type(table).__name__}")


# ---------------------------------------------------------------------------------------------------- encode


def encode_rows(image_id: str, masks: np.ndarray | int, preset: Preset, check: bool = True) -> list[dict]:
    """The submission rows of one test image.

    Args:
        image_id: the image's id as the competition writes it ("002f507.jpg", "TEST_00000").
        masks: by ``preset.submission_format``:
            "rle": (K, H, W) uint8 or bool in {0, 1}, K = ``len(preset.target_classes)``, already thresholded,
            post-processed and resized to the submission resolution; (H, W) is accepted when K = 1.
            "class_ids": (H, W) integer map of class indices 0..C-1 (0 = background).
            "label": an int class label 0..C-1.
        preset: a ``Preset`` or its name.
        check: decode each string again and compare it with its mask (the round trip pudae's Understanding Clouds
            writer asserted); about the cost of the encoding itself.
    Returns:
        One dict per row, keys = ``preset.submission_columns`` in order: K rows for per-class RLE presets
        (classes in ``preset.target_classes`` order), else one.
    Raises:
        ValueError: wrong number of masks, a shape other than ``preset.submission_size``, values outside {0, 1}
            or outside the class range, float masks (threshold the probabilities first); the message names the
            image.
        SubmissionError: the round trip check failed.
    """
    layout = _layout(preset)
    image_id = str(image_id)
    fmt = preset.submission_format
    if fmt == "label":
        return [{layout.id_col: image_id, layout.value_col: _label(image_id, masks, preset)}]
    masks = np.asarray(masks)
    if masks.dtype.kind not in "biu":
        raise ValueError(f"{image_id}: masks must be integer or bool, got {masks.dtype}; threshold the probabilities "
                         "(and argmax multiclass ones) first")  # fmt: skip
    if fmt == "class_ids":
        return [{layout.id_col: image_id, layout.value_col: _class_ids_string(image_id, masks, preset, check)}]
    k = len(layout.classes)
    if masks.ndim == 2 and k == 1:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] != k:
        raise ValueError(f"{image_id}: masks must be (K, H, W) with K = {k} ({', '.join(layout.classes)}), "
                         f"got shape {masks.shape}")  # fmt: skip
    _check_size(image_id, masks.shape[1:], preset)
    if masks.dtype != np.bool_ and masks.size and (masks.max() > 1 or masks.min() < 0):
        raise ValueError(f"{image_id}: masks must be in {{0, 1}}, got values {masks.min()}..{masks.max()}")
    rows = []
    for c, (cls, mask) in enumerate(zip(layout.classes, masks, strict=True), start=1):
        rle = rle_encode(mask, order=preset.rle_order, empty=preset.empty_token)
        if check and not np.array_equal(
            rle_decode(rle, mask.shape, order=preset.rle_order, empty_tokens=(preset.empty_token,)), mask != 0
        ):
            raise SubmissionError(f"{image_id} / {cls}: the RLE does not decode back to the mask", [image_id])
        if layout.class_in_key:
            rows.append({layout.id_col: f"{image_id}_{cls}", layout.value_col: rle})
        elif layout.class_col is not None:
            rows.append({layout.id_col: image_id, layout.value_col: rle, layout.class_col: c})
        else:
            rows.append({layout.id_col: image_id, layout.value_col: rle})
    return [{col: row[col] for col in layout.columns} for row in rows]


def _label(image_id: str, label: object, preset: Preset) -> int:
    value = np.asarray(label)
    if value.ndim != 0 or value.dtype.kind not in "iu":
        raise ValueError(f"{image_id}: a classification row needs one integer label, got {label!r}")
    value = int(value)
    if not 0 <= value < len(preset.classes):
        raise ValueError(f"{image_id}: label {value} outside 0..{len(preset.classes) - 1}")
    return value


def _class_ids_string(image_id: str, label_map: np.ndarray, preset: Preset, check: bool) -> str:
    if label_map.ndim != 2:
        raise ValueError(f"{image_id}: a class-index map must be (H, W), got shape {label_map.shape}")
    _check_size(image_id, label_map.shape, preset)
    n = len(preset.classes)
    if label_map.size and (label_map.min() < 0 or label_map.max() >= n):
        raise ValueError(f"{image_id}: class indices must be in 0..{n - 1}, got {label_map.min()}..{label_map.max()}")
    flat = label_map.ravel(order=preset.rle_order)
    text = " ".join(map(str, flat.tolist()))
    if check and not np.array_equal(np.array(text.split(), dtype=np.int64), flat):
        raise SubmissionError(f"{image_id}: the class-id string does not read back to the map", [image_id])
    return text


def _check_size(image_id: str, shape: tuple[int, ...], preset: Preset) -> None:
    if preset.submission_size is not None and tuple(shape) != tuple(preset.submission_size):
        h, w = preset.submission_size
        raise ValueError(f"{image_id}: masks are {shape[0]}x{shape[1]}, preset {preset.name!r} is scored at {h}x{w} "
                         "(H x W): resize before encoding")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- order


def _expected(
    layout: _Layout, sample: pd.DataFrame | None, image_ids: Sequence[str] | pd.DataFrame | None, preset: Preset
) -> tuple[list[str], list[str]]:
    """(row keys, image ids) that the submission must have, in order."""
    if sample is not None and image_ids is not None:
        raise ValueError("give the ids by sample_submission or by image_ids, not both")
    if sample is not None:
        missing = [c for c in layout.columns if c not in sample.columns]
        if missing:
            raise SubmissionError(f"sample submission lacks column(s) {missing} of preset {preset.name!r}; "
                                  f"found {list(sample.columns)}")  # fmt: skip
        ids = [str(i) for i in sample[layout.id_col].tolist()]
        if layout.class_in_key:
            keys = ids
            _check_unique(keys, "sample submission")
            unknown = [k for k in keys if k.rpartition("_")[2] not in layout.classes or not k.rpartition("_")[0]]
            if unknown:
                raise SubmissionError(f"sample submission: {len(unknown)} id(s) that are not '<image>_<class>' with "
                                      f"a class of {list(layout.classes)}: {listing(unknown)}", unknown)  # fmt: skip
            return keys, list(dict.fromkeys(_image_of(keys, layout)))
        images = list(dict.fromkeys(ids)) if layout.class_col is not None else ids
    elif image_ids is not None:
        images = [str(i) for i in (image_ids["image_id"] if isinstance(image_ids, pd.DataFrame) else image_ids)]
    else:
        raise ValueError(f"preset {preset.name!r}: give sample_submission or, where there is none, image_ids "
                         "(the test table of kitlib.formats.load_competition(..., split='test'))")  # fmt: skip
    _check_unique(images, "sample submission" if sample is not None else "image_ids")
    return layout.keys_for(images), images


def _check_unique(keys: Sequence[str], what: str) -> None:
    dup = [k for k, n in Counter(keys).items() if n > 1]
    if dup:
        raise SubmissionError(f"{what}: {len(dup)} duplicated id(s): {listing(dup)}", dup)


def _check_ids(keys: list[str], expected: list[str], drop_extra: bool = False) -> list[int]:
    """Positions of the submission rows in expected order; SubmissionError for duplicates, missing, extra ids."""
    _check_unique(keys, "submission")
    position = {k: i for i, k in enumerate(keys)}
    missing = [k for k in expected if k not in position]
    if missing:
        raise SubmissionError(f"submission lacks {len(missing)} of the {len(expected)} expected id(s) "
                              f"({len(keys)} rows): {listing(missing)}", missing)  # fmt: skip
    if not drop_extra:
        wanted = set(expected)
        extra = [k for k in keys if k not in wanted]
        if extra:
            raise SubmissionError(f"submission has {len(extra)} id(s) that are not expected ({len(keys)} rows, "
                                  f"{len(expected)} expected): {listing(extra)}", extra)  # fmt: skip
    return [position[k] for k in expected]


def order_like(
    submission: pd.DataFrame,
    sample_submission: pd.DataFrame | None,
    preset: Preset,
    image_ids: Sequence[str] | pd.DataFrame | None = None,
    drop_extra: bool = False,
) -> pd.DataFrame:
    """Rows of a submission in the sample submission's order.

    Args:
        submission: rows from ``encode_rows``, in any order, columns ``preset.submission_columns``.
        sample_submission: the competition's sample (``read_sample_submission``); None where there is none.
        preset: a ``Preset`` or its name.
        image_ids: the test image ids, in order, when there is no sample submission: a sequence or the test
            table of ``kitlib.formats.load_competition(..., split="test")``.
        drop_extra: drop rows whose id is not expected instead of raising.
    Returns:
        A new DataFrame with a fresh index; per-class rows follow the class order within each image.
    Raises:
        SubmissionError: duplicated ids; expected ids that the submission lacks; ids that are not expected
            (unless ``drop_extra``); the message lists the first few and the count.
        ValueError: neither or both of sample_submission and image_ids.
    """
    layout = _layout(preset)
    _check_columns(submission, layout)
    expected, _ = _expected(layout, sample_submission, image_ids, preset)
    rows = _check_ids(_row_keys(submission, layout), expected, drop_extra)
    return submission.iloc[rows].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- validate


def _check_columns(df: pd.DataFrame, layout: _Layout) -> None:
    if tuple(df.columns) != layout.columns:
        raise SubmissionError(f"submission columns {list(df.columns)} differ from the expected "
                              f"{list(layout.columns)}")  # fmt: skip


def _text(value: object) -> str:
    """A cell as text: NaN / None -> "", 3 -> "3" (a column pandas read as numbers)."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _size_lookup(preset: Preset, sizes: Sizes | None, images: list[str]) -> dict[str, tuple[int, int]] | None:
    """Per-image (H, W) for images without a preset-wide submission size; None when unknown (structure only)."""
    if preset.submission_size is not None:
        return {}
    if sizes is None:
        return None
    if isinstance(sizes, pd.DataFrame):
        missing = [c for c in ("image_id", "height", "width") if c not in sizes.columns]
        if missing:
            raise ValueError(f"a sizes table needs columns image_id, height, width; it lacks {missing}")
        sizes = {str(i): (int(h), int(w)) for i, h, w in sizes[["image_id", "height", "width"]].itertuples(index=False)}
    else:
        sizes = {str(k): (int(v[0]), int(v[1])) for k, v in sizes.items()}
    lacking = [i for i in images if i not in sizes]
    if lacking:
        raise SubmissionError(f"no (height, width) given for {len(lacking)} image(s): {listing(lacking)}", lacking)
    return sizes


def _rle_problem(value: str, shape: tuple[int, int], preset: Preset) -> tuple[str | None, bool]:
    """(what is wrong or None, non-empty)."""
    token = value.strip()
    if token == preset.empty_token:
        return None, False
    if token == "":
        return f"empty mask written as {value!r}, the competition's empty token is {preset.empty_token!r}", False
    if token in EMPTY_TOKENS:
        return f"{token!r} is not this competition's empty token {preset.empty_token!r}", False
    try:
        rle_parse(value, shape)
    except ValueError as e:
        return str(e), True
    return None, True


def _class_ids_problem(value: str, shape: tuple[int, int] | None, n_classes: int) -> tuple[str | None, np.ndarray]:
    """(what is wrong or None, (C,) bool presence of each class)."""
    tokens = value.split()
    present = np.zeros(n_classes, dtype=bool)
    if shape is not None and len(tokens) != shape[0] * shape[1]:
        return f"{len(tokens)} class ids, expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]}", present
    if not tokens:
        return "no class ids", present
    try:
        ids = np.array(tokens).astype(np.int64)
    except (ValueError, OverflowError):
        bad = next((i for i, t in enumerate(tokens) if not _is_uint(t.lstrip("-"))), None)
        if bad is None:
            return "class ids out of the int64 range", present
        return f"token {bad} is not an integer: {tokens[bad][:20]!r}", present
    if ids.min() < 0 or ids.max() >= n_classes:
        bad = int(np.flatnonzero((ids < 0) | (ids >= n_classes))[0])
        return f"class id {ids[bad]} at position {bad} outside 0..{n_classes - 1}", present
    present[np.unique(ids)] = True
    return None, present


def _raise_bad(bad: list[tuple[str, str]], what: str, n_rows: int) -> None:
    if bad:
        details = [f"{k} ({reason})" for k, reason in bad]
        raise SubmissionError(f"{len(bad)} of {n_rows} row(s) with {what}: {listing(details, 3)}", [k for k, _ in bad])


def validate_submission(
    submission: pd.DataFrame | str | os.PathLike,
    sample_submission: pd.DataFrame | str | os.PathLike | None,
    preset: Preset,
    image_ids: Sequence[str] | pd.DataFrame | None = None,
    sizes: Sizes | None = None,
) -> dict:
    """Check a submission the way the competition will read it, before uploading it.

    Checks, in order: the columns (names and order), duplicated ids, expected ids that are missing, ids that are
    not expected, the row order (the sample's), then every value: RLEs parse (even token count, integers,
    starts >= 1, lengths >= 1, runs sorted and disjoint) and end inside the image, empty masks use the preset's
    empty token; ClassId in 1..K; class-id strings hold H*W integers in 0..C-1; labels are integers in 0..C-1.

    Args:
        submission: DataFrame or CSV path.
        sample_submission: DataFrame or CSV path of the competition's sample; None where there is none (``masks``).
        preset: a ``Preset`` or its name.
        image_ids: the test ids when there is no sample submission: a sequence, or the test table of
            ``kitlib.formats.load_competition(..., split="test")`` (whose height/width then serve as ``sizes``).
        sizes: per-image (height, width) for presets without ``submission_size`` (Severstal, Dacon, masks): a
            mapping image_id -> (H, W) or a table with image_id, height, width. Ignored when the preset has a
            submission size. Without either, RLEs and class-id strings are checked for structure only (logged,
            and ``sizes_checked`` is False).
    Returns:
        ``{"rows": int, "images": int}`` plus, for segmentation, ``"sizes_checked"`` (False when the ends of the
        masks could not be checked) and ``"nonempty"``: class -> fraction of images whose prediction of that class
        is not empty (multiclass: that contain the class); for classification ``"label_fraction"``: class ->
        fraction of images given that label.
    Raises:
        SubmissionError (a ValueError): any failed check; the message names the first few offending ids (and the
            reason per row for values) with the count, ``.ids`` holds all of them.
        FileNotFoundError: a CSV path that does not exist.
        ValueError: neither or both of sample_submission and image_ids.
    """
    layout = _layout(preset)
    sub = _as_frame(submission, "submission")
    sample = _as_frame(sample_submission, "sample_submission") if sample_submission is not None else None
    if sizes is None and isinstance(image_ids, pd.DataFrame) and {"height", "width"} <= set(image_ids.columns):
        sizes = image_ids
    _check_columns(sub, layout)
    expected, images = _expected(layout, sample, image_ids, preset)
    keys = _row_keys(sub, layout)
    if layout.class_col is not None:  # before the ids: a ClassId of 0 or 5 would read as a missing + extra id
        valid = {str(k) for k in range(1, len(layout.classes) + 1)}
        bad = [(k, f"ClassId {c!r}") for k, c in zip(keys, sub[layout.class_col].tolist(), strict=True)
               if _class_id(c) not in valid]  # fmt: skip
        _raise_bad(bad, f"a ClassId outside 1..{len(layout.classes)}", len(sub))
    rows = _check_ids(keys, expected)
    if rows != list(range(len(rows))):
        wrong = [i for i, (k, e) in enumerate(zip(keys, expected, strict=True)) if k != e]
        details = [f"row {i}: {keys[i]} where the sample has {expected[i]}" for i in wrong]
        raise SubmissionError(f"{len(wrong)} row(s) out of the sample's order (order_like fixes it): "
                              f"{listing(details, 3)}", [keys[i] for i in wrong])  # fmt: skip
    summary = {"rows": len(sub), "images": len(images)}
    lookup = _size_lookup(preset, sizes, images) if preset.is_segmentation else {}
    if lookup is None:
        log.warning("preset %r has no submission size and no sizes were given: masks checked for structure only",
                    preset.name)  # fmt: skip
    values = [_text(v) for v in sub[layout.value_col].tolist()]
    image_of = _image_of(keys, layout)

    def shape_of(image: str) -> tuple[int, int] | None:
        if preset.submission_size is not None:
            return tuple(preset.submission_size)
        return lookup[image] if lookup is not None else None

    n_images = max(len(images), 1)
    bad: list[tuple[str, str]] = []
    if preset.submission_format == "label":
        counts = np.zeros(len(preset.classes), dtype=np.int64)
        for key, value in zip(keys, values, strict=True):
            s = value.strip()
            if not _is_uint(s) or int(s) >= len(preset.classes):
                bad.append((key, f"label {value!r}"))
            else:
                counts[int(s)] += 1
        _raise_bad(bad, f"a label that is not an integer in 0..{len(preset.classes) - 1}", len(sub))
        summary["label_fraction"] = {c: float(n / n_images) for c, n in zip(preset.classes, counts, strict=True)}
        return summary
    if preset.submission_format == "class_ids":
        presence = np.zeros(len(preset.classes), dtype=np.int64)
        for key, value, image in zip(keys, values, image_of, strict=True):
            problem, present = _class_ids_problem(value, shape_of(image), len(preset.classes))
            if problem:
                bad.append((key, problem))
            presence += present
        _raise_bad(bad, "an invalid class-id string", len(sub))
        summary["sizes_checked"] = lookup is not None
        summary["nonempty"] = {c: float(presence[k] / n_images) for k, c in enumerate(preset.classes) if k > 0}
        return summary
    nonempty = dict.fromkeys(layout.classes, 0)
    for key, value, image, cls in zip(keys, values, image_of, _class_of(keys, layout), strict=True):
        problem, filled = _rle_problem(value, shape_of(image) or _UNBOUNDED, preset)
        if problem:
            bad.append((key, problem))
        elif filled:
            nonempty[cls] += 1
    _raise_bad(bad, "an invalid RLE", len(sub))
    summary["sizes_checked"] = lookup is not None
    summary["nonempty"] = {c: float(n / n_images) for c, n in nonempty.items()}
    return summary
