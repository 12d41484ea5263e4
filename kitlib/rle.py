"""Run-length encoding of binary masks, as Kaggle and Dacon submissions write it.

A run-length string is ``"start length start length ..."`` with 1-based starts over the flattened mask:
column-major (``order="F"``: Understanding Clouds, Severstal) or row-major (``order="C"``: Dacon, Carvana).

This is the core of the kit, so it is written here rather than taken from a library: the canonical
Kaggle-kernel ``mask2rle``/``rle2mask`` loop over runs in Python and never validate their input (a
truncated string silently decodes into a partial mask). These functions are vectorised and strict:
every malformed string raises ``ValueError`` saying what is wrong. ``benchmarks/bench_rle.py`` compares
their speed with the canonical pair on real masks.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["EMPTY_TOKENS", "rle_encode", "rle_decode", "rle_parse", "rle_area", "is_empty_rle"]

#: Strings that mean "empty mask" when decoding: Kaggle writes "" (read back as NaN), Dacon writes "-1".
EMPTY_TOKENS: tuple[str, ...] = ("", "-1")


def is_empty_rle(rle: object, empty_tokens: Sequence[str] = EMPTY_TOKENS) -> bool:
    """True for None, NaN, pandas NA and strings that are blank or one of ``empty_tokens``.

    Raises:
        TypeError: ``rle`` is neither a string nor a missing value.
    """
    if rle is None:
        return True
    if isinstance(rle, str):
        s = rle.strip()
        return s == "" or s in empty_tokens
    if isinstance(rle, float) and math.isnan(rle):
        return True
    if type(rle).__name__ in ("NAType", "NaTType"):  # pandas missing values, without importing pandas
        return True
    raise TypeError(f"RLE must be a string or a missing value, got {type(rle).__name__}: {rle!r}")


@functools.cache
def _fromstring_raises() -> bool:
    """Whether this numpy raises on unparsable text in ``np.fromstring`` (newer) or only warns (older)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            np.fromstring("1 x", dtype=np.int64, sep=" ")
        except ValueError:
            return True
    return False


def _tokens(rle: str) -> np.ndarray:
    """Parse whitespace-separated integers; ValueError naming the first bad token."""
    try:
        if _fromstring_raises():
            return np.fromstring(rle, dtype=np.int64, sep=" ")
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            return np.fromstring(rle, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning, OverflowError):
        pass
    # Slow path, only to say which token is wrong.
    for i, tok in enumerate(rle.split()):
        try:
            int(tok)
        except ValueError:
            raise ValueError(f"RLE token {i} is not an integer: {tok[:20]!r}") from None
    raise ValueError(f"RLE could not be parsed as integers: {rle[:40]!r}...")


