"""kitlib.io, kitlib.config and kitlib.presets: atomic writes, provenance, offline switch, light import, the stage
config mechanism (typed parameters from a notebook's cell), preset checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kitlib.io import atomic_path, project_path, project_root, read_json, run_info, save_npy, write_json
from kitlib.offline import set_offline
from kitlib.presets import PRESETS, Preset, get_preset
from kitlib.stages import EdaConfig
from tests.conftest import REPO


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("killed")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_json_and_npy(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": np.float32(0.5), "arr": np.arange(3), "p": tmp_path})
    assert read_json(path) == {"x": 0.5, "arr": [0, 1, 2], "p": str(tmp_path)}
    (tmp_path / "bad.json").write_text('{"a": 1,,}')
    with pytest.raises(ValueError, match=r"bad.json: invalid JSON at line 1"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json(tmp_path / "nope.json")
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    np.testing.assert_array_equal(np.load(save_npy(tmp_path / "x.npy", arr)), arr)


def test_save_config_records_provenance(tmp_path):
    cfg = json.loads(EdaConfig.from_notebook(n_folds=3).save(tmp_path / "config.json", note="x").read_text())
    assert cfg["params"]["n_folds"] == 3 and cfg["stage"] == "00_eda" and cfg["note"] == "x"
    assert cfg["types"]["n_folds"] == "int" and cfg["types"]["label_file"] == "str"
    assert cfg["run"]["versions"]["numpy"] == np.__version__
    assert cfg["run"]["python"] == sys.version.split()[0]
    assert "git_commit" in run_info()


def test_set_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    set_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    set_offline(False)
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_import_is_light():
    """Importing the data-layer modules pulls in neither torch nor the network stack."""
    code = (
        "import sys, kitlib, kitlib.rle, kitlib.presets, kitlib.config, kitlib.stages, kitlib.formats, kitlib.folds; "
        "kitlib.stages.EdaConfig.from_notebook(); "
        "heavy = [m for m in ('torch', 'timm', 'segmentation_models_pytorch', 'huggingface_hub', 'requests') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("KIT_ROOT", raising=False)
    assert project_root(REPO / "notebooks") == REPO  # Jupyter opened in notebooks/
    assert project_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    assert project_path("data/demo") == tmp_path.resolve() / "data" / "demo"
    assert project_path("/abs/x") == project_path("/abs/x").resolve()


def test_presets():
    assert set(PRESETS) >= {"clouds", "severstal", "dacon_building", "masks", "coco", "cassava", "demo"}
    with pytest.raises(KeyError, match=r"unknown preset 'cloud'; options: \['cassava', 'clouds'"):
        get_preset("cloud")
    clouds = get_preset("clouds")
    assert get_preset(clouds) is clouds
    assert (clouds.rle_order, clouds.submission_size, clouds.num_classes) == ("F", (350, 525), 4)
    dacon = get_preset("dacon_building")
    assert (dacon.rle_order, dacon.empty_token, dacon.task) == ("C", "-1", "binary")
    coco = get_preset("coco")
    assert coco.classes[:2] == ("Background", "UNKNOWN") and len(coco.target_classes) == 11 and coco.num_classes == 12
    assert get_preset("cassava").target_classes == get_preset("cassava").classes
    with pytest.raises(ValueError, match="binary task has exactly one class"):
        clouds.replace(task="binary")
    with pytest.raises(ValueError, match="rle_order"):
        clouds.replace(rle_order="X")
    with pytest.raises(TypeError):
        clouds.replace(colour="red")
    assert isinstance(clouds.replace(submission_size=None), Preset)


def test_a_config_of_an_older_kit_loads_with_the_new_parameters_defaults(tmp_path):
    """A fold's config.json written before a parameter existed: the parameter takes its declared default (None: the
    recipe's value), so the run id and the rebuilt config are those of the same run today."""
    from kitlib.stages import TrainConfig

    cfg = TrainConfig.from_notebook(preset="demo")
    cfg.save(tmp_path / "config.json")
    data = read_json(tmp_path / "config.json")
    for name in ("optimizer", "swa_epochs", "tta_weight", "recipe"):
        del data["params"][name], data["types"][name]
    write_json(tmp_path / "old.json", data)
    old = TrainConfig.load(tmp_path / "old.json")
    assert (old.optimizer, old.swa_epochs, old.tta_weight, old.recipe) == ("adamw", 0, None, "")
    assert old.run_id() == cfg.run_id()


def test_saved_paths_are_relative_to_the_project_root_and_old_absolute_ones_still_load(tmp_path, monkeypatch):
    """Issue 15 item 10: data_dir and artifacts_root were saved as absolute paths (a home folder in every config).
    Under the project root they are saved relative to it and resolve in another checkout; older configs with
    absolute paths, and paths outside the root, load as they are; a training run keeps its run id."""
    from kitlib.stages import OofConfig, TrainConfig

    data, root = tmp_path / "data" / "demo", tmp_path / "artifacts"
    oof = OofConfig.from_notebook(preset="demo", exp="e", data_dir=str(data), artifacts_root=str(root))
    train = TrainConfig.from_notebook(preset="demo", exp="e", data_dir=str(data), artifacts_root=str(root))
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    saved = read_json(oof.save())
    assert saved["params"]["data_dir"] == "data/demo" and saved["params"]["artifacts_root"] == "artifacts"
    loaded = OofConfig.load(root / "e" / "oof_config.json")
    assert loaded.data_path == data and loaded.exp_dir == root / "e"
    path = train.save(tmp_path / "config.json", run_id=train.run_id())
    assert read_json(path)["params"]["data_dir"] == "data/demo"
    assert TrainConfig.load(path).run_id() == train.run_id() == read_json(path)["run_id"]
    monkeypatch.setenv("KIT_ROOT", str(tmp_path / "clone"))  # the same files in another checkout
    assert OofConfig.load(root / "e" / "oof_config.json").data_path == tmp_path / "clone" / "data" / "demo"
    old = {**saved, "params": {**saved["params"], "data_dir": str(data), "artifacts_root": str(root)}}
    write_json(tmp_path / "old.json", old)  # as the kit wrote it before
    assert OofConfig.load(tmp_path / "old.json").data_path == data
    assert read_json(oof.save(tmp_path / "o.json"))["params"]["data_dir"] == str(data)  # not under this root
