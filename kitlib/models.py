"""Models: smp segmentation models, timm classifiers, checkpoints, lr groups.

- ``create_model``: any segmentation_models_pytorch (smp) architecture over any encoder smp knows, its own
  (``resnet34``, ``efficientnet-b0``, ``mit_b0``) or a timm one (``tu-<timm name>``, e.g. ``tu-hrnet_w18``,
  ``tu-convnext_tiny.fb_in22k``), with an optional image-level classification head.
- ``create_classifier``: a timm classifier for the classification presets (Cassava).
- Pretrained weights (names, offline cache checks, local files and folders) are resolved and loaded by
  ``kitlib.pretrained``; both builders take a weights name or a local path, and work offline.
- ``save_model`` / ``load_model``: a trained model together with the ``create_model`` (or ``create_classifier``)
  arguments that rebuild it, so inference needs no download and no copy of the training notebook's cell.
- ``param_groups``: differential learning rates (a smaller one for the pretrained encoder) without weight decay
  on biases and norm weights.

Models return logits (``activation=None``); apply ``sigmoid``/``softmax`` downstream.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from kitlib._private import listing
from kitlib.coteach import CoTeachingModel, merge_param_groups
from kitlib.hrnet_ocr import HRNetOCR
from kitlib.io import atomic_path, read_torch
from kitlib.pretrained import (
    _as_weights_path,
    _library_classifier_weights,
    _library_encoder_weights,
    _timm_encoder_name,
    _timm_tags,
    load_classifier_weights,
    load_encoder_weights,
    read_state_dict,
)

__all__ = [
    "ARCHS",
    "ARCH_ALIASES",
    "create_model",
    "create_classifier",
    "MultiSampleDropout",
    "save_model",
    "load_model",
    "param_groups",
]

#: smp's own registry (``smp.MODEL_ARCHITECTURES_MAPPING``): lower-case class name -> model class. In smp 0.5, 0.6:
#: unet, unetplusplus, manet, linknet, fpn, pspnet, deeplabv3, deeplabv3plus, pan, upernet, segformer, dpt; plus the
#: kit's ``hrnetocr`` (``kitlib.hrnet_ocr.HRNetOCR``, smp's constructor words; "hrnet_ocr" normalises to it).
ARCHS: dict[str, type[nn.Module]] = {**smp.MODEL_ARCHITECTURES_MAPPING, "hrnetocr": HRNetOCR}
#: Other spellings, after lower-casing and removing spaces, "_" and "-" ("UNet_PlusPlus" -> "unetplusplus").
ARCH_ALIASES: dict[str, str] = {
    "unet++": "unetplusplus",
    "unetpp": "unetplusplus",
    "nestedunet": "unetplusplus",
    "deeplabv3+": "deeplabv3plus",
    "psp": "pspnet",
    "uper": "upernet",
    "mitsegformer": "segformer",
}

_CHECKPOINT_KIND = "kitlib.model"
_RESERVED_KEYS = ("model_config", "state_dict", "kind")
# Encoders whose features start at stride 4 (timm "transformer-style": ConvNeXt, Swin, ...) give smp a dummy
# 0-channel stride-2 feature; before smp 0.6 these decoders built a convolution on it and failed at the first forward
# (smp 0.6 skips the empty feature: its UnetPlusPlus and Linknet take them; both still refuse ``mit_b*``).
_SMP_VERSION = tuple(int(part) for part in re.findall(r"\d+", smp.__version__)[:2])
_NEED_STRIDE2_FEATURE = ("unetplusplus", "linknet") if _SMP_VERSION < (0, 6) else ()


# --------------------------------------------------------------------------------------------------------------
# Segmentation models
# --------------------------------------------------------------------------------------------------------------


def create_model(
    arch: str,
    encoder_name: str,
    classes: int,
    encoder_weights: str | os.PathLike | None = None,
    in_channels: int = 3,
    aux_head: bool = False,
    dropout: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """Build an smp segmentation model that returns logits.

    Architectures and encoders that work together (checked with smp 0.5.0 and 0.6.0, timm 1.0.31):

    - Unet, MAnet, FPN, PSPNet, DeepLabV3, DeepLabV3Plus, UPerNet, Segformer: CNN encoders (smp's own or
      ``tu-`` ResNets, EfficientNets, ...), timm encoders whose features start at stride 4 (``tu-convnext_*``,
      ``tu-swin*``) and smp's ``mit_b*``.
    - UnetPlusPlus, Linknet: ``mit_b*`` is refused by smp (ValueError); with smp 0.6 every other encoder, stride-4
      timm encoders included (smp skips their empty stride-2 feature); with smp 0.5 only encoders with a stride-2
      feature map (CNNs): stride-4 timm encoders are refused by this function (ValueError).
    - PAN: CNN encoders; its pyramid attention pools the stride-16 map three times, so height and width must be
      at least 128 (64 and 96 fail at the first forward).
    - DPT: ``tu-`` encoders with ``forward_intermediates`` (ViTs such as ``tu-vit_small_patch16_224``; also
      ResNet and ConvNeXt in timm 1.0). Plain ViTs work only with DPT (smp rejects their feature strides).
    - HRNet_OCR (``kitlib.hrnet_ocr``): ``tu-hrnet*`` encoders; in train mode it returns ``(logits, aux_logits)``
      (the soft object regions, for ``kitlib.hrnet_ocr.AuxSegLoss``), in eval mode the logits.

    Inputs must have height and width divisible by the encoder's output stride (32 for most, 16 for PAN and
    DeepLabV3(Plus)); smp raises a RuntimeError naming the padded size otherwise.

    Args:
        arch: architecture key of ``ARCHS`` or an alias, case-insensitive ("Unet", "unet++", "DeepLabV3+").
        encoder_name: smp encoder (``smp.encoders.get_encoder_names()``) or ``"tu-" + <timm model name>``,
            optionally with a pretrained tag (``"tu-convnext_tiny.fb_in22k"``).
        classes: output channels of the mask logits (and of the classification head when ``aux_head``).
        encoder_weights: None (random init); a weights name loaded by the library: smp's names for its own
            encoders ("imagenet", "ssl", "swsl", ...), and for ``tu-`` encoders "imagenet" (timm's default tag,
            or the tag in ``encoder_name``) or a timm tag ("fb_in22k"; the tag goes into the encoder name and smp
            gets ``encoder_weights=True``, as smp 0.6 asks of ``tu-`` encoders); or a local path (``os.PathLike``, or a
            string containing a path separator or ending in ``kitlib.pretrained.WEIGHT_SUFFIXES``) to a
            ``.pth``/``.pt``/``.bin``/``.safetensors`` file or a folder holding one (``save_pretrained``, a Hugging
            Face repo download).
            A local file may hold the encoder's state dict, a whole smp model's, or a timm classifier's
            (``"state_dict"``/``"model"`` wrappers and ``module.`` prefixes are removed); see
            ``kitlib.pretrained.load_encoder_weights``.
        in_channels: input image channels; pretrained first convolutions are adapted (summed for 1 channel).
        aux_head: add smp's classification head on the deepest encoder feature (global average pooling,
            dropout, linear to ``classes`` logits, as the 1st-place Understanding Clouds model's ``use_cls_head``);
            forward then returns ``(mask_logits, cls_logits)``.
        dropout: dropout probability in [0, 1) before the classification head's linear layer (``aux_head``).
        **kwargs: other arguments of the smp class (``encoder_depth``, ``decoder_channels``,
            ``encoder_output_stride``, ...); for ``tu-`` encoders, unknown ones go on to ``timm.create_model``
            (``drop_path_rate``).

    Returns:
        The model, in train mode. ``forward(x)`` with ``x`` (N, in_channels, H, W) float32 returns mask logits
        (N, classes, H, W) float32, or ``(mask_logits, cls_logits)`` with cls_logits (N, classes) when
        ``aux_head``.

    Raises:
        KeyError: unknown ``arch`` (the message lists the options) or ``encoder_name`` (close matches and the
            number of encoders); an unknown timm tag.
        ValueError: unknown weights name (the options are listed); ``activation`` other than None; ``dropout``
            without ``aux_head``; an encoder the architecture cannot use; a weights file that does not fit.
        TypeError: a keyword the architecture does not take (smp would drop it silently for its own encoders).
        FileNotFoundError: a local weights path that does not exist (the message names it).
        kitlib.pretrained.OfflineWeightsError: named weights are not cached and downloads are off; the message
            names the file and repository to attach and how to pass it.
    """
    key = _arch_key(arch)
    model_cls = ARCHS[key]
    _check_encoder(encoder_name)
    if kwargs.pop("activation", None) is not None:
        raise ValueError("kitlib models return logits: leave activation=None and apply sigmoid/softmax downstream")
    if "aux_params" in kwargs:
        raise TypeError("pass aux_head=True and dropout=... instead of aux_params")
    _check_arch_kwargs(model_cls, encoder_name, kwargs)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if dropout and not aux_head:
        raise ValueError("dropout applies to the classification head only: set aux_head=True or dropout=0.0")

    weights_path = _as_weights_path(encoder_weights)
    library_weights = None
    if encoder_weights is not None and weights_path is None:
        encoder_name, library_weights = _library_encoder_weights(encoder_name, str(encoder_weights))
        if _timm_encoder_name(encoder_name) is not None:  # smp 0.6 wants True: the timm tag is in the name
            library_weights = True
    if weights_path is not None and not weights_path.exists():
        raise FileNotFoundError(f"{weights_path}: no such encoder_weights file or folder")

    aux_params = dict(classes=classes, pooling="avg", dropout=dropout, activation=None) if aux_head else None
    model = model_cls(
        encoder_name=encoder_name,
        encoder_weights=library_weights,
        in_channels=in_channels,
        classes=classes,
        activation=None,
        aux_params=aux_params,
        **kwargs,
    )
    if key in _NEED_STRIDE2_FEATURE and 0 in model.encoder.out_channels:
        raise ValueError(
            f"{model_cls.__name__} needs an encoder with a stride-2 feature map; {encoder_name!r} starts at stride 4 "
            f"(feature channels {list(model.encoder.out_channels)}). Use Unet, FPN, UPerNet or Segformer with it."
        )
    if weights_path is not None:
        load_encoder_weights(model, weights_path)
    return model


def _arch_key(arch: str) -> str:
    key = re.sub(r"[\s_\-]", "", arch.lower())
    key = ARCH_ALIASES.get(key, key)
    if key not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; options: {sorted(ARCHS)} (aliases: {sorted(ARCH_ALIASES)})")
    return key


def _check_encoder(encoder_name: str) -> None:
    if encoder_name in smp.encoders.encoders:
        return
    timm_name = _timm_encoder_name(encoder_name)
    if timm_name is not None:
        if timm_name.startswith(("hf-hub:", "local-dir:")):
            return  # resolved by timm itself
        if _check_timm_name(timm_name, f"encoder {encoder_name!r}", raise_unknown=False):
            return
    candidates = list(smp.encoders.encoders) + ["tu-" + name for name in timm.list_models()]
    close = difflib.get_close_matches(encoder_name, candidates, n=5, cutoff=0.6)
    hint = ""
    if timm.is_model(encoder_name):
        hint = f" timm models take the 'tu-' prefix: 'tu-{encoder_name}';"
    raise KeyError(
        f"unknown encoder {encoder_name!r};{hint} close matches: {close}; {len(candidates)} encoders in all "
        f"(smp.encoders.get_encoder_names() and 'tu-' + any of timm.list_models())"
    )


def _check_timm_name(name: str, what: str, raise_unknown: bool = True) -> bool:
    """True when timm knows ``name`` (with its tag, if any). An unknown tag is a KeyError listing the tags."""
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        if raise_unknown:
            names = timm.list_models()
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
            raise KeyError(f"unknown timm model {name!r}; close matches: {close}; {len(names)} in timm.list_models()")
        return False
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        raise KeyError(f"{what}: timm has no pretrained tag {tag!r} for {arch!r}; options: {_timm_tags(arch)}")
    return True


def _check_arch_kwargs(model_cls: type[nn.Module], encoder_name: str, kwargs: Mapping[str, Any]) -> None:
    own = {"self", "kwargs", "encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params"}
    allowed = set(inspect.signature(model_cls.__init__).parameters) - own
    unknown = sorted(set(kwargs) - allowed)
    if unknown and _timm_encoder_name(encoder_name) is None:
        raise TypeError(
            f"{model_cls.__name__} got unexpected keyword arguments {unknown}; options: {sorted(allowed)} "
            "(other keywords reach the encoder only for timm 'tu-' encoders)"
        )


# --------------------------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------------------------


class MultiSampleDropout(nn.Module):
    """A classifier layer over several dropout samples of the pooled features, their logits averaged (Inoue 2019,
    "Multi-Sample Dropout for Accelerated Training and Better Generalization", arXiv:1905.09788; used in Cassava
    Leaf Disease solutions). In eval mode, one pass without dropout: the same logits as the plain layer.

    Args:
        fc: the classifier layer, (N, F) -> (N, C).
        n_samples: dropout samples per forward pass, >= 2.
        p: dropout probability in (0, 1).
    Raises:
        ValueError: ``n_samples`` < 2 or ``p`` outside (0, 1).
    """

    def __init__(self, fc: nn.Module, n_samples: int, p: float) -> None:
        super().__init__()
        if n_samples < 2 or not 0.0 < p < 1.0:
            raise ValueError(f"multi-sample dropout needs n_samples >= 2 and p in (0, 1), got {n_samples} and {p}")
        self.fc, self.n_samples, self.p = fc, int(n_samples), float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.fc(x)
        return torch.stack([self.fc(nn.functional.dropout(x, self.p, True)) for _ in range(self.n_samples)]).mean(0)


def _multi_sample_head(model: nn.Module, n_samples: int, p: float) -> None:
    """Wrap a timm model's classifier layer (``pretrained_cfg["classifier"]``, e.g. "fc", "classifier", "head.fc")
    in ``MultiSampleDropout``; the model's own ``drop_rate`` must be 0 (the samples replace it)."""
    path = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    fc = model.get_submodule(path) if path else None
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"multi_sample_dropout: {type(model).__name__} has no linear classifier layer at {path!r}")
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, MultiSampleDropout(fc, n_samples, p))


