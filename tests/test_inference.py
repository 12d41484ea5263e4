"""kitlib.inference on untrained tiny models: fold loading, ensemble averaging across input sizes, per-image scoring
sizes, default and saved post-processing, and a validated submission on the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kitlib import inference, postprocess
from kitlib.demo import make_demo
from kitlib.formats import load_competition
from kitlib.io import write_json
from kitlib.models import create_model, save_model
from kitlib.postprocess import PostProcess, decode
from kitlib.presets import PRESETS, get_preset
from kitlib.stages import TrainConfig
from kitlib.submit import SubmissionError, read_submission, validate_submission

ENCODER = "tu-test_resnet.r160_in1k"
DECODER = (16, 16, 8, 8, 8)


def fake_fold(exp_dir: Path, fold: int, preset: str, height: int = 64, width: int = 96, seed: int = 0) -> Path:
    """An untrained tiny Unet saved as ``fold<k>/best.pt`` with the ``config.json`` params 10_train writes."""
    torch.manual_seed(seed)
    classes = get_preset(preset).num_classes
    config = dict(arch="unet", encoder_name=ENCODER, classes=classes, decoder_channels=DECODER)
    model = create_model(**config)
    fold_dir = exp_dir / f"fold{fold}"
    save_model(fold_dir / "best.pt", model, config, extra={"fold": fold})
    TrainConfig.from_notebook(preset=preset, fold=fold, arch="unet", encoder_name=ENCODER, height=height, width=width,
                              amp="off").save(fold_dir / "config.json")  # fmt: skip
    return fold_dir


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo") / "data", n_train=2, n_test=5, height=64, width=96)


def test_load_fold_models_reads_every_fold_and_its_params(tmp_path):
    fake_fold(tmp_path / "e", 0, "demo")
    fake_fold(tmp_path / "e", 2, "demo", height=32, width=64)
    models = inference.load_fold_models(tmp_path / "e")
    assert [m.fold for m in models] == [0, 2]
    assert (models[1].height, models[1].width) == (32, 64) and not models[0].model.training
    assert len(models[0].mean) == 3 and models[0].config.amp == "off"
    assert [m.fold for m in inference.load_fold_models(tmp_path / "e", folds=[2])] == [2]
    with pytest.raises(FileNotFoundError, match="fold1/best.pt"):
        inference.load_fold_models(tmp_path / "e", folds=[1])
    with pytest.raises(FileNotFoundError, match="no fold<k>/best.pt"):
        inference.load_fold_models(tmp_path)


def test_ensemble_weights(tmp_path):
    assert inference.ensemble_weights(tmp_path, "a") == [("a", 1.0)]
    write_json(tmp_path / "ens" / "weights.json", {"exps": ["a", "b"], "weights": [3, 1]})
    assert inference.ensemble_weights(tmp_path, "a", "ens") == [("a", 0.75), ("b", 0.25)]
    write_json(tmp_path / "bad" / "weights.json", {"exps": ["a"], "weights": [1, 2]})
    with pytest.raises(ValueError, match="same non-zero length"):
        inference.ensemble_weights(tmp_path, "a", "bad")
    with pytest.raises(FileNotFoundError, match="missing/weights.json"):
        inference.ensemble_weights(tmp_path, "a", "missing")


def test_predict_test_averages_folds_and_experiments(tmp_path, demo):
    """Probabilities at the submission size; the ensemble is the weighted mean of each experiment's fold mean, also
    when the experiments read the images at different sizes."""
    fake_fold(tmp_path / "a", 0, "demo", seed=1)
    fake_fold(tmp_path / "a", 1, "demo", seed=2)
    fake_fold(tmp_path / "b", 0, "demo", height=32, width=64, seed=3)
    test_df = load_competition(PRESETS["demo"], demo, split="test")
    a, b = inference.load_fold_models(tmp_path / "a"), inference.load_fold_models(tmp_path / "b")

    def run(members, **kwargs):
        out = list(inference.predict_test(members, test_df, PRESETS["demo"], batch_size=2, **kwargs))
        assert [len(ids) for ids, _, _ in out] == [2, 2, 1]
        return torch.cat([p for _, p, _ in out]), [i for ids, _, _ in out for i in ids]

    pa0, ids = run([a[0]])
    pa1, _ = run([a[1]])
    pb, _ = run([b[0]])
    assert ids == test_df["image_id"].tolist() and pa0.shape == (5, 4, 64, 96) and pa0.dtype == torch.float32
    both, _ = run([(a, 0.75), (b, 0.25)])
    torch.testing.assert_close(both, 0.75 * (pa0 + pa1) / 2 + 0.25 * pb)
    flipped, _ = run([a[0]], tta="hflip")
    assert flipped.shape == pa0.shape and not torch.equal(flipped, pa0)
    with pytest.raises(ValueError, match="trained for preset 'demo'"):
        next(inference.predict_test([a[0]], test_df, PRESETS["clouds"]))


def test_make_submission_default_and_saved_postprocess(tmp_path, demo):
    fake_fold(tmp_path / "a", 0, "demo")
    test_df = load_competition(PRESETS["demo"], demo, split="test")
    members = inference.load_members(tmp_path, "a")
    assert postprocess.load_postprocess(tmp_path / "a", PRESETS["demo"]).threshold == [0.5] * 4
    out = tmp_path / "runs" / "a" / "submission.csv"
    result = inference.make_submission(inference.predict_test(members, test_df, PRESETS["demo"], batch_size=4), test_df,
                                       PRESETS["demo"], demo, out, keep_masks=["t0001.jpg"])  # fmt: skip
    sample = pd.read_csv(demo / "sample_submission.csv")
    written = read_submission(out)
    assert written["Image_Label"].tolist() == sample["Image_Label"].tolist()
    assert validate_submission(out, demo / "sample_submission.csv", PRESETS["demo"])["images"] == 5
    assert result.summary["rows"] == 20 and result.masks["t0001.jpg"].shape == (64, 96, 4)
    # a saved post-processing with threshold 1.0 empties every mask
    PostProcess(threshold=[1.0] * 4, min_area=[0] * 4).to_json(tmp_path / "a" / "postprocess.json")
    params = postprocess.load_postprocess(tmp_path / "a", PRESETS["demo"])
    inference.make_submission(
        inference.predict_test(members, test_df, PRESETS["demo"]), test_df, PRESETS["demo"], demo, out, params
    )
    assert (read_submission(out)["EncodedPixels"] == "").all()


def test_make_submission_refuses_missing_images(tmp_path, demo):
    fake_fold(tmp_path / "a", 0, "demo")
    test_df = load_competition(PRESETS["demo"], demo, split="test")
    members = inference.load_members(tmp_path, "a")
    out = tmp_path / "sub.csv"
    with pytest.raises(SubmissionError, match="lacks 4 of the 20"):
        inference.make_submission(
            inference.predict_test(members, test_df.head(4), PRESETS["demo"]), test_df, PRESETS["demo"], demo, out
        )
    assert not out.exists()


def test_masks_preset_is_scored_at_each_images_own_size(tmp_path):
    """No submission size (ISBI, Carvana): each image's probabilities come back at its own size, also within one
    batch of differently sized images, and the C-order RLEs validate against those sizes."""
    import cv2

    data = tmp_path / "masks"
    (data / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (64, 64), "b.png": (40, 72)}.items():
        cv2.imwrite(str(data / "test" / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    fake_fold(tmp_path / "m", 0, "masks", height=32, width=32)
    test_df = load_competition(PRESETS["masks"], data, split="test")
    members = inference.load_members(tmp_path, "m")
    (ids, probs, cls_probs), = inference.predict_test(members, test_df, PRESETS["masks"], batch_size=2)  # fmt: skip
    assert ids == ["a.png", "b.png"] and cls_probs is None
    assert [tuple(p.shape) for p in probs] == [(1, 64, 64), (1, 40, 72)]
    batches = inference.predict_test(members, test_df, PRESETS["masks"])
    result = inference.make_submission(batches, test_df, PRESETS["masks"], data, tmp_path / "sub.csv")
    assert result.summary["sizes_checked"] and list(result.submission["img"]) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("preset", "probs", "expected"),
    [("demo", np.array([[[0.2, 0.7]], [[0.5, 0.51]], [[0.9, 0.0]], [[0.0, 0.0]]]), [[[0, 1]], [[0, 1]], [[1, 0]],
                                                                                    [[0, 0]]]),
     ("coco", np.eye(12)[[3, 0]].T.reshape(12, 1, 2), [[3, 0]]),
     ("cassava", np.array([0.1, 0.6, 0.1, 0.1, 0.1]), 1)],
)  # fmt: skip
def test_decode_one_image(preset, probs, expected):
    out = decode(probs.astype(np.float32)[None], PRESETS[preset])[0]
    np.testing.assert_array_equal(out, np.array(expected))


def test_a_truncated_best_pt_is_named(tmp_path):
    """Issue 15 item 9: a damaged best.pt fails naming the file (inference, and 10_train's OOF through read_torch)."""
    fold_dir = fake_fold(tmp_path / "a", 0, "demo")
    data = (fold_dir / "best.pt").read_bytes()
    (fold_dir / "best.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=rf"{fold_dir / 'best.pt'}: not a readable model checkpoint, truncated"):
        inference.load_members(tmp_path, "a")
