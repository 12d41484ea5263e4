"""One fold end to end on a tiny demo: artifacts, identical OOF bytes for the same seed, a killed run that resumes to
the same result, 2-process DDP on CPU (gloo), and the 10_train notebook under papermill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kitlib import predictions, recipes, train
from kitlib._private import PhaseTimer
from kitlib.demo import make_demo
from kitlib.folds import make_folds, save_folds
from kitlib.formats import load_competition
from kitlib.presets import PRESETS
from kitlib.runtime import set_threads
from kitlib.scoring import score_oof
from kitlib.stages import TrainConfig
from kitlib.targets import TargetMasks, scoring_size
from tests.conftest import REPO

TINY = dict(
    encoder_name="tu-test_resnet.r160_in1k", model_kwargs={"decoder_channels": [16, 16, 8, 8, 8]}, height=64,
    width=96, batch_size=4, epochs=3, device="cpu", num_workers=0,
)  # fmt: skip
#: A presence classifier (``arch="classifier"``) at the same tiny size.
TINY_CLASSIFIER = dict(arch="classifier", model_name="test_resnet.r160_in1k", model_kwargs={}, height=64, width=96,
                       batch_size=4, epochs=2, device="cpu", num_workers=0)  # fmt: skip


def train_config(preset: str, **overrides) -> TrainConfig:
    """10_train's config for ``preset`` with ``overrides``, as papermill would inject them."""
    return TrainConfig.from_notebook(preset=preset, **overrides)


def train_tiny(data: Path, root: Path, exp: str, n_folds: int = 2, folds_seed: int = 0, **overrides) -> list[dict]:
    """Train every fold of a tiny demo experiment ``root/exp`` (TINY with ``overrides``); writes ``folds.csv``
    (``make_folds`` with ``folds_seed``) unless the experiment has one. Returns each fold's ``train_fold`` result."""
    folds_path = Path(root) / exp / "folds.csv"
    if not folds_path.is_file():
        save_folds(
            make_folds(load_competition(PRESETS["demo"], data), PRESETS["demo"], n_folds=n_folds, seed=folds_seed),
            folds_path,
        )
    n_folds = int(pd.read_csv(folds_path)["fold"].max()) + 1
    return [
        train.train_fold(
            train_config(
                "demo", **{**TINY, **overrides}, exp=exp, fold=fold, data_dir=str(data), artifacts_root=str(root)
            )
        )  # fmt: skip
        for fold in range(n_folds)
    ]


@pytest.fixture(scope="module")
def demo_exp(tmp_path_factory) -> dict:
    """A 24-image demo with 3 folds: data_dir and artifacts_root for train_config."""
    root = tmp_path_factory.mktemp("demo_exp")
    data = make_demo(root / "data", n_train=24, n_test=4, height=64, width=96)
    folds = make_folds(load_competition(PRESETS["demo"], data), PRESETS["demo"], n_folds=3, seed=0)
    save_folds(folds, root / "artifacts" / "t" / "folds.csv")
    return {"data_dir": str(data), "artifacts_root": str(root / "artifacts"), "exp": "t"}


def _config(demo_exp, exp: str, **kwargs) -> TrainConfig:
    root = Path(demo_exp["artifacts_root"])
    if not (root / exp / "folds.csv").exists():
        (root / exp).mkdir(parents=True, exist_ok=True)
        (root / exp / "folds.csv").write_bytes((root / "t" / "folds.csv").read_bytes())
    return train_config("demo", **{**demo_exp, "exp": exp, **TINY, **kwargs})


# ------------------------------------------------------------------------------------------------ config


def test_train_config_takes_the_recipe_and_ignores_none():
    cfg = train_config("masks", epochs=None, batch_size=2, encoder_weights="none")
    assert cfg.epochs == recipes.TRAIN_RECIPES["masks"]["epochs"] and cfg.batch_size == 2
    assert cfg.encoder_weights is None and "ISBI" in cfg.recipe_source
    assert train_config("clouds").loss == "clouds_1st"
    with pytest.raises(TypeError, match="unknown parameter.*'epoch' = 3"):
        train_config("demo", epoch=3)
    with pytest.raises(KeyError, match="unknown loss"):
        train_config("demo", loss="dice_bce")
    with pytest.raises(ValueError, match="scheduler"):
        train_config("demo", scheduler="step")


