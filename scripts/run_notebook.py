"""Execute one jupytext notebook with papermill, as run_all.sh does: the notebook's cell output (stdout and stderr as
the cells print them), papermill's messages and the kernel's own stderr all go to this process's stdout / stderr,
which run_all.sh sends to runs/<exp>/logs/<notebook>.log (and, with --verbose, to the terminal too).

    python scripts/run_notebook.py notebooks/10_train.py runs/demo/10_train_fold0.ipynb runs/demo/.params/x.yaml \
        [--cwd DIR] [--progress-bar]

Exit status 0 when every cell ran, 1 when a cell raised (papermill's PapermillExecutionError; the executed notebook
holds the error and is written to OUTPUT), 2 for bad arguments.

Why papermill's Python API and not its command line (the noise each choice removes at its source):
- the input is the converted notebook, written beside the parameters file (``runs/<exp>/.params/<stem>.ipynb``, kept:
  with the parameters it reruns the stage, and the executed notebook's metadata names it), never stdin:
  papermill warns "the file is not specified with any extension : -" for an input path without an extension
  (papermill/iorw.py, ``PapermillIO.get_handler``: ``if not fnmatch.fnmatch(os.path.basename(path)..., '*.*')``);
- the kernel gets CurveZMQ keys from its kernel manager (jupyter_client ``KernelManager.transport_encryption =
  "auto"``, which provisions them when the kernelspec declares ``supported_encryption: ["curve"]``, as ipykernel's
  does), or, where pyzmq has no CurveZMQ, talks over IPC sockets (``KernelManager.transport = "ipc"``): ipykernel
  warns "Kernel is running over TCP without encryption" when it has neither (ipykernel/kernelapp.py,
  ``IPKernelApp.init_sockets``: ``elif self.transport == "tcp": self.log.warning(...)``). papermill's command line
  has no way to configure the kernel manager; its API passes ``config`` through to nbclient's ``NotebookClient``,
  which hands it to the ``KernelManager`` it creates (nbclient ``create_kernel_manager``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def kernel_manager_config():
    """The traitlets config of the kernel manager: CurveZMQ-encrypted TCP where pyzmq supports it, else IPC."""
    import zmq
    from traitlets.config import Config

    if zmq.has("curve"):
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config({"KernelManager": {"transport": "ipc"}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/run_notebook.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a jupytext percent notebook (notebooks/NN_name.py)")
    parser.add_argument("output", type=Path, help="the executed notebook (.ipynb)")
    parser.add_argument("params", type=Path, help="the typed parameters (YAML, python -m kitlib.params params)")
    parser.add_argument("--cwd", default=None, help="the kernel's working directory")
    parser.add_argument("--progress-bar", action="store_true", help="papermill's cell progress bar on stderr")
    args = parser.parse_args(argv)
    if args.output.suffix != ".ipynb":
        parser.error(f"the output must be an .ipynb file, got {args.output}")

    import jupytext
    import papermill
    import yaml
    from papermill.exceptions import PapermillExecutionError

    # papermill's command line logs its messages ("Input Notebook", "Executing notebook with kernel") this way
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parameters = yaml.safe_load(args.params.read_text(encoding="utf-8")) or {}
    source = args.params.with_suffix(".ipynb")
    tmp = source.with_name(source.name + ".tmp")
    tmp.write_text(jupytext.writes(jupytext.read(args.source), fmt="ipynb"), encoding="utf-8")
    os.replace(tmp, source)
    try:
        papermill.execute_notebook(
            str(source),
            str(args.output),
            parameters=parameters,
            kernel_name="python3",
            language="python",
            cwd=args.cwd,
            progress_bar=args.progress_bar,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
            config=kernel_manager_config(),
        )
    except PapermillExecutionError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
