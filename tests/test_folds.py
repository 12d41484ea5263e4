"""kitlib.folds: balance, groups, determinism, fallbacks, errors, the folds file and its round trip."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from kitlib.folds import attach_folds, fold_summary, load_folds, make_folds, save_folds
from kitlib.presets import PRESETS, get_preset


def _seg_table(preset: str, n: int, probs, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A canonical segmentation table with random presence: (table, presence (n, K) bool)."""
    classes = PRESETS[preset].target_classes
    rng = np.random.default_rng(seed)
    presence = rng.random((n, len(classes))) < np.asarray(probs)
    df = pd.DataFrame({
        "image_id": [f"{i:05d}.jpg" for i in range(n)],
        "image_path": [f"/data/{i:05d}.jpg" for i in range(n)],
        "height": 64,
        "width": 96,
    })  # fmt: skip
    for k, c in enumerate(classes):
        df[c] = np.where(presence[:, k], f"{k + 1} 5", "")
    return df, presence


def _cls_table(n: int, n_classes: int = 5, seed: int = 0, probs=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"image_id": [f"{i}.jpg" for i in range(n)], "label": rng.choice(n_classes, n, p=probs)})


def _per_fold(fold: np.ndarray, onehot: np.ndarray, n_folds: int) -> np.ndarray:
    """(n_folds, K) count of each column per fold."""
    return np.stack([onehot[fold == k].sum(axis=0) for k in range(n_folds)])


TABLES = {
    "multilabel": lambda: _seg_table("clouds", 83, [0.45, 0.3, 0.5, 0.2])[0],
    "binary": lambda: _seg_table("dacon_building", 57, [0.6])[0],
    "multiclass": lambda: _seg_table("coco", 61, np.linspace(0.1, 0.6, 11))[0],
    "classification": lambda: _cls_table(71),
}
PRESET_OF = {
    "multilabel": PRESETS["clouds"], "binary": PRESETS["dacon_building"], "multiclass": PRESETS["coco"],
    "classification": PRESETS["cassava"],
}  # fmt: skip


@pytest.mark.parametrize("kind", list(TABLES))
@pytest.mark.parametrize("n_folds", [2, 5])
def test_one_fold_each_and_balanced_sizes(kind, n_folds):
    df = TABLES[kind]()
    out = make_folds(df, PRESET_OF[kind], n_folds=n_folds)
    assert out is not df and "fold" not in df.columns
    assert out["fold"].dtype == np.int64
    assert set(out["fold"]) == set(range(n_folds))
    sizes = np.bincount(out["fold"], minlength=n_folds)
    assert sizes.sum() == len(df) and sizes.max() - sizes.min() <= 1
    pd.testing.assert_frame_equal(out.drop(columns="fold"), df)


@pytest.mark.parametrize(("preset", "n", "probs"), [
    ("clouds", 83, [0.45, 0.3, 0.5, 0.2]),
    ("clouds", 200, [0.05, 0.6, 0.35, 0.9]),
    ("demo", 80, [0.5, 0.5, 0.5, 0.5]),
    ("coco", 150, np.linspace(0.03, 0.7, 11)),
])  # fmt: skip
def test_multilabel_class_counts_balanced(preset, n, probs):
    df, presence = _seg_table(preset, n, probs, seed=n)
    fold = make_folds(df, PRESETS[preset], n_folds=5, seed=0)["fold"].to_numpy()
    counts = _per_fold(fold, presence, 5)
    mean = presence.sum(axis=0) / 5
    assert np.abs(counts - mean).max() <= 1.0, counts


def test_binary_and_classification_stratified():
    df, presence = _seg_table("dacon_building", 57, [0.3])
    fold = make_folds(df, PRESETS["dacon_building"], n_folds=5)["fold"].to_numpy()
    nonempty = _per_fold(fold, presence, 5)[:, 0]
    assert nonempty.max() - nonempty.min() <= 1 and nonempty.sum() == presence.sum()

    cls = _cls_table(203, probs=[0.05, 0.1, 0.1, 0.6, 0.15])
    fold = make_folds(cls, PRESETS["cassava"], n_folds=5)["fold"].to_numpy()
    counts = _per_fold(fold, np.eye(5, dtype=int)[cls["label"]], 5)
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all(), counts


