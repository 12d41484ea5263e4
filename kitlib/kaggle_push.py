"""Upload a bundle and push a kernel with the ``kaggle`` CLI, and the command line of the build tool:
``python -m kitlib.kaggle bundle|kernel|push`` (``kitlib.kaggle_bundle``, ``kitlib.kaggle_kernel``; the loop's commands,
estimate|logs|submit|score|loop, are added by ``kitlib.kaggle_loop``, which ``python -m kitlib.kaggle`` runs).

Three commands take a run's artifacts to a Kaggle kernel::

    python -m kitlib.kaggle bundle --exp clouds --user me        # runs/kaggle/kit-clouds-bundle/ (a dataset folder)
    python -m kitlib.kaggle kernel --bundle runs/kaggle/kit-clouds-bundle --competition understanding_cloud_organization
    python -m kitlib.kaggle push --bundle runs/kaggle/kit-clouds-bundle --kernel runs/kaggle/kit-clouds-submit

``push`` calls the ``kaggle`` CLI (in requirements.txt; ``pip install -e '.[kaggle]'`` in the checkout) and returns its
answers; a missing CLI, missing credentials, a network failure or a Kaggle error each end in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kitlib.io import read_json
from kitlib.kaggle import MANIFEST
from kitlib.kaggle_bundle import (
    CHANNELS,
    DATASET_METADATA,
    DEFAULT_PACKAGES,
    Bundle,
    _last_line,
    bundle,
    kaggle_credentials,
)
from kitlib.kaggle_estimate import add_estimate_args, print_estimate
from kitlib.kaggle_kernel import COMPETITIONS, KERNEL_METADATA, MACHINE_SHAPES, PINNING_TYPES, kernel
from kitlib.kaggle_models import DEFAULT_MODEL_LICENSE, ModelUploadError, pin_kernel, unpinned, upload_model
from kitlib.kaggle_weights import HALF_CHECK_IMAGES, WEIGHTS, HalfCheck
from kitlib.params import ParameterError

__all__ = ["KaggleError", "PushResult", "main", "push"]

log = logging.getLogger(__name__)


class KaggleError(RuntimeError):
    """A ``kaggle`` CLI call that could not run or that Kaggle refused; the message is one line."""


@dataclass
class PushResult:
    """What ``push`` ran: each ``kaggle`` command line and its output (Kaggle's answer: URLs, status)."""

    calls: list[tuple[list[str], str]] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(f"$ {' '.join(cmd)}\n{out.strip()}" for cmd, out in self.calls)


_NETWORK = re.compile(
    r"ConnectionError|Max retries exceeded|Failed to establish a new connection|Name or service not known|"
    r"Temporary failure in name resolution|NameResolutionError|Network is unreachable|timed out|ProxyError",
    re.I,
)
_REFUSED_AUTH = re.compile(r"\b401\b|Unauthorized|Authentication required|Invalid credentials", re.I)
_FAILED = re.compile(r"\berror\s*:", re.I)  # the CLI's failures: "Kernel push error: ...", "... error: ..."


def _kaggle_cli() -> list[str]:
    """The ``kaggle`` executable: on PATH or beside this interpreter (a virtual environment not activated)."""
    found = shutil.which("kaggle") or shutil.which("kaggle", path=str(Path(sys.executable).parent))
    if not found:
        raise KaggleError(
            "the kaggle CLI is not installed: pip install kaggle six (or pip install -e '.[kaggle]' here)"
        )
    return [found]


def _call(cli: list[str], args: list[str], result: PushResult) -> tuple[int, str]:
    """Run ``kaggle ARGS``, logging its output line by line as it comes (uploads take a while); record the command
    and its output in ``result``."""
    cmd = [*cli, *args]
    log.info("$ %s", " ".join(cmd))
    lines = []
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as p:
            for line in p.stdout:
                log.info("  %s", line.rstrip())
                lines.append(line)
    except OSError as e:
        raise KaggleError(f"kaggle {' '.join(args[:2])} could not run: {e}") from e
    out = "".join(lines).strip()
    result.calls.append(([Path(cmd[0]).name, *args], out))
    return p.returncode, out


def _check(code: int, out: str, args: list[str]) -> str:
    """``out`` when the call worked, else a one-line KaggleError: network, credentials, or Kaggle's error."""
    what = f"kaggle {' '.join(args[:2])}"
    for line in out.splitlines():
        if _NETWORK.search(line):
            raise KaggleError(f"cannot reach Kaggle ({what}: {line.strip()[:200]}); check the network or proxy")
    if _REFUSED_AUTH.search(out):
        raise KaggleError(f"Kaggle refused the credentials from {kaggle_credentials()} ({what})")
    if code != 0 or _FAILED.search(out):
        raise KaggleError(f"{what} failed (exit {code}): {_last_line(out)[:300]}")
    return out


def push(
    bundle_dir: str | os.PathLike | None = None,
    kernel_dir: str | os.PathLike | None = None,
    *,
    message: str = "kitlib bundle",
    dataset_mode: str = "auto",
    public: bool = False,
    wait: float = 600.0,
    poll: float = 10.0,
    model_license: str = DEFAULT_MODEL_LICENSE,
) -> PushResult:
    """Upload the bundle as a Kaggle dataset and push the kernel, with the ``kaggle`` CLI.

    Runs ``kaggle datasets create -p BUNDLE -r zip`` (a new dataset) or ``kaggle datasets version -p BUNDLE -m
    MESSAGE -r zip`` (``-r zip``: the bundle's folders are uploaded as archives that Kaggle unpacks), waits until
    ``kaggle datasets status`` says ready, then ``kaggle kernels push -p KERNEL``. A model-channel bundle first
    uploads its weights as a new model version (``kitlib.kaggle_models.upload_model``, kagglehub) and pins that
    version in the kernel's ``model_sources``.

    Args:
        bundle_dir: a ``bundle`` folder; None: no dataset upload.
        kernel_dir: a ``kernel`` folder; None: no kernel push.
        message: the dataset version notes.
        dataset_mode: "auto" (``kaggle datasets status`` decides create or version), "create", "version".
        public: create the dataset public (default private).
        wait: seconds to wait for the dataset to be ready before pushing the kernel (0: do not wait).
        poll: seconds between status checks.
        model_license: the license of a model variation created by the upload (model channel).
    Returns:
        ``PushResult`` with each command and Kaggle's answer.
    Raises:
        KaggleError: one line: the CLI is missing, no credentials, the network is down, or Kaggle refused a step.
        FileNotFoundError: a folder without its metadata file; ValueError: an unknown ``dataset_mode``.
    """
    if dataset_mode not in ("auto", "create", "version"):
        raise ValueError(f"dataset_mode must be auto, create or version, got {dataset_mode!r}")
    if bundle_dir is None and kernel_dir is None:
        raise ValueError("nothing to push: give a bundle folder, a kernel folder or both")
    for folder, name in ((bundle_dir, DATASET_METADATA), (kernel_dir, KERNEL_METADATA)):
        if folder is not None and not (Path(folder) / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}")
    cli = _kaggle_cli()
    if kaggle_credentials() is None:
        raise KaggleError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or put kaggle.json "
            "from https://www.kaggle.com/settings/api in ~/.kaggle/"
        )
    result = PushResult()
    _push_model(bundle_dir, kernel_dir, message, model_license, result)
    if bundle_dir is not None:
        dataset_id = read_json(Path(bundle_dir) / DATASET_METADATA)["id"]
        status = ["datasets", "status", dataset_id]
        mode = dataset_mode
        if mode == "auto":
            code, out = _call(cli, status, result)
            missing = code != 0 and re.search(r"\b404\b|not found", out, re.I) and not _NETWORK.search(out)
            if not missing:
                _check(code, out, status)
            mode = "create" if missing else "version"
        if mode == "create":
            args = ["datasets", "create", "-p", str(bundle_dir), "-r", "zip", *(["--public"] if public else [])]
        else:
            args = ["datasets", "version", "-p", str(bundle_dir), "-m", message, "-r", "zip"]
        _check(*_call(cli, args, result), args)
        deadline = time.monotonic() + wait
        while wait > 0:
            out = _check(*_call(cli, status, result), status)
            if "ready" in out.lower():
                break
            if out.strip().lower() == "error":
                raise KaggleError(f"{dataset_id}: Kaggle could not process the upload (datasets status: error)")
            if time.monotonic() > deadline:
                log.warning("%s is not ready after %.0f s (%s); the kernel may see the previous version", dataset_id,
                            wait, _last_line(out))  # fmt: skip
                break
            time.sleep(poll)
    if kernel_dir is not None:
        args = ["kernels", "push", "-p", str(kernel_dir)]
        _check(*_call(cli, args, result), args)
    return result


