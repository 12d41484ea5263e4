"""run_all.sh's one line per notebook: the headline of what a stage wrote, read back from its artifacts (never scraped
from its output), and the error of a notebook that failed, read from the executed notebook.

- ``Artifacts``: where one notebook run wrote its files (``artifacts_root``, ``exp``, ``fold``, ``ensemble_name``,
  ``submission_path`` of the parameters run_all.sh gave it, ``runs/<exp>/.params/<stem>.yaml``), the same folders as
  the stage configs' ``exp_dir`` / ``fold_dir`` / ``out_dir`` / ``submission_file`` (``kitlib.stages``; building the
  config itself imports torch, seconds per notebook, so the report reads the five names; tests/test_run_report.py
  checks that both agree).
- ``headline(stage, artifacts)``: 00_eda images and folds; 10_train the fold's held-out score (``done.json``); 20_oof
  the CV raw and post-processed (``cv.json``); 30_ensemble the blend's CV and weights (``cv.json``, ``weights.json``);
  40_submit the rows written (the submission CSV) and the test probabilities with ``save_probs``.
- ``notebook_error(path)``: the ``ename: evalue`` of the cell that raised and its ``In [n]``.
- ``python -m kitlib.run_report headline STEM PARAMS.yaml`` / ``error NOTEBOOK.ipynb``: one line each, for run_all.sh.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitlib.io import project_path, read_json

__all__ = ["Artifacts", "STAGES", "headline", "notebook_error", "stage_of"]

#: The notebooks run_all.sh runs, in order; a notebook output stem (``10_train_fold3``, ``40_submit_probs``) starts
#: with one of them.
STAGES = ("00_eda", "10_train", "20_oof", "30_ensemble", "40_submit")


def stage_of(stem: str) -> str:
    """The stage of an executed notebook's stem: ``"10_train_fold3"`` -> ``"10_train"``.

    Raises:
        ValueError: a stem that starts with no stage of ``STAGES``.
    """
    for stage in STAGES:
        if stem == stage or stem.startswith(stage + "_"):
            return stage
    raise ValueError(f"{stem!r} is not the output of a notebook of run_all.sh ({', '.join(STAGES)})")


@dataclass(frozen=True)
class Artifacts:
    """Where one notebook run wrote its files.

    Attributes:
        exp_dir: ``<artifacts_root>/<exp>/`` (00_eda, 20_oof).
        fold_dir: ``<exp_dir>/fold<k>/`` of a 10_train run, else None.
        out_dir: ``<artifacts_root>/<ensemble_name>/`` of a 30_ensemble run, else None.
        submission_file: the CSV of a 40_submit run, else None.
        source_dir: ``<artifacts_root>/<ensemble or exp>/`` of a 40_submit run (its ``test_probs.npy``), else None.
        save_probs: a 40_submit run that also wrote the test probabilities.
    """

    exp_dir: Path
    fold_dir: Path | None = None
    out_dir: Path | None = None
    submission_file: Path | None = None
    source_dir: Path | None = None
    save_probs: bool = False

    @classmethod
    def from_params(cls, stage: str, params: dict[str, Any]) -> Artifacts:
        """The folders of ``stage`` run with ``params`` (the notebook's typed parameters, as papermill got them;
        relative paths from the repository root, as the stage configs take them).

        Raises:
            KeyError: a parameter the stage's folders need is absent (the message names it and the stage).
        """
        try:
            root = project_path(params.get("artifacts_root", "artifacts"))
            exp = str(params["exp"])
            if stage == "10_train":
                return cls(root / exp, fold_dir=root / exp / f"fold{params['fold']}")
            if stage == "30_ensemble":
                return cls(root / exp, out_dir=root / str(params["ensemble_name"]))
            if stage == "40_submit":
                csv_path = project_path(params.get("submission_path") or f"runs/{exp}/submission.csv")
                source = root / (params.get("ensemble") or exp)
                return cls(root / exp, submission_file=csv_path, source_dir=source,
                           save_probs=bool(params.get("save_probs")))  # fmt: skip
        except KeyError as e:
            raise KeyError(
                f"{stage}: parameter {e.args[0]!r} is missing; the report cannot find its artifacts"
            ) from None
        return cls(root / exp)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it (run_all.sh runs in the repository)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cv(cv: dict[str, Any]) -> str:
    """``dice 0.5896, post-processed 0.8415 (threshold)`` from a ``cv.json`` (``kitlib.oof.save_cv``); a classifier's
    ``postprocess`` "none" gives ``accuracy 0.8750``."""
    text = f"{cv.get('metric', 'score')} {_score(cv.get('cv'))}"
    if cv.get("cv_postprocessed") is not None and cv.get("postprocess") != "none":  # "none": the raw CV again
        text += f", post-processed {_score(cv['cv_postprocessed'])}"
        if cv.get("postprocess"):
            text += f" ({cv['postprocess']})"
    return text


def _eda(a: Artifacts) -> str:
    with open(a.exp_dir / "folds.csv", newline="", encoding="utf-8") as f:
        sizes = Counter(row["fold"] for row in csv.DictReader(f))
    held_out = {k: v for k, v in sizes.items() if int(k) >= 0}
    counts = ", ".join(str(held_out[k]) for k in sorted(held_out, key=int))
    text = f"{sum(sizes.values())} images, {len(held_out)} folds ({counts})"
    duplicates = a.exp_dir / "duplicates.csv"
    if duplicates.is_file():
        with open(duplicates, newline="", encoding="utf-8") as f:
            groups = {row["dup_group"] for row in csv.DictReader(f) if row.get("dup_group") not in (None, "", "-1")}
        text += f", {len(groups)} near-duplicate groups"
    return text


def _train(a: Artifacts) -> str:
    assert a.fold_dir is not None
    done = read_json(a.fold_dir / "done.json")
    scores = done.get("scores") or {}
    numbers = [(k, v) for k, v in scores.items() if isinstance(v, (int, float)) and k != "n_images"]
    if not numbers:
        raise ValueError(f"{a.fold_dir / 'done.json'}: no score in 'scores'")
    metric, value = numbers[0]  # kitlib.scoring.Scorer puts the preset's metric first
    text = f"fold {a.fold_dir.name.removeprefix('fold')} {metric} {_score(value)}"
    if scores.get("n_images") is not None:
        text += f" on {scores['n_images']} held-out images"
    best = done.get("best_epoch")
    if best is not None and int(best) >= 0:  # 0-based in done.json (kitlib.engine.FitResult)
        text += f" (best {done.get('monitor', 'epoch')} {_score(done.get('best_score'))} at epoch {int(best) + 1})"
    return text


def _oof(a: Artifacts) -> str:
    return "CV " + _cv(read_json(a.exp_dir / "cv.json"))


def _ensemble(a: Artifacts) -> str:
    assert a.out_dir is not None
    text = "blend CV " + _cv(read_json(a.out_dir / "cv.json"))
    weights_file = a.out_dir / "weights.json"
    if weights_file.is_file():
        w = read_json(weights_file)
        text += "; weights " + ", ".join(f"{e} {float(x):.2f}" for e, x in zip(w["exps"], w["weights"], strict=True))
        stacking = w.get("stacking") or {}
        if stacking:
            chosen = "chosen" if stacking.get("chosen") else "not chosen"
            text += f"; stacking {stacking.get('model')} CV {_score(stacking.get('cv'))} ({chosen})"
    return text


def _submit(a: Artifacts) -> str:
    assert a.submission_file is not None and a.source_dir is not None
    with open(a.submission_file, newline="", encoding="utf-8") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    text = f"{rows} rows written to {_shown(a.submission_file)}"
    if a.save_probs:
        text += f"; test probabilities {_shown(a.source_dir / 'test_probs.npy')}"
    return text


_HEADLINES = {"00_eda": _eda, "10_train": _train, "20_oof": _oof, "30_ensemble": _ensemble, "40_submit": _submit}


def headline(stage: str, artifacts: Artifacts) -> str:
    """The one-line result of a stage, read from the files it wrote.

    Args:
        stage: one of ``STAGES``.
        artifacts: where the run wrote (``Artifacts.from_params``).
    Returns:
        e.g. ``"80 images, 5 folds (16, 16, 16, 16, 16), 0 near-duplicate groups"`` (00_eda), ``"fold 0 dice 0.5469
        on 40 held-out images (best valid_dice 0.4786 at epoch 8)"`` (10_train), ``"CV dice 0.5896, post-processed
        0.8415 (threshold)"`` (20_oof), ``"blend CV ...; weights a 0.60, b 0.40"`` (30_ensemble), ``"80 rows written
        to runs/demo/submission.csv"`` (40_submit). Scores to 4 decimals.
    Raises:
        KeyError: an unknown stage (the options are named). FileNotFoundError: a file the stage should have written
        is absent. ValueError: a file without its score.
    """
    if stage not in _HEADLINES:
        raise KeyError(f"unknown stage {stage!r}; options: {list(_HEADLINES)}")
    return _HEADLINES[stage](artifacts)


def notebook_error(path: str | os.PathLike, max_lines: int = 6) -> list[str]:
    """The error of an executed notebook that failed: the first cell output of type ``error``.

    Args:
        path: the executed ``.ipynb`` papermill wrote (it saves the notebook with the error before it raises).
        max_lines: at most this many lines of the exception's message.
    Returns:
        ``["In [4]: ValueError: bad x 5", ...]`` (the message's further lines after the first); [] when no cell
        holds an error (the kernel died, or the notebook was never written).
    """
    path = Path(path)
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return []
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                lines = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".splitlines() or [""]
                count = cell.get("execution_count")
                where = f"In [{count}]: " if count is not None else ""
                return [where + lines[0], *lines[1:max_lines]]
    return []


def main(argv: list[str] | None = None) -> int:
    """``python -m kitlib.run_report headline STEM PARAMS.yaml`` prints the stem's headline; ``error NOTEBOOK``
    prints the failed notebook's error lines (nothing when it holds none). Status 1 with an ``error:`` line when the
    headline's files are missing or unreadable."""
    import yaml

    parser = argparse.ArgumentParser(prog="python -m kitlib.run_report", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("headline", help="one line of what a notebook wrote")
    p.add_argument("stem", help="the executed notebook's stem, e.g. 10_train_fold0")
    p.add_argument("params", help="its parameters, runs/<exp>/.params/<stem>.yaml")
    e = sub.add_parser("error", help="the error lines of an executed notebook that failed")
    e.add_argument("notebook")
    args = parser.parse_args(argv)
    if args.command == "error":
        for line in notebook_error(args.notebook):
            print(line)
        return 0
    try:
        stage = stage_of(args.stem)
        params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
        print(headline(stage, Artifacts.from_params(stage, params)))
    except (OSError, KeyError, ValueError, TypeError) as err:
        print(f"error: {args.stem}: no headline: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
