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
# # 20 OOF: the experiment's cross-validation score and its post-processing
#
# Gathers the held-out predictions of every fold (`artifacts/<exp>/fold<k>/oof_probs.npy`, from `10_train`) into
# `artifacts/<exp>/oof_probs.npy` (rows in `folds.csv` order, `kitlib.predictions.gather_oof`), scores them per class
# with the competition's metric, and searches per-class post-processing on them (threshold x min_area, optionally the
# triplet scheme) for binary and multilabel segmentation. Multiclass segmentation is decoded by argmax and
# classification by the top class: they get the CV only.
#
# A presence classifier (`10_train` with `arch="classifier"`) gets its per-class precision-recall curves and gate
# thresholds instead; a segmentation experiment then tries it as the gate of its masks with `gate_exp=<its exp>`.
#
# Classification also gets its per-class report (precision, recall, F1, support) and confusion matrix.
#
# With `crf`, segmentation (multiclass included) also tries a DenseCRF refinement of the probabilities with the image
# (the trash-sorting contest's; `kitlib.crf`), its parameters searched on `crf_images` OOF images; `40_submit` applies
# the chosen ones to each test image.
#
# With `label_issues`, the images whose label looks wrong are ranked (`kitlib.label_noise`: cleanlab's confident
# learning on the OOF probabilities for classification, the OOF per-image Dice for segmentation), the worst drawn, and
# the table saved as `label_issues.csv`: review it, keep the rows to drop (or relabel) in a file of your own and pass
# it to `10_train` as `exclude_ids_file` (or `relabel_file`) in a new experiment.
#
# Writes `artifacts/<exp>/`: `oof_probs.npy`, `oof_ids.csv` (+ `oof_cls_probs.npy`), `oof_masks.npy` (the truth at the
# scoring resolution), `postprocess.json` (read by `40_submit`), `cv.json`, `class_report.csv` (classification),
# `label_issues.csv`, `oof_config.json`. With `tracker`, the CV and the post-processing go to the experiment's tracker.
#
# Headless: `jupytext --to ipynb --output - notebooks/20_oof.py | papermill - out.ipynb -p exp demo`

# %% tags=["parameters"]
from typing import Optional

exp: str = "demo"  # artifacts/<exp>/ holds folds.csv and fold<k>/ (from 10_train)
preset: str = "demo"  # built-in preset (clouds, severstal, dacon_building, masks, coco, cassava, demo, ...) or a preset
# file, path/to/competition.yaml (relative to the repo root; data_README.md "Your own competition")
data_dir: str = "data/demo"  # competition folder (relative to the repo root)
label_file: str = ""  # train label file inside data_dir; empty: the one training used
artifacts_root: str = "artifacts"  # where artifacts/<exp>/ lives (relative to the repo root)
thresholds: str = "0.2,0.3,0.4,0.5,0.6,0.7"  # pixel thresholds to search (comma-separated)
min_areas: str = "0,100,500,2000,5000,10000"  # components of at most this many pixels are removed (at scoring size)
triplet: bool = False  # also search the triplet scheme (SIIM-ACR 1st place); the better mean Dice wins
top_thresholds: str = "0.5,0.6,0.7"  # triplet: top_score_threshold values
min_contour_areas: str = "0,100,1000,5000"  # triplet: pixels above the top threshold needed to keep a class
bottom_thresholds: str = "0.3,0.4,0.5"  # triplet: bottom_score_threshold values
num_workers: Optional[int] = None  # threads of the search; None: the usable CPUs (at most 8)
gate: bool = True  # also try an image-level class gate (Clouds 1st place); kept only when it raises the CV
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
n_samples: int = 4  # OOF images drawn with their predicted masks
label_issues: bool = True  # rank the images by how likely their label is wrong (classification: cleanlab on the
# OOF probs; segmentation: OOF Dice), written as label_issues.csv for review
n_issues_shown: int = 8  # the worst images drawn with their label (or truth mask) and the OOF prediction
issue_fraction: float = 0.05  # segmentation: the worst fraction of the images by OOF Dice is flagged
issue_max_dice: float = 0.0  # segmentation: also flag every image whose OOF Dice is below this; 0: none
seed: int = 42  # which images are drawn (also the CRF search's subset)
tracker: Optional[str] = None  # experiment tracking (kitlib.tracking): wandb (offline run files), mlflow (a local
# store); None: off. Params, per-epoch metrics and scores are logged; not part of run_id
tracker_project: str = "kitlib"  # W&B project of the runs (grouped by exp); MLflow's experiment is exp
tracker_uri: str = ""  # W&B: the folder the runs go under; MLflow: a tracking URI or a folder (not under a folder
# named artifacts); "": WANDB_DIR / MLFLOW_TRACKING_URI when set, else runs/<exp>/ (wandb/ or mlruns/)

