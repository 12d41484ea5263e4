"""Will the submission kernel finish in time? A runtime estimate before pushing (``python -m kitlib.kaggle estimate``,
printed by ``push`` too).

The run's own inference path (``kitlib.inference.load_members`` / ``predict_test`` and each image's decoding, as
``notebooks/40_submit.py`` runs them, with the chosen folds, TTA and ensemble members) is timed here on a handful of
the local test images; the seconds per image are scaled to the competition's hidden test set size and divided by a
GPU factor (the speed of Kaggle's accelerator over the device measured here), plus the fixed cost of loading the
models, and compared with the competition's time limit::

    projected = load_s + per_image_s x test_images / gpu_factor

Kaggle reruns a code competition's kernel on the hidden test set, which is larger than the public ``test_images/``
folder: ``TEST_SETS`` holds the known competitions' sizes and limits with their sources; ``--test-images N
--time-limit H`` give a user's own.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kitlib.formats import load_competition
from kitlib.io import read_json
from kitlib.kaggle_kernel import KERNEL_METADATA, kernel_info
from kitlib.postprocess import load_postprocess
from kitlib.stages import SubmitConfig

__all__ = [
    "DEFAULT_GPU_FACTOR", "KAGGLE_SESSION_HOURS", "TEST_SETS", "Estimate", "TestSet", "add_estimate_args",
    "estimate_from_args", "estimate_kernel", "estimate_runtime", "print_estimate",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Kaggle's session limit when a competition states none: 12 h for CPU and GPU notebooks, 9 h for TPU (Kaggle's
#: notebook documentation, "Technical specifications").
KAGGLE_SESSION_HOURS = 12.0
#: How much faster Kaggle's GPU (a T4) runs the kit's inference than the CPU it was measured on, when nothing better
#: is known. A conservative assumption, not a measurement: convolutional nets usually run 10-50x faster on a T4 than
#: on a few CPU cores, and reading and decoding the images does not speed up at all, so 10 over-estimates rather than
#: under-estimates. Measure yours: ``estimate --device cuda`` on a GPU (factor 1), or one kernel's time on Kaggle.
DEFAULT_GPU_FACTOR = 10.0


@dataclass(frozen=True)
class TestSet:
    """A competition's hidden test set as its kernel sees it.

    Attributes:
        images: test images the kernel predicts when Kaggle reruns it (the hidden set; public + private).
        hours: the notebook run-time limit (hours); None: the competition states none (``KAGGLE_SESSION_HOURS``).
        source: where the numbers come from.
    """

    images: int
    hours: float | None
    source: str


#: Known competitions by slug (``kitlib.kaggle_kernel.COMPETITIONS``'s values).
TEST_SETS = {
    "understanding_cloud_organization": TestSet(
        3698, None,
        "the real sample_submission.csv: 14,792 rows = 3,698 images x 4 labels (../shared/data/clouds_sample); the "
        "competition took uploaded files, so no kernel limit: Kaggle's session limit applies",
    ),
    "severstal-steel-defect-detection": TestSet(
        5400, 1.0,
        "synchronous kernels-only competition: 1,801 public + ~3,600 private test images, 1 hour run-time, no "
        "internet (12th place solution overview, Dobrynin, Yakubovskiy, Kolpakov, ML trainings 16.11.2019; "
        "docslib.org/download/10267761)",
    ),
    "cassava-leaf-disease-classification": TestSet(
        15000, 9.0,
        "code competition: about 15,000 hidden test images and a 9 h CPU/GPU notebook limit, as its data and Code "
        "Requirements pages state them (recalled, not checked here: pass --test-images / --time-limit to correct)",
    ),
}  # fmt: skip


@dataclass
class Estimate:
    """The measurement and its projection (seconds unless named otherwise)."""

    per_image_s: float  # measured on ``device``, decoding included
    load_s: float  # loading the models and the post-processing, once
    measured_images: int
    models: int  # checkpoints run on each image (folds x ensemble members, + a gate's folds)
    tta_views: int
    device: str
    test_images: int
    gpu_factor: float
    limit_h: float
    projected_s: float
    source: str

    @property
    def fits(self) -> bool:
        return self.projected_s <= self.limit_h * 3600

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}

    def summary(self) -> str:
        """One line: measured, projected, the limit and whether it fits."""
        return (
            f"{self.per_image_s:.3f} s/image on {self.device} ({self.models} models x {self.tta_views} TTA views, "
            f"{self.measured_images} images) -> {self.test_images} test images / GPU factor {self.gpu_factor:g} + "
            f"{self.load_s:.1f} s loading = {self.projected_s / 3600:.2f} h of {self.limit_h:g} h "
            f"({'fits' if self.fits else 'OVER THE LIMIT'})"
        )


def _test_set(competition: str | None, test_images: int | None, time_limit_h: float | None) -> tuple[int, float, str]:
    known = TEST_SETS.get(competition or "")
    images = test_images if test_images is not None else known.images if known else None
    if images is None:
        raise ValueError(
            f"no hidden test set size known for competition {competition!r}: pass --test-images N (known: "
            f"{', '.join(TEST_SETS)})"
        )
    if images < 1:
        raise ValueError(f"test_images must be >= 1, got {images}")
    hours = time_limit_h if time_limit_h is not None else (known.hours if known and known.hours else None)
    source = "given" if test_images is not None else known.source
    if hours is None:
        hours = KAGGLE_SESSION_HOURS
        source += f"; limit: Kaggle's {KAGGLE_SESSION_HOURS:g} h session"
    if hours <= 0:
        raise ValueError(f"time_limit_h must be > 0, got {hours}")
    return int(images), float(hours), source


def estimate_runtime(
    cfg: SubmitConfig,
    *,
    n_images: int = 8,
    competition: str | None = None,
    test_images: int | None = None,
    time_limit_h: float | None = None,
    gpu_factor: float | None = None,
) -> Estimate:
    """Time the run's inference on ``n_images`` local test images and project it onto the hidden test set.

    The timed loop is the kernel's: ``inference.load_members`` (+ ``load_gate_models``, ``load_postprocess``; timed
    as ``load_s``), then ``predict_test`` over the images with the config's folds, TTA, batch size and ensemble, each
    image decoded as ``make_submission`` does. One warm-up batch runs first and is not timed (first-call
    allocations, lazy imports).

    Args:
        cfg: the submission's config (``SubmitConfig``: exp / ensemble, n_folds, tta, tta_weight, batch_size,
            device, and ``data_dir`` with local test images).
        n_images: images timed (>= 1; fewer when the folder has fewer).
        competition: a ``TEST_SETS`` slug; test_images, time_limit_h: override its numbers (needed for an unknown
            competition; the limit then defaults to ``KAGGLE_SESSION_HOURS``).
        gpu_factor: Kaggle's speed over ``cfg.device``; None: 1 when measured on a GPU, else ``DEFAULT_GPU_FACTOR``.
    Returns:
        ``Estimate`` (``.fits``, ``.summary()``); a projection over the limit is also logged as a warning.
    Raises:
        ValueError: no test images, n_images < 1, a gpu_factor <= 0, an unknown competition without
            ``test_images``; FileNotFoundError: as ``load_members``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    images, hours, source = _test_set(competition, test_images, time_limit_h)
    device = str(cfg.device)
    if gpu_factor is None:
        gpu_factor = 1.0 if device.startswith("cuda") else DEFAULT_GPU_FACTOR
    if gpu_factor <= 0:
        raise ValueError(f"gpu_factor must be > 0, got {gpu_factor}")
    preset = cfg.preset
    import torch  # here, not at import: the kaggle CLI's other commands need no torch

    from kitlib import inference
    from kitlib.tta import tta_names

    test_df = load_competition(preset, cfg.data_path, split="test")
    if test_df.empty:
        raise ValueError(f"{cfg.data_path}: no test images to time")
    start = time.perf_counter()
    members = inference.load_members(cfg.artifacts_dir, cfg.exp, cfg.ensemble, folds=cfg.folds, device=device)
    postprocess = load_postprocess(cfg.source_dir, preset)
    gate = inference.load_gate_models(cfg.artifacts_dir, postprocess, device)
    load_s = time.perf_counter() - start
    models = sum(len(m) for m, _ in members) + len(gate or [])

    def run(df) -> int:
        batches = inference.predict_test(members, df, preset, batch_size=cfg.batch_size, tta=cfg.tta,
                                         tta_weight=cfg.tta_weight, gate_models=gate, desc="estimate")  # fmt: skip
        done = 0
        paths = dict(zip(df["image_id"].astype(str), df["image_path"], strict=True))
        for ids, probs, cls_probs in batches:
            for i, image_id in enumerate(ids):  # what make_submission does with each image: CRF, decoding, RLE rows
                cls_i = None if cls_probs is None else cls_probs[i]
                inference.image_submission_rows(image_id, paths[image_id], probs[i], cls_i, preset, postprocess)
            done += len(ids)
        return done

    warm = min(cfg.batch_size, max(len(test_df) - 1, 1))
    with torch.inference_mode():
        run(test_df.iloc[:warm])
        timed = test_df.iloc[warm : warm + n_images] if len(test_df) > warm else test_df.iloc[:n_images]
        start = time.perf_counter()
        measured = run(timed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - start) / measured
    projected = load_s + per_image * images / gpu_factor
    est = Estimate(per_image_s=per_image, load_s=load_s, measured_images=measured, models=models,
                   tta_views=len(tta_names(cfg.tta)), device=device, test_images=images, gpu_factor=float(gpu_factor),
                   limit_h=hours, projected_s=projected, source=source)  # fmt: skip
    if not est.fits:
        log.warning("the submission may not finish in time: %s", est.summary())
    return est


