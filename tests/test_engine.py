"""The training loop: schedulers, accumulation, clipping, EMA, scores, NaN stop, checkpoints, OOF writing."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from kitlib import checkpoint, engine, optim, predictions, runtime, scoring
from kitlib._private import PhaseTimer
from kitlib.losses import create_loss, create_recipe
from kitlib.presets import PRESETS
from kitlib.stages import TrainConfig


class _Toy(Dataset):
    """Items like kitlib.data's: 8x8 images whose mask is the image's first channel > 0."""

    def __init__(self, n: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        self.masks = (self.images[:, :1] > 0).float()
        self.transform = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image_id": f"img{i:02d}", "image": self.images[i], "mask": self.masks[i]}


class _TinySeg(nn.Module):
    """Two 1x1 convolutions and a BatchNorm: enough to learn `channel 0 > 0`; an `encoder` for param_groups."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.encoder(x)


def _loaders(batch_size=4, n=12):
    train = runtime.make_loader(_Toy(n), batch_size, train=True, seed=0)
    valid = runtime.make_loader(_Toy(8, seed=1), batch_size, train=False)
    return train, valid


def _config(epochs: int, **overrides) -> TrainConfig:
    """A masks-preset run of ``epochs``: fp32, no EMA, best epoch on valid_dice, seed 0."""
    return TrainConfig.from_notebook(preset="masks", epochs=epochs, monitor="", seed=0, **overrides)


