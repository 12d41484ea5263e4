# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 30 Ensemble: blend the experiments' OOF and choose the weights
#
# Reads the gathered OOF of each experiment in `exps` (`artifacts/<exp>/oof_probs.npy` from `20_oof`; gathered here
# when absent), which must share one `folds.csv`. Compares equal weights with optimised ones (`kitlib.ensemble_search`:
# Nelder-Mead, SLSQP, differential evolution, hill climbing, or plain mean), checks the fitted weights on held-out folds
# (`cv_weights`), scores every subset of experiments, then searches the post-processing again on the blend (with
# `gate_exp`, also a gate by a separate presence classifier, as in `20_oof`). A classification ensemble can also be
# stacked (`stacking`: a meta-model on the members' OOF probabilities, cross-validated over the OOF folds,
# `kitlib.stacking`); it replaces the weighted blend only when its CV is higher. Classification gets the per-class
# report and the confusion matrix of the ensemble's OOF.
#
# Writes `artifacts/<ensemble_name>/`: `weights.json`, `postprocess.json`, `cv.json`, `config.json`, the blend
# itself (`oof_probs.npy`, `oof_ids.csv`; the stacked OOF when the stacker was chosen), `stacking.json` (the chosen
# meta-model) and `class_report.csv` (classification). With one experiment the weight is 1.0 and the post-processing
# is that of `20_oof`.
#
# Headless: `jupytext --to ipynb --output - notebooks/30_ensemble.py | papermill - out.ipynb -p exps exp001,exp002`

# %% tags=["parameters"]
from typing import Optional

exps: str = "demo"  # comma-separated experiments under artifacts/ (each with its 20_oof output)
ensemble_name: str = "ensemble"  # artifacts/<ensemble_name>/ receives the weights and post-processing
exp: str = ""  # passed by run_all; used as exps when exps is empty
preset: str = "demo"  # built-in preset (clouds, severstal, dacon_building, masks, coco, cassava, demo, ...) or a preset
# file, path/to/competition.yaml (relative to the repo root; data_README.md "Your own competition")
data_dir: str = "data/demo"  # competition folder (relative to the repo root)
label_file: str = ""  # train label file inside data_dir; empty: the one training used
artifacts_root: str = "artifacts"  # where artifacts/<exp>/ lives (relative to the repo root)
method: str = "nelder-mead"  # nelder-mead, differential_evolution, slsqp, hill_climb, mean (equal weights)
fit_rows: int = 500  # fit the weights on this many random rows (segmentation OOFs are large); 0: all rows
maxiter: Optional[int] = None  # optimiser iterations; None: the method's default
hill_climb_iter: int = 20  # steps of hill climbing (ensemble selection)
cv_check: bool = True  # fit the weights on K-1 folds and score the held-out fold
thresholds: str = "0.2,0.3,0.4,0.5,0.6,0.7"  # pixel thresholds to search on the blend
min_areas: str = "0,100,500,2000,5000,10000"  # components of at most this many pixels are removed
triplet: bool = False  # also search the triplet scheme
top_thresholds: str = "0.5,0.6,0.7"  # triplet: top_score_threshold values
min_contour_areas: str = "0,100,1000,5000"  # triplet: pixels above the top threshold needed to keep a class
bottom_thresholds: str = "0.3,0.4,0.5"  # triplet: bottom_score_threshold values
num_workers: Optional[int] = None  # threads of the post-processing search; None: the usable CPUs (at most 8)
gate: bool = True  # also try an image-level class gate on top-K pixel probs; kept only when it raises the CV
top_k: int = 0  # pixels averaged into a class probability; 0: 17500 at 350x525 scaled to the OOF size
gate_exp: str = ""  # a presence classifier's experiment (10_train -p arch classifier) tried as the gate; "": none
youden: bool = True  # also search each class's threshold of Youden's index (max TPR - FPR of the pixels; Dacon)
crf: bool = False  # also try a DenseCRF refinement (trash contest) on an OOF subset; kept only if it scores higher
crf_images: int = 20  # OOF images the CRF search runs on (seed); a candidate costs ~5 s per 512x512 image, 11 classes
crf_iterations: str = "5"  # CRF grid: mean-field iterations
crf_gaussian_sxy: str = "3"  # CRF grid: smoothness kernel width (pixels at the scoring size)
crf_gaussian_compat: str = "3"  # CRF grid: smoothness kernel weight
crf_bilateral_sxy: str = "40,80"  # CRF grid: appearance kernel width (pixels)
crf_bilateral_srgb: str = "5,13"  # CRF grid: appearance kernel colour scale (0..255 units)
crf_bilateral_compat: str = "5,10"  # CRF grid: appearance kernel weight
stacking: str = ""  # meta-model on the members' OOF probs (classification): logreg; "": none
stacking_c: float = 1.0  # stacking: inverse L2 regularisation strength of the logistic regression
stacking_log: bool = False  # stacking: features log(p) instead of p
seed: int = 42  # row sample and differential evolution

