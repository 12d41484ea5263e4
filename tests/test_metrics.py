"""kitlib.metrics: hand-computed Dice and IoU, chunked = unchunked = a loop reference, memmaps, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kitlib.metrics import (
    METRICS,
    ConfusionMatrix,
    Metric,
    accuracy,
    dice_clouds,
    dice_per_class,
    dice_per_image_class,
    get_metric,
    iou_per_class,
    miou,
    pixel_accuracy,
    pixel_error,
)
from kitlib.presets import PRESETS


def _pair(pred_rows, true_rows, dtype=np.uint8):
    """One image, one class: (1, 1, H, W) masks from nested lists."""
    return np.array(pred_rows, dtype=dtype)[None, None], np.array(true_rows, dtype=dtype)[None, None]


def _reference_dice(pred: np.ndarray, true: np.ndarray, empty_score: float | None = 1.0) -> np.ndarray:
    """(N, K) Dice with explicit loops over pairs and Python sums: independent of the vectorised code."""
    n, k = pred.shape[:2]
    out = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            p = [int(v) for v in pred[i, j].ravel()]
            t = [int(v) for v in true[i, j].ravel()]
            inter = sum(a * b for a, b in zip(p, t, strict=True))
            total = sum(p) + sum(t)
            out[i, j] = (np.nan if empty_score is None else empty_score) if total == 0 else 2 * inter / total
    return out


def _reference_hist(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix counted pixel by pixel."""
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(true.ravel().tolist(), pred.ravel().tolist(), strict=True):
        hist[t, p] += 1
    return hist


# --------------------------------------------------------------------------------------------------------- Dice

# (pred rows, true rows, expected Dice): one (image, class) pair, computed by hand.
DICE_PAIRS = [
    ([[0, 0], [0, 0]], [[0, 0], [0, 0]], 1.0),  # both empty: 1 by definition
    ([[0, 0], [0, 0]], [[0, 1], [0, 0]], 0.0),  # prediction empty
    ([[1, 1], [0, 0]], [[0, 0], [0, 0]], 0.0),  # truth empty
    ([[1, 1, 0, 0]], [[0, 1, 1, 0]], 0.5),  # half overlap: 2*1 / (2 + 2)
    ([[1, 1, 1, 1]], [[1, 1, 0, 0]], 2 / 3),  # 2*2 / (4 + 2)
    ([[1, 0], [0, 1]], [[0, 1], [1, 0]], 0.0),  # disjoint
    ([[1, 0, 1], [1, 1, 0]], [[1, 0, 1], [1, 1, 0]], 1.0),  # identical
]


@pytest.mark.parametrize(("pred_rows", "true_rows", "expected"), DICE_PAIRS)
@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.int64, np.float32])
def test_dice_hand_pairs(pred_rows, true_rows, expected, dtype):
    pred, true = _pair(pred_rows, true_rows, dtype)
    assert dice_clouds(pred, true) == pytest.approx(expected)
    assert dice_per_image_class(pred, true).shape == (1, 1)
    assert dice_per_class(pred, true) == pytest.approx([expected])


# 2 images x 2 classes of 2x2 masks, Dice of each pair by hand:
#   image 0 class 0: inter 1, |X| + |Y| = 2 + 1  -> 2/3
#   image 0 class 1: both empty                   -> 1
#   image 1 class 0: prediction empty             -> 0
#   image 1 class 1: inter 3, |X| + |Y| = 4 + 3  -> 6/7
TWO_BY_TWO_PRED = [
    [[[1, 1], [0, 0]], [[0, 0], [0, 0]]],
    [[[0, 0], [0, 0]], [[1, 1], [1, 1]]],
]
TWO_BY_TWO_TRUE = [
    [[[1, 0], [0, 0]], [[0, 0], [0, 0]]],
    [[[0, 0], [1, 1]], [[1, 1], [1, 0]]],
]

