"""The Kaggle loop after the build (kitlib.kaggle_submit, kaggle_loop, kaggle_estimate): the real kaggle CLI 2.2.5 runs
each command (its argument parser, its API code, its printing: the status line, the submissions CSV) with only its
HTTP client replaced by a scripted Kaggle that records every request; the runtime estimate times the demo run's real
inference; the accelerators and the image pinning reach the CLI's own kernel-metadata reader."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from kitlib import kaggle_estimate, kaggle_kernel, kaggle_loop, kaggle_push, kaggle_submit
from kitlib.io import read_json, write_json
from tests.test_kaggle import _fake_bundle, check_with_kaggle_cli, demo_run, kaggle_api, kaggle_on_path  # noqa: F401  (fixtures)

# The real kaggle CLI (kaggle.cli.main) with KaggleApi.build_kaggle_client replaced: a scripted Kaggle whose answers
# are kagglesdk's own response types, read from $FAKE_KAGGLE_STATE; each request is appended to $FAKE_KAGGLE_LOG.
REAL_CLI = """\
#!{python}
import json, os, sys
from kaggle.api.kaggle_api_extended import KaggleApi
from kagglesdk.competitions.types.competition_api_service import (
    ApiCreateCodeSubmissionResponse, ApiListSubmissionsResponse, ApiSubmission)
from kagglesdk.competitions.types.submission_status import SubmissionStatus
from kagglesdk.kernels.types.kernels_api_service import (
    ApiGetKernelSessionStatusResponse, ApiListKernelSessionOutputResponse, ApiSaveKernelResponse)
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

STATE = os.environ["FAKE_KAGGLE_STATE"]
state = json.load(open(STATE))


def record(method, request):
    with open(os.environ["FAKE_KAGGLE_LOG"], "a") as f:
        f.write(json.dumps({{"method": method, "request": request.to_dict()}}) + "\\n")
    state["calls"][method] = state["calls"].get(method, 0) + 1
    json.dump(state, open(STATE, "w"))
    return state["calls"][method]


class Client:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):  # kaggle.kernels.kernels_api_client, kaggle.competitions.competition_api_client
        return self

    def save_kernel(self, request):
        record("save_kernel", request)
        r = ApiSaveKernelResponse()
        r.version_number, r.url = state["version"], "https://www.kaggle.com/code/" + request.slug
        return r

    def get_kernel_session_status(self, request):
        n = record("get_kernel_session_status", request)
        r = ApiGetKernelSessionStatusResponse()
        r.status = KernelWorkerStatus[state["statuses"][min(n, len(state["statuses"])) - 1]]
        if state.get("failure") and r.status == KernelWorkerStatus.ERROR:
            r.failure_message = state["failure"]
        return r

    def list_kernel_session_output(self, request):
        n = record("list_kernel_session_output", request)
        r = ApiListKernelSessionOutputResponse()
        r.log = json.dumps(state["log"][: n * 2])  # the log grows by two events a poll
        return r

    def create_code_submission(self, request):
        record("create_code_submission", request)
        r = ApiCreateCodeSubmissionResponse()
        r.message, r.ref = "Successfully submitted", state["ref"]
        return r

    def get_submission_limits(self, request):
        raise RuntimeError("not scripted")  # the CLI ignores a failing limits call

    def list_submissions(self, request):
        n = record("list_submissions", request)
        r = ApiListSubmissionsResponse()
        for row in state["submissions"]:
            s = ApiSubmission()
            s.ref, s.file_name, s.description = row["ref"], "submission.csv", row["description"]
            scored = n >= state["scored_after"]
            s.status = SubmissionStatus[row["status"] if scored else "PENDING"]
            if scored and row.get("public"):
                s.public_score = row["public"]
            r.submissions.append(s)
        return r


KaggleApi.build_kaggle_client = lambda self: Client()
from kaggle.cli import main

