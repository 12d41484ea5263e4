"""Cross-validation folds: stratified by what the task predicts, optionally grouped, saved as ``folds.csv``.

``make_folds`` gives every image of a canonical table (``kitlib.formats.load_competition``) a 0-based ``fold``:

- multilabel / multiclass segmentation: ``MultilabelStratifiedKFold`` (iterative-stratification, Sechidis et al.
  2011) on class presence, ``kitlib.formats.class_presence``; then a greedy pass of moves and pairwise swaps makes
  the fold sizes differ by at most one and brings each class's per-fold count closer to its share. Iterative
  stratification alone can leave a fold 3 images larger, or a class 2 images off its share, on a few hundred images.
- binary segmentation (one target class): ``StratifiedKFold`` on empty / non-empty.
- classification: ``StratifiedKFold`` on ``label``.

With ``group_col`` every group (a patient, a source image, a video) lands in one fold; the groups are stratified as if
they were images: a group's presence is the max over its rows (it holds a class if any of its rows does), its
classification label the most common one (ties: the smaller label). Fold sizes are then balanced in groups.

Folds depend only on the table's content and the seed, not on its row order: the rows (or groups) are sorted by
``image_id`` (or group) before splitting. The file ``artifacts/<exp>/folds.csv`` holds ``image_id,fold`` (and the group
column); ``load_folds`` validates it and ``attach_folds`` puts the folds back on a canonical table.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib._private import listing
from kitlib.formats import class_presence
from kitlib.io import write_csv
from kitlib.presets import Preset

__all__ = ["make_folds", "save_folds", "load_folds", "attach_folds", "fold_summary"]

log = logging.getLogger(__name__)

_GROUP_ATTR = "fold_group_col"  # DataFrame.attrs key through which make_folds tells save_folds its group column


def _check_table(df: pd.DataFrame, group_col: str | None) -> None:
    if "image_id" not in df.columns:
        raise ValueError(f"table has no 'image_id' column; columns: {list(df.columns)}")
    ids = df["image_id"]
    if ids.isna().any():
        raise ValueError(f"image_id missing in {int(ids.isna().sum())} row(s): {listing(np.flatnonzero(ids.isna()))}")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise ValueError(f"image_id not unique: {dup.nunique()} id(s) repeated, e.g. {listing(dup.unique())}")
    if group_col is not None:
        if group_col not in df.columns:
            raise ValueError(f"group column {group_col!r} not in the table; columns: {list(df.columns)}")
        missing = df[group_col].isna()
        if missing.any():
            raise ValueError(
                f"group column {group_col!r} is missing in {int(missing.sum())} row(s), image_ids: "
                f"{listing(df.loc[missing, 'image_id'])}"
            )


def _labels(df: pd.DataFrame, preset: Preset) -> np.ndarray:
    """Classification labels (N,) int64 in 0..C-1; ValueError naming the bad rows."""
    if "label" not in df.columns:
        raise ValueError(f"preset {preset.name!r} is a classification task: the table needs a 'label' column; "
                         f"columns: {list(df.columns)}")  # fmt: skip
    label = pd.to_numeric(df["label"], errors="coerce")
    bad = label.isna() | (label != label.round()) | (label < 0) | (label >= preset.num_classes)
    if bad.any():
        rows = df.loc[bad, ["image_id", "label"]].astype(str).agg("=".join, axis=1)
        raise ValueError(f"label must be an integer in 0..{preset.num_classes - 1}; {int(bad.sum())} bad row(s): "
                         f"{listing(rows)}")  # fmt: skip
    return label.to_numpy(np.int64)


def _targets(df: pd.DataFrame, preset: Preset) -> np.ndarray:
    """What to stratify on, per row: (N,) int64 for a single-label split, (N, K) bool for a multilabel one."""
    if preset.task == "classification":
        return _labels(df, preset)
    if "mask_path" not in df.columns:
        missing = [c for c in preset.target_classes if c not in df.columns]
        if missing:
            raise ValueError(f"preset {preset.name!r}: the table has no column for class(es) {listing(missing)} "
                             f"(nor a 'mask_path' column); columns: {list(df.columns)}")  # fmt: skip
    presence = np.asarray(class_presence(df, preset), dtype=bool)
    return presence[:, 0].astype(np.int64) if presence.shape[1] == 1 else presence


def _group_targets(y: np.ndarray, codes: np.ndarray, n_groups: int, majority: bool) -> np.ndarray:
    """Aggregate row targets over groups: max of presence, or the most common label (ties: the smaller one)."""
    if not majority:
        out = np.zeros((n_groups, *y.shape[1:]), dtype=y.dtype)
        np.maximum.at(out, codes, y)
        return out
    counts = np.zeros((n_groups, int(y.max()) + 1), np.int64)
    np.add.at(counts, (codes, y), 1)
    return counts.argmax(axis=1)


def _single_label_folds(y: np.ndarray, n_folds: int, seed: int, names: list[str]) -> np.ndarray:
    """StratifiedKFold test-fold index per row; KFold when no value has n_folds members."""
    from sklearn.model_selection import KFold, StratifiedKFold  # here, not at the top: sklearn takes 0.7 s to import

    values, counts = np.unique(y, return_counts=True)
    if counts.max() < n_folds:
        log.warning(
            "stratification impossible: no class has %d members (largest: %d); plain shuffled KFold instead",
            n_folds, counts.max(),
        )  # fmt: skip
        splitter = KFold(n_folds, shuffle=True, random_state=seed)
    else:
        rare = [f"{names[v] if v < len(names) else v}: {c}" for v, c in zip(values, counts, strict=True) if c < n_folds]
        if rare:
            log.warning("%d class(es) have fewer members than the %d folds, some folds will have none: %s",
                        len(rare), n_folds, listing(rare))  # fmt: skip
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(y), np.int64)
    with warnings.catch_warnings():  # sklearn's "least populated class" warning is logged above instead
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, test) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
            fold[test] = k
    return fold


def _multilabel_folds(y: np.ndarray, n_folds: int, seed: int, names: list[str]) -> np.ndarray:
    """MultilabelStratifiedKFold test-fold index per row, then balanced by ``_rebalance``."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports sklearn: only when folds are made

    counts = y.sum(axis=0)
    rare = [f"{names[c]}: {int(n)}" for c, n in enumerate(counts) if n < n_folds]
    if rare:
        log.warning("%d class(es) are present in fewer units than the %d folds, some folds will have none: %s",
                    len(rare), n_folds, listing(rare))  # fmt: skip
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(y), np.int64)
    for k, (_, test) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
        fold[test] = k
    return _rebalance(fold, y, n_folds, np.random.default_rng(seed))


