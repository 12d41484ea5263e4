#!/usr/bin/env bash
# The main job: every notebook in order through papermill, headless and resumable.
#
#   ./run_all.sh                                    the built-in demo (generated into data/demo once)
#   ./run_all.sh --preset demo_classify             the built-in classification demo (data/demo_classify)
#   ./run_all.sh --preset masks --data ../shared/data/isbi2012_membrane
#   ./run_all.sh --preset my_competition.yaml --data data/my_competition   your own competition (data_README.md)
#
# Options:
#   --preset P        competition preset (kitlib.presets): clouds, severstal, dacon_building, masks, coco, cassava, demo,
#                     demo_classify; or a preset file FILE.yaml of your own competition (its Preset fields, checked
#                     before anything runs; data_README.md "Your own competition")
#   --data DIR        competition folder; required unless the preset is a demo (demo, demo_classify: written into
#                     data/<preset> once, and the submission is scored on its hidden test truth at the end)
#   --exp NAME        experiment name: executed notebooks go to runs/NAME/, artifacts to artifacts/NAME/ (default: the
#                     preset's name)
#   --folds N         number of folds (default 5)
#   --label-file F    train label file inside DIR when it is not the competition's own name
#   --params F.yaml   extra notebook parameters; each notebook gets the ones its parameters cell declares, a name no
#                     notebook declares is an error; the options above take precedence
#   --gpus 0,1        GPU ids: the folds of 10_train run in parallel, one per GPU (CUDA_VISIBLE_DEVICES), and every
#                     notebook after 00_eda gets -p device cuda; without it the folds run one after another
#   --ensemble NAME   30_ensemble writes artifacts/NAME/ (the experiments of an `exps:` line in --params, else this
#                     one) and 40_submit predicts with it; without it 40_submit uses this experiment alone
#   --gate-exp NAME   a presence classifier experiment (trained with `arch: classifier` in --params, and --until
#                     20_oof) that 20_oof and 30_ensemble try as the gate of this experiment's masks
#   --until NB        stop after this notebook (00_eda, 10_train, 20_oof, 30_ensemble), e.g. 20_oof for a presence
#                     classifier, which gates another experiment and submits nothing itself
#   --pseudo-from EXP the pseudo-label round: the folds of 10_train get `pseudo_from EXP` (an experiment, or an
#                     ensemble with weights.json, of the same competition): its confident test predictions join every
#                     fold's training set as train-only rows (kitlib.train_rows; never held out, never in the OOF).
#                     When artifacts/EXP/test_probs.npy is missing, 40_submit of EXP runs first with save_probs true
#                     (into runs/EXP/40_submit_probs.ipynb). Name the new experiment with --exp; its 00_eda writes the
#                     competition's folds as usual. pseudo_threshold / pseudo_soft go in --params
#   --label-noise F   a demo preset only: corrupt the fraction F of its train labels on purpose (kitlib.demo
#                     --label-noise; the hidden list in noisy_ids.csv), written into data/<preset>_noise<F x 100>
#                     (the clean demo stays), experiment name <preset>_noise<F x 100> unless --exp
#   --force           rerun notebooks that already completed
#   --verbose         show everything each notebook prints (papermill, its progress bar, the cells' output) as it runs
#
# Output: one line per notebook as it ends, its time and headline read from what it wrote (kitlib.run_report), e.g.
#   [run_all] 10_train_fold0:  done in 41s; fold 0 dice 0.5469 on 40 held-out images (best valid_dice 0.4786 at epoch 8)
# then the summary. Each notebook's whole output (cells, papermill, the kernel's stderr) is in runs/NAME/logs/<nb>.log;
# a failure prints the failing cell's exception, the executed notebook and that log, and exits 1.
#
# Resumable: each notebook that completes writes runs/NAME/.done/<notebook> last, holding a hash of the notebook
# and its parameters; a rerun skips those and reruns the one that failed or was killed. Fails fast with the failing
# notebook's path (with --gpus, the other folds still running are stopped). Notebooks that do not exist yet are
# skipped. At the end it prints the CV score (artifacts/NAME/cv.json, or the ensemble's) and the submission path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh

