"""A run's artifacts as a Kaggle dataset (the build side of ``kitlib.kaggle``): ``bundle`` writes the folder that
``kaggle datasets create/version`` uploads, for a kernel that runs ``40_submit`` with the internet off.

The folder holds ``wheels/`` (the kitlib wheel built from this checkout, and wheels of ``DEFAULT_PACKAGES`` + the
user's list at the versions installed here), ``artifacts/`` (exactly what ``kitlib.inference`` reads: each fold's
``best.pt`` and ``config.json``, the ensemble's ``weights.json`` (+ ``stacking.json``), ``postprocess.json``, and the
folds of its ``gate_exp``), ``dataset-metadata.json`` and the manifest ``kit-bundle.json`` (files, sha256, sizes; a
file whose bytes are already in the bundle is stored once and listed under ``links``). Also here: the Kaggle user and
the credentials the kaggle CLI would use (where they are, never their values), and the slug and title rules Kaggle
enforces.

The model channel (``channel="model"``, ``kitlib.kaggle_models``) splits the same files in two: the dataset keeps
``wheels/`` and the metadata, the artifacts go to a second folder ``<out>-model/`` (with its own ``kit-bundle.json``)
that ``kagglehub.model_upload`` sends as a Kaggle Model version. In either channel each ``best.pt`` is stored with
float16 parameters unless ``weights="fp32"`` (``kitlib.kaggle_weights``), checked against the float32 one.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kitlib._private import listing
from kitlib.io import (
    project_path,
    project_root,
    public_run_info,
    read_json,
    remove_stale_temp,
    replace_dir,
    root_relative,
    temp_dir,
    write_json,
)
from kitlib.kaggle import _SLUG_PART, MANIFEST, model_handle
from kitlib.kaggle_weights import HALF_CHECK_IMAGES, WEIGHTS, _sha256, store_artifacts
from kitlib.presets import PRESETS, Preset, preset_fields

__all__ = [
    "CHANNELS",
    "DATASET_METADATA",
    "DEFAULT_PACKAGES",
    "KAGGLE_IMAGE_PACKAGES",
    "PRESET_FILE",
    "Bundle",
    "bundle",
    "dataset_metadata",
    "kaggle_credentials",
    "kaggle_user",
    "resolve_packages",
]

log = logging.getLogger(__name__)

# Packages the Kaggle Python image lacks and kitlib imports; the bundle carries their wheels, at the versions
# installed here. Extend with --packages / --packages-file (e.g. timm, to pin the version you trained with).
DEFAULT_PACKAGES = ("segmentation-models-pytorch",)
# Compiled packages the Kaggle image ships, built against its CUDA and NumPy: a wheel from this machine would
# replace them in the kernel (and weigh gigabytes), so the bundle refuses them. ``nvidia-*`` too.
KAGGLE_IMAGE_PACKAGES = frozenset({
    "torch", "torchvision", "torchaudio", "triton", "numpy", "scipy", "pandas", "pillow", "scikit-learn",
    "opencv-python", "opencv-python-headless", "opencv-contrib-python", "tensorflow", "keras", "jax", "jaxlib",
})  # fmt: skip
DATASET_METADATA = "dataset-metadata.json"
#: Where a bundle's artifacts go: in the dataset with the wheels, or in a Kaggle Model (``kitlib.kaggle_models``).
CHANNELS = ("dataset", "model")
#: A user's own preset (a preset file) as the bundle carries it, beside the experiments under ``artifacts/``: the
#: resolved fields (``kitlib.presets.preset_fields``), so the kernel needs neither the file nor the train labels.
PRESET_FILE = "preset.yaml"
_DATASET_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{4,48})[a-z0-9]")  # 6..50 characters, as Kaggle requires


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
        model: the model channel's ``{"handle", "version", "path", "files", "links"}`` (``handle`` without version;
            ``version`` once known), None for the dataset channel.
        weights: ``{"dtype", "bytes_fp32", "bytes", "check"}`` of the stored ``best.pt`` files.
    """

    path: Path
    dataset_id: str
    preset: str
    exp: str
    ensemble: str
    files: dict[str, int] = field(repr=False)
    links: dict[str, str] = field(default_factory=dict, repr=False)
    wheels: list[str] = field(default_factory=list)
    model: dict | None = field(default=None, repr=False)
    weights: dict = field(default_factory=dict, repr=False)

    @property
    def total_bytes(self) -> int:
        """Bytes of the stored files (each once)."""
        return sum(self.files.values())

    @property
    def artifacts_source(self) -> str:
        """What the kernel's ``kitlib.kaggle.bundle_artifacts`` looks for: the model handle or the dataset id."""
        return self.model["handle"] if self.model else self.dataset_id

    def model_source(self, version: int | None = None) -> str | None:
        """``kernel-metadata.json``'s ``model_sources`` entry: the handle pinned to ``version`` (default the recorded
        one; unversioned when none is known yet), None for the dataset channel."""
        if not self.model:
            return None
        version = version if version is not None else self.model.get("version")
        return f"{self.model['handle']}/{int(version)}" if version else self.model["handle"]

    def summary(self) -> str:
        dup = f", {len(self.links)} duplicates stored once" if self.links else ""
        text = f"{self.path}: {len(self.files)} files, {_human(self.total_bytes)}{dup} (dataset {self.dataset_id})"
        if self.model:
            n = sum(self.model["files"].values())
            text += (
                f"; {self.model['path']}: {len(self.model['files'])} files, {_human(n)} (model {self.model['handle']})"
            )
        w = self.weights
        if w.get("bytes_fp32"):
            text += f"; weights {w['dtype']}: {_human(w['bytes_fp32'])} as float32 -> {_human(w['bytes'])} stored"
        return text

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
        model = m.get("model")
        if model:
            model = {**model, "path": path.parent / model["path"],
                     "files": {f["path"]: int(f["bytes"]) for f in model["files"]}}  # fmt: skip
        return cls(
            path=path, dataset_id=m["dataset_id"], preset=m["preset"], exp=m["exp"], ensemble=m["ensemble"],
            files={f["path"]: int(f["bytes"]) for f in m["files"]}, links=dict(m.get("links", {})),
            wheels=list(m["wheels"]), model=model or None, weights=dict(m.get("weights") or {}),
        )  # fmt: skip


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _artifact_sources(
    root: Path, exp: str, ensemble: str, folds: Sequence[int] | None
) -> tuple[list[tuple[str, Path]], Preset, str | None]:
    """``[(bundle path, source file)]`` of what ``40_submit`` reads, the preset, and the gate experiment: the folds
    of ``inference.fold_dirs`` with their ``TrainConfig``, ``weights.json`` as ``inference.ensemble_weights`` reads
    it and ``postprocess.json`` as ``kitlib.postprocess.load_postprocess`` reads it (so a file inference would refuse
    fails here, not in the kernel)."""
    from kitlib.inference import ensemble_weights, fold_dirs  # inference imports torch
    from kitlib.postprocess import load_postprocess
    from kitlib.stacking import STACKING_FILE, load_stacker
    from kitlib.stages import TrainConfig

    top = ensemble or exp
    sources: list[tuple[str, Path]] = []
    if ensemble:
        sources.append((f"artifacts/{ensemble}/weights.json", root / ensemble / "weights.json"))
        if load_stacker(root / ensemble) is not None:  # the meta-model 30_ensemble chose, checked as inference reads it
            sources.append((f"artifacts/{ensemble}/{STACKING_FILE}", root / ensemble / STACKING_FILE))
    members = [name for name, weight in ensemble_weights(root, exp, ensemble) if weight > 0]

    def add_folds(name: str, fold_list: Sequence[int] | None) -> list[TrainConfig]:
        dirs = fold_dirs(root / name, fold_list)
        sources.extend((f"artifacts/{name}/{d.name}/{f}", d / f) for d in dirs for f in ("best.pt", "config.json"))
        return [TrainConfig.load(d / "config.json") for d in dirs]

    configs = [c for name in members for c in add_folds(name, folds if not ensemble else None)]
    kinds = {c.preset.name for c in configs}
    if len(kinds) != 1:
        raise ValueError(f"{root / top}: the folds' config.json name presets {sorted(kinds)}; expected one")
    preset = configs[0].preset
    post = root / top / "postprocess.json"
    gate = None
    if post.is_file():
        sources.append((f"artifacts/{top}/postprocess.json", post))
        postprocess = load_postprocess(root / top, preset)
        gate = postprocess.gate_exp if postprocess is not None else None
    if gate:
        bad = [p.fold for p in add_folds(gate, None) if p.model_preset.task != "presence"]
        if bad:
            raise ValueError(f"{post}: gate_exp {gate!r} is not a presence classifier (folds {bad}; 10_train with "
                             f"arch='classifier')")  # fmt: skip
    return sources, preset, gate


