"""kitlib.postprocess: hand-computed cases, exact equality with the naive reference, memmaps, gating, JSON."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pandas as pd
import pytest

from kitlib.formats import class_presence
from kitlib.gate import classifier_thresholds, precision_recall_table
from kitlib.metrics import dice_per_class
from kitlib.postprocess import (
    PostProcess,
    apply_postprocess,
    apply_threshold_min_area,
    binarize,
    combine_class_probs,
    force_one_class,
    gate_masks,
    remove_small_components,
    scale_top_k,
    top_k_class_probs,
    triplet_masks,
)
from kitlib.search import best_per_class, search_thresholds, search_triplet
from tests.postprocess_reference import (
    remove_small_components_reference,
    search_thresholds_per_threshold,
    search_thresholds_reference,
    search_triplet_reference,
    top_k_class_probs_reference,
)

# Thresholds that hit the edge cases: multiples of 1/255 (0.2 = 51/255, 0.6 = 153/255), and 0.1 / 0.3, whose nearest
# float32 is above them (np.float32(0.1) > 0.1), so a float32 pixel equal to np.float32(t) is foreground; and values
# outside [0, 1] (every pixel / no pixel).
THRESHOLDS = [-0.1, 0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.85, 1.0]
MIN_AREAS = [0, 1, 3, 12, 60]


def fragmented(seed: int = 0, n: int = 6, c: int = 2, h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """Small OOF: smooth regions plus many small blobs of noise, an empty truth, a low map, exact-threshold pixels."""
    rng = np.random.default_rng(seed)
    probs = np.empty((n, c, h, w), dtype=np.float32)
    masks = np.zeros((n, c, h, w), dtype=np.uint8)
    for i in range(n):
        for k in range(c):
            smooth = cv2.resize(rng.standard_normal((h // 8 + 2, w // 8 + 2)).astype(np.float32), (w, h))
            fine = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
            probs[i, k] = 1.0 / (1.0 + np.exp(-(1.5 * smooth + 2.5 * fine)))
            masks[i, k] = smooth > 0.2
    masks[0, 0] = 0  # both empty at high thresholds
    probs[1, 1] *= 0.4  # nothing above the higher thresholds
    flat = probs.reshape(-1)
    flat[rng.choice(flat.size, 300, replace=False)] = np.float32(0.1)
    flat[rng.choice(flat.size, 300, replace=False)] = np.float32(0.3)
    flat[rng.choice(flat.size, 300, replace=False)] = np.float32(0.6)
    return probs, masks


def to_uint8(probs: np.ndarray) -> np.ndarray:
    return np.rint(probs * 255).astype(np.uint8)


def one_pair(prob_rows, mask_rows) -> tuple[np.ndarray, np.ndarray]:
    """(1, 1, H, W) float32 probs and uint8 masks from nested lists."""
    return np.array(prob_rows, np.float32)[None, None], np.array(mask_rows, np.uint8)[None, None]


# --------------------------------------------------------------------------------------------- threshold semantics


def test_uint8_threshold_is_v_over_255_greater_than_t():
    v = np.arange(256, dtype=np.uint8)
    assert binarize(np.array([50, 51, 52], np.uint8), 0.2).tolist() == [0, 0, 1]  # 51/255 == 0.2 is not > 0.2
    assert binarize(np.array([152, 153, 154], np.uint8), 0.6).tolist() == [0, 0, 1]  # 153/255 == 0.6 in float64
    assert binarize(np.array([127, 128], np.uint8), 0.5).tolist() == [0, 1]
    assert binarize(v, -0.01).all() and not binarize(v, 1.0).any()
    for t in np.r_[np.linspace(-0.1, 1.1, 241), np.arange(256) / 255.0, [0.2, 0.6, 0.45, 0.7]]:
        np.testing.assert_array_equal(binarize(v, t), v.astype(np.float64) / 255.0 > t, err_msg=f"t={t!r}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_threshold_is_exact_float64_comparison(dtype):
    rng = np.random.default_rng(1)
    for t in [0.1, 0.3, 0.5, 0.6, 0.2, 1 / 3, 0.45, 0.0, 1.0]:
        near = dtype(t)
        values = np.array([near, np.nextafter(near, dtype(0)), np.nextafter(near, dtype(1)), 0, 1], dtype=dtype)
        values = np.r_[values, rng.random(50).astype(dtype)]
        np.testing.assert_array_equal(binarize(values, t), values.astype(np.float64) > t, err_msg=f"t={t!r}")


def test_float32_pixel_equal_to_rounded_up_threshold_is_foreground():
    # np.float32(0.1) = 0.100000001... > 0.1: foreground here, although NumPy 2's `x > 0.1` on float32 says no
    p = np.array([np.float32(0.1)], np.float32)
    assert binarize(p, 0.1).tolist() == [1]
    assert not (p > 0.1)[0]
    assert binarize(np.array([np.float32(0.5)], np.float32), 0.5).tolist() == [0]


def test_uint8_search_equals_float64_search_of_v_over_255():
    probs, masks = fragmented(3)
    u8 = to_uint8(probs)
    a = search_thresholds(u8, masks, THRESHOLDS, MIN_AREAS)
    b = search_thresholds(u8.astype(np.float64) / 255.0, masks, THRESHOLDS, MIN_AREAS)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ------------------------------------------------------------------------------------------- components, by hand

BLOCK_2X2 = [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
DIAGONAL = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("mask", "min_area", "expected_pixels"),
    [
        (BLOCK_2X2, 3, 4),  # area 4 > 3: kept
        (BLOCK_2X2, 4, 0),  # area 4 is not > 4: removed
        (BLOCK_2X2, 0, 4),
        (DIAGONAL, 1, 2),  # the diagonal pair is one 8-connected component of area 2; the lone pixel goes
        (DIAGONAL, 2, 0),
        (DIAGONAL, 0, 3),
    ],
)
def test_remove_small_components_by_hand(mask, min_area, expected_pixels):
    m = np.array(mask, np.uint8)
    out = remove_small_components(m, min_area)
    assert out.dtype == np.uint8 and out.shape == m.shape
    assert int(out.sum()) == expected_pixels
    assert set(np.unique(out)) <= {0, 1} and not np.any(out & ~m.astype(bool))
    np.testing.assert_array_equal(out, remove_small_components_reference(m, min_area))


def test_remove_small_components_matches_scipy_8_connectivity():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(2)
    m = (rng.random((60, 80)) > 0.6).astype(np.uint8)
    labels, _ = ndimage.label(m, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())
    for min_area in (0, 1, 2, 5, 20):
        keep = areas > min_area
        keep[0] = False
        np.testing.assert_array_equal(remove_small_components(m, min_area), keep[labels].astype(np.uint8))


def test_search_by_hand_block_min_area_and_empty_pairs():
    # image 0: a 2x2 block predicted, truth = the block + 1 pixel; image 1: nothing predicted, empty truth
    probs = np.zeros((2, 1, 4, 5), np.float32)
    masks = np.zeros((2, 1, 4, 5), np.uint8)
    probs[0, 0] = np.array(BLOCK_2X2) * 0.9
    masks[0, 0] = BLOCK_2X2
    masks[0, 0, 0, 4] = 1
    df = search_thresholds(probs, masks, [0.5], [3, 4])
    assert df.columns.tolist() == ["class_index", "threshold", "min_area", "dice"]
    assert df["min_area"].tolist() == [3, 4]
    assert df["dice"].tolist() == [(2 * 4 / (4 + 5) + 1.0) / 2, (0.0 + 1.0) / 2]
    skipped = search_thresholds(probs, masks, [0.5], [3, 4], empty_score=None)
    assert skipped["dice"].tolist() == [2 * 4 / (4 + 5), 0.0]  # image 1 is skipped (Dacon)
    half = search_thresholds(probs, masks, [0.5], [3], empty_score=0.5)
    assert half["dice"].tolist() == [(8 / 9 + 0.5) / 2]


def test_search_by_hand_diagonal_joins_and_all_skipped_is_nan():
    probs, masks = one_pair(np.array(DIAGONAL) * 0.9, DIAGONAL)
    df = search_thresholds(probs, masks, [0.5], [0, 1, 2])
    assert df["dice"].tolist() == [1.0, 2 * 2 / (2 + 3), 0.0]
    empty = search_thresholds(np.zeros((2, 1, 3, 3), np.float32), np.zeros((2, 1, 3, 3), np.uint8), [0.5], [0], None)
    assert np.isnan(empty["dice"].iloc[0])


# ---------------------------------------------------------------------------------------- equality with reference


@pytest.mark.parametrize("dtype", ["float32", "uint8", "float16"])
@pytest.mark.parametrize("empty_score", [1.0, None])
def test_search_thresholds_equals_reference(dtype, empty_score):
    probs, masks = fragmented(0)
    probs = to_uint8(probs) if dtype == "uint8" else probs.astype(dtype)
    fast = search_thresholds(probs, masks, THRESHOLDS, MIN_AREAS, empty_score=empty_score)
    ref = search_thresholds_reference(probs, masks, THRESHOLDS, MIN_AREAS, empty_score=empty_score)
    pd.testing.assert_frame_equal(fast, ref, check_exact=True)
    assert len(fast) == 2 * len(THRESHOLDS) * len(MIN_AREAS)


def test_search_thresholds_order_chunks_workers_and_torch():
    torch = pytest.importorskip("torch")
    probs, masks = fragmented(4, n=5)
    areas = [12, 0, 3, 12]  # kept in the order given, duplicates included
    ref = search_thresholds_reference(probs, masks, [0.6, 0.3], areas)
    for kwargs in ({"num_workers": 0}, {"num_workers": 2, "chunk_size": 1}, {"chunk_size": 2}):
        pd.testing.assert_frame_equal(search_thresholds(probs, masks, [0.6, 0.3], areas, **kwargs), ref)
    as_torch = search_thresholds(torch.from_numpy(probs), torch.from_numpy(masks), [0.6, 0.3], areas)
    pd.testing.assert_frame_equal(as_torch, ref)
    bool_masks = search_thresholds(probs, masks.astype(bool), [0.6, 0.3], areas)
    pd.testing.assert_frame_equal(bool_masks, ref)


def adversarial(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (7, 2, 24, 30) probs and masks that stress the one-sweep component tree: blobs that join only at lower
    thresholds (through one diagonal pixel, or a bridge of pixels exactly at a cut), a ring that closes, single pixels,
    a checkerboard (8-connected: one component; the most labels 4-connectivity would give), an all-zero map, a map of
    one value, maps whose maximum is a cut exactly, and random fragmented noise."""
    rng = np.random.default_rng(seed)
    p = np.zeros((7, 2, 24, 30), np.uint8)
    m = np.zeros((7, 2, 24, 30), np.uint8)
    p[0, 0, 2:6, 2:6] = 200  # two blocks joined at 153 (0.6 = 153 / 255, exactly a cut: not above it) ...
    p[0, 0, 2:6, 8:12] = 220
    p[0, 0, 3, 6:8] = 153
    p[0, 0, 10:14, 2:6], p[0, 0, 14, 6], p[0, 0, 15:19, 7:11] = 180, 90, 250  # ... and blocks joined diagonally at 90
    p[0, 1, 5:15, 5] = p[0, 1, 5:15, 14] = p[0, 1, 5, 5:15] = 160  # a ring closed at 77 (0.3 is 76.5 / 255)
    p[0, 1, 14, 5:15] = 77
    p[1, 0, ::3, ::3] = rng.integers(0, 256, p[1, 0, ::3, ::3].shape)  # single pixels, all isolated
    p[1, 1, np.add.outer(np.arange(24), np.arange(30)) % 2 == 0] = 255  # checkerboard
    p[2, 1] = 51  # one value, exactly the cut of 0.2: empty above it, all above 0.1
    p[3, 0] = np.where(rng.random((24, 30)) < 0.5, 153, 102)  # only cut values (0.6 and 0.4)
    p[4:] = rng.integers(0, 256, p[4:].shape)  # noise: many components at every threshold
    p[6] = cv2.GaussianBlur(p[6].reshape(-1, 30), (0, 0), 1.0).reshape(p[6].shape)
    m[0, 0, 2:12, 2:8] = m[0, 1, 4:16, 4:16] = m[1, 1, :12] = m[3, 0, ::2] = 1
    m[4:] = rng.random(m[4:].shape) < 0.4
    m[5, 1] = 0
    return p, m


