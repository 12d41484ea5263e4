"""The whole Kaggle loop from one command, and the command line of ``python -m kitlib.kaggle``: the build commands
of ``kitlib.kaggle_push`` (bundle, kernel, push) and the loop's (estimate, logs, submit, score, loop)::

    python -m kitlib.kaggle estimate --kernel runs/kaggle/kit-clouds-submit           # will it fit the time limit?
    python -m kitlib.kaggle push --bundle runs/kaggle/kit-clouds-bundle --kernel runs/kaggle/kit-clouds-submit
    python -m kitlib.kaggle logs --kernel runs/kaggle/kit-clouds-submit --follow      # until COMPLETE or ERROR
    python -m kitlib.kaggle submit --kernel runs/kaggle/kit-clouds-submit --version 3 # + score + record
    python -m kitlib.kaggle loop --bundle runs/kaggle/kit-clouds-bundle --kernel runs/kaggle/kit-clouds-submit

``loop`` runs them in order: the estimate (a warning when the projection passes the limit), ``push``, following the
kernel's session, ``kaggle competitions submit`` of the pushed version's ``submission.csv``, the public score read back
and the row in ``artifacts/submissions.csv`` (``kitlib.kaggle_submit.record_submission``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kitlib import kaggle_push
from kitlib.io import project_path
from kitlib.kaggle_bundle import _last_line
from kitlib.kaggle_estimate import add_estimate_args, estimate_from_args, estimate_runtime, print_estimate
from kitlib.kaggle_kernel import COMPETITIONS, KernelInfo, kernel_info
from kitlib.kaggle_submit import (
    ABS_TOL,
    REL_TOL,
    KernelRun,
    follow,
    pushed_version,
    read_cv,
    record_submission,
    submit,
    wait_for_score,
)
from kitlib.params import ParameterError
from kitlib.stages import SubmitConfig

__all__ = ["LOOP_COMMANDS", "follow_kernel", "main", "submit_and_record"]

LOOP_COMMANDS = ("estimate", "logs", "submit", "score", "loop")


def _competition(info: KernelInfo, competition: str | None) -> str:
    found = competition or info.competition or COMPETITIONS.get(info.preset, "")
    if not found:
        raise ValueError(f"{info.kernel_id}: no competition known; pass --competition SLUG")
    return found


def follow_kernel(info: KernelInfo, poll: float, timeout: float, out: str | None = None) -> KernelRun:
    """``follow`` with the log saved to ``out``, else ``<kernel folder>/kernel.log`` (a kernel id alone: not saved).

    Raises:
        KaggleError: as ``follow``; the session ended other than COMPLETE (its failure message and the log's last
            lines in the message).
    """
    log_path = out or (info.folder / "kernel.log" if info.folder else None)
    run = follow(info.kernel_id, poll=poll, timeout=timeout, log_path=log_path)
    if not run.ok:
        tail = " | ".join(run.log[-3:])
        failure = run.failure_message or "no failure message"
        where = run.log_path or "(not saved)"
        raise kaggle_push.KaggleError(
            f"kernel {info.kernel_id} ended {run.status}: {failure}; log {where}: ... {tail}"[:600]
        )
    return run


def submit_and_record(
    info: KernelInfo,
    version: int,
    args: argparse.Namespace,
    ref: int | None = None,
) -> str:
    """Submit ``version`` (unless ``ref`` names a submission already made), wait for its public score and append it
    to the record (``args.record``, default ``<artifacts_root>/submissions.csv``) beside the run's CV; returns the
    line to print. ``args``: the ``submit`` / ``score`` / ``loop`` command's options.

    Raises:
        KaggleError: as ``submit`` and ``wait_for_score``; ValueError: no competition known.
    """
    competition = _competition(info, args.competition)
    message = args.message or f"kitlib {info.name or info.kernel_id} v{version}"
    if ref is None:
        ref = submit(competition, info.kernel_id, version, file_name=args.file, message=message)
        print(f"submitted {info.kernel_id} v{version} to {competition}" + (f" (ref {ref})" if ref else ""))
    if getattr(args, "no_wait", False):
        return f"not waiting for the score: python -m kitlib.kaggle score --kernel {args.kernel} --ref {ref}"
    row = wait_for_score(competition, ref=ref, message=None if ref else message, poll=args.poll,
                         timeout=args.score_timeout)  # fmt: skip
    root = project_path(args.artifacts_root)  # relative: from the repository root, as the stages take it
    cv = read_cv(root, info.name)
    record = project_path(args.record) if args.record else root / "submissions.csv"
    table = record_submission(record, name=info.name, competition=competition, kernel=info.kernel_id, version=version,
                              row=row, cv=cv, abs_tol=args.abs_tol, rel_tol=args.rel_tol)  # fmt: skip
    last = table.iloc[-1]
    cv_text = "no cv.json" if cv is None else f"CV {cv:.4f}"
    flag = "  FLAGGED: CV and public score diverge" if last["flagged"] == "True" else ""
    return f"public score {row['publicScore'] or '(hidden)'} ({cv_text}) -> {record}{flag}"


def _add_commands(sub) -> None:
    e = sub.add_parser("estimate", help="time the kernel's inference locally and project it onto the hidden test set")
    e.add_argument("--kernel", help="a kernel folder (its notebook's parameters); or give --exp/--ensemble/--preset")
    e.add_argument("--exp", default="demo", help="without --kernel: the experiment (40_submit's exp)")
    e.add_argument("--ensemble", default="", help="without --kernel: the ensemble")
    e.add_argument("--preset", default="demo", help="without --kernel: the preset (or a preset file)")
    e.add_argument("--competition", help="competition slug (its test set size and time limit)")
    e.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="without --kernel: a 40_submit parameter, e.g. -p tta flips -p n_folds 3")  # fmt: skip
    add_estimate_args(e)
    g = sub.add_parser("logs", help="a pushed kernel's status and log; --follow: until it completes or fails")
    g.add_argument("--kernel", required=True, help="a kernel folder or user/slug")
    g.add_argument("-f", "--follow", action="store_true", help="poll the status and the log until the session ends")
    g.add_argument("--out", help="save the log here (default with --follow: <kernel folder>/kernel.log)")
    for q in (g,):
        q.add_argument("--poll", type=float, default=30.0, help="seconds between polls (30)")
        q.add_argument("--timeout", type=float, default=12 * 3600.0, help="give up after seconds (12 h)")
    s = sub.add_parser("submit", help="submit a kernel version's output to its competition, read back the score")
    s.add_argument("--kernel", required=True, help="a kernel folder or user/slug")
    s.add_argument("-v", "--version", type=int, required=True, help="the kernel version (kernels push prints it)")
    c = sub.add_parser("score", help="wait for a submission's score and record it beside the run's CV")
    c.add_argument("--kernel", required=True, help="a kernel folder or user/slug")
    c.add_argument("-v", "--version", type=int, help="the kernel version that was submitted")
    c.add_argument("--ref", type=int, required=True, help="the submission's ref (submit prints it)")
    lp = sub.add_parser("loop", help="estimate, push, follow the kernel, submit, score, record: the whole loop")
    lp.add_argument("--bundle", help="bundle folder to upload (omit: the kernel only)")
    lp.add_argument("--kernel", required=True, help="kernel folder to push")
    lp.add_argument("--dataset-mode", choices=("auto", "create", "version"), default="auto")
    lp.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the dataset to be ready (600)")
    lp.add_argument("--no-estimate", action="store_true", help="skip the runtime estimate")
    lp.add_argument("--no-submit", action="store_true", help="stop after the kernel ran")
    lp.add_argument("--follow-poll", type=float, default=30.0, help="seconds between kernel status polls (30)")
    lp.add_argument("--timeout", type=float, default=12 * 3600.0, help="give up following after seconds (12 h)")
    add_estimate_args(lp)
    for q in (s, c, lp):
        q.add_argument("--competition", help="competition slug (default: the kernel's)")
        q.add_argument("-m", "--message", help="submission description (default: kitlib <run> v<version>)")
        q.add_argument("--file", default="submission.csv", help="the kernel's output file to submit")
        if q is not c:
            q.add_argument("--no-wait", action="store_true", help="do not wait for the score")
        q.add_argument("--poll", type=float, default=60.0, help="seconds between score polls (60)")
        q.add_argument("--score-timeout", type=float, default=3 * 3600.0, help="give up waiting after seconds (3 h)")
        q.add_argument("--record", help="the record of submissions (default: <artifacts-root>/submissions.csv)")
        q.add_argument("--abs-tol", type=float, default=ABS_TOL, help=f"flag |CV - LB| over this ({ABS_TOL})")
        q.add_argument("--rel-tol", type=float, default=REL_TOL, help=f"... or over this x |CV| ({REL_TOL})")
        if q is not lp:
            q.add_argument("--artifacts-root", default="artifacts", help="where the run's cv.json is (artifacts)")


def _estimate(args: argparse.Namespace) -> str:
    if args.kernel:
        return estimate_from_args(args.kernel, args).summary()
    cfg = SubmitConfig.from_notebook(exp=args.exp, ensemble=args.ensemble, preset=args.preset, device=args.device,
                                     artifacts_root=args.artifacts_root,
                                     data_dir=args.data_dir or f"data/{args.preset}", **dict(args.param))  # fmt: skip
    competition = args.competition or COMPETITIONS.get(args.preset)
    est = estimate_runtime(cfg, n_images=args.images, competition=competition, test_images=args.test_images,
                           time_limit_h=args.time_limit, gpu_factor=args.gpu_factor)  # fmt: skip
    return est.summary()


def _loop(args: argparse.Namespace) -> None:
    info = kernel_info(args.kernel)
    if not args.no_estimate:
        print_estimate(args.kernel, args)
    result = kaggle_push.push(args.bundle, args.kernel, message=args.message or "kitlib bundle",
                              dataset_mode=args.dataset_mode, wait=args.wait)  # fmt: skip
    for cmd, out in result.calls:
        print(f"{' '.join(cmd[:3])}: {_last_line(out)}")
    version = pushed_version(result)
    if version is None:
        raise kaggle_push.KaggleError(f"kaggle kernels push printed no version for {info.kernel_id}")
    run = follow_kernel(info, args.follow_poll, args.timeout)
    print(f"kernel {info.kernel_id} v{version}: {run.status}; log {run.log_path}")
    if not args.no_submit:
        print(submit_and_record(info, version, args))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kitlib.kaggle COMMAND ...``: the build commands (``kitlib.kaggle_push.main``) and the loop's.
    Errors print one line ``error: ...`` and exit with status 1.

    Returns:
        0 on success.
    """
    args = kaggle_push._parser(_add_commands).parse_args(argv)
    if args.command not in LOOP_COMMANDS:
        return kaggle_push.main(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "estimate":
            print(f"estimate: {_estimate(args)}")
        elif args.command == "logs":
            info = kernel_info(args.kernel)
            if args.follow:
                run = follow_kernel(info, args.poll, args.timeout, args.out)
                print(f"kernel {info.kernel_id}: {run.status}; log {run.log_path}")
            else:
                run = follow(info.kernel_id, once=True, log_path=args.out)
                failure = f" ({run.failure_message})" if run.failure_message else ""
                print(f"kernel {info.kernel_id}: {run.status}{failure}")
        elif args.command == "submit":
            print(submit_and_record(kernel_info(args.kernel), args.version, args))
        elif args.command == "score":
            print(submit_and_record(kernel_info(args.kernel), args.version, args, ref=args.ref))
        else:
            _loop(args)
    except (FileNotFoundError, ValueError, RuntimeError, ParameterError) as e:  # KaggleError: a RuntimeError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
