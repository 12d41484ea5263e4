"""The bundle's model channel (the build side of ``kitlib.kaggle``): the artifacts of a run as a Kaggle Model.

``python -m kitlib.kaggle bundle --channel model`` writes, beside the dataset folder that carries the code and the
wheels, ``<bundle>-model/``: the artifacts inference reads (each fold's ``best.pt``, float16 unless ``--weights fp32``,
its ``config.json``, ``postprocess.json``, ``weights.json``, ...) and their manifest. ``push`` then calls
``upload_model``: ``kagglehub.model_upload`` sends the folder as a new version of the model variation
``<user>/<model>/pyTorch/<variation>`` (kagglehub creates the model, then the variation, then a version on each
later upload), the version number is read back from Kaggle (``GetModelInstance``) and recorded in the bundle's
manifest, and ``pin_kernel`` writes ``<handle>/<version>`` into the kernel's ``model_sources``. Inside the kernel
Kaggle mounts it at ``/kaggle/input/<model>/pytorch/<variation>/<version>``, where ``kitlib.kaggle.bundle_artifacts``
finds it.

A variation per experiment (or ensemble), versions for its reruns: how Kaggle Models is meant to be used (and how
top Kagglers now share weights between notebooks; https://www.kaggle.com/docs/models).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kitlib.io import read_json, write_json
from kitlib.kaggle import MANIFEST, parse_model_handle
from kitlib.kaggle_bundle import Bundle
from kitlib.kaggle_kernel import KERNEL_METADATA

__all__ = ["DEFAULT_MODEL_LICENSE", "ModelUploadError", "model_version", "pin_kernel", "unpinned", "upload_model"]

log = logging.getLogger(__name__)

#: The license of a new model variation (Kaggle's model license names: "Apache 2.0", "MIT", "CC0: Public Domain", ...).
DEFAULT_MODEL_LICENSE = "Apache 2.0"


class ModelUploadError(RuntimeError):
    """kagglehub could not upload the model or Kaggle refused it; the message is one line."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _kagglehub():
    try:
        import kagglehub
    except ImportError as e:
        raise ModelUploadError("kagglehub is not installed: pip install kagglehub (in requirements.txt)") from e
    return kagglehub


def model_version(handle: str, missing_ok: bool = False) -> int:
    """The latest version number of a model variation on Kaggle (kagglesdk's ``GetModelInstance``, through
    kagglehub's client and credentials).

    Args:
        handle: ``owner/model/framework/variation`` (a version in it is ignored).
        missing_ok: answer 0 when the model or the variation does not exist yet (HTTP 404).
    Returns:
        The version number (>= 1; 0 with ``missing_ok``).
    Raises:
        ModelUploadError: Kaggle could not be asked, or has no version of the variation.
    """
    _kagglehub()
    from kagglehub.clients import build_kaggle_client
    from kagglehub.handle import parse_model_handle as hub_handle
    from kagglesdk.models.types.model_api_service import ApiGetModelInstanceRequest

    owner, model, framework, variation, _ = parse_model_handle(handle)
    request = ApiGetModelInstanceRequest()
    request.owner_slug, request.model_slug, request.instance_slug = owner, model, variation
    request.framework = hub_handle(f"{owner}/{model}/{framework}/{variation}").framework_enum()
    try:
        with build_kaggle_client() as client:
            instance = client.models.model_api_client.get_model_instance(request)
    except Exception as e:  # requests, kagglesdk and kagglehub errors of many types
        if missing_ok and getattr(getattr(e, "response", None), "status_code", None) == 404:
            return 0
        raise ModelUploadError(f"cannot read the version of {handle} ({_one_line(e)})") from e
    if not instance.version_number and not missing_ok:
        raise ModelUploadError(f"Kaggle reports no version of {handle}; pin one with kernel --model-version N")
    return int(instance.version_number)


def upload_model(
    bundle_dir: str | os.PathLike, version_notes: str = "kitlib bundle", license_name: str = DEFAULT_MODEL_LICENSE
) -> int:
    """Upload a model-channel bundle's model folder with ``kagglehub.model_upload`` as a new version, and record the
    version in the bundle's ``kit-bundle.json``.

    ``model_upload`` returns nothing, so the version is asked of Kaggle before and after the upload: the one after,
    unless Kaggle still reports the one before (the new version still processing), then the one before + 1.

    Args:
        bundle_dir: a folder written by ``bundle(..., channel="model")``.
        version_notes: the version's notes; license_name: used when the variation is created.
    Returns:
        The version number Kaggle gave the upload.
    Raises:
        ValueError: a dataset-channel bundle; FileNotFoundError: its model folder is missing.
        ModelUploadError: kagglehub is missing, the network is down, or Kaggle refused (one line).
    """
    info = Bundle.read(bundle_dir)
    if not info.model:
        raise ValueError(f"{bundle_dir}: the bundle carries its weights in the dataset; bundle with --channel model")
    folder, handle = Path(info.model["path"]), info.model["handle"]
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}; write the bundle again (bundle --channel model)")
    hub = _kagglehub()
    before = model_version(handle, missing_ok=True)
    log.info("kagglehub.model_upload(%r, %s)", handle, folder)
    try:
        hub.model_upload(handle, str(folder), license_name=license_name, version_notes=version_notes)
    except Exception as e:  # requests, kagglesdk and kagglehub errors of many types
        raise ModelUploadError(f"kagglehub model_upload {handle} failed ({_one_line(e)})") from e
    version = model_version(handle, missing_ok=True)
    if version <= before:
        log.warning("Kaggle still reports version %d of %s after the upload; pinning %d", version, handle, before + 1)
        version = before + 1
    manifest = read_json(info.path / MANIFEST)
    manifest["model"]["version"] = version
    write_json(info.path / MANIFEST, manifest)
    log.info("model %s/%d uploaded", handle, version)
    return version


def _base(source: str) -> str:
    owner, model, framework, variation, _ = parse_model_handle(source)
    return f"{owner}/{model}/{framework.lower()}/{variation}"


def pin_kernel(kernel_dir: str | os.PathLike, handle: str, version: int) -> str:
    """Pin the kernel's ``model_sources`` entry of ``handle`` (unversioned or another version) to ``version``.

    Args:
        kernel_dir: a folder written by ``kitlib.kaggle_kernel.kernel``.
        handle: ``owner/model/framework/variation``; version: >= 1.
    Returns:
        The pinned source ``handle/version`` (added when the kernel did not list the model).
    Raises:
        FileNotFoundError: no ``kernel-metadata.json``.
    """
    path = Path(kernel_dir) / KERNEL_METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{kernel_dir}: no {KERNEL_METADATA}")
    meta = read_json(path)
    owner, model, framework, variation, _ = parse_model_handle(handle)
    pinned = f"{owner}/{model}/{framework}/{variation}/{int(version)}"
    sources = [s for s in meta.get("model_sources", []) if _base(s) != _base(handle)]
    meta["model_sources"] = [pinned, *sources]
    write_json(path, meta)
    return pinned


def unpinned(kernel_dir: str | os.PathLike) -> list[str]:
    """The kernel's ``model_sources`` without a version (Kaggle needs ``.../<version>``)."""
    meta = read_json(Path(kernel_dir) / KERNEL_METADATA)
    return [s for s in meta.get("model_sources", []) if parse_model_handle(s)[4] is None]
