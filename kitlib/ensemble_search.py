"""Choosing the weights of a blend of out-of-fold (OOF) predictions on the OOFs themselves.

Inputs, score functions and blend arithmetic are those of ``kitlib.ensemble`` (M OOF arrays of one shape, as a list
or a dict ``{name: array}``; a ``ScoreFn`` or a plain ``fn(blend, rows) -> float``, higher is better).

- ``optimize_weights``: non-negative weights summing to 1 that maximise the OOF score (scipy: Nelder-Mead, SLSQP or
  differential evolution).
- ``cv_weights``: the same fitted on K-1 folds and scored on the held-out fold, so that over-fitted weights show.
- ``subset_search``: every subset of models with equal weights, best first.
- ``hill_climb``: Caruana et al. (2004) ensemble selection with replacement.

Each chunk of every model is read once per pass, and all the weight vectors of a pass (a generation of differential
evolution, the candidates of a hill-climbing step, every subset) are scored from it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from kitlib._private import progress, to_numpy
from kitlib.ensemble import ScoreFn, _evaluate, _Models, _models, _rows, blend_score

__all__ = [
    "EnsembleWeights",
    "CVWeights",
    "METHODS",
    "optimize_weights",
    "cv_weights",
    "subset_search",
    "hill_climb",
]

# What an optimiser minimises for a blend whose score is NaN (or a weight vector of zeros).
_BAD_LOSS = 1e30
# Default cap on the number of subsets that subset_search scores.
_MAX_SUBSETS = 1 << 16


# ---------------------------------------------------------------------------------------------------- optimisation


@dataclass(frozen=True, eq=False)
class EnsembleWeights:
    """Blend weights and how they were found.

    Attributes:
        names: (M,) model names.
        weights: (M,) float64, >= 0, summing to 1.
        score: score of the blend with ``weights`` on the rows it was fitted on (in-sample).
        method: "nelder-mead", "slsqp", "differential_evolution" or "hill_climb".
        equal_score: score of the equal-weights blend on the same rows: the baseline to beat.
        n_evals: blends scored.
        trace: optimisers: the best score so far after each evaluation; hill climbing: the score after the initial
            ensemble and after each accepted step (non-decreasing in both cases).
        counts: hill climbing: (M,) how many times each model was selected; None for the optimisers.
    """

    names: tuple[str, ...]
    weights: np.ndarray
    score: float
    method: str
    equal_score: float
    n_evals: int
    trace: np.ndarray
    counts: np.ndarray | None = None

    def as_dict(self) -> dict[str, float]:
        """``{name: weight}``."""
        return {n: float(w) for n, w in zip(self.names, self.weights, strict=True)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary for ``artifacts/ensemble/weights.json`` (no trace)."""
        d = {
            "method": self.method,
            "score": self.score,
            "equal_score": self.equal_score,
            "n_evals": self.n_evals,
            "weights": self.as_dict(),
        }
        if self.counts is not None:
            d["counts"] = {n: int(c) for n, c in zip(self.names, self.counts, strict=True)}
        return d


class _Tracker:
    """Scores batches of weight vectors and remembers the best seen (the first of equal scores wins)."""

    def __init__(self, models: _Models, score_fn: Callable, rows: np.ndarray, chunk_size: int | None, desc: str):
        self.models, self.score_fn, self.rows, self.chunk_size = models, score_fn, rows, chunk_size
        self.best_w: np.ndarray | None = None
        self.best_score = float("nan")
        self.trace: list[float] = []
        self.bar = progress(desc=desc, unit="blend")

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        scores = _evaluate(self.models, weights, self.score_fn, self.rows, self.chunk_size)
        for w, s in zip(np.atleast_2d(weights), scores, strict=True):
            if not np.isnan(s) and (self.best_w is None or np.isnan(self.best_score) or s > self.best_score):
                self.best_w, self.best_score = w.copy(), float(s)
            elif self.best_w is None:
                self.best_w = w.copy()
            self.trace.append(self.best_score)
        self.bar.update(len(scores))
        return scores

    def loss(self, weights: np.ndarray) -> np.ndarray:
        """Minus the scores, ``_BAD_LOSS`` for NaN."""
        s = self(weights)
        return np.where(np.isnan(s), _BAD_LOSS, -s)