def create_classifier(
    model_name: str,
    num_classes: int,
    pretrained_weights: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
    multi_sample_dropout: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm image classifier that returns logits (classification presets such as Cassava).

    Args:
        model_name: timm model name, optionally with a pretrained tag (``"convnext_tiny.fb_in22k"``).
        num_classes: number of output logits.
        pretrained_weights: None (random init, ``timm.create_model(name, pretrained=False)``); "imagenet" (timm's
            default tag, or the tag in ``model_name``) or a timm tag ("a1_in1k"), loaded by timm, which downloads
            when online and drops an ImageNet head of another size; or a local path (as for ``create_model``) to a
            file or folder (``timm.models.save_for_hf``, a Hugging Face repo download) holding a timm state dict,
            loaded by ``kitlib.pretrained.load_classifier_weights``.
        drop_rate: dropout probability before the classifier layer (timm's ``drop_rate``).
        multi_sample_dropout: 0 or 1: plain dropout; n >= 2: ``MultiSampleDropout`` with n samples at ``drop_rate``
            (which must then be > 0) in place of timm's single dropout.
        **kwargs: further ``timm.create_model`` arguments: ``global_pool`` ("avg", "max", "avgmax", "catavgmax"),
            ``drop_path_rate`` (stochastic depth), ``in_chans``, ``img_size``.

    Returns:
        The model in train mode: ``x`` (N, C, H, W) float32 -> logits (N, num_classes) float32.

    Raises:
        KeyError: unknown model name (close matches from ``timm.list_models()`` are listed) or tag (the model's
            tags are listed).
        ValueError: a weights name timm does not have for the model; a weights file that does not fit;
            ``multi_sample_dropout`` >= 2 with ``drop_rate`` 0 or on a model without a linear classifier layer.
        FileNotFoundError: a local weights path that does not exist.
        kitlib.pretrained.OfflineWeightsError: named weights are not cached and downloads are off (the message says
            what to attach).
        TypeError: ``pretrained`` passed (use ``pretrained_weights``).
    """
    if "pretrained" in kwargs:
        raise TypeError("pass pretrained_weights=... instead of pretrained")
    if not model_name.startswith(("hf-hub:", "local-dir:")):
        _check_timm_name(model_name, f"model {model_name!r}")
    weights_path = _as_weights_path(pretrained_weights)
    multi = int(multi_sample_dropout) >= 2
    if multi and not 0.0 < drop_rate < 1.0:
        raise ValueError(f"multi_sample_dropout {multi_sample_dropout} needs a dropout rate in (0, 1), got {drop_rate}")
    timm_drop = 0.0 if multi else drop_rate
    if pretrained_weights is not None and weights_path is None:
        full_name = _library_classifier_weights(model_name, str(pretrained_weights))
        model = timm.create_model(full_name, pretrained=True, num_classes=num_classes, drop_rate=timm_drop, **kwargs)
    else:
        if weights_path is not None and not weights_path.exists():
            raise FileNotFoundError(f"{weights_path}: no such pretrained_weights file or folder")
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, drop_rate=timm_drop, **kwargs)
        if weights_path is not None:
            load_classifier_weights(model, weights_path)
    if multi:
        _multi_sample_head(model, int(multi_sample_dropout), drop_rate)
    return model


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model with the arguments that rebuild it, atomically (``torch.save`` to a temporary name).

    The file holds ``{"model_config": dict(model_config), "state_dict": <CPU tensors>, "kind": "kitlib.model",
    **extra}``. Before writing, the model that ``model_config`` describes is built on the ``meta`` device (no
    memory, no download) and its keys and shapes are compared with ``model``'s, so a config that would not
    rebuild the model fails here rather than in a Kaggle kernel.

    Args:
        path: destination, usually ``artifacts/<exp>/fold<k>/model.pt``; parent folders are created.
        model: the trained model (any device).
        model_config: ``create_model`` keywords (``arch``, ``encoder_name``, ``classes``, ...) or
            ``create_classifier`` keywords (``model_name``, ``num_classes``, ...). Weights entries are kept for
            the record; ``load_model`` ignores them.
        extra: more entries (``epoch``, ``score``, ``fold``): Python scalars, strings, lists, dicts and tensors,
            which ``torch.load(weights_only=True)`` reads back; numpy scalars become Python numbers and numpy
            arrays tensors.
    Returns:
        ``path`` as a Path.
    Raises:
        ValueError: ``extra`` uses a reserved key (``model_config``, ``state_dict``, ``kind``); ``model_config``
            names neither ``arch`` nor ``model_name``, or builds a model with other keys or shapes.
        TypeError: an ``extra`` value that ``weights_only`` loading would refuse (the message names the key).
    """
    model_config = dict(model_config)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra uses reserved keys {clash}")
    extra = {key: _plain(value, key) for key, value in extra.items()}
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _check_config_builds(model_config, state_dict)
    checkpoint = {"model_config": model_config, "state_dict": state_dict, "kind": _CHECKPOINT_KIND, **extra}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def _plain(value: Any, key: str) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, key) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"extra[{key!r}]: {type(value).__name__} cannot be loaded with torch.load(weights_only=True)")


