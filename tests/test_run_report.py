"""run_all.sh's quiet output: the headline of each stage read from hand-written artifacts (known answers), the error
of a failed notebook, and scripts/run_notebook.py executing a tiny notebook without the known noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kitlib.io import write_json
from kitlib.run_report import Artifacts, headline, main, notebook_error, stage_of
from tests.conftest import REPO

# What papermill, ipykernel and setuptools printed before run_all.sh was made quiet (issue 14); none may come back.
NOISE = ("the file is not specified with any extension", "running over TCP without encryption", "Editable installation")


@pytest.mark.parametrize(
    ("stem", "stage"),
    [("00_eda", "00_eda"), ("10_train_fold3", "10_train"), ("40_submit_probs", "40_submit"),
     ("30_ensemble", "30_ensemble")],
)  # fmt: skip
def test_stage_of(stem, stage):
    assert stage_of(stem) == stage


def test_stage_of_rejects_another_name():
    with pytest.raises(ValueError, match="50_x"):
        stage_of("50_x")
    with pytest.raises(ValueError, match="10_trainer"):
        stage_of("10_trainer")  # a prefix alone is not the stage


def test_headlines_from_hand_written_artifacts(tmp_path):
    exp = tmp_path / "exp"
    (exp / "fold1").mkdir(parents=True)
    # 7 images: fold 0 has 3, fold 1 has 4; one near-duplicate group of two (dup_group -1: no group)
    (exp / "folds.csv").write_text("image_id,fold\n" + "".join(f"i{k}.png,{0 if k < 3 else 1}\n" for k in range(7)))
    (exp / "duplicates.csv").write_text("image_id,phash,dup_group,group_size\na,f,0,2\nb,f,0,2\nc,e,-1,1\n")
    assert headline("00_eda", Artifacts(exp)) == "7 images, 2 folds (3, 4), 1 near-duplicate groups"

    done = {"best_epoch": 4, "best_score": 0.61234, "monitor": "valid_dice",
            "scores": {"dice": 0.55556, "dice_per_class": {"a": 0.5}, "pixel_error": 0.1, "n_images": 4}}  # fmt: skip
    write_json(exp / "fold1" / "done.json", done)
    assert headline("10_train", Artifacts(exp, fold_dir=exp / "fold1")) == (
        "fold 1 dice 0.5556 on 4 held-out images (best valid_dice 0.6123 at epoch 5)"
    )

    write_json(exp / "cv.json", {"metric": "dice", "cv": 0.5, "cv_postprocessed": 0.75, "postprocess": "threshold"})
    assert headline("20_oof", Artifacts(exp)) == "CV dice 0.5000, post-processed 0.7500 (threshold)"
    write_json(exp / "cv.json", {"metric": "accuracy", "cv": 0.875, "cv_postprocessed": 0.875, "postprocess": "none"})
    assert headline("20_oof", Artifacts(exp)) == "CV accuracy 0.8750"

    blend = tmp_path / "blend"
    blend.mkdir()
    write_json(blend / "cv.json", {"metric": "accuracy", "cv": 0.9})
    write_json(blend / "weights.json", {"exps": ["a", "b"], "weights": [0.25, 0.75],
                                        "stacking": {"model": "logreg", "cv": 0.95, "chosen": True}})  # fmt: skip
    assert headline("30_ensemble", Artifacts(exp, out_dir=blend)) == (
        "blend CV accuracy 0.9000; weights a 0.25, b 0.75; stacking logreg CV 0.9500 (chosen)"
    )

    submission = tmp_path / "submission.csv"
    submission.write_text('image_id,label\nx.png,1\n"y,1.png",2\nz.png,0\n')  # a quoted comma is one field
    artifacts = Artifacts(exp, submission_file=submission, source_dir=blend, save_probs=True)
    assert headline("40_submit", artifacts) == (
        f"3 rows written to {submission}; test probabilities {blend / 'test_probs.npy'}"
    )


def test_headline_fails_on_missing_or_scoreless_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        headline("20_oof", Artifacts(tmp_path))
    (tmp_path / "fold0").mkdir()
    write_json(tmp_path / "fold0" / "done.json", {"scores": {"n_images": 3}})
    with pytest.raises(ValueError, match="no score"):
        headline("10_train", Artifacts(tmp_path, fold_dir=tmp_path / "fold0"))
    with pytest.raises(KeyError, match="options"):
        headline("50_x", Artifacts(tmp_path))


def test_artifacts_are_the_stage_configs_folders(tmp_path):
    """The five names the report reads give the folders the stage configs compute (kitlib.stages)."""
    from kitlib.stages import EnsembleConfig, SubmitConfig, TrainConfig

    common = {"exp": "e1", "preset": "demo", "data_dir": str(tmp_path), "artifacts_root": str(tmp_path / "art")}
    train = {**common, "fold": 2}
    assert Artifacts.from_params("10_train", train).fold_dir == TrainConfig.from_notebook(**train).fold_dir
    ens = {**common, "exps": "e1", "ensemble_name": "e1/blend"}
    assert Artifacts.from_params("30_ensemble", ens).out_dir == EnsembleConfig.from_notebook(**ens).out_dir
    for extra in ({}, {"submission_path": str(tmp_path / "s.csv"), "ensemble": "e1/blend"}):
        cfg = SubmitConfig.from_notebook(**common, **extra)
        got = Artifacts.from_params("40_submit", {**common, **extra})
        assert (got.submission_file, got.source_dir) == (cfg.submission_file, cfg.source_dir)
        assert got.exp_dir == cfg.exp_dir
    with pytest.raises(KeyError, match="'fold' is missing"):
        Artifacts.from_params("10_train", common)


def _notebook(path, outputs):
    cell = {"cell_type": "code", "metadata": {}}
    cells = [{**cell, "execution_count": 1, "source": "x = 1", "outputs": []},
             {**cell, "execution_count": 2, "source": "f()", "outputs": outputs}]  # fmt: skip
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_notebook_error_reads_the_cell_that_raised(tmp_path):
    error = {"output_type": "error", "ename": "ValueError", "evalue": "bad row 3\nsecond line", "traceback": []}
    nb = _notebook(tmp_path / "x.ipynb", [{"output_type": "stream", "name": "stdout", "text": "hi"}, error])
    assert notebook_error(nb) == ["In [2]: ValueError: bad row 3", "second line"]
    assert notebook_error(_notebook(tmp_path / "ok.ipynb", [])) == []  # no error output
    assert notebook_error(tmp_path / "absent.ipynb") == []


def test_cli_headline_names_the_missing_file(tmp_path, capsys):
    params = tmp_path / "20_oof.yaml"
    params.write_text(f"exp: e1\nartifacts_root: {tmp_path}\n")
    assert main(["headline", "20_oof", str(params)]) == 1
    assert "error: 20_oof: no headline: " in capsys.readouterr().err
    write_json(tmp_path / "e1" / "cv.json", {"metric": "dice", "cv": 0.25})
    assert main(["headline", "20_oof", str(params)]) == 0
    assert capsys.readouterr().out == "CV dice 0.2500\n"


NOTEBOOK = """# %% tags=["parameters"]
x: int = 1