# %%
# %matplotlib inline
import logging

from IPython.display import display

from kitlib import gate as class_gate
from kitlib import label_noise, oof, plots, predictions, search, tracking
from kitlib.experiment import load_experiment
from kitlib.scoring import score_oof
from kitlib.stages import OofConfig

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("kitlib").setLevel(logging.INFO)
cfg = OofConfig.from_params(globals())  # type-checked; saved as artifacts/<exp>/oof_config.json
cfg.save()
experiment = load_experiment(cfg.exp_dir, cfg.preset, cfg.data_path, cfg.label_file)
task = experiment.model_preset  # the competition's task, or the presence task of a presence classifier
print(f"{cfg.exp} ({task.task}): {len(experiment.df)} images in {experiment.n_folds} folds, preset {cfg.preset.name}")

# %% [markdown]
# ## Gather the folds
# One array in `folds.csv` order; missing folds or ids fail here, named.

# %%
predictions.gather_oof(cfg.exp_dir)
oof_probs, oof_ids, oof_cls_probs = predictions.read_gathered(cfg.exp_dir)
assert oof_ids == experiment.df["image_id"].astype(str).tolist()
targets = experiment.targets(tuple(oof_probs.shape[-2:]))  # masks at the scoring size, labels, or class presence
print(f"oof_probs {oof_probs.dtype} {oof_probs.shape}; targets {targets.dtype} {targets.shape}")

# %% [markdown]
# ## CV per class
# Probability 0.5 for binary / multilabel masks (no post-processing), argmax otherwise.

# %%
if task.task == "presence":  # precision / recall / F1 per class at the F1-best threshold, the curves below
    report = class_gate.presence_report(oof_probs, targets, task.target_classes)
    display(report)
    display(plots.plot_pr_curves(oof_probs, targets, task.target_classes, report["threshold"][:-1]))
    summary = oof.save_presence_cv(cfg.exp_dir, report, extra={"exp": cfg.exp, "n_images": len(oof_ids)})
    print(f"presence classifier: mean F1 {summary['cv']:.4f}; use it as a gate: 20_oof -p gate_exp {cfg.exp}")
else:
    raw = score_oof(oof_probs, targets, task).table
    display(raw)

# %% [markdown]
# ## Per-class report and confusion matrix (classification)
# Precision, recall, F1 and support per class, macro / weighted means and accuracy (`kitlib.oof.classification_report`,
# saved as `class_report.csv`); the confusion matrix in counts and row-normalised (recall on the diagonal).

# %%
report = None
if task.task == "classification":
    report = oof.classification_report(oof_probs, targets, task.classes)
    display(report)
    display(plots.plot_confusion_matrix(oof_probs, targets, task.classes))
else:
    print(f"{task.task}: no per-class classification report")

# %% [markdown]
# ## Label issues
# Classification: `cleanlab.filter.find_label_issues` on the OOF probabilities, every image ranked by the OOF
# probability of its given label (self-confidence), cleanlab's issues flagged, the OOF argmax as the suggested label.
# Segmentation: the images ranked by their OOF Dice at 0.5 (worst first, the per-pixel cross-entropy beside it), the
# worst `issue_fraction` flagged. Nothing is dropped here: review `label_issues.csv`, then train a new experiment with
# `exclude_ids_file` / `relabel_file` (a copy of it whose `flagged` column you corrected, or your own id list).

# %%
if cfg.label_issues and task.task in label_noise.ISSUE_TASKS:
    issues = label_noise.label_issues(oof_probs, targets, oof_ids, task, cfg.issue_fraction, cfg.issue_max_dice)
    issues_path = label_noise.save_label_issues(cfg.exp_dir, issues)
    print(f"{int(issues['flagged'].sum())} of {len(issues)} images flagged; the ranked table: {issues_path}")
    display(issues.head(max(cfg.n_issues_shown, 10)))
    row_of = {image_id: i for i, image_id in enumerate(oof_ids)}
    worst = [row_of[i] for i in issues["image_id"].head(cfg.n_issues_shown)]
    if worst:
        display(plots.plot_predictions(experiment.df, task, oof_probs, rows=worst))
else:
    print(f"label issues: {'off' if not cfg.label_issues else f'none for a {task.task} task'}")

