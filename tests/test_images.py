"""kitlib.images: truncated and corrupt image files fail naming the file, at validation (``verify_images``, cached)
and at training time (``read_image``); zero-byte files too."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import kitlib.images as images
from kitlib.formats import CompetitionDataError, load_competition
from kitlib.images import DECODE_CACHE, read_image, read_mask_file, verify_image, verify_images
from kitlib.presets import PRESETS

#: The demo layout (Understanding Clouds' files) on the images written here.
DEMO = PRESETS["demo"]


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Random pixels: a JPEG of them has entropy-coded data in every row, so a cut file misses rows."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _truncate(path: Path, fraction: float = 1 / 3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _demo_folder(tmp_path: Path, names=("a.jpg", "b.jpg", "c.png")) -> Path:
    (tmp_path / "train_images").mkdir(parents=True)
    for i, name in enumerate(names):
        assert cv2.imwrite(str(tmp_path / "train_images" / name), _noise(seed=i))
    rows = [(f"{n}_{cls}", "") for n in names for cls in DEMO.classes]
    pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def test_a_truncated_jpeg_and_png_fail_validation_naming_the_file(tmp_path):
    d = _demo_folder(tmp_path)
    jpeg, png = d / "train_images" / "b.jpg", d / "train_images" / "c.png"
    _truncate(jpeg)
    _truncate(png)
    df = load_competition(DEMO, d)  # the headers are intact: the table reads, as it did before
    with pytest.raises(CompetitionDataError, match=r"2 of 3 image file\(s\) truncated or corrupt") as err:
        verify_images(df["image_path"], d / "cache" / DECODE_CACHE)
    assert sorted(Path(p).name for p in err.value.ids) == ["b.jpg", "c.png"]
    assert str(jpeg.resolve()) in str(err.value) and "image file is truncated" in str(err.value)
    assert (d / "cache" / DECODE_CACHE).is_file()  # a.jpg passed and is cached, the cut files are not


def test_read_image_refuses_a_truncated_jpeg(tmp_path):
    """OpenCV fills a cut JPEG's missing rows with grey (a warning on stderr only): read_image must refuse it."""
    path = tmp_path / "cut.jpg"
    cv2.imwrite(str(path), _noise())
    full = read_image(path)
    _truncate(path)
    assert cv2.imread(str(path)) is not None  # what OpenCV does with it: a whole image
    with pytest.raises(ValueError, match=r"cut.jpg is truncated or corrupt: image file is truncated"):
        read_image(path)
    with pytest.raises(ValueError, match="cut.jpg is truncated"):
        read_mask_file(str(path))
    # bytes after the end-of-image marker are not a truncation: the image reads as before
    cv2.imwrite(str(path), _noise())
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    np.testing.assert_array_equal(read_image(path), full)


def test_a_jpeg_padded_after_its_end_marker_is_read_without_a_second_decode(tmp_path, monkeypatch):
    """Padding after FF D9 (some cameras and editors write it) is found in the file's tail: no Pillow decode on every
    read of such a file, and it reads as the plain file does."""
    path = tmp_path / "padded.jpg"
    cv2.imwrite(str(path), _noise(480, 640))
    full = read_image(path)
    path.write_bytes(path.read_bytes() + b"\0" * 1000)
    decodes = []
    monkeypatch.setattr(images, "verify_image", lambda p, *a, **k: decodes.append(p))
    np.testing.assert_array_equal(read_image(path), full)
    assert decodes == []
    _truncate(path)  # cut in the scan data: no end marker in the tail, the whole decode runs
    read_image(path)
    assert decodes == [str(path)]


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".gif"])
def test_read_image_refuses_other_truncated_formats(tmp_path, ext):
    from PIL import Image

    path = tmp_path / f"cut{ext}"
    Image.fromarray(_noise()).save(path)
    assert read_image(path).shape == (48, 64, 3)
    verify_image(path)
    _truncate(path)
    with pytest.raises(ValueError, match=f"cut{ext}"):
        read_image(path)
    with pytest.raises(ValueError, match=f"cut{ext} is truncated or corrupt"):
        verify_image(path)


def test_a_zero_byte_image_fails_everywhere_naming_it(tmp_path):
    d = _demo_folder(tmp_path)
    empty = d / "train_images" / "a.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CompetitionDataError, match=r"1 unreadable image file\(s\): a.jpg"):
        load_competition(DEMO, d)
    with pytest.raises(ValueError, match="cannot decode image file .*a.jpg"):
        read_image(empty)
    with pytest.raises(CompetitionDataError, match="a.jpg is truncated or corrupt"):
        verify_images([empty])


def test_the_decode_cache_checks_each_file_once(tmp_path, monkeypatch):
    d = _demo_folder(tmp_path)
    paths = sorted((d / "train_images").iterdir())
    cache = d / "cache" / DECODE_CACHE
    decoded: list[str] = []
    real = images.verify_image

    def counting(path):
        decoded.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(images, "verify_image", counting)
    verify_images(paths, cache, num_workers=2)
    assert sorted(decoded) == ["a.jpg", "b.jpg", "c.png"]
    table = pd.read_csv(cache)
    assert list(table.columns) == ["path", "size", "mtime_ns", "height", "width"]
    assert table[["height", "width"]].values.tolist() == [[48, 64]] * 3
    decoded.clear()
    verify_images(paths, cache)
    assert decoded == []  # all from the cache
    # a changed file is checked again (its size or mtime differs); a file that fails stays out of the cache
    _truncate(paths[1])
    with pytest.raises(CompetitionDataError, match="b.jpg"):
        verify_images(paths, cache)
    assert decoded == ["b.jpg"]
    with pytest.raises(CompetitionDataError, match="b.jpg"):
        verify_images(paths, cache)
    assert decoded == ["b.jpg", "b.jpg"]
    assert cv2.imwrite(str(paths[1]), _noise(seed=5))
    os.utime(paths[1], ns=(1, 1))  # an mtime of its own, whatever the clock's resolution
    verify_images(paths, cache)
    assert decoded == ["b.jpg", "b.jpg", "b.jpg"]
    assert len(pd.read_csv(cache)) == 3  # one row per file: the new stat replaced the old
    verify_images(paths[:1], cache)  # a run over fewer files keeps the others' rows
    assert len(pd.read_csv(cache)) == 3 and decoded == ["b.jpg"] * 3


def test_a_damaged_cache_only_costs_a_new_check(tmp_path, caplog):
    d = _demo_folder(tmp_path, names=("a.jpg",))
    cache = d / DECODE_CACHE
    cache.write_text("not,a\ncache")
    verify_images([d / "train_images" / "a.jpg"], cache)
    assert "unreadable cache" in caplog.text
    assert len(pd.read_csv(cache)) == 1


def test_the_check_refuses_to_run_when_pil_fills_truncated_images(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES is True"):
        verify_images([tmp_path / "x.jpg"])