def _fit(tmp_path, epochs=3, monitor="", cfg_overrides=None, **kwargs):
    torch.manual_seed(0)
    model = _TinySeg()
    train, valid = _loaders()
    optimizer = optim.make_optimizer(model, 1e-2, 5e-2, 0.0)
    scheduler = optim.make_scheduler(optimizer, "onecycle", epochs * len(train))
    loss = create_loss("combo", terms={"bce": 1.0, "dice": 1.0}, mode="binary")
    cfg = _config(epochs).replace(monitor=monitor, **(cfg_overrides or {}))
    return model, engine.fit(
        model, train, valid, loss, optimizer, cfg, tmp_path, {"arch": "toy"}, torch.device("cpu"),
        scheduler=scheduler, **kwargs,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _toy_save_model(monkeypatch):
    """The toy model has no create_model config: skip save_model's rebuild check."""
    monkeypatch.setattr("kitlib.models._check_config_builds", lambda config, state_dict: None)


# ------------------------------------------------------------------------------------------------ schedules


def test_onecycle_peaks_at_each_group_lr_and_keeps_the_ratio():
    model = _TinySeg()
    opt = optim.make_optimizer(model, 1e-4, 1e-3, 0.01)
    sched = optim.make_scheduler(opt, "onecycle", total_steps=100, pct_start=0.3)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    names = [g["name"] for g in opt.param_groups]
    enc, dec = names.index("encoder"), names.index("decoder")
    assert lrs[:, enc].max() == pytest.approx(1e-4) and lrs[:, dec].max() == pytest.approx(1e-3)
    assert lrs[0, dec] == pytest.approx(1e-3 / 25)
    assert np.allclose(lrs[:, dec] / lrs[:, enc], 10.0)
    assert int(lrs[:, dec].argmax()) in (29, 30)


def test_cosine_with_warmup_hand_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.make_scheduler(opt, "cosine", total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3)
    assert lrs[2] == pytest.approx(1.0)  # warmup over: the peak, then cosine over 8 steps
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert optim.make_scheduler(opt, "constant", 10) is None
    with pytest.raises(ValueError, match="options"):
        optim.make_scheduler(opt, "step", 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_scheduler(opt, "cosine", 10, warmup_steps=10)


def test_resolve_amp():
    cpu = torch.device("cpu")
    assert runtime.resolve_amp("auto", cpu) is None and runtime.resolve_amp("off", cpu) is None
    assert runtime.resolve_amp("bf16", cpu) is torch.bfloat16  # explicit CPU autocast (benchmarks/bench_train.py)
    with pytest.raises(ValueError, match="CUDA"):
        runtime.resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="options"):
        runtime.resolve_amp("half", cpu)


# ------------------------------------------------------------------------------------------------ one epoch


def _grads_after(accumulate: int, batch_size: int) -> list[torch.Tensor]:
    """Gradients after the first optimiser step's backward passes (lr 0, so the weights do not move)."""
    torch.manual_seed(0)
    model = _Linear()  # no BatchNorm: accumulation is then exact
    ds = _Toy(8)
    loader = runtime.make_loader(ds, batch_size, train=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    grads = []
    opt.step = lambda: grads.append([p.grad.clone() for p in model.parameters()])  # capture before zero_grad
    loss = nn.BCEWithLogitsLoss()
    engine.train_one_epoch(model, loader, loss, opt, PRESETS["masks"], torch.device("cpu"), accumulate=accumulate)
    return grads


def test_gradient_accumulation_equals_a_bigger_batch():
    big = _grads_after(accumulate=1, batch_size=4)
    small = _grads_after(accumulate=2, batch_size=2)
    assert len(big) == len(small) == 2
    for a, b in zip(big, small, strict=True):
        for ga, gb in zip(a, b, strict=True):
            torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_gradient_norm():
    torch.manual_seed(0)
    model = _TinySeg()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    norms = []

    def step():
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())

    opt.step = step
    train, _ = _loaders()
    out = engine.train_one_epoch(
        model, train, nn.BCEWithLogitsLoss(), opt, PRESETS["masks"], torch.device("cpu"), clip_grad_norm=1e-3
    )
    assert max(norms) <= 1e-3 * 1.0001
    assert out["grad_norm"] > 1e-3  # the reported norm is the one before clipping


def test_ema_moves_towards_the_weights():
    torch.manual_seed(0)
    model = _TinySeg()
    ema = optim.make_ema(model, decay=0.5)
    before = [p.detach().clone() for p in ema.module.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train, _ = _loaders()
    engine.train_one_epoch(model, train, nn.BCEWithLogitsLoss(), opt, PRESETS["masks"], torch.device("cpu"), ema=ema)
    after = list(ema.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(after, model.parameters(), strict=True))
    assert int(ema.n_averaged) == len(train)  # one update per optimiser step
    with pytest.raises(ValueError, match="decay"):
        optim.make_ema(model, 1.0)


def test_segcls_loss_gets_the_head_logits():
    logits = torch.zeros(2, 4, 8, 8)
    cls_logits = torch.zeros(2, 4)
    masks = torch.zeros(2, 4, 8, 8)
    masks[0, 1, :2, :2] = 1
    loss = create_recipe("clouds_1st")
    value = engine.compute_loss(loss, (logits, cls_logits), masks)
    assert "cls" in loss.last_values and torch.isfinite(value)
    plain = create_loss("bce", mode="multilabel")
    assert engine.compute_loss(plain, (logits, cls_logits), masks) == pytest.approx(math.log(2), abs=1e-6)


# ------------------------------------------------------------------------------------------------ scores


def test_scorer_binary_hand_values():
    scorer = scoring.Scorer(PRESETS["masks"])
    logits = torch.full((2, 1, 2, 2), -5.0)
    logits[0, 0, 0, :] = 5.0  # image 0 predicts the top row
    masks = torch.zeros(2, 1, 2, 2)
    masks[0, 0, :, 0] = 1  # image 0 truth: left column; image 1: both empty
    scorer.update(logits > 0, masks)  # predictions: probability > 0.5
    result = scorer.result()
    assert result["dice"] == pytest.approx((2 * 1 / 4 + 1.0) / 2)
    assert result["pixel_error"] == pytest.approx(2 / 8)


def test_scorer_multiclass_and_classification():
    scorer = scoring.Scorer(PRESETS["coco"])
    logits = torch.zeros(1, PRESETS["coco"].num_classes, 1, 2)
    logits[0, 1, 0, 0] = 1.0
    logits[0, 0, 0, 1] = 1.0
    scorer.update(logits.argmax(1), torch.tensor([[[1, 2]]]))
    assert scorer.result()["pixel_accuracy"] == pytest.approx(0.5)
    acc = scoring.Scorer(PRESETS["cassava"])
    acc.update(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).argmax(1), torch.tensor([1, 1, 1]))
    assert acc.result()["accuracy"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------ fit


def test_fit_writes_checkpoints_and_history(tmp_path):
    _, result = _fit(tmp_path, epochs=3)
    assert list(result.history["epoch"]) == [0, 1, 2]
    assert {"train_loss", "train_bce", "train_dice", "valid_loss", "valid_dice", "valid_pixel_error"} <= set(
        result.history.columns
    )
    assert {"lr_encoder", "lr_decoder"} <= set(result.history.columns)
    history = pd.read_csv(tmp_path / "history.csv")
    pd.testing.assert_frame_equal(history, result.history, check_dtype=False)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch and best["score"] == pytest.approx(result.best_score)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["checkpoint"] == checkpoint.CHECKPOINT_KIND and last["epoch"] == 2 and last["finished"]
    assert {"optimizer", "scheduler", "rng", "history"} <= set(last)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_valid_last_validates_the_last_epochs_only_and_picks_best_among_them(tmp_path):
    timer = PhaseTimer()
    _, result = _fit(tmp_path / "last2", epochs=4, cfg_overrides={"valid_last": 2}, timer=timer)
    history = result.history
    assert history["valid_dice"].isna().tolist() == [True, True, False, False]
    assert history["valid_loss"].isna().tolist() == [True, True, False, False]
    assert result.best_epoch in (2, 3) and result.best_score == history["valid_dice"].max()
    assert torch.load(tmp_path / "last2" / "best.pt", weights_only=True)["epoch"] == result.best_epoch
    assert {"train_steps", "train_data", "validation", "checkpoints"} <= set(timer.seconds)
    _, every = _fit(tmp_path / "every", epochs=4)  # the recipe's valid_last (10) > epochs: every epoch, same training
    assert not every.history["valid_dice"].isna().any()
    pd.testing.assert_series_equal(every.history["train_loss"], history["train_loss"])
    _, stopping = _fit(tmp_path / "patience", epochs=4, cfg_overrides={"valid_last": 2, "patience": 10})
    assert not stopping.history["valid_dice"].isna().any()  # early stopping needs every epoch's score


def test_fit_resumes_to_the_same_weights(tmp_path):
    full_model, full = _fit(tmp_path / "full", epochs=4)
    _, first = _fit(tmp_path / "resumed", epochs=4, stop_after_epoch=1)
    assert len(first.history) == 2
    resumed_model, resumed = _fit(tmp_path / "resumed", epochs=4)  # a fresh process would do the same
    assert resumed.resumed_from == 2
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="time_s"), full.history.drop(columns="time_s"), check_exact=True
    )
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    again_model, again = _fit(tmp_path / "resumed", epochs=4)  # finished: nothing to do
    assert len(again.history) == 4 and again.resumed_from == 4


