"""Training recipes as data: what each competition's winners trained, and the kit's defaults under them.

``kitlib.stages.TrainConfig`` resolves a training run in layers, each one overriding the one before:

1. ``DEFAULT_RECIPE``: a value for every training parameter that 10_train leaves at None, with ``TASK_DEFAULTS``'
   changes for the preset's task (what a preset file, which has no recipe of its own, trains);
2. ``TRAIN_RECIPES[preset.name]``: the preset's recipe, with its source in ``recipe_source``;
3. ``PRESENCE_RECIPE`` when the model is a presence classifier (``kitlib.presets.model_preset``);
4. ``NAMED_RECIPES[recipe]`` when the run names one (``-p recipe cassava_1st_b4_bitempered``): what one solution
   trained, for any preset of its task;
5. the notebook's parameters that are not None.

The vocabularies the training loop understands (``SCHEDULERS``, ``AMP_MODES``, ``OOF_DTYPES``, ``MIXES``) and
30_ensemble's meta-models (``STACKERS``) live here too, so a config is checked without importing torch or sklearn.

A recipe's ``loss_kwargs`` belong to the recipe's ``loss``: a run that names another loss without ``loss_kwargs``
gets none of them (``fill_recipe``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from kitlib.presets import Preset

__all__ = [
    "AMP_MODES",
    "DEFAULT_RECIPE",
    "MIXES",
    "NAMED_RECIPES",
    "OOF_DTYPES",
    "PRESENCE_RECIPE",
    "SEGMENTATION_MIXES",
    "CLASSIFICATION_MIXES",
    "SCHEDULERS",
    "STACKERS",
    "TASK_DEFAULTS",
    "TRAIN_RECIPES",
    "check_optimizer",
    "fill_recipe",
    "recipe_for",
]

#: ``kitlib.optim.make_scheduler`` names.
SCHEDULERS = ("onecycle", "cosine", "cosine_restarts", "cosine_warmup_restarts", "plateau", "constant")
#: ``kitlib.runtime.resolve_amp`` modes.
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: dtypes of a segmentation fold's ``oof_probs.npy``.
OOF_DTYPES = ("uint8", "float16", "float32")
#: ``kitlib.mixes`` names: batch mixing ("none": off); classification takes every one but copy_paste, segmentation
#: ``SEGMENTATION_MIXES``.
MIXES = ("none", "mixup", "cutmix", "fmix", "mixup_cutmix", "copy_paste")
#: The mixes of segmentation batches (images and masks): ``kitlib.mixes.SegmentationMix``.
SEGMENTATION_MIXES = ("cutmix", "copy_paste")
#: The mixes of classification batches (labels to soft targets): ``kitlib.mixes.BatchMix``.
CLASSIFICATION_MIXES = ("mixup", "cutmix", "fmix", "mixup_cutmix")
#: ``kitlib.stacking.create_stacker`` names: 30_ensemble's meta-models on the members' OOF probs ("": none). Linear
#: only, so that the fitted model is saved as numbers, without pickle.
STACKERS = ("logreg",)

#: The value of every training parameter that neither the preset's recipe nor the notebook sets.
DEFAULT_RECIPE: dict[str, Any] = dict(
    arch="unet",
    encoder_name="resnet34",
    model_name="resnet34",
    encoder_weights=None,
    aux_head=False,
    dropout=0.0,
    multi_sample_dropout=0,
    global_pool="avg",
    drop_path_rate=0.0,
    model_kwargs={},
    height=256,
    width=256,
    crop_height=0,
    crop_width=0,
    batch_size=8,
    epochs=10,
    encoder_lr=2.5e-5,
    decoder_lr=2.5e-4,
    weight_decay=0.01,
    optimizer="adamw",
    optimizer_kwargs={},
    scheduler="onecycle",
    warmup_epochs=0.0,
    pct_start=0.3,
    min_lr_ratio=0.0,
    restart_epochs=1.0,
    restart_mult=1,
    restart_gamma=1.0,
    plateau_factor=0.1,
    plateau_patience=2,
    swa_epochs=0,
    average_top_k=0,
    loss="clouds_6th",
    loss_kwargs={},
    accumulate=1,
    clip_grad_norm=0.0,
    amp="auto",
    channels_last=False,
    ema_decay=0.0,
    augment="light",
    native_scale=False,
    mix="none",
    mix_prob=0.5,
    mix_alpha=1.0,
    mix_off_epochs=0,
    mix_classes=[],
    oversample_classes=[],
    oversample_factor=1.0,
    monitor="",
    patience=0,
    valid_last=0,
    num_workers=0,
    cache=True,
    oof_dtype="uint8",
)

#: What ``DEFAULT_RECIPE`` changes by the preset's task: binary and multilabel masks keep its BCE 0.2 + Dice 0.8
#: ("clouds_6th"), one class per pixel takes CE + Dice (softmax over the classes), a classifier plain cross-entropy.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "multiclass": dict(loss="combo", loss_kwargs={"terms": {"soft_ce": 1.0, "dice": 1.0}}),
    "classification": dict(loss="ce", loss_kwargs={}),
}

#: What the Cassava solutions below share: ImageNet-pretrained timm models fine-tuned at 512x512, batch 16, Adam(W) at
#: 1e-4 with weight decay 1e-6, channels_last.
_CASSAVA_512: dict[str, Any] = dict(
    task="classification", encoder_weights="imagenet", height=512, width=512, batch_size=16, encoder_lr=1e-4,
    decoder_lr=1e-4, weight_decay=1e-6, channels_last=True, epochs=10,
)  # fmt: skip
#: ... and the EfficientNet-B4 Noisy Student ones: a cosine schedule after a warmup epoch.
_CASSAVA_B4: dict[str, Any] = dict(
    _CASSAVA_512, model_name="tf_efficientnet_b4.ns_jft_in1k", scheduler="cosine", warmup_epochs=1
)

#: What single solutions trained, by name (``-p recipe NAME``): each applies to any preset of its ``task`` and
#: overrides the preset's recipe; the notebook's parameters still override it. Pretrained weights are the timm tags'
#: ("imagenet"), attached as files in a Kaggle kernel (``kitlib.offline``).
NAMED_RECIPES: dict[str, dict[str, Any]] = {
    "cassava_1st_b4_bitempered": dict(
        _CASSAVA_B4,
        loss="bi_tempered",
        loss_kwargs={"t1": 0.8, "t2": 1.4, "label_smoothing": 0.06},
        recipe_source="Cassava Leaf Disease 1st place: EfficientNet-B4 Noisy Student at 512x512 with the bi-tempered "
        "logistic loss (Amid et al. 2019) t1 0.8, t2 1.4, label smoothing 0.06; cosine schedule with a warmup epoch.",
    ),
    "cassava_seresnext50_focal_cosine": dict(
        _CASSAVA_512,
        model_name="seresnext50_32x4d.racm_in1k",
        scheduler="cosine_restarts",
        restart_epochs=10,
        warmup_epochs=0,
        loss="focal_cosine",
        loss_kwargs={"alpha": 1.0, "gamma": 2.0, "xent": 0.1},
        recipe_source="Cassava Leaf Disease solutions (discussion 203271): SE-ResNeXt50 at 512x512 with the focal "
        "cosine loss (Kim et al. 2020, arXiv:2007.07805; alpha 1, gamma 2, xent 0.1), Adam with cosine annealing "
        "(warm restarts with a 10-epoch cycle: one cycle per run).",
    ),
    "cassava_b4_taylor_ce": dict(
        _CASSAVA_B4,
        loss="taylor_ce",
        loss_kwargs={"n": 2, "smoothing": 0.2},
        recipe_source="Cassava Leaf Disease kernels' Taylor cross-entropy (order 2) with label smoothing "
        "(kaggle.com/yerramvarun/cassava-taylorce-loss-label-smoothing-combo); 0.2, where the solutions found "
        "0.2-0.3 best and 0.1 worst, on EfficientNet-B4 Noisy Student at 512x512.",
    ),
    "cassava_b4_cutmix_swa": dict(
        _CASSAVA_B4,
        epochs=12,
        loss="ce",
        loss_kwargs={"label_smoothing": 0.3},
        mix="cutmix",
        mix_prob=0.5,
        mix_alpha=1.0,
        mix_off_epochs=2,
        swa_epochs=3,
        recipe_source="Cassava Leaf Disease solutions: EfficientNet-B4 Noisy Student at 512x512, CE with label "
        "smoothing 0.3, CutMix (Yun et al. 2019) on half the batches and off for the last 2 epochs, SWA (Izmailov et "
        "al. 2018) over the last 3 epochs.",
    ),
}

# Each preset's default recipe: what its winners trained (with pretrained encoders, which a Kaggle kernel attaches
# as files), and, for the real-data check and the demo, recipes that train from scratch on a CPU in minutes.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "clouds": dict(
        arch="unet",
        encoder_name="resnet34",
        encoder_weights="imagenet",
        aux_head=True,
        height=320,
        width=480,
        batch_size=16,
        epochs=20,
        encoder_lr=2.5e-5,
        decoder_lr=2.5e-4,
        weight_decay=0.01,
        scheduler="onecycle",
        loss="clouds_1st",
        amp="auto",
        channels_last=True,
        augment="clouds_1st",
        recipe_source="Understanding Clouds 1st place (pudae): Unet with a classification head, BCE 0.75 + Dice 0.25 "
        "on masks + 0.1 BCE on the head, AdamW wd 0.01, encoder lr 2.5e-5 / decoder 2.5e-4, OneCycle, its augmentation "
        "(kitlib/augmentations/clouds_1st.yaml); resnet34 and "
        "320x480 are the kit's defaults (the winners used several encoders at 384x576 and 320x640).",
    ),
    "severstal": dict(
        arch="unet",
        encoder_name="resnet34",
        encoder_weights="imagenet",
        height=256,
        width=1600,
        batch_size=8,
        epochs=20,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="clouds_6th",
        channels_last=True,
        recipe_source="Severstal top solutions: Unet resnet34 at full 256x1600, BCE + Dice.",
    ),
    "dacon_building": dict(
        arch="upernet",
        encoder_name="resnet50",
        encoder_weights="imagenet",
        height=1024,
        width=1024,
        native_scale=True,
        augment="dacon_building",
        batch_size=16,
        epochs=20,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="building_bce",
        scheduler="cosine_warmup_restarts",
        warmup_epochs=1,
        restart_epochs=5,
        restart_gamma=0.5,
        min_lr_ratio=0.01,
        channels_last=True,
        recipe_source="Dacon building contest: UPerNet, BCE, CosineAnnealingWarmupRestarts (a warmup epoch at the "
        "start of each 5-epoch cycle, each peak half the last: the cycle values are the kit's choice), trained on "
        "224x224 crops at the images' native scale "
        "(RandomScale 0.2 + RandomCrop 224 + flips: kitlib/augmentations/dacon_building.yaml; native_scale: no resize, "
        "so the 1024x1024 train images are validated whole and the 224x224 test tiles predicted as they are, at the "
        "scale the model learnt); resnet50 is the kit's default.",
    ),
    "coco": dict(
        arch="unetplusplus",
        encoder_name="efficientnet-b3",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=8,
        epochs=30,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="trash_ce_dice",
        mix="copy_paste",
        mix_prob=0.5,
        mix_classes=["Paper pack", "Metal", "Glass", "Battery", "Clothing"],
        oversample_classes=["Paper pack", "Metal", "Glass", "Battery", "Clothing"],
        oversample_factor=2.0,
        channels_last=True,
        augment="trash",
        recipe_source="Trash-sorting contest: Unet++ EfficientNet-B3 at 512x512, DiceCE with lambda 0.8 (0.8 CE + 0.2 "
        "Dice), the teams' augmentation (kitlib/augmentations/trash.yaml); objects of the rare classes (Paper pack, "
        "Metal, Glass, Battery, Clothing: the team's 4, 5, 6, 10, 11) copy-pasted onto half the batches (their "
        "SongbaeMix) and their images drawn twice as often (the factor is the kit's choice).",
    ),
    # the 1st place's recipe (NAMED_RECIPES["cassava_1st_b4_bitempered"])
    # and the solutions' common augmentation (kitlib/augmentations/cassava.yaml: random resized crop 512, ...)
    "cassava": {
        **{k: v for k, v in NAMED_RECIPES["cassava_1st_b4_bitempered"].items() if k != "task"},
        "augment": "cassava",
        "recipe_source": NAMED_RECIPES["cassava_1st_b4_bitempered"]["recipe_source"]
        + " Augmentation: kitlib/augmentations/cassava.yaml.",
    },
    "masks": dict(
        arch="unet",
        encoder_name="resnet18",
        encoder_weights=None,
        model_kwargs={"decoder_channels": [128, 64, 32, 16, 8]},
        height=256,
        width=256,
        batch_size=4,
        epochs=30,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        scheduler="onecycle",
        loss="bce",
        augment="unet_elastic",
        monitor="valid_pixel_error",
        valid_last=10,
        recipe_source="ISBI 2012 membranes on a CPU: pixel-wise cross-entropy as in U-Net (Ronneberger et al. 2015), "
        "who trained from scratch with flips and elastic deformation at full resolution; here a slim Unet-resnet18 "
        "from scratch at half resolution (256x256), the paper's elastic deformations, rotations and flips "
        "(kitlib/augmentations/unet_elastic.yaml), OneCycle at 3e-3, 30 epochs. The best epoch is picked on validation "
        "pixel error over the last 10 epochs (fold 0 of 5: its 27th epoch either way, OOF pixel error 0.0886). "
        "Measured on 2 shared CPU cores, 2026-12-08: 195 s a fold through 10_train, 168 s of it training steps (load "
        "2.4-3.2; 214 s validating every epoch). unet_elastic against flips, fold 0 of 4 of the 24-image sample (6 "
        "held-out images): OOF pixel error 0.0893 vs 0.0917, Dice 0.9438 vs 0.9424.",
    ),
    "demo": dict(
        arch="unet",
        encoder_name="resnet18",
        encoder_weights=None,
        aux_head=True,
        model_kwargs={"decoder_channels": [128, 64, 32, 16, 8]},
        height=128,
        width=192,
        batch_size=8,
        epochs=8,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        loss="clouds_1st",
        augment="flips",
        valid_last=4,
        recipe_source="The demo: the Understanding Clouds 1st-place loss and head on a slim Unet from scratch, "
        "validated over the last 4 of its 8 epochs (its best epochs are late ones, 8, 8, 6, 8, 8 over the 5 folds: the "
        "same best.pt as validating every epoch). Measured on 2 shared CPU cores, 2026-12-08: a fold 30-40 s through "
        "10_train (18-19 s of it training steps; load 1.5-2.5), the whole ./run_all.sh 453 s (load 2.5-3.5; two folds "
        "slowed to 137 s and 168 s by other jobs on the cores).",
    ),
    "demo_classify": dict(
        model_name="resnet18",
        encoder_weights=None,
        height=96,
        width=128,
        batch_size=16,
        epochs=10,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        scheduler="onecycle",
        loss="ce",
        loss_kwargs={"label_smoothing": 0.1},
        augment="flips",
        recipe_source="The classification demo: a timm resnet18 from scratch at the images' own 96x128, CE with label "
        "smoothing 0.1, OneCycle at 3e-3, flips, 10 epochs.",
    ),
}

# What a presence classifier changes in a segmentation preset's recipe: a timm classifier (the recipe's encoder when
# timm knows it, else resnet34), plain BCE per class, no decoder settings, the best epoch on the loss.
PRESENCE_RECIPE: dict[str, Any] = dict(
    aux_head=False,
    model_kwargs={},
    loss="bce",
    loss_kwargs={},
    monitor="valid_loss",
    recipe_source="Presence classifier (Severstal top solutions: a multilabel classifier gates the masks): one "
    "sigmoid per class, BCE on whether the class has any pixel, the segmentation recipe's size and schedule.",
)


def recipe_for(preset: Preset, model_preset: Preset, name: str = "") -> tuple[dict[str, Any], str]:
    """The training values of layers 1-4 (module docstring) and where they come from.

    Args:
        preset: the competition.
        model_preset: what the model learns: ``preset``, or its presence task (``kitlib.presets.model_preset``).
        name: a ``NAMED_RECIPES`` key, or "" for the preset's own recipe.
    Returns:
        ``(values, recipe_source)``: every training parameter's value before the notebook's own.
    Raises:
        KeyError: an unknown recipe name (the message lists them).
        ValueError: a named recipe for another task than the model's (a classification recipe for masks).
    """
    recipe = _layered(_layered(dict(DEFAULT_RECIPE), TASK_DEFAULTS.get(preset.task, {})),
                      TRAIN_RECIPES.get(preset.name, {}))  # fmt: skip
    if model_preset.task == "presence":
        import timm

        encoder = str(recipe.get("encoder_name", ""))
        recipe.update(PRESENCE_RECIPE, model_name=encoder if timm.is_model(encoder) else "resnet34")
    if name:
        if name not in NAMED_RECIPES:
            raise KeyError(f"unknown recipe {name!r}; options: {sorted(NAMED_RECIPES)}")
        named = dict(NAMED_RECIPES[name])
        task = named.pop("task")
        if task != model_preset.task:
            raise ValueError(f"recipe {name!r} trains a {task} model; preset {preset.name!r}: {model_preset.task}")
        recipe = _layered(recipe, named)
    default_source = f"the kit's defaults for a {preset.task} task (kitlib.recipes.DEFAULT_RECIPE, TASK_DEFAULTS)"
    source = str(recipe.pop("recipe_source", default_source))
    return recipe, source


def _layered(recipe: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` updated with ``layer``; a layer that names its own ``loss`` without ``loss_kwargs`` gets none of the
    layer below's (they belong to the loss below: ``_BELONGS_TO``)."""
    for name, (owner, neutral) in _BELONGS_TO.items():
        if owner in layer and name not in layer and layer[owner] != recipe.get(owner):
            recipe[name] = neutral()
    recipe.update(layer)
    return recipe


