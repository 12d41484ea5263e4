"""Blending the out-of-fold (OOF) predictions of several experiments, and scoring a blend.

Inputs are M OOF arrays of one shape (N, ...), rows in ``folds.csv`` order: classification probs (N, C) float
(Cassava), or segmentation probs (N, C, H, W) float or uint8 (probability x 255, rounded), possibly ``np.memmap``
files of several GB. A list, or a dict ``{name: array}`` whose keys name the models.

- ``blend``: the weighted mean of the M arrays, a chunk of rows at a time (into ``out=``, e.g. a memmap, if asked).
- ``blend_score``: the score of one blend.

Choosing the weights (optimisers, cross-validated weights, subset search, hill climbing) is
``kitlib.ensemble_search``, built on the blending and scoring here.

Scores, higher is better, come from a score function. ``ScoreFn`` is the chunked kind: for each chunk of rows it
returns additive statistics (e.g. ``[sum of per-image Dice, pairs]``) that are summed over the chunks and turned into
the score at the end, so a blend of memmaps is never held whole. Each chunk of every model is read once per pass,
and all the weight vectors of a pass are scored from it. ``accuracy_score_fn``, ``neg_log_loss_fn`` and
``dice_score_fn`` are ready made. Any plain callable ``fn(blend, rows) -> float`` works too: it gets the whole
blend at once (small arrays only).

Blend arithmetic: uint8 inputs are probabilities x 255. The blend is accumulated in float32 (float64 when an input is
float64), one model at a time, model weights normalised to sum 1; when every input is uint8 it is accumulated on the
0..255 scale and divided by 255 at the end. Score functions always see probabilities. The arithmetic is elementwise,
so a blend does not depend on the chunk size nor on whether the inputs are memmaps (a score's float sums over chunks
can differ in the last bits between chunk sizes). A pass holds, per chunk, the M models' rows as stored plus one
float blend and one temporary: never M float copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kitlib._private import chunk_rows, listing, to_numpy
from kitlib.metrics import ConfusionMatrix, dice_per_image_class
from kitlib.presets import Preset

__all__ = [
    "blend_score_fn",
    "miou_score_fn",
    "sample_rows",
    "ScoreFn",
    "accuracy_score_fn",
    "neg_log_loss_fn",
    "dice_score_fn",
    "blend",
    "blend_score",
]

# Bytes per element that size a chunk (kitlib._private.chunk_rows): a float32 blend, so a chunk is 4 M elements of each
# model (4 MB of uint8), about 5 Clouds images of 4 x 350 x 525; a (21367, 5) Cassava OOF is a single chunk.
_BLEND_ITEMSIZE = 4


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
        return chunk_rows(self.shape, _BLEND_ITEMSIZE, chunk_size)

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
        cm = ConfusionMatrix(num_classes)
        cm.hist = total.reshape(num_classes, num_classes).round().astype(np.int64)
        return cm.miou() if cm.total else float("nan")

    return ScoreFn(stats=stats, finalize=finalize, name="miou", n_rows=len(labels))


def blend_score_fn(preset: Preset, targets: Any) -> ScoreFn:
    """The preset's metric as a ``ScoreFn``: Dice at 0.5 (``dice_score_fn``), mIoU of the argmax (``miou_score_fn``),
    accuracy (``accuracy_score_fn``)."""
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