def _build_from_config(model_config: Mapping[str, Any]) -> nn.Module:
    config = dict(model_config)
    if "coteach" in config:  # two networks of the rest of the config (kitlib.coteach)
        predict = dict(config.pop("coteach")).get("predict", "mean")
        return CoTeachingModel(_build_from_config(config), _build_from_config(config), predict)
    if "arch" in config:
        config["encoder_weights"] = None
        return create_model(**config)
    if "model_name" in config:
        config["pretrained_weights"] = None
        return create_classifier(**config)
    raise ValueError(
        f"model_config needs 'arch' (create_model keywords) or 'model_name' (create_classifier keywords); "
        f"got keys {sorted(config)}"
    )


def _check_config_builds(model_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> None:
    try:
        try:
            with torch.device("meta"):  # no memory, no init cost
                rebuilt = _build_from_config(model_config)
        except (RuntimeError, NotImplementedError):  # constructors that read tensor values (mit_b*: .item())
            rebuilt = _build_from_config(model_config)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"model_config {model_config} does not build a model: {e}") from e
    want = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(
            f"model_config does not rebuild this model: {len(diff)} keys differ "
            f"({listing([f'{k} {have.get(k)} vs config {want.get(k)}' for k in diff], 3)})"
        )


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by ``save_model`` (or a ``save_pretrained`` folder) and load its weights strictly.

    The model is built with ``encoder_weights=None`` / ``pretrained_weights=None``, so nothing is downloaded.

    Args:
        path: a ``save_model`` file; or a folder written by smp's ``model.save_pretrained(folder)`` or timm's
            ``save_for_hf`` (``config.json`` + ``model.safetensors``).
        map_location: device for the tensors and the returned model.
    Returns:
        ``(model, checkpoint)``: the model on ``map_location`` in eval mode (call ``.train()`` to fine-tune), and
        the checkpoint dict (``model_config``, ``state_dict`` and the ``extra`` entries; for a folder
        ``{"config": <config.json>, "state_dict": ...}``).
    Raises:
        FileNotFoundError: no such file or folder, or a folder without ``config.json`` (the message names it).
        ValueError: the file is not a readable checkpoint, lacks ``model_config``/``state_dict``, or its weights
            do not fit the model its config builds (the message names the file).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        model, checkpoint = _load_folder(path)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such model checkpoint")
    else:
        checkpoint = read_torch(path, "model checkpoint")  # a truncated file: ValueError naming it
        if not isinstance(checkpoint, dict) or not {"model_config", "state_dict"} <= set(checkpoint):
            found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{path}: not a kitlib model checkpoint (needs 'model_config' and 'state_dict', found {found}); "
                "for a bare state dict build the model and call model.load_state_dict"
            )
        model = _build_from_config(checkpoint["model_config"])
        _load_strict(model, checkpoint["state_dict"], path)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
        checkpoint["state_dict"] = {k: v.to(map_location) for k, v in checkpoint["state_dict"].items()}
    return model.eval(), checkpoint


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit the model its config builds: {e}") from e


