"""kitlib.demo: determinism, layout, the completion marker, learnable textures, the command line."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

import kitlib.demo as demo
from kitlib.demo import MARKER, TRUTH_FILE, make_demo
from kitlib.presets import PRESETS
from kitlib.rle import rle_decode

PRESET = PRESETS["demo"]
CLASSES = list(PRESET.classes)
H, W = 128, 192
N_TRAIN, N_TEST = 24, 8
HAS_FORMATS = importlib.util.find_spec("kitlib.formats") is not None


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, n_train=N_TRAIN, n_test=N_TEST)


def _read_labels(path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df[["image_id", "cls"]] = df["Image_Label"].str.rsplit("_", n=1, expand=True)
    return df


def _masks(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """image_id -> (4, H, W) uint8 masks in class order."""
    out = {}
    for image_id, rows in df.groupby("image_id", sort=False):
        assert rows["cls"].tolist() == CLASSES, image_id
        out[image_id] = np.stack([rle_decode(r, (H, W), order="F") for r in rows["EncodedPixels"]])
    return out


def _all_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes(tmp_path):
    a = make_demo(tmp_path / "a", seed=5, n_train=6, n_test=3)
    b = make_demo(tmp_path / "b", seed=5, n_train=6, n_test=3)
    files = _all_files(a)
    assert files == _all_files(b)
    assert len([f for f in files if f.suffix == ".jpg"]) == 9
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    c = make_demo(tmp_path / "c", seed=6, n_train=6, n_test=3)
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    assert (a / "train_images/d0000.jpg").read_bytes() != (c / "train_images/d0000.jpg").read_bytes()


def test_first_images_do_not_depend_on_n_train(tmp_path):
    a = make_demo(tmp_path / "a", seed=1, n_train=3, n_test=1)
    b = make_demo(tmp_path / "b", seed=1, n_train=5, n_test=2)
    for name in ("train_images/d0000.jpg", "train_images/d0002.jpg", "test_images/t0000.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_layout(demo_dir):
    for name in ("train.csv", "sample_submission.csv", TRUTH_FILE, MARKER):
        assert (demo_dir / name).is_file()
    train_ids = [f"d{i:04d}.jpg" for i in range(N_TRAIN)]
    test_ids = [f"t{i:04d}.jpg" for i in range(N_TEST)]
    assert sorted(p.name for p in (demo_dir / "train_images").iterdir()) == train_ids
    assert sorted(p.name for p in (demo_dir / "test_images").iterdir()) == test_ids
    image = cv2.imread(str(demo_dir / "train_images" / train_ids[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8

    train = pd.read_csv(demo_dir / "train.csv", dtype=str)
    assert list(train.columns) == ["Image_Label", "EncodedPixels"]
    assert train["Image_Label"].tolist() == [f"{i}_{c}" for i in train_ids for c in CLASSES]
    assert train["EncodedPixels"].isna().any()  # empty masks are empty cells, read back as NaN

    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["Image_Label", "EncodedPixels"]
    assert sample["Image_Label"].tolist() == [f"{i}_{c}" for i in test_ids for c in CLASSES]
    assert (sample["EncodedPixels"] == "1 1").all()
    truth = pd.read_csv(demo_dir / TRUTH_FILE, dtype=str)
    assert truth["Image_Label"].tolist() == sample["Image_Label"].tolist()

    params = json.loads((demo_dir / MARKER).read_text())
    assert params["seed"] == 0 and params["n_train"] == N_TRAIN and params["n_test"] == N_TEST
    assert (params["height"], params["width"]) == (H, W) == (128, 192)


@pytest.mark.parametrize("label_file", ["train.csv", TRUTH_FILE])
def test_masks(demo_dir, label_file):
    masks = _masks(_read_labels(demo_dir / label_file))
    stack = np.stack(list(masks.values()))  # (N, 4, H, W)
    present = stack.any(axis=(2, 3))  # (N, 4)
    assert present.all(axis=0).sum() == 0 and present.any(axis=0).all()  # every class somewhere, none everywhere
    assert (~present).any()  # empty masks
    assert ((present.sum(axis=1) >= 1) & (present.sum(axis=1) <= 3)).all()  # 1-3 classes per image
    assert stack.sum(axis=1).max() == 1  # masks = visible parts: they never overlap
    areas = stack.sum(axis=(2, 3))[present]
    assert areas.min() >= 0.02 * H * W  # no slivers
    assert stack.any(axis=1)[:, [0, -1], :].any() or stack.any(axis=1)[:, :, [0, -1]].any()  # regions touch borders
    for i, m in enumerate(masks.values()):
        assert m[i % 4].any()  # image i holds class i % 4


def _region_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Grey-level mean, std and gradient coherence (1 = one orientation, 0 = isotropic) inside an eroded mask."""
    inner = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
    if inner.sum() < 150:
        return None
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = (gx * gx)[inner].sum(), (gy * gy)[inner].sum(), (gx * gy)[inner].sum()
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)
    return np.array([gray[inner].mean(), gray[inner].std(), coherence])


