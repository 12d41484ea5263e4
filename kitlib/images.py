"""Image and mask files: decoded as RGB / {0, 1} arrays, only their size read from the header, or checked whole.

OpenCV decodes (fast); what it cannot (some GIF and TIFF variants) goes through Pillow. Every error names the file.

A truncated file must not train: OpenCV returns None for a truncated PNG, TIFF, BMP or GIF (then Pillow raises), but
fills the missing rows of a truncated JPEG with grey and only warns on stderr. So ``read_image`` looks at the last two
bytes of a JPEG (its end-of-image marker, FF D9: about 0.01 ms against 20-25 ms for OpenCV's decode of a 1400 x 2100
Clouds JPEG, ``benchmarks/bench_verify_images.py``) and, where the marker is not there, decodes it again with
Pillow, which raises "image file is truncated". ``verify_images`` (``00_eda``) decodes every file whole with Pillow
before anything trains, over a thread pool (Pillow releases the GIL while it decodes), and caches the files it passed
by path, size and mtime, so each file is decoded once; a changed file is checked again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kitlib._private import listing, progress
from kitlib.io import FileKey, file_key, read_file_cache, write_file_cache
from kitlib.label_checks import CompetitionDataError

__all__ = ["DECODE_CACHE", "image_size", "read_image", "read_image_at", "read_mask_file", "verify_image",
           "verify_images"]  # fmt: skip

log = logging.getLogger(__name__)

#: The cache of the files ``verify_images`` passed, under ``artifacts_root/cache/`` (beside the pHash cache).
DECODE_CACHE = "decoded.csv"
_CACHE_VALUES = {"height": int, "width": int}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB.

    Args:
        path: JPEG, PNG, TIFF, BMP or GIF file.
    Returns:
        (H, W, 3) uint8 RGB; grey images are replicated to 3 channels, an alpha channel is dropped.
    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file exists but cannot be decoded as an image, or is truncated (the message names it).
    """
    import cv2

    path = str(path)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        image = _read_with_pil(path, "RGB")  # formats OpenCV does not decode (some GIF/TIFF variants)
        return image
    _check_jpeg_end(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


#: Bytes at a JPEG's end searched for its end marker: padding after FF D9 (some cameras and editors) fits in it.
JPEG_TAIL = 4096


def _check_jpeg_end(path: str) -> None:
    """Raise ValueError (``verify_image``) for a JPEG that OpenCV decoded although it is truncated: a file that starts
    with the JPEG marker FF D8 and has no end marker FF D9 in its last ``JPEG_TAIL`` bytes is decoded whole by Pillow,
    which raises where data is missing. Entropy-coded data cannot hold FF D9 (an FF byte there is stuffed as FF 00),
    so a file cut in its scan data never passes; one padded after its end marker passes without the second decode."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return
        size = f.seek(0, os.SEEK_END)
        f.seek(max(2, size - JPEG_TAIL))
        if b"\xff\xd9" in f.read():
            return
    verify_image(path)


def read_image_at(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Read an image as RGB at another size: (H, W, 3) uint8, resized bilinearly (``cv2.INTER_LINEAR``) when its own
    size differs, e.g. to the scoring size of the probabilities a DenseCRF refines (``kitlib.crf``).

    Args:
        path: as ``read_image``.
        size: (H, W) in pixels.
    Raises:
        As ``read_image``.
    """
    import cv2

    image = read_image(path)
    h, w = int(size[0]), int(size[1])
    return image if image.shape[:2] == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def _read_with_pil(path: str, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image file {path}: {e}") from e


def read_mask_file(path: str) -> np.ndarray:
    """(H, W) uint8 {0, 1} from a mask image: 0/1 masks as they are, 0..255 masks thresholded at 127.

    Raises:
        FileNotFoundError, ValueError: as ``read_image`` (a truncated file too).
    """
    import cv2

    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mask file not found: {path}")
        mask = _read_with_pil(path, "L")
    else:
        _check_jpeg_end(path)
    threshold = 0 if mask.max() <= 1 else 127
    return (mask > threshold).astype(np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) in pixels from the file header, without decoding the pixels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read the header of image file {path}: {e}") from e
    return h, w


def verify_image(path: str | os.PathLike) -> tuple[int, int]:
    """Decode every pixel of an image file with Pillow (``Image.load``), which raises where data is missing.

    Returns:
        (height, width) in pixels.
    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, corrupt or not an image (the message names it and gives Pillow's reason,
            e.g. "image file is truncated (36 bytes not processed)").
        RuntimeError: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True (set by other code): Pillow would then fill a
            truncated image instead of raising, and the check could not see it.
    """
    from PIL import Image, UnidentifiedImageError

    _check_pil_flag()
    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # SyntaxError: Pillow's "broken PNG file"
        raise ValueError(f"image file {path} is truncated or corrupt: {e}") from e
    return h, w


def _check_pil_flag() -> None:
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images cannot be detected; set it "
                           "back to False before checking images")  # fmt: skip


def _check(key: FileKey) -> tuple[FileKey, tuple[int, int] | str]:
    """``verify_image`` of one file: its (height, width), or the error's message."""
    try:
        return key, verify_image(key[0])
    except (ValueError, FileNotFoundError) as e:
        return key, str(e)


def verify_images(
    paths: Sequence[str | os.PathLike], cache_path: str | os.PathLike | None = None, num_workers: int | None = None
) -> None:
    """Decode every image whole (``verify_image``), skipping the files the cache says were passed unchanged.

    Own code around Pillow's decoder: a thread pool (Pillow releases the GIL while decoding; ``num_workers`` None:
    ``min(8, os.cpu_count())``), a tqdm bar, and a cache keyed by the resolved path, the size in bytes and
    ``st_mtime_ns`` (``kitlib.io.file_key``, as the pHash cache of ``kitlib.near_duplicates``). A file that fails is
    never cached, so it is checked again on the next run; every failure is reported, not only the first.

    Args:
        paths: image files (a table's ``image_path`` column).
        cache_path: a CSV ``path,size,mtime_ns,height,width`` of the files passed (``artifacts/cache/decoded.csv``,
            ``DECODE_CACHE``); rows of other files are kept; written atomically when a file was added. None: no cache.
        num_workers: decoding threads.
    Raises:
        FileNotFoundError: a missing file (named).
        CompetitionDataError (a ValueError): truncated, corrupt or unreadable files; the message names them with
            Pillow's reason, ``.ids`` holds all their paths.
        RuntimeError: as ``verify_image``.
    """
    _check_pil_flag()
    keys = [file_key(p, "image file") for p in paths]
    known = read_file_cache(cache_path, _CACHE_VALUES)
    todo = sorted({k for k in keys if k not in known})
    bad: dict[str, str] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1)) as pool:
            for key, result in progress(pool.map(_check, todo), total=len(todo), desc="decode check", unit="img"):
                if isinstance(result, str):
                    bad[key[0]] = result
                else:
                    known[key] = result
    log.info("decode check: %d image(s), %d from the cache, %d decoded, %d failed", len(keys),
             len(keys) - len(todo), len(todo), len(bad))  # fmt: skip
    if todo and cache_path is not None and len(todo) > len(bad):
        write_file_cache(cache_path, known, keys, list(_CACHE_VALUES))
    if bad:
        raise CompetitionDataError(f"{len(bad)} of {len(keys)} image file(s) truncated or corrupt: "
                                   f"{listing(bad.values(), 3)}", list(bad))  # fmt: skip
