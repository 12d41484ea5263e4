"""Encoder normalisation with smp 0.6: an smp encoder's mean/std come from its hub ``config.json`` in the Hugging Face
cache (or a ``config.json`` beside local weights), never silently from timm's defaults; a fold records the values it
used, so inference without the cache normalises as training did.

The caches are written by the tests (``hf_cache``: offline, in a temporary folder); smp 0.5's legacy copy of the
settings is hidden so that the hub file is what is read on 0.5 too.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import segmentation_models_pytorch as smp
from safetensors.torch import save_file

from kitlib import pretrained, train
from kitlib.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms, config_normalization, normalization_for
from kitlib.pretrained import OfflineWeightsError
from kitlib.stages import TrainConfig

MEAN, STD = (0.1, 0.2, 0.3), (0.2, 0.25, 0.5)  # nobody's normalisation: only the cached file can give it


@pytest.fixture(autouse=True)
def no_legacy_settings(monkeypatch):
    monkeypatch.setattr(pretrained, "_legacy_smp_settings", lambda: {})


def hub_config(hf_cache, encoder: str, weights: str, **fields) -> None:
    setting = smp.encoders.encoders[encoder]["pretrained_settings"][weights]
    body = {"mean": list(MEAN), "std": list(STD), "input_space": "RGB", "input_range": [0, 1], **fields}
    hf_cache(setting["repo_id"], "config.json", json.dumps(body).encode(), revision=setting["revision"])


def test_the_cached_hub_config_is_what_the_transform_uses(hf_cache):
    hub_config(hf_cache, "resnet18", "imagenet")
    assert normalization_for("resnet18", "imagenet") == (MEAN, STD)
    assert normalization_for("resnet18") == (MEAN, STD)  # None: the encoder's first weights, "imagenet"
    image = np.full((4, 4, 3), 51, dtype=np.uint8)  # 51 / 255 = 0.2 in every channel
    out = build_transforms("valid", 4, 4, *normalization_for("resnet18", "imagenet"), augment="none")(image=image)
    np.testing.assert_allclose(out["image"][0, 0], [(0.2 - 0.1) / 0.2, 0.0, (0.2 - 0.3) / 0.5], atol=1e-5)
    imagenet = build_transforms("valid", 4, 4, IMAGENET_MEAN, IMAGENET_STD, augment="none")(image=image)
    assert not np.allclose(imagenet["image"], out["image"], atol=0.05)  # the negative control differs


def test_a_fold_records_its_normalisation_for_inference_without_the_cache(hf_cache, tmp_path):
    hub_config(hf_cache, "resnet18", "imagenet")
    cfg = TrainConfig.from_notebook(preset="demo", encoder_name="resnet18", encoder_weights="imagenet")
    assert config_normalization(cfg) == (MEAN, STD)
    saved = train._normalization(cfg)
    assert saved == {"encoder": "resnet18", "weights": "imagenet", "mean": list(MEAN), "std": list(STD)}
    cfg.save(tmp_path / "config.json", normalization=saved)
    shutil.rmtree(hf_cache.cache)  # a Kaggle kernel: the fold's files, no Hugging Face cache
    with pytest.raises(OfflineWeightsError):
        normalization_for("resnet18", "imagenet")
    loaded = TrainConfig.load(tmp_path / "config.json")
    assert config_normalization(loaded) == (MEAN, STD)
    other = loaded.replace(encoder_name="tu-test_resnet.r160_in1k")  # the saved values belong to resnet18 only
    assert config_normalization(other) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's test model config


def test_weights_whose_config_is_not_cached_fail_clearly(hf_cache):
    with pytest.raises(OfflineWeightsError) as info:
        normalization_for("resnet18", "imagenet")
    message = str(info.value)
    assert "smp-hub/resnet18.imagenet" in message and "config.json" in message and str(hf_cache.cache) in message
    with pytest.raises(ValueError, match="has no weights 'instagram'; options"):
        normalization_for("resnet18", "instagram")


def test_scratch_encoder_without_a_cached_config_warns_and_takes_imagenet(hf_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="kitlib.data"):
        assert normalization_for("inceptionv4") == (IMAGENET_MEAN, IMAGENET_STD)  # not timm's, not silently
    assert "inceptionv4" in caplog.text and "not cached" in caplog.text


def test_local_weights_take_the_config_beside_them(hf_cache, tmp_path):
    folder = tmp_path / "smp-hub-resnet18"  # a downloaded smp-hub repo: config.json + model.safetensors
    folder.mkdir()
    weights = folder / "model.safetensors"
    save_file(smp.encoders.get_encoder("resnet18").state_dict(), str(weights))
    with pytest.raises(OfflineWeightsError, match=str(folder / "config.json")):  # no file gives the values yet
        normalization_for("resnet18", str(weights))
    (folder / "config.json").write_text(json.dumps({"mean": [0.3, 0.3, 0.3], "std": [0.1, 0.1, 0.1]}))
    assert normalization_for("resnet18", str(weights)) == ((0.3, 0.3, 0.3), (0.1, 0.1, 0.1))
    assert normalization_for("resnet18", folder) == ((0.3, 0.3, 0.3), (0.1, 0.1, 0.1))
    (folder / "config.json").write_text(json.dumps({"mean": [0.3] * 3, "std": [0.1] * 3, "input_space": "BGR"}))
    with pytest.raises(ValueError, match="BGR"):
        normalization_for("resnet18", folder)


def test_timm_encoders_keep_timm_configs(hf_cache):
    assert normalization_for("tu-test_resnet.r160_in1k") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert normalization_for("tu-resnet34") == (IMAGENET_MEAN, IMAGENET_STD)
