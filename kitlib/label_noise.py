"""Label noise: which training labels look wrong from the out-of-fold predictions, and training on a reviewed list.

- ``find_label_issues`` (classification): ``cleanlab.filter.find_label_issues`` (confident learning, Northcutt et al.
  2021, "Confident Learning: Estimating Uncertainty in Dataset Labels") on the (N, C) OOF probabilities; every row
  ranked by its self-confidence (the OOF probability of its given label), the rows cleanlab flags marked. The Cassava
  2020 teams hunted such labels: about 5 % of its train set is thought mislabelled.
- ``rank_segmentation`` (segmentation): the images ranked by their OOF per-image Dice at probability 0.5 (worst
  first; the per-pixel cross-entropy of the OOF probabilities against the masks breaks ties and is shown), streamed a
  chunk of rows at a time from the memmaps (Clouds: 5546 x 4 x 350 x 525 is never loaded whole); the worst
  ``fraction`` (and every image below ``max_dice``) flagged. The Dacon building team found wrong ground truth by
  looking at its worst images.
- ``label_issues`` runs the one that fits the task; ``save_label_issues`` writes ``artifacts/<exp>/label_issues.csv``
  (``notebooks/20_oof.py``). Nothing is dropped silently: the user reviews that file and keeps the rows to drop or
  relabel in a file of their own.
- ``review_training_rows`` (``kitlib.train.fold_tables``): a run's ``exclude_ids_file`` rows leave every fold's
  training set and its ``relabel_file`` replaces training labels; validation rows (the OOF, the CV) keep every image
  and its original label, so the CV stays comparable with the plain run. ``review_digest`` puts the files' content in
  the run's identity (``kitlib.train.fold_run_id``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kitlib._pixels import as_float_probs
from kitlib._private import chunk_rows, listing, progress, row_slices, to_numpy
from kitlib.io import project_path, write_csv
from kitlib.metrics import dice_per_image_class
from kitlib.postprocess import binarize
from kitlib.presets import Preset

__all__ = [
    "ISSUE_TASKS",
    "LABEL_ISSUES_FILE",
    "find_label_issues",
    "label_issues",
    "load_id_list",
    "load_relabels",
    "rank_segmentation",
    "review_digest",
    "review_training_rows",
    "save_label_issues",
]

log = logging.getLogger(__name__)

#: The ranked table beside an experiment's ``cv.json`` (``notebooks/20_oof.py``).
LABEL_ISSUES_FILE = "label_issues.csv"
#: Tasks whose labels are ranked (a presence classifier's are the masks' presence: rank the segmentation instead).
ISSUE_TASKS = ("classification", "binary", "multilabel", "multiclass")
#: Probabilities are clipped to [EPS, 1 - EPS] for the cross-entropy: uint8 OOF holds exact 0 and 1.
EPS = 1e-3


def find_label_issues(
    oof_probs: Any, labels: Any, image_ids: Sequence[str], filter_by: str = "prune_by_noise_rate"
) -> pd.DataFrame:
    """Rank classification rows by how likely their label is wrong and flag the likely wrong ones (cleanlab).

    Args:
        oof_probs: (N, C) out-of-fold class probabilities (float16/32/64, each row a distribution; rows are
            renormalised in float64, as float16 rows do not sum to 1 exactly).
        labels: (N,) integer labels in [0, C).
        image_ids: the N ids.
        filter_by: ``cleanlab.filter.find_label_issues``'s method ("prune_by_noise_rate", the paper's default;
            "prune_by_class", "both", "confident_learning", "predicted_neq_given").
    Returns:
        One row per image, worst first: ``image_id``, ``label``, ``suggested_label`` (the OOF argmax),
        ``self_confidence`` (the OOF probability of the given label, in [0, 1]: cleanlab's label quality),
        ``suggested_confidence`` (the argmax's probability), ``rank`` (1 = the least likely label) and ``flagged``
        (bool: cleanlab's label issues).
    Raises:
        ValueError: shapes that do not fit, a label outside [0, C) (row and id named), non-finite or negative probs.
    Source:
        Northcutt, Jiang, Chuang, "Confident Learning" (JAIR 2021), the ``cleanlab`` library.
    """
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    p, y, ids = np.asarray(to_numpy(oof_probs), dtype=np.float64), to_numpy(labels), [str(i) for i in image_ids]
    if p.ndim != 2 or y.shape != (len(p),) or len(ids) != len(p) or y.dtype.kind not in "iu":
        raise ValueError(f"need (N, C) probs, (N,) integer labels and N ids; got {p.shape}, {y.dtype} {y.shape} and "
                         f"{len(ids)} ids")  # fmt: skip
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"row {i} ({ids[i]}): label {int(y[i])} outside [0, {p.shape[1]})")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("oof_probs hold non-finite or negative values")
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    y = y.astype(np.int64)
    flagged = np.zeros(len(y), bool)
    flagged[cleanlab_issues(y, p, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1)] = True
    quality = get_label_quality_scores(y, p, method="self_confidence")
    order = np.lexsort((ids, quality))  # worst label first; ties by id, so the table does not depend on row order
    table = pd.DataFrame({
        "image_id": ids, "label": y, "suggested_label": p.argmax(axis=1), "self_confidence": quality,
        "suggested_confidence": p.max(axis=1), "flagged": flagged,
    }).iloc[order].reset_index(drop=True)  # fmt: skip
    table.insert(5, "rank", np.arange(1, len(table) + 1))
    log.info("cleanlab (%s) flags %d of %d labels", filter_by, int(flagged.sum()), len(y))
    return table


def _image_scores(p: np.ndarray, t: np.ndarray, preset: Preset) -> tuple[np.ndarray, np.ndarray]:
    """(n,) Dice at 0.5 (mean over classes) and (n,) mean per-pixel cross-entropy of one chunk of rows."""
    probs = np.clip(as_float_probs(p), EPS, 1.0 - EPS)
    if preset.task == "multiclass":  # (n, C, H, W) probs, (n, H, W) class indices; background excluded from Dice
        labels = t.astype(np.int64)
        loss = -np.log(np.take_along_axis(probs, labels[:, None], axis=1)[:, 0]).mean(axis=(1, 2))
        pred = probs.argmax(axis=1)
        classes = np.arange(1, probs.shape[1])[None, :, None, None]
        dice = dice_per_image_class(pred[:, None] == classes, labels[:, None] == classes, empty_score=None)
        valid = ~np.isnan(dice)
        mean = np.where(valid, dice, 0).sum(1) / np.maximum(valid.sum(1), 1)
        return np.where(valid.any(axis=1), mean, 1.0), loss
    truth = t.astype(bool)
    loss = -np.where(truth, np.log(probs), np.log1p(-probs)).mean(axis=(1, 2, 3))
    return dice_per_image_class(binarize(p, 0.5), truth, empty_score=1.0).mean(axis=1), loss


def rank_segmentation(
    oof_probs: Any,
    masks: Any,
    image_ids: Sequence[str],
    preset: Preset,
    fraction: float = 0.05,
    max_dice: float = 0.0,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Rank segmentation images by how badly the OOF prediction agrees with their mask, worst first.

    An image whose truth mask is wrong (a missed object, a shifted or empty mask) disagrees with a model that
    generalises: its OOF Dice is low and its cross-entropy high. Read a chunk of rows at a time.

    Args:
        oof_probs: binary/multilabel (N, K, H, W) uint8 (p x 255) or float in [0, 1]; multiclass (N, C, H, W);
            a memmap is streamed.
        masks: the truth at the same size: (N, K, H, W) {0, 1}, multiclass (N, H, W) class indices
            (``Experiment.targets``).
        image_ids: the N ids.
        preset: the task (binary, multilabel, multiclass).
        fraction: the worst fraction of the images flagged, in [0, 1] (rounded up: 0.05 of 21 images flags 2).
        max_dice: also flag every image whose Dice is below this (0: none by this rule).
        chunk_size: rows per chunk; None: about 16 MB of float32 work per chunk (``kitlib._private.chunk_rows``).
    Returns:
        One row per image: ``image_id``, ``dice`` (mean over classes at probability 0.5; a class empty in both
        counts 1, as on Kaggle; multiclass: the object classes present in either, 1 when none), ``loss`` (mean
        per-pixel cross-entropy in nats, probabilities clipped to [1e-3, 1 - 1e-3]), ``rank`` (1 = worst: lowest
        Dice, then highest loss), ``flagged`` (bool).
    Raises:
        ValueError: a preset without masks; shapes that do not fit; ``fraction`` outside [0, 1].
    """
    p, t, ids = to_numpy(oof_probs), to_numpy(masks), [str(i) for i in image_ids]
    if not preset.is_segmentation:
        raise ValueError(f"preset {preset.name!r} ({preset.task}): its labels are ranked by find_label_issues")
    spatial = t.shape[1:] if preset.task == "multiclass" else t.shape[2:]
    if p.ndim != 4 or len(t) != len(p) or len(ids) != len(p) or tuple(p.shape[2:]) != tuple(spatial):
        raise ValueError(f"oof_probs {p.shape}, masks {t.shape} and {len(ids)} ids do not fit ({preset.task})")
    if preset.task != "multiclass" and t.shape != p.shape:
        raise ValueError(f"oof_probs {p.shape} and masks {t.shape} differ")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    dice, loss = np.empty(len(p)), np.empty(len(p))
    rows = chunk_rows(p.shape, 4, chunk_size)
    for sl in progress(row_slices(len(p), rows), total=-(-len(p) // rows), desc="rank OOF images", leave=False):
        dice[sl], loss[sl] = _image_scores(np.asarray(p[sl]), np.asarray(t[sl]), preset)
    order = np.lexsort((ids, -loss, dice))
    flagged = np.zeros(len(p), bool)
    flagged[order[: int(np.ceil(fraction * len(p) - 1e-9))]] = True
    flagged |= dice < max_dice
    table = pd.DataFrame({"image_id": ids, "dice": dice, "loss": loss, "flagged": flagged})
    table = table.iloc[order].reset_index(drop=True)
    table.insert(3, "rank", np.arange(1, len(table) + 1))
    log.info("%d of %d images flagged (worst %.1f %%%s)", int(flagged.sum()), len(p), 100 * fraction,
             f", Dice < {max_dice}" if max_dice > 0 else "")  # fmt: skip
    return table


def label_issues(
    oof_probs: Any, targets: Any, image_ids: Sequence[str], preset: Preset, fraction: float = 0.05,
    max_dice: float = 0.0,
) -> pd.DataFrame:  # fmt: skip
    """``find_label_issues`` (classification: ``targets`` the labels) or ``rank_segmentation`` (``targets`` the
    masks, with ``fraction`` and ``max_dice``); see those.

    Raises:
        ValueError: a task outside ``ISSUE_TASKS`` (a presence classifier); as the two functions.
    """
    if preset.task not in ISSUE_TASKS:
        raise ValueError(f"no label ranking for a {preset.task} task; tasks: {list(ISSUE_TASKS)}")
    if preset.task == "classification":
        return find_label_issues(oof_probs, targets, image_ids)
    return rank_segmentation(oof_probs, targets, image_ids, preset, fraction, max_dice)


def save_label_issues(exp_dir: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Write ``exp_dir/label_issues.csv`` atomically (the table of ``label_issues``, worst first); returns it."""
    return write_csv(project_path(exp_dir) / LABEL_ISSUES_FILE, table, index=False)


# ------------------------------------------------------------------------------------- training on a reviewed list


def _read_list(path: Path, what: str) -> pd.DataFrame:
    """A reviewed CSV with an ``image_id`` column; with a ``flagged`` column only its true rows count (a reviewed
    copy of ``label_issues.csv``: set ``flagged`` to False where the label is right)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    df = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
    if "image_id" not in df.columns:
        raise ValueError(f"{what} {path}: needs an image_id column; columns: {list(df.columns)}")
    if "flagged" in df.columns:
        keep = df["flagged"].astype(str).str.strip().str.lower().isin(("true", "1", "yes"))
        log.info("%s %s: %d of %d rows flagged (the others are ignored)", what, path, int(keep.sum()), len(df))
        df = df[keep.to_numpy()]
    df = df.assign(image_id=df["image_id"].str.strip())
    repeated = df["image_id"][df["image_id"].duplicated()].unique()
    if len(repeated):
        raise ValueError(f"{what} {path}: image_id repeated: {listing(repeated)}")
    return df.reset_index(drop=True)


def _check_known(ids: pd.Series, table_ids: pd.Series, path: Path, what: str) -> None:
    unknown = sorted(set(ids) - set(table_ids.astype(str)))
    if unknown:
        raise ValueError(f"{what} {path}: {len(unknown)} image_id(s) not in the train table: {listing(unknown)}")


def load_id_list(path: str | os.PathLike, table_ids: pd.Series, what: str = "exclude_ids_file") -> list[str]:
    """The ids of a reviewed list file (relative paths: from the repository root).

    Args:
        path: a CSV with an ``image_id`` column (other columns ignored; with a ``flagged`` column, its true rows).
        table_ids: the competition table's ids.
        what: the parameter's name, for the messages.
    Returns:
        The ids, in the file's order.
    Raises:
        FileNotFoundError: no such file. ValueError: no ``image_id`` column, a repeated id, ids not in the table
            (named, with the file).
    """
    path = project_path(path)
    df = _read_list(path, what)
    _check_known(df["image_id"], table_ids, path, what)
    return df["image_id"].tolist()


def load_relabels(path: str | os.PathLike, table: pd.DataFrame, preset: Preset) -> pd.Series:
    """New labels of a reviewed relabel file, by image_id.

    Args:
        path: a CSV with ``image_id`` and ``suggested_label`` (as ``label_issues.csv`` writes it, whose ``label`` is
            the given one) or else ``label``: an integer in [0, C) or a class name of ``preset.classes``.
        table: the competition table (``image_id``, ``label``).
        preset: a classification preset.
    Returns:
        int64 Series of the new labels indexed by image_id (str).
    Raises:
        ValueError: a segmentation preset (its masks cannot be relabelled from a list: exclude the images instead);
            a missing column; a label that is not a class (id named); ids not in the table (named, with the file).
        FileNotFoundError: no such file.
    """
    path = project_path(path)
    if preset.task != "classification":
        raise ValueError(f"relabel_file {path}: preset {preset.name!r} is {preset.task}; only classification labels "
                         "can be replaced from a list (exclude the images instead: exclude_ids_file)")  # fmt: skip
    df = _read_list(path, "relabel_file")
    # label_issues.csv holds the given label in `label` and the OOF's in `suggested_label`: the latter is the new one
    column = "suggested_label" if "suggested_label" in df.columns else "label" if "label" in df.columns else None
    if column is None:
        raise ValueError(f"relabel_file {path}: needs a label (or suggested_label) column; columns: {list(df.columns)}")
    _check_known(df["image_id"], table["image_id"], path, "relabel_file")
    names = {str(c): k for k, c in enumerate(preset.classes)}
    labels = []
    for image_id, value in zip(df["image_id"], df[column].astype(str).str.strip(), strict=True):
        label = names.get(value, int(value) if value.lstrip("-").isdigit() else None)
        if label is None or not 0 <= label < preset.num_classes:
            raise ValueError(f"relabel_file {path}: {image_id}: {column} {value!r} is not a class index in "
                             f"0..{preset.num_classes - 1} nor a class name")  # fmt: skip
        labels.append(label)
    return pd.Series(labels, index=df["image_id"].tolist(), dtype=np.int64)


def review_digest(cfg: Any) -> str:
    """SHA-256 (16 hex) of the content of a run's ``exclude_ids_file`` and ``relabel_file``, "" without them: a
    changed list is a new run (``kitlib.train.fold_run_id``).

    Raises:
        FileNotFoundError: a named file that does not exist.
    """
    parts = []
    for name in ("exclude_ids_file", "relabel_file"):
        value = getattr(cfg, name, "") or ""
        if value:
            path = project_path(value)
            if not path.is_file():
                raise FileNotFoundError(f"{name} {path}: no such file")
            parts.append(f"{name}={hashlib.sha256(path.read_bytes()).hexdigest()}")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16] if parts else ""


def review_training_rows(cfg: Any, full: pd.DataFrame, train_df: pd.DataFrame) -> pd.DataFrame:
    """A fold's training rows after the user's reviewed lists (a ``kitlib.stages.TrainConfig``'s
    ``exclude_ids_file``, ``relabel_file``; "" for none).

    The excluded rows leave the training set of every fold and the relabelled rows train on their new label; the
    validation rows are not touched (each image keeps its OOF prediction, scored against its original label), so the
    CV stays comparable with the run trained on every row.

    Args:
        cfg: the run (its ``fold``, ``model_preset`` and the two file parameters).
        full: the whole competition table (ids are checked against it, not only against the fold's rows).
        train_df: the fold's training rows.
    Returns:
        ``train_df`` without the excluded rows and with the new labels (a fresh index); the same object without files.
    Raises:
        As ``load_id_list`` and ``load_relabels``.
    """
    exclude, relabel = getattr(cfg, "exclude_ids_file", "") or "", getattr(cfg, "relabel_file", "") or ""
    if not exclude and not relabel:
        return train_df
    out = train_df
    if exclude:
        ids = set(load_id_list(exclude, full["image_id"]))
        keep = ~out["image_id"].astype(str).isin(ids)
        log.info("fold %d: %d of %d training rows excluded (%s; they stay in validation)", cfg.fold,
                 int((~keep).sum()), len(out), exclude)  # fmt: skip
        out = out[keep.to_numpy()]
    if relabel:
        new = load_relabels(relabel, full, cfg.model_preset)
        mapped = out["image_id"].astype(str).map(new)
        hit = mapped.notna().to_numpy()
        changed = int((mapped[hit] != out["label"][hit]).sum())
        out = out.assign(label=np.where(hit, mapped.fillna(-1), out["label"]).astype(np.int64))
        log.info("fold %d: %d training rows relabelled, %d of them to another class (%s; validation keeps the "
                 "original labels)", cfg.fold, int(hit.sum()), changed, relabel)  # fmt: skip
    return out.reset_index(drop=True)
