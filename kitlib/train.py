"""One fold of training, end to end: ``train_fold(cfg)``, which ``notebooks/10_train.py`` calls in process and
``torchrun -m kitlib.train`` runs on several GPUs.

``cfg`` is a ``kitlib.stages.TrainConfig`` (the notebook's parameters, resolved against the preset's recipe in
``kitlib.recipes``). ``train_fold(cfg)`` writes ``artifacts/<exp>/fold<k>/``:

- ``config.json``: the whole config (``StageConfig.save``) with ``run_id``, ``recipe_source``, the world size and
  the images' ``normalization`` (mean/std, ``kitlib.data.config_normalization``);
  ``TrainConfig.load`` rebuilds it, and ``python -m kitlib.train fold<k>/config.json`` reruns the fold from it;
- ``last.pt``, ``best.pt``, ``history.csv``: see ``kitlib.engine.fit`` and ``kitlib.checkpoint``;
- ``oof_probs.npy``: probabilities of the held-out images at the competition's scoring resolution, rows in
  ``folds.csv`` order: (n, K, H, W) uint8 (round(p x 255)) for segmentation, (n, C) float16 for classification,
  (n, K) float32 for a presence classifier; ``oof_cls_probs.npy`` (n, K) float32 when the model has a classification
  head (``kitlib.predictions``);
- ``oof_ids.csv``: the image_id of each row;
- ``scores.json``: the held-out scores at the scoring resolution (probability 0.5, no post-processing;
  ``kitlib.scoring.score_oof``, the function 20_oof's CV comes from);
- ``timings.json``: where this process's wall time went, seconds per phase (``COMPUTE_PHASES`` are the training and
  prediction steps; ``fold_timings``);
- ``done.json``: written last; its presence means the fold is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kitlib import engine
from kitlib._private import PhaseTimer
from kitlib.cache import build_cache
from kitlib.coteach import CoTeachingLoss, CoTeachingModel
from kitlib.data import build_transforms, config_normalization, make_dataset
from kitlib.distill import attach_teacher, distill_loss, load_teacher
from kitlib.experiment import fold_split, load_table
from kitlib.formats import class_presence
from kitlib.hrnet_ocr import AuxSegLoss, HRNetOCR
from kitlib.io import read_json, read_torch, write_csv, write_json
from kitlib.label_noise import review_digest, review_training_rows
from kitlib.losses import RECIPES, SEGMENTATION_LOSSES, create_loss, create_recipe
from kitlib.models import create_classifier, create_model
from kitlib.optim import make_optimizer, make_scheduler
from kitlib.predictions import write_predictions
from kitlib.runtime import (
    barrier,
    compile_model,
    init_distributed,
    make_loader,
    resolve_amp,
    seed_everything,
    set_threads,
    unwrap,
)
from kitlib.scoring import score_oof
from kitlib.stages import TrainConfig
from kitlib.targets import TargetMasks, scoring_size
from kitlib.tracking import fold_tracker
from kitlib.train_rows import add_train_rows, sources_stamp
from kitlib.train_rows import cache_dir as train_cache_dir

__all__ = [
    "COMPUTE_PHASES", "build_loss", "build_model", "fold_run_id", "fold_tables", "fold_timings", "init_model",
    "launch_distributed", "sample_weights", "train_fold",
]  # fmt: skip

log = logging.getLogger(__name__)

#: The phases of ``timings.json`` that are training and prediction steps (forward, backward and optimiser steps; the
#: held-out images' forward passes); the others (tables, cache, model building, validation, checkpoints, OOF files and
#: scores) are what a fold spends around them.
COMPUTE_PHASES = ("train_steps", "oof_predict")


def fold_timings(timer: PhaseTimer) -> dict[str, Any]:
    """``timings.json`` of a fold from its ``PhaseTimer``: ``{"phases": {name: seconds}, "total_s", "compute_s",
    "compute_share"}``, ``compute_s`` the sum of ``COMPUTE_PHASES`` and ``compute_share`` its fraction of ``total_s``
    (0..1). The phases are exclusive and add up to ``total_s``, the seconds since the timer was made; "other" is what
    no phase holds (the config, tables, building the model and optimiser, the tracker)."""
    phases = timer.as_dict(other=True)
    total = sum(phases.values())
    compute = sum(phases.get(name, 0.0) for name in COMPUTE_PHASES)
    return {"phases": phases, "total_s": round(total, 3), "compute_s": round(compute, 3),
            "compute_share": round(compute / total, 4) if total else 0.0}  # fmt: skip


def fold_tables(cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(full, train, valid)`` tables of ``cfg.fold``: the competition table as ``00_eda`` read it, with its ``fold``
    column (``kitlib.experiment.load_table``), and the rows outside / inside the fold (``smoke`` trims them to two
    batches and one).

    Raises:
        FileNotFoundError: no ``folds.csv`` for the experiment.
        ValueError: the fold does not exist.
    """
    full = load_table(cfg.exp_dir, cfg.preset, cfg.data_path, cfg.label_file)
    train_df, valid_df = fold_split(full, cfg.fold, str(cfg.exp_dir / "folds.csv"))
    train_df = review_training_rows(cfg, full, train_df)  # exclude_ids_file / relabel_file: training rows only
    if cfg.smoke:
        train_df, valid_df = train_df.head(2 * cfg.batch_size), valid_df.head(max(cfg.batch_size, 2))
    return full, train_df, valid_df


