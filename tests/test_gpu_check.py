"""benchmarks/gpu_check.py, the GPU readiness check: its --quick run on a CPU writes every figure and prints every
summary line, and a compile that fails or runs too long is reported and skipped, never fatal."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
FIGURES = (
    "cache_build_images_per_s", "loader_images_per_s", "train_fp32_images_per_s", "train_amp_cl_images_per_s",
    "kit_loop_images_per_s", "plain_loop_images_per_s", "kit_vs_plain", "loader_vs_train",
    "inference_d4_images_per_s", "train_compile_images_per_s", "wall_s",
)  # fmt: skip
SUMMARY = ("train fp32:", "train bf16 + channels_last:", "train + compile:", "kit loop / plain loop:",
           "loader / training:", "inference D4 TTA:")  # fmt: skip


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (it imports ``_timing`` from its own folder, as when run)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.slow  # about 20 s on 2 busy cores: the imports and a few resnet34 steps
def test_quick_run_writes_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # compile with the "eager" backend: dynamo traces the model (the kit's compile switches), no code generation
    cmd = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--compile", "--compile-backend",
           "eager", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for name in FIGURES:
        assert isinstance(figures[name], float) and math.isfinite(figures[name]) and figures[name] > 0, name
    assert figures["settings"]["mode"] == "quick" and figures["device"] == "cpu"
    assert figures["torch"] == torch.__version__ and figures["device_name"].startswith("CPU")
    assert figures["kit_vs_plain"] == pytest.approx(
        figures["kit_loop_images_per_s"] / figures["plain_loop_images_per_s"]
    )
    # the same model, initial weights, batches, loss and optimiser: both loops did the same arithmetic (fp32 on CPU)
    assert figures["kit_loop_mean_loss"] == pytest.approx(figures["plain_loop_mean_loss"], rel=1e-5)
    assert len(figures["kit_loop_rounds"]) == len(figures["plain_loop_rounds"]) == 2
    assert isinstance(figures["kit_vs_plain_met"], bool) and isinstance(figures["loader_vs_train_met"], bool)
    assert figures["compile_backend"] == "eager" and figures["compile_skipped"] is None
    summary = proc.stdout[proc.stdout.index("== summary") :].splitlines()[1:]
    assert summary[len(SUMMARY) :] == ["(a CPU run: it checks the script; the figures and targets are meant for a GPU)"]
    summary = summary[: len(SUMMARY)]
    assert [line.split(":")[0] + ":" for line in summary] == list(SUMMARY)
    assert all(line.split(":", 1)[1].strip() for line in summary)
    assert "target >= 0.95x): met" in summary[3] or "target >= 0.95x): not met" in summary[3]
    assert "target >= 2.0x): met" in summary[4] or "target >= 2.0x): not met" in summary[4]
    assert "x uncompiled)" in summary[2]


def test_compile_past_its_timeout_is_skipped(gpu_check, monkeypatch):
    """A compile that hangs (here a sleeping stand-in) is cut at --compile-timeout; the run goes on."""
    monkeypatch.setattr(gpu_check, "train_figure", lambda *args, **kwargs: time.sleep(30))
    args = gpu_check.parse_args(["--compile", "--compile-timeout", "0.5"])
    figures = gpu_check.Figures(None)
    started = time.perf_counter()
    gpu_check.compile_figure(args, {}, torch.device("cpu"), [], figures)
    assert time.perf_counter() - started < 10
    assert figures["train_compile_images_per_s"] is None
    assert "TimeoutError" in figures["compile_skipped"] and "inductor" in figures["compile_skipped"]


def test_compile_failure_is_skipped(gpu_check, tmp_path):
    """A backend torch does not know fails at once: reported with the error, the run goes on."""
    args = gpu_check.parse_args(["--compile", "--compile-backend", "no_such_backend"])
    figures = gpu_check.Figures(tmp_path / "figures.json")
    gpu_check.compile_figure(args, {"encoder_name": "resnet34"}, torch.device("cpu"), [None], figures)
    assert figures["train_compile_images_per_s"] is None
    assert (
        figures["compile_skipped"].startswith("no_such_backend failed after")
        and "InvalidBackend" in (figures["compile_skipped"])
    )


def test_compile_is_skipped_on_cpu_by_default(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check, "train_figure", lambda *args, **kwargs: pytest.fail("compiled on a CPU"))
    figures = gpu_check.Figures(None)
    gpu_check.compile_figure(gpu_check.parse_args([]), {}, torch.device("cpu"), [], figures)
    assert figures["train_compile_images_per_s"] is None and "--compile" in figures["compile_skipped"]
