"""Experiment tracking (``kitlib.tracking``): a tiny fold trained with each tracker, and what the trackers wrote read
back with their own readers (W&B: ``wandb leet inspect --json`` on the offline ``run-*.wandb`` file; MLflow:
``MlflowClient`` on the local file store) compared with ``history.csv``, ``config.json`` and ``scores.json``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kitlib import oof, tracking, train
from kitlib.params import ParameterError
from kitlib.postprocess import PostProcess
from kitlib.presets import PRESETS
from kitlib.stages import OofConfig, TrainConfig
from tests.conftest import REPO
from tests.test_train import TINY, demo_exp  # noqa: F401 - the fixture

EPOCHS = 2


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never the network: W&B offline whatever the environment says; no tracking URI from outside."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)


def _cfg(demo_exp, exp: str, **kwargs) -> TrainConfig:  # noqa: F811
    root = Path(demo_exp["artifacts_root"])
    if not (root / exp / "folds.csv").exists():
        (root / exp).mkdir(parents=True, exist_ok=True)
        (root / exp / "folds.csv").write_bytes((root / "t" / "folds.csv").read_bytes())
    uri = str(root.parent / "tracking" / exp)  # not under artifacts/ (mlflow's file store), not the repo's runs/
    return TrainConfig.from_notebook(preset="demo", **{**demo_exp, **TINY, "epochs": EPOCHS, "exp": exp,
                                                       "tracker_uri": uri, **kwargs})  # fmt: skip


def _history(cfg: TrainConfig) -> pd.DataFrame:
    return pd.read_csv(cfg.fold_dir / "history.csv")


# ------------------------------------------------------------------------------------------------ config time


def test_tracker_parameters_are_checked_when_the_config_is_built(monkeypatch):
    with pytest.raises(ParameterError, match=r"10_train: tracker 'wandbb' is not a tracker; options: \['mlflow', "):
        TrainConfig.from_notebook(preset="demo", tracker="wandbb")
    with pytest.raises(ParameterError, match="20_oof: tracker 'tensorboard'"):
        OofConfig.from_notebook(preset="demo", tracker="tensorboard")
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(ParameterError, match="tracker 'mlflow' needs the mlflow package.*pip install mlflow-skinny"):
        TrainConfig.from_notebook(preset="demo", tracker="mlflow")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "sqlalchemy" else real(name))
    with pytest.raises(ParameterError, match="tracker_uri 'sqlite:///x.db'.*sqlalchemy"):
        OofConfig.from_notebook(preset="demo", tracker="mlflow", tracker_uri="sqlite:///x.db")
    # off by default, and never part of run_id
    plain = TrainConfig.from_notebook(preset="demo")
    assert plain.tracker is None
    tracked = TrainConfig.from_notebook(preset="demo", tracker="wandb", tracker_project="p", tracker_uri="runs/x")
    assert tracked.run_id() == plain.run_id()


def _imported(modules: str) -> list[str]:
    code = (f"import sys, {modules}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'wandb', 'mlflow'}))")  # fmt: skip
    return json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                     cwd=REPO).stdout.strip().replace("'", '"'))  # fmt: skip


def test_the_trackers_are_imported_only_when_a_run_is_tracked():
    assert _imported("kitlib, kitlib.stages, kitlib.tracking") == []
    # timm.utils.summary imports wandb itself when it is installed (``try: import wandb``); mlflow only through us
    assert "mlflow" not in _imported("kitlib.train")


def test_where_the_runs_go(monkeypatch, tmp_path):
    cfg = TrainConfig.from_notebook(preset="demo", tracker="mlflow", artifacts_root=str(tmp_path), exp="e")
    assert tracking.tracker_location(cfg) == (REPO / "runs" / "e" / "mlruns").as_uri()  # KIT_ROOT: this checkout
    with pytest.raises(ParameterError, match="file store does not find runs under a folder named 'artifacts'"):
        cfg.replace(tracker_uri=str(tmp_path / "artifacts" / "mlruns"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert tracking.tracker_location(cfg) == "http://localhost:5000"
    assert tracking.tracker_location(cfg.replace(tracker_uri=str(tmp_path / "m"))) == (tmp_path / "m").as_uri()
    wandb_cfg = cfg.replace(tracker="wandb")
    assert tracking.tracker_location(wandb_cfg) == str(REPO / "runs" / "e")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    assert tracking.tracker_location(wandb_cfg) == str(tmp_path / "w")


# ------------------------------------------------------------------------------------------------ W&B offline


def _wandb_records(folder: Path, name: str) -> list[dict]:
    """The records of the one offline run of ``name`` under ``folder/wandb/``, read by wandb's own reader."""
    files = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    runs = []
    for path in files:
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)], check=True,
                             capture_output=True, text=True, timeout=120).stdout  # fmt: skip
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if any(r.get("type") == "run" and r["run"].get("display_name") == name for r in records):
            runs.append(records)
    assert len(runs) == 1, f"{len(runs)} offline runs named {name} in {files}"
    return runs[0]


