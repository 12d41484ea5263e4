"""Prediction files: a fold's held-out probabilities written from batches, read back, gathered over the folds into
one array in ``folds.csv`` order, and blends of several experiments' arrays.

- ``write_predictions``: ``fold<k>/oof_probs.npy`` (+ ``oof_cls_probs.npy``) from ``kitlib.engine.predict``'s batches,
  through a memory-mapped ``.npy`` under a temporary name, DDP ranks writing their rows into one file;
- ``read_oof``: a fold's (or the gathered) ``oof_probs.npy`` as a memmap and the ``image_id`` of each row
  (``oof_ids.csv``);
- ``gather_oof`` / ``read_gathered``: every fold's OOF in one array, rows in ``folds.csv`` order:
  ``artifacts/<exp>/oof_probs.npy`` (the folds' dtype: (N, K, H, W) uint8 p x 255 at the scoring resolution for
  segmentation, (N, C) float16 for classification, (N, K) float32 for a presence classifier), ``oof_cls_probs.npy``
  (N, K) float32 when every fold has a classification head, and ``oof_ids.csv``;
- ``check_same_ids`` / ``write_blend``: experiments blended by ``30_ensemble``.

Arrays are copied a chunk of rows at a time, so a memmap of several GB (Understanding Clouds: 5546 x 4 x 350 x 525) is
never loaded whole; every file lands under a temporary name and is renamed into place (a killed run leaves no half
file).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kitlib._private import chunk_rows, listing, row_slices
from kitlib.ensemble import blend
from kitlib.folds import load_folds
from kitlib.io import atomic_path, project_path, temp_prefix, write_csv
from kitlib.runtime import all_reduce, barrier, dist_info

__all__ = [
    "check_same_ids", "gather_oof", "read_gathered", "read_oof", "record_predictions", "write_blend",
    "write_predictions",
]  # fmt: skip

log = logging.getLogger(__name__)

#: The files a trained fold's OOF consists of.
FOLD_FILES = ("oof_probs.npy", "oof_ids.csv")


def _quantize(probs: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return (probs * 255.0).round_().to(torch.uint8).numpy()
    return probs.numpy().astype(dtype)


def write_predictions(
    path: str | os.PathLike,
    batches: Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]],
    image_ids: list[str],
    dtype: str = "uint8",
    cls_path: str | os.PathLike | None = None,
) -> Path:
    """Write ``predict``'s batches into one ``.npy`` (rows in ``image_ids`` order) without holding them in memory.

    The array is a memory-mapped ``.npy`` written under a temporary name and renamed at the end (atomic). Under DDP
    every rank calls this with the same ``path`` and its own shard of batches: rank 0 creates the file, each rank
    writes its rows, and rank 0 renames it once all have finished.

    Args:
        path: destination, e.g. ``artifacts/<exp>/fold<k>/oof_probs.npy``.
        batches: ``predict(...)`` of a loader over the rows ``image_ids``.
        image_ids: every row's id in file order (the loader's dataset order).
        dtype: "uint8" (round(p x 255), 4x smaller; the Clouds OOF is 5546 x 4 x 350 x 525 = 4 GB as uint8) or
            "float16" / "float32".
        cls_path: where to write a classification head's probabilities (N, K) float32, when the model has one.
    Returns:
        ``path``.
    Raises:
        KeyError: a batch id that is not in ``image_ids``.
        ValueError: a row that no batch filled (the message names the ids).
    """
    np_dtype = np.dtype(dtype)
    path = Path(path)
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    info = dist_info()
    # one temporary name for every rank, with rank 0's pid: a kill leaves it to kitlib.io.remove_stale_temp
    owner = int(all_reduce(torch.tensor([os.getpid() if info.is_main else 0], dtype=torch.int64))[0])
    tmp = path.with_name(f"{temp_prefix(path, owner)}partial.npy")
    cls_tmp = None if cls_path is None else Path(cls_path).with_name(f"{temp_prefix(cls_path, owner)}partial.npy")
    first = next(batches, None)
    if first is None:
        raise ValueError(f"{path}: no batches to write")
    shape = (len(image_ids), *first[1].shape[1:])
    has_cls = first[2] is not None and cls_tmp is not None
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=shape).flush()
        if has_cls:
            np.lib.format.open_memmap(cls_tmp, mode="w+", dtype=np.float32, shape=(len(image_ids), first[2].shape[1]))
    barrier()
    try:
        _fill_predictions(path, tmp, cls_tmp, cls_path, has_cls, first, batches, image_ids, position, np_dtype)
    except BaseException:
        if info.is_main:
            for leftover in (tmp, cls_tmp):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
        raise
    return path


def _fill_predictions(path, tmp, cls_tmp, cls_path, has_cls, first, batches, image_ids, position, np_dtype) -> None:
    """``write_predictions``' rows into the memory-mapped ``tmp`` (and ``cls_tmp``), renamed onto the paths at the
    end by rank 0 once every rank has written its rows."""
    info = dist_info()
    out = np.load(tmp, mmap_mode="r+")
    cls_out = np.load(cls_tmp, mmap_mode="r+") if has_cls else None
    filled = np.zeros(len(image_ids), dtype=np.int64)
    for ids, probs, cls_probs in itertools.chain([first], batches):
        try:
            idx = np.array([position[i] for i in ids])
        except KeyError as e:
            raise KeyError(f"{path}: image {e.args[0]!r} is not among the rows to write") from None
        out[idx] = _quantize(probs, np_dtype)
        if cls_out is not None and cls_probs is not None:
            cls_out[idx] = cls_probs.numpy()
        filled[idx] = 1
    out.flush()
    if cls_out is not None:
        cls_out.flush()
    out = cls_out = None  # close the memory maps before the rename
    filled = all_reduce(torch.from_numpy(filled)).numpy()
    if info.is_main:
        missing = [image_ids[i] for i in np.flatnonzero(filled == 0)]
        if missing:
            raise ValueError(f"{path}: {len(missing)} rows were not predicted: {missing[:5]}")
        os.replace(tmp, path)
        if has_cls:
            os.replace(cls_tmp, cls_path)
    barrier()


def record_predictions(
    batches: Iterable[tuple[list[str], Any, Any]], path: str | os.PathLike, image_ids: Sequence[str], dtype: str
) -> Iterator[tuple[list[str], Any, Any]]:
    """Pass ``batches`` through unchanged while writing their probabilities into ``path`` (+ ``<stem>_ids.csv``
    beside it, ``test_ids.csv`` for ``test_probs.npy``): ``40_submit -p save_probs true``, the test probabilities
    a submission was decoded from, which ``kitlib.train_rows`` turns into pseudo-labels.

    Streamed into a memory-mapped ``.npy`` under a temporary name, renamed into place once every row was written
    (a pass that stops early leaves no file). Same formats as the OOF: (n, K, H, W) uint8 round(p x 255) for
    segmentation, (n, C) float16 for classification.

    Args:
        batches: ``kitlib.inference.predict_test``'s ``(image_ids, probs, cls_probs)``.
        path: e.g. ``artifacts/<exp or ensemble>/test_probs.npy``.
        image_ids: every row's id in file order (the test table's).
        dtype: "uint8" or "float16" / "float32".
    Yields:
        The batches as they came.
    Raises:
        ValueError: a batch of images of different sizes (a preset without a submission size: no common array), a
            row no batch filled; KeyError: a batch id not in ``image_ids``.
    """
    path, np_dtype = Path(path), np.dtype(dtype)
    position = {str(image_id): i for i, image_id in enumerate(image_ids)}
    out, filled = None, np.zeros(len(position), dtype=bool)
    with atomic_path(path) as tmp:
        for ids, probs, cls_probs in batches:
            if isinstance(probs, list):
                raise ValueError(f"{path}: the test images differ in size and the preset has no submission size: "
                                 "their probabilities do not fit one array (save_probs)")  # fmt: skip
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(len(position), *probs.shape[1:]))
            try:
                idx = np.array([position[str(i)] for i in ids])
            except KeyError as e:
                raise KeyError(f"{path}: image {e.args[0]!r} is not among the rows to write") from None
            out[idx] = _quantize(torch.as_tensor(probs), np_dtype)
            filled[idx] = True
            yield ids, probs, cls_probs
        if out is None or not filled.all():
            raise ValueError(f"{path}: {int((~filled).sum())} rows were not predicted: "
                             f"{listing([i for i, f in zip(position, filled, strict=True) if not f])}")  # fmt: skip
        out.flush()
        out = None  # close the memory map before the rename
        write_csv(path.with_name(f"{path.stem.removesuffix('_probs')}_ids.csv"),
                  pd.DataFrame({"image_id": list(position)}))  # fmt: skip


def read_oof(fold_dir: str | os.PathLike, mmap: bool = True) -> tuple[np.ndarray, list[str]]:
    """A fold's ``oof_probs.npy`` (memory-mapped) and the image ids of its rows."""
    fold_dir = Path(fold_dir)
    probs = np.load(fold_dir / "oof_probs.npy", mmap_mode="r" if mmap else None)
    ids = pd.read_csv(fold_dir / "oof_ids.csv", dtype=str, keep_default_na=False)["image_id"].tolist()
    if len(ids) != len(probs):
        raise ValueError(f"{fold_dir}: oof_probs.npy has {len(probs)} rows, oof_ids.csv {len(ids)}")
    return probs, ids