# (empty_score, per (image, class), per class, mean)
MEAN_CASES = [
    (1.0, [[2 / 3, 1.0], [0.0, 6 / 7]], [1 / 3, 13 / 14], (2 / 3 + 1 + 0 + 6 / 7) / 4),  # = 53/84
    (None, [[2 / 3, math.nan], [0.0, 6 / 7]], [1 / 3, 6 / 7], (2 / 3 + 0 + 6 / 7) / 3),  # Dacon: = 32/63
    (0.0, [[2 / 3, 0.0], [0.0, 6 / 7]], [1 / 3, 3 / 7], (2 / 3 + 0 + 0 + 6 / 7) / 4),
]


@pytest.mark.parametrize(("empty_score", "per_pair", "per_class", "mean"), MEAN_CASES)
def test_dice_mean_over_pairs(empty_score, per_pair, per_class, mean):
    pred, true = np.array(TWO_BY_TWO_PRED, np.uint8), np.array(TWO_BY_TWO_TRUE, np.uint8)
    np.testing.assert_allclose(dice_per_image_class(pred, true, empty_score=empty_score), per_pair)
    np.testing.assert_allclose(dice_per_class(pred, true, empty_score=empty_score), per_class)
    assert dice_clouds(pred, true, empty_score=empty_score) == pytest.approx(mean)
    assert dice_clouds(pred, true, empty_score=empty_score, chunk_size=1) == pytest.approx(mean)


def test_dice_hand_means_as_fractions():
    pred, true = np.array(TWO_BY_TWO_PRED, np.uint8), np.array(TWO_BY_TWO_TRUE, np.uint8)
    assert dice_clouds(pred, true) == pytest.approx(53 / 84)
    assert dice_clouds(pred, true, empty_score=None) == pytest.approx(32 / 63)


def test_dice_all_pairs_dropped_is_nan():
    pred = true = np.zeros((2, 3, 4, 4), np.uint8)
    assert dice_clouds(pred, true) == 1.0
    assert math.isnan(dice_clouds(pred, true, empty_score=None))
    assert np.isnan(dice_per_class(pred, true, empty_score=None)).all()


# (shape, chunk sizes): 64 x 80 = 5120 pixels takes the per-pair count path, 8 x 9 the vectorised one.
@pytest.mark.parametrize("shape", [(5, 3, 64, 80), (7, 2, 8, 9), (1, 4, 3, 5)])
@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 100])
def test_dice_chunked_matches_loop_reference(shape, chunk_size):
    rng = np.random.default_rng(sum(shape))
    density = rng.choice([0.0, 0.01, 0.3, 0.9], size=shape[:2])[..., None, None]  # some channels all empty
    pred = (rng.random(shape) < density).astype(np.uint8)
    true = (rng.random(shape) < density[::-1]).astype(np.uint8)
    true[0, 0] = 0
    pred[0, 0] = 0  # at least one both-empty pair
    expected = _reference_dice(pred, true)
    got = dice_per_image_class(pred, true, chunk_size=chunk_size)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got, dice_per_image_class(pred, true), rtol=0)  # chunked == unchunked
    assert dice_clouds(pred, true, chunk_size=chunk_size) == pytest.approx(expected.mean())
    np.testing.assert_allclose(dice_per_class(pred, true, chunk_size=chunk_size), expected.mean(axis=0))
    np.testing.assert_allclose(
        dice_per_image_class(pred, true, empty_score=None, chunk_size=chunk_size),
        _reference_dice(pred, true, empty_score=None),
    )


def test_dice_layouts_and_torch():
    rng = np.random.default_rng(1)
    pred = rng.random((3, 2, 10, 12)) < 0.4
    true = rng.random((3, 2, 10, 12)) < 0.4
    expected = _reference_dice(pred, true)
    np.testing.assert_allclose(dice_per_image_class(np.asfortranarray(pred), true[..., ::-1][..., ::-1]), expected)
    np.testing.assert_allclose(dice_per_image_class(pred.transpose(0, 1, 3, 2), true.transpose(0, 1, 3, 2)), expected)
    np.testing.assert_allclose(dice_per_image_class(torch.from_numpy(pred), torch.from_numpy(true).float()), expected)
    t = torch.from_numpy(pred.astype(np.float32)).requires_grad_(True)  # detached at entry
    assert dice_clouds(t, true) == pytest.approx(expected.mean())