ADVERSARIAL_THRESHOLDS = [0.6, 0.3, 0.2, 0.4, 0.1, -0.5, 1.0, 0.9999, 0.5, 0.6, 0.35, 0.0]  # unsorted, repeated cut
ADVERSARIAL_AREAS = [0, 1, 2, 3, 5, 9, 16, 40, 100, 2]


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float16", "float64"])
def test_one_sweep_search_equals_reference_on_adversarial_maps(dtype):
    p, m = adversarial()
    probs = p if dtype == "uint8" else (p.astype(np.float64) / 255.0).astype(dtype)
    fast = search_thresholds(probs, m, ADVERSARIAL_THRESHOLDS, ADVERSARIAL_AREAS, num_workers=1, chunk_size=3)
    ref = search_thresholds_reference(probs, m, ADVERSARIAL_THRESHOLDS, ADVERSARIAL_AREAS)
    pd.testing.assert_frame_equal(fast, ref, check_exact=True)
    old = search_thresholds_per_threshold(probs, m, ADVERSARIAL_THRESHOLDS, ADVERSARIAL_AREAS, empty_score=None)
    pd.testing.assert_frame_equal(search_thresholds(probs, m, ADVERSARIAL_THRESHOLDS, ADVERSARIAL_AREAS, None), old)


