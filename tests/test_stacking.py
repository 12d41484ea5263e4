"""kitlib.stacking on hand-built OOF probabilities: a meta-model that recovers labels a mean blend cannot, CV that never
sees the held-out fold, the JSON meta-model equal to sklearn's predict_proba, the choice against the blend, the
config-time refusal on segmentation, and inference applying the chosen stacker (kitlib.inference, kaggle bundle); plus
the per-class report and confusion matrix of kitlib.oof and kitlib.plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn import metrics

from kitlib import oof, plots, stacking
from kitlib.ensemble import accuracy_score_fn, blend_score
from kitlib.io import read_json, write_json
from kitlib.recipes import STACKERS
from kitlib.stages import EnsembleConfig, TrainConfig

C = 5


def shifted_case(n: int = 600, n_folds: int = 5, seed: int = 0) -> dict:
    """Two members: "shifted" puts 0.6..0.95 on (y + 1) % C (confident and always wrong by one class), "weak" puts
    0.15 on y and spreads the rest at random (right a little more often than chance). The mean follows the confident
    member, so it is mostly wrong; a linear meta-model can map each shifted column back to its class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    folds = np.arange(n) % n_folds
    rng.shuffle(folds)
    return {"oofs": shifted_members(y, rng), "labels": y, "folds": folds}