def test_dice_memmap(tmp_path):
    rng = np.random.default_rng(2)
    shape = (6, 4, 35, 52)
    paths = {}
    for name in ("pred", "true"):
        mm = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
        mm[:] = rng.random(shape) < 0.2
        mm.flush()
        paths[name] = tmp_path / f"{name}.npy"
        del mm
    pred = np.load(paths["pred"], mmap_mode="r")
    true = np.memmap(paths["true"], dtype=np.uint8, mode="r", shape=shape, offset=128)  # a raw memmap too
    assert isinstance(pred, np.memmap) and isinstance(true, np.memmap)
    np.testing.assert_array_equal(np.asarray(true), np.load(paths["true"]))
    expected = _reference_dice(np.asarray(pred), np.asarray(true))
    np.testing.assert_allclose(dice_per_image_class(pred, true, chunk_size=2), expected)
    assert dice_clouds(pred, true) == pytest.approx(expected.mean())


BAD_DICE = [
    (np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 1, 2, 3), np.uint8), ValueError,
     r"pred_masks shape \(1, 1, 2, 2\) != true_masks shape \(1, 1, 2, 3\)"),
    (np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8), ValueError, r"\(N, K, H, W\).*masks\[:, None\]"),
    (np.zeros((0, 1, 2, 2), np.uint8), np.zeros((0, 1, 2, 2), np.uint8), ValueError, "non-empty"),
    (np.array([[[[0, 0], [255, 0]]]], np.uint8), np.zeros((1, 1, 2, 2), np.uint8), ValueError,
     r"pred_masks must be binary \{0, 1\}.*found 255 at \[image, class, y, x\] = \[0, 0, 1, 0\]"),
    (np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), 0.7), ValueError, r"true_masks must be binary.*threshold"),
    (np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), np.nan), ValueError, "true_masks must be binary"),
    (np.full((1, 1, 2, 2), -1, np.int32), np.zeros((1, 1, 2, 2), np.int32), ValueError, "found -1"),
    (np.zeros((1, 1, 2, 2), "U1"), np.zeros((1, 1, 2, 2), np.uint8), TypeError, "dtype <U1"),
]  # fmt: skip


@pytest.mark.parametrize(("pred", "true", "error", "message"), BAD_DICE)
def test_dice_bad_input(pred, true, error, message):
    with pytest.raises(error, match=message):
        dice_clouds(pred, true)


