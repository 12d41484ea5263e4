"""Internal helpers shared by kitlib modules (not part of the public API)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["CHUNK_BYTES", "PhaseTimer", "chunk_rows", "listing", "lookup", "progress", "row_slices", "to_numpy"]

#: Bytes worked on per chunk of rows when a large array (a memmap of several GB: the Clouds OOF is 5546 x 4 x 350 x
#: 525) is streamed: 16 MB, about 21 Clouds images of uint8 probs, or 4 M elements of a float32 blend.
CHUNK_BYTES = 16 << 20


def listing(items: Iterable[object], n: int = 5) -> str:
    """'a, b, c, d, e (+7 more)': the first ``n`` items and how many more, for error messages that name ids."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
    """``table[name]`` of a registry (presets, metrics, ...).

    Raises:
        KeyError: an unknown name; the message names it and lists the valid ones ("unknown preset 'cloud'; options:
            [...]").
    """
    if name not in table:
        raise KeyError(f"unknown {what} {name!r}; options: {sorted(table)}")
    return table[name]


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any):
    """A tqdm bar that stays readable where stderr is not a terminal (papermill output, CI logs): there it
    redraws at most every 30 s instead of ten times a second. Keyword arguments go to ``tqdm.tqdm``."""
    from tqdm import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, **kwargs)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``: torch tensors via ``.detach().cpu().numpy()``, ndarrays (memmaps too) as they are."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def chunk_rows(shape: tuple[int, ...], itemsize: int, chunk_size: int | None = None) -> int:
    """Rows (first-axis items) per chunk of an array of ``shape``: ``chunk_size``, or as many rows as fit in
    ``CHUNK_BYTES`` at ``itemsize`` bytes per element of the working array (at least one).

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    per_row = int(np.prod(shape[1:], dtype=np.int64)) * int(itemsize) if len(shape) > 1 else int(itemsize)
    return max(1, CHUNK_BYTES // max(per_row, 1))


def row_slices(n: int, rows: int) -> Iterator[slice]:
    """``slice(0, rows), slice(rows, 2 rows), ...`` covering ``range(n)``."""
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


class PhaseTimer:
    """Wall-clock seconds per named phase of a run (``time.perf_counter``), exclusive: a phase entered inside another
    is subtracted from it, so the phases add up to the time spent inside any of them (a fold's ``timings.json``,
    ``kitlib.train``). Own code rather than a profiler: a few ``perf_counter`` calls per batch cost nothing and the
    result is a plain dict a user can read.

    ``with timer.phase("validation"): ...`` times a block; ``timer.iterate(loader, "train_data")`` times only the
    waits for each next item (batches loaded or predicted by a generator) and yields the items.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [start, seconds of the phases inside] of each open phase

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall seconds, less those of the phases opened inside it, to ``seconds[name]``."""
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, inner = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
            if self._stack:
                self._stack[-1][1] += elapsed

    def iterate(self, iterable: Iterable[Any], name: str) -> Iterator[Any]:
        """The items of ``iterable``, the time of each ``next()`` added to ``seconds[name]``."""
        items = iter(iterable)
        while True:
            with self.phase(name):
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item

    def as_dict(self, other: bool = False) -> dict[str, float]:
        """``{phase: seconds}`` rounded to milliseconds, in the order the phases were first entered; with ``other``,
        also ``"other"``: the seconds since the timer was made that no phase holds."""
        out = {name: round(value, 3) for name, value in self.seconds.items()}
        if other:
            out["other"] = round(max(time.perf_counter() - self.started - sum(self.seconds.values()), 0.0), 3)
        return out
