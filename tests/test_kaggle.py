"""kitlib.kaggle: input folders found at every depth Kaggle mounts them, metadata read back by the kaggle CLI's own
reader, pinned wheels that never include the Kaggle image's packages, a bundle that stores each file once, push's
one-line failures, and the end-to-end run: bundle + kernel from a demo run, executed offline by papermill in a fresh
virtual environment that sees this environment's packages except kitlib and smp (as the Kaggle image would)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from kitlib import kaggle, kaggle_bundle, kaggle_kernel, kaggle_push
from kitlib.io import read_json, write_json
from kitlib.params import ParameterError
from kitlib.presets import PRESETS
from tests.conftest import REPO

COMPETITION = "kit-demo-competition"
# taken before any test points HOME elsewhere: repeated runs reuse the downloaded wheels and the font cache
WHEEL_CACHE = kaggle_bundle._default_cache()
HOME = str(Path.home())


def _mkdirs(root: Path, *rels: str) -> list[Path]:
    paths = [root / rel for rel in rels]
    for p in paths:
        p.mkdir(parents=True)
    return paths


# ------------------------------------------------------------------------------------------------ find_input


@pytest.mark.parametrize(
    ("layout", "slug"),
    [
        ("input/understanding_cloud_organization", "understanding_cloud_organization"),
        ("input/competitions/understanding_cloud_organization", "understanding_cloud_organization"),
        ("input/my-bundle", "alice/my-bundle"),
        ("input/datasets/alice/my-bundle", "alice/my-bundle"),
        ("input/datasets/alice/my-bundle", "my-bundle"),
        ("input/alice/my-bundle", "alice/my-bundle"),
    ],
)
def test_find_input_at_every_depth(tmp_path, monkeypatch, layout, slug):
    (expected,) = _mkdirs(tmp_path, layout)
    _mkdirs(tmp_path, "input/other-dataset", "working")
    assert kaggle.find_input(slug, root=tmp_path) == expected
    monkeypatch.setenv("KIT_KAGGLE_ROOT", str(tmp_path))
    assert kaggle.kaggle_root() == tmp_path and kaggle.working_dir() == tmp_path / "working"
    assert kaggle.find_input(slug) == expected


def test_find_input_prefers_the_owner_and_refuses_ambiguity(tmp_path):
    alice, _ = _mkdirs(tmp_path, "input/datasets/alice/weights", "input/datasets/bob/weights")
    assert kaggle.find_input("alice/weights", root=tmp_path) == alice
    with pytest.raises(ValueError, match="ambiguous.*alice/weights.*bob/weights"):
        kaggle.find_input("weights", root=tmp_path)
    with pytest.raises(ValueError, match="not a Kaggle slug"):
        kaggle.find_input("../etc", root=tmp_path)


def test_find_input_error_lists_what_was_looked_at_and_what_is_there(tmp_path, monkeypatch):
    _mkdirs(tmp_path, "input/competitions/severstal", "input/some-data")
    with pytest.raises(FileNotFoundError) as e:
        kaggle.find_input("alice/missing", root=tmp_path)
    msg = str(e.value)
    assert "alice/missing, */alice/missing, missing, */missing, */*/missing" in msg
    assert "competitions, competitions/severstal, some-data" in msg and "KIT_KAGGLE_ROOT" in msg
    monkeypatch.setenv("KIT_KAGGLE_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere/input.*no such folder"):
        kaggle.find_input("x-data")


# ------------------------------------------------------------------------------------------------ metadata


def test_dataset_metadata_follows_kaggles_schema(monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    meta = kaggle_bundle.dataset_metadata("alice", "kit-demo-bundle")
    assert meta == {"title": "kit demo bundle", "id": "alice/kit-demo-bundle", "licenses": [{"name": "CC0-1.0"}]}
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    meta = kaggle_bundle.dataset_metadata(None, "kit-demo-bundle", "My bundle", "CC-BY-SA-4.0")
    assert meta["id"] == "bob/kit-demo-bundle"
    for slug in ("short", "Upper-Case", "a--b-c-d", "x" * 51):
        with pytest.raises(ValueError, match="6 to 50"):
            kaggle_bundle.dataset_metadata("alice", slug)
    with pytest.raises(ValueError, match="title"):
        kaggle_bundle.dataset_metadata("alice", "kit-demo-bundle", "tiny")


def test_user_comes_from_kaggle_json_or_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="no Kaggle user name: pass --user"):
        kaggle_bundle.kaggle_user()
    write_json(tmp_path / "kaggle.json", {"username": "carol", "key": "secret"})
    assert kaggle_bundle.kaggle_user() == "carol" and kaggle_bundle.kaggle_user("dave") == "dave"


def test_kernel_metadata_fields():
    meta = kaggle_kernel.kernel_metadata("alice", "kit-demo-submit", "40_submit.ipynb", ["alice/kit-demo-bundle"],
                                  ["understanding_cloud_organization"], accelerator="NvidiaTeslaT4",
                                  model_sources=["alice/unet/pyTorch/b4/1"])  # fmt: skip
    assert meta == {
        "id": "alice/kit-demo-submit", "title": "kit demo submit", "code_file": "40_submit.ipynb",
        "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
        "enable_internet": False, "dataset_sources": ["alice/kit-demo-bundle"],
        "competition_sources": ["understanding_cloud_organization"], "kernel_sources": [],
        "model_sources": ["alice/unet/pyTorch/b4/1"], "machine_shape": "NvidiaTeslaT4",
    }  # fmt: skip
    cpu = kaggle_kernel.kernel_metadata(
        "alice", "kit-demo-submit", "a.ipynb", ["alice/b-bundle"], ["c"], is_private=False
    )
    assert cpu["enable_gpu"] is False and cpu["is_private"] is False and "machine_shape" not in cpu
    assert cpu["enable_internet"] is False
    # an accelerator the CLI does not document passes through (tests/test_kaggle_loop.py checks the warning)
    a100 = kaggle_kernel.kernel_metadata("alice", "kit-demo-submit", "a.ipynb", [], [], accelerator="A100")
    assert a100["machine_shape"] == "A100" and a100["enable_gpu"] is False and a100["enable_tpu"] is False


class _FakeKaggleClient:
    """Stands in for kagglesdk's KaggleClient: every attribute leads back here; requests are recorded."""

    def __init__(self):
        self.requests = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        if name in ("save_kernel", "create_dataset", "create_dataset_version"):
            return lambda request: self.requests.append(request) or SimpleNamespace(error="", status="ok", url="u")
        return self