def build_model(cfg: TrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of the run and the keywords that rebuild it (saved in its checkpoints).

    Segmentation presets get ``kitlib.models.create_model`` (``arch``, ``encoder_name``, ``aux_head``, ...),
    classification and presence tasks a timm classifier (``create_classifier``: ``model_name``, one output per class).
    With ``init_from`` no pretrained weights are loaded: ``init_model`` then loads every weight. With ``coteach``, a
    ``kitlib.coteach.CoTeachingModel`` of two such networks, the second's random weights drawn from ``seed + 1``
    (network a starts as a plain run's model does), and ``model_config`` gets ``coteach: {"predict": ...}``.
    """
    model, model_config = _one_model(cfg)
    if not cfg.coteach:
        return model, model_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        net_b = _one_model(cfg)[0]
    model_config = {**model_config, "coteach": {"predict": cfg.coteach_predict}}
    return CoTeachingModel(model, net_b, cfg.coteach_predict), model_config


def _one_model(cfg: TrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    task = cfg.model_preset
    weights = None if cfg.init_from else cfg.encoder_weights  # init_from replaces every weight
    if task.is_segmentation:
        model_config = dict(
            arch=cfg.arch, encoder_name=cfg.encoder_name, classes=task.num_classes, aux_head=cfg.aux_head,
            dropout=cfg.dropout, **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model_kwargs.items()},
        )  # fmt: skip
        return create_model(encoder_weights=weights, **model_config), model_config
    num_classes = len(task.target_classes) if task.task == "presence" else task.num_classes
    model_config = dict(model_name=cfg.model_name, num_classes=num_classes, drop_rate=cfg.dropout, **cfg.head_kwargs,
                        **cfg.model_kwargs)  # fmt: skip
    return create_classifier(pretrained_weights=weights, **model_config), model_config


def init_model(cfg: TrainConfig, model: torch.nn.Module, valid_df: pd.DataFrame) -> Path | None:
    """Load fold k's ``best.pt`` of the experiment ``cfg.init_from`` into ``model``, whole (staged fine-tuning: a
    new size or learning rate from a trained model, as the Cassava solutions did; the Understanding Clouds 6th
    place's pretrain-then-train).

    The source experiment's fold k must not have trained on this fold's held-out rows, or the OOF would leak: its
    ``folds.csv`` is compared with ``valid_df``.

    Args:
        cfg: the run; ``cfg.init_from`` names an experiment under ``cfg.artifacts_root`` (None: nothing is loaded).
        model: the freshly built model (CPU or device), before DDP wrapping.
        valid_df: this fold's held-out rows (``image_id``).
    Returns:
        The checkpoint loaded, or None.
    Raises:
        FileNotFoundError: no ``fold<k>/best.pt`` or ``folds.csv`` in the source experiment.
        ValueError: the source's fold k trained on some of this fold's held-out images (ids named); its weights
            do not fit the model (missing, unexpected or differently shaped keys named, with the source's
            ``model_config``).
    """
    if not cfg.init_from:
        return None
    source = cfg.artifacts_dir / cfg.init_from
    path, folds_path = source / f"fold{cfg.fold}" / "best.pt", source / "folds.csv"
    for needed in (path, folds_path):
        if not needed.is_file():
            raise FileNotFoundError(f"init_from {cfg.init_from!r}: {needed} not found (train fold {cfg.fold} of it "
                                    "first)")  # fmt: skip
    folds = pd.read_csv(folds_path, dtype={"image_id": str})
    seen = set(folds.loc[folds["fold"] != cfg.fold, "image_id"])
    leaked = sorted(set(valid_df["image_id"].astype(str)) & seen)
    if leaked:
        raise ValueError(
            f"init_from {cfg.init_from!r}: its fold {cfg.fold} trained on {len(leaked)} of this fold's "
            f"held-out images ({leaked[:5]}): the OOF would leak; use experiments with the same folds.csv"
        )
    checkpoint = read_torch(path, "model checkpoint")
    state, own = checkpoint["state_dict"], model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path}: weights do not fit this model: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}), other shapes "
            f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shapes[:5]]} ({len(shapes)}); it was built "
            f"with {checkpoint.get('model_config')}"
        )
    model.load_state_dict(state)
    log.info("fold %d: initialised from %s (epoch %s)", cfg.fold, path, checkpoint.get("epoch"))
    return path


def build_loss(cfg: TrainConfig, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The run's loss: a ``kitlib.losses.RECIPES`` recipe, or a ``LOSSES`` name built with ``loss_kwargs`` (the
    segmentation mode of the masks, ``Preset.mask_task``, is added for segmentation losses and the combo). A
    ``model`` with auxiliary logits (``HRNetOCR``: an ``aux_weight`` > 0) gets it wrapped in an ``AuxSegLoss``,
    the same loss on the soft object regions times that weight (Yuan et al. 2020: 0.4). With ``coteach``, that loss
    (of network a) inside a ``kitlib.coteach.CoTeachingLoss`` (``coteach_tau``, ``coteach_epochs``)."""
    if cfg.coteach:
        return CoTeachingLoss(_one_loss(cfg, getattr(model, "net_a", model)), cfg.coteach_tau, cfg.coteach_epochs)
    return _one_loss(cfg, model)


def _one_loss(cfg: TrainConfig, model: torch.nn.Module | None) -> torch.nn.Module:
    mode = cfg.model_preset.mask_task
    if cfg.loss in RECIPES:
        loss = create_recipe(cfg.loss, mode=mode)
    else:
        kwargs = dict(cfg.loss_kwargs)
        if mode is not None and (cfg.loss in SEGMENTATION_LOSSES or cfg.loss == "combo"):
            kwargs.setdefault("mode", mode)
        loss = create_loss(cfg.loss, **kwargs)
    if isinstance(model, HRNetOCR) and model.aux_weight > 0:
        return AuxSegLoss(loss, model.aux_weight)
    return loss


def fold_run_id(cfg: TrainConfig) -> str:
    """``cfg.run_id()`` combined with the content of the experiment's ``folds.csv``, the files of its train-only rows
    (``kitlib.train_rows.sources_stamp``) and the reviewed lists (``exclude_ids_file``, ``relabel_file``:
    ``kitlib.label_noise.review_digest``): a new split, new extra labels, test probabilities or lists: a new run."""
    folds_path = cfg.exp_dir / "folds.csv"
    folds = hashlib.sha256(folds_path.read_bytes()).hexdigest() if folds_path.is_file() else "no-folds"
    parts = [p for p in (sources_stamp(cfg), review_digest(cfg)) if p]  # both "" for a plain run: its id unchanged
    return hashlib.sha256(":".join([cfg.run_id(), folds, *parts]).encode()).hexdigest()[:16]


def _set_aside_other_run(fold_dir: Path, run_id: str) -> None:
    """Move a fold folder written by another configuration (other parameters or folds) to ``fold<k>.previous/``
    (replacing an older one), so the new run starts clean and the last one's checkpoints are kept, not mixed in."""
    config_path = fold_dir / "config.json"
    if not config_path.is_file():
        return
    previous = read_json(config_path).get("run_id")
    if previous == run_id:
        return
    aside = fold_dir.with_name(fold_dir.name + ".previous")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(fold_dir, aside)
    log.warning("%s was written by another configuration (run_id %s); moved to %s", fold_dir, previous, aside)


def _normalization(cfg: TrainConfig) -> dict[str, list[float]]:
    """The images' mean/std, recorded in the fold's ``config.json`` (smp 0.6 keeps an smp encoder's only in the
    Hugging Face cache, which a Kaggle kernel lacks: inference reads them here, ``config_normalization``)."""
    mean, std = config_normalization(cfg)
    return {"encoder": cfg.normalization_name, "weights": cfg.encoder_weights, "mean": list(mean), "std": list(std)}


def _loaders(cfg: TrainConfig, full_df: pd.DataFrame, train_df: pd.DataFrame, valid_df: pd.DataFrame, info) -> tuple:
    """Training and validation loaders (from the on-disk cache when ``cfg.cache``; rank 0 builds it)."""
    cache = None
    if cfg.cache:
        cache_dir = train_cache_dir(cfg, full_df)
        if info.is_main:
            cache = build_cache(
                full_df, cfg.preset, cache_dir, cfg.height, cfg.width, num_workers=cfg.num_workers or None
            )
        barrier()
        cache = cache or build_cache(full_df, cfg.preset, cache_dir, cfg.height, cfg.width)
    mean, std = config_normalization(cfg)
    if not cfg.resize:
        _check_native(full_df, cfg.height, cfg.width)
    size = (cfg.height, cfg.width, mean, std, cfg.augment_pipeline)
    train_tf = build_transforms("train", *size, crop=cfg.crop, resize=cfg.resize)
    valid_tf = build_transforms("valid", *size, resize=cfg.resize)
    train_ds = attach_teacher(make_dataset(train_df, cfg.model_preset, train_tf, cache), load_teacher(cfg, train_df))
    valid_ds = make_dataset(valid_df, cfg.model_preset, valid_tf, cache)
    train_loader = make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers, info, drop_last=None,
                               weights=sample_weights(cfg, train_df))  # fmt: skip
    return train_loader, make_loader(valid_ds, cfg.batch_size, False, cfg.seed, cfg.num_workers, info)


def sample_weights(cfg: TrainConfig, train_df: pd.DataFrame) -> np.ndarray | None:
    """Class-balanced sampling (the trash-sorting team oversampled the images of its rare classes): images that hold
    any of ``cfg.oversample_classes`` weigh ``cfg.oversample_factor``, the others 1.

    Args:
        cfg: the run; ``oversample_classes`` are names or indices of ``preset.classes``.
        train_df: the fold's training rows (segmentation: their masks; classification: ``label``).
    Returns:
        (n,) float64 weights for ``kitlib.runtime.make_loader``, or None (no oversampling: every image once an epoch).
    """
    if not cfg.oversample_classes or cfg.oversample_factor == 1.0:
        return None
    preset = cfg.model_preset
    wanted = preset.class_indices(cfg.oversample_classes)
    if preset.task == "classification":
        rare = train_df["label"].isin(wanted).to_numpy()
    else:  # presence columns follow target_classes: a multiclass preset's class c is column c - 1
        presence = class_presence(train_df, preset)
        columns = [c - 1 for c in wanted] if preset.task == "multiclass" else wanted
        rare = presence[:, columns].any(axis=1)
    log.info("fold %d: %d of %d training images hold %s: sampled x%g", cfg.fold, int(rare.sum()), len(rare),
             cfg.oversample_classes, cfg.oversample_factor)  # fmt: skip
    return np.where(rare, float(cfg.oversample_factor), 1.0)


def _check_native(df: pd.DataFrame, height: int, width: int) -> None:
    """``native_scale`` trains, validates and caches the images as they are: they must all be height x width.

    Raises:
        ValueError: an image of another size (the message names one and the sizes found).
    """
    other = df[(df["height"] != height) | (df["width"] != width)]
    if len(other):
        sizes = sorted({(int(h), int(w)) for h, w in zip(other["height"], other["width"], strict=True)})[:5]
        raise ValueError(f"native_scale: every train image must be {height}x{width} (height x width, the cache's "
                         f"size); {len(other)} are not, e.g. {other['image_id'].iloc[0]!r}, sizes {sizes}: set height "
                         "and width to the images' size")  # fmt: skip


def train_fold(cfg: TrainConfig, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train fold ``cfg.fold`` and write its artifacts (module docstring); resumes a killed run from ``last.pt``.

    The fold folder belongs to one configuration (``fold_run_id``: the training parameters and ``folds.csv``): a
    finished fold of the same configuration is returned as it is; a folder of another one is moved to
    ``fold<k>.previous/`` first.

    Works in one process and under ``torchrun`` (DDP: each rank trains on its shard, rank 0 writes files; the OOF
    rows are predicted in shards and written into one file).

    Args:
        cfg: the run (``TrainConfig.from_params`` in the notebook, ``TrainConfig.from_notebook`` elsewhere).
        stop_after_epoch: stop as if killed after this epoch (tests of resuming); no OOF is written then.
    Returns:
        ``{"fold_dir", "best_epoch", "best_score", "monitor", "scores", "history"}``; ``scores`` are the OOF scores
        at the scoring resolution (None when stopped early by ``stop_after_epoch``).
    Raises:
        FileNotFoundError: no ``folds.csv`` for the experiment.
        ValueError: a fold that does not exist; a ``distill_from`` teacher whose OOF does not fit the fold
            (``kitlib.distill.load_teacher``).
        NonFiniteLossError: the loss became NaN/inf.
    """
    timer = PhaseTimer()
    info, device = init_distributed(cfg.device)
    threads = set_threads(cfg.num_threads)
    fold_dir, run_id = cfg.fold_dir, fold_run_id(cfg)
    done_path = fold_dir / "done.json"
    if done_path.is_file() and read_json(done_path).get("run_id") == run_id:
        return read_json(done_path)
    if info.is_main:
        _set_aside_other_run(fold_dir, run_id)
        cfg.save(fold_dir / "config.json", run_id=run_id, recipe_source=cfg.recipe_source,
                 world_size=info.world_size, normalization=_normalization(cfg))  # fmt: skip
    barrier()

    full_df, train_df, valid_df = fold_tables(cfg)
    full_df, train_df = add_train_rows(cfg, full_df, train_df)  # extra_data, pseudo_from: training rows only
    with timer.phase("cache_and_loaders"):
        train_loader, valid_loader = _loaders(cfg, full_df, train_df, valid_df, info)
    seed_everything(cfg.seed)
    model, model_config = build_model(cfg)
    init_model(cfg, model, valid_df)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.encoder_lr, cfg.decoder_lr, cfg.weight_decay, cfg.optimizer,
                               **cfg.optimizer_kwargs)  # fmt: skip
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    model = compile_model(model, cfg)  # after the optimizer's groups (named by the plain module's keys) and DDP
    steps_per_epoch = -(-len(train_loader) // cfg.accumulate)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = make_scheduler(
        optimizer, cfg.scheduler, cfg.n_epochs * steps_per_epoch, warmup_steps=warmup, pct_start=cfg.pct_start,
        min_lr_ratio=cfg.min_lr_ratio, restart_steps=max(1, int(round(cfg.restart_epochs * steps_per_epoch))),
        restart_mult=cfg.restart_mult, restart_gamma=cfg.restart_gamma, plateau_mode="min" if cfg.minimise else "max",
        plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
    )  # fmt: skip
    with fold_tracker(cfg, run_id, enabled=info.is_main) as tracker, timer.phase("fit_other"):  # tracker None: no-op
        result = engine.fit(
            model, train_loader, valid_loader, distill_loss(cfg, build_loss(cfg, unwrap(model))), optimizer, cfg,
            fold_dir, model_config, device, scheduler=scheduler, run_id=run_id,
            extra={"fold": cfg.fold, "preset": cfg.preset.name, "exp": cfg.exp}, stop_after_epoch=stop_after_epoch,
            on_epoch=tracker.log_history, timer=timer,
        )  # fmt: skip
        tracker.log_history(result.history.to_dict("records"))  # what it lacks: a run killed after its last epoch
        out = {
            "fold_dir": str(fold_dir), "best_epoch": result.best_epoch, "best_score": result.best_score,
            "monitor": result.monitor, "history": str(result.paths["history"]), "scores": None,
        }  # fmt: skip
        if stop_after_epoch is not None and len(result.history) < cfg.n_epochs and not result.stopped_early:
            return out
        with timer.phase("oof_write"):  # what oof_predict and oof_score inside leave
            out["scores"] = _write_oof(cfg, model, valid_loader, valid_df, device, info, timer)
        tracker.log_summary({"oof": out["scores"] or {}, "best_epoch": result.best_epoch,
                             "best_score": result.best_score, "averaged": result.averaged or {}})  # fmt: skip
    if info.is_main:
        write_json(cfg.fold_dir / "timings.json", {**fold_timings(timer), "num_threads": threads,
                                                   "num_workers": cfg.num_workers})  # fmt: skip
        write_json(done_path, {**out, "run_id": run_id})
    barrier()
    return out


def _write_oof(cfg: TrainConfig, model, valid_loader, valid_df: pd.DataFrame, device, info, timer: PhaseTimer
               ) -> dict | None:  # fmt: skip
    """Predict the held-out rows with ``best.pt`` at the scoring resolution, write the OOF files and score them
    (rank 0 returns the scores, the other ranks None); timed as "oof_predict", "oof_score", the caller's "oof_write"."""
    best = read_torch(cfg.fold_dir / "best.pt", "model checkpoint")
    unwrap(model).load_state_dict(best["state_dict"])
    task = cfg.model_preset
    out_size = scoring_size(task, valid_df) if task.is_segmentation else None
    batches = engine.predict(
        model, valid_loader, device, activation=task.activation, out_size=out_size,
        amp_dtype=resolve_amp(cfg.amp, device), channels_last=cfg.channels_last, tta=cfg.tta, desc="oof",
        tta_weight=cfg.tta_weight,
    )  # fmt: skip
    ids = valid_df["image_id"].astype(str).tolist()
    oof_path = cfg.fold_dir / "oof_probs.npy"
    dtype = cfg.oof_dtype if task.is_segmentation else "float32" if task.task == "presence" else "float16"
    cls_path = cfg.fold_dir / "oof_cls_probs.npy" if cfg.aux_head and task.is_segmentation else None
    write_predictions(oof_path, timer.iterate(batches, "oof_predict"), ids, dtype=dtype, cls_path=cls_path)
    if not info.is_main:
        barrier()
        return None
    write_csv(cfg.fold_dir / "oof_ids.csv", pd.DataFrame({"image_id": ids}), index=False)
    if task.task == "presence":
        targets = class_presence(valid_df, task)
    elif task.is_segmentation:
        targets = TargetMasks(valid_df, task, out_size)
    else:
        targets = valid_df["label"].to_numpy(np.int64)
    with timer.phase("oof_score"):
        scores = score_oof(np.load(oof_path, mmap_mode="r"), targets, task, chunk_size=1).summary
    write_json(cfg.fold_dir / "scores.json", scores)
    barrier()
    return scores


# ---------------------------------------------------------------------------------------------------------------
# Several GPUs (or CPU processes): torchrun
# ---------------------------------------------------------------------------------------------------------------


def launch_distributed(cfg: TrainConfig, nproc: int, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``train_fold(cfg)`` in ``nproc`` processes with ``torchrun --standalone`` (DDP; gloo on CPU, NCCL on
    GPUs) and return the fold's ``done.json``.

    The configuration travels as ``fold<k>/launch.json`` (``StageConfig.save``); the processes' output streams
    through. With ``cfg.device == "cpu"`` the test suite runs 2 CPU processes.

    Raises:
        RuntimeError: torchrun exited non-zero (the message gives the exit status and the command).
    """
    launch_path = cfg.save(cfg.fold_dir / "launch.json")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
        "-m", "kitlib.train", str(launch_path),
    ]  # fmt: skip
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {' '.join(cmd)}")
    return read_json(cfg.fold_dir / "done.json")


def main(argv: list[str] | None = None) -> int:
    """``python -m kitlib.train CONFIG.json [--stop-after-epoch N]``: one fold from a saved config (a fold's
    ``config.json`` or ``launch.json``), as ``torchrun`` runs it."""
    parser = argparse.ArgumentParser(prog="python -m kitlib.train", description=main.__doc__)
    parser.add_argument("config", help="a TrainConfig saved as JSON (a fold's config.json or launch.json)")
    parser.add_argument("--stop-after-epoch", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        train_fold(cfg, stop_after_epoch=args.stop_after_epoch)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
