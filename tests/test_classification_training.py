"""Classification folds trained end to end through 10_train's parameters (``TrainConfig.from_notebook`` +
``kitlib.train.train_fold``) on a tiny Cassava-layout dataset this module writes: every loss of the zoo with its own
keywords, every batch mix, the mix switched off for the last epochs, and a mixed run that resumes to the same
weights."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kitlib import engine, train
from kitlib.folds import make_folds, save_folds
from kitlib.formats import load_competition
from kitlib.mixes import BatchMix
from kitlib.presets import PRESETS
from kitlib.recipes import CLASSIFICATION_MIXES
from kitlib.stages import TrainConfig
from tests.test_robust_losses import CLASSIFICATION

#: A tiny timm classifier from scratch at 32x32, one epoch on the CPU.
TINY = dict(
    model_name="test_resnet.r160_in1k", encoder_weights="none", height=32, width=32, batch_size=8, epochs=1,
    device="cpu", num_workers=0, channels_last=False, augment="flips", warmup_epochs=0.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def cassava_exp(tmp_path_factory) -> dict:
    """30 PNG images (32x32, a colour per class plus noise) in the Cassava layout (``train.csv``: image_id,label;
    ``train_images/``) and 3 folds: data_dir and artifacts_root for ``_config``."""
    root = tmp_path_factory.mktemp("cassava_tiny")
    data = root / "data"
    (data / "train_images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (5, 3))
    rows = []
    for i in range(30):
        label = i % 5
        image = np.clip(palette[label] + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        assert cv2.imwrite(str(data / "train_images" / f"{i:04d}.png"), image)
        rows.append({"image_id": f"{i:04d}.png", "label": label})
    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    folds = make_folds(load_competition(PRESETS["cassava"], data), PRESETS["cassava"], n_folds=3, seed=0)
    save_folds(folds, root / "artifacts" / "folds.csv")
    return {"data_dir": str(data), "artifacts_root": str(root / "artifacts")}


def _config(cassava_exp: dict, exp: str, **overrides) -> TrainConfig:
    """10_train's config of the cassava preset for experiment ``exp`` (with the module's folds)."""
    root = Path(cassava_exp["artifacts_root"])
    (root / exp).mkdir(parents=True, exist_ok=True)
    (root / exp / "folds.csv").write_bytes((root / "folds.csv").read_bytes())
    return TrainConfig.from_notebook(preset="cassava", exp=exp, **cassava_exp, **{**TINY, **overrides})


#: (loss, loss_kwargs, mix): every loss with keywords of its own, every mix (mix_prob 1: every batch mixed, so the
#: losses train on soft targets).
FOLD_CASES = [
    ("ce", {"label_smoothing": 0.1, "smoothing_convention": "others", "weight": [1.0, 2.0, 1.0, 1.0, 0.5]}, "none"),
    ("focal_ce", {"gamma": 2.0, "weight": [1.0, 1.0, 2.0, 1.0, 1.0]}, "mixup"),
    ("bi_tempered", {"t1": 0.8, "t2": 1.4, "label_smoothing": 0.1}, "cutmix"),
    ("taylor_ce", {"n": 4, "smoothing": 0.2}, "fmix"),
    ("focal_cosine", {"gamma": 1.0, "xent": 0.2}, "mixup_cutmix"),
    ("symmetric_ce", {"alpha": 0.1, "beta": 1.0}, "cutmix"),
    ("nce_rce", {"alpha": 1.0, "beta": 1.0}, "fmix"),
]


def test_fold_cases_cover_every_loss_and_mix():
    assert sorted(name for name, _, _ in FOLD_CASES) == CLASSIFICATION
    assert {mix for _, _, mix in FOLD_CASES} == {"none", *CLASSIFICATION_MIXES}


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "loss_kwargs", "mix"), FOLD_CASES, ids=[c[0] for c in FOLD_CASES])
def test_each_loss_and_mix_trains_a_fold(cassava_exp, loss, loss_kwargs, mix):
    cfg = _config(cassava_exp, f"{loss}_{mix}", loss=loss, loss_kwargs=loss_kwargs, mix=mix, mix_prob=1.0)
    out = train.train_fold(cfg)
    history = pd.read_csv(cfg.fold_dir / "history.csv")
    assert len(history) == 1 and np.isfinite(history[["train_loss", "valid_loss"]].to_numpy()).all()
    assert 0.0 <= out["scores"]["accuracy"] <= 1.0
    saved = json.loads((cfg.fold_dir / "config.json").read_text())["params"]
    assert (saved["loss"], saved["loss_kwargs"], saved["mix"]) == (loss, loss_kwargs, mix)


@pytest.mark.slow
def test_the_mix_is_off_for_the_last_epochs_and_never_in_validation(cassava_exp, monkeypatch):
    seen = []
    original_train, original_eval = engine.train_one_epoch, engine.evaluate

    def train_one_epoch(*args, mix=None, epoch=0, **kwargs):
        seen.append((epoch, mix))
        return original_train(*args, mix=mix, epoch=epoch, **kwargs)

    def evaluate(model, loader, loss_fn, *args, **kwargs):
        labels = [batch["label"] for batch in loader]
        assert all(not t.is_floating_point() for t in labels)  # validation batches are never mixed
        return original_eval(model, loader, loss_fn, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(engine, "evaluate", evaluate)
    cfg = _config(cassava_exp, "mix_off", epochs=3, mix="cutmix", mix_prob=1.0, mix_off_epochs=1)
    train.train_fold(cfg)
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert [type(mix).__name__ for _, mix in seen] == ["BatchMix", "BatchMix", "NoneType"]
    assert seen[0][1].kind == "cutmix" and seen[0][1].prob == 1.0


@pytest.mark.slow
def test_a_mixed_run_resumes_to_the_same_weights(cassava_exp, monkeypatch):
    """Each epoch's mixes draw from the RNGs reseeded from (seed, epoch): stopping after epoch 0 and resuming ends
    where an uninterrupted run does."""
    mixed = []
    original = BatchMix.__call__

    def call(self, images, labels):
        out = original(self, images, labels)
        mixed.append(out[1].is_floating_point())
        return out

    monkeypatch.setattr(BatchMix, "__call__", call)
    kwargs = dict(epochs=3, mix="fmix", mix_prob=0.7, mix_alpha=0.5, loss="bi_tempered")
    whole = _config(cassava_exp, "mix_whole", **kwargs)
    train.train_fold(whole)
    resumed = _config(cassava_exp, "mix_resumed", **kwargs)
    assert train.train_fold(resumed, stop_after_epoch=0)["scores"] is None
    train.train_fold(resumed)
    half = len(mixed) // 2
    assert mixed[:half] == mixed[half:] and 0 < sum(mixed[:half]) < half  # the same batches mixed, not all of them
    a = torch.load(whole.fold_dir / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed.fold_dir / "last.pt", weights_only=True)["state_dict"]
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    hist_a, hist_b = (pd.read_csv(c.fold_dir / "history.csv").drop(columns="time_s") for c in (whole, resumed))
    pd.testing.assert_frame_equal(hist_a, hist_b, check_exact=True)
