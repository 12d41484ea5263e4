"""Gating masks with a separate presence classifier: its dataset and training (``arch="classifier"``), its OOF in
``20_oof`` (PR curves, thresholds), the gate search with its probabilities (``gate_exp``), and ``40_submit`` running
its folds beside the segmentation models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kitlib import gate, inference, oof, predictions
from kitlib.data import PresenceDataset, SegmentationDataset, make_dataset
from kitlib.demo import make_demo
from kitlib.experiment import load_experiment
from kitlib.formats import class_presence, load_competition
from kitlib.io import read_json
from kitlib.models import create_classifier, save_model
from kitlib.postprocess import PostProcess, apply_postprocess
from kitlib.presets import PRESETS
from kitlib.scoring import Scorer
from kitlib.stages import TrainConfig
from kitlib.submit import read_submission, validate_submission
from tests.test_inference import fake_fold
from tests.test_notebooks import run_notebook
from tests.test_train import TINY_CLASSIFIER, train_tiny

CLASSIFIER = "test_resnet.r160_in1k"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("presence") / "data", n_train=16, n_test=4, height=64, width=96)


# ---------------------------------------------------------------------------------------------------- dataset


def test_presence_dataset_targets_are_the_classes_with_pixels(demo):
    df = load_competition(PRESETS["demo"], demo)
    seg = SegmentationDataset(df, PRESETS["demo"])
    pres = make_dataset(df, PRESETS["demo"].presence())
    assert isinstance(pres, PresenceDataset) and len(pres) == len(seg)
    truth = class_presence(df, PRESETS["demo"])
    for i in range(len(df)):
        item = pres[i]
        assert item["mask"].shape == (4,) and item["mask"].dtype == torch.float32
        np.testing.assert_array_equal(item["mask"].numpy().astype(bool), truth[i])
        assert torch.equal(item["image"], seg[i]["image"]) and item["image_id"] == seg[i]["image_id"]
    with pytest.raises(ValueError, match="binary/multilabel"):
        make_dataset(df.head(0), PRESETS["coco"].presence())


def test_presence_dataset_exposes_the_transform_the_loop_reseeds(demo):
    """engine.fit and the loader workers reseed ``dataset.transform`` every epoch: the wrapper must show the wrapped
    dataset's, or a resumed presence classifier draws other augmentations than an uninterrupted one."""
    from kitlib.data import build_transforms

    transform = build_transforms("train", 32, 48, augment="flips")
    pres = make_dataset(load_competition(PRESETS["demo"], demo), PRESETS["demo"].presence(), transform)
    assert pres.transform is transform


