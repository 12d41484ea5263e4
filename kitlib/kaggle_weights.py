"""A bundle's artifact files and its weights as float16 (the build side of ``kitlib.kaggle``, either channel):
``store_artifacts`` stores each file once (``best.pt`` as ``half_checkpoint`` writes it, the rest hard-linked),
``half_checkpoint`` writes a fold's ``best.pt`` with its floating parameters in float16, ``check_half`` predicts a few
of the fold's OOF images with the float32 and the float16 weights and fails when they differ by more than
``HALF_TOLERANCE``.

What is cast: the floating *parameters* of the state dict (conv / linear weights and biases, norm affine weights: all
but a fraction of a percent of the bytes). Kept as they are: buffers (BatchNorm's ``running_mean`` / ``running_var``
stay float32, since a variance below 6.1e-5 is a float16 subnormal and loses its precision, and ``num_batches_tracked``
stays int64), integer tensors, and a parameter with a finite value beyond float16's range (+-65504, named in the log).
``kitlib.models.load_model`` reads such a file unchanged: it builds the float32 model from ``model_config`` and
``load_state_dict`` copies each float16 tensor into its float32 parameter (the values are exactly the float16
ones, widened). The checkpoint records ``weights_dtype: "float16"`` and the tensors kept at their dtype.

Halving the weights is what Kaggle solutions do to fit their datasets' and models' size limits and load time (e.g.
``model.half()`` before ``torch.save`` in many public inference notebooks); the tolerance check is the kit's own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from kitlib.io import atomic_write_bytes, read_torch

__all__ = [
    "HALF_CHECK_IMAGES",
    "HALF_TOLERANCE",
    "WEIGHTS",
    "HalfCheck",
    "check_half",
    "half_checkpoint",
    "store_artifacts",
]

log = logging.getLogger(__name__)

#: ``bundle(weights=...)`` / ``--weights``: the dtype of the floating parameters in the bundle's ``best.pt`` copies.
WEIGHTS = ("fp16", "fp32")
#: Largest |p16 - p32| of a probability (0..1) allowed by ``check_half``: 2/255, two steps of the uint8 OOF
#: probabilities (``round(p x 255)``), so the float16 bundle's OOF rounds to within two steps of the float32 one.
HALF_TOLERANCE = 2 / 255
#: OOF images of one fold that ``check_half`` predicts with both weights.
HALF_CHECK_IMAGES = 4
_FP16_MAX = 65504.0  # torch.finfo(torch.float16).max (torch is imported where the weights are converted)


def _parameter_names(model_config: dict) -> set[str]:
    """The state-dict keys that are parameters (not buffers) of the model ``model_config`` builds (on the meta
    device: no memory, no download; a constructor that reads tensor values is built on the CPU)."""
    import torch

    from kitlib.models import _build_from_config

    try:
        with torch.device("meta"):
            model = _build_from_config(model_config)
    except (RuntimeError, NotImplementedError):
        model = _build_from_config(model_config)
    return {name for name, _ in model.named_parameters()}


def half_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write ``src`` (a ``kitlib.models.save_model`` file) to ``dst`` with its floating parameters as float16.

    The bytes depend on the checkpoint only (``torch.save`` to memory, then an atomic write), so two equal
    checkpoints give equal files (the bundle stores them once).

    Args:
        src: ``fold<k>/best.pt``; dst: where the float16 copy goes (parent folders are created).
    Returns:
        ``{"bytes_fp32": size of src, "bytes": size of dst, "kept": [keys of floating parameters kept at their
        dtype because a value is beyond float16's range]}``.
    Raises:
        ValueError: ``src`` is not a readable kitlib model checkpoint (the message names it).
    """
    import torch

    src = Path(src)
    checkpoint = read_torch(src, "model checkpoint")
    if not isinstance(checkpoint, dict) or not {"model_config", "state_dict"} <= set(checkpoint):
        raise ValueError(f"{src}: not a kitlib model checkpoint (needs 'model_config' and 'state_dict')")
    params = _parameter_names(checkpoint["model_config"])
    state, kept = {}, []
    for key, tensor in checkpoint["state_dict"].items():
        if key in params and tensor.is_floating_point() and tensor.dtype != torch.float16:
            finite = tensor[torch.isfinite(tensor)]
            if finite.numel() and float(finite.abs().max()) > _FP16_MAX:
                kept.append(key)
            else:
                tensor = tensor.to(torch.float16)
        state[key] = tensor
    if kept:
        log.warning("%s: %d tensors have values beyond float16's range and stay %s: %s", src, len(kept),
                    checkpoint["state_dict"][kept[0]].dtype, ", ".join(kept[:3]))  # fmt: skip
    buffer = io.BytesIO()
    torch.save({**checkpoint, "state_dict": state, "weights_dtype": "float16", "weights_kept": kept}, buffer)
    atomic_write_bytes(dst, buffer.getvalue())
    return {"bytes_fp32": src.stat().st_size, "bytes": len(buffer.getvalue()), "kept": kept}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def store_artifacts(
    sources: Sequence[tuple[str, Path]],
    store: Path,
    files: dict,
    links: dict,
    weights: str = "fp16",
    check_in: Path | None = None,
    check_images: int = HALF_CHECK_IMAGES,
) -> dict:
    """Store a bundle's artifacts under ``store``, each distinct content once.

    Args:
        sources: ``[(bundle path "artifacts/...", source file)]``; a path listed twice is taken once.
        store: the folder the bundle paths are relative to.
        files: stored path -> ``(file, sha256)``, filled in (may hold the wheels already: equal bytes are linked).
        links: duplicate path -> stored path with the same bytes, filled in.
        weights: "fp16": each ``.../best.pt`` written by ``half_checkpoint`` (its bytes decide what is a duplicate);
            "fp32": every file hard-linked (copied across file systems).
        check_in: with "fp16", the artifacts root of the sources: the first ``best.pt`` listed is checked there
            (``check_half`` on ``check_images`` OOF images). None: no check.
    Returns:
        ``{"dtype": "float16" | "float32", "bytes_fp32", "bytes", "check"}``: the ``best.pt`` files' sizes as trained
        and as stored, and the ``HalfCheck`` as a dict (None without a check).
    Raises:
        ValueError: a ``best.pt`` that is not a checkpoint, or the check failed (``half_checkpoint``, ``check_half``).
    """
    by_hash = {h: rel for rel, (_, h) in files.items()}
    sizes = {"dtype": {"fp16": "float16", "fp32": "float32"}[weights], "bytes_fp32": 0, "bytes": 0, "check": None}
    for rel, src in sources:
        if rel in files or rel in links:
            continue  # the same file twice (an experiment listed twice)
        dst = store / rel
        half = weights == "fp16" and rel.endswith("/best.pt")
        if half:  # written first: the stored bytes decide what is a duplicate
            half_checkpoint(src, dst)
        digest = _sha256(dst if half else src)
        if digest in by_hash:
            dst.unlink(missing_ok=True)
            links[rel] = by_hash[digest]
            continue
        if not half:
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)  # kitlib writes artifacts by atomic replace, so a hard link never changes
            except OSError:
                shutil.copy2(src, dst)
        if rel.endswith("/best.pt"):
            sizes["bytes_fp32"] += src.stat().st_size
            sizes["bytes"] += dst.stat().st_size
        files[rel] = (dst, digest)
        by_hash[digest] = rel
    first = next((rel for rel, _ in sources if rel.endswith("/best.pt")), None)
    if weights == "fp16" and check_in is not None and first is not None:
        fold_dir = Path(check_in) / Path(first).parent.relative_to("artifacts")
        sizes["check"] = dataclasses.asdict(check_half(fold_dir, store / links.get(first, first), check_images))
    return sizes


