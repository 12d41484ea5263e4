"""The bundle's model channel and float16 weights: a model handle found at every depth Kaggle mounts it, float16
copies of best.pt that load back as float32 and predict within 2/255 of the float32 OOF (and a corrupted copy that
fails the check), and the upload: kagglehub's real model_upload and kagglesdk's real client run on the model folder,
the network replaced at its lowest layer (``requests.Session.send``) by a recorder standing in for Kaggle."""

# ruff: noqa: F811 (the fixtures of tests/test_kaggle.py, imported by name, are this module's test arguments)
from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest
import requests
import torch

from kitlib import kaggle, kaggle_bundle, kaggle_kernel, kaggle_models, kaggle_push, kaggle_weights
from kitlib.io import read_json, write_json
from tests.test_kaggle import (  # noqa: F401 (demo_run, kaggle_api, push_env: fixtures)
    COMPETITION,
    _fake_kitlib_wheel,
    _mkdirs,
    check_with_kaggle_cli,
    demo_run,
    kaggle_api,
    push_env,
)

HANDLE = "tester/kit-demo/pyTorch/e"

# ------------------------------------------------------------------------------------------------ find_input


@pytest.mark.parametrize(
    ("layout", "handle"),
    [
        ("input/kit-demo/pytorch/e/3", f"{HANDLE}/3"),  # where Kaggle mounts a model source
        ("input/kit-demo/pyTorch/e/3", f"{HANDLE}/3"),
        ("input/kit-demo/pytorch/e/3", HANDLE),  # unversioned: the one mounted
        ("input/models/kit-demo/pytorch/e/3", f"{HANDLE}/3"),
        ("input/models/tester/kit-demo/pytorch/e/3", f"{HANDLE}/3"),
        ("input/tester/kit-demo/pytorch/e/3", f"{HANDLE}/3"),
    ],
)
def test_find_input_finds_a_model_at_every_depth(tmp_path, layout, handle):
    (expected,) = _mkdirs(tmp_path, layout)
    _mkdirs(tmp_path, "input/kit-demo/pytorch/other/3", "input/kit-demo-bundle/wheels", "working")
    assert kaggle.find_input(handle, root=tmp_path) == expected


def test_find_input_model_versions_and_failures(tmp_path):
    v2, v10, _ = _mkdirs(tmp_path, "input/kit-demo/pytorch/e/2", "input/kit-demo/pytorch/e/10",
                         "input/kit-demo/keras/e/11")  # fmt: skip
    assert kaggle.find_input(HANDLE, root=tmp_path) == v10  # the highest version, as a number
    assert kaggle.find_input(f"{HANDLE}/2", root=tmp_path) == v2
    with pytest.raises(FileNotFoundError, match="kit-demo/\\[pP\\]\\[yY\\].*/e/7"):
        kaggle.find_input(f"{HANDLE}/7", root=tmp_path)
    _mkdirs(tmp_path, "input/models/alice/kit-demo/pytorch/e/1", "input/models/bob/kit-demo/pytorch/e/1")
    shutil.rmtree(tmp_path / "input" / "kit-demo")
    assert kaggle.find_input("alice/kit-demo/pyTorch/e/1", root=tmp_path).parts[-5] == "alice"
    for bad in ("a/b/c", "a/b/c/d/0", "a/b/c/d/x", "a/b/../d"):
        with pytest.raises(ValueError, match="not a Kaggle"):
            kaggle.input_patterns(bad)
    assert kaggle.model_handle("tester", "kit-demo", "e") == HANDLE
    assert kaggle.model_handle("tester", "kit-demo", "e", version=4) == f"{HANDLE}/4"
    for model, variation in (("Kit-Demo", "e"), ("kit-demo", "a b"), ("x" * 51, "e"), ("kit", "")):
        with pytest.raises(ValueError, match="slug"):
            kaggle.model_handle("tester", model, variation)


# ------------------------------------------------------------------------------------------------ float16


