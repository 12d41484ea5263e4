#!/usr/bin/env bash
# GPU readiness in one run, bounded at 8 minutes (GPU_CHECK_TIMEOUT seconds, default 480): benchmarks/gpu_check.py
# with the arguments given, e.g. `benchmarks/gpu_check.sh --out gpu_check.json`. A run stopped at the bound keeps
# the figures it had written to --out (rewritten after each part; compile, the slowest, comes last).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-$([ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python)}"
exec timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT:-480}" "$python" "$root/benchmarks/gpu_check.py" "$@"