def _texture_accuracy(data_dir) -> float:
    """Leave-one-out nearest-centroid accuracy of (image, class) regions on grey-level texture features."""
    feats, labels = [], []
    for image_id, m in _masks(_read_labels(data_dir / "train.csv")).items():
        image = cv2.imread(str(data_dir / "train_images" / image_id))
        for k in range(4):
            f = _region_features(image, m[k])
            if f is not None:
                feats.append(f)
                labels.append(k)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    correct = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        centroids = np.stack([x[keep & (y == k)].mean(0) for k in range(4)])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == y[i])
    return correct / len(y)


def test_textures_are_distinguishable(demo_dir):
    """Three grey-level statistics classify the regions far above chance (0.25)."""
    assert _texture_accuracy(demo_dir) >= 0.85


def test_texture_check_fails_on_identical_textures(tmp_path, monkeypatch):
    """Negative control: with one texture (and tint) for every class, the same check is near chance."""
    texture = demo.texture
    monkeypatch.setattr(demo, "texture", lambda name, *args: texture("Checker", *args))
    data_dir = make_demo(tmp_path, seed=0, n_train=N_TRAIN, n_test=1)
    assert _texture_accuracy(data_dir) < 0.6


def test_marker_skip_and_rebuild(tmp_path):
    d = make_demo(tmp_path, seed=2, n_train=5, n_test=2)
    image = d / "train_images" / "d0001.jpg"
    original = image.read_bytes()
    image.write_bytes(b"tampered")  # a complete demo is not rewritten...
    assert make_demo(tmp_path, seed=2, n_train=5, n_test=2) == d
    assert image.read_bytes() == b"tampered"
    make_demo(tmp_path, seed=2, n_train=5, n_test=2, overwrite=True)  # ...unless asked
    assert image.read_bytes() == original

    image.write_bytes(b"half-written")
    (d / MARKER).unlink()  # no marker: rebuilt
    make_demo(tmp_path, seed=2, n_train=5, n_test=2)
    assert image.read_bytes() == original and (d / MARKER).is_file()

    (d / "train_images" / "d0004.jpg").unlink()  # a missing file: rebuilt
    make_demo(tmp_path, seed=2, n_train=5, n_test=2)
    assert (d / "train_images" / "d0004.jpg").is_file()

    make_demo(tmp_path, seed=2, n_train=3, n_test=2)  # other parameters: rebuilt, stale images removed
    assert sorted(p.name for p in (d / "train_images").iterdir()) == ["d0000.jpg", "d0001.jpg", "d0002.jpg"]
    assert json.loads((d / MARKER).read_text())["n_train"] == 3
    assert len(pd.read_csv(d / "train.csv")) == 12


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "train.csv").write_text("Image_Label,EncodedPixels\n0011165.jpg_Fish,1 3\n")
    with pytest.raises(FileExistsError, match="not a demo label file"):
        make_demo(tmp_path, n_train=2, n_test=1)
    make_demo(tmp_path, n_train=2, n_test=1, overwrite=True)
    assert pd.read_csv(tmp_path / "train.csv")["Image_Label"][0] == "d0000.jpg_Stripes"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seed": -1}, "seed must be"), ({"n_train": 0}, "n_train must be"), ({"n_test": 0}, "n_test must be"),
     ({"height": 16}, "height and width")],
)  # fmt: skip
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo(tmp_path, **kwargs)


