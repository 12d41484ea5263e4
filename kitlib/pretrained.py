"""Pretrained weights, online and offline: weights names resolved against smp and timm, cache checks, local files.

Kaggle code competitions score kernels with the internet off, so pretrained weights come either from the
libraries' caches (smp and timm download them when online) or from a local file or folder attached as a Kaggle
dataset.

- Weights names ("imagenet", a timm tag such as "fb_in22k", smp's "ssl"/"swsl") are checked against what smp and
  timm know before anything is built, with the options listed when a name is unknown.
- With ``HF_HUB_OFFLINE=1`` (``kitlib.offline.set_offline()``) a missing cache entry fails at once with
  ``OfflineWeightsError`` naming the file to attach and how to pass it. Without it, a machine with no network
  makes huggingface_hub retry each file five times (1 + 2 + 4 + 8 + 8 s), about 47 s for a timm model, which
  asks for ``model.safetensors`` and then ``pytorch_model.bin``, before an unhelpful connection error.
- ``read_state_dict``, ``load_encoder_weights`` and ``load_classifier_weights`` read a local weights file or
  folder (``.pth``/``.pt``/``.bin``/``.safetensors``, ``save_pretrained``/``save_for_hf`` folders) into an smp
  encoder or a timm classifier: key prefixes are aligned, first convolutions adapted to the input channels, and
  classifier heads of another size kept at init, with a ``WeightsReport`` of what was done.

``kitlib.models`` builds the models (``create_model``, ``create_classifier``) and calls this module for their
weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from kitlib._private import listing

__all__ = [
    "WEIGHT_SUFFIXES",
    "OfflineWeightsError",
    "WeightsReport",
    "smp_hub_config",
    "read_state_dict",
    "load_encoder_weights",
    "load_classifier_weights",
]

log = logging.getLogger(__name__)

#: File endings that mark a string as a local weights path (besides containing a path separator).
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_DEFAULT_WEIGHTS = ("imagenet", "default", "timm")  # "timm's default pretrained tag for this name"
_PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin")
_WRAPPER_KEYS = ("state_dict", "model")  # timm train.py / Lightning / kitlib: {"state_dict": ...}; others {"model"}
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
# torchvision DenseNet files name "norm.1" what the modules call "norm1" (smp's DenseNetEncoder.load_state_dict).
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# Keys of the model that we accept to leave at init when the file lacks them (2017-era torchvision BN files).
_OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)


class OfflineWeightsError(FileNotFoundError):
    """Named pretrained weights are not in the local caches and downloads are switched off (``HF_HUB_OFFLINE``)."""


@dataclasses.dataclass
class WeightsReport:
    """What loading a weights file into a module did (``load_encoder_weights``, ``load_classifier_weights``).

    Attributes:
        source: the file read.
        loaded: module keys set from the file.
        missing: module keys left at their initial values: classifier-head keys the file lacks, and
            ``num_batches_tracked`` buffers of old BatchNorm files. Any other missing key is an error.
        unexpected: file keys the module does not have (a classifier head of a feature-only encoder, stages
            removed by ``encoder_depth``, ...), after the key prefixes were aligned.
        skipped: classifier-head keys whose shape differs (``"fc.weight (1000, 512) -> (5, 512)"``), left at init.
        adapted: first-convolution weights converted to ``in_channels`` (``timm.models.adapt_input_conv``).
        ignored: file keys outside the encoder when a whole segmentation model's state dict was given
            (decoder, heads).
    """

    source: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    skipped: list[str]
    adapted: list[str]
    ignored: list[str]

    def summary(self) -> str:
        """One line: counts per field and the first few keys of the non-empty ones."""
        parts = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        for name in ("adapted", "skipped", "missing", "unexpected", "ignored"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name} ({listing(keys)})")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Weights names
# --------------------------------------------------------------------------------------------------------------


def _timm_encoder_name(encoder_name: str) -> str | None:
    """The timm model name behind an smp encoder name (``tu-x`` and the deprecated ``timm-regnet*`` family)."""
    if encoder_name.startswith("tu-"):
        return encoder_name[3:]
    if smp.encoders.is_equivalent_to_timm_universal(encoder_name):  # smp maps these to tu- itself
        name = encoder_name[len("timm-") :]
        return "tf_" + name if "mobilenetv3" in name else name
    return None


def _timm_tags(arch: str) -> list[str]:
    return [name.split(".", 1)[1] for name in timm.list_pretrained(f"{arch}.*") if "." in name]


def _timm_pretrained_name(name: str, weights: str, what: str) -> str:
    """``name`` with the tag that ``weights`` asks for ("imagenet" = the name's own tag or timm's default)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    arch, tag = timm.models.split_model_name_tag(name)
    tags = _timm_tags(arch)
    if not tags:
        raise ValueError(f"{what}: timm has no pretrained weights for {arch!r}; use None or a local weights path")
    if weights in _DEFAULT_WEIGHTS:
        return name
    if tag and tag != weights:
        raise ValueError(f"{what}: the name carries tag {tag!r} but the weights ask for {weights!r}")
    if weights not in tags:
        raise ValueError(
            f"{what}: unknown weights {weights!r}; options: {list(_DEFAULT_WEIGHTS)}, a timm tag {tags}, "
            "or a local file/folder path"
        )
    return f"{arch}.{weights}"