@pytest.fixture
def kaggle_api(tmp_path, monkeypatch):
    """The kaggle package's KaggleApi with dummy credentials and no network: its own metadata readers and
    validators run, the request that would be sent is recorded instead."""
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # kaggle keeps upload state in the temp folder
    extended = pytest.importorskip("kaggle.api.kaggle_api_extended")
    api = extended.KaggleApi()
    api.authenticate()  # the API-key path reads the environment only
    client = _FakeKaggleClient()
    monkeypatch.setattr(api, "build_kaggle_client", lambda: client)
    return SimpleNamespace(api=api, client=client, module=extended)


def check_with_kaggle_cli(api, kernel_dir: Path | None = None, bundle_dir: Path | None = None) -> dict:
    """Run the kaggle CLI's ``kernels push`` / ``datasets create`` readers on the folders; returns the requests."""
    out = {}
    if kernel_dir is not None:
        api.api.kernels_push(str(kernel_dir))
        out["kernel"] = api.client.requests.pop()
    if bundle_dir is not None:
        from requests.exceptions import HTTPError

        def not_found(*_):
            raise HTTPError("404 Client Error: Not Found")

        uploaded = []
        api.api.dataset_status = not_found
        api.api.upload_files = lambda request, resources, folder, *a, **k: uploaded.append(folder)
        api.api.dataset_create_new(str(bundle_dir))
        out["dataset"] = api.client.requests.pop()
        assert uploaded == [str(bundle_dir)]
    return out


def test_metadata_is_read_back_by_the_kaggle_cli(tmp_path, kaggle_api):
    kdir, ddir = _mkdirs(tmp_path, "kernel", "dataset")
    meta = kaggle_kernel.kernel_metadata("tester", "kit-demo-submit", "40_submit.ipynb", ["tester/kit-demo-bundle"],
                                  [COMPETITION], accelerator="NvidiaTeslaP100",
                                  model_sources=["tester/unet/pyTorch/b4/1"])  # fmt: skip
    write_json(kdir / "kernel-metadata.json", meta)
    write_json(kdir / "40_submit.ipynb", {"cells": [{"cell_type": "code", "source": ["1"], "metadata": {},
                                                     "outputs": [], "execution_count": None}],
                                          "metadata": {}, "nbformat": 4, "nbformat_minor": 5})  # fmt: skip
    write_json(ddir / "dataset-metadata.json", kaggle_bundle.dataset_metadata("tester", "kit-demo-bundle"))
    sent = check_with_kaggle_cli(kaggle_api, kdir, ddir)
    k = sent["kernel"]
    assert (k.slug, k.new_title, k.language, k.kernel_type) == ("tester/kit-demo-submit", "kit demo submit",
                                                                "python", "notebook")  # fmt: skip
    assert k.enable_internet is False and k.is_private is True and k.enable_gpu is True and k.enable_tpu is False
    assert list(k.dataset_data_sources) == ["tester/kit-demo-bundle"]
    assert list(k.competition_data_sources) == [COMPETITION] and k.machine_shape == "NvidiaTeslaP100"
    assert list(k.model_data_sources) == ["tester/unet/pyTorch/b4/1"]
    d = sent["dataset"]
    assert (d.owner_slug, d.slug, d.title, d.license_name) == ("tester", "kit-demo-bundle", "kit demo bundle",
                                                               "CC0-1.0")  # fmt: skip
    # the reader rejects what kitlib must never write
    write_json(kdir / "kernel-metadata.json", {**meta, "language": "py"})
    with pytest.raises(ValueError, match="valid language"):
        kaggle_api.api.kernels_push(str(kdir))


# ------------------------------------------------------------------------------------------------ wheels


