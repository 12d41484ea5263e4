"""Kaggle code competitions: a run's artifacts as a dataset, the submission notebook as a kernel, both pushed.

Kaggle runs a code competition's notebook with the internet off: kitlib, the packages the Kaggle image lacks and the
trained weights must arrive as an attached dataset and be installed from it. Three commands do it from the
artifacts of a run (``python -m kitlib.kaggle --help``)::

    python -m kitlib.kaggle bundle --exp clouds --user me        # runs/kaggle/kit-clouds-bundle/ (a dataset folder)
    python -m kitlib.kaggle kernel --bundle runs/kaggle/kit-clouds-bundle --competition understanding_cloud_organization
    python -m kitlib.kaggle push --bundle runs/kaggle/kit-clouds-bundle --kernel runs/kaggle/kit-clouds-submit

``bundle`` writes a folder for ``kaggle datasets create/version``: ``wheels/`` (the kitlib wheel built from this
checkout, and wheels of ``DEFAULT_PACKAGES`` + the user's list at the versions installed here), ``artifacts/``
(exactly what ``kitlib.inference`` reads: each fold's ``best.pt`` and ``config.json``, the ensemble's
``weights.json``, ``postprocess.json``, and the folds of its ``gate_exp``), ``dataset-metadata.json`` and the
manifest ``kit-bundle.json`` (files, sha256, sizes; a file whose bytes are already in the bundle is stored once and
listed under ``links``).

``kernel`` writes a folder for ``kaggle kernels push``: ``notebooks/40_submit.py`` as ``40_submit.ipynb`` with
its parameters injected (papermill's prepare-only mode), a first cell that sets ``HF_HUB_OFFLINE=1`` and installs
the bundle's wheels with ``pip install --no-index --no-deps``, a cell after the parameters that finds the data with
``find_input`` / ``bundle_artifacts`` at run time, and ``kernel-metadata.json`` (internet off, set explicitly).

``push`` calls the ``kaggle`` CLI (in requirements.txt; ``pip install -e '.[kaggle]'`` in the checkout) and returns its
answers.

Inside a kernel, Kaggle mounts the competition and each attached dataset under ``/kaggle/input``, at a depth that
has changed over the years (``input/<slug>``, ``input/competitions/<slug>``, ``input/datasets/<user>/<slug>``):
``find_input`` globs those. ``KIT_KAGGLE_ROOT`` replaces ``/kaggle`` (tests, a local dry run). kitlib writes into
``working_dir()`` only; ``input`` is read-only there.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitlib._private import listing
from kitlib.config import OFFLINE_VARS, project_path, project_root, read_json, replace_dir, run_info, write_json

__all__ = [
    "COMPETITIONS",
    "DEFAULT_PACKAGES",
    "KAGGLE_IMAGE_PACKAGES",
    "MACHINE_SHAPES",
    "Bundle",
    "KaggleError",
    "Kernel",
    "PushResult",
    "bundle",
    "bundle_artifacts",
    "dataset_metadata",
    "find_input",
    "kaggle_credentials",
    "kaggle_root",
    "kaggle_user",
    "kernel",
    "kernel_metadata",
    "main",
    "push",
    "resolve_packages",
    "working_dir",
]

log = logging.getLogger(__name__)

# Kaggle competition slug of each preset that is a Kaggle competition (the others need --competition).
COMPETITIONS = {
    "clouds": "understanding_cloud_organization",
    "severstal": "severstal-steel-defect-detection",
    "cassava": "cassava-leaf-disease-classification",
}
# Packages the Kaggle Python image lacks and kitlib imports; the bundle carries their wheels, at the versions
# installed here. Extend with --packages / --packages-file (e.g. timm, to pin the version you trained with).
DEFAULT_PACKAGES = ("segmentation-models-pytorch",)
# Compiled packages the Kaggle image ships, built against its CUDA and NumPy: a wheel from this machine would
# replace them in the kernel (and weigh gigabytes), so the bundle refuses them. ``nvidia-*`` too.
KAGGLE_IMAGE_PACKAGES = frozenset({
    "torch", "torchvision", "torchaudio", "triton", "numpy", "scipy", "pandas", "pillow", "scikit-learn",
    "opencv-python", "opencv-python-headless", "opencv-contrib-python", "tensorflow", "keras", "jax", "jaxlib",
})  # fmt: skip
# kernel-metadata.json "machine_shape" values (kagglesdk ApiSaveKernelRequest.machine_shape) -> GPU (else TPU).
MACHINE_SHAPES = {"NvidiaTeslaT4": "gpu", "NvidiaTeslaP100": "gpu", "Tpu1VmV38": "tpu"}

MANIFEST = "kit-bundle.json"
DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
_RUNTIME_PARAMS = ("data_dir", "artifacts_root", "submission_path")  # resolved inside the kernel
_SLUG_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DATASET_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{4,48})[a-z0-9]")  # 6..50 characters, as Kaggle requires


class KaggleError(RuntimeError):
    """A ``kaggle`` CLI call that could not run or that Kaggle refused; the message is one line."""


# ------------------------------------------------------------------------------------------------ paths in a kernel


def kaggle_root() -> Path:
    """``$KIT_KAGGLE_ROOT`` when set, else ``/kaggle`` (a Kaggle kernel's ``input/`` and ``working/``)."""
    return Path(os.environ.get("KIT_KAGGLE_ROOT") or "/kaggle").expanduser()


def working_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/working`` (``/kaggle/working``: the kernel's output folder, where ``submission.csv`` goes).

    Args:
        root: the Kaggle root; None: ``kaggle_root()``.
    """
    return Path(root if root is not None else kaggle_root()) / "working"


def _input_patterns(slug: str) -> list[str]:
    """Glob patterns below ``input/`` for a slug, most specific first."""
    parts = slug.strip("/").split("/")
    if not 1 <= len(parts) <= 2 or not all(_SLUG_PART.fullmatch(p) for p in parts):
        raise ValueError(f"not a Kaggle slug: {slug!r} (expected 'slug' or 'user/slug')")
    name = parts[-1]
    owner_patterns = [slug.strip("/"), f"*/{slug.strip('/')}"] if len(parts) == 2 else []
    return [*owner_patterns, name, f"*/{name}", f"*/*/{name}"]


def find_input(slug: str, root: str | os.PathLike | None = None) -> Path:
    """The folder where Kaggle mounted a competition or an attached dataset.

    Looks under ``<root>/input`` for ``<slug>``, ``*/<slug>`` and ``*/*/<slug>`` (for ``user/slug`` first
    ``user/slug`` and ``*/user/slug``, then the same with the last component): Kaggle has mounted inputs at each of
    these depths (``input/<slug>``, ``input/competitions/<slug>``, ``input/datasets/<user>/<slug>``).

    Args:
        slug: a competition slug (``understanding_cloud_organization``) or a dataset id (``user/slug``).
        root: the Kaggle root; None: ``$KIT_KAGGLE_ROOT`` or ``/kaggle``.
    Returns:
        The folder (the first pattern that matches).
    Raises:
        FileNotFoundError: nothing matches; the message lists the patterns and what ``input/`` holds.
        ValueError: ``slug`` is not a slug, or one pattern matches several folders (the message names them).
    """
    base = Path(root if root is not None else kaggle_root()) / "input"
    patterns = _input_patterns(slug)
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(base)), pattern)) if os.path.isdir(p))
        if len(hits) > 1:
            raise ValueError(f"{slug!r} is ambiguous under {base}: {listing(hits)}; pass 'user/slug'")
        if hits:
            return hits[0]
    held = sorted(str(p.relative_to(base)) for p in [*base.glob("*"), *base.glob("*/*")]) if base.is_dir() else None
    raise FileNotFoundError(
        f"{slug!r} not found under {base} (looked for {', '.join(patterns)}); "
        + (f"it holds: {listing(held, 12)}" if held else "it is empty" if held is not None else "no such folder")
        + "; attach the competition or dataset to the kernel, or set KIT_KAGGLE_ROOT"
    )


def _below(folder: Path, relpath: str, depth: int = 2) -> Path | None:
    """The first ``folder[/*[/*]]`` (up to ``depth`` levels) that holds ``relpath``, or None."""
    for level in range(depth + 1):
        pattern = os.path.join(glob.escape(str(folder)), *["*"] * level, glob.escape(relpath))
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[0][: len(hits[0]) - len(relpath)].rstrip("/"))
    return None


def bundle_artifacts(slug: str, root: str | os.PathLike | None = None) -> Path:
    """The ``artifacts_root`` of an attached bundle (``bundle``), for ``notebooks/40_submit.py`` in a kernel.

    Finds the dataset with ``find_input``, its manifest ``kit-bundle.json`` and its artifacts (Kaggle unpacks the
    uploaded ``artifacts.zip``; the files are looked for up to three levels down). When the bundle stored duplicate
    files once (``links``), the tree is rebuilt as symbolic links in a temporary folder (``/kaggle/input`` is
    read-only).

    Args:
        slug: the bundle's dataset id ``user/slug`` (or its slug).
        root: the Kaggle root; None: ``$KIT_KAGGLE_ROOT`` or ``/kaggle``.
    Returns:
        A folder holding ``<exp>/fold<k>/best.pt`` etc.
    Raises:
        FileNotFoundError: the dataset, its manifest or a file it lists is missing (the message names it).
        ValueError: as ``find_input``.
    """
    folder = find_input(slug, root)
    top = _below(folder, MANIFEST)
    if top is None:
        raise FileNotFoundError(f"{folder}: no {MANIFEST}; is {slug!r} a bundle written by python -m kitlib.kaggle?")
    manifest = read_json(top / MANIFEST)
    files = [
        f["path"].removeprefix("artifacts/") for f in manifest.get("files", []) if f["path"].startswith("artifacts/")
    ]
    if not files:
        raise FileNotFoundError(f"{top / MANIFEST}: lists no artifacts")
    # the uploaded artifacts.zip unpacks to artifacts/, or one level deeper or shallower
    base = _below(top, files[0], depth=3)
    if base is None:
        raise FileNotFoundError(f"artifacts/{files[0]} (listed in {top / MANIFEST}) is not under {top}")
    links = {k.removeprefix("artifacts/"): v.removeprefix("artifacts/") for k, v in manifest.get("links", {}).items()}
    if not links:
        return base
    mirror = Path(tempfile.mkdtemp(prefix="kit_artifacts_"))
    for rel in [*files, *links]:
        source = base / links.get(rel, rel)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: listed in {top / MANIFEST} but missing")
        target = mirror / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    log.info("%s: %d duplicate files linked in %s", top, len(links), mirror)
    return mirror


# ------------------------------------------------------------------------------------------------ credentials, ids


def _kaggle_json_paths() -> list[Path]:
    """Where the kaggle CLI looks for kaggle.json (KAGGLE_CONFIG_DIR, ~/.kaggle, $XDG_CONFIG_HOME/kaggle)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser() / "kaggle.json"]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path.home() / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


def kaggle_credentials() -> str | None:
    """Where the kaggle CLI would find credentials, or None when it would find none. Reads no secret's value.

    Checked in the CLI's order: ``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``, ``KAGGLE_USERNAME`` +
    ``KAGGLE_KEY``, ``kaggle.json`` (``KAGGLE_CONFIG_DIR``, ``~/.kaggle``, ``~/.config/kaggle``), and the OAuth
    cache ``~/.kaggle/credentials.json`` of ``kaggle auth login``.
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    kaggle_home = Path.home() / ".kaggle"
    for name in ("access_token", "access_token.txt"):
        if (kaggle_home / name).is_file():
            return str(kaggle_home / name)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for path in _kaggle_json_paths():
        if path.is_file():
            return str(path)
    if (kaggle_home / "credentials.json").is_file():
        return str(kaggle_home / "credentials.json")
    return None


def kaggle_user(user: str | None = None) -> str:
    """The Kaggle user name for dataset and kernel ids: ``user``, else ``KAGGLE_USERNAME``, else ``username`` of
    kaggle.json.

    Raises:
        ValueError: none of them is set, or the name is not a slug.
    """
    name = user or os.environ.get("KAGGLE_USERNAME")
    if not name:
        for path in _kaggle_json_paths():
            if path.is_file():
                name = str(read_json(path).get("username") or "")
                if name:
                    break
    if not name:
        raise ValueError(
            "no Kaggle user name: pass --user NAME, set KAGGLE_USERNAME, or put kaggle.json (from "
            "https://www.kaggle.com/settings/api) in ~/.kaggle/"
        )
    if not _SLUG_PART.fullmatch(name):
        raise ValueError(f"not a Kaggle user name: {name!r}")
    return name


def _slugify(text: str) -> str:
    """Kaggle's slug of a title: lowercase, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _check_slug(slug: str, what: str) -> str:
    if not _DATASET_SLUG.fullmatch(slug) or "--" in slug:
        raise ValueError(
            f"{what} slug {slug!r}: needs 6 to 50 lowercase letters, digits and single dashes (pass --slug)"
        )
    return slug


def _check_title(title: str, slug: str, what: str) -> str:
    if not 6 <= len(title) <= 50:
        raise ValueError(f"{what} title {title!r}: Kaggle needs 6 to 50 characters (pass --title)")
    if _slugify(title) != slug:
        log.warning("%s title %r does not turn into the slug %r; Kaggle links the two", what, title, slug)
    return title


def dataset_metadata(user: str, slug: str, title: str | None = None, license_name: str = "CC0-1.0") -> dict:
    """Kaggle's ``dataset-metadata.json``: ``{"title", "id": "<user>/<slug>", "licenses": [{"name"}]}``.

    Raises:
        ValueError: a slug or title Kaggle would refuse (slug 6-50 of ``[a-z0-9-]``, title 6-50 characters).
    """
    _check_slug(slug, "dataset")
    title = _check_title(title or slug.replace("-", " "), slug, "dataset")
    return {"title": title, "id": f"{kaggle_user(user)}/{slug}", "licenses": [{"name": license_name}]}


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
            ``enable_gpu``, a TPU ``enable_tpu``.
    Returns:
        The dict; ``enable_internet`` is False (explicit: Kaggle's default is True).
    Raises:
        ValueError: a bad slug or title, or an unknown accelerator (the message lists the known ones).
    """
    _check_slug(slug, "kernel")
    title = _check_title(title or slug.replace("-", " "), slug, "kernel")
    if accelerator and accelerator not in MACHINE_SHAPES:
        raise ValueError(f"unknown accelerator {accelerator!r}; options: {sorted(MACHINE_SHAPES)}")
    kind = MACHINE_SHAPES.get(accelerator or "")
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
    return meta


# ------------------------------------------------------------------------------------------------ wheels


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_packages(packages: Iterable[str]) -> dict[str, str]:
    """Pin each package to the version installed here (or to its ``name==version``), refusing the Kaggle image's.

    Args:
        packages: distribution names, optionally ``name==version``.
    Returns:
        canonical name -> version, in order, each name once.
    Raises:
        ValueError: a package the Kaggle image ships (``KAGGLE_IMAGE_PACKAGES``, ``nvidia-*``), kitlib itself, a
            malformed entry, or a package that is not installed here and has no version (the message names it).
    """
    pins: dict[str, str] = {}
    for entry in packages:
        entry = entry.split("#")[0].strip()
        if not entry:
            continue
        name, _, version = (part.strip() for part in entry.partition("=="))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ("==" in entry and not version):
            raise ValueError(f"package {entry!r}: expected 'name' or 'name==version'")
        key = _canonical(name)
        if key in KAGGLE_IMAGE_PACKAGES or key.startswith("nvidia-"):
            raise ValueError(
                f"{name}: the Kaggle image ships it (built for its CUDA/NumPy); a wheel from here would replace it, "
                "so the bundle never carries it"
            )
        if key == "kitlib":
            raise ValueError("kitlib: its wheel is built from this checkout; leave it out of the package list")
        if not version:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                raise ValueError(
                    f"{name} is not installed here, so its version is unknown; install the version you trained "
                    f"with or pin it ('{name}==X.Y')"
                ) from None
        pins[key] = version
    return pins


def _wheel_key(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _canonical(name), version


def _default_cache() -> Path:
    if os.environ.get("KIT_WHEEL_CACHE"):
        return Path(os.environ["KIT_WHEEL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kitlib" / "wheels"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _fetch_wheels(pins: Mapping[str, str], cache: Path) -> list[Path]:
    """One wheel per pinned package, from ``cache`` or ``pip download --only-binary=:all: --no-deps`` into it."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name, version in pins.items():
        found = [p for p in sorted(cache.glob("*.whl")) if _wheel_key(p) == (name, version)]
        if not found:
            log.info("downloading %s==%s into %s", name, version, cache)
            proc = _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(cache), f"{name}=={version}")
            found = [p for p in sorted(cache.glob("*.whl")) if _wheel_key(p) == (name, version)]
            if proc.returncode != 0 or not found:
                raise RuntimeError(
                    f"cannot get a wheel of {name}=={version} (pip download: {_last_line(proc.stderr + proc.stdout)});"
                    f" put one in {cache} or drop it from the package list"
                )
        if not found[0].name.endswith("-none-any.whl"):
            log.warning("%s is built for this machine's Python/platform; Kaggle's must match", found[0].name)
        wheels.append(found[0])
    return wheels


def _checkout(repo: str | os.PathLike | None = None) -> Path:
    """The kitlib source checkout: ``repo``, else the repository root, else the folder above this package (an
    editable install).

    Raises:
        FileNotFoundError: none of them holds pyproject.toml and kitlib/ (the message names them).
    """
    candidates = [project_path(repo)] if repo else [project_root(), Path(__file__).resolve().parents[1]]
    for folder in candidates:
        if (folder / "pyproject.toml").is_file() and (folder / "kitlib" / "__init__.py").is_file():
            return folder
    raise FileNotFoundError(
        f"no kitlib checkout (pyproject.toml and kitlib/) at {listing(dict.fromkeys(candidates))}; pass --repo"
    )


def _build_kitlib_wheel(repo: Path, dest: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of a snapshot of the checkout (kitlib/, pyproject, README)."""
    with tempfile.TemporaryDirectory(prefix="kitlib-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(repo / "kitlib", src / "kitlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (repo / name).is_file():
                shutil.copy2(repo / name, src / name)
        out = Path(tmp) / "wheel"
        proc = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(src))
        wheels = sorted(out.glob("kitlib-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(
                f"building the kitlib wheel failed ({_last_line(proc.stderr + proc.stdout)}); it needs "
                "setuptools>=77 in this environment (pip install setuptools)"
            )
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest / wheels[0].name))


# ------------------------------------------------------------------------------------------------ bundle


@dataclass
class Bundle:
    """A bundle folder written by ``bundle``.

    Attributes:
        path: the folder (``kaggle datasets create -p <path> -r zip``).
        dataset_id: ``user/slug``.
        preset, exp, ensemble: what ``40_submit`` is to run.
        files: the stored files, relative POSIX paths -> bytes (the metadata files excluded).
        links: duplicate path -> stored path with the same bytes (stored once).
        wheels: the wheel file names, kitlib's first.
    """

    path: Path
    dataset_id: str
    preset: str
    exp: str
    ensemble: str
    files: dict[str, int] = field(repr=False)
    links: dict[str, str] = field(default_factory=dict, repr=False)
    wheels: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes of the stored files (each once)."""
        return sum(self.files.values())

    def summary(self) -> str:
        dup = f", {len(self.links)} duplicates stored once" if self.links else ""
        return f"{self.path}: {len(self.files)} files, {_human(self.total_bytes)}{dup} (dataset {self.dataset_id})"

    @classmethod
    def read(cls, path: str | os.PathLike) -> Bundle:
        """The bundle of a folder, from its manifest.

        Raises:
            FileNotFoundError: the folder has no ``kit-bundle.json``.
        """
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: no {MANIFEST}; write the bundle first (python -m kitlib.kaggle bundle)")
        m = read_json(path / MANIFEST)
        return cls(
            path=path, dataset_id=m["dataset_id"], preset=m["preset"], exp=m["exp"], ensemble=m["ensemble"],
            files={f["path"]: int(f["bytes"]) for f in m["files"]}, links=dict(m.get("links", {})),
            wheels=list(m["wheels"]),
        )  # fmt: skip


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _artifact_sources(
    root: Path, exp: str, ensemble: str, folds: Sequence[int] | None
) -> tuple[list[tuple[str, Path]], str, str | None]:
    """``[(bundle path, source file)]`` of what ``40_submit`` reads, the preset, and the gate experiment: the folds
    of ``inference.fold_dirs``, ``weights.json`` as ``inference.ensemble_weights`` reads it and ``postprocess.json``
    as ``inference.load_postprocess`` reads it (so a file inference would refuse fails here, not in the kernel)."""
    from kitlib.inference import ensemble_weights, fold_dirs, load_postprocess  # inference imports torch

    top = ensemble or exp
    sources: list[tuple[str, Path]] = []
    if ensemble:
        sources.append((f"artifacts/{ensemble}/weights.json", root / ensemble / "weights.json"))
    members = [name for name, weight in ensemble_weights(root, exp, ensemble) if weight > 0]

    def add_folds(name: str, fold_list: Sequence[int] | None) -> list[dict]:
        dirs = fold_dirs(root / name, fold_list)
        sources.extend((f"artifacts/{name}/{d.name}/{f}", d / f) for d in dirs for f in ("best.pt", "config.json"))
        return [read_json(d / "config.json").get("params", {}) for d in dirs]

    params = [p for name in members for p in add_folds(name, folds if not ensemble else None)]
    kinds = {p.get("preset") for p in params}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"{root / top}: the folds' config.json name presets {sorted(map(str, kinds))}; expected one")
    preset = kinds.pop()
    post = root / top / "postprocess.json"
    gate = None
    if post.is_file():
        sources.append((f"artifacts/{top}/postprocess.json", post))
        postprocess = load_postprocess(root / top, preset)
        gate = postprocess.gate_exp if postprocess is not None else None
    if gate:
        bad = [p.get("fold") for p in add_folds(gate, None) if p.get("arch") != "classifier"]
        if bad:
            raise ValueError(f"{post}: gate_exp {gate!r} is not a presence classifier (folds {bad}; 10_train with "
                             f"arch='classifier')")  # fmt: skip
    return sources, preset, gate


def _check_out(out: Path, marker: str) -> Path:
    """``out``, unless it exists and is not a folder this tool wrote (one holding ``marker``)."""
    if out.exists() and not (out / marker).is_file():
        raise FileExistsError(f"{out}: exists and is not a folder this tool wrote (no {marker}); choose --out")
    return out


def _replace_dir(tmp: Path, out: Path, marker: str) -> None:
    """Move the finished ``tmp`` onto ``out`` (``kitlib.config.replace_dir``); an existing ``out`` is replaced only
    if it holds ``marker``."""
    replace_dir(tmp, _check_out(out, marker))


def bundle(
    exp: str = "",
    ensemble: str = "",
    *,
    artifacts_root: str | os.PathLike = "artifacts",
    folds: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    user: str | None = None,
    slug: str | None = None,
    title: str | None = None,
    license_name: str = "CC0-1.0",
    packages: Iterable[str] = DEFAULT_PACKAGES,
    wheel_cache: str | os.PathLike | None = None,
    repo: str | os.PathLike | None = None,
) -> Bundle:
    """Write the dataset folder a Kaggle kernel needs to run ``40_submit`` offline.

    Holds: ``wheels/`` (kitlib built from ``repo``, and each of ``packages`` at its installed version), the
    artifacts inference reads (per fold ``best.pt`` + ``config.json`` of ``exp`` or of every experiment with a
    weight > 0 in ``<ensemble>/weights.json``, and of ``postprocess.json``'s ``gate_exp``; ``weights.json``;
    ``postprocess.json``; never ``last.pt`` or OOF arrays), ``dataset-metadata.json`` and ``kit-bundle.json``. A file
    whose bytes are already in the bundle is stored once (``links`` in the manifest). The folder is written under a
    temporary name and renamed at the end: a killed run leaves no half-written bundle.

    Args:
        exp: the experiment (``artifacts/<exp>/``); may be empty with ``ensemble``.
        ensemble: ``artifacts/<ensemble>/`` with ``weights.json`` (``30_ensemble``).
        artifacts_root: where the experiments live (relative: to the repository root).
        folds: folds of ``exp`` to take; None: every ``fold<k>/best.pt``. Ignored for an ensemble.
        out_dir: default ``runs/kaggle/<slug>``. An existing bundle there is replaced; any other folder is not.
        user: Kaggle user (default: ``KAGGLE_USERNAME`` or kaggle.json); slug: default ``kit-<name>-bundle``;
            title: default the slug with spaces; license_name: Kaggle license name.
        packages: extra wheels (``name`` or ``name==version``); default ``DEFAULT_PACKAGES``.
        wheel_cache: where downloaded wheels are kept (default ``$KIT_WHEEL_CACHE`` or ``~/.cache/kitlib/wheels``).
        repo: the kitlib checkout to build the wheel from (default: the repository root).
    Returns:
        ``Bundle`` (``summary()`` gives the size).
    Raises:
        FileNotFoundError: a missing experiment, fold file or weights.json (the message names it).
        ValueError: no exp/ensemble, a refused package, bad slug/title, no user, folds of several presets.
        RuntimeError: a wheel that cannot be built or downloaded (the message names the package).
        FileExistsError: ``out_dir`` exists and is not a bundle.
    """
    if not exp and not ensemble:
        raise ValueError("bundle needs an experiment (--exp) or an ensemble (--ensemble)")
    name = ensemble or exp
    exp = exp or name
    slug = slug or f"kit-{_slugify(name)}-bundle"
    meta = dataset_metadata(user, slug, title, license_name)
    pins = resolve_packages(packages)
    root = project_path(artifacts_root)
    sources, preset, gate = _artifact_sources(root, exp, ensemble, folds)
    out = _check_out(Path(out_dir) if out_dir is not None else project_path("runs/kaggle") / slug, MANIFEST)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        wheels = [_build_kitlib_wheel(_checkout(repo), tmp / "wheels")]
        for wheel in _fetch_wheels(pins, Path(wheel_cache) if wheel_cache else _default_cache()):
            wheels.append(Path(shutil.copy2(wheel, tmp / "wheels" / wheel.name)))
        files = {f"wheels/{w.name}": (w, _sha256(w)) for w in wheels}
        by_hash = {h: rel for rel, (_, h) in files.items()}
        links: dict[str, str] = {}
        for rel, src in sources:
            if rel in files or rel in links:
                continue  # the same file twice (an experiment listed twice)
            digest = _sha256(src)
            if digest in by_hash:
                links[rel] = by_hash[digest]
                continue
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)  # kitlib writes artifacts by atomic replace, so a hard link never changes
            except OSError:
                shutil.copy2(src, dst)
            files[rel] = (dst, digest)
            by_hash[digest] = rel
        write_json(tmp / DATASET_METADATA, meta)
        write_json(tmp / MANIFEST, {
            "kind": "kitlib-bundle", "dataset_id": meta["id"], "preset": preset, "exp": exp, "ensemble": ensemble,
            "gate_exp": gate, "wheels": [w.name for w in wheels], "packages": pins,
            "files": [{"path": rel, "bytes": p.stat().st_size, "sha256": h} for rel, (p, h) in files.items()],
            "links": links, "run": run_info(),
        })  # fmt: skip
        _replace_dir(tmp, out, MANIFEST)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.read(out)


# ------------------------------------------------------------------------------------------------ kernel


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


def _parameter_types(nb: dict) -> dict[str, str]:
    """name -> annotated type of the notebook's ``parameters`` cell (``name: int = 0  # ...``)."""
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            return dict(re.findall(r"^(\w+)\s*:\s*(\w+)\s*=", source, flags=re.M))
    raise ValueError("the notebook has no cell tagged 'parameters'")


def _coerce(name: str, value: Any, kind: str) -> Any:
    if not isinstance(value, str) or kind == "str":
        return value
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool" and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
    except ValueError:
        pass
    raise ValueError(f"parameter {name}: {value!r} is not of type {kind}")


def _code_cell(source: str, tag: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": [tag]}, "outputs": [],
            "source": source.splitlines(keepends=True)}  # fmt: skip


def _install_cell(dataset_id: str, wheels: Sequence[str]) -> str:
    """The first cell: offline switches, then pip install of the bundle's wheels found by ``find_input``'s globs
    (inlined: kitlib is not importable before it is installed)."""
    return f"""\
# Written by kitlib.kaggle: install the bundle's wheels offline (the kernel has no internet). HF_HUB_OFFLINE is set
# before anything imports huggingface_hub, so a missing weight file fails at once instead of retrying the network.
import glob
import importlib
import os
import subprocess
import sys

for _var in {OFFLINE_VARS!r}:
    os.environ[_var] = "1"
_input = os.path.join(os.environ.get("KIT_KAGGLE_ROOT") or "/kaggle", "input")
_patterns = {_input_patterns(dataset_id)!r}  # as kitlib.kaggle.find_input
_hits = [p for pat in _patterns for p in sorted(glob.glob(os.path.join(glob.escape(_input), pat))) if os.path.isdir(p)]
if not _hits:
    raise FileNotFoundError(f"dataset {dataset_id!r} is not under {{_input}} (looked for {{_patterns}}): attach it")
_wheels = []
for _name in {list(wheels)!r}:
    _found = sorted(glob.glob(os.path.join(glob.escape(_hits[0]), "**", _name), recursive=True))
    if not _found:
        raise FileNotFoundError(f"{{_name}} is not in {{_hits[0]}}: rebuild and upload the bundle")
    _wheels.append(_found[0])
_pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", os.path.dirname(_wheels[0]), "--no-deps"]
subprocess.check_call([*_pip, "--force-reinstall", "--quiet", "--disable-pip-version-check", *_wheels])
importlib.invalidate_caches()
print("installed offline:", ", ".join(os.path.basename(w) for w in _wheels))
"""


def _paths_cell(dataset_id: str, competition: str) -> str:
    return f"""\
# Written by kitlib.kaggle: the competition data and the bundle under /kaggle/input, the submission in /kaggle/working
import kitlib
from kitlib import kaggle

data_dir = str(kaggle.find_input({competition!r}))
artifacts_root = str(kaggle.bundle_artifacts({dataset_id!r}))
submission_path = str(kaggle.working_dir() / "submission.csv")
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
    _input_patterns(competition)
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
        enable_gpu=enable_gpu, accelerator=accelerator, model_sources=models,
    )  # fmt: skip
    raw = json.loads(_run_tool("jupytext", ["--to", "ipynb", "--output", "-", str(notebook)]))
    types = _parameter_types(raw)
    values: dict[str, Any] = {"exp": info.exp, "preset": info.preset, "ensemble": info.ensemble, "n_folds": 0}
    for key, value in (params or {}).items():
        if key in _RUNTIME_PARAMS:
            raise ValueError(f"parameter {key}: the kernel sets it when it runs (from the Kaggle input folders)")
        if key not in types:
            raise ValueError(f"unknown parameter {key!r} of {notebook.name}; options: {sorted(types)}")
        values[key] = _coerce(key, value, types[key])
    values = {k: v for k, v in values.items() if k in types}
    prepared = _run_tool(
        "papermill",
        ["-", "-", "--prepare-only", "--no-progress-bar", "-y", json.dumps(values)],
        json.dumps(raw).encode(),
    )
    nb = json.loads(prepared)
    cells = nb["cells"]
    at = next(i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    cells.insert(at + 1, _code_cell(_paths_cell(info.dataset_id, competition), "kaggle-paths"))
    cells.insert(0, _code_cell(_install_cell(info.dataset_id, info.wheels), "kaggle-install"))
    nb.setdefault("metadata", {})["kitlib"] = {"bundle": info.dataset_id, "competition": competition}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_json(tmp / code_file, nb)
        write_json(tmp / KERNEL_METADATA, meta)
        _replace_dir(tmp, out, KERNEL_METADATA)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Kernel(path=out, kernel_id=meta["id"], code_file=code_file, metadata=meta, parameters=values)


# ------------------------------------------------------------------------------------------------ push


@dataclass
class PushResult:
    """What ``push`` ran: each ``kaggle`` command line and its output (Kaggle's answer: URLs, status)."""

    calls: list[tuple[list[str], str]] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(f"$ {' '.join(cmd)}\n{out.strip()}" for cmd, out in self.calls)


_NETWORK = re.compile(
    r"ConnectionError|Max retries exceeded|Failed to establish a new connection|Name or service not known|"
    r"Temporary failure in name resolution|NameResolutionError|Network is unreachable|timed out|ProxyError",
    re.I,
)
_REFUSED_AUTH = re.compile(r"\b401\b|Unauthorized|Authentication required|Invalid credentials", re.I)
_FAILED = re.compile(r"\berror\s*:", re.I)  # the CLI's failures: "Kernel push error: ...", "... error: ..."


def _kaggle_cli() -> list[str]:
    """The ``kaggle`` executable: on PATH or beside this interpreter (a virtual environment not activated)."""
    found = shutil.which("kaggle") or shutil.which("kaggle", path=str(Path(sys.executable).parent))
    if not found:
        raise KaggleError(
            "the kaggle CLI is not installed: pip install kaggle six (or pip install -e '.[kaggle]' here)"
        )
    return [found]


def _call(cli: list[str], args: list[str], result: PushResult) -> tuple[int, str]:
    """Run ``kaggle ARGS``, logging its output line by line as it comes (uploads take a while); record the command
    and its output in ``result``."""
    cmd = [*cli, *args]
    log.info("$ %s", " ".join(cmd))
    lines = []
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as p:
            for line in p.stdout:
                log.info("  %s", line.rstrip())
                lines.append(line)
    except OSError as e:
        raise KaggleError(f"kaggle {' '.join(args[:2])} could not run: {e}") from e
    out = "".join(lines).strip()
    result.calls.append(([Path(cmd[0]).name, *args], out))
    return p.returncode, out


def _check(code: int, out: str, args: list[str]) -> str:
    """``out`` when the call worked, else a one-line KaggleError: network, credentials, or Kaggle's error."""
    what = f"kaggle {' '.join(args[:2])}"
    for line in out.splitlines():
        if _NETWORK.search(line):
            raise KaggleError(f"cannot reach Kaggle ({what}: {line.strip()[:200]}); check the network or proxy")
    if _REFUSED_AUTH.search(out):
        raise KaggleError(f"Kaggle refused the credentials from {kaggle_credentials()} ({what})")
    if code != 0 or _FAILED.search(out):
        raise KaggleError(f"{what} failed (exit {code}): {_last_line(out)[:300]}")
    return out


def push(
    bundle_dir: str | os.PathLike | None = None,
    kernel_dir: str | os.PathLike | None = None,
    *,
    message: str = "kitlib bundle",
    dataset_mode: str = "auto",
    public: bool = False,
    wait: float = 600.0,
    poll: float = 10.0,
) -> PushResult:
    """Upload the bundle as a Kaggle dataset and push the kernel, with the ``kaggle`` CLI.

    Runs ``kaggle datasets create -p BUNDLE -r zip`` (a new dataset) or ``kaggle datasets version -p BUNDLE -m
    MESSAGE -r zip`` (``-r zip``: the bundle's folders are uploaded as archives that Kaggle unpacks), waits until
    ``kaggle datasets status`` says ready, then ``kaggle kernels push -p KERNEL``.

    Args:
        bundle_dir: a ``bundle`` folder; None: no dataset upload.
        kernel_dir: a ``kernel`` folder; None: no kernel push.
        message: the dataset version notes.
        dataset_mode: "auto" (``kaggle datasets status`` decides create or version), "create", "version".
        public: create the dataset public (default private).
        wait: seconds to wait for the dataset to be ready before pushing the kernel (0: do not wait).
        poll: seconds between status checks.
    Returns:
        ``PushResult`` with each command and Kaggle's answer.
    Raises:
        KaggleError: one line: the CLI is missing, no credentials, the network is down, or Kaggle refused a step.
        FileNotFoundError: a folder without its metadata file; ValueError: an unknown ``dataset_mode``.
    """
    if dataset_mode not in ("auto", "create", "version"):
        raise ValueError(f"dataset_mode must be auto, create or version, got {dataset_mode!r}")
    if bundle_dir is None and kernel_dir is None:
        raise ValueError("nothing to push: give a bundle folder, a kernel folder or both")
    for folder, name in ((bundle_dir, DATASET_METADATA), (kernel_dir, KERNEL_METADATA)):
        if folder is not None and not (Path(folder) / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}")
    cli = _kaggle_cli()
    if kaggle_credentials() is None:
        raise KaggleError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or put kaggle.json "
            "from https://www.kaggle.com/settings/api in ~/.kaggle/"
        )
    result = PushResult()
    if bundle_dir is not None:
        dataset_id = read_json(Path(bundle_dir) / DATASET_METADATA)["id"]
        status = ["datasets", "status", dataset_id]
        mode = dataset_mode
        if mode == "auto":
            code, out = _call(cli, status, result)
            missing = code != 0 and re.search(r"\b404\b|not found", out, re.I) and not _NETWORK.search(out)
            if not missing:
                _check(code, out, status)
            mode = "create" if missing else "version"
        if mode == "create":
            args = ["datasets", "create", "-p", str(bundle_dir), "-r", "zip", *(["--public"] if public else [])]
        else:
            args = ["datasets", "version", "-p", str(bundle_dir), "-m", message, "-r", "zip"]
        _check(*_call(cli, args, result), args)
        deadline = time.monotonic() + wait
        while wait > 0:
            out = _check(*_call(cli, status, result), status)
            if "ready" in out.lower():
                break
            if out.strip().lower() == "error":
                raise KaggleError(f"{dataset_id}: Kaggle could not process the upload (datasets status: error)")
            if time.monotonic() > deadline:
                log.warning("%s is not ready after %.0f s (%s); the kernel may see the previous version", dataset_id,
                            wait, _last_line(out))  # fmt: skip
                break
            time.sleep(poll)
    if kernel_dir is not None:
        args = ["kernels", "push", "-p", str(kernel_dir)]
        _check(*_call(cli, args, result), args)
    return result


# ------------------------------------------------------------------------------------------------ command line


def _read_package_file(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kitlib.kaggle",
        description="Kaggle code competitions: bundle a run as a dataset, write the submission kernel, push both.",
        epilog="Example: bundle --exp demo --user me; kernel --bundle runs/kaggle/kit-demo-bundle --competition SLUG; "
        "push --bundle runs/kaggle/kit-demo-bundle --kernel runs/kaggle/kit-demo-submit",
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bundle", help="write the dataset folder: wheels, checkpoints, postprocess/weights JSON")
    b.add_argument("--exp", default="", help="experiment: artifacts/<exp>/fold<k>/best.pt")
    b.add_argument("--ensemble", default="", help="ensemble: artifacts/<ensemble>/weights.json (30_ensemble)")
    b.add_argument("--artifacts-root", default="artifacts", help="where the experiments live (default: artifacts)")
    b.add_argument("--folds", default="", help="folds of --exp, e.g. 0,1,2 (default: every fold with best.pt)")
    always = ", ".join(DEFAULT_PACKAGES)
    b.add_argument("--packages", action="append", default=[],
                   help=f"more wheels: name or name==version, comma-separated (always: {always})")  # fmt: skip
    b.add_argument("--packages-file", help="a text file with one package per line (# comments)")
    b.add_argument("--wheel-cache", help="downloaded wheels (default: $KIT_WHEEL_CACHE or ~/.cache/kitlib/wheels)")
    b.add_argument("--license", default="CC0-1.0", help="dataset license name (default: CC0-1.0)")
    b.add_argument("--repo", help="kitlib checkout to build the wheel from (default: this repository)")
    k = sub.add_parser("kernel", help="write the kernel folder: 40_submit.ipynb and kernel-metadata.json")
    k.add_argument("--bundle", required=True, help="the folder written by the bundle command")
    k.add_argument("--competition", help=f"competition slug (default per preset: {COMPETITIONS})")
    k.add_argument("--notebook", default="notebooks/40_submit.py", help="the jupytext notebook to run")
    k.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p tta flips -p batch_size 16")  # fmt: skip
    k.add_argument("--public", action="store_true", help="make the kernel public (default: private)")
    k.add_argument("--gpu", action="store_true", help="enable a GPU (Kaggle's default GPU)")
    k.add_argument("--accelerator", choices=sorted(MACHINE_SHAPES), help="machine_shape; implies --gpu for GPUs")
    k.add_argument("--dataset", action="append", default=[], help="another dataset source user/slug (repeatable)")
    k.add_argument("--model", action="append", default=[], help="a Kaggle model source (repeatable)")
    for q in (b, k):
        q.add_argument("--user", help="Kaggle user name (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
        q.add_argument("--slug", help="dataset/kernel slug (default: kit-<name>-bundle / kit-<name>-submit)")
        q.add_argument("--title", help="dataset/kernel title (default: the slug with spaces)")
        q.add_argument("--out", help="output folder (default: runs/kaggle/<slug>)")
    s = sub.add_parser("push", help="upload the bundle (kaggle datasets create/version) and push the kernel")
    s.add_argument("--bundle", help="bundle folder to upload")
    s.add_argument("--kernel", help="kernel folder to push")
    s.add_argument("-m", "--message", default="kitlib bundle", help="dataset version notes")
    s.add_argument("--dataset-mode", choices=("auto", "create", "version"), default="auto",
                   help="create a new dataset or a new version (auto: ask Kaggle)")  # fmt: skip
    s.add_argument("--public", action="store_true", help="create the dataset public (default: private)")
    s.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the dataset to be ready (600)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kitlib.kaggle bundle|kernel|push ...``; prints what was written (and its size) or Kaggle's
    answers. Errors print one line ``error: ...`` and exit with status 1.

    Returns:
        0 on success.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "bundle":
            packages = [*DEFAULT_PACKAGES, *(x for arg in args.packages for x in arg.split(","))]
            if args.packages_file:
                packages += _read_package_file(args.packages_file)
            folds = [int(x) for x in args.folds.split(",") if x.strip()] or None
            result = bundle(
                args.exp, args.ensemble, artifacts_root=args.artifacts_root, folds=folds, out_dir=args.out,
                user=args.user, slug=args.slug, title=args.title, license_name=args.license, packages=packages,
                wheel_cache=args.wheel_cache, repo=args.repo,
            )  # fmt: skip
            print(f"bundle: {result.summary()}")
            print(f"wheels: {', '.join(result.wheels)}")
            print(f"next: python -m kitlib.kaggle kernel --bundle {result.path} [--competition SLUG]")
        elif args.command == "kernel":
            result = kernel(
                args.bundle, args.competition, out_dir=args.out, user=args.user, slug=args.slug, title=args.title,
                notebook=args.notebook, params=dict(args.param), is_private=not args.public, enable_gpu=args.gpu,
                accelerator=args.accelerator, datasets=args.dataset, models=args.model,
            )  # fmt: skip
            print(f"kernel: {result.path} ({result.kernel_id}, {result.code_file})")
            print(f"next: python -m kitlib.kaggle push --bundle {args.bundle} --kernel {result.path}")
        else:
            result = push(
                args.bundle, args.kernel, message=args.message, dataset_mode=args.dataset_mode, public=args.public,
                wait=args.wait,
            )  # fmt: skip
            for cmd, out in result.calls:
                print(f"{' '.join(cmd[:3])}: {_last_line(out)}")
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:  # KaggleError is a RuntimeError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