def _public(value: Any, root: Path) -> Any:
    """A JSON value as a public dataset may show it: an absolute path under the artifacts ``root`` becomes
    ``artifacts/...`` (the bundle's layout), one under the project root relative to it, any other its last name
    only; the artifacts root, project root and home folder inside longer text are replaced alike; ``run`` entries
    lose the host's details (``public_run_info``)."""
    if isinstance(value, dict):
        return {k: public_run_info(v) if k == "run" and isinstance(v, dict) else _public(v, root)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_public(v, root) for v in value]
    if not isinstance(value, str) or not value:
        return value
    if "\n" not in value and Path(value).is_absolute():
        for base, prefix in ((root, "artifacts/"), (project_root(), "")):
            rel = root_relative(value, base)
            if rel != value:
                return prefix + rel if rel != "." else (prefix.rstrip("/") or ".")
        return Path(value).name
    locals_ = {str(root): "artifacts", str(project_root()): ".", str(Path.home()): "~"}
    for local in sorted(locals_, key=len, reverse=True):
        value = value.replace(local, locals_[local])
    return value


def _store_public(
    sources: Sequence[tuple[str, Path]], root: Path, store: Path, files: dict, links: dict, weights: str, images: int
) -> dict:
    """``store_artifacts`` of ``sources`` with each ``config.json`` replaced by its public copy (``_public``; the
    local file is left as it is); returns its sizes and check, their paths made public too."""
    with tempfile.TemporaryDirectory(prefix="kitlib-public-") as folder:
        public = [(rel, write_json(Path(folder) / rel, _public(read_json(src), root)) if rel.endswith("/config.json")
                   else src) for rel, src in sources]  # fmt: skip
        sizes = store_artifacts(public, store, files, links, weights, check_in=root, check_images=images)
    return _public(sizes, root)


