"""kitlib.class_losses, across the whole classification zoo: labels and soft targets, label smoothing in both
conventions, class weights, per-pixel CE against torch, and the loss keywords checked when a config is built. Values
are computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kitlib.class_losses import smooth_targets
from kitlib.losses import check_loss_kwargs, create_loss, loss_parameters
from kitlib.params import ParameterError
from kitlib.recipes import TRAIN_RECIPES
from kitlib.stages import TrainConfig
from tests.test_robust_losses import CLASSIFICATION, LN2, _logits_targets, _sigmoid, _t

LN3 = math.log(3.0)


def test_the_zoo_is_complete():
    assert CLASSIFICATION == [
        "bi_tempered", "ce", "focal_ce", "focal_cosine", "nce_rce", "symmetric_ce", "taylor_ce",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Label smoothing: logits [ln 2, 0, 0] -> p = (1/2, 1/4, 1/4), label 0, s = 0.3
#   uniform: t = (0.7 + 0.1, 0.1, 0.1)  -> 0.8 ln 2 + 0.2 ln 4 = 1.2 ln 2
#   others:  t = (0.7, 0.15, 0.15)      -> 0.7 ln 2 + 0.3 ln 4 = 1.3 ln 2
# ---------------------------------------------------------------------------------------------------------------
SMOOTHING_CASES = [
    ("ce", {"label_smoothing": 0.3}, 1.2 * LN2),  # torch's convention is the default of "ce"
    ("ce", {"label_smoothing": 0.3, "smoothing_convention": "uniform"}, 1.2 * LN2),
    ("ce", {"label_smoothing": 0.3, "smoothing_convention": "others"}, 1.3 * LN2),
    ("bi_tempered", {"t1": 1.0, "t2": 1.0, "label_smoothing": 0.3}, 1.3 * LN2),  # the reference's is the default
    ("bi_tempered", {"t1": 1.0, "t2": 1.0, "label_smoothing": 0.3, "smoothing_convention": "uniform"}, 1.2 * LN2),
    ("taylor_ce", {"n": 60, "smoothing": 0.3}, 1.3 * LN2),  # order 60: the softmax to float precision
    ("taylor_ce", {"n": 60, "smoothing": 0.3, "smoothing_convention": "uniform"}, 1.2 * LN2),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), SMOOTHING_CASES)
def test_label_smoothing_conventions_by_hand(name, kwargs, expected):
    logits = _t([[LN2, 0.0, 0.0]])
    assert create_loss(name, **kwargs)(logits, _t([0], torch.int64)).item() == pytest.approx(expected, abs=1e-5)


def test_smooth_targets_rows_and_torch_equivalence():
    one_hot = _t([[1.0, 0.0, 0.0, 0.0]])
    assert smooth_targets(one_hot, 0.2, "uniform")[0].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])
    assert smooth_targets(one_hot, 0.2, "others")[0].tolist() == pytest.approx([0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3])
    logits, labels = _logits_targets()
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1).item()
    assert create_loss("ce", label_smoothing=0.1)(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="smoothing_convention must be one of"):
        create_loss("ce", label_smoothing=0.1, smoothing_convention="torch")


# ---------------------------------------------------------------------------------------------------------------
# Soft targets (N, C): hand values, and a one-hot row gives its label's loss in every loss
# ---------------------------------------------------------------------------------------------------------------
_P = (_sigmoid(-0.2), _sigmoid(0.2))  # softmax of the normalised logits [0.6, 0.8]
SOFT_CASES = [
    # logits [ln 3, 0] -> p = (3/4, 1/4); t = (1/2, 1/2)
    ("ce", {}, [[LN3, 0.0]], 0.5 * math.log(4 / 3) + 0.5 * math.log(4)),
    ("focal_ce", {"gamma": 1.0}, [[LN3, 0.0]], 0.5 * 0.25 * math.log(4 / 3) + 0.5 * 0.75 * math.log(4)),
    # NCE = (1/2)(ln 4/3 + ln 4) / (ln 4/3 + ln 4) = 1/2; RCE = -(3/4 + 1/4) ln(1/2) = ln 2
    ("nce_rce", {}, [[LN3, 0.0]], 0.5 + LN2),
    # p = (1/2, 1/2): CE ln 2, RCE ln 2
    ("symmetric_ce", {}, [[0.0, 0.0]], 0.1 * LN2 + LN2),
    # Taylor n = 2: p = (1, 2.5) / 3.5
    ("taylor_ce", {}, [[0.0, 1.0]], 0.5 * math.log(3.5) + 0.5 * math.log(1.4)),
    # p = t: the Bregman divergence is 0 (up to the reference's 1e-10 inside log_t)
    ("bi_tempered", {"t1": 0.5, "t2": 1.0}, [[0.0, 0.0]], 0.0),
    # cos([3, 4], [1/2, 1/2]) = 3.5 / (5 / sqrt 2); focal term -sum_c t_c (1 - p_c)^2 log p_c
    (
        "focal_cosine",
        {},
        [[3.0, 4.0]],
        1 - 3.5 * math.sqrt(2) / 5 - 0.1 * 0.5 * sum((1 - p) ** 2 * math.log(p) for p in _P),
    ),
]


def test_soft_cases_cover_the_zoo():
    assert sorted({name for name, *_ in SOFT_CASES}) == CLASSIFICATION


@pytest.mark.parametrize(("name", "kwargs", "logits", "expected"), SOFT_CASES)
def test_soft_targets_by_hand(name, kwargs, logits, expected):
    value = create_loss(name, **kwargs)(_t(logits), _t([[0.5, 0.5]]))
    assert value.item() == pytest.approx(expected, abs=1e-5)


#: Keywords that exercise each loss's own options (smoothing, weights) in the one-hot comparison.
_OPTIONS = {
    "ce": {"label_smoothing": 0.1, "weight": [1.0, 2.0, 0.5, 1.0, 3.0]},
    "bi_tempered": {"label_smoothing": 0.1, "weight": [1.0, 2.0, 0.5, 1.0, 3.0]},
    "taylor_ce": {"smoothing": 0.2, "smoothing_convention": "uniform"},
    "focal_ce": {"gamma": 1.5, "weight": [2.0, 1.0, 1.0, 1.0, 1.0]},
}


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_one_hot_soft_targets_equal_labels(name):
    logits, labels = _logits_targets()
    loss = create_loss(name, **_OPTIONS.get(name, {}))
    one_hot = F.one_hot(labels, 5).float()
    assert loss(logits, one_hot).item() == pytest.approx(loss(logits, labels).item(), rel=1e-5)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_mixed_soft_targets_train(name):
    """Rows like a batch mix's (0.7 / 0.3 on two classes): finite loss and gradients."""
    logits, labels = _logits_targets()
    targets = 0.7 * F.one_hot(labels, 5).float() + 0.3 * F.one_hot(labels.flip(0), 5).float()
    logits.requires_grad_()
    value = create_loss(name)(logits, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Class weights: logits [[0, 0], [ln 3, 0]], labels [0, 1] -> losses (ln 2, ln 4); weight (1, 3)
# ---------------------------------------------------------------------------------------------------------------


def test_class_weights_by_hand_and_as_torch():
    logits, labels = _t([[0.0, 0.0], [LN3, 0.0]]), _t([0, 1], torch.int64)
    weighted = create_loss("ce", weight=[1.0, 3.0])
    assert weighted(logits, labels).item() == pytest.approx((LN2 + 3 * 2 * LN2) / 4, abs=1e-6)
    assert create_loss("ce", weight=[1.0, 3.0], reduction="sum")(logits, labels).item() == pytest.approx(7 * LN2)
    none = create_loss("ce", weight=[1.0, 3.0], reduction="none")(logits, labels)
    assert none.tolist() == pytest.approx([LN2, 6 * LN2])
    # a soft row weighs sum_c weight_c t_c: (1/2, 1/2) on the second sample weighs 2
    soft = _t([[1.0, 0.0], [0.5, 0.5]])
    expected = (LN2 + 2 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4))) / 3
    assert weighted(logits, soft).item() == pytest.approx(expected, abs=1e-6)
    many, many_labels = _logits_targets()
    w = [1.0, 2.0, 0.5, 1.0, 3.0]
    expected = F.cross_entropy(many, many_labels, weight=torch.tensor(w)).item()
    assert create_loss("ce", weight=w)(many, many_labels).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_every_loss_takes_class_weights(name):
    logits, labels = _logits_targets()
    weight = [0.0, 1.0, 1.0, 1.0, 1.0]
    kept = labels != 0
    per_sample = create_loss(name, reduction="none")(logits, labels)
    expected = per_sample[kept].mean().item()  # weight 0 drops class 0 from the weighted mean
    assert create_loss(name, weight=weight)(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="weight has 2 values for 5 classes"):
        create_loss(name, weight=[1.0, 2.0])(logits, labels)