def test_dice_bad_value_index_counts_from_the_whole_array():
    pred = np.zeros((5, 2, 3, 3), np.uint8)
    pred[3, 1, 2, 0] = 2
    with pytest.raises(ValueError, match=r"found 2 at \[image, class, y, x\] = \[3, 1, 2, 0\]"):
        dice_per_image_class(pred, np.zeros_like(pred), chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        dice_per_image_class(pred, pred, chunk_size=0)


# --------------------------------------------------------------------------------------------------------- mIoU

# A 3-class 2x3 example. Confusion matrix (rows truth, columns prediction):
#   true 0: [1, 1, 0]   true 1: [0, 2, 0]   true 2: [1, 0, 1]      column sums [2, 3, 1]
#   IoU = diag / (row + col - diag): 1/(2+2-1) = 1/3, 2/(2+3-2) = 2/3, 1/(2+1-1) = 1/2; mIoU = 1/2
HAND_TRUE = [[0, 0, 1], [1, 2, 2]]
HAND_PRED = [[0, 1, 1], [1, 2, 0]]

# (pred, true, num_classes, ignore_index, IoU per class, mIoU, pixel accuracy)
IOU_CASES = [
    (HAND_PRED, HAND_TRUE, 3, None, [1 / 3, 2 / 3, 1 / 2], 1 / 2, 4 / 6),
    # class 3 absent from truth and prediction: NaN, left out of the mean
    (HAND_PRED, HAND_TRUE, 4, None, [1 / 3, 2 / 3, 1 / 2, math.nan], 1 / 2, 4 / 6),
    # class 3 predicted but absent from truth: IoU 0 and counted. Rows [1,1,0,0] [0,2,0,0] [0,0,1,1], cols
    # [1,3,1,1]: 1/(2+1-1), 2/(2+3-2), 1/(2+1-1), 0/(0+1-0) -> mean (1/2 + 2/3 + 1/2 + 0) / 4 = 5/12
    ([[0, 1, 1], [1, 2, 3]], HAND_TRUE, 4, None, [1 / 2, 2 / 3, 1 / 2, 0.0], 5 / 12, 4 / 6),
    # the last truth pixel ignored: rows [1,1,0] [0,2,0] [0,0,1], cols [1,3,1]: 1/2, 2/3, 1 -> mean 13/18
    (HAND_PRED, [[0, 0, 1], [1, 2, 255]], 3, 255, [1 / 2, 2 / 3, 1.0], 13 / 18, 4 / 5),
    (HAND_PRED, [[0, 0, 1], [1, 2, -1]], 3, -1, [1 / 2, 2 / 3, 1.0], 13 / 18, 4 / 5),
    # perfect prediction
    (HAND_TRUE, HAND_TRUE, 3, None, [1.0, 1.0, 1.0], 1.0, 1.0),
]


@pytest.mark.parametrize(("pred", "true", "num_classes", "ignore_index", "ious", "mean", "acc"), IOU_CASES)
@pytest.mark.parametrize("batched", [False, True])
def test_iou_hand_cases(pred, true, num_classes, ignore_index, ious, mean, acc, batched):
    pred, true = np.array(pred, np.int64), np.array(true, np.int64)
    if batched:  # (1, H, W) gives the same as (H, W)
        pred, true = pred[None], true[None]
    np.testing.assert_allclose(iou_per_class(pred, true, num_classes, ignore_index), ious)
    assert miou(pred, true, num_classes, ignore_index=ignore_index) == pytest.approx(mean)
    cm = ConfusionMatrix(num_classes, ignore_index).update(pred, true)
    assert cm.pixel_accuracy() == pytest.approx(acc)
    assert pixel_accuracy(pred, true, ignore_index=ignore_index) == pytest.approx(acc)


def test_confusion_matrix_layout():
    cm = ConfusionMatrix(3).update(np.array(HAND_PRED, np.uint8), np.array(HAND_TRUE, np.uint8))
    np.testing.assert_array_equal(cm.hist, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])  # rows truth, columns prediction
    assert cm.total == 6 and "pixels=6" in repr(cm)
    cm.reset()
    assert cm.total == 0
    with pytest.raises(ValueError, match="empty"):
        cm.miou()


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_confusion_matrix_streaming_equals_one_shot(chunk_size):
    rng = np.random.default_rng(3)
    num_classes = 5
    true = rng.integers(0, num_classes, size=(9, 16, 20))
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, num_classes, size=true.shape))
    pred[pred == 4] = 3  # class 4 never predicted
    one_shot = ConfusionMatrix(num_classes).update(pred, true, chunk_size=chunk_size)
    np.testing.assert_array_equal(one_shot.hist, _reference_hist(pred, true, num_classes))
    stream = ConfusionMatrix(num_classes)
    for sl in (slice(0, 1), slice(1, 3), slice(3, 8)):  # uneven batches
        stream.update(torch.from_numpy(pred[sl]), torch.from_numpy(true[sl]))
    stream.update(pred[8], true[8])  # one (H, W) image
    np.testing.assert_array_equal(stream.hist, one_shot.hist)
    np.testing.assert_allclose(stream.iou(), one_shot.iou())
    assert stream.miou() == pytest.approx(miou(pred, true, num_classes))
    assert stream.pixel_accuracy() == pytest.approx((pred == true).mean())