def _losses(track: _Tracker, points: np.ndarray) -> np.ndarray:
    """Minus the scores of optimiser points (P, M): weights = |x| / sum |x|; ``_BAD_LOSS`` for a zero vector."""
    x = np.abs(np.atleast_2d(np.asarray(points, dtype=np.float64)))
    total = x.sum(axis=1, keepdims=True)
    ok = (total[:, 0] > 0) & np.isfinite(total[:, 0])
    out = np.full(len(x), _BAD_LOSS)
    if ok.any():
        out[ok] = track.loss(x[ok] / total[ok])
    return out


def _nelder_mead(track: _Tracker, m: int, seed: int, maxiter: int | None, options: Mapping[str, Any]) -> None:
    # A wide initial simplex (equal weights, then each model's weight raised by 1 before normalising: 0.75 / 0.25
    # for two models) instead of scipy's 5 % steps, which can all fall on one plateau of a piecewise-constant score.
    simplex = np.vstack([np.full(m, 1.0 / m), np.full((m, m), 1.0 / m) + np.eye(m)])
    opts = {"maxiter": maxiter or 200 * m, "xatol": 1e-4, "fatol": 1e-6, "initial_simplex": simplex, **options}
    optimize.minimize(lambda x: float(_losses(track, x)[0]), np.full(m, 1.0 / m), method="Nelder-Mead", options=opts)


def _slsqp(track: _Tracker, m: int, seed: int, maxiter: int | None, options: Mapping[str, Any]) -> None:
    # Forward differences of step 1e-3, the M + 1 blends scored in one pass. scipy's default step (1.5e-8) is below
    # the resolution of a float32 blend, so its gradient would be 0.
    step = 1e-3

    def jac(x: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0.0, None)
        losses = _losses(track, np.vstack([x, x + step * np.eye(m)]))
        return (losses[1:] - losses[0]) / step

    opts = {"maxiter": maxiter or 100, **options}
    optimize.minimize(
        lambda x: float(_losses(track, np.clip(x, 0.0, None))[0]),
        np.full(m, 1.0 / m),
        method="SLSQP",
        jac=jac,
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda x: np.sum(x) - 1.0}],
        options=opts,
    )


def _differential_evolution(
    track: _Tracker, m: int, seed: int, maxiter: int | None, options: Mapping[str, Any]
) -> None:
    kwargs = {"maxiter": maxiter or 100, "popsize": 15, "tol": 0.01, "polish": False, **options}
    optimize.differential_evolution(
        lambda x: _losses(track, x.T),  # vectorised: x is (M, S), one column per member of the population
        [(0.0, 1.0)] * m,
        seed=seed,
        x0=np.full(m, 1.0 / m),
        vectorized=True,
        updating="deferred",
        **kwargs,
    )


#: Weight optimisers by name: ``fit(tracker, M, seed, maxiter, options)``; the tracker keeps the best blend seen.
METHODS: dict[str, Callable[[_Tracker, int, int, int | None, Mapping[str, Any]], None]] = {
    "nelder-mead": _nelder_mead,
    "slsqp": _slsqp,
    "differential_evolution": _differential_evolution,
}


