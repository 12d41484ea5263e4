"""Real papermill runs of the notebooks on tiny data: the demo and the real samples in ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run_notebook(name: str, out: Path, **params) -> dict:
    """jupytext -> papermill with the parameters as a typed YAML file, as run_all.sh does; returns the executed
    notebook (raises on a failing cell). Paths are passed as strings."""
    params_file = out.with_name(out.stem + ".params.yaml")
    params_file.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in params.items()}))
    args = ["-f", str(params_file)]
    bindir = Path(sys.executable).parent
    convert = subprocess.run([str(bindir / "jupytext"), "--to", "ipynb", "--output", "-", str(REPO / "notebooks" /
                              f"{name}.py")], check=True, capture_output=True)  # fmt: skip
    proc = subprocess.run(
        [str(bindir / "papermill"), "-", str(out), "-k", "python3", "--cwd", str(REPO), "--no-progress-bar", *args],
        input=convert.stdout, capture_output=True,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name} failed; see {out}\n{proc.stderr.decode()[-3000:]}"
    return json.loads(out.read_text())


def _images_shown(nb: dict) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_eda_demo(tmp_path):
    from kitlib.demo import make_demo

    data = make_demo(tmp_path / "demo")
    nb = run_notebook("00_eda", tmp_path / "eda.ipynb", preset="demo", data_dir=data, exp="t",
                      artifacts_root=tmp_path / "artifacts")  # fmt: skip
    assert _images_shown(nb) >= 5  # sizes, label summary, co-occurrence, samples, fold balance
    folds = pd.read_csv(tmp_path / "artifacts" / "t" / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (tmp_path / "artifacts" / "t" / "eda_config.json").is_file()
    assert (tmp_path / "artifacts" / "t" / "duplicates.csv").is_file()  # near-duplicates (none in the demo)
    assert (tmp_path / "artifacts" / "cache" / "phash.csv").is_file()
    assert len(pd.read_csv(tmp_path / "artifacts" / "cache" / "decoded.csv")) == 100  # 80 train + 20 test decoded


@pytest.mark.parametrize(
    ("sample", "params"),
    [
        ("clouds_sample", dict(preset="clouds", label_file="train_small.csv", n_folds=0)),
        ("dacon_building_sample", dict(preset="dacon_building", drop_invalid=True, n_folds=3)),
        ("isbi2012_membrane", dict(preset="masks", n_folds=4)),
        ("cassava_sample", dict(preset="cassava", drop_missing=True, n_folds=2)),
    ],
)
def test_eda_real_samples(tmp_path, sample, params):
    from tests.conftest import shared_sample

    data = shared_sample(sample)
    nb = run_notebook("00_eda", tmp_path / "eda.ipynb", data_dir=data, exp="t", artifacts_root=tmp_path / "a",
                      **params)  # fmt: skip
    assert _images_shown(nb) >= 3
    if params["n_folds"]:
        folds = pd.read_csv(tmp_path / "a" / "t" / "folds.csv")
        assert folds["fold"].nunique() == params["n_folds"]


def test_eda_fails_loudly_on_bad_data(tmp_path):
    """A malformed row fails the papermill run (non-zero exit) with the offending id in the error."""
    from tests.conftest import shared_sample

    data = shared_sample("dacon_building_sample")
    with pytest.raises(AssertionError, match="TRAIN_0003"):
        run_notebook("00_eda", tmp_path / "eda.ipynb", preset="dacon_building", data_dir=data, n_folds=0,
                     artifacts_root=tmp_path / "a")  # fmt: skip


def test_eda_fails_on_a_truncated_image_naming_it(tmp_path):
    """The hostile probe of issue 15: the demo's d0001.jpg cut to a third of its bytes (its header intact, so the
    table reads) fails 00_eda's decode check, naming the file, with the near-duplicate search (whose hashing decodes
    the train images too) off."""
    from kitlib.demo import make_demo

    data = make_demo(tmp_path / "demo")
    image = data / "train_images" / "d0001.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    with pytest.raises(AssertionError, match=r"1 of 100 image file\(s\) truncated or corrupt: .*d0001.jpg"):
        run_notebook("00_eda", tmp_path / "eda.ipynb", preset="demo", data_dir=data, exp="t", dup_distance=-1,
                     artifacts_root=tmp_path / "artifacts")  # fmt: skip


def test_a_parameter_of_the_wrong_type_or_an_unknown_name_fails_the_notebook(tmp_path):
    """The config cell checks what papermill injected: the run fails naming the parameter, the value and the type
    (papermill itself only warns about an unknown name)."""
    with pytest.raises(AssertionError, match=r"parameter 'n_folds' = 'three' \(str\) is not int"):
        run_notebook("00_eda", tmp_path / "a.ipynb", n_folds="three", artifacts_root=tmp_path / "a")
    with pytest.raises(AssertionError, match=r"unknown parameter\(s\) 'n_fold' = 3 \(did you mean n_folds\?\)"):
        run_notebook("00_eda", tmp_path / "b.ipynb", n_fold=3, artifacts_root=tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing was written
