"""The rest of the Kaggle loop after ``push``: follow the kernel until it ends, submit its output to the competition,
read the score back and record it beside the run's CV (``python -m kitlib.kaggle logs|submit|score|loop``).

Every step is a ``kaggle`` CLI call (``kitlib.kaggle_push._call``: the same one-line failures)::

    kaggle kernels status USER/KERNEL            # polled until COMPLETE / ERROR / CANCEL_*
    kaggle kernels logs USER/KERNEL              # the log so far, printed as it grows, saved beside the kernel
    kaggle competitions submit COMP -k USER/KERNEL -v VERSION -f submission.csv -m MESSAGE
    kaggle competitions submissions COMP --csv   # polled until the submission is scored

and the record is one row per submission in ``artifacts/submissions.csv`` (``SUBMISSION_COLUMNS``): when, which run,
which kernel version, the CV (``cv.json`` of the experiment or ensemble), the public score, and ``flagged`` when
they diverge by more than ``max(abs_tol, rel_tol x |CV|)`` (``diverges``): a leak, a bug in the kernel, a CV that
does not model the test set.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from kitlib.io import atomic_write_text, read_json, write_csv
from kitlib.kaggle_bundle import _last_line
from kitlib.kaggle_push import KaggleError, PushResult, _call, _check, _kaggle_cli

__all__ = [
    "ABS_TOL", "REL_TOL", "SUBMISSION_COLUMNS", "KernelRun", "diverges", "follow",
    "kernel_status", "log_lines", "pushed_version", "read_cv", "read_submissions", "record_submission", "submit",
    "wait_for_score",
]  # fmt: skip

log = logging.getLogger(__name__)

#: A kernel session's states that end it (kagglesdk ``KernelWorkerStatus``).
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")
#: CV and public score diverge when ``|CV - LB| > max(ABS_TOL, REL_TOL x |CV|)``: on a score in [0, 1] (Dice,
#: accuracy) 0.02 absolute decides (larger than the public/private shake-up of most image competitions, smaller than
#: a broken post-processing); on other scales (a loss, an RMSE) 2% relative.
ABS_TOL = 0.02
REL_TOL = 0.02
SUBMISSION_COLUMNS = ("time", "name", "competition", "kernel", "version", "ref", "cv", "public_score",
                      "private_score", "status", "flagged", "message")  # fmt: skip

_STATUS = re.compile(r'has status "(?:\w+\.)?([A-Z_]+)"')
_FAILURE = re.compile(r'Failure message: "(.*)"', re.S)
_VERSION = re.compile(r"Kernel version (\d+) successfully")
_REF = re.compile(r"Submission ref: (\d+)")


@dataclass
class KernelRun:
    """How a followed kernel ended: its last status, Kaggle's failure message, the log lines and where they went."""

    kernel_id: str
    status: str
    failure_message: str = ""
    log: list[str] = field(default_factory=list, repr=False)
    log_path: Path | None = None
    calls: PushResult = field(default_factory=PushResult, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETE"


def pushed_version(result: PushResult) -> int | None:
    """The kernel version ``kaggle kernels push`` reported ("Kernel version 3 successfully pushed"), or None."""
    for cmd, out in reversed(result.calls):
        if cmd[1:3] == ["kernels", "push"] and (m := _VERSION.search(out)):
            return int(m.group(1))
    return None


def kernel_status(kernel_id: str, result: PushResult | None = None) -> tuple[str, str]:
    """``kaggle kernels status``: (status, failure message), the status a ``KernelWorkerStatus`` name (QUEUED,
    RUNNING, COMPLETE, ERROR, CANCEL_REQUESTED, CANCEL_ACKNOWLEDGED).

    Raises:
        KaggleError: the call failed, or its answer is not the CLI's 'has status "..."' line.
    """
    args = ["kernels", "status", kernel_id]
    out = _check(*_call(_kaggle_cli(), args, result if result is not None else PushResult()), args)
    m = _STATUS.search(out)
    if not m:
        raise KaggleError(f"kaggle kernels status {kernel_id}: no status in its answer: {_last_line(out)[:200]}")
    failure = _FAILURE.search(out)
    return m.group(1), failure.group(1).strip() if failure else ""


def log_lines(text: str) -> list[str]:
    """A kernel log as lines: Kaggle's JSON list of ``{"stream_name", "time", "data"}`` events (each ``data`` split
    into lines), or plain text as it is."""
    text = text.strip()
    try:
        events = json.loads(text) if text.startswith("[") else None
    except json.JSONDecodeError:
        events = None
    if not isinstance(events, list):
        return text.splitlines()
    return "".join(str(e.get("data", "")) for e in events if isinstance(e, dict)).splitlines()


def _answer(code: int, out: str, args: list[str], data: str) -> str:
    """``_check`` on what the CLI printed before its data (the first line matching ``data``): a kernel's log or a
    submission's description may say "error:" without the call having failed."""
    m = re.search(data, out, re.M) if code == 0 else None
    _check(code, out[: m.start()] if m else out, args)
    return out


def _log(kernel_id: str, result: PushResult) -> list[str]:
    args = ["kernels", "logs", kernel_id]
    return log_lines(_answer(*_call(_kaggle_cli(), args, result), args, r"^\["))


def follow(
    kernel_id: str,
    *,
    poll: float = 30.0,
    timeout: float = 12 * 3600.0,
    log_path: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = print,
    once: bool = False,
) -> KernelRun:
    """Follow a pushed kernel until its session ends: ``kaggle kernels status`` every ``poll`` seconds, the log
    (``kaggle kernels logs``) fetched on each poll and its new lines passed to ``echo``.

    Args:
        kernel_id: ``user/slug``.
        poll: seconds between polls (Kaggle's logs lag by seconds anyway).
        timeout: give up after this many seconds (default 12 h, Kaggle's longest session).
        log_path: the whole log is written there (atomically) at the end.
        echo: called with each new log line and status change; None: silent.
        once: one poll (the status and the log so far), whatever the status.
    Returns:
        ``KernelRun``: ``.ok`` when COMPLETE; ERROR carries Kaggle's failure message and the log's tail.
    Raises:
        KaggleError: a CLI call failed (network, credentials, unknown kernel), or the timeout passed.
    """
    run = KernelRun(kernel_id, "")
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        status, failure = kernel_status(kernel_id, run.calls)
        if status != run.status and echo:
            echo(f"[{kernel_id}] {status}")
        run.status, run.failure_message = status, failure
        try:
            lines = _log(kernel_id, run.calls)
        except KaggleError as e:  # a queued session has no log yet; a later poll gets it
            if status in TERMINAL:
                raise
            log.info("no log yet: %s", e)
            lines = run.log
        if echo:
            for line in lines[seen:]:
                echo(line)
        seen = max(seen, len(lines))
        run.log = lines
        if status in TERMINAL or once:
            break
        if time.monotonic() > deadline:
            raise KaggleError(f"{kernel_id} still {status} after {timeout:.0f} s; follow again with logs --follow")
        time.sleep(poll)
    if log_path is not None:
        run.log_path = atomic_write_text(log_path, "\n".join(run.log) + "\n")
    return run


def submit(
    competition: str,
    kernel_id: str,
    version: int,
    *,
    file_name: str = "submission.csv",
    message: str = "kitlib",
    result: PushResult | None = None,
) -> int | None:
    """``kaggle competitions submit COMP -k KERNEL -v VERSION -f FILE -m MESSAGE``: a code competition's submission
    of a kernel version's output file.

    Returns:
        The submission's ref ("Submission ref: N" in the CLI's answer), or None when the CLI printed none.
    Raises:
        KaggleError: the CLI failed or Kaggle refused (the competition, kernel or version not found, no submissions
            left today).
    """
    args = ["competitions", "submit", competition, "-k", kernel_id, "-v", str(int(version)), "-f", file_name,
            "-m", message]  # fmt: skip
    out = _check(*_call(_kaggle_cli(), args, result if result is not None else PushResult()), args)
    m = _REF.search(out)
    return int(m.group(1)) if m else None


def read_submissions(competition: str, result: PushResult | None = None) -> pd.DataFrame:
    """``kaggle competitions submissions COMP --csv`` as a table of strings: ref, fileName, date, description, status
    (a ``SubmissionStatus`` name: PENDING, COMPLETE, ERROR), publicScore, privateScore ("" when not scored).

    Raises:
        KaggleError: the call failed, or its answer has no CSV header.
    """
    args = ["competitions", "submissions", competition, "--csv"]
    out = _answer(*_call(_kaggle_cli(), args, result if result is not None else PushResult()), args, r"^ref,")
    lines = out.splitlines()
    if any(line.strip() == "No submissions found" for line in lines):
        return pd.DataFrame(columns=["ref", "fileName", "date", "description", "status", "publicScore"])
    start = next((i for i, line in enumerate(lines) if line.startswith("ref,")), None)
    if start is None:
        raise KaggleError(f"kaggle competitions submissions {competition}: no CSV in its answer: {_last_line(out)}")
    df = pd.read_csv(io.StringIO("\n".join(lines[start:])), dtype=str, keep_default_na=False)
    df["status"] = df["status"].str.rsplit(".", n=1).str[-1]
    for col in ("publicScore", "privateScore"):
        if col in df:
            df[col] = df[col].replace("None", "")
    return df


def wait_for_score(
    competition: str,
    *,
    ref: int | None = None,
    message: str | None = None,
    poll: float = 60.0,
    timeout: float = 3 * 3600.0,
    result: PushResult | None = None,
) -> dict:
    """Poll ``read_submissions`` until the submission (by ``ref``, else the newest with description ``message``) is
    scored.

    Returns:
        Its row (``publicScore`` a string; "" when Kaggle hides it).
    Raises:
        KaggleError: the submission is not listed, Kaggle could not score it (status ERROR), or the timeout passed.
        ValueError: neither ref nor message.
    """
    if ref is None and not message:
        raise ValueError("wait_for_score needs the submission's ref or its message")
    deadline = time.monotonic() + timeout
    while True:
        df = read_submissions(competition, result)
        rows = df[df["ref"] == str(ref)] if ref is not None else df[df["description"] == message]
        if rows.empty:
            what = f"ref {ref}" if ref is not None else f"message {message!r}"
            raise KaggleError(f"{competition}: no submission with {what} among the {len(df)} listed")
        row = rows.iloc[0].to_dict()
        if row["status"] == "ERROR":
            raise KaggleError(f"{competition}: submission {row['ref']} failed to score (status ERROR); see its page")
        if row["status"] == "COMPLETE":
            return row
        if time.monotonic() > deadline:
            raise KaggleError(f"{competition}: submission {row['ref']} not scored after {timeout:.0f} s")
        log.info("submission %s: %s", row["ref"], row["status"])
        time.sleep(poll)


def read_cv(artifacts_root: str | os.PathLike, name: str) -> float | None:
    """The run's CV: ``cv_postprocessed`` (else ``cv``) of ``artifacts/<name>/cv.json`` (``kitlib.oof.save_cv``);
    None when the file or the score is missing."""
    path = Path(artifacts_root) / name / "cv.json"
    if not name or not path.is_file():
        return None
    cv = read_json(path)
    value = cv["cv_postprocessed"] if cv.get("cv_postprocessed") is not None else cv.get("cv")  # null: no search
    return None if value is None else float(value)


def diverges(cv: float | None, score: float | None, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL) -> bool:
    """``|cv - score| > max(abs_tol, rel_tol x |cv|)``; False when either is unknown."""
    if cv is None or score is None or math.isnan(cv) or math.isnan(score):
        return False
    return abs(cv - score) > max(abs_tol, rel_tol * abs(cv))


def _float(text: object) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def record_submission(
    path: str | os.PathLike,
    *,
    name: str,
    competition: str,
    kernel: str,
    version: int | None,
    row: dict,
    cv: float | None,
    abs_tol: float = ABS_TOL,
    rel_tol: float = REL_TOL,
) -> pd.DataFrame:
    """Append one scored submission to the record (a CSV of ``SUBMISSION_COLUMNS``), atomically.

    Args:
        path: the record (``artifacts/submissions.csv``); created with its header when missing.
        name: the experiment or ensemble; competition, kernel, version: what was submitted.
        row: ``wait_for_score``'s row; cv: ``read_cv``'s.
        abs_tol, rel_tol: ``diverges``' thresholds for ``flagged``.
    Returns:
        The whole record after the append.
    Raises:
        ValueError: the existing file has other columns (the message names it).
    """
    path = Path(path)
    public = _float(row.get("publicScore"))
    new = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "name": name, "competition": competition,
        "kernel": kernel, "version": version, "ref": row.get("ref", ""), "cv": cv, "public_score": public,
        "private_score": _float(row.get("privateScore")), "status": row.get("status", ""),
        "flagged": diverges(cv, public, abs_tol, rel_tol), "message": row.get("description", ""),
    }  # fmt: skip
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None
    if old is not None and list(old.columns) != list(SUBMISSION_COLUMNS):
        raise ValueError(f"{path}: columns {list(old.columns)}, expected {list(SUBMISSION_COLUMNS)}; move it aside")
    line = pd.DataFrame([{k: "" if v is None else str(v) for k, v in new.items()}], columns=list(SUBMISSION_COLUMNS))
    table = line if old is None else pd.concat([old, line], ignore_index=True)
    write_csv(path, table)
    if new["flagged"]:
        log.warning("%s: CV %.4f vs public score %.4f diverge by more than max(%g, %g x CV)", name, cv, public,
                    abs_tol, rel_tol)  # fmt: skip
    return table