def _library_encoder_weights(encoder_name: str, weights: str) -> tuple[str, str]:
    """Validate a weights *name* for an encoder, check the caches when offline; return (encoder_name, weights)."""
    what = f"encoder {encoder_name!r}"
    if encoder_name in smp.encoders.encoders:
        settings = smp.encoders.encoders[encoder_name].get("pretrained_settings") or {}
        if weights not in settings:
            raise ValueError(
                f"{what} has no weights {weights!r}; options: {sorted(settings)}, or a local file/folder path"
            )
        if _offline():
            _require_cached_smp(encoder_name, weights, settings[weights])
        return encoder_name, weights
    timm_name = _timm_encoder_name(encoder_name)
    if timm_name is None:  # pragma: no cover - _check_encoder ran first
        raise KeyError(f"unknown encoder {encoder_name!r}")
    full_name = _timm_pretrained_name(timm_name, weights, what)
    if _offline():
        _require_cached_timm(full_name, what, "create_model(..., encoder_weights=")
    if encoder_name.startswith("tu-"):
        encoder_name = "tu-" + full_name  # smp loads timm's weights for the tag in the name
    return encoder_name, weights


def _library_classifier_weights(model_name: str, weights: str) -> str:
    """Validate a weights *name* for a timm classifier, check the caches when offline; return the tagged name."""
    what = f"model {model_name!r}"
    full_name = _timm_pretrained_name(model_name, weights, what)
    if _offline():
        _require_cached_timm(full_name, what, "create_classifier(..., pretrained_weights=")
    return full_name


# --------------------------------------------------------------------------------------------------------------
# Offline checks
# --------------------------------------------------------------------------------------------------------------


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, from its cached constant or the environment."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if env and not constants.HF_HUB_OFFLINE:
        log.warning("HF_HUB_OFFLINE was set after huggingface_hub was imported; call kitlib.offline.set_offline()")
    return bool(constants.HF_HUB_OFFLINE) or env


def _hf_cached(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) and Path(found).is_file() else None


def _torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_url(repo_id: str, filename: str, revision: str | None) -> str:
    return f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}"


def _offline_error(what: str, needed: str, looked_in: list[str], call: str) -> OfflineWeightsError:
    from huggingface_hub import constants

    example = f"/kaggle/input/<dataset>/{needed.rsplit('/', 1)[-1].split('?')[0]}"
    return OfflineWeightsError(
        f"{what}: pretrained weights are not on this machine and downloads are off (HF_HUB_OFFLINE=1, as in a "
        f"Kaggle kernel without internet). Needed: {needed} . Looked in: {', '.join(looked_in)} "
        f"(Hugging Face cache {constants.HF_HUB_CACHE}). Download the file where there is internet, attach it "
        f"to the kernel (e.g. as a Kaggle dataset) and pass its local path: {call}'{example}') - a "
        f".pth/.pt/.bin/.safetensors file or a folder holding one."
    )


def _require_cached_smp(encoder_name: str, weights: str, setting: Mapping[str, Any]) -> None:
    """smp downloads config.json + model.safetensors from the hub, else falls back to the original URL."""
    repo_id, revision = setting["repo_id"], setting.get("revision")
    if all(_hf_cached(repo_id, f, revision) for f in ("config.json", "model.safetensors")):
        return
    looked_in = [f"hf://{repo_id}@{revision}"]
    legacy_url = _legacy_smp_settings().get(encoder_name, {}).get(weights, {}).get("url")
    if legacy_url:
        if _torch_hub_file(legacy_url).is_file():
            return
        looked_in.append(str(_torch_hub_file(legacy_url)))
    raise _offline_error(
        f"encoder {encoder_name!r} weights {weights!r}",
        f"model.safetensors of the Hugging Face repo {repo_id}: {_hf_url(repo_id, 'model.safetensors', revision)}",
        looked_in,
        "create_model(..., encoder_weights=",
    )