def test_packages_are_pinned_and_the_kaggle_images_are_refused():
    import importlib.metadata

    smp = importlib.metadata.version("segmentation-models-pytorch")
    assert kaggle_bundle.resolve_packages(["segmentation_models_pytorch", "timm==1.0.3", "# comment", ""]) == {
        "segmentation-models-pytorch": smp, "timm": "1.0.3",
    }  # fmt: skip
    for name in ("torch", "torchvision", "Torch==2.1", "nvidia-cudnn-cu12", "numpy", "opencv-python-headless"):
        with pytest.raises(ValueError, match="Kaggle image ships it"):
            kaggle_bundle.resolve_packages([name])
    with pytest.raises(ValueError, match="kitlib: its wheel is built from this checkout"):
        kaggle_bundle.resolve_packages(["kitlib"])
    with pytest.raises(ValueError, match="surely-not-installed-pkg is not installed here.*==X.Y"):
        kaggle_bundle.resolve_packages(["surely-not-installed-pkg"])
    with pytest.raises(ValueError, match="expected 'name' or 'name==version'"):
        kaggle_bundle.resolve_packages(["smp=="])


def test_a_wheel_that_cannot_be_had_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip download fails at once
    with pytest.raises(RuntimeError, match="cannot get a wheel of surely-not-a-package==0.0.1"):
        kaggle_bundle._fetch_wheels({"surely-not-a-package": "0.0.1"}, tmp_path)


# ------------------------------------------------------------------------------------------------ bundle


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> SimpleNamespace:
    """A tiny trained demo experiment ``e`` (2 folds, 1 epoch) with a postprocess.json, as 10_train/20_oof leave it."""
    from kitlib.demo import make_demo
    from kitlib.postprocess import PostProcess
    from tests.test_train import train_tiny

    tmp = tmp_path_factory.mktemp("kaggle_demo")
    data = make_demo(tmp / "data", n_train=12, n_test=5, height=64, width=96)
    root = tmp / "artifacts"
    train_tiny(data, root, "e", epochs=1)
    PostProcess(threshold=[0.4] * 4, min_area=[0] * 4).to_json(root / "e" / "postprocess.json")
    return SimpleNamespace(data=data, root=root)


