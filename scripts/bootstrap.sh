# Sourced by run_all.sh and scripts/test.sh: make sure the project's virtual environment exists and holds
# requirements.txt + kitlib (editable), then put it first on PATH. Re-installs only when requirements.txt or
# pyproject.toml changed since the last install (a hash stamp inside the environment).
#   KIT_VENV   where the environment lives (default: .venv in the repository)
#   PYTHON     interpreter used to create it (default: python3; 3.11 or newer)
set -euo pipefail
KIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT_VENV="${KIT_VENV:-$KIT_ROOT/.venv}"
_py="${PYTHON:-python3}"
if ! "$_py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: $_py is missing or older than Python 3.11 (set PYTHON=/path/to/python3.11+)" >&2
  exit 1
fi
if [ ! -x "$KIT_VENV/bin/python" ]; then
  echo "[bootstrap] creating virtual environment $KIT_VENV" >&2
  "$_py" -m venv "$KIT_VENV"
fi
_stamp="$KIT_VENV/.kit-install-stamp"
_want="$(cat "$KIT_ROOT/requirements.txt" "$KIT_ROOT/pyproject.toml" | "$KIT_VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
  echo "[bootstrap] installing requirements into $KIT_VENV (first time: torch and friends, a few minutes)" >&2
  "$KIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$KIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$KIT_ROOT/requirements.txt"
  # setuptools' editable build emits InformationOnly("Editable installation.", "Please be careful with folders in
  # your working directory ...") on every install (setuptools/command/editable_wheel.py, _TopLevelFinder.__exit__) and
  # pip shows a backend's warnings even with --quiet (pyproject_hooks re-raises them as BuildBackendWarning): the one
  # message ignored in the build's interpreter, by its exact text and base category (UserWarning, so that no
  # setuptools import is needed to parse the filter)
  PYTHONWARNINGS="ignore:Editable installation.:UserWarning" \
    "$KIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$KIT_ROOT"
  "$KIT_VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$_want" > "$_stamp"
fi
export PATH="$KIT_VENV/bin:$PATH"
export VIRTUAL_ENV="$KIT_VENV"
unset _py _stamp _want
