"""Benchmark: where one demo fold's wall time goes when run_all.sh runs it, and the share of training and prediction.

Run: ``python benchmarks/bench_walltime.py [--before] [--num-threads N] [--threads] [--keep DIR]`` (``--before``:
first the same fold validated every epoch, ``valid_last 0``, as before that parameter), or
``--chain runs/demo artifacts/demo`` after a ``./run_all.sh``: every notebook's wall time and training + prediction
share (papermill's durations and the folds' ``timings.json``).

Writes the demo competition (``kitlib.demo.make_demo``) into a temporary folder, runs ``00_eda`` there, then
``notebooks/10_train.py`` fold 0 exactly as run_all.sh does (``scripts/run_notebook.py``: papermill, a fresh kernel)
and prints one table of the fold notebook's wall time, seconds and % per phase:

- kernel start: the notebook's wall time measured from outside less the cells' (papermill's per-cell durations):
  the runner's interpreter and imports, jupytext, the kernel's start and shutdown;
- the cells: imports and the config (of which the imports alone, timed in a fresh interpreter), the plots;
- the training cell split by the fold's ``timings.json`` (``kitlib.train``): ``train_steps`` (forward, backward,
  optimiser), ``train_data`` (the batches' loading and augmentation), ``validation``, ``checkpoints``,
  ``oof_predict``, the OOF files and scores, and the rest.

Then the share of the wall time in training and prediction steps (``kitlib.train.COMPUTE_PHASES``), and ``00_eda``'s
wall time. ``--threads`` adds seconds per training epoch of the same fold for torch threads x DataLoader workers,
alternated over two rounds in this process (the machine's load changes between them: compare within a round).
The 1-minute load average is printed before and after: on a shared machine absolute times are inflated, shares and
ratios within a run less so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """This checkout's kitlib first, in every process the benchmark starts."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "KIT_ROOT": str(ROOT)}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _run_notebook(stem: str, out_dir: Path, **params) -> tuple[float, list[tuple[str, float]]]:
    """Run ``notebooks/<stem>.py`` as run_all.sh does; (wall seconds, [(cell's first line, seconds)])."""
    settings = [x for name, value in params.items() for x in ("--set", name, str(value))]
    params_path = out_dir / f"{stem}.yaml"
    written = subprocess.run([sys.executable, "-m", "kitlib.params", "params", f"notebooks/{stem}.py", *settings],
                             cwd=ROOT, env=_env(), check=True, capture_output=True, text=True).stdout  # fmt: skip
    params_path.write_text(written)
    executed = out_dir / f"{stem}.ipynb"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "scripts/run_notebook.py", f"notebooks/{stem}.py", str(executed),
                           str(params_path), "--cwd", str(ROOT)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{stem} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cells = []
    for cell in json.loads(executed.read_text())["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]).strip().splitlines() or [""]
            first = next((line for line in source if line and not line.startswith(("#", "%"))), source[0])
            cells.append((first[:60], float(cell["metadata"]["papermill"]["duration"] or 0.0)))
    return wall, cells


def _import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what 10_train's first code cell imports."""
    code = ("import time; t = time.perf_counter(); import pandas; from IPython.display import display; "
            "from kitlib import plots, predictions, train; from kitlib.stages import TrainConfig; "
            "print(time.perf_counter() - t)")  # fmt: skip
    return float(subprocess.run([sys.executable, "-c", code], env=_env(), check=True, capture_output=True,
                                text=True).stdout.split()[-1])  # fmt: skip


def _table(wall: float, cells: list[tuple[str, float]], timings: dict, imports: float) -> None:
    """Print the fold notebook's phases: seconds, % of wall, and the share of training and prediction steps."""
    from kitlib.train import COMPUTE_PHASES

    rows = [("kernel start, papermill, jupytext (outside the cells)", wall - sum(s for _, s in cells))]
    train_cell = max(range(len(cells)), key=lambda i: cells[i][1])
    for i, (source, seconds) in enumerate(cells):
        if seconds < 0.05:
            continue
        if i != train_cell:
            config_cell = "TrainConfig" in source or source.startswith("import json")
            rows.append((f"cell: imports + config (imports alone: {imports:.2f} s)" if config_cell else
                         f"cell: {source}", seconds))  # fmt: skip
            continue
        for name, phase_s in timings["phases"].items():
            rows.append((f"  fold: {name}{'  [compute]' if name in COMPUTE_PHASES else ''}", phase_s))
        rows.append(("  training cell outside train_fold", seconds - timings["total_s"]))
    print(f"{'phase':<62} {'seconds':>8} {'% wall':>7}")
    for label, seconds in rows:
        print(f"{label:<62} {seconds:8.2f} {100 * seconds / wall:6.1f}%")
    print(f"{'notebook wall (measured outside)':<62} {wall:8.2f} {100.0:6.1f}%")
    compute = timings["compute_s"]
    print(f"training + prediction steps ({' + '.join(COMPUTE_PHASES)}): {compute:.2f} s = {100 * compute / wall:.1f}% "
          f"of the notebook's wall, {100 * timings['compute_share']:.1f}% of train_fold's (target >= 80%)")  # fmt: skip
    print(f"torch threads {timings.get('num_threads')}, DataLoader workers {timings.get('num_workers')}")


def _thread_sweep(data_dir: Path, artifacts: Path, rounds: int = 2) -> None:
    """Seconds per training epoch of the demo's fold 0 for torch threads x DataLoader workers, in this process."""
    import torch

    from kitlib import engine, train
    from kitlib.optim import make_optimizer
    from kitlib.runtime import init_distributed, set_threads
    from kitlib.stages import TrainConfig

    info, device = init_distributed("cpu")
    cores = torch.get_num_threads()
    settings = sorted({(cores, 0), (1, 0), (1, 1), (cores, 1)})
    print(f"\ntraining epoch of the demo's fold 0 (64 images) by torch threads x workers ({cores} threads by default)")
    for r in range(rounds):
        for threads, workers in settings:
            set_threads(threads)
            cfg = TrainConfig.from_notebook(exp="bench", data_dir=str(data_dir), artifacts_root=str(artifacts), fold=0,
                                            num_workers=workers)  # fmt: skip
            full, train_df, valid_df = train.fold_tables(cfg)
            train_loader, _ = train._loaders(cfg, full, train_df, valid_df, info)
            torch.manual_seed(0)
            model, _ = train.build_model(cfg)
            optimizer = make_optimizer(model, cfg.encoder_lr, cfg.decoder_lr, cfg.weight_decay, cfg.optimizer)
            started = time.perf_counter()
            engine.train_one_epoch(model, train_loader, train.build_loss(cfg, model), optimizer, cfg.model_preset,
                                   device)  # fmt: skip
            print(f"round {r}: threads {threads}, workers {workers}: {time.perf_counter() - started:6.2f} s/epoch "
                  f"(load {_load()})", flush=True)  # fmt: skip
    set_threads(cores)


def _chain(runs: Path, artifacts: Path) -> None:
    """Every executed notebook of a finished run_all.sh (``runs/<exp>/*.ipynb``): papermill's wall time (the kernel's
    start included), its training and prediction seconds (a fold's ``timings.json``; 40_submit's ``predict_test``
    cell, an upper bound: it also writes the submission's RLE) and the chain's share."""
    print(f"{'notebook':<20} {'wall s':>8} {'compute s':>10} {'share':>7}")
    total = compute = 0.0
    for path in sorted(runs.glob("[0-9][0-9]_*.ipynb")):
        notebook = json.loads(path.read_text())
        wall, seconds = float(notebook["metadata"]["papermill"]["duration"]), 0.0
        if path.stem.startswith("10_train_fold"):
            timings = artifacts / f"fold{path.stem.removeprefix('10_train_fold')}" / "timings.json"
            seconds = json.loads(timings.read_text())["compute_s"] if timings.is_file() else 0.0
        elif path.stem.startswith("40_submit"):
            seconds = sum(float(c["metadata"]["papermill"]["duration"] or 0.0) for c in notebook["cells"]
                          if c["cell_type"] == "code" and "predict_test(" in "".join(c["source"]))  # fmt: skip
        total, compute = total + wall, compute + seconds
        print(f"{path.stem:<20} {wall:8.1f} {seconds:10.1f} {100 * seconds / wall:6.1f}%")
    share = 100 * compute / max(total, 1e-9)
    print(f"{'all notebooks':<20} {total:8.1f} {compute:10.1f} {share:6.1f}%  (target >= 80%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-threads", type=int, default=0, help="10_train's num_threads (0: torch's default)")
    parser.add_argument("--threads", action="store_true", help="also time an epoch by torch threads x workers")
    parser.add_argument("--before", action="store_true", help="first the same fold with valid_last 0 (every epoch)")
    parser.add_argument("--keep", default="", help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--chain", nargs=2, metavar=("RUNS", "ARTIFACTS"), default=None,
                        help="instead: the shares of a finished run_all.sh, e.g. runs/demo artifacts/demo")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.chain:
        return _chain(Path(args.chain[0]), Path(args.chain[1]))
    from kitlib.demo import make_demo

    with tempfile.TemporaryDirectory(prefix="bench_walltime_") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data_dir, artifacts = work / "data" / "demo", work / "artifacts"
        print(f"load average before: {_load()} ({os.cpu_count()} cores); {time.strftime('%Y-%m-%d %H:%M UTC')}")
        make_demo(data_dir)
        common = dict(exp="bench", data_dir=data_dir, artifacts_root=artifacts)
        eda_wall, _ = _run_notebook("00_eda", work, **common)
        print(f"00_eda: {eda_wall:.2f} s wall")
        imports = _import_seconds()
        runs = [("bench", {})]
        if args.before:  # the same fold as before valid_last: validation every epoch
            shutil.copytree(artifacts / "bench", artifacts / "bench_before")
            runs.insert(0, ("bench_before", {"valid_last": 0}))
        for exp, extra in runs:
            wall, cells = _run_notebook("10_train", work, **{**common, "exp": exp}, fold=0,
                                        num_threads=args.num_threads, **extra)  # fmt: skip
            timings = json.loads((artifacts / exp / "fold0" / "timings.json").read_text())
            scores = json.loads((artifacts / exp / "fold0" / "scores.json").read_text())
            print(f"\n10_train fold 0 {extra or '(the recipe)'}: {wall:.2f} s wall, held-out dice {scores['dice']:.4f} "
                  f"(load {_load()})")  # fmt: skip
            _table(wall, cells, timings, imports)
        if args.threads:
            _thread_sweep(data_dir, artifacts)
        print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
