"""kitlib.demo_classify: determinism, layout, the label rule and imbalance, the hidden-truth scorer, and the demo
registry of kitlib.demo (``--preset``, ``--list``, ``--score``)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from kitlib.demo import DEMOS, make_preset_demo, score_demo
from kitlib.demo_classify import CLASS_PRIORS, make_classification_demo, score_classification_submission
from kitlib.formats import load_competition
from kitlib.presets import PRESETS
from kitlib.submit import validate_submission

PRESET = PRESETS["demo_classify"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_classification_demo(tmp_path_factory.mktemp("democls") / "d", n_train=60, n_test=10)


def test_layout_loads_as_the_preset(demo_dir):
    df = load_competition(PRESET, demo_dir)
    assert len(df) == 60 and df["label"].between(0, 4).all()
    test = load_competition(PRESET, demo_dir, split="test")
    assert test["image_id"].tolist() == [f"e{i:04d}.jpg" for i in range(10)]
    image = cv2.imread(df["image_path"][0])
    assert image.shape == (96, 128, 3)
    sample = pd.read_csv(demo_dir / "sample_submission.csv")
    assert list(sample.columns) == ["image_id", "label"] and (sample["label"] == 4).all()
    # the sample submission is a valid submission of the preset (ids, order, labels in range)
    assert validate_submission(demo_dir / "sample_submission.csv", demo_dir / "sample_submission.csv", PRESET)


def test_same_arguments_same_bytes_and_prefix_stable(tmp_path, demo_dir):
    again = make_classification_demo(tmp_path / "a", n_train=60, n_test=10)
    for name in ("train.csv", "test_truth.csv", "train_images/c0007.jpg", "test_images/e0003.jpg"):
        assert (again / name).read_bytes() == (demo_dir / name).read_bytes(), name
    longer = make_classification_demo(tmp_path / "b", n_train=80, n_test=10)
    first = pd.read_csv(demo_dir / "train.csv")["label"].tolist()
    assert pd.read_csv(longer / "train.csv")["label"][:60].tolist() == first
    other = make_classification_demo(tmp_path / "c", n_train=60, n_test=10, seed=1)
    assert (other / "train.csv").read_bytes() != (demo_dir / "train.csv").read_bytes()


def test_labels_follow_the_priors(tmp_path):
    labels = pd.read_csv(make_classification_demo(tmp_path, n_train=1000, n_test=1) / "train.csv")["label"]
    freq = labels.value_counts(normalize=True).reindex(range(5), fill_value=0).to_numpy()
    np.testing.assert_allclose(freq, CLASS_PRIORS, atol=0.04)
    assert freq.argmax() == int(np.argmax(CLASS_PRIORS))


def test_plain_images_have_less_texture(demo_dir):
    """The labelled texture is there: a Plain image's strongest local contrast is below a textured image's."""
    df = load_competition(PRESET, demo_dir)

    def contrast(path) -> float:
        gray = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY).astype(np.float32)
        lap = np.abs(cv2.Laplacian(cv2.GaussianBlur(gray, (3, 3), 0), cv2.CV_32F))
        return float((lap > 20).mean())

    plain = [contrast(p) for p in df.loc[df["label"] == 4, "image_path"]]
    textured = [contrast(p) for p in df.loc[df["label"].isin([0, 1, 2]), "image_path"]]
    assert np.median(plain) < np.median(textured)


def test_score_perfect_majority_and_bad_submissions(demo_dir, tmp_path):
    truth = pd.read_csv(demo_dir / "test_truth.csv")
    truth.to_csv(tmp_path / "perfect.csv", index=False)
    result = score_classification_submission(tmp_path / "perfect.csv", demo_dir)
    assert result["accuracy"] == 1.0 and result["n_images"] == 10
    assert all(v in (None, 1.0) for v in result["accuracy_per_class"].values())
    wrong = truth.assign(label=(truth["label"] + 1) % 5)
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    assert score_classification_submission(tmp_path / "wrong.csv", demo_dir)["accuracy"] == 0.0
    majority = int(pd.read_csv(demo_dir / "train.csv")["label"].mode()[0])
    truth.assign(label=majority).to_csv(tmp_path / "majority.csv", index=False)
    got = score_classification_submission(tmp_path / "majority.csv", demo_dir)
    assert got["accuracy"] == got["majority_accuracy"] == (truth["label"] == majority).mean()
    truth.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match=r"1 test image\(s\) missing, e.g. \['e0009.jpg'\]"):
        score_classification_submission(tmp_path / "short.csv", demo_dir)
    truth.assign(label=[7] + truth["label"].tolist()[1:]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"not an integer in 0..4 for \['e0000.jpg'\]"):
        score_classification_submission(tmp_path / "bad.csv", demo_dir)


def test_registry_and_command_line(demo_dir, tmp_path):
    assert set(DEMOS) == {"demo", "demo_classify"}
    line, result = score_demo(demo_dir / "test_truth.csv", demo_dir)
    assert line.startswith("test accuracy 1.0000 (majority class") and result["accuracy"] == 1.0
    with pytest.raises(KeyError, match="unknown demo preset 'clouds'"):
        make_preset_demo("clouds", tmp_path / "x")
    listed = subprocess.run([sys.executable, "-m", "kitlib.demo", "--list"], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["demo", "demo_classify"]
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "kitlib.demo", str(out), "--preset", "demo_classify", "--n-train", "5", "--n-test",
           "2"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    assert len(pd.read_csv(out / "train.csv")) == 5 and len(list((out / "test_images").iterdir())) == 2
    scored = subprocess.run([sys.executable, "-m", "kitlib.demo", str(out), "--score", str(out / "test_truth.csv")],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert scored.stdout.startswith("test accuracy 1.0000")


def test_refuses_a_foreign_label_file(tmp_path):
    (tmp_path / "train.csv").write_text("image_id,label\n1000015157.jpg,0\n")
    with pytest.raises(FileExistsError, match="is not a demo label file"):
        make_classification_demo(tmp_path, n_train=3, n_test=1)
    make_classification_demo(tmp_path, n_train=3, n_test=1, overwrite=True)
    assert pd.read_csv(tmp_path / "train.csv")["image_id"].tolist() == ["c0000.jpg", "c0001.jpg", "c0002.jpg"]