def _load_folder(folder: Path) -> tuple[nn.Module, dict]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no such file (load_model reads save_pretrained/save_for_hf folders)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    state_dict = read_state_dict(folder)
    if "_model_class" in config:  # smp SMPHubMixin.save_pretrained
        model_cls = ARCHS[_arch_key(config["_model_class"])]
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        kwargs["encoder_weights"] = None  # smp's from_pretrained would download the encoder weights first
        model = model_cls(**kwargs)
    elif "architecture" in config:  # timm save_for_hf
        kwargs = dict(config.get("model_args") or {})
        kwargs.setdefault("num_classes", config.get("num_classes", 1000))
        model = timm.create_model(config["architecture"], pretrained=False, **kwargs)
    else:
        raise ValueError(f"{config_file}: neither an smp ('_model_class') nor a timm ('architecture') config")
    _load_strict(model, state_dict, folder)
    return model, {"config": config, "state_dict": state_dict}


# --------------------------------------------------------------------------------------------------------------
# Optimiser parameter groups
# --------------------------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, encoder_lr: float, decoder_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups for differential learning rates and weight decay, for any ``torch.optim`` optimiser.

    The 1st-place Understanding Clouds model (pudae, ``configs/model_a_00.yaml``) trained the decoder at
    2.5e-4 and the pretrained encoder at a tenth of it (``encoder_lr_ratio: 0.1``) with AdamW, weight decay
    0.01 and no decay on biases: ``AdamW(param_groups(model, 2.5e-5, 2.5e-4, 0.01))``.

    - smp models: parameters under ``encoder.`` get ``encoder_lr``; the decoder, segmentation head and
      classification head get ``decoder_lr``.
    - timm classifiers: the classifier head (``model.get_classifier()``) gets ``decoder_lr``, the rest
      ``encoder_lr``.
    - No weight decay for 1-D parameters (biases, norm weights) and names a module lists in ``no_weight_decay()``
      (ViT ``pos_embed``, ``cls_token``), as ``timm.optim.param_groups_weight_decay`` does.

    Parameters with ``requires_grad=False`` are left out (as timm does); each other parameter is in exactly one
    group.

    Args:
        model: an smp model (has ``encoder``) or a timm model (has ``get_classifier``).
        encoder_lr: learning rate of the encoder (backbone).
        decoder_lr: learning rate of the decoder and heads (the classifier head).
        weight_decay: decay of the decaying groups (0 disables decay; then there are no ``*_no_decay`` groups).
    Returns:
        Non-empty groups, each ``{"name", "params", "lr", "weight_decay"}``; names are ``encoder``,
        ``encoder_no_decay``, ``decoder``, ``decoder_no_decay`` (``head``, ``head_no_decay`` for classifiers).
    Raises:
        TypeError: the model has neither ``encoder`` nor ``get_classifier``.
    """
    if isinstance(model, CoTeachingModel):  # both networks' groups joined by name
        return merge_param_groups([param_groups(net, encoder_lr, decoder_lr, weight_decay) for net in model.networks])
    if isinstance(getattr(model, "encoder", None), nn.Module):
        head_name = "decoder"
        head_ids = {id(p) for name, p in model.named_parameters() if not name.startswith("encoder.")}
    elif callable(getattr(model, "get_classifier", None)):
        head_name = "head"
        heads = model.get_classifier()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        head_ids = {id(p) for head in heads for p in head.parameters()}
    else:
        raise TypeError(f"param_groups needs an smp model (.encoder) or a timm model (.get_classifier()), got {model}")
    no_decay_patterns = _no_weight_decay_patterns(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = head_name if id(param) in head_ids else "encoder"
        exempt = param.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, p) for p in no_decay_patterns)
        buckets.setdefault((part, bool(weight_decay) and not exempt), []).append(param)
    groups = []
    for part, lr in (("encoder", encoder_lr), (head_name, decoder_lr)):
        for decay in (True, False):
            params = buckets.get((part, decay))
            if params:
                name = part if decay or not weight_decay else f"{part}_no_decay"
                group_decay = weight_decay if decay else 0.0
                groups.append({"name": name, "params": params, "lr": lr, "weight_decay": group_decay})
    return groups


def _no_weight_decay_patterns(model: nn.Module) -> set[str]:
    """Full names (fnmatch patterns) that timm modules inside ``model`` list in ``no_weight_decay()``."""
    patterns = set()
    for prefix, module in model.named_modules():
        no_weight_decay = getattr(module, "no_weight_decay", None)
        if callable(no_weight_decay):
            patterns.update(f"{prefix}.{n}" if prefix else n for n in no_weight_decay())
    return patterns