def test_half_checkpoint_casts_parameters_keeps_buffers_and_loads_as_float32(tmp_path, demo_run):
    from kitlib.engine import split_outputs
    from kitlib.models import load_model

    src = demo_run.root / "e" / "fold0" / "best.pt"
    info = kaggle_weights.half_checkpoint(src, tmp_path / "a" / "best.pt")
    kaggle_weights.half_checkpoint(src, tmp_path / "b" / "best.pt")
    assert (tmp_path / "a" / "best.pt").read_bytes() == (tmp_path / "b" / "best.pt").read_bytes()  # stored once
    assert info["bytes_fp32"] == src.stat().st_size and info["bytes"] < 0.6 * info["bytes_fp32"] and not info["kept"]
    full = torch.load(src, weights_only=True)
    half = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert half["weights_dtype"] == "float16" and half["model_config"] == full["model_config"]
    model32, _ = load_model(src)
    params = {k for k, _ in model32.named_parameters()}
    dtypes = {k: v.dtype for k, v in half["state_dict"].items()}
    assert {dtypes[k] for k in params} == {torch.float16}
    buffers = [k for k in dtypes if k not in params]
    assert any(k.endswith("running_var") for k in buffers)
    assert all(dtypes[k] == full["state_dict"][k].dtype for k in buffers)  # float32 stats, int64 counters
    model16, checkpoint = load_model(tmp_path / "a" / "best.pt")
    for key, value in model16.state_dict().items():
        assert value.dtype == full["state_dict"][key].dtype, key
        assert torch.equal(value, half["state_dict"][key].to(value.dtype)), key  # the float16 values, widened
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        (p16, _), (p32, _) = split_outputs(model16(x)), split_outputs(model32(x))
    assert 0 < (torch.sigmoid(p16) - torch.sigmoid(p32)).abs().max() < 2 / 255
    # a parameter beyond float16's range stays float32 rather than turning into inf
    key = next(iter(params))
    full["state_dict"][key] = full["state_dict"][key].clone()
    full["state_dict"][key].view(-1)[0] = 1e6
    torch.save(full, tmp_path / "big.pt")
    info = kaggle_weights.half_checkpoint(tmp_path / "big.pt", tmp_path / "big16.pt")
    assert info["kept"] == [key] and torch.load(tmp_path / "big16.pt")["state_dict"][key].dtype == torch.float32
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable model checkpoint"):
        kaggle_weights.half_checkpoint(tmp_path / "junk.pt", tmp_path / "x.pt")


def test_check_half_measures_the_oof_difference_and_fails_beyond_the_tolerance(tmp_path, demo_run):
    fold_dir = demo_run.root / "e" / "fold1"
    half = tmp_path / "best.pt"
    kaggle_weights.half_checkpoint(fold_dir / "best.pt", half)
    result = kaggle_weights.check_half(fold_dir, half)
    assert result.passed and len(result.image_ids) == kaggle_weights.HALF_CHECK_IMAGES
    assert 0 < result.max_abs <= 2 / 255 and "fp16 check: max |p16 - p32|" in result.summary()
    with pytest.raises(ValueError, match="more than the tolerance; bundle with --weights fp32"):
        kaggle_weights.check_half(fold_dir, half, tolerance=result.max_abs / 2)
    # negative control: float16 weights that are not the trained ones (one layer's weights doubled)
    checkpoint = torch.load(half, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.dtype == torch.float16 and v.ndim == 4)
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * 2
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="tolerance 2/255"):
        kaggle_weights.check_half(fold_dir, tmp_path / "bad.pt")
    assert kaggle_weights.check_half(fold_dir, half, n_images=0).skipped


def test_bundle_stores_fp16_weights_and_fp32_on_request(tmp_path, demo_run, monkeypatch):
    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    common = dict(artifacts_root=demo_run.root, user="tester", packages=())
    b16 = kaggle_bundle.bundle("e", out_dir=tmp_path / "b16", **common)
    b32 = kaggle_bundle.bundle("e", out_dir=tmp_path / "b32", weights="fp32", **common)
    src = demo_run.root / "e" / "fold0" / "best.pt"
    assert (b32.path / "artifacts/e/fold0/best.pt").read_bytes() == src.read_bytes()
    stored = torch.load(b16.path / "artifacts/e/fold0/best.pt", weights_only=True)
    assert stored["weights_dtype"] == "float16"
    w = b16.weights
    assert w["dtype"] == "float16" and w["bytes_fp32"] == b32.weights["bytes"] and w["bytes"] < 0.6 * w["bytes_fp32"]
    assert w["check"]["max_abs"] <= 2 / 255 and w["check"]["checkpoint"].endswith("fold0/best.pt")
    assert "weights float16:" in b16.summary() and " -> " in b16.summary()
    assert b32.weights["check"] is None and b32.weights["dtype"] == "float32"
    with pytest.raises(ValueError, match="weights must be one of"):
        kaggle_bundle.bundle("e", out_dir=tmp_path / "x", weights="int8", **common)


# ------------------------------------------------------------------------------------------------ model channel


