"""Out-of-fold (OOF) predictions of a whole experiment: gathering the folds, the truth at the scoring resolution, CV
scores per class, and the post-processing search (``notebooks/20_oof.py``, ``30_ensemble.py``, ``40_submit.py``).

``gather_oof(exp_dir)`` puts the folds' held-out predictions (``fold<k>/oof_probs.npy`` + ``oof_ids.csv``, written by
``kitlib.train.train_fold``) into one array whose rows follow ``folds.csv``:

- ``artifacts/<exp>/oof_probs.npy``: (N, K, H, W) uint8 (round(p x 255)) at the scoring resolution for segmentation,
  (N, C) float16 for classification: the folds' own dtype, copied as stored;
- ``artifacts/<exp>/oof_cls_probs.npy``: (N, K) float32, only when every fold has a classification head;
- ``artifacts/<exp>/oof_ids.csv``: ``image_id`` of each row (``folds.csv`` order), so ``kitlib.train.read_oof``
  reads the gathered files as it reads a fold's.

``write_oof_masks`` streams the truth into ``oof_masks.npy``; ``cv_report`` scores OOF probs with the preset's metric
per class; ``search_postprocess`` picks per-class threshold / min_area (or the triplet) for binary and multilabel
segmentation (``kitlib.postprocess``). Multiclass segmentation is decoded by argmax and classification by the top
class: they get CV scores only.

Arrays are read a chunk of rows at a time, so a memmap of several GB (Understanding Clouds: 5546 x 4 x 350 x 525) is
never loaded whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kitlib._private import listing
from kitlib.config import atomic_path, project_path, read_json, write_csv, write_json
from kitlib.ensemble import ScoreFn, accuracy_score_fn, blend, dice_score_fn
from kitlib.folds import load_folds
from kitlib.metrics import ConfusionMatrix, dice_per_image_class
from kitlib.models import PRESENCE_ARCH
from kitlib.postprocess import (
    PostProcess,
    apply_postprocess,
    best_per_class,
    binarize,
    class_presence,
    classifier_thresholds,
    combine_class_probs,
    scale_top_k,
    search_thresholds,
    search_triplet,
    top_k_class_probs,
)
from kitlib.presets import Preset, get_preset
from kitlib.train import TrainConfig, fold_tables, iter_target_masks, read_oof

__all__ = [
    "Experiment",
    "load_experiment",
    "gather_oof",
    "read_gathered",
    "is_presence_experiment",
    "gate_class_probs",
    "presence_report",
    "save_presence_cv",
    "write_oof_masks",
    "oof_targets",
    "cv_report",
    "search_postprocess",
    "plot_search_heatmaps",
    "search_gate",
    "search_from_params",
    "parse_grid",
    "check_same_ids",
    "blend_score_fn",
    "miou_score_fn",
    "sample_rows",
    "write_blend",
    "save_cv",
    "load_postprocess",
    "plot_trace",
    "POSTPROCESS_TASKS",
]

log = logging.getLogger(__name__)

# Tasks that get the threshold / min_area search; the others are decoded by argmax.
POSTPROCESS_TASKS = ("binary", "multilabel")
# Bytes copied or scored per chunk of rows: 16 MB (about 21 Clouds images of 4 x 350 x 525 uint8).
_CHUNK_BYTES = 16 << 20


def _chunks(shape: tuple[int, ...], itemsize: int, chunk_size: int | None = None) -> Iterator[slice]:
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    rows = int(chunk_size) if chunk_size else max(1, _CHUNK_BYTES // per_row)
    for start in range(0, shape[0], rows):
        yield slice(start, min(start + rows, shape[0]))


# -------------------------------------------------------------------------------------------------- an experiment


@dataclass(frozen=True)
class Experiment:
    """One experiment's folds and data table.

    Attributes:
        exp_dir: ``artifacts/<exp>/``.
        preset: the competition.
        df: the competition table (targets included) with its ``fold`` column, rows in ``folds.csv`` order.
        params: ``fold0/config.json``'s parameters (the training configuration), {} when absent.
    """

    exp_dir: Path
    preset: Preset
    df: pd.DataFrame
    params: dict[str, Any]

    @property
    def folds(self) -> np.ndarray:
        """(N,) int64 fold of each row."""
        return self.df["fold"].to_numpy(np.int64)

    @property
    def n_folds(self) -> int:
        return int(self.df["fold"].max()) + 1


def load_experiment(
    exp_dir: str | os.PathLike, preset: str | Preset | None = None, data_dir: str | None = None, label_file: str = ""
) -> Experiment:
    """Read ``folds.csv`` and the competition table of an experiment, rows in ``folds.csv`` order.

    Args:
        exp_dir: ``artifacts/<exp>/`` (relative paths are taken from the repo root).
        preset, data_dir, label_file: the competition; None / "" takes them from ``fold0/config.json`` (10_train).
    Returns:
        Experiment.
    Raises:
        FileNotFoundError: no ``folds.csv``; no preset or data_dir given and no ``fold0/config.json``.
        ValueError: ``preset`` differs from the one the folds were trained with (both named); ids of ``folds.csv``
            missing from the table (as ``kitlib.folds.attach_folds``).
    """
    exp_dir = project_path(exp_dir)
    config_path = exp_dir / "fold0" / "config.json"
    params = read_json(config_path).get("params", {}) if config_path.is_file() else {}
    if preset is None or data_dir is None:
        if not params:
            raise FileNotFoundError(f"{config_path}: no training config; pass preset and data_dir")
    name = get_preset(preset).name if preset is not None else params["preset"]
    if params.get("preset") and params["preset"] != name:
        raise ValueError(f"{exp_dir}: trained with preset {params['preset']!r} ({config_path}), not {name!r}")
    cfg = TrainConfig(
        exp=exp_dir.name, preset=name, data_dir=str(data_dir if data_dir is not None else params["data_dir"]),
        label_file=label_file or params.get("label_file", ""), artifacts_root=str(exp_dir.parent),
    )  # fmt: skip
    full = fold_tables(cfg)[0]
    order = load_folds(exp_dir / "folds.csv")["image_id"].astype(str)
    df = full.set_index(full["image_id"].astype(str)).reindex(order)
    missing = order[df["image_id"].isna().to_numpy()].tolist()
    if missing:
        raise ValueError(f"{exp_dir / 'folds.csv'}: {len(missing)} id(s) not in the data table: {listing(missing)}")
    return Experiment(exp_dir=exp_dir, preset=get_preset(name), df=df.reset_index(drop=True), params=params)


# ------------------------------------------------------------------------------------------------------ gathering


def gather_oof(exp_dir: str | os.PathLike, chunk_size: int | None = None) -> Path:
    """Gather every fold's OOF into ``artifacts/<exp>/oof_probs.npy`` (+ ``oof_cls_probs.npy``, ``oof_ids.csv``).

    Rows follow ``folds.csv``. The array is written through a memmap to a temporary name and moved into place
    (``os.replace``), so a killed run leaves no half file and memory stays at one chunk.

    Args:
        exp_dir: ``artifacts/<exp>/`` with ``folds.csv`` and ``fold<k>/oof_probs.npy`` + ``oof_ids.csv`` for every k.
        chunk_size: rows copied at a time; None for about 16 MB.
    Returns:
        Path of ``oof_probs.npy``: (N, K, H, W) uint8 / float (segmentation) or (N, C) float16 (classification), the
        folds' dtype and per-row shape.
    Raises:
        FileNotFoundError: no ``folds.csv``; folds without OOF files (all named, with the 10_train command).
        ValueError: folds whose per-row shapes or dtypes differ; ids of ``folds.csv`` that no fold predicted, ids a
            fold predicted that ``folds.csv`` puts in another fold or does not hold, ids predicted twice (named).
    """
    exp_dir = project_path(exp_dir)
    folds = load_folds(exp_dir / "folds.csv")
    ids = folds["image_id"].astype(str).tolist()
    fold_of = dict(zip(ids, folds["fold"].astype(int), strict=True))
    position = {image_id: i for i, image_id in enumerate(ids)}
    n_folds = int(folds["fold"].max()) + 1
    missing = [k for k in range(n_folds) if not all((exp_dir / f"fold{k}" / f).is_file() for f in _FOLD_FILES)]
    if missing:
        raise FileNotFoundError(
            f"{exp_dir}: fold(s) {missing} of {n_folds} have no {' + '.join(_FOLD_FILES)}; "
            f"run notebooks/10_train.py with fold={missing[0]} (./run_all.sh runs every fold)"
        )
    parts = [read_oof(exp_dir / f"fold{k}") for k in range(n_folds)]
    first = parts[0][0]
    for k, (probs, _) in enumerate(parts):
        if probs.shape[1:] != first.shape[1:] or probs.dtype != first.dtype:
            raise ValueError(
                f"{exp_dir}/fold{k}/oof_probs.npy is {probs.dtype} {probs.shape[1:]} per row, "
                f"fold0's {first.dtype} {first.shape[1:]}"
            )
    rows = []
    seen: dict[str, int] = {}
    for k, (_, fold_ids) in enumerate(parts):
        unknown = [i for i in fold_ids if i not in position]
        if unknown:
            raise ValueError(f"{exp_dir}/fold{k}/oof_ids.csv: id(s) not in folds.csv: {listing(unknown)}")
        wrong = [f"{i} (fold {fold_of[i]})" for i in fold_ids if fold_of[i] != k]
        if wrong:
            raise ValueError(
                f"{exp_dir}/fold{k}/oof_ids.csv: id(s) that folds.csv puts in other folds: {listing(wrong)}"
            )
        twice = [i for i in fold_ids if i in seen]
        if twice:
            raise ValueError(f"{exp_dir}/fold{k}/oof_ids.csv: id(s) predicted twice: {listing(twice)}")
        seen.update(dict.fromkeys(fold_ids, k))
        rows.append(np.array([position[i] for i in fold_ids], dtype=np.int64))
    absent = [i for i in ids if i not in seen]
    if absent:
        raise ValueError(f"{exp_dir}: {len(absent)} id(s) of folds.csv have no OOF row in any fold: {listing(absent)}")

    out_path = exp_dir / "oof_probs.npy"
    _scatter(out_path, [p for p, _ in parts], rows, len(ids), chunk_size)
    cls_paths = [exp_dir / f"fold{k}" / "oof_cls_probs.npy" for k in range(n_folds)]
    if all(p.is_file() for p in cls_paths):
        _scatter(exp_dir / "oof_cls_probs.npy", [np.load(p, mmap_mode="r") for p in cls_paths], rows, len(ids), None)
    else:
        (exp_dir / "oof_cls_probs.npy").unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    write_csv(exp_dir / "oof_ids.csv", pd.DataFrame({"image_id": ids}))
    log.info("gathered %d folds of %s into %s", n_folds, exp_dir.name, out_path)
    return out_path


_FOLD_FILES = ("oof_probs.npy", "oof_ids.csv")


def _scatter(
    path: Path, parts: Sequence[np.ndarray], rows: Sequence[np.ndarray], n: int, chunk_size: int | None
) -> None:
    """Write ``parts[k]`` into rows ``rows[k]`` of a new (n, ...) .npy at ``path``, atomically, a chunk at a time."""
    first = parts[0]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(n, *first.shape[1:]))
        for part, where in zip(parts, rows, strict=True):
            if len(part) != len(where):
                raise ValueError(f"{path.name}: a fold has {len(part)} rows for {len(where)} ids")
            for sl in _chunks(part.shape, part.dtype.itemsize, chunk_size):
                out[where[sl]] = np.asarray(part[sl])
        out.flush()
        del out


def read_gathered(exp_dir: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The gathered OOF of an experiment: (oof_probs memmap, image ids, oof_cls_probs memmap or None).

    Raises:
        FileNotFoundError: not gathered yet (run ``notebooks/20_oof.py``).
    """
    exp_dir = project_path(exp_dir)
    if not (exp_dir / "oof_probs.npy").is_file():
        raise FileNotFoundError(f"{exp_dir / 'oof_probs.npy'}: not gathered; run notebooks/20_oof.py first")
    probs, ids = read_oof(exp_dir)
    cls_path = exp_dir / "oof_cls_probs.npy"
    return probs, ids, np.load(cls_path, mmap_mode="r") if cls_path.is_file() else None


