"""notebooks/40_submit.py under papermill: a tiny trained demo experiment, and the real Understanding Clouds test
image (1400x2100) predicted by an untrained tiny model into a validated 350x525 column-major submission."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from kitlib.demo import make_demo
from kitlib.models import create_model, save_model
from kitlib.presets import PRESETS
from kitlib.rle import rle_decode
from kitlib.stages import TrainConfig
from kitlib.submit import read_submission, validate_submission
from tests.test_notebooks import _images_shown, run_notebook
from tests.test_train import train_tiny

pytestmark = pytest.mark.slow


def test_submit_demo(tmp_path):
    data = make_demo(tmp_path / "data", n_train=12, n_test=5, height=64, width=96)
    root = tmp_path / "artifacts"
    train_tiny(data, root, "e", epochs=1)
    out = tmp_path / "runs" / "e" / "submission.csv"
    nb = run_notebook("40_submit", tmp_path / "40.ipynb", exp="e", preset="demo", data_dir=data, n_folds=2,
                      artifacts_root=root, device="cpu", tta="hflip", submission_path=out)  # fmt: skip
    summary = validate_submission(out, data / "sample_submission.csv", PRESETS["demo"])
    assert summary["images"] == 5 and summary["rows"] == 20
    assert _images_shown(nb) >= 1
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert f"submission: {out}" in text and "fold0/best.pt" in text and "fold1/best.pt" in text


def test_submit_real_clouds_image(tmp_path, clouds_dir):
    data = tmp_path / "clouds"
    (data / "test_images").mkdir(parents=True)
    image = "00a47f4.jpg"
    (data / "test_images" / image).symlink_to(clouds_dir / "test_images" / image)
    classes = ("Fish", "Flower", "Gravel", "Sugar")
    pd.DataFrame({"Image_Label": [f"{image}_{c}" for c in classes], "EncodedPixels": "1 1"}).to_csv(
        data / "sample_submission.csv", index=False
    )
    # an untrained tiny clouds model with a classification head, as 10_train would leave it
    torch.manual_seed(0)
    config = dict(arch="unet", encoder_name="tu-test_resnet.r160_in1k", classes=4, aux_head=True,
                  decoder_channels=(16, 16, 8, 8, 8))  # fmt: skip
    fold_dir = tmp_path / "artifacts" / "fake" / "fold0"
    save_model(fold_dir / "best.pt", create_model(**config), config)
    TrainConfig.from_notebook(preset="clouds", fold=0, arch="unet", aux_head=True, height=64, width=96, amp="off",
                              encoder_name=config["encoder_name"]).save(fold_dir / "config.json")  # fmt: skip
    out = tmp_path / "sub.csv"
    run_notebook("40_submit", tmp_path / "40.ipynb", exp="fake", preset="clouds", data_dir=data, n_folds=1,
                 artifacts_root=tmp_path / "artifacts", device="cpu", submission_path=out)  # fmt: skip
    sub = read_submission(out)
    assert sub["Image_Label"].tolist() == [f"{image}_{c}" for c in classes]
    summary = validate_submission(out, data / "sample_submission.csv", PRESETS["clouds"])
    assert summary["images"] == 1 and summary["sizes_checked"]
    # every RLE decodes at 350x525 in column-major order; the untrained model predicts some foreground
    masks = [rle_decode(r, (350, 525), order="F") for r in sub["EncodedPixels"]]
    assert all(m.shape == (350, 525) for m in masks) and sum(int(m.sum()) for m in masks) > 0
    assert np.array_equal(masks[0], rle_decode(sub["EncodedPixels"][0], (525, 350), order="C").T)
    shutil.rmtree(tmp_path / "artifacts")
