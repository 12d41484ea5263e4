"""Artifact I/O: atomic writes, JSON / CSV / .npy files, provenance of a run, paths from the repository root.

Every artifact the kit writes goes through these helpers: the bytes land under a temporary name in the
same folder and are moved into place with ``os.replace``, so a killed run leaves either the old file or
the new one, never half a file. A kill does leave the temporary file: its name, ``.<name>.kit-tmp-<pid>-<random>``
(+ the suffix), is the kit's own and carries the writer's process id, so ``remove_stale_temp`` (each stage's
``StageConfig.save``) removes those whose process is gone and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TEMP_MARK",
    "atomic_path",
    "temp_dir",
    "temp_prefix",
    "remove_stale_temp",
    "pid_alive",
    "atomic_write_bytes",
    "atomic_write_text",
    "replace_dir",
    "write_json",
    "read_json",
    "save_npy",
    "read_torch",
    "write_csv",
    "FileKey",
    "file_key",
    "read_file_cache",
    "write_file_cache",
    "run_info",
    "public_run_info",
    "root_relative",
    "json_default",
    "project_root",
    "project_path",
]

log = logging.getLogger(__name__)

_VERSIONED_PACKAGES = (
    "kitlib", "torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations",
    "numpy", "pandas", "opencv-python-headless", "scipy",
)  # fmt: skip


#: What marks a temporary name as the kit's: ``.<name>.kit-tmp-<pid>-<random><suffix>`` (``temp_prefix``).
TEMP_MARK = ".kit-tmp-"
_TEMP_NAME = re.compile(rf"^\..+{re.escape(TEMP_MARK)}(\d+)-[^/]*$")


def temp_prefix(path: str | os.PathLike, pid: int | None = None) -> str:
    """The start of a temporary name beside ``path``: ``.<name>.kit-tmp-<pid>-`` (``pid`` default this process's);
    ``tempfile.mkstemp`` / ``mkdtemp`` add the random part. ``remove_stale_temp`` recognises such names."""
    return f".{Path(path).name}{TEMP_MARK}{os.getpid() if pid is None else int(pid)}-"


def temp_dir(dest: str | os.PathLike) -> Path:
    """A new empty folder beside ``dest`` to build it in (then ``replace_dir``), named ``temp_prefix(dest)...``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(dest), dir=dest.parent))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (``os.kill(pid, 0)``; another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temp(folder: str | os.PathLike, depth: int = 1) -> list[Path]:
    """Remove the kit's temporary files and folders that interrupted writes left in ``folder`` and its subfolders
    down to ``depth`` levels; one warning line lists them.

    Only names the kit makes (``.<name>.kit-tmp-<pid>-...``, ``temp_prefix``) are candidates, and only those whose
    writer ``pid`` no longer runs on this host (``pid_alive``; this process's own count as running: a write may be
    under way in another thread). A pid that a new process has taken keeps its file until a later sweep. Processes
    on other hosts writing into the same folder are not seen: one artifacts folder is written from one host (the
    kit's DDP runs on one).

    Args:
        folder: an artifact folder (a stage's); absent: nothing to do.
        depth: subfolder levels searched below ``folder`` (1: ``fold<k>/`` of an experiment, ``topk/`` of a fold).
    Returns:
        The paths removed.
    """
    folder, removed, size = Path(folder), [], 0
    level, todo = 0, [folder] if folder.is_dir() else []
    while todo and level <= depth:
        below = []
        for current in todo:
            try:
                entries = list(os.scandir(current))
            except OSError:  # an unreadable folder: not ours to clean (best effort, never a stage's failure)
                continue
            for entry in entries:
                match = _TEMP_NAME.match(entry.name)
                try:
                    if match and (int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1)))):
                        path = Path(entry.path)
                        if entry.is_dir(follow_symlinks=False):
                            size += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                            shutil.rmtree(path)
                        else:
                            size += entry.stat(follow_symlinks=False).st_size
                            path.unlink()
                        removed.append(path)
                    elif entry.is_dir(follow_symlinks=False) and not match:
                        below.append(entry.path)
                except OSError as e:  # read-only, or gone meanwhile
                    log.info("could not remove %s: %s", entry.path, e)
        todo, level = below, level + 1
    if removed:
        shown = ", ".join(str(p.relative_to(folder)) for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
        log.warning("removed %d temporary file(s) of interrupted writes in %s (%.1f MB): %s", len(removed), folder,
                    size / 1e6, shown)  # fmt: skip
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` atomically.

    Use it for writers that want a file name (``torch.save``, ``np.save``, ``fig.savefig``). On an
    exception the temporary file is removed and ``path`` is untouched; a kill leaves it, named
    ``.<name>.kit-tmp-<pid>-<random><suffix>`` for ``remove_stale_temp``. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(tmp_dir: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a finished folder ``tmp_dir`` (built beside ``dest``, same filesystem) onto ``dest``: an existing ``dest``
    is renamed aside first and deleted after, so a reader sees the old folder or the new one, never a mix. The new
    folder gets the usual permissions (``tempfile.mkdtemp`` makes it 0700)."""
    tmp_dir, dest = Path(tmp_dir), Path(dest)
    os.chmod(tmp_dir, 0o777 & ~_umask())
    old = None
    if dest.exists():
        old = dest.parent / f"{temp_prefix(dest)}old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp_dir, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``). Returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for what artifacts hold besides JSON types: numpy scalars and arrays, paths, sets
    and tuples. Raises TypeError for anything else."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars/arrays and paths are converted)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not valid JSON (the message names the file, line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` atomically (no pickles). Returns the path."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def read_torch(path: str | os.PathLike, what: str = "torch file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with the file named when it cannot be read.

    A truncated or corrupt file (disk full, an interrupted copy: an atomic write cannot leave one) makes torch raise
    one of several types without the path ("failed finding central directory", EOFError, OSError, pickle errors).

    Args:
        path: a ``torch.save`` file; what: how the message calls it ("model checkpoint").
    Raises:
        FileNotFoundError: no such file (named). ValueError: the file is not readable (named, with torch's error).
    """
    import torch  # here: kitlib.io is imported by modules that never need torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle/OS errors come in many types
        raise ValueError(f"{path}: not a readable {what}, truncated or corrupt ({type(e).__name__}: {e})") from e


def write_csv(path: str | os.PathLike, df, **to_csv_kwargs) -> Path:
    """``DataFrame.to_csv`` atomically; ``index=False`` unless given. Returns the path."""
    to_csv_kwargs.setdefault("index", False)
    return atomic_write_text(path, df.to_csv(**to_csv_kwargs))


#: (resolved path, size in bytes, ``st_mtime_ns``): the key of a file's row in a per-file cache.
FileKey = tuple[str, int, int]
_FILE_KEY_COLUMNS = ["path", "size", "mtime_ns"]


def file_key(path: str | os.PathLike, what: str = "file") -> FileKey:
    """The key of a file's row in a per-file cache (``read_file_cache``): a changed file (its size or mtime) has a new
    key, so what was cached for it is not used. ``what`` names the file in the error ("image file").

    Raises:
        FileNotFoundError: no such file (the message names it: "<what> not found: <path>").
    """
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    return str(resolved), int(st.st_size), int(st.st_mtime_ns)


def read_file_cache(cache_path: str | os.PathLike | None, values: Mapping[str, Callable[[str], Any]]) -> dict:
    """The rows of a per-file cache CSV, ``path,size,mtime_ns`` then ``values``' columns (the pHash cache of
    ``kitlib.near_duplicates``, the decode check's of ``kitlib.images``).

    Args:
        cache_path: the CSV; None, or a file that does not exist: no rows.
        values: column -> the conversion of its text (``int``, ``str``).
    Returns:
        ``{FileKey: (value, ...)}``; {} for an unreadable cache (logged: it only costs computing the values again).
    """
    import pandas as pd

    if cache_path is None or not Path(cache_path).is_file():
        return {}
    try:
        table = pd.read_csv(cache_path, dtype=str, keep_default_na=False)
        rows = table[[*_FILE_KEY_COLUMNS, *values]].itertuples(index=False)
        convert = list(values.values())
        return {(p, int(s), int(m)): tuple(f(v) for f, v in zip(convert, vs, strict=True)) for p, s, m, *vs in rows}
    except (ValueError, KeyError, pd.errors.ParserError) as e:
        log.warning("%s: unreadable cache, its values are computed again (%s)", cache_path, e)
        return {}


def write_file_cache(cache_path: str | os.PathLike, known: Mapping[FileKey, tuple], keys: Sequence[FileKey],
                     values: Sequence[str]) -> Path:  # fmt: skip
    """Write a per-file cache CSV atomically: for the files of ``keys`` (this run's, at their current stat) their row
    where ``known`` has one (a file that failed has none, so it is computed again next time), and the rows ``known``
    holds of other files, one per path. Returns the path."""
    import pandas as pd

    checked = {k[0] for k in keys}
    kept = {k[0]: k for k in known if k[0] not in checked}
    kept.update({k[0]: k for k in keys if k in known})
    rows = [(*k, *known[k]) for k in sorted(kept.values())]
    return write_csv(cache_path, pd.DataFrame(rows, columns=[*_FILE_KEY_COLUMNS, *values]))


def _git_commit(start: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=start, capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def run_info() -> dict[str, Any]:
    """Provenance of a run: Python, platform, package versions, git commit of the kit.

    Reads package metadata only (no heavy imports). ``git_commit`` is None outside a git checkout and ends
    with ``-dirty`` when tracked files have uncommitted changes.
    """
    versions: dict[str, str | None] = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(Path(__file__).resolve().parent),
    }


def public_run_info(info: dict[str, Any] | None = None) -> dict[str, Any]:
    """``run_info`` (default: this run's) without the host's details, for what a bundle publishes: ``platform``
    keeps the system's name only ("Linux"; ``platform.platform()`` holds the kernel release and build)."""
    info = dict(run_info() if info is None else info)
    if isinstance(info.get("platform"), str):
        info["platform"] = info["platform"].split("-")[0]
    return {k: info[k] for k in ("python", "platform", "versions", "git_commit") if k in info}


def root_relative(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``root`` (default ``project_root()``) when it is an absolute path under it, else as given:
    how a saved config records a folder, so that ``project_path`` resolves it in another checkout (a Kaggle kernel,
    a colleague's clone). "" stays ""."""
    text = str(path)
    p = Path(text).expanduser() if text else Path()
    if not text or not p.is_absolute():
        return text
    base = Path(root).expanduser().resolve() if root is not None else project_root()
    for candidate in (p, p.resolve()):
        if candidate.is_relative_to(base):
            return candidate.relative_to(base).as_posix() or "."
    return text


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder that relative notebook paths are resolved against.

    ``KIT_ROOT`` when set; else the nearest folder at or above ``start`` (default: the working folder) that
    holds both ``notebooks/`` and ``run_all.sh`` (the kit's checkout, so a notebook opened in Jupyter from
    ``notebooks/`` and one run by papermill from the repository root agree); else the working folder.
    """
    if os.environ.get("KIT_ROOT"):
        return Path(os.environ["KIT_ROOT"]).expanduser().resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "run_all.sh").is_file():
            return folder
    return here


def project_path(path: str | os.PathLike) -> Path:
    """An absolute path: ``path`` itself when absolute, else ``project_root() / path``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path
