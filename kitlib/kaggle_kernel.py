"""The submission notebook as a Kaggle kernel (the build side of ``kitlib.kaggle``): ``kernel`` writes the folder that
``kaggle kernels push`` uploads.

``notebooks/40_submit.py`` becomes ``40_submit.ipynb`` with its parameters injected (papermill's prepare-only mode,
typed against the notebook's parameters cell: ``kitlib.config``), a first cell that installs the bundle's wheels with
the internet off (the source of ``kitlib.kaggle_install_cell`` and one call with the bundle's values), a cell after the
parameters that finds the data with ``kitlib.kaggle.find_input`` / ``bundle_artifacts`` at run time, and
``kernel-metadata.json`` (internet off, set explicitly).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitlib import kaggle_install_cell
from kitlib.io import project_path, read_json, temp_dir, write_json
from kitlib.kaggle import input_patterns
from kitlib.kaggle_bundle import (
    Bundle,
    _check_out,
    _check_slug,
    _check_title,
    _checkout,
    _last_line,
    _replace_dir,
    _slugify,
    kaggle_user,
)
from kitlib.offline import OFFLINE_VARS
from kitlib.params import check_value, coerce_text, read_declaration
from kitlib.presets import is_preset_file

__all__ = [
    "COMPETITIONS", "KERNEL_METADATA", "MACHINE_SHAPES", "PINNING_TYPES", "RETIRED_SHAPES", "Kernel", "kernel",
    "kernel_info", "kernel_metadata", "shape_kind", "KernelInfo",
]  # fmt: skip

# Kaggle competition slug of each preset that is a Kaggle competition (the others need --competition).
COMPETITIONS = {
    "clouds": "understanding_cloud_organization",
    "severstal": "severstal-steel-defect-detection",
    "cassava": "cassava-leaf-disease-classification",
}
# kernel-metadata.json "machine_shape" / ``kaggle kernels push --accelerator`` names -> "gpu" or "tpu". Sources: the
# kaggle CLI 2.2.5 (cli.py ``Help.param_kernel_acc``: NvidiaTeslaT4 "GPU T4 x2", TpuV5E8 "TPU v5e-8";
# api/kaggle_api_extended.py ``_RETIRED_ACCELERATORS``: NvidiaTeslaP100, TpuV38, Tpu1VmV38, TpuV232, TpuV2256),
# kagglesdk 0.1.38 (``ApiSaveKernelRequest.machine_shape``: NvidiaTeslaT4, NvidiaTeslaP100, Tpu1VmV38) and Kaggle's
# kernel-metadata documentation as issue 14 quotes it (NvidiaTeslaT4Highmem, NvidiaL4, NvidiaL4X1, NvidiaH100,
# TpuV6E8). An unknown name warns and is written as given (Kaggle adds shapes faster than the CLI's docs).
MACHINE_SHAPES = {
    "NvidiaTeslaT4": "gpu",
    "NvidiaTeslaT4Highmem": "gpu",
    "NvidiaL4": "gpu",
    "NvidiaL4X1": "gpu",
    "NvidiaH100": "gpu",
    "NvidiaTeslaP100": "gpu",
    "TpuV5E8": "tpu",
    "TpuV6E8": "tpu",
    "Tpu1VmV38": "tpu",
    "TpuV38": "tpu",
    "TpuV232": "tpu",
    "TpuV2256": "tpu",
}
# What Kaggle runs instead of a retired shape (kaggle_api_extended._RETIRED_ACCELERATORS, CLI 2.2.5).
RETIRED_SHAPES = {
    "NvidiaTeslaP100": "NvidiaTeslaT4",
    "TpuV38": "TpuV5E8",
    "Tpu1VmV38": "TpuV5E8",
    "TpuV232": "CPU",
    "TpuV2256": "CPU",
}
# kernel-metadata.json "docker_image_pinning_type": the image of the kernel's first version, or the newest one
# (the values the CLI's kernels_push accepts: KaggleApi.valid_push_pinning_types).
PINNING_TYPES = ("original", "latest")

log = logging.getLogger(__name__)

KERNEL_METADATA = "kernel-metadata.json"
_RUNTIME_PARAMS = ("data_dir", "artifacts_root", "submission_path")  # resolved inside the kernel


def kernel_metadata(
    user: str,
    slug: str,
    code_file: str,
    dataset_sources: Sequence[str],
    competition_sources: Sequence[str],
    title: str | None = None,
    is_private: bool = True,
    enable_gpu: bool = False,
    accelerator: str | None = None,
    model_sources: Sequence[str] = (),
    kernel_sources: Sequence[str] = (),
    docker_image_pinning_type: str | None = None,
) -> dict:
    """Kaggle's ``kernel-metadata.json`` for a notebook with the internet off.

    Args:
        user: the owner; slug: the kernel's slug (6-50 of ``[a-z0-9-]``).
        code_file: the notebook's file name inside the kernel folder.
        dataset_sources, competition_sources, model_sources, kernel_sources: attached inputs (``user/slug``,
            competition slugs, ``owner/model/framework/variation/version``, ``user/kernel``).
        title: default: the slug with spaces.
        is_private, enable_gpu: as Kaggle's fields.
        accelerator: a ``MACHINE_SHAPES`` name (``NvidiaTeslaT4``, ...) written as ``machine_shape``; a GPU shape sets
            ``enable_gpu``, a TPU ``enable_tpu`` (``shape_kind``). An unknown name or a retired one warns and is
            written as given.
        docker_image_pinning_type: "original" (the image of the kernel's first version, so a rerun sees the same
            packages) or "latest"; None leaves Kaggle's default.
    Returns:
        The dict; ``enable_internet`` is False (explicit: Kaggle's default is True).
    Raises:
        ValueError: a bad slug or title, or a pinning type other than ``PINNING_TYPES``.
    """
    _check_slug(slug, "kernel")
    title = _check_title(title or slug.replace("-", " "), slug, "kernel")
    if docker_image_pinning_type is not None and docker_image_pinning_type not in PINNING_TYPES:
        raise ValueError(f"docker_image_pinning_type must be one of {PINNING_TYPES}, got {docker_image_pinning_type!r}")
    kind = shape_kind(accelerator) if accelerator else None
    meta = {
        "id": f"{kaggle_user(user)}/{slug}",
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": bool(is_private),
        "enable_gpu": bool(enable_gpu) or kind == "gpu",
        "enable_tpu": kind == "tpu",
        "enable_internet": False,
        "dataset_sources": list(dict.fromkeys(dataset_sources)),
        "competition_sources": list(dict.fromkeys(competition_sources)),
        "kernel_sources": list(kernel_sources),
        "model_sources": list(model_sources),
    }
    if accelerator:
        meta["machine_shape"] = accelerator
    if docker_image_pinning_type is not None:
        meta["docker_image_pinning_type"] = docker_image_pinning_type
    return meta


def shape_kind(accelerator: str) -> str | None:
    """The kind, "gpu" or "tpu", of an accelerator name (``MACHINE_SHAPES``); an unknown name warns and is guessed
    from its prefix (``Nvidia...``: gpu, ``Tpu...``: tpu, else None); a retired one warns with what Kaggle runs
    instead."""
    if accelerator in RETIRED_SHAPES:
        log.warning("accelerator %s is retired: Kaggle runs the session on %s instead (kaggle CLI 2.2.5)", accelerator,
                    RETIRED_SHAPES[accelerator])  # fmt: skip
    if accelerator in MACHINE_SHAPES:
        return MACHINE_SHAPES[accelerator]
    guess = (
        "gpu" if accelerator.lower().startswith("nvidia") else "tpu" if accelerator.lower().startswith("tpu") else None
    )
    taken = f"taken as a {guess.upper()}" if guess else "no GPU/TPU flag set"
    log.warning("accelerator %r is not one the kaggle CLI documents (%s); written as given (%s)", accelerator,
                ", ".join(sorted(MACHINE_SHAPES)), taken)  # fmt: skip
    return guess


@dataclass
class Kernel:
    """A kernel folder written by ``kernel``: ``path/<code_file>`` and ``path/kernel-metadata.json``."""

    path: Path
    kernel_id: str
    code_file: str
    metadata: dict = field(repr=False)
    parameters: dict = field(repr=False)


def _run_tool(module: str, args: Sequence[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        if f"No module named {module}" in err:
            raise RuntimeError(f"{module} is not installed here: pip install jupytext papermill (or -e '.[notebooks]')")
        raise RuntimeError(f"{module} {' '.join(args[:2])} failed: {_last_line(err)}")
    return proc.stdout


def _code_cell(source: str, tag: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": [tag]}, "outputs": [],
            "source": source.splitlines(keepends=True)}  # fmt: skip


def _install_cell(dataset_id: str, wheels: Sequence[str]) -> str:
    """The first cell: the source of ``kitlib.kaggle_install_cell`` and a call of its ``install`` with the bundle's
    dataset, input patterns (``find_input``'s) and wheels, and the offline switches (``OFFLINE_VARS``)."""
    source = Path(kaggle_install_cell.__file__).read_text(encoding="utf-8")
    call = f"install({dataset_id!r}, {input_patterns(dataset_id)!r}, {list(wheels)!r}, {list(OFFLINE_VARS)!r})"
    return f"# Written by kitlib.kaggle_kernel from kitlib/kaggle_install_cell.py\n{source.rstrip()}\n\n{call}\n"


def _paths_cell(dataset_id: str, competition: str, preset: str) -> str:
    own = ""
    if is_preset_file(preset):  # a user's own competition: the preset file the bundle carries
        own = f"preset = str(Path(artifacts_root) / {preset!r})\n"
    return f"""\
# Written by kitlib.kaggle_kernel: the competition data and the bundle under /kaggle/input, the submission in
# /kaggle/working
from pathlib import Path

import kitlib
from kitlib import kaggle

data_dir = str(kaggle.find_input({competition!r}))
artifacts_root = str(kaggle.bundle_artifacts({dataset_id!r}))
{own}submission_path = str(kaggle.working_dir() / "submission.csv")
print(f"kitlib {{kitlib.__version__}} from {{kitlib.__file__}}")
print(f"data_dir={{data_dir}}\\nartifacts_root={{artifacts_root}}\\nsubmission_path={{submission_path}}")
"""


def kernel(
    bundle_dir: str | os.PathLike,
    competition: str | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    user: str | None = None,
    slug: str | None = None,
    title: str | None = None,
    notebook: str | os.PathLike = "notebooks/40_submit.py",
    params: Mapping[str, Any] | None = None,
    is_private: bool = True,
    enable_gpu: bool = False,
    accelerator: str | None = None,
    datasets: Sequence[str] = (),
    models: Sequence[str] = (),
    docker_image_pinning_type: str | None = None,
    model_version: int | None = None,
) -> Kernel:
    """Write the kernel folder that runs ``40_submit`` on Kaggle with the bundle's wheels and artifacts.

    The notebook is converted with jupytext, its parameters injected with ``papermill --prepare-only`` (``exp``,
    ``preset``, ``ensemble`` from the bundle, ``n_folds`` 0: every fold in the bundle, then ``params``), a first cell
    installs the wheels offline, and a cell after the injected parameters sets ``data_dir``, ``artifacts_root`` and
    ``submission_path`` with ``find_input`` / ``bundle_artifacts`` / ``working_dir`` when the kernel runs.

    Args:
        bundle_dir: a folder written by ``bundle``.
        competition: the competition slug; default ``COMPETITIONS[preset]``.
        out_dir: default ``runs/kaggle/<slug>``; an existing kernel folder there is replaced, no other folder.
        user: default ``KAGGLE_USERNAME`` or kaggle.json; slug: default ``kit-<name>-submit``; title: the slug
            with spaces.
        notebook: the jupytext notebook (relative: to the repository root).
        params: more notebook parameters (``tta``, ``batch_size``, ``device``, ...); strings are converted to the
            parameter's annotated type.
        is_private, enable_gpu, accelerator: ``kernel-metadata.json`` (see ``kernel_metadata``).
        datasets: more dataset sources (``user/slug``, e.g. pretrained weights); models: Kaggle model sources.
        docker_image_pinning_type: "original" or "latest" (``kernel_metadata``).
        model_version: a model-channel bundle's version to pin in ``model_sources`` (default the one ``push``
            recorded; unversioned until then: ``push`` pins it after the upload, ``kitlib.kaggle_models``).
    Returns:
        ``Kernel``.
    Raises:
        FileNotFoundError: no bundle manifest or notebook.
        ValueError: no competition for the preset, an unknown parameter or one the kernel sets itself, a bad
            value, slug, title or accelerator.
        RuntimeError: jupytext or papermill missing or failing.
        FileExistsError: ``out_dir`` exists and is not a kernel folder.
    """
    info = Bundle.read(bundle_dir)
    if not competition:
        if info.preset not in COMPETITIONS:
            raise ValueError(
                f"no Kaggle competition known for preset {info.preset!r}; pass --competition SLUG "
                f"(known: {', '.join(f'{k}={v}' for k, v in COMPETITIONS.items())})"
            )
        competition = COMPETITIONS[info.preset]
    input_patterns(competition)
    name = info.ensemble or info.exp
    slug = slug or f"kit-{_slugify(name)}-submit"
    notebook = Path(notebook).expanduser()
    if not notebook.is_absolute():
        local = project_path(notebook)
        notebook = local if local.is_file() else _checkout() / notebook
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no such notebook")
    code_file = notebook.with_suffix(".ipynb").name
    out = _check_out(Path(out_dir) if out_dir is not None else project_path("runs/kaggle") / slug, KERNEL_METADATA)
    meta = kernel_metadata(
        user, slug, code_file, [info.dataset_id, *datasets], [competition], title=title, is_private=is_private,
        enable_gpu=enable_gpu, accelerator=accelerator,
        model_sources=[*([info.model_source(model_version)] if info.model else []), *models],
        docker_image_pinning_type=docker_image_pinning_type,
    )  # fmt: skip
    raw = json.loads(_run_tool("jupytext", ["--to", "ipynb", "--output", "-", str(notebook)]))
    declared = read_declaration(notebook)
    values: dict[str, Any] = {"exp": info.exp, "preset": info.preset, "ensemble": info.ensemble, "n_folds": 0}
    for key, value in (params or {}).items():
        if key in _RUNTIME_PARAMS:
            raise ValueError(f"parameter {key}: the kernel sets it when it runs (from the Kaggle input folders)")
        if key not in declared:
            raise ValueError(f"unknown parameter {key!r} of {notebook.name}; options: {sorted(declared)}")
        kind = declared[key].type
        values[key] = coerce_text(key, value, kind) if isinstance(value, str) else check_value(key, value, kind)
    values = {k: v for k, v in values.items() if k in declared}
    prepared = _run_tool(
        "papermill",
        ["-", "-", "--prepare-only", "--no-progress-bar", "-y", json.dumps(values)],
        json.dumps(raw).encode(),
    )
    nb = json.loads(prepared)
    cells = nb["cells"]
    at = next(i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    cells.insert(at + 1, _code_cell(_paths_cell(info.artifacts_source, competition, info.preset), "kaggle-paths"))
    cells.insert(0, _code_cell(_install_cell(info.dataset_id, info.wheels), "kaggle-install"))
    nb.setdefault("metadata", {})["kitlib"] = {"bundle": info.dataset_id, "competition": competition,
                                               "exp": info.exp, "ensemble": info.ensemble, "preset": info.preset,
                                               "parameters": values}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out)
    try:
        write_json(tmp / code_file, nb)
        write_json(tmp / KERNEL_METADATA, meta)
        _replace_dir(tmp, out, KERNEL_METADATA)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Kernel(path=out, kernel_id=meta["id"], code_file=code_file, metadata=meta, parameters=values)


@dataclass
class KernelInfo:
    """A kernel to follow and submit (``kernel_info``): its id and, from a ``kernel`` folder, the competition, the run
    (``exp``, ``ensemble``, ``preset``), the notebook's injected parameters and the bundle's dataset id."""

    kernel_id: str
    folder: Path | None = None
    competition: str = ""
    exp: str = ""
    ensemble: str = ""
    preset: str = ""
    parameters: dict = field(default_factory=dict)
    bundle: str = ""

    @property
    def name(self) -> str:
        """The experiment or ensemble whose ``cv.json`` the public score is set beside."""
        return self.ensemble or self.exp


def kernel_info(kernel: str | os.PathLike) -> KernelInfo:
    """Read a kernel folder (written by ``kernel``: ``kernel-metadata.json`` and the notebook's ``kitlib`` metadata),
    or take a ``user/slug`` kernel id as it is.

    Raises:
        ValueError: neither a folder with ``kernel-metadata.json`` nor ``user/slug``.
    """
    folder = Path(kernel)
    if (folder / KERNEL_METADATA).is_file():
        meta = read_json(folder / KERNEL_METADATA)
        notebook = folder / meta.get("code_file", "")
        kit = read_json(notebook).get("metadata", {}).get("kitlib", {}) if notebook.is_file() else {}
        return KernelInfo(meta["id"], folder, kit.get("competition", ""), kit.get("exp", ""), kit.get("ensemble", ""),
                          kit.get("preset", ""), kit.get("parameters", {}), kit.get("bundle", ""))  # fmt: skip
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(kernel)) and not folder.exists():
        return KernelInfo(str(kernel))
    raise ValueError(f"{kernel}: not a kernel folder (no {KERNEL_METADATA}) nor a user/slug kernel id")
