"""kitlib.robust_losses: a hand-computed case for every classification loss (built through the registry of
kitlib.losses, as training builds them), the tempered and Taylor softmaxes, NCE+RCE, reductions, gradients, bad
targets. Soft targets, smoothing conventions and class weights across the zoo: test_class_losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kitlib.losses import LOSSES, SEGMENTATION_LOSSES, create_loss
from kitlib.robust_losses import BiTemperedLoss, taylor_softmax, tempered_softmax

#: Every classification loss of the registry.
CLASSIFICATION = sorted(set(LOSSES) - SEGMENTATION_LOSSES - {"combo"})
LN2 = math.log(2.0)
PHI = (1 + math.sqrt(5)) / 2  # golden ratio


def _t(x, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------------------------------
# Classification: (name, kwargs, logits (N, C), targets (N,), expected), all by hand
# ---------------------------------------------------------------------------------------------------------------
_FC_CE = math.log(1 + math.exp(-0.2))  # CE of the normalised logits [0.6, 0.8], target 1
CLS_CASES = [
    ("ce", {}, [[0.0] * 5, [0.0] * 5], [0, 3], math.log(5)),
    ("focal_ce", {}, [[0.0, 0.0]], [0], LN2 / 4),
    ("focal_ce", {"gamma": 1.0, "alpha": 0.5}, [[0.0, 0.0]], [1], 0.5 * 0.5 * LN2),
    # t1 = 0.5, t2 = 1, p = (1/2, 1/2): -log_t(1/2) - 1/1.5 + 2 * (1/2)^1.5 / 1.5 = (4 - 2 sqrt 2) / 3
    ("bi_tempered", {"t1": 0.5, "t2": 1.0}, [[0.0, 0.0]], [0], (4 - 2 * math.sqrt(2)) / 3),
    # cos([3, 4], [0, 1]) = 0.8; focal term on softmax([0.6, 0.8]): (1 - sigmoid(0.2))^2 * CE
    ("focal_cosine", {}, [[3.0, 4.0]], [1], 0.2 + 0.1 * (1 - _sigmoid(0.2)) ** 2 * _FC_CE),
    # Taylor n = 2: f(0) = 1, f(1) = 2.5 -> p = 2.5 / 3.5
    ("taylor_ce", {}, [[0.0, 1.0]], [1], math.log(1.4)),
    ("taylor_ce", {"smoothing": 0.2}, [[0.0, 1.0]], [1], -(0.2 * math.log(1 / 3.5) + 0.8 * math.log(2.5 / 3.5))),
    # p = (1/2, 1/2): 0.1 * ln 2 + 1.0 * -log(1e-4) * (1 - 1/2)
    ("symmetric_ce", {}, [[0.0, 0.0]], [0], 0.1 * LN2 - math.log(1e-4) * 0.5),
    # NCE = log p_y / sum_k log p_k = 1/2; RCE = -log(1e-4) * (1 - 1/2)
    ("nce_rce", {}, [[0.0, 0.0]], [0], 0.5 - math.log(1e-4) * 0.5),
    # p = (3/4, 1/4), y = 0: NCE = ln(4/3) / (ln(4/3) + ln 4); RCE = -log(1e-4) / 4
    (
        "nce_rce",
        {"alpha": 2.0, "beta": 0.5},
        [[math.log(3.0), 0.0]],
        [0],
        2 * math.log(4 / 3) / math.log(16 / 3) - 0.5 * math.log(1e-4) / 4,
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "logits", "targets", "expected"), CLS_CASES)
def test_classification_hand_cases(name, kwargs, logits, targets, expected):
    value = create_loss(name, **kwargs)(_t(logits), _t(targets, torch.int64))
    assert value.item() == pytest.approx(expected, abs=1e-5)


def _logits_targets(n: int = 6, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=gen) * 2, torch.randint(0, c, (n,), generator=gen)


def test_ce_soft_targets_equal_int_targets():
    logits, targets = _logits_targets()
    loss = create_loss("ce")
    assert loss(logits, F.one_hot(targets, 5).float()).item() == pytest.approx(loss(logits, targets).item(), rel=1e-6)


def test_focal_ce_gamma_0_is_ce_and_ignores_index():
    logits, targets = _logits_targets()
    ce = F.cross_entropy(logits, targets).item()
    assert create_loss("focal_ce", gamma=0.0)(logits, targets).item() == pytest.approx(ce, rel=1e-6)
    ignored = targets.clone()
    ignored[:3] = -100
    expected = F.cross_entropy(logits[3:], targets[3:]).item()
    assert create_loss("focal_ce", gamma=0.0)(logits, ignored).item() == pytest.approx(expected, rel=1e-6)


def _google_smoothing(targets: torch.Tensor, c: int, s: float) -> torch.Tensor:
    """The reference's smoothing, written out: 1 - s on the true class, s / (C - 1) on the others."""
    out = torch.full((targets.numel(), c), s / (c - 1))
    out[torch.arange(targets.numel()), targets] = 1 - s
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bi_tempered_t1_t2_1_is_cross_entropy(smoothing):
    logits, targets = _logits_targets()
    soft = _google_smoothing(targets, 5, smoothing)
    expected = F.cross_entropy(logits, soft).item()
    assert create_loss("bi_tempered", t1=1.0, t2=1.0, label_smoothing=smoothing)(logits, targets).item() == (
        pytest.approx(expected, rel=1e-6)
    )
    assert BiTemperedLoss(1.0, 1.0)(logits, soft).item() == pytest.approx(expected, rel=1e-6)  # soft targets


