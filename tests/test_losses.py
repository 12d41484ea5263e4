"""kitlib.losses: a hand-computed case for every segmentation loss, weighted sums, SegClsLoss, the registry,
gradients (the classification losses' own cases are in test_robust_losses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kitlib.losses import (
    LOSSES,
    MODES,
    RECIPES,
    SEGMENTATION_LOSSES,
    LossRecipe,
    SegClsLoss,
    SSIMLoss,
    WeightedSum,
    create_loss,
    create_recipe,
    mask_presence,
    ssim,
)
from tests.test_robust_losses import LN2, _logits_targets, _sigmoid, _t


def _soft_ce_hand() -> float:
    """smp soft CE, logits [2, 0], target 0, smoothing 0.1: 0.9 * NLL + 0.1 / 2 * sum_c -log p_c."""
    log_z = math.log(math.exp(2) + 1)
    nll = [log_z - 2, log_z]
    return 0.9 * nll[0] + 0.05 * sum(nll)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation: (name, kwargs, logits, masks, expected), all by hand
# ---------------------------------------------------------------------------------------------------------------
ZEROS_1122 = [[[[0.0, 0.0], [0.0, 0.0]]]]
ONES_1122 = [[[[1.0, 1.0], [1.0, 1.0]]]]

SEG_CASES = [
    # BCE of logit 0 is ln 2 whatever the target
    ("bce", {"mode": "multilabel"}, [[[[0.0, 0.0]], [[0.0, 0.0]]]], [[[[1.0, 0.0]], [[0.0, 1.0]]]], LN2),
    # smoothing 0.1: target 1 -> 0.9
    (
        "bce",
        {"mode": "binary", "smooth_factor": 0.1},
        [[[[2.0]]]],
        [[[1.0]]],
        -(0.9 * math.log(_sigmoid(2.0)) + 0.1 * math.log(1 - _sigmoid(2.0))),
    ),
    # p = 0.5 on 4 foreground pixels: Dice = 2 * 2 / (2 + 4) = 2/3
    ("dice", {"mode": "binary"}, ZEROS_1122, ONES_1122, 1 / 3),
    # multiclass, every pixel class 0: class 0 as above (1/3), class 1 has no pixel and counts 0 -> mean 1/6
    ("dice", {"mode": "multiclass"}, [[[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]], [[[0, 0], [0, 0]]], 1 / 6),
    # IoU = 2 / (2 + 4 - 2)
    ("jaccard", {"mode": "binary"}, ZEROS_1122, ONES_1122, 0.5),
    # (1 - p_t)^2 * BCE with p_t = 0.5
    ("focal", {"mode": "binary"}, [[[[0.0]]]], [[[[1.0]]]], LN2 / 4),
    # one pixel: hinge 1 - x times Jaccard gradient 1
    ("lovasz", {"mode": "binary"}, [[[[0.25]]]], [[[[1.0]]]], 0.75),
    # errors [1 - 2, 1 - 0.5] sorted [0.5 (bg), -1 (fg)]: Lovasz gradient [0.5, 0.5] -> 0.5 * relu(0.5)
    ("lovasz", {"mode": "binary"}, [[[[2.0, -0.5]]]], [[[[1.0, 0.0]]]], 0.25),
    # TP = 1.5, FP = 0.5, FN = 1.5: 1 - 1.5 / (1.5 + 0.3 * 0.5 + 0.7 * 1.5)
    ("tversky", {"mode": "binary", "alpha": 0.3, "beta": 0.7}, ZEROS_1122, [[[[1.0, 1.0], [1.0, 0.0]]]], 1 - 1.5 / 2.7),
    ("soft_ce", {"smooth_factor": 0.1}, [[[[2.0]], [[0.0]]]], [[[0]]], _soft_ce_hand()),
    # identical inputs: probabilities 0.5 against targets 0.5
    ("ssim", {"mode": "multilabel"}, [[[[0.0] * 5] * 5] * 2], [[[[0.5] * 5] * 5] * 2], 0.0),
    # window 1: no variance, SSIM = (2 * 0.5 * 1 + C1) / (0.25 + 1 + C1)
    ("ssim", {"mode": "binary", "window_size": 1}, ZEROS_1122, [[[1, 1], [1, 1]]], 1 - 1.0001 / 1.2501),
]


@pytest.mark.parametrize(("name", "kwargs", "logits", "masks", "expected"), SEG_CASES)
def test_segmentation_hand_cases(name, kwargs, logits, masks, expected):
    dtype = torch.int64 if isinstance(np.asarray(masks).flat[0], int | np.integer) else torch.float32
    value = create_loss(name, **kwargs)(_t(logits), _t(masks, dtype))
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ["dice", "jaccard", "ssim", "lovasz", "tversky"])
@pytest.mark.parametrize("mode", MODES)
def test_perfect_prediction_is_near_zero(name, mode):
    gen = torch.Generator().manual_seed(0)
    if mode == "multiclass":
        masks = torch.randint(0, 3, (2, 6, 6), generator=gen)
        logits = 30.0 * (2 * F.one_hot(masks, 3).permute(0, 3, 1, 2).float() - 1)
    else:
        masks = (torch.rand(2, 1 if mode == "binary" else 3, 6, 6, generator=gen) < 0.5).float()
        logits = 30.0 * (2 * masks - 1)
    assert create_loss(name, mode=mode)(logits, masks).item() == pytest.approx(0.0, abs=1e-4)


def test_bce_takes_binary_masks_without_channel_and_integer_masks():
    logits = _t([[[[3.0, -1.0]]]])
    expected = -(math.log(_sigmoid(3.0)) + math.log(1 - _sigmoid(-1.0))) / 2
    loss = create_loss("bce", mode="binary")
    assert loss(logits, _t([[[1, 0]]], torch.uint8)).item() == pytest.approx(expected, abs=1e-6)
    assert loss(logits, _t([[[[1.0, 0.0]]]])).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        loss(logits, _t([[[1.0, 0.0, 1.0]]]))


def _ssim_loop(x: np.ndarray, y: np.ndarray, size: int, sigma: float, c1: float, c2: float) -> np.ndarray:
    """Reference SSIM map, pixel by pixel: zero padding, weighted moments as sums of deviations."""
    d = np.arange(size) - size // 2
    g = np.exp(-(d**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    r = size // 2
    xp, yp = np.pad(x, r), np.pad(y, r)
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            px, py = xp[i : i + size, j : j + size], yp[i : i + size, j : j + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            out[i, j] = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return out


def test_ssim_map_matches_pixel_loop_and_loss_uses_it():
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 6)), rng.random((5, 6))
    expected = _ssim_loop(x, y, size=3, sigma=1.0, c1=0.01**2, c2=0.03**2)
    loss = SSIMLoss("multilabel", window_size=3, sigma=1.0)
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None], loss.window.double())
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
    # the loss: sigmoid(logit(x)) = x against targets y
    logits = torch.logit(torch.from_numpy(x).float())[None, None]
    value = loss(logits, torch.from_numpy(y).float()[None, None])
    assert value.item() == pytest.approx(1 - expected.mean(), abs=1e-5)
    assert ssim(torch.from_numpy(x)[None, None], torch.from_numpy(x)[None, None], loss.window.double()).min() == 1


def test_ssim_multiclass_one_hot_and_errors():
    masks = _t([[[0, 1], [2, 2]]], torch.int64)
    logits = 30.0 * (2 * F.one_hot(masks, 3).permute(0, 3, 1, 2).float() - 1)
    assert SSIMLoss("multiclass", window_size=3)(logits, masks).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="window_size must be odd"):
        SSIMLoss("binary", window_size=4)
    with pytest.raises(ValueError, match="sigma"):
        SSIMLoss("binary", sigma=0)
    with pytest.raises(ValueError, match="masks must be"):
        SSIMLoss("multiclass")(logits, masks[:, :1])
    with pytest.raises(ValueError, match="do not fit"):
        SSIMLoss("binary")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


# ---------------------------------------------------------------------------------------------------------------
# Weighted sums and recipes
# ---------------------------------------------------------------------------------------------------------------


def _seg_inputs(mode: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    c = 1 if mode == "binary" else 3
    logits = torch.randn(2, c, 8, 8, generator=gen)
    if mode == "multiclass":
        return logits, torch.randint(0, c, (2, 8, 8), generator=gen)
    return logits, (torch.rand(2, c, 8, 8, generator=gen) < 0.4).float()


def test_combo_weights_terms_and_logs_them():
    logits, masks = _seg_inputs("multilabel")
    combo = create_loss("combo", terms={"bce": 0.75, "dice": (0.25, {"smooth": 1.0})}, mode="multilabel")
    bce = create_loss("bce", mode="multilabel")(logits, masks)
    dice = create_loss("dice", mode="multilabel", smooth=1.0)(logits, masks)
    assert combo(logits, masks).item() == pytest.approx(0.75 * bce.item() + 0.25 * dice.item(), rel=1e-6)
    assert set(combo.last_values) == {"bce", "dice"}
    assert combo.last_values["bce"].item() == pytest.approx(bce.item(), rel=1e-6)
    assert combo.last_values["dice"].item() == pytest.approx(dice.item(), rel=1e-6)
    assert not combo.last_values["bce"].requires_grad
    assert combo.weights == {"bce": 0.75, "dice": 0.25}


def test_combo_of_classification_losses_gets_no_mode():
    logits, targets = _logits_targets()
    combo = create_loss("combo", terms={"ce": 1.0, "focal_ce": [2.0, {"gamma": 0.0}]})
    assert combo(logits, targets).item() == pytest.approx(3 * F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_weighted_sum_module_and_errors():
    logits, masks = _seg_inputs("binary")
    ws = WeightedSum({"a": (2.0, create_loss("bce", mode="binary")), "b": (0, create_loss("dice", mode="binary"))})
    assert ws(logits, masks).item() == pytest.approx(2 * ws.last_values["a"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum({})
    for bad in (float("nan"), "1", None, True):
        with pytest.raises(ValueError, match="finite number"):
            WeightedSum({"a": (bad, torch.nn.L1Loss())})
    with pytest.raises(KeyError, match="unknown loss 'dcie'"):
        create_loss("combo", terms={"dcie": 1.0}, mode="binary")


PRESENCE_CASES = [
    # (masks, classes, expected presence)
    (_t([[[[0, 0], [0, 1]], [[0, 0], [0, 0]]], [[[0, 0], [0, 0]], [[1, 1], [1, 1]]]]), 2, [[1, 0], [0, 1]]),
    (_t([[[0, 0], [0, 0]], [[0, 1], [0, 0]]]), 1, [[0], [1]]),  # binary (N, H, W)
    (_t([[[0, 2], [2, 0]], [[0, 0], [0, 0]]], torch.int64), 3, [[1, 0, 1], [1, 0, 0]]),  # multiclass
    (_t([[[255, 1], [1, 255]]], torch.int64), 3, [[0, 1, 0]]),  # an ignore value is no class
]


@pytest.mark.parametrize(("masks", "classes", "expected"), PRESENCE_CASES)
def test_mask_presence(masks, classes, expected):
    presence = mask_presence(masks, classes)
    assert presence.dtype == torch.float32
    np.testing.assert_array_equal(presence.numpy(), expected)


def test_mask_presence_errors():
    with pytest.raises(ValueError, match="integer class indices"):
        mask_presence(torch.zeros(1, 2, 2), 3)
    with pytest.raises(ValueError, match="3 channels, the model 4"):
        mask_presence(torch.zeros(1, 3, 2, 2), 4)
    with pytest.raises(ValueError, match=r"\(N, K, H, W\) or \(N, H, W\)"):
        mask_presence(torch.zeros(2, 2), 1)


def test_seg_cls_loss_value_and_logging():
    masks = PRESENCE_CASES[0][0]  # presence [[1, 0], [0, 1]]
    mask_logits = torch.zeros(2, 2, 2, 2)
    cls_logits = _t([[2.0, 0.0], [-1.0, 3.0]])
    loss = SegClsLoss(create_loss("combo", terms={"bce": 1.0}, mode="multilabel"), cls_weight=0.1)
    cls = (-math.log(_sigmoid(2.0)) + LN2 - math.log(1 - _sigmoid(-1.0)) - math.log(_sigmoid(3.0))) / 4
    assert loss(mask_logits, cls_logits, masks).item() == pytest.approx(LN2 + 0.1 * cls, rel=1e-6)
    assert set(loss.last_values) == {"mask", "mask.bce", "cls"}
    assert loss.last_values["cls"].item() == pytest.approx(cls, rel=1e-6)
    assert loss(mask_logits, None, masks).item() == pytest.approx(LN2, rel=1e-6)  # no head
    assert "cls" not in loss.last_values
    with pytest.raises(ValueError, match=r"cls_logits must be \(N, K\)"):
        loss(mask_logits, torch.zeros(2, 3), masks)


def test_seg_cls_loss_multiclass_presence():
    masks = PRESENCE_CASES[2][0]
    loss = SegClsLoss(create_loss("soft_ce"), cls_weight=1.0)
    value = loss(torch.zeros(2, 3, 2, 2), torch.zeros(2, 3), masks)
    assert value.item() == pytest.approx(math.log(3) + LN2, rel=1e-6)
    with pytest.raises(ValueError, match="ignore_negative"):
        SegClsLoss(create_loss("soft_ce"), ignore_negative=True)(torch.zeros(2, 3, 2, 2), None, masks)


def test_seg_cls_loss_ignore_negative_stops_gradient_of_absent_classes():
    masks = PRESENCE_CASES[0][0]  # image 0 has class 0 only, image 1 class 1 only
    mask_logits = torch.randn(2, 2, 2, 2, requires_grad=True)
    SegClsLoss(create_loss("bce"), cls_weight=0.1, ignore_negative=True)(
        mask_logits, torch.zeros(2, 2), masks
    ).backward()
    grad_norms = mask_logits.grad.abs().sum(dim=(2, 3))
    assert grad_norms[0, 1] == 0 and grad_norms[1, 0] == 0
    assert grad_norms[0, 0] > 0 and grad_norms[1, 1] > 0


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_runs(name):
    recipe = RECIPES[name]
    assert recipe.source
    logits, masks = _seg_inputs(recipe.mode)
    logits.requires_grad_()
    loss_fn = create_recipe(name)
    if recipe.cls_weight is None:
        assert isinstance(loss_fn, WeightedSum)
        value = loss_fn(logits, masks)
    else:
        assert isinstance(loss_fn, SegClsLoss) and loss_fn.cls_weight == recipe.cls_weight
        value = loss_fn(logits, torch.zeros(2, logits.size(1)), masks)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    terms = set(recipe.terms)
    expected = terms if recipe.cls_weight is None else {"mask", "cls"} | {f"mask.{t}" for t in terms}
    assert set(loss_fn.last_values) == expected


def test_recipe_values_and_overrides():
    clouds = create_recipe("clouds_1st")
    assert clouds.mask_loss.weights == {"bce": 0.75, "dice": 0.25} and clouds.ignore_negative
    assert create_recipe("clouds_6th").weights == {"bce": 0.2, "dice": 0.8}
    binary = create_recipe("clouds_6th", mode="binary")
    assert binary.terms["dice"].mode == "binary"
    custom = create_recipe(LossRecipe(terms={"lovasz": 1.0}, mode="binary", source="test"))
    assert isinstance(custom, WeightedSum)
    with pytest.raises(KeyError, match="options:.*clouds_1st"):
        create_recipe("clouds_first")


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry_errors():
    with pytest.raises(KeyError, match=r"unknown loss 'dicee'; options: \['bce', 'bi_tempered'"):
        create_loss("dicee")
    with pytest.raises(TypeError, match="mode"):
        create_loss("dice")  # the mode is explicit
    with pytest.raises(ValueError, match="mode must be one of"):
        create_loss("dice", mode="multi-label")
    with pytest.raises(ValueError, match="mode must be one of"):
        create_loss("bce", mode="multiclass")
    with pytest.raises(ValueError, match="mode must be one of"):
        create_loss("soft_ce", mode="binary")
    with pytest.raises(TypeError):
        create_loss("focal_ce", gama=2.0)  # a typo is not swallowed
    with pytest.raises(TypeError):
        create_loss("ce", mode="multiclass")  # classification losses take no mode
    with pytest.raises(ValueError, match="t1"):
        create_loss("bi_tempered", t1=2.0)
    with pytest.raises(ValueError, match="label smoothing"):
        create_loss("taylor_ce", smoothing=1.0)
    assert SEGMENTATION_LOSSES < set(LOSSES)


# Every registry key with the modes it supports (None: classification).
GRAD_CASES = [
    *[(name, mode) for name in ("dice", "jaccard", "focal", "lovasz", "tversky", "ssim") for mode in MODES],
    ("bce", "binary"),
    ("bce", "multilabel"),
    ("soft_ce", "multiclass"),
    ("combo", "multiclass"),
    *[
        (name, None)
        for name in ("ce", "focal_ce", "bi_tempered", "focal_cosine", "taylor_ce", "symmetric_ce", "nce_rce")
    ],
]


def test_grad_cases_cover_the_registry():
    assert {name for name, _ in GRAD_CASES} == set(LOSSES)


@pytest.mark.parametrize(("name", "mode"), GRAD_CASES)
def test_gradients_flow(name, mode):
    if mode is None:
        logits, targets = _logits_targets()
        loss_fn = create_loss(name)
    else:
        logits, targets = _seg_inputs(mode)
        kwargs = {"terms": {"soft_ce": 1.0, "dice": 0.5, "ssim": 0.5}} if name == "combo" else {}
        loss_fn = create_loss(name, mode=mode, **kwargs)
    logits.requires_grad_()
    value = loss_fn(logits, targets)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "weights"),
    [("trash_ce_dice", {"soft_ce": 0.8, "dice": 0.2}), ("trash_ce_dice_ssim", {"soft_ce": 0.75, "dice": 0.25,
     "ssim": 0.25}), ("trash_1st_triple", {"focal_ce": 0.75, "dice": 0.25, "ssim": 0.25})],
)  # fmt: skip
def test_trash_recipes_weigh_their_terms_as_the_solutions(name, weights):
    """The trash-sorting recipes: DiceCE lambda 0.8 (0.8 CE + 0.2 Dice) and the 1st place's 0.75 / 0.25 / 0.25, each
    the weighted sum of its terms, each term recomputed on its own."""
    from kitlib.losses import RECIPES, create_loss, create_recipe

    torch.manual_seed(0)
    logits, masks = torch.randn(2, 5, 16, 16), torch.randint(0, 5, (2, 16, 16))
    loss = create_recipe(name)
    total = loss(logits, masks)
    terms = RECIPES[name].terms
    parts = {}
    for term, spec in terms.items():
        kwargs = dict(spec[1]) if isinstance(spec, tuple) else {}
        fn = create_loss(term, **kwargs) if term == "focal_ce" else create_loss(term, mode="multiclass", **kwargs)
        parts[term] = fn(logits, masks)
    assert {k: (v[0] if isinstance(v, tuple) else v) for k, v in terms.items()} == weights
    expected = sum(weights[k] * parts[k] for k in weights)
    assert torch.allclose(total, expected, atol=1e-6), (float(total), float(expected))
