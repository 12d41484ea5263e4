"""Experiment tracking, off by default: ``tracker`` "wandb" (offline) or "mlflow" (a local store) in ``10_train``
and ``20_oof``, through the trackers' own libraries (imported only when a run is tracked, never at ``import kitlib``).

What a tracked run holds:

- ``10_train``, one run per fold, named ``<exp>/fold<k>`` (W&B: group ``exp``, job type "train"; MLflow: experiment
  ``exp``): the whole ``TrainConfig`` (``cfg.to_dict()``, with ``run_id`` and ``recipe_source``) as its
  config / params; every ``history.csv`` row as the metrics of step ``epoch`` (the same columns and values: losses,
  valid scores, ``lr_<group>``, ``time_s``); the fold's held-out scores (``scores.json``, as ``oof_<name>``) and
  ``best_epoch`` / ``best_score`` in its summary.
- ``20_oof``, one run named ``<exp>/oof`` (job type "oof"): the ``OofConfig``, ``cv.json``'s CV (``cv``,
  ``cv_postprocessed``, per class ``cv/<class>``) and the post-processing choice (``postprocess.json``: W&B config
  ``postprocess``, MLflow params ``postprocess.<key>``; both files attached).

Where the runs go (``tracker_uri``, "" for the default):

- W&B: ``wandb.init(mode="offline", dir=runs/<exp>)`` writes ``runs/<exp>/wandb/offline-run-*/run-*.wandb``
  (``wandb sync`` uploads them later); ``WANDB_MODE`` (e.g. "online") and ``WANDB_DIR`` are honoured, and
  ``WANDB_SILENT`` (default true here). Nothing reaches the network in offline mode.
- MLflow: the ``MlflowClient`` API (no global active run) on ``MLFLOW_TRACKING_URI`` when set, else the file store
  ``runs/<exp>/mlruns`` (not under ``artifacts/``: ``location``). mlflow 3.x refuses the file store unless
  ``MLFLOW_ALLOW_FILE_STORE=true`` (the file backend is "in maintenance mode"); its sqlite store needs sqlalchemy,
  which mlflow-skinny does not install. The kit keeps the file store (no extra dependency; a full mlflow's ``mlflow
  ui --backend-store-uri runs/<exp>/mlruns`` shows it, with that variable set) and sets the variable only while its
  client opens the store (``_file_store_allowed``), not for the process. A database or server URI is used as given.

Failures: an unknown ``tracker`` or a tracker whose library is not installed fails when the config is built
(``check_tracker``, naming the parameter). An error of the tracker during a run (its library raising, a full disk)
never stops training: it is logged once as a warning and the run's tracking stops there; the fold's files are
unaffected.

Resuming: a resumed fold (``last.pt``) opens a new tracker run of the same name and group; its first epoch's call
replays the earlier rows of ``history.csv`` (restored with ``last.pt``), so the new run holds the whole history. The
killed attempt's run stays as it was (MLflow marks it KILLED). A finished fold (``done.json``) opens none.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kitlib.io import project_path, read_json
from kitlib.params import ParameterError

__all__ = ["TRACKERS", "Tracker", "check_tracker", "fold_tracker", "log_oof_stage", "start_run", "tracker_location"]

log = logging.getLogger(__name__)

#: tracker name -> (module imported, the package to install).
TRACKERS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}
#: MLflow's limit on a parameter value (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``) and on a batch.
_MLFLOW_PARAM_CHARS, _MLFLOW_BATCH = 6000, 100


def check_tracker(stage: str, values: Mapping[str, Any]) -> None:
    """Check the ``tracker`` parameters of a stage's values (``kitlib.stages``, when the config is built).

    Args:
        stage: the stage's name, for the message ("10_train").
        values: the parameters; ``tracker`` None / "" (off), "wandb" or "mlflow"; ``tracker_uri`` as documented in
            the module docstring. Absent keys (a config saved before tracking existed) mean off.
    Raises:
        ParameterError: an unknown tracker (the options named), a tracker whose library is not installed (the
            package named), an MLflow ``tracker_uri`` of a database store whose driver (sqlalchemy) is missing.
    """
    name = values.get("tracker") or None
    if name is None:
        return
    if name not in TRACKERS:
        raise ParameterError(f"{stage}: tracker {name!r} is not a tracker; options: {sorted(TRACKERS)} or None (off)")
    module, package = TRACKERS[name]
    if importlib.util.find_spec(module) is None:
        raise ParameterError(f"{stage}: tracker {name!r} needs the {module} package, which is not installed: pip "
                             f"install {package} (it is in requirements.txt), or set tracker None")  # fmt: skip
    if name != "mlflow":
        return
    uri = location(name, values.get("tracker_uri") or "", str(values.get("exp", "")))
    scheme = urlparse(uri).scheme.split("+", 1)[0]
    if scheme in ("sqlite", "postgresql", "mysql", "mssql") and importlib.util.find_spec("sqlalchemy") is None:
        raise ParameterError(f"{stage}: tracker_uri {uri!r} (or MLFLOW_TRACKING_URI) is a database store, which "
                             "needs sqlalchemy (not part of mlflow-skinny); install it or use a folder (the default: "
                             "runs/<exp>/mlruns)")  # fmt: skip
    if scheme == "file" and "artifacts" in Path(urlparse(uri).path).parts:
        raise ParameterError(f"{stage}: tracker_uri {uri!r}: mlflow's file store does not find runs under a folder "
                             "named 'artifacts' (FileStore._is_valid_run_directory); choose a folder outside it "
                             "(the default: runs/<exp>/mlruns)")  # fmt: skip


def tracker_location(cfg: Any) -> str:
    """Where ``cfg``'s tracker writes (``cfg.tracker``, ``cfg.tracker_uri``, ``cfg.exp``): see ``location``."""
    return location(_value(cfg, "tracker"), _value(cfg, "tracker_uri") or "", str(cfg.exp))