def test_bi_tempered_general_formula_tends_to_cross_entropy():
    logits, targets = _logits_targets()
    near = BiTemperedLoss(t1=1 - 1e-4, t2=1 + 1e-4, num_iters=30)(logits, targets).item()
    assert near == pytest.approx(F.cross_entropy(logits, targets).item(), abs=2e-3)


def test_tempered_softmax_hand_case_and_normalisation():
    # t = 2: exp_t(u) = 1 / (1 - u); for (1, 0): 1/l + 1/(1 + l) = 1 -> l = phi, p = (1/phi, 1/phi^2)
    p = tempered_softmax(_t([[1.0, 0.0]], torch.float64), t=2.0, num_iters=30)
    np.testing.assert_allclose(p.numpy(), [[1 / PHI, 1 / PHI**2]], atol=1e-9)
    logits, _ = _logits_targets()
    for t in (0.5, 1.0, 1.4, 3.0):
        assert tempered_softmax(logits.double(), t, num_iters=60).sum(-1).numpy() == pytest.approx(np.ones(6))
    finite_support = tempered_softmax(_t([[5.0, 0.0, -5.0]]), t=0.5, num_iters=40)
    assert finite_support[0, 2] == 0  # exp_0.5 is 0 below -1 / (1 - t) = -2 from the normaliser


@pytest.mark.parametrize(("t1", "t2"), [(0.8, 1.4), (0.5, 0.7), (0.2, 2.0)])
def test_bi_tempered_gradient_matches_reference_formula(t1, t2):
    """The gradient of Google's reference (its custom_gradient), written out, against autograd through ours."""
    logits, targets = _logits_targets()
    logits = logits.double().requires_grad_()
    BiTemperedLoss(t1, t2, label_smoothing=0.1, num_iters=60, reduction="sum")(logits, targets).backward()
    y = _google_smoothing(targets, 5, 0.1).double()
    p = tempered_softmax(logits.detach(), t2, num_iters=60)
    assert (p == 0).any() == (t2 < 1)  # the finite-support case has exact zeros, where both give 0
    delta_forget = (p - y) * p.pow(t2 - t1)
    escorts = p.pow(t2) / p.pow(t2).sum(-1, keepdim=True)
    expected = delta_forget - escorts * delta_forget.sum(-1, keepdim=True)
    np.testing.assert_allclose(logits.grad.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_tempered_softmax_gradcheck():
    logits, _ = _logits_targets(n=3, c=4)
    for t in (0.6, 1.5):
        x = logits.double().requires_grad_()
        assert torch.autograd.gradcheck(lambda z, t=t: tempered_softmax(z, t, num_iters=80), (x,))


def test_taylor_ce_tends_to_cross_entropy_with_order():
    logits, targets = _logits_targets()
    ce = F.cross_entropy(logits, targets).item()
    errors = [abs(create_loss("taylor_ce", n=n)(logits, targets).item() - ce) for n in (2, 6, 30)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    np.testing.assert_allclose(taylor_softmax(logits, n=30).numpy(), logits.softmax(1).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        create_loss("taylor_ce", n=3)


def test_symmetric_ce_is_alpha_ce_plus_beta_rce():
    logits, targets = _logits_targets()
    p = logits.softmax(1)
    p_y = p[torch.arange(6), targets]
    rce = -math.log(1e-4) * (1 - p_y)  # p_y * log(1) + sum_{k != y} p_k * log(1e-4)
    expected = (0.3 * F.cross_entropy(logits, targets, reduction="none") + 2.0 * rce).mean().item()
    assert create_loss("symmetric_ce", alpha=0.3, beta=2.0)(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_focal_cosine_by_formula():
    logits, targets = _logits_targets()
    one_hot = F.one_hot(targets, 5).float()
    cosine = 1 - (logits * one_hot).sum(1) / logits.norm(dim=1)
    ce = F.cross_entropy(logits / logits.norm(dim=1, keepdim=True), targets, reduction="none")
    focal = 2.0 * (1 - torch.exp(-ce)) ** 3 * ce
    expected = (cosine + 0.5 * focal).mean().item()
    loss = create_loss("focal_cosine", alpha=2.0, gamma=3.0, xent=0.5)
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_nce_rce_is_alpha_nce_plus_beta_rce():
    logits, targets = _logits_targets()
    log_p = logits.log_softmax(1)
    nce = log_p[torch.arange(6), targets] / log_p.sum(1)
    rce = -math.log(1e-4) * (1 - log_p.exp()[torch.arange(6), targets])
    expected = (3.0 * nce + 0.2 * rce).mean().item()
    assert create_loss("nce_rce", alpha=3.0, beta=0.2)(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    assert ((nce >= 0) & (nce <= 1)).all()  # normalised: in [0, 1]


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_reductions(name):
    logits, targets = _logits_targets()
    per_sample = create_loss(name, reduction="none")(logits, targets)
    assert per_sample.shape == (6,)
    assert create_loss(name)(logits, targets).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert create_loss(name, reduction="sum")(logits, targets).item() == pytest.approx(
        per_sample.sum().item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="reduction"):
        create_loss(name, reduction="avg")


@pytest.mark.parametrize("name", CLASSIFICATION)
@pytest.mark.parametrize(
    "targets",
    [torch.zeros(6, 4), torch.zeros(5, dtype=torch.int64), torch.zeros(6), torch.zeros(6, 5, dtype=torch.int64)],
    ids=["float (6, 4)", "int (5,)", "float (6,)", "int (6, 5)"],
)
def test_classification_bad_targets(name, targets):
    logits, _ = _logits_targets()
    with pytest.raises(ValueError, match=r"targets must be int64 \(6,\) or float \(6, 5\) for logits \(6, 5\)"):
        create_loss(name)(logits, targets)