class KaggleRecorder:
    """Kaggle's side of kagglesdk's and kagglehub's HTTP calls (``requests.Session.send``): the model does not exist
    until created, a variation exists once created (a second instance create answers 409, as Kaggle does), blob
    uploads are kept by token with the bytes' sha256, ``GetModelInstance`` answers the latest version."""

    def __init__(self, offline: bool = False):
        self.offline = offline
        self.lag = False  # a new version is not reported yet (as while Kaggle processes it)
        self.calls: list[tuple[str, dict | None]] = []
        self.blobs: dict[str, dict] = {}  # token -> {"name", "sha256"}
        self.models: set[str] = set()
        self.versions: dict[str, int] = {}
        self.reported: dict[str, int] = {}  # what GetModelInstance answers
        self.lock = threading.Lock()

    def send(self, session, request, **kwargs):
        if self.offline:
            raise requests.ConnectionError(
                "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded (Caused by "
                "NameResolutionError: Failed to resolve 'api.kaggle.com')"
            )
        with self.lock:
            if request.method == "PUT":  # a blob's bytes, to the upload URL StartBlobUpload gave
                body = request.body.read() if hasattr(request.body, "read") else (request.body or b"")
                token = request.url.rsplit("/", 1)[-1]
                self.blobs[token]["sha256"] = hashlib.sha256(body).hexdigest()
                self.calls.append(("PUT", {"token": token}))
                return self._answer(request, 200, {})
            name, body = request.url.rsplit("/", 1)[-1], json.loads(request.body)
            self.calls.append((name, body))
            return self._answer(request, *self._reply(name, body))

    def _reply(self, name: str, body: dict) -> tuple[int, dict]:
        model = f"{body.get('ownerSlug')}/{body.get('modelSlug')}"
        if name == "GetModel":
            found = model in self.models
            return (200, {"slug": body["modelSlug"]}) if found else (404, {"code": 404, "message": "Not found"})
        if name == "CreateModel":
            self.models.add(f"{body['ownerSlug']}/{body['slug']}")
            return 200, {"id": 1, "ref": f"{body['ownerSlug']}/{body['slug']}"}
        if name == "StartBlobUpload":
            token = f"tok{len(self.blobs)}"
            self.blobs[token] = {"name": body["name"], "sha256": None}
            return 200, {"token": token, "createUrl": f"https://upload.test/{token}"}
        if name == "CreateModelInstance":
            key = f"{model}/{body['body']['instanceSlug']}"
            if key in self.versions:
                return 200, {"error": "instance exists", "errorCode": 409}
            self.versions[key] = 1
            self.reported.update({} if self.lag else {key: 1})
            return 200, {"id": 2, "url": f"/models/{key}"}
        if name == "CreateModelInstanceVersion":
            key = f"{model}/{body['instanceSlug']}"
            self.versions[key] += 1
            self.reported.update({} if self.lag else {key: self.versions[key]})
            return 200, {"id": 3, "url": f"/models/{key}/{self.versions[key]}"}
        if name == "GetModelInstance":
            key = f"{model}/{body['instanceSlug']}"
            if key not in self.reported:
                return 404, {"code": 404, "message": "Not found"}
            return 200, {"slug": body["instanceSlug"], "versionNumber": self.reported[key]}
        return 404, {"code": 404, "message": f"unexpected {name}"}

    @staticmethod
    def _answer(request, status: int, payload: dict) -> requests.Response:
        r = requests.Response()
        r.status_code, r.url, r.request = status, request.url, request
        r.headers["Content-Type"] = "application/json"
        r._content = json.dumps(payload).encode()
        return r

    def uploaded(self, directory: dict, prefix: str = "") -> dict[str, str]:
        """The files of an upload request's directory tree: path -> sha256 of the bytes sent."""
        out = {
            f"{prefix}{self.blobs[f['token']]['name']}": self.blobs[f["token"]]["sha256"]
            for f in directory.get("files", [])
        }
        for sub in directory.get("directories", []):
            out.update(self.uploaded(sub, f"{prefix}{sub['name']}/"))
        return out