def test_one_sweep_search_by_hand_joins_below_a_cut():
    p, m = adversarial()
    df = search_thresholds(p[:1, :1], m[:1, :1], [0.7, 0.6, 0.3], [16, 20]).set_index(["threshold", "min_area"])
    # 0.7 and 0.6: four blocks of 16 (the bridge at 153 is not above 0.6); 0.3: two blocks of 16 + 2 (the bridge)
    # and 16 + 1 + 16 (the diagonal pixel), 34 and 33 pixels, both > 20
    assert df.loc[(0.6, 16), "dice"] == 0.0 and df.loc[(0.6, 16), "dice"] == df.loc[(0.7, 20), "dice"]
    truth = int(m[0, 0].sum())
    on_truth = int(m[0, 0][p[0, 0] > 76].sum())
    assert df.loc[(0.3, 20), "dice"] == 2.0 * on_truth / (67 + truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sweep_search_equals_the_per_threshold_search(seed):
    # the table of the implementation it replaced (one labelling per image, class and threshold), on fragmented maps
    # at many thresholds: more distinct levels than uint8 cuts hold for float32 (int32 levels), all 256 uint8 values
    probs, masks = fragmented(seed, n=4)
    fine = np.linspace(-0.01, 1.0, 300).tolist()
    for p, thresholds in ((probs, fine), (to_uint8(probs), fine), (to_uint8(probs), [0.3, 0.5, 0.7])):
        got = search_thresholds(p, masks, thresholds, MIN_AREAS, num_workers=2, chunk_size=1)
        pd.testing.assert_frame_equal(got, search_thresholds_per_threshold(p, masks, thresholds, MIN_AREAS))


def test_one_sweep_search_all_empty_and_single_pixels():
    zeros = np.zeros((3, 2, 5, 7), np.uint8)
    df = search_thresholds(zeros, zeros, [0.0, 0.5], [0, 1], empty_score=None)
    assert df["dice"].isna().all()
    dots = zeros.copy()
    dots[:, :, ::2, ::2] = 255  # isolated single pixels, on the truth
    df = search_thresholds(dots, dots // 255, [0.5], [0, 1])
    assert df["dice"].tolist() == [1.0, 0.0] * 2  # area 1 kept by min_area 0, removed by min_area 1
    pd.testing.assert_frame_equal(df, search_thresholds_reference(dots, dots // 255, [0.5], [0, 1]))


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_search_on_memmaps_equals_in_memory(tmp_path, mode):
    probs, masks = fragmented(5, n=7)
    u8 = to_uint8(probs)
    np.save(tmp_path / "probs.npy", u8)
    np.save(tmp_path / "masks.npy", masks)
    mm_probs = np.load(tmp_path / "probs.npy", mmap_mode=mode)
    mm_masks = np.load(tmp_path / "masks.npy", mmap_mode=mode)
    assert isinstance(mm_probs, np.memmap)
    expected = search_thresholds(u8, masks, THRESHOLDS, MIN_AREAS)
    got = search_thresholds(mm_probs, mm_masks, THRESHOLDS, MIN_AREAS, chunk_size=2)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    triplet = search_triplet(mm_probs, mm_masks, [0.5, 0.8], [0, 30], [0.3, 0.5], chunk_size=3)
    pd.testing.assert_frame_equal(triplet, search_triplet(u8, masks, [0.5, 0.8], [0, 30], [0.3, 0.5]))
    np.testing.assert_array_equal(top_k_class_probs(mm_probs, 50, chunk_size=2), top_k_class_probs(u8, 50))
    np.testing.assert_array_equal(class_presence(mm_masks, chunk_size=3), masks.any(axis=(2, 3)))
    # pages released from the mapping are read back intact
    np.testing.assert_array_equal(np.asarray(mm_probs), u8)
    np.testing.assert_array_equal(np.asarray(mm_masks), masks)


def test_memmap_writes_survive_page_release(tmp_path):
    probs, masks = fragmented(6, n=3)
    mm = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.uint8, shape=probs.shape)
    mm[:] = to_uint8(probs)  # dirty pages, not flushed yet
    search_thresholds(mm, masks, [0.5], [0], chunk_size=1)
    mm.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), to_uint8(probs))


# ------------------------------------------------------------------------------------------------------ apply


def test_apply_threshold_min_area_gives_the_searched_dice():
    probs, masks = fragmented(7)
    df = search_thresholds(probs, masks, [0.3, 0.6], [0, 12])
    for t, a in [(0.3, 0), (0.6, 12)]:
        pred = np.stack([apply_threshold_min_area(p, t, a) for p in probs])
        expected = df[(df.threshold == t) & (df.min_area == a)].sort_values("class_index")["dice"].to_numpy()
        np.testing.assert_allclose(dice_per_class(pred, masks), expected, rtol=0, atol=1e-12)
    per_class = apply_threshold_min_area(probs[0], [0.3, 0.6], [0, 12])
    np.testing.assert_array_equal(per_class[1], apply_threshold_min_area(probs[0], 0.6, 12)[1])


# ------------------------------------------------------------------------------------------------------ triplet


def test_triplet_by_hand():
    prob = np.full((4, 4), 0.1, np.float32)
    prob[0, :3] = 0.9  # 3 confident pixels
    prob[1, :] = 0.6
    prob[2, 0] = 0.6  # 5 more above the bottom threshold
    truth = (prob > 0.5).astype(np.uint8)
    kept = triplet_masks(prob[None], 0.8, 3, 0.5)
    np.testing.assert_array_equal(kept[0], truth)
    assert not triplet_masks(prob[None], 0.8, 4, 0.5).any()  # 3 pixels > 0.8 < 4
    assert triplet_masks(prob[None], 0.95, 0, 0.5).sum() == 8  # min_contour_area 0 keeps the class
    df = search_triplet(prob[None, None], truth[None, None], [0.8], [3, 4], [0.5, 0.7])
    assert df.columns.tolist() == [
        "class_index",
        "top_score_threshold",
        "min_contour_area",
        "bottom_score_threshold",
        "dice",
    ]
    assert df["dice"].tolist() == [1.0, 2 * 3 / (3 + 8), 0.0, 0.0]


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("empty_score", [1.0, None])
def test_search_triplet_equals_reference(dtype, empty_score):
    probs, masks = fragmented(8)
    probs = to_uint8(probs) if dtype == "uint8" else probs
    args = ([0.5, 0.6, 0.85], [0, 20, 400], [0.1, 0.2, 0.3])
    fast = search_triplet(probs, masks, *args, empty_score=empty_score, num_workers=2)
    ref = search_triplet_reference(probs, masks, *args, empty_score=empty_score)
    pd.testing.assert_frame_equal(fast, ref, check_exact=True)


# ------------------------------------------------------------------------------------------- image-level gating


def test_top_k_by_hand():
    u8 = np.array([[255, 0, 51], [102, 153, 204]], np.uint8)[None, None]
    np.testing.assert_array_equal(top_k_class_probs(u8, 2), np.array([[np.float32(0.9)]]))
    np.testing.assert_array_equal(top_k_class_probs(u8, 3), np.array([[np.float32(0.8)]]))
    np.testing.assert_array_equal(top_k_class_probs(u8, 6), np.array([[np.float32(0.5)]]))
    f = u8.astype(np.float64) / 255
    np.testing.assert_array_equal(top_k_class_probs(f, 2), np.array([[np.float32(0.9)]]))
    with pytest.raises(ValueError, match="k must be in 1..6"):
        top_k_class_probs(u8, 7)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_top_k_matches_reference(dtype):
    probs, _ = fragmented(9)
    probs = to_uint8(probs) if dtype == "uint8" else probs
    for k in (1, 37, 500, probs.shape[2] * probs.shape[3]):
        got = top_k_class_probs(probs, k)
        assert got.dtype == np.float32 and got.shape == probs.shape[:2]
        np.testing.assert_allclose(got, top_k_class_probs_reference(probs, k), rtol=1e-6, atol=0)


def test_scale_top_k():
    assert scale_top_k((350, 525)) == 17500
    assert scale_top_k((1400, 2100)) == 280000
    assert scale_top_k((384, 576)) == 21065
    assert scale_top_k((10, 10), k=1) == 1
    with pytest.raises(ValueError):
        scale_top_k((0, 10))


def test_combine_class_probs():
    a, b = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])
    np.testing.assert_allclose(combine_class_probs(a, b), [[0.4, 0.6]], rtol=1e-6)
    np.testing.assert_array_equal(combine_class_probs(a, b, 0.0), a.astype(np.float32))
    np.testing.assert_array_equal(combine_class_probs(a, b, 1.0), b.astype(np.float32))
    with pytest.raises(ValueError, match="head_weight"):
        combine_class_probs(a, b, 1.5)


