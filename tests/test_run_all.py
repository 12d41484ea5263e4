"""run_all.sh, the main job: runs the notebooks on the demo, resumes, and rejects bad options."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KIT_VENV=os.environ.get("VIRTUAL_ENV") or str(REPO / ".venv"))
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=900)  # fmt: skip


@pytest.fixture
def exp():
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    yield name
    for root in ("runs", "artifacts"):
        shutil.rmtree(REPO / root / name, ignore_errors=True)


def test_run_all_demo_then_resume(exp):
    first = _run("--exp", exp, "--folds", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (REPO / "runs" / exp / "00_eda.ipynb").is_file()
    assert (REPO / "artifacts" / exp / "folds.csv").is_file()
    second = _run("--exp", exp, "--folds", "3")
    assert second.returncode == 0 and "00_eda: done already, skipped" in second.stdout
    # a changed parameter invalidates the marker: the notebook runs again
    third = _run("--exp", exp, "--folds", "4")
    assert third.returncode == 0 and "00_eda: running" in third.stdout


def test_run_all_fails_fast_with_the_notebook_path(exp, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("Image_Label,EncodedPixels\nx.jpg_Fish,1 2\n")
    result = _run("--exp", exp, "--preset", "clouds", "--data", str(bad))
    assert result.returncode == 1
    assert f"FAILED: 00_eda; the executed notebook with the error is runs/{exp}/00_eda.ipynb" in result.stderr
    assert not (REPO / "runs" / exp / ".done" / "00_eda").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bogus"], "unknown option --bogus"), (["--preset", "masks"], "--data DIR is required"),
     (["--preset", "masks", "--data", "/nonexistent"], "data folder not found")],
)  # fmt: skip
def test_run_all_rejects_bad_options(args, message):
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr
