"""Image and mask files: decoded as RGB / {0, 1} arrays, or only their size read from the header.

OpenCV decodes (fast); what it cannot (some GIF and TIFF variants) goes through Pillow. Every error names the file.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["image_size", "read_image", "read_image_at", "read_mask_file"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB.

    Args:
        path: JPEG, PNG, TIFF, BMP or GIF file.
    Returns:
        (H, W, 3) uint8 RGB; grey images are replicated to 3 channels, an alpha channel is dropped.
    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file exists but cannot be decoded as an image.
    """
    import cv2

    path = str(path)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        image = _read_with_pil(path, "RGB")  # formats OpenCV does not decode (some GIF/TIFF variants)
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
    """(H, W) uint8 {0, 1} from a mask image: 0/1 masks as they are, 0..255 masks thresholded at 127."""
    import cv2

    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mask file not found: {path}")
        mask = _read_with_pil(path, "L")
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
