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
# # 40 Submit: predict the test set and write the submission
#
# Loads every fold's `best.pt` of `artifacts/<exp>/` (or of each experiment of `artifacts/<ensemble>/weights.json`,
# from `30_ensemble`), predicts the test images batch by batch (each model at its own input size, averaged at the
# competition's scoring resolution, with optional TTA; a classification ensemble whose stacker `30_ensemble` chose
# applies its meta-model, `stacking.json`, to the experiments' fold means instead), applies the post-processing of
# `postprocess.json` (from `20_oof` / `30_ensemble`; threshold 0.5, with a warning, when there is none; its
# `gate_exp` classifier's folds run beside the models when the search chose one; a DenseCRF chosen by
# `20_oof -p crf true` refines each test image's probabilities with the image first), and writes
# `runs/<exp>/submission.csv`, validated against the competition's sample submission (ids, order, RLE ends) before it
# is written.
#
# Headless: `jupytext --to ipynb --output - notebooks/40_submit.py | papermill - out.ipynb -p exp demo`
# (`./run_all.sh` runs it last).

# %% tags=["parameters"]
from typing import Optional

exp: str = "demo"  # artifacts/<exp>/ holds fold<k>/best.pt (from 10_train)
preset: str = "demo"  # built-in preset (clouds, severstal, dacon_building, masks, coco, cassava, demo, ...) or a preset
# file, path/to/competition.yaml (relative to the repo root; data_README.md "Your own competition")
data_dir: str = "data/demo"  # competition folder with the test images (relative to the repo root)
n_folds: int = 0  # use folds 0..n_folds-1 of exp; 0 (or an ensemble): every fold<k>/best.pt found
artifacts_root: str = "artifacts"  # where artifacts/<exp>/ lives (relative to the repo root)
ensemble: str = ""  # artifacts/<ensemble>/ with weights.json (30_ensemble); empty: exp alone, weight 1
tta: str = "none"  # test-time augmentation: none, hflip, vflip, flips, d4; classifiers also center_crop, five_crop,
# plain_five_crop, multiscale, flips_multiscale
tta_weight: Optional[float] = None  # weight of the plain view against the mean of the other TTA views; None: equal
batch_size: int = 8  # test images per batch
num_workers: int = 0  # DataLoader processes
device: str = "auto"  # auto, cpu, cuda
compile: bool = False  # torch.compile the model for the test predictions (checkpoints load either way)
compile_mode: Optional[str] = None  # torch.compile mode (inductor): default, reduce-overhead, max-autotune
compile_backend: Optional[str] = None  # None: inductor (a C++ compiler on CPU, triton on CUDA); aot_eager, eager
submission_path: str = ""  # submission CSV; empty: runs/<exp>/submission.csv (relative to the repo root)
n_samples: int = 4  # test images shown with their predicted masks
seed: int = 0  # which test images are shown
save_probs: bool = False  # also write the averaged test probabilities (after TTA, before post-processing) as
# artifacts/<exp or ensemble>/test_probs.npy + test_ids.csv: pseudo-labels for 10_train -p pseudo_from

# %%
# %matplotlib inline
import json
import logging

from IPython.display import display

from kitlib import inference, plots, predictions
from kitlib.formats import load_competition
from kitlib.postprocess import load_postprocess
from kitlib.stacking import load_stacker
from kitlib.stages import SubmitConfig

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("kitlib").setLevel(logging.INFO)
cfg = SubmitConfig.from_params(globals())  # type-checked
cfg.save()  # submission_config.json beside the submission
print(f"{cfg.preset.name}: {cfg.preset.description}")

# %% [markdown]
# ## Models and post-processing

# %%
root = cfg.artifacts_dir
members = inference.load_members(root, cfg.exp, cfg.ensemble, folds=cfg.folds, device=cfg.device)
members = inference.compile_members(members, cfg)  # -p compile true: torch.compile each fold's model
for models, weight in members:
    print(f"weight {weight:.3f}: {[str(m.path.relative_to(root)) for m in models]} at {models[0].height}x"
          f"{models[0].width}")  # fmt: skip
postprocess = load_postprocess(cfg.source_dir, cfg.preset)
print("post-processing:", "argmax" if postprocess is None else json.dumps(postprocess.to_dict(), default=str))
gate_models = inference.load_gate_models(root, postprocess, cfg.device)  # a separate presence classifier, if chosen
stacker = load_stacker(root / cfg.ensemble) if cfg.ensemble else None  # the meta-model 30_ensemble chose
if stacker is not None:
    print(f"stacking: {stacker.model} (C={stacker.c}) on {list(stacker.exps)} replaces the weighted mean")
if gate_models:
    print(f"gate: {[str(m.path.relative_to(root)) for m in gate_models]} at {gate_models[0].height}x"
          f"{gate_models[0].width}")  # fmt: skip

# %% [markdown]
# ## Predict and write
# One pass over the test images; rows are ordered like the sample submission and validated before the file is
# written.

# %%
test_df = load_competition(cfg.preset, cfg.data_path, split="test")
shown = test_df.sample(n=min(cfg.n_samples, len(test_df)), random_state=cfg.seed)
batches = inference.predict_test(members, test_df, cfg.preset, batch_size=cfg.batch_size, tta=cfg.tta,
                                 tta_weight=cfg.tta_weight, num_workers=cfg.num_workers,
                                 gate_models=gate_models, stacker=stacker)  # fmt: skip
if cfg.save_probs:  # the OOF formats: segmentation uint8 p x 255 at the scoring size, classification float16
    batches = predictions.record_predictions(batches, cfg.source_dir / "test_probs.npy", test_df["image_id"].tolist(),
                                             "uint8" if cfg.preset.is_segmentation else "float16")  # fmt: skip
result = inference.make_submission(batches, test_df, cfg.preset, cfg.data_path, cfg.submission_file, postprocess,
                                   keep_masks=shown["image_id"].tolist())  # fmt: skip
print(json.dumps(result.summary, indent=1))
display(result.submission.head(8))

# %% [markdown]
# ## A few test images with their predicted masks (or labels)

# %%
if cfg.preset.is_segmentation:
    display(plots.plot_samples(shown, cfg.preset, n=len(shown), masks=result.masks))
else:  # the submission's id and label columns (the preset's names), renamed to the table's
    names = dict(zip(cfg.preset.submission_columns[:2], ("image_id", "label"), strict=True))
    labels = result.submission.rename(columns=names)
    display(plots.plot_samples(shown.merge(labels[["image_id", "label"]], on="image_id"), cfg.preset, n=len(shown)))

# %%
print(f"submission: {result.path}")
if cfg.save_probs:
    print(f"test probabilities: {cfg.source_dir / 'test_probs.npy'} (+ test_ids.csv)")