def _truncate(path, share=1 / 3):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])


def test_a_truncated_last_pt_resumes_from_the_previous_epoch(tmp_path, caplog):
    """Issue 15 item 9: a truncated last.pt (disk full, an interrupted copy) raised torch's "failed finding central
    directory" without the file's name. The previous epoch's state is kept beside it and the run resumes from there
    to the same weights."""
    full_model, full = _fit(tmp_path / "full", epochs=4)
    _fit(tmp_path / "cut", epochs=4, stop_after_epoch=1)
    _truncate(tmp_path / "cut" / "last.pt")
    with caplog.at_level("WARNING", logger="kitlib.checkpoint"):
        model, resumed = _fit(tmp_path / "cut", epochs=4)
    assert resumed.resumed_from == 1  # epoch 1's state was lost: epoch 0's resumed, epoch 1 trained again
    assert str(tmp_path / "cut" / "last.pt") in caplog.text and "last.prev.pt" in caplog.text
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="time_s"), full.history.drop(columns="time_s"), check_exact=True
    )
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_truncated_last_pt_without_a_previous_state_names_the_file(tmp_path):
    _fit(tmp_path, epochs=2, stop_after_epoch=0)
    _truncate(tmp_path / "last.pt")
    (tmp_path / "last.prev.pt").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "last.pt")) + ".*delete it to start the fold"):
        _fit(tmp_path, epochs=2)
    (tmp_path / "last.pt").unlink()  # as the message says; then a previous state that is truncated as well
    _fit(tmp_path, epochs=3, stop_after_epoch=1)
    _truncate(tmp_path / "last.pt")
    _truncate(tmp_path / "last.prev.pt", 0.5)
    with pytest.raises(ValueError, match=r"last.pt.*last.prev.pt is unreadable too.*delete"):
        _fit(tmp_path, epochs=3)


