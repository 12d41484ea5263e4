"""Label noise (kitlib.label_noise): cleanlab finds labels flipped on purpose, the segmentation ranking puts corrupted
masks first, and the reviewed lists change a fold's training rows (not its validation rows) and the run's identity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from kitlib import label_noise, train
from kitlib.demo_classify import make_classification_demo
from kitlib.folds import make_folds, save_folds
from kitlib.formats import load_competition
from kitlib.presets import PRESETS
from kitlib.stages import TrainConfig

# ------------------------------------------------------------------------------------------------ classification


def _noisy_problem(n: int = 200, n_classes: int = 4, n_flipped: int = 10, seed: int = 0):
    """Separable blobs, ``n_flipped`` labels moved to another class; OOF probs of a logistic model trained on the
    noisy labels (5-fold cross-validated, as the kit's OOF)."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % n_classes
    centres = rng.normal(0, 4, size=(n_classes, 8))
    x = centres[truth] + rng.normal(size=(n, 8))
    flipped = rng.choice(n, n_flipped, replace=False)
    noisy = truth.copy()
    noisy[flipped] = (truth[flipped] + rng.integers(1, n_classes, n_flipped)) % n_classes
    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, noisy, cv=5, method="predict_proba")
    return probs.astype(np.float16), noisy, truth, flipped


def test_cleanlab_finds_the_flipped_labels():
    probs, noisy, truth, flipped = _noisy_problem()
    ids = [f"img{i:03d}" for i in range(len(noisy))]
    table = label_noise.find_label_issues(probs, noisy, ids)
    assert list(table.columns) == ["image_id", "label", "suggested_label", "self_confidence",
                                   "suggested_confidence", "rank", "flagged"]  # fmt: skip
    assert len(table) == 200 and table["rank"].tolist() == list(range(1, 201))
    assert table["self_confidence"].is_monotonic_increasing  # worst first
    found = {int(i[3:]) for i in table.loc[table["flagged"], "image_id"]}
    wrong = set(flipped.tolist())
    recall, precision = len(found & wrong) / len(wrong), len(found & wrong) / max(len(found), 1)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)  # measured: 9 of 10 found, 9 flagged
    top = table.head(10)  # the suggested label of the worst rows is their true label
    top_rows = top["image_id"].str[3:].astype(int).to_numpy()
    assert (top["suggested_label"].to_numpy() == truth[top_rows]).mean() >= 0.9
    # negative control: the clean labels are (almost) never flagged
    clean_probs, clean, _, _ = _noisy_problem(n_flipped=0)
    assert label_noise.find_label_issues(clean_probs, clean, ids)["flagged"].sum() <= 2


def test_find_label_issues_refuses_bad_input():
    with pytest.raises(ValueError, match=r"row 1 \(b\): label 3 outside \[0, 2\)"):
        label_noise.find_label_issues(np.full((2, 2), 0.5), np.array([0, 3]), ["a", "b"])
    with pytest.raises(ValueError, match="need"):
        label_noise.find_label_issues(np.full((2, 2), 0.5), np.array([0, 1]), ["a"])


# ------------------------------------------------------------------------------------------------ segmentation


def _segmentation_case(tmp_path, n: int = 12, corrupted=(3, 8)):
    """Masks of random rectangles, OOF probs that follow them; the 'truth' of ``corrupted`` rows is wrong (one
    emptied, one moved), as a mislabelled image would be. Returned as memmaps."""
    rng = np.random.default_rng(0)
    masks = np.zeros((n, 2, 16, 24), np.uint8)
    for i in range(n):
        for k in range(2):
            y, x = rng.integers(0, 8), rng.integers(0, 12)
            masks[i, k, y : y + 6, x : x + 9] = 1
    probs = np.clip(masks * 200.0 + rng.integers(0, 40, masks.shape), 0, 255).astype(np.uint8)
    wrong = masks.copy()
    wrong[corrupted[0]] = 0
    wrong[corrupted[1]] = np.roll(masks[corrupted[1]], (8, 12), axis=(1, 2))
    np.save(tmp_path / "p.npy", probs)
    np.save(tmp_path / "m.npy", wrong)
    return np.load(tmp_path / "p.npy", mmap_mode="r"), np.load(tmp_path / "m.npy", mmap_mode="r")


