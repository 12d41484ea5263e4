"""kitlib.augment: pipelines as albumentations YAML, masks that follow every geometric transform, the real samples.

The alignment check (``test_masks_follow_every_geometric_transform``): the image is a binary blob picture (0 or 255,
the same in its 3 channels) and its mask is ``image > 127``. After a pipeline, the mask derived from the transformed
image must equal the transformed mask except in a 3-pixel band around the mask's edges, where linear (image) and
nearest (mask) interpolation may disagree (the frame's outer 3 pixels count as edge: a fill beyond the frame, cut
off by a later crop, shades them in the image only). Transforms that change pixel values without moving them would
make the image-derived mask meaningless (invert flips it, CLAHE and brightness shift the 127 threshold, dropout
blacks out holes), so the check runs on the pipeline's geometric part, ``_geometric``: the serialised pipeline with
every ``ImageOnlyTransform`` (colour) and every dropout removed, at any depth (inside OneOf too). The removed
transforms are checked on their own to leave the mask exactly as it was (``test_removed_transforms_leave_masks_alone``),
and a negative control (the image moved, the mask not) must fail the check, so it cannot pass trivially.
"""

from __future__ import annotations

import copy
import warnings

import cv2
import numpy as np
import pytest

from kitlib.augment import PIPELINE_DIR, PIPELINES, albumentations, compose, load_pipeline, save_pipeline
from kitlib.data import ClassificationDataset, SegmentationDataset, build_transforms
from kitlib.formats import load_competition
from kitlib.presets import PRESETS
from kitlib.stages import TrainConfig