@pytest.fixture
def kaggle_net(monkeypatch, push_env) -> KaggleRecorder:
    """The recorder in place of the network, credentials for kagglehub (push_env's), no kagglehub cache."""
    recorder = KaggleRecorder()
    monkeypatch.setattr(requests.Session, "send", lambda self, request, **kw: recorder.send(self, request, **kw))
    monkeypatch.delenv("KAGGLE_API_ENVIRONMENT", raising=False)
    return recorder


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_model_channel_bundle_kernel_push_upload(tmp_path, demo_run, monkeypatch, kaggle_net, push_env):
    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    out = tmp_path / "runs"
    b = kaggle_bundle.bundle("e", artifacts_root=demo_run.root, out_dir=out / "bundle", user="tester", packages=(),
                             channel="model")  # fmt: skip
    # the dataset: the code only; the model folder: what inference reads, with its manifest
    assert sorted(b.files) == ["wheels/kitlib-0.1.0-py3-none-any.whl"]
    assert b.model["handle"] == HANDLE and b.model["version"] is None and b.model["path"] == out / "bundle-model"
    assert sorted(b.model["files"]) == ["artifacts/e/fold0/best.pt", "artifacts/e/fold0/config.json",
                                        "artifacts/e/fold1/best.pt", "artifacts/e/fold1/config.json",
                                        "artifacts/e/postprocess.json"]  # fmt: skip
    assert b.model_source() == HANDLE and b.model_source(3) == f"{HANDLE}/3" and b.artifacts_source == HANDLE
    assert not any(p.name == "best.pt" for p in b.path.rglob("*")) and "(model tester/kit-demo" in b.summary()
    local = _files(b.model["path"])
    assert set(local) == {*b.model["files"], "kit-bundle.json"}

    k = kaggle_kernel.kernel(b.path, COMPETITION, out_dir=out / "kernel", user="tester")
    assert k.metadata["model_sources"] == [HANDLE] and k.metadata["dataset_sources"] == [b.dataset_id]
    nb = read_json(k.path / k.code_file)
    paths = next("".join(c["source"]) for c in nb["cells"] if "kaggle-paths" in c["metadata"].get("tags", []))
    assert f"kaggle.bundle_artifacts({HANDLE!r})" in paths
    with pytest.raises(kaggle_push.KaggleError, match="model sources without a version"):
        kaggle_push.push(kernel_dir=k.path, wait=0)  # Kaggle needs the version: refused before the CLI runs

    result = kaggle_push.push(b.path, k.path, poll=0)
    names = [name for name, _ in kaggle_net.calls if name != "PUT"]
    assert names[:3] == ["GetModelInstance", "GetModel", "CreateModel"]  # the version before: none
    assert names[-2:] == ["CreateModelInstance", "GetModelInstance"]
    assert sorted(names[3:-2]) == ["StartBlobUpload"] * len(local)
    calls = dict(kaggle_net.calls)
    assert calls["CreateModel"]["ownerSlug"] == "tester" and calls["CreateModel"]["slug"] == "kit-demo"
    instance = calls["CreateModelInstance"]
    assert (instance["ownerSlug"], instance["modelSlug"]) == ("tester", "kit-demo")
    assert instance["body"]["instanceSlug"] == "e" and instance["body"]["framework"] == "MODEL_FRAMEWORK_PY_TORCH"
    assert instance["body"]["licenseName"] == kaggle_models.DEFAULT_MODEL_LICENSE
    assert kaggle_net.uploaded(instance["body"]) == local  # every file, at its path, with its bytes
    assert "kagglehub model_upload tester/kit-demo/pyTorch/e" in result.report() and "version 1" in result.report()
    assert push_env.log.read_text().splitlines()[-1] == f"kernels push -p {k.path}"  # then the dataset and kernel
    assert kaggle_bundle.Bundle.read(b.path).model["version"] == 1
    assert read_json(k.path / "kernel-metadata.json")["model_sources"] == [f"{HANDLE}/1"]

    # a second push: the variation exists (409), so kagglehub creates version 2 and the kernel is pinned to it
    kaggle_net.calls.clear()
    kaggle_push.push(b.path, k.path, message="fold weights, second try", wait=0)
    names = [name for name, _ in kaggle_net.calls if name != "PUT"]
    assert names[:2] == ["GetModelInstance", "GetModel"] and "CreateModel" not in names
    assert names[-3:] == ["CreateModelInstance", "CreateModelInstanceVersion", "GetModelInstance"]
    version = dict(kaggle_net.calls)["CreateModelInstanceVersion"]
    assert version["instanceSlug"] == "e" and version["framework"] == "MODEL_FRAMEWORK_PY_TORCH"
    assert version["body"]["versionNotes"] == "fold weights, second try"
    assert kaggle_net.uploaded(version["body"]) == local
    assert read_json(k.path / "kernel-metadata.json")["model_sources"] == [f"{HANDLE}/2"]
    kaggle_net.lag = True  # Kaggle still answers version 2 after the third upload: version 3 is pinned all the same
    assert kaggle_models.upload_model(b.path) == 3 and kaggle_net.versions[HANDLE.replace("/pyTorch", "")] == 3
    kaggle_net.calls.clear()
    pinned = kaggle_kernel.kernel(b.path, COMPETITION, out_dir=out / "kernel2", user="tester", models=["a/b/c/d/1"])
    assert pinned.metadata["model_sources"] == [f"{HANDLE}/3", "a/b/c/d/1"]  # the version upload recorded


