"""The first cell of a Kaggle submission kernel: install the bundle's wheels with the internet off.

``kitlib.kaggle_kernel.kernel`` copies this file's source into the kernel's first cell and appends one call,
``install(...)``, with the bundle's values. It runs before kitlib is installed, so it uses the standard library only;
its input patterns come from ``kitlib.kaggle.find_input`` and its environment switches from
``kitlib.offline.OFFLINE_VARS`` when the cell is written. ``HF_HUB_OFFLINE`` is set before anything imports
huggingface_hub, so a missing weight file fails at once instead of retrying the network. Importing this module runs
nothing.
"""

import glob
import importlib
import os
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["install"]


def install(dataset_id: str, patterns: Sequence[str], wheels: Sequence[str], offline_vars: Sequence[str]) -> list[str]:
    """Switch the hub libraries offline, find the attached bundle under ``/kaggle/input`` (``KIT_KAGGLE_ROOT``
    replaces ``/kaggle``) and ``pip install --no-index --no-deps`` its wheels.

    Args:
        dataset_id: the bundle's dataset (``user/slug``), for messages.
        patterns: glob patterns below ``input/`` where Kaggle may have mounted it, most specific first.
        wheels: the wheel file names to install (kitlib's first).
        offline_vars: environment variables set to "1".
    Returns:
        The paths of the wheels installed.
    Raises:
        FileNotFoundError: the dataset or one of its wheels is not there (the message names what was looked for).
    """
    for var in offline_vars:
        os.environ[var] = "1"
    root = os.path.join(os.environ.get("KIT_KAGGLE_ROOT") or "/kaggle", "input")
    hits = [p for pat in patterns for p in sorted(glob.glob(os.path.join(glob.escape(root), pat))) if os.path.isdir(p)]
    if not hits:
        raise FileNotFoundError(f"dataset {dataset_id!r} is not under {root} (looked for {list(patterns)}): attach it")
    found = []
    for name in wheels:
        matches = sorted(glob.glob(os.path.join(glob.escape(hits[0]), "**", name), recursive=True))
        if not matches:
            raise FileNotFoundError(f"{name} is not in {hits[0]}: rebuild and upload the bundle")
        found.append(matches[0])
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", os.path.dirname(found[0]), "--no-deps"]
    subprocess.check_call([*pip, "--force-reinstall", "--quiet", "--disable-pip-version-check", *found])
    importlib.invalidate_caches()
    print("installed offline:", ", ".join(os.path.basename(w) for w in found))
    return found