def _fake_kitlib_wheel(repo: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "kitlib-0.1.0-py3-none-any.whl"
    path.write_bytes(b"not a real wheel")
    return path


def test_bundle_stores_each_file_once(tmp_path, demo_run, monkeypatch):
    """An ensemble that lists ``e`` twice, a byte-identical copy ``e2`` and a gate experiment: inference's files
    only (no last.pt, no OOF), each stored once (the float16 copies too); the kernel-side mirror restores every
    path."""
    import torch

    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    root = tmp_path / "artifacts"
    shutil.copytree(demo_run.root / "e", root / "e")
    shutil.copytree(demo_run.root / "e", root / "e2")
    shutil.copytree(demo_run.root / "e", root / "gate")
    other = torch.load(root / "gate" / "fold1" / "best.pt", weights_only=True)  # a different classifier
    other["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    torch.save(other, root / "gate" / "fold1" / "best.pt")
    write_json(root / "ens" / "weights.json", {"exps": ["e", "e", "e2", "unused"], "weights": [1, 1, 2, 0]})
    post = {"threshold": [0.5] * 4, "min_area": [0] * 4, "classifier_threshold": [0.5] * 4, "gate_exp": "gate"}
    write_json(root / "ens" / "postprocess.json", post)
    common = dict(ensemble="ens", artifacts_root=root, out_dir=tmp_path / "out", user="tester", packages=())
    with pytest.raises(ValueError, match="gate_exp 'gate' is not a presence classifier"):
        kaggle_bundle.bundle(**common)  # inference would refuse it in the kernel: refused here instead
    for fold in (0, 1):  # make "gate" a presence classifier, as 10_train with arch="classifier" writes it
        path = root / "gate" / f"fold{fold}" / "config.json"
        config = read_json(path)
        write_json(path, {**config, "params": {**config["params"], "arch": "classifier"}})
    b = kaggle_bundle.bundle(**common)
    assert b.dataset_id == "tester/kit-ens-bundle" and (b.preset, b.exp, b.ensemble) == ("demo", "ens", "ens")
    assert sorted(b.files) == [
        "artifacts/e/fold0/best.pt", "artifacts/e/fold0/config.json", "artifacts/e/fold1/best.pt",
        "artifacts/e/fold1/config.json", "artifacts/ens/postprocess.json", "artifacts/ens/weights.json",
        "artifacts/gate/fold0/config.json", "artifacts/gate/fold1/best.pt", "artifacts/gate/fold1/config.json",
        "wheels/kitlib-0.1.0-py3-none-any.whl",
    ]  # fmt: skip
    assert b.links == {
        "artifacts/e2/fold0/best.pt": "artifacts/e/fold0/best.pt", "artifacts/e2/fold0/config.json":
        "artifacts/e/fold0/config.json", "artifacts/e2/fold1/best.pt": "artifacts/e/fold1/best.pt",
        "artifacts/e2/fold1/config.json": "artifacts/e/fold1/config.json", "artifacts/gate/fold0/best.pt":
        "artifacts/e/fold0/best.pt",
    }  # fmt: skip
    on_disk = sorted(str(p.relative_to(b.path)) for p in b.path.rglob("*") if p.is_file())
    assert on_disk == sorted([*b.files, "dataset-metadata.json", "kit-bundle.json"])
    manifest = read_json(b.path / "kit-bundle.json")
    hashes = [f["sha256"] for f in manifest["files"]]
    assert len(hashes) == len(set(hashes))
    assert b.total_bytes == sum((b.path / rel).stat().st_size for rel in b.files)
    assert f"{len(b.files)} files" in b.summary() and "5 duplicates stored once" in b.summary()
    # inside the kernel: the read-only input folder, one level deeper, and the linked paths rebuilt
    kroot = tmp_path / "kaggle"
    shutil.copytree(b.path, kroot / "input" / "datasets" / "tester" / "kit-ens-bundle")
    mirror = kaggle.bundle_artifacts("tester/kit-ens-bundle", root=kroot)
    for rel in [*b.files, *b.links]:
        if rel.startswith("artifacts/"):
            assert (mirror / rel.removeprefix("artifacts/")).is_file(), rel
    assert (mirror / "e2/fold1/best.pt").read_bytes() == (b.path / "artifacts/e/fold1/best.pt").read_bytes()
    shutil.rmtree(mirror)


@pytest.mark.parametrize("unpacked", ["artifacts", "artifacts/artifacts", "."])
def test_bundle_artifacts_wherever_the_archive_unpacked(tmp_path, unpacked):
    """``kaggle datasets create -r zip`` uploads artifacts/ as artifacts.zip; whichever folder Kaggle unpacks it
    into, the artifacts root is found."""
    top = tmp_path / "input" / "kit-x-bundle"
    (top / unpacked / "e" / "fold0").mkdir(parents=True)
    (top / unpacked / "e" / "fold0" / "best.pt").write_bytes(b"w")
    write_json(
        top / "kit-bundle.json", {"files": [{"path": "wheels/kitlib.whl"}, {"path": "artifacts/e/fold0/best.pt"}]}
    )
    assert kaggle.bundle_artifacts("tester/kit-x-bundle", root=tmp_path) == (top / unpacked).resolve()
    (top / "kit-bundle.json").unlink()
    with pytest.raises(FileNotFoundError, match="no kit-bundle.json"):
        kaggle.bundle_artifacts("tester/kit-x-bundle", root=tmp_path)


def test_bundle_failures_leave_nothing_behind(tmp_path, demo_run, monkeypatch):
    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    out = tmp_path / "out" / "b"
    common = dict(artifacts_root=demo_run.root, out_dir=out, user="tester", packages=())
    with pytest.raises(ValueError, match="needs an experiment"):
        kaggle_bundle.bundle(**common)
    with pytest.raises(FileNotFoundError, match="fold5/best.pt: no such checkpoint"):
        kaggle_bundle.bundle("e", folds=[0, 5], **common)
    with pytest.raises(ValueError, match="torch: the Kaggle image ships it"):
        kaggle_bundle.bundle("e", **{**common, "packages": ["torch"]})

    def killed(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(kaggle_bundle, "_sha256", killed)
    with pytest.raises(KeyboardInterrupt):
        kaggle_bundle.bundle("e", **common)
    assert not out.exists() and list(out.parent.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    b = kaggle_bundle.bundle("e", folds=[1], **common)
    assert sorted(b.files)[:2] == ["artifacts/e/fold1/best.pt", "artifacts/e/fold1/config.json"]
    assert "artifacts/e/postprocess.json" in b.files and b.path == out
    assert kaggle_bundle.bundle("e", **common).files.keys() >= {"artifacts/e/fold0/best.pt"}  # a bundle is replaced
    assert sorted(p.name for p in out.parent.iterdir()) == ["b"]
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError, match="not a folder this tool wrote"):
        kaggle_bundle.bundle("e", **{**common, "out_dir": tmp_path / "mine"})


def _local_details(run_dir: Path) -> dict[str, re.Pattern]:
    """What a public bundle must not show: the home folder, the run's folder, the user and the host (whole words:
    a user "root" is not "artifacts_root"), the kernel's release string."""
    import getpass
    import platform
    import socket

    words = {"user": getpass.getuser(), "hostname": socket.gethostname(), "node": platform.node()}
    found = {name: re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])") for name, word in words.items() if word}
    for name, path in (("home", HOME), ("run folder", str(run_dir)), ("kernel", platform.release())):
        found[name] = re.compile(re.escape(path))
    return found


def assert_no_local_details(bundle_dir: Path, run_dir: Path) -> int:
    """Every text file of the bundle (JSON, YAML, notebooks, CSV) and the pickled strings of each checkpoint scanned
    for ``_local_details``; returns the number of files scanned."""
    patterns, scanned = _local_details(run_dir), 0
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        if path.suffix == ".whl":
            continue  # kitlib's own source and the packages' wheels, as published on PyPI
        if path.suffix == ".pt":
            text = path.read_bytes().decode("latin-1")
            shown = {k: v for k, v in patterns.items() if k in ("home", "run folder")}  # short words match bytes
        else:
            text, shown = path.read_text(encoding="utf-8"), patterns
        for name, pattern in shown.items():
            m = pattern.search(text)
            seen = "" if m is None else text[max(m.start() - 60, 0) : m.end() + 20]
            assert m is None, f"{path.relative_to(bundle_dir)} shows the {name}: ...{seen!r}"
        scanned += 1
    return scanned


def test_a_bundle_shows_no_local_paths_user_or_host(tmp_path, demo_run, monkeypatch):
    """Issue 15 item 10: every fold's config.json carried data_dir, artifacts_root and the host's platform string
    into the public dataset. The bundle's copies are rewritten (the local configs keep theirs) and still load."""
    from kitlib.stages import TrainConfig

    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    local = read_json(demo_run.root / "e" / "fold0" / "config.json")
    assert local["params"]["data_dir"] == str(demo_run.data)  # outside the project: absolute here
    b = kaggle_bundle.bundle("e", artifacts_root=demo_run.root, out_dir=tmp_path / "out", user="tester", packages=())
    assert assert_no_local_details(b.path, demo_run.root.parent) >= 7
    public = read_json(b.path / "artifacts" / "e" / "fold0" / "config.json")
    assert public["params"]["artifacts_root"] == "artifacts" and public["params"]["data_dir"] == demo_run.data.name
    assert public["run"]["versions"] == local["run"]["versions"] and public["params"]["epochs"] == 1
    assert set(public) == set(local)
    loaded = TrainConfig.load(b.path / "artifacts" / "e" / "fold0" / "config.json")  # as the kernel reads it
    assert loaded.fold == 0 and loaded.preset.name == "demo"
    assert read_json(demo_run.root / "e" / "fold0" / "config.json") == local  # the local one is untouched


# ------------------------------------------------------------------------------------------------ kernel


def _fake_bundle(folder: Path, dataset_id: str = "tester/kit-x-bundle", preset: str = "demo") -> Path:
    write_json(folder / "kit-bundle.json", {
        "dataset_id": dataset_id, "preset": preset, "exp": "x", "ensemble": "", "files": [],
        "wheels": ["kitlib-0.1.0-py3-none-any.whl", "segmentation_models_pytorch-0.5.0-py3-none-any.whl"],
    })  # fmt: skip
    return folder


def test_kernel_parameters_are_typed_and_checked(tmp_path):
    bundle_dir = _fake_bundle(tmp_path / "b")
    k = kaggle_kernel.kernel(bundle_dir, COMPETITION, out_dir=tmp_path / "k", user="tester",
                      params={"batch_size": "16", "tta": "flips"})  # fmt: skip
    assert k.parameters == {"exp": "x", "preset": "demo", "ensemble": "", "n_folds": 0, "batch_size": 16,
                            "tta": "flips"}  # fmt: skip
    nb = read_json(k.path / k.code_file)
    tags = [(c["metadata"].get("tags") or [""])[0] for c in nb["cells"] if c["cell_type"] == "code"]
    assert tags[0] == "kaggle-install" and tags[tags.index("injected-parameters") + 1] == "kaggle-paths"
    assert tags.index("parameters") < tags.index("injected-parameters")
    assert "batch_size = 16\n" in nb["cells"][[i for i, c in enumerate(nb["cells"]) if "injected-parameters" in
                                               c["metadata"].get("tags", [])][0]]["source"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown parameter 'batchsize'.*'batch_size'"):
        kaggle_kernel.kernel(bundle_dir, COMPETITION, out_dir=tmp_path / "k2", user="tester", params={"batchsize": 1})
    with pytest.raises(ValueError, match="data_dir: the kernel sets it"):
        kaggle_kernel.kernel(bundle_dir, COMPETITION, out_dir=tmp_path / "k2", user="tester", params={"data_dir": "/x"})
    with pytest.raises(ParameterError, match="parameter 'batch_size': 'many' is not int"):
        kaggle_kernel.kernel(
            bundle_dir, COMPETITION, out_dir=tmp_path / "k2", user="tester", params={"batch_size": "many"}
        )
    with pytest.raises(ValueError, match="no Kaggle competition known for preset 'demo'; pass --competition"):
        kaggle_kernel.kernel(bundle_dir, out_dir=tmp_path / "k2", user="tester")
    assert not (tmp_path / "k2").exists()
    clouds = kaggle_kernel.kernel(_fake_bundle(tmp_path / "c", preset="clouds"), out_dir=tmp_path / "k3", user="tester")
    assert clouds.metadata["competition_sources"] == ["understanding_cloud_organization"]


@pytest.mark.parametrize("layout", ["input/kit-x-bundle", "input/datasets/tester/kit-x-bundle/wheels"])
def test_install_cell_finds_the_wheels_and_installs_offline(tmp_path, monkeypatch, layout):
    """The inlined first cell, run as is with pip replaced: it finds the bundle like find_input and installs with
    --no-index --no-deps."""
    (wheels,) = _mkdirs(tmp_path, layout)
    names = ["kitlib-0.1.0-py3-none-any.whl", "segmentation_models_pytorch-0.5.0-py3-none-any.whl"]
    for name in names:
        (wheels / name).write_bytes(b"")
    calls = []
    monkeypatch.setattr(subprocess, "check_call", calls.append)
    monkeypatch.setenv("KIT_KAGGLE_ROOT", str(tmp_path))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    exec(kaggle_kernel._install_cell("tester/kit-x-bundle", names), {})
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and {"--no-index", "--no-deps"} <= set(cmd)
    assert cmd[cmd.index("--find-links") + 1] == str(wheels) and cmd[-2:] == [str(wheels / n) for n in names]
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    monkeypatch.setenv("KIT_KAGGLE_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="dataset 'tester/kit-x-bundle' is not under .*elsewhere/input"):
        exec(kaggle_kernel._install_cell("tester/kit-x-bundle", names), {})


# ------------------------------------------------------------------------------------------------ push


FAKE_KAGGLE = """\
#!{python}
import os, sys
args = sys.argv[1:]
log = os.environ["FAKE_KAGGLE_LOG"]
with open(log, "a") as f:
    f.write(" ".join(args) + "\\n")
mode = os.environ.get("FAKE_KAGGLE_MODE", "new")
if mode == "offline":
    sys.exit("ConnectionError: HTTPSConnectionPool(host='www.kaggle.com', port=443): Max retries exceeded with url: "
             "/api/v1/datasets/status (Caused by NameResolutionError: Failed to resolve 'www.kaggle.com')")
if args[:2] == ["datasets", "status"]:
    if mode == "new" and sum(line.startswith("datasets status") for line in open(log)) == 1:
        sys.exit("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status/tester/x")
    print("ready")
elif args[:2] == ["datasets", "create"]:
    print("Your private Dataset is being created. Please check progress at https://www.kaggle.com/datasets/tester/x")
elif args[:2] == ["datasets", "version"]:
    print("Dataset version is being created. Please check progress at https://www.kaggle.com/datasets/tester/x")
elif args[:2] == ["kernels", "push"]:
    print("Kernel push error: Notebook not found" if mode == "refused" else
          "Kernel version 1 successfully pushed.  Please check progress at https://www.kaggle.com/code/tester/k")
"""


def kaggle_on_path(tmp_path: Path, monkeypatch, script: str) -> Path:
    """Write ``script`` (formatted with ``python``) as ``tmp_path/bin/kaggle``, first on PATH; dummy credentials, a
    HOME of its own, no token or XDG config from the machine. Returns the bin folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "kaggle"
    cli.write_text(script.format(python=sys.executable))
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    return bin_dir


@pytest.fixture
def push_env(tmp_path, monkeypatch) -> SimpleNamespace:
    """Bundle and kernel folders, a fake ``kaggle`` first on PATH that logs its arguments, dummy credentials."""
    bin_dir = kaggle_on_path(tmp_path, monkeypatch, FAKE_KAGGLE)
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    bundle_dir, kernel_dir = _mkdirs(tmp_path, "bundle", "kernel")
    write_json(bundle_dir / "dataset-metadata.json", kaggle_bundle.dataset_metadata("tester", "kit-x-bundle"))
    write_json(kernel_dir / "kernel-metadata.json", {"id": "tester/kit-x-submit"})
    return SimpleNamespace(bundle=bundle_dir, kernel=kernel_dir, log=tmp_path / "calls.log", bin=bin_dir)


def test_push_creates_a_new_dataset_then_pushes_the_kernel(push_env):
    result = kaggle_push.push(push_env.bundle, push_env.kernel, poll=0)
    calls = push_env.log.read_text().splitlines()
    assert calls == [
        "datasets status tester/kit-x-bundle", f"datasets create -p {push_env.bundle} -r zip",
        "datasets status tester/kit-x-bundle", f"kernels push -p {push_env.kernel}",
    ]  # fmt: skip
    assert "https://www.kaggle.com/code/tester/k" in result.report()


def test_push_versions_an_existing_dataset(push_env, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_MODE", "exists")
    kaggle_push.push(push_env.bundle, message="new weights", wait=0)
    assert push_env.log.read_text().splitlines() == [
        "datasets status tester/kit-x-bundle", f"datasets version -p {push_env.bundle} -m new weights -r zip",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_cli", "the kaggle CLI is not installed: pip install kaggle six"),
        ("no_credentials", "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY"),
        ("offline", "cannot reach Kaggle (kaggle datasets status: ConnectionError: HTTPSConnectionPool"),
        ("refused", "kaggle kernels push failed (exit 0): Kernel push error: Notebook not found"),
    ],
)
def test_push_fails_with_one_clear_line(push_env, monkeypatch, capsys, setup, message):
    if setup == "no_cli":
        monkeypatch.setenv("PATH", str(push_env.bin.parent / "empty"))
        monkeypatch.setattr(sys, "executable", str(push_env.bin.parent / "empty" / "python"))
    elif setup == "no_credentials":
        monkeypatch.delenv("KAGGLE_USERNAME")
        monkeypatch.delenv("KAGGLE_KEY")
    else:
        monkeypatch.setenv("FAKE_KAGGLE_MODE", setup)
    with pytest.raises(kaggle_push.KaggleError) as e:
        kaggle_push.push(push_env.bundle, push_env.kernel, wait=0)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    capsys.readouterr()
    args = ["push", "--bundle", str(push_env.bundle), "--kernel", str(push_env.kernel), "--wait", "0"]
    assert kaggle_push.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_main_help(capsys):
    for argv in (["--help"], ["bundle", "--help"], ["kernel", "--help"], ["push", "--help"]):
        with pytest.raises(SystemExit) as e:
            kaggle_push.main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--packages" in out and "--accelerator" in out and "--dataset-mode" in out


# ------------------------------------------------------------------------------------------------ end to end


def _kaggle_image_venv(tmp: Path) -> Path:
    """A fresh virtual environment standing in for the Kaggle image: it sees every package of this environment
    (symbolic links in a folder on its path) except kitlib and segmentation_models_pytorch. Returns its python."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    here = Path(sysconfig.get_paths()["purelib"])
    image = tmp / "image-site-packages"
    image.mkdir()
    hidden = ("kitlib", "__editable__", "segmentation_models_pytorch", "tests", "__pycache__")
    for entry in here.iterdir():
        if not entry.name.lower().startswith(hidden):
            (image / entry.name).symlink_to(entry)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "kaggle_image.pth").write_text(f"{image}\n")
    return venv / "bin" / "python"


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("PIP_", "VIRTUAL_ENV", "PYTHON", "KIT_", "JUPYTER", "HF_", "CONDA")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # no network: pip is told so, and any HTTP(S) request goes to a closed port
    proxy = "http://127.0.0.1:9"
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1", HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy,
               NO_PROXY="", no_proxy="", **extra)  # fmt: skip
    return env


def _read_only(folder: Path, on: bool = True) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~0o222 if on else mode | stat.S_IWUSR)


@pytest.mark.slow
@pytest.mark.parametrize("channel", ["dataset", "model"])
def test_bundle_and_kernel_run_offline_in_a_fresh_environment(tmp_path, demo_run, kaggle_api, capsys, channel):
    """The kernel runs with the bundle's float16 weights; with the model channel the artifacts are the Kaggle Model
    mounted at ``input/<model>/pytorch/<variation>/<version>`` and the dataset carries the wheels only."""
    from kitlib.postprocess import PostProcess
    from tests.test_train import TINY_CLASSIFIER, train_tiny

    # experiment "eg": "e" whose masks a separate presence classifier "g" gates (20_oof's gate_exp), so the kernel
    # runs both experiments' folds
    root = tmp_path / "artifacts"
    shutil.copytree(demo_run.root / "e", root / "eg")
    train_tiny(demo_run.data, root, "g", **{**TINY_CLASSIFIER, "epochs": 1})
    PostProcess(threshold=[0.4] * 4, min_area=[0] * 4, classifier_threshold=[0.3] * 4, gate_exp="g").to_json(
        root / "eg" / "postprocess.json"
    )
    # bundle + kernel through the command line, as the README says
    out = tmp_path / "runs"
    assert kaggle_push.main(["bundle", "--exp", "eg", "--artifacts-root", str(root), "--user", "tester",
                        "--out", str(out / "bundle"), "--wheel-cache", str(WHEEL_CACHE),
                        "--channel", channel]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    print(printed)  # the bundle's size, shown with pytest -s
    assert "bundle: " in printed and " MB" in printed and "(dataset tester/kit-eg-bundle)" in printed
    assert kaggle_push.main(["kernel", "--bundle", str(out / "bundle"), "--competition", COMPETITION, "--user",
                             "tester", "--out", str(out / "kernel"), "-p", "device", "cpu", "-p", "tta",
                             "hflip", *(["--model-version", "3"] if channel == "model" else [])]) == 0  # fmt: skip
    b = kaggle_bundle.Bundle.read(out / "bundle")
    assert "fp16 check: max |p16 - p32|" in printed and "weights float16" in printed
    assert not any(name.endswith(("last.pt", ".npy")) for name in b.files)
    assert b.wheels[0].startswith("kitlib-") and b.wheels[1].startswith("segmentation_models_pytorch-")
    sent = check_with_kaggle_cli(kaggle_api, out / "kernel", out / "bundle")
    assert sent["kernel"].enable_internet is False and list(sent["kernel"].dataset_data_sources) == [b.dataset_id]
    assert list(sent["kernel"].competition_data_sources) == [COMPETITION]
    assert list(sent["kernel"].model_data_sources) == ([b.model_source(3)] if channel == "model" else [])

    # /kaggle: the competition's test images one level deep, the bundle two levels deep, both read-only
    kroot = tmp_path / "kaggle"
    comp = kroot / "input" / "competitions" / COMPETITION
    shutil.copytree(demo_run.data / "test_images", comp / "test_images")
    shutil.copy2(demo_run.data / "sample_submission.csv", comp)
    shutil.copytree(out / "bundle", kroot / "input" / "datasets" / "tester" / "kit-eg-bundle")
    if channel == "model":
        assert not any(name.endswith("best.pt") for name in b.files)
        shutil.copytree(b.model["path"], kroot / "input" / "kit-demo" / "pytorch" / "eg" / "3")
    _read_only(kroot / "input")
    (kroot / "working").mkdir()

    python = _kaggle_image_venv(tmp_path)
    probe = "import importlib.util as u, json; print(json.dumps({m: bool(u.find_spec(m)) for m in %r}))"
    mods = ["kitlib", "segmentation_models_pytorch", "torch", "timm", "albumentations", "papermill", "ipykernel"]
    env = _clean_env(KIT_KAGGLE_ROOT=str(kroot), JUPYTER_PATH=str(tmp_path / "jupyter"), HOME=HOME)
    seen = subprocess.run([python, "-c", probe % mods], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert json.loads(seen.stdout) == {m: m not in ("kitlib", "segmentation_models_pytorch") for m in mods}
    spec = tmp_path / "jupyter" / "kernels" / "kaggle-image" / "kernel.json"
    write_json(spec, {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                      "display_name": "Kaggle image (test)", "language": "python"})  # fmt: skip

    executed = tmp_path / "executed.ipynb"
    proc = subprocess.run(
        [python, "-m", "papermill", str(out / "kernel" / "40_submit.ipynb"), str(executed), "-k", "kaggle-image",
         "--cwd", str(kroot / "working"), "--no-progress-bar"],
        cwd=kroot / "working", env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    _read_only(kroot / "input", on=False)
    assert proc.returncode == 0, f"the kernel failed; see {executed}\n{proc.stderr[-3000:]}"

    from kitlib.submit import validate_submission

    summary = validate_submission(
        kroot / "working" / "submission.csv", demo_run.data / "sample_submission.csv", PRESETS["demo"]
    )
    assert summary["images"] == 5 and summary["rows"] == 20
    nb = read_json(executed)
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    site = python.parent.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (line,) = [line for line in text.splitlines() if line.startswith("kitlib 0.1.0 from ")]
    assert line == f"kitlib 0.1.0 from {site / 'kitlib' / '__init__.py'}" and str(REPO) not in line
    assert f"data_dir={comp}" in text and "eg/fold0/best.pt" in text and "eg/fold1/best.pt" in text
    assert "gate: ['g/fold0/best.pt', 'g/fold1/best.pt']" in text  # the classifier ran in the kernel
    if channel == "model":  # the weights came from the mounted model version
        assert f"artifacts_root={kroot / 'input/kit-demo/pytorch/eg/3/artifacts'}" in text
    assert (site / "segmentation_models_pytorch").is_dir()
    # kitlib.config from a wheel outside any git checkout: provenance without a commit, paths as injected
    config = read_json(kroot / "working" / "submission_config.json")
    assert config["run"]["git_commit"] is None and config["params"]["data_dir"] == str(comp)


def test_push_output_check_tells_errors_from_slugs_that_say_error():
    """A dataset named "error-study" uploads fine: only the CLI's "... error: ..." lines are failures."""
    args = ["kernels", "push"]
    ok = (
        "Kernel version 1 successfully pushed.  Please check progress at https://www.kaggle.com/code/me/kit-error-study"
    )
    assert kaggle_push._check(0, ok, args) == ok
    with pytest.raises(kaggle_push.KaggleError, match="kaggle kernels push failed"):
        kaggle_push._check(0, "Kernel push error: Notebook not found", args)


def test_a_users_preset_file_travels_in_the_bundle(tmp_path, demo_run, monkeypatch):
    """A run trained with a preset file (a user's own competition): the bundle carries the resolved preset as
    artifacts/preset.yaml, its manifest names that file, and the kernel's paths cell points ``preset`` at it."""
    import yaml

    from kitlib import kaggle_kernel, train
    from kitlib.folds import make_folds, save_folds
    from kitlib.formats import load_competition
    from kitlib.presets import PRESETS, get_preset, preset_fields
    from tests.test_train import TINY, train_config

    monkeypatch.setattr(kaggle_bundle, "_build_kitlib_wheel", _fake_kitlib_wheel)
    fields = {**preset_fields(PRESETS["demo"]), "name": "my_clouds"}
    (tmp_path / "my_clouds.yaml").write_text(yaml.safe_dump(fields))
    root = tmp_path / "artifacts"
    folds = make_folds(load_competition(PRESETS["demo"], demo_run.data), PRESETS["demo"], n_folds=2, seed=0)
    save_folds(folds, root / "mine" / "folds.csv")
    for fold in (0, 1):
        train.train_fold(train_config(str(tmp_path / "my_clouds.yaml"), **{**TINY, "epochs": 1}, exp="mine",
                                      fold=fold, data_dir=str(demo_run.data), artifacts_root=str(root)))  # fmt: skip
    (tmp_path / "my_clouds.yaml").unlink()  # the bundle needs the saved fields, not the file
    b = kaggle_bundle.bundle(exp="mine", artifacts_root=root, out_dir=tmp_path / "out", user="tester", packages=())
    assert b.preset == kaggle_bundle.PRESET_FILE and f"artifacts/{kaggle_bundle.PRESET_FILE}" in b.files
    carried = get_preset(str(b.path / "artifacts" / kaggle_bundle.PRESET_FILE))
    assert carried.name == "my_clouds" and carried.classes == PRESETS["demo"].classes
    cell = kaggle_kernel._paths_cell(b.dataset_id, "some-competition", b.preset)
    assert "preset = str(Path(artifacts_root) / 'preset.yaml')" in cell
    assert "preset =" not in kaggle_kernel._paths_cell(b.dataset_id, "c", "demo")
    assert_no_local_details(b.path, tmp_path)  # the preset file's path is not shown either
