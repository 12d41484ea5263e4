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
# (`kitlib.train.TRAIN_RECIPES`) or the parameters below, then predicts the held-out images. Writes
# `artifacts/<exp>/fold<k>/`: `best.pt`, `last.pt`, `history.csv`, `config.json`, `oof_probs.npy` + `oof_ids.csv`
# (probabilities at the competition's scoring resolution, rows in folds.csv order), `scores.json`, `done.json`.
# A killed run resumes from `last.pt` when rerun with the same parameters.
#
# Headless: `jupytext --to ipynb --output - notebooks/10_train.py | papermill - out.ipynb -p fold 0`
# (`./run_all.sh` loops over the folds). Several GPUs: `gpus: 2` runs this fold with `torchrun` (DDP).

# %% tags=["parameters"]
exp: str = "demo"  # artifacts/<exp>/ holds folds.csv (from 00_eda) and receives fold<k>/
preset: str = "demo"  # competition preset: clouds, severstal, dacon_building, masks, coco, cassava, demo
data_dir: str = "data/demo"  # competition folder (relative to the repo root)
fold: int = 0  # held-out fold, 0..n_folds-1
n_folds: int = 5  # passed by run_all; the folds themselves come from folds.csv
label_file: str = ""  # train label file inside data_dir; empty: the one 00_eda used
artifacts_root: str = "artifacts"  # where artifacts/<exp>/ lives (relative to the repo root)
# Model and training; None takes the preset's recipe (kitlib.train.TRAIN_RECIPES)
arch: str = None  # smp architecture: unet, unetplusplus, fpn, upernet, deeplabv3plus, ...; "classifier": a presence
# classifier (model_name) whose OOF probs gate another experiment's masks (20_oof -p gate_exp <this exp>)
encoder_name: str = None  # smp or timm ("tu-...") encoder; classification presets use model_name
model_name: str = None  # timm classifier for classification presets and presence classifiers
encoder_weights: str = None  # "imagenet", a local .pth/.safetensors file or folder, or "none" (from scratch)
aux_head: bool = None  # classification head beside the masks (Understanding Clouds 1st place)
height: int = None  # training resolution in pixels (multiple of 32)
width: int = None
batch_size: int = None
epochs: int = None
encoder_lr: float = None  # AdamW learning rate of the encoder
decoder_lr: float = None  # ... of the decoder and heads
weight_decay: float = None
scheduler: str = None  # onecycle, cosine, constant
loss: str = None  # a loss recipe (clouds_1st, clouds_6th, trash_ce_dice, ...) or a loss name
accumulate: int = None  # batches per optimiser step
clip_grad_norm: float = None  # 0: no clipping
amp: str = None  # auto (bf16/fp16 on CUDA, off on CPU), bf16 (CUDA or CPU), fp16, off
channels_last: bool = None
ema_decay: float = None  # 0: no EMA of the weights
augment: str = None  # none, flips, light
patience: int = None  # early stopping after this many epochs without improvement; 0: off
seed: int = 42
num_workers: int = None  # DataLoader processes
device: str = "auto"  # auto, cpu, cuda
tta: str = "none"  # test-time augmentation of the OOF predictions: none, hflip, vflip, flips, d4
gpus: int = 1  # > 1: run this fold with torchrun on that many GPUs (DDP)
smoke: bool = False  # 2 epochs on 2 batches: check the whole path quickly

# %%
# %matplotlib inline
import json
import logging

import pandas as pd
from IPython.display import display

from kitlib import plots, train

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("kitlib").setLevel(logging.INFO)
overrides = dict(arch=arch, encoder_name=encoder_name, model_name=model_name, encoder_weights=encoder_weights,
                 aux_head=aux_head, height=height, width=width, batch_size=batch_size, epochs=epochs,
                 encoder_lr=encoder_lr, decoder_lr=decoder_lr, weight_decay=weight_decay, scheduler=scheduler,
                 loss=loss, accumulate=accumulate, clip_grad_norm=clip_grad_norm, amp=amp, channels_last=channels_last,
                 ema_decay=ema_decay, augment=augment, patience=patience, num_workers=num_workers)  # fmt: skip
cfg = train.train_config(preset, exp=exp, data_dir=data_dir, fold=fold, label_file=label_file,
                         artifacts_root=artifacts_root, seed=seed, device=device, tta=tta, smoke=smoke,
                         **overrides)  # fmt: skip
print(cfg.recipe_source)
display(pd.Series(cfg.to_dict(), name=f"fold {fold}").to_frame())

# %% [markdown]
# ## Train
# One line per epoch (`*` marks a new best); `best.pt` keeps the best epoch on the monitored score.

# %%
if gpus > 1:
    result = train.launch_distributed(cfg, gpus)
else:
    result = train.train_fold(cfg)
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
display(pd.Series(result["scores"], name=f"fold {fold} OOF").to_frame())
oof_probs, oof_ids = train.read_oof(cfg.fold_dir)
valid = train.fold_tables(cfg)[2].set_index("image_id").loc[oof_ids].reset_index()
plots.plot_predictions(valid, cfg.preset, oof_probs, n=4, seed=seed)
