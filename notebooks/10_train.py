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
# # 10 Train: one fold
#
# Trains fold `fold` of `artifacts/<exp>/folds.csv` (from `00_eda`) with the preset's default recipe
# (`kitlib.recipes.TRAIN_RECIPES`) or the parameters below, then predicts the held-out images. Writes
# `artifacts/<exp>/fold<k>/`: `best.pt`, `last.pt`, `history.csv`, `config.json`, `oof_probs.npy` + `oof_ids.csv`
# (probabilities at the competition's scoring resolution, rows in folds.csv order), `scores.json`, `done.json`.
# A killed run resumes from `last.pt` when rerun with the same parameters. With `tracker` (wandb offline, mlflow),
# the config, every epoch's history row and the fold's scores also go to a tracker run `<exp>/fold<k>`.
#
# Headless: `jupytext --to ipynb --output - notebooks/10_train.py | papermill - out.ipynb -p fold 0`
# (`./run_all.sh` loops over the folds). Several GPUs: `gpus: 2` runs this fold with `torchrun` (DDP).

# %% tags=["parameters"]
from typing import Optional

exp: str = "demo"  # artifacts/<exp>/ holds folds.csv (from 00_eda) and receives fold<k>/
preset: str = "demo"  # built-in preset (clouds, severstal, dacon_building, masks, coco, cassava, demo, ...) or a preset
# file, path/to/competition.yaml (relative to the repo root; data_README.md "Your own competition")
data_dir: str = "data/demo"  # competition folder (relative to the repo root)
fold: int = 0  # held-out fold, 0..n_folds-1 of folds.csv
label_file: str = ""  # train label file inside data_dir; empty: the one 00_eda used
artifacts_root: str = "artifacts"  # where artifacts/<exp>/ lives (relative to the repo root)
exclude_ids_file: str = ""  # CSV with an image_id column (a reviewed copy of 20_oof's label_issues.csv: its flagged
# rows): these leave every fold's training rows and stay in validation, so the CV compares with the plain run
relabel_file: str = ""  # classification: CSV image_id, label (or suggested_label): the training rows' new labels;
# validation keeps the original labels. Both paths relative to the repo root; their content is part of run_id
# Model and training; None takes the recipe: the named one, else the preset's (kitlib.recipes)
recipe: str = ""  # a solution's recipe (kitlib.recipes.NAMED_RECIPES): cassava_1st_b4_bitempered, ...; "": none
arch: Optional[str] = None  # smp architecture: unet, unetplusplus, fpn, upernet, ...; "classifier": a presence
# classifier (model_name) whose OOF probs gate another experiment's masks (20_oof -p gate_exp <this exp>)
encoder_name: Optional[str] = None  # smp or timm ("tu-...") encoder; classification presets use model_name
model_name: Optional[str] = None  # timm classifier for classification presets and presence classifiers
encoder_weights: Optional[str] = None  # "imagenet", a local .pth/.safetensors file or folder, or "none" (scratch)
aux_head: Optional[bool] = None  # classification head beside the masks (Understanding Clouds 1st place)
dropout: Optional[float] = None  # dropout before the classification head / classifier layer
multi_sample_dropout: Optional[int] = None  # classifiers: n (2 or more) dropout samples at `dropout`, logits averaged
global_pool: Optional[str] = None  # classifiers: timm pooling: avg, max, avgmax, catavgmax
drop_path_rate: Optional[float] = None  # classifiers: stochastic depth (timm drop_path_rate)
init_from: Optional[str] = None  # start from fold <fold>'s best.pt of this experiment (same folds.csv): fine-tune
# at a new size or learning rate; None: encoder_weights
model_kwargs: Optional[dict] = None  # more create_model / create_classifier keywords, e.g. decoder_channels
height: Optional[int] = None  # training resolution in pixels (multiple of 32)
width: Optional[int] = None
crop_height: Optional[int] = None  # train on random crops of the resized images; 0: whole images
crop_width: Optional[int] = None
batch_size: Optional[int] = None
epochs: Optional[int] = None
encoder_lr: Optional[float] = None  # AdamW learning rate of the encoder
decoder_lr: Optional[float] = None  # ... of the decoder and heads
weight_decay: Optional[float] = None
optimizer: Optional[str] = None  # timm.optim name: adamw, adamp, radam, sgd (Nesterov), lookahead_radam, ...
optimizer_kwargs: Optional[dict] = None  # more optimiser arguments: momentum, betas, eps, ...
scheduler: Optional[str] = None  # onecycle, cosine, cosine_restarts (SGDR), cosine_warmup_restarts (a warmup every
# cycle, peaks decaying by restart_gamma: Dacon building), plateau (ReduceLROnPlateau), constant
warmup_epochs: Optional[float] = None  # linear warmup of cosine / cosine_restarts (at the start) and
# cosine_warmup_restarts (every cycle), in epochs
pct_start: Optional[float] = None  # OneCycle's rising fraction
min_lr_ratio: Optional[float] = None  # cosine / cosine_restarts: the lowest rate as a fraction of the peak
restart_epochs: Optional[float] = None  # cosine_(warmup_)restarts: length of the first cycle, in epochs
restart_mult: Optional[int] = None  # cosine_restarts: each cycle this many times longer than the one before
restart_gamma: Optional[float] = None  # cosine_warmup_restarts: each cycle's peak times this, in (0, 1]
plateau_factor: Optional[float] = None  # plateau: the rates times this after plateau_patience flat epochs
plateau_patience: Optional[int] = None  # plateau: epochs without improvement of the monitored score
swa_epochs: Optional[int] = None  # average the weights of the last N epochs (SWA, BatchNorm recomputed); 0: off
average_top_k: Optional[int] = None  # or average the weights of the N best epochs; 0: off
loss: Optional[str] = None  # a loss recipe (clouds_1st, clouds_6th, trash_ce_dice, ...) or a loss name (ce,
# focal_ce, bi_tempered, taylor_ce, focal_cosine, symmetric_ce, nce_rce, dice, ...: kitlib.losses.LOSSES)
loss_kwargs: Optional[dict] = None  # keywords of a loss name, e.g. {"label_smoothing": 0.1, "weight": [...]}; None:
# the recipe's when loss is the recipe's, else none
accumulate: Optional[int] = None  # batches per optimiser step
clip_grad_norm: Optional[float] = None  # 0: no clipping
amp: Optional[str] = None  # auto (bf16/fp16 on CUDA, off on CPU), bf16 (CUDA or CPU), fp16, off
channels_last: Optional[bool] = None
ema_decay: Optional[float] = None  # 0: no EMA of the weights
augment: Optional[str] = None  # augmentation pipeline (kitlib.augment.PIPELINES): none, flips, light, clouds_1st,
# clouds_6th, clouds_2nd_clahe, dacon_building, trash, cassava, unet_elastic; or a path to a pipeline YAML file
native_scale: Optional[bool] = None  # True: no resize at any stage (train crops, valid and test images at their own
# scale); height x width is then the train images' size (the cache's)
mix: Optional[str] = None  # batch mix: none; classification mixup, cutmix, fmix, mixup_cutmix; segmentation cutmix
# (images and masks), copy_paste (objects of mix_classes pasted with their masks: the trash team's SongbaeMix)
mix_prob: Optional[float] = None  # probability that a training batch is mixed
mix_alpha: Optional[float] = None  # lambda ~ Beta(mix_alpha, mix_alpha)
mix_off_epochs: Optional[int] = None  # the last N epochs train unmixed (Cassava top solutions)
mix_classes: Optional[list] = None  # copy_paste: class names or indices of the preset's classes; []: every class
distill_from: str = ""  # knowledge distillation: the teacher experiment (or ensemble) whose gathered OOF probs
# (artifacts/<teacher>/oof_probs.npy from 20_oof; same folds.csv recommended) are soft labels; "": none
distill_alpha: float = 0.5  # weight of the hard-label loss; the soft term (KL at distill_temperature) weighs 1 - alpha
distill_temperature: float = 1.0  # T of Hinton et al. 2015 on teacher and student; the soft term is scaled by T^2
oversample_classes: Optional[list] = None  # images holding any of these classes are drawn oversample_factor times
oversample_factor: Optional[float] = None  # ... as often as the others (with replacement); 1: every image once
coteach: bool = False  # co-teaching (Han et al. 2018): two networks, each updated on the images of a batch with
# the smallest loss under the other one, so that wrongly labelled images stay out (kitlib.coteach)
coteach_tau: float = 0.2  # co-teaching's final forget rate, in [0, 1): about the estimated share of wrong labels
coteach_epochs: int = 5  # T_k: the forget rate rises linearly from 0 to coteach_tau over these first epochs
coteach_predict: str = "mean"  # what validation, OOF and test predictions use: a, b (one network), or mean (the mean
# of the two networks' logits)
monitor: Optional[str] = None  # history column that picks best.pt; "": valid_<metric>
patience: Optional[int] = None  # early stopping after this many epochs without improvement; 0: off
valid_last: Optional[int] = None  # validate only the last N epochs, best.pt the best of them (valid_* columns NaN
# before); 0: every epoch, as patience and the plateau scheduler need. The demo: 4 of 8 (its early epochs never win)
# Train-only rows (kitlib.train_rows): they join every fold's training set, never the held-out rows or the CV
extra_data: str = ""  # a labelled folder (relative to the repo root) in extra_preset's format; "": none
extra_label_file: str = ""  # its label file or folder inside extra_data; "": the preset's
extra_preset: str = ""  # the extra set's preset (a built-in name or a preset file); "": the competition's
extra_class_map: Optional[dict] = None  # extra class (name or index) to competition class, or None to drop it,
# e.g. {"cbb": 0, "healthy": 4}; None: both presets have the same classes
pseudo_from: str = ""  # an experiment or ensemble whose test_probs.npy (40_submit -p save_probs true) labels the test
# images; "": none
pseudo_threshold: float = 0.9  # classification: keep test images whose max probability reaches it; segmentation:
# pixels below this confidence (max of p and 1 - p; multiclass the max over classes) are ignored by the loss
pseudo_soft: bool = False  # classification: the test probabilities are the soft targets (else the argmax label)
seed: int = 42
num_workers: Optional[int] = None  # DataLoader processes
num_threads: int = 0  # torch's CPU threads; 0: torch's default (one per core). On a CPU shared with other jobs 1 can
# be 2-3x faster (benchmarks/bench_walltime.py --threads); results differ in the last bits between thread counts
cache: Optional[bool] = None  # read images from an on-disk cache at the training resolution
device: str = "auto"  # auto, cpu, cuda
compile: bool = False  # torch.compile the model for training and the OOF predictions (same weights: not in run_id)
compile_mode: Optional[str] = None  # torch.compile mode (inductor): default, reduce-overhead, max-autotune
compile_backend: Optional[str] = None  # None: inductor (a C++ compiler on CPU, triton on CUDA); aot_eager, eager
tta: str = "none"  # test-time augmentation of the OOF predictions: none, hflip, vflip, flips, d4; classifiers
# also center_crop, five_crop, plain_five_crop, multiscale, flips_multiscale
tta_weight: Optional[float] = None  # weight of the plain view against the mean of the other TTA views; None: equal
oof_dtype: Optional[str] = None  # segmentation OOF: uint8 (p x 255), float16, float32
gpus: int = 1  # > 1: run this fold with torchrun on that many GPUs (DDP)
smoke: bool = False  # 2 epochs on 2 batches: check the whole path quickly
tracker: Optional[str] = None  # experiment tracking (kitlib.tracking): wandb (offline run files), mlflow (a local
# store); None: off. Params, per-epoch metrics and scores are logged; not part of run_id
tracker_project: str = "kitlib"  # W&B project of the runs (grouped by exp); MLflow's experiment is exp
tracker_uri: str = ""  # W&B: the folder the runs go under; MLflow: a tracking URI or a folder (not under a folder
# named artifacts); "": WANDB_DIR / MLFLOW_TRACKING_URI when set, else runs/<exp>/ (wandb/ or mlruns/)