def test_force_one_class():
    probs = np.array([[0.2, 0.7, 0.1], [0.9, 0.1, 0.0], [0.5, 0.5, 0.1]])
    keep = np.array([[False, False, False], [False, True, False], [False, False, False]])
    out = force_one_class(probs, keep)
    assert out.tolist() == [[False, True, False], [False, True, False], [True, False, False]]
    assert not keep[0].any()  # input untouched
    assert force_one_class(probs[0], keep[0]).tolist() == [False, True, False]


def test_class_presence():
    masks = np.zeros((2, 3, 4, 4), np.uint8)
    masks[0, 1, 2, 2] = 1
    assert class_presence(masks).tolist() == [[False, True, False], [False, False, False]]


SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
LABELS = np.array([1, 1, 0, 1, 0])


def test_precision_recall_table_by_hand():
    table = precision_recall_table(SCORES, LABELS)
    np.testing.assert_allclose(table["threshold"], [0.85, 0.75, 0.65, 0.45, 0.0])
    assert table["tp"].tolist() == [1, 2, 2, 3, 3]
    np.testing.assert_allclose(table["f1"], [2 / 4, 4 / 5, 4 / 6, 6 / 7, 6 / 8])
    for thr, n_kept in zip(table["threshold"], table["n_kept"], strict=True):
        assert int((SCORES > thr).sum()) == n_kept


