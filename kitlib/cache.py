"""An on-disk cache of table images (and their masks) resized to the training resolution, as memory maps.

Decoding a 1400x2100 JPEG and four RLE strings costs more than a training step at 320x480, so ``build_cache``
does it once: images (``cv2.INTER_AREA``) and masks (``cv2.INTER_NEAREST``) resized to the training resolution
go into ``.npy`` memory maps, and the datasets (``kitlib.data``) read rows from them (pudae pre-resized the images
to 700 rows for the same reason, ``tools/resize_images.py``). ``benchmarks/bench_cache.py`` measures the gain.

Reading one table row (image, target masks, with the image_id in any error) lives here too: the cache build and the
datasets share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from kitlib import formats, images
from kitlib._private import progress
from kitlib.io import read_json, remove_stale_temp, replace_dir, temp_dir, write_csv, write_json
from kitlib.presets import Preset

__all__ = [
    "ImageCache",
    "build_cache",
    "table_fingerprint",
]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_CACHE_KIND = "kitlib.ImageCache"
_BASE_COLUMNS = ("image_id", "image_path", "height", "width")


# --------------------------------------------------------------------------------------------------------------
# Loading one row
# --------------------------------------------------------------------------------------------------------------


def _target_columns(df: pd.DataFrame, preset: Preset) -> list[str]:
    """The preset's target columns (``formats.target_columns``) that ``df`` has: all of them, or [] (test table).

    Raises:
        ValueError: some but not all of them are present.
    """
    expected = formats.target_columns(preset)
    present = [c for c in expected if c in df.columns]
    if present and len(present) != len(expected):
        missing = [c for c in expected if c not in df.columns]
        raise ValueError(f"table has some target columns of preset {preset.name!r} but lacks {missing}")
    return present


def _check_table(df: pd.DataFrame) -> None:
    missing = [c for c in _BASE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; expected those of kitlib.formats.load_competition")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"table has {len(dup)} duplicated image_id(s), e.g. {dup.iloc[0]!r}")


def _with_context(e: Exception, message: str) -> Exception:
    """The same kind of error (FileNotFoundError, OSError or ValueError) with ``message`` in front."""
    cls = FileNotFoundError if isinstance(e, FileNotFoundError) else OSError if isinstance(e, OSError) else ValueError
    return cls(f"{message}: {e}")


def _read_image(image_id: str, path: str) -> np.ndarray:
    """``images.read_image`` with the image_id added to any error."""
    try:
        return images.read_image(path)
    except (OSError, ValueError) as e:
        raise _with_context(e, f"image {image_id!r} ({path})") from e


def _read_target_masks(row: pd.Series, preset: Preset) -> np.ndarray:
    """(H, W, K) uint8 {0,1} for binary/multilabel, (H, W) uint8 class indices for multiclass; a train-only row's
    target file (``formats.TARGET_FILE_COLUMN``) may also hold ``IGNORE_INDEX`` (``_read_target_file``)."""
    target_file = row.get(formats.TARGET_FILE_COLUMN)
    if isinstance(target_file, str) and target_file:
        return _read_target_file(row, preset, target_file)
    try:
        masks = formats.load_masks(row, preset)
    except (OSError, ValueError) as e:
        raise _with_context(e, f"masks of image {row['image_id']!r} ({row['image_path']})") from e
    return formats.masks_to_label_map(masks) if preset.task == "multiclass" else masks


def _read_target_file(row: pd.Series, preset: Preset, path: str) -> np.ndarray:
    """A train-only row's masks from its ``.npz`` (key "mask", written by ``kitlib.train_rows``): the cache's format,
    values {0, 1} or class indices and ``kitlib.presets.IGNORE_INDEX``, at the image's size or lower (pseudo masks are
    at the scoring size); resized to the row's (height, width) with nearest neighbours, which keeps every value.

    Raises:
        FileNotFoundError: no such file; ValueError: no "mask" array, or one of another shape (names the image).
    """
    h, w = int(row["height"]), int(row["width"])
    try:
        with np.load(path) as archive:
            mask = np.asarray(archive["mask"], dtype=np.uint8)
    except (OSError, KeyError, ValueError) as e:
        raise _with_context(e, f"target file of image {row['image_id']!r} ({path})") from e
    k = () if preset.task == "multiclass" else (len(preset.target_classes),)
    if mask.ndim != 2 + len(k) or mask.shape[2:] != k:
        raise ValueError(f"target file of image {row['image_id']!r} ({path}): mask {mask.shape}, expected (H, W"
                         f"{', ' + str(k[0]) if k else ''}) for preset {preset.name!r}")  # fmt: skip
    return _resize(mask, h, w, cv2.INTER_NEAREST)


def _check_same_size(row: pd.Series, image: np.ndarray, masks: np.ndarray) -> None:
    if image.shape[:2] != masks.shape[:2]:
        raise ValueError(
            f"image {row['image_id']!r} ({row['image_path']}) is {image.shape[1]}x{image.shape[0]} (WxH) but its "
            f"masks are {masks.shape[1]}x{masks.shape[0]} (table height/width {row['height']}x{row['width']})"
        )


def _resize(array: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """cv2.resize to (height, width), keeping a trailing channel axis of size 1 (cv2 drops it)."""
    if array.shape[:2] == (height, width):
        return array
    out = cv2.resize(array, (width, height), interpolation=interpolation)
    return out.reshape(height, width, *array.shape[2:])


# --------------------------------------------------------------------------------------------------------------
# On-disk cache
# --------------------------------------------------------------------------------------------------------------


def table_fingerprint(df: pd.DataFrame, preset: Preset) -> str:
    """SHA-256 of what a cache of ``df`` depends on, independent of row order.

    Hashes the preset's task, target classes and RLE order, then per row (sorted by image_id): image_id,
    image_path, height, width, the image file's size and mtime (ns), the target columns (RLE strings, labels or
    mask paths) and, for ``mask_path``, the mask file's size and mtime. Cost: one ``os.stat`` per file.

    Raises:
        FileNotFoundError: an image or mask file is missing (the message names the image_id and path).
        ValueError: the table lacks the base columns or has duplicated ids.
    """
    _check_table(df)
    targets = _target_columns(df, preset)
    table = df[[*_BASE_COLUMNS, *targets]]
    table = table.astype(object).where(table.notna(), "").astype(str).sort_values("image_id", kind="stable")
    train_only = [formats.TARGET_FILE_COLUMN] if formats.TARGET_FILE_COLUMN in df.columns else []
    table = table.join(df.loc[table.index, train_only].astype(object).fillna("").astype(str))
    stat_columns = ["image_path"] + (["mask_path"] if "mask_path" in targets else []) + train_only
    for column in stat_columns:  # a train-only row has no mask_path, a competition row no target file
        stats = [_stat(image_id, path) if path or column == "image_path" else ""
                 for image_id, path in zip(table["image_id"], table[column], strict=True)]  # fmt: skip
        table[f"{column}_stat"] = stats
    header = {
        "version": _CACHE_VERSION,
        "task": preset.task,
        "target_classes": list(preset.target_classes),
        "rle_order": preset.rle_order,
        "targets": targets,
    }
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(table.to_csv(index=False).encode())
    return h.hexdigest()


def _stat(image_id: str, path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {image_id!r}: no such file {path}") from None
    return f"{st.st_size}:{st.st_mtime_ns}"


class ImageCache:
    """A built cache folder: memory-mapped images (and masks) resized to one resolution, keyed by image_id.

    Folder layout (written by ``build_cache``):

    - ``images.npy``: (N, H, W, 3) uint8 RGB, resized with ``cv2.INTER_AREA``.
    - ``masks.npy`` (segmentation tables with targets only): (N, H, W, K) uint8 {0,1} for binary/multilabel,
      (N, H, W) uint8 class indices for multiclass (K times smaller than one-hot), resized with
      ``cv2.INTER_NEAREST``.
    - ``index.csv``: image_id, image_path, height, width (the original size), in row order.
    - ``meta.json``: kind, version, preset, task, target_classes, height, width, n_images, fingerprint
      (``table_fingerprint``), shapes.

    The arrays are opened lazily and not pickled (a DataLoader worker under "spawn" reopens the files).
    """

    def __init__(self, cache_dir: str | os.PathLike, meta: dict[str, Any], index: pd.DataFrame):
        self.cache_dir = Path(cache_dir)
        self.meta = meta
        self.index = index
        self.image_ids: list[str] = index["image_id"].tolist()
        self._rows = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    @classmethod
    def open(
        cls, cache_dir: str | os.PathLike, df: pd.DataFrame | None = None, preset: Preset | None = None
    ) -> ImageCache:
        """Open a built cache.

        Args:
            cache_dir: folder written by ``build_cache``.
            df: when given, the full table the cache should hold; its ``table_fingerprint`` must equal the stored
                one (a fold subset does not: the datasets check their rows by id instead).
            preset: the table's preset, for the fingerprint (needed with ``df``).
        Raises:
            FileNotFoundError: not a built cache (the message names the missing file).
            ValueError: written by another cache version, or ``df`` differs from the table it was built from
                (stale: call ``build_cache``, which rebuilds it).
        """
        cache_dir = Path(cache_dir)
        meta_path = cache_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{cache_dir} is not a built image cache: {meta_path} is missing")
        meta = read_json(meta_path)
        if meta.get("kind") != _CACHE_KIND or meta.get("version") != _CACHE_VERSION:
            raise ValueError(
                f"{cache_dir}: cache kind/version {meta.get('kind')}/{meta.get('version')}, expected "
                f"{_CACHE_KIND}/{_CACHE_VERSION}; rebuild it with build_cache"
            )
        index = pd.read_csv(cache_dir / "index.csv", dtype={"image_id": str, "image_path": str}, keep_default_na=False)
        cache = cls(cache_dir, meta, index)
        if df is not None:
            if preset is None:
                raise ValueError("ImageCache.open: checking a table (df) needs its preset")
            fingerprint = table_fingerprint(df, preset)
            if fingerprint != meta["fingerprint"]:
                raise ValueError(
                    f"{cache_dir} is stale: the table differs from the one it was built from (fingerprint "
                    f"{fingerprint[:12]} != {meta['fingerprint'][:12]}); build_cache rebuilds it"
                )
        return cache

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return (
            f"ImageCache({str(self.cache_dir)!r}, n_images={len(self)}, size={self.height}x{self.width}, "
            f"masks={self.has_masks})"
        )

    @property
    def height(self) -> int:
        return int(self.meta["height"])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    @property
    def has_masks(self) -> bool:
        return self.meta.get("mask_shape") is not None

    @property
    def images(self) -> np.ndarray:
        """(N, H, W, 3) uint8 read-only memory map."""
        if self._images is None:
            self._images = np.load(self.cache_dir / "images.npy", mmap_mode="r")
        return self._images

    @property
    def masks(self) -> np.ndarray | None:
        """(N, H, W, K) or (N, H, W) uint8 read-only memory map; None when the cache holds no masks."""
        if self._masks is None and self.has_masks:
            self._masks = np.load(self.cache_dir / "masks.npy", mmap_mode="r")
        return self._masks

    def row(self, image_id: str) -> int:
        """Row of ``image_id`` in the arrays. Raises KeyError naming the id and the cache."""
        try:
            return self._rows[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the cache {self.cache_dir}") from None

    def rows_for(self, df: pd.DataFrame) -> np.ndarray:
        """(len(df),) int64 cache rows of the table's image_ids.

        Raises:
            KeyError: ids not in the cache (the message gives their number and the first ones).
            ValueError: an id whose image_path differs from the cached one (the cache was built from other files).
        """
        ids = df["image_id"].astype(str).tolist()
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} image(s) not in the cache {self.cache_dir}, e.g. {missing[:3]}")
        rows = np.array([self._rows[i] for i in ids], dtype=np.int64)
        cached_paths = self.index["image_path"].to_numpy()[rows]
        differ = np.flatnonzero(cached_paths != df["image_path"].astype(str).to_numpy())
        if differ.size:
            j = int(differ[0])
            raise ValueError(
                f"image {ids[j]!r}: table path {df['image_path'].iloc[j]} != cached path {cached_paths[j]} "
                f"({differ.size} such row(s)); rebuild the cache with build_cache"
            )
        return rows

    def check_compatible(self, preset: Preset, needs_masks: bool) -> None:
        """Raise ValueError when the cache was built for another task/classes, or lacks masks that are needed."""
        if self.meta["task"] != preset.task or list(self.meta["target_classes"]) != list(preset.target_classes):
            raise ValueError(
                f"cache {self.cache_dir} holds {self.meta['task']} {self.meta['target_classes']}, not preset "
                f"{preset.name!r} ({preset.task} {list(preset.target_classes)})"
            )
        if needs_masks and not self.has_masks:
            raise ValueError(f"cache {self.cache_dir} holds no masks (built from a table without targets)")

    def __getstate__(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "meta": self.meta, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cache_dir"], state["meta"], state["index"])


def build_cache(
    df: pd.DataFrame,
    preset: Preset,
    cache_dir: str | os.PathLike,
    height: int,
    width: int,
    num_workers: int | None = None,
    rebuild: bool = False,
) -> ImageCache:
    """Decode every image (and its masks) once, resized to (height, width), into a memory-mapped cache folder.

    Idempotent: a cache in ``cache_dir`` built from the same table (``table_fingerprint``) at the same size is
    opened and returned without work; a stale one (other rows, files, targets or size) is rebuilt with a logged
    warning. The build writes into a hidden folder beside ``cache_dir`` and renames it into place at the end, so an
    interrupted build leaves no half cache (a failed rebuild leaves the old cache as it was); leftover build folders
    of dead processes are removed at the next build. Decoding runs in a thread pool (cv2 releases the GIL), with a
    tqdm progress bar.

    Args:
        df: table of ``kitlib.formats.load_competition`` (usually the full train or test table).
        preset: the table's preset or its name.
        cache_dir: folder of the cache, e.g. ``artifacts/cache/clouds_320x480``.
        height, width: cached resolution in pixels (the training resolution).
        num_workers: decoding threads; default ``min(8, os.cpu_count())``.
        rebuild: rebuild even when the cache is current.
    Returns:
        The opened ``ImageCache``.
    Raises:
        FileExistsError: ``cache_dir`` exists and is neither empty nor a cache (it is never deleted).
        FileNotFoundError, ValueError: a missing or unreadable image, malformed targets (the message names the
            image_id and path); a table without the base columns or with duplicated ids.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    cache_dir = Path(cache_dir)
    fingerprint = table_fingerprint(df, preset)
    if cache_dir.exists():
        current = _current_cache(cache_dir)
        if current is None:
            if any(cache_dir.iterdir()):
                raise FileExistsError(f"{cache_dir} exists and is not an image cache; refusing to replace it")
        elif not rebuild and (current.meta["fingerprint"], current.height, current.width) == (
            fingerprint,
            height,
            width,
        ):
            log.info("image cache %s is current (%d images, %dx%d)", cache_dir, len(current), height, width)
            return current
        elif not rebuild:
            log.warning("image cache %s is stale (other table or size): rebuilding", cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(cache_dir.parent, depth=0)  # builds (and replace_dir leftovers) of processes that are gone
    tmp_dir = temp_dir(cache_dir)
    try:
        _write_cache(df, preset, tmp_dir, height, width, fingerprint, num_workers, desc=cache_dir.name)
        replace_dir(tmp_dir, cache_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return ImageCache.open(cache_dir)


def _current_cache(cache_dir: Path) -> ImageCache | None:
    try:
        return ImageCache.open(cache_dir)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _write_cache(
    df: pd.DataFrame,
    preset: Preset,
    out_dir: Path,
    height: int,
    width: int,
    fingerprint: str,
    num_workers: int | None,
    desc: str,
) -> None:
    df = df.reset_index(drop=True)
    n = len(df)
    with_masks = preset.is_segmentation and bool(_target_columns(df, preset))
    image_shape = (n, height, width, 3)
    mask_shape = None
    if with_masks:
        k = len(preset.target_classes)
        mask_shape = (n, height, width) if preset.task == "multiclass" else (n, height, width, k)
    images = np.lib.format.open_memmap(out_dir / "images.npy", mode="w+", dtype=np.uint8, shape=image_shape)
    masks = None
    if mask_shape is not None:
        masks = np.lib.format.open_memmap(out_dir / "masks.npy", mode="w+", dtype=np.uint8, shape=mask_shape)

    def load(i: int) -> None:
        row = df.iloc[i]
        image = _read_image(str(row["image_id"]), row["image_path"])
        if masks is not None:
            target = _read_target_masks(row, preset)
            _check_same_size(row, image, target)
            masks[i] = _resize(target, height, width, cv2.INTER_NEAREST)
        images[i] = _resize(image, height, width, cv2.INTER_AREA)

    pool = ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1))
    try:
        futures = [pool.submit(load, i) for i in range(n)]
        for future in progress(as_completed(futures), total=n, desc=f"caching {desc}", unit="img"):
            future.result()  # the first failure propagates; the queued rows are cancelled below
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    images.flush()
    if masks is not None:
        masks.flush()
    index = df[list(_BASE_COLUMNS)].copy()
    index["image_id"] = index["image_id"].astype(str)
    write_csv(out_dir / "index.csv", index)
    write_json(
        out_dir / "meta.json",
        {
            "kind": _CACHE_KIND,
            "version": _CACHE_VERSION,
            "preset": preset.name,
            "task": preset.task,
            "target_classes": list(preset.target_classes),
            "height": height,
            "width": width,
            "n_images": n,
            "image_shape": list(image_shape),
            "mask_shape": list(mask_shape) if mask_shape is not None else None,
            "fingerprint": fingerprint,
        },
    )