@pytest.mark.parametrize("kind", list(TABLES))
def test_groups_never_split(kind):
    df = TABLES[kind]()
    rng = np.random.default_rng(1)
    df["patient"] = [f"p{g}" for g in rng.integers(0, 17, len(df))]
    out = make_folds(df, PRESET_OF[kind], n_folds=4, group_col="patient")
    assert (out.groupby("patient")["fold"].nunique() == 1).all()
    group_sizes = np.bincount(out.groupby("patient")["fold"].first(), minlength=4)
    assert group_sizes.max() - group_sizes.min() <= 1  # balanced in groups
    assert out.attrs["fold_group_col"] == "patient"


def test_groups_stratified_on_aggregated_presence():
    """Groups of 3 rows sharing a pattern: the group-level presence is balanced like images would be."""
    df, presence = _seg_table("clouds", 60, [0.5, 0.3, 0.4, 0.2], seed=4)
    df["group"] = np.arange(60) // 3
    presence = presence[::3].repeat(3, axis=0)  # every row of a group gets the group's pattern
    for k, c in enumerate(PRESETS["clouds"].target_classes):
        df[c] = np.where(presence[:, k], "1 5", "")
    out = make_folds(df, PRESETS["clouds"], n_folds=5, group_col="group")
    group_fold = out.groupby("group")["fold"].first().to_numpy()
    counts = _per_fold(group_fold, presence[::3], 5)
    assert np.abs(counts - presence[::3].sum(axis=0) / 5).max() <= 1.0


@pytest.mark.parametrize("kind", list(TABLES))
def test_seed_determinism_and_row_order(kind):
    df = TABLES[kind]()
    preset = PRESET_OF[kind]
    a = make_folds(df, preset, seed=7)["fold"]
    pd.testing.assert_series_equal(a, make_folds(df, preset, seed=7)["fold"])
    assert not a.equals(make_folds(df, preset, seed=8)["fold"])
    shuffled = make_folds(df.sample(frac=1.0, random_state=0), preset, seed=7)["fold"].sort_index()
    pd.testing.assert_series_equal(a, shuffled)


@pytest.mark.parametrize(("n_folds", "group_col", "message"), [
    (1, None, "n_folds must be >= 2, got 1"),
    (0, None, "n_folds must be >= 2, got 0"),
    (11, None, r"n_folds=11 is larger than the number of images \(10\)"),
    (4, "g", r"n_folds=4 is larger than the number of groups \(3\)"),
])  # fmt: skip
def test_bad_n_folds(n_folds, group_col, message):
    df = _cls_table(10)
    df["g"] = np.arange(10) % 3
    with pytest.raises(ValueError, match=message):
        make_folds(df, PRESETS["cassava"], n_folds=n_folds, group_col=group_col)


def test_bad_tables():
    df = _cls_table(10)
    with pytest.raises(ValueError, match=r"image_id not unique: 1 id\(s\) repeated, e.g. 3.jpg"):
        make_folds(df.assign(image_id=df["image_id"].replace("4.jpg", "3.jpg")), PRESETS["cassava"])
    with pytest.raises(ValueError, match=r"label must be an integer in 0..4; 1 bad row\(s\): 2.jpg=7"):
        make_folds(df.assign(label=df["label"].mask(df.index == 2, 7)), PRESETS["cassava"])
    with pytest.raises(ValueError, match="needs a 'label' column"):
        make_folds(df.drop(columns="label"), PRESETS["cassava"])
    with pytest.raises(ValueError, match="group column 'site' not in the table"):
        make_folds(df, PRESETS["cassava"], group_col="site")
    with pytest.raises(ValueError, match=r"missing in 1 row\(s\), image_ids: 0.jpg"):
        make_folds(df.assign(site=[None] + ["a"] * 9), PRESETS["cassava"], group_col="site")
    seg, _ = _seg_table("clouds", 10, [0.5] * 4)
    with pytest.raises(ValueError, match=r"no column for class\(es\) Gravel, Sugar"):
        make_folds(seg.drop(columns=["Gravel", "Sugar"]), PRESETS["clouds"])
    with pytest.raises(KeyError, match="unknown preset"):
        make_folds(df, get_preset("nope"))


