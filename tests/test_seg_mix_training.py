"""Segmentation batch mixes and class-balanced sampling inside a real training run: a tiny demo fold trains with
CutMix / copy-paste and oversampling, the sampler's draws follow the weights, and a resumed run gives the same
weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kitlib import engine, train
from kitlib.formats import class_presence, load_competition
from kitlib.runtime import WeightedShardSampler
from tests.test_train import TINY, demo_exp, train_config  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


def test_weighted_sampler_draws_follow_the_weights_and_the_epoch():
    weights = np.r_[np.full(10, 4.0), np.full(90, 1.0)]  # 10 rare rows weigh 4: 40 / 130 of the draws
    sampler = WeightedShardSampler(weights, seed=7)
    draws = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    share = np.mean(np.asarray(draws) < 10)
    assert abs(share - 40 / 130) < 0.02
    sampler.set_epoch(3)
    again = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == again and len(again) == 100
    ranks = [list(WeightedShardSampler(weights, r, 2, seed=7)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    for bad in ([-1.0, 1.0], [0.0, 0.0], [[1.0]]):
        with pytest.raises(ValueError, match="sampling weights"):
            WeightedShardSampler(bad)


def _config(fixture: dict, exp: str, **overrides):
    """10_train's config of a new experiment ``exp`` with the ``demo_exp`` fixture's folds."""
    root = Path(fixture["artifacts_root"])
    (root / exp).mkdir(parents=True, exist_ok=True)
    shutil.copy(root / fixture["exp"] / "folds.csv", root / exp / "folds.csv")
    settings = {**TINY, "data_dir": fixture["data_dir"], "artifacts_root": fixture["artifacts_root"], **overrides}
    return train_config("demo", exp=exp, **settings)


def test_sample_weights_mark_the_images_of_the_classes(demo_exp):  # noqa: F811
    cfg = _config(demo_exp, "w", oversample_classes=["Dots"], oversample_factor=3.0)
    table = load_competition(cfg.preset, demo_exp["data_dir"])
    weights = train.sample_weights(cfg, table)
    dots = class_presence(table, cfg.preset)[:, 1]
    assert 0 < dots.sum() < len(dots) and np.array_equal(weights, np.where(dots, 3.0, 1.0))
    assert train.sample_weights(cfg.replace(oversample_factor=1.0), table) is None


@pytest.mark.parametrize("mix", ["cutmix", "copy_paste"])
def test_a_mixed_oversampled_fold_trains_and_resumes(demo_exp, mix, monkeypatch):  # noqa: F811
    """Every training batch goes through the mix (prob 1), losses stay finite, and a run killed after epoch 1
    resumes to the weights of an uninterrupted one."""
    calls = []
    real = engine.SegmentationMix.__call__

    def counted(self, images, masks):
        calls.append(self.kind)
        return real(self, images, masks)

    monkeypatch.setattr(engine.SegmentationMix, "__call__", counted)
    settings = dict(mix=mix, mix_prob=1.0, mix_classes=["Dots", "Blob"], oversample_classes=["Dots"],
                    oversample_factor=2.0, epochs=2)  # fmt: skip
    whole = train.train_fold(_config(demo_exp, f"{mix}_a", **settings))
    assert calls and set(calls) == {mix}
    assert np.isfinite(pd.read_csv(Path(whole["fold_dir"]) / "history.csv")["train_loss"]).all()
    cfg = _config(demo_exp, f"{mix}_b", **settings)
    train.train_fold(cfg, stop_after_epoch=0)
    train.train_fold(cfg)
    a = torch.load(Path(whole["fold_dir"]) / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(cfg.fold_dir / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