def test_confusion_matrix_memmap(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.lib.format.open_memmap(tmp_path / "true.npy", mode="w+", dtype=np.uint8, shape=(4, 10, 12))
    labels[:] = rng.integers(0, 3, size=labels.shape)
    labels.flush()
    true = np.load(tmp_path / "true.npy", mmap_mode="r")
    pred = rng.integers(0, 3, size=true.shape).astype(np.uint8)
    cm = ConfusionMatrix(3).update(pred, true, chunk_size=1)
    np.testing.assert_array_equal(cm.hist, _reference_hist(pred, np.asarray(true), 3))


BAD_IOU = [
    (np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64), {}, ValueError,
     r"pred_labels shape \(2, 3\) != true_labels shape \(3, 2\)"),
    (np.zeros((2, 3), np.int64), np.array([[0, 1, 2], [3, 255, 255]]), {}, ValueError,
     r"true_labels has class index 3 outside \[0, 3\) in 3 counted pixel\(s\); pass ignore_index"),
    (np.array([[0, 1, 5], [0, 0, 0]]), np.zeros((2, 3), np.int64), {}, ValueError,
     r"pred_labels has class index 5 outside \[0, 3\) in 1"),
    (np.zeros((2, 3), np.int64), np.full((2, 3), 255), {"ignore_index": 255}, ValueError, "empty"),
    (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64), {}, TypeError, "argmax the logits"),
]  # fmt: skip


@pytest.mark.parametrize(("pred", "true", "kwargs", "error", "message"), BAD_IOU)
def test_iou_bad_input(pred, true, kwargs, error, message):
    with pytest.raises(error, match=message):
        miou(pred, true, 3, **kwargs)


def test_bad_batch_counts_nothing():
    cm = ConfusionMatrix(3).update(np.array(HAND_PRED), np.array(HAND_TRUE))
    before = cm.hist.copy()
    bad_true = np.zeros((4, 2, 3), np.int64)
    bad_true[3, 0, 0] = 7  # in the last chunk: the first chunks must not be counted either
    with pytest.raises(ValueError, match="class index 7"):
        cm.update(np.zeros_like(bad_true), bad_true, chunk_size=1)
    np.testing.assert_array_equal(cm.hist, before)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ConfusionMatrix(0)


# ------------------------------------------------------------------------------------------- pixels and labels

# (pred, true, ignore_index, pixel error): counted by hand
PIXEL_ERROR_CASES = [
    ([[0, 1], [1, 1]], [[0, 1], [0, 0]], None, 2 / 4),
    ([[[0, 1, 1]], [[1, 1, 1]]], [[[0, 1, 1]], [[0, 0, 1]]], None, 2 / 6),  # (N, H, W) ISBI-style stack
    ([[0, 0], [0, 0]], [[0, 0], [0, 0]], None, 0.0),
    ([[0, 1], [1, 1]], [[0, 1], [255, 0]], 255, 1 / 3),
]


@pytest.mark.parametrize(("pred", "true", "ignore_index", "expected"), PIXEL_ERROR_CASES)
def test_pixel_error(pred, true, ignore_index, expected):
    pred, true = np.array(pred, np.uint8), np.array(true, np.uint8)
    assert pixel_error(pred, true, ignore_index=ignore_index) == pytest.approx(expected)
    assert pixel_error(pred, true, ignore_index=ignore_index, chunk_size=1) == pytest.approx(expected)
    assert pixel_accuracy(pred, true, ignore_index=ignore_index) == pytest.approx(1 - expected)
    assert pixel_error(torch.from_numpy(pred), torch.from_numpy(true), ignore_index) == pytest.approx(expected)


def test_pixel_accuracy_bad_input():
    with pytest.raises(ValueError, match=r"pred shape \(2, 2\) != true shape \(2, 3\)"):
        pixel_accuracy(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no pixel"):
        pixel_accuracy(np.zeros((2, 2)), np.full((2, 2), 255), ignore_index=255)


LOGITS = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 9.0]]  # argmax 0, 1, 0, 2