def is_presence_experiment(exp_dir: str | os.PathLike) -> bool:
    """Whether ``artifacts/<exp>/`` holds a presence classifier (``10_train`` with ``arch="classifier"`` on a
    segmentation preset), read from ``fold0/config.json``."""
    path = project_path(exp_dir) / "fold0" / "config.json"
    return path.is_file() and read_json(path).get("params", {}).get("arch") == PRESENCE_ARCH


def gate_class_probs(exp_dir: str | os.PathLike, image_ids: Sequence[str]) -> np.ndarray:
    """A separate presence classifier's OOF probabilities, rows in the order of ``image_ids`` (another experiment's
    OOF), for ``search_gate(gate_probs=...)``.

    The classifier's folds are gathered first (``gather_oof``); its split may differ from the segmentation
    experiment's: each row is still predicted by a model that did not train on that image.

    Args:
        exp_dir: ``artifacts/<gate_exp>/`` of a presence classifier.
        image_ids: the ids to return rows for.
    Returns:
        (len(image_ids), K) float32 in [0, 1].
    Raises:
        FileNotFoundError: as ``gather_oof`` (folds not trained).
        ValueError: not a presence classifier (its OOF is not (N, K)); ids it has no OOF row for (named).
    """
    exp_dir = project_path(exp_dir)
    gather_oof(exp_dir)
    probs, ids, _ = read_gathered(exp_dir)
    if probs.ndim != 2 or not is_presence_experiment(exp_dir):
        raise ValueError(f"{exp_dir}: not a presence classifier (oof_probs.npy is {probs.shape}); train it with "
                         f"notebooks/10_train.py -p arch classifier")  # fmt: skip
    row_of = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in map(str, image_ids) if i not in row_of]
    if missing:
        raise ValueError(f"{exp_dir}: no OOF row for {len(missing)} id(s): {listing(missing)}")
    return np.asarray(probs, dtype=np.float32)[[row_of[str(i)] for i in image_ids]]