# %%
# %matplotlib inline
import logging

import numpy as np
import pandas as pd
from IPython.display import display

from kitlib import ensemble, ensemble_search, oof, plots, predictions, search
from kitlib.experiment import load_experiment
from kitlib.io import write_json
from kitlib.scoring import score_oof
from kitlib.stacking import choose_stacking  # the parameter `stacking` names the meta-model
from kitlib.stages import EnsembleConfig

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("kitlib").setLevel(logging.INFO)
cfg = EnsembleConfig.from_params(globals())  # type-checked; cfg.names: the experiments
cfg.save()  # artifacts/<ensemble_name>/config.json
names, root = cfg.names, cfg.artifacts_dir
print(f"blending {names} into {cfg.out_dir}")

# %% [markdown]
# ## The experiments' OOF
# All must have the same rows in the same order (one `folds.csv`); otherwise this cell fails naming them.

# %%
oofs, ids_by_exp = {}, {}
for name in names:
    if not (root / name / "oof_probs.npy").is_file():
        predictions.gather_oof(root / name)
    oofs[name], ids_by_exp[name], _ = predictions.read_gathered(root / name)
ids = predictions.check_same_ids(ids_by_exp)
experiment = load_experiment(root / names[0], cfg.preset, cfg.data_path, cfg.label_file)
task = experiment.model_preset
assert ids == experiment.df["image_id"].astype(str).tolist(), f"{names[0]}: oof_ids.csv is not in folds.csv order"
first = oofs[names[0]]
targets = experiment.targets(tuple(first.shape[-2:]), reuse=True)
score_fn = ensemble.blend_score_fn(task, targets)
rows = ensemble.sample_rows(len(ids), cfg.fit_rows, cfg.seed)
print(f"{len(ids)} rows, {first.dtype} {first.shape[1:]}; fitting on {len(ids) if rows is None else len(rows)} rows")

# %% [markdown]
# ## Each experiment and every subset (equal weights, all rows)

# %%
subsets = ensemble_search.subset_search(oofs, score_fn, max_subsets=4096)
display(subsets.head(20))

# %% [markdown]
# ## Weights
# Optimised on the row sample; equal weights are the baseline. Both are then scored on every row.

# %%
m = len(names)
climb = ensemble_search.hill_climb(oofs, score_fn, n_iter=cfg.hill_climb_iter, rows=rows)
if cfg.method == "mean":
    weights = np.full(m, 1.0 / m)
elif cfg.method == "hill_climb":
    weights = climb.weights
else:
    fit = ensemble_search.optimize_weights(oofs, score_fn, method=cfg.method, rows=rows, seed=cfg.seed,
                                           maxiter=cfg.maxiter)  # fmt: skip
    weights = fit.weights
score = ensemble.blend_score(oofs, score_fn, weights)
equal_score = ensemble.blend_score(oofs, score_fn, None)
display(pd.DataFrame({"weight": weights}, index=names))
print(f"{score_fn.name}: equal weights {equal_score:.4f}, {cfg.method} {score:.4f} (0.5 / argmax, all rows)")

# %% [markdown]
# ## Hill climbing trace
# Ensemble selection (Caruana et al. 2004): the score after each model added.

# %%
plots.plot_trace(climb.trace, f"hill climbing: {dict(zip(names, climb.counts.tolist(), strict=True))}")

# %% [markdown]
# ## Held-out check of the weights
# Fitted on K-1 folds (of the row sample), scored on the held-out fold: if the held-out mean is not above equal weights,
# plain averaging is the safer submission.

# %%
cv_check_result = None
if cfg.cv_check and cfg.method in ensemble_search.METHODS and m > 1:
    take = slice(None) if rows is None else rows
    sample = {n: np.asarray(a[take]) for n, a in oofs.items()}
    sample_fn = ensemble.blend_score_fn(task, np.asarray(targets[take]))
    cv_check_result = ensemble_search.cv_weights(sample, experiment.folds[take], sample_fn, method=cfg.method,
                                                 seed=cfg.seed, maxiter=cfg.maxiter)  # fmt: skip
    display(cv_check_result.table)
    print(f"held-out {cv_check_result.held_out_mean:.4f} vs equal {cv_check_result.equal_held_out_mean:.4f}; "
          f"optimism {cv_check_result.optimism:.4f}")  # fmt: skip
else:
    print("no held-out check (one experiment, method mean / hill_climb, or cv_check False)")

# %% [markdown]
# ## Stacking (classification)
# A meta-model on the members' OOF probabilities side by side (Cassava top solutions), fitted on K-1 folds and
# scored on the held-out fold, so its CV compares honestly with the blends'. Chosen only when it beats the weighted
# blend; it is then refitted on every row for the test set (`stacking.json`).

