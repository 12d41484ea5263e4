"""The truth at the competition's scoring resolution: what a fold's OOF, the experiment's CV and the post-processing
search are scored against.

- ``scoring_size``: (H, W) at which the competition scores masks.
- ``TargetMasks``: a table's true masks at that size as a lazy, row-sliceable array: rows are decoded (RLE, mask
  files) and resized (nearest neighbour, as the competitions downscale their labels) only when read, so a fold's
  scores stream image by image and ``kitlib.scoring.score_oof`` reads it like a memmap.
- ``write_oof_masks``: the same rows streamed into ``artifacts/<exp>/oof_masks.npy`` for the searches, which read
  the truth many times.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from kitlib.formats import load_masks, masks_to_label_map
from kitlib.io import atomic_path
from kitlib.presets import Preset

__all__ = ["TargetMasks", "scoring_size", "write_oof_masks"]


def scoring_size(preset: Preset, df: pd.DataFrame) -> tuple[int, int]:
    """(H, W) at which the competition scores masks: ``preset.submission_size``, else the images' own size.

    Raises:
        ValueError: no submission size and images of several sizes (the message names two of them).
    """
    if preset.submission_size is not None:
        return tuple(preset.submission_size)
    sizes = df[["height", "width"]].drop_duplicates()
    if len(sizes) != 1:
        first = df.groupby(["height", "width"])["image_id"].first().head(2)
        raise ValueError(
            f"preset {preset.name!r} has no submission_size and the images have {len(sizes)} sizes "
            f"(e.g. {dict(first)}); set one with preset.replace(submission_size=(H, W))"
        )
    return int(sizes.iloc[0, 0]), int(sizes.iloc[0, 1])


class TargetMasks:
    """The true masks of a table's rows at ``size``, decoded when read.

    Args:
        df: rows of a train table (``kitlib.formats.load_competition``, targets included), in the order wanted.
        preset: a segmentation preset (binary, multilabel, multiclass).
        size: (H, W), e.g. ``scoring_size``.
    Shape:
        ``(N, K, H, W)`` uint8 {0, 1} for binary/multilabel; ``(N, H, W)`` uint8 class indices (0 = background) for
        multiclass. ``masks[i]`` is one image, ``masks[a:b]`` (or an index array) a stacked chunk; iterating yields
        one image at a time.
    Raises:
        ValueError: a preset without masks (when built); as ``kitlib.formats.load_masks`` when read (the image is
            named).
    """

    def __init__(self, df: pd.DataFrame, preset: Preset, size: tuple[int, int]):
        if not preset.is_segmentation:
            raise ValueError(f"preset {preset.name!r} ({preset.task}): its targets are labels, not masks")
        self.df = df.reset_index(drop=True)
        self.preset = preset
        self.size = (int(size[0]), int(size[1]))
        k = () if preset.task == "multiclass" else (len(preset.target_classes),)
        self.shape = (len(self.df), *k, *self.size)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _row(self, i: int) -> np.ndarray:
        height, width = self.size
        masks = load_masks(self.df.iloc[i], self.preset)  # (H, W, K) uint8
        if masks.shape[:2] != (height, width):
            masks = cv2.resize(masks, (width, height), interpolation=cv2.INTER_NEAREST).reshape(height, width, -1)
        if self.preset.task == "multiclass":
            return masks_to_label_map(masks)
        return np.ascontiguousarray(masks.transpose(2, 0, 1))

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._row(int(index) % len(self))
        rows = np.arange(len(self))[index]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for j, i in enumerate(rows):
            out[j] = self._row(int(i))
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self._row(i)


def write_oof_masks(df: pd.DataFrame, preset: Preset, size: tuple[int, int], path: str | os.PathLike) -> np.ndarray:
    """Stream the true masks of ``df`` at the scoring ``size`` into ``path`` (a .npy), one image at a time.

    Args:
        df: the rows (targets included), in OOF order.
        preset: a segmentation preset.
        size: (H, W), the OOF's resolution (``scoring_size``).
        path: e.g. ``artifacts/<exp>/oof_masks.npy``; written atomically.
    Returns:
        The file as a read-only memmap, shaped as ``TargetMasks``.
    Raises:
        ValueError: a preset without masks; as ``kitlib.formats.load_masks`` (the image is named).
    """
    masks = TargetMasks(df, preset, size)
    path = Path(path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=masks.shape)
        for i, row in enumerate(masks):
            out[i] = row
        out.flush()
        del out
    return np.load(path, mmap_mode="r")
