"""Co-teaching (``kitlib.coteach``): R(T) by hand; the images with corrupted targets, which the other network finds
hard, get exactly zero gradient (classification, segmentation with a classification head); the eval-mode outputs
("a", "b", "mean"); one optimiser over both networks' groups; a co-teaching fold that trains, resumes to the same
weights, writes its OOF from both networks and loads for inference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kitlib import engine, train
from kitlib.coteach import CoTeachingLoss, CoTeachingModel, forget_rate, merge_param_groups
from kitlib.inference import load_fold_models
from kitlib.losses import create_loss, create_recipe
from kitlib.models import create_classifier, load_model, param_groups
from kitlib.optim import make_optimizer
from kitlib.stages import TrainConfig
from tests.test_classification_training import _config, cassava_exp  # noqa: F401 (the fixture)
from tests.test_train import _config as _seg_config
from tests.test_train import demo_exp  # noqa: F401 (the fixture)

COTEACH = dict(coteach=True, coteach_tau=0.25, coteach_epochs=1)


# ------------------------------------------------------------------------------------------------ the schedule


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.0), (1, 0.06), (2, 0.12), (3, 0.18), (4, 0.24), (5, 0.30), (6, 0.30), (20, 0.30)],
)
def test_forget_rate_by_hand(epoch, expected):
    """R(T) = 1 - min(T / T_k * tau, tau) with tau 0.3, T_k 5: the forget rate 0.06 per epoch up to 0.3."""
    assert forget_rate(epoch, 0.3, 5) == pytest.approx(expected)
    loss = CoTeachingLoss(nn.CrossEntropyLoss(), 0.3, 5)
    loss.set_epoch(epoch)
    assert loss.forget_rate == pytest.approx(expected)
    # images kept of a batch of 10: floor(R(T) x 10)
    assert loss.keep_count(10) == {0: 10, 1: 9, 2: 8, 3: 8, 4: 7}.get(epoch, 7)


def test_forget_rate_checks_and_keeps_one_image():
    with pytest.raises(ValueError, match="tau"):
        CoTeachingLoss(nn.CrossEntropyLoss(), 1.0, 5)
    with pytest.raises(ValueError, match="T_k"):
        CoTeachingLoss(nn.CrossEntropyLoss(), 0.2, 0)
    loss = CoTeachingLoss(nn.CrossEntropyLoss(), 0.9, 1)
    loss.set_epoch(3)
    assert loss.keep_count(1) == 1 and loss.keep_count(4) == 1 and loss.keep_count(20) == 2


# ------------------------------------------------------------------------------------------------ the selection


def _confident(labels: list[int], classes: int, scale: float = 6.0) -> torch.Tensor:
    """Logits (B, C) that put most probability on ``labels``, as leaf tensors that collect gradients."""
    logits = torch.full((len(labels), classes), -scale / 2)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = scale / 2
    return logits.requires_grad_(True)


def test_corrupted_labels_get_no_gradient_from_the_other_networks_selection():
    """8 images, targets of images 6 and 7 corrupted: network a predicts their true class (a high loss under a), so
    b is not updated on them; network b finds images 4 and 5 hard, so a is not updated on those. Their gradient is
    exactly zero, the others' is not."""
    true = [0, 1, 2, 3, 0, 1, 2, 3]
    target = torch.tensor([0, 1, 2, 3, 0, 1, 0, 1])  # 6 and 7 relabelled
    under_a = [int(t) for t in target[:6]] + true[
        6:
    ]  # a predicts the given labels except for 6 and 7 (their true class)
    under_b = [int(t) for t in target]
    under_b[4], under_b[5] = 2, 3  # b gets 4 and 5 wrong
    out_a, out_b = _confident([int(t) for t in under_a], 4), _confident(under_b, 4)
    loss_fn = CoTeachingLoss(nn.CrossEntropyLoss(), tau=0.25, t_k=2)
    loss_fn.set_epoch(2)  # forget rate 0.25: 6 of 8 kept
    loss = engine.compute_loss(loss_fn, {"a": out_a, "b": out_b}, target)
    loss.backward()
    grad_a, grad_b = out_a.grad.abs().sum(1), out_b.grad.abs().sum(1)
    assert (grad_b[6:] == 0).all() and (grad_b[:6] > 0).all()  # b learns from what a keeps
    assert (grad_a[4:6] == 0).all() and (grad_a[[0, 1, 2, 3, 6, 7]] > 0).all()  # a from what b keeps
    # the loss is each network's loss on the kept images, summed
    kept_by_b, kept_by_a = [0, 1, 2, 3, 6, 7], [0, 1, 2, 3, 4, 5]
    ce = nn.CrossEntropyLoss()
    want = ce(out_a[kept_by_b], target[kept_by_b]) + ce(out_b[kept_by_a], target[kept_by_a])
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert loss_fn.last_values["forget_rate"] == 0.25
    # epoch 0 forgets nothing: every image updates both networks
    out_a.grad, out_b.grad = None, None
    loss_fn.set_epoch(0)
    engine.compute_loss(loss_fn, {"a": out_a, "b": out_b}, target).backward()
    assert (out_a.grad.abs().sum(1) > 0).all() and (out_b.grad.abs().sum(1) > 0).all()


