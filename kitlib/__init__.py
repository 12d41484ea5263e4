"""kitlib: the library behind the kit's notebooks.

Flat, one idea per module; import what you need (``from kitlib.rle import rle_encode``). Importing the package
does no heavy work and no network access: torch, timm and OpenCV are imported by the modules that use them.

Import direction: see docs/ARCHITECTURE.md.
"""

import sys
import warnings
from importlib.abc import MetaPathFinder

# huggingface_hub (imported by timm and smp) imports tqdm.auto, which warns on stderr in every papermill kernel that
# ipywidgets is missing and then uses the text bar anyway; the kit's bars are text bars on purpose (kitlib._private).
warnings.filterwarnings("ignore", message="IProgress not found")


class _NoWandbInTimmSummary(MetaPathFinder):
    """Declines ``import wandb`` while ``timm.utils.summary`` is being imported, and only then.

    timm imports that module with the package, and it imports wandb when installed (``try: import wandb``) for the
    logging of timm's own training script, which the kit never calls: 0.4 s of every kernel that imports timm or smp
    (``python -X importtime -c "import timm"``). wandb stays importable: ``kitlib.tracking`` imports it for a run
    tracked with wandb, and so can the user.
    """

    def find_spec(self, name, path=None, target=None):
        summary = sys.modules.get("timm.utils.summary")
        if name == "wandb" and getattr(getattr(summary, "__spec__", None), "_initializing", False):
            raise ModuleNotFoundError("wandb is not imported for timm.utils.summary (kitlib/__init__.py)", name=name)
        return None


if "timm" not in sys.modules and not any(isinstance(f, _NoWandbInTimmSummary) for f in sys.meta_path):
    sys.meta_path.insert(0, _NoWandbInTimmSummary())

__version__ = "0.1.0"
__all__ = ["__version__"]
