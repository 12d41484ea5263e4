"""kitlib.submit: hand-made rows for every preset's format, every way validate_submission fails (naming the ids),
ordering, atomic writing, and the real sample submissions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kitlib.submit as submit_module
from kitlib.formats import load_competition
from kitlib.presets import PRESETS, get_preset
from kitlib.rle import rle_decode
from kitlib.submit import (
    SubmissionError,
    encode_rows,
    order_like,
    read_sample_submission,
    read_submission,
    validate_submission,
    write_submission,
)

CLOUDS = get_preset("clouds")
SMALL_CLOUDS = CLOUDS.replace(submission_size=(2, 3))
SMALL_COCO = get_preset("coco").replace(submission_size=(2, 3))


def _masks(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((k, h, w)) < 0.3).astype(np.uint8)


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- hand cases


def test_clouds_rows_hand_case():
    masks = np.zeros((4, 2, 3), np.uint8)
    masks[1, :, 0] = 1  # Flower: first column, column-major -> "1 2"
    masks[3, 0, :2] = 1  # Sugar: first row, two pixels -> "1 1 3 1"
    rows = encode_rows("0011165.jpg", masks, SMALL_CLOUDS)
    assert rows == [
        {"Image_Label": "0011165.jpg_Fish", "EncodedPixels": ""},
        {"Image_Label": "0011165.jpg_Flower", "EncodedPixels": "1 2"},
        {"Image_Label": "0011165.jpg_Gravel", "EncodedPixels": ""},
        {"Image_Label": "0011165.jpg_Sugar", "EncodedPixels": "1 1 3 1"},
    ]
    assert [list(r) for r in rows] == [["Image_Label", "EncodedPixels"]] * 4


def test_severstal_rows_hand_case():
    masks = np.zeros((4, 2, 3), np.uint8)
    masks[2, 1, 2] = 1  # last pixel
    rows = encode_rows("0000f269f.jpg", masks, PRESETS["severstal"])
    assert rows[2] == {"ImageId": "0000f269f.jpg", "EncodedPixels": "6 1", "ClassId": 3}
    assert [r["ClassId"] for r in rows] == [1, 2, 3, 4]
    assert [list(r) for r in rows] == [["ImageId", "EncodedPixels", "ClassId"]] * 4


def test_dacon_rows_hand_case():
    mask = np.array([[0, 1, 1], [1, 0, 1]], np.uint8)  # row-major: "2 3 6 1"
    assert encode_rows("TEST_00000", mask, PRESETS["dacon_building"]) == [
        {"img_id": "TEST_00000", "mask_rle": "2 3 6 1"}
    ]
    assert encode_rows("TEST_00001", mask[None] * 0, PRESETS["dacon_building"]) == [
        {"img_id": "TEST_00001", "mask_rle": "-1"}
    ]


def test_masks_rows_hand_case():
    mask = np.array([[True, True], [False, True]])
    assert encode_rows("0.png", mask, PRESETS["masks"]) == [{"img": "0.png", "rle_mask": "1 2 4 1"}]


def test_coco_rows_hand_case():
    label_map = np.array([[0, 1, 2], [3, 0, 10]], np.uint8)
    rows = encode_rows("batch_01_vt/0021.jpg", label_map, SMALL_COCO)
    assert rows == [{"image_id": "batch_01_vt/0021.jpg", "PredictionString": "0 1 2 3 0 10"}]
    full = encode_rows("x.jpg", np.zeros((256, 256), np.int64), PRESETS["coco"])[0]["PredictionString"]
    assert len(full.split()) == 256 * 256


def test_cassava_rows_hand_case():
    assert encode_rows("2216849948.jpg", np.int64(4), PRESETS["cassava"]) == [
        {"image_id": "2216849948.jpg", "label": 4}
    ]


# (preset, per-image input maker, sizes needed): encode several images, then validate against a sample built
# the competition's way.
def _clouds_sample(ids, preset=SMALL_CLOUDS):
    return pd.DataFrame({"Image_Label": [f"{i}_{c}" for i in ids for c in preset.classes], "EncodedPixels": "1 1"})


FORMAT_CASES = {
    "clouds": (SMALL_CLOUDS, lambda s: _masks(4, 2, 3, s), _clouds_sample),
    "demo": (get_preset("demo"), lambda s: _masks(4, 64, 96, s), lambda ids: _clouds_sample(ids, get_preset("demo"))),
    "severstal": (
        get_preset("severstal"),
        lambda s: _masks(4, 5, 7, s),
        lambda ids: pd.DataFrame({"ImageId": ids, "EncodedPixels": "1 35", "ClassId": "0"}),
    ),
    "dacon_building": (
        get_preset("dacon_building"),
        lambda s: _masks(1, 5, 7, s)[0] * (s % 2),  # every other image empty: "-1"
        lambda ids: pd.DataFrame({"img_id": ids, "mask_rle": "-1"}),
    ),
    "coco": (
        SMALL_COCO,
        lambda s: np.random.default_rng(s).integers(0, 11, (2, 3)),
        lambda ids: pd.DataFrame({"image_id": ids, "PredictionString": " ".join(["0"] * 6)}),
    ),
    "cassava": (get_preset("cassava"), lambda s: s % 5, lambda ids: pd.DataFrame({"image_id": ids, "label": "0"})),
}


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_encode_then_validate(case):
    preset, make, make_sample = FORMAT_CASES[case]
    ids = [f"img{i:03d}.jpg" for i in range(6)]
    sample = make_sample(ids)
    rows = [row for s, i in enumerate(ids) for row in encode_rows(i, make(s), preset)]
    sizes = {i: (5, 7) for i in ids}
    shuffled = _frame(rows).sample(frac=1.0, random_state=0)
    submission = order_like(shuffled, sample, preset)
    summary = validate_submission(submission, sample, preset, sizes=sizes)
    assert summary["rows"] == len(rows)
    assert summary["images"] == len(ids)
    fractions = summary.get("nonempty", summary.get("label_fraction"))
    assert all(0.0 <= f <= 1.0 for f in fractions.values())
    if preset.is_segmentation:
        assert summary["sizes_checked"]
    if case == "dacon_building":
        assert summary["nonempty"] == {"building": 0.5}
    if case == "cassava":
        assert summary["label_fraction"]["Cassava Bacterial Blight (CBB)"] == pytest.approx(2 / 6)


def test_masks_preset_uses_the_test_table():
    preset = get_preset("masks")
    test = pd.DataFrame({"image_id": ["0.png", "1.png"], "image_path": "", "height": [4, 6], "width": [5, 3]})
    rows = encode_rows("1.png", np.ones((6, 3), np.uint8), preset) + encode_rows(
        "0.png", np.eye(4, 5, dtype=np.uint8), preset
    )
    submission = order_like(_frame(rows), None, preset, image_ids=test)
    assert submission["img"].tolist() == ["0.png", "1.png"]
    summary = validate_submission(submission, None, preset, image_ids=test)
    assert summary == {"rows": 2, "images": 2, "sizes_checked": True, "nonempty": {"foreground": 1.0}}
    # 1.png's mask ends at pixel 18 of 6x3; as 0.png (4x5 = 20 pixels) would be fine, as 2x3 it is past the end
    with pytest.raises(SubmissionError, match=r"1\.png \(RLE run 0 \(start 1, length 18\) ends past") as e:
        validate_submission(
            submission, None, preset, image_ids=test["image_id"], sizes={"0.png": (4, 5), "1.png": (2, 3)}
        )
    assert e.value.ids == ["1.png"]
    with pytest.raises(SubmissionError, match=r"no \(height, width\) given for 1 image\(s\): 1\.png"):
        validate_submission(submission, None, preset, image_ids=["0.png", "1.png"], sizes={"0.png": (4, 5)})
    with pytest.raises(ValueError, match="give sample_submission or, where there is none, image_ids"):
        validate_submission(submission, None, preset)
    with pytest.raises(ValueError, match="not both"):
        order_like(submission, submission, preset, image_ids=test)


# ----------------------------------------------------------------------------------------- failure modes


def _good_clouds(ids=("a.jpg", "b.jpg", "c.jpg")):
    rows = [row for s, i in enumerate(ids) for row in encode_rows(i, _masks(4, 2, 3, s), SMALL_CLOUDS)]
    return _frame(rows), _clouds_sample(list(ids))


def _raises(df, sample, preset=SMALL_CLOUDS, match="", **kwargs) -> SubmissionError:
    with pytest.raises(SubmissionError, match=match) as e:
        validate_submission(df, sample, preset, **kwargs)
    return e.value


def test_wrong_columns():
    df, sample = _good_clouds()
    _raises(df.rename(columns={"EncodedPixels": "rle"}), sample, match=r"columns \['Image_Label', 'rle'\] differ")
    _raises(df[["EncodedPixels", "Image_Label"]], sample, match="differ from the expected")
    _raises(df.assign(extra=1), sample, match="differ from the expected")


def test_missing_id():
    df, sample = _good_clouds()
    err = _raises(df.drop(index=5), sample, match=r"lacks 1 of the 12 expected id\(s\) \(11 rows\): b\.jpg_Flower")
    assert err.ids == ["b.jpg_Flower"]


def test_extra_id():
    df, sample = _good_clouds()
    extra = pd.concat([df, _frame([{"Image_Label": "zzz.jpg_Fish", "EncodedPixels": ""}])], ignore_index=True)
    assert _raises(extra, sample, match=r"1 id\(s\) that are not expected.*zzz\.jpg_Fish").ids == ["zzz.jpg_Fish"]
    unknown_class = df.assign(Image_Label=df["Image_Label"].str.replace("c.jpg_Sugar", "c.jpg_Rain"))
    err = _raises(unknown_class, sample, match="lacks 1 of the 12")
    assert err.ids == ["c.jpg_Sugar"]


def test_wrong_order():
    df, sample = _good_clouds()
    swapped = df.iloc[[0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7]].reset_index(drop=True)
    err = _raises(swapped, sample, match=r"8 row\(s\) out of the sample's order.*row 4: c\.jpg_Fish where the sample")
    assert err.ids[0] == "c.jpg_Fish" and len(err.ids) == 8
    validate_submission(order_like(swapped, sample, SMALL_CLOUDS), sample, SMALL_CLOUDS)


def test_duplicate():
    df, sample = _good_clouds()
    dup = pd.concat([df, df.iloc[[6]]], ignore_index=True)
    assert _raises(dup, sample, match=r"submission: 1 duplicated id\(s\): b\.jpg_Gravel").ids == ["b.jpg_Gravel"]
    with pytest.raises(SubmissionError, match="sample submission: 1 duplicated"):
        validate_submission(df, pd.concat([sample, sample.iloc[[0]]]), SMALL_CLOUDS)


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ("6 2", r"b\.jpg_Gravel \(RLE run 0 \(start 6, length 2\) ends past the image of 6 pixels"),
        ("1 2 4", r"b\.jpg_Gravel \(RLE has an odd number of tokens \(3"),
        ("1 x", r"b\.jpg_Gravel \(RLE token 1 is not an integer"),
        ("0 2", r"b\.jpg_Gravel \(RLE run 0 has start < 1"),
        ("3 1 1 1", r"b\.jpg_Gravel \(RLE runs out of order"),
        ("-1", r"b\.jpg_Gravel \('-1' is not this competition's empty token ''\)"),
    ],
)
def test_bad_rle(rle, match):
    df, sample = _good_clouds()
    df.loc[6, "EncodedPixels"] = rle
    err = _raises(df, sample, match=r"1 of 12 row\(s\) with an invalid RLE: " + match)
    assert err.ids == ["b.jpg_Gravel"]


def test_rle_bounds_at_the_real_clouds_size():
    rows = encode_rows("a.jpg", np.ones((4, 350, 525), np.uint8), CLOUDS)
    assert rows[0]["EncodedPixels"] == f"1 {350 * 525}"
    sample = _clouds_sample(["a.jpg"], CLOUDS)
    validate_submission(_frame(rows), sample, CLOUDS)
    rows[3]["EncodedPixels"] = f"1 {350 * 525 + 1}"
    _raises(_frame(rows), sample, CLOUDS, match=r"a\.jpg_Sugar \(RLE run 0 .* 183750 pixels \(shape 350x525\)")


def test_dacon_empty_token():
    preset = get_preset("dacon_building")
    sample = pd.DataFrame({"img_id": ["T0", "T1"], "mask_rle": "-1"})
    df = pd.DataFrame({"img_id": ["T0", "T1"], "mask_rle": ["-1", ""]})
    err = _raises(df, sample, preset, match=r"T1 \(empty mask written as '', the competition's empty token is '-1'\)")
    assert err.ids == ["T1"]
    spaced = pd.DataFrame({"img_id": ["T0", "T1"], "mask_rle": ["-1", " -1 "]})
    assert validate_submission(spaced, sample, preset)["nonempty"] == {"building": 0.0}
    numeric = pd.DataFrame({"img_id": ["T0", "T1"], "mask_rle": [-1, -1]})  # a CSV read without dtype=str
    assert validate_submission(numeric, sample, preset)["nonempty"] == {"building": 0.0}


def test_severstal_class_id():
    preset = get_preset("severstal")
    rows = encode_rows("a.jpg", _masks(4, 2, 3), preset) + encode_rows("b.jpg", _masks(4, 2, 3, 1), preset)
    sample = pd.DataFrame({"ImageId": ["a.jpg", "b.jpg"], "EncodedPixels": "1 6", "ClassId": "0"})
    df = _frame(rows).astype(str)  # as read back from a CSV
    assert validate_submission(df, sample, preset, sizes={"a.jpg": (2, 3), "b.jpg": (2, 3)})["rows"] == 8
    df.loc[5, "ClassId"] = "5"
    err = _raises(df, sample, preset, match=r"ClassId outside 1\.\.4: b\.jpg_5 \(ClassId '5'\)")
    assert err.ids == ["b.jpg_5"]
    swapped = _frame(rows).iloc[[1, 0, 2, 3, 4, 5, 6, 7]]
    _raises(swapped, sample, preset, match=r"row 0: a\.jpg_2 where the sample has a\.jpg_1")


def test_class_ids_failures():
    ids = ["x.jpg", "y.jpg"]
    sample = pd.DataFrame({"image_id": ids, "PredictionString": "0 0 0 0 0 0"})
    df = sample.copy()
    df.loc[1, "PredictionString"] = "0 0 0 0 0"
    _raises(df, sample, SMALL_COCO, match=r"y\.jpg \(5 class ids, expected 2x3 = 6\)")
    df.loc[1, "PredictionString"] = "0 0 0 0 0 12"
    err = _raises(df, sample, SMALL_COCO, match=r"y\.jpg \(class id 12 at position 5 outside 0\.\.11\)")
    assert err.ids == ["y.jpg"]
    df.loc[1, "PredictionString"] = "0 0 0 0 0 1.5"
    _raises(df, sample, SMALL_COCO, match=r"y\.jpg \(token 5 is not an integer: '1\.5'\)")
    df.loc[1, "PredictionString"] = "0 0 0 0 0 4"  # class 4: Paper pack (0 Background, 1 UNKNOWN, 2 General trash)
    summary = validate_submission(df, sample, SMALL_COCO)
    assert summary["nonempty"]["Paper pack"] == 0.5 and summary["nonempty"]["Paper"] == 0.0


@pytest.mark.parametrize("label", ["5", "-1", "1.5", "", "CMD"])
def test_label_out_of_range(label):
    preset = get_preset("cassava")
    sample = pd.DataFrame({"image_id": ["1.jpg", "2.jpg"], "label": "0"})
    df = pd.DataFrame({"image_id": ["1.jpg", "2.jpg"], "label": ["4", label]})
    err = _raises(df, sample, preset, match=r"not an integer in 0\.\.4: 2\.jpg \(label ")
    assert err.ids == ["2.jpg"]


def test_many_offenders_are_counted():
    df, sample = _good_clouds(tuple(f"{i}.jpg" for i in range(10)))
    df["EncodedPixels"] = "1 99"
    err = _raises(df, sample, match=r"40 of 40 row\(s\) with an invalid RLE: 0\.jpg_Fish .*\(\+37 more\)")
    assert len(err.ids) == 40


# ----------------------------------------------------------------------------------------- encode errors


def test_encode_errors():
    with pytest.raises(ValueError, match=r"a\.jpg: masks must be \(K, H, W\) with K = 4"):
        encode_rows("a.jpg", np.zeros((3, 2, 3), np.uint8), SMALL_CLOUDS)
    with pytest.raises(ValueError, match=r"a\.jpg: masks are 2x4, preset 'clouds' is scored at 2x3"):
        encode_rows("a.jpg", np.zeros((4, 2, 4), np.uint8), SMALL_CLOUDS)
    with pytest.raises(ValueError, match=r"a\.jpg: masks must be integer or bool, got float32; threshold"):
        encode_rows("a.jpg", np.zeros((4, 2, 3), np.float32), SMALL_CLOUDS)
    with pytest.raises(ValueError, match=r"a\.jpg: masks must be in \{0, 1\}, got values 0\.\.255"):
        encode_rows("a.jpg", np.full((4, 2, 3), 255, np.uint8) * np.eye(2, 3, dtype=np.uint8), SMALL_CLOUDS)
    with pytest.raises(ValueError, match=r"a\.jpg: class indices must be in 0\.\.11, got 0\.\.12"):
        encode_rows("a.jpg", np.array([[0, 12, 0], [0, 0, 0]]), SMALL_COCO)
    with pytest.raises(ValueError, match=r"a\.jpg: label 5 outside 0\.\.4"):
        encode_rows("a.jpg", 5, PRESETS["cassava"])
    with pytest.raises(ValueError, match="one integer label"):
        encode_rows("a.jpg", 1.0, PRESETS["cassava"])


def test_round_trip_check(monkeypatch):
    monkeypatch.setattr(submit_module, "rle_encode", lambda mask, order, empty: "1 1")
    with pytest.raises(SubmissionError, match=r"a\.jpg / Fish: the RLE does not decode back") as e:
        encode_rows("a.jpg", np.zeros((4, 2, 3), np.uint8), SMALL_CLOUDS)
    assert e.value.ids == ["a.jpg"]
    assert len(encode_rows("a.jpg", np.zeros((4, 2, 3), np.uint8), SMALL_CLOUDS, check=False)) == 4


# ------------------------------------------------------------------------------------------- order, files


def test_order_like():
    df, sample = _good_clouds()
    shuffled = df.sample(frac=1.0, random_state=1)
    ordered = order_like(shuffled, sample, SMALL_CLOUDS)
    pd.testing.assert_frame_equal(ordered, df)
    with pytest.raises(SubmissionError, match=r"lacks 4 of the 12.*a\.jpg_Fish, a\.jpg_Flower") as e:
        order_like(shuffled[~shuffled["Image_Label"].str.startswith("a.jpg")], sample, SMALL_CLOUDS)
    assert e.value.ids == ["a.jpg_Fish", "a.jpg_Flower", "a.jpg_Gravel", "a.jpg_Sugar"]
    more, fewer = _good_clouds(("a.jpg", "b.jpg", "c.jpg", "d.jpg"))[0], sample
    with pytest.raises(SubmissionError, match=r"4 id\(s\) that are not expected.*d\.jpg_Fish"):
        order_like(more, fewer, SMALL_CLOUDS)
    pd.testing.assert_frame_equal(order_like(more, fewer, SMALL_CLOUDS, drop_extra=True), df)
    with pytest.raises(SubmissionError, match="duplicated"):
        order_like(pd.concat([df, df.iloc[[0]]]), sample, SMALL_CLOUDS)


def test_write_and_read_back(tmp_path):
    df, sample = _good_clouds()
    path = write_submission(df, tmp_path / "run" / "submission.csv")
    assert path.read_text().splitlines()[0] == "Image_Label,EncodedPixels"
    assert list(tmp_path.joinpath("run").iterdir()) == [path]  # no temporary file left behind
    pd.testing.assert_frame_equal(read_submission(path), df)  # "" stays ""
    sample_path = write_submission(sample, tmp_path / "sample.csv")
    assert validate_submission(path, sample_path, SMALL_CLOUDS)["rows"] == 12
    dacon = pd.DataFrame({"img_id": ["T0"], "mask_rle": ["-1"]})
    dacon_path = write_submission(dacon, tmp_path / "dacon.csv")
    assert read_submission(dacon_path)["mask_rle"].tolist() == ["-1"]
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        validate_submission(tmp_path / "nope.csv", sample, SMALL_CLOUDS)
    with pytest.raises(TypeError, match="DataFrame or a CSV path"):
        validate_submission(df.to_dict(), sample, SMALL_CLOUDS)


def test_read_sample_submission(tmp_path):
    assert read_sample_submission(PRESETS["masks"], tmp_path) is None
    with pytest.raises(FileNotFoundError, match="sample_submission.csv"):
        read_sample_submission(PRESETS["clouds"], tmp_path)
    (tmp_path / "sample_submission.csv").write_text("img_id,mask_rle\nT0,-1\n")
    with pytest.raises(SubmissionError, match=r"columns \['img_id', 'mask_rle'\] are not those of preset 'clouds'"):
        read_sample_submission(PRESETS["clouds"], tmp_path)
    assert read_sample_submission(PRESETS["dacon_building"], tmp_path)["mask_rle"].tolist() == ["-1"]


# --------------------------------------------------------------------------------------------- real samples


def test_real_clouds_sample(clouds_dir):
    sample = read_sample_submission(PRESETS["clouds"], clouds_dir)
    assert len(sample) == 14_792 and set(sample["EncodedPixels"]) == {"1 1"}
    summary = validate_submission(sample, sample, PRESETS["clouds"])
    assert summary == {
        "rows": 14_792,
        "images": 3_698,
        "sizes_checked": True,
        "nonempty": {"Fish": 1.0, "Flower": 1.0, "Gravel": 1.0, "Sugar": 1.0},
    }
    assert validate_submission(
        clouds_dir / "sample_submission.csv", clouds_dir / "sample_submission.csv", PRESETS["clouds"]
    )
    assert rle_decode("1 1", (350, 525)).sum() == 1
    ids = list(dict.fromkeys(sample["Image_Label"].str.rpartition("_")[0]))[:3]
    rows = [r for i in ids for r in encode_rows(i, np.zeros((4, 350, 525), np.uint8), PRESETS["clouds"])]
    assert [r["Image_Label"] for r in rows] == sample["Image_Label"].tolist()[:12]


def test_real_dacon_sample(dacon_dir):
    sample = read_sample_submission(PRESETS["dacon_building"], dacon_dir)
    assert len(sample) == 60_640
    summary = validate_submission(sample, sample, PRESETS["dacon_building"])
    assert summary["images"] == 60_640 and summary["nonempty"] == {"building": 0.0}
    assert not summary["sizes_checked"]  # Dacon has no preset-wide size: structure only without sizes
    sizes = dict.fromkeys(sample["img_id"], (224, 224))
    assert validate_submission(sample, sample, PRESETS["dacon_building"], sizes=sizes)["sizes_checked"]


def test_real_isbi_test_images(isbi_dir):
    test = load_competition(PRESETS["masks"], isbi_dir, split="test")
    rows = [r for i, h, w in test[["image_id", "height", "width"]].itertuples(index=False)
            for r in encode_rows(i, np.eye(h, w, dtype=np.uint8), PRESETS["masks"])]  # fmt: skip
    summary = validate_submission(
        _frame(rows), read_sample_submission(PRESETS["masks"], isbi_dir), PRESETS["masks"], image_ids=test
    )
    assert summary == {"rows": len(test), "images": len(test), "sizes_checked": True, "nonempty": {"foreground": 1.0}}


def test_real_cassava_sample(cassava_dir):
    sample = read_sample_submission(PRESETS["cassava"], cassava_dir)
    summary = validate_submission(sample, sample, PRESETS["cassava"])
    assert summary["rows"] == 1 and summary["label_fraction"]["Healthy"] == 1.0