def _listed(files: Mapping[str, tuple[Path, str]]) -> list[dict]:
    """The manifest's ``files`` entries: path, bytes, sha256."""
    return [{"path": rel, "bytes": p.stat().st_size, "sha256": h} for rel, (p, h) in files.items()]


def _check_out(out: Path, marker: str) -> Path:
    """``out``, unless it exists and is not a folder this tool wrote (one holding ``marker``)."""
    if out.exists() and not (out / marker).is_file():
        raise FileExistsError(f"{out}: exists and is not a folder this tool wrote (no {marker}); choose --out")
    return out


def _replace_dir(tmp: Path, out: Path, marker: str) -> None:
    """Move the finished ``tmp`` onto ``out`` (``kitlib.io.replace_dir``); an existing ``out`` is replaced only
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
    weights: str = "fp16",
    channel: str = "dataset",
    model_slug: str | None = None,
    variation: str | None = None,
    check_images: int = HALF_CHECK_IMAGES,
) -> Bundle:
    """Write the dataset folder a Kaggle kernel needs to run ``40_submit`` offline (and, for the model channel, the
    model folder beside it).

    Holds: ``wheels/`` (kitlib built from ``repo``, and each of ``packages`` at its installed version), the
    artifacts inference reads (per fold ``best.pt`` + ``config.json`` of ``exp`` or of every experiment with a
    weight > 0 in ``<ensemble>/weights.json`` (every one when its stacker was chosen), and of ``postprocess.json``'s
    ``gate_exp``; ``weights.json`` and the chosen ``stacking.json``; ``postprocess.json``; never ``last.pt`` or OOF
    arrays), ``dataset-metadata.json`` and ``kit-bundle.json``. A file whose bytes are already in the bundle is stored
    once (``links`` in the manifest). The folder is written under a temporary name and renamed at the end: a killed
    run leaves no half-written bundle.

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
        weights: "fp16" (each ``best.pt`` stored with float16 parameters, ``kitlib.kaggle_weights.half_checkpoint``,
            and checked: ``check_half`` on ``check_images`` OOF images of the first fold) or "fp32" (as trained).
        channel: "dataset" (the artifacts in the dataset) or "model" (the artifacts in ``<out>-model/``, uploaded by
            ``kitlib.kaggle_models.upload_model`` as the Kaggle Model ``<user>/<model_slug>/pyTorch/<variation>``).
        model_slug: default ``kit-<preset>``; variation: default the experiment's (ensemble's) name as a slug.
        check_images: OOF images the fp16 check predicts (0: no check).
    Returns:
        ``Bundle`` (``summary()`` gives the size).
    Raises:
        FileNotFoundError: a missing experiment, fold file or weights.json (the message names it).
        ValueError: no exp/ensemble, a refused package, bad slug/title, no user, folds of several presets, an unknown
            ``weights`` or ``channel``, float16 probabilities beyond ``kitlib.kaggle_weights.HALF_TOLERANCE``.
        RuntimeError: a wheel that cannot be built or downloaded (the message names the package).
        FileExistsError: ``out_dir`` exists and is not a bundle.
    """
    if not exp and not ensemble:
        raise ValueError("bundle needs an experiment (--exp) or an ensemble (--ensemble)")
    if weights not in WEIGHTS or channel not in CHANNELS:
        raise ValueError(
            f"weights must be one of {WEIGHTS} and channel one of {CHANNELS}, got {weights!r}, {channel!r}"
        )
    name = ensemble or exp
    exp = exp or name
    slug = slug or f"kit-{_slugify(name)}-bundle"
    meta = dataset_metadata(user, slug, title, license_name)
    pins = resolve_packages(packages)
    root = project_path(artifacts_root)
    sources, preset, gate = _artifact_sources(root, exp, ensemble, folds)
    out = _check_out(Path(out_dir) if out_dir is not None else project_path("runs/kaggle") / slug, MANIFEST)
    handle = None
    if channel == "model":
        handle = model_handle(meta["id"].split("/")[0], model_slug or f"kit-{_slugify(preset.name)}",
                              variation or _slugify(name))  # fmt: skip
    model_out = _check_out(out.parent / f"{out.name}-model", MANIFEST) if handle else out
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out.parent, depth=0)  # a killed bundle's half-written folders
    tmp = temp_dir(out)
    store = temp_dir(model_out) if handle else tmp
    try:
        wheels = [_build_kitlib_wheel(_checkout(repo), tmp / "wheels")]
        for wheel in _fetch_wheels(pins, Path(wheel_cache) if wheel_cache else _default_cache()):
            wheels.append(Path(shutil.copy2(wheel, tmp / "wheels" / wheel.name)))
        files = {f"wheels/{w.name}": (w, _sha256(w)) for w in wheels}
        links: dict[str, str] = {}
        art, art_links = (files, links) if not handle else ({}, {})  # the artifacts' files: the dataset's or model's
        sizes = _store_public(sources, root, store, art, art_links, weights, check_images)
        preset_param = preset.name
        if preset.name not in PRESETS:  # a user's preset file: the resolved fields travel as artifacts/preset.yaml
            preset_param = PRESET_FILE
            path = store / "artifacts" / PRESET_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(preset_fields(preset), sort_keys=False), encoding="utf-8")
            art[f"artifacts/{PRESET_FILE}"] = (path, _sha256(path))

        model = None
        if handle:  # the model folder: the artifacts and their own manifest, which bundle_artifacts reads in the kernel
            model = {"handle": handle, "version": None, "path": model_out.name, "files": _listed(art),
                     "links": art_links}  # fmt: skip
            write_json(store / MANIFEST, {"kind": "kitlib-model", "model": handle, "dataset_id": meta["id"],
                                          "files": model["files"], "links": art_links, "weights": sizes,
                                          "run": public_run_info()})  # fmt: skip
        write_json(tmp / DATASET_METADATA, meta)
        write_json(tmp / MANIFEST, {
            "kind": "kitlib-bundle", "dataset_id": meta["id"], "preset": preset_param, "exp": exp, "ensemble": ensemble,
            "gate_exp": gate, "wheels": [w.name for w in wheels], "packages": pins, "files": _listed(files),
            "links": links, "channel": channel, "model": model, "weights": sizes, "run": public_run_info(),
        })  # fmt: skip
        if handle:
            _replace_dir(store, model_out, MANIFEST)
        _replace_dir(tmp, out, MANIFEST)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        raise
    return Bundle.read(out)