def test_segmentation_ranking_puts_corrupted_masks_first(tmp_path):
    probs, masks = _segmentation_case(tmp_path)
    ids = [f"s{i}" for i in range(12)]
    preset = PRESETS["demo"].replace(classes=("a", "b"))
    table = label_noise.rank_segmentation(probs, masks, ids, preset, fraction=2 / 12, chunk_size=5)
    assert set(table["image_id"].head(2)) == {"s3", "s8"} and table["flagged"].sum() == 2
    assert table.loc[table["flagged"], "image_id"].tolist() == table["image_id"].head(2).tolist()
    assert (table["dice"].head(2) < 0.3).all() and (table["dice"].iloc[2:] == 1.0).all()
    assert table["loss"].head(2).min() > table["loss"].iloc[2:].max()  # the cross-entropy agrees
    whole = label_noise.rank_segmentation(probs, masks, ids, preset, fraction=2 / 12)  # one chunk
    pd.testing.assert_frame_equal(table, whole)
    # negative control: the true masks rank nothing low; fraction 0 flags nothing, max_dice flags by value
    clean = label_noise.rank_segmentation(probs, (np.asarray(probs) > 127).astype(np.uint8), ids, preset, 0.0)
    assert (clean["dice"] == 1.0).all() and not clean["flagged"].any()
    by_value = label_noise.rank_segmentation(probs, masks, ids, preset, fraction=0.0, max_dice=0.5)
    assert set(by_value.loc[by_value["flagged"], "image_id"]) == {"s3", "s8"}


def test_segmentation_ranking_multiclass():
    labels = np.zeros((4, 8, 8), np.int64)
    labels[:, 2:6, 2:6] = 1
    probs = np.zeros((4, 3, 8, 8), np.float32)
    probs[:, 0], probs[:, 1, 2:6, 2:6], probs[:, 0, 2:6, 2:6] = 1.0, 1.0, 0.0
    labels[2, 2:6, 2:6] = 2  # image 2's object carries the wrong class
    table = label_noise.rank_segmentation(probs, labels, ["a", "b", "c", "d"], PRESETS["coco"].replace(
        classes=("background", "x", "y")), fraction=0.25)  # fmt: skip
    assert table["image_id"].iloc[0] == "c" and table["dice"].iloc[0] == 0.0 and table["flagged"].sum() == 1


# ------------------------------------------------------------------------------------------------ reviewed lists