def test_rare_classes_fall_back(caplog):
    # some classes rarer than n_folds: still stratified, a logged warning instead of sklearn's UserWarning
    df = _cls_table(40, probs=[0.9, 0.1, 0.0, 0.0, 0.0])
    df.loc[0, "label"] = 4
    with caplog.at_level(logging.WARNING, logger="kitlib.folds"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = make_folds(df, PRESETS["cassava"], n_folds=5)
    assert "Healthy: 1" in caplog.text
    assert np.bincount(out["fold"]).tolist() == [8] * 5
    counts = _per_fold(out["fold"].to_numpy(), np.eye(5, dtype=int)[df["label"]], 5)
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()

    # no class with n_folds members: stratification is impossible, plain KFold
    caplog.clear()
    tiny = pd.DataFrame({"image_id": [f"{i}.jpg" for i in range(6)], "label": [0, 0, 1, 1, 2, 3]})
    with caplog.at_level(logging.WARNING, logger="kitlib.folds"):
        out = make_folds(tiny, PRESETS["cassava"], n_folds=3)
    assert "plain shuffled KFold" in caplog.text
    assert np.bincount(out["fold"]).tolist() == [2, 2, 2]

    # multilabel: a class in 2 images and one in none still split, with a warning
    caplog.clear()
    seg, _ = _seg_table("clouds", 30, [0.5, 0.5, 0.0, 0.0])
    seg.loc[[3, 9], "Gravel"] = "1 2"
    with caplog.at_level(logging.WARNING, logger="kitlib.folds"):
        out = make_folds(seg, PRESETS["clouds"], n_folds=5)
    assert "Gravel: 2" in caplog.text and "Sugar: 0" in caplog.text
    assert np.bincount(out["fold"]).tolist() == [6] * 5


def test_all_empty_binary():
    df, _ = _seg_table("dacon_building", 12, [0.0])
    out = make_folds(df, PRESETS["dacon_building"], n_folds=4)
    assert np.bincount(out["fold"]).tolist() == [3] * 4


def test_fold_summary():
    df, presence = _seg_table("clouds", 40, [0.5, 0.3, 0.4, 0.2])
    summary = fold_summary(make_folds(df, PRESETS["clouds"], n_folds=4), PRESETS["clouds"])
    assert list(summary.columns) == ["n_images", "Fish", "Flower", "Gravel", "Sugar"]
    assert summary["n_images"].tolist() == [10] * 4
    assert summary[["Fish", "Flower", "Gravel", "Sugar"]].sum().tolist() == presence.sum(axis=0).tolist()


def test_save_load_round_trip(tmp_path):
    df = pd.DataFrame({"image_id": ["007", "0011165.jpg", "12", "a b.png"], "label": [0, 1, 0, 1]})
    df["site"] = ["x", "y", "x", "z"]
    out = make_folds(df, PRESETS["cassava"], n_folds=2, group_col="site")
    path = save_folds(out, tmp_path / "exp001" / "folds.csv")
    assert path.read_text().splitlines()[0] == "image_id,fold,site"
    back = load_folds(path)
    assert back["image_id"].tolist() == ["007", "0011165.jpg", "12", "a b.png"]  # ids stay strings
    assert back["fold"].dtype == np.int64 and back["fold"].tolist() == out["fold"].tolist()
    assert back["site"].tolist() == df["site"].tolist()
    # without groups: only image_id,fold; attach_folds restores the column on a shuffled table
    plain = make_folds(_cls_table(20), PRESETS["cassava"], n_folds=4)
    save_folds(plain, tmp_path / "plain.csv")
    assert load_folds(tmp_path / "plain.csv").columns.tolist() == ["image_id", "fold"]
    shuffled = plain.drop(columns="fold").sample(frac=1.0, random_state=1)
    attached = attach_folds(shuffled, load_folds(tmp_path / "plain.csv"))
    pd.testing.assert_series_equal(attached["fold"], plain["fold"].loc[shuffled.index])
    with pytest.raises(ValueError, match=r"column\(s\) \['fold'\] not in the table"):
        save_folds(shuffled, tmp_path / "bad.csv")


GOOD = "image_id,fold\na.jpg,0\nb.jpg,1\nc.jpg,0\nd.jpg,1\n"
CORRUPT = [
    ("image_id,split\na.jpg,0\nb.jpg,1\n", r"column\(s\) \['fold'\] missing"),
    ("id,fold\na.jpg,0\nb.jpg,1\n", r"column\(s\) \['image_id'\] missing"),
    (GOOD.replace("c.jpg,0", "c.jpg,x"), r"fold must be an integer >= 0; 1 bad row\(s\): line 4: 'x'"),
    (GOOD.replace("c.jpg,0", "c.jpg,0.5"), r"line 4: '0.5'"),
    (GOOD.replace("c.jpg,0", "c.jpg,-1"), "line 4"),
    (GOOD.replace("c.jpg,0", "c.jpg,"), "line 4"),
    (GOOD.replace("c.jpg", "a.jpg"), r"repeated image_id in 2 row\(s\): line 2: 'a.jpg', line 4: 'a.jpg'"),
    (GOOD.replace("b.jpg", ""), r"empty image_id in 1 row\(s\): line 3"),
    (GOOD.replace(",1\n", ",2\n"), r"found \[0, 2\]"),
    ("image_id,fold\na.jpg,0\nb.jpg,0\n", r"found \[0\]"),
    ("image_id,fold\n", r"found \[\]"),
    ("", "not a readable folds CSV"),
]


@pytest.mark.parametrize(("text", "message"), CORRUPT)
def test_load_folds_rejects_corrupted(tmp_path, text, message):
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_folds(path)
    assert str(path) in str(info.value)


def test_load_folds_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folds file"):
        load_folds(tmp_path / "nope.csv")


def test_attach_folds_errors():
    folds = pd.DataFrame({"image_id": [f"{i}.jpg" for i in range(4)], "fold": [0, 1, 0, 1]})
    table = pd.DataFrame({"image_id": [f"{i}.jpg" for i in range(12)]})
    with pytest.raises(ValueError, match=r"8 of 12 image\(s\) have no fold.*: 4.jpg, 5.jpg, 6.jpg, 7.jpg, 8.jpg "
                                         r"\(\+3 more\)"):  # fmt: skip
        attach_folds(table, folds)
    # extra ids in the folds file are ignored (a table loaded with drop_missing=True)
    out = attach_folds(table.iloc[[3, 1]], folds)
    assert out["fold"].tolist() == [1, 1] and out.index.tolist() == [3, 1]
    with pytest.raises(ValueError, match="folds repeat image_id"):
        attach_folds(table.iloc[:2], pd.concat([folds, folds.iloc[:1]]))
    with pytest.raises(ValueError, match=r"folds has no column\(s\) \['fold'\]"):
        attach_folds(table, folds.drop(columns="fold"))


def test_real_cassava_labels(cassava_dir):
    """The real train.csv of Cassava (21,397 rows, labels 0..4, CMD 61 %): every label split evenly."""
    df = pd.read_csv(cassava_dir / "train.csv", dtype={"image_id": str})
    out = make_folds(df, PRESETS["cassava"], n_folds=5, seed=42)
    sizes = np.bincount(out["fold"])
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 21397
    counts = _per_fold(out["fold"].to_numpy(), np.eye(5, dtype=int)[df["label"]], 5)
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()


def test_real_cassava_sample_loaded(cassava_dir, tmp_path):
    """The sample's 7 real images through load_competition (drop_missing) -> folds -> file -> attach."""
    from kitlib.formats import load_competition

    df = load_competition(PRESETS["cassava"], cassava_dir, drop_missing=True)
    assert len(df) == 7
    out = make_folds(df, PRESETS["cassava"], n_folds=3)
    path = save_folds(out, tmp_path / "folds.csv")
    attached = attach_folds(df, load_folds(path))
    assert attached["fold"].tolist() == out["fold"].tolist()


def test_demo_folds(tmp_path):
    """The synthetic demo, loaded by kitlib.formats: 5 folds of 16 images, every class in every fold."""
    from kitlib.demo import make_demo
    from kitlib.formats import class_presence, load_competition

    df = load_competition(PRESETS["demo"], make_demo(tmp_path, n_train=80, n_test=1))
    out = make_folds(df, PRESETS["demo"], n_folds=5)
    assert np.bincount(out["fold"]).tolist() == [16] * 5
    counts = _per_fold(out["fold"].to_numpy(), class_presence(df, PRESETS["demo"]), 5)
    assert counts.min() >= 1
    assert np.abs(counts - counts.mean(axis=0)).max() <= 1.0