# %%
import sys
print("out", x)
print("err", x, file=sys.stderr)

# %%
if x > 2:
    raise ValueError(f"x is {x}")
"""


@pytest.mark.parametrize("x", [1, 5])
def test_run_notebook_script(tmp_path, x):
    """scripts/run_notebook.py: the cells' stdout/stderr in its output, none of the known noise, status 1 and the
    executed notebook holding the error when a cell raises."""
    source = tmp_path / "nb.py"
    source.write_text(NOTEBOOK)
    params = tmp_path / ".params" / "nb.yaml"
    params.parent.mkdir()
    params.write_text(f"x: {x}\n")
    out = tmp_path / "nb.ipynb"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "run_notebook.py"), str(source), str(out),
                             str(params)], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    printed = result.stdout + result.stderr
    assert f"out {x}" in result.stdout and f"err {x}" in result.stderr
    assert not [n for n in NOISE if n in printed], printed
    assert params.with_suffix(".ipynb").is_file()  # the input notebook, kept beside its parameters
    if x > 2:
        assert result.returncode == 1 and "PapermillExecutionError" in result.stderr
        assert notebook_error(out) == ["In [4]: ValueError: x is 5"]  # papermill injected cell 3, the parameters
    else:
        assert result.returncode == 0, printed
        assert notebook_error(out) == []