def _rebalance(fold: np.ndarray, y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy local search on a multilabel split, over label patterns (rows with equal presence vectors).

    First, while two folds differ in size by more than one, move a row from the largest to the smallest fold (the
    pattern that helps the class counts most). Then, while some swap of two rows between two folds lowers
    ``sum_{fold, class} (count - total / n_folds) ** 2``, apply the best one. Each step strictly lowers its objective,
    so the loop ends; rows of a pattern are picked in a seeded random order.

    Args:
        fold: (N,) int64 in 0..n_folds-1; changed in place and returned.
        y: (N, K) bool presence.
    """
    patterns, inverse = np.unique(y, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    u = patterns.astype(np.float64)  # (P, K)
    counts = np.zeros((n_folds, len(u)), np.int64)  # rows of each pattern per fold
    np.add.at(counts, (fold, inverse), 1)
    target = y.sum(axis=0) / n_folds  # (K,)
    order = rng.permutation(len(fold))  # which row of a pattern moves: the first in this order

    def move(p: int, a: int, b: int) -> None:
        i = order[np.flatnonzero((fold[order] == a) & (inverse[order] == p))[0]]
        fold[i] = b
        counts[a, p] -= 1
        counts[b, p] += 1

    norms = (u * u).sum(axis=1)
    dist2 = norms[:, None] + norms[None, :] - 2 * u @ u.T  # |u_q - u_p|^2, (P, P)
    for _ in range(10 * len(fold) + 10):
        err = counts @ u - target  # (F, K) class count minus its share
        sizes = counts.sum(axis=1)
        a, b = int(sizes.argmax()), int(sizes.argmin())
        if sizes[a] - sizes[b] > 1:  # move pattern p from a to b: gain 2 (e_a - e_b) . u_p - 2 |u_p|^2
            gain = 2 * u @ (err[a] - err[b]) - 2 * norms
            gain[counts[a] == 0] = -np.inf
            move(int(gain.argmax()), a, b)
            continue
        best, best_swap = 1e-9, None
        proj = err @ u.T  # (F, P): e_f . u_p
        for a in range(n_folds):
            for b in range(a + 1, n_folds):
                # swap p (in a) with q (in b): gain 2 (e_a - e_b) . (u_p - u_q) - 2 |u_p - u_q|^2
                d = proj[a] - proj[b]
                gain = 2 * (d[:, None] - d[None, :]) - 2 * dist2
                gain[counts[a] == 0, :] = -np.inf
                gain[:, counts[b] == 0] = -np.inf
                p, q = np.unravel_index(int(gain.argmax()), gain.shape)
                if gain[p, q] > best:
                    best, best_swap = gain[p, q], (int(p), int(q), a, b)
        if best_swap is None:
            break
        p, q, a, b = best_swap
        move(p, a, b)
        move(q, b, a)
    return fold


def make_folds(
    df: pd.DataFrame,
    preset: Preset,
    n_folds: int = 5,
    seed: int = 42,
    group_col: str | None = None,
) -> pd.DataFrame:
    """Assign each image a cross-validation fold, stratified by what the task predicts (see the module docstring).

    Args:
        df: canonical table (``kitlib.formats.load_competition``): ``image_id`` (unique) and the preset's target
            columns (one RLE column per class, ``mask_path``, or ``label`` for classification).
        preset: a ``Preset`` or its name.
        n_folds: number of folds, 2 <= n_folds <= number of images (of groups with ``group_col``).
        seed: random seed; the same table and seed give the same folds, whatever the row order.
        group_col: column whose rows must stay together (all rows of a group land in one fold); None for none.
    Returns:
        A copy of ``df`` with an int64 ``fold`` column in 0..n_folds-1 (replaced if present). Fold sizes differ by
        at most one (in images, or in groups with ``group_col``). ``attrs["fold_group_col"]`` records ``group_col``
        for ``save_folds``.
    Raises:
        ValueError: n_folds < 2 or larger than the number of images (groups); no or repeated ``image_id``; a missing
            group; a classification label outside 0..C-1; a missing target column.
    """
    _check_table(df, group_col)
    n_folds = int(n_folds)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")

    order = np.argsort(df["image_id"].astype(str).to_numpy(), kind="stable")  # row order must not matter
    if group_col is None:
        codes, n_units, unit = np.arange(len(df)), len(df), "images"
    else:
        # np.unique sorts the groups, so group codes do not depend on the row order either
        keys = df[group_col].to_numpy()[order]
        _, codes = np.unique(keys.astype(str), return_inverse=True)
        codes = codes.reshape(-1)
        n_units, unit = int(codes.max()) + 1 if len(codes) else 0, "groups"
    if n_folds > n_units:
        raise ValueError(f"n_folds={n_folds} is larger than the number of {unit} ({n_units})")
    y = _targets(df, preset)[order]
    if group_col is not None:
        y = _group_targets(y, codes, n_units, majority=preset.task == "classification")

    if y.ndim == 2:
        unit_fold = _multilabel_folds(y, n_folds, seed, list(preset.target_classes))
    else:
        names = list(preset.classes) if preset.task == "classification" else ["empty", "non-empty"]
        unit_fold = _single_label_folds(y, n_folds, seed, names)
    fold = np.empty(len(df), np.int64)
    fold[order] = unit_fold[codes]
    out = df.copy()
    out["fold"] = fold
    out.attrs[_GROUP_ATTR] = group_col
    log.info("%d folds over %d %s (seed %d): fold sizes %s", n_folds, n_units, unit, seed,
             np.bincount(fold, minlength=n_folds).tolist())  # fmt: skip
    return out


def fold_summary(df: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Per-fold counts, to check a split by eye: ``n_images`` and, per class, images holding it (segmentation) or
    images with that label (classification).

    Args:
        df: table with a ``fold`` column (``make_folds`` or ``attach_folds``) and the preset's targets.
    Returns:
        One row per fold (index ``fold``); columns ``n_images`` then one per class name.
    """
    if "fold" not in df.columns:
        raise ValueError(f"table has no 'fold' column; columns: {list(df.columns)}")
    if preset.task == "classification":
        onehot = np.eye(preset.num_classes, dtype=np.int64)[_labels(df, preset)]
        names = list(preset.classes)
    else:
        onehot = np.asarray(class_presence(df, preset), dtype=np.int64)
        names = list(preset.target_classes)
    out = pd.DataFrame(onehot, columns=names).groupby(df["fold"].to_numpy()).sum()
    out.insert(0, "n_images", df.groupby("fold").size().to_numpy())
    out.index.name = "fold"
    return out


def save_folds(df: pd.DataFrame, path: str | os.PathLike, group_col: str | None = None) -> Path:
    """Write ``image_id,fold`` (and the group column) atomically, rows in the table's order.

    Args:
        df: table with ``image_id`` and ``fold`` (``make_folds``).
        path: usually ``artifacts/<exp>/folds.csv``.
        group_col: group column to keep beside the folds; None to take the one ``make_folds`` recorded in
            ``df.attrs`` (if any).
    Returns:
        The path written.
    Raises:
        ValueError: a column is missing.
    """
    group_col = group_col if group_col is not None else df.attrs.get(_GROUP_ATTR)
    columns = ["image_id", "fold"] + ([group_col] if group_col else [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"cannot save folds: column(s) {missing} not in the table; columns: {list(df.columns)}")
    return write_csv(path, df[columns])


def load_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a folds file written by ``save_folds``.

    Args:
        path: ``artifacts/<exp>/folds.csv``.
    Returns:
        The table: ``image_id`` (str, as written), ``fold`` (int64 in 0..n_folds-1, every fold used, n_folds >= 2)
        and any further column (the group), in the file's order.
    Raises:
        FileNotFoundError: no such file.
        ValueError: a column is missing; an empty or repeated ``image_id``; a fold that is not an integer >= 0; folds
            that skip a number or fewer than 2 folds. The message names the file and the offending lines (line 1 is
            the header).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such folds file")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "fold": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable folds CSV: {e}") from e
    missing = [c for c in ("image_id", "fold") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing; columns: {list(df.columns)}")
    lines = np.arange(len(df)) + 2  # file line of each row

    def fail(bad: np.ndarray, what: str) -> None:
        rows = [f"line {n}: {i!r}" for n, i in zip(lines[bad], df["image_id"][bad], strict=True)]
        raise ValueError(f"{path}: {what} in {int(bad.sum())} row(s): {listing(rows)}")

    ids = df["image_id"].astype(str)
    if (bad := (ids.str.strip() == "").to_numpy()).any():
        fail(bad, "empty image_id")
    if (bad := ids.duplicated(keep=False).to_numpy()).any():
        fail(bad, "repeated image_id")
    fold = pd.to_numeric(df["fold"].astype(str).str.strip(), errors="coerce")
    if (bad := (fold.isna() | (fold != fold.round()) | (fold < 0)).to_numpy()).any():
        raise ValueError(
            f"{path}: fold must be an integer >= 0; {int(bad.sum())} bad row(s): "
            + listing([f"line {n}: {str(v)!r}" for n, v in zip(lines[bad], df["fold"][bad], strict=True)])
        )
    fold = fold.astype(np.int64)
    used = np.unique(fold)
    if len(used) < 2 or used[-1] != len(used) - 1:
        raise ValueError(f"{path}: folds must be 0..n_folds-1 with every fold used and n_folds >= 2; "
                         f"found {used.tolist()}")  # fmt: skip
    df["image_id"] = ids
    df["fold"] = fold
    return df


def attach_folds(df: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Put the ``fold`` column of a folds table onto a canonical table, matching by ``image_id``.

    Args:
        df: canonical table with ``image_id``.
        folds: ``load_folds`` output (``image_id``, ``fold``); ids that ``df`` does not hold are ignored (a table
            loaded with ``drop_missing=True`` has fewer rows than the one the folds were made from).
    Returns:
        A copy of ``df`` (its row order and index) with an int64 ``fold`` column (replaced if present).
    Raises:
        ValueError: a column is missing, ``folds`` repeats an id, or images of ``df`` have no fold; the message lists
            the first 5 missing ids and their count.
    """
    if "image_id" not in df.columns:
        raise ValueError(f"table has no column(s) ['image_id']; columns: {list(df.columns)}")
    missing = [c for c in ("image_id", "fold") if c not in folds.columns]
    if missing:
        raise ValueError(f"folds has no column(s) {missing}; columns: {list(folds.columns)}")
    keys = folds["image_id"].astype(str)
    if keys.duplicated().any():
        raise ValueError(f"folds repeat image_id(s): {listing(keys[keys.duplicated()].unique())}")
    fold = df["image_id"].astype(str).map(dict(zip(keys, folds["fold"], strict=True)))
    if fold.isna().any():
        missing_ids = df.loc[fold.isna(), "image_id"].astype(str)
        raise ValueError(
            f"{len(missing_ids)} of {len(df)} image(s) have no fold in the folds file (made from another table?): "
            f"{listing(missing_ids)}"
        )
    extra = len(set(keys) - set(df["image_id"].astype(str)))
    if extra:
        log.info("folds file lists %d image(s) that the table does not hold; ignored", extra)
    out = df.copy()
    out["fold"] = fold.astype(np.int64).to_numpy()
    return out