def _push_model(bundle_dir, kernel_dir, message: str, license_name: str, result: PushResult) -> None:
    """The model channel's part of ``push``: upload the weights (kagglehub) and pin the version in the kernel;
    refuse a kernel whose model sources have no version (the dataset channel: nothing)."""
    bundle = Bundle.read(bundle_dir) if bundle_dir is not None and (Path(bundle_dir) / MANIFEST).is_file() else None
    if bundle is not None and bundle.model:
        try:
            version = upload_model(bundle_dir, message, license_name)
        except ModelUploadError as e:
            if _NETWORK.search(str(e)):
                raise KaggleError(f"cannot reach Kaggle ({e}); check the network or proxy") from e
            raise KaggleError(str(e)) from e
        result.calls.append((["kagglehub", "model_upload", bundle.model["handle"]], f"version {version}"))
        if kernel_dir is not None:
            pin_kernel(kernel_dir, bundle.model["handle"], version)
    if kernel_dir is not None and (bad := unpinned(kernel_dir)):
        raise KaggleError(f"{kernel_dir}: model sources without a version {bad}; push the bundle with "
                          "it (uploads and pins) or write the kernel with --model-version N")  # fmt: skip


def _read_package_file(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def _parser(extra=None) -> argparse.ArgumentParser:
    """The command line; ``extra(subparsers)`` adds more commands (``kitlib.kaggle_loop``'s)."""
    p = argparse.ArgumentParser(
        prog="python -m kitlib.kaggle",
        description="Kaggle code competitions: bundle a run as a dataset, write the submission kernel, estimate its "
        "run time, push both, follow the kernel, submit it and record the score beside the CV.",
        epilog="Example: bundle --exp demo --user me; kernel --bundle runs/kaggle/kit-demo-bundle --competition SLUG; "
        "push --bundle runs/kaggle/kit-demo-bundle --kernel runs/kaggle/kit-demo-submit",
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bundle", help="write the dataset folder: wheels, checkpoints, postprocess/weights JSON")
    b.add_argument("--exp", default="", help="experiment: artifacts/<exp>/fold<k>/best.pt")
    b.add_argument("--ensemble", default="", help="ensemble: artifacts/<ensemble>/weights.json (30_ensemble)")
    b.add_argument("--artifacts-root", default="artifacts", help="where the experiments live (default: artifacts)")
    b.add_argument("--folds", default="", help="folds of --exp, e.g. 0,1,2 (default: every fold with best.pt)")
    always = ", ".join(DEFAULT_PACKAGES)
    b.add_argument("--packages", action="append", default=[],
                   help=f"more wheels: name or name==version, comma-separated (always: {always})")  # fmt: skip
    b.add_argument("--packages-file", help="a text file with one package per line (# comments)")
    b.add_argument("--wheel-cache", help="downloaded wheels (default: $KIT_WHEEL_CACHE or ~/.cache/kitlib/wheels)")
    b.add_argument("--license", default="CC0-1.0", help="dataset license name (default: CC0-1.0)")
    b.add_argument("--repo", help="kitlib checkout to build the wheel from (default: this repository)")
    b.add_argument(
        "--channel",
        choices=CHANNELS,
        default="dataset",
        help="where the weights travel: in the dataset, or as a Kaggle Model (kagglehub; push uploads it)",
    )
    b.add_argument("--weights", choices=WEIGHTS, default="fp16", help="best.pt parameters stored as (default: fp16)")
    b.add_argument(
        "--check-images",
        type=int,
        default=HALF_CHECK_IMAGES,
        help=f"OOF images predicted with fp32 and fp16 weights (default {HALF_CHECK_IMAGES}; 0: no check)",
    )
    b.add_argument("--model-slug", help="model channel: the Kaggle model (default: kit-<preset>)")
    b.add_argument("--variation", help="model channel: the variation (default: the experiment or ensemble)")
    k = sub.add_parser("kernel", help="write the kernel folder: 40_submit.ipynb and kernel-metadata.json")
    k.add_argument("--bundle", required=True, help="the folder written by the bundle command")
    k.add_argument("--competition", help=f"competition slug (default per preset: {COMPETITIONS})")
    k.add_argument("--notebook", default="notebooks/40_submit.py", help="the jupytext notebook to run")
    k.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p tta flips -p batch_size 16")  # fmt: skip
    k.add_argument("--public", action="store_true", help="make the kernel public (default: private)")
    k.add_argument("--gpu", action="store_true", help="enable a GPU (Kaggle's default GPU)")
    k.add_argument("--accelerator", help=f"machine_shape ({', '.join(MACHINE_SHAPES)}; another name warns and is "
                   "written as given); implies --gpu for GPUs")  # fmt: skip
    k.add_argument("--pin-image", choices=PINNING_TYPES,
                   help="docker_image_pinning_type: original (the kernel's first image) or latest")  # fmt: skip
    k.add_argument("--dataset", action="append", default=[], help="another dataset source user/slug (repeatable)")
    k.add_argument("--model", action="append", default=[], help="a Kaggle model source (repeatable)")
    k.add_argument("--model-version", type=int, help="model channel: the version to pin (default: push pins it)")
    for q in (b, k):
        q.add_argument("--user", help="Kaggle user name (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
        q.add_argument("--slug", help="dataset/kernel slug (default: kit-<name>-bundle / kit-<name>-submit)")
        q.add_argument("--title", help="dataset/kernel title (default: the slug with spaces)")
        q.add_argument("--out", help="output folder (default: runs/kaggle/<slug>)")
    s = sub.add_parser("push", help="upload the bundle (kaggle datasets create/version) and push the kernel")
    s.add_argument("--bundle", help="bundle folder to upload")
    s.add_argument("--kernel", help="kernel folder to push")
    s.add_argument("-m", "--message", default="kitlib bundle", help="dataset version notes")
    s.add_argument("--dataset-mode", choices=("auto", "create", "version"), default="auto",
                   help="create a new dataset or a new version (auto: ask Kaggle)")  # fmt: skip
    s.add_argument("--public", action="store_true", help="create the dataset public (default: private)")
    s.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the dataset to be ready (600)")
    s.add_argument(
        "--model-license",
        default=DEFAULT_MODEL_LICENSE,
        help=f"model channel: license of a new variation (default: {DEFAULT_MODEL_LICENSE})",
    )
    s.add_argument("--no-estimate", action="store_true", help="do not time the kernel's inference before pushing")
    add_estimate_args(s)
    if extra is not None:
        extra(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kitlib.kaggle bundle|kernel|push ...``; prints what was written (and its size) or Kaggle's
    answers. Errors print one line ``error: ...`` and exit with status 1.

    Returns:
        0 on success.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "bundle":
            packages = [*DEFAULT_PACKAGES, *(x for arg in args.packages for x in arg.split(","))]
            if args.packages_file:
                packages += _read_package_file(args.packages_file)
            folds = [int(x) for x in args.folds.split(",") if x.strip()] or None
            result = bundle(
                args.exp, args.ensemble, artifacts_root=args.artifacts_root, folds=folds, out_dir=args.out,
                user=args.user, slug=args.slug, title=args.title, license_name=args.license, packages=packages,
                wheel_cache=args.wheel_cache, repo=args.repo, weights=args.weights, channel=args.channel,
                model_slug=args.model_slug, variation=args.variation, check_images=args.check_images,
            )  # fmt: skip
            print(f"bundle: {result.summary()}")
            if result.weights.get("check"):
                print(HalfCheck(**result.weights["check"]).summary())
            print(f"wheels: {', '.join(result.wheels)}")
            print(f"next: python -m kitlib.kaggle kernel --bundle {result.path} [--competition SLUG]")
        elif args.command == "kernel":
            result = kernel(
                args.bundle, args.competition, out_dir=args.out, user=args.user, slug=args.slug, title=args.title,
                notebook=args.notebook, params=dict(args.param), is_private=not args.public, enable_gpu=args.gpu,
                accelerator=args.accelerator, datasets=args.dataset, models=args.model,
                docker_image_pinning_type=args.pin_image,
                model_version=args.model_version,
            )  # fmt: skip
            print(f"kernel: {result.path} ({result.kernel_id}, {result.code_file})")
            print(f"next: python -m kitlib.kaggle push --bundle {args.bundle} --kernel {result.path}")
        else:
            if args.kernel and not args.no_estimate:
                print_estimate(args.kernel, args)
            result = push(
                args.bundle, args.kernel, message=args.message, dataset_mode=args.dataset_mode, public=args.public,
                wait=args.wait, model_license=args.model_license,
            )  # fmt: skip
            for cmd, out in result.calls:
                print(f"{' '.join(cmd[:3])}: {_last_line(out)}")
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, ParameterError) as e:  # KaggleError: Runtime
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
