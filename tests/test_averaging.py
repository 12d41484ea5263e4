"""Optimisers from timm, the added schedules (SGDR restarts, plateau), and weight averaging (SWA over the last epochs,
the mean of the top-k epochs) with BatchNorm recomputed, through fit and its resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kitlib import engine, optim, runtime
from kitlib.averaging import WeightAverage, recompute_bn
from kitlib.losses import create_loss
from kitlib.stages import TrainConfig
from tests.test_engine import _loaders, _TinySeg


@pytest.fixture(autouse=True)
def _toy_save_model(monkeypatch):
    """The toy model has no create_model config: skip save_model's rebuild check."""
    monkeypatch.setattr("kitlib.models._check_config_builds", lambda config, state_dict: None)


# ------------------------------------------------------------------------------------------------ optimisers


def test_make_optimizer_takes_timm_names_and_keeps_the_groups():
    model = _TinySeg()
    adamw = optim.make_optimizer(model, 1e-4, 1e-3, 0.01)
    assert type(adamw) is torch.optim.AdamW
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in adamw.param_groups] == [
        ("encoder", 1e-4, 0.01), ("encoder_no_decay", 1e-4, 0.0), ("decoder", 1e-3, 0.01),
        ("decoder_no_decay", 1e-3, 0.0)]  # fmt: skip
    sgd = optim.make_optimizer(model, 1e-4, 1e-3, 0.01, "sgd", momentum=0.8)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    look = optim.make_optimizer(model, 1e-4, 1e-3, 0.0, "lookahead_radam")
    assert type(look).__name__ == "Lookahead" and look.param_groups[0]["lr"] == 1e-4
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamww'; close matches: \['adamw'"):
        optim.make_optimizer(model, 1e-4, 1e-3, 0.0, "adamww")


def test_cosine_restarts_by_hand():
    """SGDR: 4-step first cycle, each cycle twice as long, floor 0.1 x peak: back at the peak at steps 4 and 12."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.make_scheduler(opt, "cosine_restarts", 20, restart_steps=4, restart_mult=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    def at(t, length):
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / length))

    expected = [at(t, 4) for t in range(4)] + [at(t, 8) for t in range(8)] + [at(t, 16) for t in range(2)]
    assert lrs == pytest.approx(expected)
    with pytest.raises(ValueError, match="restart_steps >= 1"):
        optim.make_scheduler(opt, "cosine_restarts", 20, restart_steps=0)


def test_cosine_warmup_restarts_by_hand():
    """CosineAnnealingWarmupRestarts (Dacon building): first cycle 5 steps with a 2-step warmup from the floor 0.1,
    later cycles (5 - 2) x 2 + 2 = 8 steps, peaks 1, 0.5, 0.25."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = optim.make_scheduler(opt, "cosine_warmup_restarts", 30, warmup_steps=2, restart_steps=5, restart_mult=2,
                                 restart_gamma=0.5, min_lr_ratio=0.1)  # fmt: skip
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        sched.step()

    def cycle(peak, length):
        warm = [0.1 + (peak - 0.1) * t / 2 for t in range(2)]
        return warm + [0.1 + (peak - 0.1) * 0.5 * (1 + math.cos(math.pi * t / (length - 2))) for t in range(length - 2)]

    assert lrs == pytest.approx(cycle(1.0, 5) + cycle(0.5, 8) + cycle(0.25, 8)[:1])
    assert max(lrs[5:13]) == pytest.approx(0.5)  # the second cycle's peak, after its warmup
    for bad in (dict(warmup_steps=5, restart_steps=5), dict(warmup_steps=1, restart_steps=5, restart_gamma=0.0)):
        with pytest.raises(ValueError, match="cosine_warmup_restarts needs"):
            optim.make_scheduler(opt, "cosine_warmup_restarts", 30, **bad)


def test_plateau_steps_once_per_epoch_on_the_score():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.make_scheduler(opt, "plateau", 10, plateau_mode="max", plateau_factor=0.5, plateau_patience=1)
    assert optim.steps_per_epoch_only(sched)
    for score in (0.5, 0.6, 0.6, 0.6):  # improves, then two flat epochs: patience 1 -> halved once
        sched.step(score)
    assert opt.param_groups[0]["lr"] == 0.5
    assert not optim.steps_per_epoch_only(optim.make_scheduler(opt, "cosine", 10))