preset=demo data="" exp="" folds=5 label_file="" params_file="" force=0 gpus="" ensemble="" gate_exp="" until=""
pseudo_from=""
label_noise="" verbose=0
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --exp) exp="$2"; shift 2 ;;
    --folds) folds="$2"; shift 2 ;;
    --label-file) label_file="$2"; shift 2 ;;
    --params) params_file="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --ensemble) ensemble="$2"; shift 2 ;;
    --gate-exp) gate_exp="$2"; shift 2 ;;
    --until) until="$2"; shift 2 ;;
    --pseudo-from) pseudo_from="$2"; shift 2 ;;
    --label-noise) label_noise="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --verbose) verbose=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ "$preset" =~ \.(yaml|yml)$ ]]; then  # a preset file: an absolute path for the notebooks, checked now
  [ -f "$preset" ] || { echo "error: preset file not found: $preset" >&2; exit 2; }
  preset="$(cd "$(dirname "$preset")" && pwd)/$(basename "$preset")"
fi
preset_name="$(python -m kitlib.presets "$preset")" || exit 2
noise_tag=""
if [ -n "$label_noise" ]; then
  [ -z "$data" ] || { echo "error: --label-noise corrupts a demo's labels; it takes no --data" >&2; exit 2; }
  noise_tag="$(python -c 'import sys; f = float(sys.argv[1]); assert 0 < f < 1; print(f"_noise{round(f * 100)}")' \
    "$label_noise" 2>/dev/null)" || { echo "error: --label-noise takes a fraction in (0, 1); got $label_noise" >&2; exit 2; }
fi
exp="${exp:-$preset_name$noise_tag}"
if [ -n "$until" ] && ! [[ "$until" =~ ^(00_eda|10_train|20_oof|30_ensemble|40_submit)$ ]]; then
  echo "error: --until takes 00_eda, 10_train, 20_oof, 30_ensemble or 40_submit; got $until" >&2; exit 2