def gather_oof(exp_dir: str | os.PathLike, chunk_size: int | None = None) -> Path:
    """Gather every fold's OOF into ``artifacts/<exp>/oof_probs.npy`` (+ ``oof_cls_probs.npy``, ``oof_ids.csv``).

    Rows follow ``folds.csv``. The array is written through a memmap to a temporary name and moved into place
    (``os.replace``), so a killed run leaves no half file and memory stays at one chunk.

    Args:
        exp_dir: ``artifacts/<exp>/`` with ``folds.csv`` and ``fold<k>/oof_probs.npy`` + ``oof_ids.csv`` for every k.
        chunk_size: rows copied at a time; None for about 16 MB.
    Returns:
        Path of ``oof_probs.npy``: (N, K, H, W) uint8 / float (segmentation) or (N, C) float16 (classification), the
        folds' dtype and per-row shape.
    Raises:
        FileNotFoundError: no ``folds.csv``; folds without OOF files (all named, with the 10_train command).
        ValueError: folds whose per-row shapes or dtypes differ; ids of ``folds.csv`` that no fold predicted, ids a
            fold predicted that ``folds.csv`` puts in another fold or does not hold, ids predicted twice (named).
    """
    exp_dir = project_path(exp_dir)
    folds = load_folds(exp_dir / "folds.csv")
    ids = folds["image_id"].astype(str).tolist()
    fold_of = dict(zip(ids, folds["fold"].astype(int), strict=True))
    position = {image_id: i for i, image_id in enumerate(ids)}
    n_folds = int(folds["fold"].max()) + 1
    missing = [k for k in range(n_folds) if not all((exp_dir / f"fold{k}" / f).is_file() for f in FOLD_FILES)]
    if missing:
        raise FileNotFoundError(
            f"{exp_dir}: fold(s) {missing} of {n_folds} have no {' + '.join(FOLD_FILES)}; "
            f"run notebooks/10_train.py with fold={missing[0]} (./run_all.sh runs every fold)"
        )
    parts = [read_oof(exp_dir / f"fold{k}") for k in range(n_folds)]
    first = parts[0][0]
    for k, (probs, _) in enumerate(parts):
        if probs.shape[1:] != first.shape[1:] or probs.dtype != first.dtype:
            raise ValueError(
                f"{exp_dir}/fold{k}/oof_probs.npy is {probs.dtype} {probs.shape[1:]} per row, "
                f"fold0's {first.dtype} {first.shape[1:]}"
            )
    rows = []
    seen: dict[str, int] = {}
    for k, (_, fold_ids) in enumerate(parts):
        unknown = [i for i in fold_ids if i not in position]
        if unknown:
            raise ValueError(f"{exp_dir}/fold{k}/oof_ids.csv: id(s) not in folds.csv: {listing(unknown)}")
        wrong = [f"{i} (fold {fold_of[i]})" for i in fold_ids if fold_of[i] != k]
        if wrong:
            raise ValueError(
                f"{exp_dir}/fold{k}/oof_ids.csv: id(s) that folds.csv puts in other folds: {listing(wrong)}"
            )
        twice = [i for i in fold_ids if i in seen]
        if twice:
            raise ValueError(f"{exp_dir}/fold{k}/oof_ids.csv: id(s) predicted twice: {listing(twice)}")
        seen.update(dict.fromkeys(fold_ids, k))
        rows.append(np.array([position[i] for i in fold_ids], dtype=np.int64))
    absent = [i for i in ids if i not in seen]
    if absent:
        raise ValueError(f"{exp_dir}: {len(absent)} id(s) of folds.csv have no OOF row in any fold: {listing(absent)}")

    out_path = exp_dir / "oof_probs.npy"
    _scatter(out_path, [p for p, _ in parts], rows, len(ids), chunk_size)
    cls_paths = [exp_dir / f"fold{k}" / "oof_cls_probs.npy" for k in range(n_folds)]
    if all(p.is_file() for p in cls_paths):
        _scatter(exp_dir / "oof_cls_probs.npy", [np.load(p, mmap_mode="r") for p in cls_paths], rows, len(ids), None)
    else:
        (exp_dir / "oof_cls_probs.npy").unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    write_csv(exp_dir / "oof_ids.csv", pd.DataFrame({"image_id": ids}))
    log.info("gathered %d folds of %s into %s", n_folds, exp_dir.name, out_path)
    return out_path


