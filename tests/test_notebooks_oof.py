"""20_oof and 30_ensemble under papermill on a tiny trained demo: 24 images, 3 folds, 2 epochs, two seeds; and on two
constructed classification experiments (Cassava layout) stacked with a logistic regression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kitlib.demo import make_demo
from kitlib.io import read_json
from kitlib.postprocess import PostProcess
from kitlib.presets import get_preset
from kitlib.stages import EdaConfig
from tests.test_notebooks import _images_shown, run_notebook
from tests.test_stacking import cassava_data, shifted_members
from tests.test_train import train_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two tiny experiments ("a" seed 0, "b" seed 1) on the same folds.csv, every fold trained for 2 epochs."""
    root = tmp_path_factory.mktemp("oof_exp")
    data = make_demo(root / "data", n_train=24, n_test=4, height=64, width=96)
    artifacts = root / "artifacts"
    for exp, seed in (("a", 0), ("b", 1)):
        train_tiny(data, artifacts, exp, n_folds=3, epochs=2, seed=seed)
    return {"data_dir": str(data), "artifacts_root": str(artifacts), "root": root}


def _ensemble(path: Path, params: dict) -> dict:
    return run_notebook("30_ensemble", path, **params)


def _common(trained) -> dict:
    return dict(preset="demo", data_dir=trained["data_dir"], artifacts_root=trained["artifacts_root"])


def test_20_oof(trained, tmp_path):
    triplet = dict(triplet=True, top_thresholds="0.5,0.6", min_contour_areas="0,50", bottom_thresholds="0.4")
    crf = dict(
        crf=True,
        crf_images=4,
        crf_bilateral_sxy="20",
        crf_bilateral_srgb="13",
        crf_bilateral_compat="3,10",
        youden=False,
    )  # the Youden thresholds would join the grid (30_ensemble runs them)
    run_notebook("20_oof", tmp_path / "oof.ipynb", exp="a", thresholds="0.3,0.5", min_areas="0,20", **triplet,
                 **crf, **_common(trained))  # fmt: skip
    exp_dir = Path(trained["artifacts_root"]) / "a"
    probs = np.load(exp_dir / "oof_probs.npy", mmap_mode="r")
    assert probs.shape == (24, 4, 64, 96) and probs.dtype == np.uint8
    ids = pd.read_csv(exp_dir / "oof_ids.csv", dtype=str)["image_id"].tolist()
    assert ids == pd.read_csv(exp_dir / "folds.csv", dtype=str)["image_id"].tolist()
    assert np.load(exp_dir / "oof_masks.npy", mmap_mode="r").shape == probs.shape
    cv = read_json(exp_dir / "cv.json")
    assert cv["metric"] == "dice" and set(cv["per_class"]) == set(get_preset("demo").target_classes)
    assert 0 <= cv["cv"] <= 1 and cv["cv_postprocessed"] >= cv["cv"] - 1e-9  # 0.5 / area 0 or better
    post = PostProcess.from_json(exp_dir / "postprocess.json")
    assert post.meta["method"] in ("threshold", "triplet") and post.num_classes == 4
    if post.meta["method"] == "threshold":
        assert set(post.threshold) <= {0.3, 0.5} and set(post.min_area) <= {0, 20}
    assert cv["postprocess"] == post.meta["method"]
    assert post.crf is None or (post.meta["crf_search"]["n_images"] == 4 and post.crf["bilateral_sxy"] == 20)
    issues = pd.read_csv(exp_dir / "label_issues.csv", dtype={"image_id": str})  # ranked by OOF Dice, worst 5 % flagged
    assert sorted(issues["image_id"]) == sorted(ids) and issues["dice"].is_monotonic_increasing
    assert issues["flagged"].tolist() == [True] * 2 + [False] * 22


def test_30_ensemble_one_and_two_experiments(trained, tmp_path):
    common = _common(trained)
    grids = dict(thresholds="0.3,0.5", min_areas="0,20")
    run_notebook("20_oof", tmp_path / "oof_b.ipynb", exp="b", **grids, **common)
    one = _ensemble(tmp_path / "ens1.ipynb", dict(exps="a", ensemble_name="ens1", **grids, **common))
    root = Path(trained["artifacts_root"])
    w1 = read_json(root / "ens1" / "weights.json")
    assert w1["exps"] == ["a"] and w1["weights"] == [1.0]
    # one experiment: the blend is its OOF, so post-processing is what 20_oof found with the same grid
    np.testing.assert_array_equal(np.load(root / "ens1" / "oof_probs.npy"), np.load(root / "a" / "oof_probs.npy"))
    assert read_json(root / "ens1" / "cv.json")["cv"] == pytest.approx(read_json(root / "a" / "cv.json")["cv"])
    assert (root / "ens1" / "config.json").is_file() and one["cells"]

    crf = dict(crf=True, crf_images=2, crf_bilateral_sxy="20", crf_bilateral_srgb="13", crf_bilateral_compat="5")
    _ensemble(tmp_path / "ens2.ipynb", dict(exps="a,b", method="nelder-mead", fit_rows=12, **grids, **crf, **common))
    w2 = read_json(root / "ensemble" / "weights.json")
    assert w2["exps"] == ["a", "b"] and len(w2["weights"]) == 2 and sum(w2["weights"]) == pytest.approx(1.0)
    assert w2["method"] == "nelder-mead" and 0 <= w2["score"] <= 1 and w2["score"] >= w2["equal_score"] - 1e-9
    cv = read_json(root / "ensemble" / "cv.json")
    assert cv["metric"] == "dice" and cv["cv_postprocessed"] is not None
    post = PostProcess.from_json(root / "ensemble" / "postprocess.json")
    assert post.num_classes == 4 and post.meta["exps"] == ["a", "b"]
    assert post.crf is None or post.meta["crf_search"]["n_images"] == 2  # kept only if it scored higher
    assert json.loads((root / "ensemble" / "config.json").read_text())["params"]["exps"] == "a,b"