def test_run_id_changes_with_training_fields_only():
    a = train_config("demo")
    assert a.run_id() == train_config("demo", num_workers=4, num_threads=1, tta="d4").run_id()
    assert a.run_id() != train_config("demo", epochs=9).run_id()
    assert a.run_id() != train_config("demo", fold=1).run_id()


def test_every_recipe_builds_a_valid_config():
    for preset in recipes.TRAIN_RECIPES:
        cfg = train_config(preset)
        assert cfg.recipe_source


def test_scoring_size(isbi_dir):
    df = load_competition(PRESETS["masks"], isbi_dir)
    assert scoring_size(PRESETS["masks"], df) == (512, 512)
    assert scoring_size(PRESETS["demo"], df) == (64, 96)
    mixed = df.copy()
    mixed.loc[0, "height"] = 256
    with pytest.raises(ValueError, match="2 sizes"):
        scoring_size(PRESETS["masks"], mixed)


def test_score_oof_hand_case(tmp_path):
    data = make_demo(tmp_path / "d", n_train=4, n_test=1, height=64, width=96)
    df = load_competition(PRESETS["demo"], data).head(2)
    truth = np.stack(list(TargetMasks(df, PRESETS["demo"], (64, 96))))
    assert truth.shape == (2, 4, 64, 96) and truth.dtype == np.uint8
    perfect = score_oof(truth * 255, truth, PRESETS["demo"]).summary
    assert perfect["dice"] == 1.0 and perfect["pixel_error"] == 0.0
    empty = score_oof(np.zeros_like(truth), truth, PRESETS["demo"]).summary
    present = truth.reshape(2, 4, -1).any(axis=2)
    assert empty["dice"] == pytest.approx((~present).mean())
    assert empty["pixel_error"] == pytest.approx(truth.mean())


# ------------------------------------------------------------------------------------------------ one fold


def test_train_fold_writes_the_artifacts(demo_exp):
    cfg = _config(demo_exp, "fold_artifacts")
    out = train.train_fold(cfg)
    fold_dir = cfg.fold_dir
    for name in ("best.pt", "last.pt", "history.csv", "config.json", "oof_probs.npy", "oof_ids.csv", "scores.json",
                 "oof_cls_probs.npy", "done.json"):  # fmt: skip
        assert (fold_dir / name).is_file(), name
    probs, ids = predictions.read_oof(fold_dir)
    folds = pd.read_csv(Path(cfg.artifacts_root) / cfg.exp / "folds.csv", dtype={"image_id": str})
    held_out = folds.loc[folds["fold"] == 0, "image_id"].tolist()
    assert ids == held_out  # rows in folds.csv order
    assert probs.dtype == np.uint8 and probs.shape == (len(ids), 4, 64, 96)  # the demo's scoring resolution
    assert np.load(fold_dir / "oof_cls_probs.npy").shape == (len(ids), 4)
    config = json.loads((fold_dir / "config.json").read_text())
    assert config["run_id"] == train.fold_run_id(cfg) and "versions" in config["run"]
    assert set(out["scores"]) >= {"dice", "dice_per_class", "pixel_error"}
    assert train.train_fold(cfg)["scores"] == out["scores"]  # done.json: nothing to redo
    from kitlib.models import load_model

    model, ckpt = load_model(fold_dir / "best.pt")
    assert ckpt["fold"] == 0 and ckpt["epoch"] == out["best_epoch"]


