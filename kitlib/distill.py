"""Knowledge distillation: a student trained on a mix of the hard labels and a teacher experiment's out-of-fold
probabilities (10_train's ``distill_from``, ``distill_alpha``, ``distill_temperature``).

    loss = alpha * base_loss(logits, hard) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

Sources: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network" (temperature T on both sides,
the soft term scaled by T^2 so its gradients keep their size as T changes); the Cassava Leaf Disease top teams
distilled their ensembles' out-of-fold soft labels into single students (2nd and 4th place write-ups), which is why
the teacher here is an experiment's gathered OOF (``artifacts/<teacher>/oof_probs.npy`` from 20_oof, or an
ensemble's blend from 30_ensemble): each training row's soft label comes from a model that did not train on it.

- ``load_teacher(cfg, train_df)``: the teacher's OOF as a ``TeacherProbs`` (a memmap opened in each process, never
  loaded whole), checked: every training row covered, truly out of fold, classes and shape of the student's task;
- ``attach_teacher(dataset, teacher)``: the training items get a ``teacher`` key: (C,) / (K,) float32 for
  classification and presence, (K, h, w) float32 soft masks for segmentation (multiclass: (C, h, w) probabilities),
  resized to the image before the transform and passed through it as extra masks (albumentations' ``masks``), so a
  flip or rotation moves them with the image (colour transforms do not touch masks);
- ``DistillationLoss``: wraps the run's loss, whatever it is; ``kitlib.engine.compute_loss`` calls it when the batch
  has a teacher. Batch mixes mix the teacher with the same partner and lambda / box (``kitlib.mixes``).
- ``soft_kl``: the soft term: softmax KL over the classes (classification, multiclass per pixel) or a binary KL per
  class / pixel (sigmoid tasks: binary, multilabel, presence).

Written here (no library ships a distillation loss that wraps an arbitrary segmentation loss and reads OOF files):
the kit's core.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from kitlib._pixels import as_float_probs
from kitlib._private import listing
from kitlib.data import PresenceDataset
from kitlib.folds import load_folds
from kitlib.io import read_json
from kitlib.predictions import read_oof
from kitlib.presets import Preset
from kitlib.stages import TrainConfig

__all__ = ["DistillationLoss", "TeacherProbs", "attach_teacher", "distill_loss", "load_teacher", "soft_kl"]

log = logging.getLogger(__name__)

#: Probabilities are clamped to [EPS, 1 - EPS] before logs and logits (a uint8 OOF holds exact 0 and 1).
EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------


def soft_kl(
    logits: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, activation: str = "softmax",
    eps: float = EPS,
) -> torch.Tensor:  # fmt: skip
    """KL(teacher_T || student_T), the soft term of Hinton et al. 2015 (not yet scaled by T^2).

    - "softmax" (classification; multiclass segmentation per pixel): teacher logits log(p) / T, student logits / T,
      KL over the class axis (dim 1), summed over classes and averaged over samples (and pixels).
    - "sigmoid" (binary, multilabel, presence): each class (and pixel) a Bernoulli: teacher logit logit(p) / T,
      student logit / T, binary KL averaged over every element (the reduction of a mean BCE).

    Gradient: d/dlogits = (q_T - p_T) / T per element (sigmoid) or per sample (softmax) over the mean's count, so a
    step moves the student's tempered probabilities q_T towards the teacher's p_T.

    Args:
        logits: (N, C) or (N, C, h, w) raw student outputs.
        teacher: the teacher's probabilities, same shape, in [0, 1] (rows need not sum to 1 exactly: softmax
            renormalises); clamped to [eps, 1 - eps].
        temperature: T > 0.
        activation: "softmax" or "sigmoid" (``Preset.activation``).
        eps: the clamp.
    Returns:
        Scalar float32 tensor >= 0 (0 when the student's tempered probabilities equal the teacher's).
    Raises:
        ValueError: shapes differ, T <= 0, an unknown activation.
    """
    if tuple(teacher.shape) != tuple(logits.shape):
        raise ValueError(f"teacher probabilities {tuple(teacher.shape)} do not fit the logits {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"distill_temperature must be > 0, got {temperature}")
    z = logits.float() / temperature
    p = teacher.float().clamp(eps, 1.0 - eps)
    if activation == "softmax":
        log_p = F.log_softmax(p.log() / temperature, dim=1)
        return (log_p.exp() * (log_p - F.log_softmax(z, dim=1))).sum(1).mean()
    if activation == "sigmoid":
        t = torch.logit(p) / temperature
        p_t = torch.sigmoid(t)
        entropy = -(p_t * F.logsigmoid(t) + (1.0 - p_t) * F.logsigmoid(-t))
        return (F.binary_cross_entropy_with_logits(z, p_t, reduction="none") - entropy).mean()
    raise ValueError(f"unknown activation {activation!r}; options: ['softmax', 'sigmoid']")


class DistillationLoss(nn.Module):
    """alpha * base(logits, hard) + (1 - alpha) * T^2 * ``soft_kl(logits, teacher, T)`` (Hinton et al. 2015).

    Wraps any loss of the kit (a segmentation loss or recipe, a ``SegClsLoss``, an ``AuxSegLoss``, a classification
    loss): ``kitlib.engine.compute_loss`` computes the base loss as it would without distillation and passes it in as
    ``hard_loss``; the soft term sees the main logits only (a classification head or HRNet-OCR's auxiliary logits keep
    their hard targets). With ``alpha == 1`` the soft term is not computed and the base loss is returned as it is, so
    the run is bit-identical to a plain one; without a teacher (validation) the base loss alone is returned, so
    ``valid_loss`` stays the hard-label loss.

    Args:
        base: the run's loss (``kitlib.train.build_loss``).
        alpha: weight of the hard-label loss, in [0, 1]; the soft term weighs 1 - alpha.
        temperature: T > 0 (1: the probabilities as they are; 2-4 soften them).
        activation: "softmax" or "sigmoid", the student's ``Preset.activation``.

    Attributes:
        last_values: the base loss's ``last_values``; while distilling also "hard" (the base loss) and "soft" (the
            KL before the T^2 scale), detached.

    Call:
        ``loss(logits, target, teacher=None, hard_loss=None)``: ``hard_loss`` precomputed, else ``base(logits,
        target)``; teacher as ``soft_kl``.

    Raises:
        ValueError: alpha outside [0, 1], T <= 0, an unknown activation.
    """

    def __init__(self, base: nn.Module, alpha: float = 0.5, temperature: float = 1.0, activation: str = "softmax"):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {temperature}")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown activation {activation!r}; options: ['softmax', 'sigmoid']")
        self.base, self.alpha, self.temperature, self.activation = base, float(alpha), float(temperature), activation
        self._values: dict[str, torch.Tensor] = {}

    @property
    def last_values(self) -> dict[str, torch.Tensor]:
        return {**getattr(self.base, "last_values", {}), **self._values}

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor | None, teacher: torch.Tensor | None = None,
        hard_loss: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        hard = hard_loss if hard_loss is not None else self.base(logits, target)
        self._values = {}
        if teacher is None or self.alpha == 1.0:
            return hard
        soft = soft_kl(logits, teacher, self.temperature, self.activation)
        self._values = {"hard": hard.detach(), "soft": soft.detach()}
        return self.alpha * hard + (1.0 - self.alpha) * self.temperature**2 * soft

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, activation={self.activation!r}"


def distill_loss(cfg: TrainConfig, loss: nn.Module) -> nn.Module:
    """The run's loss wrapped in a ``DistillationLoss`` when ``cfg.distill_from`` names a teacher, else ``loss``."""
    if not getattr(cfg, "distill_from", ""):
        return loss
    return DistillationLoss(loss, cfg.distill_alpha, cfg.distill_temperature, cfg.model_preset.activation)