def location(tracker: str | None, tracker_uri: str, exp: str) -> str:
    """Where a tracker writes: W&B the folder ``tracker_uri``, else ``WANDB_DIR``, else ``runs/<exp>`` (its runs in
    ``wandb/offline-run-*`` below it); MLflow the tracking URI ``tracker_uri`` (a URI, or a folder made a ``file:``
    URI), else ``MLFLOW_TRACKING_URI``, else the folder ``runs/<exp>/mlruns``. Relative folders are from the repository
    root. The defaults sit in ``runs/<exp>/`` (beside the executed notebooks), not in ``artifacts/<exp>/``: mlflow's
    file store skips every run whose path has a folder named ``artifacts`` (``FileStore._is_valid_run_directory``:
    "Run ... not found")."""
    if tracker == "wandb":
        return str(project_path(tracker_uri or os.environ.get("WANDB_DIR") or Path("runs") / exp))
    given = tracker_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if len(urlparse(given).scheme) > 1 or given == "databricks":  # a URI (file:, sqlite:, http:, ...), not C:\\...
        return given
    return project_path(given or Path("runs") / exp / "mlruns").as_uri()


def _value(cfg: Any, name: str) -> Any:
    """A parameter of ``cfg``, None when the config predates it."""
    try:
        return getattr(cfg, name)
    except AttributeError:
        return None