def test_fit_refuses_a_checkpoint_of_another_run(tmp_path):
    _fit(tmp_path, epochs=1, run_id="a")
    with pytest.raises(ValueError, match="another configuration"):
        _fit(tmp_path, epochs=2, run_id="b")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    class NanAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, logits, target):
            self.calls += 1
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
            return loss * float("nan") if self.calls > 3 else loss  # epoch 0 has 3 batches

    torch.manual_seed(0)
    model = _TinySeg()
    train, valid = _loaders()
    opt = optim.make_optimizer(model, 1e-2, 1e-2, 0.0)
    with pytest.raises(engine.NonFiniteLossError, match=r"epoch 1, batch 0: loss is nan \(images img"):
        engine.fit(model, train, valid, NanAfter(), opt, _config(3), tmp_path, {"arch": "toy"}, torch.device("cpu"))
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1


def test_monitor_must_be_a_history_column(tmp_path):
    with pytest.raises(ValueError, match="monitor 'valid_miou'"):
        _fit(tmp_path, epochs=1, monitor="valid_miou")


# ------------------------------------------------------------------------------------------------ predict


def test_predict_and_write_predictions(tmp_path):
    torch.manual_seed(0)
    model = _TinySeg().eval()
    ds = _Toy(10)
    loader = runtime.make_loader(ds, 4, train=False)
    ids = [f"img{i:02d}" for i in range(10)]
    batches = list(engine.predict(model, loader, torch.device("cpu"), out_size=(4, 4)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    probs = torch.cat([b[1] for b in batches])
    assert probs.shape == (10, 1, 4, 4) and 0 <= probs.min() and probs.max() <= 1
    assert model.training is False
    path = predictions.write_predictions(tmp_path / "oof.npy", iter(reversed(batches)), ids, dtype="uint8")
    written = np.load(path)
    assert written.dtype == np.uint8 and written.shape == (10, 1, 4, 4)
    np.testing.assert_array_equal(written, (probs * 255).round().to(torch.uint8).numpy())  # rows by id
    with pytest.raises(ValueError, match="2 rows were not predicted"):
        predictions.write_predictions(tmp_path / "part.npy", iter(batches[:2]), ids)
    assert not (tmp_path / "part.npy").exists()


def test_predict_tta_of_a_flip_equivariant_model_changes_nothing():
    torch.manual_seed(0)
    model = _TinySeg().eval()  # 1x1 convolutions commute with flips
    loader = runtime.make_loader(_Toy(4), 4, train=False)
    plain = next(engine.predict(model, loader, torch.device("cpu")))[1]
    d4 = next(engine.predict(model, loader, torch.device("cpu"), tta="d4"))[1]
    torch.testing.assert_close(plain, d4)
