#!/usr/bin/env bash
# The test command: installs what is missing (scripts/bootstrap.sh), then runs the whole suite, papermill runs of
# the notebooks included. Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow" -x`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$KIT_ROOT"
exec python -m pytest -q -p no:cacheprovider "$@"