# %%
stacking_record, stacked = None, None
if cfg.stacking:
    stacking_record, stacked = choose_stacking(
        oofs, targets, experiment.folds, score_fn, score, cfg.out_dir, cfg.stacking, cfg.stacking_c,
        cfg.stacking_log, cfg.seed,
    )  # fmt: skip
    display(stacked.table)
    display(pd.DataFrame({score_fn.name: [equal_score, score, stacked.score]},
                         index=["equal weights", cfg.method, f"stacking {cfg.stacking}"]))  # fmt: skip
    print(f"stacking {'chosen' if stacking_record['chosen'] else 'not chosen'}: {stacked.score:.4f} vs {score:.4f}")
else:
    print("no stacking (stacking '')")
chosen = stacking_record is not None and stacking_record["chosen"]

# %% [markdown]
# ## The ensemble's OOF: CV and post-processing
# The weighted blend (or the stacked OOF, when chosen), written as `artifacts/<ensemble_name>/oof_probs.npy`; the
# post-processing search of `20_oof` runs again on it.

# %%
if chosen:  # the stacked OOF is the ensemble's (a "blend" of one array with weight 1 writes it as it is)
    blended = predictions.write_blend({"stacking": stacked.oof_probs}, [1.0], cfg.out_dir, ids)
else:
    blended = predictions.write_blend(oofs, weights, cfg.out_dir, ids)
raw = score_oof(blended, targets, task).table
post_params, tables, post = None, {}, None
if task.task in search.POSTPROCESS_TASKS:
    gate_probs = oof.gate_class_probs(cfg.gate_dir, ids) if cfg.gate_exp else None
    post_params, tables = search.search_from_params(
        blended, targets, task, cfg.thresholds, cfg.min_areas, cfg.triplet, cfg.top_thresholds,
        cfg.min_contour_areas, cfg.bottom_thresholds, gate=cfg.gate or gate_probs is not None, top_k=cfg.top_k,
        num_workers=cfg.num_workers, gate_probs=gate_probs, gate_exp=cfg.gate_exp, youden=cfg.youden,
    )  # fmt: skip
    post_params.meta.update(exps=names, weights=[float(w) for w in weights])
    post = score_oof(blended, targets, task, post_params, gate_probs if post_params.gate_exp else None).table
    display(tables["best"])
    if tables["gate"] is not None:
        display(tables["gate"])
    if tables["youden"] is not None:  # the pixel ROC; each class's Youden threshold joined the grid above
        display(tables["youden"])
        display(plots.plot_roc(tables["roc"], tables["youden"]))
display(raw.merge(post if post is not None else raw, on=["class", "n"], suffixes=("_raw", "_post")))

# %% [markdown]
# ## DenseCRF refinement
# As in `20_oof`: with `crf`, the CRF grid on `crf_images` rows of the blend, kept only when it beats the settings
# above on that subset (the CV above is without it).

# %%
if cfg.crf and task.task in search.CRF_TASKS:
    grid = {name: getattr(cfg, f"crf_{name}") for name in search.CRF_GRID}
    gated = post_params is not None and post_params.gate_exp
    post_params, tables["crf"] = search.search_crf_from_params(
        blended, targets, experiment.df, task, cfg.crf_images, grid, post_params, gate_probs if gated else None,
        seed=cfg.seed,
    )  # fmt: skip
    if post_params is not None:
        post_params.meta.update(exps=names, weights=[float(w) for w in weights])
    display(tables["crf"].sort_values("score", ascending=False).head(10))
    print("CRF chosen:", post_params.crf if post_params is not None and post_params.crf else "none (no gain)")

# %% [markdown]
# ## Per-class report and confusion matrix (classification)

# %%
report = None
if task.task == "classification":
    report = oof.classification_report(blended, targets, task.classes)
    display(report)
    display(plots.plot_confusion_matrix(blended, targets, task.classes))
else:
    print(f"{task.task}: the CV table above is per class")

# %% [markdown]
# ## Save

# %%
extra = {"exps": names, "weights": [float(w) for w in weights], "n_images": len(ids),
         "stacking": cfg.stacking if chosen else None}  # fmt: skip
summary = oof.save_cv(cfg.out_dir, task, raw, post, post_params, extra=extra, report=report)
weights_json = {
    "exps": names, "weights": [float(w) for w in weights], "method": cfg.method, "score": score,
    "equal_score": equal_score, "metric": score_fn.name, "fit_rows": len(ids) if rows is None else len(rows),
    "hill_climb": climb.to_json(),
    "cv_held_out": None if cv_check_result is None else cv_check_result.held_out_mean,
    "cv_equal_held_out": None if cv_check_result is None else cv_check_result.equal_held_out_mean,
    "stacking": stacking_record,
}  # fmt: skip
write_json(cfg.out_dir / "weights.json", weights_json)
print(f"CV {summary['metric']}: {summary['cv']} raw, {summary['cv_postprocessed']} post-processed")

# %%
plots.plot_search_heatmaps(tables["threshold"]) if tables else "no search for this task"