def test_phase_timer_is_exclusive(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 6.0, 10.0, 11.0, 12.0, 20.0, 25.0, 30.0])  # perf_counter's readings, in call order
    monkeypatch.setattr("kitlib._private.time.perf_counter", lambda: next(clock))
    timer = PhaseTimer()  # 0
    with timer.phase("outer"):  # 1
        with timer.phase("inner"):  # 3 -> 6
            pass
        assert list(timer.iterate([7], "waits")) == [7]  # next() 10 -> 11, then StopIteration 12 -> 20
    # outer ends at 25: 24 s less the 3 + 9 s of the phases inside it
    assert timer.seconds == {"inner": 3.0, "waits": 9.0, "outer": 12.0}
    assert timer.as_dict(other=True)["other"] == 30.0 - 24.0  # read at 30: no phase held 0 -> 1 and 25 -> 30


def test_fold_timings_add_up_and_name_the_compute(demo_exp):
    threads = torch.get_num_threads()
    try:
        cfg = _config(demo_exp, "timings", epochs=1, num_threads=1)
        train.train_fold(cfg)
    finally:
        torch.set_num_threads(threads)
    timings = json.loads((cfg.fold_dir / "timings.json").read_text())
    phases = timings["phases"]
    assert set(train.COMPUTE_PHASES) | {"train_data", "validation", "checkpoints", "oof_write", "other"} <= set(phases)
    assert timings["total_s"] == pytest.approx(sum(phases.values()), abs=0.01)
    assert timings["compute_s"] == pytest.approx(sum(phases[p] for p in train.COMPUTE_PHASES), abs=0.01)
    assert 0 < timings["compute_share"] < 1 and timings["num_threads"] == 1 and timings["num_workers"] == 0
    with pytest.raises(ValueError, match="num_threads must be >= 0"):
        set_threads(-1)


def test_the_training_imports_leave_out_wandb_and_sklearn():
    code = ("import sys; import kitlib.train, kitlib.plots, kitlib.predictions; "
            "print(sorted({'wandb', 'sklearn'} & set(sys.modules))); import wandb")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]  # wandb itself stays importable
    assert proc.stdout.split("\n")[-2] == "[]"


def test_a_new_split_retrains_and_keeps_the_previous_run(demo_exp):
    cfg = _config(demo_exp, "resplit", epochs=1)
    first = train.train_fold(cfg)
    folds_path = cfg.exp_dir / "folds.csv"
    folds = pd.read_csv(folds_path, dtype={"image_id": str})
    folds["fold"] = (folds["fold"] + 1) % 3  # another split: fold 0 now holds other images
    folds.to_csv(folds_path, index=False)
    second = train.train_fold(cfg)
    assert second["scores"]["n_images"] == int((folds["fold"] == 0).sum())
    _, ids = predictions.read_oof(cfg.fold_dir)
    assert ids == folds.loc[folds["fold"] == 0, "image_id"].tolist()
    previous = cfg.fold_dir.with_name("fold0.previous")
    assert json.loads((previous / "done.json").read_text())["best_epoch"] == first["best_epoch"]


def test_same_seed_gives_identical_oof_bytes(demo_exp):
    a = _config(demo_exp, "seed_a", epochs=2)
    b = _config(demo_exp, "seed_b", epochs=2)
    train.train_fold(a)
    train.train_fold(b)
    assert (a.fold_dir / "oof_probs.npy").read_bytes() == (b.fold_dir / "oof_probs.npy").read_bytes()
    c = _config(demo_exp, "seed_c", epochs=2, seed=7)
    train.train_fold(c)
    assert (a.fold_dir / "oof_probs.npy").read_bytes() != (c.fold_dir / "oof_probs.npy").read_bytes()


def test_bf16_autocast_on_cpu_trains_a_fold(demo_exp):
    """amp="bf16" on a CPU: the fold trains with finite losses and its OOF differs from the fp32 run's."""
    bf16 = _config(demo_exp, "bf16", epochs=2, amp="bf16")
    train.train_fold(bf16)
    history = pd.read_csv(bf16.fold_dir / "history.csv")
    assert len(history) == 2 and np.isfinite(history[["train_loss", "valid_loss"]].to_numpy()).all()
    fp32 = _config(demo_exp, "seed_a", epochs=2)
    train.train_fold(fp32)  # done already when test_same_seed_gives_identical_oof_bytes ran first
    assert (bf16.fold_dir / "oof_probs.npy").read_bytes() != (fp32.fold_dir / "oof_probs.npy").read_bytes()