def rle_parse(rle: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate a run-length string without building the mask.

    Args:
        rle: non-empty run-length string (check ``is_empty_rle`` first).
        shape: (H, W) of the mask the string encodes.
    Returns:
        ``starts`` (0-based) and ``lengths``, both (R,) int64, R >= 0 runs, sorted and non-overlapping.
    Raises:
        ValueError: an odd number of tokens (a truncated string), a non-integer token, a start < 1, a length
            < 1, a run past the end of the image, runs out of order or overlapping.
    """
    n = _n_pixels(shape)
    t = _tokens(rle)
    if t.size % 2:
        raise ValueError(
            f"RLE has an odd number of tokens ({t.size}, {len(rle)} characters): truncated or malformed string"
        )
    starts, lengths = t[0::2] - 1, t[1::2]
    _check(starts < 0, "start < 1", starts + 1, lengths)
    _check(lengths < 1, "length < 1", starts + 1, lengths)
    ends = starts + lengths
    if ends.size and ends.max() > n:
        bad = np.flatnonzero(ends > n)
        i = int(bad[0])
        raise ValueError(
            f"RLE run {i} (start {starts[i] + 1}, length {lengths[i]}) ends past the image of {n} pixels "
            f"(shape {shape[0]}x{shape[1]}); {bad.size} such run(s)"
        )
    if starts.size > 1:
        bad = np.flatnonzero(starts[1:] < ends[:-1])
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"RLE runs out of order or overlapping: run {i} starts at {starts[i] + 1}, before the end of run "
                f"{i - 1} (start {starts[i - 1] + 1}, length {lengths[i - 1]}); {bad.size} such run(s)"
            )
    return starts, lengths


def _check(bad_mask: np.ndarray, what: str, starts: np.ndarray, lengths: np.ndarray) -> None:
    if bad_mask.any():
        bad = np.flatnonzero(bad_mask)
        i = int(bad[0])
        raise ValueError(f"RLE run {i} has {what} (start {starts[i]}, length {lengths[i]}); {bad.size} such run(s)")


def _n_pixels(shape: tuple[int, int]) -> int:
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {tuple(shape)}")
    return int(shape[0]) * int(shape[1])


def rle_decode(
    rle: str | float | None,
    shape: tuple[int, int],
    order: str = "F",
    empty_tokens: Sequence[str] = EMPTY_TOKENS,
) -> np.ndarray:
    """Decode a run-length string into a binary mask.

    Vectorised: the runs and the gaps between them become the counts of one ``np.repeat`` over [0, 1, 0, ...].

    Args:
        rle: "start length ..." with 1-based starts; "", None, NaN or a token in ``empty_tokens`` (Dacon's
            "-1") for an empty mask.
        shape: (H, W) of the mask, in pixels.
        order: "F" column-major (Understanding Clouds, Severstal), "C" row-major (Dacon, Carvana).
        empty_tokens: strings that mean an empty mask.
    Returns:
        (H, W) uint8 in {0, 1}. With ``order="F"`` the array is Fortran-contiguous (a transposed view, like the
        canonical ``rle2mask``); ``np.ascontiguousarray`` it where C order matters.
    Raises:
        ValueError: malformed string (see ``rle_parse``), bad shape or order.
        TypeError: ``rle`` is neither a string nor a missing value.
    """
    _check_order(order)
    h, w = shape
    n = _n_pixels(shape)
    if is_empty_rle(rle, empty_tokens):
        return np.zeros((h, w), dtype=np.uint8, order=order)
    starts, lengths = rle_parse(rle, shape)
    r = starts.size
    counts = np.empty(2 * r + 1, dtype=np.int64)
    counts[1::2] = lengths
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - (starts[:-1] + lengths[:-1])
    counts[-1] = n - (starts[-1] + lengths[-1])
    values = np.zeros(2 * r + 1, dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T if order == "F" else flat.reshape(h, w)


def rle_area(rle: str | float | None, shape: tuple[int, int], empty_tokens: Sequence[str] = EMPTY_TOKENS) -> int:
    """Number of foreground pixels of a run-length string, validated but not decoded.

    Raises:
        ValueError: malformed string (see ``rle_parse``).
    """
    if is_empty_rle(rle, empty_tokens):
        return 0
    return int(rle_parse(rle, shape)[1].sum())


def _check_order(order: str) -> None:
    if order not in ("F", "C"):
        raise ValueError(f"order must be 'F' (column-major) or 'C' (row-major), got {order!r}")


def _run_boundaries(b: np.ndarray) -> np.ndarray:
    """0-based flat positions (C order of ``b``) where a run of True starts or ends (exclusive), sorted."""
    n = b.size
    if b.flags.c_contiguous:
        flat = b.reshape(-1)
        idx = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        first, last = flat[0], flat[-1]
    else:
        # b is a transposed view of a C-contiguous array: find the transitions on the contiguous memory
        # (down its columns) and sort the few positions, instead of copying the whole mask to transpose it.
        rows, cols = b.shape
        bt = np.ascontiguousarray(b.T)  # (cols, rows); a view, no copy, for a transposed C array
        c, r = np.divmod(np.flatnonzero(bt[1:] != bt[:-1]), rows)  # flatnonzero: much faster than 2-D nonzero
        inner = r * cols + c + 1
        row_starts = (np.flatnonzero(bt[0, 1:] != bt[-1, :-1]) + 1) * cols
        idx = np.sort(np.concatenate((inner, row_starts)))
        first, last = bt[0, 0], bt[-1, -1]
    if first:
        idx = np.concatenate(([0], idx))
    if last:
        idx = np.concatenate((idx, [n]))
    return idx


def rle_encode(mask: np.ndarray, order: str = "F", empty: str = "") -> str:
    """Encode a binary mask as a run-length string.

    Args:
        mask: (H, W) bool or integer array, nonzero = foreground; any memory layout.
        order: "F" column-major (Understanding Clouds, Severstal), "C" row-major (Dacon, Carvana).
        empty: what an empty mask encodes to: "" on Kaggle, "-1" on Dacon.
    Returns:
        "start length ..." with 1-based starts, runs in increasing order; ``empty`` for an empty mask.
    Raises:
        ValueError: mask is not 2-D or has no pixels; bad order.
    """
    _check_order(order)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {mask.shape}")
    b = mask if mask.dtype == np.bool_ else mask != 0
    if order == "F":
        b = b.T  # the C order of the transpose is the F order of the mask
    if not (b.flags.c_contiguous or b.T.flags.c_contiguous):
        b = np.ascontiguousarray(b)
    idx = _run_boundaries(b)
    if idx.size == 0:
        return empty
    idx[1::2] -= idx[0::2]
    idx[0::2] += 1
    return " ".join(map(str, idx.tolist()))
