"""Classifier heads (multi-sample dropout, timm pooling, stochastic depth) and staged fine-tuning (``init_from``: a
model starts from another experiment's fold checkpoint, shapes and folds checked)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kitlib import train
from kitlib.folds import make_folds, save_folds
from kitlib.formats import load_competition
from kitlib.models import MultiSampleDropout, create_classifier, load_model, save_model
from kitlib.presets import PRESETS
from tests.test_train import _config, demo_exp, train_config  # noqa: F401  (demo_exp is a fixture)

# ------------------------------------------------------------------------------------------------ heads


def test_multi_sample_dropout_is_the_mean_of_the_samples():
    fc = nn.Linear(6, 3)
    head = MultiSampleDropout(fc, n_samples=4, p=0.5)
    x = torch.rand(5, 6)
    torch.manual_seed(0)
    out = head.train()(x)
    torch.manual_seed(0)
    expected = torch.stack([fc(nn.functional.dropout(x, 0.5, True)) for _ in range(4)]).mean(0)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, fc(x))  # the samples are real
    torch.testing.assert_close(head.eval()(x), fc(x))  # eval: one pass, no dropout
    with pytest.raises(ValueError, match="n_samples >= 2"):
        MultiSampleDropout(fc, 1, 0.5)


@pytest.mark.parametrize("name", ["test_resnet.r160_in1k", "test_efficientnet.r160_in1k", "test_convnext.r160_in1k"])
def test_classifier_heads_build_save_and_load(tmp_path, name):
    config = dict(model_name=name, num_classes=5, drop_rate=0.3, multi_sample_dropout=3, global_pool="avgmax",
                  drop_path_rate=0.2)  # fmt: skip
    model = create_classifier(**config)
    assert isinstance(model.get_classifier(), MultiSampleDropout) and model.get_classifier().p == 0.3
    assert model.drop_rate == 0.0  # the samples replace timm's single dropout
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and 0 < max(drop_paths) <= 0.2 + 1e-6  # timm scales the rate up with depth
    save_model(tmp_path / "m.pt", model, config)
    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    plain = create_classifier(name, 5)
    assert type(plain.get_classifier()) is nn.Linear
    pools = {m.pool_type for m in model.modules() if type(m).__name__ == "SelectAdaptivePool2d"}
    assert pools == {"avgmax"} and {m.pool_type for m in plain.modules() if hasattr(m, "pool_type")} == {"avg"}
    with pytest.raises(ValueError, match="needs a dropout rate"):
        create_classifier(name, 5, multi_sample_dropout=2)


def test_head_parameters_in_the_train_config():
    cfg = train_config("cassava", multi_sample_dropout=5, dropout=0.3, global_pool="catavgmax")
    assert cfg.head_kwargs == {"multi_sample_dropout": 5, "global_pool": "catavgmax"}
    assert train_config("cassava").head_kwargs == {}  # defaults leave model_config as it was
    cfg = train_config("cassava", model_name="test_resnet.r160_in1k", multi_sample_dropout=2, dropout=0.2,
                       encoder_weights="none")  # fmt: skip
    model, model_config = train.build_model(cfg)
    assert model_config["multi_sample_dropout"] == 2 and isinstance(model.get_classifier(), MultiSampleDropout)
    with pytest.raises(ValueError, match="head of a timm classifier"):
        train_config("demo", global_pool="max")
    with pytest.raises(ValueError, match="both as parameters and in model_kwargs"):
        train_config("cassava", drop_path_rate=0.1, model_kwargs={"drop_path_rate": 0.2})
    with pytest.raises(ValueError, match="needs dropout in"):
        train_config("cassava", multi_sample_dropout=4, dropout=0.0)


# ------------------------------------------------------------------------------------------------ init_from


@pytest.fixture(scope="module")
def source_exp(demo_exp):  # noqa: F811
    """Fold 0 of a 1-epoch experiment ``src`` to start from."""
    cfg = _config(demo_exp, "src", epochs=1)
    train.train_fold(cfg)
    return cfg


def test_init_from_loads_the_whole_source_model(demo_exp, source_exp):  # noqa: F811
    cfg = _config(demo_exp, "tuned", init_from="src", epochs=1, encoder_lr=1e-5)
    assert cfg.run_id() != _config(demo_exp, "tuned", epochs=1, encoder_lr=1e-5).run_id()
    _, train_df, valid_df = train.fold_tables(cfg)
    model, _ = train.build_model(cfg)
    assert train.init_model(cfg, model, valid_df) == source_exp.fold_dir / "best.pt"
    source = torch.load(source_exp.fold_dir / "best.pt", map_location="cpu", weights_only=True)["state_dict"]
    own = model.state_dict()
    assert own.keys() == source.keys() and all(torch.equal(own[k], source[k]) for k in own)
    out = train.train_fold(cfg)  # trains on from there
    assert (cfg.fold_dir / "done.json").is_file() and out["scores"] is not None


def test_init_from_refuses_what_would_not_fit(demo_exp, source_exp):  # noqa: F811
    cfg = _config(demo_exp, "wider", init_from="src", model_kwargs={"decoder_channels": [16, 16, 8, 8, 4]})
    valid_df = train.fold_tables(cfg)[2]
    with pytest.raises(ValueError, match=r"weights do not fit this model.*other shapes.*decoder"):
        train.init_model(cfg, train.build_model(cfg)[0], valid_df)
    with pytest.raises(FileNotFoundError, match=r"init_from 'nowhere'.*fold0/best.pt"):
        train.init_model(_config(demo_exp, "x", init_from="nowhere"), nn.Linear(1, 1), valid_df)
    with pytest.raises(ValueError, match="names this experiment"):
        _config(demo_exp, "src", init_from="src")


def test_init_from_refuses_a_source_whose_folds_would_leak(demo_exp, source_exp):  # noqa: F811
    """An experiment with other folds: the source's fold 0 trained on some of its held-out images."""
    root = source_exp.artifacts_dir
    data = source_exp.data_path
    folds = make_folds(load_competition(PRESETS["demo"], data), PRESETS["demo"], n_folds=3, seed=7)
    save_folds(folds, root / "other_split" / "folds.csv")
    cfg = _config(demo_exp, "other_split", init_from="src")
    valid_df = train.fold_tables(cfg)[2]
    with pytest.raises(ValueError, match=r"trained on \d+ of this fold's held-out images.*leak"):
        train.init_model(cfg, train.build_model(cfg)[0], valid_df)