# ---------------------------------------------------------------------------------------------------------------
# The teacher's probabilities
# ---------------------------------------------------------------------------------------------------------------


class TeacherProbs:
    """A teacher's gathered OOF probabilities, one row per image_id, read from a memmap that each process (and
    DataLoader worker) opens itself: a Clouds-size OOF (5546 x 4 x 350 x 525 uint8, 4 GB) is never in RAM, and
    pickling the object for a worker copies no rows.

    Args:
        path: the ``oof_probs.npy``: (N, C) float (classification, presence) or (N, K, H, W) uint8 p x 255 / float
            (segmentation; multiclass (N, C, H, W)).
        ids: the image_id of each row (``oof_ids.csv``).
        spatial: rows are masks (segmentation) rather than vectors.
    """

    def __init__(self, path: str | os.PathLike, ids: list[str], spatial: bool):
        self.path, self.spatial = Path(path), bool(spatial)
        self.row = {image_id: i for i, image_id in enumerate(ids)}
        self._probs: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_probs": None}

    @property
    def probs(self) -> np.ndarray:
        """The whole file as a read-only memmap."""
        if self._probs is None:
            self._probs = np.load(self.path, mmap_mode="r")
        return self._probs

    def probs_of(self, image_id: str) -> np.ndarray:
        """One row as float32 probabilities in [0, 1] (uint8 rows divided by 255).

        Raises:
            KeyError: an image the teacher has no row for (named, with the file).
        """
        if image_id not in self.row:
            raise KeyError(f"{self.path}: no teacher row for image {image_id!r}")
        return as_float_probs(self.probs[self.row[image_id]])

    def vector(self, image_id: str) -> np.ndarray:
        """(C,) float32: a classification or presence teacher's row."""
        return self.probs_of(image_id)

    def soft_mask(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        """(K, h, w) float32 in [0, 1]: the teacher's (K, H, W) row resized to ``size`` = (h, w), the image's size
        before the transform (bilinear up, area down, as the kit resizes images)."""
        row = self.probs_of(image_id)
        h, w = int(size[0]), int(size[1])
        if row.shape[1:] == (h, w):
            return row
        interpolation = cv2.INTER_AREA if h < row.shape[1] and w < row.shape[2] else cv2.INTER_LINEAR
        resized = cv2.resize(row.transpose(1, 2, 0), (w, h), interpolation=interpolation).reshape(h, w, -1)
        return np.ascontiguousarray(resized.transpose(2, 0, 1)).clip(0.0, 1.0)


def attach_teacher(dataset, teacher: TeacherProbs | None):
    """Give ``dataset``'s items a ``teacher`` key (module docstring); returns the dataset. None: nothing changes.

    ``kitlib.data``'s datasets read ``dataset.teacher``: a vector row into the item, a soft mask through the same
    transform as the image and its mask (albumentations' ``masks`` target: the same flips, rotations, crops, with
    the mask interpolation)."""
    if teacher is not None:
        (dataset.dataset if isinstance(dataset, PresenceDataset) else dataset).teacher = teacher
    return dataset


def _row_shape(task: Preset) -> str:
    """What one teacher row must look like for ``task``'s student."""
    if task.is_segmentation:
        return f"({task.num_classes}, H, W)"
    return f"({len(task.target_classes) if task.task == 'presence' else task.num_classes},)"


def _teacher_folds(cfg: TrainConfig, source: Path) -> list[Path]:
    """The folds files that say which model predicted each teacher row: the experiment's ``folds.csv``, or each
    member's of an ensemble (``weights.json`` ``exps``).

    Raises:
        ValueError: neither (the file is not an OOF: e.g. a test prediction).
    """
    if (source / "folds.csv").is_file():
        return [source / "folds.csv"]
    if (source / "weights.json").is_file():
        return [cfg.artifacts_dir / str(name) / "folds.csv" for name in read_json(source / "weights.json")["exps"]]
    raise ValueError(f"distill_from {cfg.distill_from!r}: {source} has neither folds.csv (an experiment) nor "
                     "weights.json (an ensemble): its oof_probs.npy is not an out-of-fold prediction (a test "
                     "prediction?); name an experiment gathered by 20_oof or an ensemble of 30_ensemble")  # fmt: skip


def _check_out_of_fold(name: str, folds_path: Path, ids: list[str]) -> pd.DataFrame:
    """The teacher's rows are the gathered OOF of ``folds_path`` (same ids, same order, as ``gather_oof`` writes
    them), and each fold's ``oof_ids.csv`` holds only rows of its own fold: every row came from a model that did
    not train on it.

    Raises:
        FileNotFoundError: no such folds file. ValueError: other rows, or a fold that predicted rows it trained on.
    """
    folds = load_folds(folds_path)
    fold_ids = folds["image_id"].astype(str).tolist()
    if fold_ids != ids:
        extra, absent = sorted(set(ids) - set(fold_ids)), sorted(set(fold_ids) - set(ids))
        detail = (f"{len(extra)} not in folds.csv: {listing(extra)}; {len(absent)} missing: {listing(absent)}"
                  if extra or absent else "the same ids in another order")  # fmt: skip
        raise ValueError(f"distill_from {name!r}: its oof_probs.npy rows are not the gathered OOF of {folds_path} "
                         f"({len(ids)} rows vs {len(fold_ids)}; {detail}): not an out-of-fold prediction of that "
                         "experiment (a test prediction, or a stale file: rerun 20_oof on it)")  # fmt: skip
    fold_of = dict(zip(fold_ids, folds["fold"].astype(int), strict=True))
    for k in sorted(set(fold_of.values())):
        path = folds_path.parent / f"fold{k}" / "oof_ids.csv"
        if not path.is_file():
            continue
        predicted = pd.read_csv(path, dtype=str, keep_default_na=False)["image_id"]
        seen = [i for i in predicted if fold_of.get(i, k) != k]
        if seen:
            raise ValueError(f"distill_from {name!r}: {path} predicted {len(seen)} row(s) that {folds_path} puts in "
                             f"other folds, which its fold {k} model trained on: {listing(seen)}")  # fmt: skip
    return folds


def _check_task(cfg: TrainConfig, folds_paths: list[Path], shape: tuple[int, ...], dtype) -> None:
    """The teacher's rows and (when its training config is there) its task and classes fit the student's.

    Raises:
        ValueError: another row shape, task or classes (both named).
    """
    task, name = cfg.model_preset, cfg.distill_from
    channels = len(task.target_classes) if task.task == "presence" else task.num_classes
    if len(shape) != (3 if task.is_segmentation else 1) or shape[0] != channels:
        raise ValueError(f"distill_from {name!r}: its OOF rows are {dtype} {shape}; the student (preset "
                         f"{task.name!r}, {task.task}, classes {list(task.classes)}) needs "
                         f"{_row_shape(task)}")  # fmt: skip
    config_path = folds_paths[0].parent / "fold0" / "config.json"
    if not config_path.is_file():
        return
    teacher = TrainConfig.load(config_path).model_preset
    if (teacher.task, tuple(teacher.classes)) != (task.task, tuple(task.classes)):
        raise ValueError(f"distill_from {name!r}: the teacher learnt {teacher.task} {list(teacher.classes)} (preset "
                         f"{teacher.name!r}, {config_path}); the student learns {task.task} {list(task.classes)} "
                         f"(preset {task.name!r})")  # fmt: skip


def load_teacher(cfg: TrainConfig, train_df: pd.DataFrame) -> TeacherProbs | None:
    """The teacher of a distillation run: ``<artifacts_root>/<distill_from>/oof_probs.npy`` + ``oof_ids.csv``,
    checked against fold ``cfg.fold``'s training rows.

    Checks: the OOF covers every training row; it is an out-of-fold prediction (the teacher's ``folds.csv``, or each
    ensemble member's, lists exactly its rows in its order, and each fold's ``oof_ids.csv`` holds only its own
    fold's rows: no row's soft label comes from a model that trained on it); its rows fit the student's task
    ((C,) classification, (K,) presence, (C, H, W) segmentation, any H, W) and, from its ``fold0/config.json``, it
    learnt the same task and classes.

    Second-order caveat: even so, the teacher's fold-j model (j != k) trained on fold k's rows, the student's held-out
    ones, so the soft labels of the student's training rows carry a trace of its held-out labels; the student's
    fold-k score is then slightly optimistic (the Cassava teams accepted this). With another ``folds.csv`` than the
    student's, the trace is there for every fold and the two experiments' OOFs no longer line up fold by fold: use
    the same ``folds.csv`` (a warning is logged when they differ).

    Args:
        cfg: the student's run; ``distill_from`` "" means no teacher.
        train_df: the fold's training rows (``image_id``).
    Returns:
        ``TeacherProbs``, or None without ``distill_from``.
    Raises:
        FileNotFoundError: no gathered ``oof_probs.npy`` / ``oof_ids.csv`` (run 20_oof on the teacher), or a member's
            ``folds.csv``.
        ValueError: training rows without a teacher row (named); not an OOF (above); rows or classes that do not fit
            the student (both named).
    """
    name = getattr(cfg, "distill_from", "")
    if not name:
        return None
    source = cfg.artifacts_dir / name
    for needed in (source / "oof_probs.npy", source / "oof_ids.csv"):
        if not needed.is_file():
            raise FileNotFoundError(f"distill_from {name!r}: {needed} not found: gather the teacher's OOF first "
                                    f"(notebooks/20_oof.py with exp={name!r}; an ensemble: 30_ensemble)")  # fmt: skip
    probs, ids = read_oof(source)
    folds_paths = _teacher_folds(cfg, source)
    teacher_folds = [_check_out_of_fold(name, path, ids) for path in folds_paths]
    rows = set(ids)
    train_ids = train_df["image_id"].astype(str).tolist()
    missing = [i for i in train_ids if i not in rows]
    if missing:
        raise ValueError(f"distill_from {name!r}: its OOF has no row for {len(missing)} of fold {cfg.fold}'s "
                         f"{len(train_ids)} training images: {listing(missing)}")  # fmt: skip
    _check_task(cfg, folds_paths, tuple(probs.shape[1:]), probs.dtype)
    own = cfg.exp_dir / "folds.csv"
    if own.is_file():
        mine = load_folds(own).set_index("image_id")["fold"]
        for path, folds in zip(folds_paths, teacher_folds, strict=True):
            theirs = folds.set_index("image_id")["fold"].reindex(mine.index)
            if not theirs.equals(mine):
                log.warning(
                    "distill_from %r: %s differs from the student's %s: the teacher's models trained on "
                    "some of the student's held-out rows; use the same folds.csv",
                    name,
                    path,
                    own,
                )
    log.info("fold %d: distilling %s (%s %s rows, alpha %g, T %g)", cfg.fold, source / "oof_probs.npy", probs.dtype,
             tuple(probs.shape[1:]), cfg.distill_alpha, cfg.distill_temperature)  # fmt: skip
    return TeacherProbs(source / "oof_probs.npy", ids, spatial=cfg.model_preset.is_segmentation)
