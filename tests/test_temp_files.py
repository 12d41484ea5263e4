"""Temporary files of interrupted writes (issue 15 item 8): a kill while an artifact is written leaves its temporary
file under the kit's own name (``.<name>.kit-tmp-<pid>-...``); the next stage start removes those of dead processes,
never one a running process is writing, never the user's files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kitlib import io, predictions
from kitlib.stages import OofConfig
from tests.conftest import REPO

DEAD_PID = 4194303  # above the usual pid_max: no live process has it

WRITER = """
import sys, time
import numpy as np
from kitlib.io import atomic_path

with atomic_path(sys.argv[1]) as tmp:  # as kitlib.targets.write_oof_masks writes oof_masks.npy
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(16, 4, 350, 525))
    out[:8] = 1
    out.flush()
    print(tmp, flush=True)
    time.sleep(300)  # killed here
"""


def _user_files(exp_dir: Path) -> list[Path]:
    files = [exp_dir / "my.tmp.npy", exp_dir / "notes.tmp", exp_dir / ".notes.txt.swp", exp_dir / "fold0" / ".x.tmp",
             exp_dir / "fold0" / "kit-tmp-1-notes.txt", exp_dir / ".oof_probs.npy.abc.tmp.npy"]  # fmt: skip
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("the user's")
    return files


def test_a_killed_write_is_removed_at_the_next_stage_start(tmp_path, caplog):
    exp_dir = tmp_path / "artifacts" / "e"
    exp_dir.mkdir(parents=True)
    cfg = OofConfig.from_notebook(preset="demo", exp="e", artifacts_root=str(tmp_path / "artifacts"),
                                  data_dir=str(tmp_path / "data"))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(exp_dir / "oof_masks.npy")], stdout=subprocess.PIPE,
                              text=True, env=env)  # fmt: skip
    try:
        tmp = Path(writer.stdout.readline().strip())
        assert tmp.parent == exp_dir and tmp.name.startswith(f".oof_masks.npy.kit-tmp-{writer.pid}-"), tmp
        assert tmp.name.endswith(".npy") and tmp.stat().st_size > 10_000_000
        cfg.save()  # the writer still runs: its file stays
        assert tmp.is_file()
    finally:
        writer.kill()
        writer.wait()
    assert tmp.is_file()  # the kill left it
    users = _user_files(exp_dir)
    stale = exp_dir / "fold1" / f".last.pt.kit-tmp-{DEAD_PID}-k2j4.pt"  # one level below: removed
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    stale_dir = exp_dir / f".train_rows.kit-tmp-{DEAD_PID}-abc"  # a folder built for replace_dir
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "000000.npz").write_bytes(b"x")
    own = exp_dir / f".scores.json.kit-tmp-{os.getpid()}-abc.json"  # this process may be writing it (a thread)
    own.write_text("{}")
    deep = exp_dir / "fold0" / "topk" / "deeper" / f".epoch1.pt.kit-tmp-{DEAD_PID}-a.pt"  # below depth 1: left
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="kitlib.io"):
        cfg.save()
    assert not tmp.exists() and not stale.exists() and not stale_dir.exists()
    assert all(f.read_text() == "the user's" for f in users) and own.is_file() and deep.is_file()
    lines = [r.getMessage() for r in caplog.records if r.name == "kitlib.io"]
    assert len(lines) == 1 and "removed 3 temporary file(s)" in lines[0] and tmp.name in lines[0], lines
    assert (exp_dir / "oof_config.json").is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kitlib.io"):
        cfg.save()  # nothing left to remove: no line
    assert not caplog.records


def test_temporary_names_are_the_kits(tmp_path):
    with io.atomic_path(tmp_path / "oof_probs.npy") as tmp:
        assert tmp.name.startswith(f".oof_probs.npy{io.TEMP_MARK}{os.getpid()}-") and tmp.suffix == ".npy"
    folder = io.temp_dir(tmp_path / "bundle")
    assert folder.name.startswith(f".bundle{io.TEMP_MARK}{os.getpid()}-") and folder.is_dir()
    io.replace_dir(folder, tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "oof_probs.npy"]


def test_a_failed_prediction_write_leaves_no_partial_file(tmp_path):
    """write_predictions' memory-mapped partial file was left behind when a row was missing (or on any error)."""
    batches = iter([(["a"], torch.zeros(1, 2, 4, 4), None)])
    with pytest.raises(ValueError, match="1 rows were not predicted"):
        predictions.write_predictions(tmp_path / "oof_probs.npy", batches, ["a", "b"])
    assert list(tmp_path.iterdir()) == []
