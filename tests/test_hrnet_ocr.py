"""kitlib.hrnet_ocr: HRNet + OCR through create_model, its auxiliary loss, one training step, offline weights, a
checkpoint round trip. CPU, ``hrnet_w18_small`` (timm's smallest HRNet) at 64x64; every weights file is written by the
test, nothing is downloaded."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from kitlib import engine
from kitlib.hrnet_ocr import AuxSegLoss, HRNetOCR, SpatialGather
from kitlib.losses import create_loss
from kitlib.models import create_model, load_model, param_groups, save_model

ENCODER = "tu-hrnet_w18_small"
SMALL = dict(ocr_mid_channels=32, ocr_key_channels=16)  # the paper's 512 / 256 work the same, slower on CPU


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_spatial_gather_is_the_softmax_weighted_mean_of_the_pixels():
    feats = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0 1 2 3, channel 1: 4 5 6 7
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 100.0  # class 1 sits on the first pixel alone; class 0 is uniform
    regions = SpatialGather()(feats, logits)
    assert regions.shape == (1, 2, 2, 1)
    assert torch.allclose(regions[0, :, 0, 0], torch.tensor([1.5, 5.5]))  # mean of the pixels
    assert torch.allclose(regions[0, :, 1, 0], torch.tensor([0.0, 4.0]))  # the first pixel


def test_shapes_in_train_and_eval_mode():
    model = create_model("HRNet_OCR", ENCODER, classes=3, **SMALL)
    assert isinstance(model, HRNetOCR) and model.aux_weight == 0.4
    x = torch.randn(2, 3, 64, 96)
    logits, aux_logits = model(x)
    assert logits.shape == aux_logits.shape == (2, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 96)
    assert [g["name"] for g in param_groups(model, 1e-4, 1e-3, 0.01)][:2] == ["encoder", "encoder_no_decay"]


def test_one_training_step_reaches_the_aux_head_and_the_loss_adds_0_4_of_it():
    model = create_model("hrnet_ocr", ENCODER, classes=3, **SMALL)
    ce = create_loss("soft_ce", mode="multiclass")
    loss_fn = AuxSegLoss(ce)
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    outputs = model(images)
    loss = engine.compute_loss(loss_fn, outputs, masks)
    expected = ce(outputs[0], masks) + 0.4 * ce(outputs[1], masks)
    assert torch.allclose(loss, expected)
    assert set(loss_fn.last_values) == {"main", "aux"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.aux_head[1].weight.detach().clone()
    loss.backward()
    for head in (model.aux_head[1], model.classifier, model.encoder.conv1):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.aux_head[1].weight)
    model.eval()  # validation: logits alone, the main loss alone
    with torch.no_grad():
        assert torch.allclose(engine.compute_loss(loss_fn, model(images), masks), ce(model(images), masks))


def test_build_loss_wraps_the_runs_loss_for_hrnet_ocr_only():
    from kitlib.stages import TrainConfig
    from kitlib.train import build_loss

    cfg = TrainConfig.from_notebook(preset="coco", arch="hrnet_ocr", encoder_name=ENCODER, loss="soft_ce")
    assert isinstance(build_loss(cfg, create_model("hrnet_ocr", ENCODER, classes=3, **SMALL)), AuxSegLoss)
    without = create_model("hrnet_ocr", ENCODER, classes=3, aux_weight=0.0, **SMALL)
    assert not isinstance(build_loss(cfg, without), AuxSegLoss)
    assert not isinstance(build_loss(cfg, nn.Conv2d(3, 3, 1)), AuxSegLoss)


def test_local_encoder_weights_offline_and_checkpoint_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classifier = timm.create_model("hrnet_w18_small", pretrained=False)  # an ImageNet-style checkpoint
    weights = tmp_path / "hrnet_w18_small.pth"
    torch.save(classifier.state_dict(), weights)
    model = create_model("hrnet_ocr", ENCODER, classes=2, encoder_weights=str(weights), **SMALL)
    assert torch.equal(model.encoder.conv1.weight, classifier.conv1.weight)
    assert torch.equal(model.encoder.stage4[0].branches[3][0].conv1.weight,
                       classifier.stage4[0].branches[3][0].conv1.weight)  # fmt: skip
    config = dict(arch="hrnet_ocr", encoder_name=ENCODER, classes=2, **SMALL)
    path = save_model(tmp_path / "best.pt", model, config)
    loaded, _ = load_model(path)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(encoder_name="tu-test_resnet.r160_in1k"), "timm HRNet encoder"),
        (dict(encoder_name=ENCODER, aux_head=True), "no classification head"),
    ],
)
def test_refuses_what_it_cannot_build(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        create_model("hrnet_ocr", classes=2, **kwargs)