def test_segmentation_selects_per_image_with_a_classification_head():
    """clouds_1st (mask BCE + Dice, a head's BCE: a SegClsLoss) per image: the two images whose masks were replaced
    by their inverse, far from what both networks predict, give both networks' mask and head logits zero gradient."""
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(6, 4, 16, 16, generator=gen) > 0.5).float()
    masks[:, 3] = 0  # one class absent everywhere (ignore_negative)
    corrupted = masks.clone()
    corrupted[[1, 4]] = 1 - corrupted[[1, 4]]

    def outputs(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        mask_logits = (masks * 8 - 4 + noise * torch.randn(masks.shape, generator=gen)).requires_grad_(True)
        cls_logits = (masks.amax((2, 3)) * 8 - 4).requires_grad_(True)
        return mask_logits, cls_logits

    out_a, out_b = outputs(0.5), outputs(1.0)
    loss_fn = CoTeachingLoss(create_recipe("clouds_1st"), tau=0.4, t_k=1)
    loss_fn.set_epoch(1)  # keep floor(0.6 x 6) = 3 of 6
    assert loss_fn.keep_count(6) == 3
    loss = engine.compute_loss(loss_fn, {"a": out_a, "b": out_b}, corrupted)
    loss.backward()
    for mask_logits, cls_logits in (out_a, out_b):
        per_image = mask_logits.grad.abs().sum((1, 2, 3)) + cls_logits.grad.abs().sum(1)
        assert (per_image[[1, 4]] == 0).all()
        assert int((per_image > 0).sum()) == 3


def test_soft_targets_of_a_batch_mix_are_selected_too():
    """A mix's soft targets (B, C) are sliced with the logits; the update is the base loss on the kept rows."""
    base = create_loss("ce")
    target = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    out_a, out_b = _confident([0, 1, 0, 1], 3), _confident([0, 1, 0, 1], 3)
    loss_fn = CoTeachingLoss(base, tau=0.25, t_k=1)
    loss_fn.set_epoch(1)
    engine.compute_loss(loss_fn, {"a": out_a, "b": out_b}, target).backward()
    assert (out_a.grad[3] == 0).all() and (out_b.grad[3] == 0).all()  # row 3 (class 2) is the hard one


# ------------------------------------------------------------------------------------------------ the model


def _pair(predict: str = "mean") -> CoTeachingModel:
    torch.manual_seed(0)
    nets = [create_classifier("test_resnet.r160_in1k", num_classes=3) for _ in range(2)]
    return CoTeachingModel(*nets, predict=predict)


def test_eval_outputs_a_b_and_the_mean_of_the_logits():
    model = _pair().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model.net_a(x), model.net_b(x)
        assert not torch.equal(a, b)  # different initial weights
        torch.testing.assert_close(model(x), (a + b) / 2)
        model.predict = "a"
        assert torch.equal(model(x), a)
        model.predict = "b"
        assert torch.equal(model(x), b)
    out = model.train()(x)
    assert set(out) == {"a", "b"} and out["a"].shape == (2, 3)
    with pytest.raises(ValueError, match="predict"):
        CoTeachingModel(nn.Linear(1, 1), nn.Linear(1, 1), predict="max")


def test_one_optimiser_keeps_both_networks_learning_rates():
    model = _pair()
    groups = param_groups(model, 1e-4, 1e-3, 0.01)
    single = param_groups(model.net_a, 1e-4, 1e-3, 0.01)
    assert [g["name"] for g in groups] == [g["name"] for g in single]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    head = {id(p) for p in model.net_b.get_classifier().parameters()}
    assert all(g["lr"] == 1e-3 for g in groups if head & {id(p) for p in g["params"]})
    optimizer = make_optimizer(model, 1e-4, 1e-3, 0.01)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(ids)
    with pytest.raises(ValueError, match="differs"):
        merge_param_groups([single, [{**single[0], "lr": 1.0}]])


# ------------------------------------------------------------------------------------------------ the config


def test_config_checks_and_run_id(cassava_exp):  # noqa: F811
    plain = _config(cassava_exp, "cfg_plain", epochs=3)
    assert plain.run_id() == _config(cassava_exp, "cfg_plain", epochs=3, coteach_tau=0.4).run_id()  # off: ignored
    on = _config(cassava_exp, "cfg_plain", epochs=3, coteach=True, coteach_epochs=2)
    assert on.run_id() != plain.run_id()
    for other in (dict(coteach_tau=0.3), dict(coteach_predict="a")):  # another forget rate; another OOF
        assert on.run_id() != _config(cassava_exp, "cfg_plain", epochs=3, coteach=True, coteach_epochs=2,
                                      **other).run_id()  # fmt: skip
    with pytest.raises(ValueError, match="coteach_epochs"):  # the default T_k 5 > 3 epochs
        _config(cassava_exp, "cfg_plain", epochs=3, coteach=True)
    for bad, match in ((dict(coteach_tau=1.0), "coteach_tau"), (dict(coteach_epochs=0), "coteach_epochs"),
                       (dict(coteach_predict="max"), "coteach_predict")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _config(cassava_exp, "cfg_plain", epochs=3, coteach=True, **{"coteach_epochs": 2, **bad})


# ------------------------------------------------------------------------------------------------ a fold


def test_a_coteaching_fold_trains_resumes_and_predicts_with_both_networks(cassava_exp):  # noqa: F811
    """3 epochs (forget rate 0, 0.25, 0.25): history columns; stopping after epoch 0 and resuming ends with the same
    weights of both networks; best.pt holds both and rebuilds; the OOF is the softmax of the mean of the logits;
    inference loads the fold."""
    kwargs = dict(epochs=3, **COTEACH)
    whole = _config(cassava_exp, "co_whole", **kwargs)
    out = train.train_fold(whole)
    history = pd.read_csv(whole.fold_dir / "history.csv")
    assert history["train_forget_rate"].tolist() == [0.0, 0.25, 0.25]
    assert np.allclose(history["train_loss"], history["train_loss_a"] + history["train_loss_b"], rtol=1e-5)
    resumed = _config(cassava_exp, "co_resumed", **kwargs)
    assert train.train_fold(resumed, stop_after_epoch=0)["scores"] is None
    train.train_fold(resumed)
    a = torch.load(whole.fold_dir / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed.fold_dir / "last.pt", weights_only=True)["state_dict"]
    assert any(k.startswith("net_b.") for k in a) and a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    hist_b = pd.read_csv(resumed.fold_dir / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns="time_s"), hist_b.drop(columns="time_s"), check_exact=True)

    model, ckpt = load_model(whole.fold_dir / "best.pt")
    assert isinstance(model, CoTeachingModel) and ckpt["model_config"]["coteach"] == {"predict": "mean"}
    valid = train.fold_tables(whole)[2]
    loader = train._loaders(whole, *train.fold_tables(whole), info=_single())[1]
    images = torch.cat([batch["image"] for batch in loader])
    with torch.no_grad():
        mean = (model.net_a(images) + model.net_b(images)) / 2
    oof = np.load(whole.fold_dir / "oof_probs.npy").astype(np.float32)
    assert oof.shape == (len(valid), 5)
    np.testing.assert_allclose(oof, mean.softmax(1).numpy(), atol=2e-3)  # float16 OOF
    assert math.isfinite(out["scores"]["accuracy"])
    members = load_fold_models(whole.exp_dir, [0], "cpu")
    assert isinstance(members[0].model, CoTeachingModel) and not members[0].model.training


def test_oof_of_network_a_alone(cassava_exp):  # noqa: F811
    """coteach_predict "a": the OOF is network a's softmax (another run: the predicted logits change the OOF)."""
    cfg = _config(cassava_exp, "co_a", epochs=1, coteach=True, coteach_epochs=1, coteach_predict="a")
    train.train_fold(cfg)
    model, _ = load_model(cfg.fold_dir / "best.pt")
    assert model.predict == "a"
    loader = train._loaders(cfg, *train.fold_tables(cfg), info=_single())[1]
    images = torch.cat([batch["image"] for batch in loader])
    with torch.no_grad():
        want = model.net_a(images).softmax(1).numpy()
    np.testing.assert_allclose(np.load(cfg.fold_dir / "oof_probs.npy").astype(np.float32), want, atol=2e-3)


def _single():
    from kitlib.runtime import dist_info

    return dist_info()


def test_plain_run_builds_one_network(cassava_exp):  # noqa: F811
    cfg = _config(cassava_exp, "plain_model", epochs=1)
    torch.manual_seed(cfg.seed)  # as train_fold seeds before building
    model, model_config = train.build_model(cfg)
    assert not isinstance(model, CoTeachingModel) and "coteach" not in model_config
    loss = train.build_loss(cfg, model)
    assert not isinstance(loss, CoTeachingLoss)
    co = _config(cassava_exp, "plain_model", epochs=1, coteach=True, coteach_epochs=1)
    torch.manual_seed(cfg.seed)
    pair, pair_config = train.build_model(co)
    assert isinstance(train.build_loss(co, pair), CoTeachingLoss)
    for name, value in model.state_dict().items():  # network a starts as the plain run's model
        assert torch.equal(value, pair.net_a.state_dict()[name]), name
    assert not all(torch.equal(v, pair.net_b.state_dict()[k]) for k, v in model.state_dict().items())
    assert isinstance(TrainConfig, type) and pair_config["coteach"] == {"predict": "mean"}


def test_segmentation_loss_factory_is_per_image():
    """A segmentation loss of the zoo (dice, batch-level over its input) ranks each image alone."""
    base = create_loss("dice", mode="binary")
    masks = torch.zeros(3, 1, 8, 8)
    masks[:, :, :4] = 1
    good = (masks * 10 - 5).requires_grad_(True)
    out_a = good.detach().clone()
    out_a[2] = -out_a[2]  # a gets image 2 wrong
    out_a.requires_grad_(True)
    loss_fn = CoTeachingLoss(base, tau=0.3, t_k=1)
    loss_fn.set_epoch(1)
    engine.compute_loss(loss_fn, {"a": out_a, "b": good}, masks).backward()
    assert (good.grad[2] == 0).all() and (good.grad[:2] != 0).any()


def test_a_segmentation_fold_with_a_classification_head(demo_exp):  # noqa: F811
    """The segmentation demo (Unet + classification head, clouds_1st: a SegClsLoss) trains with co-teaching; the
    OOF masks and head probabilities come from the mean of the two networks."""
    cfg = _seg_config(demo_exp, "co_seg", epochs=2, **COTEACH)
    train.train_fold(cfg)
    history = pd.read_csv(cfg.fold_dir / "history.csv")
    assert history["train_forget_rate"].tolist() == [0.0, 0.25] and np.isfinite(history["valid_loss"]).all()
    model, _ = load_model(cfg.fold_dir / "best.pt")
    assert isinstance(model, CoTeachingModel) and model.net_a.classification_head is not None
    assert np.load(cfg.fold_dir / "oof_cls_probs.npy").shape[1] == 4


def test_coteaching_with_ema_swa_and_a_batch_mix(cassava_exp):  # noqa: F811
    """The EMA and SWA average both networks (one module); MixUp's soft targets go through the selection."""
    cfg = _config(cassava_exp, "co_ema", epochs=2, ema_decay=0.9, swa_epochs=2, mix="mixup", mix_prob=1.0, **COTEACH)
    out = train.train_fold(cfg)
    model, ckpt = load_model(cfg.fold_dir / "best.pt")
    assert isinstance(model, CoTeachingModel) and ckpt["averaged"] and math.isfinite(out["scores"]["accuracy"])
    assert pd.read_csv(cfg.fold_dir / "history.csv")["train_forget_rate"].tolist() == [0.0, 0.25]