def test_wandb_offline_run_holds_the_config_history_and_scores(demo_exp):  # noqa: F811
    cfg = _cfg(demo_exp, "track_wandb", tracker="wandb", tracker_project="kit-test")
    out = train.train_fold(cfg)
    records = _wandb_records(Path(cfg.tracker_uri), "track_wandb/fold0")
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["run_group"] == "track_wandb" and run["project"] == "kit-test" and run["job_type"] == "train"
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    saved = json.loads((cfg.fold_dir / "config.json").read_text())
    assert config == {**saved["params"], "run_id": saved["run_id"], "recipe_source": saved["recipe_source"]}
    logged = pd.DataFrame([r["history"]["item"] for r in records if r["type"] == "history"])
    history = _history(cfg)
    assert len(history) == EPOCHS
    pd.testing.assert_frame_equal(logged[history.columns], history, check_dtype=False, check_exact=True)
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    scores = json.loads((cfg.fold_dir / "scores.json").read_text())
    assert summary["oof/dice"] == pytest.approx(scores["dice"], rel=1e-12) and out["scores"]["dice"] == scores["dice"]
    assert summary["best_epoch"] == out["best_epoch"]
    exit_record = next(r for r in records if r["type"] == "exit")
    assert exit_record["exit"].get("exit_code", 0) == 0


# ------------------------------------------------------------------------------------------------ MLflow file store


def _mlflow_runs(cfg) -> list:
    client = tracking.mlflow_client(tracking.tracker_location(cfg))
    experiment = client.get_experiment_by_name(cfg.exp)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def _metric_frame(client, run_id: str, columns) -> pd.DataFrame:
    """Each history column's MLflow metric history, one row per step."""
    data = {}
    for name in columns:
        points = client.get_metric_history(run_id, name)
        data[name] = {m.step: m.value for m in points}
    return pd.DataFrame(data).sort_index().reset_index(drop=True)


def test_mlflow_run_holds_the_config_history_and_scores(demo_exp):  # noqa: F811
    cfg = _cfg(demo_exp, "track_mlflow", tracker="mlflow")
    out = train.train_fold(cfg)
    assert "MLFLOW_ALLOW_FILE_STORE" not in tracking.os.environ  # set only while the store opened
    assert (Path(cfg.tracker_uri) / "meta.yaml").is_file() or (Path(cfg.tracker_uri) / "0").is_dir()
    client, runs = _mlflow_runs(cfg)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "track_mlflow/fold0" and run.info.status == "FINISHED"
    saved = json.loads((cfg.fold_dir / "config.json").read_text())
    assert run.data.params["run_id"] == saved["run_id"]
    assert run.data.params["epochs"] == "2" and run.data.params["preset"] == "demo"
    assert json.loads(run.data.params["model_kwargs"]) == saved["params"]["model_kwargs"]
    assert set(run.data.params) >= set(saved["params"])
    history = _history(cfg)
    pd.testing.assert_frame_equal(
        _metric_frame(client, run.info.run_id, history.columns), history, check_dtype=False, check_exact=True
    )
    scores = json.loads((cfg.fold_dir / "scores.json").read_text())
    assert run.data.metrics["oof/dice"] == pytest.approx(scores["dice"], rel=1e-12)
    assert run.data.metrics["best_score"] == pytest.approx(out["best_score"], rel=1e-12)
    assert run.data.tags["kit_run"] == f"track_mlflow/fold0/{saved['run_id']}"


