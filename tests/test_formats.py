"""kitlib.formats: every preset's loader on the real samples and on small folders made here, and each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kitlib.coco import coco_classes, with_label_classes
from kitlib.formats import (
    CompetitionDataError,
    class_presence,
    load_competition,
    load_masks,
    masks_to_label_map,
    target_columns,
)
from kitlib.images import read_image
from kitlib.presets import PRESETS, get_preset
from kitlib.rle import rle_decode, rle_encode

#: The Clouds and Severstal layouts on the small images made here: without the competitions' nominal image_size.
CLOUDS = PRESETS["clouds"].replace(image_size=None)
SEVERSTAL = PRESETS["severstal"].replace(image_size=None)


def _write_image(path: Path, h: int, w: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


# --------------------------------------------------------------------------------------------- real samples


def test_clouds_sample(clouds_dir):
    df = load_competition(PRESETS["clouds"], clouds_dir, label_file="train_small.csv")
    assert list(df.columns) == ["image_id", "image_path", "height", "width", "Fish", "Flower", "Gravel", "Sugar"]
    assert df["image_id"].tolist() == ["0011165.jpg"]
    row = df.iloc[0]
    assert (row["height"], row["width"]) == (1400, 2100)
    assert row["Gravel"] == "" and row["Sugar"] == ""
    raw = pd.read_csv(clouds_dir / "train_small.csv").set_index("Image_Label")["EncodedPixels"]
    assert row["Fish"] == raw["0011165.jpg_Fish"]
    masks = load_masks(row, PRESETS["clouds"])
    assert masks.shape == (1400, 2100, 4) and masks.dtype == np.uint8 and masks.flags.c_contiguous
    assert masks.reshape(-1, 4).sum(0).tolist() == [932312, 1156107, 0, 0]
    assert class_presence(df, PRESETS["clouds"]).tolist() == [[True, True, False, False]]
    # the competition's own label file name is the default: absent here, so a clear error names it
    with pytest.raises(FileNotFoundError, match="train.csv"):
        load_competition(PRESETS["clouds"], clouds_dir)


def test_clouds_sample_test_split(clouds_dir):
    with pytest.raises(CompetitionDataError, match=r"3697 of 3698 images .* missing.*drop_missing=True") as e:
        load_competition(PRESETS["clouds"], clouds_dir, split="test")
    assert len(e.value.ids) == 3697 and "002f507.jpg" in e.value.ids
    df = load_competition(PRESETS["clouds"], clouds_dir, split="test", drop_missing=True)
    assert df["image_id"].tolist() == ["00a47f4.jpg"] and df.attrs["dropped_missing"] == 3697
    assert list(df.columns) == ["image_id", "image_path", "height", "width"]
    assert read_image(df["image_path"][0]).shape == (1400, 2100, 3)


def test_dacon_sample(dacon_dir):
    with pytest.raises(CompetitionDataError, match="TRAIN_0003.*odd number of tokens") as e:
        load_competition(PRESETS["dacon_building"], dacon_dir)
    assert e.value.ids == ["TRAIN_0003"]
    df = load_competition(PRESETS["dacon_building"], dacon_dir, drop_invalid=True)
    assert df["image_id"].tolist() == ["TRAIN_0000", "TRAIN_0001", "TRAIN_0002"]
    assert df.attrs["dropped_invalid"] == 1
    # '/content/TRAIN_0000.png' in the CSV is re-homed under the data folder by file name
    assert all(Path(p).is_file() and Path(p).parent.name == "train_img" for p in df["image_path"])
    assert (df["height"] == 1024).all() and (df["width"] == 1024).all()
    areas = [int(load_masks(r, PRESETS["dacon_building"]).sum()) for _, r in df.iterrows()]
    assert areas == [24514, 65478, 27649]
    test = load_competition(PRESETS["dacon_building"], dacon_dir, split="test", drop_missing=True)
    assert test["image_id"].tolist() == [f"TEST_0000{i}" for i in range(4)]
    assert (test["height"] == 224).all()


def test_isbi_sample(isbi_dir):
    df = load_competition(PRESETS["masks"], isbi_dir)
    assert len(df) == 24 and list(df.columns) == ["image_id", "image_path", "height", "width", "mask_path"]
    masks = np.stack([load_masks(r, PRESETS["masks"]) for _, r in df.iterrows()])
    assert masks.shape == (24, 512, 512, 1) and set(np.unique(masks)) == {0, 1}
    foreground = masks.mean()
    assert 0.74 < foreground < 0.82  # cell interior; membrane is about 22% (the majority-class pixel error)
    assert class_presence(df, PRESETS["masks"]).all()
    assert read_image(df["image_path"][0]).shape == (512, 512, 3)  # grey replicated to RGB
    test = load_competition(PRESETS["masks"], isbi_dir, split="test")
    assert len(test) == 30 and (test["width"] == 512).all()


def test_cassava_sample(cassava_dir):
    with pytest.raises(CompetitionDataError, match="21390 of 21397 images") as e:
        load_competition(PRESETS["cassava"], cassava_dir)
    assert len(e.value.ids) == 21390
    df = load_competition(PRESETS["cassava"], cassava_dir, drop_missing=True)
    assert len(df) == 7 and df.attrs["dropped_missing"] == 21390
    assert df["label"].dtype == np.int64 and sorted(set(df["label"])) == [0, 1, 2, 3, 4]
    assert ((df["height"] == 600) & (df["width"] == 800)).all()
    test = load_competition(PRESETS["cassava"], cassava_dir, split="test")
    assert test["image_id"].tolist() == ["2216849948.jpg"]
    with pytest.raises(ValueError, match="classification"):
        class_presence(df, PRESETS["cassava"])


# --------------------------------------------------------------------------------------------- made here


def _clouds_folder(tmp_path: Path, rows: list[tuple[str, str]], images=("a.jpg", "b.jpg")) -> Path:
    for name in images:
        _write_image(tmp_path / "train_images" / name, 8, 12)
    pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def test_image_label_missing_pair_is_empty(tmp_path):
    d = _clouds_folder(tmp_path, [("a.jpg_Fish", "1 3"), ("b.jpg_Sugar", "5 2"), ("b.jpg_Fish", "")])
    df = load_competition(CLOUDS, d)
    assert df["image_id"].tolist() == ["a.jpg", "b.jpg"]
    assert df[["Fish", "Flower", "Gravel", "Sugar"]].values.tolist() == [["1 3", "", "", ""], ["", "", "", "5 2"]]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("a.jpg_Fish", "1 3"), ("a.jpg_Fish", "")], "duplicated Image_Label key.*a.jpg_Fish"),
        ([("a.jpg_Fish", "1 3"), ("a.jpg_Clouds", "")], r"unknown class name\(s\) Clouds"),
        ([("a.jpg_Fish", "1 3"), ("nounderscore", "")], "line 3 .*'nounderscore'"),
        ([("a.jpg_Fish", "1 3 5")], "a.jpg.*Fish.*odd number of tokens"),
        ([("a.jpg_Fish", "90 20")], "a.jpg.*ends past the image of 96 pixels"),
        ([("a.jpg_Fish", "1 x")], "a.jpg.*not an integer"),
    ],
)
def test_image_label_bad_rows(tmp_path, rows, match):
    with pytest.raises(CompetitionDataError, match=match):
        load_competition(CLOUDS, _clouds_folder(tmp_path, rows))


def test_missing_column_and_bad_csv(tmp_path):
    pd.DataFrame({"Image": ["a.jpg_Fish"], "EncodedPixels": [""]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(CompetitionDataError, match=r"missing column\(s\) \['Image_Label'\]"):
        load_competition(CLOUDS, tmp_path)
    (tmp_path / "train.csv").write_text('Image_Label,EncodedPixels\n"a.jpg_Fish,1 2\n')
    with pytest.raises(CompetitionDataError, match="unreadable CSV"):
        load_competition(CLOUDS, tmp_path)


def test_unreadable_image(tmp_path):
    d = _clouds_folder(tmp_path, [("a.jpg_Fish", "1 3"), ("b.jpg_Fish", "")])
    (d / "train_images" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CompetitionDataError, match="unreadable image file.*b.jpg"):
        load_competition(CLOUDS, d)
    with pytest.raises(ValueError, match="cannot decode image file"):
        read_image(d / "train_images" / "b.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(d / "nope.jpg")


@pytest.mark.parametrize("layout", ["current", "first_release"])
def test_severstal(tmp_path, layout):
    for name in ("s1.jpg", "s2.jpg", "s3.jpg"):
        _write_image(tmp_path / "train_images" / name, 4, 10)
    if layout == "current":
        rows = pd.DataFrame({"ImageId": ["s1.jpg", "s1.jpg", "s3.jpg"], "ClassId": [1, 3, 4],
                             "EncodedPixels": ["1 4", "9 2", "40 1"]})  # fmt: skip
    else:
        rows = pd.DataFrame({"ImageId_ClassId": ["s1.jpg_1", "s1.jpg_3", "s3.jpg_4", "s3.jpg_2"],
                             "EncodedPixels": ["1 4", "9 2", "40 1", ""]})  # fmt: skip
    rows.to_csv(tmp_path / "train.csv", index=False)
    df = load_competition(SEVERSTAL, tmp_path).set_index("image_id")
    assert sorted(df.index) == ["s1.jpg", "s2.jpg", "s3.jpg"]  # s2 has no defect row: all empty
    assert df.loc["s1.jpg", ["1", "2", "3", "4"]].tolist() == ["1 4", "", "9 2", ""]
    assert df.loc["s2.jpg", ["1", "2", "3", "4"]].tolist() == ["", "", "", ""]
    masks = load_masks(df.reset_index().iloc[0], SEVERSTAL)
    np.testing.assert_array_equal(masks[:, :, 0], rle_decode("1 4", (4, 10), "F"))
    rows.iloc[:, 0] = rows.iloc[:, 0].str.replace("s3.jpg", "zz.jpg")
    rows.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(CompetitionDataError, match="missing.*zz.jpg"):
        load_competition(SEVERSTAL, tmp_path)


def test_dacon_path_rehoming_and_duplicates(tmp_path):
    _write_image(tmp_path / "train_img" / "T0.png", 4, 4)
    _write_image(tmp_path / "elsewhere" / "T1.png", 4, 4)
    pd.DataFrame({"img_id": ["T0", "T1"], "img_path": ["/content/T0.png", "./somewhere/T1.png"],
                  "mask_rle": ["1 2", "-1"]}).to_csv(tmp_path / "train.csv", index=False)  # fmt: skip
    df = load_competition(PRESETS["dacon_building"], tmp_path)
    assert [Path(p).relative_to(tmp_path.resolve()).as_posix() for p in df["image_path"]] == [
        "train_img/T0.png", "elsewhere/T1.png"]  # fmt: skip
    assert df["building"].tolist() == ["1 2", ""]  # Dacon's "-1" becomes the canonical ""
    pd.DataFrame({"img_id": ["T0", "T0"], "img_path": ["a", "b"], "mask_rle": ["-1", "-1"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    with pytest.raises(CompetitionDataError, match=r"duplicated img_id\(s\): T0"):
        load_competition(PRESETS["dacon_building"], tmp_path)


def test_mask_folder_errors_and_carvana_naming(tmp_path):
    _write_image(tmp_path / "train" / "image" / "x.png", 5, 6)
    _write_image(tmp_path / "train" / "image" / "y.png", 5, 6)
    (tmp_path / "train" / "label").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "label" / "x.png"), np.full((5, 6), 255, np.uint8))
    with pytest.raises(CompetitionDataError, match=r"1 image\(s\) without a mask file: y.png -> y.png"):
        load_competition(PRESETS["masks"], tmp_path)
    cv2.imwrite(str(tmp_path / "train" / "label" / "y.png"), np.zeros((5, 7), np.uint8))
    with pytest.raises(CompetitionDataError, match="size differs.*y.png"):
        load_competition(PRESETS["masks"], tmp_path)
    # Carvana: train/<id>.jpg with train_masks/<id>_mask.png holding 0/1 values
    carvana = get_preset("masks").replace(image_dir="train", label_file="train_masks", mask_suffix="_mask",
                                          mask_ext=".png")  # fmt: skip
    _write_image(tmp_path / "c" / "train" / "car.jpg", 5, 6)
    (tmp_path / "c" / "train_masks").mkdir(parents=True)
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:5] = 1
    cv2.imwrite(str(tmp_path / "c" / "train_masks" / "car_mask.png"), m)
    df = load_competition(carvana, tmp_path / "c")
    np.testing.assert_array_equal(load_masks(df.iloc[0], carvana)[:, :, 0], m)


def _coco(tmp_path: Path, categories=None, extra_ann=None) -> Path:
    _write_image(tmp_path / "batch_01" / "0001.jpg", 20, 30)
    _write_image(tmp_path / "batch_01" / "0002.jpg", 20, 30)
    categories = categories or [{"id": 1, "name": "General trash"}, {"id": 2, "name": "Paper"},
                                {"id": 10, "name": "Clothing"}]  # fmt: skip
    big = [[2, 2, 27, 2, 27, 17, 2, 17]]  # polygon, x y pairs: a 25x15 rectangle
    small = [[10, 5, 15, 5, 15, 10, 10, 10]]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": small, "area": 25, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": big, "area": 375, "iscrowd": 0},
    ] + (extra_ann or [])
    coco = {"images": [{"id": 1, "file_name": "batch_01/0001.jpg", "height": 20, "width": 30},
                       {"id": 2, "file_name": "batch_01/0002.jpg", "height": 20, "width": 30}],
            "annotations": anns, "categories": categories}  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(coco))
    (tmp_path / "test.json").write_text(json.dumps({"images": coco["images"][1:], "categories": categories}))
    return tmp_path


def test_coco_semantic_masks(tmp_path):
    """The trash contest's categories (ids 0 UNKNOWN, 1 General trash, 2 Paper, ..., 10 Clothing) map by name to the
    preset's class indices 1..11, the background 0, as its baseline's ``category_names.index(name)``."""
    coco = PRESETS["coco"]
    assert coco.classes[:3] == ("Background", "UNKNOWN", "General trash") and coco.num_classes == 12
    df = load_competition(coco, _coco(tmp_path))
    assert df["image_id"].tolist() == ["batch_01/0001.jpg", "batch_01/0002.jpg"]
    assert target_columns(coco) == list(coco.classes[1:])
    masks = load_masks(df.iloc[0], coco)
    assert masks.shape == (20, 30, 11)
    label_map = masks_to_label_map(masks)
    # the small object (General trash = 2) is painted over the large one (Paper = 3): larger areas first
    assert label_map[7, 12] == 2 and label_map[3, 3] == 3 and label_map[0, 0] == 0
    assert set(np.unique(label_map)) == {0, 2, 3}
    assert masks[:, :, 0].sum() == 0 and masks[:, :, 3:].sum() == 0
    assert load_masks(df.iloc[1], coco).sum() == 0  # no annotation: all background
    presence = class_presence(df, coco)
    assert presence.shape == (2, 11) and presence[0, 1:3].all() and not presence[1].any()
    test = load_competition(coco, tmp_path, split="test")
    assert test["image_id"].tolist() == ["batch_01/0002.jpg"] and test["height"].tolist() == [20]


def test_coco_classes_from_the_label_file(tmp_path, caplog):
    """A preset file may leave out a COCO competition's classes: the background, then the annotated categories in id
    order; an unused (parent) category is dropped and logged, and the loader ignores it."""
    categories = [{"id": 2, "name": "Paper"}, {"id": 1, "name": "General trash"}, {"id": 0, "name": "waste"},
                  {"id": 10, "name": "Clothing"}]  # fmt: skip
    data = _coco(tmp_path, categories=categories)
    with caplog.at_level("WARNING"):
        classes = coco_classes(data / "train.json")
    assert classes == ("Background", "General trash", "Paper") and "waste, Clothing" in caplog.text
    preset = PRESETS["coco"].replace(name="mine", classes=())
    resolved = with_label_classes(preset, data)
    assert resolved.classes == classes and with_label_classes(resolved, data) is resolved
    label_map = masks_to_label_map(load_masks(load_competition(resolved, data).iloc[0], resolved))
    assert label_map[7, 12] == 1 and label_map[3, 3] == 2  # ids 1, 2 -> 1, 2 (ids 0 and 10 have no annotation)
    with pytest.raises(FileNotFoundError, match="list the classes in the preset file"):
        with_label_classes(preset, tmp_path / "elsewhere")
    dup = _coco(tmp_path / "dup", categories=[{"id": 1, "name": "Paper"}, {"id": 2, "name": "Paper"}])
    with pytest.raises(CompetitionDataError, match=r"duplicated category name\(s\): Paper"):
        coco_classes(dup / "train.json")


def test_coco_errors(tmp_path):
    with pytest.raises(CompetitionDataError, match="unknown class name.*Banana"):
        load_competition(PRESETS["coco"], _coco(tmp_path / "a", categories=[{"id": 1, "name": "Banana"}]))
    bad = [{"id": 9, "image_id": 1, "category_id": 77, "segmentation": [[0, 0, 1, 1, 2, 0]], "area": 1}]
    with pytest.raises(CompetitionDataError, match="unknown category_id: 9"):
        load_competition(PRESETS["coco"], _coco(tmp_path / "b", extra_ann=bad))
    bad = [{"id": 9, "image_id": 5, "category_id": 1, "segmentation": [[0, 0, 1, 1, 2, 0]], "area": 1}]
    with pytest.raises(CompetitionDataError, match="not in 'images': 5"):
        load_competition(PRESETS["coco"], _coco(tmp_path / "c", extra_ann=bad))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.json").write_text("{bad json")
    with pytest.raises(CompetitionDataError, match="invalid JSON at line 1"):
        load_competition(PRESETS["coco"], tmp_path / "d")


def test_label_csv_bad_labels(tmp_path):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        _write_image(tmp_path / "train_images" / name, 6, 8)
    pd.DataFrame({"image_id": ["1.jpg", "2.jpg", "3.jpg"], "label": ["0", "7", "x"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    with pytest.raises(CompetitionDataError, match=r"2 label\(s\) not an integer in 0..4: line 3 \(2.jpg: '7'\)"):
        load_competition(PRESETS["cassava"], tmp_path)


def test_masks_to_label_map_and_errors():
    masks = np.zeros((2, 3, 3), np.uint8)
    masks[0, 0, 2] = masks[1, 2, 0] = 1
    np.testing.assert_array_equal(masks_to_label_map(masks), [[3, 0, 0], [0, 0, 1]])
    masks[0, 0, 1] = 1
    with pytest.raises(ValueError, match="overlapping"):
        masks_to_label_map(masks)
    with pytest.raises(KeyError, match="unknown preset 'nope'; options"):
        get_preset("nope")
    with pytest.raises(ValueError, match="split must be"):
        load_competition(PRESETS["clouds"], ".", split="valid")


def test_load_masks_names_bad_row():
    row = pd.Series({"image_id": "q.jpg", "height": 2, "width": 2, "Fish": "1 9", "Flower": "", "Gravel": "",
                     "Sugar": ""})  # fmt: skip
    with pytest.raises(ValueError, match="q.jpg / Fish: RLE run 0"):
        load_masks(row, PRESETS["clouds"])
    assert rle_encode(np.ones((2, 2))) == "1 4"


# ------------------------------------------------------------------------------------------------- image sizes


def test_the_competitions_nominal_sizes():
    assert PRESETS["clouds"].image_size == (1400, 2100) and PRESETS["severstal"].image_size == (256, 1600)


def test_a_swapped_image_under_a_preset_with_a_nominal_size_fails_naming_it(tmp_path):
    """b.jpg is 12 x 8 (H x W) where the preset says 8 x 12: the same 96 pixels, so its RLE would decode in the
    wrong shape without a word; the preset's image_size is the check."""
    d = _clouds_folder(tmp_path, [("a.jpg_Fish", "1 3"), ("b.jpg_Sugar", "5 2")])
    _write_image(d / "train_images" / "b.jpg", 12, 8)
    assert len(load_competition(CLOUDS, d)) == 2  # without a nominal size: nothing to check against
    preset = CLOUDS.replace(image_size=(8, 12))
    with pytest.raises(CompetitionDataError, match=r"1 image\(s\) not of preset 'clouds''s image_size 8x12: "
                       r".*b.jpg is 12x8, expected 8x12 \(H x W\) \(width and height swapped\?\)") as err:  # fmt: skip
        load_competition(preset, d)
    assert err.value.ids == ["b.jpg"]
    _write_image(d / "train_images" / "b.jpg", 8, 13)  # another size: named, no hint
    with pytest.raises(CompetitionDataError, match=r"b.jpg is 8x13, expected 8x12 \(H x W\)$"):
        load_competition(preset, d)
    # the test images too
    _write_image(d / "test_images" / "t.jpg", 12, 8)
    with pytest.raises(CompetitionDataError, match=r"t.jpg is 12x8, expected 8x12.*swapped"):
        load_competition(preset.replace(sample_submission=None), d, split="test")


