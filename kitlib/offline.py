"""Offline mode, as in a Kaggle kernel with the internet off: the switch that makes a missing pretrained weight file
fail at once with its name (``kitlib.pretrained``) instead of retrying the network.

Light on purpose (no torch, timm or huggingface_hub import): call ``set_offline()`` before anything imports them.
"""

from __future__ import annotations

import os
import sys

__all__ = ["OFFLINE_VARS", "set_offline"]

#: The environment variables that ``set_offline`` sets (also set by the Kaggle kernel's install cell).
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def set_offline(enabled: bool = True) -> None:
    """Switch the Hugging Face hub and timm into offline mode (Kaggle kernels run with internet off).

    Sets ``HF_HUB_OFFLINE`` (and ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``) so that a missing
    weight file fails at once with the file's name instead of retrying the network. huggingface_hub reads
    the variable when it is imported, so call this before anything imports timm or smp; a warning is logged
    if it was imported already.
    """
    value = "1" if enabled else "0"
    for var in OFFLINE_VARS:
        os.environ[var] = value
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:  # imported already: it cached the flag at import time, so update the cached value
        hub.HF_HUB_OFFLINE = enabled
