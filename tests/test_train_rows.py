"""Train-only rows (``kitlib.train_rows``): an extra labelled set of another preset (class map) and pseudo-labels from
test probabilities join every fold's training set and never its held-out rows, OOF or CV; the pseudo masks'
low-confidence pixels hold IGNORE_INDEX and carry no gradient through any of the kit's segmentation losses; soft
pseudo rows reach the loss as soft targets; 40_submit's save_probs writes what the submission was decoded from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kitlib import engine, inference, train
from kitlib.cache import ImageCache
from kitlib.demo import make_demo
from kitlib.demo_classify import make_classification_demo
from kitlib.folds import make_folds, save_folds
from kitlib.formats import SOFT_LABEL_COLUMN, TARGET_FILE_COLUMN, load_competition
from kitlib.losses import create_loss, create_recipe
from kitlib.mixes import BatchMix
from kitlib.postprocess import decode, default_postprocess
from kitlib.predictions import record_predictions
from kitlib.presets import IGNORE_INDEX, PRESETS
from kitlib.pseudo import ignore_pixels, pseudo_labels, pseudo_masks
from kitlib.stages import TrainConfig
from kitlib.train_rows import add_train_rows, class_map, train_rows

SEG = dict(encoder_name="tu-test_resnet.r160_in1k", model_kwargs={"decoder_channels": [16, 16, 8, 8, 8]}, height=64,
           width=96, batch_size=4, epochs=1, device="cpu", num_workers=0)  # fmt: skip
CLS = dict(model_name="test_resnet.r160_in1k", encoder_weights="none", height=32, width=32, batch_size=8, epochs=1,
           device="cpu", num_workers=0, channels_last=False, augment="flips", warmup_epochs=0.0)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- pure parts


def test_pseudo_masks_hold_ignore_index_exactly_where_confidence_is_low():
    p = np.array([[[0.97, 0.5], [0.05, 0.8]], [[0.02, 0.95], [0.5, 0.08]]], np.float32)  # (K=2, 2, 2)
    mask = pseudo_masks(p, 0.9, multiclass=False)
    assert mask.shape == (2, 2, 2) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[..., 0], [[1, IGNORE_INDEX], [0, IGNORE_INDEX]])
    np.testing.assert_array_equal(mask[..., 1], [[0, 1], [IGNORE_INDEX, 0]])
    u8 = pseudo_masks(np.round(p * 255).astype(np.uint8), 0.9, multiclass=False)  # the test_probs.npy format
    np.testing.assert_array_equal(u8, mask)
    assert (pseudo_masks(p, 0.5, multiclass=False) != IGNORE_INDEX).all()  # 0.5: every pixel labelled
    softmax = np.array([[[0.9, 0.3]], [[0.05, 0.4]], [[0.05, 0.3]]], np.float32)  # (C=3, 1, 2)
    np.testing.assert_array_equal(pseudo_masks(softmax, 0.8, multiclass=True), [[0, IGNORE_INDEX]])


def test_pseudo_labels_keep_the_confident_rows():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.08, 0.92], [0.3, 0.7]], np.float16)
    keep, labels, soft = pseudo_labels(probs, 0.9)
    assert keep.tolist() == [True, False, True, False] and labels.tolist() == [0, 1]
    np.testing.assert_allclose(soft, probs[keep].astype(np.float32) / probs[keep].astype(np.float32).sum(1)[:, None])
    assert pseudo_labels(probs, 0.0)[0].all()


SEG_LOSSES = {
    "multilabel": [lambda: create_loss("bce"), lambda: create_loss("dice", mode="multilabel"),
                   lambda: create_loss("lovasz", mode="multilabel"), lambda: create_loss("focal", mode="multilabel"),
                   lambda: create_recipe("clouds_6th"), lambda: create_loss("jaccard", mode="multilabel"),
                   lambda: create_loss("ssim", mode="multilabel"), lambda: create_loss("tversky", mode="multilabel")],
    "multiclass": [lambda: create_loss("soft_ce", mode="multiclass"), lambda: create_loss("dice", mode="multiclass"),
                   lambda: create_loss("lovasz", mode="multiclass"), lambda: create_recipe("trash_ce_dice_ssim"),
                   lambda: create_recipe("trash_1st_triple")],
}  # fmt: skip


@pytest.mark.parametrize("mode", list(SEG_LOSSES))
def test_ignored_pixels_carry_no_gradient(mode):
    """The gradient at the logits of IGNORE_INDEX pixels is exactly zero for every loss; elsewhere it is not, and the
    same pixels with a real target do get a gradient (negative control)."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 2, 3, 16, 16
    logits0 = torch.randn(n, c, h, w, generator=g)
    ignored = torch.zeros(n, h, w, dtype=torch.bool)
    ignored[:, 4:10, 3:12] = True
    if mode == "multiclass":
        real = torch.randint(0, c, (n, h, w), generator=g)
        target = torch.where(ignored, torch.tensor(IGNORE_INDEX), real)
        pixel_ignored = ignored[:, None].expand(n, c, h, w)
    else:
        real = (torch.rand(n, c, h, w, generator=g) > 0.5).float()
        target = torch.where(ignored[:, None], torch.tensor(float(IGNORE_INDEX)), real)
        pixel_ignored = ignored[:, None].expand(n, c, h, w)
    for make in SEG_LOSSES[mode]:
        loss_fn = make()
        for tgt, zero_expected in ((target, True), (real, False)):
            logits = logits0.clone().requires_grad_(True)
            loss = engine.compute_loss(loss_fn, logits, tgt)
            assert torch.isfinite(loss)
            loss.backward()
            grad = logits.grad
            assert grad[~pixel_ignored].abs().sum() > 0, loss_fn
            if zero_expected:
                assert (grad[pixel_ignored] == 0).all(), f"{loss_fn}: gradient at ignored pixels"
            else:
                assert grad[pixel_ignored].abs().sum() > 0, f"{loss_fn}: control without ignored pixels"
    same_logits, same_target = ignore_pixels(logits0, real)  # no ignored pixel: passed through as they are
    assert same_logits is logits0 and same_target is real


