"""kitlib.ensemble: hand-computed blends and scores, memmaps = in-memory, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kitlib.ensemble import (
    ScoreFn,
    accuracy_score_fn,
    blend,
    blend_score,
    dice_score_fn,
    neg_log_loss_fn,
)


def _binary_probs(p_class1) -> np.ndarray:
    """(N, 2) float32 probs from the probability of class 1."""
    p = np.asarray(p_class1, dtype=np.float32)
    return np.stack([1 - p, p], axis=1)


# Two classifiers that are each right where the other is unsure, and a third that is confidently wrong everywhere:
#   labels             1    1    1    0    0
#   A  p(class 1)     .9   .9   .9   .6   .6    right on rows 0-2      -> accuracy 3/5
#   B  p(class 1)     .4   .4   .4   .1   .1    right on rows 3-4      -> 2/5
#   C  p(class 1)      0    0    0    1    1    always wrong           -> 0
#   (A + B) / 2      .65  .65  .65  .35  .35    all right              -> 1
#   (A + B + C) / 3  .43  .43  .43  .57  .57    all wrong; (A+C)/2 and (B+C)/2 too -> 0
LABELS = np.array([1, 1, 1, 0, 0])
ORACLE = {
    "A": _binary_probs([0.9, 0.9, 0.9, 0.6, 0.6]),
    "B": _binary_probs([0.4, 0.4, 0.4, 0.1, 0.1]),
    "C": _binary_probs([0.0, 0.0, 0.0, 1.0, 1.0]),
}


# ---------------------------------------------------------------------------------------------------------- blend


def test_blend_weighted_mean_by_hand():
    a = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    b = np.array([[0.6, 0.4], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(blend([a, b]), [[0.4, 0.6], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(blend([a, b], weights=[3, 1]), [[0.3, 0.7], [0.75, 0.25]], rtol=1e-6)  # normalised
    np.testing.assert_allclose(blend([a, b], weights=[0, 1]), b)
    assert blend([a, b]).dtype == np.float32
    assert blend([a.astype(np.float64), b]).dtype == np.float64
    np.testing.assert_allclose(blend({"a": a, "b": b}, rows=[1]), [[0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(blend([a, b], rows=np.array([False, True])), [[0.5, 0.5]], rtol=1e-6)


def test_blend_uint8_rounds_half_to_even_and_floats_are_probs():
    a = np.array([[100, 100, 0, 255]], np.uint8)
    b = np.array([[101, 103, 1, 255]], np.uint8)
    # means 100.5, 101.5, 0.5, 255 -> np.rint: 100, 102, 0, 255
    np.testing.assert_array_equal(blend([a, b]), [[100, 102, 0, 255]])
    assert blend([a, b]).dtype == np.uint8
    np.testing.assert_allclose(blend([a, b], out_dtype=np.float32), [[100.5, 101.5, 0.5, 255]] / np.float32(255))
    # mixed uint8 and float inputs: both are probabilities
    f = np.array([[0.0, 1.0, 0.5, 1.0]], np.float32)
    np.testing.assert_allclose(blend([a, f]), [[50 / 255, (100 / 255 + 1) / 2, 0.25, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(blend([a, f], out_dtype=np.uint8), [[50, 178, 64, 255]])  # 177.5 -> 178, 63.75 -> 64


def test_blend_into_out_and_chunked(tmp_path):
    rng = np.random.default_rng(1)
    oofs = [rng.integers(0, 256, (7, 2, 3, 4), dtype=np.uint8) for _ in range(3)]
    whole = blend(oofs, weights=[1, 2, 3])
    out = np.lib.format.open_memmap(tmp_path / "blend.npy", mode="w+", dtype=np.uint8, shape=whole.shape)
    assert blend(oofs, weights=[1, 2, 3], out=out, chunk_size=2) is out
    np.testing.assert_array_equal(np.load(tmp_path / "blend.npy"), whole)
    np.testing.assert_array_equal(blend(oofs, weights=[1, 2, 3], chunk_size=1), whole)
    with pytest.raises(ValueError, match=r"out is uint8 \(6, 2, 3, 4\), expected uint8 \(7, 2, 3, 4\)"):
        blend(oofs, out=np.empty((6, 2, 3, 4), np.uint8))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: blend([]), ValueError, "oofs is empty"),
        (
            lambda: blend({"a": np.zeros((4, 3)), "b": np.zeros((4, 3)), "c": np.zeros((4, 2))}),
            ValueError,
            r"model 2 \('c'\) has shape \(4, 2\), model 0 \('a'\) has \(4, 3\)",
        ),
        (lambda: blend([np.zeros((4, 3))] * 2, weights=[1, 1, 1]), ValueError, r"got 3 weights .* for 2 models"),
        (
            lambda: blend([np.zeros((4, 3))] * 2, weights=[1, -0.5]),
            ValueError,
            r"weight of model 1 \('model1'\) is -0.5",
        ),
        (lambda: blend([np.zeros((4, 3))] * 2, weights=[0, 0]), ValueError, "every weight is zero"),
        (lambda: blend([np.zeros((4, 3), np.int64)]), TypeError, r"model 0 \('model0'\) has dtype int64"),
        (lambda: blend([np.zeros((4, 3))] * 2, rows=[0, 4]), ValueError, "row index 4 is outside the OOF's 4 rows"),
        (lambda: blend([np.zeros((4, 3))], out_dtype=np.int32), TypeError, "out_dtype must be uint8 or a float"),
        (
            lambda: blend_score([np.zeros((4, 3))], accuracy_score_fn([0, 1, 2])),
            ValueError,
            "'accuracy' has 3 rows .* the OOF arrays have 4",
        ),
        (
            lambda: blend_score([np.zeros((3, 3))], accuracy_score_fn([0, 1, 3])),
            ValueError,
            r"label 3 of row 2 is outside \[0, 3\)",
        ),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------------------- score functions


def test_classification_scores_by_hand():
    assert blend_score([ORACLE["A"]], accuracy_score_fn(LABELS)) == pytest.approx(3 / 5)
    assert blend_score([ORACLE["A"], ORACLE["B"]], accuracy_score_fn(LABELS)) == 1.0
    assert blend_score(ORACLE, accuracy_score_fn(LABELS), weights=[1, 1, 0], rows=[3, 4]) == 1.0
    # log loss of A: rows 0-2 log .9, rows 3-4 log .4
    expected = (3 * math.log(0.9) + 2 * math.log(0.4)) / 5
    assert blend_score([ORACLE["A"]], neg_log_loss_fn(LABELS)) == pytest.approx(expected, rel=1e-6)
    # C gives 0 to every true class: clipped to eps
    assert blend_score([ORACLE["C"]], neg_log_loss_fn(LABELS, eps=1e-6)) == pytest.approx(math.log(1e-6))


def test_plain_callable_score_gets_the_whole_blend():
    seen = []

    def score(blend_probs: np.ndarray, rows: np.ndarray) -> float:
        seen.append(rows.copy())
        return float((blend_probs.argmax(1) == LABELS[rows]).mean())

    assert blend_score(ORACLE, score, weights=[1, 1, 0]) == 1.0
    np.testing.assert_array_equal(seen[0], np.arange(5))
    assert blend_score(ORACLE, score, rows=[4, 0]) == blend_score(ORACLE, accuracy_score_fn(LABELS), rows=[4, 0])


def test_score_fn_mean_of_skips_nan_items():
    fn = ScoreFn.mean_of(lambda b, rows: np.where(rows % 2 == 0, b[:, 0], np.nan), name="even rows")
    oof = np.arange(6, dtype=np.float32)[:, None]
    assert blend_score([oof], fn) == pytest.approx((0 + 2 + 4) / 3)
    assert blend_score([oof], fn, chunk_size=1) == pytest.approx(2.0)
    assert math.isnan(blend_score([oof], fn, rows=[1, 3]))


# Understanding Clouds by hand: 2 images x 1 class of 2 x 2, two uint8 models.
#   truth     image 0 [[1, 1], [0, 0]]      image 1 empty
#   A (x255)  image 0 [[255, 0], [0, 0]]    image 1 [[0, 0], [0, 0]]
#   B (x255)  image 0 [[255, 255], [255, 0]] image 1 [[0, 0], [0, 200]]
#   equal blend: image 0 [[1, .5], [.5, 0]] -> > 0.5: one pixel -> Dice 2*1/(1+2) = 2/3; image 1 max .39 -> empty
#                -> both empty -> 1; mean 5/6. empty_score=None drops image 1 -> 2/3.
#   threshold .3: image 0 three pixels -> 2*2/(3+2) = 4/5; image 1 one pixel vs empty -> 0; mean 2/5.
#   weights 1:3: image 0 [[1, .75], [.75, 0]] -> 4/5; image 1 .59 -> 0; mean 2/5.
CLOUDS_TRUE = np.array([[[[1, 1], [0, 0]]], [[[0, 0], [0, 0]]]], np.uint8)
CLOUDS_A = np.array([[[[255, 0], [0, 0]]], [[[0, 0], [0, 0]]]], np.uint8)
CLOUDS_B = np.array([[[[255, 255], [255, 0]]], [[[0, 0], [0, 200]]]], np.uint8)


@pytest.mark.parametrize(
    ("weights", "threshold", "empty_score", "expected"),
    [
        (None, 0.5, 1.0, 5 / 6),
        (None, 0.5, None, 2 / 3),
        (None, 0.3, 1.0, 2 / 5),
        (None, [0.3], 1.0, 2 / 5),
        ([1, 3], 0.5, 1.0, 2 / 5),
        ([1, 0], 0.5, 1.0, 5 / 6),
        ([0, 1], 0.5, 1.0, (4 / 5 + 0) / 2),
    ],
)
def test_uint8_segmentation_dice_by_hand(weights, threshold, empty_score, expected):
    fn = dice_score_fn(CLOUDS_TRUE, threshold=threshold, empty_score=empty_score)
    assert blend_score([CLOUDS_A, CLOUDS_B], fn, weights=weights) == pytest.approx(expected)
    assert blend_score([CLOUDS_A, CLOUDS_B], fn, weights=weights, chunk_size=1) == pytest.approx(expected)


def test_uint8_segmentation_blend_by_hand():
    expected = np.array([[[[255, 128], [128, 0]]], [[[0, 0], [0, 100]]]], np.uint8)  # 127.5 -> 128 (half to even)
    np.testing.assert_array_equal(blend([CLOUDS_A, CLOUDS_B]), expected)
    probs = blend([CLOUDS_A, CLOUDS_B], out_dtype=np.float32)
    assert probs[0, 0, 0, 1] == 0.5  # exactly at the threshold: background
    fn = dice_score_fn(CLOUDS_TRUE)
    assert fn(probs, np.arange(2)) == pytest.approx(5 / 6)  # a ScoreFn is also a plain callable


def test_dice_score_fn_rejects_mismatches():
    with pytest.raises(ValueError, match=r"masks must be a non-empty \(N, K, H, W\)"):
        dice_score_fn(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="2 thresholds for 1 classes"):
        dice_score_fn(CLOUDS_TRUE, threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"blend shape \(1, 2, 3\) per image != masks shape \(1, 2, 2\)"):
        blend_score([np.zeros((2, 1, 2, 3), np.uint8)], dice_score_fn(CLOUDS_TRUE))


# --------------------------------------------------------------------------------------------------------- memmaps


def memmap_case(tmp_path) -> tuple[list[np.ndarray], list[np.ndarray], ScoreFn, ScoreFn]:
    """Three uint8 segmentation OOFs (9, 2, 6, 7), in memory and as memmaps, with Dice on in-memory and memmapped
    masks: (arrays, memmaps, fn, fn_mem)."""
    rng = np.random.default_rng(5)
    shape = (9, 2, 6, 7)
    masks = (rng.random(shape) < 0.3).astype(np.uint8)
    masks[0] = 0  # both-empty pairs
    arrays, memmaps = [], []
    for m in range(3):
        probs = np.clip(0.6 * masks + 0.2 + rng.normal(0, 0.3 + 0.1 * m, shape), 0, 1)
        arrays.append(np.rint(probs * 255).astype(np.uint8))
        np.save(tmp_path / f"oof{m}.npy", arrays[-1])
        memmaps.append(np.load(tmp_path / f"oof{m}.npy", mmap_mode="r"))
    np.save(tmp_path / "masks.npy", masks)
    fn_mem = dice_score_fn(np.load(tmp_path / "masks.npy", mmap_mode="r"))
    fn = dice_score_fn(masks)
    assert isinstance(memmaps[0], np.memmap)
    return arrays, memmaps, fn, fn_mem


def test_memmaps_chunked_match_in_memory(tmp_path):
    arrays, memmaps, fn, fn_mem = memmap_case(tmp_path)
    for chunk_size in (2, None):
        assert blend_score(memmaps, fn_mem, [1, 2, 3], chunk_size=chunk_size) == blend_score(
            arrays, fn, [1, 2, 3], chunk_size=chunk_size
        )
    assert blend_score(memmaps, fn_mem, chunk_size=2) == pytest.approx(blend_score(arrays, fn), rel=1e-12)
    np.testing.assert_array_equal(blend(memmaps, chunk_size=2), blend(arrays))
    np.testing.assert_array_equal(
        blend(memmaps, [1, 2, 3], out_dtype=np.float32, chunk_size=4), blend(arrays, [1, 2, 3], out_dtype=np.float32)
    )