def test_cli(tmp_path):
    out = tmp_path / "cli_demo"
    cmd = [sys.executable, "-m", "kitlib.demo", str(out), "--seed", "3", "--n-train", "4", "--n-test", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert len(pd.read_csv(out / "train.csv")) == 16
    assert json.loads((out / MARKER).read_text())["seed"] == 3
    assert "wrote demo" in result.stderr
    again = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=120)  # run_all.sh's call
    assert again.returncode == 0 and again.stderr == "" and again.stdout.strip() == str(out)


@pytest.mark.skipif(not HAS_FORMATS, reason="kitlib.formats is not written yet")
def test_load_competition_reads_demo(demo_dir):
    from kitlib.formats import class_presence, load_competition

    df = load_competition(PRESETS["demo"], demo_dir)
    assert len(df) == N_TRAIN
    assert df["image_id"].tolist() == [f"d{i:04d}.jpg" for i in range(N_TRAIN)]
    assert set(CLASSES) <= set(df.columns)
    assert (df["height"] == H).all() and (df["width"] == W).all()
    labels = _read_labels(demo_dir / "train.csv")
    by_key = dict(zip(labels["Image_Label"], labels["EncodedPixels"], strict=True))
    for _, row in df.head(6).iterrows():
        for c in CLASSES:
            assert row[c] == by_key[f"{row['image_id']}_{c}"]
    presence = class_presence(df, PRESETS["demo"])
    assert presence.shape == (N_TRAIN, 4) and presence.dtype == bool
    masks = _masks(labels)
    np.testing.assert_array_equal(presence, np.stack([masks[i].any(axis=(1, 2)) for i in df["image_id"]]))

    test = load_competition(PRESETS["demo"], demo_dir, split="test")
    assert sorted(test["image_id"]) == [f"t{i:04d}.jpg" for i in range(N_TEST)]


def test_score_submission_against_the_hidden_truth(demo_dir, tmp_path):
    from kitlib.rle import rle_encode

    preset = PRESETS["demo"]
    truth = pd.read_csv(demo_dir / TRUTH_FILE, keep_default_na=False)
    h, w = json.loads((demo_dir / MARKER).read_text())["height"], json.loads((demo_dir / MARKER).read_text())["width"]
    size = preset.submission_size
    # the truth itself, resized to the scoring size as the docstring says: Dice 1
    perfect = truth.copy()
    perfect["EncodedPixels"] = [
        rle_encode(cv2.resize(rle_decode(r, (h, w), order="F"), (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
        for r in truth["EncodedPixels"]
    ]
    perfect.to_csv(tmp_path / "perfect.csv", index=False)
    result = demo.score_submission(tmp_path / "perfect.csv", demo_dir)
    assert result["dice"] == 1.0 and result["n_images"] == N_TEST
    # all empty: 1 on the empty pairs, 0 on the others
    empty = truth.assign(EncodedPixels="")
    empty.to_csv(tmp_path / "empty.csv", index=False)
    n_empty = int((truth["EncodedPixels"] == "").sum())
    assert demo.score_submission(tmp_path / "empty.csv", demo_dir)["dice"] == pytest.approx(n_empty / len(truth))
    empty.head(3).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match="row\\(s\\) of the truth missing"):
        demo.score_submission(tmp_path / "short.csv", demo_dir)
    out = subprocess.run([sys.executable, "-m", "kitlib.demo", str(demo_dir), "--score", str(tmp_path / "perfect.csv")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.startswith("test Dice 1.0000")