@pytest.mark.parametrize(
    ("criterion", "expected"), [("f1", 0.45), ("precision>=1", 0.75), ("recall>=1.0", 0.45), ("precision>=0.7", 0.45)]
)
def test_classifier_thresholds_by_hand(criterion, expected):
    thr = classifier_thresholds(SCORES[:, None], LABELS[:, None], criterion)
    assert thr.shape == (1,) and thr[0] == pytest.approx(expected)


def test_classifier_thresholds_edge_cases(caplog):
    with caplog.at_level(logging.WARNING, logger="kitlib.postprocess"):
        off = classifier_thresholds(np.array([[0.2], [0.4]]), np.array([[0], [0]]))
    assert off.tolist() == [1.0] and "no positive label" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kitlib.postprocess"):
        unreachable = classifier_thresholds(np.array([[0.9], [0.8]]), np.array([[0], [1]]), "precision>=0.99")
    assert unreachable.tolist() == [1.0] and "no threshold reaches" in caplog.text
    # the best F1 keeps everything: the threshold is 0.0
    assert classifier_thresholds(np.array([[0.9], [0.8]]), np.array([[0], [1]]), "f1").tolist() == [0.0]
    adjacent = np.array([0.5, np.nextafter(0.5, 0)])  # adjacent floats: the threshold is the dropped score itself
    thr = classifier_thresholds(adjacent[:, None], np.array([[1], [0]]))[0]
    assert (adjacent > thr).tolist() == [True, False]
    with pytest.raises(ValueError, match="unknown criterion"):
        classifier_thresholds(SCORES[:, None], LABELS[:, None], "auc")


