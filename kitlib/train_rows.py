"""Train-only rows: labelled images that join every fold's training set and are never held out.

Two sources, both ``10_train`` parameters (``kitlib.stages.TrainConfig``):

- **extra data** (``extra_data``, ``extra_label_file``, ``extra_preset``, ``extra_class_map``): another labelled set in
  a preset's format (the competition's own, or another preset's with a class map, e.g. the Cassava 2019 set for the
  2020 competition, which several 2020 top solutions trained on);
- **pseudo-labels** (``pseudo_from``, ``pseudo_threshold``, ``pseudo_soft``): the test images with an experiment's or
  an ensemble's test probabilities (``40_submit -p save_probs true`` writes ``test_probs.npy``) as targets
  (``kitlib.pseudo``: confident hard labels or soft rows; masks whose low-confidence pixels the loss ignores).

``train_rows(cfg)`` builds them as one table in the kit's table format (``image_id``, ``image_path``, ``height``,
``width`` and the competition's target columns) with the marker column ``formats.TRAIN_ONLY_COLUMN`` and ``fold`` -1;
ids are prefixed "extra/" and "pseudo/", so they never clash with the competition's. Segmentation targets that are
not the competition's own columns (a remapped extra set, pseudo masks) are written once per experiment as ``.npz``
files of the cache's mask format under ``artifacts/<exp>/train_rows/<source>-<hash>/`` and named by the row's
``formats.TARGET_FILE_COLUMN``; a classification pseudo row's soft target is its ``formats.SOFT_LABEL_COLUMN``.

``add_train_rows`` appends them to the fold's training rows (every fold's) and to the table the image cache is built
from, never to the held-out rows: the OOF, the CV and the post-processing search see the competition's rows only, and
``folds.csv`` is not touched. The cache of a run with train-only rows is its own folder (``cache_dir``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kitlib._private import listing, progress
from kitlib.cache import table_fingerprint
from kitlib.formats import (
    SOFT_LABEL_COLUMN,
    TARGET_FILE_COLUMN,
    TRAIN_ONLY_COLUMN,
    load_competition,
    load_masks,
    target_columns,
)
from kitlib.io import project_path, read_json, replace_dir, temp_dir, write_json
from kitlib.presets import IGNORE_INDEX, Preset
from kitlib.pseudo import pseudo_labels, pseudo_masks
from kitlib.runtime import barrier, dist_info
from kitlib.stages import TrainConfig

__all__ = ["EXTRA_PREFIX", "PSEUDO_PREFIX", "add_train_rows", "cache_dir", "class_map", "sources_stamp", "train_rows"]

log = logging.getLogger(__name__)

EXTRA_PREFIX = "extra/"
PSEUDO_PREFIX = "pseudo/"
_DONE = "done.json"


def train_rows(cfg: TrainConfig) -> pd.DataFrame | None:
    """The run's train-only rows: the extra set's, then the pseudo-labelled test images; None when it has neither.

    Returns:
        A table with ``image_id`` (prefixed), ``image_path``, ``height``, ``width``, the competition's target columns
        (segmentation: "" where the row's ``target_file`` holds its masks), ``target_file`` / ``soft_label`` where
        used, ``train_only`` True and ``fold`` -1.
    Raises:
        FileNotFoundError: a missing extra folder or label file; ``pseudo_from`` without ``test_probs.npy`` (the
            message says how to write it).
        ValueError: an extra set of another kind of task, a class missing from ``extra_class_map`` or unknown to it
            (named with the file), test probabilities that do not fit the competition's test table.
    """
    parts = []
    if cfg.extra_data:
        parts.append(extra_rows(cfg))
    if cfg.pseudo_from:
        parts.append(pseudo_rows(cfg))
    if not parts:
        return None
    rows = pd.concat(parts, ignore_index=True)
    for column in target_columns(cfg.preset):
        if column not in rows.columns:
            rows[column] = ""
    return rows.assign(**{TRAIN_ONLY_COLUMN: True, "fold": -1})


def add_train_rows(cfg: TrainConfig, full: pd.DataFrame, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(full, train)`` with the run's train-only rows appended to both (``full`` is what the cache holds); the
    held-out rows are not touched. Under DDP rank 0 writes the target files, the other ranks then read them.

    Raises:
        ValueError: a train-only id that is also a competition id; as ``train_rows``.
    """
    if not (cfg.extra_data or cfg.pseudo_from):
        return full, train
    if dist_info().is_main:
        rows = train_rows(cfg)
    barrier()
    if not dist_info().is_main:
        rows = train_rows(cfg)
    clash = sorted(set(rows["image_id"].astype(str)) & set(full["image_id"].astype(str)))
    if clash:
        raise ValueError(f"train-only ids that are also competition ids: {listing(clash)}")
    if cfg.smoke:
        rows = rows.head(cfg.batch_size)
    marked = {TRAIN_ONLY_COLUMN: False}
    full = pd.concat([full.assign(**marked), rows], ignore_index=True)
    train = pd.concat([train.assign(**marked), rows], ignore_index=True)
    for df in (full, train):
        df[TRAIN_ONLY_COLUMN] = df[TRAIN_ONLY_COLUMN].astype(bool)
        if TARGET_FILE_COLUMN in df.columns:
            df[TARGET_FILE_COLUMN] = df[TARGET_FILE_COLUMN].fillna("").astype(str)
        for column in target_columns(cfg.preset):
            if cfg.preset.is_segmentation:
                df[column] = df[column].fillna("")
    sources = rows["image_id"].str.split("/").str[0].value_counts().to_dict()
    log.info("fold %d: %d train-only rows (%s) joined its %d training rows; the %d held-out rows are the "
             "competition's", cfg.fold, len(rows), sources, len(train) - len(rows),
             int((full["fold"] == cfg.fold).sum()))  # fmt: skip
    return full, train


def sources_stamp(cfg: TrainConfig) -> str:
    """What the train-only rows were read from, as text for ``kitlib.train.fold_run_id``: the extra set's label file and
    ``pseudo_from``'s ``test_probs.npy`` (path, size, mtime), so new extra labels or a new round of test probabilities
    retrain a finished fold; "" without train-only rows (the run ids of plain runs stay as they were)."""
    paths = []
    if cfg.extra_data:
        data_dir = project_path(cfg.extra_data)
        paths.append(data_dir / (cfg.extra_label_file or cfg.extra_source_preset.label_file))
    if cfg.pseudo_from:
        paths.append(cfg.artifacts_dir / cfg.pseudo_from / "test_probs.npy")
    stamps = []
    for path in paths:
        st = path.stat() if path.exists() else None
        stamps.append(f"{path}:{st.st_size}:{st.st_mtime_ns}" if st else f"{path}:absent")
    return ";".join(stamps)


def cache_dir(cfg: TrainConfig, full: pd.DataFrame) -> Path:
    """The image cache of the run: ``artifacts/cache/<preset>_<h>x<w>``, or ``..._rows-<exp>`` when ``full`` holds
    train-only rows, so that a plain experiment's cache is not rebuilt back and forth."""
    name = f"{cfg.preset.name}_{cfg.height}x{cfg.width}"
    if TRAIN_ONLY_COLUMN in full.columns and full[TRAIN_ONLY_COLUMN].any():
        name += f"_rows-{cfg.exp}"
    return cfg.artifacts_dir / "cache" / name


# ---------------------------------------------------------------------------------------------------- extra data


def class_map(mapping: dict | None, source: Preset, target: Preset, where: str) -> dict[int, int | None]:
    """The extra set's class indices -> the competition's (None: dropped).

    Indices are positions in ``Preset.classes`` (a multiclass background is 0; classification labels are indices);
    keys and values are names or indices. Without a mapping the two presets must have the same classes.

    Raises:
        ValueError: a class of the extra set missing from the mapping, a key or value that is no class of its preset,
            no mapping for presets of other classes (each message names ``where``, the label file).
    """
    if mapping is None:
        if list(source.classes) != list(target.classes):
            raise ValueError(f"{where}: preset {source.name!r} has classes {list(source.classes)}, the competition "
                             f"{list(target.classes)}: give extra_class_map")  # fmt: skip
        return {i: i for i in range(len(source.classes))}
    out = {_class_index(key, source, where, "extra_class_map key"): value for key, value in mapping.items()}
    out = {k: None if v is None else _class_index(v, target, where, "extra_class_map value") for k, v in out.items()}
    unmapped = [source.classes[i] for i in range(len(source.classes)) if i not in out]
    if source.task == "multiclass" and 0 not in out:
        out[0] = 0 if target.task == "multiclass" else None  # background stays background
        unmapped = [c for c in unmapped if c != source.classes[0]]
    if unmapped:
        raise ValueError(f"{where}: classes {unmapped} of preset {source.name!r} are not in extra_class_map (map them "
                         "to a competition class, or to None to drop them)")  # fmt: skip
    return out


def _class_index(item: Any, preset: Preset, where: str, what: str) -> int:
    if isinstance(item, str) and item in preset.classes:
        return preset.classes.index(item)
    if isinstance(item, str) and item.isdigit():
        item = int(item)  # JSON keys are strings
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(preset.classes):
        return item
    raise ValueError(f"{where}: {what} {item!r} is not a class of preset {preset.name!r} ({list(preset.classes)})")


def extra_rows(cfg: TrainConfig) -> pd.DataFrame:
    """The extra set (``cfg.extra_data``) read with its preset, its classes mapped to the competition's, ids prefixed
    ``EXTRA_PREFIX``; segmentation masks of another preset or class map become target files.

    Raises:
        FileNotFoundError, ValueError: as ``train_rows``.
    """
    source, target = cfg.extra_source_preset, cfg.preset
    data_dir = project_path(cfg.extra_data)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"extra_data {cfg.extra_data!r}: no folder {data_dir}")
    label_path = data_dir / (cfg.extra_label_file or source.label_file)
    if not label_path.exists():
        raise FileNotFoundError(f"extra_data {cfg.extra_data!r}: no label file {label_path} (preset {source.name!r}"
                                f"{'' if cfg.extra_label_file else '; set extra_label_file'})")  # fmt: skip
    if source.is_segmentation != target.is_segmentation:
        raise ValueError(f"extra_data {cfg.extra_data!r}: preset {source.name!r} is {source.task}, the competition "
                         f"{target.name!r} {target.task}")  # fmt: skip
    df = load_competition(source, data_dir, label_file=cfg.extra_label_file or None)
    mapping = class_map(cfg.extra_class_map, source, target, str(label_path))
    if not target.is_segmentation:
        labels = df["label"].astype(int).map(mapping)
        unknown = sorted(set(df.loc[~df["label"].astype(int).isin(list(mapping)), "label"]))
        if unknown:
            raise ValueError(f"{label_path}: labels {unknown} are not classes of preset {source.name!r}")
        df = df.assign(label=labels)[labels.notna().to_numpy()].astype({"label": np.int64})
        log.info("extra_data %s: %d labelled images (%d dropped by extra_class_map)", data_dir, len(df),
                 int(labels.isna().sum()))  # fmt: skip
        return _prefixed(df.reset_index(drop=True), EXTRA_PREFIX)
    identity = list(source.classes) == list(target.classes) and all(k == v for k, v in mapping.items())
    if identity and source.label_format == target.label_format:
        return _prefixed(df, EXTRA_PREFIX)  # the competition's own target columns
    key = _digest(table_fingerprint(df, source), sorted(mapping.items(), key=str), target.task, target.classes)
    folder = _written(
        cfg.exp_dir / "train_rows" / f"extra-{key}",
        df["image_id"].astype(str).tolist(),
        lambda i: _remap(load_masks(df.iloc[i], source), source, target, mapping),
        "extra masks",
    )
    out = df[["image_id", "image_path", "height", "width"]].copy()
    out[TARGET_FILE_COLUMN] = [str(folder / f"{i:06d}.npz") for i in range(len(df))]
    return _prefixed(out, EXTRA_PREFIX)


