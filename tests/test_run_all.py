"""run_all.sh, the main job: runs the notebooks on the demo, resumes, and rejects bad options."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kitlib.presets import PRESETS
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _env() -> dict:
    return dict(os.environ, KIT_VENV=os.environ.get("VIRTUAL_ENV") or str(REPO / ".venv"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, env=_env(),
                          timeout=900)  # fmt: skip


def _line(stem: str) -> str:
    """The start of run_all's one line for a notebook: ``[run_all] 10_train_fold0:  `` (the stem padded to a column)."""
    return f"[run_all] {stem + ':':<16} "


# What papermill, ipykernel and setuptools printed for every notebook before run_all.sh was quiet (issue 14).
NOISE = ("the file is not specified with any extension", "running over TCP without encryption", "Editable installation",
         "Warning:", "Traceback")  # fmt: skip


def _cleanup(name: str) -> None:
    for root in ("runs", "artifacts"):
        shutil.rmtree(REPO / root / name, ignore_errors=True)


@pytest.fixture
def exp():
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    yield name
    _cleanup(name)


@pytest.fixture
def exp2():
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    yield name
    _cleanup(name)


# Tiny settings for every notebook (papermill -f): a 24-image demo trains 2 folds in seconds on a CPU.
TINY_YAML = """encoder_name: tu-test_resnet.r160_in1k
height: 64
width: 96
batch_size: 4
epochs: 3
device: cpu
num_workers: 0
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(demo data folder, params YAML)."""
    from kitlib.demo import make_demo

    root = tmp_path_factory.mktemp("run_all_tiny")
    data = make_demo(root / "data", n_train=12, n_test=4, height=64, width=96)
    params = root / "tiny.yaml"
    params.write_text(TINY_YAML)
    return data, params


def test_run_all_demo_then_resume(exp):
    first = _run("--exp", exp, "--folds", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (REPO / "runs" / exp / "00_eda.ipynb").is_file()
    assert (REPO / "artifacts" / exp / "folds.csv").is_file()
    second = _run("--exp", exp, "--folds", "3")
    assert second.returncode == 0 and _line("00_eda") + "done already, skipped; 80 images, 3 folds" in second.stdout
    # a changed parameter invalidates the marker: the notebook runs again
    third = _run("--exp", exp, "--folds", "4")
    assert third.returncode == 0 and _line("00_eda") + "done in" in third.stdout


def test_run_all_fails_fast_with_the_notebook_path(exp, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("Image_Label,EncodedPixels\nx.jpg_Fish,1 2\n")
    result = _run("--exp", exp, "--preset", "clouds", "--data", str(bad))
    assert result.returncode == 1
    assert f"FAILED: 00_eda; the executed notebook with the error is runs/{exp}/00_eda.ipynb" in result.stderr
    assert not (REPO / "runs" / exp / ".done" / "00_eda").exists()
    # the failing cell's exception, read from the executed notebook, and the log that holds the whole traceback
    assert "CompetitionDataError: 1 of 1 images listed in" in result.stderr and "x.jpg" in result.stderr
    log = REPO / "runs" / exp / "logs" / "00_eda.log"
    assert f"full log: runs/{exp}/logs/00_eda.log" in result.stderr and "Traceback" in log.read_text()
    assert result.stdout == ""  # no line for a notebook that did not finish


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bogus"], "unknown option --bogus"), (["--preset", "masks"], "--data DIR is required"),
     (["--preset", "masks", "--data", "/nonexistent"], "data folder not found"),
     (["--gpus", "a,b"], "--gpus takes comma-separated GPU ids"),
     (["--preset", "/nonexistent/mine.yaml"], "preset file not found"),
     (["--preset", "cocoa"], "unknown preset 'cocoa'"),
     (["--until", "50_x"], "--until takes 00_eda"),
     (["--preset", "demo_classify", "--label-noise", "1.5"], "--label-noise takes a fraction in (0, 1)"),
     (["--preset", "masks", "--data", "/x", "--label-noise", "0.3"], "takes no --data")],
)  # fmt: skip
def test_run_all_rejects_bad_options(args, message):
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr


