"""Blending the out-of-fold (OOF) predictions of several experiments, and choosing the blend's weights on them.

Inputs are M OOF arrays of one shape (N, ...), rows in ``folds.csv`` order: classification probs (N, C) float
(Cassava), or segmentation probs (N, C, H, W) float or uint8 (probability x 255, rounded), possibly ``np.memmap``
files of several GB. A list, or a dict ``{name: array}`` whose keys name the models.

- ``blend``: the weighted mean of the M arrays, a chunk of rows at a time (into ``out=``, e.g. a memmap, if asked).
- ``blend_score``: the score of one blend.
- ``optimize_weights``: non-negative weights summing to 1 that maximise the OOF score (scipy: Nelder-Mead, SLSQP or
  differential evolution).
- ``cv_weights``: the same fitted on K-1 folds and scored on the held-out fold, so that over-fitted weights show.
- ``subset_search``: every subset of models with equal weights, best first.
- ``hill_climb``: Caruana et al. (2004) ensemble selection with replacement.

Scores, higher is better, come from a score function. ``ScoreFn`` is the chunked kind: for each chunk of rows it
returns additive statistics (e.g. ``[sum of per-image Dice, pairs]``) that are summed over the chunks and turned into
the score at the end, so a blend of memmaps is never held whole. Each chunk of every model is read once per pass,
and all the weight vectors of a pass (a generation of differential evolution, the candidates of a hill-climbing
step, every subset) are scored from it. ``accuracy_score_fn``, ``neg_log_loss_fn`` and ``dice_score_fn`` are ready
made. Any plain callable ``fn(blend, rows) -> float`` works too: it gets the whole blend at once (small arrays only).

Blend arithmetic: uint8 inputs are probabilities x 255. The blend is accumulated in float32 (float64 when an input is
float64), one model at a time, model weights normalised to sum 1; when every input is uint8 it is accumulated on the
0..255 scale and divided by 255 at the end. Score functions always see probabilities. The arithmetic is elementwise,
so a blend does not depend on the chunk size nor on whether the inputs are memmaps (a score's float sums over chunks
can differ in the last bits between chunk sizes). A pass holds, per chunk, the M models' rows as stored plus one
float blend and one temporary: never M float copies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from kitlib._private import listing, progress, to_numpy
from kitlib.metrics import dice_per_image_class

__all__ = [
    "ScoreFn",
    "accuracy_score_fn",
    "neg_log_loss_fn",
    "dice_score_fn",
    "blend",
    "blend_score",
    "EnsembleWeights",
    "CVWeights",
    "METHODS",
    "optimize_weights",
    "cv_weights",
    "subset_search",
    "hill_climb",
]

# Elements of one model read per chunk: 4 M (4 MB of uint8, 16 MB as a float32 blend), about 5 Clouds images of
# 4 x 350 x 525; a (21367, 5) Cassava OOF is a single chunk.
_CHUNK_ELEMENTS = 1 << 22
# What an optimiser minimises for a blend whose score is NaN (or a weight vector of zeros).
_BAD_LOSS = 1e30
# Default cap on the number of subsets that subset_search scores.
_MAX_SUBSETS = 1 << 16


# --------------------------------------------------------------------------------------------------- score functions


def _ratio(total: np.ndarray) -> float:
    """``total[0] / total[1]``: the mean behind most scores; NaN when the count is 0."""
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _take(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]``, read as a slice when ``rows`` is a run of consecutive rows (cheap on a memmap)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (len(rows) == 1 or np.all(np.diff(rows) == 1)):
        return np.asarray(a[int(rows[0]) : int(rows[-1]) + 1])
    return np.asarray(a[rows])


@dataclass(frozen=True)
class ScoreFn:
    """A score accumulated over chunks of rows, so that a blend of large arrays is never held whole.

    For each chunk, ``stats(blend, rows)`` returns a 1-D array of additive statistics; the arrays of all chunks are
    summed and ``finalize`` turns the total into the score. The default ``finalize`` is ``total[0] / total[1]``: a
    mean, with ``stats`` giving ``[sum of item scores, number of items]``; ``ScoreFn.mean_of`` builds one from a
    per-item function. A ``ScoreFn`` is also a plain ``fn(blend, rows) -> float``.

    Attributes:
        stats: ``stats(blend, rows) -> (S,)`` float. ``blend``: (n, ...) float32 or float64 probabilities of n rows;
            ``rows``: (n,) int64, their indices in the OOF arrays (to look up labels or masks).
        finalize: ``finalize(total) -> float``, higher is better; ``total``: (S,) float64.
        name: for tables and errors.
        n_rows: N, the rows the score knows labels for; the OOF arrays must have as many (None: not checked).
    """

    stats: Callable[[np.ndarray, np.ndarray], Any]
    finalize: Callable[[np.ndarray], float] = _ratio
    name: str = "score"
    n_rows: int | None = None

    @classmethod
    def mean_of(cls, items: Callable[[np.ndarray, np.ndarray], Any], name: str, n_rows: int | None = None) -> ScoreFn:
        """A score that is the mean of per-item scores.

        Args:
            items: ``items(blend, rows)`` -> per-item scores of any shape, e.g. (n,) per image or (n, K) per
                (image, class) pair; NaN items are skipped.
            name: the score's name.
            n_rows: as the attribute.
        Returns:
            ScoreFn whose stats are ``[nansum, count of non-NaN items]``; its score is NaN when every item is NaN.
        """

        def stats(blend: np.ndarray, rows: np.ndarray) -> np.ndarray:
            values = np.asarray(items(blend, rows), dtype=np.float64)
            valid = ~np.isnan(values)
            return np.array([values[valid].sum(), np.count_nonzero(valid)], dtype=np.float64)

        return cls(stats=stats, name=name, n_rows=n_rows)

    def __call__(self, blend: np.ndarray, rows: np.ndarray) -> float:
        return float(self.finalize(np.asarray(self.stats(blend, rows), dtype=np.float64)))


def _check_labels(labels: Any) -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty (N,) array of class indices, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integer class indices, got dtype {y.dtype}")
    return y


def _labels_for(y: np.ndarray, blend: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Labels of ``rows``, after checking that the blend is (n, C) and the labels lie in [0, C)."""
    if blend.ndim != 2:
        raise ValueError(f"a classification score needs (N, C) probs, got a blend of shape {blend.shape}")
    t = y[rows]
    c = blend.shape[1]
    bad = (t < 0) | (t >= c)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"label {int(t[i])} of row {int(rows[i])} is outside [0, {c}) (the OOF has {c} classes)")
    return t