def test_batch_mix_mixes_soft_rows_linearly():
    torch.manual_seed(0)
    np.random.seed(3)  # noqa: NPY002 - BatchMix draws from numpy's global state, as the training loop seeds it
    images = torch.rand(4, 3, 8, 8)
    soft = torch.softmax(torch.randn(4, 5), dim=1)
    mixed, targets = BatchMix("mixup", 5, prob=1.0)(images, soft)
    lam = float((mixed[0] - images[3]).flatten()[0] / (images[0] - images[3]).flatten()[0])
    torch.testing.assert_close(targets, lam * soft + (1 - lam) * soft.flip(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))


def test_class_map_errors_name_the_class_and_the_file():
    demo, masks = PRESETS["demo"], PRESETS["masks"]
    assert class_map({"foreground": "Blob"}, masks, demo, "x.csv") == {0: 3}
    with pytest.raises(ValueError, match=r"x.csv: extra_class_map key 'sky' is not a class of preset 'masks'"):
        class_map({"sky": "Blob"}, masks, demo, "x.csv")
    with pytest.raises(ValueError, match=r"x.csv: extra_class_map value 'Clouds' is not a class of preset 'demo'"):
        class_map({"foreground": "Clouds"}, masks, demo, "x.csv")
    with pytest.raises(
        ValueError, match=r"y.csv: classes \['Healthy'\] of preset 'cassava' are not in extra_class_map"
    ):
        class_map({i: "Plain" for i in range(4)}, PRESETS["cassava"], PRESETS["demo_classify"], "y.csv")
    with pytest.raises(ValueError, match="give extra_class_map"):
        class_map(None, masks, demo, "x.csv")


# ---------------------------------------------------------------------------------------------------- segmentation


