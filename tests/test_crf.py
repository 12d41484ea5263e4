"""kitlib.crf and its hooks: a DenseCRF snaps probabilities blurred across an image edge back onto the edge; decode,
score_oof, the OOF search and postprocess.json carry the parameters.

The case: a 40 x 60 image, red left of column 30 and blue from column 30 on; the probability of the right class is a
logistic ramp centred 6 columns left of the edge with scale 4 px (blurred across it). Argmax puts the boundary at
column 24: IoU with the true right half 30 / 36 = 0.833. After the CRF the labels follow the colour edge (IoU > 0.95).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest

from kitlib.crf import CRF_DEFAULTS, check_crf_params, dense_crf, dense_crf_binary
from kitlib.postprocess import PostProcess, decode, load_postprocess
from kitlib.presets import PRESETS
from kitlib.scoring import score_oof
from kitlib.search import search_crf, search_crf_from_params

H, W, EDGE = 40, 60, 30
MULTICLASS = dataclasses.replace(PRESETS["coco"], classes=("Background", "right"))  # mIoU of 2 classes
BINARY = PRESETS["masks"]  # Dice of 1 class


def edge_image() -> np.ndarray:
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, :EDGE] = (200, 40, 40)
    image[:, EDGE:] = (40, 40, 200)
    return image


def blurred_right_prob(shift: float = -6.0, scale: float = 4.0) -> np.ndarray:
    x = np.arange(W) + 0.5
    ramp = 1.0 / (1.0 + np.exp(-(x - EDGE - shift) / scale))
    return np.broadcast_to(ramp, (H, W)).astype(np.float32)


def truth() -> np.ndarray:
    right = np.zeros((H, W), dtype=bool)
    right[:, EDGE:] = True
    return right


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_multiclass_crf_snaps_the_blurred_boundary_to_the_image_edge():
    p = blurred_right_prob()
    probs = np.stack([1.0 - p, p])
    assert iou(probs.argmax(0) == 1, truth()) == pytest.approx(30 / 36)
    refined = dense_crf(probs, edge_image())
    assert refined.shape == (2, H, W) and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    assert iou(refined.argmax(0) == 1, truth()) > 0.95
    as_uint8 = dense_crf(np.round(probs * 255).astype(np.uint8), edge_image())  # how the kit stores OOF probs
    assert iou(as_uint8.argmax(0) == 1, truth()) > 0.95


def test_binary_crf_snaps_each_class_to_the_edge():
    p = blurred_right_prob(shift=6.0)  # the other side: the boundary at column 36
    assert iou(p > 0.5, truth()) == pytest.approx(24 / 30)
    refined = dense_crf_binary(p[None], edge_image())
    assert refined.shape == (1, H, W) and 0.0 <= refined.min() <= refined.max() <= 1.0
    assert iou(refined[0] > 0.5, truth()) > 0.95


def test_crf_parameters_are_checked():
    assert check_crf_params({}) == CRF_DEFAULTS
    assert check_crf_params({"iterations": 3.0})["iterations"] == 3
    with pytest.raises(ValueError, match="unknown CRF parameter.*bilateral_sxy"):
        check_crf_params({"sxy": 3})
    with pytest.raises(ValueError, match="out of range"):
        check_crf_params({"bilateral_srgb": 0})
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        dense_crf(np.full((2, H, W), 0.5, np.float32), edge_image()[:10])


def test_decode_and_score_apply_the_crf_with_the_images():
    p = blurred_right_prob()
    probs = np.stack([1.0 - p, p])[None]
    labels = truth()[None].astype(np.int64)
    params = PostProcess(crf={"iterations": 5})
    assert params.argmax and params.num_classes is None
    with pytest.raises(ValueError, match="pass the 1 images"):
        decode(probs, MULTICLASS, params)
    assert iou(decode(probs, MULTICLASS, params, images=edge_image()[None])[0] == 1, truth()) > 0.95
    plain = score_oof(probs, labels, MULTICLASS).overall
    refined = score_oof(probs, labels, MULTICLASS, params, images=edge_image()[None]).overall
    assert plain < 0.86 < 0.95 < refined
    binary = PostProcess(threshold=[0.5], min_area=[0], crf={})
    masks = decode(blurred_right_prob(shift=6.0)[None, None], BINARY, binary, images=edge_image()[None])
    assert iou(masks[0, 0] == 1, truth()) > 0.95
    with pytest.raises(ValueError, match="only crf applies"):
        PostProcess()


def test_search_keeps_the_crf_only_when_it_raises_the_score():
    p = blurred_right_prob()
    probs = np.round(np.stack([1.0 - p, p])[None] * 255).astype(np.uint8)
    labels, images = truth()[None].astype(np.int64), edge_image()[None]
    chosen, table = search_crf(probs, labels, images, MULTICLASS, {"bilateral_sxy": [20, 80], "iterations": [5]})
    assert len(table) == 3 and not table["crf"].iloc[0]
    assert chosen.crf["bilateral_sxy"] in (20, 80) and chosen.meta["crf_search"]["score"] > 0.95
    perfect = np.stack([~truth(), truth()]).astype(np.float32)[None]  # nothing to gain: no CRF
    kept, _ = search_crf(perfect, labels, images, MULTICLASS, {"iterations": [5]})
    assert kept is None
    binary, _ = search_crf(blurred_right_prob(shift=6.0)[None, None], truth()[None, None].astype(np.uint8), images,
                           BINARY, {"iterations": [5]})  # fmt: skip
    assert binary.threshold == [0.5] and binary.crf is not None


def test_search_from_params_reads_the_images_and_postprocess_json_round_trips(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        big = cv2.resize(edge_image(), (2 * W, 2 * H), interpolation=cv2.INTER_NEAREST)  # read back at (H, W)
        cv2.imwrite(paths[-1], cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    df = pd.DataFrame({"image_id": ["a", "b", "c"], "image_path": paths})
    p = blurred_right_prob()
    probs = np.repeat(np.stack([1.0 - p, p])[None], 3, axis=0)
    labels = np.repeat(truth()[None].astype(np.int64), 3, axis=0)
    chosen, table = search_crf_from_params(probs, labels, df, MULTICLASS, 2, {"iterations": "3,5"}, seed=1)
    assert len(table) == 3 and len(chosen.meta["crf_search"]["image_ids"]) == 2
    chosen.to_json(tmp_path / "postprocess.json")
    loaded = load_postprocess(tmp_path, MULTICLASS)
    assert loaded.crf == chosen.crf and loaded.argmax
    (tmp_path / "postprocess.json").write_text('{"decode": "argmax", "task": "multiclass"}')
    assert load_postprocess(tmp_path, MULTICLASS) is None


def test_make_submission_refines_each_test_image_with_its_own_picture(tmp_path):
    import torch

    from kitlib import inference
    from kitlib.formats import load_competition

    (tmp_path / "test").mkdir()
    cv2.imwrite(str(tmp_path / "test" / "e.png"), cv2.cvtColor(edge_image(), cv2.COLOR_RGB2BGR))
    test_df = load_competition(BINARY, tmp_path, split="test")
    probs = torch.from_numpy(blurred_right_prob(shift=6.0))[None, None]
    for crf, low, high in ((None, 0.79, 0.81), ({"iterations": 5}, 0.95, 1.0)):
        params = PostProcess(threshold=[0.5], min_area=[0], crf=crf)
        result = inference.make_submission([(["e.png"], probs, None)], test_df, BINARY, tmp_path,
                                           tmp_path / "sub.csv", params, keep_masks=["e.png"])  # fmt: skip
        assert low <= iou(result.masks["e.png"][..., 0] == 1, truth()) <= high