def _legacy_smp_settings() -> Mapping[str, Any]:
    """smp 0.5's copy of the settings from before the hub (``encoders.pretrained_settings``: the original URLs,
    mean/std); smp 0.6 removed it, and this is then empty."""
    return getattr(smp.encoders, "pretrained_settings", None) or {}


def smp_hub_config(encoder_name: str, weights: str, download: bool = False) -> dict[str, Any] | None:
    """The hub ``config.json`` of an smp encoder's named weights (``smp-hub/<encoder>.<weights>`` at smp's pinned
    revision), where smp 0.6 keeps their ``mean``, ``std``, ``input_space`` and ``input_range`` (and nowhere else;
    ``smp.encoders.get_preprocessing_params`` reads the same file).

    Read from the Hugging Face cache without the network (what ``HF_HUB_OFFLINE=1`` allows; smp puts the file there
    when it downloads the weights). With ``download`` and downloads on, a file missing from the cache is fetched
    (``hf_hub_download``, as smp does).

    Args:
        encoder_name: an smp encoder (``smp.encoders.encoders``), e.g. "resnet34".
        weights: one of its ``pretrained_settings`` ("imagenet", "advprop", ...).
        download: fetch the file when it is not cached and ``HF_HUB_OFFLINE`` is off.
    Returns:
        The parsed file, or None when it is not cached (and not downloaded).
    Raises:
        KeyError: an encoder or weights name smp does not know.
        ValueError: the cached file is not JSON (the message names it).
    """
    setting = smp.encoders.encoders[encoder_name]["pretrained_settings"][weights]
    repo_id, revision = setting["repo_id"], setting.get("revision")
    path = _hf_cached(repo_id, "config.json", revision)
    if path is None and download and not _offline():
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, filename="config.json", revision=revision)
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: the hub config.json of {repo_id} is not JSON ({e})") from e


def smp_hub_config_missing(encoder_name: str, weights: str, local: Path | None = None) -> OfflineWeightsError:
    """The error for smp weights whose mean/std no file on this machine gives (smp 0.6: only the hub config.json
    has them): names the repository, the file to attach and where ``kitlib.data.normalization_for`` looked."""
    from huggingface_hub import constants

    setting = smp.encoders.encoders[encoder_name]["pretrained_settings"][weights]
    repo_id, revision = setting["repo_id"], setting.get("revision")
    beside = f" nor beside the local weights ({local if local.is_dir() else local.parent}/config.json)" if local else ""
    return OfflineWeightsError(
        f"encoder {encoder_name!r} weights {weights!r}: their mean/std are only in the hub config.json of "
        f"{repo_id} ({_hf_url(repo_id, 'config.json', revision)}), which is not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE}{beside}. Download it where there is internet and put it beside the weights file "
        "(a downloaded smp-hub folder holds it), or train online once (smp caches it with the weights)."
    )


def _require_cached_timm(name: str, what: str, call: str) -> None:
    """Mirror timm's source order (``_resolve_pretrained_source``): local file, then the hub, then the URL."""
    filenames = list(_PREFERRED_FILES)  # timm tries safetensors first
    if name.startswith("hf-hub:"):
        repo_id, revision, url = name[len("hf-hub:") :], None, None
        if "@" in repo_id:
            repo_id, revision = repo_id.split("@", 1)
    elif name.startswith("local-dir:"):
        return
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            raise ValueError(f"{what}: timm has no pretrained config for {name!r}")
        if cfg.file and Path(cfg.file).exists():
            return
        if "." not in name and cfg.tag:
            name = f"{name}.{cfg.tag}"  # show the default tag that timm would load
        repo_id, revision, url = cfg.hf_hub_id, None, cfg.url
        if repo_id and "@" in repo_id:
            repo_id, revision = repo_id.split("@", 1)
        if cfg.hf_hub_filename:
            filenames = [cfg.hf_hub_filename]
    if repo_id:
        if any(_hf_cached(repo_id, f, revision) for f in filenames):
            return
        needed = f"{filenames[0]} of the Hugging Face repo {repo_id}: {_hf_url(repo_id, filenames[0], revision)}"
        raise _offline_error(f"{what} weights {name!r}", needed, [f"hf://{repo_id}"], call)
    if url:
        if _torch_hub_file(url).is_file():
            return
        raise _offline_error(f"{what} weights {name!r}", url, [str(_torch_hub_file(url))], call)
    raise ValueError(f"{what}: timm's pretrained config for {name!r} names no weights source")