def test_a_resumed_fold_opens_a_new_run_that_holds_the_whole_history(demo_exp):  # noqa: F811
    cfg = _cfg(demo_exp, "track_resume", tracker="mlflow", epochs=3)
    train.train_fold(cfg, stop_after_epoch=0)  # "killed" after its first epoch
    client, runs = _mlflow_runs(cfg)
    assert len(runs) == 1 and len(client.get_metric_history(runs[0].info.run_id, "train_loss")) == 1
    client.update_run(runs[0].info.run_id, status="RUNNING")  # as a SIGKILLed process leaves it
    train.train_fold(cfg)
    client, runs = _mlflow_runs(cfg)
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    history = _history(cfg)
    assert len(history) == 3
    pd.testing.assert_frame_equal(_metric_frame(client, runs[1].info.run_id, history.columns), history,
                                  check_dtype=False, check_exact=True)  # fmt: skip


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_error_mid_run_warns_and_training_goes_on(demo_exp, monkeypatch, caplog, tracker):  # noqa: F811
    backend = tracking.MlflowTracker if tracker == "mlflow" else tracking.WandbTracker
    real = backend._metrics

    def fail_on_epoch_1(self, values, step):
        if step == 1:
            raise OSError("No space left on device")
        real(self, values, step)

    monkeypatch.setattr(backend, "_metrics", fail_on_epoch_1)
    cfg = _cfg(demo_exp, f"track_error_{tracker}", tracker=tracker)
    with caplog.at_level(logging.WARNING, logger="kitlib.tracking"):
        out = train.train_fold(cfg)
    assert (cfg.fold_dir / "done.json").is_file() and out["scores"] is not None and len(_history(cfg)) == EPOCHS
    assert f"{tracker} tracker: logging epoch 1 failed (OSError: No space left on device)" in caplog.text
    if tracker == "mlflow":
        client, runs = _mlflow_runs(cfg)
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] == [0]
    else:
        records = _wandb_records(Path(cfg.tracker_uri), f"{cfg.exp}/fold0")
        assert [r["history"]["step"].get("num", 0) for r in records if r["type"] == "history"] == [0]


def test_a_tracker_that_cannot_start_leaves_the_stage_untracked(monkeypatch, caplog, tmp_path):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.CommError("wandb-core did not start")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = OofConfig.from_notebook(preset="demo", exp="x", tracker="wandb", tracker_uri=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="kitlib.tracking"):
        tracker = tracking.start_run(cfg, "x/oof", "oof", {}, "x/oof")
    assert type(tracker) is tracking.Tracker and not tracker.active
    assert "wandb tracker: starting run x/oof" in caplog.text and "CommError: wandb-core did not start" in caplog.text
    tracker.log_history([{"epoch": 0, "loss": 1.0}])  # a no-op, no error
    tracker.finish()


# ------------------------------------------------------------------------------------------------ 20_oof


