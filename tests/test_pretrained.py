"""kitlib.pretrained: weights from local files and folders into smp encoders and timm classifiers, offline caches.

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

import pytest
import timm
import torch
from safetensors.torch import save_file

from kitlib import pretrained
from kitlib.models import create_classifier, create_model, load_model
from kitlib.pretrained import OfflineWeightsError, load_encoder_weights, read_state_dict
from tests.conftest import REPO
from tests.test_models import (
    TINY,
    TINY_TIMM,
    images,
    same_tensors,
    seed,  # noqa: F401 - the same autouse fixture (torch.manual_seed(0)) for these tests
)

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
    assert same_tensors(model.encoder.state_dict(), source.encoder.state_dict())
    assert not same_tensors(model.encoder.state_dict(), create_model("fpn", TINY, 2).encoder.state_dict())


def test_encoder_weights_from_wrapped_full_model_and_timm_classifier(tmp_path, caplog):
    source = create_model("unet", TINY, 3, aux_head=True)
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "full.pt")
    model = create_model("unet", TINY, 3, encoder_weights=tmp_path / "full.pt")
    assert same_tensors(model.encoder.state_dict(), source.encoder.state_dict())

    classifier = timm.create_model(TINY_TIMM)  # a timm checkpoint for a tu- encoder: keys gain "model."
    torch.save({"model": classifier.state_dict()}, tmp_path / "timm.bin")
    with caplog.at_level(logging.WARNING, logger="kitlib.pretrained"):
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
    assert model(images(1, 64, channels=1)).shape == (1, 1, 64, 64)


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
    assert same_tensors(model.encoder.state_dict(), source.encoder.state_dict())
    loaded, checkpoint = load_model(tmp_path / "saved")
    assert checkpoint["config"]["_model_class"] == "Unet"
    x = images()
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
    with caplog.at_level(logging.WARNING, logger="kitlib.pretrained"):
        model = create_classifier(TINY_TIMM, 5, pretrained_weights=path, drop_rate=0.2)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert same_tensors({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, backbone)
    assert model.fc.weight.shape == (5, 96)
    assert "skipped" in caplog.text and "fc.weight (1000, 96) -> (5, 96)" in caplog.text
    assert model(images()).shape == (2, 5)


def test_classifier_weights_from_timm_folder(tmp_path):
    from timm.models import save_for_hf

    source = create_classifier(TINY_TIMM, 5)
    save_for_hf(source, str(tmp_path / "hf"), safe_serialization=True)
    model = create_classifier(TINY_TIMM, 5, pretrained_weights=tmp_path / "hf")
    assert same_tensors(model.state_dict(), source.state_dict())
    loaded, _ = load_model(tmp_path / "hf")
    source.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images()), source(images()))


def test_offline_named_weights_fail_fast_with_instructions(tmp_path):
    """HF_HUB_OFFLINE=1 and empty caches: no 47-second retry loop, a message naming the file to attach."""
    script = textwrap.dedent(
        """
        import json, os, time
        import torch, timm
        from safetensors.torch import save_file
        from kitlib.models import create_classifier, create_model
        from kitlib.pretrained import OfflineWeightsError

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


def test_tu_weights_name_loads_the_cached_timm_file_without_smp_warning(hf_cache):
    """smp 0.6 warns on string weights for ``tu-`` encoders: the kit passes True and the tag in the encoder name."""
    import warnings

    reference = timm.create_model(TINY_TIMM)
    hf_cache("timm/" + TINY_TIMM, "model.safetensors", b"")  # replaced below by the real file
    path = next(hf_cache.cache.rglob("model.safetensors"))
    save_file(reference.state_dict(), str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = create_model("unet", TINY, 1, encoder_weights="imagenet")
    assert not [w for w in caught if "encoder_weights" in str(w.message)], [str(w.message) for w in caught]
    want = reference.state_dict()
    got = {k: v for k, v in model.encoder.model.state_dict().items() if k in want}
    assert len(got) > 10 and all(torch.equal(v, want[k]) for k, v in got.items())  # the pretrained file, not init


def test_module_exports():
    for name in pretrained.__all__:
        assert hasattr(pretrained, name)