def estimate_kernel(
    kernel_dir: str | os.PathLike,
    *,
    artifacts_root: str = "artifacts",
    data_dir: str | None = None,
    device: str = "cpu",
    **kwargs,
) -> Estimate:
    """``estimate_runtime`` of what a kernel folder (``kitlib.kaggle_kernel.kernel``) will run: its notebook's
    injected parameters (exp, ensemble, tta, batch_size, ...), the local ``artifacts_root`` (every local fold when
    the kernel takes every fold of the bundle) and local test images (``data_dir``; default ``data/<preset>``), and
    its competition's test set. A kernel without GPU or TPU gets GPU factor 1 unless ``gpu_factor`` is given.

    Args:
        kwargs: ``estimate_runtime``'s (n_images, test_images, time_limit_h, gpu_factor).
    Raises:
        ValueError: not a kernel folder written by this kit; as ``estimate_runtime`` and ``SubmitConfig``.
    """
    info = kernel_info(kernel_dir)
    if not info.parameters:
        raise ValueError(f"{kernel_dir}: the notebook has no kitlib parameters (write it with the kernel command)")
    params = {k: v for k, v in info.parameters.items() if k != "device"}
    data_dir = data_dir or f"data/{info.preset}"
    cfg = SubmitConfig.from_notebook(**params, artifacts_root=str(artifacts_root), data_dir=data_dir, device=device)
    meta = read_json(Path(kernel_dir) / KERNEL_METADATA)
    if kwargs.get("gpu_factor") is None and not (meta.get("enable_gpu") or meta.get("enable_tpu")):
        kwargs["gpu_factor"] = 1.0  # a CPU kernel (4 cores on Kaggle) runs about as fast as a local CPU
    return estimate_runtime(cfg, competition=info.competition, **kwargs)