def _subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_killed_run_resumes_to_the_same_result(demo_exp):
    """SIGKILL a training process after its first epoch, rerun it, compare with an uninterrupted run."""
    epochs = 4
    reference = _config(demo_exp, "uninterrupted", epochs=epochs)
    killed = _config(demo_exp, "killed", epochs=epochs)
    launch = killed.fold_dir / "launch.json"
    killed.save(launch)
    cmd = [sys.executable, "-m", "kitlib.train", str(launch)]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed.fold_dir / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.is_file() and len(pd.read_csv(history)) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed.fold_dir / "done.json").exists(), "the run finished before it could be killed"
    epochs_before_kill = len(pd.read_csv(history))
    assert 1 <= epochs_before_kill < epochs

    subprocess.run(cmd, env=_subprocess_env(), check=True, capture_output=True)
    # The reference runs in the same kind of process: CPU results are bitwise equal for the same thread count.
    reference_launch = reference.fold_dir / "launch.json"
    reference.save(reference_launch)
    subprocess.run([*cmd[:-1], str(reference_launch)], env=_subprocess_env(), check=True, capture_output=True)
    a, b = reference.fold_dir, killed.fold_dir
    assert (a / "oof_probs.npy").read_bytes() == (b / "oof_probs.npy").read_bytes()
    best_a = torch.load(a / "best.pt", weights_only=True)
    best_b = torch.load(b / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    for key, value in best_a["state_dict"].items():
        assert torch.equal(value, best_b["state_dict"][key]), key
    hist_a, hist_b = (pd.read_csv(d / "history.csv").drop(columns="time_s") for d in (a, b))
    pd.testing.assert_frame_equal(hist_a, hist_b, check_exact=True)


def test_ddp_two_cpu_processes(demo_exp):
    """torchrun with 2 gloo processes: every held-out row predicted once, gathered into one OOF file that equals a
    single-process prediction with the saved best.pt."""
    cfg = _config(demo_exp, "ddp", epochs=2)
    out = train.launch_distributed(cfg, 2, extra_env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert json.loads((cfg.fold_dir / "config.json").read_text())["world_size"] == 2
    probs, ids = predictions.read_oof(cfg.fold_dir)
    assert len(ids) == len(set(ids)) and probs.shape[0] == len(ids)
    assert out["scores"]["n_images"] == len(ids)

    from kitlib import engine, runtime
    from kitlib.data import build_transforms, make_dataset, normalization_for
    from kitlib.models import load_model

    model, _ = load_model(cfg.fold_dir / "best.pt")
    _, _, valid = train.fold_tables(cfg)
    mean, std = normalization_for(cfg.encoder_name)
    ds = make_dataset(valid, PRESETS["demo"], build_transforms("valid", cfg.height, cfg.width, mean, std))
    loader = runtime.make_loader(ds, 4, train=False, info=runtime.DistInfo())
    single = np.concatenate(
        [(p * 255).round().to(torch.uint8).numpy() for _, p, _ in engine.predict(model, loader, torch.device("cpu"),
                                                                                   out_size=(64, 96))]
    )  # fmt: skip
    assert np.abs(single.astype(int) - probs.astype(int)).max() <= 1  # same weights; float summation order aside


@pytest.mark.slow
def test_train_notebook_on_the_demo(tmp_path, demo_exp):
    from tests.test_notebooks import run_notebook

    root = Path(demo_exp["artifacts_root"])
    nb = run_notebook(
        "10_train", tmp_path / "train.ipynb", exp="t", preset="demo", data_dir=demo_exp["data_dir"], fold=1,
        artifacts_root=root, encoder_name=TINY["encoder_name"], height=64, width=96, epochs=2, batch_size=4,
    )  # fmt: skip
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= 2  # learning curves, held-out predictions
    assert (root / "t" / "fold1" / "done.json").is_file()
