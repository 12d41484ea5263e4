"""kitlib: the library behind the kit's notebooks.

Flat, one idea per module; import what you need (``from kitlib.rle import rle_encode``). Importing the package
does no heavy work and no network access: torch, timm and OpenCV are imported by the modules that use them.

Import direction: see docs/ARCHITECTURE.md.
"""

import warnings

# huggingface_hub (imported by timm and smp) imports tqdm.auto, which warns on stderr in every papermill kernel that
# ipywidgets is missing and then uses the text bar anyway; the kit's bars are text bars on purpose (kitlib._private).
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
__all__ = ["__version__"]