# (pred, true, expected accuracy)
ACCURACY_CASES = [
    (LOGITS, [0, 1, 2, 2], 3 / 4),
    (np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True), [0, 1, 2, 2], 3 / 4),  # probs: same argmax
    (np.array([0, 1, 0, 2]), [0, 1, 2, 2], 3 / 4),
    (np.array([1, 1, 1, 1]), [0, 1, 2, 2], 1 / 4),
    (torch.tensor(LOGITS, requires_grad=True), torch.tensor([0, 1, 0, 2]), 1.0),
]


@pytest.mark.parametrize(("pred", "true", "expected"), ACCURACY_CASES)
def test_accuracy(pred, true, expected):
    assert accuracy(pred, true if isinstance(true, torch.Tensor) else np.array(true)) == pytest.approx(expected)


BAD_ACCURACY = [
    (np.zeros((4, 3)), np.zeros(5, np.int64), ValueError, r"pred_labels shape \(4, 3\) does not match .* \(5,\)"),
    (np.zeros(4, np.int64), np.zeros((4, 1), np.int64), ValueError, r"\(4,\).*\(4, 1\)"),
    (np.zeros(4), np.zeros(4, np.int64), TypeError, "pred_labels must hold integer"),
    (np.zeros(4, np.int64), np.zeros(4), TypeError, "true_labels must hold integer"),
    (np.zeros((0, 3)), np.zeros(0, np.int64), ValueError, "no sample"),
]


@pytest.mark.parametrize(("pred", "true", "error", "message"), BAD_ACCURACY)
def test_accuracy_bad_input(pred, true, error, message):
    with pytest.raises(error, match=message):
        accuracy(pred, true)


# ------------------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize(
    ("name", "greater_is_better"), [("dice", True), ("miou", True), ("accuracy", True), ("pixel_error", False)]
)
def test_registry(name, greater_is_better):
    metric = get_metric(name)
    assert isinstance(metric, Metric) and metric.name == name and metric.inputs
    assert metric.greater_is_better is greater_is_better
    assert get_metric(metric) is metric
    assert metric.is_better(0.5, None)
    assert metric.is_better(0.6, 0.5) is greater_is_better
    assert metric.is_better(0.4, 0.5) is not greater_is_better
    assert not metric.is_better(0.5, 0.5)


def test_registry_calls_and_presets():
    pred, true = np.array(TWO_BY_TWO_PRED, np.uint8), np.array(TWO_BY_TWO_TRUE, np.uint8)
    assert get_metric("dice")(pred, true) == pytest.approx(53 / 84)
    assert get_metric("miou")(np.array(HAND_PRED), np.array(HAND_TRUE), num_classes=3) == pytest.approx(0.5)
    assert get_metric("accuracy")(np.array(LOGITS), np.array([0, 1, 2, 2])) == pytest.approx(0.75)
    assert get_metric("pixel_error")(pred, true) == pytest.approx(4 / 16)
    for preset in PRESETS.values():
        assert preset.metric in METRICS, preset.name
    with pytest.raises(KeyError, match=r"unknown metric 'iou'; options: \['accuracy', 'dice', 'miou', 'pixel_error'\]"):
        get_metric("iou")


def test_preset_empty_rule_reaches_the_metric():
    """Each preset's dice_empty_score is a valid empty_score: Kaggle's 1.0, Dacon's None (pair left out)."""
    pred = np.zeros((2, 1, 2, 2), np.uint8)
    true = np.zeros((2, 1, 2, 2), np.uint8)
    pred[0, 0, 0, 0] = true[0, 0, 0, 0] = 1  # image 0: perfect; image 1: both empty
    assert dice_clouds(pred, true, empty_score=PRESETS["clouds"].dice_empty_score) == 1.0
    assert dice_clouds(pred, true, empty_score=PRESETS["dacon_building"].dice_empty_score) == 1.0
    pred[1, 0, 1, 1] = 1  # image 1: a false positive -> Dice 0 under both rules
    assert dice_clouds(pred, true, empty_score=PRESETS["clouds"].dice_empty_score) == 0.5