def test_precision_recall_table_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(10)
    scores = np.round(rng.random(200), 2)  # ties included
    labels = (rng.random(200) < scores).astype(int)
    table = precision_recall_table(scores, labels)
    precision, recall, thresholds = metrics.precision_recall_curve(labels, scores)
    ours = {(round(p, 12), round(r, 12)) for p, r in zip(table["precision"], table["recall"], strict=True)}
    theirs = {(round(p, 12), round(r, 12)) for p, r in zip(precision[:-1], recall[:-1], strict=True)}
    assert theirs <= ours  # sklearn drops the cuts after full recall is reached


def test_gate_masks():
    masks = np.ones((2, 2, 3, 3), np.uint8)
    probs = np.array([[0.9, 0.2], [0.4, 0.6]])
    out = gate_masks(masks, probs, [0.5, 0.5])
    assert out.reshape(2, 2, -1).max(axis=2).tolist() == [[1, 0], [0, 1]]
    one = gate_masks(masks[0], probs[0], 0.5)
    assert one.reshape(2, -1).max(axis=1).tolist() == [1, 0]
    with pytest.raises(ValueError):
        gate_masks(masks, probs[0], [0.5, 0.5])


# ------------------------------------------------------------------------------------------ settings and JSON


def test_best_per_class_and_json_round_trip(tmp_path):
    probs, masks = fragmented(11)
    df = search_thresholds(probs, masks, THRESHOLDS, MIN_AREAS)
    best = best_per_class(df)
    assert set(best) == {"threshold", "min_area", "dice"} and len(best["threshold"]) == 2
    for k in range(2):
        assert best["dice"][k] == df[df.class_index == k]["dice"].max()
    params = PostProcess(
        threshold=best["threshold"],
        min_area=best["min_area"],
        classifier_threshold=np.array([0.5, 0.4]),
        force_one_class=True,
        top_k=50,
        meta={"cv_dice": best["dice"], "exp": "exp001", "n": np.int64(3)},
    )
    path = tmp_path / "artifacts" / "exp001" / "postprocess.json"
    text = params.to_json(path)
    loaded = PostProcess.from_json(path)
    assert loaded.to_dict() == PostProcess.from_json(text).to_dict()
    assert loaded.threshold == params.threshold and loaded.min_area == params.min_area
    assert loaded.meta["n"] == 3 and loaded.classifier_threshold == [0.5, 0.4]
    assert all(isinstance(a, int) for a in loaded.min_area)
    triplet = best_per_class(search_triplet(probs, masks, [0.6, 0.85], [0, 20], [0.2, 0.3]))
    keys = ("top_score_threshold", "min_contour_area", "bottom_score_threshold")
    tp = PostProcess(**{key: triplet[key] for key in keys})
    assert PostProcess.from_json(tp.to_json()).to_dict() == tp.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one binarisation"),
        ({"threshold": [0.5], "top_score_threshold": [0.8], "min_contour_area": [1], "bottom_score_threshold": [0.3]},
         "exactly one"),
        ({"top_score_threshold": [0.8]}, "needs all"),
        ({"threshold": [0.5, 0.5], "min_area": [1]}, "one value per class"),
        ({"threshold": [0.5], "force_one_class": True}, "classifier gate"),
        ({"threshold": [0.5], "crf": {"sxy": 3}}, "unknown CRF parameter"),
        ({"crf": {}, "classifier_threshold": [0.5]}, "only crf applies"),
    ],
)  # fmt: skip
def test_postprocess_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PostProcess(**kwargs)
    with pytest.raises(ValueError, match="unknown post-processing key"):
        PostProcess.from_dict({"threshold": [0.5], "treshold": [0.4]})


