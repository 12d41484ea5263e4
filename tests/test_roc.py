"""kitlib.roc: the pixel ROC against scikit-learn's on the same pixels, Youden's threshold by hand, streaming, and the
search that tries it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from kitlib.presets import PRESETS
from kitlib.roc import pixel_roc, youden_thresholds
from kitlib.search import search_from_params


def _case(seed: int = 0, n: int = 6, c: int = 2, h: int = 12, w: int = 10):
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, c, h, w)) < 0.3).astype(np.uint8)
    probs = np.clip(0.35 * masks + rng.normal(0.3, 0.2, masks.shape), 0, 1)
    return (probs * 255).round().astype(np.uint8), masks


def test_roc_matches_sklearn_at_every_cut():
    probs, masks = _case()
    roc = pixel_roc(probs, masks, ["a", "b"])
    assert len(roc) == 2 * 255 and list(roc["class"].unique()) == ["a", "b"]
    for k, name in enumerate("ab"):
        y, score = masks[:, k].reshape(-1), probs[:, k].reshape(-1).astype(np.int64)
        fpr, tpr, cuts = roc_curve(y, score)  # predicted positive where score >= cut
        g = roc[roc["class"] == name].set_index("threshold")
        for f, t, cut in zip(fpr, tpr, cuts, strict=True):
            if 1 <= cut <= 255:  # score >= cut  <=>  p > (cut - 1) / 255
                row = g.loc[(cut - 1) / 255.0]
                assert row["tpr"] == pytest.approx(t) and row["fpr"] == pytest.approx(f)


def test_youden_by_hand():
    """Foreground pixels at 200/255, background at 50/255 and 120/255: every cut in [120, 200) separates them fully
    (J = 1), and the lowest such threshold is 120/255."""
    probs = np.zeros((1, 1, 2, 3), np.uint8)
    probs[0, 0] = [[200, 200, 50], [120, 50, 50]]
    masks = (probs >= 200).astype(np.uint8)
    table = youden_thresholds(pixel_roc(probs, masks))
    assert table["threshold"][0] == pytest.approx(120 / 255) and table["youden_j"][0] == 1.0
    assert table["tpr"][0] == 1.0 and table["fpr"][0] == 0.0
    probs[0, 0, 1, 0] = 210  # one background pixel above the foreground: J = 1 - 1/4 at best
    table = youden_thresholds(pixel_roc(probs, masks))
    assert table["youden_j"][0] == pytest.approx(0.75) and table["fpr"][0] == pytest.approx(0.25)


def test_float_probs_use_the_uint8_grid_and_chunks_change_nothing():
    probs, masks = _case(1)
    as_float = probs.astype(np.float32) / 255.0
    a = pixel_roc(probs, masks)
    pd.testing.assert_frame_equal(a, pixel_roc(as_float, masks))
    pd.testing.assert_frame_equal(a, pixel_roc(probs, masks, chunk_size=1))


def test_a_class_without_foreground_has_no_threshold():
    probs, masks = _case(2)
    masks[:, 1] = 0
    table = youden_thresholds(pixel_roc(probs, masks, ["x", "empty"]))
    assert np.isfinite(table["threshold"][0]) and np.isnan(table["threshold"][1])


@pytest.mark.parametrize(("bad", "match"), [("shape", "shape"), ("range", r"probabilities in \[0, 1\]"),
                                            ("names", "2 class names for 3 classes")])  # fmt: skip
def test_bad_input_is_named(bad, match):
    probs, masks = _case(c=3)
    if bad == "shape":
        masks = masks[:, :2]
    if bad == "range":
        probs = probs.astype(np.float32) * 2
    with pytest.raises(ValueError, match=match):
        pixel_roc(probs, masks, ["a", "b"] if bad == "names" else None)


def test_search_tries_the_youden_thresholds():
    """With youden, each class's Youden threshold is in the searched grid and its table comes back."""
    probs, masks = _case(3, n=8, c=1)
    preset = PRESETS["dacon_building"]
    params, tables = search_from_params(probs, masks, preset, "0.5", "0", youden=True, num_workers=1)
    youden = tables["youden"]
    assert list(youden["class"]) == ["building"]
    tried = set(tables["threshold"]["threshold"])
    assert youden["threshold"][0] in tried and 0.5 in tried
    assert tables["roc"] is not None and len(tables["roc"]) == 255
    _, plain = search_from_params(probs, masks, preset, "0.5", "0", youden=False, num_workers=1)
    assert plain["youden"] is None and set(plain["threshold"]["threshold"]) == {0.5}
