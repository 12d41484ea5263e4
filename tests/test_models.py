"""kitlib.models: architectures x tiny encoders, offline weights from files and caches, checkpoints, lr groups.

Every model is tiny (timm's ``test_*`` models, 64x64 inputs) and every weights file is written by the test:
nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from kitlib import models
from kitlib.models import (
    OfflineWeightsError,
    create_classifier,
    create_model,
    load_encoder_weights,
    load_model,
    param_groups,
    read_state_dict,
    save_model,
)

REPO = Path(__file__).resolve().parents[1]
TINY = "tu-test_resnet.r160_in1k"  # timm's test ResNet: 5 stages, strides 2..32
TINY_STRIDE4 = "tu-test_convnext.r160_in1k"  # features start at stride 4 (ConvNeXt/Swin-like)
TINY_VIT = "tu-test_vit.r160_in1k"
TINY_TIMM = "test_resnet.r160_in1k"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(n: int = 2, size: int = 64, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def _same(a: dict, b: dict) -> bool:
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
        logits = model(_x(2, size))
    assert logits.shape == (2, 3, size, size)
    assert logits.dtype == torch.float32
    assert (logits < 0).any()  # raw logits: no sigmoid/softmax


def test_aux_head_returns_mask_and_class_logits():
    model = create_model("unet", TINY, classes=4, aux_head=True, dropout=0.3).eval()
    with torch.no_grad():
        mask_logits, cls_logits = model(_x())
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
        pytest.param(
            lambda: create_model("linknet", TINY_STRIDE4, 1),
            ValueError,
            ["stride-2", "Unet"],
            marks=pytest.mark.filterwarnings("ignore:Initializing zero-element tensors"),  # smp builds 0-ch convs
        ),
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
# Pretrained weights from local files and folders
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_encoder_state_dict(tmp_path, suffix):
    source = create_model("unet", TINY, 3)
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file(source.encoder.state_dict(), str(path))
    else:
        torch.save(source.encoder.state_dict(), path)
    model = create_model("fpn", TINY, 2, encoder_weights=str(path))  # another arch, same encoder
    assert _same(model.encoder.state_dict(), source.encoder.state_dict())
    assert not _same(model.encoder.state_dict(), create_model("fpn", TINY, 2).encoder.state_dict())


def test_encoder_weights_from_wrapped_full_model_and_timm_classifier(tmp_path, caplog):
    source = create_model("unet", TINY, 3, aux_head=True)
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "full.pt")
    model = create_model("unet", TINY, 3, encoder_weights=tmp_path / "full.pt")
    assert _same(model.encoder.state_dict(), source.encoder.state_dict())

    classifier = timm.create_model(TINY_TIMM)  # a timm checkpoint for a tu- encoder: keys gain "model."
    torch.save({"model": classifier.state_dict()}, tmp_path / "timm.bin")
    with caplog.at_level(logging.WARNING, logger="kitlib.models"):
        report = load_encoder_weights(model, tmp_path / "timm.bin")
    assert torch.equal(model.encoder.model.conv1[0].weight, classifier.conv1[0].weight)
    assert set(report.unexpected) == {"model.fc.weight", "model.fc.bias"}
    assert "unexpected" in caplog.text and "fc.weight" in caplog.text


def test_encoder_weights_adapt_first_conv_to_in_channels(tmp_path):
    source = create_model("unet", TINY, 1)
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    model = create_model("unet", TINY, 1, in_channels=1)
    report = load_encoder_weights(model, tmp_path / "encoder.pth")
    assert len(report.adapted) == 1 and report.adapted[0].startswith("model.conv1.0.weight")
    expected = source.encoder.model.conv1[0].weight.sum(dim=1, keepdim=True)  # timm: 3 -> 1 channel = sum
    assert torch.allclose(model.encoder.model.conv1[0].weight, expected)
    assert model(_x(1, 64, channels=1)).shape == (1, 1, 64, 64)


def test_encoder_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("unet", TINY, 1, encoder_weights=missing)
    other = create_model("unet", "resnet18", 1, encoder_depth=3, decoder_channels=(8, 8, 8))
    torch.save(other.encoder.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="resnet18.pth.*do not fit"):
        create_model("unet", TINY, 1, encoder_weights=tmp_path / "resnet18.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        read_state_dict(tmp_path / "garbage.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        read_state_dict(tmp_path / "empty")


def test_save_pretrained_folder_round_trips(tmp_path):
    source = create_model("unet", TINY, 3, aux_head=True).eval()
    source.save_pretrained(tmp_path / "saved")
    model = create_model("segformer", TINY, 5, encoder_weights=tmp_path / "saved")
    assert _same(model.encoder.state_dict(), source.encoder.state_dict())
    loaded, checkpoint = load_model(tmp_path / "saved")
    assert checkpoint["config"]["_model_class"] == "Unet"
    x = _x()
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_classifier_weights_skip_a_head_of_another_size(tmp_path, suffix, caplog):
    source = create_classifier(TINY_TIMM, 1000)
    path = tmp_path / f"imagenet{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict(), "epoch": 90}, path)
    with caplog.at_level(logging.WARNING, logger="kitlib.models"):
        model = create_classifier(TINY_TIMM, 5, pretrained_weights=path, drop_rate=0.2)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert _same({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, backbone)
    assert model.fc.weight.shape == (5, 96)
    assert "skipped" in caplog.text and "fc.weight (1000, 96) -> (5, 96)" in caplog.text
    assert model(_x()).shape == (2, 5)


def test_classifier_weights_from_timm_folder(tmp_path):
    from timm.models import save_for_hf

    source = create_classifier(TINY_TIMM, 5)
    save_for_hf(source, str(tmp_path / "hf"), safe_serialization=True)
    model = create_classifier(TINY_TIMM, 5, pretrained_weights=tmp_path / "hf")
    assert _same(model.state_dict(), source.state_dict())
    loaded, _ = load_model(tmp_path / "hf")
    source.eval()
    with torch.no_grad():
        assert torch.equal(loaded(_x()), source(_x()))


def test_offline_named_weights_fail_fast_with_instructions(tmp_path):
    """HF_HUB_OFFLINE=1 and empty caches: no 47-second retry loop, a message naming the file to attach."""
    script = textwrap.dedent(
        """
        import json, os, time
        import torch, timm
        from safetensors.torch import save_file
        from kitlib.models import OfflineWeightsError, create_classifier, create_model

        calls = {
            "smp": lambda: create_model("unet", "resnet18", 1, encoder_weights="imagenet"),
            "tu": lambda: create_model("unet", "tu-resnet18", 1, encoder_weights="imagenet"),
            "timm": lambda: create_classifier("resnet18", 5, pretrained_weights="imagenet"),
        }
        out = {}
        for label, call in calls.items():
            start = time.perf_counter()
            try:
                call()
                out[label] = ["no error", 0.0]
            except OfflineWeightsError as e:
                out[label] = [str(e), time.perf_counter() - start]

        # a file that is in the Hugging Face cache still loads offline
        reference = timm.create_model("test_resnet.r160_in1k")
        repo = os.path.join(os.environ["HF_HOME"], "hub", "models--timm--test_resnet.r160_in1k")
        commit = "0" * 40
        os.makedirs(os.path.join(repo, "refs"))
        os.makedirs(os.path.join(repo, "snapshots", commit))
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write(commit)
        save_file(reference.state_dict(), os.path.join(repo, "snapshots", commit, "model.safetensors"))
        model = create_classifier("test_resnet.r160_in1k", 1000, pretrained_weights="imagenet")
        pairs = zip(reference.state_dict().values(), model.state_dict().values())
        out["cached"] = all(torch.equal(a, b) for a, b in pairs)
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert wall < 30  # interpreter + torch/timm/smp imports; the failures themselves take milliseconds
    for label, repo, call in [
        ("smp", "smp-hub/resnet18.imagenet", "encoder_weights="),
        ("tu", "timm/resnet18.a1_in1k", "encoder_weights="),
        ("timm", "timm/resnet18.a1_in1k", "pretrained_weights="),
    ]:
        message, seconds = out[label]
        assert seconds < 2.0, (label, seconds)
        assert "HF_HUB_OFFLINE" in message and repo in message and "model.safetensors" in message
        assert call in message and "/kaggle/input/" in message
        assert str(tmp_path / "hf" / "hub") in message
    assert out["cached"] is True
    assert issubclass(OfflineWeightsError, FileNotFoundError)


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
    model(_x())  # train-mode forward: BatchNorm running statistics move away from their init
    model.eval()
    path = save_model(tmp_path / "fold0" / "model.pt", model, config, extra={"epoch": 7, "score": np.float32(0.5)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left behind
    loaded, checkpoint = load_model(path)
    assert not loaded.training
    assert checkpoint["model_config"] == config and checkpoint["epoch"] == 7 and checkpoint["score"] == 0.5
    x = _x()
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
        assert torch.equal(model(_x()), loaded(_x()))


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
