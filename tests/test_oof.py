"""kitlib.oof: gathering the folds' OOF in folds.csv order (and its errors), the truth masks, hand-computed CV scores
and the post-processing search on tiny arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kitlib import ensemble, plots, predictions, search, targets
from kitlib.folds import save_folds
from kitlib.io import write_csv
from kitlib.presets import PRESETS, get_preset
from kitlib.scoring import score_oof


def _fake_exp(root, n_folds=3, per_fold=2, with_cls=True) -> tuple:
    """folds.csv with ids a0..; fold k's OOF rows (in reversed order) hold the value of the id's position."""
    ids = [f"a{i}" for i in range(n_folds * per_fold)]
    folds = pd.DataFrame({"image_id": ids, "fold": [i % n_folds for i in range(len(ids))]})
    save_folds(folds, root / "folds.csv")
    for k in range(n_folds):
        fold_ids = folds.loc[folds["fold"] == k, "image_id"].tolist()[::-1]
        pos = np.array([ids.index(i) for i in fold_ids], dtype=np.uint8)
        d = root / f"fold{k}"
        d.mkdir(parents=True)
        np.save(d / "oof_probs.npy", np.broadcast_to(pos[:, None, None, None], (len(pos), 2, 3, 4)).copy())
        if with_cls:
            np.save(d / "oof_cls_probs.npy", np.repeat(pos[:, None], 2, axis=1).astype(np.float32))
        write_csv(d / "oof_ids.csv", pd.DataFrame({"image_id": fold_ids}))
    return ids, folds


def test_gather_oof_follows_folds_csv(tmp_path):
    ids, _ = _fake_exp(tmp_path)
    path = predictions.gather_oof(tmp_path, chunk_size=1)
    probs = np.load(path)
    assert probs.shape == (6, 2, 3, 4) and probs.dtype == np.uint8
    np.testing.assert_array_equal(probs[:, 0, 0, 0], np.arange(6))
    assert pd.read_csv(tmp_path / "oof_ids.csv")["image_id"].tolist() == ids
    np.testing.assert_array_equal(np.load(tmp_path / "oof_cls_probs.npy")[:, 1], np.arange(6))
    probs2, ids2, cls = predictions.read_gathered(tmp_path)
    assert ids2 == ids and cls is not None and not list(tmp_path.glob(".*tmp*"))


def test_gather_oof_without_every_cls_head_writes_none(tmp_path):
    _fake_exp(tmp_path)
    (tmp_path / "fold1" / "oof_cls_probs.npy").unlink()
    predictions.gather_oof(tmp_path)
    assert not (tmp_path / "oof_cls_probs.npy").exists()


def test_gather_oof_names_missing_folds(tmp_path):
    _fake_exp(tmp_path)
    (tmp_path / "fold1" / "oof_probs.npy").unlink()
    (tmp_path / "fold2" / "oof_ids.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1, 2\] of 3"):
        predictions.gather_oof(tmp_path)
    assert not (tmp_path / "oof_probs.npy").exists()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda ids: ids[:-1], "have no OOF row in any fold: a"),  # a fold lost a row
        (lambda ids: [*ids[:-1], "zz"], "not in folds.csv: zz"),
        (lambda ids: [*ids[:-1], "a1"], "puts in other folds: a1 \\(fold 1\\)"),
    ],
)
def test_gather_oof_names_bad_ids(tmp_path, edit, match):
    _fake_exp(tmp_path)
    d = tmp_path / "fold0"
    fold_ids = pd.read_csv(d / "oof_ids.csv")["image_id"].tolist()
    new = edit(fold_ids)
    write_csv(d / "oof_ids.csv", pd.DataFrame({"image_id": new}))
    np.save(d / "oof_probs.npy", np.load(d / "oof_probs.npy")[: len(new)])
    with pytest.raises(ValueError, match=match):
        predictions.gather_oof(tmp_path)


def test_gather_oof_refuses_folds_of_other_shapes(tmp_path):
    _fake_exp(tmp_path)
    np.save(tmp_path / "fold2" / "oof_probs.npy", np.zeros((2, 2, 3, 5), np.uint8))
    with pytest.raises(ValueError, match="fold2/oof_probs.npy is uint8 \\(2, 3, 5\\)"):
        predictions.gather_oof(tmp_path)


def test_write_oof_masks_streams_the_truth(tmp_path):
    from kitlib.demo import make_demo
    from kitlib.formats import load_competition
    from kitlib.targets import TargetMasks

    df = load_competition(PRESETS["demo"], make_demo(tmp_path / "d", n_train=3, n_test=1, height=32, width=48))
    masks = targets.write_oof_masks(df, PRESETS["demo"], (16, 24), tmp_path / "oof_masks.npy")
    assert isinstance(masks, np.memmap) and masks.shape == (3, 4, 16, 24) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, np.stack(list(TargetMasks(df, PRESETS["demo"], (16, 24)))))
    with pytest.raises(ValueError, match="classification"):
        targets.write_oof_masks(df, PRESETS["cassava"], (16, 24), tmp_path / "x.npy")


def test_score_oof_dice_by_hand():
    # 2 images x 2 classes of 1 x 4 pixels; p > 0.5 is foreground (uint8: v > 127).
    probs = np.array([[[[255, 255, 0, 0]], [[0, 0, 0, 0]]], [[[128, 0, 0, 0]], [[127, 200, 0, 0]]]], np.uint8)
    masks = np.array([[[[1, 0, 0, 0]], [[0, 0, 0, 0]]], [[[1, 0, 0, 0]], [[0, 0, 1, 1]]]], np.uint8)
    preset = get_preset("demo").replace(classes=("A", "B"))
    # dice: (0, A) 2*1/(2+1) = 2/3; (0, B) both empty = 1; (1, A) 1; (1, B) 0.
    table = score_oof(probs, masks, preset, chunk_size=1).table.set_index("class")
    assert table.loc["A", "dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert table.loc["B", "dice"] == pytest.approx(0.5)
    assert table.loc["overall", "dice"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    skip = score_oof(probs, masks, preset.replace(dice_empty_score=None)).table.set_index("class")
    assert skip.loc["B", "dice"] == 0.0 and skip.loc["overall", "n"] == 3
    assert skip.loc["overall", "dice"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="masks shape"):
        score_oof(probs, masks[:, :1], preset)


def test_score_oof_miou_and_accuracy_by_hand():
    preset = get_preset("coco")
    c = preset.num_classes
    labels = np.zeros((2, 1, 2), np.uint8)
    labels[0, 0, 1] = 1
    probs = np.zeros((2, c, 1, 2), np.float32)
    probs[:, 0] = 1.0
    probs[0, 1, 0, 1] = 2.0  # right class 1 pixel; everything else predicted background, right too
    probs[1, 1, 0, 0] = 2.0  # one background pixel predicted as class 1
    table = score_oof(probs, labels, preset).table.set_index("class")
    bg, c1 = preset.classes[0], preset.classes[1]
    assert table.loc[bg, "miou"] == pytest.approx(2 / 3) and table.loc[c1, "miou"] == pytest.approx(1 / 2)
    assert table.loc["overall", "miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    acc = score_oof(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]), get_preset("cassava")).table
    assert acc.set_index("class").loc["overall", "accuracy"] == pytest.approx(2 / 3)
    assert acc.iloc[1]["accuracy"] == pytest.approx(1 / 2)


def test_search_postprocess_hand_case():
    """Class A: a true 2x2 square at p = 0.6 plus a lone false pixel at 0.9 -> best t < 0.6 with min_area 1.
    Class B: truth empty, noise at 0.3 -> best threshold 0.4 (nothing kept) scores 1."""
    probs = np.zeros((1, 2, 6, 6), np.float32)
    masks = np.zeros((1, 2, 6, 6), np.uint8)
    probs[0, 0, 1:3, 1:3] = 0.6
    masks[0, 0, 1:3, 1:3] = 1
    probs[0, 0, 5, 5] = 0.9
    probs[0, 1, 4, 0:3] = 0.3
    preset = get_preset("demo").replace(classes=("A", "B"))
    params, tables = search.search_postprocess(probs, masks, preset, [0.2, 0.4, 0.7], [0, 1], num_workers=0)
    assert params.threshold == [0.2, 0.4] and params.min_area == [1, 0]
    assert params.meta["method"] == "threshold" and params.meta["search_dice"] == [1.0, 1.0]
    assert set(tables["best"]["class"]) == {"A", "B"} and tables["triplet"] is None
    assert len(tables["threshold"]) == 2 * 3 * 2
    post = score_oof(probs, masks, preset, params).table.set_index("class")
    assert post.loc["overall", "dice"] == 1.0
    raw = score_oof(probs, masks, preset).table.set_index("class")
    assert raw.loc["A", "dice"] == pytest.approx(2 * 4 / (5 + 4))
    # Triplet (0.5, 2, 0.5): A 8/9, B 1 beats threshold 0.2 / min_area 0: A 8/9, B 0.
    params, tables = search.search_postprocess(
        probs, masks, preset, [0.2], [0], triplet={"top_thresholds": [0.5], "min_contour_areas": [2],
                                                    "bottom_thresholds": [0.5]}, num_workers=0,
    )  # fmt: skip
    assert params.meta["method"] == "triplet" and params.top_score_threshold == [0.5, 0.5]
    assert "triplet_dice" in tables["best"]
    with pytest.raises(ValueError, match="argmax"):
        search.search_postprocess(probs, masks, PRESETS["coco"], [0.5], [0])


def test_parse_grid_and_check_same_ids():
    assert search.parse_grid("0.3, 0.4,0.5") == [0.3, 0.4, 0.5]
    assert search.parse_grid("0 100 1e3", int) == [0, 100, 1000]
    assert search.parse_grid([1, 2], int) == [1, 2] and search.parse_grid(0.5) == [0.5]
    with pytest.raises(ValueError, match="empty grid"):
        search.parse_grid(" ")
    assert predictions.check_same_ids({"a": ["x", "y"], "b": ["x", "y"]}) == ["x", "y"]
    with pytest.raises(ValueError, match="'a' and 'b'.*1 missing: y"):
        predictions.check_same_ids({"a": ["x", "y"], "b": ["x"]})
    with pytest.raises(ValueError, match="another order"):
        predictions.check_same_ids({"a": ["x", "y"], "b": ["y", "x"]})
    assert ensemble.sample_rows(10, 0) is None and len(ensemble.sample_rows(10, 4)) == 4


def test_miou_score_fn_matches_score_oof():
    from kitlib.ensemble import blend_score

    rng = np.random.default_rng(0)
    preset = get_preset("coco")
    probs = rng.random((5, preset.num_classes, 4, 4)).astype(np.float32)
    labels = rng.integers(0, preset.num_classes, (5, 4, 4)).astype(np.uint8)
    fn = ensemble.blend_score_fn(preset, labels)
    expected = score_oof(probs, labels, preset).table.set_index("class").loc["overall", "miou"]
    assert blend_score([probs], fn, chunk_size=2) == pytest.approx(expected)


def test_plot_search_heatmaps():
    df = pd.DataFrame({"class_index": [0, 0, 1, 1], "class": ["A", "A", "B", "B"], "threshold": [0.3, 0.5] * 2,
                       "min_area": [0] * 4, "dice": [0.1, 0.2, 0.3, np.nan]})  # fmt: skip
    fig = plots.plot_search_heatmaps(df)
    assert len(fig.axes) >= 2 and "A" in fig.axes[0].get_title()


def test_search_gate_keeps_a_gate_only_when_it_helps():
    from kitlib.gate import search_gate
    from kitlib.postprocess import PostProcess, apply_postprocess

    # class 0 present on images 0-1 (a solid block); images 2-3 carry faint noise above the pixel threshold, which the
    # top-K gate removes: the gated Dice is 1.0 where the plain threshold scores the noisy images 0.
    probs = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    masks = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    probs[:2, 0, :4, :4] = 250
    masks[:2, 0, :4, :4] = 1
    probs[2:, 0, 0, 0] = 140  # one stray pixel above 0.5
    base = PostProcess(threshold=[0.5], min_area=[0])
    params, table = search_gate(probs, masks, PRESETS["masks"], base, top_k=4)
    assert table.loc[table["gate"] == "none", "dice"].item() == pytest.approx(0.5)
    assert params.classifier_threshold is not None and params.top_k == 4
    assert params.meta["gate_dice"] == pytest.approx(1.0)
    gated = [apply_postprocess(p, params) for p in probs]
    assert all(g.sum() == 0 for g in gated[2:]) and all(g.sum() == 16 for g in gated[:2])
    # nothing to gain: perfect probabilities keep the plain threshold
    clean = masks * 255
    params, _ = search_gate(clean, masks, PRESETS["masks"], base, top_k=4)
    assert params.classifier_threshold is None and params.meta["gate"] == "none"
