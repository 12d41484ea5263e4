"""Stacking: a meta-model fitted on the members' out-of-fold (OOF) class probabilities (classification).

Cassava Leaf Disease top solutions stacked their members' OOF probabilities with a second-level model instead of
(or beside) a weighted mean. Here the features are the M members' (N, C) probabilities side by side, (N, M * C)
(``stack_features``; optionally their logs), and the meta-model is a scikit-learn classifier (``create_stacker``:
``"logreg"``, multinomial logistic regression with inverse regularisation ``c``).

Its CV is honest: ``cross_val_stack`` fits the meta-model on the rows of K-1 folds of ``folds.csv`` and predicts the
held-out fold (``sklearn.model_selection.PredefinedSplit`` + ``cross_val_predict(method="predict_proba")``), so the
stacked OOF (N, C) is scored with the competition metric like any blend (``kitlib.ensemble.blend_score``).
``choose_stacking`` keeps the stacker only when that CV beats the weighted blend's, refits it on every row
(``fit_stacker``) and writes it without pickle: ``LinearStacker`` is the coefficients, intercepts, classes and
feature layout in ``stacking.json``, applied with numpy alone (``LinearStacker.predict_proba``, equal to sklearn's
``predict_proba``). Only linear meta-models are offered: a tree model (HistGradientBoosting) could not be saved
without pickle (skops is not a dependency).

Inference (``kitlib.inference.predict_test(stacker=...)``) applies ``load_stacker(artifacts/<ensemble>)`` to each
member's fold-averaged test probabilities, in ``weights.json``'s ``exps`` order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from kitlib._private import listing, to_numpy
from kitlib.ensemble import blend_score
from kitlib.io import read_json, write_json
from kitlib.recipes import STACKERS

__all__ = [
    "STACKING_FILE",
    "LinearStacker",
    "StackingCV",
    "choose_stacking",
    "create_stacker",
    "cross_val_stack",
    "fit_stacker",
    "load_stacker",
    "stack_features",
    "stacking_chosen",
]

#: The meta-model's file in ``artifacts/<ensemble_name>/``.
STACKING_FILE = "stacking.json"
#: Probabilities are clipped to [EPS, 1] before the log of ``log_features``.
EPS = 1e-6


def _logreg(c: float, seed: int) -> LogisticRegression:
    """Multinomial logistic regression (lbfgs, sklearn's default for several classes), L2 with inverse strength c."""
    return LogisticRegression(C=c, max_iter=2000, random_state=seed)


#: The meta-models, keyed by ``kitlib.recipes.STACKERS`` (the names ``30_ensemble``'s ``stacking`` takes).
_FACTORIES: dict[str, Callable[[float, int], Any]] = {"logreg": _logreg}


def create_stacker(name: str, c: float = 1.0, seed: int = 0) -> Any:
    """A fresh (unfitted) scikit-learn meta-model.

    Args:
        name: a key of ``kitlib.recipes.STACKERS`` ("logreg").
        c: inverse regularisation strength (> 0); smaller is stronger.
        seed: the estimator's ``random_state``.
    Raises:
        KeyError: an unknown name (the options are named).
        ValueError: c <= 0.
    """
    if name not in _FACTORIES:
        raise KeyError(f"unknown stacking model {name!r}; options: {list(STACKERS)}")
    if not c > 0:
        raise ValueError(f"stacking c must be > 0, got {c}")
    return _FACTORIES[name](float(c), int(seed))


def _members(member_probs: Sequence[Any] | Mapping[str, Any]) -> list[np.ndarray]:
    arrays = list(member_probs.values()) if isinstance(member_probs, Mapping) else list(member_probs)
    if not arrays:
        raise ValueError("stacking needs at least one member's probabilities")
    arrays = [np.asarray(to_numpy(a), dtype=np.float64) for a in arrays]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != arrays[0].shape:
            raise ValueError(f"member {i} has probs of shape {a.shape}; stacking needs (N, C) of one shape "
                             f"(member 0: {arrays[0].shape})")  # fmt: skip
    return arrays


def stack_features(member_probs: Sequence[Any] | Mapping[str, Any], log_features: bool = False) -> np.ndarray:
    """The meta-model's features: the members' probabilities side by side.

    Args:
        member_probs: M arrays (N, C) of class probabilities in [0, 1] (float16/32/64, memmaps), a list or a dict in
            the members' order.
        log_features: take log(clip(p, EPS, 1)) instead of p.
    Returns:
        (N, M * C) float64; column ``m * C + c`` is member m's class c.
    Raises:
        ValueError: no member; a member that is not (N, C) or of another shape than the first.
    """
    x = np.concatenate(_members(member_probs), axis=1)
    return np.log(np.clip(x, EPS, 1.0)) if log_features else x


def _full_columns(probs: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, len(classes)) probabilities of the classes a model saw -> (n, n_classes), 0 for classes it never saw."""
    out = np.zeros((len(probs), n_classes), dtype=np.float64)
    out[:, classes] = probs
    return out


def _check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    y = to_numpy(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be ({n},) integer class indices, got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


@dataclass(frozen=True)
class StackingCV:
    """What ``cross_val_stack`` returns.

    Attributes:
        oof_probs: (N, C) float32 stacked OOF probabilities, each row predicted by a meta-model fitted without its
            fold.
        score: the score function on every row of ``oof_probs``.
        table: one row per fold: ``fold``, ``n_held_out``, ``held_out_score``.
    """

    oof_probs: np.ndarray
    score: float
    table: pd.DataFrame


def cross_val_stack(
    member_probs: Sequence[Any] | Mapping[str, Any],
    labels: Any,
    folds: Any,
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    model: str = "logreg",
    c: float = 1.0,
    log_features: bool = False,
    seed: int = 0,
) -> StackingCV:
    """Cross-validate the meta-model over the OOF folds: for each fold k, fit on the other folds' rows, predict k's.

    Args:
        member_probs: as ``stack_features``, rows in ``folds.csv`` order.
        labels: (N,) integer class indices in [0, C).
        folds: (N,) integer fold of each row (``folds.csv``'s column); at least 2 folds.
        score_fn: the competition metric (``kitlib.ensemble.blend_score_fn``), higher is better.
        model, c, seed: as ``create_stacker``; log_features: as ``stack_features``.
    Returns:
        StackingCV.
    Raises:
        ValueError: fewer than 2 folds; folds or labels of the wrong shape or range; as ``stack_features`` and
            ``create_stacker``.
    """
    x = stack_features(member_probs, log_features)
    n_classes = x.shape[1] // len(member_probs)
    y = _check_labels(labels, len(x), n_classes)
    f = to_numpy(folds)
    if f.shape != (len(x),) or f.dtype.kind not in "iu" or len(np.unique(f)) < 2:
        raise ValueError(f"folds must be ({len(x)},) integers with at least 2 distinct folds, got {f.dtype} {f.shape}")
    split = PredefinedSplit(test_fold=f)
    probs = cross_val_predict(create_stacker(model, c, seed), x, y, cv=split, method="predict_proba")
    oof = _full_columns(probs, np.unique(y), n_classes).astype(np.float32)
    records = [
        {"fold": int(k), "n_held_out": int(np.sum(f == k)),
         "held_out_score": blend_score([oof], score_fn, rows=np.flatnonzero(f == k))}
        for k in np.unique(f)
    ]  # fmt: skip
    return StackingCV(oof_probs=oof, score=blend_score([oof], score_fn), table=pd.DataFrame.from_records(records))


@dataclass(frozen=True)
class LinearStacker:
    """A fitted linear meta-model as plain numbers: what ``stacking.json`` holds.

    Attributes:
        model: its ``STACKERS`` name; c: its regularisation.
        exps: the members, in the order of the feature blocks (``weights.json``'s ``exps``).
        n_classes: C, columns of each member's probabilities and of the output.
        classes: (C',) the class indices the model saw in training (sklearn's ``classes_``), sorted.
        coef: (C', M * C) float64, or (1, M * C) when C' == 2 (sklearn's binary form: a sigmoid on one score).
        intercept: (C',) or (1,) float64.
        log_features: the features are log(clip(p, EPS, 1)) (``stack_features``).
    """

    model: str
    c: float
    exps: tuple[str, ...]
    n_classes: int
    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    log_features: bool = False

    def predict_proba(self, member_probs: Sequence[Any] | Mapping[str, Any]) -> np.ndarray:
        """The meta-model's class probabilities, numpy only (sklearn's ``predict_proba``: softmax of the scores, or
        a sigmoid for two classes).

        Args:
            member_probs: M = len(exps) arrays (n, C), in ``exps`` order.
        Returns:
            (n, C) float64, rows sum to 1; 0 for a class the model never saw.
        Raises:
            ValueError: another number of members or classes than the model was fitted on.
        """
        x = stack_features(member_probs, self.log_features)
        if x.shape[1] != self.coef.shape[1]:
            raise ValueError(f"stacker fitted on {len(self.exps)} members x {self.n_classes} classes "
                             f"({self.coef.shape[1]} features), got {x.shape[1]} features")  # fmt: skip
        scores = x @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            probs = np.stack([1.0 - p1, p1], axis=1)
        else:
            scores -= scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
        return _full_columns(probs, self.classes, self.n_classes)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write ``stacking.json`` atomically: every attribute plus ``features``, the column names
        ``"<exp>:<class>"`` (``"log <exp>:<class>"`` with log features)."""
        prefix = "log " if self.log_features else ""
        features = [f"{prefix}{e}:{k}" for e in self.exps for k in range(self.n_classes)]
        return write_json(path, {
            "model": self.model, "c": self.c, "exps": list(self.exps), "n_classes": self.n_classes,
            "classes": self.classes.tolist(), "log_features": self.log_features, "features": features,
            "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
        })  # fmt: skip

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LinearStacker:
        """Read ``stacking.json``.

        Raises:
            FileNotFoundError: no such file; ValueError: missing keys or arrays whose shapes do not agree (named).
        """
        spec = read_json(path)
        missing = [k for k in ("model", "c", "exps", "n_classes", "classes", "coef", "intercept") if k not in spec]
        if missing:
            raise ValueError(f"{path}: missing {listing(missing)}; write it with kitlib.stacking.fit_stacker")
        stacker = cls(model=str(spec["model"]), c=float(spec["c"]), exps=tuple(map(str, spec["exps"])),
                      n_classes=int(spec["n_classes"]), classes=np.asarray(spec["classes"], dtype=np.int64),
                      coef=np.asarray(spec["coef"], dtype=np.float64),
                      intercept=np.asarray(spec["intercept"], dtype=np.float64),
                      log_features=bool(spec.get("log_features", False)))  # fmt: skip
        rows = 1 if len(stacker.classes) == 2 else len(stacker.classes)
        features = len(stacker.exps) * stacker.n_classes
        if stacker.coef.shape != (rows, features) or stacker.intercept.shape != (rows,):
            raise ValueError(f"{path}: coef {stacker.coef.shape} / intercept {stacker.intercept.shape} do not fit "
                             f"{len(stacker.classes)} classes x {features} features")  # fmt: skip
        return stacker


def fit_stacker(
    member_probs: Mapping[str, Any],
    labels: Any,
    model: str = "logreg",
    c: float = 1.0,
    log_features: bool = False,
    seed: int = 0,
) -> LinearStacker:
    """Fit the meta-model on every OOF row (for the test set) and return it as a ``LinearStacker``.

    Args:
        member_probs: ``{exp: (N, C) probs}`` in the members' order (the names become ``exps``).
        labels: (N,) integer class indices in [0, C).
        model, c, seed: as ``create_stacker``; log_features: as ``stack_features``.
    Raises:
        As ``cross_val_stack``.
    """
    x = stack_features(member_probs, log_features)
    n_classes = x.shape[1] // len(member_probs)
    estimator = create_stacker(model, c, seed).fit(x, _check_labels(labels, len(x), n_classes))
    return LinearStacker(model=model, c=float(c), exps=tuple(map(str, member_probs)), n_classes=n_classes,
                         classes=np.asarray(estimator.classes_, dtype=np.int64),
                         coef=np.asarray(estimator.coef_, dtype=np.float64),
                         intercept=np.asarray(estimator.intercept_, dtype=np.float64),
                         log_features=log_features)  # fmt: skip


def choose_stacking(
    member_probs: Mapping[str, Any],
    labels: Any,
    folds: Any,
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    blend_cv: float,
    out_dir: str | os.PathLike,
    model: str = "logreg",
    c: float = 1.0,
    log_features: bool = False,
    seed: int = 0,
) -> tuple[dict[str, Any], StackingCV]:
    """Cross-validate the stacker and keep it only when its OOF score beats the weighted blend's.

    When chosen, the meta-model is refitted on every row and written to ``out_dir/stacking.json``; otherwise a
    stale ``stacking.json`` there is removed.

    Args:
        member_probs, labels, folds, score_fn, model, c, log_features, seed: as ``cross_val_stack``.
        blend_cv: the weighted blend's score on every row (the same ``score_fn``).
        out_dir: ``artifacts/<ensemble_name>/``.
    Returns:
        ``(record, cv)``: record is ``weights.json``'s ``"stacking"`` entry ``{"model", "c", "log_features", "cv",
        "blend_cv", "chosen", "file"}`` (file None when not chosen); cv the ``StackingCV``.
    """
    cv = cross_val_stack(member_probs, labels, folds, score_fn, model, c, log_features, seed)
    chosen = bool(cv.score > blend_cv)
    path = Path(out_dir) / STACKING_FILE
    if chosen:
        fit_stacker(member_probs, labels, model, c, log_features, seed).to_json(path)
    else:
        path.unlink(missing_ok=True)
    record = {"model": model, "c": float(c), "log_features": bool(log_features), "cv": cv.score,
              "blend_cv": float(blend_cv), "chosen": chosen, "file": STACKING_FILE if chosen else None}  # fmt: skip
    return record, cv


def stacking_chosen(weights_json: Mapping[str, Any]) -> bool:
    """Whether an ensemble's ``weights.json`` (as read) says its stacker replaces the weighted mean."""
    return bool((weights_json.get("stacking") or {}).get("chosen"))


def load_stacker(ensemble_dir: str | os.PathLike) -> LinearStacker | None:
    """The ensemble's chosen meta-model, or None (no ``weights.json``, no stacking, or not chosen).

    Raises:
        FileNotFoundError: ``weights.json`` says the stacker was chosen but ``stacking.json`` is missing.
        ValueError: ``stacking.json``'s members differ from ``weights.json``'s ``exps`` (both named).
    """
    ensemble_dir = Path(ensemble_dir)
    weights_path = ensemble_dir / "weights.json"
    if not weights_path.is_file() or not stacking_chosen(read_json(weights_path)):
        return None
    path = ensemble_dir / STACKING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights.json chose stacking but the meta-model is missing; rerun 30_ensemble")
    stacker = LinearStacker.from_json(path)
    exps = [str(e) for e in read_json(weights_path).get("exps", [])]
    if list(stacker.exps) != exps:
        raise ValueError(f"{path}: members {list(stacker.exps)} differ from weights.json's exps {exps}")
    return stacker
