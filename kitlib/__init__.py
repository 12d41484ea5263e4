"""kitlib: the library behind the kit's notebooks.

Flat, one idea per module; import what you need (``from kitlib.rle import rle_encode``). Importing the package
does no heavy work and no network access: torch, timm and OpenCV are imported by the modules that use them.

Import direction (no cycles): rle, config, presets <- formats, folds, metrics, losses, models, tta <- data, demo,
postprocess, ensemble, submit <- engine <- train <- plots <- notebooks.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