def test_30_ensemble_refuses_other_folds(trained, tmp_path):
    root = Path(trained["artifacts_root"])
    other = root / "c"
    other.mkdir()
    probs = np.load(root / "a" / "oof_probs.npy")
    np.save(other / "oof_probs.npy", probs[:-1])
    ids = pd.read_csv(root / "a" / "oof_ids.csv", dtype=str)[:-1]
    ids.to_csv(other / "oof_ids.csv", index=False)
    with pytest.raises(AssertionError, match="different OOF rows"):
        _ensemble(tmp_path / "bad.ipynb", dict(exps="a,c", ensemble_name="bad", **_common(trained)))


@pytest.fixture(scope="module")
def classified(tmp_path_factory) -> dict:
    """Two classification experiments with constructed fold OOFs (``tests.test_stacking.shifted_members``: "s" is
    always one class off, "w" weak) on 60 Cassava-layout images in 3 folds, written as 00_eda and 10_train write
    them: ``folds.csv``, ``eda_config.json``, ``fold<k>/oof_probs.npy`` (float16) + ``oof_ids.csv``."""
    root = tmp_path_factory.mktemp("stack_exp")
    data = cassava_data(root / "data", n_train=60)
    artifacts = root / "artifacts"
    table = pd.read_csv(data / "train.csv")
    folds = np.arange(len(table)) % 3
    members = shifted_members(table["label"].to_numpy(), np.random.default_rng(0))
    for exp, probs in zip(("s", "w"), members.values(), strict=True):
        common = dict(preset="cassava", data_dir=str(data), artifacts_root=str(artifacts), exp=exp)
        EdaConfig.from_notebook(**common).save()
        pd.DataFrame({"image_id": table["image_id"], "fold": folds}).to_csv(artifacts / exp / "folds.csv", index=False)
        for k in range(3):
            (artifacts / exp / f"fold{k}").mkdir()
            np.save(artifacts / exp / f"fold{k}" / "oof_probs.npy", probs[folds == k])
            table.loc[folds == k, ["image_id"]].to_csv(artifacts / exp / f"fold{k}" / "oof_ids.csv", index=False)
    return {"preset": "cassava", "data_dir": str(data), "artifacts_root": str(artifacts)}


def _has_output(nb: dict, code: str, kind: str = "image/png") -> bool:
    """Whether the cell whose source contains ``code`` shows an output of ``kind``."""
    return any(code in "".join(c["source"]) and any(kind in o.get("data", {}) for o in c.get("outputs", []))
               for c in nb["cells"])  # fmt: skip


def test_20_oof_and_30_ensemble_classification_with_stacking(classified, tmp_path):
    """20_oof shows the per-class report and the confusion matrix; 30_ensemble stacks the two members, whose mean is
    mostly wrong, chooses the stacker (its cross-validated CV beats the weighted blend), and describes the stacked
    OOF in oof_probs.npy, cv.json and class_report.csv."""
    nb = run_notebook("20_oof", tmp_path / "oof.ipynb", exp="s", **classified)
    root = Path(classified["artifacts_root"])
    assert _has_output(nb, "plot_confusion_matrix") and _has_output(nb, "classification_report", "text/html")
    assert read_json(root / "s" / "cv.json")["class_report"] == "class_report.csv"
    issues = pd.read_csv(root / "s" / "label_issues.csv")  # cleanlab on the OOF probs, worst label first
    assert len(issues) == 60 and issues["self_confidence"].is_monotonic_increasing and issues["flagged"].any()
    report = pd.read_csv(root / "s" / "class_report.csv")
    assert report["support"].tolist()[:5] == [12] * 5 and report["f1"].iloc[-1] == 0.0  # always one class off

    nb = run_notebook("30_ensemble", tmp_path / "ens.ipynb", exps="s,w", ensemble_name="stack", stacking="logreg",
                      stacking_c=1.0, fit_rows=0, **classified)  # fmt: skip
    weights = read_json(root / "stack" / "weights.json")
    record = weights["stacking"]
    assert record["model"] == "logreg" and record["chosen"] and record["file"] == "stacking.json"
    assert record["cv"] > 0.9 and record["cv"] > weights["score"] + 0.3 and record["blend_cv"] == weights["score"]
    assert (root / "stack" / "stacking.json").is_file()
    cv = read_json(root / "stack" / "cv.json")
    assert cv["metric"] == "accuracy" and cv["cv"] == pytest.approx(record["cv"]) and cv["stacking"] == "logreg"
    assert np.load(root / "stack" / "oof_probs.npy").shape == (60, 5)
    assert (root / "stack" / "class_report.csv").is_file() and _has_output(nb, "plot_confusion_matrix")
    assert _images_shown(nb) >= 2  # hill climbing trace, confusion matrix