def test_a_mask_png_of_swapped_size_fails_naming_it(tmp_path):
    carvana = get_preset("masks").replace(mask_suffix="_mask", mask_ext=".png")
    _write_image(tmp_path / "train" / "image" / "x.png", 5, 6)
    (tmp_path / "train" / "label").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "label" / "x_mask.png"), np.zeros((6, 5), np.uint8))
    with pytest.raises(CompetitionDataError, match=r"1 mask file\(s\) whose size differs from their image: .*"
                       r"x_mask.png is 6x5, expected 5x6 \(H x W\) \(width and height swapped\?\)") as err:  # fmt: skip
        load_competition(carvana, tmp_path)
    assert err.value.ids == ["x.png"]


def test_a_coco_record_whose_size_is_not_its_files_fails_naming_it(tmp_path):
    """COCO's polygons are rasterised at the size of the image record: a record that swaps its file's width and
    height would give masks of the wrong shape."""
    root = _coco(tmp_path)
    _write_image(root / "batch_01" / "0002.jpg", 30, 20)
    with pytest.raises(
        CompetitionDataError,
        match=r"train.json: 1 image file\(s\) whose size differs from their "
        r"image record: .*0002.jpg is 30x20, expected 20x30 \(H x W\) \(width and height swapped\?\)",
    ):
        load_competition(PRESETS["coco"], root)
    with pytest.raises(CompetitionDataError, match=r"test.json: .*0002.jpg is 30x20"):
        load_competition(PRESETS["coco"], root, split="test")