@pytest.fixture(scope="module")
def classified(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("noise")
    data = make_classification_demo(root / "data", n_train=30, n_test=2, height=32, width=32)
    preset = PRESETS["demo_classify"]
    folds = make_folds(load_competition(preset, data), preset, n_folds=3, seed=0)
    save_folds(folds, root / "artifacts" / "t" / "folds.csv")
    return {"root": root, "data_dir": str(data), "artifacts_root": str(root / "artifacts"), "exp": "t",
            "folds": folds}  # fmt: skip


def _cfg(c: dict, **kw) -> TrainConfig:
    return TrainConfig.from_notebook(preset="demo_classify", exp=c["exp"], data_dir=c["data_dir"],
                                     artifacts_root=c["artifacts_root"], fold=0, device="cpu", **kw)  # fmt: skip


def test_exclude_and_relabel_change_the_training_rows_only(classified, caplog):
    c, folds = classified, classified["folds"]
    train_ids = folds.loc[folds["fold"] != 0, "image_id"].astype(str).tolist()
    valid_ids = folds.loc[folds["fold"] == 0, "image_id"].astype(str).tolist()
    drop = [train_ids[0], train_ids[3], valid_ids[0]]  # a held-out id: it stays in validation
    exclude = c["root"] / "drop.csv"
    pd.DataFrame({"image_id": drop, "note": "blurred"}).to_csv(exclude, index=False)
    plain = _cfg(c)
    _, train0, valid0 = train.fold_tables(plain)
    with caplog.at_level("INFO", logger="kitlib.label_noise"):
        _, train1, valid1 = train.fold_tables(_cfg(c, exclude_ids_file=str(exclude)))
    assert "2 of 20 training rows excluded" in caplog.text
    assert set(train1["image_id"]) == set(train0["image_id"]) - set(drop) and len(train1) == len(train0) - 2
    pd.testing.assert_frame_equal(valid1, valid0)

    old = dict(zip(train0["image_id"], train0["label"], strict=True))
    relabel = c["root"] / "relabel.csv"
    new_label = (old[train_ids[1]] + 1) % 5
    pd.DataFrame({"image_id": [train_ids[1], valid_ids[1]], "label": [old[train_ids[1]], 0],  # the given labels,
                  "suggested_label": [new_label, 0], "flagged": [True, True]}).to_csv(relabel, index=False)  # fmt: skip
    _, train2, valid2 = train.fold_tables(_cfg(c, relabel_file=str(relabel)))
    got = dict(zip(train2["image_id"], train2["label"], strict=True))
    assert got[train_ids[1]] == new_label and {k: v for k, v in got.items() if k != train_ids[1]} == {
        k: v for k, v in old.items() if k != train_ids[1]}  # fmt: skip
    pd.testing.assert_frame_equal(valid2, valid0)  # the held-out row keeps its label

    # a reviewed copy of label_issues.csv: only its flagged rows count
    reviewed = c["root"] / "reviewed.csv"
    pd.DataFrame({"image_id": train_ids[:3], "flagged": [True, False, True]}).to_csv(reviewed, index=False)
    _, train3, _ = train.fold_tables(_cfg(c, exclude_ids_file=str(reviewed)))
    assert set(train0["image_id"]) - set(train3["image_id"]) == {train_ids[0], train_ids[2]}


def test_the_lists_are_part_of_the_run_id(classified):
    c = classified
    path = c["root"] / "ids.csv"
    pd.DataFrame({"image_id": [c["folds"]["image_id"].iloc[0]]}).to_csv(path, index=False)
    plain, listed = train.fold_run_id(_cfg(c)), train.fold_run_id(_cfg(c, exclude_ids_file=str(path)))
    assert plain != listed and _cfg(c).run_id() == _cfg(c, exclude_ids_file=str(path)).run_id()
    pd.DataFrame({"image_id": c["folds"]["image_id"].iloc[:2]}).to_csv(path, index=False)
    assert train.fold_run_id(_cfg(c, exclude_ids_file=str(path))) not in (plain, listed)  # a changed list
    assert train.fold_run_id(_cfg(c, relabel_file=str(path))) != train.fold_run_id(_cfg(c, exclude_ids_file=str(path)))


def test_bad_lists_fail_naming_the_ids_and_the_file(classified):
    c = classified
    path = c["root"] / "bad.csv"
    pd.DataFrame({"image_id": ["nope1.jpg", c["folds"]["image_id"].iloc[0]]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"exclude_ids_file .*bad\.csv: 1 image_id\(s\) not in the train table: "
                                         r"nope1\.jpg"):  # fmt: skip
        train.fold_tables(_cfg(c, exclude_ids_file=str(path)))
    pd.DataFrame({"image_id": [c["folds"]["image_id"].iloc[0]], "label": [9]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"relabel_file .*bad\.csv: .*: label '9' is not a class index in 0..4"):
        train.fold_tables(_cfg(c, relabel_file=str(path)))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        train.fold_run_id(_cfg(c, exclude_ids_file=str(c["root"] / "missing.csv")))
    with pytest.raises(ValueError, match="relabel_file .* use exclude_ids_file"):
        TrainConfig.from_notebook(preset="demo", relabel_file=str(path))