# %% [markdown]
# ## Post-processing search
# Per class, the (threshold, min_area) with the best OOF Dice (`kitlib.search.search_thresholds`); with
# `triplet`, also the triplet scheme, and the scheme with the better mean Dice over classes wins. With `gate`, an
# image-level class gate (mean of the top-K pixel probs, averaged with the classification head when there is one;
# per-class thresholds from the OOF precision-recall curve; optionally the most probable class forced on: Clouds 1st
# place) is kept when it raises the OOF Dice. With `youden`, each class's threshold of Youden's index on the OOF pixels
# (the largest TPR - FPR of the pixel ROC, `kitlib.roc`: the Dacon building team's choice) joins the threshold grid,
# and the ROC curves are drawn with it marked.

# %%
searched = task.task in search.POSTPROCESS_TASKS
post_params, tables, post, gate_input = None, {}, None, None
gate_probs = oof.gate_class_probs(cfg.gate_dir, oof_ids) if cfg.gate_exp and searched else None
if searched:
    post_params, tables = search.search_from_params(
        oof_probs, targets, task, cfg.thresholds, cfg.min_areas, cfg.triplet, cfg.top_thresholds,
        cfg.min_contour_areas, cfg.bottom_thresholds, gate=cfg.gate or gate_probs is not None, top_k=cfg.top_k,
        cls_probs=oof_cls_probs, num_workers=cfg.num_workers, gate_probs=gate_probs, gate_exp=cfg.gate_exp,
        youden=cfg.youden,
    )  # fmt: skip
    print(f"winner: {post_params.meta['method']}, gate: {post_params.meta.get('gate', 'not searched')}")
    display(tables["best"])
    if tables["gate"] is not None:  # top-K pixel probs (+ the head, + the gate_exp classifier), PR thresholds
        display(tables["gate"])
    if tables["youden"] is not None:  # the pixel ROC; each class's Youden threshold joined the grid above
        display(tables["youden"])
        display(plots.plot_roc(tables["roc"], tables["youden"]))
    gate_input = gate_probs if post_params.gate_exp else oof_cls_probs
    post = score_oof(oof_probs, targets, task, post_params, gate_input).table
elif task.task != "presence":
    print(f"{task.task}: no threshold search (argmax)")

# %% [markdown]
# ## DenseCRF refinement
# With `crf`: every combination of the CRF grid runs on `crf_images` OOF images (read at the scoring size) after the
# settings above (argmax for multiclass); the best is kept in `postprocess.json` only when it beats them on that
# subset (`kitlib.search.search_crf`; the scores are in its `meta.crf_search`). The CV above is without the CRF.

# %%
if cfg.crf and task.task in search.CRF_TASKS:
    grid = {name: getattr(cfg, f"crf_{name}") for name in search.CRF_GRID}
    post_params, tables["crf"] = search.search_crf_from_params(
        oof_probs, targets, experiment.df, task, cfg.crf_images, grid, post_params,
        gate_input if post_params is not None and post_params.needs_class_probs else None, seed=cfg.seed,
    )  # fmt: skip
    display(tables["crf"].sort_values("score", ascending=False).head(10))
    print("CRF chosen:", post_params.crf if post_params is not None and post_params.crf else "none (no gain)")

# %% [markdown]
# ## Save `cv.json` and `postprocess.json`

# %%
if task.task != "presence":
    summary = oof.save_cv(cfg.exp_dir, task, raw, post, post_params, report=report,
                          extra={"exp": cfg.exp, "n_images": len(oof_ids), "n_folds": experiment.n_folds})  # fmt: skip
    print(f"CV {summary['metric']}: {summary['cv']} raw, {summary['cv_postprocessed']} post-processed")
    display(raw.merge(post if post is not None else raw, on=["class", "n"], suffixes=("_raw", "_post")))

# %% [markdown]
# ## Experiment tracking
# With `tracker` (wandb, mlflow): a run `<exp>/oof` beside the folds' runs, holding this stage's parameters, the CV
# (`cv.json`) and the post-processing chosen (`postprocess.json`; `kitlib.tracking.log_oof_stage`). Off by default.

# %%
tracking.log_oof_stage(cfg, summary)

# %% [markdown]
# ## Score surface
# Mean Dice of each class over the threshold x min_area grid; the red box is the chosen cell.

# %%
plots.plot_search_heatmaps(tables["threshold"]) if searched else "no search for this task"

# %% [markdown]
# ## OOF images
# A few held-out images: truth beside the prediction at probability 0.5.

# %%
plots.plot_predictions(experiment.df, task, oof_probs, n=cfg.n_samples, seed=cfg.seed)