def test_presence_dataset_follows_the_transform():
    """A crop that leaves a class out also drops its label."""

    class Crop:
        def __call__(self, image, mask=None):
            return {"image": image[:, :4], "mask": None if mask is None else mask[:, :4]}

    class Fake(SegmentationDataset):
        def __init__(self):  # two classes: class 0 on the left half, class 1 on the right half
            self.preset = __import__("kitlib.presets", fromlist=["get_preset"]).get_preset("demo")
            self.transform = Crop()

        def __len__(self):
            return 1

        def __getitem__(self, i):
            masks = np.zeros((8, 8, 4), np.uint8)
            masks[:, :4, 0] = 1
            masks[:, 4:, 1] = 1
            out = self.transform(np.zeros((8, 8, 3), np.uint8), masks)
            return {"image_id": "x", "image": torch.zeros(3, 8, 4),
                    "mask": torch.from_numpy(out["mask"].transpose(2, 0, 1).astype(np.float32))}  # fmt: skip

    assert PresenceDataset(Fake())[0]["mask"].tolist() == [1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------- training


def test_scorer_counts_presence_logits_as_one_pixel_masks():
    scorer = Scorer(PRESETS["demo"].presence())
    logits = torch.tensor([[2.0, -1.0, 3.0, -2.0], [-1.0, -1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    scorer.update(logits > 0, target)  # the predictions: probability > 0.5
    result = scorer.result()
    # right: (1,1,0,1) and (1,0,1,1) -> 6 of 8; Dice per pair is 1 when right (both empty scores 1), else 0
    assert result["pixel_error"] == pytest.approx(2 / 8)
    assert result["dice"] == pytest.approx(6 / 8)


def test_train_config_for_a_presence_classifier():
    cfg = TrainConfig.from_notebook(preset="clouds", arch="classifier")
    assert cfg.model_preset.task == "presence" and cfg.loss == "bce" and cfg.monitor == "valid_loss"
    assert not cfg.aux_head
    assert cfg.model_kwargs == {} and cfg.model_name == "resnet34"  # the recipe's encoder, a timm name
    assert (cfg.height, cfg.width) == (320, 480)  # the segmentation recipe's size
    assert TrainConfig.from_notebook(preset="clouds", arch="classifier", loss="focal").loss == "focal"
    assert TrainConfig.from_notebook(preset="clouds").model_preset.task == "multilabel"
    with pytest.raises(ValueError, match="binary/multilabel"):
        TrainConfig.from_notebook(preset="coco", arch="classifier")


@pytest.fixture(scope="module")
def exps(demo, tmp_path_factory) -> dict:
    """A tiny segmentation experiment "seg" and a presence classifier "cls" on other folds, 2 folds each."""
    root = tmp_path_factory.mktemp("presence_artifacts")
    train_tiny(demo, root, "seg", epochs=1)
    done = train_tiny(demo, root, "cls", folds_seed=1, **TINY_CLASSIFIER)
    return {"root": root, "data": demo, "done": done}


def test_train_fold_of_a_presence_classifier(exps):
    root, data = exps["root"], exps["data"]
    for fold in (0, 1):
        fold_dir = root / "cls" / f"fold{fold}"
        probs, ids = predictions.read_oof(fold_dir)
        assert probs.shape == (8, 4) and probs.dtype == np.float32 and 0 <= probs.min() <= probs.max() <= 1
        assert not (fold_dir / "oof_cls_probs.npy").exists()
        df = load_competition(PRESETS["demo"], data).set_index("image_id").loc[ids].reset_index()
        truth = class_presence(df, PRESETS["demo"])
        scores = read_json(fold_dir / "scores.json")
        assert scores["presence_accuracy"] == pytest.approx(float(np.mean((probs > 0.5) == truth)))
        assert exps["done"][fold]["monitor"] == "valid_loss"
        assert read_json(fold_dir / "config.json")["params"]["arch"] == "classifier"
    assert load_experiment(root / "cls").model_preset.task == "presence"
    assert load_experiment(root / "seg").model_preset.task == "multilabel"
    # the checkpoint is a plain timm classifier with one output per class
    model = inference.load_fold_models(root / "cls")[0].model
    assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 4)


# ---------------------------------------------------------------------------------------------------- OOF and search


def test_gate_class_probs_reorders_to_the_other_experiments_ids(exps):
    root = exps["root"]
    predictions.gather_oof(root / "cls")
    probs, ids, _ = predictions.read_gathered(root / "cls")
    other = list(reversed(ids))
    got = oof.gate_class_probs(root / "cls", other)
    np.testing.assert_array_equal(got, np.asarray(probs, np.float32)[::-1])
    with pytest.raises(ValueError, match="no OOF row for 1 id.*nope"):
        oof.gate_class_probs(root / "cls", [*ids, "nope"])
    with pytest.raises(ValueError, match="not a presence classifier"):
        oof.gate_class_probs(root / "seg", ids)


def test_presence_report_by_hand():
    probs = np.array([[0.9, 0.2], [0.8, 0.45], [0.3, 0.7], [0.1, 0.4]])
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    report = gate.presence_report(probs, labels, ["a", "b"]).set_index("class")
    # both classes separate perfectly at some cut, but at 0.5 class b misses the positive at 0.45
    assert report.loc["a", "f1"] == 1.0 and report.loc["b", "f1"] == 1.0
    assert 0.3 <= report.loc["a", "threshold"] < 0.8 and 0.4 <= report.loc["b", "threshold"] < 0.45
    assert report.loc["a", "accuracy@0.5"] == 1.0 and report.loc["b", "accuracy@0.5"] == 0.75
    assert report.loc["overall", "accuracy@0.5"] == pytest.approx(7 / 8)
    assert report.loc["overall", "n_positive"] == 4 and report.loc["b", "n_positive"] == 2


def test_search_gate_with_a_separate_classifier():
    """Noisy masks on images without the class: a classifier that knows presence wins, and the PostProcess names
    its experiment; applying it with the classifier's probs reproduces the OOF score."""
    probs = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    masks = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    probs[:2, 0, :4, :4] = 200
    masks[:2, 0, :4, :4] = 1
    probs[2:, 0, :3, :3] = 250  # false blobs more confident than the true ones: the top-K gate cannot drop them
    gate_probs = np.array([[0.9], [0.8], [0.1], [0.2]], dtype=np.float32)
    base = PostProcess(threshold=[0.5], min_area=[0])
    with pytest.raises(ValueError, match="gate_exp"):
        gate.search_gate(probs, masks, PRESETS["masks"], base, top_k=4, gate_probs=gate_probs)
    params, table = gate.search_gate(
        probs, masks, PRESETS["masks"], base, top_k=4, gate_probs=gate_probs, gate_exp="cls"
    )
    assert "classifier cls" in set(table["gate"]) and params.gate_exp == "cls"
    assert params.meta["gate_dice"] == pytest.approx(1.0)
    assert table.loc[table["gate"] == "top-4", "dice"].max() < 1.0  # top-K alone cannot remove the false blobs
    gated = [apply_postprocess(p, params, g) for p, g in zip(probs, gate_probs, strict=True)]
    assert [int(g.sum()) for g in gated] == [16, 16, 0, 0]
    again = PostProcess.from_json(params.to_json())
    assert again.gate_exp == "cls" and again == params
    with pytest.raises(ValueError, match="classifier_threshold"):
        PostProcess(threshold=[0.5], gate_exp="cls")


# ---------------------------------------------------------------------------------------------------- inference


def test_predict_test_takes_the_gate_probs_from_the_classifier(tmp_path, demo):
    fake_fold(tmp_path / "seg", 0, "demo")
    for fold, seed in ((0, 1), (1, 2)):
        torch.manual_seed(seed)
        config = dict(model_name=CLASSIFIER, num_classes=4)
        fold_dir = tmp_path / "cls" / f"fold{fold}"
        save_model(fold_dir / "best.pt", create_classifier(**config), config)
        TrainConfig.from_notebook(preset="demo", fold=fold, arch="classifier", model_name=CLASSIFIER, height=32,
                                  width=48, amp="off").save(fold_dir / "config.json")  # fmt: skip
    params = PostProcess(threshold=[0.5] * 4, classifier_threshold=[0.5] * 4, gate_exp="cls")
    gate = inference.load_gate_models(tmp_path, params)
    assert [m.fold for m in gate] == [0, 1] and (gate[0].height, gate[0].width) == (32, 48)
    assert inference.load_gate_models(tmp_path, dataclasses.replace(params, gate_exp=None)) is None
    with pytest.raises(ValueError, match="must be a presence classifier"):
        inference.load_gate_models(tmp_path, dataclasses.replace(params, gate_exp="seg"))
    test_df = load_competition(PRESETS["demo"], demo, split="test")
    members = inference.load_members(tmp_path, "seg")
    with pytest.raises(ValueError, match="a presence classifier goes in gate_models"):
        next(inference.predict_test([gate[0]], test_df, PRESETS["demo"]))
    with pytest.raises(ValueError, match="gate_models takes presence classifiers"):
        next(inference.predict_test(members, test_df, PRESETS["demo"], gate_models=members[0][0]))
    out = list(inference.predict_test(members, test_df, PRESETS["demo"], batch_size=3, gate_models=gate))
    plain = list(inference.predict_test(members, test_df, PRESETS["demo"], batch_size=3))
    # the masks are the segmentation model's alone; the class probs the mean of the classifier folds' sigmoids
    for (_, p, c), (_, q, _) in zip(out, plain, strict=True):
        torch.testing.assert_close(p, q)
        assert c.shape == (len(p), 4)
    from kitlib.data import build_transforms

    tf = build_transforms("test", 32, 48, gate[0].mean, gate[0].std)
    image = torch.stack([make_dataset(test_df, PRESETS["demo"], tf)[i]["image"] for i in range(3)])
    with torch.no_grad():
        want = (torch.sigmoid(gate[0].model(image)) + torch.sigmoid(gate[1].model(image))) / 2
    torch.testing.assert_close(out[0][2], want)


# ---------------------------------------------------------------------------------------------------- notebooks


@pytest.mark.slow
def test_notebooks_gate_with_a_presence_classifier(exps, tmp_path):
    """20_oof on the classifier (PR curves, cv.json), 20_oof on the segmentation experiment with gate_exp, and
    40_submit running the classifier's folds when the search chose it."""
    root, data = exps["root"], exps["data"]
    common = dict(preset="demo", data_dir=data, artifacts_root=root)
    nb = run_notebook("20_oof", tmp_path / "cls.ipynb", exp="cls", **common)
    cv = read_json(root / "cls" / "cv.json")
    assert cv["metric"] == "presence_f1" and 0 <= cv["cv"] <= 1 and set(cv["per_class"]) == {
        "Stripes", "Dots", "Checker", "Blob"}  # fmt: skip
    assert not (root / "cls" / "postprocess.json").exists()
    assert "20_oof -p gate_exp cls" in json.dumps(nb)
    run_notebook("20_oof", tmp_path / "seg.ipynb", exp="seg", thresholds="0.3,0.5", min_areas="0,20", gate_exp="cls",
                 **common)  # fmt: skip
    post = PostProcess.from_json(root / "seg" / "postprocess.json")
    assert "top-" in (tmp_path / "seg.ipynb").read_text() and "classifier cls" in (tmp_path / "seg.ipynb").read_text()
    # force the classifier gate so that 40_submit has to run it, whatever the tiny models' search chose
    forced = dataclasses.replace(post, classifier_threshold=[0.5] * 4, top_k=None, head_weight=None, gate_exp="cls")
    forced.to_json(root / "seg" / "postprocess.json")
    out = tmp_path / "submission.csv"
    nb = run_notebook("40_submit", tmp_path / "40.ipynb", exp="seg", device="cpu", submission_path=out, n_folds=2,
                      **common)  # fmt: skip
    assert "cls/fold0/best.pt" in json.dumps(nb) and "cls/fold1/best.pt" in json.dumps(nb)
    validate_submission(out, Path(data) / "sample_submission.csv", PRESETS["demo"])
    # what the notebook wrote is the gated prediction: recompute it here
    members = inference.load_members(root, "seg")
    gate = inference.load_gate_models(root, forced)
    test_df = load_competition(PRESETS["demo"], data, split="test")
    batches = inference.predict_test(members, test_df, PRESETS["demo"], gate_models=gate)
    want = inference.make_submission(batches, test_df, PRESETS["demo"], data, tmp_path / "want.csv", forced)
    pd.testing.assert_frame_equal(read_submission(out), read_submission(tmp_path / "want.csv"))
    assert not want.submission.empty