def test_apply_postprocess_modes():
    probs, _ = fragmented(12)
    image = probs[0]
    thr = PostProcess(threshold=[0.3, 0.6], min_area=[0, 12])
    np.testing.assert_array_equal(apply_postprocess(image, thr), apply_threshold_min_area(image, [0.3, 0.6], [0, 12]))
    trip = PostProcess(top_score_threshold=[0.8, 0.8], min_contour_area=[5, 5], bottom_score_threshold=[0.3, 0.4])
    np.testing.assert_array_equal(apply_postprocess(image, trip), triplet_masks(image, 0.8, 5, [0.3, 0.4]))
    gated = PostProcess(threshold=[0.3, 0.3], classifier_threshold=[0.5, 0.5])
    out = apply_postprocess(image, gated, class_probs=[0.7, 0.2])
    assert out[0].any() and not out[1].any()
    assert not apply_postprocess(image, gated, class_probs=[0.1, 0.2]).any()
    forced = PostProcess(threshold=[0.3, 0.3], classifier_threshold=[0.5, 0.5], force_one_class=True)
    out = apply_postprocess(image, forced, class_probs=[0.1, 0.2])
    assert not out[0].any() and out[1].any()
    with pytest.raises(ValueError, match="needs class_probs"):
        apply_postprocess(image, gated)
    by_top_k = PostProcess(threshold=[0.3, 0.3], classifier_threshold=[0.0, 1.0], top_k=10)
    out = apply_postprocess(image, by_top_k)
    assert out[0].any() and not out[1].any()


