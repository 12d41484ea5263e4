"""Figures for reviewing the data by eye: near-duplicate pairs side by side (``notebooks/00_eda.py``).

Built without pyplot, as ``kitlib.plots`` (which draws the OOF's worst images with ``plot_predictions(rows=...)``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kitlib.images import read_image

__all__ = ["plot_duplicate_pairs"]


def plot_duplicate_pairs(df: pd.DataFrame, pairs: pd.DataFrame, n: int = 6, max_side: int = 320) -> Figure:
    """The first ``n`` near-duplicate pairs (closest first), one row per pair: the two images side by side, titled
    with their ids, sizes and the Hamming distance of their hashes.

    Args:
        df: the train table (``image_id``, ``image_path``).
        pairs: ``kitlib.near_duplicates.Duplicates.pairs`` (``image_a``, ``image_b``, ``distance``).
        n: pairs drawn (at least one panel row: an empty ``pairs`` gives a figure that says so).
        max_side: longer side of each drawn image, pixels.
    Returns:
        Figure.
    Raises:
        KeyError: a pair's id not in ``df`` (named).
    """
    import cv2

    path = dict(zip(df["image_id"].astype(str), df["image_path"], strict=True))
    shown = pairs.head(max(int(n), 0))
    fig = Figure(figsize=(8, 3.4 * max(len(shown), 1)), layout="constrained")
    if shown.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no near-duplicate pairs", ha="center", va="center")
        ax.axis("off")
        return fig
    axes = np.asarray(fig.subplots(len(shown), 2, squeeze=False))
    for r, (a, b, distance) in enumerate(shown[["image_a", "image_b", "distance"]].itertuples(index=False)):
        for c, image_id in enumerate((str(a), str(b))):
            if image_id not in path:
                raise KeyError(f"pair {a} / {b}: image_id {image_id!r} not in the table")
            image = read_image(path[image_id])
            scale = min(1.0, max_side / max(image.shape[:2]))
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            axes[r, c].imshow(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            axes[r, c].set_title(f"{image_id} ({image.shape[1]}x{image.shape[0]}), distance {distance}", fontsize=8)
            axes[r, c].axis("off")
    return fig