# --------------------------------------------------------------------------------------------------------------
# Local weight files
# --------------------------------------------------------------------------------------------------------------


def _as_weights_path(weights: str | os.PathLike | None) -> Path | None:
    """A local path, or None for no weights / a weights name. Strings are paths only when they look like one."""
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return Path(weights).expanduser()
    if not isinstance(weights, str):
        raise TypeError(f"weights must be None, a name or a path, got {type(weights).__name__}")
    looks_like_path = "/" in weights or "\\" in weights or weights.lower().endswith(WEIGHT_SUFFIXES)
    return Path(weights).expanduser() if looks_like_path or weights.startswith("~") else None


def _weights_file(path: Path) -> Path:
    """The weights file itself, or the one inside a folder (``model.safetensors`` first)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such weights file or folder")
    for name in _PREFERRED_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"{path}: the folder holds no weights file (model.safetensors, pytorch_model.bin or one "
            f"{'/'.join('*' + s for s in WEIGHT_SUFFIXES)})"
        )
    raise ValueError(f"{path}: several weights files, pass one of them: {[p.name for p in found]}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a weights file or a folder holding one, on the CPU.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load(weights_only=True)``. A
    checkpoint dict that wraps the weights under ``"state_dict"`` or ``"model"`` (timm's ``train.py``,
    Lightning, ``save_model``) is unwrapped (EMA copies such as ``"state_dict_ema"`` are not used), and
    ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) key prefixes are removed.

    Args:
        path: a file, or a folder with ``model.safetensors``, ``pytorch_model.bin`` or a single
            ``.pth``/``.pt``/``.bin``/``.safetensors`` file.
    Returns:
        Key -> tensor.
    Raises:
        FileNotFoundError: no such file or folder, or a folder without a weights file (the message names it).
        ValueError: the file cannot be read or does not hold a state dict (the message names it); a folder with
            several weights files.
    """
    file = _weights_file(Path(path).expanduser())
    try:
        if file.name.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(str(file), device="cpu")
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise ValueError(f"{file}: cannot read weights ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{file}: holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{file}: not a state dict, non-tensor entries {listing(bad)}")
    state_dict = {}
    for key, value in obj.items():
        while key.startswith(_STRIPPED_PREFIXES):
            key = key.split(".", 1)[1]
        state_dict[key] = value
    return state_dict


def load_encoder_weights(model: nn.Module, weights: str | os.PathLike) -> WeightsReport:
    """Load a local weights file into an smp model's encoder (strict for the encoder's keys).

    The file may hold the encoder's own state dict (``model.encoder.state_dict()``, smp-hub's
    ``model.safetensors``, a torchvision ResNet), a whole smp model's (``encoder.`` keys; the decoder and heads
    are ignored) or a timm classifier's for a ``tu-`` encoder (keys gain the encoder's ``model.`` prefix; the
    classifier head and stages a feature-only encoder drops are reported as unexpected). The key prefix that
    matches most encoder keys is used.

    Every encoder tensor must come from the file with the same shape, except first convolutions, which are
    adapted to the encoder's input channels, and classifier heads inside the encoder (DPT's ViT), which may
    differ in size and are then kept at init with a logged warning.

    Args:
        model: an smp model (``create_model``); its ``encoder`` is updated in place.
        weights: file or folder (see ``read_state_dict``).
    Returns:
        What was loaded, adapted, skipped and left out; also logged (warnings for anything not loaded).
    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unreadable file, or encoder keys missing from the file or of another shape (the message names
            the file and the first keys).
    """
    encoder = model.encoder
    return _load_into(encoder, weights, f"encoder {type(encoder).__name__}", _head_prefixes(encoder))