def _remap(masks: np.ndarray, source: Preset, target: Preset, mapping: dict[int, int | None]) -> np.ndarray:
    """(H, W, K_source) {0, 1} masks of the extra preset -> the competition's mask format (the cache's): channels
    (H, W, K) of the mapped classes (several may share one), or a multiclass (H, W) class map."""
    offset = 1 if source.task == "multiclass" else 0  # the channels of a multiclass preset start at class 1
    pixels = {i + offset: masks[:, :, i] > 0 for i in range(masks.shape[2])}
    if source.task == "multiclass":
        pixels[0] = ~masks.any(axis=2)
    h, w = masks.shape[:2]
    if target.task == "multiclass":
        out = np.zeros((h, w), np.uint8)
        for k, where in pixels.items():
            if mapping.get(k) is not None:
                out[where] = mapping[k]
        return out
    out = np.zeros((h, w, len(target.classes)), np.uint8)
    for k, where in pixels.items():
        if mapping.get(k) is not None:
            out[:, :, mapping[k]] |= where
    return out


# ---------------------------------------------------------------------------------------------------- pseudo-labels


def pseudo_rows(cfg: TrainConfig) -> pd.DataFrame:
    """The competition's test images labelled by ``cfg.pseudo_from``'s ``test_probs.npy`` (``kitlib.pseudo``), ids
    prefixed ``PSEUDO_PREFIX``: classification keeps the rows whose max probability reaches ``pseudo_threshold``
    (their argmax as ``label``, their probabilities as ``soft_label`` with ``pseudo_soft``); segmentation keeps every
    image, its pixels below the confidence ignored by the loss.

    Raises:
        FileNotFoundError, ValueError: as ``train_rows``.
    """
    source = cfg.artifacts_dir / cfg.pseudo_from
    probs_path, ids_path = source / "test_probs.npy", source / "test_ids.csv"
    for path in (probs_path, ids_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"pseudo_from {cfg.pseudo_from!r}: {path} not found; write it with notebooks/40_submit.py -p exp "
                f"{cfg.pseudo_from} -p save_probs true (an ensemble: -p ensemble {cfg.pseudo_from}), or run_all.sh "
                f"--pseudo-from {cfg.pseudo_from}"
            )
    probs = np.load(probs_path, mmap_mode="r")
    ids = pd.read_csv(ids_path, dtype=str, keep_default_na=False)["image_id"].tolist()
    test = load_competition(cfg.preset, cfg.data_path, split="test")
    test = test.set_index(test["image_id"].astype(str))
    missing = [i for i in ids if i not in test.index]
    width = cfg.preset.num_classes
    if len(ids) != len(probs) or probs.shape[1] != width or missing:
        raise ValueError(f"{probs_path}: {probs.shape} for {len(ids)} ids of {ids_path} does not fit the test table "
                         f"of {cfg.data_path} ({width} classes; ids not in it: {listing(missing)})")  # fmt: skip
    df = test.loc[ids].reset_index(drop=True)[["image_id", "image_path", "height", "width"]]
    if not cfg.preset.is_segmentation:
        keep, labels, soft = pseudo_labels(np.asarray(probs), cfg.pseudo_threshold)
        df = df[keep].reset_index(drop=True).assign(label=labels)
        if cfg.pseudo_soft:
            df[SOFT_LABEL_COLUMN] = list(soft)
        log.info("pseudo_from %s: %d of %d test images at confidence >= %g (%s labels)", cfg.pseudo_from, len(df),
                 len(keep), cfg.pseudo_threshold, "soft" if cfg.pseudo_soft else "hard")  # fmt: skip
        return _prefixed(df, PSEUDO_PREFIX)
    stat = os.stat(probs_path)
    key = _digest(str(probs_path), stat.st_size, stat.st_mtime_ns, ids, cfg.pseudo_threshold, cfg.preset.task)
    multiclass = cfg.preset.task == "multiclass"
    folder = _written(cfg.exp_dir / "train_rows" / f"pseudo-{key}", ids,
                      lambda i: pseudo_masks(probs[i], cfg.pseudo_threshold, multiclass), "pseudo masks")  # fmt: skip
    df[TARGET_FILE_COLUMN] = [str(folder / f"{i:06d}.npz") for i in range(len(df))]
    log.info(
        "pseudo_from %s: %d test images, pixels below confidence %g ignored by the loss (%.1f%% of them)",
        cfg.pseudo_from,
        len(df),
        cfg.pseudo_threshold,
        100 * read_json(folder / _DONE)["ignored_share"],
    )
    return _prefixed(df, PSEUDO_PREFIX)


# ---------------------------------------------------------------------------------------------------- files


def _prefixed(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return df.assign(image_id=prefix + df["image_id"].astype(str))


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def _written(folder: Path, ids: list[str], make, desc: str) -> Path:
    """``folder`` holding ``<row:06d>.npz`` (key "mask") for every row, ``make(row)`` written once: a folder with its
    ``done.json`` for the same ids is reused; else it is built beside and renamed into place (a killed build leaves
    none). ``done.json`` records the ids and the share of ignored values."""
    done = folder / _DONE
    if done.is_file() and read_json(done).get("ids") == ids:
        return folder
    tmp = temp_dir(folder)
    ignored = total = 0
    try:
        for i in progress(range(len(ids)), desc=desc, unit="img"):
            mask = make(i)
            ignored, total = ignored + int((mask == IGNORE_INDEX).sum()), total + mask.size
            np.savez_compressed(tmp / f"{i:06d}.npz", mask=mask)
        write_json(tmp / _DONE, {"ids": ids, "ignored_share": ignored / max(total, 1)})
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
