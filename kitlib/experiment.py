"""An experiment's folder (``artifacts/<exp>/``) as the later stages read it: the competition table with its folds,
the fold split of one training run, the training config of its folds, and the truth its OOF is scored against.

- ``load_table``: the competition table read as ``00_eda`` read it (its ``eda_config.json``: ``label_file``,
  ``drop_missing``, ``drop_invalid``) with the ``fold`` column of ``folds.csv``;
- ``fold_split``: the rows outside and inside one fold;
- ``load_experiment``: an ``Experiment``: that table in ``folds.csv`` order, the competition's ``Preset``, and
  ``fold0/config.json`` as a ``TrainConfig`` (which says what the models learn: masks, or a presence task).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kitlib._private import listing
from kitlib.folds import attach_folds, load_folds
from kitlib.formats import class_presence, load_competition
from kitlib.io import project_path
from kitlib.presets import Preset
from kitlib.stages import EdaConfig, TrainConfig
from kitlib.targets import write_oof_masks

__all__ = ["Experiment", "fold_split", "load_experiment", "load_table"]


def load_table(
    exp_dir: str | os.PathLike, preset: Preset, data_dir: str | os.PathLike, label_file: str = ""
) -> pd.DataFrame:
    """The competition table with its ``fold`` column, read as ``00_eda`` read it when it made the folds.

    Args:
        exp_dir: ``artifacts/<exp>/`` with ``folds.csv`` (and ``eda_config.json``, whose ``label_file``,
            ``drop_missing`` and ``drop_invalid`` are used when present).
        preset: the competition.
        data_dir: the competition folder.
        label_file: overrides 00_eda's label file ("": 00_eda's, else the competition's own).
    Returns:
        The table (``kitlib.formats.load_competition``) with an int ``fold`` column, in the table's order.
    Raises:
        FileNotFoundError: no ``folds.csv`` (the message says to run 00_eda).
        ValueError: ids of ``folds.csv`` missing from the table, or rows without a fold (``attach_folds``).
    """
    exp_dir = Path(exp_dir)
    folds_path = exp_dir / "folds.csv"
    if not folds_path.is_file():
        raise FileNotFoundError(f"{folds_path}: no folds; run notebooks/00_eda.py for exp {exp_dir.name!r} first")
    eda_path = exp_dir / "eda_config.json"
    eda = EdaConfig.load(eda_path) if eda_path.is_file() else None
    df = load_competition(
        preset, Path(data_dir), label_file=label_file or (eda.label_file if eda else "") or None,
        drop_missing=bool(eda and eda.drop_missing), drop_invalid=bool(eda and eda.drop_invalid),
    )  # fmt: skip
    return attach_folds(df, load_folds(folds_path))


def fold_split(df: pd.DataFrame, fold: int, where: str = "folds.csv") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, valid)``: the rows outside and inside ``fold`` (0-based), each with a fresh index.

    Raises:
        ValueError: the fold does not exist (the folds that do are named, with ``where``).
    """
    n_folds = int(df["fold"].max()) + 1
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} does not exist: {where} has folds 0..{n_folds - 1}")
    return df[df["fold"] != fold].reset_index(drop=True), df[df["fold"] == fold].reset_index(drop=True)


@dataclass(frozen=True)
class Experiment:
    """One experiment's folds and data table.

    Attributes:
        exp_dir: ``artifacts/<exp>/``.
        preset: the competition.
        df: the competition table (targets included) with its ``fold`` column, rows in ``folds.csv`` order.
        train_config: ``fold0/config.json`` (the training run), None when no fold was trained.
    """

    exp_dir: Path
    preset: Preset
    df: pd.DataFrame
    train_config: TrainConfig | None

    @property
    def model_preset(self) -> Preset:
        """What the experiment's models learn: the competition's task, or its presence task."""
        return self.train_config.model_preset if self.train_config is not None else self.preset

    @property
    def folds(self) -> np.ndarray:
        """(N,) int64 fold of each row."""
        return self.df["fold"].to_numpy(np.int64)

    @property
    def n_folds(self) -> int:
        return int(self.df["fold"].max()) + 1

    def targets(self, size: tuple[int, int] | None = None, path: str | os.PathLike | None = None,
                reuse: bool = False) -> np.ndarray:  # fmt: skip
        """What the experiment's OOF is scored against, rows in ``folds.csv`` order.

        Args:
            size: (H, W) of the OOF (segmentation); ignored otherwise.
            path: where segmentation masks are written; default ``exp_dir/oof_masks.npy``.
            reuse: read an existing masks file of the expected shape instead of writing it again.
        Returns:
            segmentation: ``kitlib.targets.write_oof_masks``'s memmap; presence: (N, K) bool
            (``kitlib.formats.class_presence``); classification: (N,) int64 labels.
        """
        task = self.model_preset
        if task.task == "presence":
            return class_presence(self.df, task)
        if not task.is_segmentation:
            return self.df["label"].to_numpy(np.int64)
        path = Path(path) if path is not None else self.exp_dir / "oof_masks.npy"
        if reuse and path.is_file():
            masks = np.load(path, mmap_mode="r")
            k = () if task.task == "multiclass" else (len(task.target_classes),)
            if masks.shape == (len(self.df), *k, *size):
                return masks
        return write_oof_masks(self.df, task, size, path)


def load_experiment(
    exp_dir: str | os.PathLike, preset: Preset | None = None, data_dir: str | os.PathLike | None = None,
    label_file: str = "",
) -> Experiment:  # fmt: skip
    """Read ``folds.csv``, the competition table and the training config of an experiment, rows in ``folds.csv`` order.

    Args:
        exp_dir: ``artifacts/<exp>/`` (relative paths are taken from the repo root).
        preset, data_dir, label_file: the competition; None / "" takes them from ``fold0/config.json`` (10_train).
    Returns:
        Experiment.
    Raises:
        FileNotFoundError: no ``folds.csv``; no preset or data_dir given and no ``fold0/config.json``.
        ValueError: ``preset`` differs from the one the folds were trained with (both named); ids of ``folds.csv``
            missing from the table (named).
    """
    exp_dir = project_path(exp_dir)
    config_path = exp_dir / "fold0" / "config.json"
    train_config = TrainConfig.load(config_path) if config_path.is_file() else None
    if (preset is None or data_dir is None) and train_config is None:
        raise FileNotFoundError(f"{config_path}: no training config; pass preset and data_dir")
    preset = preset if preset is not None else train_config.preset
    if train_config is not None and train_config.preset.name != preset.name:
        raise ValueError(f"{exp_dir}: trained with preset {train_config.preset.name!r} ({config_path}), "
                         f"not {preset.name!r}")  # fmt: skip
    if data_dir is None:
        data_dir = train_config.data_path
    label_file = label_file or (train_config.label_file if train_config is not None else "")
    full = load_table(exp_dir, preset, project_path(data_dir), label_file)
    order = load_folds(exp_dir / "folds.csv")["image_id"].astype(str)
    df = full.set_index(full["image_id"].astype(str)).reindex(order)
    missing = order[df["image_id"].isna().to_numpy()].tolist()
    if missing:
        raise ValueError(f"{exp_dir / 'folds.csv'}: {len(missing)} id(s) not in the data table: {listing(missing)}")
    return Experiment(exp_dir=exp_dir, preset=preset, df=df.reset_index(drop=True), train_config=train_config)