def optimize_weights(
    oofs: Sequence[Any] | Mapping[str, Any],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    method: str = "nelder-mead",
    names: Sequence[str] | None = None,
    rows: Any = None,
    seed: int = 0,
    maxiter: int | None = None,
    options: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
) -> EnsembleWeights:
    """Non-negative blend weights summing to 1 that maximise ``score_fn`` on the OOFs (in-sample).

    The equal-weights blend is scored first and the best blend seen during the search is returned, so the result
    never scores below equal weights. Every method starts from equal weights.

    - "nelder-mead": simplex search over x, weights = |x| / sum |x|. Works with piecewise-constant scores
      (accuracy, thresholded Dice); deterministic. maxiter default 200 M.
    - "slsqp": weights in [0, 1] with sum 1 as a constraint, forward-difference gradients (step 1e-3, the M + 1
      blends of a gradient in one pass): only for smooth scores (``neg_log_loss_fn``); on accuracy or Dice the
      gradient is mostly 0 and it stops near equal weights. maxiter default 100.
    - "differential_evolution": scipy's DE over [0, 1]^M, normalised to sum 1, population 15 M, ``seed``, no
      polishing; a whole generation is scored in one pass over the data. maxiter (generations) default 100.
      Global, so the best choice for accuracy and thresholded Dice.

    Args:
        oofs: as ``blend``.
        score_fn: ``ScoreFn`` or ``fn(blend, rows) -> float``, higher is better; NaN scores count as worst.
        method: a key of ``METHODS``.
        names: model names (default the dict keys, or "model0", "model1", ...).
        rows: rows to fit on: None (all), (n,) indices or an (N,) bool mask.
        seed: seed of differential evolution (the other methods are deterministic).
        maxiter: iterations (generations for DE); None for the defaults above.
        options: more keyword arguments for scipy: ``minimize(options=...)`` for Nelder-Mead and SLSQP, keyword
            arguments of ``differential_evolution`` (e.g. ``popsize``, ``tol``, ``polish``).
        chunk_size: rows per chunk for a ``ScoreFn``; None for about 4 M elements per model.
    Returns:
        EnsembleWeights; ``weights`` is the best blend seen, ``score`` its score.
    Raises:
        KeyError: unknown method (the options are listed).
        ValueError, TypeError: as ``blend``.
    Cost:
        Every evaluation reads the rows of all M models (memmaps included). For segmentation, fit on a sample of
        rows (``rows=``) or on downscaled OOFs when that is too slow.
    Source:
        Cassava Leaf Disease Classification 1st place write-up (Kaggle 2021): besides their winning two-level mean,
        blends with weights optimised on OOF scored well and moved little from CV to leaderboard (about 0.1 %).
        Check with ``cv_weights`` that fitted weights beat equal ones on held-out folds before trusting them.
    """
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; options: {sorted(METHODS)}")
    models = _models(oofs, names)
    r = _rows(rows, models.n_rows)
    m = len(models.names)
    track = _Tracker(models, score_fn, r, chunk_size, desc=f"blend weights ({method})")
    try:
        equal = float(track(np.full((1, m), 1.0 / m))[0])
        if m > 1:
            METHODS[method](track, m, seed, maxiter, dict(options or {}))
    finally:
        track.bar.close()
    return EnsembleWeights(
        names=models.names,
        weights=track.best_w,
        score=track.best_score,
        method=method,
        equal_score=equal,
        n_evals=len(track.trace),
        trace=np.array(track.trace),
    )


@dataclass(frozen=True, eq=False)
class CVWeights:
    """Weights fitted on K-1 folds and scored on the held-out one.

    Attributes:
        table: one row per fold: fold, n_train, n_held_out, train_score (optimised, on the K-1 folds),
            held_out_score (those weights on the fold), equal_held_out_score (equal weights on the fold), then
            ``w_<name>``, the fitted weight of each model.
        held_out_mean: mean of ``held_out_score`` over the folds: what the weights are worth on new data.
        equal_held_out_mean: mean of ``equal_held_out_score``: what plain averaging is worth.
        in_sample: the weights fitted on every row (what you would submit) with their in-sample score.
    """

    table: pd.DataFrame
    held_out_mean: float
    equal_held_out_mean: float
    in_sample: EnsembleWeights

    @property
    def in_sample_score(self) -> float:
        return self.in_sample.score

    @property
    def optimism(self) -> float:
        """In-sample score minus the held-out mean: how much the weights over-fit the OOFs."""
        return self.in_sample.score - self.held_out_mean