def _scatter(
    path: Path, parts: Sequence[np.ndarray], rows: Sequence[np.ndarray], n: int, chunk_size: int | None
) -> None:
    """Write ``parts[k]`` into rows ``rows[k]`` of a new (n, ...) .npy at ``path``, atomically, a chunk at a time."""
    first = parts[0]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(n, *first.shape[1:]))
        for part, where in zip(parts, rows, strict=True):
            if len(part) != len(where):
                raise ValueError(f"{path.name}: a fold has {len(part)} rows for {len(where)} ids")
            for sl in row_slices(len(part), chunk_rows(part.shape, part.dtype.itemsize, chunk_size)):
                out[where[sl]] = np.asarray(part[sl])
        out.flush()
        del out


def read_gathered(exp_dir: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The gathered OOF of an experiment: (oof_probs memmap, image ids, oof_cls_probs memmap or None).

    Raises:
        FileNotFoundError: not gathered yet (run ``notebooks/20_oof.py``).
    """
    exp_dir = project_path(exp_dir)
    if not (exp_dir / "oof_probs.npy").is_file():
        raise FileNotFoundError(f"{exp_dir / 'oof_probs.npy'}: not gathered; run notebooks/20_oof.py first")
    probs, ids = read_oof(exp_dir)
    cls_path = exp_dir / "oof_cls_probs.npy"
    return probs, ids, np.load(cls_path, mmap_mode="r") if cls_path.is_file() else None


def check_same_ids(ids_by_exp: dict[str, Sequence[str]]) -> list[str]:
    """The common row ids of several experiments' gathered OOFs, which must be equal and in the same order.

    Raises:
        ValueError: an experiment whose ids differ from the first one's (count, ids missing or extra, or order).
    """
    names = list(ids_by_exp)
    ref = list(ids_by_exp[names[0]])
    for name in names[1:]:
        ids = list(ids_by_exp[name])
        if ids == ref:
            continue
        extra, absent = sorted(set(ids) - set(ref)), sorted(set(ref) - set(ids))
        detail = (f"{len(absent)} missing: {listing(absent)}; {len(extra)} extra: {listing(extra)}"
                  if extra or absent else "same ids in another order")  # fmt: skip
        raise ValueError(
            f"experiments {names[0]!r} and {name!r} have different OOF rows ({len(ref)} vs {len(ids)}; {detail}); "
            "blend only experiments trained on the same folds.csv"
        )
    return ref


def write_blend(
    oofs: dict[str, np.ndarray], weights: Sequence[float], out_dir: str | os.PathLike, ids: Sequence[str]
) -> np.ndarray:
    """The weighted blend of gathered OOFs as ``out_dir/oof_probs.npy`` (+ ``oof_ids.csv``), streamed into a memmap and
    moved into place atomically.

    Returns:
        The file as a read-only memmap: uint8 (p x 255) when every input is uint8, else float32; rows as ``ids``.
    """
    out_dir = project_path(out_dir)
    first = next(iter(oofs.values()))
    dtype = np.uint8 if all(a.dtype == np.uint8 for a in oofs.values()) else np.float32
    path = out_dir / "oof_probs.npy"
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=first.shape)
        blend(oofs, np.asarray(weights, dtype=np.float64), out_dtype=dtype, out=out)
        out.flush()
        del out
    write_csv(out_dir / "oof_ids.csv", pd.DataFrame({"image_id": list(ids)}))
    return np.load(path, mmap_mode="r")