def load_classifier_weights(model: nn.Module, weights: str | os.PathLike) -> WeightsReport:
    """Load a local weights file into a timm classifier (strict for everything but the classifier head).

    Classifier-head tensors (``model.get_classifier()``) of another size, as in an ImageNet checkpoint loaded for
    fine-tuning on 5 classes, keep their initial values and are reported with a logged warning; so are head
    tensors the file lacks. First convolutions are adapted to ``in_chans``.

    Args:
        model: a timm model (``create_classifier``), updated in place.
        weights: file or folder (see ``read_state_dict``).
    Returns:
        What was loaded, adapted, skipped and left out.
    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unreadable file, or non-head keys missing from the file or of another shape.
    """
    return _load_into(model, weights, f"classifier {type(model).__name__}", _head_prefixes(model))


def _head_prefixes(module: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier heads of timm models inside ``module`` (``"fc."``, ``"model.head."``)."""
    prefixes = []
    for name, sub in module.named_modules():
        get_classifier = getattr(sub, "get_classifier", None)
        if not callable(get_classifier):
            continue
        heads = get_classifier()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        for head in heads:
            for sub_name, candidate in sub.named_modules():
                if candidate is head and sub_name:
                    prefixes.append(f"{name}.{sub_name}." if name else f"{sub_name}.")
    return tuple(prefixes)


def _align_keys(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Re-prefix the file's keys to match ``target`` best: strip ``encoder.`` and/or add ``model.``/``model.model.``.

    Returns:
        (aligned state dict, keys dropped because they lie outside the stripped prefix).
    """
    state_dict = {_LEGACY_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state_dict.items()}
    strips = [""] + (["encoder."] if any(k.startswith("encoder.") for k in state_dict) else [])
    best, best_hits = None, -1
    for strip in strips:
        for add in ("", "model.", "model.model."):
            aligned = {add + k[len(strip) :]: v for k, v in state_dict.items() if k.startswith(strip)}
            hits = sum(k in target for k in aligned)
            if hits > best_hits:
                best, best_hits = (aligned, strip), hits
    aligned, strip = best
    ignored = [k for k in state_dict if not k.startswith(strip)] if strip else []
    return aligned, ignored


def _load_into(
    module: nn.Module, weights: str | os.PathLike, what: str, head_prefixes: tuple[str, ...]
) -> WeightsReport:
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file or folder")
    file = _weights_file(path)
    target = module.state_dict()
    aligned, ignored = _align_keys(read_state_dict(file), target)
    from timm.models import adapt_input_conv

    loadable, skipped, adapted, mismatched = {}, [], [], []
    for key, value in aligned.items():
        if key not in target:
            continue
        want = target[key]
        if value.shape == want.shape:
            loadable[key] = value
        elif key.startswith(head_prefixes):
            skipped.append(f"{key} {tuple(value.shape)} -> {tuple(want.shape)}")
        elif _is_input_conv_change(value, want):
            loadable[key] = adapt_input_conv(want.shape[1], value.float(), base_chans=value.shape[1]).to(want.dtype)
            adapted.append(f"{key} {tuple(value.shape)} -> {tuple(want.shape)}")
        else:
            mismatched.append(f"{key} {tuple(value.shape)} -> {tuple(want.shape)}")
    missing = [k for k in target if k not in aligned]
    fatal = [k for k in missing if not k.startswith(head_prefixes) and not k.endswith(_OPTIONAL_KEY_SUFFIXES)]
    if fatal or mismatched:
        raise ValueError(
            f"{file}: weights do not fit the {what}: {len(fatal)} of its {len(target)} keys missing from the file "
            f"({listing(fatal)}), {len(mismatched)} of another shape ({listing(mismatched)}); the module's keys look "
            f"like {listing(list(target), 3)}, the file's like {listing(list(aligned), 3)}"
        )
    # nn.Module's loader, not the encoder class's override: the head-key popping and renames it does are done above
    nn.Module.load_state_dict(module, loadable, strict=False)
    report = WeightsReport(
        source=str(file),
        loaded=sorted(loadable),
        missing=missing,
        unexpected=[k for k in aligned if k not in target],
        skipped=skipped,
        adapted=adapted,
        ignored=ignored,
    )
    if report.skipped or report.missing or report.unexpected:
        log.warning("weights for the %s: %s", what, report.summary())
    else:
        log.info("weights for the %s: %s", what, report.summary())
    return report


def _is_input_conv_change(value: torch.Tensor, want: torch.Tensor) -> bool:
    """An RGB input convolution's weight for a module with other input channels (only dim 1 differs)."""
    same_rest = value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]
    return value.ndim == want.ndim == 4 and value.shape[1] == 3 and same_rest