def cv_weights(
    oofs: Sequence[Any] | Mapping[str, Any],
    folds: Any,
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    method: str = "nelder-mead",
    names: Sequence[str] | None = None,
    seed: int = 0,
    maxiter: int | None = None,
    options: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
) -> CVWeights:
    """Cross-validate the weight fitting: fit on K-1 OOF folds, score the held-out fold, for each fold.

    A held-out mean clearly below the in-sample score means the weights over-fit the OOFs; when it is not above
    ``equal_held_out_mean`` either, equal weights are the safer submission.

    Args:
        oofs, score_fn, method, names, seed, maxiter, options, chunk_size: as ``optimize_weights``.
        folds: (N,) integer fold of each row (``folds.csv``'s column, in OOF order); at least 2 folds.
    Returns:
        CVWeights.
    Raises:
        ValueError: folds not (N,), fewer than 2 distinct folds; as ``optimize_weights``.
        TypeError: non-integer folds.
    """
    models = _models(oofs, names)
    f = to_numpy(folds)
    if f.shape != (models.n_rows,):
        raise ValueError(f"folds must have shape ({models.n_rows},) like the OOFs' rows, got {f.shape}")
    if f.dtype.kind not in "iu":
        raise TypeError(f"folds must be integers, got dtype {f.dtype}")
    fold_ids = np.unique(f)
    if len(fold_ids) < 2:
        raise ValueError(f"cv_weights needs at least 2 folds, got {fold_ids.tolist()}")
    oof_dict = dict(zip(models.names, models.arrays, strict=True))
    kwargs = {"method": method, "seed": seed, "maxiter": maxiter, "options": options, "chunk_size": chunk_size}
    records = []
    for k in fold_ids:
        held = np.flatnonzero(f == k)
        train = np.flatnonzero(f != k)
        fit = optimize_weights(oof_dict, score_fn, rows=train, **kwargs)
        records.append(
            {
                "fold": int(k),
                "n_train": len(train),
                "n_held_out": len(held),
                "train_score": fit.score,
                "held_out_score": blend_score(oof_dict, score_fn, fit.weights, rows=held, chunk_size=chunk_size),
                "equal_held_out_score": blend_score(oof_dict, score_fn, None, rows=held, chunk_size=chunk_size),
                **{f"w_{n}": float(w) for n, w in zip(models.names, fit.weights, strict=True)},
            }
        )
    table = pd.DataFrame.from_records(records)
    return CVWeights(
        table=table,
        held_out_mean=float(table["held_out_score"].mean()),
        equal_held_out_mean=float(table["equal_held_out_score"].mean()),
        in_sample=optimize_weights(oof_dict, score_fn, **kwargs),
    )


# ------------------------------------------------------------------------------------- subsets and ensemble selection