@dataclasses.dataclass
class HalfCheck:
    """What ``check_half`` measured: ``max_abs`` = max |p16 - p32| over the ``image_ids`` (every class and
    pixel), against ``tolerance``; ``skipped`` says why nothing was measured (then ``max_abs`` is None)."""

    checkpoint: str
    image_ids: list[str]
    max_abs: float | None
    tolerance: float = HALF_TOLERANCE
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return self.max_abs is not None and self.max_abs <= self.tolerance

    def summary(self) -> str:
        if self.skipped:
            return f"fp16 check skipped ({self.skipped})"
        return (
            f"fp16 check: max |p16 - p32| = {self.max_abs:.5f} ({self.max_abs * 255:.2f}/255) on "
            f"{len(self.image_ids)} OOF images of {self.checkpoint}, tolerance {self.tolerance * 255:.0f}/255"
        )


def check_half(
    fold_dir: str | os.PathLike,
    half_path: str | os.PathLike,
    n_images: int = HALF_CHECK_IMAGES,
    tolerance: float = HALF_TOLERANCE,
    device: str = "cpu",
) -> HalfCheck:
    """Predict ``n_images`` held-out images of a fold with its float32 ``best.pt`` and with the float16 copy; fail
    when a probability differs by more than ``tolerance``.

    The images are the fold's first OOF rows in ``folds.csv`` order, read from the training config's ``data_dir`` as
    ``40_submit`` reads test images (``kitlib.inference.predict_test``: the fold's size, normalisation, no TTA).

    Args:
        fold_dir: ``artifacts/<exp>/fold<k>/`` (``best.pt``, ``config.json``; ``../folds.csv``).
        half_path: the float16 copy of its ``best.pt`` (``half_checkpoint``).
        n_images: images to predict (0: skip the check).
        tolerance: the largest allowed |p16 - p32|, probability units (default 2/255).
        device: where both models run ("cpu": the same numbers on every machine).
    Returns:
        ``HalfCheck``; ``skipped`` set when ``n_images`` is 0 or the training data is not on this machine (logged as a
        warning: the bundle is then written unchecked).
    Raises:
        ValueError: max |p16 - p32| > ``tolerance``; the message gives both and says to bundle with ``--weights
            fp32``.
    """
    import torch

    from kitlib.experiment import fold_split, load_experiment  # reads the competition table (pandas, formats)
    from kitlib.inference import load_fold_models, predict_test
    from kitlib.models import load_model

    fold_dir = Path(fold_dir)
    fold = int(fold_dir.name.removeprefix("fold"))
    if n_images <= 0:
        return HalfCheck(str(fold_dir / "best.pt"), [], None, tolerance, skipped="asked for 0 images")
    try:
        exp = load_experiment(fold_dir.parent)
    except (FileNotFoundError, OSError) as e:
        log.warning("fp16 check skipped: the training data is not here (%s); bundle with --weights fp32 to be safe", e)
        return HalfCheck(str(fold_dir / "best.pt"), [], None, tolerance, skipped=f"no training data: {e}")
    rows = fold_split(exp.df, fold, str(fold_dir.parent / "folds.csv"))[1].head(n_images)
    (m32,) = load_fold_models(fold_dir.parent, [fold], device)
    model16, _ = load_model(half_path, map_location=device)
    if m32.config.channels_last:
        model16.to(memory_format=torch.channels_last)
    m16 = dataclasses.replace(m32, model=model16, path=Path(half_path))
    preset = m32.config.preset
    worst = 0.0
    batches = zip(
        predict_test([m32], rows, preset, desc="fp32"), predict_test([m16], rows, preset, desc="fp16"), strict=True
    )
    for (_, p32, c32), (_, p16, c16) in batches:
        pairs = [(p32, p16)] + ([(c32, c16)] if c32 is not None else [])
        for a, b in pairs:
            a, b = (a, b) if isinstance(a, list) else ([a], [b])
            worst = max([worst, *(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))])
    result = HalfCheck(str(fold_dir / "best.pt"), rows["image_id"].astype(str).tolist(), worst, tolerance)
    if not result.passed:
        raise ValueError(
            f"{result.summary()}: the float16 weights change the probabilities more than the tolerance; bundle "
            "with --weights fp32"
        )
    return result
