"""The demos' ``label_noise`` flag: the exact fraction of train labels corrupted (classification: another class;
segmentation: the masks under other classes), the hidden ``noisy_ids.csv`` listing exactly those, the same images and
the same clean test truth as the clean demo."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys

import pandas as pd
import pytest

from kitlib._synthetic import MARKER, NOISY_FILE, TRUTH_FILE
from kitlib.demo import make_demo
from kitlib.demo_classify import make_classification_demo
from tests.conftest import REPO


def _same_files(a, b, folder: str) -> None:
    names = sorted(p.name for p in (a / folder).iterdir())
    assert names == sorted(p.name for p in (b / folder).iterdir())
    assert filecmp.cmpfiles(a / folder, b / folder, names, shallow=False)[0] == names


def test_classification_noise_corrupts_the_exact_fraction(tmp_path):
    clean = make_classification_demo(tmp_path / "clean", n_train=40, n_test=8, height=32, width=48)
    noisy = make_classification_demo(tmp_path / "noisy", n_train=40, n_test=8, height=32, width=48, label_noise=0.25)
    a, b = pd.read_csv(clean / "train.csv"), pd.read_csv(noisy / "train.csv")
    assert a["image_id"].tolist() == b["image_id"].tolist()
    changed = a.loc[a["label"] != b["label"], "image_id"].tolist()
    assert len(changed) == 10  # round(0.25 x 40), each to another class
    listed = pd.read_csv(noisy / NOISY_FILE)
    assert sorted(listed["image_id"]) == sorted(changed)
    by_id = a.set_index("image_id")["label"]
    assert (listed["true_label"].to_numpy() == by_id.loc[listed["image_id"]].to_numpy()).all()
    assert (listed["label"] != listed["true_label"]).all()
    for folder in ("train_images", "test_images"):
        _same_files(clean, noisy, folder)
    assert (clean / TRUTH_FILE).read_bytes() == (noisy / TRUTH_FILE).read_bytes()  # the test truth stays clean
    assert not (clean / NOISY_FILE).exists() and "label_noise" not in json.loads((clean / MARKER).read_text())
    assert json.loads((noisy / MARKER).read_text())["label_noise"] == 0.25
    again = make_classification_demo(tmp_path / "again", n_train=40, n_test=8, height=32, width=48, label_noise=0.25)
    assert (again / "train.csv").read_bytes() == (noisy / "train.csv").read_bytes()  # seeded


def test_segmentation_noise_gives_the_masks_other_classes(tmp_path):
    clean = make_demo(tmp_path / "clean", n_train=12, n_test=4, height=64, width=96)
    noisy = make_demo(tmp_path / "noisy", n_train=12, n_test=4, height=64, width=96, label_noise=0.25)
    a, b = pd.read_csv(clean / "train.csv", keep_default_na=False), pd.read_csv(noisy / "train.csv",
                                                                                 keep_default_na=False)  # fmt: skip
    assert a["Image_Label"].tolist() == b["Image_Label"].tolist()
    image = a["Image_Label"].str.rsplit("_", n=1).str[0]
    differs = (a["EncodedPixels"] != b["EncodedPixels"]).groupby(image).any()
    changed = sorted(differs.index[differs])
    assert len(changed) == 3  # round(0.25 x 12) images
    assert sorted(pd.read_csv(noisy / NOISY_FILE)["image_id"]) == changed
    for image_id in changed:  # the same masks (objects' outlines), under other classes
        rows = image == image_id
        assert sorted(a.loc[rows, "EncodedPixels"]) == sorted(b.loc[rows, "EncodedPixels"])
    for folder in ("train_images", "test_images"):
        _same_files(clean, noisy, folder)
    assert (clean / TRUTH_FILE).read_bytes() == (noisy / TRUTH_FILE).read_bytes()


def test_a_clean_rebuild_removes_the_noisy_list_and_bad_fractions_fail(tmp_path):
    folder = make_classification_demo(tmp_path / "d", n_train=20, n_test=4, height=32, width=32, label_noise=0.1)
    assert len(pd.read_csv(folder / NOISY_FILE)) == 2
    make_classification_demo(folder, n_train=20, n_test=4, height=32, width=32)
    assert not (folder / NOISY_FILE).exists()
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_noise"):
            make_classification_demo(tmp_path / "bad", n_train=20, n_test=4, height=32, width=32, label_noise=bad)


def test_cli_label_noise(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "kitlib.demo", str(out), "--preset", "demo_classify", "--n-train", "30", "--n-test",
           "4", "--height", "32", "--width", "32", "--label-noise", "0.2"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    assert len(pd.read_csv(out / NOISY_FILE)) == 6