def subset_search(
    oofs: Sequence[Any] | Mapping[str, Any],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    names: Sequence[str] | None = None,
    min_size: int = 1,
    max_size: int | None = None,
    rows: Any = None,
    max_subsets: int | None = _MAX_SUBSETS,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Score every subset of models blended with equal weights (the Dacon building contest's best-combination
    search).

    Args:
        oofs, names, rows, chunk_size: as ``optimize_weights``.
        score_fn: as ``optimize_weights``.
        min_size, max_size: subset sizes to try, 1 <= min_size <= max_size <= M (None: M).
        max_subsets: refuse more subsets than this (2**16 by default; None for no limit). With a ``ScoreFn`` all
            subsets are scored in one pass over the data, so a pass holds one (S,) stats array per subset.
    Returns:
        DataFrame with columns models (tuple of names, in input order), size, score; best score first, then
        smaller subsets, then enumeration order; NaN scores last. Index 0..P-1.
    Raises:
        ValueError: sizes out of range, more subsets than ``max_subsets`` (the count is named); as ``blend``.
    """
    models = _models(oofs, names)
    m = len(models.names)
    max_size = m if max_size is None else max_size
    if not 1 <= min_size <= max_size <= m:
        raise ValueError(
            f"need 1 <= min_size <= max_size <= {m} (models), got min_size={min_size}, max_size={max_size}"
        )
    count = sum(math.comb(m, k) for k in range(min_size, max_size + 1))
    if max_subsets is not None and count > max_subsets:
        raise ValueError(
            f"{count} subsets of {m} models with sizes {min_size}..{max_size} exceed max_subsets={max_subsets}; "
            "narrow min_size / max_size, or raise max_subsets (None for no limit)"
        )
    subsets = [c for k in range(min_size, max_size + 1) for c in itertools.combinations(range(m), k)]
    weights = np.zeros((count, m))
    for p, c in enumerate(subsets):
        weights[p, list(c)] = 1.0 / len(c)
    r = _rows(rows, models.n_rows)
    n_chunks = -(-len(r) // models.chunk_rows(chunk_size)) if isinstance(score_fn, ScoreFn) else 1
    with progress(total=count * n_chunks, desc="subset search", unit="blend") as bar:
        scores = _evaluate(models, weights, score_fn, r, chunk_size, tick=bar.update)
    table = pd.DataFrame(
        {
            "models": [tuple(models.names[i] for i in c) for c in subsets],
            "size": [len(c) for c in subsets],
            "score": scores,
        }
    )
    order = np.lexsort((np.arange(count), table["size"].to_numpy(), -np.nan_to_num(scores, nan=-np.inf)))
    return table.iloc[order].reset_index(drop=True)


def hill_climb(
    oofs: Sequence[Any] | Mapping[str, Any],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    names: Sequence[str] | None = None,
    n_iter: int = 50,
    allow_repeats: bool = True,
    init_size: int = 1,
    rows: Any = None,
    chunk_size: int | None = None,
) -> EnsembleWeights:
    """Ensemble selection (Caruana et al. 2004): greedily add the model that most improves the blend.

    Starts from the ``init_size`` best single models ("sorted ensemble initialisation"), then at each step scores
    the blend with each candidate added once more (all candidates in one pass over the data) and keeps the best.
    With ``allow_repeats`` (selection with replacement) a model can be added again, which is how the weights
    become counts / total. Stops after ``n_iter`` steps or when no candidate strictly improves the score, so the
    score never goes down. Ties between candidates go to the lower model index.

    Args:
        oofs, score_fn, names, rows, chunk_size: as ``optimize_weights``.
        n_iter: most models added after the initial ones (>= 0).
        allow_repeats: select with replacement; False adds each model at most once.
        init_size: best single models the ensemble starts with, 1..M.
    Returns:
        EnsembleWeights with method "hill_climb", ``counts``, weights = counts / counts.sum(), ``trace`` the score
        after the initial ensemble and after each step, and ``equal_score`` (every model once).
    Raises:
        ValueError: n_iter < 0, init_size outside 1..M; as ``blend``.
    Source:
        R. Caruana, A. Niculescu-Mizil, G. Crew, A. Ksikes, "Ensemble Selection from Libraries of Models",
        ICML 2004 (forward selection with replacement, sorted initialisation). Their bagging over model subsets is
        left out.
    """
    models = _models(oofs, names)
    m = len(models.names)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    if not 1 <= init_size <= m:
        raise ValueError(f"init_size must be in 1..{m} (models), got {init_size}")
    r = _rows(rows, models.n_rows)
    n_evals = 0

    def scores_of(weights: np.ndarray) -> np.ndarray:
        nonlocal n_evals
        n_evals += len(weights)
        return _evaluate(models, weights, score_fn, r, chunk_size)

    def key(s: np.ndarray) -> np.ndarray:
        return np.nan_to_num(s, nan=-np.inf)

    first = scores_of(np.vstack([np.eye(m), np.full((1, m), 1.0 / m)]))
    single, equal = first[:m], float(first[m])
    counts = np.zeros(m, dtype=np.int64)
    counts[np.argsort(-key(single), kind="stable")[:init_size]] = 1
    score = float(single[counts.argmax()]) if init_size == 1 else float(scores_of((counts / counts.sum())[None])[0])
    trace = [score]
    with progress(total=n_iter, desc="hill climb", unit="step") as bar:
        for _ in range(n_iter):
            candidates = np.arange(m) if allow_repeats else np.flatnonzero(counts == 0)
            if len(candidates) == 0:
                break
            trial = np.repeat(counts[None], len(candidates), axis=0)
            trial[np.arange(len(candidates)), candidates] += 1
            s = key(scores_of(trial / trial.sum(axis=1, keepdims=True)))
            best = int(np.argmax(s))
            if not s[best] > (-np.inf if np.isnan(score) else score):
                break
            counts, score = trial[best], float(s[best])
            trace.append(score)
            bar.update(1)
    return EnsembleWeights(
        names=models.names,
        weights=counts / counts.sum(),
        score=score,
        method="hill_climb",
        equal_score=equal,
        n_evals=n_evals,
        trace=np.array(trace),
        counts=counts,
    )