def add_estimate_args(p: argparse.ArgumentParser) -> None:
    """The estimate's options (the ``estimate`` command, ``push`` and ``loop``)."""
    p.add_argument("--artifacts-root", default="artifacts", help="where the run's experiments live (artifacts)")
    p.add_argument("--data-dir", help="local test images to time (default: data/<preset>)")
    p.add_argument("--device", default="cpu", help="where to time the inference (cpu, cuda)")
    p.add_argument("--images", type=int, default=8, help="test images timed (8)")
    p.add_argument(
        "--test-images", type=int, help=f"hidden test set size (default: known ones: {', '.join(TEST_SETS)})"
    )
    p.add_argument("--time-limit", type=float, help="kernel time limit in hours (default: the competition's)")
    factor = f"Kaggle's GPU speed over --device (default {DEFAULT_GPU_FACTOR:g} for cpu, 1 for cuda)"
    p.add_argument("--gpu-factor", type=float, help=factor)


def estimate_from_args(kernel_dir: str | os.PathLike, args: argparse.Namespace) -> Estimate:
    """``estimate_kernel`` with ``add_estimate_args``' options."""
    return estimate_kernel(kernel_dir, artifacts_root=args.artifacts_root, data_dir=args.data_dir, device=args.device,
                           n_images=args.images, test_images=args.test_images, time_limit_h=args.time_limit,
                           gpu_factor=args.gpu_factor)  # fmt: skip


def print_estimate(kernel_dir: str | os.PathLike, args: argparse.Namespace) -> Estimate | None:
    """Print the estimate of a kernel folder before it is pushed (``push``, ``loop``); one line saying why when
    there is none (no local run or test images: the push goes on)."""
    try:
        est = estimate_from_args(kernel_dir, args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"estimate: skipped ({str(e).splitlines()[0][:300]})")
        return None
    print(f"estimate: {est.summary()}")
    if not est.fits:
        print(f"warning: the projection passes the {est.limit_h:g} h limit: fewer folds or TTA views, a smaller "
              "input, or a faster accelerator")  # fmt: skip
    return est