def accuracy_score_fn(labels: Any) -> ScoreFn:
    """Classification accuracy of the blend's argmax (Cassava).

    Args:
        labels: (N,) integer class indices in [0, C), rows in the OOF order.
    Returns:
        ScoreFn, in [0, 1]. Ties in the argmax go to the lower class, as ``np.argmax``.
    Raises:
        ValueError: labels not a non-empty 1-D array; when scoring, a blend that is not (n, C) or a label outside
            [0, C) (row named).
        TypeError: non-integer labels.
    """
    y = _check_labels(labels)

    def items(blend: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return blend.argmax(axis=1) == _labels_for(y, blend, rows)

    return ScoreFn.mean_of(items, "accuracy", n_rows=len(y))


def neg_log_loss_fn(labels: Any, eps: float = 1e-15) -> ScoreFn:
    """Minus the multiclass log loss, so that higher is better.

    Args:
        labels: (N,) integer class indices in [0, C).
        eps: the true class's probability is clipped to [eps, 1] (probs of 0 would give an infinite loss).
    Returns:
        ScoreFn, in [log(eps), 0]: the mean of log p(true class). The blend is taken as probs (softmax applied
        before saving the OOF) and not renormalised.
    Raises:
        As ``accuracy_score_fn``.
    """
    y = _check_labels(labels)

    def items(blend: np.ndarray, rows: np.ndarray) -> np.ndarray:
        t = _labels_for(y, blend, rows)
        p = blend[np.arange(len(t)), t].astype(np.float64)
        return np.log(np.clip(p, eps, 1.0))

    return ScoreFn.mean_of(items, "neg_log_loss", n_rows=len(y))


def dice_score_fn(masks: Any, threshold: float | Sequence[float] = 0.5, empty_score: float | None = 1.0) -> ScoreFn:
    """Mean Dice over (image, class) pairs of the thresholded blend: the Understanding Clouds / Severstal metric.

    Args:
        masks: (N, K, H, W) {0, 1} true masks (bool, integer or float; a memmap is read a chunk at a time), at the
            OOF's resolution.
        threshold: a pixel is foreground where blend > threshold (probability scale, also for uint8 OOFs); a float,
            or one per class (K,).
        empty_score: Dice of a pair with both masks empty: 1.0 on Kaggle; None skips the pair (Dacon building).
    Returns:
        ScoreFn in [0, 1], from ``kitlib.metrics.dice_per_image_class``.
    Raises:
        ValueError: masks not 4-D, a threshold per class of the wrong length; when scoring, a blend of another
            shape than the masks.
    """
    true = to_numpy(masks)
    if true.ndim != 4 or true.shape[0] == 0:
        raise ValueError(f"masks must be a non-empty (N, K, H, W) array, got shape {true.shape}")
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 1:
        if len(thr) != true.shape[1]:
            raise ValueError(f"{len(thr)} thresholds for {true.shape[1]} classes")
        thr = thr.reshape(1, -1, 1, 1)
    elif thr.ndim != 0:
        raise ValueError(f"threshold must be a float or (K,), got shape {thr.shape}")

    def items(blend: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if blend.shape[1:] != true.shape[1:]:
            raise ValueError(f"blend shape {blend.shape[1:]} per image != masks shape {true.shape[1:]} per image")
        return dice_per_image_class(blend > thr, _take(true, rows), empty_score=empty_score)

    return ScoreFn.mean_of(items, "dice", n_rows=len(true))


# ------------------------------------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class _Models:
    """The M validated OOF arrays, their names, and the blend arithmetic."""

    arrays: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    dtype: type  # accumulation dtype: np.float32 or np.float64
    all_uint8: bool  # accumulate on the 0..255 scale

    @property
    def shape(self) -> tuple[int, ...]:
        return self.arrays[0].shape

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    def chunk_rows(self, chunk_size: int | None) -> int:
        if chunk_size is not None:
            if chunk_size < 1:
                raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
            return int(chunk_size)
        per_row = math.prod(self.shape[1:])
        return max(1, _CHUNK_ELEMENTS // max(per_row, 1))

    def chunks(self, rows: np.ndarray, chunk_size: int | None) -> Iterator[np.ndarray]:
        step = self.chunk_rows(chunk_size)
        for start in range(0, len(rows), step):
            yield rows[start : start + step]

    def read(self, rows: np.ndarray, used: np.ndarray) -> list[np.ndarray | None]:
        """The rows of each model with a nonzero weight somewhere (None for the others)."""
        return [_take(a, rows) if u else None for a, u in zip(self.arrays, used, strict=True)]

    def mix(self, raw: Sequence[np.ndarray | None], w: np.ndarray, raw_scale: bool = False) -> np.ndarray:
        """Weighted sum of the chunks; probabilities unless ``raw_scale`` (then 0..255 when every input is uint8)."""
        acc = tmp = None
        for x, wm in zip(raw, w, strict=True):
            if wm == 0:
                continue
            c = self.dtype(wm if self.all_uint8 or x.dtype.kind == "f" else wm / 255.0)
            if acc is None:
                acc = np.multiply(x, c, dtype=self.dtype)
            else:
                if tmp is None:
                    tmp = np.empty_like(acc)
                np.multiply(x, c, out=tmp, dtype=self.dtype)
                acc += tmp
        if acc is None:
            raise ValueError("every weight is zero")
        if self.all_uint8 and not raw_scale:
            acc /= self.dtype(255)
        return acc


def _models(oofs: Sequence[Any] | Mapping[str, Any], names: Sequence[str] | None = None) -> _Models:
    if isinstance(oofs, Mapping):
        if names is not None and list(names) != list(oofs):
            raise ValueError(f"names {list(names)} differ from the keys of oofs {list(oofs)}; pass one of them")
        names, arrays = [str(k) for k in oofs], list(oofs.values())
    else:
        arrays = list(oofs)
    if not arrays:
        raise ValueError("oofs is empty: pass at least one model's OOF array")
    if names is None:
        names = [f"model{i}" for i in range(len(arrays))]
    names = [str(n) for n in names]
    if len(names) != len(arrays):
        raise ValueError(f"{len(names)} names for {len(arrays)} OOF arrays")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model names must be unique; repeated: {listing(dup)}")
    arrays = [to_numpy(a) for a in arrays]
    first = arrays[0]
    for i, (a, name) in enumerate(zip(arrays, names, strict=True)):
        if a.dtype != np.uint8 and a.dtype.kind != "f":
            raise TypeError(f"model {i} ({name!r}) has dtype {a.dtype}: OOFs must be float probs or uint8 probs x 255")
        if a.shape != first.shape:
            raise ValueError(f"model {i} ({name!r}) has shape {a.shape}, model 0 ({names[0]!r}) has {first.shape}")
    if first.ndim == 0 or first.shape[0] == 0:
        raise ValueError(f"OOF arrays must be (N, ...) with N >= 1, got shape {first.shape}")
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32
    return _Models(tuple(arrays), tuple(names), dtype, all(a.dtype == np.uint8 for a in arrays))


def _rows(rows: Any, n: int) -> np.ndarray:
    """(n',) int64 row indices from None (all), indices, or an (N,) bool mask."""
    if rows is None:
        return np.arange(n, dtype=np.int64)
    r = to_numpy(rows)
    if r.dtype == np.bool_:
        if r.shape != (n,):
            raise ValueError(f"a boolean rows mask must have shape ({n},), got {r.shape}")
        r = np.flatnonzero(r)
    elif r.ndim != 1 or (r.dtype.kind not in "iu" and r.size):
        raise ValueError(f"rows must be (n,) integer indices or an ({n},) bool mask, got {r.dtype} {r.shape}")
    r = r.astype(np.int64)
    if r.size == 0:
        raise ValueError("rows selects no row")
    bad = (r < 0) | (r >= n)
    if bad.any():
        raise ValueError(f"row index {int(r[np.argmax(bad)])} is outside the OOF's {n} rows")
    return r


def _weights(weights: Any, models: _Models) -> np.ndarray:
    """(M,) float64 weights, checked and normalised to sum 1; equal weights for None."""
    m = len(models.names)
    if weights is None:
        return np.full(m, 1.0 / m)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,):
        raise ValueError(f"got {w.size} weights (shape {w.shape}) for {m} models ({listing(models.names)})")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"weight of model {i} ({models.names[i]!r}) is {w[i]}; weights must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError("every weight is zero")
    return w / w.sum()


# ------------------------------------------------------------------------------------------------------- evaluation


def _evaluate(
    models: _Models,
    weights: np.ndarray,
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    rows: np.ndarray,
    chunk_size: int | None,
    tick: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """Scores of P blends, (P, M) normalised weights -> (P,) float64, in one pass over the rows.

    A ``ScoreFn`` is fed chunk by chunk, each model's chunk read once for all P blends; any other callable gets the
    whole blend of ``rows``. ``tick(P)`` is called after each chunk.
    """
    if getattr(score_fn, "n_rows", None) not in (None, models.n_rows):
        raise ValueError(
            f"score function {getattr(score_fn, 'name', score_fn)!r} has {score_fn.n_rows} rows (labels or masks), "
            f"the OOF arrays have {models.n_rows}"
        )
    weights = np.atleast_2d(weights)
    used = (weights > 0).any(axis=0)
    if not isinstance(score_fn, ScoreFn):
        raw = models.read(rows, used)
        scores = np.array([float(score_fn(models.mix(raw, w), rows)) for w in weights], dtype=np.float64)
        if tick is not None:
            tick(len(weights))
        return scores
    totals: list[np.ndarray | None] = [None] * len(weights)
    for chunk in models.chunks(rows, chunk_size):
        raw = models.read(chunk, used)
        for p, w in enumerate(weights):
            s = np.array(score_fn.stats(models.mix(raw, w), chunk), dtype=np.float64).reshape(-1)  # a copy
            if totals[p] is None:
                totals[p] = s
            elif s.shape != totals[p].shape:
                raise ValueError(
                    f"score function {score_fn.name!r} returned stats of shapes {totals[p].shape} and "
                    f"{s.shape} for two chunks; they must match"
                )
            else:
                totals[p] += s
        if tick is not None:
            tick(len(weights))
    return np.array([float(score_fn.finalize(t)) for t in totals], dtype=np.float64)


def blend(
    oofs: Sequence[Any] | Mapping[str, Any],
    weights: Any = None,
    rows: Any = None,
    out_dtype: Any = None,
    out: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Weighted mean of M OOF (or test) arrays, a chunk of rows at a time.

    Args:
        oofs: M arrays (N, ...) of one shape, float probs or uint8 probs x 255 (numpy, memmap, torch), as a list or
            a dict ``{name: array}``.
        weights: (M,) non-negative, normalised to sum 1; None for equal weights.
        rows: which rows: None (all), (n,) indices, or an (N,) bool mask.
        out_dtype: np.uint8 for probs x 255 rounded half to even (``np.rint``) and clipped to 0..255; a float dtype
            for probs in [0, 1] (uint8 inputs divided by 255). None: uint8 when every input is uint8, else float32
            (float64 when an input is float64).
        out: where to write, (n, ...) of ``out_dtype`` (e.g. ``np.lib.format.open_memmap``); None allocates.
        chunk_size: rows per chunk; None for about 4 M elements per model.
    Returns:
        (n, ...) the blend (``out`` when given).
    Raises:
        ValueError: no model, shapes that differ (model index, name and both shapes), weights of the wrong length,
            negative or all zero, bad rows, ``out`` of the wrong shape or dtype.
        TypeError: an input that is neither float nor uint8; an integer ``out_dtype`` other than uint8.
    """
    models = _models(oofs)
    w = _weights(weights, models)
    r = _rows(rows, models.n_rows)
    if out_dtype is None:
        out_dtype = np.uint8 if models.all_uint8 else models.dtype
    out_dtype = np.dtype(out_dtype)
    if out_dtype != np.uint8 and out_dtype.kind != "f":
        raise TypeError(f"out_dtype must be uint8 or a float dtype, got {out_dtype}")
    shape = (len(r), *models.shape[1:])
    if out is None:
        out = np.empty(shape, dtype=out_dtype)
    elif out.shape != shape or out.dtype != out_dtype:
        raise ValueError(f"out is {out.dtype} {out.shape}, expected {out_dtype} {shape}")
    used = w > 0
    start = 0
    for chunk in models.chunks(r, chunk_size):
        raw = models.read(chunk, used)
        sl = slice(start, start + len(chunk))
        if out_dtype == np.uint8:
            acc = models.mix(raw, w, raw_scale=True)
            if not models.all_uint8:
                acc *= models.dtype(255)
            out[sl] = np.clip(np.rint(acc), 0, 255)
        else:
            out[sl] = models.mix(raw, w)
        start += len(chunk)
    return out


def blend_score(
    oofs: Sequence[Any] | Mapping[str, Any],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    weights: Any = None,
    rows: Any = None,
    chunk_size: int | None = None,
) -> float:
    """Score of one blend: ``score_fn`` on the (weighted) mean of the OOFs.

    Args:
        oofs, weights, rows, chunk_size: as ``blend``.
        score_fn: a ``ScoreFn`` (chunked) or ``fn(blend, rows) -> float`` (whole blend of float probs at once).
    Returns:
        The score, higher is better.
    Raises:
        As ``blend``; ValueError when ``score_fn`` knows another number of rows than the OOFs have.
    """
    models = _models(oofs)
    return float(_evaluate(models, _weights(weights, models), score_fn, _rows(rows, models.n_rows), chunk_size)[0])


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
