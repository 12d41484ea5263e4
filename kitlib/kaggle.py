"""Kaggle code competitions, inside the kernel: where Kaggle mounted the competition and the attached bundle, and
where the submission goes.

Kaggle runs a code competition's notebook with the internet off: kitlib, the packages the Kaggle image lacks and the
trained weights arrive as an attached dataset (a bundle, ``kitlib.kaggle_bundle``) that the kernel's first cell
installs (``kitlib.kaggle_install_cell``); ``notebooks/40_submit.py`` then reads its inputs through this module.
Kaggle mounts the competition and each attached dataset under ``/kaggle/input``, at a depth that has changed over the
years (``input/<slug>``, ``input/competitions/<slug>``, ``input/datasets/<user>/<slug>``): ``find_input`` globs those.
An attached Kaggle Model (the bundle's model channel, ``kitlib.kaggle_models``) is mounted deeper, at
``input/<model>/<framework>/<variation>/<version>`` (or under ``models/<owner>/``), the framework in lower case.
``KIT_KAGGLE_ROOT`` replaces ``/kaggle`` (tests, a local dry run). kitlib writes into ``working_dir()`` only; ``input``
is read-only there.

The tool that builds and sends all this, ``python -m kitlib.kaggle bundle|kernel|estimate|push|logs|submit|score|loop``,
is the build side: ``kitlib.kaggle_bundle`` (the dataset), ``kitlib.kaggle_kernel`` (the notebook and its metadata),
``kitlib.kaggle_estimate`` (will it fit the time limit), ``kitlib.kaggle_push`` (the kaggle CLI),
``kitlib.kaggle_submit`` (following the kernel, submitting, the score and its record) and ``kitlib.kaggle_loop`` (the
command line).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
from pathlib import Path

from kitlib._private import listing
from kitlib.io import read_json

__all__ = [
    "MANIFEST",
    "bundle_artifacts",
    "find_input",
    "input_patterns",
    "kaggle_root",
    "model_handle",
    "parse_model_handle",
    "working_dir",
]

log = logging.getLogger(__name__)

#: The manifest of a bundle (files, sha256, sizes, links), written by ``kitlib.kaggle_bundle.bundle``.
MANIFEST = "kit-bundle.json"
_SLUG_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MODEL_PART = re.compile(r"[a-z0-9][a-z0-9_-]{0,49}")  # a Kaggle model or variation slug, as kitlib writes them


def kaggle_root() -> Path:
    """``$KIT_KAGGLE_ROOT`` when set, else ``/kaggle`` (a Kaggle kernel's ``input/`` and ``working/``)."""
    return Path(os.environ.get("KIT_KAGGLE_ROOT") or "/kaggle").expanduser()


def working_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/working`` (``/kaggle/working``: the kernel's output folder, where ``submission.csv`` goes).

    Args:
        root: the Kaggle root; None: ``kaggle_root()``.
    """
    return Path(root if root is not None else kaggle_root()) / "working"


def parse_model_handle(handle: str) -> tuple[str, str, str, str, int | None]:
    """``(owner, model, framework, variation, version)`` of a Kaggle Model handle
    ``owner/model/framework/variation[/version]`` (version None when absent).

    Raises:
        ValueError: not such a handle (4 or 5 slug parts, the version a positive integer).
    """
    parts = handle.strip("/").split("/")
    version = None
    if len(parts) == 5 and parts[4].isdigit() and int(parts[4]) > 0:
        version = int(parts.pop())
    if len(parts) != 4 or not all(_SLUG_PART.fullmatch(p) for p in parts):
        raise ValueError(
            f"not a Kaggle model handle: {handle!r} (expected 'owner/model/framework/variation[/version]')"
        )
    owner, model, framework, variation = parts
    return owner, model, framework, variation, version


def model_handle(owner: str, model: str, variation: str, framework: str = "pyTorch", version: int | None = None) -> str:
    """``owner/model/framework/variation[/version]``, each part checked.

    Raises:
        ValueError: ``model`` or ``variation`` is not 1-50 of ``[a-z0-9_-]`` starting with a letter or digit, or the
            whole is not a handle (``parse_model_handle``).
    """
    for what, slug in (("model", model), ("variation", variation)):
        if not _MODEL_PART.fullmatch(slug):
            raise ValueError(f"Kaggle {what} slug {slug!r}: needs 1 to 50 lowercase letters, digits, '-' or '_'")
    handle = f"{owner}/{model}/{framework}/{variation}" + (f"/{version}" if version is not None else "")
    parse_model_handle(handle)
    return handle


def _any_case(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else glob.escape(c) for c in text)


def input_patterns(slug: str) -> list[str]:
    """Glob patterns below ``input/`` for a slug, a dataset id or a model handle, most specific first
    (``find_input``, the install cell).

    A model handle ``owner/model/framework/variation[/version]`` gives ``model/framework/variation/version`` at
    every depth (``*/owner/...``, ``owner/...``, ``...``, ``*/...``, ``*/*/...``), the framework in any case (Kaggle
    mounts ``pyTorch`` as ``pytorch``) and the version ``*`` when the handle has none.

    Raises:
        ValueError: not a slug, ``user/slug`` or model handle.
    """
    parts = slug.strip("/").split("/")
    if len(parts) in (4, 5):
        owner, model, framework, variation, version = parse_model_handle(slug)
        tail = f"{model}/{_any_case(framework)}/{variation}/{version or '*'}"
        return [f"*/{owner}/{tail}", f"{owner}/{tail}", tail, f"*/{tail}", f"*/*/{tail}"]
    if not 1 <= len(parts) <= 2 or not all(_SLUG_PART.fullmatch(p) for p in parts):
        raise ValueError(f"not a Kaggle slug: {slug!r} (expected 'slug', 'user/slug' or a model handle)")
    name = parts[-1]
    owner_patterns = [slug.strip("/"), f"*/{slug.strip('/')}"] if len(parts) == 2 else []
    return [*owner_patterns, name, f"*/{name}", f"*/*/{name}"]


def _newest_version(hits: list[Path]) -> list[Path]:
    """Of several versions of one model variation (``.../<variation>/<version>``), the highest; else ``hits``."""
    if len(hits) > 1 and len({h.parent for h in hits}) == 1 and all(h.name.isdigit() for h in hits):
        return [max(hits, key=lambda h: int(h.name))]
    return hits


def find_input(slug: str, root: str | os.PathLike | None = None) -> Path:
    """The folder where Kaggle mounted a competition, an attached dataset or an attached model.

    Looks under ``<root>/input`` for ``<slug>``, ``*/<slug>`` and ``*/*/<slug>`` (for ``user/slug`` first
    ``user/slug`` and ``*/user/slug``, then the same with the last component): Kaggle has mounted inputs at each of
    these depths (``input/<slug>``, ``input/competitions/<slug>``, ``input/datasets/<user>/<slug>``). A model handle
    is looked for at ``<model>/<framework>/<variation>/<version>`` and those depths (``input_patterns``); without a
    version, the highest version mounted.

    Args:
        slug: a competition slug (``understanding_cloud_organization``), a dataset id (``user/slug``) or a model
            handle (``user/model/pyTorch/variation[/version]``).
        root: the Kaggle root; None: ``$KIT_KAGGLE_ROOT`` or ``/kaggle``.
    Returns:
        The folder (the first pattern that matches).
    Raises:
        FileNotFoundError: nothing matches; the message lists the patterns and what ``input/`` holds.
        ValueError: ``slug`` is not a slug, or one pattern matches several folders (the message names them).
    """
    base = Path(root if root is not None else kaggle_root()) / "input"
    patterns = input_patterns(slug)
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(base)), pattern)) if os.path.isdir(p))
        hits = _newest_version(hits) if slug.count("/") >= 3 else hits
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

    Finds the dataset (or, for the model channel, the model version) with ``find_input``, its manifest
    ``kit-bundle.json`` and its artifacts (Kaggle unpacks the uploaded ``artifacts.zip``, or a model's
    ``archive.zip``; the files are looked for up to three levels down). When the bundle stored duplicate
    files once (``links``), the tree is rebuilt as symbolic links in a temporary folder (``/kaggle/input`` is
    read-only).

    Args:
        slug: the bundle's dataset id ``user/slug`` (or its slug), or its model handle
            ``user/model/pyTorch/variation[/version]``.
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


if __name__ == "__main__":  # the command line: python -m kitlib.kaggle bundle|kernel|estimate|push|logs|submit|...
    import sys

    from kitlib.kaggle_loop import main

    sys.exit(main())