def _oof_files(exp_dir: Path) -> dict:
    """cv.json and postprocess.json of a binary preset written by the OOF stage's own writer (``oof.save_cv``)."""
    preset = PRESETS["demo"]
    classes = list(preset.target_classes)
    raw = pd.DataFrame({"class": [*classes, "overall"], "dice": [0.5, 0.6, 0.7, 0.8, 0.65], "n": [4] * 5})
    post = raw.assign(dice=raw["dice"] + 0.1)
    params = PostProcess(threshold=[0.3, 0.4, 0.5, 0.6], min_area=[0, 100, 500, 2000], meta={"method": "threshold"})
    return oof.save_cv(exp_dir, preset, raw, post, params, extra={"exp": exp_dir.name})


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_the_oof_stage_logs_its_cv_and_post_processing(tmp_path, tracker):
    cfg = OofConfig.from_notebook(preset="demo", exp="oofx", artifacts_root=str(tmp_path / "artifacts"),
                                  tracker=tracker, tracker_uri=str(tmp_path / "tracking"))  # fmt: skip
    cfg.exp_dir.mkdir(parents=True)
    summary = _oof_files(cfg.exp_dir)
    tracking.log_oof_stage(cfg, summary)
    post = json.loads((cfg.exp_dir / "postprocess.json").read_text())
    if tracker == "mlflow":
        client, runs = _mlflow_runs(cfg)
        run = runs[0]
        assert run.info.run_name == "oofx/oof" and run.data.tags["kit_job"] == "oof"
        assert json.loads(run.data.params["postprocess.threshold"]) == [0.3, 0.4, 0.5, 0.6]
        assert json.loads(run.data.params["postprocess.min_area"]) == [0, 100, 500, 2000]
        assert run.data.metrics["cv"] == 0.65 and run.data.metrics["cv_postprocessed"] == pytest.approx(0.75)
        first = PRESETS["demo"].target_classes[0]
        assert run.data.metrics[f"per_class/{first}/cv"] == 0.5
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"postprocess.json", "cv.json"}
        return
    records = _wandb_records(tmp_path / "tracking", "oofx/oof")
    config = {}
    for r in records:
        if r["type"] == "run":
            config.update(r["run"]["config"]["update"])
        elif r["type"] == "config":
            config.update(r["config"].get("update", {}))
    assert config["postprocess"] == post and config["exp"] == "oofx"
    summary_logged = {}
    for r in records:
        if r["type"] == "summary":
            summary_logged.update(r["summary"].get("update", {}))
    assert summary_logged["cv"] == 0.65
    assert (next((tmp_path / "tracking").glob("wandb/offline-run-*")) / "files" / "postprocess.json").is_file()


@pytest.mark.slow
def test_an_experiment_tracked_end_to_end_with_the_20_oof_notebook(tmp_path):
    """Two tiny folds trained with tracker mlflow, then 20_oof under papermill: one MLflow experiment holding the
    folds' runs and the OOF run, whose CV and post-processing are cv.json's and postprocess.json's."""
    from kitlib.demo import make_demo
    from tests.test_notebooks import run_notebook
    from tests.test_train import train_tiny

    data = make_demo(tmp_path / "data", n_train=16, n_test=2, height=64, width=96)
    common = dict(tracker="mlflow", tracker_uri=str(tmp_path / "mlruns"))
    train_tiny(data, tmp_path / "artifacts", "e2e", n_folds=2, epochs=1, **common)
    run_notebook("20_oof", tmp_path / "oof.ipynb", preset="demo", exp="e2e", data_dir=str(data),
                 artifacts_root=str(tmp_path / "artifacts"), thresholds="0.3,0.5", min_areas="0,20", label_issues=False,
                 n_samples=1, **common)  # fmt: skip
    cfg = OofConfig.from_notebook(preset="demo", exp="e2e", artifacts_root=str(tmp_path / "artifacts"), **common)
    client, runs = _mlflow_runs(cfg)
    assert sorted(r.info.run_name for r in runs) == ["e2e/fold0", "e2e/fold1", "e2e/oof"]
    assert all(r.info.status == "FINISHED" for r in runs)
    oof_run = next(r for r in runs if r.info.run_name == "e2e/oof")
    cv = json.loads((cfg.exp_dir / "cv.json").read_text())
    post = json.loads((cfg.exp_dir / "postprocess.json").read_text())
    assert oof_run.data.metrics["cv"] == pytest.approx(cv["cv"], rel=1e-12)
    assert oof_run.data.metrics["cv_postprocessed"] == pytest.approx(cv["cv_postprocessed"], rel=1e-12)
    assert json.loads(oof_run.data.params["postprocess.threshold"]) == post["threshold"]
    assert oof_run.data.params["thresholds"] == "0.3,0.5"
