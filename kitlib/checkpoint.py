"""Training checkpoints that resume to the same result: ``last.pt`` after every epoch, ``best.pt`` on the monitored
score, both atomic (``kitlib.models.save_model`` writes to a temporary name and renames).

``last.pt`` holds the model in ``save_model`` format (so ``load_model`` reads it) and everything else a run needs to
continue exactly where it stopped: optimizer, scheduler, GradScaler and EMA states, the ``TrainingState`` (epoch, best
score and epoch, epochs without improvement, history) and the random generators' states; ``run_id`` says which
configuration wrote it, and a run of another configuration refuses it rather than mixing it in.

The state before the last epoch is kept beside it as ``last.prev.pt`` (``previous_path``): an atomic write cannot
leave half a ``last.pt``, but a full disk, an interrupted copy or a sync of the folder can. ``resume`` then warns,
naming the file, and continues from the previous state (that epoch is trained again, to the same result), or says
which file to delete.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kitlib.io import read_torch
from kitlib.models import save_model
from kitlib.runtime import unwrap

__all__ = ["CHECKPOINT_KIND", "TrainingState", "previous_path", "resume", "save_best", "save_last"]

log = logging.getLogger(__name__)

#: ``checkpoint`` entry of a ``last.pt``.
CHECKPOINT_KIND = "kitlib.training_state"


@dataclass
class TrainingState:
    """Where a run stands after its last finished epoch.

    Attributes:
        epoch: the last finished epoch (0-based), -1 before the first.
        best_score: best value of the monitored history column so far, NaN while none was finite.
        best_epoch: the epoch whose weights are in ``best.pt``, -1 if none.
        stale: epochs since the last improvement (early stopping).
        history: one dict per finished epoch (``kitlib.engine.fit``'s history rows).
        finished: the run is over (last epoch, or stopped early).
    """

    epoch: int = -1
    best_score: float = math.nan
    best_epoch: int = -1
    stale: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False

    def record(self, row: Mapping[str, float], monitor: str, minimise: bool) -> bool:
        """Append an epoch's history row and update the best score; returns whether it improved.

        Raises:
            ValueError: ``monitor`` is not a column of the row (the columns are listed).
        """
        if monitor not in row:
            raise ValueError(f"monitor {monitor!r} is not a history column; options: {sorted(row)}")
        self.history.append(dict(row))
        self.epoch = int(row["epoch"])
        score = float(row[monitor])
        better = score < self.best_score if minimise else score > self.best_score
        improved = bool(np.isfinite(score) and (self.best_epoch < 0 or better))
        if improved:
            self.best_score, self.best_epoch, self.stale = score, self.epoch, 0
        else:
            self.stale += 1
        return improved


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    key = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy"]["pos"], 0, 0.0))  # noqa: NPY002
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def previous_path(path: str | Path) -> Path:
    """Where ``save_last`` keeps the state before ``path``'s: ``fold<k>/last.prev.pt`` beside ``fold<k>/last.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_last(
    path: str | Path,
    model: nn.Module,
    model_config: Mapping[str, Any],
    state: TrainingState,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
    ema: Any = None,
    average: Any = None,
    run_id: str = "",
    monitor: str = "",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``last.pt``: the model (``save_model`` format) with the state of everything that continues the run; the
    one it replaces becomes ``last.prev.pt`` (``previous_path``; twice the disk of one state, so that a ``last.pt``
    damaged later, by a full disk or a copy, is not the only one).

    Args:
        path: ``fold<k>/last.pt``.
        model: the trained model (possibly DDP-wrapped).
        model_config: ``create_model`` / ``create_classifier`` keywords.
        state: the run's ``TrainingState`` after the epoch.
        optimizer, scheduler, scaler, ema, average: their ``state_dict`` is saved (None: none; ``average`` is a
            ``kitlib.averaging.WeightAverage``).
        run_id: the configuration's fingerprint; monitor: the history column that picks ``best.pt``.
        extra: more entries (``fold``, ``preset``, ``exp``).
    """
    entries = {
        **dict(extra or {}), "checkpoint": CHECKPOINT_KIND, "run_id": run_id, "epoch": state.epoch,
        "finished": state.finished, "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(), "ema": None if ema is None else ema.state_dict(),
        "average": None if average is None or not average.active else average.state_dict(),
        "best_score": state.best_score, "best_epoch": state.best_epoch, "stale": state.stale,
        "history": state.history, "rng": _rng_state(), "monitor": monitor,
    }  # fmt: skip
    path = Path(path)
    if path.is_file():  # a kill before save_model ends leaves last.prev.pt only: resume reads it
        os.replace(path, previous_path(path))
    save_model(path, unwrap(model), model_config, extra=entries)


def save_best(
    path: str | Path,
    model: nn.Module,
    model_config: Mapping[str, Any],
    epoch: int,
    score: float,
    monitor: str,
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``best.pt``: the evaluated weights (the EMA's when there is one) with ``epoch``, ``score``, ``monitor``
    and ``run_id`` (``save_model`` format, what inference loads)."""
    entries = {**dict(extra or {}), "epoch": epoch, "score": score, "monitor": monitor, "run_id": run_id}
    save_model(path, unwrap(model), model_config, extra=entries)


def resume(
    path: str | Path,
    run_id: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
    ema: Any = None,
    average: Any = None,
) -> TrainingState | None:
    """Load ``last.pt`` into the model and the training objects, and restore the random generators.

    An unreadable ``last.pt`` (truncated, corrupt) is replaced by a readable ``last.prev.pt`` with a warning naming
    both, and the run continues from the epoch before.

    Args:
        path: ``fold<k>/last.pt``; nothing happens when neither it nor ``last.prev.pt`` exists.
        run_id: this run's configuration; a checkpoint of another one is refused.
        model, optimizer, scheduler, scaler, ema, average: receive their saved states (None: skipped).
    Returns:
        The ``TrainingState`` after the checkpoint's epoch, or None when there is no ``last.pt``.
    Raises:
        ValueError: not a kitlib training checkpoint, or one written by another configuration (both ids named); an
            unreadable ``last.pt`` without a readable previous state (the file named, and what to delete).
    """
    path = Path(path)
    saved = _read_last(path)
    if saved is None:
        return None
    if saved.get("checkpoint") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not a kitlib training checkpoint (no checkpoint={CHECKPOINT_KIND!r})")
    if saved.get("run_id") != run_id:
        raise ValueError(
            f"{path} belongs to another configuration (run_id {saved.get('run_id')!r}, this run {run_id!r}); "
            "delete the fold folder to start over, or use a new exp name"
        )
    unwrap(model).load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    for target, key in ((scheduler, "scheduler"), (scaler, "scaler"), (ema, "ema"), (average, "average")):
        if target is not None and saved.get(key) is not None:
            target.load_state_dict(saved[key])
    _set_rng_state(saved["rng"])
    log.info("resumed %s after epoch %d", path, int(saved["epoch"]))
    return TrainingState(
        epoch=int(saved["epoch"]), best_score=float(saved["best_score"]), best_epoch=int(saved["best_epoch"]),
        stale=int(saved["stale"]), history=[dict(row) for row in saved["history"]],
        finished=bool(saved.get("finished")),
    )  # fmt: skip


def _read_last(path: Path) -> dict[str, Any] | None:
    """``path``'s checkpoint; when it is unreadable or missing, ``last.prev.pt``'s, moved onto ``path`` (so the next
    ``save_last`` keeps a readable previous state); None when there is neither."""
    previous = previous_path(path)
    error = None
    if path.is_file():
        try:
            return read_torch(path, "training checkpoint")
        except ValueError as e:
            error = e
    if not previous.is_file():
        if error is None:
            return None
        raise ValueError(f"{error}; no {previous.name} to fall back on: delete it to start the fold from scratch")
    try:
        saved = read_torch(previous, "training checkpoint")
    except ValueError as e:
        if error is None:  # last.pt was never written: the previous state alone is damaged
            raise ValueError(f"{e}; delete it to start the fold from scratch") from e
        raise ValueError(f"{error}; {previous} is unreadable too: delete both to start the fold from scratch") from e
    if error is not None:
        log.warning("%s; resuming from %s (after epoch %d) instead", error, previous, int(saved.get("epoch", -1)))
    else:
        log.info("%s missing (killed while writing it): resuming from %s", path, previous)
    os.replace(previous, path)
    return saved
