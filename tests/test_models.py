"""kitlib.models: architectures x tiny encoders, checkpoints, lr groups (pretrained weights: test_pretrained.py).

Every model is tiny (timm's ``test_*`` models, 64x64 inputs) and every weights file is written by the test:
nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kitlib import models
from kitlib.models import create_classifier, create_model, load_model, param_groups, save_model

TINY = "tu-test_resnet.r160_in1k"  # timm's test ResNet: 5 stages, strides 2..32
TINY_STRIDE4 = "tu-test_convnext.r160_in1k"  # features start at stride 4 (ConvNeXt/Swin-like)
TINY_VIT = "tu-test_vit.r160_in1k"
TINY_TIMM = "test_resnet.r160_in1k"


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def images(n: int = 2, size: int = 64, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, encoder, size, kwargs",
    [
        ("Unet", TINY, 64, {}),
        ("unet++", TINY, 64, {}),
        ("FPN", TINY, 64, {}),
        ("DeepLabV3+", TINY, 64, {}),
        ("deeplabv3", TINY, 64, {}),
        ("UPerNet", TINY, 64, {"decoder_channels": 32}),
        ("Segformer", TINY, 64, {}),
        ("MAnet", TINY, 64, {"decoder_channels": (64, 32, 16, 16, 8)}),
        ("Linknet", TINY, 64, {}),
        ("PSPNet", TINY, 64, {}),
        ("PAN", TINY, 128, {}),  # PAN pools the stride-16 map three times: sides >= 128
        ("DPT", TINY_VIT, 64, {"decoder_intermediate_channels": (16, 32, 64, 64), "decoder_fusion_channels": 16}),
        ("unet", TINY_STRIDE4, 64, {}),
        ("upernet", TINY_STRIDE4, 64, {"decoder_channels": 32}),
        ("unet", "resnet18", 64, {"encoder_depth": 3, "decoder_channels": (32, 16, 8)}),
    ],
)
def test_arch_returns_mask_logits(arch, encoder, size, kwargs):
    model = create_model(arch, encoder, classes=3, **kwargs).eval()
    with torch.no_grad():
        logits = model(images(2, size))
    assert logits.shape == (2, 3, size, size)
    assert logits.dtype == torch.float32
    assert (logits < 0).any()  # raw logits: no sigmoid/softmax


@pytest.mark.parametrize("arch", ["unet++", "linknet"])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # smp 0.5 builds 0-channel convolutions
def test_stride4_encoders_with_unetplusplus_and_linknet(arch):
    """smp 0.6 skips the empty stride-2 feature of ConvNeXt-like encoders; smp 0.5 failed at the first forward, so
    the kit refuses them there."""
    if models._SMP_VERSION < (0, 6):
        with pytest.raises(ValueError, match="stride-2"):
            create_model(arch, TINY_STRIDE4, 1)
        return
    model = create_model(arch, TINY_STRIDE4, classes=2).eval()
    assert 0 in model.encoder.out_channels  # the placeholder is there, and smp copes with it
    with torch.no_grad():
        assert model(images(2, 64)).shape == (2, 2, 64, 64)


def test_aux_head_returns_mask_and_class_logits():
    model = create_model("unet", TINY, classes=4, aux_head=True, dropout=0.3).eval()
    with torch.no_grad():
        mask_logits, cls_logits = model(images())
    assert mask_logits.shape == (2, 4, 64, 64)
    assert cls_logits.shape == (2, 4)
    assert model.classification_head[2].p == 0.3  # pool, flatten, dropout, linear


@pytest.mark.parametrize(
    "call, error, fragments",
    [
        (lambda: create_model("unet3", TINY, 1), KeyError, ["unet3", "unetplusplus", "deeplabv3plus", "unet++"]),
        (lambda: create_model("unet", "tu-hrnet_w18x", 1), KeyError, ["tu-hrnet_w18'", "encoders in all"]),
        (lambda: create_model("unet", "resnet1800", 1), KeyError, ["'resnet18", "encoders in all"]),
        (lambda: create_model("unet", "convnext_tiny", 1), KeyError, ["'tu-convnext_tiny'"]),
        (lambda: create_model("unet", "tu-resnet18.bogus", 1), KeyError, ["bogus", "a1_in1k"]),
        (lambda: create_model("unet", "resnet18", 1, encoder_weights="foo"), ValueError, ["imagenet", "swsl"]),
        (lambda: create_model("unet", TINY, 1, activation="sigmoid"), ValueError, ["logits"]),
        (lambda: create_model("unet", TINY, 1, dropout=0.2), ValueError, ["aux_head"]),
        (lambda: create_model("unet", "resnet18", 1, decoder_chanels=(8,)), TypeError, ["decoder_channels"]),
        (lambda: create_model("unet++", "mit_b0", 1), ValueError, ["mit_b0"]),  # smp 0.5 and 0.6 refuse it
        (lambda: create_classifier("resnet5", 2), KeyError, ["'resnet50'", "timm.list_models"]),
        (lambda: create_classifier("resnet18.bogus", 2), KeyError, ["a1_in1k"]),
        (lambda: create_classifier("resnet18", 2, pretrained_weights="bogus"), ValueError, ["tv_in1k"]),
    ],
)
def test_bad_names_list_the_options(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"arch": "unet", "encoder_name": TINY, "classes": 3, "aux_head": True, "dropout": 0.1},
        {"arch": "segformer", "encoder_name": "mit_b0", "classes": 2, "encoder_weights": "imagenet"},  # not on meta
    ],
)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, config):
    model = create_model(**{**config, "encoder_weights": None})  # the record keeps "imagenet"; nothing downloads
    model(images())  # train-mode forward: BatchNorm running statistics move away from their init
    model.eval()
    path = save_model(tmp_path / "fold0" / "model.pt", model, config, extra={"epoch": 7, "score": np.float32(0.5)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left behind
    loaded, checkpoint = load_model(path)
    assert not loaded.training
    assert checkpoint["model_config"] == config and checkpoint["epoch"] == 7 and checkpoint["score"] == 0.5
    x = images()
    with torch.no_grad():
        expected, actual = model(x), loaded(x)
    if not config.get("aux_head"):
        expected, actual = (expected,), (actual,)
    for a, b in zip(expected, actual, strict=True):
        assert torch.equal(a, b)


def test_save_load_classifier(tmp_path):
    config = {"model_name": TINY_TIMM, "num_classes": 5, "drop_rate": 0.2}
    model = create_classifier(**config).eval()
    loaded, _ = load_model(save_model(tmp_path / "model.pt", model, config))
    with torch.no_grad():
        assert torch.equal(model(images()), loaded(images()))


def test_save_model_refuses_a_config_that_does_not_rebuild_the_model(tmp_path):
    model = create_model("unet", TINY, 3)
    with pytest.raises(ValueError, match="does not rebuild"):
        save_model(tmp_path / "model.pt", model, {"arch": "unet", "encoder_name": TINY, "classes": 4})
    with pytest.raises(ValueError, match="reserved"):
        save_model(tmp_path / "model.pt", model, {"arch": "unet", "encoder_name": TINY, "classes": 3}, {"kind": 1})
    with pytest.raises(TypeError, match="extra\\['fn'\\]"):
        save_model(tmp_path / "model.pt", model, {"arch": "unet", "encoder_name": TINY, "classes": 3}, {"fn": len})
    assert not list(tmp_path.iterdir())


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not torch")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_model(tmp_path / "garbage.pt")
    torch.save(create_model("unet", TINY, 1).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt.*model_config"):
        load_model(tmp_path / "bare.pt")


# --------------------------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------------------------


def _check_partition(model, groups):
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids))  # each parameter once
    assert set(ids) == {id(p) for p in model.parameters()}  # and all of them
    torch.optim.AdamW(groups)  # a valid optimiser argument (extra "name" keys are allowed)


def test_param_groups_segmentation():
    model = create_model("unet", TINY, 3, aux_head=True)
    groups = param_groups(model, encoder_lr=2.5e-5, decoder_lr=2.5e-4, weight_decay=0.01)
    _check_partition(model, groups)
    by_name = {g["name"]: g for g in groups}
    assert sorted(by_name) == ["decoder", "decoder_no_decay", "encoder", "encoder_no_decay"]
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        assert group["lr"] == (2.5e-5 if group["name"].startswith("encoder") else 2.5e-4)
        for p in group["params"]:
            assert names[id(p)].startswith("encoder.") == group["name"].startswith("encoder")
            assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 0.01)
    heads = [*model.classification_head.parameters(), *model.segmentation_head.parameters()]
    assert {id(p) for p in heads} <= {
        id(p) for p in by_name["decoder"]["params"] + by_name["decoder_no_decay"]["params"]
    }


@pytest.mark.parametrize("name", [TINY_TIMM, "test_vit.r160_in1k"])
def test_param_groups_classifier(name):
    model = create_classifier(name, 5)
    groups = param_groups(model, encoder_lr=1e-4, decoder_lr=1e-3, weight_decay=0.05)
    _check_partition(model, groups)
    head = {id(p) for p in model.get_classifier().parameters()}
    for group in groups:
        assert group["name"] in ("encoder", "encoder_no_decay", "head", "head_no_decay")
        in_head = {id(p) in head for p in group["params"]}
        assert in_head == {group["name"].startswith("head")}
        assert group["lr"] == (1e-3 if group["name"].startswith("head") else 1e-4)
    if name.startswith("test_vit"):  # timm's no_weight_decay(): pos_embed and cls_token are 3-D but not decayed
        no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
        assert id(model.pos_embed) in no_decay and id(model.cls_token) in no_decay


def test_param_groups_without_weight_decay_and_frozen_encoder():
    model = create_model("fpn", TINY, 1)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 1e-5, 1e-4, weight_decay=0.0)
    assert [g["name"] for g in groups] == ["decoder"]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    with pytest.raises(TypeError, match="smp model"):
        param_groups(torch.nn.Linear(2, 2), 1e-5, 1e-4, 0.0)


def test_module_exports():
    for name in models.__all__:
        assert hasattr(models, name)
