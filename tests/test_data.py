"""kitlib.data: item shapes per task, items read through the cache equal to the direct path, transforms,
normalisation lookups, bad input, and the real clouds image."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pandas as pd
import pytest
import segmentation_models_pytorch.encoders as smp_encoders
import torch

from kitlib import formats
from kitlib.cache import ImageCache, build_cache
from kitlib.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataset,
    SegmentationDataset,
    build_transforms,
    make_dataset,
    normalization_for,
)
from kitlib.presets import PRESETS, get_preset
from kitlib.rle import rle_encode

H, W = 24, 36  # synthetic image size
OUT_H, OUT_W = 16, 24  # training resolution of the tests

# preset name -> task: one preset per code path (RLE F order, RLE C order, mask files, multiclass, labels)
TASK_PRESETS = {
    "demo": "multilabel",
    "dacon_building": "binary",
    "masks": "binary",
    "coco": "multiclass",
    "cassava": "classification",
}


def make_table(folder, preset_name: str, n: int = 5, seed: int = 0, targets: bool = True):
    """A tiny competition table in the canonical layout, with the truth it was written from.

    Images are random RGB PNGs (lossless); masks are random rectangles (one image with all masks empty); ids
    have leading zeros ("0000003.png") to catch ids read back as numbers.

    Returns:
        (df, truth): truth[image_id] = {"image": (H, W, 3) uint8, "masks": (H, W, K) uint8 or None,
        "label_map": (H, W) uint8 for multiclass, "label": int for classification}.
    """
    preset = get_preset(preset_name)
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rows, truth = [], {}
    k = len(preset.target_classes)
    for i in range(n):
        image_id = f"{i:07d}.png"
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        path = folder / "images" / image_id
        assert cv2.imwrite(str(path), image[:, :, ::-1])
        row = {"image_id": image_id, "image_path": str(path), "height": H, "width": W}
        item = {"image": image, "masks": None}
        if preset.task == "classification":
            item["label"] = i % preset.num_classes
            if targets:
                row["label"] = item["label"]
        else:
            label_map = np.zeros((H, W), np.uint8)
            masks = np.zeros((H, W, k), np.uint8)
            for c in range(k):
                if i == 0:
                    break  # image 0: every mask empty
                y0, x0 = rng.integers(0, H - 4), rng.integers(0, W - 4)
                y1, x1 = rng.integers(y0 + 2, H + 1), rng.integers(x0 + 2, W + 1)
                if preset.task == "multiclass":
                    label_map[y0:y1, x0:x1] = c + 1  # later classes paint over earlier ones: disjoint
                else:
                    masks[y0:y1, x0:x1, c] = 1
            if preset.task == "multiclass":
                masks = (label_map[:, :, None] == np.arange(1, k + 1)).astype(np.uint8)
                item["label_map"] = label_map
            item["masks"] = masks
            if targets and preset.label_format == "mask_folder":
                mask_path = folder / "labels" / image_id
                assert cv2.imwrite(str(mask_path), masks[:, :, 0] * 255)
                row["mask_path"] = str(mask_path)
            elif targets:
                for c, name in enumerate(preset.target_classes):
                    row[name] = rle_encode(masks[:, :, c], order=preset.rle_order)
        rows.append(row)
        truth[image_id] = item
    return pd.DataFrame(rows), truth


def valid_transform():
    return build_transforms("valid", OUT_H, OUT_W, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------------------------------------------- items


@pytest.mark.parametrize("preset_name", list(TASK_PRESETS))
def test_item_keys_shapes_dtypes(tmp_path, preset_name):
    preset = get_preset(preset_name)
    df, _ = make_table(tmp_path, preset_name)
    ds = make_dataset(df, preset, transform=valid_transform())
    assert isinstance(ds, SegmentationDataset if preset.is_segmentation else ClassificationDataset)
    assert len(ds) == len(df)
    item = ds[1]
    assert item["image_id"] == "0000001.png"
    assert item["image"].shape == (3, OUT_H, OUT_W) and item["image"].dtype == torch.float32
    if preset.task == "classification":
        assert set(item) == {"image_id", "image", "label"}
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0 and int(item["label"]) == 1
    elif preset.task == "multiclass":
        assert set(item) == {"image_id", "image", "mask"}
        assert item["mask"].shape == (OUT_H, OUT_W) and item["mask"].dtype == torch.int64
        assert 0 <= int(item["mask"].min()) and int(item["mask"].max()) <= len(preset.target_classes)
    else:
        k = len(preset.target_classes)
        assert item["mask"].shape == (k, OUT_H, OUT_W) and item["mask"].dtype == torch.float32
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    # a batch collates into a dict of stacked tensors
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, OUT_H, OUT_W) and batch["image_id"][0] == "0000000.png"


@pytest.mark.parametrize("preset_name", list(TASK_PRESETS))
def test_items_equal_truth_without_transform(tmp_path, preset_name):
    """transform=None: the image in 0..1 and the masks exactly as written."""
    preset = get_preset(preset_name)
    df, truth = make_table(tmp_path, preset_name)
    ds = make_dataset(df, preset)
    for i, image_id in enumerate(df["image_id"]):
        item = ds[i]
        expected = torch.from_numpy(truth[image_id]["image"].transpose(2, 0, 1).astype(np.float32) / 255)
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=0)
        if preset.task == "multiclass":
            np.testing.assert_array_equal(item["mask"].numpy(), truth[image_id]["label_map"])
        elif preset.is_segmentation:
            np.testing.assert_array_equal(item["mask"].numpy(), truth[image_id]["masks"].transpose(2, 0, 1))
        else:
            assert int(item["label"]) == truth[image_id]["label"]


@pytest.mark.parametrize("preset_name", list(TASK_PRESETS))
def test_test_table_has_no_targets(tmp_path, preset_name):
    df, _ = make_table(tmp_path, preset_name, targets=False)
    item = make_dataset(df, PRESETS[preset_name], transform=build_transforms("test", OUT_H, OUT_W))[0]
    assert set(item) == {"image_id", "image"}


def test_wrong_dataset_class_and_bad_tables(tmp_path):
    df, _ = make_table(tmp_path, "demo")
    with pytest.raises(ValueError, match="use SegmentationDataset"):
        ClassificationDataset(df, PRESETS["demo"])
    with pytest.raises(ValueError, match="lacks \\['Blob'\\]"):
        SegmentationDataset(df.drop(columns="Blob"), PRESETS["demo"])
    with pytest.raises(ValueError, match="duplicated image_id"):
        SegmentationDataset(pd.concat([df, df.iloc[:1]]), PRESETS["demo"])
    with pytest.raises(ValueError, match="lacks columns \\['height'\\]"):
        SegmentationDataset(df.drop(columns="height"), PRESETS["demo"])
    cdf, _ = make_table(tmp_path / "c", "cassava")
    cdf.loc[2, "label"] = 7
    with pytest.raises(ValueError, match="image '0000002.png': label 7 not an int in 0..4"):
        ClassificationDataset(cdf, PRESETS["cassava"])


def test_missing_or_unreadable_image_names_id_and_path(tmp_path):
    df, _ = make_table(tmp_path, "demo")
    missing = df.copy()
    missing.loc[1, "image_path"] = str(tmp_path / "nowhere.png")
    with pytest.raises(FileNotFoundError, match=r"image '0000001.png' \(.*nowhere.png\)"):
        SegmentationDataset(missing, PRESETS["demo"])[1]
    with pytest.raises(FileNotFoundError, match="'0000001.png'.*nowhere.png"):
        build_cache(missing, PRESETS["demo"], tmp_path / "cache", OUT_H, OUT_W)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    bad = df.copy()
    bad.loc[2, "image_path"] = str(broken)
    with pytest.raises(ValueError, match=r"image '0000002.png' \(.*broken.png\)"):
        SegmentationDataset(bad, PRESETS["demo"])[2]
    with pytest.raises(ValueError, match="'0000002.png'.*broken.png"):
        build_cache(bad, PRESETS["demo"], tmp_path / "cache", OUT_H, OUT_W, num_workers=2)
    assert not (tmp_path / "cache").exists()


def test_malformed_rle_and_size_mismatch_name_the_image(tmp_path):
    df, _ = make_table(tmp_path, "demo")
    bad = df.copy()
    bad.loc[3, "Dots"] = "1 2 3"
    with pytest.raises(ValueError, match="masks of image '0000003.png'.*odd number of tokens"):
        SegmentationDataset(bad, PRESETS["demo"])[3]
    wrong = df.copy()
    wrong.loc[3, ["height", "width"]] = (W, H)  # masks decoded at the wrong size
    with pytest.raises(ValueError, match="image '0000003.png'.*36x24 .*masks are 24x36"):
        SegmentationDataset(wrong, PRESETS["demo"])[3]


# ------------------------------------------------------------------------------------------------ transforms


def test_transform_options_and_errors():
    with pytest.raises(ValueError, match=r"unknown stage 'val'; options: \['train', 'valid', 'test'\]"):
        build_transforms("val", 8, 8)
    with pytest.raises(ValueError, match=r"unknown augment 'heavy'; options: \['none', 'flips', 'light', 'clouds_1st'"):
        build_transforms("train", 8, 8, augment="heavy")
    image = np.full((10, 20, 3), 255, np.uint8)
    out = build_transforms("valid", 5, 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(image=image)["image"]
    assert out.shape == (5, 10, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)  # (1 - 0.5) / 0.25


def _aligned_pair(seed: int, k: int = 2):
    """An image whose red channel is 255 exactly where mask channel 0 is set."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((H, W, k), np.uint8)
    masks[3:11, 5:30, 0] = 1
    masks[15:22, 2:9, 0] = 1
    masks[:, : W // 3, 1] = 1
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    image[:, :, 0] = masks[:, :, 0] * 255
    return image, masks


def test_flips_keep_masks_binary_and_aligned():
    image, masks = _aligned_pair(0)
    transform = build_transforms("train", H, W, mean=(0, 0, 0), std=(1, 1, 1), augment="flips")
    seen = set()
    for _ in range(40):
        out = transform(image=image, mask=masks)
        assert out["mask"].shape == (H, W, 2) and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= {0, 1}
        np.testing.assert_array_equal(out["image"][:, :, 0] > 0.5, out["mask"][:, :, 0] == 1)
        seen.add(out["mask"].tobytes())
    assert len(seen) == 4  # identity, h-flip, v-flip, both


def test_light_augment_keeps_masks_binary_and_nearly_aligned():
    image, masks = _aligned_pair(1)
    transform = build_transforms("train", H, W, mean=(0, 0, 0), std=(1, 1, 1), augment="light")
    for _ in range(30):
        out = transform(image=image, mask=masks)
        assert set(np.unique(out["mask"])) <= {0, 1}
        agree = ((out["image"][:, :, 0] > 0.5) == (out["mask"][:, :, 0] == 1)).mean()
        assert agree > 0.93  # equal but for interpolated edge pixels of the affine warp
    label_map = masks[:, :, 0] + 2 * masks[:, :, 1] * (1 - masks[:, :, 0])  # multiclass: (H, W) indices 0..2
    out = transform(image=image, mask=label_map)
    assert out["mask"].shape == (H, W) and set(np.unique(out["mask"])) <= {0, 1, 2}


# ------------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("encoder_name", "encoder_weights", "mean", "std"),
    [
        ("resnet34", None, IMAGENET_MEAN, IMAGENET_STD),  # smp encoder
        ("efficientnet-b0", "advprop", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # smp, a second setting
        ("inceptionv4", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # smp, Inception normalisation
        ("tu-resnet34", None, IMAGENET_MEAN, IMAGENET_STD),  # timm through smp's tu- prefix
        ("tu-vit_base_patch16_224", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("inception_v3.tv_in1k", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # plain timm name with a tag
        ("tu-test_resnet.r160_in1k", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # smp's tiny test encoder
    ],
)
def test_normalization_for(encoder_name, encoder_weights, mean, std, hf_cache):
    if encoder_name in smp_encoders.encoders:  # smp 0.6 keeps them only in the hub config.json (its content here)
        setting = smp_encoders.encoders[encoder_name]["pretrained_settings"][encoder_weights or "imagenet"]
        body = json.dumps({"mean": list(mean), "std": list(std), "input_space": "RGB", "input_range": [0, 1]})
        hf_cache(setting["repo_id"], "config.json", body.encode(), revision=setting["revision"])
    got_mean, got_std = normalization_for(encoder_name, encoder_weights)
    np.testing.assert_allclose(got_mean, mean)
    np.testing.assert_allclose(got_std, std)


def test_normalization_unknown_encoder_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="kitlib.data"):
        assert normalization_for("no_such_encoder_xyz") == (IMAGENET_MEAN, IMAGENET_STD)
    assert "no_such_encoder_xyz" in caplog.text
    with pytest.raises(ValueError, match="has no weights 'instagram'; options"):
        normalization_for("resnet34", "instagram")


# ------------------------------------------------------------------------------------------------ real data


def test_real_clouds_image_through_dataset(clouds_dir, tmp_path):
    df = formats.load_competition(PRESETS["clouds"], clouds_dir, label_file="train_small.csv")
    assert df["image_id"].tolist() == ["0011165.jpg"]
    preset = get_preset("clouds")
    transform = build_transforms("valid", 320, 480, *normalization_for("resnet34"))
    direct = SegmentationDataset(df, preset, transform=transform)[0]
    cache = build_cache(df, preset, tmp_path / "clouds_320x480", 320, 480)
    cached = SegmentationDataset(df, preset, transform=transform, cache=cache)[0]
    assert direct["image"].shape == (3, 320, 480) and direct["mask"].shape == (4, 320, 480)
    torch.testing.assert_close(direct["image"], cached["image"], rtol=0, atol=0)
    torch.testing.assert_close(direct["mask"], cached["mask"], rtol=0, atol=0)
    # Fish and Flower cover 932312 and 1156107 of 1400x2100 pixels (test_rle); Gravel and Sugar are empty
    fractions = direct["mask"].mean(dim=(1, 2)).tolist()
    np.testing.assert_allclose(fractions[:2], [932312 / 2_940_000, 1156107 / 2_940_000], atol=0.01)
    assert fractions[2:] == [0.0, 0.0]
    assert ImageCache.open(cache.cache_dir, df, preset).meta["preset"] == "clouds"


def test_train_crop_keeps_image_and_mask_aligned_and_valid_stays_whole():
    image, masks = _aligned_pair(2)
    crop = (H // 2, W // 2)
    transform = build_transforms("train", H, W, mean=(0, 0, 0), std=(1, 1, 1), augment="none", crop=crop)
    for _ in range(10):
        out = transform(image=image, mask=masks)
        assert out["image"].shape[:2] == crop and out["mask"].shape == (*crop, 2)
        np.testing.assert_array_equal(out["image"][:, :, 0] > 0.5, out["mask"][:, :, 0] == 1)
    valid = build_transforms("valid", H, W, crop=crop)(image=image, mask=masks)
    assert valid["image"].shape[:2] == (H, W)
    with pytest.raises(ValueError, match="must fit"):
        build_transforms("train", H, W, crop=(H + 1, W))
