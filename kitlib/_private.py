"""Internal helpers shared by kitlib modules (not part of the public API)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["listing", "progress", "to_numpy"]


def listing(items: Iterable[object], n: int = 5) -> str:
    """'a, b, c, d, e (+7 more)': the first ``n`` items and how many more, for error messages that name ids."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


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