@pytest.mark.parametrize("weight", [[], [1.0, -1.0], [1.0, float("nan")], "abc", [[1.0, 2.0]]])
def test_bad_class_weights(weight):
    with pytest.raises(ValueError, match="weight must be a list of C finite numbers >= 0"):
        create_loss("ce", weight=weight)


def test_per_pixel_ce_and_focal_match_torch_with_ignore_index():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    masks = torch.randint(0, 3, (2, 4, 4), generator=gen)
    masks[0, 0] = -100
    expected = F.cross_entropy(logits, masks, label_smoothing=0.2, ignore_index=-100).item()
    assert create_loss("ce", label_smoothing=0.2)(logits, masks).item() == pytest.approx(expected, rel=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5])
    expected = F.cross_entropy(logits, masks, weight=w, ignore_index=-100).item()
    assert create_loss("ce", weight=w.tolist())(logits, masks).item() == pytest.approx(expected, rel=1e-6)
    assert create_loss("focal_ce", gamma=0.0)(logits, masks).item() == pytest.approx(
        F.cross_entropy(logits, masks, ignore_index=-100).item(), rel=1e-6
    )
    soft = F.one_hot(masks.clamp_min(0), 3).movedim(-1, 1).float()
    assert create_loss("ce")(logits, soft).shape == ()
    with pytest.raises(ValueError, match=r"logits must be \(N, C\), got shape \(2, 3, 4, 4\)"):
        create_loss("taylor_ce")(logits, masks)