# %%
# %matplotlib inline
import json
import logging

import pandas as pd
from IPython.display import display

from kitlib import plots, predictions, train
from kitlib.stages import TrainConfig

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("kitlib").setLevel(logging.INFO)
cfg = TrainConfig.from_params(globals())  # type-checked; None takes the recipe's value; saved as fold<k>/config.json
print(cfg.recipe_source)
display(pd.Series(cfg.to_dict(), name=f"fold {cfg.fold}").to_frame())

# %% [markdown]
# ## Train
# One line per epoch (`*` marks a new best); `best.pt` keeps the best epoch on the monitored score.

# %%
result = train.launch_distributed(cfg, cfg.gpus) if cfg.gpus > 1 else train.train_fold(cfg)
print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1, default=str))

# %% [markdown]
# ## Learning curves

# %%
history = pd.read_csv(cfg.fold_dir / "history.csv")
display(history.tail())
plots.plot_history(history, monitor=result["monitor"])

# %% [markdown]
# ## Held-out predictions
# Scores at the competition's resolution (probability 0.5, no post-processing; `20_oof` searches that), and a few
# held-out images with their predicted masks.

# %%
display(pd.Series(result["scores"], name=f"fold {cfg.fold} OOF").to_frame())
oof_probs, oof_ids = predictions.read_oof(cfg.fold_dir)
valid = train.fold_tables(cfg)[2].set_index("image_id").loc[oof_ids].reset_index()
plots.plot_predictions(valid, cfg.model_preset, oof_probs, n=4, seed=cfg.seed)