def _start(*args: str) -> subprocess.Popen:
    """run_all.sh started in a session of its own, output discarded (to be killed by ``_kill``)."""
    return subprocess.Popen(["bash", str(REPO / "run_all.sh"), *args], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL run_all.sh's process group and every descendant (the kernel too), as a crash of the machine would."""
    tree = _tree(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _tree(pid: int) -> list[int]:
    """pid and its descendants (the papermill kernels start sessions of their own, outside the process group)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [p for child in found for p in _tree(int(child))]


def test_run_all_tiny_end_to_end_and_killed_mid_fold(tiny, exp, exp2):
    """An uninterrupted tiny run writes a valid submission and prints the submission path; a run SIGKILLed while
    fold 1 trains (once its last.pt exists), then while 20_oof writes, then in 40_submit, resumes each time on the
    rerun to the same submission bytes and cv.json, without the kit's temporary files."""
    from kitlib.submit import validate_submission

    data, params = tiny
    args = ("--data", str(data), "--folds", "2", "--params", str(params))
    reference = _run("--exp", exp, *args)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert reference.stderr == ""  # quiet: no papermill banner, kernel warning or unknown parameter (each notebook
    # gets the parameters it declares); what the notebooks printed is in their logs, without the known noise
    stems = ["00_eda", "10_train_fold0", "10_train_fold1", "20_oof", "30_ensemble", "40_submit"]
    lines = reference.stdout.splitlines()
    assert [line.split(":")[0].removeprefix("[run_all] ") for line in lines[: len(stems)]] == stems
    assert all(line.startswith(_line(stem) + "done in ") for line, stem in zip(lines, stems, strict=False))
    assert "; 12 images, 2 folds (6, 6)" in lines[0] and "; fold 1 dice 0." in lines[2] and "CV dice 0." in lines[3]
    assert lines[5].endswith(f"; 16 rows written to runs/{exp}/submission.csv")  # 4 test images x 4 classes
    summary = ["[run_all] finished:", f"[run_all] CV (artifacts/{exp}/cv.json):", "[run_all] submission:",
               "[run_all] demo test Dice "]  # fmt: skip
    assert len(lines) == len(stems) + len(summary)
    assert all(line.startswith(start) for line, start in zip(lines[len(stems) :], summary, strict=True)), lines
    for stem in stems:
        log = (REPO / "runs" / exp / "logs" / f"{stem}.log").read_text()
        assert "Executing notebook with kernel" in log and not [n for n in NOISE if n in log], (stem, log[-3000:])
    submission = REPO / "runs" / exp / "submission.csv"
    assert f"[run_all] submission: runs/{exp}/submission.csv" in reference.stdout
    assert validate_submission(submission, data / "sample_submission.csv", PRESETS["demo"])["images"] == 4

    proc = _start("--exp", exp2, *args)
    fold1 = REPO / "artifacts" / exp2 / "fold1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not (fold1 / "last.pt").exists():
        time.sleep(0.05)
    _kill(proc)
    assert (fold1 / "last.pt").exists() and not (fold1 / "done.json").exists(), "killed too late (or too early)"
    assert not (REPO / "runs" / exp2 / ".done" / "10_train_fold1").exists()

    rerun = _run("--exp", exp2, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _line("10_train_fold0") + "done already, skipped" in rerun.stdout
    assert _line("10_train_fold1") + "done in" in rerun.stdout
    assert (REPO / "runs" / exp2 / "submission.csv").read_bytes() == submission.read_bytes()

    # a kill in a later notebook resumes too: killed while 20_oof writes the gathered OOF (the kit's temporary files
    # left behind, issue 15), then while 40_submit's kernel runs; the rerun redoes the notebooks from there
    runs, artifacts = REPO / "runs" / exp2, REPO / "artifacts" / exp2
    for stem, mark in (("20_oof", "kitlib.predictions: gathered"), ("40_submit", "Executing notebook with kernel")):
        for later in ("20_oof", "30_ensemble", "40_submit")[("20_oof", "30_ensemble", "40_submit").index(stem) :]:
            (runs / ".done" / later).unlink()
        log = runs / "logs" / f"{stem}.log"
        log.unlink()
        proc = _start("--exp", exp2, *args)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None and not (log.exists() and mark in log.read_text()):
            time.sleep(0.02)
        time.sleep(0.0 if stem == "20_oof" else 2.0)  # 40_submit: inside the kernel's imports or its cells
        _kill(proc)
        assert not (runs / ".done" / stem).exists(), f"{stem}: killed too late"
        rerun = _run("--exp", exp2, *args)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert _line(stem) + "done in" in rerun.stdout, rerun.stdout
        assert (runs / "submission.csv").read_bytes() == submission.read_bytes(), stem
        cv = (REPO / "artifacts" / exp / "cv.json").read_text().replace(exp, exp2)  # the same but for the name
        assert (artifacts / "cv.json").read_text() == cv, stem
        assert not [p for p in artifacts.rglob("*") if ".kit-tmp-" in p.name], stem  # swept at the stage's start


def test_run_all_presence_classifier_gates_another_experiment(tiny, exp, exp2):
    """--until 20_oof trains and analyses a presence classifier; --gate-exp hands it to the segmentation
    experiment's 20_oof and 30_ensemble, and 40_submit still writes a valid submission."""
    from kitlib.io import read_json
    from kitlib.submit import validate_submission

    data, params = tiny
    cls_params = params.with_name("tiny_cls.yaml")
    cls_params.write_text(TINY_YAML + "arch: classifier\nmodel_name: test_resnet.r160_in1k\n")
    cls = _run("--exp", exp, "--data", str(data), "--folds", "2", "--params", str(cls_params), "--until", "20_oof")
    assert cls.returncode == 0, cls.stderr[-3000:]
    assert "stopped after 20_oof (--until)" in cls.stdout and "30_ensemble" not in cls.stdout
    assert "unknown parameter" not in cls.stderr  # `arch` reaches 10_train only, not 00_eda or 20_oof
    assert read_json(REPO / "artifacts" / exp / "cv.json")["metric"] == "presence_f1"
    seg = _run("--exp", exp2, "--data", str(data), "--folds", "2", "--params", str(params), "--gate-exp", exp)
    assert seg.returncode == 0, seg.stderr[-3000:]
    assert f"classifier {exp}" in (REPO / "runs" / exp2 / "20_oof.ipynb").read_text()
    assert f"classifier {exp}" in (REPO / "runs" / exp2 / "30_ensemble.ipynb").read_text()
    submission = REPO / "runs" / exp2 / "submission.csv"
    assert validate_submission(submission, data / "sample_submission.csv", PRESETS["demo"])["images"] == 4
    assert "(hidden test_truth.csv)" in seg.stdout


def test_run_all_refuses_a_parameter_no_notebook_declares(tiny, exp):
    """A typo in --params (``epoch``) fails before any notebook runs, naming it and the close match."""
    data, params = tiny
    typo = params.with_name("typo.yaml")
    typo.write_text(TINY_YAML + "epoch: 3\n")
    result = _run("--exp", exp, "--data", str(data), "--folds", "2", "--params", str(typo))
    assert result.returncode == 1
    assert "unknown parameter 'epoch': no notebook declares it; did you mean epochs" in result.stderr
    assert "FAILED: the parameters of 00_eda" in result.stderr and not (REPO / "runs" / exp / "00_eda.ipynb").exists()


def test_run_all_gpus_fails_fast_with_the_fold_notebook_path(tiny, exp):
    """--gpus passes device cuda: on a machine without CUDA the parallel folds fail, and run_all stops with the
    failing fold notebook's path (with CUDA the folds train, one per GPU)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the folds would train")
    data, params = tiny
    result = _run("--exp", exp, "--data", str(data), "--folds", "2", "--params", str(params), "--gpus", "0,1")
    assert result.returncode == 1
    assert "FAILED: 10_train_fold" in result.stderr and f"runs/{exp}/10_train_fold" in result.stderr
    assert not (REPO / "runs" / exp / ".done" / "10_train_fold0").exists()
    assert not (REPO / "runs" / exp / "submission.csv").exists()


# Tiny classification settings: a timm test net at 32x32 trains a fold of the 30-image classification demo in seconds.
TINY_CLS_YAML = """model_name: test_resnet.r160_in1k
height: 32
width: 48
batch_size: 8
epochs: 2
device: cpu
num_workers: 0
"""


def test_run_all_classification_demo_two_experiments_ensemble_and_tta(tmp_path, exp, exp2):
    """The classification track through run_all.sh: a CE experiment (OOF with five-crop TTA) stops after 20_oof; a
    bi-tempered CutMix experiment runs on, 30_ensemble blends the two and tries stacking them, 40_submit predicts with
    the ensemble and flips TTA, the submission validates and is scored on the demo's hidden truth."""
    from kitlib.demo_classify import make_classification_demo
    from kitlib.io import read_json
    from kitlib.submit import validate_submission

    data = make_classification_demo(tmp_path / "data", n_train=30, n_test=6)
    first = tmp_path / "a.yaml"
    first.write_text(TINY_CLS_YAML + "tta: five_crop\n")
    a = _run("--preset", "demo_classify", "--exp", exp, "--data", str(data), "--folds", "2", "--params", str(first),
             "--until", "20_oof")  # fmt: skip
    assert a.returncode == 0, a.stderr[-3000:]
    assert read_json(REPO / "artifacts" / exp / "cv.json")["metric"] == "accuracy"
    assert read_json(REPO / "artifacts" / exp / "fold0" / "config.json")["params"]["tta"] == "five_crop"
    second = tmp_path / "b.yaml"
    bi_tempered = "loss: bi_tempered\nloss_kwargs:\n  t1: 0.8\n  t2: 1.4\n  label_smoothing: 0.06\n"
    mix = "mix: cutmix\nmix_prob: 1.0\nmix_off_epochs: 1\n"
    second.write_text(TINY_CLS_YAML + f"exps: {exp},{exp2}\n{bi_tempered}{mix}tta: flips\nstacking: logreg\n")
    b = _run("--preset", "demo_classify", "--exp", exp2, "--data", str(data), "--folds", "2", "--params", str(second),
             "--ensemble", f"{exp2}/blend")  # fmt: skip
    assert b.returncode == 0, b.stderr[-3000:]
    weights = read_json(REPO / "artifacts" / exp2 / "blend" / "weights.json")
    assert weights["exps"] == [exp, exp2] and weights["metric"] == "accuracy"
    stacked = weights["stacking"]  # tried; chosen only when its cross-validated OOF accuracy beats the blend's
    assert stacked["model"] == "logreg" and stacked["chosen"] == (stacked["cv"] > stacked["blend_cv"])
    assert (REPO / "artifacts" / exp2 / "blend" / "stacking.json").is_file() == stacked["chosen"]
    submission = REPO / "runs" / exp2 / "submission.csv"
    assert validate_submission(submission, data / "sample_submission.csv", PRESETS["demo_classify"])["images"] == 6
    assert read_json(REPO / "runs" / exp2 / "submission_config.json")["params"]["tta"] == "flips"
    assert "[run_all] demo test accuracy" in b.stdout and "[run_all] CV" in b.stdout


def test_run_all_real_cassava_sample(exp, tmp_path):
    """The real Cassava sample (7 of the 21,397 listed train images, drop_missing) through every notebook: the
    cassava recipe's warmup epoch is set to 0 for a 2-epoch run, and the one real test image gets a label."""
    from kitlib.submit import validate_submission
    from tests.conftest import shared_sample

    data = shared_sample("cassava_sample")
    params = tmp_path / "cassava.yaml"
    params.write_text(TINY_CLS_YAML.replace("width: 48", "width: 32") + "drop_missing: true\nencoder_weights: none\n"
                      "warmup_epochs: 0\ntta: five_crop\n")  # fmt: skip
    result = _run("--preset", "cassava", "--exp", exp, "--data", str(data), "--folds", "2", "--params", str(params))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[run_all] CV (artifacts/" in result.stdout
    submission = REPO / "runs" / exp / "submission.csv"
    assert validate_submission(submission, data / "sample_submission.csv", PRESETS["cassava"])["images"] == 1
    oof = REPO / "artifacts" / exp / "oof_ids.csv"
    assert len(oof.read_text().split()) - 1 == 7  # the 7 images present, every one out of fold once


def test_run_all_a_preset_file_of_a_tiny_coco_competition(tmp_path):
    """--preset FILE.yaml: a COCO set with class names of its own, no classes listed (read from train.json, the unused
    parent category dropped), a test.json without annotations and no sample submission trains 2 folds with the
    multiclass default recipe; the experiment is named after the preset and the submission holds its class ids."""
    import json

    from kitlib.stages import TrainConfig
    from kitlib.submit import read_submission, validate_submission
    from tests.test_preset_file import write_preset, write_tiny_coco

    data = write_tiny_coco(tmp_path / "data")
    name = f"pytest-shapes-{uuid.uuid4().hex[:8]}"
    preset_file = write_preset(tmp_path / "shapes.yaml", name=name)
    params = tmp_path / "tiny.yaml"
    params.write_text(TINY_YAML.replace("width: 96", "width: 64").replace("epochs: 3", "epochs: 2"))
    try:
        result = _run("--preset", str(preset_file), "--data", str(data), "--folds", "2", "--params", str(params))
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"[run_all] submission: runs/{name}/submission.csv" in result.stdout
        fold0 = REPO / "artifacts" / name / "fold0" / "config.json"
        saved = json.loads(fold0.read_text())
        assert saved["preset_file"]["fields"]["classes"] == ["Background", "disc", "square"]
        assert saved["recipe_source"].startswith("the kit's defaults for a multiclass task")
        preset_file.unlink()  # the saved config alone rebuilds the preset
        preset = TrainConfig.load(fold0).preset
        assert (preset.name, preset.num_classes) == (name, 3)
        submission = REPO / "runs" / name / "submission.csv"
        test_ids = ["img_08.png", "img_09.png", "img_10.png"]
        assert validate_submission(submission, None, preset, image_ids=test_ids)["images"] == 3
        values = {int(v) for row in read_submission(submission)["PredictionString"] for v in row.split()}
        assert values <= {0, 1, 2} and all(
            len(r.split()) == 32 * 32 for r in read_submission(submission)["PredictionString"]
        )
    finally:
        _cleanup(name)


def test_run_all_pseudo_from_writes_the_test_probs_then_trains_on_them(tiny, exp, exp2):
    """--pseudo-from EXP without EXP's test_probs.npy runs 40_submit of EXP with save_probs first, then the new
    experiment's folds train on the pseudo rows, which no fold holds out."""
    import numpy as np
    import pandas as pd

    from kitlib.io import read_json

    data, params = tiny
    args = ("--data", str(data), "--folds", "2", "--params", str(params))
    first = _run("--exp", exp, *args, "--until", "10_train")  # no postprocess.json: 40_submit thresholds at 0.5
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (REPO / "artifacts" / exp / "test_probs.npy").exists()
    second = _run("--exp", exp2, *args, "--pseudo-from", exp, "--until", "10_train")
    assert second.returncode == 0, second.stderr[-3000:]
    assert _line("40_submit_probs") + "done in" in second.stdout and "; test probabilities artifacts/" in second.stdout
    probs = np.load(REPO / "artifacts" / exp / "test_probs.npy")
    assert probs.shape == (4, 4, 64, 96) and probs.dtype == np.uint8
    for fold in (0, 1):
        fold_dir = REPO / "artifacts" / exp2 / f"fold{fold}"
        assert read_json(fold_dir / "config.json")["params"]["pseudo_from"] == exp
        ids = pd.read_csv(fold_dir / "oof_ids.csv", dtype=str)["image_id"]
        assert not ids.str.startswith("pseudo/").any()
    notebook = (REPO / "runs" / exp2 / "10_train_fold0.ipynb").read_text()
    assert "4 train-only rows ({'pseudo': 4}) joined" in notebook