# ---------------------------------------------------------------------------------------------------------------
# Keywords: refused when the config is built, naming the loss and what it takes
# ---------------------------------------------------------------------------------------------------------------


def test_loss_parameters_and_check_loss_kwargs():
    assert loss_parameters("taylor_ce") == ("n", "smoothing", "reduction", "smoothing_convention", "weight")
    assert "smooth" in loss_parameters("dice")  # smp's own keywords behind the wrapper
    check_loss_kwargs("ce", {"label_smoothing": 0.1, "weight": [1, 2]})
    with pytest.raises(TypeError, match=r"loss 'taylor_ce' takes no 'label_smoothing'; its parameters: n, smoothing"):
        check_loss_kwargs("taylor_ce", {"label_smoothing": 0.1})
    with pytest.raises(TypeError, match="loss 'dice' takes no 'smoth'"):
        check_loss_kwargs("combo", {"terms": {"bce": 0.5, "dice": (0.5, {"smoth": 1.0})}, "mode": "binary"})
    with pytest.raises(KeyError, match="unknown loss 'dicee'"):
        check_loss_kwargs("combo", {"terms": {"dicee": 1.0}})


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_a_cassava_run_names_any_loss_without_the_recipes_kwargs(name):
    """The cassava recipe's loss_kwargs (the 1st place's t1, t2 and smoothing) belong to its "bi_tempered": another
    loss gets none."""
    recipe = TRAIN_RECIPES["cassava"]
    cfg = TrainConfig.from_notebook(preset="cassava", loss=name)
    assert cfg.loss_kwargs == (recipe["loss_kwargs"] if name == recipe["loss"] else {})
    from kitlib.train import build_loss

    assert build_loss(cfg)(torch.zeros(2, 5), torch.tensor([0, 4])).item() > 0


def test_train_config_refuses_loss_kwargs_the_loss_does_not_take():
    with pytest.raises(ParameterError, match=r"loss_kwargs: loss 'taylor_ce' takes no 'label_smoothing'.*smoothing"):
        TrainConfig.from_notebook(preset="cassava", loss="taylor_ce", loss_kwargs={"label_smoothing": 0.1})
    with pytest.raises(ParameterError, match="given with the loss recipe 'clouds_1st'"):
        TrainConfig.from_notebook(preset="clouds", loss_kwargs={"smooth": 1.0})
    with pytest.raises(ValueError, match=r"loss_kwargs weight must be a list of 5 class weights, got \[1, 2\]"):
        TrainConfig.from_notebook(preset="cassava", loss="focal_ce", loss_kwargs={"weight": [1, 2]})
    cfg = TrainConfig.from_notebook(preset="cassava", loss="nce_rce", loss_kwargs={"alpha": 2.0, "weight": [1] * 5})
    assert cfg.loss_kwargs == {"alpha": 2.0, "weight": [1] * 5}
