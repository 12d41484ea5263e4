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
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kitlib.config import StageConfig
from kitlib.io import project_path
from kitlib.params import ParameterError
from kitlib.presets import get_preset, model_preset
from kitlib.recipes import AMP_MODES, OOF_DTYPES, SCHEDULERS, recipe_for

__all__ = ["EdaConfig", "TrainConfig", "OofConfig", "EnsembleConfig", "SubmitConfig"]


class _ExperimentStage(StageConfig):
    """A stage that reads or writes ``<artifacts_root>/<exp>/`` of a competition (``preset``)."""

    def _resolve(self) -> None:
        self._set_resolved(preset=get_preset(self._values["preset"]))

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
    - ``recipe_source``: where the recipe's values come from.

    Raises (when built):
        ParameterError: as ``StageConfig``; KeyError: an unknown preset or loss; ValueError: a value out of range,
            an unknown scheduler / amp / OOF dtype, a presence classifier on a multiclass or classification preset.
    """

    stage = "10_train"
    notebook = "notebooks/10_train.py"

    #: Parameters that do not change the trained weights (left out of ``run_id``).
    RUN_ID_IGNORES = ("num_workers", "device", "tta", "oof_dtype", "artifacts_root", "data_dir", "gpus")

    def _resolve(self) -> None:
        preset = get_preset(self._values["preset"])
        learned = model_preset(preset, self._values.get("arch"))
        recipe, source = recipe_for(preset, learned)
        self._set_values(**{k: v for k, v in recipe.items() if k in self._values and self._values[k] is None})
        weights = self._values.get("encoder_weights")
        if isinstance(weights, str) and weights.lower() in ("", "none"):
            self._set_values(encoder_weights=None)
        self._set_resolved(preset=preset, model_preset=learned, recipe_source=source)
        self._check()

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
        from kitlib.losses import LOSSES, RECIPES  # torch: only when a training run is configured

        if v["loss"] not in RECIPES and v["loss"] not in LOSSES:
            raise KeyError(f"unknown loss {v['loss']!r}; recipes: {sorted(RECIPES)}; losses: {sorted(LOSSES)}")
        unresolved = sorted(k for k, value in v.items() if value is None and k != "encoder_weights")
        if unresolved:
            raise ParameterError(f"{self.stage}: no value for {unresolved} in the parameters or the recipe")

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
    def crop(self) -> tuple[int, int] | None:
        """(height, width) of the train-time random crop, None for whole images."""
        v = self._values
        if v["crop_height"] or v["crop_width"]:
            return (v["crop_height"] or v["height"], v["crop_width"] or v["width"])
        return None

    @property
    def normalization_name(self) -> str:
        """The encoder (segmentation) or timm model (classifiers) whose pretrained mean/std the images take."""
        return self._values["encoder_name"] if self.model_preset.is_segmentation else self._values["model_name"]

    def run_id(self) -> str:
        """SHA-256 (16 hex) of the parameters that change the trained weights; ``last.pt`` of another id is refused."""
        fields = {k: v for k, v in self._values.items() if k not in self.RUN_ID_IGNORES}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OofConfig(_ExperimentStage):
    """``notebooks/20_oof.py``: gather an experiment's OOF, score it, search its post-processing."""

    stage = "20_oof"
    notebook = "notebooks/20_oof.py"

    @property
    def config_path(self) -> Path:
        return self.exp_dir / "oof_config.json"


class EnsembleConfig(_ExperimentStage):
    """``notebooks/30_ensemble.py``: blend experiments' OOF and search the blend's post-processing. ``exps`` (or
    ``exp`` when ``exps`` is empty) names the experiments; resolved ``names`` lists them."""

    stage = "30_ensemble"
    notebook = "notebooks/30_ensemble.py"

    def _resolve(self) -> None:
        super()._resolve()
        names = [e.strip() for e in (self._values["exps"] or self._values["exp"]).split(",") if e.strip()]
        if not names:
            raise ValueError(f"{self.stage}: exps names no experiment (exps={self._values['exps']!r})")
        self._set_resolved(names=names)

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