@pytest.mark.parametrize("compressed", [True, False])
def test_a_coco_rle_of_swapped_size_fails_naming_it(tmp_path, compressed):
    """A COCO RLE segmentation (compressed: a string of counts; uncompressed: a list) carries its own [height, width]:
    one that is not its image's is refused, naming the file and the annotation; one of the image's size paints."""
    from pycocotools import mask as coco_mask

    def rle_of(mask: np.ndarray) -> dict:
        if not compressed:  # column-major runs, starting with the zeros
            flat = mask.flatten(order="F")
            edges = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
            return {"size": list(mask.shape), "counts": np.diff(np.r_[0, edges]).tolist()}
        rle = coco_mask.encode(np.asfortranarray(mask))
        return {"size": rle["size"], "counts": rle["counts"].decode()}

    square = np.zeros((20, 30), np.uint8)
    square[5:10, 5:15] = 1
    extra = [{"id": 3, "image_id": 2, "category_id": 1, "segmentation": rle_of(square), "area": 50, "iscrowd": 1}]
    df = load_competition(PRESETS["coco"], _coco(tmp_path, extra_ann=extra))
    np.testing.assert_array_equal(load_masks(df.iloc[1], PRESETS["coco"])[:, :, 1], square)  # General trash
    extra[0]["segmentation"] = rle_of(np.ones((30, 20), np.uint8))  # the 20 x 30 image's transpose
    with pytest.raises(
        CompetitionDataError,
        match=r"1 unreadable segmentation\(s\): batch_01/0002.jpg annotation 3 "
        r"\(its RLE is 30x20, the image 20x30 \(H x W\) \(width and height swapped\?\)\)",
    ):
        load_competition(PRESETS["coco"], _coco(tmp_path, extra_ann=extra))
