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
# # 00 EDA: look at the data, then fix the folds
#
# Reads a competition folder with its preset (`kitlib.presets`), checks it (missing files, malformed RLE, duplicated
# ids, images not of the preset's `image_size`, truncated or corrupt images fail here, naming them), shows what the
# labels look like, and writes the cross-validation folds that every later notebook uses: `artifacts/<exp>/folds.csv`.
# Near-duplicate images (perceptual hashes, `kitlib.near_duplicates`) are shown and kept in one fold, so that they do
# not leak across folds (`artifacts/<exp>/duplicates.csv`).
#
# Headless: `jupytext --to ipynb --output - notebooks/00_eda.py | papermill - runs/demo/00_eda.ipynb -p exp demo`
# (`./run_all.sh` does this for you).

# %% tags=["parameters"]
exp: str = "demo"  # artifacts/<exp>/ receives folds.csv
preset: str = "demo"  # built-in preset (clouds, severstal, dacon_building, masks, coco, cassava, demo, ...) or a preset
# file, path/to/competition.yaml (relative to the repo root; data_README.md "Your own competition")
data_dir: str = "data/demo"  # competition folder, as the competition ships it (relative to the repo root)
label_file: str = ""  # train label file inside data_dir; empty means the competition's own name, e.g. train.csv
drop_missing: bool = False  # keep only rows whose image file exists (else a missing file is an error)
drop_invalid: bool = False  # drop images with a malformed RLE (else an error naming them)
n_folds: int = 5  # K of the K-fold split; 0 writes no folds (a sample too small to split)
seed: int = 42  # fold split seed
group_col: str = ""  # optional column whose groups must not be split across folds
dup_distance: int = 4  # near-duplicates: images whose 64-bit perceptual hashes differ in at most this many bits are
# one group, kept in one fold (with group_col: the union of both); -1: off
n_dup_pairs: int = 6  # near-duplicate pairs drawn side by side
n_samples: int = 8  # images in the sample grid
augment: str = ""  # augmentation pipeline drawn on a few images (kitlib.augment.PIPELINES name or a YAML path); "":
# the preset's training recipe's (with its height, width and native_scale)
artifacts_root: str = "artifacts"  # where artifacts/<exp>/ lives (relative to the repo root)

# %%
# %matplotlib inline
import logging

from IPython.display import display

from kitlib import images, near_duplicates, plots, plots_review
from kitlib.folds import fold_summary, make_folds, save_folds
from kitlib.formats import load_competition
from kitlib.stages import EdaConfig

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("kitlib").setLevel(logging.INFO)
cfg = EdaConfig.from_params(globals())  # the cell above, type-checked; a name it does not declare fails here
cfg.save()  # artifacts/<exp>/eda_config.json: later stages read the table as this notebook reads it
print(f"{cfg.preset.name}: {cfg.preset.description}")

# %% [markdown]
# ## The train table
# One row per image: `image_id, image_path, height, width` and the targets (RLE per class, mask path or label).

# %%
train = load_competition(cfg.preset, cfg.data_path, label_file=cfg.label_file or None,
                         drop_missing=cfg.drop_missing, drop_invalid=cfg.drop_invalid)  # fmt: skip
print(f"{len(train)} train images; table attrs: {train.attrs}")
display(train.head())

# %%
test = load_competition(cfg.preset, cfg.data_path, split="test", drop_missing=True)
print(f"{len(test)} test images present; dropped as missing: {test.attrs.get('dropped_missing', 0)}")
plots.plot_image_sizes(train)

# %% [markdown]
# ## Every image decodes
# Each train and test image decoded whole (a truncated or corrupt file fails here, naming it, before anything trains
# on the rows its decoder filled in); the files that passed are cached in `artifacts/cache/decoded.csv` by path, size
# and mtime, so a rerun decodes only new or changed files.

# %%
images.verify_images([*train["image_path"], *test["image_path"]], cfg.artifacts_dir / "cache" / images.DECODE_CACHE)

# %% [markdown]
# ## Labels
# Class frequencies, classes per image and mask areas (segmentation) or the label distribution (classification).

# %%
plots.plot_label_summary(train, cfg.preset)

# %%
if cfg.preset.is_segmentation:
    display(plots.plot_cooccurrence(train, cfg.preset))

# %% [markdown]
# ## Samples with their masks

# %%
plots.plot_samples(train, cfg.preset, n=cfg.n_samples, seed=cfg.seed)

# %% [markdown]
# ## Augmentation
# The training pipeline `augment` on a few images: the validation view first, then random train draws with their
# masks, so you see what the model will train on (`kitlib/augmentations/<name>.yaml`).

# %%
print(f"augment: {cfg.augment or cfg.recipe['augment']}")
size = cfg.recipe["height"], cfg.recipe["width"]
plots.plot_augmentations(train, cfg.preset, cfg.augment_pipeline, *size, n=max(1, cfg.n_samples // 4), seed=cfg.seed,
                         resize=not cfg.recipe["native_scale"])  # fmt: skip

# %% [markdown]
# ## Near-duplicates
# The 64-bit perceptual hash (pHash) of every train image (cached in `artifacts/cache/phash.csv`: a rerun hashes only
# new files); images within `dup_distance` bits are one group (resized, re-encoded or re-lit copies: Cassava 2020 held
# copies of the 2019 images). The closest pairs are drawn; the groups go to `duplicates.csv` and into the folds.

# %%
duplicates = None
if cfg.dup_distance >= 0:
    duplicates = near_duplicates.find_duplicates(train, cfg.dup_distance,
                                                 cfg.artifacts_dir / "cache" / near_duplicates.HASH_CACHE)  # fmt: skip
    dup_path = near_duplicates.save_duplicates(cfg.exp_dir / near_duplicates.DUPLICATES_FILE, duplicates)
    print(f"{duplicates.n_groups} group(s) of near-duplicates ({len(duplicates.duplicated)} images, "
          f"{len(duplicates.pairs)} pairs within {cfg.dup_distance} bits); written to {dup_path}")  # fmt: skip
    display(duplicates.pairs.head(20))
    display(plots_review.plot_duplicate_pairs(train, duplicates.pairs, n=cfg.n_dup_pairs))
else:
    print("near-duplicates: off (dup_distance -1)")

# %% [markdown]
# ## Folds
# Multilabel-stratified on class presence (segmentation), stratified on the label (classification); groups (the
# near-duplicate groups united with `group_col`) are never split. Same seed, same folds.

# %%
if cfg.n_folds:
    fold_table, group = near_duplicates.fold_groups(train, duplicates, cfg.group_col or None)
    folds = make_folds(fold_table, cfg.preset, n_folds=cfg.n_folds, seed=cfg.seed, group_col=group)
    assert duplicates is None or not near_duplicates.split_groups(folds, duplicates)
    save_folds(folds, cfg.exp_dir / "folds.csv")
    print(f"wrote {cfg.exp_dir / 'folds.csv'}: {folds['fold'].value_counts().sort_index().to_dict()}")
    display(fold_summary(folds, cfg.preset))
    display(plots.plot_fold_balance(folds, cfg.preset))