def shifted_members(y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``shifted_case``'s two members for the labels ``y``: (N, C) float16 probabilities each."""
    n = len(y)
    top = rng.uniform(0.6, 0.95, n)
    shifted = np.repeat(((1 - top) / (C - 1))[:, None], C, axis=1)
    shifted[np.arange(n), (y + 1) % C] = top
    weak = 0.15 * np.eye(C)[y] + 0.85 * rng.dirichlet(np.ones(C), n)
    return {"shifted": shifted.astype(np.float16), "weak": weak.astype(np.float16)}


@pytest.fixture(scope="module")
def case() -> dict:
    return shifted_case()


def test_the_registry_matches_the_names_the_config_checks():
    assert set(stacking._FACTORIES) == set(STACKERS)
    with pytest.raises(KeyError, match=r"unknown stacking model 'ridge'; options: \['logreg'\]"):
        stacking.create_stacker("ridge")
    with pytest.raises(ValueError, match="c must be > 0"):
        stacking.create_stacker("logreg", c=0.0)


def test_stack_features_layout_and_logs():
    a, b = np.full((3, 2), 0.5), np.array([[1.0, 0.0]] * 3)
    x = stacking.stack_features({"a": a, "b": b})
    assert x.shape == (3, 4) and x.dtype == np.float64
    np.testing.assert_array_equal(x[0], [0.5, 0.5, 1.0, 0.0])  # member-major: a's classes, then b's
    np.testing.assert_allclose(stacking.stack_features([a, b], log_features=True)[0],
                               np.log([0.5, 0.5, 1.0, stacking.EPS]))  # fmt: skip
    with pytest.raises(ValueError, match="member 1 has probs of shape"):
        stacking.stack_features([a, b[:2]])


def test_stacking_recovers_what_the_mean_blend_cannot(case):
    score_fn = accuracy_score_fn(case["labels"])
    mean_cv = blend_score(case["oofs"], score_fn)
    cv = stacking.cross_val_stack(case["oofs"], case["labels"], case["folds"], score_fn, "logreg", c=1.0)
    assert cv.oof_probs.shape == (600, C) and cv.oof_probs.dtype == np.float32
    np.testing.assert_allclose(cv.oof_probs.sum(axis=1), 1.0, atol=1e-5)
    assert mean_cv < 0.4 and cv.score > 0.95 and cv.score > mean_cv + 0.5
    assert cv.table["fold"].tolist() == [0, 1, 2, 3, 4] and cv.table["n_held_out"].sum() == 600
    assert cv.table["held_out_score"].min() > 0.9


def test_a_held_out_folds_predictions_do_not_depend_on_its_labels(case):
    """Fold k is predicted by a model fitted on the other folds only: permuting fold k's labels leaves its stacked
    OOF as it was (and changes the other folds', whose models trained on those labels)."""
    score_fn = accuracy_score_fn(case["labels"])
    y, folds = case["labels"], case["folds"]
    before = stacking.cross_val_stack(case["oofs"], y, folds, score_fn).oof_probs
    held = folds == 2
    permuted = y.copy()
    permuted[held] = np.random.default_rng(1).permutation(y[held])
    assert (permuted != y).any()
    after = stacking.cross_val_stack(case["oofs"], permuted, folds, accuracy_score_fn(permuted)).oof_probs
    np.testing.assert_allclose(after[held], before[held], rtol=0, atol=1e-6)
    assert np.abs(after[~held] - before[~held]).max() > 1e-3


@pytest.mark.parametrize(("n_classes", "log_features"), [(5, False), (5, True), (2, False)])
def test_the_json_meta_model_equals_sklearns_predict_proba(tmp_path, case, n_classes, log_features):
    rng = np.random.default_rng(3)
    labels = case["labels"] % n_classes
    oofs = {k: rng.dirichlet(np.ones(n_classes), 600) * 0.5 + 0.5 * np.eye(n_classes)[labels] for k in ("a", "b")}
    fitted = stacking.fit_stacker(oofs, labels, "logreg", c=0.5, log_features=log_features)
    path = fitted.to_json(tmp_path / "stacking.json")
    loaded = stacking.LinearStacker.from_json(path)
    assert loaded.exps == ("a", "b") and read_json(path)["features"][0] == ("log a:0" if log_features else "a:0")
    new = [rng.dirichlet(np.ones(n_classes), 50) for _ in range(2)]
    estimator = stacking.create_stacker("logreg", c=0.5).fit(stacking.stack_features(oofs, log_features), labels)
    expected = estimator.predict_proba(stacking.stack_features(new, log_features))
    np.testing.assert_allclose(loaded.predict_proba(new), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        loaded.predict_proba(new[:1])


def test_a_class_the_training_rows_lack_gets_probability_zero(tmp_path):
    labels = np.array([0, 1, 3] * 20)  # class 2 and 4 never seen
    probs = np.eye(5)[labels] * 0.6 + 0.08
    fitted = stacking.fit_stacker({"a": probs}, labels)
    out = stacking.LinearStacker.from_json(fitted.to_json(tmp_path / "s.json")).predict_proba([probs])
    assert out.shape == (60, 5) and (out[:, [2, 4]] == 0).all() and (out.argmax(1) == labels).all()


def test_choose_stacking_keeps_it_only_when_it_beats_the_blend(tmp_path, case):
    score_fn = accuracy_score_fn(case["labels"])
    blend_cv = blend_score(case["oofs"], score_fn)
    record, cv = stacking.choose_stacking(case["oofs"], case["labels"], case["folds"], score_fn, blend_cv, tmp_path)
    assert record == {"model": "logreg", "c": 1.0, "log_features": False, "cv": cv.score, "blend_cv": blend_cv,
                      "chosen": True, "file": "stacking.json"}  # fmt: skip
    write_json(tmp_path / "weights.json", {"exps": ["shifted", "weak"], "weights": [0.5, 0.5], "stacking": record})
    stacker = stacking.load_stacker(tmp_path)
    assert stacker is not None and stacker.exps == ("shifted", "weak")
    test = shifted_case(n=100, seed=5)
    assert np.mean(stacker.predict_proba(test["oofs"]).argmax(1) == test["labels"]) > 0.95
    record, _ = stacking.choose_stacking(case["oofs"], case["labels"], case["folds"], score_fn, 1.0, tmp_path)
    assert not record["chosen"] and record["file"] is None and not (tmp_path / "stacking.json").exists()


def test_load_stacker_refuses_what_inference_could_not_apply(tmp_path, case):
    assert stacking.load_stacker(tmp_path) is None  # no weights.json
    write_json(tmp_path / "weights.json", {"exps": ["x", "weak"], "weights": [1, 1], "stacking": {"chosen": True}})
    with pytest.raises(FileNotFoundError, match="meta-model is missing"):
        stacking.load_stacker(tmp_path)
    stacking.fit_stacker(case["oofs"], case["labels"]).to_json(tmp_path / "stacking.json")
    with pytest.raises(ValueError, match=r"members \['shifted', 'weak'\] differ from weights.json's exps"):
        stacking.load_stacker(tmp_path)
    write_json(tmp_path / "weights.json", {"exps": ["x"], "weights": [1], "stacking": {"chosen": False}})
    assert stacking.load_stacker(tmp_path) is None


def test_the_config_refuses_stacking_on_segmentation():
    assert EnsembleConfig.from_notebook(preset="cassava", stacking="logreg").stacking == "logreg"
    assert EnsembleConfig.from_notebook(preset="demo").stacking == ""
    with pytest.raises(ValueError, match=r"stacking='logreg' needs a classification preset.*'demo' is multilabel"):
        EnsembleConfig.from_notebook(preset="demo", stacking="logreg")
    with pytest.raises(KeyError, match=r"unknown stacking 'xgb'; options: \['logreg'\]"):
        EnsembleConfig.from_notebook(preset="cassava", stacking="xgb")
    with pytest.raises(ValueError, match="stacking_c must be > 0"):
        EnsembleConfig.from_notebook(preset="cassava", stacking="logreg", stacking_c=0.0)


# ------------------------------------------------------------------------------------ per-class report, confusion


def test_classification_report_matches_sklearn():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    classes = ["a", "b", "c", "d"]
    table = oof.classification_report(np.eye(4)[pred], labels, classes)
    assert table["class"].tolist() == [*classes, "macro avg", "weighted avg", "accuracy"]
    theirs = metrics.classification_report(labels, pred, labels=[0, 1, 2, 3], output_dict=True, zero_division=0)
    for k, name in enumerate(classes):
        row = table.iloc[k]
        assert row["class"] == name
        assert row["precision"] == pytest.approx(theirs[str(k)]["precision"])
        assert row["recall"] == pytest.approx(theirs[str(k)]["recall"])
        assert row["f1"] == pytest.approx(theirs[str(k)]["f1-score"]) and row["support"] == theirs[str(k)]["support"]
    assert table.iloc[1]["precision"] == pytest.approx(2 / 3) and table.iloc[3]["precision"] == 0  # d never predicted
    assert table.iloc[4]["f1"] == pytest.approx(theirs["macro avg"]["f1-score"])
    assert table.iloc[5]["recall"] == pytest.approx(theirs["weighted avg"]["recall"])
    assert table.iloc[6]["f1"] == pytest.approx(5 / 8) and np.isnan(table.iloc[6]["precision"])
    pd.testing.assert_frame_equal(oof.classification_report(pred, labels, classes), table)
    with pytest.raises(ValueError, match="outside"):
        oof.classification_report(pred, labels, classes[:3])


def test_confusion_table_and_figure():
    labels, pred = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    counts = oof.confusion_table(pred, labels, ["a", "b", "c"])
    np.testing.assert_array_equal(counts.to_numpy(), [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    assert counts.index.name == "true" and list(counts.columns) == ["a", "b", "c"]
    rows = oof.confusion_table(pred, labels, ["a", "b", "c"], normalize="true")
    np.testing.assert_allclose(rows.to_numpy()[0], [0.5, 0.5, 0])
    with pytest.raises(ValueError, match="options"):
        oof.confusion_table(pred, labels, ["a", "b", "c"], normalize="all")
    fig = plots.plot_confusion_matrix(np.eye(3)[pred], labels, ["a", "b", "c"])
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 2
    assert len(plots.plot_confusion_matrix(pred, labels, ["a", "b", "c"], normalize="counts").axes) == 2  # + colorbar
    with pytest.raises(ValueError, match="options"):
        plots.plot_confusion_matrix(pred, labels, ["a", "b", "c"], normalize="rows")


def test_save_cv_writes_the_class_report_beside_cv_json(tmp_path):
    from kitlib.presets import PRESETS
    from kitlib.scoring import score_oof

    labels = np.arange(10) % 5
    probs = np.eye(5)[labels].astype(np.float32)
    raw = score_oof(probs, labels, PRESETS["cassava"]).table
    report = oof.classification_report(probs, labels, PRESETS["cassava"].classes)
    summary = oof.save_cv(tmp_path, PRESETS["cassava"], raw, report=report)
    assert summary["class_report"] == "class_report.csv" and read_json(tmp_path / "cv.json")["cv"] == 1.0
    written = pd.read_csv(tmp_path / "class_report.csv")
    assert written["class"].tolist()[-1] == "accuracy" and written["support"].tolist()[:5] == [2] * 5
    assert oof.save_cv(tmp_path, PRESETS["cassava"], raw)["class_report"] is None
    assert not (tmp_path / "class_report.csv").exists()


# ------------------------------------------------------------------------------------------------ inference, bundle


def cassava_data(data: Path, n_train: int = 0, n_test: int = 0, side: int = 16, seed: int = 0) -> Path:
    """A tiny Cassava-layout folder: ``train.csv`` (image_id,label; label i % 5) with ``train_images/``, and
    ``sample_submission.csv`` with ``test_images/``: PNGs of ``side`` x ``side`` random pixels."""
    import cv2

    rng = np.random.default_rng(seed)
    for split, n, prefix in (("train_images", n_train, "r"), ("test_images", n_test, "t")):
        (data / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            assert cv2.imwrite(str(data / split / f"{prefix}{i:03d}.png"), rng.integers(0, 255, (side, side, 3),
                                                                                       dtype=np.uint8))  # fmt: skip
    pd.DataFrame({"image_id": [f"r{i:03d}.png" for i in range(n_train)], "label": np.arange(n_train) % C}).to_csv(
        data / "train.csv", index=False
    )
    pd.DataFrame({"image_id": [f"t{i:03d}.png" for i in range(n_test)], "label": 0}).to_csv(
        data / "sample_submission.csv", index=False
    )
    return data


def fake_classifier_fold(exp_dir: Path, fold: int, seed: int) -> None:
    """An untrained tiny timm classifier saved as ``fold<k>/best.pt`` with the ``config.json`` 10_train writes."""
    import torch

    from kitlib.models import create_classifier, save_model

    torch.manual_seed(seed)
    config = dict(model_name="test_resnet.r160_in1k", num_classes=C)
    save_model(exp_dir / f"fold{fold}" / "best.pt", create_classifier(**config), config, extra={"fold": fold})
    TrainConfig.from_notebook(preset="cassava", fold=fold, model_name=config["model_name"], encoder_weights="none",
                              height=32, width=32, amp="off").save(exp_dir / f"fold{fold}" / "config.json")  # fmt: skip


def test_predict_test_applies_the_chosen_stacker_to_the_members_fold_means(tmp_path, case):
    """The ensemble's members all enter the stacker (also one the blend weighed 0), each as its folds' mean; the
    submission takes the stacker's argmax; the Kaggle bundle carries stacking.json and every member's folds."""
    import torch

    from kitlib import inference
    from kitlib.formats import load_competition
    from kitlib.kaggle_bundle import _artifact_sources
    from kitlib.presets import PRESETS

    data = cassava_data(tmp_path / "data", n_test=5)
    root = tmp_path / "artifacts"
    fake_classifier_fold(root / "a", 0, seed=1)
    fake_classifier_fold(root / "a", 1, seed=2)
    fake_classifier_fold(root / "b", 0, seed=3)
    oofs = {"a": case["oofs"]["shifted"], "b": case["oofs"]["weak"]}
    stacking.fit_stacker(oofs, case["labels"]).to_json(root / "ens" / "stacking.json")
    write_json(root / "ens" / "weights.json", {"exps": ["a", "b"], "weights": [1.0, 0.0],
                                               "stacking": {"model": "logreg", "chosen": True}})  # fmt: skip
    assert inference.ensemble_weights(root, "", "ens") == [("a", 0.5), ("b", 0.5)]
    members, stacker = inference.load_members(root, "", "ens"), stacking.load_stacker(root / "ens")
    cassava, test_df = PRESETS["cassava"], load_competition(PRESETS["cassava"], data, split="test")

    def run(members, **kwargs):
        return torch.cat([p for _, p, _ in inference.predict_test(members, test_df, cassava, batch_size=2, **kwargs)])

    pa, pb = run([members[0]]), run([members[1]])
    stacked = run(members, stacker=stacker)
    assert stacked.shape == (5, C) and stacked.dtype == torch.float32
    np.testing.assert_allclose(stacked.numpy(), stacker.predict_proba([pa.numpy(), pb.numpy()]), atol=1e-6)
    assert not torch.allclose(stacked, (pa + pb) / 2)
    result = inference.make_submission(inference.predict_test(members, test_df, cassava, stacker=stacker), test_df,
                                       cassava, data, tmp_path / "sub.csv")  # fmt: skip
    assert result.submission["label"].astype(int).tolist() == stacked.argmax(1).tolist()
    with pytest.raises(ValueError, match=r"fitted on members \['a', 'b'\], predict_test got \['b', 'a'\]"):
        next(inference.predict_test(members[::-1], test_df, cassava, stacker=stacker))
    sources = [rel for rel, _ in _artifact_sources(root, "", "ens", None)[0]]
    assert "artifacts/ens/stacking.json" in sources and "artifacts/b/fold0/best.pt" in sources