def check_optimizer(name: str) -> str:
    """``name`` when timm knows the optimiser (``timm.optim.list_optimizers()``, optionally behind ``lookahead_``).

    Raises:
        ValueError: an unknown name (close matches named).
    """
    from timm.optim import list_optimizers

    known = list_optimizers()
    if name.removeprefix("lookahead_") not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        raise ValueError(f"unknown optimizer {name!r}; close matches: {close} (timm.optim.list_optimizers())")
    return name


#: Parameters whose recipe value belongs to another parameter's recipe value: a run that sets the owner (to another
#: value than the recipe's) and leaves these at None gets their neutral value, not the recipe's.
_BELONGS_TO: dict[str, tuple[str, Callable[[], Any]]] = {"loss_kwargs": ("loss", dict)}


def fill_recipe(recipe: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The recipe's values for the parameters that ``values`` leaves at None.

    A value that belongs to another parameter (``loss_kwargs`` to ``loss``) is the recipe's only when that parameter
    is the recipe's too: with the cassava recipe (``loss="bi_tempered"``, ``loss_kwargs={"t1": 0.8, "t2": 1.4,
    "label_smoothing": 0.06}``), ``loss="taylor_ce"`` alone gets ``loss_kwargs={}``.

    Args:
        recipe: ``recipe_for``'s values.
        values: the run's parameters (None: not set).
    Returns:
        name -> value for each parameter of ``values`` that is None and has a recipe value.
    """
    filled = {k: v for k, v in recipe.items() if k in values and values[k] is None}
    for name, (owner, neutral) in _BELONGS_TO.items():
        if name in filled and values.get(owner) is not None and values[owner] != recipe.get(owner):
            filled[name] = neutral()
    return filled
