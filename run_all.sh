#!/usr/bin/env bash
# The main job: every notebook in order through papermill, headless and resumable.
#
#   ./run_all.sh                                    the built-in demo (generated into data/demo once)
#   ./run_all.sh --preset masks --data ../shared/data/isbi2012_membrane
#
# Options:
#   --preset P        competition preset (kitlib.presets): clouds, severstal, dacon_building, masks, coco, cassava, demo
#   --data DIR        competition folder; required unless the preset is demo
#   --exp NAME        experiment name: executed notebooks go to runs/NAME/, artifacts to artifacts/NAME/ (default: preset)
#   --folds N         number of folds (default 5)
#   --label-file F    train label file inside DIR when it is not the competition's own name
#   --params F.yaml   extra notebook parameters (papermill -f); the options above take precedence
#   --force           rerun notebooks that already completed
#
# Resumable: each notebook that completes writes runs/NAME/.done/<notebook> last, holding a hash of the notebook
# and its parameters; a rerun skips those and reruns the one that failed or was killed. Fails fast with the failing
# notebook's path. Notebooks that do not exist yet are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh

preset=demo data="" exp="" folds=5 label_file="" params_file="" force=0
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --exp) exp="$2"; shift 2 ;;
    --folds) folds="$2"; shift 2 ;;
    --label-file) label_file="$2"; shift 2 ;;
    --params) params_file="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
exp="${exp:-$preset}"
if [ -z "$data" ]; then
  if [ "$preset" != demo ]; then echo "error: --data DIR is required for preset $preset" >&2; exit 2; fi
  data="data/demo"
  python -m kitlib.demo "$data" >/dev/null
fi
[ -d "$data" ] || { echo "error: data folder not found: $data" >&2; exit 2; }
data="$(cd "$data" && pwd)"
[ -z "$params_file" ] || [ -f "$params_file" ] || { echo "error: params file not found: $params_file" >&2; exit 2; }
runs="runs/$exp"
mkdir -p "$runs/.done" "artifacts/$exp"

common=(-p exp "$exp" -p preset "$preset" -p data_dir "$data" -p n_folds "$folds" -p label_file "$label_file"
        -p artifacts_root "$PWD/artifacts")
[ -z "$params_file" ] || common=(-f "$params_file" "${common[@]}")
progress=(--no-progress-bar); [ -t 2 ] && progress=(--progress-bar)

# run_notebook NAME OUTPUT_STEM [extra papermill args...]
run_notebook() {
  local name="$1" stem="$2"; shift 2
  local src="notebooks/$name.py" out="$runs/$stem.ipynb" marker="$runs/.done/$stem"
  local key
  key="$( { cat "$src"; printf '%s\n' "${common[@]}" "$@"; [ -z "$params_file" ] || cat "$params_file"; } | sha256sum | cut -d' ' -f1)"
  if [ "$force" = 0 ] && [ "$(cat "$marker" 2>/dev/null || true)" = "$key" ]; then
    echo "[run_all] $stem: done already, skipped ($out)"
    return 0
  fi
  rm -f "$marker"
  echo "[run_all] $stem: running -> $out"
  if ! jupytext --to ipynb --output - "$src" \
      | papermill - "$out" -k python3 --cwd "$PWD" "${progress[@]}" "${common[@]}" "$@"; then
    echo "[run_all] FAILED: $stem; the executed notebook with the error is $out" >&2
    exit 1
  fi
  echo "$key" > "$marker.tmp" && mv "$marker.tmp" "$marker"
}

for name in 00_eda 10_train 20_oof 30_ensemble 40_submit; do
  [ -f "notebooks/$name.py" ] || continue
  if [ "$name" = 10_train ]; then
    for ((fold = 0; fold < folds; fold++)); do run_notebook "$name" "${name}_fold$fold" -p fold "$fold"; done
  else
    run_notebook "$name" "$name"
  fi
done
echo "[run_all] finished: executed notebooks in $runs/, artifacts in artifacts/$exp/"