A = albumentations()
SIZE = 384  # >= every pipeline's crop, so that crops (dacon_building's 224) and resizes all take effect
BAND = 3  # pixels either side of a mask edge where linear (image) and nearest (mask) resampling may disagree: a
# pipeline resamples up to 4 times in a row (resize, elastic, rotate, resized crop), each moving an edge up to a pixel


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(SIZE, SIZE, 3) uint8 image of smooth blobs (0 or 255, the same in every channel) and its (SIZE, SIZE, 1)
    mask = image > 127."""
    noise = np.random.default_rng(seed).normal(size=(SIZE, SIZE)).astype(np.float32)
    blobs = cv2.GaussianBlur(noise, (0, 0), 12) > 0
    image = np.repeat(blobs[:, :, None], 3, axis=2).astype(np.uint8) * 255
    return image, blobs[:, :, None].astype(np.uint8)


def _pixel_only(name: str) -> bool:
    cls = getattr(A, name)
    return issubclass(cls, A.ImageOnlyTransform) or issubclass(cls, A.CoarseDropout | A.GridDropout)


def _geometric(pipeline: dict) -> tuple[dict, list[dict]]:
    """The pipeline without its pixel-only transforms (colour, dropout) at any depth, and the removed ones."""
    kept, removed = copy.deepcopy(pipeline), []

    def strip(node: dict) -> None:
        if "transforms" in node:
            node["transforms"] = [t for t in node["transforms"] if not (_pixel_only(t["__class_fullname__"])
                                                                        and not removed.append(t))]  # fmt: skip
            for child in node["transforms"]:
                strip(child)

    for part in ("transform", "preprocess"):
        if part in kept:
            strip(kept[part])
    return kept, removed


def _misaligned(image: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """(pixels where image > 0.5 disagrees with the mask outside the edge band, the band's share of the image)."""
    derived, truth = image[:, :, 0] > 0.5, mask[:, :, 0] > 0
    kernel = np.ones((2 * BAND + 1, 2 * BAND + 1), np.uint8)
    band = cv2.dilate(truth.astype(np.uint8), kernel) != cv2.erode(truth.astype(np.uint8), kernel)
    band[:BAND], band[-BAND:], band[:, :BAND], band[:, -BAND:] = True, True, True, True  # an edge just outside the
    # frame (a border fill that a later crop cut off) shades the image's last pixels, not the mask's
    return int(((derived != truth) & ~band).sum()), float(band.mean())


def _train(augment, **kwargs):
    return build_transforms("train", SIZE, SIZE, mean=(0, 0, 0), std=(1, 1, 1), augment=augment, **kwargs)


def test_registry_matches_the_files_and_each_is_albumentations_own():
    assert sorted(p.stem for p in PIPELINE_DIR.glob("*.yaml")) == sorted(PIPELINES)
    for name in PIPELINES:
        path = PIPELINE_DIR / f"{name}.yaml"
        assert path.read_text().startswith(f"# kitlib augmentation pipeline {name!r}"), "the header cites the source"
        assert isinstance(A.load(str(path), data_format="yaml"), A.Compose)  # albumentations reads the file itself


@pytest.mark.parametrize("name", ["none", "flips", "light"])
def test_former_names_give_the_former_transforms(name):
    """The kit's former fixed pipelines (build_transforms before pipelines were files), built by hand: the same
    transforms, and the same draws for the same seed."""
    former = [A.Resize(SIZE, SIZE, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)]
    if name != "none":
        former += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if name == "light":
        former += [A.Affine(translate_percent=(-0.1, 0.1), scale=(0.8, 1.2), rotate=(-10, 10),
                            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
                   A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5)]  # fmt: skip
    former = A.Compose([*former, A.Normalize()])
    now = build_transforms("train", SIZE, SIZE, augment=name)
    assert A.to_dict(now) == A.to_dict(former)
    image, mask = _blobs(0)
    now.set_random_seed(3), former.set_random_seed(3)
    for _ in range(5):
        a, b = now(image=image, mask=mask), former(image=image, mask=mask)
        np.testing.assert_array_equal(a["image"], b["image"]), np.testing.assert_array_equal(a["mask"], b["mask"])


@pytest.mark.parametrize("name", list(PIPELINES))
def test_masks_follow_every_geometric_transform(name):
    geometric, _ = _geometric(load_pipeline(name))
    transform = _train(geometric)
    transform.set_random_seed(0)
    moved = False
    for seed in range(6):
        image, mask = _blobs(seed)
        out = transform(image=image, mask=mask)
        assert set(np.unique(out["mask"])) <= {0, 1}
        bad, band = _misaligned(out["image"], out["mask"])
        assert bad == 0, f"{name}: {bad} pixels misaligned outside the {BAND}-pixel edge band (draw {seed})"
        assert band < 0.35, f"{name}: the edge band covers {band:.0%} of the image: the check would say little"
        moved |= out["mask"].shape != mask.shape or not np.array_equal(out["mask"], mask)
    assert moved or name == "none", f"{name}: no draw moved the mask; the check tested nothing"


def test_the_alignment_check_catches_a_mask_left_behind():
    """Negative control: shift the image by 6 pixels and not the mask; the check must see it."""
    image, mask = _blobs(1)
    shifted = np.roll(image, 6, axis=1).astype(np.float32) / 255
    assert _misaligned(shifted, mask)[0] > 100
    assert _misaligned(image.astype(np.float32) / 255, mask)[0] == 0


@pytest.mark.parametrize("name", [n for n in PIPELINES if _geometric(load_pipeline(n))[1]])
def test_removed_transforms_leave_masks_alone(name):
    """Every transform the alignment check leaves out changes pixel values only: alone, at p=1, the mask it returns is
    the mask it was given."""
    image, mask = _blobs(2)
    for t in _geometric(load_pipeline(name))[1]:
        one = A.from_dict({"transform": {**t, "p": 1.0}})
        out = A.Compose([one], seed=0)(image=image, mask=mask)
        np.testing.assert_array_equal(out["mask"], mask, err_msg=f"{name}: {t['__class_fullname__']}")
        assert out["image"].shape == image.shape


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_pipeline_runs_on_the_real_clouds_image_without_warnings(name, clouds_dir):
    """Each pipeline on 0011165.jpg (1400x2100) with its four real RLE masks, resized to 320x480 as the clouds recipe;
    albumentations warns about nothing (a deprecated class or argument would)."""
    df = load_competition(PRESETS["clouds"], clouds_dir, label_file="train_small.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stage in ("train", "valid"):
            dataset = SegmentationDataset(df, PRESETS["clouds"], build_transforms(stage, 320, 480, augment=name))
            item = dataset[0]
            assert item["image"].ndim == 3 and item["image"].shape[0] == 3 and item["image"].isfinite().all()
            assert item["mask"].shape == (4, *item["image"].shape[1:]) and set(item["mask"].unique().tolist()) <= {0, 1}
            if stage == "valid":
                assert tuple(item["image"].shape[1:]) == (320, 480)


def test_cassava_pipeline_on_a_real_cassava_image(cassava_dir):
    df = load_competition(PRESETS["cassava"], cassava_dir, drop_missing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        item = ClassificationDataset(df, PRESETS["cassava"], build_transforms("train", 600, 800, augment="cassava"))[0]
    assert tuple(item["image"].shape) == (3, 512, 512)  # the pipeline's RandomResizedCrop 512


def test_dacon_pipeline_crops_224_at_native_scale(dacon_dir):
    """The real 1024x1024 train image without the kit's resize (native_scale): 224x224 train crops; a 224x224 test
    tile stays 224x224."""
    image = cv2.cvtColor(cv2.imread(str(dacon_dir / "train_img" / "TRAIN_0000.png")), cv2.COLOR_BGR2RGB)
    tile = cv2.cvtColor(cv2.imread(str(dacon_dir / "test_img" / "TEST_00000.png")), cv2.COLOR_BGR2RGB)
    mask = np.zeros(image.shape[:2], np.uint8)
    out = build_transforms("train", 1024, 1024, augment="dacon_building", resize=False)(image=image, mask=mask)
    assert out["image"].shape == (224, 224, 3) and out["mask"].shape == (224, 224)
    valid = build_transforms("valid", 1024, 1024, augment="dacon_building", resize=False)
    assert valid(image=image)["image"].shape == (1024, 1024, 3) and valid(image=tile)["image"].shape == (224, 224, 3)


def test_preprocess_applies_at_every_stage():
    """clouds_2nd_clahe's CLAHE is preprocessing: the valid and test images get it too; its flips stay train-only."""
    image = np.random.default_rng(0).integers(60, 120, (64, 64, 3), dtype=np.uint8)
    for stage in ("valid", "test"):
        plain = build_transforms(stage, 64, 64, augment="none")(image=image)["image"]
        clahe = build_transforms(stage, 64, 64, augment="clouds_2nd_clahe")(image=image)["image"]
        expected = A.Compose([A.CLAHE(clip_limit=(2.0, 2.0), p=1.0), A.Normalize()])(image=image)["image"]
        assert not np.allclose(plain, clahe)
        np.testing.assert_allclose(clahe, expected)
    assert build_transforms("valid", 64, 64, augment="clouds_2nd_clahe").transforms[-2].__class__ is A.CLAHE


def test_bad_augment_values_fail_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"unknown augment 'heavy'; options: \['none', 'flips'.*or a path"):
        load_pipeline("heavy")
    with pytest.raises(FileNotFoundError, match="no such pipeline file"):
        load_pipeline(str(tmp_path / "mine.yaml"))
    (tmp_path / "list.yaml").write_text("- HorizontalFlip\n")
    with pytest.raises(ValueError, match="list.yaml: not an albumentations pipeline"):
        load_pipeline(str(tmp_path / "list.yaml"))
    (tmp_path / "typo.yaml").write_text("transform: {__class_fullname__: HorizontalFlipp, p: 0.5}\n")
    with pytest.raises(ValueError, match="typo.yaml: transform: albumentations cannot build it"):
        load_pipeline(str(tmp_path / "typo.yaml"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['preprocessing'\]"):
        load_pipeline({"transform": {"__class_fullname__": "Compose", "transforms": []}, "preprocessing": {}})


def test_a_users_pipeline_file_is_saved_in_config_json(tmp_path):
    """augment=<path>: the pipeline itself goes into config.json; the config rebuilds it with the file gone, and an
    edited file is another run."""
    path = save_pipeline(tmp_path / "mine.yaml", A.Compose([A.Transpose(p=0.5)]), header="my own")
    assert path.read_text().startswith("# my own\n")
    cfg = TrainConfig.from_notebook(preset="demo", augment=str(path))
    assert compose(cfg.augment_pipeline).transforms[0].__class__ is A.Transpose
    saved = cfg.save(tmp_path / "fold0" / "config.json", run_id=cfg.run_id())
    path.unlink()
    back = TrainConfig.load(saved)
    assert back.augment_pipeline == cfg.augment_pipeline and back.run_id() == cfg.run_id()
    assert _train(back.augment_pipeline).transforms[1].__class__ is A.Transpose
    save_pipeline(path, A.Compose([A.Transpose(p=1.0)]))
    assert TrainConfig.from_notebook(preset="demo", augment=str(path)).run_id() != cfg.run_id()
    assert back.replace(augment="flips").augment_pipeline == load_pipeline("flips")  # the saved one is for mine.yaml
    named = TrainConfig.from_notebook(preset="demo", augment="flips")
    assert named.run_id() == named.replace(native_scale=False).run_id()


def test_eda_draws_the_recipes_pipeline_on_real_images(isbi_dir):
    """00_eda's grid: the masks preset's recipe pipeline on two real ISBI images, validation view + 2 train draws."""
    from kitlib import plots
    from kitlib.stages import EdaConfig

    cfg = EdaConfig.from_notebook(preset="masks", data_dir=str(isbi_dir))
    assert cfg.augment_pipeline == load_pipeline(cfg.recipe["augment"])
    df = load_competition(cfg.preset, cfg.data_path)
    fig = plots.plot_augmentations(df, cfg.preset, "unet_elastic", 256, 256, n=2, repeats=2)
    assert len(fig.axes) == 6 and fig.axes[1].get_title().endswith("train draw 1 256x256")