fi
if [ -n "$gpus" ] && ! [[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "error: --gpus takes comma-separated GPU ids such as 0,1; got $gpus" >&2; exit 2
fi
if [ -z "$data" ]; then
  demos="$(python -m kitlib.demo --list)"  # read whole: grep -q closing the pipe early would break the writer
  if ! grep -qxF -- "$preset" <<< "$demos"; then
    echo "error: --data DIR is required for preset $preset (only the demos, $(paste -sd, <<< "$demos"), are written here)" >&2
    exit 2
  fi
  data="data/$preset$noise_tag"
  quiet_demo=(--quiet); [ "$verbose" = 0 ] || quiet_demo=()  # its INFO lines (written, or already there): --verbose
  python -m kitlib.demo "$data" --preset "$preset" ${label_noise:+--label-noise "$label_noise"} "${quiet_demo[@]}" >/dev/null
fi
[ -d "$data" ] || { echo "error: data folder not found: $data" >&2; exit 2; }
data="$(cd "$data" && pwd)"
[ -z "$params_file" ] || [ -f "$params_file" ] || { echo "error: params file not found: $params_file" >&2; exit 2; }
runs="runs/$exp"
mkdir -p "$runs/.done" "artifacts/$exp"

# Each notebook gets the parameters it declares, typed (python -m kitlib.params params: the options below, then the
# --params file; a name there that no notebook declares is an error), as a YAML file for papermill -f.
common=(--set exp "$exp" --set preset "$preset" --set data_dir "$data" --set n_folds "$folds"
        --set label_file "$label_file" --set artifacts_root "$PWD/artifacts")
[ -z "$params_file" ] || common=(--file "$params_file" "${common[@]}")
progress=(); [ "$verbose" = 1 ] && [ -t 2 ] && progress=(--progress-bar)  # papermill's bar: --verbose only
transient=0; [ "$verbose" = 0 ] && [ -t 1 ] && [ -z "$gpus" ] && transient=1  # "running ..." until the line is in
device=(); [ -z "$gpus" ] || device=(--set device cuda)
gate=(); [ -z "$gate_exp" ] || gate=(--set gate_exp "$gate_exp")
pseudo=(); [ -z "$pseudo_from" ] || pseudo=(--set pseudo_from "$pseudo_from")
if [ -n "$pseudo_from" ] && [ "$pseudo_from" = "$exp" ]; then
  echo "error: --pseudo-from $pseudo_from names this experiment; name the pseudo-label round with --exp" >&2; exit 2
fi
mkdir -p "$runs/.params"

# run_notebook NAME OUTPUT_STEM [--set NAME VALUE ...]: one line when it ends (kitlib.run_report reads the headline from
# the artifacts); everything the notebook and its kernel print goes to runs/<exp>/logs/<stem>.log (and, with
# --verbose, to stderr too).
run_notebook() {
  local name="$1" stem="$2"; shift 2
  local src="notebooks/$name.py" out="$runs/$stem.ipynb" marker="$runs/.done/$stem" params="$runs/.params/$stem.yaml"
  local log="$runs/logs/$stem.log" key start rc=0
  if ! python -m kitlib.params params "$src" "${common[@]}" "$@" > "$params.tmp"; then
    echo "[run_all] FAILED: the parameters of $stem (above)" >&2
    exit 1
  fi
  mv "$params.tmp" "$params"
  key="$(cat "$src" "$params" | sha256sum | cut -d' ' -f1)"
  if [ "$force" = 0 ] && [ "$(cat "$marker" 2>/dev/null || true)" = "$key" ]; then
    report_line "$stem" "done already, skipped" "$params"
    return 0
  fi
  rm -f "$marker"
  mkdir -p "$runs/logs"
  start=$SECONDS
  local runner=(python scripts/run_notebook.py "$src" "$out" "$params" --cwd "$PWD" "${progress[@]}")
  if [ "$verbose" = 1 ]; then
    echo "[run_all] $stem: running -> $out (log $log)"
    "${runner[@]}" 2>&1 | tee "$log" >&2 || rc=$?
  else
    [ "$transient" = 0 ] || printf '[run_all] %-16s running ...' "$stem:"
    "${runner[@]}" > "$log" 2>&1 || rc=$?
    [ "$transient" = 0 ] || printf '\r\033[K'
  fi
  if [ "$rc" != 0 ]; then
    report_failure "$stem" "$out" "$log" "$((SECONDS - start))"
    exit 1
  fi
  echo "$key" > "$marker.tmp" && mv "$marker.tmp" "$marker"
  report_line "$stem" "done in $(duration $((SECONDS - start)))" "$params"
}

# duration SECONDS: 42s, 3m05s, 1h02m
duration() {
  local s="$1"
  if [ "$s" -ge 3600 ]; then printf '%dh%02dm' $((s / 3600)) $((s % 3600 / 60))
  elif [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60))
  else printf '%ds' "$s"; fi
}

# report_line STEM STATUS PARAMS: "[run_all] 20_oof:          done in 14s; CV dice 0.5896, post-processed 0.8415"
report_line() {
  local result
  result="$(python -m kitlib.run_report headline "$1" "$3")" || result="(no headline, above)"
  printf '[run_all] %-16s %s; %s\n' "$1:" "$2" "$result"
}

# report_failure STEM NOTEBOOK LOG SECONDS: the notebook's exception (or the log's last lines) and where to look.
report_failure() {
  local stem="$1" out="$2" log="$3" error
  {
    echo "[run_all] FAILED: $stem; the executed notebook with the error is $out (after $(duration "$4"))"
    error="$(python -m kitlib.run_report error "$out" 2>/dev/null || true)"
    [ -n "$error" ] || error="$(tail -n 5 "$log")"
    sed 's/^/[run_all]   /' <<< "$error"
    echo "[run_all]   full log: $log"
  } >&2
}

# kill_tree PID: SIGTERM a process and all its descendants (a fold's papermill and its kernel), the tree listed first.
tree_pids() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" 2>/dev/null || true); do tree_pids "$child"; done
}
kill_tree() {
  local pid
  for pid in $(tree_pids "$1"); do kill -TERM "$pid" 2>/dev/null || true; done
}

# pseudo_probs: artifacts/<--pseudo-from>/test_probs.npy, written by 40_submit of that experiment (or ensemble) with
# save_probs true when it is missing (into runs/<--pseudo-from>/).
pseudo_probs() {
  [ -n "$pseudo_from" ] && [ ! -f "artifacts/$pseudo_from/test_probs.npy" ] || return 0
  [ -d "artifacts/$pseudo_from" ] || { echo "error: --pseudo-from: no artifacts/$pseudo_from/" >&2; exit 2; }
  local source=(--set exp "$pseudo_from" --set save_probs true --set n_folds 0)
  [ ! -f "artifacts/$pseudo_from/weights.json" ] || source+=(--set ensemble "$pseudo_from")
  mkdir -p "runs/$pseudo_from/.done" "runs/$pseudo_from/.params"
  runs="runs/$pseudo_from" run_notebook 40_submit 40_submit_probs "${device[@]}" "${source[@]}"
}