def test_model_channel_metadata_is_read_by_the_kaggle_cli(tmp_path, kaggle_api):
    kdir = tmp_path / "kernel"
    kdir.mkdir()
    meta = kaggle_kernel.kernel_metadata("tester", "kit-demo-submit", "40_submit.ipynb", ["tester/kit-e-bundle"],
                                         [COMPETITION], model_sources=[HANDLE])  # fmt: skip
    write_json(kdir / "kernel-metadata.json", meta)
    write_json(kdir / "40_submit.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    assert kaggle_models.pin_kernel(kdir, HANDLE, 7) == f"{HANDLE}/7"
    assert kaggle_models.pin_kernel(kdir, HANDLE, 8) == f"{HANDLE}/8"  # a pinned version is replaced, not added
    sent = check_with_kaggle_cli(kaggle_api, kdir)
    assert list(sent["kernel"].model_data_sources) == [f"{HANDLE}/8"]
    assert list(sent["kernel"].dataset_data_sources) == ["tester/kit-e-bundle"]


def test_model_mounted_in_the_kernel_is_read_as_the_artifacts(tmp_path, demo_run, monkeypatch):
    """The model folder where Kaggle mounts version 2; bundle_artifacts finds it and inference loads the float16
    folds as float32 models."""
    from kitlib.inference import load_fold_models

    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    b = kaggle_bundle.bundle("e", artifacts_root=demo_run.root, out_dir=tmp_path / "b", user="tester", packages=(),
                             channel="model", variation="e-v", check_images=0)  # fmt: skip
    assert b.model["handle"] == "tester/kit-demo/pyTorch/e-v" and b.weights["check"]["skipped"]
    kroot = tmp_path / "kaggle"
    shutil.copytree(b.model["path"], kroot / "input" / "kit-demo" / "pytorch" / "e-v" / "2")
    monkeypatch.setenv("KIT_KAGGLE_ROOT", str(kroot))
    artifacts = kaggle.bundle_artifacts(b.artifacts_source)
    assert artifacts == kroot / "input/kit-demo/pytorch/e-v/2/artifacts"
    models = load_fold_models(artifacts / "e", device="cpu")
    assert [m.fold for m in models] == [0, 1]
    assert {p.dtype for m in models for p in m.model.parameters()} == {torch.float32}
    with pytest.raises(FileNotFoundError, match="'tester/kit-demo/pyTorch/e-v/3' not found"):
        kaggle.bundle_artifacts(f"{b.artifacts_source}/3")


def test_model_upload_failures_are_one_line(tmp_path, demo_run, monkeypatch, kaggle_net, push_env):
    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    b = kaggle_bundle.bundle("e", artifacts_root=demo_run.root, out_dir=tmp_path / "b", user="tester", packages=(),
                             channel="model", check_images=0)  # fmt: skip
    kaggle_net.offline = True
    with pytest.raises(kaggle_push.KaggleError) as e:
        kaggle_push.push(b.path, wait=0)
    # the first request (the variation's version before the upload) already fails, and nothing is uploaded
    assert str(e.value).startswith("cannot reach Kaggle (cannot read the version of tester/kit-demo/pyTorch/e (")
    assert "\n" not in str(e.value) and not push_env.log.exists()  # nothing else was sent
    d = kaggle_bundle.bundle("e", artifacts_root=demo_run.root, out_dir=tmp_path / "d", user="tester", packages=(),
                             check_images=0)  # fmt: skip
    with pytest.raises(ValueError, match="carries its weights in the dataset; bundle with --channel model"):
        kaggle_models.upload_model(d.path)
    shutil.rmtree(b.model["path"])
    with pytest.raises(FileNotFoundError, match="bundle-model|b-model: no kit-bundle.json"):
        kaggle_models.upload_model(b.path)


def test_cli_lists_the_model_channel(capsys):
    for argv in (["bundle", "--help"], ["kernel", "--help"], ["push", "--help"]):
        with pytest.raises(SystemExit):
            kaggle_push.main(argv)
    out = capsys.readouterr().out
    for flag in ("--channel", "--weights", "--check-images", "--model-slug", "--variation", "--model-version",
                 "--model-license"):  # fmt: skip
        assert flag in out, flag