sys.argv = ["kaggle", *sys.argv[1:]]
main()
"""


@pytest.fixture
def real_cli(tmp_path, monkeypatch) -> SimpleNamespace:
    """``kaggle`` first on PATH is the real CLI with a scripted Kaggle; ``script(**state)`` sets its answers,
    ``requests()`` returns what it was sent, ``(method, request dict)``."""
    kaggle_on_path(tmp_path, monkeypatch, REAL_CLI)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    state_file, log = tmp_path / "state.json", tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_KAGGLE_STATE", str(state_file))
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setattr(kaggle_submit.time, "sleep", lambda s: None)

    def script(**state):
        base = {"statuses": ["RUNNING", "COMPLETE"], "log": [], "version": 3, "ref": 4242, "submissions": [],
                "scored_after": 1, "calls": {}}  # fmt: skip
        write_json(state_file, {**base, **state})

    def requests():
        return (
            [(r["method"], r["request"]) for r in map(json.loads, log.read_text().splitlines())] if log.exists() else []
        )

    script()
    return SimpleNamespace(script=script, requests=requests, log=log)


def _events(*lines: str) -> list[dict]:
    return [{"stream_name": "stdout", "time": i * 0.5, "data": f"{line}\n"} for i, line in enumerate(lines)]


LOG = _events(
    "kitlib 0.1.0 from /kaggle/...",
    "error: a kernel's own line, not the CLI's",
    "test: 100%",
    "submission: submission.csv",
)


# ------------------------------------------------------------------------------------------------ follow


def test_follow_polls_until_complete_and_saves_the_growing_log(real_cli, tmp_path):
    real_cli.script(statuses=["QUEUED", "RUNNING", "RUNNING", "COMPLETE"], log=LOG)
    echoed = []
    run = kaggle_submit.follow("tester/kit-x-submit", poll=0, log_path=tmp_path / "k.log", echo=echoed.append)
    assert run.ok and run.status == "COMPLETE"
    assert run.log == [e["data"].strip() for e in LOG]
    assert (tmp_path / "k.log").read_text().splitlines() == run.log
    # each line echoed once although every poll returns the whole log so far; status changes echoed once each
    assert echoed == ["[tester/kit-x-submit] QUEUED", *run.log[:2], "[tester/kit-x-submit] RUNNING", *run.log[2:],
                      "[tester/kit-x-submit] COMPLETE"]  # fmt: skip
    sent = real_cli.requests()
    statuses = [r for m, r in sent if m == "get_kernel_session_status"]
    assert len(statuses) == 4 and statuses[0] == {"userName": "tester", "kernelSlug": "kit-x-submit"}
    assert [m for m, _ in sent].count("list_kernel_session_output") == 4


def test_a_failed_kernel_ends_the_loop_with_its_failure_message(real_cli, tmp_path, capsys):
    real_cli.script(statuses=["RUNNING", "ERROR"], failure="Your notebook tried to allocate more memory", log=LOG[:3])
    run = kaggle_submit.follow("tester/kit-x-submit", poll=0, echo=None)
    assert run.status == "ERROR" and not run.ok and run.failure_message.startswith("Your notebook tried")
    kdir = _kernel_dir(tmp_path)
    real_cli.script(statuses=["ERROR"], failure="Your notebook tried to allocate more memory", log=LOG[:3])
    assert kaggle_loop.main(["logs", "--kernel", str(kdir), "--follow", "--poll", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: kernel tester/kit-x-submit ended ERROR: Your notebook tried to allocate")
    assert f"log {kdir / 'kernel.log'}" in err and "a kernel's own line" in err and err.count("\n") == 1
    assert (kdir / "kernel.log").read_text().splitlines() == [e["data"].strip() for e in LOG[:2]]


def test_log_lines_reads_kaggles_event_list_and_plain_text():
    assert kaggle_submit.log_lines(json.dumps(_events("a", "b\nc"))) == ["a", "b", "c"]
    assert kaggle_submit.log_lines("plain\nlog") == ["plain", "log"]
    assert kaggle_submit.log_lines("") == []


# ------------------------------------------------------------------------------------------------ submit, score


def _kernel_dir(tmp_path: Path, name: str = "e", competition: str = "kit-demo-competition") -> Path:
    """A kernel folder as ``kernel`` writes it (metadata + the notebook's kitlib metadata)."""
    kdir = tmp_path / "kernel"
    meta = kaggle_kernel.kernel_metadata("tester", "kit-x-submit", "40_submit.ipynb", ["tester/kit-x-bundle"],
                                         [competition])  # fmt: skip
    write_json(kdir / "kernel-metadata.json", meta)
    kit = {"bundle": "tester/kit-x-bundle", "competition": competition, "exp": name, "ensemble": "", "preset": "demo",
           "parameters": {"exp": name, "preset": "demo", "ensemble": "", "n_folds": 0, "tta": "hflip"}}  # fmt: skip
    write_json(kdir / "40_submit.ipynb", {"cells": [{"cell_type": "code", "source": ["1"], "metadata": {},
                                                     "outputs": [], "execution_count": None}],
                                          "metadata": {"kitlib": kit}, "nbformat": 4, "nbformat_minor": 5})  # fmt: skip
    return kdir


def test_submit_sends_a_code_submission_and_the_score_is_recorded_beside_the_cv(real_cli, tmp_path, capsys):
    root = tmp_path / "artifacts"
    write_json(root / "e" / "cv.json", {"metric": "dice", "cv": 0.61, "cv_postprocessed": 0.655})
    kdir = _kernel_dir(tmp_path)
    other = {"ref": 17, "description": "an older one", "status": "COMPLETE", "public": "0.5"}
    ours = {"ref": 4242, "description": "kitlib e v3", "status": "COMPLETE", "public": "0.6481"}
    real_cli.script(submissions=[ours, other], scored_after=3)
    argv = ["submit", "--kernel", str(kdir), "-v", "3", "--artifacts-root", str(root), "--poll", "0"]
    assert kaggle_loop.main(argv) == 0
    out = capsys.readouterr().out
    assert "submitted tester/kit-x-submit v3 to kit-demo-competition (ref 4242)" in out
    assert f"public score 0.6481 (CV 0.6550) -> {root / 'submissions.csv'}" in out and "FLAGGED" not in out
    sent = real_cli.requests()
    (sub,) = [r for m, r in sent if m == "create_code_submission"]
    assert sub == {"competitionName": "kit-demo-competition", "kernelOwner": "tester", "kernelSlug": "kit-x-submit",
                   "kernelVersion": 3, "fileName": "submission.csv",
                   "submissionDescription": "kitlib e v3"}  # fmt: skip
    assert [m for m, _ in sent].count("list_submissions") == 3  # polled until scored
    record = pd.read_csv(root / "submissions.csv")
    assert record[["name", "competition", "kernel", "version", "ref", "cv", "public_score", "status",
                   "flagged"]].iloc[0].tolist() == ["e", "kit-demo-competition", "tester/kit-x-submit", 3, 4242,
                                                    0.655, 0.6481, "COMPLETE", False]  # fmt: skip
    # a second submission that diverges: appended and flagged
    real_cli.script(submissions=[{**ours, "public": "0.52"}], scored_after=1)
    assert kaggle_loop.main(argv) == 0
    assert "FLAGGED: CV and public score diverge" in capsys.readouterr().out
    record = pd.read_csv(root / "submissions.csv")
    assert len(record) == 2 and record["flagged"].tolist() == [False, True]
    assert list(record.columns) == list(kaggle_submit.SUBMISSION_COLUMNS)


def test_submit_without_waiting_then_score_later(real_cli, tmp_path, capsys):
    kdir, record = _kernel_dir(tmp_path), tmp_path / "record.csv"
    real_cli.script(submissions=[{"ref": 4242, "description": "mine", "status": "COMPLETE", "public": "0.7"}])
    assert kaggle_loop.main(["submit", "--kernel", str(kdir), "-v", "2", "-m", "mine", "--no-wait"]) == 0
    assert f"score --kernel {kdir} --ref 4242" in capsys.readouterr().out
    assert [m for m, _ in real_cli.requests()] == ["create_code_submission"] and not record.exists()
    argv = ["score", "--kernel", str(kdir), "-v", "2", "--ref", "4242", "--record", str(record), "--poll", "0"]
    assert kaggle_loop.main(argv) == 0
    assert "public score 0.7 (no cv.json)" in capsys.readouterr().out
    assert [m for m, _ in real_cli.requests()].count("create_code_submission") == 1  # score submits nothing
    row = pd.read_csv(record).iloc[0]
    assert (row["ref"], row["version"], row["public_score"], row["flagged"]) == (4242, 2, 0.7, False)


def test_read_submissions_parses_the_clis_csv(real_cli):
    real_cli.script(submissions=[{"ref": 9, "description": "fix error: x, y", "status": "COMPLETE", "public": "0.7"},
                                 {"ref": 8, "description": "pending", "status": "PENDING"}])  # fmt: skip
    df = kaggle_submit.read_submissions("kit-demo-competition")
    assert df["ref"].tolist() == ["9", "8"] and df["status"].tolist() == ["COMPLETE", "PENDING"]
    assert df["publicScore"].tolist() == ["0.7", ""] and df["description"][0] == "fix error: x, y"
    real_cli.script(submissions=[{"ref": 9, "description": "d", "status": "ERROR"}])
    with pytest.raises(kaggle_push.KaggleError, match="submission 9 failed to score"):
        kaggle_submit.wait_for_score("kit-demo-competition", ref=9, poll=0)
    with pytest.raises(kaggle_push.KaggleError, match="no submission with ref 10 among the 1 listed"):
        kaggle_submit.wait_for_score("kit-demo-competition", ref=10, poll=0)
    real_cli.script(submissions=[])
    assert kaggle_submit.read_submissions("kit-demo-competition").empty


@pytest.mark.parametrize(
    ("cv", "lb", "flagged"),
    [(0.90, 0.885, False), (0.90, 0.875, True), (0.90, 0.93, True), (10.0, 10.15, False), (10.0, 9.7, True),
     (None, 0.5, False), (0.5, None, False)],
)  # fmt: skip
def test_divergence_threshold(cv, lb, flagged):
    """max(0.02, 2% of |CV|): 0.025 on a Dice of 0.9 is flagged, 0.15 on a loss of 10 is not, 0.3 is."""
    assert kaggle_submit.diverges(cv, lb) is flagged


# ------------------------------------------------------------------------------------------------ loop, accelerators


def test_the_whole_loop_from_one_command(real_cli, tmp_path, capsys):
    """loop: the estimate (skipped here: no local run), the real ``kernels push`` of the folder, following the
    session, the submission of the pushed version and its score recorded."""
    root = tmp_path / "artifacts"
    write_json(root / "e" / "cv.json", {"metric": "dice", "cv": 0.64})
    kdir = _kernel_dir(tmp_path)
    scored = {"ref": 4242, "description": "kitlib e v7", "status": "COMPLETE", "public": "0.63"}
    real_cli.script(statuses=["RUNNING", "COMPLETE"], log=LOG, version=7, submissions=[scored])
    argv = ["loop", "--kernel", str(kdir), "--artifacts-root", str(root), "--follow-poll", "0", "--poll", "0"]
    assert kaggle_loop.main(argv) == 0
    out = capsys.readouterr().out
    assert "estimate: skipped" in out and "kernels push: Kernel version 7 successfully pushed" in out
    assert "kernel tester/kit-x-submit v7: COMPLETE" in out and "public score 0.63 (CV 0.6400)" in out
    methods = [m for m, _ in real_cli.requests()]
    assert methods[0] == "save_kernel" and methods.index("create_code_submission") > methods.index(
        "get_kernel_session_status"
    )
    (sub,) = [r for m, r in real_cli.requests() if m == "create_code_submission"]
    assert sub["kernelVersion"] == 7
    assert pd.read_csv(root / "submissions.csv")["version"].tolist() == [7]
    assert (kdir / "kernel.log").is_file()


def test_every_documented_accelerator_reaches_the_cli_and_unknown_ones_pass_with_a_warning(tmp_path, kaggle_api,  # noqa: F811
                                                                                           caplog):  # fmt: skip
    kdir = tmp_path / "kernel"
    write_json(kdir / "40_submit.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    for shape, kind in [*kaggle_kernel.MACHINE_SHAPES.items(), ("NvidiaB200", "gpu")]:
        with caplog.at_level(logging.WARNING, logger="kitlib.kaggle_kernel"):
            caplog.clear()
            meta = kaggle_kernel.kernel_metadata("tester", "kit-demo-submit", "40_submit.ipynb", [], ["c"],
                                                 accelerator=shape, docker_image_pinning_type="original")  # fmt: skip
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert ("not one the kaggle CLI documents" in warned) == (shape not in kaggle_kernel.MACHINE_SHAPES)
        assert ("is retired" in warned) == (shape in kaggle_kernel.RETIRED_SHAPES)
        assert (meta["enable_gpu"], meta["enable_tpu"]) == (kind == "gpu", kind == "tpu")
        write_json(kdir / "kernel-metadata.json", meta)
        k = check_with_kaggle_cli(kaggle_api, kdir)["kernel"]
        assert k.machine_shape == shape and k.docker_image_pinning_type == "original"
    with pytest.raises(ValueError, match="docker_image_pinning_type must be one of"):
        kaggle_kernel.kernel_metadata("tester", "kit-demo-submit", "a.ipynb", [], [], docker_image_pinning_type="new")


def test_the_kernel_command_pins_the_image_and_records_what_the_loop_reads(tmp_path, capsys):
    bundle_dir = _fake_bundle(tmp_path / "b")
    argv = ["kernel", "--bundle", str(bundle_dir), "--competition", "kit-demo-competition", "--user", "tester",
            "--out", str(tmp_path / "k"), "--accelerator", "NvidiaL4", "--pin-image", "latest",
            "-p", "tta", "flips"]  # fmt: skip
    assert kaggle_loop.main(argv) == 0
    meta = read_json(tmp_path / "k" / "kernel-metadata.json")
    assert (meta["machine_shape"], meta["enable_gpu"], meta["docker_image_pinning_type"]) == (
        "NvidiaL4",
        True,
        "latest",
    )
    info = kaggle_kernel.kernel_info(tmp_path / "k")
    assert (info.kernel_id, info.competition, info.name, info.preset) == ("tester/kit-x-submit", "kit-demo-competition",
                                                                          "x", "demo")  # fmt: skip
    assert info.parameters["tta"] == "flips" and info.parameters["n_folds"] == 0
    assert kaggle_kernel.kernel_info("tester/kit-x-submit").kernel_id == "tester/kit-x-submit"
    with pytest.raises(ValueError, match="not a kernel folder"):
        kaggle_kernel.kernel_info(tmp_path)


# ------------------------------------------------------------------------------------------------ estimate


def test_the_estimate_times_the_real_inference_and_scales_it(demo_run, tmp_path):  # noqa: F811
    from kitlib.stages import SubmitConfig

    common = dict(exp="e", preset="demo", data_dir=str(demo_run.data), artifacts_root=str(demo_run.root),
                  device="cpu", batch_size=2)  # fmt: skip
    plain = kaggle_estimate.estimate_runtime(SubmitConfig.from_notebook(**common), n_images=3, test_images=1000,
                                             time_limit_h=9, gpu_factor=1)  # fmt: skip
    assert plain.models == 2 and plain.tta_views == 1 and plain.measured_images == 3 and plain.fits
    assert plain.projected_s == pytest.approx(plain.load_s + plain.per_image_s * 1000)
    d4 = kaggle_estimate.estimate_runtime(SubmitConfig.from_notebook(**common, tta="d4"), n_images=3,
                                          test_images=1000, time_limit_h=9, gpu_factor=1)  # fmt: skip
    # the views are counted; their cost is not compared (wall time on a shared machine is no test)
    assert (
        d4.tta_views == 8 and d4.per_image_s > 0 and d4.projected_s == pytest.approx(d4.load_s + d4.per_image_s * 1000)
    )
    one = kaggle_estimate.estimate_runtime(SubmitConfig.from_notebook(**common, n_folds=1), n_images=3,
                                           test_images=1000, time_limit_h=9, gpu_factor=1)  # fmt: skip
    assert one.models == 1
    # a limit too short for the projection: not fitting, and said so
    tight = kaggle_estimate.estimate_runtime(SubmitConfig.from_notebook(**common), n_images=2, test_images=10**7,
                                             time_limit_h=0.01, gpu_factor=10)  # fmt: skip
    assert not tight.fits and "OVER THE LIMIT" in tight.summary() and "GPU factor 10" in tight.summary()
    with pytest.raises(ValueError, match="no hidden test set size known for competition 'nope'"):
        kaggle_estimate.estimate_runtime(SubmitConfig.from_notebook(**common), competition="nope")
    cassava = kaggle_estimate._test_set("cassava-leaf-disease-classification", None, None)
    assert cassava[:2] == (15000, 9.0)
    assert kaggle_estimate._test_set("understanding_cloud_organization", None, None)[:2] == (3698, 12.0)


def test_push_prints_the_estimate_of_the_kernel_before_pushing(demo_run, tmp_path, real_cli, capsys):  # noqa: F811
    kdir = _kernel_dir(tmp_path, competition="understanding_cloud_organization")
    argv = ["push", "--kernel", str(kdir), "--artifacts-root", str(demo_run.root), "--data-dir", str(demo_run.data),
            "--images", "2", "--time-limit", "0.0001"]  # fmt: skip
    assert kaggle_loop.main(argv) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()[:2]
    assert first.startswith("estimate: ") and "2 models x 2 TTA views" in first and "3698 test images" in first
    assert "OVER THE LIMIT" in first and second.startswith("warning: the projection passes the 0.0001 h limit")
    assert "GPU factor 1 " in first  # a kernel without GPU: Kaggle's CPU is taken as fast as this one
    assert out.index("estimate: ") < out.index("kernels push")
    assert kaggle_loop.main(["estimate", "--kernel", str(kdir), "--artifacts-root", str(demo_run.root), "--data-dir",
                             str(demo_run.data), "--images", "2"]) == 0  # fmt: skip
    assert "(fits)" in capsys.readouterr().out


def test_help_lists_the_loop(capsys):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "kitlib.kaggle", "--help"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    for command in ("bundle", "kernel", "push", "estimate", "logs", "submit", "score", "loop"):
        assert command in out
    with pytest.raises(SystemExit):
        kaggle_loop.main(["kernel", "--help"])
    assert "--pin-image" in capsys.readouterr().out
