"""The config object of each stage: what its notebook's parameters cell declares, checked and resolved once.

===========  ======================  ===================================================================
stage        config                  saved as
===========  ======================  ===================================================================
00_eda       ``EdaConfig``           ``artifacts/<exp>/eda_config.json``
10_train     ``TrainConfig``         ``artifacts/<exp>/fold<k>/config.json`` (with ``run_id``)
20_oof       ``OofConfig``           ``artifacts/<exp>/oof_config.json``
30_ensemble  ``EnsembleConfig``      ``artifacts/<ensemble_name>/config.json``
40_submit    ``SubmitConfig``        ``submission_config.json`` beside the submission
===========  ======================  ===================================================================

The parameters themselves are declared only in the notebooks (``kitlib.config``): these classes add what each stage
resolves once at the boundary (``cfg.preset`` is the ``Preset`` the ``preset`` name stands for; a training run's
``None`` parameters take the recipe's values, ``kitlib.recipes``) and the folders its files go to. Below this layer,
kitlib functions take these objects and ``Preset`` objects, never names to look up again.

A ``preset`` that is a preset file (``path/to/competition.yaml``, ``kitlib.presets.load_preset_file``; relative: from
the repository root) is read once, its left-out COCO classes from the label file (``kitlib.coco.with_label_classes``),
and the saved config keeps the resolved preset: ``"preset_file": {"param", "path", "sha256", "fields"}``. A config
loaded from a file rebuilds its preset from those ``fields``, so a later stage, inference or a Kaggle kernel gets the
same preset without the YAML file (a file that changed since is logged and not read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kitlib.coco import with_label_classes
from kitlib.config import StageConfig
from kitlib.io import project_path, root_relative
from kitlib.params import ParameterError
from kitlib.presets import (
    Preset,
    get_preset,
    is_preset_file,
    model_preset,
    preset_fields,
    preset_file_digest,
    preset_from_fields,
)
from kitlib.recipes import (
    AMP_MODES,
    OOF_DTYPES,
    SCHEDULERS,
    SEGMENTATION_MIXES,
    STACKERS,
    check_optimizer,
    fill_recipe,
    recipe_for,
)
from kitlib.tracking import check_tracker

__all__ = ["EdaConfig", "TrainConfig", "OofConfig", "EnsembleConfig", "SubmitConfig"]

log = logging.getLogger(__name__)
#: The key of a saved config that holds the resolved preset of a preset file (module docstring).
PRESET_FILE_KEY = "preset_file"


class _ExperimentStage(StageConfig):
    """A stage that reads or writes ``<artifacts_root>/<exp>/`` of a competition (``preset``)."""

    RELATIVE_PATHS = ("data_dir", "artifacts_root")

    def _resolve(self) -> None:
        self._set_resolved(preset=self._resolve_preset())

    def _resolve_preset(self) -> Preset:
        """The ``Preset`` of the ``preset`` parameter: a built-in by name, the one this config was saved with (a preset
        file's ``fields``), or the preset file read now, with the classes of its label file when it leaves them out.

        Raises:
            KeyError: an unknown name. FileNotFoundError, PresetFileError: a preset file that is absent or wrong.
        """
        name = self._values["preset"]
        if not is_preset_file(name):
            return get_preset(name)
        saved = self._extra.get(PRESET_FILE_KEY)
        if isinstance(saved, dict) and saved.get("param") == name:
            path = project_path(str(saved.get("path", name)))  # saved relative to the project root when under it
            if path.is_file() and preset_file_digest(path) != saved.get("sha256"):
                log.warning("%s changed since this config was saved; the preset saved with the config is used", path)
            return preset_from_fields(saved.get("fields"), f"{path} (as saved in the {self.stage} config)")
        return with_label_classes(get_preset(name), self.data_path)

    def save(self, path: str | os.PathLike | None = None, **extra: Any) -> Path:
        """``StageConfig.save``, with the resolved preset of a preset file (``preset_file``: the parameter, the file's
        path, relative to the project root when under it, its SHA-256, the ``Preset`` fields): load needs no YAML."""
        name = self._values["preset"]
        if is_preset_file(name):
            file = project_path(name)
            sha = preset_file_digest(file) if file.is_file() else None
            record = {"param": name, "path": root_relative(file), "sha256": sha, "fields": preset_fields(self.preset)}
            extra.setdefault(PRESET_FILE_KEY, record)
        return super().save(path, **extra)

    @property
    def artifacts_dir(self) -> Path:
        """``artifacts_root`` as an absolute path (relative: from the repository root)."""
        return project_path(self._values["artifacts_root"])

    @property
    def exp_dir(self) -> Path:
        """``<artifacts_root>/<exp>/``."""
        return self.artifacts_dir / self._values["exp"]

    @property
    def gate_dir(self) -> Path | None:
        """``<artifacts_root>/<gate_exp>/`` of a stage with a ``gate_exp`` parameter; None without one."""
        gate = self._values.get("gate_exp")
        return self.artifacts_dir / gate if gate else None

    @property
    def data_path(self) -> Path:
        """``data_dir`` as an absolute path."""
        return project_path(self._values["data_dir"])


class EdaConfig(_ExperimentStage):
    """``notebooks/00_eda.py``: how the competition table is read (``label_file``, ``drop_missing``,
    ``drop_invalid``) and how the folds are made; every later stage reads the table the same way."""

    stage = "00_eda"
    notebook = "notebooks/00_eda.py"

    def _resolve(self) -> None:
        """Also resolves ``recipe`` (the preset's training recipe, ``kitlib.recipes.recipe_for``) and
        ``augment_pipeline`` (``augment``, or the recipe's when "") for the augmentation grid."""
        super()._resolve()
        from kitlib.augment import load_pipeline

        if not -1 <= self._values.get("dup_distance", -1) <= 64:
            raise ValueError(
                f"{self.stage}: dup_distance must be -1 (off) or 0..64 bits, got {self._values['dup_distance']}"
            )
        recipe = recipe_for(self.preset, self.preset)[0]
        self._set_resolved(recipe=recipe, augment_pipeline=load_pipeline(self._values.get("augment") or
                                                                         recipe["augment"], check=False))  # fmt: skip

    @property
    def config_path(self) -> Path:
        return self.exp_dir / "eda_config.json"


class TrainConfig(_ExperimentStage):
    """``notebooks/10_train.py``: one fold's training run, resolved.

    Resolution (once, when the object is built): the ``None`` parameters take the recipe's values
    (``kitlib.recipes.recipe_for``: the kit's defaults, the preset's recipe, the presence classifier's changes),
    ``encoder_weights`` "none" or "" means None (from scratch), and the values are checked (sizes >= 1, known
    scheduler, amp mode, loss and OOF dtype). Resolved attributes besides the parameters:

    - ``preset``: the competition's ``Preset`` (the table, folds and cache are the competition's);
    - ``model_preset``: what the model learns and is scored on: ``preset``, or its presence task for
      ``arch="classifier"`` (``kitlib.presets.model_preset``);
    - ``recipe_source``: where the recipe's values come from;
    - ``augment_pipeline``: the augmentation pipeline ``augment`` names (``kitlib.augment``), or the one saved in
      the loaded config file (saved again by ``save``).

    Raises (when built):
        ParameterError: as ``StageConfig``; KeyError: an unknown preset or loss; ValueError: a value out of range,
            an unknown scheduler / amp / OOF dtype, a presence classifier on a multiclass or classification preset.
    """

    stage = "10_train"
    notebook = "notebooks/10_train.py"

    #: Parameters that do not change the trained weights (left out of ``run_id``).
    #: Parameters whose None is a value ("scratch", "equal weights"), not a gap for the recipe to fill.
    OPTIONAL = (
        "encoder_weights",
        "tta_weight",
        "init_from",
        "extra_class_map",
        "tracker",
        "compile_mode",
        "compile_backend",
    )
    RUN_ID_IGNORES = (
        "num_workers",
        "num_threads",  # the same training; the float sums' order (last bits) follows the thread count, as the device
        "device",
        "tta",
        "tta_weight",
        "oof_dtype",
        "artifacts_root",
        "data_dir",
        "gpus",
        "exclude_ids_file",
        "relabel_file",
        "tracker",
        "tracker_project",
        "tracker_uri",
        "compile",  # torch.compile trains the same weights as eager mode
        "compile_mode",
        "compile_backend",
    )  # the lists' content counts: kitlib.train.fold_run_id

    def _resolve(self) -> None:
        preset = self._resolve_preset()
        learned = model_preset(preset, self._values.get("arch"))
        recipe, source = recipe_for(preset, learned, self._values.get("recipe") or "")
        self._set_values(**fill_recipe(recipe, self._values))
        weights = self._values.get("encoder_weights")
        if isinstance(weights, str) and weights.lower() in ("", "none"):
            self._set_values(encoder_weights=None)
        self._set_resolved(preset=preset, model_preset=learned, recipe_source=source,
                           augment_pipeline=self._augment_pipeline())  # fmt: skip
        self._check()

    def _augment_pipeline(self) -> dict[str, Any]:
        """The pipeline ``augment`` stands for (``kitlib.augment.load_pipeline``): the one saved in the config file
        this object was loaded from when it was saved for the same ``augment`` (a rerun or inference needs no
        file), else the named pipeline or the file."""
        from kitlib.augment import load_pipeline

        saved = self._extra.get("augment_pipeline")
        if isinstance(saved, dict) and saved.get("augment") == self._values["augment"]:
            return load_pipeline(saved["pipeline"])
        return load_pipeline(self._values["augment"])

    def _check(self) -> None:
        v = self._values
        for name in ("height", "width", "batch_size", "epochs", "accumulate"):
            if v[name] is None or int(v[name]) < 1:
                raise ValueError(f"{self.stage}: {name} must be >= 1, got {v[name]}")
        if v["fold"] < 0:
            raise ValueError(f"{self.stage}: fold must be >= 0, got {v['fold']}")
        if v["scheduler"] not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v['scheduler']!r}; options: {list(SCHEDULERS)}")
        if v["amp"] not in AMP_MODES:
            raise ValueError(f"unknown amp {v['amp']!r}; options: {list(AMP_MODES)}")
        if v["oof_dtype"] not in OOF_DTYPES:
            raise ValueError(f"oof_dtype must be one of {list(OOF_DTYPES)}, got {v['oof_dtype']!r}")
        if v.get("relabel_file") and self.model_preset.task != "classification":
            raise ValueError(f"{self.stage}: relabel_file {v['relabel_file']!r} replaces classification labels; a "
                             f"{self.model_preset.task} task's masks cannot be relabelled from a list: use "
                             "exclude_ids_file")  # fmt: skip
        unresolved = sorted(k for k, value in v.items() if value is None and k not in self.OPTIONAL)
        if unresolved:
            raise ParameterError(f"{self.stage}: no value for {unresolved} in the parameters or the recipe")
        self._check_schedule()
        self._check_heads()
        self._check_loss()
        self._check_mix()
        self._check_distill()
        self._check_train_rows()
        self._check_coteach()
        check_tracker(self.stage, v)
        _check_compile(self.stage, v)
        from kitlib.tta import check_tta  # torch: only when a training run is configured

        check_tta(v["tta"], v["tta_weight"], segmentation=self.model_preset.is_segmentation)

    def _check_schedule(self) -> None:
        v = self._values
        check_optimizer(v["optimizer"])
        if v["restart_epochs"] <= 0 or v["restart_mult"] < 1 or v["plateau_patience"] < 0:
            raise ValueError(f"{self.stage}: restart_epochs must be > 0, restart_mult >= 1, plateau_patience >= 0; got "
                             f"{v['restart_epochs']}, {v['restart_mult']}, {v['plateau_patience']}")  # fmt: skip
        if min(v["swa_epochs"], v["average_top_k"]) < 0 or (v["swa_epochs"] and v["average_top_k"]):
            raise ValueError(f"{self.stage}: average either the last swa_epochs or the average_top_k best epochs, "
                             f"got {v['swa_epochs']} and {v['average_top_k']}")  # fmt: skip
        if v["valid_last"] < 0 or (v["valid_last"] and v["average_top_k"] > v["valid_last"]):
            raise ValueError(f"{self.stage}: valid_last must be >= 0 (0: every epoch) and >= average_top_k (epochs not "
                             f"validated have no score), got {v['valid_last']} and {v['average_top_k']}")  # fmt: skip
        if not 0.0 < v.get("restart_gamma", 1.0) <= 1.0:
            raise ValueError(f"{self.stage}: restart_gamma must be in (0, 1], got {v['restart_gamma']}")
        if v["scheduler"] == "cosine_warmup_restarts" and v["warmup_epochs"] >= v["restart_epochs"]:
            raise ValueError(f"{self.stage}: cosine_warmup_restarts warms up at the start of every cycle: "
                             f"warmup_epochs ({v['warmup_epochs']}) must be shorter than restart_epochs "
                             f"({v['restart_epochs']})")  # fmt: skip
        if v["scheduler"] in ("cosine", "cosine_restarts") and v["warmup_epochs"] >= self.n_epochs:
            raise ValueError(f"{self.stage}: warmup_epochs ({v['warmup_epochs']}) must be shorter than the run "
                             f"(epochs {self.n_epochs}{', smoke' if v['smoke'] else ''}): set warmup_epochs below it "
                             "(0 for none)")  # fmt: skip
        if max(v["swa_epochs"], v["average_top_k"]) > v["epochs"]:
            raise ValueError(f"{self.stage}: cannot average {max(v['swa_epochs'], v['average_top_k'])} epochs of a "
                             f"{v['epochs']}-epoch run")  # fmt: skip

    def _check_heads(self) -> None:
        v = self._values
        if v["init_from"] == v["exp"]:
            raise ValueError(f"{self.stage}: init_from names this experiment ({v['exp']!r}); name the one to start")
        heads = self.head_kwargs
        if heads and self.model_preset.is_segmentation:
            raise ValueError(f"{self.stage}: {sorted(heads)} set the head of a timm classifier; a segmentation model's "
                             "classification head takes aux_head and dropout")  # fmt: skip
        if set(heads) & set(v["model_kwargs"]):
            raise ValueError(f"{self.stage}: {sorted(set(heads) & set(v['model_kwargs']))} given both as parameters "
                             "and in model_kwargs")  # fmt: skip
        if v["multi_sample_dropout"] >= 2 and not 0.0 < v["dropout"] < 1.0:
            raise ValueError(f"{self.stage}: multi_sample_dropout {v['multi_sample_dropout']} needs dropout in (0, 1), "
                             f"got {v['dropout']}")  # fmt: skip

    def _check_loss(self) -> None:
        from kitlib.losses import LOSSES, RECIPES, check_loss_kwargs  # torch: only when a training run is configured

        v = self._values
        if v["loss"] not in RECIPES and v["loss"] not in LOSSES:
            raise KeyError(f"unknown loss {v['loss']!r}; recipes: {sorted(RECIPES)}; losses: {sorted(LOSSES)}")
        kwargs = v["loss_kwargs"] or {}
        if v["loss"] in RECIPES:
            if kwargs:
                raise ParameterError(f"{self.stage}: loss_kwargs {kwargs} given with the loss recipe {v['loss']!r}; "
                                     "loss_kwargs are the keywords of a loss name (kitlib.losses.LOSSES)")  # fmt: skip
            return
        try:
            check_loss_kwargs(v["loss"], kwargs)
        except TypeError as e:
            raise ParameterError(f"{self.stage}: loss_kwargs: {e}") from None
        classes = self._resolved["model_preset"].num_classes
        weight = kwargs.get("weight")
        if weight is not None and (not isinstance(weight, list) or len(weight) != classes):
            raise ValueError(
                f"{self.stage}: loss_kwargs weight must be a list of {classes} class weights, got {weight!r}"
            )

    def _check_mix(self) -> None:
        from kitlib.mixes import check_mix

        v = self._values
        if "mix" not in v:  # a config saved before batch mixing existed: no mix (``mix_epochs``)
            return
        try:
            check_mix(v["mix"], v["mix_prob"], v["mix_alpha"])
        except ValueError as e:
            raise ValueError(f"{self.stage}: {e}") from None
        task = self._resolved["model_preset"]
        if v["mix"] == "copy_paste" and not task.is_segmentation:
            raise ValueError(f"{self.stage}: mix 'copy_paste' pastes segmentation objects; a {task.task} task takes "
                             "mixup, cutmix, fmix or mixup_cutmix")  # fmt: skip
        if v["mix"] not in ("none", *SEGMENTATION_MIXES) and task.is_segmentation:
            raise ValueError(f"{self.stage}: mix {v['mix']!r} mixes labels; a {task.task} segmentation task takes "
                             f"{list(SEGMENTATION_MIXES)}")  # fmt: skip
        if task.task == "presence" and v["mix"] != "none":
            raise ValueError(f"{self.stage}: a presence classifier trains unmixed (mix {v['mix']!r})")
        for name in ("mix_classes", "oversample_classes"):
            if v.get(name):
                try:
                    task.class_indices(v[name])
                except ValueError as e:
                    raise ValueError(f"{self.stage}: {name}: {e}") from None
        if v.get("oversample_factor", 1.0) <= 0:
            raise ValueError(f"{self.stage}: oversample_factor must be > 0, got {v['oversample_factor']}")
        if v["mix_off_epochs"] < 0:
            raise ValueError(f"{self.stage}: mix_off_epochs must be >= 0, got {v['mix_off_epochs']}")
        if v["mix"] != "none" and v["mix_off_epochs"] >= v["epochs"]:
            raise ValueError(f"{self.stage}: mix_off_epochs {v['mix_off_epochs']} leaves none of the {v['epochs']} "
                             f"epochs mixed (mix {v['mix']!r})")  # fmt: skip

    def _check_distill(self) -> None:
        """``distill_alpha`` in [0, 1], ``distill_temperature`` > 0, a teacher other than this experiment (its files
        are checked when the fold trains: ``kitlib.distill.load_teacher``)."""
        v = self._values
        if not 0.0 <= v.get("distill_alpha", 0.5) <= 1.0:
            raise ValueError(f"{self.stage}: distill_alpha must be in [0, 1], got {v['distill_alpha']}")
        if not v.get("distill_temperature", 1.0) > 0:
            raise ValueError(f"{self.stage}: distill_temperature must be > 0, got {v['distill_temperature']}")
        if v.get("distill_from") and v["distill_from"] == v["exp"]:
            raise ValueError(f"{self.stage}: distill_from names this experiment ({v['exp']!r}); name the teacher")

    def _check_train_rows(self) -> None:
        """The train-only rows' parameters (``kitlib.train_rows``); their files are read when the fold trains."""
        v = self._values
        if not v["extra_data"] and (v["extra_label_file"] or v["extra_preset"] or v["extra_class_map"] is not None):
            raise ValueError(f"{self.stage}: extra_label_file, extra_preset and extra_class_map describe extra_data, "
                             "which is empty")  # fmt: skip
        if not 0.0 <= v["pseudo_threshold"] <= 1.0:
            raise ValueError(f"{self.stage}: pseudo_threshold must be in [0, 1], got {v['pseudo_threshold']}")
        if v["pseudo_soft"] and (not v["pseudo_from"] or self.preset.task != "classification"):
            raise ValueError(f"{self.stage}: pseudo_soft gives soft labels of a classification preset's pseudo_from "
                             f"experiment (preset {self.preset.name!r} is {self.preset.task})")  # fmt: skip
        if (v["extra_data"] or v["pseudo_from"]) and self.model_preset.task == "presence":
            raise ValueError(f"{self.stage}: extra_data and pseudo_from train segmentation or classification models, "
                             "not a presence classifier")  # fmt: skip

    @property
    def extra_source_preset(self) -> Preset:
        """The preset ``extra_data`` is read with: ``extra_preset`` (a built-in name or a preset file), else the
        competition's. Resolved when used (training), so inference loads the config without the extra set's files."""
        name = self._values["extra_preset"]
        return get_preset(name) if name else self.preset

    def _check_coteach(self) -> None:
        v = self._values
        if not v.get("coteach"):  # off, or a config saved before co-teaching existed
            return
        if not 0.0 <= v["coteach_tau"] < 1.0:
            raise ValueError(f"{self.stage}: coteach_tau (the forget rate) must be in [0, 1), got {v['coteach_tau']}")
        if not 1 <= v["coteach_epochs"] <= v["epochs"]:
            raise ValueError(f"{self.stage}: coteach_epochs (T_k, the epochs of the forget rate's rise) must be in 1.."
                             f"{v['epochs']} (epochs), got {v['coteach_epochs']}")  # fmt: skip
        if v["coteach_predict"] not in ("a", "b", "mean"):
            raise ValueError(f"{self.stage}: coteach_predict must be a, b or mean, got {v['coteach_predict']!r}")
        if v.get("distill_from"):
            raise ValueError(f"{self.stage}: coteach and distill_from do not go together (co-teaching's per-image "
                             "selection uses the hard-label loss); train one or the other")  # fmt: skip

    @property
    def fold_dir(self) -> Path:
        """``<artifacts_root>/<exp>/fold<k>/``."""
        return self.exp_dir / f"fold{self._values['fold']}"

    @property
    def config_path(self) -> Path:
        return self.fold_dir / "config.json"

    @property
    def n_epochs(self) -> int:
        """Epochs to train: ``epochs``, or 2 for a ``smoke`` run."""
        return 2 if self._values["smoke"] else int(self._values["epochs"])

    @property
    def monitor_column(self) -> str:
        """The history column that picks ``best.pt``: ``monitor``, or ``valid_<metric>`` of what the model learns."""
        return self._values["monitor"] or f"valid_{self.model_preset.metric}"

    @property
    def minimise(self) -> bool:
        """Whether a lower monitored score is better (a loss or an error)."""
        return self.monitor_column.endswith(("loss", "error"))

    @property
    def head_kwargs(self) -> dict[str, Any]:
        """``create_classifier`` keywords of the classifier head parameters that differ from timm's defaults
        (``multi_sample_dropout``, ``global_pool``, ``drop_path_rate``), so a default run's ``model_config`` stays
        as it was."""
        defaults = {"multi_sample_dropout": 0, "global_pool": "avg", "drop_path_rate": 0.0}
        return {k: self._values[k] for k, d in defaults.items() if self._values[k] != d}

    @property
    def mix_epochs(self) -> int:
        """How many epochs, the first ones, mix their batches (``kitlib.mixes``): ``n_epochs - mix_off_epochs``; 0
        with mix "none" or for a config saved before batch mixing existed."""
        v = self._values
        if v.get("mix", "none") == "none":
            return 0
        return max(self.n_epochs - int(v["mix_off_epochs"]), 0)

    @property
    def crop(self) -> tuple[int, int] | None:
        """(height, width) of the train-time random crop, None for whole images."""
        v = self._values
        if v["crop_height"] or v["crop_width"]:
            return (v["crop_height"] or v["height"], v["crop_width"] or v["width"])
        return None

    @property
    def resize(self) -> bool:
        """Whether the images are resized to (height, width) at every stage; False with ``native_scale``."""
        return not self._values.get("native_scale")

    @property
    def normalization_name(self) -> str:
        """The encoder (segmentation) or timm model (classifiers) whose pretrained mean/std the images take."""
        return self._values["encoder_name"] if self.model_preset.is_segmentation else self._values["model_name"]

    def save(self, path=None, **extra: Any) -> Path:
        """``StageConfig.save`` with the augmentation pipeline itself beside the parameters (``augment_pipeline``:
        ``{"augment", "pipeline"}``), so that ``load`` rebuilds the same transforms without the YAML file."""
        record = {"augment": self._values["augment"], "pipeline": self.augment_pipeline}
        return super().save(path, **{"augment_pipeline": record, **extra})

    def run_id(self) -> str:
        """SHA-256 (16 hex) of the parameters that change the trained weights; ``last.pt`` of another id is refused.
        An ``augment`` path counts with the pipeline it holds (an edited file is another run); a named pipeline
        counts by its name."""
        from kitlib.augment import PIPELINES

        fields = {k: v for k, v in self._values.items() if k not in self.RUN_ID_IGNORES}
        if fields.get("augment") not in PIPELINES:
            fields["augment_pipeline"] = self.augment_pipeline
        if not fields.get("native_scale"):  # a config saved before native_scale existed keeps its run_id
            fields.pop("native_scale", None)
        if not fields.get("distill_from"):  # no teacher: alpha and T change nothing (and older run_ids stay)
            for name in ("distill_from", "distill_alpha", "distill_temperature"):
                fields.pop(name, None)
        if not fields.get("coteach"):  # a plain run keeps the run_id it had before co-teaching existed
            for name in ("coteach", "coteach_tau", "coteach_epochs", "coteach_predict"):
                fields.pop(name, None)
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OofConfig(_ExperimentStage):
    """``notebooks/20_oof.py``: gather an experiment's OOF, score it, search its post-processing."""

    stage = "20_oof"
    notebook = "notebooks/20_oof.py"

    def _resolve(self) -> None:
        super()._resolve()
        check_tracker(self.stage, self._values)

    @property
    def config_path(self) -> Path:
        return self.exp_dir / "oof_config.json"


class EnsembleConfig(_ExperimentStage):
    """``notebooks/30_ensemble.py``: blend experiments' OOF and search the blend's post-processing. ``exps`` (or
    ``exp`` when ``exps`` is empty) names the experiments; resolved ``names`` lists them.

    Raises (when built):
        ValueError: no experiment; ``stacking`` on a segmentation preset, or ``stacking_c`` <= 0.
        KeyError: an unknown ``stacking`` model (the options are named).
    """

    stage = "30_ensemble"
    notebook = "notebooks/30_ensemble.py"

    def _resolve(self) -> None:
        super()._resolve()
        names = [e.strip() for e in (self._values["exps"] or self._values["exp"]).split(",") if e.strip()]
        if not names:
            raise ValueError(f"{self.stage}: exps names no experiment (exps={self._values['exps']!r})")
        self._set_resolved(names=names)
        self._check_stacking()

    def _check_stacking(self) -> None:
        model = self._values.get("stacking", "")  # absent from a config saved before stacking existed
        if not model:
            return
        if model not in STACKERS:
            raise KeyError(f"{self.stage}: unknown stacking {model!r}; options: {list(STACKERS)} ('' for none)")
        if self.preset.is_segmentation:
            raise ValueError(f"{self.stage}: stacking={model!r} needs a classification preset (a meta-model on (N, C) "
                             f"OOF probs); preset {self.preset.name!r} is {self.preset.task} segmentation: set "
                             "stacking ''")  # fmt: skip
        if not self._values.get("stacking_c", 1.0) > 0:
            raise ValueError(f"{self.stage}: stacking_c must be > 0, got {self._values['stacking_c']}")

    @property
    def out_dir(self) -> Path:
        """``<artifacts_root>/<ensemble_name>/``."""
        return self.artifacts_dir / self._values["ensemble_name"]

    @property
    def config_path(self) -> Path:
        return self.out_dir / "config.json"


class SubmitConfig(_ExperimentStage):
    """``notebooks/40_submit.py``: predict the test set with an experiment's (or an ensemble's) folds."""

    stage = "40_submit"
    notebook = "notebooks/40_submit.py"

    def _resolve(self) -> None:
        super()._resolve()
        from kitlib.tta import check_tta  # torch: only when a submission is configured

        check_tta(self._values["tta"], self._values["tta_weight"], segmentation=self.preset.is_segmentation)
        _check_compile(self.stage, self._values)

    @property
    def submission_file(self) -> Path:
        """``submission_path``, or ``runs/<exp>/submission.csv`` (relative: from the repository root)."""
        return project_path(self._values["submission_path"] or f"runs/{self._values['exp']}/submission.csv")

    @property
    def config_path(self) -> Path:
        return self.submission_file.with_name("submission_config.json")

    @property
    def folds(self) -> list[int] | None:
        """The folds to load: 0..n_folds-1 of ``exp``; None (every fold found) for 0 or an ensemble."""
        n = self._values["n_folds"]
        return list(range(n)) if n > 0 and not self._values["ensemble"] else None

    @property
    def source_dir(self) -> Path:
        """Where ``postprocess.json`` is read: the ensemble's folder, else the experiment's."""
        return self.artifacts_dir / (self._values["ensemble"] or self._values["exp"])


#: ``torch.compile``'s modes (inductor's); None is its default.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_compile(stage: str, v: Mapping[str, Any]) -> None:
    """``compile_mode`` one of ``COMPILE_MODES`` (inductor only) and ``compile_backend`` a backend torch knows
    (``torch._dynamo.list_backends``); a config without them (an older kit's) passes."""
    mode, backend = v.get("compile_mode"), v.get("compile_backend")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"{stage}: unknown compile_mode {mode!r}; options: None, {list(COMPILE_MODES)}")
    if backend is not None:
        import torch._dynamo  # torch: only when a backend is named

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"{stage}: unknown compile_backend {backend!r}; options: None (inductor), {known}")
        if mode is not None and backend != "inductor":
            raise ValueError(f"{stage}: compile_mode {mode!r} is inductor's; compile_backend {backend!r} takes none")