# run_folds: the folds of 10_train; with --gpus, GPU i runs folds i, i+G, ... while the other GPUs run theirs.
run_folds() {
  if [ -z "$gpus" ]; then
    for ((fold = 0; fold < folds; fold++)); do
      run_notebook 10_train "10_train_fold$fold" "${device[@]}" "${pseudo[@]}" --set fold "$fold"
    done
    return 0
  fi
  local ids pids=() i gpu
  IFS=, read -r -a ids <<< "$gpus"
  for i in "${!ids[@]}"; do
    gpu="${ids[$i]}"
    (
      export CUDA_VISIBLE_DEVICES="$gpu"
      for ((fold = i; fold < folds; fold += ${#ids[@]})); do
        run_notebook 10_train "10_train_fold$fold" "${device[@]}" "${pseudo[@]}" --set fold "$fold"
      done
    ) &
    pids+=($!)
  done
  local status done_pid pid rest
  while [ "${#pids[@]}" -gt 0 ]; do
    status=0
    wait -n -p done_pid "${pids[@]}" || status=$?
    rest=()
    for pid in "${pids[@]}"; do [ "$pid" = "$done_pid" ] || rest+=("$pid"); done
    pids=("${rest[@]+"${rest[@]}"}")
    if [ "$status" != 0 ]; then
      # fail fast: stop the other GPUs' folds (each job's papermill and kernel included)
      for pid in "${pids[@]+"${pids[@]}"}"; do kill_tree "$pid"; done
      wait 2>/dev/null || true
      echo "[run_all] FAILED: a fold of 10_train (see the FAILED line above); the other folds were stopped" >&2
      exit 1
    fi
  done
}

for name in 00_eda 10_train 20_oof 30_ensemble 40_submit; do
  [ -f "notebooks/$name.py" ] || continue
  if [ "$name" = 10_train ]; then
    pseudo_probs
    run_folds
  elif [ "$name" = 00_eda ]; then
    run_notebook "$name" "$name"
  elif [ "$name" = 20_oof ]; then
    run_notebook "$name" "$name" "${device[@]}" "${gate[@]}"
  elif [ "$name" = 30_ensemble ]; then
    # the experiments to blend: an `exps:` line of --params, else this experiment alone; the weights go to
    # artifacts/<--ensemble NAME>/, else artifacts/<exp>/ensemble/ (never a folder shared by experiments)
    blend=(--set ensemble_name "${ensemble:-$exp/ensemble}")
    [ -n "$params_file" ] && grep -q '^exps:' "$params_file" || blend+=(--set exps "$exp")
    run_notebook "$name" "$name" "${device[@]}" "${blend[@]}" "${gate[@]}"
  elif [ "$name" = 40_submit ] && [ -n "$ensemble" ]; then
    run_notebook "$name" "$name" "${device[@]}" --set ensemble "$ensemble"
  else
    run_notebook "$name" "$name" "${device[@]}"
  fi
  [ "$name" != "$until" ] || { echo "[run_all] stopped after $name (--until)"; break; }
done
echo "[run_all] finished: executed notebooks in $runs/ (logs in $runs/logs/), artifacts in artifacts/$exp/"
for cv in "artifacts/$exp/cv.json" ${ensemble:+"artifacts/$ensemble/cv.json"}; do
  [ -f "$cv" ] || continue
  python - "$cv" <<'PY' || true
import json, sys
path = sys.argv[1]
cv = json.load(open(path))
score = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else json.dumps(v)
parts = [f"{k} {score(cv[k])}" for k in ("cv_postprocessed", "cv") if k in cv]
print(f"[run_all] CV ({path}): " + (", ".join(parts) or json.dumps(cv)))
PY
done
[ ! -f "$runs/submission.csv" ] || echo "[run_all] submission: $runs/submission.csv"
if [ -f "$runs/submission.csv" ] && [ -f "$data/demo.json" ]; then
  echo "[run_all] demo $(python -m kitlib.demo "$data" --score "$runs/submission.csv") (hidden test_truth.csv)" || true
fi