def _write_mask_folder(folder: Path, n: int) -> list[np.ndarray]:
    """A tiny competition in the ``masks`` preset's layout (train/image, train/label): a bright square per image."""
    (folder / "train" / "image").mkdir(parents=True)
    (folder / "train" / "label").mkdir(parents=True)
    rng, out = np.random.default_rng(1), []
    for i in range(n):
        image = rng.integers(0, 80, (64, 96, 3), dtype=np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        mask[10 + i : 40 + i, 20:60] = 255
        image[mask > 0] = 220
        cv2.imwrite(str(folder / "train" / "image" / f"m{i}.png"), image)
        cv2.imwrite(str(folder / "train" / "label" / f"m{i}.png"), mask)
        out.append(mask > 127)
    return out


@pytest.fixture(scope="module")
def seg_exp(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train_rows_seg")
    data = make_demo(root / "data", n_train=12, n_test=4, height=64, width=96)
    masks = _write_mask_folder(root / "extra", 3)
    folds = make_folds(load_competition(PRESETS["demo"], data), PRESETS["demo"], n_folds=2, seed=0)
    save_folds(folds, root / "artifacts" / "seg" / "folds.csv")
    return {"root": root, "data": data, "extra": root / "extra", "extra_masks": masks}


def _seg_config(seg_exp, exp="seg", fold=0, **kwargs) -> TrainConfig:
    return TrainConfig.from_notebook(
        preset="demo",
        exp=exp,
        fold=fold,
        data_dir=str(seg_exp["data"]),
        artifacts_root=str(seg_exp["root"] / "artifacts"),
        **{**SEG, **kwargs},
    )


def _recording(monkeypatch) -> list[list[str]]:
    """Every dataset train_fold builds, as its ids (the training set first, then the held-out rows)."""
    seen: list[list[str]] = []
    real = train.make_dataset

    def record(df, *args, **kwargs):
        seen.append(df["image_id"].astype(str).tolist())
        return real(df, *args, **kwargs)

    monkeypatch.setattr(train, "make_dataset", record)
    return seen


def test_extra_rows_of_another_preset_train_in_every_fold_and_never_in_the_oof(seg_exp, monkeypatch):
    folds_path = seg_exp["root"] / "artifacts" / "seg" / "folds.csv"
    folds_bytes = folds_path.read_bytes()
    folds = pd.read_csv(folds_path, dtype={"image_id": str})
    extra = dict(extra_data=str(seg_exp["extra"]), extra_preset="masks", extra_class_map={"foreground": "Blob"})
    seen = _recording(monkeypatch)
    for fold in (0, 1):
        cfg = _seg_config(seg_exp, fold=fold, **extra)
        result = train.train_fold(cfg)
        train_ids, valid_ids = seen[-2], seen[-1]
        extra_ids = {f"extra/m{i}.png" for i in range(3)}
        assert extra_ids <= set(train_ids) and not extra_ids & set(valid_ids)
        oof_ids = pd.read_csv(cfg.fold_dir / "oof_ids.csv", dtype=str)["image_id"].tolist()
        assert oof_ids == folds.loc[folds["fold"] == fold, "image_id"].tolist()  # the competition's rows only
        assert np.load(cfg.fold_dir / "oof_probs.npy").shape[0] == len(oof_ids)
        assert result["scores"] is not None
    assert folds_path.read_bytes() == folds_bytes
    cache = ImageCache.open(seg_exp["root"] / "artifacts" / "cache" / "demo_64x96_rows-seg")  # not the plain cache's
    for i, truth in enumerate(seg_exp["extra_masks"]):
        m = np.asarray(cache.masks[cache.row(f"extra/m{i}.png")])
        assert m.shape == (64, 96, 4)
        np.testing.assert_array_equal(m[..., 3], truth)  # foreground -> Blob, the other channels empty
        assert not m[..., :3].any()


def test_pseudo_masks_train_and_stay_out_of_the_oof(seg_exp, monkeypatch):
    test = load_competition(PRESETS["demo"], seg_exp["data"], split="test")
    rng = np.random.default_rng(2)
    probs = rng.integers(0, 256, (len(test), 4, 64, 96), dtype=np.uint8)  # the scoring size, p x 255
    source = seg_exp["root"] / "artifacts" / "teacher"
    source.mkdir(parents=True)
    np.save(source / "test_probs.npy", probs)
    pd.DataFrame({"image_id": test["image_id"]}).to_csv(source / "test_ids.csv", index=False)
    cfg = _seg_config(seg_exp, exp="seg", pseudo_from="teacher", pseudo_threshold=0.8)
    rows = train_rows(cfg)
    assert rows["image_id"].tolist() == [f"pseudo/{i}" for i in test["image_id"]]
    for i, path in enumerate(rows[TARGET_FILE_COLUMN]):
        with np.load(path) as f:
            mask = f["mask"]
        p = probs[i].astype(np.float64).transpose(1, 2, 0) / 255
        np.testing.assert_array_equal(mask == IGNORE_INDEX, np.maximum(p, 1 - p) < 0.8)
        np.testing.assert_array_equal(mask[mask != IGNORE_INDEX], (p >= 0.5)[mask != IGNORE_INDEX])
    seen = _recording(monkeypatch)
    run_id = train.fold_run_id(cfg)
    assert run_id != train.fold_run_id(_seg_config(seg_exp, exp="seg"))
    train.train_fold(cfg)
    oof_ids = pd.read_csv(cfg.fold_dir / "oof_ids.csv", dtype=str)["image_id"].tolist()
    assert not any(i.startswith("pseudo/") for i in oof_ids + seen[-1])
    np.save(source / "test_probs.npy", 255 - probs)  # a new round of test probabilities: a new run of the fold
    assert train.fold_run_id(cfg) != run_id
    assert {f"pseudo/{i}" for i in test["image_id"]} <= set(seen[-2])
    cache = ImageCache.open(cfg.artifacts_dir / "cache" / "demo_64x96_rows-seg")
    cached = np.asarray(cache.masks[cache.row(rows["image_id"][0])])  # 64x96 images: nearest keeps 255
    with np.load(rows[TARGET_FILE_COLUMN][0]) as f:
        np.testing.assert_array_equal(cached, f["mask"])


def test_save_probs_records_what_the_submission_decodes(seg_exp, tmp_path):
    cfg = _seg_config(seg_exp, exp="plain")
    (cfg.exp_dir).mkdir(parents=True, exist_ok=True)
    (cfg.exp_dir / "folds.csv").write_bytes((seg_exp["root"] / "artifacts" / "seg" / "folds.csv").read_bytes())
    train.train_fold(cfg)
    members = inference.load_members(cfg.artifacts_dir, "plain", folds=[0], device="cpu")
    test = load_competition(PRESETS["demo"], seg_exp["data"], split="test")
    batches = inference.predict_test(members, test, PRESETS["demo"], batch_size=3)
    recorded = record_predictions(batches, tmp_path / "test_probs.npy", test["image_id"].tolist(), "uint8")
    result = inference.make_submission(recorded, test, PRESETS["demo"], seg_exp["data"], tmp_path / "sub.csv",
                                       keep_masks=test["image_id"].tolist())  # fmt: skip
    probs = np.load(tmp_path / "test_probs.npy")
    ids = pd.read_csv(tmp_path / "test_ids.csv", dtype=str)["image_id"].tolist()
    assert ids == test["image_id"].tolist() and probs.shape == (4, 4, 64, 96) and probs.dtype == np.uint8
    fresh = np.concatenate([p.numpy() for _, p, _ in inference.predict_test(members, test, PRESETS["demo"])])
    np.testing.assert_array_equal(probs, np.round(fresh * 255).astype(np.uint8))
    for i, image_id in enumerate(ids):  # decoding the recorded probabilities gives the submission's masks
        masks = decode(fresh[i : i + 1], PRESETS["demo"], default_postprocess(PRESETS["demo"]))[0]
        np.testing.assert_array_equal(result.masks[image_id], masks.transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------------- classification


@pytest.fixture(scope="module")
def cls_exp(tmp_path_factory) -> dict:
    """The classification demo (demo_classify) as the competition; a Cassava-layout extra set of 10 images."""
    root = tmp_path_factory.mktemp("train_rows_cls")
    data = make_classification_demo(root / "data", n_train=20, n_test=6, height=32, width=32)
    extra = root / "cassava2019"
    (extra / "train_images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        cv2.imwrite(str(extra / "train_images" / f"{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pd.DataFrame({"image_id": [f"{i}.png" for i in range(10)], "label": [i % 5 for i in range(10)]}).to_csv(
        extra / "train.csv", index=False
    )
    folds = make_folds(load_competition(PRESETS["demo_classify"], data), PRESETS["demo_classify"], n_folds=2, seed=0)
    save_folds(folds, root / "artifacts" / "c" / "folds.csv")
    return {"root": root, "data": data, "extra": extra}


def _cls_config(cls_exp, fold=0, **kwargs) -> TrainConfig:
    return TrainConfig.from_notebook(
        preset="demo_classify",
        exp="c",
        fold=fold,
        data_dir=str(cls_exp["data"]),
        artifacts_root=str(cls_exp["root"] / "artifacts"),
        **{**CLS, **kwargs},
    )


CASSAVA_TO_DEMO = {"Cassava Bacterial Blight (CBB)": "Stripes", "Cassava Brown Streak Disease (CBSD)": "Dots",
                   "2": "Checker", "Cassava Mosaic Disease (CMD)": 3, "Healthy": None}  # fmt: skip


def test_extra_classification_rows_with_a_class_map(cls_exp, monkeypatch):
    seen = _recording(monkeypatch)
    folds = pd.read_csv(cls_exp["root"] / "artifacts" / "c" / "folds.csv", dtype={"image_id": str})
    kept = {f"extra/{i}.png": i % 5 for i in range(10) if i % 5 != 4}  # Healthy dropped
    for fold in (0, 1):
        cfg = _cls_config(cls_exp, fold=fold, extra_data=str(cls_exp["extra"]), extra_preset="cassava",
                          extra_class_map=CASSAVA_TO_DEMO)  # fmt: skip
        full, train_df, valid_df = train.fold_tables(cfg)
        full, train_df = add_train_rows(cfg, full, train_df)
        extra = train_df[train_df["image_id"].str.startswith("extra/")]
        assert dict(zip(extra["image_id"], extra["label"], strict=True)) == kept  # CBB 0 -> Stripes 0, ... CMD -> 3
        train.train_fold(cfg)
        assert set(kept) <= set(seen[-2]) and not set(kept) & set(seen[-1])
        oof_ids = pd.read_csv(cfg.fold_dir / "oof_ids.csv", dtype=str)["image_id"].tolist()
        assert oof_ids == folds.loc[folds["fold"] == fold, "image_id"].tolist()


def test_soft_pseudo_rows_reach_the_loss_as_soft_targets(cls_exp, monkeypatch):
    test = load_competition(PRESETS["demo_classify"], cls_exp["data"], split="test")
    confident = [0, 2, 5]
    probs = np.full((len(test), 5), 0.1, np.float32)  # max 0.6 ...
    probs[confident] = 0.02  # ... or 0.92
    for i in range(len(test)):
        probs[i, i % 5] = 0.92 if i in confident else 0.6
    source = cls_exp["root"] / "artifacts" / "cls_teacher"
    source.mkdir(parents=True)
    np.save(source / "test_probs.npy", probs.astype(np.float16))
    pd.DataFrame({"image_id": test["image_id"]}).to_csv(source / "test_ids.csv", index=False)
    cfg = _cls_config(cls_exp, pseudo_from="cls_teacher", pseudo_threshold=0.8, pseudo_soft=True, batch_size=32)
    rows = train_rows(cfg)
    assert rows["image_id"].tolist() == [f"pseudo/{test['image_id'][i]}" for i in confident]
    assert rows["label"].tolist() == [i % 5 for i in confident]
    targets = []
    real = train.build_loss

    def recording_loss(cfg, model=None):
        loss = real(cfg, model)

        def call(logits, target):
            targets.append(target.detach().clone())
            return loss(logits, target)

        return call

    monkeypatch.setattr(train, "build_loss", recording_loss)
    train.train_fold(cfg)
    first = targets[0]  # one training batch: every training row, soft (the competition's one-hot)
    assert first.dtype == torch.float32 and first.shape[1] == 5
    soft = np.stack(rows[SOFT_LABEL_COLUMN].to_list())
    matched = [np.isclose(first.numpy(), row, atol=1e-6).all(axis=1).any() for row in soft]
    assert all(matched) and not np.isin(soft.max(1), [1.0]).any()
    oof_ids = pd.read_csv(cfg.fold_dir / "oof_ids.csv", dtype=str)["image_id"].tolist()
    assert not any(i.startswith("pseudo/") for i in oof_ids)


def test_errors_name_what_is_missing(cls_exp, seg_exp):
    with pytest.raises(FileNotFoundError, match="extra_data .*: no folder"):
        train_rows(_cls_config(cls_exp, extra_data=str(cls_exp["root"] / "nowhere")))
    with pytest.raises(FileNotFoundError, match=r"no label file .*other.csv"):
        train_rows(_cls_config(cls_exp, extra_data=str(cls_exp["extra"]), extra_label_file="other.csv",
                               extra_preset="cassava", extra_class_map=CASSAVA_TO_DEMO))  # fmt: skip
    with pytest.raises(ValueError, match=r"train.csv: classes \['Healthy'\] of preset 'cassava' are not in"):
        train_rows(
            _cls_config(
                cls_exp,
                extra_data=str(cls_exp["extra"]),
                extra_preset="cassava",
                extra_class_map={k: v for k, v in CASSAVA_TO_DEMO.items() if k != "Healthy"},
            )
        )
    with pytest.raises(ValueError, match=r"extra_class_map value 'Clouds' is not a class of preset 'demo_classify'"):
        train_rows(_cls_config(cls_exp, extra_data=str(cls_exp["extra"]), extra_preset="cassava",
                               extra_class_map={**CASSAVA_TO_DEMO, "Healthy": "Clouds"}))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"nobody/test_probs.npy not found; .*40_submit.py -p exp nobody -p "
                                                r"save_probs true"):  # fmt: skip
        train_rows(_seg_config(seg_exp, pseudo_from="nobody"))
    with pytest.raises(ValueError, match="pseudo_soft gives soft labels of a classification preset"):
        _seg_config(seg_exp, pseudo_from="teacher", pseudo_soft=True)
    with pytest.raises(ValueError, match="extra_class_map describe extra_data"):
        _seg_config(seg_exp, extra_class_map={"a": 0})