class Tracker:
    """One tracked run. This base class tracks nothing (``tracker`` None, or DDP ranks other than 0).

    Every call is guarded: the first exception a backend raises is logged as a warning and turns the run's tracking
    off; training goes on. A ``with`` block finishes the run, as failed when the block raises.
    """

    name = "none"

    def __init__(self) -> None:
        self.active = type(self) is not Tracker
        self._open = self.active  # the run still needs ending (also after a failure: what was logged is flushed)
        self._epochs: set[int] = set()

    def _guard(self, what: str, fn, *args: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training (module docstring)
            self.active = False
            log.warning("%s tracker: %s failed (%s: %s); tracking of this run stops, training goes on", self.name,
                        what, type(e).__name__, e)  # fmt: skip

    def log_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Log the rows of ``history`` (``kitlib.engine.fit``'s, one dict per epoch with an ``epoch`` key) that this
        run has not logged yet, each as the metrics of step ``epoch`` (numbers only; ``epoch`` itself too)."""
        for row in history:
            epoch = int(row["epoch"])
            if epoch not in self._epochs and self.active:
                self._guard(f"logging epoch {epoch}", self._metrics, _numbers(row), epoch)
                self._epochs.add(epoch)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Log final values (a fold's scores, the CV): nested dicts and lists flattened to ``key/sub`` names,
        numbers only."""
        self._guard("logging the summary", self._summary, _numbers(_flatten(values)))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Add parameters to the run's config (W&B config, MLflow params; values JSON-encoded for MLflow)."""
        self._guard("logging parameters", self._params, dict(params))

    def log_file(self, path: str | os.PathLike) -> None:
        """Attach a file (``postprocess.json``, ``cv.json``) to the run, if it exists."""
        if Path(path).is_file():
            self._guard(f"attaching {path}", self._file, Path(path))

    def finish(self, failed: bool = False) -> None:
        """End the run (failed: W&B exit code 1, MLflow status FAILED); also after an error turned logging off, so
        that what was logged before it is kept (W&B writes a step's history when the run ends or the next step
        begins)."""
        if self._open:
            self._open, self.active = False, True
            self._guard("finishing the run", self._end, failed)
        self.active = False

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(failed=exc_type is not None)

    # backend hooks (the base class is never active)
    def _metrics(self, values: dict[str, float], step: int) -> None: ...
    def _summary(self, values: dict[str, float]) -> None: ...
    def _params(self, params: dict[str, Any]) -> None: ...
    def _file(self, path: Path) -> None: ...
    def _end(self, failed: bool) -> None: ...


class WandbTracker(Tracker):
    """A W&B run (``wandb.init``), offline unless ``WANDB_MODE`` says otherwise; a new run per call (``reinit
    "create_new"``), so folds trained in one process get a run each. Its one tag is the job ("train", "oof"; W&B
    tags are at most 64 characters, so the run's key is not one: the config's ``run_id`` identifies it)."""

    name = "wandb"

    def __init__(self, project: str, group: str, name: str, job_type: str, folder: str, config: Mapping[str, Any],
                 tags: Mapping[str, str]) -> None:  # fmt: skip
        super().__init__()
        silent = os.environ.get("WANDB_SILENT", "true").lower() in ("1", "true", "yes")
        import wandb

        Path(folder).mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=silent, console="off", save_code=False, disable_git=True)
        self.run = wandb.init(
            project=project, group=group, name=name, job_type=job_type, dir=folder, config=dict(config),
            tags=[tags["kit_job"]], mode=os.environ.get("WANDB_MODE") or "offline",
            reinit="create_new", settings=settings,
        )  # fmt: skip

    def _metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def _summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def _params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def _file(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def _end(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """``MLFLOW_ALLOW_FILE_STORE=true`` while a ``file:`` store is opened (mlflow checks it only then), restored
    afterwards (module docstring)."""
    if not uri.startswith("file:"):
        yield
        return
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def mlflow_client(uri: str):
    """An ``mlflow.tracking.MlflowClient`` on ``uri`` whose store is open (a file store allowed for this call only);
    also what the tests read the runs back with."""
    from mlflow.tracking import MlflowClient

    with _file_store_allowed(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # opens (and caches) the store while the file store is allowed
    return client


class MlflowTracker(Tracker):
    """An MLflow run in experiment ``experiment`` (created when absent), through ``MlflowClient``. Runs of the same
    ``kit_run`` tag still RUNNING (a killed attempt) are marked KILLED when the new one starts."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]
                 ) -> None:  # fmt: skip
        super().__init__()
        from mlflow.entities import Param, RunStatus

        self.client, self._param, self._status = mlflow_client(uri), Param, RunStatus
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._create_experiment(experiment)
        key = tags.get("kit_run", "")
        for old in self.client.search_runs(
            [experiment_id], f"tags.kit_run = '{key}' and attributes.status = 'RUNNING'"
        ):
            self.client.set_terminated(old.info.run_id, status="KILLED")
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id
        self._params(dict(params))

    def _create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name)
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MLFLOW_BATCH])

    def _summary(self, values: dict[str, float]) -> None:
        self._metrics(values, 0)

    def _params(self, params: dict[str, Any]) -> None:
        items = [self._param(str(k), _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MLFLOW_BATCH])

    def _file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def _end(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def start_run(cfg: Any, name: str, job_type: str, params: Mapping[str, Any], key: str, enabled: bool = True
              ) -> Tracker:  # fmt: skip
    """Open a run of ``cfg.tracker`` named ``name`` in the experiment ``cfg.exp`` (W&B: group; MLflow: experiment).

    Args:
        cfg: a stage config with ``tracker``, ``tracker_project``, ``tracker_uri``, ``exp`` and ``exp_dir``.
        name: the run's name ("<exp>/fold0", "<exp>/oof").
        job_type: "train" or "oof" (W&B job type, MLflow tag ``kit_job``).
        params: the run's config / params.
        key: what identifies the run across attempts (the MLflow tag ``kit_run``, a W&B tag).
        enabled: False gives the no-op ``Tracker`` (DDP ranks other than 0).
    Returns:
        A ``Tracker``; the no-op one with tracking off, or when the tracker cannot start (warning logged).
    """
    tracker = _value(cfg, "tracker")
    if not tracker or not enabled:
        return Tracker()
    tags = {"kit_exp": str(cfg.exp), "kit_job": job_type, "kit_run": key}
    try:
        if tracker == "wandb":
            project = _value(cfg, "tracker_project") or "kitlib"
            return WandbTracker(project, str(cfg.exp), name, job_type, tracker_location(cfg), params, tags)
        return MlflowTracker(tracker_location(cfg), str(cfg.exp), name, params, tags)
    except Exception as e:  # noqa: BLE001 - tracking must not stop the stage (module docstring)
        log.warning("%s tracker: starting run %s at %s failed (%s: %s); the stage runs untracked", tracker, name,
                    tracker_location(cfg), type(e).__name__, e)  # fmt: skip
        return Tracker()


def fold_tracker(cfg: Any, run_id: str, enabled: bool = True) -> Tracker:
    """The run of one ``10_train`` fold: ``<exp>/fold<k>``, params the whole ``TrainConfig`` with ``run_id`` and
    ``recipe_source`` (``start_run``; ``kitlib.train.train_fold`` opens it on rank 0)."""
    params = {**cfg.to_dict(), "run_id": run_id, "recipe_source": cfg.recipe_source}
    return start_run(cfg, f"{cfg.exp}/fold{cfg.fold}", "train", params, f"{cfg.exp}/fold{cfg.fold}/{run_id}", enabled)


def log_oof_stage(cfg: Any, summary: Mapping[str, Any]) -> None:
    """Track ``20_oof``: a run ``<exp>/oof`` with the ``OofConfig``, the CV (``summary``, ``cv.json``'s content: its
    numbers, e.g. ``cv``, ``cv_postprocessed``, ``per_class/<class>/cv``) and the post-processing choice
    (``postprocess.json`` as params ``postprocess.<key>`` / W&B config ``postprocess``; both files attached). Nothing
    with ``tracker`` None."""
    if not _value(cfg, "tracker"):
        return
    post_path, cv_path = Path(cfg.exp_dir) / "postprocess.json", Path(cfg.exp_dir) / "cv.json"
    post = read_json(post_path) if post_path.is_file() else {}
    with start_run(cfg, f"{cfg.exp}/oof", "oof", cfg.to_dict(), f"{cfg.exp}/oof") as tracker:
        if tracker.name == "wandb":
            tracker.log_params({"postprocess": post, "postprocess_method": summary.get("postprocess")})
        else:
            tracker.log_params({"postprocess_method": summary.get("postprocess"),
                                **{f"postprocess.{k}": v for k, v in post.items()}})  # fmt: skip
        tracker.log_summary(summary)
        for path in (post_path, cv_path):
            tracker.log_file(path)


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2, 3]}`` -> ``{"a/b": 1, "c/0": 2, "c/1": 3}``."""
    if isinstance(values, Mapping):
        items = values.items()
    elif isinstance(values, (list, tuple)):
        items = enumerate(values)
    else:
        return {prefix: values}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The int / float entries (numpy scalars too) as floats, NaN kept, bools and text left out."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not hasattr(v, "__float__"):
            continue
        out[str(k)] = float(v)
    return out


def _param_text(value: Any) -> str:
    """An MLflow parameter value: strings as they are, the rest JSON; cut to MLflow's limit (noted in the text)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MLFLOW_PARAM_CHARS:
        text = text[: _MLFLOW_PARAM_CHARS - 20] + " ...(cut)"
    return text


def _now_ms() -> int:
    import time

    return int(math.floor(time.time() * 1000))