# ------------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_named():
    probs, masks = fragmented(13, n=3)
    bad = probs.copy()
    bad[2, 1, 3, 4] = 1.5
    with pytest.raises(ValueError, match=r"\[image, class, y, x\] = \[2, 1, 3, 4\]"):
        search_thresholds(bad, masks, [0.5], [0], chunk_size=1)
    bad_masks = masks.copy()
    bad_masks[1, 0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"binary.*\[1, 0, 0, 0\]"):
        search_thresholds(probs, bad_masks, [0.5], [0])
    with pytest.raises(ValueError, match="shape"):
        search_thresholds(probs, masks[:2], [0.5], [0])
    with pytest.raises(TypeError, match="uint8"):
        search_thresholds(probs.astype(np.int16), masks, [0.5], [0])
    with pytest.raises(TypeError, match="integers"):
        search_thresholds(probs, masks, [0.5], [1.5])
    with pytest.raises(ValueError, match="NaN"):
        search_triplet(probs, masks, [np.nan], [0], [0.5])
    with pytest.raises(ValueError, match="one value per class"):
        apply_threshold_min_area(probs[0], [0.5, 0.5, 0.5])


def test_missing_postprocess_json_warns_naming_the_path_and_the_defaults(tmp_path, caplog):
    """Issue 15 item 11: 40_submit fell back to threshold 0.5 silently when postprocess.json was missing."""
    from kitlib.postprocess import load_postprocess
    from kitlib.presets import PRESETS

    with caplog.at_level(logging.WARNING, logger="kitlib.postprocess"):
        params = load_postprocess(tmp_path / "e", PRESETS["demo"])
    assert params.threshold == [0.5] * 4 and params.min_area == [0] * 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(tmp_path / "e" / "postprocess.json") in warnings[0].getMessage()
    assert "threshold 0.5" in warnings[0].getMessage() and "min_area 0" in warnings[0].getMessage()
    caplog.clear()
    PostProcess(threshold=[0.4] * 4, min_area=[0] * 4).to_json(tmp_path / "e" / "postprocess.json")
    with caplog.at_level(logging.WARNING, logger="kitlib.postprocess"):
        assert load_postprocess(tmp_path / "e", PRESETS["demo"]).threshold == [0.4] * 4
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="kitlib.postprocess"):  # argmax presets need no file: no warning
        assert load_postprocess(tmp_path / "none", PRESETS["cassava"]) is None
    assert not caplog.records