# ------------------------------------------------------------------------------------------------ averaging


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_swa_equals_the_manual_average_and_bn_is_recomputed(tmp_path):
    model = _BNNet()
    average = WeightAverage(model, tmp_path, n_epochs=4, swa_epochs=2)
    weights = []
    for epoch in range(4):
        with torch.no_grad():
            model.conv.weight.fill_(float(epoch))
        weights.append(model.conv.weight.clone())
        average.after_epoch(model, epoch, score=0.0)
    averaged = average.averaged(model)
    torch.testing.assert_close(averaged.conv.weight, (weights[2] + weights[3]) / 2)  # the last two epochs
    images = torch.randn(6, 3, 4, 4)
    batches = [{"image": images[:3]}, {"image": images[3:]}]
    assert recompute_bn(averaged, batches, torch.device("cpu")) == 1
    features = averaged.conv(images)
    torch.testing.assert_close(averaged.bn.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert averaged.bn.momentum == 0.1 and averaged.training  # momentum and mode restored


def test_top_k_keeps_the_best_snapshots_and_averages_them(tmp_path):
    model = _BNNet()
    average = WeightAverage(model, tmp_path, n_epochs=5, top_k=2, minimise=True)
    for epoch, score in enumerate([0.5, 0.2, 0.9, 0.1, float("nan")]):
        with torch.no_grad():
            model.conv.weight.fill_(float(epoch))
        average.after_epoch(model, epoch, score)
    assert average.kept == [(0.1, 3), (0.2, 1)]
    assert sorted(p.name for p in (tmp_path / "topk").iterdir()) == ["epoch1.pt", "epoch3.pt"]
    assert average.averaged(model).conv.weight.unique().tolist() == [2.0]  # (3 + 1) / 2
    restored = WeightAverage(model, tmp_path, n_epochs=5, top_k=2, minimise=True)
    restored.load_state_dict(average.state_dict())
    assert restored.kept == average.kept
    with pytest.raises(ValueError, match="either the last swa_epochs or the top_k"):
        WeightAverage(model, tmp_path, n_epochs=5, swa_epochs=1, top_k=1)


def _fit_swa(tmp_path, **kwargs):
    torch.manual_seed(0)
    model = _TinySeg()
    train, valid = _loaders()
    optimizer = optim.make_optimizer(model, 1e-2, 5e-2, 0.0)
    scheduler = optim.make_scheduler(optimizer, "onecycle", 4 * len(train))
    cfg = TrainConfig.from_notebook(preset="masks", epochs=4, monitor="", seed=0, swa_epochs=2)
    loss = create_loss("bce", mode="binary")
    result = engine.fit(model, train, valid, loss, optimizer, cfg, tmp_path, {"arch": "toy"}, torch.device("cpu"),
                        scheduler=scheduler, **kwargs)  # fmt: skip
    return result


def test_fit_with_swa_writes_the_averaged_weights_as_best_and_resumes_to_them(tmp_path):
    full = _fit_swa(tmp_path / "full")
    assert full.averaged["method"] == "swa over the last 2 epochs" and "valid_dice" in full.averaged
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert best["averaged"] == "swa over the last 2 epochs" and best["epoch"] == -1
    assert (tmp_path / "full" / "best_epoch.pt").is_file()
    _fit_swa(tmp_path / "resumed", stop_after_epoch=2)  # killed after epoch 2: one epoch of the SWA taken
    assert not (tmp_path / "resumed" / "best_epoch.pt").exists()
    _fit_swa(tmp_path / "resumed")
    again = torch.load(tmp_path / "resumed" / "best.pt", weights_only=True)
    for key, value in best["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


def test_train_config_checks_the_averaging_and_optimizer_parameters():
    with pytest.raises(ValueError, match="average either the last swa_epochs or the average_top_k"):
        TrainConfig.from_notebook(swa_epochs=2, average_top_k=2)
    with pytest.raises(ValueError, match=r">= average_top_k \(epochs not validated have no score\), got 2 and 3"):
        TrainConfig.from_notebook(valid_last=2, average_top_k=3)  # the mean of the top 3 would hold only 2 epochs
    assert TrainConfig.from_notebook(valid_last=3, average_top_k=3).average_top_k == 3
    with pytest.raises(ValueError, match="cannot average 9 epochs of a 8-epoch run"):
        TrainConfig.from_notebook(swa_epochs=9)
    with pytest.raises(ValueError, match="unknown optimizer 'adamww'"):
        TrainConfig.from_notebook(optimizer="adamww")
    cfg = TrainConfig.from_notebook(scheduler="plateau", monitor="valid_loss")
    assert cfg.minimise and cfg.monitor_column == "valid_loss"
    assert runtime.resolve_device("cpu").type == "cpu"