def presence_report(class_probs: Any, labels: Any, classes: Sequence[str], criterion: str = "f1") -> pd.DataFrame:
    """How well a presence classifier's OOF probabilities tell which classes an image has.

    Args:
        class_probs: (N, K) probabilities; labels: (N, K) {0, 1} or bool (``kitlib.formats.class_presence``).
        classes: the K class names.
        criterion: how the gate threshold is picked (``classifier_thresholds``).
    Returns:
        DataFrame, one row per class then ``"overall"`` (means over classes; accuracy over all pairs): ``class``,
        ``n_positive``, ``accuracy@0.5``, ``threshold`` (by ``criterion``), and ``precision``, ``recall``, ``f1`` at
        that threshold.
    Raises:
        ValueError: shapes that differ or are not (N, K); K != len(classes).
    """
    probs, y = np.asarray(class_probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if probs.ndim != 2 or probs.shape != y.shape or probs.shape[1] != len(classes):
        raise ValueError(f"class_probs {probs.shape} and labels {y.shape} must be (N, {len(classes)})")
    thresholds = classifier_thresholds(probs, y, criterion)
    rows = []
    for k, name in enumerate(classes):
        kept = probs[:, k] > thresholds[k]
        tp = int(np.sum(kept & y[:, k]))
        precision = tp / kept.sum() if kept.any() else float("nan")
        recall = tp / y[:, k].sum() if y[:, k].any() else float("nan")
        f1 = 2 * tp / (kept.sum() + y[:, k].sum()) if (kept.sum() + y[:, k].sum()) else float("nan")
        acc = float(np.mean((probs[:, k] > 0.5) == y[:, k]))
        rows.append((str(name), int(y[:, k].sum()), acc, float(thresholds[k]), precision, recall, f1))
    columns = ["class", "n_positive", "accuracy@0.5", "threshold", "precision", "recall", "f1"]
    table = pd.DataFrame(rows, columns=columns)
    overall = table.drop(columns="class").mean(numeric_only=True)
    overall["n_positive"], overall["accuracy@0.5"] = int(y.sum()), float(np.mean((probs > 0.5) == y))
    overall["threshold"] = np.nan
    table.loc[len(table)] = {"class": "overall", **overall.to_dict()}
    return table.astype({"n_positive": np.int64})


# ---------------------------------------------------------------------------------------------------------- truth


def write_oof_masks(
    df: pd.DataFrame, preset: str | Preset, size: tuple[int, int], path: str | os.PathLike
) -> np.ndarray:
    """Stream the true masks of ``df`` at the scoring ``size`` into ``path`` (a .npy), one image at a time.

    Args:
        df: the rows (targets included), in OOF order.
        preset: a segmentation preset.
        size: (H, W), the OOF's resolution (``kitlib.train.scoring_size``).
        path: e.g. ``artifacts/<exp>/oof_masks.npy``; written atomically.
    Returns:
        The file as a read-only memmap: (N, K, H, W) uint8 {0, 1} for binary/multilabel; (N, H, W) uint8 class
        indices (0 = background) for multiclass.
    Raises:
        ValueError: a classification preset; as ``kitlib.train.iter_target_masks`` (the image is named).
    """
    preset = get_preset(preset)
    if not preset.is_segmentation:
        raise ValueError(f"preset {preset.name!r} is classification: its targets are df['label'], not masks")
    height, width = size
    shape = (
        (len(df), height, width)
        if preset.task == "multiclass"
        else (len(df), len(preset.target_classes), height, width)
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, masks in enumerate(iter_target_masks(df, preset, size)):
            out[i] = masks
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def oof_targets(
    exp: Experiment, size: tuple[int, int] | None, path: str | os.PathLike | None = None, reuse: bool = False
) -> np.ndarray:
    """What an experiment's OOF is scored against, rows in ``folds.csv`` order.

    Args:
        exp: ``load_experiment``.
        size: (H, W) of the OOF (segmentation); ignored for classification.
        path: where to write the masks; default ``exp_dir/oof_masks.npy``.
        reuse: read an existing file of the expected shape instead of writing it again.
    Returns:
        Segmentation: ``write_oof_masks``'s memmap; classification: (N,) int64 labels.
    """
    if not exp.preset.is_segmentation:
        return exp.df["label"].to_numpy(np.int64)
    path = Path(path) if path is not None else exp.exp_dir / "oof_masks.npy"
    if reuse and path.is_file():
        masks = np.load(path, mmap_mode="r")
        k = () if exp.preset.task == "multiclass" else (len(exp.preset.target_classes),)
        if masks.shape == (len(exp.df), *k, *size):
            return masks
    return write_oof_masks(exp.df, exp.preset, size, path)


# ------------------------------------------------------------------------------------------------------ CV scores


def cv_report(
    oof_probs: Any,
    masks_or_labels: Any,
    preset: str | Preset,
    threshold: float = 0.5,
    postprocess: PostProcess | None = None,
    chunk_size: int | None = None,
    cls_probs: Any = None,
) -> pd.DataFrame:
    """The preset's metric per class and overall, a chunk of rows at a time.

    Args:
        oof_probs: (N, K, H, W) uint8 (p x 255) or float probs (segmentation); (N, C) probs (classification).
        masks_or_labels: binary/multilabel (N, K, H, W) {0, 1}; multiclass (N, H, W) class indices;
            classification (N,) labels.
        preset: the competition (its ``task``, ``classes``, ``metric``, ``dice_empty_score``).
        threshold: binary/multilabel: a pixel is foreground where p > threshold (``kitlib.postprocess.binarize``).
        postprocess: binary/multilabel: apply these settings per image instead of ``threshold``.
        chunk_size: rows per chunk; None for about 16 MB of probs.
        cls_probs: (N, K) classification-head probs passed to a gated ``postprocess`` (``head_weight``).
    Returns:
        DataFrame, one row per class then ``"overall"``; columns ``class``, the metric, ``n``:
        dice: mean Dice over images per class (pairs with both masks empty score ``dice_empty_score``, or are skipped
        when it is None), overall the mean over all (image, class) pairs; ``n`` the pairs counted.
        miou: IoU per class (background included) from one confusion matrix, overall mIoU; ``n`` true pixels.
        accuracy: recall per class (accuracy on the images of that class), overall accuracy; ``n`` images.
    Raises:
        ValueError: row counts or shapes that differ (both named).
    """
    preset = get_preset(preset)
    p = oof_probs
    y = masks_or_labels
    if len(p) != len(y):
        raise ValueError(f"oof_probs has {len(p)} rows, the targets {len(y)}")
    if not preset.is_segmentation:
        pred = np.asarray(p).argmax(axis=1)
        y = np.asarray(y, dtype=np.int64)
        classes = list(preset.classes)
        rec = [
            (name, float(np.mean(pred[y == c] == c)) if np.any(y == c) else np.nan, int(np.sum(y == c)))
            for c, name in enumerate(classes)
        ]
        rec.append(("overall", float(np.mean(pred == y)), len(y)))
        return pd.DataFrame(rec, columns=["class", "accuracy", "n"])
    if preset.task == "multiclass":
        if tuple(y.shape) != (p.shape[0], *p.shape[2:]):
            raise ValueError(f"labels shape {tuple(y.shape)} != oof_probs {tuple(p.shape)} without its class axis")
        cm = ConfusionMatrix(preset.num_classes)
        for sl in _chunks(p.shape, p.dtype.itemsize, chunk_size):
            cm.update(np.asarray(p[sl]).argmax(1), np.asarray(y[sl]))
        iou = cm.iou()
        true_pixels = cm.hist.sum(axis=1)
        rec = [(name, float(iou[c]), int(true_pixels[c])) for c, name in enumerate(preset.classes)]
        rec.append(("overall", float(cm.miou()), int(cm.total)))
        return pd.DataFrame(rec, columns=["class", "miou", "n"])
    if tuple(y.shape) != tuple(p.shape):
        raise ValueError(f"masks shape {tuple(y.shape)} != oof_probs shape {tuple(p.shape)}")
    dice = np.empty(p.shape[:2], dtype=np.float64)
    for sl in _chunks(p.shape, p.dtype.itemsize, chunk_size):
        chunk = np.asarray(p[sl])
        if postprocess is not None:
            heads = [None] * len(chunk) if cls_probs is None else np.asarray(cls_probs[sl])
            pred = (
                np.stack([apply_postprocess(img, postprocess, head) for img, head in zip(chunk, heads, strict=True)])
                if len(chunk)
                else chunk
            )
        else:
            pred = binarize(chunk, threshold)
        dice[sl] = dice_per_image_class(pred, np.asarray(y[sl]), empty_score=preset.dice_empty_score)
    valid = ~np.isnan(dice)
    with np.errstate(invalid="ignore"):
        per_class = np.nansum(dice, axis=0) / valid.sum(axis=0)
        overall = float(np.nansum(dice) / valid.sum()) if valid.any() else np.nan
    rec = [(name, float(per_class[c]), int(valid[:, c].sum())) for c, name in enumerate(preset.target_classes)]
    rec.append(("overall", overall, int(valid.sum())))
    return pd.DataFrame(rec, columns=["class", "dice", "n"])


# --------------------------------------------------------------------------------------------- post-processing


def search_postprocess(
    oof_probs: Any,
    oof_masks: Any,
    preset: str | Preset,
    thresholds: Sequence[float],
    min_areas: Sequence[int],
    triplet: dict[str, Sequence[float]] | None = None,
    num_workers: int | None = None,
    chunk_size: int | None = None,
) -> tuple[PostProcess, dict[str, pd.DataFrame | None]]:
    """Pick per class the (threshold, min_area) with the best OOF Dice; optionally the triplet scheme too.

    Only binary and multilabel segmentation: multiclass is decoded by argmax, classification by the top class.

    Args:
        oof_probs: (N, K, H, W) uint8 (p x 255) or float probs; memmaps are streamed.
        oof_masks: (N, K, H, W) {0, 1} truth (``write_oof_masks``).
        preset: the competition (class names, ``dice_empty_score``).
        thresholds, min_areas: the grid of ``kitlib.postprocess.search_thresholds``.
        triplet: also search the triplet scheme: ``{"top_thresholds": [...], "min_contour_areas": [...],
            "bottom_thresholds": [...]}`` (``search_triplet``); the scheme with the higher mean over classes of the
            per-class best Dice wins (ties: threshold + min_area).
        num_workers, chunk_size: as ``search_thresholds``.
    Returns:
        ``(params, tables)``: ``params`` a ``PostProcess`` whose ``meta`` holds ``method`` ("threshold" or "triplet"),
        ``classes``, ``search_dice`` (the winner's per-class Dice), ``threshold_search_dice`` and, with a triplet,
        ``triplet_search_dice`` (means over classes). ``tables``: ``"threshold"`` (the search_thresholds table with a
        ``class`` column), ``"triplet"`` (the same for the triplet, or None), ``"best"`` (one row per class: the best
        setting and Dice of each scheme).
    Raises:
        ValueError: a preset that is not binary/multilabel; as ``search_thresholds`` / ``search_triplet``.
    """
    preset = get_preset(preset)
    if preset.task not in POSTPROCESS_TASKS:
        raise ValueError(f"preset {preset.name!r} ({preset.task}): no threshold search; it is decoded by argmax")
    classes = list(preset.target_classes)
    kwargs = dict(empty_score=preset.dice_empty_score, num_workers=num_workers, chunk_size=chunk_size)
    grid = search_thresholds(oof_probs, oof_masks, thresholds, min_areas, **kwargs)
    grid.insert(1, "class", [classes[i] for i in grid["class_index"]])
    best = best_per_class(grid.drop(columns="class"))
    summary = pd.DataFrame({"class": classes, "threshold": best["threshold"], "min_area": best["min_area"],
                            "threshold_dice": best["dice"]})  # fmt: skip
    t_mean = float(np.nanmean(best["dice"]))
    params = PostProcess(threshold=best["threshold"], min_area=best["min_area"])
    meta: dict[str, Any] = {"method": "threshold", "classes": classes, "search_dice": best["dice"],
                            "threshold_search_dice": t_mean}  # fmt: skip
    tgrid = None
    if triplet:
        unknown = sorted(set(triplet) - {"top_thresholds", "min_contour_areas", "bottom_thresholds"})
        if unknown:
            raise ValueError(
                f"unknown triplet key(s) {unknown}; keys: top_thresholds, min_contour_areas, bottom_thresholds"
            )
        tgrid = search_triplet(oof_probs, oof_masks, triplet["top_thresholds"], triplet["min_contour_areas"],
                               triplet["bottom_thresholds"], **kwargs)  # fmt: skip
        tgrid.insert(1, "class", [classes[i] for i in tgrid["class_index"]])
        tbest = best_per_class(tgrid.drop(columns="class"))
        for col in ("top_score_threshold", "min_contour_area", "bottom_score_threshold"):
            summary[col] = tbest[col]
        summary["triplet_dice"] = tbest["dice"]
        meta["triplet_search_dice"] = tr_mean = float(np.nanmean(tbest["dice"]))
        if tr_mean > t_mean:
            params = PostProcess(top_score_threshold=tbest["top_score_threshold"],
                                 min_contour_area=tbest["min_contour_area"],
                                 bottom_score_threshold=tbest["bottom_score_threshold"])  # fmt: skip
            meta.update(method="triplet", search_dice=tbest["dice"])
    params = dataclasses.replace(params, meta=meta)
    return params, {"threshold": grid, "triplet": tgrid, "best": summary}


def search_gate(
    oof_probs: Any,
    oof_masks: Any,
    preset: str | Preset,
    params: PostProcess,
    cls_probs: Any = None,
    top_k: int | None = None,
    head_weights: Sequence[float] = (0.5,),
    criterion: str = "f1",
    chunk_size: int | None = None,
    gate_probs: Any = None,
    gate_exp: str = "",
) -> tuple[PostProcess, pd.DataFrame]:
    """Add an image-level class gate to ``params`` when it raises the OOF score (Understanding Clouds 1st place;
    Severstal top solutions for the separate classifier).

    The gate's class probabilities are the mean of the top-K pixel probabilities (``top_k_class_probs``; K = 17,500
    at 350 x 525 scaled to the OOF resolution by default), alone or averaged with the classification head's
    (``cls_probs``, one candidate per ``head_weights``); with ``gate_probs``, also a separate presence classifier's
    probabilities alone and averaged with the top-K ones. Per-class thresholds are read off the OOF
    precision-recall curve (``classifier_thresholds``, ``criterion``); each candidate is tried with and without
    forcing the most probable class on (``force_one_class``). Every candidate is scored with ``cv_report`` on the
    same OOF; the best one is kept only if it beats ``params`` without a gate.

    Args:
        oof_probs: (N, K, H, W) uint8 or float probs; oof_masks: (N, K, H, W) {0, 1}.
        preset: binary or multilabel.
        params: the binarisation chosen by ``search_postprocess``.
        cls_probs: (N, K) head probs (``oof_cls_probs.npy``), or None.
        top_k: K; None scales 17,500 at 350 x 525 to (H, W).
        head_weights: weights of the head (or of the separate classifier) in the averaged candidates.
        criterion: ``classifier_thresholds`` criterion ("f1", "precision>=0.9", ...).
        gate_probs: (N, K) OOF probs of a separate presence classifier (``gate_class_probs``), rows as ``oof_probs``.
        gate_exp: that classifier's experiment, saved as ``PostProcess.gate_exp`` when one of its candidates wins.
    Returns:
        ``(params, table)``: the chosen ``PostProcess`` (its ``meta["gate"]`` says which candidate won) and one row per
        candidate: ``gate`` (description), ``head_weight``, ``force_one_class``, ``dice`` (overall OOF score).
    Raises:
        ValueError: a preset that is not binary/multilabel; ``gate_probs`` without ``gate_exp`` or of another shape
            than (N, K).
    """
    preset = get_preset(preset)
    if preset.task not in POSTPROCESS_TASKS:
        raise ValueError(f"preset {preset.name!r} ({preset.task}): no class gate")
    k = top_k or scale_top_k(tuple(oof_probs.shape[-2:]))
    labels = class_presence(oof_masks, chunk_size=chunk_size)
    top = top_k_class_probs(oof_probs, k, chunk_size=chunk_size)
    base = dataclasses.replace(params, classifier_threshold=None, force_one_class=False, top_k=None, head_weight=None,
                               gate_exp=None)  # fmt: skip
    rows = [("none", None, False, _overall(cv_report(oof_probs, oof_masks, preset, postprocess=base,
                                                      chunk_size=chunk_size)))]  # fmt: skip
    # (name, gate probs, evaluation class probs, top_k, head_weight, gate_exp)
    candidates = [(f"top-{k}", top, None, k, None, None)]
    for source, probs, exp in (("head", cls_probs, None), (f"classifier {gate_exp}", gate_probs, gate_exp)):
        if probs is None:
            continue
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != top.shape:
            raise ValueError(f"{source} probs must be (N, K) = {top.shape}, got {probs.shape}")
        if exp is not None:
            if not gate_exp:
                raise ValueError("gate_probs needs gate_exp, the classifier's experiment, for 40_submit")
            candidates.append((source, probs, probs, None, None, exp))
        candidates += [(f"top-{k} + {source} x {w:g}", combine_class_probs(top, probs, w), probs, k, float(w), exp)
                       for w in head_weights if w > 0]  # fmt: skip
    best, best_score = base, rows[0][3]
    for name, probs_c, eval_probs, cand_k, weight, exp in candidates:
        thresholds = classifier_thresholds(probs_c, labels, criterion)
        for force in (False, True):
            cand = dataclasses.replace(
                base, classifier_threshold=list(thresholds), force_one_class=force, top_k=cand_k, head_weight=weight,
                gate_exp=exp,
            )  # fmt: skip
            score = _overall(cv_report(oof_probs, oof_masks, preset, postprocess=cand, chunk_size=chunk_size,
                                       cls_probs=eval_probs))  # fmt: skip
            rows.append((name, weight, force, score))
            if score > best_score:
                best, best_score = cand, score
    table = pd.DataFrame(rows, columns=["gate", "head_weight", "force_one_class", "dice"])
    winner = table.loc[table["dice"].idxmax()]
    meta = {**params.meta, "gate": str(winner["gate"]) if best is not base else "none", "gate_dice": best_score}
    return dataclasses.replace(best, meta=meta), table


def search_from_params(
    oof_probs: Any,
    oof_masks: Any,
    preset: str | Preset,
    thresholds: str | Sequence[float],
    min_areas: str | Sequence[int],
    triplet: bool = False,
    top_thresholds: str | Sequence[float] = (),
    min_contour_areas: str | Sequence[int] = (),
    bottom_thresholds: str | Sequence[float] = (),
    gate: bool = False,
    top_k: int | None = None,
    cls_probs: Any = None,
    num_workers: int | None = None,
    gate_probs: Any = None,
    gate_exp: str = "",
) -> tuple[PostProcess, dict[str, pd.DataFrame | None]]:
    """The post-processing search of ``20_oof`` / ``30_ensemble`` from their notebook parameters: the grids as
    comma-separated strings or lists (``parse_grid``), ``search_postprocess`` (threshold x min_area, optionally the
    triplet), then, with ``gate``, ``search_gate`` (with a separate classifier's ``gate_probs`` / ``gate_exp`` when
    given).

    Returns:
        ``(params, tables)`` as ``search_postprocess``, plus ``tables["gate"]`` (``search_gate``'s table, or None).
    """
    grids = None
    if triplet:
        grids = dict(
            top_thresholds=parse_grid(top_thresholds),
            min_contour_areas=parse_grid(min_contour_areas, int),
            bottom_thresholds=parse_grid(bottom_thresholds),
        )
    params, tables = search_postprocess(
        oof_probs, oof_masks, preset, parse_grid(thresholds), parse_grid(min_areas, int), triplet=grids,
        num_workers=num_workers,
    )  # fmt: skip
    tables["gate"] = None
    if gate:
        params, tables["gate"] = search_gate(oof_probs, oof_masks, preset, params, cls_probs, top_k=top_k or None,
                                             gate_probs=gate_probs, gate_exp=gate_exp)  # fmt: skip
    return params, tables


def _overall(report: pd.DataFrame) -> float:
    return float(report.loc[report["class"] == "overall"].iloc[0, 1])


def plot_search_heatmaps(df: pd.DataFrame, key: str = "dice") -> Figure:
    """The threshold x min_area score surface of each class, best cell marked.

    Args:
        df: a ``search_thresholds`` table (``class_index``, ``threshold``, ``min_area``, ``key``; ``class`` if present
            names the panels).
        key: the score column.
    Returns:
        Figure, one heatmap per class (rows: thresholds, columns: min_areas), values written in the cells.
    """
    classes = df.drop_duplicates("class_index").sort_values("class_index")
    n = len(classes)
    fig = Figure(figsize=(min(4.2 * n, 17), 3.8 if n <= 4 else 3.8 * -(-n // 4)), layout="constrained")
    cols = min(n, 4)
    axes = np.atleast_1d(fig.subplots(-(-n // cols), cols, squeeze=False)).ravel()
    for ax, (_, row) in zip(axes, classes.iterrows(), strict=False):
        sub = df[df["class_index"] == row["class_index"]]
        table = sub.pivot_table(index="threshold", columns="min_area", values=key, aggfunc="first")
        values = table.to_numpy(dtype=np.float64)
        im = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=45, fontsize=7)
        ax.set_yticks(range(table.shape[0]), [f"{t:g}" for t in table.index], fontsize=7)
        if table.size <= 120:
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6, color="w")
        if np.isfinite(values).any():
            i, j = np.unravel_index(np.nanargmax(values), values.shape)
            ax.add_patch(_rect(j, i))
            title = f"best {values[i, j]:.4f} @ t={table.index[i]:g}, area={table.columns[j]}"
        else:
            title = "no score"
        ax.set_title(f"{row.get('class', int(row['class_index']))}\n{title}", fontsize=8)
        ax.set_xlabel("min_area", fontsize=8)
        ax.set_ylabel("threshold", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes[n:]:
        ax.axis("off")
    return fig


def _rect(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def parse_grid(values: str | Sequence[float] | float, kind: type = float) -> list:
    """A notebook parameter as a list: "0.3,0.4,0.5" or "0.3 0.4", a list, or a single number.

    Raises:
        ValueError: an empty grid or a value that is not a number (named).
    """
    if isinstance(values, str):
        items = [v for v in values.replace(",", " ").split() if v]
    elif isinstance(values, (int, float)):
        items = [values]
    else:
        items = list(values)
    try:
        out = [kind(float(v)) if kind is int else kind(v) for v in items]
    except ValueError as e:
        raise ValueError(f"grid {values!r}: {e}") from e
    if not out:
        raise ValueError(f"empty grid {values!r}")
    return out


# -------------------------------------------------------------------------------------------------------- blending


def check_same_ids(ids_by_exp: dict[str, Sequence[str]]) -> list[str]:
    """The common row ids of several experiments' gathered OOFs, which must be equal and in the same order.

    Raises:
        ValueError: an experiment whose ids differ from the first one's (count, ids missing or extra, or order).
    """
    names = list(ids_by_exp)
    ref = list(ids_by_exp[names[0]])
    for name in names[1:]:
        ids = list(ids_by_exp[name])
        if ids == ref:
            continue
        extra, absent = sorted(set(ids) - set(ref)), sorted(set(ref) - set(ids))
        detail = (f"{len(absent)} missing: {listing(absent)}; {len(extra)} extra: {listing(extra)}"
                  if extra or absent else "same ids in another order")  # fmt: skip
        raise ValueError(
            f"experiments {names[0]!r} and {name!r} have different OOF rows ({len(ref)} vs {len(ids)}; {detail}); "
            "blend only experiments trained on the same folds.csv"
        )
    return ref


def miou_score_fn(labels: Any, num_classes: int) -> ScoreFn:
    """mIoU of the blend's argmax over one confusion matrix (the trash contest), as a chunked ``ScoreFn``.

    Args:
        labels: (N, H, W) class indices (a memmap is read per chunk).
        num_classes: C, background included.
    """

    def stats(blend: np.ndarray, rows: np.ndarray) -> np.ndarray:
        cm = ConfusionMatrix(num_classes)
        cm.update(blend.argmax(1), np.asarray(labels[rows]))
        return cm.hist.ravel().astype(np.float64)

    def finalize(total: np.ndarray) -> float:
        hist = total.reshape(num_classes, num_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else np.nan

    return ScoreFn(stats=stats, finalize=finalize, name="miou", n_rows=len(labels))


def blend_score_fn(preset: str | Preset, targets: Any) -> ScoreFn:
    """The preset's metric as a ``kitlib.ensemble.ScoreFn`` (Dice at 0.5, mIoU of the argmax, accuracy)."""
    preset = get_preset(preset)
    if not preset.is_segmentation:
        return accuracy_score_fn(targets)
    if preset.task == "multiclass":
        return miou_score_fn(targets, preset.num_classes)
    return dice_score_fn(targets, 0.5, empty_score=preset.dice_empty_score)


def sample_rows(n: int, max_rows: int, seed: int = 0) -> np.ndarray | None:
    """Sorted random row indices to fit blend weights on (``max_rows`` of ``n``); None when all rows are used
    (``max_rows`` <= 0 or >= n)."""
    if max_rows <= 0 or max_rows >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def write_blend(
    oofs: dict[str, np.ndarray], weights: Sequence[float], out_dir: str | os.PathLike, ids: Sequence[str]
) -> np.ndarray:
    """The weighted blend of gathered OOFs as ``out_dir/oof_probs.npy`` (+ ``oof_ids.csv``), streamed into a memmap and
    moved into place atomically.

    Returns:
        The file as a read-only memmap: uint8 (p x 255) when every input is uint8, else float32; rows as ``ids``.
    """
    out_dir = project_path(out_dir)
    first = next(iter(oofs.values()))
    dtype = np.uint8 if all(a.dtype == np.uint8 for a in oofs.values()) else np.float32
    path = out_dir / "oof_probs.npy"
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=first.shape)
        blend(oofs, np.asarray(weights, dtype=np.float64), out_dtype=dtype, out=out)
        out.flush()
        del out
    write_csv(out_dir / "oof_ids.csv", pd.DataFrame({"image_id": list(ids)}))
    return np.load(path, mmap_mode="r")


def save_cv(
    out_dir: str | os.PathLike,
    preset: str | Preset,
    raw: pd.DataFrame,
    post: pd.DataFrame | None = None,
    params: PostProcess | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/cv.json`` and ``out_dir/postprocess.json`` and return the CV summary.

    Args:
        raw: ``cv_report`` at probability 0.5 (argmax for multiclass / classification).
        post: ``cv_report`` with the chosen post-processing (None: same as ``raw``).
        params: the chosen ``PostProcess`` (binary/multilabel); None writes ``{"decode": "argmax"}`` for multiclass
            segmentation and removes any ``postprocess.json`` for classification.
        extra: more keys for cv.json.
    Returns:
        cv.json: ``{"metric", "cv", "cv_postprocessed", "per_class": {class: {"cv", "cv_postprocessed", "n"}},
        "postprocess": method, ...extra}``; scores NaN -> null.
    """
    preset = get_preset(preset)
    out_dir = project_path(out_dir)
    post = raw if post is None else post
    metric = raw.columns[1]

    def num(v: Any) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    r, p = raw.set_index("class"), post.set_index("class")
    per_class = {
        str(c): {"cv": num(r.loc[c, metric]), "cv_postprocessed": num(p.loc[c, metric]), "n": int(r.loc[c, "n"])}
        for c in r.index
        if c != "overall"
    }
    if params is not None:
        params.to_json(out_dir / "postprocess.json")
        method = params.meta.get("method", "threshold")
    elif preset.is_segmentation:
        write_json(out_dir / "postprocess.json", {"decode": "argmax", "task": preset.task})
        method = "argmax"
    else:
        (out_dir / "postprocess.json").unlink(missing_ok=True)
        method = "none"
    summary = {
        "metric": metric,
        "cv": num(r.loc["overall", metric]),
        "cv_postprocessed": num(p.loc["overall", metric]),
        "per_class": per_class,
        "postprocess": method,
        **(extra or {}),
    }
    write_json(out_dir / "cv.json", summary)
    return summary


def save_presence_cv(out_dir: str | os.PathLike, report: pd.DataFrame, extra: dict[str, Any] | None = None) -> dict:
    """Write a presence classifier's ``out_dir/cv.json`` from ``presence_report`` and remove any ``postprocess.json``
    (its probabilities gate another experiment's masks; it submits nothing itself).

    Returns:
        cv.json: ``{"metric": "presence_f1", "cv": mean F1 over classes, "cv_postprocessed": the same, "accuracy":
        accuracy at 0.5 over (image, class) pairs, "per_class": {class: report row}, "postprocess", ...extra}``;
        NaN -> null.
    """
    out_dir = project_path(out_dir)
    table = report.set_index("class")

    def plain(row: pd.Series) -> dict[str, Any]:
        values = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.to_dict().items()}
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in values.items()}

    overall = plain(table.loc["overall"])
    summary = {
        "metric": "presence_f1",
        "cv": overall["f1"],
        "cv_postprocessed": overall["f1"],
        "accuracy": overall["accuracy@0.5"],
        "per_class": {str(c): plain(row) for c, row in table.drop(index="overall").iterrows()},
        "postprocess": "none: a gate for another experiment (20_oof gate_exp)",
        **(extra or {}),
    }
    write_json(out_dir / "cv.json", summary)
    (out_dir / "postprocess.json").unlink(missing_ok=True)
    return summary


def load_postprocess(exp_dir: str | os.PathLike) -> PostProcess | str | None:
    """``exp_dir/postprocess.json`` as written by ``save_cv``: a ``PostProcess``, ``"argmax"`` (multiclass), or None
    (classification: no file)."""
    path = project_path(exp_dir) / "postprocess.json"
    if not path.is_file():
        return None
    data = read_json(path)
    return str(data["decode"]) if "decode" in data else PostProcess.from_dict(data)


def plot_trace(trace: Sequence[float], title: str = "hill climbing") -> Figure:
    """Score after each accepted step of ``kitlib.ensemble.hill_climb`` (or the best-so-far trace of an optimiser)."""
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(trace)), np.asarray(trace, dtype=np.float64), marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig
